/* Split-KV decode attention for long caches (flash decoding): one new query row per sequence against
 * thousands of cached keys. The keys are cut into chunks, one block per (KV head, sequence, chunk)
 * for all query heads of the KV group (each cached row is read once, not once per head), so a single
 * sequence fills every SM; a second kernel merges the chunks' partial softmax results (measured:
 * bench/NOTES-attention.md). A rotating
 * cache (kv_ring.h) as in decode.cu: key index `slot` reads row p = n - 1, index p is the new row.
 *
 * One pass over the chunk: each warp streams its own tiles of keys (K and V rows together) through a
 * cp.async ring of DS_NST stages in shared memory and keeps an online softmax, so loads stay in flight
 * while the warp computes and no block barrier splits the pass into phases. Scores live in the log2
 * domain (q pre-scaled by log2 e) so every exponential is one exp2f. */
#include "attention/flash_common.cuh"
#include "attention/kv_ring.h"
extern "C" {
#include "backend/cuda.h"
}

#define DS_THREADS 256
#define DS_WARPS (DS_THREADS / 32)
/* Caches of at least this many rows take the split kernel; shorter ones the one-block-per-head kernel
 * (decode.cu). */
#ifndef DS_MIN_KEYS
#define DS_MIN_KEYS 512
#endif
#define DS_NST 3 /* cp.async stages per warp: 3 x 8 KB in flight per warp, 1 block per SM */
/* Shorter caches of this many sequences or more: the same kernel, one chunk a sequence, no merge */
#define DS_SHORT_MIN_SEQS 2
#define DS_SHORT_NST 2

/* Per (sequence, head, chunk): the chunk's unnormalised P V row, then its max score (log2 domain) and
 * sum of exp2 (and 2 floats of padding: rows stay 16-byte aligned). */
__host__ __device__ static inline size_t ds_part_floats(int hd) { return (size_t)hd + 4; }

/* Shapes of one warp tile: TK keys of K and V rows (8 KB together for f32 rows of 64 or 128 dims). */
template <int HD> struct ds_shape {
    static constexpr int TK = 1024 / HD; /* keys per warp tile */
    static constexpr int LPK = HD / 8;   /* lanes per key in the score product (8 dims each) */
    static constexpr int KPS = 32 / LPK; /* keys per score step */
    static constexpr int STEPS = TK / KPS;
    static constexpr int H4 = HD / 4;    /* 16-byte pieces per row */
    static constexpr int DPL = HD / 32;  /* dims per lane in P V */
    static constexpr int TILE = 2 * TK * HD;
    /* per warp: the stages, scores [TK][G] and G correction factors (+ padding); reused for the warp's result */
    __host__ __device__ static constexpr int WARP_FLOATS(int G, int NST) {
        return NST * TILE + TK * G + 8 > G * HD + 2 * G ? NST * TILE + TK * G + 8 : G * HD + 2 * G;
    }
};

/* The G head sums a[0..G-1], each spread over the LPK lanes of a key group, reduced so that lane c of
 * the group (c < G) ends with the sum of head bitrev(c): G - 1 shuffles instead of G log2(LPK). */
template <int G, int LPK> static __device__ __forceinline__ float ds_reduce_scatter(float *a, int c) {
#pragma unroll
    for (int h = G / 2, o = 1; h >= 1; h /= 2, o *= 2) {
        bool up = c & o;
#pragma unroll
        for (int k = 0; k < h; k++) {
            float send = up ? a[k] : a[k + h], keep = up ? a[k + h] : a[k];
            a[k] = keep + __shfl_xor_sync(0xffffffffu, send, o);
        }
    }
    float v = a[0];
#pragma unroll
    for (int o = G; o < LPK; o *= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
/* the head lane c of a group holds after ds_reduce_scatter */
template <int G> static __device__ __forceinline__ int ds_head_of(int c) {
    int h = 0;
#pragma unroll
    for (int b = 1, hb = G / 2; hb >= 1; b *= 2, hb /= 2)
        if (c & b) h += hb;
    return h;
}

template <int G, int HD, int NST, bool FINAL>
__global__ void __launch_bounds__(DS_THREADS, 1) attn_dec_split_k(float *part, const float *q, const float *k_new, const float *v_new,
                                                                  float *kc, float *vc, const int32_t *pos, size_t seq_stride, int KVH,
                                                                  float scale, size_t qrow, size_t knrow, int chunk, int keep, int ring) {
    using S = ds_shape<HD>;
    constexpr int TK = S::TK, LPK = S::LPK, KPS = S::KPS, H4 = S::H4, DPL = S::DPL, TILE = S::TILE, WF = S::WARP_FLOATS(G, NST);
    constexpr int NPAIR = (TK * G + 31) / 32;
    extern __shared__ float4 ds_smem4[];
    int kh = blockIdx.x, r = blockIdx.y, nchunks = gridDim.z, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int H = KVH * G;
    size_t ks = (size_t)KVH * HD;
    float *ws = reinterpret_cast<float *>(ds_smem4) + warp * WF, *ps = ws + NST * TILE, *cs = ps + TK * G;
    /* positions change only between steps and cached rows were written by earlier steps (decode.cu):
     * the first stages are issued before the wait, all but the new row, which the q|k|v product writes */
    int sl = av_kv_ring_slot(pos[r], keep, ring), n = av_kv_ring_rows(pos[r], ring), p = n - 1, s0 = blockIdx.z * chunk;
    if (s0 >= n) return; /* the merge reads only the chunks that hold keys */
    int cn = min(n - s0, chunk), ntiles = (cn + TK - 1) / TK;
    int mine = ntiles > warp ? (ntiles - warp + DS_WARPS - 1) / DS_WARPS : 0;
    float *K = kc + r * seq_stride + (size_t)kh * HD, *V = vc + r * seq_stride + (size_t)kh * HD;
    const float *kn = k_new + (size_t)r * knrow + (size_t)kh * HD, *vn = v_new + (size_t)r * knrow + (size_t)kh * HD;
    /* the warp's j-th tile (keys (warp + j DS_WARPS) TK ..) into stage j % NST: lane takes 16-byte piece
     * d4 of rows key0 + u 32/H4 of K and of V */
    auto issue = [&](int j, bool before_wait) {
        float *st = ws + (j % NST) * TILE;
        int i0 = (warp + j * DS_WARPS) * TK, d4 = lane % H4;
#pragma unroll
        for (int u = 0; u < TK * H4 / 32; u++) {
            int key = lane / H4 + u * (32 / H4), i = i0 + key, s = s0 + i;
            bool ok = i < cn;
            if (s == p) { /* the new row: from k_new / v_new, only once they are written */
                if (before_wait) continue;
                cp_async16_zfill(st + key * HD + 4 * d4, kn + 4 * d4, true);
                cp_async16_zfill(st + TK * HD + key * HD + 4 * d4, vn + 4 * d4, true);
                continue;
            }
            size_t off = (size_t)(s == sl ? p : s) * ks + 4 * d4;
            cp_async16_zfill(st + key * HD + 4 * d4, ok ? K + off : kn, ok);
            cp_async16_zfill(st + TK * HD + key * HD + 4 * d4, ok ? V + off : vn, ok);
        }
    };
#pragma unroll
    for (int j = 0; j < NST - 1; j++) {
        if (j < mine) issue(j, true);
        cp_async_commit();
    }
    av_pdl_wait();
    av_pdl_launch();
    int ip = p - s0; /* the new row's index in this chunk, if it is here */
    if (ip >= 0 && ip < cn && (ip / TK) % DS_WARPS == warp && (ip / TK) / DS_WARPS < NST - 1) {
        float *st = ws + ((ip / TK) / DS_WARPS) * TILE;
        int key = ip % TK;
        for (int d4 = lane; d4 < H4; d4 += 32) {
            reinterpret_cast<float4 *>(st + key * HD)[d4] = reinterpret_cast<const float4 *>(kn)[d4];
            reinterpret_cast<float4 *>(st + TK * HD + key * HD)[d4] = reinterpret_cast<const float4 *>(vn)[d4];
        }
    }
    if (s0 + cn == n) /* this chunk holds the new row: into the cache (no block reads that slot's row) */
        for (int d = tid; d < HD; d += DS_THREADS) {
            K[(size_t)sl * ks + d] = kn[d];
            V[(size_t)sl * ks + d] = vn[d];
        }
    /* the lane's dims 4c..4c+3 and HD/2+4c.. of each head's query (conflict-free 16-byte reads of a row) */
    int c = lane % LPK, kw = lane / LPK;
    float qv[G][8];
    const float qscale = scale * 1.4426950408889634f;
#pragma unroll
    for (int g = 0; g < G; g++) {
        const float *qg = q + (size_t)r * qrow + (size_t)(kh * G + g) * HD;
        float4 a = *reinterpret_cast<const float4 *>(qg + 4 * c), b = *reinterpret_cast<const float4 *>(qg + HD / 2 + 4 * c);
        qv[g][0] = a.x * qscale, qv[g][1] = a.y * qscale, qv[g][2] = a.z * qscale, qv[g][3] = a.w * qscale;
        qv[g][4] = b.x * qscale, qv[g][5] = b.y * qscale, qv[g][6] = b.z * qscale, qv[g][7] = b.w * qscale;
    }
    int whead = ds_head_of<G>(c);
    float m_run = -INFINITY, l_run = 0.0f; /* softmax of head lane % G over the warp's keys (l: this lane's share) */
    float acc[G][DPL];
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int e = 0; e < DPL; e++) acc[g][e] = 0.0f;
    for (int j = 0; j < mine; j++) {
        if (j + NST - 1 < mine) issue(j + NST - 1, false);
        cp_async_commit();
        cp_async_wait<NST - 1>();
        __syncwarp();
        const float *Ks = ws + (j % NST) * TILE, *Vs = Ks + TK * HD;
        int i0 = (warp + j * DS_WARPS) * TK;
        /* scores of the tile's keys for the G heads into ps[key][head] (masked past the chunk) */
#pragma unroll
        for (int st = 0; st < S::STEPS; st++) {
            int key = st * KPS + kw;
            float4 x = *reinterpret_cast<const float4 *>(Ks + key * HD + 4 * c), y = *reinterpret_cast<const float4 *>(Ks + key * HD + HD / 2 + 4 * c);
            float a[G];
#pragma unroll
            for (int g = 0; g < G; g++)
                a[g] = x.x * qv[g][0] + x.y * qv[g][1] + x.z * qv[g][2] + x.w * qv[g][3] + y.x * qv[g][4] + y.y * qv[g][5] + y.z * qv[g][6] +
                       y.w * qv[g][7];
            float v = ds_reduce_scatter<G, LPK>(a, c);
            if (c < G) ps[key * G + whead] = i0 + key < cn ? v : -INFINITY;
        }
        __syncwarp();
        /* online softmax: lane takes (key, head lane % G) pairs; the tile max per head over the lanes of that head */
        float sv[NPAIR], mt = -INFINITY;
#pragma unroll
        for (int u = 0; u < NPAIR; u++) {
            int pi = lane + 32 * u;
            sv[u] = pi < TK * G ? ps[pi] : -INFINITY;
            mt = fmaxf(mt, sv[u]);
        }
#pragma unroll
        for (int o = G; o < 32; o *= 2) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, o));
        float mn = fmaxf(m_run, mt), corr = mn == -INFINITY ? 1.0f : exp2f(m_run - mn);
        l_run *= corr;
#pragma unroll
        for (int u = 0; u < NPAIR; u++) {
            int pi = lane + 32 * u;
            float e = mn == -INFINITY ? 0.0f : exp2f(sv[u] - mn);
            l_run += e;
            if (pi < TK * G) ps[pi] = e;
        }
        m_run = mn;
        if (lane < G) cs[lane] = corr;
        __syncwarp();
        /* P V: lane owns dims lane DPL .. lane DPL + DPL - 1 of every head */
#pragma unroll
        for (int g = 0; g < G; g++) {
            float cr = cs[g];
#pragma unroll
            for (int e = 0; e < DPL; e++) acc[g][e] *= cr;
        }
#pragma unroll
        for (int key = 0; key < TK; key++) {
            float vv[DPL];
            if constexpr (DPL == 4) {
                float4 t = *reinterpret_cast<const float4 *>(Vs + key * HD + 4 * lane);
                vv[0] = t.x, vv[1] = t.y, vv[2] = t.z, vv[3] = t.w;
            } else {
                float2 t = *reinterpret_cast<const float2 *>(Vs + key * HD + 2 * lane);
                vv[0] = t.x, vv[1] = t.y;
            }
#pragma unroll
            for (int g = 0; g < G; g++) {
                float pk = ps[key * G + g];
#pragma unroll
                for (int e = 0; e < DPL; e++) acc[g][e] += pk * vv[e];
            }
        }
        __syncwarp(); /* the stage and ps are rewritten next round */
    }
    cp_async_wait<0>();
    /* the warps' partial results through shared memory (over their stages), combined per (head, dim) */
#pragma unroll
    for (int o = G; o < 32; o *= 2) l_run += __shfl_xor_sync(0xffffffffu, l_run, o);
    __syncwarp();
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int e = 0; e < DPL; e++) ws[g * HD + lane * DPL + e] = acc[g][e];
    if (lane < G) ws[G * HD + lane] = m_run, ws[G * HD + G + lane] = l_run;
    __syncthreads();
    const float *all = reinterpret_cast<const float *>(ds_smem4);
    size_t pf = ds_part_floats(HD);
    float *pr = part + ((size_t)r * H + (size_t)kh * G) * nchunks * pf;
    for (int jj = tid; jj < G * HD; jj += DS_THREADS) {
        int g = jj / HD, d = jj - g * HD;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < DS_WARPS; w++) M = fmaxf(M, all[w * WF + G * HD + g]);
        float o = 0.0f, L = 0.0f;
#pragma unroll
        for (int w = 0; w < DS_WARPS; w++) {
            float mw = all[w * WF + G * HD + g], e = mw == -INFINITY ? 0.0f : exp2f(mw - M);
            o += e * all[w * WF + g * HD + d];
            L += e * all[w * WF + G * HD + G + g];
        }
        if (FINAL) { /* one chunk: the result itself (part is out) */
            part[((size_t)r * H + (size_t)kh * G + g) * HD + d] = o / L;
            continue;
        }
        float *e = pr + ((size_t)g * nchunks + blockIdx.z) * pf;
        e[d] = o;
        if (d == 0) e[HD] = M, e[HD + 1] = L;
    }
}

/* The merge, one block per (head, sequence): thread (chunk slice, dim) folds its chunks in one pass
 * with a running max (all loads independent, unrolled: one or two L2 round trips), then slice 0 folds
 * the slices' results. */
#define DM_THREADS 256
template <int HD>
__global__ void __launch_bounds__(DM_THREADS) attn_dec_merge_k(float *out, const float *part, const int32_t *pos, int H, int S, int chunk, int ring) {
    constexpr int SL = DM_THREADS / HD;
    __shared__ float ms[SL][HD], ls[SL][HD], as[SL][HD];
    av_pdl_wait();
    av_pdl_launch();
    int h = blockIdx.x, r = blockIdx.y, d = threadIdx.x % HD, sl = threadIdx.x / HD, ns = (av_kv_ring_rows(pos[r], ring) - 1) / chunk + 1;
    const size_t pf = ds_part_floats(HD);
    const float *pp = part + ((size_t)r * H + h) * S * pf;
    float M = -INFINITY, L = 0.0f, A = 0.0f;
#pragma unroll 8
    for (int i = sl; i < ns; i += SL) {
        float m = pp[i * pf + HD], l = pp[i * pf + HD + 1], a = pp[i * pf + d], mn = fmaxf(M, m);
        float c0 = exp2f(M - mn), c1 = exp2f(m - mn);
        L = L * c0 + l * c1;
        A = A * c0 + a * c1;
        M = mn;
    }
    ms[sl][d] = M, ls[sl][d] = L, as[sl][d] = A;
    __syncthreads();
    if (sl) return;
    float Mx = M;
#pragma unroll
    for (int k = 1; k < SL; k++) Mx = fmaxf(Mx, ms[k][d]);
    float Lt = 0.0f, At = 0.0f;
#pragma unroll
    for (int k = 0; k < SL; k++) {
        float e = ms[k][d] == -INFINITY ? 0.0f : exp2f(ms[k][d] - Mx);
        Lt += ls[k][d] * e;
        At += as[k][d] * e;
    }
    out[((size_t)r * H + h) * HD + d] = At / Lt;
}

template <int G, int HD, int NST, bool FINAL>
static void launch_part(float *part, const float *q, const float *k_new, const float *v_new, float *kc, float *vc, const int32_t *pos, int N,
                        size_t seq_stride, int KVH, float scale, size_t qrow, size_t knrow, int chunk, int S, int keep, int ring) {
    size_t smem = (size_t)DS_WARPS * ds_shape<HD>::WARP_FLOATS(G, NST) * sizeof(float);
    static thread_local size_t smem_set = 48 << 10;
    if (smem > smem_set) {
        cudaFuncSetAttribute(attn_dec_split_k<G, HD, NST, FINAL>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        smem_set = smem;
    }
    av_launch(attn_dec_split_k<G, HD, NST, FINAL>, dim3(KVH, N, S), dim3(DS_THREADS), smem, 1, part, q, k_new, v_new, kc, vc, pos,
              seq_stride, KVH, scale, qrow, knrow, chunk, keep, ring);
}

template <int G, int HD>
static void launch_split(float *part, float *out, const float *q, const float *k_new, const float *v_new, float *kc, float *vc,
                         const int32_t *pos, int N, size_t seq_stride, int KVH, float scale, size_t qrow, size_t knrow, int chunk, int S,
                         int keep, int ring) {
    if (!part) { /* several sequences on a short cache: one chunk a (KV head, sequence), the result written directly */
        launch_part<G, HD, DS_SHORT_NST, true>(out, q, k_new, v_new, kc, vc, pos, N, seq_stride, KVH, scale, qrow, knrow, chunk, 1, keep, ring);
        return;
    }
    launch_part<G, HD, DS_NST, false>(part, q, k_new, v_new, kc, vc, pos, N, seq_stride, KVH, scale, qrow, knrow, chunk, S, keep, ring);
    av_launch(attn_dec_merge_k<HD>, dim3(KVH * G, N), dim3(DM_THREADS), 0, 1, out, (const float *)part, pos, KVH * G, S, chunk, ring);
}

extern "C" int av_cuda_attention_decode_split(float *out, const float *q, const float *k_new, const float *v_new, float *k_cache,
                                              float *v_cache, const int32_t *pos, int N, size_t seq_stride, int H, int KVH, int hd,
                                              size_t qrow, size_t knrow, int keep, int ring) {
    int G = H / KVH;
    size_t max_s = seq_stride / ((size_t)KVH * hd);
    if ((hd != 64 && hd != 128) || (G != 1 && G != 2 && G != 4 && G != 8) || qrow % 4 || knrow % 4) return 0;
    int shortc = max_s < DS_MIN_KEYS;
    if (shortc && (N < DS_SHORT_MIN_SEQS || max_s == 0)) return 0;
    /* chunk: one block per SM over the cache's capacity in whole waves (H100, TinyLlama at 32k keys: 32
     * chunks of 1024), multiples of 64 keys, at most 1024 (bench/NOTES-attention.md) */
    static int sms = 0;
    if (!sms) {
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) sms = 132;
    }
    size_t want = (size_t)sms / ((size_t)KVH * N);
    size_t chunk = av_cdiv(max_s, want ? want : 1);
    chunk = (chunk + 63) / 64 * 64;
    if (chunk > 1024) chunk = 1024;
    int S = (int)av_cdiv(max_s, chunk);
    float *part = NULL;
    if (shortc) chunk = max_s, S = 1;
    else if (!(part = (float *)av_cuda_scratch(AV_SCR_DECODE, (size_t)N * H * S * ds_part_floats(hd) * sizeof(float)))) return 0;
    float scale = 1.0f / sqrtf((float)hd);
#define DS_CASE(g, d)                                                                                                                      \
    if (G == g && hd == d) launch_split<g, d>(part, out, q, k_new, v_new, k_cache, v_cache, pos, N, seq_stride, KVH, scale, qrow, knrow, (int)chunk, S, keep, ring);
    DS_CASE(1, 64) DS_CASE(2, 64) DS_CASE(4, 64) DS_CASE(8, 64) DS_CASE(1, 128) DS_CASE(2, 128) DS_CASE(4, 128) DS_CASE(8, 128)
#undef DS_CASE
    return 1;
}
