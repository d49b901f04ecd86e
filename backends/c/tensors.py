"""What the C emitter knows about each tensor of an integer graph: shape, C type, code range.

Intermediate tensors of the integer graph carry no static shape (passes/quantize_graph.py sets
dtypes only), so `analyse` runs the NumPy integer interpreter once on a zero input of batch 1
and records every tensor's shape and dtype: the interpreter is the specification of what the C
computes, so the C buffers get exactly its shapes and storage types.

The code range [lo, hi] of a tensor bounds the accumulators of the layers that read it (the
emitter picks int32 or int64 from it): requantizing ops clamp to [out_lo, out_hi] (the fused
ReLU raises lo to the zero point), code-moving ops and average pools keep their input's range,
a level snap (Gather) yields its table's values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backends.numpy_int import run_integer
from qcc.errors import QccError
from qcc.ir import Graph, Node

C_TYPES = {"int8": "int8_t", "uint8": "uint8_t", "int16": "int16_t", "uint16": "uint16_t",
           "int32": "int32_t", "uint32": "uint32_t", "int64": "int64_t", "float32": "float"}
REQUANTIZING = ("Quantize", "QConv", "QGemm", "QAdd", "Requantize")
SAME_RANGE = ("Relu", "MaxPool", "GlobalMaxPool", "AveragePool", "GlobalAveragePool", "Flatten",
              "Reshape", "Transpose", "Identity", "Dropout", "Squeeze", "Unsqueeze", "Slice",
              "Split")


@dataclass
class TensorInfo:
    """One tensor as the C code stores it (batch dimension 1)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    lo: int  # smallest code the tensor can hold
    hi: int

    @property
    def ctype(self) -> str:
        return ctype_of(self.dtype)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def absmax(self) -> int:
        return max(abs(self.lo), abs(self.hi))


def ctype_of(dtype: np.dtype) -> str:
    name = np.dtype(dtype).name
    if name not in C_TYPES:
        raise QccError(f"the C backend has no type for {name} tensors")
    return C_TYPES[name]


def input_shape(graph: Graph) -> tuple[int, ...]:
    """The graph input's shape with dynamic dimensions (-1 or 0) taken as 1."""
    shape = graph.inputs[0].shape
    if shape is None:
        raise QccError(f"the input {graph.inputs[0].name!r} has no static shape")
    return tuple(int(d) if int(d) > 0 else 1 for d in shape)


def analyse(graph: Graph) -> dict[str, TensorInfo]:
    """TensorInfo of every non-constant tensor, from one interpreter run on zeros."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise QccError("the C backend takes models with one input and one output, this one has "
                       f"{len(graph.inputs)} and {len(graph.outputs)}")
    inp = graph.inputs[0]
    feed = {inp.name: np.zeros(input_shape(graph), dtype=inp.dtype)}
    env, _ = run_integer(graph, feed, keep_all=True)
    info: dict[str, TensorInfo] = {}
    for name, array in env.items():
        if name in graph.constants:
            continue
        array = np.asarray(array)
        lo, hi = _dtype_range(array.dtype)
        info[name] = TensorInfo(name, tuple(int(d) for d in array.shape), array.dtype, lo, hi)
    for node in graph.nodes:
        _narrow_range(node, info)
    return info


def _dtype_range(dtype: np.dtype) -> tuple[int, int]:
    if dtype.kind in "iu":
        limits = np.iinfo(dtype)
        return int(limits.min), int(limits.max)
    return 0, 0  # float tensors have no code range


def _narrow_range(node: Node, info: dict[str, TensorInfo]) -> None:
    """Tighten the code range of `node`'s outputs from its attributes or inputs."""
    out = info.get(node.outputs[0].name)
    if out is None or out.dtype.kind not in "iu":
        return
    a = node.attrs
    if node.op_type in REQUANTIZING and "out_lo" in a:
        lo = max(int(a["out_lo"]), int(a.get("out_zero_point", 0))) if a.get("relu") else \
            int(a["out_lo"])
        out.lo, out.hi = lo, int(a["out_hi"])
    elif node.op_type == "Gather" and node.inputs[0].is_const:
        table = node.inputs[0].const
        out.lo, out.hi = int(table.min()), int(table.max())
    elif node.op_type in SAME_RANGE and node.inputs[0].name in info:
        src = info[node.inputs[0].name]
        lo = max(src.lo, 0) if node.op_type == "Relu" else src.lo
        for value in node.outputs:
            info[value.name].lo, info[value.name].hi = lo, src.hi
    elif node.op_type == "Concat":
        srcs = [info[v.name] for v in node.inputs if v is not None and v.name in info]
        if len(srcs) == len(node.inputs):  # constant inputs: keep the dtype's range
            out.lo, out.hi = min(s.lo for s in srcs), max(s.hi for s in srcs)
