/* CUDA matrix products vs the CPU: the plain product forward/backward on both tables, the fused decode
 * products (RMSNorm input, RoPE / SwiGLU / residual outputs; one row and the tensor-core rows), the
 * greedy argmax folded into the LM head, 16-bit decode activations, and the bf16 table's 16-bit
 * activation products. Without a GPU: "skipped: no GPU". */
#include "test_cuda.h"
#include "core/memory.h"

static void test_matmul(void) {
    int shapes[][3] = {{1, 96, 64}, {3, 200, 136}, {8, 256, 512}, {37, 300, 200}, {130, 512, 256}, {5, 70, 36}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int T = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
        float *x = test_rnd((size_t)T * K, 1), *w = test_rnd((size_t)N * K, 0.1f), *dy = test_rnd((size_t)T * N, 1);
        uint16_t *wb;
        av_mat W = bf16_mat(w, N, K, &wb), Wd = on_dev(W);
        float *o = malloc(sizeof(float) * T * N), *dx = calloc((size_t)T * K, 4);
        av_matmul_forward(o, x, &W, T);
        av_matmul_backward(dx, NULL, dy, NULL, &W, T);
        float *xd = up(G, x, (size_t)T * K * 4), *dyd = up(G, dy, (size_t)T * N * 4), *od = G->alloc((size_t)T * N * 4, "t"),
              *dxd = G->alloc((size_t)T * K * 4, "t");
        char nm[96];
        for (int f = 0; f < 2; f++) {
            const av_backend *be = f ? G32 : G;
            double tol = (f || T == 1) ? 1e-5 : 1e-2; /* bf16 table: tensor cores from 2 rows */
            be->matmul_forward(od, xd, &Wd, T);
            snprintf(nm, sizeof nm, "matmul_forward %s T=%d N=%d K=%d", be->name, T, N, K);
            CMP(nm, od, o, (size_t)T * N, tol);
            G->zero(dxd, (size_t)T * K * 4);
            be->matmul_backward(dxd, NULL, dyd, NULL, &Wd, T);
            snprintf(nm, sizeof nm, "matmul_backward dx %s T=%d N=%d K=%d", be->name, T, N, K);
            CMP(nm, dxd, dx, (size_t)T * K, f ? 1e-5 : 1e-2);
        }
        /* f32 weights (LoRA A/B) + dW */
        av_mat Wf = {.data = w, .dtype = AV_F32, .rows = N, .cols = K}, Wfd = Wf;
        Wfd.data = up(G, w, (size_t)N * K * 4);
        float *dW = calloc((size_t)N * K, 4), *dWd = G->alloc((size_t)N * K * 4, "t");
        memset(dx, 0, (size_t)T * K * 4);
        av_matmul_forward(o, x, &Wf, T);
        av_matmul_backward(dx, dW, dy, x, &Wf, T);
        G->matmul_forward(od, xd, &Wfd, T);
        G->zero(dxd, (size_t)T * K * 4);
        G->zero(dWd, (size_t)N * K * 4);
        G->matmul_backward(dxd, dWd, dyd, xd, &Wfd, T);
        snprintf(nm, sizeof nm, "f32 matmul T=%d N=%d K=%d", T, N, K);
        double ftol = (N <= 64 || K <= 64) ? 2e-3 : 1e-5; /* bf16 table: low-rank f32 products on TF32 tensor cores */
        CMP(nm, od, o, (size_t)T * N, ftol);
        CMP(nm, dxd, dx, (size_t)T * K, ftol);
        CMP(nm, dWd, dW, (size_t)N * K, ftol);
        free(x); free(w); free(dy); free(wb); free(o); free(dx); free(dW);
    }
}

/* Fused decode products vs the separate CPU ops: RMSNorm input, stores with RoPE pairs, SwiGLU pairs
 * and residual adds; one row (exact f32 GEMV: 1e-5), 2..16 rows on bf16 tensor cores and more through
 * cuBLAS (inputs rounded to bf16: 4e-3), the exact-f32 table (1e-5); shapes with partial tiles, small
 * and large grids,
 * K not a multiple of 32, and ones that fall back (K % 8 != 0). */
static void test_matmul_fused(void) {
    struct { av_gemv_in in; av_gemv_out out; int T, N, K, rope_heads, hd, f32; } cases[] = {
        {AV_GEMV_IN_X, AV_GEMV_OUT_STORE, 1, 9000, 264, 0, 0, 0},      {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_ROPE, 1, 440, 4104, 8, 40, 0},
        {AV_GEMV_IN_X, AV_GEMV_OUT_ADD, 1, 301, 2056, 0, 0, 0},         {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_ADD, 1, 24, 100, 0, 0, 0},
        {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_SWIGLU, 1, 600, 2048, 0, 0, 0}, {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_ROPE, 1, 2560, 2048, 36, 64, 0},
        {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_ROPE, 3, 2560, 2048, 36, 64, 0}, {AV_GEMV_IN_X, AV_GEMV_OUT_ADD, 8, 2048, 5632, 0, 0, 0},
        {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_SWIGLU, 13, 352, 2048, 0, 0, 0}, {AV_GEMV_IN_X, AV_GEMV_OUT_STORE, 32, 1000, 264, 0, 0, 0},
        {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_ROPE, 20, 512, 1024, 6, 64, 0},  {AV_GEMV_IN_X, AV_GEMV_OUT_ADD, 2, 37, 40, 0, 0, 0},
        {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_ROPE, 3, 2560, 2048, 36, 64, 1}, {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_SWIGLU, 5, 352, 100, 0, 0, 0},
        {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_STORE, 4, 300, 2048, 0, 0, 0},   {AV_GEMV_IN_X, AV_GEMV_OUT_ADD, 7, 4000, 2048, 0, 0, 0},
        {AV_GEMV_IN_X, AV_GEMV_OUT_ADD, 3, 64, 176, 0, 0, 0},             {AV_GEMV_IN_X, AV_GEMV_OUT_ADD, 3, 64, 64, 0, 0, 0},
        {AV_GEMV_IN_RMSNORM, AV_GEMV_OUT_SWIGLU, 3, 352, 64, 0, 0, 0},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int T = cases[ci].T, N = cases[ci].N, K = cases[ci].K, hd = cases[ci].hd, rh = cases[ci].rope_heads, F = N / 2;
        av_gemv_out om = cases[ci].out;
        int on = om == AV_GEMV_OUT_SWIGLU ? F : N; /* output columns */
        float *x = test_rnd((size_t)T * K, 1), *w = test_rnd((size_t)N * K, 0.1f), *g = test_rnd(K, 1), *y = test_rnd((size_t)T * on, 1);
        float *in = malloc(sizeof(float) * T * K), *o = malloc(sizeof(float) * T * N), *ref = malloc(sizeof(float) * T * on), inv[64];
        uint16_t *wb, *gb;
        av_mat W = bf16_mat(w, N, K, &wb), Wd = on_dev(W), Gm = bf16_mat(g, 1, K, &gb), Gd = on_dev(Gm);
        int32_t pos[32];
        for (int t = 0; t < T; t++) pos[t] = 37 + 5 * t;
        for (int i = 0; i < hd / 2; i++) inv[i] = powf(10000.0f, -2.0f * i / hd);
        if (cases[ci].in == AV_GEMV_IN_RMSNORM) av_rmsnorm_forward(in, NULL, x, &Gm, T, K, 1e-5f);
        else memcpy(in, x, sizeof(float) * T * K);
        av_matmul_forward(o, in, &W, T);
        for (int t = 0; t < T; t++) {
            float *ot = o + (size_t)t * N, *rt = ref + (size_t)t * on;
            if (om == AV_GEMV_OUT_SWIGLU) {
                av_swiglu_forward(rt, ot, ot + F, (size_t)F);
                continue;
            }
            if (om == AV_GEMV_OUT_ROPE && rh) av_rope_forward(ot, &pos[t], inv, 1, rh, hd);
            for (int i = 0; i < N; i++) rt[i] = ot[i] + (om == AV_GEMV_OUT_ADD ? y[(size_t)t * N + i] : 0.0f);
        }
        float *xd = up(G, x, sizeof(float) * T * K), *od = up(G, y, sizeof(float) * T * on), *invd = up(G, inv, sizeof inv);
        int32_t *posd = up(G, pos, sizeof pos);
        av_gemv_fusion f = {.in = cases[ci].in, .norm = &Gd, .eps = 1e-5f, .out = om, .pos = posd, .inv_freq = invd, .rope_heads = rh,
                            .head_dim = hd};
        (cases[ci].f32 ? G32 : G)->matmul_fused_forward(od, xd, &Wd, T, &f);
        char nm[112];
        snprintf(nm, sizeof nm, "matmul_fused in=%d out=%d T=%d N=%d K=%d rope=%d%s", (int)cases[ci].in, (int)om, T, N, K, rh,
                 cases[ci].f32 ? " f32" : "");
        CMP(nm, od, ref, (size_t)T * on, T > 1 && !cases[ci].f32 ? 4e-3 : 1e-5); /* bf16 table, > 1 row: bf16 inputs */
        G->free(xd); G->free(od); G->free(invd); G->free(posd); G->free((void *)Wd.data); G->free((void *)Gd.data);
        free(x); free(w); free(g); free(y); free(in); free(o); free(ref); free(wb); free(gb);
    }
}

/* Greedy argmax folded into the LM-head product (av_gemv_fusion argmax): one row (the fused kernel's
 * last block) and 3 rows (the sampler after the product) give the argmax of the logits stored, the
 * lowest index of two tied maxima, advance the positions, and (one row) write the host ring in turn. */
static void test_matmul_fused_argmax(void) {
    int N = 9000, K = 264, lo = 4321, hi = 7777;
    for (int T = 1; T <= 3; T += 2) {
        float *x = test_rnd((size_t)T * K, 1), *w = test_rnd((size_t)N * K, 0.1f);
        for (int k = 0; k < K; k++) w[(size_t)lo * K + k] = w[(size_t)hi * K + k] = x[k] > 0 ? 0.5f : -0.5f; /* row 0's tied max */
        uint16_t *wb;
        av_mat W = bf16_mat(w, N, K, &wb), Wd = on_dev(W);
        float *o = malloc(sizeof(float) * T * N);
        av_matmul_forward(o, x, &W, T);
        int32_t pos[3] = {10, 20, 30}, ids[3], pos2[3];
        float *xd = up(G, x, sizeof(float) * T * K), *od = G->alloc(sizeof(float) * T * N, "t");
        int32_t *idd = G->alloc(sizeof ids, "t"), *posd = up(G, pos, sizeof pos);
        unsigned *seq = G->alloc(sizeof(unsigned), "t");
        G->zero(seq, sizeof(unsigned));
        void *ring_dev = NULL;
        int32_t *ring = G->host_alloc ? G->host_alloc(4 * sizeof(int32_t), &ring_dev) : NULL;
        av_gemv_fusion f = {.in = AV_GEMV_IN_X, .out = AV_GEMV_OUT_STORE, .argmax = idd, .argmax_pos = posd};
        if (ring && T == 1) f.argmax_host = ring_dev, f.argmax_seq = seq, f.argmax_ring = 4;
        for (int rep = 0; rep < 2; rep++) G->matmul_fused_forward(od, xd, &Wd, T, &f);
        G->download(ids, idd, sizeof(int32_t) * T);
        G->download(pos2, posd, sizeof(int32_t) * T);
        float *og = down(G, od, (size_t)T * N); /* its own logits: > 1 row rounds inputs to bf16 */
        CMP("matmul_fused argmax logits", od, o, (size_t)T * N, T > 1 ? 4e-3 : 1e-5);
        memcpy(o, og, sizeof(float) * T * N);
        free(og);
        for (int t = 0; t < T; t++) {
            int best = 0;
            for (int i = 1; i < N; i++) if (o[(size_t)t * N + i] > o[(size_t)t * N + best]) best = i;
            CHECK(ids[t] == best, "matmul_fused argmax T=%d row %d: %d, argmax of its logits %d", T, t, ids[t], best);
            CHECK(pos2[t] == pos[t] + 2, "matmul_fused argmax T=%d row %d: position %d after two steps from %d", T, t, pos2[t], pos[t]);
        }
        CHECK(ids[0] == lo, "matmul_fused argmax T=%d: tie gave %d, want the lower index %d", T, ids[0], lo);
        if (ring && T == 1) {
            unsigned sq = 0;
            G->download(&sq, seq, sizeof sq);
            CHECK(sq == 2 && ring[0] == lo && ring[1] == lo && ring[2] == 0, "matmul_fused argmax ring: seq %u, ring %d %d %d", sq, ring[0],
                  ring[1], ring[2]);
        }
        if (ring) G->host_free(ring);
        G->free(xd); G->free(od); G->free(idd); G->free(posd); G->free(seq); G->free((void *)Wd.data);
        free(x); free(w); free(wb); free(o);
    }
}

/* 16-bit decode activations (av_gemv_fusion in_bf16 / out_bf16, bf16 table): the SwiGLU output
 * written as bf16 must be the f32 output rounded to nearest (bit for bit), and a product reading bf16
 * x must equal the same product on the rounded values in f32 (the kernels round x to bf16 anyway). */
static void test_matmul_fused_bf16(void) {
    int Ts[] = {1, 3, 8, 13, 24};
    struct { int N, K; } sh[] = {{2048, 5632}, {64, 176}};
    for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
        int T = Ts[ti], N = 704, K = 2048, F = N / 2;
        float *x = test_rnd((size_t)T * K, 1), *w = test_rnd((size_t)N * K, 0.1f), *g = test_rnd(K, 1);
        uint16_t *wb, *gb, *h16 = malloc(sizeof(uint16_t) * (size_t)T * F);
        av_mat Wd = on_dev(bf16_mat(w, N, K, &wb)), Gd = on_dev(bf16_mat(g, 1, K, &gb));
        float *xd = up(G, x, sizeof(float) * T * K), *o32 = G->alloc(sizeof(float) * T * F, "t"), *o16 = G->alloc(sizeof(float) * T * F, "t");
        av_gemv_fusion f = {.in = AV_GEMV_IN_RMSNORM, .norm = &Gd, .eps = 1e-5f, .out = AV_GEMV_OUT_SWIGLU};
        G->matmul_fused_forward(o32, xd, &Wd, T, &f);
        f.out_bf16 = 1;
        G->matmul_fused_forward(o16, xd, &Wd, T, &f);
        float *h32 = down(G, o32, (size_t)T * F);
        G->download(h16, o16, sizeof(uint16_t) * (size_t)T * F);
        int bad = 0;
        for (size_t i = 0; i < (size_t)T * F; i++) bad += h16[i] != av_f32_to_bf16(h32[i]);
        CHECK(bad == 0, "matmul_fused SWIGLU out_bf16 T=%d: %d of %d differ from the rounded f32 output", T, bad, T * F);
        G->free(xd); G->free(o32); G->free(o16); G->free((void *)Wd.data); G->free((void *)Gd.data);
        free(x); free(w); free(g); free(wb); free(gb); free(h16); free(h32);
        for (size_t si = 0; si < sizeof sh / sizeof sh[0]; si++) {
            int n = sh[si].N, k = sh[si].K;
            float *xr = test_rnd((size_t)T * k, 1), *wr = test_rnd((size_t)n * k, 0.05f), *y = test_rnd((size_t)T * n, 1);
            uint16_t *xb = malloc(sizeof(uint16_t) * (size_t)T * k), *wrb;
            for (size_t i = 0; i < (size_t)T * k; i++) xr[i] = av_bf16_to_f32(xb[i] = av_f32_to_bf16(xr[i]));
            av_mat Wr = on_dev(bf16_mat(wr, n, k, &wrb));
            float *xf = up(G, xr, sizeof(float) * T * k), *xh = up(G, xb, sizeof(uint16_t) * T * k), *a = up(G, y, sizeof(float) * T * n),
                  *b = up(G, y, sizeof(float) * T * n);
            av_gemv_fusion ad = {.in = AV_GEMV_IN_X, .out = AV_GEMV_OUT_ADD};
            G->matmul_fused_forward(a, xf, &Wr, T, &ad);
            ad.in_bf16 = 1;
            G->matmul_fused_forward(b, xh, &Wr, T, &ad);
            float *ha = down(G, a, (size_t)T * n), *hb = down(G, b, (size_t)T * n);
            char nm[96];
            snprintf(nm, sizeof nm, "matmul_fused in_bf16 T=%d N=%d K=%d", T, n, k);
            CHECK(test_rel_l2(hb, ha, (size_t)T * n) <= 1e-6, "%s: rel L2 %.3g", nm, test_rel_l2(hb, ha, (size_t)T * n));
            G->free(xf); G->free(xh); G->free(a); G->free(b); G->free((void *)Wr.data);
            free(xr); free(wr); free(y); free(xb); free(wrb); free(ha); free(hb);
        }
    }
}

/* The bf16 table's 16-bit activation products and SwiGLU (backend.h: matmul_forward_ex ...) vs the
 * separate ops: x converted by store_bf16 first gives what matmul_forward converts itself (rel L2
 * <= 1e-5), bf16 output within bf16 rounding (4e-3), accumulate / alpha as a product plus add_scaled,
 * the f32 LoRA-B case on TF32 (2e-3), dx overwrite and accumulate, bf16 dx, the cases answered -1, and the
 * bf16 SwiGLU vs the CPU's on the same bf16 inputs (bf16 output rounding: 4e-3; f32 or bf16 dout), odd n and
 * unaligned pointers (scalar kernels) included. */
static void test_mm16_ops(void) {
    int shapes[][3] = {{37, 300, 200}, {130, 512, 256}, {64, 64, 8}};
    char nm[128];
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int T = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
        size_t tk = (size_t)T * K, tn = (size_t)T * N;
        float *x = test_rnd(tk, 1), *w = test_rnd((size_t)N * K, 0.1f), *dy = test_rnd(tn, 1), *y0 = test_rnd(tn, 1);
        uint16_t *wb;
        av_mat Wd = on_dev(bf16_mat(w, N, K, &wb));
        float *xd = up(G, x, tk * 4), *dyd = up(G, dy, tn * 4), *ref = G->alloc(tn * 4, "t"), *od = G->alloc(tn * 4, "t"),
              *y0d = up(G, y0, tn * 4), *dxr = G->alloc(tk * 4, "t"), *dxd = G->alloc(tk * 4, "t");
        uint16_t *x16 = G->alloc(tk * 2, "t"), *dy16 = G->alloc(tn * 2, "t"), *o16 = G->alloc(tn * 2, "t");
        G->store_bf16(x16, xd, tk);
        G->store_bf16(dy16, dyd, tn);
        G->matmul_forward(ref, xd, &Wd, T);
        float *r = down(G, ref, tn);
        for (int x16on = 0; x16on < 2; x16on++) {
            const void *in = x16on ? (const void *)x16 : (const void *)xd;
            CHECK(G->matmul_forward_ex(od, 0, in, x16on, &Wd, T, 1.0f, 0) == 0, "matmul_forward_ex ran");
            snprintf(nm, sizeof nm, "matmul_forward_ex x16=%d T=%d N=%d K=%d", x16on, T, N, K);
            CMP(nm, od, r, tn, 1e-5);
            CHECK(G->matmul_forward_ex(o16, 1, in, x16on, &Wd, T, 1.0f, 0) == 0, "matmul_forward_ex bf16 out ran");
            G->load_bf16(od, o16, tn);
            snprintf(nm, sizeof nm, "matmul_forward_ex bf16 out x16=%d T=%d N=%d K=%d", x16on, T, N, K);
            CMP(nm, od, r, tn, 4e-3);
        }
        /* out = y0 + 0.5 x W^T */
        float *acc = malloc(tn * 4);
        for (size_t i = 0; i < tn; i++) acc[i] = y0[i] + 0.5f * r[i];
        G->copy(od, y0d, tn * 4);
        CHECK(G->matmul_forward_ex(od, 0, x16, 1, &Wd, T, 0.5f, 1) == 0, "matmul_forward_ex accumulate ran");
        snprintf(nm, sizeof nm, "matmul_forward_ex accumulate T=%d N=%d K=%d", T, N, K);
        CMP(nm, od, acc, tn, 1e-5);
        CHECK(G->matmul_forward_ex(o16, 1, x16, 1, &Wd, T, 1.0f, 1) == -1, "bf16 output with accumulate is refused");
        /* out = y0 + x W^T into a separate output (y0 left as it was) */
        for (size_t i = 0; i < tn; i++) acc[i] = y0[i] + r[i];
        for (int x16on = 0; x16on < 2; x16on++) {
            G->zero(od, tn * 4);
            CHECK(G->matmul_forward_res(od, y0d, x16on ? (const void *)x16 : (const void *)xd, x16on, &Wd, T) == 0, "matmul_forward_res ran");
            snprintf(nm, sizeof nm, "matmul_forward_res x16=%d T=%d N=%d K=%d", x16on, T, N, K);
            CMP(nm, od, acc, tn, 1e-5);
        }
        CMP("matmul_forward_res leaves res", y0d, y0, tn, 0);
        CHECK(G->matmul_forward_res(y0d, y0d, x16, 1, &Wd, T) == -1, "matmul_forward_res in place is refused");
        /* f32 weights (LoRA B): out = y0 + 0.5 x W^T vs matmul_forward + add_scaled */
        av_mat Wf = {.data = up(G, w, (size_t)N * K * 4), .dtype = AV_F32, .rows = N, .cols = K};
        G->matmul_forward(ref, xd, &Wf, T);
        G->copy(od, y0d, tn * 4);
        G->add_scaled(od, 0.5f, ref, tn);
        float *fr = down(G, od, tn);
        G->copy(od, y0d, tn * 4);
        CHECK(G->matmul_forward_ex(od, 0, xd, 0, &Wf, T, 0.5f, 1) == 0, "matmul_forward_ex f32 ran");
        snprintf(nm, sizeof nm, "matmul_forward_ex f32 W T=%d N=%d K=%d", T, N, K);
        CMP(nm, od, fr, tn, 2e-3);
        CHECK(G->matmul_forward_ex(od, 0, x16, 1, &Wf, T, 1.0f, 0) == -1, "f32 weights with bf16 x are refused");
        CHECK(G->matmul_backward_dx_ex(dxd, 0, 0, dyd, 0, &Wf, T) == -1, "dx of f32 weights is refused");
        /* dx: overwrite (over garbage), then accumulate */
        G->zero(dxr, tk * 4);
        G->matmul_backward(dxr, NULL, dyd, NULL, &Wd, T);
        float *dr = down(G, dxr, tk);
        for (int d16 = 0; d16 < 2; d16++) {
            G->copy(dxd, xd, tk * 4);
            CHECK(G->matmul_backward_dx_ex(dxd, 0, 0, d16 ? (const void *)dy16 : (const void *)dyd, d16, &Wd, T) == 0, "dx ex ran");
            snprintf(nm, sizeof nm, "matmul_backward_dx_ex dout16=%d T=%d N=%d K=%d", d16, T, N, K);
            CMP(nm, dxd, dr, tk, 1e-5);
            CHECK(G->matmul_backward_dx_ex(dxd, 0, 1, d16 ? (const void *)dy16 : (const void *)dyd, d16, &Wd, T) == 0, "dx ex ran");
            for (size_t i = 0; i < tk; i++) dr[i] *= 2;
            snprintf(nm, sizeof nm, "matmul_backward_dx_ex accumulate dout16=%d T=%d N=%d K=%d", d16, T, N, K);
            CMP(nm, dxd, dr, tk, 1e-5);
            for (size_t i = 0; i < tk; i++) dr[i] *= 0.5f;
        }
        { /* bf16 dx (overwrite only): the same product rounded once */
            uint16_t *dxh = G->alloc(tk * 2, "t");
            CHECK(G->matmul_backward_dx_ex(dxh, 1, 0, dyd, 0, &Wd, T) == 0, "dx16 ran");
            G->load_bf16(dxd, dxh, tk);
            snprintf(nm, sizeof nm, "matmul_backward_dx_ex dx16 T=%d N=%d K=%d", T, N, K);
            CMP(nm, dxd, dr, tk, 4e-3);
            CHECK(G->matmul_backward_dx_ex(dxh, 1, 1, dyd, 0, &Wd, T) == -1, "bf16 dx with accumulate is refused");
            CHECK(G->matmul_backward_dx_ex(dxh, 1, 0, dyd, 0, &Wf, T) == -1, "bf16 dx of f32 weights is refused");
            G->free(dxh);
        }
        G->free(xd); G->free(dyd); G->free(ref); G->free(od); G->free(y0d); G->free(dxr); G->free(dxd); G->free(x16); G->free(dy16);
        G->free(o16); G->free((void *)Wd.data); G->free((void *)Wf.data);
        free(x); free(w); free(dy); free(y0); free(wb); free(r); free(acc); free(fr); free(dr);
    }
    size_t sizes[] = {4096, 1003};
    for (size_t si = 0; si < 2; si++)
        for (int off = 0; off < 2; off++) { /* off 1: pointers 2 bytes in (scalar kernels) */
            size_t n = sizes[si];
            float *g = test_rnd(n + 1, 4), *u = test_rnd(n + 1, 2), *d = test_rnd(n + 1, 1);
            uint16_t *gb = malloc((n + 1) * 2), *ub = malloc((n + 1) * 2);
            av_store_bf16(gb, g, n + 1);
            av_store_bf16(ub, u, n + 1);
            av_load_bf16(g, gb, n + 1); /* the CPU reference on the same bf16 inputs */
            av_load_bf16(u, ub, n + 1);
            float *o = malloc(n * 4), *dg = calloc(n, 4), *du = calloc(n, 4);
            av_swiglu_forward(o, g + off, u + off, n);
            av_swiglu_backward(dg, du, d + off, g + off, u + off, n);
            uint16_t *gd = up(G, gb, (n + 1) * 2), *ud = up(G, ub, (n + 1) * 2), *od = G->alloc((n + 1) * 2, "t"),
                     *dgd = G->alloc((n + 1) * 2, "t"), *dud = G->alloc((n + 1) * 2, "t");
            float *dd = up(G, d, (n + 1) * 4), *f = G->alloc(n * 4, "t");
            G->swiglu_forward_bf16(od + off, gd + off, ud + off, n);
            G->load_bf16(f, od + off, n);
            snprintf(nm, sizeof nm, "swiglu_forward_bf16 n=%zu off=%d", n, off);
            CMP(nm, f, o, n, 4e-3);
            uint16_t *db = malloc((n + 1) * 2), *ddb = NULL;
            for (int d16 = 0; d16 < 2; d16++) { /* f32 dout; bf16 dout against the reference on the same rounded dout */
                if (d16) {
                    av_store_bf16(db, d, n + 1);
                    av_load_bf16(d, db, n + 1);
                    memset(dg, 0, n * 4);
                    memset(du, 0, n * 4);
                    av_swiglu_backward(dg, du, d + off, g + off, u + off, n);
                    ddb = up(G, db, (n + 1) * 2);
                }
                G->swiglu_backward_bf16(dgd + off, dud + off, d16 ? (const void *)(ddb + off) : (const void *)(dd + off), d16, gd + off, ud + off, n);
                G->load_bf16(f, dgd + off, n);
                snprintf(nm, sizeof nm, "swiglu_backward_bf16 dout16=%d dgate n=%zu off=%d", d16, n, off);
                CMP(nm, f, dg, n, 4e-3);
                G->load_bf16(f, dud + off, n);
                snprintf(nm, sizeof nm, "swiglu_backward_bf16 dout16=%d dup n=%zu off=%d", d16, n, off);
                CMP(nm, f, du, n, 4e-3);
            }
            G->free(ddb);
            free(db);
            G->free(gd); G->free(ud); G->free(od); G->free(dgd); G->free(dud); G->free(dd); G->free(f);
            free(g); free(u); free(d); free(gb); free(ub); free(o); free(dg); free(du);
        }
    /* rmsnorm_forward_bf16 equals rmsnorm_forward + store_bf16 bit for bit (same sums, one rounding):
     * 0 differing elements and equal rstd, bf16 and f32 norm weights, a width that is no multiple of 4 */
    int dims[] = {2048, 100};
    for (int di = 0; di < 2; di++)
        for (int wf = 0; wf < 2; wf++) {
            int T = 37, D = dims[di];
            size_t n = (size_t)T * D;
            float *x = test_rnd(n, 2), *w = test_rnd(D, 1);
            uint16_t *wb = NULL;
            av_mat Wn = wf ? (av_mat){.data = w, .dtype = AV_F32, .rows = 1, .cols = D} : bf16_mat(w, 1, D, &wb);
            av_mat Wd = on_dev(Wn);
            float *xd = up(G, x, n * 4), *of = G->alloc(n * 4, "t"), *r1 = G->alloc(T * 4, "t"), *r2 = G->alloc(T * 4, "t");
            uint16_t *o1 = G->alloc(n * 2, "t"), *o2 = G->alloc(n * 2, "t");
            G->rmsnorm_forward(of, r1, xd, &Wd, T, D, 1e-5f);
            G->store_bf16(o1, of, n);
            G->rmsnorm_forward_bf16(o2, r2, xd, &Wd, T, D, 1e-5f);
            uint16_t *h1 = malloc(n * 2), *h2 = malloc(n * 2);
            float *hr1 = down(G, r1, T), *hr2 = down(G, r2, T);
            G->download(h1, o1, n * 2);
            G->download(h2, o2, n * 2);
            size_t bad = 0;
            for (size_t i = 0; i < n; i++) bad += h1[i] != h2[i];
            CHECK(bad == 0 && !memcmp(hr1, hr2, T * 4), "rmsnorm_forward_bf16 D=%d %s weights: %zu of %zu differ from rmsnorm_forward + store_bf16", D,
                  wf ? "f32" : "bf16", bad, n);
            G->free(xd); G->free(of); G->free(r1); G->free(r2); G->free(o1); G->free(o2); G->free((void *)Wd.data);
            free(x); free(w); free(wb); free(h1); free(h2); free(hr1); free(hr2);
        }
    CHECK(!G32->matmul_forward_ex && !G32->swiglu_forward_bf16 && !G32->rmsnorm_forward_bf16, "the exact-f32 table has no 16-bit activation ops");
    CHECK(!C->rmsnorm_forward_bf16, "the CPU table has no bf16 RMSNorm (callers fall back)");
}

int main(void) {
    test_rng_state = 12345;
    if (!test_cuda_init()) {
        SKIP("no GPU");
        return TEST_SUMMARY();
    }
    test_matmul();
    test_matmul_fused();
    test_matmul_fused_argmax();
    test_matmul_fused_bf16();
    test_mm16_ops();
    CHECK_OK(av_cuda_status());
    return TEST_SUMMARY();
}
