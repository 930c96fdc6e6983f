/* Flash attention forward for Hopper (sm_90a): the products on warpgroup tensor cores (wgmma), the
 * online softmax in f32 registers as flash.cu's kernel does it. One block per (query tile of 64 * NWG
 * rows, head, sequence), NWG warpgroups of 64 query rows each; K and V tiles of BN keys double-buffered
 * in shared memory (cp.async, 128-byte swizzle, read where they lie: [sequence rows][KVH * hd] bf16;
 * Q in f32 is rounded on its way in, so the f32 entry only converts K and V).
 * S = Q K^T with Q and K from shared memory; O += P V with P from registers (the S accumulators rounded
 * to bf16 are already wgmma's A fragment) and V by a transposed (MN-major) descriptor.
 * Scores are raw Q K^T of the bf16 values; the scale goes into the exponent's FFMA (as the bf16
 * backward recomputes them). flash.cu calls it on sm_90 devices; elsewhere its mma.sync kernel runs. */
#include "attention/flash_common.cuh"
#include "attention/wgmma.cuh"
extern "C" {
#include "backend/cuda.h"
}
#include "attention/flash_wgmma.h"


/* q: QF32 ? f32 (rounded to bf16 on the way into shared memory) : bf16, [B * T][H * HD], unscaled.
 * kb, vb: [B][kv_rows][KVH * HD] bf16; keys pos0 + T and past are read as zeros. Query row t of a
 * sequence sees keys 0..pos0 + t. out (f32), out16 (bf16) and lse may each be NULL. */
template <int HD, int BN, int NWG, int QF32>
__global__ void __launch_bounds__(NWG * 128, 1) fa_fwd_wg_k(float *out, float *lse, const float *q32, const __nv_bfloat16 *q16,
                                                            const __nv_bfloat16 *kb, const __nv_bfloat16 *vb, int T, int kv_rows, int pos0,
                                                            int H, int KVH, float qscale, uint16_t *out16) {
#if AV_WGMMA
    static_assert(BN == 64, "S = Q K^T is one m64n64 product per k step");
    constexpr int BM = 64 * NWG, NT = NWG * 128, CH = HD / 8; /* 16-byte chunks a row */
    constexpr uint32_t QBYTES = BM * HD * 2, KBYTES = BN * HD * 2;
    extern __shared__ __align__(16) unsigned char fa_wg_smem[];
    uint32_t raw = (uint32_t)__cvta_generic_to_shared(fa_wg_smem), sbase = (raw + 1023u) & ~1023u; /* swizzle atoms: 1024-aligned */
    unsigned char *gbase = fa_wg_smem + (sbase - raw);
    const uint32_t sQ = sbase, sK = sbase + QBYTES, sV = sK + 2 * KBYTES; /* Q [HD/64][BM][64], K and V [2][HD/64][BN][64] */
    int qt = gridDim.x - 1 - blockIdx.x; /* heaviest (last) query tiles first */
    int h = blockIdx.y, kh = h / (H / KVH), b = blockIdx.z;
    int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, c = lane & 3;
    const size_t qs = (size_t)H * HD;
    const unsigned kst = (unsigned)KVH * HD;
    int t0 = qt * BM, tw = t0 + 64 * wg, nkeys = pos0 + T;
    int kend = pos0 + min(t0 + BM, T); /* keys the block's last row sees */
    int ntiles = (kend + BN - 1) / BN;
    const __nv_bfloat16 *Kg = kb + (size_t)b * kv_rows * kst + (size_t)kh * HD, *Vg = vb + (size_t)b * kv_rows * kst + (size_t)kh * HD;

    auto load_kv = [&](int j, int buf) {
#pragma unroll
        for (int x = tid; x < BN * CH; x += NT) {
            int r = x / CH, cc = x % CH, key = j * BN + r;
            bool ok = key < nkeys;
            uint32_t off = (cc >> 3) * (BN * 128) + swz128(r, cc & 7);
            unsigned go = ok ? (unsigned)key * kst + cc * 8 : 0u;
            cp_async16_zfill_s(sK + buf * KBYTES + off, Kg + go, ok);
            cp_async16_zfill_s(sV + buf * KBYTES + off, Vg + go, ok);
        }
        cp_async_commit();
    };
    /* the block's Q rows */
#pragma unroll
    for (int x = tid; x < BM * CH; x += NT) {
        int r = x / CH, cc = x % CH, t = t0 + r;
        bool ok = t < T;
        uint32_t off = (cc >> 3) * (BM * 128) + swz128(r, cc & 7);
        size_t go = ok ? ((size_t)b * T + t) * qs + (size_t)h * HD + cc * 8 : 0;
        if constexpr (QF32) {
            uint4 pk = make_uint4(0u, 0u, 0u, 0u);
            if (ok) {
                float4 v0 = *reinterpret_cast<const float4 *>(q32 + go), v1 = *reinterpret_cast<const float4 *>(q32 + go + 4);
                pk = make_uint4(pack_bf16(v0.x, v0.y), pack_bf16(v0.z, v0.w), pack_bf16(v1.x, v1.y), pack_bf16(v1.z, v1.w));
            }
            *reinterpret_cast<uint4 *>(gbase + off) = pk;
        } else {
            cp_async16_zfill_s(sQ + off, q16 + go, ok);
        }
    }
    load_kv(0, 0);

    float o[HD / 2];
#pragma unroll
    for (int i = 0; i < HD / 2; i++) o[i] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    int r0 = tw + 16 * warp + g, r1 = r0 + 8; /* the thread's two query rows */
    int wlast = pos0 + min(tw + 63, T - 1);   /* last key any row of this warpgroup sees */
    const uint32_t qw = sQ + wg * 64 * 128;   /* this warpgroup's rows in each 64-column half of Q */

    uint32_t pa[BN / 16][4]; /* P of the tile, bf16: the A operand of its P V product */
    auto issue_pv = [&](int vb_) {
        wg_reg_fence(o);
        wg_fence();
#pragma unroll
        for (int kc = 0; kc < BN / 16; kc++) {
            uint64_t dv = wg_desc_mn(sV + vb_ * KBYTES + kc * 2048, BN * 128, 1024);
            if constexpr (HD == 128) wgmma_rs_n128_t(o, pa[kc], dv);
            else wgmma_rs_n64_t(o, pa[kc], dv);
        }
        wg_commit();
    };
    for (int j = 0; j < ntiles; j++) {
        int buf = j & 1, s0 = j * BN;
        cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads();
        if (j + 1 < ntiles) load_kv(j + 1, buf ^ 1);
        if (s0 > wlast) continue; /* the whole tile is masked for this warpgroup */
        float s[BN / 2];
#pragma unroll
        for (int i = 0; i < BN / 2; i++) s[i] = 0.0f;
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            uint64_t da = wg_desc(qw + (kk >> 2) * (BM * 128) + (kk & 3) * 32, 16, 1024);
            uint64_t db = wg_desc(sK + buf * KBYTES + (kk >> 2) * (BN * 128) + (kk & 3) * 32, 16, 1024);
            wgmma_ss_n64(s, da, db, kk > 0);
        }
        wg_commit();
        wg_wait<0>();
        wg_reg_fence(s);

        int lim0 = pos0 + r0, lim1 = lim0 + 8; /* last visible key of the thread's two rows */
        if (s0 + BN - 1 > pos0 + tw) {         /* the causal edge crosses this tile */
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
        /* a padding row (t >= T) or a row with no visible key yet keeps -inf: use 0 as the base */
        float b0 = (mx0 == -INFINITY ? 0.0f : mx0) * qscale, b1 = (mx1 == -INFINITY ? 0.0f : mx1) * qscale;
        float corr0 = fa_exp2(fmaf(m0, qscale, -b0)), corr1 = fa_exp2(fmaf(m1, qscale, -b1));
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
#pragma unroll
        for (int n = 0; n < BN / 8; n++) {
            pa[n / 2][(n & 1) * 2 + 0] = pack_bf16(s[4 * n + 0], s[4 * n + 1]);
            pa[n / 2][(n & 1) * 2 + 1] = pack_bf16(s[4 * n + 2], s[4 * n + 3]);
        }
#pragma unroll
        for (int n = 0; n < HD / 8; n++) {
            o[4 * n + 0] *= corr0;
            o[4 * n + 1] *= corr0;
            o[4 * n + 2] *= corr1;
            o[4 * n + 3] *= corr1;
        }
        issue_pv(buf);
        wg_wait<0>();
        wg_reg_fence(o);
    }
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    float i0 = 1.0f / l0, i1 = 1.0f / l1;
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

/* Keys a tile and warpgroups a block (H100, forward TFLOP/s at 512 / 2048 / 8192 tokens, bench/NOTES-attention.md
 * session 18): hd 64 with 64-key tiles and 2 warpgroups 187 / 287 / 332 (128-key tiles: 137 / 231 / 277; 3 warpgroups
 * of 128-key tiles: 146 / 268 / 331); hd 128 with 64-key tiles and 3 warpgroups 99 / 233 / 346 (2 warpgroups: 94 / 207
 * / 294; 128-key tiles: 95 / 225 / 335). */
#define FA_WG_BN 64
#define FA_WG_NWG(HD) ((HD) == 128 ? 3 : 2)

template <int HD, int BN, int NWG, int QF32>
static void fa_wg_launch(float *out, float *lse, const float *q32, const __nv_bfloat16 *q16, const __nv_bfloat16 *kb, const __nv_bfloat16 *vb,
                         int B, int T, int kv_rows, int pos0, int H, int KVH, uint16_t *out16) {
    size_t smem = (size_t)64 * NWG * HD * 2 + (size_t)4 * BN * HD * 2 + 1024;
    static thread_local size_t smem_set = 48 << 10; /* per thread = per device (attributes are per device), per instance */
    if (smem > smem_set) {
        cudaFuncSetAttribute(fa_fwd_wg_k<HD, BN, NWG, QF32>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        smem_set = smem;
    }
    int nqt = (T + 64 * NWG - 1) / (64 * NWG);
    fa_fwd_wg_k<HD, BN, NWG, QF32><<<dim3(nqt, H, B), NWG * 128, smem, av_cuda_stream()>>>(out, lse, q32, q16, kb, vb, T, kv_rows, pos0, H, KVH,
                                                                                         1.4426950409f / sqrtf((float)HD), out16);
}

/* Whether the current device runs the sm_90a kernels of this build (an sm_90 device, and the kernel's
 * code compiled for it rather than JIT-compiled from an older PTX: that pass has an empty body). */
static int fa_wg_available(void) {
    static thread_local int avail = -1; /* per thread = per device */
    if (avail < 0) {
        int dev = 0, major = 0;
        cudaFuncAttributes fa;
        avail = cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                major == 9 && cudaFuncGetAttributes(&fa, fa_fwd_wg_k<64, FA_WG_BN, FA_WG_NWG(64), 0>) == cudaSuccess && fa.ptxVersion >= 90;
        cudaGetLastError();
    }
    return avail;
}

extern "C" int av_cuda_flash_wgmma_ok(void) { return fa_wg_available(); }

extern "C" int av_cuda_flash_fwd_wgmma(float *out, float *lse, const float *q32, const uint16_t *q16, const uint16_t *kb, const uint16_t *vb, int B,
                                       int T, int kv_rows, int pos0, int H, int KVH, int hd, uint16_t *out16) {
    if ((hd != 64 && hd != 128) || !fa_wg_available()) return -1;
    if (B <= 0 || T <= 0) return 0;
    const __nv_bfloat16 *q = (const __nv_bfloat16 *)q16, *k = (const __nv_bfloat16 *)kb, *v = (const __nv_bfloat16 *)vb;
    if (!q32 && av_cuda_flash_fwd_ws(out, lse, q16, kb, vb, B, T, kv_rows, pos0, H, KVH, hd, out16) == 0) { /* flash_fwd_ws.cu */
        AV_CU_LAUNCHED("flash attention (warp-specialised)");
        return 0;
    }
    if (hd == 64) {
        if (q32) fa_wg_launch<64, FA_WG_BN, FA_WG_NWG(64), 1>(out, lse, q32, q, k, v, B, T, kv_rows, pos0, H, KVH, out16);
        else fa_wg_launch<64, FA_WG_BN, FA_WG_NWG(64), 0>(out, lse, q32, q, k, v, B, T, kv_rows, pos0, H, KVH, out16);
    } else {
        if (q32) fa_wg_launch<128, FA_WG_BN, FA_WG_NWG(128), 1>(out, lse, q32, q, k, v, B, T, kv_rows, pos0, H, KVH, out16);
        else fa_wg_launch<128, FA_WG_BN, FA_WG_NWG(128), 0>(out, lse, q32, q, k, v, B, T, kv_rows, pos0, H, KVH, out16);
    }
    AV_CU_LAUNCHED("flash attention (wgmma)");
    return 0;
}
