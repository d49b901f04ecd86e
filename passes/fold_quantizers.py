"""fold_quantizers: a graph with trained fake quantizers (QONNX Quant / BipolarQuant / Trunc,
qcc APoTQuant; `qcc qat` or Brevitas export_qonnx) -> what quantize_graph consumes.

Preconditions: the graph as imported (constant subgraphs folded, so weight normalization, eq. 9,
is already a constant W̃ in front of its quantizer; quantizer nodes are never folded); no
BatchNormalization left unfolded between a layer and its weight quantizer.

Weights. A weighted layer whose weight is Q(W̃) (then optionally multiplied by constants, e.g.
WN's σ + ε, or Gemm's alpha) gets its integer codes from Q itself: the code each weight was
trained at, never re-rounded, and one scale per output channel that folds the quantizer's scale
(α·γ·2^-E for APoT, eq. 5-7; the Quant scale for uniform, binary, ternary) with the constants:
W_l = scale_c · code. These become LayerConfig.weights (codes, CodeFormat) and the weight bits the
quantizer's. The zero point of a weight quantizer must be 0 (symmetric codes).

Activations. A quantizer Q(x) of a non-constant tensor fixes x's format: its scale, zero point and
bits (APoT: α, bits, k). The node is removed from the graph handed to quantize_graph, and x's
calibration statistics are replaced by the range [lo, hi] that makes the layer's scheme choose
exactly that format (affine: [(min_int − z)·s, (max_int − z)·s]; apot: [0, α] or [−α, α];
fixed: the power-of-two range), so the integer graph requantizes to the trained grid; the layer
reading it takes the quantizer's width as B_A. What differs from the float QONNX semantics is
the rounding of activations only: the integer requantization rounds half away from zero
(QONNX's ROUND: half to even), APoT activations without grid_rounding snap to the integer grid
then to the nearest level, a narrow signed activation range gains its lowest code, and a float
bias (one no int32 Quant puts on the accumulator grid) is rounded to that grid.

Trunc. A Trunc of activations fixes two grids: its input's (scale, in_bits; signed when the
calibrated input goes below zero, zero point 0) and its output's (v1: the input scale at out_bits
bits; v2: out_scale at out_bits, signed and narrow as given). It stays in the graph, and
quantize_graph lowers it to qcc.QTrunc: the input codes (requantized onto the input grid, which
is the first rounding of QONNX's round(x / scale)) shifted right with the rounding mode and
clamped (qcc.core.ops.qonnx), so the second rounding is exact.

The reference graph (for `qcc eval`'s p_m) is the fake-quantized float model with the weight
quantizers folded into constants of exactly the dequantized codes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from passes.calibrate import TensorStats, calibrate
from passes.quantize_graph import LayerConfig, QuantConfig
from passes.schemes import CodeFormat
from passes.schemes.apot import level_code_format
from qcc.core.errors import QccError
from qcc.core.float_exec import run_node
from qcc.core.ir import Graph, Node, Value
from qcc.core.layers import WEIGHTED_OPS, output_channel_axis
from qcc.core.numerics import apot
from qcc.core.numerics.codes import CODE_PRESERVING
from qcc.core.ops.qonnx import (
    QUANTIZER_OPS,
    apot_format,
    bit_width,
    int_bounds,
    rounding,
    trunc_params,
)
from qcc.core.quant_spec import QuantSpec

DEFAULT_BITS = 8  # tensors no quantizer fixes (a residual sum, say)
OUTPUT_BITS = 16


@dataclass
class ActivationFormat:
    """What one activation quantizer fixes: the compile scheme family and its range."""

    scheme: str  # "affine" or "apot"
    bits: int
    stats: TensorStats
    fixed: TensorStats | None = None  # the same grid as a fixed-point range, if it is one


@dataclass
class Folded:
    reference: Graph  # fake-quantized float model, weight quantizers folded to constants
    plain: Graph  # no quantizer nodes: what quantize_graph rewrites
    stats: dict[str, TensorStats]
    config: QuantConfig
    layers: list[dict] = field(default_factory=list)  # one line per layer for precision.json


def has_quantizers(graph: Graph) -> bool:
    return any(n.op_type in QUANTIZER_OPS for n in graph.nodes)


def fold_quantizers(graph: Graph, x_calib: np.ndarray) -> Folded:
    """Split `graph` into the reference and the plain graph with its configs and statistics."""
    reference = copy.deepcopy(graph)
    layers = [n for n in reference.nodes if n.op_type in WEIGHTED_OPS]
    weights: dict[str, tuple[np.ndarray, CodeFormat, int]] = {}
    for layer in layers:
        found = _fold_weight(reference, layer)
        if found is not None:
            weights[layer.name] = found
    _fold_constant_quantizers(reference)
    reference.remove_unused()
    plain = copy.deepcopy(reference)
    formats: dict[str, ActivationFormat] = {}
    truncs = []
    for node in [n for n in plain.nodes if n.op_type in QUANTIZER_OPS]:
        x = node.inputs[0]
        if x.is_const:
            raise QccError(f"{node.op_type} {node.name!r} quantizes a constant that no weighted "
                           "layer reads as its weight; qcc folds weight quantizers only")
        if node.op_type == "Trunc":  # stays: quantize_graph lowers it to QTrunc
            truncs.append((node, trunc_params(node)))
            continue
        formats[x.name] = _activation_format(node)
        plain.replace_all_uses(node.outputs[0], x)
        plain.remove_node(node)
    plain.remove_unused()
    stats = calibrate(plain, x_calib)
    for node, params in truncs:
        signed = stats[node.inputs[0].name].lo < 0 if node.inputs[0].name in stats else True
        formats.setdefault(node.inputs[0].name,
                           _grid_format(params.scale, params.in_bits, signed))
        formats[node.outputs[0].name] = _grid_format(
            params.out_scale, params.out_bits, signed if params.signed is None else params.signed)
    family = _family(formats)
    fixed_stats: dict[str, TensorStats] = {}
    for name, fmt in formats.items():
        for value in _same_grid(plain.values[name]):
            fixed_stats[value.name] = fmt.fixed if family == "fixed" else fmt.stats
    for node in plain.nodes:  # ... and the tensors moved from them (MaxPool, Flatten, ...)
        x = node.input(0)
        if node.op_type in CODE_PRESERVING and x is not None and x.name in fixed_stats and \
                node.op_type not in ("Concat", "Shape"):
            for out in node.outputs:
                fixed_stats.setdefault(out.name, fixed_stats[x.name])
    stats.update(fixed_stats)
    config = QuantConfig(scheme=family, default_bits=DEFAULT_BITS, output_bits=OUTPUT_BITS)
    report = []
    for layer in [n for n in plain.nodes if n.op_type in WEIGHTED_OPS]:
        act = _upstream_format(layer, formats)
        act_bits = act.bits if act is not None else DEFAULT_BITS
        if layer.name in weights:
            codes, fmt, bits = weights[layer.name]
            config.layers[layer.name] = LayerConfig(bits, act_bits, family, weights=(codes, fmt))
            report.append({"name": layer.name, "op": layer.op_type, "B_W": bits, "B_A": act_bits,
                           "weight_format": str(fmt.spec), "scheme": family,
                           "alpha": fmt.spec.alpha, "weights": "trained codes"})
        else:
            config.layers[layer.name] = LayerConfig(DEFAULT_BITS, act_bits, family)
    plain.history.append(f"fold_quantizers: {len(weights)} weight quantizers folded into codes, "
                         f"{len(formats)} activation formats fixed ({family})")
    return Folded(reference, plain, stats, config, report)


def _family(formats: dict[str, ActivationFormat]) -> str:
    """The compile scheme of the activations: fixed when every grid is a power-of-two step
    (qcc qat's fixed, binary, ternary; Brevitas' fixed-point quantizers), else theirs."""
    if not formats:
        return "affine"
    if all(f.fixed is not None for f in formats.values()):
        return "fixed"
    families = {f.scheme for f in formats.values()}
    if len(families) > 1:
        raise QccError("the graph mixes APoT and uniform activation quantizers; qcc compiles "
                       "one kind per model")
    return families.pop()


def _fold_constant_quantizers(graph: Graph) -> None:
    """Quantizers of constants that are no layer's weight (a bias on the accumulator grid, say)
    become the constants they compute."""
    for node in [n for n in graph.nodes if n.op_type in QUANTIZER_OPS]:
        if all(v is None or v.is_const for v in node.inputs):
            (array,) = run_node(node, [v.const if v is not None else None for v in node.inputs])
            const = graph.add_const(node.outputs[0].name + "_folded", array)
            graph.replace_all_uses(node.outputs[0], const)
            graph.remove_node(node)


# -- weights ------------------------------------------------------------------------------------
def _fold_weight(graph: Graph, layer: Node) -> tuple[np.ndarray, CodeFormat, int] | None:
    """(codes, format, bits) of `layer`'s quantized weight; the weight input becomes the constant
    scale_c · code. None when the weight is not a quantizer's output."""
    w = layer.input(1)
    if w is None or w.is_const or layer.input(0) is None:
        return None
    factor: np.ndarray = np.ones(())
    value = w
    while value.producer is not None and value.producer.op_type in ("Mul", "Identity"):
        node = value.producer
        if node.op_type == "Identity":
            value = node.inputs[0]
            continue
        a, b = node.inputs
        const, other = (a, b) if a.is_const else (b, a) if b.is_const else (None, None)
        if const is None:
            return None
        factor = factor * const.const.astype(np.float64)
        value = other
    q = value.producer
    if q is None or q.op_type not in QUANTIZER_OPS or q.op_type == "Trunc":
        return None
    if not all(v is None or v.is_const for v in q.inputs):
        bad = next(v for v in q.inputs if v is not None and not v.is_const)
        raise QccError(f"{q.op_type} {q.name!r}: the weight quantizer's input {bad.name!r} is "
                       "not a constant")
    x = q.inputs[0].const.astype(np.float64)
    axis = output_channel_axis(layer)
    codes, unit, fmt_of = _weight_codes(q, x)
    scale = np.broadcast_to(unit * factor, x.shape) if np.ndim(unit * factor) else unit * factor
    if layer.op_type == "Gemm":
        scale = scale * float(layer.attrs.get("alpha", 1.0))
    channel_scales = _per_channel(q, scale, x.shape, axis)
    fmt, bits = fmt_of(channel_scales)
    shape = [1] * x.ndim
    shape[axis] = -1
    dequantized = (codes * channel_scales.reshape(shape)).astype(np.float32)
    alpha = float(layer.attrs.get("alpha", 1.0)) if layer.op_type == "Gemm" else 1.0
    graph.set_input(layer, 1, graph.add_const(f"{layer.name}_w_trained", dequantized / alpha))
    return codes.astype(np.int64), fmt, bits


def _weight_codes(q: Node, x: np.ndarray):
    """(integer codes, the scale of code 1 (array or scalar), fn(channel scales) -> (format,
    bits)) of one weight quantizer."""
    if q.op_type == "APoTQuant":
        fmt = apot_format(q)
        alpha = float(q.inputs[1].const.ravel()[0])
        codes = apot.decode_integer(apot.quantize(x, fmt, alpha), fmt)  # eq. 7
        return codes, alpha * float(fmt.unit), lambda s: (
            level_code_format(fmt, alpha, tuple(float(v) for v in s)), fmt.bits)
    if q.op_type == "BipolarQuant" or (q.op_type == "Quant" and
                                       bit_width(q, q.inputs[3].const) == 1 and
                                       q.attrs.get("signed", 1)):
        scale = q.inputs[1].const.astype(np.float64)
        if q.op_type == "Quant":
            _zero_point_is_zero(q)
        codes = np.where(x / scale >= 0, 1, -1) if q.op_type == "Quant" else \
            np.where(x >= 0, 1, -1)
        return codes, scale, lambda s: (CodeFormat(tuple(float(v) for v in s), 0, -1, 1,
                                                   QuantSpec(format="binary", bits=1, signed=True,
                                                             scale=float(np.mean(s))),
                                                   (-1, 1)), 1)
    scale = q.inputs[1].const.astype(np.float64)
    _zero_point_is_zero(q)
    bits = bit_width(q, q.inputs[3].const)
    signed, narrow = bool(q.attrs.get("signed", 1)), bool(q.attrs.get("narrow", 0))
    lo, hi = int_bounds(signed, narrow, bits)
    codes = rounding(q)(np.clip(x / scale, lo, hi))
    ternary = bits == 2 and signed and narrow
    spec_format = "ternary" if ternary else "affine"

    def fmt_of(s: np.ndarray) -> tuple[CodeFormat, int]:
        spec = QuantSpec(format=spec_format, bits=bits, signed=signed, scale=float(np.max(s)),
                         zero_point=0)
        return CodeFormat(tuple(float(v) for v in s), 0, lo, hi, spec), bits

    return codes, scale, fmt_of


def _zero_point_is_zero(q: Node) -> None:
    if np.any(q.inputs[2].const != 0):
        raise QccError(f"{q.op_type} {q.name!r}: a weight quantizer needs zero point 0 "
                       "(qcc's weight codes are symmetric)")


def _per_channel(q: Node, scale: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """The scale as one value per output channel; refuse scales that vary along other axes."""
    full = np.broadcast_to(np.asarray(scale, dtype=np.float64), shape)
    moved = np.moveaxis(full, axis, 0).reshape(shape[axis], -1)
    if not np.all(moved == moved[:, :1]):
        raise QccError(f"{q.op_type} {q.name!r}: the weight scale varies along an axis other "
                       f"than the output channels ({axis}); qcc takes per-tensor or per-channel")
    if not np.all(moved[:, 0] > 0):
        raise QccError(f"{q.op_type} {q.name!r}: scale must be > 0")
    return moved[:, 0].copy()


# -- activations --------------------------------------------------------------------------------
def _activation_format(q: Node) -> ActivationFormat:
    for v in q.inputs[1:]:
        if v is not None and not v.is_const:
            raise QccError(f"{q.op_type} {q.name!r}: {v.name!r} must be a constant to compile "
                           "(a scale, zero point or bit width fixed by training)")
    if q.op_type == "APoTQuant":
        fmt = apot_format(q)
        alpha = float(q.inputs[1].const.ravel()[0])
        lo = -alpha if fmt.signed else 0.0
        return ActivationFormat("apot", fmt.bits, TensorStats(lo, alpha, lo, alpha))
    if q.op_type == "BipolarQuant":
        raise QccError(f"BipolarQuant {q.name!r} on activations: sign activations are compiled "
                       "with --scheme binary --binary-activations, not from QONNX")
    scale = _scalar(q, q.inputs[1].const, "scale")
    zero = _scalar(q, q.inputs[2].const, "zero point")
    bits = bit_width(q, q.inputs[3].const)
    if not float(zero).is_integer():
        raise QccError(f"{q.op_type} {q.name!r}: the zero point must be an integer")
    return _grid_format(scale, bits, bool(q.attrs.get("signed", 1)), zero)


def _grid_format(scale: float, bits: int, signed: bool, zero: float = 0.0) -> ActivationFormat:
    """The activation format of the codes [min_int, max_int] of (signed, bits) at `scale` and
    `zero` (narrow ranges gain their lowest code: module doc)."""
    lo_int, hi_int = int_bounds(signed, False, bits)
    lo, hi = (lo_int - zero) * scale, (hi_int - zero) * scale
    fixed = None
    if zero == 0 and _is_power_of_two(scale):
        # a power-of-two step: seeds/001 §2.1's fixed point, range r = step · 2^(B - signed);
        # the extreme codes themselves as the range, so that r is chosen and nothing saturates
        fixed = TensorStats(lo_int * scale, hi_int * scale, lo_int * scale, hi_int * scale)
    return ActivationFormat("affine", bits, TensorStats(lo, hi, lo, hi), fixed)


def _scalar(q: Node, a: np.ndarray, what: str) -> float:
    if np.size(a) != 1:
        raise QccError(f"{q.op_type} {q.name!r}: a per-channel activation {what} is not "
                       "supported (one per tensor)")
    value = float(np.asarray(a).ravel()[0])
    if what.endswith("scale") and not value > 0:
        raise QccError(f"{q.op_type} {q.name!r}: {what} must be > 0, got {value:g}")
    return value


def _is_power_of_two(v: float) -> bool:
    m, _ = np.frexp(v)
    return bool(m == 0.5)


def _same_grid(value: Value) -> list[Value]:
    """`value` and the tensors it is moved from (MaxPool, Flatten, Relu, ... whose only reader is
    the next): a monotone quantizer commutes with them, so they take its grid and the integer
    graph needs no requantization in between."""
    chain = [value]
    node = value.producer
    while node is not None and node.op_type in CODE_PRESERVING and len(node.inputs) >= 1 and \
            node.inputs[0] is not None and not node.inputs[0].is_const and \
            len(node.inputs[0].consumers) == 1 and node.op_type not in ("Concat", "Split"):
        chain.append(node.inputs[0])
        node = node.inputs[0].producer
    return chain


def _upstream_format(layer: Node, formats: dict[str, ActivationFormat]
                     ) -> ActivationFormat | None:
    """The activation format fixed on the layer's input, looking through code-moving ops."""
    value: Value | None = layer.inputs[0]
    while value is not None:
        if value.name in formats:
            return formats[value.name]
        node = value.producer
        if node is None or node.op_type not in CODE_PRESERVING:
            return None
        value = node.inputs[0]
    return None
