/* CUDA-specific entry points beyond the op table: the backend with a chosen compute dtype
 * (bf16 tensor cores, or exact f32 for tight comparisons), device status/name, peak reset, and the
 * .cu ops under their own names (same signatures as the CPU ops; pointers are device memory).
 * Without CUDA in the build the functions of the first block exist and fail cleanly. */
#ifndef AV_CUDA_H
#define AV_CUDA_H
#include <stddef.h>
#include <stdint.h>
#include "backend/backend.h"

/* av_backend_cuda_dtype, av_cuda_status, av_cuda_device_name: include/anvil.h */
/* Device bytes held by the arena now; restart peak tracking from the current level. */
size_t av_cuda_held_bytes(void);
void av_cuda_reset_peak(void);
/* Score-buffer budget (floats) of the inference attention's row chunks (tests shrink it; 0 = default). */
void av_cuda_set_attention_chunk(size_t floats);
/* The backend's matmul_fused_forward: f32 != 0 keeps f32 arithmetic (one row fused: exact f32, or x as
 * two int8 digits on 4/8-bit codes, as the CPU's decode; more rows through the separate exact ops); 0
 * also runs 2..32 rows on bf16 tensor cores. No-op without CUDA. */
void av_cuda_matmul_fused_forward_mode(float *out, const float *x, const av_mat *W, int T, const av_gemv_fusion *f, int f32);

#ifdef AV_HAVE_CUDA
void av_cuda_embedding_forward(float *out, const int32_t *ids, const av_mat *table, int T);
void av_cuda_embedding_backward(float *dtable, const float *dout, const int32_t *ids, int T, int D);
void av_cuda_rmsnorm_forward(float *out, float *rstd, const float *x, const av_mat *w, int T, int D, float eps);
void av_cuda_rmsnorm_forward_bf16(uint16_t *out, float *rstd, const float *x, const av_mat *w, int T, int D, float eps);
void av_cuda_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const av_mat *w, const float *rstd, int T, int D);
void av_cuda_rmsnorm_backward_dx16(float *dx, uint16_t *dx16, const float *dout, const float *x, const av_mat *w, const float *rstd, int T,
                                   int D);
/* f32 != 0: exact f32 arithmetic; 0: bf16 tensor cores for T > 8 (decode-sized T uses an exact GEMV). */
void av_cuda_matmul_forward_mode(float *out, const float *x, const av_mat *W, int T, int f32);
void av_cuda_matmul_backward_mode(float *dx, float *dW, const float *dout, const float *x, const av_mat *W, int T, int f32);
/* The bf16 table's 16-bit activation products (backend.h: matmul_forward_ex, matmul_backward_dx_ex). */
int av_cuda_matmul_forward_ex(void *out, int out16, const void *x, int x16, const av_mat *W, int T, float alpha, int accumulate);
int av_cuda_matmul_backward_dx_ex(void *dx, int dx16, int accumulate, const void *dout, int dout16, const av_mat *W, int T);
int av_cuda_matmul_forward_res(float *out, const float *res, const void *x, int x16, const av_mat *W, int T);
/* Products on MLX affine-quantized weights (quant/affine.cu): what matmul_forward_mode,
 * matmul_backward_mode (dx) and embedding_forward run for a W with q_bits. */
void av_cuda_qmatmul_forward(float *out, const float *x, const av_mat *W, int T, int f32);
void av_cuda_qmatmul_backward_dx(float *dx, const float *dout, const av_mat *W, int T, int f32);
void av_cuda_qembedding_forward(float *out, const int32_t *ids, const av_mat *table, int T);
/* src[n] rounded to bf16 into scratch slot `slot` (cuda_common.cuh AV_SCR_*); NULL when out of memory. */
uint16_t *av_cuda_to_bf16(int slot, const float *src, size_t n);
void av_cuda_rope_forward(float *x, const int32_t *pos, const float *inv_freq, int T, int n_heads, int head_dim);
void av_cuda_rope_backward(float *dx, const int32_t *pos, const float *inv_freq, int T, int n_heads, int head_dim);
void av_cuda_swiglu_forward(float *out, const float *gate, const float *up, size_t n);
void av_cuda_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n);
void av_cuda_swiglu_forward_bf16(uint16_t *out, const uint16_t *gate, const uint16_t *up, size_t n);
void av_cuda_swiglu_backward_bf16(uint16_t *dgate, uint16_t *dup, const void *dout, int dout16, const uint16_t *gate, const uint16_t *up,
                                  size_t n);
void av_cuda_add_inplace(float *y, const float *x, size_t n);
void av_cuda_add_scaled(float *y, float a, const float *x, size_t n);
void av_cuda_store_bf16(uint16_t *dst, const float *src, size_t n);
void av_cuda_load_bf16(float *dst, const uint16_t *src, size_t n);
double av_cuda_xent_mode(float *dh, float *row_nll, const float *h, const av_mat *W, const int32_t *targets, int T,
                         float grad_scale, float *scratch, int chunk, int f32);
/* av_cuda_xent_mode that also accumulates the head's gradient dW (xent_forward_backward_dw; dW may be NULL). */
double av_cuda_xent_dw_mode(float *dh, float *dW, float *row_nll, const float *h, const av_mat *W, const int32_t *targets, int T,
                            float grad_scale, float *scratch, int chunk, int f32);
void av_cuda_dropout_forward(float *out, const float *x, size_t n, float p, uint64_t seed);
void av_cuda_dropout_backward(float *dx, const float *dout, size_t n, float p, uint64_t seed);
void av_cuda_optim_step(float *p, const float *g, float *s1, float *s2, int rows, int cols, const av_optim_params *o);
void av_cuda_attention_forward_mode(float *out, float *probs, const float *q, const float *k, const float *v, int T, int S,
                                    int pos0, int H, int KVH, int hd, int f32);
void av_cuda_attention_backward_mode(float *dq, float *dk, float *dv, const float *dout, const float *probs, const float *q,
                                     const float *k, const float *v, int T, int S, int pos0, int H, int KVH, int hd, int f32);
/* bf16 tensor-core flash attention (flash.cu); head_dim 64 or 128, else the standard kernel (lse unset). */
void av_cuda_flash_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, int T, int S, int pos0,
                                     int H, int KVH, int hd);
/* Flash training attention over B sequences (backend.h: flash_attention_forward_batch /
 * flash_attention_backward_batch; flash.cu, flash_bwd.cu): head_dim 64 or 128, else -1 and nothing done. */
int av_cuda_flash_attention_forward_batch(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T, int H,
                                          int KVH, int hd, uint16_t *out16);
int av_cuda_flash_attention_backward_batch(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                                           const float *q, const float *k, const float *v, int B, int T, int H, int KVH, int hd,
                                           const int32_t *rope_pos, const float *inv_freq, uint16_t *d16);
/* The same from bf16 q, k, v (backend.h: flash_attention_forward_bf16 / _backward_bf16). */
int av_cuda_flash_attention_forward_bf16(float *out, float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T, int H,
                                         int KVH, int hd, uint16_t *out16);
int av_cuda_flash_attention_backward_bf16(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                                          const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T, int H, int KVH, int hd,
                                          const int32_t *rope_pos, const float *inv_freq, uint16_t *d16);
/* bf16 out, dout and gradients (backend.h: flash_attention_backward_bf16io); Hopper only, else -1. */
int av_cuda_flash_attention_backward_bf16io(uint16_t *dq, uint16_t *dk, uint16_t *dv, const uint16_t *dout, const uint16_t *out,
                                            const float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T, int H,
                                            int KVH, int hd, const int32_t *rope_pos, const float *inv_freq);
/* Batched training attention (attention.h: av_attention_forward_batch / av_attention_backward_batch). */
void av_cuda_attention_forward_batch_mode(float *out, float *probs, const float *q, const float *k, const float *v, int B, int T, int H,
                                          int KVH, int hd, float *work, size_t work_floats, int f32);
void av_cuda_attention_backward_batch_mode(float *dq, float *dk, float *dv, const float *dout, float *probs, const float *q,
                                           const float *k, const float *v, int B, int T, int H, int KVH, int hd, float *work,
                                           size_t work_floats, int f32);
/* Split-KV decode attention (attention/decode_split.cu) for long caches; 0 (nothing launched) when
 * the shape or the cache length is not one it takes. */
int av_cuda_attention_decode_split(float *out, const float *q, const float *k_new, const float *v_new, float *k_cache, float *v_cache,
                                   const int32_t *pos, int N, size_t seq_stride, int H, int KVH, int hd, size_t qrow, size_t knrow, int keep,
                                   int ring);
void av_cuda_attention_decode(float *out, const float *q, const float *k_new, const float *v_new, float *k_cache,
                              float *v_cache, const int32_t *pos, int N, size_t seq_stride, int H, int KVH, int hd, size_t row_stride,
                              int keep, int ring);
void av_cuda_sample(int32_t *ids, const float *logits, int N, int V, float temperature, float top_p, uint64_t seed,
                    int32_t *pos, const int32_t *active);
#endif
#endif
