"""The C emitter's op registry: one `Kernel` per op family, registered by op type.

A kernel answers two questions for the driver (backends/c/emit.py):
- `plan(node, ctx)`: the scratch areas it needs and which storage sharing is legal (the output
  may overwrite input i in place; the output is a view of input 0; a Concat's inputs may be
  written into their slices);
- `emit(node, ctx, w)`: the body of the node's C function. The driver has already written the
  signature: non-constant inputs are `x0, x1, ...` (`const T *`), outputs `y0, ...`, scratch
  areas `s0, ...`; constants are file-scope arrays the kernel defines through `ctx`.
Adding an op to the C backend is adding one Kernel here; the driver has no op-type switch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qcc.core.errors import UnsupportedOpError
from qcc.core.ir import Node

if TYPE_CHECKING:
    from backends.c.emit import EmitContext
    from backends.c.writer import CWriter

C_SIZES = {"int8_t": 1, "uint8_t": 1, "int16_t": 2, "uint16_t": 2, "int32_t": 4, "uint32_t": 4,
           "int64_t": 8}


@dataclass
class Scratch:
    """A temporary array a node function needs while it runs (part of the arena)."""

    ctype: str
    count: int

    @property
    def nbytes(self) -> int:
        return C_SIZES[self.ctype] * max(self.count, 1)


@dataclass
class KernelPlan:
    scratch: list[Scratch] = field(default_factory=list)
    in_place: tuple[int, ...] = ()  # inputs the output may overwrite (elementwise ops)
    alias: bool = False  # the output is input 0's bytes: no code at all
    concat: bool = False  # inputs may live inside their slices of the output
    macs: int = 0
    note: str = ""  # what the node function computes, for its comment


class Kernel:
    """Base of the kernels; subclasses list their `op_types` and implement plan / emit."""

    op_types: tuple[str, ...] = ()
    origin = ""  # what the node stands for, in its function's comment (default: ONNX <op>)

    def describe(self, node: Node) -> str:
        return self.origin or f"ONNX {node.op_type}"

    def plan(self, node: Node, ctx: EmitContext) -> KernelPlan:
        return KernelPlan()

    def emit(self, node: Node, ctx: EmitContext, w: CWriter) -> None:
        raise NotImplementedError


KERNELS: dict[str, Kernel] = {}


def c_kernel(cls: type[Kernel]) -> type[Kernel]:
    """Class decorator: register one instance under each of its op types."""
    instance = cls()
    for registered_as in cls.op_types:
        KERNELS[registered_as] = instance
    return cls


def kernel_for(node: Node) -> Kernel:
    _load()
    kernel = KERNELS.get(node.op_type)
    if kernel is None:
        raise UnsupportedOpError(
            f"the C backend has no kernel for {node.op_type} (node {node.name!r}); it emits: "
            f"{', '.join(sorted(KERNELS))}")
    return kernel


def _load() -> None:
    import backends.c.ops.conv  # noqa: F401  (each module registers its kernels)
    import backends.c.ops.elementwise  # noqa: F401
    import backends.c.ops.gemm  # noqa: F401
    import backends.c.ops.movement  # noqa: F401
    import backends.c.ops.pool  # noqa: F401
    import backends.c.ops.qlinear  # noqa: F401
    import backends.c.ops.softmax  # noqa: F401
    import backends.c.ops.trunc  # noqa: F401
