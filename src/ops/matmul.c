/* Matrix products against weight matrices (f32/f16/bf16 or MLX-quantized): matrix-vector for decode
 * (memory-bound; av_matvec_rows is the single-threaded row-range product that decode_cpu.c's
 * persistent region and matmul_rows' threads call) and matrix-matrix for prefill/
 * training (weights converted to f32 in row panels, then OpenBLAS sgemm; plain loops without BLAS).
 * Quantized weights: decode products by the kernels of quant/qmatmul.h, prefill on panels they dequantize. */
#include "ops/ops.h"
#include "ops/simd.h"
#include "ops/gemm.h"
#include "core/memory.h"
#include "quant/affine.h"
#include "quant/qmatmul.h"
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#ifdef AV_HAVE_BLAS
#include <cblas.h>
#endif

float av_dot_row(const float *x, const av_mat *W, int row) {
    if (W->q_bits) return av_quant_dot_row(x, W->data, W->scales, W->biases, W->dtype, row, W->cols, W->q_bits, W->q_group);
    size_t off = (size_t)row * (size_t)W->cols;
    switch (W->dtype) {
    case AV_BF16: return av_dot_bf16(x, (const uint16_t *)W->data + off, W->cols);
    case AV_F16: return av_dot_f16(x, (const uint16_t *)W->data + off, W->cols);
    default: return av_dot_f32(x, (const float *)W->data + off, W->cols);
    }
}

void av_mat_rows_to_f32(float *dst, const av_mat *W, int r0, int nr) {
    if (W->q_bits) {
        av_qdequant_rows(dst, (size_t)W->cols, W, r0, nr);
        return;
    }
    size_t off = (size_t)r0 * (size_t)W->cols, n = (size_t)nr * (size_t)W->cols;
    const char *base = (const char *)W->data + off * av_dtype_size(W->dtype);
    av_convert_to_f32(dst, base, W->dtype, n);
}

#if defined(__AVX512F__)
static inline __m512 ld16_w(const void *w, av_dtype dt, size_t i) {
    switch (dt) {
    case AV_BF16: return av_ld16_bf16((const uint16_t *)w + i);
    case AV_F16: return av_ld16_f16((const uint16_t *)w + i);
    default: return _mm512_loadu_ps((const float *)w + i);
    }
}

/* out[t*ldo + r*S] = x_t . W[n0 + r*S] for r < 4, t < NX: four weight rows S rows apart streamed at
 * once (decode is memory-bound: four independent streams keep loads in flight) against NX <= 4 rows
 * of x, each weight vector loaded once for all of them. K % 16 == 0. One accumulator per (row, x row)
 * and a final horizontal sum: the summation order of the one-row product is the same for every NX.
 * The caller walks n0 = b, b+1, .., b+S-1, so each stream reads S consecutive rows (av_matvec_rows),
 * and the next row of every stream is requested while these are read: the hardware prefetcher starts
 * over at each 4 KiB page (bench/NOTES-cpu.md). */
#define ROWS4_BODY(NX)                                                                                                  \
    do {                                                                                                                \
        size_t K = (size_t)W->cols, es = av_dtype_size(W->dtype), st = (size_t)S * K * es;                              \
        const char *b = (const char *)W->data + (size_t)n0 * K * es;                                                    \
        const void *w0 = b, *w1 = b + st, *w2 = b + 2 * st, *w3 = b + 3 * st;                                           \
        __m512 a[NX][4];                                                                                                \
        for (int t = 0; t < NX; t++) a[t][0] = a[t][1] = a[t][2] = a[t][3] = _mm512_setzero_ps();                       \
        for (size_t i = 0; i < K; i += 16) {                                                                            \
            if ((i * es) % 64 == 0) /* the next four rows, same offset: see below */                                   \
                for (int r = 0; r < 4; r++) _mm_prefetch(b + r * st + K * es + i * es, _MM_HINT_T0);                     \
            __m512 v0 = ld16_w(w0, W->dtype, i), v1 = ld16_w(w1, W->dtype, i), v2 = ld16_w(w2, W->dtype, i),            \
                   v3 = ld16_w(w3, W->dtype, i);                                                                        \
            for (int t = 0; t < NX; t++) {                                                                              \
                __m512 xv = _mm512_loadu_ps(x + t * ldx + i);                                                           \
                a[t][0] = _mm512_fmadd_ps(xv, v0, a[t][0]);                                                             \
                a[t][1] = _mm512_fmadd_ps(xv, v1, a[t][1]);                                                             \
                a[t][2] = _mm512_fmadd_ps(xv, v2, a[t][2]);                                                             \
                a[t][3] = _mm512_fmadd_ps(xv, v3, a[t][3]);                                                             \
            }                                                                                                           \
        }                                                                                                               \
        for (int t = 0; t < NX; t++)                                                                                    \
            for (int r = 0; r < 4; r++) out[t * ldo + (size_t)r * S] = _mm512_reduce_add_ps(a[t][r]);                  \
    } while (0)
static void rows4_x1(float *out, size_t ldo, const float *x, size_t ldx, const av_mat *W, int n0, int S) { ROWS4_BODY(1); }
static void rows4_x2(float *out, size_t ldo, const float *x, size_t ldx, const av_mat *W, int n0, int S) { ROWS4_BODY(2); }
static void rows4_x3(float *out, size_t ldo, const float *x, size_t ldx, const av_mat *W, int n0, int S) { ROWS4_BODY(3); }
static void rows4_x4(float *out, size_t ldo, const float *x, size_t ldx, const av_mat *W, int n0, int S) { ROWS4_BODY(4); }
#undef ROWS4_BODY
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
/* AVX2 machines: the same 4-row product (and the same prefetch of each stream's next row), 8 columns a step. */
static inline __m256 ld8_w(const void *w, av_dtype dt, size_t i) {
    switch (dt) {
    case AV_BF16: return av_ld8_bf16((const uint16_t *)w + i);
    case AV_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
    default: return _mm256_loadu_ps((const float *)w + i);
    }
}

#define ROWS4_AVX2(NX)                                                                                                  \
    do {                                                                                                                \
        size_t K = (size_t)W->cols, es = av_dtype_size(W->dtype), st = (size_t)S * K * es;                              \
        const char *b = (const char *)W->data + (size_t)n0 * K * es;                                                    \
        const void *w0 = b, *w1 = b + st, *w2 = b + 2 * st, *w3 = b + 3 * st;                                           \
        __m256 a[NX][4];                                                                                                \
        for (int t = 0; t < NX; t++) a[t][0] = a[t][1] = a[t][2] = a[t][3] = _mm256_setzero_ps();                       \
        for (size_t i = 0; i < K; i += 8) {                                                                             \
            if ((i * es) % 64 == 0)                                                                                     \
                for (int r = 0; r < 4; r++) _mm_prefetch(b + r * st + K * es + i * es, _MM_HINT_T0);                     \
            __m256 v0 = ld8_w(w0, W->dtype, i), v1 = ld8_w(w1, W->dtype, i), v2 = ld8_w(w2, W->dtype, i),               \
                   v3 = ld8_w(w3, W->dtype, i);                                                                         \
            for (int t = 0; t < NX; t++) {                                                                              \
                __m256 xv = _mm256_loadu_ps(x + t * ldx + i);                                                           \
                a[t][0] = _mm256_fmadd_ps(xv, v0, a[t][0]);                                                             \
                a[t][1] = _mm256_fmadd_ps(xv, v1, a[t][1]);                                                             \
                a[t][2] = _mm256_fmadd_ps(xv, v2, a[t][2]);                                                             \
                a[t][3] = _mm256_fmadd_ps(xv, v3, a[t][3]);                                                             \
            }                                                                                                           \
        }                                                                                                               \
        for (int t = 0; t < NX; t++)                                                                                    \
            for (int r = 0; r < 4; r++) out[t * ldo + (size_t)r * S] = av_hsum256(a[t][r]);                             \
    } while (0)
static void rows4_x1(float *out, size_t ldo, const float *x, size_t ldx, const av_mat *W, int n0, int S) { ROWS4_AVX2(1); }
static void rows4_x2(float *out, size_t ldo, const float *x, size_t ldx, const av_mat *W, int n0, int S) { ROWS4_AVX2(2); }
static void rows4_x3(float *out, size_t ldo, const float *x, size_t ldx, const av_mat *W, int n0, int S) { ROWS4_AVX2(3); }
static void rows4_x4(float *out, size_t ldo, const float *x, size_t ldx, const av_mat *W, int n0, int S) { ROWS4_AVX2(4); }
#undef ROWS4_AVX2
#define AV_ROWS4_AVX2 1
#endif

/* Quantized weights (quant/qmatmul.h): x prepared once (two int8 digits for decode rows, three for
 * prompt rows: f32-accurate), threads take chunks of 16 rows. 0 when out of memory. */
static int quant_rows(float *out, const float *x, const av_mat *W, int T) {
    static _Thread_local void *buf;
    static _Thread_local size_t cap;
    int nd = T > 4 ? 3 : 2;
    size_t need = av_qx_size_digits(T, W, nd);
    if (need > cap) {
        free(buf);
        buf = aligned_alloc(64, (need + 63) / 64 * 64);
        cap = buf ? need : 0;
        av_thread_scratch_track(&buf);
    }
    if (!buf) return 0;
    av_qx qx;
    av_qx_prepare_digits(&qx, buf, x, T, W, nd);
    int N = W->rows, nch = (N + 15) / 16;
#pragma omp parallel for schedule(dynamic, 2) if ((size_t)N * W->cols * T > (1u << 18))
    for (int c = 0; c < nch; c++) av_qmatmul_rows(out + 16 * c, (size_t)N, &qx, W, 16 * c, N < 16 * c + 16 ? N : 16 * c + 16);
    return 1;
}

/* Blocks of up to 64 rows as four streams of S = rows/4 consecutive rows each (row g, g+S, g+2S,
 * g+3S for g < S): a stream reads 64 KiB straight instead of 4 KiB before it jumps. 1 GiB bf16
 * product, 2 threads, same run: 27.3 / 26.7 GB/s against 22.3 / 24.4 for four adjacent rows
 * (bench/NOTES-cpu.md). */
void av_matvec_rows(float *out, size_t ldo, const float *x, size_t ldx, int nx, const av_mat *W, int r0, int r1) {
    int r = r0;
#if defined(__AVX512F__) || defined(AV_ROWS4_AVX2)
    if (W->cols % 16 == 0 && !W->q_bits) {
        int end = r0 + ((r1 - r0) & ~3);
        for (int t0 = 0; t0 < nx; t0 += 4) {
            int n = nx - t0 < 4 ? nx - t0 : 4;
            float *o = out + (size_t)t0 * ldo;
            const float *xt = x + (size_t)t0 * ldx;
            for (int b0 = r0; b0 < end; b0 += 64) {
                int S = (end - b0 < 64 ? end - b0 : 64) / 4;
                for (int g = 0; g < S; g++) switch (n) {
                    case 1: rows4_x1(o + (b0 - r0 + g), ldo, xt, ldx, W, b0 + g, S); break;
                    case 2: rows4_x2(o + (b0 - r0 + g), ldo, xt, ldx, W, b0 + g, S); break;
                    case 3: rows4_x3(o + (b0 - r0 + g), ldo, xt, ldx, W, b0 + g, S); break;
                    default: rows4_x4(o + (b0 - r0 + g), ldo, xt, ldx, W, b0 + g, S); break;
                    }
            }
        }
        r = end;
    }
#endif
    for (; r < r1; r++)
        for (int t = 0; t < nx; t++) out[(size_t)t * ldo + (r - r0)] = av_dot_row(x + (size_t)t * ldx, W, r);
}

/* Few rows of x: threads take chunks of 64 weight rows dynamically (a thread that loses its core to
 * another process does not stall the other) and read each chunk once for every x row. */
static void matmul_rows(float *out, const float *x, const av_mat *W, int T) {
    if (W->q_bits && quant_rows(out, x, W, T)) return;
    int N = W->rows, K = W->cols, nc = (N + 63) / 64;
#pragma omp parallel for schedule(dynamic, 1) if ((size_t)N * K * T > (1u << 18))
    for (int c = 0; c < nc; c++) {
        int r0 = c * 64, r1 = r0 + 64 < N ? r0 + 64 : N;
        av_matvec_rows(out + r0, (size_t)N, x, (size_t)K, T, W, r0, r1);
    }
}

#define PANEL_ROWS 128

#ifdef AV_HAVE_BLAS
/* Thread-local f32 panel for weight conversion (reused across calls). */
static float *panel_buf(size_t floats) {
    static _Thread_local float *buf;
    static _Thread_local size_t cap;
    if (floats > cap) {
        free(buf);
        buf = aligned_alloc(64, ((floats * 4 + 63) / 64) * 64);
        cap = buf ? floats : 0;
        av_thread_scratch_track((void **)&buf);
    }
    return buf;
}
#endif

void av_matmul_forward(float *out, const float *x, const av_mat *W, int T) {
    /* The row kernels for decode (T <= 4), and below 32 rows of x for half-precision weights (exact f32
     * products, as the panel + sgemm path below, without converting every panel per call) and for
     * quantized ones where the int8 kernel takes x as three digits (f32-accurate); the AMX GEMM from 32
     * rows (its bf16 hi/lo split of x is too coarse for short prompts: test_dropout's finite
     * differences). bench/NOTES-cpu-quant.md. */
    int short_rows = W->q_bits ? av_qx_max_digits() >= 3 : W->dtype == AV_F16 || W->dtype == AV_BF16;
    if (T > 4 && T < 32 && !W->q_bits && W->dtype == AV_BF16 && av_gemm_wt_exact(out, x, W, T)) return; /* AMX, x in 3 terms */
#if !defined(__AVX512F__)
    /* AVX2: the f32 GEMM's 16-token tiles beat the 4-row products from 12 rows (bf16 N 5632 K 2048, 2 threads:
     * 1.1x at 12, 1.65x at 16, 2x at 31; 0.8x at 8-10: the padding to 16). Exact f32 products as theirs. */
    if (T >= 12 && T < 32 && !W->q_bits && (W->dtype == AV_BF16 || W->dtype == AV_F16) && av_gemm_wt(out, x, W, T)) return;
#endif
    if (T <= 4 || (short_rows && T < 32)) { matmul_rows(out, x, W, T); return; }
    if (T >= 32 && (W->dtype != AV_F32 || W->q_bits) && av_gemm_wt(out, x, W, T)) return;
#ifdef AV_HAVE_BLAS
    int N = W->rows, K = W->cols;
    if (W->dtype == AV_F32 && !W->q_bits) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f, x, K, (const float *)W->data, K, 0.0f, out, N);
        return;
    }
    /* Threads take panels of weight rows (dynamic: a preempted thread does not hold the other back),
     * convert each into a thread-local f32 buffer and multiply it with a single-threaded sgemm
     * (OpenBLAS runs one thread inside a parallel region): one barrier per matmul. */
    int np = (N + PANEL_ROWS - 1) / PANEL_ROWS, fail = 0;
#pragma omp parallel
    {
        float *pan = panel_buf((size_t)PANEL_ROWS * K);
        if (!pan) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int p = 0; p < np; p++) {
            if (!pan) continue;
            int n0 = p * PANEL_ROWS, nr = N - n0 < PANEL_ROWS ? N - n0 : PANEL_ROWS;
            av_mat_rows_to_f32(pan, W, n0, nr);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, nr, K, 1.0f, x, K, pan, K, 0.0f, out + n0, N);
        }
    }
    if (fail) matmul_rows(out, x, W, T);
#else
    matmul_rows(out, x, W, T);
#endif
}

void av_matmul_backward(float *dx, float *dW, const float *dout, const float *x, const av_mat *W, int T) {
    int N = W->rows, K = W->cols;
    if (dW) { /* dW[N,K] += dout^T[N,T] x[T,K] */
#ifdef AV_HAVE_BLAS
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, K, T, 1.0f, dout, N, x, K, 1.0f, dW, K);
#else
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++)
            for (int t = 0; t < T; t++) av_axpy(dW + (size_t)n * K, dout[(size_t)t * N + n], x + (size_t)t * K, K);
#endif
    }
    if (!dx) return;
    if (av_gemm_dx_exact(dx, dout, W, T)) return; /* bf16 weights on AMX, f32-accurate */
    if (av_gemm_dx(dx, dout, W, T)) return;       /* packed or f16 weights on AMX (QLoRA) */
#ifdef AV_HAVE_BLAS
    if (W->dtype == AV_F32 && !W->q_bits) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, K, N, 1.0f, dout, N, (const float *)W->data, K, 1.0f, dx, K);
        return;
    }
    float *pan = panel_buf((size_t)PANEL_ROWS * K);
    if (pan) {
        for (int n0 = 0; n0 < N; n0 += PANEL_ROWS) {
            int nr = N - n0 < PANEL_ROWS ? N - n0 : PANEL_ROWS;
#pragma omp parallel for schedule(static)
            for (int r = 0; r < nr; r++) av_mat_rows_to_f32(pan + (size_t)r * K, W, n0 + r, 1);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, K, nr, 1.0f, dout + n0, N, pan, K, 1.0f, dx, K);
        }
        return;
    }
#endif
    /* portable: dx[t,:] += sum_n dout[t,n] W[n,:]; threads split t, rows converted per use */
#pragma omp parallel
    {
        float *row = malloc((size_t)K * sizeof(float));
#pragma omp for schedule(static)
        for (int t = 0; t < T; t++) {
            if (!row) continue;
            for (int n = 0; n < N; n++) {
                float g = dout[(size_t)t * N + n];
                if (g == 0.0f) continue;
                av_mat_rows_to_f32(row, W, n, 1);
                av_axpy(dx + (size_t)t * K, g, row, K);
            }
        }
        free(row);
    }
}
