/* Llama inference sessions: embedding -> the decoder layers (model/layer.c, PREFILL rows appended
 * to the KV cache) -> final RMSNorm, LM head; buffers planned as one backend allocation. All ops go
 * through the backend table, so this file runs unchanged on the CPU and the GPU. */
#include "model/llama.h"
#include "model/decode_cpu.h"
#include "attention/attention.h"
#include "core/memory.h"
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void av_llama_plan_rows(av_plan *plan, const av_model *m, int rows, av_layer_ws *ws, float **x, float **hidden) {
    const av_config *c = &m->cfg;
    size_t D = c->hidden_size, F = c->intermediate_size, q = (size_t)c->n_heads * c->head_dim,
           kv = (size_t)c->n_kv_heads * c->head_dim, C = (size_t)rows, R = (size_t)av_model_max_lora_rank(m),
           widest = av_layer_widest(c);
    av_plan_floats(plan, x, C * D);
    av_plan_floats(plan, hidden, C * D);
    av_plan_floats(plan, &ws->xn, C * D);
    av_plan_floats(plan, &ws->q, C * q);
    av_plan_floats(plan, &ws->k, C * kv);
    av_plan_floats(plan, &ws->v, C * kv);
    av_plan_floats(plan, &ws->att, C * q);
    av_plan_floats(plan, &ws->tmp, C * widest);
    av_plan_floats(plan, &ws->gate, C * F);
    av_plan_floats(plan, &ws->up, C * F);
    av_plan_floats(plan, &ws->lora_tmp, R ? C * (R + widest) : 1);
}

static av_status session_create(av_session **out, av_model *m, int max_seq, int max_chunk, int ring, int keep) {
    *out = NULL;
    const av_config *c = &m->cfg;
    const av_backend *be = m->be;
    av_session *s = calloc(1, sizeof *s);
    if (!s) return av_fail(AV_ERR_NOMEM, "out of memory");
    s->m = m;
    s->max_seq = max_seq;
    s->max_chunk = max_chunk;
    s->logits_rows = 1;
    size_t kv = (size_t)c->n_kv_heads * c->head_dim, C = max_chunk;
    av_plan_init(&s->plan);
    av_plan_floats(&s->plan, &s->k_cache, (size_t)c->n_layers * max_seq * kv);
    av_plan_floats(&s->plan, &s->v_cache, (size_t)c->n_layers * max_seq * kv);
    av_llama_plan_rows(&s->plan, m, max_chunk, &s->ws, &s->x, &s->hidden);
    av_plan_floats(&s->plan, &s->logits, c->vocab_size);
    av_plan_add(&s->plan, &s->ids_dev, C * sizeof(int32_t));
    av_plan_add(&s->plan, &s->pos_dev, C * sizeof(int32_t));
    if (ring) av_plan_floats(&s->plan, &s->ring_tmp, (size_t)ring * kv);
    s->hist = malloc(sizeof(int32_t) * (size_t)max_seq);
    s->hist_cap = max_seq;
    if (!s->hist || av_backend_plan_commit(be, &s->plan, "session buffers") != AV_OK) {
        av_session_free(s);
        return av_fail_prefix(AV_ERR_NOMEM, "a %d-token KV cache", max_seq);
    }
    s->bytes = s->plan.total;
    s->ws.k_cache = s->k_cache;
    s->ws.v_cache = s->v_cache;
    s->ws.layer_stride = s->ws.seq_stride = (size_t)max_seq * kv;
    s->ring = s->ws.ring = ring;
    s->ring_keep = s->ws.ring_keep = keep;
    *out = s;
    return AV_OK;
}

av_status av_session_new(av_session **out, av_model *m, int max_seq, int max_chunk) {
    if (max_seq <= 0) max_seq = m->cfg.max_position_embeddings;
    if (max_chunk <= 0 || max_chunk > max_seq) max_chunk = max_seq < 512 ? max_seq : 512;
    return session_create(out, m, max_seq, max_chunk, 0, 0);
}

av_status av_session_new_rotating(av_session **out, av_model *m, int max_size, int keep, int max_chunk) {
    *out = NULL;
    if (keep < 0 || max_size <= keep) return av_fail(AV_ERR_ARG, "rotating KV cache: max_size %d must exceed keep %d", max_size, keep);
    if (max_chunk <= 0) max_chunk = 512;
    if (max_size > INT_MAX - max_chunk) return av_fail(AV_ERR_ARG, "rotating KV cache: max_size %d is too large", max_size);
    /* a chunk attends the keep rows and the latest max_size - 1 - keep, then its own rows */
    return session_create(out, m, max_size - 1 + max_chunk, max_chunk, max_size, keep);
}

void av_session_free(av_session *s) {
    if (!s) return;
    if (s->decode_free) s->decode_free(s);
    av_plan_release(&s->plan, s->m->be->free);
    free(s->hist);
    free(s);
}

void av_session_truncate(av_session *s, int n) {
    if (n >= s->n_past) return;
    if (n < 0) n = 0;
    if (s->ring && (s->kv_wrapped || s->kv_rows < s->n_past)) n = 0; /* rows were dropped: only a restart is exact */
    s->n_past = s->kv_rows = n;
    s->kv_wrapped = 0;
}

/* T more tokens fit (a rotating cache takes any number) */
static int fits(const av_session *s, int T) {
    return s->ring || s->n_past + T <= s->max_seq;
}

int av_llama_pass_rows(const av_backend *be, int rows, int chunk, int room) {
    if (be->device == AV_DEVICE_CPU || rows < 2) return rows;
    int r = (rows + 63) / 64 * 64;
    if (r > chunk) r = chunk;
    return r > rows && r - rows <= room ? r : rows;
}

void av_llama_pass_inputs(int32_t *ids_out, int32_t *pos_out, const int32_t *ids, int T, int R, int p0) {
    for (int t = 0; t < R; t++) ids_out[t] = ids[t < T ? t : T - 1], pos_out[t] = p0 + t;
}

static void forward_chunk(av_session *s, const int32_t *ids, int T) {
    av_model *m = s->m;
    const av_config *c = &m->cfg;
    const av_backend *be = m->be;
    int D = c->hidden_size;
    int32_t pos[4096], in[4096];
    int p0 = s->n_past; /* RoPE positions p0..; cache rows from row0 */
    memcpy(s->hist + p0, ids, sizeof(int32_t) * (size_t)T);
    /* a rotating cache: one token is a decode step at its ring slot (MLX's in-place update), a chunk
     * follows the retained rows (MLX's concatenation) */
    int ring_step = s->ring && T == 1, row0 = p0;
    if (ring_step) av_session_ring_decode_ready(s);
    else if (s->ring) row0 = av_session_ring_prefill_ready(s, T);
    /* the rows the pass runs: padded as the server's (a rotating cache keeps its own layout) */
    int R = s->ring ? T : av_llama_pass_rows(be, T, s->max_chunk < 4096 ? s->max_chunk : 4096, s->max_seq - p0 - T);
    av_llama_pass_inputs(in, pos, ids, T, R, p0);
    be->upload(s->ids_dev, in, (size_t)R * sizeof(int32_t));
    be->upload(s->pos_dev, pos, (size_t)R * sizeof(int32_t));
    be->embedding_forward(s->x, s->ids_dev, &m->embed, R);
    s->ws.kind = ring_step ? AV_ROWS_DECODE : AV_ROWS_PREFILL;
    s->ws.B = 1;
    s->ws.T = R;
    s->ws.p0 = row0;
    s->ws.pos = s->pos_dev;
    /* one row on the CPU: every layer, the final norm and the LM head in one parallel region */
    if (T == 1 && be->device == AV_DEVICE_CPU && av_llama_decode_cpu(m, &s->ws, s->x, s->hidden, s->logits)) {
        s->n_past += T;
        s->last_T = 0;
        if (ring_step) av_session_ring_decode_done(s);
        return;
    }
    av_llama_layers_forward(m, &s->ws, s->x);
    be->rmsnorm_forward(s->hidden, NULL, s->x, &m->final_norm, T, D, c->rms_norm_eps);
    s->n_past += T;
    s->last_T = T;
    if (ring_step) av_session_ring_decode_done(s);
}

av_status av_session_prefill(av_session *s, const int32_t *ids, int T) {
    if (T <= 0) return av_fail(AV_ERR_ARG, "empty input");
    if (!fits(s, T))
        return av_fail(AV_ERR_ARG, "context full: %d cached + %d new tokens exceed the %d-token limit", s->n_past, T, s->max_seq);
    if (s->ring && s->n_past > INT_MAX - T) return av_fail(AV_ERR_ARG, "rotating KV cache: positions past %d", INT_MAX);
    AV_TRY(av_session_hist_reserve(s, s->n_past + T));
    int V = s->m->cfg.vocab_size;
    for (int t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= V) return av_fail(AV_ERR_ARG, "token id %d out of range [0, %d)", ids[t], V);
    int chunk = s->max_chunk < 4096 ? s->max_chunk : 4096;
    for (int t0 = 0; t0 < T; t0 += chunk) forward_chunk(s, ids + t0, T - t0 < chunk ? T - t0 : chunk);
    return AV_OK;
}

void av_session_last_logits(av_session *s, float *logits) {
    const av_model *m = s->m;
    int D = m->cfg.hidden_size;
    if (s->last_T > 0) m->be->matmul_forward(s->logits, s->hidden + (size_t)(s->last_T - 1) * D, &m->lm_head, 1);
    m->be->download(logits, s->logits, sizeof(float) * (size_t)m->cfg.vocab_size);
}

av_status av_session_logits(av_session *s, const int32_t *ids, int T, float *logits) {
    av_model *m = s->m;
    const av_backend *be = m->be;
    int D = m->cfg.hidden_size, V = m->cfg.vocab_size, LC = 64; /* LM-head rows per product: bounds the device scratch */
    int chunk = s->max_chunk < 4096 ? s->max_chunk : 4096;
    if (T <= 0) return av_fail(AV_ERR_ARG, "empty input");
    if (!fits(s, T))
        return av_fail(AV_ERR_ARG, "context full: %d cached + %d new tokens exceed the %d-token limit", s->n_past, T, s->max_seq);
    AV_TRY(av_session_hist_reserve(s, s->n_past + T));
    for (int t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= V) return av_fail(AV_ERR_ARG, "token id %d out of range [0, %d)", ids[t], V);
    float *scratch = be->alloc(sizeof(float) * (size_t)V * LC, "logit scratch");
    if (!scratch) return av_fail(AV_ERR_NOMEM, "out of memory for logit rows");
    /* the final hidden rows live for one prefill chunk: take each chunk's logits before the next */
    for (int t0 = 0; t0 < T; t0 += chunk) {
        int n = T - t0 < chunk ? T - t0 : chunk;
        forward_chunk(s, ids + t0, n);
        for (int r0 = 0; r0 < n; r0 += LC) {
            int nr = n - r0 < LC ? n - r0 : LC;
            be->matmul_forward(scratch, s->hidden + (size_t)r0 * D, &m->lm_head, nr);
            be->download(logits + (size_t)(t0 + r0) * V, scratch, sizeof(float) * (size_t)V * nr);
        }
    }
    be->free(scratch);
    return be->device == AV_DEVICE_CPU ? AV_OK : av_cuda_status(); /* the CUDA error record is the device's */
}

av_status av_session_nll(av_session *s, const int32_t *ids, int T, double *sum, float *row_nll, int32_t *argmax) {
    av_model *m = s->m;
    const av_backend *be = m->be;
    int D = m->cfg.hidden_size, V = m->cfg.vocab_size, C = s->max_chunk, LC = 128; /* logit rows per chunk: enough to amortise converting the LM head */
    *sum = 0;
    av_session_truncate(s, 0);
    float *nll_dev = be->alloc(sizeof(float) * (size_t)C, "nll");
    int32_t *tgt_dev = be->alloc(sizeof(int32_t) * (size_t)C, "targets");
    float *scratch = be->alloc(sizeof(float) * (size_t)V * LC, "logit scratch");
    int32_t *tgt = malloc(sizeof(int32_t) * (size_t)C);
    float *nll = malloc(sizeof(float) * (size_t)C), *lg = argmax ? malloc(sizeof(float) * (size_t)V * LC) : NULL;
    av_status st = (nll_dev && tgt_dev && scratch && tgt && nll && (lg || !argmax)) ? AV_OK : av_fail(AV_ERR_NOMEM, "out of memory");
    for (int t0 = 0; t0 < T && st == AV_OK; t0 += C) {
        int n = T - t0 < C ? T - t0 : C;
        st = av_session_forward(s, ids + t0, n);
        if (st != AV_OK) break;
        for (int i = 0; i < n; i++) tgt[i] = t0 + i + 1 < T ? ids[t0 + i + 1] : -1;
        be->upload(tgt_dev, tgt, sizeof(int32_t) * (size_t)n);
        *sum += be->xent_forward_backward(NULL, nll_dev, s->hidden, &m->lm_head, tgt_dev, n, 0.0f, scratch, LC);
        if (row_nll) {
            be->download(nll, nll_dev, sizeof(float) * (size_t)n);
            for (int i = 0; i < n && t0 + i < T - 1; i++) row_nll[t0 + i] = nll[i];
        }
        for (int r0 = 0; argmax && r0 < n; r0 += LC) {
            int nr = n - r0 < LC ? n - r0 : LC;
            be->matmul_forward(scratch, s->hidden + (size_t)r0 * D, &m->lm_head, nr);
            be->download(lg, scratch, sizeof(float) * (size_t)V * nr);
            for (int r = 0; r < nr; r++) {
                const float *row = lg + (size_t)r * V;
                int best = 0;
                for (int v = 1; v < V; v++) if (row[v] > row[best]) best = v;
                argmax[t0 + r0 + r] = best;
            }
        }
    }
    free(tgt);
    free(nll);
    free(lg);
    if (nll_dev) be->free(nll_dev);
    if (tgt_dev) be->free(tgt_dev);
    if (scratch) be->free(scratch);
    return st;
}
