/* Device helpers shared by the flash attention kernels (flash.cu forward, flash_bwd.cu backward):
 * bf16 packing, the m16n8k16 bf16 tensor-core product with f32 accumulation, and cp.async copies.
 * Fragment layout of m16n8k16 (g = lane / 4, c = lane % 4): A rows g, g+8 x k 2c..2c+1 (+8);
 * B (stored [n][k]) row n = g, k 2c..2c+1 (+8); C rows g, g+8 x cols 2c, 2c+1. */
#ifndef AV_FLASH_COMMON_CUH
#define AV_FLASH_COMMON_CUH
#include "backend/cuda_common.cuh"

#define FA_BC 64 /* keys per tile */
#define FA_PAD 8 /* bf16 padding per shared row: 16 bytes, keeps fragment reads conflict-free */

static __device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&p);
}
/* 2^x by the hardware's ex2 with subnormal results flushed to zero (a softmax weight below 2^-126
 * of the row maximum): exp2f adds a range test and two predicated multiplies around it, three more
 * instructions per score */
static __device__ __forceinline__ float fa_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
static __device__ __forceinline__ void mma_bf16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
static __device__ __forceinline__ void cp_async16(void *smem, const void *gmem) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
static __device__ __forceinline__ void cp_async_commit(void) { asm volatile("cp.async.commit_group;\n" ::); }
static __device__ __forceinline__ void cp_async_wait_all(void) { asm volatile("cp.async.wait_group 0;\n" ::); }
/* 16 bytes, or 16 zero bytes when !ok (gmem must still be a valid address); L2 fetches the whole
 * 128-byte line (streaming reads: split-KV decode 29.5 -> 29.2 us, bench/NOTES-attention.md) */
static __device__ __forceinline__ void cp_async16_zfill(void *smem, const void *gmem, bool ok) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(ok ? 16 : 0));
}
/* wait until at most N of this thread's committed groups are still in flight */
template <int N> static __device__ __forceinline__ void cp_async_wait(void) { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
/* Four 8x8 bf16 matrices from shared memory: lane l gives the address of row l % 8 of matrix l / 8;
 * register j of lane (g, c) gets row g, columns 2c, 2c+1 of matrix j (an mma B fragment when the rows
 * are n and the columns k). */
static __device__ __forceinline__ void ldsm_x4(uint32_t *r, const __nv_bfloat16 *p) {
    unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
}
/* The same four matrices transposed: register j of lane (g, c) gets rows 2c, 2c+1 of column g (a B
 * fragment from a tile stored [k][n]). */
static __device__ __forceinline__ void ldsm_x4_t(uint32_t *r, const __nv_bfloat16 *p) {
    unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
}
/* A fragment (16 rows x 16 k) of a bf16 row-major tile with row stride ld (elements). */
static __device__ __forceinline__ void ld_afrag(uint32_t *a, const __nv_bfloat16 *p, int ld, int g, int c) {
    const __nv_bfloat16 *r0 = p + g * ld + 2 * c, *r1 = r0 + 8 * ld;
    a[0] = *reinterpret_cast<const uint32_t *>(r0);
    a[1] = *reinterpret_cast<const uint32_t *>(r1);
    a[2] = *reinterpret_cast<const uint32_t *>(r0 + 8);
    a[3] = *reinterpret_cast<const uint32_t *>(r1 + 8);
}
#endif
