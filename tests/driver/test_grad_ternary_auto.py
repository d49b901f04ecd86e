"""`qcc compile --train --grad-ternary auto` as a user runs it, on the digits network with sign
activations in every layer but the first and last: S and R per layer printed and kept in
training.json (also through `qcc train`), and the bad inputs: no training data, a limit of
samples some layer cannot reach R >= 0.7 with, a value that is neither a number nor auto. Each
is one `qcc: error:` line, exit code 1 and no output folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.backends.c.test_train_xnor import binary_digits
from tests.conftest import run_qcc

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"


def compile_args(folder: Path, ternary: str, data: bool = True) -> list[str]:
    model = binary_digits(folder / "model")
    args = ["compile", str(model), "--bits", "8", "--scheme", "binary", "--binary-activations",
            "--overrides", str(folder / "model" / "overrides.json"), "--calib",
            str(DIGITS / "calib.npz"), "--train", "--update", "bc", "--grad-ternary", ternary,
            "-o", str(folder / "out")]
    return args + (["--train-data", str(DIGITS / "train.npz")] if data else [])


def test_auto_prints_and_keeps_samples_and_correlation_per_layer(tmp_path: Path) -> None:
    run = run_qcc(*compile_args(tmp_path, "auto"))
    assert run.returncode == 0, run.stderr
    program = json.loads((tmp_path / "out" / "training.json").read_text())
    chosen = program["grad_ternary_auto"]["layers"]
    assert list(chosen) == ["conv1", "conv2", "fc1", "fc2"]
    assert program["options"]["layer_samples"] == {k: c["S"] for k, c in chosen.items()}
    assert [la["samples"] for la in program["layers"]] == [c["S"] for c in chosen.values()]
    for name, c in chosen.items():
        assert c["R"] >= 0.7 and c["S"] == len(c["R_by_S"])
        assert re.search(rf"^ +{name} +{c['S']} +{c['R']:.3f}$", run.stdout, re.M), name
    assert "grad-ternary auto" in run.stdout
    train = run_qcc("train", tmp_path / "out", "--data", DIGITS / "train.npz", "--steps", "2")
    assert train.returncode == 0, train.stderr
    after = json.loads((tmp_path / "out" / "training.json").read_text())
    assert after["grad_ternary_auto"] == program["grad_ternary_auto"]


@pytest.mark.parametrize(("ternary", "data", "message"), [
    ("auto", False, "--grad-ternary auto measures the ternarization on labelled training "
                    "data: give --train-data"),
    ("auto:1", True, "--grad-ternary auto: layer 'conv2' reaches R = 0."),
    ("auto:65", True, "--grad-ternary auto:N takes N from 1 to 64"),
    ("some", True, "--grad-ternary takes a number of samples (0: off), 'auto' or 'auto:N'")],
    ids=["no-training-data", "R-below-target", "too-many", "not-a-number"])
def test_bad_grad_ternary_is_one_line(tmp_path: Path, ternary: str, data: bool,
                                      message: str) -> None:
    run = run_qcc(*compile_args(tmp_path, ternary, data))
    assert run.returncode == 1
    assert run.stderr.startswith(f"qcc: error: {message}"), run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()
