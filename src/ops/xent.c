/* LM head + cross-entropy, chunked over rows so the full [T, V] logits never exist at once:
 * logits for `chunk` rows -> log-softmax stats -> NLL, then (optionally) the gradient w.r.t. the
 * hidden states, (softmax - onehot) * scale @ W, before the next chunk reuses the scratch. */
#include "ops/ops.h"
#include <math.h>
#include <stdlib.h>

static double xent(float *dh, float *dW, float *row_nll, const float *h, const av_mat *W, const int32_t *targets, int T,
                   float grad_scale, float *scratch, int chunk) {
    int V = W->rows, D = W->cols;
    double total = 0;
    /* per-row NLLs summed in row order afterwards: an OpenMP reduction would add in thread
     * arrival order and make the loss differ in the last bits from run to run */
    double *rn = malloc(sizeof(double) * (size_t)chunk);
    if (!rn) return NAN;
    for (int t0 = 0; t0 < T; t0 += chunk) {
        int c = T - t0 < chunk ? T - t0 : chunk;
        av_matmul_forward(scratch, h + (size_t)t0 * D, W, c);
#pragma omp parallel for schedule(static)
        for (int r = 0; r < c; r++) {
            rn[r] = 0;
            float *lg = scratch + (size_t)r * V;
            int tgt = targets[t0 + r];
            if (tgt < 0) {
                if (row_nll) row_nll[t0 + r] = 0;
                if (dh || dW) for (int i = 0; i < V; i++) lg[i] = 0;
                continue;
            }
            float mx = lg[0];
            for (int i = 1; i < V; i++) mx = lg[i] > mx ? lg[i] : mx;
            double se = 0;
            for (int i = 0; i < V; i++) se += exp((double)(lg[i] - mx));
            double lse = mx + log(se);
            double nll = lse - lg[tgt];
            if (row_nll) row_nll[t0 + r] = (float)nll;
            rn[r] = nll;
            if (dh || dW) {
                for (int i = 0; i < V; i++) lg[i] = (float)exp(lg[i] - lse) * grad_scale;
                lg[tgt] -= grad_scale;
            }
        }
        for (int r = 0; r < c; r++) total += rn[r];
        if (dh || dW) av_matmul_backward(dh ? dh + (size_t)t0 * D : NULL, dW, scratch, h + (size_t)t0 * D, W, c);
    }
    free(rn);
    return total;
}

double av_xent_forward_backward(float *dh, float *row_nll, const float *h, const av_mat *W, const int32_t *targets,
                                int T, float grad_scale, float *scratch, int chunk) {
    return xent(dh, NULL, row_nll, h, W, targets, T, grad_scale, scratch, chunk);
}

/* The same chunk loop; the head's gradient dW += (scaled softmax - onehot)^T h per chunk. */
double av_xent_forward_backward_dw(float *dh, float *dW, float *row_nll, const float *h, const av_mat *W, const int32_t *targets,
                                   int T, float grad_scale, float *scratch, int chunk) {
    return xent(dh, dW, row_nll, h, W, targets, T, grad_scale, scratch, chunk);
}
