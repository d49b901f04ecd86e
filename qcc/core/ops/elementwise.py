"""Elementwise ops: arithmetic with NumPy broadcasting, and activations.

Every kernel returns its input's dtype, as ONNX requires (T -> T). Transcendental activations of
16-bit floats are evaluated in float32 and rounded once to the input dtype, which is at least as
accurate as evaluating in 16 bits; no kernel promotes to float64 silently.
"""

from __future__ import annotations

from functools import reduce

import numpy as np

from qcc.core.ir import Node
from qcc.core.registry import float_kernel


def work_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype in which to evaluate floating-point math for `dtype` (16-bit floats widen)."""
    if dtype.itemsize < 4 and not np.issubdtype(dtype, np.integer) and dtype != np.bool_:
        return np.dtype(np.float32)
    return dtype


def _legacy_broadcast(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Opset < 7 binary ops: with broadcast=1 and `axis`, B's dims align with A's from `axis`.

    Without `axis` the old rule matches B against A's trailing dims, which NumPy already does.
    """
    if node.opset >= 7 or not node.attrs.get("broadcast", 0) or "axis" not in node.attrs:
        return b
    axis = node.attrs["axis"] % max(a.ndim, 1)
    trailing = a.ndim - axis - b.ndim
    return b.reshape(b.shape + (1,) * max(trailing, 0))


def _binary(node: Node, ufunc: np.ufunc, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    b = _legacy_broadcast(node, a, b)
    with np.errstate(over="ignore"):  # integer wrap-around and float overflow to inf are ONNX's
        return ufunc(a, b).astype(a.dtype, copy=False)


@float_kernel("Add")
def add(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _binary(node, np.add, a, b)


@float_kernel("Sub")
def sub(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _binary(node, np.subtract, a, b)


@float_kernel("Mul")
def mul(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _binary(node, np.multiply, a, b)


@float_kernel("Div")
def div(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Float division, or integer division truncating toward zero (C semantics, as ONNX's
    reference and onnxruntime do), computed in integers so large int64 values stay exact."""
    b = _legacy_broadcast(node, a, b)
    if not np.issubdtype(a.dtype, np.integer):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.divide(a, b).astype(a.dtype, copy=False)
    with np.errstate(divide="ignore"):  # x / 0 is undefined in ONNX; NumPy yields 0
        q = np.floor_divide(a, b)
        r = np.remainder(a, b)
    # floor and truncation differ when the remainder is non-zero and the signs differ
    adjust = (r != 0) & ((a < 0) ^ (b < 0))
    return (q + adjust.astype(q.dtype)).astype(a.dtype, copy=False)


@float_kernel("Sum")
def sum_(node: Node, *xs: np.ndarray) -> np.ndarray:
    """Elementwise sum of one or more inputs with multidirectional broadcasting."""
    with np.errstate(over="ignore"):
        total = reduce(np.add, xs[1:], xs[0])
    return np.array(total, dtype=xs[0].dtype)  # a copy even for one input


@float_kernel("Relu")
def relu(node: Node, x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.zeros((), x.dtype))


@float_kernel("LeakyRelu")
def leaky_relu(node: Node, x: np.ndarray) -> np.ndarray:
    alpha = node.attrs.get("alpha", 0.01)
    return np.where(x < 0, x * alpha, x).astype(x.dtype, copy=False)


@float_kernel("PRelu")
def prelu(node: Node, x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """f(x) = slope * x for x < 0, x otherwise; `slope` broadcasts to x (unidirectionally)."""
    if node.opset < 7 and slope.ndim == 1 and x.ndim > 1 and slope.shape[0] == x.shape[1]:
        slope = slope.reshape((-1,) + (1,) * (x.ndim - 2))  # opset 6: one slope per channel
    return np.where(x < 0, x * slope, x).astype(x.dtype, copy=False)


@float_kernel("Clip")
def clip(node: Node, x: np.ndarray, lo: np.ndarray | None = None,
         hi: np.ndarray | None = None) -> np.ndarray:
    """Bounds are attributes `min`/`max` before opset 11, optional inputs from 11 on.

    max(min(...)) order makes every value `max` when min > max, as the spec states.
    """
    if node.opset < 11:
        lo = node.attrs.get("min")
        hi = node.attrs.get("max")
    y = x
    if lo is not None:
        y = np.maximum(y, np.asarray(lo).astype(x.dtype))
    if hi is not None:
        y = np.minimum(y, np.asarray(hi).astype(x.dtype))
    return np.array(y, dtype=x.dtype)


@float_kernel("Sigmoid")
def sigmoid(node: Node, x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x) written with e^-|x| so that no exponential overflows."""
    xw = x.astype(work_dtype(x.dtype), copy=False)
    e = np.exp(-np.abs(xw))
    y = np.where(xw >= 0, 1 / (1 + e), e / (1 + e))
    return y.astype(x.dtype, copy=False)


@float_kernel("Sqrt")
def sqrt(node: Node, x: np.ndarray) -> np.ndarray:
    """√x (NaN below 0, as ONNX's reference); WN's σ (seeds/004 eq. 9, passes/qat.py)."""
    with np.errstate(invalid="ignore"):
        return np.sqrt(x)


@float_kernel("Tanh")
def tanh(node: Node, x: np.ndarray) -> np.ndarray:
    return np.tanh(x.astype(work_dtype(x.dtype), copy=False)).astype(x.dtype, copy=False)


@float_kernel("HardSigmoid")
def hard_sigmoid(node: Node, x: np.ndarray) -> np.ndarray:
    """max(0, min(1, alpha * x + beta))."""
    alpha = node.attrs.get("alpha", 0.2)
    beta = node.attrs.get("beta", 0.5)
    xw = x.astype(work_dtype(x.dtype), copy=False)
    return np.clip(alpha * xw + beta, 0, 1).astype(x.dtype, copy=False)


@float_kernel("HardSwish")
def hard_swish(node: Node, x: np.ndarray) -> np.ndarray:
    """x * max(0, min(1, x / 6 + 1/2))."""
    xw = x.astype(work_dtype(x.dtype), copy=False)
    return (xw * np.clip(xw / 6 + 0.5, 0, 1)).astype(x.dtype, copy=False)
