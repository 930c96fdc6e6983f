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
    float *x, *hidden, *logits;
    int32_t *dev;          /* ids[N] pos[N] active[N] prefill_ids[C] prefill_pos[C] */
    int32_t *pos, *active; /* host mirrors */
    int32_t *last;         /* the ids the device feeds next (the caller's last tokens), host copy */
    av_decode_plan plan;
    int ahead;             /* a step is queued ahead (av_batch_session_step_ahead) with these samplings */
    av_batch_sampling ahead_sp;
    int shrink;            /* step_logits with graphs: steps in a row a smaller row bucket would have done */
    av_plan mem;           /* one backend allocation for every buffer */
    size_t bytes;
};

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
    if (!b->pos) { av_batch_session_free(b); return av_fail(AV_ERR_NOMEM, "out of memory"); }
    b->active = b->pos + n_seq;
    b->last = b->pos + 2 * (size_t)n_seq;
    size_t kvd = (size_t)c->n_kv_heads * c->head_dim, V = c->vocab_size;
    int rows = n_seq > max_chunk ? n_seq : max_chunk;
    size_t cache = (size_t)c->n_layers * n_seq * max_seq * kvd;
    av_plan_init(&b->mem);
    av_plan_floats(&b->mem, &b->k_cache, cache);
    av_plan_floats(&b->mem, &b->v_cache, cache);
    av_decode_plan *p = &b->plan;
    av_llama_plan_rows(&b->mem, m, rows, &p->ws, &b->x, &b->hidden);
    av_plan_floats(&b->mem, &b->logits, (size_t)n_seq * V);
    av_plan_add(&b->mem, &b->dev, sizeof(int32_t) * ((size_t)3 * n_seq + 2 * max_chunk));
    if (av_backend_plan_commit(be, &b->mem, "batch buffers") != AV_OK) {
        av_batch_session_free(b);
        return av_fail_prefix(AV_ERR_NOMEM, "batch of %d x %d tokens", n_seq, max_seq);
    }
    b->bytes = b->mem.total;
    be->zero(b->dev, sizeof(int32_t) * 3 * (size_t)n_seq);
    p->m = m;
    p->N = n_seq;
    p->ws.layer_stride = (size_t)n_seq * max_seq * kvd;
    p->ws.seq_stride = (size_t)max_seq * kvd;
    p->ws.k_cache = b->k_cache;
    p->ws.v_cache = b->v_cache;
    p->x = b->x;
    p->hidden = b->hidden;
    p->logits = b->logits;
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
    av_plan_release(&b->mem, b->m->be->free);
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
    int D = c->hidden_size, R = av_llama_pass_rows(be, T, b->C, b->max_seq - p0 - T);
    int32_t *ids_dev = b->dev + 3 * b->N, *pos_dev = ids_dev + b->C;
    int32_t *host = malloc(sizeof(int32_t) * 2 * (size_t)R);
    if (!host) return;
    av_llama_pass_inputs(host, host + R, ids, T, R, p0);
    be->upload(ids_dev, host, sizeof(int32_t) * (size_t)R);
    be->upload(pos_dev, host + R, sizeof(int32_t) * (size_t)R);
    free(host);
    be->embedding_forward(b->x, ids_dev, &m->embed, R);
    /* the plan's rows, as PREFILL rows of sequence i: its cache region, rows p0.. */
    av_layer_ws ws = b->plan.ws;
    size_t seq_off = (size_t)i * ws.seq_stride;
    ws.kind = AV_ROWS_PREFILL;
    ws.B = 1;
    ws.T = R;
    ws.p0 = p0;
    ws.pos = pos_dev;
    ws.k_cache += seq_off;
    ws.v_cache += seq_off;
    av_llama_layers_forward(m, &ws, b->x);
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

/* ---------------------------------------------------------------- slots (host sampling) */
int av_batch_session_chunk(const av_batch_session *b) { return b->C; }

/* The CUDA error record is the device's: a CPU session on a CUDA build without a GPU must not read it. */
static av_status dev_status(const av_batch_session *b) { return b->m->be->device == AV_DEVICE_CPU ? AV_OK : av_cuda_status(); }

/* The plan runs without its LM head and sampler: the caller samples on the host. */
static void host_sampling_mode(av_batch_session *b) {
    drop_ahead(b);
    if (!b->plan.sample) return;
    av_decode_plan_release(&b->plan);
    b->plan.sample = 0;
}

av_status av_batch_session_prefill_at(av_batch_session *b, int i, const int32_t *ids, int T, int p0, float *logits) {
    const av_backend *be = b->m->be;
    int V = b->m->cfg.vocab_size;
    host_sampling_mode(b);
    if (i < 0 || i >= b->N) return av_fail(AV_ERR_ARG, "batch: sequence %d of %d", i, b->N);
    if (T <= 0 || T > b->C || p0 < 0 || p0 + T > b->max_seq)
        return av_fail(AV_ERR_ARG, "batch: rows [%d, %d) do not fit a %d-row chunk of a %d-token sequence", p0, p0 + T, b->C, b->max_seq);
    for (int t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= V) return av_fail(AV_ERR_ARG, "token id %d out of range [0, %d)", ids[t], V);
    prefill_chunk(b, i, ids, T, p0);
    if (!logits) return AV_OK;
    be->matmul_forward(b->logits, b->hidden, &b->m->lm_head, 1);
    be->download(logits, b->logits, sizeof(float) * (size_t)V);
    return dev_status(b);
}

/* The rows of a host-sampled step: pos[i] >= 0 feeds ids[i]; the k-th fed row's logits land in
 * b->logits row k (backend memory). *n_out: the fed rows. With n > 0 the step stays queued: the
 * caller reads what it needs (a download waits for it), then collects it. */
static av_status step_rows(av_batch_session *b, const int32_t *ids, const int32_t *pos, int *n_out) {
    av_model *m = b->m;
    const av_backend *be = m->be;
    int N = b->N, V = m->cfg.vocab_size, D = m->cfg.hidden_size, n = 0;
    *n_out = 0;
    host_sampling_mode(b);
    for (int i = 0; i < N; i++) {
        if (pos[i] < 0) continue;
        if (pos[i] >= b->max_seq) return av_fail(AV_ERR_ARG, "batch: sequence %d reached its %d-token limit", i, b->max_seq);
        if (ids[i] < 0 || ids[i] >= V) return av_fail(AV_ERR_ARG, "token id %d out of range [0, %d)", ids[i], V);
        n++;
    }
    if (!n) return AV_OK;
    /* The step runs rows 0..last busy one (idle rows cost compute). With captured graphs, whose
     * capture is redone when the row count changes, in power-of-two buckets: a larger one at once,
     * a smaller one after it has sufficed for 64 steps in a row. */
    int rows = N;
    while (rows > 1 && pos[rows - 1] < 0) rows--;
    if (be->graph_begin) {
        int bucket = 1;
        while (bucket < rows) bucket *= 2;
        if (bucket > N) bucket = N;
        if (bucket >= b->plan.N) b->shrink = 0;
        else if (++b->shrink < 64) bucket = b->plan.N;
        else b->shrink = 0;
        rows = bucket;
    }
    if (rows != b->plan.N) {
        av_decode_plan_release(&b->plan); /* its scratch is sized by rows */
        b->plan.N = rows;
    }
    /* ids [N] then pos (adjacent on the device): one upload */
    int32_t *fed = malloc(sizeof(int32_t) * ((size_t)N + rows));
    if (!fed) return av_fail(AV_ERR_NOMEM, "out of memory");
    for (int i = 0; i < N; i++) fed[i] = i < rows && pos[i] >= 0 ? ids[i] : 0;
    memcpy(fed + N, pos, sizeof(int32_t) * (size_t)rows);
    be->upload(b->plan.ids, fed, sizeof(int32_t) * ((size_t)N + rows));
    free(fed);
    /* the step is not waited for: the LM head queues behind it (the caller's download waits) */
    AV_TRY(av_decode_plan_submit(&b->plan));
    /* the fed rows' final-normed states through the LM head: in place when they are rows 0..n-1 (the
     * scheduler keeps requests in the low slots), else packed into x first (free after the step) */
    const float *h = b->hidden;
    int packed = 1;
    for (int i = 0; i < n && packed; i++) packed = pos[i] >= 0;
    if (!packed) {
        for (int i = 0, k = 0; i < rows; i++)
            if (pos[i] >= 0) be->copy(b->x + (size_t)k++ * D, b->hidden + (size_t)i * D, sizeof(float) * (size_t)D);
        h = b->x;
    }
    be->matmul_forward(b->logits, h, &m->lm_head, n);
    for (int i = 0; i < N; i++) b->pos[i] = pos[i] < 0 ? b->pos[i] : pos[i] + 1;
    *n_out = n;
    return AV_OK;
}

av_status av_batch_session_step_logits(av_batch_session *b, const int32_t *ids, const int32_t *pos, float *logits) {
    int n;
    AV_TRY(step_rows(b, ids, pos, &n));
    if (!n) return AV_OK;
    b->m->be->download(logits, b->logits, sizeof(float) * (size_t)n * b->m->cfg.vocab_size);
    AV_TRY(av_decode_plan_collect(&b->plan, NULL));
    return dev_status(b);
}

int av_batch_session_can_greedy(const av_batch_session *b) { return b->m->be->sample != NULL; }

av_status av_batch_session_step_greedy(av_batch_session *b, const int32_t *ids, const int32_t *pos, int32_t *out) {
    const av_backend *be = b->m->be;
    if (!be->sample) return av_fail(AV_ERR_UNSUPPORTED, "batch: the %s backend has no device sampler", be->name);
    int n;
    AV_TRY(step_rows(b, ids, pos, &n));
    if (!n) return AV_OK;
    be->sample(b->plan.ids, b->logits, n, b->m->cfg.vocab_size, 0.0f, 1.0f, 0, NULL, NULL); /* the next step uploads its ids anew */
    be->download(out, b->plan.ids, sizeof(int32_t) * (size_t)n);
    AV_TRY(av_decode_plan_collect(&b->plan, NULL));
    return dev_status(b);
}

size_t av_batch_session_kv_row_bytes(const av_batch_session *b) {
    const av_config *c = &b->m->cfg;
    return 2 * sizeof(float) * (size_t)c->n_layers * c->n_kv_heads * c->head_dim;
}

static av_status kv_check(const av_batch_session *b, int i, int n, int ld) {
    if (i < 0 || i >= b->N || n < 0 || n > b->max_seq || ld < n) return av_fail(AV_ERR_ARG, "batch: rows [0, %d) of sequence %d", n, i);
    return AV_OK;
}

/* Rows [0, n) of sequence i to or from k, v (backend memory, [n_layers][ld][kv_dim] each): copies on
 * the device, queued in order with the steps (no host round trip). */
static av_status kv_move(av_batch_session *b, int i, int n, int ld, float *k, float *v, int out) {
    AV_TRY(kv_check(b, i, n, ld));
    host_sampling_mode(b);
    const av_backend *be = b->m->be;
    size_t kvd = (size_t)b->m->cfg.n_kv_heads * b->m->cfg.head_dim, bytes = sizeof(float) * (size_t)n * kvd, lds = (size_t)ld * kvd;
    for (int l = 0; l < b->m->cfg.n_layers; l++) {
        size_t off = (size_t)l * b->plan.ws.layer_stride + (size_t)i * b->plan.ws.seq_stride;
        float *ks = k + (size_t)l * lds, *vs = v + (size_t)l * lds, *kc = b->k_cache + off, *vc = b->v_cache + off;
        be->copy(out ? ks : kc, out ? kc : ks, bytes);
        be->copy(out ? vs : vc, out ? vc : vs, bytes);
    }
    return dev_status(b);
}

av_status av_batch_session_kv_save(av_batch_session *b, int i, int n, int ld, float *k, float *v) { return kv_move(b, i, n, ld, k, v, 1); }

av_status av_batch_session_kv_load(av_batch_session *b, int i, int n, int ld, const float *k, const float *v) {
    return kv_move(b, i, n, ld, (float *)k, (float *)v, 0);
}
