/* GGUF block formats (as the GGUF specification lays them out): Q4_0 {f16 d; u8 qs[16]} with
 * element j in the low nibble of qs[j] and element j+16 in its high nibble, value d*(q-8); Q4_1
 * {d, m; qs[16]} d*q+m; Q5_0 {d; u32 qh; qs[16]} with bit 4 of element j in bit j of qh, d*(q-16);
 * Q5_1 {d, m; qh; qs} d*q+m; Q8_0 {d; i8 qs[32]} d*q; K-quants (256-element super-blocks): Q4_K
 * and Q5_K (sub-blocks of 32) repacked exactly too, Q2_K, Q3_K, Q6_K (sub-blocks of 16) repacked
 * exactly as groups of 16 (the CPU kernels) or dequantized to f32 (a GPU). */
#include "quant/gguf_blocks.h"
#include "quant/affine.h"
#include "formats/gguf.h"
#include <math.h>
#include <string.h>

int av_gguf_native_dtype(int t) {
    return t == AV_GGML_F32 ? AV_F32 : t == AV_GGML_F16 ? AV_F16 : t == AV_GGML_BF16 ? AV_BF16 : -1;
}

int av_gguf_repack_bits(int t) {
    switch (t) {
    case AV_GGML_Q8_0: return 8;
    case AV_GGML_Q4_0: case AV_GGML_Q4_1: case AV_GGML_Q4_K: return 4;
    case AV_GGML_Q5_0: case AV_GGML_Q5_1: case AV_GGML_Q5_K: return 5;
    case AV_GGML_Q6_K: return 6;
    case AV_GGML_Q3_K: return 3;
    case AV_GGML_Q2_K: return 2;
    default: return 0;
    }
}

int av_gguf_repack_group(int t) { return t == AV_GGML_Q6_K || t == AV_GGML_Q3_K || t == AV_GGML_Q2_K ? 16 : 32; }

int av_gguf_can_dequant(int t) {
    return av_gguf_repack_bits(t) || t == AV_GGML_Q2_K || t == AV_GGML_Q3_K || t == AV_GGML_Q6_K;
}

static float f16_at(const uint8_t *p) { uint16_t h; memcpy(&h, p, 2); return av_f16_to_f32(h); }

/* One block's codes (0 .. 2^bits-1), scale and bias: value = scale * code + bias. */
static void block_codes(const uint8_t *b, int t, uint8_t q[32], float *scale, float *bias) {
    uint32_t qh = 0;
    switch (t) {
    case AV_GGML_Q8_0:
        *scale = f16_at(b);
        for (int j = 0; j < 32; j++) q[j] = (uint8_t)((int8_t)b[2 + j] + 128);
        *bias = -128.0f * *scale;
        return;
    case AV_GGML_Q4_0:
        *scale = f16_at(b);
        for (int j = 0; j < 16; j++) { q[j] = b[2 + j] & 15; q[j + 16] = b[2 + j] >> 4; }
        *bias = -8.0f * *scale;
        return;
    case AV_GGML_Q4_1:
        *scale = f16_at(b);
        *bias = f16_at(b + 2);
        for (int j = 0; j < 16; j++) { q[j] = b[4 + j] & 15; q[j + 16] = b[4 + j] >> 4; }
        return;
    case AV_GGML_Q5_0:
        *scale = f16_at(b);
        memcpy(&qh, b + 2, 4);
        for (int j = 0; j < 16; j++) {
            q[j] = (uint8_t)((b[6 + j] & 15) | (((qh >> j) & 1) << 4));
            q[j + 16] = (uint8_t)((b[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
        }
        *bias = -16.0f * *scale;
        return;
    case AV_GGML_Q5_1:
        *scale = f16_at(b);
        *bias = f16_at(b + 2);
        memcpy(&qh, b + 4, 4);
        for (int j = 0; j < 16; j++) {
            q[j] = (uint8_t)((b[8 + j] & 15) | (((qh >> j) & 1) << 4));
            q[j + 16] = (uint8_t)((b[8 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
        }
        return;
    default:
        memset(q, 0, 32);
        *scale = *bias = 0;
    }
}

/* 6-bit scale and min j of the 12 packed bytes of Q4_K/Q5_K */
static void k_scale_min(int j, const uint8_t *s, uint8_t *sc, uint8_t *mn) {
    if (j < 4) { *sc = s[j] & 63; *mn = s[j + 4] & 63; }
    else {
        *sc = (uint8_t)((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
        *mn = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

/* Q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}: element 128h + 32j + l (h < 2, j < 4, l < 32) is
 * nibble j / 2 of ql[64h + 32(j % 2) + l] plus bits 2j..2j+1 of qh[32h + l] as bits 4-5, in sub-block
 * 8h + 2j + l / 16 = element / 16; value d*sc*(q - 32). As 16 groups of 16: codes q (0..63), scale
 * d*sc and bias -32*d*sc, exact in f32 (an f16 times an 8-bit integer) and scale*q + bias exact too
 * (at most 24 significant bits), the very value ggml's dequantizer gives. */
static int q6_k_groups(const uint8_t *b, uint8_t *q, float *scale, float *bias) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = f16_at(b + 208);
    for (int h = 0; h < 2; h++, ql += 64, qh += 32)
        for (int l = 0; l < 32; l++) {
            q[128 * h + l] = (uint8_t)((ql[l] & 15) | ((qh[l] & 3) << 4));
            q[128 * h + l + 32] = (uint8_t)((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4));
            q[128 * h + l + 64] = (uint8_t)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
            q[128 * h + l + 96] = (uint8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
        }
    for (int g = 0; g < 16; g++) {
        scale[g] = d * sc[g];
        bias[g] = -32.0f * scale[g];
    }
    return 16;
}

/* Q2_K and Q3_K (layouts at deq_q2_q3_k below) as 16 groups of 16. Q3_K: the 2-bit field plus 4 when the
 * hmask bit is set is a 3-bit code c, value d*sc*(c - 4): scale d*sc (sc the signed 6-bit scale), bias
 * -4*scale. Q2_K: code the 2-bit field, scale d*(sc&15), bias -(dmin*(sc>>4)). Scales and biases are an
 * f16 times a small integer (exact in f32), and scale*c + bias is ggml's value bit for bit. */
static float q3_k_scale(const uint8_t *sc, int is) {
    int lo = is < 8 ? sc[is] & 15 : sc[is - 8] >> 4, hi = (sc[8 + is % 4] >> (2 * (is / 4))) & 3;
    return (float)((lo | (hi << 4)) - 32);
}

static int q23_k_groups(const uint8_t *b, int t, uint8_t *q, float *scale, float *bias) {
    int q3 = t == AV_GGML_Q3_K;
    const uint8_t *qs = q3 ? b + 32 : b + 16, *hm = b, *sc = q3 ? b + 96 : b;
    float d = f16_at(q3 ? b + 108 : b + 80), dmin = q3 ? 0.0f : f16_at(b + 82);
    for (int n = 0; n < 2; n++)
        for (int j = 0; j < 4; j++)
            for (int h = 0; h < 2; h++) {
                int is = 8 * n + 2 * j + h;
                if (q3) {
                    scale[is] = d * q3_k_scale(sc, is);
                    bias[is] = -4.0f * scale[is];
                } else {
                    scale[is] = d * (float)(sc[is] & 15);
                    bias[is] = -(dmin * (float)(sc[is] >> 4));
                }
                for (int l = 0; l < 16; l++) {
                    int v = (qs[32 * n + 16 * h + l] >> (2 * j)) & 3;
                    if (q3) v |= ((hm[16 * h + l] >> (4 * n + j)) & 1) << 2;
                    q[16 * is + l] = (uint8_t)v;
                }
            }
    return 16;
}

/* One block of a repackable type as groups of 32 (16 for Q2_K, Q3_K, Q6_K): codes q[G*g + l], value scale[g] * q + bias[g].
 * Q4_K {f16 d, dmin; u8 scales[12]; u8 qs[128]} and Q5_K {d, dmin; scales[12]; u8 qh[32];
 * u8 qs[128]}: sub-block g (of 8) is the low (g even) or high (g odd) nibble of qs[32*(g/2) + l],
 * plus 16 when bit g of qh[l] is set (Q5_K); value d*sc*q - dmin*m, so scale = d*sc and
 * bias = -(dmin*m), both exact in f32 (an f16 times a 6-bit integer has at most 17 significant bits)
 * and computed as ggml computes them, so scale*q + bias is the very f32 value ggml's dequantizer
 * gives. Returns the number of groups (1, 8 or 16). */
static int block_groups(const uint8_t *b, int t, uint8_t *q, float *scale, float *bias) {
    if (t == AV_GGML_Q6_K) return q6_k_groups(b, q, scale, bias);
    if (t == AV_GGML_Q2_K || t == AV_GGML_Q3_K) return q23_k_groups(b, t, q, scale, bias);
    if (t != AV_GGML_Q4_K && t != AV_GGML_Q5_K) {
        block_codes(b, t, q, scale, bias);
        return 1;
    }
    float d = f16_at(b), dmin = f16_at(b + 2);
    const uint8_t *sc = b + 4, *qh = b + 16, *qs = t == AV_GGML_Q4_K ? b + 16 : b + 48;
    for (int g = 0; g < 8; g++) {
        uint8_t s, m;
        k_scale_min(g, sc, &s, &m);
        scale[g] = d * s;
        bias[g] = -(dmin * m);
        const uint8_t *p = qs + 32 * (g / 2);
        for (int l = 0; l < 32; l++) {
            uint8_t v = (uint8_t)(g & 1 ? p[l] >> 4 : p[l] & 15);
            if (t == AV_GGML_Q5_K) v = (uint8_t)(v | (((qh[l] >> g) & 1) << 4));
            q[32 * g + l] = v;
        }
    }
    return 8;
}

static int exact_f16(float x) { return av_f16_to_f32(av_f32_to_f16(x)) == x; }

av_dtype av_gguf_repack_scale_dtype(int t, const void *src, int64_t nblocks) {
    const uint8_t *b = src;
    int bs = av_ggml_type_size(t);
    uint8_t q[256];
    float s[16], c[16];
    for (int64_t i = 0; i < nblocks; i++, b += bs) {
        int ng = block_groups(b, t, q, s, c);
        for (int g = 0; g < ng; g++) /* -8d/-16d/-128d overflowed f16, d*sc needs more than 11 bits (or NaN) */
            if (!exact_f16(s[g]) || !exact_f16(c[g])) return AV_F32;
    }
    return AV_F16;
}

void av_gguf_repack(uint32_t *packed, void *scales, void *biases, av_dtype sdt, const void *src, int t, int rows, int cols,
                    const int *row_map) {
    int bits = av_gguf_repack_bits(t), blk = av_ggml_block_size(t), nb = cols / blk, bs = av_ggml_type_size(t);
    int words = av_quant_row_words(cols, bits), ngr = cols / av_gguf_repack_group(t);
    uint8_t q[256];
    float s[16], c[16];
    for (int r = 0; r < rows; r++) {
        const uint8_t *row = (const uint8_t *)src + (size_t)(row_map ? row_map[r] : r) * (size_t)nb * (size_t)bs;
        for (int i = 0; i < nb; i++) {
            int ng = block_groups(row + (size_t)i * (size_t)bs, t, q, s, c);
            av_quant_pack(packed + (size_t)r * (size_t)words, q, i * blk, blk, bits);
            size_t k = (size_t)r * (size_t)ngr + (size_t)i * (size_t)ng;
            av_convert_from_f32((char *)scales + k * av_dtype_size(sdt), sdt, s, ng);
            av_convert_from_f32((char *)biases + k * av_dtype_size(sdt), sdt, c, ng);
        }
    }
}

void av_gguf_kscales(uint8_t *sc, uint8_t *m, float *d, float *dmin, const void *src, int t, int rows, int cols, const int *row_map) {
    int nb = cols / 256, bs = av_ggml_type_size(t), per = t == AV_GGML_Q6_K ? 16 : 8;
    for (int r = 0; r < rows; r++) {
        const uint8_t *row = (const uint8_t *)src + (size_t)(row_map ? row_map[r] : r) * (size_t)nb * (size_t)bs;
        for (int i = 0; i < nb; i++) {
            const uint8_t *b = row + (size_t)i * (size_t)bs;
            size_t k = (size_t)r * (size_t)nb + (size_t)i, g = k * (size_t)per;
            if (t == AV_GGML_Q6_K) {
                memcpy(sc + g, b + 192, 16);
                d[k] = f16_at(b + 208);
                continue;
            }
            d[k] = f16_at(b);
            dmin[k] = f16_at(b + 2);
            for (int j = 0; j < 8; j++) k_scale_min(j, b + 4, sc + g + j, m + g + j);
        }
    }
}

/* ---- K-quants: super-blocks of 256 ------------------------------------------------------------- */
/* Q4_K {f16 d, dmin; u8 scales[12]; u8 qs[128]}: 8 sub-blocks of 32, value d*sc*q - dmin*m. */
static void deq_q4_k(float *y, const uint8_t *b) {
    float d = f16_at(b), dmin = f16_at(b + 2);
    const uint8_t *sc = b + 4, *qs = b + 16;
    for (int j = 0, is = 0; j < 256; j += 64, is += 2, qs += 32) {
        uint8_t s1, m1, s2, m2;
        k_scale_min(is, sc, &s1, &m1);
        k_scale_min(is + 1, sc, &s2, &m2);
        float d1 = d * s1, e1 = dmin * m1, d2 = d * s2, e2 = dmin * m2;
        for (int l = 0; l < 32; l++) y[j + l] = d1 * (qs[l] & 15) - e1;
        for (int l = 0; l < 32; l++) y[j + 32 + l] = d2 * (qs[l] >> 4) - e2;
    }
}

/* Q5_K {d, dmin; scales[12]; u8 qh[32]; u8 qs[128]} */
static void deq_q5_k(float *y, const uint8_t *b) {
    float d = f16_at(b), dmin = f16_at(b + 2);
    const uint8_t *sc = b + 4, *qh = b + 16, *ql = b + 48;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0, is = 0; j < 256; j += 64, is += 2, ql += 32, u1 = (uint8_t)(u1 << 2), u2 = (uint8_t)(u2 << 2)) {
        uint8_t s1, m1, s2, m2;
        k_scale_min(is, sc, &s1, &m1);
        k_scale_min(is + 1, sc, &s2, &m2);
        float d1 = d * s1, e1 = dmin * m1, d2 = d * s2, e2 = dmin * m2;
        for (int l = 0; l < 32; l++) y[j + l] = d1 * ((ql[l] & 15) + (qh[l] & u1 ? 16 : 0)) - e1;
        for (int l = 0; l < 32; l++) y[j + 32 + l] = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - e2;
    }
}

/* Q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}: value d*scale*(q-32) */
static void deq_q6_k(float *y, const uint8_t *b) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = f16_at(b + 208);
    for (int n = 0; n < 256; n += 128, ql += 64, qh += 32, sc += 8) {
        for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q1 = (int)((ql[l] & 15) | ((qh[l] & 3) << 4)) - 32;
            int q2 = (int)((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[n + l] = d * sc[is] * q1;
            y[n + l + 32] = d * sc[is + 2] * q2;
            y[n + l + 64] = d * sc[is + 4] * q3;
            y[n + l + 96] = d * sc[is + 6] * q4;
        }
    }
}

/* Q2_K {u8 scales[16]; u8 qs[64]; f16 d, dmin} and Q3_K {u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d}:
 * 16 sub-blocks of 16. Element 128n + 32j + 16h + l (n < 2, j < 4, h < 2, l < 16) is the 2-bit field
 * j of qs[32n + 16h + l], in sub-block 8n + 2j + h. Q2_K: value d*(sc&15)*q - dmin*(sc>>4). Q3_K:
 * 6-bit scale i = low nibble of scales[i] (i < 8) or high nibble of scales[i-8], with bits 4-5 from
 * bits 2(i/4).. of scales[8 + i%4], minus 32; value d*scale*(q - 4), the 4 not subtracted when bit
 * 4n + j of hmask[16h + l] is set. */
static void deq_q2_q3_k(float *y, const uint8_t *b, int t) {
    uint8_t q[256];
    float sc[16], bi[16];
    q23_k_groups(b, t, q, sc, bi); /* scale*c + bias is ggml's value exactly (see there) */
    for (int i = 0; i < 256; i++) y[i] = sc[i / 16] * q[i] + bi[i / 16];
}

void av_gguf_dequant_row(float *dst, const void *src_row, int t, int cols) {
    const uint8_t *b = src_row;
    int bs = av_ggml_type_size(t);
    if (av_ggml_block_size(t) == 256) {
        for (int i = 0; i < cols / 256; i++, b += bs, dst += 256) {
            if (t == AV_GGML_Q4_K) deq_q4_k(dst, b);
            else if (t == AV_GGML_Q5_K) deq_q5_k(dst, b);
            else if (t == AV_GGML_Q6_K) deq_q6_k(dst, b);
            else deq_q2_q3_k(dst, b, t);
        }
        return;
    }
    uint8_t q[32];
    for (int i = 0; i < cols / 32; i++, b += bs, dst += 32) {
        float s, c;
        block_codes(b, t, q, &s, &c);
        for (int j = 0; j < 32; j++) dst[j] = s * q[j] + c;
    }
}

/* ---- Q4_K writing: ggml's reference quantizer (quantize_row_q4_K_ref) --------------------------- */
/* Round to nearest, ties to even (ggml's nearest_int for the magnitudes met here). */
static int near_int(float v) { return (int)lrintf(v); }

/* Best affine fit q in [0, nmax] of x[n] under weights w (ggml's make_qkx2_quants with rmin -1,
 * rdelta 0.1, 20 steps, squared error): the plain min/max grid first, then the least-squares scale
 * and min for each of 21 trial grids, keeping the one of least weighted error. Returns the scale,
 * *neg_min the (non-negative) amount subtracted. */
static float fit_qkx2(const float *x, const float *w, int n, int nmax, uint8_t *L, float *neg_min) {
    float lo = x[0], hi = x[0], sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (lo > 0) lo = 0;
    if (hi == lo) {
        memset(L, 0, (size_t)n);
        *neg_min = -lo;
        return 0;
    }
    float iscale = nmax / (hi - lo), scale = 1 / iscale, best = 0;
    for (int i = 0; i < n; i++) {
        int l = near_int(iscale * (x[i] - lo));
        L[i] = (uint8_t)(l < 0 ? 0 : l > nmax ? nmax : l);
        float diff = scale * L[i] + lo - x[i];
        best += w[i] * (diff * diff);
    }
    uint8_t aux[256];
    for (int step = 0; step <= 20; step++) {
        iscale = (-1.0f + 0.1f * step + nmax) / (hi - lo);
        float sl = 0, sl2 = 0, sxl = 0;
        for (int i = 0; i < n; i++) {
            int l = near_int(iscale * (x[i] - lo));
            l = l < 0 ? 0 : l > nmax ? nmax : l;
            aux[i] = (uint8_t)l;
            sl += w[i] * l;
            sl2 += w[i] * l * l;
            sxl += w[i] * l * x[i];
        }
        float D = sum_w * sl2 - sl * sl;
        if (D > 0) {
            float s = (sum_w * sxl - sum_x * sl) / D, m = (sl2 * sum_x - sl * sxl) / D;
            if (m > 0) {
                m = 0;
                s = sxl / sl2;
            }
            float err = 0;
            for (int i = 0; i < n; i++) {
                float diff = s * aux[i] + m - x[i];
                err += w[i] * (diff * diff);
            }
            if (err < best) {
                memcpy(L, aux, (size_t)n);
                best = err;
                scale = s;
                lo = m;
            }
        }
    }
    *neg_min = -lo;
    return scale;
}

/* One Q4_K block of 256 values: each 32-value sub-block fitted (weights rms + |x|), the 8 scales
 * and mins quantized to 6 bits against d = max scale / 63 and dmin = max min / 63 (f16), then the
 * codes recomputed with the stored scales: q = round((x + dmin*m) / (d*sc)) clamped to [0, 15]. */
static void quant_q4_k(uint8_t *o, const float *x) {
    float sc[8], mn[8], w[32], max_sc = 0, max_mn = 0;
    uint8_t L[256];
    for (int j = 0; j < 8; j++) {
        const float *v = x + 32 * j;
        float s2 = 0;
        for (int l = 0; l < 32; l++) s2 += v[l] * v[l];
        float av = sqrtf(s2 / 32);
        for (int l = 0; l < 32; l++) w[l] = av + fabsf(v[l]);
        sc[j] = fit_qkx2(v, w, 32, 15, L + 32 * j, &mn[j]);
        if (sc[j] > max_sc) max_sc = sc[j];
        if (mn[j] > max_mn) max_mn = mn[j];
    }
    float inv_sc = max_sc > 0 ? 63.0f / max_sc : 0.0f, inv_mn = max_mn > 0 ? 63.0f / max_mn : 0.0f;
    uint8_t *S = o + 4;
    memset(S, 0, 12);
    for (int j = 0; j < 8; j++) {
        int ls = near_int(inv_sc * sc[j]), lm = near_int(inv_mn * mn[j]);
        ls = ls > 63 ? 63 : ls;
        lm = lm > 63 ? 63 : lm;
        if (j < 4) {
            S[j] = (uint8_t)ls;
            S[j + 4] = (uint8_t)lm;
        } else {
            S[j + 4] = (uint8_t)((ls & 15) | ((lm & 15) << 4));
            S[j - 4] |= (uint8_t)((ls >> 4) << 6);
            S[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    uint16_t hd = av_f32_to_f16(max_sc / 63.0f), hm = av_f32_to_f16(max_mn / 63.0f);
    memcpy(o, &hd, 2);
    memcpy(o + 2, &hm, 2);
    float d = av_f16_to_f32(hd), dmin = av_f16_to_f32(hm);
    for (int j = 0; j < 8; j++) {
        uint8_t s, m;
        k_scale_min(j, S, &s, &m);
        float dd = d * s;
        if (dd == 0.0f) continue;
        float dm = dmin * m;
        for (int l = 0; l < 32; l++) {
            int q = near_int((x[32 * j + l] + dm) / dd);
            L[32 * j + l] = (uint8_t)(q < 0 ? 0 : q > 15 ? 15 : q);
        }
    }
    uint8_t *qs = o + 16;
    for (int j = 0; j < 256; j += 64, qs += 32)
        for (int l = 0; l < 32; l++) qs[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
}

/* ---- Q6_K writing: ggml's reference quantizer (quantize_row_q6_K_ref) --------------------------- */
/* Symmetric fit of x[n] to integers in [-nmax, nmax-1] weighted by x^2 (ggml's make_qx_quants with
 * rmse_type 1): the grid through the value of largest magnitude, then 18 nearby grids, keeping the
 * least-squares scale of the best. L gets the codes + nmax. Returns the scale. */
static float fit_qx(const float *x, int n, int nmax, uint8_t *L) {
    float hi = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > amax) {
            amax = a;
            hi = x[i];
        }
    }
    if (amax < 1e-15f) {
        memset(L, 0, (size_t)n);
        return 0;
    }
    float iscale = -nmax / hi, sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = near_int(iscale * x[i]);
        l = l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l;
        L[i] = (uint8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f, best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / hi;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = near_int(iscale * x[i]);
            l = l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l;
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) {
                int l = near_int(iscale * x[i]);
                L[i] = (uint8_t)(nmax + (l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* One Q6_K block: 16 sub-blocks of 16 fitted symmetrically, their scales quantized to int8 against
 * d = -(scale of largest magnitude)/128 (f16), codes recomputed with the stored scales, clamped to
 * [-32, 31], stored +32 as 4 low bits (ql) and 2 high bits (qh). */
static void quant_q6_k(uint8_t *o, const float *x) {
    float sc[16], max_sc = 0, max_abs = 0;
    uint8_t L[256];
    for (int b = 0; b < 16; b++) {
        sc[b] = fit_qx(x + 16 * b, 16, 32, L + 16 * b);
        if (fabsf(sc[b]) > max_abs) {
            max_abs = fabsf(sc[b]);
            max_sc = sc[b];
        }
    }
    memset(o, 0, 210);
    if (max_abs < 1e-15f) return;
    float iscale = -128.0f / max_sc;
    uint16_t hd = av_f32_to_f16(1 / iscale);
    memcpy(o + 208, &hd, 2);
    int8_t *S = (int8_t *)(o + 192);
    for (int b = 0; b < 16; b++) {
        int v = near_int(iscale * sc[b]);
        S[b] = (int8_t)(v > 127 ? 127 : v);
    }
    float d0 = av_f16_to_f32(hd);
    for (int b = 0; b < 16; b++) {
        float d = d0 * S[b];
        if (d == 0.0f) continue;
        for (int i = 0; i < 16; i++) {
            int l = near_int(x[16 * b + i] / d);
            L[16 * b + i] = (uint8_t)((l < -32 ? -32 : l > 31 ? 31 : l) + 32);
        }
    }
    uint8_t *ql = o, *qh = o + 128;
    for (int j = 0; j < 256; j += 128, ql += 64, qh += 32)
        for (int l = 0; l < 32; l++) {
            const uint8_t *q = L + j + l;
            ql[l] = (uint8_t)((q[0] & 15) | ((q[64] & 15) << 4));
            ql[l + 32] = (uint8_t)((q[32] & 15) | ((q[96] & 15) << 4));
            qh[l] = (uint8_t)((q[0] >> 4) | ((q[32] >> 4) << 2) | ((q[64] >> 4) << 4) | ((q[96] >> 4) << 6));
        }
}

int av_gguf_quant_row(void *dst, const float *src, int t, int cols) {
    if (t == AV_GGML_Q6_K) {
        for (int b = 0; b < cols / 256; b++) quant_q6_k((uint8_t *)dst + (size_t)b * 210, src + (size_t)b * 256);
        return 0;
    }
    uint8_t *o = dst;
    if (t == AV_GGML_Q4_K) {
        for (int b = 0; b < cols / 256; b++) quant_q4_k(o + (size_t)b * 144, src + (size_t)b * 256);
        return 0;
    }
    if (t != AV_GGML_Q8_0 && t != AV_GGML_Q4_0) return -1;
    for (int b = 0; b < cols / 32; b++) {
        const float *x = src + (size_t)b * 32;
        float amax = 0, m = 0;
        for (int j = 0; j < 32; j++)
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                m = x[j];
            }
        if (t == AV_GGML_Q8_0) {
            const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            uint16_t h = av_f32_to_f16(d);
            memcpy(o, &h, 2);
            for (int j = 0; j < 32; j++) {
                const float v = x[j] * id;
                o[2 + j] = (uint8_t)(int8_t)roundf(v);
            }
            o += 34;
        } else {
            const float d = m / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            uint16_t h = av_f32_to_f16(d);
            memcpy(o, &h, 2);
            for (int j = 0; j < 16; j++) {
                const float v0 = x[j] * id, v1 = x[j + 16] * id;
                const float a0 = v0 + 8.5f, a1 = v1 + 8.5f;
                int q0 = (int)a0, q1 = (int)a1;
                q0 = q0 > 15 ? 15 : q0;
                q1 = q1 > 15 ? 15 : q1;
                o[2 + j] = (uint8_t)(q0 | (q1 << 4));
            }
            o += 18;
        }
    }
    return 0;
}
