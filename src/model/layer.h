/* One Llama decoder layer, forward and backward, for every path: prefill (one sequence's rows
 * appended to its KV cache), decode (one new row for each of N sequences, fused products where the
 * backend has them) and training (B rows of T tokens, activations saved for the backward, bf16
 * storage and 16-bit products where the backend computes in bf16, LoRA dropout, full fine-tuning).
 * The caller describes the rows and owns every buffer in an av_layer_ws. */
#ifndef AV_LAYER_H
#define AV_LAYER_H
#include "model/model.h"

typedef enum {
    AV_ROWS_PREFILL = 0, /* T rows of one sequence at positions p0.., K/V written into the cache */
    AV_ROWS_DECODE,      /* N rows, one per sequence, positions pos[i] (backend memory) */
    AV_ROWS_BATCH,       /* training: B sequences of T rows from position 0, no cache */
} av_rows_kind;

/* The optional profile's phases (av_layer_ws.prof) are anvil.h's AV_TRAIN_PH_*. */

/* What a trained layer's backward needs and cannot recompute cheaply (AV_ROWS_BATCH). With a16,
 * q k v gate up hold bf16 (uint16_t behind the float pointers). att/lse: the flash forward's output
 * (kept: no recompute in the backward); xa: u A^T of each adapter. */
typedef struct {
    float *rstd1, *q, *k, *v, *xmid, *rstd2, *gate, *up;
    float *att, *lse;
    float *xa[AV_PROJ_COUNT];
} av_layer_acts;

typedef struct av_layer_ws {
    av_rows_kind kind;
    int B, T;                   /* N = B * T rows (PREFILL: B = 1; DECODE: T = 1) */
    const int32_t *pos;         /* backend memory [N] */
    /* KV cache (PREFILL, DECODE): layer l's region at + l * layer_stride; DECODE: sequence i at
     * + i * seq_stride; PREFILL rows start at p0 */
    float *k_cache, *v_cache;
    size_t layer_stride, seq_stride;
    int p0;
    /* a rotating KV cache (MLX-LM's RotatingKVCache, attention/kv_ring.h; ring = 0: none): DECODE
     * writes row av_kv_ring_slot(pos, ring_keep, ring) and attends the valid rows; PREFILL rows are
     * linear (p0.. holds the chunk, RoPE at pos) and each query sees at most the ring rows before it,
     * itself included (MLX's sliding-window mask over the rows) */
    int ring, ring_keep;
    const int32_t *host_pos;    /* DECODE on a backend without attention_decode: positions on the host */
    /* forward scratch, [N, *] rows: xn D, q H*hd, k v KVH*hd, att H*hd, tmp widest, gate up F,
     * lora_tmp (R + widest) */
    float *xn, *q, *k, *v, *att, *tmp, *gate, *up, *lora_tmp;
    float *qkv, *gu;            /* DECODE: outputs of the fused q|k|v and gate|up products (NULL: no fusion) */
    /* ---- AV_ROWS_BATCH (training) ---- */
    int a16, mm16, full, flash; /* see train_model.c */
    int flash16;                /* flash attention on the bf16-saved q, k, v themselves, forward and backward:
                                 * the same bf16 values in both, no conversion passes */
    float *dx, *dxn, *datt, *dq, *dk, *dv, *dact, *dgate, *dup, *dx16, *lora3, *probs, *lse, *attw;
    size_t attw_n;
    int dx16_ok;
    float **ga, **gb;           /* [n_layers * AV_PROJ_COUNT]: gradient of each adapter's A / B (NULL: none) */
    float **gw, **gn1, **gn2;   /* full fine-tuning: dW of each projection, dw of each layer's two norms */
    /* LoRA dropout on this step */
    int drop_on;
    float drop_p;
    uint64_t drop_seed, drop_step;
    float *xdrop, *dxdrop;
    /* phase profile (prof != 0) */
    int prof, prof_ph;
    double prof_t, prof_ms[AV_TRAIN_NPHASES];
} av_layer_ws;

/* Layer l over ws's rows: x_out = layer(x_in) (x_out may equal x_in). acts: where a trained layer
 * saves what its backward reads (save != 0), or its scratch (frozen layers, evaluation); NULL for
 * inference (PREFILL / DECODE). */
void av_llama_layer_forward(const av_model *m, int l, av_layer_ws *ws, const float *x_in, float *x_out, const av_layer_acts *acts,
                            int save);
/* Backward of layer l (AV_ROWS_BATCH): on entry ws->dx = dL/d(output), on exit dL/d(input) when
 * need_dx; gradients accumulate into ws's ga/gb (LoRA) or gw/gn1/gn2 (full fine-tuning). */
void av_llama_layer_backward(const av_model *m, int l, av_layer_ws *ws, const av_layer_acts *acts, const float *x_in, int need_dx);
/* The RMSNorm backward into ws->dx (+= ; dw: the weight's gradient or NULL), with ws->dx16 (the
 * bf16 copy the next 16-bit product reads) where it applies: the layers' norms and the final one. */
void av_llama_norm_backward(const av_model *m, av_layer_ws *ws, float *dw, const float *dout, const float *x, const av_mat *w,
                            const float *rstd, int N);
/* Every layer in place over x (inference): x <- layer_{n-1}(... layer_0(x)). */
void av_llama_layers_forward(const av_model *m, av_layer_ws *ws, float *x);

/* Starts the profile's clock (sync) in phase "other". */
void av_layer_prof_start(av_layer_ws *ws, const av_backend *be);
/* The profile: charges the time since the last switch to the current phase; returns the phase left. */
int av_layer_prof_switch(av_layer_ws *ws, const av_backend *be, int phase);

/* Widest row of the scratch buffers (max of hidden, intermediate, H*hd) and the largest adapter rank. */
size_t av_layer_widest(const av_config *c);
int av_model_max_lora_rank(const av_model *m);

#endif
