"""Elementwise integer ops in C: QAdd and Requantize (kernels.rescale_sum), Relu on codes, and
the level snap of APoT activations (a Gather from a constant table).

rescale_sum: acc = Σ_i (x_i − z_i)·M_i, exact (int32 when Σ max|x_i − z_i|·M_i < 2^31, the
alignment of the inputs' scales being the integer multipliers M_i over a common 2^S), then
round_shift(acc, S) + zp, clamped. Inputs broadcast as NumPy does (index maps from
backends/c/ops/common.py). An output of the same shape and type may overwrite an input that
dies at this node (element i is read before it is written); the node function then reads that
input through its output pointer, so the compiler sees one array and still vectorises.
"""

from __future__ import annotations

import numpy as np

from backends.c.ops.base import Kernel, KernelPlan, c_kernel
from backends.c.ops.common import Affine, Requant, acc_type, affine_loops, affine_of
from backends.c.writer import CWriter
from qcc.core.errors import QccError
from qcc.core.ir import Node


def index_maps(node: Node, ctx) -> tuple[tuple[int, ...], list[Affine]]:
    """Output shape and, per output then per non-constant input, its affine index map."""
    out = ctx.t(node.outputs[0])
    maps = [Affine(0, _row_major(out.shape))]
    for v in node.inputs:
        if v is None or v.is_const:
            continue
        t = ctx.t(v)
        grid = np.broadcast_to(np.arange(t.numel, dtype=np.int64).reshape(t.shape), out.shape)
        maps.append(affine_of(grid))
    return out.shape, maps


def _row_major(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def in_place_candidates(node: Node, ctx) -> tuple[int, ...]:
    """Inputs (by position among the non-constant ones) the output may overwrite."""
    out = ctx.t(node.outputs[0])
    found = []
    live = [v for v in node.inputs if v is not None and not v.is_const]
    for i, v in enumerate(live):
        t = ctx.t(v)
        if t.shape == out.shape and t.dtype == out.dtype and sum(u is v for u in live) == 1:
            found.append(i)
    return tuple(found)


@c_kernel
class RescaleSumKernel(Kernel):
    """QAdd: Σ_i (x_i − z_i)·M_i, requantized (RescaleKernel: the one-input Requantize)."""

    op_types = ("QAdd",)
    origin = "ONNX Add as qcc.QAdd"
    what = "sum of rescaled inputs"

    def plan(self, node: Node, ctx) -> KernelPlan:
        _, _, acc_t = self._bound(node, ctx)
        return KernelPlan(in_place=in_place_candidates(node, ctx),
                          note=f"{self.what}, {acc_t} accumulator")

    def _bound(self, node: Node, ctx) -> tuple[list[int], int, str]:
        a = node.attrs
        xs = [ctx.t(v) for v in node.inputs]
        zps = [int(z) for z in a.get("zero_points", [0] * len(xs))]
        mults = [int(m) for m in a["multipliers"]]
        bound = sum(max(abs(x.lo - z), abs(x.hi - z)) * m for x, z, m in zip(xs, zps, mults))
        return zps, bound, acc_type(bound, node)

    def emit(self, node: Node, ctx, w: CWriter) -> None:
        if any(v.is_const for v in node.inputs):
            raise QccError(f"{node.op_type} {node.name!r}: constant inputs are not supported "
                           "by the C backend")
        zps, bound, acc_t = self._bound(node, ctx)
        req = Requant.of(node, 1, ctx.cname(node, "rq"))
        mults = [int(m) for m in node.attrs["multipliers"]]
        shape, maps = index_maps(node, ctx)
        out_t = ctx.t(node.outputs[0]).ctype

        def body(ix: list[str]) -> list[str]:
            terms = []
            for i, (z, m) in enumerate(zip(zps, mults)):
                x = f"(({acc_t})x{i}[{ix[i + 1]}] - {z})" if z else f"({acc_t})x{i}[{ix[i + 1]}]"
                terms.append(x if m == 1 else f"{x} * {m}")
            acc = " + ".join(terms)
            value = req.expr("acc", "0", bound, acc_t, ctx.rt)
            return [f"const {acc_t} acc = {acc};", f"y0[{ix[0]}] = ({out_t}){value};"]

        affine_loops(w, shape, maps, body)


@c_kernel
class RescaleKernel(RescaleSumKernel):
    op_types = ("Requantize",)
    origin = "qcc.Requantize (format change)"
    what = "rescale"


@c_kernel
class ReluKernel(Kernel):
    op_types = ("Relu",)

    def plan(self, node: Node, ctx) -> KernelPlan:
        return KernelPlan(in_place=in_place_candidates(node, ctx), note="max(x, 0) on codes")

    def emit(self, node: Node, ctx, w: CWriter) -> None:
        x = ctx.t(node.inputs[0])
        shape, maps = index_maps(node, ctx)
        value = "x0[{0}]" if x.lo >= 0 else "x0[{0}] > 0 ? x0[{0}] : 0"
        affine_loops(w, shape, maps,
                     lambda ix: [f"y0[{ix[0]}] = ({x.ctype})({value.format(ix[1])});"])


class TableKernel(Kernel):
    """Gather from a constant 1-D table by the codes of a tensor: the APoT level snap
    (registered for Gather by backends/c/ops/movement.py, which also handles the other form)."""

    def _table(self, node: Node, ctx) -> np.ndarray:
        data, idx = node.inputs[0], node.inputs[1]
        if not data.is_const or data.const.ndim != 1 or node.attrs.get("axis", 0) != 0 or \
                idx.is_const:
            raise QccError(f"Gather {node.name!r}: the C backend emits table lookups only (a "
                           "constant 1-D table indexed by codes)")
        t = ctx.t(idx)
        n = data.const.size
        if t.lo < -n or t.hi >= n:
            raise QccError(f"Gather {node.name!r}: codes [{t.lo}, {t.hi}] exceed the table "
                           f"of {n} entries")
        return data.const

    def plan(self, node: Node, ctx) -> KernelPlan:
        self._table(node, ctx)
        return KernelPlan(in_place=in_place_candidates(node, ctx),
                          note="table lookup (the nearest level of each code)")

    def emit(self, node: Node, ctx, w: CWriter) -> None:
        table = self._table(node, ctx)
        out = ctx.t(node.outputs[0])
        name = ctx.const_array(node, "table", out.ctype, table.astype(np.int64).tolist())
        idx = ctx.t(node.inputs[1])
        shape, maps = index_maps(node, ctx)

        def body(ix: list[str]) -> list[str]:
            code = f"x0[{ix[1]}]"
            index = f"({code} < 0 ? {code} + {table.size} : {code})" if idx.lo < 0 else code
            return [f"y0[{ix[0]}] = {name}[{index}];"]

        affine_loops(w, shape, maps, body)
