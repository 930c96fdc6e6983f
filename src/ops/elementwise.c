/* Elementwise helpers: residual adds. */
#include "ops/ops.h"

void av_add_inplace(float *y, const float *x, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

void av_add_scaled(float *y, float a, const float *x, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) y[i] += a * x[i];
}
