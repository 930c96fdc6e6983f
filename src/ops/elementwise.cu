/* CUDA twin of elementwise.c: residual adds y += x and y += a * x; bf16 store/load of activations. */
#include "backend/cuda_common.cuh"
#include <cuda_bf16.h>
extern "C" {
#include "backend/cuda.h"
}

__global__ void add_scaled_k(float *y, float a, const float *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += a * x[i];
}

extern "C" void av_cuda_add_scaled(float *y, float a, const float *x, size_t n) {
    if (!n) return;
    add_scaled_k<<<av_cdiv(n, 256), 256, 0, av_cuda_stream()>>>(y, a, x, n);
    AV_CU_LAUNCHED("add_scaled");
}
extern "C" void av_cuda_add_inplace(float *y, const float *x, size_t n) { av_cuda_add_scaled(y, 1.0f, x, n); }

/* Bit for bit the CPU's av_f32_to_bf16: round to nearest even, NaN quietened with its payload kept
 * (__float2bfloat16_rn would return the canonical NaN). */
__device__ __forceinline__ unsigned short f2bf(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

/* 4 elements per thread where the pointers allow (the training buffers are 256-byte aligned). */
__global__ void store_bf16_k(__nv_bfloat16 *dst, const float *src, size_t n, int vec) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i >= n) return;
    if (vec && i + 4 <= n) {
        float4 v = *(const float4 *)(src + i);
        uint2 w = make_uint2(f2bf(v.x) | (unsigned)f2bf(v.y) << 16, f2bf(v.z) | (unsigned)f2bf(v.w) << 16);
        *(uint2 *)(dst + i) = w;
    } else
        for (size_t e = i + 4 < n ? i + 4 : n; i < e; i++) ((unsigned short *)dst)[i] = f2bf(src[i]);
}
__global__ void load_bf16_k(float *dst, const __nv_bfloat16 *src, size_t n, int vec) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i >= n) return;
    if (vec && i + 4 <= n) {
        float2 a = __bfloat1622float2(*(const __nv_bfloat162 *)(src + i)), b = __bfloat1622float2(*(const __nv_bfloat162 *)(src + i + 2));
        *(float4 *)(dst + i) = make_float4(a.x, a.y, b.x, b.y);
    } else
        for (size_t e = i + 4 < n ? i + 4 : n; i < e; i++) dst[i] = __bfloat162float(src[i]);
}

extern "C" void av_cuda_store_bf16(uint16_t *dst, const float *src, size_t n) {
    if (!n) return;
    int vec = !((uintptr_t)src & 15) && !((uintptr_t)dst & 7);
    store_bf16_k<<<av_cdiv(av_cdiv(n, 4), 256), 256, 0, av_cuda_stream()>>>((__nv_bfloat16 *)dst, src, n, vec);
    AV_CU_LAUNCHED("store_bf16");
}
extern "C" void av_cuda_load_bf16(float *dst, const uint16_t *src, size_t n) {
    if (!n) return;
    int vec = !((uintptr_t)dst & 15) && !((uintptr_t)src & 7);
    load_bf16_k<<<av_cdiv(av_cdiv(n, 4), 256), 256, 0, av_cuda_stream()>>>(dst, (const __nv_bfloat16 *)src, n, vec);
    AV_CU_LAUNCHED("load_bf16");
}
