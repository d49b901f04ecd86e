"""The p_m certificate (Clopper-Pearson), the width knapsack, the divergence-aware warm-up and
the budget parser of `--bits auto` (passes/precision.py, passes/allocate_widths.py,
qcc/core/float_train.py), each against an independent reference."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from scipy.stats import beta

from passes import precision
from passes.allocate_widths import (
    NoiseModel,
    Widths,
    fit_ram,
    parse_bytes,
    storable_bits,
    weight_allocation,
)
from qcc.core.errors import QccError
from qcc.core.float_train import TrainConfig, TrainingDiverged, data_scaled_rates, warm_up
from qcc.core.onnx_import import import_model


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3000), st.data())
def test_upper_bound_is_scipys_clopper_pearson(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n - 1))
    assert precision.mismatch_upper_bound(k, n) == pytest.approx(beta.ppf(0.95, k + 1, n - k),
                                                                 rel=1e-9, abs=1e-12)


def test_issue_example_and_samples_needed() -> None:
    """0 of 32 is consistent with p_m near 9 % (the issue); 1 % needs 299 clean samples."""
    assert precision.mismatch_upper_bound(0, 32) == pytest.approx(0.0894, abs=1e-4)
    assert precision.mismatch_upper_bound(32, 32) == 1.0
    n = precision.samples_to_certify(0.01)
    assert precision.mismatch_upper_bound(0, n) <= 0.01 < precision.mismatch_upper_bound(0, n - 1)
    assert n == 299


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 12), st.floats(0, 100)), min_size=1,
                         max_size=3), min_size=1, max_size=4), st.integers(0, 40))
def test_knapsack_is_exact(items: list, budget: int) -> None:
    """The DP's total noise equals brute force over every combination within the budget."""
    costs = [[c for c, _ in item] for item in items]
    noises = [[e for _, e in item] for item in items]
    combos = [(sum(n[j] for n, j in zip(noises, pick)), pick)
              for pick in itertools.product(*(range(len(c)) for c in costs))
              if sum(c[j] for c, j in zip(costs, pick)) <= budget]
    chosen = precision.allocate_widths(costs, noises, budget)
    if not combos:
        assert chosen is None
        return
    assert sum(c[j] for c, j in zip(costs, chosen)) <= budget
    assert sum(n[j] for n, j in zip(noises, chosen)) == pytest.approx(min(combos)[0])


def test_step_scaled_gains_reduce_to_eq1_for_unit_ranges() -> None:
    """With r = 1 (signed, Delta = 2^-(B-1)) the scaled gains are 4·E: eq. 1 unchanged; a
    tensor of range 256 asks for log2(256) = 8 more bits than the same gain at range 1."""
    gains = [1.52e6, 5.51e4, 3.27e2]
    steps = [2.0 ** -7] * 3
    scaled = precision.step_scaled_gains(gains, steps, [8, 8, 8])
    assert scaled == pytest.approx([4 * g for g in gains])
    assert precision.feedforward_offsets(scaled, [])[0] == precision.feedforward_offsets(
        gains, [])[0]
    wide = precision.step_scaled_gains([1.0, 1.0], [2.0 ** -7, 256 * 2.0 ** -7], [8, 8])
    assert precision.feedforward_offsets(wide, [])[0] == [0, 8]


def test_storable_widths_and_byte_sizes() -> None:
    assert [storable_bits(b) for b in (2, 3, 5, 8, 9, 13, 16)] == [2, 3, 5, 8, 16, 16, 16]
    assert parse_bytes("4096") == 4096
    assert parse_bytes("64KiB") == 65536
    assert parse_bytes("1.5 MiB") == 1572864
    assert parse_bytes("100kB") == 100000
    for bad in ("lots", "-1", "0", "12 parsecs"):
        with pytest.raises(QccError):
            parse_bytes(bad)


def _mlp(path, w1: np.ndarray, w2: np.ndarray) -> onnx.ModelProto:
    init = [numpy_helper.from_array(w1.astype(np.float32), "w1"),
            numpy_helper.from_array(w2.astype(np.float32), "w2")]
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", w1.shape[0]])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", w2.shape[1]])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def test_warm_up_lowers_the_rate_of_a_diverging_run(tmp_path) -> None:
    """Raw 0..255 inputs: the first layer's rate is scaled by 1 / mean(x²); at a base rate of
    1e4 the loss still blows up, and the warm-up records that and trains at a smaller rate
    whose loss falls."""
    rng = np.random.default_rng(0)
    graph = import_model(_mlp(tmp_path / "m.onnx", rng.normal(0, 0.3, (8, 16)),
                              rng.normal(0, 0.3, (16, 3))))
    x = rng.uniform(0, 255, (64, 8)).astype(np.float32)
    y = (x[:, 0] > x[:, 1]).astype(np.int64) + (x[:, 2] > 128)
    assert data_scaled_rates(graph, x)["w1"] == pytest.approx(1 / np.mean(
        np.square(x, dtype=np.float64)))
    config = TrainConfig(epochs=2, batch_size=16, lr=1e4, progress=False)
    result = warm_up(graph, x, y, config)
    assert result.loss_fell and result.loss[-1] < result.initial_loss
    assert result.attempts[0]["outcome"].startswith("diverged")
    assert result.attempts[-1]["lr"] < 1e4
    assert result.layers[0].lr_scale == pytest.approx(data_scaled_rates(graph, x)["w1"])
    with pytest.raises(TrainingDiverged, match="did not converge"):
        warm_up(graph, x, y, config, tries=1)


def test_warm_up_stops_when_no_rate_makes_the_loss_fall(tmp_path) -> None:
    """All-zero inputs to a bias-free ReLU net: every gradient is zero, the loss sits at
    log(M) whatever the rate, and the warm-up says so in one line."""
    rng = np.random.default_rng(1)
    graph = import_model(_mlp(tmp_path / "m.onnx", rng.normal(size=(4, 6)),
                              rng.normal(size=(6, 2))))
    x = np.zeros((16, 4), np.float32)
    y = np.arange(16) % 2
    with pytest.raises(TrainingDiverged) as info:
        warm_up(graph, x, y, TrainConfig(epochs=1, batch_size=8, lr=0.1, progress=False),
                tries=3)
    assert "\n" not in str(info.value) and "did not fall" in str(info.value)


def test_fit_ram_lowers_the_cheapest_activations_first() -> None:
    """A made-up arena (2 bytes per 16-bit activation, 1 per 8-bit, x100): activations drop to
    8 bits in the order of the noise they add, E_A·(4^-8 - 4^-16), until it fits."""
    model = NoiseModel([10, 10, 10], [1.0, 1.0, 1.0], [5.0, 1.0, 3.0])
    widths = Widths([8, 8, 8], [16, 16, 16], 8)

    def ram_of(w: Widths) -> int:
        return 100 * sum(b // 8 for b in w.activations)

    assert fit_ram(widths, model, ram_of, 600) == widths
    assert fit_ram(widths, model, ram_of, 500).activations == [16, 8, 16]
    assert fit_ram(widths, model, ram_of, 400).activations == [16, 8, 8]
    assert fit_ram(widths, model, ram_of, 299) is None


def test_weight_allocation_spends_bits_where_the_gain_is() -> None:
    """Two layers of 100 weights, one with 4^8 times the other's noise gain: with 18 bits a
    weight to spend, 16 + 2 bits (noise 4^-8 + 4^-2) beats 8 + 8 (1 + 4^-8); with 16, only
    8 + 8 or worse fit; below 2 + 2 bits nothing does."""
    model = NoiseModel([100, 100], [4.0 ** 8, 1.0], [1.0, 1.0])
    assert weight_allocation(model, (2, 4, 8, 16), 1800) == [16, 2]
    assert weight_allocation(model, (2, 4, 8, 16), 1600) == [8, 8]
    assert weight_allocation(model, (2, 4, 8, 16), 399) is None
