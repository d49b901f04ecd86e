"""XNOR-popcount accumulators of the QConv / QGemm nodes marked dot = "xnor".

Such a layer (passes/quantize_graph.py, LayerConfig.binary_activations) multiplies sign
activations by binary weights. It reads its input codes x in whatever format they have and uses
a = sign(x − x_zero_point) ∈ {−1, +1}, sign(0) = +1 (qcc.core.numerics.binary); its weight codes are
±1 (the binary scheme). Activation patches and weight rows are packed into uint32 words in the
layout of qcc.core.numerics.binary.pack_signs (element 32w + j in bit j of word w, +1 -> 1, padding
bits 0), and for a, w ∈ {−1, +1}^n

    a·w = 2·popcount(XNOR(a, w)) − n,

with the portable SWAR popcount (qcc.core.numerics.binary.popcount32) that the C runtime uses too.

Zero padding: a padded tap holds 0, which is neither +1 nor −1. Every patch carries the mask of
its real taps, and a·w = 2·popcount(XNOR(a, w) & valid) − popcount(valid): the exact dot product
over the zero-padded input, as Conv defines it. Without padding the mask only clears the unused
bits of the last word.

The functions return the exact int64 accumulator with the bias added; kernels.py requantizes it.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from qcc.core.errors import QccError
from qcc.core.ir import Node
from qcc.core.layers import weight_rows
from qcc.core.numerics.binary import popcount32
from qcc.core.ops import nn

U32 = NDArray[np.uint32]
I64 = NDArray[np.int64]
BLOCK_WORDS = 1 << 22  # XNOR words per block of rows: bounds each temporary to ~16 MB
PATCH_BYTES = 1 << 25  # im2col sign patches per chunk of images (~32 MB)


def pack_rows(bits: NDArray[np.bool_]) -> U32:
    """Booleans along the last axis -> uint32 words (..., ceil(n/32)), pack_signs' layout."""
    n = bits.shape[-1]
    padded = np.zeros(bits.shape[:-1] + (-(-n // 32) * 32,), dtype=np.uint8)
    padded[..., :n] = bits
    # little bit order + little-endian words: element i lands in bit i % 32 of word i // 32
    return np.packbits(padded, axis=-1, bitorder="little").view("<u4").astype(np.uint32)


def xnor_matmul(a: U32, w: U32, valid: U32) -> I64:
    """a (R, W) packed signs, w (M, W) packed weight rows, valid (R, W) packed masks ->
    (R, M) dot products 2·popcount(XNOR(a, w) & valid) − popcount(valid)."""
    rows = max(1, BLOCK_WORDS // max(1, w.size))
    n_valid = popcount32(valid).sum(axis=-1, dtype=np.int64)
    out = np.empty((a.shape[0], w.shape[0]), dtype=np.int64)
    for start in range(0, a.shape[0], rows):  # blocks of rows: memory, not element loops
        blk = slice(start, start + rows)
        agree = ~(a[blk, None, :] ^ w[None, :, :]) & valid[blk, None, :]
        out[blk] = 2 * popcount32(agree).sum(axis=-1, dtype=np.int64) - n_valid[blk, None]
    return out


def sign_codes(x: np.ndarray, zero_point: int = 0) -> I64:
    """a = sign(x − zero_point) ∈ {−1, +1} as int64, sign(0) = +1: the activations a layer with
    dot = "xnor" multiplies (what training's backward reads)."""
    return np.where(x.astype(np.int64) >= zero_point, 1, -1).astype(np.int64)


def _signs(node: Node, x: np.ndarray) -> NDArray[np.bool_]:
    """True where sign(x − zx) = +1 (sign(0) = +1)."""
    return x.astype(np.int64) >= int(node.attrs.get("x_zero_point", 0))


def _weight_signs(node: Node, w: np.ndarray) -> NDArray[np.bool_]:
    if w.size and not np.all(np.abs(w.astype(np.int64)) == 1):
        raise QccError(f"node {node.name!r}: dot = 'xnor' needs weight codes ±1 (binary scheme)")
    return w > 0


def _add_bias(acc: I64, b: np.ndarray | None, axis: int) -> I64:
    if b is None:
        return acc
    shape = [1] * acc.ndim
    shape[axis] = -1
    return acc + b.astype(np.int64).reshape(shape)


def gemm_acc(node: Node, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> I64:
    """QGemm: x (N, K) times W (K, M), or W (M, K) with transB, as XNOR-popcounts."""
    rows = _weight_signs(node, weight_rows(node, w))  # (M, K)
    signs = _signs(node, x)
    a = pack_rows(signs.reshape(-1, signs.shape[-1]))
    valid = np.broadcast_to(pack_rows(np.ones(signs.shape[-1], dtype=bool)), a.shape)
    acc = xnor_matmul(a, pack_rows(rows), valid).reshape(signs.shape[:-1] + (rows.shape[0],))
    return _add_bias(acc, b, axis=-1)


def conv_acc(node: Node, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> I64:
    """QConv as XNOR-popcounts over im2col patches (strides, dilations, pads, groups)."""
    win = nn.conv_window(node, x.shape, w.shape)
    patch_bytes = math.prod(x.shape[1:]) * math.prod(win.kernel)  # per image, about
    images = max(1, PATCH_BYTES // max(1, patch_bytes))
    acc = np.concatenate([_conv_chunk(node, x[i:i + images], w, win)
                          for i in range(0, x.shape[0], images)])
    return _add_bias(acc, b, axis=1)


def _conv_chunk(node: Node, x: np.ndarray, w: np.ndarray, win: nn.Window) -> I64:
    groups = int(node.attrs.get("group", 1))
    signs = win.pad(_signs(node, x))
    real = win.pad(np.ones((1, 1) + x.shape[2:], dtype=bool))
    taps = list(win.taps())
    patches = np.stack([signs[(..., *sl)] for sl in taps], axis=-1)  # (N, C, *out, T)
    masks = np.stack([real[(..., *sl)] for sl in taps], axis=-1)  # (1, 1, *out, T)
    n, positions = x.shape[0], math.prod(win.out_spatial)
    out_ch, cg = w.shape[0], w.shape[1]
    mg = out_ch // groups
    w_signs = _weight_signs(node, w).reshape(out_ch, -1)
    acc = np.empty((n, out_ch, positions), dtype=np.int64)
    for g in range(groups):  # groups: separate GEMMs, as in the float Conv
        part = np.moveaxis(patches[:, g * cg:(g + 1) * cg], 1, -2)  # (N, *out, Cg, T)
        a = pack_rows(part.reshape(n * positions, -1))
        mask = np.broadcast_to(np.moveaxis(masks[0], 0, -2), part.shape[1:])  # (*out, Cg, T)
        valid = np.tile(pack_rows(mask.reshape(positions, -1)), (n, 1))
        dots = xnor_matmul(a, pack_rows(w_signs[g * mg:(g + 1) * mg]), valid)
        acc[:, g * mg:(g + 1) * mg] = dots.reshape(n, positions, mg).transpose(0, 2, 1)
    return acc.reshape((n, out_ch) + win.out_spatial)
