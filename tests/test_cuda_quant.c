/* CUDA products on MLX affine-quantized weights vs the CPU ones (quant/affine.cu, the quantized
 * one-row fused products of ops/matmul_fused.cu): every bit width x group size through the matmul
 * forward (1..8 rows: the packed GEMV; more: dequantized panels + cuBLAS), the backward dx, the
 * embedding gather, and the fused one-row products (RMSNorm input; RoPE / SwiGLU / residual / store
 * with the folded argmax). Then whole models: tiny-llama quantized by av_convert gives on the GPU the
 * CPU's NLL, prefill + decode logits and greedy ids, and one QLoRA step the CPU's loss and adapter
 * gradients; GGUF K-quant files (Q2_K, Q3_K_M, Q6_K: groups of 16) give on the GPU the CPU's NLL,
 * logits and greedy ids. Tolerances: exact-f32 paths 1e-5 relative L2, except the packed one-to-eight-row products
 * (1e-4): they sum scale * (x . q) + bias * sum(x) per 16 codes where the CPU dequantizes first,
 * and the two f32 orders differ by up to 4.2e-5 (H200, 2026-12-05); the one-row product on 4/8-bit
 * codes takes x as two int8 digits, as the CPU's decode does (different blocks of x: q4 decode logits
 * 5.8e-5, q8 4.4e-5 from the CPU's, H100, 2026-12-06); bf16 tensor-core paths 1e-2.
 * Without a GPU: "skipped: no GPU". */
#include "test_cuda.h"
#include "core/memory.h"
#include "model/model.h"
#include "quant/affine.h"
#include "train/train_model.h"
#include <sys/stat.h>

/* A quantized [rows, cols] matrix of w on the host (scales/biases as sdt) and its device copy. */
typedef struct {
    av_mat h, d;
} qmat;

static qmat qmat_new(const float *w, int rows, int cols, int bits, int group, av_dtype sdt) {
    size_t words = (size_t)rows * av_quant_row_words(cols, bits), ng = (size_t)rows * (cols / group), es = av_dtype_size(sdt);
    uint32_t *p = calloc(words, 4);
    void *s = malloc(ng * es), *b = malloc(ng * es);
    av_quant_matrix(p, s, b, sdt, w, rows, cols, bits, group);
    qmat m;
    m.h = (av_mat){.data = p, .dtype = sdt, .rows = rows, .cols = cols, .q_bits = bits, .q_group = group, .scales = s, .biases = b};
    m.d = m.h;
    m.d.data = up(G, p, words * 4);
    m.d.scales = up(G, s, ng * es);
    m.d.biases = up(G, b, ng * es);
    return m;
}
static void qmat_free(qmat *m) {
    free((void *)m->h.data); free((void *)m->h.scales); free((void *)m->h.biases);
    G->free((void *)m->d.data); G->free((void *)m->d.scales); G->free((void *)m->d.biases);
}

static void test_products(void) {
    int bits[] = {2, 3, 4, 5, 6, 8}, groups[] = {16, 32, 64, 128};
    struct { int T, N, K; } shapes[] = {{1, 67, 256}, {3, 130, 384}, {8, 64, 128}, {37, 300, 512}};
    int si = 0;
    for (int bi = 0; bi < 6; bi++)
        for (int gi = 0; gi < 4; gi++, si++) {
            int T = shapes[(si + bi) % 4].T, N = shapes[(si + bi) % 4].N, K = shapes[(si + bi) % 4].K, B = bits[bi], g = groups[gi];
            av_dtype sdt = si % 5 == 3 ? AV_F16 : si % 7 == 5 ? AV_F32 : AV_BF16;
            float *w = test_rnd((size_t)N * K, 0.1f), *x = test_rnd((size_t)T * K, 1), *dy = test_rnd((size_t)T * N, 1);
            qmat W = qmat_new(w, N, K, B, g, sdt);
            float *o = malloc(sizeof(float) * T * N), *dx = calloc((size_t)T * K, 4);
            av_matmul_forward(o, x, &W.h, T);
            av_matmul_backward(dx, NULL, dy, NULL, &W.h, T);
            float *xd = up(G, x, sizeof(float) * T * K), *dyd = up(G, dy, sizeof(float) * T * N), *od = G->alloc(sizeof(float) * T * N, "t"),
                  *dxd = G->alloc(sizeof(float) * T * K, "t");
            char nm[128];
            for (int f = 0; f < 2; f++) {
                const av_backend *be = f ? G32 : G;
                be->matmul_forward(od, xd, &W.d, T);
                snprintf(nm, sizeof nm, "q%d g%d %s matmul_forward %s T=%d N=%d K=%d", B, g, av_dtype_name(sdt), be->name, T, N, K);
                CMP(nm, od, o, (size_t)T * N, T <= 8 ? 1e-4 : f ? 1e-5 : 1e-2);
                G->zero(dxd, sizeof(float) * T * K);
                be->matmul_backward(dxd, NULL, dyd, NULL, &W.d, T);
                snprintf(nm, sizeof nm, "q%d g%d %s matmul_backward dx %s T=%d", B, g, av_dtype_name(sdt), be->name, T);
                CMP(nm, dxd, dx, (size_t)T * K, f ? 1e-5 : 1e-2);
            }
            /* embedding rows */
            int32_t ids[5] = {0, N - 1, 7 % N, 7 % N, N / 2};
            float *e = malloc(sizeof(float) * 5 * K);
            av_embedding_forward(e, ids, &W.h, 5);
            int32_t *idd = up(G, ids, sizeof ids);
            float *ed = G->alloc(sizeof(float) * 5 * K, "t");
            G->embedding_forward(ed, idd, &W.d, 5);
            snprintf(nm, sizeof nm, "q%d g%d embedding", B, g);
            CMP(nm, ed, e, (size_t)5 * K, 1e-6);
            G->free(xd); G->free(dyd); G->free(od); G->free(dxd); G->free(idd); G->free(ed);
            qmat_free(&W);
            free(w); free(x); free(dy); free(o); free(dx); free(e);
        }
}

/* Fused products on packed weights vs the CPU's composition of the same fusion: one row (the exact
 * f32 kernel), 6, 16 and 29 rows (2-, 4- and 8-bit codes: the bf16 tensor-core kernels with one, two
 * and four 8-row input tiles, 4- and 8-bit codes at more rows or on long rows split over a cluster;
 * other widths the separate ops) and 40 rows (the separate ops: dequantized panels and cuBLAS). */
static void test_fused(void) {
    struct { av_gemv_in in; av_gemv_out out; int N, K, rope_heads, hd, bits, group; } cases[] = {
        {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_ROPE, 2560, 2048, 36, 64, 4, 64}, {AV_GEMV_IN_X, AV_GEMV_OUT_ADD, 2048, 5632, 0, 0, 4, 64},
        {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_SWIGLU, 608, 2048, 0, 0, 4, 32},   {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_STORE, 9001, 256, 0, 0, 8, 64},
        {AV_GEMV_IN_X, AV_GEMV_OUT_ADD, 301, 640, 0, 0, 3, 128},            {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_ROPE, 448, 4096, 7, 64, 6, 32},
        {AV_GEMV_IN_X, AV_GEMV_OUT_STORE, 77, 128, 0, 0, 2, 128},           {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_SWIGLU, 352, 1024, 0, 0, 5, 64},
        {AV_GEMV_IN_X, AV_GEMV_OUT_ADD, 64, 12288, 0, 0, 8, 128},           {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_ROPE, 640, 1024, 8, 64, 8, 32},
        {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_SWIGLU, 1024, 512, 0, 0, 2, 64},   {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_ROPE, 440, 4096, 8, 40, 6, 32},
        /* long rows: the K-split cluster kernel from 2 rows (matmul_fused_split.cu) */
        {AV_GEMV_IN_X, AV_GEMV_OUT_ADD, 512, 5632, 0, 0, 4, 64},            {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_SWIGLU, 256, 4096, 0, 0, 4, 32},
        /* groups of 16 (GGUF Q6_K, Q3_K, Q2_K repacked) */
        {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_ROPE, 2560, 2048, 36, 64, 6, 16}, {AV_GEMV_IN_X, AV_GEMV_OUT_ADD, 2048, 5632, 0, 0, 6, 16},
        {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_SWIGLU, 608, 2048, 0, 0, 3, 16},   {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_STORE, 9001, 256, 0, 0, 6, 16},
        {AV_GEMV_IN_X, AV_GEMV_OUT_ADD, 301, 640, 0, 0, 2, 16},             {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_SWIGLU, 1024, 512, 0, 0, 2, 16},
        {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_ROPE, 448, 4096, 7, 64, 3, 16},    {AV_GEMV_IN_X, AV_GEMV_OUT_STORE, 77, 128, 0, 0, 8, 16},
    };
    int Ts[] = {1, 6, 16, 29, 40};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++)
        for (int ti = 0; ti < 5; ti++) {
            int T = Ts[ti], N = cases[ci].N, K = cases[ci].K, hd = cases[ci].hd, rh = cases[ci].rope_heads, F = N / 2;
            if (T > 1 && (size_t)N * K > ((size_t)8 << 20)) continue; /* the CPU reference at many rows: keep it quick */
            av_gemv_out om = cases[ci].out;
            int on = om == AV_GEMV_OUT_SWIGLU ? F : N;
            float *x = test_rnd((size_t)T * K, 1), *w = test_rnd((size_t)N * K, 0.1f), *g = test_rnd(K, 1), *y = test_rnd((size_t)T * on, 1),
                  inv[64];
            for (int i = 0; i < hd / 2; i++) inv[i] = powf(10000.0f, -2.0f * i / hd);
            qmat W = qmat_new(w, N, K, cases[ci].bits, cases[ci].group, AV_BF16);
            uint16_t *gb;
            av_mat Gm = bf16_mat(g, 1, K, &gb), Gd = on_dev(Gm);
            int32_t pos[40], ids[40];
            for (int t = 0; t < T; t++) pos[t] = 41 + 3 * t;
            float *ref = malloc(sizeof(float) * T * on);
            memcpy(ref, y, sizeof(float) * T * on);
            av_gemv_fusion fc = {.in = cases[ci].in, .norm = &Gm, .eps = 1e-5f, .out = om, .pos = pos, .inv_freq = inv, .rope_heads = rh,
                                 .head_dim = hd};
            C->matmul_fused_forward(ref, x, &W.h, T, &fc);
            float *xd = up(G, x, sizeof(float) * T * K), *od = up(G, y, sizeof(float) * T * on), *invd = up(G, inv, sizeof inv);
            int32_t *posd = up(G, pos, sizeof(int32_t) * T), *idd = G->alloc(sizeof(int32_t) * T, "t");
            av_gemv_fusion f = fc;
            f.norm = &Gd, f.pos = posd, f.inv_freq = invd;
            if (om == AV_GEMV_OUT_STORE) f.argmax = idd;
            G->matmul_fused_forward(od, xd, &W.d, T, &f);
            char nm[160];
            snprintf(nm, sizeof nm, "fused q%d g%d in=%d out=%d T=%d N=%d K=%d", cases[ci].bits, cases[ci].group, (int)cases[ci].in, (int)om, T,
                     N, K);
            CMP(nm, od, ref, (size_t)T * on, T == 1 ? 1e-4 : 1e-2); /* 2+ rows: bf16 products */
            if (om == AV_GEMV_OUT_STORE) {
                float *o = down(G, od, (size_t)T * N);
                G->download(ids, idd, sizeof(int32_t) * T);
                for (int t = 0; t < T; t++) {
                    int best = 0;
                    for (int i = 1; i < N; i++) if (o[(size_t)t * N + i] > o[(size_t)t * N + best]) best = i;
                    CHECK(ids[t] == best, "%s: row %d: argmax %d, argmax of its logits %d", nm, t, ids[t], best);
                }
                free(o);
            }
            G->free(xd); G->free(od); G->free(invd); G->free(posd); G->free(idd); G->free((void *)Gd.data);
            qmat_free(&W);
            free(x); free(w); free(g); free(y); free(ref); free(gb);
        }
}

/* ---- whole models ---- */
static int32_t g_ids[512];
static int g_T;

/* Mean NLL of ids[0..T), logits after prefill of all but the last id + one decode step (logits[V]),
 * and 8 greedy ids; V: the model's vocabulary (logits holds 2V floats). */
static double run(const char *dir, const av_backend *be, const int32_t *ids, int T, int V, float *logits, int32_t *greedy) {
    av_model *m;
    if (av_model_load(&m, dir, be) != AV_OK) { CHECK(0, "%s", av_last_error()); return -1; }
    CHECK(m->cfg.vocab_size == V, "%s: vocabulary %d, expected %d", dir, m->cfg.vocab_size, V);
    av_session *s;
    CHECK_OK(av_session_new(&s, m, 256, 64));
    double sum = 0;
    CHECK_OK(av_session_nll(s, ids, T, &sum, NULL, NULL));
    av_session_truncate(s, 0);
    CHECK_OK(av_session_prefill(s, ids, T - 1));
    int32_t id = ids[T - 1];
    for (int i = 0; i < 9; i++) {
        CHECK_OK(av_session_forward(s, &id, 1));
        av_session_last_logits(s, logits);
        if (i == 0) memcpy(logits + V, logits, sizeof(float) * V);
        int best = 0;
        for (int v = 1; v < V; v++) if (logits[v] > logits[best]) best = v;
        if (i < 8) greedy[i] = id = best;
    }
    memcpy(logits, logits + V, sizeof(float) * V);
    av_session_free(s);
    av_model_free(m);
    return sum / (T - 1);
}

static void check_model_ids(const char *dir, const char *name, const int32_t *ids, int T, int V) {
    float *lc = malloc(sizeof(float) * 2 * V), *lg = malloc(sizeof(float) * 2 * V);
    int32_t gc[8], gg[8];
    double nc = run(dir, C, ids, T, V, lc, gc);
    for (int f = 0; f < 2; f++) {
        const av_backend *be = f ? G32 : G;
        double ng = run(dir, be, ids, T, V, lg, gg);
        double tol = f ? 1e-5 : 1e-2; /* bf16 table: prefill on tensor cores */
        CHECK(fabs(ng - nc) <= tol * fabs(nc), "%s %s: NLL %.7f vs CPU %.7f", name, be->name, ng, nc);
        double rel = test_rel_l2(lg, lc, (size_t)V);
        CHECK(rel <= (f ? 1e-4 : 1e-2), "%s %s: decode logits rel L2 %g", name, be->name, rel);
        if (f) CHECK(!memcmp(gc, gg, sizeof gc), "%s %s: greedy ids differ from the CPU's", name, be->name);
        printf("%s %s: nll %.6f (cpu %.6f), logits rel L2 %.3g\n", name, be->name, ng, nc, rel);
    }
    free(lc);
    free(lg);
}

static void check_model(const char *dir, const char *name) { check_model_ids(dir, name, g_ids, g_T, 32000); }

/* GGUF K-quant fixtures (tiny-k256: 1024-token vocabulary): Q6_K, Q3_K and Q2_K tensors are 6/3/2-bit
 * codes in groups of 16 on both backends; the prompt's ids folded into the vocabulary. */
static void check_gguf_kquants(void) {
    const char *files[] = {"tiny-k256-q6_k.gguf", "tiny-k256-q3_k_m.gguf", "tiny-k256-q2_k.gguf"};
    int32_t ids[512];
    for (int t = 0; t < g_T; t++) ids[t] = 1 + g_ids[t] % 1023;
    for (int i = 0; i < 3; i++) {
        char path[4300];
        snprintf(path, sizeof path, "%s/gguf/%s", test_fixtures(), files[i]);
        check_model_ids(path, files[i], ids, g_T < 200 ? g_T : 200, 1024);
    }
}

static double lora_step(const char *dir, const av_backend *be, float **grads, size_t *n) {
    av_model *m;
    *n = 0;
    if (av_model_load(&m, dir, be) != AV_OK) { CHECK(0, "%s", av_last_error()); return -1; }
    av_lora_spec spec;
    av_lora_spec_default(&spec);
    spec.rank = 4;
    spec.keys = 0x7f;
    CHECK_OK(av_lora_attach(m, &spec, 11));
    int32_t tg[512];
    for (int t = 0; t < g_T; t++) tg[t] = t + 1 < g_T ? g_ids[t + 1] : -1;
    av_train_ctx *c;
    CHECK_OK(av_train_ctx_new(&c, m, 1, g_T, 0));
    double nll = 0;
    int nv = 0;
    if (c) {
        av_param *P = av_train_params(c);
        int np = av_train_nparams(c);
        for (int i = 0; i < np; i++) { /* B non-zero so every gradient flows */
            if (!strstr(P[i].name, "lora_b")) continue;
            float *h = malloc(P[i].n * sizeof(float));
            for (size_t k = 0; k < P[i].n; k++) h[k] = 0.01f * (float)((k * 37 + (size_t)i) % 11) - 0.05f;
            be->upload(P[i].data, h, P[i].n * sizeof(float));
            free(h);
        }
        av_train_zero_grads(c);
        CHECK_OK(av_train_step(c, g_ids, tg, 1, g_T, 1.0f / (float)(g_T - 1), 1, &nll, &nv));
        size_t total = 0;
        for (int i = 0; i < np; i++) total += P[i].n;
        *grads = malloc(total * sizeof(float));
        for (int i = 0; i < np; i++) {
            be->download(*grads + *n, P[i].grad, P[i].n * sizeof(float));
            *n += P[i].n;
        }
        av_train_ctx_free(c);
    }
    av_lora_detach(m);
    av_model_free(m);
    return nv ? nll / nv : -1;
}

static void check_qlora(const char *dir) {
    float *gc = NULL, *gg = NULL;
    size_t nc, ng;
    double lc = lora_step(dir, C, &gc, &nc);
    for (int f = 0; f < 2; f++) {
        const av_backend *be = f ? G32 : G;
        double lg = lora_step(dir, be, &gg, &ng);
        CHECK(nc == ng && nc > 0, "qlora %s: %zu vs %zu gradient values", be->name, ng, nc);
        CHECK(fabs(lg - lc) <= (f ? 1e-5 : 1e-2) * fabs(lc), "qlora %s: loss %.7f vs CPU %.7f", be->name, lg, lc);
        if (gc && gg && nc == ng) {
            double rel = test_rel_l2(gg, gc, nc);
            CHECK(rel <= (f ? 1e-4 : 3e-2), "qlora %s: adapter gradients rel L2 %g", be->name, rel);
            printf("qlora %s: loss %.6f (cpu %.6f), gradients rel L2 %.3g\n", be->name, lg, lc, rel);
        }
        free(gg);
        gg = NULL;
    }
    free(gc);
}

int main(void) {
    test_rng_state = 777;
    if (!test_cuda_init()) {
        SKIP("no GPU");
        return TEST_SUMMARY();
    }
    test_products();
    test_fused();
    const char *tmp = getenv("AV_TMP") ? getenv("AV_TMP") : "/tmp";
    char root[4200], q4[4300], q8[4300];
    snprintf(root, sizeof root, "%s/cuda_quant.%d", tmp, (int)getpid());
    mkdir(root, 0755);
    cJSON *g;
    char golden[4200];
    snprintf(golden, sizeof golden, "%s/tiny-llama_golden.json", test_fixtures());
    CHECK_OK(av_json_load(golden, &g));
    const cJSON *p = cJSON_GetArrayItem(cJSON_GetObjectItem(g, "prompts"), 2);
    for (const cJSON *e = cJSON_GetObjectItem(p, "ids")->child; e && g_T < 512; e = e->next) g_ids[g_T++] = e->valueint;
    cJSON_Delete(g);
    snprintf(q4, sizeof q4, "%s/q4", root);
    snprintf(q8, sizeof q8, "%s/q8", root);
    av_convert_report r;
    av_convert_opts o4 = {.quantize = 1, .bits = 4, .group = 32, .out_dtype = -1}, o8 = {.quantize = 1, .bits = 8, .group = 64, .out_dtype = -1};
    CHECK_OK(av_convert(test_fixture("tiny-llama"), q4, &o4, &r));
    CHECK_OK(av_convert(test_fixture("tiny-llama"), q8, &o8, &r));
    check_model(q4, "q4 g32");
    check_model(q8, "q8 g64");
    check_qlora(q4);
    check_gguf_kquants();
    CHECK_OK(av_cuda_status());
    return TEST_SUMMARY();
}
