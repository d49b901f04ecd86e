"""XNOR-popcount layers (backends/numpy_int/xnor.py) against onnxruntime.

Kernels: the packed dot products against numerics.binary and integer matmuls, the XNOR conv
against onnxruntime's Conv on ±1 tensors (padding, strides, dilations, groups). Networks: a
binarized MLP and conv nets (binary weights, sign activations, sign(0) = +1) built with
onnx.helper run through passes.quantize_graph (binary scheme, binary_activations) and the
integer interpreter give the same bits as onnxruntime on the float binarized network.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from backends.numpy_int import run_integer, xnor
from passes.calibrate import TensorStats
from passes.quantize_graph import LayerConfig, QuantConfig, quantize_graph
from qcc.core.ir import Node
from qcc.core.numerics import binary
from qcc.core.onnx_import import import_model

OPSET = 17


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def make_model(nodes: list, inits: list, in_shape: list, out_shape: list) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# --- packing and dot products -----------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 31, 32, 33, 70])
def test_pack_rows_has_the_pack_signs_layout(n: int) -> None:
    signs = np.random.default_rng(n).choice([-1, 1], size=(4, n))
    assert np.array_equal(xnor.pack_rows(signs > 0), binary.pack_signs(signs))


@pytest.mark.parametrize("n", [5, 32, 100])
def test_xnor_matmul_is_the_integer_matmul(n: int) -> None:
    rng = np.random.default_rng(n)
    a, w = rng.choice([-1, 1], size=(9, n)), rng.choice([-1, 1], size=(7, n))
    valid = np.broadcast_to(xnor.pack_rows(np.ones(n, dtype=bool)), (9, -(-n // 32)))
    got = xnor.xnor_matmul(xnor.pack_rows(a > 0), xnor.pack_rows(w > 0), valid)
    assert np.array_equal(got, a @ w.T)
    # a masked tap counts as 0: drop the last element of every row
    mask = xnor.pack_rows(np.arange(n) < n - 1)
    got = xnor.xnor_matmul(xnor.pack_rows(a > 0), xnor.pack_rows(w > 0),
                           np.broadcast_to(mask, valid.shape))
    assert np.array_equal(got, a[:, :-1] @ w[:, :-1].T)


CONV_CASES = [  # (attrs, channels in, out, spatial)
    ({"kernel_shape": [3, 3]}, 3, 4, (7, 6)),
    ({"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, 5, 8, (6, 6)),
    ({"kernel_shape": [3, 2], "pads": [2, 0, 1, 1], "strides": [2, 1]}, 4, 6, (9, 7)),
    ({"kernel_shape": [3, 3], "dilations": [2, 2], "pads": [2, 2, 2, 2]}, 3, 5, (8, 8)),
    ({"kernel_shape": [3, 3], "group": 2, "pads": [1, 1, 1, 1]}, 6, 4, (5, 5)),
    ({"kernel_shape": [3], "pads": [1, 1]}, 40, 3, (10,)),
]


@pytest.mark.parametrize("attrs, cin, cout, spatial", CONV_CASES)
def test_xnor_conv_equals_onnxruntime_conv_on_signs(attrs: dict, cin: int, cout: int,
                                                    spatial: tuple[int, ...]) -> None:
    rng = np.random.default_rng(cin * cout)
    x = rng.integers(-3, 4, size=(2, cin, *spatial))  # codes; sign(0) = +1
    w = rng.choice([-1, 1], size=(cout, cin // attrs.get("group", 1), *attrs["kernel_shape"]))
    b = rng.integers(-5, 6, size=cout)
    node = Node("QConv", "conv", [], [], {**attrs, "dot": "xnor"})
    got = xnor.conv_acc(node, x.astype(np.int8), w.astype(np.int8), b.astype(np.int32))
    model = make_model(
        [helper.make_node("Conv", ["input", "W", "B"], ["output"], **attrs)],
        [numpy_helper.from_array(w.astype(np.float32), "W"),
         numpy_helper.from_array(b.astype(np.float32), "B")],
        list(x.shape), [None] * x.ndim)
    expected = run_ort(model, {"input": np.where(x >= 0, 1, -1).astype(np.float32)})
    assert got.dtype == np.int64
    assert np.array_equal(got, expected)


def test_xnor_conv_in_chunks_of_images(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    x = rng.integers(-3, 4, size=(5, 4, 6, 6)).astype(np.int8)
    w = rng.choice([-1, 1], size=(3, 4, 3, 3)).astype(np.int8)
    node = Node("QConv", "conv", [], [], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]})
    whole = xnor.conv_acc(node, x, w, np.arange(3, dtype=np.int32))
    monkeypatch.setattr(xnor, "PATCH_BYTES", 1)  # one image per chunk
    monkeypatch.setattr(xnor, "BLOCK_WORDS", 1)  # one row per XNOR block
    assert np.array_equal(xnor.conv_acc(node, x, w, np.arange(3, dtype=np.int32)), whole)


def test_xnor_gemm_reads_the_zero_point_and_transB() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(5, 45)).astype(np.uint8)
    w = rng.choice([-1, 1], size=(45, 6)).astype(np.int8)
    node = Node("QGemm", "gemm", [], [], {"dot": "xnor", "x_zero_point": 128})
    a = np.where(x.astype(int) >= 128, 1, -1)
    assert np.array_equal(xnor.gemm_acc(node, x, w), a @ w)
    node.attrs["transB"] = 1
    assert np.array_equal(xnor.gemm_acc(node, x, np.ascontiguousarray(w.T)), a @ w)


def test_xnor_refuses_non_binary_weights() -> None:
    node = Node("QGemm", "gemm", [], [], {"dot": "xnor"})
    with pytest.raises(Exception, match="±1"):
        xnor.gemm_acc(node, np.ones((1, 3), np.int8), np.array([[1], [0], [-1]], np.int8))


# --- binarized networks, end to end -----------------------------------------------------------

class Net:
    """A float network and its binarized twin (sign activations before the marked layers).

    Weights are ±α_c with α_c a multiple of 1/8 (odd multiples in the last layer, so no output
    is a power of two that its fixed-point range would saturate), biases integer multiples of
    α_c and inputs small integers: every value is exact in float32 and in the integer graph.
    """

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.plain: list = []
        self.binarized: list = []
        self.inits: list = []
        self.sign_layers: list[str] = []
        self.count = 0

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def _weights(self, shape: tuple[int, ...], odd: bool) -> tuple[str, str]:
        eighths = self.rng.choice(np.arange(3, 17, 2) if odd else np.arange(1, 17), shape[0])
        alpha = eighths / 8.0
        signs = self.rng.choice([-1.0, 1.0], size=shape)
        w = signs * alpha.reshape((-1,) + (1,) * (len(shape) - 1))
        b = self.rng.integers(-4, 5, shape[0]) * alpha
        names = self._name("W"), self._name("B")
        self.inits += [numpy_helper.from_array(w.astype(np.float32), names[0]),
                       numpy_helper.from_array(b.astype(np.float32), names[1])]
        return names

    def _sign(self, x: str) -> str:
        """sign(x) with sign(0) = +1 as ONNX ops (ONNX's Sign maps 0 to 0)."""
        if not hasattr(self, "_pm"):
            self._pm = True
            self.inits += [numpy_helper.from_array(np.array(v, np.float32), n)
                           for v, n in ((0.0, "zero"), (1.0, "one"), (-1.0, "minus_one"))]
        ge, out = self._name("ge"), self._name("sign")
        self.binarized += [helper.make_node("GreaterOrEqual", [x, "zero"], [ge]),
                           helper.make_node("Where", [ge, "one", "minus_one"], [out])]
        return out

    def layer(self, op: str, x: tuple[str, str], shape: tuple[int, ...], sign: bool,
              last: bool = False, **attrs: object) -> tuple[str, str]:
        """One Conv/Gemm in both networks; `x` is (plain name, binarized name)."""
        w, b = self._weights(shape, odd=last)
        out = "output" if last else self._name("y")
        name = self._name(op)
        if op == "Gemm":
            attrs["transB"] = 1
        self.plain.append(helper.make_node(op, [x[0], w, b], [out], name=name, **attrs))
        xb = self._sign(x[1]) if sign else x[1]
        self.binarized.append(helper.make_node(op, [xb, w, b], [out], **attrs))
        if sign:
            self.sign_layers.append(name)
        return out, out

    def node(self, op: str, x: tuple[str, str], **attrs: object) -> tuple[str, str]:
        out = self._name(op.lower())
        self.plain.append(helper.make_node(op, [x[0]], [out], **attrs))
        self.binarized.append(helper.make_node(op, [x[1]], [out], **attrs))
        return out, out

    def models(self, in_shape: list, out_shape: list) -> tuple[onnx.ModelProto, onnx.ModelProto]:
        return (make_model(self.plain, self.inits, in_shape, out_shape),
                make_model(self.binarized, self.inits, in_shape, out_shape))


def mlp(seed: int) -> Net:
    """64-48-32-10, every layer (the first too) on sign activations."""
    net = Net(seed)
    x = ("input", "input")
    for fin, fout in ((64, 48), (48, 32)):
        x = net.layer("Gemm", x, (fout, fin), sign=True)
    net.layer("Gemm", x, (10, 32), sign=True, last=True)
    return net


def convnet(seed: int, pads: int) -> Net:
    """Conv 3-8 (real input) / Conv 8-8 / MaxPool / grouped Conv 8-12 / Flatten / Gemm."""
    net = Net(seed)
    x = net.layer("Conv", ("input", "input"), (8, 3, 3, 3), sign=False, kernel_shape=[3, 3])
    x = net.layer("Conv", x, (8, 8, 3, 3), sign=True, kernel_shape=[3, 3], pads=[pads] * 4)
    x = net.node("MaxPool", x, kernel_shape=[2, 2], strides=[2, 2])
    x = net.layer("Conv", x, (12, 4, 2, 2), sign=True, kernel_shape=[2, 2], group=2,
                  pads=[pads] * 4)
    x = net.node("Flatten", x, axis=1)
    features = 12 * (3 if pads == 0 else 6) ** 2  # 12x12 -> 10 -> 8|10 -> 4|5 -> 3|6
    net.layer("Gemm", x, (10, features), sign=True, last=True)
    return net


def binarized_stats(net: Net, binarized: onnx.ModelProto, x: np.ndarray
                    ) -> dict[str, TensorStats]:
    """Ranges of the binarized network's tensors (onnxruntime; qcc has no GreaterOrEqual)."""
    names = ["input"] + [o for n in net.plain for o in n.output if o != "output"]
    model = onnx.ModelProto()
    model.CopyFrom(binarized)
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                              for n in names[1:])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in model.graph.output], sess.run(None, {"input": x})))
    values["input"] = x
    return {n: TensorStats(float(v.min()), float(v.max()), float(v.min()), float(v.max()))
            for n, v in values.items()}


def integer_outputs(net: Net, in_shape: list, out_shape: list, x: np.ndarray) -> np.ndarray:
    """The plain network quantized with sign activations; the ranges are those of the binarized
    network (same tensor names), whose values are what the integer graph holds."""
    plain, binarized = net.models(in_shape, out_shape)
    layers = {name: LayerConfig(1, 16, "binary", binary_activations=True)
              for name in net.sign_layers}
    config = QuantConfig(scheme="binary", default_bits=16, layers=layers)
    q = quantize_graph(import_model(plain), binarized_stats(net, binarized, x), config)
    assert sum(n.attrs.get("dot") == "xnor" for n in q.nodes) == len(net.sign_layers)
    out, report = run_integer(q, {"input": x})
    assert report.total_overflows == 0
    return out["output"]


CASES = [("mlp", lambda s: mlp(s), [None, 64], [None, 10], (40, 64)),
         ("conv", lambda s: convnet(s, 0), [None, 3, 12, 12], [None, 10], (12, 3, 12, 12)),
         ("conv_padded", lambda s: convnet(s, 1), [None, 3, 12, 12], [None, 10],
          (12, 3, 12, 12))]


@pytest.mark.parametrize("name, build, in_shape, out_shape, x_shape", CASES,
                         ids=[c[0] for c in CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_binarized_network_is_bit_exact(name: str, build, in_shape: list, out_shape: list,
                                        x_shape: tuple[int, ...], seed: int) -> None:
    net = build(seed)
    x = np.random.default_rng(seed).integers(-7, 8, size=x_shape).astype(np.float32)
    got = integer_outputs(net, in_shape, out_shape, x)
    _, reference = net.models(in_shape, out_shape)
    expected = run_ort(reference, {"input": x})
    assert got.dtype == expected.dtype == np.float32
    assert np.array_equal(got, expected)
    # sign activations matter: the plain network computes something else
    plain, _ = net.models(in_shape, out_shape)
    assert not np.allclose(run_ort(plain, {"input": x}), expected)
