/* Flash attention forward for Hopper (sm_90a), warp-specialised: one producer warp loads Q once and
 * the K and V tiles (128 keys) into a ring of three shared-memory stages by TMA (mbarriers count the
 * bytes in and the consumers' releases out); NC consumer warpgroups of 64 query rows each run the
 * products on wgmma and the online softmax in f32 registers, with no block-wide barrier in the loop.
 * A consumer issues tile j's S = Q K^T together with tile j-1's O += P V and does tile j's softmax
 * while they run; the warpgroups take turns issuing (named barriers in a ring) so one's softmax runs
 * under another's products. The producer warpgroup gives its registers to the consumers (setmaxnreg).
 * P goes to its product from registers (the S accumulators rounded to bf16 are wgmma's A fragment),
 * V by a transposed (MN-major) descriptor. Scores are raw Q K^T of the bf16 values; the scale goes
 * into the exponent's FFMA (as the bf16 backward recomputes them). bf16 q, k, v are read where they
 * lie ([B][rows][heads * HD]). flash.cu calls it on sm_90 devices; elsewhere its mma.sync kernel runs.
 * Shapes (H100, bench/NOTES-attention.md session 24): hd 64 three consumer warpgroups, hd 128 two;
 * three stages beat two by 20-25% at 2048-8192 tokens. */
#include "attention/flash_common.cuh"
#include "attention/tma.cuh"
extern "C" {
#include "backend/cuda.h"
}
#include "attention/flash_wgmma.h"

/* Keys a tile, stages of the ring, consumer warpgroups a block (measured: bench/NOTES-attention.md, session 24) */
#define FA_WS_BN 128
#define FA_WS_ST 3
#define FA_WS_NC(HD) ((HD) == 64 ? 3 : 2)

template <int HD, int NC, int BN, int ST>
__global__ void __launch_bounds__((NC + 1) * 128, 1)
    fa_fwd_ws_k(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tk, const __grid_constant__ CUtensorMap tv, float *out,
                float *lse, uint16_t *out16, int T, int pos0, int H, int KVH, float qscale) {
#if AV_WGMMA
    static_assert(BN == 128, "S = Q K^T is one m64n128 product per k step");
    constexpr int BM = 64 * NC, HP = HD / 64;
    constexpr uint32_t QBYTES = BM * HD * 2, KBYTES = BN * HD * 2;
    extern __shared__ __align__(16) unsigned char fa_ws_smem[];
    __shared__ __align__(8) uint64_t bars[1 + 3 * ST];
    uint32_t raw = (uint32_t)__cvta_generic_to_shared(fa_ws_smem), sQ = (raw + 1023u) & ~1023u;
    const uint32_t sK = sQ + QBYTES, sV = sK + ST * KBYTES;
    const uint32_t bQ = (uint32_t)__cvta_generic_to_shared(bars), bK = bQ + 8, bV = bK + 8 * ST, bE = bV + 8 * ST;
    int qt = gridDim.x - 1 - blockIdx.x; /* heaviest (last) query tiles first */
    int h = blockIdx.y, kh = h / (H / KVH), b = blockIdx.z;
    int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, c = lane & 3;
    int t0 = qt * BM;
    int nt = (pos0 + min(t0 + BM, T) + BN - 1) / BN; /* key tiles the block's last row sees */
    if (tid == 0) {
        mbar_init(bQ, 1);
        for (int s = 0; s < ST; s++) {
            mbar_init(bK + 8 * s, 1);
            mbar_init(bV + 8 * s, 1);
            mbar_init(bE + 8 * s, 4 * NC); /* a warp of each consumer warpgroup */
        }
        mbar_init_fence();
    }
    __syncthreads();

    if (wg == 0) { /* producer */
        regs_dec<24>();
        if (warp == 0 && lane == 0) {
            mbar_expect(bQ, QBYTES);
            for (int w = 0; w < NC; w++)
                for (int p = 0; p < HP; p++) tma_load3(sQ + p * (BM * 128) + w * (64 * 128), &tq, h * HD + 64 * p, t0 + 64 * w, b, bQ);
            for (int j = 0; j < nt; j++) {
                int s = j % ST;
                if (j >= ST) mbar_wait(bE + 8 * s, ((j / ST) - 1) & 1); /* the consumers released its last use */
                mbar_expect(bK + 8 * s, KBYTES);
                for (int p = 0; p < HP; p++) tma_load3(sK + s * KBYTES + p * (BN * 128), &tk, kh * HD + 64 * p, j * BN, b, bK + 8 * s);
                mbar_expect(bV + 8 * s, KBYTES);
                for (int p = 0; p < HP; p++) tma_load3(sV + s * KBYTES + p * (BN * 128), &tv, kh * HD + 64 * p, j * BN, b, bV + 8 * s);
            }
        }
        return;
    }
    regs_inc<NC == 2 ? 240 : 160>();
    const int cw = wg - 1, tw = t0 + 64 * cw;
    const uint32_t qw = sQ + cw * (64 * 128); /* this warpgroup's rows in each 64-column part of Q */
    /* turns: warpgroup cw issues after cw - 1 (the last after the first); 2 warpgroups meet at each */
    auto turn_wait = [&]() { named_sync(1 + cw, 256); };
    auto turn_pass = [&]() { named_arrive(1 + (cw + 1) % NC, 256); };

    float o[HD / 2], s[BN / 2];
#pragma unroll
    for (int i = 0; i < HD / 2; i++) o[i] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    int r0 = tw + 16 * warp + g, r1 = r0 + 8; /* the thread's two query rows */
    uint32_t pa[BN / 16][4];                  /* P of the previous tile, bf16: the A operand of its P V product */

    auto issue_s = [&](int st) {
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            uint64_t da = wg_desc(qw + (kk >> 2) * (BM * 128) + (kk & 3) * 32, 16, 1024);
            uint64_t db = wg_desc(sK + st * KBYTES + (kk >> 2) * (BN * 128) + (kk & 3) * 32, 16, 1024);
            wgmma_ss_n128(s, da, db, kk > 0);
        }
        wg_commit();
    };
    auto issue_pv = [&](int st) {
        wg_reg_fence(o);
        wg_fence();
#pragma unroll
        for (int kc = 0; kc < BN / 16; kc++) {
            uint64_t dv = wg_desc_mn(sV + st * KBYTES + kc * 2048, BN * 128, 1024);
            if constexpr (HD == 128) wgmma_rs_n128_t(o, pa[kc], dv);
            else wgmma_rs_n64<1>(o, pa[kc], dv);
        }
        wg_commit();
    };
    /* tile j's scores in s -> their exponentials (f32, in s), the running max and sums; returns the
     * factors the output so far must be scaled by */
    auto softmax = [&](int j, float &corr0, float &corr1) {
        int s0 = j * BN, lim0 = pos0 + r0, lim1 = lim0 + 8; /* last visible key of the thread's two rows */
        if (s0 + BN - 1 > pos0 + tw) {                      /* the causal edge crosses this tile for this warpgroup */
#pragma unroll
            for (int n = 0; n < BN / 8; n++) {
                int k0 = s0 + n * 8 + 2 * c;
                if (k0 > lim0) s[4 * n + 0] = -INFINITY;
                if (k0 + 1 > lim0) s[4 * n + 1] = -INFINITY;
                if (k0 > lim1) s[4 * n + 2] = -INFINITY;
                if (k0 + 1 > lim1) s[4 * n + 3] = -INFINITY;
            }
        }
        float mx0 = m0, mx1 = m1;
#pragma unroll
        for (int n = 0; n < BN / 8; n++) {
            mx0 = fmaxf(mx0, fmaxf(s[4 * n + 0], s[4 * n + 1]));
            mx1 = fmaxf(mx1, fmaxf(s[4 * n + 2], s[4 * n + 3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        /* a row with no visible key yet keeps -inf: use 0 as the base */
        float b0 = (mx0 == -INFINITY ? 0.0f : mx0) * qscale, b1 = (mx1 == -INFINITY ? 0.0f : mx1) * qscale;
        corr0 = fa_exp2(fmaf(m0, qscale, -b0));
        corr1 = fa_exp2(fmaf(m1, qscale, -b1));
        m0 = mx0;
        m1 = mx1;
        float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
        for (int n = 0; n < BN / 8; n++) {
            s[4 * n + 0] = fa_exp2(fmaf(s[4 * n + 0], qscale, -b0)), s[4 * n + 1] = fa_exp2(fmaf(s[4 * n + 1], qscale, -b0));
            s[4 * n + 2] = fa_exp2(fmaf(s[4 * n + 2], qscale, -b1)), s[4 * n + 3] = fa_exp2(fmaf(s[4 * n + 3], qscale, -b1));
            sum0 += s[4 * n + 0] + s[4 * n + 1];
            sum1 += s[4 * n + 2] + s[4 * n + 3];
        }
        l0 = l0 * corr0 + sum0;
        l1 = l1 * corr1 + sum1;
    };
    auto pack_p = [&]() {
#pragma unroll
        for (int n = 0; n < BN / 8; n++) {
            pa[n / 2][(n & 1) * 2 + 0] = pack_bf16(s[4 * n + 0], s[4 * n + 1]);
            pa[n / 2][(n & 1) * 2 + 1] = pack_bf16(s[4 * n + 2], s[4 * n + 3]);
        }
    };

    if (cw == NC - 1) named_arrive(1, 256); /* the first warpgroup takes the first turn */
    mbar_wait(bQ, 0);
    mbar_wait(bK, 0);
    turn_wait();
    issue_s(0);
    turn_pass();
    wg_wait<0>();
    wg_reg_fence(s);
    float corr0, corr1;
    softmax(0, corr0, corr1);
    pack_p();
    for (int j = 1; j < nt; j++) {
        int st = j % ST, pst = (j - 1) % ST;
        mbar_wait(bK + 8 * st, (j / ST) & 1);
        turn_wait();
        issue_s(st);
        mbar_wait(bV + 8 * pst, ((j - 1) / ST) & 1);
        issue_pv(pst);
        turn_pass();
        wg_wait<1>(); /* S of tile j */
        wg_reg_fence(s);
        softmax(j, corr0, corr1);
        wg_wait<0>(); /* P V of tile j - 1: its stage is free, and o may be rescaled */
        wg_reg_fence(o);
        if (lane == 0) mbar_arrive(bE + 8 * pst);
#pragma unroll
        for (int n = 0; n < HD / 8; n++) {
            o[4 * n + 0] *= corr0;
            o[4 * n + 1] *= corr0;
            o[4 * n + 2] *= corr1;
            o[4 * n + 3] *= corr1;
        }
        pack_p();
    }
    {
        int pst = (nt - 1) % ST;
        mbar_wait(bV + 8 * pst, ((nt - 1) / ST) & 1);
        turn_wait();
        issue_pv(pst);
        if (cw != NC - 1) turn_pass(); /* the last pass would have no taker */
        wg_wait<0>();
        wg_reg_fence(o);
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    float i0 = 1.0f / l0, i1 = 1.0f / l1;
    const size_t qs = (size_t)H * HD;
    size_t row0 = ((size_t)b * T + r0) * qs + (size_t)h * HD, row1 = row0 + 8 * qs;
#pragma unroll
    for (int n = 0; n < HD / 8; n++) {
        int d = n * 8 + 2 * c;
        if (out && r0 < T) *reinterpret_cast<float2 *>(out + row0 + d) = make_float2(o[4 * n + 0] * i0, o[4 * n + 1] * i0);
        if (out && r1 < T) *reinterpret_cast<float2 *>(out + row1 + d) = make_float2(o[4 * n + 2] * i1, o[4 * n + 3] * i1);
        if (out16 && r0 < T)
            *reinterpret_cast<__nv_bfloat162 *>(out16 + row0 + d) = __floats2bfloat162_rn(o[4 * n + 0] * i0, o[4 * n + 1] * i0);
        if (out16 && r1 < T)
            *reinterpret_cast<__nv_bfloat162 *>(out16 + row1 + d) = __floats2bfloat162_rn(o[4 * n + 2] * i1, o[4 * n + 3] * i1);
    }
    if (lse && c == 0) {
        const float ln2 = 0.69314718056f;
        if (r0 < T) lse[((size_t)b * H + h) * T + r0] = (m0 * qscale + log2f(l0)) * ln2;
        if (r1 < T) lse[((size_t)b * H + h) * T + r1] = (m1 * qscale + log2f(l1)) * ln2;
    }
#else
    AV_WGMMA_MISSING();
#endif
}

template <int HD>
static int fa_ws_launch(float *out, float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v, int B, int T, int kv_rows, int pos0, int H,
                        int KVH, uint16_t *out16) {
    constexpr int BN = FA_WS_BN, ST = FA_WS_ST, NC = FA_WS_NC(HD);
    CUtensorMap mq, mk, mv;
    uint64_t qc = (uint64_t)H * HD, kc = (uint64_t)KVH * HD;
    if (tma_map_bf16(&mq, q, qc, T, B, qc, qc * T, 64) || tma_map_bf16(&mk, k, kc, pos0 + T, B, kc, kc * kv_rows, BN) ||
        tma_map_bf16(&mv, v, kc, pos0 + T, B, kc, kc * kv_rows, BN))
        return -1;
    size_t smem = (size_t)64 * NC * HD * 2 + (size_t)2 * ST * BN * HD * 2 + 1024;
    static thread_local size_t smem_set = 48 << 10; /* per thread = per device (attributes are per device), per instance */
    if (smem > smem_set) {
        cudaFuncSetAttribute(fa_fwd_ws_k<HD, NC, BN, ST>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        smem_set = smem;
    }
    int nqt = (T + 64 * NC - 1) / (64 * NC);
    fa_fwd_ws_k<HD, NC, BN, ST><<<dim3(nqt, H, B), (NC + 1) * 128, smem, av_cuda_stream()>>>(mq, mk, mv, out, lse, out16, T, pos0, H, KVH,
                                                                                                    1.4426950409f / sqrtf((float)HD));
    return 0;
}

/* Whether the current device runs the sm_90a kernels of this build (an sm_90 device, and the kernel's
 * code compiled for it rather than JIT-compiled from an older PTX: that pass has an empty body). */
static int fa_wg_available(void) {
    static thread_local int avail = -1; /* per thread = per device */
    if (avail < 0) {
        int dev = 0, major = 0;
        cudaFuncAttributes fa;
        avail = cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                major == 9 && tma_encoder() && cudaFuncGetAttributes(&fa, fa_fwd_ws_k<64, FA_WS_NC(64), FA_WS_BN, FA_WS_ST>) == cudaSuccess && fa.ptxVersion >= 90;
        cudaGetLastError();
    }
    return avail;
}

extern "C" int av_cuda_flash_wgmma_ok(void) { return fa_wg_available(); }

extern "C" int av_cuda_flash_fwd_wgmma(float *out, float *lse, const uint16_t *q16, const uint16_t *kb, const uint16_t *vb, int B, int T, int kv_rows,
                                       int pos0, int H, int KVH, int hd, uint16_t *out16) {
    if ((hd != 64 && hd != 128) || !fa_wg_available()) return -1;
    if (B <= 0 || T <= 0) return 0;
    int rc = hd == 64 ? fa_ws_launch<64>(out, lse, q16, kb, vb, B, T, kv_rows, pos0, H, KVH, out16)
                      : fa_ws_launch<128>(out, lse, q16, kb, vb, B, T, kv_rows, pos0, H, KVH, out16);
    AV_CU_LAUNCHED("flash attention (wgmma)");
    return rc;
}
