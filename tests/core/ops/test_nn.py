"""qcc.core.ops.nn float kernels against onnxruntime, one-node models over a grid of attributes.

Each case builds a one-node ONNX model with onnx.helper, imports it with qcc.core.onnx_import (every
input is a graph input, so nothing is folded away) and runs it through core.float_exec.run_float;
onnxruntime (single thread, graph optimisations off) runs the same model on the same feeds.
Hypothesis adds random small shapes for Conv and the pools. Where onnxruntime has no kernel or
departs from the ONNX spec, the reference is ONNX's reference evaluator (float64 Conv,
training-mode BatchNormalization, seeded training Dropout), an explicit-pads spelling of auto_pad
(`spec_pads`), or the spec formula itself (LRN with even sizes or rank != 4).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper
from onnx.reference import ReferenceEvaluator

from qcc.core.errors import QccError
from qcc.core.float_exec import run_float
from qcc.core.onnx_import import import_model
from qcc.core.ops import nn

OPSET = 21
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def one_node_model(op: str, feeds: dict[str, np.ndarray], n_out: int = 1,
                   opset: int = OPSET, out_types: Sequence[int] | None = None,
                   **attrs: object) -> onnx.ModelProto:
    """Model with one `op` node reading every feed (in order) as a graph input; output types
    come from shape inference unless `out_types` (onnx TensorProto types) are given."""
    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for k, v in feeds.items()]
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, list(feeds), outs, **attrs)
    if out_types is None:
        out_infos = [helper.make_empty_tensor_value_info(o) for o in outs]
    else:
        out_infos = [helper.make_tensor_value_info(o, t, None) for o, t in zip(outs, out_types)]
    graph = helper.make_graph([node], "g", inputs, out_infos)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def run_qcc(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    graph = import_model(model)
    out = run_float(graph, feeds)
    return [out[v.name] for v in graph.outputs]


def run_reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(a) for a in ReferenceEvaluator(model).run(None, feeds)]


def check(op: str, feeds: dict[str, np.ndarray], n_out: int = 1, opset: int = OPSET,
          rtol: float = 1e-4, reference: str = "ort", ref_attrs: dict | None = None,
          **attrs: object) -> list[np.ndarray]:
    """qcc and the reference (onnxruntime, or ONNX's reference evaluator where onnxruntime has
    no kernel) agree on every output: dtype, shape, values. Returns qcc's outputs.

    `ref_attrs` replaces attributes in the reference's model only: an equivalent spelling of
    the same op (explicit pads for auto_pad) where onnxruntime departs from the ONNX spec.
    """
    model = one_node_model(op, feeds, n_out, opset, **attrs)
    ref_model = one_node_model(op, feeds, n_out, opset, **{**attrs, **(ref_attrs or {})})
    expected = (run_ort if reference == "ort" else run_reference)(ref_model, feeds)
    got = run_qcc(model, feeds)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape, (g.dtype, g.shape, e.dtype, e.shape)
        if e.dtype.kind == "f":
            scale = float(np.abs(e).max()) if e.size else 1.0
            np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol * scale + 1e-6)
        else:
            np.testing.assert_array_equal(g, e)
    return got


def rand(rng: np.random.Generator, *shape: int, dtype: type = np.float32) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def force_path(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """Send stride-1 convs through the flat-shift path or the strided im2col path."""
    monkeypatch.setattr(nn, "FLAT_WASTE_LIMIT", np.inf if path == "flat" else -1.0)


# -- Conv ----------------------------------------------------------------------------------------
GROUPS = {"dense": (4, 6, 1), "grouped": (4, 6, 2), "depthwise": (6, 6, 6),
          "depthwise_x2": (3, 6, 3)}  # (C_in, C_out, group)
PADDING = [{"pads": "zero"}, {"pads": "sym"}, {"pads": "asym"}, {"auto_pad": "SAME_UPPER"},
           {"auto_pad": "SAME_LOWER"}, {"auto_pad": "VALID"}]


def conv_attrs(nd: int, kernel: int, stride: int, dilation: int, padding: dict) -> dict:
    attrs: dict = {"kernel_shape": [kernel] * nd, "strides": [stride] * nd,
                   "dilations": [dilation] * nd}
    if "auto_pad" in padding:
        attrs["auto_pad"] = padding["auto_pad"]
    else:
        begin = {"zero": [0] * nd, "sym": [1] * nd, "asym": list(range(nd))}[padding["pads"]]
        end = {"zero": [0] * nd, "sym": [1] * nd, "asym": [2 - i % 2 for i in range(nd)]}
        attrs["pads"] = begin + end[padding["pads"]]
    return attrs


# (stride, dilation, im2col path): the flat-shift path exists for stride 1 only
STRIDES = [(1, 1, "flat"), (1, 1, "strided"), (1, 2, "flat"), (1, 2, "strided"),
           (2, 1, "strided"), (2, 2, "strided")]


def spec_pads(attrs: dict, spatial: Sequence[int]) -> dict:
    """The explicit-pads spelling of attrs' auto_pad, by the ONNX Conv/pool spec formulas:
    out = ceil(in / stride) for SAME_*, total pad = (out - 1)·stride + dilated kernel - in
    (never negative), the odd element at the end (UPPER) or the beginning (LOWER); ceil_mode
    has no effect on auto_pad output sizes. onnxruntime differs (it pads SAME_* for the
    undilated kernel, applies ceil_mode to auto_pad and fails on negative totals), so the
    reference runs this spelling."""
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad == "NOTSET":
        return {}
    begin, end = [], []
    for i, k, s, d in zip(spatial, attrs["kernel_shape"], attrs["strides"], attrs["dilations"]):
        total = max((-(-i // s) - 1) * s + (k - 1) * d + 1 - i, 0) if "SAME" in auto_pad else 0
        begin.append(total // 2 if auto_pad != "SAME_LOWER" else total - total // 2)
        end.append(total - begin[-1])
    return {"auto_pad": "NOTSET", "pads": begin + end, "ceil_mode": 0}


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("groups", GROUPS)
@pytest.mark.parametrize("stride,dilation,path", STRIDES)
@pytest.mark.parametrize("padding", PADDING, ids=lambda p: next(iter(p.values())))
def test_conv_grid(nd: int, groups: str, stride: int, dilation: int, path: str, padding: dict,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    force_path(monkeypatch, path)
    rng = np.random.default_rng(nd * 100 + stride * 10 + dilation)
    cin, cout, group = GROUPS[groups]
    size = {1: 11, 2: 7, 3: 5}[nd]
    batch = 2 if (stride + dilation) % 2 else 1
    x = rand(rng, batch, cin, *[size + i for i in range(nd)])
    w = rand(rng, cout, cin // group, *[3] * nd)
    feeds = {"x": x, "w": w}
    if stride == dilation:
        feeds["b"] = rand(rng, cout)
    attrs = conv_attrs(nd, 3, stride, dilation, padding)
    ref = spec_pads(attrs, x.shape[2:])
    ref.pop("ceil_mode", None)
    check("Conv", feeds, group=group, ref_attrs=ref, **attrs)


@pytest.mark.parametrize("kernel", [[1, 1], [1, 3], [5, 2]])
@pytest.mark.parametrize("strides", [[1, 1], [2, 1], [3, 2]])
@pytest.mark.parametrize("path", ["flat", "strided"])
def test_conv_rectangular(kernel: list[int], strides: list[int], path: str,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    force_path(monkeypatch, path)
    rng = np.random.default_rng(1)
    x, w, b = rand(rng, 2, 5, 9, 8), rand(rng, 4, 5, *kernel), rand(rng, 4)
    check("Conv", {"x": x, "w": w, "b": b}, kernel_shape=kernel, strides=strides,
          pads=[0, 1, 2, 0])


@pytest.mark.parametrize("path", ["flat", "strided"])
@pytest.mark.parametrize("images", [1, 2])
@pytest.mark.parametrize("group,stride,with_bias", [(1, 1, True), (2, 2, False), (1, 2, True)])
def test_conv_batch_in_chunks(path: str, images: int, group: int, stride: int,
                              with_bias: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch whose patch matrix exceeds CHUNK_BYTES runs `images` images at a time."""
    force_path(monkeypatch, path)
    rng = np.random.default_rng(20)
    feeds = {"x": rand(rng, 5, 4, 6, 7), "w": rand(rng, 6, 4 // group, 3, 3)}
    if with_bias:
        feeds["b"] = rand(rng, 6)
    attrs = {"group": group, "strides": [stride] * 2, "pads": [1, 0, 1, 2]}
    win = nn.window(nn.Node("Conv", "c", [], [], attrs), (6, 7), (3, 3))
    plan = nn.conv_plan((1, 4, 6, 7), (6, 4 // group, 3, 3), group, win, nn.FLAT_WASTE_LIMIT)
    monkeypatch.setattr(nn, "CHUNK_BYTES", images * 4 * int(np.prod(plan.cols_shape)))
    chunks: list[int] = []
    gemm = nn._conv_gemm
    monkeypatch.setattr(nn, "_conv_gemm", lambda x, *a: chunks.append(len(x)) or gemm(x, *a))
    check("Conv", feeds, **attrs)
    assert chunks == ([1] * 5 if images == 1 else [2, 2, 1])


def test_conv_without_kernel_shape_attribute() -> None:
    rng = np.random.default_rng(2)
    check("Conv", {"x": rand(rng, 1, 3, 6, 6), "w": rand(rng, 2, 3, 2, 2)})


def test_conv_float64() -> None:
    rng = np.random.default_rng(3)
    got = check("Conv", {"x": rand(rng, 1, 2, 6, 6, dtype=np.float64),
                         "w": rand(rng, 3, 2, 3, 3, dtype=np.float64)},
                rtol=1e-10, reference="onnx", pads=[1] * 4)  # onnxruntime has no double Conv
    assert got[0].dtype == np.float64


def test_conv_refuses_mismatched_channels() -> None:
    rng = np.random.default_rng(4)
    node = nn.Node("Conv", "c", [], [], {"group": 2})
    with pytest.raises(QccError, match="group"):
        nn.conv(node, rand(rng, 1, 3, 5, 5), rand(rng, 4, 2, 3, 3))


@SETTINGS
@given(st.data())
def test_conv_property(data: st.DataObject) -> None:
    nd = data.draw(st.integers(1, 3), "nd")
    group = data.draw(st.sampled_from([1, 2, 3]), "group")
    cin = group * data.draw(st.integers(1, 2), "cin/group")
    cout = group * data.draw(st.integers(1, 3), "cout/group")
    kernel = data.draw(st.lists(st.integers(1, 3), min_size=nd, max_size=nd), "kernel")
    strides = data.draw(st.lists(st.integers(1, 3), min_size=nd, max_size=nd), "strides")
    dilations = data.draw(st.lists(st.integers(1, 2), min_size=nd, max_size=nd), "dilations")
    pads = data.draw(st.lists(st.integers(0, 2), min_size=2 * nd, max_size=2 * nd), "pads")
    reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    spatial = [data.draw(st.integers(max(1, r - pads[i] - pads[i + nd]), 9), f"size{i}")
               for i, r in enumerate(reach)]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), "seed"))
    feeds = {"x": rand(rng, data.draw(st.integers(1, 2), "batch"), cin, *spatial),
             "w": rand(rng, cout, cin // group, *kernel)}
    if data.draw(st.booleans(), "bias"):
        feeds["b"] = rand(rng, cout)
    check("Conv", feeds, group=group, kernel_shape=kernel, strides=strides,
          dilations=dilations, pads=pads)


# -- Gemm and MatMul ---------------------------------------------------------------------------
@pytest.mark.parametrize("trans_a,trans_b", list(itertools.product([0, 1], repeat=2)))
@pytest.mark.parametrize("c_shape", [None, (), (5,), (1, 5), (3, 1), (3, 5)])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, -2.0)])
def test_gemm(trans_a: int, trans_b: int, c_shape: tuple | None, alpha: float,
              beta: float) -> None:
    rng = np.random.default_rng(5)
    a = rand(rng, *((4, 3) if trans_a else (3, 4)))
    b = rand(rng, *((5, 4) if trans_b else (4, 5)))
    feeds = {"a": a, "b": b}
    if c_shape is not None:
        feeds["c"] = rng.standard_normal(c_shape).astype(np.float32)
    check("Gemm", feeds, transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)


@pytest.mark.parametrize("shapes", [((4,), (4,)), ((4,), (4, 3)), ((2, 4), (4,)),
                                    ((3, 4), (4, 5)), ((2, 3, 4), (4, 5)),
                                    ((2, 1, 3, 4), (5, 4, 2)), ((4,), (2, 4, 3))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.uint64])
def test_matmul(shapes: tuple, dtype: type) -> None:
    rng = np.random.default_rng(6)
    a, b = (rng.integers(-9, 10, s).astype(dtype) if np.dtype(dtype).kind in "iu"
            else rand(rng, *s, dtype=dtype) for s in shapes)
    check("MatMul", {"a": a, "b": b}, rtol=1e-5)


def test_matmul_float16_computes_in_float32() -> None:
    rng = np.random.default_rng(7)
    a, b = rand(rng, 8, 64, dtype=np.float16), rand(rng, 64, 4, dtype=np.float16)
    check("MatMul", {"a": a, "b": b}, rtol=2e-3)


# -- pools ---------------------------------------------------------------------------------------
POOL_PADDING = [{"pads": "zero"}, {"pads": "sym"}, {"pads": "asym"},
                {"auto_pad": "SAME_UPPER"}, {"auto_pad": "SAME_LOWER"}, {"auto_pad": "VALID"}]


def pool_attrs(nd: int, kernel: int, stride: int, dilation: int, padding: dict,
               ceil_mode: int) -> dict:
    attrs = conv_attrs(nd, kernel, stride, dilation, padding)
    if "pads" in attrs:  # a pad must be smaller than the kernel
        attrs["pads"] = [min(p, kernel - 1) for p in attrs["pads"]]
    attrs["ceil_mode"] = ceil_mode
    return attrs


def pool_input(rng: np.random.Generator, nd: int, dtype: type = np.float32) -> np.ndarray:
    shape = (2, 3, *[{1: 12, 2: 7, 3: 5}[nd] + i for i in range(nd)])
    if np.dtype(dtype).kind in "iu":
        return rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, shape).astype(dtype)
    return rand(rng, *shape)


POOL_GRID = list(itertools.product([1, 2, 3], [2, 3], [(1, 1), (2, 1), (2, 2), (3, 1)],
                                   [0, 1]))


@pytest.mark.parametrize("nd,kernel,stride_dil,ceil_mode", POOL_GRID)
@pytest.mark.parametrize("padding", POOL_PADDING, ids=lambda p: next(iter(p.values())))
def test_max_pool_grid(nd: int, kernel: int, stride_dil: tuple, ceil_mode: int,
                       padding: dict) -> None:
    rng = np.random.default_rng(nd + kernel)
    stride, dilation = stride_dil
    attrs = pool_attrs(nd, kernel, stride, dilation, padding, ceil_mode)
    x = pool_input(rng, nd)
    check("MaxPool", {"x": x}, ref_attrs=spec_pads(attrs, x.shape[2:]), **attrs)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("storage_order", [0, 1])
@pytest.mark.parametrize("padding", [{"pads": "zero"}, {"pads": "sym"},
                                     {"auto_pad": "SAME_LOWER"}],
                         ids=lambda p: next(iter(p.values())))
@pytest.mark.parametrize("stride_dil_ceil", [(1, 1, 0), (2, 1, 1), (2, 2, 0)])
def test_max_pool_indices(nd: int, storage_order: int, padding: dict,
                          stride_dil_ceil: tuple) -> None:
    rng = np.random.default_rng(8)
    stride, dilation, ceil_mode = stride_dil_ceil
    x = pool_input(rng, nd)
    x.flat[::7] = x.flat[1]  # ties: the first maximum in window order wins
    attrs = pool_attrs(nd, 3, stride, dilation, padding, ceil_mode)
    check("MaxPool", {"x": x}, n_out=2, storage_order=storage_order,
          ref_attrs=spec_pads(attrs, x.shape[2:]), **attrs)


def test_max_pool_indices_column_major_3d() -> None:
    """storage_order=1: Indices count the spatial axes column-major (ONNX MaxPool), so
    decoding them that way must point at the maxima."""
    x = pool_input(np.random.default_rng(9), 3)
    model = one_node_model("MaxPool", {"x": x}, 2, kernel_shape=[2, 2, 2], storage_order=1)
    y, idx = run_qcc(model, {"x": x})
    c, (d, h, w) = x.shape[1], x.shape[2:]
    plane = idx % (d * h * w)
    where = (idx // (c * d * h * w), idx // (d * h * w) % c,
             plane % d, plane // d % h, plane // (d * h))
    np.testing.assert_array_equal(x[where], y)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_max_pool_integer(dtype: type) -> None:
    rng = np.random.default_rng(10)
    check("MaxPool", {"x": pool_input(rng, 2, dtype)}, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
          strides=[2, 2])


@pytest.mark.parametrize("nd,kernel,stride_dil,ceil_mode", POOL_GRID)
@pytest.mark.parametrize("padding", POOL_PADDING, ids=lambda p: next(iter(p.values())))
@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool_grid(nd: int, kernel: int, stride_dil: tuple, ceil_mode: int,
                           padding: dict, count_include_pad: int) -> None:
    rng = np.random.default_rng(nd * kernel)
    stride, dilation = stride_dil
    attrs = pool_attrs(nd, kernel, stride, dilation, padding, ceil_mode)
    x = pool_input(rng, nd)
    check("AveragePool", {"x": x}, count_include_pad=count_include_pad,
          ref_attrs=spec_pads(attrs, x.shape[2:]), **attrs)


@pytest.mark.parametrize("op", ["Conv", "MaxPool", "AveragePool"])
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("nd,stride", [(1, 1), (2, 2), (3, 1), (2, 3)])
def test_auto_pad_matches_onnxruntime(op: str, auto_pad: str, nd: int, stride: int) -> None:
    """Where onnxruntime follows the spec for auto_pad (no dilation, no ceil_mode), compare
    with its own auto_pad directly, not through `spec_pads`."""
    rng = np.random.default_rng(nd * stride)
    x = pool_input(rng, nd)
    feeds = {"x": x, "w": rand(rng, 4, 3, *[3] * nd)} if op == "Conv" else {"x": x}
    check(op, feeds, auto_pad=auto_pad, kernel_shape=[3] * nd, strides=[stride] * nd)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@SETTINGS
@given(data=st.data())
def test_pool_property(op: str, data: st.DataObject) -> None:
    nd = data.draw(st.integers(1, 3), "nd")
    kernel = data.draw(st.lists(st.integers(1, 3), min_size=nd, max_size=nd), "kernel")
    strides = data.draw(st.lists(st.integers(1, 3), min_size=nd, max_size=nd), "strides")
    dilations = data.draw(st.lists(st.integers(1, 2), min_size=nd, max_size=nd), "dilations")
    pads = [data.draw(st.integers(0, kernel[i % nd] - 1), f"pad{i}") for i in range(2 * nd)]
    reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    spatial = [data.draw(st.integers(max(1, r - pads[i] - pads[i + nd]), 9), f"size{i}")
               for i, r in enumerate(reach)]
    attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dilations, "pads": pads,
             "ceil_mode": int(data.draw(st.booleans(), "ceil_mode"))}
    if op == "AveragePool":
        attrs["count_include_pad"] = int(data.draw(st.booleans(), "count_include_pad"))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), "seed"))
    check(op, {"x": rand(rng, data.draw(st.integers(1, 2), "batch"), 2, *spatial)}, **attrs)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 4, 6, 7), (2, 2, 3, 4, 5)])
def test_global_pools(op: str, shape: tuple) -> None:
    check(op, {"x": rand(np.random.default_rng(11), *shape)}, rtol=1e-5)


def test_pool_refuses_kernel_larger_than_input() -> None:
    x = rand(np.random.default_rng(12), 1, 1, 3, 3)
    model = one_node_model("MaxPool", {"x": x}, kernel_shape=[2, 2])
    graph = import_model(model)
    graph.nodes[0].attrs["kernel_shape"] = [5, 5]
    with pytest.raises(QccError, match="does not fit"):
        run_float(graph, {"x": x}, check=False)


# -- normalisation, LRN, Dropout ----------------------------------------------------------------
def bn_feeds(rng: np.random.Generator, shape: Sequence[int]) -> dict[str, np.ndarray]:
    c = shape[1]
    return {"x": rand(rng, *shape), "scale": rand(rng, c), "bias": rand(rng, c),
            "mean": rand(rng, c), "var": rng.uniform(0.1, 2.0, c).astype(np.float32)}


@pytest.mark.parametrize("opset", [9, 14, 15])
@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 5), (1, 4, 5, 6), (2, 2, 3, 4, 3)])
@pytest.mark.parametrize("epsilon", [1e-5, 0.1])
def test_batch_normalization(opset: int, shape: tuple, epsilon: float) -> None:
    check("BatchNormalization", bn_feeds(np.random.default_rng(13), shape), opset=opset,
          epsilon=epsilon, rtol=1e-5)


@pytest.mark.parametrize("momentum", [0.9, 0.5])
def test_batch_normalization_training_mode(momentum: float) -> None:
    """Opset 14 training mode: batch statistics and running-statistic updates (ONNX reference)."""
    feeds = bn_feeds(np.random.default_rng(14), (4, 3, 5, 5))
    model = one_node_model("BatchNormalization", feeds, 3, 15, None, training_mode=1,
                           momentum=momentum, epsilon=1e-3)
    expected = ReferenceEvaluator(model).run(None, feeds)
    got = run_qcc(model, feeds)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
    # and training mode really used the batch statistics: Y has zero mean per channel
    np.testing.assert_allclose(((got[0] - feeds["bias"][:, None, None]) /
                                feeds["scale"][:, None, None]).mean(axis=(0, 2, 3)), 0,
                               atol=1e-5)


def test_batch_normalization_old_training_outputs_refused() -> None:
    feeds = bn_feeds(np.random.default_rng(15), (2, 3, 4, 4))
    model = one_node_model("BatchNormalization", feeds, 5, 9, [onnx.TensorProto.FLOAT] * 5)
    with pytest.raises(QccError, match="training outputs"):
        run_qcc(model, feeds)


def lrn_by_the_spec(x: np.ndarray, size: int, alpha: float, beta: float, bias: float
                    ) -> np.ndarray:
    """The ONNX LRN formula transcribed channel by channel, in float64."""
    x = x.astype(np.float64)
    square_sum = np.empty_like(x)
    for c in range(x.shape[1]):
        lo, hi = max(0, c - (size - 1) // 2), min(x.shape[1] - 1, c + size // 2)
        square_sum[:, c] = (x[:, lo:hi + 1] ** 2).sum(axis=1)
    return x / (bias + alpha / size * square_sum) ** beta


@pytest.mark.parametrize("size", [1, 3, 5])
@pytest.mark.parametrize("alpha,beta,bias", [(1e-4, 0.75, 1.0), (0.5, 0.6, 2.0)])
@pytest.mark.parametrize("shape", [(2, 7, 4, 5), (1, 3, 1, 1)])
def test_lrn(size: int, alpha: float, beta: float, bias: float, shape: tuple) -> None:
    check("LRN", {"x": rand(np.random.default_rng(16), *shape)}, size=size, alpha=alpha,
          beta=beta, bias=bias, rtol=1e-5)


@pytest.mark.parametrize("size", [2, 4, 6])
@pytest.mark.parametrize("shape", [(2, 7, 4, 5), (1, 3, 2), (1, 6, 2, 3, 2)])
def test_lrn_even_sizes_and_other_ranks(size: int, shape: tuple) -> None:
    """The spec allows even sizes (window ceil((size-1)/2) channels after c, one fewer before)
    and any rank; onnxruntime supports neither and ONNX's reference LRN loops over the wrong
    axis, so the reference here is the spec formula itself."""
    x = rand(np.random.default_rng(16), *shape)
    model = one_node_model("LRN", {"x": x}, size=size, alpha=0.3, beta=0.7, bias=1.5)
    got = run_qcc(model, {"x": x})[0]
    np.testing.assert_allclose(got, lrn_by_the_spec(x, size, 0.3, 0.7, 1.5), rtol=1e-5)


@pytest.mark.parametrize("opset", [12, 13, 22])
@pytest.mark.parametrize("n_out", [1, 2])
def test_dropout_inference_is_identity(opset: int, n_out: int) -> None:
    x = rand(np.random.default_rng(17), 3, 4)
    got = check("Dropout", {"x": x}, n_out=n_out, opset=opset, rtol=0.0)
    np.testing.assert_array_equal(got[0], x)


@pytest.mark.parametrize("opset,mask_dtype", [(7, np.float32), (10, np.bool_)])
def test_dropout_old_opsets_mask_of_ones(opset: int, mask_dtype: type) -> None:
    """Before opset 12 the mask's inference value is unspecified; onnxruntime writes zeros,
    ONNX's reference evaluator ones ("kept"), which qcc follows. Opset 7-9 masks have the data
    type, opset 10+ masks are bool."""
    x = rand(np.random.default_rng(17), 3, 4)
    types = [onnx.TensorProto.FLOAT, helper.np_dtype_to_tensor_dtype(np.dtype(mask_dtype))]
    model = one_node_model("Dropout", {"x": x}, 2, opset, types, ratio=0.3)
    y, mask = run_qcc(model, {"x": x})
    np.testing.assert_array_equal(y, run_ort(model, {"x": x})[0])
    expected_mask = run_reference(model, {"x": x})[1].astype(mask_dtype)
    assert mask.dtype == mask_dtype
    np.testing.assert_array_equal(mask, expected_mask)
    assert mask.all()


@pytest.mark.parametrize("ratio", [0.0, 0.4])
def test_dropout_ratio_and_training_inputs(ratio: float) -> None:
    feeds = {"x": rand(np.random.default_rng(18), 2, 5), "ratio": np.array(ratio, np.float32),
             "training_mode": np.array(False)}
    check("Dropout", feeds, n_out=2, opset=13, rtol=0.0)
    feeds["training_mode"] = np.array(True)
    if ratio == 0.0:  # nothing is dropped: deterministic, and onnxruntime agrees
        check("Dropout", feeds, n_out=2, opset=13, rtol=0.0)
    else:  # random without a seed: refused
        with pytest.raises(QccError, match="no seed"):
            run_qcc(one_node_model("Dropout", feeds, 2, 13), feeds)


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("ratio", [0.4, 0.75])
def test_dropout_training_with_seed(seed: int, ratio: float) -> None:
    """With a seed, training Dropout draws what ONNX's reference evaluator (and its conformance
    data) draw: numpy RandomState(seed).uniform >= ratio, kept values scaled by 1/(1-ratio)."""
    feeds = {"x": rand(np.random.default_rng(19), 3, 4, 5),
             "ratio": np.array(ratio, np.float32), "training_mode": np.array(True)}
    got = check("Dropout", feeds, n_out=2, opset=13, rtol=0.0, reference="onnx", seed=seed)
    assert 0 < got[1].sum() < got[1].size  # some dropped, some kept
