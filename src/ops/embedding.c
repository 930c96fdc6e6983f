/* Token embedding lookup (forward) and its scatter-add gradient (backward). */
#include "ops/ops.h"

void av_embedding_forward(float *out, const int32_t *ids, const av_mat *table, int T) {
    int D = table->cols;
#pragma omp parallel for schedule(static) if (T > 16)
    for (int t = 0; t < T; t++) av_mat_rows_to_f32(out + (size_t)t * D, table, ids[t], 1);
}

void av_embedding_backward(float *dtable, const float *dout, const int32_t *ids, int T, int D) {
    for (int t = 0; t < T; t++) { /* sequential: ids may repeat */
        float *row = dtable + (size_t)ids[t] * D;
        const float *g = dout + (size_t)t * D;
        for (int d = 0; d < D; d++) row[d] += g[d];
    }
}
