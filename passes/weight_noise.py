"""The reflected weight noise of narrow weight widths, measured instead of predicted.

The knapsack of passes/allocate_widths.py predicts the mismatch a layer's weights add at B bits
as E_W·Δ²/12 (eq. 6 of seeds/001 times a uniform rounding noise). Below 8 bits that model is
off in both directions: GPTQ's codes (passes/weight_rounding.py) leave much less output error
than independent rounding, and a few coarse levels are not a small uniform noise. Here the same
quantity eq. 6 predicts is measured: with only layer l's weights replaced by their B-bit values
(codes times steps, as quantize_graph would make them, bias corrected the same way),

    N_l(B) = mean_n min(1, Σ_{i≠ŷ} (δZ_i − δZ_ŷ)² / (2 (Z_i − Z_ŷ)²))

over calibration samples n, δZ the change of the logits and Z_i − Z_ŷ the float margins: the
noise eq. 6's E·σ² stands for, in the same units, except that one sample counts at most 1 (a
decision flips at most once; without the cap the few samples of tiny margin, whose term is
unbounded, decide the whole ranking). Float execution on the estimation samples: only the
weights change, so nothing but their quantization is measured.
"""

from __future__ import annotations

import numpy as np

from passes.schemes import get_scheme
from passes.weight_rounding import WeightRounding
from qcc.core.autodiff import logits_value
from qcc.core.float_exec import run_batched
from qcc.core.ir import Graph, Node
from qcc.core.layers import output_channel_axis

NOISE_SAMPLES = 512  # estimation samples per measurement (a float forward pass each)


def measured_weight_noise(graph: Graph, x: np.ndarray, nodes: list[Node], scheme: str,
                          widths: tuple[int, ...], rounding: WeightRounding | None
                          ) -> list[dict[int, float]]:
    """Per layer, N_l(B) for each B of `widths` (module docstring), on x[:NOISE_SAMPLES]."""
    x = x[:NOISE_SAMPLES]
    z = _logits(graph, x)
    noises = []
    for node in nodes:
        row = {}
        for bits in widths:
            w_value, b_value = node.inputs[1], node.input(2)
            saved = w_value.const, None if b_value is None else b_value.const
            w_hat, b_hat = quantized_weights(node, scheme, bits, rounding)
            try:  # the graph's own constants, swapped for one float run and restored
                w_value.const = w_hat.astype(saved[0].dtype)
                if b_value is not None and b_hat is not None:
                    b_value.const = b_hat.astype(saved[1].dtype).reshape(saved[1].shape)
                row[bits] = reflected_noise(z, _logits(graph, x))
            finally:
                w_value.const = saved[0]
                if b_value is not None:
                    b_value.const = saved[1]
        noises.append(row)
    return noises


def quantized_weights(node: Node, scheme: str, bits: int, rounding: WeightRounding | None
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """The real weights (and bias) quantize_graph gives layer `node` at `bits` bits, in the
    float layer's own terms (Gemm's alpha / beta divided back out)."""
    w = node.inputs[1].const.astype(np.float64)
    alpha = node.attrs.get("alpha", 1.0) if node.op_type == "Gemm" else 1.0
    beta = node.attrs.get("beta", 1.0) if node.op_type == "Gemm" else 1.0
    axis = output_channel_axis(node)
    bias = node.input(2)
    b = None if bias is None or not bias.is_const else np.broadcast_to(
        bias.const.astype(np.float64), (w.shape[axis],)) * beta
    codes, fmt = get_scheme(scheme).weight(w * alpha, bits, axis)
    if rounding is not None:
        codes, fmt, b = rounding.apply(node, w * alpha, codes, fmt, b)
    shape = [1] * w.ndim
    shape[axis] = -1
    w_hat = codes * np.broadcast_to(fmt.scales, (w.shape[axis],)).reshape(shape) / alpha
    return w_hat, None if b is None else b / beta


def reflected_noise(z: np.ndarray, z_hat: np.ndarray) -> float:
    """mean_n min(1, Σ_{i≠ŷ} (δZ_i − δZ_ŷ)² / (2 (Z_i − Z_ŷ)²)), ŷ the float decision (module
    docstring); samples with a tie (a zero margin) are left out."""
    yhat = z.argmax(axis=1)
    rows = np.arange(len(z))
    margin = z - z[rows, yhat][:, None]
    delta = z_hat - z
    d = delta - delta[rows, yhat][:, None]
    others = np.ones_like(z, dtype=bool)
    others[rows, yhat] = False
    tied = np.any(others & (margin == 0), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(others, d ** 2 / (2.0 * np.where(others, margin, 1.0) ** 2), 0.0)
    per_sample = np.minimum(terms.sum(axis=1), 1.0)  # a sample can flip at most once
    return float(per_sample[~tied].mean()) if np.any(~tied) else float("inf")


def _logits(graph: Graph, x: np.ndarray) -> np.ndarray:
    name = logits_value(graph).name
    keep = name not in {v.name for v in graph.outputs}
    parts = [env[name] for env in run_batched(graph, x, keep_all=keep)]
    return np.concatenate(parts).reshape(len(x), -1).astype(np.float64)
