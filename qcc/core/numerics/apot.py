"""Additive powers-of-two (APoT) quantization, seeds/004, with uniform and PoT as special cases.

Level sets (α = clipping threshold, all as exact `Fraction`s and as float arrays):
- uniform, eq. 2:  α · {0, ±1/(2^(b-1)-1), ..., ±1}                      (`uniform_levels`)
- PoT, eq. 3:      α · {0, ±2^(-2^(b-1)+1), ..., ±2^-1, ±1}              (`pot_levels`)
- APoT, eq. 5:     γ · {Σ_{i<n} p_i},  p_i ∈ {0, 2^-i, 2^-(i+n), ..., 2^-(i+(2^k-2)n)}, n = b/k,
                   γ = α / max Σ p_i so the largest level is α                (`APoTFormat`)
- APoT, eq. 6 (k = 2, b = 2n+1): p_i ∈ {0, 2^-i, 2^-(i+n), 2^-(i+2n+1)}, plus p̃ ∈ {0, 2^-2n}.
  (The paper prints p̃ ∈ {0, 2^-(i+2n)}; its i is 0 there, as in the authors' code.)

`APoTFormat(bits, k, signed)`: `bits` counts the sign bit when signed (the paper's "one bit is
used for the sign of the weights but not for activations"), so the magnitude has b = bits - 1
bits. A code is sign-magnitude: bit b is the sign; magnitude field i (k bits, at bit k·i) selects
p_i (0 -> the zero term, f -> the f-th power 2^-(i+(f-1)n)); for eq. 6 bit 2n selects p̃.
Decoded, every level is γ·2^-E · L with an integer L = Σ 2^(E - e_t) over its terms' exponents
e_t (E the largest exponent of the format), so x·level is n shift-adds of x, scaled once per
layer (§2.2 "Computation"): `shift_add_multiply`.

Projection onto the levels is to the nearest level; a value exactly halfway between two levels
(compared in float64 against the correctly rounded midpoint) goes to the smaller magnitude.
Weights go through WN (eq. 9) and RCF (eq. 7) first; `quantize_weights` folds both into one
per-layer scale and offset, with α chosen post-training by minimising the weight MSE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property, lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray

from qcc.core.quant_spec import QuantSpec

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]


# --- The paper's level sets, written directly ------------------------------------------------

def uniform_levels(bits: int, alpha: Fraction | int = 1) -> list[Fraction]:
    """Eq. 2: α·{0, ±1/(2^(b-1)-1), ±2/(2^(b-1)-1), ..., ±1}, sorted (2^b - 1 levels)."""
    top = 2 ** (bits - 1) - 1
    return [Fraction(alpha) * Fraction(j, top) for j in range(-top, top + 1)]


def pot_levels(bits: int, alpha: Fraction | int = 1) -> list[Fraction]:
    """Eq. 3: α·{0, ±2^(-2^(b-1)+1), ..., ±2^-1, ±1}, sorted.

    As printed this has 2^b + 1 levels, one more than b bits can encode; `APoTFormat` with
    k = b - 1 (one term) drops the smallest magnitude, as the authors' code does.
    """
    mags = [Fraction(alpha) / 2**e for e in range(2 ** (bits - 1))]
    return sorted({Fraction(0), *mags, *(-m for m in mags)})


# --- APoT format ------------------------------------------------------------------------------

@dataclass(frozen=True)
class APoTFormat:
    """APoT level set of `bits` bits (sign included when signed) and base bit-width k."""

    bits: int
    k: int = 2
    signed: bool = True

    def __post_init__(self) -> None:
        b = self.magnitude_bits
        if b < 1 or self.k < 1 or self.k > b:
            raise ValueError(f"need 1 <= k <= magnitude bits, got bits={self.bits} k={self.k}")
        if b % self.k and self.k != 2:
            raise ValueError("odd magnitude widths are defined for k = 2 only (eq. 6)")
        if self.max_exponent > 62:  # e.g. PoT beyond 6 magnitude bits: levels below 2^-62
            raise ValueError(f"levels of {self} need 2^-{self.max_exponent}; at most 2^-62")

    @property
    def magnitude_bits(self) -> int:
        return self.bits - int(self.signed)

    @property
    def uses_eq6(self) -> bool:
        return self.magnitude_bits % self.k != 0

    @property
    def n(self) -> int:
        """Number of k-bit additive terms (eq. 5: n = b/k; eq. 6: n = (b-1)/2, plus p̃)."""
        return self.magnitude_bits // self.k

    @cached_property
    def term_exponents(self) -> tuple[tuple[int, ...], ...]:
        """Per additive term, the exponents e of its nonzero choices 2^-e, in field order."""
        n, k = self.n, self.k
        if not self.uses_eq6:
            return tuple(tuple(i + j * n for j in range(2**k - 1)) for i in range(n))
        terms = [(i, i + n, i + 2 * n + 1) for i in range(n)]  # eq. 6
        return (*terms, (2 * n,))

    @property
    def field_widths(self) -> tuple[int, ...]:
        return tuple(len(t).bit_length() for t in self.term_exponents)

    @property
    def max_exponent(self) -> int:
        """E: every level is γ·2^-E times an integer."""
        return max(max(t) for t in self.term_exponents)

    @cached_property
    def exponent_table(self) -> I64:
        """(2^b, T) exponents of each magnitude code's terms, -1 where the term is zero."""
        mags = np.arange(2**self.magnitude_bits, dtype=np.int64)
        columns, offset = [], 0
        for exps, width in zip(self.term_exponents, self.field_widths):
            field = (mags >> offset) & ((1 << width) - 1)
            columns.append(np.array((-1, *exps), dtype=np.int64)[field])
            offset += width
        return np.stack(columns, axis=1)

    @cached_property
    def integer_levels(self) -> I64:
        """L per magnitude code: the level is γ·2^-E·L, L = Σ 2^(E - e) (exact integers)."""
        exps = self.exponent_table
        terms = np.where(exps >= 0, np.int64(1) << (self.max_exponent - np.maximum(exps, 0)), 0)
        return terms.sum(axis=1)

    @property
    def gamma(self) -> Fraction:
        """γ for α = 1: 1 / (largest sum of terms), eq. 5."""
        return Fraction(2**self.max_exponent, int(self.integer_levels.max()))

    @property
    def unit(self) -> Fraction:
        """Value of integer level 1 for α = 1: γ·2^-E = 1 / max L."""
        return Fraction(1, int(self.integer_levels.max()))

    def code_levels(self, alpha: Fraction | int = 1) -> list[Fraction]:
        """Exact level of every code 0 .. 2^bits - 1 (sign-magnitude, -0 decodes to 0)."""
        mags = [Fraction(alpha) * self.unit * int(v) for v in self.integer_levels]
        return mags + [-m for m in mags] if self.signed else mags

    def levels(self, alpha: Fraction | int = 1) -> list[Fraction]:
        """The level set Q^a(α, b), sorted, without duplicates."""
        return sorted(set(self.code_levels(alpha)))

    def levels_float(self, alpha: float = 1.0) -> F64:
        return np.array([float(v) for v in self.levels()], dtype=np.float64) * alpha

    def to_spec(self, alpha: float) -> QuantSpec:
        one_term = self.k == self.magnitude_bits
        fmt = "pot" if one_term else "apot"
        return QuantSpec(format=fmt, bits=self.bits, signed=self.signed, k=self.k, alpha=alpha,
                         gamma=float(self.gamma) * alpha)


def pot_format(bits: int, signed: bool = True) -> APoTFormat:
    """PoT as the one-term (k = b) case of eq. 5: magnitudes {0, 1, 2^-1, ..., 2^-(2^b - 2)}."""
    return APoTFormat(bits, k=bits - int(signed), signed=signed)


# --- Projection, decoding, shift-add ---------------------------------------------------------

@lru_cache(maxsize=64)
def _projection_table(fmt: APoTFormat) -> tuple[F64, I64]:
    """Midpoints between consecutive magnitude levels (α = 1, each the float nearest the exact
    rational midpoint), and the magnitude codes of the levels in ascending order."""
    order = np.argsort(fmt.integer_levels, kind="stable")
    exact = [fmt.unit * int(v) for v in fmt.integer_levels[order]]
    midpoints = np.array([float((a + b) / 2) for a, b in zip(exact, exact[1:])])
    return midpoints, order


def project(x: ArrayLike, fmt: APoTFormat) -> I64:
    """Codes of the levels (α = 1) nearest to x clipped to [-1, 1] ([0, 1] unsigned).

    Ties go to the smaller magnitude; +0 is always encoded with sign bit 0. The midpoints are
    float64, so within one rounding of a midpoint either neighbour may be chosen.
    """
    x = np.asarray(x, dtype=np.float64)
    if np.any(np.isnan(x)):
        raise ValueError("cannot project NaN")
    midpoints, codes = _projection_table(fmt)
    magnitude = np.clip(np.abs(x) if fmt.signed else x, 0.0, 1.0)
    # side="left": a value equal to a midpoint counts as below it -> smaller magnitude wins.
    mag_code = codes[np.searchsorted(midpoints, magnitude, side="left")]
    if not fmt.signed:
        return mag_code
    negative = (x < 0) & (mag_code != 0)
    return mag_code | (negative.astype(np.int64) << fmt.magnitude_bits)


def apot_codes(fmt: APoTFormat) -> tuple[I64, I64]:
    """Every code 0 .. 2^bits - 1 as (sign ±1, exponents (T,) of its terms, -1 = zero term).

    The level of code c is sign·γ·Σ_{e >= 0} 2^-e (α = 1); `shift_add_multiply` uses exactly
    these exponents as left shifts E - e.
    """
    codes = np.arange(2**fmt.bits, dtype=np.int64)
    mags = codes & ((1 << fmt.magnitude_bits) - 1)
    negative = (codes >> fmt.magnitude_bits) & 1 if fmt.signed else np.zeros_like(codes)
    return 1 - 2 * negative, fmt.exponent_table[mags]


def decode_integer(codes: ArrayLike, fmt: APoTFormat) -> I64:
    """Signed integer level ±L of each code (the level is α·unit·that integer)."""
    codes = np.asarray(codes, dtype=np.int64)
    mag_mask = (1 << fmt.magnitude_bits) - 1
    value = fmt.integer_levels[codes & mag_mask]
    if fmt.signed:
        value = np.where((codes >> fmt.magnitude_bits) & 1, -value, value)
    return value


def dequantize(codes: ArrayLike, fmt: APoTFormat, alpha: float = 1.0) -> F64:
    return decode_integer(codes, fmt) * (float(fmt.unit) * alpha)


def quantize(x: ArrayLike, fmt: APoTFormat, alpha: float) -> I64:
    """RCF forward (eq. 7): codes of Π_{Q(1,b)}(clip(x/α, 1)); dequantize with the same α."""
    return project(np.asarray(x, dtype=np.float64) / alpha, fmt)


def shift_add_multiply(x: ArrayLike, codes: ArrayLike, fmt: APoTFormat) -> I64:
    """Integer x times the integer level ±L of each code, using only shifts and adds (§2.2).

    x·L = Σ_t x << (E - e_t) over the code's nonzero terms (n shift-adds), negated for the sign
    bit. Refuses inputs for which a shifted x could leave int64. (In C, left-shifting a negative
    int is undefined: shift the uint32_t/uint64_t bit pattern, or multiply by 1 << s.)
    """
    x = np.asarray(x, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.int64)
    peak = int(np.max(np.abs(x), initial=0))
    if peak.bit_length() + fmt.max_exponent + 2 > 63:
        raise ValueError(f"|x| up to {peak} shifted by up to {fmt.max_exponent} overflows int64")
    exps = fmt.exponent_table[codes & ((1 << fmt.magnitude_bits) - 1)]
    total = np.zeros(np.broadcast_shapes(x.shape, codes.shape), dtype=np.int64)
    for t in range(exps.shape[-1]):  # T <= a few terms; each step is one vector shift-add
        e = exps[..., t]
        total += np.where(e >= 0, x << (fmt.max_exponent - np.maximum(e, 0)), 0)
    if fmt.signed:
        total = np.where((codes >> fmt.magnitude_bits) & 1, -total, total)
    return total


# --- RCF, WN, α -------------------------------------------------------------------------------

def rcf(w: ArrayLike, alpha: float, fmt: APoTFormat) -> F64:
    """Eq. 7: Ŵ = α · Π_{Q(1,b)} ⌊W/α, 1⌉ (equal to eq. 1 in the forward pass)."""
    return dequantize(quantize(w, fmt, alpha), fmt, alpha)


def rcf_alpha_grad(w: ArrayLike, alpha: float, fmt: APoTFormat) -> F64:
    """Eq. 8: ∂Ŵ/∂α = sign(W) where |W| > α, else Π(W/α) - W/α (STE through Π)."""
    w = np.asarray(w, dtype=np.float64)
    inside = dequantize(quantize(w, fmt, alpha), fmt) - w / alpha
    return np.where(np.abs(w) > alpha, np.sign(w), inside)


def weight_normalize(w: ArrayLike, eps: float = 1e-5) -> tuple[F64, float, float]:
    """Eq. 9: W̃ = (W - μ) / (σ + ε) with the population σ (1/I). Returns (W̃, μ, σ).

    (The authors' code divides by torch's unbiased std and has no ε; we follow the equation.)
    """
    w = np.asarray(w, dtype=np.float64)
    mu = float(w.mean())
    sigma = float(np.sqrt(np.mean((w - mu) ** 2)))
    return (w - mu) / (sigma + eps), mu, sigma


def quantization_mse(w: ArrayLike, alpha: float, fmt: APoTFormat) -> float:
    """Eq. 14's Δ = E[(W - Ŵ)^2] with Ŵ = RCF(W, α): clipping plus projection error."""
    w = np.asarray(w, dtype=np.float64)
    return float(np.mean((w - rcf(w, alpha, fmt)) ** 2))


def optimal_alpha(w: ArrayLike, fmt: APoTFormat, grid: int = 100, refine: int = 30) -> float:
    """α minimising `quantization_mse` (post-training choice, in place of learning it).

    The MSE is not unimodal in α, so a grid search over (0, max|W|] (`grid` points) finds the
    best basin; golden-section search (`refine` steps) then refines inside the two neighbouring
    grid cells. The returned α is never worse than the best grid point.
    """
    w = np.asarray(w, dtype=np.float64)
    peak = float(np.max(np.abs(w)))
    if peak == 0.0:
        return 1.0
    alphas = peak * np.arange(1, grid + 1) / grid
    errors = [quantization_mse(w, a, fmt) for a in alphas]
    best = int(np.argmin(errors))
    lo, hi = alphas[max(best - 1, 0)], alphas[min(best + 1, grid - 1)]
    refined = _golden_section(lambda a: quantization_mse(w, a, fmt), lo, hi, refine)
    return refined if quantization_mse(w, refined, fmt) < errors[best] else float(alphas[best])


def _golden_section(f, lo: float, hi: float, steps: int) -> float:
    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo + (1 - ratio) * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(steps):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - ratio) * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    return a if fa <= fb else b


@dataclass(frozen=True)
class APoTWeights:
    """A weight tensor as APoT codes: W ≈ unit · decode_integer(codes) + offset.

    unit = (σ + ε)·α·γ·2^-E folds WN (eq. 9) and RCF (eq. 7) into one per-layer scale; offset = μ.
    For y = x·W the offset contributes μ·Σx, a per-row correction like an affine zero point.
    """

    codes: I64
    fmt: APoTFormat
    alpha: float
    unit: float
    offset: float

    def dequantize(self) -> F64:
        return decode_integer(self.codes, self.fmt) * self.unit + self.offset


def quantize_weights(w: ArrayLike, fmt: APoTFormat, alpha: float | None = None,
                     normalize: bool = True, eps: float = 1e-5) -> APoTWeights:
    """WN (optional) then RCF + APoT projection; α = `optimal_alpha` of the (normalized) weights."""
    w = np.asarray(w, dtype=np.float64)
    if normalize:
        w_tilde, mu, sigma = weight_normalize(w, eps)
        spread = sigma + eps
    else:
        w_tilde, mu, spread = w, 0.0, 1.0
    if alpha is None:
        alpha = optimal_alpha(w_tilde, fmt)
    codes = quantize(w_tilde, fmt, alpha)
    return APoTWeights(codes, fmt, alpha, spread * alpha * float(fmt.unit), mu)
