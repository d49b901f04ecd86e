"""The four MLPerf Tiny reference models (examples/mlperf_tiny, trained by MLCommons) and the
three NHWC variants, Softmax included, through the C backend: compiled at 8 bits (fixed and
affine), the host C equals the NumPy integer interpreter bit for bit on 100 inputs (8 at the
extremes of the input format), also under ASan/UBSan, within the flash and arena budgets.

Calibration inputs come from examples/mlperf_tiny/make_data.py (natural-image crops, MFCC- and
log-mel-like features)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from backends.c.build import SANITIZE, build_host, build_mcu, missing_tools, run_host, run_qemu
from backends.c.library import FLASH_BUDGET, emit_library
from qcc.driver.c_check import EXTREMES, interpreter_outputs, sample_inputs
from qcc.driver.pipeline import compile_model

ROOT = Path(__file__).resolve().parents[3]
MLPERF = ROOT / "examples" / "mlperf_tiny"
MODELS = ["resnet8_ic", "dscnn_kws", "mobilenet_vww", "autoencoder_ad", "resnet8_ic_nhwc",
          "dscnn_kws_nhwc", "mobilenet_vww_nhwc"]
SAMPLES = 100
CALIBRATION = 32


def make_data():
    spec = importlib.util.spec_from_file_location("make_data", MLPERF / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=[(m, s) for m in MODELS for s in ("fixed", "affine")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    assert not missing_tools("gcc"), "gcc is required: the C backend is part of the test suite"
    name, scheme = request.param
    tmp = tmp_path_factory.mktemp(f"{name}_{scheme}")
    base = name.removesuffix("_nhwc")
    x = make_data().model_inputs(base, CALIBRATION, 1, nhwc=name.endswith("_nhwc"))
    np.savez(tmp / "calib.npz", x=x)
    graph = compile_model(MLPERF / f"{name}.onnx", 8, scheme, calib=tmp / "calib.npz").integer
    summary = emit_library(graph, tmp, name, measure=not missing_tools("arm-none-eabi-gcc"))
    xs = sample_inputs(graph, SAMPLES, seed=3)
    codes, floats = interpreter_outputs(graph, xs, chunk=1)
    return name, graph, tmp, summary, xs, codes, floats


def assert_same(exe: Path, built) -> None:
    name, graph, outdir, summary, xs, codes, floats = built
    got_codes, got_floats = run_host(exe, xs, codes.dtype, codes.shape[1], outdir)
    np.testing.assert_array_equal(got_codes, codes)
    np.testing.assert_array_equal(got_floats.view(np.uint32), floats.view(np.uint32))


@pytest.mark.slow
def test_host_and_sanitized_builds_are_bit_exact(built) -> None:
    name, graph, outdir, summary, xs, codes, floats = built
    assert_same(build_host(outdir, name, outdir / "host_strict", opt="-O2"), built)
    assert_same(build_host(outdir, name, outdir / "host_sanitized", opt="-O1", extra=SANITIZE),
                built)
    assert len(np.unique(codes[EXTREMES:], axis=0)) > 1  # the inputs reach different outputs


@pytest.mark.slow
def test_packed_dsp_kernels_are_bit_exact(built) -> None:
    """The packed kernels (backends/c/ops/dsp.py) on the host's portable twins of the DSP
    intrinsics under ASan/UBSan, and on QEMU's Cortex-M4 (the intrinsics and assembly loops),
    on the same inputs: 100 for the four models, 10 for the NHWC variants (same kernels)."""
    name, graph, outdir, summary, xs, codes, floats = built
    assert_same(build_host(outdir, name, outdir / "host_dsp", opt="-O1",
                           extra=(f"-D{name.upper()}_DSP=1", *SANITIZE)), built)
    assert not missing_tools("arm-none-eabi-gcc", "qemu-system-arm")
    count = 10 if name.endswith("_nhwc") else SAMPLES
    run = run_qemu(build_mcu(outdir, name), xs[:count], outdir, timeout=1800)
    np.testing.assert_array_equal(run.codes, codes[:count])


@pytest.mark.slow
def test_classifiers_end_in_integer_softmax(built) -> None:
    name, graph, *_ = built
    ops = [n.op_type for n in graph.nodes]
    if name.startswith("autoencoder"):
        assert "QSoftmax" not in ops
        return
    assert "QSoftmax" in ops and "Softmax" not in ops
    # no transpose copy runs on the MCU: the NHWC input's Transpose is folded into the input
    # quantizer, and the NHWC flatten after the global pool only moves unit dims (a view)
    assert "Transpose" not in ops
    quantize = next(n for n in graph.nodes if n.op_type == "Quantize")
    assert ("perm" in quantize.attrs) == name.endswith("_nhwc")


@pytest.mark.slow
def test_budgets(built) -> None:
    summary = built[3]
    assert summary["arena_bytes"] <= 1.1 * summary["arena_lower_bound"]
    assert summary["flash_bytes"] is not None, "arm-none-eabi-gcc is part of the test suite"
    # code and runtime within FLASH_BUDGET of the model's constants: the packed weights plus the
    # per-channel biases and requantization multipliers (MobileNet's 2,700 channels alone hold
    # 25 KiB of those, so the weights-only bar of the MLPerf issue is not met there yet)
    assert summary["flash_bytes"] <= summary["constant_bytes"] + FLASH_BUDGET
    assert summary["packed_weight_bytes"] <= summary["constant_bytes"]


# the sub-byte weight formats on the four models (the NHWC variants run the same kernels)
SUB_BYTE = [("apot", 4), ("binary", 8), ("ternary", 8)]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS[:4])
@pytest.mark.parametrize("scheme,bits", SUB_BYTE, ids=[s for s, _ in SUB_BYTE])
def test_sub_byte_weights_are_bit_exact(name: str, scheme: str, bits: int, tmp_path: Path
                                        ) -> None:
    """4-bit APoT, binary and ternary weights: host C (strict and ASan/UBSan) equals the
    interpreter on 100 inputs, and the Cortex-M4 build runs under QEMU."""
    assert not missing_tools("gcc", "arm-none-eabi-gcc", "qemu-system-arm")
    x = make_data().model_inputs(name, CALIBRATION, 1)
    np.savez(tmp_path / "calib.npz", x=x)
    graph = compile_model(MLPERF / f"{name}.onnx", bits, scheme,
                          calib=tmp_path / "calib.npz").integer
    emit_library(graph, tmp_path, name, measure=False)
    xs = sample_inputs(graph, SAMPLES, seed=4)
    codes, floats = interpreter_outputs(graph, xs, chunk=1)
    built = (name, graph, tmp_path, None, xs, codes, floats)
    assert_same(build_host(tmp_path, name, tmp_path / "host_strict", opt="-O2"), built)
    assert_same(build_host(tmp_path, name, tmp_path / "host_sanitized", opt="-O1",
                           extra=SANITIZE), built)
    run = run_qemu(build_mcu(tmp_path, name), xs[:2], tmp_path, timeout=900)
    np.testing.assert_array_equal(run.codes, codes[:2])
