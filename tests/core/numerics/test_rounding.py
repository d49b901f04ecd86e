"""numerics.rounding against exact rationals, Python-int definitions and TFLite's values."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcc.core.numerics import rounding as R

INT32 = st.integers(R.INT32_MIN, R.INT32_MAX)
INT64 = st.integers(-(2**63), 2**63 - 1)


def half_away(value: Fraction) -> int:
    """Nearest integer, ties away from zero, computed on exact rationals."""
    magnitude = math.floor(abs(value) + Fraction(1, 2))
    return magnitude if value >= 0 else -magnitude


def vqrdmulh(a: int, b: int) -> int:
    """ARM VQRDMULH as its manual defines it: sat32((2ab + 2^31) >> 32)."""
    return max(R.INT32_MIN, min(R.INT32_MAX, (2 * a * b + (1 << 31)) >> 32))


# --- round_shift / rounding_divide_by_pot -----------------------------------------------------

@pytest.mark.parametrize("x, s, expected", [
    (5, 1, 3), (-5, 1, -3), (3, 1, 2), (-3, 1, -2), (1, 1, 1), (-1, 1, -1),
    (6, 2, 2), (-6, 2, -2), (-7, 2, -2), (-2, 2, -1), (2, 2, 1), (-9, 2, -2), (9, 2, 2),
    (7, 0, 7), (-7, 0, -7), (0, 5, 0), (-(2**62), 62, -1), (2**62, 62, 1),
])
def test_round_shift_ties_go_away_from_zero(x: int, s: int, expected: int) -> None:
    assert int(R.round_shift(x, s)) == expected


@given(INT64, st.integers(0, 62))
def test_round_shift_matches_exact_rational(x: int, s: int) -> None:
    assert int(R.round_shift(x, s)) == half_away(Fraction(x, 2**s))


def test_round_shift_broadcasts_per_channel_shifts() -> None:
    x = np.array([[10, -10], [3, -3]])
    assert R.round_shift(x, np.array([1, 2])).tolist() == [[5, -3], [2, -1]]


@given(INT32, st.integers(0, 31))
def test_rounding_divide_by_pot_matches_exact_rational(x: int, e: int) -> None:
    out = R.rounding_divide_by_pot(x, e)
    assert out.dtype == np.int32 and int(out) == half_away(Fraction(x, 2**e))


def test_rounding_divide_by_pot_refuses_bad_exponents() -> None:
    with pytest.raises(ValueError):
        R.rounding_divide_by_pot(1, 32)
    with pytest.raises(ValueError):
        R.rounding_divide_by_pot(2**31, 1)


# --- saturation -------------------------------------------------------------------------------

@given(st.lists(INT64, min_size=1, max_size=20), st.integers(1, 32), st.booleans())
def test_saturate_clips_and_counts(values: list[int], bits: int, signed: bool) -> None:
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    out, count = R.saturate(values, bits, signed)
    assert out.tolist() == [min(hi, max(lo, v)) for v in values]
    assert count == sum(not lo <= v <= hi for v in values)


@given(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=20), st.integers(0, 40),
       st.integers(2, 32), st.booleans())
def test_shift_left_saturate_is_exact_or_saturated(values: list[int], s: int, bits: int,
                                                   signed: bool) -> None:
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    out, count = R.shift_left_saturate(values, s, bits, signed)
    products = [v * 2**s for v in values]
    assert out.tolist() == [min(hi, max(lo, p)) for p in products]
    assert count == sum(not lo <= p <= hi for p in products)


def test_round_half_away_on_floats() -> None:
    v = [0.5, -0.5, 1.5, -1.5, 2.5, 0.49999999999999994, -0.49999999999999994, 3.0, -2.7]
    assert R.round_half_away(v).tolist() == [1, -1, 2, -2, 3, 0, 0, 3, -3]


# --- gemmlowp / TFLite ------------------------------------------------------------------------

EDGES = [R.INT32_MIN, R.INT32_MIN + 1, -(2**30), -3, -1, 0, 1, 3, 2**30, R.INT32_MAX]


def test_srdhm_edge_pairs_match_vqrdmulh() -> None:
    a, b = np.meshgrid(EDGES, EDGES)
    out = R.saturating_rounding_doubling_high_mul(a, b)
    assert out.tolist() == [[vqrdmulh(x, y) for x, y in zip(ra, rb)]
                            for ra, rb in zip(a.tolist(), b.tolist())]
    assert int(R.saturating_rounding_doubling_high_mul(R.INT32_MIN, R.INT32_MIN)) == R.INT32_MAX


@given(INT32, INT32)
def test_srdhm_matches_vqrdmulh(a: int, b: int) -> None:
    assert int(R.saturating_rounding_doubling_high_mul(a, b)) == vqrdmulh(a, b)


# TFLite quantization_util_test.cc: QuantizeMultiplier{Array,SmallerThanOneExp,GreaterThanOne,
# Underflow}.
TFLITE_MULTIPLIERS = [
    (-4, -1073741824, 3), (-2, -1073741824, 2), (-1, -1073741824, 1), (-0.5, -1073741824, 0),
    (-0.25, -1073741824, -1), (-0.125, -1073741824, -2), (0, 0, 0), (0.125, 1073741824, -2),
    (0.25, 1073741824, -1), (0.5, 1073741824, 0), (1, 1073741824, 1), (2, 1073741824, 2),
    (4, 1073741824, 3), (0.50 - 5e-9, 2147483627, -1), (0.50 - 1e-10, 1073741824, 0),
    (0.75, 1610612736, 0), (1 - 1e-9, 2147483646, 0), (1 + 1e-11, 1073741824, 1),
    (1.25, 1342177280, 1), (1.50, 1610612736, 1), (1.75, 1879048192, 1),
    (2 - 1e-9, 2147483647, 1), (2 - 1e-11, 1073741824, 2),
    (math.ldexp(1.0, -31), 1073741824, -30), (math.ldexp(1.0, -32), 1073741824, -31),
    (math.ldexp(float(np.float32(0.99)), -32), 0, 0), (math.ldexp(1.0, -33), 0, 0),
]


@pytest.mark.parametrize("real, multiplier, shift", TFLITE_MULTIPLIERS)
def test_quantize_multiplier_matches_tflite(real: float, multiplier: int, shift: int) -> None:
    assert R.quantize_multiplier(real) == (multiplier, shift)


def test_quantize_multiplier_vectorised() -> None:
    reals = np.array([r for r, _, _ in TFLITE_MULTIPLIERS])
    m, s = R.quantize_multiplier(reals)
    assert m.dtype == np.int32
    assert list(zip(m.tolist(), s.tolist())) == [(q, e) for _, q, e in TFLITE_MULTIPLIERS]


@given(st.floats(2.0**-31, 2.0**30))
def test_quantize_multiplier_is_the_nearest_31_bit_mantissa(real: float) -> None:
    m, shift = R.quantize_multiplier(real)
    assert 2**30 <= m < 2**31
    approx = Fraction(m) * Fraction(2) ** (shift - 31)
    assert abs(approx - Fraction(real)) <= Fraction(2) ** (shift - 32)


# TFLite MultiplyByQuantizedMultiplierInt32 (double rounding).
@pytest.mark.parametrize("x, real, expected", [
    (0, 0.1, 0), (1, 0, 0), (10000, 0.00097656, 10), (-10000, 0.00097656, -10),
    (R.INT32_MIN, 0.00001, -21475), (R.INT32_MAX, 0.00001, 21475),
    (10000, -0.00097656, -10), (-10000, -0.00097656, 10),
    (R.INT32_MIN, -0.00001, 21475), (R.INT32_MAX, -0.00001, -21475),
])
def test_multiply_by_quantized_multiplier_matches_tflite(x: int, real: float,
                                                         expected: int) -> None:
    m, shift = R.quantize_multiplier(real)
    assert int(R.multiply_by_quantized_multiplier(x, m, shift)) == expected


def test_multiply_by_quantized_multiplier_max_operands() -> None:
    x, m, shift = R.INT32_MAX, R.INT32_MAX, -3
    expected = half_away(Fraction(x * m, 2 ** (31 - shift)))
    assert int(R.multiply_by_quantized_multiplier(x, m, shift)) == expected
    assert int(R.multiply_by_quantized_multiplier(-x, m, shift)) == -expected


@given(INT32, st.floats(2.0**-30, 2.0**8))
def test_multiply_by_quantized_multiplier_is_composed_as_tflite(x: int, real: float) -> None:
    m, shift = R.quantize_multiplier(real)
    left, right = max(shift, 0), max(-shift, 0)
    shifted = max(R.INT32_MIN, min(R.INT32_MAX, x * 2**left))
    expected = half_away(Fraction(vqrdmulh(shifted, m), 2**right))
    assert int(R.multiply_by_quantized_multiplier(x, m, shift)) == expected
    if shifted == x * 2**left:  # no saturation: within one LSB of the exact product
        exact = Fraction(x) * Fraction(m) * Fraction(2) ** (shift - 31)
        assert abs(expected - exact) <= 1


# --- PRNG and stochastic rounding -------------------------------------------------------------

def mix32_reference(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


@given(st.integers(0, 2**32 - 1), st.lists(st.integers(0, 2**32 - 1), max_size=20))
def test_rand_u32_matches_python_int_definition(seed: int, indices: list[int]) -> None:
    key = mix32_reference(seed ^ 0x9E3779B9)
    assert R.rand_u32(seed, indices).tolist() == [mix32_reference(i ^ key) for i in indices]


def test_mix32_is_injective_on_a_large_sample() -> None:
    out = R.mix32(np.arange(1 << 20, dtype=np.uint32) * np.uint32(2654435761))
    assert np.unique(out).size == 1 << 20


def test_rand_u32_is_uniform_in_its_top_byte() -> None:
    draws, _ = R.draw_u32(R.RngState(seed=7), (1 << 16,))
    counts = np.bincount(draws >> 24, minlength=256)
    chi2 = float(((counts - 256.0) ** 2 / 256.0).sum())
    assert chi2 < 255 + 6 * math.sqrt(2 * 255)  # mean 255, sd ~22.6 for 255 dof


def test_draws_are_a_stream_over_the_counter() -> None:
    state = R.RngState(seed=3, counter=2**32 - 4)  # also crosses the 32-bit wrap
    first, state = R.draw_u32(state, (3,))
    second, state = R.draw_u32(state, (2, 3))
    whole, _ = R.draw_u32(R.RngState(seed=3, counter=2**32 - 4), (9,))
    assert np.concatenate([first, second.ravel()]).tolist() == whole.tolist()
    assert state.counter == 5


@given(st.integers(-(2**31), 2**31 - 1), st.integers(0, 31), st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None)
def test_stochastic_round_shift_is_unbiased(x: int, s: int, seed: int) -> None:
    n = 4096
    out, state = R.stochastic_round_shift(np.full(n, x), s, R.RngState(seed))
    target = Fraction(x, 2**s)
    floor = math.floor(target)
    assert set(out.tolist()) <= {floor, floor + 1}
    assert state.counter == n
    p = float(target - floor)
    # The mean of n Bernoulli(p) draws: within 6 standard deviations (plus 2^-32 granularity).
    # For p far below 1/n the normal bound is below a single hit, which has probability ~np
    # (hypothesis found x = 1, s = 18): allow 3 hits more, P(X >= 4) ~ (np)^4 / 24 there.
    assert abs(out.mean() - float(target)) <= 6 * math.sqrt(p * (1 - p) / n) + 3 / n + 1e-9


def test_stochastic_round_shift_expectation_over_a_full_period_is_exact() -> None:
    # For s bits, u = draw >> (32 - s); over 2^32 consecutive counters every u appears equally
    # often, so the exact mean is x / 2^s. Check it on the top-s-bit distribution of 2^16 draws
    # replaced by its exact equivalent: x + u over all u in [0, 2^s).
    for x in (-7, -6, -1, 0, 5, 13):
        for s in (1, 2, 3):
            outs = [(x + u) >> s for u in range(2**s)]
            assert Fraction(sum(outs), 2**s) == Fraction(x, 2**s)
            draws = np.array([u << (32 - s) for u in range(2**s)], dtype=np.uint64)
            u = (draws >> np.uint64(32 - s)).astype(np.int64)
            mask = (1 << s) - 1
            assert ((x >> s) + (((x & mask) + u) >> s)).tolist() == outs


def test_stochastic_round_shift_with_zero_shift_is_identity_but_draws() -> None:
    out, state = R.stochastic_round_shift([5, -5], 0, R.RngState(1, 10))
    assert out.tolist() == [5, -5] and state.counter == 12
