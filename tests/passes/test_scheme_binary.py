"""The binary and ternary schemes (passes/schemes/binary.py).

Weights against qcc.core.numerics.binary applied channel by channel and against the closed-form α;
integer graphs of the zoo MLP with binary / ternary weights against onnxruntime running the
float model with the same ±α / {−α, 0, α} weights (16-bit activations, so only the weights
differ from float). XNOR-popcount execution is tested in tests/backends/numpy_int/test_xnor.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from backends.numpy_int import run_integer
from passes.calibrate import TensorStats, calibrate
from passes.quantize_graph import LayerConfig, QuantConfig, quantize_graph
from passes.schemes import get_scheme
from passes.schemes.binary import ternarize_channels
from qcc import zoo
from qcc.core.errors import QccError
from qcc.core.numerics import binary
from qcc.core.onnx_import import import_model


def per_channel(w: np.ndarray, axis: int) -> list[np.ndarray]:
    return [np.take(w, i, axis=axis) for i in range(w.shape[axis])]


@pytest.mark.parametrize("shape, axis", [((6, 3, 3, 3), 0), ((20, 7), 1), ((7, 20), 0)])
def test_binary_weights_are_signs_times_mean_abs(shape: tuple[int, ...], axis: int) -> None:
    w = np.random.default_rng(0).standard_normal(shape)
    w.flat[0] = 0.0  # sign(0) = +1
    codes, fmt = get_scheme("binary").weight(w, 8, axis)
    assert codes.flat[0] == 1 and set(np.unique(codes)) == {-1, 1}
    assert fmt.levels == (-1, 1) and str(fmt.spec) == "bin"
    for row, code, alpha in zip(per_channel(w, axis), per_channel(codes, axis), fmt.scales):
        signs, a = binary.binarize(row)
        assert np.array_equal(code, signs)
        assert alpha == pytest.approx(float(a))
        # α minimises ||W − α·b||² for b = sign(W): the derivative vanishes there
        assert np.sum((row - alpha * code) * code) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("shape, axis", [((6, 3, 3, 3), 0), ((20, 7), 1)])
def test_ternary_weights_follow_twn_per_channel(shape: tuple[int, ...], axis: int) -> None:
    w = np.random.default_rng(1).laplace(size=shape)
    codes, fmt = get_scheme("ternary").weight(w, 8, axis)
    assert (fmt.lo, fmt.hi, str(fmt.spec)) == (-1, 1, "ter")
    for row, code, alpha in zip(per_channel(w, axis), per_channel(codes, axis), fmt.scales):
        t, a = binary.ternarize(row)
        assert np.array_equal(code, t) and alpha == pytest.approx(a)
        assert 0 < np.count_nonzero(code) < code.size


def test_ternary_zero_channel_has_no_weights() -> None:
    w = np.zeros((2, 5))
    w[1] = [1.0, -2.0, 0.1, 3.0, 0.0]
    codes, alpha = ternarize_channels(w, 0)
    assert not codes[0].any() and alpha[0] == 1.0
    assert codes[1].tolist() == [1, -1, 0, 1, 0] and alpha[1] == pytest.approx(2.0)


def test_activations_are_fixed_point() -> None:
    stats = TensorStats(-1.5, 3.2, -1.0, 3.0)
    assert (get_scheme("binary").activation(stats, 6)
            == get_scheme("fixed").activation(stats, 6))


def _with_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> bytes:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for init in copy.graph.initializer:
        if init.name in weights:
            init.CopyFrom(numpy_helper.from_array(weights[init.name].astype(np.float32),
                                                  init.name))
    return copy.SerializeToString()


@pytest.mark.parametrize("scheme", ["binary", "ternary"])
def test_integer_mlp_equals_the_float_mlp_with_the_same_weights(scheme: str) -> None:
    model = zoo.mlp_digits()
    graph = import_model(model)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 64)).astype(np.float32)
    config = QuantConfig(scheme=scheme, default_bits=16)
    q = quantize_graph(graph, calibrate(graph, x), config)
    got, report = run_integer(q, {"input": x[:32]}, check=False)
    weights = {}
    for node in graph.nodes:
        if node.op_type == "Gemm":
            codes, fmt = get_scheme(scheme).weight(node.inputs[1].const, 1, 0)
            weights[node.inputs[1].name] = codes * np.asarray(fmt.scales)[:, None]
    sess = ort.InferenceSession(_with_weights(model, weights),
                                providers=["CPUExecutionProvider"])
    expected = np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(32)])
    assert report.total_overflows == 0
    np.testing.assert_allclose(got["output"], expected, rtol=0,
                               atol=2e-3 * np.abs(expected).max())
    assert np.array_equal(got["output"].argmax(axis=1), expected.argmax(axis=1))


def test_only_layers_asking_for_sign_activations_use_xnor() -> None:
    graph = import_model(zoo.mlp_digits())
    stats = calibrate(graph, np.random.default_rng(3).normal(size=(16, 64)).astype(np.float32))
    names = [n.name for n in graph.nodes if n.op_type == "Gemm"]
    layers = {names[1]: LayerConfig(1, 8, "binary", binary_activations=True)}
    q = quantize_graph(graph, stats, QuantConfig(scheme="binary", layers=layers))
    assert [n.attrs.get("dot") for n in q.nodes if n.op_type == "QGemm"] == [None, "xnor", None]
    layers = {names[1]: LayerConfig(2, 8, "ternary", binary_activations=True)}
    with pytest.raises(QccError, match="binary weights"):
        quantize_graph(graph, stats, QuantConfig(scheme="binary", layers=layers))
