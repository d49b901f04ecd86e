"""Integer LogSoftmax: x - max - log(sum exp(x - max)) with integer operations only.

An input row of codes q (up to 16 bits) with real step s (the zero point cancels) has

    y_i = -s d_i - L,    L = ln sum_j exp(-s d_j),    d_i = max_j q_j - q_i  in [0, 2^16),

so y_i <= 0 and L in [0, ln n]. In output LSBs (step D_out, zero point z_out) the output code is
o_i = clamp(z_out - round(t_i)) with t_i = (s/D_out) d_i + (ln 2/D_out) log2(sum_j exp(-s d_j)).
The integer kernel computes t_i in Q(G) (G = SCALE_BITS = 24):

    E_j  = exp table of d_j in Q30, as integer Softmax (qcc.core.numerics.softmax.exp_terms)
    S    = sum_j E_j                      (uint64; S >= 2^30, the maximum's term is exactly 2^30)
    l    = log2(S / 2^30) in Q(F)         (F = LOG_FRAC_BITS = 24; integer_log2: the integer part
                                           from the bit length, then F fraction bits by repeated
                                           squaring of the normalised mantissa in Q30)
    L_G  = (LOG_MULT l + 2^(K+F-G-1)) >> (K+F-G)          LOG_MULT  = round(2^K ln 2 / D_out)
    T_i  = DIFF_MULT min(d_i, D_CAP) + L_G                DIFF_MULT = round(2^G s / D_out)
    o_i  = clamp(z_out - ((T_i + 2^(G-1)) >> G), lo, hi)  (K = LOG_MULT_BITS = 18)

D_CAP is the smallest difference whose output saturates at lo anyway, so T_i stays below 2^45.

Output format, chosen from the input range: the most negative output is -(s span + ln n) for
input codes spanning `span` and rows of n; the output range r is the power of two at least that,
at least 1, and for 8-bit outputs at most 16 (TFLite's int8 LogSoftmax range [-16, 0]: below it
the probability is < 1.2e-7, and a wider range would coarsen the step near 0, where the likely
classes are); 16-bit outputs cover the whole input range (up to 2^12). Fixed point: signed, PDR
r (step r 2^-(B-1), zero point 0: codes in [-2^(B-1), 0]). Affine: signed, scale r 2^-B, zero
point 2^(B-1) - 1 (TFLite's int8 LogSoftmax for r = 16). B = 8 or 16.

Error bound (checked in tests/core/numerics/test_log_softmax.py), for output steps D_out >= 2^-16
(every format above):

    |T_i 2^-G - t_i| <= eps(n, D_out) = 2^-9 + 2^-13 + (2^-24 ln 2 + (1.5 n + 3) 2^-30) / D_out

DIFF_MULT's rounding gives at most d_i 2^-25 < 2^-9 (d_i < 2^16); LOG_MULT's rounding at most
l 2^-19 <= 34 2^-19 and the rounding of L_G 2^-25 (together < 2^-13); the exp tables give
|S - 2^30 sum e| <= 3n/2 (qcc.core.numerics.softmax), so with the normalisation and squarings
(relative error 2^-30 each, weighted 2^-i) |l 2^-F - log2(sum e)| <= 2^-F + (1.5 n + 3) 2^-30 /
ln 2, which ln 2 / D_out turns into LSBs. Every output code is therefore within 1/2 + eps of the
exact z_out - t_i (both clamped): within one LSB of the correctly rounded float LogSoftmax for
rows of up to about 10,000 classes at D_out = 2^-15 (eps = 0.0034 + 4.6e-5 n), and equal to it
(ties go to the lower code) unless t_i lies within eps of a tie. Measured over random rows
(tests/core/numerics/test_log_softmax.py): at most 0.0016 LSB beyond 1/2 for 16-bit outputs,
none for 8-bit ones. 8-bit outputs (D_out >= 2^-7) have eps < 0.0025
for n <= 100,000.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qcc.core.numerics.softmax import EXP_FRAC_BITS, exp_terms, softmax_layout, softmax_tables

LOG_FRAC_BITS = 24  # F: fraction bits of log2(S)
SCALE_BITS = 24  # G: fraction bits of t_i before the final rounding
LOG_MULT_BITS = 18  # K: fraction bits of LOG_MULT; LOG_MULT l < 2^33.5 2^29.1 fits 63 bits
MAX_DIFF_MULT = 1 << 18  # s / D_out beyond 2^18: any d >= 1 saturates, so the ratio is capped
RANGE_FLOOR = 1.0  # r >= 1: the output step stays >= 2^-16
RANGE_CAP_8 = 16.0  # 8-bit outputs: TFLite's [-16, 0], a step of 1/8 or 1/16
RANGE_CAP_16 = 2.0 ** 12  # 16-bit outputs: the input's whole range, in steps of at most 1/8
UNKNOWN_ROW = 1 << 16


@dataclass(frozen=True)
class LogSoftmaxParams:
    """The compile-time constants of one integer LogSoftmax (module docstring)."""

    low: np.ndarray  # int64 exp tables of the input step (qcc.core.numerics.softmax)
    high: np.ndarray
    diff_mult: int  # round(2^G s / D_out)
    log_mult: int  # round(2^K ln 2 / D_out)
    d_cap: int
    out_zero_point: int
    out_lo: int
    out_hi: int


def error_bound_lsb(n: int, out_step: float) -> float:
    """eps(n, D_out): the bound on |T_i 2^-G - t_i| in output LSBs for rows of n (module
    docstring)."""
    return 2.0 ** -9 + 2.0 ** -13 + (2.0 ** -24 * math.log(2) + (1.5 * n + 3) * 2.0 ** -30) \
        / out_step


def output_range(in_step: float, in_span: int, n: int | None, out_bits: int) -> float:
    """r: the smallest power of two >= s span + ln n (n = 2^16 when the row length is not
    known at compile time), at least 1, and at most 16 for 8-bit outputs (module docstring)."""
    most_negative = in_step * in_span + math.log(max(n or UNKNOWN_ROW, 1))
    r = 2.0 ** math.ceil(math.log2(most_negative)) if most_negative > 0 else RANGE_FLOOR
    return min(max(r, RANGE_FLOOR), RANGE_CAP_8 if out_bits <= 8 else RANGE_CAP_16)


def log_softmax_params(in_step: float, in_bits: int, out_step: float, out_zero_point: int,
                       out_lo: int, out_hi: int) -> LogSoftmaxParams:
    """Constants for inputs of `in_bits` (<= 16) with real step `in_step`, written as codes of
    step `out_step` (>= 2^-16) and zero point `out_zero_point`, clamped to [out_lo, out_hi]."""
    if not (math.isfinite(out_step) and 2.0 ** -16 <= out_step):
        raise ValueError(f"log-softmax output step must be finite and >= 2^-16, got {out_step}")
    exp = softmax_tables(in_step, in_bits)  # validates in_step and in_bits
    ratio = min(in_step / out_step, MAX_DIFF_MULT)
    # smallest d with ratio * d >= z_out - lo + 2: its code rounds below lo whatever L is
    d_cap = min(max(1, math.ceil((out_zero_point - out_lo + 2) / ratio)), (1 << in_bits) - 1)
    return LogSoftmaxParams(exp.low, exp.high, int(round(ratio * 2 ** SCALE_BITS)),
                            int(round(math.log(2) / out_step * 2 ** LOG_MULT_BITS)), d_cap,
                            out_zero_point, out_lo, out_hi)


def integer_log2(s: np.ndarray) -> np.ndarray:
    """log2(S / 2^30) in Q(LOG_FRAC_BITS), int64, for uint64 S >= 2^30: the bit length gives
    the integer part k; the mantissa m = S >> (k - 30) in [2^30, 2^31) is squared F times
    (rounded to Q30), each square >= 2 giving a 1 bit and a halving. Truncates: the result is
    at most 2^-F below the log2 of the mantissa it read."""
    s = np.asarray(s, dtype=np.uint64)
    k = np.zeros(s.shape, dtype=np.int64)
    for j in range(EXP_FRAC_BITS + 1, 64):
        k += (s >> np.uint64(j)) > 0  # k = floor(log2 S) - 30
    m = s >> k.astype(np.uint64)
    half, frac = np.uint64(1 << (EXP_FRAC_BITS - 1)), np.zeros(s.shape, dtype=np.int64)
    for _ in range(LOG_FRAC_BITS):
        m = (m * m + half) >> np.uint64(EXP_FRAC_BITS)
        bit = m >> np.uint64(EXP_FRAC_BITS + 1)
        m = m >> bit
        frac = 2 * frac + bit.astype(np.int64)
    return (k << LOG_FRAC_BITS) + frac


def integer_log_softmax(codes: np.ndarray, params: LogSoftmaxParams, axis: int = -1
                        ) -> np.ndarray:
    """Output codes (int64) of the integer LogSoftmax of `codes` along `axis` (NumPy reference
    of the C kernel: the same integer operations, uint64 where C uses uint64_t)."""
    q = np.asarray(codes, dtype=np.int64)
    d = q.max(axis=axis, keepdims=True) - q
    s = exp_terms(d, params.low, params.high).sum(axis=axis, keepdims=True, dtype=np.uint64)
    shift = LOG_MULT_BITS + LOG_FRAC_BITS - SCALE_BITS
    log_term = ((np.uint64(params.log_mult) * integer_log2(s).astype(np.uint64)
                 + np.uint64(1 << (shift - 1))) >> np.uint64(shift)).astype(np.int64)
    t = params.diff_mult * np.minimum(d, params.d_cap) + log_term
    out = params.out_zero_point - ((t + (1 << (SCALE_BITS - 1))) >> SCALE_BITS)
    return np.clip(out, params.out_lo, params.out_hi)


def integer_log_softmax_nd(codes: np.ndarray, params: LogSoftmaxParams, axis: int,
                           flatten: bool) -> np.ndarray:
    """integer_log_softmax over the rows `softmax_layout` names (ONNX LogSoftmax semantics)."""
    outer, n, inner = softmax_layout(codes.shape, axis, flatten)
    rows = np.asarray(codes).reshape(outer, n, inner)
    return integer_log_softmax(rows, params, axis=1).reshape(codes.shape)


def exact_codes(codes: np.ndarray, in_step: float, params: LogSoftmaxParams, out_step: float,
                axis: int = -1) -> np.ndarray:
    """The float LogSoftmax in output LSBs, unrounded and clamped: z_out - t_i (float64)."""
    x = np.asarray(codes, dtype=np.float64) * in_step
    x = x - x.max(axis=axis, keepdims=True)
    y = x - np.log(np.exp(x).sum(axis=axis, keepdims=True))
    return np.clip(y / out_step + params.out_zero_point, params.out_lo, params.out_hi)
