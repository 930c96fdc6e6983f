/* The prefill GEMM (src/ops/gemm.c, compiled into this binary) against a double-precision reference:
 * av_gemm_wt on bf16, f16 and 4-bit (dequantized panels) weights for T = 32, 33, 100 tokens (whole and
 * partial token blocks), N = 45 rows (partial micro-panels and thread panels), K = 64, 300 (shorter and
 * longer than a K block, not a multiple of it), each output within 1e-5 * sum |x w| + 1e-6 of
 * sum x w over the weights as stored (f32 products summed in another order: ~K ulp at worst).
 * AMX builds take bf16-split products (~2^-16 of each), checked at 4e-5 there.
 * Then prompt rows (5-31) of bf16 weights through av_matmul_forward at the same bound (AVX2 builds run
 * this GEMM from 12 rows). The Makefile builds it twice more: -mno-avx512f (the AVX2 kernel) and -mno-avx2 (no SIMD GEMM:
 * av_gemm_wt must decline, so callers take their BLAS or row paths, checked here through
 * av_matmul_forward instead). */
#include "test.h"
#include "ops/gemm.c"
#include "quant/affine.h"
#include <stdlib.h>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#define REL 4e-5
#else
#define REL 1e-5
#endif

static int simd_gemm(void) {
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
    return 1;
#else
    return 0;
#endif
}

/* w as the matrix stores it: bf16 / f16 rows, or 4-bit g32 codes with bf16 scales and biases; through
 * av_gemm_wt, or (fwd) through av_matmul_forward, whichever path it takes for T rows */
static void check(int kind, int T, int N, int K, int fwd) {
    static const char *NAMES[] = {"bf16", "f16", "4-bit"};
    test_rng_state = 77u + (unsigned)(kind * 1000 + T * 10 + K);
    float *w = test_rnd((size_t)N * K, 0.05f), *x = test_rnd((size_t)T * K, 1.0f);
    float *out = malloc(sizeof(float) * T * N), *wd = malloc(sizeof(float) * N * K);
    uint16_t *h = malloc(2u * N * K);
    uint32_t *pk = calloc((size_t)N * av_quant_row_words(K, 4), 4);
    uint16_t *sc = malloc(2u * N * (K / 32)), *bs = malloc(2u * N * (K / 32));
    av_mat W = {.dtype = kind == 1 ? AV_F16 : AV_BF16, .rows = N, .cols = K};
    if (kind < 2) {
        for (size_t i = 0; i < (size_t)N * K; i++) h[i] = kind == 0 ? av_f32_to_bf16(w[i]) : av_f32_to_f16(w[i]);
        W.data = h;
    } else {
        av_quant_matrix(pk, sc, bs, AV_BF16, w, N, K, 4, 32);
        W.data = pk, W.q_bits = 4, W.q_group = 32, W.scales = sc, W.biases = bs;
    }
    av_mat_rows_to_f32(wd, &W, 0, N); /* the weights' exact values */
    for (size_t i = 0; i < (size_t)T * N; i++) out[i] = NAN;
    int ran = fwd ? 1 : av_gemm_wt(out, x, &W, T);
    if (fwd)
        av_matmul_forward(out, x, &W, T);
    else if (simd_gemm())
        CHECK(ran, "%s T %d N %d K %d: av_gemm_wt declined", NAMES[kind], T, N, K);
    else {
        CHECK(!ran, "%s: av_gemm_wt ran without a SIMD kernel", NAMES[kind]);
        av_matmul_forward(out, x, &W, T);
    }
    int bad = 0;
    double worst = 0;
    for (int t = 0; t < T; t++)
        for (int n = 0; n < N; n++) {
            double s = 0, a = 0;
            for (int k = 0; k < K; k++) {
                double p = (double)x[(size_t)t * K + k] * wd[(size_t)n * K + k];
                s += p;
                a += fabs(p);
            }
            double e = fabs(out[(size_t)t * N + n] - s);
            bad += !(e <= REL * a + 1e-6);
            if (a > 0 && e / a > worst) worst = e / a;
        }
    CHECK(bad == 0, "%s T %d N %d K %d: %d outputs off (worst %.2e of sum|x w|)", NAMES[kind], T, N, K, bad, worst);
    free(w); free(x); free(out); free(wd); free(h); free(pk); free(sc); free(bs);
}

int main(void) {
    static const int TS[] = {32, 33, 100}, KS[] = {64, 300};
    for (int kind = 0; kind < 3; kind++)
        for (int ti = 0; ti < 3; ti++)
            for (int ki = 0; ki < 2; ki++) check(kind, TS[ti], 45, kind == 2 ? KS[ki] / 32 * 32 + 32 : KS[ki], 0);
    check(0, 512, 130, 256, 0); /* several thread panels and token blocks */
    /* prompt rows through av_matmul_forward (AVX2 builds: this GEMM from 12 rows; others their row products) */
    for (int T = 5; T < 32; T += 7) check(0, T, 37, 96, 1);
    return TEST_SUMMARY();
}
