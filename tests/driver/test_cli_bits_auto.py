"""`qcc compile --bits auto` as a user runs it: the memory budgets, the configurations shown by
`qcc inspect`, and the one-line failures of a warm-up that cannot converge and of budgets
that cannot be met (issue 17)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_qcc
from tests.driver.test_cli_compile import assert_failed_cleanly

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"
AUTO = ("--bits", "auto", "--calib", DIGITS / "calib.npz", "--train-data", DIGITS / "train.npz")


@pytest.fixture(scope="module")
def digits_auto(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("auto") / "d"
    result = run_qcc("compile", DIGITS / "digits.onnx", *AUTO, "-o", out)
    assert result.returncode == 0, result.stderr
    assert "certified: p_m <=" in result.stdout and "configurations tried" in result.stdout
    return json.loads((out / "precision.json").read_text())


def test_flash_budget_is_met_and_inspect_shows_the_trade_off(digits_auto: dict,
                                                             tmp_path: Path) -> None:
    budget = int(0.75 * digits_auto["compiled"]["uniform_8bit"]["flash_bytes"])
    out = tmp_path / "b"
    result = run_qcc("compile", DIGITS / "digits.onnx", *AUTO, "--flash-budget", budget,
                     "--target", "c", "-o", out)
    assert result.returncode == 0, result.stderr
    precision = json.loads((out / "precision.json").read_text())
    compiled = precision["compiled"]
    assert compiled["flash_bytes"] <= budget
    summary = json.loads((out / "summary.json").read_text())  # the C library really is that
    assert summary["packed_weight_bytes"] == compiled["flash_bytes"]
    assert summary["arena_bytes"] == compiled["ram_bytes"]
    labels = [c["label"] for c in precision["configurations"]]
    assert compiled["label"] in labels and any(la.startswith("budget:") for la in labels)
    budget_rows = [c for c in precision["configurations"] if c["label"].startswith("budget:")
                   and c["flash_bytes"] <= budget]
    assert compiled["mismatches"] == min(c["mismatches"] for c in budget_rows)
    shown = run_qcc("inspect", out)
    assert shown.returncode == 0
    assert "configurations tried" in shown.stdout and "certified: p_m <=" in shown.stdout


def test_ram_budget_in_kib(tmp_path: Path, digits_auto: dict) -> None:
    ram = digits_auto["compiled"]["uniform_8bit"]["ram_bytes"]
    out = tmp_path / "r"
    result = run_qcc("compile", DIGITS / "digits.onnx", *AUTO, "--ram-budget",
                     f"{ram / 1024!r}KiB", "-o", out)
    assert result.returncode == 0, result.stderr
    precision = json.loads((out / "precision.json").read_text())
    assert precision["compiled"]["ram_bytes"] <= ram


def test_budgets_that_cannot_be_met(tmp_path: Path) -> None:
    out = tmp_path / "out"
    model = DIGITS / "digits.onnx"
    assert_failed_cleanly(run_qcc("compile", model, *AUTO, "--flash-budget", "100", "-o", out),
                          out, "--flash-budget 100 bytes is below the smallest weight storage")
    assert_failed_cleanly(run_qcc("compile", model, *AUTO, "--ram-budget", "64", "-o", out),
                          out, "--ram-budget 64 bytes is below the smallest arena")
    assert_failed_cleanly(run_qcc("compile", model, "--flash-budget", "4KiB", "-o", out), out,
                          "need --bits auto")
    assert_failed_cleanly(run_qcc("compile", model, *AUTO, "--flash-budget", "lots", "-o",
                                  out), out, "not a size in bytes")


def test_explicit_target_the_samples_cannot_certify(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_failed_cleanly(run_qcc("compile", DIGITS / "digits.onnx", *AUTO, "--pm-target",
                                  "0.001", "-o", out), out,
                          "cannot be certified with 199 held-out samples",
                          "at least 2995 held-out samples")


def _zero_gradient_model(path: Path) -> Path:
    """Gemm-Relu-Gemm without biases: on all-zero inputs every activation and gradient is 0."""
    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(np.abs(rng.normal(size=(4, 6))).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.normal(size=(6, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 4])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", 3])], init)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_warm_up_that_cannot_converge(tmp_path: Path) -> None:
    """The training data gives the loss nowhere to fall (all-zero inputs, balanced labels, the
    logits stuck at 0): no learning rate helps, so the compile stops with one line."""
    model = _zero_gradient_model(tmp_path / "m.onnx")
    calib = tmp_path / "c.npz"
    np.savez(calib, x=np.random.default_rng(1).uniform(0.5, 1.5, (64, 4)).astype(np.float32))
    train = tmp_path / "t.npz"
    np.savez(train, x=np.zeros((30, 4), np.float32), y=np.arange(30) % 3)
    out = tmp_path / "out"
    assert_failed_cleanly(run_qcc("compile", model, "--bits", "auto", "--calib", calib,
                                  "--train-data", train, "-o", out), out,
                          "the float warm-up for the gradient statistics did not converge")
