"""Table ops against the correctly rounded function over every input code.

Exact tables (inputs up to 10 bits) must equal the reference everywhere; interpolated ones (wider
inputs) must stay within one LSB for the activations qcc lowers this way (Sigmoid, Tanh,
HardSigmoid, HardSwish, the ONNX definitions), over every code of the input range."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qcc.core.numerics.lut import CodeFormat, apply_table, build_table, correctly_rounded


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # the overflow-free form


def hard_sigmoid(x: np.ndarray) -> np.ndarray:
    return np.clip(0.2 * x + 0.5, 0.0, 1.0)  # ONNX defaults alpha 0.2, beta 0.5


def hard_swish(x: np.ndarray) -> np.ndarray:
    return x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)


FUNCTIONS = {"sigmoid": (sigmoid, 1 / 256, 1 / 32768, False),
             "tanh": (np.tanh, 1 / 128, 1 / 32767, True),
             "hard_sigmoid": (hard_sigmoid, 1 / 256, 1 / 32768, False),
             "hard_swish": (hard_swish, 8 / 127, 8 / 32767, True)}


def all_codes(fmt: CodeFormat) -> np.ndarray:
    lo, hi = fmt.range
    return np.arange(lo, hi + 1, dtype=np.int64)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("in_bits,in_scale,zero_point",
                         [(8, 0.05, 3), (8, 0.5, -7), (10, 2**-6, 0), (12, 2**-6, 0),
                          (16, 2**-8, 0), (16, 2**-11, 0), (16, 2**-3, 0), (16, 0.0013, 100)])
@pytest.mark.parametrize("out_bits", [8, 16])
def test_every_code_within_one_lsb(name: str, in_bits: int, in_scale: float, zero_point: int,
                                   out_bits: int) -> None:
    f, scale8, scale16, signed = FUNCTIONS[name]
    src = CodeFormat(in_scale, zero_point, in_bits, True)
    dst = CodeFormat(scale8 if out_bits == 8 else scale16, 0, out_bits, signed)
    lut = build_table(f, src, dst)
    codes = all_codes(src)
    error = np.abs(apply_table(codes, lut) - correctly_rounded(f, codes, src, dst)).max()
    assert error == lut.max_error_lsb
    assert error == 0 if in_bits <= 10 else error <= 1
    assert len(lut.table) <= 4097


@given(st.integers(2, 16), st.floats(1e-4, 1.0), st.integers(-50, 50), st.booleans())
def test_exact_or_measured(in_bits: int, in_scale: float, zero_point: int, signed: bool) -> None:
    src = CodeFormat(in_scale, zero_point, in_bits, signed)
    dst = CodeFormat(1 / 128, 0, 8, True)
    lut = build_table(np.tanh, src, dst)
    codes = all_codes(src)
    error = np.abs(apply_table(codes, lut) - correctly_rounded(np.tanh, codes, src, dst)).max()
    assert error == lut.max_error_lsb <= 1


def test_refuses_bad_formats() -> None:
    with pytest.raises(ValueError):
        build_table(np.tanh, CodeFormat(0.0, 0, 8, True), CodeFormat(1 / 128, 0, 8, True))
    with pytest.raises(ValueError):
        build_table(np.tanh, CodeFormat(0.1, 0, 17, True), CodeFormat(1 / 128, 0, 8, True))
