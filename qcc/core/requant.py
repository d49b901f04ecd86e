"""The requantization of a requantizing op (QConv, QGemm, QAdd, Requantize): one object that the
NumPy kernels, their float fast paths and the C emitter all read.

    codes = clamp(round_shift(acc · M_c, S_c) + zp, floor, hi)

per output channel c (one (M, S) pair may serve all), with round_shift to nearest, ties away from
zero (qcc.core.numerics.rounding.round_shift; the TFLite reference integer ops write the same
rounding down, see STYLE.md). Codes above hi or below lo saturate (counted as overflows);
`floor` is lo, raised to the zero point by a fused ReLU, whose clamp is not an overflow: the
float ReLU(x) = max(x, 0) is max(code, zp) on codes (seeds/000 §B). The multiplier range
1 <= M < 2^24 (qcc.core.numerics.codes.MAX_MULTIPLIER) and 0 <= S <= 62 keep |acc · M| and the
shift inside int64 for every accumulator the kernels accept.

QAdd and Requantize multiply each input by its own multiplier first (`multipliers`, one per
input); their Requant has M = 1 and the common shift S.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from weakref import WeakKeyDictionary

import numpy as np

from qcc.core.errors import QccError
from qcc.core.ir import Node
from qcc.core.numerics.codes import MAX_MULTIPLIER, storage_dtype

MAX_SHIFT = 62
MULTIPLIER_BITS = 23  # M = round(m · 2^23) for a real ratio m · 2^e, m in [0.5, 1)


@dataclass(frozen=True)
class Requant:
    """Multipliers and shifts (one, or one per output channel), output zero point, code range
    [lo, hi] and whether a ReLU is fused (the clamp then starts at `floor`)."""

    multipliers: tuple[int, ...]
    shifts: tuple[int, ...]
    zero_point: int
    lo: int
    hi: int
    relu: bool

    @property
    def floor(self) -> int:
        """The lowest code the op writes: lo, or the zero point under a fused ReLU."""
        return max(self.lo, self.zero_point) if self.relu else self.lo

    @property
    def dtype(self) -> np.dtype:
        """The storage type of the output codes."""
        return storage_dtype(self.lo, self.hi)

    @property
    def valid(self) -> bool:
        """1 <= M < 2^24 and 0 <= S <= 62 for every channel."""
        return (min(self.multipliers) >= 1 and max(self.multipliers) < MAX_MULTIPLIER
                and 0 <= min(self.shifts) and max(self.shifts) <= MAX_SHIFT)

    def check(self, node: Node) -> Requant:
        """self, or one QccError naming the node when the constants are out of range."""
        if not self.valid:
            raise QccError(f"node {node.name!r}: requantization needs 1 <= M < 2^24 and "
                           f"0 <= S <= {MAX_SHIFT}")
        return self

    def per_channel(self, channels: int) -> tuple[list[int], list[int]] | None:
        """(multipliers, shifts) with one entry per channel, or None if they do not fit."""
        pairs = []
        for values in (self.multipliers, self.shifts):
            if len(values) == 1:
                pairs.append(list(values) * channels)
            elif len(values) == channels:
                pairs.append(list(values))
            else:
                return None
        return pairs[0], pairs[1]


def multiplier_shift(ratio: float) -> tuple[int, int]:
    """(M, S) with ratio ≈ M · 2^-S, 1 <= M < 2^24, S >= 0; exact when ratio is a power of two."""
    if not ratio > 0 or not math.isfinite(ratio):
        raise QccError(f"cannot requantize by the ratio {ratio}")
    mantissa, exponent = math.frexp(ratio)
    if mantissa == 0.5:  # a power of two: a pure shift
        e = exponent - 1
        return (1, -e) if e <= 0 else (1 << e, 0)
    m = round(mantissa * (1 << MULTIPLIER_BITS))
    shift = MULTIPLIER_BITS - exponent
    if shift < 0:
        m <<= -shift
        shift = 0
    if m >= MAX_MULTIPLIER:
        raise QccError(f"requantization ratio {ratio:.3g} is too large")
    return m, min(shift, MAX_SHIFT)


_CACHE: WeakKeyDictionary[Node, Requant] = WeakKeyDictionary()


def requant_of(node: Node) -> Requant:
    """The Requant of a requantizing node, read once from its attributes (`multiplier`,
    `shift`, `out_zero_point`, `out_lo`, `out_hi`, `relu`; see passes/quantize_graph.py)."""
    found = _CACHE.get(node)
    if found is None:
        a = node.attrs
        found = Requant(_ints(a.get("multiplier", 1)), _ints(a.get("shift", 0)),
                        int(a.get("out_zero_point", 0)), int(a["out_lo"]), int(a["out_hi"]),
                        bool(a.get("relu", 0)))
        _CACHE[node] = found
    return found


def writes_code_range(node: Node) -> bool:
    """Whether `node` clamps its output to a code range of its own (qcc.Quantize and the
    requantizing ops): `requant_of(node)` then gives that range and its floor."""
    return "out_lo" in node.attrs and "out_hi" in node.attrs


def _ints(value: object) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(value, np.int64).reshape(-1))
