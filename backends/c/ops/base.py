"""The pieces every C kernel module builds on: Kernel, KernelPlan, Scratch and the table
KERNELS that the @c_kernel decorator fills (backends.c.ops imports every kernel module)."""

from __future__ import annotations

from dataclasses import dataclass, field

from backends.c.context import C_SIZES, EmitContext
from backends.c.writer import CWriter
from qcc.core.ir import Node


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
