"""qcc.core.numerics.fixed against seeds/001 §2.1's bit-level definition and exact rationals."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcc.core.numerics import fixed as F
from qcc.core.numerics.rounding import RngState
from qcc.core.quant_spec import QuantSpec

FORMATS = st.builds(F.FixedFormat, st.integers(2, 24), st.integers(-12, 12), st.booleans())


def half_away(value: Fraction) -> int:
    magnitude = math.floor(abs(value) + Fraction(1, 2))
    return magnitude if value >= 0 else -magnitude


def paper_value(code: int, fmt: F.FixedFormat) -> Fraction:
    """§2.1: signed r(-a0 + Σ_{i>=1} 2^-i a_i) on the two's complement bits a0 (MSB) ...;
    unsigned r Σ_{i=1..B} 2^-i a_i (r is the range, see the fixed.py docstring)."""
    bits = [(code >> (fmt.bits - 1 - i)) & 1 for i in range(fmt.bits)]  # a0 first
    r = Fraction(2) ** fmt.pdr_exp
    if fmt.signed:
        return r * (-bits[0] + sum(Fraction(a, 2**i) for i, a in enumerate(bits) if i))
    return r * sum(Fraction(a, 2 ** (i + 1)) for i, a in enumerate(bits))


@pytest.mark.parametrize("fmt", [F.FixedFormat(4, 0), F.FixedFormat(5, -3),
                                 F.FixedFormat(4, 2, signed=False), F.FixedFormat(6, -1, False)])
def test_dequantize_matches_the_papers_bit_definition(fmt: F.FixedFormat) -> None:
    lo, hi = fmt.code_range
    codes = np.arange(lo, hi + 1)
    got = F.dequantize(codes, fmt)
    assert [Fraction(v) for v in got] == [paper_value(c, fmt) for c in codes.tolist()]
    if fmt.signed:  # B = log2(r / Δ) + 1
        assert fmt.bits == math.log2(fmt.pdr / fmt.step) + 1


def test_step_and_spec_agree_with_quant_spec() -> None:
    for fmt in (F.FixedFormat(8, -1), F.FixedFormat(8, 3, signed=False)):
        spec = fmt.to_spec()
        assert spec.step == fmt.step and str(spec).startswith("fx8")
        assert F.FixedFormat.from_spec(spec) == fmt
    assert F.FixedFormat(8, -1).step == 2.0**-8 and F.FixedFormat(8, -1, False).step == 2.0**-9
    with pytest.raises(ValueError):
        F.FixedFormat.from_spec(QuantSpec(format="fixed", bits=8, pdr=0.3))


@given(FORMATS, st.lists(st.floats(-1e5, 1e5), min_size=1, max_size=30))
def test_quantize_rounds_to_nearest_and_saturates(fmt: F.FixedFormat, xs: list[float]) -> None:
    codes, overflow, state = F.quantize(xs, fmt)
    lo, hi = fmt.code_range
    ideal = [half_away(Fraction(x) / Fraction(2) ** fmt.step_exp) for x in xs]
    assert codes.tolist() == [min(hi, max(lo, v)) for v in ideal]
    assert overflow == sum(not lo <= v <= hi for v in ideal) and state is None


def test_quantize_ties_go_away_from_zero() -> None:
    fmt = F.FixedFormat(8, 0)  # Δ = 2^-7
    xs = np.array([0.5, 1.5, -0.5, -1.5, 2.5, -2.5]) * fmt.step
    assert F.quantize(xs, fmt)[0].tolist() == [1, 2, -1, -2, 3, -3]
    codes, overflow, _ = F.quantize([1.0, -1.0, -1.1, 0.999], fmt)
    assert codes.tolist() == [127, -128, -128, 127] and overflow == 3  # 0.999 -> 128


def test_quantize_handles_infinities_and_refuses_nan() -> None:
    codes, overflow, _ = F.quantize([np.inf, -np.inf], F.FixedFormat(8, 0))
    assert codes.tolist() == [127, -128] and overflow == 2
    with pytest.raises(ValueError):
        F.quantize([np.nan], F.FixedFormat(8, 0))


@given(st.floats(-0.9, 0.9), st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_stochastic_quantize_is_unbiased(x: float, seed: int) -> None:
    fmt, n = F.FixedFormat(6, 0), 4096
    codes, _, state = F.quantize(np.full(n, x), fmt, RngState(seed))
    target = x / fmt.step
    p = target - math.floor(target)
    assert set(codes.tolist()) <= {math.floor(target), math.floor(target) + 1}
    assert abs(codes.mean() - target) <= 6 * math.sqrt(p * (1 - p) / n) + 1e-6
    assert state.counter == n


@given(FORMATS, FORMATS, st.lists(st.integers(-(2**23), 2**24), min_size=1, max_size=30))
def test_requantize_is_a_rounded_saturated_rescale(src: F.FixedFormat, dst: F.FixedFormat,
                                                   raw: list[int]) -> None:
    lo_s, hi_s = src.code_range
    codes = [min(hi_s, max(lo_s, c)) for c in raw]
    out, overflow = F.requantize(codes, src, dst)
    ratio = Fraction(2) ** (src.step_exp - dst.step_exp)
    lo, hi = dst.code_range
    ideal = [half_away(c * ratio) for c in codes]
    assert out.tolist() == [min(hi, max(lo, v)) for v in ideal]
    assert overflow == sum(not lo <= v <= hi for v in ideal)


@given(st.integers(-(2**15), 2**15 - 1), st.integers(1, 10), st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_requantize_stochastic_is_unbiased(code: int, drop: int, seed: int) -> None:
    src, n = F.FixedFormat(16, 0), 4096
    dst = F.FixedFormat(16, drop)  # same width, coarser step: a right shift by `drop`
    out, overflow, _ = F.requantize_stochastic(np.full(n, code), src, dst, RngState(seed))
    target = Fraction(code, 2**drop)
    p = float(target - math.floor(target))
    assert overflow == 0
    assert abs(out.mean() - float(target)) <= 6 * math.sqrt(p * (1 - p) / n) + 1e-9


def test_requantize_stochastic_left_shift_is_exact_and_draws_nothing() -> None:
    out, overflow, state = F.requantize_stochastic([3, -4, 100], F.FixedFormat(8, 0),
                                                   F.FixedFormat(8, -2), RngState(5))
    assert out.tolist() == [12, -16, 127] and overflow == 1 and state == RngState(5)


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20))
def test_choose_pdr_is_the_smallest_power_of_two_covering_the_data(xs: list[float]) -> None:
    peak = max(abs(x) for x in xs)
    e = F.choose_pdr_exp(xs)
    if peak == 0:
        assert e == 0
    else:
        assert 2.0**e >= peak > 2.0 ** (e - 1)
        fmt = F.format_for(xs, 8)
        assert fmt.pdr == 2.0**e and F.quantize(xs, fmt)[1] <= len(xs)


def test_choose_pdr_on_exact_powers() -> None:
    assert F.choose_pdr_exp([0.25, -0.1]) == -2
    assert F.choose_pdr_exp([-0.26]) == -1
    assert F.choose_pdr_exp([3.0]) == 2
