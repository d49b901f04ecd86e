"""Executes an integer graph (after passes.quantize_graph, or a pre-quantized ONNX model).

Between the input quantization (`qcc.Quantize`, `QuantizeLinear`) and the output dequantization
(`qcc.Dequantize`, `DequantizeLinear`) every tensor is an integer array: each node runs its
registered integer kernel. Float post-processing after the output dequantization (a final
Softmax) runs on the float kernels. Saturations are counted per tensor in the RunReport.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np

from qcc.core.errors import QccError
from qcc.core.float_exec import check_feeds
from qcc.core.ir import Graph, Node
from qcc.core.registry import OpDef, lookup

_OVERFLOWS: ContextVar[dict[str, int] | None] = ContextVar("qcc_overflows", default=None)


def count_overflow(tensor: str, count: int) -> None:
    """Called by kernels when they saturate `count` elements of `tensor`."""
    counts = _OVERFLOWS.get()
    if counts is not None and count:
        counts[tensor] = counts.get(tensor, 0) + int(count)


@dataclass
class RunReport:
    """What one run of the integer interpreter observed."""

    overflows: dict[str, int] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)  # every tensor the run produced

    @property
    def total_overflows(self) -> int:
        return sum(self.overflows.values())


def run_integer(graph: Graph, feeds: dict[str, np.ndarray], check: bool = True,
                keep_all: bool = False) -> tuple[dict[str, np.ndarray], RunReport]:
    """Run `graph` on `feeds`; returns its outputs (all tensors if `keep_all`) and a report."""
    if check:
        check_feeds(graph, feeds)
    report = RunReport()
    token = _OVERFLOWS.set(report.overflows)
    try:
        env = {v.name: np.asarray(feeds[v.name]) for v in graph.inputs}
        for node in graph.nodes:
            args = [None if v is None else v.const if v.const is not None else env[v.name]
                    for v in node.inputs]
            for value, array in zip(node.outputs, _run_node(node, args)):
                env[value.name] = array
                report.dtypes[value.name] = _dtype_name(array.dtype)
    finally:
        _OVERFLOWS.reset(token)
    if keep_all:
        return {**env, **graph.constants}, report
    return {v.name: env[v.name] for v in graph.outputs}, report


_DTYPE_NAMES: dict[np.dtype, str] = {}


def _dtype_name(dtype: np.dtype) -> str:
    """str(dtype), cached: NumPy builds the name in Python, a cost at ~20 nodes per run."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype)
    return name


_ENTRIES: dict[tuple[str, str], OpDef] = {}


def _entry(node: Node) -> OpDef:
    """lookup(node), remembered per (domain, op type): it runs for every node of every run."""
    key = (node.domain, node.op_type)
    entry = _ENTRIES.get(key)
    if entry is None:
        entry = _ENTRIES[key] = lookup(node)
    return entry


def _run_node(node: Node, args: list[np.ndarray | None]) -> list[np.ndarray]:
    entry = _entry(node)
    if entry.int_kernel is not None:
        result = entry.int_kernel(node, *args)
    elif all(a is None or a.dtype.kind == "f" for a in args):
        result = entry.kernel(node, *args)  # float post-processing after dequantization
    else:
        raise QccError(f"op {node.op_type} (node {node.name!r}) has no integer kernel")
    outs = list(result) if isinstance(result, (tuple, list)) else [result]
    return [np.asarray(o) for o in outs[: len(node.outputs)]]


def integer_predictions(graph: Graph, x: np.ndarray, batch: int = 256
                        ) -> tuple[np.ndarray, RunReport]:
    """Class predictions of the integer graph, with the saturation counts summed over batches."""
    total = RunReport()
    preds = []
    for start in range(0, len(x), batch):
        out, report = run_integer(graph, {graph.inputs[0].name: x[start:start + batch]},
                                  check=False)
        preds.append(out[graph.outputs[0].name].argmax(axis=1))
        for tensor, count in report.overflows.items():
            total.overflows[tensor] = total.overflows.get(tensor, 0) + count
    return np.concatenate(preds), total
