/* Prefill GEMM out[T, N] = x[T, K] W^T for bf16/f16/f32 or quantized weights (AVX-512 or AVX2 + FMA). x is
 * transposed once into NT-row blocks xt[T/NT][K][NT] shared by all threads; each thread converts (or dequantizes)
 * panels of weight rows to f32 (row stride padded so the MR rows of a micro-panel fall in different cache sets)
 * and runs an MR x NT register-tile kernel (MR weight rows broadcast x NT token rows in 2 vectors, 2 MR
 * accumulators): AVX-512 12 x 32 (24 zmm accumulators), AVX2 6 x 16 (12 of the 16 ymm),
 * blocked over K so the xt slab stays in L2 and the weight micro-panel in L1. */
#include "ops/gemm.h"
#include "ops/simd.h"
#include "core/memory.h"
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#if defined(__AVX512F__)
#define MR 12     /* weight rows per micro-tile */
#define NT 32     /* token rows per micro-tile (2 zmm) */
#define KC 256    /* K block: the xt slab (Tp x KC) in L2 */
#else
#define MR 6
#define NT 16     /* 2 ymm */
#define KC 128    /* L2 of 512 KB (Zen 2/3): half of it for the slab at T 512 */
#endif
#define NP (8 * MR) /* most weight rows per thread panel */

typedef struct { void *p; size_t cap; } buf_t; /* cap in bytes */

/* a 64-byte aligned scratch of at least `bytes`, kept per thread and grown on demand */
static void *buf_bytes(buf_t *b, size_t bytes) {
    if (bytes > b->cap) {
        free(b->p);
        b->p = aligned_alloc(64, (bytes + 63) / 64 * 64);
        b->cap = b->p ? bytes : 0;
        av_thread_scratch_track(&b->p); /* every buf_t is static _Thread_local */
    }
    return b->p;
}
static float *buf_get(buf_t *b, size_t floats) { return buf_bytes(b, floats * sizeof(float)); }

/* acc[MR][lda] (+)= W[MR rows, ldw][k0..k0+kc) . xt[kc][NT] */
#if defined(__AVX512F__)
static inline void kernel_tile(float *acc, int lda, const float *w, int ldw, const float *xt, int kc, int first) {
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
#else
static inline void kernel_tile(float *acc, int lda, const float *w, int ldw, const float *xt, int kc, int first) {
    __m256 c[MR][2];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) c[r][0] = c[r][1] = _mm256_setzero_ps();
    for (int k = 0; k < kc; k++) {
        __m256 x0 = _mm256_load_ps(xt + (size_t)k * NT), x1 = _mm256_load_ps(xt + (size_t)k * NT + 8);
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            __m256 b = _mm256_broadcast_ss(w + (size_t)r * ldw + k);
            c[r][0] = _mm256_fmadd_ps(b, x0, c[r][0]);
            c[r][1] = _mm256_fmadd_ps(b, x1, c[r][1]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
        float *a = acc + (size_t)r * lda;
        if (!first) {
            c[r][0] = _mm256_add_ps(c[r][0], _mm256_load_ps(a));
            c[r][1] = _mm256_add_ps(c[r][1], _mm256_load_ps(a + 8));
        }
        _mm256_store_ps(a, c[r][0]);
        _mm256_store_ps(a + 8, c[r][1]);
    }
}
#endif


#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
/* ---- bf16 weights on AMX. x is split once into two bf16 terms, hi = bf16(x) and lo = bf16(x - hi),
 * so x . w = hi . w + lo . w to ~2^-16 relative per element (bf16 weights are exact): the tile
 * product accumulates both in f32, near the f32 GEMM's accuracy at a fraction of its time.
 * The weights are the A operand, each thread's panel of rows copied into contiguous 16 x 32 tiles
 * (the rows in place are 2K bytes apart: every row of a tile in one L1 set); x^T is the B operand, packed once per call in AMX's pair-interleaved layout xp[t/16][k/2][t%16] (one
 * dword = the bf16 pair x[t][k], x[t][k+1]). Threads take panels of weight rows and run
 * 32-row x 32-token blocks: 4 f32 accumulator tiles, 2 weight tiles, 2 x tiles (hi, then lo). */
#include <cpuid.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <unistd.h>

/* AMX-BF16 present and the kernel grants this process the tile state (Linux arch_prctl) */
static int amx_ready(void) {
    static _Atomic int st; /* 0 unknown, 1 yes, -1 no */
    int s = atomic_load(&st);
    if (s) return s > 0;
    unsigned a, b, c, d;
    int ok = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 1) && (d >> 22 & 1);
#ifdef SYS_arch_prctl
    if (ok) ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
#else
    ok = 0;
#endif
    atomic_store(&st, ok ? 1 : -1);
    return ok;
}

typedef struct {
    uint8_t palette, start_row, rsv[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_cfg;

static void amx_config(void) {
    tile_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) cfg.colsb[i] = 64, cfg.rows[i] = 16;
    _tile_loadconfig(&cfg);
}


/* 16 floats -> bf16 hi = bf16(v), lo = bf16(v - hi) */
static inline void split_bf16(__m512 v, __m256bh *hi, __m256bh *lo) {
    *hi = _mm512_cvtneps_pbh(v);
    __m512 hv = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)*hi), 16));
    *lo = _mm512_cvtneps_pbh(_mm512_sub_ps(v, hv));
}

/* 16 floats -> three bf16 terms hi + lo + mid: all of f32's 24 mantissa bits ((v - hi) - lo is exact) */
static inline void split3_bf16(__m512 v, __m256bh *hi, __m256bh *lo, __m256bh *mid) {
    split_bf16(v, hi, lo);
    __m512 hv = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)*hi), 16));
    __m512 lv = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)*lo), 16));
    *mid = _mm512_cvtneps_pbh(_mm512_sub_ps(_mm512_sub_ps(v, hv), lv));
}

/* The 2 x 2 block of f32 accumulator tiles 0-3 over A tiles 4, 5 and B tiles 6, 7 (C[a][b] = tile 2a + b),
 * and its store as cb[32][32] (rows of A, columns of B). */
static inline void zero_2x2(void) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
}
static inline void mma_2x2(void) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
}
static inline void store_2x2(float *cb) {
    _tile_stored(0, cb, 128);
    _tile_stored(1, cb + 16, 128);
    _tile_stored(2, cb + 16 * 32, 128);
    _tile_stored(3, cb + 16 * 32 + 16, 128);
}

/* w (f32 row) -> hi tile row, lo tile row: w = hi + lo to ~2^-16 relative */
static void split_row(uint16_t *hi, uint16_t *lo, const float *w, int K) {
    for (int k = 0; k < K; k += 16) {
        __m256bh hb, lb;
        split_bf16(_mm512_loadu_ps(w + k), &hb, &lb);
        /* tile layout: 32 columns per tile row, tiles 512 elements apart */
        _mm256_storeu_si256((__m256i *)(hi + (size_t)(k / 32) * 512 + k % 32), (__m256i)hb);
        _mm256_storeu_si256((__m256i *)(lo + (size_t)(k / 32) * 512 + k % 32), (__m256i)lb);
    }
}

/* out[T, N] = x W^T, K % 32 == 0. bf16 weights are exact in one bf16 tile; any other (f32, f16,
 * quantized: dequantized a panel at a time) is split like x into hi + lo, one more tile product
 * per step (hi.hi + hi.lo + lo.hi; lo.lo is below 2^-16). */
static int gemm_amx(float *out, const float *x, const av_mat *W, int T, int exact) {
    static _Thread_local buf_t xb;
    int N = W->rows, K = W->cols, two = !(W->dtype == AV_BF16 && !W->q_bits);
    /* exact (bf16 weights only): x in three bf16 terms, hi + lo + bf16(x - hi - lo), all of f32's 24
     * mantissa bits; the products are exact in the f32 accumulators, as the f32 GEMM's */
    int three = exact && !two;
    if (exact && two) return 0;
    const uint16_t *w = (const uint16_t *)W->data;
    int K2 = K / 2, TB = (T + 31) / 32 * 2; /* 16-token blocks, an even count */
    /* panel rows: the weight panel (rows x K bf16) stays in L2 while every token block passes */
    int np_rows = (int)((size_t)(768 << 10) / ((size_t)K * 2)) / 32 * 32;
    np_rows = np_rows < 32 ? 32 : np_rows > 128 ? 128 : np_rows;
    uint32_t *xh = buf_bytes(&xb, sizeof(uint32_t) * (three ? 3 : 2) * TB * 16 * K2), *xl = xh ? xh + (size_t)TB * 16 * K2 : NULL;
    uint32_t *xm = three && xh ? xl + (size_t)TB * 16 * K2 : NULL; /* the third term */
    if (!xh) return 0;
    int npan = (N + np_rows - 1) / np_rows, fail = 0;
#pragma omp parallel
    {
        /* x -> hi, lo pairs (tokens past T zero) */
#pragma omp for schedule(static)
        for (int t = 0; t < TB * 16; t++) {
            size_t at = (size_t)(t / 16) * K2 * 16 + t % 16;
            uint32_t *h = xh + at, *l = xl + at, *m = three ? xm + at : NULL;
            if (t >= T) {
                for (int kk = 0; kk < K2; kk++) h[(size_t)kk * 16] = l[(size_t)kk * 16] = 0;
                if (m) for (int kk = 0; kk < K2; kk++) m[(size_t)kk * 16] = 0;
                continue;
            }
            const float *xr = x + (size_t)t * K;
            for (int k = 0; k < K; k += 16) {
                __m256bh hb, lb, mb;
                __m512 v = _mm512_loadu_ps(xr + k);
                if (m) split3_bf16(v, &hb, &lb, &mb);
                else split_bf16(v, &hb, &lb);
                uint32_t hp[8], lp[8], mp[8];
                _mm256_storeu_si256((__m256i *)hp, (__m256i)hb);
                _mm256_storeu_si256((__m256i *)lp, (__m256i)lb);
                if (m) {
                    _mm256_storeu_si256((__m256i *)mp, (__m256i)mb);
                    for (int j = 0; j < 8; j++) m[(size_t)(k / 2 + j) * 16] = mp[j];
                }
                for (int j = 0; j < 8; j++) h[(size_t)(k / 2 + j) * 16] = hp[j], l[(size_t)(k / 2 + j) * 16] = lp[j];
            }
        }
        static _Thread_local buf_t wb;
        static _Thread_local buf_t fb;
        uint16_t *wp = buf_bytes(&wb, sizeof(uint16_t) * (two ? 2 : 1) * np_rows * K), *wl = two && wp ? wp + (size_t)np_rows * K : NULL;
        float *frow = two ? buf_get(&fb, (size_t)K) : NULL;
        if (!wp || (two && !frow)) wp = NULL;
        if (!wp) {
#pragma omp atomic write
            fail = 1;
        } else
            amx_config();
        float cb[32 * 32] __attribute__((aligned(64)));
#pragma omp for schedule(dynamic, 1)
        for (int p = 0; p < npan; p++) {
            if (!wp) continue;
            int n0 = p * np_rows, nr = N - n0 < np_rows ? N - n0 : np_rows, nrp = (nr + 31) / 32 * 32;
            /* the panel as contiguous tiles: wp[row / 16][k / 32][row % 16][32] (rows past N zero) */
            for (int r = 0; r < nrp; r++) {
                size_t off = (size_t)(r / 16) * 16 * K + (size_t)(r % 16) * 32;
                uint16_t *d = wp + off;
                if (r >= nr) {
                    for (int kb = 0; kb < K / 32; kb++) memset(d + (size_t)kb * 512, 0, 64);
                    if (two) for (int kb = 0; kb < K / 32; kb++) memset(wl + off + (size_t)kb * 512, 0, 64);
                    continue;
                }
                if (two) {
                    av_mat_rows_to_f32(frow, W, n0 + r, 1);
                    split_row(d, wl + off, frow, K);
                    continue;
                }
                const uint16_t *src = w + (size_t)(n0 + r) * K;
                for (int kb = 0; kb < K / 32; kb++) memcpy(d + (size_t)kb * 512, src + (size_t)kb * 32, 64);
            }
            for (int t0 = 0; t0 < TB * 16; t0 += 32)
                for (int r0 = 0; r0 < nr; r0 += 32) {
                    int rr = nr - r0 < 32 ? nr - r0 : 32, tt = T - t0 < 32 ? T - t0 : 32;
                    const uint16_t *a0 = wp + (size_t)r0 * K, *a1 = a0 + (size_t)16 * K;
                    const uint32_t *h0 = xh + (size_t)(t0 / 16) * K2 * 16, *h1 = h0 + (size_t)K2 * 16;
                    const uint32_t *l0 = xl + (size_t)(t0 / 16) * K2 * 16, *l1 = l0 + (size_t)K2 * 16;
                    const uint32_t *m0 = three ? xm + (size_t)(t0 / 16) * K2 * 16 : NULL, *m1 = three ? m0 + (size_t)K2 * 16 : NULL;
                    zero_2x2();
                    for (int kk = 0; kk < K2; kk += 16) {
                        _tile_loadd(4, a0 + (size_t)kk * 32, 64);
                        _tile_loadd(5, a1 + (size_t)kk * 32, 64);
                        _tile_loadd(6, h0 + (size_t)kk * 16, 64);
                        _tile_loadd(7, h1 + (size_t)kk * 16, 64);
                        mma_2x2();
                        _tile_loadd(6, l0 + (size_t)kk * 16, 64);
                        _tile_loadd(7, l1 + (size_t)kk * 16, 64);
                        mma_2x2();
                        if (three) { /* x's third term */
                            _tile_loadd(6, m0 + (size_t)kk * 16, 64);
                            _tile_loadd(7, m1 + (size_t)kk * 16, 64);
                            mma_2x2();
                        }
                        if (two) { /* the weights' lo part times x's hi part */
                            _tile_loadd(4, wl + (a0 - wp) + (size_t)kk * 32, 64);
                            _tile_loadd(5, wl + (a1 - wp) + (size_t)kk * 32, 64);
                            _tile_loadd(6, h0 + (size_t)kk * 16, 64);
                            _tile_loadd(7, h1 + (size_t)kk * 16, 64);
                            mma_2x2();
                        }
                    }
                    /* cb[row][token] */
                    store_2x2(cb);
                    for (int t = 0; t < tt; t++) {
                        float *o = out + (size_t)(t0 + t) * N + n0 + r0;
                        for (int r = 0; r < rr; r++) o[r] = cb[r * 32 + t];
                    }
                }
        }
        if (wp) _tile_release();
    }
    return !fail;
}
/* ---- the backward product dx[T, K] += d[T, N] . W[N, K] on AMX. W is the B operand: B tile row j =
 * rows 2j and 2j+1 of a 32-row block interleaved per column (one dword = the pair), 16 columns a tile.
 * bf16 weights go in as they lie and d as the A operand in three bf16 terms (all of f32's mantissa):
 * the products are f32-accurate, as the f32 GEMM on converted panels they replace. Other weights
 * (packed, f16, K-quants) are converted to f32 a chunk of rows at a time and split, like d, into hi +
 * lo: hi.hi + hi.lo + lo.hi, ~2^-16 of each product (the forward's accuracy on such weights).
 * Threads take groups of 32-column panels of dx. */
static int gemm_amx_dx(float *dx, const float *d, const av_mat *W, int T) {
    static _Thread_local buf_t ab;
    static _Thread_local buf_t wq; /* converted weights of a chunk, per calling thread */
    int N = W->rows, K = W->cols, Tp = (T + 31) / 32 * 32, NB = N / 32, two = !(W->dtype == AV_BF16 && !W->q_bits);
    int terms = two ? 2 : 3;
    const uint16_t *w = (const uint16_t *)W->data;
    /* a[term][t / 16][nb][t % 16][32] */
    size_t term = (size_t)Tp * N;
    uint16_t *a = buf_bytes(&ab, sizeof(uint16_t) * terms * term);
    if (!a) return 0;
    int fail = 0, npan = K / 32;
    /* column blocks of d a chunk: its terms for every token in <= 768 KB, read from L2 by every
     * 32-column panel of dx instead of streaming all of d from memory once per panel (TinyLlama LoRA,
     * 124 rows, 2 threads: 1.5-1.8x); at most 32 blocks, so W's packed tiles stay within 512 KB */
    int NBC = (int)(((size_t)768 << 10) / ((size_t)terms * Tp * 32 * sizeof(uint16_t)));
    NBC = NBC < 1 ? 1 : NBC > 32 ? 32 : NBC > NB ? NB : NBC;
    /* other weights: the chunk's rows converted once, hi and lo tiles for every panel: [term][panel][nb - c0][2][16][16] */
    size_t qterm = (size_t)npan * NBC * 2 * 256;
    uint32_t *bq = two ? buf_bytes(&wq, sizeof(uint32_t) * 2 * qterm) : NULL;
    if (two && !bq) return 0;
    /* a thread's work item: GP 32-column panels of dx, so each W row is read as one longer run */
    enum { GP = 8 };
    int ngrp = (npan + GP - 1) / GP;
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int t = 0; t < Tp; t++)
            for (int nb = 0; nb < NB; nb++) {
                size_t at = ((size_t)(t / 16) * NB + nb) * 512 + (size_t)(t % 16) * 32;
                for (int h = 0; h < 32; h += 16) {
                    __m512 v = t < T ? _mm512_loadu_ps(d + (size_t)t * N + nb * 32 + h) : _mm512_setzero_ps();
                    __m256bh hb, lb, mb;
                    if (two) split_bf16(v, &hb, &lb);
                    else split3_bf16(v, &hb, &lb, &mb);
                    _mm256_storeu_si256((__m256i *)(a + at + h), (__m256i)hb);
                    _mm256_storeu_si256((__m256i *)(a + term + at + h), (__m256i)lb);
                    if (!two) _mm256_storeu_si256((__m256i *)(a + 2 * term + at + h), (__m256i)mb);
                }
            }
        static _Thread_local buf_t bb, fb;
        uint32_t *b = two ? NULL : buf_bytes(&bb, sizeof(uint32_t) * (size_t)GP * NBC * 2 * 256); /* [panel][nb - c0][2 tiles][16][16] */
        float *frow = two ? buf_get(&fb, (size_t)2 * K) : NULL;
        if (two ? !frow : !b) {
#pragma omp atomic write
            fail = 1;
        } else
            amx_config();
        int ok = two ? frow != NULL : b != NULL;
        float cb[32 * 32] __attribute__((aligned(64)));
        for (int c0 = 0; c0 < NB; c0 += NBC) { /* a chunk of d's columns at a time, so its tiles stay in L2 */
            int c1 = c0 + NBC < NB ? c0 + NBC : NB;
            if (two) { /* the chunk's row pairs to f32, split, interleaved into every panel's tiles */
#pragma omp for schedule(static)
                for (int rp = c0 * 16; rp < c1 * 16; rp++) {
                    if (!ok) continue;
                    int nb = rp / 16, j = rp % 16;
                    av_mat_rows_to_f32(frow, W, 2 * rp, 2);
                    for (int k = 0; k < K; k += 16) {
                        __m256bh h0, l0, h1, l1;
                        split_bf16(_mm512_loadu_ps(frow + k), &h0, &l0);
                        split_bf16(_mm512_loadu_ps(frow + K + k), &h1, &l1);
                        size_t at = (((size_t)(k / 32) * NBC + (nb - c0)) * 2 + (k % 32) / 16) * 256 + (size_t)j * 16;
                        __m512i hh = _mm512_or_si512(_mm512_cvtepu16_epi32((__m256i)h0), _mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)h1), 16));
                        __m512i ll = _mm512_or_si512(_mm512_cvtepu16_epi32((__m256i)l0), _mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)l1), 16));
                        _mm512_storeu_si512(bq + at, hh);
                        _mm512_storeu_si512(bq + qterm + at, ll);
                    }
                }
            }
#pragma omp for schedule(dynamic, 1)
            for (int g = 0; g < ngrp; g++) {
                if (!ok) continue;
                int p0 = g * GP, np = npan - p0 < GP ? npan - p0 : GP;
                /* bf16: the group's columns of W's chunk rows, each row read as one run of np * 64 bytes */
                for (int nb = c0; nb < c1 && !two; nb++)
                    for (int j = 0; j < 16; j++) {
                        const uint16_t *r0 = w + (size_t)(nb * 32 + 2 * j) * K + (size_t)p0 * 32, *r1 = r0 + K;
                        for (int pp = 0; pp < np; pp++)
                            for (int h = 0; h < 2; h++) {
                                __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(r0 + pp * 32 + 16 * h)));
                                __m512i hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(r1 + pp * 32 + 16 * h)));
                                _mm512_storeu_si512(b + (((size_t)pp * NBC + (nb - c0)) * 2 + h) * 256 + (size_t)j * 16,
                                                    _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
                            }
                    }
                for (int pp = 0; pp < np; pp++) {
                    int k0 = (p0 + pp) * 32;
                    const uint32_t *bp = two ? bq + (size_t)(p0 + pp) * NBC * 2 * 256 : b + (size_t)pp * NBC * 2 * 256;
                    for (int t0 = 0; t0 < Tp; t0 += 32) {
                        zero_2x2();
                        for (int nb = c0; nb < c1; nb++) {
                            for (int wt = 0; wt < (two ? 2 : 1); wt++) { /* W's hi, then (other weights) its lo */
                                const uint32_t *bt = bp + (size_t)wt * qterm + ((size_t)(nb - c0) * 2) * 256;
                                _tile_loadd(6, bt, 64);
                                _tile_loadd(7, bt + 256, 64);
                                for (int tm = 0; tm < terms - wt; tm++) { /* d's terms: all with W's hi; hi with W's lo */
                                    const uint16_t *a0 = a + tm * term + ((size_t)(t0 / 16) * NB + nb) * 512, *a1 = a0 + (size_t)NB * 512;
                                    _tile_loadd(4, a0, 64);
                                    _tile_loadd(5, a1, 64);
                                    mma_2x2();
                                }
                            }
                        }
                        /* cb[t][k] */
                        store_2x2(cb);
                        int tt = T - t0 < 32 ? T - t0 : 32;
                        for (int t = 0; t < tt; t++) {
                            float *o = dx + (size_t)(t0 + t) * K + k0;
                            for (int h = 0; h < 32; h += 16)
                                _mm512_storeu_ps(o + h, _mm512_add_ps(_mm512_loadu_ps(o + h), _mm512_load_ps(cb + t * 32 + h)));
                        }
                    }
                }
            }
        }
        if (ok) _tile_release();
    }
    return !fail;
}
#endif

int av_gemm_dx_exact(float *dx, const float *dout, const av_mat *W, int T) {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
    return W->dtype == AV_BF16 && !W->q_bits && W->rows % 32 == 0 && W->cols % 32 == 0 && T > 0 && amx_ready() && gemm_amx_dx(dx, dout, W, T);
#else
    (void)dx; (void)dout; (void)W; (void)T;
    return 0;
#endif
}

int av_gemm_dx(float *dx, const float *dout, const av_mat *W, int T) {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
    return (W->q_bits || W->dtype == AV_F16) && W->rows % 32 == 0 && W->cols % 32 == 0 && T > 0 && amx_ready() && gemm_amx_dx(dx, dout, W, T);
#else
    (void)dx; (void)dout; (void)W; (void)T;
    return 0;
#endif
}

int av_gemm_wt_exact(float *out, const float *x, const av_mat *W, int T) {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
    return W->cols % 32 == 0 && amx_ready() && gemm_amx(out, x, W, T, 1);
#else
    (void)out; (void)x; (void)W; (void)T;
    return 0;
#endif
}

int av_gemm_wt(float *out, const float *x, const av_mat *W, int T) {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
    if (W->cols % 32 == 0 && amx_ready() && gemm_amx(out, x, W, T, 0)) return 1;
#endif
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
                        kernel_tile(acc + (size_t)m * Tp + tb * NT, Tp, wp + (size_t)m * ldw + k0, ldw,
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
#else /* neither AVX-512 nor AVX2 + FMA: callers take their BLAS or row paths */
int av_gemm_wt(float *out, const float *x, const av_mat *W, int T) {
    (void)out; (void)x; (void)W; (void)T;
    return 0;
}
int av_gemm_wt_exact(float *out, const float *x, const av_mat *W, int T) {
    (void)out; (void)x; (void)W; (void)T;
    return 0;
}
int av_gemm_dx_exact(float *dx, const float *dout, const av_mat *W, int T) {
    (void)dx; (void)dout; (void)W; (void)T;
    return 0;
}
int av_gemm_dx(float *dx, const float *dout, const av_mat *W, int T) {
    (void)dx; (void)dout; (void)W; (void)T;
    return 0;
}
#endif
