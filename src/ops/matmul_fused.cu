/* Fused decode products (backend.h av_gemv_fusion): out = in(x) . W^T for T <= 16 rows (packed
 * weights: 32), with RMSNorm on the input and a residual add, RoPE or SwiGLU pairs on the output, so a
 * decoder layer is four products and the attention. One row: an exact f32 GEMV; more: bf16 tensor-core
 * products (bf16 weights, or 2-, 4-, 8-bit MLX codes turned into bf16 fragments in registers); more
 * rows still: the separate ops. Weight loads start before the wait on the previous kernel (PDL). */
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

/* Streaming multiprocessors of the device (launchm's grid-size choice), read once. */
static int sm_count(void) {
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
 * piece, exact f32, and one warp-shuffle reduction gives the unit's outputs (no block reduction).
 * Codes are decoded one at a time (aq_code: shift, mask, | 2^23, subtract). An in-place decode of
 * 2/4/8-bit codes (masking within the half-word into per-position accumulators) was measured in
 * bench/q1_variants.cu (w2 vs w2g): ~4% faster on o and down, but 25-30% slower on the RMSNorm-input
 * products (4-bit q|k|v 4.18 vs 3.16 us, gate|up 11.14 vs 9.12 us on an H200), so it is not used.
 * Grids larger than the resident blocks become persistent (blocks stride over groups of units: x
 * staged once per block). Scales and biases travel beside fz_args (kept small). */
struct fzq_args {
    const void *sc, *bi;
    int group;
};

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

/* Dynamic shared memory of the one-row kernel: x, the sums of x per group-piece, the warps' sums of squares. */
template <int BITS, int SUB>
static size_t fzq1_smem(int K, int nw) {
    return (size_t)K * sizeof(float) + (size_t)(K / fzq_piece<BITS>::CODES * SUB) * sizeof(float) + (size_t)nw * sizeof(float);
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

/* Block = NW warps, warp w on unit grp * NW + w for grp = blockIdx.x, + gridDim.x, ..; lane l on
 * pieces l, l + 32, .. of both rows, U of them per pass (the first pass loaded before the wait). */
template <int IN, int OUT, int NW, int BITS, int U, int SUB>
__global__ void __launch_bounds__(NW * 32) fzq1_k(fz_args a, fzq_args qa, int units) {
    using PC = fzq_piece<BITS>;
    constexpr int NTH = NW * 32, NWD = PC::WORDS, CH = PC::CODES / SUB, XF4 = PC::F4 / SUB; /* codes, float4s of x a group-piece */
    extern __shared__ float4 fzq1_sm[];
    __shared__ unsigned long long keys[NW];
    const int K = a.K, NP = K / PC::CODES, nf4 = K >> 2, ng = K / qa.group, rw = K / 32 * BITS;
    const int gsh = SUB == 1 ? (31 - __clz(qa.group)) - PC::LOG2 : 0; /* SUB 1: piece m is in group m >> gsh; SUB 2: groups 2m, 2m + 1 */
    float *xs = reinterpret_cast<float *>(fzq1_sm + nf4), *ssw = xs + NP * SUB;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int ngroups = (units + NW - 1) / NW, npass = (NP + 32 * U - 1) / (32 * U);

    uint32_t w[U][2][NWD], sv[U][2][SUB], bv[U][2][SUB];
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
    auto load = [&](int pass) {
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
    int grp = blockIdx.x;
    rows(grp);
    load(0); /* weights are constant: start streaming before the wait */
    av_pdl_wait();
    av_pdl_launch();

    /* x (times the norm weight) into shared memory, the pieces' sums of x, the sum of squares */
    float ss = 0.0f;
    for (int f0 = 0; f0 < nf4; f0 += NTH) {
        int f = f0 + tid;
        bool in = f < nf4;
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (in) {
            if (IN == AV_GEMV_IN_X && a.xb) {
                uint2 u = reinterpret_cast<const uint2 *>(a.x)[f];
                v = make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                                __uint_as_float(u.y & 0xffff0000u));
            } else {
                v = reinterpret_cast<const float4 *>(a.x)[f];
            }
            if (IN == AV_GEMV_IN_RMSNORM) {
                ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
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
            fzq1_sm[fzq_swz(f)] = v;
        }
        float t = (v.x + v.y) + (v.z + v.w);
#pragma unroll
        for (int o = 1; o < XF4; o <<= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
        if (in && f % XF4 == 0) xs[f / XF4] = t;
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
        if (!first) {
            rows(grp);
            load(0);
        }
        float acc0 = 0.0f, acc1 = 0.0f;
        for (int pass = 0;;) {
#pragma unroll
            for (int j = 0; j < U; j++) {
                int m = lane + 32 * (j + U * pass);
                if (m < NP) {
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

/* ---------------------------------------------------------------- 2..16 (32) rows: bf16 tensor cores */
/* mma.sync m16n8k16 products whose weight fragments come straight from memory in 16-byte loads (the
 * k order inside a fragment is permuted the same way for weights and inputs, which a dot product
 * does not see); the warps of a block split K. */
#define MM_WARPS 8

/* Row bases of the TU 16-row weight tiles of unit u: plain 16u; ROPE: the tile and its rotation
 * partner hd/2 rows on inside a head, then plain pairs of tiles; SWIGLU: gate tile 16u, up F + 16u. */
template <int OUT, int TU>
__device__ __forceinline__ void fzm_tiles(const fz_args &a, int u, int *tb) {
    if (OUT == AV_GEMV_OUT_SWIGLU) {
        tb[0] = 16 * u, tb[TU - 1] = a.F + 16 * u;
    } else if (OUT == AV_GEMV_OUT_ROPE) {
        int per = a.hd >> 5, ru = a.rope_rows >> 5;
        if (u < ru) {
            int h = u / per;
            tb[0] = h * a.hd + 16 * (u - h * per), tb[TU - 1] = tb[0] + (a.hd >> 1);
        } else {
            tb[0] = a.rope_rows + 32 * (u - ru), tb[TU - 1] = tb[0] + 16;
        }
    } else {
#pragma unroll
        for (int i = 0; i < TU; i++) tb[i] = 16 * TU * u + 16 * i;
    }
}

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
        size_t g0 = r * (size_t)(a.K / qa.group), k0 = (size_t)8 * KS * c;
#pragma unroll
        for (int m = 0; m < NSL; m++) {
            if (m && (16 * m) % qa.group) { /* same group as the slot before */
                w.s[m] = w.s[m - 1], w.b[m] = w.b[m - 1];
                continue;
            }
            size_t gi = g0 + (k0 + 16 * m) / qa.group;
            w.s[m] = av_ld_w(qa.sc, a.dt, gi), w.b[m] = av_ld_w(qa.bi, a.dt, gi);
        }
    }
}

/* The bf16 fragment of chunk j of the piece (8 consecutive k). */
template <int BITS>
__device__ __forceinline__ uint4 fzm_w_frag(const fzm_w<BITS> &w, int j) {
    if constexpr (BITS == 0) {
        return w.v;
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

/* Weight pieces of k steps s0, s0 + stride, ... (U of them) for the unit's tiles. */
template <int U, int TU, int BITS>
__device__ __forceinline__ void fzm_load(fzm_w<BITS> (&wv)[U][TU][2], const fz_args &a, const fzq_args &qa, const void *const (&wr)[TU][2],
                                         const int (&rows)[TU][2], const bool (&ok)[TU][2], int s0, int t, int nv, int stride) {
    constexpr int KS = fzm_w<BITS>::KS;
#pragma unroll
    for (int j = 0; j < U; j++) {
        int c = 4 * (s0 + j * stride) + t;
#pragma unroll
        for (int i = 0; i < TU; i++)
#pragma unroll
            for (int h = 0; h < 2; h++) fzm_w_load<BITS>(wv[j][i][h], a, qa, wr[i][h], (size_t)rows[i][h], c, c * KS < nv && ok[i][h]);
    }
}

/* The mma products of the U k steps s0, s0 + stride, ... whose weight pieces are in wv: first
 * every step's input fragments (all loads in flight together: x is read from L2 after the wait),
 * then the products. Chunk kk of lane t's piece in step s is 8-k chunk (4s + t) KS + kk of the row. */
template <int IN, int NT, int U, int TU, int BITS>
__device__ __forceinline__ void fzm_steps(const fz_args &a, const fzm_w<BITS> (&wv)[U][TU][2], float (&acc)[TU][NT][4], float (&ss)[NT], int s0,
                                          int stride, int S, int nv, int g, int t) {
    constexpr int KS = fzm_w<BITS>::KS;
    uint32_t bx[U][KS][NT][4];
#pragma unroll
    for (int j = 0; j < U; j++) {
        int s = s0 + j * stride;
#pragma unroll
        for (int kk = 0; kk < KS; kk++) {
            int c = (4 * s + t) * KS + kk;
#pragma unroll
            for (int n = 0; n < NT; n++) {
                int row = g + 8 * n;
                bool in = s < S && row < a.T && c < nv;
                if (IN == AV_GEMV_IN_X && a.xb) { /* bf16 x: its 16-byte chunk is the fragment as it lies */
                    uint4 raw = make_uint4(0, 0, 0, 0);
                    if (in) raw = reinterpret_cast<const uint4 *>(reinterpret_cast<const uint16_t *>(a.x) + (size_t)row * a.K)[c];
                    bx[j][kk][n][0] = raw.x, bx[j][kk][n][1] = raw.y, bx[j][kk][n][2] = raw.z, bx[j][kk][n][3] = raw.w;
                } else {
                    float xv[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                    if (in) fz_x8<IN>(a, a.x + (size_t)row * a.K, c, xv, &ss[n]);
                    bx[j][kk][n][0] = pack_bf16(xv[0], xv[1]), bx[j][kk][n][1] = pack_bf16(xv[2], xv[3]);
                    bx[j][kk][n][2] = pack_bf16(xv[4], xv[5]), bx[j][kk][n][3] = pack_bf16(xv[6], xv[7]);
                }
            }
        }
    }
#pragma unroll
    for (int j = 0; j < U; j++) {
        if (s0 + j * stride >= S) break; /* warp-uniform */
#pragma unroll
        for (int kk = 0; kk < KS; kk++)
#pragma unroll
            for (int i = 0; i < TU; i++) {
                uint4 w0 = fzm_w_frag<BITS>(wv[j][i][0], kk), w1 = fzm_w_frag<BITS>(wv[j][i][1], kk);
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    mma_bf16(acc[i][n], w0.x, w1.x, w0.y, w1.y, bx[j][kk][n][0], bx[j][kk][n][1]);
                    mma_bf16(acc[i][n], w0.z, w1.z, w0.w, w1.w, bx[j][kk][n][2], bx[j][kk][n][3]);
                }
            }
    }
}

/* Block = MM_WARPS warps on one unit (TU tiles of 16 weight rows) x all T <= 8 NT input rows; warp w
 * takes the k steps w, w + MM_WARPS, ... (32 KS k each). Lane (g, t) loads 16 bytes of weight rows g
 * and g + 8 at piece 4s + t and, per chunk of 8 k in it, those k of input row g (+ 8n): the low 4
 * feed one mma, the high 4 the next. */
template <int IN, int OUT, int NT, int U, int TU, int BITS>
__device__ __forceinline__ void fzm_body(const fz_args &a, const fzq_args &qa) {
    constexpr int G = (OUT == AV_GEMV_OUT_ROPE || OUT == AV_GEMV_OUT_SWIGLU) ? 2 : 1;
    __shared__ float red[MM_WARPS][G * NT * 4][32];
    __shared__ float ssw[MM_WARPS][8 * NT];
    __shared__ float rs[8 * NT];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    constexpr int KS = fzm_w<BITS>::KS;
    int nv = a.K >> 3, S = (nv + 4 * KS - 1) / (4 * KS);
    int tb[TU];
    fzm_tiles<OUT, TU>(a, blockIdx.x, tb);
    const void *wr[TU][2];
    int rows[TU][2];
    bool ok[TU][2];
#pragma unroll
    for (int i = 0; i < TU; i++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int row = tb[i] + g + 8 * h;
            ok[i][h] = row < a.N;
            rows[i][h] = ok[i][h] ? row : 0;
            /* a packed row is K * BITS / 32 words */
            wr[i][h] = BITS ? (const void *)(reinterpret_cast<const uint32_t *>(a.W) + (size_t)rows[i][h] * (a.K / 32 * BITS))
                            : (const void *)(a.W + (size_t)rows[i][h] * a.K);
        }
    fzm_w<BITS> wv[U][TU][2];
    const int wg = warp, stride = MM_WARPS;
    fzm_load<U, TU, BITS>(wv, a, qa, wr, rows, ok, wg, t, nv, stride); /* weights are constant: start streaming before the wait */
    av_pdl_wait();
    av_pdl_launch();
    float acc[TU][NT][4], ss[NT];
#pragma unroll
    for (int i = 0; i < TU; i++)
#pragma unroll
        for (int n = 0; n < NT; n++) acc[i][n][0] = acc[i][n][1] = acc[i][n][2] = acc[i][n][3] = 0.0f;
#pragma unroll
    for (int n = 0; n < NT; n++) ss[n] = 0.0f;
    for (int s0 = wg; s0 < S; s0 += U * stride) {
        if (s0 != wg) fzm_load<U, TU, BITS>(wv, a, qa, wr, rows, ok, s0, t, nv, stride);
        fzm_steps<IN, NT, U, TU, BITS>(a, wv, acc, ss, s0, stride, S, nv, g, t);
    }
    /* across the block's warps through shared memory, G tiles at a time (pairs: both tiles) */
    if (IN == AV_GEMV_IN_RMSNORM) {
#pragma unroll
        for (int n = 0; n < NT; n++) {
            float v = ss[n];
            v += __shfl_xor_sync(0xffffffffu, v, 1);
            v += __shfl_xor_sync(0xffffffffu, v, 2);
            if (t == 0) ssw[warp][8 * n + g] = v;
        }
        __syncthreads();
        if (threadIdx.x < 8 * NT) {
            float v = 0.0f;
#pragma unroll
            for (int w = 0; w < MM_WARPS; w++) v += ssw[w][threadIdx.x];
            rs[threadIdx.x] = 1.0f / sqrtf(v / (float)a.K + a.eps);
        }
    }
#pragma unroll
    for (int i0 = 0; i0 < TU; i0 += G) {
        if (i0) __syncthreads(); /* the previous group's reads are done */
#pragma unroll
        for (int i = 0; i < G; i++)
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) red[warp][(i * NT + n) * 4 + e][lane] = acc[i0 + i][n][e];
        __syncthreads();
        /* outputs (row rr of the group's tiles, input row tk): fragment element c{half*2+e} of lane
         * g*4+t holds weight row g + 8*half, input row 8n + 2t + e */
        for (int idx = threadIdx.x; idx < 16 * 8 * NT; idx += blockDim.x) {
            int rr = idx & 15, tk = idx >> 4;
            if (tk >= a.T) continue;
            int n = tk >> 3, tt = (tk & 7) >> 1, e = tk & 1, ln = (rr & 7) * 4 + tt, reg = (rr >> 3) * 2 + e;
            float v[G];
#pragma unroll
            for (int i = 0; i < G; i++) {
                float sum = 0.0f;
#pragma unroll
                for (int w = 0; w < MM_WARPS; w++) sum += red[w][(i * NT + n) * 4 + reg][ln];
                v[i] = IN == AV_GEMV_IN_RMSNORM ? sum * rs[tk] : sum;
            }
            float *o = a.out + (size_t)tk * (OUT == AV_GEMV_OUT_SWIGLU ? a.F : a.N);
            int r0 = tb[i0] + rr;
            if (OUT == AV_GEMV_OUT_SWIGLU) {
                float sw = v[0] / (1.0f + expf(-v[0])) * v[G - 1];
                if (a.ob) reinterpret_cast<uint16_t *>(a.out)[(size_t)tk * a.F + r0] = fz_bf16(sw);
                else o[r0] = sw;
            } else if (OUT == AV_GEMV_OUT_ROPE && r0 < a.rope_rows) {
                float ang = (float)a.pos[tk] * a.inv_freq[r0 % a.hd], sn, cs;
                sincosf(ang, &sn, &cs);
                o[r0] = v[0] * cs - v[G - 1] * sn;
                o[tb[G - 1] + rr] = v[G - 1] * cs + v[0] * sn;
            } else {
#pragma unroll
                for (int i = 0; i < G; i++) {
                    int row = tb[i0 + i] + rr;
                    if (row >= a.N) continue;
                    if (OUT == AV_GEMV_OUT_ADD) o[row] += v[i];
                    else o[row] = v[i];
                }
            }
        }
    }
}

template <int IN, int OUT, int NT, int U, int TU>
__global__ void __launch_bounds__(MM_WARPS * 32, NT == 1 && U == 2 ? 3 : 1) fzm_k(fz_args a) {
    fzm_body<IN, OUT, NT, U, TU, 0>(a, fzq_args{});
}

/* The same on packed 2-, 4- or 8-bit rows. Grids wider than the SMs take one step (U = 1) at three
 * blocks an SM; 2-bit pieces (64 codes, four scale slots) need the registers of two. */
template <int IN, int OUT, int NT, int U, int TU, int BITS>
__global__ void __launch_bounds__(MM_WARPS * 32, NT == 1 && U == 1 ? (BITS == 2 ? 2 : 3) : 1) fzmq_k(fz_args a, fzq_args qa) {
    fzm_body<IN, OUT, NT, U, TU, BITS>(a, qa);
}

/* Several rows on packed weights: x RMSNormed once into bf16 rows (one block a row), so the product
 * reads its input fragments as they lie instead of every block normalizing and rounding all of x
 * again (at 8+ rows that input work outweighs the packed weights' bytes). */
__global__ void __launch_bounds__(256) fz_norm16_k(uint16_t *out, const float *x, const void *w, av_dtype wt, int K, float eps) {
    __shared__ float sh[32];
    av_pdl_launch(); /* the product may start streaming its weights; it waits for this grid before reading out */
    av_pdl_wait();
    const float *xr = x + (size_t)blockIdx.x * K;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < K; i += blockDim.x) ss += xr[i] * xr[i];
    ss = av_block_sum(ss, sh);
    float r = 1.0f / sqrtf(ss / (float)K + eps);
    for (int i = threadIdx.x; i < K; i += blockDim.x) out[(size_t)blockIdx.x * K + i] = fz_bf16(av_ld_w(w, wt, i) * (xr[i] * r));
}

/* bf16 input widened to f32 for the separate ops on packed weights (which take f32 x). */
__global__ void fz_widen_k(float *out, const uint16_t *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __uint_as_float((uint32_t)x[i] << 16);
}

/* Output transform of the separate-ops path: prod [T, N] from the plain product into out. */
__global__ void fz_epi_k(float *out, const float *prod, int T, int N, int mode, const int32_t *pos, const float *inv_freq, int rope_rows,
                         int hd, int F, int ob) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x, cols = mode == AV_GEMV_OUT_SWIGLU ? (size_t)F : (size_t)N;
    if (i >= (size_t)T * cols) return;
    int t = (int)(i / cols), c = (int)(i - (size_t)t * cols);
    const float *pr = prod + (size_t)t * N;
    float *o = out + (size_t)t * cols;
    if (mode == AV_GEMV_OUT_SWIGLU) {
        float gv = pr[c], sw = gv / (1.0f + expf(-gv)) * pr[F + c];
        if (ob) reinterpret_cast<uint16_t *>(out)[i] = fz_bf16(sw);
        else o[c] = sw;
    } else if (mode == AV_GEMV_OUT_ADD) {
        o[c] += pr[c];
    } else if (c < rope_rows) {
        int j = c % hd, half = hd >> 1;
        if (j >= half) return; /* the pair's first thread rotates both */
        float ang = (float)pos[t] * inv_freq[j], sn, cs, p0 = pr[c], p1 = pr[c + half];
        sincosf(ang, &sn, &cs);
        o[c] = p0 * cs - p1 * sn;
        o[c + half] = p1 * cs + p0 * sn;
    } else {
        o[c] = pr[c];
    }
}

/* ---------------------------------------------------------------- dispatch */
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
    else launchq1u<IN, OUT, NW, BITS, UM, SUB>(a, qa, units); /* several passes beyond */
}

/* Block size per product, from bench/q1_variants.cu on an H200 (us a launch, 4-bit g64, w2g = this
 * kernel with 4 warps, w2x8 = 8 warps but the in-place decode): q|k|v 3.16 (w2g) vs 3.38 (w2x8), o 2.59
 * vs 2.68, gate|up 9.12 vs 8.85, down (K 5632) 6.99 vs 5.01; 8-bit codes: 8 warps best on every
 * product (q|k|v 3.48 vs 3.86, gate|up 10.90 vs 12.90, down 6.92 vs 7.71). Large products have units
 * enough to fill every SM with half the blocks, and each staging of x then serves 8 units; small ones
 * spread over more SMs with 4-warp blocks. */
template <int IN, int OUT, int BITS, int SUB>
static void launchq1c(const fz_args &a, const fzq_args &qa, unsigned units) {
    if constexpr (BITS == 8 || OUT == AV_GEMV_OUT_SWIGLU) {
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
    if (OUT == AV_GEMV_OUT_ROPE) launch1c<IN, OUT, 128, 2>(a, units);
    else if (OUT == AV_GEMV_OUT_STORE) launch1c<IN, OUT, 256, 2>(a, units);
    else if (OUT == AV_GEMV_OUT_ADD) launch1c<IN, OUT, 256, 4>(a, units);
    else launch1c<IN, OUT, 128, 1>(a, units);
}

template <int IN, int OUT, int NT, int U, int TU, int BITS>
static void launchm_k(const fz_args &a, const fzq_args &qa, unsigned units) {
    if constexpr (BITS == 0) av_launch(fzm_k<IN, OUT, NT, U, TU>, dim3(units), dim3(MM_WARPS * 32), 0, 1, a);
    else av_launch(fzmq_k<IN, OUT, NT, U, TU, BITS>, dim3(units), dim3(MM_WARPS * 32), 0, 1, a, qa);
}

template <int IN, int OUT, int NT, int BITS>
static void launchm(const fz_args &a, const fzq_args &qa) {
    /* pairs: two tiles; plain: one tile for <= 8 rows, else two (fewer input reads per weight byte;
     * four tiles measured slower: too few blocks for the 2048-row products) */
    constexpr int TU = (OUT == AV_GEMV_OUT_ROPE || OUT == AV_GEMV_OUT_SWIGLU || NT > 1) ? 2 : 1;
    unsigned units = OUT == AV_GEMV_OUT_SWIGLU ? (unsigned)(a.F / 16)
                     : OUT == AV_GEMV_OUT_ROPE ? (unsigned)(a.rope_rows / 32 + av_cdiv((size_t)(a.N - a.rope_rows), 32))
                                               : av_cdiv((size_t)a.N, 16 * TU);
    /* <= 8 rows: a grid of at most one block per SM (the 2048-row products) is latency-bound, so it
     * keeps 8 k steps per warp in flight; larger grids keep 2 and fit three blocks per SM. 9..16
     * rows: 4 k steps */
    if constexpr (BITS) { /* a step is KS chunks of 8 k: fewer steps keep as many k in flight */
        if constexpr (NT == 1)
            if (units <= (unsigned)sm_count()) return launchm_k<IN, OUT, NT, 2, TU, BITS>(a, qa, units);
        launchm_k<IN, OUT, NT, 1, TU, BITS>(a, qa, units);
    } else if constexpr (NT == 1) {
        if (units <= (unsigned)sm_count()) return launchm_k<IN, OUT, NT, 8, TU, BITS>(a, qa, units);
        launchm_k<IN, OUT, NT, 2, TU, BITS>(a, qa, units);
    } else {
        launchm_k<IN, OUT, NT, 4, TU, BITS>(a, qa, units);
    }
}

template <int IN, int OUT>
static void launch_t(const fz_args &a) {
    if (a.T == 1) launch1<IN, OUT>(a); /* exact f32 kernel */
    else if (a.T <= 8) launchm<IN, OUT, 1, 0>(a, fzq_args{});
    else launchm<IN, OUT, 2, 0>(a, fzq_args{}); /* <= MMA_MAX_ROWS */
}

/* Packed weights: one row on the exact f32 kernel; 2..32 rows (2-, 4- and 8-bit codes) on the
 * tensor-core kernel with the codes turned into bf16 fragments in registers, one, two or four 8-row
 * input tiles a block (17..32 rows: still reading the codes once beats dequantized panels + cuBLAS). */
template <int IN, int OUT, int BITS>
static void launchq_t(const fz_args &a, const fzq_args &qa) {
    if (a.T == 1) {
        if constexpr (fzq_g16<BITS>())
            if (qa.group < 32) return launchq1c<IN, OUT, BITS, 2>(a, qa, q1_units<OUT>(a));
        launchq1c<IN, OUT, BITS, 1>(a, qa, q1_units<OUT>(a));
    } else if constexpr (BITS == 2 || BITS == 4 || BITS == 8) {
        if (a.T <= 8) launchm<IN, OUT, 1, BITS>(a, qa);
        else if (a.T <= 16) launchm<IN, OUT, 2, BITS>(a, qa);
        else launchm<IN, OUT, 4, BITS>(a, qa);
    }
}

template <int IN>
static void launchq_out(const fz_args &a, const fzq_args &qa, int bits, av_gemv_out out) {
    switch (out) {
    case AV_GEMV_OUT_STORE: AQ_DISPATCH_BITS(bits, (launchq_t<IN, AV_GEMV_OUT_STORE, BITS>(a, qa))); break;
    case AV_GEMV_OUT_ADD: AQ_DISPATCH_BITS(bits, (launchq_t<IN, AV_GEMV_OUT_ADD, BITS>(a, qa))); break;
    case AV_GEMV_OUT_ROPE: AQ_DISPATCH_BITS(bits, (launchq_t<IN, AV_GEMV_OUT_ROPE, BITS>(a, qa))); break;
    default: AQ_DISPATCH_BITS(bits, (launchq_t<IN, AV_GEMV_OUT_SWIGLU, BITS>(a, qa))); break;
    }
}

template <int IN>
static void launch_out(const fz_args &a, av_gemv_out out) {
    switch (out) {
    case AV_GEMV_OUT_STORE: launch_t<IN, AV_GEMV_OUT_STORE>(a); break;
    case AV_GEMV_OUT_ADD: launch_t<IN, AV_GEMV_OUT_ADD>(a); break;
    case AV_GEMV_OUT_ROPE: launch_t<IN, AV_GEMV_OUT_ROPE>(a); break;
    default: launch_t<IN, AV_GEMV_OUT_SWIGLU>(a); break;
    }
}

/* Code widths the tensor-core kernel reads (8 codes are 2, 4 or 8 whole bytes). */
static int fzq_mma_bits(int bits) { return bits == 2 || bits == 4 || bits == 8; }

/* Shapes the fused kernels take; anything else runs the separate ops below. */
static int fused_ok(const float *x, const av_mat *W, int T, const av_gemv_fusion *f, int f32) {
    int N = W->rows, K = W->cols, hd = f->head_dim, rr = f->out == AV_GEMV_OUT_ROPE ? f->rope_heads * hd : 0;
    if (T < 1 || T > (W->q_bits ? MMA_MAX_ROWS_Q : MMA_MAX_ROWS)) return 0;
    if (T > 1 && (f32 || (W->q_bits ? !fzq_mma_bits(W->q_bits) : W->dtype != AV_BF16))) return 0;
    if ((!W->q_bits && W->dtype != AV_BF16 && W->dtype != AV_F16) || K % 8 || N < 1 || ((uintptr_t)x % 16) || ((uintptr_t)W->data % 16))
        return 0;
    if (W->q_bits && (K % W->q_group || K % 32)) return 0;
    if (W->q_bits && T > 1 && K % (128 / W->q_bits)) return 0; /* whole 16-byte pieces per row */
    if (W->q_bits && W->q_group < 32 && (W->q_group != 16 || (T == 1 && !(W->q_bits == 2 || W->q_bits == 3 || W->q_bits == 6 || W->q_bits == 8))))
        return 0; /* groups of 16: the one-row kernel's SUB = 2 widths (fzq_g16) and 8 bits; 2+ rows take any group of 8+ */
    if (W->q_bits && T == 1 && (size_t)K * 4 + (size_t)K / 4 + 64 > (size_t)160 * 1024) return 0; /* x in shared memory (fzq1_smem) */
    if (f->in == AV_GEMV_IN_RMSNORM && (!f->norm || (size_t)f->norm->rows * f->norm->cols != (size_t)K)) return 0;
    if (f->out == AV_GEMV_OUT_ROPE && (hd <= 0 || hd % 2 || rr < 0 || rr > N || rr % hd || (T > 1 && hd % 32))) return 0;
    if (f->out == AV_GEMV_OUT_SWIGLU && (N % 2 || (T > 1 && (N / 2) % 16))) return 0;
    if (f->in_bf16 && f->in != AV_GEMV_IN_X) return 0;
    return 1;
}

/* The argmax of a STORE product that did not fold it in: the sampler at temperature 0, then (one
 * row) the id into the host ring. */
static void argmax_after(const float *logits, int T, int N, const av_gemv_fusion *f) {
    av_cuda_sample(f->argmax, logits, T, N, 0.0f, 1.0f, 0, f->argmax_pos, NULL);
    if (T != 1 || !f->argmax_host || !f->argmax_seq || f->argmax_ring <= 0) return;
    fz_amax_args a = {f->argmax, f->argmax_pos, f->argmax_host, f->argmax_seq, f->argmax_ring};
    av_launch(fz_publish_k, dim3(1), dim3(1), 0, 1, a);
    AV_CU_LAUNCHED("argmax publish");
}

extern "C" void av_cuda_matmul_fused_forward_mode(float *out, const float *x, const av_mat *W, int T, const av_gemv_fusion *f, int f32) {
    int N = W->rows, K = W->cols, hd = f->head_dim;
    if (T <= 0) return;
    if (f->argmax && f->out != AV_GEMV_OUT_STORE) { av_cuda_note(cudaErrorInvalidValue, "fused product: argmax needs a plain store"); return; }
    int fold = f->argmax && T == 1;
    if (fused_ok(x, W, T, f, f32)) {
        const void *nd = f->norm ? f->norm->data : NULL;
        av_dtype ndt = f->norm ? f->norm->dtype : AV_F32;
        fz_args a = {out, x, (const uint16_t *)W->data, W->dtype, N, K, T, nd, ndt, ndt == AV_BF16 && ((uintptr_t)nd % 16) == 0, f->eps,
                     f->pos, f->inv_freq, f->out == AV_GEMV_OUT_ROPE ? f->rope_heads * hd : 0, hd, N / 2, f->in_bf16 != 0,
                     f->out_bf16 != 0 && f->out == AV_GEMV_OUT_SWIGLU, fold};
        if (W->q_bits) {
            fzq_args qa = {W->scales, W->biases, W->q_group};
            if (f->in == AV_GEMV_IN_RMSNORM && T > 1) {
                uint16_t *xn = (uint16_t *)av_cuda_scratch(AV_SCR_FUSED, (size_t)T * K * sizeof(uint16_t));
                if (!xn) return;
                av_launch(fz_norm16_k, dim3(T), dim3(256), 0, 1, xn, x, f->norm->data, f->norm->dtype, K, f->eps);
                AV_CU_LAUNCHED("fused product input norm");
                a.x = (const float *)xn, a.xb = 1;
                launchq_out<AV_GEMV_IN_X>(a, qa, W->q_bits, f->out);
            } else if (f->in == AV_GEMV_IN_RMSNORM) launchq_out<AV_GEMV_IN_RMSNORM>(a, qa, W->q_bits, f->out);
            else launchq_out<AV_GEMV_IN_X>(a, qa, W->q_bits, f->out);
        } else if (f->in == AV_GEMV_IN_RMSNORM) launch_out<AV_GEMV_IN_RMSNORM>(a, f->out);
        else launch_out<AV_GEMV_IN_X>(a, f->out);
        AV_CU_LAUNCHED("fused decode product");
        if (fold) {
            fz_amax_args am = {f->argmax, f->argmax_pos, f->argmax_host, f->argmax_seq, f->argmax_ring};
            if (!am.ahost || !am.aseq || am.aring <= 0) am.ahost = NULL;
            av_launch(fz_amax_finish_k, dim3(1), dim3(32), 0, 1, am);
            AV_CU_LAUNCHED("argmax finish");
        }
        if (f->argmax && !fold) argmax_after(out, T, N, f);
        return;
    }
    /* the separate ops through scratch (same results within the table's precision, more launches) */
    float *in = (float *)av_cuda_scratch(AV_SCR_FUSED, ((size_t)K + N) * T * sizeof(float));
    if (!in) return;
    float *prod = in + (size_t)K * T;
    const float *src = x;
    int x16 = f->in_bf16;
    if (x16 && W->q_bits) { /* packed weights take f32 input */
        fz_widen_k<<<av_cdiv((size_t)T * K, 256), 256, 0, av_cuda_stream()>>>(in, (const uint16_t *)x, (size_t)T * K);
        AV_CU_LAUNCHED("fused product input widen");
        src = in, x16 = 0;
    }
    if (f->in == AV_GEMV_IN_RMSNORM) {
        if (x16) { av_cuda_note(cudaErrorInvalidValue, "fused product: bf16 input with RMSNorm"); return; }
        av_cuda_rmsnorm_forward(in, NULL, x, f->norm, T, K, f->eps);
        src = in;
    }
    int direct = f->out == AV_GEMV_OUT_STORE || (f->out == AV_GEMV_OUT_ROPE && f->rope_heads <= 0);
    if (!x16) av_cuda_matmul_forward_mode(direct ? out : prod, src, W, T, f32);
    else if (av_cuda_matmul_forward_ex(direct ? out : prod, 0, x, 1, W, T, 1.0f, 0) != 0) { /* bf16 x straight into cuBLAS */
        av_cuda_note(cudaErrorInvalidValue, "fused product: bf16 input for this weight");
        return;
    }
    if (direct) {
        if (f->argmax) argmax_after(out, T, N, f);
        return;
    }
    size_t n = (size_t)T * (f->out == AV_GEMV_OUT_SWIGLU ? N / 2 : N);
    fz_epi_k<<<av_cdiv(n, 256), 256, 0, av_cuda_stream()>>>(out, prod, T, N, (int)f->out, f->pos, f->inv_freq,
                                                         f->out == AV_GEMV_OUT_ROPE ? f->rope_heads * hd : 0, hd > 0 ? hd : 1, N / 2,
                                                         f->out_bf16 != 0 && f->out == AV_GEMV_OUT_SWIGLU);
    AV_CU_LAUNCHED("fused product epilogue");
}
