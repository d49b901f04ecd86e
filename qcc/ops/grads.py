"""Vector-Jacobian products (reverse-mode derivatives) of the float ops, one function per op.

Convention, registered with `@vjp("Op")`:

    fn(node, inputs, outputs, grads) -> list[np.ndarray | None]

`inputs` and `outputs` are the forward arrays (None for an omitted optional input), `grads` holds
d loss / d output for each output (None when an output receives no gradient). The result has one
entry per input: d loss / d input, with the input's shape (broadcasting is summed back), or None
where the input is not differentiable (shapes, axes, indices) or omitted.

Windowed ops (Conv, pools) share one geometry (`WindowGeometry`) and one im2col: every kernel tap
is a strided slice of the padded input, so im2col stacks the slices and its transpose (col2im)
adds them back. Conv's weight and input gradients are then batched BLAS matrix products.
Dropout and BatchNormalization are differentiated in their inference form.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from qcc.errors import QccError
from qcc.ir import Node
from qcc.registry import vjp

Arrays = list[np.ndarray | None]


# -- helpers -------------------------------------------------------------------------------
def unbroadcast(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum `g` over the axes NumPy broadcasting added or stretched to reach g.shape from `shape`."""
    lead = g.ndim - len(shape)
    if lead > 0:
        g = g.sum(axis=tuple(range(lead)))
    stretched = tuple(i for i, (s, d) in enumerate(zip(shape, g.shape)) if s == 1 and d != 1)
    if stretched:
        g = g.sum(axis=stretched, keepdims=True)
    return g.reshape(shape)


def _like(g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`g` in x's float dtype (a gradient has the dtype of the tensor it belongs to)."""
    return g.astype(x.dtype, copy=False) if np.issubdtype(x.dtype, np.floating) else g


@dataclass(frozen=True)
class WindowGeometry:
    """Where each kernel tap of a Conv or pool reads the input, along the spatial axes.

    `pads_end` includes any extra trailing room the output needs (ceil_mode), beyond the
    explicit padding `explicit_end`; positions there are never counted by AveragePool.
    """

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    explicit_end: tuple[int, ...]
    in_spatial: tuple[int, ...]
    out_spatial: tuple[int, ...]

    def taps(self) -> Iterator[tuple[slice, ...]]:
        """Per kernel tap (row-major, as in the weight layout): its slice of the padded input."""
        for tap in itertools.product(*(range(k) for k in self.kernel)):
            yield tuple(slice(t * d, t * d + s * (o - 1) + 1, s) for t, d, s, o in
                        zip(tap, self.dilations, self.strides, self.out_spatial))

    def pad(self, x: np.ndarray, value: float = 0.0) -> np.ndarray:
        widths = [(0, 0)] * (x.ndim - len(self.kernel))
        widths += list(zip(self.pads_begin, self.pads_end))
        return np.pad(x, widths, constant_values=value)

    def crop(self, xp: np.ndarray) -> np.ndarray:
        """The inverse of `pad`: the part of a padded-shape array that covers the input."""
        lead = (slice(None),) * (xp.ndim - len(self.kernel))
        return xp[lead + tuple(slice(b, b + n) for b, n in zip(self.pads_begin, self.in_spatial))]


def window_geometry(node: Node, in_spatial: tuple[int, ...], kernel: tuple[int, ...],
                    out_spatial: tuple[int, ...]) -> WindowGeometry:
    """Resolve strides, dilations and (auto_pad) padding of a Conv/pool node for one input size."""
    d = len(kernel)
    strides = tuple(node.attrs.get("strides", [1] * d))
    dilations = tuple(node.attrs.get("dilations", [1] * d))
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    extent = [(o - 1) * s + (k - 1) * dl + 1
              for o, s, k, dl in zip(out_spatial, strides, kernel, dilations)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        total = [max(e - i, 0) for e, i in zip(extent, in_spatial)]
        # SAME_UPPER puts the odd padding element at the end, SAME_LOWER at the beginning
        begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
        end = [t - b for t, b in zip(total, begin)]
    elif auto_pad == "VALID":
        begin, end = [0] * d, [0] * d
    else:
        pads = list(node.attrs.get("pads", [0] * (2 * d)))
        begin, end = pads[:d], pads[d:]
    # ceil_mode windows may run past the explicit padding: give them room to read (and ignore)
    room = [max(e, x - b - i) for e, x, b, i in zip(end, extent, begin, in_spatial)]
    return WindowGeometry(tuple(kernel), strides, dilations, tuple(begin), tuple(room),
                          tuple(end), tuple(in_spatial), tuple(out_spatial))


def im2col(xp: np.ndarray, geom: WindowGeometry) -> np.ndarray:
    """Padded channel-major input (C, N, *spatial) -> columns (C, K, N, *out), K = prod(kernel).

    Channel-major keeps each tap's block (N, *out) contiguous, so the column matrix of a group
    is a plain (Cg·K, N·L) reshape for BLAS.
    """
    return np.stack([xp[(..., *sl)] for sl in geom.taps()], axis=1)


def col2im(cols: np.ndarray, geom: WindowGeometry, padded_shape: tuple[int, ...]) -> np.ndarray:
    """Transpose of `im2col`: add each tap's columns back where it read; returns unpadded."""
    xp = np.zeros(padded_shape, cols.dtype)
    for k, sl in enumerate(geom.taps()):
        xp[(..., *sl)] += cols[:, k]  # one tap's slice never repeats a position
    return geom.crop(xp)


def _padded_shape(x: np.ndarray, geom: WindowGeometry) -> tuple[int, ...]:
    spatial = tuple(b + i + e for b, i, e in zip(geom.pads_begin, geom.in_spatial, geom.pads_end))
    return x.shape[:2] + spatial


def conv_geometry(node: Node, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                  y_shape: tuple[int, ...]) -> WindowGeometry:
    kernel = tuple(node.attrs.get("kernel_shape", w_shape[2:]))
    return window_geometry(node, tuple(x_shape[2:]), kernel, tuple(y_shape[2:]))


def pool_geometry(node: Node, x: np.ndarray, y: np.ndarray) -> WindowGeometry:
    return window_geometry(node, x.shape[2:], tuple(node.attrs["kernel_shape"]), y.shape[2:])


# -- weighted layers ------------------------------------------------------------------------
@vjp("Conv")
def conv_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    """Y_g = W_g · cols_g (+ B) per group g: dW_g = dY_g cols_g^T, dcols_g = W_g^T dY_g, and
    dX = col2im(dcols). Matrices are channel-major: dY_g is (Mg, N·L), cols_g (Cg·K, N·L)."""
    x, w = inputs[0], inputs[1]
    dy = grads[0]
    if dy is None:
        return [None] * len(inputs)
    groups = int(node.attrs.get("group", 1))
    geom = conv_geometry(node, x.shape, w.shape, dy.shape)
    n, c = x.shape[:2]
    m, k = w.shape[0], int(np.prod(geom.kernel))
    cols = im2col(geom.pad(x.swapaxes(0, 1)), geom).reshape(groups, c // groups * k, -1)
    dy_cm = dy.reshape(n, m, -1).swapaxes(0, 1).reshape(groups, m // groups, -1)
    dw = np.matmul(dy_cm, cols.swapaxes(1, 2)).reshape(w.shape)
    dcols = np.matmul(w.reshape(groups, m // groups, -1).swapaxes(1, 2), dy_cm)
    dcols = dcols.reshape((c, k, n) + geom.out_spatial)
    dx = col2im(dcols, geom, _padded_shape(x.swapaxes(0, 1), geom)).swapaxes(0, 1)
    result: Arrays = [_like(np.ascontiguousarray(dx), x), _like(dw, w)]
    if len(inputs) > 2:
        b = inputs[2]
        result.append(None if b is None else _like(dy.sum(axis=(0, *range(2, dy.ndim))), b))
    return result


@vjp("Gemm")
def gemm_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    """Y = α A'B' + β C: dA' = α dY B'^T, dB' = α A'^T dY, dC = β dY summed to C's shape."""
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    dy = grads[0]
    if dy is None:
        return [None] * len(inputs)
    trans_a, trans_b = node.attrs.get("transA", 0), node.attrs.get("transB", 0)
    alpha, beta = node.attrs.get("alpha", 1.0), node.attrs.get("beta", 1.0)
    a2 = a.T if trans_a else a
    b2 = b.T if trans_b else b
    da2 = alpha * (dy @ b2.T)
    db2 = alpha * (a2.T @ dy)
    result: Arrays = [_like(da2.T if trans_a else da2, a), _like(db2.T if trans_b else db2, b)]
    if len(inputs) > 2:
        result.append(None if c is None else _like(beta * unbroadcast(dy, c.shape), c))
    return result


@vjp("MatMul")
def matmul_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    """NumPy matmul semantics: 1-D operands gain a unit axis, batch axes broadcast."""
    a, b = inputs
    dy = grads[0]
    if dy is None:
        return [None, None]
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    dy2 = np.asarray(dy)
    if b.ndim == 1:  # first restore B's column axis, then A's row axis
        dy2 = dy2[..., None]
    if a.ndim == 1:
        dy2 = np.expand_dims(dy2, -2)
    da = unbroadcast(np.matmul(dy2, np.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape)
    db = unbroadcast(np.matmul(np.swapaxes(a2, -1, -2), dy2), b2.shape).reshape(b.shape)
    return [_like(da, a), _like(db, b)]


@vjp("BatchNormalization")
def batchnorm_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    """Inference form Y = scale·(X − mean)/sqrt(var + ε) + B, statistics over axis 1."""
    if node.attrs.get("training_mode", 0):
        raise QccError(f"BatchNormalization {node.name!r}: only the inference form "
                       "(training_mode=0) has a gradient")
    x, scale, bias, mean, var = inputs[:5]
    dy = grads[0]
    if dy is None:
        return [None] * len(inputs)
    eps = node.attrs.get("epsilon", 1e-5)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean.reshape(shape)) * inv.reshape(shape)
    axes = (0, *range(2, x.ndim))
    dxhat_sum = (dy * xhat).sum(axis=axes)
    dx = dy * (scale * inv).reshape(shape)
    dmean = -dy.sum(axis=axes) * scale * inv
    dvar = -0.5 * scale * dxhat_sum / (var + eps)  # d/dvar (var+ε)^(-1/2) = −½ (var+ε)^(-3/2)
    return [_like(dx, x), _like(dxhat_sum, scale), _like(dy.sum(axis=axes), bias),
            _like(dmean, mean), _like(dvar, var)] + [None] * (len(inputs) - 5)


# -- pools --------------------------------------------------------------------------------------
@vjp("MaxPool")
def maxpool_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    """Each output's gradient goes to the (first) input position that held the window's max."""
    x, dy = inputs[0], grads[0]
    if dy is None:
        return [None]
    geom = pool_geometry(node, x, outputs[0])
    xp = geom.pad(x, -np.inf)
    winner = np.stack([xp[(..., *sl)] for sl in geom.taps()]).argmax(axis=0)
    dxp = np.zeros(xp.shape, dy.dtype)
    for k, sl in enumerate(geom.taps()):
        dxp[(..., *sl)] += np.where(winner == k, dy, 0)
    return [_like(geom.crop(dxp), x)]


@vjp("AveragePool")
def avgpool_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    """dX gets dY / divisor from every window it is in; the divisor counts the window's input
    positions, plus explicit padding if count_include_pad (never the ceil_mode overhang)."""
    x, dy = inputs[0], grads[0]
    if dy is None:
        return [None]
    geom = pool_geometry(node, x, outputs[0])
    counted = np.ones(geom.in_spatial)
    if node.attrs.get("count_include_pad", 0):
        counted = np.pad(counted, list(zip(geom.pads_begin, geom.explicit_end)), constant_values=1)
        ends = [r - e for r, e in zip(geom.pads_end, geom.explicit_end)]
        counted = np.pad(counted, [(0, r) for r in ends])
    else:
        counted = np.pad(counted, list(zip(geom.pads_begin, geom.pads_end)))
    divisor = sum(counted[sl] for sl in geom.taps())
    share = dy / divisor
    padded = _padded_shape(x, geom)
    dxp = np.zeros(padded, share.dtype)
    for sl in geom.taps():
        dxp[(..., *sl)] += share
    return [_like(geom.crop(dxp), x)]


@vjp("GlobalAveragePool")
def global_avgpool_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    x, dy = inputs[0], grads[0]
    if dy is None:
        return [None]
    return [_like(np.broadcast_to(dy / np.prod(x.shape[2:]), x.shape).copy(), x)]


@vjp("GlobalMaxPool")
def global_maxpool_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    x, dy = inputs[0], grads[0]
    if dy is None:
        return [None]
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    onehot = np.arange(flat.shape[2]) == flat.argmax(axis=2)[..., None]
    dx = onehot * dy.reshape(x.shape[0], x.shape[1], 1)
    return [_like(dx.reshape(x.shape), x)]


# -- elementwise --------------------------------------------------------------------------------
@vjp("Add")
def add_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    dy = grads[0]
    if dy is None:
        return [None, None]
    return [_like(unbroadcast(dy, x.shape), x) for x in inputs]


@vjp("Sum")
def sum_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    return add_vjp(node, inputs, outputs, grads) if grads[0] is not None else [None] * len(inputs)


@vjp("Sub")
def sub_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    (a, b), dy = inputs, grads[0]
    if dy is None:
        return [None, None]
    return [_like(unbroadcast(dy, a.shape), a), _like(unbroadcast(-dy, b.shape), b)]


@vjp("Mul")
def mul_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    (a, b), dy = inputs, grads[0]
    if dy is None:
        return [None, None]
    return [_like(unbroadcast(dy * b, a.shape), a), _like(unbroadcast(dy * a, b.shape), b)]


@vjp("Div")
def div_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    """Y = A / B: dA = dY / B, dB = −dY·A / B²."""
    (a, b), dy = inputs, grads[0]
    if dy is None or not np.issubdtype(a.dtype, np.floating):
        return [None, None]
    return [_like(unbroadcast(dy / b, a.shape), a),
            _like(unbroadcast(-dy * a / (b * b), b.shape), b)]


@vjp("Relu")
def relu_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    dy = grads[0]
    return [None if dy is None else np.where(inputs[0] > 0, dy, 0).astype(dy.dtype)]


@vjp("LeakyRelu")
def leaky_relu_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    dy = grads[0]
    if dy is None:
        return [None]
    alpha = node.attrs.get("alpha", 0.01)
    return [_like(np.where(inputs[0] > 0, dy, alpha * dy), inputs[0])]


@vjp("Clip")
def clip_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    """Y = min(max(X, lo), hi): X gets dY inside [lo, hi]; lo (hi) gets what was clipped to it.

    Before opset 11 the bounds are attributes; from 11 on they are optional inputs.
    """
    x, dy = inputs[0], grads[0]
    if dy is None:
        return [None] * len(inputs)
    lo = inputs[1] if len(inputs) > 1 else None
    hi = inputs[2] if len(inputs) > 2 else None
    if node.opset < 11:
        lo, hi = node.attrs.get("min"), node.attrs.get("max")
    below = x < lo if lo is not None else np.zeros(x.shape, bool)
    above = x > hi if hi is not None else np.zeros(x.shape, bool)
    result: Arrays = [_like(np.where(below | above, 0, dy), x)]
    for i, mask in ((1, below), (2, above)):
        if i < len(inputs):
            result.append(None if inputs[i] is None else
                          _like(np.asarray(np.where(mask, dy, 0).sum()), inputs[i]))
    return result


@vjp("Sigmoid")
def sigmoid_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    y, dy = outputs[0], grads[0]
    return [None if dy is None else _like(dy * y * (1 - y), y)]


@vjp("Tanh")
def tanh_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    y, dy = outputs[0], grads[0]
    return [None if dy is None else _like(dy * (1 - y * y), y)]


def _softmax_axes(node: Node, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Softmax before opset 13 flattens to 2-D at `axis` (default 1); from 13 it is one axis."""
    if node.opset < 13:
        axis = node.attrs.get("axis", 1) % x.ndim
        return x.reshape(int(np.prod(x.shape[:axis])), -1), 1
    return x, node.attrs.get("axis", -1)


@vjp("Softmax")
def softmax_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    """dX = Y ⊙ (dY − Σ_axis dY ⊙ Y)."""
    x, dy = inputs[0], grads[0]
    if dy is None:
        return [None]
    y, axis = _softmax_axes(node, outputs[0])
    g, _ = _softmax_axes(node, dy)
    dx = y * (g - (g * y).sum(axis=axis, keepdims=True))
    return [_like(dx.reshape(x.shape), x)]


@vjp("LogSoftmax")
def log_softmax_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    """dX = dY − softmax(X) Σ_axis dY, with softmax(X) = exp(Y)."""
    x, dy = inputs[0], grads[0]
    if dy is None:
        return [None]
    y, axis = _softmax_axes(node, outputs[0])
    g, _ = _softmax_axes(node, dy)
    dx = g - np.exp(y) * g.sum(axis=axis, keepdims=True)
    return [_like(dx.reshape(x.shape), x)]


# -- data movement ----------------------------------------------------------------------------
@vjp("Identity", "Dropout", "Flatten", "Reshape", "Squeeze", "Unsqueeze")
def reshape_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    """Ops that only relabel the elements of input 0 (Dropout in inference form)."""
    x, dy = inputs[0], grads[0]
    rest: Arrays = [None] * (len(inputs) - 1)
    return [None if dy is None else dy.reshape(x.shape)] + rest


@vjp("Transpose")
def transpose_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    x, dy = inputs[0], grads[0]
    if dy is None:
        return [None]
    perm = node.attrs.get("perm", list(range(x.ndim))[::-1])
    return [dy.transpose(np.argsort(perm))]


@vjp("Concat")
def concat_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    dy = grads[0]
    if dy is None:
        return [None] * len(inputs)
    axis = node.attrs["axis"] % dy.ndim
    cuts = np.cumsum([x.shape[axis] for x in inputs])[:-1]
    return list(np.split(dy, cuts, axis=axis))
