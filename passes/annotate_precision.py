"""annotate_precision: `--bits auto`, the per-tensor precision methodology of seeds/001.

Implements the pipeline of DESIGN.md ("--bits auto") on top of the pure arithmetic in
passes/precision.py:

1. Noise gains E_{W_l->p_m}, E_{A_l->p_m} (eq. 6) from one forward and M-1 backward passes per
   estimation sample over the output differences Z_i - Z_yhat (Z = the logits).
2. Feed-forward precisions B = rnd(log2 sqrt(E / E_min)) + B_min (eq. 1, as printed: the
   allocations under a memory budget use the gains scaled to each tensor's range instead,
   precision.step_scaled_gains, since they compare real noise across tensors). B_min is swept
   upward and the smallest whose mismatch p_m = Pr(yhat_fl != yhat_fx), measured by running the
   real integer graph on the held-out half of the calibration samples, is certified by its
   one-sided 95 % Clopper-Pearson upper bound to be at most the target is kept (C_o); too few
   samples to certify the target at all is an error when the target was asked for; else the
   sweep uses the measured p_m <= target and the bound of the result is what is certified.
   p_m is also measured at C_o - 1 and C_o + 1 (B_min - 1, B_min + 1). Widths are stored as a
   microcontroller stores them, and a flash / RAM budget is met by the allocations of
   passes/allocate_widths.py; every configuration tried is reported.
3. Gradient statistics (sigma_GW max/min, sigma_GA max, lambda_max: Lemma 4) from float training
   on the IR (qcc.core.float_train.warm_up), on a copy: the model's weights are not changed. Only
   a run whose loss fell counts (a diverging run is retried at smaller learning rates).
4. Gradient and accumulator formats from eq. 2-4, and the costs C_W, C_A, C_M, C_C (§2.2) of
   C_o against the float baseline.

Bits from ranges follow Section 2.1's identity B = log2(r / Delta) + 1 (passes/precision.py,
BITS_IDENTITY) everywhere. Feed-forward tensors are capped at MAX_BITS = 16 bits; gradient and
accumulator widths are never capped (a layer whose statistics cannot give them is marked
`unavailable`, with the reason).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from passes import precision
from passes.allocate_widths import (
    Candidate,
    MemoryBudget,
    MemoryUse,
    NoiseModel,
    Widths,
    fit_ram,
    storable_bits,
    weight_allocation,
    weight_options,
)
from passes.calibrate import TensorStats, calibrate
from passes.quantize_graph import LayerConfig, QuantConfig, quantize_graph
from passes.schemes import get_scheme
from passes.weight_noise import measured_weight_noise
from passes.weight_rounding import layer_inputs
from qcc.core.autodiff import backward, logits_value
from qcc.core.errors import QccError
from qcc.core.float_exec import float_predictions, run_float
from qcc.core.float_train import TrainConfig, TrainResult, warm_up
from qcc.core.ir import Graph, Node
from qcc.core.layers import WeightedLayer, weighted_layers, weighted_nodes
from qcc.core.ops.grads import conv_geometry, im2col
from qcc.core.progress import steps, track

# Class decisions of an integer graph on a batch: passes do not execute integer graphs themselves;
# the driver hands in its backend's (the NumPy interpreter's) predictions.
IntegerPredictions = Callable[[Graph, np.ndarray], np.ndarray]

MAX_BITS = 16
GAIN_SAMPLES = 64  # estimation samples for eq. 6 (each costs M - 1 backward passes)


@dataclass
class AutoResult:
    config: QuantConfig
    integer: Graph
    stats: dict[str, TensorStats]
    report: dict[str, Any]


def noise_gains(graph: Graph, x: np.ndarray, layers: list[WeightedLayer], chunk: int = 4
                ) -> tuple[list[float], list[float]]:
    """eq. 6 per layer: (E_{W_l->p_m}, E_{A_l->p_m}) averaged over the samples of x.

    The M - 1 backward passes of a sample (seeds e_i - e_yhat, i != yhat) run as one batched
    backward over the sample's forward tensors repeated M times (the yhat row has a zero seed).
    Activation gradients come out per row; the weight gradient of each row is rebuilt from the
    layer's input and that row's output gradient (`_row_weight_sq_norms`), since a batched
    backward would sum them.
    """
    logits = logits_value(graph).name
    wrt = {layer.input for layer in layers} | {layer.output for layer in layers}
    names = [v.name for v in graph.values.values() if not v.is_const]
    z_all, sq_w, sq_a = [], [], []
    for start in track(range(0, len(x), chunk), f"noise gains (eq. 6), {len(x)} samples"):
        part = x[start:start + chunk]
        env = run_float(graph, {graph.inputs[0].name: part}, keep_all=True, check=False)
        z = env[logits].reshape(len(part), -1).astype(np.float64)
        classes = z.shape[1]
        rows = np.eye(classes)[None, :, :] - np.eye(classes)[z.argmax(axis=1)][:, None, :]
        repeated = {n: np.repeat(env[n], classes, axis=0) if n in names else a
                    for n, a in env.items()}
        seed = rows.reshape(len(part) * classes, *env[logits].shape[1:]).astype(
            env[logits].dtype)
        grads = backward(graph, repeated, {logits: seed}, wrt)
        node_of = {n.name: n for n in graph.nodes}
        w_rows = np.stack([_row_weight_sq_norms(node_of[layer.node], env[layer.input],
                                                grads[layer.output], classes)
                           for layer in layers], axis=1)  # (samples, layers, classes)
        a_rows = np.stack([_row_sq(grads[layer.input]).reshape(len(part), classes)
                           for layer in layers], axis=1)
        z_all.append(z)
        sq_w.append(w_rows)
        sq_a.append(a_rows)
    z_all, sq_w, sq_a = np.concatenate(z_all), np.concatenate(sq_w), np.concatenate(sq_a)
    gains_w = [precision.noise_gain(z_all, sq_w[:, k]) for k in range(len(layers))]
    gains_a = [precision.noise_gain(z_all, sq_a[:, k]) for k in range(len(layers))]
    if not all(math.isfinite(g) and g > 0 for g in gains_w + gains_a):
        raise QccError("noise gains are not finite: a calibration sample has tied logits")
    return gains_w, gains_a


def _row_sq(g: np.ndarray) -> np.ndarray:
    return np.square(g.reshape(len(g), -1), dtype=np.float64).sum(axis=1)


def _row_weight_sq_norms(node: Node, a: np.ndarray, g: np.ndarray, classes: int) -> np.ndarray:
    """(samples, classes): |dW|² for every seed row, from the layer input of each sample and
    the rows' output gradients (the weight-gradient half of the layer's VJP, row by row)."""
    n = len(a)
    if node.op_type == "Conv":
        w_shape = node.inputs[1].const.shape
        groups = int(node.attrs.get("group", 1))
        geom = conv_geometry(node, a.shape, w_shape, g.shape)
        k = int(np.prod(geom.kernel))
        cols = im2col(geom.pad(a.swapaxes(0, 1)), geom)  # (C, K, N, *out)
        cols = cols.reshape(groups, a.shape[1] // groups * k, n, -1).transpose(2, 0, 3, 1)
        dy = g.reshape(n, classes, groups, w_shape[0] // groups, -1)
        dw = np.matmul(dy, cols[:, None])  # (N, classes, groups, Mg, Cg·K)
        return np.square(dw, dtype=np.float64).sum(axis=(2, 3, 4))
    # Gemm / MatMul on (N, K) inputs: dW of one row is alpha · x ⊗ g, |dW|² = α²|x|²|g|²
    alpha = float(node.attrs.get("alpha", 1.0)) if node.op_type == "Gemm" else 1.0
    if node.op_type == "Gemm" and node.attrs.get("transA", 0):
        raise QccError(f"noise gains of Gemm {node.name!r} with transA are not supported")
    x_sq = _row_sq(a)
    return alpha ** 2 * x_sq[:, None] * _row_sq(g).reshape(n, classes)


def feedforward_config(offsets_w: list[int], offsets_a: list[int], b_min: int,
                       layers: list[WeightedLayer], scheme: str) -> QuantConfig:
    """eq. 1 with B_min, every precision clipped to [1, MAX_BITS] and weights to the widths the
    scheme supports (APoT: 2 to 8 bits)."""
    w_lo, w_hi = get_scheme(scheme).weight_bits

    def clip(b: int, lo: int = 1, hi: int = MAX_BITS) -> int:
        return int(min(max(b, lo), hi))

    config = QuantConfig(scheme=scheme, default_bits=clip(max(offsets_a) + b_min),
                         output_bits=MAX_BITS)
    for layer, ow, oa in zip(layers, offsets_w, offsets_a):
        config.layers[layer.node] = LayerConfig(clip(ow + b_min, w_lo, w_hi),
                                                clip(oa + b_min), scheme)
    return config


def count_mismatches(integer: Graph, x: np.ndarray, float_pred: np.ndarray,
                     predict: IntegerPredictions, stop_above: int | None = None,
                     batch: int = 128) -> int:
    """How many decisions of the integer graph on x differ from float_pred; stops counting
    once the count exceeds `stop_above` (then it is a lower bound)."""
    mismatches = 0
    for start in range(0, len(x), batch):
        pred = predict(integer, x[start:start + batch])
        mismatches += int(np.sum(pred != float_pred[start:start + batch]))
        if stop_above is not None and mismatches > stop_above:
            break
    return mismatches


def measure_mismatch(graph: Graph, integer: Graph, x: np.ndarray, float_pred: np.ndarray,
                     predict: IntegerPredictions, give_up_above: float | None = None,
                     batch: int = 128) -> float:
    """p_m of the integer graph on x; stops early once it must exceed `give_up_above`."""
    stop = None if give_up_above is None else int(math.floor(give_up_above * len(x)))
    return count_mismatches(integer, x, float_pred, predict, stop, batch) / len(x)


def gradient_statistics(graph: Graph, x: np.ndarray, y: np.ndarray | None,
                        epochs: int, lr: float) -> TrainResult:
    """Float warm-up on a copy of the graph, recording σ and λ (seeds/001 §3), from a run
    whose loss fell (qcc.core.float_train.warm_up: divergence detection, learning-rate
    search); TrainingDiverged (one line) when no learning rate makes the loss fall."""
    if y is None:  # no labels: the float model's own decisions stand in for them
        y = float_predictions(graph, x)
    config = TrainConfig(epochs=epochs, batch_size=min(32, len(x)), lr=lr, momentum=0.9,
                         schedule="cosine", progress=False)
    with np.errstate(over="ignore", invalid="ignore"), \
            steps(f"gradient statistics: float warm-up, {epochs} epochs"):
        return warm_up(graph, x, y, config)  # divergence is detected, not printed


def certification_goal(pm_target: float, held_out: int, strict: bool) -> tuple[int, str | None]:
    """The most mismatches of `held_out` samples the sweep accepts, and a note when that is not
    a certificate of the target. With enough samples: the most whose Clopper-Pearson bound is
    <= target. Too few to certify the target even with no mismatch: an error when the target
    was asked for (`strict`); else the sweep accepts the measured p_m <= target (seeds/001's
    own rule) and the report certifies what the bound of the result allows instead."""
    needed = precision.samples_to_certify(pm_target)
    if held_out >= needed:
        return _allowed_mismatches(pm_target, held_out), None
    best = precision.mismatch_upper_bound(0, held_out)
    message = (f"p_m <= {100 * pm_target:.3g} % cannot be certified with {held_out} held-out "
               f"samples: even with no mismatch the 95 % bound is {100 * best:.3g} %; it needs "
               f"at least {needed} held-out samples (--calib with {2 * needed} inputs, half "
               "are held out)")
    if strict:
        raise QccError(message)
    return int(math.floor(pm_target * held_out)), message + (
        f"; B_min swept on the measured p_m <= {100 * pm_target:.3g} % instead, and the bound "
        "of the result is what is certified")


def annotate_precision(graph: Graph, x_calib: np.ndarray, predict: IntegerPredictions,
                       pm_target: float = 0.01,
                       train_x: np.ndarray | None = None, train_y: np.ndarray | None = None,
                       lr_min: float | None = None, scheme: str = "fixed",
                       train_epochs: int = 3, train_lr: float = 0.01, *,
                       strict_target: bool = False, budget: MemoryBudget | None = None,
                       memory: MemoryUse | None = None, for_training: bool = False,
                       weight_rounding: str = "gptq") -> AutoResult:
    """The whole `--bits auto` methodology (module docstring); returns the compiled
    configuration (C_o, or the budget's choice) and its report. `for_training`: the graph will
    run the training step (QuantConfig.for_training). `weight_rounding` "gptq": weights below 8
    bits get passes/weight_rounding.py's codes (H from the estimation half), "nearest": not."""
    if not 0 < pm_target < 1:
        raise QccError(f"the p_m target must be between 0 and 1, got {pm_target}")
    if len(x_calib) < 4:
        raise QccError("--bits auto needs at least 4 calibration samples")
    layers = weighted_layers(graph)
    if not layers:
        raise QccError("the model has no weighted layer (Conv, Gemm or MatMul with constant "
                       "weights) to quantize")
    budget = budget or MemoryBudget()
    half = len(x_calib) // 2
    x_est, x_held = x_calib[:half], x_calib[half:]
    allowed, goal_note = certification_goal(pm_target, len(x_held), strict_target)
    stats = calibrate(graph, x_est)
    gains_w, gains_a = noise_gains(graph, x_est[:GAIN_SAMPLES], layers)
    model = NoiseModel([graph.values[la.weight].numel for la in layers],
                       *_scaled_gains(graph, stats, layers, scheme, gains_w, gains_a))
    offsets_w, offsets_a = precision.feedforward_offsets(gains_w, gains_a)
    offsets_w, offsets_a = [int(o) for o in offsets_w], [int(o) for o in offsets_a]
    float_pred = float_predictions(graph, x_held)
    names = [la.node for la in layers]
    rounding = layer_inputs(graph, x_est) if weight_rounding == "gptq" else None
    if budget.flash_bytes is not None:  # the knapsack's weight noise, measured up to 8 bits
        narrow = tuple(b for b in weight_options(scheme) if b <= 8)
        model.measured_w = measured_weight_noise(graph, x_est, weighted_nodes(graph), scheme,
                                                 narrow, rounding)

    def configure(widths: Widths) -> QuantConfig:
        config = widths.config(names, scheme, for_training)
        config.weight_rounding = rounding
        return config

    def plan(widths: Widths) -> tuple[Graph, int, int | None]:
        integer = quantize_graph(graph, stats, configure(widths))
        flash, ram = memory(integer) if memory is not None else (
            model.weight_bits(widths.weights) // 8, None)
        return integer, flash, ram

    def measure(label: str, widths: Widths, stop_above: int | None = None) -> Candidate:
        integer, flash, ram = plan(widths)
        k = count_mismatches(integer, x_held, float_pred, predict, stop_above)
        return Candidate(label, widths, model.predicted(widths), flash, ram, k, len(x_held),
                         integer, stopped=stop_above is not None and k > stop_above)

    _check_budget_reachable(budget, scheme, names, memory, lambda w: plan(w)[0])

    def eq1(b_min: int) -> Widths:
        config = feedforward_config(offsets_w, offsets_a, b_min, layers, scheme)
        return Widths([storable_bits(config.layer(n).weight_bits) for n in names],
                      [storable_bits(config.layer(n).act_bits) for n in names],
                      storable_bits(config.default_bits))

    chosen = None
    sweep: list[tuple[int, float]] = []  # (B_min, p_m) as measured, for the report
    for b_min in track(range(1, MAX_BITS + 1), "B_min sweep (measured p_m per B_min)"):
        cand = measure(f"C_o (B_min = {b_min})", eq1(b_min), stop_above=allowed)
        sweep.append((b_min, cand.p_m))
        if cand.mismatches <= allowed:
            chosen = (b_min, cand)
            break
    if chosen is None:
        raise QccError(f"no B_min up to {MAX_BITS} bits certifies p_m <= {100 * pm_target:.3g} % "
                       f"(at {MAX_BITS} bits {cand.mismatches} or more of {len(x_held)} "
                       "held-out samples mismatch)")
    b_min, c_o = chosen
    below = measure(f"C_o-1 (B_min = {b_min - 1})", eq1(b_min - 1)) if b_min > 1 else None
    above = measure(f"C_o+1 (B_min = {b_min + 1})", eq1(b_min + 1))
    reference = measure("uniform 8-bit", Widths([8] * len(names), [8] * len(names), 8))
    tried = [c for c in (below, c_o, above, reference) if c is not None]
    compiled, notes = _choose(c_o, model, budget, scheme, measure, plan, tried, allowed)
    if goal_note:
        notes.insert(0, goal_note)

    x_train = train_x if train_x is not None else x_est
    trained = gradient_statistics(graph, x_train, train_y if train_x is not None else None,
                                  train_epochs, train_lr)
    user_lr_min = lr_min is not None  # --lr-min, or --train's --lr: one rate for every layer
    lr_min = lr_min if user_lr_min else trained.lr_min
    config = configure(compiled.widths)
    integer = compiled.integer
    report = _report(graph, integer, layers, config, gains_w, gains_a, offsets_w, offsets_a,
                     b_min, pm_target, (below and below.p_m, c_o.p_m, above.p_m),
                     len(x_held), trained, lr_min, train_x is not None, user_lr_min)
    report["B_min_sweep"] = _sweep_points(sweep, allowed / len(x_held),
                                          below and below.p_m, above.p_m)
    for entry, s_w, s_a in zip(report["layers"], model.scaled_w, model.scaled_a):
        entry.update(E_W_scaled=s_w, E_A_scaled=s_a)  # what the knapsack used
    report.update(_guarantee(pm_target, c_o, compiled, tried, budget, model, notes, trained,
                             (below, above)))
    _annotate_nodes(integer, report["layers"])
    return AutoResult(config, integer, stats, report)


def _check_budget_reachable(budget: MemoryBudget, scheme: str, names: list[str],
                            memory: MemoryUse | None, build: Callable[[Widths], Graph]) -> None:
    """Refuse a budget even the smallest widths exceed before sweeping: flash at the narrowest
    weights the scheme packs, the arena at 8-bit activations and int8 weights (packed weights
    need an unpacking row in the arena). Plans only, nothing measured."""
    if not budget.active:
        return
    if memory is None:
        raise QccError("a memory budget needs the C backend's memory plan (none was given)")
    narrowest = weight_options(scheme)[0]
    flash = memory(build(Widths([narrowest] * len(names), [8] * len(names), 8)))[0]
    ram = memory(build(Widths([8] * len(names), [8] * len(names), 8)))[1]
    if budget.flash_bytes is not None and flash > budget.flash_bytes:
        raise QccError(f"--flash-budget {budget.flash_bytes} bytes is below the smallest weight "
                       f"storage of this model ({flash} bytes at {narrowest}-bit weights)")
    if budget.ram_bytes is not None and ram > budget.ram_bytes:
        raise QccError(f"--ram-budget {budget.ram_bytes} bytes is below the smallest arena of "
                       f"this model ({ram} bytes with 8-bit activations)")


def _allowed_mismatches(goal: float, samples: int) -> int:
    """The most mismatches of `samples` whose Clopper-Pearson bound is still <= goal."""
    k = -1
    while k + 1 <= samples and precision.mismatch_upper_bound(k + 1, samples) <= goal:
        k += 1
    return max(k, 0)


def _scaled_gains(graph: Graph, stats: dict[str, TensorStats], layers: list[WeightedLayer],
                  scheme: str, gains_w: list[float], gains_a: list[float]
                  ) -> tuple[list[float], list[float]]:
    """eq. 6 gains times c² (precision.step_scaled_gains), with each tensor's step at 8 bits
    from the scheme's own format (per-channel steps: their root mean square)."""
    fmt = get_scheme(scheme)
    steps_w, steps_a = [], []
    for layer in layers:
        w = graph.values[layer.weight].const
        _, w_fmt = fmt.weight(w, 8, 0)
        steps_w.append(float(np.sqrt(np.mean(np.square(w_fmt.scales)))))
        steps_a.append(float(np.sqrt(np.mean(np.square(fmt.activation(stats[layer.input],
                                                                       8).scales)))))
    eight = [8] * len(layers)
    return (precision.step_scaled_gains(gains_w, steps_w, eight),
            precision.step_scaled_gains(gains_a, steps_a, eight))


def _choose(c_o: Candidate, model: NoiseModel, budget: MemoryBudget, scheme: str,
            measure: Callable[..., Candidate], plan: Callable[[Widths], tuple],
            tried: list[Candidate], allowed: int) -> tuple[Candidate, list[str]]:
    """The configuration to compile (passes/allocate_widths.py): without a budget C_o, or C_o
    narrowed to 8 bits when that still certifies the goal; with a budget the candidate that
    fits with the fewest measured mismatches (then the least flash, then RAM)."""
    options = weight_options(scheme)
    notes: list[str] = []
    overhead = c_o.flash_bytes - model.weight_bits(c_o.widths.weights) // 8
    if not budget.active:
        return _narrow(c_o, model, options, measure, tried, allowed, overhead)
    reference = next(c for c in tried if c.label == "uniform 8-bit")
    # flash holds the weights, RAM the activations: the 8-bit weights of the uniform reference
    # with the activations C_o needs cost the reference's flash
    eight_bit_weights = Widths(list(reference.widths.weights), list(c_o.widths.activations),
                               c_o.widths.other)
    starts = [("C_o", c_o.widths), ("uniform 8-bit", reference.widths),
              ("8-bit weights, C_o activations", eight_bit_weights)]
    if budget.flash_bytes is not None:
        starts = [(label, w) for label, w in starts if plan(w)[1] <= budget.flash_bytes]
        # what flash holds besides the weight codes (biases, ...) at 8-bit weights: C_o's
        # wider weights carry wider biases, which would leave the knapsack too little room
        overhead = reference.flash_bytes - model.weight_bits(reference.widths.weights) // 8
        room = 8 * (budget.flash_bytes - overhead)
        for _ in range(3):  # the packing rounds per tensor: shrink by any excess and retry
            weights = weight_allocation(model, options, room)
            if weights is None:
                smallest = model.weight_bits([options[0]] * len(model.numel_w)) // 8 + overhead
                raise QccError(f"--flash-budget {budget.flash_bytes} bytes is below the "
                               f"smallest weight storage of this model ({smallest} bytes at "
                               f"{options[0]}-bit weights)")
            acts, other = c_o.widths.activations, c_o.widths.other
            knapsack = [("knapsack", Widths(weights, list(acts), other)),
                        ("knapsack, activations >= 8 bits",
                         Widths(weights, [max(b, 8) for b in acts], max(other, 8)))]
            # the same knapsack over 8 and 16 bits only: where the noise model underrates
            # what 2 and 4 bits do to a layer, the measurement picks this one
            wide = weight_allocation(model, tuple(w for w in options if w >= 8), room)
            if wide is not None and wide != weights:
                knapsack.append(("knapsack over 8/16-bit weights", Widths(wide, list(acts),
                                                                          other)))
            flash = max(plan(w)[1] for _, w in knapsack)
            if flash <= budget.flash_bytes:
                break
            room -= 8 * (flash - budget.flash_bytes)
        starts = knapsack + starts
    if budget.ram_bytes is not None:
        fitted = []
        for label, widths in starts:
            fit = fit_ram(widths, model, lambda w: plan(w)[2], budget.ram_bytes)
            if fit is not None:
                fitted.append((label if fit == widths else f"{label}, activations fitted to "
                               "the RAM budget", fit))
        if not fitted:
            raise QccError(f"--ram-budget {budget.ram_bytes} bytes is below the smallest "
                           "arena of this model with 8-bit activations")
        starts = fitted
    seen, measured = [], []
    for label, widths in starts:
        if any(widths == s for s in seen):
            continue
        seen.append(widths)
        cand = measure(f"budget: {label}", widths)
        if (budget.flash_bytes is None or cand.flash_bytes <= budget.flash_bytes) and (
                budget.ram_bytes is None or cand.ram_bytes <= budget.ram_bytes):
            measured.append(cand)
        tried.append(cand)
    if not measured:
        raise QccError("no configuration within the memory budget could be planned")
    best = min(measured, key=lambda c: (c.mismatches, c.flash_bytes, c.ram_bytes or 0))
    if best.mismatches > allowed:
        notes.append(f"within the budget the best measured p_m is {100 * best.p_m:.2f} % "
                     f"(95 % bound {100 * best.p_m_upper:.2f} %): the target is not certified")
    return best, notes


NARROWING_FLASH = (1.0, 1.25, 1.5, 1.75)  # x the flash of uniform 8-bit weights


def _narrow(c_o: Candidate, model: NoiseModel, options: tuple[int, ...],
            measure: Callable[..., Candidate], tried: list[Candidate], allowed: int,
            overhead: int) -> tuple[Candidate, list[str]]:
    """No budget: C_o stores its widths 9-15 at 16 bits (allocate_widths.storable_bits). Look
    for less memory that still certifies the goal: activations capped at 8 bits or as in C_o,
    weights by the knapsack at NARROWING_FLASH times the flash of 8-bit weights (ascending,
    the first that certifies per activation choice); the least flash + RAM wins, else C_o."""
    w = c_o.widths
    if max(w.weights + w.activations + [w.other]) <= 8:
        return c_o, []
    eight = model.weight_bits([8] * len(w.weights)) // 8 + overhead
    choices = [([min(b, 8) for b in w.activations], min(w.other, 8), "activations <= 8 bits"),
               (w.activations, w.other, "activations as C_o")]
    found = []
    for acts, other, what in choices[:1] if max(w.activations) <= 8 else choices:
        for factor in NARROWING_FLASH:
            room = int(8 * (factor * eight - overhead))
            if room >= model.weight_bits(w.weights):
                break  # no smaller than C_o
            weights = weight_allocation(model, options, room)
            if weights is None:
                continue
            cand = measure(f"C_o narrowed: knapsack at {factor:g}x 8-bit flash, {what}",
                           Widths(weights, list(acts), other), stop_above=allowed)
            tried.append(cand)
            if cand.mismatches <= allowed:
                found.append(cand)
                break
    if found:
        return min(found, key=lambda c: (c.flash_bytes + (c.ram_bytes or 0))), []
    return c_o, ["C_o's widths 9-15 stay at 16 bits: no narrower configuration tried "
                 f"(up to {NARROWING_FLASH[-1]:g}x the 8-bit flash) certifies the goal"]


def _guarantee(pm_target: float, c_o: Candidate, compiled: Candidate,
               tried: list[Candidate], budget: MemoryBudget, model: NoiseModel, notes: list[str],
               trained: TrainResult, neighbours: tuple) -> dict[str, Any]:
    """The precision.json fields of the certificate, the memory and the configurations."""
    bound = compiled.p_m_upper
    reference = next(c for c in tried if c.label == "uniform 8-bit")
    return {
        "confidence": precision.CONFIDENCE,
        "p_m_upper": {"C_o-1": neighbours[0] and neighbours[0].p_m_upper,
                      "C_o": c_o.p_m_upper, "C_o+1": neighbours[1].p_m_upper},
        "certified": {"p_m_upper": bound, "target": pm_target, "met": bound <= pm_target,
                      "mismatches": compiled.mismatches, "samples": compiled.samples,
                      "method": "one-sided Clopper-Pearson bound on the held-out samples"},
        "compiled": {**compiled.to_dict(), "uniform_8bit": reference.to_dict()},
        "budget": {"flash_bytes": budget.flash_bytes, "ram_bytes": budget.ram_bytes,
                   "allocation": "weights: exact multiple-choice knapsack (dynamic "
                                 "programming) minimizing the predicted p_m under the flash "
                                 "budget; activations: 16 -> 8 bits greedily by predicted "
                                 "noise until the arena fits; measured p_m decides"}
        if budget.active else None,
        "configurations": [c.to_dict() for c in tried],
        "warm_up": {"initial_loss": trained.initial_loss, "final_loss": trained.loss[-1],
                    "loss_fell": trained.loss_fell, "attempts": trained.attempts},
        "notes": notes,
    }


def _sweep_points(sweep: list[tuple[int, float]], pm_target: float, pm_below: float | None,
                  pm_above: float) -> list[dict[str, Any]]:
    """p_m against B_min: the sweep stops measuring a B_min once p_m must exceed the target,
    so those points are lower bounds (`exact` false); C_o - 1 and C_o + 1 are measured fully."""
    points = [{"B_min": b, "p_m": pm, "exact": pm <= pm_target} for b, pm in sweep]
    if pm_below is not None:
        points[-2] = {"B_min": sweep[-1][0] - 1, "p_m": pm_below, "exact": True}
    return points + [{"B_min": sweep[-1][0] + 1, "p_m": pm_above, "exact": True}]


def _weight_pdr(integer: Graph, node_name: str) -> float:
    node = integer.node(node_name)
    spec = node.inputs[1].quant
    return float(spec.pdr) if spec is not None and spec.pdr else 1.0


def _report(graph: Graph, integer: Graph, layers: list[WeightedLayer], config: QuantConfig,
            gains_w, gains_a, offsets_w, offsets_a, b_min: int, pm_target: float,
            pms: tuple, held_out: int, trained: TrainResult, lr_min: float,
            user_train_data: bool, user_lr_min: bool = False) -> dict[str, Any]:
    st = trained.layers
    bits_w = [config.layer(layer.node).weight_bits for layer in layers]
    bits_a = [config.layer(layer.node).act_bits for layer in layers]
    grads, accs, reasons = [], [], []
    for s, bw, layer in zip(st, bits_w, layers):
        # γ_min of eq. 4 per layer: the warm-up's rates are scaled per layer to the data
        layer_lr = lr_min if user_lr_min else lr_min * s.lr_scale
        g, a, why = _gradient_row(s, bw, layer_lr, _weight_pdr(integer, layer.node))
        grads.append(g)
        accs.append(a)
        reasons.append(why)
    # no silent cap: B_GW, B_GA, B_acc are what eq. 2-4 give; None where the warm-up could not
    # estimate them (`unavailable` says why), costed as float tensors
    rows = [(bw, ba, g and int(g["bits_gw"]), g and int(g["bits_ga"]), a and int(a["bits_acc"]))
            for bw, ba, g, a in zip(bits_w, bits_a, grads, accs)]
    sizes = _layer_sizes(graph, layers)
    fl = precision.training_costs(precision.float_config(len(layers)), *sizes)
    fx = precision.training_costs(rows, *sizes)
    entries = []
    for i, layer in enumerate(layers):
        node = integer.node(layer.node)
        entries.append({
            "name": layer.node, "op": layer.op_type,
            "B_W": rows[i][0], "B_A": rows[i][1], "B_GW": rows[i][2], "B_GA": rows[i][3],
            "B_acc": rows[i][4],
            "weight_format": str(node.inputs[1].quant), "activation_format":
                str(node.inputs[0].quant), "alpha": node.inputs[1].quant.alpha,
            "E_W": gains_w[i], "E_A": gains_a[i], "offset_W": offsets_w[i],
            "offset_A": offsets_a[i],
            **{k: grads[i] and grads[i][k] for k in ("r_gw", "step_gw", "r_ga", "step_ga")},
            **{k: accs[i] and accs[i][k] for k in ("r_acc", "step_acc")},
            "unavailable": reasons[i],
            "sigma_gw_max": st[i].sigma_gw_max, "sigma_gw_min": st[i].sigma_gw_min,
            "sigma_ga_max": st[i].sigma_ga_max, "lambda_max": st[i].lambda_max,
            "lr_scale": st[i].lr_scale,
        })
    return {
        "mode": "auto", "scheme": config.scheme, "convention": "B = log2(r/step) + 1 (§2.1)",
        "predicted_p_m": "sum of E * step^2 / 12 over all feed-forward tensors (E_W_scaled, "
                         "E_A_scaled: E * c^2 with step(B) = c * 2^-B)",
        "pm_target": pm_target, "B_min": b_min, "held_out_samples": held_out,
        "p_m": {"C_o-1": pms[0], "C_o": pms[1], "C_o+1": pms[2]},
        "lr_min": lr_min,
        "gradient_statistics_from": "training data (--train-data)" if user_train_data else
            "calibration inputs labelled by the float model's own decisions (no --train-data)",
        "layers": entries,
        "costs": {"float": fl, "C_o": fx,
                  "reduction": {k: fl[k] / fx[k] if fx[k] else math.inf for k in fl}},
    }


def _gradient_row(s, bits_w: int, lr_min: float, r_w: float
                  ) -> tuple[dict | None, dict | None, str | None]:
    """eq. 2-4 for one layer, or (None, None, reason) when its statistics cannot give them."""
    values = {"sigma_GW,max": s.sigma_gw_max, "sigma_GW,min": s.sigma_gw_min,
              "sigma_GA,max": s.sigma_ga_max, "lambda_max": s.lambda_max}
    bad = [k for k, v in values.items() if not (math.isfinite(v) and v > 0)]
    if bad:
        return None, None, (f"{', '.join(bad)} = 0 or not finite in the warm-up (the layer's "
                            "gradients vanish): eq. 2-3 have no finite solution")
    g = precision.gradient_formats([s.sigma_gw_max], [s.sigma_gw_min], [s.sigma_ga_max],
                                   [s.lambda_max], [s.numel_gw], [s.numel_ga])[0]
    a = precision.accumulator_formats([bits_w], [g["step_gw"]], lr_min, r_w=[r_w])[0]
    return g, a, None


def _layer_sizes(graph: Graph, layers: list[WeightedLayer]) -> tuple[list[int], ...]:
    """|W_l|, |A_l|, |A_{l+1}| (per sample) and the dot-product length D_l of every layer."""
    numel_w, numel_a, numel_next, dots = [], [], [], []
    for layer in layers:
        w = graph.values[layer.weight]
        numel_w.append(w.numel)
        numel_a.append(_per_sample(graph.values[layer.input].shape))
        numel_next.append(_per_sample(graph.values[layer.output].shape))
        node = graph.node(layer.node)
        trans = node.op_type == "Gemm" and node.attrs.get("transB", 0)
        dots.append(int(np.prod(w.shape[1:])) if node.op_type == "Conv" or trans
                    else int(w.shape[0]))
    return numel_w, numel_a, numel_next, dots


def _per_sample(shape: tuple[int, ...] | None) -> int:
    return int(np.prod(shape[1:])) if shape else 0


def _annotate_nodes(integer: Graph, entries: list[dict[str, Any]]) -> None:
    """The 5-tuple and the gradient / accumulator formats as attributes of each QConv/QGemm
    (log2 of the power-of-two ranges and steps), for the training program to read."""
    for entry in entries:
        if entry["unavailable"]:  # no gradient formats to hand to a training program
            continue
        node = integer.node(entry["name"])
        node.attrs["precision"] = [entry[k] for k in ("B_W", "B_A", "B_GW", "B_GA", "B_acc")]
        for key in ("r_gw", "step_gw", "r_ga", "step_ga", "r_acc", "step_acc"):
            node.attrs[f"{key}_exp"] = int(round(math.log2(entry[key])))
