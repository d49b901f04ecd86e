"""Models quantized by onnxruntime (quantize_static: QDQ and QOperator, per channel and per tensor,
uint8 and int8 activations) through the C backend: the host-built C library, the NumPy
integer interpreter and onnxruntime give the same output floats (and codes) bit for bit on 100
inputs, including inputs that saturate the input quantizer.

Models: a small MobileNet-style network made here (strided conv, depthwise + pointwise blocks,
a residual Add, MaxPool, global average pool, Gemm, Softmax), a QDQ chain of code-moving ops
with three different formats (qcc.QLinearRequantize's tables), and the MLPerf Tiny ResNet-8
and MobileNetV1-0.25 (examples/mlperf_tiny, trained weights, Softmax included; MobileNet marked
slow).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from backends.c.build import SANITIZE, build_host, build_mcu, missing_tools, run_host, run_qemu
from backends.c.library import SUMMARY, emit_library
from backends.numpy_int import run_integer
from qcc.core.ir import Graph
from qcc.driver.pipeline import compile_model
from tests.backends.numpy_int.test_ort_quantized import _qdq_chain_model
from tests.conftest import run_qcc

ROOT = Path(__file__).resolve().parents[3]
MLPERF = ROOT / "examples" / "mlperf_tiny"
SAMPLES = 100
U8, S8 = QuantType.QUInt8, QuantType.QInt8
INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "QLinearGemm", "QLinearAdd",
               "QLinearGlobalAveragePool"}


class Batches(CalibrationDataReader):
    def __init__(self, name: str, x: np.ndarray) -> None:
        self.items = iter([{name: x[i:i + 1]} for i in range(len(x))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def quantize(float_path: Path, calib: np.ndarray, fmt: str, per_channel: bool,
             activation: QuantType = U8) -> Path:
    out = float_path.with_name(f"{float_path.stem}_{fmt}_{activation.name}_{int(per_channel)}.onnx")
    if not out.exists():
        name = onnx.load(str(float_path)).graph.input[0].name
        quantize_static(str(float_path), str(out), Batches(name, calib),
                        quant_format=getattr(QuantFormat, fmt), per_channel=per_channel,
                        activation_type=activation, weight_type=QuantType.QInt8)
    return out


def probe_inputs(shape: tuple[int, ...], scale: float, seed: int) -> np.ndarray:
    """SAMPLES inputs: four at the extremes (huge negative and positive values that saturate
    the input codes, zeros, alternating extremes), the rest N(0, scale)."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    edges = [np.full(size, -1e30), np.full(size, 1e30), np.zeros(size),
             np.where(np.arange(size) % 2, 1e30, -1e30)]
    normal = rng.normal(0.0, scale, (SAMPLES - len(edges), size))
    return np.concatenate([np.stack(edges), normal]).astype(np.float32).reshape(
        (SAMPLES, *shape))


def onnxruntime_outputs(path: Path, xs: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[None]})[0] for x in xs]).reshape(
        len(xs), -1)


def interpreter_outputs(graph: Graph, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(output codes, output floats) per sample: the DequantizeLinear's input and output."""
    codes_name = graph.outputs[0].producer.inputs[0].name
    env, _ = run_integer(graph, {graph.inputs[0].name: xs}, check=False, keep_all=True)
    out = env[graph.outputs[0].name]
    return env[codes_name].reshape(len(xs), -1), out.reshape(len(xs), -1)


def assert_c_interpreter_onnxruntime_agree(qpath: Path, xs: np.ndarray, tmp: Path) -> Graph:
    """Compile the quantized model (as `qcc compile` does), emit and build the C library; C,
    interpreter and onnxruntime must give the same bits."""
    assert not missing_tools("gcc"), "gcc is required: the C backend is part of the test suite"
    graph = compile_model(qpath, 8, "affine").integer
    assert INTEGER_OPS & {n.op_type for n in graph.nodes}
    emit_library(graph, tmp, "ortq", measure=False)
    exe = build_host(tmp, "ortq", tmp / "ortq_host")
    codes, floats = interpreter_outputs(graph, xs)
    got_codes, got_floats = run_host(exe, xs, codes.dtype, codes.shape[1], tmp)
    theirs = onnxruntime_outputs(qpath, xs)
    np.testing.assert_array_equal(got_codes, codes)
    np.testing.assert_array_equal(got_floats.view(np.uint32), floats.view(np.uint32))
    np.testing.assert_array_equal(floats.view(np.uint32), theirs.view(np.uint32))
    assert len(np.unique(codes)) > 4, "a degenerate model proves little"
    return graph


# -- a small MobileNet-style model ------------------------------------------------------------
def _conv(name: str, x: str, cin: int, cout: int, k: int, stride: int, group: int,
          rng: np.random.Generator, inits: list) -> list[onnx.NodeProto]:
    w = rng.normal(0, (2.0 / (k * k * cin / group)) ** 0.5, (cout, cin // group, k, k))
    b = rng.normal(0, 0.1, cout)
    inits += [numpy_helper.from_array(w.astype(np.float32), f"{name}_w"),
              numpy_helper.from_array(b.astype(np.float32), f"{name}_b")]
    pad = k // 2
    return [helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_c"],
                             kernel_shape=[k, k], strides=[stride, stride], group=group,
                             pads=[pad] * 4, name=name),
            helper.make_node("Relu", [f"{name}_c"], [name], name=f"{name}_relu")]


def mobilenet_style() -> onnx.ModelProto:
    """3x24x24 -> conv 3x3/2 (8) -> [dw 3x3, pw 1x1 (16)] -> [dw 3x3/2, pw (16)] + residual of
    a second block -> MaxPool 2x2 -> GlobalAveragePool -> Gemm (10) -> Softmax."""
    rng = np.random.default_rng(7)
    inits: list = []
    nodes = _conv("stem", "input", 3, 8, 3, 2, 1, rng, inits)
    nodes += _conv("dw1", "stem", 8, 8, 3, 1, 8, rng, inits)
    nodes += _conv("pw1", "dw1", 8, 16, 1, 1, 1, rng, inits)
    nodes += _conv("dw2", "pw1", 16, 16, 3, 2, 16, rng, inits)
    nodes += _conv("pw2", "dw2", 16, 16, 1, 1, 1, rng, inits)
    nodes += _conv("dw3", "pw2", 16, 16, 3, 1, 16, rng, inits)
    nodes += _conv("pw3", "dw3", 16, 16, 1, 1, 1, rng, inits)
    nodes += [helper.make_node("Add", ["pw2", "pw3"], ["res"], name="res"),
              helper.make_node("MaxPool", ["res"], ["pool"], kernel_shape=[2, 2],
                               strides=[2, 2], name="pool"),
              helper.make_node("GlobalAveragePool", ["pool"], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1,
                               name="fc"),
              helper.make_node("Softmax", ["logits"], ["probs"], name="softmax")]
    inits += [numpy_helper.from_array(rng.normal(0, 0.3, (10, 16)).astype(np.float32), "fc_w"),
              numpy_helper.from_array(rng.normal(0, 0.1, 10).astype(np.float32), "fc_b")]
    graph = helper.make_graph(
        nodes, "mobilenet_style",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 24, 24])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("ort_c") / "mobilenet_style.onnx"
    onnx.save(mobilenet_style(), path)
    calib = np.random.default_rng(0).normal(0, 1, (16, 3, 24, 24)).astype(np.float32)
    return path, calib


SMALL_CONFIGS = [("QDQ", True, U8), ("QDQ", False, S8), ("QDQ", True, S8),
                 ("QOperator", False, U8), ("QOperator", True, S8)]


@pytest.mark.parametrize("fmt,per_channel,activation", SMALL_CONFIGS,
                         ids=lambda v: v.name if isinstance(v, QuantType) else str(v))
def test_mobilenet_style_c_equals_interpreter_and_onnxruntime(
        small_model: tuple[Path, np.ndarray], tmp_path: Path, fmt: str, per_channel: bool,
        activation: QuantType) -> None:
    path, calib = small_model
    qpath = quantize(path, calib, fmt, per_channel, activation)
    graph = assert_c_interpreter_onnxruntime_agree(
        qpath, probe_inputs((3, 24, 24), 1.0, seed=1), tmp_path)
    ops = {n.op_type for n in graph.nodes}
    assert {"QLinearConv", "QLinearAdd", "QLinearGlobalAveragePool", "MaxPool",
            "QLinearSoftmax"} <= ops
    assert {"QLinearGemm", "QLinearMatMul"} & ops


def test_mobilenet_style_on_the_cortex_m4(small_model: tuple[Path, np.ndarray],
                                         tmp_path: Path) -> None:
    """The Cortex-M4 build (FPv4: float32 in hardware, fmaf as one VFMA) under QEMU gives
    onnxruntime's bits too: the host runs qcc_fmaf's exact double path, the MCU the hardware's."""
    missing = missing_tools("arm-none-eabi-gcc", "qemu-system-arm")
    if missing:
        message = f"{', '.join(missing)} not installed (apt: gcc-arm-none-eabi, " \
                  "libnewlib-arm-none-eabi, qemu-system-arm)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    qpath = quantize(*small_model, "QDQ", True)
    graph = compile_model(qpath, 8, "affine").integer
    emit_library(graph, tmp_path, "ortq", measure=False)
    xs = probe_inputs((3, 24, 24), 1.0, seed=3)[2:8]
    codes, floats = interpreter_outputs(graph, xs)
    got = run_qemu(build_mcu(tmp_path, "ortq"), xs, tmp_path)
    np.testing.assert_array_equal(got.codes, codes)
    np.testing.assert_array_equal(got.float_bits, onnxruntime_outputs(qpath, xs).view(np.uint32))


def test_mobilenet_style_under_sanitizers(small_model: tuple[Path, np.ndarray],
                                          tmp_path: Path) -> None:
    """ASan / UBSan build (any report aborts the harness): the float requantization and the
    FMA emulation stay defined for every input, extremes included."""
    qpath = quantize(*small_model, "QDQ", True)
    graph = compile_model(qpath, 8, "affine").integer
    emit_library(graph, tmp_path, "ortq", measure=False)
    exe = build_host(tmp_path, "ortq", tmp_path / "ortq_asan", opt="-O1", extra=SANITIZE)
    xs = probe_inputs((3, 24, 24), 1.0, seed=4)[:30]
    codes, floats = interpreter_outputs(graph, xs)
    got_codes, got_floats = run_host(exe, xs, codes.dtype, codes.shape[1], tmp_path)
    np.testing.assert_array_equal(got_codes, codes)
    np.testing.assert_array_equal(got_floats.view(np.uint32), floats.view(np.uint32))


def _qdq_chain() -> onnx.ModelProto:
    """The interpreter test's chain (x -> Q -> DQ -> MaxPool -> Q' -> DQ' -> Reshape -> Relu ->
    Q'' -> DQ'' -> y) with three formats, uint8 then int8: MaxPool and Reshape run on codes,
    each format change is a qcc.QLinearRequantize (a table in C)."""
    return _qdq_chain_model(z1=np.int8(-7), z2=np.int8(-100))


def test_code_moving_chain_with_format_changes(tmp_path: Path) -> None:
    path = tmp_path / "chain.onnx"
    onnx.save(_qdq_chain(), path)
    graph = compile_model(path, 8, "affine").integer
    assert [n.op_type for n in graph.nodes].count("QLinearRequantize") == 2
    xs = probe_inputs((4, 8, 8), 3.0, seed=5)
    emit_library(graph, tmp_path, "chain", measure=False)
    exe = build_host(tmp_path, "chain", tmp_path / "chain_host")
    codes, floats = interpreter_outputs(graph, xs)
    got_codes, got_floats = run_host(exe, xs, codes.dtype, codes.shape[1], tmp_path)
    np.testing.assert_array_equal(got_codes, codes)
    np.testing.assert_array_equal(got_floats.view(np.uint32),
                                  onnxruntime_outputs(path, xs).view(np.uint32))


def test_qcc_compile_target_c_takes_an_onnxruntime_model(
        small_model: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """`qcc compile QUANTIZED.onnx --target c` as a user runs it: the library builds with the
    strict flags and its host harness reproduces onnxruntime."""
    path, calib = small_model
    qpath = quantize(path, calib, "QDQ", True)
    out = tmp_path / "lib"
    result = run_qcc("compile", qpath, "--target", "c", "-o", out)
    assert result.returncode == 0, result.stderr
    name = json.loads((out / SUMMARY).read_text())["name"]
    exe = build_host(out, name, tmp_path / "host")
    xs = probe_inputs((3, 24, 24), 1.0, seed=2)[:20]
    out_size = 10
    _, floats = run_host(exe, xs, np.dtype(np.uint8), out_size, tmp_path)
    np.testing.assert_array_equal(floats.view(np.uint32),
                                  onnxruntime_outputs(qpath, xs).view(np.uint32))


def test_float_node_unit_is_refused_in_one_line(small_model: tuple[Path, np.ndarray],
                                                tmp_path: Path) -> None:
    """A QDQ unit qcc leaves in float (here a Sigmoid) cannot go to C: one clear error."""
    model = mobilenet_style()
    model.graph.node.append(helper.make_node("Sigmoid", ["probs"], ["sig"], name="sig"))
    model.graph.output[0].name = "sig"
    path = tmp_path / "with_sigmoid.onnx"
    onnx.save(model, path)
    qpath = quantize(path, small_model[1], "QDQ", True)
    out = tmp_path / "lib"
    result = run_qcc("compile", qpath, "--target", "c", "-o", out)
    assert result.returncode != 0 and not out.exists()
    assert result.stderr.strip().splitlines()[-1].startswith("qcc: error: ")
    assert "computes in float" in result.stderr and "Traceback" not in result.stderr


# -- the MLPerf Tiny models ----------------------------------------------------------------------
@pytest.mark.parametrize("name,fmt,per_channel", [
    ("resnet8_ic", "QDQ", True),
    pytest.param("resnet8_ic", "QOperator", False, marks=pytest.mark.slow),
    pytest.param("mobilenet_vww", "QDQ", True, marks=pytest.mark.slow),
    pytest.param("mobilenet_vww", "QOperator", True, marks=pytest.mark.slow)])
def test_mlperf_tiny(name: str, fmt: str, per_channel: bool, tmp_path: Path) -> None:
    """The reference models as published, Softmax included: ORT fuses their whole-map
    AveragePool into QLinearAveragePool (computed as the global pool) and the Softmax into
    QLinearSoftmax; qcc runs both as ORT does, in the interpreter and in C."""
    import importlib.util  # the example's data script, loaded as the examples load it

    spec = importlib.util.spec_from_file_location("make_data", MLPERF / "make_data.py")
    make_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_data)
    path = tmp_path / f"{name}.onnx"
    path.write_bytes((MLPERF / f"{name}.onnx").read_bytes())
    qpath = quantize(path, make_data.model_inputs(name, 16, 1), fmt, per_channel)
    xs = make_data.model_inputs(name, SAMPLES, 2)
    xs[:2] = [np.full(xs.shape[1:], -1e30), np.full(xs.shape[1:], 1e30)]
    graph = assert_c_interpreter_onnxruntime_agree(qpath, xs.astype(np.float32), tmp_path)
    ops = {n.op_type for n in graph.nodes}
    assert {"QLinearGlobalAveragePool", "QLinearSoftmax"} <= ops
    assert not ops & {"Conv", "Gemm", "Add", "AveragePool", "Softmax"}


def _qdq_head(dtype: type, x_params: tuple[float, int], y_params: tuple[float, int],
              pool: bool, axis: int) -> onnx.ModelProto:
    """x (1, 6, 3, 5) -> Q -> DQ -> [AveragePool over the whole 3x5 map -> Q -> DQ] -> Softmax
    along `axis` -> Q -> DQ: onnxruntime's QLinearAveragePool and QLinearSoftmax."""
    elem = TensorProto.UINT8 if dtype == np.uint8 else TensorProto.INT8
    mid = (0.7 * x_params[0], x_params[1] // 2)
    params = {"xs": np.float32(x_params[0]), "xz": dtype(x_params[1]),
              "ms": np.float32(mid[0]), "mz": dtype(mid[1]),
              "ys": np.float32(y_params[0]), "yz": dtype(y_params[1])}
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"])]
    head, shape = "xd", [1, 6, 3, 5]
    if pool:
        nodes += [helper.make_node("AveragePool", ["xd"], ["p"], kernel_shape=[3, 5]),
                  helper.make_node("QuantizeLinear", ["p", "ms", "mz"], ["pq"]),
                  helper.make_node("DequantizeLinear", ["pq", "ms", "mz"], ["pd"])]
        head, shape = "pd", [1, 6, 1, 1]
    nodes += [helper.make_node("Softmax", [head], ["s"], axis=axis),
              helper.make_node("QuantizeLinear", ["s", "ys", "yz"], ["sq"]),
              helper.make_node("DequantizeLinear", ["sq", "ys", "yz"], ["y"])]
    del elem
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in params.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("dtype,x_params,y_params,pool,axis", [
    (np.uint8, (0.05, 128), (1 / 256, 0), False, -1),
    (np.uint8, (0.21, 90), (1 / 255, 0), True, 1),
    (np.uint8, (0.013, 200), (0.0052, 3), True, 1),
], ids=["softmax", "pool-softmax", "pool-softmax-2"])
def test_softmax_and_whole_map_average_pool_as_onnxruntime(
        tmp_path: Path, dtype: type, x_params: tuple, y_params: tuple, pool: bool,
        axis: int) -> None:
    """QLinearSoftmax (a table of exponentials, a float32 sum, one division per element) and
    QLinearAveragePool over the whole map (ORT's global-pool fallback): interpreter and C give
    onnxruntime's bits (rows of equal codes included; see the next test for exact ties)."""
    path = tmp_path / "head.onnx"
    onnx.save(_qdq_head(dtype, x_params, y_params, pool, axis), path)
    graph = compile_model(path, 8, "affine").integer
    ops = {n.op_type for n in graph.nodes}
    assert "QLinearSoftmax" in ops and ("QLinearGlobalAveragePool" in ops) == pool
    xs = probe_inputs((6, 3, 5), 2.5, seed=9)
    xs[4:20] *= 8  # rows with one dominant entry: outputs at the ends of the code range
    theirs = onnxruntime_outputs(path, xs)
    emit_library(graph, tmp_path, "head", measure=False)
    exe = build_host(tmp_path, "head", tmp_path / "head_host")
    codes, floats = interpreter_outputs(graph, xs)
    got_codes, got_floats = run_host(exe, xs, codes.dtype, codes.shape[1], tmp_path)
    np.testing.assert_array_equal(floats.view(np.uint32), theirs.view(np.uint32))
    np.testing.assert_array_equal(got_codes, codes)
    np.testing.assert_array_equal(got_floats.view(np.uint32), floats.view(np.uint32))
    assert len(np.unique(codes)) > 10


def test_softmax_rounding_ties_within_one_code(tmp_path: Path) -> None:
    """Known difference: rows of 6 equal codes with ⌊1/y_scale⌋ = 243 give the exact tie
    243/6 = 40.5 in the published QLinearSoftmax arithmetic (qcc rounds it to even, 40), but
    onnxruntime 1.32 returns 41 (its table or sum is not the published one at the last bit;
    measured: ties agree in about 70 % of such constructed cases, non-ties always). C and
    interpreter agree exactly; onnxruntime within one code, only on those rows."""
    path = tmp_path / "ties.onnx"
    onnx.save(_qdq_head(np.uint8, (0.013, 200), (0.0041, 3), True, 1), path)
    graph = compile_model(path, 8, "affine").integer
    xs = probe_inputs((6, 3, 5), 2.5, seed=9)
    emit_library(graph, tmp_path, "ties", measure=False)
    exe = build_host(tmp_path, "ties", tmp_path / "ties_host")
    codes, floats = interpreter_outputs(graph, xs)
    got_codes, _ = run_host(exe, xs, codes.dtype, codes.shape[1], tmp_path)
    np.testing.assert_array_equal(got_codes, codes)
    theirs = np.rint(onnxruntime_outputs(path, xs) / np.float32(0.0041)).astype(np.int64) + 3
    differ = np.flatnonzero((theirs != codes.astype(np.int64)).any(axis=1))
    equal_rows = np.flatnonzero((codes == codes[:, :1]).all(axis=1))
    assert set(differ) <= set(equal_rows) and len(differ) < len(xs)
    assert np.abs(theirs - codes.astype(np.int64)).max() <= 1
