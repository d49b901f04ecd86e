"""Vector-Jacobian products (reverse-mode derivatives) of the float ops, one function per op.

Convention, registered with `@vjp("Op")`:

    fn(node, inputs, outputs, grads) -> list[np.ndarray | None]

`inputs` and `outputs` are the forward arrays (None for an omitted optional input), `grads` holds
d loss / d output for each output (None when an output receives no gradient). The result has one
entry per input: d loss / d input, with the input's shape (broadcasting is summed back), or None
where the input is not differentiable (shapes, axes, indices) or omitted.

Windowed ops (Conv, pools) use the forward's geometry (`ops.nn.Window`) and one im2col: every
kernel tap is a strided slice of the padded input, so im2col stacks the slices and its transpose
(col2im) adds them back. Conv's weight and input gradients are then batched BLAS matrix products.
Dropout and BatchNormalization are differentiated in their inference form.
"""

from __future__ import annotations

import math

import numpy as np

from qcc.core.errors import QccError
from qcc.core.ir import Node
from qcc.core.ops.nn import Window, conv_window, pool_window, window_counts
from qcc.core.registry import declare, vjp

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


def conv_geometry(node: Node, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                  y_shape: tuple[int, ...]) -> Window:
    """The forward's window of a Conv (nn.conv_window), checked against its output shape."""
    return _checked(node, conv_window(node, x_shape, w_shape), y_shape)


def pool_geometry(node: Node, x: np.ndarray, y: np.ndarray) -> Window:
    """The forward's window of a MaxPool / AveragePool (nn.pool_window), checked against y."""
    return _checked(node, pool_window(node, x), y.shape)


def _checked(node: Node, win: Window, y_shape: tuple[int, ...]) -> Window:
    # the backward is handed the forward's output (or its gradient): a shape the attributes do
    # not produce means the graph and the kernels disagree, which no gradient can fix
    if tuple(y_shape[2:]) != win.out_spatial:
        raise QccError(f"{node.op_type} {node.name!r}: output size {list(y_shape[2:])} is not "
                       f"the {list(win.out_spatial)} its attributes give")
    return win


def im2col(xp: np.ndarray, win: Window) -> np.ndarray:
    """Padded input (A, *rest, *padded) -> columns (A, K, *rest, *out), K = prod(kernel).

    Conv passes it channel-major (C, N, *padded): each tap's block (N, *out) is contiguous, so
    the column matrix of a group is a plain (Cg·K, N·L) reshape for BLAS.
    """
    return np.stack([xp[(..., *sl)] for sl in win.taps()], axis=1)


def col2im(cols: np.ndarray, win: Window) -> np.ndarray:
    """Transpose of `im2col`: (A, K, *rest, *out) -> unpadded (A, *rest, *in_spatial), each
    tap's columns added back where it read."""
    nd = len(win.kernel)
    xp = np.zeros(cols.shape[:1] + cols.shape[2:cols.ndim - nd] + win.padded, cols.dtype)
    for k, sl in enumerate(win.taps()):
        xp[(..., *sl)] += cols[:, k]  # one tap's slice never repeats a position
    return win.crop(xp)


def spread(dy: np.ndarray, win: Window) -> np.ndarray:
    """Every output's value (N, C, *out) added to each input position of its window."""
    k = math.prod(win.kernel)
    return col2im(np.broadcast_to(dy[:, None], (dy.shape[0], k) + dy.shape[1:]), win)


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
    win = conv_geometry(node, x.shape, w.shape, dy.shape)
    n, c = x.shape[:2]
    m, k = w.shape[0], int(np.prod(win.kernel))
    cols = im2col(win.pad(x.swapaxes(0, 1)), win).reshape(groups, c // groups * k, -1)
    dy_cm = dy.reshape(n, m, -1).swapaxes(0, 1).reshape(groups, m // groups, -1)
    dw = np.matmul(dy_cm, cols.swapaxes(1, 2)).reshape(w.shape)
    dcols = np.matmul(w.reshape(groups, m // groups, -1).swapaxes(1, 2), dy_cm)
    dcols = dcols.reshape((c, k, n) + win.out_spatial)
    dx = col2im(dcols, win).swapaxes(0, 1)
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


# training updates BatchNormalization's scale and shift; its running statistics stay
declare("BatchNormalization", trained_inputs=(1, 2))


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
    win = pool_geometry(node, x, outputs[0])
    taps = im2col(win.pad(x, -np.inf), win)  # (N, K, C, *out)
    winner = taps.argmax(axis=1, keepdims=True)
    k = np.arange(taps.shape[1]).reshape((1, -1) + (1,) * (taps.ndim - 2))
    return [_like(col2im(np.where(winner == k, dy[:, None], 0), win), x)]


@vjp("AveragePool")
def avgpool_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    """dX gets dY / divisor from every window it is in; the divisor counts the window's input
    positions, plus explicit padding if count_include_pad (never the ceil_mode overhang)."""
    x, dy = inputs[0], grads[0]
    if dy is None:
        return [None]
    win = pool_geometry(node, x, outputs[0])
    divisor = window_counts(win, bool(node.attrs.get("count_include_pad", 0)))
    return [_like(spread(dy / divisor, win), x)]


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


@vjp("ReduceMean")
def reduce_mean_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    """Y = mean of X over the reduced axes: dX = dY (broadcast back) / (elements averaged)."""
    x, dy = inputs[0], grads[0]
    if dy is None:
        return [None] * len(inputs)
    listed = node.attrs.get("axes") if node.opset < 18 else (inputs[1] if len(inputs) > 1
                                                               else None)
    if listed is None or np.size(listed) == 0:
        if node.attrs.get("noop_with_empty_axes", 0):
            return [dy, *([None] * (len(inputs) - 1))]
        axes = tuple(range(x.ndim))
    else:
        axes = tuple(int(a) % x.ndim for a in np.asarray(listed).ravel())
    kept = [1 if i in axes else d for i, d in enumerate(x.shape)]
    count = math.prod(x.shape[i] for i in axes)
    dx = np.broadcast_to(dy.reshape(kept), x.shape) / count
    return [_like(dx, x), *([None] * (len(inputs) - 1))]


@vjp("Sqrt")
def sqrt_vjp(node: Node, inputs: Arrays, outputs: Arrays, grads: Arrays) -> Arrays:
    """Y = √X: dX = dY / (2Y)."""
    dy = grads[0]
    return [None if dy is None else _like(dy / (2 * outputs[0]), inputs[0])]
