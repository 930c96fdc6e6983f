/* CUDA twin of dropout.c: the same stateless counter-based mask (element i of a call keyed by
 * `seed` is kept iff the top 32 bits of splitmix64(seed + (i + 1) * golden) are >= p * 2^32, the
 * threshold computed on the host exactly as the CPU does), so masks are bit-identical to the CPU's
 * and nothing is stored between the forward and the backward. */
#include "backend/cuda_common.cuh"
extern "C" {
#include "backend/cuda.h"
}

__device__ __forceinline__ uint64_t drop_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ int drop_kept(uint64_t seed, size_t i, uint32_t thr) {
    return (uint32_t)(drop_mix64(seed + ((uint64_t)i + 1) * 0x9E3779B97F4A7C15ull) >> 32) >= thr;
}

static uint32_t drop_threshold(float p) {
    double t = (double)p * 4294967296.0;
    return t <= 0 ? 0u : t >= 4294967295.0 ? 4294967295u : (uint32_t)t;
}

__global__ void dropout_fwd_k(float *out, const float *x, size_t n, uint32_t thr, float s, uint64_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = drop_kept(seed, i, thr) ? __fmul_rn(x[i], s) : 0.0f;
}

__global__ void dropout_bwd_k(float *dx, const float *dout, size_t n, uint32_t thr, float s, uint64_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        if (drop_kept(seed, i, thr)) dx[i] = __fadd_rn(dx[i], __fmul_rn(dout[i], s)); /* no FMA: as the CPU (ISO C, no contraction) */
}

static unsigned drop_blocks(size_t n) {
    size_t b = (n + 255) / 256;
    return (unsigned)(b < 65536 ? (b ? b : 1) : 65536);
}

extern "C" void av_cuda_dropout_forward(float *out, const float *x, size_t n, float p, uint64_t seed) {
    if (!n) return;
    float s = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    dropout_fwd_k<<<drop_blocks(n), 256, 0, av_cuda_stream()>>>(out, x, n, drop_threshold(p), s, seed);
    AV_CU_LAUNCHED("dropout_forward");
}

extern "C" void av_cuda_dropout_backward(float *dx, const float *dout, size_t n, float p, uint64_t seed) {
    if (!n || !dx) return;
    float s = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    dropout_bwd_k<<<drop_blocks(n), 256, 0, av_cuda_stream()>>>(dx, dout, n, drop_threshold(p), s, seed);
    AV_CU_LAUNCHED("dropout_backward");
}
