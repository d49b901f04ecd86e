"""Shape and data-movement ops, constants and casts.

Flatten, Reshape, Transpose, Concat, Split, Slice, Squeeze, Unsqueeze, Pad, Identity, Gather,
Shape, Constant, ConstantOfShape and Cast. Where an operand moved from an attribute to an input
across opsets (Reshape 5, Slice 10, Pad 11, Squeeze/Unsqueeze/Split 13), the kernel reads the
form that `node.opset` defines. Outputs keep the data's dtype; index outputs are int64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper

from qcc.core.errors import QccError, UnsupportedOpError
from qcc.core.ir import Node
from qcc.core.registry import float_kernel


def _ints(values: np.ndarray | Sequence[int] | None) -> list[int] | None:
    """An ONNX int list (attribute or 1-D int64 input) as Python ints; None stays None."""
    return None if values is None else [int(v) for v in np.asarray(values).ravel()]


@float_kernel("Identity")
def identity(node: Node, x: np.ndarray) -> np.ndarray:
    return x


@float_kernel("Flatten")
def flatten(node: Node, x: np.ndarray) -> np.ndarray:
    """2-D view: dims before `axis` (default 1, negative counts from the end) become rows."""
    axis = node.attrs.get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@float_kernel("Reshape")
def reshape(node: Node, x: np.ndarray, shape: np.ndarray | None = None) -> np.ndarray:
    """`shape` is an attribute before opset 5. A 0 copies the input's dim (unless allowzero,
    opset 14, makes it a literal 0); one -1 is inferred from the element count."""
    dims = _ints(node.attrs.get("shape") if node.opset < 5 else shape)
    if not node.attrs.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@float_kernel("Transpose")
def transpose(node: Node, x: np.ndarray) -> np.ndarray:
    perm = node.attrs.get("perm")
    return np.transpose(x, None if perm is None else [int(p) for p in perm])


@float_kernel("Concat")
def concat(node: Node, *xs: np.ndarray) -> np.ndarray:
    axis = node.attrs.get("axis", 1)  # required from opset 4; opset 1 defaulted to 1
    return np.concatenate(xs, axis=axis)


def _split_sizes(node: Node, dim: int, split: np.ndarray | None) -> list[int]:
    """Part sizes: explicit (attribute before 13, input from 13, opset 1 either), else
    `num_outputs` (opset 18) or one part per output, the last part smaller when uneven."""
    sizes = _ints(node.attrs.get("split") if split is None and node.opset < 13 else split)
    if sizes:
        return sizes
    parts = node.attrs.get("num_outputs", len(node.outputs))
    chunk = -(-dim // parts)  # ceil: opset 18's rule for an uneven split
    if dim % parts and (node.opset < 18 or (parts - 1) * chunk > dim):
        raise QccError(f"Split node {node.name!r}: dim {dim} does not split into {parts} parts")
    return [chunk] * (parts - 1) + [dim - (parts - 1) * chunk]


@float_kernel("Split")
def split(node: Node, x: np.ndarray, split_: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    axis = node.attrs.get("axis", 0)
    sizes = _split_sizes(node, x.shape[axis], split_)
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


def _clamped_slice(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX's clamping: negative start/end count from the end; then with step > 0 both clamp to
    [0, dim], with step < 0 start clamps to [0, dim-1] and end to [-1, dim-1], where -1 means
    'through index 0'. (Python differs: it empties a negative-step slice whose start < -dim.)"""
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    end = min(max(end, -1), dim - 1)
    return slice(min(max(start, 0), dim - 1), None if end < 0 else end, step)


@float_kernel("Slice")
def slice_(node: Node, x: np.ndarray, starts: np.ndarray | None = None,
           ends: np.ndarray | None = None, axes: np.ndarray | None = None,
           steps: np.ndarray | None = None) -> np.ndarray:
    """starts/ends/axes are attributes before opset 10, inputs (with steps) from 10 on."""
    if node.opset < 10:
        starts, ends, axes = (node.attrs.get(k) for k in ("starts", "ends", "axes"))
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) or list(range(len(starts)))
    steps = _ints(steps) or [1] * len(starts)
    if 0 in steps:
        raise QccError(f"Slice node {node.name!r}: a step of 0")
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[axis] = _clamped_slice(start, end, step, x.shape[axis])
    return x[tuple(index)]


@float_kernel("Squeeze")
def squeeze(node: Node, x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    """Drop the listed unit dims (attribute before opset 13, input after), or all unit dims."""
    axes = _ints(node.attrs.get("axes") if node.opset < 13 else axes)
    if not axes:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(axes))


@float_kernel("Unsqueeze")
def unsqueeze(node: Node, x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    """Insert unit dims at `axes` (indices into the output, in any order, negative allowed)."""
    axes = _ints(node.attrs.get("axes") if node.opset < 13 else axes)
    return np.expand_dims(x, axis=tuple(axes))


@float_kernel("Gather")
def gather(node: Node, data: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """np.take along `axis`; negative indices count from the end, out-of-range ones are errors."""
    axis = node.attrs.get("axis", 0)
    dim = data.shape[axis]
    if indices.size and (indices.min() < -dim or indices.max() >= dim):
        raise QccError(f"Gather node {node.name!r}: index out of range for dim {dim}")
    return np.take(data, indices.astype(np.int64), axis=axis)


@float_kernel("Shape")
def shape(node: Node, x: np.ndarray) -> np.ndarray:
    """The input's dims as int64, sliced by `start`/`end` (opset 15, clamped like Python)."""
    start = node.attrs.get("start", 0)
    end = node.attrs.get("end")
    return np.array(x.shape[start:end], dtype=np.int64)


# -- Pad --------------------------------------------------------------------------------------

_PAD_MODES = ("constant", "reflect", "edge", "wrap")  # NumPy's np.pad modes of the same names


def _pad_widths(node: Node, ndim: int, pads: np.ndarray | None,
                axes: np.ndarray | None) -> list[tuple[int, int]]:
    """(begin, end) per dim; pads are `paddings` (opset 1) / `pads` attributes before 11."""
    if node.opset < 11:
        pads = node.attrs.get("pads", node.attrs.get("paddings"))
    flat = _ints(pads)
    axes_list = [a % ndim for a in _ints(axes)] if axes is not None else list(range(ndim))
    if len(flat) != 2 * len(axes_list):
        raise QccError(f"Pad node {node.name!r}: {len(flat)} pads for {len(axes_list)} axes")
    widths = [(0, 0)] * ndim
    for i, axis in enumerate(axes_list):
        widths[axis] = (flat[i], flat[i + len(axes_list)])
    return widths


@float_kernel("Pad")
def pad(node: Node, x: np.ndarray, pads: np.ndarray | None = None,
        constant_value: np.ndarray | None = None, axes: np.ndarray | None = None) -> np.ndarray:
    """Modes constant/reflect/edge/wrap (wrap: opset 19); negative pads crop first."""
    mode = node.attrs.get("mode", "constant")
    if mode not in _PAD_MODES:
        raise UnsupportedOpError(f"Pad node {node.name!r}: unknown mode {mode!r}")
    widths = _pad_widths(node, x.ndim, pads, axes)
    crop = tuple(slice(max(-b, 0), x.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(widths))
    x = x[crop]
    widths = [(max(b, 0), max(e, 0)) for b, e in widths]
    if mode != "constant":
        return np.pad(x, widths, mode=mode)
    value = node.attrs.get("value", 0.0) if node.opset < 11 else constant_value
    value = 0 if value is None or np.size(value) == 0 else np.asarray(value).ravel()[0]
    return np.pad(x, widths, mode="constant", constant_values=np.asarray(value).astype(x.dtype))


# -- constants --------------------------------------------------------------------------------

_SCALAR_ATTRS = {
    "value_float": np.float32, "value_floats": np.float32,
    "value_int": np.int64, "value_ints": np.int64,
    "value_string": object, "value_strings": object,
}


def _densify(sparse: onnx.SparseTensorProto) -> np.ndarray:
    """A SparseTensorProto as a dense array: indices are linear [NNZ] or coordinates [NNZ, rank]."""
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    dense = np.zeros(tuple(sparse.dims), dtype=values.dtype)
    if indices.ndim == 2:
        indices = np.ravel_multi_index(tuple(indices.T), dense.shape)
    dense.reshape(-1)[indices] = values
    return dense


@float_kernel("Constant")
def constant(node: Node) -> np.ndarray:
    """Exactly one of value, sparse_value, value_float(s), value_int(s), value_string(s)."""
    attrs = node.attrs
    if "value" in attrs:
        return np.asarray(attrs["value"])
    if "sparse_value" in attrs:
        return _densify(attrs["sparse_value"])
    for name, dtype in _SCALAR_ATTRS.items():
        if name in attrs:
            return np.array(attrs[name], dtype=dtype)
    raise QccError(f"Constant node {node.name!r} has no value attribute")


@float_kernel("ConstantOfShape")
def constant_of_shape(node: Node, shape_: np.ndarray) -> np.ndarray:
    """A tensor of the given shape filled with the one-element `value` (default float32 0)."""
    value = np.asarray(node.attrs.get("value", np.zeros(1, np.float32)))
    return np.full(_ints(shape_), value.ravel()[0], dtype=value.dtype)


# -- Cast -------------------------------------------------------------------------------------

_FLOAT8 = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ,
           onnx.TensorProto.FLOAT8E5M2, onnx.TensorProto.FLOAT8E5M2FNUZ}


def _saturate_float8(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Clamp to the float8 type's finite range before rounding (saturate=1). Like
    onnx.numpy_helper.saturate_cast, which generates the suite's expected outputs, this maps
    ±inf to ±max for every float8 type; NaN stays NaN."""
    info = ml_dtypes.finfo(dtype)
    xw = x.astype(np.float32) if x.dtype.itemsize < 4 else x
    return np.clip(xw, float(info.min), float(info.max)).astype(dtype)


def _to_float8e8m0(x: np.ndarray, saturate: bool, round_mode: str) -> np.ndarray:
    """E8M0 keeps only a float32's biased exponent; the mantissa rounds it (`round_mode` up,
    down or nearest-even on the exponent); NaN and inf map to the NaN code 0xFF."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    exponent = ((bits >> 23) & 0xFF).astype(np.uint16)
    mantissa = bits & 0x7FFFFF
    special = exponent == 0xFF
    if round_mode == "up":
        bump = mantissa > 0
    elif round_mode == "nearest":
        guard = (mantissa & 0x400000) > 0
        rest = (mantissa & 0x3FFFFF) > 0
        bump = guard & (rest | (exponent > 0))
    elif round_mode == "down":
        bump = np.zeros_like(special)
    else:
        raise UnsupportedOpError(f"Cast: unknown round_mode {round_mode!r}")
    if saturate:
        bump &= exponent != 0xFE  # stay at the largest finite code instead of reaching NaN
    exponent = exponent + (bump & ~special)
    code = np.where(special, 0xFF, np.minimum(exponent, 0xFF)).astype(np.uint8)
    return code.view(ml_dtypes.float8_e8m0fnu)


def _to_text(x: np.ndarray) -> np.ndarray:
    """Numbers as onnxruntime prints them: floats as C's "%.8g" ("0.1", "-2", "1e-07",
    "0.33333334"), "INF", "-INF", "NaN"; integers in full; booleans as "1" and "0"."""
    if x.dtype == np.bool_ or x.dtype.kind == "V":  # bool -> 0/1, ml_dtypes -> float32
        x = x.astype(np.uint8 if x.dtype == np.bool_ else np.float32)
    if x.dtype.kind != "f":
        return x.astype(np.str_).astype(object)
    with np.errstate(invalid="ignore"):
        text = np.char.mod("%.8g", x.astype(np.float64))
    special = np.where(np.isnan(x), "NaN", np.where(x > 0, "INF", "-INF"))
    return np.where(np.isfinite(x), text, special).astype(object)


def _from_text(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Parse decimal or scientific text; "INF", "+INF", "-INF", "NaN" in any case. Text with a
    fraction cast to an integer type truncates ("100.5" -> 100; the spec leaves it undefined)."""
    words = [s.decode() if isinstance(s, bytes) else str(s) for s in x.ravel()]
    if dtype.kind in "iu":
        parsed = [int(w) if w.strip().lstrip("+-").isdigit() else int(float(w)) for w in words]
        return np.array(parsed, dtype=object).reshape(x.shape).astype(dtype)
    floats = np.array([float(w) for w in words], dtype=np.float64).reshape(x.shape)
    return (floats != 0) if dtype.kind == "b" else floats.astype(dtype)


@float_kernel("Cast")
def cast(node: Node, x: np.ndarray) -> np.ndarray:
    """Convert to `to`. Float8 targets saturate unless saturate=0 (opset 19); FLOAT8E8M0
    follows `round_mode` (opset 24); strings as the spec describes; everything else rounds
    as the NumPy/ml_dtypes conversion does (the spec leaves out-of-range integers undefined)."""
    to = node.attrs["to"]
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(to))
    saturate = bool(node.attrs.get("saturate", 1))
    if x.dtype.kind == "O":
        return x.copy() if dtype.kind == "O" else _from_text(x, dtype)
    if dtype.kind == "O":
        return _to_text(x)
    if to in _FLOAT8 and saturate:
        return _saturate_float8(x, dtype)
    if to == onnx.TensorProto.FLOAT8E8M0:
        return _to_float8e8m0(x, saturate, node.attrs.get("round_mode", "up"))
    with np.errstate(invalid="ignore", over="ignore"):
        return x.astype(dtype)
