/* Training on the GPU: one LoRA step with the PEFT fixture adapter vs the PEFT loss and gradients
 * (f32 table rel 1e-4, bf16 1e-2), and full fine-tuning / LoRA-dropout steps on the f32 table vs the
 * same steps on the CPU. Without a GPU: "skipped: no GPU". */
#include "test_cuda.h"
#include "core/memory.h"
#include "model/llama.h"
#include "model/model.h"
#include "train/lora.h"
#include "train/train_model.h"

/* One training step with the PEFT fixture adapter on the GPU vs the PEFT gradients. */
static void check_train(const char *name, const av_backend *be, double tol) {
    char dir[4096], golden[4096], ad[4096], gp[4096];
    snprintf(dir, sizeof dir, "%s", test_fixture(name));
    snprintf(golden, sizeof golden, "%s/%s_golden.json", test_fixtures(), name);
    snprintf(ad, sizeof ad, "%s/%s-lora", test_fixtures(), name);
    snprintf(gp, sizeof gp, "%s/%s-lora_grads.safetensors", test_fixtures(), name);
    cJSON *g = NULL;
    av_model *m = NULL;
    av_st_file gf;
    CHECK_OK(av_json_load(golden, &g));
    CHECK_OK(av_model_load(&m, dir, be));
    if (!g || !m) return;
    CHECK_OK(av_adapter_load(m, ad, NULL));
    CHECK_OK(av_st_open(&gf, gp));
    const cJSON *ts = cJSON_GetObjectItem(g, "train_step");
    int32_t ids[96], tg[96];
    int B = 0, T = 0;
    for (const cJSON *row = cJSON_GetObjectItem(ts, "batch_ids")->child; row && B < 2; row = row->next, B++)
        T = read_ids(row, ids + B * 48, 48);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) tg[b * T + t] = t + 1 < T ? ids[b * T + t + 1] : -1;
    for (int ckpt = 0; ckpt < 2; ckpt++) {
        av_train_ctx *c = NULL;
        CHECK_OK(av_train_ctx_new(&c, m, B, T, ckpt));
        if (!c) break;
        av_train_zero_grads(c);
        double nll;
        int nv;
        CHECK_OK(av_train_step(c, ids, tg, B, T, 1.0f / (float)(B * (T - 1)), 1, &nll, &nv));
        double loss = nll / nv, gold = cJSON_GetObjectItem(ts, "loss")->valuedouble;
        CHECK(fabs(loss - gold) <= tol * fabs(gold), "%s train on %s (ckpt %d): loss %.7f vs %.7f", name, be->name, ckpt, loss, gold);
        av_param *P = av_train_params(c);
        double worst = 0;
        for (int i = 0; i < av_train_nparams(c); i++) {
            const av_st_tensor *t = av_st_find(&gf, P[i].name);
            if (!t || av_st_numel(t) != (int64_t)P[i].n) { CHECK(0, "reference gradient %s", P[i].name); continue; }
            float *h = down(be, P[i].grad, P[i].n);
            double e = test_rel_l2(h, t->data, P[i].n);
            if (e > worst) worst = e;
            free(h);
        }
        CHECK(worst <= tol * 10, "%s train on %s (ckpt %d): worst gradient rel L2 %.3g", name, be->name, ckpt, worst);
        printf("%s train on %s (ckpt %d): loss err %.2g, worst grad rel L2 %.3g\n", name, be->name, ckpt, fabs(loss - gold), worst);
        av_train_ctx_free(c);
    }
    av_st_close(&gf);
    av_model_free(m);
    cJSON_Delete(g);
}

/* Full fine-tuning and LoRA dropout end to end: one training step on the CUDA f32 table vs the
 * same step on the CPU (same batch, same weights, same masks): loss and every parameter gradient
 * (all weights for full FT; LoRA A/B with dropout, with and without checkpointing). */
static double cmp_params(av_train_ctx *cc, av_train_ctx *cg, const av_backend *be, const char **worst_name) {
    double worst = 0;
    *worst_name = "";
    if (av_train_nparams(cc) != av_train_nparams(cg)) return INFINITY;
    for (int i = 0; i < av_train_nparams(cc); i++) {
        av_param *a = &av_train_params(cc)[i], *b = &av_train_params(cg)[i];
        if (a->n != b->n || strcmp(a->name, b->name)) return INFINITY;
        float *h = down(be, b->grad, b->n);
        double e = test_rel_l2(h, a->grad, a->n);
        if (e > worst) { worst = e; *worst_name = a->name; }
        free(h);
    }
    return worst;
}

static void check_full_and_dropout(const char *name, const av_backend *be, double tol) {
    enum { B = 2, T = 12 };
    int32_t ids[B * T], tg[B * T];
    av_model *mc = NULL, *mg = NULL;
    CHECK_OK(av_model_load(&mc, test_fixture(name), C));
    CHECK_OK(av_model_load(&mg, test_fixture(name), be));
    if (!mc || !mg) { av_model_free(mc); av_model_free(mg); return; }
    int V = mc->cfg.vocab_size;
    for (int i = 0; i < B * T; i++) ids[i] = 3 + (int32_t)((i * 7919u + 13u) % (unsigned)(V - 3));
    ids[5] = ids[2]; /* a repeated id: the embedding gradient scatter-adds */
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) tg[b * T + t] = t + 1 < T ? ids[b * T + t + 1] : -1;
    tg[3] = -1;
    const char *wn;
    for (int ckpt = 0; ckpt < 2; ckpt++) { /* full fine-tuning */
        av_train_ctx *cc = NULL, *cg = NULL;
        CHECK_OK(av_train_ctx_new_full(&cc, mc, B, T, ckpt));
        CHECK_OK(av_train_ctx_new_full(&cg, mg, B, T, ckpt));
        if (cc && cg) {
            double lc, lg;
            int nc, ng;
            av_train_zero_grads(cc);
            av_train_zero_grads(cg);
            CHECK_OK(av_train_step(cc, ids, tg, B, T, 1.0f / 20, 1, &lc, &nc));
            CHECK_OK(av_train_step(cg, ids, tg, B, T, 1.0f / 20, 1, &lg, &ng));
            CHECK(nc == ng && fabs(lc - lg) <= tol * fabs(lc), "%s full FT on %s (ckpt %d): loss %.8f vs CPU %.8f", name, be->name, ckpt, lg, lc);
            double w = cmp_params(cc, cg, be, &wn);
            CHECK(w <= tol * 10, "%s full FT on %s (ckpt %d): worst gradient rel L2 %.3g (%s)", name, be->name, ckpt, w, wn);
            printf("%s full FT on %s (ckpt %d, %lld params): loss err %.2g, worst grad rel L2 %.3g (%s)\n", name, be->name, ckpt,
                   av_train_param_count(cg), fabs(lc - lg), w, wn);
        }
        av_train_ctx_free(cc);
        av_train_ctx_free(cg);
    }
    /* LoRA with dropout: the same adapter values on both sides (non-zero B so every path counts) */
    av_lora_spec spec;
    av_lora_spec_default(&spec);
    spec.rank = 4;
    spec.num_layers = -1;
    spec.keys = (1u << AV_PROJ_COUNT) - 1;
    CHECK_OK(av_lora_attach(mc, &spec, 3));
    CHECK_OK(av_lora_attach(mg, &spec, 3));
    for (int l = 0; l < mc->cfg.n_layers; l++)
        for (int p = 0; p < AV_PROJ_COUNT; p++) {
            av_linear *Lc = av_layer_proj(&mc->layers[l], (av_proj)p), *Lg = av_layer_proj(&mg->layers[l], (av_proj)p);
            size_t na = (size_t)Lc->rank * Lc->w.cols, nb = (size_t)Lc->w.rows * Lc->rank;
            float *a = test_rnd(na, 0.1f), *b = test_rnd(nb, 0.1f);
            memcpy(Lc->lora_a, a, na * 4);
            memcpy(Lc->lora_b, b, nb * 4);
            be->upload(Lg->lora_a, a, na * 4);
            be->upload(Lg->lora_b, b, nb * 4);
            free(a);
            free(b);
        }
    for (int ckpt = 0; ckpt < 2; ckpt++) {
        av_train_ctx *cc = NULL, *cg = NULL;
        CHECK_OK(av_train_ctx_new(&cc, mc, B, T, ckpt));
        CHECK_OK(av_train_ctx_new(&cg, mg, B, T, ckpt));
        if (cc && cg) {
            CHECK_OK(av_train_set_dropout(cc, 0.25f, 11));
            CHECK_OK(av_train_set_dropout(cg, 0.25f, 11));
            av_train_set_dropout_step(cc, 5);
            av_train_set_dropout_step(cg, 5);
            double lc, lg, l0;
            int nc, ng;
            av_train_zero_grads(cc);
            av_train_zero_grads(cg);
            CHECK_OK(av_train_step(cc, ids, tg, B, T, 1.0f / 20, 1, &lc, &nc));
            CHECK_OK(av_train_step(cg, ids, tg, B, T, 1.0f / 20, 1, &lg, &ng));
            CHECK_OK(av_train_step(cg, ids, tg, B, T, 1.0f / 20, 0, &l0, &ng)); /* evaluation: no dropout */
            CHECK(fabs(lg - l0) > 1e-4 * fabs(l0), "%s dropout on %s: training loss %.8f equals the evaluation loss", name, be->name, lg);
            CHECK(fabs(lc - lg) <= tol * fabs(lc), "%s LoRA dropout on %s (ckpt %d): loss %.8f vs CPU %.8f", name, be->name, ckpt, lg, lc);
            double w = cmp_params(cc, cg, be, &wn);
            CHECK(w <= tol * 10, "%s LoRA dropout on %s (ckpt %d): worst gradient rel L2 %.3g (%s)", name, be->name, ckpt, w, wn);
            printf("%s LoRA dropout 0.25 on %s (ckpt %d): loss err %.2g, worst grad rel L2 %.3g (%s)\n", name, be->name, ckpt,
                   fabs(lc - lg), w, wn);
        }
        av_train_ctx_free(cc);
        av_train_ctx_free(cg);
    }
    av_model_free(mc);
    av_model_free(mg);
}

int main(void) {
    test_rng_state = 12345;
    if (!test_cuda_init()) {
        SKIP("no GPU");
        return TEST_SUMMARY();
    }
    const char *models[] = {"tiny-llama", "tiny-llama-tied"};
    for (int i = 0; i < 2; i++) {
        check_train(models[i], G32, 1e-4);
        check_train(models[i], G, 1e-2);
        check_full_and_dropout(models[i], G32, 1e-4);
    }
    CHECK_OK(av_cuda_status());
    printf("peak GPU memory %.1f MiB\n", G->peak_bytes() / 1048576.0);
    return TEST_SUMMARY();
}
