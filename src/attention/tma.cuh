/* Hopper (sm_90a) asynchronous copies for warp-specialised kernels: the tensor memory accelerator
 * (TMA: a 3-d box of a bf16 tensor into 128-byte-swizzled shared memory, counted on an mbarrier),
 * mbarriers, named barriers and the per-warpgroup register budget (setmaxnreg). The device parts
 * are compiled into the sm_90a pass only (callers guard with AV_WGMMA, wgmma.cuh); the host part
 * encodes tensor maps through the driver entry point the runtime hands out (no -lcuda). */
#ifndef AV_TMA_CUH
#define AV_TMA_CUH
#include <stdint.h>
#include <cuda.h>
#include <cudaTypedefs.h>
#include "attention/wgmma.cuh"

#if AV_WGMMA
static __device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
/* makes the initialised barriers visible to the async proxy (TMA) before any copy names them */
static __device__ __forceinline__ void mbar_init_fence(void) { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
static __device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
/* one arrival that also announces `bytes` of copies completing on this phase */
static __device__ __forceinline__ void mbar_expect(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
/* until the phase of parity `par` has completed */
static __device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t par) {
    uint32_t done;
    do {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(bar), "r"(par)
                     : "memory");
    } while (!done);
}
/* box at (c0, c1, c2) of the tensor map into shared memory at dst; completes `bytes` on bar */
static __device__ __forceinline__ void tma_load3(uint32_t dst, const CUtensorMap *map, int c0, int c1, int c2, uint32_t bar) {
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
                 "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
                 : "memory");
}
/* the same for a 4-d tensor map (columns, rows, heads, sequences) */
static __device__ __forceinline__ void tma_load4(uint32_t dst, const CUtensorMap *map, int c0, int c1, int c2, int c3, uint32_t bar) {
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
                 "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
                 : "memory");
}
/* `bytes` (a multiple of 16, both addresses 16-byte aligned) from global src into shared dst, counted on bar */
static __device__ __forceinline__ void bulk_load(uint32_t dst, const void *src, uint32_t bytes, uint32_t bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst), "l"(src), "r"(bytes),
                 "r"(bar)
                 : "memory");
}
/* named barrier `id` (1..15; 0 is __syncthreads') over `n` threads: wait, or only arrive */
static __device__ __forceinline__ void named_sync(uint32_t id, uint32_t n) { asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory"); }
static __device__ __forceinline__ void named_arrive(uint32_t id, uint32_t n) { asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory"); }
/* shared memory at src (written by the generic proxy, then fence_proxy_async and a barrier) into the box at
 * (c0..c3) of a 4-d tensor map: stored, or added element by element (f32 reduction at L2); one bulk group each
 * once committed */
static __device__ __forceinline__ void tma_store4(const CUtensorMap *map, int c0, int c1, int c2, int c3, uint32_t src) {
    asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.tile.bulk_group [%0, {%1, %2, %3, %4}], [%5];\n" ::"l"((uint64_t)map), "r"(c0),
                 "r"(c1), "r"(c2), "r"(c3), "r"(src)
                 : "memory");
}
static __device__ __forceinline__ void tma_add4(const CUtensorMap *map, int c0, int c1, int c2, int c3, uint32_t src) {
    asm volatile("cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.tile.bulk_group [%0, {%1, %2, %3, %4}], [%5];\n" ::"l"((uint64_t)map),
                 "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(src)
                 : "memory");
}
static __device__ __forceinline__ void bulk_commit(void) { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
/* until at most N of this thread's committed bulk groups still read their shared memory / are not complete */
template <int N> static __device__ __forceinline__ void bulk_wait_read(void) { asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory"); }
template <int N> static __device__ __forceinline__ void bulk_wait(void) { asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory"); }
/* global memory written by the async proxy (completed bulk groups) ordered before this thread's later accesses */
static __device__ __forceinline__ void fence_proxy_async_global(void) { asm volatile("fence.proxy.async.global;\n" ::: "memory"); }
/* a GPU-scope counter in global memory: acquire-read / release-increment */
static __device__ __forceinline__ unsigned flag_get(const unsigned *p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
    return v;
}
static __device__ __forceinline__ void flag_bump(unsigned *p) { asm volatile("red.release.gpu.global.add.u32 [%0], 1;\n" ::"l"(p) : "memory"); }
/* a warpgroup's register budget per thread (every thread of the warpgroup executes it) */
template <int N> static __device__ __forceinline__ void regs_dec(void) { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N> static __device__ __forceinline__ void regs_inc(void) { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }
#endif

/* The driver's tensor-map encoder, or NULL where the driver has none (asked once per process). */
static inline PFN_cuTensorMapEncodeTiled_v12000 tma_encoder(void) {
    static PFN_cuTensorMapEncodeTiled_v12000 encode = NULL;
    static int tried = 0;
    if (!tried) {
        void *fn = NULL;
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q) == cudaSuccess &&
            q == cudaDriverEntryPointSuccess)
            encode = (PFN_cuTensorMapEncodeTiled_v12000)fn;
        cudaGetLastError();
        tried = 1;
    }
    return encode;
}

/* Tensor map of a bf16 tensor of `rank` (3 or 4) dimensions, dims[0] columns first, strides[i] (in elements)
 * of dims[i + 1], read in boxes of 64 columns (128 bytes: the swizzle's row) x box_rows rows (dims[1]) x 1
 * of the rest; rows past dims[1] read as zeros. Returns 0 on success, -1 where the driver has no TMA or the
 * base or strides are not 16-byte multiples (then the caller takes another kernel or reports it). */
static inline int tma_map_bf16_nd(CUtensorMap *map, const void *base, int rank, const uint64_t *dims, const uint64_t *strides, uint32_t box_rows) {
    PFN_cuTensorMapEncodeTiled_v12000 encode = tma_encoder();
    if (!encode || ((uintptr_t)base & 15)) return -1;
    cuuint64_t d[4], st[3];
    cuuint32_t box[4] = {64, box_rows, 1, 1}, step[4] = {1, 1, 1, 1};
    for (int i = 0; i < rank; i++) d[i] = dims[i];
    for (int i = 0; i + 1 < rank; i++) {
        if ((strides[i] * 2) % 16) return -1;
        st[i] = strides[i] * 2;
    }
    return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, rank, (void *)base, d, st, box, step, CU_TENSOR_MAP_INTERLEAVE_NONE,
                  CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS
               ? 0
               : -1;
}

/* The same for an f32 tensor of 4 dimensions (strides in elements), boxes of 32 columns (128 bytes) x box_rows rows in the
 * 128-byte swizzle: the target of tma_store4 / tma_add4. */
static inline int tma_map_f32_4d(CUtensorMap *map, const void *base, const uint64_t *dims, const uint64_t *strides, uint32_t box_rows) {
    PFN_cuTensorMapEncodeTiled_v12000 encode = tma_encoder();
    if (!encode || ((uintptr_t)base & 15)) return -1;
    cuuint64_t d[4], st[3];
    cuuint32_t box[4] = {32, box_rows, 1, 1}, step[4] = {1, 1, 1, 1};
    for (int i = 0; i < 4; i++) d[i] = dims[i];
    for (int i = 0; i < 3; i++) {
        if ((strides[i] * 4) % 16) return -1;
        st[i] = strides[i] * 4;
    }
    return encode(map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, (void *)base, d, st, box, step, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                  CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS
               ? 0
               : -1;
}

/* nb batches x rows x cols (row stride ld, batch stride bs, in elements) */
static inline int tma_map_bf16(CUtensorMap *map, const void *base, uint64_t cols, uint64_t rows, uint64_t nb, uint64_t ld, uint64_t bs,
                               uint32_t box_rows) {
    uint64_t dims[3] = {cols, rows, nb}, strides[2] = {ld, bs};
    return tma_map_bf16_nd(map, base, 3, dims, strides, box_rows);
}
#endif
