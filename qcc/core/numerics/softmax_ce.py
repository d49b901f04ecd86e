"""The softmax cross-entropy gradient on integer logits, in integers only.

For logits codes z (N, M) of step 2^z_exp and labels y, the gradient of the mean loss is
(softmax(z) - onehot(y)) / N. It is formed as an integer g in Q.24 (value g · 2^-24); the
division by N happens at the first rounding point of the backward pass (GradRep.per_batch).

Every operation, in order (all integers; C needs int64 and the two tables below):

1. d_j = max_k z_k - z_j  (>= 0).
2. t_j = d_j · LOG2E_Q, with LOG2E_Q = round(log2(e) · 2^24) = 24204406, brought to Q.16:
   round_shift(t_j, 8 - z_exp) if z_exp <= 8 (to nearest, ties away from zero), else
   t_j << (z_exp - 8); then t_j = min(t_j, 32 · 2^16). So t_j = -log2(exp(z_j - max)) in Q.16.
3. n_j = t_j >> 16 (integer part), f_j = t_j & 0xFFFF; k_j = (f_j + 128) >> 8 in 0..256.
4. e_j = round_shift(EXP2_LUT[k_j], n_j) for n_j <= 30, else 0: 2^-(t_j / 2^16) in Q.30.
   EXP2_LUT[k] = round(2^30 · 2^(-k/256)), k = 0..256 (257 int32 entries; C copies the table,
   `exp2_table()` prints it). The relative error of e_j is at most 2^-9 · ln 2 (0.14 %).
5. s = Σ_j e_j (>= 2^30: the max logit gives exactly 2^30).
6. p_j = (2 · (e_j << 24) + s) // (2 s): e_j / s in Q.24, to nearest (all positive).
7. g_j = p_j - (j == y ? 2^24 : 0).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from qcc.core.errors import QccError
from qcc.core.numerics.rounding import round_shift

CE_FRAC_BITS = 24
EXP_FRAC_BITS = 16
LUT_BITS = 8
LUT_FRAC_BITS = 30
LOG2E_FRAC_BITS = 24
LOG2E_Q = 24204406  # round(log2(e) · 2^24)
MAX_T = 32 << EXP_FRAC_BITS  # 2^-32 and below are 0 in Q.30


def exp2_table() -> NDArray[np.int64]:
    """EXP2_LUT[k] = round(2^30 · 2^(-k/256)), k = 0..256 (no entry is near a rounding tie)."""
    k = np.arange((1 << LUT_BITS) + 1, dtype=np.float64)
    return np.floor(np.exp2(LUT_FRAC_BITS - k / (1 << LUT_BITS)) + 0.5).astype(np.int64)


EXP2_LUT = exp2_table()


def softmax_q24(z: np.ndarray, z_exp: int) -> NDArray[np.int64]:
    """softmax over the last axis of integer logits (step 2^z_exp), in Q.24 (steps 1-6)."""
    z = np.asarray(z, np.int64).reshape(len(z), -1)
    d = z.max(axis=1, keepdims=True) - z
    t = d * LOG2E_Q  # value t · 2^(z_exp - 24); Q.16 needs a right shift by 8 - z_exp
    shift = LOG2E_FRAC_BITS - EXP_FRAC_BITS - z_exp
    t = round_shift(t, shift) if shift >= 0 else t << np.int64(-shift)
    t = np.minimum(t, MAX_T)
    n = t >> EXP_FRAC_BITS
    k = ((t & ((1 << EXP_FRAC_BITS) - 1)) + (1 << (EXP_FRAC_BITS - LUT_BITS - 1))) >> (
        EXP_FRAC_BITS - LUT_BITS)
    e = np.where(n <= LUT_FRAC_BITS, round_shift(EXP2_LUT[k], np.minimum(n, LUT_FRAC_BITS)), 0)
    s = e.sum(axis=1, keepdims=True)
    return (2 * (e << np.int64(CE_FRAC_BITS)) + s) // (2 * s)


def ce_gradient_q24(z: np.ndarray, z_exp: int, labels: np.ndarray) -> NDArray[np.int64]:
    """g = softmax(z) - onehot(labels) in Q.24, shape (N, M) (step 7)."""
    p = softmax_q24(z, z_exp)
    labels = np.asarray(labels)
    if labels.shape != (len(p),):
        raise QccError(f"expected one label per sample ({len(p)}), got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= p.shape[1]):
        raise QccError(f"labels must be 0 .. {p.shape[1] - 1}; got {int(labels.min())} .. "
                       f"{int(labels.max())}")
    p[np.arange(len(p)), labels] -= 1 << CE_FRAC_BITS
    return p


def float_loss(z: np.ndarray, z_exp: int, labels: np.ndarray) -> float:
    """The mean cross-entropy in float64, for progress display only (not on the integer path)."""
    x = np.asarray(z, np.float64).reshape(len(z), -1) * math.ldexp(1.0, z_exp)
    x -= x.max(axis=1, keepdims=True)
    log_p = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(x)), labels].mean())
