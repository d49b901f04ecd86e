"""Ops that only move codes, in C: views, copies by index map, and Concat.

The index map of such an op comes from running its own float kernel (the one the interpreter
runs on codes) on the element numbers 0..n-1 of its input: output element i then holds the
number of the input element it copies, whatever the op (Reshape, Flatten, Squeeze, Transpose,
Slice, Split, Gather with constant indices, ...). An identity map is a view: no code and no
storage (the planner aliases the output to the input). An affine map is a loop nest with
strides; anything else is a table of input offsets.

Concat (batch 1): when everything before the axis has one element, each input is a contiguous
slice of the output, and the memory planner lets the producers write straight into their
slices; only the inputs it could not place (or constants) are copied here.
"""

from __future__ import annotations

import numpy as np

from backends.c.ops.base import Kernel, KernelPlan, c_kernel
from backends.c.ops.common import Affine, affine_loops, affine_of
from backends.c.ops.elementwise import TableKernel
from backends.c.writer import CWriter
from qcc.core.errors import QccError
from qcc.core.ir import Node
from qcc.core.registry import lookup

MOVERS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Transpose",
          "Slice", "Split", "Expand", "Tile", "DepthToSpace", "SpaceToDepth")


def index_maps(node: Node, ctx) -> list[np.ndarray]:
    """Per output: the input element number of each output element (see the module doc)."""
    live = [v for v in node.inputs if v is not None and not v.is_const]
    if len(live) != 1:
        raise QccError(f"{node.op_type} {node.name!r}: the C backend moves codes of one "
                       f"non-constant input, this node has {len(live)}")
    x = ctx.t(live[0])
    args = [np.arange(x.numel, dtype=np.int64).reshape(x.shape) if v is live[0]
            else (v.const if v is not None else None) for v in node.inputs]
    result = lookup(node).kernel(node, *args)
    outs = list(result) if isinstance(result, (tuple, list)) else [result]
    maps = [np.asarray(o, dtype=np.int64) for o in outs[: len(node.outputs)]]
    for value, m in zip(node.outputs, maps):
        if m.shape != ctx.t(value).shape:
            raise QccError(f"{node.op_type} {node.name!r}: index map shape {m.shape} differs "
                           f"from the output's {ctx.t(value).shape}")
    return maps


def is_view(node: Node, ctx) -> bool:
    """One output whose elements are the input's, in the same order."""
    if len(node.outputs) != 1:
        return False
    (m,) = index_maps(node, ctx)
    return bool(np.array_equal(m.ravel(), np.arange(m.size)))


def emit_copy(w: CWriter, ctx, node: Node, m: np.ndarray, src: str, dst: str) -> None:
    """dst[i] = src[m[i]] as a loop nest (affine m) or through a table of offsets."""
    form = affine_of(m)
    if form is not None:
        out = Affine(0, tuple(int(s) for s in np.cumprod((1,) + m.shape[::-1])[-2::-1]))
        affine_loops(w, m.shape, [out, form], lambda ix: [f"{dst}[{ix[0]}] = {src}[{ix[1]}];"])
        return
    ctype = "uint16_t" if m.size and int(m.max()) < 1 << 16 else "uint32_t"
    table = ctx.const_array(node, f"map_{dst}", ctype, m.ravel().tolist())
    w.line("int32_t i;")
    with w.block(f"for (i = 0; i < {m.size}; ++i)"):
        w.line(f"{dst}[i] = {src}[{table}[i]];")


@c_kernel
class MoveKernel(Kernel):
    op_types = MOVERS

    def plan(self, node: Node, ctx) -> KernelPlan:
        if is_view(node, ctx):
            return KernelPlan(alias=True, note="a view of its input (no code)")
        return KernelPlan(note="copy by index map")

    def emit(self, node: Node, ctx, w: CWriter) -> None:
        for j, m in enumerate(index_maps(node, ctx)):
            with w.block(""):
                emit_copy(w, ctx, node, m, "x0", f"y{j}")


@c_kernel
class GatherKernel(TableKernel):
    """Gather: a table lookup (constant data) or a copy by index map (constant indices)."""

    op_types = ("Gather",)
    origin = "Gather"

    def plan(self, node: Node, ctx) -> KernelPlan:
        if node.inputs[0].is_const:
            return super().plan(node, ctx)
        return MoveKernel().plan(node, ctx)

    def emit(self, node: Node, ctx, w: CWriter) -> None:
        if node.inputs[0].is_const:
            super().emit(node, ctx, w)
        else:
            MoveKernel().emit(node, ctx, w)


def concat_layout(node: Node, ctx) -> tuple[int, list[int]]:
    """(elements before the axis, byte offset of each input's slice when that is 1)."""
    out = ctx.t(node.outputs[0])
    axis = int(node.attrs.get("axis", 0)) % len(out.shape)
    outer = int(np.prod(out.shape[:axis], dtype=np.int64))
    offsets, at = [], 0
    for v in node.inputs:
        offsets.append(at * out.dtype.itemsize)
        shape = v.const.shape if v.is_const else ctx.t(v).shape
        at += int(np.prod(shape, dtype=np.int64)) // max(outer, 1)
    return outer, offsets


@c_kernel
class ConcatKernel(Kernel):
    op_types = ("Concat",)

    def plan(self, node: Node, ctx) -> KernelPlan:
        out = ctx.t(node.outputs[0])
        for v in node.inputs:
            dtype = v.const.dtype if v.is_const else ctx.t(v).dtype
            if v.is_const and v.const.size and (v.const.min() < out.lo or v.const.max() > out.hi):
                raise QccError(f"Concat {node.name!r}: constant input outside the code range")
            if not v.is_const and dtype != out.dtype:
                raise QccError(f"Concat {node.name!r}: inputs of different storage types")
        outer, _ = concat_layout(node, ctx)
        return KernelPlan(concat=outer == 1, note="concat")

    def emit(self, node: Node, ctx, w: CWriter) -> None:
        out = ctx.t(node.outputs[0])
        axis = int(node.attrs.get("axis", 0)) % len(out.shape)
        outer = int(np.prod(out.shape[:axis], dtype=np.int64))
        inner_out = out.numel // max(outer, 1)
        placed = ctx.placed.get(node.name, set())
        at, live = 0, 0
        for v in node.inputs:
            numel = v.const.size if v.is_const else ctx.t(v).numel
            inner = numel // max(outer, 1)
            if v.is_const:
                src = ctx.const_array(node, f"in{at}", out.ctype, v.const.ravel().tolist())
            else:
                src = f"x{live}"
                live += 1
            if v.is_const or (live - 1) not in placed:
                w.comment(f"input {v.name} -> elements {at}.. of each block")
                form = [Affine(at, (inner_out, 1)), Affine(0, (inner, 1))]
                with w.block(""):
                    affine_loops(w, (outer, inner), form,
                                 lambda ix, s=src: [f"y0[{ix[0]}] = {s}[{ix[1]}];"])
            else:
                w.comment(f"input {v.name} was written in place into its slice")
            at += inner
