"""numerics.binary against integer dot products, Python bit counts and sampling statistics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar

from qcc.core.numerics import binary as B
from qcc.core.numerics.rounding import RngState


def test_sign_of_zero_is_plus_one() -> None:
    assert B.sign_pm1([-2.0, -0.0, 0.0, 3.0]).tolist() == [-1, 1, 1, 1]


def test_binary_alpha_is_mean_abs_and_minimises_the_error() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 27))
    b, alpha = B.binarize(w)
    assert float(alpha) == pytest.approx(np.abs(w).mean())
    best = minimize_scalar(lambda a: np.sum((w - a * b) ** 2), bounds=(0, 5), method="bounded")
    assert float(alpha) == pytest.approx(best.x, abs=1e-4)
    _, per_channel = B.binarize(w, axis=0)
    assert per_channel.shape == (8, 1)
    assert np.allclose(per_channel[:, 0], np.abs(w).mean(axis=1))


@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=50))
def test_popcount_matches_python(words: list[int]) -> None:
    assert B.popcount32(words).tolist() == [bin(w).count("1") for w in words]


def test_pack_signs_layout() -> None:
    words = B.pack_signs([1, -1, -1, 1] + [-1] * 30 + [1])
    assert words.tolist() == [0b1001, 0b100]  # element 32w + j in bit j of word w
    assert int(B.popcount32(np.uint32(0xFFFFFFFF))) == 32


@given(st.integers(1, 100), st.integers(0, 2**32 - 1))
def test_xnor_popcount_dot_equals_integer_dot(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.choice([-1, 1], size=(3, n))
    b = rng.choice([-1, 1], size=(4, n))
    pa, pb = B.pack_signs(a), B.pack_signs(b)
    assert np.array_equal(B.unpack_signs(pa, n), a)
    dots = B.xnor_popcount_dot(pa[:, None, :], pb[None, :, :], n)
    assert np.array_equal(dots, a @ b.T)


def test_ternarize_threshold_rule() -> None:
    w = np.array([-1.0, -0.2, 0.05, 0.3, 0.9, 0.0])
    delta = 0.7 * np.abs(w).mean()
    codes, alpha = B.ternarize(w)
    assert codes.tolist() == [int(np.sign(v)) if abs(v) > delta else 0 for v in w]
    assert alpha == pytest.approx(np.abs(w)[np.abs(w) > delta].mean())
    codes, alpha = B.ternarize(np.zeros(4))
    assert codes.tolist() == [0, 0, 0, 0] and alpha == 0.0


@pytest.mark.parametrize("dtype", [np.float64, np.int32])
def test_stochastic_ternarization_is_unbiased(dtype: type) -> None:
    rng = np.random.default_rng(1)
    g = (rng.standard_normal(50) * 1000).astype(dtype)
    reps, total, state = 4000, np.zeros(50), RngState(9)
    for _ in range(reps):
        codes, scale, state = B.stochastic_ternarize(g, state)
        assert set(np.unique(codes).tolist()) <= {-1, 0, 1}
        total += scale * codes
    p = np.abs(g) / np.abs(g).max()
    sd = np.abs(g).max() * np.sqrt(p * (1 - p) / reps)
    assert np.all(np.abs(total / reps - g) <= 6 * sd + 1e-9)
    assert state.counter == reps * 50


def test_stochastic_ternarization_extremes_are_deterministic() -> None:
    codes, scale, _ = B.stochastic_ternarize(np.array([-7, 0, 7, 0], np.int32), RngState(0))
    assert codes.tolist() == [-1, 0, 1, 0] and scale == 7
    codes, scale, _ = B.stochastic_ternarize(np.zeros(3), RngState(0))
    assert codes.tolist() == [0, 0, 0] and scale == 0.0


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_tbp_weight_gradient_is_unbiased_and_sampling_reduces_variance(seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((16, 4))
    a = rng.choice([-1, 1], size=(16, 6))
    exact = g.T @ a
    estimates = {1: [], 10: []}
    state = RngState(seed)
    for samples, runs in estimates.items():
        for _ in range(300):
            total, factor, state = B.tbp_weight_grad(g, a, samples, state)
            runs.append(total * factor)
    one, ten = np.array(estimates[1]), np.array(estimates[10])
    bound = 6 * np.sqrt(one.var(axis=0) / len(ten) / 10) + 1e-9
    assert np.all(np.abs(ten.mean(axis=0) - exact) <= bound)
    # Averaging S samples divides the variance by S (Algorithm 1's point).
    ratio = one.var(axis=0).sum() / ten.var(axis=0).sum()
    assert 6 < ratio < 16, ratio
