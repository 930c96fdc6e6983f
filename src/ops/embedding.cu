/* CUDA twin of embedding.c: row gather from a (f32/f16/bf16) table into f32 activations, and the
 * scatter-add gradient (atomic adds: ids may repeat). */
#include "backend/cuda_common.cuh"
extern "C" {
#include "backend/cuda.h"
}

__global__ void embed_fwd_k(float *out, const int32_t *ids, const void *table, av_dtype dt, int D) {
    av_pdl_wait();
    av_pdl_launch();
    int t = blockIdx.x;
    size_t row = (size_t)ids[t] * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) out[(size_t)t * D + d] = av_ld_w(table, dt, row + d);
}

__global__ void embed_bwd_k(float *dtable, const float *dout, const int32_t *ids, int D) {
    int t = blockIdx.x;
    float *row = dtable + (size_t)ids[t] * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) atomicAdd(row + d, dout[(size_t)t * D + d]);
}

extern "C" void av_cuda_embedding_forward(float *out, const int32_t *ids, const av_mat *table, int T) {
    if (T <= 0) return;
    av_launch(embed_fwd_k, dim3(T), dim3(256), 0, 1, out, ids, table->data, table->dtype, table->cols);
    AV_CU_LAUNCHED("embedding_forward");
}

extern "C" void av_cuda_embedding_backward(float *dtable, const float *dout, const int32_t *ids, int T, int D) {
    if (T <= 0 || !dtable) return;
    embed_bwd_k<<<T, 256, 0, av_cuda_stream()>>>(dtable, dout, ids, D);
    AV_CU_LAUNCHED("embedding_backward");
}
