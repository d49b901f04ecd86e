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

from backends.c.ops import (  # noqa: F401  (each module registers its kernels)
    conv,
    elementwise,
    gemm,
    movement,
    pool,
    qlinear,
    softmax,
    trunc,
)
from backends.c.ops.base import (
    C_SIZES,
    KERNELS,
    Kernel,
    KernelPlan,
    Scratch,
    c_kernel,
)
from qcc.core.errors import UnsupportedOpError
from qcc.core.ir import Node

__all__ = ["C_SIZES", "KERNELS", "Kernel", "KernelPlan", "Scratch", "c_kernel", "kernel_for"]


def kernel_for(node: Node) -> Kernel:
    kernel = KERNELS.get(node.op_type)
    if kernel is None:
        raise UnsupportedOpError(
            f"the C backend has no kernel for {node.op_type} (node {node.name!r}); it emits: "
            f"{', '.join(sorted(KERNELS))}")
    return kernel
