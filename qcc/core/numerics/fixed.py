"""Fixed-point numbers with a power-of-two range (seeds/001 §2.1).

A B-bit code c of a `FixedFormat(bits, pdr_exp, signed)` stands for c * Δ with the predetermined
dynamic range (PDR) r = 2^pdr_exp and the step (LSB)

    signed:   Δ = r 2^-(B-1),  c in [-2^(B-1), 2^(B-1) - 1],  value = r (-a0 + Σ_{i>=1} 2^-i a_i)
    unsigned: Δ = r 2^-B,      c in [0, 2^B - 1],              value = r Σ_{i=1..B} 2^-i a_i

so every value lies in [-r, r) (signed) or [0, r) (unsigned), matching the clipping rate
β = Pr(|t| >= r) of §2.1. (The paper prints the unsigned sum from i = 0, which would give the range
[0, 2r); qcc keeps r as the range for both, as DESIGN.md and QuantSpec do.)

Because Δ is a power of two, converting between two formats is a shift: right shifts round to
nearest with ties away from zero (`rounding.round_shift`), left shifts are exact, and both
saturate, counting how many values were clipped. Float -> code uses the same rounding rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from qcc.core.numerics.rounding import (
    RngState,
    draw_u32,
    int_range,
    round_half_away,
    round_shift,
    saturate,
    shift_left_saturate,
    stochastic_round_shift,
)
from qcc.core.quant_spec import QuantSpec

I64 = NDArray[np.int64]


@dataclass(frozen=True)
class FixedFormat:
    """B-bit fixed point with PDR r = 2^pdr_exp (seeds/001 §2.1)."""

    bits: int
    pdr_exp: int
    signed: bool = True

    def __post_init__(self) -> None:
        int_range(self.bits, self.signed)  # validates the width
        if self.bits > 32:
            raise ValueError("fixed-point codes are at most 32 bits wide")

    @property
    def step_exp(self) -> int:
        """log2 of the step Δ: B = log2(r/Δ) + 1 for signed codes (§2.1)."""
        return self.pdr_exp - (self.bits - 1 if self.signed else self.bits)

    @property
    def step(self) -> float:
        return math.ldexp(1.0, self.step_exp)

    @property
    def pdr(self) -> float:
        return math.ldexp(1.0, self.pdr_exp)

    @property
    def code_range(self) -> tuple[int, int]:
        return int_range(self.bits, self.signed)

    def to_spec(self) -> QuantSpec:
        return QuantSpec(format="fixed", bits=self.bits, signed=self.signed, pdr=self.pdr)

    @classmethod
    def from_spec(cls, spec: QuantSpec) -> FixedFormat:
        if spec.format != "fixed" or spec.pdr is None:
            raise ValueError(f"not a fixed-point spec: {spec}")
        if "pdrs" in spec.extra:
            raise ValueError(f"{spec} has one range per channel, not one FixedFormat")
        return cls(spec.bits, power_of_two_exponent(spec.pdr), spec.signed)


def power_of_two_exponent(value: float) -> int:
    """e such that value == 2^e exactly; ValueError if value is not a power of two."""
    mantissa, exp = math.frexp(value)
    if mantissa != 0.5:
        raise ValueError(f"{value} is not a power of two")
    return exp - 1


def choose_pdr_exp(x: ArrayLike) -> int:
    """Smallest e with 2^e >= max|x|; an all-zero (or empty) tensor gets r = 1 (e = 0).

    Note that with r = max|x| exactly, +r itself saturates by one LSB in a signed format.
    """
    peak = float(np.max(np.abs(x), initial=0.0))
    if not math.isfinite(peak):
        raise ValueError("cannot choose a range for non-finite data")
    if peak == 0.0:
        return 0
    mantissa, exp = math.frexp(peak)  # peak = mantissa * 2^exp, mantissa in [0.5, 1)
    return exp - 1 if mantissa == 0.5 else exp


def format_for(x: ArrayLike, bits: int, signed: bool = True) -> FixedFormat:
    """The FixedFormat of the given width whose PDR is chosen from the data (`choose_pdr_exp`)."""
    return FixedFormat(bits, choose_pdr_exp(x), signed)


def quantize(x: ArrayLike, fmt: FixedFormat,
             state: RngState | None = None) -> tuple[I64, int, RngState | None]:
    """Float -> codes: round(x / Δ) then saturate; returns (codes, overflow count, state).

    Deterministic (state is None): to nearest, ties away from zero. Stochastic (state given):
    floor(x/Δ + u) with u = rand_u32 / 2^32, unbiased to within 2^-32 of a step.
    """
    scaled = np.ldexp(np.asarray(x, dtype=np.float64), -fmt.step_exp)  # exact: Δ = 2^step_exp
    if np.any(np.isnan(scaled)):
        raise ValueError("cannot quantize NaN")
    if state is None:
        rounded = round_half_away(scaled)
    else:
        draws, state = draw_u32(state, scaled.shape)
        rounded = np.floor(scaled + np.ldexp(draws.astype(np.float64), -32))
    lo, hi = fmt.code_range
    # Clamp in float one past the range first so the int64 conversion is always defined.
    rounded = np.clip(rounded, lo - 1, hi + 1).astype(np.int64)
    codes, overflow = saturate(rounded, fmt.bits, fmt.signed)
    return codes, overflow, state


def dequantize(codes: ArrayLike, fmt: FixedFormat) -> NDArray[np.float64]:
    """codes * Δ (exact in float64 for codes of at most 53 bits)."""
    return np.ldexp(np.asarray(codes, dtype=np.float64), fmt.step_exp)


def requantize(codes: ArrayLike, src: FixedFormat, dst: FixedFormat) -> tuple[I64, int]:
    """Codes of `src` as codes of `dst` by shifts only; returns (codes, overflow count).

    A finer destination step is an exact saturating left shift; a coarser one a rounding right
    shift (to nearest, ties away from zero) followed by saturation.
    """
    diff = dst.step_exp - src.step_exp
    codes = np.asarray(codes, dtype=np.int64)
    if diff <= 0:
        return shift_left_saturate(codes, -diff, dst.bits, dst.signed)
    return saturate(round_shift(codes, diff), dst.bits, dst.signed)


def requantize_stochastic(codes: ArrayLike, src: FixedFormat, dst: FixedFormat,
                          state: RngState) -> tuple[I64, int, RngState]:
    """As `requantize`, but right shifts round stochastically (unbiased), for gradients.

    A left shift is exact and draws nothing; a right shift draws one number per element.
    """
    diff = dst.step_exp - src.step_exp
    codes = np.asarray(codes, dtype=np.int64)
    if diff <= 0:
        out, overflow = shift_left_saturate(codes, -diff, dst.bits, dst.signed)
        return out, overflow, state
    if diff > 31:
        raise ValueError("stochastic requantization shifts by at most 31 bits")
    shifted, state = stochastic_round_shift(codes, diff, state)
    out, overflow = saturate(shifted, dst.bits, dst.signed)
    return out, overflow, state
