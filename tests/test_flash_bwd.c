/* Flash training attention on the GPU (flash_attention_forward_batch / _backward_batch: flash.cu,
 * flash_bwd.cu) vs the CPU reference av_attention_forward_batch + av_attention_backward_batch on
 * B 1..3, T in {1, 17, 64, 130, 512, 4100}, GQA ratios 1/2/4/8, head_dim 64 and 128; gradients accumulate
 * into non-zero buffers; two runs are bit-identical. Then one LoRA training step of a random
 * head_dim-64 model on the GPU with flash attention vs the CPU and vs the GPU's standard attention,
 * and bit-identical over two runs. The bf16 entry points (q, k, v given in bf16, as training hands
 * them its saved activations) against the same reference, and the bf16-only entry (PyTorch's
 * contract: out, dout and the gradients in bf16; Hopper) too. Without a GPU: "skipped: no GPU". */
#include "test.h"
#include "test_lora_step.h"
#include <stddef.h>
#include <stdint.h>
#include "attention/attention.h"
#include "backend/backend.h"
#include "backend/cuda.h"
#include "model/model.h"
#include "model/config.h"
#include "train/lora.h"
#include "train/train_model.h"

/* bf16 tensor cores: q, k, v, dout, P and dS are rounded to 8-bit mantissas (relative 2^-9 each)
 * before products that sum over 64..512 terms; measured errors are a few 1e-3, so 1e-2 relative L2
 * catches layout or masking mistakes (those give O(1) errors) while allowing the rounding. */
#define TOL_OUT 1e-2
#define TOL_GRAD 1e-2
#define TOL_ONE_KEY 5e-3 /* T = 1: max abs error of dq, dk, whose exact increment is 0 (see check_shape) */

static float *up(const av_backend *be, const float *h, size_t n) {
    float *d = be->alloc(n * sizeof(float), "test");
    be->upload(d, h, n * sizeof(float));
    return d;
}
static float *down(const av_backend *be, const float *d, size_t n) {
    float *h = malloc(n * sizeof(float));
    be->download(h, d, n * sizeof(float));
    return h;
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d != d ? INFINITY : d;
    }
    return m;
}

typedef struct { int B, T, H, KVH, hd; } shape;
static const shape shapes[] = {
    {1, 1, 4, 4, 64},   {2, 17, 8, 2, 64},   {3, 64, 8, 1, 64},  {1, 130, 4, 4, 64},   {2, 130, 8, 1, 64},  {3, 512, 8, 2, 64},
    {1, 512, 32, 4, 64}, {3, 1, 8, 1, 128},  {2, 17, 4, 4, 128}, {1, 130, 8, 2, 128},  {2, 512, 8, 1, 128},
    {2, 4100, 4, 2, 64}, /* Hopper's one-pass kernel (hd 64 from 4096 tokens): two heads a block, a partial last chunk */
};

/* The RoPE mode (positions given): overwrites dq, dk, dv (buffers start as garbage) with the
 * accumulate mode's increments, dq and dk passed through rope_backward. Same kernels and the same
 * rotation formula, so only float contraction may differ: 1e-5 relative L2. */
static void check_rope_mode(const av_backend *G, shape sh, float *qd, float *kd, float *vd, float *dod, float *od, float *ld) {
    int B = sh.B, T = sh.T, H = sh.H, KVH = sh.KVH, hd = sh.hd;
    size_t N = (size_t)B * T, qn = N * H * hd, kn = N * KVH * hd;
    int32_t *pos = malloc(N * sizeof(int32_t));
    float *inv = malloc(sizeof(float) * hd / 2);
    for (size_t r = 0; r < N; r++) pos[r] = (int32_t)(r % T) + 3;
    for (int i = 0; i < hd / 2; i++) inv[i] = powf(10000.0f, -2.0f * i / hd);
    int32_t *posd = G->alloc(N * sizeof(int32_t), "t");
    G->upload(posd, pos, N * sizeof(int32_t));
    float *invd = up(G, inv, hd / 2);
    float *zq = calloc(qn, 4), *zk = calloc(kn, 4), *junk = test_rnd(qn, 100);
    float *aq = up(G, zq, qn), *ak = up(G, zk, kn), *av = up(G, zk, kn), *rq = up(G, junk, qn), *rk = up(G, junk, kn), *rv = up(G, junk, kn);
    CHECK(G->flash_attention_backward_batch(aq, ak, av, dod, od, ld, qd, kd, vd, B, T, H, KVH, hd, NULL, NULL, NULL) == 0, "backward refused");
    G->rope_backward(aq, posd, invd, (int)N, H, hd);
    G->rope_backward(ak, posd, invd, (int)N, KVH, hd);
    uint16_t *d16 = G->alloc((qn + 2 * kn) * 2, "t");
    CHECK(G->flash_attention_backward_batch(rq, rk, rv, dod, od, ld, qd, kd, vd, B, T, H, KVH, hd, posd, invd, d16) == 0, "rope mode refused");
    float *eq = down(G, aq, qn), *ek = down(G, ak, kn), *ev = down(G, av, kn), *gq = down(G, rq, qn), *gk = down(G, rk, kn), *gv = down(G, rv, kn);
    double e1 = test_rel_l2(gq, eq, qn), e2 = test_rel_l2(gk, ek, kn), e3 = test_rel_l2(gv, ev, kn);
    CHECK(e1 <= 1e-5 && e2 <= 1e-5 && e3 <= 1e-5, "flash bwd rope mode B=%d T=%d H=%d KVH=%d hd=%d: dq %.3g dk %.3g dv %.3g", B, T, H, KVH,
          hd, e1, e2, e3);
    /* the bf16 copies: the f32 results rounded once (relative 2^-9 per element) */
    float *c16 = G->alloc((qn + 2 * kn) * 4, "t");
    G->load_bf16(c16, d16, qn + 2 * kn);
    float *hc = down(G, c16, qn + 2 * kn);
    double b1 = test_rel_l2(hc, gq, qn), b2 = test_rel_l2(hc + qn, gk, kn), b3 = test_rel_l2(hc + qn + kn, gv, kn);
    CHECK(b1 <= 4e-3 && b2 <= 4e-3 && b3 <= 4e-3, "flash bwd bf16 copies B=%d T=%d H=%d KVH=%d hd=%d: dq %.3g dk %.3g dv %.3g", B, T, H, KVH,
          hd, b1, b2, b3);
    G->free(d16); G->free(c16);
    free(hc);
    G->free(posd); G->free(invd); G->free(aq); G->free(ak); G->free(av); G->free(rq); G->free(rk); G->free(rv);
    free(pos); free(inv); free(zq); free(zk); free(junk); free(eq); free(ek); free(ev); free(gq); free(gk); free(gv);
}

/* Two backward calls from the same starting gradients (the f32 entry, or with q16 the bf16 one on
 * q16 / k16 / v16): errors against the reference dq, dk, dv into e[3] (T = 1: dq and dk as max abs,
 * see below), checked against the tolerances; returns whether the two runs are bit-identical. */
static int check_backward(const av_backend *G, shape sh, const char *what, const float *dod, const float *od, const float *ld,
                          const float *qd, const float *kd, const float *vd, const uint16_t *q16, const uint16_t *k16,
                          const uint16_t *v16, const float *g0q, const float *g0k, const float *g0v, const float *dq, const float *dk,
                          const float *dv, double e[3]) {
    int B = sh.B, T = sh.T, H = sh.H, KVH = sh.KVH, hd = sh.hd;
    size_t N = (size_t)B * T, qn = N * H * hd, kn = N * KVH * hd;
    float *gq[2], *gk[2], *gv[2];
    for (int run = 0; run < 2; run++) { /* the same call twice: bit-identical */
        float *dqd = up(G, g0q, qn), *dkd = up(G, g0k, kn), *dvd = up(G, g0v, kn);
        int rc = q16 ? G->flash_attention_backward_bf16(dqd, dkd, dvd, dod, od, ld, q16, k16, v16, B, T, H, KVH, hd, NULL, NULL, NULL)
                     : G->flash_attention_backward_batch(dqd, dkd, dvd, dod, od, ld, qd, kd, vd, B, T, H, KVH, hd, NULL, NULL, NULL);
        CHECK(rc == 0, "%sbackward refused", what);
        gq[run] = down(G, dqd, qn);
        gk[run] = down(G, dkd, kn);
        gv[run] = down(G, dvd, kn);
        G->free(dqd); G->free(dkd); G->free(dvd);
    }
    CHECK_OK(av_cuda_status());
    e[0] = test_rel_l2(gq[0], dq, qn), e[1] = test_rel_l2(gk[0], dk, kn), e[2] = test_rel_l2(gv[0], dv, kn);
    if (T == 1) { /* one key: the softmax is constant, dq and dk gain exactly 0; dS = P (dP - delta) is
                   * left with the rounding of dP (bf16 dout . v against the f32 delta): bound it absolutely */
        e[0] = max_abs_diff(gq[0], dq, qn);
        e[1] = max_abs_diff(gk[0], dk, kn);
        CHECK(e[0] <= TOL_ONE_KEY && e[1] <= TOL_ONE_KEY && e[2] <= TOL_GRAD,
              "%sflash bwd B=%d T=1 H=%d KVH=%d hd=%d: dq, dk max abs %.3g %.3g, dv %.3g", what, B, H, KVH, hd, e[0], e[1], e[2]);
    } else {
        CHECK(e[0] <= TOL_GRAD && e[1] <= TOL_GRAD && e[2] <= TOL_GRAD, "%sflash bwd B=%d T=%d H=%d KVH=%d hd=%d: dq %.3g dk %.3g dv %.3g",
              what, B, T, H, KVH, hd, e[0], e[1], e[2]);
    }
    int same = !memcmp(gq[0], gq[1], qn * 4) && !memcmp(gk[0], gk[1], kn * 4) && !memcmp(gv[0], gv[1], kn * 4);
    CHECK(same, "%sflash bwd B=%d T=%d H=%d KVH=%d hd=%d: two runs differ", what, B, T, H, KVH, hd);
    for (int run = 0; run < 2; run++) { free(gq[run]); free(gk[run]); free(gv[run]); }
    return same;
}

static void check_bf16(const av_backend *G, shape sh, const float *qd, const float *kd, const float *vd, const float *dod,
                       const float *out, const float *dq, const float *dk, const float *dv, const float *g0q, const float *g0k,
                       const float *g0v);

/* dq | dk | dv (n floats of one device block of bf16) as host floats */
static float *down16(const av_backend *G, const uint16_t *d, size_t n) {
    float *f = G->alloc(n * 4, "t");
    G->load_bf16(f, d, n);
    float *h = down(G, f, n);
    G->free(f);
    return h;
}

/* The bf16-only entry (flash_attention_backward_bf16io) on the bf16 q, k, v, out (o16) and dout: its
 * gradients overwrite (the buffers start as garbage) and carry one more bf16 rounding than the f32 entry's
 * (relative 2^-9 each) and delta from bf16 dout and out, so the same tolerances against the reference
 * increments (dq - g0q ...); two runs bit-identical; with positions, the no-position result passed
 * through rope_backward (in f32, then both rounded to bf16: 4e-3). */
static void check_bf16io(const av_backend *G, shape sh, const uint16_t *q16, const uint16_t *k16, const uint16_t *v16, const uint16_t *o16,
                         const float *ld, const float *dod, const float *dq, const float *dk, const float *dv, const float *g0q,
                         const float *g0k, const float *g0v) {
    int B = sh.B, T = sh.T, H = sh.H, KVH = sh.KVH, hd = sh.hd;
    size_t N = (size_t)B * T, qn = N * H * hd, kn = N * KVH * hd, gn = qn + 2 * kn;
    uint16_t *do16 = G->alloc(qn * 2, "t"), *g16[3];
    G->store_bf16(do16, dod, qn);
    float *junk = test_rnd(gn, 100), *jd = up(G, junk, gn);
    uint16_t *raw[2];
    for (int run = 0; run < 3; run++) { /* two runs without positions, one with */
        g16[run] = G->alloc(gn * 2, "t");
        G->store_bf16(g16[run], jd, gn);
    }
    int32_t *pos = malloc(N * sizeof(int32_t)), *posd = G->alloc(N * sizeof(int32_t), "t");
    float *inv = malloc(sizeof(float) * hd / 2);
    for (size_t r = 0; r < N; r++) pos[r] = (int32_t)(r % T) + 3;
    for (int i = 0; i < hd / 2; i++) inv[i] = powf(10000.0f, -2.0f * i / hd);
    G->upload(posd, pos, N * sizeof(int32_t));
    float *invd = up(G, inv, hd / 2);
    for (int run = 0; run < 3; run++) {
        uint16_t *g = g16[run];
        int rc = G->flash_attention_backward_bf16io(g, g + qn, g + qn + kn, do16, o16, ld, q16, k16, v16, B, T, H, KVH, hd, run == 2 ? posd : NULL,
                                                    run == 2 ? invd : NULL);
        CHECK(rc == 0, "bf16io backward refused");
        if (run < 2) {
            raw[run] = malloc(gn * 2);
            G->download(raw[run], g, gn * 2);
        }
    }
    CHECK_OK(av_cuda_status());
    float *gr = down16(G, g16[0], gn), *ref = malloc(gn * 4);
    for (size_t i = 0; i < qn; i++) ref[i] = dq[i] - g0q[i];
    for (size_t i = 0; i < kn; i++) ref[qn + i] = dk[i] - g0k[i], ref[qn + kn + i] = dv[i] - g0v[i];
    double e[3];
    e[0] = test_rel_l2(gr, ref, qn), e[1] = test_rel_l2(gr + qn, ref + qn, kn), e[2] = test_rel_l2(gr + qn + kn, ref + qn + kn, kn);
    if (T == 1) { /* dq, dk: exact increment 0, as check_backward bounds them */
        e[0] = max_abs_diff(gr, ref, qn), e[1] = max_abs_diff(gr + qn, ref + qn, kn);
        CHECK(e[0] <= TOL_ONE_KEY && e[1] <= TOL_ONE_KEY && e[2] <= TOL_GRAD, "bf16io flash bwd B=%d T=1 H=%d KVH=%d hd=%d: %.3g %.3g %.3g", B,
              H, KVH, hd, e[0], e[1], e[2]);
    } else {
        CHECK(e[0] <= TOL_GRAD && e[1] <= TOL_GRAD && e[2] <= TOL_GRAD, "bf16io flash bwd B=%d T=%d H=%d KVH=%d hd=%d: dq %.3g dk %.3g dv %.3g",
              B, T, H, KVH, hd, e[0], e[1], e[2]);
    }
    int same = !memcmp(raw[0], raw[1], gn * 2);
    CHECK(same, "bf16io flash bwd B=%d T=%d H=%d KVH=%d hd=%d: two runs differ", B, T, H, KVH, hd);
    /* positions: dq, dk rotated back, dv as without */
    float *f = up(G, gr, gn);
    G->rope_backward(f, posd, invd, (int)N, H, hd);
    G->rope_backward(f + qn, posd, invd, (int)N, KVH, hd);
    float *rr = down(G, f, gn), *gp = down16(G, g16[2], gn);
    double r[3] = {test_rel_l2(gp, rr, qn), test_rel_l2(gp + qn, rr + qn, kn), test_rel_l2(gp + qn + kn, rr + qn + kn, kn)};
    if (T == 1) r[0] = max_abs_diff(gp, rr, qn), r[1] = max_abs_diff(gp + qn, rr + qn, kn);
    CHECK((T == 1 ? r[0] <= TOL_ONE_KEY && r[1] <= TOL_ONE_KEY : r[0] <= 4e-3 && r[1] <= 4e-3) && r[2] <= 4e-3,
          "bf16io flash bwd with positions B=%d T=%d H=%d KVH=%d hd=%d: dq %.3g dk %.3g dv %.3g", B, T, H, KVH, hd, r[0], r[1], r[2]);
    printf("bf16 out, dout, gradients: dq %.2e, dk %.2e, dv %.2e%s; with positions %.1e %.1e %.1e\n", e[0], e[1], e[2],
           same ? ", deterministic" : "", r[0], r[1], r[2]);
    G->free(f); G->free(do16); G->free(jd); G->free(posd); G->free(invd);
    for (int run = 0; run < 3; run++) G->free(g16[run]);
    free(raw[0]); free(raw[1]); free(junk); free(pos); free(inv); free(gr); free(ref); free(rr); free(gp);
}

static void check_shape(const av_backend *G, shape sh) {
    int B = sh.B, T = sh.T, H = sh.H, KVH = sh.KVH, hd = sh.hd;
    size_t N = (size_t)B * T, qn = N * H * hd, kn = N * KVH * hd;
    float *q = test_rnd(qn, 1.5f), *k = test_rnd(kn, 1.5f), *v = test_rnd(kn, 1), *dout = test_rnd(qn, 1);
    float *g0q = test_rnd(qn, 0.01f), *g0k = test_rnd(kn, 0.01f), *g0v = test_rnd(kn, 0.01f); /* accumulated onto */
    float *out = malloc(qn * 4), *probs = malloc(sizeof(float) * B * H * T * T), *dq = malloc(qn * 4), *dk = malloc(kn * 4),
          *dv = malloc(kn * 4);
    memcpy(dq, g0q, qn * 4);
    memcpy(dk, g0k, kn * 4);
    memcpy(dv, g0v, kn * 4);
    av_attention_forward_batch(out, probs, q, k, v, B, T, H, KVH, hd, NULL, 0);
    av_attention_backward_batch(dq, dk, dv, dout, probs, q, k, v, B, T, H, KVH, hd, NULL, 0);

    float *qd = up(G, q, qn), *kd = up(G, k, kn), *vd = up(G, v, kn), *dod = up(G, dout, qn), *od = G->alloc(qn * 4, "t"),
          *ld = G->alloc(sizeof(float) * N * H, "t");
    uint16_t *o16 = G->alloc(qn * 2, "t");
    CHECK(G->flash_attention_forward_batch(od, ld, qd, kd, vd, B, T, H, KVH, hd, o16) == 0, "forward batch refused hd=%d", hd);
    float *go = down(G, od, qn);
    double e = test_rel_l2(go, out, qn);
    CHECK(e <= TOL_OUT, "flash fwd B=%d T=%d H=%d KVH=%d hd=%d: out rel L2 %.3g", B, T, H, KVH, hd, e);
    { /* the bf16 copy of out: out rounded once */
        float *f = G->alloc(qn * 4, "t");
        G->load_bf16(f, o16, qn);
        float *h = down(G, f, qn);
        double e16 = test_rel_l2(h, go, qn);
        CHECK(e16 <= 4e-3, "flash fwd B=%d T=%d H=%d KVH=%d hd=%d: bf16 out rel L2 %.3g", B, T, H, KVH, hd, e16);
        G->free(f); G->free(o16);
        free(h);
    }
    double g[3];
    int same = check_backward(G, sh, "", dod, od, ld, qd, kd, vd, NULL, NULL, NULL, g0q, g0k, g0v, dq, dk, dv, g);
    double eq = g[0], ek = g[1], ev = g[2];
    printf("flash B=%d T=%d H=%d KVH=%d hd=%d: out %.2e, dq %.2e, dk %.2e, dv %.2e %s%s\n", B, T, H, KVH, hd, e, eq, ek, ev,
           T == 1 ? "(dq, dk: max abs)" : "rel L2", same ? ", deterministic" : "");
    check_rope_mode(G, sh, qd, kd, vd, dod, od, ld);
    if (!G->flash_attention_forward_bf16 || !G->flash_attention_backward_bf16)
        CHECK(0, "the CUDA table has no bf16 flash attention");
    else if (hd == 64 || G->flash_attention_forward_bf16(NULL, NULL, NULL, NULL, NULL, 0, 0, H, KVH, hd, NULL) == 0)
        check_bf16(G, sh, qd, kd, vd, dod, out, dq, dk, dv, g0q, g0k, g0v);
    else /* off Hopper head dim 128 keeps the f32 entry (flash.cu): the bf16 one refuses it, doing nothing */
        CHECK(G->flash_attention_forward_bf16(NULL, NULL, NULL, NULL, NULL, B, T, H, KVH, hd, NULL) == -1 &&
                  G->flash_attention_backward_bf16(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, B, T, H, KVH, hd, NULL, NULL, NULL) == -1,
              "bf16 flash attention accepted hd=%d", hd);
    G->free(qd); G->free(kd); G->free(vd); G->free(dod); G->free(od); G->free(ld);
    free(go); free(q); free(k); free(v); free(dout); free(g0q); free(g0k); free(g0v);
    free(out); free(probs); free(dq); free(dk); free(dv);
}

/* The bf16 entry points on the same data: q, k, v rounded to bf16 first (what the f32 entry points'
 * kernels do on the way), the scale applied to the scores in f32; the same tolerances against the
 * f32 reference, the forward with and without its f32 out, two backward runs bit-identical. */
static void check_bf16(const av_backend *G, shape sh, const float *qd, const float *kd, const float *vd, const float *dod,
                       const float *out, const float *dq, const float *dk, const float *dv, const float *g0q, const float *g0k,
                       const float *g0v) {
    int B = sh.B, T = sh.T, H = sh.H, KVH = sh.KVH, hd = sh.hd;
    size_t N = (size_t)B * T, qn = N * H * hd, kn = N * KVH * hd;
    uint16_t *q16 = G->alloc(qn * 2, "t"), *k16 = G->alloc(kn * 2, "t"), *v16 = G->alloc(kn * 2, "t"), *o16 = G->alloc(qn * 2, "t");
    G->store_bf16(q16, qd, qn);
    G->store_bf16(k16, kd, kn);
    G->store_bf16(v16, vd, kn);
    float *od = G->alloc(qn * 4, "t"), *ld = G->alloc(sizeof(float) * N * H, "t"), *f = G->alloc(qn * 4, "t");
    CHECK(G->flash_attention_forward_bf16(od, ld, q16, k16, v16, B, T, H, KVH, hd, NULL) == 0, "bf16 forward refused hd=%d", hd);
    CHECK(G->flash_attention_forward_bf16(NULL, NULL, q16, k16, v16, B, T, H, KVH, hd, o16) == 0, "bf16 forward (bf16 out only) refused");
    float *go = down(G, od, qn);
    G->load_bf16(f, o16, qn);
    float *g16 = down(G, f, qn);
    double e = test_rel_l2(go, out, qn), e16 = test_rel_l2(g16, go, qn);
    CHECK(e <= TOL_OUT, "bf16 flash fwd B=%d T=%d H=%d KVH=%d hd=%d: out rel L2 %.3g", B, T, H, KVH, hd, e);
    CHECK(e16 <= 4e-3, "bf16 flash fwd B=%d T=%d H=%d KVH=%d hd=%d: bf16-only out rel L2 %.3g", B, T, H, KVH, hd, e16);
    double g[3];
    int same = check_backward(G, sh, "bf16 ", dod, od, ld, NULL, NULL, NULL, q16, k16, v16, g0q, g0k, g0v, dq, dk, dv, g);
    printf("bf16 q/k/v: out %.2e (bf16-only out %.2e), dq %.2e, dk %.2e, dv %.2e%s\n", e, e16, g[0], g[1], g[2], same ? ", deterministic" : "");
    int io = G->flash_attention_backward_bf16io &&
             G->flash_attention_backward_bf16io(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, H, KVH, hd, NULL, NULL) == 0;
    if (io) check_bf16io(G, sh, q16, k16, v16, o16, ld, dod, dq, dk, dv, g0q, g0k, g0v);
    else /* the bf16-only kernels are Hopper's, as the bf16 forward's at head dim 128 (refused elsewhere) */
        CHECK(G->flash_attention_forward_bf16(NULL, NULL, NULL, NULL, NULL, 0, 0, 8, 8, 128, NULL) != 0, "bf16io backward refused hd=%d on Hopper",
              hd);
    G->free(q16); G->free(k16); G->free(v16); G->free(o16); G->free(od); G->free(ld); G->free(f);
    free(go); free(g16);
}

static void check_training(const av_backend *G) {
    char dir[4096];
    const char *tmp = getenv("AV_TMP");
    snprintf(dir, sizeof dir, "%s/flash-bwd-model-%d", tmp ? tmp : "/tmp", (int)getpid());
    av_config cf;
    av_synth_preset(&cf, "tiny");
    cf.hidden_size = 256;
    cf.intermediate_size = 512;
    cf.n_heads = 4;
    cf.n_kv_heads = 1;
    cf.head_dim = 64;
    CHECK_OK(av_synth_write(&cf, dir, 5, AV_BF16));
    int B = 2, T = 70;
    size_t nc = 0, nf = 0, nf2 = 0, ns = 0, nk = 0;
    double lc = 0, lf = 0, lf2 = 0, ls = 0, lk = 0;
    float *gc = test_lora_grads(dir, av_backend_cpu(), AV_ATTN_AUTO, 1, 0, B, T, &nc, &lc, NULL);
    float *gf = test_lora_grads(dir, G, AV_ATTN_AUTO, 1, 0, B, T, &nf, &lf, NULL);
    float *gf2 = test_lora_grads(dir, G, AV_ATTN_AUTO, 1, 0, B, T, &nf2, &lf2, NULL);
    float *gk = test_lora_grads(dir, G, AV_ATTN_AUTO, 1, 1, B, T, &nk, &lk, NULL);
    float *gs = test_lora_grads(dir, G, AV_ATTN_AUTO, 0, 0, B, T, &ns, &ls, NULL);
    if (gc && gf && gf2 && gs && gk && nc == nf && nf == nf2 && nf == ns && nf == nk) {
        double ef = test_rel_l2(gf, gc, nc), es = test_rel_l2(gs, gc, nc), efs = test_rel_l2(gf, gs, nc);
        /* the whole model in bf16 (weights, activations, products): the table's training tolerance */
        CHECK(ef <= 5e-2, "LoRA step, flash attention vs CPU: gradient rel L2 %.3g", ef);
        CHECK(fabs(lf - lc) <= 1e-2 * fabs(lc), "LoRA step loss flash %.6f vs CPU %.6f", lf, lc);
        CHECK(!memcmp(gf, gf2, nf * sizeof(float)) && lf == lf2, "LoRA step with flash attention: two runs differ");
        double ek = test_rel_l2(gk, gf, nf); /* checkpointing recomputes the same layer forward */
        CHECK(ek <= 1e-5, "LoRA step with flash attention: checkpointing changes the gradients (rel L2 %.3g)", ek);
        printf("LoRA step hd=64: loss cpu %.6f flash %.6f standard %.6f; grads rel L2 flash-cpu %.2e, standard-cpu %.2e, flash-standard %.2e, "
               "flash checkpointed-not %.1e\n", lc, lf, ls, ef, es, efs, ek);
    } else {
        CHECK(0, "LoRA step gradients missing (%zu %zu %zu %zu)", nc, nf, nf2, ns);
    }
    free(gc); free(gf); free(gf2); free(gs); free(gk);
}

int main(void) {
    test_rng_state = 4242;
    const av_backend *G = av_backend_cuda();
    if (!G || !G->flash_attention_forward_batch || !G->flash_attention_backward_batch) {
        SKIP("no GPU (CUDA flash attention backward not tested)");
        return TEST_SUMMARY();
    }
    char dev[256];
    av_cuda_device_name(dev, sizeof dev);
    printf("GPU: %s\n", dev);
    /* shapes without a kernel are refused (the caller keeps the standard attention) */
    CHECK(G->flash_attention_backward_batch(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, 4, 2, 16, NULL, NULL, NULL) != 0,
          "hd=16 accepted");
    CHECK(G->flash_attention_forward_batch(NULL, NULL, NULL, NULL, NULL, 0, 0, 4, 2, 64, NULL) == 0, "hd=64 refused");
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) check_shape(G, shapes[i]);
    check_training(G);
    CHECK_OK(av_cuda_status());
    return TEST_SUMMARY();
}
