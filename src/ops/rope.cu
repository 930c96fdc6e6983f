/* CUDA twin of rope.c: HF rotate-half rotary embedding in place, one thread per rotated pair;
 * positions are read from device memory (so a captured decode graph sees each step's positions). */
#include "backend/cuda_common.cuh"
extern "C" {
#include "backend/cuda.h"
}

__global__ void rope_k(float *x, const int32_t *pos, const float *inv_freq, int T, int H, int hd, float sign) {
    int half = hd / 2;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x, total = (size_t)T * H * half;
    if (idx >= total) return;
    int i = (int)(idx % half);
    size_t th = idx / half; /* t * H + h */
    int t = (int)(th / H);
    float a = (float)pos[t] * inv_freq[i], s, c;
    sincosf(a, &s, &c);
    s *= sign;
    float *v = x + th * hd;
    float p = v[i], q = v[i + half];
    v[i] = p * c - q * s;
    v[i + half] = q * c + p * s;
}

static void rope(float *x, const int32_t *pos, const float *inv_freq, int T, int H, int hd, float sign) {
    size_t total = (size_t)T * H * (hd / 2);
    if (!total) return;
    rope_k<<<av_cdiv(total, 256), 256, 0, av_cuda_stream()>>>(x, pos, inv_freq, T, H, hd, sign);
    AV_CU_LAUNCHED("rope");
}

extern "C" void av_cuda_rope_forward(float *x, const int32_t *pos, const float *inv_freq, int T, int n_heads, int head_dim) {
    rope(x, pos, inv_freq, T, n_heads, head_dim, 1.0f);
}
extern "C" void av_cuda_rope_backward(float *dx, const int32_t *pos, const float *inv_freq, int T, int n_heads, int head_dim) {
    rope(dx, pos, inv_freq, T, n_heads, head_dim, -1.0f);
}
