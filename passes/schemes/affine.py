"""The affine (gemmlowp) scheme of seeds/000 §B: scale and zero point, integer requantization.

- Activations: `bits`-wide unsigned codes, real = scale · (code − zero_point). The clamping range
  is the average over K calibration chunks of each chunk's minimum and maximum (seeds/000 §B:
  it "reduces the dynamic range variance and allows smaller quantization steps"), widened to
  contain 0 so that zero (the padding value, the ReLU floor) has an exact code; scale and the
  nudged zero point follow gemmlowp / TFLite's ChooseQuantizationParams
  (qcc.core.numerics.affine.choose_qparams).
- Weights: signed, symmetric (zero point 0) with one scale per output channel:
  scale_c = max|w_c| / (2^(B−1) − 1), codes round(w / scale_c) in [−(2^(B−1) − 1), 2^(B−1) − 1]
  (the narrow range, so that −w is representable whenever w is).

Requantization is shared with every scheme (passes/quantize_graph.py): the ratio
scale_x · scale_w,c / scale_y becomes an integer multiplier and a shift per output channel, and
the zero points are subtracted before (input) and added after (output) the exact accumulation.
"""

from __future__ import annotations

import numpy as np

from passes.calibrate import TensorStats
from passes.schemes.base import CodeFormat, Scheme, register_scheme
from qcc.core.numerics.affine import choose_qparams
from qcc.core.numerics.rounding import int_range, round_half_away
from qcc.core.quant_spec import QuantSpec


@register_scheme
class AffineScheme(Scheme):
    """seeds/000 §B: unsigned activations with zero points, per-channel symmetric weights."""

    name = "affine"
    weight_bits = (2, 16)  # symmetric signed weights: 1 bit would leave only the code 0

    def activation(self, stats: TensorStats, bits: int) -> CodeFormat:
        params = choose_qparams(stats.chunk_lo, stats.chunk_hi, bits, signed=False)
        lo, hi = int_range(bits, signed=False)
        return CodeFormat(float(params.scale), params.zero_point, lo, hi, params.to_spec())

    def weight(self, w: np.ndarray, bits: int, axis: int,
               min_scale: np.ndarray | None = None) -> tuple[np.ndarray, CodeFormat]:
        scales = channel_scales(w, bits, axis)
        if min_scale is not None:
            scales = np.maximum(scales, min_scale)
        shape = [1] * w.ndim
        shape[axis] = -1
        qmax = (1 << (bits - 1)) - 1
        codes = np.clip(round_half_away(w / scales.reshape(shape)), -qmax, qmax)
        spec = QuantSpec(format="affine", bits=bits, signed=True, scale=float(scales.max()),
                         zero_point=0, extra={"axis": axis, "scales": scales.tolist()})
        return codes.astype(np.int64), CodeFormat(tuple(scales.tolist()), 0, -qmax, qmax, spec)


# a channel whose largest weight is this far below the layer's largest is numerically zero (below
# float32's resolution of the layer's accumulations): BatchNorm folding leaves such dead channels
# (weights ~1e-30 in MLPerf Tiny's MobileNet), whose own scale would put their bias beyond int32
DEAD_CHANNEL = 2.0 ** -24


def channel_absmax(w: np.ndarray, axis: int) -> np.ndarray:
    """max|w_c| for each index c of `axis`, as float64."""
    others = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    absmax = np.abs(np.asarray(w, dtype=np.float64)).max(axis=others) if others else np.abs(w)
    return np.atleast_1d(absmax).astype(np.float64)


def channel_scales(w: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """max|w_c| / (2^(B−1) − 1) per index c of `axis`; an all-zero (or dead, DEAD_CHANNEL)
    channel borrows the largest scale (its codes are 0 whatever the scale, and the bias and
    requantization ratios stay representable)."""
    qmax = (1 << (bits - 1)) - 1
    scales = channel_absmax(w, axis) / qmax
    fallback = scales.max() if np.any(scales > 0) else 1.0
    return np.where(scales > fallback * DEAD_CHANNEL, scales, fallback)
