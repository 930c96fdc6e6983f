/* Batched generation over N sequences (see batch.h): per-sequence prefill into its own KV region,
 * then N-row decode steps through an av_decode_plan (device-side ids/positions, graph-captured
 * where the backend can, device sampler). */
#include "model/batch.h"
#include "ops/sample.h"
#include <stdlib.h>
#include <string.h>

struct av_batch_session {
    av_model *m;
    int N, max_seq, C;
    float *k_cache, *v_cache;
    float *x, *xn, *q, *k, *v, *att, *tmp, *gate, *up, *hidden, *lora_tmp, *logits;
    int32_t *dev;          /* ids[N] pos[N] active[N] prefill_ids[C] prefill_pos[C] */
    int32_t *pos, *active; /* host mirrors */
    int32_t *last;         /* the ids the device feeds next (the caller's last tokens), host copy */
    av_decode_plan plan;
    int ahead;             /* a step is queued ahead (av_batch_session_step_ahead) with these samplings */
    av_batch_sampling ahead_sp;
    void **allocs;
    int nallocs;
    size_t bytes;
};

static int max_rank(const av_model *m) {
    int r = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < AV_PROJ_COUNT; p++) {
            const av_linear *L = av_layer_proj(&m->layers[l], (av_proj)p);
            if (L->lora_a && L->rank > r) r = L->rank;
        }
    return r;
}

av_status av_batch_session_new(av_batch_session **out, av_model *m, int n_seq, int max_seq, int max_chunk) {
    *out = NULL;
    const av_config *c = &m->cfg;
    const av_backend *be = m->be;
    if (n_seq <= 0) return av_fail(AV_ERR_ARG, "batch: %d sequences", n_seq);
    if (max_seq <= 0 || max_seq > c->max_position_embeddings) max_seq = c->max_position_embeddings;
    if (max_chunk <= 0) max_chunk = 512;
    if (max_chunk > max_seq) max_chunk = max_seq;
    av_batch_session *b = calloc(1, sizeof *b);
    if (!b) return av_fail(AV_ERR_NOMEM, "out of memory");
    b->m = m;
    b->N = n_seq;
    b->max_seq = max_seq;
    b->C = max_chunk;
    b->pos = calloc((size_t)n_seq * 3, sizeof(int32_t));
    b->allocs = calloc(32, sizeof(void *));
    if (!b->pos || !b->allocs) { av_batch_session_free(b); return av_fail(AV_ERR_NOMEM, "out of memory"); }
    b->active = b->pos + n_seq;
    b->last = b->pos + 2 * (size_t)n_seq;
    size_t D = c->hidden_size, F = c->intermediate_size, qd = (size_t)c->n_heads * c->head_dim,
           kvd = (size_t)c->n_kv_heads * c->head_dim, V = c->vocab_size, R = (size_t)max_rank(m);
    size_t rows = (size_t)(n_seq > max_chunk ? n_seq : max_chunk), widest = D > F ? D : F;
    if (qd > widest) widest = qd;
    size_t cache = (size_t)c->n_layers * n_seq * max_seq * kvd;
    struct { float **p; size_t n; } bufs[] = {
        {&b->k_cache, cache}, {&b->v_cache, cache}, {&b->x, rows * D}, {&b->xn, rows * D}, {&b->q, rows * qd},
        {&b->k, rows * kvd}, {&b->v, rows * kvd}, {&b->att, rows * qd}, {&b->tmp, rows * widest}, {&b->gate, rows * F},
        {&b->up, rows * F}, {&b->hidden, rows * D}, {&b->lora_tmp, R ? rows * (R + widest) : 1}, {&b->logits, (size_t)n_seq * V},
        {(float **)&b->dev, (size_t)3 * n_seq + 2 * max_chunk},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        *bufs[i].p = be->alloc(bufs[i].n * sizeof(float), "batch buffers");
        if (!*bufs[i].p) { av_batch_session_free(b); return av_fail_prefix(AV_ERR_NOMEM, "batch of %d x %d tokens", n_seq, max_seq); }
        b->allocs[b->nallocs++] = *bufs[i].p;
        b->bytes += bufs[i].n * sizeof(float);
    }
    be->zero(b->dev, sizeof(int32_t) * 3 * (size_t)n_seq);
    av_decode_plan *p = &b->plan;
    p->m = m;
    p->N = n_seq;
    p->layer_stride = (size_t)n_seq * max_seq * kvd;
    p->seq_stride = (size_t)max_seq * kvd;
    p->k_cache = b->k_cache;
    p->v_cache = b->v_cache;
    p->x = b->x; p->xn = b->xn; p->q = b->q; p->k = b->k; p->v = b->v; p->att = b->att; p->tmp = b->tmp;
    p->gate = b->gate; p->up = b->up; p->hidden = b->hidden; p->lora_tmp = b->lora_tmp; p->logits = b->logits;
    p->ids = b->dev;
    p->pos = b->dev + n_seq;
    p->active = b->dev + 2 * n_seq;
    p->sample = 1;
    *out = b;
    return AV_OK;
}

void av_batch_session_free(av_batch_session *b) {
    if (!b) return;
    av_decode_plan_release(&b->plan);
    for (int i = 0; i < b->nallocs; i++) b->m->be->free(b->allocs[i]);
    free(b->allocs);
    free(b->pos);
    free(b);
}

int av_batch_session_size(const av_batch_session *b) { return b->N; }
int av_batch_session_pos(const av_batch_session *b, int i) { return b->pos[i]; }
size_t av_batch_session_bytes(const av_batch_session *b) { return b->bytes; }

/* Prompt rows [p0, p0+T) of sequence i (T <= C), K/V straight into its cache region. */
static void prefill_chunk(av_batch_session *b, int i, const int32_t *ids, int T, int p0) {
    av_model *m = b->m;
    const av_config *c = &m->cfg;
    const av_backend *be = m->be;
    int D = c->hidden_size;
    int32_t *ids_dev = b->dev + 3 * b->N, *pos_dev = ids_dev + b->C;
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)T);
    if (!pos) return;
    for (int t = 0; t < T; t++) pos[t] = p0 + t;
    be->upload(ids_dev, ids, sizeof(int32_t) * (size_t)T);
    be->upload(pos_dev, pos, sizeof(int32_t) * (size_t)T);
    free(pos);
    be->embedding_forward(b->x, ids_dev, &m->embed, T);
    av_chunk_bufs bufs = {b->x, b->xn, b->q, b->att, b->tmp, b->gate, b->up, b->lora_tmp};
    size_t seq_off = (size_t)i * b->plan.seq_stride;
    av_llama_layers_forward(m, &bufs, b->k_cache + seq_off, b->v_cache + seq_off, b->plan.layer_stride, pos_dev, T, p0);
    be->rmsnorm_forward(b->hidden, NULL, b->x + (size_t)(T - 1) * D, &m->final_norm, 1, D, c->rms_norm_eps);
}

static av_status sample_rows(av_batch_session *b, int i0, int n, const av_batch_sampling *sp) {
    const av_backend *be = b->m->be;
    int V = b->m->cfg.vocab_size;
    int32_t *ids = b->plan.ids + i0, *pos = b->plan.pos + i0, *act = b->plan.active + i0;
    if (be->sample) {
        be->sample(ids, b->logits + (size_t)i0 * V, n, V, sp->temperature, sp->top_p, sp->seed, pos, act);
        return AV_OK;
    }
    float *lg = malloc(sizeof(float) * (size_t)n * V);
    int32_t *h = malloc(sizeof(int32_t) * (size_t)n);
    if (!lg || !h) { free(lg); free(h); return av_fail(AV_ERR_NOMEM, "out of memory"); }
    be->download(lg, b->logits + (size_t)i0 * V, sizeof(float) * (size_t)n * V);
    int32_t *hp = b->pos + i0; /* host mirror copy; device pos rewritten below */
    int32_t tmp_pos[1];
    for (int r = 0; r < n; r++) {
        tmp_pos[0] = hp[r];
        int32_t a = b->active[i0 + r];
        av_sample_rows(h + r, lg + (size_t)r * V, 1, V, sp->temperature, sp->top_p, sp->seed + 0, tmp_pos, &a);
    }
    be->upload(ids, h, sizeof(int32_t) * (size_t)n);
    free(lg);
    free(h);
    /* positions: the caller's mirror update is uploaded by the caller */
    (void)pos;
    return AV_OK;
}

/* Waits for a step queued ahead and undoes what it did to the device's ids and positions (the
 * caller is about to change a sequence, so the queued step's inputs are stale). */
static void drop_ahead(av_batch_session *b) {
    if (!b->ahead) return;
    const av_backend *be = b->m->be;
    av_decode_plan_collect(&b->plan, NULL);
    b->ahead = 0;
    be->upload(b->plan.ids, b->last, sizeof(int32_t) * (size_t)b->N);
    be->upload(b->plan.pos, b->pos, sizeof(int32_t) * (size_t)b->N);
}

av_status av_batch_session_prefill(av_batch_session *b, int i, const int32_t *ids, int T, const av_batch_sampling *sp, int32_t *first) {
    const av_backend *be = b->m->be;
    int V = b->m->cfg.vocab_size;
    drop_ahead(b);
    if (i < 0 || i >= b->N) return av_fail(AV_ERR_ARG, "batch: sequence %d of %d", i, b->N);
    if (T <= 0) return av_fail(AV_ERR_ARG, "batch: sequence %d has an empty prompt", i);
    if (T + 1 > b->max_seq) return av_fail(AV_ERR_ARG, "batch: prompt of %d tokens exceeds the %d-token sequence limit", T, b->max_seq);
    for (int t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= V) return av_fail(AV_ERR_ARG, "token id %d out of range [0, %d)", ids[t], V);
    for (int t0 = 0; t0 < T; t0 += b->C) prefill_chunk(b, i, ids + t0, T - t0 < b->C ? T - t0 : b->C, t0);
    be->matmul_forward(b->logits + (size_t)i * V, b->hidden, &b->m->lm_head, 1);
    /* the logits belong to position T-1; sampling advances the position to T (the pending token's) */
    b->pos[i] = T - 1;
    b->active[i] = 1;
    int32_t st[2] = {T - 1, 1};
    be->upload(b->plan.pos + i, &st[0], sizeof(int32_t));
    be->upload(b->plan.active + i, &st[1], sizeof(int32_t));
    AV_TRY(sample_rows(b, i, 1, sp));
    b->pos[i] = T;
    if (!be->sample) be->upload(b->plan.pos + i, &b->pos[i], sizeof(int32_t));
    be->download(first, b->plan.ids + i, sizeof(int32_t));
    b->last[i] = *first;
    return AV_OK;
}

av_status av_batch_session_step(av_batch_session *b, const av_batch_sampling *sp, int32_t *out) {
    return av_batch_session_step_ahead(b, sp, out, 0);
}

av_status av_batch_session_step_ahead(av_batch_session *b, const av_batch_sampling *sp, int32_t *out, int lookahead) {
    int room = 1;
    for (int i = 0; i < b->N; i++) {
        if (b->active[i] && b->pos[i] + 1 > b->max_seq) {
            drop_ahead(b);
            return av_fail(AV_ERR_ARG, "batch: sequence %d reached its %d-token limit", i, b->max_seq);
        }
        if (b->active[i] && b->pos[i] + 2 > b->max_seq) room = 0;
    }
    int queued = b->ahead && b->ahead_sp.temperature == sp->temperature && b->ahead_sp.top_p == sp->top_p && b->ahead_sp.seed == sp->seed;
    if (!queued) drop_ahead(b);
    b->ahead = 0;
    if (!queued) {
        b->plan.temperature = sp->temperature;
        b->plan.top_p = sp->top_p;
        b->plan.seed = sp->seed;
        AV_TRY(av_decode_plan_submit(&b->plan));
    }
    /* the following step feeds the ids this one samples, at the positions it advances (on the device) */
    int ahead = lookahead && room && b->plan.graph && av_decode_plan_queueable(&b->plan);
    if (ahead && av_decode_plan_submit(&b->plan) != AV_OK) ahead = 0;
    AV_TRY(av_decode_plan_collect(&b->plan, out));
    memcpy(b->last, out, sizeof(int32_t) * (size_t)b->N);
    for (int i = 0; i < b->N; i++)
        if (b->active[i]) b->pos[i]++;
    if (ahead) {
        b->ahead = 1;
        b->ahead_sp = *sp;
    }
    return AV_OK;
}

void av_batch_session_finish(av_batch_session *b, int i) {
    if (i < 0 || i >= b->N || !b->active[i]) return;
    b->active[i] = 0;
    if (b->pos[i] > b->max_seq - 1) b->pos[i] = b->max_seq - 1; /* its row keeps writing in its own region */
    int32_t z = 0;
    b->m->be->upload(b->plan.active + i, &z, sizeof z);
    b->m->be->upload(b->plan.pos + i, &b->pos[i], sizeof(int32_t));
}
