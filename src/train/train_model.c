/* Training forward + backward of the Llama model over B rows of length T through the backend
 * table: the forward saves per-layer activations (or only layer inputs with gradient
 * checkpointing, recomputing one layer at a time in the backward), the LM head + cross-entropy is
 * chunked, and the backward calls every op's backward in exact reverse order. Gradients reach
 * the LoRA A/B only (the base is frozen): for y = x W^T + s (x A^T) B^T,
 *   dB += s dy^T (x A^T),  dA += s (dy B)^T x,  dx += dy W + s (dy B) A. */
#include "train/train_model.h"
#include "attention/attention.h"
#include "core/memory.h"
#include "formats/safetensors.h"
#include "model/llama.h"
#include "train/lora.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XENT_CHUNK 32

typedef struct {
    float *xn1, *rstd1, *q, *k, *v, *probs, *att, *xmid, *xn2, *rstd2, *gate, *up, *act;
} layer_acts;

struct av_train_ctx {
    av_model *m;
    int max_rows, max_len, ckpt, nsets, max_rank;
    float **xs;        /* n_layers + 1 layer inputs/outputs [N, D] */
    layer_acts *acts;  /* n_layers sets, or 1 with checkpointing */
    float *hidden, *rstdf, *dh, *dx, *dxn, *datt, *dq, *dk, *dv, *dact, *dgate, *dup, *tmp, *lora_tmp, *xout;
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
};

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

av_status av_train_ctx_new(av_train_ctx **out, av_model *m, int max_rows, int max_len, int grad_checkpoint) {
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
    c->nsets = c->ckpt ? 1 : NL;
    av_status st = build_params(c);
    if (st != AV_OK) { av_train_ctx_free(c); return st; }
    size_t N = (size_t)max_rows * max_len, D = cf->hidden_size, F = cf->intermediate_size, H = cf->n_heads,
           qd = (size_t)cf->n_heads * cf->head_dim, kvd = (size_t)cf->n_kv_heads * cf->head_dim, V = cf->vocab_size,
           R = (size_t)c->max_rank, L = (size_t)max_len;
    size_t widest = D > F ? D : F;
    if (qd > widest) widest = qd;
    c->xs = calloc((size_t)NL + 1, sizeof(float *));
    c->acts = calloc((size_t)c->nsets, sizeof(layer_acts));
    c->pos_host = malloc(sizeof(int32_t) * N);
    if (!c->xs || !c->acts || !c->pos_host) { av_train_ctx_free(c); return av_fail(AV_ERR_NOMEM, "train: out of memory"); }
    int ok = 1;
    for (int l = 0; l <= NL && ok; l++) ok = (c->xs[l] = ctx_alloc(c, N * D, "layer inputs")) != NULL;
    for (int s = 0; s < c->nsets && ok; s++) {
        layer_acts *a = &c->acts[s];
        struct { float **p; size_t n; } b[] = {
            {&a->xn1, N * D}, {&a->rstd1, N}, {&a->q, N * qd}, {&a->k, N * kvd}, {&a->v, N * kvd},
            {&a->probs, (size_t)max_rows * H * L * L}, {&a->att, N * qd}, {&a->xmid, N * D}, {&a->xn2, N * D},
            {&a->rstd2, N}, {&a->gate, N * F}, {&a->up, N * F}, {&a->act, N * F},
        };
        for (size_t i = 0; i < sizeof b / sizeof b[0] && ok; i++) ok = (*b[i].p = ctx_alloc(c, b[i].n, "activations")) != NULL;
    }
    struct { float **p; size_t n; } b[] = {
        {&c->hidden, N * D}, {&c->rstdf, N}, {&c->dh, N * D}, {&c->dx, N * D}, {&c->dxn, N * D}, {&c->datt, N * qd},
        {&c->dq, N * qd}, {&c->dk, N * kvd}, {&c->dv, N * kvd}, {&c->dact, N * F}, {&c->dgate, N * F}, {&c->dup, N * F},
        {&c->tmp, N * widest}, {&c->lora_tmp, N * (R + widest)}, {&c->xout, c->ckpt ? N * D : 1},
        {&c->lora3, 3 * N * R}, {&c->scratch, (size_t)XENT_CHUNK * V},
    };
    for (size_t i = 0; i < sizeof b / sizeof b[0] && ok; i++) ok = (*b[i].p = ctx_alloc(c, b[i].n, "training buffers")) != NULL;
    if (ok) ok = (c->ids_dev = (int32_t *)ctx_alloc(c, N, "token ids")) && (c->tgt_dev = (int32_t *)ctx_alloc(c, N, "targets")) &&
                 (c->pos_dev = (int32_t *)ctx_alloc(c, N, "positions"));
    if (!ok) {
        av_train_ctx_free(c);
        return av_fail(AV_ERR_NOMEM, "train: out of memory for a %d x %d batch", max_rows, max_len);
    }
    *out = c;
    return AV_OK;
}

int av_train_nparams(const av_train_ctx *c) { return c->nparams; }
av_param *av_train_params(av_train_ctx *c) { return c->params; }
void av_train_zero_grads(av_train_ctx *c) { c->m->be->zero(c->grad_arena, c->grad_floats * sizeof(float)); }
size_t av_train_bytes(const av_train_ctx *c) { return c->bytes; }

/* One decoder layer forward over N = B*T rows, saving activations into a. */
static void layer_forward(av_train_ctx *c, int l, const layer_acts *a, const float *x_in, float *x_out, int B, int T) {
    av_model *m = c->m;
    const av_backend *be = m->be;
    const av_config *cf = &m->cfg;
    const av_layer *L = &m->layers[l];
    int D = cf->hidden_size, F = cf->intermediate_size, H = cf->n_heads, KVH = cf->n_kv_heads, hd = cf->head_dim, N = B * T;
    size_t qd = (size_t)H * hd, kvd = (size_t)KVH * hd;
    be->rmsnorm_forward(a->xn1, a->rstd1, x_in, &L->attn_norm, N, D, cf->rms_norm_eps);
    av_linear_forward(be, a->q, a->xn1, &L->q, N, c->lora_tmp);
    av_linear_forward(be, a->k, a->xn1, &L->k, N, c->lora_tmp);
    av_linear_forward(be, a->v, a->xn1, &L->v, N, c->lora_tmp);
    be->rope_forward(a->q, c->pos_dev, m->inv_freq, N, H, hd);
    be->rope_forward(a->k, c->pos_dev, m->inv_freq, N, KVH, hd);
    for (int b = 0; b < B; b++) {
        size_t r = (size_t)b * T;
        be->attention_forward(a->att + r * qd, a->probs + (size_t)b * H * T * T, a->q + r * qd, a->k + r * kvd, a->v + r * kvd, T, T,
                              0, H, KVH, hd);
    }
    av_linear_forward(be, c->tmp, a->att, &L->o, N, c->lora_tmp);
    be->copy(a->xmid, x_in, sizeof(float) * (size_t)N * D);
    be->add_inplace(a->xmid, c->tmp, (size_t)N * D);
    be->rmsnorm_forward(a->xn2, a->rstd2, a->xmid, &L->mlp_norm, N, D, cf->rms_norm_eps);
    av_linear_forward(be, a->gate, a->xn2, &L->gate, N, c->lora_tmp);
    av_linear_forward(be, a->up, a->xn2, &L->up, N, c->lora_tmp);
    be->swiglu_forward(a->act, a->gate, a->up, (size_t)N * F);
    av_linear_forward(be, c->tmp, a->act, &L->down, N, c->lora_tmp);
    be->copy(x_out, a->xmid, sizeof(float) * (size_t)N * D);
    be->add_inplace(x_out, c->tmp, (size_t)N * D);
}

/* Backward of one projection; gradients go to its adapter's A/B (if any). */
static void linear_backward(av_train_ctx *c, float *dx, const float *dy, const float *x, const av_linear *L, int l, av_proj p, int N) {
    av_linear_backward(c->m->be, dx, c->ga[l * AV_PROJ_COUNT + p], c->gb[l * AV_PROJ_COUNT + p], dy, x, L, N, c->lora3);
}

/* One decoder layer backward: on entry c->dx = dL/d(layer output); on exit dL/d(layer input). */
static void layer_backward(av_train_ctx *c, int l, const layer_acts *a, const float *x_in, int B, int T) {
    av_model *m = c->m;
    const av_backend *be = m->be;
    const av_config *cf = &m->cfg;
    const av_layer *L = &m->layers[l];
    int D = cf->hidden_size, F = cf->intermediate_size, H = cf->n_heads, KVH = cf->n_kv_heads, hd = cf->head_dim, N = B * T;
    size_t qd = (size_t)H * hd, kvd = (size_t)KVH * hd, nf = (size_t)N * F;
    /* x_out = xmid + down(act) */
    be->zero(c->dact, nf * sizeof(float));
    linear_backward(c, c->dact, c->dx, a->act, &L->down, l, AV_PROJ_DOWN, N);
    be->zero(c->dgate, nf * sizeof(float));
    be->zero(c->dup, nf * sizeof(float));
    be->swiglu_backward(c->dgate, c->dup, c->dact, a->gate, a->up, nf);
    be->zero(c->dxn, sizeof(float) * (size_t)N * D);
    linear_backward(c, c->dxn, c->dup, a->xn2, &L->up, l, AV_PROJ_UP, N);
    linear_backward(c, c->dxn, c->dgate, a->xn2, &L->gate, l, AV_PROJ_GATE, N);
    be->rmsnorm_backward(c->dx, NULL, c->dxn, a->xmid, &L->mlp_norm, a->rstd2, N, D);
    /* xmid = x_in + o(att) */
    be->zero(c->datt, sizeof(float) * (size_t)N * qd);
    linear_backward(c, c->datt, c->dx, a->att, &L->o, l, AV_PROJ_O, N);
    be->zero(c->dq, sizeof(float) * (size_t)N * qd);
    be->zero(c->dk, sizeof(float) * (size_t)N * kvd);
    be->zero(c->dv, sizeof(float) * (size_t)N * kvd);
    for (int b = B - 1; b >= 0; b--) {
        size_t r = (size_t)b * T;
        be->attention_backward(c->dq + r * qd, c->dk + r * kvd, c->dv + r * kvd, c->datt + r * qd, a->probs + (size_t)b * H * T * T,
                               a->q + r * qd, a->k + r * kvd, a->v + r * kvd, T, T, 0, H, KVH, hd);
    }
    be->rope_backward(c->dk, c->pos_dev, m->inv_freq, N, KVH, hd);
    be->rope_backward(c->dq, c->pos_dev, m->inv_freq, N, H, hd);
    be->zero(c->dxn, sizeof(float) * (size_t)N * D);
    linear_backward(c, c->dxn, c->dv, a->xn1, &L->v, l, AV_PROJ_V, N);
    linear_backward(c, c->dxn, c->dk, a->xn1, &L->k, l, AV_PROJ_K, N);
    linear_backward(c, c->dxn, c->dq, a->xn1, &L->q, l, AV_PROJ_Q, N);
    be->rmsnorm_backward(c->dx, NULL, c->dxn, x_in, &L->attn_norm, a->rstd1, N, D);
}

av_status av_train_step(av_train_ctx *c, const int32_t *ids, const int32_t *targets, int B, int T, float grad_scale,
                        int backward, double *nll_sum, int *n_valid) {
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

    be->embedding_forward(c->xs[0], c->ids_dev, &m->embed, N);
    for (int l = 0; l < NL; l++) layer_forward(c, l, &c->acts[c->ckpt ? 0 : l], c->xs[l], c->xs[l + 1], B, T);
    be->rmsnorm_forward(c->hidden, c->rstdf, c->xs[NL], &m->final_norm, N, D, cf->rms_norm_eps);
    if (backward) be->zero(c->dh, nd * sizeof(float));
    *nll_sum = be->xent_forward_backward(backward ? c->dh : NULL, NULL, c->hidden, &m->lm_head, c->tgt_dev, N, grad_scale, c->scratch,
                                         XENT_CHUNK);
    *n_valid = nv;
    if (!backward) return AV_OK;

    be->zero(c->dx, nd * sizeof(float));
    be->rmsnorm_backward(c->dx, NULL, c->dh, c->xs[NL], &m->final_norm, c->rstdf, N, D);
    for (int l = NL - 1; l >= 0; l--) {
        const layer_acts *a = &c->acts[c->ckpt ? 0 : l];
        if (c->ckpt && l != NL - 1) layer_forward(c, l, a, c->xs[l], c->xout, B, T); /* recompute this layer */
        layer_backward(c, l, a, c->xs[l], B, T);
    }
    /* the embedding is frozen: dL/d(embedding output) = c->dx is not needed further */
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
