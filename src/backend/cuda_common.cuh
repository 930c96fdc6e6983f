/* Shared by the CUDA backend and the .cu ops: the one stream every kernel and cuBLAS call runs on,
 * the cuBLAS/cuBLASLt handles, grow-only device scratch from the arena, the sticky error record,
 * and small device helpers (bf16/f16 loads, warp/block reductions). Internal: not a public header. */
#ifndef AV_CUDA_COMMON_CUH
#define AV_CUDA_COMMON_CUH
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cublas_v2.h>
#include <stdint.h>
extern "C" {
#include "core/status.h"
#include "ops/ops.h"
}

/* Scratch slots (each grow-only, never shrinks; a growth bumps av_cuda_scratch_generation so
 * captured graphs that baked the old pointer are re-captured). */
enum { AV_SCR_XCONV = 0, AV_SCR_DCONV, AV_SCR_WF32, AV_SCR_ATTN, AV_SCR_ATTN2, AV_SCR_NLL, AV_SCR_FUSED, AV_SCR_FLASH, AV_SCR_FLASH_BWD, AV_SCR_OPTIM, AV_SCR_DECODE, AV_SCR_COUNT };

extern "C" {
cudaStream_t av_cuda_stream(void);
cublasHandle_t av_cuda_cublas(void);
void *av_cuda_blas_workspace(size_t *bytes);
void *av_cuda_scratch(int slot, size_t bytes);
unsigned av_cuda_scratch_generation(void);
/* Records the first CUDA/cuBLAS failure as the av_fail line (returns 0 when e is success). */
int av_cuda_note(cudaError_t e, const char *where);
int av_cuda_note_blas(cublasStatus_t s, const char *where);
}

#define AV_CU_LAUNCHED(where) av_cuda_note(cudaGetLastError(), where)

/* Programmatic dependent launch (sm_90+): a kernel launched with av_launch(..., pdl = 1) may start
 * while its predecessor drains, so it must call av_pdl_wait() before reading anything a previous
 * kernel wrote and before writing anything (only constant data such as weights may be read before
 * it, by every block, unconditionally). av_pdl_launch() lets the next kernel start early. Both are
 * no-ops for kernels launched normally. */
__device__ __forceinline__ void av_pdl_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void av_pdl_launch(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
/* 1 when dependent launches are on (compute capability >= 9). */
extern "C" int av_cuda_pdl(void);
/* The same with the blocks in clusters of `cluster` along x (sm_90+; 0: no cluster attribute); the
 * launch's status, for callers that have another kernel to fall back on. */
template <typename... P, typename... A>
static inline cudaError_t av_launch_cluster(void (*k)(P...), dim3 grid, dim3 block, size_t smem, int pdl, int cluster, A... args) {
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at[2];
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = av_cuda_stream();
    cfg.attrs = at;
    if (pdl && av_cuda_pdl()) {
        at[cfg.numAttrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[cfg.numAttrs++].val.programmaticStreamSerializationAllowed = 1;
    }
    if (cluster > 0) {
        at[cfg.numAttrs].id = cudaLaunchAttributeClusterDimension;
        at[cfg.numAttrs++].val.clusterDim = {(unsigned)cluster, 1, 1};
    }
    return cudaLaunchKernelEx(&cfg, k, ((P)args)...);
}
template <typename... P, typename... A>
static inline void av_launch(void (*k)(P...), dim3 grid, dim3 block, size_t smem, int pdl, A... args) {
    av_launch_cluster(k, grid, block, smem, pdl, 0, args...);
}

static inline unsigned av_cdiv(size_t a, size_t b) { return (unsigned)((a + b - 1) / b); }

__device__ __forceinline__ float av_ld_w(const void *p, av_dtype t, size_t i) {
    if (t == AV_BF16) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    if (t == AV_F16) return __half2float(((const __half *)p)[i]);
    return ((const float *)p)[i];
}

/* 8 consecutive bf16 or f16 values (one 16-byte load) as floats. */
__device__ __forceinline__ void av_unpack8(uint4 w, av_dtype dt, float *f) {
    uint32_t u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        if (dt == AV_BF16) {
            f[2 * j] = __uint_as_float(u[j] << 16);
            f[2 * j + 1] = __uint_as_float(u[j] & 0xffff0000u);
        } else {
            __half2 h = *reinterpret_cast<__half2 *>(&u[j]);
            float2 p = __half22float2(h);
            f[2 * j] = p.x;
            f[2 * j + 1] = p.y;
        }
    }
}

__device__ __forceinline__ float av_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float av_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* Block-wide sum/max (blockDim.x a multiple of 32, <= 1024); every thread gets the result. */
__device__ __forceinline__ float av_block_sum(float v, float *sh32) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = av_warp_sum(v);
    __syncthreads();
    if (lane == 0) sh32[w] = v;
    __syncthreads();
    v = lane < nw ? sh32[lane] : 0.0f;
    return av_warp_sum(v);
}
__device__ __forceinline__ float av_block_max(float v, float *sh32) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = av_warp_max(v);
    __syncthreads();
    if (lane == 0) sh32[w] = v;
    __syncthreads();
    v = lane < nw ? sh32[lane] : -INFINITY;
    return av_warp_max(v);
}
#endif
