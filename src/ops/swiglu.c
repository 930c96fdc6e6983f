/* SwiGLU MLP activation out = silu(gate) * up and its backward. */
#include "ops/ops.h"
#include "ops/simd.h"
#include <math.h>

void av_swiglu_forward(float *out, const float *gate, const float *up, size_t n) {
#if defined(__AVX512F__)
    size_t nb = n / 16;
    __m512 one = _mm512_set1_ps(1.0f);
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t b = 0; b < nb; b++) {
        __m512 g = _mm512_loadu_ps(gate + 16 * b);
        __m512 e = av_exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
        _mm512_storeu_ps(out + 16 * b, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), _mm512_loadu_ps(up + 16 * b)));
    }
    for (size_t i = 16 * nb; i < n; i++) {
#else
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
#endif
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

/* silu(g) = g*s, s = sigmoid(g); d silu/dg = s * (1 + g * (1 - s)) */
void av_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], s = 1.0f / (1.0f + expf(-g));
        if (dgate) dgate[i] += dout[i] * up[i] * s * (1.0f + g * (1.0f - s));
        if (dup) dup[i] += dout[i] * g * s;
    }
}
