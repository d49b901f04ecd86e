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
    SharedArg,
    define_layer,
    dsp_layer,
    dsp_macro,
    dsp_sub_bits,
    emit_byte_rows,
    emit_row_blocks,
    emit_shared_body,
    widen,
)
from backends.c.ops.weights import RowReader
from backends.c.packing import store_rows
from backends.c.writer import CWriter
from qcc.core.ir import Node
from qcc.core.layers import weight_rows

# weight rows below which a Gemm of one 8-bit row reads it as bytes rather than widening it
# (widening costs ~2.5 instructions per activation, the byte kernel 0.75 per weight row)
BYTE_ROWS = 16


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
        kind = store_rows(codes, "").kind
        if self.packed and not xnor and x.ctype in DSP_TYPES and kind == "int8":
            # one input row: blocks of four weight rows share its loads (where no zero row
            # pads the last block: flash); else 2 x 2 blocks
            one_row = x.numel // k == 1
            dsp = dsp_layer(codes, b, zx, x.absmax, req, ctx.cname(node, "wd"),
                            block=4 if one_row and m % 4 == 0 else 2,
                            byte_x=one_row and x.ctype != "int16_t" and m < BYTE_ROWS)
        elif self.packed and not xnor and x.ctype in DSP_TYPES and kind in ("packed", "signs"):
            # 4- / 2- / 1-bit rows stay packed, unpacked one at a time (one-row blocks)
            dsp = dsp_layer(codes, b, zx, x.absmax, req, ctx.cname(node, "wd"), block=1,
                            bits=dsp_sub_bits(codes))
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
            cols = 1 if dsp.block == 4 or n == 1 else 2
            blocks = (f"the input row read as bytes times blocks of {dsp.block} rows"
                      if dsp.byte_x else f"SMLAD blocks of {dsp.block} row(s) x {cols} "
                      f"widened input row(s)")
            if dsp.bits < 8:
                blocks += f", {dsp.bits}-bit weights unpacked per row"
            # the widened input rows (none for the byte kernel: one element keeps s0)
            scratch = Scratch("int16_t", 1 if dsp.byte_x else 2 * dsp.kp)
            if dsp.bits < 8:  # + the unpacked weight row; the portable path unpacks into s0
                nbytes = 4 * dsp.kp + dsp.kp
                scratch = Scratch("int8_t", max(nbytes, RowReader(rows, ctx.rt, acc_t)
                                                .scratch[0].count))
            return KernelPlan([scratch], macs=n * m * k,
                              note=f"gemm {n}x{k} by {m}x{k}; with {dsp_macro(ctx)}: packed "
                                   f"{blocks}, else {acc_t} accumulators")
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
            w.directive(f"#if {dsp_macro(ctx)}")
            x_t = ctx.t(node.inputs[0]).ctype
            args = [SharedArg(f"const {x_t} *restrict ", "x0", "x0"),
                    SharedArg(f"{out_t} *restrict ", "y0", "y0"),
                    SharedArg("void *restrict ", "s0", "s0"), *dsp.shared_args("dw")]
            emit_shared_body(w, ctx, args, lambda body: _emit_dsp(
                body, ctx, dsp.renamed("dw"), n, x_t, out_t))
            ctx.consts.directive("#else")
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
    weight rows times them (ops/dsp.py); an odd last input row alone. One 8-bit row times
    few weight rows reads the row as bytes instead (ops/dsp.py emit_byte_rows)."""
    k, kp, m, rt = layer.k, layer.kp, layer.rows, ctx.rt
    if layer.byte_x:
        w.line("(void)s0; /* the widened rows' scratch: not needed */")
        emit_byte_rows(w, ctx, layer, x_t,
                       lambda row, col, value: f"y0[{row}] = ({out_t}){value};")
        return
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
            emit_row_blocks(w, ctx, layer, cols, lambda c: f"z + ({c}) * {kp}", store, kp,
                            f"(uint8_t *)s0 + {4 * kp}")

    if n >= 2:
        with w.block(f"for (r = 0; r + 1 < {n}; r += 2)"):
            chunk(2)
    if n % 2:
        w.line(f"r = {n - 1};")
        chunk(1)
