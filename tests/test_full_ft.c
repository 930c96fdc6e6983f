/* Full fine-tuning on tiny-llama (and the tied-embedding variant): f32 master copies of every
 * weight as parameters (tied embeddings one parameter), the model's views pointing at them while
 * the context lives; gradients of base weights (embedding, norms, projections, LM head) vs
 * finite differences of the loss; a few AdamW steps lower the loss on a fixed batch; the saved
 * directory (adapters.safetensors + adapter_config.json, and a loadable model directory) and
 * av_train_load_weights round-trip the trained weights. */
#include "test.h"
#include "backend/backend.h"
#include "core/memory.h"
#include "core/rng.h"
#include "anvil.h"
#include "model/llama.h"
#include "model/model.h"
#include "train/lora.h"
#include "train/train_model.h"
#include <sys/stat.h>

static av_rng g_rng;
enum { B = 2, T = 10 };
static int32_t g_ids[B * T], g_tg[B * T];

static double loss_of(av_train_ctx *c, int backward) {
    double nll;
    int nv;
    if (av_train_step(c, g_ids, g_tg, B, T, 1.0f, backward, &nll, &nv) != AV_OK) return NAN;
    return nll;
}

static av_param *find_param(av_train_ctx *c, const char *name) {
    for (int i = 0; i < av_train_nparams(c); i++)
        if (!strcmp(av_train_params(c)[i].name, name)) return &av_train_params(c)[i];
    return NULL;
}

/* Sum of NLL of the batch rows through a plain inference session on m. */
static double session_loss(av_model *m) {
    av_session *s;
    double total = 0, sum;
    if (av_session_new(&s, m, 64, 16) != AV_OK) return NAN;
    for (int b = 0; b < B; b++) {
        if (av_session_nll(s, g_ids + b * T, T, &sum, NULL, NULL) != AV_OK) { total = NAN; break; }
        total += sum;
    }
    av_session_free(s);
    return total;
}

/* Directional derivative along a random +-1 direction (Richardson-combined central differences). */
static void fd_check(av_train_ctx *c, const char *model, const char *pname) {
    av_param *P = find_param(c, pname);
    CHECK(P != NULL, "%s: no parameter %s", model, pname);
    if (!P) return;
    float *u = malloc(P->n * sizeof(float)), *w0 = malloc(P->n * sizeof(float));
    memcpy(w0, P->data, P->n * sizeof(float));
    double gu = 0;
    for (size_t k = 0; k < P->n; k++) {
        u[k] = av_rng_uniform(&g_rng) < 0.5 ? -1.0f : 1.0f;
        gu += (double)P->grad[k] * u[k];
    }
    /* weights are ~0.02 (norms ~1): relative steps; the embedding/head directions touch many rows */
    double scale = strstr(pname, "norm") ? 1e-2 : 2e-3, d[2];
    for (int j = 0; j < 2; j++) {
        double h = j ? scale / 2 : scale;
        for (size_t k = 0; k < P->n; k++) P->data[k] = w0[k] + (float)h * u[k];
        double lp = loss_of(c, 0);
        for (size_t k = 0; k < P->n; k++) P->data[k] = w0[k] - (float)h * u[k];
        double lm = loss_of(c, 0);
        d[j] = (lp - lm) / (2 * h);
    }
    memcpy(P->data, w0, P->n * sizeof(float));
    double fd = (4 * d[1] - d[0]) / 3, err = fabs(fd - gu) / (fabs(fd) > 1e-1 ? fabs(fd) : 1e-1);
    CHECK(err < 1e-2, "%s: %s directional grad %.6g vs finite differences %.6g (rel %.3g)", model, pname, gu, fd, err);
    printf("%s: %-45s grad.u %12.6f  finite diff %12.6f  rel err %.2e\n", model, pname, gu, fd, err);
    free(u);
    free(w0);
}

static void t_model(const char *name) {
    av_model *m;
    CHECK_OK(av_model_load(&m, test_fixture(name), av_backend_cpu()));
    if (!m) return;
    int V = m->cfg.vocab_size, NL = m->cfg.n_layers;
    for (int i = 0; i < B * T; i++) g_ids[i] = 3 + (int32_t)av_rng_below(&g_rng, (uint64_t)(V - 3));
    g_ids[5] = g_ids[2]; /* a repeated id: the embedding gradient scatter-adds */
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) g_tg[b * T + t] = t + 1 < T ? g_ids[b * T + t + 1] : -1;
    const void *embed0 = m->embed.data, *head0 = m->lm_head.data;
    int tied = m->cfg.tie_word_embeddings;
    double base = session_loss(m);

    /* with adapters attached full fine-tuning is refused */
    av_lora_spec spec;
    av_lora_spec_default(&spec);
    spec.num_layers = 1;
    CHECK_OK(av_lora_attach(m, &spec, 1));
    av_train_ctx *c = NULL;
    CHECK(av_train_ctx_new_full(&c, m, B, T, 0) != AV_OK && !c, "%s: full FT with adapters attached accepted", name);
    av_lora_detach(m);

    CHECK_OK(av_train_ctx_new_full(&c, m, B, T, 0));
    if (!c) { av_model_free(m); return; }
    CHECK(av_train_is_full(c), "full");
    CHECK(av_train_nparams(c) == 2 + 9 * NL + !tied, "%s: %d params", name, av_train_nparams(c));
    CHECK(av_train_param_count(c) == av_config_param_count(&m->cfg), "%s: %lld trainable vs %lld in the model", name,
          av_train_param_count(c), av_config_param_count(&m->cfg));
    CHECK(m->embed.dtype == AV_F32 && m->embed.data != embed0 && (!tied || m->lm_head.data == m->embed.data), "%s: views", name);
    CHECK(av_train_set_dropout(c, 0.1f, 1) != AV_OK, "%s: dropout with full FT accepted", name);
    double l0 = loss_of(c, 0);
    CHECK(fabs(l0 - base) < 1e-4 * fabs(base), "%s: f32 master loss %.7f vs the base model %.7f", name, l0, base);

    /* gradients vs finite differences */
    av_train_zero_grads(c);
    double lb = loss_of(c, 1);
    CHECK(lb == l0, "%s: backward step loss %.9g vs %.9g", name, lb, l0);
    const char *names[] = {"model.embed_tokens.weight", "model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.q_proj.weight",
                           "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight",
                           "model.layers.1.self_attn.o_proj.weight", "model.layers.1.post_attention_layernorm.weight",
                           "model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight",
                           "model.norm.weight", "lm_head.weight"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        if (tied && !strcmp(names[i], "lm_head.weight")) {
            CHECK(find_param(c, names[i]) == NULL, "%s: tied model has a separate lm_head parameter", name);
            continue;
        }
        fd_check(c, name, names[i]);
    }
    /* one element: the largest |gradient| of q_proj */
    av_param *q = find_param(c, "model.layers.0.self_attn.q_proj.weight");
    if (q) {
        size_t best = 0;
        for (size_t k = 1; k < q->n; k++) best = fabsf(q->grad[k]) > fabsf(q->grad[best]) ? k : best;
        float w = q->data[best];
        double h = 1e-2;
        q->data[best] = w + (float)h;
        double lp = loss_of(c, 0);
        q->data[best] = w - (float)h;
        double lm = loss_of(c, 0);
        q->data[best] = w;
        double fd = (lp - lm) / (2 * h);
        CHECK(fabs(fd - q->grad[best]) < 2e-2 * fabs(fd), "%s: q_proj[%zu] grad %.6g vs finite differences %.6g", name, best, q->grad[best], fd);
    }
    /* the same gradients with gradient checkpointing */
    av_train_ctx *ck = NULL;
    size_t tot = (size_t)av_train_param_count(c);
    float *g1 = malloc(tot * sizeof(float)), *gp = g1;
    for (int i = 0; i < av_train_nparams(c); i++) memcpy(gp, av_train_params(c)[i].grad, av_train_params(c)[i].n * 4), gp += av_train_params(c)[i].n;

    /* a few AdamW steps on the fixed batch lower the loss */
    const av_backend *be = m->be;
    av_param *P = av_train_params(c);
    int np = av_train_nparams(c);
    float **mo = calloc((size_t)np, sizeof(float *)), **ve = calloc((size_t)np, sizeof(float *));
    for (int i = 0; i < np; i++) mo[i] = calloc(P[i].n, sizeof(float)), ve[i] = calloc(P[i].n, sizeof(float));
    double first = NAN, last = NAN;
    for (int step = 1; step <= 4; step++) {
        av_train_zero_grads(c);
        double nll;
        int nv;
        CHECK_OK(av_train_step(c, g_ids, g_tg, B, T, 1.0f / (float)(B * (T - 1)), 1, &nll, &nv));
        if (step == 1) first = nll / nv;
        av_optim_params op;
        av_optim_defaults(&op, AV_OPTIM_ADAMW);
        op.lr = 1e-3f, op.step = step, op.bias_correction = 1;
        for (int i = 0; i < np; i++) be->optim_step(P[i].data, P[i].grad, mo[i], ve[i], P[i].rows, P[i].cols, &op);
    }
    last = loss_of(c, 0) / (B * (T - 1));
    printf("%s: full fine-tuning, 4 AdamW steps (lr 1e-3): loss %.4f -> %.4f\n", name, first, last);
    CHECK(last < first - 0.5, "%s: loss %.4f -> %.4f", name, first, last);
    /* the model itself runs on the trained weights */
    double sl = session_loss(m), tl = loss_of(c, 0);
    CHECK(fabs(sl - tl) < 1e-4 * fabs(tl), "%s: session on the trained model %.7f vs train forward %.7f", name, sl, tl);

    /* save: adapters.safetensors + adapter_config.json + a loadable model directory */
    char dir[256], path[400];
    snprintf(dir, sizeof dir, "/tmp/anvil-fullft-%d-%s", (int)getpid(), name);
    CHECK_OK(av_train_save_model_dir(c, dir));
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    char *cfg = NULL;
    size_t len;
    CHECK(av_file_read(path, &cfg, &len) == AV_OK && strstr(cfg, "\"fine_tune_type\":\t\"full\""), "%s: %s", name, cfg ? cfg : "missing");
    free(cfg);
    CHECK_OK(av_train_save_model_dir(c, dir)); /* again: the link is replaced */
    av_model *m2 = NULL;
    CHECK_OK(av_model_load(&m2, dir, av_backend_cpu()));
    if (m2) {
        double l2 = session_loss(m2);
        CHECK(l2 == sl, "%s: reloaded model %.9g vs %.9g", name, l2, sl);
        av_model_free(m2);
    }
    /* load_weights into a fresh context on the base model reproduces the trained loss */
    av_train_ctx_free(c);
    c = NULL;
    CHECK(m->embed.data == embed0 && m->lm_head.data == head0 && m->embed.dtype != AV_F32, "%s: views not restored", name);
    CHECK(session_loss(m) == base, "%s: base model changed", name);
    CHECK_OK(av_train_ctx_new_full(&ck, m, B, T, 1));
    if (ck) {
        snprintf(path, sizeof path, "%s/adapters.safetensors", dir);
        double lbase = loss_of(ck, 0);
        CHECK_OK(av_train_load_weights(ck, path));
        double lt = loss_of(ck, 0);
        CHECK(fabs(lt - tl) < 1e-6 * fabs(tl) && lt != lbase, "%s: loaded weights loss %.9g vs trained %.9g", name, lt, tl);
        av_train_ctx_free(ck);
    }
    /* gradient checkpointing: the same first-step gradients */
    CHECK_OK(av_train_ctx_new_full(&ck, m, B, T, 1));
    if (ck) {
        av_train_zero_grads(ck);
        loss_of(ck, 1);
        double num = 0, den = 0;
        gp = g1;
        for (int i = 0; i < av_train_nparams(ck); i++) {
            const av_param *Q = &av_train_params(ck)[i];
            for (size_t k = 0; k < Q->n; k++, gp++) num += (double)(Q->grad[k] - *gp) * (Q->grad[k] - *gp), den += (double)*gp * *gp;
        }
        CHECK(sqrt(num / den) < 1e-6, "%s: checkpointed full-FT gradients differ (rel %.3g)", name, sqrt(num / den));
        av_train_ctx_free(ck);
    }
    for (int i = 0; i < np; i++) free(mo[i]), free(ve[i]);
    free(mo);
    free(ve);
    free(g1);
    const char *files[] = {"adapters.safetensors", "model.safetensors", "adapter_config.json", "config.json", "tokenizer.json",
                           "tokenizer_config.json", "chat_template.jinja", "generation_config.json", "special_tokens_map.json"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    CHECK(rmdir(dir) == 0, "%s: leftover files in %s", name, dir);
    av_model_free(m);
}

int main(void) {
    av_threads_set(1); /* tiny shapes: threads only cost time on a loaded machine */
    av_rng_seed(&g_rng, 99);
    t_model("tiny-llama");
    t_model("tiny-llama-tied");
    return TEST_SUMMARY();
}
