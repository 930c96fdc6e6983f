/* anvil bench suites finetune and finetune-enhanced (and comprehensive's 3-epoch run): LoRA on the
 * quotes data with the seed's setup through the library's training API. In-process rather than a
 * `/proc/self/exe lora` child: the suite already runs in its own process (its peak memory is the
 * run's), and the API gives the attention choice (av_train_set_flash), every event for the loss
 * curves and the live monitor line without parsing report text. */
#include "bench.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    av_tokenizer *tok;
    av_chat_config chat;
} glue;

static av_status g_encode(void *ctx, const char *s, size_t n, int add_special, int32_t **ids, int *cnt) {
    return av_tokenizer_encode(((glue *)ctx)->tok, s, n, add_special, ids, cnt);
}
static av_status g_render(void *ctx, const cJSON *msgs, int gen, char **out) {
    const av_chat_config *c = &((glue *)ctx)->chat;
    return av_chat_render(c->template_src, c->where, msgs, gen, c->bos, c->eos, NULL, out);
}

typedef struct {
    bench_ctx *b;
    const bench_lora_cfg *c;
    av_model *m;
    cJSON *train_curve, *val_curve;
    double val_secs, last_tps_window, peak_gb;
    long long tokens;
    int n_best, last_iter;
    char best_path[4200];
} run_state;

static void on_event(void *ctx, const av_train_event *e) {
    run_state *r = ctx;
    switch (e->kind) {
    case AV_TEV_PROGRESS:
        r->last_iter = e->iter;
        if (r->c->monitor && (e->iter == 1 || e->iter % 5 == 0 || e->iter == e->iters)) {
            char el[32], eta[32];
            bench_log(r->b, "monitor: iter %d/%d, %s elapsed, ETA %s, trained tokens %lld, peak %.3f GB", e->iter, e->iters,
                      bench_fmt_time(el, sizeof el, e->elapsed), bench_fmt_time(eta, sizeof eta, e->eta), r->tokens,
                      (double)av_train_peak_bytes(av_model_backend(r->m)) / 1e9);
            if (isatty(2)) /* one live line on a terminal, else a line every 5 iterations */
                fprintf(stderr, "\r[bench] %s monitor: iter %d/%d, %s elapsed, ETA %s\033[K%s", r->b->suite, e->iter, e->iters, el, eta,
                        e->iter == e->iters ? "\n" : "");
            else
                fprintf(stderr, "[bench] %s monitor: iter %d/%d, %s elapsed, ETA %s\n", r->b->suite, e->iter, e->iters, el, eta);
            fflush(stderr);
        }
        return;
    case AV_TEV_REPORT: {
        bench_log(r->b, "Iter %d: Train loss %.3f, Learning Rate %.3e, It/sec %.3f, Tokens/sec %.3f, Trained Tokens %lld, Peak mem %.3f GB",
                  e->iter, e->train_loss, e->lr, e->it_per_sec, e->tok_per_sec, e->trained_tokens, e->peak_gb);
        cJSON *p = cJSON_CreateObject();
        cJSON_AddNumberToObject(p, "iter", e->iter);
        bench_num(p, "loss", e->train_loss);
        bench_num(p, "tokens_per_sec", e->tok_per_sec);
        bench_num(p, "it_per_sec", e->it_per_sec);
        cJSON_AddItemToArray(r->train_curve, p);
        r->tokens = e->trained_tokens;
        r->peak_gb = e->peak_gb;
        return;
    }
    case AV_TEV_EVAL: {
        bench_log(r->b, "Iter %d: Val loss %.3f, Val took %.3fs", e->iter, e->val_loss, e->val_secs);
        cJSON *p = cJSON_CreateObject();
        cJSON_AddNumberToObject(p, "iter", e->iter);
        bench_num(p, "loss", e->val_loss);
        cJSON_AddItemToArray(r->val_curve, p);
        r->val_secs += e->val_secs;
        return;
    }
    case AV_TEV_BEST:
        r->n_best++;
        snprintf(r->best_path, sizeof r->best_path, "%s", e->path ? e->path : "");
        bench_log(r->b, "Iter %d: New best val loss %.3f, saved to %s.", e->iter, e->val_loss, e->path ? e->path : "?");
        return;
    default: return;
    }
}

static av_status save_adapter(void *ctx, const char *tag, char *path, size_t cap) {
    run_state *r = ctx;
    char name[64];
    snprintf(name, sizeof name, "%s%sadapters.safetensors", tag ? tag : "", tag ? "_" : "");
    av_path_join(path, cap, r->b->work, name);
    return av_adapter_save_weights(r->m, path, 0);
}

static double first_last(const cJSON *curve, int last) {
    int n = cJSON_GetArraySize(curve);
    const cJSON *p = n ? cJSON_GetArrayItem(curve, last ? n - 1 : 0) : NULL;
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(p, "loss");
    return cJSON_IsNumber(l) ? l->valuedouble : NAN;
}

static int load_split(bench_ctx *b, cJSON *res, const char *name, const av_ds_opts *o, int max_len, av_dataset *d) {
    char p[4200];
    av_path_join(p, sizeof p, b->data, name);
    if (av_dataset_load(d, p, o) != AV_OK) return bench_fail_lib(b, res, "loading the data");
    av_dataset_truncate(d, max_len);
    return 0;
}

/* The first n lines of train.jsonl and n/2 (at least batch-size rows: the caller picks n) of valid.jsonl into dir. */
static int subset_data(bench_ctx *b, cJSON *res, const char *dir, int n) {
    const char *names[] = {"train.jsonl", "valid.jsonl"};
    if (av_mkdir_p(dir) != AV_OK) return bench_fail_lib(b, res, "subset of the data");
    for (int i = 0; i < 2; i++) {
        char src[4200], dst[4200], *txt;
        size_t len;
        if (av_file_read(av_path_join(src, sizeof src, b->data, names[i]), &txt, &len) != AV_OK) return bench_fail_lib(b, res, "reading the data");
        int want = i ? (n + 1) / 2 : n, lines = 0;
        size_t k = 0;
        while (k < len && lines < want) if (txt[k++] == '\n') lines++;
        av_status st = av_write_file_atomic(av_path_join(dst, sizeof dst, dir, names[i]), txt, k);
        free(txt);
        if (st != AV_OK) return bench_fail_lib(b, res, "writing the data subset");
    }
    return 0;
}

int bench_lora_run(bench_ctx *b, cJSON *res, const bench_lora_cfg *c) {
    glue g = {0};
    av_model *m = NULL;
    av_dataset dtr = {0}, dva = {0};
    av_batcher btr = {0}, bva = {0};
    av_train_ctx *tc = NULL;
    av_trainer *tr = NULL;
    char sub[4200] = "";
    run_state rs = {.b = b, .c = c, .train_curve = cJSON_CreateArray(), .val_curve = cJSON_CreateArray()};
    int rc = 1;
    double tl = av_now();
    if (bench_load(b, res, &m, &g.tok)) goto done;
    double load_s = av_now() - tl;
    rs.m = m;
    if (av_chat_config_load(&g.chat, b->model) != AV_OK) { bench_fail_lib(b, res, "chat template"); goto done; }
    av_ds_opts dso = {.encode = g_encode, .render = g.chat.template_src ? g_render : NULL, .ctx = &g,
                      .eos_id = av_tokenizer_eos_id(g.tok)};
    bench_ctx bd = *b;
    if (c->subset > 0) {
        snprintf(sub, sizeof sub, "%s/data", b->work);
        if (subset_data(b, res, sub, c->subset)) goto done;
        bd.data = sub;
    }
    if (load_split(&bd, res, "train.jsonl", &dso, c->max_len, &dtr) || load_split(&bd, res, "valid.jsonl", &dso, c->max_len, &dva)) goto done;
    if (av_batcher_init(&btr, &dtr, c->batch, 0) != AV_OK || av_batcher_init(&bva, &dva, c->batch, 0) != AV_OK) {
        bench_fail_lib(b, res, "batching the data");
        goto done;
    }
    int iters = c->epochs > 0 ? c->epochs * btr.nb : c->iters;
    av_lora_spec spec;
    av_lora_spec_default(&spec);
    spec.rank = c->rank;
    spec.alpha = (float)c->alpha;
    spec.scale = spec.alpha / (float)spec.rank;
    int L = av_model_config(m)->n_layers;
    spec.num_layers = c->layers < L ? c->layers : L;
    if (av_lora_parse_keys("q_proj,v_proj", &spec.keys) != AV_OK || av_lora_attach(m, &spec, 0) != AV_OK) {
        bench_fail_lib(b, res, "attaching adapters");
        goto done;
    }
    int max_len = av_dataset_max_len(&dtr) > av_dataset_max_len(&dva) ? av_dataset_max_len(&dtr) : av_dataset_max_len(&dva);
    if (av_train_ctx_new(&tc, m, c->batch, max_len - 1, 0) != AV_OK) { bench_fail_lib(b, res, "training buffers"); goto done; }
    const char *attn = c->flash == 1 ? "flash" : c->flash == 0 ? "standard" : "default";
    char attn_note[512] = "";
    if (c->flash >= 0 && av_train_set_flash(tc, c->flash) != AV_OK) {
        if (c->flash != 1) { bench_fail_lib(b, res, "standard attention"); goto done; }
        /* no flash training on this backend yet: measure the standard path and say so */
        snprintf(attn_note, sizeof attn_note, "%s", av_last_error());
        bench_log(b, "flash attention unavailable (%s): training with standard attention", attn_note);
        fprintf(stderr, "[bench] %s: flash attention unavailable for training here; measuring standard attention\n", b->suite);
        attn = "standard (flash unavailable for training on this backend)";
    }
    av_trainer_opts to;
    av_trainer_opts_default(&to);
    to.iters = iters;
    to.steps_per_report = iters >= 20 ? 5 : 1;
    to.steps_per_eval = c->save_best ? (iters >= 10 ? iters / 5 : 2) : iters;
    to.val_batches = c->val_batches > 0 ? c->val_batches : 5;
    to.save_every = 1 << 30;
    av_lr_constant(&to.lr, c->lr);
    to.save = save_adapter;
    to.on_event = on_event;
    to.ctx = &rs;
    if (av_trainer_new(&tr, m, tc, &to) != AV_OK) { bench_fail_lib(b, res, "trainer"); goto done; }
    long long total = av_config_param_count(av_model_config(m)), trainable = av_train_param_count(tc);
    bench_log(b, "Trainable parameters: %.3f%% (%.3fM/%.3fM)", 100.0 * (double)trainable / (double)total, trainable / 1e6, total / 1e6);
    bench_step(b, "training %d iterations (%s attention, batch %d, rank %d)", iters, attn, c->batch, c->rank);
    double t0 = av_now();
    if (av_trainer_run(tr, &btr, &bva) != AV_OK) { bench_fail_lib(b, res, "training"); goto done; }
    double wall = av_now() - t0, train_s = wall - rs.val_secs;
    cJSON *mt = cJSON_AddObjectToObject(res, "metrics");
    cJSON_AddNumberToObject(mt, "iters", iters);
    if (c->epochs > 0) cJSON_AddNumberToObject(mt, "epochs", c->epochs);
    cJSON_AddNumberToObject(mt, "batch_size", c->batch);
    cJSON_AddNumberToObject(mt, "rank", c->rank);
    bench_num(mt, "alpha", c->alpha);
    cJSON_AddNumberToObject(mt, "lora_layers", spec.num_layers);
    cJSON_AddStringToObject(mt, "attention", attn);
    if (attn_note[0]) cJSON_AddStringToObject(mt, "flash_unavailable", attn_note);
    bench_num(mt, "load_s", load_s);
    bench_num(mt, "train_s", train_s);
    bench_num(mt, "wall_s", wall);
    bench_num(mt, "val_s", rs.val_secs);
    bench_num(mt, "it_per_sec", train_s > 0 ? iters / train_s : NAN);
    bench_num(mt, "tokens_per_sec", train_s > 0 ? (double)rs.tokens / train_s : NAN);
    cJSON_AddNumberToObject(mt, "trained_tokens", (double)rs.tokens);
    bench_num(mt, "peak_gb", (double)av_train_peak_bytes(av_model_backend(m)) / 1e9);
    bench_num(mt, "train_loss_first", first_last(rs.train_curve, 0));
    bench_num(mt, "train_loss_last", first_last(rs.train_curve, 1));
    bench_num(mt, "val_loss_first", first_last(rs.val_curve, 0));
    bench_num(mt, "val_loss_last", first_last(rs.val_curve, 1));
    cJSON_AddNumberToObject(mt, "trainable_params", (double)trainable);
    cJSON_AddNumberToObject(mt, "total_params", (double)total);
    bench_num(mt, "trainable_pct", 100.0 * (double)trainable / (double)total);
    cJSON_AddNumberToObject(mt, "train_rows", dtr.n);
    cJSON_AddNumberToObject(mt, "val_batches", to.val_batches);
    cJSON_AddNumberToObject(mt, "valid_rows", dva.n);
    if (c->save_best) {
        cJSON_AddNumberToObject(mt, "best_saves", rs.n_best);
        cJSON_AddBoolToObject(mt, "best_adapter_written", rs.best_path[0] && av_file_exists(rs.best_path));
    }
    cJSON_AddItemToObject(res, "train_curve", rs.train_curve);
    cJSON_AddItemToObject(res, "val_curve", rs.val_curve);
    rs.train_curve = rs.val_curve = NULL;
    bench_log(b, "%d iterations in %.2fs (+%.2fs validation): %.3f it/s, %.1f tokens/s", iters, train_s, rs.val_secs, iters / train_s,
              (double)rs.tokens / train_s);
    rc = 0;
done:
    av_trainer_free(tr);
    if (tc) av_train_ctx_free(tc);
    av_batcher_free(&btr);
    av_batcher_free(&bva);
    av_dataset_free(&dtr);
    av_dataset_free(&dva);
    if (m) { av_lora_detach(m); av_model_free(m); }
    if (g.tok) av_tokenizer_free(g.tok);
    av_chat_config_free(&g.chat);
    cJSON_Delete(rs.train_curve);
    cJSON_Delete(rs.val_curve);
    if (c->subset > 0) av_remove_tree(sub);
    return rc;
}

static void seed_cfg(bench_ctx *b, bench_lora_cfg *c) {
    *c = (bench_lora_cfg){.iters = 50, .batch = 2, .max_len = 512, .rank = 8, .layers = 16, .alpha = 16, .lr = 1e-4};
    if (b->quick) c->iters = 10, c->val_batches = 2;
}

int bench_suite_finetune(bench_ctx *b, cJSON *res) {
    bench_lora_cfg c;
    seed_cfg(b, &c);
    c.flash = 0;
    b->nsteps = 1;
    return bench_lora_run(b, res, &c);
}

int bench_suite_finetune_enhanced(bench_ctx *b, cJSON *res) {
    bench_lora_cfg c;
    seed_cfg(b, &c);
    c.iters = b->quick ? 6 : 25;
    c.flash = 1;
    c.save_best = 1;
    c.monitor = 1;
    c.val_batches = 2; /* validation every 5 iterations: 2 batches each keeps the run short */
    b->nsteps = 1;
    return bench_lora_run(b, res, &c);
}
