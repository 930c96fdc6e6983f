/* CUDA twin of standard.c (causal GQA attention) plus batched decode attention. Few query rows
 * without saved probs: one block per (head, row) with an online softmax over the keys. Otherwise
 * the materialised form: scores and P V as strided-batched cuBLAS products (f32, or TF32 in bf16
 * mode), a masked softmax kernel between; the backward is the same products transposed. */
#include "backend/cuda_common.cuh"
#include <stdlib.h>
extern "C" {
#include "backend/cuda.h"
#include "attention/attention.h"
}

#define ATT_WARPS 4
#define ATT_MAX_HD 256

/* One block per (head h = blockIdx.x, row r = blockIdx.y). Row r's query at q + r*qrow + h*hd sees
 * keys 0..n-1 of its sequence (base k/v + r*seq_stride in decode mode). In decode mode key n-1 is
 * the new row (k_new/v_new), which the first head of each KV group also writes into the cache. */
template <bool DECODE>
__global__ void __launch_bounds__(ATT_WARPS * 32) attn_rows_k(float *out, const float *q, const float *k, const float *v, float *kc,
                                                              float *vc, const float *k_new, const float *v_new, const int32_t *pos,
                                                              int pos0, size_t seq_stride, int H, int KVH, int hd, float scale,
                                                              size_t qrow, size_t knrow) {
    __shared__ float sm[ATT_WARPS], sl[ATT_WARPS], sacc[ATT_WARPS][ATT_MAX_HD];
    av_pdl_wait();
    av_pdl_launch();
    int h = blockIdx.x, r = blockIdx.y, group = H / KVH, kh = h / group;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    size_t qs = qrow, ks = (size_t)KVH * hd;
    int n;
    const float *K, *Vv, *kn = NULL, *vn = NULL;
    if (DECODE) {
        int p = pos[r];
        n = p + 1;
        K = kc + r * seq_stride;
        Vv = vc + r * seq_stride;
        kn = k_new + (size_t)r * knrow + (size_t)kh * hd;
        vn = v_new + (size_t)r * knrow + (size_t)kh * hd;
        if (h % group == 0)
            for (int d = threadIdx.x; d < hd; d += blockDim.x) {
                kc[r * seq_stride + (size_t)p * ks + (size_t)kh * hd + d] = kn[d];
                vc[r * seq_stride + (size_t)p * ks + (size_t)kh * hd + d] = vn[d];
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
        const float *kr = (DECODE && s == n - 1) ? kn : K + (size_t)s * ks + (size_t)kh * hd;
        const float *vr = (DECODE && s == n - 1) ? vn : Vv + (size_t)s * ks + (size_t)kh * hd;
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

/* Decode attention, one block per (head, sequence): threads over keys for the scores (each thread a
 * whole q.k dot product with 16-byte loads) into shared memory, a block softmax, then threads over
 * (dim, key slice) for P V. q and the new K/V row are loaded once, together (one round trip after
 * the wait); the first head of each KV group writes that row into the cache. The next kernel (the o
 * product) may launch right after the wait, so its weight loads overlap this latency-bound kernel.
 * KR > 0 (hd 64, one sequence): the cached rows are read into registers before the wait. Needs
 * hd % 4 == 0, hd <= DEC_THREADS. */
#define DEC_THREADS 256
#define DEC_PV 8 /* value chunks per thread held in registers (KR > 0) */
template <int KR>
__global__ void __launch_bounds__(DEC_THREADS) attn_dec_k(float *out, const float *q, const float *k_new, const float *v_new, float *kc,
                                                          float *vc, const int32_t *pos, size_t seq_stride, int H, int KVH, int hd,
                                                          float scale, size_t qrow, size_t knrow, const char *pf, size_t pfn) {
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
    int p = pos[r], n = p + 1;
    const float *K = kc + r * seq_stride + (size_t)kh * hd, *Vv = vc + r * seq_stride + (size_t)kh * hd;
    int groups = hd >> 2, parts = blockDim.x / groups, d4 = tid % groups, pi = tid / groups;
    const float4 *V4 = reinterpret_cast<const float4 *>(Vv) + d4;
    size_t ks4 = ks >> 2;
    float4 kr[KR ? KR : 1], vr[KR ? DEC_PV : 1];
    if (KR) {
        const float4 *k4 = reinterpret_cast<const float4 *>(K + (size_t)tid * ks);
#pragma unroll
        for (int j = 0; j < KR; j++) kr[j] = tid < p ? __ldg(k4 + j) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int j = 0; j < DEC_PV; j++) {
            int sv = pi + j * parts;
            vr[j] = pi < parts && sv < p ? __ldg(V4 + (size_t)sv * ks4) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
    } else {
        for (int i = tid; i < p * (hd >> 5); i += blockDim.x) { /* 128-byte lines of rows 0..p-1 */
            int sr = i / (hd >> 5), l = i - sr * (hd >> 5);
            asm volatile("prefetch.global.L1 [%0];" ::"l"(K + (size_t)sr * ks + 32 * l));
            asm volatile("prefetch.global.L1 [%0];" ::"l"(Vv + (size_t)sr * ks + 32 * l));
        }
    }
    av_l2_prefetch(pf, pfn); /* the o product's weights, while this kernel is latency-bound */
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
            kc[r * seq_stride + (size_t)p * ks + (size_t)kh * hd + d] = kv;
            vc[r * seq_stride + (size_t)p * ks + (size_t)kh * hd + d] = vv;
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
            const float4 *k4 = reinterpret_cast<const float4 *>(s == n - 1 ? kns : K + (size_t)s * ks);
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
            float4 vv = __ldg(V4 + (size_t)s * ks4);
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

/* Row-wise causal softmax in place on scores [H, T, S]; row (h, t) keeps s < pos0 + t + 1. Rows up to
 * 256 * SM_PER values are held in registers (one read, one write); longer rows loop over memory. */
#define SM_PER 16
__global__ void __launch_bounds__(256) softmax_causal_k(float *P, int T, int S, int pos0) {
    __shared__ float sh[32];
    size_t row = blockIdx.x; /* h * T + t */
    int t = (int)(row % T), n = pos0 + t + 1;
    float *p = P + row * S;
    if (S <= 256 * SM_PER) {
        float v[SM_PER];
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < SM_PER; j++) {
            int s = threadIdx.x + j * 256;
            v[j] = s < n ? p[s] : -INFINITY;
            mx = fmaxf(mx, v[j]);
        }
        mx = av_block_max(mx, sh);
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < SM_PER; j++) {
            int s = threadIdx.x + j * 256;
            v[j] = s < n ? expf(v[j] - mx) : 0.0f;
            sum += v[j];
        }
        sum = av_block_sum(sum, sh);
        float inv = 1.0f / sum;
#pragma unroll
        for (int j = 0; j < SM_PER; j++) {
            int s = threadIdx.x + j * 256;
            if (s < S) p[s] = v[j] * inv;
        }
        return;
    }
    float mx = -INFINITY;
    for (int s = threadIdx.x; s < n; s += blockDim.x) mx = fmaxf(mx, p[s]);
    mx = av_block_max(mx, sh);
    float sum = 0.0f;
    for (int s = threadIdx.x; s < n; s += blockDim.x) sum += expf(p[s] - mx);
    sum = av_block_sum(sum, sh);
    float inv = 1.0f / sum;
    for (int s = threadIdx.x; s < S; s += blockDim.x) p[s] = s < n ? expf(p[s] - mx) * inv : 0.0f;
}

/* dS = P * (dP - rowsum(dP * P)) * scale, in place on dP. */
__global__ void softmax_bwd_k(float *dP, const float *P, int S, float scale) {
    __shared__ float sh[32];
    size_t row = blockIdx.x;
    float *d = dP + row * S;
    const float *p = P + row * S;
    float dot = 0.0f;
    for (int s = threadIdx.x; s < S; s += blockDim.x) dot += d[s] * p[s];
    dot = av_block_sum(dot, sh);
    for (int s = threadIdx.x; s < S; s += blockDim.x) d[s] = p[s] * (d[s] - dot) * scale;
}

/* Column-major strided-batched product over the KV heads (batch KVH) with f32 data. */
static void sbgemm(int f32, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha, const float *A, int lda,
                   long long sA, const float *B, int ldb, long long sB, float beta, float *C, int ldc, long long sC, int batch) {
    av_cuda_note_blas(cublasGemmStridedBatchedEx(av_cuda_cublas(), ta, tb, m, n, k, &alpha, A, CUDA_R_32F, lda, sA, B, CUDA_R_32F, ldb,
                                                 sB, &beta, C, CUDA_R_32F, ldc, sC, batch,
                                                 f32 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT),
                      "attention gemm");
}

/* S_h[T,S] = alpha * A_h[T,hd] . B_kh[S,hd]^T for every head h (A row stride as, B row stride bs). */
static void heads_abt(int f32, float *S_out, const float *A, int as, const float *B, int bs, float alpha, int T, int S, int H, int KVH,
                      int hd) {
    int group = H / KVH;
    for (int g = 0; g < group; g++)
        sbgemm(f32, CUBLAS_OP_T, CUBLAS_OP_N, S, T, hd, alpha, B, bs, hd, A + (size_t)g * hd, as, (long long)group * hd, 0.0f,
               S_out + (size_t)g * T * S, S, (long long)group * T * S, KVH);
}
/* O_h[T,hd] (+)= P_h[T,S] . B_kh[S,hd] */
static void heads_pb(int f32, float *O, int os, const float *P, const float *B, int bs, float beta, int T, int S, int H, int KVH, int hd) {
    int group = H / KVH;
    for (int g = 0; g < group; g++)
        sbgemm(f32, CUBLAS_OP_N, CUBLAS_OP_N, hd, T, S, 1.0f, B, bs, hd, P + (size_t)g * T * S, S, (long long)group * T * S, beta,
               O + (size_t)g * hd, os, (long long)group * hd, KVH);
}
/* G_kh[S,hd] += P_h[T,S]^T . A_h[T,hd] summed over the heads of each group */
static void heads_ptb(int f32, float *G, int gs, const float *P, const float *A, int as, int T, int S, int H, int KVH, int hd) {
    int group = H / KVH;
    for (int g = 0; g < group; g++)
        sbgemm(f32, CUBLAS_OP_N, CUBLAS_OP_T, hd, S, T, 1.0f, A + (size_t)g * hd, as, (long long)group * hd, P + (size_t)g * T * S, S,
               (long long)group * T * S, 1.0f, G, gs, hd, KVH);
}

static size_t g_attn_chunk_floats = (size_t)8 << 20;
extern "C" void av_cuda_set_attention_chunk(size_t floats) { g_attn_chunk_floats = floats ? floats : (size_t)8 << 20; }

extern "C" void av_cuda_attention_forward_mode(float *out, float *probs, const float *q, const float *k, const float *v, int T, int S,
                                               int pos0, int H, int KVH, int hd, int f32) {
    if (T <= 0) return;
    float scale = 1.0f / sqrtf((float)hd);
    cudaStream_t st = av_cuda_stream();
    if (!probs && T <= 16 && hd <= ATT_MAX_HD) {
        attn_rows_k<false><<<dim3(H, T), ATT_WARPS * 32, 0, st>>>(out, q, k, v, NULL, NULL, NULL, NULL, NULL, pos0, 0, H, KVH, hd, scale,
                                                                  (size_t)H * hd, (size_t)KVH * hd);
        AV_CU_LAUNCHED("attention rows");
        return;
    }
    int qs = H * hd, ks = KVH * hd;
    if (!probs) { /* inference: per group member and row chunk, keys trimmed to the causal need, scores kept L2-sized */
        int group = H / KVH;
        size_t budget = g_attn_chunk_floats;
        int Tc = (int)(budget / ((size_t)KVH * S));
        if (Tc < 16) Tc = 16;
        if (Tc > T) Tc = T;
        float *P = (float *)av_cuda_scratch(AV_SCR_ATTN, (size_t)KVH * Tc * S * sizeof(float));
        if (!P) return;
        for (int g = 0; g < group; g++)
            for (int t0 = 0; t0 < T; t0 += Tc) {
                int tc = T - t0 < Tc ? T - t0 : Tc, Se = pos0 + t0 + tc;
                sbgemm(f32, CUBLAS_OP_T, CUBLAS_OP_N, Se, tc, hd, scale, k, ks, hd, q + (size_t)t0 * qs + (size_t)g * hd, qs,
                       (long long)group * hd, 0.0f, P, Se, (long long)tc * Se, KVH);
                softmax_causal_k<<<(unsigned)((size_t)KVH * tc), 256, 0, st>>>(P, tc, Se, pos0 + t0);
                AV_CU_LAUNCHED("attention softmax");
                sbgemm(f32, CUBLAS_OP_N, CUBLAS_OP_N, hd, tc, Se, 1.0f, v, ks, hd, P, Se, (long long)tc * Se, 0.0f,
                       out + (size_t)t0 * qs + (size_t)g * hd, qs, (long long)group * hd, KVH);
            }
        return;
    }
    float *P = probs;
    heads_abt(f32, P, q, qs, k, ks, scale, T, S, H, KVH, hd);
    softmax_causal_k<<<(unsigned)((size_t)H * T), 256, 0, st>>>(P, T, S, pos0);
    AV_CU_LAUNCHED("attention softmax");
    heads_pb(f32, out, qs, P, v, ks, 0.0f, T, S, H, KVH, hd);
}

extern "C" void av_cuda_attention_backward_mode(float *dq, float *dk, float *dv, const float *dout, const float *probs, const float *q,
                                                const float *k, const float *v, int T, int S, int pos0, int H, int KVH, int hd, int f32) {
    (void)pos0;
    if (T <= 0) return;
    float scale = 1.0f / sqrtf((float)hd);
    int qs = H * hd, ks = KVH * hd;
    if (dv) heads_ptb(f32, dv, ks, probs, dout, qs, T, S, H, KVH, hd);
    if (!dq && !dk) return;
    float *dP = (float *)av_cuda_scratch(AV_SCR_ATTN2, (size_t)H * T * S * sizeof(float));
    if (!dP) return;
    heads_abt(f32, dP, dout, qs, v, ks, 1.0f, T, S, H, KVH, hd);
    softmax_bwd_k<<<(unsigned)((size_t)H * T), 256, 0, av_cuda_stream()>>>(dP, probs, S, scale);
    AV_CU_LAUNCHED("attention softmax backward");
    if (dq) heads_pb(f32, dq, qs, dP, k, ks, 1.0f, T, S, H, KVH, hd);
    if (dk) heads_ptb(f32, dk, ks, dP, q, qs, T, S, H, KVH, hd);
}

extern "C" void av_cuda_attention_decode(float *out, const float *q, const float *k_new, const float *v_new, float *k_cache,
                                         float *v_cache, const int32_t *pos, int N, size_t seq_stride, int H, int KVH, int hd,
                                         size_t row_stride) {
    if (N <= 0) return;
    size_t max_s = seq_stride / ((size_t)KVH * hd); /* the cache region's rows bound every sequence's length */
    size_t smem = (3 * ATT_MAX_HD + 4 * DEC_THREADS + max_s) * sizeof(float);
    size_t qrow = row_stride ? row_stride : (size_t)H * hd, knrow = row_stride ? row_stride : (size_t)KVH * hd;
    float scale = 1.0f / sqrtf((float)hd);
    static size_t smem_set = 48 << 10;
    /* one sequence with hd 64: cached rows in registers; several sequences keep the L1 prefetch (their
     * many register-heavy blocks would crowd out the q|k|v product) */
    const char *pf;
    size_t pfn = av_cuda_take_prefetch(&pf);
    if (hd % 4 == 0 && hd <= DEC_THREADS && max_s > 0 && smem <= (200u << 10) && qrow % 4 == 0 && knrow % 4 == 0) {
        if (smem > smem_set) {
            cudaFuncSetAttribute(attn_dec_k<16>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
            cudaFuncSetAttribute(attn_dec_k<0>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
            smem_set = smem;
        }
        if (hd == 64 && N == 1)
            av_launch(attn_dec_k<16>, dim3(H, N), dim3(DEC_THREADS), smem, 1, out, q, k_new, v_new, k_cache, v_cache, pos, seq_stride, H, KVH,
                      hd, scale, qrow, knrow, pf, pfn);
        else
            av_launch(attn_dec_k<0>, dim3(H, N), dim3(DEC_THREADS), smem, 1, out, q, k_new, v_new, k_cache, v_cache, pos, seq_stride, H, KVH,
                      hd, scale, qrow, knrow, pf, pfn);
    } else {
        av_launch(attn_rows_k<true>, dim3(H, N), dim3(ATT_WARPS * 32), 0, 1, out, q, (const float *)NULL, (const float *)NULL, k_cache,
                  v_cache, k_new, v_new, pos, 0, seq_stride, H, KVH, hd, scale, qrow, knrow);
    }
    AV_CU_LAUNCHED("attention decode");
}

/* ---- batched training attention: B sequences of T rows (pos0 = 0, S = T), every head at once ----
 * q, k, v, out are token-major ([B*T, H*hd] / [B*T, KVH*hd]); they are copied head-major into the
 * workspace ([B, H, T, hd] / [B, KVH, T, hd]) so that the query rows of one KV group are one
 * [group*T, hd] matrix: each product is one strided-batched call over B*KVH, and the backward's
 * sums over a group's heads (dk, dv) happen inside the product's reduction. */

/* dst[b, h, t, :] = src[b*T + t, h*hd : (h+1)*hd] (to_heads), or src (+)= dst back (from_heads). */
__global__ void heads_copy_k(float *hm, float *tm, int T, int nh, int hd4, size_t n4, int back, int acc) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n4) return;
    int d = (int)(i % hd4);
    size_t r = i / hd4;
    int t = (int)(r % T);
    size_t bh = r / T;
    int h = (int)(bh % nh);
    size_t b = bh / nh;
    float4 *H4 = reinterpret_cast<float4 *>(hm) + i;
    float4 *T4 = reinterpret_cast<float4 *>(tm) + ((b * T + t) * nh + h) * hd4 + d;
    if (!back) { *H4 = *T4; return; }
    float4 s = *H4;
    if (acc) {
        float4 o = *T4;
        s.x += o.x; s.y += o.y; s.z += o.z; s.w += o.w;
    }
    *T4 = s;
}
static void heads_copy(float *hm, const float *tm, int B, int T, int nh, int hd, int back, int acc) {
    size_t n4 = (size_t)B * T * nh * hd / 4;
    heads_copy_k<<<av_cdiv(n4, 256), 256, 0, av_cuda_stream()>>>(hm, (float *)tm, T, nh, hd / 4, n4, back, acc);
    AV_CU_LAUNCHED("attention head layout");
}

/* dS = P * (dP - rowsum(dP * P)) * scale, written over P. */
__global__ void softmax_bwd_into_p_k(float *P, const float *dP, int S, float scale) {
    __shared__ float sh[32];
    size_t row = blockIdx.x;
    float *p = P + row * S;
    const float *d = dP + row * S;
    float dot = 0.0f;
    for (int s = threadIdx.x; s < S; s += blockDim.x) dot += d[s] * p[s];
    dot = av_block_sum(dot, sh);
    for (int s = threadIdx.x; s < S; s += blockDim.x) p[s] = p[s] * (d[s] - dot) * scale;
}

/* Warp-per-row variants for rows of at most 32 * PER values (8 rows per block): causal softmax in
 * place (row = (seq, head, t), keys 0..t), and dS = P * (dP - rowsum(dP * P)) * scale over P
 * (masked entries, where P is 0, are not read). */
template <int PER>
__global__ void __launch_bounds__(256) softmax_causal_warp_k(float *P, size_t rows, int T, int S) {
    size_t row = (size_t)blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    int n = (int)(row % T) + 1;
    float *p = P + row * S;
    float v[PER], mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        int s = lane + j * 32;
        v[j] = s < n ? p[s] : -INFINITY;
        mx = fmaxf(mx, v[j]);
    }
    mx = av_warp_max(mx);
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        int s = lane + j * 32;
        v[j] = s < n ? expf(v[j] - mx) : 0.0f;
        sum += v[j];
    }
    float inv = 1.0f / av_warp_sum(sum);
#pragma unroll
    for (int j = 0; j < PER; j++) {
        int s = lane + j * 32;
        if (s < S) p[s] = v[j] * inv;
    }
}
template <int PER>
__global__ void __launch_bounds__(256) softmax_bwd_warp_k(float *P, const float *dP, size_t rows, int T, int S, float scale) {
    size_t row = (size_t)blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    int n = (int)(row % T) + 1;
    float *p = P + row * S;
    const float *d = dP + row * S;
    float pv[PER], dv[PER], dot = 0.0f;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        int s = lane + j * 32;
        pv[j] = s < n ? p[s] : 0.0f;
        dv[j] = s < n ? d[s] : 0.0f;
        dot += pv[j] * dv[j];
    }
    dot = av_warp_sum(dot);
#pragma unroll
    for (int j = 0; j < PER; j++) {
        int s = lane + j * 32;
        if (s < S) p[s] = pv[j] * (dv[j] - dot) * scale;
    }
}
static void softmax_rows(float *P, size_t rows, int T) {
    cudaStream_t st = av_cuda_stream();
    unsigned g = av_cdiv(rows, 8);
    if (T <= 128) softmax_causal_warp_k<4><<<g, 256, 0, st>>>(P, rows, T, T);
    else if (T <= 512) softmax_causal_warp_k<16><<<g, 256, 0, st>>>(P, rows, T, T);
    else if (T <= 1024) softmax_causal_warp_k<32><<<g, 256, 0, st>>>(P, rows, T, T);
    else softmax_causal_k<<<(unsigned)rows, 256, 0, st>>>(P, T, T, 0);
    AV_CU_LAUNCHED("attention softmax");
}
static void softmax_bwd_rows(float *P, const float *dP, size_t rows, int T, float scale) {
    cudaStream_t st = av_cuda_stream();
    unsigned g = av_cdiv(rows, 8);
    if (T <= 128) softmax_bwd_warp_k<4><<<g, 256, 0, st>>>(P, dP, rows, T, T, scale);
    else if (T <= 512) softmax_bwd_warp_k<16><<<g, 256, 0, st>>>(P, dP, rows, T, T, scale);
    else if (T <= 1024) softmax_bwd_warp_k<32><<<g, 256, 0, st>>>(P, dP, rows, T, T, scale);
    else softmax_bwd_into_p_k<<<(unsigned)rows, 256, 0, st>>>(P, dP, T, scale);
    AV_CU_LAUNCHED("attention softmax backward");
}

static float *batch_work(float *work, size_t have, size_t need) {
    if (work && have >= need) return work;
    return (float *)av_cuda_scratch(AV_SCR_ATTN, need * sizeof(float));
}

extern "C" void av_cuda_attention_forward_batch_mode(float *out, float *probs, const float *q, const float *k, const float *v, int B, int T,
                                                     int H, int KVH, int hd, float *work, size_t work_floats, int f32) {
    if (B <= 0 || T <= 0) return;
    if (!probs || hd % 4) { /* the per-sequence path */
        for (int b = 0; b < B; b++) {
            size_t r = (size_t)b * T;
            av_cuda_attention_forward_mode(out + r * H * hd, probs ? probs + (size_t)b * H * T * T : NULL, q + r * H * hd, k + r * KVH * hd,
                                           v + r * KVH * hd, T, T, 0, H, KVH, hd, f32);
        }
        return;
    }
    size_t N = (size_t)B * T, qd = (size_t)H * hd, kvd = (size_t)KVH * hd;
    float *w = batch_work(work, work_floats, av_attention_batch_work(B, T, H, KVH, hd));
    if (!w) return;
    float *qh = w, *kh = qh + N * qd, *vh = kh + N * kvd, *oh = vh + N * kvd;
    int group = H / KVH, G = B * KVH;
    float scale = 1.0f / sqrtf((float)hd);
    heads_copy(qh, q, B, T, H, hd, 0, 0);
    heads_copy(kh, k, B, T, KVH, hd, 0, 0);
    heads_copy(vh, v, B, T, KVH, hd, 0, 0);
    /* P_i[group*T, T] = scale Q_i K_i^T */
    sbgemm(f32, CUBLAS_OP_T, CUBLAS_OP_N, T, group * T, hd, scale, kh, hd, (long long)T * hd, qh, hd, (long long)group * T * hd, 0.0f,
           probs, T, (long long)group * T * T, G);
    softmax_rows(probs, (size_t)B * H * T, T);
    /* O_i[group*T, hd] = P_i V_i */
    sbgemm(f32, CUBLAS_OP_N, CUBLAS_OP_N, hd, group * T, T, 1.0f, vh, hd, (long long)T * hd, probs, T, (long long)group * T * T, 0.0f, oh,
           hd, (long long)group * T * hd, G);
    heads_copy(oh, out, B, T, H, hd, 1, 0);
}

extern "C" void av_cuda_attention_backward_batch_mode(float *dq, float *dk, float *dv, const float *dout, float *probs, const float *q,
                                                      const float *k, const float *v, int B, int T, int H, int KVH, int hd, float *work,
                                                      size_t work_floats, int f32) {
    if (B <= 0 || T <= 0) return;
    if (hd % 4) {
        for (int b = B - 1; b >= 0; b--) {
            size_t r = (size_t)b * T, qo = r * H * hd, ko = r * KVH * hd;
            av_cuda_attention_backward_mode(dq ? dq + qo : NULL, dk ? dk + ko : NULL, dv ? dv + ko : NULL, dout + qo,
                                            probs + (size_t)b * H * T * T, q + qo, k + ko, v + ko, T, T, 0, H, KVH, hd, f32);
        }
        return;
    }
    size_t N = (size_t)B * T, qd = (size_t)H * hd, kvd = (size_t)KVH * hd;
    float *w = batch_work(work, work_floats, av_attention_batch_work(B, T, H, KVH, hd));
    if (!w) return;
    float *qh = w, *kh = qh + N * qd, *vh = kh + N * kvd, *doh = vh + N * kvd, *dvh = doh + N * qd, *dkh = dvh + N * kvd;
    float *dqh = doh; /* dO is dead once dP is formed */
    int group = H / KVH, G = B * KVH;
    long long sq = (long long)group * T * hd, sk = (long long)T * hd, sp = (long long)group * T * T;
    float scale = 1.0f / sqrtf((float)hd);
    heads_copy(doh, dout, B, T, H, hd, 0, 0);
    if (dv) { /* dV_i[T, hd] = P_i^T dO_i (the reduction runs over the group's heads too) */
        sbgemm(f32, CUBLAS_OP_N, CUBLAS_OP_T, hd, T, group * T, 1.0f, doh, hd, sq, probs, T, sp, 0.0f, dvh, hd, sk, G);
        heads_copy(dvh, dv, B, T, KVH, hd, 1, 1);
    }
    if (!dq && !dk) return;
    heads_copy(qh, q, B, T, H, hd, 0, 0);
    heads_copy(kh, k, B, T, KVH, hd, 0, 0);
    heads_copy(vh, v, B, T, KVH, hd, 0, 0);
    /* dP = dO V^T in whole-sequence chunks, then dS over P in place */
    size_t per = (size_t)H * T * T;
    int nb = (int)(g_attn_chunk_floats / per); /* dP scratch: whole sequences within the score budget */
    if (nb < 1) nb = 1;
    if (nb > B) nb = B;
    float *dP = (float *)av_cuda_scratch(AV_SCR_ATTN2, (size_t)nb * per * sizeof(float));
    if (!dP) return;
    for (int b0 = 0; b0 < B; b0 += nb) {
        int bn = B - b0 < nb ? B - b0 : nb;
        sbgemm(f32, CUBLAS_OP_T, CUBLAS_OP_N, T, group * T, hd, 1.0f, vh + (size_t)b0 * T * kvd, hd, sk, doh + (size_t)b0 * T * qd, hd, sq,
               0.0f, dP, T, sp, bn * KVH);
        softmax_bwd_rows(probs + (size_t)b0 * per, dP, (size_t)bn * H * T, T, scale);
    }
    if (dk) { /* dK_i[T, hd] = dS_i^T Q_i */
        sbgemm(f32, CUBLAS_OP_N, CUBLAS_OP_T, hd, T, group * T, 1.0f, qh, hd, sq, probs, T, sp, 0.0f, dkh, hd, sk, G);
        heads_copy(dkh, dk, B, T, KVH, hd, 1, 1);
    }
    if (dq) { /* dQ_i[group*T, hd] = dS_i K_i */
        sbgemm(f32, CUBLAS_OP_N, CUBLAS_OP_N, hd, group * T, T, 1.0f, kh, hd, sk, probs, T, sp, 0.0f, dqh, hd, sq, G);
        heads_copy(dqh, dq, B, T, H, hd, 1, 1);
    }
}
