"""Affine (scale, zero point) quantization: gemmlowp / TFLite / ONNX QuantizeLinear arithmetic.

real = scale * (code - zero_point), codes uint8/int8 (or any width up to 16 bits). This module
holds, ahead of any kernel:
- choosing (scale, zero_point) from a range with zero exactly representable: `choose_qparams`
  (gemmlowp / TFLite ChooseQuantizationParams, "nudged" zero point) and `banner_qparams`
  (seeds/000 §B written literally); the clamping range of activations is the average over K
  chunks of their min and max (`chunked_minmax`, seeds/000 §B);
- `quantize_linear` / `dequantize_linear` with ONNX semantics (float32 x / scale, ties to even,
  saturate), as onnxruntime computes them;
- requantizing an int32 accumulator to the output codes, either integer-only with a 32-bit
  fixed-point multiplier (`requantize_fixedpoint`: TFLite's MultiplyByQuantizedMultiplier +
  zero point + clamp) or with onnxruntime's float32 requantization (`requantize_float`, what
  ORT's QLinearMatMul / QLinearConv do on CPU, needed to be bit-exact with it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from qcc.core.numerics.rounding import (
    int_range,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    round_half_away,
    saturate,
)
from qcc.core.quant_spec import QuantSpec

I64 = NDArray[np.int64]


@dataclass(frozen=True)
class AffineParams:
    """Per-tensor affine quantization: real = scale * (code - zero_point)."""

    scale: float
    zero_point: int
    bits: int = 8
    signed: bool = False

    @property
    def code_range(self) -> tuple[int, int]:
        return int_range(self.bits, self.signed)

    def nudged_range(self) -> tuple[float, float]:
        """The real interval the codes span once the zero point has been rounded."""
        lo, hi = self.code_range
        return self.scale * (lo - self.zero_point), self.scale * (hi - self.zero_point)

    def to_spec(self) -> QuantSpec:
        return QuantSpec(format="affine", bits=self.bits, signed=self.signed, scale=self.scale,
                         zero_point=self.zero_point)


def choose_qparams(vmin: float, vmax: float, bits: int = 8, signed: bool = False) -> AffineParams:
    """gemmlowp / TFLite ChooseQuantizationParams with a nudged zero point.

    The range is first widened to contain 0 (so 0.0 has an exact code, needed for zero padding).
    scale = (vmax - vmin) / (qmax - qmin); the zero point is computed from whichever end gives the
    smaller rounding error, rounded half away from zero and clamped into [qmin, qmax]. The empty
    range [0, 0] gets scale 1.0 and zero point qmin clamped to 0 (TFLite returns scale 0, which
    cannot be divided by).
    """
    qmin, qmax = int_range(bits, signed)
    vmin, vmax = min(float(vmin), 0.0), max(float(vmax), 0.0)
    if vmin == vmax:
        return AffineParams(1.0, max(qmin, 0), bits, signed)
    scale = (vmax - vmin) / (qmax - qmin)
    from_min, from_max = qmin - vmin / scale, qmax - vmax / scale
    error_min = abs(qmin) + abs(vmin / scale)
    error_max = abs(qmax) + abs(vmax / scale)
    zero = from_min if error_min < error_max else from_max
    zero_point = int(np.clip(round_half_away(zero), qmin, qmax))
    return AffineParams(scale, zero_point, bits, signed)


def banner_qparams(vmin: float, vmax: float, bits: int = 8) -> AffineParams:
    """seeds/000 §B literally: scale = (vmax - vmin) / 2^M, zp = round(clip(-vmin/scale, 0, 2^M)).

    Unsigned codes. The paper's clip bound 2^M is not an M-bit code; it is only reached when
    vmax <= 0, and we clamp it to 2^M - 1. "round" is taken as half away from zero.
    """
    if not vmax > vmin:
        raise ValueError("banner_qparams needs vmax > vmin")
    scale = (float(vmax) - float(vmin)) / 2**bits
    zero = round_half_away(np.clip(-float(vmin) / scale, 0, 2**bits))
    return AffineParams(scale, int(min(zero, 2**bits - 1)), bits, signed=False)


def chunked_minmax(x: ArrayLike, chunks: int) -> tuple[float, float]:
    """Clamping range of seeds/000 §B: the mean over K chunks of each chunk's min and max.

    The tensor is flattened in C order and split into `chunks` nearly equal contiguous pieces
    (np.array_split), so for an NCHW batch whose size K divides, a chunk is N/K whole samples.
    """
    flat = np.asarray(x, dtype=np.float64).ravel()
    if not 1 <= chunks <= flat.size:
        raise ValueError(f"need 1 <= chunks <= {flat.size}, got {chunks}")
    pieces = np.array_split(flat, chunks)
    return (float(np.mean([p.min() for p in pieces])), float(np.mean([p.max() for p in pieces])))


def _along_axis(param: ArrayLike, ndim: int, axis: int | None) -> np.ndarray:
    """Reshape a per-axis (1-D) parameter so it broadcasts along `axis` of an ndim tensor."""
    param = np.asarray(param)
    if param.ndim == 0 or axis is None:
        return param
    shape = [1] * ndim
    shape[axis] = param.size
    return param.reshape(shape)


def quantize_linear(x: ArrayLike, scale: ArrayLike, zero_point: ArrayLike, bits: int = 8,
                    signed: bool = False, axis: int | None = 1) -> tuple[I64, int]:
    """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point); (codes, overflow).

    Arithmetic in float32 when x is float32 (as onnxruntime's MLAS kernel does); a 1-D scale and
    zero point apply along `axis` (ONNX default 1). NaN is refused.
    """
    x = np.asarray(x)
    dtype = x.dtype if x.dtype in (np.float16, np.float32, np.float64) else np.float64
    x = x.astype(dtype)
    if np.any(np.isnan(x)):
        raise ValueError("cannot quantize NaN")
    scale = _along_axis(np.asarray(scale, dtype=dtype), x.ndim, axis)
    zero = _along_axis(np.asarray(zero_point, dtype=np.int64), x.ndim, axis)
    lo, hi = int_range(bits, signed)
    with np.errstate(over="ignore"):
        scaled = np.rint(x / scale)  # rint: ties to even, in the working float type
    scaled = np.clip(scaled.astype(np.float64), lo - 1 - zero, hi + 1 - zero)
    return saturate(scaled.astype(np.int64) + zero, bits, signed)


def dequantize_linear(codes: ArrayLike, scale: ArrayLike, zero_point: ArrayLike,
                      axis: int | None = 1) -> NDArray[np.float32]:
    """ONNX DequantizeLinear: float32(code - zero_point) * float32 scale."""
    codes = np.asarray(codes, dtype=np.int64)
    scale = _along_axis(np.asarray(scale, dtype=np.float32), codes.ndim, axis)
    zero = _along_axis(np.asarray(zero_point, dtype=np.int64), codes.ndim, axis)
    return (codes - zero).astype(np.float32) * scale


def quantize(x: ArrayLike, params: AffineParams) -> tuple[I64, int]:
    """`quantize_linear` with per-tensor `AffineParams`."""
    return quantize_linear(x, np.float32(params.scale), params.zero_point, params.bits,
                           params.signed, axis=None)


def dequantize(codes: ArrayLike, params: AffineParams) -> NDArray[np.float32]:
    return dequantize_linear(codes, np.float32(params.scale), params.zero_point, axis=None)


def requantize_fixedpoint(acc: ArrayLike, multiplier: ArrayLike, shift: ArrayLike,
                          zero_point: int, bits: int = 8, signed: bool = False,
                          clamp: tuple[int, int] | None = None) -> tuple[I64, int]:
    """int32 accumulator -> output codes, integer only (TFLite reference integer kernels).

    code = clamp(MultiplyByQuantizedMultiplier(acc, multiplier, shift) + zero_point), with
    (multiplier, shift) = quantize_multiplier(in_scale * w_scale / out_scale). `clamp` narrows the
    output range further (a fused ReLU / ReLU6); the overflow count counts values it clipped.
    """
    scaled = multiply_by_quantized_multiplier(acc, multiplier, shift).astype(np.int64)
    out, overflow = saturate(scaled + zero_point, bits, signed)
    if clamp is None:
        return out, overflow
    return np.clip(out, *clamp), overflow + int(np.count_nonzero((out < clamp[0]) |
                                                                  (out > clamp[1])))


def requantize_float(acc: ArrayLike, scale: ArrayLike, zero_point: int, bits: int = 8,
                     signed: bool = False) -> tuple[I64, int]:
    """int32 accumulator -> output codes the way onnxruntime's CPU QLinear kernels do it.

    MLAS MlasRequantizeOutput: float32(acc) * float32 scale, clamped to [qmin - zp, qmax - zp],
    rounded to nearest even, plus the zero point. `scale` must be computed as ORT does
    (`ort_output_scale`). Not integer-only: kept for bit-exactness with onnxruntime.
    """
    product = np.asarray(acc, dtype=np.int64).astype(np.float32) * np.asarray(scale, np.float32)
    lo, hi = int_range(bits, signed)
    rounded = np.rint(np.clip(product, np.float32(lo - 1 - zero_point),
                              np.float32(hi + 1 - zero_point)))
    return saturate(rounded.astype(np.int64) + zero_point, bits, signed)


def ort_output_scale(a_scale: ArrayLike, b_scale: ArrayLike, y_scale: ArrayLike) -> np.ndarray:
    """a_scale * b_scale / y_scale in float32, in the operation order onnxruntime uses."""
    a, b, y = (np.asarray(v, dtype=np.float32) for v in (a_scale, b_scale, y_scale))
    return (a * b) / y


def fixedpoint_multiplier(a_scale: float, b_scale: float,
                          y_scale: float) -> tuple[np.ndarray | int, np.ndarray | int]:
    """(multiplier, shift) of the real rescale a_scale * b_scale / y_scale (computed in double)."""
    real = np.asarray(a_scale, np.float64) * np.asarray(b_scale, np.float64) / y_scale
    return quantize_multiplier(real)
