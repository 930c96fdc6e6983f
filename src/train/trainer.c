/* Training loop: the optimizer (backend op optim_step) over the trainable parameters, gradient
 * accumulation, schedule, reports, evaluation, checkpoints, best adapter, and an exact-resume
 * state file (safetensors with p and the optimizer state m/v per parameter, the loop's counters
 * and the optimizer's name in its metadata; mid accumulation window also the gradients so far, g). */
#include "model/model.h"
#include "ops/ops.h"
#include "train/dataset.h"
#include "dist/dp.h"
#include "train/train_model.h"
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include "core/memory.h"
#include "formats/safetensors.h"

struct av_trainer {
    av_model *m;
    const av_backend *be;
    av_train_ctx *tc;
    av_trainer_opts o;
    int np;
    av_param *params;
    float **mom, **vel; /* optimizer state s1, s2 (backend memory, one per param; NULL where the optimizer has none) */
    int iter;           /* iterations done */
    long long trained_tokens;
    long long window_tokens; /* tokens of iterations since the last report (part of trained_tokens in the state) */
    double best_val;    /* INFINITY until the first evaluation after a step */
    int dumped;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void av_trainer_opts_default(av_trainer_opts *o) {
    memset(o, 0, sizeof *o);
    o->iters = 1000;
    o->grad_accum = 1;
    o->steps_per_report = 10;
    o->steps_per_eval = 200;
    o->val_batches = 25;
    o->save_every = 100;
    av_lr_constant(&o->lr, 1e-4);
    av_optim_defaults(&o->optim, AV_OPTIM_ADAM);
}

/* The ranges MLX's optimizers accept. */
static av_status check_optim(const av_optim_params *p) {
    const char *nm = av_optim_name(p->kind);
    if ((unsigned)p->kind > AV_OPTIM_ADAFACTOR) return av_fail(AV_ERR_ARG, "trainer: unknown optimizer %d", (int)p->kind);
    if (!(p->beta1 >= 0 && p->beta1 < 1) || !(p->beta2 >= 0 && p->beta2 < 1))
        return av_fail(AV_ERR_ARG, "optimizer %s: betas must be in [0, 1)", nm);
    if (!(p->eps >= 0)) return av_fail(AV_ERR_ARG, "optimizer %s: eps must be >= 0", nm);
    if (!isfinite(p->weight_decay)) return av_fail(AV_ERR_ARG, "optimizer %s: weight_decay must be finite", nm);
    if (p->kind == AV_OPTIM_SGD && p->nesterov && (p->momentum <= 0 || p->dampening != 0))
        return av_fail(AV_ERR_ARG, "optimizer sgd: nesterov momentum requires a momentum and zero dampening");
    if (p->kind == AV_OPTIM_ADAFACTOR && !(p->clip_threshold > 0))
        return av_fail(AV_ERR_ARG, "optimizer adafactor: clip_threshold must be > 0");
    return AV_OK;
}

size_t av_train_peak_bytes(const av_backend *be) {
    if (be && be->device != AV_DEVICE_CPU && be->peak_bytes) return be->peak_bytes();
    return av_mem_peak_rss();
}

char *av_trainer_state_path(const char *p, char *buf, size_t cap) {
    size_t n = strlen(p);
    const char *ext = ".safetensors";
    size_t le = strlen(ext);
    if (n > le && !strcmp(p + n - le, ext)) snprintf(buf, cap, "%.*s.state%s", (int)(n - le), p, ext);
    else if (av_dir_exists(p)) snprintf(buf, cap, "%s/adapter_model.state.safetensors", p);
    else snprintf(buf, cap, "%s.state.safetensors", p);
    return buf;
}

av_status av_trainer_new(av_trainer **out, av_model *m, av_train_ctx *tc, const av_trainer_opts *o) {
    *out = NULL;
    if (o->iters < 1) return av_fail(AV_ERR_ARG, "trainer: iters must be >= 1");
    if (o->grad_accum < 1) return av_fail(AV_ERR_ARG, "trainer: grad accumulation steps must be >= 1");
    if (o->steps_per_report < 1 || o->steps_per_eval < 1 || o->save_every < 1)
        return av_fail(AV_ERR_ARG, "trainer: report/eval/save intervals must be >= 1");
    AV_TRY(av_lr_validate(&o->lr));
    AV_TRY(check_optim(&o->optim));
    av_trainer *t = calloc(1, sizeof *t);
    if (!t) return av_fail(AV_ERR_NOMEM, "out of memory");
    t->m = m;
    t->be = m->be;
    t->tc = tc;
    t->o = *o;
    t->np = av_train_nparams(tc);
    t->params = av_train_params(tc);
    t->best_val = INFINITY;
    t->mom = calloc((size_t)t->np + 1, sizeof(float *));
    t->vel = calloc((size_t)t->np + 1, sizeof(float *));
    if (!t->mom || !t->vel) {
        av_trainer_free(t);
        return av_fail(AV_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < t->np; i++) {
        float **st[2] = {&t->mom[i], &t->vel[i]};
        for (int k = 0; k < 2; k++) {
            size_t b = av_optim_state_size(&o->optim, t->params[i].rows, t->params[i].cols, k) * sizeof(float);
            if (!b) continue;
            *st[k] = t->be->alloc(b, "optimizer state");
            if (!*st[k]) {
                av_trainer_free(t);
                return AV_ERR_NOMEM;
            }
            t->be->zero(*st[k], b);
        }
    }
    *out = t;
    return AV_OK;
}

void av_trainer_free(av_trainer *t) {
    if (!t) return;
    for (int i = 0; i < t->np; i++) {
        if (t->mom && t->mom[i]) t->be->free(t->mom[i]);
        if (t->vel && t->vel[i]) t->be->free(t->vel[i]);
    }
    free(t->mom);
    free(t->vel);
    free(t);
}

int av_trainer_iter(const av_trainer *t) { return t->iter; }
int av_trainer_dumped(const av_trainer *t) { return t->dumped; }

/* ---- state file -------------------------------------------------------------------------------- */
static av_status save_state(av_trainer *t, const char *adapter_path) {
    char path[4200];
    av_trainer_state_path(adapter_path, path, sizeof path);
    av_st_writer w;
    av_st_writer_init(&w);
    av_status st = AV_OK;
    float *host = NULL;
    size_t total = 0;
    for (int i = 0; i < t->np; i++) total += t->params[i].n;
    int mid_window = t->iter % t->o.grad_accum != 0; /* gradients accumulated so far are part of the state */
    host = malloc((mid_window ? 4 : 3) * total * sizeof(float) + 1); /* the state never exceeds the parameter's size */
    if (!host) return av_fail(AV_ERR_NOMEM, "out of memory (state)");
    size_t off = 0;
    char name[200];
    for (int i = 0; i < t->np && st == AV_OK; i++) {
        const av_param *p = &t->params[i];
        const float *src[3] = {p->data, t->mom[i], t->vel[i]};
        const char *suf[3] = {"p", "m", "v"};
        for (int k = 0; k < 3 && st == AV_OK; k++) {
            size_t n = k ? av_optim_state_size(&t->o.optim, p->rows, p->cols, k - 1) : p->n;
            if (!n) continue;
            t->be->download(host + off, src[k], n * sizeof(float));
            int64_t shape[2] = {p->rows, p->cols}, flat = (int64_t)n;
            snprintf(name, sizeof name, "%s.%s", p->name, suf[k]);
            st = n == p->n ? av_st_writer_add(&w, name, AV_F32, 2, shape, host + off) : av_st_writer_add(&w, name, AV_F32, 1, &flat, host + off);
            off += n;
        }
        if (mid_window && st == AV_OK) {
            t->be->download(host + off, p->grad, p->n * sizeof(float));
            int64_t shape[2] = {p->rows, p->cols};
            snprintf(name, sizeof name, "%s.g", p->name);
            st = av_st_writer_add(&w, name, AV_F32, 2, shape, host + off);
            off += p->n;
        }
    }
    char meta[2048];
    const av_lr_schedule *s = &t->o.lr;
    snprintf(meta, sizeof meta,
             "{\"format\":\"anvil-train-state\",\"version\":\"1\",\"iter\":\"%d\",\"trained_tokens\":\"%lld\","
             "\"best_val\":\"%.17g\",\"seed\":\"%" PRIu64 "\",\"grad_accum\":\"%d\",\"lr_name\":\"%s\",\"lr_args\":\"%.17g %.17g %.17g\","
             "\"lr_nargs\":\"%d\",\"lr_warmup\":\"%d\",\"lr_warmup_init\":\"%.17g\",\"iters\":\"%d\",\"optimizer\":\"%s\"}",
             t->iter, t->trained_tokens + t->window_tokens, isfinite(t->best_val) ? t->best_val : -1.0, t->o.seed, t->o.grad_accum,
             av_lr_kind_name(s->kind), s->args[0], s->args[1], s->args[2], s->nargs, s->warmup, s->warmup_init, t->o.iters,
             av_optim_name(t->o.optim.kind));
    if (st == AV_OK) st = av_st_writer_set_metadata(&w, meta);
    if (st == AV_OK) st = av_st_writer_write(&w, path);
    av_st_writer_free(&w);
    free(host);
    return st;
}

static const char *meta_str(const cJSON *o, const char *k, const char *path, av_status *st) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsString(v)) {
        *st = av_fail(AV_ERR_FORMAT, "%s: state metadata lacks \"%s\"", path, k);
        return "0";
    }
    return v->valuestring;
}

av_status av_trainer_load_state(av_trainer *t, const char *path) {
    av_st_file f;
    AV_TRY(av_st_open(&f, path));
    av_status st = AV_OK;
    cJSON *meta = f.metadata_json ? cJSON_Parse(f.metadata_json) : NULL;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(meta, "format");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "anvil-train-state"))
        st = av_fail(AV_ERR_FORMAT, "%s: not an anvil training state file", path);
    int iter = 0, nargs = 1, warmup = 0, ga = 1;
    long long tokens = 0;
    double best = -1, a[3] = {0, 0, 0}, winit = 0;
    uint64_t seed = 0;
    av_lr_kind kind = AV_LR_CONSTANT;
    if (st == AV_OK) {
        iter = atoi(meta_str(meta, "iter", path, &st));
        tokens = atoll(meta_str(meta, "trained_tokens", path, &st));
        best = strtod(meta_str(meta, "best_val", path, &st), NULL);
        seed = strtoull(meta_str(meta, "seed", path, &st), NULL, 10);
        ga = atoi(meta_str(meta, "grad_accum", path, &st));
        nargs = atoi(meta_str(meta, "lr_nargs", path, &st));
        warmup = atoi(meta_str(meta, "lr_warmup", path, &st));
        winit = strtod(meta_str(meta, "lr_warmup_init", path, &st), NULL);
        if (sscanf(meta_str(meta, "lr_args", path, &st), "%lf %lf %lf", &a[0], &a[1], &a[2]) != 3 && st == AV_OK)
            st = av_fail(AV_ERR_FORMAT, "%s: bad lr_args", path);
        if (st == AV_OK) st = av_lr_kind_parse(meta_str(meta, "lr_name", path, &st), &kind);
        if (st == AV_OK && (iter < 0 || ga < 1 || nargs < 1 || nargs > 3))
            st = av_fail(AV_ERR_FORMAT, "%s: bad counters in metadata", path);
        /* files from before the optimizer choice hold Adam/AdamW moments (same layout as adam) */
        const cJSON *on = cJSON_GetObjectItemCaseSensitive(meta, "optimizer");
        const char *want = av_optim_name(t->o.optim.kind);
        if (st == AV_OK && cJSON_IsString(on) && strcmp(on->valuestring, want))
            st = av_fail(AV_ERR_ARG, "%s: the state was written by optimizer %s; this run uses %s (pass --optimizer %s to resume)",
                         path, on->valuestring, want, on->valuestring);
        if (st == AV_OK && !cJSON_IsString(on) && t->o.optim.kind != AV_OPTIM_ADAM && t->o.optim.kind != AV_OPTIM_ADAMW)
            st = av_fail(AV_ERR_ARG, "%s: the state holds Adam moments; this run uses %s", path, want);
    }
    for (int i = 0; i < t->np && st == AV_OK; i++) {
        const av_param *p = &t->params[i];
        float *dst[3] = {p->data, t->mom[i], t->vel[i]};
        const char *suf[3] = {"p", "m", "v"};
        for (int k = 0; k < 3 && st == AV_OK; k++) {
            size_t n = k ? av_optim_state_size(&t->o.optim, p->rows, p->cols, k - 1) : p->n;
            if (!n) continue;
            char name[200];
            snprintf(name, sizeof name, "%s.%s", p->name, suf[k]);
            const av_st_tensor *x = av_st_find(&f, name);
            if (!x) st = av_fail(AV_ERR_FORMAT, "%s: no tensor %s (different adapter layout or optimizer settings?)", path, name);
            else if (x->dtype != AV_F32 || av_st_numel(x) != (int64_t)n)
                st = av_fail(AV_ERR_SHAPE, "%s: %s has the wrong dtype or size (expected f32 x %zu)", path, name, n);
            else t->be->upload(dst[k], x->data, n * sizeof(float));
        }
        /* gradients of a checkpoint taken inside an accumulation window (else zero) */
        char gname[200];
        snprintf(gname, sizeof gname, "%s.g", p->name);
        const av_st_tensor *g = st == AV_OK ? av_st_find(&f, gname) : NULL;
        if (g && (g->dtype != AV_F32 || av_st_numel(g) != (int64_t)p->n))
            st = av_fail(AV_ERR_SHAPE, "%s: %s has the wrong dtype or size", path, gname);
        else if (g) t->be->upload(p->grad, g->data, p->n * sizeof(float)); /* older files: none (inexact mid-window) */
    }
    if (st == AV_OK) {
        t->iter = iter;
        t->trained_tokens = tokens;
        t->best_val = best >= 0 ? best : INFINITY;
        t->o.seed = seed;
        t->o.grad_accum = ga;
        av_lr_schedule s = {.kind = kind, .nargs = nargs, .warmup = warmup, .warmup_init = winit};
        memcpy(s.args, a, sizeof a);
        st = av_lr_validate(&s);
        if (st == AV_OK) t->o.lr = s;
        else av_fail_prefix(st, "%s", path);
    }
    cJSON_Delete(meta);
    av_st_close(&f);
    return st;
}

/* ---- pieces of the loop ------------------------------------------------------------------------ */
av_status av_evaluate(av_train_ctx *tc, av_batcher *bt, int max_batches, double *loss, long long *ntok) {
    av_batch b = {0};
    double sum = 0;
    long long n = 0;
    int nb = max_batches < 0 || max_batches > bt->nb ? bt->nb : max_batches;
    av_status st = AV_OK;
    for (int k = 0; k < nb && st == AV_OK; k++) {
        st = av_batcher_get(bt, k, 0, &b);
        if (st != AV_OK || b.n_targets == 0) continue;
        double nll = 0;
        int nv = 0;
        st = av_train_step(tc, b.ids, b.targets, b.B, b.T, 0.0f, 0, &nll, &nv);
        sum += nll;
        n += nv;
    }
    av_batch_free(&b);
    *loss = n ? sum / (double)n : NAN;
    if (ntok) *ntok = n;
    return st;
}

static void emit(av_trainer *t, av_train_event *ev) {
    ev->iters = t->o.iters;
    if (t->o.on_event) t->o.on_event(t->o.ctx, ev);
}

static av_status save_tag(av_trainer *t, const char *tag, char *path, size_t cap) {
    if (!t->o.save) return av_fail(AV_ERR_ARG, "trainer: no save function");
    AV_TRY(t->o.save(t->o.ctx, tag, path, cap));
    return AV_OK;
}

/* AV_OK if every trainable value is finite (never save NaN/Inf weights over a good checkpoint). */
static av_status check_finite(av_trainer *t) {
    size_t cap = 0;
    float *host = NULL;
    av_status st = AV_OK;
    for (int i = 0; i < t->np && st == AV_OK; i++) {
        const av_param *p = &t->params[i];
        if (p->n > cap) {
            free(host);
            cap = p->n;
            if (!(host = malloc(cap * sizeof(float)))) return av_fail(AV_ERR_NOMEM, "out of memory (finite check)");
        }
        t->be->download(host, p->data, p->n * sizeof(float));
        for (size_t k = 0; k < p->n; k++)
            if (!isfinite(host[k])) {
                st = av_fail(AV_ERR_ARG, "iteration %d: %s holds a non-finite value; not saving it (lower the learning rate)", t->iter, p->name);
                break;
            }
    }
    free(host);
    return st;
}

/* Writes the adapter, then its state file (each atomically). The state holds the parameters
 * too, so a kill between the two leaves an older but self-consistent state that a resume takes. */
static av_status checkpoint(av_trainer *t, const char *tag, char *path, size_t cap) {
    if (av_comm_rank(t->o.comm) != 0) return AV_OK; /* data parallel: the ranks hold the same weights; rank 0 writes */
    AV_TRY(check_finite(t));
    AV_TRY(save_tag(t, tag, path, cap));
    return save_state(t, path);
}

static av_status evaluate_and_emit(av_trainer *t, av_batcher *valid, int iter, int track_best) {
    double t0 = now_s(), loss = 0;
    AV_TRY(t->o.comm ? av_dp_evaluate(t->o.comm, t->tc, valid, t->o.val_batches, &loss, NULL)
                     : av_evaluate(t->tc, valid, t->o.val_batches, &loss, NULL));
    av_train_event ev = {.kind = AV_TEV_EVAL, .iter = iter, .val_loss = loss, .val_secs = now_s() - t0};
    emit(t, &ev);
    if (track_best && loss < t->best_val) {
        char path[4200];
        t->best_val = loss;
        AV_TRY(checkpoint(t, "best", path, sizeof path));
        av_train_event b = {.kind = AV_TEV_BEST, .iter = iter, .val_loss = loss, .path = path};
        emit(t, &b);
    }
    return AV_OK;
}

av_status av_trainer_run(av_trainer *t, av_batcher *train, av_batcher *valid) {
    const av_trainer_opts *o = &t->o;
    const int ga = o->grad_accum;
    if (t->iter >= o->iters)
        return av_fail(AV_ERR_ARG, "the run is already at iteration %d of --iters %d (--iters counts from the start; raise it)",
                       t->iter, o->iters);
    train->seed = o->seed; /* the data order is part of the (possibly restored) state */
    av_batch b = {0};
    av_status st = AV_OK;
    double run_t0 = now_s(), train_time = 0, loss_sum = 0;
    int loss_n = 0, window_iters = 0, first_iter = t->iter + 1, skip_update = 0;
    t->window_tokens = 0;
    char path[4200] = "", path2[4200] = "";

    if (valid && t->iter == 0 && !o->dump_grads) st = evaluate_and_emit(t, valid, 0, 0);
    for (int it = t->iter + 1; it <= o->iters && st == AV_OK; it++) {
        /* one batch per iteration; batch k of the seeded stream is a function of k alone */
        st = av_batcher_get(train, (long long)(it - 1), 1, &b);
        int n_all = b.n_targets, stop = o->stop && *o->stop; /* whole-batch targets; stop agreed by every rank */
        if (st == AV_OK && o->comm) st = av_dp_shard_batch(o->comm, &b, &n_all);
        if (st != AV_OK) break;
        int pos_in_window = (it - 1) % ga; /* accumulation window position */
        double t0 = now_s();
        if (pos_in_window == 0) av_train_zero_grads(t->tc);
        double nll = 0;
        int nv = 0;
        if (b.n_targets > 0) {
            float scale = (float)(1.0 / ((double)n_all * (o->dump_grads ? 1 : ga)));
            av_train_set_dropout_step(t->tc, (uint64_t)(it - 1)); /* LoRA dropout masks follow the iteration (exact resume) */
            st = av_train_step(t->tc, b.ids, b.targets, b.B, b.T, scale, 1, &nll, &nv);
            if (st != AV_OK) break;
        }
        if (o->comm && (st = av_dp_reduce_step(o->comm, &nll, &nv, &stop)) != AV_OK) break;
        if (nv > 0 && !isfinite(nll)) { /* before any of this step reaches the weights (every rank sees the summed loss) */
            if (!o->skip_nonfinite) {
                st = av_fail(AV_ERR_ARG, "iteration %d: the training loss is %s; stopping (the last checkpoint is kept; "
                             "lower the learning rate, or pass --skip-nonfinite to skip such steps)", it, isnan(nll) ? "nan" : "inf");
                break;
            }
            av_train_event ev = {.kind = AV_TEV_SKIPPED, .iter = it, .train_loss = nll};
            emit(t, &ev);
            av_train_zero_grads(t->tc); /* the whole accumulation window is dropped */
            skip_update = 1;
            nll = 0;
            nv = 0;
        } else if (nv > 0) {
            loss_sum += nll / nv;
            loss_n++;
        }
        if (o->dump_grads) {
            t->be->sync();
            st = av_train_save_grads(t->tc, o->dump_grads);
            t->dumped = 1;
            break;
        }
        double lr = av_lr_at(&o->lr, it / ga - 1);
        if (it % ga == 0 && skip_update) skip_update = 0;
        else if (it % ga == 0) {
            if (o->comm && (st = av_dp_reduce_grads(o->comm, t->tc)) != AV_OK) break;
            av_optim_params op = o->optim;
            op.step = it / ga; /* optimizer steps so far, counting this one (1-based) */
            op.lr = (float)lr;
            for (int i = 0; i < t->np; i++) {
                av_param *p = &t->params[i];
                t->be->optim_step(p->data, p->grad, t->mom[i], t->vel[i], p->rows, p->cols, &op);
            }
        }
        t->be->sync();
        train_time += now_s() - t0;
        window_iters++;
        t->window_tokens += nv;
        t->iter = it;

        if (it % o->steps_per_report == 0 || it == o->iters) {
            t->trained_tokens += t->window_tokens;
            av_train_event ev = {.kind = AV_TEV_REPORT,
                                 .iter = it,
                                 .train_loss = loss_n ? loss_sum / loss_n : NAN,
                                 .lr = it >= ga ? av_lr_at(&o->lr, it / ga - 1) : av_lr_at(&o->lr, 0),
                                 .it_per_sec = train_time > 0 ? window_iters / train_time : 0,
                                 .tok_per_sec = train_time > 0 ? (double)t->window_tokens / train_time : 0,
                                 .trained_tokens = t->trained_tokens,
                                 .peak_gb = (double)av_train_peak_bytes(t->be) / 1e9};
            emit(t, &ev);
            loss_sum = 0;
            loss_n = 0;
            window_iters = 0;
            t->window_tokens = 0;
            train_time = 0;
        }
        if (valid && (it % o->steps_per_eval == 0 || it == o->iters)) {
            st = evaluate_and_emit(t, valid, it, 1);
            if (st != AV_OK) break;
        }
        if (it % o->save_every == 0) {
            char tag[16];
            snprintf(tag, sizeof tag, "%07d", it);
            st = checkpoint(t, tag, path2, sizeof path2);
            if (st == AV_OK) st = checkpoint(t, NULL, path, sizeof path);
            if (st != AV_OK) break;
            av_train_event ev = {.kind = AV_TEV_SAVE, .iter = it, .path = path, .path2 = path2};
            emit(t, &ev);
        }
        double el = now_s() - run_t0;
        int done = it - first_iter + 1;
        av_train_event pe = {.kind = AV_TEV_PROGRESS, .iter = it, .elapsed = el, .eta = el / done * (o->iters - it)};
        emit(t, &pe);
        if ((o->comm ? stop : o->stop && *o->stop) && it < o->iters) {
            st = checkpoint(t, NULL, path, sizeof path);
            if (st == AV_OK) {
                av_train_event ev = {.kind = AV_TEV_INTERRUPTED, .iter = it, .path = path};
                emit(t, &ev);
                st = av_fail(AV_ERR_INTERRUPTED, "interrupted at iteration %d; state saved beside %s", it, path);
            }
            break;
        }
    }
    if (st == AV_OK && !t->dumped) {
        if (t->iter % o->save_every != 0) st = checkpoint(t, NULL, path, sizeof path); /* else just written */
        if (st == AV_OK) {
            av_train_event ev = {.kind = AV_TEV_FINAL, .iter = t->iter, .path = path};
            emit(t, &ev);
        }
    }
    av_batch_free(&b);
    return st;
}
