"""The weight update rules of seeds/003 (eq. 3-7) and seeds/001's accumulator, in integers.

Every rule works in accumulator units 2^acc_exp (LayerProgram.acc_exp), where the SGD step
lr · G_W is the exact integer  u = G_W << (lr_exp + gw_exp - acc_exp)  (eq. 4 of seeds/001
guarantees Δ_acc <= γ Δ_GW, so the shift is never negative; the step refuses otherwise).

Fixed-point weights P (codes in [lo, hi], step 2^w_exp), B = w_exp - acc_exp, half = 2^(B-1):
- fx (seeds/001 Appendix A): the accumulator A in [-half, half) holds the part of the weight
  below its LSB; H = P·2^B + A is the high-precision weight. H ← clip(H - u, lo·2^B - half,
  hi·2^B + half - 1); then P = (H + half) >> B (the weight moves by one LSB each time A crosses
  ±half) and A = H - P·2^B. State: P (B_W bits) and A (B bits).
- bc (eq. 7): the same H, stored whole (one B_W + B bit integer per weight); the forward weight
  is P = Q_d(H) = (H + half) >> B. For fixed-point weights fx and bc give the same numbers by
  construction; they differ in storage. For binary weights see below.
- sr (eq. 5-6): no accumulator. P ← stochastic_round_shift((P << B) - u, B), saturated to
  [lo, hi]; one draw per weight (row-major).
- r (eq. 3-4): P ← round_shift((P << B) - u, B) (to nearest, ties away from zero), saturated.

Binary weights b ∈ {-1, +1} with scale α_c (per output channel c), a_c = round(α_c 2^-acc_exp):
- bc: H ∈ [-a_c, a_c] is the real-valued BinaryConnect weight; H ← clip(H - u, -a_c, a_c);
  b = +1 if H >= 0 else -1 (Q_d = sign, sign(0) = +1).
- sr: v = clip(b·a_c - u, -a_c, a_c); b = +1 with probability (v + a_c) / (2 a_c): one draw d
  per weight, b = +1 iff d · 2a_c < (v + a_c) · 2^32 (uint64), else -1.
- r: b = sign(b·a_c - u), sign(0) = +1.

Biases (every rule): a master bias M at step 2^(acc_exp + ga_exp - gw_exp) in int32, updated
exactly by M ← sat32(M - (Σ G_A) << (lr_exp + gw_exp - acc_exp)) (Σ over the batch and
positions of the layer's G_A codes); the forward bias code is round_shift(M · bias_mult_c,
bias_shift_c), saturated to int32. Saturations are counted.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from passes.training_program import LayerProgram
from qcc.core.errors import QccError
from qcc.core.numerics.rounding import (
    INT32_MAX,
    INT32_MIN,
    RngState,
    draw_u32,
    round_shift,
    stochastic_round_shift,
)

I64 = NDArray[np.int64]


def step_units(layer: LayerProgram, gw: I64, lr_exp: int) -> I64:
    """u = lr · G_W in accumulator units (exact left shift)."""
    shift = lr_exp + layer.gw_exp - layer.acc_exp
    if shift < 0:
        raise QccError(f"layer {layer.name!r}: the learning rate 2^{lr_exp} is below what its "
                       f"accumulator resolves (2^{layer.min_lr_exp()}, eq. 4); compile with "
                       "--lr (or --lr-min) set to the smallest learning rate")
    return np.asarray(gw, np.int64) << np.int64(shift)


def _count(counts: dict[str, int], name: str, n: int) -> None:
    if n:
        counts[name] = counts.get(name, 0) + int(n)


def _channel_axis(layer: LayerProgram, ndim: int) -> tuple[int, ...]:
    """Shape that broadcasts a per-output-channel vector over the weight tensor."""
    shape = [1] * ndim
    shape[layer.channel_axis] = -1
    return tuple(shape)


def update_fixed(layer: LayerProgram, rule: str, w: I64, acc: I64 | None, u: I64,
                 state: RngState, counts: dict[str, int]
                 ) -> tuple[I64, I64 | None, RngState]:
    """One update of fixed-point weight codes (and accumulator) by rule fx / bc / sr / r."""
    b = layer.acc_bits
    half = np.int64(1) << np.int64(b - 1)
    w = np.asarray(w, np.int64)
    if rule in ("fx", "bc"):
        high = (w << np.int64(b)) + acc if rule == "fx" else acc
        lo, hi = (layer.w_lo << b) - half, (layer.w_hi << b) + half - 1
        high = high - u
        _count(counts, f"{layer.name}.weight", np.count_nonzero((high < lo) | (high > hi)))
        high = np.clip(high, lo, hi)
        w = (high + half) >> np.int64(b)
        return w, (high - (w << np.int64(b)) if rule == "fx" else high), state
    target = (w << np.int64(b)) - u
    if rule == "sr":
        w, state = stochastic_round_shift(target, b, state)
    else:
        w = round_shift(target, b)
    _count(counts, f"{layer.name}.weight",
           np.count_nonzero((w < layer.w_lo) | (w > layer.w_hi)))
    return np.clip(w, layer.w_lo, layer.w_hi), None, state


def update_binary(layer: LayerProgram, rule: str, w: I64, acc: I64 | None, u: I64,
                  state: RngState, counts: dict[str, int]
                  ) -> tuple[I64, I64 | None, RngState]:
    """One update of ±1 weight codes by rule bc / sr / r (fx needs fixed-point weights)."""
    a = np.asarray(layer.alpha_acc, np.int64).reshape(_channel_axis(layer, np.ndim(w)))
    w = np.asarray(w, np.int64)
    if rule == "bc":
        high = acc - u
        _count(counts, f"{layer.name}.weight", np.count_nonzero((high < -a) | (high > a)))
        high = np.clip(high, -a, a)
        return np.where(high >= 0, 1, -1), high, state
    target = w * a - u
    if rule == "r":
        return np.where(target >= 0, 1, -1), None, state
    if rule != "sr":
        raise QccError(f"layer {layer.name!r}: update rule {rule!r} needs fixed-point weights "
                       "(binary weights train with bc, sr or r)")
    target = np.clip(target, -a, a)
    draws, state = draw_u32(state, target.shape)
    up = draws.astype(np.uint64) * (2 * a).astype(np.uint64) < (target + a).astype(
        np.uint64) << np.uint64(32)
    return np.where(up, 1, -1), None, state


def update_bias(layer: LayerProgram, master: I64, grad_sum: I64, lr_exp: int,
                counts: dict[str, int]) -> tuple[I64, I64]:
    """(new master, new bias codes) for the bias of `layer` (module docstring)."""
    master = np.asarray(master, np.int64) - step_units(layer, grad_sum, lr_exp)
    _count(counts, f"{layer.name}.bias",
           np.count_nonzero((master < INT32_MIN) | (master > INT32_MAX)))
    master = np.clip(master, INT32_MIN, INT32_MAX)
    codes = round_shift(master * np.asarray(layer.bias_mult, np.int64),
                        np.asarray(layer.bias_shift, np.int64))
    return master, np.clip(codes, INT32_MIN, INT32_MAX)
