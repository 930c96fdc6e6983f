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

/* Rows of D = 4 * n4 <= 4096 floats: each of 256 threads keeps its PER float4 of the row in
 * registers (one read of x, and of dout), 16-byte loads and stores. */
__device__ __forceinline__ void rms_w4(const void *w, av_dtype wt, int i4, float *o) {
#pragma unroll
    for (int e = 0; e < 4; e++) o[e] = av_ld_w(w, wt, (size_t)4 * i4 + e);
}
__device__ __forceinline__ void rms_store4(float *o, int i4, const float *v) {
    reinterpret_cast<float4 *>(o)[i4] = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void rms_store4(uint16_t *o, int i4, const float *v) {
    __nv_bfloat162 a = __floats2bfloat162_rn(v[0], v[1]), b = __floats2bfloat162_rn(v[2], v[3]);
    reinterpret_cast<uint2 *>(o)[i4] = make_uint2(*reinterpret_cast<uint32_t *>(&a), *reinterpret_cast<uint32_t *>(&b));
}
template <typename OT, int PER>
__global__ void __launch_bounds__(256) rms_fwd4_k(OT *out, float *rstd, const float *x, const void *w, av_dtype wt, int n4, float eps) {
    __shared__ float sh[32];
    const float4 *xr = reinterpret_cast<const float4 *>(x) + (size_t)blockIdx.x * n4;
    float4 v[PER];
    float ss = 0;
#pragma unroll
    for (int p = 0; p < PER; p++) {
        int i = threadIdx.x + p * 256;
        v[p] = i < n4 ? xr[i] : make_float4(0.f, 0.f, 0.f, 0.f);
        ss += v[p].x * v[p].x + v[p].y * v[p].y + v[p].z * v[p].z + v[p].w * v[p].w;
    }
    ss = av_block_sum(ss, sh);
    float r = 1.0f / sqrtf(ss / (float)(4 * n4) + eps);
    if (rstd && threadIdx.x == 0) rstd[blockIdx.x] = r;
    OT *o = out + (size_t)blockIdx.x * 4 * n4;
#pragma unroll
    for (int p = 0; p < PER; p++) {
        int i = threadIdx.x + p * 256;
        if (i >= n4) continue;
        float g[4], y[4] = {v[p].x, v[p].y, v[p].z, v[p].w};
        rms_w4(w, wt, i, g);
#pragma unroll
        for (int e = 0; e < 4; e++) y[e] = g[e] * (y[e] * r);
        rms_store4(o, i, y);
    }
}

template <int PER>
__global__ void __launch_bounds__(256) rms_bwd_dx4_k(float *dx, const float *dout, const float *x, const void *w, av_dtype wt,
                                                     const float *rstd, int n4, uint16_t *dx16) {
    __shared__ float sh[32];
    size_t off = (size_t)blockIdx.x * n4;
    const float4 *xr = reinterpret_cast<const float4 *>(x) + off, *gr = reinterpret_cast<const float4 *>(dout) + off;
    float4 xv[PER], gv[PER];
    float r = rstd[blockIdx.x], dot = 0;
#pragma unroll
    for (int p = 0; p < PER; p++) {
        int i = threadIdx.x + p * 256;
        xv[p] = gv[p] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (i >= n4) continue;
        xv[p] = xr[i], gv[p] = gr[i];
        float wv[4];
        rms_w4(w, wt, i, wv);
        dot += wv[0] * gv[p].x * xv[p].x + wv[1] * gv[p].y * xv[p].y + wv[2] * gv[p].z * xv[p].z + wv[3] * gv[p].w * xv[p].w;
    }
    dot = av_block_sum(dot, sh);
    float c = r * r * r * dot / (float)(4 * n4);
    float4 *d4 = reinterpret_cast<float4 *>(dx) + off;
#pragma unroll
    for (int p = 0; p < PER; p++) {
        int i = threadIdx.x + p * 256;
        if (i >= n4) continue;
        float wv[4];
        rms_w4(w, wt, i, wv);
        float4 d = d4[i];
        d.x += r * wv[0] * gv[p].x - c * xv[p].x;
        d.y += r * wv[1] * gv[p].y - c * xv[p].y;
        d.z += r * wv[2] * gv[p].z - c * xv[p].z;
        d.w += r * wv[3] * gv[p].w - c * xv[p].w;
        d4[i] = d;
        if (dx16) { /* the bf16 copy the next product reads (no separate conversion pass) */
            float v[4] = {d.x, d.y, d.z, d.w};
            rms_store4(dx16 + off * 4, i, v);
        }
    }
}

/* float4 rows in registers when D % 4 == 0, D <= 4096 and the rows are 16-byte aligned */
static int rms_per(int D, const void *a, const void *b, const void *c) {
    if (D % 4 || D > 4096 || ((uintptr_t)a | (uintptr_t)b | (uintptr_t)c) % 16) return 0;
    int n4 = D / 4;
    return n4 <= 256 ? 1 : n4 <= 512 ? 2 : 4;
}

__global__ void rms_bwd_dw_k(float *dw, const float *dout, const float *x, const float *rstd, int T, int D) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= D) return;
    float s = 0;
    for (int t = 0; t < T; t++) s += dout[(size_t)t * D + i] * x[(size_t)t * D + i] * rstd[t];
    dw[i] += s;
}

template <typename OT>
static int rms_fwd4(OT *out, float *rstd, const float *x, const av_mat *w, int T, int D, float eps) {
    int per = rms_per(D, out, x, x);
    cudaStream_t st = av_cuda_stream();
    if (per == 1) rms_fwd4_k<OT, 1><<<T, 256, 0, st>>>(out, rstd, x, w->data, w->dtype, D / 4, eps);
    else if (per == 2) rms_fwd4_k<OT, 2><<<T, 256, 0, st>>>(out, rstd, x, w->data, w->dtype, D / 4, eps);
    else if (per == 4) rms_fwd4_k<OT, 4><<<T, 256, 0, st>>>(out, rstd, x, w->data, w->dtype, D / 4, eps);
    return per;
}

extern "C" void av_cuda_rmsnorm_forward(float *out, float *rstd, const float *x, const av_mat *w, int T, int D, float eps) {
    if (T <= 0) return;
    if (rms_fwd4(out, rstd, x, w, T, D, eps)) {
        AV_CU_LAUNCHED("rmsnorm_forward");
        return;
    }
    rms_fwd_k<float><<<T, D >= 2048 ? 512 : 256, 0, av_cuda_stream()>>>(out, rstd, x, w->data, w->dtype, D, eps);
    AV_CU_LAUNCHED("rmsnorm_forward");
}

extern "C" void av_cuda_rmsnorm_forward_bf16(uint16_t *out, float *rstd, const float *x, const av_mat *w, int T, int D, float eps) {
    if (T <= 0) return;
    if (rms_fwd4(out, rstd, x, w, T, D, eps)) {
        AV_CU_LAUNCHED("rmsnorm_forward_bf16");
        return;
    }
    rms_fwd_k<uint16_t><<<T, D >= 2048 ? 512 : 256, 0, av_cuda_stream()>>>(out, rstd, x, w->data, w->dtype, D, eps);
    AV_CU_LAUNCHED("rmsnorm_forward_bf16");
}

static void rms_bwd(float *dx, uint16_t *dx16, float *dw, const float *dout, const float *x, const av_mat *w, const float *rstd, int T,
                    int D) {
    if (T <= 0) return;
    int per = dx ? rms_per(D, dx, dout, x) : 0;
    if (dx16 && ((uintptr_t)dx16 % 8)) per = 0;
    cudaStream_t st = av_cuda_stream();
    if (per == 1) rms_bwd_dx4_k<1><<<T, 256, 0, st>>>(dx, dout, x, w->data, w->dtype, rstd, D / 4, dx16);
    else if (per == 2) rms_bwd_dx4_k<2><<<T, 256, 0, st>>>(dx, dout, x, w->data, w->dtype, rstd, D / 4, dx16);
    else if (per == 4) rms_bwd_dx4_k<4><<<T, 256, 0, st>>>(dx, dout, x, w->data, w->dtype, rstd, D / 4, dx16);
    else if (dx) {
        rms_bwd_dx_k<<<T, 256, 0, st>>>(dx, dout, x, w->data, w->dtype, rstd, D);
        if (dx16) av_cuda_store_bf16(dx16, dx, (size_t)T * D);
    }
    if (dw) rms_bwd_dw_k<<<av_cdiv(D, 128), 128, 0, av_cuda_stream()>>>(dw, dout, x, rstd, T, D);
    AV_CU_LAUNCHED("rmsnorm_backward");
}

extern "C" void av_cuda_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const av_mat *w, const float *rstd,
                                         int T, int D) {
    rms_bwd(dx, NULL, dw, dout, x, w, rstd, T, D);
}

extern "C" void av_cuda_rmsnorm_backward_dx16(float *dx, uint16_t *dx16, const float *dout, const float *x, const av_mat *w,
                                              const float *rstd, int T, int D) {
    rms_bwd(dx, dx16, NULL, dout, x, w, rstd, T, D);
}
