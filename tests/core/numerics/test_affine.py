"""qcc.core.numerics.affine against onnxruntime, TFLite's documented values and seeds/000 §B."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from qcc.core.numerics import affine as A
from qcc.core.numerics.rounding import quantize_multiplier


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def single_node_model(node: onnx.NodeProto, inputs: list, outputs: list,
                      inits: list) -> onnx.ModelProto:
    graph = helper.make_graph([node], "g", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


# --- choosing parameters ----------------------------------------------------------------------

@pytest.mark.parametrize("vmin, vmax, scale, zero_point", [
    (-10.0, 30.0, 0.156863, 64), (0.0, 30.0, 0.117647, 0), (-10.0, 0.0, 0.039216, 255),
])
def test_choose_qparams_matches_tflite(vmin: float, vmax: float, scale: float,
                                       zero_point: int) -> None:
    p = A.choose_qparams(vmin, vmax)
    assert p.scale == pytest.approx(scale, abs=1e-5) and p.zero_point == zero_point


@given(st.floats(-1e3, 0.0), st.floats(1e-3, 1e3), st.booleans())
def test_choose_qparams_makes_zero_exact_and_covers_the_range(vmin: float, vmax: float,
                                                              signed: bool) -> None:
    p = A.choose_qparams(vmin, vmax, 8, signed)
    lo, hi = p.code_range
    assert lo <= p.zero_point <= hi
    assert A.dequantize([p.zero_point], p)[0] == 0.0
    assert A.quantize([0.0], p)[0].tolist() == [p.zero_point]
    nudged_lo, nudged_hi = p.nudged_range()
    assert nudged_lo <= vmin + p.scale / 2 + 1e-9 and nudged_hi >= vmax - p.scale / 2 - 1e-9


def test_choose_qparams_widens_to_contain_zero_and_handles_a_point() -> None:
    assert A.choose_qparams(2.0, 5.0) == A.choose_qparams(0.0, 5.0)
    assert A.choose_qparams(0.0, 0.0) == A.AffineParams(1.0, 0)


def test_banner_qparams_is_the_papers_formula() -> None:
    p = A.banner_qparams(-1.0, 3.0, bits=8)  # scale = 4 / 2^8, zp = round(1 / scale)
    assert (p.scale, p.zero_point) == (4 / 256, 64)
    assert A.banner_qparams(-3.0, 0.0, bits=4).zero_point == 15  # 2^M clamped to 2^M - 1
    assert A.banner_qparams(1.0, 3.0, bits=4).zero_point == 0


def test_chunked_minmax_averages_chunk_extremes() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 3, 5, 5))
    vmin, vmax = A.chunked_minmax(x, 4)
    chunks = [x[2 * i: 2 * i + 2] for i in range(4)]  # 4 chunks of 2 whole samples
    assert vmin == pytest.approx(sum(c.min() for c in chunks) / 4)
    assert vmax == pytest.approx(sum(c.max() for c in chunks) / 4)
    assert A.chunked_minmax(x, 1) == (x.min(), x.max())
    assert vmin > x.min() and vmax < x.max()  # the point: a smaller dynamic range


# --- QuantizeLinear / DequantizeLinear --------------------------------------------------------

def quantize_model(dtype: int, shape: list[int], axis: int, scale: np.ndarray,
                   zero: np.ndarray) -> onnx.ModelProto:
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=axis)
    return single_node_model(
        node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", dtype, shape)],
        [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero, "z")])


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("per_axis", [False, True])
def test_quantize_linear_matches_onnxruntime(signed: bool, per_axis: bool) -> None:
    rng = np.random.default_rng(2)
    zdtype, onnx_type = (np.int8, TensorProto.INT8) if signed else (np.uint8, TensorProto.UINT8)
    shape = [4, 3, 50]
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    scale = np.array([0.02, 0.05, 0.5], np.float32) if per_axis else np.float32(0.03)
    zero = np.array([-3, 0, 7] if signed else [100, 0, 255], zdtype) if per_axis \
        else np.array(5 if signed else 128, zdtype)
    # Exact ties k + 0.5 (and their negatives), which onnxruntime rounds to even.
    ties = (np.arange(-6, 6) + 0.5).astype(np.float32)
    x[0, :, :12] = ties * (scale[:, None] if per_axis else scale)
    expected = run_ort(quantize_model(onnx_type, shape, 1, scale, zero), {"x": x})
    codes, overflow = A.quantize_linear(x, scale, zero, 8, signed, axis=1)
    assert codes.tolist() == expected.astype(np.int64).tolist()
    assert overflow > 0  # the data is wide enough to saturate somewhere
    reference = ReferenceEvaluator(quantize_model(onnx_type, shape, 1, scale, zero))
    assert codes.tolist() == reference.run(None, {"x": x})[0].astype(np.int64).tolist()


def test_quantize_linear_ties_to_even() -> None:
    codes, _ = A.quantize_linear(np.float32([0.5, 1.5, 2.5, -0.5, -1.5]), np.float32(1.0), 0, 8,
                                 True, axis=None)
    assert codes.tolist() == [0, 2, 2, 0, -2]


def test_dequantize_linear_matches_onnxruntime() -> None:
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (2, 3, 7)).astype(np.uint8)
    scale, zero = np.array([0.1, 0.37, 2.5], np.float32), np.array([3, 128, 250], np.uint8)
    node = helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], axis=1)
    model = single_node_model(
        node, [helper.make_tensor_value_info("x", TensorProto.UINT8, list(codes.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(codes.shape))],
        [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero, "z")])
    expected = run_ort(model, {"x": codes})
    got = A.dequantize_linear(codes, scale, zero, axis=1)
    assert got.dtype == np.float32 and np.array_equal(got, expected)


# --- requantization ---------------------------------------------------------------------------

def qlinear_matmul_model(a_shape: list[int], b: np.ndarray, scales: tuple[float, float, float],
                         zeros: tuple[int, int, int], dtype: type) -> onnx.ModelProto:
    onnx_type = TensorProto.INT8 if dtype is np.int8 else TensorProto.UINT8
    names = ["a_s", "a_z", "b", "b_s", "b_z", "y_s", "y_z"]
    values = [np.float32(scales[0]), dtype(zeros[0]), b, np.float32(scales[1]), dtype(zeros[1]),
              np.float32(scales[2]), dtype(zeros[2])]
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in zip(names, values)]
    node = helper.make_node("QLinearMatMul", ["a", *names], ["y"])
    return single_node_model(
        node, [helper.make_tensor_value_info("a", onnx_type, a_shape)],
        [helper.make_tensor_value_info("y", onnx_type, [a_shape[0], b.shape[1]])], inits)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_requantize_float_is_bit_exact_with_onnxruntime_qlinearmatmul(dtype: type) -> None:
    rng = np.random.default_rng(4)
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max, (16, 64), endpoint=True).astype(dtype)
    b = rng.integers(info.min, info.max, (64, 24), endpoint=True).astype(dtype)
    scales = (0.0213, 0.00731, 0.0517)
    zeros = (3, -7, 11) if dtype is np.int8 else (131, 120, 90)
    expected = run_ort(qlinear_matmul_model([16, 64], b, scales, zeros, dtype), {"a": a})
    acc = (a.astype(np.int64) - zeros[0]) @ (b.astype(np.int64) - zeros[1])
    scale = A.ort_output_scale(*scales)
    codes, overflow = A.requantize_float(acc, scale, zeros[2], 8, dtype is np.int8)
    assert codes.tolist() == expected.astype(np.int64).tolist()
    assert overflow > 0


@given(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=30),
       st.floats(1e-6, 4.0), st.integers(-20, 20))
def test_requantize_fixedpoint_is_within_one_of_the_exact_rescale(acc: list[int], real: float,
                                                                  zero: int) -> None:
    m, shift = quantize_multiplier(real)
    codes, overflow = A.requantize_fixedpoint(acc, m, shift, zero, 8, signed=True)
    exact = [Fraction(v) * Fraction(m) * Fraction(2) ** (shift - 31) + zero for v in acc]
    for code, ideal in zip(codes.tolist(), exact):
        clipped = min(Fraction(127), max(Fraction(-128), ideal))
        assert abs(code - clipped) <= 1
    # Each result is within one of the exact value, so the overflow count is bracketed.
    assert sum(e > 128 or e < -129 for e in exact) <= overflow
    assert overflow <= sum(e > 126 or e < -127 for e in exact)


def test_requantize_fixedpoint_known_values_and_clamp() -> None:
    m, shift = quantize_multiplier(0.00097656)
    codes, overflow = A.requantize_fixedpoint([10000, -10000, 10**6], m, shift, 5, 8, True)
    assert codes.tolist() == [15, -5, 127] and overflow == 1
    relu, overflow = A.requantize_fixedpoint([10000, -10000], m, shift, 5, 8, True, clamp=(5, 127))
    assert relu.tolist() == [15, 5] and overflow == 1


def test_fixedpoint_and_float_requantization_mostly_agree() -> None:
    rng = np.random.default_rng(5)
    acc = rng.integers(-(2**20), 2**20, 10000)
    a_s, b_s, y_s = 0.0213, 0.00731, 0.0517
    m, shift = A.fixedpoint_multiplier(a_s, b_s, y_s)
    fixed, _ = A.requantize_fixedpoint(acc, m, shift, 0, 16, True)
    floated, _ = A.requantize_float(acc, A.ort_output_scale(a_s, b_s, y_s), 0, 16, True)
    assert np.max(np.abs(fixed - floated)) <= 1
    assert np.mean(fixed == floated) > 0.99
