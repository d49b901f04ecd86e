"""Integer Softmax: exp(x - max) from compile-time tables, normalised by one integer division.

An input row of codes q (any width up to 16 bits) with real step s (value = s (q - z); the zero
point cancels) has the probabilities

    p_i = exp(-s d_i) / sum_j exp(-s d_j),      d_i = max_j q_j - q_i  in [0, 2^16).

exp(-s d) splits as exp(-s 256 h) exp(-s l) with d = 256 h + l, so two tables of at most 256 entries
hold everything (one entry in HIGH for 8-bit inputs, where d < 256), in Q(EXP_FRAC_BITS):

    LOW[l]  = round(2^F exp(-s l)),   HIGH[h] = round(2^F exp(-256 s h))   (F = EXP_FRAC_BITS = 30)
    E_i     = (LOW[l_i] HIGH[h_i] + 2^(F-1)) >> F            (64-bit product; E = 2^F where d = 0)
    S       = sum_i E_i                                        (64-bit)
    o_i     = clamp(floor((E_i 2^P + S/2) / S) + z_out)        (P output fraction bits)

Output formats are the usual ones for probabilities: uint8 with scale 1/256 (P = 8, z_out = 0),
int8 with scale 1/256 and zero point -128 (TFLite's), int16 with scale 1/32768 (P = 15).

Error bound (checked in tests/core/numerics): each table entry is within 1/2 of its exact value
and the product rounding adds 1/2, so |E_i - 2^F e_i| <= 3/2 (in units of 2^-F, e_i the exact
term) and |S - 2^F sum e| <= 3n/2. Since S >= 2^F (the maximum's term is exactly 2^F),
|2^P E_i / S - 2^P p_i| <= 2^P (3/2)(1 + n) / 2^F, which is below 1/2 for n < 2^(F-P-1)/3 - 1
(about 700,000 classes for P = 8, 10,900 for P = 15). Below that the output code is within one
LSB of the correctly rounded float Softmax round(2^P p_i) + z_out (both clamped to the range).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qcc.core.numerics.rounding import int_range

EXP_FRAC_BITS = 30
TABLE_SPLIT = 256  # d = 256 h + l


@dataclass(frozen=True)
class SoftmaxTables:
    """The compile-time constants of one integer Softmax."""

    low: np.ndarray  # int64 (values < 2^30: int32 in C), LOW[l] for l < len(low)
    high: np.ndarray  # int64, HIGH[h]; d >= 256 len(high) gives E = 0
    out_frac_bits: int  # P
    out_zero_point: int
    out_bits: int
    out_signed: bool

    @property
    def max_error_lsb(self) -> float:
        """The bound on |o - 2^P p| for one class of a row of n = 1 (scale by (1 + n) / 2)."""
        return 2.0 ** self.out_frac_bits * 1.5 / 2.0 ** EXP_FRAC_BITS


def softmax_tables(in_step: float, in_bits: int, out_bits: int = 8,
                   out_signed: bool = False) -> SoftmaxTables:
    """Tables for inputs of `in_bits` (<= 16) with real step `in_step`, and the output format.

    Output: unsigned 8 bits -> scale 1/256, zero point 0; signed 8 -> scale 1/256, zero point
    -128; 16 bits (either) -> scale 1/32768, zero point 0 (signed) or 0 (unsigned, 1/65536 would
    not represent 1.0 either; the range is clamped).
    """
    if not (math.isfinite(in_step) and in_step > 0):
        raise ValueError(f"softmax input step must be positive and finite, got {in_step}")
    if not 1 <= in_bits <= 16:
        raise ValueError(f"integer softmax takes inputs of 1 to 16 bits, got {in_bits}")
    if out_bits not in (8, 16):
        raise ValueError(f"integer softmax writes 8 or 16 bits, got {out_bits}")
    out_frac_bits = 8 if out_bits == 8 else 15
    out_zero_point = -128 if (out_bits == 8 and out_signed) else 0
    span = 1 << in_bits  # d < span
    one = 1 << EXP_FRAC_BITS
    l_count = min(span, TABLE_SPLIT)
    low = _rounded_exp(in_step * np.arange(l_count, dtype=np.float64), one)
    h_count = (span + TABLE_SPLIT - 1) // TABLE_SPLIT
    high = _rounded_exp(in_step * TABLE_SPLIT * np.arange(h_count, dtype=np.float64), one)
    # entries that rounded to zero never contribute: keep the tables as short as the data allows
    low = low[: max(1, int(np.count_nonzero(low)))]
    high = high[: max(1, int(np.count_nonzero(high)))]
    return SoftmaxTables(low, high, out_frac_bits, out_zero_point, out_bits, out_signed)


def _rounded_exp(x: np.ndarray, one: int) -> np.ndarray:
    # round half up of 2^F exp(-x): exact enough in float64 (53 > 30 + guard bits)
    return np.floor(np.exp(-x) * one + 0.5).astype(np.int64)


def integer_softmax(codes: np.ndarray, tables: SoftmaxTables, axis: int = -1) -> np.ndarray:
    """Output codes (int64) of the integer Softmax of `codes` along `axis` (NumPy reference of the
    C kernel: identical integer operations, in uint64 where C uses uint64_t)."""
    q = np.asarray(codes, dtype=np.int64)
    e = exp_terms(q.max(axis=axis, keepdims=True) - q, tables.low, tables.high)
    s = e.sum(axis=axis, keepdims=True, dtype=np.uint64)
    out = (e * np.uint64(1 << tables.out_frac_bits) + s // np.uint64(2)) // s
    lo_code, hi_code = int_range(tables.out_bits, tables.out_signed)
    return np.clip(out.astype(np.int64) + tables.out_zero_point, lo_code, hi_code)


def exp_terms(d: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """E(d) = (LOW[d mod 256] HIGH[d div 256] + 2^(F-1)) >> F as uint64 for code differences
    d >= 0 (zero past the tables' ends): 2^F exp(-s d) within 3/2 (module docstring)."""
    h, lo = d // TABLE_SPLIT, d % TABLE_SPLIT
    in_table = (h < len(high)) & (lo < len(low))
    low_terms = low[np.where(in_table, lo, 0)].astype(np.uint64)
    high_terms = high[np.where(in_table, h, 0)].astype(np.uint64)
    half = np.uint64(1 << (EXP_FRAC_BITS - 1))
    return np.where(in_table, (low_terms * high_terms + half) >> np.uint64(EXP_FRAC_BITS),
                    np.uint64(0))


def reference_codes(codes: np.ndarray, in_step: float, tables: SoftmaxTables,
                    axis: int = -1) -> np.ndarray:
    """The correctly rounded float Softmax in the output format: what integer_softmax approximates
    to within one LSB (module docstring)."""
    x = np.asarray(codes, dtype=np.float64) * in_step
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    p = e / e.sum(axis=axis, keepdims=True)
    lo_code, hi_code = int_range(tables.out_bits, tables.out_signed)
    return np.clip(np.floor(p * 2.0 ** tables.out_frac_bits + 0.5).astype(np.int64)
                   + tables.out_zero_point, lo_code, hi_code)


def softmax_layout(shape: tuple[int, ...], axis: int, flatten: bool) -> tuple[int, int, int]:
    """(outer, n, inner): the rows a Softmax normalises over, in a C-ordered tensor of `shape`.

    ONNX opset 13 and later normalise along one axis (inner = the dims after it); opsets 1-12
    (`flatten`) coerce the tensor to 2-D at `axis` and normalise each row of the product of the
    dims from `axis` on (inner = 1)."""
    axis = axis + len(shape) if axis < 0 else axis
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    if flatten:
        return outer, int(np.prod(shape[axis:], dtype=np.int64)), 1
    return outer, int(shape[axis]), int(np.prod(shape[axis + 1:], dtype=np.int64))


def integer_softmax_nd(codes: np.ndarray, tables: SoftmaxTables, axis: int,
                       flatten: bool) -> np.ndarray:
    """integer_softmax over the rows `softmax_layout` names (ONNX Softmax semantics)."""
    outer, n, inner = softmax_layout(codes.shape, axis, flatten)
    rows = np.asarray(codes).reshape(outer, n, inner)
    return integer_softmax(rows, tables, axis=1).reshape(codes.shape)
