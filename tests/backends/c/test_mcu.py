"""The emitted library cross-built with arm-none-eabi-gcc for the Cortex-M4 of QEMU's
mps2-an386 (the library folder's mcu/ linker script, startup and semihosting main), run under
`qemu-system-arm -machine mps2-an386 -nographic -semihosting`: the outputs it prints must equal
the NumPy integer interpreter's. Also the one-command example (`qcc compile ... --target c`,
then `make -C OUTDIR run-mcu`) and that the same compile twice gives the same bytes.

Without the toolchain these tests skip, except under CI (CI=true), where they fail."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from backends.c.build import build_mcu, missing_tools, parse_mcu_output, run_qemu
from backends.c.library import SAMPLE_INPUT, emit_library
from qcc import zoo
from qcc.driver.c_check import interpreter_outputs, sample_inputs
from qcc.driver.cli import main
from qcc.driver.outdir import load_outdir
from qcc.driver.pipeline import compile_model

ROOT = Path(__file__).resolve().parents[3]


def kitchen_sink() -> onnx.ModelProto:
    """The many-kernel model of test_schemes.py (loaded by path: tests/ is no package)."""
    spec = importlib.util.spec_from_file_location(
        "c_schemes_models", Path(__file__).with_name("test_schemes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.kitchen_sink()

DIGITS = ROOT / "examples" / "digits"
TOOLS = ("arm-none-eabi-gcc", "qemu-system-arm", "make")


@pytest.fixture(autouse=True)
def toolchain() -> None:
    missing = missing_tools(*TOOLS)
    if missing:
        message = f"{', '.join(missing)} not installed (apt: gcc-arm-none-eabi, " \
                  "libnewlib-arm-none-eabi, qemu-system-arm)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def compile_cli(out: Path) -> str:
    result = CliRunner().invoke(main, [
        "compile", str(DIGITS / "digits.onnx"), "--bits", "8", "--calib",
        str(DIGITS / "calib.npz"), "--target", "c", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return result.output


def test_example_builds_and_runs_in_one_command(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    printed = compile_cli(out)
    assert "C library digits" in printed and "flash" in printed
    run = subprocess.run(["make", "-C", str(out), "run-mcu"], capture_output=True, text=True,
                         timeout=300, check=True)
    got = parse_mcu_output(run.stdout)
    graph = load_outdir(out).integer
    xs = np.fromfile(out / SAMPLE_INPUT, dtype=np.float32).reshape(-1, 1, 8, 8)
    codes, floats = interpreter_outputs(graph, xs)
    assert len(got.codes) == len(xs) == 4
    np.testing.assert_array_equal(got.codes, codes)
    np.testing.assert_array_equal(got.float_bits, floats.view(np.uint32))
    assert np.all(got.ticks > 0)


def test_same_command_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    compile_cli(first)
    compile_cli(second)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel


def run_on_qemu(tmp: Path, name: str, model: onnx.ModelProto, scheme: str, bits: int,
                count: int, xnor: bool = False) -> None:
    path = tmp / f"{name}.onnx"
    onnx.save(model, path)
    dims = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    np.savez(tmp / "calib.npz",
             x=np.random.default_rng(4).normal(size=(16, *dims[1:])).astype(np.float32))
    graph = compile_model(path, bits, scheme, calib=tmp / "calib.npz",
                          binary_activations=xnor).integer
    out = tmp / "c"
    out.mkdir()
    summary = emit_library(graph, out, name, measure=False)
    xs = sample_inputs(graph, count, seed=5)[::-1]  # a normal input first, extremes after
    codes, floats = interpreter_outputs(graph, xs)
    got = run_qemu(build_mcu(out, name), xs, tmp)
    np.testing.assert_array_equal(got.codes, codes)
    np.testing.assert_array_equal(got.float_bits, floats.view(np.uint32))
    per_mac = got.instructions / summary["macs"]
    assert np.all((per_mac > 0.5) & (per_mac < 50)), per_mac  # the counter counts


@pytest.mark.parametrize("scheme, bits", [("fixed", 8), ("apot", 4), ("ternary", 4)])
def test_resnet8_on_qemu(tmp_path: Path, scheme: str, bits: int) -> None:
    run_on_qemu(tmp_path, "resnet8", zoo.resnet8(), scheme, bits, count=2)


@pytest.mark.parametrize("scheme, bits, xnor", [("fixed", 8, False), ("affine", 8, False),
                                                ("pot", 4, False), ("binary", 8, True)])
def test_kitchen_sink_on_qemu(tmp_path: Path, scheme: str, bits: int, xnor: bool) -> None:
    run_on_qemu(tmp_path, "kitchen_sink", kitchen_sink(), scheme, bits, count=10, xnor=xnor)


@pytest.mark.slow
def test_convnet_on_qemu(tmp_path: Path) -> None:
    run_on_qemu(tmp_path, "convnet_cifar", zoo.convnet_cifar(), "fixed", 8, count=1)
