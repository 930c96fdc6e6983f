/* One-row fused decode products: an exact f32 GEMV over bf16/f16 rows (fz1_k) or a GEMV over packed MLX
 * codes (fzq1_k: f32, or int8 digits of x for 4/8-bit codes), with the greedy argmax of the LM head folded in (fz_amax_*). */
#include "ops/matmul_fused.cuh"

/* ---------------------------------------------------------------- greedy argmax in the LM head */
/* Each block of the one-row LM head folds its outputs into one running maximum (value, then lowest
 * index: the key orders as the pair) with a fire-and-forget atomic; a one-thread kernel after it
 * writes the id (instead of the sampler's one block reading all the logits again), advances the
 * position and publishes the id to the host ring (a separate kernel: no block waits on a counter's
 * round trips to find out it is the last). Only one LM head runs at a time (one stream); the
 * finishing kernel leaves the maximum zeroed. */
__device__ unsigned long long g_amax_best;

__device__ __forceinline__ unsigned long long fz_key(float v, int idx) {
    if (v != v) return 0ull; /* NaN: skipped, as the sampler's comparison does */
    unsigned b = __float_as_uint(v);
    b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ((unsigned long long)b << 32) | (0xFFFFFFFFu - (unsigned)idx);
}

/* Lanes 0 .. P-1 (P a power of two) of every block's warp 0, with their keys (0: none). */
template <int P>
__device__ __forceinline__ void fz_amax_fold(unsigned long long key) {
#pragma unroll
    for (int o = P >> 1; o > 0; o >>= 1) {
        unsigned long long k2 = __shfl_xor_sync((1u << P) - 1u, key, o);
        key = k2 > key ? k2 : key;
    }
    if (threadIdx.x == 0 && key) atomicMax(&g_amax_best, key);
}

/* The id into the host ring at (*aseq)++ (one thread). */
__device__ __forceinline__ void fz_publish(const fz_amax_args &a, int32_t id) {
    unsigned s = *a.aseq;
    reinterpret_cast<volatile int32_t *>(a.ahost)[s % (unsigned)a.aring] = id;
    *a.aseq = s + 1;
    __threadfence_system();
}

/* After the LM head: take the maximum (zeroing it for the next step), write the id and the rest. */
__global__ void fz_amax_finish_k(fz_amax_args a) {
    av_pdl_wait();
    av_pdl_launch();
    if (threadIdx.x) return;
    unsigned long long best = atomicExch(&g_amax_best, 0ull);
    int32_t id = best ? (int32_t)(0xFFFFFFFFu - (unsigned)best) : 0;
    a.amax[0] = id;
    if (a.apos) a.apos[0] += 1;
    if (a.ahost) fz_publish(a, id);
}

/* One-row fallback of the fold (other product paths): the id already in a.amax[0] into the ring. */
__global__ void fz_publish_k(fz_amax_args a) {
    av_pdl_wait();
    av_pdl_launch();
    fz_publish(a, a.amax[0]);
}

/* ---------------------------------------------------------------- one row: exact f32 GEMV */
/* The two weight rows of unit u: (2u, 2u+1); ROPE: (h*hd + j, h*hd + j + hd/2) over the rotated
 * rows, then pairs again; SWIGLU: (u, F + u). */
template <int OUT>
__device__ __forceinline__ void fz1_rows(const fz_args &a, int u, int *r0, int *r1) {
    if (OUT == AV_GEMV_OUT_SWIGLU) {
        *r0 = u, *r1 = a.F + u;
    } else if (OUT == AV_GEMV_OUT_ROPE && u < a.rope_rows / 2) {
        int half = a.hd >> 1, h = u / half;
        *r0 = h * a.hd + (u - h * half), *r1 = *r0 + half;
    } else {
        int b = OUT == AV_GEMV_OUT_ROPE ? a.rope_rows : 0, v = OUT == AV_GEMV_OUT_ROPE ? u - a.rope_rows / 2 : u;
        *r0 = b + 2 * v, *r1 = b + 2 * v + 1;
    }
}

/* A block of NTH threads owns P units (2P weight rows); its threads stride over K in 16-byte chunks,
 * UNR chunks per row in flight (all of a row in one pass when NTH * UNR * 8 >= K), then one block
 * reduction of the 2P dot products and the RMSNorm sum of squares. */
template <int IN, int OUT, int NTH, int P>
__device__ __forceinline__ void fz1_out(const fz_args &a, const float (&red)[2 * P + 1][NTH / 32], int u0, int q, unsigned long long *key);

template <int IN, int OUT, int NTH, int P, int UNR>
__global__ void __launch_bounds__(NTH) fz1_k(fz_args a, int units) {
    __shared__ float red[2 * P + 1][NTH / 32];
    int nv = a.K >> 3, tid = threadIdx.x, u0 = blockIdx.x * P;
    int r[P][2];
    bool ok[P][2];
    const uint4 *p[P][2];
#pragma unroll
    for (int q = 0; q < P; q++) {
        bool in = u0 + q < units;
        fz1_rows<OUT>(a, in ? u0 + q : 0, &r[q][0], &r[q][1]);
        ok[q][0] = in;
        ok[q][1] = in && r[q][1] < a.N;
#pragma unroll
        for (int h = 0; h < 2; h++) p[q][h] = reinterpret_cast<const uint4 *>(a.W + (size_t)(ok[q][h] ? r[q][h] : 0) * a.K);
    }
    uint4 w[UNR][P][2];
#pragma unroll
    for (int j = 0; j < UNR; j++) { /* weights are constant: start streaming before the wait */
        int c = tid + j * NTH;
#pragma unroll
        for (int q = 0; q < P; q++)
#pragma unroll
            for (int h = 0; h < 2; h++) w[j][q][h] = c < nv && ok[q][h] ? __ldcs(p[q][h] + c) : make_uint4(0, 0, 0, 0);
    }
    av_pdl_wait();
    av_pdl_launch();
    float acc[P][2], ss = 0.0f;
#pragma unroll
    for (int q = 0; q < P; q++) acc[q][0] = acc[q][1] = 0.0f;
    for (int base = 0; base < nv; base += UNR * NTH) {
        if (base) {
#pragma unroll
            for (int j = 0; j < UNR; j++) {
                int c = base + tid + j * NTH;
#pragma unroll
                for (int q = 0; q < P; q++)
#pragma unroll
                    for (int h = 0; h < 2; h++) w[j][q][h] = c < nv && ok[q][h] ? __ldcs(p[q][h] + c) : make_uint4(0, 0, 0, 0);
            }
        }
#pragma unroll
        for (int j = 0; j < UNR; j++) {
            int c = base + tid + j * NTH;
            if (c < nv) {
                float xv[8], f[8];
                fz_x8<IN>(a, a.x, c, xv, &ss);
#pragma unroll
                for (int q = 0; q < P; q++)
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        av_unpack8(w[j][q][h], a.dt, f);
#pragma unroll
                        for (int e = 0; e < 8; e++) acc[q][h] += f[e] * xv[e];
                    }
            }
        }
    }
    int lane = tid & 31, warp = tid >> 5;
#pragma unroll
    for (int q = 0; q < P; q++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float v = av_warp_sum(acc[q][h]);
            if (lane == 0) red[2 * q + h][warp] = v;
        }
    if (IN == AV_GEMV_IN_RMSNORM) {
        ss = av_warp_sum(ss);
        if (lane == 0) red[2 * P][warp] = ss;
    }
    __syncthreads();
    const bool fold = OUT == AV_GEMV_OUT_STORE && a.fold; /* threads 0 .. P-1 join the argmax */
    if (tid >= P) return;
    int q = tid;
    bool live = ok[0][0] && u0 + q < units;
    if (!live && !fold) return;
    unsigned long long key = 0ull;
    if (live) fz1_out<IN, OUT, NTH, P>(a, red, u0, q, &key);
    if (fold) fz_amax_fold<P>(key);
}

/* Unit u's two outputs v0, v1 (final values), transformed and stored (fold: their key). */
template <int OUT>
__device__ __forceinline__ void fz1_emit(const fz_args &a, int u, float v0, float v1, unsigned long long *key) {
    int r0, r1;
    fz1_rows<OUT>(a, u, &r0, &r1);
    bool has1 = r1 < a.N;
    float *o = a.out;
    if (OUT == AV_GEMV_OUT_SWIGLU) {
        float sw = v0 / (1.0f + expf(-v0)) * v1;
        if (a.ob) reinterpret_cast<uint16_t *>(o)[u] = fz_bf16(sw);
        else o[u] = sw;
    } else if (OUT == AV_GEMV_OUT_ROPE && r0 < a.rope_rows) {
        float ang = (float)a.pos[0] * a.inv_freq[r0 % a.hd], s, c;
        sincosf(ang, &s, &c);
        o[r0] = v0 * c - v1 * s;
        o[r1] = v1 * c + v0 * s;
    } else if (OUT == AV_GEMV_OUT_ADD) {
        o[r0] += v0;
        if (has1) o[r1] += v1;
    } else {
        o[r0] = v0;
        if (has1) o[r1] = v1;
        if (OUT == AV_GEMV_OUT_STORE && a.fold) {
            unsigned long long k0 = fz_key(v0, r0), k1 = has1 ? fz_key(v1, r1) : 0ull;
            *key = k1 > k0 ? k1 : k0;
        }
    }
}

/* Unit u0 + q's two outputs from the block's reductions, transformed and stored (fold: their key). */
template <int IN, int OUT, int NTH, int P>
__device__ __forceinline__ void fz1_out(const fz_args &a, const float (&red)[2 * P + 1][NTH / 32], int u0, int q, unsigned long long *key) {
    float v0 = 0.0f, v1 = 0.0f, s2 = 0.0f;
#pragma unroll
    for (int w2 = 0; w2 < NTH / 32; w2++) v0 += red[2 * q][w2], v1 += red[2 * q + 1][w2];
    if (IN == AV_GEMV_IN_RMSNORM) {
#pragma unroll
        for (int w2 = 0; w2 < NTH / 32; w2++) s2 += red[2 * P][w2];
        float rn = 1.0f / sqrtf(s2 / (float)a.K + a.eps);
        v0 *= rn, v1 *= rn;
    }
    fz1_emit<OUT>(a, u0 + q, v0, v1, key);
}

/* ---------------------------------------------------------------- one row, quantized weights */
/* The quantized twin of fz1_k (same units and output transforms) over packed rows (quant/affine.cuh),
 * shaped for latency: a warp per unit (its two rows), lanes on consecutive 16-byte pieces of the rows
 * (coalesced); a lane's codes, scales and biases for its first U pieces of both rows are all loaded
 * before the wait. After it the block stages x once into shared memory (times the norm weight, with
 * the sum of squares and each piece's sum of x computed on the way; the layout is swizzled so the
 * lanes' float4 reads are conflict-free), then every lane takes scale * (x . q) + bias * sum(x) per
 * piece and one warp-shuffle reduction gives the unit's outputs (no block reduction). 4- and 8-bit
 * codes in groups of 32+ (MLX 4/8-bit, GGUF Q4_0/Q8_0 repacked) take x . q by dp4a against x staged
 * as two int8 digits (fzq_i8; H100 decode b1 +15-32%, bench/NOTES-gpu.md); the other widths in f32,
 * codes decoded one at a time (aq_code: shift, mask, | 2^23, subtract). An in-place decode of
 * 2/4/8-bit codes (masking within the half-word into per-position accumulators) was measured in
 * bench/q1_variants.cu (w2 vs w2g): ~4% faster on o and down, but 25-30% slower on the RMSNorm-input
 * products (4-bit q|k|v 4.18 vs 3.16 us, gate|up 11.14 vs 9.12 us on an H200), so it is not used.
 * Grids larger than the resident blocks become persistent (blocks stride over groups of units: x
 * staged once per block; with 4-bit codes the next group's pieces load during this group's products). */

/* A piece: the 16 bytes a lane reads at once (32 codes of 4 bits, 16 of 8), 8 bytes of 2-bit codes
 * (32: a whole chunk, as K is only known to be a multiple of 32); 3/5/6 bits: a 32-code chunk (BITS
 * words, one word at a time). A piece lies inside one scale group when groups are 32, 64 or 128; with
 * groups of 16 (GGUF's Q2_K, Q3_K, Q6_K repacked) a 32-code piece has SUB = 2 groups, one per half. */
template <int BITS>
struct fzq_piece {
    static constexpr int CODES = BITS == 8 ? 16 : 32;
    static constexpr int LOG2 = BITS == 8 ? 4 : 5;
    static constexpr int WORDS = CODES * BITS / 32;
    static constexpr int F4 = CODES / 4; /* float4s of x under a piece */
};

/* Pieces per lane and pass: U * 2 rows * (words + SUB scales + SUB biases) registers <= 48. */
template <int BITS, int SUB>
static constexpr int fzq1_umax() {
    return 48 / (2 * (fzq_piece<BITS>::WORDS + 2 * SUB)) >= 4 ? 4 : 2;
}

/* 4- and 8-bit codes in groups of 32+ take x as two int8 digits per value, as the CPU's VNNI kernel
 * does (quant/qmatmul.h): x = d (q1 + q2/256), d = amax/127 per 32 values, error <= d/256 a value;
 * the codes enter dp4a as unsigned bytes against the digits (exact int32 sums), a piece's sum is
 * scaled by scale * d/256. Two dp4a per 4 codes and digit instead of a decode and an FMA per code. */
template <int BITS, int SUB>
struct fzq_i8 {
    static constexpr bool on = (BITS == 4 || BITS == 8) && SUB == 1;
};

/* Dynamic shared memory of the one-row kernel: x (f32, or its digits and d/256 per 32 values), the
 * sums of x per group-piece, the warps' sums of squares. */
template <int BITS, int SUB>
static size_t fzq1_smem(int K, int nw) {
    size_t xb = fzq_i8<BITS, SUB>::on ? (size_t)K * 2 + (size_t)(K / 32) * sizeof(float) : (size_t)K * sizeof(float);
    return xb + (size_t)(K / fzq_piece<BITS>::CODES * SUB) * sizeof(float) + (size_t)nw * sizeof(float);
}

/* d = a + sum of the bytes of u (unsigned) times those of s (signed). */
__device__ __forceinline__ int fzq_dp4a(uint32_t u, uint32_t s, int a) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(u), "r"(s), "r"(a));
    return d;
}

/* Staging of x's digits: the thread with x[4f .. 4f+3] (8 lanes a 32-value block, all lanes of the
 * warp present) writes d/256 of the block and, with its odd neighbour's bytes, one 16-byte slot.
 * 4-bit pieces (32 codes, 4 words): slot (word i, piece m) at i * NP + m holds q1 of the word's even
 * codes (what w & 0x0f0f0f0f holds), q1 of its odd codes, then q2 of both. 8-bit pieces (16 codes):
 * slot (j, m) at j * NP + m holds q1, q2 of word 2j, then of word 2j + 1. Lanes on consecutive
 * pieces read consecutive slots (conflict-free). */
template <int BITS>
__device__ __forceinline__ void fzq_digits(uint4 *dig, float *dd, float4 v, int f, bool in, int NP) {
    float am = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w))); /* a NaN is left out */
#pragma unroll
    for (int o = 1; o < 8; o <<= 1) am = fmaxf(am, __shfl_xor_sync(0xffffffffu, am, o));
    float d = am == INFINITY ? NAN : am * (1.0f / 127.0f), id = am > 0.0f ? __fdividef(127.0f, am) : 0.0f;
    /* rounding by the 1.5 * 2^23 shift: the sum's low byte is the rounded value's two's complement */
    const float e[4] = {v.x, v.y, v.z, v.w}, SH = 12582912.0f;
    uint32_t b1[4], b2[4];
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float s = e[k] * id, t = s + SH, r = fminf((s - (t - SH)) * 256.0f, 127.0f);
        b1[k] = __float_as_uint(t), b2[k] = __float_as_uint(r + SH);
    }
    uint32_t q1 = __byte_perm(__byte_perm(b1[0], b1[1], 0x0040), __byte_perm(b1[2], b1[3], 0x0040), 0x5410);
    uint32_t q2 = __byte_perm(__byte_perm(b2[0], b2[1], 0x0040), __byte_perm(b2[2], b2[3], 0x0040), 0x5410);
    uint32_t p1 = __shfl_down_sync(0xffffffffu, q1, 1), p2 = __shfl_down_sync(0xffffffffu, q2, 1);
    if (!in) return;
    if ((f & 7) == 0) dd[f >> 3] = d * (1.0f / 256.0f);
    if (f & 1) return;
    if (BITS == 4)
        dig[((f & 7) >> 1) * NP + (f >> 3)] =
            make_uint4(__byte_perm(q1, p1, 0x6420), __byte_perm(q1, p1, 0x7531), __byte_perm(q2, p2, 0x6420), __byte_perm(q2, p2, 0x7531));
    else
        dig[((f & 3) >> 1) * NP + (f >> 2)] = make_uint4(q1, q2, p1, p2);
}

/* q . (q1 * 256 + q2) over one piece, from its slots xd. */
template <int BITS>
__device__ __forceinline__ int fzq_piece_i8(const uint32_t (&w)[fzq_piece<BITS>::WORDS], const uint4 (&xd)[BITS == 4 ? 4 : 2]) {
    int a1 = 0, a2 = 0;
    if constexpr (BITS == 4) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint32_t lo = w[i] & 0x0f0f0f0fu, hi = (w[i] >> 4) & 0x0f0f0f0fu;
            a1 = fzq_dp4a(lo, xd[i].x, a1), a1 = fzq_dp4a(hi, xd[i].y, a1);
            a2 = fzq_dp4a(lo, xd[i].z, a2), a2 = fzq_dp4a(hi, xd[i].w, a2);
        }
    } else {
#pragma unroll
        for (int j = 0; j < 2; j++) {
            a1 = fzq_dp4a(w[2 * j], xd[j].x, a1), a2 = fzq_dp4a(w[2 * j], xd[j].y, a2);
            a1 = fzq_dp4a(w[2 * j + 1], xd[j].z, a1), a2 = fzq_dp4a(w[2 * j + 1], xd[j].w, a2);
        }
    }
    return a1 * 256 + a2;
}

template <int BITS>
__device__ __forceinline__ void fzq_piece_load(uint32_t (&w)[fzq_piece<BITS>::WORDS], const uint32_t *row, int m) {
    constexpr int NWD = fzq_piece<BITS>::WORDS;
    const uint32_t *p = row + (size_t)m * NWD;
    if constexpr (NWD == 4) {
        uint4 v = __ldcs(reinterpret_cast<const uint4 *>(p));
        w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
    } else if constexpr (NWD == 2) {
        uint2 v = __ldcs(reinterpret_cast<const uint2 *>(p));
        w[0] = v.x, w[1] = v.y;
    } else {
#pragma unroll
        for (int i = 0; i < NWD; i++) w[i] = __ldcs(p + i);
    }
}

/* Raw bits of scale/bias i (bf16/f16: 16 bits, f32: 32) and their value. */
__device__ __forceinline__ uint32_t fzq_sb_load(const void *p, av_dtype t, size_t i) {
    if (t == AV_F32) return __ldcs(reinterpret_cast<const unsigned int *>(p) + i);
    return __ldcs(reinterpret_cast<const unsigned short *>(p) + i);
}
__device__ __forceinline__ float fzq_sb(uint32_t v, av_dtype t) {
    if (t == AV_BF16) return __uint_as_float(v << 16);
    if (t == AV_F16) return __half2float(__ushort_as_half((unsigned short)v));
    return __uint_as_float(v);
}

/* Shared-memory slot of x's float4 s: XORed with its 128-byte line's index within the line, so lanes
 * on consecutive pieces (and the staging stores) hit distinct banks. */
__device__ __forceinline__ int fzq_swz(int s) { return s ^ ((s >> 3) & 7); }

template <int F4>
__device__ __forceinline__ float fzq_xat(const float4 (&xv)[F4], int i) {
    const float4 &v = xv[i >> 2];
    return (i & 3) == 0 ? v.x : (i & 3) == 1 ? v.y : (i & 3) == 2 ? v.z : v.w;
}

/* x . q over codes [E0, E1) of one piece (codes as integers; the caller applies scale and bias). */
template <int BITS, int E0, int E1>
__device__ __forceinline__ float fzq_piece_dot(const uint32_t (&w)[fzq_piece<BITS>::WORDS], const float4 (&xv)[fzq_piece<BITS>::F4]) {
    float d = 0.0f;
#pragma unroll
    for (int e = E0; e < E1; e++) d = fmaf(fzq_xat(xv, e), aq_code<BITS>(w, e), d);
    return d;
}

/* x[4f .. 4f+3] (zeros when !in), times the norm weight for RMSNorm input; *ss += their squares. */
template <int IN>
__device__ __forceinline__ float4 fzq1_xload(const fz_args &a, int f, bool in, float *ss) {
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (!in) return v;
    if (IN == AV_GEMV_IN_X && a.xb) {
        uint2 u = reinterpret_cast<const uint2 *>(a.x)[f];
        v = make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16), __uint_as_float(u.y & 0xffff0000u));
    } else {
        v = reinterpret_cast<const float4 *>(a.x)[f];
    }
    if (IN == AV_GEMV_IN_RMSNORM) {
        *ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        float g0, g1, g2, g3;
        if (a.nvec) {
            uint2 u = __ldg(reinterpret_cast<const uint2 *>(a.norm) + f);
            g0 = __uint_as_float(u.x << 16), g1 = __uint_as_float(u.x & 0xffff0000u);
            g2 = __uint_as_float(u.y << 16), g3 = __uint_as_float(u.y & 0xffff0000u);
        } else {
            g0 = av_ld_w(a.norm, a.ndt, (size_t)4 * f), g1 = av_ld_w(a.norm, a.ndt, (size_t)4 * f + 1);
            g2 = av_ld_w(a.norm, a.ndt, (size_t)4 * f + 2), g3 = av_ld_w(a.norm, a.ndt, (size_t)4 * f + 3);
        }
        v.x *= g0, v.y *= g1, v.z *= g2, v.w *= g3;
    }
    return v;
}

/* Block = NW warps, warp w on unit grp * NW + w for grp = blockIdx.x, + gridDim.x, ..; lane l on
 * pieces l, l + 32, .. of both rows, U of them per pass (the first pass loaded before the wait). */
template <int IN, int OUT, int NW, int BITS, int U, int SUB>
__global__ void __launch_bounds__(NW * 32) fzq1_k(fz_args a, fzq_args qa, int units) {
    using PC = fzq_piece<BITS>;
    constexpr int NTH = NW * 32, NWD = PC::WORDS, CH = PC::CODES / SUB, XF4 = PC::F4 / SUB; /* codes, float4s of x a group-piece */
    constexpr bool I8 = fzq_i8<BITS, SUB>::on;
    extern __shared__ float4 fzq1_sm[];
    __shared__ unsigned long long keys[NW];
    const int K = a.K, NP = K / PC::CODES, nf4 = K >> 2, ng = K / qa.group, rw = K / 32 * BITS;
    const int gsh = SUB == 1 ? (31 - __clz(qa.group)) - PC::LOG2 : 0; /* SUB 1: piece m is in group m >> gsh; SUB 2: groups 2m, 2m + 1 */
    uint4 *dig = reinterpret_cast<uint4 *>(fzq1_sm); /* I8: x's digits (K / 8 slots), then d/256 per 32 values */
    float *dd = reinterpret_cast<float *>(fzq1_sm + (I8 ? K / 8 : nf4)), *xs = dd + (I8 ? K / 32 : 0), *ssw = xs + NP * SUB;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int ngroups = (units + NW - 1) / NW, npass = (NP + 32 * U - 1) / (32 * U);

    uint32_t w[U][2][NWD], sv[U][2][SUB], bv[U][2][SUB];
    /* 4-bit codes in one-pass persistent grids: the next group's pieces load while this group's are
     * consumed (H100 decode b1 4-bit g64 +3%, Q4_0 +5%; 8-bit codes lost 12%: twice their registers) */
    constexpr bool PF = I8 && BITS == 4;
    uint32_t wn[PF ? U : 1][2][NWD], svn[PF ? U : 1][2][SUB], bvn[PF ? U : 1][2][SUB];
    const uint32_t *wp[2];
    size_t gb[2];
    auto rows = [&](int grp) {
        int u = grp * NW + warp, r[2];
        bool in = u < units;
        fz1_rows<OUT>(a, in ? u : 0, &r[0], &r[1]);
#pragma unroll
        for (int h = 0; h < 2; h++) {
            bool ok = in && r[h] < a.N;
            wp[h] = ok ? reinterpret_cast<const uint32_t *>(a.W) + (size_t)r[h] * rw : nullptr;
            gb[h] = ok ? (size_t)r[h] * ng : 0;
        }
    };
    auto load_to = [&](auto &w, auto &sv, auto &bv, int pass) {
#pragma unroll
        for (int j = 0; j < U; j++) {
            int m = lane + 32 * (j + U * pass);
#pragma unroll
            for (int h = 0; h < 2; h++) {
                if (m < NP && wp[h]) {
                    fzq_piece_load<BITS>(w[j][h], wp[h], m);
                    size_t gi = gb[h] + (SUB == 1 ? (size_t)(m >> gsh) : (size_t)m * SUB);
#pragma unroll
                    for (int q = 0; q < SUB; q++) sv[j][h][q] = fzq_sb_load(qa.sc, a.dt, gi + q), bv[j][h][q] = fzq_sb_load(qa.bi, a.dt, gi + q);
                } else {
#pragma unroll
                    for (int i = 0; i < NWD; i++) w[j][h][i] = 0u;
#pragma unroll
                    for (int q = 0; q < SUB; q++) sv[j][h][q] = bv[j][h][q] = 0u;
                }
            }
        }
    };
    auto load = [&](int pass) { load_to(w, sv, bv, pass); };
    int grp = blockIdx.x;
    rows(grp);
    load(0); /* weights are constant: start streaming before the wait */
    av_pdl_wait();
    av_pdl_launch();

    /* x (times the norm weight) into shared memory, the pieces' sums of x, the sum of squares */
    float ss = 0.0f;
    auto piece_sums = [&](float4 v, int f, bool in) {
        float t = (v.x + v.y) + (v.z + v.w);
#pragma unroll
        for (int o = 1; o < XF4; o <<= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
        if (in && f % XF4 == 0) xs[f / XF4] = t;
    };
    if constexpr (!I8) {
        for (int f0 = 0; f0 < nf4; f0 += NTH) {
            int f = f0 + tid;
            bool in = f < nf4;
            float4 v = fzq1_xload<IN>(a, f, in, &ss);
            if (in) fzq1_sm[fzq_swz(f)] = v;
            piece_sums(v, f, in);
        }
    } else { /* 4 float4s a thread in flight: the digits' shuffle chains overlap */
        for (int f0 = 0; f0 < nf4; f0 += 4 * NTH) {
            float4 v[4];
#pragma unroll
            for (int s = 0; s < 4; s++) v[s] = fzq1_xload<IN>(a, f0 + s * NTH + tid, f0 + s * NTH + tid < nf4, &ss);
#pragma unroll
            for (int s = 0; s < 4; s++) {
                int f = f0 + s * NTH + tid;
                fzq_digits<BITS>(dig, dd, v[s], f, f < nf4, NP);
                piece_sums(v[s], f, f < nf4);
            }
        }
    }
    if (IN == AV_GEMV_IN_RMSNORM) {
        ss = av_warp_sum(ss);
        if (lane == 0) ssw[warp] = ss;
    }
    __syncthreads();
    float rn = 1.0f;
    if (IN == AV_GEMV_IN_RMSNORM) {
        float t = 0.0f;
#pragma unroll
        for (int i = 0; i < NW; i++) t += ssw[i];
        rn = 1.0f / sqrtf(t / (float)K + a.eps);
    }

    const bool fold = OUT == AV_GEMV_OUT_STORE && a.fold;
    unsigned long long best = 0ull;
    for (bool first = true; grp < ngroups; grp += gridDim.x, first = false) {
        bool pf = PF && npass == 1;
        if (!first) {
            if constexpr (PF) {
                if (pf) {
#pragma unroll
                    for (int j = 0; j < U; j++)
#pragma unroll
                        for (int h = 0; h < 2; h++) {
#pragma unroll
                            for (int i = 0; i < NWD; i++) w[j][h][i] = wn[j][h][i];
                            sv[j][h][0] = svn[j][h][0], bv[j][h][0] = bvn[j][h][0];
                        }
                }
            }
            if (!pf) {
                rows(grp);
                load(0);
            }
        }
        if constexpr (PF) {
            if (pf && grp + (int)gridDim.x < ngroups) {
                rows(grp + gridDim.x);
                load_to(wn, svn, bvn, 0);
            }
        }
        float acc0 = 0.0f, acc1 = 0.0f;
        for (int pass = 0;;) {
#pragma unroll
            for (int j = 0; j < U; j++) {
                int m = lane + 32 * (j + U * pass);
                if (m >= NP) continue;
                if constexpr (I8) {
                    uint4 xd[BITS == 4 ? 4 : 2];
#pragma unroll
                    for (int i = 0; i < (BITS == 4 ? 4 : 2); i++) xd[i] = dig[i * NP + m];
                    float dq = dd[BITS == 4 ? m : m >> 1], xsum = xs[m];
                    float t0 = (float)fzq_piece_i8<BITS>(w[j][0], xd), t1 = (float)fzq_piece_i8<BITS>(w[j][1], xd);
                    acc0 = fmaf(fzq_sb(sv[j][0][0], a.dt) * dq, t0, fmaf(fzq_sb(bv[j][0][0], a.dt), xsum, acc0));
                    acc1 = fmaf(fzq_sb(sv[j][1][0], a.dt) * dq, t1, fmaf(fzq_sb(bv[j][1][0], a.dt), xsum, acc1));
                } else {
                    float4 xv[PC::F4];
#pragma unroll
                    for (int e = 0; e < PC::F4; e++) xv[e] = fzq1_sm[fzq_swz(m * PC::F4 + e)];
                    float xsum = xs[m * SUB];
                    float d0 = fzq_piece_dot<BITS, 0, CH>(w[j][0], xv), d1 = fzq_piece_dot<BITS, 0, CH>(w[j][1], xv);
                    acc0 = fmaf(fzq_sb(sv[j][0][0], a.dt), d0, fmaf(fzq_sb(bv[j][0][0], a.dt), xsum, acc0));
                    acc1 = fmaf(fzq_sb(sv[j][1][0], a.dt), d1, fmaf(fzq_sb(bv[j][1][0], a.dt), xsum, acc1));
                    if constexpr (SUB == 2) { /* the piece's second group */
                        xsum = xs[m * 2 + 1];
                        d0 = fzq_piece_dot<BITS, CH, 2 * CH>(w[j][0], xv), d1 = fzq_piece_dot<BITS, CH, 2 * CH>(w[j][1], xv);
                        acc0 = fmaf(fzq_sb(sv[j][0][1], a.dt), d0, fmaf(fzq_sb(bv[j][0][1], a.dt), xsum, acc0));
                        acc1 = fmaf(fzq_sb(sv[j][1][1], a.dt), d1, fmaf(fzq_sb(bv[j][1][1], a.dt), xsum, acc1));
                    }
                }
            }
            if (++pass >= npass) break;
            load(pass);
        }
        acc0 = av_warp_sum(acc0), acc1 = av_warp_sum(acc1);
        int u = grp * NW + warp;
        if (lane == 0 && u < units) {
            unsigned long long key = 0ull;
            fz1_emit<OUT>(a, u, acc0 * rn, acc1 * rn, &key);
            best = key > best ? key : best;
        }
    }
    if (fold) { /* one atomic a block */
        if (lane == 0) keys[warp] = best;
        __syncthreads();
        if (tid == 0) {
#pragma unroll
            for (int i = 1; i < NW; i++) best = keys[i] > best ? keys[i] : best;
            if (best) atomicMax(&g_amax_best, best);
        }
    }
}

template <int IN, int OUT, int NTH, int P>
static void launch1c(const fz_args &a, unsigned units) {
    int per = (int)av_cdiv((size_t)(a.K >> 3), NTH); /* chunks per thread and row */
    dim3 g(av_cdiv(units, P)), b(NTH);
    if (per <= 1) av_launch(fz1_k<IN, OUT, NTH, P, 1>, g, b, 0, 1, a, (int)units);
    else if (per <= 2) av_launch(fz1_k<IN, OUT, NTH, P, 2>, g, b, 0, 1, a, (int)units);
    else if (per <= 3) av_launch(fz1_k<IN, OUT, NTH, P, 3>, g, b, 0, 1, a, (int)units);
    else av_launch(fz1_k<IN, OUT, NTH, P, 6>, g, b, 0, 1, a, (int)units); /* K > 6 * 8 * NTH: several passes */
}

/* One-row quantized product, NW warps (units) a block; grids beyond the resident blocks become
 * persistent. The resident count (it depends on K through shared memory) is cached per device. */
template <int IN, int OUT, int NW, int BITS, int U, int SUB>
static void launchq1u(const fz_args &a, const fzq_args &qa, unsigned units) {
    void (*k)(fz_args, fzq_args, int) = fzq1_k<IN, OUT, NW, BITS, U, SUB>;
    size_t smem = fzq1_smem<BITS, SUB>(a.K, NW);
    static std::atomic<unsigned long long> cache[16]; /* per device: K << 32 | resident blocks per SM */
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 16) dev = 0;
    unsigned long long c = cache[dev].load(std::memory_order_relaxed);
    int nb = (int)(c & 0xffffffffu);
    if ((c >> 32) != (unsigned long long)a.K || nb <= 0) {
        if (smem > 48 * 1024) cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, k, NW * 32, smem) != cudaSuccess || nb <= 0) nb = 1;
        cache[dev].store((unsigned long long)a.K << 32 | (unsigned)nb, std::memory_order_relaxed);
    }
    unsigned groups = av_cdiv(units, NW), resident = (unsigned)nb * (unsigned)sm_count();
    av_launch(k, dim3(groups < resident ? groups : resident), dim3(NW * 32), smem, 1, a, qa, (int)units);
}

template <int IN, int OUT, int NW, int BITS, int SUB>
static void launchq1n(const fz_args &a, const fzq_args &qa, unsigned units) {
    int per = (int)av_cdiv((size_t)(a.K / fzq_piece<BITS>::CODES), 32); /* pieces per lane and row */
    constexpr int UM = fzq1_umax<BITS, SUB>();
    if (per <= 2) launchq1u<IN, OUT, NW, BITS, 2, SUB>(a, qa, units);
    else if constexpr (fzq_i8<BITS, SUB>::on) { /* 5-6 pieces: one pass (4-bit down, K 5632: 6.36 -> 5.43 us) */
        if (per > UM && per <= 6) launchq1u<IN, OUT, NW, BITS, 6, SUB>(a, qa, units);
        else launchq1u<IN, OUT, NW, BITS, UM, SUB>(a, qa, units);
    } else {
        launchq1u<IN, OUT, NW, BITS, UM, SUB>(a, qa, units); /* several passes beyond */
    }
}

/* Block size per product, from bench/q1_variants.cu on an H200 (us a launch, 4-bit g64, w2g = this
 * kernel with 4 warps, w2x8 = 8 warps but the in-place decode): q|k|v 3.16 (w2g) vs 3.38 (w2x8), o 2.59
 * vs 2.68, gate|up 9.12 vs 8.85, down (K 5632) 6.99 vs 5.01; 8-bit codes: 8 warps best on every
 * product (q|k|v 3.48 vs 3.86, gate|up 10.90 vs 12.90, down 6.92 vs 7.71). Large products have units
 * enough to fill every SM with half the blocks, and each staging of x then serves 8 units; small ones
 * spread over more SMs with 4-warp blocks. The int8-digit kernel (fzq_i8) stages more per block and
 * computes less, so it takes 8 warps everywhere: H100 4-bit g64 q|k|v 4.21 -> 3.77 us, o 3.20 -> 2.77,
 * decode b1 1,780 -> 1,821 tok/s (GGUF Q4_0 1,606 -> 1,685). */
template <int IN, int OUT, int BITS, int SUB>
static void launchq1c(const fz_args &a, const fzq_args &qa, unsigned units) {
    if constexpr (BITS == 8 || OUT == AV_GEMV_OUT_SWIGLU || fzq_i8<BITS, SUB>::on) {
        launchq1n<IN, OUT, 8, BITS, SUB>(a, qa, units);
    } else if constexpr (OUT == AV_GEMV_OUT_ADD) {
        if (a.K > 4096) launchq1n<IN, OUT, 8, BITS, SUB>(a, qa, units);
        else launchq1n<IN, OUT, 4, BITS, SUB>(a, qa, units);
    } else {
        launchq1n<IN, OUT, 4, BITS, SUB>(a, qa, units);
    }
}

/* Widths whose GGUF types are repacked with groups of 16 (Q2_K, Q3_K, Q6_K) have a one-row kernel
 * for them (SUB = 2; 8-bit pieces are 16 codes, a group already); fused_ok sends the others away. */
template <int BITS>
static constexpr bool fzq_g16() { return BITS == 2 || BITS == 3 || BITS == 6; }

/* Units (output pairs) of the one-row kernels. */
template <int OUT>
static unsigned q1_units(const fz_args &a) {
    return OUT == AV_GEMV_OUT_SWIGLU ? (unsigned)a.F
           : OUT == AV_GEMV_OUT_ROPE ? (unsigned)(a.rope_rows / 2 + (a.N - a.rope_rows + 1) / 2)
                                     : av_cdiv((size_t)a.N, 2);
}

template <int IN, int OUT>
static void launch1(const fz_args &a) {
    unsigned units = q1_units<OUT>(a);
    /* block shapes measured best per product (H200, bench/gpu_bench parts): q|k|v two pairs per 128
     * threads, the LM head two per 256, o and down (residual products; down has K > 4096) four per 256
     * (fewer, fuller blocks keep more bytes in flight per SM), gate|up one per 128 */
    if constexpr (OUT == AV_GEMV_OUT_ROPE) launch1c<IN, OUT, 128, 2>(a, units);
    else if constexpr (OUT == AV_GEMV_OUT_STORE) launch1c<IN, OUT, 256, 2>(a, units);
    else if constexpr (OUT == AV_GEMV_OUT_ADD) launch1c<IN, OUT, 256, 4>(a, units);
    else launch1c<IN, OUT, 128, 1>(a, units);
}

/* The one-row kernel of an input and output transform. */
template <int IN>
static void launch1_out(const fz_args &a, av_gemv_out out) {
    switch (out) {
    case AV_GEMV_OUT_STORE: launch1<IN, AV_GEMV_OUT_STORE>(a); break;
    case AV_GEMV_OUT_ADD: launch1<IN, AV_GEMV_OUT_ADD>(a); break;
    case AV_GEMV_OUT_ROPE: launch1<IN, AV_GEMV_OUT_ROPE>(a); break;
    default: launch1<IN, AV_GEMV_OUT_SWIGLU>(a); break;
    }
}

void fz_row_launch(const fz_args &a, av_gemv_in in, av_gemv_out out) {
    if (in == AV_GEMV_IN_RMSNORM) launch1_out<AV_GEMV_IN_RMSNORM>(a, out);
    else launch1_out<AV_GEMV_IN_X>(a, out);
}

/* Packed weights, one row: groups of 16 on the widths whose GGUF types have them (SUB = 2). */
template <int IN, int OUT, int BITS>
static void launchq1(const fz_args &a, const fzq_args &qa) {
    if constexpr (fzq_g16<BITS>())
        if (qa.group < 32) return launchq1c<IN, OUT, BITS, 2>(a, qa, q1_units<OUT>(a));
    launchq1c<IN, OUT, BITS, 1>(a, qa, q1_units<OUT>(a));
}

template <int IN>
static void launchq1_out(const fz_args &a, const fzq_args &qa, int bits, av_gemv_out out) {
    switch (out) {
    case AV_GEMV_OUT_STORE: AQ_DISPATCH_BITS(bits, (launchq1<IN, AV_GEMV_OUT_STORE, BITS>(a, qa))); break;
    case AV_GEMV_OUT_ADD: AQ_DISPATCH_BITS(bits, (launchq1<IN, AV_GEMV_OUT_ADD, BITS>(a, qa))); break;
    case AV_GEMV_OUT_ROPE: AQ_DISPATCH_BITS(bits, (launchq1<IN, AV_GEMV_OUT_ROPE, BITS>(a, qa))); break;
    default: AQ_DISPATCH_BITS(bits, (launchq1<IN, AV_GEMV_OUT_SWIGLU, BITS>(a, qa))); break;
    }
}

void fzq_row_launch(const fz_args &a, const fzq_args &qa, av_gemv_in in, int bits, av_gemv_out out) {
    if (in == AV_GEMV_IN_RMSNORM) launchq1_out<AV_GEMV_IN_RMSNORM>(a, qa, bits, out);
    else launchq1_out<AV_GEMV_IN_X>(a, qa, bits, out);
}

void fz_amax_finish(const fz_amax_args &am) { av_launch(fz_amax_finish_k, dim3(1), dim3(32), 0, 1, am); }

void fz_publish(const fz_amax_args &am) { av_launch(fz_publish_k, dim3(1), dim3(1), 0, 1, am); }
