/* Prefill GEMM for 16-bit/f32 or quantized weights without BLAS packing overheads: out[T, N] = x[T, K] W^T.
 * AVX-512 or AVX2 + FMA; returns 0 when it cannot run (neither, out of memory) so callers fall back. */
#ifndef AV_GEMM_H
#define AV_GEMM_H
#include "ops/ops.h"
int av_gemm_wt(float *out, const float *x, const av_mat *W, int T);
/* The same for bf16 weights on AMX with x split into three bf16 terms: products to f32 accuracy (short
 * prompts, where the two-term split's 2^-16 shows). 0 when AMX or the shape is not there. */
int av_gemm_wt_exact(float *out, const float *x, const av_mat *W, int T);
/* dx[T, K] += dout[T, N] . W[N, K] for bf16 W on AMX, dout in three bf16 terms (f32-accurate); 0 when
 * AMX, the dtype or the shape (N, K multiples of 32) is not there. */
int av_gemm_dx_exact(float *dx, const float *dout, const av_mat *W, int T);
/* The same for packed (quantized) or f16 W: rows converted to f32 a chunk at a time, W and dout each
 * split into two bf16 terms (~2^-16 of each product, as av_gemm_wt on such weights). */
int av_gemm_dx(float *dx, const float *dout, const av_mat *W, int T);
#endif
