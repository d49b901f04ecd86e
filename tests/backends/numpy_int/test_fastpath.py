"""The fast exact paths of QConv, QGemm and QAdd (backends/numpy_int/fastpath.py) against the
plain int64 reference: an int64 tap-by-tap convolution, matmul or sum, then kernels.requantize.
Codes and saturation counts must agree, with codes at the extremes of their storage types
(16-bit activations times 16-bit weights, where float32 is not exact)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.numpy_int import fastpath, kernels
from backends.numpy_int.interpreter import _OVERFLOWS
from qcc.core.ir import Node, Value
from qcc.core.ops import nn

CODE_TYPES = [np.int8, np.uint8, np.int16, np.uint16]
OUT_RANGES = [(-128, 127), (0, 255), (-32768, 32767), (0, 65535)]


def counting(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, dict[str, int]]:
    """fn's result and the saturations it reported."""
    counts: dict[str, int] = {}
    token = _OVERFLOWS.set(counts)
    try:
        return fn(), counts
    finally:
        _OVERFLOWS.reset(token)


def codes(rng: np.random.Generator, dtype: type, shape: tuple[int, ...], extremes: bool
          ) -> np.ndarray:
    """Random codes of `dtype`; with `extremes`, most of them its lowest or highest code."""
    info = np.iinfo(dtype)
    x = rng.integers(int(info.min), int(info.max) + 1, size=shape, dtype=np.int64)
    if extremes:
        pick = rng.random(shape) < 0.8
        x[pick] = rng.choice([int(info.min), int(info.max)], size=int(pick.sum()))
    return x.astype(dtype)


@st.composite
def requant_attrs(draw: st.DrawFn, channels: int) -> dict:
    """multiplier / shift (one or per channel), output format, zero point and fused ReLU."""
    lo, hi = draw(st.sampled_from(OUT_RANGES))
    per_channel = draw(st.booleans())
    n = channels if per_channel else 1
    big = draw(st.booleans())  # large multipliers push the bound towards float64 / int64
    mult = draw(st.lists(st.integers(1, (1 << 23) if big else 4), min_size=n, max_size=n))
    shift = draw(st.lists(st.integers(0, 40 if big else 12), min_size=n, max_size=n))
    return {"multiplier": mult if per_channel else mult[0],
            "shift": shift if per_channel else shift[0],
            "out_zero_point": draw(st.sampled_from([0, lo, hi, (lo + hi) // 2])),
            "out_lo": lo, "out_hi": hi, "relu": int(draw(st.booleans()))}


def reference_conv(x: np.ndarray, zx: int, w: np.ndarray, b: np.ndarray, stride: int,
                   pad: int, groups: int) -> np.ndarray:
    """Σ (x − zx)·w + b in int64, tap by tap."""
    xp = np.pad(x.astype(np.int64) - zx, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    m, cg, kh, kw = w.shape
    oh = (xp.shape[2] - kh) // stride + 1
    ow = (xp.shape[3] - kw) // stride + 1
    acc = np.zeros((x.shape[0], m, oh, ow), np.int64) + b.astype(np.int64).reshape(1, -1, 1, 1)
    mg = m // groups
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            for g in range(groups):
                acc[:, g * mg:(g + 1) * mg] += np.einsum(
                    "nchw,oc->nohw", patch[:, g * cg:(g + 1) * cg],
                    w[g * mg:(g + 1) * mg, :, i, j].astype(np.int64))
    return acc


@settings(max_examples=80, deadline=None)
@given(st.data(), st.sampled_from(CODE_TYPES), st.sampled_from(CODE_TYPES), st.booleans(),
       st.integers(1, 2), st.integers(1, 2), st.integers(0, 1), st.integers(1, 2),
       st.integers(0, 2**31 - 1))
def test_fast_conv_equals_int64_reference(data: st.DataObject, x_type: type, w_type: type,
                                          extremes: bool, n: int, stride: int, pad: int,
                                          groups: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    channels, out_channels = 2 * int(rng.integers(1, 4)), 2 * int(rng.integers(1, 4))
    attrs = data.draw(requant_attrs(out_channels))
    info = np.iinfo(x_type)
    zx = int(rng.choice([0, int(info.min), int(info.max), int(rng.integers(info.min, info.max))]))
    x = codes(rng, x_type, (n, channels, 5, 6), extremes)
    w = codes(rng, w_type, (out_channels, channels // groups, 3, 3), extremes)
    b = codes(rng, np.int16, (out_channels,), extremes).astype(np.int32)
    attrs.update({"x_zero_point": zx, "pads": [pad] * 4, "strides": [stride] * 2,
                  "kernel_shape": [3, 3], "group": groups})
    node = Node("QConv", "c", [], [Value("y")], attrs)
    got, got_counts = counting(lambda: kernels.qconv(node, x, w, b))
    acc = reference_conv(x, zx, w, b, stride, pad, groups)
    expected, counts = counting(lambda: kernels.requantize(acc, node, axis=1))
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == expected.dtype and got_counts == counts


@settings(max_examples=80, deadline=None)
@given(st.data(), st.sampled_from(CODE_TYPES), st.sampled_from(CODE_TYPES), st.booleans(),
       st.booleans(), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_fast_gemm_equals_int64_reference(data: st.DataObject, x_type: type, w_type: type,
                                          extremes: bool, trans_b: bool, n: int,
                                          seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, m = int(rng.integers(1, 300)), int(rng.integers(1, 12))
    attrs = data.draw(requant_attrs(m))
    zx = int(rng.choice([0, int(np.iinfo(x_type).max)]))
    x = codes(rng, x_type, (n, k), extremes)
    w = codes(rng, w_type, (m, k) if trans_b else (k, m), extremes)
    b = codes(rng, np.int16 if k < 100 else np.int32, (m,), extremes).astype(np.int32)
    attrs.update({"x_zero_point": zx, "transB": int(trans_b)})
    node = Node("QGemm", "g", [], [Value("y")], attrs)
    got, got_counts = counting(lambda: kernels.qgemm(node, x, w, b))
    acc = (x.astype(np.int64) - zx) @ (w.T if trans_b else w).astype(np.int64) + b
    expected, counts = counting(lambda: kernels.requantize(acc, node, axis=1))
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == expected.dtype and got_counts == counts


@settings(max_examples=80, deadline=None)
@given(st.data(), st.lists(st.sampled_from(CODE_TYPES), min_size=1, max_size=3),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_fast_sum_equals_int64_reference(data: st.DataObject, types: list[type],
                                         extremes: bool, seed: int) -> None:
    """QAdd / Requantize: Σ (x_i − z_i)·M_i, then round_shift by S and the output format."""
    rng = np.random.default_rng(seed)
    xs = [codes(rng, t, (2, 3, 4, 5), extremes) for t in types]
    attrs = data.draw(requant_attrs(1))
    attrs.pop("multiplier")
    attrs["multipliers"] = [int(rng.integers(1, 1 << int(rng.integers(1, 20)))) for _ in xs]
    attrs["zero_points"] = [int(rng.choice([0, int(np.iinfo(t).max)])) for t in types]
    node = Node("QAdd", "a", [], [Value("y")], attrs)
    got, got_counts = counting(lambda: kernels.rescale_sum(node, *xs))
    acc = sum((x.astype(np.int64) - z) * m
              for x, z, m in zip(xs, attrs["zero_points"], attrs["multipliers"]))
    plain = {k: v for k, v in attrs.items() if k not in ("multipliers", "zero_points")}
    ref = Node("QAdd", "a", [], [Value("y")], plain)
    expected, counts = counting(lambda: kernels.requantize(np.asarray(acc, np.int64), ref))
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == expected.dtype and got_counts == counts


@pytest.mark.parametrize("x_type, w_type, expected", [
    (np.uint8, np.int8, np.float32), (np.int16, np.int16, np.float64),
    (np.uint16, np.int16, np.float64), (np.int32, np.int32, None)])
def test_float_type_follows_the_bound(x_type: type, w_type: type, expected: type | None) -> None:
    """8-bit codes take one float32 GEMM, 16-bit ones float64; 32-bit ones the int64 path."""
    w = np.full((4, 16, 3, 3), np.iinfo(w_type).max, w_type)  # 255·127·144 < 2^24
    x = np.zeros((1, 16, 4, 4), x_type)
    node = Node("QConv", "c", [], [Value("y")], {"out_lo": 0, "out_hi": 255, "shift": 8,
                                                  "pads": [1] * 4, "kernel_shape": [3, 3]})
    plan = fastpath.dot_plan(node, x, w, None)
    assert (plan is None) if expected is None else plan.weights.dtype == expected


def test_fast_conv_in_chunks_equals_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch whose patch matrix exceeds nn.CHUNK_BYTES is convolved a few images at a time."""
    rng = np.random.default_rng(3)
    x = codes(rng, np.uint8, (5, 3, 6, 7), True)
    w = codes(rng, np.int8, (4, 3, 3, 3), True)
    attrs = {"out_lo": -128, "out_hi": 127, "shift": 7, "pads": [1] * 4, "kernel_shape": [3, 3]}
    whole, whole_counts = counting(lambda: kernels.qconv(Node("QConv", "c", [], [Value("y")],
                                                              dict(attrs)), x, w))
    monkeypatch.setattr(nn, "CHUNK_BYTES", 1)
    parts, counts = counting(lambda: kernels.qconv(Node("QConv", "c", [], [Value("y")],
                                                        dict(attrs)), x, w))
    np.testing.assert_array_equal(parts, whole)
    assert counts == whole_counts and sum(counts.values()) > 0
