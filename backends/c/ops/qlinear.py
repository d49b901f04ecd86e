"""Pre-quantized ONNX in C: onnxruntime's integer ops, as backends/numpy_int/qlinear.py runs them.

A model quantized by onnxruntime.quantization (QDQ, fused by passes/fuse_qdq.py, or QOperator)
is an integer graph of QLinearConv, QLinearMatMul, qcc.QLinearGemm (ORT's QGemm), qcc.QLinearAdd,
qcc.QLinearGlobalAveragePool (also a whole-map AveragePool), qcc.QLinearSoftmax and
qcc.QLinearRequantize between an ONNX QuantizeLinear and a DequantizeLinear, plus the ops that
move codes (MaxPool, Reshape, ..., emitted by their usual kernels). The library's C API is the
usual one (backends/c/emit.py): <name>_quantize_input divides in float32 and rounds half to even
as ONNX QuantizeLinear, <name>_dequantize_output multiplies in float32 as DequantizeLinear.

The accumulation is exact integer arithmetic, so the conv and gemm loops are qcc's own (conv.py,
gemm.py): each QLinear node is handed to them as the qcc.QConv / qcc.QGemm it equals
up to the requantization (weights minus their zero points, the input zero point as
x_zero_point, the int32 bias), with `OrtRequant` in place of qcc's integer Requant.

Why the requantization stays float: ORT computes rne(f32(acc) · scale) with scale =
f32(f32(x_scale · w_scale) / y_scale), i.e. the product is rounded to 24 significant bits and
then to an integer, ties to even. That double rounding differs from every one-step
round_shift(acc · M, S) (ties away) for some accumulators (a product within half a float32 ulp
of k + 1/2 rounds to the tie and then to even), so it is emitted in float32 exactly as ORT
computes it (qcc_requantize_ort, qcc_fmaf in the runtime, which says what it assumes of the
compiler). The format change DQ -> Q of 8-bit codes (qcc.QLinearRequantize) is a function of one
code: a 256-entry table computed here, no float in C. All scale arithmetic (ratios, ORT's
constant k of QLinearAdd, QLinearSoftmax's table of exponentials) happens here once, in float32
(double for the table, as ORT), in ORT's operation order. Not bit-exact: QLinearSoftmax at some
exact rounding ties (tests/backends/c/test_ort_quantized_c.py, one code).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np

from backends.c.ops.base import Kernel, KernelPlan, c_kernel
from backends.c.ops.common import affine_loops
from backends.c.ops.conv import QConvKernel
from backends.c.ops.elementwise import in_place_candidates, index_maps
from backends.c.ops.gemm import QGemmKernel
from backends.c.writer import CWriter
from qcc.core.errors import QccError
from qcc.core.ir import Node, Value

EIGHT_BIT = (np.dtype(np.uint8), np.dtype(np.int8))
F32 = np.float32


# -- the float edges ---------------------------------------------------------------------------
@dataclass(frozen=True)
class EdgeFormat:
    """Scale and zero point of the library's input quantizer or output dequantizer; `onnx`:
    ONNX QuantizeLinear / DequantizeLinear (float32, ties to even), else qcc.Quantize /
    qcc.Dequantize (double, ties away)."""

    scale: float
    zero_point: int
    onnx: bool


def edge_format(node: Node) -> EdgeFormat:
    """The EdgeFormat of a float-edge node (qcc.Quantize / Dequantize or their ONNX forms)."""
    if "scale" in node.attrs:  # qcc.Quantize (out_zero_point) / qcc.Dequantize (zero_point)
        zero_point = node.attrs.get("out_zero_point", node.attrs.get("zero_point", 0))
        return EdgeFormat(float(node.attrs["scale"]), int(zero_point), False)
    scale, zero_point = node.inputs[1], node.input(2)
    if not scale.is_const or scale.const.size != 1 or (
            zero_point is not None and (not zero_point.is_const or zero_point.const.size != 1)):
        raise QccError(f"{node.op_type} {node.name!r}: the C library's input and output take "
                       "one constant scale and zero point")
    if scale.const.dtype != np.float32:
        raise QccError(f"{node.op_type} {node.name!r}: the C library's input and output take "
                       f"a float32 scale, not {scale.const.dtype}")
    zp = 0 if zero_point is None else int(zero_point.const.ravel()[0])
    return EdgeFormat(float(scale.const.ravel()[0]), zp, True)


# -- onnxruntime's requantization ---------------------------------------------------------------
def float_literal(value: float) -> str:
    """An exact C float constant (hex: no decimal rounding between here and the compiler)."""
    return f"{float(F32(value)).hex()}f"


@dataclass
class OrtRequant:
    """sat(rne(f32(acc) · scale_c) + zero_point) per output channel c (qlinear.
    requantize_like_ort): what conv.py and gemm.py call `req`, with the same `define` / `expr`."""

    scales: np.ndarray  # float32, one per channel
    zero_point: int
    lo: int
    hi: int
    prefix: str

    @property
    def per_channel(self) -> bool:
        return np.unique(self.scales).size > 1

    def define(self, w: CWriter) -> int:
        """The per-channel scale table (nothing when one scale serves all); its bytes."""
        if not self.per_channel:
            return 0
        w.array(f"static const float {self.prefix}_scale[{self.scales.size}]",
                [float_literal(s) for s in self.scales])
        return 4 * self.scales.size

    def expr(self, acc: str, channel: str, bound: int, acc_t: str, rt: str) -> str:
        scale = (f"{self.prefix}_scale[{channel}]" if self.per_channel
                 else float_literal(self.scales[0]))
        return (f"{rt}requantize_ort((float)({acc}), {scale}, {self.zero_point}, {self.lo}, "
                f"{self.hi})")


def _code_range(value: Value, ctx) -> tuple[int, int]:
    """The storage range of 8-bit codes (the type from shape inference: a Value's own dtype
    may predate the passes)."""
    dtype = np.dtype(ctx.t(value).dtype)
    if dtype not in EIGHT_BIT:
        raise QccError(f"tensor {value.name!r}: onnxruntime's QLinear ops take uint8 / int8 "
                       f"codes in the C backend, not {dtype}")
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _float32(node: Node, *values: Value | None) -> list[np.ndarray]:
    """The constant float32 scales of `node` (refused otherwise, with the node's name)."""
    out = []
    for v in values:
        if v is None or not v.is_const or v.const.dtype != np.float32:
            raise QccError(f"{node.op_type} {node.name!r}: the C backend needs constant float32 "
                           "scales")
        out.append(v.const.astype(F32).ravel())
    return out


def _scalar(node: Node, v: np.ndarray, what: str) -> np.float32:
    if v.size != 1:
        raise QccError(f"{node.op_type} {node.name!r}: {what} must be one value (per tensor) "
                       "in the C backend")
    return F32(v[0])


def _zero_points(node: Node, value: Value | None, size: int) -> np.ndarray:
    """A constant zero point as int64, one per channel (broadcast from one)."""
    if value is None:
        return np.zeros(size, np.int64)
    if not value.is_const:
        raise QccError(f"{node.op_type} {node.name!r}: zero points must be constants")
    zp = value.const.astype(np.int64).ravel()
    return np.broadcast_to(zp, (size,)) if zp.size in (1, size) else zp


def _per_channel(node: Node, v: np.ndarray, channels: int, what: str) -> np.ndarray:
    if v.size not in (1, channels):
        raise QccError(f"{node.op_type} {node.name!r}: {what} has {v.size} values for "
                       f"{channels} output channels")
    return np.broadcast_to(v, (channels,)).astype(F32)


def _output(node: Node, ctx, zp_value: Value | None, channels: int, scales: np.ndarray,
            prefix: str) -> OrtRequant:
    lo, hi = _code_range(node.outputs[0], ctx)
    zp = int(_zero_points(node, zp_value, 1)[0])
    _check_scales(node, scales)
    return OrtRequant(_per_channel(node, scales, channels, "the requantization scale"), zp, lo,
                      hi, prefix)


def _check_scales(node: Node, scales: np.ndarray) -> None:
    """Positive normal float32 (qlinear._check_scale: the interpreter refuses the rest)."""
    if not np.all(np.isfinite(scales)) or np.any(scales < np.finfo(F32).tiny):
        raise QccError(f"{node.op_type} {node.name!r}: requantization scales must be positive "
                       "normal float32 numbers")


def _view(node: Node, ctx, op_type: str, x: Value, w_codes: np.ndarray, bias: Value | None,
          attrs: dict, zx: int) -> Node:
    """The qcc op (QConv / QGemm) this node equals up to its requantization, not in any graph:
    weights minus their zero points, zx as x_zero_point. Its integer Requant is a placeholder
    (M = 1, S = 0) that OrtRequant replaces."""
    lo, hi = _code_range(node.outputs[0], ctx)
    w = Value(f"{node.name}/w", tuple(w_codes.shape), np.dtype(np.int64), w_codes)
    view_attrs = dict(attrs, x_zero_point=zx, multiplier=[1], shift=[0], out_lo=lo, out_hi=hi)
    return Node(op_type, node.name, [x, w, bias], node.outputs, view_attrs, node.opset,
                "qcc")


def _bias(node: Node, value: Value | None) -> Value | None:
    if value is not None and not value.is_const:
        raise QccError(f"{node.op_type} {node.name!r}: the bias must be a constant")
    return value


class ViewKernel:
    """Mixin: plan and emit run the base kernel on the node's qcc view (`_view`), which
    `setup` stores, so every attribute and input the base kernel reads is the view's."""

    def view(self, node: Node, ctx) -> Node:
        self.setup(node, ctx)
        return ctx.memo[f"{node.name}/view"]

    def plan(self, node: Node, ctx) -> KernelPlan:
        return super().plan(self.view(node, ctx), ctx)

    def emit(self, node: Node, ctx, w: CWriter) -> None:
        super().emit(self.view(node, ctx), ctx, w)


@c_kernel
class QLinearConvKernel(ViewKernel, QConvKernel):
    """ONNX QLinearConv: conv.py's loops on Σ(x − zx)(w − zw) + B, ORT's requantization."""

    op_types = ("QLinearConv",)
    origin = "ONNX QLinearConv (onnxruntime's float32 requantization)"
    packed = False  # conv.py's DSP kernels requantize with qcc's integer Requant

    def setup(self, node: Node, ctx):
        if node.name in ctx.memo:
            return ctx.memo[node.name][0]
        x, w = node.inputs[0], node.inputs[3]
        _code_range(x, ctx)
        if not w.is_const:
            raise QccError(f"QLinearConv {node.name!r}: the weights must be constants")
        m = w.const.shape[0]
        xs, ws, ys = _float32(node, node.inputs[1], node.inputs[4], node.inputs[6])
        zx = int(_zero_points(node, node.inputs[2], 1)[0])
        zw = _zero_points(node, node.inputs[5], m).reshape((m,) + (1,) * (w.const.ndim - 1))
        codes = w.const.astype(np.int64) - zw
        attrs = {k: v for k, v in node.attrs.items() if k in (
            "auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")}
        view = _view(node, ctx, "QConv", x, codes, _bias(node, node.input(8)), attrs, zx)
        # qlinear.ort_output_scale: (x_scale · w_scale) / y_scale in float32, in this order
        scales = (_scalar(node, xs, "x_scale") * _per_channel(node, ws, m, "w_scale")) / \
            _scalar(node, ys, "y_scale")
        setup = replace(super().setup(view, ctx),
                        req=_output(node, ctx, node.input(7), m, scales, ctx.cname(node, "rq")))
        ctx.memo[node.name] = (setup,)
        ctx.memo[f"{node.name}/view"] = view
        return setup


@c_kernel
class QLinearGemmKernel(ViewKernel, QGemmKernel):
    """ONNX QLinearMatMul and qcc.QLinearGemm (ORT's QGemm): gemm.py's loops, ORT's
    requantization per output column."""

    op_types = ("QLinearGemm",)
    origin = "onnxruntime QLinearMatMul / QGemm (float32 requantization)"
    packed = False  # gemm.py's DSP kernels requantize with qcc's integer Requant
    gemm = True  # QGemm's inputs (a bias C, transB); QLinearMatMul below has neither

    def setup(self, node: Node, ctx) -> tuple:
        cached = ctx.memo.get(node.name)
        if cached is not None:
            return cached
        a, b = node.inputs[0], node.inputs[3]
        _code_range(a, ctx)
        if not b.is_const or b.const.ndim != 2:
            raise QccError(f"{node.op_type} {node.name!r}: the C backend needs a constant 2-D "
                           "weight matrix")
        gemm = self.gemm
        trans_b = int(node.attrs.get("transB", 0)) if gemm else 0
        if gemm and int(node.attrs.get("transA", 0)):
            raise QccError(f"QLinearGemm {node.name!r}: transA = 1 is not supported by the C "
                           "backend")
        y_index = 7 if gemm else 6
        if node.input(y_index) is None:
            raise QccError(f"QLinearGemm {node.name!r}: a float output (no y_scale) is not "
                           "supported by the C backend")
        m = b.const.shape[0] if trans_b else b.const.shape[1]
        sa, sb, sy = _float32(node, node.inputs[1], node.inputs[4], node.inputs[y_index])
        za = int(_zero_points(node, node.inputs[2], 1)[0])
        zb = _zero_points(node, node.inputs[5], m)
        codes = b.const.astype(np.int64) - (zb.reshape(-1, 1) if trans_b else zb.reshape(1, -1))
        bias = _bias(node, node.input(6)) if gemm else None
        view = _view(node, ctx, "QGemm", a, codes, bias, {"transB": trans_b}, za)
        sb = _per_channel(node, sb, m, "b_scale")
        if gemm:  # qlinear.qlinear_gemm: f32(f32(alpha · a_scale) · b_scale) / y_scale
            scales = (F32(node.attrs.get("alpha", 1.0)) * _scalar(node, sa, "a_scale")) * sb
        else:
            scales = _scalar(node, sa, "a_scale") * sb
        scales = scales / _scalar(node, sy, "y_scale")
        req = _output(node, ctx, node.input(y_index + 1), m, scales, ctx.cname(node, "rq"))
        result = super().setup(view, ctx)
        result = result[:4] + (req,) + result[5:]
        ctx.memo[node.name] = result
        ctx.memo[f"{node.name}/view"] = view
        return result


# -- QLinearAdd ---------------------------------------------------------------------------------
def f32_nearest(value: Fraction) -> np.float32:
    """The float32 nearest to an exact rational, ties to even (normal range)."""
    guess = F32(float(value))  # within one float32 step of the answer (double rounding)
    candidates = [np.nextafter(guess, F32(-np.inf)), guess, np.nextafter(guess, F32(np.inf))]
    best = min(candidates, key=lambda c: (abs(Fraction(float(c)) - value),
                                          int(np.asarray(c).view(np.uint32)) & 1))
    return F32(best)


def _product(a: np.float32, b: np.float32) -> Fraction:
    return Fraction(float(a)) * Fraction(float(b))


@dataclass(frozen=True)
class AddConstants:
    """qlinear.qlinear_add_like_ort's constants: x (the input ORT's kernel reads as a vector)
    is input `x_index`; r_x = f32(s_x/s_c), r_y = f32(s_y/s_c), k = f32(z_c) −
    fma(r_x, z_x, f32(r_y · z_y)); `swapped`: the one-element kernel's order of the two FMAs."""

    x_index: int
    r_x: np.float32
    r_y: np.float32
    k: np.float32
    swapped: bool


def add_constants(a_shape: tuple[int, ...], b_shape: tuple[int, ...], scales: list[np.float32],
                  zero_points: list[int]) -> AddConstants:
    """From the inputs' shapes, the scales (a, b, c) and zero points (a, b, c)."""
    x_index = 1 if _scalar_side(a_shape, b_shape) == "a" else 0
    y_index = 1 - x_index
    r_x, r_y = scales[x_index] / scales[2], scales[y_index] / scales[2]
    inner = F32(r_y * F32(zero_points[y_index]))
    fma = f32_nearest(_product(r_x, F32(zero_points[x_index])) + Fraction(float(inner)))
    k = F32(zero_points[2]) - fma
    swapped = int(np.prod(a_shape)) == int(np.prod(b_shape)) == 1
    return AddConstants(x_index, F32(r_x), F32(r_y), F32(k), swapped)


def _scalar_side(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> str:
    """qlinear._scalar_side: "a" or "b" when ORT's broadcast loop sees that input as one value
    per innermost span (or as a whole: a first), else "vector"."""
    if int(np.prod(a_shape)) == 1:
        return "a"
    if int(np.prod(b_shape)) == 1:
        return "b"
    rank = max(len(a_shape), len(b_shape))
    a_shape = (1,) * (rank - len(a_shape)) + tuple(a_shape)
    b_shape = (1,) * (rank - len(b_shape)) + tuple(b_shape)
    for da, db in zip(reversed(a_shape), reversed(b_shape)):
        if max(da, db) > 1:
            return "a" if da == 1 else "b" if db == 1 else "vector"
    return "vector"


@c_kernel
class QLinearMatMulKernel(QLinearGemmKernel):
    op_types = ("QLinearMatMul",)
    gemm = False


@c_kernel
class QLinearAddKernel(Kernel):
    """qcc.QLinearAdd (com.microsoft QLinearAdd): c = sat(rne(fma(x, r_x, fma(y, r_y, k)))),
    broadcasting as NumPy does (MlasQLinearAddKernel's arithmetic, per element)."""

    op_types = ("QLinearAdd",)
    origin = "com.microsoft QLinearAdd (onnxruntime's float32 FMAs)"

    def constants(self, node: Node, ctx) -> AddConstants:
        if node.name in ctx.memo:
            return ctx.memo[node.name][0]
        a, b = node.inputs[0], node.inputs[3]
        if a.is_const or b.is_const:
            raise QccError(f"QLinearAdd {node.name!r}: constant inputs are not supported by "
                           "the C backend")
        for v in (a, b):
            _code_range(v, ctx)
        scales = [_scalar(node, s, "a scale") for s in _float32(
            node, node.inputs[1], node.inputs[4], node.inputs[6])]
        _check_scales(node, np.array(scales))
        zps = [int(_zero_points(node, node.input(i), 1)[0]) for i in (2, 5, 7)]
        found = add_constants(ctx.t(a).shape, ctx.t(b).shape, scales, zps)
        ctx.memo[node.name] = (found,)
        return found

    def plan(self, node: Node, ctx) -> KernelPlan:
        self.constants(node, ctx)
        return KernelPlan(in_place=in_place_candidates(node, ctx),
                          note="A + B as onnxruntime computes it: two float32 FMAs per element")

    def emit(self, node: Node, ctx, w: CWriter) -> None:
        c = self.constants(node, ctx)
        lo, hi = _code_range(node.outputs[0], ctx)
        shape, maps = index_maps(node, ctx)
        out_t = ctx.t(node.outputs[0]).ctype
        r_x, r_y, k = (float_literal(v) for v in (c.r_x, c.r_y, c.k))
        w.comment(f"r_x = {float(c.r_x):.9g}, r_y = {float(c.r_y):.9g}, k = {float(c.k):.9g}; "
                  f"x is input {c.x_index}")
        fma = f"{ctx.rt}fmaf"

        def body(ix: list[str]) -> list[str]:
            x, y = f"(float)x{c.x_index}[{ix[1 + c.x_index]}]", \
                f"(float)x{1 - c.x_index}[{ix[2 - c.x_index]}]"
            value = (f"{fma}({y}, {r_y}, {fma}({x}, {r_x}, {k}))" if c.swapped
                     else f"{fma}({x}, {r_x}, {fma}({y}, {r_y}, {k}))")
            return [f"y0[{ix[0]}] = ({out_t}){ctx.rt}saturate_ort({value}, {lo}, {hi});"]

        affine_loops(w, shape, maps, body)


# -- QLinearGlobalAveragePool -------------------------------------------------------------------
@c_kernel
class QLinearGlobalAveragePoolKernel(Kernel):
    """qcc.QLinearGlobalAveragePool: exact Σx − zx·n per channel, requantized by
    f32(x_scale / f32(y_scale · n)) as ORT (qlinear.qlinear_global_average_pool)."""

    op_types = ("QLinearGlobalAveragePool",)
    origin = "com.microsoft QLinearGlobalAveragePool (float32 requantization)"

    def setup(self, node: Node, ctx) -> tuple[int, int, int, OrtRequant, str]:
        if node.name in ctx.memo:
            return ctx.memo[node.name]
        x = ctx.t(node.inputs[0])
        _code_range(node.inputs[0], ctx)
        if node.attrs.get("channels_last", 0) or len(x.shape) < 3:
            raise QccError(f"QLinearGlobalAveragePool {node.name!r}: the C backend takes NCHW "
                           "inputs (channels_last = 0)")
        channels, n = x.shape[1], int(np.prod(x.shape[2:]))
        xs, ys = (_scalar(node, s, "a scale") for s in _float32(node, node.inputs[1],
                                                                   node.inputs[3]))
        zx = int(_zero_points(node, node.input(2), 1)[0])
        scale = xs / (ys * F32(n))
        if n >= 1 << 24 or not 2.0 ** -32 <= scale < 256.0:
            raise QccError(f"QLinearGlobalAveragePool {node.name!r}: parameters out of range "
                           f"(window {n}, scale {scale})")
        req = _output(node, ctx, node.input(4), 1, np.array([scale], F32), ctx.cname(node, "rq"))
        acc_t = "int32_t" if 255 * n < 1 << 31 else "int64_t"
        found = (channels, n, zx, req, acc_t)
        ctx.memo[node.name] = found
        return found

    def plan(self, node: Node, ctx) -> KernelPlan:
        channels, n, _, _, acc_t = self.setup(node, ctx)
        return KernelPlan(macs=channels * n, note=f"mean of {n} codes per channel, {acc_t} sum, "
                                                  "float32 requantization")

    def emit(self, node: Node, ctx, w: CWriter) -> None:
        channels, n, zx, req, acc_t = self.setup(node, ctx)
        out_t = ctx.t(node.outputs[0]).ctype
        w.line("int32_t c, i;")
        with w.block(f"for (c = 0; c < {channels}; ++c)"):
            w.line(f"const {ctx.t(node.inputs[0]).ctype} *const xc = x0 + c * {n};")
            w.line(f"{acc_t} acc = {-zx * n};")
            with w.block(f"for (i = 0; i < {n}; ++i)"):
                w.line("acc += xc[i];")
            w.line(f"y0[c] = ({out_t}){req.expr('acc', 'c', 0, acc_t, ctx.rt)};")


# -- QLinearRequantize --------------------------------------------------------------------------
def requantize_table(in_dtype: np.dtype, x_scale: np.float32, x_zp: int, y_scale: np.float32,
                     y_zp: int, lo: int, hi: int, relu: bool) -> np.ndarray:
    """Output code per input code (lowest first) of DequantizeLinear -> QuantizeLinear as ORT
    computes them: sat(rne(f32(f32(x − zx) · sx) / sy) + zy), max(·, 0) between if `relu`.
    NumPy's float32 operations are IEEE binary32 with ties to even, as ORT's."""
    info = np.iinfo(in_dtype)
    codes = np.arange(int(info.min), int(info.max) + 1, dtype=np.int64)
    real = (codes - x_zp).astype(F32) * x_scale
    if relu:
        real = np.maximum(real, F32(0))
    q = np.rint(real / y_scale).astype(np.float64) + y_zp
    return np.clip(q, lo, hi).astype(np.int64)


@c_kernel
class QLinearRequantizeKernel(Kernel):
    """qcc.QLinearRequantize of 8-bit codes: one table lookup per element."""

    op_types = ("QLinearRequantize",)
    origin = "DequantizeLinear -> QuantizeLinear as onnxruntime computes it (a table)"

    def table(self, node: Node, ctx) -> np.ndarray:
        x = node.inputs[0]
        _code_range(x, ctx)
        lo, hi = _code_range(node.outputs[0], ctx)
        xs, ys = (_scalar(node, s, "a scale") for s in _float32(node, node.inputs[1],
                                                                   node.inputs[3]))
        _check_scales(node, np.array([xs, ys]))
        zx, zy = (int(_zero_points(node, node.input(i), 1)[0]) for i in (2, 4))
        return requantize_table(np.dtype(ctx.t(x).dtype), xs, zx, ys, zy, lo, hi,
                                bool(node.attrs.get("relu", 0)))

    def plan(self, node: Node, ctx) -> KernelPlan:
        self.table(node, ctx)
        return KernelPlan(in_place=in_place_candidates(node, ctx),
                          note="format change of 8-bit codes: a 256-entry table")

    def emit(self, node: Node, ctx, w: CWriter) -> None:
        table = self.table(node, ctx)
        out = ctx.t(node.outputs[0])
        name = ctx.const_array(node, "table", out.ctype, table.tolist())
        offset = -int(np.iinfo(ctx.t(node.inputs[0]).dtype).min)
        shape, maps = index_maps(node, ctx)
        index = "x0[{}]" if offset == 0 else f"x0[{{}}] + {offset}"
        affine_loops(w, shape, maps,
                     lambda ix: [f"y0[{ix[0]}] = {name}[{index.format(ix[1])}];"])


# -- QLinearSoftmax -----------------------------------------------------------------------------
def softmax_table(x_scale: np.float32, reduce_len: int, signed: bool) -> np.ndarray:
    """onnxruntime's table of exponentials (qlinear.qlinear_softmax_table: the same formula;
    Python's math.exp is the platform's libm, as ORT's std::exp)."""
    quotient = F32(np.finfo(F32).max) / F32(reduce_len)
    bit_shift = max(0.0, math.log(float(quotient)) - 5.0) / float(x_scale)
    table = np.empty(256, F32)
    for i in range(256):
        table[(i - 128) & 0xFF if signed else i] = F32(
            math.exp((float(i) - 255 + bit_shift) * float(x_scale)))
    return table


@c_kernel
class QLinearSoftmaxKernel(Kernel):
    """qcc.QLinearSoftmax (com.microsoft QLinearSoftmax) along the last axis: per row the table
    entries of the codes shifted so the maximum reads entry 255, their float32 sum in order,
    then rne(f32(t · ⌊1/y_scale⌋) / sum) + zy, saturated above (qlinear.qlinear_softmax_rows)."""

    op_types = ("QLinearSoftmax",)
    origin = "com.microsoft QLinearSoftmax (table of exponentials, float32 sum and division)"

    def setup(self, node: Node, ctx) -> tuple[int, int, np.ndarray, np.float32, int, bool]:
        if node.name in ctx.memo:
            return ctx.memo[node.name]
        x = ctx.t(node.inputs[0])
        _code_range(node.inputs[0], ctx)
        opset = int(node.attrs.get("opset", 13))
        axis = int(node.attrs.get("axis", -1 if opset >= 13 else 1)) % len(x.shape)
        if opset >= 13 and int(np.prod(x.shape[axis + 1:])) != 1:
            raise QccError(f"QLinearSoftmax {node.name!r}: the C backend takes the softmax "
                           "along the last axis (or one followed by unit axes) only")
        d = int(np.prod(x.shape[axis:]))
        xs, ys = (_scalar(node, s, "a scale") for s in _float32(node, node.inputs[1],
                                                                   node.inputs[3]))
        _check_scales(node, np.array([xs, ys]))
        signed = ctx.t(node.inputs[0]).dtype == np.int8
        y_mult = np.floor(F32(1.0) / ys).astype(F32)
        if not 1 <= y_mult < 1 << 22:
            raise QccError(f"QLinearSoftmax {node.name!r}: output scale {ys} out of the range "
                           "the C backend rounds exactly (2^-22 .. 1)")
        zy = int(_zero_points(node, node.input(4), 1)[0])
        found = (x.numel // d, d, softmax_table(xs, d, signed), y_mult, zy, signed)
        ctx.memo[node.name] = found
        return found

    def plan(self, node: Node, ctx) -> KernelPlan:
        rows, d, *_ = self.setup(node, ctx)
        return KernelPlan(note=f"softmax of {rows} row(s) of {d} codes, onnxruntime's "
                               "table and float32 arithmetic")

    def emit(self, node: Node, ctx, w: CWriter) -> None:
        rows, d, table, y_mult, zy, signed = self.setup(node, ctx)
        name = ctx.cname(node, "exp")
        if name not in ctx.defined:
            ctx.defined.add(name)
            ctx.consts.array(f"static const float {name}[256]",
                             [float_literal(v) for v in table])
            ctx.constant_bytes += 4 * 256
        x_t, out_t = ctx.t(node.inputs[0]).ctype, ctx.t(node.outputs[0]).ctype
        top = 127 if signed else 255
        index = f"(uint8_t)({top} - top + xr[j])"
        w.line("int32_t r, j;")
        with w.block(f"for (r = 0; r < {rows}; ++r)"):
            w.line(f"const {x_t} *const xr = x0 + r * {d};")
            w.line(f"{out_t} *const yr = y0 + r * {d};")
            w.line(f"{x_t} top = xr[0];")
            w.line("float sum = 0.0f;")
            with w.block(f"for (j = 1; j < {d}; ++j)"):
                w.line("top = xr[j] > top ? xr[j] : top;")
            with w.block(f"for (j = 0; j < {d}; ++j)"):
                w.line(f"sum += {name}[{index}];")
            with w.block(f"for (j = 0; j < {d}; ++j)"):
                w.line(f"const float q = ({name}[{index}] * {float_literal(y_mult)}) / sum;")
                w.line(f"const int32_t v = {ctx.rt}rint_small(q) + {zy};")
                top_code = 127 if signed else 255  # v >= zy >= the lowest code
                w.line(f"yr[j] = ({out_t})(v > {top_code} ? {top_code} : v);")
