/* CUDA twin of standard.c (causal GQA attention, forward and backward) for prefill and training. Few
 * query rows without saved probs: one block per (head, row) with an online softmax over the keys.
 * Otherwise the materialised form: scores and P V as strided-batched cuBLAS products (f32, or TF32
 * in bf16 mode), a masked softmax kernel between; the backward is the same products transposed. */
#include "attention/attn_rows.cuh"
extern "C" {
#include "backend/cuda.h"
#include "attention/attention.h"
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
                                                                  (size_t)H * hd, (size_t)KVH * hd, 0, 0);
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
