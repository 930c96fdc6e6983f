/* Split-KV decode attention for long caches (flash decoding): one new query row per sequence against
 * thousands of cached keys. The keys are cut into chunks, one block per (KV head, sequence, chunk)
 * for all query heads of the KV group (each cached row is read once, not once per head), so a single
 * sequence fills every SM; a second kernel merges the chunks' partial softmax results. A rotating
 * cache (kv_ring.h) as in decode.cu: key index `slot` reads row p = n - 1, index p is the new row. */
#include "attention/kv_ring.h"
#include "backend/cuda_common.cuh"
extern "C" {
#include "backend/cuda.h"
}

#define DS_THREADS 256
/* Caches of at least this many rows take the split kernel; shorter ones the one-block-per-head kernel
 * (decode.cu). */
#ifndef DS_MIN_KEYS
#define DS_MIN_KEYS 512
#endif
#define DS_WARPS (DS_THREADS / 32)

/* Per (sequence, head, chunk): the chunk's unnormalised P V row, then its max score and sum of exp. */
__host__ __device__ static inline size_t ds_part_floats(int hd) { return (size_t)hd + 2; }

/* Scores: LPK = HD / 8 lanes per key, each holding 8 dims (two 16-byte loads) and the G query heads'
 * same 8 dims in registers, so a warp reads 32 / LPK whole rows per step, coalesced; the dot
 * products finish with a shuffle reduction inside each lane group. Softmax: warp g takes head g.
 * P V: threads over (4 dims, key slice), 16-byte loads of V rows, G float4 accumulators each. */
template <int G, int HD>
__global__ void __launch_bounds__(DS_THREADS) attn_dec_split_k(float *part, const float *q, const float *k_new, const float *v_new,
                                                               float *kc, float *vc, const int32_t *pos, size_t seq_stride, int KVH,
                                                               float scale, size_t qrow, size_t knrow, int chunk, int keep, int ring) {
    constexpr int LPK = HD / 8, KPW = 32 / LPK, H4 = HD / 4, SLICES = DS_THREADS / H4;
    extern __shared__ float dsm[]; /* scores [G][chunk]; after P V: the warps' partial rows [DS_WARPS][G][HD] */
    __shared__ float mx_s[G], sum_s[G];
    int kh = blockIdx.x, r = blockIdx.y, S = gridDim.z, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int H = KVH * G;
    size_t ks = (size_t)KVH * HD;
    av_pdl_wait();
    av_pdl_launch();
    int sl = av_kv_ring_slot(pos[r], keep, ring), n = av_kv_ring_rows(pos[r], ring), p = n - 1, s0 = blockIdx.z * chunk;
    if (s0 >= n) return; /* the merge reads only the chunks that hold keys */
    int cn = min(n - s0, chunk);
    float *K = kc + r * seq_stride + (size_t)kh * HD, *V = vc + r * seq_stride + (size_t)kh * HD;
    const float *kn = k_new + (size_t)r * knrow + (size_t)kh * HD, *vn = v_new + (size_t)r * knrow + (size_t)kh * HD;
    if (s0 + cn == n) /* this chunk holds the new row: into the cache (read below from kn/vn, not from there) */
        for (int d = tid; d < HD; d += DS_THREADS) {
            K[(size_t)sl * ks + d] = kn[d];
            V[(size_t)sl * ks + d] = vn[d];
        }
    /* the lane's 8 dims of each head's query, pre-scaled */
    int c = lane % LPK, kw = lane / LPK;
    float qv[G][8];
#pragma unroll
    for (int g = 0; g < G; g++) {
        const float4 *q4 = reinterpret_cast<const float4 *>(q + (size_t)r * qrow + (size_t)(kh * G + g) * HD) + 2 * c;
        float4 a = q4[0], b = q4[1];
        qv[g][0] = a.x * scale, qv[g][1] = a.y * scale, qv[g][2] = a.z * scale, qv[g][3] = a.w * scale;
        qv[g][4] = b.x * scale, qv[g][5] = b.y * scale, qv[g][6] = b.z * scale, qv[g][7] = b.w * scale;
    }
    float *sc = dsm;
#pragma unroll 4 /* several rows' loads in flight per lane */
    for (int i0 = warp * KPW; i0 < cn; i0 += DS_WARPS * KPW) {
        int i = i0 + kw, s = s0 + i;
        float a[G];
#pragma unroll
        for (int g = 0; g < G; g++) a[g] = 0.0f;
        if (i < cn) {
            const float4 *k4 = reinterpret_cast<const float4 *>(s == p ? kn : K + (size_t)(s == sl ? p : s) * ks) + 2 * c;
            float4 x = __ldg(k4), y = __ldg(k4 + 1);
#pragma unroll
            for (int g = 0; g < G; g++)
                a[g] = x.x * qv[g][0] + x.y * qv[g][1] + x.z * qv[g][2] + x.w * qv[g][3] + y.x * qv[g][4] + y.y * qv[g][5] +
                       y.z * qv[g][6] + y.w * qv[g][7];
        }
#pragma unroll
        for (int g = 0; g < G; g++)
#pragma unroll
            for (int o = LPK / 2; o > 0; o >>= 1) a[g] += __shfl_xor_sync(0xffffffffu, a[g], o);
        if (i < cn)
#pragma unroll
            for (int g = 0; g < G; g++)
                if (c == g % LPK) sc[g * chunk + i] = a[g];
    }
    __syncthreads();
    if (warp < G) { /* warp g: max, exp and sum of head g's scores */
        float *sg = sc + warp * chunk, m = -INFINITY, l = 0.0f;
        for (int i = lane; i < cn; i += 32) m = fmaxf(m, sg[i]);
        m = av_warp_max(m);
        for (int i = lane; i < cn; i += 32) {
            float e = expf(sg[i] - m);
            sg[i] = e;
            l += e;
        }
        l = av_warp_sum(l);
        if (lane == 0) mx_s[warp] = m, sum_s[warp] = l;
    }
    __syncthreads();
    int d4 = tid % H4, ksl = tid / H4; /* 4 dims of V, key slice */
    float4 acc[G];
#pragma unroll
    for (int g = 0; g < G; g++) acc[g] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
    for (int i = ksl; i < cn; i += SLICES) {
        int s = s0 + i;
        float4 v = s == p ? reinterpret_cast<const float4 *>(vn)[d4]
                          : __ldg(reinterpret_cast<const float4 *>(V + (size_t)(s == sl ? p : s) * ks) + d4);
#pragma unroll
        for (int g = 0; g < G; g++) {
            float w = sc[g * chunk + i];
            acc[g].x += w * v.x, acc[g].y += w * v.y, acc[g].z += w * v.z, acc[g].w += w * v.w;
        }
    }
    /* the slices inside a warp by shuffles, then the warps through shared memory (over the scores) */
#pragma unroll
    for (int o = 16; o >= H4; o >>= 1)
#pragma unroll
        for (int g = 0; g < G; g++) {
            acc[g].x += __shfl_xor_sync(0xffffffffu, acc[g].x, o);
            acc[g].y += __shfl_xor_sync(0xffffffffu, acc[g].y, o);
            acc[g].z += __shfl_xor_sync(0xffffffffu, acc[g].z, o);
            acc[g].w += __shfl_xor_sync(0xffffffffu, acc[g].w, o);
        }
    __syncthreads();
    float4 *red = reinterpret_cast<float4 *>(dsm); /* [DS_WARPS][G][H4] */
    if (lane < H4)
#pragma unroll
        for (int g = 0; g < G; g++) red[(warp * G + g) * H4 + lane] = acc[g];
    __syncthreads();
    float *pr = part + ((size_t)r * H + (size_t)kh * G) * S * ds_part_floats(HD);
    for (int j = tid; j < G * HD; j += DS_THREADS) {
        int g = j / HD, d = j - g * HD;
        const float *rd = reinterpret_cast<const float *>(red);
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < DS_WARPS; w++) o += rd[(w * G + g) * HD + d];
        pr[((size_t)g * S + blockIdx.z) * ds_part_floats(HD) + d] = o;
    }
    if (tid < G) {
        float *e = pr + ((size_t)tid * S + blockIdx.z) * ds_part_floats(HD) + HD;
        e[0] = mx_s[tid];
        e[1] = sum_s[tid];
    }
}

/* out[r, h, :] from the chunks that hold keys: weights exp(m_i - M), divided by the merged sum. */
__global__ void attn_dec_merge_k(float *out, const float *part, const int32_t *pos, int H, int hd, int S, int chunk, int ring) {
    av_pdl_wait();
    av_pdl_launch();
    int h = blockIdx.x, r = blockIdx.y, d = threadIdx.x, ns = (av_kv_ring_rows(pos[r], ring) - 1) / chunk + 1;
    size_t pf = (size_t)hd + 2;
    const float *pp = part + ((size_t)r * H + h) * S * pf;
    float M = -INFINITY;
    for (int i = 0; i < ns; i++) M = fmaxf(M, pp[i * pf + hd]);
    float L = 0.0f, acc = 0.0f;
    for (int i = 0; i < ns; i++) {
        float w = expf(pp[i * pf + hd] - M);
        L += w * pp[i * pf + hd + 1];
        acc += w * pp[i * pf + d];
    }
    out[((size_t)r * H + h) * hd + d] = acc / L;
}

template <int G, int HD>
static void launch_split(float *part, float *out, const float *q, const float *k_new, const float *v_new, float *kc, float *vc,
                         const int32_t *pos, int N, size_t seq_stride, int KVH, float scale, size_t qrow, size_t knrow, int chunk, int S,
                         int keep, int ring) {
    size_t smem = (size_t)G * chunk * sizeof(float), red = (size_t)DS_WARPS * G * HD * sizeof(float);
    if (red > smem) smem = red;
    static thread_local size_t smem_set = 48 << 10;
    if (smem > smem_set) {
        cudaFuncSetAttribute(attn_dec_split_k<G, HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        smem_set = smem;
    }
    av_launch(attn_dec_split_k<G, HD>, dim3(KVH, N, S), dim3(DS_THREADS), smem, 1, part, q, k_new, v_new, kc, vc, pos, seq_stride, KVH,
              scale, qrow, knrow, chunk, keep, ring);
    av_launch(attn_dec_merge_k, dim3(KVH * G, N), dim3(HD), 0, 1, out, (const float *)part, pos, KVH * G, HD, S, chunk, ring);
}

extern "C" int av_cuda_attention_decode_split(float *out, const float *q, const float *k_new, const float *v_new, float *k_cache,
                                              float *v_cache, const int32_t *pos, int N, size_t seq_stride, int H, int KVH, int hd,
                                              size_t qrow, size_t knrow, int keep, int ring) {
    int G = H / KVH;
    size_t max_s = seq_stride / ((size_t)KVH * hd);
    if ((hd != 64 && hd != 128) || (G != 1 && G != 2 && G != 4 && G != 8) || qrow % 4 || knrow % 4 || max_s < DS_MIN_KEYS) return 0;
    /* chunk: about two blocks per SM over the cache's capacity (four for head dim 128: 74 vs 89 us at
     * 32k keys on an H200, hd 64 the other way, 43 vs 35: bench/NOTES-attention.md), 128..1024 keys */
    static int sms = 0;
    if (!sms) {
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) sms = 132;
    }
    size_t want = av_cdiv((hd == 128 ? 4 : 2) * (size_t)sms, (size_t)KVH * N);
    size_t chunk = av_cdiv(max_s, want ? want : 1);
    chunk = (chunk + 127) / 128 * 128;
    if (chunk < 128) chunk = 128;
    if (chunk > 1024) chunk = 1024;
    int S = (int)av_cdiv(max_s, chunk);
    float *part = (float *)av_cuda_scratch(AV_SCR_DECODE, (size_t)N * H * S * ds_part_floats(hd) * sizeof(float));
    if (!part) return 0;
    float scale = 1.0f / sqrtf((float)hd);
#define DS_CASE(g, d)                                                                                                                      \
    if (G == g && hd == d) launch_split<g, d>(part, out, q, k_new, v_new, k_cache, v_cache, pos, N, seq_stride, KVH, scale, qrow, knrow, (int)chunk, S, keep, ring);
    DS_CASE(1, 64) DS_CASE(2, 64) DS_CASE(4, 64) DS_CASE(8, 64) DS_CASE(1, 128) DS_CASE(2, 128) DS_CASE(4, 128) DS_CASE(8, 128)
#undef DS_CASE
    return 1;
}
