"""QGemm in C: kernels.qgemm (and xnor.gemm_acc for dot = "xnor").

x (..., K) times the weight rows W (M, K) (the ONNX weight transposed at emit time when
transB = 0), one dot product per output: acc = b_m + Σ_k (x_k − zx)·w_mk, then requantized per
output column. Rows of packed weights are unpacked once per output; APoT / PoT rows multiply
by shift-adds (backends/c/ops/weights.py). XNOR layers pack the signs of each input row into
uint32 words once and take one XNOR-popcount per output. 8-bit layers with int8 weights run
the packed kernel of ops/dsp.py where the core has the DSP extension (`#if <NAME>_DSP`).
"""

from __future__ import annotations

import numpy as np

from backends.c.ops.base import Kernel, KernelPlan, Scratch, c_kernel
from backends.c.ops.common import Requant, acc_type
from backends.c.ops.dsp import (
    DSP_TYPES,
    DspLayer,
    define_layer,
    dsp_layer,
    dsp_macro,
    emit_row_blocks,
    widen,
)
from backends.c.ops.weights import RowReader
from backends.c.packing import store_rows
from backends.c.writer import CWriter
from qcc.core.ir import Node
from qcc.core.layers import weight_rows


@c_kernel
class QGemmKernel(Kernel):
    op_types = ("QGemm",)
    origin = "ONNX Gemm/MatMul as qcc.QGemm"
    packed = True  # the DSP kernels may apply (ops/qlinear.py, whose requantization is not
    # qcc's integer one, turns them off)

    def setup(self, node: Node, ctx) -> tuple:
        cached = ctx.memo.get(node.name)
        if cached is not None:
            return cached
        x = ctx.t(node.inputs[0])
        w = node.inputs[1].const
        rows_w = weight_rows(node, w)  # (M, K)
        m, k = rows_w.shape
        xnor = node.attrs.get("dot") == "xnor"
        zx = int(node.attrs.get("x_zero_point", 0))
        bias = node.input(2)
        b = (np.broadcast_to(bias.const.astype(np.int64).ravel(), (m,)) if bias is not None
             else np.zeros(m, np.int64))
        req = Requant.of(node, m, ctx.cname(node, "rq"))
        codes = np.ascontiguousarray(rows_w)
        dsp = None
        if self.packed and not xnor and x.ctype in DSP_TYPES and \
                store_rows(codes, "").kind == "int8":
            # one input row: blocks of four weight rows share its loads (where no zero row
            # pads the last block: flash); else 2 x 2 blocks
            dsp = dsp_layer(codes, b, zx, x.absmax, req, ctx.cname(node, "wd"),
                            block=4 if x.numel // k == 1 and m % 4 == 0 else 2)
        if dsp is not None:  # the portable path's weights only where it runs
            ctx.consts.directive(f"#if !{dsp_macro(ctx)}")
        rows = ctx.weights(node, "w", codes, xnor=xnor)
        if dsp is not None:
            ctx.consts.directive("#endif")
        b_max = int(np.abs(b).max(initial=0))
        x_max = 1 if xnor else max(abs(x.lo - zx), abs(x.hi - zx))
        bound = k * x_max * rows.absmax + b_max
        result = (m, k, x.numel // k, rows, req, bound, acc_type(bound, node), dsp, codes)
        ctx.memo[node.name] = result
        return result

    def plan(self, node: Node, ctx) -> KernelPlan:
        m, k, n, rows, _, _, acc_t, dsp, _ = self.setup(node, ctx)
        if dsp is not None:  # the portable path reads the weights in place: no scratch
            return KernelPlan([Scratch("int16_t", 2 * dsp.kp)], macs=n * m * k,
                              note=f"gemm {n}x{k} by {m}x{k}; with {dsp_macro(ctx)}: packed "
                                   f"SMLAD blocks of 2 rows x 2 input rows, else {acc_t} "
                                   f"accumulators")
        if rows.kind == "xnor":
            return KernelPlan([Scratch("uint32_t", rows.words)], macs=n * m * k,
                              note=f"XNOR-popcount gemm, {n}x{k} by {m}x{k}")
        reader = RowReader(rows, ctx.rt, acc_t)
        return KernelPlan(reader.scratch, macs=n * m * k,
                          note=f"gemm {n}x{k} by {m}x{k}, {acc_t} accumulators, weights "
                               f"{rows.kind}" + (" (shift-add)" if reader.shift_add else ""))

    def emit(self, node: Node, ctx, w: CWriter) -> None:
        m, k, n, rows, req, bound, acc_t, dsp, codes = self.setup(node, ctx)
        out_t = ctx.t(node.outputs[0]).ctype
        if dsp is not None:
            ctx.consts.directive(f"#if {dsp_macro(ctx)}")
            define_layer(ctx.consts, dsp, codes)
            ctx.consts.directive("#else")
            w.directive(f"#if {dsp_macro(ctx)}")
            _emit_dsp(w, ctx, dsp, n, ctx.t(node.inputs[0]).ctype, out_t)
            w.directive("#else")
            w.line("(void)s0; /* the packed kernel's scratch */")
        ctx.constant_bytes += req.define(ctx.consts)
        bias = node.input(2)
        if bias is not None:
            ctx.const_array(node, "b", "int32_t", bias.const.astype(np.int64).ravel().tolist())
        init = f"{ctx.cname(node, 'b')}[o]" if bias is not None else "0"
        zx = int(node.attrs.get("x_zero_point", 0))
        if rows.kind == "xnor":
            self._emit_xnor(w, ctx, node, m, k, n, rows, req, bound, acc_t, init, out_t, zx)
            return
        self._emit_portable(w, ctx, node, m, k, n, rows, req, bound, acc_t, init, out_t, zx)
        if dsp is not None:
            ctx.consts.directive("#endif")
            w.directive("#endif")

    @staticmethod
    def _emit_portable(w: CWriter, ctx, node: Node, m: int, k: int, n: int, rows,
                       req: Requant, bound: int, acc_t: str, init: str, out_t: str,
                       zx: int) -> None:
        reader = RowReader(rows, ctx.rt, acc_t)
        w.line("int32_t o, r, i;")
        with w.block(f"for (o = 0; o < {m}; ++o)"):
            reader.fetch(w, "o", "s0" if reader.scratch else None)
            with w.block(f"for (r = 0; r < {n}; ++r)"):
                w.line(f"const {ctx.t(node.inputs[0]).ctype} *const xr = x0 + r * {k};")
                w.line(f"{acc_t} acc = {init};")
                with w.block(f"for (i = 0; i < {k}; ++i)"):
                    if reader.shift_add:
                        reader.tap_constants(w, "i")
                    else:
                        w.line(f"const {acc_t} wv = wr[i];")
                    x = f"(int32_t)xr[i] - {zx}" if zx else "xr[i]"
                    w.line(f"acc += {reader.product(x)};")
                value = req.expr("acc", "o", bound, acc_t, ctx.rt)
                w.line(f"y0[r * {m} + o] = ({out_t}){value};")

    @staticmethod
    def _emit_xnor(w: CWriter, ctx, node: Node, m: int, k: int, n: int, rows, req: Requant,
                   bound: int, acc_t: str, init: str, out_t: str, zx: int) -> None:
        words = rows.words
        valid = [0xFFFFFFFF] * (k // 32) + ([(1 << (k % 32)) - 1] if k % 32 else [])
        ctx.const_array(node, "valid", "uint32_t", [f"0x{v:08X}u" for v in valid])
        x = ctx.t(node.inputs[0])
        w.line("int32_t o, r, i;")
        if x.lo >= zx:
            w.line("(void)x0; /* every input code is >= the zero point: all signs are +1 */")
        with w.block(f"for (r = 0; r < {n}; ++r)"):
            with w.block(f"for (i = 0; i < {words}; ++i)"):
                w.line("s0[i] = 0u;")
            with w.block(f"for (i = 0; i < {k}; ++i)"):
                if x.lo >= zx:
                    w.line("s0[i >> 5] |= 1u << (i & 31);")
                else:
                    with w.block(f"if (x0[r * {k} + i] >= {zx})"):
                        w.line("s0[i >> 5] |= 1u << (i & 31);  /* sign(0) = +1 */")
            with w.block(f"for (o = 0; o < {m}; ++o)"):
                dot = (f"{ctx.rt}xnor_dot(s0, {rows.cname} + o * {words}, "
                       f"{ctx.cname(node, 'valid')}, {words})")
                w.line(f"const {acc_t} acc = ({acc_t}){dot} + {init};")
                w.line(f"y0[r * {m} + o] = ({out_t}){req.expr('acc', 'o', bound, acc_t, ctx.rt)};")


def _emit_dsp(w: CWriter, ctx, layer: DspLayer, n: int, x_t: str, out_t: str) -> None:
    """Two input rows at a time widened to int16 (zero taps up to kp), then every pair of
    weight rows times them (ops/dsp.py); an odd last input row alone."""
    k, kp, m, rt = layer.k, layer.kp, layer.rows, ctx.rt
    w.line("int16_t *const z = (int16_t *)(void *)s0;")
    w.line("int32_t r, i;" if kp > k else "int32_t r;")
    if kp > k:
        with w.block(f"for (i = {k}; i < {kp}; ++i)"):
            w.line("z[i] = 0;")
            w.line(f"z[{kp} + i] = 0;")

    def store(row: str, col: str, value: str) -> str:
        return f"y0[(r + {col}) * {m} + {row}] = ({out_t}){value};"

    widen_x = widen(x_t, rt)

    def chunk(cols: int) -> None:
        for c in range(cols):
            w.line(f"{widen_x}(x0 + (r + {c}) * {k}, z + {c * kp}, {k});")
        with w.block(""):
            emit_row_blocks(w, ctx, layer, cols, lambda c: f"z + ({c}) * {kp}", store, kp)

    if n >= 2:
        with w.block(f"for (r = 0; r + 1 < {n}; r += 2)"):
            chunk(2)
    if n % 2:
        w.line(f"r = {n - 1};")
        chunk(1)
