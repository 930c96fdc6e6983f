/* The training context's trainable parameters (train_ctx.h): LoRA A/B of the attached adapters with
 * PEFT names, or for full fine-tuning f32 master copies of every weight (embedding, norms,
 * projections, LM head; tied embeddings are one parameter) that the model's views point at. */
#include "train/train_ctx.h"
#include "train/lora.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

av_status av_train_build_params(av_train_ctx *c) {
    av_model *m = c->m;
    int NL = m->cfg.n_layers;
    c->ws.ga = calloc((size_t)NL * AV_PROJ_COUNT, sizeof(float *));
    c->ws.gb = calloc((size_t)NL * AV_PROJ_COUNT, sizeof(float *));
    if (!c->ws.ga || !c->ws.gb) return av_fail(AV_ERR_NOMEM, "train: out of memory");
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
    av_plan_floats(&c->mem_params, &c->grad_arena, total);
    av_status st = av_backend_plan_commit(m->be, &c->mem_params, "lora gradients");
    if (st != AV_OK) return av_fail_prefix(st, "train");
    c->bytes += c->mem_params.total;
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
                if (ab) c->ws.gb[l * AV_PROJ_COUNT + p] = P->grad;
                else c->ws.ga[l * AV_PROJ_COUNT + p] = P->grad;
            }
        }
    return AV_OK;
}

av_status av_train_build_params_full(av_train_ctx *c) {
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
    c->ws.gw = calloc((size_t)NL * AV_PROJ_COUNT, sizeof(float *));
    c->ws.gn1 = calloc((size_t)NL, sizeof(float *));
    c->ws.gn2 = calloc((size_t)NL, sizeof(float *));
    if (!c->views || !c->orig || !c->params || !c->ws.gw || !c->ws.gn1 || !c->ws.gn2) return av_fail(AV_ERR_NOMEM, "train: out of memory");
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
    av_plan_floats(&c->mem_params, &c->grad_arena, total);
    for (int i = 0; i < nv; i++) av_plan_floats(&c->mem_params, &c->params[i].data, (size_t)c->views[i]->rows * c->views[i]->cols);
    av_status pst = av_backend_plan_commit(be, &c->mem_params, "full fine-tuning gradients and f32 master weights");
    if (pst != AV_OK) return av_fail_prefix(pst, "train (%zu floats each)", total);
    c->bytes += c->mem_params.total;
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
        c->ws.gn1[l] = c->params[k++].grad;
        for (int j = 0; j < 4; j++) c->ws.gw[l * AV_PROJ_COUNT + order[j]] = c->params[k++].grad;
        c->ws.gn2[l] = c->params[k++].grad;
        for (int j = 4; j < 7; j++) c->ws.gw[l * AV_PROJ_COUNT + order[j]] = c->params[k++].grad;
    }
    c->gfinal = c->params[k++].grad;
    c->glm = c->tied ? c->gembed : c->params[k++].grad;
    return AV_OK;
}
