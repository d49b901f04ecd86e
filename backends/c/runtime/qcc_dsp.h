/*
 * qcc DSP primitives: the Cortex-M4 DSP extension (ACLE, <arm_acle.h>) behind small inline
 * functions, each with a portable C twin that gives the same bits, so the kernels that use them
 * (emitted by backends/c/ops/dsp.py) build and run on any host as well.
 *
 * QCC_DSP selects the packed kernels of the emitted model: 1 by default where the compiler
 * targets the DSP extension (__ARM_FEATURE_DSP: Cortex-M4, M7, M33 with DSP, A-profile), 0
 * elsewhere, where the model's portable loops run instead. Defining QCC_DSP=1 on another host
 * runs the packed kernels on the portable twins below (the tests do, to check them bit for bit
 * against the interpreter under ASan/UBSan).
 *
 * Copied next to a model as <name>_dsp.h with the prefix renamed, like qcc_runtime.h.
 */
#ifndef QCC_DSP_H
#define QCC_DSP_H

#include <stdint.h>
#include <string.h>

#ifndef QCC_DSP
#if defined(__ARM_FEATURE_DSP)
#define QCC_DSP 1
#else
#define QCC_DSP 0
#endif
#endif

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#endif

/* Inlined even at -Os (gcc keeps a static inline function called from many places out of
 * line there, which costs a call and the argument moves per output). */
#if defined(__GNUC__)
#define QCC_DSP_INLINE static inline __attribute__((always_inline))
#else
#define QCC_DSP_INLINE static inline
#endif

/* Four bytes from any address as one 32-bit word (the target's byte order: little-endian
 * on every target qcc supports). memcpy is one LDR on the M4, which loads unaligned words. */
QCC_DSP_INLINE uint32_t qcc_dsp_load32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Two int16 from any address as one word: element 0 in the low half. */
QCC_DSP_INLINE uint32_t qcc_dsp_load_pair(const int16_t *p)
{
    return qcc_dsp_load32(p);
}

#if defined(__ARM_FEATURE_DSP)

/* SXTB16: bytes 0 and 2 of w, sign-extended, as the low and high halves. */
QCC_DSP_INLINE uint32_t qcc_dsp_sxtb16(uint32_t w)
{
    return (uint32_t)__sxtb16((int8x4_t)w);
}

/* SXTB16 with ROR #8: bytes 1 and 3 of w (one instruction; gcc does not fuse the rotation
 * into the builtin by itself). */
QCC_DSP_INLINE uint32_t qcc_dsp_sxtb16_ror8(uint32_t w)
{
    uint32_t r;
    __asm("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(w));
    return r;
}

/* UXTB16 (and after ROR #8): bytes 0 and 2 (1 and 3) of w, zero-extended, as the halves. */
QCC_DSP_INLINE uint32_t qcc_dsp_uxtb16(uint32_t w)
{
    return (uint32_t)__uxtb16(w);
}

QCC_DSP_INLINE uint32_t qcc_dsp_uxtb16_ror8(uint32_t w)
{
    uint32_t r;
    __asm("uxtb16 %0, %1, ror #8" : "=r"(r) : "r"(w));
    return r;
}

/* SMLAD: acc + lo(a) * lo(b) + hi(a) * hi(b), halves as int16 (the caller proved no
 * overflow of int32). */
QCC_DSP_INLINE int32_t qcc_dsp_smlad(uint32_t a, uint32_t b, int32_t acc)
{
    return __smlad((int16x2_t)a, (int16x2_t)b, acc);
}

#else /* the portable twins */

QCC_DSP_INLINE uint32_t qcc_dsp_sxtb16(uint32_t w)
{
    const uint32_t lo = (uint32_t)(int32_t)(int8_t)(w & 0xFFu) & 0xFFFFu;
    const uint32_t hi = (uint32_t)(int32_t)(int8_t)((w >> 16) & 0xFFu) & 0xFFFFu;
    return lo | hi << 16;
}

QCC_DSP_INLINE uint32_t qcc_dsp_sxtb16_ror8(uint32_t w)
{
    return qcc_dsp_sxtb16(w >> 8);
}

QCC_DSP_INLINE uint32_t qcc_dsp_uxtb16(uint32_t w)
{
    return (w & 0xFFu) | (w & 0xFF0000u);
}

QCC_DSP_INLINE uint32_t qcc_dsp_uxtb16_ror8(uint32_t w)
{
    return qcc_dsp_uxtb16(w >> 8);
}

QCC_DSP_INLINE int32_t qcc_dsp_half(uint32_t v, int32_t high)
{
    return (int32_t)(int16_t)(uint16_t)(high ? v >> 16 : v & 0xFFFFu);
}

QCC_DSP_INLINE int32_t qcc_dsp_smlad(uint32_t a, uint32_t b, int32_t acc)
{
    return acc + qcc_dsp_half(a, 0) * qcc_dsp_half(b, 0) + qcc_dsp_half(a, 1) * qcc_dsp_half(b, 1);
}

#endif

/* PKHBT lo, hi, LSL #16: the low half of lo, the low half of hi above it; PKHTB hi, lo, ASR
 * #16: the high half of lo below the high half of hi (one instruction each; gcc does not fuse
 * the masks and shifts by itself). */
#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)
QCC_DSP_INLINE uint32_t qcc_dsp_pack_low(uint32_t lo, uint32_t hi)
{
    uint32_t r;
    __asm("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(lo), "r"(hi));
    return r;
}

QCC_DSP_INLINE uint32_t qcc_dsp_pack_high(uint32_t lo, uint32_t hi)
{
    uint32_t r;
    __asm("pkhtb %0, %1, %2, asr #16" : "=r"(r) : "r"(hi), "r"(lo));
    return r;
}
#else
QCC_DSP_INLINE uint32_t qcc_dsp_pack_low(uint32_t lo, uint32_t hi)
{
    return (lo & 0xFFFFu) | hi << 16;
}

QCC_DSP_INLINE uint32_t qcc_dsp_pack_high(uint32_t lo, uint32_t hi)
{
    return lo >> 16 | (hi & 0xFFFF0000u);
}
#endif

/* Four bytes to memory at any address from one word. */
QCC_DSP_INLINE void qcc_dsp_store32(void *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

/*
 * n 8-bit codes widened to int16 (dst[i] = src[i]), four per step where the DSP extension
 * has UXTB16 / SXTB16: bytes 0, 2 and 1, 3 of a word, then PKHBT / PKHTB put them back in
 * order, two words stored; the last n % 4 one by one.
 */
QCC_DSP_INLINE void qcc_dsp_widen_u8(const uint8_t *src, int16_t *dst, int32_t n)
{
    int32_t i, head = 0;
#if defined(__ARM_FEATURE_DSP)
    head = n - n % 4;
    for (i = 0; i < head; i += 4) {
        const uint32_t w = qcc_dsp_load32(src + i);
        uint32_t odd;
        const uint32_t even = __uxtb16(w);
        __asm("uxtb16 %0, %1, ror #8" : "=r"(odd) : "r"(w)); /* one instruction */
        qcc_dsp_store32(dst + i, qcc_dsp_pack_low(even, odd));
        qcc_dsp_store32(dst + i + 2, qcc_dsp_pack_high(even, odd));
    }
#endif
    for (i = head; i < n; ++i) {
        dst[i] = (int16_t)src[i];
    }
}

QCC_DSP_INLINE void qcc_dsp_widen_s8(const int8_t *src, int16_t *dst, int32_t n)
{
    int32_t i, head = 0;
#if defined(__ARM_FEATURE_DSP)
    head = n - n % 4;
    for (i = 0; i < head; i += 4) {
        const uint32_t w = qcc_dsp_load32(src + i);
        const uint32_t even = qcc_dsp_sxtb16(w), odd = qcc_dsp_sxtb16_ror8(w);
        qcc_dsp_store32(dst + i, qcc_dsp_pack_low(even, odd));
        qcc_dsp_store32(dst + i + 2, qcc_dsp_pack_high(even, odd));
    }
#endif
    for (i = head; i < n; ++i) {
        dst[i] = (int16_t)src[i];
    }
}

/*
 * The codes of two channels, a and b, interleaved into int16 pairs n times, `stride` int16
 * apart: dst[i * stride] = a[i], dst[i * stride + 1] = b[i] (a strip column holds a pixel's
 * channels next to each other, and SMLAD reads two of them as one word). Where the DSP
 * extension has UXTB16 / SXTB16, four pixels per step: one word of each channel, its bytes 0, 2
 * and 1, 3, then PKHBT / PKHTB pair the two channels' halves; four words stored.
 */
QCC_DSP_INLINE void qcc_dsp_pair_u8(const uint8_t *a, const uint8_t *b, int16_t *dst,
                                    int32_t stride, int32_t n)
{
    int32_t i = 0;
#if defined(__ARM_FEATURE_DSP)
    for (; i + 3 < n; i += 4) {
        int16_t *const d = dst + i * stride;
        const uint32_t wa = qcc_dsp_load32(a + i), wb = qcc_dsp_load32(b + i);
        const uint32_t ea = __uxtb16(wa), eb = __uxtb16(wb);
        uint32_t oa, ob;
        __asm("uxtb16 %0, %1, ror #8" : "=r"(oa) : "r"(wa));
        __asm("uxtb16 %0, %1, ror #8" : "=r"(ob) : "r"(wb));
        qcc_dsp_store32(d, qcc_dsp_pack_low(ea, eb));
        qcc_dsp_store32(d + stride, qcc_dsp_pack_low(oa, ob));
        qcc_dsp_store32(d + 2 * stride, qcc_dsp_pack_high(ea, eb));
        qcc_dsp_store32(d + 3 * stride, qcc_dsp_pack_high(oa, ob));
    }
#endif
    for (; i < n; ++i) {
        dst[i * stride] = (int16_t)a[i];
        dst[i * stride + 1] = (int16_t)b[i];
    }
}

QCC_DSP_INLINE void qcc_dsp_pair_s8(const int8_t *a, const int8_t *b, int16_t *dst,
                                    int32_t stride, int32_t n)
{
    int32_t i = 0;
#if defined(__ARM_FEATURE_DSP)
    for (; i + 3 < n; i += 4) {
        int16_t *const d = dst + i * stride;
        const uint32_t wa = qcc_dsp_load32(a + i), wb = qcc_dsp_load32(b + i);
        const uint32_t ea = qcc_dsp_sxtb16(wa), eb = qcc_dsp_sxtb16(wb);
        const uint32_t oa = qcc_dsp_sxtb16_ror8(wa), ob = qcc_dsp_sxtb16_ror8(wb);
        qcc_dsp_store32(d, qcc_dsp_pack_low(ea, eb));
        qcc_dsp_store32(d + stride, qcc_dsp_pack_low(oa, ob));
        qcc_dsp_store32(d + 2 * stride, qcc_dsp_pack_high(ea, eb));
        qcc_dsp_store32(d + 3 * stride, qcc_dsp_pack_high(oa, ob));
    }
#endif
    for (; i < n; ++i) {
        dst[i * stride] = (int16_t)a[i];
        dst[i * stride + 1] = (int16_t)b[i];
    }
}

QCC_DSP_INLINE void qcc_dsp_pair_s16(const int16_t *a, const int16_t *b, int16_t *dst,
                                     int32_t stride, int32_t n)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        dst[i * stride] = a[i];
        dst[i * stride + 1] = b[i];
    }
}

/* 16-bit codes need no widening: a copy. */
QCC_DSP_INLINE void qcc_dsp_widen_s16(const int16_t *src, int16_t *dst, int32_t n)
{
    memcpy(dst, src, (size_t)n * sizeof *dst);
}

/*
 * kernels.requantize of an int32 accumulator without 64-bit shifts or compares, in three
 * forms; the emitter (backends/c/ops/dsp.py DspRequant) picks one whose exactness it proved
 * for the layer, and passes half = the rounding half of the form. With S the node's shift,
 * round_shift(acc * M, S) = (acc * M + 2^(S-1) - [acc < 0]) >> S (ties away from zero).
 * `tie` is 0 where every negative accumulator is clamped to the floor anyway (lo >= zero
 * point: a fused ReLU), so the tie correction is left out, else 1.
 *
 * qcc_dsp_requantize: one 64-bit multiply-accumulate (SMLAL) and the high word, for
 * S = 32 + high (a shift S < 32 becomes M * 2^(32-S), exact, where that stays below 2^31);
 * half = 2^(31 + high). The result fits int32 since |acc * M| < 2^62.
 */
QCC_DSP_INLINE int32_t qcc_dsp_requantize(int32_t acc, int32_t mult, int32_t high, int64_t half,
                                          int32_t tie, int32_t zero_point, int32_t lo,
                                          int32_t hi)
{
    const int64_t p = (int64_t)acc * mult + (half - (acc < 0 ? tie : 0));
    const int32_t v = (int32_t)(p >> 32) >> high;
    return v < lo - zero_point ? lo : v > hi - zero_point ? hi : v + zero_point;
}

/*
 * The high form where no tie needs correcting (tie = 0): floor((acc * M + 2^(31+high)) /
 * 2^(32+high)) is SMMULR (the rounded high word) for high = 0, and SMMLA with the addend
 * 2^(high-1) in the high word, then >> high, for high >= 1; addend = 2^(high-1) (unused for
 * high = 0). One or two instructions instead of the 64-bit sum.
 */
#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)
QCC_DSP_INLINE int32_t qcc_dsp_high_word(int32_t acc, int32_t mult, int32_t high, int32_t addend)
{
    int32_t r;
    if (high == 0) {
        __asm("smmulr %0, %1, %2" : "=r"(r) : "r"(acc), "r"(mult));
        return r;
    }
    __asm("smmla %0, %1, %2, %3" : "=r"(r) : "r"(acc), "r"(mult), "r"(addend));
    return r >> high;
}
#else
QCC_DSP_INLINE int32_t qcc_dsp_high_word(int32_t acc, int32_t mult, int32_t high, int32_t addend)
{
    const int64_t p = (int64_t)acc * mult + (high == 0 ? (int64_t)1 << 31 : 0);
    return (int32_t)((p >> 32) + (high == 0 ? 0 : addend)) >> high;
}
#endif

/* The zero point and clamp of a requantization whose multiply an asm block did (SMMULR). */
QCC_DSP_INLINE int32_t qcc_dsp_clamp(int32_t v, int32_t zero_point, int32_t lo, int32_t hi)
{
    return v < lo - zero_point ? lo : v > hi - zero_point ? hi : v + zero_point;
}

QCC_DSP_INLINE int32_t qcc_dsp_requantize_relu(int32_t acc, int32_t mult, int32_t high,
                                               int32_t addend, int32_t zero_point, int32_t lo,
                                               int32_t hi)
{
    const int32_t v = qcc_dsp_high_word(acc, mult, high, addend);
    return v < lo - zero_point ? lo : v > hi - zero_point ? hi : v + zero_point;
}

/* The same for 1 <= shift = S <= 31, where the emitter proved |acc * M| < 2^(31 + S) (the
 * result fits int32): the low words of the 64-bit sum shifted right; half = 2^(S-1). */
QCC_DSP_INLINE int32_t qcc_dsp_requantize_low(int32_t acc, int32_t mult, int32_t shift,
                                              int64_t half, int32_t tie, int32_t zero_point,
                                              int32_t lo, int32_t hi)
{
    const int64_t p = (int64_t)acc * mult + (half - (acc < 0 ? tie : 0));
    const uint32_t bits = (uint32_t)p >> shift | (uint32_t)((uint64_t)p >> 32) << (32 - shift);
    const int32_t v = (int32_t)bits;
    return v < lo - zero_point ? lo : v > hi - zero_point ? hi : v + zero_point;
}

/* All in 32 bits, 0 <= shift = S <= 31, where the emitter proved |acc * M| + 2^(S-1) < 2^31;
 * half = 2^(S-1) (0 for S = 0, where there is nothing to round). */
QCC_DSP_INLINE int32_t qcc_dsp_requantize_word(int32_t acc, int32_t mult, int32_t shift,
                                               int64_t half, int32_t tie, int32_t zero_point,
                                               int32_t lo, int32_t hi)
{
    const int32_t x = acc * mult;
    const int32_t v = (x + (int32_t)half - (x < 0 && shift > 0 ? tie : 0)) >> shift;
    return v < lo - zero_point ? lo : v > hi - zero_point ? hi : v + zero_point;
}

#endif /* QCC_DSP_H */
