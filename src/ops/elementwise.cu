/* CUDA twin of elementwise.c: residual adds y += x and y += a * x. */
#include "backend/cuda_common.cuh"
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
