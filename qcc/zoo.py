"""Small reference architectures built with onnx.helper, for tests, benchmarks and examples.

They mirror the benchmark models the project is measured on (a CIFAR-10 ConvNet after
seeds/001 §4, the MLPerf Tiny ResNet-8, a digits MLP) so the repository never depends on
files outside it. Weights are He-normal from a seeded generator: these models measure speed and
agreement, not accuracy.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class ModelBuilder:
    """Appends nodes and He-normal initializers; `finish` returns a checked ModelProto."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def init(self, prefix: str, array: np.ndarray) -> str:
        name = self.fresh(prefix)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def he(self, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return self.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape).astype(np.float32)

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        out = self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.fresh(op), **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1,
             pad: int | None = None, groups: int = 1) -> str:
        pad = k // 2 if pad is None else pad
        w = self.init("W", self.he((cout, cin // groups, k, k), cin // groups * k * k))
        b = self.init("B", self.rng.normal(0.0, 0.01, cout).astype(np.float32))
        return self.node("Conv", [x, w, b], kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad] * 4, group=groups)

    def batchnorm(self, x: str, c: int) -> str:
        r = self.rng
        params = [r.uniform(0.5, 1.5, c), r.normal(0.0, 0.1, c), r.normal(0.0, 0.1, c),
                  r.uniform(0.5, 1.5, c)]
        names = [self.init(p, a.astype(np.float32))
                 for p, a in zip(("bn_scale", "bn_bias", "bn_mean", "bn_var"), params)]
        return self.node("BatchNormalization", [x, *names], epsilon=1e-3)

    def relu(self, x: str) -> str:
        return self.node("Relu", [x])

    def gemm(self, x: str, fin: int, fout: int) -> str:
        w = self.init("W", self.he((fout, fin), fin))
        b = self.init("B", self.rng.normal(0.0, 0.01, fout).astype(np.float32))
        return self.node("Gemm", [x, w, b], transB=1)

    def finish(self, name: str, last: str, in_shape: list[int], out_shape: list[int]
               ) -> onnx.ModelProto:
        self.nodes[-1].output[0] = "output"
        for nd in self.nodes:
            for i, t in enumerate(nd.input):
                if t == last:
                    nd.input[i] = "output"
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
            initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="qcc.zoo")
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def convnet_cifar(seed: int = 0, width: int = 64) -> onnx.ModelProto:
    """2x(w C3)-MP-2x(2w C3)-MP-2x(4w C3)-GMP-2x(8w FC)-10 (seeds/001 §4 CIFAR-10 ConvNet)."""
    b = ModelBuilder(seed)
    x, cin = "input", 3
    for mult, pool in [(1, False), (1, True), (2, False), (2, True), (4, False), (4, False)]:
        x = b.relu(b.conv(x, cin, width * mult))
        cin = width * mult
        if pool:
            x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.node("Flatten", [b.node("GlobalMaxPool", [x])], axis=1)
    for fout in (8 * width, 8 * width):
        x = b.relu(b.gemm(x, cin, fout))
        cin = fout
    return b.finish("convnet_cifar", b.gemm(x, cin, 10), [1, 3, 32, 32], [1, 10])


def resnet8(seed: int = 0) -> onnx.ModelProto:
    """MLPerf Tiny image-classification ResNet-8 with BatchNormalization kept in the graph."""
    b = ModelBuilder(seed)
    x = b.relu(b.batchnorm(b.conv("input", 3, 16), 16))
    cin = 16
    for cout, stride in [(16, 1), (32, 2), (64, 2)]:
        y = b.relu(b.batchnorm(b.conv(x, cin, cout, 3, stride), cout))
        y = b.batchnorm(b.conv(y, cout, cout, 3, 1), cout)
        shortcut = x if (stride == 1 and cin == cout) else b.conv(x, cin, cout, 1, stride, pad=0)
        x = b.relu(b.node("Add", [y, shortcut]))
        cin = cout
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    return b.finish("resnet8", b.gemm(x, 64, 10), [1, 3, 32, 32], [1, 10])


def mlp_digits(seed: int = 0) -> onnx.ModelProto:
    """64-128-64-10 MLP for 8x8 digits."""
    b = ModelBuilder(seed)
    x = b.relu(b.gemm("input", 64, 128))
    x = b.relu(b.gemm(x, 128, 64))
    return b.finish("mlp_digits", b.gemm(x, 64, 10), [1, 64], [1, 10])


MODELS = {"convnet_cifar": convnet_cifar, "resnet8": resnet8, "mlp_digits": mlp_digits}
