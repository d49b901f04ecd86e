"""Fixed-point training end to end on examples/digits, judged against the papers' claims, and
the `qcc compile --train` / `qcc train` commands.

- seeds/001 §4: FX training at C_o from the float run's initialisation and schedule ends within
  one point of the float test error; at C_{-1} (every precision one bit less) the training loss
  shows a gap to C_o's.
- seeds/003 Table 1: with 1-bit weights, BinaryConnect ends below stochastic rounding, and
  stochastic rounding below deterministic rounding.

Full numbers (C_{+1} too):  python -m tests.driver.test_train_experiment
"""

from __future__ import annotations

import copy
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from backends.numpy_int.training.loop import power_of_two_schedule
from passes import run_passes
from passes.annotate_precision import annotate_precision
from passes.quantize_graph import LayerConfig
from passes.training_program import TrainOptions
from qcc.core.float_train import TrainConfig, accuracy, train
from qcc.core.onnx_import import import_model
from qcc.driver.evaluate import integer_decisions
from qcc.driver.train_experiment import (
    ScratchRun,
    binary_config,
    gradient_rows,
    perturb_config,
    perturb_rows,
    train_from_scratch,
)
from tests.conftest import run_qcc

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"
MAX_LR_EXP = -2  # plain SGD at 2^-1 diverges on digits, in float as in fixed point
BINARY_ACT_BITS = 8  # seeds/003 binarizes weights only; its activations stay wide


def _make_digits():
    spec = importlib.util.spec_from_file_location("make_digits", DIGITS / "make_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Setup:
    """The trained model's C_o (`--bits auto`), the float run from build_model()'s He init
    (its test error and gradient statistics), and the data splits."""

    def __init__(self, epochs: int) -> None:
        md = _make_digits()
        self.splits = md.load_splits()
        self.config = TrainConfig(**{**md.CONFIG.__dict__, "epochs": epochs, "progress": False})
        self.trained = run_passes(import_model(DIGITS / "digits.onnx"), ["fold_batchnorm"])
        self.initial = import_model(md.build_model())
        self.auto = annotate_precision(self.trained, self.splits["calib"][0], integer_decisions,
                                       0.01, *self.splits["train"])
        float_run = copy.deepcopy(self.initial)
        with threadpool_limits(limits=1, user_api="blas"):
            self.baseline = train(float_run, *self.splits["train"], self.config)
        self.float_error = 1.0 - accuracy(float_run, *self.splits["test"])
        self.schedule = power_of_two_schedule(self.config, MAX_LR_EXP)
        self.rows = gradient_rows(self.baseline, self.auto.config, self.auto.integer,
                                  min(self.schedule))

    def fx(self, delta: int) -> ScratchRun:
        """FX training at C_o + delta from the float run's initialisation."""
        return train_from_scratch(self.trained, self.initial, self.auto.stats,
                                 perturb_config(self.auto.config, delta),
                                 perturb_rows(self.rows, delta),
                                 TrainOptions(update="fx", lr_exp=MAX_LR_EXP),
                                 self.splits["train"], self.splits["test"], self.schedule,
                                 self.config.batch_size, self.config.seed)

    def binary(self, rule: str, seed: int | None = None) -> float:
        """Test error with ±α weights in every layer trained by `rule` (bc, sr or r), with the
        config's seed (shuffling and stochastic rounding) unless `seed` is given."""
        config = binary_config(self.auto.config)
        config.layers = {k: LayerConfig(1, BINARY_ACT_BITS, "binary")
                         for k in config.layers}
        rows = {k: {**v, "B_W": 1, "B_A": BINARY_ACT_BITS} for k, v in self.rows.items()}
        run = train_from_scratch(self.trained, self.initial, self.auto.stats, config, rows,
                                 TrainOptions(update=rule, lr_exp=MAX_LR_EXP),
                                 self.splits["train"], self.splits["test"], self.schedule,
                                 self.config.batch_size,
                                 self.config.seed if seed is None else seed)
        return run.error


@pytest.fixture(scope="module")
def setup() -> Setup:
    return Setup(epochs=30)


LOSS_GAP = 1.15  # C_{-1}'s mean training loss over C_o's: measured 1.31 and 1.32 (seeds 0, 1)


@pytest.mark.slow
def test_fx_training_at_c_o_tracks_float_and_c_minus_1_does_not(setup: Setup) -> None:
    """seeds/001 §4.1-4.2 on digits: the float run from build_model()'s He init ends at
    1.25 % test error; FX at C_o from the same init and schedule within one point of it.
    C_{-1} "results in a noticeable gap compared to C_o for the loss function" (§4.2, Fig. 3):
    its mean training loss over the run is LOSS_GAP times C_o's or more. Its test error is not
    compared: on digits' 400 test images C_o and C_{-1} both end within a point of float
    (1.25 % and 1.0 % measured), a difference of one image."""
    at_c_o = setup.fx(0)
    assert at_c_o.error <= setup.float_error + 0.01, (at_c_o.error, setup.float_error)
    at_c_minus_1 = setup.fx(-1)
    gap = np.mean(at_c_minus_1.history.loss) / np.mean(at_c_o.history.loss)
    assert gap >= LOSS_GAP, gap


SR_SEEDS = (0, 1, 2)


@pytest.mark.slow
def test_binary_weights_bc_beats_sr_beats_r(setup: Setup) -> None:
    """seeds/003 Table 1's ordering with 1-bit weights: BC < SR < R in test error.

    SR is compared by its mean over SR_SEEDS: §5 of the paper (Theorems 5-6) shows that SR's
    iterates are a Markov chain that keeps exploring and never enters a greedy phase, so its
    final error is one draw from a broad distribution. On digits one seed gave 35 % to 64 %
    (seeds 0-3, two input formats), while BC stayed at 3.5-4.75 % and R at 65-69.5 %: a single
    SR run cannot carry a 5-point claim, the mean of three can."""
    errors = {rule: setup.binary(rule) for rule in ("bc", "r")}
    errors["sr"] = float(np.mean([setup.binary("sr", seed) for seed in SR_SEEDS]))
    assert errors["bc"] + 0.05 < errors["sr"] < errors["r"] - 0.05, errors


# -- the CLI ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trainable_outdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "dt"
    result = run_qcc("compile", DIGITS / "digits.onnx", "--bits", "auto", "--calib",
                     DIGITS / "calib.npz", "--train-data", DIGITS / "train.npz", "--train",
                     "--lr", "2^-4", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "training: update fx, lr 2^-4" in result.stdout
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_train_updates_outdir_and_it_evaluates_and_recompiles(trainable_outdir: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "dt"
    shutil.copytree(trainable_outdir, out)
    before = _snapshot(out)
    result = run_qcc("train", out, "--data", DIGITS / "train.npz", "--steps", "40",
                     "--batch-size", "16", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "trained steps 1..40" in result.stdout
    after = _snapshot(out)
    assert after["model.qcc.onnx"] != before["model.qcc.onnx"]
    assert after["reference.onnx"] != before["reference.onnx"]
    assert after["precision.json"] == before["precision.json"]
    state = np.load(out / "train_state.npz")
    assert int(state["step"]) == 40 and int(state["rng_counter"]) > 0
    # the reconstructed float model computes what the integers compute: p_m stays small
    evaluated = run_qcc("eval", out, "--data", DIGITS / "test.npz")
    assert evaluated.returncode == 0, evaluated.stderr
    accuracy_line = next(ln for ln in evaluated.stdout.splitlines() if "integer accuracy" in ln)
    assert float(accuracy_line.split("│")[2].strip(" %")) > 95.0
    again = run_qcc("compile", out / "reference.onnx", "--bits", "8", "--calib",
                    DIGITS / "calib.npz", "-o", tmp_path / "again")
    assert again.returncode == 0, again.stderr
    second = run_qcc("train", out, "--data", DIGITS / "train.npz", "--steps", "2")
    assert "trained steps 41..42" in second.stdout, second.stderr


@pytest.mark.slow
def test_train_refuses_bad_input_and_leaves_outdir_unchanged(trainable_outdir: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "dt"
    shutil.copytree(trainable_outdir, out)
    before = _snapshot(out)
    data = np.load(DIGITS / "train.npz")
    bad = tmp_path / "bad.npz"
    y = data["y"].copy()
    y[7] = 12
    np.savez(bad, x=data["x"], y=y)
    cases = [
        (["--data", bad, "--steps", "5"], "labels must be 0 .. 9"),
        (["--data", DIGITS / "train.npz", "--steps", "5", "--batch-size", "64"],
         "larger than the compiled training batch (32)"),
        (["--data", DIGITS / "train.npz", "--steps", "5", "--lr", "0.3"], "power of two"),
        (["--data", DIGITS / "train.npz", "--steps", "5", "--lr", "2^-20"],
         "below what its accumulator resolves"),
        (["--data", DIGITS / "train.npz", "--steps", "0"], "at least 1"),
    ]
    for args, fragment in cases:
        result = run_qcc("train", out, *args)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert fragment in result.stderr, result.stderr
        assert _snapshot(out) == before
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dt")]


@pytest.mark.slow
def test_compile_train_options_and_refusals(tmp_path: Path) -> None:
    """--bits N --train (gradient formats from a float warm-up), --trainable, --update sr with
    --grad-ternary; no trainable layer, unknown layers and untrained folders are refused."""
    out = tmp_path / "t8"
    result = run_qcc("compile", DIGITS / "digits.onnx", "--bits", "8", "--calib",
                     DIGITS / "calib.npz", "--train-data", DIGITS / "train.npz", "--train",
                     "--update", "sr", "--grad-ternary", "2", "--trainable", "fc1,fc2",
                     "--lr", "2^-3", "--train-batch", "8", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "trainable fc1, fc2" in result.stdout
    trained = run_qcc("train", out, "--data", DIGITS / "train.npz", "--steps", "3")
    assert trained.returncode == 0, trained.stderr
    bad = tmp_path / "bad"
    for args, fragment in [(["--trainable", ","], "--trainable names no layer"),
                           (["--trainable", "fc3"], "no weighted layer named 'fc3'"),
                           (["--lr", "3"], "power of two")]:
        result = run_qcc("compile", DIGITS / "digits.onnx", "--bits", "8", "--calib",
                         DIGITS / "calib.npz", "--train", *args, "-o", bad)
        assert result.returncode != 0 and fragment in result.stderr, result.stderr
        assert not bad.exists()
    plain = tmp_path / "plain"
    assert run_qcc("compile", DIGITS / "digits.onnx", "--bits", "8", "--calib",
                   DIGITS / "calib.npz", "-o", plain).returncode == 0
    result = run_qcc("train", plain, "--data", DIGITS / "train.npz", "--steps", "1")
    assert result.returncode != 0 and "compiled without --train" in result.stderr


def main() -> None:
    """The full numbers of the report: 30 epochs, C_o, C_{-1}, C_{+1} and the binary rules."""
    setup = Setup(epochs=30)
    print(f"float (momentum SGD, He init): test error {100 * setup.float_error:.2f} %")
    print(f"power-of-two schedule (lr_exp per epoch): {setup.schedule}")
    for name, delta in (("C_o", 0), ("C_o-1", -1), ("C_o+1", 1)):
        run = setup.fx(delta)
        print(f"FX at {name}: test error {100 * run.error:.2f} %, mean training loss "
              f"{np.mean(run.history.loss):.4f}")
    for rule in ("bc", "sr", "r"):
        print(f"1-bit weights, {rule}: test error {100 * setup.binary(rule):.2f} %")


if __name__ == "__main__":
    main()
