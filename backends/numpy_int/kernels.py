"""Integer kernels of qcc's own ops (domain `qcc`) and of the ONNX ops that are exact on codes.

The arithmetic, written down once (the C runtime mirrors it function for function):

- Accumulation is exact: products and sums of integer codes, with the zero points subtracted
  first. GEMMs run on BLAS in float32 when every partial sum is provably below 2^24 in
  magnitude, in float64 below 2^53, and are refused above that; both give the exact integer.
- `requantize(acc, M, S, zp)` = round_shift(acc · M, S) + zp, one rounding, to nearest with ties
  away from zero (qcc.core.numerics.rounding.round_shift), then saturation to the output format's
  code range [lo, hi] (counted as overflow) and the fused-ReLU clamp at the zero point (not
  counted). Fixed point has M a power of two, so requantization is a pure shift. M < 2^24 and
  |acc · M| < 2^62 is checked.
- Average pools divide the exact window sum by the window count, rounding to nearest with ties
  away from zero.
- Ops that only move or select codes (MaxPool, Reshape, Concat, ...) run their float kernels,
  which are exact on integer arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from weakref import WeakKeyDictionary

import numpy as np

from backends.numpy_int import fastpath, xnor
from backends.numpy_int.interpreter import count_overflow
from qcc.core.errors import QccError
from qcc.core.ir import Node
from qcc.core.layers import weight_rows
from qcc.core.numerics.codes import storage_dtype
from qcc.core.numerics.log_softmax import LogSoftmaxParams, integer_log_softmax_nd
from qcc.core.numerics.rounding import round_half_away
from qcc.core.numerics.softmax import SoftmaxTables, integer_softmax_nd
from qcc.core.ops import nn
from qcc.core.registry import OPS, int_kernel
from qcc.core.requant import Requant, requant_of


@dataclass(frozen=True)
class _Requant:
    """A node's Requant (qcc.core.requant) as arrays shaped for the accumulator, built once."""

    req: Requant
    multiplier: np.ndarray
    shift: np.ndarray
    half: np.ndarray  # 2^(S-1) where S > 0, else 0
    rounds: np.ndarray  # S > 0
    unit: bool  # M == 1 everywhere: a pure shift


_REQUANT: WeakKeyDictionary[Node, _Requant] = WeakKeyDictionary()


def _requant_params(node: Node, ndim: int, axis: int | None) -> _Requant:
    params = _REQUANT.get(node)
    if params is not None and params.multiplier.ndim in (0, ndim):
        return params
    req = requant_of(node).check(node)
    multiplier = _per_channel(list(req.multipliers), ndim, axis)
    shift = _per_channel(list(req.shifts), ndim, axis)
    params = _Requant(req, multiplier, shift, np.where(shift > 0, np.left_shift(
        np.int64(1), np.maximum(shift - 1, 0)), 0), shift > 0, bool(np.all(multiplier == 1)))
    _REQUANT[node] = params
    return params


def requantize(acc: np.ndarray, node: Node, axis: int | None = None) -> np.ndarray:
    """acc (int64) -> output codes by the node's Requant (qcc.core.requant); per-channel along
    `axis` when it has one multiplier and shift per channel."""
    p = _requant_params(node, acc.ndim, axis)
    req = p.req
    peak = max(-int(acc.min()), int(acc.max())) if acc.size else 0
    if peak * int(p.multiplier.max()) >= 1 << 62:
        raise QccError(f"node {node.name!r}: accumulator too large to requantize exactly")
    v = _shift_rounding(acc if p.unit else acc * p.multiplier, p.shift, p.half, p.rounds)
    if req.zero_point:
        v += req.zero_point
    # values below the zero point that a fused ReLU clamps are not overflows
    count_overflow(node.outputs[0].name, np.count_nonzero(v > req.hi) if req.relu else
                   np.count_nonzero((v > req.hi) | (v < req.lo)))
    return np.clip(v, req.floor, req.hi).astype(req.dtype)


def _per_channel(value: list[int], ndim: int, axis: int | None) -> np.ndarray:
    array = np.asarray(value if len(value) > 1 else value[0], np.int64)
    if array.ndim == 0 or axis is None:
        return array
    if np.all(array == array.flat[0]):  # one value for every channel: keep it a scalar
        return np.asarray(array.flat[0], np.int64)
    shape = [1] * ndim
    shape[axis] = -1
    return array.reshape(shape)


def _round_shift_small(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """qcc.core.numerics.rounding.round_shift (ties away from zero) for |x| < 2^62."""
    return _shift_rounding(x, s, np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)),
                                          0), s > 0)


def _shift_rounding(x: np.ndarray, s: np.ndarray, half: np.ndarray, rounds: np.ndarray
                    ) -> np.ndarray:
    """(x + 2^(s-1) − [x < 0]) >> s where s > 0 (`half`, `rounds` precomputed from s)."""
    return (x + half - ((x < 0) & rounds)) >> s


def exact_float_type(k: int, a_max: int, b_max: int, node: Node) -> np.dtype:
    """float32 or float64, whichever holds every partial sum of a length-k dot product exactly."""
    bound = k * a_max * b_max
    if bound < 1 << 24:
        return np.dtype(np.float32)
    if bound < 1 << 53:
        return np.dtype(np.float64)
    raise QccError(f"node {node.name!r}: accumulator may exceed 53 bits ({bound:.3g})")


def _centered(x: np.ndarray, zero_point: int) -> np.ndarray:
    return x.astype(np.int64) - zero_point


def _absmax(x: np.ndarray) -> int:
    return int(np.abs(x).max()) if x.size else 0


@int_kernel("QConv")
def qconv(node: Node, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Conv of codes: acc = Σ (x − zx)·w + b exactly, then `requantize` per output channel."""
    if node.attrs.get("dot") == "xnor":  # sign activations times ±1 weights: xnor.py
        return requantize(xnor.conv_acc(node, x, w, b), node, axis=1)
    plan = fastpath.dot_plan(node, x, w, b)
    if plan is not None:  # one exact float GEMM, proven by the node's bound: fastpath.py
        return fastpath.run_conv(node, plan, x, w.shape)
    return requantize(conv_accumulator(node, x, w, b), node, axis=1)


def conv_accumulator(node: Node, x: np.ndarray, w: np.ndarray, b: np.ndarray | None
                     ) -> np.ndarray:
    """QConv's exact int64 accumulator Σ (x − zx)·w + b, before requantization."""
    xc = _centered(x, int(node.attrs.get("x_zero_point", 0)))
    acc = _exact_conv(node, xc, w)
    if b is not None:
        acc += b.astype(np.int64).reshape((1, -1) + (1,) * (acc.ndim - 2))
    return acc


def _exact_conv(node: Node, xc: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Σ xc·w exactly, as int64. A float32 conv is exact while every partial sum stays below
    2^24; when the whole dot product may not, an ungrouped conv is split into slices of input
    channels that each can, and their exact int64 results are added (float32 BLAS is about twice
    as fast as float64)."""
    taps = int(np.prod(w.shape[2:]))
    x_max, w_max = _absmax(xc), _absmax(w)
    ft = exact_float_type(int(np.prod(w.shape[1:])), x_max, w_max, node)
    per_channel = taps * x_max * w_max
    slice_channels = (1 << 24) // per_channel if per_channel else w.shape[1]
    if ft == np.float32 or int(node.attrs.get("group", 1)) != 1 or slice_channels < 8:
        return nn.conv(node, xc.astype(ft), w.astype(ft)).astype(np.int64)
    xf, wf = xc.astype(np.float32), w.astype(np.float32)
    acc = None
    for c in range(0, w.shape[1], slice_channels):
        part = nn.conv(node, xf[:, c:c + slice_channels], wf[:, c:c + slice_channels])
        acc = part.astype(np.int64) if acc is None else acc + part.astype(np.int64)
    return acc


@int_kernel("QGemm")
def qgemm(node: Node, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """x (N, K) times W (K, M), or W (M, K) with transB: exact, then per-column `requantize`."""
    if node.attrs.get("dot") == "xnor":  # sign activations times ±1 weights: xnor.py
        return requantize(xnor.gemm_acc(node, x, w, b), node, axis=x.ndim - 1)
    plan = fastpath.dot_plan(node, x, w, b)
    if plan is not None:  # one exact float GEMM, proven by the node's bound: fastpath.py
        return fastpath.run_gemm(node, plan, x)
    acc = gemm_accumulator(node, x, w, b)
    return requantize(acc, node, axis=acc.ndim - 1)


def gemm_accumulator(node: Node, x: np.ndarray, w: np.ndarray, b: np.ndarray | None
                     ) -> np.ndarray:
    """QGemm's exact int64 accumulator (x − zx)·W + b, before requantization."""
    xc = _centered(x, int(node.attrs.get("x_zero_point", 0)))
    wt = weight_rows(node, w).T  # (K, M)
    ft = exact_float_type(wt.shape[0], _absmax(xc), _absmax(wt), node)
    acc = (xc.astype(ft) @ wt.astype(ft)).astype(np.int64)  # exact integers: no rounding
    if b is not None:
        acc += b.astype(np.int64)
    return acc


@int_kernel("Requantize", "QAdd")
def rescale_sum(node: Node, *xs: np.ndarray) -> np.ndarray:
    """Σ_i (x_i − z_i)·M_i, then round_shift by S and the output zero point (no other multiplier).

    Requantize is the one-input case; QAdd adds two tensors given in different formats.
    """
    codes = fastpath.run_sum(node, xs)  # exact in one float type where the bound allows
    if codes is not None:
        return codes
    zero_points = node.attrs.get("zero_points", [0] * len(xs))
    multipliers = node.attrs["multipliers"]
    total = sum(_centered(x, z) * int(m) for x, z, m in zip(xs, zero_points, multipliers))
    return requantize(np.asarray(total, dtype=np.int64), node)  # M = 1: the input multipliers


@int_kernel("QSoftmax")
def qsoftmax(node: Node, x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Softmax of codes by exp tables and one integer division (qcc.core.numerics.softmax)."""
    a = node.attrs
    lo, hi = int(a["out_lo"]), int(a["out_hi"])
    tables = SoftmaxTables(low.astype(np.int64), high.astype(np.int64), int(a["out_frac_bits"]),
                           int(a["out_zero_point"]), *_bits_of(lo, hi))
    out = integer_softmax_nd(x, tables, int(a["axis"]), bool(a.get("flatten", 0)))
    return out.astype(storage_dtype(lo, hi))


@int_kernel("QLogSoftmax")
def qlog_softmax(node: Node, x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """LogSoftmax of codes by exp tables and an integer log2 (qcc.core.numerics.log_softmax)."""
    a = node.attrs
    lo, hi = int(a["out_lo"]), int(a["out_hi"])
    params = LogSoftmaxParams(low.astype(np.int64), high.astype(np.int64), int(a["diff_mult"]),
                              int(a["log_mult"]), int(a["d_cap"]), int(a["out_zero_point"]), lo,
                              hi)
    out = integer_log_softmax_nd(x, params, int(a["axis"]), bool(a.get("flatten", 0)))
    return out.astype(storage_dtype(lo, hi))


def _bits_of(lo: int, hi: int) -> tuple[int, bool]:
    """(bits, signed) of the code range [lo, hi] of a two's complement or unsigned format."""
    return (hi - lo + 1).bit_length() - 1, lo < 0


@int_kernel("Quantize")
def quantize(node: Node, x: np.ndarray) -> np.ndarray:
    """Float -> codes at the graph input: round(x / scale) + zp, ties away from zero, saturated;
    with `perm`, written in that axis order (an NHWC input's Transpose folded in)."""
    a = node.attrs
    if "perm" in a:
        x = np.ascontiguousarray(np.transpose(x, [int(p) for p in a["perm"]]))
    v = round_half_away(x.astype(np.float64) / float(a["scale"]))
    zero_point = int(a.get("out_zero_point", 0))
    if zero_point:
        v += zero_point
    lo, hi = int(a["out_lo"]), int(a["out_hi"])
    if v.size and (v.min() < lo or v.max() > hi):  # NaN never gets here: qcc.driver.io refuses it
        count_overflow(node.outputs[0].name, np.count_nonzero((v < lo) | (v > hi)))
    codes = np.empty(v.shape, storage_dtype(lo, hi))
    np.clip(v, lo, hi, out=codes, casting="unsafe")  # exact: v is integral
    return codes


@int_kernel("Dequantize")
def dequantize(node: Node, codes: np.ndarray) -> np.ndarray:
    """Codes -> float32 at the graph output: (c − zp) · scale."""
    scale = np.float64(node.attrs["scale"])
    return (_centered(codes, int(node.attrs.get("zero_point", 0))) * scale).astype(np.float32)


@int_kernel("AveragePool")
def average_pool(node: Node, x: np.ndarray) -> np.ndarray:
    """Exact window sums divided by the window counts, to nearest with ties away from zero."""
    win = nn.pool_window(node, x)
    xp = win.pad(x.astype(np.int64))
    total = sum(xp[(..., *sl)] for sl in win.taps())
    counts = nn.window_counts(win, bool(node.attrs.get("count_include_pad", 0)))
    return divide_round(total, counts).astype(x.dtype)


@int_kernel("GlobalAveragePool")
def global_average_pool(node: Node, x: np.ndarray) -> np.ndarray:
    """Exact sums over each channel's plane divided by its size, as `average_pool` rounds."""
    axes = tuple(range(2, x.ndim))
    total = x.sum(axis=axes, keepdims=True, dtype=np.int64)
    counts = np.int64(np.prod([x.shape[i] for i in axes]))
    return divide_round(total, counts).astype(x.dtype)


@int_kernel("QAveragePool")
def qaverage_pool(node: Node, x: np.ndarray) -> np.ndarray:
    """Exact window sums of x − x_zero_point (padding counts as real 0, i.e. the zero point),
    requantized once to the output format (qcc.core.ops.integer: every window counts n taps,
    which passes/quantize_graph checked and the multiplier includes)."""
    win = nn.pool_window(node, x)
    centred = x.astype(np.int64) - int(node.attrs.get("x_zero_point", 0))
    xp = win.pad(centred)
    total = sum(xp[(..., *sl)] for sl in win.taps())
    return requantize(total, node)


def divide_round(total: np.ndarray, count: np.ndarray | np.int64) -> np.ndarray:
    """total / count for positive counts, to nearest, ties away from zero, in integers only."""
    magnitude = (2 * np.abs(total) + count) // (2 * count)
    return np.where(total < 0, -magnitude, magnitude)


def _register_code_preserving() -> None:
    """Ops that only move codes (OpDef.moves_codes) run their float kernels on codes."""
    for entry in OPS.values():
        if entry.moves_codes and entry.kernel is not None and entry.int_kernel is None:
            entry.int_kernel = entry.kernel


_register_code_preserving()
