"""annotate_precision: `--bits auto`, the per-tensor precision methodology of seeds/001.

Implements the pipeline of DESIGN.md ("--bits auto") on top of the pure arithmetic in
passes/precision.py:

1. Noise gains E_{W_l->p_m}, E_{A_l->p_m} (eq. 6) from one forward and M-1 backward passes per
   estimation sample over the output differences Z_i - Z_yhat (Z = the logits).
2. Feed-forward precisions B = rnd(log2 sqrt(E / E_min)) + B_min (eq. 1); B_min is swept upward
   and the smallest whose mismatch p_m = Pr(yhat_fl != yhat_fx), measured by running the real
   integer graph on held-out calibration samples, is at most the target is kept (C_o). p_m is
   also measured at C_o - 1 and C_o + 1 (B_min - 1, B_min + 1).
3. Gradient statistics (sigma_GW max/min, sigma_GA max, lambda_max: Lemma 4) from float training
   on the IR (qcc.train), on a copy: the model's weights are not changed.
4. Gradient and accumulator formats from eq. 2-4, and the costs C_W, C_A, C_M, C_C (§2.2) of
   C_o against the float baseline.

Bits from ranges follow Section 2.1's identity B = log2(r / Delta) + 1 (passes/precision.py,
BITS_IDENTITY) everywhere. Every tensor is capped at MAX_BITS = 16 bits.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from passes import precision
from passes.calibrate import TensorStats, calibrate
from passes.quantize_graph import LayerConfig, QuantConfig, quantize_graph
from passes.schemes import get_scheme
from qcc.autodiff import backward, logits_value
from qcc.errors import QccError
from qcc.evaluate import float_predictions, integer_predictions
from qcc.float_exec import run_float
from qcc.ir import Graph, Node
from qcc.layers import WeightedLayer, weighted_layers
from qcc.ops.grads import conv_geometry, im2col
from qcc.train import TrainConfig, TrainResult, train

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
    for start in range(0, len(x), chunk):
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


def measure_mismatch(graph: Graph, integer: Graph, x: np.ndarray, float_pred: np.ndarray,
                     give_up_above: float | None = None, batch: int = 128) -> float:
    """p_m of the integer graph on x; stops early once it must exceed `give_up_above`."""
    mismatches = 0
    for start in range(0, len(x), batch):
        pred, _ = integer_predictions(integer, x[start:start + batch], batch)
        mismatches += int(np.sum(pred != float_pred[start:start + batch]))
        if give_up_above is not None and mismatches > give_up_above * len(x):
            return mismatches / len(x) if start + batch >= len(x) else 1.0
    return mismatches / len(x)


def gradient_statistics(graph: Graph, x: np.ndarray, y: np.ndarray | None,
                        epochs: int, lr: float) -> TrainResult:
    """Float training on a copy of the graph, recording σ and λ (seeds/001 §3)."""
    if y is None:  # no labels: the float model's own decisions stand in for them
        y = float_predictions(graph, x)
    config = TrainConfig(epochs=epochs, batch_size=min(32, len(x)), lr=lr, momentum=0.9,
                         schedule="cosine", progress=False)
    return train(copy.deepcopy(graph), x, y, config)


def annotate_precision(graph: Graph, x_calib: np.ndarray, pm_target: float = 0.01,
                       train_x: np.ndarray | None = None, train_y: np.ndarray | None = None,
                       lr_min: float | None = None, scheme: str = "fixed",
                       train_epochs: int = 3, train_lr: float = 0.01) -> AutoResult:
    """The whole `--bits auto` methodology (module docstring); returns C_o and its report."""
    if not 0 < pm_target < 1:
        raise QccError(f"the p_m target must be between 0 and 1, got {pm_target}")
    if len(x_calib) < 4:
        raise QccError("--bits auto needs at least 4 calibration samples")
    layers = weighted_layers(graph)
    if not layers:
        raise QccError("the model has no weighted layer (Conv, Gemm or MatMul with constant "
                       "weights) to quantize")
    half = len(x_calib) // 2
    x_est, x_held = x_calib[:half], x_calib[half:]
    stats = calibrate(graph, x_est)
    gains_w, gains_a = noise_gains(graph, x_est[:GAIN_SAMPLES], layers)
    offsets_w, offsets_a = precision.feedforward_offsets(gains_w, gains_a)
    offsets_w, offsets_a = [int(o) for o in offsets_w], [int(o) for o in offsets_a]
    float_pred = float_predictions(graph, x_held)

    def mismatch_at(b_min: int, give_up: float | None = None) -> tuple[float, QuantConfig, Graph]:
        config = feedforward_config(offsets_w, offsets_a, b_min, layers, scheme)
        integer = quantize_graph(graph, stats, config)
        return measure_mismatch(graph, integer, x_held, float_pred, give_up), config, integer

    chosen = None
    for b_min in range(1, MAX_BITS + 1):
        pm, config, integer = mismatch_at(b_min, give_up=pm_target)
        if pm <= pm_target:
            chosen = (b_min, pm, config, integer)
            break
    if chosen is None:
        raise QccError(f"no B_min up to {MAX_BITS} bits meets the p_m target {pm_target} "
                       f"(at {MAX_BITS} bits p_m = {pm:.4f} on {len(x_held)} held-out samples)")
    b_min, pm, config, integer = chosen
    pm_below = mismatch_at(b_min - 1)[0] if b_min > 1 else None
    pm_above = mismatch_at(b_min + 1)[0]

    x_train = train_x if train_x is not None else x_est
    trained = gradient_statistics(graph, x_train, train_y if train_x is not None else None,
                                  train_epochs, train_lr)
    lr_min = lr_min if lr_min is not None else trained.lr_min
    report = _report(graph, integer, layers, config, gains_w, gains_a, offsets_w, offsets_a,
                     b_min, pm_target, (pm_below, pm, pm_above), len(x_held), trained, lr_min,
                     train_x is not None)
    _annotate_nodes(integer, report["layers"])
    return AutoResult(config, integer, stats, report)


def _weight_pdr(integer: Graph, node_name: str) -> float:
    node = integer.node(node_name)
    spec = node.inputs[1].quant
    return float(spec.pdr) if spec is not None and spec.pdr else 1.0


def _report(graph: Graph, integer: Graph, layers: list[WeightedLayer], config: QuantConfig,
            gains_w, gains_a, offsets_w, offsets_a, b_min: int, pm_target: float,
            pms: tuple, held_out: int, trained: TrainResult, lr_min: float,
            user_train_data: bool) -> dict[str, Any]:
    st = trained.layers
    grads = precision.gradient_formats([s.sigma_gw_max for s in st], [s.sigma_gw_min for s in st],
                                       [s.sigma_ga_max for s in st], [s.lambda_max for s in st],
                                       [s.numel_gw for s in st], [s.numel_ga for s in st])
    bits_w = [config.layer(layer.node).weight_bits for layer in layers]
    bits_a = [config.layer(layer.node).act_bits for layer in layers]
    accs = precision.accumulator_formats(bits_w, [g["step_gw"] for g in grads], lr_min,
                                         r_w=[_weight_pdr(integer, layer.node)
                                              for layer in layers])
    rows = [(bw, ba, min(int(g["bits_gw"]), 32), min(int(g["bits_ga"]), 32),
             min(int(a["bits_acc"]), 32)) for bw, ba, g, a in zip(bits_w, bits_a, grads, accs)]
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
            **{k: grads[i][k] for k in ("r_gw", "step_gw", "r_ga", "step_ga")},
            **{k: accs[i][k] for k in ("r_acc", "step_acc")},
            "sigma_gw_max": st[i].sigma_gw_max, "sigma_gw_min": st[i].sigma_gw_min,
            "sigma_ga_max": st[i].sigma_ga_max, "lambda_max": st[i].lambda_max,
        })
    return {
        "mode": "auto", "scheme": config.scheme, "convention": "B = log2(r/step) + 1 (§2.1)",
        "pm_target": pm_target, "B_min": b_min, "held_out_samples": held_out,
        "p_m": {"C_o-1": pms[0], "C_o": pms[1], "C_o+1": pms[2]},
        "lr_min": lr_min,
        "gradient_statistics_from": "training data" if user_train_data else
            "calibration inputs labelled by the float model (no --train-data)",
        "layers": entries,
        "costs": {"float": fl, "C_o": fx,
                  "reduction": {k: fl[k] / fx[k] if fx[k] else math.inf for k in fl}},
    }


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
        node = integer.node(entry["name"])
        node.attrs["precision"] = [entry[k] for k in ("B_W", "B_A", "B_GW", "B_GA", "B_acc")]
        for key in ("r_gw", "step_gw", "r_ga", "step_ga", "r_acc", "step_acc"):
            node.attrs[f"{key}_exp"] = int(round(math.log2(entry[key])))
