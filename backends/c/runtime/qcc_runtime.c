/*
 * qcc runtime: the functions of qcc_runtime.h that are not inline. Each is a transcription of
 * its NumPy twin (named in the header); comments give the reason for any step that differs.
 */
#include "qcc_runtime.h"

int32_t qcc_xnor_dot(const uint32_t *a, const uint32_t *w, const uint32_t *valid,
                     int32_t words)
{
    int32_t agree = 0, n = 0, i;
    for (i = 0; i < words; ++i) {
        agree += (int32_t)qcc_popcount32(~(a[i] ^ w[i]) & valid[i]);
        n += (int32_t)qcc_popcount32(valid[i]);
    }
    return 2 * agree - n;
}

void qcc_unpack_bits(const uint8_t *data, int32_t bits, int32_t is_signed, int32_t start,
                     int32_t count, int8_t *out)
{
    const uint32_t mask = (1u << bits) - 1u, sign = is_signed ? 1u << (bits - 1) : 0u;
    const int32_t per_byte = 8 / bits;
    int32_t i = 0;
    /* two's complement sign extension, as packing.unpack_bits: (raw ^ sign) - sign */
    if ((start * bits) % 8 == 0 && bits == 4) { /* whole bytes of 4-bit codes, unrolled */
        const uint8_t *byte = data + start / 2;
        for (; i + 2 <= count; i += 2, ++byte) {
            out[i] = (int8_t)((int32_t)((*byte & 15u) ^ sign) - (int32_t)sign);
            out[i + 1] = (int8_t)((int32_t)(((uint32_t)*byte >> 4) ^ sign) - (int32_t)sign);
        }
    } else if ((start * bits) % 8 == 0) { /* whole bytes first: a weight row, usually */
        const uint8_t *byte = data + start * bits / 8;
        for (; i + per_byte <= count; i += per_byte, ++byte) {
            uint32_t v = *byte, j;
            for (j = 0; j < (uint32_t)per_byte; ++j, v >>= bits) {
                out[i + (int32_t)j] = (int8_t)((int32_t)((v & mask) ^ sign) - (int32_t)sign);
            }
        }
    }
    for (; i < count; ++i) {
        const uint32_t bit = (uint32_t)(start + i) * (uint32_t)bits;
        const uint32_t raw = ((uint32_t)data[bit >> 3] >> (bit & 7u)) & mask;
        out[i] = (int8_t)((int32_t)(raw ^ sign) - (int32_t)sign);
    }
}

void qcc_unpack_signs(const uint8_t *data, int32_t start, int32_t count, int8_t *out)
{
    int32_t i;
    for (i = 0; i < count; ++i) {
        const uint32_t bit = (uint32_t)(start + i);
        out[i] = (int8_t)(((data[bit >> 3] >> (bit & 7u)) & 1u) ? 1 : -1);
    }
}

double qcc_round_half_away(double v)
{
    /* |v| >= 2^52 is already an integer (or inf / NaN): returned unchanged, as np.trunc */
    double whole, frac;
    if (!(v > -4503599627370496.0 && v < 4503599627370496.0)) {
        return v;
    }
    whole = (double)(int64_t)v; /* truncation towards zero */
    frac = v - whole;            /* exact */
    if (frac >= 0.5) {
        whole += 1.0;
    } else if (frac <= -0.5) {
        whole -= 1.0;
    }
    return whole;
}

int32_t qcc_quantize(float x, double scale, int32_t zero_point, int32_t lo, int32_t hi)
{
    const double v = qcc_round_half_away((double)x / scale) + (double)zero_point;
    if (v != v) {
        return zero_point;
    }
    return v < (double)lo ? lo : v > (double)hi ? hi : (int32_t)v;
}

float qcc_dequantize(int32_t code, int32_t zero_point, double scale)
{
    return (float)((double)((int64_t)code - zero_point) * scale);
}

int32_t qcc_quantize_linear(float x, float scale, int32_t zero_point, int32_t lo, int32_t hi)
{
    const float v = x / scale;
    if (v != v) {
        return zero_point;
    }
    return v <= (float)(lo - zero_point) ? lo : v >= (float)(hi - zero_point) ? hi
        : qcc_rint_small(v) + zero_point;
}

float qcc_dequantize_linear(int32_t code, int32_t zero_point, float scale)
{
    return (float)(code - zero_point) * scale;
}
