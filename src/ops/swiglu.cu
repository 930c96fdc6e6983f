/* CUDA twin of swiglu.c: out = silu(gate) * up and its backward, elementwise (expf as the CPU). */
#include "backend/cuda_common.cuh"
extern "C" {
#include "backend/cuda.h"
}

__global__ void swiglu_fwd_k(float *out, const float *gate, const float *up, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
}

__global__ void swiglu_bwd_k(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = gate[i], s = 1.0f / (1.0f + expf(-g));
    if (dgate) dgate[i] += dout[i] * up[i] * s * (1.0f + g * (1.0f - s));
    if (dup) dup[i] += dout[i] * g * s;
}

extern "C" void av_cuda_swiglu_forward(float *out, const float *gate, const float *up, size_t n) {
    if (!n) return;
    swiglu_fwd_k<<<av_cdiv(n, 256), 256, 0, av_cuda_stream()>>>(out, gate, up, n);
    AV_CU_LAUNCHED("swiglu_forward");
}
extern "C" void av_cuda_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n) {
    if (!n || (!dgate && !dup)) return;
    swiglu_bwd_k<<<av_cdiv(n, 256), 256, 0, av_cuda_stream()>>>(dgate, dup, dout, gate, up, n);
    AV_CU_LAUNCHED("swiglu_backward");
}

/* bf16 twins for training's MLP (gate, up and the product kept in bf16): the forward rounds
 * silu(g) * u to bf16 (the down product's input); the backward overwrites dgate / dup with the bf16
 * of the f32 gradients (the gate / up products' inputs), so no zero fill and no f32 round trip. */
__device__ __forceinline__ float bf2f(uint16_t h) { return __uint_as_float((unsigned)h << 16); }
__device__ __forceinline__ uint16_t f2bf_rn(float f) {
    __nv_bfloat16 b = __float2bfloat16_rn(f);
    return *reinterpret_cast<uint16_t *>(&b);
}

__global__ void swiglu16_fwd_k(uint16_t *out, const uint16_t *gate, const uint16_t *up, size_t n) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i >= n) return;
    if (i + 4 <= n) {
        uint2 g4 = *reinterpret_cast<const uint2 *>(gate + i), u4 = *reinterpret_cast<const uint2 *>(up + i);
        uint16_t g[4] = {(uint16_t)g4.x, (uint16_t)(g4.x >> 16), (uint16_t)g4.y, (uint16_t)(g4.y >> 16)};
        uint16_t u[4] = {(uint16_t)u4.x, (uint16_t)(u4.x >> 16), (uint16_t)u4.y, (uint16_t)(u4.y >> 16)};
        uint16_t o[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float gf = bf2f(g[j]);
            o[j] = f2bf_rn(gf / (1.0f + expf(-gf)) * bf2f(u[j]));
        }
        *reinterpret_cast<uint2 *>(out + i) = make_uint2(o[0] | (unsigned)o[1] << 16, o[2] | (unsigned)o[3] << 16);
    } else
        for (; i < n; i++) {
            float gf = bf2f(gate[i]);
            out[i] = f2bf_rn(gf / (1.0f + expf(-gf)) * bf2f(up[i]));
        }
}

/* dout as f32 or bf16 (the down product's dx written in bf16 by cuBLAS) */
__device__ __forceinline__ float swd_ld(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float swd_ld(const uint16_t *p, size_t i) { return bf2f(p[i]); }
__device__ __forceinline__ float4 swd_ld4(const float *p, size_t i) { return *reinterpret_cast<const float4 *>(p + i); }
__device__ __forceinline__ float4 swd_ld4(const uint16_t *p, size_t i) {
    uint2 v = *reinterpret_cast<const uint2 *>(p + i);
    return make_float4(bf2f((uint16_t)v.x), bf2f((uint16_t)(v.x >> 16)), bf2f((uint16_t)v.y), bf2f((uint16_t)(v.y >> 16)));
}
template <typename DT>
__global__ void swiglu16_bwd_k(uint16_t *dgate, uint16_t *dup, const DT *dout, const uint16_t *gate, const uint16_t *up, size_t n) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i >= n) return;
    size_t e = i + 4 < n ? i + 4 : n;
    if (e - i == 4) {
        float4 d = swd_ld4(dout, i);
        uint2 g4 = *reinterpret_cast<const uint2 *>(gate + i), u4 = *reinterpret_cast<const uint2 *>(up + i);
        float dd[4] = {d.x, d.y, d.z, d.w};
        uint16_t g[4] = {(uint16_t)g4.x, (uint16_t)(g4.x >> 16), (uint16_t)g4.y, (uint16_t)(g4.y >> 16)};
        uint16_t u[4] = {(uint16_t)u4.x, (uint16_t)(u4.x >> 16), (uint16_t)u4.y, (uint16_t)(u4.y >> 16)};
        uint16_t dg[4], du[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float gf = bf2f(g[j]), s = 1.0f / (1.0f + expf(-gf));
            dg[j] = f2bf_rn(dd[j] * bf2f(u[j]) * s * (1.0f + gf * (1.0f - s)));
            du[j] = f2bf_rn(dd[j] * gf * s);
        }
        *reinterpret_cast<uint2 *>(dgate + i) = make_uint2(dg[0] | (unsigned)dg[1] << 16, dg[2] | (unsigned)dg[3] << 16);
        *reinterpret_cast<uint2 *>(dup + i) = make_uint2(du[0] | (unsigned)du[1] << 16, du[2] | (unsigned)du[3] << 16);
    } else
        for (; i < e; i++) {
            float gf = bf2f(gate[i]), s = 1.0f / (1.0f + expf(-gf));
            dgate[i] = f2bf_rn(swd_ld(dout, i) * bf2f(up[i]) * s * (1.0f + gf * (1.0f - s)));
            dup[i] = f2bf_rn(swd_ld(dout, i) * gf * s);
        }
}

/* The vector kernels need 16-byte aligned f32 and 8-byte aligned bf16 pointers (the training
 * buffers are 256-byte aligned); other pointers take these one-element kernels. */
static int al(const void *p, unsigned a) { return !((uintptr_t)p & (a - 1)); }

__global__ void swiglu16_fwd_scalar_k(uint16_t *out, const uint16_t *gate, const uint16_t *up, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gf = bf2f(gate[i]);
    out[i] = f2bf_rn(gf / (1.0f + expf(-gf)) * bf2f(up[i]));
}
template <typename DT>
__global__ void swiglu16_bwd_scalar_k(uint16_t *dgate, uint16_t *dup, const DT *dout, const uint16_t *gate, const uint16_t *up, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gf = bf2f(gate[i]), s = 1.0f / (1.0f + expf(-gf));
    dgate[i] = f2bf_rn(swd_ld(dout, i) * bf2f(up[i]) * s * (1.0f + gf * (1.0f - s)));
    dup[i] = f2bf_rn(swd_ld(dout, i) * gf * s);
}

extern "C" void av_cuda_swiglu_forward_bf16(uint16_t *out, const uint16_t *gate, const uint16_t *up, size_t n) {
    if (!n) return;
    if (al(out, 8) && al(gate, 8) && al(up, 8))
        swiglu16_fwd_k<<<av_cdiv(av_cdiv(n, 4), 256), 256, 0, av_cuda_stream()>>>(out, gate, up, n);
    else
        swiglu16_fwd_scalar_k<<<av_cdiv(n, 256), 256, 0, av_cuda_stream()>>>(out, gate, up, n);
    AV_CU_LAUNCHED("swiglu_forward_bf16");
}
template <typename DT>
static void swiglu16_bwd(uint16_t *dgate, uint16_t *dup, const DT *dout, const uint16_t *gate, const uint16_t *up, size_t n) {
    if (al(dgate, 8) && al(dup, 8) && al(dout, 4 * sizeof(DT)) && al(gate, 8) && al(up, 8))
        swiglu16_bwd_k<DT><<<av_cdiv(av_cdiv(n, 4), 256), 256, 0, av_cuda_stream()>>>(dgate, dup, dout, gate, up, n);
    else
        swiglu16_bwd_scalar_k<DT><<<av_cdiv(n, 256), 256, 0, av_cuda_stream()>>>(dgate, dup, dout, gate, up, n);
}
extern "C" void av_cuda_swiglu_backward_bf16(uint16_t *dgate, uint16_t *dup, const void *dout, int dout16, const uint16_t *gate,
                                             const uint16_t *up, size_t n) {
    if (!n) return;
    if (dout16) swiglu16_bwd(dgate, dup, (const uint16_t *)dout, gate, up, n);
    else swiglu16_bwd(dgate, dup, (const float *)dout, gate, up, n);
    AV_CU_LAUNCHED("swiglu_backward_bf16");
}
