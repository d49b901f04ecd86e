"""Integer Softmax against the correctly rounded float Softmax: within one LSB for every row.

The property is the module's documented bound (qcc/core/numerics/softmax.py): exhaustive over many
random rows of several lengths, input widths, steps and output formats, plus the extreme rows
(all equal, one dominant class, the whole code range)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qcc.core.numerics.rounding import int_range
from qcc.core.numerics.softmax import integer_softmax, reference_codes, softmax_tables

OUTPUTS = [(8, False), (8, True), (16, True), (16, False)]


@pytest.mark.parametrize("in_bits", [4, 8, 12, 16])
@pytest.mark.parametrize("out_bits,out_signed", OUTPUTS)
@pytest.mark.parametrize("step", [2.0**-10, 2.0**-4, 0.0371, 0.25, 1.0, 3.0])
def test_random_rows_within_one_lsb(in_bits: int, out_bits: int, out_signed: bool,
                                    step: float) -> None:
    rng = np.random.default_rng(in_bits * 1000 + out_bits)
    lo, hi = int_range(in_bits, True)
    tables = softmax_tables(step, in_bits, out_bits, out_signed)
    for n in (1, 2, 10, 12, 100, 1000):
        q = rng.integers(lo, hi + 1, size=(64, n))
        diff = np.abs(integer_softmax(q, tables) - reference_codes(q, step, tables))
        assert diff.max() <= 1, (n, diff.max())


@given(st.integers(1, 16), st.floats(2.0**-12, 8.0), st.sampled_from(OUTPUTS),
       st.lists(st.integers(-(2**15), 2**15 - 1), min_size=1, max_size=40))
def test_any_row_within_one_lsb(in_bits: int, step: float, out: tuple[int, bool],
                                row: list[int]) -> None:
    lo, hi = int_range(in_bits, True)
    q = np.clip(np.array([row]), lo, hi)
    tables = softmax_tables(step, in_bits, *out)
    assert np.abs(integer_softmax(q, tables) - reference_codes(q, step, tables)).max() <= 1


def test_extreme_rows() -> None:
    tables = softmax_tables(0.1, 8, 8, False)
    equal = np.full((1, 4), 17)
    assert integer_softmax(equal, tables).tolist() == [[64, 64, 64, 64]]
    dominant = np.array([[127, -128, -128]])
    assert integer_softmax(dominant, tables).tolist() == [[255, 0, 0]]  # 1.0 clamps to 255/256
    signed = softmax_tables(0.1, 8, 8, True)
    assert integer_softmax(dominant, signed).tolist() == [[127, -128, -128]]


def test_axis_and_bad_formats() -> None:
    tables = softmax_tables(0.05, 8, 16, True)
    q = np.random.default_rng(1).integers(-128, 128, size=(3, 5, 7))
    along_1 = integer_softmax(q, tables, axis=1)
    moved = integer_softmax(np.moveaxis(q, 1, -1), tables)
    assert np.array_equal(np.moveaxis(moved, -1, 1), along_1)
    for bad in [dict(in_step=0.0, in_bits=8), dict(in_step=float("nan"), in_bits=8),
                dict(in_step=0.1, in_bits=17), dict(in_step=0.1, in_bits=8, out_bits=12)]:
        with pytest.raises(ValueError):
            softmax_tables(**bad)
