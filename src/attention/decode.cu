/* CUDA decode attention (backend attention_decode): one new query row per sequence against its KV
 * cache, the kernel also writing the sequence's new key/value row into the cache. */
#include "attention/attn_rows.cuh"
extern "C" {
#include "backend/cuda.h"
}

/* Decode attention, one block per (head, sequence): threads over keys for the scores (each thread a
 * whole q.k dot product with 16-byte loads) into shared memory, a block softmax, then threads over
 * (dim, key slice) for P V. q and the new K/V row are loaded once, together (one round trip after
 * the wait); the first head of each KV group writes that row into the cache. The next kernel (the o
 * product) may launch right after the wait, so its weight loads overlap this latency-bound kernel.
 * KR > 0 (hd 64, one sequence): the cached rows are read into registers before the wait. Needs
 * hd % 4 == 0, hd <= DEC_THREADS. ring > 0: a rotating cache (kv_ring.h): the new row goes to its
 * slot, and the slot's old row is never read (cached key index slot reads row p = n - 1 instead). */
#define DEC_THREADS 256
#define DEC_PV 8 /* value chunks per thread held in registers (KR > 0) */
template <int KR>
__global__ void __launch_bounds__(DEC_THREADS) attn_dec_k(float *out, const float *q, const float *k_new, const float *v_new, float *kc,
                                                          float *vc, const int32_t *pos, size_t seq_stride, int H, int KVH, int hd,
                                                          float scale, size_t qrow, size_t knrow, int keep, int ring) {
    extern __shared__ float dsm[];
    __shared__ float red[32];
    /* shared: q [ATT_MAX_HD] | P V partials [DEC_THREADS float4] | new key, value [2 ATT_MAX_HD] | scores */
    float *qs = dsm, *kns = dsm + ATT_MAX_HD + 4 * DEC_THREADS, *vns = kns + ATT_MAX_HD, *sc = vns + ATT_MAX_HD;
    float4 *part = reinterpret_cast<float4 *>(dsm + ATT_MAX_HD);
    int h = blockIdx.x, r = blockIdx.y, group = H / KVH, kh = h / group, tid = threadIdx.x;
    size_t ks = (size_t)KVH * hd;
    /* positions change only between steps (sampler, host) and cache rows < pos were written by earlier
     * steps: both may be read before the wait, while the q|k|v product still runs. KR = hd / 4 (hd
     * 64): the thread's first key row and its first DEC_PV value chunks of P V go into registers;
     * otherwise the rows are prefetched into L1. */
    int sl = av_kv_ring_slot(pos[r], keep, ring), n = av_kv_ring_rows(pos[r], ring), p = n - 1; /* p: cached rows */
    auto row = [=](int s) { return s == sl ? p : s; };
    const float *K = kc + r * seq_stride + (size_t)kh * hd, *Vv = vc + r * seq_stride + (size_t)kh * hd;
    int groups = hd >> 2, parts = blockDim.x / groups, d4 = tid % groups, pi = tid / groups;
    const float4 *V4 = reinterpret_cast<const float4 *>(Vv) + d4;
    size_t ks4 = ks >> 2;
    float4 kr[KR ? KR : 1], vr[KR ? DEC_PV : 1];
    if (KR) {
        const float4 *k4 = reinterpret_cast<const float4 *>(K + (size_t)row(tid) * ks);
#pragma unroll
        for (int j = 0; j < KR; j++) kr[j] = tid < p ? __ldg(k4 + j) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int j = 0; j < DEC_PV; j++) {
            int sv = pi + j * parts;
            vr[j] = pi < parts && sv < p ? __ldg(V4 + (size_t)row(sv) * ks4) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
    } else {
        for (int i = tid; i < p * (hd >> 5); i += blockDim.x) { /* 128-byte lines of rows 0..p-1 */
            int sr = i / (hd >> 5), l = i - sr * (hd >> 5);
            sr = row(sr);
            asm volatile("prefetch.global.L1 [%0];" ::"l"(K + (size_t)sr * ks + 32 * l));
            asm volatile("prefetch.global.L1 [%0];" ::"l"(Vv + (size_t)sr * ks + 32 * l));
        }
    }
    /* a branch ptxas cannot fold ends the basic block here: within one block it hoists
     * griddepcontrol.wait above the cached-row loads above, serialising the overlap they are for
     * (H200: 3.2 -> 2.2 us per one-row attention) */
    if (h >= H) return;
    av_pdl_wait();
    av_pdl_launch();
    /* everything the q|k|v product wrote, in one round of loads: q, the new key and value rows */
    const float *kn = k_new + (size_t)r * knrow + (size_t)kh * hd, *vn = v_new + (size_t)r * knrow + (size_t)kh * hd;
    const float *qr = q + (size_t)r * qrow + (size_t)h * hd;
    for (int d = tid; d < hd; d += blockDim.x) {
        float qv = qr[d], kv = kn[d], vv = vn[d];
        qs[d] = qv * scale;
        kns[d] = kv;
        vns[d] = vv;
        if (h % group == 0) {
            kc[r * seq_stride + (size_t)sl * ks + (size_t)kh * hd + d] = kv;
            vc[r * seq_stride + (size_t)sl * ks + (size_t)kh * hd + d] = vv;
        }
    }
    __syncthreads();
    int h4 = hd >> 2;
    const float4 *q4 = reinterpret_cast<const float4 *>(qs);
    float mx = -INFINITY;
    for (int s = tid; s < n; s += blockDim.x) {
        float a = 0.0f;
        if (KR && s < p && s == tid) {
#pragma unroll
            for (int j = 0; j < KR; j++) {
                float4 qv = q4[j];
                a += kr[j].x * qv.x + kr[j].y * qv.y + kr[j].z * qv.z + kr[j].w * qv.w;
            }
        } else {
            const float4 *k4 = reinterpret_cast<const float4 *>(s == n - 1 ? kns : K + (size_t)row(s) * ks);
            for (int j = 0; j < h4; j++) {
                float4 kv = s == n - 1 ? k4[j] : __ldg(k4 + j), qv = q4[j];
                a += kv.x * qv.x + kv.y * qv.y + kv.z * qv.z + kv.w * qv.w;
            }
        }
        sc[s] = a;
        mx = fmaxf(mx, a);
    }
    mx = av_block_max(mx, red);
    float sum = 0.0f;
    for (int s = tid; s < n; s += blockDim.x) {
        float e = expf(sc[s] - mx);
        sc[s] = e;
        sum += e;
    }
    sum = av_block_sum(sum, red); /* its barriers also publish sc[] */
    /* P V: threads over (4 dims, key slice), 16-byte loads of V rows */
    float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (pi < parts) {
        int s0 = pi;
        if (KR) {
#pragma unroll
            for (int j = 0; j < DEC_PV; j++) {
                int sv = pi + j * parts;
                float w = sv < n - 1 ? sc[sv] : 0.0f;
                a.x += w * vr[j].x, a.y += w * vr[j].y, a.z += w * vr[j].z, a.w += w * vr[j].w;
            }
            s0 = pi + DEC_PV * parts;
        }
        for (int s = s0; s < n - 1; s += parts) {
            float4 vv = __ldg(V4 + (size_t)row(s) * ks4);
            float w = sc[s];
            a.x += w * vv.x, a.y += w * vv.y, a.z += w * vv.z, a.w += w * vv.w;
        }
        if ((n - 1) % parts == pi) {
            float4 vv = reinterpret_cast<const float4 *>(vns)[d4];
            float w = sc[n - 1];
            a.x += w * vv.x, a.y += w * vv.y, a.z += w * vv.z, a.w += w * vv.w;
        }
    }
    part[tid] = a;
    __syncthreads();
    if (tid < groups) {
        float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (int j = 0; j < parts; j++) {
            float4 p = part[j * groups + tid];
            o.x += p.x, o.y += p.y, o.z += p.z, o.w += p.w;
        }
        float inv = 1.0f / sum;
        float4 res = make_float4(o.x * inv, o.y * inv, o.z * inv, o.w * inv);
        reinterpret_cast<float4 *>(out + (size_t)r * H * hd + (size_t)h * hd)[tid] = res;
    }
}

extern "C" void av_cuda_attention_decode(float *out, const float *q, const float *k_new, const float *v_new, float *k_cache,
                                         float *v_cache, const int32_t *pos, int N, size_t seq_stride, int H, int KVH, int hd,
                                         size_t row_stride, int keep, int ring) {
    if (N <= 0) return;
    size_t max_s = seq_stride / ((size_t)KVH * hd); /* the cache region's rows bound every sequence's length */
    size_t smem = (3 * ATT_MAX_HD + 4 * DEC_THREADS + max_s) * sizeof(float);
    size_t qrow = row_stride ? row_stride : (size_t)H * hd, knrow = row_stride ? row_stride : (size_t)KVH * hd;
    if (av_cuda_attention_decode_split(out, q, k_new, v_new, k_cache, v_cache, pos, N, seq_stride, H, KVH, hd, qrow, knrow, keep, ring)) {
        AV_CU_LAUNCHED("attention decode (split)");
        return;
    }
    float scale = 1.0f / sqrtf((float)hd);
    static thread_local size_t smem_set = 48 << 10; /* per thread = per device (attributes are per device) */
    /* one sequence with hd 64: cached rows in registers; several sequences keep the L1 prefetch (their
     * many register-heavy blocks would crowd out the q|k|v product) */
    if (hd % 4 == 0 && hd <= DEC_THREADS && max_s > 0 && smem <= (200u << 10) && qrow % 4 == 0 && knrow % 4 == 0) {
        if (smem > smem_set) {
            cudaFuncSetAttribute(attn_dec_k<16>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
            cudaFuncSetAttribute(attn_dec_k<0>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
            smem_set = smem;
        }
        if (hd == 64 && N == 1)
            av_launch(attn_dec_k<16>, dim3(H, N), dim3(DEC_THREADS), smem, 1, out, q, k_new, v_new, k_cache, v_cache, pos, seq_stride, H, KVH,
                      hd, scale, qrow, knrow, keep, ring);
        else
            av_launch(attn_dec_k<0>, dim3(H, N), dim3(DEC_THREADS), smem, 1, out, q, k_new, v_new, k_cache, v_cache, pos, seq_stride, H, KVH,
                      hd, scale, qrow, knrow, keep, ring);
    } else {
        av_launch(attn_rows_k<true>, dim3(H, N), dim3(ATT_WARPS * 32), 0, 1, out, q, (const float *)NULL, (const float *)NULL, k_cache,
                  v_cache, k_new, v_new, pos, 0, seq_stride, H, KVH, hd, scale, qrow, knrow, keep, ring);
    }
    AV_CU_LAUNCHED("attention decode");
}
