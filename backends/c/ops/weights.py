"""How a kernel reads one row of weights (one output channel) and multiplies by its taps.

`RowReader` hides the storage kind of backends/c/packing.py from the conv and gemm kernels:
`fetch` writes the C that makes `wr` point at row `r` (unpacking sub-byte codes or signs into
a scratch row first), `product` the C expression of (x − zx) · w for one tap, as a multiply, or
for codebook (APoT / PoT) weights as shift-adds of the level's power-of-two terms: with
v = x − zx as an unsigned bit pattern, x·L = ±Σ_t (v << e_t) (a term's mask m_t is all ones
or zero), the sign applied as (p ^ neg) − neg (seeds/004 §2.2). Shifting the unsigned pattern
keeps the C defined for v < 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from backends.c.ops.base import Scratch
from backends.c.packing import WeightRows
from backends.c.writer import CWriter


@dataclass
class RowReader:
    rows: WeightRows
    rt: str  # runtime prefix, e.g. "digits_"
    acc_t: str  # int32_t or int64_t

    @property
    def scratch(self) -> list[Scratch]:
        """The unpacked row, when the storage cannot be read in place."""
        if self.rows.direct or (self.rows.kind == "codebook" and self.rows.bits == 8):
            return []
        return [Scratch("int8_t", self.rows.row_len)]

    @property
    def shift_add(self) -> bool:
        return self.rows.kind == "codebook"

    @property
    def unsigned_t(self) -> str:
        return "uint64_t" if self.acc_t == "int64_t" else "uint32_t"

    def fetch(self, w: CWriter, row: str, scratch: str | None) -> None:
        """Declare `wr`, the row `row` of weights (codes, or level indices for a codebook)."""
        r, k, name = self.rows, self.rows.row_len, self.rows.cname
        start = f"{row} * {k}" if " " not in row else f"({row}) * {k}"
        if r.direct or (r.kind == "codebook" and r.bits == 8):
            ctype = "uint8_t" if r.kind == "codebook" else r.row_ctype
            w.line(f"const {ctype} *const wr = {name} + {start};")
            return
        if r.kind == "signs":
            w.line(f"{self.rt}unpack_signs({name}, {start}, {k}, {scratch});")
        else:
            signed = int(r.signed and r.kind == "packed")
            w.line(f"{self.rt}unpack_bits({name}, {r.bits}, {signed}, {start}, {k}, {scratch});")
        w.line(f"const int8_t *const wr = {scratch};")

    def tap_constants(self, w: CWriter, tap: str) -> str:
        """Declare the constants of tap `tap` of the row; returns the C test of a zero weight."""
        if not self.shift_add:
            w.line(f"const {self.acc_t} wv = wr[{tap}];")
            return "wv == 0"
        name, terms, u = self.rows.cname, self.rows.terms(), self.unsigned_t
        w.line(f"const int32_t j = wr[{tap}];")
        for t in range(terms):
            w.line(f"const uint32_t e{t} = {name}_shift[j * {terms} + {t}];")
            w.line(f"const {u} m{t} = ({u})0 - {name}_term[j * {terms} + {t}];")
        w.line(f"const {u} ng = ({u})0 - {name}_neg[j];")
        return f"{name}_term[j * {terms}] == 0"  # a level with no term is 0

    def product(self, v: str) -> str:
        """C expression of v · w for the tap whose constants `tap_constants` declared."""
        if not self.shift_add:
            return f"({self.acc_t})({v}) * wv"
        u = self.unsigned_t
        terms = " + ".join(f"((({u})({v}) << e{t}) & m{t})"
                           for t in range(self.rows.terms()))
        return f"({self.acc_t})((({terms}) ^ ng) - ng)"
