/* MLX affine quantization (src/quant/affine.c): a hand-computed 3-bit packing, pack/unpack and
 * quantize/dequantize round trips for every width x group size, the error bound |w - deq| <= scale/2
 * (elements inside the codes' range; the rest at the nearest code),
 * words/scales/biases equal to mlx.core.quantize's (tests/fixtures/quant, make_quant_fixtures.py), and
 * the products on packed weights (matmul forward for 1..40 rows, backward dx, embedding) against the
 * same ops on the dequantized f32 matrix. */
#include "test.h"
#include "core/status.h"
#include "formats/safetensors.h"
#include "quant/affine.h"
#include "quant/qmatmul.h"
#include "ops/ops.h"

static const int BITS[] = {2, 3, 4, 5, 6, 8}, GROUPS[] = {32, 64, 128};

static void test_hand_example(void) {
    /* codes 0..7 repeating, 3 bits each: the 24-bit pattern 0xFAC688 (value j at bits 3j..3j+2)
     * repeats every 24 bits, so word 0 = 0x88|FAC688, word 1 = 0xC688|FAC6, word 2 = 0xFAC688|FA. */
    uint8_t q[32], back[32];
    for (int j = 0; j < 32; j++) q[j] = (uint8_t)(j % 8);
    uint32_t w[3] = {0, 0, 0};
    av_quant_pack(w, q, 0, 32, 3);
    CHECK(w[0] == 0x88fac688u && w[1] == 0xc688fac6u && w[2] == 0xfac688fau, "3-bit words %08x %08x %08x", w[0], w[1], w[2]);
    av_quant_unpack(back, w, 0, 32, 3);
    CHECK(memcmp(q, back, 32) == 0, "3-bit unpack");
    /* 4 bits: nibbles low first; 8 bits: bytes low first */
    uint32_t w4[4] = {0};
    for (int j = 0; j < 32; j++) q[j] = (uint8_t)(j & 15);
    av_quant_pack(w4, q, 0, 32, 4);
    CHECK(w4[0] == 0x76543210u && w4[1] == 0xfedcba98u, "4-bit words %08x %08x", w4[0], w4[1]);
    /* a group of 0, 3 and ties at 2 bits: scale -1, bias 3 (the larger edge maps to code 0);
     * w = 1.5, 0.5, 2.5 give (3-w) = 1.5, 2.5, 0.5 -> 2, 2, 0 (ties to even, as MLX) */
    float g[32] = {3, 1.5f, 0.5f, 2.5f}, s, b;
    av_quant_group(q, &s, &b, g, 32, 2);
    CHECK(s == -1.0f && b == 3.0f && q[0] == 0 && q[1] == 2 && q[2] == 2 && q[3] == 0 && q[4] == 3,
          "tie group: s %g b %g q %d %d %d %d %d", s, b, q[0], q[1], q[2], q[3], q[4]);
}

static void test_round_trips(void) {
    const int rows = 5, cols = 384;
    test_rng_state = 7;
    float *w = test_rnd((size_t)rows * cols, 0.1f), *deq = malloc(sizeof(float) * cols);
    uint8_t q[384], back[384];
    for (size_t bi = 0; bi < sizeof BITS / sizeof *BITS; bi++) {
        int bits = BITS[bi];
        uint32_t row[384 * 8 / 32];
        for (int j = 0; j < cols; j++) q[j] = (uint8_t)((j * 37 + 11) & ((1 << bits) - 1));
        memset(row, 0, sizeof row);
        av_quant_pack(row, q, 0, cols, bits);
        av_quant_unpack(back, row, 0, cols, bits);
        CHECK(memcmp(q, back, cols) == 0, "pack/unpack %d bits", bits);
        av_quant_unpack(back, row, 37, 50, bits);
        CHECK(memcmp(q + 37, back, 50) == 0, "unaligned unpack %d bits", bits);
        for (size_t gi = 0; gi < sizeof GROUPS / sizeof *GROUPS; gi++) {
            int group = GROUPS[gi], ng = cols / group;
            CHECK(av_quant_supported(bits, group), "supported %d %d", bits, group);
            uint32_t *packed = calloc((size_t)rows * av_quant_row_words(cols, bits), 4);
            float *sc = malloc(sizeof(float) * rows * ng), *bs = malloc(sizeof(float) * rows * ng);
            av_quant_matrix(packed, sc, bs, AV_F32, w, rows, cols, bits, group);
            /* each element dequantizes to the nearest of the group's 2^bits values, and within scale/2
             * unless it lies beyond the last code (MLX's rule maps the larger edge exactly, so the
             * other edge can fall just outside the codes' range) */
            int bad = 0, nb = (1 << bits) - 1;
            for (int r = 0; r < rows; r++) {
                av_quant_dequant_row(deq, packed, sc, bs, AV_F32, r, cols, bits, group);
                for (int c = 0; c < cols; c++) {
                    float s = sc[r * ng + c / group], b = bs[r * ng + c / group], x = w[(size_t)r * cols + c];
                    float e = fabsf(x - deq[c]), best = INFINITY;
                    for (int k = 0; k <= nb; k++) best = fminf(best, fabsf(x - (s * (float)k + b)));
                    int inside = (x - b) / s >= 0.0f && (x - b) / s <= (float)nb;
                    if (!(e <= best + 1e-6f * fabsf(x) + 1e-7f) || (inside && !(e <= fabsf(s) * 0.5f * (1 + 1e-5f) + 1e-7f))) bad++;
                }
            }
            CHECK(bad == 0, "%d bits, group %d: %d elements not at their nearest code", bits, group, bad);
            free(packed); free(sc); free(bs);
        }
    }
    CHECK(!av_quant_supported(7, 64) && !av_quant_supported(4, 16) && !av_quant_supported(1, 64), "unsupported");
    free(w); free(deq);
}

static const av_st_tensor *need(const av_st_file *f, const char *name) {
    const av_st_tensor *t = av_st_find(f, name);
    CHECK(t != NULL, "fixture tensor %s missing", name);
    return t;
}

static void compare_case(const av_st_file *f, const char *prefix, const float *w, int rows, int cols, int bits, int group, av_dtype sdt) {
    char n[64];
    snprintf(n, sizeof n, "%s.weight", prefix);
    const av_st_tensor *tw = need(f, n);
    snprintf(n, sizeof n, "%s.scales", prefix);
    const av_st_tensor *ts = need(f, n);
    snprintf(n, sizeof n, "%s.biases", prefix);
    const av_st_tensor *tb = need(f, n);
    if (!tw || !ts || !tb) return;
    int words = av_quant_row_words(cols, bits), ng = cols / group;
    CHECK(tw->dtype == AV_U32 && tw->shape[0] == rows && tw->shape[1] == words, "%s shape", prefix);
    CHECK(ts->dtype == sdt && tb->dtype == sdt && ts->shape[1] == ng, "%s scales", prefix);
    size_t es = av_dtype_size(sdt);
    uint32_t *packed = calloc((size_t)rows * words, 4);
    void *sc = malloc(es * rows * ng), *bs = malloc(es * rows * ng);
    av_quant_matrix(packed, sc, bs, sdt, w, rows, cols, bits, group);
    CHECK(memcmp(packed, tw->data, (size_t)rows * words * 4) == 0, "%s: packed words differ from MLX", prefix);
    CHECK(memcmp(sc, ts->data, es * rows * ng) == 0, "%s: scales differ from MLX", prefix);
    CHECK(memcmp(bs, tb->data, es * rows * ng) == 0, "%s: biases differ from MLX", prefix);
    free(packed); free(sc); free(bs);
}

static void test_mlx_fixture(void) {
    av_st_file f;
    CHECK_OK(av_st_open(&f, test_fixture("quant/quant.safetensors")));
    const av_st_tensor *tw = need(&f, "w"), *tb16 = need(&f, "w_bf16");
    if (!tw || !tb16) return;
    int rows = (int)tw->shape[0], cols = (int)tw->shape[1];
    const float *w = test_f32_view(tw->data, (size_t)rows * cols);
    char p[32];
    for (size_t bi = 0; bi < sizeof BITS / sizeof *BITS; bi++)
        for (size_t gi = 0; gi < sizeof GROUPS / sizeof *GROUPS; gi++) {
            snprintf(p, sizeof p, "b%d_g%d", BITS[bi], GROUPS[gi]);
            compare_case(&f, p, w, rows, cols, BITS[bi], GROUPS[gi], AV_F32);
        }
    float *wb = malloc(sizeof(float) * rows * cols);
    av_convert_to_f32(wb, tb16->data, AV_BF16, (size_t)rows * cols);
    for (int bits = 3; bits <= 8; bits++) {
        if (bits != 3 && bits != 4 && bits != 8) continue;
        snprintf(p, sizeof p, "bf16_b%d_g64", bits);
        compare_case(&f, p, wb, rows, cols, bits, 64, AV_BF16);
    }
    free(wb);
    av_st_close(&f);
}

static void test_products(void) {
    const int N = 80, K = 192, T = 40;
    test_rng_state = 99;
    float *w = test_rnd((size_t)N * K, 0.05f), *x = test_rnd((size_t)T * K, 1.0f), *dout = test_rnd((size_t)T * N, 1.0f);
    float *deq = malloc(sizeof(float) * N * K), *a = malloc(sizeof(float) * T * N), *b = malloc(sizeof(float) * T * N);
    float *da = calloc((size_t)T * K, 4), *db = calloc((size_t)T * K, 4);
    for (int bits = 2; bits <= 8; bits++) {
        if (bits == 7) continue;
        int group = bits == 4 ? 32 : 64, ng = K / group;
        uint32_t *pk = calloc((size_t)N * av_quant_row_words(K, bits), 4);
        uint16_t *sc = malloc(2u * N * ng), *bs = malloc(2u * N * ng);
        av_quant_matrix(pk, sc, bs, AV_BF16, w, N, K, bits, group);
        for (int r = 0; r < N; r++) av_quant_dequant_row(deq + (size_t)r * K, pk, sc, bs, AV_BF16, r, K, bits, group);
        av_mat Q = {.data = pk, .dtype = AV_BF16, .rows = N, .cols = K, .q_bits = bits, .q_group = group, .scales = sc, .biases = bs};
        av_mat F = {.data = deq, .dtype = AV_F32, .rows = N, .cols = K};
        const int Ts[] = {1, 3, 7, 40};
        for (int i = 0; i < 4; i++) {
            av_matmul_forward(a, x, &Q, Ts[i]);
            av_matmul_forward(b, x, &F, Ts[i]);
            /* decode products (T <= 4) with AVX-512 VNNI take x as two int8 digits per 4-16 columns
             * (quant/qmatmul.h): relative error ~1e-5 here; everything else is f32 */
            double tol = Ts[i] <= 4 && strcmp(av_qmatmul_impl(), "portable") != 0 ? 1e-4 : 1e-5;
            CHECK(test_rel_l2(a, b, (size_t)Ts[i] * N) < tol, "%d bits, T %d: matmul rel %g", bits, Ts[i], test_rel_l2(a, b, (size_t)Ts[i] * N));
        }
        memset(da, 0, sizeof(float) * T * K);
        memset(db, 0, sizeof(float) * T * K);
        av_matmul_backward(da, NULL, dout, x, &Q, T);
        av_matmul_backward(db, NULL, dout, x, &F, T);
        CHECK(test_rel_l2(da, db, (size_t)T * K) < 1e-5, "%d bits: backward dx", bits);
        int32_t ids[3] = {5, 0, 79};
        av_embedding_forward(a, ids, &Q, 3);
        CHECK(memcmp(a, deq + 5 * K, 4u * K) == 0 && memcmp(a + K, deq, 4u * K) == 0 && memcmp(a + 2 * K, deq + 79 * K, 4u * K) == 0,
              "%d bits: embedding rows", bits);
        free(pk); free(sc); free(bs);
    }
    free(w); free(x); free(dout); free(deq); free(a); free(b); free(da); free(db);
}

int main(void) {
    test_products();
    test_hand_example();
    test_round_trips();
    test_mlx_fixture();
    return TEST_SUMMARY();
}
