/* Prefill GEMM out[T, N] = x[T, K] W^T for bf16/f16/f32 or quantized weights (AVX-512). x is transposed once into
 * 32-row blocks xt[T/32][K][32] shared by all threads; each thread converts (or dequantizes) panels of weight rows to
 * f32 (row stride padded so the 12 rows of a micro-panel fall in different cache sets) and runs a
 * 12x32 register-tile kernel (12 weight rows broadcast x 32 token rows in 2 zmm, 24 accumulators),
 * blocked over K so the xt slab stays in L2 and the weight micro-panel in L1. */
#include "ops/gemm.h"
#include "ops/simd.h"
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#ifndef MR
#define MR 12     /* weight rows per micro-tile */
#endif
#define NT 32     /* token rows per micro-tile (2 zmm) */
#ifndef KC
#define KC 256    /* K block */
#endif
#define NP (8 * MR) /* most weight rows per thread panel */

typedef struct { float *p; size_t cap; } buf_t;

static float *buf_get(buf_t *b, size_t floats) {
    if (floats > b->cap) {
        free(b->p);
        b->p = aligned_alloc(64, ((floats * 4 + 63) / 64) * 64);
        b->cap = b->p ? floats : 0;
    }
    return b->p;
}

/* acc[MR][lda] (+)= W[MR rows, ldw][k0..k0+kc) . xt[kc][32] */
static inline void kernel_12x32(float *acc, int lda, const float *w, int ldw, const float *xt, int kc, int first) {
    __m512 c[MR][2];
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) c[r][0] = c[r][1] = _mm512_setzero_ps();
    for (int k = 0; k < kc; k++) {
        __m512 x0 = _mm512_load_ps(xt + (size_t)k * NT), x1 = _mm512_load_ps(xt + (size_t)k * NT + 16);
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++) {
            __m512 b = _mm512_set1_ps(w[(size_t)r * ldw + k]);
            c[r][0] = _mm512_fmadd_ps(b, x0, c[r][0]);
            c[r][1] = _mm512_fmadd_ps(b, x1, c[r][1]);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) {
        float *a = acc + (size_t)r * lda;
        if (!first) {
            c[r][0] = _mm512_add_ps(c[r][0], _mm512_load_ps(a));
            c[r][1] = _mm512_add_ps(c[r][1], _mm512_load_ps(a + 16));
        }
        _mm512_store_ps(a, c[r][0]);
        _mm512_store_ps(a + 16, c[r][1]);
    }
}

int av_gemm_wt(float *out, const float *x, const av_mat *W, int T) {
    static _Thread_local buf_t xtb; /* per calling thread: sessions on other threads have their own */
    int N = W->rows, K = W->cols, TB = (T + NT - 1) / NT, Tp = TB * NT, ldw = K + 16;
    float *xt = buf_get(&xtb, (size_t)Tp * K);
    if (!xt) return 0;
    /* panels: at most NP rows, at least 4 per thread so small matrices (k/v) still balance */
    int nth = omp_get_max_threads(), prow = (N + 4 * nth - 1) / (4 * nth);
    prow = (prow + MR - 1) / MR * MR;
    if (prow > NP) prow = NP;
    if (prow < 2 * MR) prow = 2 * MR;
    int np = (N + prow - 1) / prow, fail = 0;
#pragma omp parallel
    {
        /* transpose x into xt[tb][k][32] (zero rows past T) */
#pragma omp for schedule(static)
        for (int tb = 0; tb < TB; tb++) {
            float *d = xt + (size_t)tb * K * NT;
            for (int j = 0; j < NT; j++) {
                int t = tb * NT + j;
                if (t < T) {
                    const float *xr = x + (size_t)t * K;
                    for (int k = 0; k < K; k++) d[(size_t)k * NT + j] = xr[k];
                } else
                    for (int k = 0; k < K; k++) d[(size_t)k * NT + j] = 0.0f;
            }
        }
        static _Thread_local buf_t wb, ab;
        float *wp = buf_get(&wb, (size_t)NP * ldw), *acc = buf_get(&ab, (size_t)NP * Tp);
        if (!wp || !acc) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int p = 0; p < np; p++) {
            if (!wp || !acc) continue;
            int n0 = p * prow, nr = N - n0 < prow ? N - n0 : prow, nmr = (nr + MR - 1) / MR * MR;
            for (int r = 0; r < nr; r++) av_mat_rows_to_f32(wp + (size_t)r * ldw, W, n0 + r, 1);
            for (int r = nr; r < nmr; r++) memset(wp + (size_t)r * ldw, 0, (size_t)K * sizeof(float));
            for (int k0 = 0; k0 < K; k0 += KC) {
                int kc = K - k0 < KC ? K - k0 : KC;
                for (int m = 0; m < nmr; m += MR)
                    for (int tb = 0; tb < TB; tb++)
                        kernel_12x32(acc + (size_t)m * Tp + tb * NT, Tp, wp + (size_t)m * ldw + k0, ldw,
                                     xt + ((size_t)tb * K + k0) * NT, kc, k0 == 0);
            }
            for (int t = 0; t < T; t++) {
                float *o = out + (size_t)t * N + n0;
                for (int r = 0; r < nr; r++) o[r] = acc[(size_t)r * Tp + t];
            }
        }
    }
    return !fail;
}
#else
int av_gemm_wt(float *out, const float *x, const av_mat *W, int T) {
    (void)out; (void)x; (void)W; (void)T;
    return 0;
}
#endif
