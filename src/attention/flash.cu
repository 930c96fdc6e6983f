/* CUDA flash attention forward for prefill (the twin of flash.c); on Hopper flash_wgmma.cu's kernel runs
 * instead (for the f32 entry after converting K, V and Q to bf16). Here: bf16 tensor cores (mma.sync
 * m16n8k16, f32 accumulate) with an online softmax in f32 registers. K and V are first converted to
 * bf16 once per call (hd 64: in their own layout; hd 128: K per KV head, V transposed; S' = S rounded up
 * to the key tile, zero padded); Q is converted from f32 while loading its fragments. One block per
 * (query tile of 16 * warps rows, head, sequence: training runs B sequences in one launch), key
 * tiles of 64 double-buffered in shared memory through cp.async; tiles past the causal limit are
 * skipped (per block and per warp). The backward for training is flash_bwd.cu. */
#include "attention/flash_common.cuh"
extern "C" {
#include "backend/cuda.h"
#include "attention/attention.h"
}
#include "attention/flash_wgmma.h"

/* Head dim 64's layout (FLAT): kb[b][s][c] = k[b * seq_rows + s][c], vb likewise, c < KVH * hd (the layout of the input, rounded
 * to bf16); zeros for S <= s < Sp. Eight values a thread: two 16-byte loads, one 16-byte store each. */
__global__ void fa_convert_kv_k(__nv_bfloat16 *kb, __nv_bfloat16 *vb, const float *k, const float *v, int S, int Sp, int C, int seq_rows,
                                size_t n8) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n8) return;
    size_t e = i * 8, row = e / C, col = e % C, b = row / Sp, s = row % Sp;
    uint4 ko = make_uint4(0u, 0u, 0u, 0u), vo = ko;
    if (s < (size_t)S) {
        size_t src = (b * seq_rows + s) * C + col;
        const float4 *k4 = reinterpret_cast<const float4 *>(k + src), *v4 = reinterpret_cast<const float4 *>(v + src);
        float4 k0 = __ldcs(k4), k1 = __ldcs(k4 + 1), v0 = __ldcs(v4), v1 = __ldcs(v4 + 1);
        ko = make_uint4(pack_bf16(k0.x, k0.y), pack_bf16(k0.z, k0.w), pack_bf16(k1.x, k1.y), pack_bf16(k1.z, k1.w));
        vo = make_uint4(pack_bf16(v0.x, v0.y), pack_bf16(v0.z, v0.w), pack_bf16(v1.x, v1.y), pack_bf16(v1.z, v1.w));
    }
    reinterpret_cast<uint4 *>(kb)[i] = ko;
    reinterpret_cast<uint4 *>(vb)[i] = vo;
}

/* q rounded to bf16 (the Hopper forward reads bf16 q; the kernels round f32 q the same way on their own) */
__global__ void fa_convert_q_k(__nv_bfloat16 *qb, const float *q, size_t n8) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n8) return;
    const float4 *q4 = reinterpret_cast<const float4 *>(q) + 2 * i;
    float4 a = __ldcs(q4), b = __ldcs(q4 + 1);
    reinterpret_cast<uint4 *>(qb)[i] = make_uint4(pack_bf16(a.x, a.y), pack_bf16(a.z, a.w), pack_bf16(b.x, b.y), pack_bf16(b.z, b.w));
}

/* Head dim 128's layout: kb[b][kh][s][d] = k[b][s][kh*hd + d]; vt[b][kh][d][s] = v[b][s][kh*hd + d]; zeros for S <= s < Sp.
 * Block (32, 8) over a 32-key x 32-dim tile of one (sequence, KV head) (blockIdx.z = b * KVH + kh),
 * transposed through smem; sequence b's keys start at row b * seq_rows. */
__global__ void fa_convert_kvt_k(__nv_bfloat16 *kb, __nv_bfloat16 *vt, const float *k, const float *v, int S, int Sp, int KVH, int hd,
                                int seq_rows) {
    __shared__ float tile[32][33];
    int kh = blockIdx.z % KVH, b = blockIdx.z / KVH, s0 = blockIdx.x * 32, d0 = blockIdx.y * 32;
    size_t ks = (size_t)KVH * hd;
    k += (size_t)b * seq_rows * ks;
    v += (size_t)b * seq_rows * ks;
    kb += (size_t)b * KVH * Sp * hd;
    vt += (size_t)b * KVH * Sp * hd;
    for (int i = threadIdx.y; i < 32; i += 8) {
        int s = s0 + i, d = d0 + threadIdx.x;
        float kv = 0.0f, vv = 0.0f;
        if (s < S && d < hd) {
            kv = k[(size_t)s * ks + (size_t)kh * hd + d];
            vv = v[(size_t)s * ks + (size_t)kh * hd + d];
        }
        if (s < Sp && d < hd) kb[((size_t)kh * Sp + s) * hd + d] = __float2bfloat16_rn(kv);
        tile[i][threadIdx.x] = vv;
    }
    __syncthreads();
    for (int i = threadIdx.y; i < 32; i += 8) {
        int d = d0 + i, s = s0 + threadIdx.x;
        if (d < hd && s < Sp) vt[((size_t)kh * hd + d) * Sp + s] = __float2bfloat16_rn(tile[threadIdx.x][i]);
    }
}

/* MT m tiles of 16 query rows per warp (each K / V fragment feeds MT mmas); K and V fragments by
 * ldmatrix.x4 (two k steps of one 8-wide n tile per load). FLAT: K and V tiles as they lie, [key][dim]
 * (V's fragments by ldmatrix .trans); else K per KV head and V transposed, [dim][key].
 * B16: q16 (bf16, unscaled) instead of q, the scores scaled in the softmax's FFMA (the scale folded
 * into the exponent, so S = Q K^T of the stored bf16 values, as the bf16 backward recomputes it);
 * FLAT tiles read straight from the caller's [b * Sp + s][KVH * hd] rows (Sp = T), keys past T
 * zero-filled; out (f32) may be NULL. */
template <int HD, int WARPS, int MT, int QSM, int FLAT, int B16>
__global__ void __launch_bounds__(WARPS * 32) fa_fwd_k(float *out, float *lse, const float *q, const __nv_bfloat16 *q16, const __nv_bfloat16 *kb,
                                                       const __nv_bfloat16 *vb, int T, int Sp, int pos0, int H, int KVH, float qscale,
                                                       uint16_t *out16) {
    static_assert(!B16 || (FLAT && !QSM), "the bf16 entry reads K / V where they lie and Q into registers (hd 64's shape)");
    constexpr int WR = 16 * MT, BR = WR * WARPS, KS = HD + FA_PAD, VS = FA_BC + FA_PAD;
    constexpr int VT = FLAT ? FA_BC * KS : HD * VS; /* a V tile in shared memory */
    extern __shared__ __align__(16) unsigned char fa_smem[];
    __nv_bfloat16 *Ks = reinterpret_cast<__nv_bfloat16 *>(fa_smem);  /* [2][FA_BC][KS] */
    __nv_bfloat16 *Vs = Ks + 2 * FA_BC * KS;                          /* [2][FA_BC][KS], or V^T [2][HD][VS] */
    __nv_bfloat16 *Qs = Vs + 2 * VT;                                  /* QSM: [BR][KS], scaled bf16 */
    int nqt = gridDim.x, qt = nqt - 1 - blockIdx.x;                   /* heaviest (last) query tiles first */
    int h = blockIdx.y, kh = h / (H / KVH), b = blockIdx.z; /* sequence b: its rows, its keys */
    if constexpr (B16) q16 += (size_t)b * T * H * HD;
    else q += (size_t)b * T * H * HD;
    if (!B16 || out) out += (size_t)b * T * H * HD;
    if (lse) lse += (size_t)b * H * T;
    if (out16) out16 += (size_t)b * T * H * HD;
    const unsigned kst = (unsigned)KVH * HD; /* FLAT: a key row of kb / vb */
    if constexpr (FLAT) { /* the same offset; written per layout, as measured (one form changes hd 64's code) */
        kb += (size_t)b * Sp * kst;
        vb += (size_t)b * Sp * kst;
    } else {
        kb += (size_t)b * KVH * Sp * HD;
        vb += (size_t)b * KVH * Sp * HD;
    }
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    int t0 = qt * BR, tw = t0 + warp * WR;                            /* first row of the block / the warp */
    int kend = pos0 + min(t0 + BR, T);                                /* keys the block's last row sees */
    int ntiles = (kend + FA_BC - 1) / FA_BC;
    const __nv_bfloat16 *Kg = kb + (FLAT ? (size_t)kh * HD : (size_t)kh * Sp * HD), *Vg = vb + (FLAT ? (size_t)kh * HD : (size_t)kh * HD * Sp);

    auto load_tile = [&](int j, int buf) {
        __nv_bfloat16 *ks_ = Ks + buf * FA_BC * KS, *vs_ = Vs + buf * VT;
        if constexpr (!FLAT) {
            const __nv_bfloat16 *kg = Kg + (size_t)j * FA_BC * HD;
            for (int i = threadIdx.x; i < FA_BC * HD / 8; i += WARPS * 32) {
                int r = i / (HD / 8), cc = (i % (HD / 8)) * 8;
                cp_async16(ks_ + r * KS + cc, kg + (size_t)r * HD + cc);
            }
            for (int i = threadIdx.x; i < HD * FA_BC / 8; i += WARPS * 32) {
                int r = i / (FA_BC / 8), cc = (i % (FA_BC / 8)) * 8;
                cp_async16(vs_ + r * VS + cc, Vg + (size_t)r * Sp + (size_t)j * FA_BC + cc);
            }
        } else { /* thread: column cc of rows r0, r0 + RS, ..; 32-bit offsets within the sequence (Sp * kst < 2^31) */
            constexpr int RS = WARPS * 32 / (HD / 8);
            int r0 = threadIdx.x / (HD / 8), cc = (threadIdx.x % (HD / 8)) * 8;
            unsigned off = (unsigned)(j * FA_BC + r0) * kst + cc;
#pragma unroll
            for (int t = 0; t < FA_BC / RS; t++, off += RS * kst) {
                if constexpr (B16) { /* the caller's rows: none past key Sp - 1 (zeros; any valid address) */
                    bool ok = j * FA_BC + r0 + t * RS < Sp;
                    cp_async16_zfill(ks_ + (r0 + t * RS) * KS + cc, Kg + (ok ? off : cc), ok);
                    cp_async16_zfill(vs_ + (r0 + t * RS) * KS + cc, Vg + (ok ? off : cc), ok);
                } else {
                    cp_async16(ks_ + (r0 + t * RS) * KS + cc, Kg + off);
                    cp_async16(vs_ + (r0 + t * RS) * KS + cc, Vg + off);
                }
            }
        }
        cp_async_commit();
    };
    load_tile(0, 0);

    /* Q fragments (A operand, rows tw + 16 mt + g and + 8), scaled by 1/sqrt(hd) * log2(e) */
    uint32_t qf[QSM ? 1 : MT][QSM ? 1 : HD / 16][4];
    size_t qs = (size_t)H * HD;
    if constexpr (QSM) { /* the block's Q rows, scaled and rounded to bf16, into shared memory */
        for (int i = threadIdx.x; i < BR * HD / 4; i += WARPS * 32) {
            int r = i / (HD / 4), d = (i % (HD / 4)) * 4, t = t0 + r;
            float4 v = t < T ? *reinterpret_cast<const float4 *>(q + (size_t)t * qs + (size_t)h * HD + d) : make_float4(0.f, 0.f, 0.f, 0.f);
            uint2 pk = make_uint2(pack_bf16(v.x * qscale, v.y * qscale), pack_bf16(v.z * qscale, v.w * qscale));
            *reinterpret_cast<uint2 *>(Qs + r * KS + d) = pk;
        }
        __syncthreads();
    }
#pragma unroll
    for (int mt = 0; mt < (QSM ? 0 : MT); mt++) {
        int r0 = tw + 16 * mt + g, r1 = r0 + 8;
        if constexpr (B16) {
            const __nv_bfloat16 *q0 = q16 + (size_t)r0 * qs + (size_t)h * HD, *q1 = q16 + (size_t)r1 * qs + (size_t)h * HD;
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                int d = kk * 16 + 2 * c;
                qf[QSM ? 0 : mt][QSM ? 0 : kk][0] = r0 < T ? *reinterpret_cast<const uint32_t *>(q0 + d) : 0u;
                qf[QSM ? 0 : mt][QSM ? 0 : kk][1] = r1 < T ? *reinterpret_cast<const uint32_t *>(q1 + d) : 0u;
                qf[QSM ? 0 : mt][QSM ? 0 : kk][2] = r0 < T ? *reinterpret_cast<const uint32_t *>(q0 + d + 8) : 0u;
                qf[QSM ? 0 : mt][QSM ? 0 : kk][3] = r1 < T ? *reinterpret_cast<const uint32_t *>(q1 + d + 8) : 0u;
            }
            continue;
        }
        const float *q0 = q + (size_t)r0 * qs + (size_t)h * HD, *q1 = q + (size_t)r1 * qs + (size_t)h * HD;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            int d = kk * 16 + 2 * c;
            float2 a = r0 < T ? *reinterpret_cast<const float2 *>(q0 + d) : make_float2(0.f, 0.f);
            float2 bb = r1 < T ? *reinterpret_cast<const float2 *>(q1 + d) : make_float2(0.f, 0.f);
            float2 a8 = r0 < T ? *reinterpret_cast<const float2 *>(q0 + d + 8) : make_float2(0.f, 0.f);
            float2 b8 = r1 < T ? *reinterpret_cast<const float2 *>(q1 + d + 8) : make_float2(0.f, 0.f);
            qf[QSM ? 0 : mt][QSM ? 0 : kk][0] = pack_bf16(a.x * qscale, a.y * qscale);
            qf[QSM ? 0 : mt][QSM ? 0 : kk][1] = pack_bf16(bb.x * qscale, bb.y * qscale);
            qf[QSM ? 0 : mt][QSM ? 0 : kk][2] = pack_bf16(a8.x * qscale, a8.y * qscale);
            qf[QSM ? 0 : mt][QSM ? 0 : kk][3] = pack_bf16(b8.x * qscale, b8.y * qscale);
        }
    }
    float o[MT][HD / 8][4];
    float m0[MT], m1[MT], l0[MT], l1[MT];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int n = 0; n < HD / 8; n++) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.0f;
        m0[mt] = m1[mt] = -INFINITY;
        l0[mt] = l1[mt] = 0.0f;
    }
    int wlast = pos0 + min(tw + WR - 1, T - 1);         /* last key any row of this warp sees */
    int lrow = lane & 7, lmat = lane >> 3;              /* ldmatrix: the row / matrix this lane addresses */

    for (int j = 0; j < ntiles; j++) {
        int buf = j & 1, s0 = j * FA_BC;
        cp_async_wait_all();
        __syncthreads();
        if (j + 1 < ntiles) load_tile(j + 1, buf ^ 1);
        const __nv_bfloat16 *ks_ = Ks + buf * FA_BC * KS, *vs_ = Vs + buf * VT;
        if (s0 > wlast) continue;                        /* the whole tile is masked for this warp */
        float sc[MT][FA_BC / 8][4];
#pragma unroll
        for (int n = 0; n < FA_BC / 8; n++)
#pragma unroll
            for (int mt = 0; mt < MT; mt++) sc[mt][n][0] = sc[mt][n][1] = sc[mt][n][2] = sc[mt][n][3] = 0.0f;
#pragma unroll
        for (int k2 = 0; k2 < HD / 32; k2++) {
            uint32_t qa[MT][2][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    if constexpr (QSM) /* rows 16 mt + (lmat & 1) * 8 + lrow, dims 16 (2 k2 + e) + (lmat >> 1) * 8 */
                        ldsm_x4(qa[mt][e], Qs + (warp * WR + 16 * mt + (lmat & 1) * 8 + lrow) * KS + (2 * k2 + e) * 16 + (lmat >> 1) * 8);
                    else
#pragma unroll
                        for (int i = 0; i < 4; i++) qa[mt][e][i] = qf[QSM ? 0 : mt][QSM ? 0 : 2 * k2 + e][i];
                }
#pragma unroll
            for (int n = 0; n < FA_BC / 8; n++) { /* keys n*8.., dims 32 k2 + 8 lmat: b0 b1 of k steps 2 k2, 2 k2 + 1 */
                uint32_t bf[4];
                ldsm_x4(bf, ks_ + (n * 8 + lrow) * KS + k2 * 32 + lmat * 8);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma_bf16(sc[mt][n], qa[mt][0], bf[0], bf[1]);
                    mma_bf16(sc[mt][n], qa[mt][1], bf[2], bf[3]);
                }
            }
        }
        uint32_t pa[MT][FA_BC / 16][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            int lim0 = pos0 + tw + 16 * mt + g, lim1 = lim0 + 8; /* last visible key of the thread's two rows */
            if (s0 + FA_BC - 1 > pos0 + tw + 16 * mt) { /* the causal edge crosses this tile */
#pragma unroll
                for (int n = 0; n < FA_BC / 8; n++) {
                    int s = s0 + n * 8 + 2 * c;
                    if (s > lim0) sc[mt][n][0] = -INFINITY;
                    if (s + 1 > lim0) sc[mt][n][1] = -INFINITY;
                    if (s > lim1) sc[mt][n][2] = -INFINITY;
                    if (s + 1 > lim1) sc[mt][n][3] = -INFINITY;
                }
            }
            float mx0 = m0[mt], mx1 = m1[mt];
#pragma unroll
            for (int n = 0; n < FA_BC / 8; n++) {
                mx0 = fmaxf(mx0, fmaxf(sc[mt][n][0], sc[mt][n][1]));
                mx1 = fmaxf(mx1, fmaxf(sc[mt][n][2], sc[mt][n][3]));
            }
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
            /* a padding row (t >= T) or a row with no visible key yet keeps -inf: use 0 as the base */
            float b0 = mx0 == -INFINITY ? 0.0f : mx0, b1 = mx1 == -INFINITY ? 0.0f : mx1;
            float corr0, corr1;
            if constexpr (B16) { /* m raw; b and every exponent scaled (one FFMA a score) */
                b0 *= qscale, b1 *= qscale;
                corr0 = fa_exp2(fmaf(m0[mt], qscale, -b0)), corr1 = fa_exp2(fmaf(m1[mt], qscale, -b1));
            } else {
                corr0 = fa_exp2(m0[mt] - b0), corr1 = fa_exp2(m1[mt] - b1);
            }
            m0[mt] = mx0;
            m1[mt] = mx1;
            float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
            for (int n = 0; n < FA_BC / 8; n++) {
                float p0, p1, p2, p3;
                if constexpr (B16) {
                    p0 = fa_exp2(fmaf(sc[mt][n][0], qscale, -b0)), p1 = fa_exp2(fmaf(sc[mt][n][1], qscale, -b0));
                    p2 = fa_exp2(fmaf(sc[mt][n][2], qscale, -b1)), p3 = fa_exp2(fmaf(sc[mt][n][3], qscale, -b1));
                } else {
                    p0 = fa_exp2(sc[mt][n][0] - b0), p1 = fa_exp2(sc[mt][n][1] - b0), p2 = fa_exp2(sc[mt][n][2] - b1), p3 = fa_exp2(sc[mt][n][3] - b1);
                }
                sum0 += p0 + p1;
                sum1 += p2 + p3;
                pa[mt][n / 2][(n & 1) * 2 + 0] = pack_bf16(p0, p1);
                pa[mt][n / 2][(n & 1) * 2 + 1] = pack_bf16(p2, p3);
            }
            l0[mt] = l0[mt] * corr0 + sum0;
            l1[mt] = l1[mt] * corr1 + sum1;
#pragma unroll
            for (int n = 0; n < HD / 8; n++) {
                o[mt][n][0] *= corr0;
                o[mt][n][1] *= corr0;
                o[mt][n][2] *= corr1;
                o[mt][n][3] *= corr1;
            }
        }
#pragma unroll
        for (int n = 0; n < HD / 8; n++) {
#pragma unroll
            for (int k2 = 0; k2 < FA_BC / 32; k2++) {
                uint32_t vf[4];
                if constexpr (FLAT) /* keys 32 k2 + 8 lmat (+ lrow), dims n*8.. of V, transposed */
                    ldsm_x4_t(vf, vs_ + (k2 * 32 + lmat * 8 + lrow) * KS + n * 8);
                else /* dims n*8.., keys 32 k2 + 8 lmat of V^T */
                    ldsm_x4(vf, vs_ + (n * 8 + lrow) * VS + k2 * 32 + lmat * 8);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma_bf16(o[mt][n], pa[mt][2 * k2], vf[0], vf[1]);
                    mma_bf16(o[mt][n], pa[mt][2 * k2 + 1], vf[2], vf[3]);
                }
            }
        }
    }
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        float L0 = l0[mt], L1 = l1[mt];
        L0 += __shfl_xor_sync(0xffffffffu, L0, 1);
        L0 += __shfl_xor_sync(0xffffffffu, L0, 2);
        L1 += __shfl_xor_sync(0xffffffffu, L1, 1);
        L1 += __shfl_xor_sync(0xffffffffu, L1, 2);
        int r0 = tw + 16 * mt + g, r1 = r0 + 8;
        float i0 = 1.0f / L0, i1 = 1.0f / L1;
#pragma unroll
        for (int n = 0; n < HD / 8; n++) {
            int d = n * 8 + 2 * c;
            if ((!B16 || out) && r0 < T)
                *reinterpret_cast<float2 *>(out + (size_t)r0 * qs + (size_t)h * HD + d) = make_float2(o[mt][n][0] * i0, o[mt][n][1] * i0);
            if ((!B16 || out) && r1 < T)
                *reinterpret_cast<float2 *>(out + (size_t)r1 * qs + (size_t)h * HD + d) = make_float2(o[mt][n][2] * i1, o[mt][n][3] * i1);
            if (out16 && r0 < T) /* the o product's bf16 input, rounded from the same f32 values */
                *reinterpret_cast<__nv_bfloat162 *>(out16 + (size_t)r0 * qs + (size_t)h * HD + d) =
                    __floats2bfloat162_rn(o[mt][n][0] * i0, o[mt][n][1] * i0);
            if (out16 && r1 < T)
                *reinterpret_cast<__nv_bfloat162 *>(out16 + (size_t)r1 * qs + (size_t)h * HD + d) =
                    __floats2bfloat162_rn(o[mt][n][2] * i1, o[mt][n][3] * i1);
        }
        if (lse && c == 0) {
            const float ln2 = 0.69314718056f;
            float ms0 = B16 ? m0[mt] * qscale : m0[mt], ms1 = B16 ? m1[mt] * qscale : m1[mt];
            if (r0 < T) lse[(size_t)h * T + r0] = (ms0 + log2f(L0)) * ln2;
            if (r1 < T) lse[(size_t)h * T + r1] = (ms1 + log2f(L1)) * ln2;
        }
    }
}

/* Warps per forward block and 16-row m tiles per warp: 4 x 2 for both head dims (each K / V fragment
 * feeds two mmas, a K / V tile serves 128 query rows). hd 128 keeps its Q fragments in shared memory
 * (QSM; in registers the kernel would pass 255): 8 warps x 1 m tile before, 8192 tokens 226 -> 260
 * TFLOP/s on an H100 (bench/NOTES-attention.md). hd 64 keeps them in registers (from shared memory, or
 * in 32-key softmax steps: 5-11% slower). */
#define FA_WARPS(HD) 4
#define FA_MT(HD) 2
#define FA_QSM(HD) ((HD) == 128)
/* K / V layout: as they lie for hd 64 (a flat 16-byte cast instead of a transposing kernel: 8192 tokens
 * 257 -> 290 TFLOP/s on an H100); hd 128 keeps V transposed (as they lie it spills: 260 -> 213) */
#define FA_FLAT(HD) ((HD) == 64)

template <int HD, int WARPS, int B16>
static void fa_launch(float *out, float *lse, const float *q, const __nv_bfloat16 *q16, const __nv_bfloat16 *kb, const __nv_bfloat16 *vb,
                      int B, int T, int Sp, int pos0, int H, int KVH, float qscale, uint16_t *out16) {
    size_t smem = ((size_t)2 * (FA_BC * (HD + FA_PAD) + (FA_FLAT(HD) ? FA_BC * (HD + FA_PAD) : HD * (FA_BC + FA_PAD))) +
                   (FA_QSM(HD) ? (size_t)16 * FA_MT(HD) * WARPS * (HD + FA_PAD) : 0)) * sizeof(__nv_bfloat16);
    static thread_local size_t smem_set = 48 << 10; /* per thread = per device (attributes are per device), per instance */
    if (smem > smem_set) {
        cudaFuncSetAttribute(fa_fwd_k<HD, WARPS, FA_MT(HD), FA_QSM(HD), FA_FLAT(HD), B16>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        smem_set = smem;
    }
    int nqt = (T + 16 * FA_MT(HD) * WARPS - 1) / (16 * FA_MT(HD) * WARPS);
    fa_fwd_k<HD, WARPS, FA_MT(HD), FA_QSM(HD), FA_FLAT(HD), B16>
        <<<dim3(nqt, H, B), WARPS * 32, smem, av_cuda_stream()>>>(out, lse, q, q16, kb, vb, T, Sp, pos0, H, KVH, qscale, out16);
}

/* B sequences of T rows (sequence b's keys at rows b * seq_rows, its first query at position pos0). */
static void fa_forward(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T, int seq_rows, int pos0,
                       int H, int KVH, int hd, uint16_t *out16) {
    int Sk = pos0 + T, Sp = (Sk + FA_BC - 1) / FA_BC * FA_BC; /* only keys 0..pos0+T-1 are ever seen */
    size_t n = (size_t)B * KVH * Sp * hd, nq = (size_t)B * T * H * hd;
    int hopper = av_cuda_flash_fwd_wgmma(NULL, NULL, NULL, NULL, NULL, 0, 0, 0, 0, H, KVH, hd, NULL) == 0; /* flash_wgmma.cu */
    __nv_bfloat16 *kb = (__nv_bfloat16 *)av_cuda_scratch(AV_SCR_FLASH, (2 * n + (hopper ? nq : 0)) * sizeof(__nv_bfloat16));
    if (!kb) return;
    __nv_bfloat16 *vb = kb + n, *qb = vb + n;
    float qscale = 1.4426950409f / sqrtf((float)hd);
    if (hopper) {
        fa_convert_kv_k<<<av_cdiv(n / 8, 256), 256, 0, av_cuda_stream()>>>(kb, vb, k, v, Sk, Sp, KVH * hd, seq_rows, n / 8);
        fa_convert_q_k<<<av_cdiv(nq / 8, 256), 256, 0, av_cuda_stream()>>>(qb, q, nq / 8);
        AV_CU_LAUNCHED("flash attention convert");
        if (av_cuda_flash_fwd_wgmma(out, lse, (const uint16_t *)qb, (const uint16_t *)kb, (const uint16_t *)vb, B, T, Sp, pos0, H, KVH, hd, out16) == 0)
            return;
    }
    if (FA_FLAT(hd)) fa_convert_kv_k<<<av_cdiv(n / 8, 256), 256, 0, av_cuda_stream()>>>(kb, vb, k, v, Sk, Sp, KVH * hd, seq_rows, n / 8);
    else fa_convert_kvt_k<<<dim3(Sp / 32, av_cdiv(hd, 32), B * KVH), dim3(32, 8), 0, av_cuda_stream()>>>(kb, vb, k, v, Sk, Sp, KVH, hd, seq_rows);
    AV_CU_LAUNCHED("flash attention convert");
    if (hd == 64) fa_launch<64, FA_WARPS(64), 0>(out, lse, q, NULL, kb, vb, B, T, Sp, pos0, H, KVH, qscale, out16);
    else fa_launch<128, FA_WARPS(128), 0>(out, lse, q, NULL, kb, vb, B, T, Sp, pos0, H, KVH, qscale, out16);
    AV_CU_LAUNCHED("flash attention");
}

extern "C" void av_cuda_flash_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, int T, int S,
                                                int pos0, int H, int KVH, int hd) {
    if (T <= 0) return;
    if (hd != 64 && hd != 128) { /* no kernel for this head size: the standard attention (no lse) */
        av_cuda_attention_forward_mode(out, NULL, q, k, v, T, S, pos0, H, KVH, hd, 0);
        if (lse) av_cuda_note(cudaErrorInvalidValue, "flash attention: lse needs head_dim 64 or 128");
        return;
    }
    fa_forward(out, lse, q, k, v, 1, T, S, pos0, H, KVH, hd, NULL);
}

/* Training forward: every sequence and head in one launch (after one conversion of all K/V). */
extern "C" int av_cuda_flash_attention_forward_batch(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T,
                                                     int H, int KVH, int hd, uint16_t *out16) {
    if (hd != 64 && hd != 128) return -1;
    if (B > 0 && T > 0) fa_forward(out, lse, q, k, v, B, T, T, 0, H, KVH, hd, out16);
    return 0;
}

/* The same from bf16 q, k, v (the training layout, [B*T, H*hd] and [B*T, KVH*hd]; q unscaled, as the
 * bf16 backward reads them), K and V read where they lie: no conversion. Head dim 64, and 128 on Hopper
 * (flash_wgmma.cu): this file's hd-128 kernel (V transposed, Q in shared memory, 255 registers) measured
 * slower from bf16 than converting from f32 (8192 tokens 259 -> 236 TFLOP/s on an H100), so elsewhere its
 * callers keep the f32 entry. out (f32) or out16 may be NULL. */
extern "C" int av_cuda_flash_attention_forward_bf16(float *out, float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v, int B,
                                                    int T, int H, int KVH, int hd, uint16_t *out16) {
    if (hd != 64 && !(hd == 128 && av_cuda_flash_wgmma_ok())) return -1;
    if (B <= 0 || T <= 0) return 0;
    if (av_cuda_flash_fwd_wgmma(out, lse, q, k, v, B, T, T, 0, H, KVH, hd, out16) == 0) return 0; /* Hopper: flash_wgmma.cu */
    if (hd != 64) { /* q, k or v not 16-byte aligned for the Hopper kernel, and no other kernel takes hd 128 from bf16 */
        av_cuda_note(cudaErrorInvalidValue, "flash attention: bf16 q, k, v must be 16-byte aligned");
        return -1;
    }
    fa_launch<64, FA_WARPS(64), 1>(out, lse, NULL, (const __nv_bfloat16 *)q, (const __nv_bfloat16 *)k, (const __nv_bfloat16 *)v, B, T, T, 0, H,
                                   KVH, 1.4426950409f / sqrtf((float)hd), out16);
    AV_CU_LAUNCHED("flash attention");
    return 0;
}
