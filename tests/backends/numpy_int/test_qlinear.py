"""backends/numpy_int/qlinear.py against references written by others: ONNX's backend node suite
(QuantizeLinear, DequantizeLinear, QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger),
onnxruntime's CPU kernels (QLinear ops and com.microsoft contrib ops, bit for bit) and IEEE
float32 arithmetic (NumPy, and exact rationals for the fused multiply-add)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from backends.numpy_int import qlinear as ql
from backends.numpy_int import run_integer
from qcc.core.ir import Node, Value
from qcc.core.onnx_import import import_model
from qcc.driver import conformance

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
       "MatMulInteger"}
NODE_CASES = [c for c in conformance.load_cases("node")
              if {n.op_type for n in conformance.case_model(c).graph.node} <= OPS]
ONNX_TYPE = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}
# positive normal float32 numbers over a wide exponent range
SCALES = st.floats(2.0 ** -40, 2.0 ** 20, width=32, allow_subnormal=False)
F32S = st.floats(-(2.0 ** 40), 2.0 ** 40, width=32, allow_subnormal=False).filter(
    lambda v: v == 0 or abs(v) > 2.0 ** -40)


# -- ONNX's node suite ---------------------------------------------------------------------------
def test_node_suite_covers_every_op() -> None:
    covered = {n.op_type for c in NODE_CASES for n in conformance.case_model(c).graph.node}
    assert covered == OPS and len(NODE_CASES) >= 30


@pytest.mark.parametrize("case", NODE_CASES, ids=lambda c: c.name)
def test_node_suite_case_is_bit_exact(case: onnx.backend.test.case.test_case.TestCase) -> None:
    model = conformance.case_model(case)
    graph = import_model(model, fold=False)
    for inputs, expected in conformance.data_sets(case, model):
        got, _ = run_integer(graph, {v.name: a for v, a in zip(graph.inputs, inputs)},
                             check=False)
        for value, want in zip(graph.outputs, expected):
            have = got[value.name]
            assert have.dtype == want.dtype and have.shape == want.shape
            assert np.array_equal(have.astype(np.float64), want.astype(np.float64),
                                  equal_nan=True)


# -- exact float32 arithmetic in int64 -----------------------------------------------------------
def _round_f32(v: Fraction) -> np.float32:
    """The float32 nearest to an exact rational (ties to even), independently of ql."""
    if v == 0:
        return np.float32(0.0)
    mag = abs(v)
    e = mag.numerator.bit_length() - mag.denominator.bit_length()
    e += 1 if Fraction(2) ** e <= mag else 0
    e -= 1 if Fraction(2) ** e > mag else 0
    scaled = mag / Fraction(2) ** (e - 23)  # in [2^23, 2^24)
    m, rest = divmod(scaled.numerator, scaled.denominator)
    m += 2 * rest > scaled.denominator or (2 * rest == scaled.denominator and m % 2 == 1)
    return np.float32(float(np.sign(v)) * np.ldexp(float(m), e - 23))


def _f32(x: float) -> ql.F32:
    return ql.f32_split(np.array([x], np.float32))


@SETTINGS
@given(F32S, F32S, F32S)
def test_soft_float_matches_ieee_float32(a: float, b: float, c: float) -> None:
    fa, fb, fc = (np.float32(v) for v in (a, b, c))
    assert ql.f32_value(ql.f32_mul(_f32(a), _f32(b)))[0] == fa * fb
    assert ql.f32_value(ql.f32_add(_f32(a), _f32(b)))[0] == fa + fb
    if b != 0:
        assert ql.f32_value(ql.f32_div(_f32(a), _f32(b)))[0] == fa / fb
    exact = Fraction(float(fa)) * Fraction(float(fb)) + Fraction(float(fc))
    assert ql.f32_value(ql.f32_fma(_f32(a), _f32(b), _f32(c)))[0] == _round_f32(exact)
    assert ql.f32_rint(_f32(a))[0] == int(np.rint(np.float64(fa))) or abs(fa) >= 2.0 ** 37


def test_fma_in_cancellation_and_sticky_cases() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(1, 2, 500).astype(np.float32)
    b = rng.uniform(1, 2, 500).astype(np.float32)
    near = (-(a.astype(np.float64) * b)).astype(np.float32)  # a·b + c cancels to ~2^-24
    tiny = np.float32(2.0 ** -60) * np.sign(rng.normal(size=500)).astype(np.float32)
    for c in (near, tiny):
        got = ql.f32_value(ql.f32_fma(ql.f32_split(a), ql.f32_split(b), ql.f32_split(c)))
        want = [_round_f32(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)))
                for x, y, z in zip(a, b, c)]
        assert np.array_equal(got, np.array(want, np.float32))


@SETTINGS
@given(st.lists(st.integers(-(2 ** 31), 2 ** 31 - 1), min_size=1, max_size=40), SCALES,
       st.integers(-128, 255), st.sampled_from([(0, 255), (-128, 127), (-(2 ** 40), 2 ** 40)]))
def test_requantize_like_ort_equals_float32(acc: list[int], scale: float, zero_point: int,
                                            code_range: tuple[int, int]) -> None:
    """sat(rne(f32(acc) · scale) + zp), as MLAS computes it with float32 instructions."""
    lo, hi = code_range
    zp = int(np.clip(zero_point, lo, hi))
    acc_array, s = np.array(acc, np.int64), np.float32(scale)
    with np.errstate(over="ignore"):
        product = acc_array.astype(np.float32) * s
    # MLAS clamps to [lo - zp, hi - zp] in float32, rounds (cvtps2dq), adds zp in int32: for
    # integer bounds the same as rounding first and saturating after
    want = np.clip(np.rint(product.astype(np.float64)).astype(np.int64) + zp, lo, hi)
    got, saturated = ql.requantize_like_ort(acc_array, s, zp, lo, hi)
    assert np.array_equal(got, want)
    assert saturated == np.count_nonzero((np.rint(product.astype(np.float64)) + zp < lo) |
                                         (np.rint(product.astype(np.float64)) + zp > hi))


def test_requantize_rounds_twice_like_float32() -> None:
    """With a wide output range both float32 roundings (of acc, of the product) show: the
    emulation must follow them, not the exact product rounded once."""
    rng = np.random.default_rng(1)
    acc = rng.integers(-(2 ** 31), 2 ** 31, 100_000)
    scale = rng.uniform(0.5, 2.0, acc.size).astype(np.float32)
    twice = np.rint(acc.astype(np.float32) * scale).astype(np.int64)
    once = np.rint(acc * scale.astype(np.float64)).astype(np.int64)
    assert np.mean(once != twice) > 0.3
    got, _ = ql.requantize_like_ort(acc, scale, 0, -(2 ** 40), 2 ** 40)
    assert np.array_equal(got, twice)


# -- onnxruntime, bit for bit --------------------------------------------------------------------
def _run_ort(node: onnx.NodeProto, inputs: dict[str, np.ndarray], out_type: int) -> np.ndarray:
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", out_type, None)],
                              initializer=[numpy_helper.from_array(v, k)
                                           for k, v in inputs.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {})[0]


def _codes(rng: np.random.Generator, dtype: type, shape: tuple[int, ...] | int) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


def _scale(rng: np.random.Generator, lo: float, hi: float, n: int | None = None) -> np.ndarray:
    return np.exp(rng.uniform(lo, hi, n if n is not None else ())).astype(np.float32)


def _qnode(op_type: str, attrs: dict | None = None) -> Node:
    return Node(op_type, "n", [], [Value("y")], dict(attrs or {}))


CONV_CASES = [(np.uint8, np.int8, False, True, 1, 1), (np.uint8, np.int8, True, True, 2, 1),
              (np.uint8, np.uint8, False, False, 1, 1), (np.int8, np.int8, True, True, 1, 1),
              (np.int8, np.int8, False, True, 2, 2), (np.uint8, np.int8, True, False, 1, 4)]


@pytest.mark.parametrize("x_type,w_type,per_channel,bias,stride,group", CONV_CASES)
def test_qlinear_conv_matches_onnxruntime(x_type: type, w_type: type, per_channel: bool,
                                          bias: bool, stride: int, group: int) -> None:
    rng = np.random.default_rng(stride * 10 + group + per_channel)
    c, m = 8, 16
    inputs = {"x": _codes(rng, x_type, (2, c, 11, 9)), "xs": _scale(rng, -5, -1),
              "xz": _codes(rng, x_type, ()), "w": _codes(rng, w_type, (m, c // group, 3, 3)),
              "ws": _scale(rng, -7, -3, m if per_channel else None),
              "wz": np.zeros(m if per_channel else (), w_type), "ys": _scale(rng, -3, 1),
              "yz": _codes(rng, x_type, ())}
    if bias:
        inputs["b"] = rng.integers(-20000, 20000, m).astype(np.int32)
    attrs = {"kernel_shape": [3, 3], "pads": [1, 0, 1, 2], "strides": [stride, stride],
             "group": group}
    want = _run_ort(helper.make_node("QLinearConv", list(inputs), ["y"], **attrs), inputs,
                    ONNX_TYPE[np.dtype(x_type)])
    got = ql.qlinear_conv(_qnode("QLinearConv", attrs), *inputs.values())
    assert got.dtype == want.dtype and np.array_equal(got, want)


@pytest.mark.parametrize("a_type,b_type,per_column", [(np.uint8, np.int8, False),
                                                      (np.uint8, np.int8, True),
                                                      (np.uint8, np.uint8, False),
                                                      (np.int8, np.int8, True)])
def test_qlinear_matmul_and_qgemm_match_onnxruntime(a_type: type, b_type: type,
                                                    per_column: bool) -> None:
    rng = np.random.default_rng(int(per_column))
    k, n = 300, 24
    b_scale = _scale(rng, -7, -3, n if per_column else None)
    inputs = {"a": _codes(rng, a_type, (7, k)), "as": _scale(rng, -5, -1),
              "az": _codes(rng, a_type, ()), "b": _codes(rng, b_type, (k, n)), "bs": b_scale,
              "bz": np.zeros(n if per_column else (), b_type), "ys": _scale(rng, -2, 2),
              "yz": _codes(rng, a_type, ())}
    out_type = ONNX_TYPE[np.dtype(a_type)]
    want = _run_ort(helper.make_node("QLinearMatMul", list(inputs), ["y"]), inputs, out_type)
    assert np.array_equal(ql.qlinear_matmul(_qnode("QLinearMatMul"), *inputs.values()), want)
    gemm = {**inputs, "b": np.ascontiguousarray(inputs["b"].T)}
    gemm = {**{k: gemm[k] for k in ("a", "as", "az", "b", "bs", "bz")},
            "c": rng.integers(-5000, 5000, n).astype(np.int32), "ys": gemm["ys"],
            "yz": gemm["yz"]}
    attrs = {"transB": 1, "alpha": 1.0}
    want = _run_ort(helper.make_node("QGemm", list(gemm), ["y"], domain="com.microsoft",
                                     **attrs), gemm, out_type)
    assert np.array_equal(ql.qlinear_gemm(_qnode("QLinearGemm", attrs), *gemm.values()), want)


def _add_inputs(rng: np.random.Generator, dtype: type, a: np.ndarray, b: np.ndarray) -> dict:
    return {"A": a, "As": _scale(rng, -6, -1), "Az": _codes(rng, dtype, ()), "B": b,
            "Bs": _scale(rng, -6, -1), "Bz": _codes(rng, dtype, ()), "Cs": _scale(rng, -6, -1),
            "Cz": _codes(rng, dtype, ())}


def _naive_add(p: dict, lo: int, hi: int) -> np.ndarray:
    """The ONNX-spec formula in plain float32 (no FMA): what a port without ORT's kernel gives."""
    real = ((p["A"].astype(np.float32) - np.float32(p["Az"])) * p["As"]
            + (p["B"].astype(np.float32) - np.float32(p["Bz"])) * p["Bs"])
    return np.clip(np.rint(real / p["Cs"]) + np.float32(p["Cz"]), lo, hi)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qlinear_add_matches_onnxruntime_on_every_code_pair(dtype: type) -> None:
    """All 65536 (a, b) pairs under 16 random parameter sets: equal to ORT everywhere, while
    the float32 formula without FMA (the spec read literally) differs somewhere."""
    rng = np.random.default_rng(7)
    lo, hi = ql._int_range(np.dtype(dtype))
    grid = np.arange(lo, hi + 1)
    a, b = (g.astype(dtype).reshape(1, 1, 256, 256) for g in np.meshgrid(grid, grid))
    naive_differs = False
    for _ in range(16):
        p = _add_inputs(rng, dtype, a, b)
        want = _run_ort(helper.make_node("QLinearAdd", list(p), ["y"], domain="com.microsoft"),
                        p, ONNX_TYPE[np.dtype(dtype)])
        assert np.array_equal(ql.qlinear_add(_qnode("QLinearAdd"), *p.values()), want)
        naive_differs |= not np.array_equal(_naive_add(p, lo, hi), want)
    assert naive_differs


@pytest.mark.parametrize("a_shape,b_shape", [((1, 4, 8, 8), (1, 4, 1, 1)),
                                             ((1, 4, 1, 1), (1, 4, 8, 8)), ((1,), (4, 8, 8)),
                                             ((4, 8, 8), (1,)), ((1,), (1,)),
                                             ((2, 4, 8, 1), (1, 1, 1, 8)),
                                             ((3, 1, 8), (3, 5, 1)), ((2, 4, 8, 8), (4, 8, 8)),
                                             ((8, 64, 32, 16), (8, 64, 32, 16))])
def test_qlinear_add_broadcasts_like_onnxruntime(a_shape: tuple[int, ...],
                                                 b_shape: tuple[int, ...]) -> None:
    """ORT treats an input that is one value per innermost span as its kernel's scalar
    operand; the last case goes through the 8-bit table."""
    rng = np.random.default_rng(len(a_shape) * 7 + len(b_shape))
    for dtype in (np.uint8, np.int8):
        for _ in range(4):
            p = _add_inputs(rng, dtype, _codes(rng, dtype, a_shape), _codes(rng, dtype, b_shape))
            want = _run_ort(helper.make_node("QLinearAdd", list(p), ["y"],
                                             domain="com.microsoft"),
                            p, ONNX_TYPE[np.dtype(dtype)])
            got = ql.qlinear_add(_qnode("QLinearAdd"), *p.values())
            assert got.shape == want.shape and np.array_equal(got, want)


@pytest.mark.parametrize("channels_last", [0, 1])
def test_qlinear_global_average_pool_matches_onnxruntime(channels_last: int) -> None:
    rng = np.random.default_rng(channels_last)
    for dtype in (np.uint8, np.int8):
        for _ in range(6):
            shape = (3, 7, 9, 16) if channels_last else (3, 16, 7, 9)
            p = {"x": _codes(rng, dtype, shape), "xs": _scale(rng, -5, -1),
                 "xz": _codes(rng, dtype, ()), "ys": _scale(rng, -5, -1),
                 "yz": _codes(rng, dtype, ())}
            attrs = {"channels_last": channels_last}
            want = _run_ort(helper.make_node("QLinearGlobalAveragePool", list(p), ["y"],
                                             domain="com.microsoft", **attrs),
                            p, ONNX_TYPE[np.dtype(dtype)])
            got = ql.qlinear_global_average_pool(_qnode("QLinearGlobalAveragePool", attrs),
                                                 *p.values())
            assert np.array_equal(got, want)


@pytest.mark.parametrize("relu", [0, 1])
def test_qlinear_requantize_matches_dequantize_quantize_in_onnxruntime(relu: int) -> None:
    rng = np.random.default_rng(relu)
    for x_type, y_type in ((np.uint8, np.uint8), (np.int8, np.uint8), (np.uint8, np.int8)):
        for _ in range(8):
            p = {"x": _codes(rng, x_type, 256), "xs": _scale(rng, -6, 0),
                 "xz": _codes(rng, x_type, ()), "ys": _scale(rng, -6, 0),
                 "yz": _codes(rng, y_type, ())}
            p["x"] = np.arange(256).astype(x_type)
            nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["r"])]
            nodes += [helper.make_node("Relu", ["r"], ["rr"])] if relu else []
            nodes += [helper.make_node("QuantizeLinear", ["rr" if relu else "r", "ys", "yz"],
                                       ["y"])]
            graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info(
                "y", ONNX_TYPE[np.dtype(y_type)], None)],
                initializer=[numpy_helper.from_array(v, k) for k, v in p.items()])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            model.ir_version = 8
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            want = ort.InferenceSession(model.SerializeToString(), options).run(None, {})[0]
            got = ql.qlinear_requantize(_qnode("QLinearRequantize", {"relu": relu}),
                                        *p.values())
            assert got.dtype == want.dtype and np.array_equal(got, want)


def test_saturations_are_counted() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0, 4, (2, 3, 5, 5)).astype(np.float32)
    scale = np.float32(0.02)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)],
        initializer=[numpy_helper.from_array(scale, "s"),
                     numpy_helper.from_array(np.array(128, np.uint8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _, report = run_integer(import_model(model, fold=False), {"x": x})
    real = np.rint(x / scale) + 128
    assert report.overflows["q"] == np.count_nonzero((real < 0) | (real > 255)) > 0


def test_a_non_positive_requantization_scale_is_refused() -> None:
    from qcc.core.errors import QccError

    with pytest.raises(QccError, match="positive"):
        ql.requantize_like_ort(np.arange(4), np.float32(0.0), 0, 0, 255)
