/* CUDA ops vs the CPU ops on random inputs (exact-f32 table: rel L2 <= 1e-5, 1e-4 for reductions
 * through cuBLAS; bf16 table: rel L2 <= 1e-2): elementwise, RMSNorm, RoPE, SwiGLU, embedding, cross
 * entropy and the device sampler, AdamW, LoRA dropout masks (bit-identical to the CPU's), bf16
 * activation storage, and the full fine-tuning weight-gradient ops. Without a GPU: "skipped: no GPU". */
#include "test_cuda.h"
#include "core/memory.h"
#include "ops/sample.h"

static void test_elementwise(void) {
    int T = 37, D = 200;
    size_t n = (size_t)T * D;
    float *x = test_rnd(n, 2), *y = test_rnd(n, 1), *w = test_rnd(D, 1);
    uint16_t *wb;
    av_mat W = bf16_mat(w, 1, D, &wb), Wd = on_dev(W);
    float *dx = up(G, x, n * 4), *dy = up(G, y, n * 4);
    /* rmsnorm fwd/bwd */
    float *o = malloc(n * 4), *rs = malloc(T * 4), *dxc = calloc(n, 4), *dwc = calloc(D, 4);
    av_rmsnorm_forward(o, rs, x, &W, T, D, 1e-5f);
    float *od = G->alloc(n * 4, "t"), *rsd = G->alloc(T * 4, "t"), *dxd = G->alloc(n * 4, "t"), *dwd = G->alloc(D * 4, "t");
    G->rmsnorm_forward(od, rsd, dx, &Wd, T, D, 1e-5f);
    CMP("rmsnorm_forward", od, o, n, 1e-6);
    CMP("rmsnorm rstd", rsd, rs, T, 1e-6);
    av_rmsnorm_backward(dxc, dwc, y, x, &W, rs, T, D);
    G->zero(dxd, n * 4);
    G->zero(dwd, D * 4);
    G->rmsnorm_backward(dxd, dwd, dy, dx, &Wd, rsd, T, D);
    CMP("rmsnorm_backward dx", dxd, dxc, n, 1e-5);
    CMP("rmsnorm_backward dw", dwd, dwc, D, 1e-5);
    /* swiglu */
    av_swiglu_forward(o, x, y, n);
    G->swiglu_forward(od, dx, dy, n);
    CMP("swiglu_forward", od, o, n, 1e-6);
    float *g = test_rnd(n, 1), *gd = up(G, g, n * 4), *dg = calloc(n, 4), *du = calloc(n, 4);
    av_swiglu_backward(dg, du, g, x, y, n);
    G->zero(dxd, n * 4);
    G->zero(od, n * 4);
    G->swiglu_backward(dxd, od, gd, dx, dy, n);
    CMP("swiglu_backward dgate", dxd, dg, n, 1e-6);
    CMP("swiglu_backward dup", od, du, n, 1e-6);
    /* adds */
    G->copy(od, dx, n * 4);
    memcpy(o, x, n * 4);
    av_add_scaled(o, 0.37f, y, n);
    av_add_inplace(o, y, n);
    G->add_scaled(od, 0.37f, dy, n);
    G->add_inplace(od, dy, n);
    CMP("add_scaled + add_inplace", od, o, n, 1e-7);
    /* rope */
    int H = 5, hd = 40;
    size_t rn = (size_t)T * H * hd;
    float *r = test_rnd(rn, 1), *rd = up(G, r, rn * 4), inv[20];
    int32_t pos[37];
    for (int t = 0; t < T; t++) pos[t] = 3 * t + 1;
    for (int i = 0; i < hd / 2; i++) inv[i] = powf(10000.0f, -2.0f * i / hd);
    int32_t *posd = up(G, pos, sizeof pos);
    float *invd = up(G, inv, sizeof inv);
    av_rope_forward(r, pos, inv, T, H, hd);
    G->rope_forward(rd, posd, invd, T, H, hd);
    CMP("rope_forward", rd, r, rn, 1e-5);
    av_rope_backward(r, pos, inv, T, H, hd);
    G->rope_backward(rd, posd, invd, T, H, hd);
    CMP("rope_backward", rd, r, rn, 1e-5);
    /* optimizers (every kind; adafactor factored over [T, D] and as a vector; three steps) */
    float *p = test_rnd(n, 1), *m = test_rnd(n, 0.1f), *v = test_rnd(n, 0.1f);
    for (size_t i = 0; i < n; i++) v[i] = fabsf(v[i]);
    for (int k = 0; k < 5; k++) {
        av_optim_params op;
        av_optim_defaults(&op, k == 4 ? AV_OPTIM_ADAFACTOR : (av_optim_kind)k);
        op.lr = 1e-3f;
        op.bias_correction = k == 1;
        op.momentum = k == 2 ? 0.9 : 0;
        op.af_first_moment = k == 3, op.af_beta1 = 0.9, op.weight_decay = k >= 3 ? 0.01 : op.weight_decay;
        int rows = k == 4 ? 1 : T, cols = k == 4 ? (int)n : D;
        float *pc = malloc(n * 4), *mc = malloc(n * 4), *vc = malloc(n * 4);
        memcpy(pc, p, n * 4), memcpy(mc, m, n * 4), memcpy(vc, v, n * 4);
        float *pd = up(G, p, n * 4), *md = up(G, m, n * 4), *vd = up(G, v, n * 4);
        for (op.step = 1; op.step <= 3; op.step++) {
            av_optim_step(pc, y, mc, vc, rows, cols, &op);
            G->optim_step(pd, dy, md, vd, rows, cols, &op);
        }
        char nm[64];
        snprintf(nm, sizeof nm, "optim_step %s #%d p", av_optim_name(op.kind), k);
        CMP(nm, pd, pc, n, 1e-6);
        snprintf(nm, sizeof nm, "optim_step %s #%d s2", av_optim_name(op.kind), k);
        size_t n2 = av_optim_state_size(&op, rows, cols, 1);
        if (n2) CMP(nm, vd, vc, n2, 1e-6);
        free(pc), free(mc), free(vc);
        G->free(pd), G->free(md), G->free(vd);
    }
    /* embedding */
    int V = 300;
    float *tab = test_rnd((size_t)V * D, 1);
    uint16_t *tb;
    av_mat E = bf16_mat(tab, V, D, &tb), Ed = on_dev(E);
    int32_t ids[37];
    for (int t = 0; t < T; t++) ids[t] = (t * 97) % V;
    int32_t *idsd = up(G, ids, sizeof ids);
    av_embedding_forward(o, ids, &E, T);
    G->embedding_forward(od, idsd, &Ed, T);
    CMP("embedding_forward", od, o, n, 0);
    float *dt = calloc((size_t)V * D, 4), *dtd = G->alloc((size_t)V * D * 4, "t");
    G->zero(dtd, (size_t)V * D * 4);
    av_embedding_backward(dt, y, ids, T, D);
    G->embedding_backward(dtd, dy, idsd, T, D);
    CMP("embedding_backward", dtd, dt, (size_t)V * D, 1e-6);
    free(x); free(y); free(w); free(wb); free(o); free(rs); free(dxc); free(dwc); free(g); free(dg); free(du); free(r);
    free(p); free(m); free(v); free(tab); free(tb); free(dt);
}

static void test_xent_sample(void) {
    int T = 21, D = 64, V = 1000, chunk = 8;
    float *h = test_rnd((size_t)T * D, 1), *w = test_rnd((size_t)V * D, 0.3f);
    uint16_t *wb;
    av_mat W = bf16_mat(w, V, D, &wb), Wd = on_dev(W);
    int32_t tg[21];
    for (int t = 0; t < T; t++) tg[t] = t % 5 == 4 ? -1 : (t * 131) % V;
    float *dh = calloc((size_t)T * D, 4), *nll = malloc(T * 4), *scr = malloc((size_t)chunk * V * 4);
    double ref = av_xent_forward_backward(dh, nll, h, &W, tg, T, 0.05f, scr, chunk);
    float *hd = up(G, h, (size_t)T * D * 4), *dhd = G->alloc((size_t)T * D * 4, "t"), *nlld = G->alloc(T * 4, "t"),
          *scrd = G->alloc((size_t)chunk * V * 4, "t");
    int32_t *tgd = up(G, tg, sizeof tg);
    for (int f = 0; f < 2; f++) {
        const av_backend *be = f ? G32 : G;
        G->zero(dhd, (size_t)T * D * 4);
        double got = be->xent_forward_backward(dhd, nlld, hd, &Wd, tgd, T, 0.05f, scrd, chunk);
        CHECK(fabs(got - ref) <= (f ? 1e-5 : 1e-3) * fabs(ref), "xent %s: sum %.8f vs %.8f", be->name, got, ref);
        CMP("xent row nll", nlld, nll, T, f ? 1e-5 : 1e-3);
        CMP("xent dh", dhd, dh, (size_t)T * D, f ? 1e-5 : 1e-2);
    }
    /* sampler: argmax exact; temperature/top-p draws agree with the host rule on nearly every row */
    int N = 64;
    float *lg = test_rnd((size_t)N * V, 4);
    float *lgd = up(G, lg, (size_t)N * V * 4);
    int32_t ids[64], idh[64], pos[64], posh[64];
    int32_t *idsd = G->alloc(sizeof ids, "t"), *posd = G->alloc(sizeof pos, "t");
    for (int mode = 0; mode < 3; mode++) {
        float temp = mode ? 0.8f : 0.0f, top_p = mode == 2 ? 0.9f : 1.0f;
        for (int i = 0; i < N; i++) pos[i] = posh[i] = 10 + i;
        G->upload(posd, pos, sizeof pos);
        G->sample(idsd, lgd, N, V, temp, top_p, 42, posd, NULL);
        G->download(ids, idsd, sizeof ids);
        G->download(pos, posd, sizeof pos);
        av_sample_rows(idh, lg, N, V, temp, top_p, 42, posh, NULL);
        int same = 0, distinct = 0;
        for (int i = 0; i < N; i++) {
            same += ids[i] == idh[i];
            distinct += i && ids[i] != ids[i - 1];
        }
        CHECK(same >= (mode ? N - 2 : N), "sampler mode %d: %d of %d rows agree with the host sampler", mode, same, N);
        CHECK(pos[0] == 11 && pos[N - 1] == 10 + N, "sampler advances positions");
        CHECK(distinct > N / 2, "sampler mode %d: draws vary across rows", mode);
    }
    free(h); free(w); free(wb); free(dh); free(nll); free(scr); free(lg);
}

/* LoRA dropout: the CUDA ops draw the CPU's masks bit for bit (same hash of (seed, i)), forward
 * and backward (accumulating into non-zero dx), in place too, on a length that is no multiple of
 * the block size. */
static void test_dropout_ops(void) {
    size_t n = 300007;
    float *x = test_rnd(n, 2), *d = test_rnd(n, 1), *dx0 = test_rnd(n, 1);
    float *xd = up(G, x, n * 4), *dd = up(G, d, n * 4), *od = G->alloc(n * 4, "t"), *dxd = G->alloc(n * 4, "t");
    float *o = malloc(n * 4), *dx = malloc(n * 4);
    const float ps[] = {0.0f, 0.1f, 0.37f, 0.9f};
    for (int pi = 0; pi < 4; pi++) {
        float p = ps[pi];
        uint64_t key = av_dropout_key(7, 3 + pi, 11);
        for (int f = 0; f < 2; f++) {
            const av_backend *be = f ? G32 : G;
            av_dropout_forward(o, x, n, p, key);
            be->dropout_forward(od, xd, n, p, key);
            float *h = down(G, od, n);
            size_t bad = 0, dropped = 0;
            for (size_t i = 0; i < n; i++) {
                bad += memcmp(&h[i], &o[i], 4) != 0;
                dropped += o[i] == 0.0f;
            }
            CHECK(bad == 0, "dropout_forward %s p=%.2f: %zu of %zu differ from the CPU", be->name, p, bad, n);
            CHECK(fabs((double)dropped / n - p) < 0.01, "dropout_forward p=%.2f drops %.4f", p, (double)dropped / n);
            free(h);
            memcpy(dx, dx0, n * 4);
            G->upload(dxd, dx0, n * 4);
            av_dropout_backward(dx, d, n, p, key);
            be->dropout_backward(dxd, dd, n, p, key);
            h = down(G, dxd, n);
            bad = 0;
            for (size_t i = 0; i < n; i++) bad += memcmp(&h[i], &dx[i], 4) != 0;
            CHECK(bad == 0, "dropout_backward %s p=%.2f: %zu of %zu differ from the CPU", be->name, p, bad, n);
            free(h);
        }
    }
    /* in place (out aliases x) */
    G->copy(od, xd, n * 4);
    G->dropout_forward(od, od, n, 0.25f, 99);
    av_dropout_forward(o, x, n, 0.25f, 99);
    float *h = down(G, od, n);
    CHECK(memcmp(h, o, n * 4) == 0, "dropout_forward in place differs from the CPU");
    free(h);
    G->free(xd); G->free(dd); G->free(od); G->free(dxd);
    free(x); free(d); free(dx0); free(o); free(dx);
}

/* bf16 activation storage: store / load match the CPU's bit for bit (round to nearest even, NaN
 * kept NaN, ties, huge values), vectorised and on unaligned offsets, odd length. */
static void test_bf16_store_ops(void) {
    size_t n = 100003;
    float *x = test_rnd(n, 3);
    x[0] = NAN; x[1] = INFINITY; x[2] = -0.0f; x[3] = 3.0e38f; x[4] = 1.00390625f; /* tie: 1 + 2^-8 */ x[5] = 1.01171875f;
    uint16_t *h16 = malloc(n * 2), *c16 = malloc(n * 2);
    float *back = malloc(n * 4);
    float *xd = up(G, x, n * 4), *bd = G->alloc(n * 4, "t");
    uint16_t *sd = G->alloc(n * 2, "t");
    for (int off = 0; off < 2; off++) { /* 0: aligned (vector path); 1: one element in (scalar path) */
        size_t m = n - off;
        av_store_bf16(h16, x + off, m);
        G->store_bf16(sd + off, xd + off, m);
        G->download(c16, sd + off, m * 2);
        size_t bad = 0;
        for (size_t i = 0; i < m; i++) bad += h16[i] != c16[i];
        CHECK(bad == 0, "store_bf16 (offset %d): %zu of %zu differ from the CPU", off, bad, m);
        av_load_bf16(back, h16, m);
        G->load_bf16(bd + off, sd + off, m);
        float *h = down(G, bd, n);
        bad = 0;
        for (size_t i = 0; i < m; i++) bad += memcmp(&h[off + i], &back[i], 4) != 0;
        CHECK(bad == 0, "load_bf16 (offset %d): %zu of %zu differ from the CPU", off, bad, m);
        free(h);
        if (!off) CHECK(back[2] == 0.0f && signbit(back[2]) && isnan(back[0]) && isinf(back[1]), "bf16 round trip of -0 / NaN / inf");
    }
    G->free(xd); G->free(bd); G->free(sd);
    free(x); free(h16); free(c16); free(back);
}

/* The weight-gradient ops of full fine-tuning, both tables vs the CPU: embedding scatter-add with
 * repeated ids into a non-zero table gradient, RMSNorm dw alone (dx NULL, f32 master weight),
 * matmul dW alone (dx NULL) for f32 master weights, and the LM-head cross-entropy with dW. */
static void test_full_ft_ops(void) {
    int T = 53, D = 96, V = 211;
    size_t n = (size_t)T * D;
    float *x = test_rnd(n, 1.5f), *y = test_rnd(n, 1), *w = test_rnd(D, 1);
    float *xd = up(G, x, n * 4), *yd = up(G, y, n * 4);
    int32_t ids[53];
    for (int t = 0; t < T; t++) ids[t] = (t * 7) % 13 == 0 ? 5 : (t * 31) % V; /* id 5 repeats */
    int32_t *idsd = up(G, ids, sizeof ids);
    float *tab0 = test_rnd((size_t)V * D, 0.1f), *tab = malloc((size_t)V * D * 4), *tabd = G->alloc((size_t)V * D * 4, "t");
    av_mat Wf = {.data = w, .dtype = AV_F32, .rows = 1, .cols = D}, Wfd = Wf;
    Wfd.data = up(G, w, D * 4);
    float *rs = malloc(T * 4), *o = malloc(n * 4), *dw = malloc(D * 4), *dw0 = test_rnd(D, 0.1f);
    av_rmsnorm_forward(o, rs, x, &Wf, T, D, 1e-6f);
    float *rsd = up(G, rs, T * 4), *dwd = G->alloc(D * 4, "t");
    for (int f = 0; f < 2; f++) {
        const av_backend *be = f ? G32 : G;
        char nm[96];
        memcpy(tab, tab0, (size_t)V * D * 4);
        G->upload(tabd, tab0, (size_t)V * D * 4);
        av_embedding_backward(tab, y, ids, T, D);
        be->embedding_backward(tabd, yd, idsd, T, D);
        snprintf(nm, sizeof nm, "embedding_backward (repeated ids) %s", be->name);
        CMP(nm, tabd, tab, (size_t)V * D, 1e-6);
        memcpy(dw, dw0, D * 4);
        G->upload(dwd, dw0, D * 4);
        av_rmsnorm_backward(NULL, dw, y, x, &Wf, rs, T, D);
        be->rmsnorm_backward(NULL, dwd, yd, xd, &Wfd, rsd, T, D);
        snprintf(nm, sizeof nm, "rmsnorm_backward dw only %s", be->name);
        CMP(nm, dwd, dw, D, 1e-5);
    }
    /* matmul dW alone, f32 master weights, a non-zero starting gradient */
    int N = 160, K = D;
    float *wm = test_rnd((size_t)N * K, 0.1f), *dy = test_rnd((size_t)T * N, 1), *gW0 = test_rnd((size_t)N * K, 0.1f), *gW = malloc((size_t)N * K * 4);
    av_mat M = {.data = wm, .dtype = AV_F32, .rows = N, .cols = K}, Md = M;
    Md.data = up(G, wm, (size_t)N * K * 4);
    float *dyd = up(G, dy, (size_t)T * N * 4), *gWd = G->alloc((size_t)N * K * 4, "t");
    for (int f = 0; f < 2; f++) {
        const av_backend *be = f ? G32 : G;
        memcpy(gW, gW0, (size_t)N * K * 4);
        G->upload(gWd, gW0, (size_t)N * K * 4);
        av_matmul_backward(NULL, gW, dy, x, &M, T);
        be->matmul_backward(NULL, gWd, dyd, xd, &Md, T);
        CMP(f ? "matmul_backward dW only cuda-f32" : "matmul_backward dW only cuda", gWd, gW, (size_t)N * K, f ? 1e-5 : 2e-3);
    }
    /* xent with the head's dW (f32 master head), chunks that do not divide T, ignored rows */
    int Vh = 1000, chunk = 8;
    float *hw = test_rnd((size_t)Vh * D, 0.3f);
    av_mat H = {.data = hw, .dtype = AV_F32, .rows = Vh, .cols = D}, Hd = H;
    Hd.data = up(G, hw, (size_t)Vh * D * 4);
    int32_t tg[53];
    for (int t = 0; t < T; t++) tg[t] = t % 5 == 4 ? -1 : (t * 131) % Vh;
    int32_t *tgd = up(G, tg, sizeof tg);
    float *dh = calloc(n, 4), *dH = calloc((size_t)Vh * D, 4), *nll = malloc(T * 4), *scr = malloc((size_t)chunk * Vh * 4);
    double ref = av_xent_forward_backward_dw(dh, dH, nll, x, &H, tg, T, 0.05f, scr, chunk);
    float *dhd = G->alloc(n * 4, "t"), *dHd = G->alloc((size_t)Vh * D * 4, "t"), *nlld = G->alloc(T * 4, "t"),
          *scrd = G->alloc((size_t)chunk * Vh * 4, "t");
    for (int f = 0; f < 2; f++) {
        const av_backend *be = f ? G32 : G;
        CHECK(be->xent_forward_backward_dw != NULL, "%s: no xent_forward_backward_dw", be->name);
        if (!be->xent_forward_backward_dw) continue;
        G->zero(dhd, n * 4);
        G->zero(dHd, (size_t)Vh * D * 4);
        double got = be->xent_forward_backward_dw(dhd, dHd, nlld, xd, &Hd, tgd, T, 0.05f, scrd, chunk);
        CHECK(fabs(got - ref) <= (f ? 1e-5 : 1e-3) * fabs(ref), "xent_dw %s: sum %.8f vs %.8f", be->name, got, ref);
        CMP(f ? "xent_dw nll cuda-f32" : "xent_dw nll cuda", nlld, nll, T, f ? 1e-5 : 1e-3);
        CMP(f ? "xent_dw dh cuda-f32" : "xent_dw dh cuda", dhd, dh, n, f ? 1e-5 : 1e-2);
        CMP(f ? "xent_dw dW cuda-f32" : "xent_dw dW cuda", dHd, dH, (size_t)Vh * D, f ? 1e-5 : 1e-2);
        /* dW == NULL: the plain op */
        G->zero(dhd, n * 4);
        got = be->xent_forward_backward_dw(dhd, NULL, nlld, xd, &Hd, tgd, T, 0.05f, scrd, chunk);
        CHECK(fabs(got - ref) <= (f ? 1e-5 : 1e-3) * fabs(ref), "xent_dw(dW NULL) %s: sum %.8f vs %.8f", be->name, got, ref);
        CMP("xent_dw(dW NULL) dh", dhd, dh, n, f ? 1e-5 : 1e-2);
    }
    free(x); free(y); free(w); free(tab0); free(tab); free(rs); free(o); free(dw); free(dw0);
    free(wm); free(dy); free(gW0); free(gW); free(hw); free(dh); free(dH); free(nll); free(scr);
}

int main(void) {
    test_rng_state = 12345;
    if (!test_cuda_init()) {
        SKIP("no GPU");
        return TEST_SUMMARY();
    }
    test_elementwise();
    test_xent_sample();
    test_dropout_ops();
    test_bf16_store_ops();
    test_full_ft_ops();
    CHECK_OK(av_cuda_status());
    return TEST_SUMMARY();
}
