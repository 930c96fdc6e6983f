/* Training forward + backward of the Llama model over B rows of length T through the backend
 * table: the forward saves per-layer activations (or only layer inputs with gradient
 * checkpointing, recomputing one layer at a time in the backward), the LM head + cross-entropy is
 * chunked, and the backward calls every op's backward in exact reverse order. Gradients reach
 * the LoRA A/B only (the base is frozen): for y = x W^T + s (x A^T) B^T,
 *   dB += s dy^T (x A^T),  dA += s (dy B)^T x,  dx += dy W + s (dy B) A.
 * LoRA dropout (training steps only) feeds the adapter branch u = dropout(x) instead of x, the
 * mask regenerated from its key in the backward: dx += dy W + dropout_backward(s (dy B) A).
 * Full fine-tuning runs the same code with the weights replaced by f32 master copies and the
 * weight gradients switched on: dW of every matmul, dw of every RMSNorm, the LM head's dW from
 * the chunked cross-entropy, and the embedding's scatter-add. */
#include "train/train_model.h"
#include "attention/attention.h"
#include "core/memory.h"
#include "formats/safetensors.h"
#include "model/llama.h"
#include "train/lora.h"
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define XENT_CHUNK 256 /* logit rows per LM-head chunk: amortises the weight conversion; 256 x V floats of scratch */

/* What one layer's backward needs and cannot recompute cheaply. The normed inputs (from x_in /
 * xmid and rstd), the SwiGLU output (from gate, up) and, without flash attention or with
 * AV_TRAIN_KEEP_ATT=0, the attention probabilities and output (from q, k, v) are recomputed in
 * the backward into shared scratch buffers. Where the backend
 * computes in bf16 (save_acts_bf16), unless AV_TRAIN_ACT_BF16=0, q, k, v, gate and up are stored as bf16 (uint16_t behind the
 * float pointers, half the bytes): the layer computes them in f32 scratch, stores them, and the
 * backward loads them back into scratch (q k v: tmp; gate: tmp, up: lora_tmp). With the backend's
 * 16-bit products (mm16) and no adapter in the MLP, gate and up are written in bf16 by their products
 * and read in bf16 by the SwiGLU (mlp16). */
typedef struct {
    float *rstd1, *q, *k, *v, *xmid, *rstd2, *gate, *up;
    float *att, *lse;              /* flash attention output [N, H*hd] and lse (keep_att): no recompute in the backward */
    float *xa[AV_PROJ_COUNT];      /* u A^T [N, rank] of each adapter (keep_xa): the backward's dB reads it */
} layer_acts;

struct av_train_ctx {
    av_model *m;
    int max_rows, max_len, ckpt, nsets, max_rank;
    int a16;           /* q, k, v, gate, up saved as bf16 (see layer_acts) */
    int mm16;          /* the backend's 16-bit activation products (backend.h: matmul_forward_ex ...) are used */
    int first;         /* first layer with trainable parameters: layers before it run forward only */
    float **xs;        /* layer inputs/outputs [N, D], layers first..n_layers (NULL below first) */
    layer_acts *acts;  /* one set per layer first..n_layers-1, or 1 with checkpointing */
    float *xn, *att, *probs; /* scratch: a normed input [N, D], attention output [N, H*hd], probs [B, H, T, T] */
    float *hidden, *rstdf, *dh, *dx, *dxn, *datt, *dq, *dk, *dv, *dact, *dgate, *dup, *tmp, *lora_tmp, *xout;
    float *dx16;   /* mm16: bf16 copy of dx written by the RMSNorm backward (dx16_ok: it matches dx), read by the next product */
    int dx16_ok;
    float *lora3, *scratch; /* lora3: 3 * N * max rank (av_linear_backward) */
    int32_t *ids_dev, *tgt_dev, *pos_dev;
    int32_t *pos_host;
    float **ga, **gb;  /* [n_layers * AV_PROJ_COUNT] gradient of A / B per projection, NULL if none */
    int nparams;
    av_param *params;
    float *grad_arena;
    size_t grad_floats, bytes;
    void **allocs;     /* every backend allocation, for free */
    int nallocs, cap_allocs;
    /* full fine-tuning */
    int full, tied;
    float **gw;             /* [n_layers * AV_PROJ_COUNT] dW of each projection */
    float **gn1, **gn2;     /* [n_layers] dw of input_layernorm / post_attention_layernorm */
    float *gembed, *gfinal, *glm; /* glm == gembed when tied */
    av_mat **views, *orig;  /* the model's weight views and their original values (restored on free) */
    int nviews;
    /* LoRA dropout */
    float drop_p;
    uint64_t drop_seed, drop_step;
    int drop_on;            /* this step applies dropout */
    float *xdrop, *dxdrop;  /* [N, widest]: dropout(x) and its gradient */
    size_t widest;
    /* batched attention: workspace (dup's buffer when it is big enough: dead around attention) */
    float *attw;
    size_t attw_n;
    /* flash attention (backend flash ops, AV_TRAIN_FLASH != 0): no probs; lse [B, H, T] of the
     * backward's recomputed forward */
    int flash;
    float *lse;
    int keep_att, keep_xa; /* see layer_acts.att / .xa (AV_TRAIN_KEEP_ATT=0 / AV_TRAIN_KEEP_XA=0: recompute, for comparison) */
    /* phase profile (AV_TRAIN_PROFILE=1): synchronises at every phase switch */
    int prof, prof_ph;
    double prof_t, prof_ms[AV_TRAIN_NPHASES];
};

static double wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}
/* Charges the time since the last switch to the current phase; returns the phase left. */
static int prof_switch(av_train_ctx *c, int ph) {
    int old = c->prof_ph;
    if (!c->prof) return old;
    c->m->be->sync();
    double t = wall_ms();
    c->prof_ms[old] += t - c->prof_t;
    c->prof_t = t;
    c->prof_ph = ph;
    return old;
}
const char *const av_train_phase_names[AV_TRAIN_NPHASES] = {"other", "frozen_fwd", "layer_fwd", "attn_fwd", "lora", "xent",
                                                            "layer_bwd", "attn_bwd"};
void av_train_profile(const av_train_ctx *c, double ms[AV_TRAIN_NPHASES]) {
    for (int i = 0; i < AV_TRAIN_NPHASES; i++) ms[i] = c->prof_ms[i];
}

static float *ctx_alloc(av_train_ctx *c, size_t floats, const char *what) {
    if (c->nallocs == c->cap_allocs) {
        int nc = c->cap_allocs ? c->cap_allocs * 2 : 64;
        void **na = realloc(c->allocs, sizeof(void *) * (size_t)nc);
        if (!na) return NULL;
        c->allocs = na;
        c->cap_allocs = nc;
    }
    if (!floats) floats = 1;
    void *p = c->m->be->alloc(floats * sizeof(float), what);
    if (p) {
        c->allocs[c->nallocs++] = p;
        c->bytes += floats * sizeof(float);
    }
    return p;
}

void av_train_ctx_free(av_train_ctx *c) {
    if (!c) return;
    if (c->views) { /* full fine-tuning: the model back on its own weights */
        for (int i = 0; i < c->nviews; i++) *c->views[i] = c->orig[i];
        if (c->tied) c->m->lm_head = c->m->embed;
    }
    free(c->views);
    free(c->orig);
    free(c->gw);
    free(c->gn1);
    free(c->gn2);
    for (int i = 0; i < c->nallocs; i++) c->m->be->free(c->allocs[i]);
    free(c->allocs);
    free(c->xs);
    free(c->acts);
    free(c->ga);
    free(c->gb);
    free(c->params);
    free(c->pos_host);
    free(c);
}

static int layer_has_adapter(const av_model *m, int l) {
    for (int p = 0; p < AV_PROJ_COUNT; p++)
        if (av_layer_proj(&m->layers[l], (av_proj)p)->lora_a) return 1;
    return 0;
}

static av_status build_params(av_train_ctx *c) {
    av_model *m = c->m;
    int NL = m->cfg.n_layers;
    c->ga = calloc((size_t)NL * AV_PROJ_COUNT, sizeof(float *));
    c->gb = calloc((size_t)NL * AV_PROJ_COUNT, sizeof(float *));
    if (!c->ga || !c->gb) return av_fail(AV_ERR_NOMEM, "train: out of memory");
    int n = 0;
    size_t total = 0;
    for (int l = 0; l < NL; l++)
        for (int p = 0; p < AV_PROJ_COUNT; p++) {
            const av_linear *L = av_layer_proj(&m->layers[l], (av_proj)p);
            if (!L->lora_a) continue;
            n += 2;
            total += (size_t)L->rank * (L->w.rows + L->w.cols);
            if (L->rank > c->max_rank) c->max_rank = L->rank;
        }
    if (!n) return av_fail(AV_ERR_ARG, "train: the model has no adapters attached (nothing to train)");
    c->params = calloc((size_t)n, sizeof(av_param));
    if (!c->params) return av_fail(AV_ERR_NOMEM, "train: out of memory");
    c->grad_arena = ctx_alloc(c, total, "lora gradients");
    if (!c->grad_arena) return av_fail(AV_ERR_NOMEM, "train: out of memory for gradients");
    c->grad_floats = total;
    m->be->zero(c->grad_arena, total * sizeof(float));
    size_t off = 0;
    for (int l = 0; l < NL; l++)
        for (int p = 0; p < AV_PROJ_COUNT; p++) {
            av_linear *L = av_layer_proj(&m->layers[l], (av_proj)p);
            if (!L->lora_a) continue;
            for (int ab = 0; ab < 2; ab++) {
                av_param *P = &c->params[c->nparams++];
                snprintf(P->name, sizeof P->name, "base_model.model.model.layers.%d.%s.%s.lora_%c.weight", l, av_proj_module[p],
                         av_proj_names[p], ab ? 'B' : 'A');
                P->data = ab ? L->lora_b : L->lora_a;
                P->rows = ab ? L->w.rows : L->rank;
                P->cols = ab ? L->rank : L->w.cols;
                P->n = (size_t)P->rows * P->cols;
                P->grad = c->grad_arena + off;
                off += P->n;
                if (ab) c->gb[l * AV_PROJ_COUNT + p] = P->grad;
                else c->ga[l * AV_PROJ_COUNT + p] = P->grad;
            }
        }
    return AV_OK;
}

/* Full fine-tuning: f32 master copies of every weight become the parameters. */
static av_status build_params_full(av_train_ctx *c) {
    av_model *m = c->m;
    const av_backend *be = m->be;
    int NL = m->cfg.n_layers;
    if (av_lora_count(m)) return av_fail(AV_ERR_ARG, "train: full fine-tuning of a model with LoRA adapters attached (detach them)");
    if (!be->xent_forward_backward_dw || !be->embedding_backward || !be->rmsnorm_backward || !be->matmul_backward)
        return av_fail(AV_ERR_UNSUPPORTED, "train: the %s backend lacks the weight-gradient ops full fine-tuning needs (xent_forward_backward_dw)",
                       be->name);
    c->tied = m->lm_head.data == m->embed.data;
    int nv = 2 + 9 * NL + !c->tied;
    c->views = calloc((size_t)nv, sizeof *c->views);
    c->orig = calloc((size_t)nv, sizeof *c->orig);
    c->params = calloc((size_t)nv, sizeof *c->params);
    c->gw = calloc((size_t)NL * AV_PROJ_COUNT, sizeof(float *));
    c->gn1 = calloc((size_t)NL, sizeof(float *));
    c->gn2 = calloc((size_t)NL, sizeof(float *));
    if (!c->views || !c->orig || !c->params || !c->gw || !c->gn1 || !c->gn2) return av_fail(AV_ERR_NOMEM, "train: out of memory");
    /* the views, in parameter order, with their HF names */
    int k = 0;
#define ADD_VIEW(ptr, ...) do { c->views[k] = (ptr); snprintf(c->params[k].name, sizeof c->params[k].name, __VA_ARGS__); k++; } while (0)
    ADD_VIEW(&m->embed, "model.embed_tokens.weight");
    const int order[AV_PROJ_COUNT] = {AV_PROJ_Q, AV_PROJ_K, AV_PROJ_V, AV_PROJ_O, AV_PROJ_GATE, AV_PROJ_UP, AV_PROJ_DOWN};
    for (int l = 0; l < NL; l++) {
        av_layer *L = &m->layers[l];
        ADD_VIEW(&L->attn_norm, "model.layers.%d.input_layernorm.weight", l);
        for (int j = 0; j < 4; j++)
            ADD_VIEW(&av_layer_proj(L, (av_proj)order[j])->w, "model.layers.%d.%s.%s.weight", l, av_proj_module[order[j]], av_proj_names[order[j]]);
        ADD_VIEW(&L->mlp_norm, "model.layers.%d.post_attention_layernorm.weight", l);
        for (int j = 4; j < 7; j++)
            ADD_VIEW(&av_layer_proj(L, (av_proj)order[j])->w, "model.layers.%d.%s.%s.weight", l, av_proj_module[order[j]], av_proj_names[order[j]]);
    }
    ADD_VIEW(&m->final_norm, "model.norm.weight");
    if (!c->tied) ADD_VIEW(&m->lm_head, "lm_head.weight");
#undef ADD_VIEW
    size_t total = 0;
    for (int i = 0; i < nv; i++) {
        const av_mat *v = c->views[i];
        if (v->q_bits) return av_fail(AV_ERR_UNSUPPORTED, "train: %s is quantized: full fine-tuning needs f32/f16/bf16 weights", c->params[i].name);
        if (v->dtype != AV_F32 && v->dtype != AV_F16 && v->dtype != AV_BF16)
            return av_fail(AV_ERR_UNSUPPORTED, "train: %s has dtype %s (full fine-tuning needs f32/f16/bf16)", c->params[i].name,
                           av_dtype_name(v->dtype));
        total += (size_t)v->rows * v->cols;
    }
    c->grad_arena = ctx_alloc(c, total, "full fine-tuning gradients");
    if (!c->grad_arena) return av_fail(AV_ERR_NOMEM, "train: out of memory for gradients (%zu floats)", total);
    c->grad_floats = total;
    be->zero(c->grad_arena, total * sizeof(float));
    /* master copies: convert on the host (downloading first where the backend is not host memory) */
    size_t off = 0;
    for (int i = 0; i < nv; i++) {
        av_mat *v = c->views[i];
        av_param *P = &c->params[i];
        P->rows = v->rows;
        P->cols = v->cols;
        P->n = (size_t)v->rows * v->cols;
        P->data = ctx_alloc(c, P->n, "f32 master weights");
        if (!P->data) return av_fail(AV_ERR_NOMEM, "train: out of memory for the f32 master copy of %s", P->name);
        P->grad = c->grad_arena + off;
        off += P->n;
        av_mat hv = *v;
        void *raw = NULL;
        float *host = be->host_visible ? P->data : malloc(P->n * sizeof(float));
        if (!be->host_visible) {
            size_t bytes = P->n * av_dtype_size(v->dtype);
            raw = malloc(bytes ? bytes : 1);
            if (raw && host) be->download(raw, v->data, bytes);
            hv.data = raw;
        }
        if (!host || (!be->host_visible && !raw)) {
            if (!be->host_visible) free(host);
            free(raw);
            return av_fail(AV_ERR_NOMEM, "train: out of memory converting %s", P->name);
        }
        av_mat_rows_to_f32(host, &hv, 0, v->rows);
        if (!be->host_visible) {
            be->upload(P->data, host, P->n * sizeof(float));
            free(host);
            free(raw);
        }
    }
    c->nparams = nv;
    /* point the model at the masters and name each gradient's role */
    for (int i = 0; i < nv; i++) {
        c->orig[i] = *c->views[i];
        av_mat *v = c->views[i];
        v->data = c->params[i].data;
        v->dtype = AV_F32;
        v->scales = v->biases = NULL;
    }
    c->nviews = nv;
    if (c->tied) m->lm_head = m->embed;
    k = 0;
    c->gembed = c->params[k++].grad;
    for (int l = 0; l < NL; l++) {
        c->gn1[l] = c->params[k++].grad;
        for (int j = 0; j < 4; j++) c->gw[l * AV_PROJ_COUNT + order[j]] = c->params[k++].grad;
        c->gn2[l] = c->params[k++].grad;
        for (int j = 4; j < 7; j++) c->gw[l * AV_PROJ_COUNT + order[j]] = c->params[k++].grad;
    }
    c->gfinal = c->params[k++].grad;
    c->glm = c->tied ? c->gembed : c->params[k++].grad;
    return AV_OK;
}

static av_status ctx_new(av_train_ctx **out, av_model *m, int max_rows, int max_len, int grad_checkpoint, int full);

av_status av_train_ctx_new(av_train_ctx **out, av_model *m, int max_rows, int max_len, int grad_checkpoint) {
    return ctx_new(out, m, max_rows, max_len, grad_checkpoint, 0);
}

av_status av_train_ctx_new_full(av_train_ctx **out, av_model *m, int max_rows, int max_len, int grad_checkpoint) {
    return ctx_new(out, m, max_rows, max_len, grad_checkpoint, 1);
}

static av_status ctx_new(av_train_ctx **out, av_model *m, int max_rows, int max_len, int grad_checkpoint, int full) {
    *out = NULL;
    const av_config *cf = &m->cfg;
    if (max_rows <= 0 || max_len <= 0) return av_fail(AV_ERR_ARG, "train: batch of %d rows x %d tokens", max_rows, max_len);
    if (max_len > cf->max_position_embeddings)
        return av_fail(AV_ERR_ARG, "train: sequence length %d exceeds the model's %d positions", max_len, cf->max_position_embeddings);
    av_train_ctx *c = calloc(1, sizeof *c);
    if (!c) return av_fail(AV_ERR_NOMEM, "train: out of memory");
    c->m = m;
    c->max_rows = max_rows;
    c->max_len = max_len;
    c->ckpt = grad_checkpoint != 0;
    int NL = cf->n_layers;
    c->full = full != 0;
    av_status st = full ? build_params_full(c) : build_params(c);
    if (st != AV_OK) { av_train_ctx_free(c); return st; }
    c->first = 0;
    if (!c->full) /* LoRA: the layers below the first adapter need no backward and no saved activations */
        while (c->first < NL - 1 && !layer_has_adapter(m, c->first)) c->first++;
    c->nsets = c->ckpt ? 1 : NL - c->first;
    size_t N = (size_t)max_rows * max_len, D = cf->hidden_size, F = cf->intermediate_size, H = cf->n_heads,
           qd = (size_t)cf->n_heads * cf->head_dim, kvd = (size_t)cf->n_kv_heads * cf->head_dim, V = cf->vocab_size,
           R = (size_t)c->max_rank, L = (size_t)max_len;
    size_t widest = D > F ? D : F;
    if (qd > widest) widest = qd;
    c->widest = widest;
    c->xs = calloc((size_t)NL + 1, sizeof(float *));
    c->acts = calloc((size_t)c->nsets, sizeof(layer_acts));
    c->pos_host = malloc(sizeof(int32_t) * N);
    if (!c->xs || !c->acts || !c->pos_host) { av_train_ctx_free(c); return av_fail(AV_ERR_NOMEM, "train: out of memory"); }
    /* on by default where the backend computes in bf16 (AV_TRAIN_ACT_BF16=0 turns it off): H100
     * TinyLlama 1x512 peak 3.12 -> 2.92 GB for ~4-5% tok/s (the separate store/load kernels) */
    const char *ab = getenv("AV_TRAIN_ACT_BF16");
    c->a16 = !(ab && *ab == '0') && m->be->save_acts_bf16 && m->be->store_bf16 && m->be->load_bf16;
    /* AV_TRAIN_MM16=0: the f32 products with their conversions, zero fills and adds (for comparison) */
    const char *me = getenv("AV_TRAIN_MM16");
    c->mm16 = !(me && *me == '0') && c->a16 && !c->full && m->be->matmul_forward_ex && m->be->matmul_backward_dx_ex &&
              m->be->swiglu_forward_bf16 && m->be->swiglu_backward_bf16;
    int ok = 1;
    for (int l = c->first; l <= NL && ok; l++) ok = (c->xs[l] = ctx_alloc(c, N * D, "layer inputs")) != NULL;
    for (int s = 0; s < c->nsets && ok; s++) {
        layer_acts *a = &c->acts[s];
        struct { float **p; size_t n; } b[] = {
            {&a->rstd1, N}, {&a->q, N * qd}, {&a->k, N * kvd}, {&a->v, N * kvd}, {&a->xmid, N * D},
            {&a->rstd2, N}, {&a->gate, N * F}, {&a->up, N * F},
        };
        for (size_t i = 0; i < sizeof b / sizeof b[0] && ok; i++) {
            int half = c->a16 && b[i].p != &a->rstd1 && b[i].p != &a->rstd2 && b[i].p != &a->xmid; /* bf16: n / 2 floats */
            ok = (*b[i].p = ctx_alloc(c, half ? (b[i].n + 1) / 2 : b[i].n, "activations")) != NULL;
        }
    }
    struct { float **p; size_t n; } b[] = {
        {&c->hidden, N * D}, {&c->rstdf, N}, {&c->dh, N * D}, {&c->dx, N * D}, {&c->dxn, N * D}, {&c->datt, N * qd},
        {&c->dq, N * qd}, {&c->dk, N * kvd}, {&c->dv, N * kvd}, {&c->dact, N * F}, {&c->dgate, N * F}, {&c->dup, N * F},
        {&c->tmp, N * (c->a16 && qd + 2 * kvd > widest ? qd + 2 * kvd : widest)}, {&c->lora_tmp, N * (R + widest)}, {&c->xout, c->ckpt ? N * D : 1},
        {&c->lora3, 3 * N * R}, {&c->scratch, (size_t)XENT_CHUNK * V},
        {&c->xn, N * D}, {&c->att, N * qd}, {&c->dx16, c->mm16 && m->be->rmsnorm_backward_dx16 ? (N * D + 1) / 2 : 0},
    };
    for (size_t i = 0; i < sizeof b / sizeof b[0] && ok; i++)
        if (b[i].n) ok = (*b[i].p = ctx_alloc(c, b[i].n, "training buffers")) != NULL;
    if (ok) ok = (c->ids_dev = (int32_t *)ctx_alloc(c, N, "token ids")) && (c->tgt_dev = (int32_t *)ctx_alloc(c, N, "targets")) &&
                 (c->pos_dev = (int32_t *)ctx_alloc(c, N, "positions"));
    /* flash attention where the backend has it for this shape (a B = 0 call asks): no [B, H, T, T] probs */
    const char *fe = getenv("AV_TRAIN_FLASH");
    c->flash = !(fe && *fe == '0') && m->be->flash_attention_forward_batch && m->be->flash_attention_backward_batch &&
               m->be->flash_attention_forward_batch(NULL, NULL, NULL, NULL, NULL, 0, 0, cf->n_heads, cf->n_kv_heads, cf->head_dim, NULL) == 0 &&
               m->be->flash_attention_backward_batch(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, cf->n_heads, cf->n_kv_heads,
                                                     cf->head_dim, NULL, NULL, NULL) == 0;
    if (ok && c->flash) ok = (c->lse = ctx_alloc(c, (size_t)max_rows * H * L, "attention lse")) != NULL;
    /* per-set attention outputs (f32, what the flash backward reads: N * H*hd floats a layer) and
     * adapter products; one block each for all sets, so that the arena's chunks are not fragmented.
     * H100 TinyLlama q/v r8: peak 1x512 2.84 -> 2.91 GB, 4x512 4.35 -> 4.62, 16x512 11.48 -> 12.56
     * for +4-6% tok/s (no attention recompute in the backward) */
    const char *ka = getenv("AV_TRAIN_KEEP_ATT"), *kx = getenv("AV_TRAIN_KEEP_XA");
    c->keep_att = c->flash && !(ka && *ka == '0');
    c->keep_xa = !c->full && !(kx && *kx == '0');
    size_t nlse = (size_t)max_rows * H * L;
    float *atts = NULL, *lses = NULL;
    if (ok && c->keep_att)
        ok = (atts = ctx_alloc(c, (size_t)c->nsets * N * qd, "attention outputs")) &&
             (lses = ctx_alloc(c, (size_t)c->nsets * nlse, "attention lse"));
    for (int s = 0; s < c->nsets && ok; s++) {
        layer_acts *a = &c->acts[s];
        if (c->keep_att) {
            a->att = atts + (size_t)s * N * qd;
            a->lse = lses + (size_t)s * nlse;
        }
        for (int p = 0; p < AV_PROJ_COUNT && ok && c->keep_xa; p++) {
            int need = 0; /* this set's layer (any trained layer with checkpointing) has an adapter on p */
            for (int l = c->ckpt ? c->first : c->first + s; l <= (c->ckpt ? NL - 1 : c->first + s) && !need; l++)
                need = av_layer_proj(&m->layers[l], (av_proj)p)->lora_a != NULL;
            if (need) ok = (a->xa[p] = ctx_alloc(c, N * R, "adapter products")) != NULL;
        }
    }
    if (ok && !c->flash) ok = (c->probs = ctx_alloc(c, (size_t)max_rows * H * L * L, "attention probabilities")) != NULL;
    if (ok && !c->flash && m->be->attention_forward_batch && m->be->attention_backward_batch) {
        c->attw_n = av_attention_batch_work(max_rows, max_len, cf->n_heads, cf->n_kv_heads, cf->head_dim);
        if (c->attw_n <= N * F) c->attw = c->dup;
        else ok = (c->attw = ctx_alloc(c, c->attw_n, "attention workspace")) != NULL;
    }
    if (!ok) {
        av_train_ctx_free(c);
        return av_fail(AV_ERR_NOMEM, "train: out of memory for a %d x %d batch", max_rows, max_len);
    }
    const char *pe = getenv("AV_TRAIN_PROFILE");
    c->prof = pe && *pe && *pe != '0';
    *out = c;
    return AV_OK;
}

int av_train_nparams(const av_train_ctx *c) { return c->nparams; }
av_param *av_train_params(av_train_ctx *c) { return c->params; }
void av_train_zero_grads(av_train_ctx *c) { c->m->be->zero(c->grad_arena, c->grad_floats * sizeof(float)); }
size_t av_train_bytes(const av_train_ctx *c) { return c->bytes; }
int av_train_is_full(const av_train_ctx *c) { return c->full; }
long long av_train_param_count(const av_train_ctx *c) { return (long long)c->grad_floats; }

av_status av_train_set_dropout(av_train_ctx *c, float p, uint64_t seed) {
    const av_backend *be = c->m->be;
    if (!(p >= 0.0f && p < 1.0f)) return av_fail(AV_ERR_ARG, "train: dropout must be in [0, 1) (got %g)", (double)p);
    if (p > 0 && c->full) return av_fail(AV_ERR_ARG, "train: dropout applies to LoRA adapters; full fine-tuning has none");
    if (p > 0 && (!be->dropout_forward || !be->dropout_backward))
        return av_fail(AV_ERR_UNSUPPORTED, "train: the %s backend has no dropout op (LoRA dropout > 0 needs dropout_forward/backward)", be->name);
    if (p > 0 && !c->xdrop) {
        size_t n = (size_t)c->max_rows * c->max_len * c->widest;
        c->xdrop = ctx_alloc(c, n, "dropout buffers");
        c->dxdrop = c->xdrop ? ctx_alloc(c, n, "dropout buffers") : NULL;
        if (!c->xdrop || !c->dxdrop) return av_fail(AV_ERR_NOMEM, "train: out of memory for dropout buffers");
    }
    c->drop_p = p;
    c->drop_seed = seed;
    c->drop_step = 0;
    return AV_OK;
}

void av_train_set_dropout_step(av_train_ctx *c, uint64_t step) { c->drop_step = step; }

/* The mask key of one LoRA linear in the current step. */
static uint64_t drop_key(const av_train_ctx *c, int l, av_proj p) {
    return av_dropout_key(c->drop_seed, c->drop_step, (uint64_t)l * AV_PROJ_COUNT + (uint64_t)p);
}

/* A base weight the 16-bit products take (bf16, unquantized, c->mm16). */
static int w16(const av_train_ctx *c, const av_linear *L) { return c->mm16 && L->w.dtype == AV_BF16 && !L->w.q_bits; }

/* The layer's MLP runs on bf16 activations end to end: gate, up and down take the 16-bit products
 * and carry no adapter (whose backward would need the f32 inputs). */
static int mlp16(const av_train_ctx *c, const av_layer *L) {
    return w16(c, &L->gate) && w16(c, &L->up) && w16(c, &L->down) && !L->gate.lora_a && !L->up.lora_a && !L->down.lora_a;
}

/* Forward of one projection, av_linear_forward with out (= or, with acc, +=) x W^T + s u A^T B^T,
 * u = x or, on training steps with dropout, dropout(x). x16: x already in bf16 (NULL: none); acc
 * and x16 need w16(L); xa_keep: where u A^T is kept for the backward (NULL: scratch). The adapter's second product accumulates straight into out where the
 * backend can (matmul_forward_ex), else through the xab scratch and add_scaled. */
static void linear_forward(av_train_ctx *c, float *out, int acc, const float *x, const uint16_t *x16, const av_linear *L, int l, av_proj p,
                           int N, float *xa_keep) {
    const av_backend *be = c->m->be;
    if (w16(c, L))
        be->matmul_forward_ex(out, 0, x16 ? (const void *)x16 : (const void *)x, x16 != NULL, &L->w, N, 1.0f, acc);
    else
        be->matmul_forward(out, x, &L->w, N);
    if (!L->lora_a) return;
    int ph = prof_switch(c, AV_TRAIN_PH_LORA);
    const float *u = x;
    if (c->drop_on) {
        be->dropout_forward(c->xdrop, x, (size_t)N * L->w.cols, c->drop_p, drop_key(c, l, p));
        u = c->xdrop;
    }
    av_mat A = {.data = L->lora_a, .dtype = AV_F32, .rows = L->rank, .cols = L->w.cols};
    av_mat Bm = {.data = L->lora_b, .dtype = AV_F32, .rows = L->w.rows, .cols = L->rank};
    float *xa = xa_keep ? xa_keep : c->lora_tmp, *xab = c->lora_tmp + (size_t)N * L->rank;
    be->matmul_forward(xa, u, &A, N);
    if (!be->matmul_forward_ex || be->matmul_forward_ex(out, 0, xa, 0, &Bm, N, L->scale, 1) != 0) {
        be->matmul_forward(xab, xa, &Bm, N);
        be->add_scaled(out, L->scale, xab, (size_t)N * L->w.rows);
    }
    prof_switch(c, ph);
}

/* Attention of the B rows of the batch (q, k, v in f32): out [N, H*hd]; keep: the backward's
 * softmax saved (c->probs [B, H, T, T], or with flash attention its lse in lse). out16 (or NULL):
 * also out in bf16 where the flash kernel writes it; returns whether it did. */
static int attention_rows(av_train_ctx *c, float *out, uint16_t *out16, float *lse, int keep, const float *q, const float *k, const float *v,
                          int B, int T) {
    const av_backend *be = c->m->be;
    const av_config *cf = &c->m->cfg;
    int H = cf->n_heads, KVH = cf->n_kv_heads, hd = cf->head_dim;
    size_t qd = (size_t)H * hd, kvd = (size_t)KVH * hd;
    float *probs = keep ? c->probs : NULL;
    int ph = prof_switch(c, AV_TRAIN_PH_ATT_FWD);
    if (c->flash) {
        be->flash_attention_forward_batch(out, keep ? lse : NULL, q, k, v, B, T, H, KVH, hd, out16);
        prof_switch(c, ph);
        return out16 != NULL;
    }
    if (c->attw) { /* every sequence at once; the probs buffer is scratch when none are kept */
        be->attention_forward_batch(out, probs ? probs : c->probs, q, k, v, B, T, H, KVH, hd, c->attw, c->attw_n);
        prof_switch(c, ph);
        return 0;
    }
    for (int b = 0; b < B; b++) {
        size_t r = (size_t)b * T;
        be->attention_forward(out + r * qd, probs ? probs + (size_t)b * H * T * T : NULL, q + r * qd, k + r * kvd, v + r * kvd, T, T,
                              0, H, KVH, hd);
    }
    prof_switch(c, ph);
    return 0;
}

/* One decoder layer forward over N = B*T rows, saving into a what the backward needs (with
 * train == 0, a is scratch: a frozen layer below the first trainable one, or evaluation). */
static void layer_forward(av_train_ctx *c, int l, const layer_acts *a, const float *x_in, float *x_out, int B, int T, int train) {
    av_model *m = c->m;
    const av_backend *be = m->be;
    const av_config *cf = &m->cfg;
    const av_layer *L = &m->layers[l];
    int D = cf->hidden_size, F = cf->intermediate_size, H = cf->n_heads, KVH = cf->n_kv_heads, hd = cf->head_dim, N = B * T;
    float *act = c->dgate; /* the SwiGLU output lives in dgate's buffer (free until the backward needs it) */
    size_t qd = (size_t)H * hd, kvd = (size_t)KVH * hd, nf = (size_t)N * F;
    /* bf16-saved activations: q k v in tmp (dead until o's output), gate / up in dup / dact (free in the forward) */
    float *q = c->a16 ? c->tmp : a->q, *k = c->a16 ? c->tmp + (size_t)N * qd : a->k, *v = c->a16 ? k + (size_t)N * kvd : a->v;
    float *gate = c->a16 ? c->dup : a->gate, *up = c->a16 ? c->dact : a->up;
    /* the normed input in bf16 once for q, k and v (dxn's buffer: free in the forward); with no
     * adapter there (frozen layers) only the bf16 rows are read, written by the norm itself */
    uint16_t *x16 = w16(c, &L->q) && w16(c, &L->k) && w16(c, &L->v) ? (uint16_t *)c->dxn : NULL;
    if (x16 && be->rmsnorm_forward_bf16 && !L->q.lora_a && !L->k.lora_a && !L->v.lora_a) {
        be->rmsnorm_forward_bf16(x16, a->rstd1, x_in, &L->attn_norm, N, D, cf->rms_norm_eps);
    } else {
        be->rmsnorm_forward(c->xn, a->rstd1, x_in, &L->attn_norm, N, D, cf->rms_norm_eps);
        if (x16) be->store_bf16(x16, c->xn, (size_t)N * D);
    }
    linear_forward(c, q, 0, c->xn, x16, &L->q, l, AV_PROJ_Q, N, train ? a->xa[AV_PROJ_Q] : NULL);
    linear_forward(c, k, 0, c->xn, x16, &L->k, l, AV_PROJ_K, N, train ? a->xa[AV_PROJ_K] : NULL);
    linear_forward(c, v, 0, c->xn, x16, &L->v, l, AV_PROJ_V, N, train ? a->xa[AV_PROJ_V] : NULL);
    be->rope_forward(q, c->pos_dev, m->inv_freq, N, H, hd);
    be->rope_forward(k, c->pos_dev, m->inv_freq, N, KVH, hd);
    /* the trained layers' forward takes the same attention path as the backward (kept or recomputed) */
    float *att = train && a->att ? a->att : c->att;
    /* the o product's bf16 input straight from the attention (x16's buffer: q k v are done) */
    uint16_t *att16 = w16(c, &L->o) ? (uint16_t *)c->dxn : NULL;
    if (!attention_rows(c, att, att16, train && a->lse ? a->lse : c->lse, train, q, k, v, B, T)) att16 = NULL;
    if (c->a16 && train) {
        be->store_bf16((uint16_t *)a->q, q, (size_t)N * qd);
        be->store_bf16((uint16_t *)a->k, k, (size_t)N * kvd);
        be->store_bf16((uint16_t *)a->v, v, (size_t)N * kvd);
    }
    /* xmid = x_in + o(att): one product reading the residual where the backend can (no copy),
     * else the product accumulates onto the copied residual */
    if (w16(c, &L->o)) {
        int res = !L->o.lora_a && be->matmul_forward_res &&
                  be->matmul_forward_res(a->xmid, x_in, att16 ? (const void *)att16 : (const void *)att, att16 != NULL, &L->o.w, N) == 0;
        if (!res) {
            be->copy(a->xmid, x_in, sizeof(float) * (size_t)N * D);
            linear_forward(c, a->xmid, 1, att, att16, &L->o, l, AV_PROJ_O, N, train ? a->xa[AV_PROJ_O] : NULL);
        }
    } else {
        be->copy(a->xmid, x_in, sizeof(float) * (size_t)N * D);
        linear_forward(c, c->tmp, 0, att, NULL, &L->o, l, AV_PROJ_O, N, train ? a->xa[AV_PROJ_O] : NULL);
        be->add_inplace(a->xmid, c->tmp, (size_t)N * D);
    }
    if (mlp16(c, L)) { /* gate and up straight into the saved bf16 activations (scratch when not training) */
        uint16_t *xn16 = (uint16_t *)c->dxn, *g16 = (uint16_t *)(train ? a->gate : c->dup), *u16 = (uint16_t *)(train ? a->up : c->dact),
                 *act16 = (uint16_t *)act;
        if (be->rmsnorm_forward_bf16) {
            be->rmsnorm_forward_bf16(xn16, a->rstd2, a->xmid, &L->mlp_norm, N, D, cf->rms_norm_eps);
        } else {
            be->rmsnorm_forward(c->xn, a->rstd2, a->xmid, &L->mlp_norm, N, D, cf->rms_norm_eps);
            be->store_bf16(xn16, c->xn, (size_t)N * D);
        }
        be->matmul_forward_ex(g16, 1, xn16, 1, &L->gate.w, N, 1.0f, 0);
        be->matmul_forward_ex(u16, 1, xn16, 1, &L->up.w, N, 1.0f, 0);
        be->swiglu_forward_bf16(act16, g16, u16, nf);
        /* x_out = xmid + down(act) */
        if (!be->matmul_forward_res || be->matmul_forward_res(x_out, a->xmid, act16, 1, &L->down.w, N) != 0) {
            be->copy(x_out, a->xmid, sizeof(float) * (size_t)N * D);
            be->matmul_forward_ex(x_out, 0, act16, 1, &L->down.w, N, 1.0f, 1);
        }
        return;
    }
    be->rmsnorm_forward(c->xn, a->rstd2, a->xmid, &L->mlp_norm, N, D, cf->rms_norm_eps);
    linear_forward(c, gate, 0, c->xn, NULL, &L->gate, l, AV_PROJ_GATE, N, train ? a->xa[AV_PROJ_GATE] : NULL);
    linear_forward(c, up, 0, c->xn, NULL, &L->up, l, AV_PROJ_UP, N, train ? a->xa[AV_PROJ_UP] : NULL);
    if (c->a16 && train) {
        be->store_bf16((uint16_t *)a->gate, gate, nf);
        be->store_bf16((uint16_t *)a->up, up, nf);
    }
    be->swiglu_forward(act, gate, up, nf);
    linear_forward(c, c->tmp, 0, act, NULL, &L->down, l, AV_PROJ_DOWN, N, train ? a->xa[AV_PROJ_DOWN] : NULL);
    be->copy(x_out, a->xmid, sizeof(float) * (size_t)N * D);
    be->add_inplace(x_out, c->tmp, (size_t)N * D);
}

/* c->dx += the RMSNorm backward of dout (dw: its weight gradient, or NULL); with mm16 also the bf16
 * copy c->dx16 that the next product (o, or the layer below's down) reads. */
static void norm_backward(av_train_ctx *c, float *dw, const float *dout, const float *x, const av_mat *w, const float *rstd, int N) {
    const av_backend *be = c->m->be;
    int D = c->m->cfg.hidden_size;
    c->dx16_ok = c->dx16 && !dw;
    if (c->dx16_ok) be->rmsnorm_backward_dx16(c->dx, (uint16_t *)c->dx16, dout, x, w, rstd, N, D);
    else be->rmsnorm_backward(c->dx, dw, dout, x, w, rstd, N, D);
}
static const uint16_t *dx16(const av_train_ctx *c) { return c->dx16_ok ? (const uint16_t *)c->dx16 : NULL; }

/* Backward of one projection: dx (= or, with acc, +=) dy W + the adapter's term (dx may be NULL);
 * dy16: dy in bf16 for the base product (or NULL);
 * gradients go to its adapter's A/B (if any). Without acc, the base product overwrites dx where
 * the backend can (matmul_backward_dx_ex), else dx is zeroed first. */
static void linear_backward(av_train_ctx *c, float *dx, int acc, const float *dy, const uint16_t *dy16, const float *x, const av_linear *L,
                            int l, av_proj p, int N, const float *xa) {
    const av_backend *be = c->m->be;
    int k = l * AV_PROJ_COUNT + p;
    size_t nx = (size_t)N * L->w.cols;
    if (c->full) { /* full fine-tuning: no adapters, dW of the (f32 master) weight */
        if (dx && !acc) be->zero(dx, nx * sizeof(float));
        be->matmul_backward(dx, c->gw[k], dy, x, &L->w, N);
        return;
    }
    if (dx && (!w16(c, L) || be->matmul_backward_dx_ex(dx, 0, acc, dy16 ? (const void *)dy16 : (const void *)dy, dy16 != NULL, &L->w, N) != 0)) {
        if (!acc) be->zero(dx, nx * sizeof(float));
        be->matmul_backward(dx, NULL, dy, NULL, &L->w, N);
    }
    if (!L->lora_a) return;
    int ph = prof_switch(c, AV_TRAIN_PH_LORA);
    if (!c->drop_on) {
        av_lora_branch_backward(be, dx, c->ga[k], c->gb[k], dy, x, xa, L, N, c->lora3);
    } else {
        uint64_t key = drop_key(c, l, p);
        be->dropout_forward(c->xdrop, x, nx, c->drop_p, key); /* the forward's mask, regenerated */
        if (dx) be->zero(c->dxdrop, nx * sizeof(float));
        av_lora_branch_backward(be, dx ? c->dxdrop : NULL, c->ga[k], c->gb[k], dy, c->xdrop, xa, L, N, c->lora3);
        if (dx) be->dropout_backward(dx, c->dxdrop, nx, c->drop_p, key);
    }
    prof_switch(c, ph);
}

/* One decoder layer backward: on entry c->dx = dL/d(layer output); on exit dL/d(layer input)
 * when need_dx (the first trainable layer of a LoRA run skips it: nothing below consumes it).
 * Recomputes the SwiGLU output, the normed inputs and the attention probabilities first. */
static void layer_backward(av_train_ctx *c, int l, const layer_acts *a, const float *x_in, int B, int T, int need_dx) {
    av_model *m = c->m;
    const av_backend *be = m->be;
    const av_config *cf = &m->cfg;
    const av_layer *L = &m->layers[l];
    int D = cf->hidden_size, F = cf->intermediate_size, H = cf->n_heads, KVH = cf->n_kv_heads, hd = cf->head_dim, N = B * T;
    size_t qd = (size_t)H * hd, kvd = (size_t)KVH * hd, nf = (size_t)N * F;
    /* x_out = xmid + down(act) */
    const float *q = a->q, *k = a->k, *v = a->v;
    if (mlp16(c, L)) { /* bf16 MLP: no act / normed input to recompute (no adapters there) */
        uint16_t *dg16 = (uint16_t *)c->dgate, *du16 = (uint16_t *)c->dup;
        /* dact in bf16 straight from the product (the SwiGLU backward's products round to bf16 anyway) */
        const uint16_t *dy16 = dx16(c);
        int dact16 = be->matmul_backward_dx_ex(c->dact, 1, 0, dy16 ? (const void *)dy16 : (const void *)c->dx, dy16 != NULL, &L->down.w, N) == 0;
        if (!dact16) linear_backward(c, c->dact, 0, c->dx, dy16, NULL, &L->down, l, AV_PROJ_DOWN, N, a->xa[AV_PROJ_DOWN]);
        be->swiglu_backward_bf16(dg16, du16, c->dact, dact16, (const uint16_t *)a->gate, (const uint16_t *)a->up, nf);
        be->matmul_backward_dx_ex(c->dxn, 0, 0, du16, 1, &L->up.w, N);
        be->matmul_backward_dx_ex(c->dxn, 0, 1, dg16, 1, &L->gate.w, N);
    } else {
        float *act = c->dgate;
        const float *gate = a->gate, *up = a->up;
        if (c->a16) { /* bf16-saved: gate in tmp, up in lora_tmp (both free in the backward) */
            be->load_bf16(c->tmp, (const uint16_t *)a->gate, nf);
            be->load_bf16(c->lora_tmp, (const uint16_t *)a->up, nf);
            gate = c->tmp;
            up = c->lora_tmp;
        }
        if (c->full || L->down.lora_a) be->swiglu_forward(act, gate, up, nf); /* only down's dW / adapter reads it */
        linear_backward(c, c->dact, 0, c->dx, dx16(c), act, &L->down, l, AV_PROJ_DOWN, N, a->xa[AV_PROJ_DOWN]);
        be->zero(c->dgate, nf * sizeof(float)); /* act is dead */
        be->zero(c->dup, nf * sizeof(float));
        be->swiglu_backward(c->dgate, c->dup, c->dact, gate, up, nf);
        be->rmsnorm_forward(c->xn, a->rstd2, a->xmid, &L->mlp_norm, N, D, cf->rms_norm_eps);
        linear_backward(c, c->dxn, 0, c->dup, NULL, c->xn, &L->up, l, AV_PROJ_UP, N, a->xa[AV_PROJ_UP]);
        linear_backward(c, c->dxn, 1, c->dgate, NULL, c->xn, &L->gate, l, AV_PROJ_GATE, N, a->xa[AV_PROJ_GATE]);
    }
    norm_backward(c, c->full ? c->gn2[l] : NULL, c->dxn, a->xmid, &L->mlp_norm, a->rstd2, N);
    /* xmid = x_in + o(att) */
    if (c->a16) { /* q k v back into tmp (gate is dead) */
        float *qf = c->tmp, *kf = qf + (size_t)N * qd, *vf = kf + (size_t)N * kvd;
        be->load_bf16(qf, (const uint16_t *)a->q, (size_t)N * qd);
        be->load_bf16(kf, (const uint16_t *)a->k, (size_t)N * kvd);
        be->load_bf16(vf, (const uint16_t *)a->v, (size_t)N * kvd);
        q = qf;
        k = kf;
        v = vf;
    }
    float *att = a->att ? a->att : c->att, *lse = a->lse ? a->lse : c->lse; /* kept by the forward, or recomputed */
    if (!a->att) attention_rows(c, att, NULL, lse, 1, q, k, v, B, T);
    linear_backward(c, c->datt, 0, c->dx, dx16(c), att, &L->o, l, AV_PROJ_O, N, a->xa[AV_PROJ_O]);
    int ph = prof_switch(c, AV_TRAIN_PH_ATT_BWD);
    uint16_t *d16 = NULL; /* bf16 copies of dq | dk | dv for the q k v products (dgate's buffer: free after the MLP) */
    if (c->flash) { /* overwrites dq dk dv, RoPE backward folded in */
        if (w16(c, &L->q) && w16(c, &L->k) && w16(c, &L->v)) d16 = (uint16_t *)c->dgate;
        be->flash_attention_backward_batch(c->dq, c->dk, c->dv, c->datt, att, lse, q, k, v, B, T, H, KVH, hd, c->pos_dev, m->inv_freq, d16);
        prof_switch(c, ph);
    } else {
        be->zero(c->dq, sizeof(float) * (size_t)N * qd);
        be->zero(c->dk, sizeof(float) * (size_t)N * kvd);
        be->zero(c->dv, sizeof(float) * (size_t)N * kvd);
        if (c->attw)
            be->attention_backward_batch(c->dq, c->dk, c->dv, c->datt, c->probs, q, k, v, B, T, H, KVH, hd, c->attw, c->attw_n);
        else
            for (int b = B - 1; b >= 0; b--) {
                size_t r = (size_t)b * T;
                be->attention_backward(c->dq + r * qd, c->dk + r * kvd, c->dv + r * kvd, c->datt + r * qd, c->probs + (size_t)b * H * T * T,
                                       q + r * qd, k + r * kvd, v + r * kvd, T, T, 0, H, KVH, hd);
            }
        prof_switch(c, ph);
        be->rope_backward(c->dk, c->pos_dev, m->inv_freq, N, KVH, hd);
        be->rope_backward(c->dq, c->pos_dev, m->inv_freq, N, H, hd);
    }
    if (c->full || L->q.lora_a || L->k.lora_a || L->v.lora_a) /* the normed input: only dW / adapters read it */
        be->rmsnorm_forward(c->xn, a->rstd1, x_in, &L->attn_norm, N, D, cf->rms_norm_eps);
    float *dxn = need_dx ? c->dxn : NULL;
    linear_backward(c, dxn, 0, c->dv, d16 ? d16 + (size_t)N * (qd + kvd) : NULL, c->xn, &L->v, l, AV_PROJ_V, N, a->xa[AV_PROJ_V]);
    linear_backward(c, dxn, 1, c->dk, d16 ? d16 + (size_t)N * qd : NULL, c->xn, &L->k, l, AV_PROJ_K, N, a->xa[AV_PROJ_K]);
    linear_backward(c, dxn, 1, c->dq, d16, c->xn, &L->q, l, AV_PROJ_Q, N, a->xa[AV_PROJ_Q]);
    if (need_dx) norm_backward(c, c->full ? c->gn1[l] : NULL, c->dxn, x_in, &L->attn_norm, a->rstd1, N);
}

av_status av_train_step(av_train_ctx *c, const int32_t *ids, const int32_t *targets, int B, int T, float grad_scale,
                        int backward, double *nll_sum, int *n_valid) {
    return av_train_step_ex(c, ids, targets, B, T, grad_scale, backward ? AV_STEP_BACKWARD | AV_STEP_DROPOUT : 0, nll_sum, n_valid);
}

av_status av_train_step_ex(av_train_ctx *c, const int32_t *ids, const int32_t *targets, int B, int T, float grad_scale, int flags,
                           double *nll_sum, int *n_valid) {
    int backward = (flags & AV_STEP_BACKWARD) != 0;
    av_model *m = c->m;
    const av_backend *be = m->be;
    const av_config *cf = &m->cfg;
    int NL = cf->n_layers, D = cf->hidden_size, V = cf->vocab_size;
    *nll_sum = 0;
    *n_valid = 0;
    if (B <= 0 || T <= 0 || B > c->max_rows || T > c->max_len)
        return av_fail(AV_ERR_ARG, "train step: batch %d x %d outside the context's %d x %d", B, T, c->max_rows, c->max_len);
    int N = B * T, nv = 0;
    for (int i = 0; i < N; i++) {
        if (ids[i] < 0 || ids[i] >= V) return av_fail(AV_ERR_ARG, "train step: token id %d (row %d, position %d) out of range [0, %d)", ids[i], i / T, i % T, V);
        if (targets[i] >= V || targets[i] < -1)
            return av_fail(AV_ERR_ARG, "train step: target %d (row %d, position %d) out of range", targets[i], i / T, i % T);
        nv += targets[i] >= 0;
    }
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) c->pos_host[b * T + t] = t;
    be->upload(c->ids_dev, ids, sizeof(int32_t) * (size_t)N);
    be->upload(c->tgt_dev, targets, sizeof(int32_t) * (size_t)N);
    be->upload(c->pos_dev, c->pos_host, sizeof(int32_t) * (size_t)N);
    size_t nd = (size_t)N * D;
    c->drop_on = (flags & AV_STEP_DROPOUT) && c->drop_p > 0 && !c->full;

    /* layers below the first trainable one ping-pong between xs[first] and xs[first + 1], ending in xs[first] */
    int F0 = c->first;
    float *pp[2] = {c->xs[F0], c->xs[F0 + 1]};
    if (c->prof) { c->m->be->sync(); c->prof_t = wall_ms(); c->prof_ph = AV_TRAIN_PH_OTHER; }
    prof_switch(c, AV_TRAIN_PH_FROZEN);
    be->embedding_forward(pp[F0 % 2], c->ids_dev, &m->embed, N);
    for (int l = 0; l < F0; l++) layer_forward(c, l, &c->acts[0], pp[(F0 - l) % 2], pp[(F0 - l + 1) % 2], B, T, 0);
    prof_switch(c, AV_TRAIN_PH_LAYER_FWD);
    for (int l = F0; l < NL; l++) layer_forward(c, l, &c->acts[c->ckpt ? 0 : l - F0], c->xs[l], c->xs[l + 1], B, T, backward);
    prof_switch(c, AV_TRAIN_PH_XENT);
    be->rmsnorm_forward(c->hidden, c->rstdf, c->xs[NL], &m->final_norm, N, D, cf->rms_norm_eps);
    if (backward) be->zero(c->dh, nd * sizeof(float));
    if (backward && c->full)
        *nll_sum = be->xent_forward_backward_dw(c->dh, c->glm, NULL, c->hidden, &m->lm_head, c->tgt_dev, N, grad_scale, c->scratch,
                                                XENT_CHUNK);
    else
        *nll_sum = be->xent_forward_backward(backward ? c->dh : NULL, NULL, c->hidden, &m->lm_head, c->tgt_dev, N, grad_scale,
                                             c->scratch, XENT_CHUNK);
    *n_valid = nv;
    if (!backward) {
        prof_switch(c, AV_TRAIN_PH_OTHER);
        c->drop_on = 0;
        return AV_OK;
    }

    prof_switch(c, AV_TRAIN_PH_LAYER_BWD);
    be->zero(c->dx, nd * sizeof(float));
    norm_backward(c, c->full ? c->gfinal : NULL, c->dh, c->xs[NL], &m->final_norm, c->rstdf, N);
    for (int l = NL - 1; l >= F0; l--) {
        const layer_acts *a = &c->acts[c->ckpt ? 0 : l - F0];
        if (c->ckpt && l != NL - 1) layer_forward(c, l, a, c->xs[l], c->xout, B, T, 1); /* recompute this layer */
        layer_backward(c, l, a, c->xs[l], B, T, c->full || l > F0);
    }
    /* the embedding: frozen with LoRA (c->dx is not needed further); scatter-added with full FT */
    if (c->full) be->embedding_backward(c->gembed, c->dx, c->ids_dev, N, D);
    prof_switch(c, AV_TRAIN_PH_OTHER);
    if (c->drop_on) c->drop_step++;
    c->drop_on = 0;
    return AV_OK;
}

av_status av_train_save_grads(av_train_ctx *c, const char *path) {
    float *host = malloc(sizeof(float) * (c->grad_floats ? c->grad_floats : 1));
    if (!host) return av_fail(AV_ERR_NOMEM, "%s: out of memory", path);
    c->m->be->download(host, c->grad_arena, sizeof(float) * c->grad_floats);
    av_st_writer w;
    av_st_writer_init(&w);
    av_status st = AV_OK;
    for (int i = 0; i < c->nparams && st == AV_OK; i++) {
        const av_param *P = &c->params[i];
        int64_t shape[2] = {P->rows, P->cols};
        st = av_st_writer_add(&w, P->name, AV_F32, 2, shape, host + (P->grad - c->grad_arena));
    }
    if (st == AV_OK) st = av_st_writer_set_metadata(&w, "{\"format\":\"pt\"}");
    if (st == AV_OK) st = av_st_writer_write(&w, path);
    av_st_writer_free(&w);
    free(host);
    return st;
}

av_status av_train_save_weights(av_train_ctx *c, const char *path) {
    size_t total = 0;
    for (int i = 0; i < c->nparams; i++) total += c->params[i].n;
    float *host = malloc(sizeof(float) * (total ? total : 1));
    if (!host) return av_fail(AV_ERR_NOMEM, "%s: out of memory", path);
    av_st_writer w;
    av_st_writer_init(&w);
    av_status st = AV_OK;
    size_t off = 0;
    for (int i = 0; i < c->nparams && st == AV_OK; i++) {
        const av_param *P = &c->params[i];
        c->m->be->download(host + off, P->data, sizeof(float) * P->n);
        int64_t shape[2] = {P->rows, P->cols};
        int vec = c->full && P->rows == 1 && strstr(P->name, "norm"); /* norms are 1-D in HF files */
        st = av_st_writer_add(&w, P->name, AV_F32, vec ? 1 : 2, vec ? shape + 1 : shape, host + off);
        off += P->n;
    }
    if (st == AV_OK) st = av_st_writer_set_metadata(&w, "{\"format\":\"pt\"}");
    if (st == AV_OK) st = av_st_writer_write(&w, path);
    av_st_writer_free(&w);
    free(host);
    return st;
}

av_status av_train_load_weights(av_train_ctx *c, const char *path) {
    av_st_file f;
    AV_TRY(av_st_open(&f, path));
    av_status st = AV_OK;
    float *host = NULL;
    for (int i = 0; i < c->nparams && st == AV_OK; i++) {
        const av_param *P = &c->params[i];
        const av_st_tensor *t = av_st_find(&f, P->name);
        if (!t) { st = av_fail(AV_ERR_FORMAT, "%s: no tensor '%s'", path, P->name); break; }
        if (av_st_numel(t) != (int64_t)P->n || (t->dtype != AV_F32 && t->dtype != AV_F16 && t->dtype != AV_BF16)) {
            st = av_fail(AV_ERR_SHAPE, "%s: '%s' has the wrong size or dtype (expected %d x %d f32/f16/bf16)", path, P->name, P->rows, P->cols);
            break;
        }
        free(host);
        host = malloc(sizeof(float) * P->n);
        if (!host) { st = av_fail(AV_ERR_NOMEM, "%s: out of memory", path); break; }
        av_mat hv = {.data = t->data, .dtype = t->dtype, .rows = P->rows, .cols = P->cols};
        av_mat_rows_to_f32(host, &hv, 0, P->rows);
        c->m->be->upload(P->data, host, sizeof(float) * P->n);
    }
    free(host);
    av_st_close(&f);
    return st;
}

/* Copies src to dst atomically (whole-file read; config and tokenizer files are small). */
static av_status copy_file(const char *src, const char *dst) {
    char *buf;
    size_t n;
    AV_TRY(av_file_read(src, &buf, &n));
    av_status st = av_write_file_atomic(dst, buf, n);
    free(buf);
    return st;
}

av_status av_train_save_model_dir(av_train_ctx *c, const char *dir) {
    av_model *m = c->m;
    if (!c->full) return av_fail(AV_ERR_ARG, "%s: a model directory is written by full fine-tuning only (LoRA saves adapters)", dir);
    if (!strcmp(dir, m->dir)) return av_fail(AV_ERR_ARG, "%s: refusing to write the trained model over the base model directory", dir);
    if (!av_dir_exists(dir) && mkdir(dir, 0755) != 0) return av_fail(AV_ERR_IO, "%s: cannot create directory", dir);
    char wpath[4200], tmp[4300], lpath[4200], src[4200], dst[4200];
    av_path_join(wpath, sizeof wpath, dir, "adapters.safetensors");
    AV_TRY(av_train_save_weights(c, wpath));
    /* adapter_config.json as MLX-LM writes for full fine-tuning */
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(cfg, "fine_tune_type", "full");
    cJSON_AddStringToObject(cfg, "model", m->dir);
    cJSON_AddNumberToObject(cfg, "num_layers", m->cfg.n_layers);
    char *js = cJSON_Print(cfg);
    cJSON_Delete(cfg);
    if (!js) return av_fail(AV_ERR_NOMEM, "out of memory");
    av_status st = av_write_file_atomic(av_path_join(dst, sizeof dst, dir, "adapter_config.json"), js, strlen(js));
    free(js);
    AV_TRY(st);
    /* a plain model directory too: config + tokenizer files, model.safetensors = the same weights */
    static const char *const files[] = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                        "special_tokens_map.json", "tokenizer.model", "added_tokens.json", "chat_template.jinja"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        av_path_join(src, sizeof src, m->dir, files[i]);
        if (!av_file_exists(src)) continue;
        AV_TRY(copy_file(src, av_path_join(dst, sizeof dst, dir, files[i])));
    }
    av_path_join(lpath, sizeof lpath, dir, "model.safetensors");
    snprintf(tmp, sizeof tmp, "%s.tmp-link", lpath);
    unlink(tmp);
    if (link(wpath, tmp) == 0) {
        if (rename(tmp, lpath) != 0) {
            unlink(tmp);
            return av_fail(AV_ERR_IO, "%s: cannot rename into place", lpath);
        }
        return AV_OK;
    }
    return copy_file(wpath, lpath); /* no hard links on this file system */
}
