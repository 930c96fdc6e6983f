/* The training context's layout, shared by the files that build and run it: train_model.c (buffers,
 * steps), train_params.c (the trainable parameters: LoRA A/B or full fine-tuning's f32 masters),
 * train_io.c (parameters and gradients to and from files). Internal to src/train. */
#ifndef AV_TRAIN_CTX_H
#define AV_TRAIN_CTX_H
#include "core/plan.h"
#include "model/layer.h"
#include "train/train_model.h"

#define XENT_CHUNK 256 /* logit rows per LM-head chunk: amortises the weight conversion; 256 x V floats of scratch */

struct av_train_ctx {
    av_model *m;
    av_layer_ws ws;    /* the layers' scratch, precision choices, gradients and dropout (model/layer.h) */
    int max_rows, max_len, ckpt, nsets, max_rank;
    int first;         /* first layer with trainable parameters: layers before it run forward only */
    float **xs;        /* layer inputs/outputs [N, D], layers first..n_layers (NULL below first) */
    av_layer_acts *acts; /* one set per layer first..n_layers-1, or 1 with checkpointing */
    float *hidden, *rstdf, *dh, *xout, *scratch;
    int32_t *ids_dev, *tgt_dev, *pos_dev;
    int32_t *pos_host;
    int nparams;
    av_param *params;
    float *grad_arena;
    size_t grad_floats, bytes;
    av_plan mem_params, mem_bufs; /* one allocation each: parameters' gradients (+ f32 masters), every buffer */
    void **allocs;     /* buffers added later (dropout, standard attention), for free */
    int nallocs, cap_allocs;
    /* full fine-tuning */
    int tied;
    float *gembed, *gfinal, *glm; /* glm == gembed when tied */
    av_mat **views, *orig;  /* the model's weight views and their original values (restored on free) */
    int nviews;
    size_t widest;
};

/* Backend memory added after planning (dropout, standard attention), freed with the context. */
float *av_train_ctx_alloc(av_train_ctx *c, size_t floats, const char *what);
/* The trainable parameters: LoRA A/B of every attached adapter, or (full) f32 master copies of every
 * weight that the model's views are pointed at; gradients in one planned allocation. */
av_status av_train_build_params(av_train_ctx *c);
av_status av_train_build_params_full(av_train_ctx *c);

#endif
