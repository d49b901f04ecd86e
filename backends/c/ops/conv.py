"""QConv in C: kernels.qconv (and xnor.conv_acc for dot = "xnor"), one sample, 1-D or 2-D.

Four loop orders, all giving acc = b + Σ (x − zx)·w exactly (then kernels.requantize):

- patches (int8 / int16, sub-byte or sign weights where strips do not apply: groups, dilation,
  narrow output rows): im2col for a block of output positions (padding filled with the zero
  point zx, so it adds 0), then per output channel the dot products of the weight row with
  each patch; acc starts at b − zx·Σw, so the inner loop is a plain dot product of codes
  (compilers vectorise it, into VNNI dot-product instructions where the CPU has them);
- strips (the patches' arithmetic for int8 / int16 weights, one group, no dilation, output rows
  of at least STRIP_MIN_WIDTH): per output row, the kernel's input rows transposed into a strip
  of columns, each column the KH·C codes under it (padding = zx), so the patch of output
  column ow is the k contiguous codes from column ow·SW, taps in (kw, kh, ic) order (the
  weight rows are stored in that order). Every input row is transposed once per layer (the
  strip slides by SH rows between output rows) instead of KH·KW times into patches; the weight
  rows are zero-padded to a multiple of the vector width, so the dot product is one vector
  loop (reading a little into the next column, times zero weights);
- planes (depthwise, tiny kernels, and weights that need decoding: sub-byte, signs, APoT
  shift-adds): per output channel, a plane of accumulators starts at the bias and every kernel
  tap adds (x − zx)·w over the output positions whose input lies inside the image (ranges
  tabulated here, so padding costs nothing); a row of weights is decoded once per channel;
- xnor (sign activations, binary weights): per output position the patch's sign bits and
  validity mask in uint32 words, then 2·popcount(XNOR(a, w) & valid) − popcount(valid) per
  output channel (xnor.py's identity).

Where the core has the DSP extension (`#if <NAME>_DSP`), 8-bit layers with int8 (or 4-, 2-, 1-bit)
weights run packed kernels instead (ops/dsp.py): strips of int16 codes (filled two channels
at a time) times one-row, four-column SMLAD blocks for ungrouped convs (a 1x1 conv takes
several output rows as one strip on narrow images), and for depthwise convs an int16 canvas
of each channel with its padding, times the kernel rows' tap pairs, four outputs at a time
sharing their canvas loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from backends.c.ops.base import C_SIZES, Kernel, KernelPlan, Scratch, c_kernel
from backends.c.ops.common import Requant, acc_type, int_literal, linear
from backends.c.ops.dsp import (
    DSP_TYPES,
    DspLayer,
    DspRequant,
    SharedArg,
    column_block_fits,
    define_layer,
    dsp_layer,
    dsp_macro,
    dsp_sub_bits,
    emit_row_blocks,
    emit_shared_body,
    widen,
)
from backends.c.ops.weights import RowReader
from backends.c.packing import WeightRows, store_rows
from backends.c.writer import CWriter
from qcc.core.errors import QccError
from qcc.core.ir import Node
from qcc.core.ops import nn

# output positions per im2col block, so each weight load serves that many products: 8 where
# the compiler keeps 8 accumulators in (vector) registers, 4 on 32-bit Arm (Cortex-M has 13
# usable core registers; 8 accumulators spill). emit.py defines <NAME>_PATCH_BLOCK accordingly.
PATCH_BLOCKS = (8, 4)
PATCH_ALIGN = 16  # patches are zero-padded to a multiple of this many taps (vector width)
MIN_PATCH_TAPS = 8  # below this many taps per output, the plane order is cheaper
# strips: weight rows padded to a multiple of this many taps (longer than PATCH_ALIGN: gcc
# turns a dot product of 32·n taps into whole vectors and one horizontal sum; 144 taps as
# 128 + 16 cost two sums, 144 or 176 in one loop a scalar tail)
STRIP_ALIGN = 32
STRIP_MIN_WIDTH = min(PATCH_BLOCKS)  # narrower output rows: patches span several rows
# the packed strips of a 1x1 convolution take several output rows at once up to this size
MERGED_STRIP_BYTES = 8192
MERGED_COLUMNS = 32
RAM_TABLE_ROWS = 4  # strip rows from which fixed-point multipliers are filled into RAM
# the packed depthwise kernel keeps every weight pair of the kernel in a register (with four
# accumulators, the canvas pointer and a load: 12 of the M4's 14)
DEPTHWISE_PAIRS = 6


@dataclass
class ConvShape:
    """A 1-D or 2-D convolution seen as 2-D (a 1-D one has H = KH = 1)."""

    cin: int
    h: int
    wd: int
    cout: int
    ho: int
    wo: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    ph: int  # padding before, rows
    pw: int  # padding before, columns
    groups: int

    @property
    def cg(self) -> int:
        return self.cin // self.groups

    @property
    def mg(self) -> int:
        return self.cout // self.groups

    @property
    def k(self) -> int:
        return self.cg * self.kh * self.kw

    @property
    def plane(self) -> int:
        return self.ho * self.wo

    @property
    def padded(self) -> bool:
        """Whether some tap of some output position falls outside the image."""
        return any(self.valid("h", t) != (0, self.ho) for t in range(self.kh)) or any(
            self.valid("w", t) != (0, self.wo) for t in range(self.kw))

    def valid(self, axis: str, tap: int) -> tuple[int, int]:
        """Output positions [lo, hi) whose input row (column) for kernel tap `tap` is inside."""
        size, out, stride, dil, pad = (
            (self.h, self.ho, self.sh, self.dh, self.ph) if axis == "h"
            else (self.wd, self.wo, self.sw, self.dw, self.pw))
        offset = tap * dil - pad  # input index of output position 0
        lo = -(offset // stride) if offset < 0 else 0
        hi = min(out, (size - 1 - offset) // stride + 1) if size - 1 - offset >= 0 else 0
        return min(lo, out), max(min(lo, out), hi)

    def describe(self) -> str:
        return (f"{self.cin}x{self.h}x{self.wd} -> {self.cout}x{self.ho}x{self.wo}, kernel "
                f"{self.kh}x{self.kw}, stride {self.sh}x{self.sw}, groups {self.groups}")


def conv_shape(node: Node, x_shape: tuple[int, ...], w_shape: tuple[int, ...]) -> ConvShape:
    """Geometry from qcc.core.ops.nn.window, as the interpreter's conv resolves it."""
    if len(x_shape) not in (3, 4) or x_shape[0] != 1:
        raise QccError(f"QConv {node.name!r}: the C backend takes 1-D or 2-D convolutions of "
                       f"one sample, not input shape {list(x_shape)}")
    win = nn.conv_window(node, x_shape, w_shape)
    kernel = win.kernel

    def two(values: tuple[int, ...], default: int) -> tuple[int, int]:
        return (values[0], values[1]) if len(kernel) == 2 else (default, values[0])

    (h, wd), (ho, wo) = two(win.in_spatial, 1), two(win.out_spatial, 1)
    (kh, kw), (sh, sw) = two(win.kernel, 1), two(win.strides, 1)
    (dh, dw), (ph, pw) = two(win.dilations, 1), two(win.pads_begin, 0)
    return ConvShape(x_shape[1], h, wd, w_shape[0], ho, wo, kh, kw, sh, sw, dh, dw, ph, pw,
                     int(node.attrs.get("group", 1)))


@dataclass
class ConvSetup:
    """Everything one QConv needs, computed once per node."""

    g: ConvShape
    rows: WeightRows
    req: Requant
    bound: int  # |final accumulator| bound (kernels.exact_float_type's k·max|x−zx|·max|w| + |b|)
    acc_t: str
    order: str  # "patches", "strips", "planes" or "xnor"
    zx: int
    init: list[int]  # per output channel: the accumulator's start value
    reader: RowReader
    offset: int = 0  # patches: added to every code (int8 -> uint8); init subtracts it again
    dsp: DspLayer | None = None  # the packed kernel (ops/dsp.py), where the layer allows it
    dsp_codes: np.ndarray | None = None  # its weight rows, taps in (kw, kh, ic) order
    dsp_depthwise: DspRequant | None = None  # the packed depthwise kernel's requantization
    dsp_g: ConvShape | None = None  # the geometry the packed strips run on (merged_rows)

    def patch_t(self, x_t: str) -> str:
        """int8 codes go into uint8 patches: shifted by the offset, or as they are when none
        is negative (e.g. 4-bit unsigned codes stored in int8)."""
        return "uint8_t" if x_t == "int8_t" else x_t


@c_kernel
class QConvKernel(Kernel):
    op_types = ("QConv",)
    origin = "ONNX Conv as qcc.QConv"
    packed = True  # the DSP kernels may apply (ops/qlinear.py, whose requantization is not
    # qcc's integer one, turns them off)

    def setup(self, node: Node, ctx) -> ConvSetup:
        if node.name in ctx.memo:
            return ctx.memo[node.name][0]
        x = ctx.t(node.inputs[0])
        w = node.inputs[1].const.astype(np.int64)
        g = conv_shape(node, x.shape, w.shape)
        xnor = node.attrs.get("dot") == "xnor"
        flat = w.reshape(g.cout, g.k)
        rows = store_rows(flat, ctx.cname(node, "w"), xnor=xnor)
        order = self._order(g, rows, xnor)
        zx = int(node.attrs.get("x_zero_point", 0))
        bias = node.input(2)
        b = (np.broadcast_to(bias.const.astype(np.int64).ravel(), (g.cout,)) if bias is not None
             else np.zeros(g.cout, np.int64))
        req = Requant.of(node, g.cout, ctx.cname(node, "rq"))
        dsp_codes = None
        # one weight row times four strip columns where the columns are within reach
        block = 1 if column_block_fits(g.sw * g.kh * g.cg) else 2
        # 4-, 2-bit codes and ±1 signs stay packed in flash, unpacked row by row (one-row
        # blocks only)
        bits = 8 if rows.kind == "int8" else dsp_sub_bits(flat) \
            if rows.kind in ("packed", "signs") and block == 1 else 0
        if self.packed and not xnor and bits and x.ctype in DSP_TYPES \
                and g.groups == 1 and (g.dh, g.dw) == (1, 1):
            taps = w.transpose(0, 3, 2, 1) if w.ndim == 4 else w.transpose(0, 2, 1)
            dsp_codes = np.ascontiguousarray(taps.reshape(g.cout, g.k))
        dsp = None if dsp_codes is None else dsp_layer(
            dsp_codes, b, zx, x.absmax, req, ctx.cname(node, "wd"), block, bits=bits)
        if dsp is not None:  # the portable path's weights only where it runs
            ctx.consts.directive(f"#if !{dsp_macro(ctx)}")
        if order == "patches" and rows.direct:  # dot products run to the padded length
            rows = rows.with_tail(padded_taps(g.k) - g.k)
        if order == "strips":  # taps (ic, kh, kw) -> (kw, kh, ic), each row zero-padded
            taps = w.transpose(0, 3, 2, 1) if w.ndim == 4 else w.transpose(0, 2, 1)
            padded = np.zeros((g.cout, strip_taps(g.k)), np.int64)
            padded[:, :g.k] = taps.reshape(g.cout, g.k)
            rows = store_rows(padded, ctx.cname(node, "w"))
        ctx.add_weights(rows)
        if dsp is not None:
            ctx.consts.directive("#endif")
        x_max = 1 if xnor else max(abs(x.lo - zx), abs(x.hi - zx))
        bound = g.k * x_max * rows.absmax + int(np.abs(b).max(initial=0))
        init = b.copy()
        partial = bound
        offset = 0
        if order in ("patches", "strips"):  # raw codes in the dot product, zx·Σw in the start
            # int8 codes enter the patches as x + 128 (uint8): unsigned-by-signed byte dot
            # products are what VNNI / dot-product instructions multiply
            offset = 128 if x.ctype == "int8_t" and x.lo < 0 else 0
            init = b - (zx + offset) * flat.sum(axis=1)
            partial = g.k * (x.absmax + offset) * rows.absmax + int(np.abs(init).max(initial=0))
        acc_t = acc_type(max(bound, partial), node)
        depthwise = None
        if self.packed and order == "planes" and rows.kind in ("int8", "packed", "signs") \
                and x.ctype in DSP_TYPES \
                and g.cg == 1 and g.mg == 1 and g.groups > 1 and (g.dh, g.dw) == (1, 1) \
                and acc_t == "int32_t" and g.kh * -(-g.kw // 2) <= DEPTHWISE_PAIRS:
            depthwise = DspRequant.of(req, ctx.cname(node, "dq"), 1, bound)
        setup = ConvSetup(g, rows, req, bound, acc_t, order, zx, [int(v) for v in init],
                          RowReader(rows, ctx.rt, acc_t), offset, dsp, dsp_codes, depthwise,
                          merged_rows(g, _headroom(node, ctx)))
        ctx.memo[node.name] = (setup,)
        return setup

    @staticmethod
    def _order(g: ConvShape, rows: WeightRows, xnor: bool) -> str:
        if xnor:
            return "xnor"
        depthwise = g.cg == 1 and g.groups > 1
        unpackable = rows.direct or rows.kind in ("packed", "signs")
        if unpackable and g.k >= MIN_PATCH_TAPS and not depthwise:
            strips = rows.direct and g.groups == 1 and (g.dh, g.dw) == (1, 1) and \
                g.wo >= STRIP_MIN_WIDTH
            return "strips" if strips else "patches"
        return "planes"

    def plan(self, node: Node, ctx) -> KernelPlan:
        """The portable path's plan; with a packed kernel, its first scratch area also holds
        the kernel's int16 strip (the two paths never run in one build)."""
        s = self.setup(node, ctx)
        plan = self._portable_plan(node, ctx, s)
        if s.dsp is not None:
            assert s.dsp_g is not None
            strip = DspStrip(s.dsp_g, s.dsp.kp)
            first = plan.scratch[0]
            size = C_SIZES[first.ctype]
            nbytes = _row_scratch_at(s) + (s.dsp.kp if s.dsp.bits < 8 else 0)
            plan.scratch[0] = Scratch(first.ctype, max(first.count, -(-nbytes // size)))
            shape = "1 row x 4 columns" if s.dsp.block == 1 else "2x2"
            unpacked = f" ({s.dsp.bits}-bit weights unpacked per row)" if s.dsp.bits < 8 else ""
            plan.note += (f"; with {dsp_macro(ctx)}: packed {shape} SMLAD blocks{unpacked} on "
                          f"int16 strips of {strip.cols} columns")
        if s.dsp_depthwise is not None:
            canvas = Canvas(s.g)
            first = plan.scratch[0]
            size = C_SIZES[first.ctype]
            plan.scratch[0] = Scratch(first.ctype, max(first.count, -(-canvas.nbytes // size)))
            plan.note += (f"; with {dsp_macro(ctx)}: SMLAD on tap pairs over an int16 canvas of "
                          f"{canvas.rows}x{canvas.cols}, four outputs at a time")
        return plan

    def _portable_plan(self, node: Node, ctx, s: ConvSetup) -> KernelPlan:
        g, x_t = s.g, ctx.t(node.inputs[0]).ctype
        macs = g.cout * g.plane * g.k
        if s.order == "xnor":
            words = s.rows.words
            return KernelPlan([Scratch("uint32_t", words), Scratch("uint32_t", words)],
                              macs=macs, note=f"XNOR-popcount conv {g.describe()}")
        if s.order == "strips":
            strip = Strip(g)
            return KernelPlan([Scratch(s.patch_t(x_t), strip.size)], macs=macs,
                              note=f"conv {g.describe()}: im2col strips of {strip.cols} "
                                   f"columns per output row times {s.rows.kind} weight rows, "
                                   f"{s.acc_t} accumulators")
        if s.order == "patches":
            block = min(max(PATCH_BLOCKS), g.plane)
            row = [] if s.rows.direct else [Scratch("int8_t", padded_taps(g.k))]
            return KernelPlan([Scratch(s.patch_t(x_t), block * padded_taps(g.k))] + row,
                              macs=macs,
                              note=f"conv {g.describe()}: im2col blocks of positions times "
                                   f"{s.rows.kind} weight rows, {s.acc_t} accumulators")
        kind = "depthwise" if g.cg == 1 and g.groups > 1 else "plane-order"
        decode = " (shift-add)" if s.reader.shift_add else ""
        return KernelPlan([Scratch(s.acc_t, g.plane)] + s.reader.scratch, macs=macs,
                          note=f"{kind} conv {g.describe()}, {s.acc_t} accumulators, "
                               f"{s.rows.kind} weights{decode}")

    def emit(self, node: Node, ctx, w: CWriter) -> None:
        s = self.setup(node, ctx)
        x = ctx.t(node.inputs[0])
        out_t = ctx.t(node.outputs[0]).ctype
        if s.dsp is not None:
            assert s.dsp_codes is not None
            ctx.consts.directive(f"#if {dsp_macro(ctx)}")
            define_layer(ctx.consts, s.dsp, s.dsp_codes)
            w.directive(f"#if {dsp_macro(ctx)}")
            for i in range(1, len(self._portable_plan(node, ctx, s).scratch)):
                w.line(f"(void)s{i}; /* the portable path's unpacked row */")
            assert s.dsp_g is not None
            layer = s.dsp
            table = _ram_table(w, layer.req, DspStrip(s.dsp_g, layer.kp).nbytes, s.dsp_g.ho)
            body_layer = layer.renamed("dw")
            body_layer = replace(body_layer, req=replace(body_layer.req, ram=bool(table)))
            emit_shared_body(w, ctx, _io_args(x.ctype, out_t) + layer.shared_args("dw", table),
                             lambda body: _emit_dsp_strips(body, ctx, s, body_layer, x.ctype,
                                                           out_t))
            ctx.consts.directive("#else")
            w.directive("#else")
        if any(s.init):  # the depthwise kernels share the start values (and the weights)
            # int16 where every start value fits (flash); the kernels add it to their sums
            init_t = "int16_t" if all(-(1 << 15) <= v < 1 << 15 for v in s.init) else s.acc_t
            ctx.const_array(node, "init", init_t, [int_literal(v) for v in s.init])
        init = f"{ctx.cname(node, 'init')}[oc]" if any(s.init) else "0"
        if s.dsp_depthwise is not None:
            ctx.consts.directive(f"#if {dsp_macro(ctx)}")
            req = s.dsp_depthwise
            req.define(ctx.consts)
            w.directive(f"#if {dsp_macro(ctx)}")
            packed = s.rows.kind != "int8"  # unpacked per channel into s1 (RowReader)
            args = _io_args(x.ctype, out_t) + [
                SharedArg("const uint8_t *" if packed else f"const {s.rows.row_ctype} *", "dw",
                          s.rows.cname)] + req.shared_args("dw_rq") + \
                ([SharedArg("int8_t *restrict ", "s1", "s1")] if packed else [])
            if any(s.init):
                args.append(SharedArg(f"const {init_t} *", "dw_init", ctx.cname(node, "init")))
            emit_shared_body(w, ctx, args, lambda body: _emit_dsp_depthwise(
                body, ctx, s, x.ctype, out_t, "dw_init[oc]" if any(s.init) else "0", "dw",
                replace(req, prefix="dw_rq")))
            ctx.consts.directive("#else")
            w.directive("#else")
        ctx.constant_bytes += s.req.define(ctx.consts)
        emitter = {"xnor": _emit_xnor, "patches": _emit_patches, "strips": _emit_strips,
                   "planes": _emit_planes}
        emitter[s.order](w, ctx, s, x.ctype, x.lo, out_t, init)
        if s.dsp is not None or s.dsp_depthwise is not None:
            ctx.consts.directive("#endif")
            w.directive("#endif")


# -- patches (im2col blocks) -------------------------------------------------------------------
def _emit_patches(w: CWriter, ctx, s: ConvSetup, x_t: str, x_lo: int, out_t: str,
                  init: str) -> None:
    """Both block sizes, chosen by the preprocessor (<NAME>_PATCH_BLOCK, see emit.py)."""
    wide, narrow = (min(b, s.g.plane) for b in PATCH_BLOCKS)
    if wide == narrow:
        _emit_patch_block(w, ctx, s, x_t, out_t, init, wide)
        return
    w.directive(f"#if {ctx.name.upper()}_PATCH_BLOCK == {PATCH_BLOCKS[0]}")
    _emit_patch_block(w, ctx, s, x_t, out_t, init, wide)
    w.directive("#else")
    _emit_patch_block(w, ctx, s, x_t, out_t, init, narrow)
    w.directive("#endif")


def _emit_patch_block(w: CWriter, ctx, s: ConvSetup, x_t: str, out_t: str, init: str,
                      block: int) -> None:
    g, k, kp = s.g, s.g.k, padded_taps(s.g.k)
    ragged = g.plane % block != 0
    w.line("int32_t p0, j, oc, i;")
    groups = g.groups > 1
    if groups:
        w.line("int32_t gr;")
        w.line(f"for (gr = 0; gr < {g.groups}; ++gr) {{")
        w.depth += 1
    with w.block(f"for (p0 = 0; p0 < {g.plane}; p0 += {block})"):
        w.comment(f"im2col: the patches of positions p0 .. p0 + {block - 1}"
                  + (" (the zero point where a tap is in the padding)" if g.padded else ""))
        with w.block(f"for (j = 0; j < {block}; ++j)"):
            last = f"p0 + j < {g.plane} ? p0 + j : {g.plane - 1}" if ragged else "p0 + j"
            w.line(f"const int32_t p = {last};")
            w.line(f"{s.patch_t(x_t)} *const q = s0 + j * {kp};")
            _gather_patch(w, g, x_t, s, "gr" if groups else None)
            if kp > k:
                with w.block(f"for (i = {k}; i < {kp}; ++i)"):
                    w.line("q[i] = 0; /* padding to the vector width: adds nothing */")
        oc_lo, oc_hi = (f"gr * {g.mg}", f"(gr + 1) * {g.mg}") if groups else ("0", str(g.cout))
        with w.block(f"for (oc = {oc_lo}; oc < {oc_hi}; ++oc)"):
            if s.rows.direct:
                w.line(f"const {s.rows.row_ctype} *const wr = {s.rows.cname} + oc * {k};")
            else:  # sub-byte codes or signs: unpacked once per row and block
                s.reader.fetch(w, "oc", "s1")
                if kp > k:
                    with w.block(f"for (i = {k}; i < {kp}; ++i)"):
                        w.line("s1[i] = 0;")
            names = [f"a{j}" for j in range(block)]
            w.line(f"const {s.acc_t} start = {init};")
            w.line(f"{s.acc_t} {', '.join(f'{a} = start' for a in names)};")
            for lo, hi in _spans(kp):  # full vector widths first: no scalar tail loops
                with w.block(f"for (i = {lo}; i < {hi}; ++i)"):
                    w.line(f"const {s.acc_t} wv = wr[i];")
                    for j, a in enumerate(names):
                        w.line(f"{a} += ({s.acc_t})s0[{linear([('i', 1)], j * kp)}] * wv;")
            if ragged or block != PATCH_BLOCKS[0]:  # unrolled: no loop overhead on small cores
                for j, a in enumerate(names):
                    store = (f"y0[oc * {g.plane} + p0 + {j}] = "
                             f"({out_t}){s.req.expr(a, 'oc', s.bound, s.acc_t, ctx.rt)};")
                    if j and ragged:
                        with w.block(f"if (p0 + {j} < {g.plane})"):
                            w.line(store)
                    else:
                        w.line(store)
            else:  # one loop over the wide block: the compiler vectorises the requantization
                w.line(f"const {s.acc_t} acc[{block}] = {{{', '.join(names)}}};")
                with w.block(f"for (j = 0; j < {block}; ++j)"):
                    value = s.req.expr("acc[j]", "oc", s.bound, s.acc_t, ctx.rt)
                    w.line(f"y0[oc * {g.plane} + p0 + j] = ({out_t}){value};")
    if groups:
        w.depth -= 1
        w.line("}")


def padded_taps(k: int) -> int:
    """The patch length: k rounded up to PATCH_ALIGN (k itself when k <= PATCH_ALIGN)."""
    return k if k <= PATCH_ALIGN else -(-k // PATCH_ALIGN) * PATCH_ALIGN


def _spans(k: int) -> list[tuple[int, int]]:
    """[0, k) cut at the last multiples of 64 and of 16: a compiler vectorises each piece at
    its own width instead of finishing a long dot product with a scalar loop."""
    cuts = sorted({0, k - k % 64, k - k % 16, k})
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _gather_patch(w: CWriter, g: ConvShape, x_t: str, s: ConvSetup, group: str | None) -> None:
    """q[t] = the input under tap t = (ic, kh, kw) of output position p (plus the offset): a
    plain copy where the whole window is inside the image, a bounds-checked one (padding = zx)
    elsewhere."""
    def code(c: str) -> str:
        if s.patch_t(x_t) == x_t:
            return c
        return f"(uint8_t)({c} + {s.offset})" if s.offset else f"(uint8_t){c}"

    w.line(f"const int32_t oh = p / {g.wo}, ow = p % {g.wo};" if g.wo > 1 else
           "const int32_t oh = p, ow = 0;")
    w.line("int32_t ic, kh, kw, t = 0;")
    channel = f"{group} * {g.cg} + ic" if group else "ic"
    rows = [g.valid("h", t) for t in range(g.kh)]
    cols = [g.valid("w", t) for t in range(g.kw)]
    inner = (max(r[0] for r in rows), min(r[1] for r in rows),
             max(c[0] for c in cols), min(c[1] for c in cols))
    test = []
    if g.padded:
        test = [f"oh >= {inner[0]}", f"oh < {inner[1]}", f"ow >= {inner[2]}",
                f"ow < {inner[3]}"]
        test = [c for c, trivial in zip(test, (inner[0] == 0, inner[1] == g.ho, inner[2] == 0,
                                                inner[3] == g.wo)) if not trivial]
    origin = linear([("oh", g.sh * g.wd), ("ow", g.sw)], -g.ph * g.wd - g.pw)
    if test:
        w.line(f"if ({' && '.join(test)}) {{")
        w.depth += 1
    w.line(f"const {x_t} *const xw = x0 + {origin};")
    with w.block(f"for (ic = 0; ic < {g.cg}; ++ic)"):
        w.line(f"const {x_t} *const xc = xw + {_paren(channel)} * {g.h * g.wd};")
        with w.block(f"for (kh = 0; kh < {g.kh}; ++kh)"):
            with w.block(f"for (kw = 0; kw < {g.kw}; ++kw, ++t)"):
                tap = linear([("kh", g.dh * g.wd), ("kw", g.dw)], 0)
                w.line(f"q[t] = {code(f'xc[{tap}]')};")
    if not test:
        return
    w.depth -= 1
    with w.block("} else", ""):
        with w.block(f"for (ic = 0; ic < {g.cg}; ++ic)"):
            w.line(f"const {x_t} *const xc = x0 + {_paren(channel)} * {g.h * g.wd};")
            with w.block(f"for (kh = 0; kh < {g.kh}; ++kh)"):
                w.line(f"const int32_t ih = {linear([('oh', g.sh), ('kh', g.dh)], -g.ph)};")
                with w.block(f"for (kw = 0; kw < {g.kw}; ++kw, ++t)"):
                    w.line(f"const int32_t iw = {linear([('ow', g.sw), ('kw', g.dw)], -g.pw)};")
                    pad = s.zx + s.offset
                    w.line(f"q[t] = ih >= 0 && ih < {g.h} && iw >= 0 && iw < {g.wd} ? "
                           f"{code(f'xc[ih * {g.wd} + iw]')} : ({s.patch_t(x_t)}){pad};")


# -- strips (im2col per output row) ----------------------------------------------------------
def strip_taps(k: int) -> int:
    """A strips weight row: k rounded up to STRIP_ALIGN (to PATCH_ALIGN for short rows)."""
    align = STRIP_ALIGN if k > PATCH_ALIGN else PATCH_ALIGN
    return -(-k // align) * align


@dataclass
class Strip:
    """The strip of one output row: `cols` columns of `depth` = KH·C codes each, column c
    holding input column c − PW of the KH input rows under the output row (zx outside the
    image); then the tail that the last patch's padded dot product reads (taps − k codes)."""

    g: ConvShape

    @property
    def blocks(self) -> tuple[int, int]:
        """Output columns per dot-product block: wide (vector registers) and narrow (Arm)."""
        return min(PATCH_BLOCKS[0], self.g.wo), PATCH_BLOCKS[1]

    @property
    def depth(self) -> int:
        return self.g.kh * self.g.cg

    @property
    def cols(self) -> int:
        """Columns read by the blocks (a ragged last block reads past the row's end)."""
        last = max(-(-self.g.wo // b) * b for b in self.blocks) - 1
        return last * self.g.sw + self.g.kw

    @property
    def image(self) -> int:
        """Columns of the strip that hold input columns (the rest is padding)."""
        return max(0, min(self.g.wd, self.cols - self.g.pw))

    @property
    def taps(self) -> int:
        return strip_taps(self.g.k)

    @property
    def size(self) -> int:
        return self.cols * self.depth + self.taps - self.g.k


def _emit_strips(w: CWriter, ctx, s: ConvSetup, x_t: str, x_lo: int, out_t: str,
                 init: str) -> None:
    """Per output row: slide the strip, transpose the new input rows into it, then the dot
    products of blocks of output columns with every weight row. The wide block runs the
    zero-padded rows (vector loops), the narrow one (Arm) only the k real taps."""
    g, strip, p_t = s.g, Strip(s.g), s.patch_t(x_t)
    pad = f"({p_t}){s.zx + s.offset}"
    slide = g.sh < g.kh and g.ho > 1
    w.line("int32_t oh, ow0, oc, ic, kh, iw, i;")
    if strip.taps > g.k:
        w.comment("the tail read by the last column's padded dot product (times zero weights)")
        with w.block(f"for (i = {strip.cols * strip.depth}; i < {strip.size}; ++i)"):
            w.line(f"s0[i] = {pad};")
    with w.block(f"for (oh = 0; oh < {g.ho}; ++oh)"):
        if slide:
            w.line("kh = 0; /* the first row slot to fill */")
            with w.block("if (oh > 0)"):
                w.comment(f"row slots {g.sh}.. of the last output row are slots 0.. of this one")
                shift = g.sh * g.cg
                with w.block(f"for (i = 0; i < {strip.cols * strip.depth - shift}; ++i)"):
                    w.line(f"s0[i] = s0[i + {shift}];")
                w.line(f"kh = {g.kh - g.sh};")
        with w.block(f"for ({'' if slide else 'kh = 0'}; kh < {g.kh}; ++kh)"):
            _fill_strip_row(w, strip, s, x_t, pad)
        wide, narrow = strip.blocks
        if (wide, strip.taps) == (narrow, g.k):
            _strip_blocks(w, ctx, s, p_t, out_t, init, wide, g.k)
            return
        w.directive(f"#if {ctx.name.upper()}_PATCH_BLOCK == {PATCH_BLOCKS[0]}")
        _strip_blocks(w, ctx, s, p_t, out_t, init, wide, strip.taps)
        w.directive("#else")
        _strip_blocks(w, ctx, s, p_t, out_t, init, narrow, g.k)
        w.directive("#endif")


def _fill_strip_row(w: CWriter, strip: Strip, s: ConvSetup, x_t: str, pad: str) -> None:
    """Row slot kh of every column of the portable strip (`_fill_row`), as patch codes."""
    p_t = s.patch_t(x_t)
    code = f"(uint8_t)(xr[iw] + {s.offset})" if s.offset else (
        "(uint8_t)xr[iw]" if p_t != x_t else "xr[iw]")
    _fill_row(w, s.g, strip, x_t, ("s0", "q", p_t), pad, code,
              f" /* column 0; columns are {strip.depth} apart */")


def _fill_row(w: CWriter, g: ConvShape, strip: Strip | DspStrip, x_t: str,
              buffer: tuple[str, str, str], pad: str, code: str, note: str = "",
              image: Callable[[], None] | None = None) -> None:
    """Row slot kh of every column: input row oh·SH + kh − PH as `code` (of xr[iw]), `pad`
    where it is padding. `buffer`: the strip's base pointer, the name and C type of the row
    pointer written here; `image`, when given, emits the copy of the image columns instead of
    the code-by-code loop."""
    base, row, row_t = buffer
    depth = strip.depth
    w.line(f"const int32_t ih = {linear([('oh', g.sh), ('kh', 1)], -g.ph)};")
    w.line(f"{row_t} *const {row} = {base} + kh * {g.cg};{note}")

    def pad_columns(lo: int, hi: int) -> None:
        with w.block(f"for (iw = {lo}; iw < {hi}; ++iw)"):
            with w.block(f"for (ic = 0; ic < {g.cg}; ++ic)"):
                w.line(f"{row}[iw * {depth} + ic] = {pad};")

    if any(g.valid("h", t) != (0, g.ho) for t in range(g.kh)):
        with w.block(f"if (ih < 0 || ih >= {g.h})"):
            pad_columns(0, strip.cols)
            w.line("continue;")
    if g.pw:
        pad_columns(0, g.pw)
    if image is not None:
        image()
    else:
        with w.block(f"for (ic = 0; ic < {g.cg}; ++ic)"):
            w.line(f"const {x_t} *const xr = x0 + "
                   f"{linear([('ic', g.h * g.wd), ('ih', g.wd)])};")
            w.line(f"{row_t} *const qc = {row} + {linear([('ic', 1)], g.pw * depth)};")
            with w.block(f"for (iw = 0; iw < {strip.image}; ++iw)"):
                w.line(f"qc[iw * {depth}] = {code};")
    if g.pw + strip.image < strip.cols:
        pad_columns(g.pw + strip.image, strip.cols)


def _strip_blocks(w: CWriter, ctx, s: ConvSetup, p_t: str, out_t: str, init: str,
                  block: int, taps: int) -> None:
    """Output columns ow0 .. ow0 + block − 1 of row oh: `taps` products per weight row."""
    g, strip = s.g, Strip(s.g)
    depth = strip.depth
    step = g.sw * depth  # strip codes between neighbouring output columns
    ragged = g.wo % block != 0
    names = [f"a{j}" for j in range(block)]
    with w.block(f"for (ow0 = 0; ow0 < {g.wo}; ow0 += {block})"):
        w.line(f"const {p_t} *const sp = s0 + ow0 * {step};")
        with w.block(f"for (oc = 0; oc < {g.cout}; ++oc)"):
            w.line(f"const {s.rows.row_ctype} *const wr = {s.rows.cname} + oc * {strip.taps};")
            w.line(f"const {s.acc_t} start = {init};")
            w.line(f"{s.acc_t} {', '.join(f'{a} = start' for a in names)};")
            with w.block(f"for (i = 0; i < {taps}; ++i)"):
                w.line(f"const {s.acc_t} wv = wr[i];")
                for j, a in enumerate(names):
                    w.line(f"{a} += ({s.acc_t})sp[{linear([('i', 1)], j * step)}] * wv;")
            # stored from an array: the accumulators are dead before the first requantization,
            # so a small core keeps them in registers (not across its calls), and a vector
            # unit requantizes the block at once
            w.line(f"const {s.acc_t} acc[{block}] = {{{', '.join(names)}}};")
            w.line("int32_t j;")
            with w.block(f"for (j = 0; j < {block}; ++j)"):
                if ragged:
                    with w.block(f"if (ow0 + j >= {g.wo})"):
                        w.line("break; /* past the row's end */")
                value = s.req.expr("acc[j]", "oc", s.bound, s.acc_t, ctx.rt)
                w.line(f"y0[oc * {g.plane} + {linear([('oh', g.wo)])} + ow0 + j] = "
                       f"({out_t}){value};")


# -- packed DSP strips (ops/dsp.py) -----------------------------------------------------------
@dataclass
class DspStrip:
    """The int16 strip of one output row for the packed kernel: `cols` columns of depth =
    KH·C raw codes (column c = input column c − PW of the KH input rows under the output row,
    zx outside the image), taps in (kw, kh, ic) order, then kp − k codes read by the last
    column's padded taps (times zero weights)."""

    g: ConvShape
    kp: int

    @property
    def depth(self) -> int:
        return self.g.kh * self.g.cg

    @property
    def cols(self) -> int:
        return (self.g.wo - 1) * self.g.sw + self.g.kw

    @property
    def image(self) -> int:
        """Columns holding input columns: pw .. pw + image − 1."""
        return max(0, min(self.g.wd, self.cols - self.g.pw))

    @property
    def count(self) -> int:
        return self.cols * self.depth + self.kp - self.g.k

    @property
    def nbytes(self) -> int:
        return 2 * self.count


def _ram_table_at(nbytes: int) -> int:
    """The byte offset in the scratch of the RAM multiplier table: after the strip or canvas
    (`nbytes`), word-aligned."""
    return -(-nbytes // 4) * 4


def _ram_table_bytes(req: DspRequant, rows: int) -> int:
    """A strip kernel over `rows` output rows whose multipliers are a power-of-two table
    (fixed point: base << exponent) gets them as int32 in RAM, filled once per call
    (DspRequant.fill_ram, ~6 instructions a channel), where that is cheaper than the shift
    of every channel in every row (2 instructions each): its kernel then reads them as an
    affine layer does (the same code, for fixed no slower than affine), for 4 bytes of
    scratch a channel. A depthwise kernel computes each channel's multiplier once anyway."""
    return 4 * len(req.mults) if req.mult_base is not None and rows >= RAM_TABLE_ROWS else 0


def _row_scratch_at(s: ConvSetup) -> int:
    """The byte offset in the scratch after the strip and the RAM multiplier table: where a
    sub-byte layer unpacks its weight rows (word-aligned)."""
    assert s.dsp is not None and s.dsp_g is not None
    return _ram_table_at(DspStrip(s.dsp_g, s.dsp.kp).nbytes) + \
        _ram_table_bytes(s.dsp.req, s.dsp_g.ho)


def _ram_table(w: CWriter, req: DspRequant, after: int, rows: int) -> str:
    """Declare and fill the RAM multiplier table `mt` in the scratch after `after` bytes, where
    the layer has one (_ram_table_bytes); returns its name, or "" without one."""
    if not _ram_table_bytes(req, rows):
        return ""
    w.line(f"int32_t *const mt = (int32_t *)(void *)((uint8_t *)(void *)s0 + "
           f"{_ram_table_at(after)});")
    req.fill_ram(w, "mt")
    return "mt"


def _io_args(x_t: str, out_t: str) -> list[SharedArg]:
    """A shared kernel body's input, output and scratch (the layer function's x0, y0, s0)."""
    return [SharedArg(f"const {x_t} *restrict ", "x0", "x0"),
            SharedArg(f"{out_t} *restrict ", "y0", "y0"),
            SharedArg("void *restrict ", "s0", "s0")]


def _headroom(node: Node, ctx) -> int:
    """Bytes a scratch of this node may take without raising the arena above the largest
    input + output set of any node (a floor of the liveness bound): a merged strip never
    costs RAM on the node that sets the arena."""
    def io_bytes(n: Node) -> int:
        values = {v.name: v for v in [*n.inputs, *n.outputs] if v is not None and not v.is_const
                  and v.name in ctx.info}
        return sum(ctx.t(v).numel * C_SIZES.get(ctx.t(v).ctype, 4) for v in values.values())

    if "conv/io_peak" not in ctx.memo:
        ctx.memo["conv/io_peak"] = (max((io_bytes(n) for n in ctx.graph.nodes), default=0),)
    return ctx.memo["conv/io_peak"][0] - io_bytes(node)


def merged_rows(g: ConvShape, headroom: int) -> ConvShape:
    """The geometry the packed strips of a 1x1 convolution (stride 1, no padding) run on: R
    output rows as one row of R·W columns (the input and output planes are contiguous, so
    the indices are the same), R the smallest divisor of H giving MERGED_COLUMNS columns (else
    the largest) whose strip stays within MERGED_STRIP_BYTES and the node's `headroom`: the
    per-row work (each channel's start value, multiplier and weight pointer, the block loops'
    bookkeeping) runs H / R times instead of H on narrow images, without a RAM cost. Other
    convolutions keep their rows."""
    pointwise = (g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.h, g.wd) == (1, 1, 1, 1, 0, 0, g.ho, g.wo)
    if not pointwise or g.groups != 1:
        return g
    fits = [r for r in range(1, g.ho + 1) if g.ho % r == 0 and
            2 * r * g.wo * g.cin <= min(MERGED_STRIP_BYTES, max(headroom, 2 * g.wo * g.cin))]
    wide = [r for r in fits if r * g.wo >= MERGED_COLUMNS]
    r = min(wide) if wide else max(fits, default=1)
    return replace(g, h=g.h // r, wd=g.wd * r, ho=g.ho // r, wo=g.wo * r)


def _emit_dsp_strips(w: CWriter, ctx, s: ConvSetup, layer: DspLayer, x_t: str,
                     out_t: str) -> None:
    """Per output row: slide the strip, widen the new input rows into it, then every output
    channel times every block of output columns (ops/dsp.py emit_row_blocks), with the
    constants of `layer`."""
    assert s.dsp_g is not None
    g = s.dsp_g
    strip = DspStrip(g, layer.kp)
    depth, cols = strip.depth, strip.cols
    slide = g.sh < g.kh and g.ho > 1
    w.line("int16_t *const q = (int16_t *)(void *)s0;")
    w.line("int32_t oh, kh, ic, iw;")
    w.line("(void)iw; /* pads and odd channels only */")
    if strip.count > cols * depth:
        w.comment("the tail read by the last column's padded taps (times zero weights)")
        with w.block(f"for (iw = {cols * depth}; iw < {strip.count}; ++iw)"):
            w.line("q[iw] = 0;")
    with w.block(f"for (oh = 0; oh < {g.ho}; ++oh)"):
        if slide:
            w.line("kh = 0; /* the first row slot to fill */")
            with w.block("if (oh > 0)"):
                w.comment(f"row slots {g.sh}.. of the last output row are slots 0.. of this one")
                shift = g.sh * g.cg
                w.line(f"memmove(q, q + {shift}, {2 * (cols * depth - shift)});")
                w.line(f"kh = {g.kh - g.sh};")
        with w.block(f"for ({'' if slide else 'kh = 0'}; kh < {g.kh}; ++kh)"):
            _fill_dsp_row(w, ctx, g, strip, s.zx, x_t)
        step = g.sw * depth

        def store(row: str, col: str, value: str) -> str:
            return f"y0[{row} * {g.plane} + {linear([('oh', g.wo)])} + {col}] = ({out_t}){value};"

        with w.block(""):
            emit_row_blocks(w, ctx, layer, g.wo, lambda c: f"q + ({c}) * {step}", store, step,
                            f"(uint8_t *)s0 + {_row_scratch_at(s)}")


def _fill_dsp_row(w: CWriter, ctx, g: ConvShape, strip: DspStrip, zx: int, x_t: str) -> None:
    """Row slot kh of every column of the int16 DSP strip (`_fill_row`), zx in the padding:
    the image columns two channels at a time (qcc_dsp.h's pair: one word per pixel, four
    pixels per step), an odd last channel code by code."""
    depth, pair = strip.depth, f"{ctx.rt}dsp_pair_{_DSP_SUFFIX[x_t]}"

    def image() -> None:
        plane = g.h * g.wd
        if g.cg >= 2:
            with w.block(f"for (ic = 0; ic + 1 < {g.cg}; ic += 2)"):
                w.line(f"const {x_t} *const xr = x0 + {linear([('ic', plane), ('ih', g.wd)])};")
                w.line(f"{pair}(xr, xr + {plane}, qs + {linear([('ic', 1)], g.pw * depth)}, "
                       f"{depth}, {strip.image});")
        if g.cg % 2:
            w.line(f"const {x_t} *const xr = x0 + {linear([('ih', g.wd)], (g.cg - 1) * plane)};")
            w.line(f"int16_t *const qc = qs + {g.pw * depth + g.cg - 1};")
            with w.block(f"for (iw = 0; iw < {strip.image}; ++iw)"):
                w.line(f"qc[iw * {depth}] = xr[iw];")

    _fill_row(w, g, strip, x_t, ("q", "qs", "int16_t"), str(zx), "xr[iw]", image=image)


_DSP_SUFFIX = {"uint8_t": "u8", "int8_t": "s8", "int16_t": "s16"}


# -- packed DSP depthwise ----------------------------------------------------------------------
@dataclass
class Canvas:
    """One input channel of a depthwise conv as int16 codes minus zx, with its padding (zeros)
    around: rows −PH .. and columns −PW .. of the input, one spare element at the end (a tap
    pair may read one past the last column, times a zero weight)."""

    g: ConvShape

    @property
    def rows(self) -> int:
        return (self.g.ho - 1) * self.g.sh + self.g.kh

    @property
    def cols(self) -> int:
        return max((self.g.wo - 1) * self.g.sw + self.g.kw, self.g.pw + self.g.wd)

    @property
    def count(self) -> int:
        return max(self.rows, self.g.ph + self.g.h) * self.cols + 1

    @property
    def nbytes(self) -> int:
        return 2 * self.count


def _emit_dsp_depthwise(w: CWriter, ctx, s: ConvSetup, x_t: str, out_t: str,
                        init: str, weights: str, req: DspRequant) -> None:
    """Per channel: its plane into the canvas (centred: the padding adds 0), its KH x KW
    weights (the array `weights`) into int16 pairs (tap pairs along a kernel row, an odd last
    tap paired with 0), then four output columns at a time: one SMLAD per tap pair and
    output."""
    g, rt = s.g, ctx.rt
    canvas = Canvas(g)
    cw = canvas.cols
    pairs = -(-g.kw // 2)
    w.line("int16_t *const cv = (int16_t *)(void *)s0;")
    w.line("int32_t oc, ih, iw, oh, ow;")
    with w.block(f"for (iw = 0; iw < {canvas.count}; ++iw)"):
        w.line("cv[iw] = 0; /* the padding, never written again */")
    with w.block(f"for (oc = 0; oc < {g.cout}; ++oc)"):
        w.line(f"const {x_t} *const xc = x0 + oc * {g.h * g.wd};")
        if s.rows.kind != "int8":  # sub-byte codes or signs: the channel's row unpacked
            RowReader(replace(s.rows, cname=weights), rt, s.acc_t).fetch(w, "oc", "s1")
        else:
            w.line(f"const {s.rows.row_ctype} *const wr = {weights} + oc * {g.k};")
        with w.block(f"for (ih = 0; ih < {g.h}; ++ih)"):
            w.line(f"int16_t *const row = cv + {linear([('ih', cw)], g.ph * cw + g.pw)};")
            if s.zx:
                with w.block(f"for (iw = 0; iw < {g.wd}; ++iw)"):
                    w.line(f"row[iw] = (int16_t)(xc[ih * {g.wd} + iw] - {s.zx});")
            else:
                w.line(f"{widen(x_t, rt)}(xc + ih * {g.wd}, row, {g.wd});")
        names = []
        for kh in range(g.kh):
            for j in range(pairs):
                t = kh * g.kw + 2 * j
                hi = f"(uint32_t)(uint16_t)wr[{t + 1}] << 16" if 2 * j + 1 < g.kw else "0u"
                names.append(f"k{kh}_{j}")
                w.line(f"const uint32_t k{kh}_{j} = (uint32_t)(uint16_t)wr[{t}] | {hi};")
        w.line(f"const int32_t start = {init};")
        req.declare(w, "oc", "0", req.fused)
        with w.block(f"for (oh = 0; oh < {g.ho}; ++oh)"):
            w.line(f"const int16_t *const top = cv + oh * {g.sh * cw};")
            w.line(f"{out_t} *const yr = y0 + oc * {g.plane} + oh * {g.wo};")

            def outputs(count: int, col: str) -> None:
                accs = [f"a{c}" for c in range(count)]
                w.line(f"int32_t {', '.join(f'{a} = start' for a in accs)};")
                w.line(f"const int16_t *const p = top + {linear([(col, g.sw)])};")
                w.directive("#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)")
                _depthwise_asm(w, g, cw, pairs, count, req.fused)
                w.directive("#else")
                for kh in range(g.kh):
                    for j in range(pairs):
                        for c, a in enumerate(accs):
                            at = kh * cw + 2 * j + c * g.sw
                            w.line(f"{a} = {rt}dsp_smlad({rt}dsp_load_pair(p + {at}), "
                                   f"k{kh}_{j}, {a});")
                if req.fused:
                    for a in accs:
                        w.line(f"{a} = {rt}dsp_high_word({a}, m0, 0, 0);")
                w.directive("#endif")
                for c, a in enumerate(accs):
                    value = req.clamp(a, rt) if req.fused else req.expr(a, "0", rt)
                    w.line(f"yr[{col} + {c}] = ({out_t}){value};")

            # four outputs per iteration (the loop's bookkeeping and the weight pairs'
            # reloads, when they do not stay in registers, spread over 36 MACs), then the rest
            if g.wo >= 4:
                with w.block(f"for (ow = 0; ow + 3 < {g.wo}; ow += 4)"):
                    outputs(4, "ow")
            else:
                w.line("(void)ow;")
            done = g.wo - g.wo % 4
            for count in (2, 1):
                if (g.wo - done) >= count:
                    with w.block(""):
                        outputs(count, str(done))
                    done += count


def _depthwise_asm(w: CWriter, g: ConvShape, cw: int, pairs: int, count: int,
                   fused: bool) -> None:
    """The taps of `count` neighbouring outputs as one asm statement: one (unaligned) LDR per
    distinct canvas pair, then an SMLAD with the weight pair in a register for every output
    that reads it (output c's tap pair j + 1 is output c + 2 / SW's pair j: 6 loads instead of
    8 per kernel row of four outputs at stride 1, 5 at stride 2). `fused`: the sums leave
    multiplied by the channel's m0 (SMMULR, DspRequant.fused): one load of it per block
    whatever gcc's register allocation around the block."""
    readers: dict[int, list[str]] = {}
    for kh in range(g.kh):
        for j in range(pairs):
            for c in range(count):
                at = 2 * (kh * cw + 2 * j + c * g.sw)
                readers.setdefault(at, []).append(
                    f"smlad %[a{c}], %[x], %[k{kh}_{j}], %[a{c}]")
    text = []
    for at in sorted(readers):
        text += [f"ldr %[x], [%[p], #{at}]", *readers[at]]
    if fused:  # the multiplier from memory into the free load register (13 are taken)
        text += ["ldr %[x], %[m]"] + [f"smmulr %[a{c}], %[a{c}], %[x]" for c in range(count)]
    w.line("uint32_t r_x;")
    w.line("__asm__(")
    w.depth += 1
    for line in text:
        w.line(f'"{line}\\n\\t"')
    w.line(": " + ", ".join([f'[a{c}] "+r"(a{c})' for c in range(count)] + ['[x] "=&r"(r_x)']))
    ins = ['[p] "r"(p)'] + [f'[k{kh}_{j}] "r"(k{kh}_{j})' for kh in range(g.kh)
                            for j in range(pairs)] + (['[m] "m"(m0)'] if fused else [])
    for i in range(0, len(ins), 4):
        w.line((": " if i == 0 else "  , ") + ", ".join(ins[i:i + 4]))
    w.line(': "memory");')
    w.depth -= 1


# -- planes ------------------------------------------------------------------------------------
def _emit_planes(w: CWriter, ctx, s: ConvSetup, x_t: str, x_lo: int, out_t: str,
                 init: str) -> None:
    g, reader = s.g, s.reader
    pointwise = (g.kh, g.kw, g.sh, g.sw, g.ph, g.pw) == (1, 1, 1, 1, 0, 0)
    if not pointwise:
        rows_lo, rows_hi = zip(*(g.valid("h", t) for t in range(g.kh)))
        cols_lo, cols_hi = zip(*(g.valid("w", t) for t in range(g.kw)))
        w.comment("per kernel tap: the output rows / columns whose input is inside the image")
        for label, values in (("oh_lo", rows_lo), ("oh_hi", rows_hi), ("ow_lo", cols_lo),
                              ("ow_hi", cols_hi)):
            w.line(f"static const int16_t {label}[{len(values)}] = "
                   f"{{{', '.join(map(str, values))}}};")
    loops = "" if pointwise else ", kh, kw, oh, ow"
    w.line(f"int32_t oc, {'ic, ' if g.cg > 1 else ''}p{loops};")
    w.line(f"{s.acc_t} *const acc = s0;")
    with w.block(f"for (oc = 0; oc < {g.cout}; ++oc)"):
        reader.fetch(w, "oc", "s1" if reader.scratch else None)
        first = linear([(f"(oc / {g.mg})" if g.mg > 1 else "oc", g.cg)]) if g.groups > 1 else ""
        with w.block(f"for (p = 0; p < {g.plane}; ++p)"):
            w.line(f"acc[p] = {init};")
        if g.cg > 1:  # one input channel per group (depthwise) needs no channel loop
            w.line(f"for (ic = 0; ic < {g.cg}; ++ic) {{")
            w.depth += 1
        channel = " + ".join(c for c in (first, "ic" if g.cg > 1 else "") if c) or "0"
        w.line(f"const {x_t} *const xc = x0 + {_paren(channel)} * {g.h * g.wd};")
        if pointwise:
            _pointwise_tap(w, g, reader, s.zx, "ic" if g.cg > 1 else "0")
        else:
            _window_taps(w, g, reader, s.zx)
        if g.cg > 1:
            w.depth -= 1
            w.line("}")
        with w.block(f"for (p = 0; p < {g.plane}; ++p)"):
            value = s.req.expr("acc[p]", "oc", s.bound, s.acc_t, ctx.rt)
            w.line(f"y0[oc * {g.plane} + p] = ({out_t}){value};")


def _paren(expr: str) -> str:
    return f"({expr})" if " " in expr else expr


def _centered(code: str, zx: int) -> str:
    return f"(int32_t){code} - {zx}" if zx else code


def _pointwise_tap(w: CWriter, g: ConvShape, reader: RowReader, zx: int, tap: str) -> None:
    skip = reader.tap_constants(w, tap)
    with w.block(f"if (!({skip}))"):
        with w.block(f"for (p = 0; p < {g.plane}; ++p)"):
            w.line(f"acc[p] += {reader.product(_centered('xc[p]', zx))};")


def _window_taps(w: CWriter, g: ConvShape, reader: RowReader, zx: int) -> None:
    """Every tap (kh, kw) of input channel ic over its valid output rectangle."""
    channel = [("ic", g.kh * g.kw)] if g.cg > 1 else []
    with w.block(f"for (kh = 0; kh < {g.kh}; ++kh)"):
        with w.block(f"for (kw = 0; kw < {g.kw}; ++kw)"):
            skip = reader.tap_constants(w, linear(channel + [("kh", g.kw), ("kw", 1)], 0))
            with w.block(f"if ({skip})"):
                w.line("continue;")
            with w.block("for (oh = oh_lo[kh]; oh < oh_hi[kh]; ++oh)"):
                row = linear([("oh", g.sh * g.wd), ("kh", g.dh * g.wd), ("kw", g.dw)],
                             -g.ph * g.wd - g.pw)
                w.line(f"const int32_t base = {row};")
                w.line(f"{reader.acc_t} *const ar = acc + oh * {g.wo};")
                with w.block("for (ow = ow_lo[kw]; ow < ow_hi[kw]; ++ow)"):
                    code = f"xc[{linear([('base', 1), ('ow', g.sw)], 0)}]"
                    w.line(f"ar[ow] += {reader.product(_centered(code, zx))};")


# -- xnor --------------------------------------------------------------------------------------
def _emit_xnor(w: CWriter, ctx, s: ConvSetup, x_t: str, x_lo: int, out_t: str,
               init: str) -> None:
    """Per output position: the patch's sign and validity words, then one XNOR-popcount dot
    product per output channel of the group."""
    g, words = s.g, s.rows.words
    constant = x_lo >= s.zx  # every code >= zx: every sign is +1, the input is not read
    w.line("int32_t gr, oh, ow, ic, kh, kw, oc, i;")
    if constant:
        w.line("(void)x0; /* every input code is >= the zero point: all signs are +1 */")
    with w.block(f"for (gr = 0; gr < {g.groups}; ++gr)"):
        with w.block(f"for (oh = 0; oh < {g.ho}; ++oh)"):
            with w.block(f"for (ow = 0; ow < {g.wo}; ++ow)"):
                with w.block(f"for (i = 0; i < {words}; ++i)"):
                    w.line("s0[i] = 0u;")
                    w.line("s1[i] = 0u;")
                with w.block(f"for (ic = 0; ic < {g.cg}; ++ic)"):
                    if not constant:
                        w.line(f"const {x_t} *const xc = x0 + (gr * {g.cg} + ic) * "
                               f"{g.h * g.wd};")
                    with w.block(f"for (kh = 0; kh < {g.kh}; ++kh)"):
                        w.line(f"const int32_t ih = "
                               f"{linear([('oh', g.sh), ('kh', g.dh)], -g.ph)};")
                        with w.block(f"for (kw = 0; kw < {g.kw}; ++kw)"):
                            w.line(f"const int32_t iw = "
                                   f"{linear([('ow', g.sw), ('kw', g.dw)], -g.pw)};")
                            tap = linear([("ic", g.kh * g.kw), ("kh", g.kw), ("kw", 1)], 0)
                            w.line(f"const uint32_t j = (uint32_t)({tap});")
                            with w.block(f"if (ih < 0 || ih >= {g.h} || iw < 0 || "
                                         f"iw >= {g.wd})"):
                                w.line("continue; /* padding: 0 is not a +-1 tap */")
                            w.line("s1[j >> 5] |= 1u << (j & 31u);")
                            _sign_bit(w, f"xc[ih * {g.wd} + iw]", s.zx, x_lo)
                with w.block(f"for (oc = gr * {g.mg}; oc < (gr + 1) * {g.mg}; ++oc)"):
                    dot = f"{ctx.rt}xnor_dot(s0, {s.rows.cname} + oc * {words}, s1, {words})"
                    w.line(f"const {s.acc_t} acc = ({s.acc_t}){dot} + {init};")
                    value = s.req.expr("acc", "oc", s.bound, s.acc_t, ctx.rt)
                    w.line(f"y0[(oc * {g.ho} + oh) * {g.wo} + ow] = ({out_t}){value};")


def _sign_bit(w: CWriter, code: str, zx: int, lo: int) -> None:
    """Set bit j of the sign words s0 when sign(code − zx) = +1 (sign(0) = +1)."""
    if lo >= zx:  # every code is >= zx (and C would warn about an always-true test)
        w.line("s0[j >> 5] |= 1u << (j & 31u);")
        return
    with w.block(f"if ({code} >= {zx})"):
        w.line("s0[j >> 5] |= 1u << (j & 31u);")
