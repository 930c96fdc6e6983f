/* Decode steps with device-resident ids/positions, captured once as a backend graph and replayed
 * per token (see decode_graph.h). The first step of a plan runs eagerly (so lazily grown backend
 * scratch exists before capture); a stale graph (scratch moved) is re-captured. */
#include "model/decode_graph.h"
#include <stdlib.h>
#include <string.h>

static void session_decode_free(av_session *s);

#define ID_RING 8 /* > the steps that can be queued */

/* Greedy sampling folded into the fused LM head (backend av_gemv_fusion.argmax): one sequence, all
 * of it active, temperature 0. */
static int folds_argmax(const av_decode_plan *p) {
    const av_model *m = p->m;
    return p->sample && p->N == 1 && !p->active && p->temperature <= 0.0f && m->be->matmul_fused_forward;
}

/* The ops of one step (no host<->device traffic, nothing position-dependent on the host side
 * unless the backend lacks attention_decode). */
static void step_ops(av_decode_plan *p) {
    av_model *m = p->m;
    const av_config *c = &m->cfg;
    const av_backend *be = m->be;
    int N = p->N, D = c->hidden_size;
    be->embedding_forward(p->x, p->ids, &m->embed, N);
    p->ws.kind = AV_ROWS_DECODE;
    p->ws.B = N;
    p->ws.T = 1;
    p->ws.pos = p->pos;
    p->ws.host_pos = p->host_pos;
    av_llama_layers_forward(m, &p->ws, p->x);
    int fold = folds_argmax(p);
    if (p->sample && be->matmul_fused_forward) {
        av_gemv_fusion f = {.in = AV_GEMV_IN_RMSNORM, .norm = &m->final_norm, .eps = c->rms_norm_eps, .out = AV_GEMV_OUT_STORE};
        if (fold) {
            f.argmax = p->ids;
            f.argmax_pos = p->pos;
            if (p->ring_dev) f.argmax_host = p->ring_dev, f.argmax_seq = p->seq_dev, f.argmax_ring = ID_RING;
        }
        be->matmul_fused_forward(p->logits, p->x, &m->lm_head, N, &f);
    } else {
        be->rmsnorm_forward(p->hidden, NULL, p->x, &m->final_norm, N, D, c->rms_norm_eps);
        if (p->sample) be->matmul_forward(p->logits, p->hidden, &m->lm_head, N);
    }
    if (p->sample && be->sample && !fold)
        be->sample(p->ids, p->logits, N, c->vocab_size, p->temperature, p->top_p, p->seed, p->pos, p->active);
}

static int graphable(const av_backend *be, const av_decode_plan *p) {
    return !p->m->no_graphs && be->graph_begin && be->attention_decode && (!p->sample || be->sample);
}

/* Host sampling for backends without a sampler op. */
#include "ops/sample.h"
static av_status host_sample(av_decode_plan *p) {
    const av_backend *be = p->m->be;
    int N = p->N, V = p->m->cfg.vocab_size;
    float *lg = malloc(sizeof(float) * (size_t)N * V);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)N * 3);
    if (!lg || !ids) { free(lg); free(ids); return av_fail(AV_ERR_NOMEM, "out of memory"); }
    int32_t *pos = ids + N, *act = ids + 2 * N;
    be->download(lg, p->logits, sizeof(float) * (size_t)N * V);
    be->download(pos, p->pos, sizeof(int32_t) * (size_t)N);
    if (p->active) be->download(act, p->active, sizeof(int32_t) * (size_t)N);
    av_sample_rows(ids, lg, N, V, p->temperature, p->top_p, p->seed, pos, p->active ? act : NULL);
    be->upload(p->ids, ids, sizeof(int32_t) * (size_t)N);
    be->upload(p->pos, pos, sizeof(int32_t) * (size_t)N);
    free(lg);
    free(ids);
    return AV_OK;
}

int av_decode_plan_queueable(const av_decode_plan *p) {
    const av_backend *be = p->m->be;
    return p->sample && be->download_begin && be->download_end && (size_t)p->N * sizeof(int32_t) <= 4096;
}

av_status av_decode_plan_step(av_decode_plan *p, int32_t *host_ids) {
    AV_TRY(av_decode_plan_submit(p));
    return av_decode_plan_collect(p, host_ids);
}

av_status av_decode_plan_collect(av_decode_plan *p, int32_t *host_ids) {
    const av_backend *be = p->m->be;
    if (!p->npend) return av_fail(AV_ERR_ARG, "decode: no step queued");
    int t = p->pend[0], slot = p->pend_slot[0];
    p->pend[0] = p->pend[1];
    p->pend_slot[0] = p->pend_slot[1];
    p->npend--;
    size_t bytes = sizeof(int32_t) * (size_t)p->N;
    if (slot >= 0) { /* the LM head wrote the id into the ring: wait for the step's marker only */
        if (t >= 0) be->download_end(t, NULL, 0);
        else be->sync();
        if (host_ids) host_ids[0] = ((volatile int32_t *)p->ring_host)[slot];
    } else if (t >= 0) {
        int32_t *tmp = host_ids ? NULL : malloc(bytes);
        if (!host_ids && !tmp) return av_fail(AV_ERR_NOMEM, "out of memory");
        be->download_end(t, host_ids ? host_ids : tmp, bytes);
        free(tmp);
    } else if (host_ids && p->sample) {
        be->download(host_ids, p->ids, bytes);
    } else {
        be->sync();
    }
    return AV_OK;
}

av_status av_decode_plan_submit(av_decode_plan *p) {
    const av_backend *be = p->m->be;
    if (p->npend == 2 || (p->npend && !av_decode_plan_queueable(p))) return av_fail(AV_ERR_ARG, "decode: too many steps queued");
    if (!p->ws.qkv && be->matmul_fused_forward && be->attention_decode) {
        const av_config *c = &p->m->cfg;
        size_t nq = (size_t)(c->n_heads + 2 * c->n_kv_heads) * c->head_dim, ng = (size_t)c->intermediate_size;
        p->ws.qkv = be->alloc(sizeof(float) * (nq + ng) * (size_t)p->N, "decode q|k|v, swiglu");
        if (!p->ws.qkv) return AV_ERR_NOMEM;
        p->ws.gu = p->ws.qkv + nq * (size_t)p->N;
    }
    if (!p->ring_tried && p->N == 1 && p->sample && be->host_alloc && be->host_free) {
        void *dev = NULL;
        p->ring_tried = 1;
        p->seq_dev = be->alloc(sizeof(unsigned), "decode id ring count");
        if (!p->seq_dev) return AV_ERR_NOMEM;
        be->zero(p->seq_dev, sizeof(unsigned));
        p->nsub = 0;
        p->ring_host = be->host_alloc(ID_RING * sizeof(int32_t), &dev);
        p->ring_dev = dev;
        if (!p->ring_host) { be->free(p->seq_dev); p->seq_dev = NULL; } /* ids by copy */
    }
    int ring = p->ring_host && folds_argmax(p);
    if (!graphable(be, p)) {
        if (!be->attention_decode) { /* the fallback path needs host positions */
            if (!p->host_pos && !(p->host_pos = malloc(sizeof(int32_t) * (size_t)p->N))) return av_fail(AV_ERR_NOMEM, "out of memory");
            be->download(p->host_pos, p->pos, sizeof(int32_t) * (size_t)p->N);
        }
        step_ops(p);
        if (p->sample && !be->sample && !folds_argmax(p)) AV_TRY(host_sample(p)); /* a folded argmax sampled already */
    } else {
        if (p->graph && (p->g_temperature != p->temperature || p->g_top_p != p->top_p || p->g_seed != p->seed)) {
            be->graph_free(p->graph);
            p->graph = NULL;
        }
        int ran = 0;
        if (p->graph) {
            int r = be->graph_launch(p->graph);
            if (r < 0) return AV_ERR_DEVICE;
            if (r == 0) ran = 1;
            else { be->graph_free(p->graph); p->graph = NULL; p->eager_done = 0; }
        }
        if (!ran && p->eager_done) {
            if (be->graph_begin() != 0) return AV_ERR_DEVICE;
            step_ops(p);
            p->graph = be->graph_end();
            if (!p->graph) return AV_ERR_DEVICE;
            p->g_temperature = p->temperature;
            p->g_top_p = p->top_p;
            p->g_seed = p->seed;
            int r = be->graph_launch(p->graph);
            if (r != 0) return r < 0 ? AV_ERR_DEVICE : av_fail(AV_ERR_DEVICE, "decode graph went stale during capture");
            ran = 1;
        }
        if (!ran) {
            step_ops(p);
            p->eager_done = 1;
        }
    }
    int t = !av_decode_plan_queueable(p) ? -1 : ring ? be->download_begin(NULL, 0) : be->download_begin(p->ids, sizeof(int32_t) * (size_t)p->N);
    if (t < 0 && p->npend) return av_fail(AV_ERR_DEVICE, "decode: could not queue the ids' copy");
    p->pend_slot[p->npend] = ring ? (int)(p->nsub++ % ID_RING) : -1;
    p->pend[p->npend++] = t;
    return AV_OK;
}

void av_decode_plan_release(av_decode_plan *p) {
    while (p->npend) av_decode_plan_collect(p, NULL);
    if (p->graph) p->m->be->graph_free(p->graph);
    p->graph = NULL;
    free(p->host_pos);
    p->host_pos = NULL;
    if (p->ws.qkv) p->m->be->free(p->ws.qkv);
    p->ws.qkv = p->ws.gu = NULL;
    if (p->ring_host) p->m->be->host_free(p->ring_host);
    if (p->seq_dev) p->m->be->free(p->seq_dev);
    p->ring_host = p->ring_dev = NULL;
    p->seq_dev = NULL;
    p->ring_tried = 0;
}

/* ---------------------------------------------------------------- av_session plans */
void av_decode_plan_for_session(av_decode_plan *p, av_session *s, int sample) {
    memset(p, 0, sizeof *p);
    p->m = s->m;
    p->N = 1;
    p->ws = s->ws; /* the session's scratch and cache; seq_stride = layer_stride (N = 1: only bounds the length) */
    p->ws.qkv = p->ws.gu = NULL;
    p->x = s->x;
    p->hidden = s->hidden;
    p->logits = s->logits;
    p->sample = sample;
}

struct av_decoder {
    av_session *s;
    av_decode_plan plan;
    int32_t *dev; /* ids[1], pos[1] */
    int32_t dev_id, dev_pos; /* what the device holds (-1 unknown) */
    /* a step queued ahead (av_decoder_next_ahead): fed with ahead_id at position ahead_pos */
    int ahead;
    int32_t ahead_id, ahead_pos;
    float ahead_t, ahead_p;
    uint64_t ahead_seed;
};

static void decoder_destroy(av_decoder *d);

/* Waits for a step queued ahead and forgets it (its input was not what the caller fed). */
static void drop_ahead(av_decoder *d) {
    if (!d->ahead) return;
    av_decode_plan_collect(&d->plan, NULL);
    d->ahead = 0;
    d->dev_id = d->dev_pos = -1; /* the step advanced the device's id and position */
}

av_status av_decoder_new(av_decoder **out, av_session *s) {
    *out = NULL;
    if (s->decoder) { /* the last decoder of this session, its step graph still valid (same buffers) */
        av_decoder *d = s->decoder;
        s->decoder = NULL;
        d->ahead = 0;
        d->dev_id = d->dev_pos = -1;
        *out = d;
        return AV_OK;
    }
    av_decoder *d = calloc(1, sizeof *d);
    if (!d) return av_fail(AV_ERR_NOMEM, "out of memory");
    d->s = s;
    d->dev = s->m->be->alloc(2 * sizeof(int32_t), "decoder ids");
    if (!d->dev) { free(d); return AV_ERR_NOMEM; }
    av_decode_plan_for_session(&d->plan, s, 1);
    d->plan.ids = d->dev;
    d->plan.pos = d->dev + 1;
    d->dev_id = d->dev_pos = -1;
    *out = d;
    return AV_OK;
}

/* Keeps d for the session's next av_decoder_new (capturing a step costs about a millisecond: a
 * chat turn or benchmark repeat would pay it per generation). */
void av_decoder_free(av_decoder *d) {
    if (!d) return;
    drop_ahead(d);
    if (!d->s->decoder) {
        d->s->decoder = d;
        d->s->decode_free = session_decode_free;
        return;
    }
    decoder_destroy(d);
}

static void decoder_destroy(av_decoder *d) {
    av_decode_plan_release(&d->plan);
    d->s->m->be->free(d->dev);
    free(d);
}

av_status av_decoder_next(av_decoder *d, int32_t id, float temperature, float top_p, uint64_t seed, int32_t *next) {
    return av_decoder_next_ahead(d, id, temperature, top_p, seed, next, 0);
}

av_status av_decoder_next_ahead(av_decoder *d, int32_t id, float temperature, float top_p, uint64_t seed, int32_t *next,
                                int lookahead) {
    av_session *s = d->s;
    const av_backend *be = s->m->be;
    if (!s->ring && s->n_past + 1 > s->max_seq) {
        drop_ahead(d);
        return av_fail(AV_ERR_ARG, "context full: %d cached + 1 new token exceed the %d-token limit", s->n_past, s->max_seq);
    }
    av_status hs = av_session_hist_reserve(s, s->n_past + 1);
    if (hs != AV_OK) {
        drop_ahead(d);
        return hs;
    }
    if (id < 0 || id >= s->m->cfg.vocab_size) {
        drop_ahead(d);
        return av_fail(AV_ERR_ARG, "token id %d out of range [0, %d)", id, s->m->cfg.vocab_size);
    }
    int queued = d->ahead && d->ahead_id == id && d->ahead_pos == s->n_past && d->ahead_t == temperature && d->ahead_p == top_p &&
                 d->ahead_seed == seed;
    if (!queued) drop_ahead(d);
    d->ahead = 0;
    if (!queued) {
        av_session_ring_decode_ready(s); /* a step queued ahead follows a decoded token: nothing to move */
        if (id != d->dev_id || s->n_past != d->dev_pos) {
            int32_t h[2] = {id, s->n_past};
            be->upload(d->dev, h, sizeof h);
        }
        d->plan.temperature = temperature;
        d->plan.top_p = top_p;
        d->plan.seed = seed;
        AV_TRY(av_decode_plan_submit(&d->plan));
    }
    /* the following step reads the id this one samples and the position it advances, on the device */
    int ahead = lookahead && (s->ring || s->n_past + 2 <= s->max_seq) && d->plan.graph && av_decode_plan_queueable(&d->plan);
    if (ahead && av_decode_plan_submit(&d->plan) != AV_OK) ahead = 0;
    av_status st = av_decode_plan_collect(&d->plan, next);
    if (st != AV_OK) return st;
    if (s->hist) s->hist[s->n_past] = id;
    s->n_past += 1;
    av_session_ring_decode_done(s);
    s->last_T = 0; /* the step computed the logits (maybe without `hidden`) */
    d->dev_id = *next;
    d->dev_pos = s->n_past;
    if (ahead) {
        d->ahead = 1;
        d->ahead_id = *next;
        d->ahead_pos = s->n_past;
        d->ahead_t = temperature;
        d->ahead_p = top_p;
        d->ahead_seed = seed;
    }
    return AV_OK;
}

static av_status session_decode_one(av_session *s, int32_t id) {
    const av_backend *be = s->m->be;
    if (!be->graph_begin || !be->attention_decode || s->m->no_graphs) return AV_ERR_UNSUPPORTED;
    av_decode_plan *p = (av_decode_plan *)s->decode;
    if (!p) {
        p = calloc(1, sizeof *p);
        if (!p) return av_fail(AV_ERR_NOMEM, "out of memory");
        av_decode_plan_for_session(p, s, 0);
        p->ids = s->ids_dev;
        p->pos = s->pos_dev;
        s->decode = p;
        s->decode_free = session_decode_free;
    }
    int32_t pos = s->n_past;
    AV_TRY(av_session_hist_reserve(s, s->n_past + 1));
    av_session_ring_decode_ready(s);
    be->upload(s->ids_dev, &id, sizeof id);
    be->upload(s->pos_dev, &pos, sizeof pos);
    AV_TRY(av_decode_plan_step(p, NULL));
    if (s->hist) s->hist[s->n_past] = id;
    s->n_past += 1;
    av_session_ring_decode_done(s);
    s->last_T = 1;
    return AV_OK;
}

static void session_decode_free(av_session *s) {
    if (s->decoder) decoder_destroy((av_decoder *)s->decoder);
    s->decoder = NULL;
    if (!s->decode) return;
    av_decode_plan_release((av_decode_plan *)s->decode);
    free(s->decode);
    s->decode = NULL;
}

av_status av_session_forward(av_session *s, const int32_t *ids, int T) {
    if (T == 1 && (s->ring || s->n_past + 1 <= s->max_seq) && ids[0] >= 0 && ids[0] < s->m->cfg.vocab_size) {
        av_status st = session_decode_one(s, ids[0]); /* one captured graph per session where the backend can */
        if (st != AV_ERR_UNSUPPORTED) return st;
    }
    return av_session_prefill(s, ids, T);
}
