"""core.float_train: SGD on the IR lowers the loss, is deterministic, records σ and λ as specified;
λ from the aggregated square-Jacobian equals the dense computation on tiny layers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcc.core.autodiff import (
    backward,
    largest_singular_value,
    logits_value,
    softmax_cross_entropy,
    square_jacobian,
)
from qcc.core.float_exec import run_float
from qcc.core.float_train import TrainConfig, learning_rate, train, trainable_parameters
from qcc.core.ir import Graph, Node, Value
from qcc.core.onnx_import import import_model
from qcc.core.ops.grads import conv_vjp, gemm_vjp, matmul_vjp

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"


def tiny_cnn(seed: int = 0) -> onnx.ModelProto:
    """1x8x8 -> Conv3x3 4 pad 1 -> Relu -> MaxPool 2 -> Flatten -> Gemm 10."""
    rng = np.random.default_rng(seed)
    inits = {"cw": rng.normal(0, 0.47, (4, 1, 3, 3)), "cb": np.zeros(4),
             "fw": rng.normal(0, 0.18, (10, 64)), "fb": np.zeros(10)}
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(a.astype(np.float32), n) for n, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    d = np.load(DIGITS / "train.npz")
    return d["x"][:256], d["y"][:256]


def quick(**kw: object) -> TrainConfig:
    base = dict(epochs=3, batch_size=32, lr=0.1, momentum=0.9, progress=False, seed=0)
    return TrainConfig(**{**base, **kw})


def test_training_lowers_the_loss(data: tuple) -> None:
    x, y = data
    graph = import_model(tiny_cnn())
    before = softmax_cross_entropy(run_float(graph, {"x": x})["y"], y)[0]
    result = train(graph, x, y, quick(epochs=6, batch_size=16, lr=0.05), x, y)
    after = softmax_cross_entropy(run_float(graph, {"x": x})["y"], y)[0]
    assert after < 0.5 * before
    assert result.loss[-1] < 0.5 * result.loss[0] and result.val_accuracy[-1] > 0.7
    assert result.graph is graph  # trained in place


def test_training_is_deterministic(data: tuple) -> None:
    x, y = data
    runs = [train(import_model(tiny_cnn()), x, y, quick(seed=s)) for s in (0, 0, 1)]
    weights = [{n: r.graph.values[n].const for n in trainable_parameters(r.graph)} for r in runs]
    for n in weights[0]:
        np.testing.assert_array_equal(weights[0][n], weights[1][n])
    dicts = [r.to_dict() for r in runs]
    for d in dicts:
        d.pop("seconds")
    assert dicts[0] == dicts[1]
    assert dicts[0]["loss"] != dicts[2]["loss"]  # the seed drives the batch order


def test_statistics_have_the_right_shapes(data: tuple) -> None:
    x, y = data
    result = train(import_model(tiny_cnn()), x, y, quick(epochs=4, schedule="step",
                                                         step_epochs=2, gamma=0.5))
    conv, fc = result.layers
    assert (conv.node, conv.op_type, conv.weight, conv.output) == ("conv", "Conv", "cw", "c")
    assert (fc.numel_gw, fc.numel_ga, conv.numel_gw, conv.numel_ga) == (640, 10, 36, 256)
    assert conv.jacobian_shape == [9, 64] and fc.jacobian_shape == [64, 1]
    for s in result.layers:
        for series in (s.sigma_gw, s.sigma_ga, s.lambda_running, s.lambda_batch):
            assert len(series) == 4 and all(v > 0 and math.isfinite(v) for v in series)
        assert s.sigma_gw_min <= s.sigma_gw_max and s.sigma_ga_min <= s.sigma_ga_max
        assert s.lambda_max == max(s.lambda_running)
        assert s.lambda_running[0] == s.lambda_batch[0]  # the running matrix starts at batch 1
    assert result.lr == [0.1, 0.1, 0.05, 0.05] and result.lr_min == 0.05
    text = json.loads(result.to_json())
    assert text["layers"][0]["lambda_max"] == conv.lambda_max and "graph" not in text


def test_running_estimates_follow_appendix_e(data: tuple) -> None:
    """Two full-batch iterations, plain SGD: σ̂² = σ̃1² after the first and 0.9σ̃1² + 0.1σ̃2²
    after the second; λ of epoch 2 is that of 0.9 J̄1 + 0.1 J̄2."""
    x, y = data[0][:64], data[1][:64]
    lr = 0.05
    result = train(import_model(tiny_cnn()), x, y, quick(epochs=2, batch_size=64, lr=lr,
                                                         momentum=0.0, schedule="constant"))
    graph = import_model(tiny_cnn())
    params = trainable_parameters(graph)
    var_gw, var_ga, jac = [], [], []
    for _ in range(2):
        env = run_float(graph, {"x": x}, keep_all=True)
        _, d = softmax_cross_entropy(env["y"], y)
        grads = backward(graph, env, {"y": d}, set(params) | {"c"})
        var_gw.append(np.var(grads["cw"], dtype=np.float64))
        var_ga.append(np.var(grads["c"], dtype=np.float64))
        jac.append(square_jacobian(graph.node("conv"), env["x"], env["c"].shape))
        for n in params:
            graph.values[n].const = graph.values[n].const - np.float32(lr) * grads[n]
    conv = result.layers[0]
    assert conv.sigma_gw[0] == pytest.approx(np.sqrt(var_gw[0]), rel=1e-5)
    assert conv.sigma_gw[1] == pytest.approx(np.sqrt(0.9 * var_gw[0] + 0.1 * var_gw[1]), rel=1e-5)
    assert conv.sigma_ga[1] == pytest.approx(np.sqrt(0.9 * var_ga[0] + 0.1 * var_ga[1]), rel=1e-5)
    dense = np.linalg.svd(0.9 * jac[0] + 0.1 * jac[1], compute_uv=False)[0]
    assert conv.lambda_running[1] == pytest.approx(dense, rel=1e-6)


def test_learning_rate_schedules() -> None:
    cos = TrainConfig(epochs=4, lr=1.0, schedule="cosine", final_ratio=0.1)
    assert [learning_rate(cos, e) for e in range(4)] == pytest.approx(
        [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    assert learning_rate(cos, 0) == 1.0
    step = TrainConfig(lr=0.5, schedule="step", step_epochs=3, gamma=0.1)
    assert [learning_rate(step, e) for e in (0, 2, 3, 6)] == pytest.approx([0.5, 0.5, 0.05, 0.005])


def test_loss_skips_a_final_softmax(data: tuple) -> None:
    model = tiny_cnn()
    model.graph.node[-1].output[0] = "logits"
    model.graph.node.append(helper.make_node("Softmax", ["logits"], ["y"], axis=1))
    graph = import_model(model)
    assert logits_value(graph).name == "logits"
    x, y = data
    result = train(graph, x, y, quick(epochs=2))
    assert result.loss[-1] < result.loss[0]


# -- λ_max against the dense square-Jacobian (seeds/001 Lemma 4) ---------------------------------
def dense_square_jacobian(vjp_w: object, g_shape: tuple[int, ...]) -> np.ndarray:
    """J[w, a] = (d g_w / d g_a)², column by column: G_W is linear in G_A, so column a is the
    weight gradient for the one-hot G_A = e_a."""
    cols = []
    for a in range(int(np.prod(g_shape))):
        e = np.zeros(int(np.prod(g_shape)))
        e[a] = 1.0
        cols.append(vjp_w(e.reshape(g_shape)).ravel())
    return np.stack(cols, axis=1) ** 2


def test_conv_lambda_equals_dense_svd() -> None:
    rng = np.random.default_rng(0)
    n, c, m, groups = 2, 4, 4, 2
    attrs = {"group": groups, "strides": [2, 1], "pads": [1, 0, 0, 1], "dilations": [1, 2]}
    a = rng.uniform(0, 2, (n, c, 5, 6))
    w = rng.normal(size=(m, c // groups, 3, 2))
    node = Node("Conv", "conv", [Value("a"), Value("w", w.shape, w.dtype, w)], [Value("z")],
                attrs, 17)
    out = (n, m, 2, 5)  # (5 + 1 - 3) // 2 + 1, (6 + 1 - 3) // 1 + 1
    full = dense_square_jacobian(lambda g: conv_vjp(node, [a, w], [g], [g])[1], out)
    # rows (m, c, k), columns (n, m, p): mean of the diagonal blocks over filters and samples
    blocks = full.reshape(m, -1, n, m, 10)
    aggregate = np.mean([blocks[j, :, i, j, :] for j in range(m) for i in range(n)], axis=0)
    # off-diagonal blocks (filter j, output channel j' != j) are zero, as Lemma 4 implies
    assert not full.reshape(m, -1, n, m, 10)[0, :, :, 1:].any()
    # the nonzero entries are squared input activations
    assert np.isin(np.round(full[full > 0], 12), np.round(a.ravel() ** 2, 12)).all()
    ours = square_jacobian(node, a, out)
    np.testing.assert_allclose(ours, aggregate, rtol=1e-12)
    dense = np.linalg.svd(aggregate, compute_uv=False)[0]
    assert largest_singular_value(ours) == pytest.approx(dense, rel=1e-9)


@pytest.mark.parametrize("trans_a,alpha", [(0, 1.0), (1, 0.5)])
def test_gemm_lambda_equals_dense_svd(trans_a: int, alpha: float) -> None:
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 2, (6, 3) if trans_a else (3, 6))  # 3 samples, 6 features
    w = rng.normal(size=(4, 6))
    node = Node("Gemm", "fc", [Value("a"), Value("w", w.shape, w.dtype, w)], [Value("z")],
                {"transA": trans_a, "transB": 1, "alpha": alpha}, 17)
    full = dense_square_jacobian(lambda g: gemm_vjp(node, [a, w], [g], [g])[1], (3, 4))
    blocks = full.reshape(4, 6, 3, 4)  # rows (filter j, feature), columns (sample, output j')
    aggregate = np.mean([blocks[j, :, i, j] for j in range(4) for i in range(3)], axis=0)[:, None]
    ours = square_jacobian(node, a, (3, 4))
    np.testing.assert_allclose(ours, aggregate, rtol=1e-12)
    assert largest_singular_value(ours) == pytest.approx(
        np.linalg.svd(aggregate, compute_uv=False)[0], rel=1e-9)


def test_matmul_lambda_equals_dense_svd() -> None:
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 2, (2, 3, 5))  # 2 samples, 3 positions, 5 features
    w = rng.normal(size=(5, 4))
    node = Node("MatMul", "mm", [Value("a"), Value("w", w.shape, w.dtype, w)], [Value("z")],
                {}, 17)
    full = dense_square_jacobian(lambda g: matmul_vjp(node, [a, w], [g], [g])[1], (2, 3, 4))
    blocks = full.reshape(5, 4, 2, 3, 4)  # rows (feature, filter j), cols (sample, pos, j')
    aggregate = np.mean([blocks[:, j, i, :, j] for j in range(4) for i in range(2)], axis=0)
    ours = square_jacobian(node, a, (2, 3, 4))
    np.testing.assert_allclose(ours, aggregate, rtol=1e-12)
    assert largest_singular_value(ours) == pytest.approx(
        np.linalg.svd(aggregate, compute_uv=False)[0], rel=1e-9)


def test_power_iteration_on_random_nonnegative_matrices() -> None:
    rng = np.random.default_rng(3)
    for shape in [(1, 1), (7, 1), (1, 9), (30, 40), (200, 16)]:
        m = rng.uniform(0, 1, shape) ** 3
        assert largest_singular_value(m) == pytest.approx(
            np.linalg.svd(m, compute_uv=False)[0], rel=1e-8)
    assert largest_singular_value(np.zeros((3, 4))) == 0.0


def test_a_graph_without_weights_trains_nothing_but_runs(data: tuple) -> None:
    x, y = data
    g = Graph("g")
    g.inputs.append(g.add_value(Value("x", (-1, 1, 8, 8))))
    flat = Value("y", (-1, 64))
    g.add_node("Flatten", [g.inputs[0]], [flat])
    g.outputs.append(flat)
    result = train(g, x, y[:256] % 10, quick(epochs=1))
    assert result.layers == [] and len(result.loss) == 1


# -- the digits example ------------------------------------------------------------------------
def digits_error(model_path: Path, data_path: Path) -> float:
    data = np.load(data_path)
    scores = ort.InferenceSession(str(model_path)).run(None, {"input": data["x"]})[0]
    return float(np.mean(scores.argmax(axis=1) != data["y"]))


def test_shipped_digits_model_is_accurate() -> None:
    assert digits_error(DIGITS / "digits.onnx", DIGITS / "test.npz") < 0.03
    for name, size in [("train", 1000), ("calib", 397), ("test", 400)]:
        d = np.load(DIGITS / f"{name}.npz")
        assert d["x"].shape == (size, 1, 8, 8) and d["x"].dtype == np.float32
        assert d["y"].shape == (size,) and d["y"].dtype == np.int64
        assert 0 <= d["x"].min() and d["x"].max() <= 1


@pytest.mark.slow
def test_make_digits_is_reproducible(tmp_path: Path) -> None:
    """Two runs of the script give the same bytes; the data splits are the shipped ones."""
    for out in ("a", "b"):
        run = subprocess.run([sys.executable, str(DIGITS / "make_digits.py"), "--out",
                              str(tmp_path / out), "--quiet"], capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, run.stderr
        seconds = float(run.stdout.split(" in ")[1].split(" s,")[0])
        assert seconds < 60
    for name in ("digits.onnx", "train.npz", "calib.npz", "test.npz"):
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert a == b and len(a) < 2_000_000, name
        if name.endswith(".npz"):
            assert a == (DIGITS / name).read_bytes(), name
    assert digits_error(tmp_path / "a" / "digits.onnx", tmp_path / "a" / "test.npz") < 0.03
