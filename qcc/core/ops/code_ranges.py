"""Code ranges on integer graphs: the smallest and largest code a tensor can hold.

They bound the accumulators of the layers that read a tensor (the C emitter picks int32 or
int64 from them). Requantizing ops and qcc.Quantize clamp to their Requant's [floor, hi]
(qcc.core.requant: a fused ReLU raises the floor to the zero point); ops that move codes and
average pools keep their input's range; a standalone Relu (zero point 0, passes/quantize_graph
refuses others) raises it to 0; a level snap (Gather of a constant table) yields the table's
values; a Concat the union of its inputs'.
"""

from __future__ import annotations

import numpy as np

from qcc.core.ir import Graph, Node
from qcc.core.registry import CodeRange, TensorType, range_fn, registered
from qcc.core.requant import requant_of, writes_code_range

# ops whose outputs hold some of their input's codes (or their rounded means): same range
SAME_RANGE = ("MaxPool", "GlobalMaxPool", "AveragePool", "GlobalAveragePool", "Flatten",
              "Reshape", "Transpose", "Identity", "Dropout", "Squeeze", "Unsqueeze", "Slice",
              "Split")


@range_fn("Quantize", "QConv", "QGemm", "QAdd", "Requantize", "QAveragePool")
def _requantized(node: Node, inputs: list[CodeRange | None]) -> CodeRange | None:
    if not writes_code_range(node):
        return None
    req = requant_of(node)
    return req.floor, req.hi


@range_fn(*SAME_RANGE)
def _same(node: Node, inputs: list[CodeRange | None]) -> CodeRange | None:
    return inputs[0]


@range_fn("Relu")
def _relu(node: Node, inputs: list[CodeRange | None]) -> CodeRange | None:
    return None if inputs[0] is None else (max(inputs[0][0], 0), inputs[0][1])


@range_fn("Gather")
def _gather(node: Node, inputs: list[CodeRange | None]) -> CodeRange | None:
    table = node.inputs[0]
    if table is None or not table.is_const or table.const.size == 0:
        return None
    return int(table.const.min()), int(table.const.max())


@range_fn("QSoftmax", "QLogSoftmax")
def _softmax(node: Node, inputs: list[CodeRange | None]) -> CodeRange | None:
    return int(node.attrs["out_lo"]), int(node.attrs["out_hi"])


@range_fn("Concat")
def _concat(node: Node, inputs: list[CodeRange | None]) -> CodeRange | None:
    if any(r is None for r in inputs):  # constant inputs: keep the storage type's range
        return None
    return min(r[0] for r in inputs), max(r[1] for r in inputs)


def code_ranges(graph: Graph, types: dict[str, TensorType]) -> dict[str, CodeRange]:
    """The code range of every non-constant integer tensor of `graph` (`types` from
    qcc.core.shapes.value_types): its storage type's range, narrowed by the ops' rules."""
    ranges = {name: storage_range(t.dtype) for name, t in types.items()
              if not graph.values[name].is_const and t.dtype.kind in "iu"}
    for node in graph.nodes:
        entry = registered(node.op_type)
        if entry is None or entry.code_range is None or node.outputs[0].name not in ranges:
            continue
        found = entry.code_range(node, [None if v is None else ranges.get(v.name)
                                        for v in node.inputs])
        if found is not None:
            for value in node.outputs:
                if value.name in ranges:
                    ranges[value.name] = found
    return ranges


def storage_range(dtype: np.dtype) -> CodeRange:
    """[min, max] of an integer storage type."""
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)
