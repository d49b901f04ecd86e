"""Integer rounding primitives shared by every requantization in qcc, and the one PRNG.

The NumPy integer interpreter and the C runtime implement these functions with the same names and
the same rounding rules, so both backends produce the same bits. Everything is vectorised over
int64 arrays (int32 semantics where the name says so, as in gemmlowp / TFLite).

Rounding rules (one per function, written down once here):
- `round_shift(x, s)`, `rounding_divide_by_pot`: x / 2^s rounded to nearest, ties AWAY FROM ZERO
  (gemmlowp's RoundingDivideByPOT). Symmetric, so a zero-mean signal stays zero-mean.
- `round_half_away(v)`: the same rule for floats (C's `round()`), used by fixed-point quantize and
  by `quantize_multiplier` (TFLite's TfLiteRound).
- `saturating_rounding_doubling_high_mul`: gemmlowp / ARM VQRDMULH: floor(a*b / 2^31 + 1/2), i.e.
  ties UP, saturated; INT32_MIN * INT32_MIN (the only overflow) gives INT32_MAX.
- `stochastic_round_shift`: floor((x + u) / 2^s) with u uniform on [0, 2^s): unbiased.

The PRNG is counter based, so element i of a tensor gets `rand_u32(seed, counter + i)` no matter how
the work is split, and C needs only uint32_t arithmetic:

    mix32(x):  x ^= x >> 16; x *= 0x7FEB352D; x ^= x >> 15; x *= 0x846CA68B; x ^= x >> 16
    rand_u32(seed, i) = mix32(i ^ mix32(seed ^ 0x9E3779B9))       (all arithmetic mod 2^32)

`mix32` is Chris Wellons' "lowbias32" integer hash, a bijection of uint32, so for a fixed seed the
2^32 counters map to 2^32 distinct outputs (exactly uniform over a full period).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

I64 = NDArray[np.int64]


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """The [lo, hi] integer range of a `bits`-wide two's complement / unsigned code."""
    if not 1 <= bits <= 64 - int(not signed):
        raise ValueError(f"bit width {bits} out of range")
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def saturate(x: ArrayLike, bits: int, signed: bool) -> tuple[I64, int]:
    """Clip integers to the `bits`-wide range; return (clipped int64 array, number clipped)."""
    x = np.asarray(x, dtype=np.int64)
    lo, hi = int_range(bits, signed)
    overflow = int(np.count_nonzero((x < lo) | (x > hi)))
    return np.clip(x, lo, hi), overflow


def round_shift(x: ArrayLike, s: ArrayLike) -> I64:
    """x / 2^s rounded to nearest, ties away from zero (s >= 0, broadcastable; s <= 62).

    Written as gemmlowp's RoundingDivideByPOT, so it never forms x + 2^(s-1) and cannot overflow:
    floor-shift, then add one when the dropped remainder exceeds half (or equals half for x >= 0).
    """
    x = np.asarray(x, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    if np.any((s < 0) | (s > 62)):
        raise ValueError("round_shift needs 0 <= s <= 62")
    mask = (np.int64(1) << s) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> s) + (remainder > threshold)


def shift_left_saturate(x: ArrayLike, s: ArrayLike, bits: int, signed: bool) -> tuple[I64, int]:
    """x * 2^s saturated to `bits`; returns (result, overflow count). Exact when in range."""
    x = np.asarray(x, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    lo, hi = int_range(bits, signed)
    # Compare before shifting so the int64 shift itself can never overflow.
    lo_ok, hi_ok = -((-lo) >> s), np.int64(hi) >> s
    too_low, too_high = x < lo_ok, x > hi_ok
    out = np.clip(x, lo_ok, hi_ok) << s
    out = np.where(too_low, lo, np.where(too_high, hi, out))
    return out.astype(np.int64), int(np.count_nonzero(too_low | too_high))


def round_half_away(v: ArrayLike) -> NDArray[np.float64]:
    """Round floats to the nearest integer, ties away from zero (C99 `round`).

    Uses v - trunc(v), which is exact, instead of floor(|v| + 0.5), which rounds
    0.49999999999999994 up to 1.
    """
    v = np.asarray(v, dtype=np.float64)
    whole = np.trunc(v)
    with np.errstate(invalid="ignore"):  # inf - inf is NaN: no step, infinities pass through
        frac = v - whole
    whole += frac >= 0.5  # adding 0 also turns a -0.0 into 0.0
    whole -= frac <= -0.5
    return whole


def saturating_rounding_doubling_high_mul(a: ArrayLike, b: ArrayLike) -> NDArray[np.int32]:
    """gemmlowp SaturatingRoundingDoublingHighMul on int32: high 32 bits of 2*a*b, rounded.

    Same computation as ARM's VQRDMULH: ties round up (towards +inf). The only overflow,
    INT32_MIN * INT32_MIN, saturates to INT32_MAX.
    """
    a = _as_int32_values(a)
    b = _as_int32_values(b)
    ab = a * b
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    v = ab + nudge
    # C's `/` truncates towards zero; numpy's >> floors, so divide the magnitude.
    high = np.where(v >= 0, v >> 31, -((-v) >> 31))
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return np.where(overflow, INT32_MAX, high).astype(np.int32)


def rounding_divide_by_pot(x: ArrayLike, exponent: ArrayLike) -> NDArray[np.int32]:
    """gemmlowp RoundingDivideByPOT on int32: x / 2^exponent, ties away from zero, 0 <= e <= 31."""
    x = _as_int32_values(x)
    exponent = np.asarray(exponent, dtype=np.int64)
    if np.any((exponent < 0) | (exponent > 31)):
        raise ValueError("rounding_divide_by_pot needs 0 <= exponent <= 31")
    return round_shift(x, exponent).astype(np.int32)


def quantize_multiplier(real: ArrayLike) -> tuple[np.ndarray | int, np.ndarray | int]:
    """TFLite QuantizeMultiplier: real ~= multiplier * 2^(shift - 31), multiplier in [2^30, 2^31).

    Edge cases, as in TFLite: real == 0 gives (0, 0); when rounding the mantissa reaches 2^31 it
    is halved and shift incremented (so real >= 1 gives shift >= 1 and a power of two gives
    2^30); reals below about 2^-32 (shift < -31) give (0, 0) because every result would be
    shifted out. Negative reals keep their sign in the multiplier. Accepts scalars or arrays.
    """
    r = np.asarray(real, dtype=np.float64)
    if not np.all(np.isfinite(r)):
        raise ValueError("quantize_multiplier needs finite reals")
    mantissa, shift = np.frexp(r)
    q = round_half_away(mantissa * float(1 << 31)).astype(np.int64)
    carry = np.abs(q) == (1 << 31)
    q = np.where(carry & (q > 0), q // 2, q)
    shift = np.where(carry & (q > 0), shift + 1, shift).astype(np.int64)
    tiny = shift < -31
    q = np.where(tiny, 0, q).astype(np.int32)
    shift = np.where(tiny | (r == 0), 0, shift)
    if q.ndim == 0:
        return int(q), int(shift)
    return q, shift


def multiply_by_quantized_multiplier(x: ArrayLike, multiplier: ArrayLike,
                                     shift: ArrayLike) -> NDArray[np.int32]:
    """TFLite MultiplyByQuantizedMultiplier (double-rounding form) on int32.

    left shift, then saturating_rounding_doubling_high_mul, then rounding_divide_by_pot by the
    right shift. TFLite computes x * 2^left in int32, which is undefined when it overflows; we
    saturate it to int32 instead (identical whenever TFLite's result is defined).
    """
    x = _as_int32_values(x)
    shift = np.asarray(shift, dtype=np.int64)
    if np.any(shift < -31):
        raise ValueError("shift < -31: quantize_multiplier returns (0, 0) for such reals")
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    shifted, _ = shift_left_saturate(x, left, 32, signed=True)
    high = saturating_rounding_doubling_high_mul(shifted, multiplier)
    return rounding_divide_by_pot(high, right)


def _as_int32_values(x: ArrayLike) -> I64:
    """int64 copy of x after checking every value fits int32."""
    x = np.asarray(x, dtype=np.int64)
    if np.any((x < INT32_MIN) | (x > INT32_MAX)):
        raise ValueError("value outside int32")
    return x


# --- PRNG -----------------------------------------------------------------------------------

_GOLDEN = np.uint32(0x9E3779B9)


def mix32(values: ArrayLike) -> NDArray[np.uint32]:
    """lowbias32 integer hash: a bijection of uint32 with good avalanche (see module doc)."""
    x = np.atleast_1d(np.asarray(values, dtype=np.uint32)).copy()
    with np.errstate(over="ignore"):  # multiplication mod 2^32 is the point
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x7FEB352D)
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x846CA68B)
        x ^= x >> np.uint32(16)
    return x.reshape(np.shape(values))


def rand_u32(seed: int, index: ArrayLike) -> NDArray[np.uint32]:
    """Counter-based uniform uint32: mix32(index ^ mix32(seed ^ 0x9E3779B9))."""
    key = mix32(np.uint32(seed & 0xFFFFFFFF) ^ _GOLDEN)
    return mix32(np.asarray(index, dtype=np.uint64).astype(np.uint32) ^ key)


@dataclass(frozen=True)
class RngState:
    """A stream position: the seed and the counter of the next draw (both uint32, wrapping)."""

    seed: int
    counter: int = 0

    def advance(self, n: int) -> RngState:
        return RngState(self.seed, (self.counter + n) & 0xFFFFFFFF)


def draw_u32(state: RngState, shape: tuple[int, ...]) -> tuple[NDArray[np.uint32], RngState]:
    """One uint32 per element, in C (row-major) order, and the advanced state."""
    size = int(np.prod(shape, dtype=np.int64))
    index = (state.counter + np.arange(size, dtype=np.uint64)) & 0xFFFFFFFF
    return rand_u32(state.seed, index).reshape(shape), state.advance(size)


def stochastic_round_shift(x: ArrayLike, s: ArrayLike,
                           state: RngState) -> tuple[I64, RngState]:
    """floor((x + u) / 2^s) with u = rand >> (32 - s) uniform on [0, 2^s): E[result] = x / 2^s.

    0 <= s <= 31 (broadcastable); one draw per element of the broadcast shape, also where s == 0
    (u = 0 there) so the stream position never depends on the data. Computed as
    (x >> s) + (((x & (2^s - 1)) + u) >> s): x + u never has to be formed, and the low sum is
    below 2^(s+1) <= 2^32, so C computes it in uint32_t for int32 x.
    """
    x = np.asarray(x, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    if np.any((s < 0) | (s > 31)):
        raise ValueError("stochastic_round_shift needs 0 <= s <= 31")
    shape = np.broadcast_shapes(x.shape, s.shape)
    draws, state = draw_u32(state, shape)
    u = (draws.astype(np.uint64) >> (32 - s).astype(np.uint64)).astype(np.int64)
    mask = (np.int64(1) << s) - 1
    return (x >> s) + (((x & mask) + u) >> s), state
