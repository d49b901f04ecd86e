/*
 * qcc runtime: the integer arithmetic of qcc's NumPy interpreter, function for function.
 *
 * Each function names its Python twin (backends/numpy_int/kernels.py, qcc/numerics/rounding.py,
 * qcc/numerics/packing.py, qcc/numerics/binary.py; the training section at the end:
 * backends/numpy_int/train_step.py and training/); both give the same bits for every input.
 * C99, no malloc, no float except in qcc_quantize / qcc_dequantize (the model's float edges)
 * and in the functions of pre-quantized models (onnxruntime's float32 requantization).
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

#include "qcc_dsp.h" /* the DSP extension's primitives, for the packed kernels */

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

/*
 * Pre-quantized models (onnxruntime QDQ / QOperator): onnxruntime's float32 arithmetic, as
 * backends/numpy_int/qlinear.py reproduces it. ORT requantizes with a float multiplier:
 * rne(f32(acc) * scale), the product rounded to 24 bits first and then to an integer, ties to
 * even. That double rounding is no integer multiply-and-shift (qcc_requantize rounds once,
 * ties away), so these functions compute in float32 exactly as ORT does; qlinear.py emulates
 * the same float32 operations in int64 and gets the same bits. They need IEEE 754 binary32
 * arithmetic, round to nearest even, evaluated in float (FLT_EVAL_METHOD 0: x86-64, Arm
 * FPv4 / soft-float; checked below) and no -ffast-math.
 */
#include <float.h>
#include <string.h>

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "qcc runtime: pre-quantized models need float arithmetic evaluated in float"
#endif

/* The integer nearest to v, ties to even, for |v| <= 2^22: v + 1.5 * 2^23 lies in [2^23, 2^24),
 * where the float32 values are the integers, so the addition itself rounds (MLAS's
 * MlasRoundingBias trick; no libm). */
static inline int32_t qcc_rint_small(float v)
{
    return (int32_t)(v + 12582912.0f) - 12582912;
}

/* qlinear.requantize_like_ort (MlasRequantizeOutput): sat(rne(f32(acc) * scale) + zero_point).
 * The caller converts the accumulator: (float)acc rounds to nearest even as f32_from_int. */
static inline int32_t qcc_requantize_ort(float acc, float scale, int32_t zero_point, int32_t lo,
                                         int32_t hi)
{
    const float v = acc * scale;
    return v <= (float)(lo - zero_point) ? lo : v >= (float)(hi - zero_point) ? hi
        : qcc_rint_small(v) + zero_point;
}

/* fma(a, b, c) in float32 rounded once (C99 fmaf; MLAS's QLinearAdd kernel uses the FMA
 * instruction). The hardware instruction where the compiler has one (__FP_FAST_FMAF: Arm
 * FPv4, x86 with -mfma); else exactly in double: a * b is exact (48 bits), TwoSum gives the
 * sum's rounding error, a non-zero error makes the last bit odd (round to odd), and rounding
 * that to float32 is the correctly rounded sum (Boldo & Melquiond, IEEE Trans. Computers 57(4),
 * 2008: round to odd at >= 24 + 2 bits, then to nearest). No libm. */
static inline float qcc_fmaf(float a, float b, float c)
{
#if defined(__FP_FAST_FMAF)
    return __builtin_fmaf(a, b, c);
#else
    const double p = (double)a * (double)b;
    double s = p + (double)c;
    const double pb = s - (double)c, cb = s - pb;
    const double err = (p - pb) + ((double)c - cb); /* s + err = p + c exactly (TwoSum) */
    uint64_t bits;
    memcpy(&bits, &s, sizeof bits);
    if (err != 0.0 && (bits & 1u) == 0u) { /* one step towards the exact sum: odd */
        bits = ((err > 0.0) == (s > 0.0)) ? bits + 1u : bits - 1u;
        memcpy(&s, &bits, sizeof s);
    }
    return (float)s;
#endif
}

/* The end of qlinear.qlinear_add_like_ort: rne(v), where a result beyond int32 is INT32_MIN
 * (cvtps2dq), saturated to [lo, hi]. */
static inline int32_t qcc_saturate_ort(float v, int32_t lo, int32_t hi)
{
    if (v >= 2147483648.0f || v <= -2147483648.0f) {
        return lo;
    }
    return v <= (float)lo ? lo : v >= (float)hi ? hi : qcc_rint_small(v);
}

/* ONNX QuantizeLinear (float edge of a pre-quantized model): sat(rne(x / scale) +
 * zero_point), the division in float32, as qcc.core.ops.quantize and ORT compute it. NaN
 * gives zero_point. */
int32_t qcc_quantize_linear(float x, float scale, int32_t zero_point, int32_t lo, int32_t hi);

/* ONNX DequantizeLinear (float edge): (code - zero_point) * scale in float32. */
float qcc_dequantize_linear(int32_t code, int32_t zero_point, float scale);

/*
 * Training: the integer arithmetic of one fixed-point train step, function for function the
 * NumPy specification (backends/numpy_int/train_step.py and training/), used by
 * <name>_train.c only. Every function is static inline, so a model that does not train
 * compiles none of it. Activations / weights are int32_t; gradient buffers are qcc_grad,
 * int32_t when the emitter proved every gradient value of the model (transients included)
 * below 2^31 in magnitude (it then defines QCC_GRAD_BITS 32 before the include), else int64_t;
 * all arithmetic on them is int64_t. `x << k` of a negative x is written x * 2^k (qcc_pow2).
 */
#ifndef QCC_GRAD_BITS
#define QCC_GRAD_BITS 64
#endif
#if QCC_GRAD_BITS == 32
typedef int32_t qcc_grad;
#else
typedef int64_t qcc_grad;
#endif

/* The counter-based PRNG of qcc.numerics.rounding: the stream position (seed, counter). */
typedef struct {
    uint32_t seed;
    uint32_t counter;
} qcc_rng;

/* A gradient read through stochastic ternarization (Banner et al. 2018, ternarized back-propagation,
 * Algorithm 1): element i reads as sign(dy[i]) or 0 by the next draw of *rng against
 * scale = max |dy|. The kernels below read dy once per element in row-major order, which is
 * the order the specification draws in; NULL reads dy itself. */
typedef struct {
    qcc_rng *rng;
    int64_t scale;
} qcc_tern;

/* 2-D window geometry of a Conv or pool (a Gemm with transB is the 1 x 1 case on 1 x 1
 * inputs). A grouped Conv (depthwise: groups = c) reads input channels
 * group * c / groups .. of output channel m's group m / (m / groups). */
typedef struct {
    int32_t c, h, w;        /* input channels and spatial size (per sample) */
    int32_t m, oh, ow;      /* output channels and spatial size */
    int32_t kh, kw, sh, sw, dh, dw, ph, pw;  /* kernel, strides, dilations, leading pads */
    int32_t groups;
    int32_t wt;             /* weights stored input-major (a Gemm without transB: K x M) */
} qcc_conv;

/* where weight (m, c, ky, kx) is stored; c counts within m's group */
static inline int32_t qcc_widx(const qcc_conv *g, int32_t m, int32_t c, int32_t ky, int32_t kx)
{
    const int32_t tap = (c * g->kh + ky) * g->kw + kx;
    return g->wt ? tap * g->m + m : m * (g->c / g->groups) * g->kh * g->kw + tap;
}

static inline int64_t qcc_pow2(int32_t k) { return (int64_t)1 << k; }

/* rounding.mix32: lowbias32 */
static inline uint32_t qcc_mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

/* rounding.draw_u32 of one element: rand_u32(seed, counter), then counter + 1 */
static inline uint32_t qcc_draw(qcc_rng *rng)
{
    const uint32_t key = qcc_mix32(rng->seed ^ 0x9E3779B9u);
    const uint32_t d = qcc_mix32(rng->counter ^ key);
    rng->counter += 1u;
    return d;
}

/* binary.stochastic_ternarize of one integer element (the next draw d):
 * sign(g) if d * s < |g| * 2^32 (uint64, |g| <= s < 2^31), else 0 */
static inline int64_t qcc_ternary(int64_t g, int64_t s, qcc_rng *rng)
{
    const uint64_t d = qcc_draw(rng);
    const uint64_t mag = (uint64_t)(g < 0 ? -g : g);
    if (d * (uint64_t)s < (mag << 32)) {
        return g < 0 ? -1 : 1;
    }
    return 0;
}

/* element i of dy as the kernels read it (qcc_tern) */
static inline int64_t qcc_read(const qcc_grad *dy, int64_t i, const qcc_tern *t)
{
    return t == 0 ? dy[i] : qcc_ternary(dy[i], t->scale, t->rng);
}

/* max |c| of n codes (the ternarization scale s) */
static inline int64_t qcc_absmax(const qcc_grad *c, int32_t n)
{
    int64_t m = 0;
    int32_t i;
    for (i = 0; i < n; ++i) {
        const int64_t a = c[i] < 0 ? -(int64_t)c[i] : c[i];
        m = a > m ? a : m;
    }
    return m;
}

/* rounding.stochastic_round_shift: floor((x + u) / 2^s), u = draw >> (32 - s); one draw
 * also when s == 0 (u = 0) so the stream position never depends on the data */
static inline int64_t qcc_stochastic_shift(int64_t x, int32_t s, qcc_rng *rng)
{
    const uint32_t d = qcc_draw(rng);
    const uint64_t u = s == 0 ? 0u : (uint64_t)(d >> (32 - s));
    const uint64_t low = (uint64_t)(x & (qcc_pow2(s) - 1)) + u;
    return (x >> s) + (int64_t)(low >> s);
}

/* gradients.stochastic_divide: floor(x / d) + [draw * d < (x mod d) * 2^32] */
static inline int64_t qcc_stochastic_divide(int64_t x, int64_t d, qcc_rng *rng)
{
    int64_t q = x / d;
    uint64_t r;
    if (x % d != 0 && x < 0) {
        q -= 1; /* C truncates; the spec floors */
    }
    r = (uint64_t)(x - q * d);
    return q + ((uint64_t)qcc_draw(rng) * (uint64_t)d < (r << 32) ? 1 : 0);
}

/* gradients.round_gradient of n codes in place: codes of step 2^exp carrying divisor d0
 * (times the batch when per_batch) become codes of step 2^target */
static inline void qcc_round_gradient(qcc_grad *c, int32_t n, int32_t exp, int64_t d0, int per_batch,
                                     int32_t target, int32_t batch, qcc_rng *rng)
{
    int32_t shift = target - exp, i, s = 0;
    int64_t divisor;
    if (shift < 0) {
        for (i = 0; i < n; ++i) {
            c[i] = (qcc_grad)(c[i] * qcc_pow2(-shift));
        }
        shift = 0;
    }
    divisor = d0 * (per_batch ? batch : 1) * qcc_pow2(shift);
    if (divisor == 1) {
        return; /* exact: nothing drawn */
    }
    if ((divisor & (divisor - 1)) == 0) {
        while (((int64_t)1 << s) != divisor) {
            ++s;
        }
        for (i = 0; i < n; ++i) {
            c[i] = (qcc_grad)qcc_stochastic_shift(c[i], s, rng);
        }
        return;
    }
    for (i = 0; i < n; ++i) {
        c[i] = (qcc_grad)qcc_stochastic_divide(c[i], divisor, rng);
    }
}

/* gradients.saturate: clip to the signed `bits`-wide range, counting the clipped */
static inline void qcc_saturate(qcc_grad *c, int32_t n, int32_t bits, uint32_t *clipped)
{
    const int64_t hi = qcc_pow2(bits - 1) - 1, lo = -hi - 1;
    int32_t i;
    for (i = 0; i < n; ++i) {
        if (c[i] < lo || c[i] > hi) {
            *clipped += 1u;
            c[i] = (qcc_grad)(c[i] < lo ? lo : hi);
        }
    }
}

/* kernels.conv_accumulator / gemm_accumulator with x_zero_point 0: the exact sum x w + b of
 * output channel m at (oy, ox); xg is the channel group's first input plane */
static inline int64_t qcc_conv_acc(const qcc_conv *g, const int32_t *xg, const int32_t *w,
                                   const int32_t *b, int32_t m, int32_t oy, int32_t ox)
{
    const int32_t cg = g->c / g->groups;
    int64_t acc = b != 0 ? b[m] : 0;
    int32_t c, ky, kx;
    for (c = 0; c < cg; ++c) {
        for (ky = 0; ky < g->kh; ++ky) {
            const int32_t iy = oy * g->sh + ky * g->dh - g->ph;
            if (iy < 0 || iy >= g->h) {
                continue;
            }
            for (kx = 0; kx < g->kw; ++kx) {
                const int32_t ix = ox * g->sw + kx * g->dw - g->pw;
                if (ix < 0 || ix >= g->w) {
                    continue;
                }
                acc += (int64_t)xg[(c * g->h + iy) * g->w + ix] * w[qcc_widx(g, m, c, ky, kx)];
            }
        }
    }
    return acc;
}

/* kernels.qconv / qgemm with x_zero_point 0: acc = sum x w + b, requantize per channel
 * (round_shift(acc * mult, shift) + zp, clamped to [floor, hi]) */
static inline void qcc_conv_forward(const qcc_conv *g, int32_t n, const int32_t *x, const int32_t *w,
                                   const int32_t *b, const int32_t *mult, const int32_t *shift,
                                   int32_t zp, int32_t floor_, int32_t hi, int32_t *y)
{
    const int32_t cg = g->c / g->groups, mg = g->m / g->groups;
    int32_t s, m, oy, ox;
    for (s = 0; s < n; ++s) {
        const int32_t *xs = x + (int64_t)s * g->c * g->h * g->w;
        int32_t *ys = y + (int64_t)s * g->m * g->oh * g->ow;
        for (m = 0; m < g->m; ++m) {
            const int32_t *xg = xs + (int64_t)(m / mg) * cg * g->h * g->w;
            for (oy = 0; oy < g->oh; ++oy) {
                for (ox = 0; ox < g->ow; ++ox) {
                    const int64_t acc = qcc_conv_acc(g, xg, w, b, m, oy, ox);
                    int64_t v;
                    v = qcc_round_shift(acc * mult[m], shift[m]) + zp;
                    ys[(m * g->oh + oy) * g->ow + ox] =
                        (int32_t)(v < floor_ ? floor_ : v > hi ? hi : v);
                }
            }
        }
    }
}

/* gradients.conv_weight_grad (and gemm's): dW = sum over batch and positions dY x patch,
 * exact; gw has the weight's layout, overwritten (or added to when `accumulate`). With tern,
 * dY is one stochastic ternarization of G_A (train_step._weight_gradient) */
static inline void qcc_conv_weight_grad(const qcc_conv *g, int32_t n, const int32_t *x,
                                       const qcc_grad *dy, const qcc_tern *tern, int accumulate,
                                       qcc_grad *gw)
{
    const int32_t cg = g->c / g->groups, mg = g->m / g->groups;
    const int32_t k = g->m * cg * g->kh * g->kw, plane = g->oh * g->ow;
    int32_t s, m, oy, ox, c, ky, kx, i;
    if (!accumulate) {
        for (i = 0; i < k; ++i) {
            gw[i] = 0;
        }
    }
    for (s = 0; s < n; ++s) {
        const int32_t *xs = x + (int64_t)s * g->c * g->h * g->w;
        for (m = 0; m < g->m; ++m) {
            const int32_t *xg = xs + (int64_t)(m / mg) * cg * g->h * g->w;
            for (oy = 0; oy < g->oh; ++oy) {
                for (ox = 0; ox < g->ow; ++ox) {
                    const int64_t d = qcc_read(dy, ((int64_t)s * g->m + m) * plane +
                                              oy * g->ow + ox, tern);
                    if (d == 0) {
                        continue;
                    }
                    for (c = 0; c < cg; ++c) {
                        for (ky = 0; ky < g->kh; ++ky) {
                            const int32_t iy = oy * g->sh + ky * g->dh - g->ph;
                            if (iy < 0 || iy >= g->h) {
                                continue;
                            }
                            for (kx = 0; kx < g->kw; ++kx) {
                                const int32_t ix = ox * g->sw + kx * g->dw - g->pw;
                                qcc_grad *at;
                                if (ix < 0 || ix >= g->w) {
                                    continue;
                                }
                                at = &gw[qcc_widx(g, m, c, ky, kx)];
                                *at = (qcc_grad)(*at + d * xg[(c * g->h + iy) * g->w + ix]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/* gradients.conv_input_grad (and gemm's): dX = W^T dY' scattered through the patches, exact,
 * where dY' = dY (or its ternarization) * scale * mult[m] (train_step._weighted_backward:
 * scale s with TBP, else 1; mult the binary layer's alpha_mult, or NULL) */
static inline void qcc_conv_input_grad(const qcc_conv *g, int32_t n, const int32_t *w,
                                      const qcc_grad *dy, const qcc_tern *tern, int64_t scale,
                                      const int32_t *mult, qcc_grad *dx)
{
    const int32_t cg = g->c / g->groups, mg = g->m / g->groups, plane = g->oh * g->ow;
    int32_t s, m, oy, ox, c, ky, kx, i;
    for (i = 0; i < n * g->c * g->h * g->w; ++i) {
        dx[i] = 0;
    }
    for (s = 0; s < n; ++s) {
        qcc_grad *xs = dx + (int64_t)s * g->c * g->h * g->w;
        for (m = 0; m < g->m; ++m) {
            qcc_grad *xg = xs + (int64_t)(m / mg) * cg * g->h * g->w;
            const int64_t factor = scale * (mult != 0 ? mult[m] : 1);
            for (oy = 0; oy < g->oh; ++oy) {
                for (ox = 0; ox < g->ow; ++ox) {
                    const int64_t d = factor * qcc_read(dy, ((int64_t)s * g->m + m) * plane +
                                                       oy * g->ow + ox, tern);
                    if (d == 0) {
                        continue;
                    }
                    for (c = 0; c < cg; ++c) {
                        for (ky = 0; ky < g->kh; ++ky) {
                            const int32_t iy = oy * g->sh + ky * g->dh - g->ph;
                            if (iy < 0 || iy >= g->h) {
                                continue;
                            }
                            for (kx = 0; kx < g->kw; ++kx) {
                                const int32_t ix = ox * g->sw + kx * g->dw - g->pw;
                                qcc_grad *at;
                                if (ix < 0 || ix >= g->w) {
                                    continue;
                                }
                                at = &xg[(c * g->h + iy) * g->w + ix];
                                *at = (qcc_grad)(*at + d * w[qcc_widx(g, m, c, ky, kx)]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/* total * s of n codes in place (TBP: the summed ternary weight gradient times s) */
static inline void qcc_scale(qcc_grad *c, int32_t n, int64_t s)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        c[i] = (qcc_grad)(c[i] * s);
    }
}

/* grads.maxpool_vjp on n * channels planes: each output's gradient goes to the first maximum
 * of its window (taps in the padding never win: they read as -inf) */
static inline void qcc_maxpool_backward(const qcc_conv *g, int32_t planes, const int32_t *x,
                                        const qcc_grad *dy, qcc_grad *dx)
{
    int32_t p, oy, ox, ky, kx, i;
    for (i = 0; i < planes * g->h * g->w; ++i) {
        dx[i] = 0;
    }
    for (p = 0; p < planes; ++p) {
        const int32_t *xp = x + (int64_t)p * g->h * g->w;
        for (oy = 0; oy < g->oh; ++oy) {
            for (ox = 0; ox < g->ow; ++ox) {
                int32_t best = -1;
                for (ky = 0; ky < g->kh; ++ky) {
                    const int32_t iy = oy * g->sh + ky * g->dh - g->ph;
                    if (iy < 0 || iy >= g->h) {
                        continue;
                    }
                    for (kx = 0; kx < g->kw; ++kx) {
                        const int32_t ix = ox * g->sw + kx * g->dw - g->pw;
                        if (ix >= 0 && ix < g->w && (best < 0 || xp[iy * g->w + ix] > xp[best])) {
                            best = iy * g->w + ix;
                        }
                    }
                }
                if (best >= 0) {
                    qcc_grad *to = &dx[(int64_t)p * g->h * g->w + best];
                    *to = (qcc_grad)(*to + dy[((int64_t)p * g->oh + oy) * g->ow + ox]);
                }
            }
        }
    }
}

/* grads.spread on n * channels planes (AveragePool backward without the division, which the
 * gradient's divisor carries): each output's gradient added to every input tap of its window */
static inline void qcc_avgpool_backward(const qcc_conv *g, int32_t planes, const qcc_grad *dy,
                                        qcc_grad *dx)
{
    int32_t p, oy, ox, ky, kx, i;
    for (i = 0; i < planes * g->h * g->w; ++i) {
        dx[i] = 0;
    }
    for (p = 0; p < planes; ++p) {
        qcc_grad *xp = dx + (int64_t)p * g->h * g->w;
        for (oy = 0; oy < g->oh; ++oy) {
            for (ox = 0; ox < g->ow; ++ox) {
                const qcc_grad d = dy[((int64_t)p * g->oh + oy) * g->ow + ox];
                for (ky = 0; ky < g->kh; ++ky) {
                    const int32_t iy = oy * g->sh + ky * g->dh - g->ph;
                    if (iy < 0 || iy >= g->h) {
                        continue;
                    }
                    for (kx = 0; kx < g->kw; ++kx) {
                        const int32_t ix = ox * g->sw + kx * g->dw - g->pw;
                        if (ix >= 0 && ix < g->w) {
                            xp[iy * g->w + ix] = (qcc_grad)(xp[iy * g->w + ix] + d);
                        }
                    }
                }
            }
        }
    }
}

/* GlobalAveragePool backward (divisor carried by the gradient): each plane's gradient to
 * every position of the plane */
static inline void qcc_broadcast_grad(int32_t planes, int32_t plane, const qcc_grad *dy,
                                      qcc_grad *dx)
{
    int32_t p, i;
    for (p = 0; p < planes; ++p) {
        for (i = 0; i < plane; ++i) {
            dx[(int64_t)p * plane + i] = dy[p];
        }
    }
}

/* Transpose / Concat backward for n samples: input element j of a sample reads output element
 * map[j] of the same sample (the forward's inverse, a permutation or a slice) */
static inline void qcc_gather_grad(int32_t n, int32_t in_size, int32_t out_size,
                                   const uint32_t *map, const qcc_grad *dy, qcc_grad *dx)
{
    int32_t s, j;
    for (s = 0; s < n; ++s) {
        for (j = 0; j < in_size; ++j) {
            dx[(int64_t)s * in_size + j] = dy[(int64_t)s * out_size + map[j]];
        }
    }
}

/* A fused or plain ReLU's backward in place: the gradient is kept where act > threshold
 * (Relu: its input > 0; a fused ReLU: the output > its zero point) */
static inline void qcc_mask_grad(qcc_grad *g, int32_t n, const int32_t *act, int32_t threshold)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        if (act[i] <= threshold) {
            g[i] = 0;
        }
    }
}

/* vjps.WeightedVjp._relu_passes: a fused ReLU's backward in place, straight through the
 * rounding: the gradient is kept where the accumulator is > 0. An output above the floor
 * implies it; at the floor the accumulator is recomputed (only there, and only where the
 * gradient is not already 0) */
static inline void qcc_relu_accumulator_mask(const qcc_conv *g, int32_t n, const int32_t *x,
                                             const int32_t *w, const int32_t *b, const int32_t *y,
                                             int32_t floor_, qcc_grad *gy)
{
    const int32_t cg = g->c / g->groups, mg = g->m / g->groups;
    int32_t s, m, oy, ox;
    for (s = 0; s < n; ++s) {
        const int32_t *xs = x + (int64_t)s * g->c * g->h * g->w;
        for (m = 0; m < g->m; ++m) {
            const int32_t *xg = xs + (int64_t)(m / mg) * cg * g->h * g->w;
            for (oy = 0; oy < g->oh; ++oy) {
                for (ox = 0; ox < g->ow; ++ox) {
                    const int64_t i = (((int64_t)s * g->m + m) * g->oh + oy) * g->ow + ox;
                    if (gy[i] != 0 && y[i] <= floor_ && qcc_conv_acc(g, xg, w, b, m, oy, ox) <= 0) {
                        gy[i] = 0;
                    }
                }
            }
        }
    }
}

/* train_step._accumulate: two gradients of one tensor summed at the finer step,
 * a = a * 2^ka + b * 2^kb (one of ka, kb is 0) */
static inline void qcc_add_grad(qcc_grad *a, int32_t n, int32_t ka, const qcc_grad *b,
                                int32_t kb)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        a[i] = (qcc_grad)(a[i] * qcc_pow2(ka) + b[i] * qcc_pow2(kb));
    }
}

/* softmax_ce.ce_gradient_q24 of one sample's m logits codes (step 2^z_exp): g in Q.24 */
static inline void qcc_ce_gradient(const int32_t *z, int32_t m, int32_t z_exp, int32_t label,
                                  const int64_t *lut, qcc_grad *g)
{
    int64_t mx = z[0], s = 0;
    int32_t j;
    for (j = 1; j < m; ++j) {
        mx = z[j] > mx ? z[j] : mx;
    }
    for (j = 0; j < m; ++j) {
        int64_t t = (mx - z[j]) * 24204406; /* LOG2E_Q */
        const int32_t shift = 8 - z_exp;
        int32_t nn, k;
        t = shift >= 0 ? qcc_round_shift(t, shift) : t * qcc_pow2(-shift);
        if (t > ((int64_t)32 << 16)) {
            t = (int64_t)32 << 16;
        }
        nn = (int32_t)(t >> 16);
        k = (int32_t)(((t & 0xFFFF) + 128) >> 8);
        g[j] = (qcc_grad)(nn <= 30 ? qcc_round_shift(lut[k], nn) : 0); /* e_j for now */
        s += g[j];
    }
    for (j = 0; j < m; ++j) {
        g[j] = (qcc_grad)((2 * (g[j] * qcc_pow2(24)) + s) / (2 * s) -
                         (j == label ? qcc_pow2(24) : 0));
    }
}

/* updates.update_fixed of n weights by rule 'f' (fx: acc = A), 'b' (bc: acc = H), 's' (sr)
 * or 'r' (r); u = G_W << ushift in accumulator units, b = acc_bits */
static inline void qcc_update_fixed(char rule, int32_t n, int32_t *w, int32_t *acc,
                                   const qcc_grad *gw, int32_t ushift, int32_t b, int32_t lo,
                                   int32_t hi, qcc_rng *rng, uint32_t *clipped)
{
    const int64_t half = qcc_pow2(b - 1);
    const int64_t h_lo = lo * qcc_pow2(b) - half, h_hi = hi * qcc_pow2(b) + half - 1;
    int32_t i;
    for (i = 0; i < n; ++i) {
        const int64_t u = gw[i] * qcc_pow2(ushift);
        if (rule == 'f' || rule == 'b') {
            int64_t h = (rule == 'f' ? w[i] * qcc_pow2(b) + acc[i] : acc[i]) - u, p;
            if (h < h_lo || h > h_hi) {
                *clipped += 1u;
                h = h < h_lo ? h_lo : h_hi;
            }
            p = (h + half) >> b;
            w[i] = (int32_t)p;
            acc[i] = (int32_t)(rule == 'f' ? h - p * qcc_pow2(b) : h);
        } else {
            const int64_t target = w[i] * qcc_pow2(b) - u;
            int64_t p = rule == 's' ? qcc_stochastic_shift(target, b, rng)
                                    : qcc_round_shift(target, b);
            if (p < lo || p > hi) {
                *clipped += 1u;
                p = p < lo ? lo : hi;
            }
            w[i] = (int32_t)p;
        }
    }
}

/* updates.update_binary of n weights b = +-1 by rule 'b' (bc: acc = H in [-a_c, a_c]), 's'
 * (sr) or 'r' (r); a_c = alpha_acc[c], channel c = i / per_channel (the output channel is the
 * weight's first axis); u = G_W << ushift */
static inline void qcc_update_binary(char rule, int32_t n, int32_t per_channel, int32_t *w,
                                    int32_t *acc, const qcc_grad *gw, int32_t ushift,
                                    const int32_t *alpha_acc, qcc_rng *rng, uint32_t *clipped)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        const int64_t a = alpha_acc[i / per_channel], u = gw[i] * qcc_pow2(ushift);
        if (rule == 'b') {
            int64_t h = acc[i] - u;
            if (h < -a || h > a) {
                *clipped += 1u;
                h = h < -a ? -a : a;
            }
            acc[i] = (int32_t)h;
            w[i] = h >= 0 ? 1 : -1;
        } else if (rule == 'r') {
            w[i] = w[i] * a - u >= 0 ? 1 : -1;
        } else {
            int64_t v = w[i] * a - u;
            v = v < -a ? -a : v > a ? a : v;
            w[i] = (uint64_t)qcc_draw(rng) * (uint64_t)(2 * a) < ((uint64_t)(v + a) << 32) ? 1
                                                                                       : -1;
        }
    }
}

/* updates.update_bias: M <- sat32(M - sum G_A << ushift); code = sat32(round_shift(M * mult,
 * shift)) per output channel */
static inline void qcc_update_bias(int32_t m, int32_t *master, int32_t *bias, const int64_t *gb,
                                  int32_t ushift, const int32_t *mult, const int32_t *shift,
                                  uint32_t *clipped)
{
    int32_t c;
    for (c = 0; c < m; ++c) {
        int64_t v = master[c] - gb[c] * qcc_pow2(ushift);
        if (v < INT32_MIN || v > INT32_MAX) {
            *clipped += 1u;
            v = v < INT32_MIN ? INT32_MIN : INT32_MAX;
        }
        master[c] = (int32_t)v;
        v = qcc_round_shift(v * mult[c], shift[c]);
        bias[c] = (int32_t)(v < INT32_MIN ? INT32_MIN : v > INT32_MAX ? INT32_MAX : v);
    }
}

/*
 * Layers with sign activations (dot = "xnor") in training: the forward and backward dot
 * products without a multiplication (Banner et al. 2018, ternarized back-propagation): only
 * XNOR, popcount, additions, shifts and the sign selects of +-1 and ternary operands. Every
 * product of two sizes is computed ahead of time by the emitter (train_ops.xnor_geometry), so
 * the kernels step through the tensors by additions only. Sign activations a = sign(x),
 * sign(0) = +1 (the input codes have zero point 0); taps in (c, ky, kx) order of one group,
 * packed as xnor.pack_rows does (tap 32w + j in bit j of word w).
 */
typedef struct {
    int32_t cg, h, w, mg, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw, groups;
    int32_t taps;          /* cg * kh * kw: the taps of one patch (bits of one weight row) */
    int32_t words;         /* ceil(taps / 32) */
    int32_t plane;         /* h * w: the offset of the next input channel */
    int32_t row_ky;        /* dh * w: the offset of the next kernel row's input row */
    int32_t row_oy;        /* sh * w: the offset of the next output row's first input row */
    int32_t row0;          /* -ph * w: the offset of the first output row's first input row */
    int32_t group_in;      /* cg * h * w: the input offset of the next group */
    int32_t out_plane;     /* oh * ow */
    int32_t group_out;     /* mg * oh * ow: the output offset of the next group */
    int32_t group_words;   /* mg * words: the packed weight rows of one group */
    int32_t w_row, w_tap;  /* weight (m, tap) at m * w_row + tap * w_tap */
    int32_t group_w;       /* mg * w_row */
    int32_t x_size, y_size; /* per sample */
} qcc_xnor;

/* binary.popcount32 with shifts and additions only (the runtime's SWAR popcount ends with a
 * multiplication by 0x01010101) */
static inline int32_t qcc_popcount_adds(uint32_t v)
{
    v -= (v >> 1) & 0x55555555u;
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    v = (v + (v >> 4)) & 0x0F0F0F0Fu;
    v += v >> 8;
    v += v >> 16;
    return (int32_t)(v & 0x3Fu);
}

/* the sign bits (x >= 0) and the mask of real (not padded) taps of the patch of one output
 * position: iy0, ix0 its first input row and column, row0 = iy0 * w */
static inline void qcc_xnor_patch(const qcc_xnor *g, const int32_t *xg, int32_t iy0,
                                  int32_t row0, int32_t ix0, uint32_t *bits, uint32_t *valid)
{
    int32_t c, ky, kx, i, word = 0, plane = 0;
    uint32_t bit = 1u;
    for (i = 0; i < g->words; ++i) {
        bits[i] = 0u;
        valid[i] = 0u;
    }
    for (c = 0; c < g->cg; ++c) {
        int32_t iy = iy0, row = row0 + plane;
        for (ky = 0; ky < g->kh; ++ky) {
            int32_t ix = ix0;
            for (kx = 0; kx < g->kw; ++kx) {
                if (iy >= 0 && iy < g->h && ix >= 0 && ix < g->w) {
                    valid[word] |= bit;
                    if (xg[row + ix] >= 0) {
                        bits[word] |= bit;
                    }
                }
                bit <<= 1;
                if (bit == 0u) {
                    bit = 1u;
                    ++word;
                }
                ix += g->dw;
            }
            iy += g->dh;
            row += g->row_ky;
        }
        plane += g->plane;
    }
}

/* xnor.conv_acc / gemm_acc of n samples without the bias: acc[m, p] = 2 * popcount(XNOR(a, w_m)
 * & valid) - popcount(valid). patch: 2 * words scratch words. */
static inline void qcc_xnor_forward(const qcc_xnor *g, int32_t n, const int32_t *x,
                                    const uint32_t *wbits, uint32_t *patch, int32_t *acc)
{
    int32_t s, gi, oy, ox, mi, i;
    uint32_t *const valid = patch + g->words;
    for (s = 0; s < n; ++s) {
        const int32_t *xg = x;
        const uint32_t *wg = wbits;
        int32_t *ag = acc;
        for (gi = 0; gi < g->groups; ++gi) {
            int32_t iy0 = -g->ph, row0 = g->row0, p = 0;
            for (oy = 0; oy < g->oh; ++oy) {
                int32_t ix0 = -g->pw;
                for (ox = 0; ox < g->ow; ++ox) {
                    const uint32_t *wr = wg;
                    int32_t *at = ag + p;
                    qcc_xnor_patch(g, xg, iy0, row0, ix0, patch, valid);
                    for (mi = 0; mi < g->mg; ++mi) {
                        int32_t agree = 0, real = 0;
                        for (i = 0; i < g->words; ++i) {
                            agree += qcc_popcount_adds(~(patch[i] ^ wr[i]) & valid[i]);
                            real += qcc_popcount_adds(valid[i]);
                        }
                        *at = (agree << 1) - real;
                        wr += g->words;
                        at += g->out_plane;
                    }
                    ix0 += g->sw;
                    ++p;
                }
                iy0 += g->sh;
                row0 += g->row_oy;
            }
            xg += g->group_in;
            wg += g->group_words;
            ag += g->group_out;
        }
        x += g->x_size;
        acc += g->y_size;
    }
}

/* kernels.requantize of n samples of m channels of `plane` accumulators plus the bias:
 * round_shift((acc + b) * mult, shift) + zp, clamped to [floor, hi] */
static inline void qcc_requantize_channels(const int32_t *acc, int32_t n, int32_t m,
                                           int32_t plane, const int32_t *b,
                                           const int32_t *mult, const int32_t *shift,
                                           int32_t zp, int32_t floor_, int32_t hi, int32_t *y)
{
    int32_t s, c, p;
    for (s = 0; s < n; ++s) {
        for (c = 0; c < m; ++c) {
            for (p = 0; p < plane; ++p, ++acc, ++y) {
                const int64_t v = qcc_round_shift(((int64_t)*acc + (b != 0 ? b[c] : 0)) *
                                                  mult[c], shift[c]) + zp;
                *y = (int32_t)(v < floor_ ? floor_ : v > hi ? hi : v);
            }
        }
    }
}

/* gradients.conv_weight_grad of n samples for sign activations, added to gw (weight layout):
 * gw[m, tap] += d[m, p] * a[tap of p], a = sign(x) in {-1, +1}, d = t[m, p] in {-1, 0, 1}
 * (a ternarization, when t is not NULL) or dy[m, p]: a sign select and an addition */
static inline void qcc_xnor_weight_grad(const qcc_xnor *g, int32_t n, const int32_t *x,
                                        const qcc_grad *dy, const int8_t *t, uint32_t *patch,
                                        qcc_grad *gw)
{
    int32_t s, gi, oy, ox, mi, j;
    uint32_t *const valid = patch + g->words;
    for (s = 0; s < n; ++s) {
        const int32_t *xg = x;
        qcc_grad *wg = gw;
        int32_t base = 0; /* the sample's and group's first output element */
        for (gi = 0; gi < g->groups; ++gi) {
            int32_t iy0 = -g->ph, row0 = g->row0, p = base;
            for (oy = 0; oy < g->oh; ++oy) {
                int32_t ix0 = -g->pw;
                for (ox = 0; ox < g->ow; ++ox) {
                    qcc_grad *wm = wg;
                    int32_t at = p;
                    qcc_xnor_patch(g, xg, iy0, row0, ix0, patch, valid);
                    for (mi = 0; mi < g->mg; ++mi) {
                        const int64_t d = t != 0 ? t[at] : dy[at];
                        if (d != 0) {
                            qcc_grad *w = wm;
                            int32_t word = 0;
                            uint32_t bit = 1u;
                            for (j = 0; j < g->taps; ++j) {
                                if (valid[word] & bit) {
                                    *w = (qcc_grad)(*w + ((patch[word] & bit) ? d : -d));
                                }
                                w += g->w_tap;
                                bit <<= 1;
                                if (bit == 0u) {
                                    bit = 1u;
                                    ++word;
                                }
                            }
                        }
                        wm += g->w_row;
                        at += g->out_plane;
                    }
                    ix0 += g->sw;
                    ++p;
                }
                iy0 += g->sh;
                row0 += g->row_oy;
            }
            xg += g->group_in;
            wg += g->group_w;
            base += g->group_out;
        }
        x += g->x_size;
        dy = dy != 0 ? dy + g->y_size : dy;
        t = t != 0 ? t + g->y_size : t;
    }
}

/* gradients.conv_input_grad of n samples for binary weights: dx[tap of p] = sum over m of
 * b[m, tap] * d[m, p], b = +-1 the packed weight bits, d = src[m, p] or (with t) the select
 * of +-scaled[m] or 0 by the ternary t[m, p]; dx is overwritten */
static inline void qcc_xnor_input_grad(const qcc_xnor *g, int32_t n, const qcc_grad *src,
                                       const int8_t *t, const int64_t *scaled,
                                       const uint32_t *wbits, qcc_grad *dx)
{
    int32_t s, gi, oy, ox, mi, c, ky, kx, i;
    for (s = 0; s < n; ++s) {
        qcc_grad *xg = dx;
        const uint32_t *wg = wbits;
        const int64_t *sg = scaled;
        int32_t base = 0;
        for (i = 0; i < g->x_size; ++i) {
            dx[i] = 0;
        }
        for (gi = 0; gi < g->groups; ++gi) {
            int32_t iy0 = -g->ph, row0 = g->row0, p = base;
            for (oy = 0; oy < g->oh; ++oy) {
                int32_t ix0 = -g->pw;
                for (ox = 0; ox < g->ow; ++ox) {
                    const uint32_t *wr = wg;
                    int32_t at = p;
                    for (mi = 0; mi < g->mg; ++mi) {
                        int64_t d;
                        if (t != 0) {
                            d = t[at] > 0 ? sg[mi] : t[at] < 0 ? -sg[mi] : 0;
                        } else {
                            d = src[at];
                        }
                        if (d != 0) {
                            int32_t word = 0, plane = 0;
                            uint32_t bit = 1u;
                            for (c = 0; c < g->cg; ++c) {
                                int32_t iy = iy0, row = row0 + plane;
                                for (ky = 0; ky < g->kh; ++ky) {
                                    int32_t ix = ix0;
                                    for (kx = 0; kx < g->kw; ++kx) {
                                        if (iy >= 0 && iy < g->h && ix >= 0 && ix < g->w) {
                                            qcc_grad *v = &xg[row + ix];
                                            *v = (qcc_grad)(*v + ((wr[word] & bit) ? d : -d));
                                        }
                                        bit <<= 1;
                                        if (bit == 0u) {
                                            bit = 1u;
                                            ++word;
                                        }
                                        ix += g->dw;
                                    }
                                    iy += g->dh;
                                    row += g->row_ky;
                                }
                                plane += g->plane;
                            }
                        }
                        wr += g->words;
                        at += g->out_plane;
                    }
                    ix0 += g->sw;
                    ++p;
                }
                iy0 += g->sh;
                row0 += g->row_oy;
            }
            xg += g->group_in;
            wg += g->group_words;
            sg += g->mg;
            base += g->group_out;
        }
        dx += g->x_size;
        src = src != 0 ? src + g->y_size : src;
        t = t != 0 ? t + g->y_size : t;
    }
}

/* binary.stochastic_ternarize of n codes (one draw each, in order) into t in {-1, 0, 1} */
static inline void qcc_ternarize(const qcc_grad *gy, int32_t n, int64_t s, qcc_rng *rng,
                                 int8_t *t)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        t[i] = (int8_t)qcc_ternary(gy[i], s, rng);
    }
}

/* out[m] = mult[m] * s: the binary layer's alpha_mult times the ternarization scale, once per
 * channel and step (the input gradient's selects read it) */
static inline void qcc_channel_scale(int32_t m, const int32_t *mult, int64_t s, int64_t *out)
{
    int32_t c;
    for (c = 0; c < m; ++c) {
        out[c] = mult[c] * s;
    }
}

/* src[s, c, p] = dy[s, c, p] * mult[c] (exact gradients through a binary layer: G_A times
 * alpha_mult, train_step's `source * mult`) */
static inline void qcc_channel_product(const qcc_grad *dy, int32_t n, int32_t m, int32_t plane,
                                       const int32_t *mult, qcc_grad *src)
{
    int32_t s, c, p;
    for (s = 0; s < n; ++s) {
        for (c = 0; c < m; ++c) {
            for (p = 0; p < plane; ++p, ++dy, ++src) {
                *src = (qcc_grad)(*dy * mult[c]);
            }
        }
    }
}

/* The straight-through estimator of sign: the gradient is kept where lo < x < hi (the input
 * code inside its format's range), zeroed elsewhere (passes/training_program.py) */
static inline void qcc_ste_mask(qcc_grad *gx, int32_t n, const int32_t *x, int32_t lo,
                                int32_t hi)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        if (x[i] <= lo || x[i] >= hi) {
            gx[i] = 0;
        }
    }
}

/* The +-1 weight codes of m rows as packed sign bits (xnor.pack_rows of the rows), after
 * every update of a trained layer with sign activations */
static inline void qcc_xnor_pack_weights(const qcc_xnor *g, int32_t m, const int32_t *w,
                                         uint32_t *wbits)
{
    int32_t r, j, i, row = 0;
    for (r = 0; r < m; ++r) {
        int32_t at = row, word = 0;
        uint32_t bit = 1u;
        for (i = 0; i < g->words; ++i) {
            wbits[i] = 0u;
        }
        for (j = 0; j < g->taps; ++j) {
            if (w[at] > 0) {
                wbits[word] |= bit;
            }
            at += g->w_tap;
            bit <<= 1;
            if (bit == 0u) {
                bit = 1u;
                ++word;
            }
        }
        row += g->w_row;
        wbits += g->words;
    }
}

#endif /* QCC_RUNTIME_H */
