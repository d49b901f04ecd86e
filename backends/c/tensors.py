"""What the C emitter knows about each tensor of an integer graph: shape, C type, code range.

All of it is read from the IR: shapes and storage types from the graph's shape inference
(qcc.core.shapes, with the batch dimension taken as 1), code ranges from the ops' range rules
(qcc.core.ops.code_ranges). The range [lo, hi] of a tensor bounds the accumulators of the
layers that read it (the emitter picks int32 or int64 from it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcc.core.errors import QccError
from qcc.core.ir import Graph
from qcc.core.ops.code_ranges import code_ranges
from qcc.core.shapes import value_types

C_TYPES = {"int8": "int8_t", "uint8": "uint8_t", "int16": "int16_t", "uint16": "uint16_t",
           "int32": "int32_t", "uint32": "uint32_t", "int64": "int64_t", "float32": "float"}


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
    """TensorInfo of every non-constant tensor, for one sample (batch 1)."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise QccError("the C backend takes models with one input and one output, this one has "
                       f"{len(graph.inputs)} and {len(graph.outputs)}")
    types = value_types(graph, {graph.inputs[0].name: input_shape(graph)})
    ranges = code_ranges(graph, types)
    info: dict[str, TensorInfo] = {}
    for name, t in types.items():
        if graph.values[name].is_const:
            continue
        if t.shape is None or any(d < 0 for d in t.shape):
            raise QccError(f"tensor {name!r} has no static shape for the C backend")
        lo, hi = ranges.get(name, (0, 0))  # float tensors have no code range
        info[name] = TensorInfo(name, tuple(int(d) for d in t.shape), t.dtype, lo, hi)
    return info
