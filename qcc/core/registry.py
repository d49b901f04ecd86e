"""The one op registry: per op type, its shape inference, its float reference kernel, its
vector-Jacobian product and its integer kernels, each filled in by a decorator next to the code
that implements it.

    @float_kernel("Relu")
    def relu(node: Node, x: np.ndarray) -> np.ndarray: ...

A kernel receives the node (for attributes and opset) and the input arrays in ONNX order
(None for an omitted optional input) and returns one array or a tuple of arrays.
Adding an op means adding entries here through the decorators; no other file needs an
`if op_type == ...`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qcc.core.errors import UnsupportedOpError
from qcc.core.ir import Node

Kernel = Callable[..., object]


@dataclass(frozen=True)
class TensorType:
    """What shape inference knows of one tensor: its shape (-1 for a dimension it cannot
    tell, None for an unknown rank), its dtype and, for a constant, its value."""

    shape: tuple[int, ...] | None
    dtype: np.dtype
    const: np.ndarray | None = None


# fn(node, one TensorType per input, None for an omitted one) -> one TensorType per output
ShapeFn = Callable[[Node, list["TensorType | None"]], list[TensorType]]
# fn(node, the code range of each input, None if unknown) -> the range of its outputs, or None
CodeRange = tuple[int, int]
RangeFn = Callable[[Node, list["CodeRange | None"]], "CodeRange | None"]


@dataclass
class OpDef:
    """Everything qcc knows about one ONNX op type."""

    op_type: str
    kernel: Kernel | None = None
    vjp: Callable[..., list] | None = None
    int_kernel: Kernel | None = None
    macs: Callable[[Node], int] | None = None
    # training, one entry per layer of the stack (each filled by the module that implements it):
    train_rule: object | None = None  # passes/training_program.py: the op's static backward
    int_vjp: Callable[..., list] | None = None  # backends/numpy_int: its integer backward
    c_train: object | None = None  # backends/c: its train-step C emitter
    # None: ONNX's own schema inference (qcc.core.shapes), for ops qcc does not redefine
    shape: ShapeFn | None = None
    # on integer codes: the code range [lo, hi] of the outputs from the inputs' (None: the
    # storage type's); qcc.core.ops.code_ranges
    code_range: RangeFn | None = None
    # the op only moves, selects or compares elements: exact on integer codes, whose format
    # its outputs keep (qcc.core.numerics.codes.CODE_PRESERVING)
    moves_codes: bool = False
    # "quantize": float -> codes at a graph input; "dequantize": codes -> float at an output
    float_edge: str | None = None
    # input indices holding parameters that float training updates besides the weighted
    # layers' weights and biases (BatchNormalization's scale and shift)
    trained_inputs: tuple[int, ...] = ()
    # the ONNX domains a node of this op may carry (QONNX's quantizers: QONNX_DOMAINS)
    domains: tuple[str, ...] = ("", "ai.onnx")


OPS: dict[str, OpDef] = {}
QCC_DOMAIN = "qcc"  # qcc's own integer ops (QConv, QGemm, Requantize, ...) in exported graphs
# QONNX's custom ops (Quant, BipolarQuant, Trunc: qcc.core.ops.qonnx); FINN's older name first
QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general")


def _entry(op_type: str) -> OpDef:
    return OPS.setdefault(op_type, OpDef(op_type))


def float_kernel(*op_types: str) -> Callable[[Kernel], Kernel]:
    """Register the float reference kernel of one or more op types."""

    def register(fn: Kernel) -> Kernel:
        for op_type in op_types:
            _entry(op_type).kernel = fn
        return fn

    return register


def vjp(*op_types: str) -> Callable[[Callable], Callable]:
    """Register a VJP: fn(node, inputs, outputs, output_grads) -> one gradient per input."""

    def register(fn: Callable) -> Callable:
        for op_type in op_types:
            _entry(op_type).vjp = fn
        return fn

    return register


def int_kernel(*op_types: str) -> Callable[[Kernel], Kernel]:
    """Register the integer kernel (backends/numpy_int) of one or more op types."""

    def register(fn: Kernel) -> Kernel:
        for op_type in op_types:
            _entry(op_type).int_kernel = fn
        return fn

    return register


def shape_fn(*op_types: str) -> Callable[[ShapeFn], ShapeFn]:
    """Register the shape and dtype inference of one or more op types (qcc.core.shapes)."""

    def register(fn: ShapeFn) -> ShapeFn:
        for op_type in op_types:
            _entry(op_type).shape = fn
        return fn

    return register


def range_fn(*op_types: str) -> Callable[[RangeFn], RangeFn]:
    """Register how an op maps its inputs' code ranges to its outputs' (integer graphs)."""

    def register(fn: RangeFn) -> RangeFn:
        for op_type in op_types:
            _entry(op_type).code_range = fn
        return fn

    return register


def mac_count(*op_types: str) -> Callable[[Callable[[Node], int]], Callable[[Node], int]]:
    """Register the multiply-accumulate count of one application of an op (static shapes)."""

    def register(fn: Callable[[Node], int]) -> Callable[[Node], int]:
        for op_type in op_types:
            _entry(op_type).macs = fn
        return fn

    return register


def training_entry(role: str, *op_types: str) -> Callable[[object], object]:
    """Register an op's training entry `role` (train_rule, int_vjp or c_train) for one or more
    op types: `@training_entry("int_vjp", "Relu")`."""

    def register(obj: object) -> object:
        for op_type in op_types:
            setattr(_entry(op_type), role, obj)
        return obj

    return register


def training_lookup(node: Node, role: str) -> object:
    """The training entry `role` of `node`'s op, or one UnsupportedOpError naming the op, the
    node and the ops that have one."""
    found = getattr(OPS.get(node.op_type), role, None)
    if found is None:
        known = sorted(op for op, d in OPS.items() if getattr(d, role) is not None)
        raise UnsupportedOpError(f"op {node.op_type} (node {node.name!r}) has no integer "
                                 f"backward; training supports {', '.join(known)}")
    return found


def declare(op_type: str, **properties: object) -> None:
    """Set properties of an op's entry (`moves_codes`, `float_edge`) where the op is defined."""
    entry = _entry(op_type)
    for name, value in properties.items():
        if not hasattr(entry, name):
            raise AttributeError(f"OpDef has no property {name!r}")
        setattr(entry, name, value)


def supported_ops() -> list[str]:
    """Op types with a float reference kernel, sorted."""
    return sorted(op for op, d in OPS.items() if d.kernel is not None)


def registered(op_type: str) -> OpDef | None:
    """The registry entry of `op_type` if any (no domain check: shape inference, emitters)."""
    return OPS.get(op_type)


def lookup(node: Node) -> OpDef:
    """The registry entry for `node`, or one UnsupportedOpError naming the op and node."""
    entry = OPS.get(node.op_type)
    if node.domain == QCC_DOMAIN and entry is not None and entry.int_kernel is not None:
        return entry
    if entry is None or entry.kernel is None or node.domain not in entry.domains:
        op = f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        raise UnsupportedOpError(
            f"unsupported op {op} (node {node.name!r}); qcc supports: {', '.join(supported_ops())}"
        )
    return entry
