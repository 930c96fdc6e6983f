/* CUDA twin of rmsnorm.c: one block per row for the forward and dx (block reductions in f32),
 * and a column-parallel deterministic sum over rows for dw. */
#include "backend/cuda_common.cuh"
extern "C" {
#include "backend/cuda.h"
}

/* One row per block. OT = uint16_t: the bf16 output for the training products (the same sums and
 * values, rounded once here instead of by a separate conversion pass over an f32 copy). */
__device__ __forceinline__ void rms_store(float *o, float v) { *o = v; }
__device__ __forceinline__ void rms_store(uint16_t *o, float v) {
    __nv_bfloat16 b = __float2bfloat16_rn(v);
    *o = *reinterpret_cast<uint16_t *>(&b);
}
template <typename OT>
__global__ void rms_fwd_k(OT *out, float *rstd, const float *x, const void *w, av_dtype wt, int D, float eps) {
    __shared__ float sh[32];
    const float *xr = x + (size_t)blockIdx.x * D;
    float ss = 0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) ss += xr[i] * xr[i];
    ss = av_block_sum(ss, sh);
    float r = 1.0f / sqrtf(ss / (float)D + eps);
    if (rstd && threadIdx.x == 0) rstd[blockIdx.x] = r;
    OT *o = out + (size_t)blockIdx.x * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) rms_store(o + i, av_ld_w(w, wt, i) * (xr[i] * r));
}

__global__ void rms_bwd_dx_k(float *dx, const float *dout, const float *x, const void *w, av_dtype wt, const float *rstd, int D) {
    __shared__ float sh[32];
    size_t off = (size_t)blockIdx.x * D;
    const float *xr = x + off, *g = dout + off;
    float r = rstd[blockIdx.x], dot = 0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) dot += av_ld_w(w, wt, i) * g[i] * xr[i];
    dot = av_block_sum(dot, sh);
    float c = r * r * r * dot / (float)D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) dx[off + i] += r * av_ld_w(w, wt, i) * g[i] - c * xr[i];
}

__global__ void rms_bwd_dw_k(float *dw, const float *dout, const float *x, const float *rstd, int T, int D) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= D) return;
    float s = 0;
    for (int t = 0; t < T; t++) s += dout[(size_t)t * D + i] * x[(size_t)t * D + i] * rstd[t];
    dw[i] += s;
}

extern "C" void av_cuda_rmsnorm_forward(float *out, float *rstd, const float *x, const av_mat *w, int T, int D, float eps) {
    if (T <= 0) return;
    rms_fwd_k<float><<<T, D >= 2048 ? 512 : 256, 0, av_cuda_stream()>>>(out, rstd, x, w->data, w->dtype, D, eps);
    AV_CU_LAUNCHED("rmsnorm_forward");
}

extern "C" void av_cuda_rmsnorm_forward_bf16(uint16_t *out, float *rstd, const float *x, const av_mat *w, int T, int D, float eps) {
    if (T <= 0) return;
    rms_fwd_k<uint16_t><<<T, D >= 2048 ? 512 : 256, 0, av_cuda_stream()>>>(out, rstd, x, w->data, w->dtype, D, eps);
    AV_CU_LAUNCHED("rmsnorm_forward_bf16");
}

extern "C" void av_cuda_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const av_mat *w, const float *rstd,
                                         int T, int D) {
    if (T <= 0) return;
    if (dx) rms_bwd_dx_k<<<T, 256, 0, av_cuda_stream()>>>(dx, dout, x, w->data, w->dtype, rstd, D);
    if (dw) rms_bwd_dw_k<<<av_cdiv(D, 128), 128, 0, av_cuda_stream()>>>(dw, dout, x, rstd, T, D);
    AV_CU_LAUNCHED("rmsnorm_backward");
}
