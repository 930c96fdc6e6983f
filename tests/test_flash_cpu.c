/* CPU flash training attention (flash.c: av_flash_attention_forward_batch / _backward_batch) vs the
 * standard materialised pair (standard.c), forward and backward: T in {1, 7, 64, 511, 2048} (8192
 * with AV_TEST_LONG), B 1 and 3, GQA ratios 1/4/8, head_dim 64 and 128. f32 throughout, so the
 * only differences are summation order: max abs error <= 2e-5 x max |ref| for out, dq, dk, dv and
 * lse vs a float64 log-sum-exp (T = 1: dq and dk, whose exact increment is 0, within 1e-5
 * absolutely); gradients accumulate onto non-zero buffers; the RoPE mode equals
 * the accumulate mode followed by av_rope_backward; two runs are bit-identical. Then one LoRA step
 * of a random head_dim-64 model on the CPU with the model's attention FLASH vs STANDARD (and the
 * latter through av_train_set_flash): the same loss and gradients within 1e-5 relative L2, and the
 * flash context holds no [B, H, T, T] probabilities (fewer bytes). */
#include "test.h"
#include "test_lora_step.h"
#include <stddef.h>
#include <stdint.h>
#include "attention/attention.h"
#include "backend/backend.h"
#include "ops/ops.h"
#include "model/model.h"
#include "model/config.h"
#include "train/lora.h"
#include "train/train_model.h"

#define TOL 2e-5 /* max abs error relative to the reference's max |value| */
/* T = 1: one key, the softmax is constant and dq, dk gain exactly 0; what is left is the rounding of
 * dP - delta (dout . v against dout . out, |dP| ~ 4): bounded absolutely */
#define TOL_ONE_KEY 1e-5

static double max_abs(const float *a, const float *ref, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (!(d <= m)) m = d != d ? INFINITY : d;
    }
    return m;
}
static double max_err(const float *a, const float *ref, size_t n) { /* max |a - ref| / max |ref| */
    double m = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (!(d <= m)) m = d != d ? INFINITY : d;
        if (fabs(ref[i]) > r) r = fabs(ref[i]);
    }
    return m / (r > 0 ? r : 1);
}

/* float64 log-sum-exp of row t of head h of sequence b */
static double lse_ref(const float *q, const float *k, int b, int t, int h, int T, int H, int KVH, int hd) {
    int kh = h / (H / KVH);
    double mx = -INFINITY, sum = 0;
    const float *qr = q + ((size_t)b * T + t) * H * hd + (size_t)h * hd;
    for (int s = 0; s <= t; s++) {
        const float *kr = k + ((size_t)b * T + s) * KVH * hd + (size_t)kh * hd;
        double d = 0;
        for (int i = 0; i < hd; i++) d += (double)qr[i] * kr[i];
        d /= sqrt((double)hd);
        if (d > mx) sum = sum * exp(mx - d) + 1, mx = d;
        else sum += exp(d - mx);
    }
    return mx + log(sum);
}

typedef struct { int B, T, H, KVH, hd; } shape;
static const shape shapes[] = {
    {1, 1, 4, 4, 64},   {3, 1, 8, 1, 128},  {3, 7, 8, 2, 64},   {1, 7, 4, 4, 128},   {1, 64, 8, 8, 64},  {3, 64, 8, 1, 128},
    {1, 511, 8, 2, 64}, {3, 511, 4, 1, 64}, {1, 511, 8, 8, 128}, {1, 2048, 8, 1, 64}, {1, 2048, 4, 1, 128}, {3, 100, 32, 4, 64},
};
static const shape long_shape = {1, 8192, 4, 1, 64};

static void check_shape(shape sh) {
    int B = sh.B, T = sh.T, H = sh.H, KVH = sh.KVH, hd = sh.hd;
    size_t N = (size_t)B * T, qn = N * H * hd, kn = N * KVH * hd, nl = N * H;
    float *q = test_rnd(qn, 1.5f), *k = test_rnd(kn, 1.5f), *v = test_rnd(kn, 1), *dout = test_rnd(qn, 1);
    float *g0q = test_rnd(qn, 0.01f), *g0k = test_rnd(kn, 0.01f), *g0v = test_rnd(kn, 0.01f); /* accumulated onto */
    float *out = malloc(qn * 4), *probs = malloc(sizeof(float) * B * H * T * T), *dq = malloc(qn * 4), *dk = malloc(kn * 4),
          *dv = malloc(kn * 4);
    memcpy(dq, g0q, qn * 4);
    memcpy(dk, g0k, kn * 4);
    memcpy(dv, g0v, kn * 4);
    av_attention_forward_batch(out, probs, q, k, v, B, T, H, KVH, hd, NULL, 0);
    av_attention_backward_batch(dq, dk, dv, dout, probs, q, k, v, B, T, H, KVH, hd, NULL, 0);

    float *fo = malloc(qn * 4), *lse = malloc(nl * 4);
    for (size_t i = 0; i < qn; i++) fo[i] = NAN; /* poison: every element must be written */
    CHECK(av_flash_attention_forward_batch(fo, lse, q, k, v, B, T, H, KVH, hd, NULL) == 0, "forward refused");
    double eo = max_err(fo, out, qn), el = 0;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t += T > 64 ? T / 13 : 1) {
                double r = lse_ref(q, k, b, t, h, T, H, KVH, hd), d = fabs(lse[((size_t)b * H + h) * T + t] - r) / (fabs(r) + 1);
                if (!(d <= el)) el = d != d ? INFINITY : d;
            }
    CHECK(eo <= TOL, "flash fwd B=%d T=%d H=%d KVH=%d hd=%d: out max err %.3g", B, T, H, KVH, hd, eo);
    CHECK(el <= TOL, "flash fwd B=%d T=%d H=%d KVH=%d hd=%d: lse rel err %.3g", B, T, H, KVH, hd, el);

    float *gq[2], *gk[2], *gv[2];
    for (int run = 0; run < 2; run++) { /* the same call twice: bit-identical */
        gq[run] = malloc(qn * 4), gk[run] = malloc(kn * 4), gv[run] = malloc(kn * 4);
        memcpy(gq[run], g0q, qn * 4);
        memcpy(gk[run], g0k, kn * 4);
        memcpy(gv[run], g0v, kn * 4);
        CHECK(av_flash_attention_backward_batch(gq[run], gk[run], gv[run], dout, fo, lse, q, k, v, B, T, H, KVH, hd, NULL, NULL, NULL) == 0,
              "backward refused");
    }
    double eq = max_err(gq[0], dq, qn), ek = max_err(gk[0], dk, kn), ev = max_err(gv[0], dv, kn);
    if (T == 1) eq = max_abs(gq[0], dq, qn) * TOL / TOL_ONE_KEY, ek = max_abs(gk[0], dk, kn) * TOL / TOL_ONE_KEY;
    CHECK(eq <= TOL && ek <= TOL && ev <= TOL, "flash bwd B=%d T=%d H=%d KVH=%d hd=%d: dq %.3g dk %.3g dv %.3g", B, T, H, KVH, hd, eq, ek, ev);
    int same = !memcmp(gq[0], gq[1], qn * 4) && !memcmp(gk[0], gk[1], kn * 4) && !memcmp(gv[0], gv[1], kn * 4);
    CHECK(same, "flash bwd B=%d T=%d H=%d KVH=%d hd=%d: two runs differ", B, T, H, KVH, hd);

    /* RoPE mode: garbage in dq dk dv is overwritten with (accumulate-mode increments) -> rope_backward */
    int32_t *pos = malloc(N * sizeof(int32_t));
    float *inv = malloc(sizeof(float) * hd / 2), *rq = test_rnd(qn, 100), *rk = test_rnd(kn, 100), *rv = test_rnd(kn, 100);
    for (size_t r = 0; r < N; r++) pos[r] = (int32_t)(r % T) + 3;
    for (int i = 0; i < hd / 2; i++) inv[i] = powf(10000.0f, -2.0f * i / hd);
    for (size_t i = 0; i < qn; i++) gq[1][i] = gq[0][i] - g0q[i];
    for (size_t i = 0; i < kn; i++) gk[1][i] = gk[0][i] - g0k[i], gv[1][i] = gv[0][i] - g0v[i];
    av_rope_backward(gq[1], pos, inv, (int)N, H, hd);
    av_rope_backward(gk[1], pos, inv, (int)N, KVH, hd);
    uint16_t *d16 = malloc((qn + 2 * kn) * 2);
    CHECK(av_flash_attention_backward_batch(rq, rk, rv, dout, fo, lse, q, k, v, B, T, H, KVH, hd, pos, inv, d16) == 0, "rope mode refused");
    double r1 = max_err(rq, gq[1], qn), r2 = max_err(rk, gk[1], kn), r3 = max_err(rv, gv[1], kn);
    if (T == 1) r1 = max_abs(rq, gq[1], qn) * 1e-5 / TOL_ONE_KEY, r2 = max_abs(rk, gk[1], kn) * 1e-5 / TOL_ONE_KEY;
    CHECK(r1 <= 1e-5 && r2 <= 1e-5 && r3 <= 1e-5, "flash bwd rope mode B=%d T=%d: dq %.3g dk %.3g dv %.3g", B, T, r1, r2, r3);
    float *c16 = malloc((qn + 2 * kn) * 4);
    av_load_bf16(c16, d16, qn + 2 * kn);
    double b1 = max_err(c16, rq, qn), b2 = max_err(c16 + qn, rk, kn), b3 = max_err(c16 + qn + kn, rv, kn);
    if (T == 1) b1 = max_abs(c16, rq, qn) * 4e-3 / TOL_ONE_KEY, b2 = max_abs(c16 + qn, rk, kn) * 4e-3 / TOL_ONE_KEY;
    CHECK(b1 <= 4e-3 && b2 <= 4e-3 && b3 <= 4e-3, "flash bwd bf16 copies B=%d T=%d: %.3g %.3g %.3g", B, T, b1, b2, b3);
    printf("cpu flash B=%d T=%d H=%d KVH=%d hd=%d: max err out %.2e lse %.2e dq %.2e dk %.2e dv %.2e (rope mode %.1e)%s\n", B, T, H, KVH, hd,
           eo, el, eq, ek, ev, r1 > r2 ? r1 : r2, same ? ", deterministic" : "");
    free(pos); free(inv); free(rq); free(rk); free(rv); free(d16); free(c16);
    for (int run = 0; run < 2; run++) { free(gq[run]); free(gk[run]); free(gv[run]); }
    free(q); free(k); free(v); free(dout); free(g0q); free(g0k); free(g0v);
    free(out); free(probs); free(dq); free(dk); free(dv); free(fo); free(lse);
}


static void check_training(void) {
    char dir[4096];
    const char *tmp = getenv("AV_TMP");
    snprintf(dir, sizeof dir, "%s/flash-cpu-model-%d", tmp ? tmp : "/tmp", (int)getpid());
    av_config cf;
    av_synth_preset(&cf, "tiny");
    cf.hidden_size = 256;
    cf.intermediate_size = 512;
    cf.n_heads = 4;
    cf.n_kv_heads = 1;
    cf.head_dim = 64;
    CHECK_OK(av_synth_write(&cf, dir, 5, AV_BF16));
    int B = 2, T = 70;
    size_t nf = 0, ns = 0, no = 0, bf = 0, bs = 0, bo = 0;
    double lf = 0, ls = 0, lo = 0;
    float *gf = test_lora_grads(dir, av_backend_cpu(), AV_ATTN_FLASH, 1, 0, B, T, &nf, &lf, &bf);
    float *gs = test_lora_grads(dir, av_backend_cpu(), AV_ATTN_STANDARD, 1, 0, B, T, &ns, &ls, &bs);
    float *go = test_lora_grads(dir, av_backend_cpu(), AV_ATTN_AUTO, 0, 0, B, T, &no, &lo, &bo);
    if (gf && gs && go && nf == ns && nf == no && nf) {
        double e = test_rel_l2(gf, gs, nf), eo = test_rel_l2(go, gs, nf);
        CHECK(e <= 1e-5 && eo <= 1e-5, "LoRA step flash vs standard: gradient rel L2 %.3g (set_flash(0): %.3g)", e, eo);
        CHECK(fabs(lf - ls) <= 1e-6 * fabs(ls) && lo == ls, "LoRA step loss flash %.9f standard %.9f set_flash(0) %.9f", lf, ls, lo);
        CHECK(bf < bs, "flash training context %zu bytes, standard %zu: no smaller", bf, bs);
        printf("LoRA step hd=64 B=%d T=%d: loss flash %.9f standard %.9f; grads rel L2 %.2e; context bytes flash %zu standard %zu\n", B, T,
               lf, ls, e, bf, bs);
    } else {
        CHECK(0, "LoRA step gradients missing (%zu %zu %zu)", nf, ns, no);
    }
    free(gf); free(gs); free(go);
}

int main(void) {
    test_rng_state = 5151;
    const av_backend *C = av_backend_cpu();
    CHECK(C->flash_attention_forward_batch == av_flash_attention_forward_batch && C->flash_attention_backward_batch == av_flash_attention_backward_batch,
          "CPU table lacks the flash training ops");
    CHECK(av_flash_attention_backward_batch(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, 6, 4, 64, NULL, NULL, NULL) != 0,
          "H=6 KVH=4 accepted");
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
#ifdef FLASH_TEST_PORTABLE /* the AVX2 and portable builds (Makefile: test_flash_cpu_avx2, _portable) cover the edges, not the long rows */
        if (shapes[i].T > 511) continue;
#endif
        if (TEST_SANITIZED && shapes[i].T > 511 && !getenv("AV_TEST_LONG")) { /* same loops as 511; 150 s of make asan */
            SKIP("T > 511 under the sanitizers (make test runs them; AV_TEST_LONG=1 here)");
            continue;
        }
        check_shape(shapes[i]);
    }
    check_training();
    if (getenv("AV_TEST_LONG")) check_shape(long_shape); /* the reference holds 1 GiB of probabilities */
    else SKIP("T=8192 (set AV_TEST_LONG=1)");
    return TEST_SUMMARY();
}
