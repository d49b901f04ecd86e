"""Integer pieces of the backward pass: gradient rounding points, saturation with counts, and
the exact integer products of Conv / Gemm backward (weight gradient and input gradient).

Rounding a gradient (`round_gradient`): codes c with real value c · 2^e / D0 (D0 the divisor the
tensor carries: 1, the batch N, a pooling count, the TBP sample count S) become codes of the
target step 2^t: c · 2^(e-t) / D0. With k = t - e:
- k < 0: c is first shifted left by -k (exact), then k = 0;
- D = D0 · 2^k. D == 1: exact, nothing drawn. D a power of two 2^s: `stochastic_round_shift`
  (qcc.core.numerics.rounding: floor((c + u) / 2^s), u = draw >> (32 - s)). Otherwise
  `stochastic_divide`: floor(c / D) + [draw · D < (c mod D) · 2^32], the exact integer Bernoulli
  test of qcc.core.numerics.binary.stochastic_ternarize. Both are unbiased and draw one number per
  element in C (row-major) order.
Integer products run on float64 BLAS only after checking every partial sum stays below 2^53, so
they are exact (the C side accumulates in int64).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from passes.training_program import GradRep
from qcc.core.errors import QccError
from qcc.core.ir import Node
from qcc.core.numerics.rounding import RngState, draw_u32, int_range, stochastic_round_shift
from qcc.core.ops.grads import col2im, conv_geometry, im2col

I64 = NDArray[np.int64]
EXACT = 1 << 53


def stochastic_divide(x: I64, divisor: int, state: RngState) -> tuple[I64, RngState]:
    """x / D rounded stochastically (1 <= D < 2^32): floor(x / D) plus one with probability
    (x mod D) / D, decided as draw · D < (x mod D) · 2^32 in uint64 arithmetic."""
    if not 1 <= divisor < 1 << 32:
        raise QccError(f"stochastic division by {divisor} is outside 1 .. 2^32 - 1")
    x = np.asarray(x, np.int64)
    draws, state = draw_u32(state, x.shape)
    quotient = x // divisor  # floor, also for negative x
    remainder = (x - quotient * divisor).astype(np.uint64)
    up = draws.astype(np.uint64) * np.uint64(divisor) < remainder << np.uint64(32)
    return quotient + up, state


def round_gradient(codes: I64, rep: GradRep, target_exp: int, batch: int,
                   state: RngState) -> tuple[I64, RngState]:
    """Codes of `rep` as codes of step 2^target_exp, unbiased (module docstring)."""
    codes = np.asarray(codes, np.int64)
    shift = target_exp - rep.exp
    if shift < 0:
        codes = codes << np.int64(-shift)
        shift = 0
    divisor = rep.divisor * (batch if rep.per_batch else 1) << shift
    if divisor == 1:
        return codes, state
    if divisor & (divisor - 1) == 0:
        return stochastic_round_shift(codes, divisor.bit_length() - 1, state)
    return stochastic_divide(codes, divisor, state)


def saturate(codes: I64, bits: int, counts: dict[str, int], name: str) -> I64:
    """Clip to the signed `bits`-wide range, adding the number clipped to counts[name]."""
    lo, hi = int_range(bits, True)
    clipped = int(np.count_nonzero((codes < lo) | (codes > hi)))
    if clipped:
        counts[name] = counts.get(name, 0) + clipped
    return np.clip(codes, lo, hi)


def _absmax(x: np.ndarray) -> int:
    return int(np.abs(x).max()) if x.size else 0


def _check_exact(terms: int, a: np.ndarray, b: np.ndarray, node: Node) -> None:
    if terms * _absmax(a) * _absmax(b) >= EXACT:
        raise QccError(f"node {node.name!r}: a backward product may exceed 2^53")


def _exact(x: np.ndarray) -> I64:
    return np.rint(x).astype(np.int64)


# -- Conv ---------------------------------------------------------------------------------------
def _conv_operands(node: Node, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                   dy: np.ndarray):
    groups = int(node.attrs.get("group", 1))
    geom = conv_geometry(node, x_shape, w_shape, dy.shape)
    n, m = dy.shape[0], w_shape[0]
    dy_cm = dy.reshape(n, m, -1).swapaxes(0, 1).reshape(groups, m // groups, -1)
    return groups, geom, dy_cm.astype(np.float64)


def conv_weight_grad(node: Node, x: np.ndarray, dy: I64, w_shape: tuple[int, ...]) -> I64:
    """Σ over batch and positions of dY ⊗ X patches: dW (same layout as W), exact."""
    groups, geom, dy_cm = _conv_operands(node, x.shape, w_shape, dy)
    c, k = x.shape[1], int(np.prod(geom.kernel))
    _check_exact(dy_cm.shape[2], dy, x, node)
    xf = x.astype(np.float64).swapaxes(0, 1)
    cols = im2col(geom.pad(xf), geom).reshape(groups, c // groups * k, -1)
    return _exact(np.matmul(dy_cm, cols.swapaxes(1, 2))).reshape(w_shape)


def conv_input_grad(node: Node, w: np.ndarray, dy: I64, x_shape: tuple[int, ...]) -> I64:
    """Wᵀ dY scattered back through the patches (col2im): dX, exact."""
    groups, geom, dy_cm = _conv_operands(node, x_shape, w.shape, dy)
    n, c = x_shape[:2]
    m, k = w.shape[0], int(np.prod(geom.kernel))
    _check_exact(m // groups * k, w, dy, node)
    wg = w.astype(np.float64).reshape(groups, m // groups, -1).swapaxes(1, 2)
    dcols = np.matmul(wg, dy_cm).reshape((c, k, n) + geom.out_spatial)
    dx = col2im(dcols, geom).swapaxes(0, 1)
    return _exact(dx)


# -- Gemm ---------------------------------------------------------------------------------------
def gemm_weight_grad(node: Node, x: np.ndarray, dy: I64) -> I64:
    """dW in W's layout: dYᵀ X (transB, W is (M, K)) or Xᵀ dY (W is (K, M)), exact."""
    _check_exact(x.shape[0], dy, x, node)
    xf, dyf = x.astype(np.float64), dy.astype(np.float64)
    return _exact(dyf.T @ xf if node.attrs.get("transB", 0) else xf.T @ dyf)


def gemm_input_grad(node: Node, w: np.ndarray, dy: I64) -> I64:
    """dX = dY W (transB) or dY Wᵀ, exact."""
    _check_exact(dy.shape[1], w, dy, node)
    wf, dyf = w.astype(np.float64), dy.astype(np.float64)
    return _exact(dyf @ wf if node.attrs.get("transB", 0) else dyf @ wf.T)
