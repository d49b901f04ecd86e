"""Weights of the emitted C: a layer's weight matrix (one row per output channel) stored at its
bit width as `static const` arrays.

Storage kinds, chosen from the codes themselves (`store_rows`), not from the format's width in
the weight's QuantSpec: a layer's codes often use fewer bits or levels than its format allows,
and training rewrites them after the quantization pass, so the library stores what it ships:
- `int8` / `int16`: codes of 5-8 / 9-16 bits, one C integer each (16-bit codes are packing's
  little-endian layout on every target qcc supports);
- `packed`: codes of 1, 2 or 4 bits, packed LSB first by qcc.core.numerics.packing.pack_bits (the
  C runtime's qcc_unpack_bits reads them back one row at a time);
- `signs`: binary weights, one bit per code (1 = +1, 0 = -1);
- `codebook`: codes that are few distinct levels (APoT, PoT): each weight stores the index of
  its level in a sorted table, packed at the index width (APoT codes: 2^bits levels at most);
  the kernels multiply by a level as shift-adds of its power-of-two terms (seeds/004 §2.2);
- `xnor`: the signs of a row in uint32 words, qcc.core.numerics.binary.pack_signs's layout, for
  XNOR-popcount layers.

`pack_dsp_rows` lays int8 rows out in the order the packed DSP kernels read them (ops/dsp.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backends.c.writer import CWriter
from qcc.core.numerics.binary import pack_signs
from qcc.core.numerics.packing import WIDTHS, pack_bits
from qcc.core.numerics.rounding import int_range

KINDS = ("int8", "int16", "packed", "signs", "codebook", "xnor")


@dataclass
class WeightRows:
    """A (rows, row_len) integer weight matrix as the C code stores it."""

    cname: str
    kind: str
    rows: int
    row_len: int
    bits: int  # stored bits per code (or per index, for a codebook)
    signed: bool
    data: np.ndarray  # the stored array, flat
    levels: np.ndarray | None = None  # codebook: the level of each index

    def with_tail(self, count: int) -> WeightRows:
        """The same rows followed by `count` zero codes, so a kernel may read a little past
        the last row (products with zero-padded patch entries, which add nothing)."""
        if count <= 0:
            return self
        if not self.direct:
            raise ValueError("only int8 / int16 rows take a zero tail")
        data = np.concatenate([self.data, np.zeros(count, self.data.dtype)])
        return WeightRows(self.cname, self.kind, self.rows, self.row_len, self.bits,
                          self.signed, data, self.levels)

    @property
    def nbytes(self) -> int:
        table = 0 if self.levels is None else self.levels.size * (2 * self.terms() + 1)
        return int(self.data.nbytes) + table

    @property
    def words(self) -> int:
        """xnor: uint32 words per row."""
        return -(-self.row_len // 32)

    @property
    def absmax(self) -> int:
        """Largest |code value| (level, for a codebook): bounds the accumulators."""
        if self.levels is not None:
            return int(np.abs(self.levels).max(initial=0))
        if self.kind in ("signs", "xnor"):
            return 1
        return int(np.abs(self.data.astype(np.int64)).max(initial=0))

    @property
    def row_ctype(self) -> str:
        """C type of one unpacked row element (what a kernel multiplies by)."""
        return "int16_t" if self.kind == "int16" else "int8_t"

    @property
    def direct(self) -> bool:
        """Rows readable in place (no unpacking into a scratch row)."""
        return self.kind in ("int8", "int16")

    def define(self, w: CWriter) -> None:
        """The `static const` arrays holding these weights."""
        ctype = {"int8": "int8_t", "int16": "int16_t", "xnor": "uint32_t"}.get(self.kind,
                                                                              "uint8_t")
        what = {"int8": "8-bit codes", "int16": "16-bit codes",
                "packed": f"{self.bits}-bit codes packed LSB first",
                "signs": "1-bit signs (1 = +1, 0 = -1)",
                "codebook": f"{self.bits}-bit level indices packed LSB first",
                "xnor": "signs in uint32 words, one row per output channel"}[self.kind]
        w.comment(f"{self.rows} x {self.row_len} weights: {what} ({self.data.nbytes} bytes)")
        values = [_literal(v, self.kind) for v in self.data.tolist()]
        w.array(f"static const {ctype} {self.cname}[{max(len(values), 1)}]", values or [0])
        if self.levels is not None:
            w.comment(f"the {self.levels.size} levels: {', '.join(map(str, self.levels))}")
            self._define_terms(w)

    def terms(self) -> int:
        """Power-of-two terms of the widest codebook level (shift-adds per product)."""
        assert self.levels is not None
        return max(1, max(bin(abs(int(v))).count("1") for v in self.levels))

    def _define_terms(self, w: CWriter) -> None:
        """Per level: the shifts of its power-of-two terms, a flag per term (0 = no term) and
        a sign flag (1 = negative), so x * level = +-sum of the flagged (x << shift)."""
        assert self.levels is not None
        count = self.terms()
        shifts, used, negs = [], [], []
        for level in self.levels.tolist():
            bits = [b for b in range(64) if abs(level) >> b & 1]
            shifts += bits + [0] * (count - len(bits))
            used += [1] * len(bits) + [0] * (count - len(bits))
            negs.append(int(level < 0))
        n = self.levels.size
        w.array(f"static const uint8_t {self.cname}_shift[{n * count}]", shifts)
        w.array(f"static const uint8_t {self.cname}_term[{n * count}]", used)
        w.array(f"static const uint8_t {self.cname}_neg[{n}]", negs)


def _literal(value: int, kind: str) -> str:
    if kind == "xnor":
        return f"0x{value:08X}u"
    if kind == "int16" and value == -32768:
        return "(-32767 - 1)"  # -32768 is the negation of an int constant: fine, but be plain
    return str(value)


def width_for(lo: int, hi: int, signed: bool) -> int:
    """The narrowest of packing's widths holding codes in [lo, hi]."""
    for bits in WIDTHS:
        if bits == 1 and signed:
            continue  # a 1-bit signed code holds {-1, 0}: binary weights use `signs`
        a, b = int_range(bits, signed)
        if a <= lo and hi <= b:
            return bits
    raise ValueError(f"codes in [{lo}, {hi}] need more than 16 bits")


def store_rows(codes: np.ndarray, cname: str, xnor: bool = False) -> WeightRows:
    """Choose how to store the (rows, row_len) integer matrix `codes` (module docstring)."""
    codes = np.asarray(codes, dtype=np.int64)
    rows, row_len = codes.shape
    flat = codes.ravel()
    distinct = np.unique(flat)
    if xnor or (distinct.size and np.all(np.abs(distinct) == 1)):
        if xnor:
            words = pack_signs(codes).astype(np.uint32).ravel()
            return WeightRows(cname, "xnor", rows, row_len, 1, True, words)
        data = pack_bits(flat > 0, 1, signed=False)
        return WeightRows(cname, "signs", rows, row_len, 1, True, data)
    lo, hi = int(flat.min(initial=0)), int(flat.max(initial=0))
    signed = lo < 0
    direct = width_for(lo, hi, signed) if max(-lo, hi) < 1 << 15 else 32
    index_bits = width_for(0, max(distinct.size - 1, 0), False)
    if index_bits < min(direct, 8) or direct > 16:  # few levels: store the level indices
        index = np.searchsorted(distinct, flat)
        data = index.astype(np.uint8) if index_bits == 8 else pack_bits(index, index_bits, False)
        return WeightRows(cname, "codebook", rows, row_len, index_bits, False, data, distinct)
    if direct <= 4:
        return WeightRows(cname, "packed", rows, row_len, direct, signed,
                          pack_bits(flat, direct, signed))
    kind = "int8" if direct == 8 else "int16"
    return WeightRows(cname, kind, rows, row_len, direct, True,
                      flat.astype(np.int8 if direct == 8 else np.int16))


# -- the DSP kernels' weight order (backends/c/ops/dsp.py) -------------------------------------
DSP_GROUP = 4  # taps per 32-bit word of int8 weights


def dsp_taps(k: int) -> int:
    """Taps per row of the DSP kernels: k rounded up to two words, so the inner loop runs two
    words per iteration (k = 27 -> 32, 144 -> 144; the padding taps are zero weights)."""
    return -(-k // (2 * DSP_GROUP)) * 2 * DSP_GROUP


def pack_dsp_rows(codes: np.ndarray, block: int) -> np.ndarray:
    """(rows, k) int8 codes in the order the DSP kernels read them (flat int8).

    Rows are taken in blocks of `block` (zero rows complete the last block) and taps in words
    of four, zero-padded to dsp_taps(k). Word g of a block is the word of its first row, then
    the second's, ..., so one pointer walks every row of the block. Inside a word the taps
    t0 t1 t2 t3 are stored as t0 t2 t1 t3: SXTB16 takes bytes 0 and 2 (giving the 16-bit pair
    t0, t1) and SXTB16 after a rotation by 8 bytes 1 and 3 (t2, t3), the order of consecutive
    int16 activations."""
    codes = np.asarray(codes, dtype=np.int64)
    rows, k = codes.shape
    if codes.size and (codes.min() < -128 or codes.max() > 127):
        raise ValueError("the DSP kernels take int8 weight codes")
    padded = np.zeros((-(-rows // block) * block, dsp_taps(k)), np.int64)
    padded[:rows, :k] = codes
    words = padded.reshape(padded.shape[0] // block, block, -1, DSP_GROUP)[..., [0, 2, 1, 3]]
    return words.transpose(0, 2, 1, 3).reshape(-1).astype(np.int8)
