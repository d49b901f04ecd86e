"""Binary and ternary numbers: ±α weights, sign activations, XNOR-popcount dot products,
ternary weights and the stochastic ternarization of gradients (seeds/000 Algorithm 1).

Conventions (documented once, mirrored by the C runtime):
- sign(0) = +1 for weights and activations, so a binary code is never 0.
- Binary weights: b = sign(W), α = mean |W| (XNOR-Net's closed form, the α minimising
  ||W - α b||^2 for that b; per tensor or per output channel). BinaryConnect's deterministic
  binarization is the same b; its scale is this α.
- Packing ±1 vectors: along the last axis into uint32 words, element 32w + j in bit j of word w
  (LSB first); +1 -> bit 1, -1 -> bit 0; padding bits 0. For a, b in {-1, +1}^n,
  a·b = (#agree) - (#disagree) = 2·popcount(XNOR(a, b)) - n, counting only the n valid bits.
- popcount is the portable SWAR bit count (no compiler builtin needed).
- Ternary weights: TWN's threshold rule Δ = 0.7·mean|W|: t = sign(W)·[|W| > Δ], α = mean of |W|
  over the kept weights.
- Stochastic ternarization (TernGrad's StcTern): s = max|g|, t = sign(g) with probability |g|/s
  and 0 otherwise, so E[s·t] = g. For integer gradients the Bernoulli draw is the exact integer
  test rand_u32·s < |g|·2^32; for floats, rand_u32 < (|g|/s)·2^32.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from qcc.core.numerics.rounding import RngState, draw_u32

I64 = NDArray[np.int64]
U32 = NDArray[np.uint32]


def sign_pm1(x: ArrayLike) -> NDArray[np.int8]:
    """±1 codes with sign(0) = +1 (sign activation; binary weight codes)."""
    return np.where(np.asarray(x) >= 0, 1, -1).astype(np.int8)


def binarize(w: ArrayLike, axis: int | None = None) -> tuple[NDArray[np.int8], NDArray[np.float64]]:
    """(sign(W), α = mean|W|), α per tensor (axis None) or per slice along `axis` (keepdims)."""
    w = np.asarray(w, dtype=np.float64)
    if axis is None:
        return sign_pm1(w), np.asarray(np.mean(np.abs(w)))
    others = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    return sign_pm1(w), np.mean(np.abs(w), axis=others, keepdims=True)


def popcount32(words: ArrayLike) -> NDArray[np.uint32]:
    """Bits set in each uint32 (SWAR: pairs, nibbles, bytes, then a multiply to sum bytes)."""
    v = np.atleast_1d(np.asarray(words, dtype=np.uint32)).copy()
    v -= (v >> np.uint32(1)) & np.uint32(0x55555555)
    v = (v & np.uint32(0x33333333)) + ((v >> np.uint32(2)) & np.uint32(0x33333333))
    v = (v + (v >> np.uint32(4))) & np.uint32(0x0F0F0F0F)
    with np.errstate(over="ignore"):  # the byte sums land in the top byte, mod 2^32
        v = (v * np.uint32(0x01010101)) >> np.uint32(24)
    return v.reshape(np.shape(words))


def pack_signs(signs: ArrayLike) -> U32:
    """±1 (or sign-able) values along the last axis -> uint32 words, shape (..., ceil(n/32))."""
    bits = (np.asarray(signs) >= 0).astype(np.uint32)
    n = bits.shape[-1]
    words = -(-n // 32)
    padded = np.zeros((*bits.shape[:-1], words * 32), dtype=np.uint32)
    padded[..., :n] = bits
    lanes = padded.reshape(*bits.shape[:-1], words, 32) << np.arange(32, dtype=np.uint32)
    return np.bitwise_or.reduce(lanes, axis=-1)


def unpack_signs(words: ArrayLike, n: int) -> NDArray[np.int8]:
    """Inverse of `pack_signs`: the first n ±1 values of each row."""
    words = np.asarray(words, dtype=np.uint32)
    bits = (words[..., None] >> np.arange(32, dtype=np.uint32)) & np.uint32(1)
    flat = bits.reshape(*words.shape[:-1], -1)[..., :n]
    return (2 * flat.astype(np.int8) - 1).astype(np.int8)


def valid_mask(n: int) -> U32:
    """Per word, the mask of bits that hold one of the n elements."""
    words = -(-n // 32)
    mask = np.full(words, 0xFFFFFFFF, dtype=np.uint32)
    if n % 32:
        mask[-1] = np.uint32((1 << (n % 32)) - 1)
    return mask


def xnor_popcount_dot(a_words: ArrayLike, b_words: ArrayLike, n: int) -> I64:
    """Dot products of packed ±1 vectors: 2·popcount(XNOR(a, b) & valid) - n (broadcasting)."""
    a = np.asarray(a_words, dtype=np.uint32)
    b = np.asarray(b_words, dtype=np.uint32)
    agree = popcount32(~(a ^ b) & valid_mask(n)).astype(np.int64).sum(axis=-1)
    return 2 * agree - n


def ternarize(w: ArrayLike, delta_factor: float = 0.7) -> tuple[NDArray[np.int8], float]:
    """TWN threshold rule: codes sign(W)·[|W| > Δ], Δ = delta_factor·mean|W|; α = mean kept |W|."""
    w = np.asarray(w, dtype=np.float64)
    magnitude = np.abs(w)
    kept = magnitude > delta_factor * magnitude.mean()
    codes = (np.sign(w) * kept).astype(np.int8)
    alpha = float(magnitude[kept].mean()) if kept.any() else 0.0
    return codes, alpha


def stochastic_ternarize(g: ArrayLike, state: RngState) -> tuple[NDArray[np.int8], float,
                                                                RngState]:
    """StcTern: (codes in {-1, 0, 1}, scale s = max|g|, state); E[s·codes] = g.

    One draw per element in C order. Integer g (|g| < 2^31) uses the exact integer test.
    """
    g = np.asarray(g)
    draws, state = draw_u32(state, g.shape)
    magnitude = np.abs(g)
    scale = magnitude.max(initial=0)
    if scale == 0:
        return np.zeros(g.shape, dtype=np.int8), 0.0, state
    if np.issubdtype(g.dtype, np.integer):
        if scale >= 2**31:
            raise ValueError("integer gradients must satisfy |g| < 2^31")
        keep = draws.astype(np.uint64) * np.uint64(scale) < magnitude.astype(np.uint64) << 32
    else:
        keep = draws.astype(np.float64) < (magnitude / scale) * 2.0**32
    return (np.sign(g) * keep).astype(np.int8), float(scale), state


def tbp_weight_grad(g: ArrayLike, a_sign: ArrayLike, samples: int,
                    state: RngState) -> tuple[I64, float, RngState]:
    """seeds/000 Algorithm 1 for a dense layer: g_W = (1/S) Σ_k StcTern(g)ᵀ a^b.

    g: (batch, out) gradients of the layer outputs; a_sign: (batch, in) ±1 activations. Returns
    (Σ_k t_kᵀ a^b as exact integers, factor s/S, state) so g_W = factor · sum. The ternary x
    binary products are integer (gated XNOR in hardware); the samples draw consecutively.
    """
    a = np.asarray(a_sign, dtype=np.int64)
    total = np.zeros((np.shape(g)[1], a.shape[1]), dtype=np.int64)
    scale = 0.0
    for _ in range(samples):  # S is small (1-20 in the paper)
        codes, scale, state = stochastic_ternarize(g, state)
        total += codes.astype(np.int64).T @ a
    return total, scale / samples, state
