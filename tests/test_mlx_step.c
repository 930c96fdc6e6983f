/* One LoRA training step against MLX-LM itself (tests/fixtures/mlx_step, made by its
 * make_mlx_step.py with mlx_lm.tuner.trainer.train): the fixture's {"text"} rows tokenized by
 * anvil's dataset code give MLX-LM's batch; from MLX-LM's initial adapter (adapters.safetensors +
 * adapter_config.json, scale 10, rank 4, all seven projections of both layers) anvil's loss and
 * every LoRA gradient match MLX's, and one Adam (MLX-LM's default), AdamW (bias correction) and SGD
 * step give MLX-LM's adapter. `test_mlx_step --compare CASE FILE` compares an adapter file written
 * by `anvil lora` with the same bound (tests/cli_lora_mlx_step.sh).
 *
 * Tolerances (f32; MLX computes in f32 from the same bf16 weights, with its own summation order):
 * loss |d| <= 1e-5 |loss|; each gradient tensor max |d| <= GTOL * max |g_mlx|; each parameter
 * after the step |d| <= 1e-6 |p| + 1e-7 + lr * S(g) * GTOL * max |g_mlx|, where S(g) bounds the
 * derivative of the optimizer's first update with respect to the gradient near g (1 for SGD;
 * (1-b1) eps / (sqrt(1-b2) |g'| + eps)^2 for MLX's Adam, eps / (|g'| + eps)^2 for bias-corrected
 * AdamW, |g'| = max(|g| - the gradient bound, 0)): Adam's first step is lr (1-b1) g / (sqrt(1-b2)
 * |g| + eps), flat in g except where |g| is near eps, so the adapter is compared as tightly as the
 * gradients allow and no tighter. MLX's optimizer applied to MLX's own gradients must match to
 * 1e-6 |p| + 1e-7, as in test_optimizer. */
#include <cjson/cJSON.h>
#include "test.h"
#include "backend/backend.h"
#include "core/status.h"
#include "formats/safetensors.h"
#include "model/model.h"
#include "ops/ops.h"
#include "train/dataset.h"
#include "train/lora.h"
#include "train/train_model.h"

#define LOSS_RTOL 1e-5
#define GTOL 2e-5 /* of each gradient tensor's max |g| */
#define P_RTOL 1e-6
#define P_ATOL 1e-7

typedef struct {
    char name[16];
    av_optim_params op;
} step_case;

static av_st_file g_ref, g_init;
static step_case g_cases[8];
static int g_ncases;
static double g_loss_ref;

static const char *meta_str(const cJSON *meta, const char *key) {
    const cJSON *v = cJSON_GetObjectItem(meta, key);
    return cJSON_IsString(v) ? v->valuestring : "null";
}

/* reference.safetensors + init adapter; the cases (optimizer, config, lr) from the metadata */
static int open_fixture(void) {
    if (av_st_open(&g_ref, test_fixture("mlx_step/reference.safetensors")) != AV_OK ||
        av_st_open(&g_init, test_fixture("mlx_step/init/adapters.safetensors")) != AV_OK) {
        CHECK(0, "%s", av_last_error());
        return 0;
    }
    cJSON *meta = g_ref.metadata_json ? cJSON_Parse(g_ref.metadata_json) : NULL;
    cJSON *cases = cJSON_Parse(meta_str(meta, "cases")), *c;
    g_loss_ref = atof(meta_str(meta, "loss"));
    cJSON_ArrayForEach(c, cases) {
        if (g_ncases == 8) break;
        step_case *s = &g_cases[g_ncases++];
        snprintf(s->name, sizeof s->name, "%s", cJSON_GetObjectItem(c, "name")->valuestring);
        av_optim_kind kind;
        CHECK(av_optim_parse(cJSON_GetObjectItem(c, "optimizer")->valuestring, &kind) == 0, "%s: optimizer", s->name);
        av_optim_defaults(&s->op, kind);
        s->op.lr = (float)cJSON_GetObjectItem(c, "learning_rate")->valuedouble;
        s->op.step = 1;
        const cJSON *v;
        cJSON_ArrayForEach(v, cJSON_GetObjectItem(c, "config")) {
            if (!strcmp(v->string, "bias_correction")) s->op.bias_correction = cJSON_IsTrue(v);
            else CHECK(0, "%s: config key %s not mapped", s->name, v->string);
        }
        CHECK(kind != AV_OPTIM_ADAFACTOR && !(kind == AV_OPTIM_SGD && s->op.momentum != 0), "%s: no bound for this optimizer", s->name);
    }
    cJSON_Delete(cases);
    cJSON_Delete(meta);
    CHECK(g_ncases == 3 && g_loss_ref > 0, "fixture: %d cases, loss %g", g_ncases, g_loss_ref);
    return g_ncases > 0;
}

static const float *ref_tensor(const av_st_file *f, const char *name, size_t n) {
    const av_st_tensor *t = av_st_find(f, name);
    CHECK(t && t->dtype == AV_F32 && av_st_numel(t) == (int64_t)n, "%s: tensor %s (f32 x %zu)", f->path, name, n);
    return t && t->dtype == AV_F32 && av_st_numel(t) == (int64_t)n ? test_f32_view(t->data, n) : NULL;
}

/* sensitivity of the first update to the gradient, near g (see the header) */
static double sens(const av_optim_params *o, double g, double gb) {
    double x = fabs(g) - gb;
    if (x < 0) x = 0;
    if (o->kind == AV_OPTIM_SGD) return 1;
    double c1 = o->bias_correction ? 1 : 1 - o->beta1, c2 = o->bias_correction ? 1 : sqrt(1 - o->beta2);
    double d = c2 * x + o->eps;
    return c1 * o->eps / (d * d);
}

/* Compares parameter `got` (MLX layout, n floats) after case c with MLX's; returns worst d / tol. */
static double cmp_after(const step_case *c, const char *mlx_name, const float *got, const av_st_file *after, size_t n, int exact_opt,
                        double *max_abs) {
    char gname[256];
    snprintf(gname, sizeof gname, "grad.%s", mlx_name);
    const float *ref = ref_tensor(after, mlx_name, n), *g = ref_tensor(&g_ref, gname, n);
    if (!ref || !g) return INFINITY;
    double gmax = 0, worst = 0;
    for (size_t i = 0; i < n; i++) gmax = fmax(gmax, fabs(g[i]));
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        double tol = P_RTOL * fabs(ref[i]) + P_ATOL + (exact_opt ? 0 : c->op.lr * sens(&c->op, g[i], GTOL * gmax) * GTOL * gmax);
        if (d > *max_abs) *max_abs = d;
        if (!(d / tol <= worst)) worst = d / tol, at = i;
    }
    const float *p0 = ref_tensor(&g_init, mlx_name, n);
    CHECK(worst <= 1, "%s: %s[%zu] = %.9g vs MLX %.9g (init %.9g, gradient %.4g): %.3g x the tolerance", c->name, mlx_name, at,
          got[at], ref[at], p0 ? p0[at] : NAN, g[at], worst);
    return worst;
}

static const step_case *find_case(const char *name) {
    for (int i = 0; i < g_ncases; i++)
        if (!strcmp(g_cases[i].name, name)) return &g_cases[i];
    return NULL;
}

/* PEFT-style parameter name -> MLX name ("model.layers.0.self_attn.q_proj.lora_a") */
static void mlx_name(const char *peft, char *out, size_t cap) {
    const char *s = strstr(peft, "model.layers.");
    const char *ab = strstr(peft, ".lora_");
    snprintf(out, cap, "%.*s.lora_%c", (int)(ab - s), s, ab[6] == 'A' ? 'a' : 'b');
}

/* host [rows, cols] -> [cols, rows] */
static void transpose(float *dst, const float *src, int rows, int cols) {
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) dst[(size_t)j * rows + i] = src[(size_t)i * cols + j];
}

/* ---- `--compare CASE FILE`: an adapter file written by anvil lora ---------------------------- */
static int compare_file(const char *cname, const char *file) {
    if (!open_fixture()) return 1;
    const step_case *c = find_case(cname);
    char ap[300];
    snprintf(ap, sizeof ap, "mlx_step/after_%s.safetensors", cname);
    av_st_file got, after;
    CHECK(c != NULL, "no case %s in the fixture", cname);
    if (!c || av_st_open(&after, test_fixture(ap)) != AV_OK) return 1;
    if (av_st_open(&got, file) != AV_OK) {
        CHECK(0, "%s", av_last_error());
        return 1;
    }
    CHECK(got.n == after.n, "%s: %d tensors, MLX's adapter has %d", file, got.n, after.n);
    double worst = 0, max_abs = 0;
    for (int i = 0; i < after.n; i++) {
        const av_st_tensor *r = &after.tensors[i];
        const float *p = ref_tensor(&got, r->name, (size_t)av_st_numel(r));
        if (p) worst = fmax(worst, cmp_after(c, r->name, p, &after, (size_t)av_st_numel(r), 0, &max_abs));
    }
    printf("%s vs MLX-LM after one %s step: max |d| %.3g, worst %.3g of the tolerance\n", file, cname, max_abs, worst);
    av_st_close(&got);
    av_st_close(&after);
    return TEST_SUMMARY();
}

/* ---- the step through the library ---------------------------------------------------------- */
static av_status glue_encode(void *ctx, const char *s, size_t n, int add_special, int32_t **ids, int *cnt) {
    return av_tokenizer_encode(ctx, s, n, add_special, ids, cnt);
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "--compare")) return compare_file(argv[2], argv[3]);
    if (argc != 1) {
        fprintf(stderr, "usage: %s [--compare CASE ADAPTER_FILE]\n", argv[0]);
        return 2;
    }
    if (!open_fixture()) return TEST_SUMMARY();
    const char *model_dir = test_fixture("tiny-llama");
    /* 1. data: anvil's dataset code on the fixture's JSONL gives MLX-LM's rows (BOS ... EOS) */
    av_tokenizer *tok = NULL;
    CHECK_OK(av_tokenizer_load(&tok, model_dir, 0));
    av_ds_opts dso = {.encode = glue_encode, .ctx = tok, .eos_id = tok ? av_tokenizer_eos_id(tok) : -1};
    av_dataset ds = {0};
    av_batcher bt = {0};
    av_batch b = {0};
    CHECK_OK(av_dataset_load(&ds, test_fixture("mlx_step/data/train.jsonl"), &dso));
    const av_st_tensor *ids = av_st_find(&g_ref, "batch_ids");
    CHECK(ids && ids->dtype == AV_I32 && ids->ndim == 2 && ds.n == ids->shape[0], "reference batch_ids, %d rows read", ds.n);
    if (!ids || ids->dtype != AV_I32 || ids->ndim != 2 || ds.n != ids->shape[0]) return TEST_SUMMARY();
    int B = (int)ids->shape[0], L = (int)ids->shape[1];
    const int32_t *ref_ids = ids->data;
    for (int r = 0; r < B; r++) {
        int same = ds.rows[r].n == L && !memcmp(ds.rows[r].ids, ref_ids + (size_t)r * L, (size_t)L * 4);
        CHECK(same, "row %d: anvil's tokens differ from MLX-LM's (%d vs %d tokens)", r, ds.rows[r].n, L);
    }
    /* one batch of all rows, as `anvil lora --batch-size B` builds it */
    CHECK_OK(av_batcher_init(&bt, &ds, B, 0));
    CHECK_OK(av_batcher_get(&bt, 0, 1, &b));
    CHECK(b.B == B && b.T == L - 1 && b.n_targets == B * (L - 1), "batch %d x %d, %d targets", b.B, b.T, b.n_targets);

    /* 2. model + MLX-LM's initial adapter */
    av_model *m = NULL;
    CHECK_OK(av_model_load(&m, model_dir, av_backend_cpu()));
    av_lora_spec spec;
    if (m) CHECK_OK(av_adapter_load(m, test_fixture("mlx_step/init"), &spec));
    if (!m || av_lora_count(m) == 0) return TEST_SUMMARY();
    CHECK(spec.rank == 4 && spec.scale == 10.0f && spec.keys == (1u << AV_PROJ_COUNT) - 1 && av_lora_count(m) == 14,
          "adapter: rank %d scale %g keys %x, %d adapters", spec.rank, spec.scale, spec.keys, av_lora_count(m));

    /* 3. loss and gradients */
    av_train_ctx *tc = NULL;
    CHECK_OK(av_train_ctx_new(&tc, m, B, L - 1, 0));
    if (!tc) return TEST_SUMMARY();
    av_train_zero_grads(tc);
    double nll = 0;
    int nv = 0;
    CHECK_OK(av_train_step(tc, b.ids, b.targets, b.B, b.T, 1.0f / (float)b.n_targets, 1, &nll, &nv));
    double loss = nll / nv;
    CHECK(fabs(loss - g_loss_ref) <= LOSS_RTOL * g_loss_ref, "loss %.9f vs MLX-LM %.9f", loss, g_loss_ref);
    printf("loss %.9f, MLX-LM %.9f: |d| %.3g (%.3g relative)\n", loss, g_loss_ref, fabs(loss - g_loss_ref), fabs(loss - g_loss_ref) / g_loss_ref);
    int np = av_train_nparams(tc);
    av_param *P = av_train_params(tc);
    CHECK(np == g_init.n, "%d parameters, MLX-LM's adapter has %d", np, g_init.n);
    float **init = calloc((size_t)np, sizeof *init), **grad = calloc((size_t)np, sizeof *grad);
    float *tmp = NULL, *s1 = NULL, *s2 = NULL;
    size_t tcap = 0;
    double gworst = 0;
    for (int i = 0; i < np; i++) {
        char mn[256], gn[300];
        mlx_name(P[i].name, mn, sizeof mn);
        snprintf(gn, sizeof gn, "grad.%s", mn);
        if (P[i].n > tcap) {
            tcap = P[i].n;
            tmp = realloc(tmp, tcap * 4), s1 = realloc(s1, tcap * 4), s2 = realloc(s2, tcap * 4);
        }
        init[i] = malloc(P[i].n * 4);
        grad[i] = malloc(P[i].n * 4);
        memcpy(init[i], P[i].data, P[i].n * 4);
        memcpy(grad[i], P[i].grad, P[i].n * 4);
        const float *i0 = ref_tensor(&g_init, mn, P[i].n), *g = ref_tensor(&g_ref, gn, P[i].n);
        if (!i0 || !g) continue;
        transpose(tmp, P[i].data, P[i].rows, P[i].cols);
        CHECK(!memcmp(tmp, i0, P[i].n * 4), "%s: loaded adapter differs from the file", mn);
        transpose(tmp, P[i].grad, P[i].rows, P[i].cols);
        double gmax = 0, d = 0;
        for (size_t k = 0; k < P[i].n; k++) gmax = fmax(gmax, fabs(g[k])), d = fmax(d, fabs((double)tmp[k] - g[k]));
        CHECK(d <= GTOL * gmax, "gradient %s: max |d| %.3g, %.3g of max |g| %.3g", mn, d, d / gmax, gmax);
        gworst = fmax(gworst, d / gmax);
    }
    printf("gradients: max |d| / max |g| per tensor <= %.3g (bound %g)\n", gworst, GTOL);

    /* 4. one step of each optimizer from the initial adapter: with anvil's gradients (end to end)
     * and with MLX's gradients (the optimizer alone) */
    for (int k = 0; k < g_ncases; k++) {
        const step_case *c = &g_cases[k];
        char ap[300];
        snprintf(ap, sizeof ap, "mlx_step/after_%s.safetensors", c->name);
        av_st_file after;
        if (av_st_open(&after, test_fixture(ap)) != AV_OK) {
            CHECK(0, "%s", av_last_error());
            continue;
        }
        for (int own = 1; own >= 0; own--) {
            double worst = 0, max_abs = 0;
            for (int i = 0; i < np; i++) {
                char mn[256], gn[300];
                mlx_name(P[i].name, mn, sizeof mn);
                snprintf(gn, sizeof gn, "grad.%s", mn);
                float *p = P[i].data;
                memcpy(p, init[i], P[i].n * 4);
                memset(s1, 0, P[i].n * 4);
                memset(s2, 0, P[i].n * 4);
                const float *g = grad[i];
                if (!own) { /* MLX's gradient in anvil's layout */
                    const float *gm = ref_tensor(&g_ref, gn, P[i].n);
                    if (!gm) continue;
                    transpose(tmp, gm, P[i].cols, P[i].rows);
                    memcpy(P[i].grad, tmp, P[i].n * 4);
                    g = P[i].grad;
                }
                av_backend_cpu()->optim_step(p, g, s1, s2, P[i].rows, P[i].cols, &c->op);
                transpose(tmp, p, P[i].rows, P[i].cols);
                worst = fmax(worst, cmp_after(c, mn, tmp, &after, P[i].n, !own, &max_abs));
            }
            printf("%s step (%s gradients): max |d| %.3g, worst %.3g of the tolerance\n", c->name, own ? "anvil's" : "MLX's", max_abs, worst);
        }
        av_st_close(&after);
    }
    for (int i = 0; i < np; i++) free(init[i]), free(grad[i]);
    free(init), free(grad), free(tmp), free(s1), free(s2);
    av_train_ctx_free(tc);
    av_lora_detach(m);
    av_model_free(m);
    av_batch_free(&b);
    av_batcher_free(&bt);
    av_dataset_free(&ds);
    av_tokenizer_free(tok);
    av_st_close(&g_ref);
    av_st_close(&g_init);
    return TEST_SUMMARY();
}
