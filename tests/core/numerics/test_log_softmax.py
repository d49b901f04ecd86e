"""Integer LogSoftmax against float LogSoftmax (NumPy, float64): every output code within
1/2 + eps(n, D_out) LSB of the exact value, the bound documented in
qcc/core/numerics/log_softmax.py, hence within one LSB of the correctly rounded one; over random
rows of several lengths, input widths and steps, the four output formats, and the extreme rows.
The integer log2 against math.log2."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qcc.core.numerics.log_softmax import (
    LOG_FRAC_BITS,
    error_bound_lsb,
    exact_codes,
    integer_log2,
    integer_log_softmax,
    integer_log_softmax_nd,
    log_softmax_params,
    output_range,
)
from qcc.core.numerics.rounding import int_range

# (bits, affine): fixed point has zero point 0, affine 2^(bits-1) - 1 (passes/quantize_graph.py)
OUTPUTS = [(8, False), (8, True), (16, False), (16, True)]


def output_format(in_step: float, in_bits: int, n: int, bits: int, affine: bool):
    """(step, zero point, lo, hi) as passes/quantize_graph.py chooses them."""
    lo, hi = int_range(bits, True)
    r = output_range(in_step, (1 << in_bits) - 1, n, bits)
    if affine:
        return r * 2.0 ** -bits, hi, lo, hi
    return r * 2.0 ** -(bits - 1), 0, lo, hi


def check_rows(q: np.ndarray, in_step: float, in_bits: int, out: tuple[int, bool]) -> float:
    """Assert the documented bound on rows `q`; returns the largest |o - exact| - 1/2."""
    n = q.shape[-1]
    step, zp, lo, hi = output_format(in_step, in_bits, n, *out)
    params = log_softmax_params(in_step, in_bits, step, zp, lo, hi)
    got = integer_log_softmax(q, params)
    exact = exact_codes(q, in_step, params, step)
    excess = float(np.abs(got - exact).max()) - 0.5
    assert excess <= error_bound_lsb(n, step), (n, excess, error_bound_lsb(n, step))
    rounded = np.clip(np.ceil(exact - 0.5), lo, hi)  # ties to the lower code, as the kernel
    assert np.abs(got - rounded).max() <= 1
    return excess


@pytest.mark.parametrize("in_bits", [4, 8, 12, 16])
@pytest.mark.parametrize("out", OUTPUTS, ids=lambda o: f"{'affine' if o[1] else 'fixed'}{o[0]}")
@pytest.mark.parametrize("step", [2.0**-10, 2.0**-4, 0.0371, 0.25, 1.0, 3.0])
def test_random_rows_within_the_bound(in_bits: int, out: tuple[int, bool], step: float) -> None:
    rng = np.random.default_rng(in_bits * 1000 + out[0] + out[1])
    lo, hi = int_range(in_bits, True)
    for n in (1, 2, 10, 12, 100, 1000):
        q = rng.integers(lo, hi + 1, size=(64, n))
        check_rows(q, step, in_bits, out)
        # rows bunched near their maximum: the range where the log term matters most
        near = hi - rng.integers(0, max(2, (hi - lo) // 64), size=(64, n))
        check_rows(near, step, in_bits, out)


@given(st.integers(1, 16), st.floats(2.0**-12, 8.0), st.sampled_from(OUTPUTS),
       st.lists(st.integers(-(2**15), 2**15 - 1), min_size=1, max_size=64))
def test_any_row_within_the_bound(in_bits: int, step: float, out: tuple[int, bool],
                                  row: list[int]) -> None:
    lo, hi = int_range(in_bits, True)
    check_rows(np.clip(np.array([row]), lo, hi), step, in_bits, out)


@given(st.integers(1 << 30, (1 << 63) - 1))
def test_integer_log2(s: int) -> None:
    """Q24 log2(S / 2^30): truncating, at most 2^-24 (plus the mantissa's rounding) below."""
    got = int(integer_log2(np.array([s], dtype=np.uint64))[0]) * 2.0 ** -LOG_FRAC_BITS
    exact = math.log2(s) - 30
    assert -2.0 ** -LOG_FRAC_BITS - 2.0 ** -28 <= got - exact <= 2.0 ** -28


def test_extreme_rows() -> None:
    step_in = 0.1
    for bits, affine in OUTPUTS:
        n = 4
        step, zp, lo, hi = output_format(step_in, 8, n, bits, affine)
        params = log_softmax_params(step_in, 8, step, zp, lo, hi)
        equal = integer_log_softmax(np.full((1, n), 17), params)
        assert np.all(equal == zp - round(math.log(n) / step))  # ln(1/n) everywhere
        dominant = integer_log_softmax(np.array([[127, -128, -128, -128]]), params)
        # ln p = -25.5 for the others (clamped to lo in the 8-bit formats, range 16), 0 for it
        assert dominant.tolist() == [[zp] + [max(lo, zp - round(25.5 / step))] * 3]


def test_axis_flatten_and_bad_formats() -> None:
    params = log_softmax_params(0.05, 8, 2.0**-11, 0, -32768, 32767)
    q = np.random.default_rng(1).integers(-128, 128, size=(3, 5, 7))
    moved = integer_log_softmax(np.moveaxis(q, 1, -1), params)
    assert np.array_equal(np.moveaxis(moved, -1, 1), integer_log_softmax_nd(q, params, 1, False))
    flat = integer_log_softmax(q.reshape(3, 35), params).reshape(q.shape)
    assert np.array_equal(flat, integer_log_softmax_nd(q, params, 1, True))
    for bad in [dict(in_step=0.0), dict(in_step=float("nan")), dict(in_bits=17),
                dict(out_step=2.0**-17), dict(out_step=float("inf"))]:
        args = dict(in_step=0.1, in_bits=8, out_step=2.0**-4, out_zero_point=0, out_lo=-128,
                    out_hi=127) | bad
        with pytest.raises(ValueError):
            log_softmax_params(**args)


def test_output_range_follows_the_input() -> None:
    assert output_range(2.0**-5, 255, 10, 16) == 16.0  # 7.97 + 2.30 -> 16
    assert output_range(2.0**-8, 255, 2, 16) == 2.0  # 1.0 + 0.69 -> 2
    assert output_range(2.0**-12, 15, 1, 8) == 1.0  # at least 1: steps >= 2^-16
    assert output_range(1.0, 65535, 10, 8) == 16.0  # 8-bit: at most 16 (TFLite's range)
    assert output_range(1.0, 65535, 10, 16) == 2.0**12
    assert output_range(2.0**-8, 255, None, 16) == 16.0  # unknown rows: n = 2^16
