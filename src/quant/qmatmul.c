/* Quantized products on the CPU (see qmatmul.h): the x preparation, the decode kernels over a row
 * range (AVX-512 VNNI, AVX2, portable) and the row dequantization for panels. */
#include "quant/qmatmul.h"
#include "quant/affine.h"
#include <math.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define QK_VNNI 1
#elif defined(__AVX2__) && defined(__FMA__)
#define QK_AVX2 1
#endif

const char *av_qmatmul_impl(void) {
#if defined(QK_VNNI)
    return "avx512-vnni";
#elif defined(QK_AVX2)
    return "avx2";
#else
    return "portable";
#endif
}

static size_t al64(size_t n) { return (n + 63) & ~(size_t)63; }

/* VNNI layout: one chunk = 64 packed bytes for 2/4/8 bits (256/128/64 columns), 8*bits bytes
 * (64 columns) for 3/5/6 bits. x codes of a chunk are stored in the order its bytes meet them:
 * 4 bits: even columns (low nibbles) then odd; 2 bits: the four 2-bit planes; else natural. */
static int chunk_cols(int bits) { return bits == 4 ? 128 : bits == 2 ? 256 : 64; }

#if defined(QK_VNNI) || defined(QK_AVX2)
#define QK_INT8 1 /* x as int8 digits in the chunk layout below (both SIMD kernels) */
static inline size_t x_pos(int col, int bits) {
    if (bits == 4) return (size_t)(col >> 7) * 128 + (size_t)(col & 1) * 64 + (size_t)((col & 127) >> 1);
    if (bits == 2) return (size_t)(col >> 8) * 256 + (size_t)(col & 3) * 64 + (size_t)((col & 255) >> 2);
    return (size_t)col;
}
#endif

#if defined(QK_VNNI)
/* x of chunk c (columns c*cc ..) as the kernel reads it: one scale d per vpdpbusd lane (cc/16 columns:
 * 4, 8 or 16), x = d * (q1 + q2 / 256), q1 the int8 code of x/d (d = amax/127), q2 the int8 code of the
 * remainder in 1/256ths; q1 of the chunk in x_pos order, then q2; dl[l] = d/256 of lane l. Columns past
 * K are 0. A NaN in x is left out of the codes (it reaches the output through the group sums); an
 * infinite one makes its lane's d NaN. 16 columns per step: the lane maxima by in-register swaps. */
static void quantize_chunk(int8_t *q, float *dl, const float *xr, int K, int c, int cc, int bits, int nd) {
    const int lw = cc / 16;
    int8_t n1[256] __attribute__((aligned(64))), n2[256] __attribute__((aligned(64))), n3[256] __attribute__((aligned(64)));
    float dv[256] __attribute__((aligned(64)));
    for (int j = 0; j < cc; j += 16) {
        int col = c * cc + j;
        __mmask16 m = col + 16 <= K ? (__mmask16)0xFFFF : col >= K ? 0 : (__mmask16)((1u << (K - col)) - 1);
        __m512 xv = _mm512_maskz_loadu_ps(m, xr + col), a = _mm512_abs_ps(xv);
        a = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(a, a, _CMP_ORD_Q), a);
        if (lw >= 2) a = _mm512_max_ps(a, _mm512_permute_ps(a, 0xB1));
        if (lw >= 4) a = _mm512_max_ps(a, _mm512_permute_ps(a, 0x4E));
        if (lw >= 8) a = _mm512_max_ps(a, _mm512_shuffle_f32x4(a, a, 0xB1));
        if (lw >= 16) a = _mm512_max_ps(a, _mm512_shuffle_f32x4(a, a, 0x4E));
        __m512 d = _mm512_div_ps(a, _mm512_set1_ps(127.0f));
        d = _mm512_mask_mov_ps(d, _mm512_cmp_ps_mask(a, _mm512_set1_ps(INFINITY), _CMP_EQ_OQ), _mm512_set1_ps(NAN));
        __m512 id = _mm512_maskz_div_ps(_mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_GT_OQ), _mm512_set1_ps(1.0f), d);
        __m512 v = _mm512_mul_ps(xv, id);
        v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);
        __m512 q1 = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m512 q2 = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_sub_ps(v, q1), _mm512_set1_ps(256.0f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q2 = _mm512_min_ps(_mm512_max_ps(q2, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f));
        if (nd == 3) { /* (v - q1) * 256 - q2 is exact in f32: the third digit's remainder */
            __m512 r = _mm512_sub_ps(_mm512_mul_ps(_mm512_sub_ps(v, q1), _mm512_set1_ps(256.0f)), q2);
            __m512 q3 = _mm512_roundscale_ps(_mm512_mul_ps(r, _mm512_set1_ps(256.0f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            q3 = _mm512_min_ps(_mm512_max_ps(q3, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f));
            _mm_store_si128((__m128i *)(n3 + j), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q3)));
        }
        _mm_store_si128((__m128i *)(n1 + j), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q1)));
        _mm_store_si128((__m128i *)(n2 + j), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q2)));
        _mm512_store_ps(dv + j, d);
    }
    for (int l = 0; l < 16; l++) dl[l] = dv[l * lw] * (1.0f / 256.0f);
    if (bits != 4 && bits != 2) {
        memcpy(q, n1, (size_t)cc);
        memcpy(q + cc, n2, (size_t)cc);
        if (nd == 3) memcpy(q + 2 * cc, n3, (size_t)cc);
        return;
    }
    for (int i = 0; i < cc; i++) {
        size_t at = x_pos(i, bits);
        q[at] = n1[i];
        q[at + (size_t)cc] = n2[i];
        if (nd == 3) q[at + 2 * (size_t)cc] = n3[i];
    }
}
#endif

int av_qx_max_digits(void) {
#if defined(QK_INT8)
    return 3;
#else
    return 2;
#endif
}
#if defined(QK_AVX2)
/* quantize_chunk's arithmetic on 16 columns at a time (lanes of cc/16 = 4, 8 or 16 columns, natural
 * order), the codes then placed in x_pos order: 4 bits even columns then odd, 2 bits the four planes. */
static void prepare_avx2(int8_t *q, float *dl, const float *xr, int K, int nc, int cc, int nd) {
    const int lw = cc / 16;
    const __m128i deint = lw == 8 ? _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15)
                                  : _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256 inf = _mm256_set1_ps(INFINITY), c127 = _mm256_set1_ps(127.0f), m127 = _mm256_set1_ps(-127.0f);
    const __m256i perm = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7); /* packs' lane order back to column order */
    for (int c = 0; c < nc; c++)
        for (int j = 0; j < cc; j += 16) {
            int col = c * cc + j;
            __m256i ci = _mm256_add_epi32(_mm256_set1_epi32(col), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            __m256i in0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(K), ci), in1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(K - 8), ci);
            __m256 x[2] = {_mm256_maskload_ps(xr + col, in0), _mm256_maskload_ps(xr + col + 8, in1)}, a[2];
            for (int h = 0; h < 2; h++) {
                a[h] = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x[h]);
                a[h] = _mm256_and_ps(a[h], _mm256_cmp_ps(a[h], a[h], _CMP_ORD_Q)); /* a NaN is left out */
                a[h] = _mm256_max_ps(a[h], _mm256_permute_ps(a[h], 0xB1));
                a[h] = _mm256_max_ps(a[h], _mm256_permute_ps(a[h], 0x4E)); /* 4-column maxima */
                if (lw >= 8) a[h] = _mm256_max_ps(a[h], _mm256_permute2f128_ps(a[h], a[h], 1));
            }
            if (lw == 16) a[0] = a[1] = _mm256_max_ps(a[0], a[1]);
            __m256i q1[2], q2[2], q3[2];
            for (int h = 0; h < 2; h++) {
                __m256 d = _mm256_div_ps(a[h], c127);
                d = _mm256_blendv_ps(d, _mm256_set1_ps(NAN), _mm256_cmp_ps(a[h], inf, _CMP_EQ_OQ));
                __m256 id = _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), d), _mm256_cmp_ps(d, _mm256_setzero_ps(), _CMP_GT_OQ));
                __m256 v = _mm256_mul_ps(x[h], id);
                v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q));
                __m256 r1 = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                __m256 r2 = _mm256_round_ps(_mm256_mul_ps(_mm256_sub_ps(v, r1), _mm256_set1_ps(256.0f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                r2 = _mm256_min_ps(_mm256_max_ps(r2, m127), c127);
                q1[h] = _mm256_cvtps_epi32(r1), q2[h] = _mm256_cvtps_epi32(r2);
                if (nd == 3) { /* (v - q1) * 256 - q2 is exact in f32: the third digit's remainder */
                    __m256 r = _mm256_sub_ps(_mm256_mul_ps(_mm256_sub_ps(v, r1), _mm256_set1_ps(256.0f)), r2);
                    __m256 r3 = _mm256_round_ps(_mm256_mul_ps(r, _mm256_set1_ps(256.0f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                    q3[h] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r3, m127), c127));
                } else
                    q3[h] = _mm256_setzero_si256();
                /* d / 256 of each lane in these 8 columns */
                float dd[8] __attribute__((aligned(32)));
                _mm256_store_ps(dd, _mm256_mul_ps(d, _mm256_set1_ps(1.0f / 256.0f)));
                int l0 = (j + 8 * h) / lw;
                if (lw == 4) dl[c * 16 + l0] = dd[0], dl[c * 16 + l0 + 1] = dd[4];
                else if (lw == 8 || h == 0) dl[c * 16 + l0] = dd[0];
            }
            /* 16 int32 codes -> 16 bytes in column order */
            __m256i w1 = _mm256_permutevar8x32_epi32(_mm256_packs_epi32(q1[0], q1[1]), perm);
            __m256i w2 = _mm256_permutevar8x32_epi32(_mm256_packs_epi32(q2[0], q2[1]), perm);
            __m256i w3 = _mm256_permutevar8x32_epi32(_mm256_packs_epi32(q3[0], q3[1]), perm);
            __m128i b[3] = {_mm_packs_epi16(_mm256_castsi256_si128(w1), _mm256_extracti128_si256(w1, 1)),
                            _mm_packs_epi16(_mm256_castsi256_si128(w2), _mm256_extracti128_si256(w2, 1)),
                            _mm_packs_epi16(_mm256_castsi256_si128(w3), _mm256_extracti128_si256(w3, 1))};
            for (int e = 0; e < nd; e++) { /* digit e of the chunk at cc * e */
                int8_t *de = q + (size_t)c * cc * nd + (size_t)e * cc;
                if (lw == 4) /* 8 bits, 3/5/6: natural order */
                    _mm_storeu_si128((__m128i *)(de + j), b[e]);
                else if (lw == 8) { /* 4 bits: even columns at j/2, odd at 64 + j/2 */
                    __m128i s = _mm_shuffle_epi8(b[e], deint);
                    _mm_storel_epi64((__m128i *)(de + j / 2), s), _mm_storel_epi64((__m128i *)(de + 64 + j / 2), _mm_unpackhi_epi64(s, s));
                } else { /* 2 bits: plane k (columns = k mod 4) at 64 k + j/4 */
                    int32_t pl[4];
                    _mm_storeu_si128((__m128i *)pl, _mm_shuffle_epi8(b[e], deint));
                    for (int k = 0; k < 4; k++) memcpy(de + 64 * k + j / 4, pl + k, 4);
                }
            }
        }
}
#endif

static int clamp_digits(int nd) { return nd < 2 ? 2 : nd > av_qx_max_digits() ? av_qx_max_digits() : nd; }

size_t av_qx_size_digits(int T, const av_mat *W, int nd) {
    int K = W->cols, cc = chunk_cols(W->q_bits), nc = (K + cc - 1) / cc, ngp = (K / W->q_group + 15) / 16 * 16;
    nd = clamp_digits(nd);
    return al64((size_t)T * nc * cc * nd) + al64((size_t)T * nc * 16 * sizeof(float)) + al64((size_t)T * ngp * sizeof(float));
}
size_t av_qx_size(int T, const av_mat *W) { return av_qx_size_digits(T, W, 2); }
void av_qx_prepare(av_qx *qx, void *buf, const float *x, int T, const av_mat *W) { av_qx_prepare_digits(qx, buf, x, T, W, 2); }

void av_qx_prepare_digits(av_qx *qx, void *buf, const float *x, int T, const av_mat *W, int nd) {
    int K = W->cols, bits = W->q_bits, G = W->q_group, cc = chunk_cols(bits), nc = (K + cc - 1) / cc, ng = K / G;
    int ngp = (ng + 15) / 16 * 16;
    char *p = buf;
    nd = clamp_digits(nd);
    *qx = (av_qx){.x = x, .T = T, .K = K, .bits = bits, .group = G, .nc = nc, .cc = cc, .nd = nd, .ngp = ngp};
    qx->q = (int8_t *)p;
    p += al64((size_t)T * nc * cc * nd);
    qx->dl = (float *)p;
    p += al64((size_t)T * nc * 16 * sizeof(float));
    qx->xs = (float *)p;
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * K;
        float *xs = qx->xs + (size_t)t * ngp;
#if defined(QK_VNNI)
        if (G % 16 == 0) {
            for (int g = 0; g < ngp; g++) {
                __m512 s = _mm512_setzero_ps();
                for (int i = 0; g < ng && i < G; i += 16) s = _mm512_add_ps(s, _mm512_loadu_ps(xr + (size_t)g * G + i));
                xs[g] = _mm512_reduce_add_ps(s);
            }
        } else
#elif defined(QK_AVX2)
        if (G % 8 == 0) {
            for (int g = 0; g < ngp; g++) {
                __m256 s = _mm256_setzero_ps();
                for (int i = 0; g < ng && i < G; i += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(xr + (size_t)g * G + i));
                __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
                h = _mm_add_ps(h, _mm_movehl_ps(h, h));
                xs[g] = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
            }
        } else
#endif
            for (int g = 0; g < ngp; g++) {
                float s = 0.0f;
                for (int i = 0; g < ng && i < G; i++) s += xr[(size_t)g * G + i];
                xs[g] = s;
            }
#if defined(QK_VNNI)
        for (int c = 0; c < nc; c++)
            quantize_chunk(qx->q + (size_t)t * nc * cc * nd + (size_t)c * cc * nd, qx->dl + (size_t)t * nc * 16 + (size_t)c * 16, xr, K,
                           c, cc, bits, nd);
#elif defined(QK_AVX2)
        prepare_avx2(qx->q + (size_t)t * nc * cc * nd, qx->dl + (size_t)t * nc * 16, xr, K, nc, cc, nd);
#endif
    }
}

/* Rows [n0, n1) of the product for every x row, 4 at a time: FN(out, ldo, qx, W, n, t0, T, KIND, ...) with
 * T a constant 1..4 (each kernel's row function). */
#define QK_ROWS(FN, KIND, ...)                                                                                                \
    for (int t0 = 0; t0 < qx->T; t0 += 4) {                                                                                  \
        int tn = qx->T - t0 < 4 ? qx->T - t0 : 4;                                                                            \
        for (int n = n0; n < n1; n++) switch (tn) {                                                                           \
            case 1: FN(out + (n - n0), ldo, qx, W, n, t0, 1, KIND, __VA_ARGS__); break;                                       \
            case 2: FN(out + (n - n0), ldo, qx, W, n, t0, 2, KIND, __VA_ARGS__); break;                                       \
            case 3: FN(out + (n - n0), ldo, qx, W, n, t0, 3, KIND, __VA_ARGS__); break;                                       \
            default: FN(out + (n - n0), ldo, qx, W, n, t0, 4, KIND, __VA_ARGS__); break;                                      \
            }                                                                                                                 \
    }

/* ------------------------------------------------------------------ AVX-512 VNNI */
#if defined(QK_VNNI)
/* n (<= 16) scales or biases from i as f32, zeros past n */
static inline __m512 ld16_s(const void *p, av_dtype dt, size_t i, int n) {
    __mmask16 m = n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
    if (dt == AV_F32) return _mm512_maskz_loadu_ps(m, (const float *)p + i);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i);
    if (dt == AV_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

#define QK_PREFETCH 4096 /* bytes of packed weights requested ahead of the chunk being read */

/* Scales and biases of the n (<= 16) groups from i (a multiple of 16) from a K-quant's own two-level
 * tables (ops.h av_kscales): the same products the repack stored, d*sc and -(dmin*m) or -32*d*sc. */
static inline void ks_load16(const av_kscales *k, size_t i, int n, __m512 *s, __m512 *b) {
    __mmask16 m = n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
    __m128i c = _mm_maskz_loadu_epi8(m, (const uint8_t *)k->sc + i);
    __m512 d;
    if (k->per == 16) d = _mm512_set1_ps(k->d[i / 16]);
    else d = _mm512_insertf32x8(_mm512_set1_ps(k->d[i / 8]), _mm256_set1_ps(n > 8 ? k->d[i / 8 + 1] : 0.0f), 1);
    *s = _mm512_mul_ps(d, _mm512_cvtepi32_ps(k->sym ? _mm512_cvtepi8_epi32(c) : _mm512_cvtepu8_epi32(c)));
    if (k->sym) {
        *b = _mm512_mul_ps(_mm512_set1_ps(-32.0f), *s);
        return;
    }
    __m512 dm = _mm512_insertf32x8(_mm512_set1_ps(k->dmin[i / 8]), _mm256_set1_ps(n > 8 ? k->dmin[i / 8 + 1] : 0.0f), 1);
    __m128i mc = _mm_maskz_loadu_epi8(m, (const uint8_t *)k->m + i);
    *b = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(dm, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(mc))));
}

enum { K8, K4, K2, KG, KS }; /* 8 bits, 4, 2, 3/5/6 unpacked by VBMI, 3/5/6 unpacked in C */

#if defined(__AVX512VBMI__)
/* 64 codes of `bits` (any width) from 8*bits bytes: qword k gathers bytes bits*k.. (vpermb), each
 * byte j of it shifted by j*bits (vpmultishiftqb), masked. */
#define VB_P8(b, k) (b) * (k), (b) * (k) + 1, (b) * (k) + 2, (b) * (k) + 3, (b) * (k) + 4, (b) * (k) + 5, (b) * (k) + 6, (b) * (k) + 7
#define VB_PERM(b) {VB_P8(b, 0), VB_P8(b, 1), VB_P8(b, 2), VB_P8(b, 3), VB_P8(b, 4), VB_P8(b, 5), VB_P8(b, 6), VB_P8(b, 7)}
#define VB_S8(b) 0, (b), 2 * (b), 3 * (b), 4 * (b), 5 * (b), 6 * (b), 7 * (b)
#define VB_SHIFT(b) {VB_S8(b), VB_S8(b), VB_S8(b), VB_S8(b), VB_S8(b), VB_S8(b), VB_S8(b), VB_S8(b)}
/* constant per width: built per call they cost QLoRA's per-row dequantization 6% of a training step */
static const uint8_t vb_perm[9][64] = {{0}, {0}, VB_PERM(2), VB_PERM(3), VB_PERM(4), VB_PERM(5), VB_PERM(6), VB_PERM(7), VB_PERM(8)};
static const uint8_t vb_shift[9][64] = {{0}, {0}, VB_SHIFT(2), VB_SHIFT(3), VB_SHIFT(4), VB_SHIFT(5), VB_SHIFT(6), VB_SHIFT(7), VB_SHIFT(8)};
static void vbmi_tables(__m512i *perm, __m512i *shift, int bits) {
    *perm = _mm512_loadu_si512(vb_perm[bits]);
    *shift = _mm512_loadu_si512(vb_shift[bits]);
}
#endif

/* The codes of one chunk (64 packed bytes, or 8*bits for 3/5/6) as vpdpbusd operands. */
static inline __attribute__((always_inline)) void vnni_planes(__m512i *p, __m512i v, const int kind, __m512i mlo, __m512i perm,
                                                              __m512i shift) {
    if (kind == K8) {
        p[0] = v;
    } else if (kind == K4) {
        p[0] = _mm512_and_si512(v, mlo);
        p[1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mlo);
    } else if (kind == K2) {
        p[0] = _mm512_and_si512(v, mlo);
        p[1] = _mm512_and_si512(_mm512_srli_epi16(v, 2), mlo);
        p[2] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mlo);
        p[3] = _mm512_and_si512(_mm512_srli_epi16(v, 6), mlo);
    } else {
#if defined(__AVX512VBMI__)
        p[0] = _mm512_and_si512(_mm512_multishift_epi64_epi8(shift, _mm512_permutexvar_epi8(perm, v)), mlo);
#else
        (void)perm; (void)shift; (void)mlo;
        p[0] = v;
#endif
    }
}

/* out[t] for t in [t0, t0+T) of weight row n: chunks through vpdpbusd with the int8 x, int32 sums
 * scaled per lane by (weight group scale) * (x block scale), 16 groups' scales per register
 * (idx[j]: lane -> group for the j-th chunk of those 16 groups); biases times the x group sums. */
static inline __attribute__((always_inline)) void vnni_row(float *out, size_t ldo, const av_qx *qx, const av_mat *W, int n, int t0,
                                                           const int T, const int kind, const int ND, const __m512i *idx, __m512i perm,
                                                           __m512i shift) {
    const int cc = kind == K4 ? 128 : kind == K2 ? 256 : 64, P = kind == K4 ? 2 : kind == K2 ? 4 : 1;
    const int K = qx->K, bits = qx->bits, G = qx->group, nc = qx->nc, ng = K / G, cps = 16 * G / cc, cb = cc * bits / 8;
    const size_t rowbytes = (size_t)K * bits / 8, s0 = (size_t)n * ng;
    const uint8_t *wr = (const uint8_t *)W->data + (size_t)n * rowbytes;
    const __m512i mlo = _mm512_set1_epi8(kind == K4 ? 0x0F : kind == K2 ? 0x03 : (char)((1 << bits) - 1));
    const int8_t *xq[4];
    const float *dl[4];
    __m512 acc[4];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        acc[t] = _mm512_setzero_ps();
        xq[t] = qx->q + (size_t)(t0 + t) * nc * cc * ND;
        dl[t] = qx->dl + (size_t)(t0 + t) * nc * 16;
    }
    uint8_t ub[64] __attribute__((aligned(64)));
    for (int c0 = 0; c0 < nc; c0 += cps) {
        int g0 = c0 / cps * 16, ce = c0 + cps < nc ? c0 + cps : nc;
        __m512 swv, bv;
        if (W->ks) ks_load16(W->ks, s0 + g0, ng - g0, &swv, &bv);
        else swv = ld16_s(W->scales, W->dtype, s0 + g0, ng - g0), bv = ld16_s(W->biases, W->dtype, s0 + g0, ng - g0);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) acc[t] = _mm512_fmadd_ps(bv, _mm512_loadu_ps(qx->xs + (size_t)(t0 + t) * qx->ngp + g0), acc[t]);
        for (int c = c0; c < ce; c++) {
            __m512 swl = _mm512_permutexvar_ps(idx[c - c0], swv);
            size_t off = (size_t)c * cb;
            /* the hardware prefetcher alone leaves this loop waiting on memory (it restarts at every
             * row chunk a thread takes): 4 KiB ahead doubled the DRAM rate (bench/NOTES-cpu-quant.md) */
            _mm_prefetch((const char *)wr + off + QK_PREFETCH, _MM_HINT_T0);
            __m512i v;
            if (kind == KS) {
                int nv = K - c * 64 < 64 ? K - c * 64 : 64;
                memset(ub, 0, sizeof ub);
                av_quant_unpack(ub, (const uint32_t *)wr, c * 64, nv, bits);
                v = _mm512_load_si512(ub);
            } else if (kind != KG && off + 64 <= rowbytes) {
                v = _mm512_loadu_si512(wr + off);
            } else {
                size_t nb = rowbytes - off < (size_t)cb ? rowbytes - off : (size_t)cb;
                v = _mm512_maskz_loadu_epi8((__mmask64)(nb >= 64 ? ~0ull : (1ull << nb) - 1), wr + off);
            }
            __m512i p[4];
            vnni_planes(p, v, kind, mlo, perm, shift);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
                const int8_t *xc = xq[t] + (size_t)c * cc * ND;
                __m512i ia = _mm512_dpbusd_epi32(_mm512_setzero_si512(), p[0], _mm512_load_si512(xc));
#pragma GCC unroll 4
                for (int k = 1; k < P; k++) ia = _mm512_dpbusd_epi32(ia, p[k], _mm512_load_si512(xc + 64 * k));
                ia = _mm512_slli_epi32(ia, 8);
#pragma GCC unroll 4
                for (int k = 0; k < P; k++) ia = _mm512_dpbusd_epi32(ia, p[k], _mm512_load_si512(xc + cc + 64 * k));
                __m512 fa = _mm512_cvtepi32_ps(ia);
                if (ND == 3) { /* q . q3 in 1/256ths of the unit of ia (in f32: (q.q1) * 65536 can pass 2^31) */
                    __m512i ib = _mm512_dpbusd_epi32(_mm512_setzero_si512(), p[0], _mm512_load_si512(xc + 2 * cc));
#pragma GCC unroll 4
                    for (int k = 1; k < P; k++) ib = _mm512_dpbusd_epi32(ib, p[k], _mm512_load_si512(xc + 2 * cc + 64 * k));
                    fa = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ib), _mm512_set1_ps(1.0f / 256.0f), fa);
                }
                __m512 sd = _mm512_mul_ps(swl, _mm512_load_ps(dl[t] + (size_t)c * 16));
                acc[t] = _mm512_fmadd_ps(fa, sd, acc[t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) out[(size_t)(t0 + t) * ldo] = _mm512_reduce_add_ps(acc[t]);
}


/* The kernels of one digit count (ND a constant inside: the always-inline vnni_row specialises) */
static inline __attribute__((always_inline)) void vnni_rows_nd(float *out, size_t ldo, const av_qx *qx, const av_mat *W, int n0, int n1,
                                                               int bits, const int ND, const __m512i *idx, __m512i perm, __m512i shift) {
#define VNNI_ROW(o, l, q, w, n, t0, T, kind, ...) vnni_row(o, l, q, w, n, t0, T, kind, ND, __VA_ARGS__)
    if (bits == 8) { QK_ROWS(VNNI_ROW, K8, idx, perm, shift) }
    else if (bits == 4) { QK_ROWS(VNNI_ROW, K4, idx, perm, shift) }
    else if (bits == 2) { QK_ROWS(VNNI_ROW, K2, idx, perm, shift) }
    else {
#if defined(__AVX512VBMI__)
        QK_ROWS(VNNI_ROW, KG, idx, perm, shift)
#else
        QK_ROWS(VNNI_ROW, KS, idx, perm, shift)
#endif
    }
#undef VNNI_ROW
}

void av_qmatmul_rows(float *out, size_t ldo, const av_qx *qx, const av_mat *W, int n0, int n1) {
    int bits = qx->bits, G = qx->group, cc = qx->cc, cps = 16 * G / cc;
    /* lane l of the j-th chunk of 16 groups sums columns j*cc + l*cc/16 .. (4, 8 or 16 of them, inside
     * one group for every group size >= 16): group (j*cc + l*cc/16) / G */
    __m512i idx[32];
    const __m512i lb =
        _mm512_slli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), __builtin_ctz((unsigned)cc / 16));
    for (int j = 0; j < cps; j++)
        idx[j] = _mm512_srli_epi32(_mm512_add_epi32(_mm512_set1_epi32(j * cc), lb), __builtin_ctz((unsigned)G));
    __m512i perm = _mm512_setzero_si512(), shift = _mm512_setzero_si512();
#if defined(__AVX512VBMI__)
    if (bits != 8 && bits != 4 && bits != 2) vbmi_tables(&perm, &shift, bits);
#endif
    if (qx->nd == 3) vnni_rows_nd(out, ldo, qx, W, n0, n1, bits, 3, idx, perm, shift);
    else vnni_rows_nd(out, ldo, qx, W, n0, n1, bits, 2, idx, perm, shift);
}

#elif defined(QK_AVX2)
/* ------------------------------------------------------------------ AVX2 */
/* The VNNI kernel's scheme on the two 32-byte halves of each chunk (lanes 0-7, 8-15), vpdpbusd's per-lane
 * sum of 4 byte products done as vpmaddubsw (u8 code x s8 digit, pairs to s16) + vpmaddwd (pairs to s32).
 * The planes of a chunk (2 of 4 bits, 4 of 2 bits) are summed in s16 before the one vpmaddwd per digit
 * (2 * 15 * 127 per pair and plane: at most 7,620); the first digit's vpmaddwd multiplies by 256, so
 * (q.q1)*256 + q.q2 needs no shift. 8-bit codes go as q - 128 (the 128 folded into the bias: b + 128 s)
 * in vpsignb's form, |q - 128| times the digit signed by q - 128: 2 * 128 * 127 < 2^15. */
#define QK_PREFETCH 4096

static inline __m256i a_mul(__m256i p, const int8_t *x) { return _mm256_maddubs_epi16(p, _mm256_load_si256((const __m256i *)x)); }

/* n (<= 16) scales or biases from i as two f32 vectors, zeros past n */
static inline void a_ld16_s(__m256 *lo, __m256 *hi, const void *p, av_dtype dt, size_t i, int n) {
    float f[16] __attribute__((aligned(32)));
    if (n >= 16 && dt == AV_F32) {
        *lo = _mm256_loadu_ps((const float *)p + i), *hi = _mm256_loadu_ps((const float *)p + i + 8);
        return;
    }
    if (n >= 16 && dt == AV_BF16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i));
        *lo = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(h)), 16));
        *hi = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(h, 1)), 16));
        return;
    }
#if defined(__F16C__)
    if (n >= 16 && dt == AV_F16) {
        *lo = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
        *hi = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i + 8)));
        return;
    }
#endif
    for (int j = 0; j < 16; j++) f[j] = j < n ? av_quant_load_sb(p, dt, i + (size_t)j) : 0.0f;
    *lo = _mm256_load_ps(f), *hi = _mm256_load_ps(f + 8);
}

enum { A8, A4, A2, AS }; /* 8 bits, 4, 2, 3/5/6 */

/* 64 codes of 3/5/6 bits (8*bits bytes at p; 16 more bytes must be readable) as bytes. The packing is a
 * little-endian bit stream, so 8 codes are a `bits`-byte field: one per 64-bit lane (vpshufb), spread
 * into 8 bytes by three mask-and-shift steps (halves to 32-bit lanes, quarters to 16, codes to bytes). */
static inline void a_unpack64(uint8_t *ub, const uint8_t *p, int bits, __m256i ctl) {
    const __m128i s4 = _mm_cvtsi32_si128(4 * bits), s2 = _mm_cvtsi32_si128(2 * bits), s1 = _mm_cvtsi32_si128(bits);
    const __m256i m1 = _mm256_set1_epi64x((long long)((1ull << (4 * bits)) - 1));
    const __m256i m2 = _mm256_set1_epi64x((long long)(((1ull << (2 * bits)) - 1) * 0x0000000100000001ull));
    const __m256i m3 = _mm256_set1_epi64x((long long)(((1ull << bits) - 1) * 0x0001000100010001ull));
    for (int r = 0; r < 2; r++) {
        const uint8_t *q = p + (size_t)r * 4 * bits;
        __m256i v = _mm256_shuffle_epi8(_mm256_loadu2_m128i((const __m128i *)(q + 2 * bits), (const __m128i *)q), ctl);
        v = _mm256_or_si256(_mm256_and_si256(v, m1), _mm256_slli_epi64(_mm256_and_si256(_mm256_srl_epi64(v, s4), m1), 32));
        v = _mm256_or_si256(_mm256_and_si256(v, m2), _mm256_slli_epi64(_mm256_and_si256(_mm256_srl_epi64(v, s2), m2), 16));
        v = _mm256_or_si256(_mm256_and_si256(v, m3), _mm256_slli_epi64(_mm256_and_si256(_mm256_srl_epi64(v, s1), m3), 8));
        _mm256_store_si256((__m256i *)(ub + 32 * r), v);
    }
}

static inline __attribute__((always_inline)) void avx2_row(float *out, size_t ldo, const av_qx *qx, const av_mat *W, int n, int t0,
                                                           const int T, const int kind, const __m256i (*idx)[2], const __m256 (*hi8)[2],
                                                           const int (*gh)[2], const int uni, const int ND) {
    const int cc = kind == A4 ? 128 : kind == A2 ? 256 : 64, P = kind == A4 ? 2 : kind == A2 ? 4 : 1;
    const int K = qx->K, bits = qx->bits, G = qx->group, nc = qx->nc, ng = K / G, cps = 16 * G / cc, cb = cc * bits / 8;
    const size_t rowbytes = (size_t)K * bits / 8, s0 = (size_t)n * ng;
    const uint8_t *wr = (const uint8_t *)W->data + (size_t)n * rowbytes;
    const __m256i m4 = _mm256_set1_epi8(kind == A2 ? 0x03 : 0x0F), one = _mm256_set1_epi16(1), c256 = _mm256_set1_epi16(256);
    const __m256i x80 = _mm256_set1_epi8((char)0x80);
    const int8_t *xq[4];
    const float *dl[4];
    __m256 acc[4];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        acc[t] = _mm256_setzero_ps();
        xq[t] = qx->q + (size_t)(t0 + t) * nc * cc * ND;
        dl[t] = qx->dl + (size_t)(t0 + t) * nc * 16;
    }
    uint8_t ub[64] __attribute__((aligned(32)));
    float sf[16] __attribute__((aligned(32))); /* uni: the 16 groups' scales */
    __m256i ctl = _mm256_setzero_si256();
    if (kind == AS) { /* a_unpack64's byte gather: 64-bit lane i of each half takes bytes i*bits .. i*bits+7 */
        uint8_t cb8[32];
        for (int k = 0; k < 32; k++) cb8[k] = (uint8_t)((k % 16) / 8 * bits + k % 8);
        ctl = _mm256_loadu_si256((const __m256i *)cb8);
    }
    /* chunks read in place: whole 64-byte chunks of the row (3/5/6 bits: whole 64-column chunks with the
     * 16 bytes a_unpack64 reads past them inside the matrix); the rest go through ub */
    int cfast = kind == AS ? K / 64 : (int)(rowbytes / 64);
    if (kind == AS)
        while (cfast > 0 && (size_t)(W->rows - n) * rowbytes - (size_t)(cfast - 1) * cb < (size_t)cb + 16) cfast--;
    for (int c0 = 0; c0 < nc; c0 += cps) {
        int g0 = c0 / cps * 16, ce = c0 + cps < nc ? c0 + cps : nc;
        __m256 sl, sh, bl, bh;
        a_ld16_s(&sl, &sh, W->scales, W->dtype, s0 + g0, ng - g0);
        a_ld16_s(&bl, &bh, W->biases, W->dtype, s0 + g0, ng - g0);
        if (kind == A8) { /* codes taken as q - 128 below */
            bl = _mm256_fmadd_ps(sl, _mm256_set1_ps(128.0f), bl);
            bh = _mm256_fmadd_ps(sh, _mm256_set1_ps(128.0f), bh);
        }
        if (uni) _mm256_store_ps(sf, sl), _mm256_store_ps(sf + 8, sh);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const float *xs = qx->xs + (size_t)(t0 + t) * qx->ngp + g0;
            acc[t] = _mm256_fmadd_ps(bl, _mm256_loadu_ps(xs), acc[t]);
            acc[t] = _mm256_fmadd_ps(bh, _mm256_loadu_ps(xs + 8), acc[t]);
        }
        for (int c = c0; c < ce; c++) {
            size_t off = (size_t)c * cb;
            _mm_prefetch((const char *)wr + off + QK_PREFETCH, _MM_HINT_T0);
            const uint8_t *src = wr + off;
            if (kind == AS && c < cfast) {
                a_unpack64(ub, wr + off, bits, ctl);
                src = ub;
            } else if (kind == AS) {
                int nv = K - c * 64 < 64 ? K - c * 64 : 64;
                memset(ub, 0, sizeof ub);
                av_quant_unpack(ub, (const uint32_t *)wr, c * 64, nv, bits);
                src = ub;
            } else if (kind != AS && c >= cfast) {
                memset(ub, 0, sizeof ub);
                memcpy(ub, wr + off, rowbytes - off);
                src = ub;
            }
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(src + 32 * h)), p[4];
                if (kind == AS) p[0] = v;
                else if (kind == A2)
                    for (int k = 0; k < 4; k++) p[k] = _mm256_and_si256(_mm256_srli_epi16(v, 2 * k), m4);
                else if (kind == A4) p[0] = _mm256_and_si256(v, m4), p[1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                else p[1] = _mm256_xor_si256(v, x80), p[0] = _mm256_abs_epi8(p[1]); /* |q - 128|, q - 128 */
                __m256 sw; /* the weight scale of each lane */
                if (uni) sw = _mm256_broadcast_ss(sf + gh[c - c0][h]);
                else {
                    const __m256i *ix = &idx[c - c0][h];
                    sw = _mm256_blendv_ps(_mm256_permutevar8x32_ps(sl, *ix), _mm256_permutevar8x32_ps(sh, *ix), hi8[c - c0][h]);
                }
#pragma GCC unroll 4
                for (int t = 0; t < T; t++) {
                    const int8_t *xc = xq[t] + (size_t)c * cc * ND + 32 * h;
                    __m256i s[3];
#pragma GCC unroll 3
                    for (int e = 0; e < ND; e++) { /* digit e: the codes against x's digit e, in s16 */
                        const int8_t *xe = xc + (size_t)e * cc;
                        if (kind == A8) s[e] = _mm256_maddubs_epi16(p[0], _mm256_sign_epi8(_mm256_load_si256((const __m256i *)xe), p[1]));
                        else {
                            s[e] = a_mul(p[0], xe); /* plane k against x plane k */
#pragma GCC unroll 4
                            for (int k = 1; k < P; k++) s[e] = _mm256_add_epi16(s[e], a_mul(p[k], xe + 64 * k));
                        }
                    }
                    __m256 fa = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_madd_epi16(s[0], c256), _mm256_madd_epi16(s[1], one)));
                    if (ND == 3) /* q . q3 in 1/256ths of the unit of fa (in f32: (q.q1) * 65536 can pass 2^31) */
                        fa = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(s[2], one)), _mm256_set1_ps(1.0f / 256.0f), fa);
                    __m256 sd = _mm256_mul_ps(sw, _mm256_loadu_ps(dl[t] + (size_t)c * 16 + 8 * h));
                    acc[t] = _mm256_fmadd_ps(fa, sd, acc[t]);
                }
            }
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[t]), _mm256_extractf128_ps(acc[t], 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        out[(size_t)(t0 + t) * ldo] = _mm_cvtss_f32(s);
    }
}


/* The kernels of one digit count and scale form (constants inside: the always-inline avx2_row specialises;
 * three digits, the prompt rows, test the scale form at run time instead of doubling that code) */
static inline __attribute__((always_inline)) void avx2_rows_nd(float *out, size_t ldo, const av_qx *qx, const av_mat *W, int n0, int n1,
                                                               int bits, const __m256i (*idx)[2], const __m256 (*hi8)[2],
                                                               const int (*gh)[2], const int uni, const int ND) {
#define AVX2_ROW(o, l, q, w, n, t0, T, kind, ...) avx2_row(o, l, q, w, n, t0, T, kind, __VA_ARGS__, ND)
    if (bits == 8) { QK_ROWS(AVX2_ROW, A8, idx, hi8, gh, uni) }
    else if (bits == 4) { QK_ROWS(AVX2_ROW, A4, idx, hi8, gh, uni) }
    else if (bits == 2) { QK_ROWS(AVX2_ROW, A2, idx, hi8, gh, uni) }
    else { QK_ROWS(AVX2_ROW, AS, idx, hi8, gh, uni) }
#undef AVX2_ROW
}

void av_qmatmul_rows(float *out, size_t ldo, const av_qx *qx, const av_mat *W, int n0, int n1) {
    int bits = qx->bits, G = qx->group, cc = qx->cc, cps = 16 * G / cc;
    /* lane l (0-15) of the j-th chunk of 16 groups: group (j*cc + l*cc/16) / G - (first of the 16), split
     * in the halves' index vectors (permutevar8x32 takes its low 3 bits) and "group >= 8" blend masks */
    __m256i idx[32][2];
    __m256 hi8[32][2];
    int gh[32][2]; /* the group of each half's first lane */
    for (int j = 0; j < cps; j++)
        for (int h = 0; h < 2; h++) {
            int g[8];
            for (int l = 0; l < 8; l++) g[l] = (j * cc + (8 * h + l) * (cc / 16)) / G;
            idx[j][h] = _mm256_loadu_si256((const __m256i *)g);
            hi8[j][h] = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx[j][h], _mm256_set1_epi32(7)));
            gh[j][h] = g[0];
        }
    /* a half-chunk (8 lanes, cc/2 columns) within one group: one broadcast scale (4 bits g >= 64, 8 bits g >= 32, ...) */
    int uni = G >= cc / 2;
    if (qx->nd == 3) avx2_rows_nd(out, ldo, qx, W, n0, n1, bits, idx, hi8, gh, uni, 3);
    else if (uni) avx2_rows_nd(out, ldo, qx, W, n0, n1, bits, idx, hi8, gh, 1, 2);
    else avx2_rows_nd(out, ldo, qx, W, n0, n1, bits, idx, hi8, gh, 0, 2);
}

#else
/* ------------------------------------------------------------------ portable C */
void av_qmatmul_rows(float *out, size_t ldo, const av_qx *qx, const av_mat *W, int n0, int n1) {
    for (int n = n0; n < n1; n++)
        for (int t = 0; t < qx->T; t++)
            out[(size_t)t * ldo + (n - n0)] = av_quant_dot_row(qx->x + (size_t)t * qx->K, W->data, W->scales, W->biases, W->dtype, n, qx->K,
                                                         qx->bits, qx->group);
}
#endif

/* ------------------------------------------------------------------ row dequantization */
void av_qdequant_rows(float *dst, size_t ldd, const av_mat *W, int r0, int nr) {
    const int K = W->cols, bits = W->q_bits, G = W->q_group;
#if defined(QK_VNNI) && defined(__AVX512VBMI__)
    const int ng = K / G, cb = 8 * bits;
    const size_t rowbytes = (size_t)K * bits / 8;
    __m512i perm, shift;
    vbmi_tables(&perm, &shift, bits);
    const __m512i m = _mm512_set1_epi8((char)((1 << bits) - 1));
    for (int r = 0; r < nr; r++) {
        const uint8_t *wr = (const uint8_t *)W->data + (size_t)(r0 + r) * rowbytes;
        float *d = dst + (size_t)r * ldd;
        size_t s0 = (size_t)(r0 + r) * ng;
        __m512 s = _mm512_setzero_ps(), b = s;
        int gp = -1;
        /* 64 codes per step; 16 columns never straddle a group (G >= 32) */
        for (int c = 0; c * 64 < K; c++) {
            size_t off = (size_t)c * cb, nb = rowbytes - off < (size_t)cb ? rowbytes - off : (size_t)cb;
            __m512i v = _mm512_maskz_loadu_epi8((__mmask64)(nb == 64 ? ~0ull : (1ull << nb) - 1), wr + off);
            __m512i q = _mm512_and_si512(_mm512_multishift_epi64_epi8(shift, _mm512_permutexvar_epi8(perm, v)), m);
            __m128i qq[4] = {_mm512_extracti32x4_epi32(q, 0), _mm512_extracti32x4_epi32(q, 1), _mm512_extracti32x4_epi32(q, 2),
                             _mm512_extracti32x4_epi32(q, 3)};
            for (int h = 0; h < 4 && c * 64 + h * 16 < K; h++) {
                int col = c * 64 + h * 16, g = col / G;
                if (g != gp) { /* a group's scale and bias once (groups of 32+ span 2+ steps) */
                    s = _mm512_set1_ps(av_quant_load_sb(W->scales, W->dtype, s0 + g));
                    b = _mm512_set1_ps(av_quant_load_sb(W->biases, W->dtype, s0 + g));
                    gp = g;
                }
                /* s * q + b as two roundings, as the scalar dequantization */
                _mm512_storeu_ps(d + col, _mm512_add_ps(_mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(qq[h]))), b));
            }
        }
    }
#else
    for (int r = 0; r < nr; r++) av_quant_dequant_row(dst + (size_t)r * ldd, W->data, W->scales, W->biases, W->dtype, r0 + r, K, bits, G);
#endif
}
