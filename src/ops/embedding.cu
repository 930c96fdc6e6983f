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

/* bf16 table, D % 8 == 0, rows 16-byte aligned: one 16-byte load per thread and chunk (a decode
 * step's lone row: 256 threads x 8 values, all loads in flight at once). */
__global__ void embed_fwd_bf16x8_k(float *out, const int32_t *ids, const uint4 *table, int D) {
    av_pdl_wait();
    av_pdl_launch();
    int t = blockIdx.x, n8 = D >> 3;
    const uint4 *row = table + (size_t)ids[t] * n8;
    float4 *o = reinterpret_cast<float4 *>(out + (size_t)t * D);
    for (int c = threadIdx.x; c < n8; c += blockDim.x) {
        float v[8];
        av_unpack8(row[c], AV_BF16, v);
        o[2 * c] = make_float4(v[0], v[1], v[2], v[3]);
        o[2 * c + 1] = make_float4(v[4], v[5], v[6], v[7]);
    }
}

__global__ void embed_bwd_k(float *dtable, const float *dout, const int32_t *ids, int D) {
    int t = blockIdx.x;
    float *row = dtable + (size_t)ids[t] * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) atomicAdd(row + d, dout[(size_t)t * D + d]);
}

extern "C" void av_cuda_embedding_forward(float *out, const int32_t *ids, const av_mat *table, int T) {
    if (T <= 0) return;
    if (table->q_bits) { av_cuda_qembedding_forward(out, ids, table, T); return; }
    int D = table->cols;
    if (table->dtype == AV_BF16 && D % 8 == 0 && ((uintptr_t)table->data % 16) == 0 && ((uintptr_t)out % 16) == 0) {
        av_launch(embed_fwd_bf16x8_k, dim3(T), dim3(D / 8 < 256 ? 32 * (int)av_cdiv((size_t)D / 8, 32) : 256), 0, 1, out, ids,
                  (const uint4 *)table->data, D);
        AV_CU_LAUNCHED("embedding_forward");
        return;
    }
    av_launch(embed_fwd_k, dim3(T), dim3(256), 0, 1, out, ids, table->data, table->dtype, table->cols);
    AV_CU_LAUNCHED("embedding_forward");
}

extern "C" void av_cuda_embedding_backward(float *dtable, const float *dout, const int32_t *ids, int T, int D) {
    if (T <= 0 || !dtable) return;
    embed_bwd_k<<<T, 256, 0, av_cuda_stream()>>>(dtable, dout, ids, D);
    AV_CU_LAUNCHED("embedding_backward");
}
