"""Fixed-point training from scratch at a precision configuration, as seeds/001 §4 runs it.

seeds/001 assumes a trained float (FL) baseline whose training run was observed: the
feed-forward precisions C_o come from the trained model (`--bits auto`), the gradient and
accumulator formats from the gradient statistics of the FL training run (eq. 2-4, with γ_min
the smallest learning rate of the schedule). FX training then starts from the *same
initialisation* as the FL run (its initial float weights quantized in C_o's weight formats, the
residual below the weight LSB in the accumulators), with the same epochs, batches and schedule,
its learning rates rounded to powers of two. C_{±1} = C_o ± 1 bit in every one of the 5L entries
(ranges kept, steps halved or doubled; the accumulator covers half the new weight LSB).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import numpy as np

from backends.numpy_int.train_step import TrainState, init_state
from backends.numpy_int.training.loop import History, requantize_weights, test_error, train_epochs
from passes import precision
from passes.calibrate import TensorStats
from passes.quantize_graph import LayerConfig, QuantConfig, quantize_graph
from passes.training_program import (
    TrainingProgram,
    TrainOptions,
    build_training_program,
    set_training_formats,
)
from qcc.core.float_train import TrainResult
from qcc.core.ir import Graph

Row = dict[str, float]


def gradient_rows(baseline: TrainResult, config: QuantConfig, integer: Graph,
                  lr_min_exp: int) -> dict[str, Row]:
    """Per layer: the C_o row (B_W, B_A from `config`; B_GW, B_GA, B_acc and the formats from
    the FL run's statistics by eq. 2-4 with γ_min = 2^lr_min_exp)."""
    st = baseline.layers
    grads = precision.gradient_formats([s.sigma_gw_max for s in st], [s.sigma_gw_min for s in st],
                                       [s.sigma_ga_max for s in st], [s.lambda_max for s in st],
                                       [s.numel_gw for s in st], [s.numel_ga for s in st])
    rows = {}
    for s, g in zip(st, grads):
        cfg = config.layer(s.node)
        spec = integer.node(s.node).inputs[1].quant
        r_w = spec.pdr if spec is not None and spec.pdr else 1.0
        acc = precision.accumulator_formats([cfg.weight_bits], [g["step_gw"]],
                                            math.ldexp(1.0, lr_min_exp), r_w=r_w)[0]
        rows[s.node] = {"B_W": cfg.weight_bits, "B_A": cfg.act_bits, "B_GW": g["bits_gw"],
                        "B_GA": g["bits_ga"], "B_acc": acc["bits_acc"],
                        **{k: g[k] for k in ("r_gw", "step_gw", "r_ga", "step_ga")},
                        "r_acc": acc["r_acc"], "step_acc": acc["step_acc"]}
    return rows


def perturb_rows(rows: dict[str, Row], delta: int) -> dict[str, Row]:
    """C_o + delta·1 for the gradient and accumulator columns: ranges kept, steps scaled by
    2^-delta; the accumulator still spans half a weight LSB, whose step scales by 2^-delta."""
    out = {}
    for name, row in rows.items():
        new = dict(row)
        for key in ("B_W", "B_A", "B_GW", "B_GA", "B_acc"):
            new[key] = row[key] + delta
        new["step_gw"] = row["step_gw"] * 2.0 ** -delta
        new["step_ga"] = row["step_ga"] * 2.0 ** -delta
        new["r_acc"] = row["r_acc"] * 2.0 ** -delta
        new["step_acc"] = new["r_acc"] * 2.0 ** -(new["B_acc"] - 1)
        out[name] = new
    return out


def perturb_config(config: QuantConfig, delta: int) -> QuantConfig:
    """C_o + delta·1 for the feed-forward precisions (B_W, B_A of every layer, the default)."""
    layers = {name: LayerConfig(c.weight_bits + delta, c.act_bits + delta, c.scheme,
                                c.binary_activations) for name, c in config.layers.items()}
    return QuantConfig(config.scheme, config.default_bits + delta, config.output_bits, layers)


def binary_config(config: QuantConfig) -> QuantConfig:
    """Every weighted layer with ±α weights (1 bit), activations as in `config`."""
    layers = {name: LayerConfig(1, c.act_bits, "binary") for name, c in config.layers.items()}
    return QuantConfig(config.scheme, config.default_bits, config.output_bits, layers)


@dataclass
class ScratchRun:
    """An FX training run from the float initialisation; `error` is the final test error."""

    program: TrainingProgram
    integer: Graph
    state: TrainState
    history: History
    error: float


def prepare(trained: Graph, initial: Graph, stats: dict[str, TensorStats],
            config: QuantConfig, rows: dict[str, Row], options: TrainOptions
            ) -> tuple[TrainingProgram, Graph, TrainState]:
    """The integer graph of the trained model at `config` (its ranges), gradient formats from
    `rows`, weights replaced by the initial float weights in the same formats; binary layers
    take their α from the initial weights instead."""
    binary = any(c.scheme == "binary" for c in config.layers.values())
    integer = quantize_graph(initial if binary else trained, stats,
                             replace(config, for_training=True))
    set_training_formats(integer, rows)
    program = build_training_program(integer, options)
    if not binary:
        requantize_weights(integer, program, initial)
    return program, integer, init_state(program, integer, initial)


def train_from_scratch(trained: Graph, initial: Graph, stats: dict[str, TensorStats],
                       config: QuantConfig, rows: dict[str, Row], options: TrainOptions,
                       data: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                       lr_exps: list[int], batch: int, seed: int = 0) -> ScratchRun:
    """prepare(), then the epochs of lr_exps; returns the run and its test error."""
    program, integer, state = prepare(trained, copy.deepcopy(initial), stats, config, rows,
                                      options)
    history = train_epochs(program, integer, state, *data, lr_exps, batch, seed)
    return ScratchRun(program, integer, state, history, test_error(integer, *test))
