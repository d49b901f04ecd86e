"""Every op the NumPy train step supports, trained by the emitted C train step bit for bit:
small models built with onnx.helper (each op between trained layers, so the gradient passes
through its backward), compiled with `qcc compile --bits 8 --train --target c`, 20 steps of the
host C harness (`make train` on `qcc train-data`'s file) against
backends/numpy_int/train_step.py on the same minibatches: every step's logits, then the weight
and bias codes, accumulators, master biases and PRNG position. Then the common on-device case:
fine-tuning the last Gemm of the MLPerf Tiny DS-CNN and MobileNet (Softmax cut off; the
depthwise layers before it frozen, run forward only), on the host and (DS-CNN) under QEMU."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from backends.numpy_int.interpreter import run_integer
from backends.numpy_int.train_step import train_step
from backends.numpy_int.training.loop import batch_order
from qcc.driver.outdir import load_outdir
from qcc.driver.train_outdir import load_training
from tests.backends.c.test_train import assert_same_state
from tests.conftest import run_qcc

MLPERF = Path(__file__).resolve().parents[3] / "examples" / "mlperf_tiny"
STEPS = 20
BATCH = 4
CLASSES = 4


# -- small models -------------------------------------------------------------------------------
class Net:
    """A model under construction: float weights from one seeded generator."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(3)

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = f"t{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{op_type}_{out}",
                                           **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, **attrs) -> str:
        w = self.const(f"w{len(self.inits)}", self.rng.standard_normal(
            (cout, cin // group, k, k)) * (2.0 / (cin // group * k * k)) ** 0.5)
        b = self.const(f"b{len(self.inits)}", self.rng.standard_normal(cout) * 0.1)
        return self.op("Conv", [x, w, b], kernel_shape=[k, k], group=group, **attrs)

    def gemm(self, x: str, k: int, m: int) -> str:
        w = self.const(f"w{len(self.inits)}", self.rng.standard_normal((m, k)) * (1.0 / k) ** 0.5)
        b = self.const(f"b{len(self.inits)}", self.rng.standard_normal(m) * 0.1)
        return self.op("Gemm", [x, w, b], transB=1)

    def head(self, x: str, features: int) -> str:
        return self.gemm(self.op("Flatten", [x], axis=1), features, CLASSES)

    def save(self, out: str, path: Path) -> Path:
        graph = helper.make_graph(
            self.nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                              list(self.shape))],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        onnx.save(model, path)
        return path


def conv_relu(n: Net, x: str, cin: int, cout: int, **attrs) -> str:
    return n.op("Relu", [n.conv(x, cin, cout, pads=[1, 1, 1, 1], **attrs)])


def build(case: str) -> tuple[Net, str]:
    """The model of one case: input (1, 4, 6, 6) -> ... -> Gemm to 4 classes."""
    n = Net((1, 4, 6, 6))
    a = conv_relu(n, "x", 4, 4)
    if case == "conv":
        out = n.head(conv_relu(n, a, 4, 6, strides=[2, 2]), 6 * 3 * 3)
    elif case == "depthwise":
        out = n.head(conv_relu(n, conv_relu(n, a, 4, 4, group=4), 4, 4), 4 * 36)
    elif case == "gemm":
        h = n.op("Relu", [n.gemm(n.op("Flatten", [a], axis=1), 144, 16)])
        out = n.gemm(h, 16, CLASSES)
    elif case == "matmul":
        w = n.const("wm", n.rng.standard_normal((144, 16)) / 12.0)
        h = n.op("Relu", [n.op("MatMul", [n.op("Flatten", [a], axis=1), w])])
        out = n.gemm(h, 16, CLASSES)
    elif case == "add":
        b = n.op("Add", [conv_relu(n, a, 4, 4), a])
        out = n.head(n.op("Relu", [b]), 4 * 36)
    elif case == "maxpool":
        p = n.op("MaxPool", [a], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
        out = n.head(p, 4 * 9)
    elif case == "averagepool":
        out = n.head(n.op("AveragePool", [a], kernel_shape=[2, 2], strides=[2, 2]), 4 * 9)
    elif case == "relu":  # after a pool, not fused into the conv
        p = n.op("MaxPool", [n.conv(a, 4, 4, pads=[1, 1, 1, 1])], kernel_shape=[2, 2],
                 strides=[2, 2])
        out = n.head(n.op("Relu", [p]), 4 * 9)
    elif case == "globalmaxpool":
        out = n.head(n.op("GlobalMaxPool", [conv_relu(n, a, 4, 8)]), 8)
    elif case == "globalaveragepool":
        out = n.head(n.op("GlobalAveragePool", [conv_relu(n, a, 4, 8)]), 8)
    elif case == "concat":
        c = n.op("Concat", [conv_relu(n, a, 4, 3), conv_relu(n, a, 4, 5)], axis=1)
        out = n.head(c, 8 * 36)
    elif case == "transpose":
        t = n.op("Transpose", [a], perm=[0, 2, 3, 1])
        out = n.head(n.op("Reshape", [t, n.const("shape", np.array([-1, 144]))]), 144)
    else:
        raise ValueError(case)
    return n, out


def fix_int64(path: Path, names: tuple[str, ...] = ("shape",)) -> None:
    """Shape-like constants (Reshape's shape, Slice's starts ...) must be int64 (Net.const
    stores float32)."""
    model = onnx.load(path)
    for i, t in enumerate(model.graph.initializer):
        if t.name in names:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(t).astype(np.int64), t.name))
    onnx.save(model, path)


# -- running both step implementations ----------------------------------------------------------
def compile_train(model: Path, out: Path, *extra: str) -> dict:
    run = run_qcc("compile", model, "--bits", "8", "--train", "--train-batch", BATCH,
                  "--target", "c", "-o", out, *extra)
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads((out / "summary.json").read_text())["training"]


def host_run(out: Path, data: Path, steps: int) -> list[str]:
    run = run_qcc("train-data", out, "--data", data, "--steps", steps)
    assert run.returncode == 0, run.stdout + run.stderr
    make = subprocess.run(["make", "-s", "train"], cwd=out, capture_output=True, text=True,
                          timeout=600)
    assert make.returncode == 0, make.stdout + make.stderr
    return make.stdout.splitlines()


def parse(lines: list[str], steps: int) -> tuple[list[np.ndarray], np.ndarray]:
    logits = [np.array(ln.split()[1:], np.int64) for ln in lines if ln.startswith("logits:")]
    state = [np.array(ln.split()[1:], np.int64) for ln in lines if ln.startswith("state:")]
    assert len(logits) == steps and len(state) == 1, lines[-3:]
    return logits, state[0]


def assert_numpy_matches(out: Path, data: Path, lines: list[str], steps: int) -> None:
    """The NumPy train step on the same minibatches gives every logit and the final state."""
    logits, flat = parse(lines, steps)
    integer = load_outdir(out).integer
    training = load_training(out, integer)
    program, state = training.program, training.state
    arrays = np.load(data)
    x, y = arrays["x"], arrays["y"]
    for k, idx in enumerate(batch_order(len(x), steps, BATCH, 0)):
        env, _ = run_integer(integer, {integer.inputs[0].name: x[idx]}, check=False,
                             keep_all=True)
        assert np.array_equal(env[program.logits].ravel(), logits[k]), f"step {k}"
        train_step(program, integer, state, x[idx], y[idx])
    assert_same_state(program, integer, state, flat, steps)
    assert state.rng.counter > 0  # stochastic roundings happened (and matched)


def random_data(path: Path, shape: tuple[int, ...], classes: int, count: int = 40) -> Path:
    rng = np.random.default_rng(11)
    np.savez(path, x=rng.standard_normal((count, *shape[1:])).astype(np.float32),
             y=rng.integers(0, classes, count))
    return path


# the integer op whose backward each case exercises (it lies between two trained layers)
CASES = {"conv": "QConv", "depthwise": "QConv", "gemm": "QGemm", "matmul": "QGemm",
         "add": "QAdd", "relu": "Relu", "maxpool": "MaxPool", "averagepool": "AveragePool",
         "globalmaxpool": "GlobalMaxPool", "globalaveragepool": "GlobalAveragePool",
         "concat": "Concat", "transpose": "Transpose"}


@pytest.fixture(scope="module")
def toolchain() -> None:
    missing = [t for t in ("gcc", "make") if shutil.which(t) is None]
    assert not missing, f"{missing} required (DESIGN.md: the C backend is part of the suite)"


# the quick subset (-m "not slow") keeps two cases; the full suite runs every op
QUICK_CASES = ("conv", "add")


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c in QUICK_CASES else
                                               pytest.mark.slow) for c in CASES])
def test_op_trains_bit_exact_in_c(tmp_path: Path, toolchain: None, case: str) -> None:
    """The gradient passes through `case` on its way to the first (trained) conv."""
    net, logits = build(case)
    model = net.save(logits, tmp_path / f"{case}.onnx")
    fix_int64(model)
    out = tmp_path / "out"
    compile_train(model, out, "--update", "sr")
    data = random_data(tmp_path / "data.npz", net.shape, CLASSES)
    integer = load_outdir(out).integer
    program = load_training(out, integer).program
    first = program.layers[0]
    assert first.trainable and first.propagate is False and len(program.trained) >= 2
    between = [integer.node(n) for n in program.backward_nodes[:-1]]
    assert CASES[case] in {node.op_type for node in between}
    if case == "depthwise":
        assert any(int(node.attrs.get("group", 1)) == 4 for node in between)
    if case == "matmul":
        assert any(node.op_type == "QGemm" and not node.attrs.get("transB", 0)
                   for node in between)
    assert_numpy_matches(out, data, host_run(out, data, STEPS), STEPS)


@pytest.mark.slow
def test_one_dimensional_windows_train_bit_exact_in_c(tmp_path: Path, toolchain: None) -> None:
    """1-D convs and pools (audio, sensor series): the C step runs them as 2-D windows of unit
    height, bit for bit with NumPy's N-d backward."""
    n = Net((1, 4, 12))

    def conv1d(x: str, cin: int, cout: int, group: int = 1) -> str:
        w = n.const(f"w{len(n.inits)}", n.rng.standard_normal((cout, cin // group, 3)) * 0.4)
        b = n.const(f"b{len(n.inits)}", n.rng.standard_normal(cout) * 0.1)
        return n.op("Relu", [n.op("Conv", [x, w, b], kernel_shape=[3], pads=[1, 1],
                                  group=group)])

    a = n.op("MaxPool", [conv1d("x", 4, 4)], kernel_shape=[2], strides=[2])  # (4, 6)
    b = n.op("AveragePool", [conv1d(a, 4, 4, group=4)], kernel_shape=[2], strides=[2])
    c = n.op("GlobalMaxPool", [conv1d(b, 4, 6)])  # (6, 1)
    model = n.save(n.head(c, 6), tmp_path / "series.onnx")
    out = tmp_path / "out"
    compile_train(model, out, "--update", "sr")
    integer = load_outdir(out).integer
    program = load_training(out, integer).program
    between = {integer.node(name).op_type for name in program.backward_nodes}
    assert {"MaxPool", "AveragePool", "GlobalMaxPool", "QConv"} <= between
    data = random_data(tmp_path / "data.npz", n.shape, CLASSES)
    assert_numpy_matches(out, data, host_run(out, data, STEPS), STEPS)


# -- MLPerf Tiny: fine-tuning the last layer ----------------------------------------------------
def last_gemm(name: str) -> tuple[Path, str, tuple[int, ...], int]:
    """The reference model as MLCommons ships it (ending in Softmax, which stays an integer
    QSoftmax: the train step's loss takes the codes it reads) and its last Gemm."""
    path = MLPERF / f"{name}.onnx"
    model = onnx.load(path)
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"][-1]
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    classes = int(numpy_helper.to_array(
        next(t for t in model.graph.initializer if t.name == gemm.input[1])).shape[0])
    return path, gemm.name, shape, classes


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dscnn_kws", "mobilenet_vww"])
def test_last_layer_fine_tuning_of_mlperf_models(tmp_path: Path, toolchain: None,
                                                 name: str) -> None:
    """`--trainable <last Gemm>`: the depthwise layers run forward only (the inference
    kernels), the Gemm trains; 20 host C steps equal NumPy's; the summary reports the
    training RAM."""
    model, gemm, shape, classes = last_gemm(name)
    out = tmp_path / "out"
    training = compile_train(model, out, "--trainable", gemm)
    assert training["static_ram_bytes"] > 0 and training["ram_bytes"] > 0
    data = random_data(tmp_path / "data.npz", shape, classes, count=24)
    program = load_training(out, load_outdir(out).integer).program
    assert [layer.name for layer in program.trained] == [gemm]
    assert_numpy_matches(out, data, host_run(out, data, STEPS), STEPS)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dscnn_kws", "mobilenet_vww"])
def test_last_layer_trains_under_qemu(tmp_path: Path, toolchain: None, name: str) -> None:
    """`make train-mcu`: the same 20 steps on the emulated Cortex-M4 as on the host."""
    missing = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm") if shutil.which(t) is None]
    assert not missing, f"{missing} required (DESIGN.md: the MCU target is tested)"
    model, gemm, shape, classes = last_gemm(name)
    out = tmp_path / "out"
    compile_train(model, out, "--trainable", gemm)
    data = random_data(tmp_path / "data.npz", shape, classes, count=24)
    host = host_run(out, data, STEPS)
    qemu = subprocess.run(["make", "-s", "train-mcu"], cwd=out, capture_output=True, text=True,
                          timeout=900)
    assert qemu.returncode == 0, qemu.stdout + qemu.stderr
    (mcu_logits, mcu_state), (host_logits, host_state) = (
        parse(qemu.stdout.splitlines(), STEPS), parse(host, STEPS))
    assert all(np.array_equal(a, b) for a, b in zip(mcu_logits, host_logits))
    assert np.array_equal(mcu_state, host_state)

