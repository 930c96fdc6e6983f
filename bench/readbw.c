/* STREAM-like read bandwidth, the way decode reads weights: each OpenMP thread streams its half of a
 * large buffer (default 1 GiB) with AVX-512 loads, as 1 sequential stream and as 4 interleaved
 * streams (4 sub-ranges walked together, like the decode product's 4 weight rows);
 * and, linked against libanvil, the decode product itself (av_matvec_rows over a 1 GiB bf16
 * matrix of 2048 columns, threads taking 64-row chunks as decode does). Prints min / median GB/s of the reps.
 *   cc -O2 -march=native -fopenmp -Iinclude -Isrc bench/readbw.c build/libanvil.a -lm -o /tmp/readbw
 *   OMP_NUM_THREADS=2 /tmp/readbw [MiB=1024] [reps=15]
 * (libanvil is linked for av_matvec_rows only; add OpenBLAS's -L/-lopenblas as the Makefile does.) */
#include "ops/ops.h"
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static int cmpd(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

/* sum of p[0..n) read as S interleaved streams (S consecutive sub-ranges walked together, as the
 * decode product walks 4 weight rows); n a multiple of 16 * S */
static float read_sum(const float *p, size_t n, int S) {
    size_t m = n / S;
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    if (S == 4)
        for (size_t i = 0; i < m; i += 16) {
            a[0] = _mm512_add_ps(a[0], _mm512_load_ps(p + i));
            a[1] = _mm512_add_ps(a[1], _mm512_load_ps(p + m + i));
            a[2] = _mm512_add_ps(a[2], _mm512_load_ps(p + 2 * m + i));
            a[3] = _mm512_add_ps(a[3], _mm512_load_ps(p + 3 * m + i));
        }
    else
        for (size_t i = 0; i < n; i += 64) {
            a[0] = _mm512_add_ps(a[0], _mm512_load_ps(p + i));
            a[1] = _mm512_add_ps(a[1], _mm512_load_ps(p + i + 16));
            a[2] = _mm512_add_ps(a[2], _mm512_load_ps(p + i + 32));
            a[3] = _mm512_add_ps(a[3], _mm512_load_ps(p + i + 48));
        }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? (size_t)atoi(argv[1]) : 1024;
    int reps = argc > 2 ? atoi(argv[2]) : 15;
    size_t bytes = mib << 20, n = bytes / 4;
    float *buf = aligned_alloc(2 << 20, bytes);
    double *t = malloc(sizeof(double) * reps);
    if (!buf || !t) return 1;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 1023) * 1e-3f;
    volatile float sink = 0;
    for (int S = 1; S <= 4; S += 3) {
        for (int r = 0; r < reps; r++) {
            double t0 = now();
            float sum = 0;
#pragma omp parallel reduction(+ : sum)
            {
                int nt = omp_get_num_threads(), id = omp_get_thread_num();
                size_t per = (n / nt) / 64 * 64, a = per * id, b = id == nt - 1 ? n / 64 * 64 : a + per;
                sum += read_sum(buf + a, b - a, S);
            }
            t[r] = now() - t0;
            sink += sum;
        }
        qsort(t, reps, sizeof(double), cmpd);
        printf("read  %zu MiB, %d threads, %d stream%s per thread: best %.1f GB/s, median %.1f GB/s\n", mib, omp_get_max_threads(), S,
               S > 1 ? "s" : "", bytes / t[0] / 1e9, bytes / t[reps / 2] / 1e9);
    }
    free(buf);
    /* the decode product: 262144 x 2048 bf16 (1 GiB, above the 480 MiB the guest reports as L3) against one x row */
    int N = 262144, K = 2048;
    uint16_t *w = aligned_alloc(2 << 20, (size_t)N * K * 2);
    float *x = aligned_alloc(64, K * 4), *out = aligned_alloc(64, N * 4);
    if (!w || !x || !out) return 1;
    for (size_t i = 0; i < (size_t)N * K; i++) w[i] = (uint16_t)(0x3c00 + (i % 251));
    for (int k = 0; k < K; k++) x[k] = 1.0f / (1 + k);
    av_mat W = {.data = w, .dtype = AV_BF16, .rows = N, .cols = K};
    for (int r = 0; r < reps; r++) {
        double t0 = now();
#pragma omp parallel for schedule(dynamic, 1)
        for (int c = 0; c < N / 64; c++) av_matvec_rows(out + c * 64, N, x, K, 1, &W, c * 64, c * 64 + 64);
        t[r] = now() - t0;
    }
    qsort(t, reps, sizeof(double), cmpd);
    double wb = (double)N * K * 2;
    printf("matvec bf16 %dx%d, %d threads: best %.1f GB/s, median %.1f GB/s (out[7] %g)\n", N, K, omp_get_max_threads(), wb / t[0] / 1e9,
           wb / t[reps / 2] / 1e9, out[7]);
    (void)sink;
    return 0;
}
