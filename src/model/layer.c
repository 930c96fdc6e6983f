/* The decoder layer (see layer.h): RMSNorm, q|k|v (+ RoPE), causal GQA attention, o + residual,
 * RMSNorm, SwiGLU MLP, down + residual; and its backward, the ops in exact reverse order. Every
 * op goes through the backend table. Inference (PREFILL, DECODE) runs the plain f32 ops in place;
 * one-row decode takes the backend's fused products when the layer allows (on the CPU all layers
 * of a decode step run in one parallel region instead: decode_cpu.c); training adds saved
 * activations, bf16 storage and 16-bit products where the backend computes in bf16. */
#include "model/layer.h"
#include "quant/affine.h"
#include "model/lora_linear.h"
#include "model/decode_cpu.h"
#include "attention/kv_ring.h"
#include <time.h>

const char *const av_train_phase_names[AV_TRAIN_NPHASES] = {"other", "frozen_fwd", "layer_fwd", "attn_fwd", "lora", "xent",
                                                            "layer_bwd", "attn_bwd"};

static double wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

void av_layer_prof_start(av_layer_ws *ws, const av_backend *be) {
    if (!ws->prof) return;
    be->sync();
    ws->prof_t = wall_ms();
    ws->prof_ph = AV_TRAIN_PH_OTHER;
}

int av_layer_prof_switch(av_layer_ws *ws, const av_backend *be, int phase) {
    int old = ws->prof_ph;
    if (!ws->prof) return old;
    be->sync();
    double t = wall_ms();
    ws->prof_ms[old] += t - ws->prof_t;
    ws->prof_t = t;
    ws->prof_ph = phase;
    return old;
}

size_t av_layer_widest(const av_config *c) {
    size_t D = c->hidden_size, F = c->intermediate_size, q = (size_t)c->n_heads * c->head_dim;
    size_t w = D > F ? D : F;
    return q > w ? q : w;
}

int av_model_max_lora_rank(const av_model *m) {
    int r = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < AV_PROJ_COUNT; p++) {
            const av_linear *L = av_layer_proj(&m->layers[l], (av_proj)p);
            if (L->lora_a && L->rank > r) r = L->rank;
        }
    return r;
}

/* ------------------------------------------------------------------ decode: fused products */

/* Two or three projections whose weights lie back to back in backend memory (the upload order of
 * model/weights.c) without adapters: one matrix of all their rows, so one product reads them.
 * Quantized: the same bits and group, and the packed words, scales and biases each back to back. */
static size_t piece(const av_mat *w, int j) {
    if (!w->q_bits) return (size_t)w->rows * w->cols * av_dtype_size(w->dtype);
    return j == 0 ? (size_t)w->rows * (size_t)av_quant_row_words(w->cols, w->q_bits) * 4
                  : (size_t)w->rows * (size_t)(w->cols / w->q_group) * av_dtype_size(w->dtype);
}
static int stacked(av_mat *out, const av_linear *a, const av_linear *b, const av_linear *c) {
    const av_linear *L[3] = {a, b, c};
    int n = c ? 3 : 2, rows = 0;
    const char *next[3] = {(const char *)a->w.data, (const char *)a->w.scales, (const char *)a->w.biases};
    for (int i = 0; i < n; i++) {
        const av_mat *w = &L[i]->w;
        if (L[i]->lora_a || w->q_bits != a->w.q_bits || w->q_group != a->w.q_group || w->dtype != a->w.dtype || w->cols != a->w.cols ||
            w->ks) /* a K-quant's own scales are per matrix */
            return 0;
        const char *p[3] = {(const char *)w->data, (const char *)w->scales, (const char *)w->biases};
        for (int j = 0; j < (w->q_bits ? 3 : 1); j++) {
            if (p[j] != next[j]) return 0;
            next[j] += piece(w, j);
        }
        rows += w->rows;
    }
    *out = a->w;
    out->rows = rows;
    return 1;
}

/* A projection the fused products take: no adapter. */
static int plain(const av_linear *L) { return !L->lora_a; }

/* One decode layer in place over x as four fused products (backend matmul_fused_forward) and the
 * attention: RMSNorm inside the q|k|v and gate|up products, RoPE in the q|k|v store, SwiGLU in the
 * gate|up store, residual adds in the o and down stores. 0 when the layer's weights do not allow it
 * (adapters, layout): the caller runs the separate ops. */
static int decode_fused(const av_model *m, const av_layer *L, av_layer_ws *ws, float *x, float *kc, float *vc) {
    const av_config *c = &m->cfg;
    const av_backend *be = m->be;
    int N = ws->B, H = c->n_heads, KVH = c->n_kv_heads, hd = c->head_dim;
    size_t qd = (size_t)H * hd, nq = (size_t)(H + 2 * KVH) * hd;
    av_mat Wqkv, Wgu;
    int qkv1 = stacked(&Wqkv, &L->q, &L->k, &L->v); /* else (one row, e.g. GGUF mixes: attn_v Q6_K beside Q4_K) three products */
    if (!ws->qkv || !be->matmul_fused_forward || !be->attention_decode ||
        (!qkv1 && (N != 1 || !plain(&L->q) || !plain(&L->k) || !plain(&L->v))) || !stacked(&Wgu, &L->gate, &L->up, NULL) ||
        !plain(&L->o) || !plain(&L->down))
        return 0;
    av_gemv_fusion f = {.in = AV_GEMV_IN_RMSNORM, .norm = &L->attn_norm, .eps = c->rms_norm_eps, .out = AV_GEMV_OUT_ROPE,
                        .pos = ws->pos, .inv_freq = m->inv_freq, .rope_heads = H + KVH, .head_dim = hd};
    if (qkv1) {
        be->matmul_fused_forward(ws->qkv, x, &Wqkv, N, &f); /* q and k heads are adjacent: one RoPE range */
    } else { /* one row: q|k|v are adjacent in ws->qkv, each product norms x itself */
        f.rope_heads = H;
        be->matmul_fused_forward(ws->qkv, x, &L->q.w, 1, &f);
        f.rope_heads = KVH;
        be->matmul_fused_forward(ws->qkv + qd, x, &L->k.w, 1, &f);
        f.out = AV_GEMV_OUT_STORE, f.rope_heads = 0;
        be->matmul_fused_forward(ws->qkv + qd + (size_t)KVH * hd, x, &L->v.w, 1, &f);
    }
    be->attention_decode(ws->att, ws->qkv, ws->qkv + qd, ws->qkv + qd + (size_t)KVH * hd, kc, vc, ws->pos, N, ws->seq_stride, H, KVH, hd, nq,
                         ws->ring_keep, ws->ring);
    av_gemv_fusion o = {.in = AV_GEMV_IN_X, .out = AV_GEMV_OUT_ADD};
    be->matmul_fused_forward(x, ws->att, &L->o.w, N, &o);
    /* several rows: the SwiGLU output goes to the down product as bf16 (its tensor cores round it so
     * anyway); one row keeps the exact f32 GEMV */
    int gu16 = N > 1 && be->save_acts_bf16;
    av_gemv_fusion gu = {.in = AV_GEMV_IN_RMSNORM, .norm = &L->mlp_norm, .eps = c->rms_norm_eps, .out = AV_GEMV_OUT_SWIGLU,
                         .out_bf16 = gu16};
    be->matmul_fused_forward(ws->gu, x, &Wgu, N, &gu);
    av_gemv_fusion dn = {.in = AV_GEMV_IN_X, .out = AV_GEMV_OUT_ADD, .in_bf16 = gu16};
    be->matmul_fused_forward(x, ws->gu, &L->down.w, N, &dn);
    return 1;
}

/* ------------------------------------------------------------------ attention of the rows */

/* Training attention of the B rows of the batch (q, k, v in f32; with ws->flash16, a's bf16 copies
 * are read instead): out [N, H*hd]; keep: the backward's softmax saved (ws->probs [B, H, T, T], or with
 * flash attention its lse in lse). out16 (or NULL): also out in bf16 where the flash kernel writes
 * it; returns whether it did. */
static int attention_batch(const av_model *m, av_layer_ws *ws, float *out, uint16_t *out16, float *lse, int keep, const float *q,
                           const float *k, const float *v, const av_layer_acts *a) {
    const av_backend *be = m->be;
    const av_config *cf = &m->cfg;
    int H = cf->n_heads, KVH = cf->n_kv_heads, hd = cf->head_dim, B = ws->B, T = ws->T;
    size_t qd = (size_t)H * hd, kvd = (size_t)KVH * hd;
    float *probs = keep ? ws->probs : NULL;
    int ph = av_layer_prof_switch(ws, be, AV_TRAIN_PH_ATT_FWD);
    int wrote16 = 0;
    if (a && ws->flash16) {
        be->flash_attention_forward_bf16(out, keep ? lse : NULL, (const uint16_t *)a->q, (const uint16_t *)a->k, (const uint16_t *)a->v, B, T,
                                         H, KVH, hd, out16);
        wrote16 = out16 != NULL;
    } else if (ws->flash) {
        be->flash_attention_forward_batch(out, keep ? lse : NULL, q, k, v, B, T, H, KVH, hd, out16);
        wrote16 = out16 != NULL;
    } else if (ws->attw) { /* every sequence at once; the probs buffer is scratch when none are kept */
        be->attention_forward_batch(out, probs ? probs : ws->probs, q, k, v, B, T, H, KVH, hd, ws->attw, ws->attw_n);
    } else {
        for (int b = 0; b < B; b++) {
            size_t r = (size_t)b * T;
            be->attention_forward(out + r * qd, probs ? probs + (size_t)b * H * T * T : NULL, q + r * qd, k + r * kvd, v + r * kvd, T, T,
                                  0, H, KVH, hd);
        }
    }
    av_layer_prof_switch(ws, be, ph);
    return wrote16;
}

/* q, k, v projections, RoPE and attention of the rows into att. PREFILL writes K/V straight into
 * the cache rows p0..; DECODE hands the new rows to attention_decode (or appends them per sequence
 * where the backend lacks it). Returns whether att16 received a bf16 copy of att (training). */
static int attention_rows(const av_model *m, int l, av_layer_ws *ws, const float *xn, const uint16_t *x16, float *q, float *k, float *v,
                          float *att, uint16_t *att16, const av_layer_acts *a, int save) {
    const av_backend *be = m->be;
    const av_config *c = &m->cfg;
    const av_layer *L = &m->layers[l];
    int H = c->n_heads, KVH = c->n_kv_heads, hd = c->head_dim, N = ws->B * ws->T;
    size_t kvd = (size_t)KVH * hd, qd = (size_t)H * hd;
    float *kc = ws->k_cache ? ws->k_cache + (size_t)l * ws->layer_stride : NULL;
    float *vc = ws->v_cache ? ws->v_cache + (size_t)l * ws->layer_stride : NULL;
    if (ws->kind == AV_ROWS_PREFILL) {
        k = kc + (size_t)ws->p0 * kvd;
        v = vc + (size_t)ws->p0 * kvd;
    }
    float *xa[AV_PROJ_COUNT] = {0};
    if (save && a) for (int p = 0; p < AV_PROJ_COUNT; p++) xa[p] = a->xa[p];
    av_lora_linear_forward(be, ws, q, 0, xn, x16, &L->q, l, AV_PROJ_Q, N, xa[AV_PROJ_Q]);
    av_lora_linear_forward(be, ws, k, 0, xn, x16, &L->k, l, AV_PROJ_K, N, xa[AV_PROJ_K]);
    av_lora_linear_forward(be, ws, v, 0, xn, x16, &L->v, l, AV_PROJ_V, N, xa[AV_PROJ_V]);
    be->rope_forward(q, ws->pos, m->inv_freq, N, H, hd);
    be->rope_forward(k, ws->pos, m->inv_freq, N, KVH, hd);
    if (ws->kind == AV_ROWS_BATCH && a && ws->a16 && (save || ws->flash16)) { /* bf16-saved q k v (flash16 reads them) */
        be->store_bf16((uint16_t *)a->q, q, (size_t)N * qd);
        be->store_bf16((uint16_t *)a->k, k, (size_t)N * kvd);
        be->store_bf16((uint16_t *)a->v, v, (size_t)N * kvd);
    }
    switch (ws->kind) {
    case AV_ROWS_PREFILL: {
        int T = ws->T, p0 = ws->p0;
        /* FLASH: tiled attention, no score matrix, at every length; STANDARD: the scores materialised;
         * AUTO: flash for long chunks (where the backend has it) */
        int flash = be->flash_attention_forward && (m->attention == AV_ATTN_FLASH || (m->attention == AV_ATTN_AUTO && T >= 64));
        /* a rotating cache: rows < ring see every row before them, later ones only the ring rows
         * up to themselves (one row at a time: their key ranges differ) */
        int T0 = ws->ring <= 0 ? T : ws->ring - p0 < 0 ? 0 : ws->ring - p0 < T ? ws->ring - p0 : T;
        if (T0 > 0 && flash)
            be->flash_attention_forward(att, NULL, q, kc, vc, T0, p0 + T0, p0, H, KVH, hd);
        else if (T0 > 0)
            be->attention_forward(att, NULL, q, kc, vc, T0, p0 + T0, p0, H, KVH, hd);
        for (int t = T0; t < T; t++) {
            size_t lo = (size_t)(p0 + t - ws->ring + 1) * kvd;
            be->attention_forward(att + t * qd, NULL, q + t * qd, kc + lo, vc + lo, 1, ws->ring, ws->ring - 1, H, KVH, hd);
        }
        return 0;
    }
    case AV_ROWS_DECODE: /* one query row per sequence: every kind takes the decode kernel (no score matrix to tile) */
        if (be->attention_decode) {
            be->attention_decode(att, q, k, v, kc, vc, ws->pos, N, ws->seq_stride, H, KVH, hd, 0, ws->ring_keep, ws->ring);
        } else {
            for (int i = 0; i < N; i++) {
                int ps = ws->host_pos[i], slot = av_kv_ring_slot(ps, ws->ring_keep, ws->ring), n = av_kv_ring_rows(ps, ws->ring);
                float *ki = kc + (size_t)i * ws->seq_stride, *vi = vc + (size_t)i * ws->seq_stride;
                be->copy(ki + (size_t)slot * kvd, k + (size_t)i * kvd, kvd * sizeof(float));
                be->copy(vi + (size_t)slot * kvd, v + (size_t)i * kvd, kvd * sizeof(float));
                be->attention_forward(att + (size_t)i * qd, NULL, q + (size_t)i * qd, ki, vi, 1, n, n - 1, H, KVH, hd);
            }
        }
        return 0;
    case AV_ROWS_BATCH:
    default:
        return attention_batch(m, ws, att, att16, save && a->lse ? a->lse : ws->lse, save, q, k, v, a);
    }
}

/* ------------------------------------------------------------------ forward */

void av_llama_layer_forward(const av_model *m, int l, av_layer_ws *ws, const float *x_in, float *x_out, const av_layer_acts *a, int save) {
    const av_backend *be = m->be;
    const av_config *cf = &m->cfg;
    const av_layer *L = &m->layers[l];
    int D = cf->hidden_size, F = cf->intermediate_size, H = cf->n_heads, KVH = cf->n_kv_heads, hd = cf->head_dim, N = ws->B * ws->T;
    size_t qd = (size_t)H * hd, kvd = (size_t)KVH * hd, nf = (size_t)N * F;
    if (ws->kind == AV_ROWS_DECODE && x_in == x_out &&
        decode_fused(m, L, ws, x_out, ws->k_cache + (size_t)l * ws->layer_stride, ws->v_cache + (size_t)l * ws->layer_stride))
        return;
    int a16 = ws->a16 && a; /* bf16-saved activations: computed in f32 scratch, stored after */
    /* q k v in tmp (dead until o's output), gate / up in dup / dact (free in the forward) */
    float *q = a ? (a16 ? ws->tmp : a->q) : ws->q, *k = a ? (a16 ? ws->tmp + (size_t)N * qd : a->k) : ws->k,
          *v = a ? (a16 ? k + (size_t)N * kvd : a->v) : ws->v;
    float *gate = a ? (a16 ? ws->dup : a->gate) : ws->gate, *up = a ? (a16 ? ws->dact : a->up) : ws->up;
    float *act = a ? ws->dgate : ws->gate; /* the SwiGLU output (training: dgate's buffer, free until the backward) */
    float *rstd1 = a ? a->rstd1 : NULL, *rstd2 = a ? a->rstd2 : NULL;
    /* the normed input in bf16 once for q, k and v (dxn's buffer: free in the forward); with no
     * adapter there (frozen layers) only the bf16 rows are read, written by the norm itself */
    uint16_t *x16 = av_lora_w16(ws, &L->q) && av_lora_w16(ws, &L->k) && av_lora_w16(ws, &L->v) ? (uint16_t *)ws->dxn : NULL;
    if (x16 && be->rmsnorm_forward_bf16 && !L->q.lora_a && !L->k.lora_a && !L->v.lora_a) {
        be->rmsnorm_forward_bf16(x16, rstd1, x_in, &L->attn_norm, N, D, cf->rms_norm_eps);
    } else {
        be->rmsnorm_forward(ws->xn, rstd1, x_in, &L->attn_norm, N, D, cf->rms_norm_eps);
        if (x16) be->store_bf16(x16, ws->xn, (size_t)N * D);
    }
    /* the trained layers' forward takes the same attention path as the backward (kept or recomputed) */
    float *att = save && a && a->att ? a->att : ws->att;
    /* the o product's bf16 input straight from the attention (x16's buffer: q k v are done) */
    uint16_t *att16 = av_lora_w16(ws, &L->o) ? (uint16_t *)ws->dxn : NULL;
    if (!attention_rows(m, l, ws, ws->xn, x16, q, k, v, att, att16, a, save)) att16 = NULL;
    float *xa[AV_PROJ_COUNT] = {0};
    if (save && a) for (int p = 0; p < AV_PROJ_COUNT; p++) xa[p] = a->xa[p];
    /* xmid = x_in + o(att): one product reading the residual where the backend can (no copy), else
     * the product accumulates onto the copied residual; inference adds in place */
    float *xmid = a ? a->xmid : x_out;
    if (av_lora_w16(ws, &L->o)) {
        int res = !L->o.lora_a && be->matmul_forward_res &&
                  be->matmul_forward_res(xmid, x_in, att16 ? (const void *)att16 : (const void *)att, att16 != NULL, &L->o.w, N) == 0;
        if (!res) {
            be->copy(xmid, x_in, sizeof(float) * (size_t)N * D);
            av_lora_linear_forward(be, ws, xmid, 1, att, att16, &L->o, l, AV_PROJ_O, N, xa[AV_PROJ_O]);
        }
    } else {
        if (xmid != x_in) be->copy(xmid, x_in, sizeof(float) * (size_t)N * D);
        av_lora_linear_forward(be, ws, ws->tmp, 0, att, NULL, &L->o, l, AV_PROJ_O, N, xa[AV_PROJ_O]);
        be->add_inplace(xmid, ws->tmp, (size_t)N * D);
    }
    if (a && av_lora_w16(ws, &L->gate) && av_lora_w16(ws, &L->up) && av_lora_w16(ws, &L->down) && !L->gate.lora_a && !L->up.lora_a &&
        !L->down.lora_a) { /* bf16 MLP: gate and up straight into the saved bf16 activations (scratch when not saving) */
        uint16_t *xn16 = (uint16_t *)ws->dxn, *g16 = (uint16_t *)(save ? a->gate : ws->dup), *u16 = (uint16_t *)(save ? a->up : ws->dact),
                 *act16 = (uint16_t *)act;
        if (be->rmsnorm_forward_bf16) {
            be->rmsnorm_forward_bf16(xn16, rstd2, xmid, &L->mlp_norm, N, D, cf->rms_norm_eps);
        } else {
            be->rmsnorm_forward(ws->xn, rstd2, xmid, &L->mlp_norm, N, D, cf->rms_norm_eps);
            be->store_bf16(xn16, ws->xn, (size_t)N * D);
        }
        be->matmul_forward_ex(g16, 1, xn16, 1, &L->gate.w, N, 1.0f, 0);
        be->matmul_forward_ex(u16, 1, xn16, 1, &L->up.w, N, 1.0f, 0);
        be->swiglu_forward_bf16(act16, g16, u16, nf);
        /* x_out = xmid + down(act) */
        if (!be->matmul_forward_res || be->matmul_forward_res(x_out, xmid, act16, 1, &L->down.w, N) != 0) {
            be->copy(x_out, xmid, sizeof(float) * (size_t)N * D);
            be->matmul_forward_ex(x_out, 0, act16, 1, &L->down.w, N, 1.0f, 1);
        }
        return;
    }
    be->rmsnorm_forward(ws->xn, rstd2, xmid, &L->mlp_norm, N, D, cf->rms_norm_eps);
    av_lora_linear_forward(be, ws, gate, 0, ws->xn, NULL, &L->gate, l, AV_PROJ_GATE, N, xa[AV_PROJ_GATE]);
    av_lora_linear_forward(be, ws, up, 0, ws->xn, NULL, &L->up, l, AV_PROJ_UP, N, xa[AV_PROJ_UP]);
    if (a16 && save) {
        be->store_bf16((uint16_t *)a->gate, gate, nf);
        be->store_bf16((uint16_t *)a->up, up, nf);
    }
    be->swiglu_forward(act, gate, up, nf);
    av_lora_linear_forward(be, ws, ws->tmp, 0, act, NULL, &L->down, l, AV_PROJ_DOWN, N, xa[AV_PROJ_DOWN]);
    if (x_out != xmid) be->copy(x_out, xmid, sizeof(float) * (size_t)N * D);
    be->add_inplace(x_out, ws->tmp, (size_t)N * D);
}

void av_llama_layers_forward(const av_model *m, av_layer_ws *ws, float *x) {
    /* decode rows on the CPU: all layers in one parallel region (decode_cpu.c) */
    if (m->be->device == AV_DEVICE_CPU && ws->kind == AV_ROWS_DECODE && av_llama_decode_cpu(m, ws, x, NULL, NULL)) return;
    for (int l = 0; l < m->cfg.n_layers; l++) av_llama_layer_forward(m, l, ws, x, x, NULL, 0);
}

/* ------------------------------------------------------------------ backward */

/* ws->dx += the RMSNorm backward of dout (dw: its weight gradient, or NULL); with 16-bit products
 * also the bf16 copy ws->dx16 that the next product (o, or the layer below's down) reads. */
static void norm_backward(const av_backend *be, av_layer_ws *ws, float *dw, const float *dout, const float *x, const av_mat *w,
                          const float *rstd, int N, int D) {
    ws->dx16_ok = ws->dx16 && !dw;
    if (ws->dx16_ok) be->rmsnorm_backward_dx16(ws->dx, (uint16_t *)ws->dx16, dout, x, w, rstd, N, D);
    else be->rmsnorm_backward(ws->dx, dw, dout, x, w, rstd, N, D);
}
static const uint16_t *dx16(const av_layer_ws *ws) { return ws->dx16_ok ? (const uint16_t *)ws->dx16 : NULL; }

void av_llama_norm_backward(const av_model *m, av_layer_ws *ws, float *dw, const float *dout, const float *x, const av_mat *w,
                            const float *rstd, int N) {
    norm_backward(m->be, ws, dw, dout, x, w, rstd, N, m->cfg.hidden_size);
}

void av_llama_layer_backward(const av_model *m, int l, av_layer_ws *ws, const av_layer_acts *a, const float *x_in, int need_dx) {
    const av_backend *be = m->be;
    const av_config *cf = &m->cfg;
    const av_layer *L = &m->layers[l];
    int D = cf->hidden_size, F = cf->intermediate_size, H = cf->n_heads, KVH = cf->n_kv_heads, hd = cf->head_dim, B = ws->B, T = ws->T,
        N = B * T;
    size_t qd = (size_t)H * hd, kvd = (size_t)KVH * hd, nf = (size_t)N * F;
    /* x_out = xmid + down(act) */
    const float *q = a->q, *k = a->k, *v = a->v;
    if (av_lora_w16(ws, &L->gate) && av_lora_w16(ws, &L->up) && av_lora_w16(ws, &L->down) && !L->gate.lora_a && !L->up.lora_a &&
        !L->down.lora_a) { /* bf16 MLP: no act / normed input to recompute (no adapters there) */
        uint16_t *dg16 = (uint16_t *)ws->dgate, *du16 = (uint16_t *)ws->dup;
        /* dact in bf16 straight from the product (the SwiGLU backward's products round to bf16 anyway) */
        const uint16_t *dy16 = dx16(ws);
        int dact16 = be->matmul_backward_dx_ex(ws->dact, 1, 0, dy16 ? (const void *)dy16 : (const void *)ws->dx, dy16 != NULL, &L->down.w, N) == 0;
        if (!dact16) av_lora_linear_backward(be, ws, ws->dact, 0, ws->dx, dy16, NULL, &L->down, l, AV_PROJ_DOWN, N, a->xa[AV_PROJ_DOWN]);
        be->swiglu_backward_bf16(dg16, du16, ws->dact, dact16, (const uint16_t *)a->gate, (const uint16_t *)a->up, nf);
        be->matmul_backward_dx_ex(ws->dxn, 0, 0, du16, 1, &L->up.w, N);
        be->matmul_backward_dx_ex(ws->dxn, 0, 1, dg16, 1, &L->gate.w, N);
    } else {
        float *act = ws->dgate;
        const float *gate = a->gate, *up = a->up;
        if (ws->a16) { /* bf16-saved: gate in tmp, up in lora_tmp (both free in the backward) */
            be->load_bf16(ws->tmp, (const uint16_t *)a->gate, nf);
            be->load_bf16(ws->lora_tmp, (const uint16_t *)a->up, nf);
            gate = ws->tmp;
            up = ws->lora_tmp;
        }
        if (ws->full || L->down.lora_a) be->swiglu_forward(act, gate, up, nf); /* only down's dW / adapter reads it */
        av_lora_linear_backward(be, ws, ws->dact, 0, ws->dx, dx16(ws), act, &L->down, l, AV_PROJ_DOWN, N, a->xa[AV_PROJ_DOWN]);
        be->zero(ws->dgate, nf * sizeof(float)); /* act is dead */
        be->zero(ws->dup, nf * sizeof(float));
        be->swiglu_backward(ws->dgate, ws->dup, ws->dact, gate, up, nf);
        be->rmsnorm_forward(ws->xn, a->rstd2, a->xmid, &L->mlp_norm, N, D, cf->rms_norm_eps);
        av_lora_linear_backward(be, ws, ws->dxn, 0, ws->dup, NULL, ws->xn, &L->up, l, AV_PROJ_UP, N, a->xa[AV_PROJ_UP]);
        av_lora_linear_backward(be, ws, ws->dxn, 1, ws->dgate, NULL, ws->xn, &L->gate, l, AV_PROJ_GATE, N, a->xa[AV_PROJ_GATE]);
    }
    norm_backward(be, ws, ws->full ? ws->gn2[l] : NULL, ws->dxn, a->xmid, &L->mlp_norm, a->rstd2, N, D);
    /* xmid = x_in + o(att) */
    if (ws->a16 && !ws->flash16) { /* q k v back into tmp (gate is dead) */
        float *qf = ws->tmp, *kf = qf + (size_t)N * qd, *vf = kf + (size_t)N * kvd;
        be->load_bf16(qf, (const uint16_t *)a->q, (size_t)N * qd);
        be->load_bf16(kf, (const uint16_t *)a->k, (size_t)N * kvd);
        be->load_bf16(vf, (const uint16_t *)a->v, (size_t)N * kvd);
        q = qf;
        k = kf;
        v = vf;
    }
    float *att = a->att ? a->att : ws->att, *lse = a->lse ? a->lse : ws->lse; /* kept by the forward, or recomputed */
    if (!a->att) attention_batch(m, ws, att, NULL, lse, 1, q, k, v, a);
    av_lora_linear_backward(be, ws, ws->datt, 0, ws->dx, dx16(ws), att, &L->o, l, AV_PROJ_O, N, a->xa[AV_PROJ_O]);
    int ph = av_layer_prof_switch(ws, be, AV_TRAIN_PH_ATT_BWD);
    uint16_t *d16 = NULL; /* bf16 copies of dq | dk | dv for the q k v products (dgate's buffer: free after the MLP) */
    if (ws->flash) { /* overwrites dq dk dv, RoPE backward folded in */
        if (av_lora_w16(ws, &L->q) && av_lora_w16(ws, &L->k) && av_lora_w16(ws, &L->v)) d16 = (uint16_t *)ws->dgate;
        if (ws->flash16)
            be->flash_attention_backward_bf16(ws->dq, ws->dk, ws->dv, ws->datt, att, lse, (const uint16_t *)a->q, (const uint16_t *)a->k,
                                              (const uint16_t *)a->v, B, T, H, KVH, hd, ws->pos, m->inv_freq, d16);
        else
            be->flash_attention_backward_batch(ws->dq, ws->dk, ws->dv, ws->datt, att, lse, q, k, v, B, T, H, KVH, hd, ws->pos, m->inv_freq,
                                               d16);
        av_layer_prof_switch(ws, be, ph);
    } else {
        be->zero(ws->dq, sizeof(float) * (size_t)N * qd);
        be->zero(ws->dk, sizeof(float) * (size_t)N * kvd);
        be->zero(ws->dv, sizeof(float) * (size_t)N * kvd);
        if (ws->attw)
            be->attention_backward_batch(ws->dq, ws->dk, ws->dv, ws->datt, ws->probs, q, k, v, B, T, H, KVH, hd, ws->attw, ws->attw_n);
        else
            for (int b = B - 1; b >= 0; b--) {
                size_t r = (size_t)b * T;
                be->attention_backward(ws->dq + r * qd, ws->dk + r * kvd, ws->dv + r * kvd, ws->datt + r * qd,
                                       ws->probs + (size_t)b * H * T * T, q + r * qd, k + r * kvd, v + r * kvd, T, T, 0, H, KVH, hd);
            }
        av_layer_prof_switch(ws, be, ph);
        be->rope_backward(ws->dk, ws->pos, m->inv_freq, N, KVH, hd);
        be->rope_backward(ws->dq, ws->pos, m->inv_freq, N, H, hd);
    }
    if (ws->full || L->q.lora_a || L->k.lora_a || L->v.lora_a) /* the normed input: only dW / adapters read it */
        be->rmsnorm_forward(ws->xn, a->rstd1, x_in, &L->attn_norm, N, D, cf->rms_norm_eps);
    float *dxn = need_dx ? ws->dxn : NULL;
    av_lora_linear_backward(be, ws, dxn, 0, ws->dv, d16 ? d16 + (size_t)N * (qd + kvd) : NULL, ws->xn, &L->v, l, AV_PROJ_V, N, a->xa[AV_PROJ_V]);
    av_lora_linear_backward(be, ws, dxn, 1, ws->dk, d16 ? d16 + (size_t)N * qd : NULL, ws->xn, &L->k, l, AV_PROJ_K, N, a->xa[AV_PROJ_K]);
    av_lora_linear_backward(be, ws, dxn, 1, ws->dq, d16, ws->xn, &L->q, l, AV_PROJ_Q, N, a->xa[AV_PROJ_Q]);
    if (need_dx) norm_backward(be, ws, ws->full ? ws->gn1[l] : NULL, ws->dxn, x_in, &L->attn_norm, a->rstd1, N, D);
}
