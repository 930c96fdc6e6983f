/* The optimizer op (optim_step) against MLX's own optimizers: tests/fixtures/optimizer/steps.safetensors
 * (made by tests/fixtures/make_optimizer_fixtures.py) holds three steps of Adam, AdamW, SGD and
 * Adafactor (defaults and variants) on LoRA-shaped matrices, a vector and a [1, n] matrix, with a
 * new learning rate each step. Every parameter after every step, and the final optimizer state,
 * must agree within |d| <= 1e-6 |ref| + 1e-7 (f32), on the CPU and (when present) the GPU. */
#include <cjson/cJSON.h>
#include "test.h"
#include "backend/backend.h"
#include "formats/safetensors.h"
#include "ops/ops.h"

#define REL_TOL 1e-6
#define ABS_TOL 1e-7

static const char *k_fixture = "tests/fixtures/optimizer/steps.safetensors";

/* MLX keyword arguments (optimizer_config) -> av_optim_params */
static void apply_config(av_optim_params *p, const cJSON *cfg) {
    const cJSON *v;
    cJSON_ArrayForEach(v, cfg) {
        const char *k = v->string;
        int af = p->kind == AV_OPTIM_ADAFACTOR;
        if (!strcmp(k, "betas")) p->beta1 = cJSON_GetArrayItem(v, 0)->valuedouble, p->beta2 = cJSON_GetArrayItem(v, 1)->valuedouble;
        else if (!strcmp(k, "eps") && af) p->eps1 = cJSON_GetArrayItem(v, 0)->valuedouble, p->eps2 = cJSON_GetArrayItem(v, 1)->valuedouble;
        else if (!strcmp(k, "eps")) p->eps = v->valuedouble;
        else if (!strcmp(k, "bias_correction")) p->bias_correction = cJSON_IsTrue(v);
        else if (!strcmp(k, "weight_decay")) p->weight_decay = v->valuedouble;
        else if (!strcmp(k, "momentum")) p->momentum = v->valuedouble;
        else if (!strcmp(k, "dampening")) p->dampening = v->valuedouble;
        else if (!strcmp(k, "nesterov")) p->nesterov = cJSON_IsTrue(v);
        else if (!strcmp(k, "clip_threshold")) p->clip_threshold = v->valuedouble;
        else if (!strcmp(k, "decay_rate")) p->decay_rate = v->valuedouble;
        else if (!strcmp(k, "beta_1")) p->af_first_moment = 1, p->af_beta1 = v->valuedouble;
        else if (!strcmp(k, "scale_parameter")) p->scale_parameter = cJSON_IsTrue(v);
        else if (!strcmp(k, "relative_step")) p->relative_step = cJSON_IsTrue(v);
        else if (!strcmp(k, "warmup_init")) p->warmup_init = cJSON_IsTrue(v);
        else CHECK(0, "fixture config key %s not mapped", k);
    }
}

static const float *tensor(const av_st_file *f, const char *name, size_t n) {
    const av_st_tensor *t = av_st_find(f, name);
    CHECK(t && t->dtype == AV_F32 && av_st_numel(t) == (int64_t)n, "fixture tensor %s (f32 x %zu)", name, n);
    return t && t->dtype == AV_F32 && av_st_numel(t) == (int64_t)n ? test_f32_view(t->data, n) : NULL;
}

static double g_worst; /* over the backend's run */

/* worst |d| / (REL_TOL |ref| + ABS_TOL): <= 1 passes */
static double worst(const float *a, const float *ref, size_t n, size_t *at) {
    double w = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]) / (REL_TOL * fabs(ref[i]) + ABS_TOL);
        if (!(d <= w)) w = d, *at = i;
    }
    if (!(w <= g_worst)) g_worst = w;
    return w;
}

static float *dev(const av_backend *be, const float *h, size_t n) { /* n floats: a copy of h, or zeros */
    if (!n) return NULL;
    float *d = be->alloc(n * 4, "test");
    if (h) be->upload(d, h, n * 4);
    else be->zero(d, n * 4);
    return d;
}
static const char *meta_str(const cJSON *meta, const char *key) {
    const cJSON *v = cJSON_GetObjectItem(meta, key);
    return cJSON_IsString(v) ? v->valuestring : "null";
}

static void run_case(const av_backend *be, const av_st_file *f, const cJSON *c, const cJSON *shapes, const cJSON *lrs, int steps) {
    const char *cname = cJSON_GetObjectItem(c, "name")->valuestring;
    av_optim_params op;
    av_optim_kind kind;
    CHECK(av_optim_parse(cJSON_GetObjectItem(c, "optimizer")->valuestring, &kind) == 0, "%s: optimizer name", cname);
    av_optim_defaults(&op, kind);
    apply_config(&op, cJSON_GetObjectItem(c, "config"));
    const cJSON *sh;
    cJSON_ArrayForEach(sh, shapes) {
        const char *pn = sh->string;
        int nd = cJSON_GetArraySize(sh);
        int rows = nd == 2 ? cJSON_GetArrayItem(sh, 0)->valueint : 1, cols = cJSON_GetArrayItem(sh, nd - 1)->valueint;
        size_t n = (size_t)rows * cols, n1 = av_optim_state_size(&op, rows, cols, 0), n2 = av_optim_state_size(&op, rows, cols, 1);
        char name[160];
        snprintf(name, sizeof name, "init.%s", pn);
        const float *p0 = tensor(f, name, n);
        if (!p0) return;
        float *p = dev(be, p0, n), *s1 = dev(be, NULL, n1), *s2 = dev(be, NULL, n2), *g = dev(be, NULL, n), *h = malloc(n * 4);
        for (int s = 1; s <= steps; s++) {
            snprintf(name, sizeof name, "grad.%d.%s", s, pn);
            const float *gh = tensor(f, name, n);
            if (!gh) break;
            be->upload(g, gh, n * 4);
            op.step = s;
            op.lr = (float)cJSON_GetArrayItem(lrs, s - 1)->valuedouble;
            be->optim_step(p, g, s1, s2, rows, cols, &op);
            be->download(h, p, n * 4);
            snprintf(name, sizeof name, "%s.%d.%s", cname, s, pn);
            const float *ref = tensor(f, name, n);
            size_t at = 0;
            double w = ref ? worst(h, ref, n, &at) : INFINITY;
            CHECK(w <= 1, "%s %s: step %d [%zu] %.9g vs MLX %.9g", be->name, name, s, at, h[at], ref ? ref[at] : NAN);
        }
        float *st[2] = {s1, s2};
        size_t sn[2] = {n1, n2};
        for (int k = 0; k < 2; k++) {
            snprintf(name, sizeof name, "%s.state.%s.s%d", cname, pn, k + 1);
            const av_st_tensor *t = av_st_find(f, name);
            CHECK((t != NULL) == (sn[k] > 0), "%s: state %s present in MLX's and anvil's layouts alike", be->name, name);
            if (!t || !sn[k]) continue;
            const float *ref = tensor(f, name, sn[k]);
            float *hs = malloc(sn[k] * 4);
            be->download(hs, st[k], sn[k] * 4);
            size_t at = 0;
            double w = ref ? worst(hs, ref, sn[k], &at) : INFINITY;
            CHECK(w <= 1, "%s %s: [%zu] %.9g vs MLX %.9g", be->name, name, at, hs[at], ref ? ref[at] : NAN);
            free(hs);
        }
        be->free(p), be->free(g);
        if (s1) be->free(s1);
        if (s2) be->free(s2);
        free(h);
    }
}

int main(void) {
    av_st_file f;
    if (av_st_open(&f, k_fixture) != AV_OK) {
        CHECK(0, "%s: %s (run from the repository root)", k_fixture, av_last_error());
        return TEST_SUMMARY();
    }
    cJSON *meta = f.metadata_json ? cJSON_Parse(f.metadata_json) : NULL;
    const cJSON *ver = cJSON_GetObjectItem(meta, "mlx_version");
    cJSON *cases = cJSON_Parse(meta_str(meta, "cases")), *shapes = cJSON_Parse(meta_str(meta, "shapes")), *lrs = cJSON_Parse(meta_str(meta, "lrs"));
    int steps = cJSON_GetArraySize(lrs);
    CHECK(cJSON_IsArray(cases) && cJSON_IsObject(shapes) && steps >= 2, "fixture metadata");
    printf("fixture: MLX %s, %d cases, %d steps\n", cJSON_IsString(ver) ? ver->valuestring : "?", cJSON_GetArraySize(cases), steps);
    const av_backend *bes[2] = {av_backend_cpu(), av_backend_cuda()};
    if (!bes[1]) SKIP("no GPU: optim_step against MLX on the CPU backend only");
    for (int b = 0; b < 2; b++) {
        if (!bes[b]) continue;
        const cJSON *c;
        int before = t_failed;
        g_worst = 0;
        cJSON_ArrayForEach(c, cases) run_case(bes[b], &f, c, shapes, lrs, steps);
        printf("%s: %d cases x %d parameters x %d steps vs MLX: %s (worst error %.3g of the tolerance)\n", bes[b]->name,
               cJSON_GetArraySize(cases), cJSON_GetArraySize(shapes), steps, t_failed == before ? "ok" : "FAILED", g_worst);
    }
    cJSON_Delete(cases), cJSON_Delete(shapes), cJSON_Delete(lrs), cJSON_Delete(meta);
    av_st_close(&f);
    return TEST_SUMMARY();
}
