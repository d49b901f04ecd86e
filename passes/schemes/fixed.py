"""The fixed-point scheme of seeds/001 §2.1 (power-of-two ranges, shift requantization)."""

from __future__ import annotations

import numpy as np

from passes.calibrate import TensorStats
from passes.schemes.affine import DEAD_CHANNEL, channel_absmax
from passes.schemes.base import CodeFormat, Scheme, register_scheme
from qcc.core.numerics import fixed
from qcc.core.numerics.rounding import int_range, round_half_away
from qcc.core.quant_spec import QuantSpec


@register_scheme
class FixedScheme(Scheme):
    """seeds/001 §2.1: B-bit codes, power-of-two PDR r, step Δ = r·2^-(B−1) (signed) or r·2^-B
    (unsigned, for tensors never negative on the calibration data).

    Activations take one PDR per tensor. Weights take one PDR per output channel: the ratio
    Δ_x·Δ_W,c / Δ_y of every channel is still a power of two, so requantization stays a shift
    (one per channel), while a channel that BatchNorm folding scaled down keeps its resolution
    instead of sharing the range of the layer's largest channel (with one range per tensor, such
    a channel can lose all but one or two of its B bits). Graphs compiled for training keep one
    range per weight tensor (`trains_per_channel`)."""

    name = "fixed"
    # the update w = round_shift(acc, ·) and the backward G_A = Wᵀ·G_Y (seeds/001 §3) sum over
    # output channels, which needs one weight step for the whole tensor
    trains_per_channel = False

    def activation(self, stats: TensorStats, bits: int) -> CodeFormat:
        signed = stats.lo < 0
        fmt = fixed.FixedFormat(bits, fixed.choose_pdr_exp(np.array([stats.absmax])), signed)
        return _fixed_code_format(fmt)

    def weight(self, w: np.ndarray, bits: int, axis: int,
               min_scale: np.ndarray | None = None) -> tuple[np.ndarray, CodeFormat]:
        pdr_exps = channel_pdr_exps(w, axis)
        if min_scale is not None:  # Δ_c >= min_scale_c, still a power of two
            needed = np.ceil(np.log2(np.maximum(min_scale, np.finfo(np.float64).tiny)))
            pdr_exps = np.maximum(pdr_exps, needed.astype(np.int64) + (bits - 1))
        if np.all(pdr_exps == pdr_exps[0]):  # one range: the per-tensor format of §2.1
            fmt = fixed.FixedFormat(bits, int(pdr_exps[0]), signed=True)
            codes, _, _ = fixed.quantize(w, fmt)
            return codes, _fixed_code_format(fmt)
        step_exps = pdr_exps - (bits - 1)
        shape = [1] * w.ndim
        shape[axis] = -1
        lo, hi = int_range(bits, signed=True)
        scaled = np.ldexp(np.asarray(w, np.float64), -step_exps.reshape(shape))  # exact
        codes = np.clip(round_half_away(scaled), lo, hi).astype(np.int64)
        pdrs = [float(np.ldexp(1.0, int(e))) for e in pdr_exps]
        spec = QuantSpec(format="fixed", bits=bits, signed=True, pdr=max(pdrs),
                         extra={"axis": axis, "pdrs": pdrs})
        return codes, CodeFormat(tuple(float(np.ldexp(1.0, int(e))) for e in step_exps), 0,
                                 lo, hi, spec)


def channel_pdr_exps(w: np.ndarray, axis: int) -> np.ndarray:
    """The §2.1 PDR exponent (smallest e with 2^e >= max|w_c|) of each index c of `axis`. A
    dead channel (max|w_c| at most DEAD_CHANNEL of the layer's largest, as BatchNorm folding
    leaves them) or an all-zero one takes the largest channel's range: its codes are 0 either
    way, and its bias and requantization shift stay small."""
    absmax = channel_absmax(w, axis)
    exps = np.array([fixed.choose_pdr_exp(np.array([a])) for a in absmax], dtype=np.int64)
    peak = absmax.max(initial=0.0)
    alive = absmax > peak * DEAD_CHANNEL
    if not alive.any():
        return np.full_like(exps, fixed.choose_pdr_exp(np.array([peak])))
    return np.where(alive, exps, exps[alive].max())


def _fixed_code_format(fmt: fixed.FixedFormat) -> CodeFormat:
    lo, hi = int_range(fmt.bits, fmt.signed)
    return CodeFormat(2.0 ** fmt.step_exp, 0, lo, hi, fmt.to_spec())
