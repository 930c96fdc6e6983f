/* Fused decode products of 2..16 rows (packed weights: 32) on bf16 tensor cores: bf16 weights, or
 * 2-, 4- and 8-bit MLX codes turned into bf16 fragments in registers. */
#include "ops/matmul_fused_frag.cuh"

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
    constexpr bool M4 = BITS == 4 && NT == 1; /* fzm_w_frag */
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
                    if constexpr (M4) { /* pairs (e, e + 4) */
                        bx[j][kk][n][0] = __byte_perm(raw.x, raw.z, 0x5410), bx[j][kk][n][1] = __byte_perm(raw.x, raw.z, 0x7632);
                        bx[j][kk][n][2] = __byte_perm(raw.y, raw.w, 0x5410), bx[j][kk][n][3] = __byte_perm(raw.y, raw.w, 0x7632);
                    } else {
                        bx[j][kk][n][0] = raw.x, bx[j][kk][n][1] = raw.y, bx[j][kk][n][2] = raw.z, bx[j][kk][n][3] = raw.w;
                    }
                } else {
                    float xv[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                    if (in) fz_x8<IN>(a, a.x + (size_t)row * a.K, c, xv, &ss[n]);
                    if constexpr (M4) {
#pragma unroll
                        for (int e = 0; e < 4; e++) bx[j][kk][n][e] = pack_bf16(xv[e], xv[e + 4]);
                    } else {
                        bx[j][kk][n][0] = pack_bf16(xv[0], xv[1]), bx[j][kk][n][1] = pack_bf16(xv[2], xv[3]);
                        bx[j][kk][n][2] = pack_bf16(xv[4], xv[5]), bx[j][kk][n][3] = pack_bf16(xv[6], xv[7]);
                    }
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
                uint4 w0 = fzm_w_frag<BITS, M4>(wv[j][i][0], kk), w1 = fzm_w_frag<BITS, M4>(wv[j][i][1], kk);
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
template <int V>
__global__ void __launch_bounds__(256) fz_norm16_k(uint16_t *out, const float *x, const void *w, av_dtype wt, int K, float eps) {
    __shared__ float sh[32];
    av_pdl_launch(); /* the product may start streaming its weights; it waits for this grid before reading out */
    const int n4 = K >> 2, tid = threadIdx.x;
    auto gw = [&](int f) { /* norm weights 4f .. 4f+3 */
        return make_float4(av_ld_w(w, wt, 4 * (size_t)f), av_ld_w(w, wt, 4 * (size_t)f + 1), av_ld_w(w, wt, 4 * (size_t)f + 2),
                           av_ld_w(w, wt, 4 * (size_t)f + 3));
    };
    float4 g[V]; /* the norm weight is constant: read before the wait */
#pragma unroll
    for (int i = 0; i < V; i++) g[i] = tid + 256 * i < n4 ? gw(tid + 256 * i) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    av_pdl_wait();
    const float4 *xr = reinterpret_cast<const float4 *>(x + (size_t)blockIdx.x * K);
    uint2 *o = reinterpret_cast<uint2 *>(out + (size_t)blockIdx.x * K);
    float4 v[V]; /* all of a thread's loads in flight at once (rows up to 1024 V values) */
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < V; i++) {
        int f = tid + 256 * i;
        v[i] = f < n4 ? xr[f] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        ss += v[i].x * v[i].x + v[i].y * v[i].y + v[i].z * v[i].z + v[i].w * v[i].w;
    }
    for (int f = tid + 256 * V; f < n4; f += 256) {
        float4 t = xr[f];
        ss += t.x * t.x + t.y * t.y + t.z * t.z + t.w * t.w;
    }
    ss = av_block_sum(ss, sh);
    float r = 1.0f / sqrtf(ss / (float)K + eps);
    auto put = [&](int f, float4 xv, float4 gv) {
        o[f] = make_uint2((uint32_t)fz_bf16(gv.x * (xv.x * r)) | (uint32_t)fz_bf16(gv.y * (xv.y * r)) << 16,
                          (uint32_t)fz_bf16(gv.z * (xv.z * r)) | (uint32_t)fz_bf16(gv.w * (xv.w * r)) << 16);
    };
#pragma unroll
    for (int i = 0; i < V; i++)
        if (tid + 256 * i < n4) put(tid + 256 * i, v[i], g[i]);
    for (int f = tid + 256 * V; f < n4; f += 256) put(f, xr[f], gw(f));
}

template <int IN, int OUT, int NT, int U, int TU, int BITS>
static void launchm_k(const fz_args &a, const fzq_args &qa, unsigned units) {
    if constexpr (BITS == 0) av_launch(fzm_k<IN, OUT, NT, U, TU>, dim3(units), dim3(MM_WARPS * 32), 0, 1, a);
    else av_launch(fzmq_k<IN, OUT, NT, U, TU, BITS>, dim3(units), dim3(MM_WARPS * 32), 0, 1, a, qa);
}

template <int IN, int OUT, int NT, int BITS>
static void launchm(const fz_args &a, const fzq_args &qa) {
    /* pairs: two tiles; plain: one tile for <= 8 rows or packed codes, else two (fewer input reads per
     * weight byte; four tiles measured slower: too few blocks for the 2048-row products). Packed codes
     * at 9..32 rows with two tiles left half the SMs idle on the 2048-row products (64 blocks): one
     * tile took H100 4-bit g64 decode b16 9,457 -> 10,331 tok/s, b32 14,513 -> 15,997 */
    constexpr int TU = (OUT == AV_GEMV_OUT_ROPE || OUT == AV_GEMV_OUT_SWIGLU || (NT > 1 && BITS == 0)) ? 2 : 1;
    unsigned units = OUT == AV_GEMV_OUT_SWIGLU ? (unsigned)(a.F / 16)
                     : OUT == AV_GEMV_OUT_ROPE ? (unsigned)(a.rope_rows / 32 + av_cdiv((size_t)(a.N - a.rope_rows), 32))
                                               : av_cdiv((size_t)a.N, 16 * TU);
    /* <= 8 rows: a grid of at most one block per SM (the 2048-row products) is latency-bound, so it
     * keeps 8 k steps per warp in flight; larger grids keep 2 and fit three blocks per SM. 9..16
     * rows: 4 k steps */
    if constexpr (BITS) { /* a step is KS chunks of 8 k: fewer steps keep as many k in flight */
        if constexpr (NT == 1)
            if (units <= (unsigned)sm_count()) return launchm_k<IN, OUT, NT, 2, TU, BITS>(a, qa, units);
        /* 9..16 rows, plain outputs: two k steps a warp when the grid is one block per SM or less
         * (H100 4-bit g64 b16 +7%; at 17..32 rows it lost 1.4%: 246 registers) */
        if constexpr (NT == 2 && TU == 1 && BITS != 2)
            if (units <= (unsigned)sm_count() && av_cdiv((size_t)(a.K >> 3), 4 * fzm_w<BITS>::KS) > MM_WARPS)
                return launchm_k<IN, OUT, NT, 2, TU, BITS>(a, qa, units);
        launchm_k<IN, OUT, NT, 1, TU, BITS>(a, qa, units);
    } else if constexpr (NT == 1) {
        if (units <= (unsigned)sm_count()) return launchm_k<IN, OUT, NT, 8, TU, BITS>(a, qa, units);
        launchm_k<IN, OUT, NT, 2, TU, BITS>(a, qa, units);
    } else {
        launchm_k<IN, OUT, NT, 4, TU, BITS>(a, qa, units);
    }
}

/* Rows per input tile set: bf16 weights take one 8-row tile (<= 8 rows) or two (<= MMA_MAX_ROWS);
 * packed codes one, two or four (17..32 rows: still reading the codes once beats dequantized panels +
 * cuBLAS). */
template <int IN, int OUT, int BITS>
static void launchm_t(const fz_args &a, const fzq_args &qa) {
    if (a.T <= 8) launchm<IN, OUT, 1, BITS>(a, qa);
    else if (BITS == 0 || a.T <= 16) launchm<IN, OUT, 2, BITS>(a, qa);
    else if constexpr (BITS != 0) launchm<IN, OUT, 4, BITS>(a, qa);
}

template <int IN, int OUT>
static void launchm_bits(const fz_args &a, const fzq_args &qa, int bits) {
    switch (bits) {
    case 0: launchm_t<IN, OUT, 0>(a, qa); break;
    case 2: launchm_t<IN, OUT, 2>(a, qa); break;
    case 4: launchm_t<IN, OUT, 4>(a, qa); break;
    default: launchm_t<IN, OUT, 8>(a, qa); break;
    }
}

template <int IN>
static void launchm_out(const fz_args &a, const fzq_args &qa, int bits, av_gemv_out out) {
    switch (out) {
    case AV_GEMV_OUT_STORE: launchm_bits<IN, AV_GEMV_OUT_STORE>(a, qa, bits); break;
    case AV_GEMV_OUT_ADD: launchm_bits<IN, AV_GEMV_OUT_ADD>(a, qa, bits); break;
    case AV_GEMV_OUT_ROPE: launchm_bits<IN, AV_GEMV_OUT_ROPE>(a, qa, bits); break;
    default: launchm_bits<IN, AV_GEMV_OUT_SWIGLU>(a, qa, bits); break;
    }
}

void fz_mma_launch(const fz_args &a, const fzq_args &qa, av_gemv_in in, int bits, av_gemv_out out) {
    if (in == AV_GEMV_IN_RMSNORM) launchm_out<AV_GEMV_IN_RMSNORM>(a, qa, bits, out);
    else launchm_out<AV_GEMV_IN_X>(a, qa, bits, out);
}

void fz_norm16(uint16_t *out, const float *x, const void *w, av_dtype wt, int T, int K, float eps) {
    int n4 = K >> 2; /* K % 8 == 0 (fused_ok) */
    if (n4 <= 256) av_launch(fz_norm16_k<1>, dim3(T), dim3(256), 0, 1, out, x, w, wt, K, eps);
    else if (n4 <= 512) av_launch(fz_norm16_k<2>, dim3(T), dim3(256), 0, 1, out, x, w, wt, K, eps);
    else av_launch(fz_norm16_k<4>, dim3(T), dim3(256), 0, 1, out, x, w, wt, K, eps);
}
