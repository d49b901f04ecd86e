"""The generated harnesses refuse what they cannot run and say whether they agree with the
interpreter (issue 15): `make run-mcu` on the bundled example ends with a line comparing the
Cortex-M4's output codes with the NumPy interpreter's (sample_expected.i32, written by qcc);
the host harness refuses `--time -5`, an empty input and a partial last sample."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qcc.driver.c_check import interpreter_outputs
from qcc.driver.cli import main
from qcc.driver.outdir import EXPECTED_CODES, load_outdir

ROOT = Path(__file__).resolve().parents[3]
DIGITS = ROOT / "examples" / "digits"
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a host C compiler")
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-arm") is None or
                                shutil.which("arm-none-eabi-gcc") is None,
                                reason="needs qemu-system-arm and arm-none-eabi-gcc")


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("harness") / "digits"
    result = CliRunner().invoke(main, ["compile", str(DIGITS / "digits.onnx"), "--calib",
                                       str(DIGITS / "calib.npz"), "--target", "c", "-o",
                                       str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_expected_codes_are_the_interpreters(library: Path) -> None:
    xs = np.fromfile(library / "sample_input.f32", np.float32).reshape(-1, 1, 8, 8)
    codes, _ = interpreter_outputs(load_outdir(library).integer, xs)
    np.testing.assert_array_equal(np.fromfile(library / EXPECTED_CODES, np.int32),
                                  codes.ravel())


@needs_gcc
def test_host_harness_refuses_bad_runs_and_inputs(library: Path, tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(library), "host"], check=True, capture_output=True)
    exe = str(library / "digits_host")
    sample = (library / "sample_input.f32").read_bytes()
    (tmp_path / "short.f32").write_bytes(sample[:64 * 4 + 44])  # one sample and 11 floats
    (tmp_path / "empty.f32").write_bytes(b"")
    for args, fragment in (
            (["--time", "-5", str(library / "sample_input.f32")], "positive number of runs"),
            (["--time", "x", str(library / "sample_input.f32")], "positive number of runs"),
            ([str(tmp_path / "short.f32"), str(tmp_path / "c.out")], "partial sample (11 of 64"),
            ([str(tmp_path / "empty.f32"), str(tmp_path / "c.out")], "holds no sample")):
        run = subprocess.run([exe, *args], capture_output=True, text=True)
        assert run.returncode != 0 and fragment in run.stderr, (args, run.stderr)
    run = subprocess.run([exe, "--time", "10", str(library / "sample_input.f32")],
                         capture_output=True, text=True)
    assert run.returncode == 0 and "us per inference" in run.stdout


@needs_qemu
def test_run_mcu_says_whether_it_equals_the_interpreter(library: Path) -> None:
    run = subprocess.run(["make", "-s", "-C", str(library), "run-mcu"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    last = run.stdout.strip().splitlines()[-1]
    assert last == "MCU outputs EQUAL the NumPy interpreter's on all 4 samples " \
                   "(sample_expected.i32)"
    assert "ns = ~" in run.stdout  # ticks with their unit
    expected = np.fromfile(library / EXPECTED_CODES, np.int32)
    expected[3] += 1  # what a wrong MCU result looks like
    expected.tofile(library / "wrong.i32")
    run = subprocess.run(["make", "-s", "-C", str(library), "run-mcu",
                          "EXPECTED=wrong.i32"], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "MCU outputs DIFFER from the NumPy interpreter's: 3 of 4 samples equal" in run.stdout
