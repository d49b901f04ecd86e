"""passes/weight_noise.py: the measured reflected noise against eq. 6's own arithmetic
(passes/precision.noise_gain), on digits, and as the knapsack's noise (allocate_widths)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from passes import run_passes
from passes.allocate_widths import NoiseModel, weight_allocation
from passes.precision import noise_gain
from passes.weight_noise import measured_weight_noise, reflected_noise
from passes.weight_rounding import layer_inputs
from qcc.core.layers import weighted_nodes
from qcc.core.onnx_import import import_model

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"


def test_reflected_noise_is_eq6_on_the_realized_perturbation() -> None:
    """Below the cap of one per sample, N = eq. 6's mean_n Σ_{i≠ŷ} sq[n, i] / (2 margin²)
    with sq[n, i] = (δZ_i - δZ_ŷ)², the squared change of each margin."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 10)) * 3
    delta = rng.normal(size=z.shape) * 1e-3
    yhat = z.argmax(axis=1)
    sq = (delta - delta[np.arange(50), yhat][:, None]) ** 2
    np.testing.assert_allclose(reflected_noise(z, z + delta), noise_gain(z, sq), rtol=1e-12)
    assert reflected_noise(z, z + 1e6 * delta) <= 1.0  # each sample counts at most once


def test_digits_weight_noise_falls_with_width_and_leaves_the_graph_as_it_was() -> None:
    graph = run_passes(import_model(DIGITS / "digits.onnx"), ["fold_batchnorm"])
    x = np.load(DIGITS / "calib.npz")["x"][:128]
    nodes = weighted_nodes(graph)
    before = [n.inputs[1].const.copy() for n in nodes]
    for rounding in (None, layer_inputs(graph, x)):
        noise = measured_weight_noise(graph, x, nodes, "fixed", (2, 4, 8), rounding)
        for row in noise:
            assert row[2] > row[4] > row[8] >= 0
    assert all(np.array_equal(n.inputs[1].const, w) for n, w in zip(nodes, before))


def test_knapsack_takes_measured_noise_and_scales_it_to_wider_widths() -> None:
    """Layer 0's predicted gain is 4^8 times layer 1's, but measured at 2..8 bits they are
    the other way round: the knapsack follows the measurement; 16 bits is the 8-bit
    measurement times 4^-8."""
    model = NoiseModel([100, 100], [4.0 ** 8, 1.0], [1.0, 1.0],
                       [{2: 0.1, 4: 0.01, 8: 1e-4}, {2: 0.9, 4: 0.5, 8: 0.2}])
    assert model.weight_noise(1, 16) == 0.2 * 4.0 ** -8
    assert weight_allocation(model, (2, 4, 8, 16), 1800) == [2, 16]
