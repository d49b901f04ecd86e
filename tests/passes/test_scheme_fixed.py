"""passes/schemes/fixed.py: seeds/001 §2.1 fixed point with one power-of-two range per weight
output channel, checked against the per-tensor format of qcc.core.numerics.fixed, against
hand-worked ranges, and end to end (shift-only requantization, training graphs per tensor)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from passes import run_passes
from passes.calibrate import calibrate
from passes.quantize_graph import QuantConfig, quantize_graph
from passes.schemes import get_scheme
from qcc import zoo
from qcc.core.numerics import fixed
from qcc.core.onnx_import import import_model

FIXED = get_scheme("fixed")


def test_each_channel_takes_its_own_power_of_two_range() -> None:
    """Channel ranges 0.9 -> r = 1, 0.2 -> r = 1/4, 3 -> r = 4: steps r·2^-7 at 8 bits."""
    w = np.array([[0.9, -0.5], [0.2, -0.1], [3.0, 1.0]])
    codes, fmt = FIXED.weight(w, 8, 0)
    assert fmt.spec.extra["pdrs"] == [1.0, 0.25, 4.0] and fmt.spec.pdr == 4.0
    np.testing.assert_array_equal(fmt.scales, [2.0 ** -7, 2.0 ** -9, 2.0 ** -5])
    np.testing.assert_array_equal(codes, [[115, -64], [102, -51], [96, 32]])
    assert str(fmt.spec) == "fx8(r=2^-2..2^2)"


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=4, max_side=5),
                  elements=st.floats(-8, 8, allow_subnormal=False)), st.integers(2, 16))
def test_every_channel_equals_the_per_tensor_format_of_that_channel(w: np.ndarray,
                                                                    bits: int) -> None:
    """Property: channel c's codes are exactly qcc.core.numerics.fixed.quantize of w_c in
    format_for(w_c), except dead channels, which take the layer's largest range."""
    codes, fmt = FIXED.weight(w, bits, 0)
    peak = np.abs(w).max()
    for c in range(w.shape[0]):
        own = fixed.format_for(w[c], bits)
        if np.abs(w[c]).max() <= peak * 2.0 ** -24:
            own = fixed.format_for(w, bits)
        expected, _, _ = fixed.quantize(w[c], own)
        np.testing.assert_array_equal(codes[c], expected)
        assert fmt.scales[min(c, fmt.scales.size - 1)] == own.step


def test_bias_floor_raises_a_channel_range_by_powers_of_two() -> None:
    """A bias that would need more than 2^30 accumulator steps at the channel's own step gets
    the smallest power-of-two step that holds it (the scale stays a power of two)."""
    w = np.array([[1e-6, -1e-6], [0.5, 0.25]])
    _, own = FIXED.weight(w, 8, 0)
    _, floored = FIXED.weight(w, 8, 0, min_scale=np.array([3e-7, 0.0]))
    assert own.scales[0] < 3e-7 <= floored.scales[0] < 6e-7
    assert floored.scales[1] == own.scales[1]
    assert np.log2(floored.scales[0]) == int(np.log2(floored.scales[0]))


@pytest.fixture(scope="module")
def resnet8():
    graph = run_passes(import_model(zoo.resnet8()), ["fold_batchnorm"])
    x = np.random.default_rng(0).normal(size=(8, 3, 32, 32)).astype(np.float32)
    return graph, calibrate(graph, x)


def test_requantization_stays_a_shift(resnet8) -> None:
    """Per-channel ranges keep every ratio Δ_x·Δ_W,c/Δ_y a power of two: M = 2^k, no
    multiplier tables beyond shifts (seeds/001 §2.1)."""
    graph, stats = resnet8
    q = quantize_graph(graph, stats, QuantConfig(scheme="fixed", default_bits=8))
    convs = [n for n in q.nodes if n.op_type in ("QConv", "QGemm")]
    assert any(len(set(n.attrs["shift"])) > 1 for n in convs)  # really per channel
    for n in convs:
        assert all(m & (m - 1) == 0 for m in n.attrs["multiplier"]), n.name


def test_training_graphs_keep_one_range_per_weight_tensor(resnet8) -> None:
    """The training step's update and backward sum over output channels with one weight step
    (QuantConfig.for_training)."""
    graph, stats = resnet8
    q = quantize_graph(graph, stats, QuantConfig(scheme="fixed", default_bits=8,
                                                 for_training=True))
    for n in q.nodes:
        if n.op_type in ("QConv", "QGemm"):
            assert "pdrs" not in n.inputs[1].quant.extra
            assert fixed.FixedFormat.from_spec(n.inputs[1].quant).bits == 8
