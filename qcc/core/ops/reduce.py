"""Reductions and the softmax family: ReduceMean, Softmax, LogSoftmax.

16-bit float inputs are accumulated in float32 and rounded once at the end; integer ReduceMean
sums in the input dtype and truncates the quotient toward zero, as ONNX's reference does.
"""

from __future__ import annotations

import numpy as np

from qcc.core.ir import Node
from qcc.core.ops.elementwise import work_dtype
from qcc.core.registry import float_kernel


def _reduce_axes(node: Node, ndim: int, axes: np.ndarray | None) -> tuple[int, ...] | None:
    """Axes to reduce: attribute before opset 18, input from 18. None means every axis;
    () (no axes with noop_with_empty_axes=1) means none."""
    listed = node.attrs.get("axes") if node.opset < 18 else axes
    if listed is None or np.size(listed) == 0:
        return () if node.attrs.get("noop_with_empty_axes", 0) else None
    return tuple(int(a) % ndim for a in np.asarray(listed).ravel())


@float_kernel("ReduceMean")
def reduce_mean(node: Node, x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    keepdims = bool(node.attrs.get("keepdims", 1))
    axis = _reduce_axes(node, x.ndim, axes)
    if axis == ():
        return x.copy()
    if np.issubdtype(x.dtype, np.integer):
        total = np.sum(x, axis=axis, keepdims=keepdims, dtype=x.dtype)
        count = x.size // max(total.size, 1) if x.size else 0
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(np.trunc(total / count)).astype(x.dtype)
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty reduction is NaN
        mean = np.mean(x, axis=axis, keepdims=keepdims, dtype=work_dtype(x.dtype))
    return np.asarray(mean).astype(x.dtype, copy=False)


def _softmax_axis(node: Node, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Before opset 13 Softmax coerces the input to 2-D at `axis` (default 1) and normalises
    each row; from 13 it normalises along `axis` (default -1). Returns the array to normalise
    (in the working dtype) and the axis."""
    xw = x.astype(work_dtype(x.dtype), copy=False)
    if node.opset >= 13:
        return xw, node.attrs.get("axis", -1) % max(x.ndim, 1)
    axis = node.attrs.get("axis", 1) % max(x.ndim, 1) if x.ndim else 0
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    return xw.reshape(rows, int(np.prod(x.shape[axis:], dtype=np.int64))), 1


def _log_softmax(z: np.ndarray, axis: int) -> np.ndarray:
    """z - max - log(sum(exp(z - max))): subtracting the max keeps every exp() <= 1."""
    if z.size == 0:
        return z
    shifted = z - np.max(z, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


@float_kernel("Softmax")
def softmax(node: Node, x: np.ndarray) -> np.ndarray:
    """exp(z - max) / sum(exp(z - max)) along the axis; stable for large inputs."""
    z, axis = _softmax_axis(node, x)
    if z.size == 0:
        return x.copy()
    e = np.exp(z - np.max(z, axis=axis, keepdims=True))
    return (e / np.sum(e, axis=axis, keepdims=True)).reshape(x.shape).astype(x.dtype, copy=False)


@float_kernel("LogSoftmax")
def log_softmax(node: Node, x: np.ndarray) -> np.ndarray:
    z, axis = _softmax_axis(node, x)
    return _log_softmax(z, axis).reshape(x.shape).astype(x.dtype, copy=False)
