/* Rotary position embedding in HF's rotate-half layout: for i < hd/2, pairs (x_i, x_{i+hd/2})
 * rotate by angle pos * inv_freq[i] (computed in f32 as HF does). Backward applies the inverse. */
#include "ops/ops.h"
#include <math.h>

static void rope_apply(float *x, const int32_t *pos, const float *inv_freq, int T, int H, int hd, float sign) {
    int half = hd / 2;
#pragma omp parallel for schedule(static) if (T > 8)
    for (int t = 0; t < T; t++) {
        float c[256], s[256];
        for (int i = 0; i < half; i++) {
            float a = (float)pos[t] * inv_freq[i];
            c[i] = cosf(a);
            s[i] = sign * sinf(a);
        }
        for (int h = 0; h < H; h++) {
            float *v = x + ((size_t)t * H + h) * hd;
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                v[i] = a * c[i] - b * s[i];
                v[i + half] = b * c[i] + a * s[i];
            }
        }
    }
}

void av_rope_forward(float *x, const int32_t *pos, const float *inv_freq, int T, int n_heads, int head_dim) {
    rope_apply(x, pos, inv_freq, T, n_heads, head_dim, 1.0f);
}

void av_rope_backward(float *dx, const int32_t *pos, const float *inv_freq, int T, int n_heads, int head_dim) {
    rope_apply(dx, pos, inv_freq, T, n_heads, head_dim, -1.0f);
}
