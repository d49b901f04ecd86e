"""qcc.core.numerics.apot against seeds/004's equations and examples, the authors' level sets and
brute force on exact rationals."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qcc.core.numerics import apot as P

HALF = Fraction(1, 2)


def normalized(values) -> list[Fraction]:
    """A level set scaled so its largest level is 1 (what γ does for α = 1)."""
    values = {Fraction(v) for v in values}
    top = max(values)
    return sorted(v / top for v in values)


def sums(*term_sets) -> set[Fraction]:
    return {sum(choice, Fraction(0)) for choice in itertools.product(*term_sets)}


# --- the paper's examples ---------------------------------------------------------------------

def test_b4_k2_example() -> None:
    """§2.2: p0 ∈ {0, 2^0, 2^-2, 2^-4}, p1 ∈ {0, 2^-1, 2^-3, 2^-5}, γ = 2α/3, 16 levels."""
    fmt = P.APoTFormat(4, k=2, signed=False)
    p0 = [0, 1, HALF**2, HALF**4]
    p1 = [0, HALF, HALF**3, HALF**5]
    assert fmt.term_exponents == ((0, 2, 4), (1, 3, 5))
    alpha = Fraction(3)
    assert fmt.gamma * alpha == 2 * alpha / 3
    assert fmt.levels(alpha) == sorted(2 * alpha / 3 * s for s in sums(p0, p1))
    levels = fmt.levels()
    assert len(levels) == 16
    assert min(v for v in levels if v > 0) == HALF**4 / 3  # "smallest positive level 2^-4/3"
    assert sum(HALF < v < 1 for v in levels) == 3  # "3 new levels between 2^0 and 2^-1"


def test_b3_example_of_eq6() -> None:
    """§2.2: 3-bit levels are p0 + p̃, p0 ∈ {0, 2^-1, 2^-2, 2^-4}, p̃ ∈ {0, 2^-3}.

    The example's terms are eq. 6's (p0 ∈ {0, 1, 2^-1, 2^-3}, p̃ ∈ {0, 2^-2}) halved, so the two
    give the same set once γ scales the largest level to α.
    """
    fmt = P.APoTFormat(3, k=2, signed=False)
    example = sums([0, HALF, HALF**2, HALF**4], [0, HALF**3])
    assert fmt.levels() == normalized(example)
    assert fmt.term_exponents == ((0, 1, 3), (2,))
    assert fmt.gamma == Fraction(4, 5)


# Level sets built by the authors' build_power_value (github.com/yhhhli/APoT_Quantization):
# exponents e of the terms 2^-e of base_a, base_b, base_c for B magnitude bits.
AUTHORS_TERMS = {
    2: [[1, 2, 3]],
    3: [[1, 2, 4], [3]],
    4: [[1, 3, 5], [2, 4, 6]],
    5: [[1, 3, 6], [2, 4, 7], [5]],
    6: [[1, 4, 7], [2, 5, 8], [3, 6, 9]],
}


@pytest.mark.parametrize("bits", sorted(AUTHORS_TERMS))
def test_levels_match_the_authors_construction(bits: int) -> None:
    terms = [[0] + [HALF**e for e in t] for t in AUTHORS_TERMS[bits]]
    assert P.APoTFormat(bits, k=2, signed=False).levels() == normalized(sums(*terms))
    # Signed weights of bits + 1 bits: the same magnitudes with a sign.
    signed = P.APoTFormat(bits + 1, k=2, signed=True).levels()
    assert signed == sorted({-v for v in normalized(sums(*terms))} | set(normalized(sums(*terms))))


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_vanilla_pot_matches_the_authors_non_additive_levels(bits: int) -> None:
    authors = [0] + [HALF ** (i + 1) for i in range(2**bits - 1)]
    assert P.pot_format(bits, signed=False).levels() == normalized(authors)


@pytest.mark.parametrize("bits, k", [(2, 1), (2, 2), (4, 1), (4, 2), (4, 4), (6, 2), (6, 3),
                                     (3, 2), (5, 2), (7, 2), (8, 2), (8, 4)])
def test_there_are_2_to_the_b_distinct_levels(bits: int, k: int) -> None:
    assert len(P.APoTFormat(bits, k, signed=False).levels()) == 2**bits


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_k1_is_uniform_eq2(bits: int) -> None:
    """k = 1: "the quantization levels is a sum of b PoT terms or 0" = fixed point, eq. 2."""
    assert P.APoTFormat(bits, k=1, signed=True).levels(3) == P.uniform_levels(bits, 3)
    unsigned = P.APoTFormat(bits, k=1, signed=False).levels()
    assert unsigned == [Fraction(j, 2**bits - 1) for j in range(2**bits)]


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_k_equal_b_is_pot_eq3_less_its_smallest_level(bits: int) -> None:
    """k = b: "only one PoT term and Q^a becomes Q^p" — up to one level: eq. 3 as printed has
    2^b + 1 levels, one more than b bits encode; the one-term APoT set lacks ±2^(-2^(b-1)+1)."""
    eq3 = P.pot_levels(bits)
    assert len(eq3) == 2**bits + 1
    smallest = HALF ** (2 ** (bits - 1) - 1)
    assert P.pot_format(bits).levels() == [v for v in eq3 if abs(v) != smallest]
    assert P.pot_format(bits).n == 1


def test_pot_q1_5_extremes() -> None:
    """§2.2: in Q^p(1, 5) the two smallest positive levels are 2^-15, 2^-14; largest 2^-1, 1."""
    positive = [v for v in P.pot_levels(5) if v > 0]
    assert positive[:2] == [HALF**15, HALF**14] and positive[-2:] == [HALF, 1]


def test_float_levels_and_spec() -> None:
    fmt = P.APoTFormat(5, 2)
    assert fmt.levels_float(2.0).tolist() == [2.0 * float(v) for v in fmt.levels()]
    spec = fmt.to_spec(alpha=2.0)
    assert str(spec) == "apot5k2" and spec.gamma == pytest.approx(2.0 * float(fmt.gamma))
    assert str(P.pot_format(4).to_spec(alpha=1.0)) == "pot4"


# --- shift-add multiply -----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [P.APoTFormat(4, 2, False), P.APoTFormat(5, 2), P.APoTFormat(4, 2),
                                 P.APoTFormat(7, 2), P.APoTFormat(6, 3, False), P.pot_format(5),
                                 P.APoTFormat(5, 1)])
def test_shift_add_multiply_is_the_exact_product(fmt: P.APoTFormat) -> None:
    codes = np.arange(2**fmt.bits)
    exact_levels = fmt.code_levels()
    # Each level is unit * an integer, and the terms are at most n (+ p̃) shifts.
    integers = P.decode_integer(codes, fmt)
    assert [fmt.unit * int(v) for v in integers] == exact_levels
    terms = (fmt.exponent_table >= 0).sum(axis=1)
    assert terms.max() <= fmt.n + int(fmt.uses_eq6)
    rng = np.random.default_rng(0)
    x = rng.integers(-(2**15), 2**15, (64, 1))
    got = P.shift_add_multiply(x, codes[None, :], fmt)
    for xi, row in zip(x[:, 0].tolist(), got.tolist()):
        assert [Fraction(v) * fmt.unit for v in row] == [xi * lv for lv in exact_levels]


def test_apot_codes_spell_every_level_as_its_terms() -> None:
    fmt = P.APoTFormat(5, 2)  # sign + eq. 5 with n = 2
    signs, exps = P.apot_codes(fmt)
    assert exps.shape == (32, 2)
    for code, level in enumerate(fmt.code_levels()):
        terms = sum((HALF ** int(e) for e in exps[code] if e >= 0), Fraction(0))
        assert int(signs[code]) * fmt.gamma * terms == level
    # sign 1, field1 = 0b01 -> 2^-(1+0n), field0 = 0b10 -> 2^-(0+1n) with n = 2
    assert exps[0b1_0110].tolist() == [2, 1] and signs[0b1_0110] == -1


def test_shift_add_multiply_refuses_overflow() -> None:
    with pytest.raises(ValueError):
        P.shift_add_multiply([2**40], [1], P.pot_format(6))
    with pytest.raises(ValueError):  # PoT with 7 magnitude bits has levels down to 2^-126
        P.pot_format(8)


# --- projection -------------------------------------------------------------------------------

@given(st.lists(st.floats(-1.5, 1.5), min_size=1, max_size=20),
       st.sampled_from([P.APoTFormat(4, 2), P.APoTFormat(5, 2), P.APoTFormat(3, 2, False),
                        P.pot_format(4), P.APoTFormat(4, 1)]))
def test_project_picks_the_nearest_level(xs: list[float], fmt: P.APoTFormat) -> None:
    codes = P.project(xs, fmt)
    levels = fmt.code_levels()
    candidates = fmt.levels()
    for x, code in zip(xs, codes.tolist()):
        target = Fraction(x)
        best = min(abs(target - v) for v in candidates)
        # project compares with float64 midpoints: an x within one rounding of a midpoint
        # (found by hypothesis at x = 0.05, k = 2) may take either neighbour
        assert abs(target - levels[code]) - best <= Fraction(2**-52)


def test_project_ties_and_clipping() -> None:
    fmt = P.pot_format(3, signed=False)  # levels 0, 1/64, ..., 1/2, 1 (dyadic midpoints)
    codes = P.project([3 / 8, 0.75, 2.0, -1.0, 1 / 128], fmt)
    got = [fmt.code_levels()[c] for c in codes.tolist()]
    assert got == [Fraction(1, 4), Fraction(1, 2), 1, 0, 0]  # ties -> smaller magnitude
    signed = P.pot_format(4)
    codes = P.project([-3 / 8, -5.0, -0.0, 0.0], signed)
    assert [signed.code_levels()[c] for c in codes.tolist()] == [Fraction(-1, 4), -1, 0, 0]
    assert codes.tolist()[2:] == [0, 0]  # zero always encoded as +0


# --- RCF (eq. 7, 8), WN (eq. 9), α -----------------------------------------------------------

def test_rcf_is_clip_then_project_then_rescale() -> None:
    fmt, alpha = P.APoTFormat(4, 2), 1.7
    w = np.linspace(-3, 3, 101)
    levels = fmt.levels_float(alpha)
    clipped = np.clip(w, -alpha, alpha)
    nearest = levels[np.argmin(np.abs(clipped[:, None] - levels[None, :]), axis=1)]
    assert np.allclose(P.rcf(w, alpha, fmt), nearest, rtol=0, atol=1e-12)


def test_rcf_alpha_gradient_eq8() -> None:
    fmt, alpha = P.APoTFormat(4, 2), 1.3
    rng = np.random.default_rng(1)
    w = rng.standard_normal(200) * 1.5
    grad = P.rcf_alpha_grad(w, alpha, fmt)
    outside = np.abs(w) > alpha
    # Outside, Ŵ = α·sign(W): its true derivative, checked by central differences.
    h = 1e-6
    fd = (P.rcf(w, alpha + h, fmt) - P.rcf(w, alpha - h, fmt)) / (2 * h)
    assert np.allclose(grad[outside], fd[outside], atol=1e-6)
    assert np.array_equal(grad[outside], np.sign(w[outside]))
    # Inside: Π(W/α) - W/α, where Π is the exact nearest level.
    levels = fmt.levels_float()
    u = w[~outside] / alpha
    nearest = levels[np.argmin(np.abs(u[:, None] - levels[None, :]), axis=1)]
    assert np.allclose(grad[~outside], nearest - u, atol=1e-12)


def test_weight_normalization_eq9() -> None:
    rng = np.random.default_rng(2)
    w = rng.normal(0.3, 0.05, 500)
    w_tilde, mu, sigma = P.weight_normalize(w, eps=1e-5)
    assert mu == pytest.approx(w.mean()) and sigma == pytest.approx(np.std(w, ddof=0))
    assert np.allclose(w_tilde, (w - w.mean()) / (np.std(w) + 1e-5))
    assert abs(w_tilde.mean()) < 1e-12 and w_tilde.std() == pytest.approx(1.0, rel=1e-3)


def test_quantized_weights_fold_wn_and_rcf_into_scale_and_offset() -> None:
    rng = np.random.default_rng(3)
    w = rng.normal(0.1, 0.2, (32, 16))
    q = P.quantize_weights(w, P.APoTFormat(4, 2))
    w_tilde, mu, sigma = P.weight_normalize(w)
    assert np.allclose(q.dequantize(), (sigma + 1e-5) * P.rcf(w_tilde, q.alpha, q.fmt) + mu)
    # y = x·W with integer x: integer shift-adds, one per-layer scale and a μ·Σx correction.
    x = rng.integers(-128, 128, (5, 32))
    integer = P.shift_add_multiply(x[:, :, None], q.codes[None, :, :], q.fmt).sum(axis=1)
    y = q.unit * integer + q.offset * x.sum(axis=1, keepdims=True)
    assert np.allclose(y, x @ q.dequantize())
    assert np.mean((q.dequantize() - w) ** 2) < 0.05 * w.var()


def test_optimal_alpha_beats_a_dense_grid_search() -> None:
    rng = np.random.default_rng(4)
    w = rng.standard_normal(4000)
    fmt = P.APoTFormat(4, 2)
    alpha = P.optimal_alpha(w, fmt)
    dense = min(P.quantization_mse(w, a, fmt) for a in np.linspace(0.05, np.abs(w).max(), 1000))
    assert P.quantization_mse(w, alpha, fmt) <= dense * 1.01
    assert alpha < np.abs(w).max()  # clipping pays off on a Gaussian


@pytest.mark.parametrize("law", ["normal", "laplace"])
def test_apot_beats_pot_at_4_bits(law: str) -> None:
    rng = np.random.default_rng(5)
    w = getattr(rng, law)(size=20000)
    apot4, pot4 = P.APoTFormat(4, 2), P.pot_format(4)
    mse_apot = P.quantization_mse(w, P.optimal_alpha(w, apot4), apot4)
    mse_pot = P.quantization_mse(w, P.optimal_alpha(w, pot4), pot4)
    assert mse_apot < mse_pot
