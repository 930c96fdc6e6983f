/* Quantized CPU kernels (src/quant/qmatmul.c) against the scalar reference, for every bits x group,
 * scales in bf16/f16/f32, odd row counts, K with partial chunks and more than 16 groups, T = 1..9
 * (groups 32/64/128 as MLX writes them, and 6 bits in groups of 16: GGUF's Q6_K repacked, CPU only):
 *   - av_qmatmul_rows vs the double-precision dot of x with the dequantized row (av_quant_dequant_row).
 *     AVX-512 VNNI and AVX2 take x as two int8 digits per 32-bit lane of 4/8/16 columns, x = d (q1 + q2/256)
 *     with d = amax/127, so each output must lie within the exact bound sum_b d_b/256 * sum_{i in b} |w_i|
 *     of the reference (+ 1e-5 * sum |x w| for f32 rounding), and the relative L2 error of every
 *     product (random x with one outlier of 8x per row) below 2e-4 (measured worst 6.5e-5, printed).
 *     The portable path is exact up to f32 rounding: 1e-5 * sum |x w|.
 *   - av_qdequant_rows bit-identical to av_quant_dequant_row.
 *   - av_matmul_forward with T = 1..4 (decode kernels) and T = 33, 64 (prefill GEMM) on the same data.
 * The kernel source is compiled into this binary; the Makefile builds it three times: native,
 * -mno-avx512f (AVX2 path) and -mno-avx2 (portable path), so every implementation runs here. */
#include "test.h"
#include "quant/qmatmul.c"
#include "ops/ops.h"
#include <stdlib.h>

static const char *expected_impl(void) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
    return "avx512-vnni";
#elif defined(__AVX2__) && defined(__FMA__)
    return "avx2";
#else
    return "portable";
#endif
}

static double worst_rel_vnni; /* largest relative L2 error seen with the int8 x */

/* One matrix: N x K, bits, group, scale dtype; x rows T. */
static void check_case(int N, int K, int bits, int group, av_dtype sdt, int T, unsigned seed) {
    int vnni = strcmp(expected_impl(), "portable") != 0, ng = K / group, lw = bits == 4 ? 8 : bits == 2 ? 16 : 4;
    test_rng_state = seed;
    float *w = test_rnd((size_t)N * K, 0.05f), *x = test_rnd((size_t)T * K, 1.0f);
    /* one outlier per row of x, as activations have */
    for (int t = 0; t < T; t++) x[(size_t)t * K + (t * 37) % K] = 8.0f;
    size_t es = av_dtype_size(sdt);
    /* the packed matrix at an odd byte offset of its buffer (mmapped safetensors put it anywhere) */
    size_t pbytes = (size_t)N * av_quant_row_words(K, bits) * 4;
    uint32_t *pk = calloc(pbytes / 4, 4);
    char *pkbuf = malloc(pbytes + 3), *pko = pkbuf + 3;
    void *sc = malloc(es * N * ng + 2), *bs = malloc(es * N * ng + 2);
    av_quant_matrix(pk, sc, bs, sdt, w, N, K, bits, group);
    memcpy(pko, pk, pbytes);
    av_mat W = {.data = pko, .dtype = sdt, .rows = N, .cols = K, .q_bits = bits, .q_group = group, .scales = sc, .biases = bs};
    float *deq = malloc(sizeof(float) * N * K), *deq2 = malloc(sizeof(float) * N * K);
    for (int r = 0; r < N; r++) av_quant_dequant_row(deq + (size_t)r * K, pk, sc, bs, sdt, r, K, bits, group);
    av_qdequant_rows(deq2, (size_t)K, &W, 0, N);
    CHECK(memcmp(deq, deq2, sizeof(float) * N * K) == 0, "dequant rows %d bits g%d %s", bits, group, av_dtype_name(sdt));
    /* reference, per-output bound */
    double *ref = malloc(sizeof(double) * T * N), *bound = malloc(sizeof(double) * T * N);
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * K;
        for (int n = 0; n < N; n++) {
            const float *wr = deq + (size_t)n * K;
            double s = 0, a = 0, q = 0;
            for (int k = 0; k < K; k++) {
                s += (double)xr[k] * wr[k];
                a += fabs((double)xr[k] * wr[k]);
            }
            for (int b = 0; vnni && b < K / lw; b++) {
                double amax = 0, sw = 0;
                for (int i = 0; i < lw; i++) {
                    amax = fmax(amax, fabs(xr[b * lw + i]));
                    sw += fabs(wr[b * lw + i]);
                }
                q += amax / 127.0 / 256.0 * sw; /* |x - d (q1 + q2/256)| <= d/256 (d/512 unless q2 clipped) */
            }
            ref[(size_t)t * N + n] = s;
            bound[(size_t)t * N + n] = q * (1 + 1e-5) + 1e-5 * a + 1e-6;
        }
    }
    av_qx qx;
    void *buf = aligned_alloc(64, (av_qx_size(T, &W) + 63) / 64 * 64);
    float *out = malloc(sizeof(float) * T * N);
    av_qx_prepare(&qx, buf, x, T, &W);
    /* odd row ranges: [0, 5), [5, N) */
    av_qmatmul_rows(out, (size_t)N, &qx, &W, 0, 5);
    av_qmatmul_rows(out + 5, (size_t)N, &qx, &W, 5, N);
    int bad = 0;
    double num = 0, den = 0;
    for (size_t i = 0; i < (size_t)T * N; i++) {
        double e = fabs(out[i] - ref[i]);
        if (!(e <= bound[i])) {
            if (bad++ < 3) fprintf(stderr, "  [%zu] %.7g vs %.7g (bound %.3g)\n", i, out[i], ref[i], bound[i]);
        }
        num += e * e;
        den += ref[i] * ref[i];
    }
    double rel = sqrt(num / den);
    CHECK(bad == 0, "%s: %d bits g%d %s N %d K %d T %d: %d outputs outside the bound", expected_impl(), bits, group, av_dtype_name(sdt), N,
          K, T, bad);
    if (vnni) {
        CHECK(rel < 2e-4, "%d bits g%d T %d: int8-x relative L2 error %g", bits, group, T, rel);
        if (rel > worst_rel_vnni) worst_rel_vnni = rel;
    }
    /* three digits of x (prompt rows, av_qx_max_digits() == 3 on VNNI and AVX2): f32-level, the prefill bound */
    if (av_qx_max_digits() == 3) {
        void *b3 = aligned_alloc(64, (av_qx_size_digits(T, &W, 3) + 63) / 64 * 64);
        av_qx_prepare_digits(&qx, b3, x, T, &W, 3);
        av_qmatmul_rows(out, (size_t)N, &qx, &W, 0, 5);
        av_qmatmul_rows(out + 5, (size_t)N, &qx, &W, 5, N);
        int bad3 = 0;
        for (int t = 0; t < T; t++)
            for (int n = 0; n < N; n++) {
                double a = 0;
                for (int k = 0; k < K; k++) a += fabs((double)x[(size_t)t * K + k] * deq[(size_t)n * K + k]);
                bad3 += !(fabs(out[(size_t)t * N + n] - ref[(size_t)t * N + n]) <= 1e-5 * a + 1e-6);
            }
        CHECK(bad3 == 0, "three digits: %d bits g%d %s T %d: %d outputs outside 1e-5 sum|x w| + 1e-6", bits, group, av_dtype_name(sdt), T,
              bad3);
        free(b3);
    }
    /* through av_matmul_forward: the decode kernels for T <= 4, the prefill GEMM for T >= 32 */
    if (T <= 4) {
        av_matmul_forward(out, x, &W, T);
        bad = 0;
        for (size_t i = 0; i < (size_t)T * N; i++) bad += !(fabs(out[i] - ref[i]) <= bound[i]);
        CHECK(bad == 0, "matmul_forward %d bits g%d T %d: %d outside", bits, group, T, bad);
    }
    free(w); free(x); free(pk); free(pkbuf); free(sc); free(bs); free(deq); free(deq2); free(ref); free(bound); free(buf); free(out);
}

/* Prefill sizes through av_matmul_forward (GEMM on dequantized panels: f32 exact up to rounding). */
static void check_prefill(int bits, int group, int T) {
    const int N = 45, K = 4 * group;
    int ng = K / group;
    test_rng_state = 1234u + (unsigned)bits * 7u + (unsigned)T;
    float *w = test_rnd((size_t)N * K, 0.05f), *x = test_rnd((size_t)T * K, 1.0f);
    uint32_t *pk = calloc((size_t)N * av_quant_row_words(K, bits), 4);
    uint16_t *sc = malloc(2u * N * ng), *bs = malloc(2u * N * ng);
    av_quant_matrix(pk, sc, bs, AV_BF16, w, N, K, bits, group);
    av_mat W = {.data = pk, .dtype = AV_BF16, .rows = N, .cols = K, .q_bits = bits, .q_group = group, .scales = sc, .biases = bs};
    float *deq = malloc(sizeof(float) * N * K), *out = malloc(sizeof(float) * T * N);
    for (int r = 0; r < N; r++) av_quant_dequant_row(deq + (size_t)r * K, pk, sc, bs, AV_BF16, r, K, bits, group);
    av_matmul_forward(out, x, &W, T);
    int bad = 0;
    for (int t = 0; t < T; t++)
        for (int n = 0; n < N; n++) {
            double s = 0, a = 0;
            for (int k = 0; k < K; k++) {
                s += (double)x[(size_t)t * K + k] * deq[(size_t)n * K + k];
                a += fabs((double)x[(size_t)t * K + k] * deq[(size_t)n * K + k]);
            }
            bad += !(fabs(out[(size_t)t * N + n] - s) <= 1e-5 * a + 1e-6);
        }
    CHECK(bad == 0, "prefill %d bits g%d T %d: %d outputs off", bits, group, T, bad);
    free(w); free(x); free(pk); free(sc); free(bs); free(deq); free(out);
}

int main(void) {
    CHECK(strcmp(av_qmatmul_impl(), expected_impl()) == 0, "impl %s, expected %s", av_qmatmul_impl(), expected_impl());
    printf("implementation: %s\n", av_qmatmul_impl());
    static const int BITS[] = {2, 3, 4, 5, 6, 8}, GROUPS[] = {16, 32, 64, 128};
    unsigned seed = 1;
    for (int bi = 0; bi < 6; bi++)
        for (int gi = 0; gi < 4; gi++) {
            int b = BITS[bi], g = GROUPS[gi];
            if (g == 16 && b != 6) continue; /* group 16 exists only as Q6_K repacked (rows of 256k) */
            int u = g < 32 ? 32 : g;             /* rows are whole 32-code chunks, as MLX and GGUF have them */
            check_case(37, 7 * u, b, g, AV_BF16, 1, seed++);
            check_case(21, 40 * u, b, g, AV_BF16, 3, seed++);
            check_case(13, 7 * u, b, g, bi % 2 ? AV_F16 : AV_F32, 2, seed++);
            check_case(11, 7 * u, b, g, AV_BF16, 4, seed++);
            check_case(9, 3 * u, b, g, AV_BF16, 9, seed++);
        }
    for (int bi = 0; bi < 6; bi++) check_prefill(BITS[bi], BITS[bi] == 4 ? 32 : BITS[bi] == 8 ? 64 : 128, bi % 2 ? 64 : 33);
    check_prefill(6, 16, 33);
    /* 5-31 rows: three-digit int8 kernel on VNNI and AVX2, panels in portable builds; both at the f32 bound */
    for (int bi = 0; bi < 6; bi++) check_prefill(BITS[bi], 64, 5 + 5 * bi);
    /* NaN in x reaches the outputs */
    {
        const int N = 3, K = 64;
        test_rng_state = 5;
        float *w = test_rnd((size_t)N * K, 0.05f), *x = test_rnd(K, 1.0f), out[3];
        uint32_t pk[3 * 16] = {0};
        float sc[6], bs[6];
        av_quant_matrix(pk, sc, bs, AV_F32, w, N, K, 4, 32);
        av_mat W = {.data = pk, .dtype = AV_F32, .rows = N, .cols = K, .q_bits = 4, .q_group = 32, .scales = sc, .biases = bs};
        x[40] = NAN;
        av_matmul_forward(out, x, &W, 1);
        CHECK(isnan(out[0]) && isnan(out[1]) && isnan(out[2]), "NaN x: %g %g %g", out[0], out[1], out[2]);
        free(w); free(x);
    }
    if (worst_rel_vnni > 0) printf("int8 x: worst relative L2 error of a product %.4f%%\n", 100 * worst_rel_vnni);
    return TEST_SUMMARY();
}
