"""The NumPy integer interpreter: integer-only between the edges, requantization arithmetic, and
agreement with the float model it was compiled from."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.numpy_int import run_integer
from backends.numpy_int.kernels import _round_shift_small, divide_round
from passes import run_passes
from passes.calibrate import calibrate
from passes.quantize_graph import QuantConfig, multiplier_shift, quantize_graph
from qcc import zoo
from qcc.core.float_exec import run_batched
from qcc.core.numerics.rounding import round_shift
from qcc.core.onnx_import import import_model

EDGE_OPS = {"Quantize", "QuantizeLinear"}


def compiled(name: str, bits: int = 8, scheme: str = "fixed"):
    graph = run_passes(import_model(zoo.MODELS[name]()), ["fold_batchnorm"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, *graph.inputs[0].shape[1:])).astype(np.float32)
    return graph, quantize_graph(graph, calibrate(graph, x),
                                 QuantConfig(scheme=scheme, default_bits=bits))


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_no_float_array_between_input_quantize_and_output_dequantize(name: str) -> None:
    """Every tensor produced after the input quantization and before the output dequantization
    is an integer array (the env of the run, as the interpreter hands it from node to node)."""
    _, integer = compiled(name)
    x = np.random.default_rng(1).normal(size=integer.inputs[0].shape).astype(np.float32)
    env, report = run_integer(integer, {"input": x}, keep_all=True)
    inside = set()
    for node in integer.nodes:
        if node.op_type == "Dequantize":
            continue
        for v in node.outputs:
            inside.add(v.name)
    assert inside and all(env[n].dtype.kind in "iu" for n in inside), {
        n: env[n].dtype for n in inside if env[n].dtype.kind not in "iu"}
    assert all(report.dtypes[n] == str(env[n].dtype) for n in inside)
    consts = [v for v in integer.values.values() if v.is_const]
    assert all(v.const.dtype.kind in "iu" for v in consts)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-(1 << 40), 1 << 40), min_size=1, max_size=20),
       st.integers(0, 30))
def test_fast_round_shift_equals_round_shift(values: list[int], shift: int) -> None:
    x = np.array(values, dtype=np.int64)
    np.testing.assert_array_equal(_round_shift_small(x, np.asarray(shift)), round_shift(x, shift))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-10_000, 10_000), min_size=1, max_size=20), st.integers(1, 99))
def test_divide_round_is_nearest_ties_away(values: list[int], count: int) -> None:
    from fractions import Fraction

    got = divide_round(np.array(values, np.int64), np.int64(count))
    for v, g in zip(values, got):
        q = Fraction(v, count)
        expected = int(abs(q) + Fraction(1, 2)) * (1 if q >= 0 else -1)
        assert g == expected


@settings(max_examples=300, deadline=None)
@given(st.floats(1e-6, 1e3, allow_nan=False))
def test_multiplier_shift_approximates_ratio(ratio: float) -> None:
    m, s = multiplier_shift(ratio)
    assert 1 <= m < 1 << 24 and s >= 0
    assert abs(m * 2.0 ** -s - ratio) <= ratio * 2.0 ** -23


def test_power_of_two_ratios_are_pure_shifts() -> None:
    assert multiplier_shift(2.0 ** -7) == (1, 7)
    assert multiplier_shift(1.0) == (1, 0)
    assert multiplier_shift(8.0) == (8, 0)


@pytest.mark.parametrize("name", ["mlp_digits", "resnet8"])
def test_sixteen_bits_track_the_float_model(name: str) -> None:
    """At 16 bits the integer graph reproduces the float logits to a small fraction of their
    range, and picks the same class."""
    graph, integer = compiled(name, bits=16)
    x = np.random.default_rng(2).normal(size=(40, *graph.inputs[0].shape[1:])).astype(np.float32)
    expected = np.concatenate([r["output"] for r in run_batched(graph, x)])
    got, report = run_integer(integer, {"input": x}, check=False)
    scale = np.abs(expected).max()
    assert np.abs(got["output"] - expected).max() < 2e-3 * scale
    assert np.array_equal(got["output"].argmax(1), expected.argmax(1))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 2), st.integers(8, 72), st.integers(1, 8), st.integers(0, 1),
       st.integers(0, 2**31 - 1))
def test_exact_conv_equals_int64_reference(n: int, channels: int, out_channels: int,
                                           pad: int, seed: int) -> None:
    """Codes large enough that a single float32 conv could round (K·|x|·|w| >= 2^24) take the
    channel-sliced path; both paths equal a plain int64 tap-by-tap convolution."""
    from backends.numpy_int.kernels import _exact_conv
    from qcc.core.ir import Node

    rng = np.random.default_rng(seed)
    x = rng.integers(-255, 256, size=(n, channels, 6, 5)).astype(np.int64)
    w = rng.integers(-128, 128, size=(out_channels, channels, 3, 3)).astype(np.int64)
    node = Node("QConv", "c", [], [], {"pads": [pad] * 4, "kernel_shape": [3, 3]})
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = xp.shape[2] - 2, xp.shape[3] - 2
    expected = sum(np.einsum("nchw,oc->nohw", xp[:, :, i:i + oh, j:j + ow], w[:, :, i, j])
                   for i in range(3) for j in range(3))
    np.testing.assert_array_equal(_exact_conv(node, x, w), expected)
