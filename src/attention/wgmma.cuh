/* Hopper (sm_90a) warpgroup tensor-core products (wgmma) for the flash attention kernels: shared-memory
 * matrix descriptors for 128-byte-swizzled tiles, the fences, and the m64nNk16 bf16 -> f32 products they
 * use (m64n64, m64n128 with both operands from shared memory; m64n64 with A from registers and B K-major
 * or MN-major, m64n128 with A from registers and B MN-major).
 * A warpgroup is 4 consecutive warps starting at a warp index divisible by 4; warp w of it owns
 * rows 16w..16w+15 of the 64-row product, and its accumulator registers are mma.m16n8k16's C fragment
 * repeated over the N / 8 column groups: d[4j + 0, 1] row g, cols 8j + 2c, +1; d[4j + 2, 3] row g + 8
 * (g = lane / 4, c = lane % 4).
 *
 * Tiles live in shared memory as rows of 64 bf16 (128 bytes) in the 128-byte swizzle: the 16-byte chunk
 * ch of row r sits at r * 128 + ((ch ^ (r % 8)) * 16), from a 1024-byte aligned base; a 128-wide tile is
 * two such 64-column halves one after the other. Only compiled into the sm_90a pass: the callers guard
 * with AV_WGMMA. */
#ifndef AV_WGMMA_CUH
#define AV_WGMMA_CUH
#include <stdint.h>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define AV_WGMMA 1
#else
#define AV_WGMMA 0
#endif

/* The body of a Hopper kernel in a pass without wgmma. Never launched there on purpose (the callers ask
 * av_cuda_flash_wgmma_ok: an sm_90 device and this build's sm_90a code), but a build whose only sm_90
 * target is plain sm_90 would land here on a Hopper GPU: stop loudly rather than return nothing. */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && !AV_WGMMA
#define AV_WGMMA_MISSING() __trap()
#else
#define AV_WGMMA_MISSING() ((void)0)
#endif

/* byte offset of 16-byte chunk ch (0..7) of row r in a swizzled 64-column half */
static __device__ __forceinline__ uint32_t swz128(int r, int ch) { return (uint32_t)(r * 128 + ((ch ^ (r & 7)) << 4)); }

/* A register fragment of the m64 products (as wgmma takes A from registers: mma.m16n8k16's A fragment) read
 * from a swizzled tile at t: rows r and r + 8, the 16 columns in 16-byte chunks ch and ch + 1 (c = lane % 4) */
static __device__ __forceinline__ void wg_afrag_ld(uint32_t (&a)[4], const unsigned char *t, int r, int ch, int c) {
    a[0] = *reinterpret_cast<const uint32_t *>(t + swz128(r, ch) + 4 * c);
    a[1] = *reinterpret_cast<const uint32_t *>(t + swz128(r + 8, ch) + 4 * c);
    a[2] = *reinterpret_cast<const uint32_t *>(t + swz128(r, ch + 1) + 4 * c);
    a[3] = *reinterpret_cast<const uint32_t *>(t + swz128(r + 8, ch + 1) + 4 * c);
}

/* The A fragments of a warpgroup's 64 rows (row r = 64 * its index + 16 * warp + lane / 4) over all HD
 * columns of a tile stored as 64-column parts `part` bytes apart: a[kk] for columns 16 kk .. 16 kk + 15 */
template <int HD> static __device__ __forceinline__ void wg_afrag_rows(uint32_t (&a)[HD / 16][4], const unsigned char *t, uint32_t part, int r, int c) {
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) wg_afrag_ld(a[kk], t + (kk >> 2) * part, r, 2 * (kk & 3), c);
}

/* 16 bytes global -> shared (a shared-window address), zeros when !ok (gmem must still be valid) */
static __device__ __forceinline__ void cp_async16_zfill_s(uint32_t s, const void *gmem, bool ok) {
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(ok ? 16 : 0));
}

/* Shared-memory matrix descriptor, 128-byte swizzle: start address, leading and stride byte offsets
 * (K-major tiles: stride = 1024, the next 8 rows; leading unused. MN-major: leading = the next 64
 * columns, stride = the next 8 rows of k). */
static __device__ __forceinline__ uint64_t wg_desc(uint32_t saddr, uint32_t lead, uint32_t stride) {
    return (uint64_t)((saddr & 0x3FFFF) >> 4) | (uint64_t)((lead >> 4) & 0x3FFF) << 16 | (uint64_t)((stride >> 4) & 0x3FFF) << 32 |
           (uint64_t)1 << 62;
}

/* MN-major (transposed) operand: next64 = bytes to the next 64 columns (n), k8 = bytes to the next 8 rows (k) */
static __device__ __forceinline__ uint64_t wg_desc_mn(uint32_t saddr, uint32_t next64, uint32_t k8) {
    return wg_desc(saddr, next64, k8);
}

#if AV_WGMMA
static __device__ __forceinline__ void wg_fence(void) { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
static __device__ __forceinline__ void wg_commit(void) { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> static __device__ __forceinline__ void wg_wait(void) { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
/* shared memory written by the generic proxy (st.shared, cp.async) before the tensor cores read it */
static __device__ __forceinline__ void fence_proxy_async(void) { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
/* keeps the compiler from moving accesses of accumulator registers across the asynchronous products */
template <int N> static __device__ __forceinline__ void wg_reg_fence(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
}

/* the 32 accumulator registers of an m64n64 product: their names in the asm text, and their operands */
#define WG_D32_REGS                                                                                                                          \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, "     \
    "%28, %29, %30, %31"
#define WG_D32_OPS                                                                                                                           \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),                                       \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),                                 \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),                               \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
/* the 64 accumulator registers of an m64n128 product: their names in the asm text, and their operands */
#define WG_D64_REGS                                                                                                                          \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, "     \
    "%28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, "     \
    "%54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define WG_D64_OPS                                                                                                                           \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),                                       \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),                                 \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),                               \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),                               \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),                               \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),                               \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),                               \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
/* D (+)= A B, m64n64k16: A (64 x 16) and B (16 x 64, K-major) from shared memory by descriptor; scale_d 0 overwrites D */
static __device__ __forceinline__ void wgmma_ss_n64(float (&d)[32], uint64_t a, uint64_t b, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
                 WG_D32_REGS
                 "}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : WG_D32_OPS
                 : "l"(a), "l"(b), "r"(scale_d));
}
/* D += A B (SD 0: D = A B), m64n64k16: A (64 x 16) from registers (per warp mma.m16n8k16's A fragment of its 16 rows), B (16 x 64)
 * from shared memory, K-major, or MN-major (TB: transposed, stored [k][n]) */
template <int TB, int SD = 1> static __device__ __forceinline__ void wgmma_rs_n64(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
                 WG_D32_REGS
                 "}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
                 : WG_D32_OPS
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(SD), "n"(TB));
}
/* Four chained m64n64k16 products over k = 0..63 in one asm statement (D (+)= sum_k A[k] B[k], SD 0: the first overwrites D), so
 * the compiler cannot put register copies between the steps of a chain in flight (ptxas then waits for every product) */
#define WG_RS4_STEP(A0, B, P) "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" WG_D32_REGS "}, {" A0 "}, " B ", " P ", 1, 1, %52;\n"
#define WG_RS4_TEXT                                                                                                                          \
    "{\n.reg .pred p, q;\nsetp.ne.b32 p, %53, 0;\nsetp.ne.b32 q, 1, 0;\n" WG_RS4_STEP("%32, %33, %34, %35", "%48", "p")                        \
        WG_RS4_STEP("%36, %37, %38, %39", "%49", "q") WG_RS4_STEP("%40, %41, %42, %43", "%50", "q")                                          \
            WG_RS4_STEP("%44, %45, %46, %47", "%51", "q") "}\n"
#define WG_RS4_INS                                                                                                                           \
    "r"(a[0][0]), "r"(a[0][1]), "r"(a[0][2]), "r"(a[0][3]), "r"(a[1][0]), "r"(a[1][1]), "r"(a[1][2]), "r"(a[1][3]), "r"(a[2][0]),          \
        "r"(a[2][1]), "r"(a[2][2]), "r"(a[2][3]), "r"(a[3][0]), "r"(a[3][1]), "r"(a[3][2]), "r"(a[3][3]), "l"(b[0]), "l"(b[1]), "l"(b[2]), \
        "l"(b[3]), "n"(TB), "n"(SD)
/* (SD 0: D is only written, so no earlier value of it is an input the compiler must carry into the products) */
#define WG_D32_OUTS                                                                                                                          \
    "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]), "=f"(d[4]), "=f"(d[5]), "=f"(d[6]), "=f"(d[7]),                                       \
    "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]), "=f"(d[12]), "=f"(d[13]), "=f"(d[14]), "=f"(d[15]),                                 \
    "=f"(d[16]), "=f"(d[17]), "=f"(d[18]), "=f"(d[19]), "=f"(d[20]), "=f"(d[21]), "=f"(d[22]), "=f"(d[23]),                               \
    "=f"(d[24]), "=f"(d[25]), "=f"(d[26]), "=f"(d[27]), "=f"(d[28]), "=f"(d[29]), "=f"(d[30]), "=f"(d[31])
template <int TB, int SD> static __device__ __forceinline__ void wgmma_rs_n64_x4(float (&d)[32], const uint32_t (&a)[4][4], const uint64_t (&b)[4]) {
    if constexpr (SD) asm volatile(WG_RS4_TEXT : WG_D32_OPS : WG_RS4_INS);
    else asm volatile(WG_RS4_TEXT : WG_D32_OUTS : WG_RS4_INS);
}
/* D += A B, m64n128k16: A (64 x 16) from registers (per warp mma.m16n8k16's A fragment of its 16 rows), B (16 x 128) from
 * shared memory, MN-major (transposed: stored [k][n]) */
static __device__ __forceinline__ void wgmma_rs_n128_t(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
                 WG_D64_REGS
                 "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : WG_D64_OPS
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(1));
}
/* D (+)= A B, m64n128k16: A (64 x 16) and B (16 x 128, K-major) from shared memory by descriptor; scale_d 0 overwrites D */
static __device__ __forceinline__ void wgmma_ss_n128(float (&d)[64], uint64_t a, uint64_t b, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
                 WG_D64_REGS
                 "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : WG_D64_OPS
                 : "l"(a), "l"(b), "r"(scale_d));
}
/* the 16 accumulator registers of an m64n32 product */
#define WG_D16_REGS "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
#define WG_D16_OPS                                                                                                                           \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),                                       \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
/* D (+)= A B, m64n32k16: A (64 x 16) and B (16 x 32) from shared memory, both MN-major (stored [k][m], [k][n]);
 * scale_d 0 overwrites D */
static __device__ __forceinline__ void wgmma_ss_n32_tt(float (&d)[16], uint64_t a, uint64_t b, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {"
                 WG_D16_REGS
                 "}, %16, %17, p, 1, 1, 1, 1;\n}\n"
                 : WG_D16_OPS
                 : "l"(a), "l"(b), "r"(scale_d));
}
#endif
#endif
