/* Shared by the fused decode products (matmul_fused.cu dispatches; matmul_fused_row.cu: one row,
 * exact f32; matmul_fused_mma.cu: 2..32 rows on bf16 tensor cores): the kernels' arguments, the input
 * read with its RMSNorm, and the launchers each file exports. */
#ifndef AV_MATMUL_FUSED_CUH
#define AV_MATMUL_FUSED_CUH
#include "backend/cuda_common.cuh"
#include "quant/affine.cuh"
#include <atomic>
extern "C" {
#include "backend/cuda.h"
}

/* Most rows on the tensor-core kernel; more rows: cuBLAS and an epilogue kernel (faster there). Packed
 * weights go to 32 rows: their alternative is dequantized panels for cuBLAS. */
#define MMA_MAX_ROWS 16
#define MMA_MAX_ROWS_Q 32

/* Streaming multiprocessors of the device (the launchers' grid-size choices), read once per file. */
static inline int sm_count(void) {
    static int sms = 0;
    int dev = 0;
    if (!sms && (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess))
        sms = 132;
    return sms;
}

struct fz_args {
    float *out;
    const float *x;
    const uint16_t *W;
    av_dtype dt;
    int N, K, T;
    const void *norm;
    av_dtype ndt;
    int nvec; /* norm is bf16 and 16-byte aligned: 8 values per load */
    float eps;
    const int32_t *pos;
    const float *inv_freq;
    int rope_rows, hd, F;
    int xb, ob; /* x holds bf16 (IN_X only); SWIGLU writes bf16 */
    int fold;   /* one-row STORE kernel: fold the argmax (fz_amax_fold). Keep this struct small: growing
                 * it changes the register allocation of the tensor-core kernels (and their speed) */
};

/* What the kernel finishing a folded argmax writes (av_gemv_fusion argmax*). */
struct fz_amax_args {
    int32_t *amax, *apos, *ahost;
    unsigned *aseq;
    int aring;
};

__device__ __forceinline__ uint16_t fz_bf16(float v) {
    __nv_bfloat16 b = __float2bfloat16_rn(v);
    return *reinterpret_cast<uint16_t *>(&b);
}

/* x[8c .. 8c+7] of one row, times the norm weight when the input is RMSNorm'ed; *ss += sum of x^2. */
template <int IN>
__device__ __forceinline__ void fz_x8(const fz_args &a, const float *xr, int c, float *v, float *ss) {
    if (IN == AV_GEMV_IN_X && a.xb) { /* row 0 of bf16 x (the one-row kernel) */
        av_unpack8(reinterpret_cast<const uint4 *>(xr)[c], AV_BF16, v);
        return;
    }
    const float4 *x4 = reinterpret_cast<const float4 *>(xr) + 2 * c;
    float4 p = x4[0], q = x4[1];
    v[0] = p.x, v[1] = p.y, v[2] = p.z, v[3] = p.w, v[4] = q.x, v[5] = q.y, v[6] = q.z, v[7] = q.w;
    if (IN == AV_GEMV_IN_RMSNORM) {
        float gw[8];
        if (a.nvec) {
            av_unpack8(__ldg(reinterpret_cast<const uint4 *>(a.norm) + c), AV_BF16, gw);
        } else {
#pragma unroll
            for (int j = 0; j < 8; j++) gw[j] = av_ld_w(a.norm, a.ndt, (size_t)8 * c + j);
        }
#pragma unroll
        for (int j = 0; j < 8; j++) {
            *ss += v[j] * v[j];
            v[j] *= gw[j];
        }
    }
}

/* Scales and biases of packed weights (quant/affine.cuh), beside fz_args (kept small). */
struct fzq_args {
    const void *sc, *bi;
    int group;
};

/* One row (matmul_fused_row.cu): bf16/f16 weights, or packed ones (bits 2..8); then, for a folded
 * argmax, the kernel that writes the id (fz_amax_finish), or the one that publishes an id the sampler
 * wrote (fz_publish). */
void fz_row_launch(const fz_args &a, av_gemv_in in, av_gemv_out out);
void fzq_row_launch(const fz_args &a, const fzq_args &qa, av_gemv_in in, int bits, av_gemv_out out);
void fz_amax_finish(const fz_amax_args &am);
void fz_publish(const fz_amax_args &am);

/* 2..16 rows of bf16 weights (bits 0) or 2..32 of 2-, 4- or 8-bit codes (matmul_fused_mma.cu); the
 * packed products' input RMSNormed once into bf16 rows (fz_norm16). */
void fz_mma_launch(const fz_args &a, const fzq_args &qa, av_gemv_in in, int bits, av_gemv_out out);
void fz_norm16(uint16_t *out, const float *x, const void *w, av_dtype wt, int T, int K, float eps);

/* Several rows on 4- or 8-bit codes split along K over a cluster (matmul_fused_split.cu); false: the
 * shape is not one it takes (nothing launched). */
bool fzs_launch(const fz_args &a, const fzq_args &qa, int bits, av_gemv_out out);
#endif
