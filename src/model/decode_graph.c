/* Decode steps with device-resident ids/positions, captured once as a backend graph and replayed
 * per token (see decode_graph.h). The first step of a plan runs eagerly (so lazily grown backend
 * scratch exists before capture); a stale graph (scratch moved) is re-captured. */
#include "model/decode_graph.h"
#include <stdlib.h>
#include <string.h>

/* Benchmark knobs: an integer from the environment, or def. */
static int getenv_int(const char *name, int def) {
    const char *e = getenv(name);
    return e && *e ? atoi(e) : def;
}

/* Two or three projections whose weights lie back to back in backend memory (the upload order of
 * model/weights.c) without adapters: one matrix of all their rows, so one product reads them. */
static int stacked(av_mat *out, const av_linear *a, const av_linear *b, const av_linear *c) {
    const av_linear *L[3] = {a, b, c};
    int n = c ? 3 : 2, rows = 0;
    const char *next = (const char *)a->w.data;
    for (int i = 0; i < n; i++) {
        if (L[i]->lora_a || L[i]->w.q_bits || L[i]->w.dtype != a->w.dtype || L[i]->w.cols != a->w.cols || (const char *)L[i]->w.data != next)
            return 0;
        next += (size_t)L[i]->w.rows * L[i]->w.cols * av_dtype_size(L[i]->w.dtype);
        rows += L[i]->w.rows;
    }
    *out = a->w;
    out->rows = rows;
    return 1;
}

/* A projection the fused products take: no adapter, unquantized. */
static int plain(const av_linear *L) { return !L->lora_a && !L->w.q_bits; }

/* L2 prefetch hints (backend prefetch_hint) for the one-row step: which latency-bound kernel pulls
 * which later weights. AV_PF bits (benchmarks; default 0: none paid off on the H200, the attention
 * pulling W_o 1,482 -> 1,479 tok/s, the o product pulling 8 MB of gate|up 1,468, 16 MB 1,425, the
 * down product 2 MB of the next q|k|v 1,471): 1 the attention pulls W_o, 2 the o product pulls the
 * first AV_PF_GU_MB of gate|up, 4 the down product the first AV_PF_QKV_MB of the next q|k|v, 8 the
 * q|k|v product pulls W_o. */
static void hint(const av_backend *be, int bit, const av_mat *W, size_t cap) {
    static int mask = -1;
    if (mask < 0) mask = getenv_int("AV_PF", 0);
    if (!be->prefetch_hint || !(mask & bit) || !W) return;
    size_t n = (size_t)W->rows * W->cols * av_dtype_size(W->dtype);
    be->prefetch_hint(W->data, cap && cap < n ? cap : n);
}

/* One layer as four fused products (backend matmul_fused_forward) and the attention: RMSNorm inside
 * the q|k|v and gate|up products, RoPE in the q|k|v store, SwiGLU in the gate|up store, residual adds
 * in the o and down stores. 0 when the layer's weights do not allow it (adapters, layout). next: the
 * following layer (NULL for the last), whose first weights the down product may pull. */
static int layer_fused(av_decode_plan *p, const av_layer *L, float *kc, float *vc, const av_layer *next) {
    av_model *m = p->m;
    const av_config *c = &m->cfg;
    const av_backend *be = m->be;
    int N = p->N, H = c->n_heads, KVH = c->n_kv_heads, hd = c->head_dim;
    size_t qd = (size_t)H * hd, nq = (size_t)(H + 2 * KVH) * hd;
    av_mat Wqkv, Wgu;
    if (!p->qkv || !be->matmul_fused_forward || !stacked(&Wqkv, &L->q, &L->k, &L->v) || !stacked(&Wgu, &L->gate, &L->up, NULL) ||
        !plain(&L->o) || !plain(&L->down))
        return 0;
    av_gemv_fusion f = {.in = AV_GEMV_IN_RMSNORM, .norm = &L->attn_norm, .eps = c->rms_norm_eps, .out = AV_GEMV_OUT_ROPE,
                        .pos = p->pos, .inv_freq = m->inv_freq, .rope_heads = H + KVH, .head_dim = hd};
    int one = N == 1;
    if (one) hint(be, 8, &L->o.w, 0);
    be->matmul_fused_forward(p->qkv, p->x, &Wqkv, N, &f); /* q and k heads are adjacent: one RoPE range */
    if (one) hint(be, 1, &L->o.w, 0);
    be->attention_decode(p->att, p->qkv, p->qkv + qd, p->qkv + qd + (size_t)KVH * hd, kc, vc, p->pos, N, p->seq_stride, H, KVH, hd, nq);
    av_gemv_fusion o = {.in = AV_GEMV_IN_X, .out = AV_GEMV_OUT_ADD};
    if (one) hint(be, 2, &Wgu, (size_t)getenv_int("AV_PF_GU_MB", 8) << 20);
    be->matmul_fused_forward(p->x, p->att, &L->o.w, N, &o);
    /* several rows: the SwiGLU output goes to the down product as bf16 (its tensor cores round it so
     * anyway); one row keeps the exact f32 GEMV */
    int gu16 = N > 1 && be->save_acts_bf16;
    av_gemv_fusion gu = {.in = AV_GEMV_IN_RMSNORM, .norm = &L->mlp_norm, .eps = c->rms_norm_eps, .out = AV_GEMV_OUT_SWIGLU,
                         .out_bf16 = gu16};
    be->matmul_fused_forward(p->gu, p->x, &Wgu, N, &gu);
    av_gemv_fusion dn = {.in = AV_GEMV_IN_X, .out = AV_GEMV_OUT_ADD, .in_bf16 = gu16};
    av_mat Wn;
    if (one && next && stacked(&Wn, &next->q, &next->k, &next->v)) hint(be, 4, &Wn, (size_t)getenv_int("AV_PF_QKV_MB", 4) << 20);
    else if (one && !next && !p->m->lm_head.q_bits) hint(be, 4, &p->m->lm_head, (size_t)getenv_int("AV_PF_QKV_MB", 4) << 20);
    be->matmul_fused_forward(p->x, p->gu, &L->down.w, N, &dn);
    return 1;
}

#define ID_RING 8 /* > the steps that can be queued */

/* Greedy sampling folded into the fused LM head (backend av_gemv_fusion.argmax): one sequence, all
 * of it active, temperature 0. AV_AMAX=0 (benchmarks) keeps the sampler kernel. */
static int folds_argmax(const av_decode_plan *p) {
    const av_model *m = p->m;
    return p->sample && p->N == 1 && !p->active && p->temperature <= 0.0f && m->be->matmul_fused_forward && !m->lm_head.q_bits;
}

/* The ops of one step (no host<->device traffic, nothing position-dependent on the host side
 * unless the backend lacks attention_decode). */
static void step_ops(av_decode_plan *p) {
    av_model *m = p->m;
    const av_config *c = &m->cfg;
    const av_backend *be = m->be;
    int N = p->N, D = c->hidden_size, F = c->intermediate_size, H = c->n_heads, KVH = c->n_kv_heads, hd = c->head_dim;
    size_t kvd = (size_t)KVH * hd, qd = (size_t)H * hd;
    be->embedding_forward(p->x, p->ids, &m->embed, N);
    for (int l = 0; l < c->n_layers; l++) {
        const av_layer *L = &m->layers[l];
        float *kc = p->k_cache + (size_t)l * p->layer_stride, *vc = p->v_cache + (size_t)l * p->layer_stride;
        if (layer_fused(p, L, kc, vc, l + 1 < c->n_layers ? &m->layers[l + 1] : NULL)) continue;
        float *q = p->q, *k = p->k, *v = p->v, *gate = p->gate, *up = p->up;
        be->rmsnorm_forward(p->xn, NULL, p->x, &L->attn_norm, N, D, c->rms_norm_eps);
        av_linear_forward(be, q, p->xn, &L->q, N, p->lora_tmp);
        av_linear_forward(be, k, p->xn, &L->k, N, p->lora_tmp);
        av_linear_forward(be, v, p->xn, &L->v, N, p->lora_tmp);
        be->rope_forward(q, p->pos, m->inv_freq, N, H, hd);
        be->rope_forward(k, p->pos, m->inv_freq, N, KVH, hd);
        if (be->attention_decode) {
            be->attention_decode(p->att, q, k, v, kc, vc, p->pos, N, p->seq_stride, H, KVH, hd, 0);
        } else {
            for (int i = 0; i < N; i++) {
                int ps = p->host_pos[i];
                float *ki = kc + (size_t)i * p->seq_stride, *vi = vc + (size_t)i * p->seq_stride;
                be->copy(ki + (size_t)ps * kvd, k + (size_t)i * kvd, kvd * sizeof(float));
                be->copy(vi + (size_t)ps * kvd, v + (size_t)i * kvd, kvd * sizeof(float));
                be->attention_forward(p->att + (size_t)i * qd, NULL, q + (size_t)i * qd, ki, vi, 1, ps + 1, ps, H, KVH, hd);
            }
        }
        av_linear_forward(be, p->tmp, p->att, &L->o, N, p->lora_tmp);
        be->add_inplace(p->x, p->tmp, (size_t)N * D);
        be->rmsnorm_forward(p->xn, NULL, p->x, &L->mlp_norm, N, D, c->rms_norm_eps);
        av_linear_forward(be, gate, p->xn, &L->gate, N, p->lora_tmp);
        av_linear_forward(be, up, p->xn, &L->up, N, p->lora_tmp);
        be->swiglu_forward(gate, gate, up, (size_t)N * F);
        av_linear_forward(be, p->tmp, gate, &L->down, N, p->lora_tmp);
        be->add_inplace(p->x, p->tmp, (size_t)N * D);
    }
    int fold = folds_argmax(p);
    if (p->sample && be->matmul_fused_forward && !m->lm_head.q_bits) {
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
    return be->graph_begin && be->attention_decode && (!p->sample || be->sample);
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
    if (!p->qkv && be->matmul_fused_forward && be->attention_decode) {
        const av_config *c = &p->m->cfg;
        size_t nq = (size_t)(c->n_heads + 2 * c->n_kv_heads) * c->head_dim, ng = (size_t)c->intermediate_size;
        p->qkv = be->alloc(sizeof(float) * (nq + ng) * (size_t)p->N, "decode q|k|v, swiglu");
        if (!p->qkv) return AV_ERR_NOMEM;
        p->gu = p->qkv + nq * (size_t)p->N;
    }
    if (!p->ring_tried && p->N == 1 && p->sample && be->host_alloc && be->host_free && getenv_int("AV_ID_RING", 1)) {
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
        if (p->sample && !be->sample) AV_TRY(host_sample(p));
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
    if (p->qkv) p->m->be->free(p->qkv);
    p->qkv = p->gu = NULL;
    if (p->ring_host) p->m->be->host_free(p->ring_host);
    if (p->seq_dev) p->m->be->free(p->seq_dev);
    p->ring_host = p->ring_dev = NULL;
    p->seq_dev = NULL;
    p->ring_tried = 0;
}

/* ---------------------------------------------------------------- av_session plans */
static void session_plan(av_decode_plan *p, av_session *s, int sample) {
    const av_config *c = &s->m->cfg;
    memset(p, 0, sizeof *p);
    p->m = s->m;
    p->N = 1;
    p->layer_stride = (size_t)s->max_seq * c->n_kv_heads * c->head_dim;
    p->seq_stride = p->layer_stride; /* N = 1: only bounds the sequence length */
    p->k_cache = s->k_cache;
    p->v_cache = s->v_cache;
    p->x = s->x; p->xn = s->xn; p->q = s->q; p->k = s->k; p->v = s->v; p->att = s->att; p->tmp = s->tmp;
    p->gate = s->gate; p->up = s->up; p->hidden = s->hidden; p->lora_tmp = s->lora_tmp;
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
    session_plan(&d->plan, s, 1);
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
    if (s->n_past + 1 > s->max_seq) {
        drop_ahead(d);
        return av_fail(AV_ERR_ARG, "context full: %d cached + 1 new token exceed the %d-token limit", s->n_past, s->max_seq);
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
    int ahead = lookahead && s->n_past + 2 <= s->max_seq && d->plan.graph && av_decode_plan_queueable(&d->plan);
    if (ahead && av_decode_plan_submit(&d->plan) != AV_OK) ahead = 0;
    av_status st = av_decode_plan_collect(&d->plan, next);
    if (st != AV_OK) return st;
    if (s->hist) s->hist[s->n_past] = id;
    s->n_past += 1;
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

av_status av_session_decode_one(av_session *s, int32_t id) {
    const av_backend *be = s->m->be;
    if (!be->graph_begin || !be->attention_decode) return AV_ERR_UNSUPPORTED;
    av_decode_plan *p = (av_decode_plan *)s->decode;
    if (!p) {
        p = calloc(1, sizeof *p);
        if (!p) return av_fail(AV_ERR_NOMEM, "out of memory");
        session_plan(p, s, 0);
        p->ids = s->ids_dev;
        p->pos = s->pos_dev;
        s->decode = p;
    }
    int32_t pos = s->n_past;
    be->upload(s->ids_dev, &id, sizeof id);
    be->upload(s->pos_dev, &pos, sizeof pos);
    AV_TRY(av_decode_plan_step(p, NULL));
    if (s->hist) s->hist[s->n_past] = id;
    s->n_past += 1;
    s->last_T = 1;
    return AV_OK;
}

void av_session_decode_free(av_session *s) {
    if (s->decoder) decoder_destroy((av_decoder *)s->decoder);
    s->decoder = NULL;
    if (!s->decode) return;
    av_decode_plan_release((av_decode_plan *)s->decode);
    free(s->decode);
    s->decode = NULL;
}
