"""Float training on the IR, recording the gradient statistics of the precision methodology.

`train` runs mini-batch SGD (optional momentum and weight decay, constant / step / cosine
learning rate per epoch, seeded shuffling) with the softmax cross-entropy loss of
qcc.core.autodiff, and records per weighted layer what Claim 1 of seeds/001 needs (§3, Appendix E):

- σ_GW, σ_GA: running estimates σ̂² ← (1 − θ)σ̂² + θσ̃² (θ = 0.1) updated every iteration, σ̃² the
  variance over all entries of the mini-batch's G_W (resp. G_A) tensor. As in Appendix E the
  running estimate is dumped once per epoch (after the epoch's last update) and σ_max / σ_min are
  the largest / smallest dumps, so the start-up iterations never count on their own. The
  estimate starts from the first σ̃² rather than from 0 (the paper leaves the start open; from 0
  the first dump would still be biased low by (1 − θ)^(iterations per epoch)).
- λ_max: the square-Jacobian J̄ of G_W w.r.t. G_A (qcc.core.autodiff.square_jacobian) is estimated on
  the first batch of every epoch and folded into a running matrix with the same θ (Appendix E:
  "updates are done every first batch of every epoch"); λ is the largest singular value of the
  running matrix at each update, λ_max the largest of those.

The learning rate used in every epoch is recorded too (γ_min feeds eq. 4). The graph is trained
in place: its weight constants are replaced by the updated arrays.

Divergence: `train` stops with `TrainingDiverged` as soon as a batch's loss or gradients are not
finite, or the gradient norm grows EXPLODING_GRADIENT times above the first batch's. `warm_up`
(the short float run behind `--bits auto`'s gradient statistics) adapts in two ways. Its rates
are scaled to the data per layer (`data_scaled_rates`: a model fed raw 0..255 pixels takes a
first-layer rate about 255² times smaller than one fed unit-range inputs, since the layer's
gradient scales with its input and its update with the input squared). And statistics from a
run that diverged, or whose loss did not fall, describe no training a user would run, so it
retries on a copy of the graph with the rate divided by LR_SEARCH_FACTOR, and stops with one
line when no rate in its range makes the loss fall. Each layer's factor is recorded
(LayerStats.lr_scale): its smallest rate, γ_min of eq. 4, is the schedule's times it.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from qcc.core.autodiff import (
    backward,
    gradient_names,
    largest_singular_value,
    logits_value,
    softmax_cross_entropy,
    square_jacobian,
)
from qcc.core.errors import QccError
from qcc.core.float_exec import Schedule
from qcc.core.ir import Graph
from qcc.core.layers import WeightedLayer, weighted_layers
from qcc.core.registry import registered


@dataclass
class TrainConfig:
    """Hyper-parameters. `schedule`: "constant", "step" (lr·gamma^(epoch // step_epochs)) or
    "cosine" (from lr down to lr·final_ratio over the epochs, per epoch)."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    step_epochs: int = 10
    gamma: float = 0.1
    final_ratio: float = 0.01
    seed: int = 0
    theta: float = 0.1
    progress: bool = True
    # per parameter name: a factor on the learning rate (warm_up's rates scaled to the data)
    lr_scale: dict[str, float] = field(default_factory=dict)


@dataclass
class LayerStats:
    """What one weighted layer recorded; the per-epoch lists hold the dumps described above.

    `numel_gw` = |G_W| = |W|; `numel_ga` = |G_A| per sample (the layer's output per sample).
    """

    node: str
    op_type: str
    weight: str
    output: str
    numel_gw: int
    numel_ga: int
    jacobian_shape: list[int]
    sigma_gw: list[float] = field(default_factory=list)
    sigma_ga: list[float] = field(default_factory=list)
    lambda_running: list[float] = field(default_factory=list)
    lambda_batch: list[float] = field(default_factory=list)
    lr_scale: float = 1.0  # this layer's factor on the schedule's learning rate

    @property
    def sigma_gw_max(self) -> float:
        return max(self.sigma_gw)

    @property
    def sigma_gw_min(self) -> float:
        return min(self.sigma_gw)

    @property
    def sigma_ga_max(self) -> float:
        return max(self.sigma_ga)

    @property
    def sigma_ga_min(self) -> float:
        return min(self.sigma_ga)

    @property
    def lambda_max(self) -> float:
        return max(self.lambda_running)

    def to_dict(self) -> dict:
        summary = {k: getattr(self, k) for k in ("sigma_gw_max", "sigma_gw_min", "sigma_ga_max",
                                                 "sigma_ga_min", "lambda_max")}
        return {**asdict(self), **summary}


@dataclass
class TrainResult:
    """The trained graph, the per-layer statistics and the per-epoch training history."""

    graph: Graph
    config: TrainConfig
    layers: list[LayerStats]
    loss: list[float]
    train_accuracy: list[float]
    val_accuracy: list[float]
    lr: list[float]
    seconds: float
    initial_loss: float | None = None  # mean loss of the untrained graph (warm_up sets it)
    attempts: list[dict] = field(default_factory=list)  # warm_up: every learning rate tried

    @property
    def lr_min(self) -> float:
        return min(self.lr)

    @property
    def loss_fell(self) -> bool:
        """Whether the last epoch's mean loss is below the untrained graph's."""
        return self.initial_loss is not None and bool(self.loss) and \
            self.loss[-1] < self.initial_loss

    def to_dict(self) -> dict:
        """Everything but the graph, as JSON-ready plain data."""
        return {"config": asdict(self.config), "layers": [s.to_dict() for s in self.layers],
                "loss": self.loss, "train_accuracy": self.train_accuracy,
                "val_accuracy": self.val_accuracy, "lr": self.lr, "lr_min": self.lr_min,
                "seconds": self.seconds, "initial_loss": self.initial_loss,
                "attempts": self.attempts}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


EXPLODING_GRADIENT = 1e3  # gradient norm this many times the first batch's: diverging
LR_SEARCH_FACTOR = 10.0
LR_SEARCH_TRIES = 8  # from the starting rate down to 10^-7 of it


class TrainingDiverged(QccError):
    """Float training produced non-finite or exploding values (the message says where)."""


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The learning rate of `epoch` (0-based) under config's schedule."""
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "step":
        return config.lr * config.gamma ** (epoch // config.step_epochs)
    if config.schedule == "cosine":
        low = config.lr * config.final_ratio
        return low + (config.lr - low) * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
    raise QccError(f"unknown learning-rate schedule {config.schedule!r} "
                   "(constant, step, cosine)")


def trainable_parameters(graph: Graph) -> list[str]:
    """Float constants training updates: weights and biases of the weighted layers, and the
    scale and shift of BatchNormalization (its running statistics stay as they are)."""
    names: list[str] = []
    for layer in weighted_layers(graph):
        names += [layer.weight] + ([layer.bias] if layer.bias else [])
    for node in graph.nodes:
        entry = registered(node.op_type)
        for i in entry.trained_inputs if entry is not None else ():
            v = node.input(i)
            if v is not None and v.is_const:
                names.append(v.name)
    return list(dict.fromkeys(n for n in names
                              if np.issubdtype(graph.values[n].const.dtype, np.floating)))


class _Running:
    """θ-running average of an array, started at its first value."""

    def __init__(self, theta: float) -> None:
        self.theta = theta
        self.value: np.ndarray | None = None

    def update(self, sample: np.ndarray | float) -> np.ndarray:
        sample = np.asarray(sample, np.float64)
        # seeds/001 Appendix E: σ̂² ← (1 − θ)σ̂² + θσ̃² (and likewise for the Jacobian)
        self.value = sample if self.value is None else \
            (1 - self.theta) * self.value + self.theta * sample
        return self.value


class _LayerRecorder:
    """Running σ̂² of G_W and G_A and running J̄ of one layer."""

    def __init__(self, graph: Graph, layer: WeightedLayer, theta: float) -> None:
        self.layer = layer
        self.node = graph.node(layer.node)
        self.var_gw, self.var_ga, self.jac = _Running(theta), _Running(theta), _Running(theta)
        out = graph.values[layer.output]
        self.stats = LayerStats(layer.node, layer.op_type, layer.weight, layer.output,
                                graph.values[layer.weight].numel,
                                int(np.prod(out.shape[1:])) if out.shape else 0, [])

    def step(self, env: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self.var_gw.update(np.var(grads[self.layer.weight], dtype=np.float64))
        self.var_ga.update(np.var(grads[self.layer.output], dtype=np.float64))

    def jacobian(self, env: dict[str, np.ndarray]) -> None:
        batch = square_jacobian(self.node, env[self.layer.input], env[self.layer.output].shape)
        self.stats.jacobian_shape = list(batch.shape)
        self.stats.lambda_batch.append(largest_singular_value(batch))
        self.stats.lambda_running.append(largest_singular_value(self.jac.update(batch)))

    def dump(self) -> None:
        self.stats.sigma_gw.append(float(np.sqrt(self.var_gw.value)))
        self.stats.sigma_ga.append(float(np.sqrt(self.var_ga.value)))


class _Sgd:
    """v ← μv + g (+ wd·w for layer weights); w ← w − lr·v."""

    def __init__(self, graph: Graph, names: list[str], config: TrainConfig) -> None:
        self.graph, self.names, self.config = graph, names, config
        self.decayed = {layer.weight for layer in weighted_layers(graph)}
        self.velocity = {n: np.zeros_like(graph.values[n].const) for n in names}

    def step(self, grads: dict[str, np.ndarray], lr: float) -> None:
        c = self.config
        for name in self.names:
            value = self.graph.values[name]
            w = value.const
            g = grads[name].astype(w.dtype, copy=False)
            if c.weight_decay and name in self.decayed:
                g = g + w.dtype.type(c.weight_decay) * w
            v = self.velocity[name] = w.dtype.type(c.momentum) * self.velocity[name] + g
            rate = lr * c.lr_scale.get(name, 1.0)
            value.const = (w - w.dtype.type(rate) * v).astype(w.dtype, copy=False)


def predict(graph: Graph, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The graph's first output for every sample of x, computed in batches."""
    name = graph.inputs[0].name
    x = x.astype(graph.inputs[0].dtype, copy=False)
    out = graph.outputs[0].name
    schedule = Schedule(graph)
    return np.concatenate([schedule.run({name: x[i:i + batch_size]}, check=False)[out]
                           for i in range(0, len(x), batch_size)])


def accuracy(graph: Graph, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Fraction of samples whose largest output is the label."""
    scores = predict(graph, x, batch_size)
    return float(np.mean(scores.reshape(len(x), -1).argmax(axis=1) == y))


def train(graph: Graph, x: np.ndarray, y: np.ndarray, config: TrainConfig | None = None,
          x_val: np.ndarray | None = None, y_val: np.ndarray | None = None) -> TrainResult:
    """Train `graph` (in place) on samples x (N, ...) with integer labels y (N,)."""
    config = config or TrainConfig()
    if len(graph.inputs) != 1:
        raise QccError(f"training needs a single-input graph, this one has {len(graph.inputs)}")
    x = x.astype(graph.inputs[0].dtype, copy=False)
    layers = weighted_layers(graph)
    params = trainable_parameters(graph)
    recorders = [_LayerRecorder(graph, layer, config.theta) for layer in layers]
    sgd = _Sgd(graph, params, config)
    wrt = set(params) | gradient_names(layers)
    logits = logits_value(graph).name
    schedule = Schedule(graph)
    rng = np.random.default_rng(config.seed)
    for r in recorders:
        r.stats.lr_scale = config.lr_scale.get(r.layer.weight, 1.0)
    result = TrainResult(graph, config, [r.stats for r in recorders], [], [], [], [], 0.0)
    start = time.perf_counter()
    batches = math.ceil(len(x) / config.batch_size)
    first_norm: float | None = None
    with _progress_bar(config.progress) as bar:
        task = bar.add_task("training", total=config.epochs * batches, loss=float("nan"))
        for epoch in range(config.epochs):
            lr = learning_rate(config, epoch)
            order = rng.permutation(len(x))
            losses, hits = [], 0
            for b in range(batches):
                idx = order[b * config.batch_size:(b + 1) * config.batch_size]
                env = schedule.run({graph.inputs[0].name: x[idx]}, keep_all=True, check=False)
                loss, d_logits = softmax_cross_entropy(env[logits], y[idx])
                grads = backward(graph, env, {logits: d_logits}, wrt)
                norm = _check_finite(loss, grads, epoch, b, lr)
                first_norm = norm if first_norm is None else first_norm
                if norm > EXPLODING_GRADIENT * max(first_norm, 1e-30):
                    raise TrainingDiverged(
                        f"the gradient norm grew from {first_norm:.3g} to {norm:.3g} by epoch "
                        f"{epoch + 1}, batch {b + 1} (learning rate {lr:.3g})")
                for r in recorders:
                    r.step(env, grads)
                    if b == 0:
                        r.jacobian(env)
                sgd.step(grads, lr)
                losses.append(loss * len(idx))
                hits += int(np.sum(env[logits].reshape(len(idx), -1).argmax(axis=1) == y[idx]))
                bar.update(task, advance=1, loss=loss)
            for r in recorders:
                r.dump()
            result.loss.append(float(np.sum(losses) / len(x)))
            result.train_accuracy.append(hits / len(x))
            result.lr.append(lr)
            if x_val is not None and y_val is not None:
                result.val_accuracy.append(accuracy(graph, x_val, y_val))
    result.seconds = time.perf_counter() - start
    return result


def _check_finite(loss: float, grads: dict[str, np.ndarray], epoch: int, batch: int,
                  lr: float) -> float:
    """The global gradient norm; TrainingDiverged when it or the loss is not finite."""
    norm = math.sqrt(math.fsum(float(np.sum(np.square(g, dtype=np.float64)))
                               for g in grads.values()))
    if not (math.isfinite(loss) and math.isfinite(norm)):
        what = "loss" if not math.isfinite(loss) else "gradient"
        raise TrainingDiverged(f"the {what} is not finite at epoch {epoch + 1}, batch "
                               f"{batch + 1} (learning rate {lr:.3g})")
    return norm


def mean_loss(graph: Graph, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Mean softmax cross-entropy of the graph's logits on (x, y)."""
    logits = logits_value(graph).name
    schedule = Schedule(graph)
    x = x.astype(graph.inputs[0].dtype, copy=False)
    total = 0.0
    for i in range(0, len(x), batch_size):
        env = schedule.run({graph.inputs[0].name: x[i:i + batch_size]}, keep_all=True,
                           check=False)
        total += softmax_cross_entropy(env[logits], y[i:i + batch_size])[0] * len(env[logits])
    return total / len(x)


def data_scaled_rates(graph: Graph, x: np.ndarray, samples: int = 256) -> dict[str, float]:
    """Per weight and bias: 1 / max(1, mean square of the layer's input) on x.

    A layer's weight gradient is its input times the output gradient, so one SGD step moves
    its output by about lr·|input|²: a model fed raw 0..255 pixels takes ~10^4 times too big
    steps in its first layer at a rate that suits the rest. Dividing each layer's rate by its
    input's mean square (when above 1) lets one schedule fit every layer.
    """
    env = Schedule(graph).run({graph.inputs[0].name: x[:samples].astype(
        graph.inputs[0].dtype, copy=False)}, keep_all=True, check=False)
    scale = {}
    for layer in weighted_layers(graph):
        power = float(np.mean(np.square(env[layer.input], dtype=np.float64)))
        factor = 1.0 / max(1.0, power) if math.isfinite(power) else 1.0
        scale.update({name: factor for name in (layer.weight, layer.bias) if name})
    return scale


def warm_up(graph: Graph, x: np.ndarray, y: np.ndarray, config: TrainConfig,
            tries: int = LR_SEARCH_TRIES) -> TrainResult:
    """Train a copy of `graph` until a run's loss falls (module docstring, "Divergence").

    Starts at config.lr and divides it by LR_SEARCH_FACTOR after every run that diverged or
    whose last-epoch loss is not below the untrained graph's; every attempt is recorded in the
    result's `attempts`. Raises TrainingDiverged (one line) when all `tries` rates fail.
    """
    initial = mean_loss(graph, x, y)
    if not math.isfinite(initial):
        raise TrainingDiverged(f"the float model's loss on its warm-up data is {initial}: "
                               "its outputs overflow on these inputs")
    attempts: list[dict] = []
    lr = config.lr
    scale = {**data_scaled_rates(graph, x), **config.lr_scale}
    for _ in range(tries):
        trial = TrainConfig(**{**asdict(config), "lr": lr, "lr_scale": scale})
        try:
            result = train(copy.deepcopy(graph), x, y, trial)
        except TrainingDiverged as e:
            attempts.append({"lr": lr, "outcome": f"diverged: {e}"})
        else:
            result.initial_loss = initial
            if result.loss_fell:
                attempts.append({"lr": lr, "outcome": f"loss fell from {initial:.4g} to "
                                                      f"{result.loss[-1]:.4g}"})
                result.attempts = attempts
                return result
            attempts.append({"lr": lr, "outcome": f"loss did not fall ({initial:.4g} -> "
                                                  f"{result.loss[-1]:.4g})"})
        lr /= LR_SEARCH_FACTOR
    raise TrainingDiverged(
        f"the float warm-up for the gradient statistics did not converge at any learning rate "
        f"from {config.lr:.3g} down to {lr * LR_SEARCH_FACTOR:.3g} (last: "
        f"{attempts[-1]['outcome']}); give labelled --train-data, or inputs the model was "
        "trained on")


def _progress_bar(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
                    disable=not enabled, transient=True)
