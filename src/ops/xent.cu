/* CUDA twin of xent.c: chunked LM head + cross-entropy. Per chunk: logits by the matmul op, one block
 * per row for max / log-sum-exp / NLL and (optionally) the softmax-minus-onehot gradient in place,
 * then dh += grad @ W (and, for full fine-tuning, dW += grad^T h) by the matmul backward. The NLL sum comes back with one download per call. */
#include "backend/cuda_common.cuh"
extern "C" {
#include "backend/cuda.h"
}

__global__ void xent_rows_k(float *lg_all, int V, const int32_t *targets, float *row_nll, int want_grad, float grad_scale) {
    __shared__ float sh[32];
    int r = blockIdx.x;
    float *lg = lg_all + (size_t)r * V;
    int tgt = targets[r];
    if (tgt < 0) {
        if (threadIdx.x == 0) row_nll[r] = 0.0f;
        if (want_grad)
            for (int i = threadIdx.x; i < V; i += blockDim.x) lg[i] = 0.0f;
        return;
    }
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, lg[i]);
    mx = av_block_max(mx, sh);
    float se = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) se += expf(lg[i] - mx);
    se = av_block_sum(se, sh);
    float lse = mx + logf(se);
    float tl = lg[tgt];
    __syncthreads(); /* every thread has read lg[tgt] before the gradient overwrites it */
    if (threadIdx.x == 0) row_nll[r] = lse - tl;
    if (want_grad) {
        for (int i = threadIdx.x; i < V; i += blockDim.x) lg[i] = expf(lg[i] - lse) * grad_scale;
        __syncthreads();
        if (threadIdx.x == 0) lg[tgt] -= grad_scale;
    }
}

__global__ void sum_k(double *out, const float *v, int n) {
    __shared__ double sh[256];
    double s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += v[i];
    sh[threadIdx.x] = s;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if ((int)threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
        __syncthreads();
    }
    if (threadIdx.x == 0) *out = sh[0];
}

/* dW != NULL: also dW[V, D] += grad^T h per chunk (the head's weight gradient, full fine-tuning),
 * by the same matmul backward call that gives dh (cuBLAS). */
extern "C" double av_cuda_xent_dw_mode(float *dh, float *dW, float *row_nll, const float *h, const av_mat *W, const int32_t *targets,
                                       int T, float grad_scale, float *scratch, int chunk, int f32) {
    int V = W->rows, D = W->cols;
    if (T <= 0) return 0.0;
    char *scr = (char *)av_cuda_scratch(AV_SCR_NLL, 64 + (row_nll ? 0 : (size_t)T * sizeof(float)));
    if (!scr) return 0.0;
    double *sum_dev = (double *)scr;
    float *nll = row_nll ? row_nll : (float *)(scr + 64);
    cudaStream_t s = av_cuda_stream();
    for (int t0 = 0; t0 < T; t0 += chunk) {
        int c = T - t0 < chunk ? T - t0 : chunk;
        av_cuda_matmul_forward_mode(scratch, h + (size_t)t0 * D, W, c, f32);
        xent_rows_k<<<c, 1024, 0, s>>>(scratch, V, targets + t0, nll + t0, dh || dW, grad_scale);
        AV_CU_LAUNCHED("xent rows");
        if (dh || dW)
            av_cuda_matmul_backward_mode(dh ? dh + (size_t)t0 * D : NULL, dW, scratch, dW ? h + (size_t)t0 * D : NULL, W, c, f32);
    }
    sum_k<<<1, 256, 0, s>>>(sum_dev, nll, T);
    AV_CU_LAUNCHED("xent sum");
    double total = 0;
    av_cuda_note(cudaMemcpyAsync(&total, sum_dev, sizeof total, cudaMemcpyDeviceToHost, s), "xent download");
    av_cuda_note(cudaStreamSynchronize(s), "xent sync");
    return total;
}

extern "C" double av_cuda_xent_mode(float *dh, float *row_nll, const float *h, const av_mat *W, const int32_t *targets, int T,
                                    float grad_scale, float *scratch, int chunk, int f32) {
    return av_cuda_xent_dw_mode(dh, NULL, row_nll, h, W, targets, T, grad_scale, scratch, chunk, f32);
}
