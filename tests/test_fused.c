/* The CPU table's fused decode ops (matmul_fused_forward, attention_decode) against the separate
 * ops composed by hand, over random small shapes; and whole-model greedy decode through the decode
 * plan (av_decoder, LM head with the argmax folded in) against av_session_forward + argmax, on the
 * tiny-llama fixture (separate ops) and a synthesized model whose weights the fused products take. */
#include "test.h"
#include "attention/attention.h"
#include "backend/backend.h"
#include "core/status.h"
#include "model/decode_graph.h"
#include "model/llama.h"

static const av_backend *C;

/* A random [rows, cols] weight (f32 or bf16), normal-ish scale 1/sqrt(cols); free data. */
static av_mat rnd_mat(int rows, int cols, av_dtype dt) {
    size_t n = (size_t)rows * cols;
    float *f = test_rnd(n, 1.0f / sqrtf((float)cols));
    av_mat m = {.data = f, .dtype = dt, .rows = rows, .cols = cols};
    if (dt == AV_BF16) {
        uint16_t *b = malloc(n * sizeof(uint16_t));
        av_store_bf16(b, f, n);
        free(f);
        m.data = b;
    }
    return m;
}

/* Rows [r0, r0 + nr) of W as a view. */
static av_mat rows_of(const av_mat *W, int r0, int nr) {
    av_mat v = *W;
    v.data = (const char *)W->data + (size_t)r0 * W->cols * av_dtype_size(W->dtype);
    v.rows = nr;
    return v;
}

static void inv_freq_of(float *inv, int hd) {
    for (int i = 0; i < hd / 2; i++) inv[i] = 1.0f / powf(10000.0f, (float)(2 * i) / (float)hd);
}

/* The sampler's argmax at temperature 0: lowest index on ties, NaN skipped. */
static int host_argmax(const float *l, int n) {
    int best = -1;
    for (int j = 0; j < n; j++)
        if (l[j] == l[j] && (best < 0 || l[j] > l[best])) best = j;
    return best < 0 ? 0 : best;
}

/* The input of the product by hand: x, or RMSNorm(x) into buf. */
static const float *ref_in(float *buf, const float *x, const av_mat *norm, int T, int K) {
    if (!norm) return x;
    C->rmsnorm_forward(buf, NULL, x, norm, T, K, 1e-5f);
    return buf;
}

/* q|k|v with RoPE on q and k heads; ADD onto a residual; SwiGLU over [gate; up]; STORE with the
 * argmax fold. All with x or RMSNorm(x) in, at T rows. */
static void check_products(int T, int H, int KVH, int hd, int D, int F, av_dtype dt, int rms) {
    char what[160];
    snprintf(what, sizeof what, "T %d H %d KVH %d hd %d D %d F %d %s %s", T, H, KVH, hd, D, F, dt == AV_BF16 ? "bf16" : "f32",
             rms ? "rmsnorm" : "x");
    int nq = (H + 2 * KVH) * hd;
    float *x = test_rnd((size_t)T * D, 1.0f), *xn = malloc(sizeof(float) * T * D), inv[256];
    av_mat norm = rnd_mat(1, D, dt), *np = rms ? &norm : NULL;
    int32_t pos[16];
    for (int t = 0; t < T; t++) pos[t] = (int)((test_frand() + 1.0f) * 150.0f);
    inv_freq_of(inv, hd);
    const float *in = ref_in(xn, x, np, T, D);
    av_gemv_fusion base = {.in = rms ? AV_GEMV_IN_RMSNORM : AV_GEMV_IN_X, .norm = np, .eps = 1e-5f};

    /* ROPE: q and k heads rotated, v stored */
    av_mat Wqkv = rnd_mat(nq, D, dt), Wq = rows_of(&Wqkv, 0, H * hd), Wk = rows_of(&Wqkv, H * hd, KVH * hd),
           Wv = rows_of(&Wqkv, (H + KVH) * hd, KVH * hd);
    float *got = malloc(sizeof(float) * T * nq), *q = malloc(sizeof(float) * T * H * hd), *k = malloc(sizeof(float) * T * KVH * hd),
          *v = malloc(sizeof(float) * T * KVH * hd), *ref = malloc(sizeof(float) * T * nq);
    C->matmul_forward(q, in, &Wq, T);
    C->matmul_forward(k, in, &Wk, T);
    C->matmul_forward(v, in, &Wv, T);
    C->rope_forward(q, pos, inv, T, H, hd);
    C->rope_forward(k, pos, inv, T, KVH, hd);
    for (int t = 0; t < T; t++) {
        memcpy(ref + (size_t)t * nq, q + (size_t)t * H * hd, sizeof(float) * H * hd);
        memcpy(ref + (size_t)t * nq + H * hd, k + (size_t)t * KVH * hd, sizeof(float) * KVH * hd);
        memcpy(ref + (size_t)t * nq + (H + KVH) * hd, v + (size_t)t * KVH * hd, sizeof(float) * KVH * hd);
    }
    av_gemv_fusion f = base;
    f.out = AV_GEMV_OUT_ROPE, f.pos = pos, f.inv_freq = inv, f.rope_heads = H + KVH, f.head_dim = hd;
    C->matmul_fused_forward(got, x, &Wqkv, T, &f);
    double e = test_rel_l2(got, ref, (size_t)T * nq);
    CHECK(e <= 1e-6, "%s: q|k|v + RoPE rel L2 %.3g", what, e);

    /* ADD: the residual += the product (o) */
    av_mat Wo = rnd_mat(D, H * hd, dt);
    float *att = test_rnd((size_t)T * H * hd, 1.0f), *res = test_rnd((size_t)T * D, 1.0f), *r2 = malloc(sizeof(float) * T * D),
          *tmp = malloc(sizeof(float) * T * D);
    memcpy(r2, res, sizeof(float) * T * D);
    C->matmul_forward(tmp, att, &Wo, T);
    C->add_inplace(r2, tmp, (size_t)T * D);
    av_gemv_fusion o = {.in = AV_GEMV_IN_X, .out = AV_GEMV_OUT_ADD};
    C->matmul_fused_forward(res, att, &Wo, T, &o);
    e = test_rel_l2(res, r2, (size_t)T * D);
    CHECK(e <= 1e-6, "%s: o + residual rel L2 %.3g", what, e);

    /* SWIGLU over [gate; up], f32 and bf16 output */
    av_mat Wgu = rnd_mat(2 * F, D, dt), Wg = rows_of(&Wgu, 0, F), Wu = rows_of(&Wgu, F, F);
    float *g = malloc(sizeof(float) * T * F), *u = malloc(sizeof(float) * T * F), *sw = malloc(sizeof(float) * T * F),
          *gotf = malloc(sizeof(float) * T * F);
    uint16_t *sw16 = malloc(sizeof(uint16_t) * T * F), *got16 = malloc(sizeof(uint16_t) * T * F);
    C->matmul_forward(g, in, &Wg, T);
    C->matmul_forward(u, in, &Wu, T);
    C->swiglu_forward(sw, g, u, (size_t)T * F);
    f = base;
    f.out = AV_GEMV_OUT_SWIGLU;
    C->matmul_fused_forward(gotf, x, &Wgu, T, &f);
    e = test_rel_l2(gotf, sw, (size_t)T * F);
    CHECK(e <= 1e-6, "%s: gate|up + SwiGLU rel L2 %.3g", what, e);
    if (!rms) { /* 16-bit activations: bf16 SwiGLU out, then that bf16 into the down product */
        f.out_bf16 = 1;
        C->matmul_fused_forward((float *)got16, x, &Wgu, T, &f);
        C->store_bf16(sw16, sw, (size_t)T * F);
        int diff = 0;
        for (int i = 0; i < T * F; i++) diff += abs((int)got16[i] - (int)sw16[i]) > 1;
        CHECK(diff == 0, "%s: bf16 SwiGLU out: %d values differ by > 1 ulp", what, diff);
        av_mat Wd = rnd_mat(D, F, dt);
        float *swr = malloc(sizeof(float) * T * F), *dref = malloc(sizeof(float) * T * D), *dgot = malloc(sizeof(float) * T * D);
        C->load_bf16(swr, sw16, (size_t)T * F);
        C->matmul_forward(dref, swr, &Wd, T);
        av_gemv_fusion dn = {.in = AV_GEMV_IN_X, .out = AV_GEMV_OUT_STORE, .in_bf16 = 1};
        C->matmul_fused_forward(dgot, (const float *)sw16, &Wd, T, &dn);
        e = test_rel_l2(dgot, dref, (size_t)T * D);
        CHECK(e <= 1e-6, "%s: bf16 input rel L2 %.3g", what, e);
        /* bf16 input with RMSNorm: refused, out untouched */
        for (int i = 0; i < T * D; i++) dgot[i] = 7.0f;
        dn.in = AV_GEMV_IN_RMSNORM, dn.norm = &norm;
        C->matmul_fused_forward(dgot, (const float *)sw16, &Wd, T, &dn);
        int touched = 0;
        for (int i = 0; i < T * D; i++) touched += dgot[i] != 7.0f;
        CHECK(touched == 0, "%s: bf16 input with RMSNorm wrote %d values (want refused)", what, touched);
        free(swr), free(dref), free(dgot), free((void *)Wd.data);
    }

    /* STORE with the argmax fold (LM head): rows 0 NaN, rows 3 and 5 equal (a tie when largest) */
    int V = 40;
    av_mat Wl = rnd_mat(V, D, AV_F32);
    float *wl = (float *)Wl.data;
    wl[0] = NAN;
    memcpy(wl + 5 * D, wl + 3 * D, sizeof(float) * D);
    if (dt == AV_BF16) { /* the weight as bf16 again, its NaN kept */
        uint16_t *b = malloc(sizeof(uint16_t) * V * D);
        av_store_bf16(b, wl, (size_t)V * D);
        free(wl);
        Wl.data = b, Wl.dtype = AV_BF16;
    }
    float *lg = malloc(sizeof(float) * T * V), *lref = malloc(sizeof(float) * T * V);
    int32_t ids[16], apos[16];
    for (int t = 0; t < T; t++) ids[t] = -1, apos[t] = pos[t];
    C->matmul_forward(lref, in, &Wl, T);
    f = base;
    f.argmax = ids, f.argmax_pos = apos;
    C->matmul_fused_forward(lg, x, &Wl, T, &f);
    int bad = 0, badpos = 0;
    for (int t = 0; t < T; t++) {
        bad += ids[t] != host_argmax(lref + (size_t)t * V, V);
        badpos += apos[t] != pos[t] + 1;
    }
    e = 0;
    for (int t = 0; t < T; t++) { /* each row's first logit is NaN */
        double et = test_rel_l2(lg + (size_t)t * V + 1, lref + (size_t)t * V + 1, (size_t)V - 1);
        e = et > e ? et : e;
    }
    CHECK(e <= 1e-6, "%s: LM head rel L2 %.3g", what, e);
    CHECK(bad == 0 && badpos == 0, "%s: argmax fold: %d ids, %d positions wrong", what, bad, badpos);

    free(x), free(xn), free((void *)norm.data), free((void *)Wqkv.data), free(got), free(q), free(k), free(v), free(ref);
    free((void *)Wo.data), free(att), free(res), free(r2), free(tmp);
    free((void *)Wgu.data), free(g), free(u), free(sw), free(gotf), free(sw16), free(got16);
    free((void *)Wl.data), free(lg), free(lref);
}

/* The fold's corner cases: ties pick the lowest index, every-NaN rows give 0, the host ring. */
static void check_argmax_ring(void) {
    int D = 8, V = 6;
    float w[6 * 8] = {0}, x[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    for (int j = 0; j < D; j++) w[2 * D + j] = w[4 * D + j] = 1.0f; /* rows 2 and 4: the maximum, tied */
    av_mat W = {.data = w, .dtype = AV_F32, .rows = V, .cols = D};
    int32_t id = -1, p = 9, ring[4] = {-1, -1, -1, -1};
    unsigned seq = 5;
    float lg[6];
    av_gemv_fusion f = {.out = AV_GEMV_OUT_STORE, .argmax = &id, .argmax_pos = &p, .argmax_host = ring, .argmax_seq = &seq, .argmax_ring = 4};
    C->matmul_fused_forward(lg, x, &W, 1, &f);
    CHECK(id == 2 && p == 10 && seq == 6 && ring[1] == 2, "tie: id %d pos %d seq %u ring[1] %d (want 2 10 6 2)", id, p, seq, ring[1]);
    for (int i = 0; i < V * D; i++) w[i] = NAN;
    C->matmul_fused_forward(lg, x, &W, 1, &f);
    CHECK(id == 0 && p == 11 && seq == 7 && ring[2] == 0, "all NaN: id %d pos %d seq %u ring[2] %d (want 0 11 7 0)", id, p, seq, ring[2]);
}

/* attention_decode vs the new rows copied into the caches + attention_forward per sequence. */
static void check_decode(int N, int H, int KVH, int hd, int max_seq, int interleaved) {
    size_t qd = (size_t)H * hd, kvd = (size_t)KVH * hd, ss = (size_t)max_seq * kvd + 3 * kvd; /* padded regions */
    size_t rs = interleaved ? qd + 2 * kvd : 0, qrow = rs ? rs : qd, krow = rs ? rs : kvd;
    float *qkv = test_rnd((size_t)N * (qd + 2 * kvd), 1.0f), *kc = test_rnd(ss * N, 1.0f), *vc = test_rnd(ss * N, 1.0f);
    float *kr = malloc(sizeof(float) * ss * N), *vr = malloc(sizeof(float) * ss * N), *out = malloc(sizeof(float) * N * qd),
          *ref = malloc(sizeof(float) * N * qd);
    memcpy(kr, kc, sizeof(float) * ss * N);
    memcpy(vr, vc, sizeof(float) * ss * N);
    int32_t pos[8];
    for (int i = 0; i < N; i++) pos[i] = (i * 7 + 3 * (hd / 16)) % max_seq;
    pos[0] = 0; /* a first token */
    const float *q = qkv, *kn = rs ? qkv + qd : qkv + (size_t)N * qd, *vn = rs ? qkv + qd + kvd : kn + (size_t)N * kvd;
    for (int i = 0; i < N; i++) {
        float *ki = kr + (size_t)i * ss, *vi = vr + (size_t)i * ss;
        memcpy(ki + (size_t)pos[i] * kvd, kn + (size_t)i * krow, sizeof(float) * kvd);
        memcpy(vi + (size_t)pos[i] * kvd, vn + (size_t)i * krow, sizeof(float) * kvd);
        C->attention_forward(ref + (size_t)i * qd, NULL, q + (size_t)i * qrow, ki, vi, 1, pos[i] + 1, pos[i], H, KVH, hd);
    }
    C->attention_decode(out, q, kn, vn, kc, vc, pos, N, ss, H, KVH, hd, rs, 0, 0);
    double e = test_rel_l2(out, ref, (size_t)N * qd);
    int cache_diff = 0;
    for (size_t i = 0; i < ss * N; i++) cache_diff += kc[i] != kr[i] || vc[i] != vr[i];
    CHECK(e <= 1e-6 && cache_diff == 0, "attention_decode N %d H %d KVH %d hd %d %s: rel L2 %.3g, %d cache values differ", N, H, KVH, hd,
          rs ? "q|k|v rows" : "packed", e, cache_diff);
    free(qkv), free(kc), free(vc), free(kr), free(vr), free(out), free(ref);
}

/* Greedy tokens from the decode plan (av_decoder) equal those of av_session_forward + argmax. */
static void check_model_decode(const char *dir, const char *name) {
    av_model *m = NULL;
    CHECK_OK(av_model_load(&m, dir, C));
    if (!m) return;
    int V = m->cfg.vocab_size, n = 8;
    av_session *a = NULL, *b = NULL;
    CHECK_OK(av_session_new(&a, m, 64, 16));
    CHECK_OK(av_session_new(&b, m, 64, 16));
    av_decoder *d = NULL;
    if (b) CHECK_OK(av_decoder_new(&d, b));
    if (!a || !b || !d) goto done;
    int32_t prompt[5] = {1, 17 % V, 345 % V, 99 % V, 4001 % V};
    float *la = malloc(sizeof(float) * V), *lb = malloc(sizeof(float) * V);
    CHECK_OK(av_session_forward(a, prompt, 5));
    CHECK_OK(av_session_forward(b, prompt, 5));
    av_session_last_logits(a, la);
    int32_t ta = host_argmax(la, V), tb = ta, bad = 0;
    double worst = 0;
    for (int i = 0; i < n; i++) {
        CHECK_OK(av_session_forward(a, &ta, 1));
        av_session_last_logits(a, la);
        int32_t next = -1;
        CHECK_OK(av_decoder_next(d, tb, 0.0f, 1.0f, 0, &next));
        av_session_last_logits(b, lb);
        double e = test_rel_l2(lb, la, (size_t)V);
        worst = e > worst ? e : worst;
        ta = host_argmax(la, V);
        bad += next != ta;
        tb = next;
    }
    CHECK(bad == 0, "%s: %d of %d greedy decode-plan tokens differ from av_session_forward", name, bad, n);
    CHECK(worst <= 1e-5, "%s: decode-plan logits rel L2 %.3g vs av_session_forward", name, worst);
    CHECK(av_session_n_past(a) == av_session_n_past(b), "%s: positions %d vs %d", name, av_session_n_past(a), av_session_n_past(b));
    free(la), free(lb);
done:
    av_decoder_free(d);
    av_session_free(a);
    av_session_free(b);
    av_model_free(m);
}

/* A synthesized model (q|k|v and gate|up back to back: the layers' fused decode path). */
static void check_synth_decode(void) {
    char dir[4096], f[4200];
    const char *tmp = getenv("AV_TMP");
    snprintf(dir, sizeof dir, "%s/fused-model-%d", tmp ? tmp : "/tmp", (int)getpid());
    av_config cf;
    av_synth_preset(&cf, "tiny");
    CHECK_OK(av_synth_write(&cf, dir, 11, AV_BF16));
    av_model *m = NULL;
    CHECK_OK(av_model_load(&m, dir, C));
    if (m) { /* the layout the fused path needs (layer.c stacked()) */
        const av_layer *L = &m->layers[0];
        size_t es = av_dtype_size(L->q.w.dtype);
        const char *q = L->q.w.data, *k = L->k.w.data, *v = L->v.w.data, *g = L->gate.w.data, *u = L->up.w.data;
        CHECK(k == q + (size_t)L->q.w.rows * L->q.w.cols * es && v == k + (size_t)L->k.w.rows * L->k.w.cols * es &&
                  u == g + (size_t)L->gate.w.rows * L->gate.w.cols * es,
              "synthesized model: q|k|v, gate|up not back to back (the fused path is not exercised)");
        av_model_free(m);
    }
    check_model_decode(dir, "synthesized tiny (fused products)");
    snprintf(f, sizeof f, "%s/config.json", dir);
    remove(f);
    snprintf(f, sizeof f, "%s/model.safetensors", dir);
    remove(f);
    remove(dir);
}

int main(void) {
    test_rng_state = 777;
    C = av_backend_cpu();
    CHECK(C->matmul_fused_forward && C->attention_decode, "CPU table lacks the fused decode ops");
    if (!C->matmul_fused_forward || !C->attention_decode) return TEST_SUMMARY();
    const int Ts[] = {1, 2, 3, 5, 8, 16};
    const int shapes[][5] = {/* H KVH hd D F */ {4, 2, 16, 64, 96}, {8, 2, 32, 96, 160}, {2, 1, 64, 128, 80}, {4, 4, 32, 48, 64}};
    for (int s = 0; s < 4; s++)
        for (int ti = 0; ti < 6; ti++) {
            const int *p = shapes[s];
            check_products(Ts[ti], p[0], p[1], p[2], p[3], p[4], (ti + s) % 2 ? AV_BF16 : AV_F32, ti % 3 != 1);
            check_products(Ts[ti], p[0], p[1], p[2], p[3], p[4], (ti + s) % 2 ? AV_F32 : AV_BF16, ti % 3 == 1);
        }
    check_argmax_ring();
    check_decode(1, 4, 2, 16, 20, 0);
    check_decode(3, 8, 2, 32, 40, 1);
    check_decode(4, 2, 1, 64, 33, 0);
    check_decode(5, 4, 4, 16, 64, 1);
    check_model_decode(test_fixture("tiny-llama"), "tiny-llama");
    check_synth_decode();
    return TEST_SUMMARY();
}
