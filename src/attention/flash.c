/* Flash attention on the CPU, forward and backward: causal GQA attention over 64-query x 64-key
 * tiles with an online softmax (forward) and the softmax recomputed from the log-sum-exp (backward),
 * never holding more than one tile of scores. Tile products run on a small register-blocked kernel
 * (AVX-512 or AVX2 where compiled in); threads split (sequence, head, query tile) or (sequence, KV head, key
 * tile), so every output element has one writer. Equal to standard.c within f32 rounding. */
#include <stddef.h>
#include "attention/attention.h"
#include "ops/ops.h"
#include "ops/simd.h"
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define FL_B 64 /* query rows and keys per tile */

/* ------------------------------------------------------------------ tile products */

/* C[m, n] (= or +=) A[m, k] . B[k, n]; row strides lda, ldb, ldc. */
#if defined(__AVX512F__)
/* 4 rows x 64 columns in 16 accumulator registers: per step 4 loads of B, 4 broadcasts of A, 16 FMAs. */
#define FL_ROW(r)                                                                                                                 \
    __m512 c##r##0, c##r##1, c##r##2, c##r##3;                                                                                    \
    if (acc) {                                                                                                                    \
        c##r##0 = _mm512_loadu_ps(C + (size_t)(r) * ldc), c##r##1 = _mm512_loadu_ps(C + (size_t)(r) * ldc + 16);                  \
        c##r##2 = _mm512_loadu_ps(C + (size_t)(r) * ldc + 32), c##r##3 = _mm512_loadu_ps(C + (size_t)(r) * ldc + 48);             \
    } else {                                                                                                                      \
        c##r##0 = c##r##1 = c##r##2 = c##r##3 = _mm512_setzero_ps();                                                              \
    }
#define FL_FMA(r)                                                                                                                 \
    do {                                                                                                                          \
        __m512 a = _mm512_set1_ps(A[(size_t)(r) * lda + p]);                                                                      \
        c##r##0 = _mm512_fmadd_ps(a, b0, c##r##0), c##r##1 = _mm512_fmadd_ps(a, b1, c##r##1);                                     \
        c##r##2 = _mm512_fmadd_ps(a, b2, c##r##2), c##r##3 = _mm512_fmadd_ps(a, b3, c##r##3);                                     \
    } while (0)
#define FL_STORE(r)                                                                                                               \
    do {                                                                                                                          \
        _mm512_storeu_ps(C + (size_t)(r) * ldc, c##r##0), _mm512_storeu_ps(C + (size_t)(r) * ldc + 16, c##r##1);                  \
        _mm512_storeu_ps(C + (size_t)(r) * ldc + 32, c##r##2), _mm512_storeu_ps(C + (size_t)(r) * ldc + 48, c##r##3);             \
    } while (0)
static void mm_4x64(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int k, int acc) {
    FL_ROW(0) FL_ROW(1) FL_ROW(2) FL_ROW(3)
    for (int p = 0; p < k; p++) {
        const float *b = B + (size_t)p * ldb;
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16), b2 = _mm512_loadu_ps(b + 32), b3 = _mm512_loadu_ps(b + 48);
        FL_FMA(0);
        FL_FMA(1);
        FL_FMA(2);
        FL_FMA(3);
    }
    FL_STORE(0);
    FL_STORE(1);
    FL_STORE(2);
    FL_STORE(3);
}
/* One row by n (<= 64) columns, masked: the edges of the tiles. */
static void mm_1xn(float *C, const float *A, const float *B, int ldb, int n, int k, int acc) {
    __mmask16 m[4];
    for (int u = 0; u < 4; u++) {
        int w = n - 16 * u;
        m[u] = w >= 16 ? (__mmask16)0xFFFF : w > 0 ? (__mmask16)((1u << w) - 1) : 0;
    }
    __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
    if (acc) {
        c0 = _mm512_maskz_loadu_ps(m[0], C), c1 = _mm512_maskz_loadu_ps(m[1], C + 16);
        c2 = _mm512_maskz_loadu_ps(m[2], C + 32), c3 = _mm512_maskz_loadu_ps(m[3], C + 48);
    }
    for (int p = 0; p < k; p++) {
        const float *b = B + (size_t)p * ldb;
        __m512 a = _mm512_set1_ps(A[p]);
        c0 = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m[0], b), c0);
        c1 = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m[1], b + 16), c1);
        c2 = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m[2], b + 32), c2);
        c3 = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m[3], b + 48), c3);
    }
    _mm512_mask_storeu_ps(C, m[0], c0);
    _mm512_mask_storeu_ps(C + 16, m[1], c1);
    _mm512_mask_storeu_ps(C + 32, m[2], c2);
    _mm512_mask_storeu_ps(C + 48, m[3], c3);
}
static void mm(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int m, int n, int k, int acc) {
    for (int j = 0; j < n; j += 64) {
        int w = n - j < 64 ? n - j : 64, i = 0;
        if (w == 64)
            for (; i + 4 <= m; i += 4) mm_4x64(C + (size_t)i * ldc + j, ldc, A + (size_t)i * lda, lda, B + j, ldb, k, acc);
        for (; i < m; i++) mm_1xn(C + (size_t)i * ldc + j, A + (size_t)i * lda, B + j, ldb, w, k, acc);
    }
}
#elif defined(__AVX2__) && defined(__FMA__)
/* AVX2 has 16 ymm registers: 4 rows x 16 columns in 8 accumulators, per step 2 loads of B, 4
 * broadcasts of A, 8 FMAs (each element summed in the same order as the AVX-512 kernel). */
#define FL_ROW(r)                                                                                                                 \
    __m256 c##r##0 = acc ? _mm256_loadu_ps(C + (size_t)(r) * ldc) : _mm256_setzero_ps();                                          \
    __m256 c##r##1 = acc ? _mm256_loadu_ps(C + (size_t)(r) * ldc + 8) : _mm256_setzero_ps();
#define FL_FMA(r)                                                                                                                 \
    do {                                                                                                                          \
        __m256 a = _mm256_broadcast_ss(A + (size_t)(r) * lda + p);                                                                \
        c##r##0 = _mm256_fmadd_ps(a, b0, c##r##0), c##r##1 = _mm256_fmadd_ps(a, b1, c##r##1);                                     \
    } while (0)
#define FL_STORE(r) _mm256_storeu_ps(C + (size_t)(r) * ldc, c##r##0), _mm256_storeu_ps(C + (size_t)(r) * ldc + 8, c##r##1)
static void mm_4x16(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int k, int acc) {
    FL_ROW(0) FL_ROW(1) FL_ROW(2) FL_ROW(3)
    for (int p = 0; p < k; p++) {
        const float *b = B + (size_t)p * ldb;
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        FL_FMA(0);
        FL_FMA(1);
        FL_FMA(2);
        FL_FMA(3);
    }
    FL_STORE(0);
    FL_STORE(1);
    FL_STORE(2);
    FL_STORE(3);
}
/* One row by n (<= 16) columns, masked: the edges of the tiles. */
static void mm_1xn(float *C, const float *A, const float *B, int ldb, int n, int k, int acc) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane), m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - 8), lane);
    __m256 c0 = acc ? _mm256_maskload_ps(C, m0) : _mm256_setzero_ps(), c1 = acc ? _mm256_maskload_ps(C + 8, m1) : _mm256_setzero_ps();
    for (int p = 0; p < k; p++) {
        const float *b = B + (size_t)p * ldb;
        __m256 a = _mm256_broadcast_ss(A + p);
        c0 = _mm256_fmadd_ps(a, _mm256_maskload_ps(b, m0), c0);
        c1 = _mm256_fmadd_ps(a, _mm256_maskload_ps(b + 8, m1), c1);
    }
    _mm256_maskstore_ps(C, m0, c0);
    _mm256_maskstore_ps(C + 8, m1, c1);
}
static void mm(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int m, int n, int k, int acc) {
    for (int j = 0; j < n; j += 16) {
        int w = n - j < 16 ? n - j : 16, i = 0;
        if (w == 16)
            for (; i + 4 <= m; i += 4) mm_4x16(C + (size_t)i * ldc + j, ldc, A + (size_t)i * lda, lda, B + j, ldb, k, acc);
        for (; i < m; i++) mm_1xn(C + (size_t)i * ldc + j, A + (size_t)i * lda, B + j, ldb, w, k, acc);
    }
}
#else
static void mm(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int m, int n, int k, int acc) {
    for (int i = 0; i < m; i++) {
        float *c = C + (size_t)i * ldc;
        if (!acc) memset(c, 0, (size_t)n * sizeof(float));
        for (int p = 0; p < k; p++) {
            float a = A[(size_t)i * lda + p];
            const float *b = B + (size_t)p * ldb;
            for (int j = 0; j < n; j++) c[j] += a * b[j];
        }
    }
}
#endif

/* dst[n, m] (row stride ldd) = src[m, n]^T (row stride lds) */
static void transpose(float *dst, int ldd, const float *src, int lds, int m, int n) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) dst[(size_t)j * ldd + i] = src[(size_t)i * lds + j];
}

/* ------------------------------------------------------------------ shared pieces */

/* The call's shape and its inputs. Keys and values (and in the backward q, scaled, and dout) are
 * first packed head-major, [B][heads][rows][hd], so a tile is one contiguous block (a few pages,
 * prefetched in order) instead of 64 rows a whole token-major row apart. */
typedef struct {
    const float *q;                /* token-major q [B*T, H*hd] (the forward loads its tiles from it) */
    const float *Kh, *Vh;          /* [B][KVH][S][hd] */
    const float *Qh, *dOh, *delta; /* backward: scale*q and dout [B][H][T][hd]; delta = dout . out [B][H][T] */
    const float *lse;              /* backward: [B][H][T] */
    int B, T, S, pos0, H, KVH, hd; /* S: key rows per sequence (the batch: T, pos0 0) */
    size_t qs;                     /* row stride of q, out, dout */
    float scale;
} fl_shape;

/* dst[b][h][t][:] = scale * src[(b*T + t)][h*hd ..] for NH heads; shared by the threads of the
 * enclosing parallel region (an orphaned loop: no fork and join of its own) */
static void pack_heads(float *dst, const float *src, int B, int T, int NH, int hd, float scale) {
    size_t rows = (size_t)B * T, ld = (size_t)NH * hd;
#pragma omp for schedule(static)
    for (size_t row = 0; row < rows; row++) {
        size_t b = row / T, t = row % T;
        for (int h = 0; h < NH; h++) {
            float *d = dst + ((b * NH + h) * T + t) * hd;
            const float *x = src + row * ld + (size_t)h * hd;
            for (int i = 0; i < hd; i++) d[i] = x[i] * scale;
        }
    }
}

/* rows s0.. of sequence b, head h of a packed [B][NH][n][hd] array */
static const float *head_rows(const float *x, int b, int h, int NH, int n, int hd, int s0) {
    return x + (((size_t)b * NH + h) * n + s0) * hd;
}

/* Visible keys of row t (position pos0 + t) within the key tile starting at s0 of width bc. */
static int visible(int pos0, int t, int s0, int bc) {
    int n = pos0 + t + 1 - s0;
    return n < 0 ? 0 : n > bc ? bc : n;
}

/* ------------------------------------------------------------------ forward */

/* One (sequence, head, query tile) job: O = softmax(Qs K^T) V over the visible key tiles. */
static void fwd_job(const fl_shape *s, float *out, float *lse, uint16_t *out16, int b, int h, int qb, float *w) {
    int hd = s->hd, kh = h / (s->H / s->KVH), t0 = qb * FL_B, br = s->T - t0 < FL_B ? s->T - t0 : FL_B;
    float *Qs = w, *O = Qs + FL_B * hd, *KT = O + FL_B * hd, *S = KT + FL_B * hd, *m = S + FL_B * FL_B, *l = m + FL_B;
    for (int r = 0; r < br; r++) {
        const float *src = s->q + ((size_t)b * s->T + t0 + r) * s->qs + (size_t)h * hd;
        for (int d = 0; d < hd; d++) Qs[(size_t)r * hd + d] = src[d] * s->scale;
    }
    memset(O, 0, sizeof(float) * br * hd);
    for (int r = 0; r < br; r++) m[r] = -INFINITY, l[r] = 0.0f;
    int kend = s->pos0 + t0 + br; /* keys the tile's last row sees */
    for (int s0 = 0; s0 < kend; s0 += FL_B) {
        int bc = kend - s0 < FL_B ? kend - s0 : FL_B;
        transpose(KT, FL_B, head_rows(s->Kh, b, kh, s->KVH, s->S, hd, s0), hd, bc, hd);
        mm(S, FL_B, Qs, hd, KT, FL_B, br, bc, hd, 0);
        for (int r = 0; r < br; r++) {
            float *sr = S + (size_t)r * FL_B;
            int n = visible(s->pos0, t0 + r, s0, bc);
            if (n > 0) { /* the first tile shows every row key 0: m[r] is finite after it */
                float mx = av_max(sr, n);
                if (mx < m[r]) mx = m[r];
                float corr = expf(m[r] - mx); /* m[r] = -inf on the first tile: 0 */
                float sum = av_exp_sub_sum(sr, mx, n);
                l[r] = l[r] * corr + sum;
                m[r] = mx;
                if (corr != 1.0f) av_scale(O + (size_t)r * hd, corr, hd);
            }
            if (n < bc) memset(sr + n, 0, sizeof(float) * (bc - n));
        }
        mm(O, hd, S, FL_B, head_rows(s->Vh, b, kh, s->KVH, s->S, hd, s0), hd, br, hd, bc, 1);
    }
    for (int r = 0; r < br; r++) {
        size_t row = (size_t)b * s->T + t0 + r;
        float *o = out + row * s->qs + (size_t)h * hd, inv = 1.0f / l[r];
        for (int d = 0; d < hd; d++) o[d] = O[(size_t)r * hd + d] * inv;
        if (out16) av_store_bf16(out16 + row * s->qs + (size_t)h * hd, o, (size_t)hd);
        if (lse) lse[((size_t)b * s->H + h) * s->T + t0 + r] = m[r] + logf(l[r]);
    }
}

/* Floats of per-thread tile scratch (forward, backward) and of the call's packed copies. */
#define FL_PER_FWD(hd) ((size_t)3 * FL_B * (hd) + FL_B * FL_B + 2 * FL_B)
#define FL_PER_BWD(hd) ((size_t)4 * FL_B * (hd) + 3 * FL_B * FL_B)
size_t av_flash_attention_scratch_bytes(int B, int T, int S, int H, int KVH, int hd, int backward) {
    size_t nth = (size_t)omp_get_max_threads(), N = (size_t)B * T;
    size_t f = FL_PER_FWD(hd) * nth + 2 * (size_t)B * S * KVH * hd;
    return sizeof(float) * (backward ? FL_PER_BWD(hd) * nth + 2 * N * H * hd + 2 * N * KVH * hd + N * H : f);
}

/* Every (sequence, head, query tile), the heaviest tiles (most keys) first; -1: out of memory.
 * k, v: S rows per sequence. */
static int flash_fwd(float *out, float *lse, uint16_t *out16, const float *q, const float *k, const float *v, int B, int T, int S, int pos0,
                     int H, int KVH, int hd) {
    int nb = (T + FL_B - 1) / FL_B, nbh = B * H, nth = omp_get_max_threads();
    size_t per = FL_PER_FWD(hd), nkv = (size_t)B * S * KVH * hd;
    float *w = malloc((per * (size_t)nth + 2 * nkv) * sizeof(float));
    if (!w) return -1;
    float *Kh = w + per * (size_t)nth, *Vh = Kh + nkv;
    fl_shape s = {.q = q, .Kh = Kh, .Vh = Vh, .B = B, .T = T, .S = S, .pos0 = pos0, .H = H, .KVH = KVH, .hd = hd, .qs = (size_t)H * hd,
                  .scale = 1.0f / sqrtf((float)hd)};
#pragma omp parallel if ((size_t)nbh * (pos0 + T) > 4096)
    {
        pack_heads(Kh, k, B, S, KVH, hd, 1.0f);
        pack_heads(Vh, v, B, S, KVH, hd, 1.0f);
#pragma omp for schedule(dynamic, 1)
        for (int job = 0; job < nbh * nb; job++) {
            int qb = nb - 1 - job / nbh, bh = job % nbh;
            fwd_job(&s, out, lse, out16, bh / H, bh % H, qb, w + per * (size_t)omp_get_thread_num());
        }
    }
    free(w);
    return 0;
}

void av_flash_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, int T, int S, int pos0,
                                int H, int KVH, int hd) {
    if (T > 0 && flash_fwd(out, lse, NULL, q, k, v, 1, T, S, pos0, H, KVH, hd) != 0) { /* no scratch: the standard attention */
        av_attention_forward(out, NULL, q, k, v, T, S, pos0, H, KVH, hd);
        if (lse) /* its rows' log-sum-exp are not kept: recompute them one row at a time */
            for (int h = 0; h < H; h++)
                for (int t = 0; t < T; t++) {
                    const float *qr = q + (size_t)t * H * hd + (size_t)h * hd;
                    double mx = -INFINITY, sum = 0;
                    int n = pos0 + t + 1, kh = h / (H / KVH);
                    for (int j = 0; j < n; j++) {
                        double d = av_dot_f32(qr, k + (size_t)j * KVH * hd + (size_t)kh * hd, hd) / sqrt((double)hd);
                        if (d > mx) sum = sum * exp(mx - d) + 1, mx = d;
                        else sum += exp(d - mx);
                    }
                    lse[(size_t)h * T + t] = (float)(mx + log(sum));
                }
    }
}

int av_flash_attention_forward_batch(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T, int H, int KVH,
                                     int hd, uint16_t *out16) {
    if (KVH <= 0 || H % KVH || hd <= 0) return -1;
    if (B <= 0 || T <= 0) return 0;
    return flash_fwd(out, lse, out16, q, k, v, B, T, T, 0, H, KVH, hd);
}

/* ------------------------------------------------------------------ backward */

/* One tile's recomputed softmax and its gradient: P = exp(Qs K^T - lse) (0 where masked),
 * dP = dO V^T, dS = P (dP - delta); P and dS are [br, FL_B] with row stride FL_B. Qs, dO, L, delta:
 * the tile's first query row (packed). */
static void tile_grads(float *P, float *dS, const float *Qs, const float *dO, const float *L, const float *delta, const float *KT,
                       const float *VT, int hd, int t0, int s0, int br, int bc) {
    mm(P, FL_B, Qs, hd, KT, FL_B, br, bc, hd, 0);
    mm(dS, FL_B, dO, hd, VT, FL_B, br, bc, hd, 0);
    for (int r = 0; r < br; r++) {
        float *pr = P + (size_t)r * FL_B, *dr = dS + (size_t)r * FL_B;
        int n = visible(0, t0 + r, s0, bc);
        if (n > 0) av_exp_sub_sum(pr, L[r], n);
        if (n < bc) memset(pr + n, 0, sizeof(float) * (bc - n));
        for (int j = 0; j < bc; j++) dr[j] = pr[j] * (dr[j] - delta[r]);
    }
}

/* dst rows (row stride ld) = or += a * src [n, hd] */
static void put_rows(float *dst, size_t ld, const float *src, int n, int hd, float a, int over) {
    for (int r = 0; r < n; r++) {
        float *d = dst + (size_t)r * ld;
        const float *x = src + (size_t)r * hd;
        if (over) for (int i = 0; i < hd; i++) d[i] = a * x[i];
        else av_axpy(d, a, x, hd);
    }
}

/* dK, dV of one (sequence, KV head, key tile): every query head of the group, every query tile at or
 * after the key tile. dV += P^T dO, dK += dS^T Qs (Qs carries the scale). */
static void bwd_kv_job(const fl_shape *s, float *dk, float *dv, int b, int kh, int kb, int over, float *w) {
    int hd = s->hd, T = s->T, group = s->H / s->KVH, s0 = kb * FL_B, bc = T - s0 < FL_B ? T - s0 : FL_B, nb = (T + FL_B - 1) / FL_B;
    float *KT = w, *VT = KT + FL_B * hd, *dK = VT + FL_B * hd, *dV = dK + FL_B * hd, *P = dV + FL_B * hd, *dS = P + FL_B * FL_B,
          *PT = dS + FL_B * FL_B;
    transpose(KT, FL_B, head_rows(s->Kh, b, kh, s->KVH, T, hd, s0), hd, bc, hd);
    transpose(VT, FL_B, head_rows(s->Vh, b, kh, s->KVH, T, hd, s0), hd, bc, hd);
    memset(dK, 0, sizeof(float) * bc * hd);
    memset(dV, 0, sizeof(float) * bc * hd);
    for (int h = kh * group; h < (kh + 1) * group; h++)
        for (int qb = kb; qb < nb; qb++) {
            int t0 = qb * FL_B, br = T - t0 < FL_B ? T - t0 : FL_B;
            const float *Qs = head_rows(s->Qh, b, h, s->H, T, hd, t0), *dO = head_rows(s->dOh, b, h, s->H, T, hd, t0);
            size_t r0 = ((size_t)b * s->H + h) * T + t0;
            tile_grads(P, dS, Qs, dO, s->lse + r0, s->delta + r0, KT, VT, hd, t0, s0, br, bc);
            transpose(PT, FL_B, P, FL_B, br, bc);
            mm(dV, hd, PT, FL_B, dO, hd, bc, hd, br, 1);
            transpose(PT, FL_B, dS, FL_B, br, bc);
            mm(dK, hd, PT, FL_B, Qs, hd, bc, hd, br, 1);
        }
    size_t row = (size_t)b * T + s0, ks = (size_t)s->KVH * hd;
    put_rows(dk + row * ks + (size_t)kh * hd, ks, dK, bc, hd, 1.0f, over);
    put_rows(dv + row * ks + (size_t)kh * hd, ks, dV, bc, hd, 1.0f, over);
}

/* dQ of one (sequence, head, query tile): dQ += scale dS K over the key tiles up to the diagonal. */
static void bwd_q_job(const fl_shape *s, float *dq, int b, int h, int qb, int over, float *w) {
    int hd = s->hd, T = s->T, kh = h / (s->H / s->KVH), t0 = qb * FL_B, br = T - t0 < FL_B ? T - t0 : FL_B;
    float *KT = w, *VT = KT + FL_B * hd, *dQ = VT + FL_B * hd, *P = dQ + FL_B * hd, *dS = P + FL_B * FL_B;
    const float *Qs = head_rows(s->Qh, b, h, s->H, T, hd, t0), *dO = head_rows(s->dOh, b, h, s->H, T, hd, t0);
    size_t r0 = ((size_t)b * s->H + h) * T + t0;
    memset(dQ, 0, sizeof(float) * br * hd);
    for (int kb = 0; kb <= qb; kb++) {
        int s0 = kb * FL_B, bc = T - s0 < FL_B ? T - s0 : FL_B;
        const float *K = head_rows(s->Kh, b, kh, s->KVH, T, hd, s0);
        transpose(KT, FL_B, K, hd, bc, hd);
        transpose(VT, FL_B, head_rows(s->Vh, b, kh, s->KVH, T, hd, s0), hd, bc, hd);
        tile_grads(P, dS, Qs, dO, s->lse + r0, s->delta + r0, KT, VT, hd, t0, s0, br, bc);
        mm(dQ, hd, dS, FL_B, K, hd, br, hd, bc, 1);
    }
    put_rows(dq + ((size_t)b * T + t0) * s->qs + (size_t)h * hd, s->qs, dQ, br, hd, s->scale, over);
}

int av_flash_attention_backward_batch(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse, const float *q,
                                      const float *k, const float *v, int B, int T, int H, int KVH, int hd, const int32_t *rope_pos,
                                      const float *inv_freq, uint16_t *d16) {
    if (KVH <= 0 || H % KVH || hd <= 0) return -1;
    if (B <= 0 || T <= 0) return 0;
    int over = rope_pos && inv_freq, nb = (T + FL_B - 1) / FL_B, nbk = B * KVH, nbh = B * H, nth = omp_get_max_threads();
    size_t N = (size_t)B * T, per = FL_PER_BWD(hd), nq = N * H * hd, nkv = N * KVH * hd;
    float *w = malloc((per * (size_t)nth + 2 * nq + 2 * nkv + N * H) * sizeof(float));
    if (!w) return -1;
    float *Qh = w + per * (size_t)nth, *dOh = Qh + nq, *Kh = dOh + nq, *Vh = Kh + nkv, *delta = Vh + nkv;
    fl_shape s = {.Kh = Kh, .Vh = Vh, .Qh = Qh, .dOh = dOh, .delta = delta, .lse = lse, .B = B, .T = T, .S = T, .H = H, .KVH = KVH,
                  .hd = hd, .qs = (size_t)H * hd, .scale = 1.0f / sqrtf((float)hd)};
    int par = (size_t)nbh * T > 4096;
#pragma omp parallel if (par)
    {
        float *mine = w + per * (size_t)omp_get_thread_num();
        pack_heads(Qh, q, B, T, H, hd, s.scale);
        pack_heads(dOh, dout, B, T, H, hd, 1.0f);
        pack_heads(Kh, k, B, T, KVH, hd, 1.0f);
        pack_heads(Vh, v, B, T, KVH, hd, 1.0f);
#pragma omp for schedule(static)
        for (size_t i = 0; i < N * H; i++) { /* delta in lse's [B][H][T] order */
            size_t b = i / ((size_t)H * T), h = i / T % H, t = i % T, off = (b * T + t) * s.qs + h * hd;
            delta[i] = av_dot_f32(dout + off, out + off, hd);
        }
#pragma omp for schedule(dynamic, 1)
        for (int job = 0; job < nbk * nb; job++) { /* key tile 0 (most query tiles) first */
            int kb = job / nbk, bk = job % nbk;
            bwd_kv_job(&s, dk, dv, bk / KVH, bk % KVH, kb, over, mine);
        }
#pragma omp for schedule(dynamic, 1)
        for (int job = 0; job < nbh * nb; job++) { /* query tile nb-1 (most key tiles) first */
            int qb = nb - 1 - job / nbh, bh = job % nbh;
            bwd_q_job(&s, dq, bh / H, bh % H, qb, over, mine);
        }
    }
    free(w);
    if (over) {
        av_rope_backward(dq, rope_pos, inv_freq, (int)N, H, hd);
        av_rope_backward(dk, rope_pos, inv_freq, (int)N, KVH, hd);
        if (d16) {
            av_store_bf16(d16, dq, nq);
            av_store_bf16(d16 + nq, dk, nkv);
            av_store_bf16(d16 + nq + nkv, dv, nkv);
        }
    }
    return 0;
}
