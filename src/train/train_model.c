/* The training context (train_ctx.h) and its steps over B rows of length T: buffers planned as one
 * allocation; the forward runs the model's decoder layer (model/layer.c, BATCH rows) saving per-layer
 * activations (or only layer inputs with gradient checkpointing, recomputing one layer at a time in
 * the backward), the LM head + cross-entropy is chunked, and the backward runs each layer's backward
 * in exact reverse order. Gradients reach the LoRA A/B (model/lora_linear.c, with LoRA dropout) or,
 * with full fine-tuning, every weight: dW of every matmul, dw of every RMSNorm, the LM head's dW
 * from the chunked cross-entropy, and the embedding's scatter-add. */
#include "train/train_ctx.h"
#include "attention/attention.h"
#include "core/memory.h"
#include <stdlib.h>
#include <string.h>

float *av_train_ctx_alloc(av_train_ctx *c, size_t floats, const char *what) {
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
    free(c->ws.gw);
    free(c->ws.gn1);
    free(c->ws.gn2);
    for (int i = 0; i < c->nallocs; i++) c->m->be->free(c->allocs[i]);
    av_plan_release(&c->mem_params, c->m->be->free);
    av_plan_release(&c->mem_bufs, c->m->be->free);
    free(c->allocs);
    free(c->xs);
    free(c->acts);
    free(c->ws.ga);
    free(c->ws.gb);
    free(c->params);
    free(c->pos_host);
    free(c);
}

static int layer_has_adapter(const av_model *m, int l) {
    for (int p = 0; p < AV_PROJ_COUNT; p++)
        if (av_layer_proj(&m->layers[l], (av_proj)p)->lora_a) return 1;
    return 0;
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
    if (max_len > cf->max_position_embeddings) {
        int mult = (max_len + cf->max_position_embeddings - 1) / cf->max_position_embeddings; /* the hint: a whole multiple */
        return av_fail(AV_ERR_ARG,
                       "train: sequence length %d exceeds the model's %d positions (for longer contexts, linear RoPE scaling: in config.json "
                       "set \"rope_type\": \"linear\", \"factor\": %g in rope_scaling (rope_parameters in transformers-5 configs) "
                       "and \"max_position_embeddings\": %d)",
                       max_len, cf->max_position_embeddings, (cf->rope_type == AV_ROPE_LINEAR ? cf->rope_factor : 1.0) * mult,
                       mult * cf->max_position_embeddings);
    }
    av_train_ctx *c = calloc(1, sizeof *c);
    if (!c) return av_fail(AV_ERR_NOMEM, "train: out of memory");
    c->m = m;
    c->max_rows = max_rows;
    c->max_len = max_len;
    c->ckpt = grad_checkpoint != 0;
    int NL = cf->n_layers;
    c->ws.full = full != 0;
    av_status st = full ? av_train_build_params_full(c) : av_train_build_params(c);
    if (st != AV_OK) { av_train_ctx_free(c); return st; }
    c->first = 0;
    if (!c->ws.full) /* LoRA: the layers below the first adapter need no backward and no saved activations */
        while (c->first < NL - 1 && !layer_has_adapter(m, c->first)) c->first++;
    c->nsets = c->ckpt ? 1 : NL - c->first;
    size_t N = (size_t)max_rows * max_len, D = cf->hidden_size, F = cf->intermediate_size, H = cf->n_heads,
           qd = (size_t)cf->n_heads * cf->head_dim, kvd = (size_t)cf->n_kv_heads * cf->head_dim, V = cf->vocab_size,
           R = (size_t)c->max_rank, L = (size_t)max_len;
    size_t widest = D > F ? D : F;
    if (qd > widest) widest = qd;
    c->widest = widest;
    c->xs = calloc((size_t)NL + 1, sizeof(float *));
    c->acts = calloc((size_t)c->nsets, sizeof(av_layer_acts));
    c->pos_host = malloc(sizeof(int32_t) * N);
    if (!c->xs || !c->acts || !c->pos_host) { av_train_ctx_free(c); return av_fail(AV_ERR_NOMEM, "train: out of memory"); }
    /* saved activations in bf16 where the backend computes in bf16 anyway (half the memory), and its
     * 16-bit products (no conversion passes, zero fills or adds) */
    c->ws.kind = AV_ROWS_BATCH;
    c->ws.pos = NULL; /* set below with pos_dev */
    c->ws.a16 = m->be->save_acts_bf16 && m->be->store_bf16 && m->be->load_bf16;
    c->ws.mm16 = c->ws.a16 && !c->ws.full && m->be->matmul_forward_ex && m->be->matmul_backward_dx_ex && m->be->swiglu_forward_bf16 &&
                 m->be->swiglu_backward_bf16;
    av_plan *pl = &c->mem_bufs;
    for (int l = c->first; l <= NL; l++) av_plan_floats(pl, &c->xs[l], N * D);
    for (int s = 0; s < c->nsets; s++) {
        av_layer_acts *a = &c->acts[s];
        size_t h = c->ws.a16 ? 2 : 1; /* bf16: half the floats */
        av_plan_floats(pl, &a->rstd1, N);
        av_plan_floats(pl, &a->q, (N * qd + h - 1) / h);
        av_plan_floats(pl, &a->k, (N * kvd + h - 1) / h);
        av_plan_floats(pl, &a->v, (N * kvd + h - 1) / h);
        av_plan_floats(pl, &a->xmid, N * D);
        av_plan_floats(pl, &a->rstd2, N);
        av_plan_floats(pl, &a->gate, (N * F + h - 1) / h);
        av_plan_floats(pl, &a->up, (N * F + h - 1) / h);
    }
    struct { float **p; size_t n; } b[] = {
        {&c->hidden, N * D}, {&c->rstdf, N}, {&c->dh, N * D}, {&c->ws.dx, N * D}, {&c->ws.dxn, N * D}, {&c->ws.datt, N * qd},
        {&c->ws.dq, N * qd}, {&c->ws.dk, N * kvd}, {&c->ws.dv, N * kvd}, {&c->ws.dact, N * F}, {&c->ws.dgate, N * F}, {&c->ws.dup, N * F},
        {&c->ws.tmp, N * (c->ws.a16 && qd + 2 * kvd > widest ? qd + 2 * kvd : widest)}, {&c->ws.lora_tmp, N * (R + widest)}, {&c->xout, c->ckpt ? N * D : 1},
        {&c->ws.lora3, 3 * N * R}, {&c->scratch, (size_t)XENT_CHUNK * V},
        {&c->ws.xn, N * D}, {&c->ws.att, N * qd}, {&c->ws.dx16, c->ws.mm16 && m->be->rmsnorm_backward_dx16 ? (N * D + 1) / 2 : 0},
    };
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++)
        if (b[i].n) av_plan_floats(pl, b[i].p, b[i].n);
    av_plan_add(pl, &c->ids_dev, N * sizeof(int32_t));
    av_plan_add(pl, &c->tgt_dev, N * sizeof(int32_t));
    av_plan_add(pl, &c->pos_dev, N * sizeof(int32_t));
    /* flash attention where the backend has it for this shape (a B = 0 call asks): no [B, H, T, T]
     * probs; the model's attention choice STANDARD keeps the probs path (av_train_set_flash switches later) */
    c->ws.flash = m->attention != AV_ATTN_STANDARD && m->be->flash_attention_forward_batch && m->be->flash_attention_backward_batch &&
               m->be->flash_attention_forward_batch(NULL, NULL, NULL, NULL, NULL, 0, 0, cf->n_heads, cf->n_kv_heads, cf->head_dim, NULL) == 0 &&
               m->be->flash_attention_backward_batch(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, cf->n_heads, cf->n_kv_heads,
                                                     cf->head_dim, NULL, NULL, NULL) == 0;
    /* with bf16-saved activations, flash reads the saved q, k, v where the backend has that entry for this shape */
    c->ws.flash16 = c->ws.flash && c->ws.a16 && m->be->flash_attention_forward_bf16 && m->be->flash_attention_backward_bf16 &&
                    m->be->flash_attention_forward_bf16(NULL, NULL, NULL, NULL, NULL, 0, 0, cf->n_heads, cf->n_kv_heads, cf->head_dim, NULL) == 0 &&
                    m->be->flash_attention_backward_bf16(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, cf->n_heads, cf->n_kv_heads,
                                                         cf->head_dim, NULL, NULL, NULL) == 0;
    size_t nlse = (size_t)max_rows * H * L;
    if (c->ws.flash) av_plan_floats(pl, &c->ws.lse, nlse);
    /* per-set attention outputs (f32, what the flash backward reads) and adapter products: no
     * attention recompute in the backward (a few % more memory for 4-6% tok/s on an H100) */
    int keep_att = c->ws.flash, keep_xa = !c->ws.full;
    for (int s = 0; s < c->nsets; s++) {
        av_layer_acts *a = &c->acts[s];
        if (keep_att) {
            av_plan_floats(pl, &a->att, N * qd);
            av_plan_floats(pl, &a->lse, nlse);
        }
        for (int p = 0; p < AV_PROJ_COUNT && keep_xa; p++) {
            int need = 0; /* this set's layer (any trained layer with checkpointing) has an adapter on p */
            for (int l = c->ckpt ? c->first : c->first + s; l <= (c->ckpt ? NL - 1 : c->first + s) && !need; l++)
                need = av_layer_proj(&m->layers[l], (av_proj)p)->lora_a != NULL;
            if (need) av_plan_floats(pl, &a->xa[p], N * R);
        }
    }
    if (!c->ws.flash) av_plan_floats(pl, &c->ws.probs, (size_t)max_rows * H * L * L);
    int attw_own = 0;
    if (!c->ws.flash && m->be->attention_forward_batch && m->be->attention_backward_batch) {
        c->ws.attw_n = av_attention_batch_work(max_rows, max_len, cf->n_heads, cf->n_kv_heads, cf->head_dim);
        attw_own = c->ws.attw_n > N * F; /* else dup's buffer: dead around attention */
        if (attw_own) av_plan_floats(pl, &c->ws.attw, c->ws.attw_n);
    }
    av_status pst = av_backend_plan_commit(m->be, pl, "training buffers");
    int ok = pst == AV_OK;
    if (ok) {
        c->bytes += pl->total;
        if (c->ws.attw_n && !attw_own) c->ws.attw = c->ws.dup;
    }
    if (!ok) {
        av_train_ctx_free(c);
        return av_fail_prefix(pst, "train: a %d x %d batch", max_rows, max_len);
    }
    c->ws.pos = c->pos_dev;
    *out = c;
    return AV_OK;
}

void av_train_set_profile(av_train_ctx *c, int on) { c->ws.prof = on != 0; }
void av_train_profile(const av_train_ctx *c, double ms[AV_TRAIN_NPHASES]) {
    for (int i = 0; i < AV_TRAIN_NPHASES; i++) ms[i] = c->ws.prof_ms[i];
}

av_status av_train_set_flash(av_train_ctx *c, int on) {
    av_layer_ws *ws = &c->ws;
    const av_backend *be = c->m->be;
    const av_config *cf = &c->m->cfg;
    if (!on == !ws->flash) return AV_OK;
    if (on)
        return av_fail(AV_ERR_UNSUPPORTED, "train: flash attention was not planned for this context (%s)",
                       c->m->attention == AV_ATTN_STANDARD ? "the model's attention is standard" : "the backend has none for this model");
    size_t B = (size_t)c->max_rows, T = (size_t)c->max_len, N = B * T;
    if (!ws->probs && !(ws->probs = av_train_ctx_alloc(c, B * cf->n_heads * T * T, "attention probabilities")))
        return av_fail(AV_ERR_NOMEM, "train: out of memory for standard attention's probabilities");
    if (!ws->attw && be->attention_forward_batch && be->attention_backward_batch) {
        ws->attw_n = av_attention_batch_work(c->max_rows, c->max_len, cf->n_heads, cf->n_kv_heads, cf->head_dim);
        if (ws->attw_n <= N * cf->intermediate_size) ws->attw = ws->dup;
        else if (!(ws->attw = av_train_ctx_alloc(c, ws->attw_n, "attention workspace"))) return av_fail(AV_ERR_NOMEM, "train: out of memory");
    }
    for (int s = 0; s < c->nsets; s++) c->acts[s].att = c->acts[s].lse = NULL; /* one probs buffer: recompute per layer */
    ws->flash = ws->flash16 = 0;
    return AV_OK;
}

int av_train_nparams(const av_train_ctx *c) { return c->nparams; }
av_param *av_train_params(av_train_ctx *c) { return c->params; }
void av_train_zero_grads(av_train_ctx *c) { c->m->be->zero(c->grad_arena, c->grad_floats * sizeof(float)); }
size_t av_train_bytes(const av_train_ctx *c) { return c->bytes; }
int av_train_is_full(const av_train_ctx *c) { return c->ws.full; }
long long av_train_param_count(const av_train_ctx *c) { return (long long)c->grad_floats; }

av_status av_train_set_dropout(av_train_ctx *c, float p, uint64_t seed) {
    const av_backend *be = c->m->be;
    if (!(p >= 0.0f && p < 1.0f)) return av_fail(AV_ERR_ARG, "train: dropout must be in [0, 1) (got %g)", (double)p);
    if (p > 0 && c->ws.full) return av_fail(AV_ERR_ARG, "train: dropout applies to LoRA adapters; full fine-tuning has none");
    if (p > 0 && (!be->dropout_forward || !be->dropout_backward))
        return av_fail(AV_ERR_UNSUPPORTED, "train: the %s backend has no dropout op (LoRA dropout > 0 needs dropout_forward/backward)", be->name);
    if (p > 0 && !c->ws.xdrop) {
        size_t n = (size_t)c->max_rows * c->max_len * c->widest;
        c->ws.xdrop = av_train_ctx_alloc(c, n, "dropout buffers");
        c->ws.dxdrop = c->ws.xdrop ? av_train_ctx_alloc(c, n, "dropout buffers") : NULL;
        if (!c->ws.xdrop || !c->ws.dxdrop) return av_fail(AV_ERR_NOMEM, "train: out of memory for dropout buffers");
    }
    c->ws.drop_p = p;
    c->ws.drop_seed = seed;
    c->ws.drop_step = 0;
    return AV_OK;
}

void av_train_set_dropout_step(av_train_ctx *c, uint64_t step) { c->ws.drop_step = step; }

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
    c->ws.drop_on = (flags & AV_STEP_DROPOUT) && c->ws.drop_p > 0 && !c->ws.full;

    /* layers below the first trainable one ping-pong between xs[first] and xs[first + 1], ending in xs[first] */
    int F0 = c->first;
    float *pp[2] = {c->xs[F0], c->xs[F0 + 1]};
    av_layer_ws *ws = &c->ws;
    ws->B = B;
    ws->T = T;
    av_layer_prof_start(ws, be);
    av_layer_prof_switch(ws, be, AV_TRAIN_PH_FROZEN);
    be->embedding_forward(pp[F0 % 2], c->ids_dev, &m->embed, N);
    for (int l = 0; l < F0; l++) av_llama_layer_forward(m, l, ws, pp[(F0 - l) % 2], pp[(F0 - l + 1) % 2], &c->acts[0], 0);
    av_layer_prof_switch(ws, be, AV_TRAIN_PH_LAYER_FWD);
    for (int l = F0; l < NL; l++) av_llama_layer_forward(m, l, ws, c->xs[l], c->xs[l + 1], &c->acts[c->ckpt ? 0 : l - F0], backward);
    av_layer_prof_switch(ws, be, AV_TRAIN_PH_XENT);
    be->rmsnorm_forward(c->hidden, c->rstdf, c->xs[NL], &m->final_norm, N, D, cf->rms_norm_eps);
    if (backward) be->zero(c->dh, nd * sizeof(float));
    if (backward && c->ws.full)
        *nll_sum = be->xent_forward_backward_dw(c->dh, c->glm, NULL, c->hidden, &m->lm_head, c->tgt_dev, N, grad_scale, c->scratch,
                                                XENT_CHUNK);
    else
        *nll_sum = be->xent_forward_backward(backward ? c->dh : NULL, NULL, c->hidden, &m->lm_head, c->tgt_dev, N, grad_scale,
                                             c->scratch, XENT_CHUNK);
    *n_valid = nv;
    if (!backward) {
        av_layer_prof_switch(ws, be, AV_TRAIN_PH_OTHER);
        c->ws.drop_on = 0;
        return AV_OK;
    }

    av_layer_prof_switch(ws, be, AV_TRAIN_PH_LAYER_BWD);
    be->zero(c->ws.dx, nd * sizeof(float));
    av_llama_norm_backward(m, ws, ws->full ? c->gfinal : NULL, c->dh, c->xs[NL], &m->final_norm, c->rstdf, N);
    for (int l = NL - 1; l >= F0; l--) {
        const av_layer_acts *a = &c->acts[c->ckpt ? 0 : l - F0];
        if (c->ckpt && l != NL - 1) av_llama_layer_forward(m, l, ws, c->xs[l], c->xout, a, 1); /* recompute this layer */
        av_llama_layer_backward(m, l, ws, a, c->xs[l], ws->full || l > F0);
    }
    /* the embedding: frozen with LoRA (c->ws.dx is not needed further); scatter-added with full FT */
    if (c->ws.full) be->embedding_backward(c->gembed, c->ws.dx, c->ids_dev, N, D);
    av_layer_prof_switch(ws, be, AV_TRAIN_PH_OTHER);
    if (c->ws.drop_on) c->ws.drop_step++;
    c->ws.drop_on = 0;
    return AV_OK;
}
