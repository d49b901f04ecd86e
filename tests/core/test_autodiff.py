"""qcc.core.autodiff: whole-graph gradients against central finite differences in float64.

The digits CNN of examples/digits is converted to DOUBLE tensors and its loss gradient w.r.t.
every weight and bias is checked element by element.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcc import zoo
from qcc.core.autodiff import (
    backward,
    gradient_names,
    layer_tensors,
    logits_value,
    softmax_cross_entropy,
)
from qcc.core.float_exec import run_float
from qcc.core.float_train import trainable_parameters
from qcc.core.ir import Graph
from qcc.core.layers import weighted_layers
from qcc.core.onnx_import import import_model

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"


def as_double(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every float32 tensor (initializers, inputs, outputs) made DOUBLE."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(init).astype(np.float64), init.name))
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    return model


def loss_of(graph: Graph, x: np.ndarray, y: np.ndarray) -> float:
    env = run_float(graph, {graph.inputs[0].name: x}, keep_all=True)
    return softmax_cross_entropy(env[logits_value(graph).name], y)[0]


def loss_and_grads(graph: Graph, x: np.ndarray, y: np.ndarray, wrt: set[str]
                   ) -> tuple[float, dict[str, np.ndarray]]:
    env = run_float(graph, {graph.inputs[0].name: x}, keep_all=True)
    logits = logits_value(graph).name
    loss, d_logits = softmax_cross_entropy(env[logits], y)
    return loss, backward(graph, env, {logits: d_logits}, wrt)


def finite_difference(graph: Graph, name: str, x: np.ndarray, y: np.ndarray,
                      eps: float = 1e-6) -> np.ndarray:
    """Central difference of the loss w.r.t. every element of constant `name`."""
    value = graph.values[name]
    base = value.const
    fd = np.zeros_like(base)
    for i in np.ndindex(base.shape):
        losses = []
        for step in (eps, -eps):
            w = base.copy()
            w[i] += step
            value.const = w
            losses.append(loss_of(graph, x, y))
        fd[i] = (losses[0] - losses[1]) / (2 * eps)
    value.const = base
    return fd


@pytest.fixture(scope="module")
def digits64() -> tuple[Graph, np.ndarray, np.ndarray]:
    graph = import_model(as_double(onnx.load(DIGITS / "digits.onnx")))
    data = np.load(DIGITS / "calib.npz")
    # calibration samples: the trained net is not yet at zero loss on them
    return graph, data["x"][:12].astype(np.float64), data["y"][:12]


def test_digits_cnn_gradient_matches_finite_differences(digits64: tuple) -> None:
    graph, x, y = digits64
    params = trainable_parameters(graph)
    assert len(params) == 8 and sum(graph.values[p].numel for p in params) == 6218
    loss, grads = loss_and_grads(graph, x, y, set(params))
    assert loss > 1e-3
    for name in params:
        fd = finite_difference(graph, name, x, y)
        g = grads[name]
        assert g.dtype == np.float64 and g.shape == fd.shape
        err = np.abs(g - fd).max() / np.abs(fd).max()
        assert err < 1e-5, (name, err)


def test_gradient_w_r_t_input_and_intermediates(digits64: tuple) -> None:
    """Gradients of non-constant tensors (the input, a hidden activation) are right too."""
    graph, x, y = digits64
    _, grads = loss_and_grads(graph, x, y, {"input", "relu2", "fc2.W"})
    assert set(grads) == {"input", "relu2", "fc2.W"}
    eps = 1e-6
    rng = np.random.default_rng(0)
    v = rng.normal(size=x.shape)
    fd = (loss_of(graph, x + eps * v, y) - loss_of(graph, x - eps * v, y)) / (2 * eps)
    assert np.sum(grads["input"] * v) == pytest.approx(fd, rel=1e-6)
    assert grads["relu2"].shape == (12, 16, 6, 6)


def test_fan_out_is_summed() -> None:
    """x feeds three readers (two of them the same node): y = sum(relu(x)·x + x)."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "x"], ["m"]),
             helper.make_node("Add", ["m", "x"], ["s"]), helper.make_node("Mul", ["s", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE,
                                                                         [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [3, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g = import_model(model)
    x = np.random.default_rng(1).normal(size=(3, 4))
    env = run_float(g, {"x": x}, keep_all=True)
    grads = backward(g, env, {"y": np.ones((3, 4))}, {"x"})
    s = np.maximum(x, 0) * x + x
    expected = 2 * s * (2 * np.maximum(x, 0) + 1)  # d(s²)/dx with ds/dx = 2·relu(x) + 1
    np.testing.assert_allclose(grads["x"], expected, rtol=1e-12)


def test_unreachable_tensor_gets_zero_gradient() -> None:
    g = import_model(zoo.mlp_digits())
    x = np.random.default_rng(0).normal(size=(1, 64)).astype(np.float32)
    env = run_float(g, {"input": x}, keep_all=True)
    last = g.nodes[-1]
    out = g.outputs[0].name
    grads = backward(g, env, {last.inputs[0].name: np.ones_like(env[last.inputs[0].name])},
                     {last.inputs[1].name, g.nodes[0].inputs[1].name})
    assert not grads[last.inputs[1].name].any()  # the last weight is downstream of the seed
    assert grads[g.nodes[0].inputs[1].name].any()
    assert out not in grads


def test_softmax_cross_entropy_matches_finite_differences() -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(size=(5, 7))
    labels = rng.integers(0, 7, 5)
    loss, d = softmax_cross_entropy(z, labels)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(5), labels])), rel=1e-12)
    eps = 1e-6
    for i in np.ndindex(z.shape):
        dz = np.zeros_like(z)
        dz[i] = eps
        fd = (softmax_cross_entropy(z + dz, labels)[0] -
              softmax_cross_entropy(z - dz, labels)[0]) / (2 * eps)
        assert d[i] == pytest.approx(fd, abs=1e-9)


def test_loss_is_taken_before_a_final_softmax() -> None:
    model = zoo.mlp_digits()
    model.graph.node[-1].output[0] = "logits"
    model.graph.node.append(helper.make_node("Softmax", ["logits"], ["output"], axis=-1))
    g = import_model(model)
    assert logits_value(g).name == "logits"
    assert logits_value(import_model(zoo.mlp_digits())).name == "output"


def test_weighted_layers_and_their_tensors(digits64: tuple) -> None:
    graph, x, y = digits64
    layers = weighted_layers(graph)
    assert [(lay.node, lay.op_type, lay.weight, lay.input, lay.output) for lay in layers] == [
        ("conv1", "Conv", "conv1.W", "input", "conv1"),
        ("conv2", "Conv", "conv2.W", "relu1", "conv2"),
        ("fc1", "Gemm", "fc1.W", "flat", "fc1"),
        ("fc2", "Gemm", "fc2.W", "relu3", "logits")]
    env = run_float(graph, {"input": x}, keep_all=True)
    loss, d = softmax_cross_entropy(env["logits"], y)
    grads = backward(graph, env, {"logits": d}, gradient_names(layers) | {"relu3"})
    fc1 = layer_tensors(layers[2], env, grads)
    # Gemm with transB: Z = A Wᵀ + b, so G_W = G_Aᵀ A (G_A is d loss / d Z, before the Relu)
    np.testing.assert_allclose(fc1.G_W, fc1.G_A.T @ fc1.A, rtol=1e-12)
    assert fc1.W is graph.values["fc1.W"].const and fc1.G_A.shape == (12, 32)
    # ... so it is the post-Relu gradient with the Relu's derivative applied
    np.testing.assert_array_equal(fc1.G_A, np.where(env["fc1"] > 0, grads["relu3"], 0))
    assert (grads["relu3"][env["fc1"] <= 0] != 0).any()


@pytest.mark.parametrize("build,convs,gemms", [(lambda: zoo.convnet_cifar(width=4), 6, 3),
                                               (zoo.resnet8, 9, 1), (zoo.mlp_digits, 0, 3)])
def test_weighted_layers_of_the_zoo(build: object, convs: int, gemms: int) -> None:
    kinds = [lay.op_type for lay in weighted_layers(import_model(build()))]
    assert kinds == ["Conv"] * convs + ["Gemm"] * gemms
