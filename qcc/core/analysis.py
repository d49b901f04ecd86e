"""Static analysis of a Graph: per-node parameter and MAC counts for `qcc inspect`."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from qcc.core.ir import Graph, Node
from qcc.core.registry import OPS, mac_count


@dataclass
class NodeSummary:
    name: str
    op: str
    output_shape: list[int] | None
    params: int
    macs: int


def _numel(shape: tuple[int, ...] | None) -> int:
    return int(np.prod(shape)) if shape is not None and all(d >= 0 for d in shape) else 0


@mac_count("Conv", "ConvInteger", "QLinearConv")
def conv_macs(node: Node) -> int:
    """Each output element is a dot product over C_in/group · prod(kernel) taps."""
    weight = node.inputs[3 if node.op_type == "QLinearConv" else 1]
    if weight is None or weight.shape is None:
        return 0
    return _numel(node.outputs[0].shape) * int(np.prod(weight.shape[1:]))


@mac_count("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul")
def matmul_macs(node: Node) -> int:
    """Each output element is a dot product over the contracted dimension K."""
    a = node.inputs[0]
    if a is None or a.shape is None or not a.shape:
        return 0
    k = a.shape[0] if node.attrs.get("transA", 0) else a.shape[-1]
    return _numel(node.outputs[0].shape) * max(int(k), 0)


def summarize(graph: Graph) -> list[NodeSummary]:
    """One row per node: output shape, constant parameters read, MACs."""
    rows = []
    for node in graph.nodes:
        entry = OPS.get(node.op_type)
        macs = entry.macs(node) if entry is not None and entry.macs is not None else 0
        params = sum(v.numel for v in node.inputs if v is not None and v.is_const)
        shape = node.outputs[0].shape if node.outputs else None
        rows.append(NodeSummary(node.name, node.op_type, list(shape) if shape else shape,
                                params, macs))
    return rows


def summary_dict(graph: Graph) -> dict:
    rows = summarize(graph)
    return {
        "model": graph.name,
        "opset": graph.opset,
        "inputs": {v.name: {"shape": list(v.shape or ()), "dtype": str(v.dtype)}
                   for v in graph.inputs},
        "outputs": {v.name: {"shape": list(v.shape or ()), "dtype": str(v.dtype)}
                    for v in graph.outputs},
        "nodes": [asdict(r) for r in rows],
        "totals": {"nodes": len(rows), "params": sum(v.numel for v in graph.values.values()
                                                     if v.is_const),
                   "macs": sum(r.macs for r in rows)},
    }
