"""Training in a compiled OUTDIR: what `qcc compile --train` adds and what `qcc train` updates.

Files (next to model.qcc.onnx, reference.onnx, precision.json):
- training.json: the TrainingProgram as plain data (options, per-layer formats and shifts,
  backward order, per-sample shapes): the static half of the C train step; with
  `--grad-ternary auto` also "grad_ternary_auto": per layer the chosen S, its R and R for every
  S tried (backends/numpy_int/training/tbp_samples.py);
- train_state.npz: the mutable half (training_program.TrainState: accumulators, master biases, PRNG
  seed and counter, step count). Weight and bias codes live in model.qcc.onnx.

`qcc train` rewrites model.qcc.onnx (the updated codes), reference.onnx (float weights
reconstructed from the integers, so `qcc eval` compares like with like and the model can be
compiled again), train_state.npz and training.json, all at once: the new folder replaces the
old one only when everything succeeded. `qcc train-data` writes the C train harness's data file
(`train_data`): the same minibatches as input codes and labels, for `make train` /
`make train-mcu` in a folder compiled with --train --target c.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from backends.numpy_int.interpreter import run_integer
from backends.numpy_int.train_step import check_lr, init_state
from backends.numpy_int.training.loop import (
    History,
    batch_order,
    train_steps,
    write_float_weights,
)
from backends.numpy_int.training.tbp_samples import R_TARGET, SampleChoice, choose_samples
from passes import precision as P
from passes.annotate_precision import gradient_statistics
from passes.training_program import (
    MAX_TERNARY_SAMPLES,
    TrainingProgram,
    TrainOptions,
    TrainState,
    build_training_program,
    set_training_formats,
)
from qcc.core.errors import QccError
from qcc.core.ir import Graph
from qcc.core.onnx_export import export_model
from qcc.driver.evaluate import float_predictions
from qcc.driver.io import atomic_dir, load_npz
from qcc.driver.outdir import INTEGER_MODEL, REFERENCE_MODEL, load_outdir

PROGRAM_FILE = "training.json"
STATE_FILE = "train_state.npz"
WARMUP_EPOCHS = 3  # float epochs that measure gradient statistics for a fixed-bits compile


@dataclass
class Training:
    """The training half of a compiled model."""

    program: TrainingProgram
    state: TrainState
    history: list[dict] | None = None
    samples: dict[str, dict] | None = None  # --grad-ternary auto: {layer: {S, R, R_by_S}}

    def program_json(self) -> str:
        data = self.program.to_dict()
        data["history"] = self.history or []
        if self.samples:
            data["grad_ternary_auto"] = {"R_target": R_TARGET, "layers": self.samples}
        return json.dumps(data, indent=1) + "\n"

    def samples_lines(self) -> list[str]:
        """The per-layer S and R of --grad-ternary auto, as printed by `qcc compile`."""
        if not self.samples:
            return []
        width = max(len(name) for name in self.samples)
        lines = [f"ternarized gradients (--grad-ternary auto, R >= {R_TARGET}):",
                 f"  {'layer':<{width}}   S      R"]
        lines += [f"  {name:<{width}}  {c['S']:>2}  {c['R']:.3f}"
                  for name, c in self.samples.items()]
        return lines


def parse_lr(text: str) -> int:
    """'2^-4', '2**-4' or '0.0625' -> -4; the learning rate must be a power of two <= 1."""
    match = re.fullmatch(r"\s*2\s*(?:\^|\*\*)\s*(-?\d+)\s*", text)
    if match:
        exp = int(match.group(1))
    else:
        try:
            value = float(text)
        except ValueError:
            raise QccError(f"--lr must be a power of two such as 2^-4, got {text!r}") from None
        mantissa, e = math.frexp(value) if value > 0 else (0.0, 0)
        if mantissa != 0.5:
            raise QccError(f"--lr must be a power of two (the update is a shift), got {text}")
        exp = e - 1
    if exp > 0:
        raise QccError(f"--lr must be at most 1 (2^0), got 2^{exp}")
    return exp


def parse_grad_ternary(text: str) -> tuple[int, int]:
    """--grad-ternary: 'S' (0: off) -> (S, 0); 'auto' or 'auto:N' -> (0, N), N the most
    samples auto may choose (default 64)."""
    text = text.strip().lower()
    match = re.fullmatch(r"auto(?::(\d+))?", text)
    if match:
        most = int(match.group(1)) if match.group(1) else MAX_TERNARY_SAMPLES
        if not 1 <= most <= MAX_TERNARY_SAMPLES:
            raise QccError(f"--grad-ternary auto:N takes N from 1 to {MAX_TERNARY_SAMPLES}, "
                           f"got {most}")
        return 0, most
    if not text.isdigit():
        raise QccError(f"--grad-ternary takes a number of samples (0: off), 'auto' or "
                       f"'auto:N', got {text!r}")
    return int(text), 0


def parse_trainable(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise QccError("--trainable names no layer")
    return names


# -- compile ----------------------------------------------------------------------------------
def prepare_training(reference: Graph, integer: Graph, options: TrainOptions,
                     x: np.ndarray | None = None, y: np.ndarray | None = None) -> Training:
    """The program and initial state for a compiled integer graph. Layers without gradient
    formats (a fixed-bits compile) get them from a short float warm-up on (x, y): seeds/001
    eq. 2-4 with γ_min = the compiled learning rate."""
    if not any("step_gw_exp" in n.attrs for n in integer.nodes if n.op_type in ("QConv",
                                                                                 "QGemm")):
        if x is None:
            raise QccError("training formats need data: give --train-data (or --calib)")
        annotate_training_formats(reference, integer, x, y, options.lr_exp)
    samples = None
    if options.grad_ternary_auto:
        if x is None or y is None:
            raise QccError("--grad-ternary auto measures the ternarization on labelled "
                           "training data: give --train-data DATA.npz (keys x and y)")
        exact = dataclasses.replace(options, grad_ternary=0, layer_samples=())
        choices = choose_samples(build_training_program(integer, exact), integer, x, y,
                                 options.grad_ternary_auto, seed=options.seed)
        options = dataclasses.replace(options, grad_ternary=0, layer_samples=tuple(
            sorted((c.layer, c.samples) for c in choices)))
        samples = _samples_table(choices)
    program = build_training_program(integer, options)
    check_lr(program, options.lr_exp)
    return Training(program, init_state(program, integer, reference), samples=samples)


def _samples_table(choices: list[SampleChoice]) -> dict[str, dict]:
    return {c.layer: c.to_dict() for c in choices}


def annotate_training_formats(reference: Graph, integer: Graph, x: np.ndarray,
                              y: np.ndarray | None, lr_exp: int) -> None:
    """Steps 3-4 of `--bits auto` (gradient statistics, eq. 2-4) for a fixed-bits compile."""

    labels = y if y is not None else float_predictions(reference, x)
    stats = gradient_statistics(reference, x, labels, WARMUP_EPOCHS, 0.01).layers
    grads = P.gradient_formats([s.sigma_gw_max for s in stats], [s.sigma_gw_min for s in stats],
                               [s.sigma_ga_max for s in stats], [s.lambda_max for s in stats],
                               [s.numel_gw for s in stats], [s.numel_ga for s in stats])
    rows = {}
    for s, g in zip(stats, grads):
        node = integer.node(s.node)
        spec = node.inputs[1].quant
        bits_w = spec.bits if spec is not None else 8
        r_w = spec.pdr if spec is not None and spec.pdr else 1.0
        acc = P.accumulator_formats([bits_w], [g["step_gw"]], math.ldexp(1.0, lr_exp),
                                    r_w=r_w)[0]
        bits_a = node.inputs[0].quant.bits if node.inputs[0].quant is not None else 8
        rows[s.node] = {"B_W": bits_w, "B_A": bits_a, "B_GW": g["bits_gw"],
                        "B_GA": g["bits_ga"], "B_acc": acc["bits_acc"],
                        **{k: g[k] for k in ("r_gw", "step_gw", "r_ga", "step_ga")},
                        "r_acc": acc["r_acc"], "step_acc": acc["step_acc"]}
    set_training_formats(integer, rows)


def write_training(folder: Path, training: Training) -> None:
    """training.json and train_state.npz into `folder` (a compile's temporary OUTDIR)."""
    (folder / PROGRAM_FILE).write_text(training.program_json())
    with open(folder / STATE_FILE, "wb") as f:
        np.savez(f, **training.state.to_arrays())


# -- qcc train --------------------------------------------------------------------------------
def load_training(outdir: Path, integer: Graph) -> Training:
    """The program (rebuilt from the graph's annotations and the saved options) and state."""
    path = Path(outdir) / PROGRAM_FILE
    if not path.is_file() or not (Path(outdir) / STATE_FILE).is_file():
        raise QccError(f"{outdir} was compiled without --train (no {PROGRAM_FILE} / "
                       f"{STATE_FILE}); compile with --train to train it")
    try:
        data = json.loads(path.read_text())
        options = TrainOptions.from_dict(data["options"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise QccError(f"{path}: not a qcc training program ({e})") from None
    program = build_training_program(integer, options)
    arrays = load_npz(Path(outdir) / STATE_FILE, "training state",
                      keys=("rng_seed", "rng_counter", "step"))
    state = TrainState.from_arrays(arrays)
    missing = [layer.name for layer in program.trained
               if layer.update in ("fx", "bc") and layer.name not in state.acc]
    if missing:
        raise QccError(f"{outdir / STATE_FILE}: no accumulator for layer(s) {', '.join(missing)}")
    auto = data.get("grad_ternary_auto") or {}
    return Training(program, state, data.get("history", []), auto.get("layers"))


@dataclass
class TrainRun:
    history: History
    first_step: int
    last_step: int


def train_outdir(outdir: Path, x: np.ndarray, y: np.ndarray, steps: int, batch_size: int | None,
                 seed: int, lr_exp: int | None, progress: bool = True) -> TrainRun:
    """`qcc train`: load, check everything, train, then replace OUTDIR's files atomically."""

    outdir = Path(outdir)
    loaded = load_outdir(outdir)
    training = load_training(outdir, loaded.integer)
    program, state = training.program, training.state
    batch = batch_size or program.options.batch
    lr = program.options.lr_exp if lr_exp is None else lr_exp
    _check_run(program, y, steps, batch, lr)
    first = state.step
    history = train_steps(program, loaded.integer, state, x, y, steps, batch, lr, seed, progress)
    reference = copy.deepcopy(loaded.reference)
    write_float_weights(reference, loaded.integer, program)
    training.history = (training.history or []) + [{
        "steps": steps, "first_step": first, "batch": batch, "lr_exp": lr, "seed": seed,
        "loss": history.loss[-1], "train_accuracy": history.accuracy[-1],
        "clipped": history.clipped}]
    with atomic_dir(outdir) as tmp:
        for item in outdir.iterdir():  # keep whatever else the folder holds
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
            elif item.is_dir():
                shutil.copytree(item, tmp / item.name)
        onnx.save(export_model(loaded.integer), tmp / INTEGER_MODEL)
        onnx.save(export_model(reference), tmp / REFERENCE_MODEL)
        write_training(tmp, training)
    return TrainRun(history, first, state.step)


# -- qcc train-data: the C train step's data file ----------------------------------------------
def train_data(outdir: Path, x: np.ndarray, y: np.ndarray, steps: int, batch_size: int | None,
               seed: int) -> np.ndarray:
    """The int32 data file of the C train harness (train_harness.c): steps, batch, then per
    step batch input codes per sample (the integer graph's input quantization) and batch
    labels; the minibatches `qcc train` would draw with the same steps, batch and seed."""

    loaded = load_outdir(outdir)
    training = load_training(outdir, loaded.integer)
    program = training.program
    batch = batch_size or program.options.batch
    _check_run(program, y, steps, batch, program.options.lr_exp)
    integer = loaded.integer
    quantize = next(n for n in integer.nodes if integer.inputs[0] in n.inputs)
    parts = [np.array([steps, batch], np.int32)]
    for idx in batch_order(len(x), steps, batch, seed):
        env, _ = run_integer(integer, {integer.inputs[0].name: x[idx]}, check=False,
                             keep_all=True)
        parts += [env[quantize.outputs[0].name].astype(np.int32).ravel(),
                  y[idx].astype(np.int32)]
    return np.concatenate(parts)


def _check_run(program: TrainingProgram, y: np.ndarray, steps: int, batch: int,
               lr_exp: int) -> None:
    if steps < 1:
        raise QccError(f"--steps must be at least 1, got {steps}")
    if not 1 <= batch <= program.options.batch:
        raise QccError(f"--batch-size {batch} is larger than the compiled training batch "
                       f"({program.options.batch}); recompile with --train-batch {batch}"
                       if batch > 0 else f"--batch-size must be positive, got {batch}")
    if y.min() < 0 or y.max() >= program.classes:
        bad = int(np.count_nonzero((y < 0) | (y >= program.classes)))
        raise QccError(f"labels must be 0 .. {program.classes - 1} (the model has "
                       f"{program.classes} classes); {bad} label(s) are outside, from "
                       f"{int(y.min())} to {int(y.max())}")
    check_lr(program, lr_exp)
