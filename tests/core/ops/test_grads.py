"""Every VJP in qcc.core.ops.grads against central finite differences of an independent forward.

The forward is onnxruntime run in float64 (DOUBLE tensors), or ONNX's own reference evaluator
for the ops onnxruntime has no double kernel for (Conv, AveragePool, global pools). For a random
output cotangent g and f(x) = <g, op(x)>, each differentiable input is checked along random
directions v: <vjp(g), v> must equal (f(x + εv) − f(x − εv)) / 2ε.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from qcc.core.ir import Node, Value
from qcc.core.registry import OPS

EPS = 1e-6
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def reference(op: str, arrays: list[np.ndarray | None], attrs: dict, opset: int
              ) -> Callable[[list[np.ndarray | None]], np.ndarray]:
    """A float64 forward of one node: float inputs are fed, integer inputs are initializers."""
    names = [("" if a is None else f"i{k}") for k, a in enumerate(arrays)]
    feeds_idx = [k for k, a in enumerate(arrays) if a is not None and a.dtype == np.float64]
    inputs = [helper.make_tensor_value_info(f"i{k}", TensorProto.DOUBLE, arrays[k].shape)
              for k in feeds_idx]
    inits = [numpy_helper.from_array(a, f"i{k}") for k, a in enumerate(arrays)
             if a is not None and a.dtype != np.float64]
    node = helper.make_node(op, names, ["y"], **attrs)
    graph = helper.make_graph([node], "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    try:
        run = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"]).run
    except Exception as e:  # onnxruntime: no double kernel for this op
        if "NOT_IMPLEMENTED" not in str(e):
            raise
        run = ReferenceEvaluator(model).run
    return lambda xs: np.asarray(run(None, {f"i{k}": xs[k] for k in feeds_idx})[0])


def check_vjp(op: str, arrays: list[np.ndarray | None], attrs: dict | None = None,
              opset: int = 17, seed: int = 0, directions: int = 3,
              same_as: tuple[str, dict] | None = None) -> None:
    """Compare qcc's VJP of `op` with central differences for every float64 input.

    `same_as` names an equivalent (op, attributes) to run as the forward instead, for an op
    whose float64 references are missing or wrong.
    """
    attrs = attrs or {}
    ref_op, ref_attrs = same_as or (op, attrs)
    forward = reference(ref_op, arrays, ref_attrs, opset)
    y = forward(arrays)
    rng = np.random.default_rng(seed)
    g = np.asarray(rng.normal(size=y.shape))
    node = Node(op, "n", [None if a is None else Value(f"i{k}") for k, a in enumerate(arrays)],
                [Value("y")], dict(attrs), opset)
    grads = OPS[op].vjp(node, list(arrays), [y], [g])
    assert len(grads) == len(arrays)
    for k, a in enumerate(arrays):
        if a is None or a.dtype != np.float64:
            continue
        assert grads[k] is not None and grads[k].shape == a.shape, f"input {k}"
        for _ in range(directions):
            v = rng.normal(size=a.shape)
            plus = [np.asarray(x + EPS * v) if i == k else x for i, x in enumerate(arrays)]
            minus = [np.asarray(x - EPS * v) if i == k else x for i, x in enumerate(arrays)]
            fd = (np.sum(g * forward(plus)) - np.sum(g * forward(minus))) / (2 * EPS)
            analytic = np.sum(grads[k] * v)
            # float64 rounding of f, amplified by 1/ε, bounds how well fd can agree
            noise = 1e-9 * (1.0 + np.sum(np.abs(g * y)))
            tol = 1e-6 * np.sum(np.abs(grads[k] * v)) + noise
            assert abs(fd - analytic) <= tol, (op, k, fd, analytic)


def normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return np.asarray(rng.normal(size=shape), np.float64)


seeds = st.integers(0, 2**31 - 1)


# -- windowed ops ---------------------------------------------------------------------------
@st.composite
def window_case(draw: st.DrawFn, pool: bool) -> tuple[tuple[int, ...], dict]:
    """Spatial input size and Conv/pool attributes with at least one output position."""
    dims = draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, 3)) for _ in range(dims)]
    strides = [draw(st.integers(1, 2)) for _ in range(dims)]
    dilations = [draw(st.integers(1, 2)) for _ in range(dims)]
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    attrs: dict = {"kernel_shape": kernel, "strides": strides}
    if auto_pad == "NOTSET":
        pads = [draw(st.integers(0, k - 1)) for k in kernel for _ in range(2)]
        attrs["pads"] = pads[0::2] + pads[1::2]
    else:
        attrs["auto_pad"] = auto_pad
    if not pool or draw(st.booleans()):
        attrs["dilations"] = dilations
    else:
        extent = kernel
    size = tuple(draw(st.integers(e, e + 4)) for e in extent)
    return size, attrs


@SETTINGS
@given(window_case(pool=False), st.integers(1, 2), st.integers(1, 2), st.integers(1, 2),
       st.integers(1, 2), st.booleans(), seeds)
def test_conv(case: tuple, n: int, groups: int, cg: int, mg: int, bias: bool,
              seed: int) -> None:
    size, attrs = case
    rng = np.random.default_rng(seed)
    c, m = groups * cg, groups * mg
    x = normal(rng, n, c, *size)
    w = normal(rng, m, cg, *attrs["kernel_shape"])
    if rng.random() < 0.5:
        del attrs["kernel_shape"]  # inferred from W
    arrays = [x, w, normal(rng, m)] if bias else [x, w]
    check_vjp("Conv", arrays, {**attrs, "group": groups}, seed=seed)


@SETTINGS
@given(window_case(pool=True), st.booleans(), seeds)
def test_maxpool(case: tuple, ceil: bool, seed: int) -> None:
    size, attrs = case
    rng = np.random.default_rng(seed)
    check_vjp("MaxPool", [normal(rng, 2, 2, *size)], {**attrs, "ceil_mode": int(ceil)}, seed=seed)


@SETTINGS
@given(window_case(pool=True), st.booleans(), st.booleans(), seeds)
def test_averagepool(case: tuple, ceil: bool, include_pad: bool, seed: int) -> None:
    size, attrs = case
    attrs.pop("dilations", None)  # AveragePool has dilations only from opset 19
    # ONNX's reference AveragePool (no double kernel in onnxruntime) breaks on auto_pad; the
    # auto_pad geometry is shared with Conv and MaxPool and checked there
    assume("auto_pad" not in attrs)
    rng = np.random.default_rng(seed)
    check_vjp("AveragePool", [normal(rng, 2, 2, *size)],
              {**attrs, "ceil_mode": int(ceil), "count_include_pad": int(include_pad)}, seed=seed)


def test_averagepool_dilated_opset19() -> None:
    rng = np.random.default_rng(1)
    check_vjp("AveragePool", [normal(rng, 1, 2, 7, 6)],
              {"kernel_shape": [2, 3], "dilations": [2, 1], "pads": [1, 0, 1, 2],
               "count_include_pad": 1}, opset=19)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 4), (1, 2, 3, 5), (2, 1, 2, 2, 3)])
def test_global_pools(op: str, shape: tuple[int, ...]) -> None:
    # ONNX's reference GlobalMaxPool gets non-4-D shapes wrong: use the ReduceMax it equals
    same_as = ("ReduceMax", {"axes": list(range(2, len(shape)))}) if op == "GlobalMaxPool" else None
    check_vjp(op, [normal(np.random.default_rng(len(shape)), *shape)], same_as=same_as)


# -- weighted and normalisation ops ---------------------------------------------------------------
@SETTINGS
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.booleans(), st.booleans(),
       st.sampled_from(["none", "scalar", "row", "col", "full", "vector"]),
       st.floats(-2, 2), st.floats(-2, 2), seeds)
def test_gemm(m: int, k: int, n: int, ta: bool, tb: bool, c_kind: str, alpha: float,
              beta: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = normal(rng, *((k, m) if ta else (m, k)))
    b = normal(rng, *((n, k) if tb else (k, n)))
    c_shape = {"scalar": (), "row": (1, n), "col": (m, 1), "full": (m, n), "vector": (n,)}
    arrays = [a, b] if c_kind == "none" else [a, b, normal(rng, *c_shape[c_kind])]
    check_vjp("Gemm", arrays, {"transA": int(ta), "transB": int(tb), "alpha": alpha,
                               "beta": beta}, seed=seed)


matmul_shapes = [((3,), (3,)), ((3,), (3, 2)), ((2, 3), (3,)), ((2, 3), (3, 4)),
                 ((5, 2, 3), (3, 4)), ((2, 3), (5, 3, 4)), ((5, 1, 2, 3), (4, 3, 2)),
                 ((4,), (2, 4, 3)), ((2, 2, 4), (4,))]


@pytest.mark.parametrize("shapes", matmul_shapes)
def test_matmul(shapes: tuple) -> None:
    rng = np.random.default_rng(len(shapes[0]) * 7 + len(shapes[1]))
    check_vjp("MatMul", [normal(rng, *shapes[0]), normal(rng, *shapes[1])])


@SETTINGS
@given(st.integers(2, 4), st.integers(1, 3), st.floats(1e-5, 1e-1), seeds)
def test_batchnorm(rank: int, c: int, eps: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = normal(rng, 2, c, *rng.integers(1, 4, rank - 2))
    params = [normal(rng, c), normal(rng, c), normal(rng, c), rng.uniform(0.5, 2, c)]
    check_vjp("BatchNormalization", [x, *params], {"epsilon": eps}, opset=15, seed=seed)


# -- elementwise ---------------------------------------------------------------------------------
broadcast_pairs = [((2, 3), (2, 3)), ((2, 3), (3,)), ((2, 1), (1, 4)), ((4, 1, 3), (2, 1)),
                   ((3,), (2, 2, 3)), ((), (2, 3)), ((2, 3), ())]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Sum"])
@pytest.mark.parametrize("shapes", broadcast_pairs)
def test_binary_broadcasting(op: str, shapes: tuple) -> None:
    rng = np.random.default_rng(len(op))
    a = normal(rng, *shapes[0])
    b = normal(rng, *shapes[1])
    if op == "Div":
        b = np.asarray(np.sign(b) * (1 + np.abs(b)))  # keep away from the pole
    check_vjp(op, [a, b])


def test_sum_three_inputs() -> None:
    rng = np.random.default_rng(3)
    check_vjp("Sum", [normal(rng, 2, 3), normal(rng, 3), normal(rng, 1, 1)])


@SETTINGS
@given(st.sampled_from(["Relu", "LeakyRelu", "Sigmoid", "Tanh"]),
       st.lists(st.integers(1, 4), min_size=1, max_size=4), seeds)
def test_activations(op: str, shape: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    attrs = {"alpha": float(rng.uniform(0, 0.5))} if op == "LeakyRelu" else {}
    check_vjp(op, [normal(rng, *shape)], attrs, seed=seed)


@pytest.mark.parametrize("bounds", [(-0.5, 0.7), (None, 0.3), (-0.2, None)])
def test_clip_inputs(bounds: tuple) -> None:
    rng = np.random.default_rng(5)
    arrays: list[np.ndarray | None] = [normal(rng, 3, 4)]
    arrays += [None if b is None else np.array(b) for b in bounds]
    check_vjp("Clip", arrays, opset=13)


def test_clip_attributes_opset6() -> None:
    check_vjp("Clip", [normal(np.random.default_rng(6), 4, 5)], {"min": -0.4, "max": 0.6},
              opset=6)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset,axis", [(11, 1), (11, 0), (11, -1), (13, -1), (13, 1), (13, 0)])
def test_softmax(op: str, opset: int, axis: int) -> None:
    x = normal(np.random.default_rng(axis + 2), 2, 3, 4)
    check_vjp(op, [x], {"axis": axis}, opset=opset)


# -- data movement -------------------------------------------------------------------------------
@SETTINGS
@given(st.lists(st.integers(1, 3), min_size=1, max_size=4), st.data(), seeds)
def test_transpose(shape: list[int], data: st.DataObject, seed: int) -> None:
    perm = data.draw(st.permutations(range(len(shape))))
    check_vjp("Transpose", [normal(np.random.default_rng(seed), *shape)], {"perm": list(perm)})


def test_transpose_default_reverses() -> None:
    check_vjp("Transpose", [normal(np.random.default_rng(0), 2, 3, 4)])


@SETTINGS
@given(st.lists(st.integers(1, 3), min_size=1, max_size=3), st.integers(1, 3), st.data(), seeds)
def test_concat(shape: list[int], count: int, data: st.DataObject, seed: int) -> None:
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(seed)
    arrays = []
    for _ in range(count):
        s = list(shape)
        s[axis] = int(rng.integers(1, 4))
        arrays.append(normal(rng, *s))
    check_vjp("Concat", arrays, {"axis": axis})


@pytest.mark.parametrize("op,shape,attrs,extra", [
    ("Flatten", (2, 3, 4), {"axis": 2}, None),
    ("Flatten", (2, 3, 4), {"axis": 0}, None),
    ("Reshape", (2, 3, 4), {}, np.array([4, -1], np.int64)),
    ("Squeeze", (2, 1, 3, 1), {}, np.array([1, 3], np.int64)),
    ("Unsqueeze", (2, 3), {}, np.array([0, 2], np.int64)),
    ("Identity", (2, 3), {}, None),
    ("Dropout", (2, 3), {}, None),
])
def test_relabelling_ops(op: str, shape: tuple, attrs: dict, extra: np.ndarray | None) -> None:
    arrays: list[np.ndarray | None] = [normal(np.random.default_rng(0), *shape)]
    if extra is not None:
        arrays.append(extra)
    check_vjp(op, arrays, attrs, opset=13)


def test_a_wrong_gradient_is_caught() -> None:
    """The checker itself can fail: a VJP with a sign error must not pass."""
    original = OPS["Sub"].vjp
    try:
        OPS["Sub"].vjp = lambda node, inputs, outputs, grads: [grads[0], grads[0]]
        with pytest.raises(AssertionError):
            check_vjp("Sub", [np.ones((2, 2)), np.ones((2, 2))])
    finally:
        OPS["Sub"].vjp = original
