"""Fake quantizers: QONNX's Quant, BipolarQuant and Trunc, and qcc's APoTQuant, with their VJPs.

QONNX ops (domain `qonnx.custom_op.general`, also read under FINN's older
`finn.custom_op.general`), float semantics as in the QONNX specification (docs/qonnx-custom-ops):

    Quant(x, scale, zero_point, bit_width; signed, narrow, rounding_mode)
        v = x / scale + zero_point, clipped to [min_int, max_int] of (signed, narrow, bit_width),
        rounded by rounding_mode; y = (v - zero_point) · scale. A signed 1-bit Quant is bipolar.
    BipolarQuant(x, scale)       y = scale · (x >= 0 ? +1 : -1)
    Trunc(x, scale, zero_point, in_bits, out_bits; rounding_mode)                  (version 1)
    Trunc(x, scale, zero_point, in_bits, out_scale, out_bits; signed, narrow, rounding_mode) (v2)
        drops the low in_bits - out_bits bits of the integer x/scale + zero_point.

Scale, zero point and bit width broadcast against x (per tensor or per channel).

Compiled, a Trunc of activations is qcc's integer op `QTrunc` (domain `qcc`): on the codes of x
at the Trunc's input grid (scale, zero point 0, in_bits), a right shift by
t = in_bits - out_bits (v1) or t = round(log2(out_scale / scale)) (v2) rounded by rounding_mode
(`trunc_shift`, exact on integers), clamped to [min_int, max_int] of (signed, narrow, out_bits)
for v2, plus the output's code zero point:

    QTrunc(x; x_zero_point, shift, rounding_mode, clamp_lo, clamp_hi, out_zero_point, out_lo,
           out_hi)   y = clip(trunc_shift(x - x_zero_point, shift), clamp_lo, clamp_hi)
                         + out_zero_point

qcc's own APoTQuant(x, alpha; bits, k, signed, grid_rounding) (domain `qcc`) is RCF with
projection onto the APoT level set (seeds/004 eq. 7): y = α · Π_{Q(1,b)}(clip(x / α, [-1, 1])),
the levels those of qcc.core.numerics.apot.APoTFormat(bits, k, signed) (PoT when k is the
magnitude width). grid_rounding = 1 projects the way integer hardware does from an exact
accumulator (`project_normalized`); `qcc qat` sets it on activations.

Gradients. The rounding (projection) passes the gradient straight through (STE, seeds/004
§2.5: ∂Ŵ/∂W̃ = 1) inside the clipping range and stops it outside. The clipping threshold gets
RCF's gradient (seeds/004 eq. 8): ∂y/∂α = sign(x) where |x| > α, Π(x/α) − x/α inside. For Quant
the learned parameter is the scale; with α = scale · max_int eq. 8 becomes (Appendix A: "in
uniform quantization ... equivalent to LSQ") ∂y/∂scale = (q − z) − x/scale inside and (q − z)
outside, q the clipped, rounded code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from qcc.core.errors import QccError
from qcc.core.ir import Node
from qcc.core.numerics import apot
from qcc.core.numerics.codes import storage_dtype
from qcc.core.ops.grads import unbroadcast
from qcc.core.registry import (
    QCC_DOMAIN,
    QONNX_DOMAINS,
    CodeRange,
    TensorType,
    declare,
    float_kernel,
    range_fn,
    shape_fn,
    vjp,
)

QONNX_OPS = ("Quant", "BipolarQuant", "Trunc")
APOT_OP = "APoTQuant"
QUANTIZER_OPS = (*QONNX_OPS, APOT_OP)

ROUNDING = {
    "ROUND": np.round, "HALF_EVEN": np.round, "CEIL": np.ceil, "FLOOR": np.floor,
    "UP": lambda v: np.sign(v) * np.ceil(np.abs(v)), "DOWN": np.fix,
    "ROUND_TO_ZERO": np.fix,
    "HALF_UP": lambda v: np.sign(v) * np.floor(np.abs(v) + 0.5),
    "HALF_DOWN": lambda v: np.sign(v) * np.ceil(np.abs(v) - 0.5),
}


def int_bounds(signed: bool, narrow: bool, bits: int) -> tuple[int, int]:
    """[min_int, max_int] of QONNX: signed [-2^(b-1) (+1 if narrow), 2^(b-1) - 1], unsigned
    [0, 2^b - 1 (-1 if narrow)]."""
    if signed:
        return -(1 << (bits - 1)) + int(narrow), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1 - int(narrow)


def rounding(node: Node, default: str = "ROUND"):
    mode = str(node.attrs.get("rounding_mode", default)).upper()
    if mode not in ROUNDING:
        raise QccError(f"{node.op_type} {node.name!r}: unknown rounding_mode {mode!r} "
                       f"(known: {', '.join(sorted(ROUNDING))})")
    return ROUNDING[mode]


def bit_width(node: Node, bits: np.ndarray, what: str = "bit width") -> int:
    """The bit width as one integer >= 1 (QONNX allows a float tensor holding an integer)."""
    b = np.asarray(bits, dtype=np.float64)
    if b.size != 1 or not float(b.ravel()[0]).is_integer() or b.ravel()[0] < 1:
        raise QccError(f"{node.op_type} {node.name!r}: {what} must be one integer >= 1, "
                       f"got {b.ravel()[:4].tolist()}")
    return int(b.ravel()[0])


def check_scale(node: Node, scale: np.ndarray) -> None:
    if not np.all(np.asarray(scale) > 0):
        raise QccError(f"{node.op_type} {node.name!r}: scale must be > 0, got "
                       f"{float(np.min(scale)):g}")


def _codes(node: Node, x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, bits: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """(v = x/scale + z before clipping, q = the clipped, rounded code) in float64."""
    v = x.astype(np.float64) / scale.astype(np.float64) + zero_point.astype(np.float64)
    lo, hi = int_bounds(bool(node.attrs.get("signed", 1)), bool(node.attrs.get("narrow", 0)),
                        bits)
    return v, rounding(node)(np.clip(v, lo, hi))


def _bipolar_code(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0, -1.0)


# -- Quant ----------------------------------------------------------------------------------
@float_kernel("Quant")
def quant(node: Node, x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
          bits: np.ndarray) -> np.ndarray:
    """QONNX Quant (IntQuant): clip then round x/scale + zero_point, scale back."""
    check_scale(node, scale)
    b = bit_width(node, bits)
    if b == 1 and node.attrs.get("signed", 1):  # QONNX: a signed 1-bit Quant is bipolar
        v = x.astype(np.float64) / scale + zero_point
        return ((_bipolar_code(v) - zero_point) * scale).astype(x.dtype)
    _, q = _codes(node, x, scale, zero_point, b)
    return ((q - zero_point) * scale.astype(np.float64)).astype(x.dtype)


@vjp("Quant")
def quant_vjp(node: Node, inputs: list, outputs: list, grads: list) -> list:
    """dx: STE inside the clipping range; dscale: eq. 8 in LSQ form (module docstring)."""
    x, scale, zero_point, bits = inputs
    dy = grads[0]
    if dy is None:
        return [None] * 4
    b = bit_width(node, bits)
    dy64 = dy.astype(np.float64)
    if b == 1 and node.attrs.get("signed", 1):
        v = x.astype(np.float64) / scale + zero_point
        inside = np.abs(v) <= 1.0
        d_scale = _bipolar_code(v) - zero_point
    else:
        v, q = _codes(node, x, scale, zero_point, b)
        lo, hi = int_bounds(bool(node.attrs.get("signed", 1)),
                            bool(node.attrs.get("narrow", 0)), b)
        inside = (v >= lo) & (v <= hi)
        d_scale = (q - zero_point) - np.where(inside, x.astype(np.float64) / scale, 0.0)
    dx = np.where(inside, dy64, 0.0).astype(x.dtype)
    ds = unbroadcast(dy64 * d_scale, np.shape(scale)).astype(scale.dtype)
    return [dx, ds, None, None]


# -- BipolarQuant ---------------------------------------------------------------------------
@float_kernel("BipolarQuant")
def bipolar_quant(node: Node, x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    check_scale(node, scale)
    return (_bipolar_code(x) * scale).astype(x.dtype)


@vjp("BipolarQuant")
def bipolar_quant_vjp(node: Node, inputs: list, outputs: list, grads: list) -> list:
    """dx = dy (sign has no clipping range: the plain STE, as BinaryConnect's), dscale =
    dy · sign(x): y = scale · sign(x) is linear in the scale."""
    x, scale = inputs
    dy = grads[0]
    if dy is None:
        return [None, None]
    dx = dy.astype(x.dtype, copy=False)
    ds = unbroadcast(dy.astype(np.float64) * _bipolar_code(x), np.shape(scale))
    return [dx, ds.astype(scale.dtype)]


# -- Trunc ----------------------------------------------------------------------------------
@float_kernel("Trunc")
def trunc(node: Node, x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
          in_bits: np.ndarray, *rest: np.ndarray) -> np.ndarray:
    """QONNX Trunc v1 (5 inputs) or v2 (6 inputs: ..., out_scale, out_bits)."""
    check_scale(node, scale)
    fn = rounding(node, "FLOOR")
    y = np.round(x.astype(np.float64) / scale + zero_point)
    if len(rest) == 1:  # v1: the low in_bits - out_bits bits go
        shift = 2.0 ** (bit_width(node, in_bits) - bit_width(node, rest[0], "output bit width"))
        y = fn(y / shift)
        # v1 keeps the input scale (QONNX's reference trunc_v1; v2 brought the output scale)
        return ((y - zero_point) * scale).astype(x.dtype)
    if len(rest) != 2:
        raise QccError(f"Trunc {node.name!r}: takes 5 (v1) or 6 (v2) inputs, not "
                       f"{4 + len(rest)}")
    out_scale, out_bits = rest
    check_scale(node, out_scale)
    shift = 2.0 ** np.round(np.log2(out_scale / scale))  # QONNX: a power of two
    lo, hi = int_bounds(bool(node.attrs.get("signed", 1)), bool(node.attrs.get("narrow", 0)),
                        bit_width(node, out_bits, "output bit width"))
    y = fn(np.clip(y / shift, lo, hi))
    return ((y - zero_point / shift) * out_scale).astype(x.dtype)


@vjp("Trunc")
def trunc_vjp(node: Node, inputs: list, outputs: list, grads: list) -> list:
    """Straight through: the truncation is a rounding."""
    return [grads[0], *([None] * (len(inputs) - 1))]


def trunc_shift(v: np.ndarray, shift: int, mode: str) -> np.ndarray:
    """ROUNDING[mode](v / 2^shift) for integers v, in int64 arithmetic (no float: exact for
    every int64). Arithmetic right shifts floor; the other modes correct the floor by the
    remainder r = v - floor(v / 2^t)·2^t in [0, 2^t)."""
    v = np.asarray(v, dtype=np.int64)
    if shift == 0:
        return v.copy()
    if shift < 0 or shift > 62:
        raise QccError(f"QTrunc: shift {shift} is outside 0..62")
    mode = mode.upper()
    q = v >> shift
    r = v - (q << shift)
    half = np.int64(1) << (shift - 1)
    up = r > 0  # v is not a multiple of 2^t: ceil = floor + 1
    if mode == "FLOOR":
        return q
    if mode == "CEIL":
        return q + up
    if mode in ("ROUND", "HALF_EVEN"):
        return q + ((r > half) | ((r == half) & ((q & 1) == 1)))
    negative = v < 0
    if mode == "HALF_UP":  # half away from zero
        return q + ((r > half) | ((r == half) & ~negative))
    if mode == "HALF_DOWN":  # half toward zero
        return q + ((r > half) | ((r == half) & negative))
    if mode == "UP":  # away from zero
        return q + (up & ~negative)
    if mode in ("DOWN", "ROUND_TO_ZERO"):  # toward zero
        return q + (up & negative)
    raise QccError(f"QTrunc: unknown rounding_mode {mode!r} (known: {', '.join(ROUNDING)})")


@dataclass(frozen=True)
class TruncParams:
    """What a QONNX Trunc does to codes on its input grid (scale, zero point 0): shift right by
    `shift` with `rounding_mode`, clamp to [clamp_lo, clamp_hi] (v2; v1 does not clamp), and
    the result is a code of `out_scale` with `out_bits` bits."""

    scale: float
    in_bits: int
    shift: int
    rounding_mode: str
    out_scale: float
    out_bits: int
    signed: bool | None  # v2's attribute; None for v1 (no clamp: signed as its input)
    narrow: bool

    def clamp(self, signed: bool) -> tuple[int, int]:
        return int_bounds(signed, self.narrow, self.out_bits)


def trunc_params(node: Node) -> TruncParams:
    params = _trunc_params(node)
    if params.shift < 0:
        raise QccError(f"Trunc {node.name!r}: its output step is finer than its input's "
                       f"(shift {params.shift}); qcc compiles truncations, not extensions")
    return params


def _trunc_params(node: Node) -> TruncParams:
    """The constants of a Trunc that compiles (every input but x constant, one scale, zero
    point 0, shift >= 0); one QccError naming the node otherwise."""
    for v in node.inputs[1:]:
        if v is None or not v.is_const:
            raise QccError(f"Trunc {node.name!r}: scale, zero point and bit widths must be "
                           "constants to compile")
    if len(node.inputs) not in (5, 6):
        raise QccError(f"Trunc {node.name!r}: takes 5 (v1) or 6 (v2) inputs, not "
                       f"{len(node.inputs)}")
    consts = [np.asarray(v.const, dtype=np.float64) for v in node.inputs[1:]]
    if any(c.size != 1 for c in consts):
        raise QccError(f"Trunc {node.name!r}: a per-channel scale, zero point or bit width is "
                       "not supported (one per tensor)")
    values = [float(c.ravel()[0]) for c in consts]
    scale, zero = values[0], values[1]
    check_scale(node, np.asarray(scale))
    if zero != 0:
        raise QccError(f"Trunc {node.name!r}: qcc compiles a zero point of 0 only, got {zero:g}")
    in_bits = bit_width(node, consts[2])
    mode = str(node.attrs.get("rounding_mode", "FLOOR")).upper()
    rounding(node, "FLOOR")  # a known mode
    if len(node.inputs) == 5:  # v1: the low in_bits - out_bits bits go, the scale stays
        out_bits = bit_width(node, consts[3], "output bit width")
        return TruncParams(scale, in_bits, in_bits - out_bits, mode, scale, out_bits, None,
                           False)
    out_scale, out_bits = values[3], bit_width(node, consts[4], "output bit width")
    check_scale(node, np.asarray(out_scale))
    shift = int(np.round(np.log2(out_scale / scale)))  # QONNX: a power of two
    return TruncParams(scale, in_bits, shift, mode, out_scale, out_bits,
                       bool(node.attrs.get("signed", 1)), bool(node.attrs.get("narrow", 0)))


def qtrunc(node: Node, x: np.ndarray) -> np.ndarray:
    """QTrunc on codes (module docstring): the integer form of a compiled QONNX Trunc."""
    a = node.attrs
    v = trunc_shift(np.asarray(x, dtype=np.int64) - int(a.get("x_zero_point", 0)),
                    int(a["shift"]), str(a.get("rounding_mode", "FLOOR")))
    v = np.clip(v, int(a["clamp_lo"]), int(a["clamp_hi"])) + int(a.get("out_zero_point", 0))
    lo, hi = int(a["out_lo"]), int(a["out_hi"])
    return np.clip(v, lo, hi).astype(storage_dtype(lo, hi))


# -- APoTQuant (qcc) ------------------------------------------------------------------------
def apot_format(node: Node) -> apot.APoTFormat:
    try:
        return apot.APoTFormat(int(node.attrs["bits"]), int(node.attrs.get("k", 2)),
                               bool(node.attrs.get("signed", 1)))
    except KeyError:
        raise QccError(f"APoTQuant {node.name!r} needs the attribute bits") from None
    except ValueError as e:
        raise QccError(f"APoTQuant {node.name!r}: {e}") from None


def _alpha(node: Node, alpha: np.ndarray) -> float:
    if np.size(alpha) != 1:
        raise QccError(f"APoTQuant {node.name!r}: alpha must be one number (one per tensor)")
    check_scale(node, alpha)
    return float(np.asarray(alpha, dtype=np.float64).ravel()[0])


@lru_cache(maxsize=64)
def _grid_table(fmt: apot.APoTFormat) -> np.ndarray:
    """For every integer u in [0, max L]: the nearest integer level L, ties to the smaller."""
    levels = np.unique(fmt.integer_levels)
    grid = np.arange(int(levels[-1]) + 1)
    return levels[np.searchsorted((levels[:-1] + levels[1:]) / 2, grid, side="left")]


def project_normalized(node: Node, x: np.ndarray, alpha: float) -> np.ndarray:
    """Π_{Q(1,b)}(clip(x/α)) in float64. With grid_rounding = 1 the projection goes through
    the integer grid of the levels, as the integer graph computes it from an exact accumulator:
    u = x/(α·γ·2^-E) rounded half away from zero and clipped, then its nearest level."""
    fmt = apot_format(node)
    if not node.attrs.get("grid_rounding", 0):
        return apot.dequantize(apot.quantize(x, fmt, alpha), fmt)
    top = int(fmt.integer_levels.max())
    u = x.astype(np.float64) / (alpha * float(fmt.unit))
    u = np.clip(np.sign(u) * np.floor(np.abs(u) + 0.5), -top if fmt.signed else 0, top)
    return np.sign(u) * _grid_table(fmt)[np.abs(u).astype(np.int64)] / top


@float_kernel(APOT_OP)
def apot_quant(node: Node, x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """seeds/004 eq. 7: y = α · Π_{Q(1,b)} ⌊x/α, 1⌉."""
    a = _alpha(node, alpha)
    return (a * project_normalized(node, x, a)).astype(x.dtype)


@vjp(APOT_OP)
def apot_quant_vjp(node: Node, inputs: list, outputs: list, grads: list) -> list:
    """dx = dy inside [-α, α] ([0, α] unsigned), else 0 (STE); dα by eq. 8."""
    x, alpha = inputs
    dy = grads[0]
    if dy is None:
        return [None, None]
    fmt, a = apot_format(node), _alpha(node, alpha)
    x64 = x.astype(np.float64)
    low = -a if fmt.signed else 0.0
    inside = (x64 >= low) & (x64 <= a)
    # eq. 8: sign(x) outside, Π(x/α) − x/α inside
    d_alpha = np.where(np.abs(x64) > a, np.sign(x64), project_normalized(node, x64, a) - x64 / a)
    if not fmt.signed:
        d_alpha = np.where(x64 < 0, 0.0, d_alpha)  # clipped to 0: y = 0 whatever α
    dx = np.where(inside, dy, 0).astype(x.dtype)
    return [dx, np.asarray(np.sum(dy.astype(np.float64) * d_alpha)).reshape(np.shape(alpha))
            .astype(alpha.dtype)]


# -- registration ---------------------------------------------------------------------------
@shape_fn(*QUANTIZER_OPS)
def same_as_input(node: Node, inputs: list[TensorType | None]) -> list[TensorType]:
    """The output has x's shape and type; a bit width must be a constant (it decides codes)."""
    for i in _bit_width_inputs(node):
        t = inputs[i] if i < len(inputs) else None
        if t is not None and t.const is None:
            raise QccError(f"{node.op_type} {node.name!r}: the bit width "
                           f"({node.inputs[i].name!r}) must be a constant")
    for i in _scale_inputs(node):
        t = inputs[i] if i < len(inputs) else None
        if t is not None and t.const is not None:
            check_scale(node, t.const)
    x = inputs[0]
    return [TensorType(x.shape if x is not None else None,
                       x.dtype if x is not None else np.dtype(np.float32))]


def _scale_inputs(node: Node) -> tuple[int, ...]:
    if node.op_type == "Trunc" and len(node.inputs) == 6:
        return (1, 4)
    return (1,)


def _bit_width_inputs(node: Node) -> tuple[int, ...]:
    if node.op_type == "Quant":
        return (3,)
    if node.op_type == "Trunc":
        return (3, 4) if len(node.inputs) == 5 else (3, 5)
    return ()


@shape_fn("QTrunc")
def _qtrunc_shape(node: Node, inputs: list[TensorType | None]) -> list[TensorType]:
    x = inputs[0]
    dtype = storage_dtype(int(node.attrs["out_lo"]), int(node.attrs["out_hi"]))
    return [TensorType(x.shape if x is not None else None, dtype)]


@range_fn("QTrunc")
def _qtrunc_range(node: Node, inputs: list[CodeRange | None]) -> CodeRange | None:
    return int(node.attrs["out_lo"]), int(node.attrs["out_hi"])


for _op in QONNX_OPS:
    declare(_op, domains=QONNX_DOMAINS)
declare(APOT_OP, domains=(QCC_DOMAIN,))
