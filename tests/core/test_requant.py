"""qcc.core.requant: the one requantization object, against the formulas each backend wrote
before it existed and against a plain-integer reference of round_shift (ties away from zero)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.c.ops.common import Requant as CRequant
from backends.numpy_int import kernels
from qcc.core.errors import QccError
from qcc.core.ir import Node, Value
from qcc.core.requant import MAX_SHIFT, multiplier_shift, requant_of

CHANNELS = 3


def _node(mult: list[int], shift: list[int], zp: int, lo: int, hi: int, relu: bool) -> Node:
    attrs = {"multiplier": mult, "shift": shift, "out_zero_point": zp, "out_lo": lo,
             "out_hi": hi, "relu": int(relu)}
    return Node("QGemm", "n", [], [Value("y")], attrs, domain="qcc")


def _reference(acc: int, m: int, s: int, zp: int, lo: int, hi: int, relu: bool) -> int:
    """round(acc·m / 2^s) with ties away from zero, + zp, clamped; in Python integers."""
    t = acc * m
    q = (abs(t) + ((1 << s) >> 1)) >> s
    v = (q if t >= 0 else -q) + zp
    floor = max(lo, zp) if relu else lo  # the fused ReLU: real max(x, 0) is max(code, zp)
    return min(max(v, floor), hi)


formats = st.sampled_from([(0, 255), (-128, 127), (-32768, 32767), (0, 15), (-8, 7)])


@settings(max_examples=300, deadline=None)
@given(fmt=formats, relu=st.booleans(), zp_frac=st.floats(0, 1),
       mult=st.lists(st.integers(1, (1 << 24) - 1), min_size=CHANNELS, max_size=CHANNELS),
       shift=st.lists(st.integers(0, 40), min_size=CHANNELS, max_size=CHANNELS),
       acc=st.lists(st.integers(-(1 << 30), 1 << 30), min_size=CHANNELS, max_size=CHANNELS))
def test_requant_matches_previous_formulas_and_integer_reference(
        fmt: tuple[int, int], relu: bool, zp_frac: float, mult: list[int], shift: list[int],
        acc: list[int]) -> None:
    lo, hi = fmt
    zp = int(lo + zp_frac * (hi - lo))
    node = _node(mult, shift, zp, lo, hi, relu)
    req = requant_of(node)
    # the previous formulas: the floor of kernels._requant_params, c/ops/common.Requant.of and
    # c/tensors._narrow_range, the range checks of kernels and of the C emitter
    assert req.floor == (max(lo, zp) if relu else lo)
    assert req.valid == (min(mult) >= 1 and max(mult) < 1 << 24 and min(shift) >= 0
                         and max(shift) <= 62)
    c = CRequant.of(node, CHANNELS, "rq")
    assert (c.multipliers, c.shifts, c.zero_point, c.lo, c.hi) == (mult, shift, zp, req.floor, hi)
    got = kernels.requantize(np.array([acc], np.int64), node, axis=1)
    want = [_reference(a, m, s, zp, lo, hi, relu) for a, m, s in zip(acc, mult, shift)]
    assert got.tolist() == [want]
    assert got.dtype == req.dtype


@pytest.mark.parametrize("mult,shift", [([0], [3]), ([1 << 24], [0]), ([5], [-1]),
                                        ([5], [MAX_SHIFT + 1])])
def test_out_of_range_constants_are_refused_by_every_reader(mult: list[int],
                                                            shift: list[int]) -> None:
    node = _node(mult, shift, 0, -128, 127, False)
    assert not requant_of(node).valid
    with pytest.raises(QccError, match="requantization needs"):
        kernels.requantize(np.zeros((1, 1), np.int64), node, axis=1)
    with pytest.raises(QccError, match="requantization needs"):
        CRequant.of(node, 1, "rq")


@settings(max_examples=300, deadline=None)
@given(st.floats(2.0 ** -40, 2.0 ** 20, allow_nan=False))
def test_multiplier_shift_is_in_range_and_close(ratio: float) -> None:
    m, s = multiplier_shift(ratio)
    assert 1 <= m < 1 << 24 and 0 <= s
    assert abs(m * 2.0 ** -s - ratio) <= ratio * 2.0 ** -23
