/* MLX affine group quantization on the CPU: the quantizer (MLX's scale/bias rule), bit-stream
 * packing and unpacking, and row dequantization. Portable C; products live in ops/matmul.c. */
#include "quant/affine.h"
#include <math.h>
#include <string.h>

int av_quant_supported(int bits, int group) {
    int b = bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8;
    return b && (group == 32 || group == 64 || group == 128);
}

/* Packed words live in mmapped safetensors, at any byte offset: read by memcpy (scales/biases: av_quant_load_sb). */

static inline uint32_t load_w(const uint32_t *row, size_t i) {
    uint32_t v;
    memcpy(&v, (const char *)row + 4 * i, 4);
    return v;
}

static void store_s(void *p, av_dtype t, size_t i, float v) {
    if (t == AV_BF16) ((uint16_t *)p)[i] = av_f32_to_bf16(v);
    else if (t == AV_F16) ((uint16_t *)p)[i] = av_f32_to_f16(v);
    else ((float *)p)[i] = v;
}

void av_quant_group(uint8_t *q, float *scale, float *bias, const float *w, int group, int bits) {
    const float n_bins = (float)((1 << bits) - 1);
    float lo = INFINITY, hi = -INFINITY; /* the group's own extremes (MLX's CPU quantizer) */
    for (int i = 0; i < group; i++) {
        lo = fminf(lo, w[i]);
        hi = fmaxf(hi, w[i]);
    }
    float s = fmaxf((hi - lo) / n_bins, 1e-7f);
    int side = fabsf(lo) > fabsf(hi);
    s = side ? s : -s;
    float edge = side ? lo : hi;
    float q0 = rintf(edge / s);
    float b = 0.0f;
    if (q0 != 0.0f) {
        s = edge / q0;
        b = edge;
    }
    for (int i = 0; i < group; i++) {
        float v = rintf((w[i] - b) / s);
        v = v < 0.0f ? 0.0f : v > n_bins ? n_bins : v;
        q[i] = (uint8_t)v;
    }
    *scale = s;
    *bias = b;
}

void av_quant_unpack(uint8_t *q, const uint32_t *row, int c0, int n, int bits) {
    const uint32_t mask = (1u << bits) - 1;
    for (int j = 0; j < n; j++) {
        size_t bit = (size_t)(c0 + j) * (size_t)bits;
        size_t w = bit >> 5;
        int sh = (int)(bit & 31);
        uint32_t v = load_w(row, w) >> sh;
        if (sh + bits > 32) v |= load_w(row, w + 1) << (32 - sh);
        q[j] = (uint8_t)(v & mask);
    }
}

void av_quant_pack(uint32_t *row, const uint8_t *q, int c0, int n, int bits) {
    for (int j = 0; j < n; j++) {
        size_t bit = (size_t)(c0 + j) * (size_t)bits;
        size_t w = bit >> 5;
        int sh = (int)(bit & 31);
        uint32_t v = q[j];
        row[w] |= v << sh;
        if (sh + bits > 32) row[w + 1] |= v >> (32 - sh);
    }
}

void av_quant_matrix(uint32_t *packed, void *scales, void *biases, av_dtype sdt, const float *w, int rows, int cols,
                     int bits, int group) {
    int words = av_quant_row_words(cols, bits), ng = cols / group;
    uint8_t q[128];
    for (int r = 0; r < rows; r++) {
        uint32_t *row = packed + (size_t)r * words;
        for (int k = 0; k < words; k++) row[k] = 0;
        for (int g = 0; g < ng; g++) {
            float s, b;
            av_quant_group(q, &s, &b, w + (size_t)r * cols + (size_t)g * group, group, bits);
            av_quant_pack(row, q, g * group, group, bits);
            store_s(scales, sdt, (size_t)r * ng + g, s);
            store_s(biases, sdt, (size_t)r * ng + g, b);
        }
    }
}

void av_quant_dequant_row(float *dst, const uint32_t *packed, const void *scales, const void *biases, av_dtype sdt,
                          int r, int cols, int bits, int group) {
    const uint32_t *row = packed + (size_t)r * av_quant_row_words(cols, bits);
    int ng = cols / group;
    uint8_t q[128];
    if (32 % bits == 0) { /* 2, 4, 8 bits: whole values per word */
        const int per = 32 / bits, wpg = group / per;
        const uint32_t mask = (1u << bits) - 1;
        for (int g = 0; g < ng; g++) {
            float s = av_quant_load_sb(scales, sdt, (size_t)r * ng + g), b = av_quant_load_sb(biases, sdt, (size_t)r * ng + g);
            for (int k = 0; k < wpg; k++) {
                uint32_t v = load_w(row, (size_t)g * wpg + k);
                float *d = dst + (size_t)g * group + (size_t)k * per;
                for (int j = 0; j < per; j++) d[j] = s * (float)((v >> (bits * j)) & mask) + b;
            }
        }
        return;
    }
    for (int g = 0; g < ng; g++) {
        float s = av_quant_load_sb(scales, sdt, (size_t)r * ng + g), b = av_quant_load_sb(biases, sdt, (size_t)r * ng + g);
        av_quant_unpack(q, row, g * group, group, bits);
        for (int i = 0; i < group; i++) dst[g * group + i] = s * (float)q[i] + b;
    }
}

float av_quant_dot_row(const float *x, const uint32_t *packed, const void *scales, const void *biases, av_dtype sdt,
                       int r, int cols, int bits, int group) {
    const uint32_t *row = packed + (size_t)r * av_quant_row_words(cols, bits);
    int ng = cols / group;
    uint8_t q[128];
    float acc = 0.0f;
    if (32 % bits == 0) { /* 2, 4, 8 bits: whole values per word, no buffer */
        const int per = 32 / bits, wpg = group / per;
        const uint32_t mask = (1u << bits) - 1;
        for (int g = 0; g < ng; g++) {
            const float *xg = x + (size_t)g * group;
            float s = av_quant_load_sb(scales, sdt, (size_t)r * ng + g), b = av_quant_load_sb(biases, sdt, (size_t)r * ng + g), xq = 0.0f, xs = 0.0f;
            for (int k = 0; k < wpg; k++) {
                uint32_t v = load_w(row, (size_t)g * wpg + k);
                const float *xk = xg + k * per;
                for (int j = 0; j < per; j++) {
                    xq += xk[j] * (float)((v >> (bits * j)) & mask);
                    xs += xk[j];
                }
            }
            acc += s * xq + b * xs;
        }
        return acc;
    }
    for (int g = 0; g < ng; g++) {
        const float *xg = x + (size_t)g * group;
        float s = av_quant_load_sb(scales, sdt, (size_t)r * ng + g), b = av_quant_load_sb(biases, sdt, (size_t)r * ng + g), xq = 0.0f, xs = 0.0f;
        av_quant_unpack(q, row, g * group, group, bits);
        for (int i = 0; i < group; i++) {
            xq += xg[i] * (float)q[i];
            xs += xg[i];
        }
        acc += s * xq + b * xs;
    }
    return acc;
}
