"""Elementwise ops: arithmetic with NumPy broadcasting, and activations."""

from __future__ import annotations

import numpy as np

from qcc.ir import Node
from qcc.registry import float_kernel


@float_kernel("Relu")
def relu(node: Node, x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.zeros((), x.dtype))


@float_kernel("Add")
def add(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.add(a, b, dtype=a.dtype)
