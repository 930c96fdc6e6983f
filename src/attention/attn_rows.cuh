/* The one-block-per-(head, row) attention kernel with an online softmax over the keys, shared by the
 * standard attention (few query rows, no saved probabilities: standard.cu) and decode attention
 * (shapes its own kernel does not take: decode.cu). */
#ifndef AV_ATTN_ROWS_CUH
#define AV_ATTN_ROWS_CUH
#include "backend/cuda_common.cuh"
#include "attention/kv_ring.h"

#define ATT_WARPS 4
#define ATT_MAX_HD 256

/* One block per (head h = blockIdx.x, row r = blockIdx.y). Row r's query at q + r*qrow + h*hd sees
 * keys 0..n-1 of its sequence (base k/v + r*seq_stride in decode mode). In decode mode key n-1 is
 * the new row (k_new/v_new), which the first head of each KV group also writes into the cache: at
 * row pos, or with ring > 0 at its rotating-cache slot (kv_ring.h), whose old row no block reads
 * (key index slot reads row n-1 instead; key n-1 is the new row). */
template <bool DECODE>
__global__ void __launch_bounds__(ATT_WARPS * 32) attn_rows_k(float *out, const float *q, const float *k, const float *v, float *kc,
                                                              float *vc, const float *k_new, const float *v_new, const int32_t *pos,
                                                              int pos0, size_t seq_stride, int H, int KVH, int hd, float scale,
                                                              size_t qrow, size_t knrow, int keep, int ring) {
    __shared__ float sm[ATT_WARPS], sl[ATT_WARPS], sacc[ATT_WARPS][ATT_MAX_HD];
    av_pdl_wait();
    av_pdl_launch();
    int h = blockIdx.x, r = blockIdx.y, group = H / KVH, kh = h / group;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    size_t qs = qrow, ks = (size_t)KVH * hd;
    int n, slot = -1;
    const float *K, *Vv, *kn = NULL, *vn = NULL;
    if (DECODE) {
        int p = pos[r];
        slot = av_kv_ring_slot(p, keep, ring);
        n = av_kv_ring_rows(p, ring);
        K = kc + r * seq_stride;
        Vv = vc + r * seq_stride;
        kn = k_new + (size_t)r * knrow + (size_t)kh * hd;
        vn = v_new + (size_t)r * knrow + (size_t)kh * hd;
        if (h % group == 0)
            for (int d = threadIdx.x; d < hd; d += blockDim.x) {
                kc[r * seq_stride + (size_t)slot * ks + (size_t)kh * hd + d] = kn[d];
                vc[r * seq_stride + (size_t)slot * ks + (size_t)kh * hd + d] = vn[d];
            }
    } else {
        n = pos0 + r + 1;
        K = k;
        Vv = v;
    }
    const float *qr = q + (size_t)r * qs + (size_t)h * hd;
    float qv[ATT_MAX_HD / 32], acc[ATT_MAX_HD / 32];
#pragma unroll
    for (int j = 0; j < ATT_MAX_HD / 32; j++) {
        int d = j * 32 + lane;
        qv[j] = d < hd ? qr[d] * scale : 0.0f;
        acc[j] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int s = warp; s < n; s += ATT_WARPS) {
        int sr = s == slot ? n - 1 : s; /* the slot being overwritten: its stand-in row */
        const float *kr = (DECODE && s == n - 1) ? kn : K + (size_t)sr * ks + (size_t)kh * hd;
        const float *vr = (DECODE && s == n - 1) ? vn : Vv + (size_t)sr * ks + (size_t)kh * hd;
        float part = 0.0f;
#pragma unroll
        for (int j = 0; j < ATT_MAX_HD / 32; j++) {
            int d = j * 32 + lane;
            if (j * 32 < hd && d < hd) part += qv[j] * kr[d];
        }
        float sc = av_warp_sum(part);
        float mn = fmaxf(m, sc), corr = expf(m - mn), p = expf(sc - mn);
        l = l * corr + p;
#pragma unroll
        for (int j = 0; j < ATT_MAX_HD / 32; j++) {
            int d = j * 32 + lane;
            if (j * 32 < hd) acc[j] = acc[j] * corr + (d < hd ? p * vr[d] : 0.0f);
        }
        m = mn;
    }
    if (lane == 0) { sm[warp] = m; sl[warp] = l; }
#pragma unroll
    for (int j = 0; j < ATT_MAX_HD / 32; j++) {
        int d = j * 32 + lane;
        if (d < hd) sacc[warp][d] = acc[j];
    }
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, sm[w]);
    float L = 0.0f;
    for (int w = 0; w < ATT_WARPS; w++) L += sm[w] == -INFINITY ? 0.0f : sl[w] * expf(sm[w] - M);
    float *o = out + (size_t)r * qs + (size_t)h * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++) a += sm[w] == -INFINITY ? 0.0f : sacc[w][d] * expf(sm[w] - M);
        o[d] = a / L;
    }
}
#endif
