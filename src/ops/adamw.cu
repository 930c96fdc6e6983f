/* CUDA twin of adamw.c: torch.optim.AdamW step elementwise in f32; bias corrections computed on the
 * host in double exactly as the CPU op does. */
#include "backend/cuda_common.cuh"
#include <math.h>
extern "C" {
#include "backend/cuda.h"
}

__global__ void adamw_k(float *p, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2, float eps, float wd,
                        float step_size, float bc2_sqrt) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float pi = p[i] * (1.0f - lr * wd), gi = g[i];
    float mi = b1 * m[i] + (1.0f - b1) * gi;
    float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
}

extern "C" void av_cuda_adamw_step(float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2, float eps,
                                   float weight_decay, int step) {
    if (!n) return;
    double bc1 = 1.0 - pow(beta1, step), bc2 = 1.0 - pow(beta2, step);
    adamw_k<<<av_cdiv(n, 256), 256, 0, av_cuda_stream()>>>(p, g, m, v, n, lr, beta1, beta2, eps, weight_decay, (float)(lr / bc1),
                                                          (float)sqrt(bc2));
    AV_CU_LAUNCHED("adamw_step");
}
