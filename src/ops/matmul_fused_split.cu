/* Fused decode products of several rows on packed 4- and 8-bit weights, split along K over a thread
 * block cluster. A block owns 128 weight rows (a 16-row tile a warp) and one K slice: it stages its
 * slice of x once in shared memory (bf16, in mma fragment order), its warps stream their tiles' codes
 * through the tensor cores, and the cluster's blocks add their partial sums through distributed shared
 * memory in rank order (the same sum every run), then the output transform. matmul_fused_mma.cu's
 * blocks own 16 rows and all of K, so every block reads all of x: at 32 rows that input traffic
 * (T x K bf16 per 16 weight rows) was ~8x the codes' own bytes. */
#include "ops/matmul_fused_frag.cuh"
#include <cooperative_groups.h>
namespace cg = cooperative_groups;

#define FS_WARPS 8
#define FS_ROWS (16 * FS_WARPS)
#define FS_SMEM_MAX (100 * 1024) /* the x slice: two blocks an SM */
#define FS_U 4                   /* k steps a warp keeps in flight */

/* Block b of cluster rank r: rows of unit b (SWIGLU: 64 gate rows and their 64 up rows, so a pair's
 * sums meet in one block; otherwise 128 consecutive rows, so a RoPE pair inside a head of <= 128 rows
 * does too), k steps [r steps / S, (r + 1) steps / S). A step is 4 lanes x KS chunks of 8 k. */
template <int OUT, int NT, int BITS>
__global__ void __launch_bounds__(FS_WARPS * 32, 2) fzs_k(fz_args a, fzq_args qa, int S, int steps) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 /* clusters: sm_90+ (fzs_launch checks the device) */
    extern __shared__ uint4 fs_smem[];
    constexpr int KS = fzm_w<BITS>::KS, TP = 8 * NT;
    constexpr bool M4 = BITS == 4; /* fzm_w_frag's (e, e + 4) pairs; x is staged in the same order */
    cg::cluster_group cl = cg::this_cluster();
    const int rank = (int)cl.block_rank(), ub = blockIdx.x / S;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int s0 = rank * steps / S, ns = (rank + 1) * steps / S - s0, nv = a.K >> 3;
    const int base = OUT == AV_GEMV_OUT_SWIGLU ? (warp < FS_WARPS / 2 ? 0 : a.F) + 64 * ub + 16 * (warp % (FS_WARPS / 2))
                                               : FS_ROWS * ub + 16 * warp;
    const void *wr[2];
    int rows[2];
    bool ok[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        int row = base + g + 8 * h;
        ok[h] = OUT == AV_GEMV_OUT_SWIGLU ? row - (warp < FS_WARPS / 2 ? 0 : a.F) < a.F : row < a.N;
        rows[h] = ok[h] ? row : 0;
        wr[h] = reinterpret_cast<const uint32_t *>(a.W) + (size_t)rows[h] * (a.K / 32 * BITS);
    }
    /* a ring of FS_U k steps a warp: slot j is refilled with step j + FS_U as soon as step j is used */
    fzm_w<BITS> wv[FS_U][2];
    auto load = [&](int j, int s) {
#pragma unroll
        for (int h = 0; h < 2; h++) fzm_w_load<BITS>(wv[j][h], a, qa, wr[h], (size_t)rows[h], 4 * (s0 + s) + t, s < ns && ok[h]);
    };
#pragma unroll
    for (int j = 0; j < FS_U; j++) load(j, j); /* weights are constant: start streaming before the wait */
    av_pdl_wait();
    av_pdl_launch();

    /* x slice: row tk's chunk 4 KS sl + KS tt + kk (the chunk lane tt reads in step sl) goes to
     * (KS sl + kk) 4 + tt, so a quad reads 64 contiguous bytes; rows are rs uint4 apart, rs = 4 mod 8,
     * so the two rows of a quarter warp fall on different banks */
    const int cpr = 4 * KS * ns, rs = cpr + 4, total = TP * cpr;
    auto put = [&](int i, uint4 v) {
        int tk = i / cpr, c = i - tk * cpr, sl = c / (4 * KS), r = c - sl * 4 * KS, tt = r / KS, kk = r - tt * KS;
        if (M4)
            v = make_uint4(__byte_perm(v.x, v.z, 0x5410), __byte_perm(v.x, v.z, 0x7632), __byte_perm(v.y, v.w, 0x5410),
                           __byte_perm(v.y, v.w, 0x7632));
        fs_smem[tk * rs + (KS * sl + kk) * 4 + tt] = v;
    };
    auto gidx = [&](int i) { /* chunk i of the slice in x, or -1 past the rows */
        int tk = i / cpr;
        return i < total && tk < a.T ? (long long)tk * nv + 4 * KS * s0 + (i - tk * cpr) : -1ll;
    };
    /* a thread's loads are issued together (one L2 round trip per batch, not per chunk) */
    if (a.xb) {
        constexpr int B = 8;
        for (int i0 = threadIdx.x; i0 < total; i0 += B * blockDim.x) {
            uint4 v[B];
#pragma unroll
            for (int q = 0; q < B; q++) {
                long long gi = gidx(i0 + q * blockDim.x);
                v[q] = gi >= 0 ? reinterpret_cast<const uint4 *>(a.x)[gi] : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int q = 0; q < B; q++)
                if (i0 + q * (int)blockDim.x < total) put(i0 + q * blockDim.x, v[q]);
        }
    } else {
        constexpr int B = 4;
        for (int i0 = threadIdx.x; i0 < total; i0 += B * blockDim.x) {
            float4 v[B][2];
#pragma unroll
            for (int q = 0; q < B; q++) {
                long long gi = gidx(i0 + q * blockDim.x);
                const float4 *x4 = reinterpret_cast<const float4 *>(a.x) + 2 * (gi >= 0 ? gi : 0);
                v[q][0] = gi >= 0 ? x4[0] : make_float4(0, 0, 0, 0), v[q][1] = gi >= 0 ? x4[1] : make_float4(0, 0, 0, 0);
            }
#pragma unroll
            for (int q = 0; q < B; q++)
                if (i0 + q * (int)blockDim.x < total)
                    put(i0 + q * blockDim.x, make_uint4(pack_bf16(v[q][0].x, v[q][0].y), pack_bf16(v[q][0].z, v[q][0].w),
                                                       pack_bf16(v[q][1].x, v[q][1].y), pack_bf16(v[q][1].z, v[q][1].w)));
        }
    }
    __syncthreads();

    float acc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    for (int j0 = 0; j0 < ns; j0 += FS_U) {
#pragma unroll
        for (int j = 0; j < FS_U; j++) {
            if (j0 + j >= ns) break; /* warp-uniform */
#pragma unroll
            for (int kk = 0; kk < KS; kk++) {
                uint4 w0 = fzm_w_frag<BITS, M4>(wv[j][0], kk), w1 = fzm_w_frag<BITS, M4>(wv[j][1], kk);
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    uint4 b = fs_smem[(g + 8 * n) * rs + (KS * (j0 + j) + kk) * 4 + t];
                    mma_bf16(acc[n], w0.x, w1.x, w0.y, w1.y, b.x, b.y);
                    mma_bf16(acc[n], w0.z, w1.z, w0.w, w1.w, b.z, b.w);
                }
            }
            if (j0 + j + FS_U < ns) load(j, j0 + j + FS_U);
        }
    }

    /* partial sums [128 rows][TP tokens] over the x slice (its reads are done); element e of lane
     * (g, t) in input tile n: row g + 8 (e >> 1), token 8 n + 2 t + (e & 1) */
    __syncthreads();
    float *pb = reinterpret_cast<float *>(fs_smem);
#pragma unroll
    for (int n = 0; n < NT; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) pb[(16 * warp + g + 8 * (e >> 1)) * TP + 8 * n + 2 * t + (e & 1)] = acc[n][e];
    cl.sync();

    /* outputs of this unit, spread over the cluster's threads: a pair (SWIGLU gate/up, RoPE rows hd/2
     * apart) or a plain row, times a token; each sums the S partials in rank order */
    const bool pairs = OUT == AV_GEMV_OUT_SWIGLU || (OUT == AV_GEMV_OUT_ROPE && FS_ROWS * ub < a.rope_rows);
    const int items = (pairs ? FS_ROWS / 2 : FS_ROWS) * a.T, half = a.hd >> 1;
    for (int it = rank * blockDim.x + threadIdx.x; it < items; it += S * blockDim.x) {
        int u = it / a.T, tk = it - u * a.T, l0 = u, l1 = 0;
        if (OUT == AV_GEMV_OUT_SWIGLU) l1 = FS_ROWS / 2 + u;
        else if (pairs) l0 = (u / half) * a.hd + u % half, l1 = l0 + half;
        float p0[8], p1[8], v0 = 0.0f, v1 = 0.0f; /* the S <= 8 remote loads in flight together */
#pragma unroll
        for (int r = 0; r < 8; r++)
            if (r < S) {
                const float *p = cl.map_shared_rank(pb, r);
                p0[r] = p[l0 * TP + tk];
                p1[r] = pairs ? p[l1 * TP + tk] : 0.0f;
            }
#pragma unroll
        for (int r = 0; r < 8; r++)
            if (r < S) v0 += p0[r], v1 += p1[r];
        if (OUT == AV_GEMV_OUT_SWIGLU) {
            int col = 64 * ub + u;
            if (col >= a.F) continue;
            float sw = v0 / (1.0f + expf(-v0)) * v1;
            if (a.ob) reinterpret_cast<uint16_t *>(a.out)[(size_t)tk * a.F + col] = fz_bf16(sw);
            else a.out[(size_t)tk * a.F + col] = sw;
            continue;
        }
        float *o = a.out + (size_t)tk * a.N;
        int r0 = FS_ROWS * ub + l0;
        if (pairs) {
            float ang = (float)a.pos[tk] * a.inv_freq[r0 % a.hd], sn, cs;
            sincosf(ang, &sn, &cs);
            o[r0] = v0 * cs - v1 * sn;
            o[r0 + half] = v1 * cs + v0 * sn;
        } else if (r0 < a.N) {
            if (OUT == AV_GEMV_OUT_ADD) o[r0] += v0;
            else o[r0] = v0;
        }
    }
    cl.sync(); /* no block leaves while the others read its partial sums */
#endif
}

template <int OUT, int NT, int BITS>
static bool fzs_go(const fz_args &a, const fzq_args &qa, int units, int S, int steps, size_t smem) {
    static thread_local bool attr = false; /* per instantiation and thread (= device): shared memory past 48 KB is opt-in */
    if (!attr) {
        if (cudaFuncSetAttribute(fzs_k<OUT, NT, BITS>, cudaFuncAttributeMaxDynamicSharedMemorySize, FS_SMEM_MAX) != cudaSuccess) return false;
        attr = true;
    }
    if (av_launch_cluster(fzs_k<OUT, NT, BITS>, dim3((unsigned)(units * S)), dim3(FS_WARPS * 32), smem, 1, S, a, qa, S, steps) == cudaSuccess)
        return true;
    (void)cudaGetLastError(); /* not launched: the caller takes the other kernel */
    return false;
}

template <int OUT, int BITS>
static bool fzs_nt(const fz_args &a, const fzq_args &qa, int units, int S, int steps, size_t smem) {
    if (a.T <= 8) return fzs_go<OUT, 1, BITS>(a, qa, units, S, steps, smem);
    if (a.T <= 16) return fzs_go<OUT, 2, BITS>(a, qa, units, S, steps, smem);
    return fzs_go<OUT, 4, BITS>(a, qa, units, S, steps, smem);
}

template <int BITS>
static bool fzs_out(const fz_args &a, const fzq_args &qa, av_gemv_out out, int units, int S, int steps, size_t smem) {
    switch (out) {
    case AV_GEMV_OUT_STORE: return fzs_nt<AV_GEMV_OUT_STORE, BITS>(a, qa, units, S, steps, smem);
    case AV_GEMV_OUT_ADD: return fzs_nt<AV_GEMV_OUT_ADD, BITS>(a, qa, units, S, steps, smem);
    case AV_GEMV_OUT_ROPE: return fzs_nt<AV_GEMV_OUT_ROPE, BITS>(a, qa, units, S, steps, smem);
    default: return fzs_nt<AV_GEMV_OUT_SWIGLU, BITS>(a, qa, units, S, steps, smem);
    }
}

/* Rows from which the split wins (H100, TinyLlama shape, against matmul_fused_mma.cu's kernel, tok/s,
 * means of two rounds): every product, .device/go47.sh: 4-bit g64 b8 8,204 -> 8,063, b16 11,014 ->
 * 14,282, b32 15,908 -> 18,220; 8-bit g64 b4 2,896 -> 2,954, b8 5,572 -> 5,809, b16 8,456 -> 10,249, b32
 * 12,351 -> 14,355. Long rows (the down product, K 5632) at 2+ rows besides, go49.sh: 4-bit b4 4,878 ->
 * 5,017, b8 9,064 -> 9,309; Q4_0 b8 8,578 -> 8,897; 8-bit b2 1,531 -> 1,732 */
static int fzs_min_rows(int bits, int K) { return K >= 4096 ? 2 : bits == 8 ? 4 : 9; }

bool fzs_launch(const fz_args &a, const fzq_args &qa, int bits, av_gemv_out out) {
    if ((bits != 4 && bits != 8) || a.T < fzs_min_rows(bits, a.K) || a.T > 32 || !av_cuda_pdl()) return false; /* pdl: sm_90+ */
    const int KS = 16 / bits, kstep = 32 * KS; /* k a step covers */
    if (a.K % kstep) return false;
    if (out == AV_GEMV_OUT_SWIGLU && a.F % 16) return false;
    if (out == AV_GEMV_OUT_ROPE && (a.rope_rows % FS_ROWS || a.hd > FS_ROWS || FS_ROWS % a.hd || a.hd % 2)) return false;
    const int units = out == AV_GEMV_OUT_SWIGLU ? (int)av_cdiv((size_t)a.F, FS_ROWS / 2) : (int)av_cdiv((size_t)a.N, FS_ROWS);
    const int steps = a.K / kstep, tp = a.T <= 8 ? 8 : a.T <= 16 ? 16 : 32;
    auto xbytes = [&](int s) { return (size_t)tp * (4 * KS * av_cdiv((size_t)steps, (size_t)s) + 4) * 16; };
    int S = 1;
    while (S < 8 && S * 2 <= steps && (units * S < sm_count() || xbytes(S) > FS_SMEM_MAX)) S *= 2;
    size_t smem = xbytes(S), pbytes = (size_t)FS_ROWS * tp * sizeof(float);
    if (smem < pbytes) smem = pbytes;
    if (smem > FS_SMEM_MAX) return false;
    return bits == 4 ? fzs_out<4>(a, qa, out, units, S, steps, smem) : fzs_out<8>(a, qa, out, units, S, steps, smem);
}
