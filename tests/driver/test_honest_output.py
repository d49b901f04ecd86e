"""What qcc prints says what is true (issue 15): the real weight widths of binary and ternary,
--binary-activations visible in `qcc inspect OUTDIR`, units on figures, papers cited by author,
title and year, the interface of a model in `qcc inspect MODEL.onnx`, ReLU clipping never
counted as saturation, and progress bars only for a watching user."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from qcc.core import progress
from qcc.driver.cli import main

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"
MODEL = str(DIGITS / "digits.onnx")


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), terminal_width=200)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("scheme, bits", [("binary", 1), ("ternary", 2)])
def test_binary_and_ternary_weights_show_their_real_width(tmp_path: Path, scheme: str,
                                                          bits: int) -> None:
    code, stdout, stderr = cli("compile", MODEL, "--scheme", scheme, "--bits", "8", "-o",
                               str(tmp_path / "out"))
    assert code == 0, stderr
    layers = json.loads((tmp_path / "out" / "precision.json").read_text())["layers"]
    assert [la["B_W"] for la in layers] == [bits] * len(layers)
    assert all(la["B_A"] == 8 for la in layers)
    rows = [line for line in stdout.splitlines() if "conv1" in line]
    assert rows and f"│ {bits} " in rows[0] and "B_W (bits)" in stdout


def test_binary_activations_show_in_inspect(tmp_path: Path) -> None:
    assert cli("compile", MODEL, "--scheme", "binary", "--binary-activations", "-o",
               str(tmp_path / "out"))[0] == 0
    code, stdout, _ = cli("inspect", str(tmp_path / "out"))
    assert code == 0 and "XNOR" in stdout
    signs = {line.split("│")[1].strip(): line.rstrip("│ ").split("│")[-1].strip()
             for line in stdout.splitlines() if line.startswith("│")}
    assert signs["conv1"] == "no" and signs["conv2"] == signs["fc2"] == "yes"
    layers = json.loads((tmp_path / "out" / "precision.json").read_text())["layers"]
    assert [la.get("binary_activations", False) for la in layers] == [False, True, True, True]


def test_help_and_tables_cite_papers_not_folders(tmp_path: Path) -> None:
    for command in ("compile", "train", "eval", "run", "inspect", "qat", "report"):
        code, stdout, _ = cli(command, "--help")
        assert code == 0 and "seeds/" not in stdout, command
    _, stdout, _ = cli("compile", "--help")
    assert "Sakr & Shanbhag" in stdout and "2019" in stdout


def test_inspect_shows_the_interface(tmp_path: Path) -> None:
    code, stdout, _ = cli("inspect", MODEL)
    assert code == 0
    assert "input 'input': float32 [N, 1, 8, 8]" in stdout
    assert "output 'logits': float32 [N, 10]" in stdout
    assert "MACs per sample" in stdout


def test_relu_clipping_is_not_saturation(tmp_path: Path) -> None:
    """A Gemm + Relu whose pre-activations are mostly negative: the ReLU clamps them to 0,
    which loses nothing; only values above the top of the range saturate."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 8)).astype(np.float32)
    b = np.full(16, -3.0, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(rng.normal(size=(4, 16)).astype(np.float32), "w2"),
         numpy_helper.from_array(np.zeros(4, np.float32), "b2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    x = rng.normal(size=(64, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    np.save(tmp_path / "x.npy", x)
    assert cli("compile", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npz"),
               "-o", str(tmp_path / "out"))[0] == 0
    code, stdout, _ = cli("run", str(tmp_path / "out"), "--input", str(tmp_path / "x.npy"))
    assert code == 0 and "integer interpreter: 0 saturated values" in stdout


def test_progress_stays_off_for_ci_and_pipes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert not progress.wanted()
    code, _, stderr = cli("compile", "--help")
    assert not progress.enabled()


def test_progress_rows_nest_and_count(monkeypatch: pytest.MonkeyPatch) -> None:
    progress.enable(True)
    try:
        seen = []
        for i in progress.track(range(3), "outer"):
            with progress.steps("inner", 2) as advance:  # one live display, two rows
                advance(2)
            seen.append(i)
        assert seen == [0, 1, 2]
    finally:
        progress.enable(False)


def test_compile_stderr_is_clean_without_a_terminal(tmp_path: Path) -> None:
    code, _, stderr = cli("compile", MODEL, "--calib", str(DIGITS / "calib.npz"), "-o",
                          str(tmp_path / "out"))
    assert code == 0 and stderr == ""

