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
