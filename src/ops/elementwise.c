/* Elementwise helpers: residual adds, bf16 store/load of activations. */
#include "ops/ops.h"
#include "core/dtype.h"

void av_add_inplace(float *y, const float *x, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

void av_add_scaled(float *y, float a, const float *x, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) y[i] += a * x[i];
}

void av_store_bf16(uint16_t *dst, const float *src, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) dst[i] = av_f32_to_bf16(src[i]);
}

void av_load_bf16(float *dst, const uint16_t *src, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) dst[i] = av_bf16_to_f32(src[i]);
}
