"""Integer kernels of pre-quantized ONNX: the QLinear / Integer ops, bit-exact with onnxruntime.

ONNX ops: QuantizeLinear, DequantizeLinear (the float edges), QLinearConv, QLinearMatMul,
ConvInteger, MatMulInteger. qcc-domain ops with the semantics of onnxruntime's com.microsoft
contrib ops (passes/fuse_qdq.py emits them): QLinearAdd, QLinearGlobalAveragePool, QLinearGemm
(com.microsoft QGemm; renamed because qcc's own QGemm exists) and QLinearRequantize (what ORT
computes for DequantizeLinear -> QuantizeLinear: float32 product, then float32 quotient).

Accumulation is exact: zero points are subtracted first and the products summed in integers
(float32 / float64 BLAS where every partial sum provably fits, `exact_float_type`).

Requantization reproduces onnxruntime's CPU kernels (MLAS, x86-64 with AVX2/FMA) bit for bit,
without a float operation on the data. ORT computes in IEEE float32 with round-half-even; every
float32 value is m·2^e with an integer |m| < 2^24, so each float32 operation is an exact integer
operation followed by rounding to 24 significant bits, which int64 arithmetic does exactly
(the `f32_*` functions below; `F32` = (mantissa, exponent) int64 arrays):

- QLinearConv / QLinearMatMul / QGemm (MlasRequantizeOutput): y = sat(rne(f32(acc)·s) + zp),
  s = f32(f32(a_scale·b_scale) / y_scale) per output channel (`requantize_like_ort`).
- QLinearGlobalAveragePool: the same with acc = Σx − zx·n, s = f32(x_scale / f32(y_scale·n)).
- QLinearAdd (MlasQLinearAddKernelAvx2): with r_a = f32(sA/sC), r_b = f32(sB/sC) and
  k = f32(zC) − fma(r_a, zA, f32(r_b·zB)) (GCC contracts r_a·zA + r_b·zB into one FMA),
  c = sat(rne(fma(a, r_a, fma(b, r_b, k)))), A and B swapping roles when A is the input that
  broadcasts over the innermost axes (`qlinear_add_like_ort`). Measured against ORT: computing
  k without the FMA, or the sum in plain float32, gives other codes for some parameters.
- QuantizeLinear divides in float32 and rounds half to even (done in float at the input edge).

Scales, ratios and the constant k are computed once from the constant scale tensors (ahead of
time, as TFLite does); scales must be positive normal float32 numbers, which keeps every
intermediate in float32's normal range, so the emulation needs no subnormal or infinity cases.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from backends.numpy_int.interpreter import count_overflow
from backends.numpy_int.kernels import exact_float_type
from qcc.core.errors import QccError
from qcc.core.ir import Node
from qcc.core.ops import nn
from qcc.core.ops import quantize as qops
from qcc.core.registry import float_kernel, int_kernel

I64 = NDArray[np.int64]
F32 = tuple[I64, I64]  # (m, e): the float32 value m · 2^e, |m| < 2^24 (0 is m = 0)

MANTISSA_BITS = 24
INT32_LIMIT = 1 << 31
BLOCK_ELEMENTS = 1 << 17  # requantize in blocks of about this many elements (cache-sized)
ADD_TABLE_SIZE = 1 << 17  # QLinearAdd of more 8-bit codes than this goes through a table
_NO_BITS = -(1 << 40)  # "exponent of the top bit" of a zero term: below everything else


# -- exact float32 arithmetic in int64 ---------------------------------------------------------
def bit_length(x: I64) -> I64:
    """Number of bits of |x| (0 for 0), for |x| < 2^62 (the exponent field of float64(|x|))."""
    a = np.abs(np.asarray(x, dtype=np.int64))
    e = np.maximum((a.astype(np.float64).view(np.int64) >> 52) - 1022, 0)
    # float64 may round a 54+ bit |x| up to the next power of two: one bit too many
    return e - ((e > 0) & (a < (np.int64(1) << np.maximum(e - 1, 0))))


def rne_shift(n: I64, s: I64) -> I64:
    """n / 2^s rounded to nearest, ties to even (the IEEE default), for 0 <= s; exact int64."""
    n = np.asarray(n, dtype=np.int64)
    s = np.minimum(np.asarray(s, dtype=np.int64), 62)
    q = n >> s
    one = np.int64(1) << s
    r = n & (one - 1)  # the dropped bits, >= 0 in two's complement
    half = one >> 1  # 0 when s = 0: nothing is dropped then
    return q + ((r > half) | ((r == half) & (half > 0) & ((q & 1) == 1)))


def f32_round(n: I64, e: I64) -> F32:
    """The float32 nearest to n · 2^e (ties to even), for |n| < 2^62."""
    n = np.asarray(n, dtype=np.int64)
    s = np.maximum(bit_length(n) - MANTISSA_BITS, 0)
    m = rne_shift(n, s)
    carry = (np.abs(m) >> MANTISSA_BITS).astype(np.int64)  # rounded up to 2^24: renormalise
    return m >> carry, np.asarray(e, dtype=np.int64) + s + carry


def f32_split(x: np.ndarray) -> F32:
    """Exact (m, e) of float32 (or float16) values."""
    frac, exp = np.frexp(np.asarray(x, dtype=np.float32).astype(np.float64))
    m = (frac * (1 << MANTISSA_BITS)).astype(np.int64)
    return m, exp.astype(np.int64) - MANTISSA_BITS


def f32_value(x: F32) -> NDArray[np.float32]:
    """Back to NumPy float32 (exact): for tests and float outputs."""
    return np.ldexp(x[0].astype(np.float64), x[1]).astype(np.float32)


def f32_mul(a: F32, b: F32) -> F32:
    """float32 a · b: the 48-bit exact product, rounded once."""
    return f32_round(a[0] * b[0], a[1] + b[1])


def f32_add_exact(p: I64, ep: I64, q: I64, eq: I64) -> F32:
    """float32 of the exact p·2^ep + q·2^eq (|p|, |q| < 2^48), rounded once.

    Both terms are aligned to a 60-bit window under the larger one's top bit. A term that falls
    partly below the window is at least 12 bits smaller than the other, so the sum keeps >= 57
    bits and what was cut off only matters as a sticky bit: it is kept as one extra bit below
    the window (value q + 1/2 instead of q + f, 0 < f < 1, on the same side of every rounding
    boundary of the 24-bit result).
    """
    p, q = np.asarray(p, np.int64), np.asarray(q, np.int64)
    top = np.maximum(np.where(p != 0, ep + bit_length(p), _NO_BITS),
                     np.where(q != 0, eq + bit_length(q), _NO_BITS))
    base = np.where(top == _NO_BITS, 0, top - 60) - 1  # exponent of the sticky bit
    return f32_round(_align(p, ep, base) + _align(q, eq, base), base)


def _align(m: I64, e: I64, base: I64) -> I64:
    """m·2^e in units of 2^base, the bits below 2^(base+1) folded into a sticky bit."""
    k = e - base
    left = m << np.clip(k, 0, 62)
    cut = np.clip(1 - k, 0, 62)  # bits below the window's lowest full bit
    kept = m >> cut
    sticky = (m - (kept << cut)) != 0
    right = (kept << 1) | sticky
    return np.where(k >= 1, left, right)


def f32_fma(a: F32, b: F32, c: F32) -> F32:
    """float32 fma(a, b, c) = a·b + c rounded once (x86 VFMADD)."""
    return f32_add_exact(a[0] * b[0], a[1] + b[1], c[0], c[1])


def f32_add(a: F32, b: F32) -> F32:
    return f32_add_exact(a[0], a[1], b[0], b[1])


def f32_neg(a: F32) -> F32:
    return -a[0], a[1]


def f32_div(a: F32, b: F32) -> F32:
    """float32 a / b (b != 0): a 61-bit integer quotient plus a sticky bit, rounded once."""
    na, nb = np.abs(a[0]), np.abs(b[0])
    k = 61 - bit_length(na)
    num = na << np.minimum(k, 61)
    quot = num // np.maximum(nb, 1)
    sticky = (num - quot * nb) != 0
    sign = np.where((a[0] < 0) != (b[0] < 0), -1, 1)
    return f32_round(sign * ((quot << 1) | sticky), a[1] - b[1] - k - 1)


def f32_rint(a: F32) -> I64:
    """The integer nearest to a float32, ties to even (cvtps2dq)."""
    return _rint_pow2(np.asarray(a[0], np.int64), np.asarray(a[1], np.int64))


def f32_from_int(n: np.ndarray) -> F32:
    return f32_round(np.asarray(n, dtype=np.int64), np.zeros((), np.int64))


# -- onnxruntime's requantizations --------------------------------------------------------
def ort_output_scale(a_scale: np.ndarray, b_scale: np.ndarray,
                     y_scale: np.ndarray | None) -> np.ndarray:
    """(a_scale · b_scale) / y_scale in the scales' float type, in ORT's operation order."""
    scale = np.asarray(a_scale) * np.asarray(b_scale)
    return scale if y_scale is None else scale / np.asarray(y_scale)


def requantize_like_ort(acc: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | int,
                        lo: int, hi: int) -> tuple[I64, int]:
    """onnxruntime's MlasRequantizeOutput in integers: sat(rne(f32(acc) · scale) + zp).

    `scale` is a float32 array broadcasting against `acc` (one entry per output channel or one
    for all). Returns the codes and the number of saturated elements. Equal to the float32
    computation for every int32 `acc` (tests/backends/test_qlinear.py proves it with hypothesis).
    """
    _check_scale(np.asarray(scale), "requantization scale")
    acc, scale = np.asarray(acc, dtype=np.int64), np.asarray(scale, dtype=np.float32)
    zero_point = np.asarray(zero_point, dtype=np.int64)
    # a dozen int64 passes per element: in blocks of leading rows that stay in cache
    rows = max(1, BLOCK_ELEMENTS // max(1, acc[:1].size)) if acc.ndim else 1
    per_row = scale.ndim == acc.ndim and acc.ndim > 0 and scale.shape[0] > 1
    blocks = [_requantize_block(acc[i:i + rows], scale[i:i + rows] if per_row else scale,
                                zero_point, lo, hi) for i in range(0, max(len(acc), 1), rows)
              ] if acc.ndim else [_requantize_block(acc, scale, zero_point, lo, hi)]
    codes = np.concatenate([b[0] for b in blocks]) if acc.ndim else blocks[0][0]
    return codes, sum(b[1] for b in blocks)


def _requantize_block(acc: I64, scale: np.ndarray, zero_point: I64, lo: int, hi: int
                      ) -> tuple[I64, int]:
    # float32(acc) is acc itself below 2^24, the usual case: skip that rounding then
    a = (acc, np.zeros((), np.int64)) if _absmax(acc) < 1 << MANTISSA_BITS else f32_from_int(acc)
    s_m, s_e = f32_split(scale)
    product = a[0] * s_m  # exact, < 2^48; rounded to float32 below, then to an integer
    shift = np.maximum(bit_length(product) - MANTISSA_BITS, 0)
    v = _rint_pow2(rne_shift(product, shift), shift + a[1] + s_e)
    return _saturate(v + zero_point, lo, hi)


def _rint_pow2(m: I64, e: I64) -> I64:
    """rne(m · 2^e) for |m| <= 2^24; beyond 2^61 (saturated by every caller) the shift stops."""
    return np.where(e >= 0, m << np.clip(e, 0, 37), rne_shift(m, np.clip(-e, 0, 62)))


def qlinear_add_like_ort(a: np.ndarray, a_scale: np.ndarray, a_zp: np.ndarray,
                         b: np.ndarray, b_scale: np.ndarray, b_zp: np.ndarray,
                         c_scale: np.ndarray, c_zp: np.ndarray, lo: int, hi: int
                         ) -> tuple[I64, int]:
    """onnxruntime's QLinearAdd (MLAS AVX2/FMA kernel) in integers, with NumPy broadcasting.

    ORT walks the broadcast in spans along the innermost axes and calls the kernel with the
    input that is one value over the span (if any) as its second operand y, the other as x.
    With r_x = f32(s_x/s_c), r_y = f32(s_y/s_c), k = f32(z_c) − fma(r_x, z_x, f32(r_y·z_y))
    (the compiler contracts r_x·z_x + r_y·z_y into one FMA) it computes
    c = rne(fma(x, r_x, fma(y, r_y, k))), or with the two FMAs swapped for a one-element
    output. Results beyond int32 become INT32_MIN (cvtps2dq), then everything saturates.
    """
    for s in (a_scale, b_scale, c_scale):
        _check_scale(np.asarray(s), "QLinearAdd scale")
    x, y = (b, b_scale, b_zp), (a, a_scale, a_zp)
    if _scalar_side(np.shape(a), np.shape(b)) != "a":
        x, y = y, x
    r_x = f32_div(f32_split(x[1]), f32_split(c_scale))
    r_y = f32_div(f32_split(y[1]), f32_split(c_scale))
    k = f32_add(f32_from_int(c_zp), f32_neg(
        f32_fma(r_x, f32_from_int(x[2]), f32_mul(r_y, f32_from_int(y[2])))))
    xs, ys = (np.asarray(v[0], np.int64) for v in (x, y))
    swapped = np.size(a) == np.size(b) == 1  # the kernel's one-element-x branch

    def codes(xv: I64, yv: I64) -> I64:
        xf, yf = f32_from_int(xv), f32_from_int(yv)
        value = (f32_fma(yf, r_y, f32_fma(xf, r_x, k)) if swapped
                 else f32_fma(xf, r_x, f32_fma(yf, r_y, k)))
        v = f32_rint(value)
        return np.where(np.abs(v) >= INT32_LIMIT, np.int64(-INT32_LIMIT), v)

    if xs.size + ys.size > ADD_TABLE_SIZE and np.dtype(x[0].dtype).itemsize == 1 == np.dtype(
            y[0].dtype).itemsize:
        # 8-bit codes: the same function evaluated once per (x, y) pair, then looked up
        first = int(np.iinfo(x[0].dtype).min), int(np.iinfo(y[0].dtype).min)
        grid = np.arange(256, dtype=np.int64)
        table = codes((grid + first[0])[:, None], (grid + first[1])[None, :])
        return _saturate(table[xs - first[0], ys - first[1]], lo, hi)
    return _saturate(codes(xs, ys), lo, hi)


def _scalar_side(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> str:
    """"a" or "b" when ORT's broadcast loop sees that input as one value per innermost span
    (or as a whole: a first), else "vector"."""
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


def requantize_linear_like_ort(x: np.ndarray, x_scale: np.ndarray, x_zp: np.ndarray,
                               y_scale: np.ndarray, y_zp: np.ndarray, lo: int, hi: int,
                               relu: bool = False) -> tuple[I64, int]:
    """DequantizeLinear then QuantizeLinear as ORT computes them, in integers:
    sat(rne(f32(f32(x − zx) · sx) / sy) + zy), with max(·, 0) between them if `relu`."""
    _check_scale(np.asarray(x_scale), "DequantizeLinear scale")
    _check_scale(np.asarray(y_scale), "QuantizeLinear scale")
    real = f32_mul(f32_from_int(np.asarray(x, np.int64) - np.asarray(x_zp, np.int64)),
                   f32_split(x_scale))
    if relu:
        real = (np.maximum(real[0], 0), real[1])
    v = f32_rint(f32_div(real, f32_split(y_scale))) + np.asarray(y_zp, np.int64)
    return _saturate(v, lo, hi)


def _saturate(v: I64, lo: int, hi: int) -> tuple[I64, int]:
    return np.clip(v, lo, hi), int(np.count_nonzero((v < lo) | (v > hi)))


def _check_scale(scale: np.ndarray, what: str) -> None:
    """Positive normal float32 numbers only: the emulation has no subnormal/inf/NaN cases."""
    s = scale.astype(np.float32)
    if not np.all(np.isfinite(s)) or np.any(s < np.finfo(np.float32).tiny):
        raise QccError(f"{what} must be a positive finite float32 number, got {scale.ravel()[:4]}")


# -- kernels -------------------------------------------------------------------------------------
def _int_range(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _zero_point(zp: np.ndarray | None) -> I64:
    return np.zeros((), np.int64) if zp is None else np.asarray(zp, np.int64)


def _out_type(zp: np.ndarray | None, default: np.dtype) -> np.dtype:
    dtype = np.dtype(default if zp is None else zp.dtype)
    if dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
        raise QccError(f"QLinear ops produce uint8 or int8, not {dtype}")
    return dtype


def _per_channel(p: np.ndarray, ndim: int, axis: int, size: int, what: str) -> np.ndarray:
    """A scalar / 1-element parameter as is, a 1-D one shaped to broadcast along `axis`."""
    p = np.asarray(p)
    if p.size == 1:
        return p.reshape(())
    if p.ndim != 1 or p.size != size:
        raise QccError(f"{what} has shape {p.shape}; expected a scalar or {size} values")
    shape = [1] * ndim
    shape[axis] = size
    return p.reshape(shape)


def _absmax(x: np.ndarray) -> int:
    return int(np.abs(x).max()) if x.size else 0


def _conv_acc(node: Node, x: np.ndarray, x_zp: np.ndarray | None, w: np.ndarray,
              w_zp: np.ndarray | None) -> I64:
    """Σ (x − zx)·(w − zw) over each window, exact (zw per output channel or one)."""
    xc = np.asarray(x, np.int64) - _zero_point(x_zp).reshape(())
    zw = _per_channel(_zero_point(w_zp), w.ndim, 0, w.shape[0], f"{node.name}: w zero point")
    wc = np.asarray(w, np.int64) - zw
    ft = exact_float_type(int(np.prod(w.shape[1:])), _absmax(xc), _absmax(wc), node)
    return np.rint(nn.conv(node, xc.astype(ft), wc.astype(ft))).astype(np.int64)


def _matmul_acc(node: Node, a: np.ndarray, a_zp: np.ndarray | None, b: np.ndarray,
                b_zp: np.ndarray | None) -> I64:
    """(a − za) @ (b − zb) exact; za one or per row of a, zb one or per column of b."""
    za = _zero_point(a_zp)
    if za.size > 1:
        za = za.reshape(-1, 1)  # per row (ONNX MatMulInteger / QLinearMatMul)
    ac = np.asarray(a, np.int64) - (za if za.size > 1 else za.reshape(()))
    zb = _zero_point(b_zp)
    bc = np.asarray(b, np.int64) - (zb if zb.size > 1 else zb.reshape(()))
    k = a.shape[-1]
    ft = exact_float_type(k, _absmax(ac), _absmax(bc), node)
    return np.rint(np.matmul(ac.astype(ft), bc.astype(ft))).astype(np.int64)


def _emit(node: Node, acc: I64, scale: np.ndarray, zp: np.ndarray | None,
          dtype: np.dtype) -> np.ndarray:
    lo, hi = _int_range(dtype)
    codes, saturated = requantize_like_ort(acc, scale, _zero_point(zp).reshape(()), lo, hi)
    count_overflow(node.outputs[0].name, saturated)
    return codes.astype(dtype)


@int_kernel("QuantizeLinear")
def quantize_linear(node: Node, x: np.ndarray, y_scale: np.ndarray,
                    y_zero_point: np.ndarray | None = None) -> np.ndarray:
    """The input edge: ONNX QuantizeLinear (float32 division, ties to even, saturation), as
    qcc.core.ops.quantize computes it, plus the count of saturated elements."""
    out = qops.quantize_linear(node, x, y_scale, y_zero_point)
    if out.dtype.kind in "iu" and out.dtype.itemsize <= 2:
        scale = qops.broadcast_param(node, y_scale, x.shape)
        zp = 0 if y_zero_point is None else qops.broadcast_param(node, y_zero_point, x.shape)
        with np.errstate(over="ignore", invalid="ignore"):
            v = np.rint(x.astype(scale.dtype) / scale).astype(np.float64) + zp
        lo, hi = _int_range(out.dtype)
        count_overflow(node.outputs[0].name, np.count_nonzero((v < lo) | (v > hi)))
    return out


@int_kernel("DequantizeLinear")
def dequantize_linear(node: Node, x: np.ndarray, x_scale: np.ndarray,
                      x_zero_point: np.ndarray | None = None) -> np.ndarray:
    """The output edge: (x − zero point) · scale in float32, as ONNX and ORT compute it."""
    return qops.dequantize_linear(node, x, x_scale, x_zero_point)


@float_kernel("QLinearConv")
@int_kernel("QLinearConv")
def qlinear_conv(node: Node, x: np.ndarray, x_scale: np.ndarray, x_zero_point: np.ndarray,
                 w: np.ndarray, w_scale: np.ndarray, w_zero_point: np.ndarray,
                 y_scale: np.ndarray, y_zero_point: np.ndarray | None = None,
                 b: np.ndarray | None = None) -> np.ndarray:
    """ONNX QLinearConv: exact Σ(x − zx)(w − zw) + B, requantized as onnxruntime does.

    An integer op by definition, so its float reference kernel is this one too.
    """
    acc = _conv_acc(node, x, x_zero_point, w, w_zero_point)
    m = w.shape[0]
    if b is not None:
        acc += np.asarray(b, np.int64).reshape((1, -1) + (1,) * (acc.ndim - 2))
    ws = _per_channel(w_scale, acc.ndim, 1, m, f"QLinearConv {node.name!r}: w_scale")
    scale = ort_output_scale(x_scale.reshape(()), ws, y_scale.reshape(()))
    return _emit(node, acc, scale, y_zero_point, _out_type(y_zero_point, x.dtype))


@float_kernel("ConvInteger")
@int_kernel("ConvInteger")
def conv_integer(node: Node, x: np.ndarray, w: np.ndarray, x_zero_point: np.ndarray | None = None,
                 w_zero_point: np.ndarray | None = None) -> np.ndarray:
    """ONNX ConvInteger: int32 Σ(x − zx)(w − zw), zw per output channel or one."""
    return _conv_acc(node, x, x_zero_point, w, w_zero_point).astype(np.int32)


@float_kernel("MatMulInteger")
@int_kernel("MatMulInteger")
def matmul_integer(node: Node, a: np.ndarray, b: np.ndarray, a_zero_point: np.ndarray | None = None,
                   b_zero_point: np.ndarray | None = None) -> np.ndarray:
    """ONNX MatMulInteger: int32 (a − za) @ (b − zb), za per row, zb per column (or one)."""
    return _matmul_acc(node, a, a_zero_point, b, b_zero_point).astype(np.int32)


@float_kernel("QLinearMatMul")
@int_kernel("QLinearMatMul")
def qlinear_matmul(node: Node, a: np.ndarray, a_scale: np.ndarray, a_zero_point: np.ndarray,
                   b: np.ndarray, b_scale: np.ndarray, b_zero_point: np.ndarray,
                   y_scale: np.ndarray, y_zero_point: np.ndarray) -> np.ndarray:
    """ONNX QLinearMatMul: exact (a − za) @ (b − zb), requantized as onnxruntime does (a_scale
    one or per row, b_scale one or per column, computed in the scales' own float type)."""
    acc = _matmul_acc(node, a, a_zero_point, b, b_zero_point)
    sa = a_scale.reshape(-1, 1) if a_scale.size > 1 else a_scale.reshape(())
    sb = b_scale if b_scale.size > 1 else b_scale.reshape(())
    scale = ort_output_scale(sa, sb, y_scale.reshape(()))
    return _emit(node, acc, scale, y_zero_point, _out_type(y_zero_point, a.dtype))


@int_kernel("QLinearGemm")
def qlinear_gemm(node: Node, a: np.ndarray, a_scale: np.ndarray, a_zero_point: np.ndarray,
                 b: np.ndarray, b_scale: np.ndarray, b_zero_point: np.ndarray,
                 c: np.ndarray | None = None, y_scale: np.ndarray | None = None,
                 y_zero_point: np.ndarray | None = None) -> np.ndarray:
    """com.microsoft QGemm: exact A'·B' + C (int32), then requantized by
    f32(f32(alpha·a_scale)·b_scale) / y_scale; float32 output f32(acc)·scale without y_scale."""
    attrs = node.attrs
    a = a.T if attrs.get("transA", 0) else a
    b = b.T if attrs.get("transB", 0) else b
    acc = _matmul_acc(node, a, a_zero_point, b, b_zero_point)
    if c is not None:
        acc += np.asarray(c, np.int64)
    sb = b_scale.astype(np.float32)
    scale = np.float32(attrs.get("alpha", 1.0)) * a_scale.astype(np.float32).reshape(()) * (
        sb if sb.size > 1 else sb.reshape(()))
    if y_scale is None:
        return f32_value(f32_mul(f32_from_int(acc), f32_split(scale)))
    scale = scale / y_scale.astype(np.float32).reshape(())
    return _emit(node, acc, scale, y_zero_point, _out_type(y_zero_point, a.dtype))


@int_kernel("QLinearAdd")
def qlinear_add(node: Node, a: np.ndarray, a_scale: np.ndarray, a_zero_point: np.ndarray | None,
                b: np.ndarray, b_scale: np.ndarray, b_zero_point: np.ndarray | None,
                c_scale: np.ndarray, c_zero_point: np.ndarray | None = None) -> np.ndarray:
    """com.microsoft QLinearAdd (A + B in C's format), as `qlinear_add_like_ort`."""
    dtype = _out_type(c_zero_point, a.dtype)
    scalars = [np.asarray(p, np.float32).reshape(()) for p in (a_scale, b_scale, c_scale)]
    zps = [_zero_point(z).reshape(()) for z in (a_zero_point, b_zero_point, c_zero_point)]
    codes, saturated = qlinear_add_like_ort(a, scalars[0], zps[0], b, scalars[1], zps[1],
                                            scalars[2], zps[2], *_int_range(dtype))
    count_overflow(node.outputs[0].name, saturated)
    return codes.astype(dtype)


@int_kernel("QLinearGlobalAveragePool")
def qlinear_global_average_pool(node: Node, x: np.ndarray, x_scale: np.ndarray,
                                x_zero_point: np.ndarray | None, y_scale: np.ndarray,
                                y_zero_point: np.ndarray | None = None) -> np.ndarray:
    """com.microsoft QLinearGlobalAveragePool: exact Σx − zx·n per channel, requantized by
    f32(x_scale / f32(y_scale · n)) (MLAS refuses n >= 2^24 and scales outside [2^-32, 256))."""
    axes = tuple(range(1, x.ndim - 1)) if node.attrs.get("channels_last", 0) else tuple(
        range(2, x.ndim))
    n = int(np.prod([x.shape[i] for i in axes]))
    scale = np.float32(x_scale.reshape(())) / (np.float32(y_scale.reshape(())) * np.float32(n))
    if n >= 1 << 24 or not 2.0 ** -32 <= scale < 256.0:
        raise QccError(f"QLinearGlobalAveragePool {node.name!r}: parameters out of range "
                       f"(window {n}, scale {scale})")
    acc = np.asarray(x, np.int64).sum(axis=axes, keepdims=True) - _zero_point(x_zero_point) * n
    return _emit(node, acc, scale, y_zero_point, _out_type(y_zero_point, x.dtype))


@int_kernel("QLinearRequantize")
def qlinear_requantize(node: Node, x: np.ndarray, x_scale: np.ndarray,
                       x_zero_point: np.ndarray | None, y_scale: np.ndarray,
                       y_zero_point: np.ndarray | None = None) -> np.ndarray:
    """Codes in one (scale, zero point) to another as ORT's DequantizeLinear -> QuantizeLinear
    computes it (with a Relu between them if the `relu` attribute is set)."""
    dtype = _out_type(y_zero_point, x.dtype)
    codes, saturated = requantize_linear_like_ort(
        x, np.float32(x_scale.reshape(())), _zero_point(x_zero_point).reshape(()),
        np.float32(y_scale.reshape(())), _zero_point(y_zero_point).reshape(()),
        *_int_range(dtype), relu=bool(node.attrs.get("relu", 0)))
    count_overflow(node.outputs[0].name, saturated)
    return codes.astype(dtype)


# -- QLinearSoftmax ------------------------------------------------------------------------------
SOFTMAX_RESERVE = 5.0  # ORT's reserve_bit for its float table (EXP_OUT_DTYPE = float)


def qlinear_softmax_table(x_scale: np.float32, reduce_len: int, signed: bool) -> np.ndarray:
    """onnxruntime's QlinearBuildLookupTableUint32 (float table): entry i (i = 0..255) is
    f32(exp((i − 255 + b) · x_scale)) with b = max(0, log(FLT_MAX / n) − 5) / x_scale, in
    double as ORT computes it (FLT_MAX / n in float32), stored at index i − 128 (mod 256) for
    int8 codes. Computed ahead of time (Python's math.exp is the platform's libm, as ORT's)."""
    quotient = np.float32(np.finfo(np.float32).max) / np.float32(reduce_len)
    bit_shift = max(0.0, math.log(float(quotient)) - SOFTMAX_RESERVE) / float(np.float32(x_scale))
    table = np.empty(256, np.float32)
    for i in range(256):
        value = math.exp((float(i) - 255 + bit_shift) * float(np.float32(x_scale)))
        table[(i - 128) & 0xFF if signed else i] = np.float32(value)
    return table


def qlinear_softmax_rows(codes: np.ndarray, table: np.ndarray, y_scale: np.float32,
                         y_zero_point: int, signed: bool) -> I64:
    """QlinearSoftmaxCPU on rows (N, D) of codes: per row, t = table shifted so the row's
    maximum reads entry 255, vsum = Σ t in float32 in row order, y = rne(f32(t · ⌊1/y_scale⌋)
    / vsum) + zy, clamped above to the type's maximum (y >= zy already). All float32 operations
    emulated exactly (f32_*). Measured against onnxruntime 1.32: int8 results above 127
    saturate (an older kernel wrapped them)."""
    x = np.asarray(codes, np.int64)
    if signed:
        index = (127 - x.max(axis=1, keepdims=True) + x) & 0xFF
    else:
        index = 255 - x.max(axis=1, keepdims=True) + x
    t = f32_split(table[index])
    vsum = f32_split(np.zeros(len(x), np.float32))
    for j in range(x.shape[1]):  # ORT's order: one float32 addition per element
        vsum = f32_add(vsum, (t[0][:, j], t[1][:, j]))
    scale = f32_split(np.floor(np.float32(1.0) / np.float32(y_scale)).astype(np.float32))
    quotient = f32_div(f32_mul(t, scale), (vsum[0][:, None], vsum[1][:, None]))
    return np.minimum(f32_rint(quotient) + y_zero_point, 127 if signed else 255)


def softmax_rows(node: Node, shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """(axis, the permutation that moves it last) of a QLinearSoftmax: opset >= 13 softmaxes
    along `axis` (ORT transposes it last), older opsets over the flattened dims from `axis`."""
    axis = int(node.attrs.get("axis", -1 if int(node.attrs.get("opset", 13)) >= 13 else 1))
    axis %= len(shape)
    perm = tuple(i for i in range(len(shape)) if i != axis) + (axis,)
    return axis, perm


@int_kernel("QLinearSoftmax")
def qlinear_softmax(node: Node, x: np.ndarray, x_scale: np.ndarray,
                    x_zero_point: np.ndarray | None, y_scale: np.ndarray,
                    y_zero_point: np.ndarray | None = None) -> np.ndarray:
    """com.microsoft QLinearSoftmax as onnxruntime's CPU kernel computes it (the table of
    `qlinear_softmax_table`, `qlinear_softmax_rows`)."""
    dtype = _out_type(y_zero_point, x.dtype)
    signed = np.dtype(x.dtype) == np.int8
    axis, perm = softmax_rows(node, x.shape)
    if int(node.attrs.get("opset", 13)) >= 13:
        moved = np.transpose(x, perm)
        rows = moved.reshape(-1, x.shape[axis])
    else:
        moved, rows = x, x.reshape(int(np.prod(x.shape[:axis])), -1)
    table = qlinear_softmax_table(np.float32(x_scale.reshape(())), rows.shape[1], signed)
    zy = int(_zero_point(y_zero_point).reshape(()))
    out = qlinear_softmax_rows(rows, table, np.float32(y_scale.reshape(())), zy, signed)
    out = out.reshape(moved.shape)
    if int(node.attrs.get("opset", 13)) >= 13:
        out = np.transpose(out, np.argsort(perm))
    return out.astype(dtype)


@int_kernel("QLinearAveragePool")
def qlinear_average_pool(node: Node, x: np.ndarray, x_scale: np.ndarray,
                         x_zero_point: np.ndarray | None, y_scale: np.ndarray,
                         y_zero_point: np.ndarray | None = None) -> np.ndarray:
    """com.microsoft QLinearAveragePool over the whole unpadded NCHW map, which ORT computes as
    the global pool (qlinear_pool.cc, `fallback_to_global`); passes/fuse_qdq.py renames such
    nodes, other windows (dequantized float sums in ORT) are refused."""
    kernel = [int(k) for k in node.attrs.get("kernel_shape", ())]
    if list(x.shape[2:]) != kernel or any(int(p) for p in node.attrs.get("pads", ())) or \
            node.attrs.get("channels_last", 0):
        raise QccError(f"QLinearAveragePool {node.name!r}: qcc runs it over the whole unpadded "
                       "NCHW map only (the global average pool)")
    return qlinear_global_average_pool(node, x, x_scale, x_zero_point, y_scale, y_zero_point)
