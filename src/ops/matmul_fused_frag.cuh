/* The bf16 tensor-core pieces of the 2..32-row decode products (matmul_fused_mma.cu: the warps of a
 * block split K; matmul_fused_split.cu: a block's warps own row tiles, a cluster splits K): the mma,
 * and a lane's 16-byte weight piece (bf16, or 2-, 4-, 8-bit MLX codes) turned into A fragments. */
#ifndef AV_MATMUL_FUSED_FRAG_CUH
#define AV_MATMUL_FUSED_FRAG_CUH
#include "ops/matmul_fused.cuh"

__device__ __forceinline__ void mma_bf16(float *d, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

/* A lane's weights of one k step: BITS 0: 8 consecutive k of one bf16 weight row, the 16 bytes as they
 * lie; BITS 2, 4, 8: 16 bytes of MLX affine codes (KS = 16 / BITS chunks of 8 consecutive k) with the
 * scale and bias of each 16-code slot, turned into bf16 (scale * q + bias) chunk by chunk just before
 * the mma. One 16-byte load per lane feeds KS k chunks, so packed codes keep as many bytes in flight
 * per load as bf16 does. */
template <int BITS>
struct fzm_w {
    static constexpr int KS = 16 / BITS, NSL = KS > 1 ? KS / 2 : 1;
    uint4 q;
    float s[NSL], b[NSL];
};
template <>
struct fzm_w<0> {
    static constexpr int KS = 1;
    uint4 v;
};

/* 16-byte piece c of a weight row (r its index); in: inside the row and the unit. */
template <int BITS>
__device__ __forceinline__ void fzm_w_load(fzm_w<BITS> &w, const fz_args &a, const fzq_args &qa, const void *row, size_t r, int c, bool in) {
    if constexpr (BITS == 0) {
        w.v = in ? __ldcs(reinterpret_cast<const uint4 *>(row) + c) : make_uint4(0, 0, 0, 0);
    } else {
        constexpr int NSL = fzm_w<BITS>::NSL, KS = fzm_w<BITS>::KS;
        if (!in) {
            w.q = make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int m = 0; m < NSL; m++) w.s[m] = w.b[m] = 0.0f;
            return;
        }
        w.q = __ldcs(reinterpret_cast<const uint4 *>(row) + c);
        /* groups are powers of two (fused_ok): shifts, not divisions (64-bit ones were most of the kernel's
         * instructions); a table index fits 32 bits (rows x groups per row) */
        const int gsh = 31 - __clz(qa.group);
        uint32_t g0 = (uint32_t)r * (uint32_t)(a.K >> gsh), k0 = 8u * KS * (uint32_t)c;
#pragma unroll
        for (int m = 0; m < NSL; m++) {
            if (m && ((16 * m) & (qa.group - 1))) { /* same group as the slot before */
                w.s[m] = w.s[m - 1], w.b[m] = w.b[m - 1];
                continue;
            }
            uint32_t gi = g0 + ((k0 + 16u * m) >> gsh);
            w.s[m] = av_ld_w(qa.sc, a.dt, gi), w.b[m] = av_ld_w(qa.bi, a.dt, gi);
        }
    }
}

/* The bf16 fragment of chunk j of the piece (8 consecutive k). M4 (4-bit codes, one input tile):
 * register e holds codes (e, e + 4) of the chunk, made bf16 by the exponent trick ((q | 0x4300) is the
 * bf16 of 128 + q; minus 128, then scale * q + bias, two codes an instruction), and fzm_steps pairs x
 * the same way. H100 4-bit g64 decode, tok/s: 2 rows 2,227 -> 2,370, 8 rows 7,806 -> 8,250; with two
 * input tiles even, with four 14,570 -> 13,259 (not analysed: the input permutes are one suspect), so
 * more rows keep the I2F decode. Otherwise register e holds codes (2e, 2e + 1). */
template <int BITS, bool M4>
__device__ __forceinline__ uint4 fzm_w_frag(const fzm_w<BITS> &w, int j) {
    if constexpr (BITS == 0) {
        return w.v;
    } else if constexpr (M4) {
        const uint32_t wd[4] = {w.q.x, w.q.y, w.q.z, w.q.w}, v = wd[j];
        const __nv_bfloat162 s2 = __float2bfloat162_rn(w.s[j >> 1]), b2 = __float2bfloat162_rn(w.b[j >> 1]);
        const __nv_bfloat162 m128 = __float2bfloat162_rn(-128.0f);
        uint32_t u[4];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            uint32_t t = ((v >> (4 * e)) & 0x000f000fu) | 0x43004300u;
            __nv_bfloat162 q = __hadd2(*reinterpret_cast<__nv_bfloat162 *>(&t), m128);
            __nv_bfloat162 r = __hfma2(q, s2, b2);
            u[e] = *reinterpret_cast<uint32_t *>(&r);
        }
        return make_uint4(u[0], u[1], u[2], u[3]);
    } else {
        const uint32_t wd[4] = {w.q.x, w.q.y, w.q.z, w.q.w};
        float s = w.s[j >> 1], b = w.b[j >> 1];
        uint32_t u[4];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            uint32_t c0, c1;
            if constexpr (BITS == 8) {
                uint32_t v = wd[2 * j + (e >> 1)];
                c0 = (v >> (16 * (e & 1))) & 255u, c1 = (v >> (16 * (e & 1) + 8)) & 255u;
            } else {
                uint32_t v = wd[(j * BITS * 8) >> 5] >> ((j * BITS * 8) & 31);
                c0 = (v >> (BITS * 2 * e)) & ((1u << BITS) - 1u), c1 = (v >> (BITS * (2 * e + 1))) & ((1u << BITS) - 1u);
            }
            u[e] = pack_bf16(fmaf(s, (float)c0, b), fmaf(s, (float)c1, b));
        }
        return make_uint4(u[0], u[1], u[2], u[3]);
    }
}
#endif
