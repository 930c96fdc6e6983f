/* Standard (materialised-softmax) causal attention with GQA, forward and backward. The reference
 * implementation that faster kernels (flash, CUDA) are checked against. */
#include "attention/attention.h"
#include "ops/simd.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef AV_HAVE_BLAS
#include <cblas.h>
#endif

/* Blocked prefill path: for each query head and block of BT query rows, scores = Q_blk K^T over the keys
 * the block can see (one sgemm), causal mask + softmax per row (vectorised exp), out_blk = P V (one
 * sgemm). Threads split heads; BLAS called inside the parallel region runs single-threaded. */
#define ATT_BT 64
#ifdef AV_HAVE_BLAS
static void attention_blocked(float *out, float *probs, const float *q, const float *k, const float *v, int T, int S, int pos0,
                              int H, int KVH, int hd) {
    int group = H / KVH, qs = H * hd, ks = KVH * hd, nb = (T + ATT_BT - 1) / ATT_BT;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel
    {
        float *sc = malloc((size_t)ATT_BT * S * sizeof(float));
#pragma omp for schedule(dynamic, 1)
        for (int job = 0; job < H * nb; job++) {
            if (!sc) continue;
            int h = job / nb, b = nb - 1 - job % nb; /* biggest blocks first */
            int kh = h / group, t0 = b * ATT_BT, bt = T - t0 < ATT_BT ? T - t0 : ATT_BT, nmax = pos0 + t0 + bt;
            const float *qb = q + (size_t)t0 * qs + (size_t)h * hd, *kb = k + (size_t)kh * hd, *vb = v + (size_t)kh * hd;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bt, nmax, hd, scale, qb, qs, kb, ks, 0.0f, sc, nmax);
            for (int r = 0; r < bt; r++) {
                float *p = sc + (size_t)r * nmax;
                int n = pos0 + t0 + r + 1;
                float mx = av_max(p, n);
                float sum = av_exp_sub_sum(p, mx, n);
                av_scale(p, 1.0f / sum, n);
                if (n < nmax) memset(p + n, 0, (size_t)(nmax - n) * sizeof(float));
                if (probs) {
                    float *pr = probs + ((size_t)h * T + t0 + r) * S;
                    memcpy(pr, p, (size_t)n * sizeof(float));
                    memset(pr + n, 0, (size_t)(S - n) * sizeof(float));
                }
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bt, hd, nmax, 1.0f, sc, nmax, vb, ks, 0.0f,
                        out + (size_t)t0 * qs + (size_t)h * hd, qs);
        }
        free(sc);
    }
}
#endif

void av_attention_forward(float *out, float *probs, const float *q, const float *k, const float *v, int T, int S, int pos0,
                          int H, int KVH, int hd) {
#ifdef AV_HAVE_BLAS
    if (T >= 16) { attention_blocked(out, probs, q, k, v, T, S, pos0, H, KVH, hd); return; }
#endif
    int group = H / KVH, qs = H * hd, ks = KVH * hd;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel if (H * (pos0 + T) > 4096)
    {
        float *p = malloc((size_t)S * sizeof(float));
#pragma omp for collapse(2) schedule(static)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                if (!p) continue;
                int kh = h / group, n = pos0 + t + 1;
                const float *qr = q + (size_t)t * qs + (size_t)h * hd;
                for (int s = 0; s < n; s++) p[s] = av_dot_f32(qr, k + (size_t)s * ks + (size_t)kh * hd, hd) * scale;
                float mx = av_max(p, n);
                float inv = 1.0f / av_exp_sub_sum(p, mx, n);
                float *o = out + (size_t)t * qs + (size_t)h * hd;
                memset(o, 0, (size_t)hd * sizeof(float));
                for (int s = 0; s < n; s++) {
                    p[s] *= inv;
                    av_axpy(o, p[s], v + (size_t)s * ks + (size_t)kh * hd, hd);
                }
                if (probs) {
                    float *pr = probs + ((size_t)h * T + t) * S;
                    memcpy(pr, p, (size_t)n * sizeof(float));
                    memset(pr + n, 0, (size_t)(S - n) * sizeof(float));
                }
            }
        free(p);
    }
}

/* o = P V, P = softmax(scale * q k^T):  dP = dO V^T; dS = P * (dP - rowsum(dP * P)); dq = scale dS K;
 * dk = scale dS^T q; dv = P^T dO. KV heads shared by a group accumulate from every query head. */
void av_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *probs, const float *q,
                           const float *k, const float *v, int T, int S, int pos0, int H, int KVH, int hd) {
    int group = H / KVH, qs = H * hd, ks = KVH * hd;
    float scale = 1.0f / sqrtf((float)hd);
    /* parallel over KV heads so dk/dv writes never collide */
#pragma omp parallel
    {
        float *ds = malloc((size_t)S * sizeof(float));
#pragma omp for schedule(static)
        for (int kh = 0; kh < KVH; kh++) {
            if (!ds) continue;
            for (int h = kh * group; h < (kh + 1) * group; h++)
                for (int t = 0; t < T; t++) {
                    int n = pos0 + t + 1;
                    const float *pr = probs + ((size_t)h * T + t) * S;
                    const float *go = dout + (size_t)t * qs + (size_t)h * hd;
                    float dot = 0;
                    for (int s = 0; s < n; s++) {
                        ds[s] = av_dot_f32(go, v + (size_t)s * ks + (size_t)kh * hd, hd);
                        dot += ds[s] * pr[s];
                    }
                    const float *qr = q + (size_t)t * qs + (size_t)h * hd;
                    float *dqr = dq ? dq + (size_t)t * qs + (size_t)h * hd : NULL;
                    for (int s = 0; s < n; s++) {
                        float g = pr[s] * (ds[s] - dot) * scale;
                        if (dqr) av_axpy(dqr, g, k + (size_t)s * ks + (size_t)kh * hd, hd);
                        if (dk) av_axpy(dk + (size_t)s * ks + (size_t)kh * hd, g, qr, hd);
                        if (dv) av_axpy(dv + (size_t)s * ks + (size_t)kh * hd, pr[s], go, hd);
                    }
                }
        }
        free(ds);
    }
}

size_t av_attention_batch_work(int B, int T, int H, int KVH, int hd) {
    return (size_t)B * T * (2 * (size_t)H * hd + 4 * (size_t)KVH * hd);
}

void av_attention_forward_batch(float *out, float *probs, const float *q, const float *k, const float *v, int B, int T, int H, int KVH,
                                int hd, float *work, size_t work_floats) {
    (void)work;
    (void)work_floats;
    size_t qd = (size_t)H * hd, kvd = (size_t)KVH * hd;
    for (int b = 0; b < B; b++) {
        size_t r = (size_t)b * T;
        av_attention_forward(out + r * qd, probs ? probs + (size_t)b * H * T * T : NULL, q + r * qd, k + r * kvd, v + r * kvd, T, T, 0, H,
                             KVH, hd);
    }
}

void av_attention_backward_batch(float *dq, float *dk, float *dv, const float *dout, float *probs, const float *q, const float *k,
                                 const float *v, int B, int T, int H, int KVH, int hd, float *work, size_t work_floats) {
    (void)work;
    (void)work_floats;
    size_t qd = (size_t)H * hd, kvd = (size_t)KVH * hd;
    for (int b = B - 1; b >= 0; b--) {
        size_t r = (size_t)b * T;
        av_attention_backward(dq ? dq + r * qd : NULL, dk ? dk + r * kvd : NULL, dv ? dv + r * kvd : NULL, dout + r * qd,
                              probs + (size_t)b * H * T * T, q + r * qd, k + r * kvd, v + r * kvd, T, T, 0, H, KVH, hd);
    }
}
