/* End-to-end LoRA checks against PEFT (fixtures): adapter application (NLL of golden prompt 0 with
 * the fixture adapter), and one training step's loss and every LoRA gradient (relative L2), with
 * and without gradient checkpointing; plus MLX/PEFT adapter file round trips (save -> load ->
 * identical NLL) and error messages for bad adapters. */
#include "test.h"
#include "backend/backend.h"
#include "core/memory.h"
#include "core/status.h"
#include "model/llama.h"
#include "model/model.h"
#include "train/lora.h"
#include "train/train_model.h"
#include <sys/stat.h>

static int read_ids(const cJSON *arr, int32_t *out, int cap) {
    int n = 0;
    for (const cJSON *e = arr ? arr->child : NULL; e && n < cap; e = e->next) out[n++] = e->valueint;
    return n;
}

static double prompt_nll(av_model *m, const int32_t *ids, int T) {
    av_session *s;
    double sum = NAN;
    if (av_session_new(&s, m, 512, 64) != AV_OK) return NAN;
    if (av_session_nll(s, ids, T, &sum, NULL, NULL) != AV_OK) sum = NAN;
    av_session_free(s);
    return sum / (T - 1);
}

/* Runs the golden train step; compares loss and grads. Returns max rel L2 error. */
static double check_step(const char *name, av_model *m, const cJSON *ts, const av_st_file *gf, int ckpt, double *loss_err) {
    int32_t ids[2 * 48], tg[2 * 48];
    int B = 0, T = 0;
    for (const cJSON *row = cJSON_GetObjectItem(ts, "batch_ids")->child; row && B < 2; row = row->next, B++)
        T = read_ids(row, ids + B * 48, 48);
    CHECK(B == 2 && T == 48, "%s: golden batch is %d x %d", name, B, T);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) tg[b * T + t] = t + 1 < T ? ids[b * T + t + 1] : -1;
    av_train_ctx *c;
    CHECK_OK(av_train_ctx_new(&c, m, B, T, ckpt));
    if (!c) return INFINITY;
    av_train_zero_grads(c);
    double nll;
    int nv;
    CHECK_OK(av_train_step(c, ids, tg, B, T, 1.0f / (float)(B * (T - 1)), 1, &nll, &nv));
    CHECK(nv == B * (T - 1), "%s: %d valid targets", name, nv);
    double loss = nll / nv, gold = cJSON_GetObjectItem(ts, "loss")->valuedouble;
    *loss_err = fabs(loss - gold);
    CHECK(*loss_err <= 1e-4, "%s (ckpt %d): loss %.7f vs golden %.7f", name, ckpt, loss, gold);
    double worst = 0;
    int np = av_train_nparams(c), matched = 0;
    av_param *P = av_train_params(c);
    for (int i = 0; i < np; i++) {
        const av_st_tensor *t = av_st_find(gf, P[i].name);
        CHECK(t != NULL, "%s: reference has no gradient '%s'", name, P[i].name);
        if (!t) continue;
        CHECK(t->dtype == AV_F32 && av_st_numel(t) == (int64_t)P[i].n, "%s: '%s' shape/dtype", name, P[i].name);
        if (t->dtype != AV_F32 || av_st_numel(t) != (int64_t)P[i].n) continue;
        const float *ref = t->data;
        double num = 0, den = 0;
        for (size_t k = 0; k < P[i].n; k++) {
            double d = (double)P[i].grad[k] - ref[k];
            num += d * d;
            den += (double)ref[k] * ref[k];
        }
        double rel = sqrt(num / (den > 0 ? den : 1e-30));
        if (rel > worst) worst = rel;
        CHECK(rel <= 1e-3, "%s (ckpt %d): gradient '%s' relative L2 error %.3g", name, ckpt, P[i].name, rel);
        matched++;
    }
    CHECK(matched == gf->n, "%s: matched %d of %d reference gradients", name, matched, gf->n);
    /* the dump file holds the same tensors under the same names */
    char dump[128];
    snprintf(dump, sizeof dump, "/tmp/anvil-grads-%d.safetensors", (int)getpid());
    CHECK_OK(av_train_save_grads(c, dump));
    av_st_file df;
    if (av_st_open(&df, dump) == AV_OK) {
        int same = df.n == np;
        for (int i = 0; i < np && same; i++) {
            const av_st_tensor *t = av_st_find(&df, P[i].name);
            same = t && av_st_numel(t) == (int64_t)P[i].n && !memcmp(t->data, P[i].grad, P[i].n * sizeof(float));
        }
        CHECK(same, "%s: dumped gradients differ", dump);
        av_st_close(&df);
    } else CHECK(0, "%s", av_last_error());
    unlink(dump);
    /* forward-only gives the same NLL */
    double nll2;
    CHECK_OK(av_train_step(c, ids, tg, B, T, 0.0f, 0, &nll2, &nv));
    CHECK_NEAR(nll2, nll, 1e-6 * fabs(nll));
    av_train_ctx_free(c);
    return worst;
}

static void check_roundtrip(const char *name, av_model *m, const int32_t *ids, int T, double want) {
    char dir[256];
    snprintf(dir, sizeof dir, "/tmp/anvil-lora-test-%d/%s", (int)getpid(), name);
    for (int peft = 0; peft < 2; peft++) {
        char sub[300];
        snprintf(sub, sizeof sub, "%s/%s", dir, peft ? "peft" : "mlx");
        av_lora_spec spec;
        av_lora_spec_default(&spec);
        CHECK_OK(av_adapter_save(m, &spec, sub, peft));
        av_adapter_format fmt;
        CHECK_OK(av_adapter_detect(sub, &fmt));
        CHECK(fmt == (peft ? AV_ADAPTER_PEFT : AV_ADAPTER_MLX), "%s: detected format %d", sub, fmt);
        av_lora_detach(m);
        av_lora_spec got;
        CHECK_OK(av_adapter_load(m, sub, &got));
        CHECK(got.rank == 4 && fabsf(got.scale - 2.0f) < 1e-6f && got.keys == (1u << AV_PROJ_COUNT) - 1 && got.num_layers == -1,
              "%s: spec back rank %d scale %g keys %x layers %d", sub, got.rank, got.scale, got.keys, got.num_layers);
        double nll = prompt_nll(m, ids, T);
        CHECK(nll == want, "%s: NLL after round trip %.9f vs %.9f", sub, nll, want);
        /* the tensor file alone (config read beside it) */
        char file[400];
        snprintf(file, sizeof file, "%s/%s", sub, peft ? "adapter_model.safetensors" : "adapters.safetensors");
        av_lora_detach(m);
        CHECK_OK(av_adapter_load(m, file, NULL));
        nll = prompt_nll(m, ids, T);
        CHECK(nll == want, "%s: NLL after loading the file %.9f vs %.9f", file, nll, want);
    }
    /* a subset (last layer, q/v) in both formats: MLX num_layers and PEFT layers_to_transform */
    av_lora_spec s2;
    av_lora_spec_default(&s2);
    s2.rank = 3;
    s2.scale = 1.5f;
    s2.num_layers = 1;
    CHECK_OK(av_lora_attach(m, &s2, 7));
    /* make B non-zero so the adapter matters */
    int NL = m->cfg.n_layers;
    av_linear *q = &m->layers[NL - 1].q;
    for (int i = 0; i < q->w.rows * q->rank; i++) q->lora_b[i] = 0.01f * (float)((i * 37) % 11 - 5);
    double base_sub = prompt_nll(m, ids, T);
    for (int peft = 0; peft < 2; peft++) {
        char sub[300];
        snprintf(sub, sizeof sub, "%s/sub-%s", dir, peft ? "peft" : "mlx");
        CHECK_OK(av_adapter_save(m, &s2, sub, peft));
        av_lora_spec got;
        av_lora_detach(m);
        CHECK_OK(av_adapter_load(m, sub, &got));
        CHECK(got.rank == 3 && got.scale == 1.5f && got.num_layers == 1 && got.keys == s2.keys, "%s: spec back rank %d scale %g layers %d keys %x",
              sub, got.rank, got.scale, got.num_layers, got.keys);
        CHECK(av_lora_count(m) == 2, "%s: %d adapters", sub, av_lora_count(m));
        double nll = prompt_nll(m, ids, T);
        CHECK(nll == base_sub, "%s: NLL after round trip %.9f vs %.9f", sub, nll, base_sub);
    }
    /* errors: rank mismatch between config and tensors, missing tensor, missing path */
    char bad[400], cfg[500];
    snprintf(bad, sizeof bad, "%s/sub-mlx", dir);
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", bad);
    char *txt;
    size_t len;
    if (av_file_read(cfg, &txt, &len) == AV_OK) {
        char *r = strstr(txt, "\"rank\":");
        if (r) {
            r += 7;
            while (*r == ' ' || *r == '\t') r++;
            *r = '5';
        }
        av_write_file_atomic(cfg, txt, len);
        free(txt);
        av_status st = av_adapter_load(m, bad, NULL);
        CHECK(st == AV_ERR_SHAPE && strstr(av_last_error(), "rank mismatch") && strstr(av_last_error(), "adapters.safetensors"),
              "rank mismatch error: %s", av_last_error());
        CHECK(av_lora_count(m) == 0, "failed load leaves no adapters");
    }
    CHECK(av_adapter_load(m, "/nonexistent/adapter", NULL) == AV_ERR_IO && strstr(av_last_error(), "/nonexistent/adapter"),
          "missing path: %s", av_last_error());
    /* tiny-llama-lora on the other model: shape mismatch */
    const char *other = !strcmp(name, "tiny-llama") ? "tiny-llama-tied-lora" : "tiny-llama-lora";
    av_status st = av_adapter_load(m, test_fixture(other), NULL);
    CHECK(st != AV_OK && strstr(av_last_error(), "adapter_model.safetensors"), "foreign adapter: %s", av_last_error());
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf /tmp/anvil-lora-test-%d", (int)getpid());
    if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
}

/* Fused model (f32 and bf16 output) vs base + adapter: same NLL (f32: 1e-4; bf16: 1e-3 for the
 * fused weights' extra rounding). */
static void check_fuse(const char *name, av_model *m, const int32_t *ids, int T, double want) {
    char dir[256];
    snprintf(dir, sizeof dir, "/tmp/anvil-fuse-test-%d", (int)getpid());
    for (int k = 0; k < 2; k++) {
        char sub[300];
        snprintf(sub, sizeof sub, "%s/%s", dir, k ? "bf16" : "f32");
        int n = 0;
        CHECK_OK(av_fuse_save(m, sub, k ? -1 : AV_F32, &n));
        CHECK(n == m->cfg.n_layers * AV_PROJ_COUNT, "%s: fused %d adapters", name, n);
        av_model *f;
        CHECK_OK(av_model_load(&f, sub, av_backend_cpu()));
        if (!f) continue;
        CHECK(f->layers[0].q.w.dtype == (k ? AV_BF16 : AV_F32), "%s: fused dtype", sub);
        double nll = prompt_nll(f, ids, T), tol = k ? 1e-3 : 1e-4;
        CHECK(fabs(nll - want) <= tol, "%s %s: fused NLL %.7f vs base+adapter %.7f", name, sub, nll, want);
        printf("%s: fused (%s) NLL err %.3g\n", name, k ? "bf16" : "f32", fabs(nll - want));
        av_model_free(f);
    }
    CHECK(av_fuse_save(m, m->dir, -1, NULL) == AV_ERR_ARG, "fuse over the model dir must fail");
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
}

static void check_model(const char *name) {
    char golden[4096], lora_dir[4096], grads[4096];
    snprintf(golden, sizeof golden, "%s/%s_golden.json", test_fixtures(), name);
    snprintf(lora_dir, sizeof lora_dir, "%s/%s-lora", test_fixtures(), name);
    snprintf(grads, sizeof grads, "%s/%s-lora_grads.safetensors", test_fixtures(), name);
    cJSON *g;
    CHECK_OK(av_json_load(golden, &g));
    if (!g) return;
    av_model *m;
    CHECK_OK(av_model_load(&m, test_fixture(name), av_backend_cpu()));
    if (!m) { cJSON_Delete(g); return; }
    av_lora_spec spec;
    CHECK_OK(av_adapter_load(m, lora_dir, &spec));
    CHECK(spec.rank == 4 && spec.scale == 2.0f && spec.keys == (1u << AV_PROJ_COUNT) - 1, "%s: adapter spec rank %d scale %g keys %x", name,
          spec.rank, spec.scale, spec.keys);
    /* adapter application parity */
    const cJSON *lo = cJSON_GetObjectItem(g, "lora");
    int32_t ids[1024];
    int T = read_ids(cJSON_GetObjectItem(lo, "ids"), ids, 1024);
    double nll = prompt_nll(m, ids, T), want = cJSON_GetObjectItem(lo, "mean_nll")->valuedouble;
    CHECK(fabs(nll - want) <= 1e-4, "%s: adapter mean NLL %.7f vs golden %.7f", name, nll, want);
    printf("%s: adapter NLL err %.3g\n", name, fabs(nll - want));
    /* gradients */
    av_st_file gf;
    CHECK_OK(av_st_open(&gf, grads));
    for (int ckpt = 0; ckpt < 2; ckpt++) {
        double le = 0, worst = check_step(name, m, cJSON_GetObjectItem(g, "train_step"), &gf, ckpt, &le);
        printf("%s (grad_checkpoint %d): loss abs err %.3g, max grad rel L2 err %.3g\n", name, ckpt, le, worst);
    }
    av_st_close(&gf);
    check_fuse(name, m, ids, T, nll);
    check_roundtrip(name, m, ids, T, nll);
    av_lora_detach(m);
    av_model_free(m);
    cJSON_Delete(g);
}

/* Adapters on the last layer only: the layers below run forward only (no saved activations, no
 * backward); the last layer's gradients must equal those of a run with adapters on every layer
 * whose lower adapters are zero (B = 0: the same function). */
static void check_frozen_prefix(const char *name) {
    av_model *m;
    CHECK_OK(av_model_load(&m, test_fixture(name), av_backend_cpu()));
    if (!m) return;
    int NL = m->cfg.n_layers, B = 2, T = 9, V = m->cfg.vocab_size;
    int32_t ids[18], tg[18];
    for (int i = 0; i < B * T; i++) ids[i] = (int32_t)(1 + (i * 7919) % (V - 1));
    for (int i = 0; i < B * T; i++) tg[i] = (i % T) + 1 < T ? ids[i + 1] : -1;
    av_lora_spec spec;
    av_lora_spec_default(&spec);
    spec.rank = 4;
    spec.num_layers = -1;
    spec.keys = (1u << AV_PROJ_COUNT) - 1;
    uint8_t last[64] = {0};
    last[NL - 1] = 1;
    for (int ckpt = 0; ckpt < 2; ckpt++) {
        av_train_ctx *c1 = NULL, *c2 = NULL;
        CHECK_OK(av_lora_attach(m, &spec, 5));
        CHECK_OK(av_train_ctx_new(&c1, m, B, T, ckpt));
        if (!c1) break;
        av_param *P1 = av_train_params(c1);
        int n1 = av_train_nparams(c1);
        char pre[64];
        snprintf(pre, sizeof pre, "layers.%d.", NL - 1);
        for (int i = 0; i < n1; i++) /* the last layer's B non-zero */
            if (strstr(P1[i].name, pre) && strstr(P1[i].name, "lora_B"))
                for (size_t j = 0; j < P1[i].n; j++) P1[i].data[j] = 0.01f * (float)((int)(j * 37 % 11) - 5);
        double nll1, nll2;
        int nv;
        av_train_zero_grads(c1);
        CHECK_OK(av_train_step(c1, ids, tg, B, T, 1.0f, 1, &nll1, &nv));
        /* copy of run 1's last-layer params and grads */
        size_t tot = 0;
        for (int i = 0; i < n1; i++) tot += 2 * P1[i].n;
        float *keep = malloc(tot * sizeof(float));
        size_t off = 0;
        for (int i = 0; i < n1; i++) {
            memcpy(keep + off, P1[i].data, P1[i].n * sizeof(float));
            memcpy(keep + off + P1[i].n, P1[i].grad, P1[i].n * sizeof(float));
            off += 2 * P1[i].n;
        }
        av_param names[256];
        int nn = n1 < 256 ? n1 : 256;
        memcpy(names, P1, sizeof(av_param) * (size_t)nn);
        av_train_ctx_free(c1);
        CHECK_OK(av_lora_attach_layers(m, &spec, last, 5));
        CHECK_OK(av_train_ctx_new(&c2, m, B, T, ckpt));
        if (!c2) { free(keep); break; }
        av_param *P2 = av_train_params(c2);
        int n2 = av_train_nparams(c2);
        for (int i = 0; i < n2; i++) {
            off = 0;
            for (int k = 0; k < nn; k++) {
                if (!strcmp(names[k].name, P2[i].name)) memcpy(P2[i].data, keep + off, P2[i].n * sizeof(float));
                off += 2 * names[k].n;
            }
        }
        av_train_zero_grads(c2);
        CHECK_OK(av_train_step(c2, ids, tg, B, T, 1.0f, 1, &nll2, &nv));
        CHECK(fabs(nll1 - nll2) <= 1e-5 * fabs(nll1), "%s frozen prefix (ckpt %d): loss %.7f vs %.7f", name, ckpt, nll2, nll1);
        double worst = 0;
        for (int i = 0; i < n2; i++) {
            off = 0;
            for (int k = 0; k < nn; k++) {
                if (!strcmp(names[k].name, P2[i].name)) {
                    const float *g1 = keep + off + names[k].n;
                    double num = 0, den = 0;
                    for (size_t j = 0; j < P2[i].n; j++) {
                        num += ((double)P2[i].grad[j] - g1[j]) * ((double)P2[i].grad[j] - g1[j]);
                        den += (double)g1[j] * g1[j];
                    }
                    double rel = sqrt(num / (den > 0 ? den : 1));
                    if (rel > worst) worst = rel;
                    CHECK(rel <= 1e-5, "%s frozen prefix (ckpt %d): '%s' rel err %.3g", name, ckpt, P2[i].name, rel);
                }
                off += 2 * names[k].n;
            }
        }
        printf("%s: adapters on the last layer only (grad_checkpoint %d): %d params, max grad rel err %.3g\n", name, ckpt, n2, worst);
        free(keep);
        av_train_ctx_free(c2);
        av_lora_detach(m);
    }
    av_model_free(m);
}

static void check_keys(void) {
    unsigned k;
    CHECK_OK(av_lora_parse_keys("q_proj,v_proj", &k));
    CHECK(k == ((1u << AV_PROJ_Q) | (1u << AV_PROJ_V)), "mask %x", k);
    CHECK_OK(av_lora_parse_keys("self_attn.k_proj, mlp.down_proj", &k));
    CHECK(k == ((1u << AV_PROJ_K) | (1u << AV_PROJ_DOWN)), "mask %x", k);
    CHECK_OK(av_lora_parse_keys("all-linear", &k));
    CHECK(k == (1u << AV_PROJ_COUNT) - 1, "mask %x", k);
    CHECK(av_lora_parse_keys("mlp.q_proj", &k) == AV_ERR_ARG, "wrong module accepted");
    CHECK(av_lora_parse_keys("x_proj", &k) == AV_ERR_ARG && strstr(av_last_error(), "x_proj"), "%s", av_last_error());
}

int main(void) {
    check_keys();
    check_model("tiny-llama");
    check_model("tiny-llama-tied");
    check_frozen_prefix("tiny-llama");
    return TEST_SUMMARY();
}
