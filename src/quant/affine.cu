/* Products on MLX affine-quantized weights on the GPU (the CUDA twin of the quantized paths of
 * ops/matmul.c and ops/embedding.c). Weights stay packed in device memory:
 * - up to 8 rows (decode of a few sequences, the LM head of one): a GEMV that reads each packed row
 *   once for all rows of x, exact f32 arithmetic (scale * (x . q) + bias * sum(x) per 16 codes);
 * - more rows (prefill, training, larger batches): panels of at most AQ_PANEL weights dequantized into
 *   scratch (bf16 for tensor cores, f32 in exact mode), each followed by its cuBLAS product;
 * - the embedding gathers and dequantizes its rows.
 * Groups are 32, 64, 128, or 16 (GGUF's Q2_K, Q3_K, Q6_K repacked): a 32-code chunk then has two scales
 * and biases, one per half (aq_sb2).
 * The one-row fused decode products (RMSNorm, RoPE, SwiGLU, residual) are in ops/matmul_fused.cu. */
#include "quant/affine.cuh"
extern "C" {
#include "backend/cuda.h"
}

/* weights per dequantized panel: 32M (64 MB in bf16; any TinyLlama product but the LM head in one):
 * prefill 2048 tokens at 4 bits ran 138k tok/s against 78k with 8M panels kept in L2 (H200), since
 * each panel's cuBLAS product is then large enough to run near peak; 32M against 64M, same call (H100):
 * prefill 130.3k vs 130.0k, QLoRA 1x512 29.9k vs 29.0k tok/s with a peak of 1.43 GB instead of 1.52 */
#define AQ_PANEL ((size_t)32 << 20)
#define AQ_GEMV_R 2
#define AQ_GEMV_WARPS 4

/* x[T, K] . W^T for T <= 8: each warp owns AQ_GEMV_R rows, its lanes stride over 32-code chunks; the
 * chunk's codes are decoded once and serve every row of x. */
template <int BITS, int TT>
__global__ void __launch_bounds__(AQ_GEMV_WARPS * 32) aq_gemv_k(float *out, const float *x, const uint32_t *W, const void *sc,
                                                                 const void *bi, av_dtype sdt, int N, int K, int group) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row0 = (blockIdx.x * AQ_GEMV_WARPS + warp) * AQ_GEMV_R;
    if (row0 >= N) return;
    int nc = K >> 5, ng = K / group, rw = K / 32 * BITS;
    float acc[AQ_GEMV_R][TT];
#pragma unroll
    for (int r = 0; r < AQ_GEMV_R; r++)
#pragma unroll
        for (int t = 0; t < TT; t++) acc[r][t] = 0.0f;
    for (int c = lane; c < nc; c += 32) {
        float q[AQ_GEMV_R][32], s[AQ_GEMV_R][2], b[AQ_GEMV_R][2];
#pragma unroll
        for (int r = 0; r < AQ_GEMV_R; r++) {
            int row = row0 + r < N ? row0 + r : row0;
            uint32_t w[BITS];
            aq_load<BITS>(w, W + (size_t)row * rw, c);
#pragma unroll
            for (int j = 0; j < 32; j++) q[r][j] = aq_code<BITS>(w, j);
            aq_sb2(s[r], b[r], sc, bi, sdt, (size_t)row * ng, c, group);
        }
#pragma unroll
        for (int t = 0; t < TT; t++) {
            const float4 *x4 = reinterpret_cast<const float4 *>(x + (size_t)t * K + (size_t)c * 32);
#pragma unroll
            for (int h = 0; h < 2; h++) { /* the chunk's halves: one group each when the group is 16 */
                float xs = 0.0f, d[AQ_GEMV_R];
#pragma unroll
                for (int r = 0; r < AQ_GEMV_R; r++) d[r] = 0.0f;
#pragma unroll
                for (int v = 4 * h; v < 4 * h + 4; v++) {
                    float4 xv = __ldg(x4 + v);
                    xs += (xv.x + xv.y) + (xv.z + xv.w);
#pragma unroll
                    for (int r = 0; r < AQ_GEMV_R; r++)
                        d[r] += xv.x * q[r][4 * v] + xv.y * q[r][4 * v + 1] + xv.z * q[r][4 * v + 2] + xv.w * q[r][4 * v + 3];
                }
#pragma unroll
                for (int r = 0; r < AQ_GEMV_R; r++) acc[r][t] += s[r][h] * d[r] + b[r][h] * xs;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < AQ_GEMV_R; r++)
#pragma unroll
        for (int t = 0; t < TT; t++) {
            float v = av_warp_sum(acc[r][t]);
            if (lane == 0 && row0 + r < N) out[(size_t)t * N + row0 + r] = v;
        }
}

/* Rows [r0, r0 + nr) dequantized into dst[nr, K] (bf16 when b16, else f32): one 32-code chunk a thread. */
template <int BITS>
__global__ void aq_dequant_k(void *dst, int b16, const uint32_t *W, const void *sc, const void *bi, av_dtype sdt, int r0, int nr, int K,
                             int group) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int nc = K >> 5;
    if (i >= (size_t)nr * nc) return;
    int r = (int)(i / nc), c = (int)(i - (size_t)r * nc), row = r0 + r;
    uint32_t w[BITS];
    aq_load<BITS>(w, W + (size_t)row * (K / 32 * BITS), c);
    float s[2], b[2];
    aq_sb2(s, b, sc, bi, sdt, (size_t)row * (K / group), c, group);
    if (b16) {
        uint4 *o = reinterpret_cast<uint4 *>(reinterpret_cast<uint16_t *>(dst) + (size_t)r * K + (size_t)c * 32);
#pragma unroll
        for (int v = 0; v < 4; v++) {
            const float sv = s[v >> 1], bv = b[v >> 1];
            uint32_t u[4];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                __nv_bfloat162 h = __floats2bfloat162_rn(sv * aq_code<BITS>(w, 8 * v + 2 * e) + bv, sv * aq_code<BITS>(w, 8 * v + 2 * e + 1) + bv);
                u[e] = *reinterpret_cast<uint32_t *>(&h);
            }
            o[v] = make_uint4(u[0], u[1], u[2], u[3]);
        }
    } else {
        aq_store_f32<BITS>(reinterpret_cast<float *>(dst) + (size_t)r * K + (size_t)c * 32, w, s, b);
    }
}

/* out[t] = dequantized row ids[t] (f32), one 32-code chunk a thread. */
template <int BITS>
__global__ void aq_embed_k(float *out, const int32_t *ids, const uint32_t *W, const void *sc, const void *bi, av_dtype sdt, int D,
                           int group) {
    av_pdl_wait();
    av_pdl_launch();
    int t = blockIdx.x, nc = D >> 5;
    size_t row = (size_t)ids[t];
    for (int c = threadIdx.x; c < nc; c += blockDim.x) {
        uint32_t w[BITS];
        aq_load<BITS>(w, W + row * (D / 32 * BITS), c);
        float s[2], b[2];
        aq_sb2(s, b, sc, bi, sdt, row * (D / group), c, group);
        aq_store_f32<BITS>(out + (size_t)t * D + (size_t)c * 32, w, s, b);
    }
}

static void dequant(void *dst, int b16, const av_mat *W, int r0, int nr) {
    size_t n = (size_t)nr * (size_t)(W->cols >> 5);
    const uint32_t *w = (const uint32_t *)W->data;
    AQ_DISPATCH_BITS(W->q_bits, (aq_dequant_k<BITS><<<av_cdiv(n, 256), 256, 0, av_cuda_stream()>>>(dst, b16, w, W->scales, W->biases,
                                                                                                   W->dtype, r0, nr, W->cols, W->q_group)));
    AV_CU_LAUNCHED("dequantize panel");
}

template <int BITS>
static void gemv_t(float *out, const float *x, const av_mat *W, int T) {
    dim3 g(av_cdiv((size_t)W->rows, AQ_GEMV_WARPS * AQ_GEMV_R)), b(AQ_GEMV_WARPS * 32);
    cudaStream_t s = av_cuda_stream();
    const uint32_t *w = (const uint32_t *)W->data;
#define AQ_G(TT) aq_gemv_k<BITS, TT><<<g, b, 0, s>>>(out, x, w, W->scales, W->biases, W->dtype, W->rows, W->cols, W->q_group)
    switch (T) {
    case 1: AQ_G(1); break;
    case 2: AQ_G(2); break;
    case 3: AQ_G(3); break;
    case 4: AQ_G(4); break;
    case 5: AQ_G(5); break;
    case 6: AQ_G(6); break;
    case 7: AQ_G(7); break;
    default: AQ_G(8); break;
    }
#undef AQ_G
}

/* Rows of W per panel and the panel's scratch. */
static void *panel(const av_mat *W, int b16, int *rows) {
    size_t r = AQ_PANEL / (size_t)W->cols;
    if (r < 1) r = 1;
    if (r > (size_t)W->rows) r = (size_t)W->rows;
    *rows = (int)r;
    return av_cuda_scratch(AV_SCR_WF32, r * (size_t)W->cols * (b16 ? 2 : 4));
}

static void gemm(cublasOperation_t ta, int m, int n, int k, const void *A, int lda, const void *B, int ldb, float beta, float *C, int ldc,
                 int b16) {
    float alpha = 1.0f;
    cudaDataType_t t = b16 ? CUDA_R_16BF : CUDA_R_32F;
    av_cuda_note_blas(cublasGemmEx(av_cuda_cublas(), ta, CUBLAS_OP_N, m, n, k, &alpha, A, t, lda, B, t, ldb, &beta, C, CUDA_R_32F, ldc,
                                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                      "quantized gemm");
}

extern "C" void av_cuda_qmatmul_forward(float *out, const float *x, const av_mat *W, int T, int f32) {
    int N = W->rows, K = W->cols;
    if (T <= 0) return;
    if (T <= 8 && ((uintptr_t)x % 16) == 0) {
        AQ_DISPATCH_BITS(W->q_bits, gemv_t<BITS>(out, x, W, T));
        AV_CU_LAUNCHED("quantized gemv");
        return;
    }
    int b16 = !f32, rows;
    const void *xin = x;
    if (b16) {
        xin = av_cuda_to_bf16(AV_SCR_XCONV, x, (size_t)T * K);
        if (!xin) return;
    }
    void *pan = panel(W, b16, &rows);
    if (!pan) return;
    for (int n0 = 0; n0 < N; n0 += rows) { /* out^T[nr, T] (ld N) = panel(K x nr)^T . x^T(K x T) */
        int nr = N - n0 < rows ? N - n0 : rows;
        dequant(pan, b16, W, n0, nr);
        gemm(CUBLAS_OP_T, nr, T, K, pan, K, xin, K, 0.0f, out + n0, N, b16);
    }
}

extern "C" void av_cuda_qmatmul_backward_dx(float *dx, const float *dout, const av_mat *W, int T, int f32) {
    int N = W->rows, K = W->cols, b16 = !f32, rows;
    if (T <= 0) return;
    const void *din = dout;
    if (b16) {
        din = av_cuda_to_bf16(AV_SCR_DCONV, dout, (size_t)T * N);
        if (!din) return;
    }
    void *pan = panel(W, b16, &rows);
    if (!pan) return;
    size_t es = b16 ? 2 : 4;
    for (int n0 = 0; n0 < N; n0 += rows) { /* dx^T[K, T] += panel^T(K x nr) . dout^T[n0.., T] (ld N) */
        int nr = N - n0 < rows ? N - n0 : rows;
        dequant(pan, b16, W, n0, nr);
        gemm(CUBLAS_OP_N, K, T, nr, pan, K, (const char *)din + (size_t)n0 * es, N, 1.0f, dx, K, b16);
    }
}

extern "C" void av_cuda_qembedding_forward(float *out, const int32_t *ids, const av_mat *table, int T) {
    if (T <= 0) return;
    int D = table->cols, nc = D >> 5;
    dim3 b(nc < 256 ? 32 * av_cdiv((size_t)nc, 32) : 256);
    const uint32_t *w = (const uint32_t *)table->data;
    AQ_DISPATCH_BITS(table->q_bits, av_launch(aq_embed_k<BITS>, dim3(T), b, 0, 1, out, ids, w, table->scales, table->biases, table->dtype,
                                              D, table->q_group));
    AV_CU_LAUNCHED("quantized embedding");
}
