"""Pools on codes in C: MaxPool and GlobalMaxPool (nn.max_pool on integers: padding never wins,
a window wholly in the padding gives the type's lowest value), AveragePool and
GlobalAveragePool (kernels.average_pool: the exact window sum over the taps inside the image,
divided by the window count with divide_round, to nearest, ties away from zero), and
QAveragePool (kernels.qaverage_pool: the window sum of x − x_zero_point, requantized). Geometry
(pads, strides, dilations, ceil_mode) comes from qcc.core.ops.nn.window, as in the interpreter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from backends.c.ops.base import Kernel, KernelPlan, c_kernel
from backends.c.ops.common import Requant, linear
from backends.c.writer import CWriter
from qcc.core.errors import QccError
from qcc.core.ir import Node
from qcc.core.ops import nn

TYPE_MIN = {"int8_t": "INT8_MIN", "uint8_t": "0", "int16_t": "INT16_MIN", "uint16_t": "0",
            "int32_t": "INT32_MIN"}


@dataclass
class Axis:
    """One spatial axis of a pool window."""

    size: int  # input extent
    out: int
    kernel: int
    stride: int
    dilation: int
    pad: int  # padding before
    counted: tuple[int, int]  # input positions [lo, hi) an average counts (kernels' rule)


def pool_axes(node: Node, shape: tuple[int, ...]) -> list[Axis]:
    if len(shape) < 3 or shape[0] != 1:
        raise QccError(f"{node.op_type} {node.name!r}: input shape {list(shape)} is not "
                       "one sample of (N, C, spatial...)")
    kernel = tuple(int(k) for k in node.attrs["kernel_shape"])
    win = nn.window(node, shape[2:], kernel, bool(node.attrs.get("ceil_mode", 0)))
    include_pad = bool(node.attrs.get("count_include_pad", 0))
    axes = []
    for i, size in enumerate(shape[2:]):
        # counted: the input, plus with count_include_pad the explicit padding (never the
        # ceil_mode room), as nn.window_counts
        counted = (-win.pads_begin[i], size + win.pads_end[i]) if include_pad else (0, size)
        axes.append(Axis(size, win.out_spatial[i], win.kernel[i], win.strides[i],
                         win.dilations[i], win.pads_begin[i], counted))
    return axes


def _row_major(names: list[str], sizes: list[int]) -> str:
    index = names[0]
    for name, size in zip(names[1:], sizes[1:]):
        index = f"({index}) * {size} + {name}"
    return index


@c_kernel
class WindowPoolKernel(Kernel):
    """MaxPool; AveragePoolKernel below is the same loops with a rounded mean."""

    op_types = ("MaxPool",)
    average = False
    requantizes = False  # QAveragePool: Σ (x − zx), then the node's Requant

    def plan(self, node: Node, ctx) -> KernelPlan:
        if len(node.outputs) > 1 and node.outputs[1].consumers:
            raise QccError(f"MaxPool {node.name!r}: the Indices output is not supported in C")
        axes = pool_axes(node, ctx.t(node.inputs[0]).shape)
        return KernelPlan(note=f"{node.op_type} {'x'.join(str(a.kernel) for a in axes)}, "
                               f"stride {'x'.join(str(a.stride) for a in axes)}")

    def emit(self, node: Node, ctx, w: CWriter) -> None:
        x = ctx.t(node.inputs[0])
        axes = pool_axes(node, x.shape)
        average = self.average
        taps = math.prod(a.kernel for a in axes)
        zx = int(node.attrs.get("x_zero_point", 0))
        bound = taps * (x.absmax + abs(zx))
        sum_t = "int32_t" if bound < 1 << 31 else "int64_t"
        req = Requant.of(node, 1, "") if self.requantizes else None
        outs, taps_at = [f"o{i}" for i in range(len(axes))], [f"k{i}" for i in range(len(axes))]
        w.line(f"int32_t c, {', '.join(outs + taps_at)};")
        with w.block(f"for (c = 0; c < {x.shape[1]}; ++c)"):
            w.line(f"const {x.ctype} *const xc = x0 + c * {math.prod(a.size for a in axes)};")
            w.line(f"{ctx.t(node.outputs[0]).ctype} *const yc = y0 + c * "
                   f"{math.prod(a.out for a in axes)};")
            self._open(w, [(o, a.out) for o, a in zip(outs, axes)])
            if average:
                w.line(f"{sum_t} total = 0;")
                if req is None:
                    w.line("int32_t count = 0;")
            else:
                w.line(f"{x.ctype} best = {TYPE_MIN[x.ctype]};")
            self._open(w, [(k, a.kernel) for k, a in zip(taps_at, axes)])
            for i, (o, k, a) in enumerate(zip(outs, taps_at, axes)):
                w.line(f"const int32_t p{i} = {linear([(o, a.stride), (k, a.dilation)], -a.pad)};")
            if average and req is None:
                counted = " && ".join(f"p{i} >= {a.counted[0]} && p{i} < {a.counted[1]}"
                                      for i, a in enumerate(axes))
                with w.block(f"if ({counted})"):
                    w.line("++count;")
            outside = " || ".join(f"p{i} < 0 || p{i} >= {a.size}" for i, a in enumerate(axes))
            with w.block(f"if ({outside})"):
                w.line("continue;")
            value = f"xc[{_row_major([f'p{i}' for i in range(len(axes))], [a.size for a in axes])}]"
            if req is not None:
                value = f"({value} - {zx})" if zx else value
            w.line(f"total += {value};" if average else
                   f"best = {value} > best ? {value} : best;")
            self._close(w, len(axes))
            out_index = _row_major(outs, [a.out for a in axes])
            if req is not None:  # every window counts the same taps: one Requant
                w.line(f"yc[{out_index}] = ({ctx.t(node.outputs[0]).ctype})"
                       f"{req.expr('total', '0', bound, sum_t, ctx.rt)};")
            elif average:  # a window with no counted tap: the interpreter's integer 0 // 0 is 0
                w.line(f"yc[{out_index}] = ({x.ctype})(count ? "
                       f"{ctx.rt}divide_round(total, count) : 0);")
            else:
                w.line(f"yc[{out_index}] = best;")
            self._close(w, len(axes))

    @staticmethod
    def _open(w: CWriter, loops: list[tuple[str, int]]) -> None:
        for name, n in loops:
            w.line(f"for ({name} = 0; {name} < {n}; ++{name}) {{")
            w.depth += 1

    @staticmethod
    def _close(w: CWriter, n: int) -> None:
        for _ in range(n):
            w.depth -= 1
            w.line("}")


@c_kernel
class AveragePoolKernel(WindowPoolKernel):
    op_types = ("AveragePool",)
    average = True


@c_kernel
class RequantizingAveragePoolKernel(WindowPoolKernel):
    op_types = ("QAveragePool",)
    origin = "ONNX AveragePool as qcc.QAveragePool"
    average = True
    requantizes = True


@c_kernel
class GlobalPoolKernel(Kernel):
    """GlobalMaxPool; GlobalAveragePoolKernel below takes the rounded mean instead."""

    op_types = ("GlobalMaxPool",)
    average = False

    def plan(self, node: Node, ctx) -> KernelPlan:
        return KernelPlan(note=f"{node.op_type} over each channel")

    def emit(self, node: Node, ctx, w: CWriter) -> None:
        x = ctx.t(node.inputs[0])
        channels = x.shape[1]
        plane = x.numel // channels
        w.line("int32_t c, p;")
        with w.block(f"for (c = 0; c < {channels}; ++c)"):
            w.line(f"const {x.ctype} *const xc = x0 + c * {plane};")
            if not self.average:
                w.line(f"{x.ctype} best = xc[0];")
                with w.block(f"for (p = 1; p < {plane}; ++p)"):
                    w.line("best = xc[p] > best ? xc[p] : best;")
                w.line("y0[c] = best;")
                return
            sum_t = "int32_t" if plane * x.absmax < 1 << 31 else "int64_t"
            w.line(f"{sum_t} total = 0;")
            with w.block(f"for (p = 0; p < {plane}; ++p)"):
                w.line("total += xc[p];")
            w.line(f"y0[c] = ({x.ctype}){ctx.rt}divide_round(total, {plane});")


@c_kernel
class GlobalAveragePoolKernel(GlobalPoolKernel):
    op_types = ("GlobalAveragePool",)
    average = True
