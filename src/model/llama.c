/* Llama forward for inference: embedding -> N x [RMSNorm, QKV, RoPE, KV-cache append, causal GQA
 * attention, O, residual, RMSNorm, SwiGLU MLP, residual] -> final RMSNorm. All ops go through the
 * backend table, so this file runs unchanged on the CPU and the GPU. */
#include "model/llama.h"
#include "model/decode_graph.h"
#include "attention/attention.h"
#include "core/memory.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

void av_linear_forward(const av_backend *be, float *out, const float *x, const av_linear *L, int T, float *tmp) {
    be->matmul_forward(out, x, &L->w, T);
    if (!L->lora_a) return;
    av_mat A = {.data = L->lora_a, .dtype = AV_F32, .rows = L->rank, .cols = L->w.cols};
    av_mat B = {.data = L->lora_b, .dtype = AV_F32, .rows = L->w.rows, .cols = L->rank};
    float *xa = tmp, *xab = tmp + (size_t)T * L->rank;
    be->matmul_forward(xa, x, &A, T);   /* [T, rank] */
    be->matmul_forward(xab, xa, &B, T); /* [T, rows] */
    be->add_scaled(out, L->scale, xab, (size_t)T * L->w.rows);
}

static int max_lora_rank(const av_model *m) {
    int r = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < AV_PROJ_COUNT; p++) {
            const av_linear *L = av_layer_proj(&m->layers[l], (av_proj)p);
            if (L->lora_a && L->rank > r) r = L->rank;
        }
    return r;
}

av_status av_session_new(av_session **out, av_model *m, int max_seq, int max_chunk) {
    *out = NULL;
    const av_config *c = &m->cfg;
    const av_backend *be = m->be;
    if (max_seq <= 0) max_seq = c->max_position_embeddings;
    if (max_chunk <= 0 || max_chunk > max_seq) max_chunk = max_seq < 512 ? max_seq : 512;
    av_session *s = calloc(1, sizeof *s);
    if (!s) return av_fail(AV_ERR_NOMEM, "out of memory");
    s->m = m;
    s->max_seq = max_seq;
    s->max_chunk = max_chunk;
    s->logits_rows = 1;
    size_t D = c->hidden_size, F = c->intermediate_size, q = (size_t)c->n_heads * c->head_dim,
           kv = (size_t)c->n_kv_heads * c->head_dim, C = max_chunk, V = c->vocab_size;
    size_t R = (size_t)max_lora_rank(m);
    size_t widest = D > F ? D : F;
    if (q > widest) widest = q;
    struct { float **p; size_t n; } bufs[] = {
        {&s->k_cache, (size_t)c->n_layers * max_seq * kv}, {&s->v_cache, (size_t)c->n_layers * max_seq * kv},
        {&s->x, C * D}, {&s->xn, C * D}, {&s->q, C * q}, {&s->k, C * kv}, {&s->v, C * kv}, {&s->att, C * q},
        {&s->tmp, C * widest}, {&s->gate, C * F}, {&s->up, C * F}, {&s->hidden, C * D},
        {&s->lora_tmp, R ? C * (R + widest) : 1}, {&s->logits, V},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        *bufs[i].p = be->alloc(bufs[i].n * sizeof(float), "session buffers");
        if (!*bufs[i].p) { av_session_free(s); return av_fail(AV_ERR_NOMEM, "out of memory for a %d-token KV cache", max_seq); }
        s->bytes += bufs[i].n * sizeof(float);
    }
    s->ids_dev = be->alloc(C * sizeof(int32_t), "ids");
    s->pos_dev = be->alloc(C * sizeof(int32_t), "positions");
    s->hist = malloc(sizeof(int32_t) * (size_t)max_seq);
    if (!s->ids_dev || !s->pos_dev || !s->hist) { av_session_free(s); return av_fail(AV_ERR_NOMEM, "out of memory"); }
    *out = s;
    return AV_OK;
}

void av_session_free(av_session *s) {
    if (!s) return;
    const av_backend *be = s->m->be;
    float *bufs[] = {s->k_cache, s->v_cache, s->x, s->xn, s->q, s->k, s->v, s->att, s->tmp, s->gate, s->up, s->hidden,
                     s->lora_tmp, s->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) be->free(bufs[i]);
    av_session_decode_free(s);
    if (s->ids_dev) be->free(s->ids_dev);
    if (s->pos_dev) be->free(s->pos_dev);
    free(s->hist);
    free(s);
}

void av_session_truncate(av_session *s, int n) {
    if (n < s->n_past) s->n_past = n < 0 ? 0 : n;
}

void av_llama_layers_forward(const av_model *m, const av_chunk_bufs *b, float *k_cache, float *v_cache, size_t layer_stride,
                             const int32_t *pos_dev, int T, int p0) {
    const av_config *c = &m->cfg;
    const av_backend *be = m->be;
    int D = c->hidden_size, F = c->intermediate_size, H = c->n_heads, KVH = c->n_kv_heads, hd = c->head_dim;
    size_t kvd = (size_t)KVH * hd;
    for (int l = 0; l < c->n_layers; l++) {
        const av_layer *L = &m->layers[l];
        float *kc = k_cache + (size_t)l * layer_stride, *vc = v_cache + (size_t)l * layer_stride;
        be->rmsnorm_forward(b->xn, NULL, b->x, &L->attn_norm, T, D, c->rms_norm_eps);
        av_linear_forward(be, b->q, b->xn, &L->q, T, b->lora_tmp);
        av_linear_forward(be, kc + (size_t)p0 * kvd, b->xn, &L->k, T, b->lora_tmp);
        av_linear_forward(be, vc + (size_t)p0 * kvd, b->xn, &L->v, T, b->lora_tmp);
        be->rope_forward(b->q, pos_dev, m->inv_freq, T, H, hd);
        be->rope_forward(kc + (size_t)p0 * kvd, pos_dev, m->inv_freq, T, KVH, hd);
        if (be->flash_attention_forward && T >= 64) /* long chunks: tiled attention, no score matrix */
            be->flash_attention_forward(b->att, NULL, b->q, kc, vc, T, p0 + T, p0, H, KVH, hd);
        else
            be->attention_forward(b->att, NULL, b->q, kc, vc, T, p0 + T, p0, H, KVH, hd);
        av_linear_forward(be, b->tmp, b->att, &L->o, T, b->lora_tmp);
        be->add_inplace(b->x, b->tmp, (size_t)T * D);
        be->rmsnorm_forward(b->xn, NULL, b->x, &L->mlp_norm, T, D, c->rms_norm_eps);
        av_linear_forward(be, b->gate, b->xn, &L->gate, T, b->lora_tmp);
        av_linear_forward(be, b->up, b->xn, &L->up, T, b->lora_tmp);
        be->swiglu_forward(b->gate, b->gate, b->up, (size_t)T * F);
        av_linear_forward(be, b->tmp, b->gate, &L->down, T, b->lora_tmp);
        be->add_inplace(b->x, b->tmp, (size_t)T * D);
    }
}

static void forward_chunk(av_session *s, const int32_t *ids, int T) {
    av_model *m = s->m;
    const av_config *c = &m->cfg;
    const av_backend *be = m->be;
    int D = c->hidden_size, KVH = c->n_kv_heads, hd = c->head_dim;
    size_t kvd = (size_t)KVH * hd;
    int32_t pos[4096];
    int p0 = s->n_past;
    for (int t = 0; t < T; t++) pos[t] = p0 + t;
    memcpy(s->hist + p0, ids, sizeof(int32_t) * (size_t)T);
    be->upload(s->ids_dev, ids, (size_t)T * sizeof(int32_t));
    be->upload(s->pos_dev, pos, (size_t)T * sizeof(int32_t));
    be->embedding_forward(s->x, s->ids_dev, &m->embed, T);
    av_chunk_bufs bufs = {s->x, s->xn, s->q, s->att, s->tmp, s->gate, s->up, s->lora_tmp};
    av_llama_layers_forward(m, &bufs, s->k_cache, s->v_cache, (size_t)s->max_seq * kvd, s->pos_dev, T, p0);
    be->rmsnorm_forward(s->hidden, NULL, s->x, &m->final_norm, T, D, c->rms_norm_eps);
    s->n_past += T;
    s->last_T = T;
}

av_status av_session_forward(av_session *s, const int32_t *ids, int T) {
    if (T <= 0) return av_fail(AV_ERR_ARG, "empty input");
    if (s->n_past + T > s->max_seq)
        return av_fail(AV_ERR_ARG, "context full: %d cached + %d new tokens exceed the %d-token limit", s->n_past, T, s->max_seq);
    int V = s->m->cfg.vocab_size;
    for (int t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= V) return av_fail(AV_ERR_ARG, "token id %d out of range [0, %d)", ids[t], V);
    if (T == 1) { /* single-token decode: one captured graph per session where the backend can */
        av_status st = av_session_decode_one(s, ids[0]);
        if (st != AV_ERR_UNSUPPORTED) return st;
    }
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
