/*
 * qcc runtime: the integer arithmetic of qcc's NumPy interpreter, function for function.
 *
 * Each function names its Python twin (backends/numpy_int/kernels.py, qcc/numerics/rounding.py,
 * qcc/numerics/packing.py, qcc/numerics/binary.py); both give the same bits for every input.
 * C99, no malloc, no float except in qcc_quantize / qcc_dequantize (the model's float edges).
 *
 * The C backend copies this file next to a model as <name>_runtime.h, the function and macro
 * prefix renamed to the model's, so several models link into one firmware.
 *
 * Assumes two's complement integers and an arithmetic right shift of negative values
 * (implementation-defined in C99; true of gcc, clang, arm-none-eabi-gcc and every target qcc
 * supports; checked below at compile time).
 */
#ifndef QCC_RUNTIME_H
#define QCC_RUNTIME_H

#include <stdint.h>

#if (-1 >> 1) != -1
#error "qcc runtime: needs an arithmetic right shift of negative integers"
#endif

/*
 * The arithmetic every output element goes through is `static inline` here, so the compiler
 * can inline it into the node functions; the rest is in qcc_runtime.c.
 */

/* rounding.round_shift: x / 2^s to nearest, ties away from zero, 0 <= s <= 62.
 * gemmlowp's RoundingDivideByPOT: never forms x + 2^(s-1), so it cannot overflow. */
static inline int64_t qcc_round_shift(int64_t x, int32_t s)
{
    const int64_t mask = ((int64_t)1 << s) - 1;
    const int64_t remainder = x & mask;
    const int64_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> s) + (remainder > threshold ? 1 : 0);
}

/* The same rule on int32_t, 0 <= s <= 31 (where the emitter proved |x| < 2^31). */
static inline int32_t qcc_round_shift32(int32_t x, int32_t s)
{
    const int32_t mask = (int32_t)(((uint32_t)1 << s) - 1u);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> s) + (remainder > threshold ? 1 : 0);
}

/*
 * kernels.requantize of one accumulator: round_shift(acc * multiplier, shift) + zero_point,
 * clamped to [lo, hi]. A fused ReLU is lo = max(out_lo, zero_point). Needs 1 <= multiplier <
 * 2^24, 0 <= shift <= 62 and |acc * multiplier| < 2^62 (the emitter proves it per layer).
 */
static inline int32_t qcc_requantize(int64_t acc, int32_t multiplier, int32_t shift,
                                     int32_t zero_point, int32_t lo, int32_t hi)
{
    const int64_t v = qcc_round_shift(acc * multiplier, shift) + zero_point;
    return v < lo ? lo : v > hi ? hi : (int32_t)v;
}

/* qcc_requantize when the emitter proved |acc * multiplier| < 2^31 and shift <= 31. */
static inline int32_t qcc_requantize32(int32_t acc, int32_t multiplier, int32_t shift,
                                       int32_t zero_point, int32_t lo, int32_t hi)
{
    /* clamp before adding the zero point: all in int32 (codes and zero points are below
     * 2^16 in magnitude, so lo - zero_point and hi - zero_point cannot overflow) */
    const int32_t v = qcc_round_shift32(acc * multiplier, shift);
    return v < lo - zero_point ? lo : v > hi - zero_point ? hi : v + zero_point;
}

/* kernels.divide_round: total / count (count > 0), to nearest, ties away from zero. */
static inline int64_t qcc_divide_round(int64_t total, int64_t count)
{
    const int64_t magnitude = total < 0 ? -total : total;
    const int64_t q = (2 * magnitude + count) / (2 * count);
    return total < 0 ? -q : q;
}

/* binary.popcount32: bits set in v, portable SWAR (no compiler builtin). */
static inline uint32_t qcc_popcount32(uint32_t v)
{
    v -= (v >> 1) & 0x55555555u;
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    v = (v + (v >> 4)) & 0x0F0F0F0Fu;
    return (v * 0x01010101u) >> 24; /* the byte sums land in the top byte, mod 2^32 */
}

/*
 * xnor.xnor_matmul for one row pair: 2 * popcount(XNOR(a, w) & valid) - popcount(valid) over
 * `words` uint32 words: the dot product of two +-1 vectors over the taps marked in `valid`.
 */
int32_t qcc_xnor_dot(const uint32_t *a, const uint32_t *w, const uint32_t *valid,
                     int32_t words);

/*
 * packing.unpack_bits: codes start .. start+count-1 of `bits`-bit codes (1, 2 or 4; the first
 * code in the least significant bits of a byte), sign-extended when is_signed, into out.
 */
void qcc_unpack_bits(const uint8_t *data, int32_t bits, int32_t is_signed, int32_t start,
                     int32_t count, int8_t *out);

/* 1-bit binary codes (bit 1 = +1, bit 0 = -1, packing's layout) as +-1 into out. */
void qcc_unpack_signs(const uint8_t *data, int32_t start, int32_t count, int8_t *out);

/* rounding.round_half_away: nearest integer, ties away from zero (C99 round(), no libm). */
double qcc_round_half_away(double v);

/*
 * kernels.quantize (float edge): round_half_away(x / scale) + zero_point, saturated to
 * [lo, hi]; the division is in double, as the interpreter's float64. NaN gives zero_point.
 */
int32_t qcc_quantize(float x, double scale, int32_t zero_point, int32_t lo, int32_t hi);

/* kernels.dequantize (float edge): (code - zero_point) * scale in double, rounded to float. */
float qcc_dequantize(int32_t code, int32_t zero_point, double scale);

#endif /* QCC_RUNTIME_H */
