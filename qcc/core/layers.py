"""What counts as a weighted layer: a Conv, Gemm or MatMul whose weight is a constant.

The precision methodology (seeds/001), the rewrite to integers and training all walk the same
list, in graph order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcc.core.ir import Graph, Node

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
CONV_OPS = ("Conv", "QConv")  # weights (M, C/group, *kernel): output channels first


def is_conv(node: Node) -> bool:
    """Whether `node` is a convolution (float Conv or integer QConv)."""
    return node.op_type in CONV_OPS


def output_channel_axis(node: Node) -> int:
    """The weight axis of the output channels of a weighted layer (float or integer): 0 for a
    Conv or a Gemm with transB (W is (M, K)), else 1 (W is (K, M))."""
    return 0 if is_conv(node) or node.attrs.get("transB", 0) else 1


def weight_rows(node: Node, w: np.ndarray) -> np.ndarray:
    """The weight matrix of a weighted layer with one row per output channel, (M, K)."""
    if output_channel_axis(node) == 0:
        return w.reshape(w.shape[0], -1)
    return w.T


@dataclass(frozen=True)
class WeightedLayer:
    """One weighted layer: tensor names of its weight W, bias, input A and output Z."""

    node: str
    op_type: str
    weight: str
    bias: str | None
    input: str
    output: str


def weighted_layers(graph: Graph) -> list[WeightedLayer]:
    """The Conv / Gemm / MatMul nodes with a constant weight and a non-constant input, in order."""
    layers = []
    for node in graph.nodes:
        if node.op_type not in WEIGHTED_OPS:
            continue
        a, w = node.input(0), node.input(1)
        if a is None or w is None or a.is_const or not w.is_const:
            continue
        bias = node.input(2) if node.op_type != "MatMul" else None
        if node.op_type == "MatMul" and len(w.shape or ()) != 2:
            continue
        layers.append(WeightedLayer(node.name, node.op_type, w.name,
                                    bias.name if bias is not None and bias.is_const else None,
                                    a.name, node.outputs[0].name))
    return layers


def weighted_nodes(graph: Graph) -> list[Node]:
    """The nodes of `weighted_layers`, in the same order."""
    names = {layer.node for layer in weighted_layers(graph)}
    return [node for node in graph.nodes if node.name in names]
