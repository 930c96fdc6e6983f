/* One slot of the continuous-batching scheduler: which free slot a request takes (longest cached
 * token prefix, then the lowest), per-request sampling exactly as av_generate does it (the
 * same sampler, recent-token window, (seed, position) draws, EOS and stop-string rules), logit bias,
 * log-probabilities, and handing text to the request's client. */
#include "engine/sched_internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

int av_sched_pick_slot(av_sched *s, const int32_t *prompt, int n, int *common) {
    /* Only slots below the power of two above the busy count are candidates (there is always a free
     * one): decode steps run rows up to the last busy slot, so requests are kept in the low slots
     * even when a higher one holds a longer prefix (the prefix store can hand it over). */
    int busy = 0, limit = 1;
    for (int i = 0; i < s->o.n_slots; i++) busy += s->slots[i].state != AV_SLOT_FREE;
    while (limit < busy + 1) limit *= 2;
    if (limit > s->o.n_slots) limit = s->o.n_slots;
    int best = -1, best_c = -1;
    for (int i = 0; i < limit; i++) {
        av_slot *sl = &s->slots[i];
        if (sl->state != AV_SLOT_FREE) continue;
        int c = 0, lim = n - 1 < sl->n_kv ? n - 1 : sl->n_kv; /* the last prompt token is always run: its logits */
        while (c < lim && sl->tok[c] == prompt[c]) c++;
        if (c > best_c) best = i, best_c = c; /* ties: the lowest slot */
    }
    *common = best_c < 0 ? 0 : best_c;
    return best;
}

static void req_signal(av_sched_req *r) {
    pthread_cond_broadcast(&r->cv);
}

void av_sched_req_unref(av_sched_req *r) {
    pthread_mutex_lock(&r->mu);
    int left = --r->refs;
    pthread_mutex_unlock(&r->mu);
    if (left) return;
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    for (int k = 0; k < AV_MAX_STOPS; k++) free(r->stop_buf[k]);
    free(r->prompt);
    free(r->bias_ids);
    free(r->bias);
    free(r->out);
    free(r->lp);
    free(r);
}

void av_sched_req_end(av_sched_req *r, const char *finish, const char *msg) {
    pthread_mutex_lock(&r->mu);
    r->done = 1;
    r->finish = finish;
    if (msg) snprintf(r->error, sizeof r->error, "%s", msg);
    req_signal(r);
    pthread_mutex_unlock(&r->mu);
}

static int on_text(void *ud, const char *text, size_t len) {
    av_sched_req *r = ud;
    pthread_mutex_lock(&r->mu);
    if (r->out_len + len + 1 > r->out_cap) {
        size_t nc = (r->out_len + len + 1) * 2;
        char *nb = realloc(r->out, nc);
        if (!nb) { pthread_mutex_unlock(&r->mu); return 1; } /* out of memory: stop the request */
        r->out = nb;
        r->out_cap = nc;
    }
    memcpy(r->out + r->out_len, text, len);
    r->out_len += len;
    r->out[r->out_len] = 0;
    req_signal(r);
    pthread_mutex_unlock(&r->mu);
    return atomic_load(&r->cancel) != 0;
}

av_status av_sched_admit(av_sched *s, int i, av_sched_req *r, int common) {
    av_slot *sl = &s->slots[i];
    if (av_sampler_init(&sl->smp, &r->p.sampler, s->m->cfg.vocab_size) != 0) return av_fail(AV_ERR_NOMEM, "out of memory");
    av_status st = av_stops_init(&sl->stops, s->tok, (const char *const *)r->stop_buf, r->p.n_stops, on_text, r);
    if (st != AV_OK) { av_sampler_free(&sl->smp); return st; }
    sl->stops_on = 1;
    sl->req = r;
    sl->state = AV_SLOT_PREFILL;
    memcpy(sl->tok, r->prompt, sizeof(int32_t) * (size_t)r->n_prompt);
    sl->n_kv = sl->n_done = common;
    int room = s->o.ctx - r->n_prompt;
    sl->max_new = r->p.max_tokens < room ? r->p.max_tokens : room;
    sl->admitted = s->n_admitted++;
    pthread_mutex_lock(&r->mu);
    r->cached = common;
    pthread_mutex_unlock(&r->mu);
    s->st.running++;
    s->st.prompt_tokens += r->n_prompt;
    s->st.cached_tokens += common;
    if (common > 0) s->st.cache_hits++;
    return AV_OK;
}

void av_sched_finish(av_sched *s, int i, const char *finish, const char *msg) {
    av_slot *sl = &s->slots[i];
    av_sched_req *r = sl->req;
    if (!r) return;
    int ok = !strcmp(finish, "stop") || !strcmp(finish, "length");
    if (sl->stops_on) {
        av_stops_end(&sl->stops, ok);
        av_stops_free(&sl->stops);
        sl->stops_on = 0;
    }
    av_sampler_free(&sl->smp);
    if (!strcmp(finish, "error")) sl->n_kv = 0; /* the region's contents are unknown */
    pthread_mutex_lock(&s->mu);
    sl->state = AV_SLOT_FREE;
    sl->req = NULL;
    s->st.running--;
    s->st.finished++;
    if (!strcmp(finish, "cancelled")) s->st.cancelled++;
    if (!strcmp(finish, "timeout")) s->st.timed_out++;
    if (!strcmp(finish, "error")) s->st.failed++;
    pthread_mutex_unlock(&s->mu);
    av_sched_req_end(r, finish, msg);
    av_sched_req_unref(r);
}

/* log-softmax of l into s->lp_tmp and the token's entry (with the top alternatives). */
static av_status record_logprob(av_sched *s, av_sched_req *r, const float *l, int32_t id) {
    int V = s->m->cfg.vocab_size;
    float mx = -INFINITY;
    for (int j = 0; j < V; j++) mx = l[j] > mx ? l[j] : mx;
    double sum = 0;
    for (int j = 0; j < V; j++) sum += exp((double)l[j] - mx);
    float lse = mx + (float)log(sum);
    av_token_logprob e;
    memset(&e, 0, sizeof e);
    e.id = id;
    e.logprob = l[id] - lse;
    int k = r->p.top_logprobs < V ? r->p.top_logprobs : V;
    for (int t = 0; t < k; t++) { /* selection of the k largest, highest first (ties: lowest id) */
        int bj = -1;
        for (int j = 0; j < V; j++) {
            int taken = 0;
            for (int u = 0; u < t && !taken; u++) taken = e.top_id[u] == j;
            if (!taken && (bj < 0 || l[j] > l[bj])) bj = j;
        }
        e.top_id[t] = bj;
        e.top_lp[t] = l[bj] - lse;
    }
    e.n_top = k;
    pthread_mutex_lock(&r->mu);
    if (r->n_lp == r->lp_cap) {
        int nc = r->lp_cap ? r->lp_cap * 2 : 16;
        av_token_logprob *nl = realloc(r->lp, sizeof *nl * (size_t)nc);
        if (!nl) { pthread_mutex_unlock(&r->mu); return av_fail(AV_ERR_NOMEM, "out of memory"); }
        r->lp = nl;
        r->lp_cap = nc;
    }
    r->lp[r->n_lp++] = e;
    req_signal(r);
    pthread_mutex_unlock(&r->mu);
    return AV_OK;
}

/* Whether slot i's next token is the plain argmax of its logits (no penalty, bias or log-probabilities
 * change or need them): then the step can take it on the device. */
int av_sched_slot_greedy(const av_sched *s, int i) {
    const av_sched_req *r = s->slots[i].req;
    return r && r->p.sampler.temp <= 0.0f && r->p.sampler.repetition_penalty == 1.0f && !r->p.logprobs && r->p.n_bias == 0;
}

av_status av_sched_take_token(av_sched *s, int i, float *logits) {
    av_slot *sl = &s->slots[i];
    av_sched_req *r = sl->req;
    for (int k = 0; k < r->p.n_bias; k++) logits[r->bias_ids[k]] += r->bias[k];
    /* the draw is keyed by the position of the row whose logits these are (av_generate's rule) */
    /* the sampler may change logits (penalty): log-probabilities from a copy taken first */
    if (r->p.logprobs) memcpy(s->lp_tmp, logits, sizeof(float) * (size_t)s->m->cfg.vocab_size);
    int32_t id = av_sampler_sample(&sl->smp, logits, sl->tok, sl->n_kv, sl->n_kv - 1);
    if (r->p.logprobs && !av_is_eos(s->m, s->tok, id)) AV_TRY(record_logprob(s, r, s->lp_tmp, id));
    return av_sched_take_id(s, i, id);
}

av_status av_sched_take_id(av_sched *s, int i, int32_t id) {
    av_slot *sl = &s->slots[i];
    av_sched_req *r = sl->req;
    if (av_is_eos(s->m, s->tok, id)) { av_sched_finish(s, i, "stop", NULL); return AV_OK; }
    pthread_mutex_lock(&r->mu);
    r->n_gen++;
    pthread_mutex_unlock(&r->mu);
    pthread_mutex_lock(&s->mu);
    s->st.gen_tokens++;
    pthread_mutex_unlock(&s->mu);
    int done;
    AV_TRY(av_stops_push(&sl->stops, id, &done));
    if (done == 1) { av_sched_finish(s, i, "stop", NULL); return AV_OK; }
    if (done == 2 || atomic_load(&r->cancel)) { av_sched_finish(s, i, "cancelled", NULL); return AV_OK; }
    int gen;
    pthread_mutex_lock(&r->mu);
    gen = r->n_gen;
    pthread_mutex_unlock(&r->mu);
    if (gen >= sl->max_new) { av_sched_finish(s, i, "length", NULL); return AV_OK; }
    sl->next = id;
    sl->state = AV_SLOT_DECODE;
    return AV_OK;
}
