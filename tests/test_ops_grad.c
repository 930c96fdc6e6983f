/* Finite-difference checks of every op backward: each op's f32 forward is compared with a double
 * reference forward written here, and its f32 backward with central differences of that double
 * reference (h = 1e-5, so truncation and rounding errors are ~1e-9). The loss is L = sum(R * out)
 * for a random R, so dL/dout = R. Shapes are small and odd; GQA, pos0 > 0, repeated ids, ignored
 * targets, bf16 weights and the LoRA linear are covered. */
#include "test.h"
#include "attention/attention.h"
#include "backend/backend.h"
#include "core/rng.h"
#include "model/llama.h"
#include "ops/ops.h"
#include "model/lora_linear.h"

static av_rng g_rng;
#define FD_H 1e-5
#define GRAD_TOL 2e-4 /* relative L2: f32 backward vs double finite differences */
#define FWD_TOL 2e-5  /* relative L2: f32 forward vs double reference */

static void fill(float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * (float)(2.0 * av_rng_uniform(&g_rng) - 1.0);
}
static double *to_d(const float *x, size_t n) {
    double *d = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}
static double rel_l2(const float *a, const double *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}
/* Central differences of f(ctx) w.r.t. var[0..n). */
static void fd(double (*f)(void *), void *ctx, double *var, size_t n, double *g) {
    for (size_t i = 0; i < n; i++) {
        double v = var[i];
        var[i] = v + FD_H;
        double lp = f(ctx);
        var[i] = v - FD_H;
        double lm = f(ctx);
        var[i] = v;
        g[i] = (lp - lm) / (2 * FD_H);
    }
}
static double dotd(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}
#define CHECK_GRAD(what, got, ref, n) do { double e_ = rel_l2(got, ref, n); \
    CHECK(e_ <= GRAD_TOL, "%s: gradient rel L2 error %.3g", what, e_); if (e_ > g_worst) g_worst = e_; } while (0)
#define CHECK_FWD(what, got, ref, n) do { double e_ = rel_l2(got, ref, n); CHECK(e_ <= FWD_TOL, "%s: forward rel L2 error %.3g", what, e_); } while (0)
static double g_worst;

/* ---------------- embedding ---------------- */
static void t_embedding(void) {
    int V = 9, D = 6, T = 7;
    int32_t ids[7] = {3, 0, 3, 8, 5, 3, 0};
    float tab[54], out[42], R[42], dtab[54] = {0};
    fill(tab, 54, 1);
    fill(R, 42, 1);
    av_mat M = {.data = tab, .dtype = AV_F32, .rows = V, .cols = D};
    av_embedding_forward(out, ids, &M, T);
    double ref[54] = {0}, fo[42];
    for (int t = 0; t < T; t++)
        for (int d = 0; d < D; d++) { fo[t * D + d] = tab[ids[t] * D + d]; ref[ids[t] * D + d] += R[t * D + d]; }
    CHECK_FWD("embedding", out, fo, 42);
    av_embedding_backward(dtab, R, ids, T, D);
    CHECK_GRAD("embedding dtable", dtab, ref, 54); /* linear op: the exact gradient is the scatter */
}

/* ---------------- rmsnorm ---------------- */
typedef struct { int T, D; double *x, *w, *R; float eps; } rms_ctx;
static double rms_loss(void *p) {
    rms_ctx *c = p;
    double L = 0;
    for (int t = 0; t < c->T; t++) {
        const double *x = c->x + t * c->D;
        double ss = 0;
        for (int i = 0; i < c->D; i++) ss += x[i] * x[i];
        double r = 1.0 / sqrt(ss / c->D + c->eps);
        for (int i = 0; i < c->D; i++) L += c->R[t * c->D + i] * c->w[i] * x[i] * r;
    }
    return L;
}
static void t_rmsnorm(av_dtype wdt) {
    enum { T = 5, D = 24 };
    float x[T * D], w[D], R[T * D], out[T * D], rstd[T], dx[T * D], dw[D];
    uint16_t wb[D];
    fill(x, T * D, 2);
    fill(w, D, 1);
    fill(R, T * D, 1);
    if (wdt == AV_BF16) for (int i = 0; i < D; i++) { wb[i] = av_f32_to_bf16(w[i]); w[i] = av_bf16_to_f32(wb[i]); }
    av_mat W = {.data = wdt == AV_BF16 ? (const void *)wb : (const void *)w, .dtype = wdt, .rows = 1, .cols = D};
    float eps = 1e-5f;
    av_rmsnorm_forward(out, rstd, x, &W, T, D, eps);
    rms_ctx c = {T, D, to_d(x, T * D), to_d(w, D), to_d(R, T * D), eps};
    double fo[T * D], gx[T * D], gw[D];
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int i = 0; i < D; i++) ss += c.x[t * D + i] * c.x[t * D + i];
        for (int i = 0; i < D; i++) fo[t * D + i] = c.w[i] * c.x[t * D + i] / sqrt(ss / D + eps);
    }
    CHECK_FWD("rmsnorm", out, fo, T * D);
    /* accumulate onto non-zero gradients to test += */
    for (int i = 0; i < T * D; i++) dx[i] = 0.5f;
    for (int i = 0; i < D; i++) dw[i] = -0.25f;
    av_rmsnorm_backward(dx, dw, R, x, &W, rstd, T, D);
    for (int i = 0; i < T * D; i++) dx[i] -= 0.5f;
    for (int i = 0; i < D; i++) dw[i] += 0.25f;
    fd(rms_loss, &c, c.x, T * D, gx);
    fd(rms_loss, &c, c.w, D, gw);
    CHECK_GRAD(wdt == AV_BF16 ? "rmsnorm dx (bf16 w)" : "rmsnorm dx", dx, gx, T * D);
    CHECK_GRAD(wdt == AV_BF16 ? "rmsnorm dw (bf16 w)" : "rmsnorm dw", dw, gw, D);
    free(c.x); free(c.w); free(c.R);
}

/* ---------------- matmul ---------------- */
typedef struct { int T, N, K; double *x, *W, *R; } mm_ctx;
static double mm_loss(void *p) {
    mm_ctx *c = p;
    double L = 0;
    for (int t = 0; t < c->T; t++)
        for (int n = 0; n < c->N; n++) L += c->R[t * c->N + n] * dotd(c->x + t * c->K, c->W + n * c->K, c->K);
    return L;
}
static void t_matmul(av_dtype wdt, int T, int K) {
    int N = K % 32 ? 37 : 64; /* multiples of 32: the AMX paths where the CPU has them */
    float *x = malloc(sizeof(float) * T * K), *W = malloc(sizeof(float) * N * K), *R = malloc(sizeof(float) * T * N);
    float *out = malloc(sizeof(float) * T * N), *dx = calloc((size_t)T * K, 4), *dW = calloc((size_t)N * K, 4);
    uint16_t *Wh = malloc(2 * (size_t)N * K);
    fill(x, T * K, 1);
    fill(W, N * K, 0.5f);
    fill(R, T * N, 1);
    for (int i = 0; i < N * K && wdt != AV_F32; i++) {
        Wh[i] = wdt == AV_BF16 ? av_f32_to_bf16(W[i]) : av_f32_to_f16(W[i]);
        W[i] = wdt == AV_BF16 ? av_bf16_to_f32(Wh[i]) : av_f16_to_f32(Wh[i]);
    }
    av_mat M = {.data = wdt == AV_F32 ? (const void *)W : (const void *)Wh, .dtype = wdt, .rows = N, .cols = K};
    av_matmul_forward(out, x, &M, T);
    mm_ctx c = {T, N, K, to_d(x, T * K), to_d(W, N * K), to_d(R, T * N)};
    double *fo = malloc(sizeof(double) * T * N), *gx = malloc(sizeof(double) * T * K), *gW = malloc(sizeof(double) * N * K);
    for (int t = 0; t < T; t++)
        for (int n = 0; n < N; n++) fo[t * N + n] = dotd(c.x + t * K, c.W + n * K, K);
    char what[64];
    snprintf(what, sizeof what, "matmul %s T=%d K=%d", av_dtype_name(wdt), T, K);
    CHECK_FWD(what, out, fo, T * N);
    /* f32 products below 32 rows: the two-term bf16 split of x (2^-16) reaches 1.0-1.3e-6 of sum|x w|
     * here, three terms (AMX) and the f32 row products 5-9e-8 */
    if (wdt == AV_BF16 && T < 32) {
        int bad = 0;
        double worst = 0;
        for (int t = 0; t < T; t++)
            for (int n = 0; n < N; n++) {
                double a = 0;
                for (int k = 0; k < K; k++) a += fabs(c.x[t * K + k] * c.W[n * K + k]);
                double e = fabs(out[t * N + n] - fo[t * N + n]) / a;
                worst = e > worst ? e : worst;
                bad += !(e <= 4e-7);
            }
        CHECK(bad == 0, "%s: %d outputs off by more than 4e-7 sum|x w| (worst %.3g)", what, bad, worst);
        printf("%s: worst error %.3g sum|x w|\n", what, worst);
    }
    av_matmul_backward(dx, dW, R, x, &M, T);
    /* dx = R . W: bf16 W to f32 accuracy (AMX: R in three bf16 terms); f16 W (AMX: R and W in two
     * bf16 terms each, as packed weights take) to 2e-5 */
    if (wdt == AV_BF16 || wdt == AV_F16) {
        double bound = wdt == AV_BF16 ? 4e-7 : 2e-5;
        int bad = 0;
        double worst = 0;
        for (int t = 0; t < T; t++)
            for (int k = 0; k < K; k++) {
                double s = 0, a = 0;
                for (int n = 0; n < N; n++) {
                    s += c.R[t * N + n] * c.W[n * K + k];
                    a += fabs(c.R[t * N + n] * c.W[n * K + k]);
                }
                double e = fabs(dx[t * K + k] - s) / a;
                worst = e > worst ? e : worst;
                bad += !(e <= bound);
            }
        CHECK(bad == 0, "%s: %d dx elements off by more than %g sum|d w| (worst %.3g)", what, bad, bound, worst);
        printf("%s: dx worst error %.3g sum|d w|\n", what, worst);
    }
    fd(mm_loss, &c, c.x, T * K, gx);
    fd(mm_loss, &c, c.W, N * K, gW);
    snprintf(what, sizeof what, "matmul %s T=%d dx", av_dtype_name(wdt), T);
    CHECK_GRAD(what, dx, gx, T * K);
    snprintf(what, sizeof what, "matmul %s T=%d dW", av_dtype_name(wdt), T);
    CHECK_GRAD(what, dW, gW, N * K);
    /* dx only (dW NULL) accumulates the same */
    float *dx2 = calloc((size_t)T * K, 4);
    av_matmul_backward(dx2, NULL, R, NULL, &M, T);
    CHECK(rel_l2(dx2, gx, T * K) <= GRAD_TOL, "%s: dx without dW", what);
    free(x); free(W); free(R); free(out); free(dx); free(dW); free(Wh); free(dx2);
    free(c.x); free(c.W); free(c.R); free(fo); free(gx); free(gW);
}

/* ---------------- rope ---------------- */
typedef struct { int T, H, hd; double *x, *R; const int32_t *pos; const float *inv; } rope_ctx;
static void rope_ref(const rope_ctx *c, double *out) {
    int half = c->hd / 2;
    for (int t = 0; t < c->T; t++)
        for (int h = 0; h < c->H; h++)
            for (int i = 0; i < half; i++) {
                double a = (float)c->pos[t] * c->inv[i]; /* the angle as the op forms it (f32) */
                size_t o = ((size_t)t * c->H + h) * c->hd;
                double x0 = c->x[o + i], x1 = c->x[o + i + half];
                out[o + i] = x0 * cos(a) - x1 * sin(a);
                out[o + i + half] = x1 * cos(a) + x0 * sin(a);
            }
}
static double rope_loss(void *p) {
    rope_ctx *c = p;
    size_t n = (size_t)c->T * c->H * c->hd;
    double *o = malloc(n * sizeof(double));
    rope_ref(c, o);
    double L = dotd(o, c->R, n);
    free(o);
    return L;
}
static void t_rope(void) {
    enum { T = 4, H = 3, hd = 8, n = T * H * hd };
    int32_t pos[T] = {0, 5, 6, 137};
    float inv[hd / 2], x[n], R[n], y[n];
    for (int i = 0; i < hd / 2; i++) inv[i] = 1.0f / powf(10000.0f, 2.0f * i / hd);
    fill(x, n, 1);
    fill(R, n, 1);
    memcpy(y, x, sizeof x);
    av_rope_forward(y, pos, inv, T, H, hd);
    rope_ctx c = {T, H, hd, to_d(x, n), to_d(R, n), pos, inv};
    double fo[n], g[n];
    rope_ref(&c, fo);
    CHECK_FWD("rope", y, fo, n);
    float d[n];
    memcpy(d, R, sizeof R);
    av_rope_backward(d, pos, inv, T, H, hd);
    fd(rope_loss, &c, c.x, n, g);
    CHECK_GRAD("rope dx", d, g, n);
    free(c.x); free(c.R);
}

/* ---------------- swiglu ---------------- */
typedef struct { size_t n; double *g, *u, *R; } sw_ctx;
static double sw_loss(void *p) {
    sw_ctx *c = p;
    double L = 0;
    for (size_t i = 0; i < c->n; i++) L += c->R[i] * c->g[i] / (1 + exp(-c->g[i])) * c->u[i];
    return L;
}
static void t_swiglu(void) {
    enum { n = 53 };
    float g[n], u[n], R[n], o[n], dg[n] = {0}, du[n] = {0};
    fill(g, n, 6);
    fill(u, n, 2);
    fill(R, n, 1);
    av_swiglu_forward(o, g, u, n);
    sw_ctx c = {n, to_d(g, n), to_d(u, n), to_d(R, n)};
    double fo[n], gg[n], gu[n];
    for (int i = 0; i < n; i++) fo[i] = c.g[i] / (1 + exp(-c.g[i])) * c.u[i];
    CHECK_FWD("swiglu", o, fo, n);
    av_swiglu_backward(dg, du, R, g, u, n);
    fd(sw_loss, &c, c.g, n, gg);
    fd(sw_loss, &c, c.u, n, gu);
    CHECK_GRAD("swiglu dgate", dg, gg, n);
    CHECK_GRAD("swiglu dup", du, gu, n);
    free(c.g); free(c.u); free(c.R);
}

/* ---------------- attention ---------------- */
typedef struct { int T, S, pos0, H, KVH, hd; double *q, *k, *v, *R; } att_ctx;
static void att_ref(const att_ctx *c, double *out) {
    int qs = c->H * c->hd, ks = c->KVH * c->hd, group = c->H / c->KVH;
    double scale = 1.0 / sqrt((double)c->hd), p[64];
    for (int h = 0; h < c->H; h++)
        for (int t = 0; t < c->T; t++) {
            int kh = h / group, n = c->pos0 + t + 1;
            double mx = -1e300, sum = 0;
            for (int s = 0; s < n; s++) {
                p[s] = scale * dotd(c->q + t * qs + h * c->hd, c->k + s * ks + kh * c->hd, c->hd);
                if (p[s] > mx) mx = p[s];
            }
            for (int s = 0; s < n; s++) sum += (p[s] = exp(p[s] - mx));
            for (int d = 0; d < c->hd; d++) {
                double o = 0;
                for (int s = 0; s < n; s++) o += p[s] / sum * c->v[s * ks + kh * c->hd + d];
                out[t * qs + h * c->hd + d] = o;
            }
        }
}
static double att_loss(void *p) {
    att_ctx *c = p;
    size_t n = (size_t)c->T * c->H * c->hd;
    double *o = malloc(n * sizeof(double));
    att_ref(c, o);
    double L = dotd(o, c->R, n);
    free(o);
    return L;
}
static void t_attention(int T, int S, int pos0, int H, int KVH, int hd) {
    size_t nq = (size_t)T * H * hd, nk = (size_t)S * KVH * hd;
    float *q = malloc(4 * nq), *k = malloc(4 * nk), *v = malloc(4 * nk), *R = malloc(4 * nq), *out = malloc(4 * nq);
    float *probs = malloc(4 * (size_t)H * T * S), *dq = calloc(nq, 4), *dk = calloc(nk, 4), *dv = calloc(nk, 4);
    fill(q, nq, 1.5f);
    fill(k, nk, 1.5f);
    fill(v, nk, 1);
    fill(R, nq, 1);
    av_attention_forward(out, probs, q, k, v, T, S, pos0, H, KVH, hd);
    att_ctx c = {T, S, pos0, H, KVH, hd, to_d(q, nq), to_d(k, nk), to_d(v, nk), to_d(R, nq)};
    double *fo = malloc(8 * nq), *gq = malloc(8 * nq), *gk = malloc(8 * nk), *gv = malloc(8 * nk);
    att_ref(&c, fo);
    char what[96];
    snprintf(what, sizeof what, "attention T=%d S=%d pos0=%d H=%d KVH=%d", T, S, pos0, H, KVH);
    CHECK_FWD(what, out, fo, nq);
    /* probs: rows sum to 1 over the visible keys, zero where masked */
    int bad = 0;
    for (int h = 0; h < H; h++)
        for (int t = 0; t < T; t++) {
            double s = 0;
            for (int j = 0; j < S; j++) {
                float pj = probs[((size_t)h * T + t) * S + j];
                if (j > pos0 + t && pj != 0) bad++;
                s += pj;
            }
            bad += fabs(s - 1) > 1e-5;
        }
    CHECK(bad == 0, "%s: %d bad probability rows", what, bad);
    av_attention_backward(dq, dk, dv, R, probs, q, k, v, T, S, pos0, H, KVH, hd);
    fd(att_loss, &c, c.q, nq, gq);
    fd(att_loss, &c, c.k, nk, gk);
    fd(att_loss, &c, c.v, nk, gv);
    char w2[128];
    snprintf(w2, sizeof w2, "%s dq", what);
    CHECK_GRAD(w2, dq, gq, nq);
    snprintf(w2, sizeof w2, "%s dk", what);
    CHECK_GRAD(w2, dk, gk, nk);
    snprintf(w2, sizeof w2, "%s dv", what);
    CHECK_GRAD(w2, dv, gv, nk);
    free(q); free(k); free(v); free(R); free(out); free(probs); free(dq); free(dk); free(dv);
    free(c.q); free(c.k); free(c.v); free(c.R); free(fo); free(gq); free(gk); free(gv);
}

/* ---------------- cross-entropy over a linear head ---------------- */
typedef struct { int T, V, D; double *h, *W; const int32_t *tg; double scale; } xe_ctx;
static double xe_nll(const xe_ctx *c, int t) {
    double lg[64], mx = -1e300, se = 0;
    for (int v = 0; v < c->V; v++) {
        lg[v] = dotd(c->h + t * c->D, c->W + v * c->D, c->D);
        if (lg[v] > mx) mx = lg[v];
    }
    for (int v = 0; v < c->V; v++) se += exp(lg[v] - mx);
    return mx + log(se) - lg[c->tg[t]];
}
static double xe_loss(void *p) {
    xe_ctx *c = p;
    double L = 0;
    for (int t = 0; t < c->T; t++)
        if (c->tg[t] >= 0) L += xe_nll(c, t);
    return c->scale * L;
}
static void t_xent(av_dtype wdt) {
    enum { T = 7, V = 41, D = 12 };
    int32_t tg[T] = {3, -1, 40, 0, 3, -1, 17};
    float h[T * D], W[V * D], dh[T * D] = {0}, nll[T], scratch[3 * V];
    uint16_t Wh[V * D];
    fill(h, T * D, 1);
    fill(W, V * D, 1);
    for (int i = 0; i < V * D && wdt == AV_BF16; i++) { Wh[i] = av_f32_to_bf16(W[i]); W[i] = av_bf16_to_f32(Wh[i]); }
    av_mat M = {.data = wdt == AV_BF16 ? (const void *)Wh : (const void *)W, .dtype = wdt, .rows = V, .cols = D};
    float scale = 1.0f / 5;
    double sum = av_xent_forward_backward(dh, nll, h, &M, tg, T, scale, scratch, 3);
    xe_ctx c = {T, V, D, to_d(h, T * D), to_d(W, V * D), tg, scale};
    double ref_sum = 0, g[T * D], rn[T];
    for (int t = 0; t < T; t++) ref_sum += (rn[t] = tg[t] >= 0 ? xe_nll(&c, t) : 0);
    CHECK(fabs(sum - ref_sum) <= 1e-5 * fabs(ref_sum), "xent sum %.9g vs %.9g", sum, ref_sum);
    CHECK_FWD("xent row nll", nll, rn, T);
    fd(xe_loss, &c, c.h, T * D, g);
    CHECK_GRAD(wdt == AV_BF16 ? "xent dh (bf16 head)" : "xent dh", dh, g, T * D);
    /* forward only: no gradient, same sum */
    double s2 = av_xent_forward_backward(NULL, NULL, h, &M, tg, T, 0, scratch, 2);
    CHECK(fabs(s2 - sum) <= 1e-6 * fabs(sum), "xent forward-only %.9g vs %.9g", s2, sum);
    free(c.h); free(c.W);
}

/* ---------------- LoRA linear (model/lora_linear.c: the pair training calls) ---------------- */
typedef struct { int T, N, K, r; double s, *x, *W, *A, *B, *R; } lo_ctx;
static void lo_ref(const lo_ctx *c, double *y) {
    for (int t = 0; t < c->T; t++) {
        double xa[16];
        for (int j = 0; j < c->r; j++) xa[j] = dotd(c->x + t * c->K, c->A + j * c->K, c->K);
        for (int n = 0; n < c->N; n++) y[t * c->N + n] = dotd(c->x + t * c->K, c->W + n * c->K, c->K) + c->s * dotd(xa, c->B + n * c->r, c->r);
    }
}
static double lo_loss(void *p) {
    lo_ctx *c = p;
    size_t n = (size_t)c->T * c->N;
    double *y = malloc(n * sizeof(double));
    lo_ref(c, y);
    double L = dotd(y, c->R, n);
    free(y);
    return L;
}
static void t_lora(int T) {
    int N = 23, K = 19, r = 3;
    size_t nx = (size_t)T * K, ny = (size_t)T * N;
    float *x = malloc(4 * nx), *W = malloc(4 * N * K), *A = malloc(4 * r * K), *B = malloc(4 * N * r), *R = malloc(4 * ny), *y = malloc(4 * ny);
    float *dx = calloc(nx, 4), *dA = calloc((size_t)r * K, 4), *dB = calloc((size_t)N * r, 4), *tmp = malloc(4 * (size_t)T * (r + N) + 4 * 3 * T * r);
    uint16_t *Wh = malloc(2 * N * K);
    fill(x, nx, 1);
    fill(W, N * K, 0.5f);
    fill(A, r * K, 0.5f);
    fill(B, N * r, 0.5f);
    fill(R, ny, 1);
    for (int i = 0; i < N * K; i++) { Wh[i] = av_f32_to_bf16(W[i]); W[i] = av_bf16_to_f32(Wh[i]); }
    av_linear L = {.w = {.data = Wh, .dtype = AV_BF16, .rows = N, .cols = K}, .lora_a = A, .lora_b = B, .rank = r, .scale = 1.75f};
    const av_backend *be = av_backend_cpu();
    /* the layer workspace the model's layers hand to the pair: scratch and layer 0's gradient slots */
    float *ga[AV_PROJ_COUNT] = {0}, *gb[AV_PROJ_COUNT] = {0};
    ga[AV_PROJ_O] = dA;
    gb[AV_PROJ_O] = dB;
    av_layer_ws ws = {.lora_tmp = tmp, .lora3 = tmp + (size_t)T * (r + N), .ga = ga, .gb = gb};
    av_lora_linear_forward(be, &ws, y, 0, x, NULL, &L, 0, AV_PROJ_O, T, NULL);
    lo_ctx c = {T, N, K, r, 1.75, to_d(x, nx), to_d(W, N * K), to_d(A, r * K), to_d(B, N * r), to_d(R, ny)};
    double *fo = malloc(8 * ny), *gx = malloc(8 * nx), *gA = malloc(8 * r * K), *gB = malloc(8 * N * r);
    lo_ref(&c, fo);
    char what[64];
    snprintf(what, sizeof what, "lora linear T=%d", T);
    CHECK_FWD(what, y, fo, ny);
    av_lora_linear_backward(be, &ws, dx, 1, R, NULL, x, &L, 0, AV_PROJ_O, T, NULL);
    fd(lo_loss, &c, c.x, nx, gx);
    fd(lo_loss, &c, c.A, (size_t)r * K, gA);
    fd(lo_loss, &c, c.B, (size_t)N * r, gB);
    char w2[96];
    snprintf(w2, sizeof w2, "%s dx", what);
    CHECK_GRAD(w2, dx, gx, nx);
    snprintf(w2, sizeof w2, "%s dA", what);
    CHECK_GRAD(w2, dA, gA, (size_t)r * K);
    snprintf(w2, sizeof w2, "%s dB", what);
    CHECK_GRAD(w2, dB, gB, (size_t)N * r);
    /* frozen adapter: dx still includes the adapter path */
    float *dx2 = calloc(nx, 4);
    ws.ga = ws.gb = NULL;
    av_lora_linear_backward(be, &ws, dx2, 0, R, NULL, x, &L, 0, AV_PROJ_O, T, NULL);
    CHECK(rel_l2(dx2, gx, nx) <= GRAD_TOL, "%s: dx with frozen adapter", what);
    free(x); free(W); free(A); free(B); free(R); free(y); free(dx); free(dA); free(dB); free(tmp); free(Wh); free(dx2);
    free(c.x); free(c.W); free(c.A); free(c.B); free(c.R); free(fo); free(gx); free(gA); free(gB);
}

int main(void) {
    av_rng_seed(&g_rng, 1234);
    t_embedding();
    t_rmsnorm(AV_F32);
    t_rmsnorm(AV_BF16);
    t_matmul(AV_F32, 3, 29);   /* few-row path */
    t_matmul(AV_F32, 9, 29);   /* BLAS / panel path */
    t_matmul(AV_BF16, 3, 29);
    t_matmul(AV_BF16, 9, 29);
    t_matmul(AV_F16, 9, 29);
    t_matmul(AV_BF16, 9, 64);  /* K % 32 == 0: AMX with x in three bf16 terms where the CPU has it */
    t_matmul(AV_BF16, 27, 96);
    t_matmul(AV_BF16, 40, 64); /* 32+ rows: the prefill GEMM */
    t_matmul(AV_F16, 40, 64);  /* f16 (as packed weights): dx on AMX in two terms */
    t_rope();
    t_swiglu();
    t_attention(5, 8, 3, 4, 2, 6);  /* GQA, pos0 > 0, S > pos0 + T */
    t_attention(6, 6, 0, 3, 3, 8);  /* MHA, from position 0 */
    t_attention(1, 9, 8, 4, 1, 4);  /* one query (decode), MQA */
    t_xent(AV_F32);
    t_xent(AV_BF16);
    t_lora(3);
    t_lora(11);
    printf("max gradient rel L2 error over all ops: %.3g\n", g_worst);
    return TEST_SUMMARY();
}
