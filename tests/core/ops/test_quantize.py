"""QuantizeLinear / DequantizeLinear kernels of qcc.core.ops.quantize against onnxruntime.

One-node models built with onnx.helper run through qcc (import_model + run_float) and through
onnxruntime (single thread); integer outputs must agree bit for bit. Covered: per-tensor,
per-axis (every axis, negative axes), blocked quantization (block_size dividing the axis or
not), uint8/int8/uint16/int16/uint4/int4 and the float8 types with saturate on and off, exact
ties (round half to even) and out-of-range values (saturation). int2/uint2 and float4, which
onnxruntime lacks, are checked against ONNX's reference evaluator.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from qcc.core.errors import QccError
from qcc.core.float_exec import run_float
from qcc.core.onnx_import import import_model

INT_TYPES = [np.uint8, np.int8, np.uint16, np.int16, ml_dtypes.uint4, ml_dtypes.int4]
FLOAT8_TYPES = [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2,
                ml_dtypes.float8_e5m2fnuz]


def model_of(op: str, x: np.ndarray, params: list[np.ndarray | None], opset: int = 21,
             out_type: int | None = None, **attrs: object) -> onnx.ModelProto:
    """One `op` node; x is the graph input, scale and zero point are initializers."""
    names = ["x"] + [f"p{i}" if p is not None else "" for i, p in enumerate(params)]
    while names[-1] == "":
        names.pop()
    inits = [numpy_helper.from_array(p, f"p{i}") for i, p in enumerate(params) if p is not None]
    node = helper.make_node(op, names, ["y"], **attrs)
    x_info = helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
    y_info = (helper.make_empty_tensor_value_info("y") if out_type is None
              else helper.make_tensor_value_info("y", out_type, None))
    graph = helper.make_graph([node], "g", [x_info], [y_info], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def wide(dtype: np.dtype) -> np.dtype | None:
    """The type onnxruntime's Python API exchanges in place of `dtype` (None: `dtype` itself):
    it cannot pass 4-bit or float8 arrays, so those cross the boundary as int8/uint8/float32."""
    if dtype in map(np.dtype, FLOAT8_TYPES):
        return np.dtype(np.float32)
    if dtype in (np.dtype(ml_dtypes.int4), np.dtype(ml_dtypes.uint4)):
        return np.dtype(np.int8 if dtype == np.dtype(ml_dtypes.int4) else np.uint8)
    return None


def with_casts(model: onnx.ModelProto, x_dtype: np.dtype, y_dtype: np.dtype
               ) -> onnx.ModelProto:
    """The same model with exact Casts at the edges, so onnxruntime can be fed and read."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    x_wide, y_wide = wide(x_dtype), wide(y_dtype)
    if x_wide is not None:
        g.node[0].input[0] = "x_narrow"
        exact = {"saturate": 0} if x_wide == np.float32 else {}  # keep float8 inf and NaN
        g.node.insert(0, helper.make_node("Cast", ["x"], ["x_narrow"],
                                          to=helper.np_dtype_to_tensor_dtype(x_dtype), **exact))
        g.input[0].type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(x_wide)
    if y_wide is not None:
        g.node[-1].output[0] = "y_narrow"
        g.node.append(helper.make_node("Cast", ["y_narrow"], ["y"],
                                       to=helper.np_dtype_to_tensor_dtype(y_wide)))
        g.output[0].type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(y_wide)
    del g.value_info[:]
    return model


def run_both(model: onnx.ModelProto, x: np.ndarray, reference: str = "ort"
             ) -> tuple[np.ndarray, np.ndarray]:
    """qcc's output and the reference's, both in the op's output type."""
    graph = import_model(model)
    got = run_float(graph, {"x": x})["y"]
    if reference != "ort":
        return got, np.asarray(ReferenceEvaluator(model).run(None, {"x": x})[0])
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(with_casts(model, x.dtype, got.dtype).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    x_wide = wide(x.dtype)
    expected = sess.run(None, {"x": x if x_wide is None else x.astype(x_wide)})[0]
    return got, expected.astype(got.dtype)  # exact: the values came from got.dtype


def assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if got.dtype.kind == "f" or got.dtype in map(np.dtype, FLOAT8_TYPES):
        np.testing.assert_array_equal(got.astype(np.float32), expected.astype(np.float32))
    else:
        np.testing.assert_array_equal(got.astype(np.int64), expected.astype(np.int64))


def int_range(dtype: type) -> tuple[int, int]:
    info = ml_dtypes.iinfo(dtype)
    return int(info.min), int(info.max)


def zero_points(rng: np.random.Generator, dtype: type, shape: tuple) -> np.ndarray:
    lo, hi = int_range(dtype)
    return rng.integers(lo, hi + 1, shape).astype(dtype)


def quant_input(rng: np.random.Generator, shape: tuple, scale: float, dtype: type
                ) -> np.ndarray:
    """Values that cover the whole range and beyond, with exact ties k + 0.5 at the scale."""
    lo, hi = int_range(dtype)
    x = rng.uniform(lo - 0.3 * (hi - lo), hi + 0.3 * (hi - lo), shape)
    ties = rng.integers(lo, hi, shape) + 0.5
    x = np.where(rng.random(shape) < 0.3, ties, x) * scale  # scale is a power of two: exact
    return x.astype(np.float32)


# -- per tensor ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", INT_TYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("with_zero_point", [True, False])
@pytest.mark.parametrize("scale_shape", [(), (1,)])
def test_quantize_per_tensor(dtype: type, with_zero_point: bool, scale_shape: tuple) -> None:
    rng = np.random.default_rng(0)
    scale = np.full(scale_shape, 0.25, np.float32)
    x = quant_input(rng, (3, 5, 4), 0.25, dtype)
    zp = zero_points(rng, dtype, scale_shape) if with_zero_point else None
    attrs = {} if with_zero_point else {"output_dtype": helper.np_dtype_to_tensor_dtype(
        np.dtype(dtype))}
    got, expected = run_both(model_of("QuantizeLinear", x, [scale, zp], **attrs), x)
    assert_same(got, expected)


def test_quantize_default_is_uint8_and_rounds_half_to_even() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, 3.5, 254.5, 255.5, 300.0, -3.0], np.float32)
    got, expected = run_both(model_of("QuantizeLinear", x, [np.array(1.0, np.float32)]), x)
    assert_same(got, expected)
    np.testing.assert_array_equal(got, [0, 2, 2, 0, 4, 254, 255, 255, 0])


@pytest.mark.parametrize("dtype", INT_TYPES, ids=lambda t: np.dtype(t).name)
def test_dequantize_per_tensor(dtype: type) -> None:
    rng = np.random.default_rng(1)
    x = zero_points(rng, dtype, (4, 6))
    zp = zero_points(rng, dtype, ())
    got, expected = run_both(model_of("DequantizeLinear", x, [np.array(0.37, np.float32), zp]), x)
    assert_same(got, expected)


# -- per axis -----------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, ml_dtypes.int4],
                         ids=lambda t: np.dtype(t).name)
def test_quantize_dequantize_per_axis(axis: int, dtype: type) -> None:
    rng = np.random.default_rng(2)
    shape = (3, 4, 5)
    n = shape[axis]
    scale = (2.0 ** rng.integers(-4, 2, n)).astype(np.float32)
    zp = zero_points(rng, dtype, (n,))
    x = quant_input(rng, shape, 1.0, dtype) * np.expand_dims(
        scale, [i for i in range(3) if i != axis % 3])
    got, expected = run_both(model_of("QuantizeLinear", x, [scale, zp], axis=axis), x)
    assert_same(got, expected)
    got, expected = run_both(model_of("DequantizeLinear", got, [scale, zp], axis=axis), got)
    assert_same(got, expected)


# -- blocked ------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis,block_size", [(0, 2), (1, 2), (1, 3), (1, 5), (-1, 4)])
@pytest.mark.parametrize("dtype", [np.int8, np.uint8, ml_dtypes.int4, ml_dtypes.uint4],
                         ids=lambda t: np.dtype(t).name)
def test_quantize_dequantize_blocked(axis: int, block_size: int, dtype: type) -> None:
    rng = np.random.default_rng(3)
    shape = (4, 10, 7)
    blocks = list(shape)
    blocks[axis] = -(-shape[axis] // block_size)  # the last block may be partial
    scale = rng.uniform(0.01, 0.2, blocks).astype(np.float32)
    zp = zero_points(rng, dtype, tuple(blocks))
    x = rng.normal(0, 3, shape).astype(np.float32)
    q_model = model_of("QuantizeLinear", x, [scale, zp], axis=axis, block_size=block_size)
    got, expected = run_both(q_model, x)
    assert_same(got, expected)
    dq_model = model_of("DequantizeLinear", got, [scale, zp], axis=axis, block_size=block_size)
    dq, dq_expected = run_both(dq_model, got)
    assert_same(dq, dq_expected)


def test_blocked_scale_of_wrong_shape_is_refused() -> None:
    x = np.zeros((4, 6), np.float32)
    scale = np.ones((4, 2), np.float32)
    model = model_of("QuantizeLinear", x, [scale], axis=1, block_size=2, out_type=TensorProto.UINT8)
    graph = import_model(model)
    with pytest.raises(QccError, match="block_size"):
        run_float(graph, {"x": x})


# -- float8 and saturate --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOAT8_TYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("saturate", [1, 0])
def test_quantize_float8(dtype: type, saturate: int) -> None:
    rng = np.random.default_rng(4)
    big = float(ml_dtypes.finfo(dtype).max)
    x = np.concatenate([rng.normal(0, big / 8, 200), [big * 2, -big * 3, np.inf, -np.inf],
                        rng.normal(0, 1e-3, 50)]).astype(np.float32)
    zp = np.zeros((), dtype)
    model = model_of("QuantizeLinear", x, [np.array(0.5, np.float32), zp], saturate=saturate)
    got, expected = run_both(model, x)
    assert got.dtype == expected.dtype
    g, e = got.astype(np.float32), expected.astype(np.float32)
    np.testing.assert_array_equal(np.isnan(g), np.isnan(e))
    np.testing.assert_array_equal(g[~np.isnan(g)], e[~np.isnan(e)])
    if saturate:
        assert np.isfinite(g).all() and np.abs(g).max() == big


@pytest.mark.parametrize("dtype", FLOAT8_TYPES, ids=lambda t: np.dtype(t).name)
def test_dequantize_float8(dtype: type) -> None:
    x = np.arange(256, dtype=np.uint8).view(dtype).reshape(16, 16)
    got, expected = run_both(model_of("DequantizeLinear", x, [np.array(3.0, np.float32)]), x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(got[~np.isnan(got)], expected[~np.isnan(expected)])


# -- types onnxruntime lacks: ONNX's reference evaluator -----------------------------------------
@pytest.mark.parametrize("dtype", [ml_dtypes.int2, ml_dtypes.uint2, ml_dtypes.float4_e2m1fn],
                         ids=lambda t: np.dtype(t).name)
def test_types_without_onnxruntime_kernels(dtype: type) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(0, 3, (6, 8)).astype(np.float32)
    code = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    scale = np.array(0.5, np.float32)
    got, expected = run_both(model_of("QuantizeLinear", x, [scale], opset=25, output_dtype=code),
                             x, reference="onnx")
    assert_same(got, expected)
    back, back_expected = run_both(model_of("DequantizeLinear", got, [scale], opset=25),
                                   got, reference="onnx")
    assert_same(back, back_expected)


# -- other input and scale types ------------------------------------------------------------------
def test_float16_input_and_scale() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(0, 20, (5, 7)).astype(np.float16)
    scale = np.array(0.125, np.float16)
    zp = np.array(3, np.int8)
    got, expected = run_both(model_of("QuantizeLinear", x, [scale, zp]), x)
    assert_same(got, expected)
    back, back_expected = run_both(model_of("DequantizeLinear", got, [scale, zp]), got)
    assert back.dtype == np.float16
    assert_same(back, back_expected)


def test_int32_dequantize() -> None:
    x = np.array([-(2**20), -7, 0, 9, 2**20 + 3], np.int32)
    got, expected = run_both(model_of("DequantizeLinear", x, [np.array(2.0**-10, np.float32)]),
                             x)
    assert_same(got, expected)


# -- property: random shapes, axes and scales ------------------------------------------------------
@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_quantize_property(data: st.DataObject) -> None:
    rank = data.draw(st.integers(1, 4), "rank")
    shape = tuple(data.draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank), "shape"))
    dtype = data.draw(st.sampled_from([np.uint8, np.int8, np.uint16, np.int16]), "dtype")
    per_axis = rank > 1 and data.draw(st.booleans(), "per_axis")
    axis = data.draw(st.integers(-rank, rank - 1), "axis") if per_axis else 1
    n = shape[axis] if per_axis else 1
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), "seed"))
    scale = rng.uniform(1e-3, 2.0, n if per_axis else ()).astype(np.float32)
    zp = zero_points(rng, dtype, scale.shape)
    x = rng.normal(0, 100, shape).astype(np.float32)
    got, expected = run_both(model_of("QuantizeLinear", x, [scale, zp], axis=axis), x)
    assert_same(got, expected)
