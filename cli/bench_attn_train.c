/* anvil bench, attention suite: model-level training tokens/s at a few lengths with each attention
 * kind: LoRA (q/v, rank 8) on one row of exactly T tokens, 2 iterations, the second one timed (the
 * first touches the weights and buffers). A kind the backend cannot train with is recorded as such. */
#include "bench.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static av_status enc(void *ctx, const char *s, size_t n, int add_special, int32_t **ids, int *cnt) {
    return av_tokenizer_encode(ctx, s, n, add_special, ids, cnt);
}

typedef struct {
    const char *work;
    av_model *m;
    double tps;
    int iter;
} tr_state;

static void on_event(void *ctx, const av_train_event *e) {
    tr_state *t = ctx;
    if (e->kind == AV_TEV_REPORT && e->iter == 2) t->tps = e->tok_per_sec;
}

static av_status save(void *ctx, const char *tag, char *path, size_t cap) {
    tr_state *t = ctx;
    char name[64];
    snprintf(name, sizeof name, "attn_%s.safetensors", tag ? tag : "final");
    av_path_join(path, cap, t->work, name);
    return av_adapter_save_weights(t->m, path, 0);
}

/* One (kind, T) measurement appended to out; non-zero only on a failure other than "unsupported". */
static int one(bench_ctx *b, cJSON *res, av_model *m, av_tokenizer *tok, int flash, int T, cJSON *out) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "attention", flash ? "flash" : "standard");
    cJSON_AddNumberToObject(o, "T", T);
    cJSON_AddItemToArray(out, o);
    char *text = malloc((size_t)T * 4 + 1);
    for (int i = 0; i < T; i++) memcpy(text + 4 * i, " the", 4);
    text[4 * T] = 0;
    const char *texts[2] = {text, text};
    av_ds_opts dso = {.encode = enc, .ctx = tok, .eos_id = -1};
    av_dataset d = {0};
    av_batcher bt = {0};
    av_train_ctx *tc = NULL;
    av_trainer *tr = NULL;
    int rc = 0;
    av_status st = av_dataset_from_texts(&d, texts, 2, &dso);
    free(text);
    if (st != AV_OK) { rc = bench_fail_lib(b, res, "training data"); goto done; }
    av_dataset_truncate(&d, T);
    if (av_batcher_init(&bt, &d, 1, 0) != AV_OK || (st = av_train_ctx_new(&tc, m, 1, av_dataset_max_len(&d) - 1, 0)) != AV_OK) {
        if (st == AV_ERR_NOMEM) goto oom; /* a long row on a small device: a row of the table, not a failed suite */
        rc = bench_fail_lib(b, res, "training buffers");
        goto done;
    }
    if (av_train_set_flash(tc, flash) != AV_OK) {
        cJSON_AddStringToObject(o, "status", av_last_error());
        bench_log(b, "training T=%d %s: %s", T, flash ? "flash" : "standard", av_last_error());
        goto done;
    }
    /* the standard backward keeps [H, T, T] probabilities: skipped past 4 GB of them (8192 tokens), as in
     * the kernel table */
    const av_config *c = av_model_config(m);
    if (!flash && (double)c->n_heads * T * T * 4 > 4e9) {
        cJSON_AddStringToObject(o, "status", "skipped: the scores would need over 4 GB");
        bench_log(b, "training T=%d standard: skipped (scores over 4 GB)", T);
        goto done;
    }
    tr_state ts = {.work = b->work, .m = m};
    av_trainer_opts to;
    av_trainer_opts_default(&to);
    to.iters = 2;
    to.steps_per_report = 1;
    to.steps_per_eval = 1 << 30;
    to.save_every = 1 << 30;
    av_lr_constant(&to.lr, 1e-4);
    to.save = save;
    to.on_event = on_event;
    to.ctx = &ts;
    if ((st = av_trainer_new(&tr, m, tc, &to)) != AV_OK || (st = av_trainer_run(tr, &bt, NULL)) != AV_OK) {
        if (st == AV_ERR_NOMEM) goto oom;
        rc = bench_fail_lib(b, res, "training step");
        goto done;
    }
    cJSON_AddStringToObject(o, "status", "ok");
    bench_num(o, "train_tokens_per_sec", ts.tps);
    bench_log(b, "training T=%d %s: %.1f tokens/s", T, flash ? "flash" : "standard", ts.tps);
    goto done;
oom:
    cJSON_AddStringToObject(o, "status", av_last_error());
    bench_log(b, "training T=%d %s: %s", T, flash ? "flash" : "standard", av_last_error());
done:
    av_trainer_free(tr);
    if (tc) av_train_ctx_free(tc);
    av_batcher_free(&bt);
    av_dataset_free(&d);
    return rc;
}

int bench_attn_training(bench_ctx *b, cJSON *res, av_model *m, av_tokenizer *tok, const int *Ts, int nT, cJSON *out) {
    av_lora_spec spec;
    av_lora_spec_default(&spec);
    int L = av_model_config(m)->n_layers;
    spec.num_layers = L < 16 ? L : 16;
    if (av_lora_parse_keys("q_proj,v_proj", &spec.keys) != AV_OK || av_lora_attach(m, &spec, 0) != AV_OK) return bench_fail_lib(b, res, "adapters");
    int rc = 0;
    for (int i = 0; i < nT && !rc; i++) {
        bench_step(b, "model-level training at %d tokens, standard and flash", Ts[i]);
        rc = one(b, res, m, tok, 0, Ts[i], out) || one(b, res, m, tok, 1, Ts[i], out);
    }
    av_lora_detach(m);
    return rc;
}
