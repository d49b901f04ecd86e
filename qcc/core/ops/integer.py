"""qcc's own integer ops (domain `qcc`): what their outputs are. Their kernels live in
backends/numpy_int (the arithmetic's specification) and backends/c.

- `Quantize` (float -> codes), `Requantize`, `QConv`, `QGemm`, `QAdd`: codes in
  [out_lo, out_hi], stored in the narrowest integer type holding them
  (qcc.core.numerics.codes.storage_dtype); their arithmetic is qcc.core.requant.Requant.
- `QAveragePool`: an AveragePool whose windows all count the same n taps, with its own output
  format: Σ_window (x − x_zero_point) requantized by M·2^-S = s_x / (n·s_y) (attributes of
  AveragePool plus those of the Requant), one rounding instead of a mean at the input's step.
- `Dequantize`: codes -> float32.
- `QSoftmax`: probabilities as codes in [out_lo, out_hi] from codes, by the tables of
  qcc.core.numerics.softmax (inputs: codes, LOW, HIGH; attributes axis, flatten,
  out_frac_bits, out_zero_point).
- `QLogSoftmax`: log-probabilities as codes in [out_lo, out_hi] from codes, by
  qcc.core.numerics.log_softmax (inputs: codes, LOW, HIGH; attributes axis, flatten,
  diff_mult, log_mult, d_cap, out_zero_point).
- `QLinearGemm`, `QLinearAdd`, `QLinearGlobalAveragePool`, `QLinearRequantize`,
  `QLinearSoftmax`: onnxruntime's
  com.microsoft contrib ops of the same inputs (uint8 / int8 codes of the output zero point's
  type, else of the input's).
"""

from __future__ import annotations

import numpy as np

from qcc.core.errors import QccError
from qcc.core.ir import Node
from qcc.core.numerics.codes import CODE_PRESERVING, storage_dtype
from qcc.core.registry import TensorType, declare, shape_fn
from qcc.core.shapes import onnx_output_types, same_shape

declare("Quantize", float_edge="quantize")
declare("Dequantize", float_edge="dequantize")
for _op in CODE_PRESERVING:
    declare(_op, moves_codes=True)

CONV_ATTRS = ("strides", "pads", "dilations", "group", "kernel_shape", "auto_pad")
POOL_ATTRS = ("strides", "pads", "kernel_shape", "auto_pad", "ceil_mode", "count_include_pad")
FLOAT32 = np.dtype(np.float32)


def code_dtype(node: Node) -> np.dtype:
    """The storage type of a requantizing op's output codes, from its [out_lo, out_hi]."""
    if "out_lo" not in node.attrs or "out_hi" not in node.attrs:
        raise QccError(f"{node.op_type} {node.name!r}: no output code range (out_lo, out_hi)")
    return storage_dtype(int(node.attrs["out_lo"]), int(node.attrs["out_hi"]))


@shape_fn("Quantize")
def _quantize(node: Node, inputs: list[TensorType | None]) -> list[TensorType]:
    """Codes of the input's shape, or of its dims in `perm` order (a folded NHWC Transpose)."""
    x = inputs[0]
    perm = node.attrs.get("perm")
    if perm is None or x is None or x.shape is None:
        return [same_shape(x, code_dtype(node))]
    return [TensorType(tuple(x.shape[int(p)] for p in perm), code_dtype(node))]


@shape_fn("Requantize", "QSoftmax", "QLogSoftmax")
def _codes_like_input(node: Node, inputs: list[TensorType | None]) -> list[TensorType]:
    return [same_shape(inputs[0], code_dtype(node))]


@shape_fn("Dequantize")
def _dequantize(node: Node, inputs: list[TensorType | None]) -> list[TensorType]:
    return [same_shape(inputs[0], FLOAT32)]


@shape_fn("QConv")
def _qconv(node: Node, inputs: list[TensorType | None]) -> list[TensorType]:
    conv = onnx_output_types(node, [_as_float(t) for t in inputs], "Conv",
                             {k: v for k, v in node.attrs.items() if k in CONV_ATTRS})
    return [TensorType(conv[0].shape if conv else None, code_dtype(node))]


@shape_fn("QAveragePool")
def _qaverage_pool(node: Node, inputs: list[TensorType | None]) -> list[TensorType]:
    pool = onnx_output_types(node, [_as_float(t) for t in inputs], "AveragePool",
                             {k: v for k, v in node.attrs.items() if k in POOL_ATTRS})
    return [TensorType(pool[0].shape if pool else None, code_dtype(node))]


@shape_fn("QGemm")
def _qgemm(node: Node, inputs: list[TensorType | None]) -> list[TensorType]:
    """x (..., K) times W (K, M), or W (M, K) with transB: (..., M)."""
    x, w = inputs[0], inputs[1]
    shape = None
    if x is not None and x.shape is not None and w is not None and w.shape is not None:
        shape = x.shape[:-1] + (w.shape[0] if node.attrs.get("transB", 0) else w.shape[-1],)
    return [TensorType(shape, code_dtype(node))]


@shape_fn("QAdd")
def _qadd(node: Node, inputs: list[TensorType | None]) -> list[TensorType]:
    return [TensorType(_broadcast(node, inputs), code_dtype(node))]


@shape_fn("QLinearGemm")
def _qlinear_gemm(node: Node, inputs: list[TensorType | None]) -> list[TensorType]:
    a, b = inputs[0], inputs[3]
    shape = None
    if a is not None and a.shape is not None and b is not None and b.shape is not None:
        m = a.shape[1] if node.attrs.get("transA", 0) else a.shape[0]
        n = b.shape[0] if node.attrs.get("transB", 0) else b.shape[1]
        shape = (m, n)
    y_scale = inputs[7] if len(inputs) > 7 else None
    if y_scale is None:
        return [TensorType(shape, FLOAT32)]
    return [TensorType(shape, _qlinear_dtype(inputs, 8, a))]


@shape_fn("QLinearAdd")
def _qlinear_add(node: Node, inputs: list[TensorType | None]) -> list[TensorType]:
    a, b = inputs[0], inputs[3]
    return [TensorType(_broadcast(node, [a, b]), _qlinear_dtype(inputs, 7, a))]


@shape_fn("QLinearGlobalAveragePool")
def _qlinear_global_average_pool(node: Node, inputs: list[TensorType | None]
                                 ) -> list[TensorType]:
    x = inputs[0]
    shape = None
    if x is not None and x.shape is not None:
        if node.attrs.get("channels_last", 0):
            shape = (x.shape[0],) + (1,) * (len(x.shape) - 2) + (x.shape[-1],)
        else:
            shape = x.shape[:2] + (1,) * (len(x.shape) - 2)
    return [TensorType(shape, _qlinear_dtype(inputs, 4, x))]


@shape_fn("QLinearRequantize", "QLinearSoftmax")
def _qlinear_requantize(node: Node, inputs: list[TensorType | None]) -> list[TensorType]:
    return [same_shape(inputs[0], _qlinear_dtype(inputs, 4, inputs[0]))]


def _qlinear_dtype(inputs: list[TensorType | None], zp_index: int, x: TensorType | None
                   ) -> np.dtype:
    """The output zero point's type, else the input's (onnxruntime's rule)."""
    zp = inputs[zp_index] if len(inputs) > zp_index else None
    return zp.dtype if zp is not None else (x.dtype if x is not None else np.dtype(np.uint8))


def _broadcast(node: Node, inputs: list[TensorType | None]) -> tuple[int, ...] | None:
    """ONNX's multidirectional broadcast of the inputs' shapes (Add's rule)."""
    floats = [_as_float(t) for t in inputs if t is not None]
    out = floats[0]
    for other in floats[1:]:
        typed = onnx_output_types(node, [out, other], "Add", {})
        out = _as_float(typed[0]) if typed else TensorType(None, FLOAT32)
    return out.shape if out is not None else None


def _as_float(t: TensorType | None) -> TensorType | None:
    """The same tensor typed float32, for borrowing the shape rule of a float ONNX op."""
    return None if t is None else TensorType(t.shape, FLOAT32)
