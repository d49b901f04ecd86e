/*
 * qcc training runtime: the integer arithmetic of one fixed-point train step, function for
 * function the NumPy specification (backends/numpy_int/train_step.py and training/).
 * Each function names its Python twin; both give the same bits for every input.
 *
 * Header-only (every function static inline, so the ones a model does not call draw no
 * warning): the C backend copies it next to a model as <name>_train_rt.h and includes it
 * from <name>_train.c only. C99, no malloc, no float.
 * Activations / weights are int32_t; gradient buffers are qt_grad, int32_t when the emitter
 * proved every gradient value of the model (transients included) below 2^31 in magnitude
 * (it then defines QT_GRAD_BITS 32 before the include), else int64_t; all arithmetic on them
 * is int64_t. `x << k` of a negative x is written x * 2^k (qt_pow2); `>>` is the arithmetic
 * shift.
 */
#ifndef QCC_TRAIN_RT_H
#define QCC_TRAIN_RT_H

#include <stdint.h>

#if (-1 >> 1) != -1
#error "qcc train runtime: needs an arithmetic right shift of negative integers"
#endif

#ifndef QT_GRAD_BITS
#define QT_GRAD_BITS 64
#endif
#if QT_GRAD_BITS == 32
typedef int32_t qt_grad;
#else
typedef int64_t qt_grad;
#endif

/* The counter-based PRNG of qcc.numerics.rounding: the stream position (seed, counter). */
typedef struct {
    uint32_t seed;
    uint32_t counter;
} qt_rng;

/* A gradient read through stochastic ternarization (binary.stochastic_ternarize, seeds/000
 * Algorithm 1): element i reads as sign(dy[i]) or 0 by the next draw of *rng against
 * scale = max |dy|. The kernels below read dy once per element in row-major order, which is
 * the order the specification draws in; NULL reads dy itself. */
typedef struct {
    qt_rng *rng;
    int64_t scale;
} qt_tern;

/* 2-D convolution geometry (a Gemm with transB is the 1 x 1 case on 1 x 1 inputs). */
typedef struct {
    int32_t c, h, w;        /* input channels and spatial size (per sample) */
    int32_t m, oh, ow;      /* output channels and spatial size */
    int32_t kh, kw, sh, sw, dh, dw, ph, pw;  /* kernel, strides, dilations, leading pads */
} qt_conv;

static inline int64_t qt_pow2(int32_t k) { return (int64_t)1 << k; }

/* rounding.mix32: lowbias32 */
static inline uint32_t qt_mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

/* rounding.draw_u32 of one element: rand_u32(seed, counter), then counter + 1 */
static inline uint32_t qt_draw(qt_rng *rng)
{
    const uint32_t key = qt_mix32(rng->seed ^ 0x9E3779B9u);
    const uint32_t d = qt_mix32(rng->counter ^ key);
    rng->counter += 1u;
    return d;
}

/* binary.stochastic_ternarize of one integer element (the next draw d):
 * sign(g) if d * s < |g| * 2^32 (uint64, |g| <= s < 2^31), else 0 */
static inline int64_t qt_ternary(int64_t g, int64_t s, qt_rng *rng)
{
    const uint64_t d = qt_draw(rng);
    const uint64_t mag = (uint64_t)(g < 0 ? -g : g);
    if (d * (uint64_t)s < (mag << 32)) {
        return g < 0 ? -1 : 1;
    }
    return 0;
}

/* element i of dy as the kernels read it (qt_tern) */
static inline int64_t qt_read(const qt_grad *dy, int64_t i, const qt_tern *t)
{
    return t == 0 ? dy[i] : qt_ternary(dy[i], t->scale, t->rng);
}

/* max |c| of n codes (the ternarization scale s) */
static inline int64_t qt_absmax(const qt_grad *c, int32_t n)
{
    int64_t m = 0;
    int32_t i;
    for (i = 0; i < n; ++i) {
        const int64_t a = c[i] < 0 ? -(int64_t)c[i] : c[i];
        m = a > m ? a : m;
    }
    return m;
}

/* rounding.round_shift: to nearest, ties away from zero, 0 <= s <= 62 */
static inline int64_t qt_round_shift(int64_t x, int32_t s)
{
    const int64_t mask = qt_pow2(s) - 1;
    return (x >> s) + ((x & mask) > (mask >> 1) + (x < 0 ? 1 : 0) ? 1 : 0);
}

/* rounding.stochastic_round_shift: floor((x + u) / 2^s), u = draw >> (32 - s); one draw
 * also when s == 0 (u = 0) so the stream position never depends on the data */
static inline int64_t qt_stochastic_shift(int64_t x, int32_t s, qt_rng *rng)
{
    const uint32_t d = qt_draw(rng);
    const uint64_t u = s == 0 ? 0u : (uint64_t)(d >> (32 - s));
    const uint64_t low = (uint64_t)(x & (qt_pow2(s) - 1)) + u;
    return (x >> s) + (int64_t)(low >> s);
}

/* gradients.stochastic_divide: floor(x / d) + [draw * d < (x mod d) * 2^32] */
static inline int64_t qt_stochastic_divide(int64_t x, int64_t d, qt_rng *rng)
{
    int64_t q = x / d;
    uint64_t r;
    if (x % d != 0 && x < 0) {
        q -= 1; /* C truncates; the spec floors */
    }
    r = (uint64_t)(x - q * d);
    return q + ((uint64_t)qt_draw(rng) * (uint64_t)d < (r << 32) ? 1 : 0);
}

/* gradients.round_gradient of n codes in place: codes of step 2^exp carrying divisor d0
 * (times the batch when per_batch) become codes of step 2^target */
static inline void qt_round_gradient(qt_grad *c, int32_t n, int32_t exp, int64_t d0, int per_batch,
                                     int32_t target, int32_t batch, qt_rng *rng)
{
    int32_t shift = target - exp, i, s = 0;
    int64_t divisor;
    if (shift < 0) {
        for (i = 0; i < n; ++i) {
            c[i] = (qt_grad)(c[i] * qt_pow2(-shift));
        }
        shift = 0;
    }
    divisor = d0 * (per_batch ? batch : 1) * qt_pow2(shift);
    if (divisor == 1) {
        return; /* exact: nothing drawn */
    }
    if ((divisor & (divisor - 1)) == 0) {
        while (((int64_t)1 << s) != divisor) {
            ++s;
        }
        for (i = 0; i < n; ++i) {
            c[i] = (qt_grad)qt_stochastic_shift(c[i], s, rng);
        }
        return;
    }
    for (i = 0; i < n; ++i) {
        c[i] = (qt_grad)qt_stochastic_divide(c[i], divisor, rng);
    }
}

/* gradients.saturate: clip to the signed `bits`-wide range, counting the clipped */
static inline void qt_saturate(qt_grad *c, int32_t n, int32_t bits, uint32_t *clipped)
{
    const int64_t hi = qt_pow2(bits - 1) - 1, lo = -hi - 1;
    int32_t i;
    for (i = 0; i < n; ++i) {
        if (c[i] < lo || c[i] > hi) {
            *clipped += 1u;
            c[i] = (qt_grad)(c[i] < lo ? lo : hi);
        }
    }
}

/* kernels.qconv / qgemm with x_zero_point 0: acc = sum x w + b, requantize per channel
 * (round_shift(acc * mult, shift) + zp, clamped to [floor, hi]) */
static inline void qt_conv_forward(const qt_conv *g, int32_t n, const int32_t *x, const int32_t *w,
                                   const int32_t *b, const int32_t *mult, const int32_t *shift,
                                   int32_t zp, int32_t floor_, int32_t hi, int32_t *y)
{
    int32_t s, m, oy, ox, c, ky, kx;
    for (s = 0; s < n; ++s) {
        const int32_t *xs = x + (int64_t)s * g->c * g->h * g->w;
        int32_t *ys = y + (int64_t)s * g->m * g->oh * g->ow;
        for (m = 0; m < g->m; ++m) {
            for (oy = 0; oy < g->oh; ++oy) {
                for (ox = 0; ox < g->ow; ++ox) {
                    int64_t acc = b != 0 ? b[m] : 0, v;
                    for (c = 0; c < g->c; ++c) {
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
                                acc += (int64_t)xs[(c * g->h + iy) * g->w + ix] *
                                       w[((m * g->c + c) * g->kh + ky) * g->kw + kx];
                            }
                        }
                    }
                    v = qt_round_shift(acc * mult[m], shift[m]) + zp;
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
static inline void qt_conv_weight_grad(const qt_conv *g, int32_t n, const int32_t *x,
                                       const qt_grad *dy, const qt_tern *tern, int accumulate,
                                       qt_grad *gw)
{
    const int32_t k = g->c * g->kh * g->kw, plane = g->oh * g->ow;
    int32_t s, m, oy, ox, c, ky, kx, i;
    if (!accumulate) {
        for (i = 0; i < g->m * k; ++i) {
            gw[i] = 0;
        }
    }
    for (s = 0; s < n; ++s) {
        const int32_t *xs = x + (int64_t)s * g->c * g->h * g->w;
        for (m = 0; m < g->m; ++m) {
            for (oy = 0; oy < g->oh; ++oy) {
                for (ox = 0; ox < g->ow; ++ox) {
                    const int64_t d = qt_read(dy, ((int64_t)s * g->m + m) * plane +
                                              oy * g->ow + ox, tern);
                    if (d == 0) {
                        continue;
                    }
                    for (c = 0; c < g->c; ++c) {
                        for (ky = 0; ky < g->kh; ++ky) {
                            const int32_t iy = oy * g->sh + ky * g->dh - g->ph;
                            if (iy < 0 || iy >= g->h) {
                                continue;
                            }
                            for (kx = 0; kx < g->kw; ++kx) {
                                const int32_t ix = ox * g->sw + kx * g->dw - g->pw;
                                qt_grad *at;
                                if (ix < 0 || ix >= g->w) {
                                    continue;
                                }
                                at = &gw[((m * g->c + c) * g->kh + ky) * g->kw + kx];
                                *at = (qt_grad)(*at + d * xs[(c * g->h + iy) * g->w + ix]);
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
static inline void qt_conv_input_grad(const qt_conv *g, int32_t n, const int32_t *w,
                                      const qt_grad *dy, const qt_tern *tern, int64_t scale,
                                      const int32_t *mult, qt_grad *dx)
{
    const int32_t plane = g->oh * g->ow;
    int32_t s, m, oy, ox, c, ky, kx, i;
    for (i = 0; i < n * g->c * g->h * g->w; ++i) {
        dx[i] = 0;
    }
    for (s = 0; s < n; ++s) {
        qt_grad *xs = dx + (int64_t)s * g->c * g->h * g->w;
        for (m = 0; m < g->m; ++m) {
            const int64_t factor = scale * (mult != 0 ? mult[m] : 1);
            for (oy = 0; oy < g->oh; ++oy) {
                for (ox = 0; ox < g->ow; ++ox) {
                    const int64_t d = factor * qt_read(dy, ((int64_t)s * g->m + m) * plane +
                                                       oy * g->ow + ox, tern);
                    if (d == 0) {
                        continue;
                    }
                    for (c = 0; c < g->c; ++c) {
                        for (ky = 0; ky < g->kh; ++ky) {
                            const int32_t iy = oy * g->sh + ky * g->dh - g->ph;
                            if (iy < 0 || iy >= g->h) {
                                continue;
                            }
                            for (kx = 0; kx < g->kw; ++kx) {
                                const int32_t ix = ox * g->sw + kx * g->dw - g->pw;
                                qt_grad *at;
                                if (ix < 0 || ix >= g->w) {
                                    continue;
                                }
                                at = &xs[(c * g->h + iy) * g->w + ix];
                                *at = (qt_grad)(*at + d * w[((m * g->c + c) * g->kh + ky) *
                                                            g->kw + kx]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/* total * s of n codes in place (TBP: the summed ternary weight gradient times s) */
static inline void qt_scale(qt_grad *c, int32_t n, int64_t s)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        c[i] = (qt_grad)(c[i] * s);
    }
}

/* MaxPool without padding (n * channels planes): forward, and the backward that routes each
 * output's gradient to the first maximum of its window (qcc.ops.grads.maxpool_vjp) */
static inline void qt_maxpool(const qt_conv *g, int32_t planes, const int32_t *x, int32_t *y,
                              const qt_grad *dy, qt_grad *dx)
{
    int32_t p, oy, ox, ky, kx, i;
    if (dx != 0) {
        for (i = 0; i < planes * g->h * g->w; ++i) {
            dx[i] = 0;
        }
    }
    for (p = 0; p < planes; ++p) {
        const int32_t *xp = x + (int64_t)p * g->h * g->w;
        for (oy = 0; oy < g->oh; ++oy) {
            for (ox = 0; ox < g->ow; ++ox) {
                int32_t best = -1, at = 0;
                for (ky = 0; ky < g->kh; ++ky) {
                    for (kx = 0; kx < g->kw; ++kx) {
                        const int32_t iy = oy * g->sh + ky * g->dh, ix = ox * g->sw + kx * g->dw;
                        const int32_t idx = iy * g->w + ix;
                        if (best < 0 || xp[idx] > xp[best]) {
                            best = idx;
                        }
                    }
                }
                at = (p * g->oh + oy) * g->ow + ox;
                if (y != 0) {
                    y[at] = xp[best];
                }
                if (dx != 0) {
                    qt_grad *to = &dx[(int64_t)p * g->h * g->w + best];
                    *to = (qt_grad)(*to + dy[at]);
                }
            }
        }
    }
}

/* softmax_ce.ce_gradient_q24 of one sample's m logits codes (step 2^z_exp): g in Q.24 */
static inline void qt_ce_gradient(const int32_t *z, int32_t m, int32_t z_exp, int32_t label,
                                  const int64_t *lut, qt_grad *g)
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
        t = shift >= 0 ? qt_round_shift(t, shift) : t * qt_pow2(-shift);
        if (t > ((int64_t)32 << 16)) {
            t = (int64_t)32 << 16;
        }
        nn = (int32_t)(t >> 16);
        k = (int32_t)(((t & 0xFFFF) + 128) >> 8);
        g[j] = (qt_grad)(nn <= 30 ? qt_round_shift(lut[k], nn) : 0); /* e_j for now */
        s += g[j];
    }
    for (j = 0; j < m; ++j) {
        g[j] = (qt_grad)((2 * (g[j] * qt_pow2(24)) + s) / (2 * s) -
                         (j == label ? qt_pow2(24) : 0));
    }
}

/* updates.update_fixed of n weights by rule 'f' (fx: acc = A), 'b' (bc: acc = H), 's' (sr)
 * or 'r' (r); u = G_W << ushift in accumulator units, b = acc_bits */
static inline void qt_update_fixed(char rule, int32_t n, int32_t *w, int32_t *acc,
                                   const qt_grad *gw, int32_t ushift, int32_t b, int32_t lo,
                                   int32_t hi, qt_rng *rng, uint32_t *clipped)
{
    const int64_t half = qt_pow2(b - 1);
    const int64_t h_lo = lo * qt_pow2(b) - half, h_hi = hi * qt_pow2(b) + half - 1;
    int32_t i;
    for (i = 0; i < n; ++i) {
        const int64_t u = gw[i] * qt_pow2(ushift);
        if (rule == 'f' || rule == 'b') {
            int64_t h = (rule == 'f' ? w[i] * qt_pow2(b) + acc[i] : acc[i]) - u, p;
            if (h < h_lo || h > h_hi) {
                *clipped += 1u;
                h = h < h_lo ? h_lo : h_hi;
            }
            p = (h + half) >> b;
            w[i] = (int32_t)p;
            acc[i] = (int32_t)(rule == 'f' ? h - p * qt_pow2(b) : h);
        } else {
            const int64_t target = w[i] * qt_pow2(b) - u;
            int64_t p = rule == 's' ? qt_stochastic_shift(target, b, rng)
                                    : qt_round_shift(target, b);
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
static inline void qt_update_binary(char rule, int32_t n, int32_t per_channel, int32_t *w,
                                    int32_t *acc, const qt_grad *gw, int32_t ushift,
                                    const int32_t *alpha_acc, qt_rng *rng, uint32_t *clipped)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        const int64_t a = alpha_acc[i / per_channel], u = gw[i] * qt_pow2(ushift);
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
            w[i] = (uint64_t)qt_draw(rng) * (uint64_t)(2 * a) < ((uint64_t)(v + a) << 32) ? 1
                                                                                       : -1;
        }
    }
}

/* updates.update_bias: M <- sat32(M - sum G_A << ushift); code = sat32(round_shift(M * mult,
 * shift)) per output channel */
static inline void qt_update_bias(int32_t m, int32_t *master, int32_t *bias, const int64_t *gb,
                                  int32_t ushift, const int32_t *mult, const int32_t *shift,
                                  uint32_t *clipped)
{
    int32_t c;
    for (c = 0; c < m; ++c) {
        int64_t v = master[c] - gb[c] * qt_pow2(ushift);
        if (v < INT32_MIN || v > INT32_MAX) {
            *clipped += 1u;
            v = v < INT32_MIN ? INT32_MIN : INT32_MAX;
        }
        master[c] = (int32_t)v;
        v = qt_round_shift(v * mult[c], shift[c]);
        bias[c] = (int32_t)(v < INT32_MIN ? INT32_MIN : v > INT32_MAX ? INT32_MAX : v);
    }
}

#endif /* QCC_TRAIN_RT_H */
