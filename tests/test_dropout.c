/* LoRA dropout: the dropout op (mask statistics, determinism, in-place use, p = 0 identity,
 * backward vs finite differences), and training through it on tiny-llama: p = 0 is bit-identical
 * to the path without dropout, p > 0 changes the loss, gradients match finite differences of the
 * training-mode loss for the same fixed mask (every LoRA tensor, also with gradient
 * checkpointing), evaluation ignores dropout, masks advance per step and repeat per seed. */
#include "test.h"
#include "backend/backend.h"
#include "core/rng.h"
#include "anvil.h"
#include "model/model.h"
#include "ops/ops.h"
#include "train/lora.h"
#include "train/train_model.h"

static av_rng g_rng;

static void t_op(void) {
    enum { N = 4001 };
    static float x[N], out[N], out2[N], r[N], dx[N];
    for (int i = 0; i < N; i++) x[i] = (float)(2 * av_rng_uniform(&g_rng) - 1), r[i] = (float)(2 * av_rng_uniform(&g_rng) - 1);
    float p = 0.3f, s = 1.0f / (1.0f - p);
    av_dropout_forward(out, x, N, p, 42);
    int kept = 0, shape_ok = 1;
    for (int i = 0; i < N; i++) {
        if (out[i] != 0.0f) kept++;
        if (out[i] != 0.0f && out[i] != x[i] * s) shape_ok = 0;
    }
    CHECK(shape_ok, "kept values are x / (1 - p)");
    CHECK(fabs((double)kept / N - (1 - p)) < 0.03, "kept fraction %.3f vs %.3f", (double)kept / N, 1 - p);
    av_dropout_forward(out2, x, N, p, 42);
    CHECK(!memcmp(out, out2, sizeof out), "same seed -> same mask");
    av_dropout_forward(out2, x, N, p, 43);
    CHECK(memcmp(out, out2, sizeof out), "another seed -> another mask");
    memcpy(out2, x, sizeof x);
    av_dropout_forward(out2, out2, N, p, 42);
    CHECK(!memcmp(out, out2, sizeof out), "in place gives the same result");
    av_dropout_forward(out2, x, N, 0.0f, 42);
    CHECK(!memcmp(out2, x, sizeof x), "p = 0 is the identity");
    /* backward vs central differences of L = sum(r * dropout(x)) for the first elements (the
     * whole forward re-run per perturbation), and vs r * mask / (1 - p) everywhere; it accumulates */
    for (int i = 0; i < N; i++) dx[i] = 1.0f;
    av_dropout_backward(dx, r, N, p, 42);
    double num = 0, den = 0, h = 1e-2;
    for (int i = 0; i < N; i++) {
        double fd;
        if (i < 64) {
            float keep = x[i];
            double lp = 0, lm = 0;
            x[i] = keep + (float)h;
            av_dropout_forward(out2, x, N, p, 42);
            for (int k = 0; k < N; k++) lp += (double)r[k] * out2[k];
            x[i] = keep - (float)h;
            av_dropout_forward(out2, x, N, p, 42);
            for (int k = 0; k < N; k++) lm += (double)r[k] * out2[k];
            x[i] = keep;
            fd = (lp - lm) / (2 * h);
        } else fd = out[i] != 0.0f ? (double)r[i] * s : 0.0;
        double got = dx[i] - 1.0;
        num += (got - fd) * (got - fd);
        den += fd * fd;
    }
    CHECK(sqrt(num / den) < 1e-5, "dropout backward vs finite differences: rel L2 %.3g", sqrt(num / den));
}

/* ---- through the model ---- */
enum { B = 2, T = 10 };
static int32_t g_ids[B * T], g_tg[B * T];

static double loss_of(av_train_ctx *c, int flags) {
    double nll;
    int nv;
    if (av_train_step_ex(c, g_ids, g_tg, B, T, 1.0f, flags, &nll, &nv) != AV_OK) return NAN;
    return nll;
}

static float *grads_copy(av_train_ctx *c, size_t *total) {
    int np = av_train_nparams(c);
    av_param *P = av_train_params(c);
    size_t n = 0;
    for (int i = 0; i < np; i++) n += P[i].n;
    float *g = malloc(n * sizeof(float)), *q = g;
    for (int i = 0; i < np; i++) memcpy(q, P[i].grad, P[i].n * sizeof(float)), q += P[i].n;
    *total = n;
    return g;
}

/* Directional derivative along a random +-1 direction of each parameter tensor vs central
 * differences of the training-mode loss at dropout step `step`. Returns the worst relative error. */
static double fd_check(av_train_ctx *c, uint64_t step, const char *what) {
    int np = av_train_nparams(c);
    av_param *P = av_train_params(c);
    double worst = 0;
    for (int i = 0; i < np; i++) {
        float *u = malloc(P[i].n * sizeof(float)), *w0 = malloc(P[i].n * sizeof(float));
        memcpy(w0, P[i].data, P[i].n * sizeof(float));
        double gu = 0;
        for (size_t k = 0; k < P[i].n; k++) {
            u[k] = av_rng_uniform(&g_rng) < 0.5 ? -1.0f : 1.0f;
            gu += (double)P[i].grad[k] * u[k];
        }
        /* central differences at h and h/2, Richardson-combined (cancels the h^2 term) */
        double d[2];
        for (int j = 0; j < 2; j++) {
            double h = j ? 5e-3 : 1e-2; /* f32 forward: large enough to sit well above rounding */
            for (size_t k = 0; k < P[i].n; k++) P[i].data[k] = w0[k] + (float)h * u[k];
            av_train_set_dropout_step(c, step);
            double lp = loss_of(c, AV_STEP_DROPOUT);
            for (size_t k = 0; k < P[i].n; k++) P[i].data[k] = w0[k] - (float)h * u[k];
            av_train_set_dropout_step(c, step);
            double lm = loss_of(c, AV_STEP_DROPOUT);
            d[j] = (lp - lm) / (2 * h);
        }
        memcpy(P[i].data, w0, P[i].n * sizeof(float));
        double fd = (4 * d[1] - d[0]) / 3, err = fabs(fd - gu) / (fabs(fd) > 1e-2 ? fabs(fd) : 1e-2);
        if (err > worst) worst = err;
        CHECK(err < 2e-2, "%s: %s directional grad %.6g vs finite differences %.6g", what, P[i].name, gu, fd);
        free(u);
        free(w0);
    }
    return worst;
}

static void t_model(const char *name) {
    const char *dir = test_fixture(name);
    av_model *m;
    CHECK_OK(av_model_load(&m, dir, av_backend_cpu()));
    if (!m) return;
    int V = m->cfg.vocab_size;
    for (int i = 0; i < B * T; i++) g_ids[i] = 3 + (int32_t)av_rng_below(&g_rng, (uint64_t)(V - 3));
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) g_tg[b * T + t] = t + 1 < T ? g_ids[b * T + t + 1] : -1;
    g_tg[3] = -1; /* an ignored target */
    av_lora_spec spec;
    av_lora_spec_default(&spec);
    spec.rank = 4;
    spec.num_layers = -1;
    spec.keys = (1u << AV_PROJ_COUNT) - 1;
    CHECK_OK(av_lora_attach(m, &spec, 3));
    for (int l = 0; l < m->cfg.n_layers; l++) /* non-zero B so that every gradient is exercised */
        for (int p = 0; p < AV_PROJ_COUNT; p++) {
            av_linear *L = av_layer_proj(&m->layers[l], (av_proj)p);
            for (int k = 0; k < L->w.rows * L->rank; k++) L->lora_b[k] = (float)(0.1 * (2 * av_rng_uniform(&g_rng) - 1));
        }
    av_train_ctx *c = NULL, *ck = NULL;
    CHECK_OK(av_train_ctx_new(&c, m, B, T, 0));
    CHECK_OK(av_train_ctx_new(&ck, m, B, T, 1));
    if (!c || !ck) goto out;
    size_t n0, n1;
    /* p = 0: bit-identical to no dropout at all */
    av_train_zero_grads(c);
    double l0 = loss_of(c, AV_STEP_BACKWARD | AV_STEP_DROPOUT);
    float *g0 = grads_copy(c, &n0);
    CHECK_OK(av_train_set_dropout(c, 0.0f, 11));
    av_train_zero_grads(c);
    double l0b = loss_of(c, AV_STEP_BACKWARD | AV_STEP_DROPOUT);
    float *g1 = grads_copy(c, &n1);
    CHECK(l0 == l0b && n0 == n1 && !memcmp(g0, g1, n0 * sizeof(float)), "%s: p = 0 changes the step (%.9g vs %.9g)", name, l0, l0b);
    free(g1);
    /* p > 0 */
    CHECK(av_train_set_dropout(c, 1.0f, 1) != AV_OK, "p = 1 refused");
    CHECK_OK(av_train_set_dropout(c, 0.25f, 11));
    CHECK_OK(av_train_set_dropout(ck, 0.25f, 11));
    double ev = loss_of(c, 0);
    CHECK(ev == l0, "%s: evaluation applies dropout (%.9g vs %.9g)", name, ev, l0);
    av_train_set_dropout_step(c, 5);
    double ld = loss_of(c, AV_STEP_DROPOUT);
    CHECK(fabs(ld - l0) > 1e-4, "%s: dropout 0.25 leaves the loss at %.9g", name, ld);
    av_train_set_dropout_step(c, 5);
    av_train_zero_grads(c);
    double ld2 = loss_of(c, AV_STEP_BACKWARD | AV_STEP_DROPOUT);
    CHECK(ld2 == ld, "%s: backward step loss %.9g vs forward %.9g (same mask)", name, ld2, ld);
    double ld3 = loss_of(c, AV_STEP_DROPOUT); /* the counter moved on: step 6 */
    CHECK(ld3 != ld, "%s: the mask did not advance after a training step", name);
    av_train_set_dropout_step(c, 6);
    CHECK(loss_of(c, AV_STEP_DROPOUT) == ld3, "%s: step 6 not reproducible", name);
    /* gradient checkpointing recomputes with the same masks */
    av_train_set_dropout_step(c, 5);
    av_train_zero_grads(c);
    loss_of(c, AV_STEP_BACKWARD | AV_STEP_DROPOUT);
    float *gd = grads_copy(c, &n0);
    av_train_set_dropout_step(ck, 5);
    av_train_zero_grads(ck);
    double lk = loss_of(ck, AV_STEP_BACKWARD | AV_STEP_DROPOUT);
    float *gk = grads_copy(ck, &n1);
    double num = 0, den = 0;
    for (size_t i = 0; i < n0; i++) num += (double)(gd[i] - gk[i]) * (gd[i] - gk[i]), den += (double)gd[i] * gd[i];
    CHECK(lk == ld && sqrt(num / den) < 1e-6, "%s: checkpointing: loss %.9g vs %.9g, grads rel %.3g", name, lk, ld, sqrt(num / den));
    /* finite differences of the same fixed mask */
    av_train_set_dropout_step(c, 5);
    av_train_zero_grads(c);
    loss_of(c, AV_STEP_BACKWARD | AV_STEP_DROPOUT);
    double worst = fd_check(c, 5, name);
    printf("%s: dropout 0.25: loss %.6f (no dropout %.6f); worst directional-gradient error vs finite differences %.3g\n", name, ld, l0,
           worst);
    /* same seed -> same run; another seed -> another */
    av_train_set_dropout(c, 0.25f, 11);
    av_train_set_dropout(ck, 0.25f, 11);
    double a1 = loss_of(c, AV_STEP_BACKWARD | AV_STEP_DROPOUT), a2 = loss_of(c, AV_STEP_BACKWARD | AV_STEP_DROPOUT);
    double b1 = loss_of(ck, AV_STEP_BACKWARD | AV_STEP_DROPOUT), b2 = loss_of(ck, AV_STEP_BACKWARD | AV_STEP_DROPOUT);
    CHECK(a1 == b1 && a2 == b2 && a1 != a2, "%s: seeded runs %.9g %.9g vs %.9g %.9g", name, a1, a2, b1, b2);
    av_train_set_dropout(ck, 0.25f, 12);
    CHECK(loss_of(ck, AV_STEP_DROPOUT) != a1, "%s: another seed gives the same mask", name);
    free(g0);
    free(gd);
    free(gk);
out:
    av_train_ctx_free(c);
    av_train_ctx_free(ck);
    av_lora_detach(m);
    av_model_free(m);
}

int main(void) {
    av_threads_set(1); /* tiny shapes: threads only cost time on a loaded machine */
    av_rng_seed(&g_rng, 1234);
    t_op();
    t_model("tiny-llama");
    t_model("tiny-llama-tied");
    return TEST_SUMMARY();
}
