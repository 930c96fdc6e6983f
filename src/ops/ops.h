/* Every op's signature: the contract that the CPU (.c) and CUDA (.cu) implementations share.
 * Conventions (as llm.c): outputs first; plain pointers; shapes in the signature; row-major;
 * activations are f32; weights are av_mat views (f32/f16/bf16, later quantized).
 * Forward ops overwrite their outputs. Backward ops ACCUMULATE (+=) into their gradient outputs
 * (callers zero them), and a NULL gradient pointer means "not needed". */
#ifndef AV_OPS_H
#define AV_OPS_H
#include <stddef.h>
#include <stdint.h>
#include "core/dtype.h"

/* A weight matrix in PyTorch Linear layout: rows = out_features, cols = in_features.
 * Vectors (norm weights) are rows = 1. data is a host pointer on the CPU backend and a device
 * pointer on CUDA. Quantized (MLX affine) weights set q_bits/q_group and scales/biases: data is then
 * the packed uint32 words [rows, cols*q_bits/32] and dtype the dtype of scales/biases [rows, cols/q_group]. */
/* A GGUF K-quant's own two-level scales, kept beside the f32 scales/biases of its repack (CPU only):
 * the decode kernel reads these instead, the same values in 4-5x fewer bytes. Group g's scale is
 * d[g / per] * sc[g]; its bias -(dmin[g / per] * m[g]) (Q4_K/Q5_K: per 8, u8 sc and m) or -32 * scale
 * (Q6_K: sym, per 16, i8 sc). g counts groups over the whole matrix (row * cols/q_group + group). */
typedef struct {
    const void *sc, *m;
    const float *d, *dmin;
    int per, sym;
} av_kscales;

typedef struct {
    const void *data;
    av_dtype dtype;
    int rows, cols;
    int q_bits, q_group;
    const void *scales, *biases;
    const av_kscales *ks; /* NULL but for K-quants from a GGUF file on the CPU */
} av_mat;

/* A linear layer with an optional LoRA adapter: y = x W^T + scale * (x A^T) B^T.
 * A is [rank, in], B is [out, rank], f32 (trainable). */
typedef struct {
    av_mat w;
    float *lora_a, *lora_b;
    int rank;
    float scale;
} av_linear;

/* ---- embedding ---- out[T, D] = table[ids[t], :] */
void av_embedding_forward(float *out, const int32_t *ids, const av_mat *table, int T);
/* dtable[V, D] += scatter of dout rows (f32 table gradient; full fine-tuning only) */
void av_embedding_backward(float *dtable, const float *dout, const int32_t *ids, int T, int D);

/* ---- RMSNorm (HF): out = x * rsqrt(mean(x^2) + eps) * w; rstd[T] saved if non-NULL ---- */
void av_rmsnorm_forward(float *out, float *rstd, const float *x, const av_mat *w, int T, int D, float eps);
void av_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const av_mat *w, const float *rstd, int T, int D);

/* ---- matmul: out[T, rows] = x[T, cols] W^T ---- */
void av_matmul_forward(float *out, const float *x, const av_mat *W, int T);
/* dx[T, cols] += dout[T, rows] W ; dW[rows, cols] += dout^T x (f32, may be NULL) */
void av_matmul_backward(float *dx, float *dW, const float *dout, const float *x, const av_mat *W, int T);

/* ---- RoPE, HF rotate-half layout, in place on x[T, n_heads * head_dim]; position of row t is pos[t] ---- */
void av_rope_forward(float *x, const int32_t *pos, const float *inv_freq, int T, int n_heads, int head_dim);
/* in place: dx <- R(pos)^T dx (the inverse rotation) */
void av_rope_backward(float *dx, const int32_t *pos, const float *inv_freq, int T, int n_heads, int head_dim);

/* ---- SwiGLU: out = silu(gate) * up, elementwise over n ---- */
void av_swiglu_forward(float *out, const float *gate, const float *up, size_t n);
void av_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n);

/* ---- residual: y += x;  y += a * x ---- */
void av_add_inplace(float *y, const float *x, size_t n);
void av_add_scaled(float *y, float a, const float *x, size_t n);

/* ---- 16-bit activation storage: dst[i] = bf16(src[i]) (round to nearest even, NaN kept NaN);
 * dst[i] = f32(src[i]) (exact). Training saves activations with them where the compute is bf16. ---- */
void av_store_bf16(uint16_t *dst, const float *src, size_t n);
void av_load_bf16(float *dst, const uint16_t *src, size_t n);

/* ---- cross-entropy over a linear head, chunked so [T, V] logits never exist at once.
 * For each row t with targets[t] >= 0: nll_t = logsumexp(h_t W^T) - (h_t W^T)[target].
 * Returns the sum of nll over valid rows; per-row nll into row_nll if non-NULL (0 for ignored).
 * If dh != NULL: dh[T, D] += grad_scale * (softmax - onehot) W   (grad_scale = 1/num_valid for a mean).
 * scratch holds chunk * V floats. */
double av_xent_forward_backward(float *dh, float *row_nll, const float *h, const av_mat *W, const int32_t *targets,
                                int T, float grad_scale, float *scratch, int chunk);

/* ---- cross-entropy as above that also accumulates the head's weight gradient, chunk by chunk:
 * dW[V, D] += grad_scale * (softmax - onehot)^T h (f32, may be NULL; used by full fine-tuning).
 * With dW == NULL it is av_xent_forward_backward exactly. */
double av_xent_forward_backward_dw(float *dh, float *dW, float *row_nll, const float *h, const av_mat *W, const int32_t *targets,
                                   int T, float grad_scale, float *scratch, int chunk);

/* ---- inverted dropout (LoRA dropout, training only): out = x * mask / (1 - p), mask[i] kept with
 * probability 1 - p, a pure function of (seed, i) (counter-based hash: nothing saved, the backward
 * regenerates it; same seed -> same mask on every backend). out may alias x. 0 <= p < 1. ---- */
void av_dropout_forward(float *out, const float *x, size_t n, float p, uint64_t seed);
/* dx += dout * mask / (1 - p) with the forward's mask for the same (seed, n, p) */
void av_dropout_backward(float *dx, const float *dout, size_t n, float p, uint64_t seed);
/* Host helper: a well-mixed key for one dropout call from (seed, a, b), e.g. (run seed, step, site). */
uint64_t av_dropout_key(uint64_t seed, uint64_t a, uint64_t b);

/* ---- optimizers: one update of an f32 parameter [rows, cols] from its gradient, with the update
 * rules and defaults of MLX's mlx.optimizers (Adam, AdamW, SGD, Adafactor). State: s1, s2 as sized by
 * av_optim_state_size (NULL when 0): adam/adamw s1 = m, s2 = v; sgd s1 = momentum buffer; adafactor
 * s1 = exp_avg (beta_1 set), s2 = exp_avg_sq_row[rows] then exp_avg_sq_col[cols] when rows, cols >= 2
 * (factored, as MLX for 2-D arrays; a dimension of 1 gives the same numbers unfactored) else
 * exp_avg_sq[n]. ---- */
/* av_optim_kind, av_optim_params, av_optim_defaults/_name/_parse: include/anvil.h */
/* Floats of state s1 (which = 0) or s2 (which = 1) for a [rows, cols] parameter (0 = none). */
size_t av_optim_state_size(const av_optim_params *o, int rows, int cols, int which);
void av_optim_step(float *p, const float *g, float *s1, float *s2, int rows, int cols, const av_optim_params *o);

/* ---- fused decode product (backend matmul_fused_forward; av_gemv_fusion: backend/backend.h):
 * out[T, W->rows] (= or +=) in(x) . W^T with the fusion's input and output transforms, composed
 * from the ops above (matmul_fused.c; the CUDA twin fuses them into one kernel) ---- */
struct av_gemv_fusion;
void av_matmul_fused_forward(float *out, const float *x, const av_mat *W, int T, const struct av_gemv_fusion *f);

/* ---- small helpers used by several ops ---- */
/* Dot product of f32 x with one weight row of any supported dtype. */
float av_dot_row(const float *x, const av_mat *W, int row);
/* The decode product over a row range, single-threaded (callers split rows across their threads):
 * out[t*ldo + (r - r0)] = x[t*ldx .. +cols) . W[r] for t < nx, r0 <= r < r1; each weight row is read
 * once for all nx rows of x. Any dtype (quantized: per-row dots). */
void av_matvec_rows(float *out, size_t ldo, const float *x, size_t ldx, int nx, const av_mat *W, int r0, int r1);
/* Converts weight rows [r0, r0+nr) to f32 into dst[nr, cols]. */
void av_mat_rows_to_f32(float *dst, const av_mat *W, int r0, int nr);

#endif
