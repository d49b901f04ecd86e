"""Integer LogSoftmax end to end (qcc.QLogSoftmax): small models compiled with `qcc compile
--target c` for the fixed and affine schemes. References: onnxruntime's LogSoftmax (float64) on
the very codes the integer node reads, which every output code must match within 1/2 + eps LSB
(qcc/core/numerics/log_softmax.py); onnxruntime on the float model for the class order; and the
C library of OUTDIR's integer graph, built for the host (also under ASan/UBSan) and for the
Cortex-M4 (run under QEMU), which must equal the NumPy interpreter (and so `qcc run`) bit for
bit.

The models: a classifier head (Gemm -> LogSoftmax, 16-bit log-probabilities), LogSoftmax along
an inner axis (rows strided in memory), and an opset-11 LogSoftmax (2-D coercion) read by a
layer, so its output has 8 bits (the range capped at 16)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from backends.c.build import SANITIZE, build_host, build_mcu, missing_tools, run_host, run_qemu
from backends.c.library import emit_library
from backends.numpy_int import run_integer
from qcc.core.ir import Node
from qcc.core.numerics.log_softmax import error_bound_lsb
from qcc.core.numerics.softmax import softmax_layout
from qcc.core.quant_spec import QuantSpec
from qcc.driver.c_check import interpreter_outputs
from qcc.driver.outdir import load_outdir
from tests.conftest import run_qcc

SAMPLES = 64
SLOW = {("head", "fixed"), ("inner", "affine"), ("inner8", "fixed")}


def _model(nodes: list, inits: dict[str, np.ndarray], out_shape: list, opset: int = 13
           ) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "log_softmax_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *out_shape])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def models() -> dict[str, onnx.ModelProto]:
    rng = np.random.default_rng(12)

    def weights(k: int, m: int) -> np.ndarray:
        return rng.standard_normal((k, m)).astype(np.float32)

    head = _model([helper.make_node("Gemm", ["x", "W", "B"], ["z"], name="fc"),
                   helper.make_node("LogSoftmax", ["z"], ["y"], name="head", axis=-1)],
                  {"W": weights(16, 10), "B": rng.standard_normal(10).astype(np.float32)},
                  [10])
    inner = _model([helper.make_node("Gemm", ["x", "W"], ["z"], name="fc"),
                    helper.make_node("Reshape", ["z", "shape"], ["r"], name="to_3d"),
                    helper.make_node("LogSoftmax", ["r"], ["y"], name="over_4", axis=1)],
                   {"W": weights(16, 24), "shape": np.array([-1, 4, 6], np.int64)}, [4, 6])
    inner8 = _model([helper.make_node("Gemm", ["x", "W1"], ["z"], name="fc1"),
                     helper.make_node("LogSoftmax", ["z"], ["l"], name="mid", axis=1),
                     helper.make_node("Gemm", ["l", "W2"], ["y"], name="fc2")],
                    {"W1": weights(16, 12) * 0.5, "W2": weights(12, 5) * 0.2}, [5], opset=11)
    return {"head": head, "inner": inner, "inner8": inner8}


# each model under one scheme in the quick suite, the other with the full suite (`-m slow`)
CASES = [pytest.param((m, s), marks=[pytest.mark.slow] if (m, s) in SLOW else [])
         for m in ("head", "inner", "inner8") for s in ("fixed", "affine")]


@pytest.fixture(scope="module", params=CASES, ids=lambda p: f"{p[0]}-{p[1]}")
def compiled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    name, scheme = request.param
    tmp = tmp_path_factory.mktemp(f"{name}_{scheme}")
    model = models()[name]
    onnx.save(model, tmp / f"{name}.onnx")
    rng = np.random.default_rng(3)
    np.savez(tmp / "calib.npz", x=rng.standard_normal((64, 16)).astype(np.float32))
    xs = rng.standard_normal((SAMPLES, 16)).astype(np.float32)
    np.save(tmp / "x.npy", xs)
    out = tmp / "out"
    result = run_qcc("compile", tmp / f"{name}.onnx", "--bits", "8", "--scheme", scheme,
                     "--calib", tmp / "calib.npz", "--target", "c", "-o", out)
    assert result.returncode == 0, result.stdout + result.stderr
    result = run_qcc("run", out, "--input", tmp / "x.npy", "--output", tmp / "y.npy")
    assert result.returncode == 0, result.stdout + result.stderr
    return name, model, out, xs, np.load(tmp / "y.npy")


def _step_zero_point(spec: QuantSpec) -> tuple[float, int]:
    if spec.format == "fixed":
        return spec.step, 0
    return spec.scale, spec.zero_point


def _float_log_softmax(x: np.ndarray, node: Node) -> np.ndarray:
    """onnxruntime's LogSoftmax of `node` (its axis and opset) in float64."""
    flatten = int(node.attrs.get("flatten", 0))
    opset = 11 if flatten else 13
    shape = ["N", *x.shape[1:]]
    graph = helper.make_graph(
        [helper.make_node("LogSoftmax", ["a"], ["b"], axis=int(node.attrs["axis"]))], "g",
        [helper.make_tensor_value_info("a", TensorProto.DOUBLE, shape)],
        [helper.make_tensor_value_info("b", TensorProto.DOUBLE, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"a": x})[0]


def test_every_code_within_the_bound_of_onnxruntime(compiled) -> None:
    name, model, out, xs, _ = compiled
    graph = load_outdir(out).integer
    nodes = [n for n in graph.nodes if n.op_type == "QLogSoftmax"]
    assert nodes and not any(n.op_type == "LogSoftmax" for n in graph.nodes)
    env, _ = run_integer(graph, {graph.inputs[0].name: xs}, check=False, keep_all=True)
    for node in nodes:
        x, y = node.inputs[0], node.outputs[0]
        in_step, in_zp = _step_zero_point(x.quant)
        out_step, out_zp = _step_zero_point(y.quant)
        reference = _float_log_softmax((env[x.name].astype(np.int64) - in_zp) * in_step, node)
        lo, hi = int(node.attrs["out_lo"]), int(node.attrs["out_hi"])
        exact = np.clip(reference / out_step + out_zp, lo, hi)
        n = softmax_layout(env[x.name].shape, int(node.attrs["axis"]),
                           bool(node.attrs.get("flatten", 0)))[1]
        excess = np.abs(env[y.name] - exact).max() - 0.5
        assert excess <= error_bound_lsb(n, out_step), (node.name, excess)
        assert (y.quant.bits == 8) == (name == "inner8")


def test_classes_in_the_order_of_onnxruntime(compiled) -> None:
    name, model, out, xs, ys = compiled
    if name == "inner8":
        return  # its output is a layer's, not log-probabilities
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": xs})[0]
    axis = 1
    agree = (ys.argmax(axis) == expected.argmax(axis)).mean()
    assert agree >= 0.9, agree
    assert np.all(ys <= 0)  # log-probabilities


def test_host_c_equals_the_interpreter_bit_for_bit(compiled, tmp_path: Path) -> None:
    """The library emitted from OUTDIR's integer graph (model.qcc.onnx, what `qcc run` executes)
    against the interpreter on that graph: codes and floats bit for bit, also under
    ASan/UBSan."""
    assert not missing_tools("gcc"), "gcc is required: the C backend is part of the test suite"
    name, model, out, xs, ys = compiled
    graph = load_outdir(out).integer
    emit_library(graph, tmp_path, name, measure=False)
    codes, floats = interpreter_outputs(graph, xs)
    for exe, flags in (("host", ()), ("host_sanitized", SANITIZE)):
        got_codes, got_floats = run_host(build_host(tmp_path, name, tmp_path / exe, extra=flags),
                                         xs, codes.dtype, codes.shape[1], tmp_path)
        np.testing.assert_array_equal(got_codes, codes)
        np.testing.assert_array_equal(got_floats.view(np.uint32), floats.view(np.uint32))
    np.testing.assert_array_equal(floats, ys.reshape(len(xs), -1))  # `qcc run` printed these


def test_cortex_m4_equals_the_interpreter(compiled, tmp_path: Path) -> None:
    """The same library cross-built for Cortex-M4 (32-bit: the uint64_t sums, products and
    shifts become library calls and register pairs) and run under QEMU mps2-an386."""
    missing = missing_tools("arm-none-eabi-gcc", "qemu-system-arm")
    assert not missing, f"{missing} required: the MCU check is part of the test suite"
    name, model, out, xs, ys = compiled
    graph = load_outdir(out).integer
    emit_library(graph, tmp_path, name, measure=False)
    codes, floats = interpreter_outputs(graph, xs[:8])
    got = run_qemu(build_mcu(tmp_path, name), xs[:8], tmp_path)
    np.testing.assert_array_equal(got.codes, codes)
    np.testing.assert_array_equal(got.float_bits, floats.view(np.uint32))


def test_training_takes_the_loss_on_the_codes_a_final_log_softmax_reads(tmp_path: Path) -> None:
    """With --train the graph keeps its QLogSoftmax (inference still returns log-probabilities)
    and the train step's loss, softmax cross-entropy, is taken on the logits codes it reads."""
    model = models()["head"]
    onnx.save(model, tmp_path / "head.onnx")
    np.savez(tmp_path / "calib.npz",
             x=np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32))
    out = tmp_path / "out"
    result = run_qcc("compile", tmp_path / "head.onnx", "--bits", "8", "--train", "--calib",
                     tmp_path / "calib.npz", "-o", out)
    assert result.returncode == 0, result.stderr
    integer = load_outdir(out).integer
    assert [n.op_type for n in integer.nodes][-2:] == ["QLogSoftmax", "Dequantize"]
    head = integer.nodes[-2]
    assert json.loads((out / "training.json").read_text())["logits"] == head.inputs[0].name
