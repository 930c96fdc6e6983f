/* CUDA twin of matmul.c. One row (decode): a memory-bound GEMV reading each 16-bit weight row once
 * with 16-byte loads, f32 accumulation (exact). More rows: cuBLAS on tensor cores with the f32
 * activations converted to the weight's 16-bit type (bf16 mode), or, in exact f32 mode, a warp GEMV
 * up to 8 rows and weight panels converted to f32 + SGEMM beyond. f32 weights (LoRA A/B): SGEMM
 * (TF32 tensor cores in bf16 mode when one side is rank-sized, <= 64). */
#include "backend/cuda_common.cuh"
extern "C" {
#include "backend/cuda.h"
#include <cublasLt.h>
}

#define GEMV_MAX_T 8
#define GEMV_WARPS 8

/* Each warp owns R consecutive weight rows and walks them 8 elements (16 bytes) at a time; the x
 * values it loads serve all R rows (R independent 16-byte weight loads in flight per step). */
#define GEMV_BLOCK_WARPS 4
template <int TT, int R>
__global__ void __launch_bounds__(GEMV_BLOCK_WARPS * 32) gemv16_k(float *out, const float *x, const uint16_t *W, av_dtype dt, int N, int K) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row0 = (blockIdx.x * GEMV_BLOCK_WARPS + warp) * R;
    if (row0 >= N) return;
    int nv = K >> 3;
    float acc[R][TT];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < TT; t++) acc[r][t] = 0.0f;
#pragma unroll 2
    for (int i = lane; i < nv; i += 32) {
        float wf[R][8];
#pragma unroll
        for (int r = 0; r < R; r++) {
            uint4 wv = row0 + r < N ? __ldcs(reinterpret_cast<const uint4 *>(W + (size_t)(row0 + r) * K) + i) : make_uint4(0, 0, 0, 0);
            av_unpack8(wv, dt, wf[r]);
        }
#pragma unroll
        for (int t = 0; t < TT; t++) {
            const float4 *xr = reinterpret_cast<const float4 *>(x + (size_t)t * K) + 2 * i;
            float4 a = __ldg(xr), b = __ldg(xr + 1);
#pragma unroll
            for (int r = 0; r < R; r++)
                acc[r][t] += wf[r][0] * a.x + wf[r][1] * a.y + wf[r][2] * a.z + wf[r][3] * a.w + wf[r][4] * b.x + wf[r][5] * b.y +
                             wf[r][6] * b.z + wf[r][7] * b.w;
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < TT; t++) {
            float v = av_warp_sum(acc[r][t]);
            if (lane == 0 && row0 + r < N) out[(size_t)t * N + row0 + r] = v;
        }
}

/* Single-row decode GEMV: a block of GEMV1_THREADS owns GEMV1_R rows and its threads stride across K
 * in 16-byte chunks (all loads of a row issued up front), then a block reduction. Many blocks per
 * SM keep enough bytes in flight even for the small projections. */
#define GEMV1_THREADS 128
#define GEMV1_R 2
__global__ void __launch_bounds__(GEMV1_THREADS) gemv1_k(float *out, const float *x, const uint16_t *W, av_dtype dt, int N, int K) {
    __shared__ float red[GEMV1_R][GEMV1_THREADS / 32];
    int row0 = blockIdx.x * GEMV1_R, nv = K >> 3, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float acc[GEMV1_R];
#pragma unroll
    for (int r = 0; r < GEMV1_R; r++) acc[r] = 0.0f;
    const float4 *x4 = reinterpret_cast<const float4 *>(x);
#pragma unroll 4
    for (int i = threadIdx.x; i < nv; i += GEMV1_THREADS) {
        uint4 wv[GEMV1_R];
#pragma unroll
        for (int r = 0; r < GEMV1_R; r++)
            wv[r] = row0 + r < N ? __ldcs(reinterpret_cast<const uint4 *>(W + (size_t)(row0 + r) * K) + i) : make_uint4(0, 0, 0, 0);
        float4 a = __ldg(x4 + 2 * i), b = __ldg(x4 + 2 * i + 1);
#pragma unroll
        for (int r = 0; r < GEMV1_R; r++) {
            float f[8];
            av_unpack8(wv[r], dt, f);
            acc[r] += f[0] * a.x + f[1] * a.y + f[2] * a.z + f[3] * a.w + f[4] * b.x + f[5] * b.y + f[6] * b.z + f[7] * b.w;
        }
    }
#pragma unroll
    for (int r = 0; r < GEMV1_R; r++) {
        float v = av_warp_sum(acc[r]);
        if (lane == 0) red[r][warp] = v;
    }
    __syncthreads();
    if (threadIdx.x < GEMV1_R && row0 + threadIdx.x < N) {
        float v = 0.0f;
#pragma unroll
        for (int w = 0; w < GEMV1_THREADS / 32; w++) v += red[threadIdx.x][w];
        out[row0 + threadIdx.x] = v;
    }
}

/* Any shape/alignment: one warp per (row), scalar loads. */
__global__ void gemv_any_k(float *out, const float *x, const void *W, av_dtype dt, int N, int K, int T) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row = blockIdx.x * GEMV_WARPS + warp;
    if (row >= N) return;
    for (int t = 0; t < T; t++) {
        float acc = 0;
        for (int k = lane; k < K; k += 32) acc += av_ld_w(W, dt, (size_t)row * K + k) * x[(size_t)t * K + k];
        acc = av_warp_sum(acc);
        if (lane == 0) out[(size_t)t * N + row] = acc;
    }
}

/* Four elements per thread (16-byte loads, 8-byte stores) where the pointers allow: a scalar
 * conversion ran well below the memory bandwidth in front of every training GEMM. */
__device__ __forceinline__ uint16_t to16_one(float f, av_dtype dt) {
    if (dt == AV_BF16) {
        __nv_bfloat16 b = __float2bfloat16_rn(f);
        return *reinterpret_cast<uint16_t *>(&b);
    }
    __half h = __float2half_rn(f);
    return *reinterpret_cast<uint16_t *>(&h);
}
__global__ void to16_k(uint16_t *dst, const float *src, size_t n, av_dtype dt, int vec) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i >= n) return;
    if (vec && i + 4 <= n) {
        float4 v = *reinterpret_cast<const float4 *>(src + i);
        uint2 w = make_uint2(to16_one(v.x, dt) | (unsigned)to16_one(v.y, dt) << 16, to16_one(v.z, dt) | (unsigned)to16_one(v.w, dt) << 16);
        *reinterpret_cast<uint2 *>(dst + i) = w;
    } else
        for (size_t e = i + 4 < n ? i + 4 : n; i < e; i++) dst[i] = to16_one(src[i], dt);
}

__global__ void to32_k(float *dst, const void *src, av_dtype dt, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = av_ld_w(src, dt, i);
}

static uint16_t *to16(int slot, const float *src, size_t n, av_dtype dt) {
    uint16_t *d = (uint16_t *)av_cuda_scratch(slot, n * 2);
    if (!d) return NULL;
    int vec = !((uintptr_t)src & 15) && !((uintptr_t)d & 7);
    to16_k<<<av_cdiv(av_cdiv(n, 4), 256), 256, 0, av_cuda_stream()>>>(d, src, n, dt, vec);
    AV_CU_LAUNCHED("convert to 16-bit");
    return d;
}

extern "C" uint16_t *av_cuda_to_bf16(int slot, const float *src, size_t n) { return to16(slot, src, n, AV_BF16); }

static cudaDataType_t cu_type(av_dtype t) { return t == AV_BF16 ? CUDA_R_16BF : t == AV_F16 ? CUDA_R_16F : CUDA_R_32F; }

/* Column-major C[m,n] = alpha op(A) op(B) + beta C with f32 accumulation. */
static void gemm_c(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void *A, cudaDataType_t at, int lda,
                   const void *B, cudaDataType_t bt, int ldb, float beta, float *C, int ldc, cublasComputeType_t ct) {
    float alpha = 1.0f;
    av_cuda_note_blas(cublasGemmEx(av_cuda_cublas(), ta, tb, m, n, k, &alpha, A, at, lda, B, bt, ldb, &beta, C, CUDA_R_32F, ldc, ct,
                                   CUBLAS_GEMM_DEFAULT),
                      "gemm");
}
static void gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void *A, cudaDataType_t at, int lda,
                 const void *B, cudaDataType_t bt, int ldb, float beta, float *C, int ldc) {
    gemm_c(ta, tb, m, n, k, A, at, lda, B, bt, ldb, beta, C, ldc, CUBLAS_COMPUTE_32F);
}
/* f32 products with a low-rank side (LoRA A/B: rank <= 64): TF32 tensor cores in bf16 mode. */
static cublasComputeType_t f32_compute(const av_mat *W, int f32) {
    return !f32 && (W->rows <= 64 || W->cols <= 64) ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

#define PANEL_FLOATS ((size_t)16 << 20)

static int gemv_ok(const float *x, const av_mat *W) {
    return (W->dtype == AV_BF16 || W->dtype == AV_F16) && W->cols % 8 == 0 && ((uintptr_t)x % 16) == 0 && ((uintptr_t)W->data % 16) == 0;
}

static void gemv(float *out, const float *x, const av_mat *W, int T) {
    int N = W->rows, K = W->cols;
    dim3 grid(av_cdiv(N, GEMV_WARPS)), block(GEMV_WARPS * 32);
    cudaStream_t s = av_cuda_stream();
    const uint16_t *w = (const uint16_t *)W->data;
    if (!gemv_ok(x, W)) {
        gemv_any_k<<<grid, block, 0, s>>>(out, x, W->data, W->dtype, N, K, T);
    } else {
        dim3 b2(GEMV_BLOCK_WARPS * 32);
        unsigned g4 = av_cdiv(N, GEMV_BLOCK_WARPS * 4);
        switch (T) {
        case 1:
            gemv1_k<<<av_cdiv(N, GEMV1_R), GEMV1_THREADS, 0, s>>>(out, x, w, W->dtype, N, K); break;
        case 2: gemv16_k<2, 4><<<g4, b2, 0, s>>>(out, x, w, W->dtype, N, K); break;
        case 3: gemv16_k<3, 4><<<g4, b2, 0, s>>>(out, x, w, W->dtype, N, K); break;
        case 4: gemv16_k<4, 4><<<g4, b2, 0, s>>>(out, x, w, W->dtype, N, K); break;
        case 5: gemv16_k<5, 4><<<g4, b2, 0, s>>>(out, x, w, W->dtype, N, K); break;
        case 6: gemv16_k<6, 4><<<g4, b2, 0, s>>>(out, x, w, W->dtype, N, K); break;
        case 7: gemv16_k<7, 4><<<g4, b2, 0, s>>>(out, x, w, W->dtype, N, K); break;
        default: gemv16_k<8, 4><<<g4, b2, 0, s>>>(out, x, w, W->dtype, N, K); break;
        }
    }
    AV_CU_LAUNCHED("gemv");
}

extern "C" void av_cuda_matmul_forward_mode(float *out, const float *x, const av_mat *W, int T, int f32) {
    int N = W->rows, K = W->cols;
    if (T <= 0) return;
    if (W->q_bits) { av_cuda_qmatmul_forward(out, x, W, T, f32); return; }
    if (W->dtype == AV_F32) { /* out^T[N,T] = W^T(col-major K x N)^T . x^T(K x T) */
        gemm_c(CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, W->data, CUDA_R_32F, K, x, CUDA_R_32F, K, 0.0f, out, N, f32_compute(W, f32));
        return;
    }
    /* exact GEMV: one row always; up to 8 rows in f32 mode (bf16 mode: tensor cores from 2 rows) */
    if (T == 1 || (f32 && T <= GEMV_MAX_T)) { gemv(out, x, W, T); return; }
    if (!f32) {
        uint16_t *xb = to16(AV_SCR_XCONV, x, (size_t)T * K, W->dtype);
        if (!xb) return;
        gemm(CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, W->data, cu_type(W->dtype), K, xb, cu_type(W->dtype), K, 0.0f, out, N);
        return;
    }
    size_t rows = PANEL_FLOATS / (size_t)K;
    if (rows < 1) rows = 1;
    if (rows > (size_t)N) rows = N;
    float *pan = (float *)av_cuda_scratch(AV_SCR_WF32, rows * K * sizeof(float));
    if (!pan) return;
    size_t es = W->dtype == AV_F32 ? 4 : 2;
    for (int n0 = 0; n0 < N; n0 += (int)rows) {
        int nr = N - n0 < (int)rows ? N - n0 : (int)rows;
        size_t cnt = (size_t)nr * K;
        to32_k<<<av_cdiv(cnt, 256), 256, 0, av_cuda_stream()>>>(pan, (const char *)W->data + (size_t)n0 * K * es, W->dtype, cnt);
        AV_CU_LAUNCHED("convert panel");
        gemm(CUBLAS_OP_T, CUBLAS_OP_N, nr, T, K, pan, CUDA_R_32F, K, x, CUDA_R_32F, K, 0.0f, out + n0, N);
    }
}

extern "C" void av_cuda_matmul_backward_mode(float *dx, float *dW, const float *dout, const float *x, const av_mat *W, int T, int f32) {
    int N = W->rows, K = W->cols;
    if (T <= 0) return;
    if (dW) /* dW^T[K,N] += x^T(K x T) . dout(T x N) */
        gemm_c(CUBLAS_OP_N, CUBLAS_OP_T, K, N, T, x, CUDA_R_32F, K, dout, CUDA_R_32F, N, 1.0f, dW, K, f32_compute(W, f32));
    if (!dx) return;
    if (W->q_bits) { av_cuda_qmatmul_backward_dx(dx, dout, W, T, f32); return; }
    /* dx^T[K,T] += W^T(K x N) . dout^T(N x T) */
    if (W->dtype == AV_F32) {
        gemm_c(CUBLAS_OP_N, CUBLAS_OP_N, K, T, N, W->data, CUDA_R_32F, K, dout, CUDA_R_32F, N, 1.0f, dx, K, f32_compute(W, f32));
        return;
    }
    if (!f32) {
        uint16_t *db = to16(AV_SCR_DCONV, dout, (size_t)T * N, W->dtype);
        if (!db) return;
        gemm(CUBLAS_OP_N, CUBLAS_OP_N, K, T, N, W->data, cu_type(W->dtype), K, db, cu_type(W->dtype), N, 1.0f, dx, K);
        return;
    }
    size_t rows = PANEL_FLOATS / (size_t)K;
    if (rows < 1) rows = 1;
    if (rows > (size_t)N) rows = N;
    float *pan = (float *)av_cuda_scratch(AV_SCR_WF32, rows * K * sizeof(float));
    if (!pan) return;
    for (int n0 = 0; n0 < N; n0 += (int)rows) {
        int nr = N - n0 < (int)rows ? N - n0 : (int)rows;
        size_t cnt = (size_t)nr * K;
        to32_k<<<av_cdiv(cnt, 256), 256, 0, av_cuda_stream()>>>(pan, (const uint16_t *)W->data + (size_t)n0 * K, W->dtype, cnt);
        AV_CU_LAUNCHED("convert panel");
        gemm(CUBLAS_OP_N, CUBLAS_OP_N, K, T, nr, pan, CUDA_R_32F, K, dout + n0, CUDA_R_32F, N, 1.0f, dx, K);
    }
}

/* ---- 16-bit activation products (the bf16 table's matmul_forward_ex / matmul_backward_dx_ex) ----
 * Training feeds one converted input to several products and keeps MLP activations in bf16, so
 * these take x / dout already in bf16 and may write bf16 or accumulate (beta = 1) into f32 output,
 * saving the conversion, zero-fill and add passes around each GEMM. */
static int bf16_weight(const av_mat *W) { return W->dtype == AV_BF16 && !W->q_bits; }

extern "C" int av_cuda_matmul_forward_ex(void *out, int out16, const void *x, int x16, const av_mat *W, int T, float alpha, int accumulate) {
    int N = W->rows, K = W->cols;
    if (out16 && accumulate) return -1;
    if (T <= 0) return 0;
    float beta = accumulate ? 1.0f : 0.0f;
    if (W->dtype == AV_F32 && !x16 && !out16) { /* LoRA B: out (+)= alpha x B^T on TF32 tensor cores */
        av_cuda_note_blas(cublasGemmEx(av_cuda_cublas(), CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &alpha, W->data, CUDA_R_32F, K, x, CUDA_R_32F, K,
                                       &beta, out, CUDA_R_32F, N, f32_compute(W, 0), CUBLAS_GEMM_DEFAULT),
                          "gemm ex");
        return 0;
    }
    if (!bf16_weight(W)) return -1;
    const void *xb = x16 ? x : (const void *)to16(AV_SCR_XCONV, (const float *)x, (size_t)T * K, AV_BF16);
    if (!xb) return 0;
    av_cuda_note_blas(cublasGemmEx(av_cuda_cublas(), CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &alpha, W->data, CUDA_R_16BF, K, xb, CUDA_R_16BF, K,
                                   &beta, out, out16 ? CUDA_R_16BF : CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                      "gemm ex");
    return 0;
}

extern "C" int av_cuda_matmul_backward_dx_ex(void *dx, int dx16, int accumulate, const void *dout, int dout16, const av_mat *W, int T) {
    int N = W->rows, K = W->cols;
    float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    if (!bf16_weight(W) || (dx16 && accumulate)) return -1;
    if (T <= 0) return 0;
    const void *db = dout16 ? dout : (const void *)to16(AV_SCR_DCONV, (const float *)dout, (size_t)T * N, AV_BF16);
    if (!db) return 0;
    av_cuda_note_blas(cublasGemmEx(av_cuda_cublas(), CUBLAS_OP_N, CUBLAS_OP_N, K, T, N, &alpha, W->data, CUDA_R_16BF, K, db, CUDA_R_16BF, N,
                                   &beta, dx, dx16 ? CUDA_R_16BF : CUDA_R_32F, K, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                      "gemm dx ex");
    return 0;
}

/* out = res + x . W^T through cuBLASLt, whose epilogue reads C (res) and writes a separate D
 * (out): the residual stream of a layer needs no copy pass before its o / down products. */
static thread_local cublasLtHandle_t g_lt; /* per thread = per device */
extern "C" void av_cuda_matmul_release(void) { /* av_cuda_shutdown */
    if (g_lt) cublasLtDestroy(g_lt);
    g_lt = NULL;
}

extern "C" int av_cuda_matmul_forward_res(float *out, const float *res, const void *x, int x16, const av_mat *W, int T) {
    int N = W->rows, K = W->cols;
    if (!bf16_weight(W) || out == res) return -1;
    if (T <= 0) return 0;
    if (!g_lt && av_cuda_note_blas(cublasLtCreate(&g_lt), "cublasLt create")) return 0;
    const void *xb = x16 ? x : (const void *)to16(AV_SCR_XCONV, (const float *)x, (size_t)T * K, AV_BF16);
    if (!xb) return 0;
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    cublasOperation_t tr = CUBLAS_OP_T;
    float alpha = 1.0f, beta = 1.0f;
    size_t wsn = 0;
    void *ws = av_cuda_blas_workspace(&wsn);
    /* column-major: out^T[N, T] = W(K x N)^T . x^T(K x T) + res^T */
    cublasStatus_t st = cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &tr, sizeof tr);
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, K, N, K);
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, K, T, K);
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, N, T, N);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmul(g_lt, op, &alpha, W->data, la, xb, lb, &beta, res, lc, out, lc, NULL, ws, wsn, av_cuda_stream());
    av_cuda_note_blas(st, "cublasLt matmul res");
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (op) cublasLtMatmulDescDestroy(op);
    return 0;
}
