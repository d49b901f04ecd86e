"""The binary and ternary weight schemes (`--scheme binary`, `--scheme ternary`).

binary: weight codes sign(W) ∈ {-1, +1} (sign(0) = +1), scale α_c = mean |W| over output channel
c: XNOR-Net's closed form, the α minimising ||W − α·sign(W)||² (BinaryConnect's deterministic
binarization with that scale). qcc.core.numerics.binary.binarize does the arithmetic.

ternary: codes {-1, 0, +1}, TWN's threshold rule per output channel: Δ_c = 0.7·mean|W_c|, a weight
is kept (±1) when |W| > Δ_c, and α_c = the mean |W| of the kept weights of channel c (the α
minimising the error for that support); a channel with nothing kept has α_c = 1 and all-zero
codes. Per tensor this is exactly qcc.core.numerics.binary.ternarize.

Both take their bit width from the format (1 and 2 bits): the `bits` a layer asks for apply to its
activations, which are fixed point as in the `fixed` scheme. Sign activations, so that a layer's
dot products are 2·popcount(XNOR(a, w)) − n, are asked per layer with
LayerConfig.binary_activations (passes/quantize_graph.py marks the layer dot = "xnor" and
backends/numpy_int/xnor.py computes it).
"""

from __future__ import annotations

import numpy as np

from passes.calibrate import TensorStats
from passes.schemes.base import CodeFormat, Scheme, register_scheme
from passes.schemes.fixed import FixedScheme
from qcc.core.numerics import binary
from qcc.core.quant_spec import QuantSpec

TWN_DELTA = 0.7  # TWN's Δ = 0.7·mean|W| (Li & Liu 2016), as in qcc.core.numerics.binary.ternarize


def _others(w: np.ndarray, axis: int) -> tuple[int, ...]:
    return tuple(i for i in range(w.ndim) if i != axis % w.ndim)


def ternarize_channels(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes in {-1, 0, 1}, α per channel along `axis`) by the threshold rule above."""
    w = np.asarray(w, dtype=np.float64)
    magnitude = np.abs(w)
    others = _others(w, axis)
    kept = magnitude > TWN_DELTA * magnitude.mean(axis=others, keepdims=True)
    count = kept.sum(axis=others)
    total = np.where(kept, magnitude, 0.0).sum(axis=others)
    alpha = np.where(count > 0, total / np.maximum(count, 1), 1.0)
    return (np.sign(w) * kept).astype(np.int8), alpha


class _WeightOnlyScheme(Scheme):
    """Fixed-point activations; subclasses define the weight codes."""

    def activation(self, stats: TensorStats, bits: int) -> CodeFormat:
        return FixedScheme().activation(stats, bits)


@register_scheme
class BinaryScheme(_WeightOnlyScheme):
    name = "binary"

    def weight(self, w: np.ndarray, bits: int, axis: int,
               min_scale: np.ndarray | None = None) -> tuple[np.ndarray, CodeFormat]:
        codes, alpha = binary.binarize(w, axis)
        scales = np.maximum(alpha.ravel(), np.finfo(np.float32).tiny)  # an all-zero channel
        spec = QuantSpec(format="binary", bits=1, signed=True, scale=float(scales.mean()))
        if min_scale is not None:  # ±1 codes do not depend on α
            scales = np.maximum(scales, min_scale)
        return codes, CodeFormat(tuple(float(s) for s in scales), 0, -1, 1, spec, (-1, 1))


@register_scheme
class TernaryScheme(_WeightOnlyScheme):
    name = "ternary"

    def weight(self, w: np.ndarray, bits: int, axis: int,
               min_scale: np.ndarray | None = None) -> tuple[np.ndarray, CodeFormat]:
        codes, alpha = ternarize_channels(w, axis)
        spec = QuantSpec(format="ternary", bits=2, signed=True, scale=float(alpha.mean()))
        if min_scale is not None:  # {-1, 0, 1} codes do not depend on α
            alpha = np.maximum(alpha, min_scale)
        return codes, CodeFormat(tuple(float(a) for a in alpha), 0, -1, 1, spec, None)
