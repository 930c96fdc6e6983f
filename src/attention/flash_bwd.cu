/* CUDA flash attention backward for training (FA2-style, no [B,H,T,T] probabilities): B sequences of
 * T rows, positions 0..T-1, causal, GQA. bf16 tensor cores (mma.sync m16n8k16) with f32
 * accumulation; the softmax is recomputed from the forward's log-sum-exp.
 *   pre-pass: q, dout, k, v to bf16 rows, [sequence][head][token][dim] (the products that reduce
 *             over tokens read B fragments from the same rows by ldmatrix .trans), q pre-scaled by
 *             log2(e)/sqrt(hd) exactly as the forward rounds them (same scores, same P), and
 *             delta = rowsum(dout * out) per (sequence, head, row).
 *   kernel A: one block per (key block, KV head [, share of its query heads], sequence); each of
 *             FB_WARPS warps owns 16 keys and loops over the group's query heads and the 64-query
 *             chunks at or after its keys: S^T = K Q^T, P^T, dV += P^T dO, dP^T = V dO^T,
 *             dS^T = P^T (dP^T - delta), dK += dS^T Q, in registers.
 *   kernel B: one block per (16 * FB_WARPS queries, head, sequence); each warp owns 16 queries and
 *             loops over the 64-key tiles up to the diagonal: S, P, dP = dO V^T, dS, dQ += dS K.
 *   On Hopper (sm_90a) fb_dkdv_wg_k and fb_dq_wg_k run the same two passes on warpgroup tensor cores
 *             (wgmma), warp-specialised: a producer warpgroup loads Q / dO / K / V rows by TMA into
 *             shared memory (128-byte swizzle), consumer warpgroups run the products.
 * Every gradient element has one writer and a fixed summation order: deterministic, no atomics.
 * When there are too few (key tile, KV head, sequence) blocks to fill the GPU, kernel A splits a
 * group's query heads over several blocks writing partial sums, added in a fixed order after. */
#include "attention/flash_common.cuh"
#include "attention/wgmma.cuh"
#include "attention/tma.cuh"
#include "attention/flash_wgmma.h"
extern "C" {
#include "backend/cuda.h"
#include "attention/attention.h"
}

#define FB_T 64 /* query rows of a dK/dV chunk, keys of a dQ tile */
#define LOG2E 1.4426950409f

/* rows[b][h][t][d] = bf16(x[b*T + t][h*hd + d] * rscale); zeros for T <= t < Tp. One block of 256
 * threads per 32 rows x all hd (<= 128) dims of one (sequence, head): 16-byte loads, 8-byte stores.
 * With out (dout's conversion), also delta = dout . out per row (0 for padding rows) and lse2 = lse *
 * log2(e) (+inf for padding rows, so their P is exactly 0): one read of dout for both. The kernels
 * read every operand from these [token][dim] rows (the products over tokens take their B fragments
 * by ldmatrix .trans), so nothing is stored transposed. */
#define FB_CT 32
__global__ void __launch_bounds__(256) fb_convert_k(__nv_bfloat16 *rows, const float *x, float rscale, int T, int Tp, int NH, int hd,
                                                    const float *out, const float *lse, float *delta, float *lse2) {
    int z = blockIdx.y, b = z / NH, t0 = blockIdx.x * FB_CT, h4 = hd >> 2;
    size_t xs = (size_t)NH * hd;
    const float *xb = x + (size_t)b * T * xs + (size_t)(z % NH) * hd;
    __nv_bfloat16 *rb = rows + (size_t)z * Tp * hd;
    for (int i = threadIdx.x; i < FB_CT * h4; i += 256) {
        int r = i / h4, d = (i - r * h4) * 4, t = t0 + r;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        float dot = 0.0f;
        if (t < T) {
            v = *reinterpret_cast<const float4 *>(xb + (size_t)t * xs + d);
            if (out) {
                float4 o = *reinterpret_cast<const float4 *>(out + (size_t)b * T * xs + (size_t)t * xs + (size_t)(z % NH) * hd + d);
                dot = v.x * o.x + v.y * o.y + v.z * o.z + v.w * o.w;
            }
        }
        __nv_bfloat162 lo = __floats2bfloat162_rn(v.x * rscale, v.y * rscale), hi = __floats2bfloat162_rn(v.z * rscale, v.w * rscale);
        *reinterpret_cast<uint2 *>(rb + (size_t)t * hd + d) = make_uint2(*reinterpret_cast<uint32_t *>(&lo), *reinterpret_cast<uint32_t *>(&hi));
        if (out) { /* a row's h4 threads are consecutive lanes (h4 = 16 or 32 divides the warp) */
            for (int o = h4 >> 1; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
            if ((i & (h4 - 1)) == 0) {
                delta[(size_t)z * Tp + t] = dot;
                lse2[(size_t)z * Tp + t] = t < T ? lse[(size_t)z * T + t] * LOG2E : INFINITY;
            }
        }
    }
}

/* The bf16-gradient entry's pre-pass (PyTorch's contract: dout and out in bf16, [B*T, NH*hd] rows, read where
 * they lie by the kernels): delta = dout . out per row in f32 and lse2 as fb_convert_k's. One thread a
 * 16-byte piece; a row's hd / 8 threads are consecutive lanes. */
__global__ void __launch_bounds__(256) fb_delta16_k(const __nv_bfloat16 *dout, const __nv_bfloat16 *out, int T, int Tp, int NH, int hd,
                                                    const float *lse, float *delta, float *lse2) {
    int z = blockIdx.y, b = z / NH, t0 = blockIdx.x * FB_CT, h8 = hd >> 3;
    size_t xs = (size_t)NH * hd, base = (size_t)b * T * xs + (size_t)(z % NH) * hd;
    for (int i = threadIdx.x; i < FB_CT * h8; i += 256) {
        int r = i / h8, d = (i - r * h8) * 8, t = t0 + r;
        float dot = 0.0f;
        if (t < T) {
            uint4 x = *reinterpret_cast<const uint4 *>(dout + base + (size_t)t * xs + d);
            uint4 o = *reinterpret_cast<const uint4 *>(out + base + (size_t)t * xs + d);
            const __nv_bfloat162 *xp = reinterpret_cast<const __nv_bfloat162 *>(&x), *op = reinterpret_cast<const __nv_bfloat162 *>(&o);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float2 a = __bfloat1622float2(xp[e]), c = __bfloat1622float2(op[e]);
                dot = fmaf(a.x, c.x, fmaf(a.y, c.y, dot));
            }
        }
        for (int o = h8 >> 1; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        if ((i & (h8 - 1)) == 0) {
            delta[(size_t)z * Tp + t] = dot;
            lse2[(size_t)z * Tp + t] = t < T ? lse[(size_t)z * T + t] * LOG2E : INFINITY;
        }
    }
}

static __device__ __forceinline__ uint32_t ld32(const __nv_bfloat16 *p) { return *reinterpret_cast<const uint32_t *>(p); }

/* Kernel A: dK, dV of one block of 16 * WARPS keys. grid (KVH * nsplit, B, key blocks), heaviest (most
 * query tiles after them) first. nsplit == 1: dk, dv += the result; else block share sp writes
 * (=) its partial sum into dk / dv + sp * part_n. */
/* Two products side by side with A fragments already in registers: x[n] += a[k] . B^T over the k
 * steps, B's row n*8+g (row stride LD) giving the n-th 8 columns; y[n] likewise from b and C.
 * (dV += P^T dO with dK += dS^T Q in the dk/dv kernel; S = Q K^T with dP = dO V^T in the dq kernel.) */
template <int NN, int KK, int LD>
__device__ __forceinline__ void fb_mma2(float (&x)[NN][4], const uint32_t (&a)[KK][4], const __nv_bfloat16 *Bm, float (&y)[NN][4],
                                        const uint32_t (&b)[KK][4], const __nv_bfloat16 *Cm, int g, int c) {
#pragma unroll
    for (int n = 0; n < NN; n++) {
        const __nv_bfloat16 *rb = Bm + (n * 8 + g) * LD + 2 * c, *rc = Cm + (n * 8 + g) * LD + 2 * c;
#pragma unroll
        for (int k = 0; k < KK; k++) {
            mma_bf16(x[n], a[k], ld32(rb + k * 16), ld32(rb + k * 16 + 8));
            mma_bf16(y[n], b[k], ld32(rc + k * 16), ld32(rc + k * 16 + 8));
        }
    }
}

/* Two products over tokens side by side, A fragments already in registers: x[n] += a[k] . B over the k
 * steps, B a [token][dim] tile (row stride LD) whose columns n*8.. give the n-th 8 outputs, its
 * fragments by ldmatrix .trans (one load per two k steps); y[n] likewise from b and C.
 * (dV += P^T dO with dK += dS^T Q in the dk/dv kernel.) */
template <int NN, int KK, int LD>
__device__ __forceinline__ void fb_mma2t(float (&x)[NN][4], const uint32_t (&a)[KK][4], const __nv_bfloat16 *Bm, float (&y)[NN][4],
                                         const uint32_t (&b)[KK][4], const __nv_bfloat16 *Cm, int lane) {
    const int off = ((lane >> 3) * 8 + (lane & 7)) * LD; /* ldmatrix: lane l addresses token row l of the 32 */
#pragma unroll
    for (int n = 0; n < NN; n++)
#pragma unroll
        for (int k2 = 0; k2 < KK / 2; k2++) {
            uint32_t f[4], h[4];
            ldsm_x4_t(f, Bm + k2 * 32 * LD + off + n * 8);
            ldsm_x4_t(h, Cm + k2 * 32 * LD + off + n * 8);
            mma_bf16(x[n], a[2 * k2], f[0], f[1]);
            mma_bf16(x[n], a[2 * k2 + 1], f[2], f[3]);
            mma_bf16(y[n], b[2 * k2], h[0], h[1]);
            mma_bf16(y[n], b[2 * k2 + 1], h[2], h[3]);
        }
}

/* acc[n] = A . B^T for a warp's 16 rows of A (row stride KS) against the FB_T rows of B (n: 8-row
 * groups), over HD: the S^T = K Q^T and dP^T = V dO^T products of the dk/dv kernel. */
template <int HD, int KS>
__device__ __forceinline__ void fb_tile_abt(float (&acc)[FB_T / 8][4], const __nv_bfloat16 *A, const __nv_bfloat16 *Bm, int g, int c) {
#pragma unroll
    for (int n = 0; n < FB_T / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
        uint32_t a[4];
        ld_afrag(a, A + kk * 16, KS, g, c);
#pragma unroll
        for (int n = 0; n < FB_T / 8; n++) {
            const __nv_bfloat16 *r = Bm + (n * 8 + g) * KS + kk * 16 + 2 * c;
            mma_bf16(acc[n], a, ld32(r), ld32(r + 8));
        }
    }
}

/* The RoPE mode's bf16 copies of dq, dk, dv (any may be NULL): the q/k/v products' inputs, so they
 * need no conversion pass. */
struct fb_out16 {
    uint16_t *dq, *dk, *dv;
};
__device__ __forceinline__ void fb_st2(uint16_t *p, float a, float b) {
    __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    *reinterpret_cast<__nv_bfloat162 *>(p) = v;
}

/* p[0..1] = a, b; p16 (or NULL): the same values in bf16. */
__device__ __forceinline__ void fb_put2(float *p, uint16_t *p16, float a, float b) {
    *reinterpret_cast<float2 *>(p) = make_float2(a, b);
    if (p16) fb_st2(p16, a, b);
}

/* The accumulate mode's old values of a group of FB_GN column blocks of a thread's two rows (p0, p1 at
 * the group's first column; a row that is NULL reads 0): all of a group's loads are issued before any of
 * its stores, so a thread waits for one round trip a group instead of one per element (the compiler
 * may not move a load above a store through another pointer: they could alias). */
#define FB_GN 4
__device__ __forceinline__ void fb_load_old(float2 (&o)[FB_GN][2], const float *p0, const float *p1) {
#pragma unroll
    for (int i = 0; i < FB_GN; i++) {
        o[i][0] = p0 ? *reinterpret_cast<const float2 *>(p0 + i * 8) : make_float2(0.f, 0.f);
        o[i][1] = p1 ? *reinterpret_cast<const float2 *>(p1 + i * 8) : make_float2(0.f, 0.f);
    }
}

/* RoPE backward (rotate-half, as rope.c with the angle negated) on a [16 rows x HD] accumulator
 * fragment: columns d and d + HD/2 of a row sit in the same thread (n and n + HD/16). Rows r0 / r1
 * (elements 0,1 / 2,3) at positions pos[r]; rows past the end are left alone (not stored). */
template <int HD>
__device__ __forceinline__ void fb_rope_back(float (&a)[HD / 8][4], const int32_t *pos, const float *inv_freq, int r0, int r1, int c,
                                             int T) {
    constexpr int HN = HD / 16;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        float pr = (float)pos[min(h ? r1 : r0, T - 1)];
#pragma unroll
        for (int n = 0; n < HN; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                float sn, cs, y0 = a[n][2 * h + e], y1 = a[n + HN][2 * h + e];
                sincosf(pr * inv_freq[n * 8 + 2 * c + e], &sn, &cs);
                a[n][2 * h + e] = y0 * cs + y1 * sn;
                a[n + HN][2 * h + e] = y1 * cs - y0 * sn;
            }
    }
}

/* A warp's dK, dV rows (keys s0: elements 0, 1; s1: 2, 3; 16 x HD fragments) into dk, dv [B*T, KVH*HD]:
 * nsplit == 1: += (or, with pos, overwrite with dK rotated back and the bf16 copies); else share sp's
 * partial sums (=) at + sp * part_n. dK is scaled by scale first. G16 (nsplit == 1): only o16's bf16
 * rows, overwritten (rotated back with pos); dk, dv unused. */
template <int HD, int G16 = 0>
__device__ __forceinline__ void fb_store_dkdv(float (&dK)[HD / 8][4], float (&dV)[HD / 8][4], float *dk, float *dv, int b, int T, int KVH,
                                              int kh, int s0, int s1, int c, int nsplit, int sp, size_t part_n, float scale,
                                              const int32_t *pos, const float *inv_freq, fb_out16 o16) {
    size_t ks = (size_t)KVH * HD;
    if (pos && nsplit == 1) { /* overwrite, dK rotated back (RoPE backward) */
#pragma unroll
        for (int n = 0; n < HD / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) dK[n][e] *= scale;
        fb_rope_back<HD>(dK, pos + (size_t)b * T, inv_freq, s0, s1, c, T);
    }
    int acc = nsplit == 1 && !pos;
    float *dkp = G16 ? NULL : dk + sp * part_n, *dvp = G16 ? NULL : dv + sp * part_n;
    float ksc = pos && nsplit == 1 ? 1.0f : scale;
    int use16 = pos && nsplit == 1 && o16.dk;
    size_t off0 = ((size_t)b * T + s0) * ks + (size_t)kh * HD + 2 * c, off1 = ((size_t)b * T + s1) * ks + (size_t)kh * HD + 2 * c;
#pragma unroll
    for (int n0 = 0; n0 < HD / 8; n0 += FB_GN) {
        float2 ok[FB_GN][2], ov[FB_GN][2]; /* += : the group's old dk, dv */
        bool l0 = !G16 && acc && s0 < T, l1 = !G16 && acc && s1 < T;
        fb_load_old(ok, l0 ? dkp + off0 + n0 * 8 : NULL, l1 ? dkp + off1 + n0 * 8 : NULL);
        fb_load_old(ov, l0 ? dvp + off0 + n0 * 8 : NULL, l1 ? dvp + off1 + n0 * 8 : NULL);
#pragma unroll
        for (int i = 0; i < FB_GN; i++)
#pragma unroll
            for (int r = 0; r < 2; r++) { /* the thread's keys s0 (elements 0, 1) and s1 (2, 3) */
                int n = n0 + i;
                if ((r ? s1 : s0) >= T) continue;
                size_t off = (r ? off1 : off0) + n * 8;
                if constexpr (G16) {
                    fb_st2(o16.dk + off, dK[n][2 * r] * ksc, dK[n][2 * r + 1] * ksc);
                    fb_st2(o16.dv + off, dV[n][2 * r], dV[n][2 * r + 1]);
                } else {
                    fb_put2(dkp + off, use16 ? o16.dk + off : NULL, ok[i][r].x + dK[n][2 * r] * ksc, ok[i][r].y + dK[n][2 * r + 1] * ksc);
                    fb_put2(dvp + off, use16 ? o16.dv + off : NULL, ov[i][r].x + dV[n][2 * r], ov[i][r].y + dV[n][2 * r + 1]);
                }
            }
    }
}

/* A warp's dQ rows (t0: elements 0, 1; t1: 2, 3) times scale into dq [B*T, H*HD]: += , or with pos
 * overwritten, rotated back, and copied to dq16 (if not NULL). G16: into dq16 only (overwritten). */
template <int HD, int G16 = 0>
__device__ __forceinline__ void fb_store_dq(float (&acc)[HD / 8][4], float *dq, uint16_t *dq16, int b, int T, int H, int h, int t0, int t1,
                                            int c, float scale, const int32_t *pos, const float *inv_freq) {
    size_t qs = (size_t)H * HD;
#pragma unroll
    for (int n = 0; n < HD / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[n][e] *= scale;
    if (pos) fb_rope_back<HD>(acc, pos + (size_t)b * T, inv_freq, t0, t1, c, T); /* overwrite, rotated back */
    size_t off0 = ((size_t)b * T + t0) * qs + (size_t)h * HD + 2 * c, off1 = ((size_t)b * T + t1) * qs + (size_t)h * HD + 2 * c;
#pragma unroll
    for (int n0 = 0; n0 < HD / 8; n0 += FB_GN) {
        float2 o[FB_GN][2]; /* += (no positions): the group's old dq */
        fb_load_old(o, !G16 && !pos && t0 < T ? dq + off0 + n0 * 8 : NULL, !G16 && !pos && t1 < T ? dq + off1 + n0 * 8 : NULL);
#pragma unroll
        for (int i = 0; i < FB_GN; i++)
#pragma unroll
            for (int r = 0; r < 2; r++) { /* rows t0 (elements 0, 1) and t1 (2, 3) */
                int n = n0 + i;
                if ((r ? t1 : t0) >= T) continue;
                size_t off = (r ? off1 : off0) + n * 8;
                if constexpr (G16) fb_st2(dq16 + off, acc[n][2 * r], acc[n][2 * r + 1]);
                else fb_put2(dq + off, pos && dq16 ? dq16 + off : NULL, o[i][r].x + acc[n][2 * r], o[i][r].y + acc[n][2 * r + 1]);
            }
    }
}

/* Blocks per SM the kernels are compiled for: the bf16 entry's hd-64 kernels at 3 (dK/dV: 190 -> 168
 * registers) and 4 (dQ: 146 -> 128), a few bytes of spills outside the products; with 2 and 3 blocks
 * their 4-warp blocks left each scheduler 2 warps, stalled on the mma chains (ncu). H100, fwd+bwd at
 * 512 / 2048 / 8192 tokens: 74-75 / 144-145 / 184-185 -> 86 / 163 / 200-205 TFLOP/s. 0: no hint (the
 * f32 entry's kernels compile as before; a hint of 1 alone changes their register allocation). */
#define FB_MINB_A(HD, B16) ((HD) == 64 && (B16) ? 3 : 0)
#define FB_MINB_B(HD, B16) ((HD) == 64 && (B16) ? 4 : 0)

/* B16 (both kernels): qb, kb, vb are the caller's bf16 rows ([B*T, H*hd], [B*T, KVH*hd]; q unscaled),
 * read where they lie (rows past T zero-filled), and the scores are scaled by sl2 in the exponent's
 * FFMA, as the bf16 forward does; dout still comes converted (ob, with lse2 and delta). */
template <int HD, int WARPS, int B16>
__global__ void __launch_bounds__(WARPS * 32, FB_MINB_A(HD, B16)) fb_dkdv_k(float *dk, float *dv, const __nv_bfloat16 *qb, const __nv_bfloat16 *ob,
                                                 const __nv_bfloat16 *kb,
                                                 const __nv_bfloat16 *vb, const float *lse2, const float *delta, int T, int Tp, int H,
                                                 int KVH, int nsplit, size_t part_n, float scale, float sl2, const int32_t *pos,
                                                 const float *inv_freq, fb_out16 o16) {
    constexpr int KS = HD + FA_PAD, KT = 16 * WARPS; /* KT keys a block, 16 a warp; query chunks of FB_T */
    constexpr int BUF = 2 * FB_T * KS; /* bf16 elements of one chunk's operands */
    extern __shared__ __align__(16) unsigned char fb_smem[];
    __nv_bfloat16 *Ks = reinterpret_cast<__nv_bfloat16 *>(fb_smem), *Vs = Ks + KT * KS;
    __nv_bfloat16 *cb = Vs + KT * KS;                /* [2][Qs | Os] */
    float *fl = reinterpret_cast<float *>(cb + 2 * BUF); /* [2][lse2 64 | delta 64] */
    int kh = blockIdx.x / nsplit, sp = blockIdx.x % nsplit, b = blockIdx.y, j = blockIdx.z;
    int G = H / KVH, hpb = G / nsplit, h0 = kh * G + sp * hpb;
    int nqt = Tp / FB_T, qs0 = j * KT / FB_T, nq = nqt - qs0, nit = hpb * nq; /* query chunks from the block's first key */
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3, kw = warp * 16;

    if constexpr (B16) { /* the key tile's K and V rows (part of the first chunk's copy group) */
        for (int i = threadIdx.x; i < KT * HD / 8; i += WARPS * 32) {
            int r = i / (HD / 8), cc = (i % (HD / 8)) * 8, s = j * KT + r;
            bool ok = s < T;
            size_t src = ((size_t)(b * T + (ok ? s : 0)) * KVH + kh) * HD + cc;
            cp_async16_zfill(Ks + r * KS + cc, kb + src, ok);
            cp_async16_zfill(Vs + r * KS + cc, vb + src, ok);
        }
    } else { /* the key tile's K and V rows (part of the first chunk's copy group) */
        size_t base = ((size_t)(b * KVH + kh) * Tp + (size_t)j * KT) * HD;
        for (int i = threadIdx.x; i < KT * HD / 8; i += WARPS * 32) {
            int r = i / (HD / 8), cc = (i % (HD / 8)) * 8;
            cp_async16(Ks + r * KS + cc, kb + base + (size_t)r * HD + cc);
            cp_async16(Vs + r * KS + cc, vb + base + (size_t)r * HD + cc);
        }
    }
    auto load_chunk = [&](int it, int buf) {
        int h = h0 + it / nq, q0 = (qs0 + it % nq) * FB_T;
        size_t z = (size_t)b * H + h;
        __nv_bfloat16 *qs = cb + buf * BUF, *os = qs + FB_T * KS;
        const __nv_bfloat16 *qg = qb + (z * Tp + q0) * HD, *og = ob + (z * Tp + q0) * HD;
        for (int i = threadIdx.x; i < FB_T * HD / 8; i += WARPS * 32) {
            int r = i / (HD / 8), cc = (i % (HD / 8)) * 8;
            if constexpr (B16) {
                bool ok = q0 + r < T;
                cp_async16_zfill(qs + r * KS + cc, qb + ((size_t)(b * T + (ok ? q0 + r : 0)) * H + h) * HD + cc, ok);
            } else {
                cp_async16(qs + r * KS + cc, qg + (size_t)r * HD + cc);
            }
            cp_async16(os + r * KS + cc, og + (size_t)r * HD + cc);
        }
        if (threadIdx.x < 32) { /* 16 x 16 bytes of lse2, then of delta */
            float *f = fl + buf * 2 * FB_T;
            const float *src = (threadIdx.x < 16 ? lse2 : delta) + z * Tp + q0;
            int o = (threadIdx.x & 15) * 4;
            cp_async16(f + (threadIdx.x < 16 ? 0 : FB_T) + o, src + o);
        }
        cp_async_commit();
    };
    load_chunk(0, 0);

    float dK[HD / 8][4], dV[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) dK[n][e] = dV[n][e] = 0.0f;

    for (int it = 0; it < nit; it++) {
        int buf = it & 1, q0 = (qs0 + it % nq) * FB_T, k0 = j * KT + kw; /* the chunk's first query, the warp's first key */
        cp_async_wait_all();
        __syncthreads();
        if (it + 1 < nit) load_chunk(it + 1, buf ^ 1);
        if (q0 + FB_T - 1 < k0) continue;   /* every query of the chunk is before this warp's keys */
        int diag = q0 < k0 + 15;             /* the causal edge crosses the chunk for this warp */
        const __nv_bfloat16 *qs = cb + buf * BUF, *os = qs + FB_T * KS;
        const float *ls = fl + buf * 2 * FB_T, *dl = ls + FB_T;
        /* S^T = K Q^T (log2 units: q pre-scaled), then P^T = exp2(S^T - lse2[query]), causal on the diagonal */
        float p[FB_T / 8][4];
        fb_tile_abt<HD, KS>(p, Ks + kw * KS, qs, g, c);
        int key0 = k0 + g, key1 = key0 + 8; /* the thread's two keys */
#pragma unroll
        for (int n = 0; n < FB_T / 8; n++) {
            int tq = n * 8 + 2 * c, qa = q0 + tq; /* relative to the chunk / absolute */
            float l0 = ls[tq], l1 = ls[tq + 1];
            if constexpr (B16) {
                p[n][0] = diag && qa < key0 ? 0.0f : fa_exp2(fmaf(p[n][0], sl2, -l0));
                p[n][1] = diag && qa + 1 < key0 ? 0.0f : fa_exp2(fmaf(p[n][1], sl2, -l1));
                p[n][2] = diag && qa < key1 ? 0.0f : fa_exp2(fmaf(p[n][2], sl2, -l0));
                p[n][3] = diag && qa + 1 < key1 ? 0.0f : fa_exp2(fmaf(p[n][3], sl2, -l1));
            } else {
                p[n][0] = diag && qa < key0 ? 0.0f : fa_exp2(p[n][0] - l0);
                p[n][1] = diag && qa + 1 < key0 ? 0.0f : fa_exp2(p[n][1] - l1);
                p[n][2] = diag && qa < key1 ? 0.0f : fa_exp2(p[n][2] - l0);
                p[n][3] = diag && qa + 1 < key1 ? 0.0f : fa_exp2(p[n][3] - l1);
            }
        }
        /* dP^T = V dO^T */
        float dp[FB_T / 8][4];
        fb_tile_abt<HD, KS>(dp, Vs + kw * KS, os, g, c);
        /* P^T and dS^T = P^T (dP^T - delta) as A operands (k = queries): accumulator reuse */
        uint32_t pa[FB_T / 16][4], da[FB_T / 16][4];
#pragma unroll
        for (int n = 0; n < FB_T / 8; n++) {
            int tq = n * 8 + 2 * c;
            float d0 = dl[tq], d1 = dl[tq + 1];
            pa[n / 2][(n & 1) * 2 + 0] = pack_bf16(p[n][0], p[n][1]);
            pa[n / 2][(n & 1) * 2 + 1] = pack_bf16(p[n][2], p[n][3]);
            da[n / 2][(n & 1) * 2 + 0] = pack_bf16(p[n][0] * (dp[n][0] - d0), p[n][1] * (dp[n][1] - d1));
            da[n / 2][(n & 1) * 2 + 1] = pack_bf16(p[n][2] * (dp[n][2] - d0), p[n][3] * (dp[n][3] - d1));
        }
        /* dV += P^T dO, dK += dS^T Q (B operands: the [query][d] tiles by ldmatrix .trans; Q as
         * pre-scaled for the scores, so dK's scale is scale / that factor = ln 2; B16: unscaled) */
        fb_mma2t<HD / 8, FB_T / 16, KS>(dV, pa, os, dK, da, qs, lane);
    }
    int s0 = j * KT + kw + g;
    fb_store_dkdv<HD>(dK, dV, dk, dv, b, T, KVH, kh, s0, s0 + 8, c, nsplit, sp, part_n, scale, pos, inv_freq, o16);
}

/* Kernel A on Hopper (sm_90a): the same products on warpgroup tensor cores, warp-specialised as the
 * forward (flash_wgmma.cu). One block per (128 keys, KV head [, share of its query heads], sequence):
 * a producer warpgroup (one lane) loads the block's K and V once and the query chunks (64 rows of Q and
 * dO, their lse2 and delta) by TMA into FB_WG_NST shared-memory stages (128-byte swizzle), mbarriers
 * counting the bytes in and the consumers' releases out; two consumer warpgroups, each owning 64 keys,
 * take the chunks at their own pace (no block barrier in the loop). S^T = K Q^T and dP^T = V dO^T from
 * shared memory; dV += P^T dO and dK += dS^T Q with P^T, dS^T from registers and dO, Q by transposed
 * (MN-major) descriptors. S^T and dP^T are separate commit groups: P^T is exponentiated and dV issued
 * while dP^T runs; a chunk's dK product still runs while the next chunk's S^T, dP^T are issued, and its
 * stage is released once those are awaited. Rows of each operand at p + b * sb + head * sh + t * st
 * (t < T; zeros past it; the tensor maps are built from these). sl2: the scores' factor to log2 units
 * (1 where q comes pre-scaled). */
struct fb_rows {
    const __nv_bfloat16 *p;
    size_t sb, sh;
    unsigned st;
};
/* Consumer warpgroups a dK/dV block: 2 (128 keys) for both head dims (bench/NOTES-attention.md, session 18) */
#define FB_WG_KW 2
#define FB_WG_NST 4 /* query chunk stages of the dK/dV kernel */
#define FB_WG_QST 4 /* K/V tile stages of the dQ kernel */
#define FB_WG_KT (64 * FB_WG_KW) /* keys a dK/dV block */
#define FB_WG_NSG 2 /* dQ staging buffers of the one-pass kernel */
#define FB_NW 2     /* its dQ writer threads (one a warp, alternate chunks; one: 1-2% slower at 8192 tokens, session 29) */
/* consumer warpgroups of the dQ kernel (64 query rows each); hd 64 with two: 2-4% slower (session 25) */
#define FB_WG_QNC(HD) ((HD) == 128 ? 2 : 3)
#define FB_WG_QB(HD) (64 * FB_WG_QNC(HD)) /* query rows a dQ block */
#if AV_WGMMA
/* The one-pass kernel's dQ product of a chunk, after both consumers' dS^T rows are in shared memory: d = dS K for 64 queries
 * x the 32 columns of K at k (a consumer's half), over the block's 128 keys. */
static __device__ __forceinline__ void fb_issue_dq(float (&d)[16], uint32_t ds, uint32_t k) {
    fence_proxy_async();
    named_sync(1, 2 * 128);
    wg_reg_fence(d);
    wg_fence();
#pragma unroll
    for (int kc = 0; kc < FB_WG_KT / 16; kc++)
        wgmma_ss_n32_tt(d, wg_desc_mn(ds + kc * 2048, 0, 1024), wg_desc_mn(k + kc * 2048, 0, 1024), kc > 0);
    wg_commit();
}
#endif
template <int HD, int G16, int DQ>
__global__ void __launch_bounds__((FB_WG_KW + 1) * 128, 1)
    fb_dkdv_wg_k(float *dk, float *dv, const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap to,
                 const __grid_constant__ CUtensorMap tk, const __grid_constant__ CUtensorMap tv, const float *lse2, const float *delta, int T,
                 int Tp, int H, int KVH, int nsplit, size_t part_n, float scale, float sl2, const int32_t *pos, const float *inv_freq,
                 fb_out16 o16, const __grid_constant__ CUtensorMap tdq, unsigned *flags) {
#if AV_WGMMA
    constexpr int KT = FB_WG_KT, QC = FB_T, NST = FB_WG_NST, HP = HD / 64, NSG = FB_WG_NSG;
    constexpr uint32_t KVB = KT * HD * 2, CB = QC * HD * 2, FLB = 2 * QC * 4; /* bytes: K (or V), a Q (or dO) chunk, its lse2 + delta */
    constexpr uint32_t DSB = KT * QC * 2, DQB = QC * 32 * 4; /* bytes: dS^T of a chunk, a consumer's half of its dQ */
    extern __shared__ __align__(16) unsigned char fb_wg_smem[];
    __shared__ __align__(8) uint64_t bars[1 + 2 * NST + 2 * NSG];
    uint32_t raw = (uint32_t)__cvta_generic_to_shared(fb_wg_smem), sK = (raw + 1023u) & ~1023u;
    const uint32_t sV = sK + KVB, sC = sV + KVB, sF = sC + NST * 2 * CB; /* chunks [NST][Q | dO], then [NST][lse2 | delta] */
    const uint32_t sDS = sF + NST * FLB, sDQ = sDS + 2 * DSB; /* DQ: dS^T [2][key][query], dQ staging [NSG][consumer][query][32] */
    const uint32_t bKV = (uint32_t)__cvta_generic_to_shared(bars), bF = bKV + 8, bE = bF + 8 * NST, bQF = bE + 8 * NST, bQE = bQF + 8 * NSG;
    const float *fl = reinterpret_cast<const float *>(fb_wg_smem + (sF - raw));
    int kh = blockIdx.x / nsplit, sp = blockIdx.x % nsplit, b = blockIdx.y, j = blockIdx.z;
    int G = H / KVH, hpb = G / nsplit, h0 = kh * G + sp * hpb;
    int nqt = Tp / QC, qs0 = j * KT / QC, nq = nqt - qs0, nit = hpb * nq; /* query chunks from the block's first key */
    int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, c = lane & 3;
    if (tid == 0) {
        mbar_init(bKV, 1);
        for (int s = 0; s < NST; s++) {
            mbar_init(bF + 8 * s, 1);
            mbar_init(bE + 8 * s, 4 * FB_WG_KW); /* a warp of each consumer warpgroup */
        }
        for (int u = 0; u < (DQ ? NSG : 0); u++) {
            mbar_init(bQF + 8 * u, 4 * FB_WG_KW); /* every consumer warp staged its part */
            mbar_init(bQE + 8 * u, 1);            /* the writer has read it */
        }
        mbar_init_fence();
    }
    __syncthreads();
    /* DQ: a block takes its query chunks last first, so block j - 1 (launched no later) reaches each chunk no later than
     * block j, which adds its dQ share only after j - 1 has (fixed order, no waiting in the common case) */
    auto chunk = [&](int it) { return qs0 + (DQ ? nq - 1 - it % nq : it % nq); };

    if (wg == 0) { /* producer */
        regs_dec<24>();
        if (warp == 0 && lane == 0) {
            mbar_expect(bKV, 2 * KVB);
            for (int p = 0; p < HP; p++)
                for (int w = 0; w < KT / 64; w++) {
                    uint32_t o = p * (KT * 128) + w * (64 * 128);
                    tma_load4(sK + o, &tk, 64 * p, j * KT + 64 * w, kh, b, bKV);
                    tma_load4(sV + o, &tv, 64 * p, j * KT + 64 * w, kh, b, bKV);
                }
            for (int it = 0; it < nit; it++) {
                int s = it % NST, h = h0 + it / nq, q0 = chunk(it) * QC;
                if (it >= NST) mbar_wait(bE + 8 * s, ((it / NST) - 1) & 1); /* the consumers released its last use */
                uint32_t cq = sC + s * 2 * CB, bar = bF + 8 * s;
                mbar_expect(bar, 2 * CB + FLB);
                for (int p = 0; p < HP; p++) {
                    tma_load4(cq + p * (QC * 128), &tq, 64 * p, q0, h, b, bar);
                    tma_load4(cq + CB + p * (QC * 128), &to, 64 * p, q0, h, b, bar);
                }
                size_t z = ((size_t)b * H + h) * Tp + q0;
                bulk_load(sF + s * FLB, lse2 + z, QC * 4, bar);
                bulk_load(sF + s * FLB + QC * 4, delta + z, QC * 4, bar);
            }
        }
        if (DQ && warp >= 1 && warp <= FB_NW && lane == 0) { /* dQ writers (chunks alternate): staged dQ into the f32 sums, in block order */
            for (int it = warp - 1; it < nit; it += FB_NW) {
                int u = it % NSG, h = h0 + it / nq, qc = chunk(it);
                mbar_wait(bQF + 8 * u, (it / NSG) & 1);
                unsigned *f = flags + ((size_t)b * H + h) * nqt + qc;
                if (j > 0)
                    while (flag_get(f) != (unsigned)j) {
                    } /* key blocks 0 .. j - 1 have added theirs */
                fence_proxy_async_global();
                for (int c2 = 0; c2 < 2; c2++) {
                    uint32_t src = sDQ + (u * 2 + c2) * DQB;
                    if (j == 0) tma_store4(&tdq, 32 * c2, qc * QC, h, b, src);
                    else tma_add4(&tdq, 32 * c2, qc * QC, h, b, src);
                }
                bulk_commit();
                bulk_wait_read<0>();
                mbar_arrive(bQE + 8 * u);
                bulk_wait<0>(); /* complete: the next block may add */
                fence_proxy_async_global();
                flag_bump(f);
            }
            bulk_wait<0>();
        }
        return;
    }
    regs_inc<240>();
    const int cw = wg - 1, kw = j * KT + 64 * cw; /* the warpgroup's first key */
    float dK[HD / 2], dV[HD / 2];
#pragma unroll
    for (int i = 0; i < HD / 2; i++) dK[i] = dV[i] = 0.0f;
    const int key0 = kw + 16 * warp + g, key1 = key0 + 8; /* the thread's two keys */
    int prev = -1;                                        /* the stage whose dK product is still in flight */
    auto release = [&](int s) {
        if (s >= 0 && lane == 0) mbar_arrive(bE + 8 * s);
    };
    /* DQ: the consumer's half (32 columns) of the chunk's dQ = dS K over the block's keys, staged into shared memory
     * (128-byte swizzle, as the writer's tensor map reads it) once its product is awaited */
    float dqa[16] = {};
    auto stage_dq = [&](int i) {
        int u = i % NSG;
        mbar_wait(bQE + 8 * u, ((i / NSG) & 1) ^ 1); /* the writer has read what buffer u held before */
        unsigned char *t = fb_wg_smem + (sDQ + (u * 2 + cw) * DQB - raw);
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int h2 = 0; h2 < 2; h2++) {
                int r = 16 * warp + g + 8 * h2;
                *reinterpret_cast<float2 *>(t + r * 128 + (((2 * n + (c >> 1)) ^ (r & 7)) << 4) + 8 * (c & 1)) =
                    make_float2(dqa[4 * n + 2 * h2], dqa[4 * n + 2 * h2 + 1]);
            }
        fence_proxy_async();
        __syncwarp();
        if (lane == 0) mbar_arrive(bQF + 8 * u);
    };
    mbar_wait(bKV, 0);
    /* hd 64: the warpgroup's K and V rows as register A fragments for S^T and dP^T, read once (H100, session 25: forward+backward
     * 2-4% faster; hd 128 has no registers for them) */
    constexpr int KR = HD == 64;
    uint32_t kf[KR ? HD / 16 : 1][4], vf[KR ? HD / 16 : 1][4];
    if constexpr (KR) {
        wg_afrag_rows<HD>(kf, fb_wg_smem + (sK - raw), KT * 128, cw * 64 + 16 * warp + g, c);
        wg_afrag_rows<HD>(vf, fb_wg_smem + (sV - raw), KT * 128, cw * 64 + 16 * warp + g, c);
    }
    for (int it = 0; it < nit; it++) {
        int s = it % NST, q0 = chunk(it) * QC;
        mbar_wait(bF + 8 * s, (it / NST) & 1);
        /* every query of the chunk is before this warpgroup's keys: skipped (DQ: computed, all zero, so the loop has no branch
         * around products, which ptxas would serialise) */
        if (!DQ && q0 + QC - 1 < kw) {
            wg_wait<0>();
            release(prev);
            release(s);
            prev = -1;
            continue;
        }
        {
            int diag = q0 < kw + 63; /* the causal edge crosses the chunk */
            const uint32_t cq = sC + s * 2 * CB, co = cq + CB;
            float st[QC / 2], dp[QC / 2];
            if constexpr (!(KR && DQ)) /* (KR && DQ: the first products overwrite them) */
#pragma unroll
                for (int i = 0; i < QC / 2; i++) st[i] = dp[i] = 0.0f;
            wg_fence();
            if constexpr (KR && DQ) { /* one asm statement a chain: with the zeroed accumulators above, NVVM put copies between
                                         this kernel's chain steps, and ptxas waits there (C7517; see wgmma_rs_n64_x4) */
                uint64_t bq[4], bo[4];
#pragma unroll
                for (int kk = 0; kk < 4; kk++) bq[kk] = wg_desc(cq + kk * 32, 16, 1024), bo[kk] = wg_desc(co + kk * 32, 16, 1024);
                wgmma_rs_n64_x4<0, 0>(st, *reinterpret_cast<const uint32_t(*)[4][4]>(kf), bq);
                wg_commit();
                wgmma_rs_n64_x4<0, 0>(dp, *reinterpret_cast<const uint32_t(*)[4][4]>(vf), bo);
                wg_commit();
            } else {
#pragma unroll
                for (int kk = 0; kk < HD / 16; kk++) {
                    uint32_t ka = (kk >> 2) * (KT * 128) + cw * 64 * 128 + (kk & 3) * 32, kb_ = (kk >> 2) * (QC * 128) + (kk & 3) * 32;
                    if constexpr (KR) wgmma_rs_n64<0>(st, kf[KR ? kk : 0], wg_desc(cq + kb_, 16, 1024));
                    else wgmma_ss_n64(st, wg_desc(sK + ka, 16, 1024), wg_desc(cq + kb_, 16, 1024), kk > 0);
                }
                wg_commit();
#pragma unroll
                for (int kk = 0; kk < HD / 16; kk++) {
                    uint32_t ka = (kk >> 2) * (KT * 128) + cw * 64 * 128 + (kk & 3) * 32, kb_ = (kk >> 2) * (QC * 128) + (kk & 3) * 32;
                    if constexpr (KR) wgmma_rs_n64<0>(dp, vf[KR ? kk : 0], wg_desc(co + kb_, 16, 1024));
                    else wgmma_ss_n64(dp, wg_desc(sV + ka, 16, 1024), wg_desc(co + kb_, 16, 1024), kk > 0);
                }
                wg_commit();
            }
            wg_wait<1>(); /* S^T (and the last chunk's dV / dK products); dP^T still running */
            release(prev);
            wg_reg_fence(st);
            const float *ls = fl + s * 2 * QC, *dl = ls + QC;
            uint32_t pa[QC / 16][4], da[QC / 16][4];
#pragma unroll
            for (int n = 0; n < QC / 8; n++) { /* P^T, kept in st for dS^T */
                int tq = n * 8 + 2 * c, qa = q0 + tq; /* relative to the chunk / absolute */
                float l0 = ls[tq], l1 = ls[tq + 1];
                st[4 * n + 0] = diag && qa < key0 ? 0.0f : fa_exp2(fmaf(st[4 * n + 0], sl2, -l0));
                st[4 * n + 1] = diag && qa + 1 < key0 ? 0.0f : fa_exp2(fmaf(st[4 * n + 1], sl2, -l1));
                st[4 * n + 2] = diag && qa < key1 ? 0.0f : fa_exp2(fmaf(st[4 * n + 2], sl2, -l0));
                st[4 * n + 3] = diag && qa + 1 < key1 ? 0.0f : fa_exp2(fmaf(st[4 * n + 3], sl2, -l1));
                pa[n / 2][(n & 1) * 2 + 0] = pack_bf16(st[4 * n + 0], st[4 * n + 1]);
                pa[n / 2][(n & 1) * 2 + 1] = pack_bf16(st[4 * n + 2], st[4 * n + 3]);
            }
            wg_reg_fence(dV);
            wg_fence();
#pragma unroll
            for (int kc = 0; kc < QC / 16; kc++) { /* dV += P^T dO under dP^T and dS^T */
                uint64_t dO_ = wg_desc_mn(co + kc * 2048, QC * 128, 1024);
                if constexpr (HD == 128) wgmma_rs_n128_t(dV, pa[kc], dO_);
                else wgmma_rs_n64<1>(dV, pa[kc], dO_);
            }
            wg_commit();
            wg_wait<1>(); /* dP^T */
            wg_reg_fence(dp);
#pragma unroll
            for (int n = 0; n < QC / 8; n++) {
                int tq = n * 8 + 2 * c;
                float d0 = dl[tq], d1 = dl[tq + 1];
                da[n / 2][(n & 1) * 2 + 0] = pack_bf16(st[4 * n + 0] * (dp[4 * n + 0] - d0), st[4 * n + 1] * (dp[4 * n + 1] - d1));
                da[n / 2][(n & 1) * 2 + 1] = pack_bf16(st[4 * n + 2] * (dp[4 * n + 2] - d0), st[4 * n + 3] * (dp[4 * n + 3] - d1));
            }
            if constexpr (DQ) { /* dS^T rows (keys) of 64 queries into shared memory as dQ's A operand reads them (MN-major); dQ = dS K */
                unsigned char *t = fb_wg_smem + (sDS + (it & 1) * DSB - raw);
#pragma unroll
                for (int n = 0; n < QC / 8; n++)
#pragma unroll
                    for (int h2 = 0; h2 < 2; h2++) {
                        int r = cw * 64 + 16 * warp + g + 8 * h2;
                        *reinterpret_cast<uint32_t *>(t + r * 128 + ((n ^ (r & 7)) << 4) + 4 * c) = da[n / 2][(n & 1) * 2 + h2];
                    }
                fb_issue_dq(dqa, sDS + (it & 1) * DSB, sK + 64 * cw);
            }
            wg_reg_fence(dK);
            wg_fence();
#pragma unroll
            for (int kc = 0; kc < QC / 16; kc++) {
                uint64_t dQ_ = wg_desc_mn(cq + kc * 2048, QC * 128, 1024);
                if constexpr (HD == 128) wgmma_rs_n128_t(dK, da[kc], dQ_);
                else wgmma_rs_n64<1>(dK, da[kc], dQ_);
            }
            wg_commit();
            if constexpr (DQ) { /* dQ (and dV) done, dK still running: dQ to the writer within the iteration (ptxas cannot see a
                                   product of the last iteration retired by this one's waits, and would serialise them all) */
                wg_wait<1>();
                wg_reg_fence(dqa);
                stage_dq(it);
            }
            /* hd 128: dV awaited here, so its P^T registers are free before the next chunk's S^T, dP^T accumulators are
             * (otherwise ptxas serialises the products for want of registers; H100, session 25: 8192 tokens fwd+bwd 4.55 -> 4.05 ms) */
            if constexpr (HD == 128) wg_wait<1>();
            prev = s;
        }
    }
    wg_wait<0>();
    wg_reg_fence(dV);
    wg_reg_fence(dK);
    fb_store_dkdv<HD, G16>(*reinterpret_cast<float(*)[HD / 8][4]>(dK), *reinterpret_cast<float(*)[HD / 8][4]>(dV), dk, dv, b, T, KVH, kh, key0, key1,
                      c, nsplit, sp, part_n, scale, pos, inv_freq, o16);
#else
    AV_WGMMA_MISSING();
#endif
}

/* Kernel B: dQ of one tile of 16 * WARPS queries of one head. grid (H, B, query tiles), heaviest (last)
 * first; keys come in tiles of FB_T (a block of 128 queries reads each K/V tile once for all of them). */
template <int HD, int WARPS, int B16>
__global__ void __launch_bounds__(WARPS * 32, FB_MINB_B(HD, B16)) fb_dq_k(float *dq, const __nv_bfloat16 *qb, const __nv_bfloat16 *ob, const __nv_bfloat16 *kb,
                                                      const __nv_bfloat16 *vb, const float *lse2, const float *delta,
                                                      int T, int Tp, int H, int KVH, float scale, float sl2, const int32_t *pos,
                                                      const float *inv_freq, uint16_t *dq16) {
    constexpr int KS = HD + FA_PAD, QT = 16 * WARPS;
    constexpr int BUF = 2 * FB_T * KS; /* Ks | Vs */
    extern __shared__ __align__(16) unsigned char fb_smem[];
    __nv_bfloat16 *sm = reinterpret_cast<__nv_bfloat16 *>(fb_smem);
    int h = blockIdx.x, b = blockIdx.y, qt = gridDim.z - 1 - blockIdx.z, kh = h / (H / KVH);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    int tw = qt * QT + warp * 16; /* the warp's first row */
    int active = tw < Tp;         /* a warp past the padded rows only helps load */
    int nkt = min(Tp, qt * QT + QT) / FB_T;                 /* key tiles the block's rows see */
    int wkt = active ? (tw + 15) / FB_T + 1 : 0;           /* key tiles this warp's rows see */
    size_t z = (size_t)b * H + h, zk = (size_t)b * KVH + kh;

    auto load_tile = [&](int j, int buf) {
        __nv_bfloat16 *ks_ = sm + buf * BUF, *vs_ = ks_ + FB_T * KS;
        size_t base = (zk * Tp + (size_t)j * FB_T) * HD;
        for (int i = threadIdx.x; i < FB_T * HD / 8; i += WARPS * 32) {
            int r = i / (HD / 8), cc = (i % (HD / 8)) * 8;
            if constexpr (B16) {
                int s = j * FB_T + r;
                bool ok = s < T;
                size_t src = ((size_t)(b * T + (ok ? s : 0)) * KVH + kh) * HD + cc;
                cp_async16_zfill(ks_ + r * KS + cc, kb + src, ok);
                cp_async16_zfill(vs_ + r * KS + cc, vb + src, ok);
            } else {
                cp_async16(ks_ + r * KS + cc, kb + base + (size_t)r * HD + cc);
                cp_async16(vs_ + r * KS + cc, vb + base + (size_t)r * HD + cc);
            }
        }
        cp_async_commit();
    };
    load_tile(0, 0);

    /* the warp's Q (pre-scaled) and dO rows as A fragments, its rows' lse2 and delta */
    uint32_t qf[HD / 16][4], of[HD / 16][4];
    float l0 = 0.0f, l1 = 0.0f, d0 = 0.0f, d1 = 0.0f;
    if (active) {
        const __nv_bfloat16 *qg = qb + (z * Tp + tw) * HD, *og = ob + (z * Tp + tw) * HD;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            if constexpr (B16) { /* the caller's rows tw + g and + 8 (zeros past T) */
                int ra = tw + g, rb = ra + 8, d = kk * 16 + 2 * c;
                const __nv_bfloat16 *pa_ = qb + ((size_t)(b * T + min(ra, T - 1)) * H + h) * HD + d;
                const __nv_bfloat16 *pb_ = qb + ((size_t)(b * T + min(rb, T - 1)) * H + h) * HD + d;
                qf[kk][0] = ra < T ? ld32(pa_) : 0u;
                qf[kk][1] = rb < T ? ld32(pb_) : 0u;
                qf[kk][2] = ra < T ? ld32(pa_ + 8) : 0u;
                qf[kk][3] = rb < T ? ld32(pb_ + 8) : 0u;
            } else {
                ld_afrag(qf[kk], qg + kk * 16, HD, g, c);
            }
            ld_afrag(of[kk], og + kk * 16, HD, g, c);
        }
        l0 = lse2[z * Tp + tw + g], l1 = lse2[z * Tp + tw + g + 8];
        d0 = delta[z * Tp + tw + g], d1 = delta[z * Tp + tw + g + 8];
    }
    int r0 = tw + g, r1 = r0 + 8; /* the thread's rows */
    float acc[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;

    for (int j = 0; j < nkt; j++) {
        int buf = j & 1;
        cp_async_wait_all();
        __syncthreads();
        if (j + 1 < nkt) load_tile(j + 1, buf ^ 1);
        if (j >= wkt) continue; /* every key of the tile is past this warp's rows */
        int s0 = j * FB_T, diag = s0 + FB_T - 1 > tw; /* the causal edge crosses the tile */
        const __nv_bfloat16 *ks_ = sm + buf * BUF, *vs_ = ks_ + FB_T * KS;
        float p[FB_T / 8][4], dp[FB_T / 8][4];
#pragma unroll
        for (int n = 0; n < FB_T / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) p[n][e] = dp[n][e] = 0.0f;
        fb_mma2<FB_T / 8, HD / 16, KS>(p, qf, ks_, dp, of, vs_, g, c);
        uint32_t da[FB_T / 16][4];
#pragma unroll
        for (int n = 0; n < FB_T / 8; n++) {
            int s = s0 + n * 8 + 2 * c; /* the key */
            float p0, p1, p2, p3;
            if constexpr (B16) {
                p0 = diag && s > r0 ? 0.0f : fa_exp2(fmaf(p[n][0], sl2, -l0)), p1 = diag && s + 1 > r0 ? 0.0f : fa_exp2(fmaf(p[n][1], sl2, -l0));
                p2 = diag && s > r1 ? 0.0f : fa_exp2(fmaf(p[n][2], sl2, -l1)), p3 = diag && s + 1 > r1 ? 0.0f : fa_exp2(fmaf(p[n][3], sl2, -l1));
            } else {
                p0 = diag && s > r0 ? 0.0f : fa_exp2(p[n][0] - l0), p1 = diag && s + 1 > r0 ? 0.0f : fa_exp2(p[n][1] - l0);
                p2 = diag && s > r1 ? 0.0f : fa_exp2(p[n][2] - l1), p3 = diag && s + 1 > r1 ? 0.0f : fa_exp2(p[n][3] - l1);
            }
            da[n / 2][(n & 1) * 2 + 0] = pack_bf16(p0 * (dp[n][0] - d0), p1 * (dp[n][1] - d0));
            da[n / 2][(n & 1) * 2 + 1] = pack_bf16(p2 * (dp[n][2] - d1), p3 * (dp[n][3] - d1));
        }
        /* dQ += dS K (B operand: the [key][d] tile by ldmatrix .trans, one load per two k steps) */
#pragma unroll
        for (int n = 0; n < HD / 8; n++)
#pragma unroll
            for (int k2 = 0; k2 < FB_T / 32; k2++) {
                uint32_t f[4];
                ldsm_x4_t(f, ks_ + (k2 * 32 + (lane >> 3) * 8 + (lane & 7)) * KS + n * 8);
                mma_bf16(acc[n], da[2 * k2], f[0], f[1]);
                mma_bf16(acc[n], da[2 * k2 + 1], f[2], f[3]);
            }
    }
    fb_store_dq<HD>(acc, dq, dq16, b, T, H, h, tw + g, tw + g + 8, c, scale, pos, inv_freq);
}

/* Kernel B on Hopper (sm_90a), warp-specialised as kernel A: one block per (FB_WG_QB(HD) query rows, head,
 * sequence); a producer warpgroup loads the block's Q and dO once and the key tiles of 64 (K, V) by TMA
 * into FB_WG_QST stages; FB_WG_QNC consumer warpgroups of 64 query rows each (those past the padded rows
 * stay idle) take the tiles up to their diagonal at their own pace and release the rest unread. S = Q K^T
 * and dP = dO V^T from shared memory (separate commit groups: P is exponentiated while dP runs), dQ += dS K
 * with dS from registers and K by a transposed descriptor, still running while the next tile's S and dP
 * are issued. */
template <int HD, int G16>
__global__ void __launch_bounds__((FB_WG_QNC(HD) + 1) * 128, 1)
    fb_dq_wg_k(float *dq, const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap to, const __grid_constant__ CUtensorMap tk,
               const __grid_constant__ CUtensorMap tv, const float *lse2, const float *delta, int T, int Tp, int H, int KVH, float scale,
               float sl2, const int32_t *pos, const float *inv_freq, uint16_t *dq16) {
#if AV_WGMMA
    constexpr int NC = FB_WG_QNC(HD), QB = 64 * NC, KC = FB_T, NST = FB_WG_QST, HP = HD / 64;
    constexpr uint32_t QBY = QB * HD * 2, TB = KC * HD * 2; /* bytes: Q (or dO) of the block, a K (or V) tile */
    extern __shared__ __align__(16) unsigned char fb_wg_smem[];
    __shared__ __align__(8) uint64_t bars[1 + 2 * NST];
    uint32_t raw = (uint32_t)__cvta_generic_to_shared(fb_wg_smem), sQ = (raw + 1023u) & ~1023u;
    const uint32_t sO = sQ + QBY, sT = sO + QBY; /* tiles: [NST][K | V] */
    const uint32_t bQ = (uint32_t)__cvta_generic_to_shared(bars), bF = bQ + 8, bE = bF + 8 * NST;
    int h = blockIdx.x, b = blockIdx.y, qt = gridDim.z - 1 - blockIdx.z, kh = h / (H / KVH);
    int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, c = lane & 3;
    int t0 = qt * QB, nact = min(NC, (Tp - t0) / 64); /* the block's first row; consumers with rows before Tp */
    int nkt = min(Tp, t0 + QB) / KC;                  /* key tiles the block's rows see */
    if (tid == 0) {
        mbar_init(bQ, 1);
        for (int s = 0; s < NST; s++) {
            mbar_init(bF + 8 * s, 1);
            mbar_init(bE + 8 * s, 4 * nact); /* a warp of each active consumer warpgroup */
        }
        mbar_init_fence();
    }
    __syncthreads();

    if (wg == 0) { /* producer */
        regs_dec<24>();
        if (warp == 0 && lane == 0) {
            mbar_expect(bQ, 2 * nact * 64 * HD * 2);
            for (int p = 0; p < HP; p++)
                for (int w = 0; w < nact; w++) {
                    uint32_t o = p * (QB * 128) + w * (64 * 128);
                    tma_load4(sQ + o, &tq, 64 * p, t0 + 64 * w, h, b, bQ);
                    tma_load4(sO + o, &to, 64 * p, t0 + 64 * w, h, b, bQ);
                }
            for (int j = 0; j < nkt; j++) {
                int s = j % NST;
                if (j >= NST) mbar_wait(bE + 8 * s, ((j / NST) - 1) & 1); /* the consumers released its last use */
                uint32_t tk_ = sT + s * 2 * TB, bar = bF + 8 * s;
                mbar_expect(bar, 2 * TB);
                for (int p = 0; p < HP; p++) {
                    tma_load4(tk_ + p * (KC * 128), &tk, 64 * p, j * KC, kh, b, bar);
                    tma_load4(tk_ + TB + p * (KC * 128), &tv, 64 * p, j * KC, kh, b, bar);
                }
            }
        }
        return;
    }
    regs_inc<NC == 2 ? 240 : 160>();
    const int cw = wg - 1, tw = t0 + 64 * cw; /* the warpgroup's first row */
    if (cw >= nact) return;
    int wkt = tw / KC + 1; /* key tiles this warpgroup's rows see */
    int r0 = tw + 16 * warp + g, r1 = r0 + 8; /* the thread's rows */
    size_t z = (size_t)b * H + h;
    float l0 = lse2[z * Tp + r0], l1 = lse2[z * Tp + r1];
    float d0 = delta[z * Tp + r0], d1 = delta[z * Tp + r1];
    float acc[HD / 2];
#pragma unroll
    for (int i = 0; i < HD / 2; i++) acc[i] = 0.0f;
    const uint32_t qw = sQ + cw * 64 * 128, ow = sO + cw * 64 * 128;
    int prev = -1; /* the stage whose dQ product is still in flight */
    auto release = [&](int s) {
        if (s >= 0 && lane == 0) mbar_arrive(bE + 8 * s);
    };
    mbar_wait(bQ, 0);
    /* hd 128: the warpgroup's Q and dO rows as register A fragments for S and dP, read once (H100, session 25: 8192
     * tokens fwd+bwd 4.05 -> 3.93 ms; hd 64's three warpgroups a block have no registers for them) */
    constexpr int QR = HD == 128;
    uint32_t qf[QR ? HD / 16 : 1][4], of[QR ? HD / 16 : 1][4];
    if constexpr (QR) {
        wg_afrag_rows<HD>(qf, fb_wg_smem + (sQ - raw), QB * 128, cw * 64 + 16 * warp + g, c);
        wg_afrag_rows<HD>(of, fb_wg_smem + (sO - raw), QB * 128, cw * 64 + 16 * warp + g, c);
    }
    for (int j = 0; j < nkt; j++) {
        int sg = j % NST, s0 = j * KC;
        mbar_wait(bF + 8 * sg, (j / NST) & 1);
        if (j >= wkt) { /* every key of the tile is past this warpgroup's rows */
            wg_wait<0>();
            release(prev);
            release(sg);
            prev = -1;
            continue;
        }
        int diag = s0 + KC - 1 > tw;
        const uint32_t tk_ = sT + sg * 2 * TB, tv_ = tk_ + TB;
        float sc[KC / 2], dp[KC / 2];
#pragma unroll
        for (int i = 0; i < KC / 2; i++) sc[i] = dp[i] = 0.0f;
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            uint32_t oa = (kk >> 2) * (QB * 128) + (kk & 3) * 32, ob_ = (kk >> 2) * (KC * 128) + (kk & 3) * 32;
            if constexpr (QR) wgmma_rs_n64<0>(sc, qf[QR ? kk : 0], wg_desc(tk_ + ob_, 16, 1024));
            else wgmma_ss_n64(sc, wg_desc(qw + oa, 16, 1024), wg_desc(tk_ + ob_, 16, 1024), kk > 0);
        }
        wg_commit();
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            uint32_t oa = (kk >> 2) * (QB * 128) + (kk & 3) * 32, ob_ = (kk >> 2) * (KC * 128) + (kk & 3) * 32;
            if constexpr (QR) wgmma_rs_n64<0>(dp, of[QR ? kk : 0], wg_desc(tv_ + ob_, 16, 1024));
            else wgmma_ss_n64(dp, wg_desc(ow + oa, 16, 1024), wg_desc(tv_ + ob_, 16, 1024), kk > 0);
        }
        wg_commit();
        wg_wait<1>(); /* S (and the last tile's dQ products); dP still running */
        release(prev);
        wg_reg_fence(sc);
#pragma unroll
        for (int n = 0; n < KC / 8; n++) { /* P, in place */
            int s = s0 + n * 8 + 2 * c; /* the key */
            sc[4 * n + 0] = diag && s > r0 ? 0.0f : fa_exp2(fmaf(sc[4 * n + 0], sl2, -l0));
            sc[4 * n + 1] = diag && s + 1 > r0 ? 0.0f : fa_exp2(fmaf(sc[4 * n + 1], sl2, -l0));
            sc[4 * n + 2] = diag && s > r1 ? 0.0f : fa_exp2(fmaf(sc[4 * n + 2], sl2, -l1));
            sc[4 * n + 3] = diag && s + 1 > r1 ? 0.0f : fa_exp2(fmaf(sc[4 * n + 3], sl2, -l1));
        }
        wg_wait<0>(); /* dP */
        wg_reg_fence(dp);
        uint32_t da[KC / 16][4];
#pragma unroll
        for (int n = 0; n < KC / 8; n++) {
            da[n / 2][(n & 1) * 2 + 0] = pack_bf16(sc[4 * n + 0] * (dp[4 * n + 0] - d0), sc[4 * n + 1] * (dp[4 * n + 1] - d0));
            da[n / 2][(n & 1) * 2 + 1] = pack_bf16(sc[4 * n + 2] * (dp[4 * n + 2] - d1), sc[4 * n + 3] * (dp[4 * n + 3] - d1));
        }
        wg_reg_fence(acc);
        wg_fence();
#pragma unroll
        for (int kc = 0; kc < KC / 16; kc++) {
            uint64_t dk_ = wg_desc_mn(tk_ + kc * 2048, KC * 128, 1024);
            if constexpr (HD == 128) wgmma_rs_n128_t(acc, da[kc], dk_);
            else wgmma_rs_n64<1>(acc, da[kc], dk_);
        }
        wg_commit();
        prev = sg;
    }
    wg_wait<0>();
    wg_reg_fence(acc);
    fb_store_dq<HD, G16>(*reinterpret_cast<float(*)[HD / 8][4]>(acc), dq, dq16, b, T, H, h, r0, r1, c, scale, pos, inv_freq);
#else
    AV_WGMMA_MISSING();
#endif
}

/* dk[i] += sum over sp of part_k[sp][i] (same for v), in share order; with o16 (the bf16-gradient
 * entry) the sums overwrite o16's bf16 dk, dv instead. */
__global__ void fb_reduce_k(float *dk, float *dv, const float *pk, const float *pv, size_t n, int nsplit, uint16_t *k16, uint16_t *v16) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float sk = 0.0f, sv = 0.0f;
    for (int s = 0; s < nsplit; s++) {
        sk += pk[s * n + i];
        sv += pv[s * n + i];
    }
    if (k16) {
        reinterpret_cast<__nv_bfloat16 *>(k16)[i] = __float2bfloat16_rn(sk);
        reinterpret_cast<__nv_bfloat16 *>(v16)[i] = __float2bfloat16_rn(sv);
        return;
    }
    dk[i] += sk;
    dv[i] += sv;
}

/* The same with the output overwritten and dk rotated back: one thread per (row, KV head, pair); dk, dv
 * NULL: into o16's bf16 rows only. */
__global__ void fb_reduce_rope_k(float *dk, float *dv, const float *pk, const float *pv, size_t npairs, int nsplit, int KVH, int hd,
                                 const int32_t *pos, const float *inv_freq, fb_out16 o16) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= npairs) return;
    int half = hd / 2, d = (int)(i % half);
    size_t rh = i / half, row = rh / KVH, e0 = rh * hd + d, e1 = e0 + half, n = npairs * 2;
    float k0 = 0.0f, k1 = 0.0f, v0 = 0.0f, v1 = 0.0f;
    for (int s = 0; s < nsplit; s++) {
        k0 += pk[s * n + e0], k1 += pk[s * n + e1];
        v0 += pv[s * n + e0], v1 += pv[s * n + e1];
    }
    float sn, cs;
    sincosf((float)pos[row] * inv_freq[d], &sn, &cs);
    float r0 = k0 * cs + k1 * sn, r1 = k1 * cs - k0 * sn;
    if (dk) {
        dk[e0] = r0, dk[e1] = r1;
        dv[e0] = v0, dv[e1] = v1;
    }
    if (o16.dk) {
        __nv_bfloat16 *k16 = reinterpret_cast<__nv_bfloat16 *>(o16.dk), *v16 = reinterpret_cast<__nv_bfloat16 *>(o16.dv);
        k16[e0] = __float2bfloat16_rn(r0), k16[e1] = __float2bfloat16_rn(r1);
        v16[e0] = __float2bfloat16_rn(v0), v16[e1] = __float2bfloat16_rn(v1);
    }
}

/* dq from the one-pass kernel's sums acc [B][H][Tp][hd] (dS K, unscaled), as fb_store_dq writes it: scaled; with pos
 * rotated back and overwritten (and copied to dq16 if not NULL), else added; dq NULL (the bf16-gradient entry): into
 * dq16 only. One thread per (row, head, pair d, d + hd / 2). */
__global__ void fb_dq_finish_k(float *dq, uint16_t *dq16, const float *acc, size_t npairs, int T, int Tp, int H, int hd, float scale,
                               const int32_t *pos, const float *inv_freq) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= npairs) return;
    int half = hd / 2, d = (int)(i % half);
    size_t rh = i / half, row = rh / H; /* row = b * T + t */
    int h = (int)(rh % H), t = (int)(row % T);
    const float *a = acc + (((row / T) * H + h) * Tp + t) * hd;
    float x0 = a[d] * scale, x1 = a[d + half] * scale;
    if (pos) {
        float sn, cs;
        sincosf((float)pos[row] * inv_freq[d], &sn, &cs);
        float r0 = x0 * cs + x1 * sn, r1 = x1 * cs - x0 * sn;
        x0 = r0, x1 = r1;
    }
    size_t e0 = rh * hd + d, e1 = e0 + half;
    if (dq && !pos) {
        dq[e0] += x0, dq[e1] += x1;
        return;
    }
    if (dq) dq[e0] = x0, dq[e1] = x1;
    if (dq16) {
        __nv_bfloat16 *q16 = reinterpret_cast<__nv_bfloat16 *>(dq16);
        q16[e0] = __float2bfloat16_rn(x0), q16[e1] = __float2bfloat16_rn(x1);
    }
}

/* Warps of a backward block (16 keys, or 16 query rows, each): 8 for hd 128, so each Q/dO chunk (dK/dV
 * kernel) or K/V tile (dQ kernel) in shared memory serves 128 keys or rows instead of 64 (forward+
 * backward at 8192 tokens 156 -> 180 TFLOP/s on an H200); 4 for hd 64 (8 measured slower: 168 -> 163; again
 * with the halved shared memory of the untransposed tiles, for either kernel: 188 -> 178-186 on an H100). */
#define FB_WARPS(HD) ((HD) == 128 ? 8 : 4)

/* The Hopper kernels (fb_dkdv_wg_k, fb_dq_wg_k): the rows where they lie (B16) or as the pre-pass wrote them.
 * G16 (the bf16-gradient entry): ob is the caller's bf16 dout rows, and the gradients go to o16 only
 * (dK/dV through f32 shares and the reduction when nsplit > 1). -1 where a tensor map cannot be made
 * (a base or stride not a 16-byte multiple). */
static int fb_map(CUtensorMap *m, fb_rows r, int T, int heads, int B, int hd) {
    uint64_t dims[4] = {(uint64_t)hd, (uint64_t)T, (uint64_t)heads, (uint64_t)B}, strides[3] = {r.st, r.sh, r.sb};
    return tma_map_bf16_nd(m, r.p, 4, dims, strides, 64);
}
/* The SM count of the first device asked (per process). */
static int fb_sms(void) {
    static int sms;
    if (!sms) {
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) sms = 1;
    }
    return sms;
}

/* Head dim 64 on Hopper takes one pass (dQ inside the dK/dV kernel: f32 sums in scratch, added in a fixed key-block
 * order, then fb_dq_finish_k) from FB_ONEPASS_T tokens when a key tile's blocks (KV heads x shares x batch) fill at most
 * half the SMs; otherwise two passes. Measured on an H100 (bench/NOTES-attention.md, session 30): with 32-64 blocks a
 * tile one pass is 3-10% faster at 4096-16384 tokens; with 96-256 it is 17-31% slower at 4096-8192, and 11-24% slower
 * below 4096 (256-1024 blocks). hd 128 stays two passes (its consumers have no registers for a third accumulator). */
#define FB_ONEPASS_T 4096
static int fb_onepass(int hd, int T, int tile_blocks) { return hd == 64 && T >= FB_ONEPASS_T && 2 * tile_blocks <= fb_sms(); }
template <int HD, int B16, int G16, int DQ>
static int fb_launch_wg(float *dq, float *dk, float *dv, const __nv_bfloat16 *qb, const __nv_bfloat16 *ob, const __nv_bfloat16 *kb,
                        const __nv_bfloat16 *vb, const float *lse2, const float *delta, int B, int T, int Tp, int H, int KVH, int nsplit,
                        size_t part_n, float scale, float kscale, float sl2, const int32_t *pos, const float *inv_freq, fb_out16 o16, float *dqa,
                        unsigned *flags) {
    size_t smem_a = (size_t)2 * FB_WG_KT * HD * 2 + (size_t)FB_WG_NST * (2 * FB_T * HD * 2 + 2 * FB_T * sizeof(float)) + 1024;
    if (DQ) smem_a += (size_t)2 * FB_WG_KT * FB_T * 2 + (size_t)FB_WG_NSG * FB_T * HD * 4; /* dS^T, dQ staging */
    size_t smem_b = (size_t)2 * FB_WG_QB(HD) * HD * 2 + (size_t)FB_WG_QST * 2 * FB_T * HD * 2 + 1024;
    constexpr int GK = G16 ? 1 : 0; /* the dK/dV instantiation writing bf16 (nsplit == 1) */
    static thread_local int set; /* per thread = per device (attributes are per device) */
    if (!set) {
        cudaFuncSetAttribute(fb_dkdv_wg_k<HD, 0, DQ>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_a);
        cudaFuncSetAttribute(fb_dkdv_wg_k<HD, GK, DQ>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_a);
        if constexpr (!DQ) cudaFuncSetAttribute(fb_dq_wg_k<HD, G16>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_b);
        set = 1;
    }
    fb_rows Qr, Or = {ob, (size_t)H * Tp * HD, (size_t)Tp * HD, (unsigned)HD}, Kr, Vr;
    if (G16) Or = {ob, (size_t)T * H * HD, (size_t)HD, (unsigned)(H * HD)};
    if (B16) {
        Qr = {qb, (size_t)T * H * HD, (size_t)HD, (unsigned)(H * HD)};
        Kr = {kb, (size_t)T * KVH * HD, (size_t)HD, (unsigned)(KVH * HD)};
    } else {
        Qr = {qb, (size_t)H * Tp * HD, (size_t)Tp * HD, (unsigned)HD};
        Kr = {kb, (size_t)KVH * Tp * HD, (size_t)Tp * HD, (unsigned)HD};
    }
    Vr = Kr;
    Vr.p = vb;
    CUtensorMap mq, mo, mk, mv;
    if (fb_map(&mq, Qr, T, H, B, HD) || fb_map(&mo, Or, T, H, B, HD) || fb_map(&mk, Kr, T, KVH, B, HD) || fb_map(&mv, Vr, T, KVH, B, HD)) {
        av_cuda_note(cudaErrorInvalidValue, "flash attention backward: bf16 rows must be 16-byte aligned"); /* (training ignores the -1) */
        return -1;
    }
    float sl = B16 ? sl2 : 1.0f; /* the pre-pass's q rows come scaled to log2 units */
    cudaStream_t st = av_cuda_stream();
    CUtensorMap mdq = mq;
    if (DQ) {
        uint64_t dims[4] = {(uint64_t)HD, (uint64_t)Tp, (uint64_t)H, (uint64_t)B}, strides[3] = {HD, (uint64_t)Tp * HD, (uint64_t)H * Tp * HD};
        if (tma_map_f32_4d(&mdq, dqa, dims, strides, FB_T)) {
            av_cuda_note(cudaErrorInvalidValue, "flash attention backward: no tensor map for the dq sums");
            return -1;
        }
        size_t nfl = (size_t)B * H * (Tp / FB_T);
        av_cuda_note(cudaMemsetAsync(flags, 0, nfl * sizeof(unsigned), st), "flash attention backward: zero the dq order");
    }
    dim3 ga(KVH * nsplit, B, Tp / FB_WG_KT);
    if (G16 && nsplit == 1)
        fb_dkdv_wg_k<HD, GK, DQ><<<ga, (FB_WG_KW + 1) * 128, smem_a, st>>>(dk, dv, mq, mo, mk, mv, lse2, delta, T, Tp, H, KVH, nsplit, part_n, kscale,
                                                                         sl, pos, inv_freq, o16, mdq, flags);
    else
        fb_dkdv_wg_k<HD, 0, DQ><<<ga, (FB_WG_KW + 1) * 128, smem_a, st>>>(dk, dv, mq, mo, mk, mv, lse2, delta, T, Tp, H, KVH, nsplit, part_n, kscale,
                                                                        sl, pos, inv_freq, o16, mdq, flags);
    AV_CU_LAUNCHED("flash attention backward dk/dv");
    if constexpr (DQ) {
        size_t np = (size_t)B * T * H * (HD / 2);
        fb_dq_finish_k<<<av_cdiv(np, 256), 256, 0, st>>>(dq, o16.dq, dqa, np, T, Tp, H, HD, scale, pos, inv_freq);
    } else {
        fb_dq_wg_k<HD, G16><<<dim3(H, B, av_cdiv(Tp, FB_WG_QB(HD))), (FB_WG_QNC(HD) + 1) * 128, smem_b, st>>>(dq, mq, mo, mk, mv, lse2, delta, T, Tp,
                                                                                                             H, KVH, scale, sl, pos, inv_freq, o16.dq);
    }
    AV_CU_LAUNCHED("flash attention backward dq");
    return 0;
}

template <int HD, int B16, int G16>
static int fb_launch(float *dq, float *dk, float *dv, const __nv_bfloat16 *qb, const __nv_bfloat16 *ob, const __nv_bfloat16 *kb,
                      const __nv_bfloat16 *vb, const float *lse2, const float *delta, int B, int T, int Tp, int H, int KVH, int nsplit,
                      size_t part_n, float scale, float kscale, float sl2, const int32_t *pos, const float *inv_freq, fb_out16 o16, float *dqa,
                      unsigned *flags) {
    if (av_cuda_flash_wgmma_ok()) /* (dqa: the one-pass kernel's sums, given where fb_onepass chose it) */
        return dqa ? fb_launch_wg<HD, B16, G16, HD == 64>(dq, dk, dv, qb, ob, kb, vb, lse2, delta, B, T, Tp, H, KVH, nsplit, part_n, scale, kscale, sl2,
                                                          pos, inv_freq, o16, dqa, flags)
                   : fb_launch_wg<HD, B16, G16, 0>(dq, dk, dv, qb, ob, kb, vb, lse2, delta, B, T, Tp, H, KVH, nsplit, part_n, scale, kscale, sl2, pos,
                                                   inv_freq, o16, NULL, NULL);
    if constexpr (!G16 && (HD == 64 || !B16)) { /* (the bf16 entries refuse head dim 128, and bf16 gradients, off Hopper) */
        constexpr int KS = HD + FA_PAD, W = FB_WARPS(HD);
        size_t smem_a = (size_t)(2 * 16 * W * KS + 2 * 2 * FB_T * KS) * sizeof(__nv_bfloat16) + 4 * FB_T * sizeof(float);
        size_t smem_b = (size_t)2 * 2 * FB_T * KS * sizeof(__nv_bfloat16);
        static thread_local int set; /* per thread = per device (attributes are per device) */
        if (!set) { /* above the 48 KiB default */
            cudaFuncSetAttribute(fb_dkdv_k<HD, W, B16>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_a);
            cudaFuncSetAttribute(fb_dq_k<HD, W, B16>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_b);
            set = 1;
        }
        cudaStream_t st = av_cuda_stream();
        fb_dkdv_k<HD, W, B16><<<dim3(KVH * nsplit, B, Tp / (16 * W)), W * 32, smem_a, st>>>(dk, dv, qb, ob, kb, vb, lse2, delta, T, Tp, H, KVH,
                                                                                         nsplit, part_n, kscale, sl2, pos, inv_freq, o16);
        AV_CU_LAUNCHED("flash attention backward dk/dv");
        fb_dq_k<HD, W, B16><<<dim3(H, B, av_cdiv(Tp, 16 * W)), W * 32, smem_b, st>>>(dq, qb, ob, kb, vb, lse2, delta, T, Tp, H, KVH, scale, sl2,
                                                                                  pos, inv_freq, o16.dq);
        AV_CU_LAUNCHED("flash attention backward dq");
    }
    return 0;
}

/* Query-head shares per KV head for kernel A: split (a power of two dividing the group) until the
 * blocks cover the GPU twice; depends only on the shape and the GPU, so runs repeat bit for bit. */
static int fb_nsplit(int blocks, int G) {
    int ns = 1, sms = fb_sms();
    while (G % (ns * 2) == 0 && blocks * ns < 2 * sms) ns *= 2;
    return ns;
}

/* q, k, v: f32 (converted here) or, B16, the caller's bf16 rows (read where they lie). G16 (with B16, Hopper
 * kernels only): dout and out are bf16 rows too, and the gradients go only to g16's rows, overwritten. */
template <int B16, int G16>
static int fb_backward(float *dq, float *dk, float *dv, const void *dout, const void *out, const float *lse, const void *q, const void *k,
                       const void *v, int B, int T, int H, int KVH, int hd, const int32_t *pos, const float *inv_freq, uint16_t *d16,
                       fb_out16 g16) {
    if ((hd != 64 && hd != 128) || KVH <= 0 || H % KVH) return -1;
    if (B <= 0 || T <= 0) return 0;
    int wgk = av_cuda_flash_wgmma_ok(), kblk = wgk ? FB_WG_KT : 16 * (hd == 128 ? FB_WARPS(128) : FB_WARPS(64)); /* keys a dK/dV block */
    int align = kblk > FB_T ? kblk : FB_T; /* (the Hopper dQ kernel takes a last block of fewer rows) */
    int Tp = (T + align - 1) / align * align, nsplit = fb_nsplit(Tp / kblk * KVH * B, H / KVH); /* Tp: whole key blocks */
    size_t nq = (size_t)B * H * Tp * hd, nk = (size_t)B * KVH * Tp * hd, nr = (size_t)B * H * Tp;
    size_t part_n = nsplit > 1 ? (size_t)B * T * KVH * hd : 0; /* floats of one share's dk (or dv) */
    size_t nqa = wgk && fb_onepass(hd, T, KVH * nsplit * B) ? nq + (nr / FB_T + 3) / 4 * 4 : 0; /* the one-pass kernel's dq sums and chunk order counters
                                                                            (whole 16 bytes: the bf16 rows after them are TMA's) */
    size_t fl = 2 * nr + 2 * (size_t)nsplit * part_n + nqa;
    size_t n16 = G16 ? 0 : B16 ? nq : 2 * nq + 2 * nk; /* bf16 copies: dout (and q, k, v) */
    char *w = (char *)av_cuda_scratch(AV_SCR_FLASH_BWD, fl * sizeof(float) + n16 * sizeof(__nv_bfloat16));
    if (!w) return 0;
    float *lse2 = (float *)w, *delta = lse2 + nr, *pk = delta + nr, *pv = pk + nsplit * part_n, *dqa = pv + nsplit * part_n;
    unsigned *flags = nqa ? (unsigned *)(dqa + nq) : NULL;
    if (!nqa) dqa = NULL;
    __nv_bfloat16 *ob = (__nv_bfloat16 *)(w + fl * sizeof(float)), *qb, *kb, *vb;
    cudaStream_t st = av_cuda_stream();
    float sl2 = LOG2E / sqrtf((float)hd), scale = 1.0f / sqrtf((float)hd);
    dim3 cq(Tp / FB_CT, B * H), ck(Tp / FB_CT, B * KVH);
    if (G16) {
        ob = (__nv_bfloat16 *)dout;
        fb_delta16_k<<<cq, 256, 0, st>>>(ob, (const __nv_bfloat16 *)out, T, Tp, H, hd, lse, delta, lse2);
    } else {
        fb_convert_k<<<cq, 256, 0, st>>>(ob, (const float *)dout, 1.0f, T, Tp, H, hd, (const float *)out, lse, delta, lse2);
    }
    if (B16) {
        qb = (__nv_bfloat16 *)q, kb = (__nv_bfloat16 *)k, vb = (__nv_bfloat16 *)v;
    } else {
        qb = ob + nq, kb = qb + nq, vb = kb + nk;
        fb_convert_k<<<cq, 256, 0, st>>>(qb, (const float *)q, sl2, T, Tp, H, hd, NULL, NULL, NULL, NULL);
        fb_convert_k<<<ck, 256, 0, st>>>(kb, (const float *)k, 1.0f, T, Tp, KVH, hd, NULL, NULL, NULL, NULL);
        fb_convert_k<<<ck, 256, 0, st>>>(vb, (const float *)v, 1.0f, T, Tp, KVH, hd, NULL, NULL, NULL, NULL);
    }
    AV_CU_LAUNCHED("flash attention backward convert");
    float *dka = nsplit > 1 ? pk : dk, *dva = nsplit > 1 ? pv : dv;
    fb_out16 o16 = {NULL, NULL, NULL};
    if (G16) o16 = g16;
    else if (pos && d16) o16 = {d16, d16 + (size_t)B * T * H * hd, d16 + (size_t)B * T * (H + KVH) * hd};
    float kscale = B16 ? scale : scale / sl2; /* dK from Q as the kernels read it (f32 entry: pre-scaled rows) */
    int rc = hd == 64 /* the bf16 entry has head dim 128 on Hopper only */
                 ? fb_launch<64, B16, G16>(dq, dka, dva, qb, ob, kb, vb, lse2, delta, B, T, Tp, H, KVH, nsplit, part_n, scale, kscale, sl2, pos, inv_freq, o16, dqa, flags)
                 : fb_launch<128, B16, G16>(dq, dka, dva, qb, ob, kb, vb, lse2, delta, B, T, Tp, H, KVH, nsplit, part_n, scale, kscale, sl2, pos, inv_freq, o16,
                                            dqa, flags);
    if (rc) return rc;
    if (nsplit > 1 && pos) {
        fb_reduce_rope_k<<<av_cdiv(part_n / 2, 256), 256, 0, st>>>(dk, dv, pk, pv, part_n / 2, nsplit, KVH, hd, pos, inv_freq, o16);
        AV_CU_LAUNCHED("flash attention backward reduce");
    } else if (nsplit > 1) {
        fb_reduce_k<<<av_cdiv(part_n, 256), 256, 0, st>>>(dk, dv, pk, pv, part_n, nsplit, o16.dk, o16.dv);
        AV_CU_LAUNCHED("flash attention backward reduce");
    }
    return 0;
}

extern "C" int av_cuda_flash_attention_backward_batch(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                                                      const float *q, const float *k, const float *v, int B, int T, int H, int KVH, int hd,
                                                      const int32_t *pos, const float *inv_freq, uint16_t *d16) {
    return fb_backward<0, 0>(dq, dk, dv, dout, out, lse, q, k, v, B, T, H, KVH, hd, pos, inv_freq, d16, fb_out16{NULL, NULL, NULL});
}

extern "C" int av_cuda_flash_attention_backward_bf16(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                                                     const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T, int H, int KVH,
                                                     int hd, const int32_t *pos, const float *inv_freq, uint16_t *d16) {
    if (hd != 64 && !(hd == 128 && av_cuda_flash_wgmma_ok())) return -1; /* as the bf16 forward (flash.cu) */
    return fb_backward<1, 0>(dq, dk, dv, dout, out, lse, q, k, v, B, T, H, KVH, hd, pos, inv_freq, d16, fb_out16{NULL, NULL, NULL});
}

extern "C" int av_cuda_flash_attention_backward_bf16io(uint16_t *dq, uint16_t *dk, uint16_t *dv, const uint16_t *dout, const uint16_t *out,
                                                       const float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T,
                                                       int H, int KVH, int hd, const int32_t *pos, const float *inv_freq) {
    if ((hd != 64 && hd != 128) || !av_cuda_flash_wgmma_ok()) return -1; /* the Hopper kernels only */
    return fb_backward<1, 1>(NULL, NULL, NULL, dout, out, lse, q, k, v, B, T, H, KVH, hd, pos, inv_freq, NULL, fb_out16{dq, dk, dv});
}
