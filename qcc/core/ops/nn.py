"""Weighted and windowed ops: Conv, Gemm, MatMul, pools, normalisations, Dropout.

Float reference kernels in vectorised NumPy, written for speed as well as clarity, because the
float interpreter is what the precision search runs many times:

- Conv is im2col + one BLAS sgemm per group (float32 throughout). The input is padded once into
  a channel-major buffer (C, N, *padded); the patch matrix (C·K, L) is one copy of a strided
  view of it. Stride-1 convs mostly use the "flat shift" form, where each patch row is one
  contiguous run of the flattened buffer (see `ConvPlan`); unpadded 1x1 convs copy nothing.
  Depthwise convs skip the GEMM and accumulate K scaled taps.
- Pools reduce over the K strided tap views with in-place np.maximum / np.add, never a Python
  loop over windows.

`Window` (pads, strides, dilations, auto_pad, ceil_mode resolved into taps over a padded input)
is the one window geometry of qcc: the VJPs (grads.py) and the backends read it too.
Geometry and plans are cached per shape (functools.lru_cache): the interpreter runs the same
few shapes many times, and at CIFAR sizes the Python around the GEMMs is a real cost.
Formulas and attribute semantics are the ONNX operator specs; where onnxruntime departs from
them (auto_pad with dilations or ceil_mode, Dropout masks before opset 12) qcc follows the spec.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from qcc.core.errors import QccError
from qcc.core.ir import Node
from qcc.core.registry import float_kernel

# Above this many wasted multiply-adds per useful one (times output channels per group), the
# flat-shift conv loses to the strided im2col copy: measured on 3x3 convs of 8x8 to 32x32 maps,
# flat wins at Mg·waste <= 3.9 and loses from 7.5 on (single-thread OpenBLAS, AVX-512).
FLAT_WASTE_LIMIT = 5.0
# Batches are convolved in chunks whose patch matrix stays near this size (about one L2 cache):
# a (16, 144) x (144, 64·1086) GEMM whose operand streams from DRAM runs 2x slower than 64
# cache-resident ones. Batch-64 ResNet-8 / ConvNet ran fastest with 512 KiB - 1 MiB chunks.
CHUNK_BYTES = 1024 * 1024


# -- window geometry ----------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """Where the taps of a Conv or pool read the input, per spatial axis.

    `pads_end` holds the explicit end padding plus any extra room the last window needs in
    ceil_mode (`room`); AveragePool never counts the extra room.
    """

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    room: tuple[int, ...]
    in_spatial: tuple[int, ...]
    out_spatial: tuple[int, ...]

    @property
    def padded(self) -> tuple[int, ...]:
        return tuple(b + i + e + r for b, i, e, r in
                     zip(self.pads_begin, self.in_spatial, self.pads_end, self.room))

    @property
    def has_padding(self) -> bool:
        return any(self.pads_begin) or any(self.pads_end) or any(self.room)

    def taps(self) -> Iterator[tuple[slice, ...]]:
        """Per kernel tap (row-major, the weight layout): its strided slice of the padded input."""
        for tap in itertools.product(*(range(k) for k in self.kernel)):
            yield tuple(slice(t * d, t * d + s * (o - 1) + 1, s) for t, d, s, o in
                        zip(tap, self.dilations, self.strides, self.out_spatial))

    def tap_offsets(self) -> Iterator[tuple[int, ...]]:
        """Per kernel tap: its offset (in input coordinates, before padding) from a window start."""
        for tap in itertools.product(*(range(k) for k in self.kernel)):
            yield tuple(t * d for t, d in zip(tap, self.dilations))

    def pad(self, x: np.ndarray, value: float | int = 0) -> np.ndarray:
        """x (..., *in_spatial) padded with `value` to (..., *padded); x itself when there is no
        padding (callers only read the result)."""
        if not self.has_padding:
            return x
        xp = np.full(x.shape[:x.ndim - len(self.kernel)] + self.padded, value, dtype=x.dtype)
        xp[(..., *self.inner())] = x
        return xp

    def crop(self, xp: np.ndarray) -> np.ndarray:
        """The inverse of `pad`: the part of a (..., *padded) array that covers the input."""
        return xp[(..., *self.inner())]

    def inner(self) -> tuple[slice, ...]:
        """Where the input lies in the padded grid."""
        return tuple(slice(b, b + i) for b, i in zip(self.pads_begin, self.in_spatial))


def conv_window(node: Node, x_shape: tuple[int, ...], w_shape: tuple[int, ...]) -> Window:
    """The window of a Conv with input shape x_shape and weight shape w_shape."""
    kernel = tuple(int(k) for k in node.attrs.get("kernel_shape", w_shape[2:]))
    return window(node, tuple(x_shape[2:]), kernel)


def pool_window(node: Node, x: np.ndarray) -> Window:
    """The window of a MaxPool or AveragePool over x (N, C, *spatial)."""
    kernel = tuple(int(k) for k in node.attrs["kernel_shape"])
    if len(kernel) != x.ndim - 2:
        raise QccError(f"{node.op_type} {node.name!r}: kernel_shape {list(kernel)} does not "
                       f"match input rank {x.ndim}")
    return window(node, x.shape[2:], kernel, bool(node.attrs.get("ceil_mode", 0)))


def window(node: Node, in_spatial: tuple[int, ...], kernel: tuple[int, ...],
           ceil_mode: bool = False) -> Window:
    """Resolve strides, dilations, pads and auto_pad of a Conv/pool node (ONNX Conv/Pool spec)."""
    nd = len(kernel)
    attrs = node.attrs
    try:  # plain tuples of the attribute values: cheap to build and to hash for the cache
        return _window(tuple(in_spatial), tuple(kernel),
                       tuple(attrs.get("strides") or (1,) * nd),
                       tuple(attrs.get("dilations") or (1,) * nd),
                       tuple(attrs.get("pads") or (0,) * (2 * nd)),
                       attrs.get("auto_pad", "NOTSET"), ceil_mode)
    except ValueError as e:
        raise QccError(f"{node.op_type} {node.name!r}: {e}") from None


@functools.lru_cache(maxsize=1024)  # the interpreter asks for the same few geometries every run
def _window(in_spatial: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...],
            dilations: tuple[int, ...], pads: tuple[int, ...], auto_pad: str,
            ceil_mode: bool) -> Window:
    nd = len(kernel)
    reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]  # dilated kernel extent
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [-(-i // s) for i, s in zip(in_spatial, strides)]
        total = [max((o - 1) * s + r - i, 0)
                 for o, s, r, i in zip(out, strides, reach, in_spatial)]
        # SAME_UPPER puts the odd padding element at the end, SAME_LOWER at the beginning
        begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
        end = [t - b for t, b in zip(total, begin)]
    elif auto_pad == "VALID":
        begin, end = [0] * nd, [0] * nd
        out = [(i - r) // s + 1 for i, r, s in zip(in_spatial, reach, strides)]
    elif auto_pad in ("NOTSET", ""):
        begin, end = list(pads[:nd]), list(pads[nd:])
        out = [_out_size(i + b + e, r, s, ceil_mode, i + b)
               for i, b, e, r, s in zip(in_spatial, begin, end, reach, strides)]
    else:
        raise ValueError(f"unknown auto_pad {auto_pad!r}")
    if any(o <= 0 for o in out):
        raise ValueError(f"kernel {list(kernel)} does not fit the input {list(in_spatial)} "
                         f"with pads {begin + end}")
    # ceil_mode: the last window may run past the end padding; give it room to read
    room = [max((o - 1) * s + r - (b + i + e), 0)
            for o, s, r, b, i, e in zip(out, strides, reach, begin, in_spatial, end)]
    return Window(kernel, strides, dilations, tuple(begin), tuple(end), tuple(room),
                  in_spatial, tuple(out))


def _out_size(padded: int, reach: int, stride: int, ceil_mode: bool, last_start: int) -> int:
    if not ceil_mode:
        return (padded - reach) // stride + 1
    out = -(-(padded - reach) // stride) + 1
    # a window that would start inside the end padding is dropped (ONNX pool spec, onnxruntime)
    return out - 1 if (out - 1) * stride >= last_start else out


def window_counts(win: Window, include_pad: bool) -> np.ndarray:
    """How many taps of each window land on counted positions (the input, plus the explicit
    padding when `include_pad`; never the ceil_mode room), shaped (1, 1, *out)."""
    if not win.has_padding or (include_pad and not any(win.room)):
        return np.full((1, 1) + win.out_spatial, math.prod(win.kernel), np.int64)
    counted = np.zeros((1, 1) + win.padded, np.int64)
    if include_pad:
        region = tuple(slice(0, b + i + e) for b, i, e in
                       zip(win.pads_begin, win.in_spatial, win.pads_end))
    else:
        region = win.inner()
    counted[(..., *region)] = 1
    return sum(counted[(..., *sl)] for sl in win.taps())


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """float32 and float64 compute in place; half types (no BLAS) compute in float32."""
    return np.dtype(dtype) if dtype in (np.float32, np.float64) else np.dtype(np.float32)


# -- Conv ------------------------------------------------------------------------------------
@float_kernel("Conv")
def conv(node: Node, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Y[n, m, o] = B[m] + sum over c in m's group, taps k of W[m, c, k] · X_pad[n, c, s·o + d·k].

    Strides s, dilations d; X_pad is X padded with zeros per pads/auto_pad.
    """
    groups = int(node.attrs.get("group", 1))
    if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
        raise QccError(f"Conv {node.name!r}: input channels {x.shape[1]}, weight {w.shape} and "
                       f"group {groups} do not agree")
    win = conv_window(node, x.shape, w.shape)
    dtype = x.dtype
    ct = _compute_dtype(dtype)
    x, w = x.astype(ct, copy=False), w.astype(ct, copy=False)
    bias = None if b is None else b.astype(ct, copy=False).reshape((-1,) + (1,) * len(win.kernel))
    if groups == x.shape[1] and w.shape[0] == groups:
        y = _conv_depthwise(x, w, win, bias)
    else:
        y = _conv_batched(x, w, groups, win, bias)
    return y.astype(dtype, copy=False)


def _conv_batched(x: np.ndarray, w: np.ndarray, groups: int, win: Window,
                  bias: np.ndarray | None) -> np.ndarray:
    """Run the batch through `_conv_gemm` in chunks of images whose patch matrix fits a cache."""
    n = x.shape[0]
    one = conv_plan((1, *x.shape[1:]), w.shape, groups, win, FLAT_WASTE_LIMIT)
    chunk = max(1, CHUNK_BYTES // (math.prod(one.cols_shape) * x.itemsize))
    if chunk >= n:
        return _conv_gemm(x, w, conv_plan(x.shape, w.shape, groups, win, FLAT_WASTE_LIMIT), bias)
    y = np.empty((n, w.shape[0], *win.out_spatial), dtype=x.dtype)
    for start in range(0, n, chunk):
        part = x[start:start + chunk]
        plan = conv_plan(part.shape, w.shape, groups, win, FLAT_WASTE_LIMIT)
        _add_bias(_conv_gemm(part, w, plan, None), bias, out=y[start:start + chunk])
    return y


@dataclass(frozen=True)
class ConvPlan:
    """How one Conv shape runs as im2col + GEMM; strides are in elements, not bytes.

    The input is copied once into a zero-padded channel-major buffer (C, N, *padded). The patch
    matrix is a strided view of that buffer (`cols_shape`, `cols_strides`), reshaped to
    (G, Cg·K, L) - the im2col copy. The GEMM result (M, L) is read back as (N, M, *out) through
    `out_strides`.

    flat (stride 1 only): column q of the patch matrix is the flat position q of the padded
    (N, *padded) grid, so tap k reads the contiguous run buf_flat[c, off_k : off_k + L] and the
    copy is a few long memcpys (none at all for an unpadded 1x1 kernel). Positions whose window
    wraps past a row end are computed and skipped by `out_strides`.
    strided: column q is one output position (N·P columns), tap k a strided slice per row.
    """

    flat: bool
    win: Window
    groups: int
    buf_shape: tuple[int, ...]
    cols_shape: tuple[int, ...]
    cols_strides: tuple[int, ...]
    length: int  # L, columns of the patch matrix
    out_shape: tuple[int, ...]
    out_strides: tuple[int, ...]


@functools.lru_cache(maxsize=1024)  # the interpreter runs the same few shapes over and over
def conv_plan(x_shape: tuple[int, ...], w_shape: tuple[int, ...], groups: int, win: Window,
              flat_waste_limit: float) -> ConvPlan:
    n, c = x_shape[:2]
    out_shape = (n, w_shape[0], *win.out_spatial)
    buf_shape = (c, n, *win.padded)
    grid = _row_major(buf_shape[1:])  # element strides of the (N, *padded) grid
    taps = tuple(d * g for d, g in zip(win.dilations, grid[1:]))
    # flat: one column per grid position from the first window's to the last one's
    length = 1 + sum((o - 1) * g for o, g in zip((n, *win.out_spatial), grid))
    useful = n * math.prod(win.out_spatial)
    waste = length / useful - 1.0  # columns computed and dropped, per useful one
    # flat wastes `waste` MACs per useful one; the strided copy costs about
    # flat_waste_limit / Mg MACs per patch element (measured): pick the cheaper
    if all(s == 1 for s in win.strides) and (w_shape[0] // groups) * waste <= flat_waste_limit:
        return ConvPlan(True, win, groups, buf_shape, (c, *win.kernel, length),
                        (math.prod(buf_shape[1:]), *taps, 1), length, out_shape,
                        (grid[0], length, *grid[1:]))
    cols_strides = (math.prod(buf_shape[1:]), *taps, grid[0],
                    *(s * g for s, g in zip(win.strides, grid[1:])))
    out_grid = _row_major(win.out_spatial)
    return ConvPlan(False, win, groups, buf_shape, (c, *win.kernel, n, *win.out_spatial),
                    cols_strides, useful, out_shape,
                    (math.prod(win.out_spatial), useful, *out_grid))


def _row_major(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a C-contiguous array of `shape`."""
    return tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))


def _conv_gemm(x: np.ndarray, w: np.ndarray, plan: ConvPlan, bias: np.ndarray | None
               ) -> np.ndarray:
    """Grouped conv as (G, Mg, Cg·K) @ (G, Cg·K, L) products; returns (N, M, *out).

    The result may be a strided view of the GEMM output (flat plans skip the wasted columns
    without copying; the next Conv's padding copy or elementwise op compacts it anyway).
    """
    g, m = plan.groups, w.shape[0]
    cols = patch_matrix(_channel_major(x, plan), plan)
    y = grouped_matmul(w.reshape(g, m // g, -1), cols)  # (M, L), fresh
    if bias is not None:
        y += bias.reshape(m, 1)
    out = gemm_output(y, plan)
    return out if plan.flat or x.shape[0] == 1 else np.ascontiguousarray(out)


def patch_matrix(buf: np.ndarray, plan: ConvPlan) -> np.ndarray:
    """The im2col copy: (G, Cg·K, L) patches of a channel-major padded buffer (`buf_shape`)."""
    return patch_view(buf, plan).reshape(plan.groups, -1, plan.length)


def patch_view(buf: np.ndarray, plan: ConvPlan) -> np.ndarray:
    """The patches as a strided view of the C-contiguous buffer, `cols_shape` (no copy)."""
    return _view(buf, plan.cols_shape, plan.cols_strides)


def gemm_output(y: np.ndarray, plan: ConvPlan) -> np.ndarray:
    """The GEMM result y (M, L) (C-contiguous) read as (N, M, *out): a view, strided for flat
    plans, whose skipped columns are the wasted positions."""
    return _view(y, plan.out_shape, plan.out_strides)


def _add_bias(y: np.ndarray, bias: np.ndarray | None, out: np.ndarray) -> None:
    """out = y + bias (or a copy of y): the chunk's crop copy and its bias add in one pass."""
    if bias is None:
        np.copyto(out, y)
    else:
        np.add(y, bias, out=out)


def _view(base: np.ndarray, shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    """Strided view of a C-contiguous array, strides in elements; views whose elements
    overlap (im2col windows) are only ever read.

    np.ndarray over the base's buffer costs a tenth of as_strided, which matters at ~30 convs
    per inference.
    """
    return np.ndarray(shape, base.dtype, base, 0, tuple(s * base.itemsize for s in strides))


def _channel_major(x: np.ndarray, plan: ConvPlan) -> np.ndarray:
    """(N, C, *spatial) -> contiguous zero-padded (C, N, *padded), the layout im2col reads."""
    win = plan.win
    if not win.has_padding:
        xt = x.reshape(plan.buf_shape) if x.shape[0] == 1 else x.swapaxes(0, 1)
        return np.ascontiguousarray(xt)
    buf = np.zeros(plan.buf_shape, dtype=x.dtype)
    buf[(slice(None), slice(None), *win.inner())] = x.swapaxes(0, 1)
    return buf


def grouped_matmul(w: np.ndarray, cols: np.ndarray, out: np.ndarray | None = None
                   ) -> np.ndarray:
    """(G, Mg, R) @ (G, R, L) -> (G·Mg, L), fresh or into `out` (G, Mg, L); plain 2-D GEMM
    when G is 1."""
    if w.shape[0] == 1:
        return np.matmul(w[0], cols[0], out=None if out is None else out[0])
    return np.matmul(w, cols, out=out).reshape(-1, cols.shape[-1])


def _conv_depthwise(x: np.ndarray, w: np.ndarray, win: Window,
                    bias: np.ndarray | None) -> np.ndarray:
    """One filter per channel: accumulate W[c, k] · tap_k over the K taps (no GEMM to feed)."""
    xp = win.pad(x)
    scale_shape = (1, -1) + (1,) * len(win.kernel)
    wk = w.reshape(w.shape[0], -1)
    y = None
    for k, sl in enumerate(win.taps()):
        term = xp[(..., *sl)] * wk[:, k].reshape(scale_shape)
        y = term if y is None else np.add(y, term, out=y)
    return y if bias is None else np.add(y, bias, out=y)


# -- Gemm and MatMul ---------------------------------------------------------------------------
@float_kernel("Gemm")
def gemm(node: Node, a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None) -> np.ndarray:
    """Y = alpha · A' B' + beta · C, A' and B' transposed when transA / transB are set."""
    dtype = a.dtype
    alpha = node.attrs.get("alpha", 1.0)
    beta = node.attrs.get("beta", 1.0)
    a = a.T if node.attrs.get("transA", 0) else a
    b = b.T if node.attrs.get("transB", 0) else b
    y = _matmul(a, b)
    if alpha != 1.0:
        y = np.multiply(y, alpha, out=y, casting="unsafe")
    if c is not None and beta != 0.0:
        y = np.add(y, c if beta == 1.0 else beta * c, out=y, casting="unsafe")
    return y.astype(dtype, copy=False)


@float_kernel("MatMul")
def matmul(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """NumPy matmul semantics: 1-D operands promoted and squeezed, batch dims broadcast."""
    return _matmul(a, b).astype(a.dtype, copy=False)


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b in the inputs' dtype; float16/bfloat16 go through float32 (BLAS has no halves)."""
    if a.dtype.kind in "iub" and b.dtype.kind in "iub":
        return np.matmul(a, b)  # integer matmul wraps like the C types ONNX names
    ct = _compute_dtype(a.dtype)
    return np.matmul(a.astype(ct, copy=False), b.astype(ct, copy=False))


# -- pools -------------------------------------------------------------------------------------
def _lowest(dtype: np.dtype) -> float | int:
    """MaxPool's padding value: the lowest finite value, so a window that lies wholly in the
    padding yields it, as in onnxruntime (which starts every max there)."""
    return np.finfo(dtype).min if dtype.kind == "f" else np.iinfo(dtype).min


@float_kernel("MaxPool")
def max_pool(node: Node, x: np.ndarray) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Y = max over each window (padding never wins); Indices = flat input index of the max."""
    win = pool_window(node, x)
    xp = win.pad(x, _lowest(x.dtype))
    if len(node.outputs) > 1:
        return _max_pool_indices(node, x, xp, win)
    # a box's max is the max along each axis in turn: Σk taps instead of Πk
    y = xp
    for axis, (k, d, s, o) in enumerate(zip(win.kernel, win.dilations, win.strides,
                                            win.out_spatial)):
        lead = (slice(None),) * (y.ndim - len(win.kernel) + axis)
        part = None
        for t in range(k):
            tap = y[(*lead, slice(t * d, t * d + s * (o - 1) + 1, s))]
            part = tap.copy() if part is None else np.maximum(part, tap, out=part)
        y = part
    return y


def _max_pool_indices(node: Node, x: np.ndarray, xp: np.ndarray, win: Window
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Max with its argmax; the first tap in row-major window order wins ties (onnxruntime).

    Index = ((n·C + c)·prod(spatial)) + spatial offset, row-major (storage_order 0) or
    column-major over the spatial axes (storage_order 1).
    """
    spatial = x.shape[2:]
    if node.attrs.get("storage_order", 0):
        steps = [math.prod(spatial[:i]) for i in range(len(spatial))]
    else:
        steps = [math.prod(spatial[i + 1:]) for i in range(len(spatial))]
    # input coordinate of each output position's window start, along each spatial axis
    starts = [np.arange(o) * s - b for o, s, b in
              zip(win.out_spatial, win.strides, win.pads_begin)]
    plane = math.prod(spatial)
    base = (np.arange(x.shape[0] * x.shape[1], dtype=np.int64) * plane).reshape(x.shape[:2])
    base = base.reshape(x.shape[:2] + (1,) * len(spatial))
    y = idx = None
    for sl, off in zip(win.taps(), win.tap_offsets()):
        tap = xp[(..., *sl)]
        where = sum((st + o).reshape(_axis_shape(i, len(spatial))) * step
                    for i, (st, o, step) in enumerate(zip(starts, off, steps)))
        if y is None:
            y, idx = tap.copy(), np.broadcast_to(base + where, tap.shape).copy()
            continue
        better = tap > y
        np.copyto(y, tap, where=better)
        np.copyto(idx, base + where, where=better)
    return y, idx


def _axis_shape(axis: int, nd: int) -> tuple[int, ...]:
    """Shape that lays a 1-D array along spatial `axis` of an (N, C, *spatial) array."""
    return (1, 1) + tuple(-1 if i == axis else 1 for i in range(nd))


@float_kernel("AveragePool")
def average_pool(node: Node, x: np.ndarray) -> np.ndarray:
    """Y = window sum / count; count includes the explicit padding iff count_include_pad."""
    win = pool_window(node, x)
    ct = _compute_dtype(x.dtype)
    xp = win.pad(x.astype(ct, copy=False))
    total = None
    for sl in win.taps():
        tap = xp[(..., *sl)]
        total = tap.copy() if total is None else np.add(total, tap, out=total)
    counts = window_counts(win, bool(node.attrs.get("count_include_pad", 0)))
    return (total / counts.astype(ct)).astype(x.dtype, copy=False)


@float_kernel("GlobalAveragePool")
def global_average_pool(node: Node, x: np.ndarray) -> np.ndarray:
    """Mean over the spatial axes: one pairwise-summed reduction over the flattened plane."""
    flat = x.reshape(x.shape[:2] + (-1,))
    total = np.add.reduce(flat, axis=-1, dtype=_compute_dtype(x.dtype), keepdims=True)
    total *= 1.0 / flat.shape[-1]
    return total.reshape(x.shape[:2] + (1,) * (x.ndim - 2)).astype(x.dtype, copy=False)


@float_kernel("GlobalMaxPool")
def global_max_pool(node: Node, x: np.ndarray) -> np.ndarray:
    return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)


# -- normalisation and regularisation ------------------------------------------------------------
@float_kernel("BatchNormalization")
def batch_normalization(node: Node, x: np.ndarray, scale: np.ndarray, bias: np.ndarray,
                        mean: np.ndarray, var: np.ndarray
                        ) -> np.ndarray | tuple[np.ndarray, ...]:
    """Y = (X - mean) / sqrt(var + epsilon) · scale + bias, per channel (axis 1).

    Inference form folds to Y = X · a + b. Training mode (opset 14+ training_mode=1) uses the
    batch statistics and also returns the updated running mean and variance, as ONNX specifies.
    """
    eps = float(node.attrs.get("epsilon", 1e-5))
    if _bn_training(node):
        return _batch_norm_training(node, x, scale, bias, mean, var, eps)
    ct = _compute_dtype(x.dtype)
    a = scale / np.sqrt(var.astype(np.float64) + eps)  # per-channel math in float64
    b = (bias - mean * a).astype(ct)
    shape = _param_shape(x, scale)
    y = np.multiply(x, a.astype(ct).reshape(shape), dtype=ct)
    y += b.reshape(shape)
    return y.astype(x.dtype, copy=False)


def _bn_training(node: Node) -> bool:
    if node.opset >= 14:
        return bool(node.attrs.get("training_mode", 0))
    if node.opset < 7 and not node.attrs.get("is_test", 0):
        raise QccError(f"BatchNormalization {node.name!r}: training mode (is_test=0) of opset "
                       f"{node.opset} is not supported; use opset 14+ training_mode")
    if len(node.outputs) > 1:
        raise QccError(f"BatchNormalization {node.name!r}: the training outputs of opset "
                       f"{node.opset} (saved mean/var) are not supported; use opset 14+")
    return False


def _param_shape(x: np.ndarray, param: np.ndarray) -> tuple[int, ...]:
    """Broadcast shape of a per-channel parameter; opset < 9 spatial=0 params are (C, *spatial)."""
    if param.ndim > 1:
        return (1, *param.shape)
    return (-1,) + (1,) * (x.ndim - 2)


def _batch_norm_training(node: Node, x: np.ndarray, scale: np.ndarray, bias: np.ndarray,
                         mean: np.ndarray, var: np.ndarray, eps: float
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ONNX BatchNormalization-14 training mode: batch mean and (biased) variance normalise X;
    running_stat = input_stat · momentum + batch_stat · (1 - momentum)."""
    momentum = float(node.attrs.get("momentum", 0.9))
    axes = (0, *range(2, x.ndim))
    xf = x.astype(np.float64)
    batch_mean, batch_var = xf.mean(axis=axes), xf.var(axis=axes)
    shape = _param_shape(x, scale)
    a = scale.astype(np.float64) / np.sqrt(batch_var + eps)
    y = (xf - batch_mean.reshape(shape)) * a.reshape(shape) + bias.reshape(shape)
    running_mean = mean * momentum + batch_mean * (1 - momentum)
    running_var = var * momentum + batch_var * (1 - momentum)
    return (y.astype(x.dtype), running_mean.astype(mean.dtype), running_var.astype(var.dtype))


@float_kernel("LRN")
def lrn(node: Node, x: np.ndarray) -> np.ndarray:
    """Y = X / (bias + alpha / size · sum of X² over the channel window)^beta (ONNX LRN).

    The window of channel c is [c - floor((size-1)/2), c + ceil((size-1)/2)], clipped.
    """
    size = int(node.attrs["size"])
    alpha = float(node.attrs.get("alpha", 1e-4))
    beta = float(node.attrs.get("beta", 0.75))
    bias = float(node.attrs.get("bias", 1.0))
    ct = _compute_dtype(x.dtype)
    xc = x.astype(ct, copy=False)
    c = x.shape[1]
    before = (size - 1) // 2
    squares = np.zeros((x.shape[0], c + size - 1) + x.shape[2:], dtype=ct)
    np.square(xc, out=squares[:, before:before + c])
    total = squares[:, :c].copy()
    for k in range(1, size):  # size shifted channel slices: a sliding sum along axis 1
        total += squares[:, k:k + c]
    total *= alpha / size
    total += bias
    return (xc / np.power(total, beta, out=total)).astype(x.dtype, copy=False)


@float_kernel("Dropout")
def dropout(node: Node, x: np.ndarray, ratio: np.ndarray | None = None,
            training_mode: np.ndarray | None = None) -> np.ndarray | tuple[np.ndarray, ...]:
    """Inference Dropout is the identity (mask all ones).

    Training mode with ratio > 0 keeps x / (1 - ratio) where a uniform draw is >= ratio. ONNX
    leaves the generator to the runtime; its reference evaluator and conformance data draw
    numpy.random.RandomState(seed).uniform(0, 1, shape), so with a `seed` attribute qcc draws
    exactly that (deterministic and checkable). Without a seed it refuses: qcc is deterministic.
    """
    p = np.asarray(ratio if ratio is not None else node.attrs.get("ratio", 0.5), np.float32)
    training = bool(training_mode) if training_mode is not None else False
    if node.opset < 7 and not node.attrs.get("is_test", 0):
        training = True
    mask_dtype = np.bool_ if node.opset >= 10 else x.dtype  # before opset 10: the data type
    if training and p > 0:
        y, keep = _dropout_training(node, x, p)
    else:
        y, keep = x, np.ones(x.shape, dtype=np.bool_)
    return y if len(node.outputs) < 2 else (y, keep.astype(mask_dtype))


def _dropout_training(node: Node, x: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if "seed" not in node.attrs:
        raise QccError(f"Dropout {node.name!r}: training mode with ratio {float(p)} and no seed "
                       "is random; qcc runs it only with a seed attribute")
    keep = np.random.RandomState(int(node.attrs["seed"])).uniform(0.0, 1.0, x.shape) >= p
    scale = np.float32(1) / (np.float32(1) - p)  # float32, as the ONNX reference computes it
    return (keep * x * scale).astype(x.dtype, copy=False), keep
