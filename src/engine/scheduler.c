/* Continuous batching: the engine thread's loop (admit queued requests into free slots, end
 * cancelled and timed-out ones, prefill one chunk of one prompt, then one decode step for every
 * decoding slot) and the thread-safe calls clients use (submit, poll, cancel, release, stats). */
#include "engine/sched_internal.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void av_sched_opts_default(av_sched_opts *o) {
    memset(o, 0, sizeof *o);
    o->n_slots = 4;
    o->ctx = 4096;
    o->chunk = 256;
    o->max_queue = 64;
    o->cache_bytes = (size_t)256 << 20;
}

int av_sched_ctx(const av_sched *s) { return s->o.ctx; }

/* ---------------------------------------------------------------- engine */

/* Before request r overwrites slot i past its `common` reusable tokens: the slot's old prefix is
 * saved, and a saved prefix sharing more with r's prompt is copied in. Returns the tokens reused. */
static int use_store(av_sched *s, int i, av_sched_req *r, int common) {
    av_slot *sl = &s->slots[i];
    if (!s->store.limit) return common;
    if (sl->n_kv - common >= AV_PREFIX_MIN && av_prefix_store_put(&s->store, s->b, i, sl->tok, sl->n_kv) != AV_OK) av_clear_error();
    int sc, k = av_prefix_store_match(&s->store, r->prompt, r->n_prompt, &sc);
    if (k < 0 || sc <= common) return common;
    if (av_prefix_store_restore(&s->store, k, s->b, i, sc) != AV_OK) {
        av_clear_error();
        sl->n_kv = 0; /* the region's rows are unknown now */
        return 0;
    }
    return sc;
}

/* Under s->mu: queued requests into free slots; cancelled / timed-out ones out. */
static void admit(av_sched *s) {
    double now = av_now();
    av_sched_req **pp = &s->qhead, *prev = NULL;
    while (*pp) {
        av_sched_req *r = *pp;
        const char *why = atomic_load(&r->cancel) || s->stopping ? "cancelled" : r->deadline > 0 && now > r->deadline ? "timeout" : NULL;
        int slot = -1, common = 0;
        if (!why) {
            slot = av_sched_pick_slot(s, r->prompt, r->n_prompt, &common);
            if (slot < 0) break; /* first come, first served */
        }
        *pp = r->next;
        if (s->qtail == r) s->qtail = prev;
        s->st.queued--;
        r->next = NULL;
        if (why) {
            s->st.finished++;
            if (!strcmp(why, "cancelled")) s->st.cancelled++;
            else s->st.timed_out++;
            av_sched_req_end(r, why, NULL);
            av_sched_req_unref(r);
            continue;
        }
        common = use_store(s, slot, r, common);
        if (av_sched_admit(s, slot, r, common) != AV_OK) {
            s->st.finished++;
            s->st.failed++;
            av_sched_req_end(r, "error", av_last_error());
            av_sched_req_unref(r);
        }
    }
}

/* Slots whose request was cancelled or ran out of time. Not under s->mu. */
static void reap(av_sched *s, int stopping) {
    double now = av_now();
    for (int i = 0; i < s->o.n_slots; i++) {
        av_slot *sl = &s->slots[i];
        if (sl->state == AV_SLOT_FREE) continue;
        av_sched_req *r = sl->req;
        if (atomic_load(&r->cancel) || stopping) av_sched_finish(s, i, "cancelled", NULL);
        else if (r->deadline > 0 && now > r->deadline) av_sched_finish(s, i, "timeout", NULL);
    }
}

/* One chunk of the earliest-admitted prompt still prefilling; its first token when it completes. */
static void prefill_step(av_sched *s) {
    int i = -1;
    for (int k = 0; k < s->o.n_slots; k++)
        if (s->slots[k].state == AV_SLOT_PREFILL && (i < 0 || s->slots[k].admitted < s->slots[i].admitted)) i = k;
    if (i < 0) return;
    av_slot *sl = &s->slots[i];
    int n = sl->req->n_prompt, T = n - sl->n_done < s->o.chunk ? n - sl->n_done : s->o.chunk, last = sl->n_done + T == n;
    av_status st = av_batch_session_prefill_at(s->b, i, sl->tok + sl->n_done, T, sl->n_done, last ? s->logits : NULL);
    pthread_mutex_lock(&s->mu);
    s->st.prefill_chunks++;
    pthread_mutex_unlock(&s->mu);
    if (st == AV_OK) {
        sl->n_done += T;
        sl->n_kv = sl->n_done;
        if (last) st = av_sched_take_token(s, i, s->logits);
    }
    if (st != AV_OK) av_sched_finish(s, i, "error", av_last_error());
}

/* One token for every decoding slot: taken on the device when every one of them is greedy (no
 * logits to the host), else sampled here from the step's logits. */
static void decode_step(av_sched *s) {
    int n = 0, greedy = s->can_greedy, V = s->m->cfg.vocab_size;
    for (int i = 0; i < s->o.n_slots; i++) {
        av_slot *sl = &s->slots[i];
        int on = sl->state == AV_SLOT_DECODE;
        s->ids[i] = on ? sl->next : 0;
        s->pos[i] = on ? sl->n_kv : -1;
        n += on;
        if (on && greedy) greedy = av_sched_slot_greedy(s, i);
    }
    if (!n) return;
    double t0 = av_now();
    av_status st = greedy ? av_batch_session_step_greedy(s->b, s->ids, s->pos, s->greedy_ids)
                          : av_batch_session_step_logits(s->b, s->ids, s->pos, s->logits);
    double t1 = av_now();
    pthread_mutex_lock(&s->mu);
    s->st.t_step += t1 - t0;
    s->st.steps++;
    s->st.step_rows += n;
    s->st.last_batch = n;
    pthread_mutex_unlock(&s->mu);
    for (int i = 0, k = 0; i < s->o.n_slots; i++) {
        if (s->pos[i] < 0) continue;
        av_slot *sl = &s->slots[i];
        if (st == AV_OK) {
            sl->tok[sl->n_kv++] = sl->next;
            st = greedy ? av_sched_take_id(s, i, s->greedy_ids[k]) : av_sched_take_token(s, i, s->logits + (size_t)k * V);
            if (st != AV_OK) { av_sched_finish(s, i, "error", av_last_error()); st = AV_OK; }
        } else {
            av_sched_finish(s, i, "error", av_last_error());
        }
        k++;
    }
    t0 = av_now();
    pthread_mutex_lock(&s->mu);
    s->st.t_sample += t0 - t1;
    pthread_mutex_unlock(&s->mu);
}

/* On a GPU, one prompt pass of each padded shape (batch.c pads passes to multiples of 64 rows) into
 * slot 0, which is still empty, before the first request: cuBLAS's first use of a shape costs 2-10 ms
 * of host time (and it is per thread: so here, on the engine's). A failure here is left to the
 * requests to meet. */
static void warm_up(av_sched *s) {
    if (s->m->be->device == AV_DEVICE_CPU || s->warmed) return;
    s->warmed = 1;
    for (int r = 64;; r += 64) {
        int T = r < s->o.chunk ? r : s->o.chunk;
        if (T > s->o.ctx - 1) T = s->o.ctx - 1;
        int32_t *warm = calloc((size_t)T, sizeof(int32_t));
        if (!warm || av_batch_session_prefill_at(s->b, 0, warm, T, 0, NULL) != AV_OK) av_clear_error();
        free(warm);
        if (T < r || T == s->o.chunk) break;
    }
}

void av_sched_run(av_sched *s) {
    warm_up(s);
    pthread_mutex_lock(&s->mu);
    for (;;) {
        double t0 = av_now();
        admit(s);
        s->st.t_admit += av_now() - t0;
        int busy = 0;
        for (int i = 0; i < s->o.n_slots; i++) busy |= s->slots[i].state != AV_SLOT_FREE;
        if (!busy && s->stopping && !s->qhead) break;
        if (!busy) {
            pthread_cond_wait(&s->wake, &s->mu);
            continue;
        }
        int stopping = s->stopping;
        pthread_mutex_unlock(&s->mu);
        reap(s, stopping);
        t0 = av_now();
        prefill_step(s);
        double t1 = av_now();
        decode_step(s);
        pthread_mutex_lock(&s->mu);
        s->st.t_prefill += t1 - t0;
        pthread_mutex_unlock(&s->mu);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
}

static void *engine_main(void *arg) {
    av_sched_run(arg);
    av_cuda_thread_release();
    return NULL;
}

/* ---------------------------------------------------------------- lifetime */

av_status av_sched_new(av_sched **out, av_model *m, const av_tokenizer *tok, const av_sched_opts *o) {
    *out = NULL;
    av_sched *s = calloc(1, sizeof *s);
    if (!s) return av_fail(AV_ERR_NOMEM, "out of memory");
    av_sched_opts_default(&s->o);
    if (o) {
        if (o->n_slots > 0) s->o.n_slots = o->n_slots;
        if (o->ctx > 0) s->o.ctx = o->ctx;
        if (o->chunk > 0) s->o.chunk = o->chunk;
        if (o->max_queue > 0) s->o.max_queue = o->max_queue;
        s->o.cache_bytes = o->cache_bytes;
        s->o.run_on_caller = o->run_on_caller;
    }
    if (s->o.ctx > m->cfg.max_position_embeddings) s->o.ctx = m->cfg.max_position_embeddings;
    if (s->o.chunk > s->o.ctx) s->o.chunk = s->o.ctx;
    if (s->o.ctx < 2) {
        int ctx = s->o.ctx;
        free(s);
        return av_fail(AV_ERR_ARG, "scheduler: a %d-token context is too small", ctx);
    }
    s->m = m;
    s->tok = tok;
    s->store.limit = s->o.cache_bytes;
    s->store.be = m->be;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    int N = s->o.n_slots, V = m->cfg.vocab_size;
    av_status st = av_batch_session_new(&s->b, m, N, s->o.ctx, s->o.chunk);
    s->slots = calloc((size_t)N, sizeof *s->slots);
    /* pinned where the backend has it: a step's logits download is a direct DMA, not staged */
    void *dev_view = NULL;
    if (m->be->host_alloc && m->be->host_free) s->logits = m->be->host_alloc(sizeof(float) * (size_t)N * V, &dev_view);
    s->logits_pinned = s->logits != NULL;
    if (!s->logits) s->logits = malloc(sizeof(float) * (size_t)N * V);
    s->lp_tmp = malloc(sizeof(float) * (size_t)V);
    s->ids = malloc(sizeof(int32_t) * 3 * (size_t)N);
    if (st == AV_OK && (!s->slots || !s->logits || !s->lp_tmp || !s->ids)) st = av_fail(AV_ERR_NOMEM, "out of memory");
    for (int i = 0; st == AV_OK && i < N; i++)
        if (!(s->slots[i].tok = malloc(sizeof(int32_t) * (size_t)s->o.ctx))) st = av_fail(AV_ERR_NOMEM, "out of memory");
    if (st == AV_OK) {
        s->pos = s->ids + N;
        s->greedy_ids = s->ids + 2 * (size_t)N;
        s->can_greedy = av_batch_session_can_greedy(s->b);
        s->st.slots = N;
        s->st.ctx = s->o.ctx;
        s->st.kv_bytes = av_batch_session_bytes(s->b);
        if (!s->o.run_on_caller) {
            if (pthread_create(&s->thread, NULL, engine_main, s) != 0) st = av_fail(AV_ERR_NOMEM, "scheduler: cannot start the engine thread");
            else s->thread_on = 1;
        }
    }
    if (st != AV_OK) {
        av_sched_free(s);
        return st;
    }
    *out = s;
    return AV_OK;
}

void av_sched_drain(av_sched *s, int cancel) {
    pthread_mutex_lock(&s->mu);
    s->refuse = 1;
    if (cancel) s->stopping = 1;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
}

void av_sched_free(av_sched *s) {
    if (!s) return;
    if (s->thread_on) {
        av_sched_drain(s, 1);
        pthread_join(s->thread, NULL);
    } else if (s->slots && s->ids) { /* run_on_caller: end what is left here */
        av_sched_drain(s, 1);
        av_sched_run(s);
    }
    for (int i = 0; s->slots && i < s->o.n_slots; i++) free(s->slots[i].tok);
    free(s->slots);
    if (s->logits_pinned) s->m->be->host_free(s->logits);
    else free(s->logits);
    free(s->lp_tmp);
    free(s->ids);
    av_prefix_store_free(&s->store);
    av_batch_session_free(s->b);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->wake);
    free(s);
}

/* ---------------------------------------------------------------- clients */

av_status av_sched_submit(av_sched *s, const int32_t *prompt, int n, const av_sched_params *p, av_sched_req **out) {
    *out = NULL;
    int V = s->m->cfg.vocab_size;
    if (n < 1) return av_fail(AV_ERR_ARG, "empty prompt");
    if (n >= s->o.ctx) return av_fail(AV_ERR_ARG, "prompt of %d tokens does not fit the %d-token context", n, s->o.ctx);
    if (p->max_tokens < 1) return av_fail(AV_ERR_ARG, "max_tokens must be at least 1");
    if (p->n_stops < 0 || p->n_stops > AV_MAX_STOPS) return av_fail(AV_ERR_ARG, "at most %d stop strings", AV_MAX_STOPS);
    if (p->top_logprobs < 0 || p->top_logprobs > AV_MAX_TOP_LOGPROBS)
        return av_fail(AV_ERR_ARG, "top_logprobs must be within [0, %d]", AV_MAX_TOP_LOGPROBS);
    for (int t = 0; t < n; t++)
        if (prompt[t] < 0 || prompt[t] >= V) return av_fail(AV_ERR_ARG, "token id %d out of range [0, %d)", prompt[t], V);
    for (int k = 0; k < p->n_bias; k++)
        if (p->bias_ids[k] < 0 || p->bias_ids[k] >= V) return av_fail(AV_ERR_ARG, "logit_bias: token id %d out of range [0, %d)", p->bias_ids[k], V);
    av_sched_req *r = calloc(1, sizeof *r);
    if (!r) return av_fail(AV_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->refs = 2;
    r->s = s;
    r->p = *p;
    r->p.bias_ids = NULL;
    r->p.bias = NULL;
    r->n_prompt = n;
    r->prompt = malloc(sizeof(int32_t) * (size_t)n);
    int ok = r->prompt != NULL;
    if (ok) memcpy(r->prompt, prompt, sizeof(int32_t) * (size_t)n);
    for (int k = 0; ok && k < p->n_stops; k++) {
        ok = (r->stop_buf[k] = strdup(p->stops[k])) != NULL;
        r->p.stops[k] = r->stop_buf[k];
    }
    if (ok && p->n_bias > 0) {
        r->bias_ids = malloc(sizeof(int32_t) * (size_t)p->n_bias);
        r->bias = malloc(sizeof(float) * (size_t)p->n_bias);
        ok = r->bias_ids && r->bias;
        if (ok) {
            memcpy(r->bias_ids, p->bias_ids, sizeof(int32_t) * (size_t)p->n_bias);
            memcpy(r->bias, p->bias, sizeof(float) * (size_t)p->n_bias);
        }
    }
    r->deadline = p->timeout_s > 0 ? av_now() + p->timeout_s : 0;
    if (!ok) {
        r->refs = 1;
        av_sched_req_unref(r);
        return av_fail(AV_ERR_NOMEM, "out of memory");
    }
    pthread_mutex_lock(&s->mu);
    const char *refused = s->refuse ? "the server is shutting down" : s->st.queued >= s->o.max_queue ? "too many requests waiting" : NULL;
    if (refused) {
        pthread_mutex_unlock(&s->mu);
        r->refs = 1;
        av_sched_req_unref(r);
        return av_fail(AV_ERR_UNSUPPORTED, "%s", refused);
    }
    if (s->qtail) s->qtail->next = r;
    else s->qhead = r;
    s->qtail = r;
    s->st.queued++;
    s->st.requests++;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
    *out = r;
    return AV_OK;
}

int av_sched_poll(av_sched_req *r, int timeout_ms, av_sched_update *u) {
    memset(u, 0, sizeof *u);
    pthread_mutex_lock(&r->mu);
    if (!r->out_len && !r->n_lp && !r->done && timeout_ms > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += timeout_ms / 1000;
        ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        while (!r->out_len && !r->n_lp && !r->done)
            if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) == ETIMEDOUT) break;
    }
    if (r->out_len) {
        u->text = r->out;
        u->len = r->out_len;
        r->out = NULL;
        r->out_len = r->out_cap = 0;
    }
    if (r->n_lp) {
        u->lp = r->lp;
        u->n_lp = r->n_lp;
        r->lp = NULL;
        r->n_lp = r->lp_cap = 0;
    }
    u->done = r->done;
    u->finish = r->finish;
    u->prompt_tokens = r->n_prompt;
    u->cached_tokens = r->cached;
    u->completion_tokens = r->n_gen;
    if (r->done) snprintf(u->error, sizeof u->error, "%s", r->error);
    int any = u->text || u->lp || u->done;
    pthread_mutex_unlock(&r->mu);
    return any;
}

void av_sched_update_free(av_sched_update *u) {
    free(u->text);
    free(u->lp);
    u->text = NULL;
    u->lp = NULL;
}

void av_sched_cancel(av_sched_req *r) {
    atomic_store(&r->cancel, 1);
}

void av_sched_req_release(av_sched_req *r) {
    if (!r) return;
    atomic_store(&r->cancel, 1);
    av_sched_req_unref(r);
}

void av_sched_stats_get(av_sched *s, av_sched_stats *st) {
    pthread_mutex_lock(&s->mu);
    *st = s->st;
    st->store_entries = s->store.n;
    st->store_bytes = s->store.bytes;
    st->store_limit = s->store.limit;
    st->store_saves = s->store.saves;
    st->store_hits = s->store.hits;
    st->store_evictions = s->store.evictions;
    pthread_mutex_unlock(&s->mu);
}
