"""Pieces shared by the C kernels: accumulator types, requantization, affine index loops.

Accumulators: a layer accumulates in int32_t when the bound of kernels.exact_float_type
(k · max|x − zx| · max|w|, plus the largest |bias|) is below 2^31, in int64_t otherwise; the bound
comes from the code ranges of the input format and the actual weights, so it holds for every
input. Requantization (kernels.requantize) runs in 32 bits when |acc · M| < 2^31 and S <= 31 is
proved the same way, in 64 bits otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from backends.c.writer import CWriter
from qcc.core.errors import QccError
from qcc.core.ir import Node
from qcc.core.requant import requant_of

INT32_LIMIT = 1 << 31
INT64_LIMIT = 1 << 63
REQUANT_LIMIT = 1 << 62  # kernels.requantize refuses |acc · M| >= 2^62


def acc_type(bound: int, node: Node) -> str:
    """int32_t or int64_t: the narrowest C type holding every partial sum up to `bound`."""
    if bound < INT32_LIMIT:
        return "int32_t"
    if bound < INT64_LIMIT:
        return "int64_t"
    raise QccError(f"node {node.name!r}: accumulator bound {bound:.3g} exceeds 64 bits")


def int_literal(value: int) -> str:
    """A C integer constant of `value` that is valid for every int32 / int64 value."""
    if value == -(1 << 31):
        return "(-2147483647 - 1)"
    if abs(value) >= INT32_LIMIT:
        return f"INT64_C({value})"
    return str(value)


def linear(terms: Sequence[tuple[str, int]], constant: int = 0) -> str:
    """A readable C expression of Σ coef·var + constant (`oh * 2 + kh - 1`, not `oh * 2 + kh * 1
    + -1`)."""
    parts = []
    for var, coef in terms:
        if coef == 0:
            continue
        term = var if abs(coef) == 1 else f"{var} * {abs(coef)}"
        parts.append(("- " if coef < 0 else "+ ") + term)
    if constant:
        parts.append(f"- {-constant}" if constant < 0 else f"+ {constant}")
    if not parts:
        return "0"
    text = " ".join(parts)
    return text[2:] if text.startswith("+ ") else "-" + text[2:]


@dataclass
class Requant:
    """The requantization of one node: acc -> round_shift(acc · M, S) + zp, clamped to [lo, hi]
    (lo already raised to the zero point by a fused ReLU)."""

    multipliers: list[int]
    shifts: list[int]
    zero_point: int
    lo: int
    hi: int
    prefix: str  # C name prefix of the per-channel tables

    @classmethod
    def of(cls, node: Node, channels: int, prefix: str) -> Requant:
        """The node's requantization (qcc.core.requant) with one pair per channel."""
        req = requant_of(node).check(node)
        pairs = req.per_channel(channels)
        if pairs is None:
            raise QccError(f"node {node.name!r}: {len(req.multipliers)} multipliers for "
                           f"{channels} channels")
        return cls(pairs[0], pairs[1], req.zero_point, req.floor, req.hi, prefix)

    @property
    def per_channel(self) -> bool:
        return len(set(self.multipliers)) > 1 or len(set(self.shifts)) > 1

    def define(self, w: CWriter) -> int:
        """The per-channel multiplier and shift tables (nothing when one pair serves all);
        returns their bytes, which count as the model's constants."""
        size = 0
        if len(set(self.multipliers)) > 1:  # fixed point: M = 1 everywhere, shifts only
            w.array(f"static const int32_t {self.prefix}_mult[{len(self.multipliers)}]",
                    self.multipliers)
            size += 4 * len(self.multipliers)
        if len(set(self.shifts)) > 1:
            w.array(f"static const uint8_t {self.prefix}_shift[{len(self.shifts)}]",
                    self.shifts)
            size += len(self.shifts)
        return size

    def params(self, channel: str) -> tuple[str, str]:
        m = (f"{self.prefix}_mult[{channel}]" if len(set(self.multipliers)) > 1
             else str(self.multipliers[0]))
        s = (f"{self.prefix}_shift[{channel}]" if len(set(self.shifts)) > 1
             else str(self.shifts[0]))
        return m, s

    def expr(self, acc: str, channel: str, bound: int, acc_t: str, rt: str) -> str:
        """C expression (int32_t) requantizing the accumulator `acc` of `channel`.

        `rt` is the runtime prefix (qcc_ renamed to the model's). When |acc · M| may reach
        2^62, where the interpreter refuses, acc is clamped first so the C stays defined."""
        m, s = self.params(channel)
        top_m = max(self.multipliers)
        tail = f"{m}, {s}, {self.zero_point}, {int_literal(self.lo)}, {int_literal(self.hi)}"
        small = max(abs(self.lo), abs(self.hi), abs(self.zero_point)) < 1 << 30
        if acc_t == "int32_t" and bound * top_m < INT32_LIMIT and max(self.shifts) <= 31 \
                and small:
            return f"{rt}requantize32({acc}, {tail})"
        if bound * top_m >= REQUANT_LIMIT:
            limit = int_literal((REQUANT_LIMIT - 1) // top_m)
            acc = f"({acc} > {limit} ? {limit} : {acc} < -{limit} ? -{limit} : {acc})"
        return f"{rt}requantize((int64_t){acc}, {tail})"


# -- affine index loops ------------------------------------------------------------------------
@dataclass
class Affine:
    """Element offsets offset + Σ_d i_d · strides[d] of one operand over a loop nest."""

    offset: int
    strides: tuple[int, ...]


def affine_of(index_map: np.ndarray) -> Affine | None:
    """The affine form of an integer index map (shape = loop shape), or None if it has none."""
    m = np.asarray(index_map, dtype=np.int64)
    if m.size == 0:
        return Affine(0, (0,) * m.ndim)
    origin = (0,) * m.ndim
    strides = []
    for d in range(m.ndim):
        step = [0] * m.ndim
        step[d] = 1 if m.shape[d] > 1 else 0
        strides.append(int(m[tuple(step)] - m[origin]) if m.shape[d] > 1 else 0)
    grid = sum(np.arange(n).reshape([-1 if i == d else 1 for i in range(m.ndim)]) * s
               for d, (n, s) in enumerate(zip(m.shape, strides)))
    if not np.array_equal(m, int(m[origin]) + grid):
        return None
    return Affine(int(m[origin]), tuple(strides))


def collapse(shape: Sequence[int], operands: list[Affine]) -> tuple[list[int], list[Affine]]:
    """Drop unit dimensions and merge neighbours that every operand walks contiguously."""
    dims = [d for d in range(len(shape)) if shape[d] != 1]
    sizes = [int(shape[d]) for d in dims]
    strides = [[op.strides[d] for d in dims] for op in operands]
    i = len(sizes) - 1
    while i > 0:
        if all(st[i - 1] == st[i] * sizes[i] for st in strides):
            sizes[i - 1] *= sizes[i]
            for st in strides:
                st[i - 1] = st[i]
                del st[i]
            del sizes[i]
        i -= 1
    return sizes, [Affine(op.offset, tuple(st)) for op, st in zip(operands, strides)]


def affine_loops(w: CWriter, shape: Sequence[int], operands: list[Affine],
                 body: Callable[[list[str]], list[str]]) -> None:
    """Nested for-loops over `shape`; body gets one C index expression per operand."""
    sizes, ops = collapse(shape, operands)
    names = [f"i{d}" for d in range(len(sizes))]
    exprs = []
    for op in ops:
        terms = [str(op.offset)] if op.offset else []
        terms += [n if s == 1 else f"{n} * {s}" for n, s in zip(names, op.strides) if s]
        exprs.append(" + ".join(terms) or "0")
    if not sizes:
        w.lines_of(body(exprs))
        return
    w.line(f"int32_t {', '.join(names)};")
    _nest(w, sizes, names, lambda: w.lines_of(body(exprs)))


def _nest(w: CWriter, sizes: list[int], names: list[str], inner: Callable[[], None]) -> None:
    if not sizes:
        inner()
        return
    with w.block(f"for ({names[0]} = 0; {names[0]} < {sizes[0]}; ++{names[0]})"):
        _nest(w, sizes[1:], names[1:], inner)
