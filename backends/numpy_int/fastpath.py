"""Fast exact paths of the QConv, QGemm and QAdd / Requantize kernels (kernels.py).

kernels.py defines the arithmetic in int64: t = (Σ (x − zx)·w + b)·M, then
v = round_shift(t, S) + zp (to nearest, ties away from zero), saturated to [lo, hi] (counted)
and clamped at the fused-ReLU floor. The paths here give the same codes and counts bit for bit
with one BLAS GEMM and a few in-place passes in one float type. A node takes them only when a
bound fixed once per node, from its input's code range and its constants, proves every
intermediate exact; otherwise kernels.py runs its int64 path (tests/backends/test_fastpath.py
compares the two with hypothesis, at the edges of the ranges too):

- Bound. |x − zx| <= X for every code of x's storage type. Every partial sum of
  Σ_k w[m, k]·(x − zx)[k], in any order and blocking (BLAS, FMA), is at most X·‖w_m‖₁ (the
  row's L1 norm): far below K·X·max|w| when the weights are spread, as trained weights are.
  With the terms the requantization adds, B_m = (X·‖w_m‖₁ + |b_m|)·M_m + 2^(S_m−1) + |zp|·2^S_m.
  Floats hold every integer below 2^24 (float32) or 2^53 (float64), so the sums are exact in
  float32 when max B_m < 2^24, in float64 below 2^53. Scaling by a power of two is exact, so
  M_m·2^−S_m is folded into the weights (QAdd: into its input multipliers).
- The per-channel offset below is one more weight column against a row of ones in the patch
  matrix: the GEMM adds it, and its partial sums are still sums of terms B_m counts.
- ReLU form (a fused ReLU, lo <= zp <= hi): y = t·2^−S + 2^(S−1)·2^−S + zp (the rounding half
  and the zero point in one per-channel offset) and codes = floor(clip(y, floor, hi)). For
  t >= 0, floor(y) = round_shift(t, S) + zp; for t < 0 both are <= zp <= floor, so both clamp to
  the floor and neither counts. Saturated: y >= hi + 1.
- General form: y = t + 2^(S−1) + zp·2^S; y −= [y < 2^(S−1) + zp·2^S] (that is, [t < 0]) where
  S > 0; then floor(y·2^−S) = round_shift(t, S) + zp; saturated where outside [lo, hi].
- The clamped y is integral (or >= 0 in the ReLU form), so the cast to the storage type, which
  truncates, is the floor; the im2col copy converts the codes to floats on the way, exactly.

Plans (float weights in the GEMM layout, requantization constants) are built on a node's first
run and kept while its weight and bias arrays are the same objects (a new array, as training
writes, builds a new plan; editing a constant array in place is not noticed). Each thread has
one scratch block per use (padded input, patch matrix, GEMM output) that all convs share.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

import numpy as np

from backends.numpy_int.interpreter import count_overflow
from qcc.core.ir import Node
from qcc.core.layers import is_conv, weight_rows
from qcc.core.ops import nn
from qcc.core.requant import Requant, requant_of

EXACT_BELOW = {np.dtype(np.float32): 1 << 24, np.dtype(np.float64): 1 << 53}


# -- requantization of a float accumulator -------------------------------------------------
@dataclass(frozen=True)
class Rescale:
    """Requantization of y = acc·`scale` (the scale already folded into the weights), in place.

    Arrays broadcast against y (per channel along one axis, or scalars)."""

    scale: np.ndarray  # (C,) float64: M·2^−S (ReLU form) or M (general form)
    offset: np.ndarray | None  # added to y first; None when the GEMM adds it (a ones row)
    threshold: np.ndarray | None  # general form with rounding: y < threshold <=> t < 0
    post: np.ndarray | None  # 2^−S, general form with rounding
    floor: int  # lowest code: lo, or the zero point under a fused ReLU
    hi: int
    lo: int | None  # saturations below lo are counted (no fused ReLU)
    relu_form: bool
    dtype: np.dtype  # the output storage type

    def channel_offsets(self, channels: int) -> np.ndarray:
        """The offset per channel, (C,), for a GEMM that adds it as a weight column."""
        return np.broadcast_to(np.asarray(self.offset).reshape(-1), (channels,))

    def apply(self, y: np.ndarray, view: np.ndarray) -> tuple[np.ndarray, int]:
        """Requantize y in place; returns the codes of `view` (y or a view of it) and the
        number of saturated elements in it."""
        if self.offset is not None:
            y += self.offset
        if self.threshold is not None:
            np.subtract(y, y < self.threshold, out=y)
            y *= self.post
            np.floor(y, out=y)
        elif self.relu_form and self.floor < 0:  # trunc (the cast below) is floor only for y >= 0
            np.floor(y, out=y)
        # codes above hi: y >= hi + 1 (ReLU form: floor(y) > hi; general form: y is integral)
        saturated = 0
        if y.size and y.max() >= self.hi + 1:
            saturated += int(np.count_nonzero(view >= self.hi + 1))
        if self.lo is not None and y.size and y.min() < self.lo:
            saturated += int(np.count_nonzero(view < self.lo))
        codes = np.empty(view.shape, self.dtype)
        np.clip(view, self.floor, self.hi, out=codes, casting="unsafe")  # exact: integral or >= 0
        return codes, saturated


def build_rescale(req: Requant, acc_bound: list[int], bias: list[int], shape: tuple[int, ...]
                  ) -> tuple[Rescale, np.dtype] | None:
    """The Rescale of a node's Requant (qcc.core.requant) for accumulators bounded per channel
    by `acc_bound` (before the integer `bias`), with its float type; None when no float type is
    exact or the constants are out of the int64 path's range (that path then runs, and refuses
    what it must)."""
    channels = len(acc_bound)
    found = req.per_channel(channels)
    if found is None or not req.valid:
        return None
    multiplier, shift = found
    zp, relu, lo, hi, dtype = req.zero_point, req.relu, req.lo, req.hi, req.dtype
    halves = [(1 << s) >> 1 for s in shift]
    bound = max((a + abs(b)) * m + h + (abs(zp) << s)
                for a, b, m, h, s in zip(acc_bound, bias, multiplier, halves, shift))
    ft = next((t for t, limit in EXACT_BELOW.items() if bound < limit), None)
    if ft is None:
        return None
    floor = req.floor
    if relu and lo <= zp <= hi:  # the ReLU form: the half and zp in the offset, scale M·2^−S
        scale = [math.ldexp(m, -s) for m, s in zip(multiplier, shift)]
        offset = [math.ldexp(b * m + h + (zp << s), -s)
                  for b, m, h, s in zip(bias, multiplier, halves, shift)]
        return Rescale(np.array(scale), _constant(offset, shape, ft), None, None, floor, hi,
                       None, True, dtype), ft
    # the general form: zp·2^S joins the offset, floor((y + zp·2^S)·2^−S) = floor(y·2^−S) + zp
    rounds = max(shift) > 0
    offset = [b * m + h + (zp << s) for b, m, h, s in zip(bias, multiplier, halves, shift)]
    threshold = [h + (zp << s) if s > 0 else -math.inf
                 for h, s in zip(halves, shift)]
    post = [math.ldexp(1.0, -s) for s in shift]
    return Rescale(np.array(multiplier, np.float64), _constant(offset, shape, ft),
                   _constant(threshold, shape, ft) if rounds else None,
                   _constant(post, shape, ft) if rounds else None, floor, hi,
                   None if relu else lo, False, dtype), ft


def _constant(values: list[float], shape: tuple[int, ...], ft: np.dtype) -> np.ndarray:
    """Per-channel constants shaped to broadcast against y; a scalar when all are equal."""
    if all(v == values[0] for v in values):
        return np.asarray(values[0], ft)
    return np.asarray(values, ft).reshape(shape)


def input_bound(dtype: np.dtype, zero_point: int) -> int | None:
    """max |x − zero_point| over the codes of an integer storage type (None otherwise)."""
    if dtype.kind not in "iu":
        return None
    info = np.iinfo(dtype)
    return max(int(info.max) - zero_point, zero_point - int(info.min))


# -- QConv / QGemm ---------------------------------------------------------------------------
@dataclass
class _Dot:
    """One QConv or QGemm node's plan: scaled float weights, their offset column, the Rescale."""

    weights: np.ndarray  # conv: (G, Mg, Cg·K + 1); gemm: (K + 1, M); the exact float type
    x_zero_point: int
    rescale: Rescale  # its offset is the weights' last column (conv) or row (gemm)
    conv_geometry: dict[tuple[int, ...], tuple] = field(default_factory=dict)  # per x shape


# per node: (weight, bias, x dtype) the plan was built for, and the plan (None: int64 path)
_DOTS: WeakKeyDictionary[Node, tuple] = WeakKeyDictionary()


def dot_plan(node: Node, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> _Dot | None:
    """The node's plan for these weight and bias arrays (None: the int64 path must run)."""
    cached = _DOTS.get(node)
    if cached is None or cached[0] is not w or cached[1] is not b or cached[2] != x.dtype:
        cached = (w, b, x.dtype, _build_dot(node, x, w, b))
        _DOTS[node] = cached
    return cached[3]


def _build_dot(node: Node, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> _Dot | None:
    zx = int(node.attrs.get("x_zero_point", 0))
    bound = input_bound(x.dtype, zx)
    if bound is None or w.dtype.kind not in "iu" or (b is not None and b.dtype.kind not in "iu"):
        return None
    conv = is_conv(node)
    rows = weight_rows(node, w).astype(np.int64)  # (M, K)
    bias = [0] * rows.shape[0] if b is None else [int(v) for v in np.asarray(b).reshape(-1)]
    if len(bias) != rows.shape[0]:
        return None
    norms = np.abs(rows).sum(axis=1)
    found = build_rescale(requant_of(node), [bound * int(n) for n in norms], bias,
                          (-1, 1) if conv else (-1,))
    if found is None:
        return None
    rescale, ft = found
    # the offset rides in the GEMM as one more weight column against a row of ones: every
    # partial sum is still a sum of terms the bound counts, so it stays exact
    scaled = np.concatenate([rows.astype(np.float64) * rescale.scale[:, None],
                             rescale.channel_offsets(rows.shape[0])[:, None]], axis=1)
    scaled = scaled.astype(ft)  # exact: multiples of 2^−S below the float type's bound
    rescale = dataclasses.replace(rescale, offset=None)
    if conv:
        groups = int(node.attrs.get("group", 1))
        per_group = scaled[:, :-1].reshape(groups, rows.shape[0] // groups, -1)
        offsets = scaled[:, -1].reshape(groups, -1, 1)
        return _Dot(np.concatenate([per_group, offsets], axis=2), zx, rescale)
    return _Dot(np.ascontiguousarray(scaled.T), zx, rescale)


def run_gemm(node: Node, plan: _Dot, x: np.ndarray) -> np.ndarray:
    """QGemm codes: [x − zx, 1] @ W', requantized along the last axis."""
    k = x.shape[-1]
    xf = np.empty((*x.shape[:-1], k + 1), plan.weights.dtype)
    xf[..., k] = 1
    np.copyto(xf[..., :k], x, casting="unsafe")  # exact: codes are far below 2^24
    if plan.x_zero_point:
        xf[..., :k] -= plan.x_zero_point
    y = xf @ plan.weights
    codes, saturated = plan.rescale.apply(y, y)
    count_overflow(node.outputs[0].name, saturated)
    return codes


def run_conv(node: Node, plan: _Dot, x: np.ndarray, w_shape: tuple[int, ...]) -> np.ndarray:
    """QConv codes: im2col over a zero-padded channel-major buffer (qcc.core.ops.nn's ConvPlan) with
    a row of ones, one GEMM per group, requantized per output channel; in chunks of images
    whose patch matrix stays near nn.CHUNK_BYTES, as the float Conv runs."""
    chunk, whole, win = _conv_geometry(node, plan, x.shape, w_shape)
    n = x.shape[0]
    if chunk >= n:
        codes, saturated = _conv_chunk(plan, x, whole)
    else:
        codes = np.empty((n, w_shape[0], *win.out_spatial), dtype=plan.rescale.dtype)
        saturated = 0
        for start in range(0, n, chunk):
            part = x[start:start + chunk]
            cplan = nn.conv_plan(part.shape, w_shape, whole.groups, win, nn.FLAT_WASTE_LIMIT)
            codes[start:start + chunk], count = _conv_chunk(plan, part, cplan)
            saturated += count
    count_overflow(node.outputs[0].name, saturated)
    return codes


def _conv_geometry(node: Node, plan: _Dot, x_shape: tuple[int, ...], w_shape: tuple[int, ...]
                   ) -> tuple:
    """(images per chunk, the ConvPlan of the whole batch, the Window), cached per x shape."""
    found = plan.conv_geometry.get(x_shape)
    if found is None:
        groups = plan.weights.shape[0]
        win = nn.conv_window(node, x_shape, w_shape)
        one = nn.conv_plan((1, *x_shape[1:]), w_shape, groups, win, nn.FLAT_WASTE_LIMIT)
        chunk = max(1, nn.CHUNK_BYTES // (math.prod(one.cols_shape) * plan.weights.itemsize))
        whole = nn.conv_plan(x_shape, w_shape, groups, win, nn.FLAT_WASTE_LIMIT)
        found = plan.conv_geometry[x_shape] = (chunk, whole, win)
    return found


def _conv_chunk(plan: _Dot, x: np.ndarray, cplan: nn.ConvPlan) -> tuple[np.ndarray, int]:
    g, mg, rows = plan.weights.shape[0], plan.weights.shape[1], plan.weights.shape[2] - 1
    ft = plan.weights.dtype
    cols = _SCRATCH.take("cols", ft, (g, rows + 1, cplan.length))
    cols[:, rows] = 1  # against the weights' offset column
    split = (g, cplan.cols_shape[0] // g, *cplan.cols_shape[1:])  # (G, Cg, *kernel, ...)
    patches = nn.patch_view(_channel_major(plan, x, cplan), cplan).reshape(split)
    # the im2col copy, converting codes to floats on the way (exact: |code| < 2^24)
    np.copyto(np.reshape(cols[:, :rows], split, copy=False), patches, casting="unsafe")
    y = nn.grouped_matmul(plan.weights, cols, out=_SCRATCH.take("y", ft, (g, mg, cplan.length)))
    return plan.rescale.apply(y, nn.gemm_output(y, cplan))


class _Scratch(threading.local):
    """One thread's work memory, shared by all the convolutions it runs (padded input, patch
    matrix, GEMM output): one block per use, as large as the largest conv so far. Measured
    2-4 % faster than fresh arrays per node (allocation, page faults), with memory bounded by
    the largest conv rather than held per node."""

    def __init__(self) -> None:
        self.blocks: dict[tuple[str, np.dtype], np.ndarray] = {}

    def take(self, use: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialised C-contiguous array of `shape`, valid until the next take(use)."""
        size = math.prod(shape)
        block = self.blocks.get((use, dtype))
        if block is None or block.size < size:
            block = self.blocks[(use, dtype)] = np.empty(size, dtype)
        return block[:size].reshape(shape)


_SCRATCH = _Scratch()


def _channel_major(plan: _Dot, x: np.ndarray, cplan: nn.ConvPlan) -> np.ndarray:
    """The zero-padded C-contiguous (C, N, *padded) buffer im2col reads: the codes themselves
    (their storage type) when zx is 0, else x − zx in the plan's float type."""
    win = cplan.win
    if not (win.has_padding or plan.x_zero_point or cplan.buf_shape[1] > 1):
        return np.ascontiguousarray(x.reshape(cplan.buf_shape))  # one image: x itself
    buf = _SCRATCH.take("padded", plan.weights.dtype if plan.x_zero_point else x.dtype,
                        cplan.buf_shape)
    if win.has_padding:
        buf.fill(0)
    inner = buf[(slice(None), slice(None), *win.inner())]
    np.copyto(inner, x.swapaxes(0, 1), casting="unsafe")
    if plan.x_zero_point:
        inner -= plan.x_zero_point
    return buf


# -- QAdd / Requantize -------------------------------------------------------------------------
@dataclass
class _Sum:
    """A QAdd / Requantize node's plan: input multipliers with the scale folded in."""

    factors: tuple[np.ndarray, ...]  # M_i·scale, in the exact float type
    rescale: Rescale


_SUMS: WeakKeyDictionary[Node, tuple[tuple, _Sum | None]] = WeakKeyDictionary()


def run_sum(node: Node, xs: tuple[np.ndarray, ...]) -> np.ndarray | None:
    """Σ_i (x_i − z_i)·M_i requantized by the node's attributes, or None when the int64 path
    must run (inputs of different shapes, no exact float type)."""
    if any(x.shape != xs[0].shape for x in xs):
        return None
    key = tuple(x.dtype for x in xs)
    cached = _SUMS.get(node)
    if cached is None or cached[0] != key:
        cached = (key, _build_sum(node, key))
        _SUMS[node] = cached
    plan = cached[1]
    if plan is None:
        return None
    y = np.multiply(xs[0], plan.factors[0], dtype=plan.factors[0].dtype)
    for x, factor in zip(xs[1:], plan.factors[1:]):
        y += np.multiply(x, factor, dtype=factor.dtype)
    codes, saturated = plan.rescale.apply(y, y)
    count_overflow(node.outputs[0].name, saturated)
    return codes


def _build_sum(node: Node, dtypes: tuple[np.dtype, ...]) -> _Sum | None:
    a = node.attrs
    zero_points = [int(z) for z in a.get("zero_points", [0] * len(dtypes))]
    multipliers = [int(m) for m in a["multipliers"]]
    ranges = [input_bound(d, 0) for d in dtypes]
    if None in ranges or len(multipliers) != len(dtypes) or len(zero_points) != len(dtypes):
        return None
    # the raw codes are summed (each partial sum <= Σ r_i·M_i), the zero points come in the
    # bias; the node's Requant has M = 1 (qcc.core.requant)
    found = build_rescale(requant_of(node),
                          [sum(r * abs(m) for r, m in zip(ranges, multipliers))],
                          [-sum(z * m for z, m in zip(zero_points, multipliers))], ())
    if found is None:
        return None
    rescale, ft = found
    factors = tuple(np.asarray(m * rescale.scale[0], ft) for m in multipliers)
    return _Sum(factors, rescale)
