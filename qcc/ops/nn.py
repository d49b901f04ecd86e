"""Weighted and windowed ops: Conv, Gemm, MatMul, pools, normalisations."""

from __future__ import annotations

import numpy as np

from qcc.ir import Node
from qcc.registry import float_kernel


@float_kernel("Gemm")
def gemm(node: Node, a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None) -> np.ndarray:
    """Y = alpha * A' B' + beta * C, A' and B' transposed when transA / transB are set."""
    a = a.T if node.attrs.get("transA", 0) else a
    b = b.T if node.attrs.get("transB", 0) else b
    y = node.attrs.get("alpha", 1.0) * (a @ b)
    if c is not None:
        y = y + node.attrs.get("beta", 1.0) * c
    return y.astype(a.dtype, copy=False)
