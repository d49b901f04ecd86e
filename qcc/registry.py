"""The one op registry: per op type, its float reference kernel, its vector-Jacobian product
and its integer kernels, each filled in by a decorator next to the code that implements it.

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

from qcc.errors import UnsupportedOpError
from qcc.ir import Node

Kernel = Callable[..., object]


@dataclass
class OpDef:
    """Everything qcc knows about one ONNX op type."""

    op_type: str
    kernel: Kernel | None = None
    vjp: Callable[..., list] | None = None
    int_kernel: Kernel | None = None
    macs: Callable[[Node], int] | None = None


OPS: dict[str, OpDef] = {}
QCC_DOMAIN = "qcc"  # qcc's own integer ops (QConv, QGemm, Requantize, ...) in exported graphs


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


def mac_count(*op_types: str) -> Callable[[Callable[[Node], int]], Callable[[Node], int]]:
    """Register the multiply-accumulate count of one application of an op (static shapes)."""

    def register(fn: Callable[[Node], int]) -> Callable[[Node], int]:
        for op_type in op_types:
            _entry(op_type).macs = fn
        return fn

    return register


def supported_ops() -> list[str]:
    """Op types with a float reference kernel, sorted."""
    _load_ops()
    return sorted(op for op, d in OPS.items() if d.kernel is not None)


def lookup(node: Node) -> OpDef:
    """The registry entry for `node`, or one UnsupportedOpError naming the op and node."""
    _load_ops()
    entry = OPS.get(node.op_type)
    if node.domain == QCC_DOMAIN and entry is not None and entry.int_kernel is not None:
        return entry
    if node.domain not in ("", "ai.onnx") or entry is None or entry.kernel is None:
        op = f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        raise UnsupportedOpError(
            f"unsupported op {op} (node {node.name!r}); qcc supports: {', '.join(supported_ops())}"
        )
    return entry


def _load_ops() -> None:
    import backends.numpy_int.kernels  # noqa: F401  (filling the registry is the imports' job)
    import qcc.ops  # noqa: F401
