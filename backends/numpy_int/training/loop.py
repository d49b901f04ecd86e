"""Host-side driving of the fixed-point train step: epochs of shuffled minibatches, learning-rate
schedules as powers of two, evaluation, re-initialising an integer graph from float weights, and
reconstructing float weights from the integer ones.

None of this is part of the arithmetic the C side mirrors (that is train_step.py); it decides
which samples form a batch and which 2^lr_exp a step uses, as the device's caller would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from threadpoolctl import threadpool_limits

from backends.numpy_int.interpreter import integer_predictions
from backends.numpy_int.train_step import StepReport, TrainState, train_step
from passes.training_program import LayerProgram, TrainingProgram
from qcc.core.errors import QccError
from qcc.core.float_train import TrainConfig, learning_rate
from qcc.core.ir import Graph
from qcc.core.numerics import fixed
from qcc.core.numerics.binary import sign_pm1


@dataclass
class History:
    """Per epoch (or per report interval): mean loss, training accuracy, lr exponent."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    lr_exp: list[int] = field(default_factory=list)
    clipped: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0


def power_of_two_schedule(config: TrainConfig, max_lr_exp: int = 0) -> list[int]:
    """lr_exp per epoch for plain SGD (seeds/001 trains with vanilla SGD): the float schedule's
    lr / (1 − momentum), the step size at which plain SGD matches SGD with momentum once the
    velocity has built up, rounded to the nearest power of two (in log2) and capped at
    2^max_lr_exp (the first steps of momentum SGD move by lr only; uncapped, plain SGD at the
    full step can diverge where momentum SGD does not)."""
    return [min(max_lr_exp, int(round(math.log2(learning_rate(config, e) /
                                               (1.0 - config.momentum)))))
            for e in range(config.epochs)]


def train_epochs(program: TrainingProgram, integer: Graph, state: TrainState, x: np.ndarray,
                 y: np.ndarray, lr_exps: Sequence[int], batch_size: int, seed: int = 0,
                 progress: bool = False,
                 on_epoch: Callable[[int], None] | None = None) -> History:
    """One epoch per entry of lr_exps; batches from a seeded permutation per epoch, in the
    order qcc.core.float_train draws them (so float and fixed-point runs see the same batches)."""
    rng = np.random.default_rng(seed)
    batches = math.ceil(len(x) / batch_size)
    history = History()
    start = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"), _bar(progress) as bar:
        task = bar.add_task("fixed-point training", total=len(lr_exps) * batches,
                            loss=float("nan"))
        for epoch, lr_exp in enumerate(lr_exps):
            order = rng.permutation(len(x))
            reports = []
            for b in range(batches):
                idx = order[b * batch_size:(b + 1) * batch_size]
                reports.append(train_step(program, integer, state, x[idx], y[idx], lr_exp))
                bar.update(task, advance=1, loss=reports[-1].loss)
            _record(history, reports, lr_exp)
            if on_epoch is not None:
                on_epoch(epoch)
    history.seconds = time.perf_counter() - start
    return history


def train_steps(program: TrainingProgram, integer: Graph, state: TrainState, x: np.ndarray,
                y: np.ndarray, steps: int, batch_size: int, lr_exp: int, seed: int = 0,
                progress: bool = True) -> History:
    """`steps` steps at 2^lr_exp over seeded shuffled passes through (x, y)."""
    history = History()
    reports: list[StepReport] = []
    start = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"), _bar(progress) as bar:
        task = bar.add_task("fixed-point training", total=steps, loss=float("nan"))
        for idx in batch_order(len(x), steps, batch_size, seed):
            reports.append(train_step(program, integer, state, x[idx], y[idx], lr_exp))
            bar.update(task, advance=1, loss=reports[-1].loss)
    _record(history, reports, lr_exp)
    history.seconds = time.perf_counter() - start
    return history


def batch_order(samples: int, steps: int, batch_size: int, seed: int = 0) -> list[np.ndarray]:
    """The sample indices of each of `steps` minibatches: seeded shuffled passes through the
    data, the leftover samples of a pass first in the next (what `qcc train` and
    `qcc train-data` use, so the NumPy and the C train step see the same batches)."""
    rng = np.random.default_rng(seed)
    order = np.zeros(0, np.int64)
    batches = []
    for _ in range(steps):
        if len(order) < batch_size:  # a new pass: the leftover samples come first
            order = np.concatenate([order, rng.permutation(samples)])
        idx, order = order[:batch_size], order[batch_size:]
        batches.append(idx)
    return batches


def _record(history: History, reports: list[StepReport], lr_exp: int) -> None:
    samples = sum(r.samples for r in reports)
    history.loss.append(sum(r.loss * r.samples for r in reports) / max(samples, 1))
    history.accuracy.append(sum(r.correct for r in reports) / max(samples, 1))
    history.lr_exp.append(lr_exp)
    history.steps += len(reports)
    for r in reports:
        for k, v in r.clipped.items():
            history.clipped[k] = history.clipped.get(k, 0) + v


def _bar(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
                    disable=not enabled, transient=True)


def test_error(integer: Graph, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of samples the integer graph misclassifies."""
    with threadpool_limits(limits=1, user_api="blas"):
        pred, _ = integer_predictions(integer, x)
    return float(np.mean(pred != y))


# -- float <-> integer weights ----------------------------------------------------------------
def requantize_weights(integer: Graph, program: TrainingProgram, reference: Graph) -> None:
    """Replace the weight and bias codes of every layer of `program` by the float weights of
    `reference` (same layer names) quantized in the layer's own formats: the same precision
    configuration, another starting point. Saturation is silent (the PDRs are the model's)."""
    for layer in program.layers:
        node = reference.node(layer.name)
        w = node.inputs[1].const.astype(np.float64) * float(node.attrs.get("alpha", 1.0))
        w_val = integer.values[layer.weight]
        if tuple(w.shape) != tuple(w_val.const.shape):
            raise QccError(f"layer {layer.name!r}: weight shape {w.shape} differs from "
                           f"{w_val.const.shape}")
        w_val.const = _weight_codes(layer, w).astype(w_val.const.dtype)
        bias = node.input(2)
        if layer.bias is not None:
            b = np.zeros(layer.out_channels) if bias is None else np.broadcast_to(
                bias.const.astype(np.float64) * float(node.attrs.get("beta", 1.0)),
                (layer.out_channels,))
            integer.values[layer.bias].const = np.round(b / bias_steps(layer)).astype(np.int32)


def _weight_codes(layer: LayerProgram, w: np.ndarray) -> np.ndarray:
    if layer.binary:
        return sign_pm1(w)
    fmt = fixed.FixedFormat(layer.precision[0], layer.w_exp + layer.precision[0] - 1)
    return fixed.quantize(w, fmt)[0]


def bias_steps(layer: LayerProgram) -> np.ndarray:
    """The real step of each bias code: 2^master_exp / (bias_mult 2^-bias_shift)."""
    return math.ldexp(1.0, layer.bias_master_exp) * np.ldexp(
        1.0, np.asarray(layer.bias_shift)) / np.asarray(layer.bias_mult, np.float64)


def float_parameters(integer: Graph, layer: LayerProgram) -> tuple[np.ndarray, np.ndarray | None]:
    """(weights, bias) as floats: exactly what the integer layer computes with."""
    codes = integer.values[layer.weight].const.astype(np.float64)
    if layer.binary:
        shape = [1] * codes.ndim
        shape[layer.channel_axis] = -1
        alpha = np.asarray(layer.alpha_mult, np.float64) * 2.0 ** -layer.alpha_shift
        w = codes * alpha.reshape(shape)
    else:
        w = np.ldexp(codes, layer.w_exp)
    if layer.bias is None:
        return w, None
    return w, integer.values[layer.bias].const.astype(np.float64) * bias_steps(layer)


def write_float_weights(reference: Graph, integer: Graph, program: TrainingProgram) -> None:
    """Put the float weights reconstructed from the integers into the float graph."""
    for layer in program.layers:
        node = reference.node(layer.name)
        w, b = float_parameters(integer, layer)
        w_val = node.inputs[1]
        w_val.const = (w / float(node.attrs.get("alpha", 1.0))).astype(w_val.const.dtype)
        bias = node.input(2)
        if b is not None and bias is not None and bias.is_const:
            b = b / float(node.attrs.get("beta", 1.0))
            bias.const = b.reshape(bias.const.shape).astype(bias.const.dtype)
