/* Microbenchmark of the quantized CPU products (not part of the test suite):
 *   qmatmul_bench BITS GROUP N K T REPS
 * times av_matmul_forward(out[T,N], x[T,K], W quantized BITS/GROUP, bf16 scales) (all OpenMP threads)
 * and prints the best and median time, GB/s of weights read (packed words + scales + biases) and
 * GFLOP/s. BITS 16 = the plain bf16 matrix for reference.
 * Build: make CUDA=0 && cc -O2 -march=native -fopenmp -Iinclude -Isrc bench/qmatmul_bench.c build/libanvil.a ... (see NOTES-cpu-quant.md) */
#include "ops/ops.h"
#include "quant/affine.h"
#include "quant/qmatmul.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmpd(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s BITS GROUP N K T REPS\n", argv[0]);
        return 2;
    }
    int bits = atoi(argv[1]), group = atoi(argv[2]), N = atoi(argv[3]), K = atoi(argv[4]), T = atoi(argv[5]), reps = atoi(argv[6]);
    float *w = malloc(sizeof(float) * (size_t)N * K), *x = malloc(sizeof(float) * (size_t)T * K), *out = malloc(sizeof(float) * (size_t)T * N);
    unsigned s = 1;
    for (size_t i = 0; i < (size_t)N * K; i++) w[i] = ((s = s * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
    for (size_t i = 0; i < (size_t)T * K; i++) x[i] = ((s = s * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
    av_mat W;
    size_t bytes;
    if (bits == 16) {
        uint16_t *b16 = malloc(2 * (size_t)N * K);
        for (size_t i = 0; i < (size_t)N * K; i++) b16[i] = av_f32_to_bf16(w[i]);
        W = (av_mat){.data = b16, .dtype = AV_BF16, .rows = N, .cols = K};
        bytes = 2 * (size_t)N * K;
    } else {
        int ng = K / group;
        uint32_t *pk = calloc((size_t)N * av_quant_row_words(K, bits), 4);
        uint16_t *sc = malloc(2 * (size_t)N * ng), *bs = malloc(2 * (size_t)N * ng);
        av_quant_matrix(pk, sc, bs, AV_BF16, w, N, K, bits, group);
        W = (av_mat){.data = pk, .dtype = AV_BF16, .rows = N, .cols = K, .q_bits = bits, .q_group = group, .scales = sc, .biases = bs};
        bytes = (size_t)N * av_quant_row_words(K, bits) * 4 + 4 * (size_t)N * ng;
    }
    double *t = malloc(sizeof(double) * reps);
    av_matmul_forward(out, x, &W, T);
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        av_matmul_forward(out, x, &W, T);
        t[r] = now() - t0;
    }
    qsort(t, reps, sizeof *t, cmpd);
    double med = t[reps / 2];
    printf("%s bits %d g %d N %d K %d T %d: best %.3f ms median %.3f ms  %.1f GB/s (median)  %.1f GFLOP/s\n", av_qmatmul_impl(), bits, group, N,
           K, T, t[0] * 1e3, med * 1e3, bytes / med * 1e-9, 2.0 * N * K * T / med * 1e-9);
    return 0;
}
