/* RMSNorm as HF computes it in f32: out = x * rsqrt(mean(x^2) + eps) * w, forward and backward. */
#include "ops/ops.h"
#include <math.h>

static inline float wval(const av_mat *w, int i) {
    switch (w->dtype) {
    case AV_BF16: return av_bf16_to_f32(((const uint16_t *)w->data)[i]);
    case AV_F16: return av_f16_to_f32(((const uint16_t *)w->data)[i]);
    default: return ((const float *)w->data)[i];
    }
}

void av_rmsnorm_forward(float *out, float *rstd, const float *x, const av_mat *w, int T, int D, float eps) {
#pragma omp parallel for schedule(static) if (T > 8)
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * D;
        float *o = out + (size_t)t * D;
        float ss = 0;
        for (int i = 0; i < D; i++) ss += xr[i] * xr[i];
        float r = 1.0f / sqrtf(ss / (float)D + eps);
        if (rstd) rstd[t] = r;
        /* HF: weight * (x * r).to(input dtype); in f32 compute the cast is a no-op */
        for (int i = 0; i < D; i++) o[i] = wval(w, i) * (xr[i] * r);
    }
}

/* y_i = w_i * x_i * r, r = (mean(x^2)+eps)^-1/2
 * dx_i = r * (w_i g_i) - r^3/D * x_i * sum_j (w_j g_j x_j);  dw_i = sum_t g_i x_i r */
void av_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const av_mat *w, const float *rstd, int T, int D) {
    if (dx) {
#pragma omp parallel for schedule(static) if (T > 8)
        for (int t = 0; t < T; t++) {
            const float *xr = x + (size_t)t * D, *g = dout + (size_t)t * D;
            float r = rstd[t], dot = 0;
            for (int i = 0; i < D; i++) dot += wval(w, i) * g[i] * xr[i];
            float c = r * r * r * dot / (float)D;
            float *d = dx + (size_t)t * D;
            for (int i = 0; i < D; i++) d[i] += r * wval(w, i) * g[i] - c * xr[i];
        }
    }
    if (dw)
        for (int t = 0; t < T; t++) {
            const float *xr = x + (size_t)t * D, *g = dout + (size_t)t * D;
            for (int i = 0; i < D; i++) dw[i] += g[i] * xr[i] * rstd[t];
        }
}
