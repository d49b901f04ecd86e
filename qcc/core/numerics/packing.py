"""Packing integer codes of 1, 2, 4, 8 or 16 bits into bytes, and back.

Layout (the C runtime reads weights stored this way):
- codes are taken in C (row-major) order of the flattened array;
- below 8 bits, 8/bits codes share a byte, the FIRST code in the LEAST significant bits (little
  endian within the byte): byte = c0 | c1 << bits | c2 << 2·bits | ...; the last byte is
  zero-padded;
- 8-bit codes are one byte each; 16-bit codes are two bytes, low byte first (little endian);
- a code is stored as its two's complement in `bits` bits (signed) or as is (unsigned), and
  unpacking sign-extends signed codes.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from qcc.core.numerics.rounding import int_range

WIDTHS = (1, 2, 4, 8, 16)


def packed_size(count: int, bits: int) -> int:
    """Bytes needed for `count` codes of `bits` bits."""
    _check_width(bits)
    return (count * bits + 7) // 8


def pack_bits(codes: ArrayLike, bits: int, signed: bool) -> NDArray[np.uint8]:
    """Flattened codes packed into a uint8 array (layout in the module docstring)."""
    _check_width(bits)
    codes = np.asarray(codes, dtype=np.int64).ravel()
    lo, hi = int_range(bits, signed)
    if codes.size and (codes.min() < lo or codes.max() > hi):
        raise ValueError(f"codes outside [{lo}, {hi}] cannot be packed in {bits} bits")
    raw = (codes & ((1 << bits) - 1)).astype(np.uint64)
    if bits == 16:
        return raw.astype("<u2").view(np.uint8).copy()
    per_byte = 8 // bits
    padded = np.zeros(packed_size(codes.size, bits) * per_byte, dtype=np.uint64)
    padded[: codes.size] = raw
    shifts = np.arange(per_byte, dtype=np.uint64) * np.uint64(bits)
    return (padded.reshape(-1, per_byte) << shifts).sum(axis=1).astype(np.uint8)


def unpack_bits(data: ArrayLike, bits: int, signed: bool, count: int) -> NDArray[np.int64]:
    """The first `count` codes stored in `data` by `pack_bits`, as int64 (sign-extended)."""
    _check_width(bits)
    data = np.asarray(data, dtype=np.uint8).ravel()
    if data.size < packed_size(count, bits):
        raise ValueError(f"{data.size} bytes hold fewer than {count} codes of {bits} bits")
    if bits == 16:
        raw = data[: 2 * count].view("<u2").astype(np.int64)
    else:
        per_byte = 8 // bits
        shifts = np.arange(per_byte, dtype=np.int64) * bits
        fields = (data.astype(np.int64)[:, None] >> shifts) & ((1 << bits) - 1)
        raw = fields.ravel()[:count]
    if signed:
        sign = np.int64(1) << (bits - 1)
        raw = (raw ^ sign) - sign  # two's complement sign extension
    return raw


def _check_width(bits: int) -> None:
    if bits not in WIDTHS:
        raise ValueError(f"packing supports {WIDTHS} bits, not {bits}")
