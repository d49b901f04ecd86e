"""QONNX Quant / BipolarQuant / Trunc and qcc's APoTQuant: kernels against the QONNX reference
(onnxruntime QDQ always, qonnx's own functions where installed), the STE and RCF's α gradient
(seeds/004 eq. 8) against the definitions written out from the paper's level sets."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from qcc.core.errors import QccError
from qcc.core.ir import Node
from qcc.core.numerics import apot
from qcc.core.ops.qonnx import (
    ROUNDING,
    apot_quant,
    apot_quant_vjp,
    bipolar_quant,
    bipolar_quant_vjp,
    int_bounds,
    quant,
    quant_vjp,
    trunc,
    trunc_shift,
)
from qcc.core.registry import lookup

QONNX = "qonnx.custom_op.general"


def node(op: str, domain: str = QONNX, **attrs) -> Node:
    return Node(op, op.lower(), [], [], attrs, 17, domain)


def f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def test_lookup_accepts_the_quantizer_domains_only():
    assert lookup(node("Quant")).kernel is quant
    assert lookup(node("Quant", "finn.custom_op.general")).kernel is quant
    assert lookup(node("APoTQuant", "qcc")).kernel is apot_quant
    for bad in (node("Quant", ""), node("Quant", "com.example"), node("Relu", QONNX)):
        with pytest.raises(QccError):
            lookup(bad)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8), st.booleans(), st.floats(0.01, 2.0), st.integers(0, 2**31 - 1))
def test_signed_quant_equals_onnxruntime_qdq(bits, per_channel, scale, seed):
    """Signed, non-narrow Quant with zero point 0 at 8 bits is QuantizeLinear(int8) followed by
    DequantizeLinear; at fewer bits it is that with the int8 codes clipped to the narrower range
    (both round half to even)."""
    rng = np.random.default_rng(seed)
    x = f32(rng.normal(scale=scale * 2 ** (bits - 1), size=(2, 3, 4)))
    s = f32(scale * rng.uniform(0.5, 1.5, size=(1, 3, 1))) if per_channel else f32(scale)
    y = quant(node("Quant", signed=1, narrow=0, rounding_mode="ROUND"), x, s, f32(0), f32(bits))
    lo, hi = int_bounds(True, False, bits)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
         helper.make_node("Clip", ["q", "lo", "hi"], ["c"]),
         helper.make_node("DequantizeLinear", ["c", "s", "z"], ["y"], axis=1)], "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor("s", TensorProto.FLOAT, [s.size], s.ravel()),
         helper.make_tensor("z", TensorProto.INT8, [s.size], [0] * s.size),
         helper.make_tensor("lo", TensorProto.INT8, [], [lo]),
         helper.make_tensor("hi", TensorProto.INT8, [], [hi])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(y, sess.run(None, {"x": x})[0], rtol=1e-6, atol=0)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.booleans(), st.booleans(),
       st.sampled_from(["ROUND", "FLOOR", "CEIL", "HALF_UP", "HALF_DOWN", "DOWN", "UP"]),
       st.integers(0, 2**31 - 1))
def test_quant_and_trunc_equal_qonnx_reference(bits, signed, narrow, mode, seed):
    qonnx_quant = pytest.importorskip(
        "qonnx.custom_op.general.intquant", reason="the qonnx package is not installed")
    qonnx_trunc = pytest.importorskip("qonnx.custom_op.general.trunc")
    rng = np.random.default_rng(seed)
    x = f32(rng.normal(scale=3.0, size=(2, 3, 5)))
    s = f32(rng.uniform(0.05, 1.0, size=(1, 3, 1)))
    z = f32(0 if signed else rng.integers(0, 2))
    attrs = {"signed": int(signed), "narrow": int(narrow), "rounding_mode": mode}
    if not (narrow and bits == 1):
        ours = quant(node("Quant", **attrs), x, s, z, f32(bits))
        ref = qonnx_quant.int_quant(x, s, z, f32(bits), signed, narrow, mode)
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)
    out_bits = max(1, bits - 2)
    ours = trunc(node("Trunc", rounding_mode=mode), x, s, z, f32(bits + 4), f32(out_bits))
    ref = qonnx_trunc.trunc_v1(x, s, z, f32(bits + 4), f32(out_bits), mode)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    if out_bits > 1 or not narrow:
        ours = trunc(node("Trunc", **attrs), x, s, z, f32(bits + 4), s * 4, f32(out_bits))
        ref = qonnx_trunc.trunc_v2(x, s, z, f32(bits + 4), narrow, signed, s * 4,
                                   f32(out_bits), mode)
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_bipolar_quant_and_bad_parameters():
    x = f32([-2.0, -0.0, 0.0, 0.3])
    np.testing.assert_array_equal(bipolar_quant(node("BipolarQuant"), x, f32(0.5)),
                                  [-0.5, 0.5, 0.5, 0.5])
    with pytest.raises(QccError, match="scale must be > 0"):
        quant(node("Quant"), x, f32(0.0), f32(0), f32(4))
    with pytest.raises(QccError, match="bit width"):
        quant(node("Quant"), x, f32(1.0), f32(0), f32(2.5))
    with pytest.raises(QccError, match="rounding_mode"):
        quant(node("Quant", rounding_mode="NEAREST"), x, f32(1.0), f32(0), f32(4))


# -- gradients ------------------------------------------------------------------------------
def _nearest(levels: list[Fraction], u: float) -> Fraction:
    """The nearest level, ties to the smaller magnitude (qcc's projection rule), found by brute
    force over the paper's exact level set."""
    return min(levels, key=lambda v: (abs(Fraction(u) - v), abs(v)))


def _eq8(w: float, alpha: float, levels: list[Fraction], signed: bool) -> float:
    """seeds/004 eq. 8 for one weight (unsigned: below 0 nothing depends on α)."""
    if not signed and w < 0:
        return 0.0
    if abs(w) > alpha:
        return float(np.sign(w))
    return float(_nearest(levels, w / alpha)) - w / alpha


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([(3, 1, True), (4, 2, True), (5, 2, True), (3, 2, True), (4, 2, False),
                        (3, 2, False), (4, 3, True)]),
       st.floats(0.2, 3.0), st.integers(0, 2**31 - 1))
def test_apot_alpha_gradient_is_eq8(fmt_args, alpha, seed):
    bits, k, signed = fmt_args
    fmt = apot.APoTFormat(bits, k, signed)
    levels = fmt.levels()  # eq. 5 / 6 as exact fractions
    rng = np.random.default_rng(seed)
    w = rng.normal(scale=alpha, size=64)
    dy = rng.normal(size=64)
    n = node("APoTQuant", "qcc", bits=bits, k=k, signed=int(signed))
    y = apot_quant(n, w, np.array(alpha))
    dw, dalpha = apot_quant_vjp(n, [w, np.array(alpha)], [y], [dy])
    expected = sum(g * _eq8(float(v), alpha, levels, signed) for g, v in zip(dy, w))
    np.testing.assert_allclose(float(dalpha), expected, rtol=1e-9, atol=1e-9)
    # forward: eq. 7 = α · the nearest level of the clipped W/α
    clip = (-1.0 if signed else 0.0, 1.0)
    ref = [alpha * float(_nearest(levels, float(np.clip(v / alpha, *clip)))) for v in w]
    np.testing.assert_allclose(y, ref, rtol=1e-12)
    # STE: the projection passes the gradient, the clipping stops it
    np.testing.assert_array_equal(dw, np.where((w >= clip[0] * alpha) & (w <= alpha), dy, 0))


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 6), st.booleans(), st.floats(0.05, 1.0), st.integers(0, 2**31 - 1))
def test_quant_scale_gradient_is_eq8_on_uniform_levels(bits, narrow, scale, seed):
    """Symmetric Quant (narrow: eq. 2's levels α·j/(2^(b-1) - 1) with α = scale·max_int): its
    scale gradient is max_int times eq. 8's α gradient. The non-narrow form adds one level below
    -α, which eq. 8 treats as inside."""
    top = (1 << (bits - 1)) - 1
    alpha = scale * top
    rng = np.random.default_rng(seed)
    w = rng.normal(scale=alpha, size=48)
    w = w[np.abs(np.abs(w / scale) % 1 - 0.5) > 1e-6]  # off the rounding ties
    dy = rng.normal(size=w.size)
    n = node("Quant", signed=1, narrow=int(narrow), rounding_mode="ROUND")
    args = [w, np.array(scale), np.array(0.0), np.array(float(bits))]
    dw, dscale, _, _ = quant_vjp(n, args, [quant(n, *args)], [dy])
    lo = -top if narrow else -top - 1
    levels = [Fraction(j, top) for j in range(lo, top + 1)]
    eq8 = [_eq8(float(v), alpha, levels, True) if (narrow or v >= -alpha) else
           (lo / top if v < lo * scale else float(_nearest(levels, v / alpha)) - v / alpha)
           for v in w]
    np.testing.assert_allclose(float(dscale), top * float(np.dot(dy, eq8)), rtol=1e-9,
                               atol=1e-9)
    # STE vs finite differences of the clipping alone (the rounding counts as the identity)
    surrogate = lambda v: scale * np.clip(v / scale, lo, top)  # noqa: E731
    h = 1e-6
    fd = dy * (surrogate(w + h) - surrogate(w - h)) / (2 * h)
    np.testing.assert_allclose(dw, fd, atol=1e-6)


def test_bipolar_gradient_is_eq8_with_sign_levels():
    rng = np.random.default_rng(3)
    x, dy, scale = rng.normal(size=50), rng.normal(size=50), 0.7
    n = node("BipolarQuant")
    dx, ds = bipolar_quant_vjp(n, [x, np.array(scale)], [None], [dy])
    # y = α·sign(x) is linear in α; the sign passes the gradient straight through
    h = 1e-6
    fd = np.dot(dy, (bipolar_quant(n, x, np.array(scale + h)) -
                     bipolar_quant(n, x, np.array(scale - h))) / (2 * h))
    np.testing.assert_allclose(float(ds), fd, rtol=1e-6)
    np.testing.assert_array_equal(dx, dy)


# -- QTrunc: the integer form of Trunc --------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-(1 << 40), 1 << 40), min_size=1, max_size=40),
       st.integers(0, 24), st.sampled_from(sorted(ROUNDING)))
def test_trunc_shift_is_the_rounding_of_the_quotient(values, shift, mode):
    """trunc_shift (int64 shifts) against the QONNX rounding functions on the quotient, which
    float64 holds exactly here (|v| < 2^53, divided by a power of two), ties included."""
    v = np.asarray(values + [k << shift for k in (-3, 3)] +
                   [(2 * k + 1) << max(shift - 1, 0) for k in (-2, -1, 0, 1)], dtype=np.int64)
    want = ROUNDING[mode](v.astype(np.float64) / 2.0 ** shift).astype(np.int64)
    np.testing.assert_array_equal(trunc_shift(v, shift, mode), want)
