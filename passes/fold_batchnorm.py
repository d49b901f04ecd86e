"""fold_batchnorm: BatchNormalization after Conv or Gemm folded into that layer's weights.

Inference BatchNormalization is y = s·(x − mean) + B with s = scale / sqrt(var + ε), a per-channel
affine map; after a Conv or Gemm with constant weights it folds exactly into them:
W' = s·W (per output channel), b' = s·(b − mean) + B. seeds/004 and seeds/001 both quantize the
folded weights, so this runs before any precision pass.
"""

from __future__ import annotations

import numpy as np

from passes.registry import graph_pass
from qcc.core.ir import Graph, Node


@graph_pass("fold_batchnorm")
def fold_batchnorm(graph: Graph) -> Graph:
    """Fold each BatchNormalization whose only input is a Conv/Gemm output with constant weights.

    Preconditions: BatchNormalization in inference form (one output); the producer's output
    feeds nothing but the BatchNormalization and is not a graph output.
    """
    folded = []
    for bn in [n for n in graph.nodes if n.op_type == "BatchNormalization"]:
        layer = _foldable_producer(graph, bn)
        if layer is None:
            continue
        scale, shift, mean, var = (v.const.astype(np.float64) for v in bn.inputs[1:5])
        s = scale / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
        weight = layer.inputs[1].const.astype(np.float64)
        bias = _bias(layer, weight)
        if layer.op_type == "Conv":
            weight = weight * s.reshape(-1, *[1] * (weight.ndim - 1))
        else:  # Gemm: output features are the rows of W when transB, the columns otherwise
            weight = weight * (s[:, None] if layer.attrs.get("transB", 0) else s[None, :])
            weight = weight * layer.attrs.get("alpha", 1.0)
            layer.attrs.update(alpha=1.0, beta=1.0)
        dtype = layer.inputs[1].dtype
        graph.set_input(layer, 1, graph.add_const(layer.inputs[1].name + "_bnfold",
                                                  weight.astype(dtype)))
        new_bias = graph.add_const(f"{layer.name}_bias_bnfold", (s * (bias - mean) + shift)
                                   .astype(dtype))
        if len(layer.inputs) < 3:
            layer.inputs.append(None)
        graph.set_input(layer, 2, new_bias)
        graph.replace_all_uses(bn.outputs[0], layer.outputs[0])
        graph.remove_node(bn)
        folded.append(bn.name)
    graph.remove_unused()
    if folded:
        graph.history.append(f"fold_batchnorm: folded {len(folded)} BatchNormalization nodes")
    return graph


def _foldable_producer(graph: Graph, bn: Node) -> Node | None:
    x = bn.inputs[0]
    layer = x.producer
    if layer is None or layer.op_type not in ("Conv", "Gemm") or len(bn.outputs) != 1:
        return None
    if len(x.consumers) != 1 or x in graph.outputs or bn.attrs.get("training_mode", 0):
        return None
    if not all(v is not None and v.is_const for v in bn.inputs[1:5]):
        return None
    if layer.inputs[1] is None or not layer.inputs[1].is_const:
        return None
    bias = layer.input(2)
    if bias is not None and not bias.is_const:
        return None
    if layer.op_type == "Gemm" and (bias is not None and bias.const.ndim > 1):
        return None  # a 2-D C term is not a per-feature bias
    return layer


def _bias(layer: Node, weight: np.ndarray) -> np.ndarray:
    """The layer's bias as float64 (zeros if absent), Gemm's beta applied."""
    bias_value = layer.input(2)
    channels = weight.shape[0] if layer.op_type == "Conv" or layer.attrs.get("transB", 0) \
        else weight.shape[1]
    if bias_value is None:
        return np.zeros(channels)
    bias = np.broadcast_to(bias_value.const.astype(np.float64), (channels,))
    return bias * (layer.attrs.get("beta", 1.0) if layer.op_type == "Gemm" else 1.0)

