"""QuantizeLinear and DequantizeLinear: the affine quantizer of ONNX (seeds/000 §B, gemmlowp).

    QuantizeLinear:   y = saturate(round_half_even(x / y_scale) + y_zero_point)
    DequantizeLinear: y = (x - x_zero_point) · x_scale

seeds/000 §B writes output = round(x / scale + zero_point); with an integer zero point that is
the same number, and ONNX pins the rounding (ties to even) and the saturation to the type.

Scale and zero point are per tensor (a scalar or a 1-element vector), per axis (a vector along
`axis`) or blocked (same rank as x, each entry repeated `block_size` times along `axis`).
Integer targets are uint8/int8/uint16/int16/uint4/int4/uint2/int2; float targets (float8, float4,
float6) round to nearest even, with `saturate` clipping float8 overflow to the largest finite
value. Sub-byte and float8 types are the ml_dtypes NumPy types onnx itself uses.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
from onnx import helper

from qcc.core.errors import QccError
from qcc.core.ir import Node
from qcc.core.registry import declare, float_kernel

FLOAT8 = {np.dtype(t) for t in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz,
                                  ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz)}
# types without an inf or NaN encoding: their cast always saturates
SMALL_FLOATS = {np.dtype(t) for t in (ml_dtypes.float4_e2m1fn, ml_dtypes.float6_e2m3fn,
                                       ml_dtypes.float6_e3m2fn)}
INTEGERS = {np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, ml_dtypes.uint4,
                                   ml_dtypes.int4, ml_dtypes.uint2, ml_dtypes.int2)}

# a pre-quantized model's float edges (backends/c/emit.py: the C library's input and output)
declare("QuantizeLinear", float_edge="quantize")
declare("DequantizeLinear", float_edge="dequantize")


def broadcast_param(node: Node, p: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Scale or zero point shaped to broadcast against an input of `shape` (ONNX axis rules)."""
    block = int(node.attrs.get("block_size", 0))
    if p.ndim == 0 or (p.size == 1 and block <= 0):
        return p.reshape(())
    axis = int(node.attrs.get("axis", 1))
    if not -len(shape) <= axis < len(shape):
        raise QccError(f"{node.op_type} {node.name!r}: axis {axis} is out of range for rank "
                       f"{len(shape)}")
    axis %= len(shape)
    if block <= 0:
        if p.ndim != 1 or p.size != shape[axis]:
            raise QccError(f"{node.op_type} {node.name!r}: per-axis parameter of shape "
                           f"{p.shape} does not match axis {axis} of {shape}")
        return p.reshape(tuple(-1 if i == axis else 1 for i in range(len(shape))))
    expanded = np.repeat(p, block, axis=axis)[(slice(None),) * axis + (slice(0, shape[axis]),)]
    if p.ndim != len(shape) or expanded.shape != tuple(shape):
        raise QccError(f"{node.op_type} {node.name!r}: blocked parameter of shape {p.shape} "
                       f"with block_size {block} does not cover input {shape} along {axis}")
    return expanded


def _output_dtype(node: Node, zero_point: np.ndarray | None) -> np.dtype:
    """The zero point's type, else the output_dtype attribute, else uint8 (ONNX rule)."""
    if zero_point is not None:
        return zero_point.dtype
    code = node.attrs.get("output_dtype", 0)
    return np.dtype(helper.tensor_dtype_to_np_dtype(code)) if code else np.dtype(np.uint8)


def _int_range(dtype: np.dtype) -> tuple[int, int]:
    info = ml_dtypes.iinfo(dtype)
    return int(info.min), int(info.max)


@float_kernel("QuantizeLinear")
def quantize_linear(node: Node, x: np.ndarray, y_scale: np.ndarray,
                    y_zero_point: np.ndarray | None = None) -> np.ndarray:
    """y = saturate(round_half_even(x / y_scale) + y_zero_point) (seeds/000 §B)."""
    out = _output_dtype(node, y_zero_point)
    # the division runs in `precision` if given, else in the scale's type (ONNX QuantizeLinear)
    code = node.attrs.get("precision", 0)
    prec = np.dtype(helper.tensor_dtype_to_np_dtype(code)) if code else y_scale.dtype
    if prec.kind != "f" and prec not in (np.dtype(ml_dtypes.bfloat16),):
        prec = np.dtype(np.float32)
    scale = broadcast_param(node, y_scale, x.shape).astype(prec)
    q = x.astype(prec) / scale
    if out in INTEGERS:
        lo, hi = _int_range(out)
        q = np.rint(q.astype(np.float32, copy=False))  # np.rint rounds half to even
        if y_zero_point is not None:
            q += broadcast_param(node, y_zero_point, x.shape).astype(np.float32)
        return np.clip(q, lo, hi).astype(out)
    if out in FLOAT8:
        q = q.astype(np.float32, copy=False)
        if node.attrs.get("saturate", 1):
            big = float(ml_dtypes.finfo(out).max)
            q = np.clip(q, -big, big)  # inf -> +-max; NaN stays NaN
        return q.astype(out)  # ml_dtypes casts round to nearest even
    if out in SMALL_FLOATS:
        if y_zero_point is not None:
            q = q + broadcast_param(node, y_zero_point, x.shape).astype(q.dtype)
        return q.astype(np.float32, copy=False).astype(out)
    raise QccError(f"QuantizeLinear {node.name!r}: unsupported output type {out}")


@float_kernel("DequantizeLinear")
def dequantize_linear(node: Node, x: np.ndarray, x_scale: np.ndarray,
                      x_zero_point: np.ndarray | None = None) -> np.ndarray:
    """y = (x - x_zero_point) · x_scale, computed in float32 then cast to the output type."""
    code = node.attrs.get("output_dtype", 0)
    out = np.dtype(helper.tensor_dtype_to_np_dtype(code)) if code else x_scale.dtype
    dx = x.astype(np.float32)
    if x_zero_point is not None and x.dtype not in FLOAT8 | SMALL_FLOATS:
        if x_zero_point.dtype != x.dtype:
            raise QccError(f"DequantizeLinear {node.name!r}: zero point type "
                           f"{x_zero_point.dtype} differs from input type {x.dtype}")
        dx -= broadcast_param(node, x_zero_point, x.shape).astype(np.float32)
    elif x_zero_point is not None and np.any(x_zero_point.astype(np.float32) != 0):
        raise QccError(f"DequantizeLinear {node.name!r}: a float8/float4 zero point must be 0")
    return (dx * broadcast_param(node, x_scale, x.shape).astype(np.float32)).astype(out)
