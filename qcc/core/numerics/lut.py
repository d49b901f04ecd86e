"""Elementwise nonlinearities on codes by table (Sigmoid, Tanh, HardSigmoid, HardSwish, any f).

The function is applied once per input code at compile time, so the run time does no float work:

- inputs of at most EXACT_BITS bits: the table holds every input code,
      out = T[q - q_lo],   T[j] = clamp(round(f(s_in (q_lo + j - z_in)) / s_out) + z_out),
  the correctly rounded result itself;
- wider inputs (up to 16 bits): the codes where f is not yet flat in the output format
  ([a, b]; below a and above b the output is constant, as for every saturating activation) are
  sampled every 2^k codes and kept with GUARD_BITS extra fraction bits, and the kernel
  interpolates linearly between neighbours:
      off = clamp(q - a, 0, b - a),  i = off >> k,  r = off & (2^k - 1)
      out = clamp((T[i] 2^k + (T[i+1] - T[i]) r + 2^(k+G-1)) >> (k+G))
  TFLite Micro's int16 activations interpolate a fixed table the same way. Here k is the largest
  step whose error against the correctly rounded result, measured over every input code when
  the table is built, is at most one LSB (`max_error_lsb` records it; the table then has at most
  2^MAX_SEGMENTS_LOG2 + 1 entries).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qcc.core.numerics.rounding import int_range, round_half_away

EXACT_BITS = 10
GUARD_BITS = 8
MAX_SEGMENTS_LOG2 = 12


@dataclass(frozen=True)
class CodeFormat:
    """An affine code format: value = scale (code - zero_point), codes in the bits' range."""

    scale: float
    zero_point: int
    bits: int
    signed: bool

    @property
    def range(self) -> tuple[int, int]:
        return int_range(self.bits, self.signed)


@dataclass(frozen=True)
class LookupTable:
    """The compile-time table of one elementwise op on codes."""

    table: np.ndarray  # int64 (int32 in C)
    in_lo: int  # the input code of index 0 (a)
    in_span: int  # b - a: offsets are clamped to [0, in_span]
    shift: int  # k: 0 for an exact table
    guard_bits: int  # G: 0 for an exact table
    out_lo: int
    out_hi: int
    max_error_lsb: float  # against the correctly rounded result, over every input code

    @property
    def interpolated(self) -> bool:
        return self.guard_bits > 0


def correctly_rounded(f: Callable[[np.ndarray], np.ndarray], codes: np.ndarray,
                      src: CodeFormat, dst: CodeFormat) -> np.ndarray:
    """round(f(x) / s_out) + z_out, clamped: the reference every table is measured against."""
    x = (codes.astype(np.float64) - src.zero_point) * src.scale
    y = np.asarray(f(x), dtype=np.float64) / dst.scale
    lo, hi = dst.range
    return np.clip(round_half_away(y).astype(np.int64) + dst.zero_point, lo, hi)


def build_table(f: Callable[[np.ndarray], np.ndarray], src: CodeFormat,
                dst: CodeFormat) -> LookupTable:
    """The table of f from input codes in `src` to output codes in `dst`."""
    if not (np.isfinite(src.scale) and src.scale > 0 and np.isfinite(dst.scale) and dst.scale > 0):
        raise ValueError("table ops need positive, finite input and output scales")
    if src.bits > 16:
        raise ValueError(f"table ops take inputs of at most 16 bits, got {src.bits}")
    in_lo, in_hi = src.range
    out_lo, out_hi = dst.range
    codes = np.arange(in_lo, in_hi + 1, dtype=np.int64)
    exact = correctly_rounded(f, codes, src, dst)
    if src.bits <= EXACT_BITS:
        return LookupTable(exact, in_lo, len(exact) - 1, 0, 0, out_lo, out_hi, 0.0)
    changes = np.flatnonzero(exact != exact[0])
    a = int(changes[0]) - 1 if len(changes) else 0  # last code still at the low end value
    changes = np.flatnonzero(exact != exact[-1])
    b = int(changes[-1]) + 1 if len(changes) else len(exact) - 1
    a, b = max(a, 0), min(b, len(exact) - 1)
    best = None
    for shift in range(max(0, (b - a).bit_length() - MAX_SEGMENTS_LOG2), src.bits + 1)[::-1]:
        lut = _sampled(f, src, dst, in_lo + a, b - a, shift)
        error = float(np.abs(apply_table(codes, lut) - exact).max())
        if best is None or error < best.max_error_lsb:
            best = LookupTable(lut.table, lut.in_lo, lut.in_span, shift, GUARD_BITS,
                               out_lo, out_hi, error)
        if error <= 1.0:
            return best
    return best


def _sampled(f: Callable[[np.ndarray], np.ndarray], src: CodeFormat, dst: CodeFormat,
             start: int, span: int, shift: int) -> LookupTable:
    out_lo, out_hi = dst.range
    count = (span >> shift) + 2  # T[i + 1] exists for every offset up to span
    samples = start + (np.arange(count, dtype=np.int64) << shift)
    x = (samples.astype(np.float64) - src.zero_point) * src.scale
    y = np.asarray(f(x), dtype=np.float64) / dst.scale + dst.zero_point
    # samples past the output range are clamped a little beyond it, so interpolation near the
    # ends still saturates where it should and every product stays inside int32 / int64
    margin = 1 << (dst.bits - 1)
    y = np.clip(y, out_lo - margin, out_hi + margin)
    table = round_half_away(y * (1 << GUARD_BITS)).astype(np.int64)
    return LookupTable(table, start, span, shift, GUARD_BITS, out_lo, out_hi, 0.0)


def apply_table(codes: np.ndarray, lut: LookupTable) -> np.ndarray:
    """Output codes (int64): the NumPy reference of the C kernel, same integer operations."""
    off = np.clip(np.asarray(codes, dtype=np.int64) - lut.in_lo, 0, lut.in_span)
    if not lut.interpolated:
        return lut.table[off]
    i = off >> lut.shift
    r = off & ((1 << lut.shift) - 1)
    left = lut.table[i]
    right = lut.table[i + 1]
    total = lut.shift + lut.guard_bits
    v = (left << lut.shift) + (right - left) * r + (1 << (total - 1))
    return np.clip(v >> total, lut.out_lo, lut.out_hi)
