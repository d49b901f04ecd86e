"""`--grad-ternary auto`: the number of stochastic ternarization samples S per layer.

seeds/000 (§C.3, after Table 3) averages S stochastic ternarizations of the back-propagated
gradient for each layer's weight update (Algorithm 1) and picks S per layer by the correlation
coefficient R between the update gradient with and without ternarization (the geometric view
of Anderson & Berg 2017), keeping R above 0.7. Here, on the device model itself:

- the compiled program runs with exact gradients on `batches` minibatches of the training data
  (the compiled batch size; the minibatches `qcc train` would draw with the given seed);
- per trained layer and minibatch: the exact weight gradient G = G_Aᵀ A (G_A the layer's rounded
  activation gradient, A the activations its dot products read: sign(x) for sign layers) and,
  for S = 1, 2, ..., the Algorithm 1 estimate s/S · Σ_k StcTern(G_A)_kᵀ A, each sample a new
  draw of a PRNG stream of its own (seed MEASURE_SEED, so training's stream is untouched);
- R(S) = Pearson's correlation coefficient of the two over the layer's weights, averaged over
  the minibatches (two constant vectors: R = 1 when equal, else 0);
- S of the layer: the smallest with R(S) >= R_TARGET; none up to the largest S allowed is an
  error naming the layer and the R it reached.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from backends.numpy_int.interpreter import run_integer
from backends.numpy_int.train_step import backward
from backends.numpy_int.training.loop import batch_order
from passes.training_program import TrainingProgram
from qcc.core.errors import QccError
from qcc.core.ir import Graph
from qcc.core.numerics.binary import stochastic_ternarize
from qcc.core.numerics.rounding import RngState
from qcc.core.numerics.softmax_ce import ce_gradient_q24
from qcc.core.registry import training_lookup

R_TARGET = 0.7  # seeds/000: "keeps the correlation coefficient above 0.7"
MEASURE_BATCHES = 4
MEASURE_SEED = 0x5EED7B9  # the measurement's own PRNG stream
I64 = NDArray[np.int64]


@dataclass(frozen=True)
class SampleChoice:
    """The chosen S of one layer, its R, and R for every S tried (1 .. S)."""

    layer: str
    samples: int
    correlation: float
    curve: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"S": self.samples, "R": round(self.correlation, 4),
                "R_by_S": [round(r, 4) for r in self.curve]}


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's R of two vectors; two constant vectors: 1 if equal, else 0."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    da, db = a - a.mean(), b - b.mean()
    norm = float(np.sqrt(np.dot(da, da) * np.dot(db, db)))
    if norm == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.dot(da, db) / norm)


def _operands(program: TrainingProgram, integer: Graph, x: np.ndarray, y: np.ndarray,
              batches: int, seed: int) -> list[dict[str, tuple[I64, I64]]]:
    """Per minibatch: {trained layer: (G_A codes, activations read)} with exact gradients."""
    out = []
    for idx in batch_order(len(x), batches, program.options.batch, seed):
        env, _ = run_integer(integer, {program.input: x[idx]}, check=False, keep_all=True)
        z = env[program.logits]
        grad = (ce_gradient_q24(z, program.logits_exp, y[idx]).reshape(z.shape),
                program.reps[program.logits])
        operands: dict[str, tuple[I64, I64]] = {}
        backward(program, integer, env, grad, len(idx), RngState(program.options.seed, 0), {},
                 operands)
        out.append(operands)
    return out


def choose_samples(program: TrainingProgram, integer: Graph, x: np.ndarray, y: np.ndarray,
                   max_samples: int, batches: int = MEASURE_BATCHES, seed: int = 0
                   ) -> list[SampleChoice]:
    """S per trained layer (module docstring). `program` must compute exact gradients."""
    if any(layer.samples for layer in program.layers):
        raise QccError("internal: measure the ternarization on a program with exact gradients")
    per_batch = _operands(program, integer, x, y, batches, seed)
    choices = []
    for layer in program.trained:
        node = integer.node(layer.name)
        weight_grad = training_lookup(node, "int_vjp").weight_grad  # type: ignore[attr-defined]
        shape = layer.weight_shape
        exact = [weight_grad(node, xs, ga, shape) for ga, xs in
                 (ops[layer.name] for ops in per_batch)]
        totals = [np.zeros(shape, np.int64) for _ in per_batch]
        rng = RngState(MEASURE_SEED, 0)
        curve: list[float] = []
        for samples in range(1, max_samples + 1):
            rs = []
            for k, ops in enumerate(per_batch):
                ga, xs = ops[layer.name]
                t, scale, rng = stochastic_ternarize(ga, rng)
                totals[k] += weight_grad(node, xs, t.astype(np.int64), shape)
                rs.append(correlation(totals[k] * (scale / samples), exact[k]))
            curve.append(float(np.mean(rs)))
            if curve[-1] >= R_TARGET:
                break
        if curve[-1] < R_TARGET:
            raise QccError(f"--grad-ternary auto: layer {layer.name!r} reaches R = "
                           f"{curve[-1]:.3f} at S = {max_samples}, the most samples allowed "
                           f"(R >= {R_TARGET} needed); allow more (auto:N, N <= 64) or give "
                           "the layer exact gradients")
        choices.append(SampleChoice(layer.name, len(curve), curve[-1], tuple(curve)))
    return choices
