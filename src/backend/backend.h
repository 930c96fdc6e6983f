/* The op table: one struct per backend holding memory functions and one pointer per op (forward
 * and backward), with the signatures of src/ops/ops.h and src/attention/attention.h. Model code is
 * written once against this table and never names a device. cpu.c fills it from the .c ops;
 * cuda.cu from their .cu twins. Pointers passed to ops are backend memory. */
#ifndef AV_BACKEND_H
#define AV_BACKEND_H
#include <stddef.h>
#include <stdint.h>
#include "core/plan.h"
#include "core/status.h"
#include "ops/ops.h"

/* av_device, the opaque av_backend handle and av_backend_select/_cpu/_cuda: include/anvil.h */

/* What a fused decode product (a few rows: T <= 32) does around W . in (see matmul_fused_forward). */
typedef enum { AV_GEMV_IN_X = 0, AV_GEMV_IN_RMSNORM } av_gemv_in;
typedef enum { AV_GEMV_OUT_STORE = 0, AV_GEMV_OUT_ADD, AV_GEMV_OUT_ROPE, AV_GEMV_OUT_SWIGLU } av_gemv_out;
typedef struct av_gemv_fusion {
    av_gemv_in in;        /* X: in = x; RMSNORM: in = x * rsqrt(mean(x^2) + eps) * norm, row by row */
    const av_mat *norm;   /* RMSNORM: the norm weight [K] */
    float eps;
    av_gemv_out out;      /* STORE: out = W.in; ADD: out += W.in (residual); ROPE: as STORE, then HF rotate-half
                           * RoPE on the first rope_heads * head_dim outputs of row t at position pos[t];
                           * SWIGLU: W is [gate; up] (2F rows), out[t] = silu(gate . in) * (up . in), [T, F] */
    const int32_t *pos;   /* ROPE: positions (backend memory), one per row */
    const float *inv_freq;
    int rope_heads, head_dim;
    /* 16-bit activations (only where the backend's save_acts_bf16 says its products round their
     * inputs to bf16 anyway, so nothing changes numerically): out_bf16: SWIGLU writes out as bf16;
     * in_bf16: x holds bf16 (in must be X). uint16_t behind the float pointers. */
    int in_bf16, out_bf16;
    /* STORE, greedy sampling folded into the LM head: each row's argmax (lowest index on ties, NaN
     * skipped, as the sampler at temperature 0) into argmax[t], and argmax_pos[t] += 1 where
     * argmax_pos is given. argmax_host (one row only): the id also into a ring of host-visible memory
     * (backend host_alloc), at slot (*argmax_seq)++ % argmax_ring (argmax_seq: backend memory), so
     * the host can read it without a copy being queued behind the step. */
    int32_t *argmax, *argmax_pos, *argmax_host;
    unsigned *argmax_seq;
    int argmax_ring;
} av_gemv_fusion;

struct av_backend {
    const char *name;
    av_device device;
    int host_visible; /* 1: backend memory is host memory (weights used in place from the mmap) */

    /* memory (alloc returns NULL + av_fail on failure) */
    void *(*alloc)(size_t bytes, const char *what);
    void (*free)(void *p);
    void (*upload)(void *dst, const void *src, size_t bytes);   /* host -> backend */
    void (*download)(void *dst, const void *src, size_t bytes); /* backend -> host */
    void (*copy)(void *dst, const void *src, size_t bytes);     /* backend -> backend */
    void (*zero)(void *p, size_t bytes);
    void (*sync)(void);
    size_t (*peak_bytes)(void); /* peak backend memory in use */
    /* Optional: bytes this backend can still allocate without swapping or failing (CPU: the kernel's
     * MemAvailable; CUDA: cudaMemGetInfo's free bytes plus the arena's free blocks); 0 = unknown. */
    size_t (*mem_available)(void);
    /* Optional (NULL: use download): a small download (<= 4 KB) queued behind the work issued so
     * far without waiting for it. begin returns a ticket (-1: none free, use download); end waits for
     * that copy only and writes the bytes to dst. At most 4 tickets outstanding; each ended once. */
    int (*download_begin)(const void *src, size_t bytes);
    void (*download_end)(int ticket, void *dst, size_t bytes);
    /* Optional: host memory the device reads and writes directly (mapped pinned memory): returns the
     * host address and sets *dev to the device's; host_free releases it. A download_begin with src
     * NULL and 0 bytes queues only the marker that download_end waits for (dst NULL). */
    void *(*host_alloc)(size_t bytes, void **dev);
    void (*host_free)(void *host);

    /* ops (see ops.h for semantics) */
    void (*embedding_forward)(float *out, const int32_t *ids, const av_mat *table, int T);
    void (*embedding_backward)(float *dtable, const float *dout, const int32_t *ids, int T, int D);
    void (*rmsnorm_forward)(float *out, float *rstd, const float *x, const av_mat *w, int T, int D, float eps);
    void (*rmsnorm_backward)(float *dx, float *dw, const float *dout, const float *x, const av_mat *w, const float *rstd, int T, int D);
    void (*matmul_forward)(float *out, const float *x, const av_mat *W, int T);
    void (*matmul_backward)(float *dx, float *dW, const float *dout, const float *x, const av_mat *W, int T);
    void (*rope_forward)(float *x, const int32_t *pos, const float *inv_freq, int T, int n_heads, int head_dim);
    void (*rope_backward)(float *dx, const int32_t *pos, const float *inv_freq, int T, int n_heads, int head_dim);
    void (*swiglu_forward)(float *out, const float *gate, const float *up, size_t n);
    void (*swiglu_backward)(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n);
    void (*add_inplace)(float *y, const float *x, size_t n);
    void (*add_scaled)(float *y, float a, const float *x, size_t n);
    double (*xent_forward_backward)(float *dh, float *row_nll, const float *h, const av_mat *W, const int32_t *targets, int T,
                                    float grad_scale, float *scratch, int chunk);
    void (*optim_step)(float *p, const float *g, float *s1, float *s2, int rows, int cols, const av_optim_params *o);
    void (*attention_forward)(float *out, float *probs, const float *q, const float *k, const float *v, int T, int S, int pos0,
                              int H, int KVH, int hd);
    void (*attention_backward)(float *dq, float *dk, float *dv, const float *dout, const float *probs, const float *q,
                               const float *k, const float *v, int T, int S, int pos0, int H, int KVH, int hd);

    /* ---- optional: NULL where a backend lacks them (callers fall back to the ops above) ---- */
    /* Decode attention over N sequences, one new query row each, positions on the device:
     * row i (position pos[i]) writes its new key/value rows k_new[i], v_new[i] ([N, KVH*hd]) into
     * its cache region (k_cache + i*seq_stride, row pos[i]) and attends keys 0..pos[i] of it.
     * row_stride: floats from one row of q / k_new / v_new to the next (0: packed, H*hd and KVH*hd). */
    /* Flash attention forward (attention.h: av_flash_attention_forward): no probabilities; lse [H, T]
     * or NULL. Inference prefill uses it where present: for chunks of 64+ rows (AV_ATTN_AUTO) or every
 * chunk (AV_ATTN_FLASH); AV_ATTN_STANDARD keeps attention_forward. */
    void (*flash_attention_forward)(float *out, float *lse, const float *q, const float *k, const float *v, int T, int S,
                                    int pos0, int H, int KVH, int hd);
    void (*attention_decode)(float *out, const float *q, const float *k_new, const float *v_new, float *k_cache,
                             float *v_cache, const int32_t *pos, int N, size_t seq_stride, int H, int KVH, int hd, size_t row_stride,
                             int keep, int ring);
    /* Samples ids[i] from logits[i, V] (temperature <= 0: argmax; else softmax(l/temperature) cut
     * to the top-p mass), randomness keyed by (seed, pos[i]); then pos[i] += 1 where active is
     * NULL or active[i] != 0 (pos may be NULL). All pointers are backend memory. */
    void (*sample)(int32_t *ids, const float *logits, int N, int V, float temperature, float top_p, uint64_t seed,
                   int32_t *pos, const int32_t *active);
    /* Decode-sized products (T rows): out[T, W->rows] (= or +=) in(x) . W^T, x [T, W->cols], with the
     * input transform and output transform of f fused in (16-bit weights, no adapters; equal to the
     * separate ops within the table's matmul precision). */
    void (*matmul_fused_forward)(float *out, const float *x, const av_mat *W, int T, const av_gemv_fusion *f);
    /* Capture of the ops issued between begin and end into a replayable graph (CUDA graphs).
     * launch returns 0, 1 when the graph is stale (re-capture), -1 on failure. */
    int (*graph_begin)(void);
    void *(*graph_end)(void);
    int (*graph_launch)(void *graph);
    void (*graph_free)(void *graph);

    /* ---- training extras: NULL where a backend lacks them (training code fails with av_fail
     * when a run needs one: full fine-tuning needs xent_forward_backward_dw, LoRA dropout needs
     * dropout_forward/backward) ---- */
    double (*xent_forward_backward_dw)(float *dh, float *dW, float *row_nll, const float *h, const av_mat *W,
                                       const int32_t *targets, int T, float grad_scale, float *scratch, int chunk);
    void (*dropout_forward)(float *out, const float *x, size_t n, float p, uint64_t seed);
    void (*dropout_backward)(float *dx, const float *dout, size_t n, float p, uint64_t seed);
    /* Batched training attention over B sequences of T rows (attention.h: av_attention_forward_batch;
     * the backward may overwrite probs). NULL: callers loop attention_forward/backward per sequence. */
    void (*attention_forward_batch)(float *out, float *probs, const float *q, const float *k, const float *v, int B, int T, int H,
                                    int KVH, int hd, float *work, size_t work_floats);
    void (*attention_backward_batch)(float *dq, float *dk, float *dv, const float *dout, float *probs, const float *q, const float *k,
                                     const float *v, int B, int T, int H, int KVH, int hd, float *work, size_t work_floats);
    /* Flash training attention (attention.h, "flash training attention"; the CPU's in flash.c,
     * f32; training uses it unless the model's attention is AV_ATTN_STANDARD): no
     * [B,H,T,T] probabilities; the forward writes lse [B, H, T] (or NULL), the backward recomputes the
     * softmax from it and accumulates dq, dk, dv (all required), deterministically; with rope_pos
     * (positions [B*T]) and inv_freq it instead overwrites them, dq and dk with the RoPE backward
     * applied (the rope_backward pass folded in), and with d16 also bf16 copies of dq | dk | dv
     * (d16: [B*T, H*hd] then [B*T, KVH*hd] twice). out16 (or NULL): the forward's out also in
     * bf16. Both return -1 (and do nothing) for a head_dim /
     * group they have no kernel for; a call with B = 0 only asks that. */
    int (*flash_attention_forward_batch)(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T, int H,
                                         int KVH, int hd, uint16_t *out16);
    int (*flash_attention_backward_batch)(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                                          const float *q, const float *k, const float *v, int B, int T, int H, int KVH, int hd,
                                          const int32_t *rope_pos, const float *inv_freq, uint16_t *d16);
    /* The same with q, k, v in bf16 (uint16_t, the layouts above; NULL where a backend lacks them):
     * training with bf16-saved activations hands the stored q, k, v (after RoPE) to both, so the
     * forward and the backward see the same bf16 values and neither converts them. q is unscaled
     * (the scale applies to the scores in f32); out may be NULL in the forward when out16 is given.
     * -1 (nothing done) for a shape without that entry (CUDA: head_dim 128, where converting from f32
     * measured faster); a call with B = 0 only asks. */
    int (*flash_attention_forward_bf16)(float *out, float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T,
                                        int H, int KVH, int hd, uint16_t *out16);
    int (*flash_attention_backward_bf16)(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                                         const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T, int H, int KVH, int hd,
                                         const int32_t *rope_pos, const float *inv_freq, uint16_t *d16);
    /* PyTorch's contract, bf16 throughout: dout and out (the forward's out16) as bf16 rows [B*T, H*hd], and
     * dq, dk, dv overwritten as bf16 rows only (with rope_pos: rotated back, as above). Training keeps the
     * entry above (its LoRA products read f32 gradients). NULL, or -1 (nothing done) for a shape or device
     * without the kernels (CUDA: Hopper's only); a call with B = 0 only asks. */
    int (*flash_attention_backward_bf16io)(uint16_t *dq, uint16_t *dk, uint16_t *dv, const uint16_t *dout, const uint16_t *out, const float *lse,
                                           const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T, int H, int KVH, int hd,
                                           const int32_t *rope_pos, const float *inv_freq);
    /* 16-bit activation storage (ops.h: av_store_bf16 / av_load_bf16). */
    void (*store_bf16)(uint16_t *dst, const float *src, size_t n);
    void (*load_bf16)(float *dst, const uint16_t *src, size_t n);
    /* 1: the compute rounds activations to bf16 anyway (bf16 tensor cores), so training may save
     * the activations of its layers in bf16 (half the memory; the default, AV_TRAIN_ACT_BF16=0 keeps f32);
     * 0 (CPU, exact f32): saved in f32. */
    int save_acts_bf16;
    /* 16-bit activation products and SwiGLU (NULL where a backend lacks them; the bf16 table has
     * them). Training converts one input once for the products sharing it and keeps gate, up and
     * their gradients in bf16. Each product returns -1, doing nothing, for a case it does not serve
     * (weights not bf16 or f32, bf16 output with accumulate): the caller then uses the ops above.
     * matmul_forward_ex: out[T, W->rows] = alpha x . W^T (accumulate: += into f32 out); x16 / out16:
     * x / out hold bf16 (uint16_t). f32 W (LoRA B) takes f32 x and out only.
     * matmul_backward_dx_ex: dx[T, W->cols] = dout . W (accumulate: +=), dout bf16 when dout16, dx bf16
     * (uint16_t) when dx16 (no accumulate); bf16 W only.
     * swiglu_*_bf16: swiglu_forward/backward on bf16 gate and up; the forward rounds its output to bf16,
     * the backward overwrites (not accumulates) dgate and dup with bf16 values. */
    int (*matmul_forward_ex)(void *out, int out16, const void *x, int x16, const av_mat *W, int T, float alpha, int accumulate);
    int (*matmul_backward_dx_ex)(void *dx, int dx16, int accumulate, const void *dout, int dout16, const av_mat *W, int T);
    /* matmul_forward_res: out[T, W->rows] = res + x . W^T with out != res (x bf16 when x16; bf16 W
     * only, else -1): the residual add without a copy of res into out first. */
    int (*matmul_forward_res)(float *out, const float *res, const void *x, int x16, const av_mat *W, int T);
    void (*swiglu_forward_bf16)(uint16_t *out, const uint16_t *gate, const uint16_t *up, size_t n);
    void (*swiglu_backward_bf16)(uint16_t *dgate, uint16_t *dup, const void *dout, int dout16, const uint16_t *gate, const uint16_t *up,
                                 size_t n); /* dout f32, or bf16 when dout16 */
    /* rmsnorm_forward with its output rounded to bf16 (equal to rmsnorm_forward + store_bf16): the
     * input of 16-bit products when nothing else reads the f32 normed rows. */
    void (*rmsnorm_forward_bf16)(uint16_t *out, float *rstd, const float *x, const av_mat *w, int T, int D, float eps);
    /* rmsnorm_backward's dx (no dw) plus dx16 = the updated dx rounded to bf16 (equal to rmsnorm_backward
     * + store_bf16): the next product's input without a conversion pass. */
    void (*rmsnorm_backward_dx16)(float *dx, uint16_t *dx16, const float *dout, const float *x, const av_mat *w, const float *rstd, int T,
                                  int D);
};

/* Commits a memory plan on the backend after checking its size against be->mem_available: a
 * plan that cannot fit fails before anything is allocated ("what: needs X GiB, only Y GiB of
 * <device> memory is available"), rather than an allocation the kernel later kills us for. */
av_status av_backend_plan_commit(const av_backend *be, av_plan *p, const char *what);

#endif
