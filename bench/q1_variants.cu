/* One-row (decode, T = 1) GEMV on MLX affine-quantized weights: the current kernel's scheme
 * (ops/matmul_fused.cu fzq1_k) against new variants, with bf16 products of the same shapes beside
 * them. Standalone: no libanvil. Every variant is checked against a host f64 reference, then timed
 * over back-to-back launches (a CUDA graph with and without programmatic dependent launch, and plain
 * stream launches with it) that rotate over enough copies of the weights to keep them out of L2.
 *
 * build: nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Iinclude -Isrc bench/q1_variants.cu -o q1_variants
 * run:   ./q1_variants [launches per timing, default 2000]
 *
 * Variants (quantized):
 *   base  fzq1_k's scheme: 64 threads x 2 output pairs a block, each thread a 32-code chunk of every
 *         row, x read from global per chunk, scales/biases read after the wait, block reduction.
 *   w2g   a warp per 2 rows; lanes take consecutive 16-byte pieces (coalesced); weights, scales and
 *         biases all loaded before the wait; x staged once per block into shared memory (swizzled:
 *         conflict-free float4 reads), with the RMSNorm weight applied, the sum of squares and the
 *         per-piece sums of x computed while staging; warp-shuffle reduction only. Codes decoded
 *         one at a time (shift, and|or 2^23, subtract, fma).
 *   w2    w2g with the code decode of 2/4/8-bit codes in place: (half-word & mask<<b*j) | 2^23
 *         gives q * 2^(b*j) exactly, summed into per-position accumulators scaled by 2^-(b*j)
 *         at the end of the piece (lop3 + fadd + ffma per code, one shift per 2 half-words).
 *   w4    w2 with 4 rows per warp (x reads shared by 4 rows).
 *   w2x8  w2 with 256-thread blocks (x staged once per 16 rows).
 *   sk2   split K: two warps per row pair (256-thread blocks, 4 pairs), partial sums through shared
 *         memory.
 *   w2p   w2x8 on a persistent grid (SMs x resident blocks) striding over row groups: x staged
 *         once per block (matters for the LM head: 4000 blocks would each stage 8 KB of x).
 * bf16 references: bf16-base (fz1_k's scheme and the block shapes launch1 picks per product) and
 * bf16-w2 / bf16-w2p (the warp kernel above on 8 bf16 values a piece). */
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#define CK(x)                                                                                                                              \
    do {                                                                                                                                   \
        cudaError_t e_ = (x);                                                                                                              \
        if (e_ != cudaSuccess) {                                                                                                           \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));                                           \
            exit(1);                                                                                                                       \
        }                                                                                                                                  \
    } while (0)

__device__ __forceinline__ void pdl_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* Everything a variant reads. w: packed codes (rows of K/32*BITS words) or bf16 rows; sc/bi: bf16
 * [N, K/group]; g: bf16 RMSNorm weight (IN = 1). gsh = log2(group / codes per piece) (warp kernels). */
struct QA {
    float *out;
    const float *x;
    const void *w;
    const uint16_t *sc, *bi, *g;
    int N, K, group, gsh;
    float eps;
};

__device__ __forceinline__ float bf(uint32_t v) { return __uint_as_float(v << 16); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Code j of a run of packed words (j a compile-time constant after unrolling) as an exact float. */
template <int BITS, int NW>
__device__ __forceinline__ float code_at(const uint32_t (&w)[NW], int j) {
    const int bit = j * BITS, k = bit >> 5, sh = bit & 31;
    uint32_t v = w[k] >> sh;
    if (sh + BITS > 32) v |= w[k + 1] << (32 - sh);
    v &= (1u << BITS) - 1u;
    return __uint_as_float(0x4B000000u | v) - 8388608.0f;
}

/* ======================================================================= baseline: fzq1_k's scheme */
/* x[8c .. 8c+7], times the norm weight (IN 1, *ss += x^2 first). */
template <int IN>
__device__ __forceinline__ void x8(const QA &a, int c, float *v, float *ss) {
    const float4 *x4 = reinterpret_cast<const float4 *>(a.x) + 2 * c;
    float4 p = x4[0], q = x4[1];
    v[0] = p.x, v[1] = p.y, v[2] = p.z, v[3] = p.w, v[4] = q.x, v[5] = q.y, v[6] = q.z, v[7] = q.w;
    if (IN) {
        uint4 gw = __ldg(reinterpret_cast<const uint4 *>(a.g) + c);
        uint32_t u[4] = {gw.x, gw.y, gw.z, gw.w};
#pragma unroll
        for (int j = 0; j < 8; j++) {
            *ss += v[j] * v[j];
            v[j] *= bf(j & 1 ? u[j >> 1] >> 16 : u[j >> 1] & 0xffffu);
        }
    }
}

template <int BITS>
__device__ __forceinline__ void chunk_load(uint32_t (&w)[BITS], const uint32_t *row, int c) {
    const uint32_t *p = row + (size_t)c * BITS;
    if constexpr (BITS == 4) {
        uint4 v = __ldcs(reinterpret_cast<const uint4 *>(p));
        w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
    } else if constexpr (BITS == 8) {
        uint4 u = __ldcs(reinterpret_cast<const uint4 *>(p)), v = __ldcs(reinterpret_cast<const uint4 *>(p) + 1);
        w[0] = u.x, w[1] = u.y, w[2] = u.z, w[3] = u.w, w[4] = v.x, w[5] = v.y, w[6] = v.z, w[7] = v.w;
    } else {
#pragma unroll
        for (int i = 0; i < BITS; i++) w[i] = __ldcs(p + i);
    }
}

/* A block of NTH threads on P output pairs (rows 2u, 2u+1); thread t reads 32-code chunks t, t+NTH, ..
 * of every row (UNR in flight); one block reduction; plain store. */
template <int IN, int NTH, int P, int BITS, int UNR>
__global__ void __launch_bounds__(NTH) base_k(QA a) {
    __shared__ float red[2 * P + 1][NTH / 32];
    int units = (a.N + 1) / 2;
    int nc = a.K >> 5, tid = threadIdx.x, u0 = blockIdx.x * P, ng = a.K / a.group, rw = a.K / 32 * BITS;
    int r[P][2];
    bool ok[P][2];
    const uint32_t *p[P][2];
#pragma unroll
    for (int q = 0; q < P; q++) {
        bool in = u0 + q < units;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            r[q][h] = 2 * (u0 + q) + h;
            ok[q][h] = in && r[q][h] < a.N;
            if (!ok[q][h]) r[q][h] = 0;
            p[q][h] = reinterpret_cast<const uint32_t *>(a.w) + (size_t)r[q][h] * rw;
        }
    }
    uint32_t w[UNR][P][2][BITS];
#pragma unroll
    for (int j = 0; j < UNR; j++) {
        int c = tid + j * NTH;
#pragma unroll
        for (int q = 0; q < P; q++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                if (c < nc && ok[q][h]) chunk_load<BITS>(w[j][q][h], p[q][h], c);
                else
#pragma unroll
                    for (int i = 0; i < BITS; i++) w[j][q][h][i] = 0u;
            }
    }
    pdl_wait();
    pdl_launch();
    float acc[P][2], ss = 0.0f;
#pragma unroll
    for (int q = 0; q < P; q++) acc[q][0] = acc[q][1] = 0.0f;
    for (int base = 0; base < nc; base += UNR * NTH) {
        if (base) {
#pragma unroll
            for (int j = 0; j < UNR; j++) {
                int c = base + tid + j * NTH;
#pragma unroll
                for (int q = 0; q < P; q++)
#pragma unroll
                    for (int h = 0; h < 2; h++)
                        if (c < nc && ok[q][h]) chunk_load<BITS>(w[j][q][h], p[q][h], c);
            }
        }
#pragma unroll
        for (int j = 0; j < UNR; j++) {
            int c = base + tid + j * NTH;
            if (c < nc) {
                float xv[32], xs = 0.0f;
#pragma unroll
                for (int e = 0; e < 4; e++) x8<IN>(a, 4 * c + e, xv + 8 * e, &ss);
#pragma unroll
                for (int e = 0; e < 32; e++) xs += xv[e];
                size_t g = (size_t)(c * 32) / a.group;
#pragma unroll
                for (int q = 0; q < P; q++)
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        float d = 0.0f;
#pragma unroll
                        for (int e = 0; e < 32; e++) d += xv[e] * code_at<BITS, BITS>(w[j][q][h], e);
                        size_t gi = (size_t)r[q][h] * ng + g;
                        acc[q][h] += bf(a.sc[gi]) * d + bf(a.bi[gi]) * xs;
                    }
            }
        }
    }
    int lane = tid & 31, warp = tid >> 5;
#pragma unroll
    for (int q = 0; q < P; q++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float v = warp_sum(acc[q][h]);
            if (lane == 0) red[2 * q + h][warp] = v;
        }
    if (IN) {
        ss = warp_sum(ss);
        if (lane == 0) red[2 * P][warp] = ss;
    }
    __syncthreads();
    if (tid >= P || u0 + tid >= units) return;
    int q = tid;
    float v0 = 0.0f, v1 = 0.0f, s2 = 0.0f;
#pragma unroll
    for (int w2 = 0; w2 < NTH / 32; w2++) v0 += red[2 * q][w2], v1 += red[2 * q + 1][w2];
    if (IN) {
#pragma unroll
        for (int w2 = 0; w2 < NTH / 32; w2++) s2 += red[2 * P][w2];
        float rn = 1.0f / sqrtf(s2 / (float)a.K + a.eps);
        v0 *= rn, v1 *= rn;
    }
    int r0 = 2 * (u0 + q);
    a.out[r0] = v0;
    if (r0 + 1 < a.N) a.out[r0 + 1] = v1;
}

/* bf16 twin (fz1_k's scheme): thread t reads 16-byte chunks (8 weights) t, t+NTH, .. of every row. */
template <int IN, int NTH, int P, int UNR>
__global__ void __launch_bounds__(NTH) base16_k(QA a) {
    __shared__ float red[2 * P + 1][NTH / 32];
    int units = (a.N + 1) / 2;
    int nv = a.K >> 3, tid = threadIdx.x, u0 = blockIdx.x * P;
    bool ok[P][2];
    const uint4 *p[P][2];
#pragma unroll
    for (int q = 0; q < P; q++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int r = 2 * (u0 + q) + h;
            ok[q][h] = u0 + q < units && r < a.N;
            p[q][h] = reinterpret_cast<const uint4 *>(reinterpret_cast<const uint16_t *>(a.w) + (size_t)(ok[q][h] ? r : 0) * a.K);
        }
    uint4 w[UNR][P][2];
#pragma unroll
    for (int j = 0; j < UNR; j++) {
        int c = tid + j * NTH;
#pragma unroll
        for (int q = 0; q < P; q++)
#pragma unroll
            for (int h = 0; h < 2; h++) w[j][q][h] = c < nv && ok[q][h] ? __ldcs(p[q][h] + c) : make_uint4(0, 0, 0, 0);
    }
    pdl_wait();
    pdl_launch();
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
                float xv[8];
                x8<IN>(a, c, xv, &ss);
#pragma unroll
                for (int q = 0; q < P; q++)
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        uint32_t u[4] = {w[j][q][h].x, w[j][q][h].y, w[j][q][h].z, w[j][q][h].w};
#pragma unroll
                        for (int e = 0; e < 8; e++) acc[q][h] += (e & 1 ? __uint_as_float(u[e >> 1] & 0xffff0000u) : bf(u[e >> 1])) * xv[e];
                    }
            }
        }
    }
    int lane = tid & 31, warp = tid >> 5;
#pragma unroll
    for (int q = 0; q < P; q++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float v = warp_sum(acc[q][h]);
            if (lane == 0) red[2 * q + h][warp] = v;
        }
    if (IN) {
        ss = warp_sum(ss);
        if (lane == 0) red[2 * P][warp] = ss;
    }
    __syncthreads();
    if (tid >= P || u0 + tid >= units) return;
    int q = tid;
    float v0 = 0.0f, v1 = 0.0f, s2 = 0.0f;
#pragma unroll
    for (int w2 = 0; w2 < NTH / 32; w2++) v0 += red[2 * q][w2], v1 += red[2 * q + 1][w2];
    if (IN) {
#pragma unroll
        for (int w2 = 0; w2 < NTH / 32; w2++) s2 += red[2 * P][w2];
        float rn = 1.0f / sqrtf(s2 / (float)a.K + a.eps);
        v0 *= rn, v1 *= rn;
    }
    int r0 = 2 * (u0 + q);
    a.out[r0] = v0;
    if (r0 + 1 < a.N) a.out[r0 + 1] = v1;
}

/* ======================================================================= warp kernels */
/* A piece: the 16 bytes a lane reads at once (32 codes of 2/4 bits, 16 of 8 bits, 8 bf16 values);
 * 3/5/6-bit codes: a 32-code chunk (BITS words). BITS 16: bf16 weights, no scales. */
template <int BITS>
struct PT {
    static constexpr int CODES = BITS == 8 ? 16 : BITS == 16 ? 8 : 32;
    static constexpr int WORDS = CODES * BITS / 32;
    static constexpr int F4 = CODES / 4; /* float4s of x under a piece */
};

template <int BITS>
__device__ __forceinline__ void piece_load(uint32_t (&w)[PT<BITS>::WORDS], const uint32_t *row, int m) {
    constexpr int NWD = PT<BITS>::WORDS;
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

/* Shared-memory slot of x's float4 s: within each 128-byte line the slot is XORed with the line
 * index, so lanes reading consecutive pieces hit distinct banks (and so do the staging stores). */
__device__ __forceinline__ int swz(int s) { return s ^ ((s >> 3) & 7); }

template <int F4>
__device__ __forceinline__ float xat(const float4 (&xv)[F4], int i) {
    const float4 &v = xv[i >> 2];
    return (i & 3) == 0 ? v.x : (i & 3) == 1 ? v.y : (i & 3) == 2 ? v.z : v.w;
}

/* x . codes of one piece (codes as plain integers; scale and bias applied by the caller). */
template <int BITS, bool FAST>
__device__ __forceinline__ float piece_dot(const uint32_t (&w)[PT<BITS>::WORDS], const float4 (&xv)[PT<BITS>::F4]) {
    constexpr int NWD = PT<BITS>::WORDS;
    if constexpr (BITS == 16) {
        float d0 = 0.0f, d1 = 0.0f;
#pragma unroll
        for (int k = 0; k < NWD; k++) {
            d0 = fmaf(xat(xv, 2 * k), __uint_as_float(w[k] << 16), d0);
            d1 = fmaf(xat(xv, 2 * k + 1), __uint_as_float(w[k] & 0xffff0000u), d1);
        }
        return d0 + d1;
    } else if constexpr (FAST && (BITS == 2 || BITS == 4 || BITS == 8)) {
        /* half-word h of word k holds codes (2k + h) * HW .. + HW-1; code j of it masked in place is
         * 2^23 + q * 2^(BITS j) as a float: exact, summed per j and scaled back at the end */
        constexpr int HW = 16 / BITS;
        constexpr uint32_t M = (1u << BITS) - 1u;
        float c[HW];
#pragma unroll
        for (int j = 0; j < HW; j++) c[j] = 0.0f;
#pragma unroll
        for (int k = 0; k < NWD; k++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                uint32_t src = h ? w[k] >> 16 : w[k];
#pragma unroll
                for (int j = 0; j < HW; j++) {
                    float f = __uint_as_float((src & (M << (BITS * j))) | 0x4B000000u) - 8388608.0f;
                    c[j] = fmaf(xat(xv, (2 * k + h) * HW + j), f, c[j]);
                }
            }
        float d = c[0];
#pragma unroll
        for (int j = 1; j < HW; j++) d = fmaf(c[j], __uint_as_float((uint32_t)(127 - BITS * j) << 23), d);
        return d;
    } else {
        float d = 0.0f;
#pragma unroll
        for (int e = 0; e < PT<BITS>::CODES; e++) d = fmaf(xat(xv, e), code_at<BITS, NWD>(w, e), d);
        return d;
    }
}

/* Block = NW warps = NW/KS row groups of R rows x KS slices of K. Lane l of slice s takes pieces
 * l + 32 (s + KS (j + U pass)); U pieces of each of the R rows (codes, scale, bias) in registers,
 * the first pass loaded before the wait. Row groups blockIdx.x, + gridDim.x, .. (a persistent grid
 * when the grid is smaller than the groups). Dynamic shared memory: x (K floats, swizzled), the
 * per-piece sums of x, the warps' sums of squares, the split-K partial sums. */
template <int IN, int BITS, int R, int NW, int KS, int U, bool FAST>
__global__ void __launch_bounds__(NW * 32) warp_k(QA a) {
    using T = PT<BITS>;
    constexpr int NTH = NW * 32, RG = NW / KS, NWD = T::WORDS;
    extern __shared__ float4 sm4[];
    const int K = a.K, NP = K / T::CODES, nf4 = K >> 2, ng = BITS == 16 ? 0 : K / a.group, rwords = NP * NWD;
    float *xs = reinterpret_cast<float *>(sm4 + nf4);
    float *ssw = xs + (BITS == 16 ? 0 : NP);
    float *part = ssw + NW;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, ks = warp % KS, rg = warp / KS;
    const int ngroups = (a.N + RG * R - 1) / (RG * R), npass = (NP + 32 * KS * U - 1) / (32 * KS * U);

    uint32_t w[U][R][NWD];
    uint32_t sv[U][R], bv[U][R];
    const uint32_t *wp[R];
    size_t gb[R];
    auto rows = [&](int grp) {
#pragma unroll
        for (int q = 0; q < R; q++) {
            int r = (grp * RG + rg) * R + q;
            r = r < a.N ? r : -1;
            wp[q] = r < 0 ? nullptr : reinterpret_cast<const uint32_t *>(a.w) + (size_t)r * rwords;
            gb[q] = r < 0 ? 0 : (size_t)r * ng;
        }
    };
    auto load = [&](int pass) {
#pragma unroll
        for (int j = 0; j < U; j++) {
            int m = lane + 32 * (ks + KS * (j + U * pass));
#pragma unroll
            for (int q = 0; q < R; q++) {
                if (m < NP && wp[q]) {
                    piece_load<BITS>(w[j][q], wp[q], m);
                    if (BITS != 16) {
                        size_t gi = gb[q] + (m >> a.gsh);
                        sv[j][q] = __ldcs(a.sc + gi), bv[j][q] = __ldcs(a.bi + gi);
                    }
                } else {
#pragma unroll
                    for (int i = 0; i < NWD; i++) w[j][q][i] = 0u;
                    sv[j][q] = bv[j][q] = 0u;
                }
            }
        }
    };
    int grp = blockIdx.x;
    if (grp < ngroups) {
        rows(grp);
        load(0); /* weights are constant: streaming starts before the wait */
    }
    pdl_wait();
    pdl_launch();

    /* stage x (times the norm weight), the per-piece sums and the sum of squares */
    float ss = 0.0f;
    for (int f0 = 0; f0 < nf4; f0 += NTH) {
        int f = f0 + tid;
        bool in = f < nf4;
        float4 v = in ? reinterpret_cast<const float4 *>(a.x)[f] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (IN && in) {
            ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
            uint2 g = reinterpret_cast<const uint2 *>(a.g)[f];
            v.x *= bf(g.x & 0xffffu), v.y *= bf(g.x >> 16), v.z *= bf(g.y & 0xffffu), v.w *= bf(g.y >> 16);
        }
        if (in) sm4[swz(f)] = v;
        if (BITS != 16) {
            float t = (v.x + v.y) + (v.z + v.w);
#pragma unroll
            for (int o = 1; o < T::F4; o <<= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
            if (in && f % T::F4 == 0) xs[f / T::F4] = t;
        }
    }
    if (IN) {
        ss = warp_sum(ss);
        if (lane == 0) ssw[warp] = ss;
    }
    __syncthreads();
    float rn = 1.0f;
    if (IN) {
        float t = 0.0f;
#pragma unroll
        for (int i = 0; i < NW; i++) t += ssw[i];
        rn = 1.0f / sqrtf(t / (float)K + a.eps);
    }

    for (bool first = true; grp < ngroups; grp += gridDim.x, first = false) {
        if (!first) {
            rows(grp);
            load(0);
        }
        float acc[R];
#pragma unroll
        for (int q = 0; q < R; q++) acc[q] = 0.0f;
        for (int pass = 0;;) {
#pragma unroll
            for (int j = 0; j < U; j++) {
                int m = lane + 32 * (ks + KS * (j + U * pass));
                if (m < NP) {
                    float4 xv[T::F4];
#pragma unroll
                    for (int e = 0; e < T::F4; e++) xv[e] = sm4[swz(m * T::F4 + e)];
                    float xsum = BITS == 16 ? 0.0f : xs[m];
#pragma unroll
                    for (int q = 0; q < R; q++) {
                        float d = piece_dot<BITS, FAST>(w[j][q], xv);
                        acc[q] = BITS == 16 ? acc[q] + d : fmaf(bf(sv[j][q]), d, fmaf(bf(bv[j][q]), xsum, acc[q]));
                    }
                }
            }
            if (++pass >= npass) break;
            load(pass);
        }
#pragma unroll
        for (int q = 0; q < R; q++) acc[q] = warp_sum(acc[q]);
        float v = acc[0];
#pragma unroll
        for (int q = 1; q < R; q++) v = lane == q ? acc[q] : v;
        int r = (grp * RG + rg) * R + lane;
        if (KS == 1) {
            if (lane < R && r < a.N) a.out[r] = v * rn;
        } else {
            if (lane < R) part[(rg * KS + ks) * R + lane] = v;
            __syncthreads();
            if (ks == 0 && lane < R && r < a.N) {
                float s = 0.0f;
#pragma unroll
                for (int i = 0; i < KS; i++) s += part[(rg * KS + i) * R + lane];
                a.out[r] = s * rn;
            }
            __syncthreads(); /* part is reused by the next row group */
        }
    }
}

/* ======================================================================= host */
struct Var {
    std::string name;
    void (*fn)(QA);
    int nth, rows_per_block;
    size_t smem;
    bool persistent;
    int nb = 0; /* resident blocks per SM (persistent grids), filled by finish() */
};

static Var finish(Var v) {
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v.nb, v.fn, v.nth, v.smem));
    return v;
}

static int g_sms = 0;

template <typename F>
static void set_smem(F fn, size_t smem) {
    CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)std::max<size_t>(smem, 48 * 1024)));
}

template <int IN, int BITS, int R, int NW, int KS, bool FAST>
static Var mk_warp(const char *name, int K, bool persistent) {
    using T = PT<BITS>;
    int NP = K / T::CODES, cpl = (NP + 32 * KS - 1) / (32 * KS);
    /* registers for a pass: U * R * (words + scale + bias) <= 48 */
    constexpr int per = R * (T::WORDS + (BITS == 16 ? 0 : 2));
    constexpr int umax = 48 / per >= 8 ? 8 : 48 / per >= 4 ? 4 : 2;
    int U = cpl <= 2 ? 2 : cpl <= 4 ? 4 : 8;
    U = std::min(U, umax);
    void (*fn)(QA) = U == 2 ? warp_k<IN, BITS, R, NW, KS, 2, FAST> : U == 4 ? warp_k<IN, BITS, R, NW, KS, (umax >= 4 ? 4 : 2), FAST>
                                                                           : warp_k<IN, BITS, R, NW, KS, umax, FAST>;
    size_t smem = (size_t)K * 4 + (BITS == 16 ? 0 : (size_t)NP * 4) + (size_t)NW * 4 + (size_t)NW * R * 4;
    set_smem(fn, smem);
    char nm[64];
    snprintf(nm, sizeof nm, "%s(U%d)", name, U);
    return finish(Var{nm, fn, NW * 32, NW / KS * R, smem, persistent});
}

template <int IN, int NTH, int P, int BITS>
static Var mk_base(int K) {
    int per = (K / 32 + NTH - 1) / NTH;
    void (*fn)(QA) = per <= 1 ? base_k<IN, NTH, P, BITS, 1> : per <= 2 ? base_k<IN, NTH, P, BITS, 2> : base_k<IN, NTH, P, BITS, 3>;
    return finish(Var{"base", fn, NTH, 2 * P, 0, false});
}

template <int IN, int NTH, int P>
static Var mk_base16(int K) {
    int per = (K / 8 + NTH - 1) / NTH;
    void (*fn)(QA) = per <= 1   ? base16_k<IN, NTH, P, 1>
                     : per <= 2 ? base16_k<IN, NTH, P, 2>
                     : per <= 3 ? base16_k<IN, NTH, P, 3>
                                : base16_k<IN, NTH, P, 6>;
    char nm[64];
    snprintf(nm, sizeof nm, "bf16-base(%dx%d)", NTH, P);
    return finish(Var{nm, fn, NTH, 2 * P, 0, false});
}

template <int IN, int BITS>
static std::vector<Var> q_variants(int K) {
    std::vector<Var> v;
    v.push_back(mk_base<IN, 64, 2, BITS>(K));
    v.push_back(mk_warp<IN, BITS, 2, 4, 1, false>("w2g", K, false));
    v.push_back(mk_warp<IN, BITS, 2, 4, 1, true>("w2", K, false));
    v.push_back(mk_warp<IN, BITS, 4, 4, 1, true>("w4", K, false));
    v.push_back(mk_warp<IN, BITS, 2, 8, 1, true>("w2x8", K, false));
    v.push_back(mk_warp<IN, BITS, 2, 8, 2, true>("sk2", K, false));
    v.push_back(mk_warp<IN, BITS, 2, 8, 1, true>("w2p", K, true));
    return v;
}

/* launch1's block shape per product: ROPE 128x2, STORE 256x2, ADD 256x4, SWIGLU 128x1 */
template <int IN>
static std::vector<Var> bf16_variants(int K, int kind) {
    std::vector<Var> v;
    if (kind == 0) v.push_back(mk_base16<IN, 128, 2>(K));
    else if (kind == 1) v.push_back(mk_base16<IN, 256, 4>(K));
    else if (kind == 2) v.push_back(mk_base16<IN, 128, 1>(K));
    else v.push_back(mk_base16<IN, 256, 2>(K));
    v.push_back(mk_warp<IN, 16, 2, 4, 1, true>("bf16-w2", K, false));
    v.push_back(mk_warp<IN, 16, 2, 8, 1, true>("bf16-w2p", K, true));
    return v;
}

static dim3 grid_of(const Var &v, int N) {
    int groups = (N + v.rows_per_block - 1) / v.rows_per_block;
    if (!v.persistent) return dim3(groups);
    return dim3(std::min(groups, std::max(1, v.nb) * g_sms));
}

static bool g_pdl_ok = false;

static void launch(const Var &v, const QA &a, cudaStream_t s, bool pdl) {
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at[1];
    cfg.gridDim = grid_of(v, a.N);
    cfg.blockDim = dim3(v.nth);
    cfg.dynamicSmemBytes = v.smem;
    cfg.stream = s;
    if (pdl && g_pdl_ok) {
        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = at;
        cfg.numAttrs = 1;
    }
    CK(cudaLaunchKernelEx(&cfg, v.fn, a));
}

/* deterministic host random numbers */
static uint64_t g_rs = 0x9E3779B97F4A7C15ull;
static uint32_t rnd32(void) {
    g_rs ^= g_rs << 13, g_rs ^= g_rs >> 7, g_rs ^= g_rs << 17;
    return (uint32_t)(g_rs >> 16);
}
static float rndf(float lo, float hi) { return lo + (hi - lo) * (float)(rnd32() >> 8) * (1.0f / 16777216.0f); }
static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

struct Shape {
    const char *name;
    int N, K, in, kind; /* in: RMSNorm input; kind: launch1's block shape (0 rope, 1 add, 2 swiglu, 3 store) */
};
struct Fmt {
    int bits, group;
};

/* Weights of one shape and format on the device, nc copies back to back (launch i reads copy i % nc). */
struct DevW {
    void *w = nullptr;
    uint16_t *sc = nullptr, *bi = nullptr;
    size_t wbytes = 0, sbytes = 0;
    int nc = 1;
};

int main(int argc, char **argv) {
    int L = argc > 1 ? atoi(argv[1]) : 2000;
    if (L < 10) L = 10;
    int dev = 0;
    CK(cudaGetDevice(&dev));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, dev));
    g_sms = prop.multiProcessorCount;
    g_pdl_ok = prop.major >= 9;
    printf("device: %s (sm_%d%d, %d SMs, L2 %d MB, %.1f GB memory)\n", prop.name, prop.major, prop.minor, g_sms, prop.l2CacheSize >> 20,
           prop.totalGlobalMem / 1e9);
    printf("launches per timing: %d; weights rotate over copies totalling >= 256 MB (out of L2); x stays in L2\n", L);
    printf("columns: us/launch in a graph with PDL | graph without PDL | stream launches with PDL; GB/s = weight+scale+bias bytes / "
           "graph-PDL time; xbf16 = graph-PDL time / bf16-base's\n\n");
    printf("%-7s %-7s %-18s %4s %4s %6s %9s %6s %9s %8s %8s %8s %7s %6s\n", "shape", "format", "variant", "regs", "blk", "warps", "grid",
           "block", "rel.err", "graphP", "graph", "streamP", "GB/s", "xbf16");

    const Shape shapes[] = {{"qkv", 2560, 2048, 1, 0}, {"o", 2048, 2048, 0, 1}, {"gate|up", 11264, 2048, 1, 2}, {"down", 2048, 5632, 0, 1},
                            {"lmhead", 32000, 2048, 1, 3}};
    const Fmt fmts[] = {{16, 0}, {4, 64}, {8, 64}, {4, 32}};
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    int bad = 0;

    for (const Shape &sh : shapes) {
        const int N = sh.N, K = sh.K;
        /* x and the norm weight */
        std::vector<float> x(K);
        std::vector<uint16_t> g(K);
        for (int k = 0; k < K; k++) x[k] = rndf(-1.0f, 1.0f), g[k] = to_bf16(rndf(0.5f, 1.5f));
        double ssq = 0.0;
        for (int k = 0; k < K; k++) ssq += (double)x[k] * x[k];
        const float eps = 1e-5f;
        double rn = sh.in ? 1.0 / sqrt((double)(float)(ssq / K) + eps) : 1.0;
        std::vector<double> xn(K);
        for (int k = 0; k < K; k++) xn[k] = sh.in ? (double)x[k] * from_bf16(g[k]) : (double)x[k];
        float *dx, *dout;
        uint16_t *dg;
        CK(cudaMalloc(&dx, sizeof(float) * K));
        CK(cudaMalloc(&dg, sizeof(uint16_t) * K));
        CK(cudaMalloc(&dout, sizeof(float) * N));
        CK(cudaMemcpy(dx, x.data(), sizeof(float) * K, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dg, g.data(), sizeof(uint16_t) * K, cudaMemcpyHostToDevice));
        double t_bf16 = 0.0;

        for (const Fmt &fm : fmts) {
            const int B = fm.bits, G = fm.group;
            /* host weights and the reference */
            DevW d;
            std::vector<uint32_t> hw;
            std::vector<uint16_t> h16, hs, hb;
            std::vector<double> ref(N);
            if (B == 16) {
                h16.resize((size_t)N * K);
                for (size_t i = 0; i < h16.size(); i++) h16[i] = to_bf16(rndf(-0.05f, 0.05f));
                for (int r = 0; r < N; r++) {
                    double s = 0.0;
                    const uint16_t *wr = &h16[(size_t)r * K];
                    for (int k = 0; k < K; k++) s += (double)from_bf16(wr[k]) * xn[k];
                    ref[r] = s * rn;
                }
                d.wbytes = h16.size() * 2;
            } else {
                size_t rw = (size_t)K / 32 * B, ng = K / G;
                hw.resize((size_t)N * rw);
                hs.resize((size_t)N * ng);
                hb.resize((size_t)N * ng);
                for (auto &v : hw) v = rnd32();
                for (size_t i = 0; i < hs.size(); i++) hs[i] = to_bf16(rndf(0.002f, 0.01f)), hb[i] = to_bf16(rndf(-0.04f, 0.04f));
                for (int r = 0; r < N; r++) {
                    double s = 0.0;
                    const uint32_t *wr = &hw[(size_t)r * rw];
                    for (int k = 0; k < K; k++) {
                        size_t bit = (size_t)k * B;
                        uint64_t two = wr[bit >> 5] | (((bit >> 5) + 1 < rw) ? (uint64_t)wr[(bit >> 5) + 1] << 32 : 0);
                        uint32_t q = (uint32_t)(two >> (bit & 31)) & ((1u << B) - 1u);
                        size_t gi = (size_t)r * ng + k / G;
                        s += ((double)from_bf16(hs[gi]) * q + from_bf16(hb[gi])) * xn[k];
                    }
                    ref[r] = s * rn;
                }
                d.wbytes = hw.size() * 4;
                d.sbytes = hs.size() * 2;
            }
            size_t per = d.wbytes + 2 * d.sbytes;
            d.nc = (int)std::max<size_t>(2, ((size_t)256 << 20) / per + 1);
            CK(cudaMalloc(&d.w, d.wbytes * d.nc));
            CK(cudaMemcpy(d.w, B == 16 ? (const void *)h16.data() : (const void *)hw.data(), d.wbytes, cudaMemcpyHostToDevice));
            for (int c = 1; c < d.nc; c++) CK(cudaMemcpy((char *)d.w + d.wbytes * c, d.w, d.wbytes, cudaMemcpyDeviceToDevice));
            if (B != 16) {
                CK(cudaMalloc(&d.sc, d.sbytes * d.nc));
                CK(cudaMalloc(&d.bi, d.sbytes * d.nc));
                CK(cudaMemcpy(d.sc, hs.data(), d.sbytes, cudaMemcpyHostToDevice));
                CK(cudaMemcpy(d.bi, hb.data(), d.sbytes, cudaMemcpyHostToDevice));
                for (int c = 1; c < d.nc; c++) {
                    CK(cudaMemcpy((char *)d.sc + d.sbytes * c, d.sc, d.sbytes, cudaMemcpyDeviceToDevice));
                    CK(cudaMemcpy((char *)d.bi + d.sbytes * c, d.bi, d.sbytes, cudaMemcpyDeviceToDevice));
                }
            }
            double refmax = 0.0;
            for (int r = 0; r < N; r++) refmax = std::max(refmax, fabs(ref[r]));

            std::vector<Var> vars;
            if (B == 16) vars = sh.in ? bf16_variants<1>(K, sh.kind) : bf16_variants<0>(K, sh.kind);
            else if (B == 4) vars = sh.in ? q_variants<1, 4>(K) : q_variants<0, 4>(K);
            else vars = sh.in ? q_variants<1, 8>(K) : q_variants<0, 8>(K);

            auto args = [&](int i) {
                int c = i % d.nc;
                int gsh = 0;
                if (B != 16) {
                    int codes = B == 8 ? 16 : 32;
                    while ((codes << gsh) < G) gsh++;
                }
                return QA{dout, dx, (const char *)d.w + d.wbytes * c, d.sc ? (const uint16_t *)((const char *)d.sc + d.sbytes * c) : nullptr,
                          d.bi ? (const uint16_t *)((const char *)d.bi + d.sbytes * c) : nullptr, dg, N, K, G, gsh, eps};
            };

            char fname[16];
            if (B == 16) snprintf(fname, sizeof fname, "bf16");
            else snprintf(fname, sizeof fname, "q%dg%d", B, G);
            for (const Var &v : vars) {
                /* correctness */
                CK(cudaMemset(dout, 0, sizeof(float) * N));
                launch(v, args(0), st, false);
                CK(cudaStreamSynchronize(st));
                CK(cudaGetLastError());
                std::vector<float> o(N);
                CK(cudaMemcpy(o.data(), dout, sizeof(float) * N, cudaMemcpyDeviceToHost));
                double err = 0.0;
                for (int r = 0; r < N; r++) err = std::max(err, fabs((double)o[r] - ref[r]));
                err /= refmax > 0 ? refmax : 1.0;
                if (!(err <= 1e-5)) bad++;
                /* timings */
                double tm[3];
                for (int mode = 0; mode < 3; mode++) {
                    bool pdl = mode != 1;
                    float ms = 0.0f;
                    if (mode < 2) {
                        cudaGraph_t gr;
                        cudaGraphExec_t ge;
                        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
                        for (int i = 0; i < L; i++) launch(v, args(i), st, pdl);
                        CK(cudaStreamEndCapture(st, &gr));
                        CK(cudaGraphInstantiate(&ge, gr, 0));
                        CK(cudaGraphLaunch(ge, st));
                        float best = 1e30f;
                        for (int rep = 0; rep < 3; rep++) {
                            CK(cudaEventRecord(e0, st));
                            CK(cudaGraphLaunch(ge, st));
                            CK(cudaEventRecord(e1, st));
                            CK(cudaEventSynchronize(e1));
                            CK(cudaEventElapsedTime(&ms, e0, e1));
                            best = std::min(best, ms);
                        }
                        ms = best;
                        CK(cudaGraphExecDestroy(ge));
                        CK(cudaGraphDestroy(gr));
                    } else {
                        for (int i = 0; i < 200; i++) launch(v, args(i), st, pdl);
                        CK(cudaEventRecord(e0, st));
                        for (int i = 0; i < L; i++) launch(v, args(i), st, pdl);
                        CK(cudaEventRecord(e1, st));
                        CK(cudaEventSynchronize(e1));
                        CK(cudaEventElapsedTime(&ms, e0, e1));
                    }
                    tm[mode] = ms * 1e3 / L;
                }
                CK(cudaGetLastError());
                if (v.name.rfind("bf16-base", 0) == 0) t_bf16 = tm[0];
                cudaFuncAttributes fa;
                CK(cudaFuncGetAttributes(&fa, v.fn));
                int nb = v.nb;
                dim3 gd = grid_of(v, N);
                printf("%-7s %-7s %-18s %4d %4d %6d %9u %6d %9.2e %8.2f %8.2f %8.2f %7.0f %6.2f%s\n", sh.name, fname, v.name.c_str(), fa.numRegs, nb,
                       nb * v.nth / 32, gd.x, v.nth, err, tm[0], tm[1], tm[2], per / (tm[0] * 1e3), t_bf16 > 0 ? tm[0] / t_bf16 : 0.0,
                       err <= 1e-5 ? "" : "  <-- WRONG");
                fflush(stdout);
            }
            CK(cudaFree(d.w));
            if (d.sc) CK(cudaFree(d.sc));
            if (d.bi) CK(cudaFree(d.bi));
        }
        printf("\n");
        CK(cudaFree(dx));
        CK(cudaFree(dg));
        CK(cudaFree(dout));
    }
    printf("%s: %d variant(s) over the 1e-5 relative error bound\n", bad ? "FAIL" : "ok", bad);
    return bad ? 1 : 0;
}
