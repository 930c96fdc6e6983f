/* Prefill product microbenchmark: av_matmul_forward on T x K f32 activations and N x K bf16 weights
 * (default the MLP's 512 x 2048 -> 5632), best and median GFLOP/s of the repetitions on the OpenMP
 * threads, and the error against a double-precision reference on 256 sampled outputs (max |err|
 * over max |out| of the sample).
 *   cc -O2 -march=native -fopenmp -Iinclude -Isrc bench/gemm.c build/libanvil.a -lm \
 *      -L/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas -o /tmp/gemm
 *   OMP_NUM_THREADS=2 /tmp/gemm [T N K reps] */
#include "ops/ops.h"
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static int cmpd(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

int main(int argc, char **argv) {
    int T = argc > 1 ? atoi(argv[1]) : 512, N = argc > 2 ? atoi(argv[2]) : 5632, K = argc > 3 ? atoi(argv[3]) : 2048,
        reps = argc > 4 ? atoi(argv[4]) : 7;
    uint16_t *w = malloc(sizeof(uint16_t) * (size_t)N * K);
    float *x = malloc(sizeof(float) * (size_t)T * K), *out = malloc(sizeof(float) * (size_t)T * N);
    double *t = malloc(sizeof(double) * reps);
    if (!w || !x || !out || !t) return 1;
    unsigned s = 12345;
    for (size_t i = 0; i < (size_t)N * K; i++) {
        s = s * 1664525u + 1013904223u;
        w[i] = av_f32_to_bf16(((float)(s >> 8) / 16777216.0f - 0.5f) * 0.1f);
    }
    for (size_t i = 0; i < (size_t)T * K; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = ((float)(s >> 8) / 16777216.0f - 0.5f) * 4.0f;
    }
    av_mat W = {.data = w, .dtype = AV_BF16, .rows = N, .cols = K};
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        av_matmul_forward(out, x, &W, T);
        t[r] = now() - t0;
    }
    double maxe = 0, maxo = 0;
    for (int j = 0; j < 256; j++) {
        int tt = (j * 7919) % T, n = (j * 104729) % N;
        double ref = 0;
        for (int k = 0; k < K; k++) ref += (double)x[(size_t)tt * K + k] * av_bf16_to_f32(w[(size_t)n * K + k]);
        double e = fabs(ref - out[(size_t)tt * N + n]);
        maxe = e > maxe ? e : maxe;
        maxo = fabs(ref) > maxo ? fabs(ref) : maxo;
    }
    qsort(t, reps, sizeof(double), cmpd);
    double fl = 2.0 * T * N * K;
    printf("gemm T=%d N=%d K=%d, %d threads: best %.1f GFLOP/s, median %.1f GFLOP/s, err %.2e (max|out| %.3g)\n", T, N, K,
           omp_get_max_threads(), fl / t[0] / 1e9, fl / t[reps / 2] / 1e9, maxe / maxo, maxo);
    return 0;
}
