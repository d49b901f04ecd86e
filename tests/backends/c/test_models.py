"""The emitted C of the zoo models and the digits example (fixed point, 8 bits), built with
gcc -std=c99 -Wall -Wextra -Werror -pedantic, against the NumPy integer interpreter bit for
bit on 100 inputs (8 of them at the extremes of the input format), again under
-fsanitize=address,undefined, and the budgets: flash <= packed weights + 16 KiB, arena <= 1.1x
its lower bound. One compile and one build per model (module-scoped fixtures)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import pytest

from backends.c.build import SANITIZE, build_host, missing_tools, run_host
from backends.c.emit import emit_source
from backends.c.library import FLASH_BUDGET, SUMMARY, emit_library
from qcc import zoo
from qcc.core.ir import Graph
from qcc.driver.c_check import EXTREMES, interpreter_outputs, sample_inputs
from qcc.driver.pipeline import compile_model

ROOT = Path(__file__).resolve().parents[3]
DIGITS = ROOT / "examples" / "digits"
MODELS = ["convnet_cifar", "resnet8", "mlp_digits", "digits"]
SAMPLES = 100


@dataclass
class Built:
    name: str
    graph: Graph
    outdir: Path
    summary: dict
    xs: np.ndarray
    codes: np.ndarray  # the interpreter's output codes
    floats: np.ndarray

    def run(self, exe: Path, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        xs = self.xs[:count]
        return run_host(exe, xs, self.codes.dtype, self.codes.shape[1], self.outdir)


def model_path(name: str, tmp: Path) -> tuple[Path, Path]:
    """(model.onnx, calibration .npz) of a test model."""
    if name == "digits":
        return DIGITS / "digits.onnx", DIGITS / "calib.npz"
    path = tmp / f"{name}.onnx"
    model = zoo.MODELS[name]()
    onnx.save(model, path)
    dims = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).normal(size=(16, *dims[1:])).astype(np.float32)
    np.savez(tmp / "calib.npz", x=x)
    return path, tmp / "calib.npz"


def require_gcc() -> None:
    assert not missing_tools("gcc"), "gcc is required: the C backend is part of the test suite"


@pytest.fixture(scope="module", params=MODELS)
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    require_gcc()
    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    model, calib = model_path(name, tmp)
    graph = compile_model(model, 8, "fixed", calib=calib).integer
    outdir = tmp / "c"
    outdir.mkdir()
    summary = emit_library(graph, outdir, name, measure=not missing_tools("arm-none-eabi-gcc"))
    xs = sample_inputs(graph, SAMPLES, seed=2)
    codes, floats = interpreter_outputs(graph, xs)
    return Built(name, graph, outdir, summary, xs, codes, floats)


def assert_same(got: tuple[np.ndarray, np.ndarray], built: Built, count: int) -> None:
    codes, floats = got
    assert codes.dtype == built.codes.dtype
    np.testing.assert_array_equal(codes, built.codes[:count])
    np.testing.assert_array_equal(floats.view(np.uint32), built.floats[:count].view(np.uint32))


def test_host_build_is_bit_exact(built: Built) -> None:
    exe = build_host(built.outdir, built.name, built.outdir / "host_strict", opt="-O2")
    assert_same(built.run(exe), built, SAMPLES)
    # the extremes reach both ends of the output codes' range on some model: not a dead test
    assert len(np.unique(built.codes[:EXTREMES], axis=0)) > 1


@pytest.mark.slow
def test_sanitized_build_is_bit_exact(built: Built) -> None:
    count = SAMPLES  # the ConvNet's 100 take about 20 s under the sanitizers
    exe = build_host(built.outdir, built.name, built.outdir / "host_sanitized", opt="-O1",
                     extra=SANITIZE)
    assert_same(built.run(exe, count), built, count)  # any report aborts the harness


def test_budgets(built: Built) -> None:
    s = built.summary
    assert s["arena_bytes"] <= 1.1 * s["arena_lower_bound"]
    assert s["arena_lower_bound"] > 0 and s["macs"] > 0
    if s["flash_bytes"] is None:
        pytest.skip("arm-none-eabi-gcc is not installed (tests/backends/c/test_mcu.py fails "
                    "on CI without it)")
    assert s["flash_bytes"] <= s["packed_weight_bytes"] + FLASH_BUDGET
    assert s["flash_bytes"] >= s["packed_weight_bytes"]  # the weights are really in flash
    assert json.loads((built.outdir / SUMMARY).read_text()) == s


def test_emission_is_deterministic(built: Built) -> None:
    first = emit_source(built.graph, built.name).files
    second = emit_source(built.graph, built.name).files
    assert first == second
    assert first[f"{built.name}.c"] == (built.outdir / f"{built.name}.c").read_text()


TWO_MODELS_MAIN = r"""
#include <stdio.h>
#include "digits.h"
#include "mlp_digits.h"

int main(void)
{
    static float x[64];
    static digits_input_t a[DIGITS_INPUT_SIZE];
    static digits_output_t ya[DIGITS_OUTPUT_SIZE];
    static mlp_digits_input_t b[MLP_DIGITS_INPUT_SIZE];
    static mlp_digits_output_t yb[MLP_DIGITS_OUTPUT_SIZE];
    int i;
    if (fread(x, sizeof x[0], 64, stdin) != 64) return 3;
    if (digits_infer(NULL, ya) != DIGITS_ERR_NULL || digits_infer(a, NULL) != DIGITS_ERR_NULL ||
        mlp_digits_quantize_input(NULL, b) != MLP_DIGITS_ERR_NULL) return 2;
    if (digits_quantize_input(x, a) || digits_infer(a, ya) ||
        mlp_digits_quantize_input(x, b) || mlp_digits_infer(b, yb)) return 1;
    for (i = 0; i < DIGITS_OUTPUT_SIZE; ++i) printf("%ld ", (long)ya[i]);
    printf("\n");
    for (i = 0; i < MLP_DIGITS_OUTPUT_SIZE; ++i) printf("%ld ", (long)yb[i]);
    printf("\n");
    return 0;
}
"""


def test_two_models_link_into_one_program(tmp_path: Path) -> None:
    """Every global symbol carries its model's prefix: two libraries link side by side, and
    a null pointer is an error code, not a crash."""
    require_gcc()
    graphs, sources = {}, []
    for name in ("digits", "mlp_digits"):
        model, calib = model_path(name, tmp_path)
        graphs[name] = compile_model(model, 8, "fixed", calib=calib).integer
        out = tmp_path / name
        out.mkdir()
        emit_library(graphs[name], out, name, measure=False)
        sources += [str(out / f"{name}.c"), str(out / f"{name}_runtime.c"), f"-I{out}"]
        subprocess.run(["gcc", "-std=c99", "-c", str(out / f"{name}.c"),
                        str(out / f"{name}_runtime.c")], cwd=out, check=True)
        symbols = subprocess.run(["nm", "-g", "--defined-only", f"{name}.o",
                                  f"{name}_runtime.o"], cwd=out, capture_output=True,
                                 text=True, check=True).stdout
        names = [line.split()[-1] for line in symbols.splitlines() if len(line.split()) == 3]
        assert names and all(n.startswith(f"{name}_") for n in names), names
    (tmp_path / "main.c").write_text(TWO_MODELS_MAIN)
    exe = tmp_path / "both"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic",
                    str(tmp_path / "main.c"), *sources, "-o", str(exe)], check=True)
    x = np.random.default_rng(6).normal(size=(1, 64)).astype(np.float32)
    run = subprocess.run([str(exe)], input=x.tobytes(), capture_output=True, check=True)
    lines = run.stdout.decode().splitlines()
    for line, (name, shape) in zip(lines, [("digits", (1, 1, 8, 8)), ("mlp_digits", (1, 64))]):
        codes, _ = interpreter_outputs(graphs[name], x.reshape(shape))
        assert [int(v) for v in line.split()] == codes[0].tolist()


def test_one_layer_model_needs_no_arena(tmp_path: Path) -> None:
    """A single Gemm reads the caller's input and writes the caller's output: no arena; and a
    model named like the harness file gets another C name."""
    require_gcc()
    rng = np.random.default_rng(8)
    w = onnx.numpy_helper.from_array(rng.normal(size=(10, 4)).astype(np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gemm", ["input", "w"], ["output"], transB=1)], "one",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, 10])],
        initializer=[w])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "harness.onnx")
    integer = compile_model(tmp_path / "harness.onnx", 8, "fixed").integer
    out = tmp_path / "c"
    out.mkdir()
    summary = emit_library(integer, out, "harness", measure=False)
    assert summary["name"] == "harness_model" and summary["arena_bytes"] == 0
    assert "_arena" not in (out / "harness_model.c").read_text()
    exe = build_host(out, "harness_model", out / "host")
    xs = sample_inputs(integer, 30)
    codes, floats = interpreter_outputs(integer, xs)
    got = run_host(exe, xs, codes.dtype, codes.shape[1], out)
    np.testing.assert_array_equal(got[0], codes)
    np.testing.assert_array_equal(got[1].view(np.uint32), floats.view(np.uint32))
