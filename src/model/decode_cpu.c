/* CPU decode in one OpenMP parallel region per step (all layers, the final norm and the LM head).
 * The threads stay in the region; each stage splits its rows in chunks handed out dynamically from
 * an atomic counter (a thread that loses its core to another process costs its share of rows, not
 * a stall) and ends in the one barrier its consumer needs, five per layer. The barrier is our own:
 * a short spin, then a futex sleep, so a thread waiting for a preempted partner gives its core
 * back (libgomp's default spins ~300k iterations: 2-3x slower decode when the cores are shared):
 *   1. q|k|v: every thread RMSNorms x itself (private copy, no barrier), then takes one head's rows at
 *      a time; RoPE in the store; k and v go straight into the cache row      -> barrier
 *   2. attention: (row, head) jobs over the cached keys                        -> barrier
 *   3. o: rows of x, x += o(att) in the store                                  -> barrier
 *   4. gate|up: private RMSNorm of x, chunks of j take gate row j and up row j, SwiGLU in the
 *      store                                                                   -> barrier
 *   5. down: rows of x, x += down(act)                                         -> barrier
 * then the final RMSNorm (private) and the LM head's rows. Each product calls the single-threaded
 * row-range kernel av_matvec_rows (any weight dtype). The arithmetic is that of the op-by-op path
 * (rmsnorm.c, rope.c, standard.c, swiglu.c): the same formulas in the same order. */
#include "model/decode_cpu.h"
#include "attention/kv_ring.h"
#include "ops/simd.h"
#include "quant/qmatmul.h"
#include <limits.h>
#include <omp.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define OCH 64  /* rows of x per chunk of the o / down products (32 -> 64 and GCH 32 -> 128: decode +3-7%, NOTES-cpu.md) */
#define GCH 128 /* SwiGLU outputs per gate|up chunk (multiple of 16: the vector exp's blocks) */
#define LCH 128 /* LM head rows per chunk */

#define SPIN 2000 /* pause iterations before a barrier waiter sleeps */

/* A thread's x prepared for quantized products (quant/qmatmul.h), once per stage: every product of
 * a stage reads the same x, so a thread prepares it on its first chunk of the stage (again only if a
 * projection of the stage has other bits or group size). */
typedef struct {
    void *buf;
    size_t cap;
    int stage, bits, group;
    av_qx qx;
} qx_cache;

/* out[t * ldo + (r - r0)] = x_t . W row r for r in [r0, r1): av_matvec_rows, or the quantized
 * kernels on x prepared for this stage (x rows are W->cols apart, as every decode stage has them). */
static void mv(qx_cache *qc, int stage, float *out, size_t ldo, const float *x, size_t ldx, int nx, const av_mat *W, int r0, int r1) {
    if (W->q_bits && ldx == (size_t)W->cols) {
        if (qc->stage != stage || qc->bits != W->q_bits || qc->group != W->q_group) {
            size_t need = av_qx_size(nx, W);
            if (need > qc->cap) {
                free(qc->buf);
                qc->buf = aligned_alloc(64, (need + 63) / 64 * 64);
                qc->cap = qc->buf ? need : 0;
                qc->stage = -1;
            }
            if (qc->buf) {
                av_qx_prepare(&qc->qx, qc->buf, x, nx, W);
                qc->stage = stage, qc->bits = W->q_bits, qc->group = W->q_group;
            }
        }
        if (qc->stage == stage) {
            av_qmatmul_rows(out, ldo, &qc->qx, W, r0, r1);
            return;
        }
    }
    av_matvec_rows(out, ldo, x, ldx, nx, W, r0, r1);
}

/* Centralized barrier of the region's nt threads: the last arrival bumps the generation and wakes
 * the sleepers. A waiter counts itself in `sleepers` before it sleeps on the generation word (the
 * futex rechecks the word, so a wake between the two is never lost). */
typedef struct {
    _Atomic int count, sleepers;
    _Atomic unsigned gen;
} dec_barrier;

static void bar_sleep(_Atomic unsigned *w, unsigned g) {
#ifdef __linux__
    syscall(SYS_futex, (void *)w, FUTEX_WAIT_PRIVATE, g, NULL, NULL, 0);
#else
    (void)w, (void)g;
    sched_yield();
#endif
}

static void bar_wake(_Atomic unsigned *w) {
#ifdef __linux__
    syscall(SYS_futex, (void *)w, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    (void)w;
#endif
}

static void bar_wait(dec_barrier *b, int nt) {
    if (nt <= 1) return;
    unsigned g = atomic_load(&b->gen);
    if (atomic_fetch_add(&b->count, 1) == nt - 1) {
        atomic_store(&b->count, 0);
        atomic_fetch_add(&b->gen, 1);
        if (atomic_load(&b->sleepers)) bar_wake(&b->gen);
        return;
    }
    for (int i = 0; i < SPIN; i++) {
        if (atomic_load_explicit(&b->gen, memory_order_acquire) != g) return;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    atomic_fetch_add(&b->sleepers, 1);
    while (atomic_load(&b->gen) == g) bar_sleep(&b->gen, g);
    atomic_fetch_sub(&b->sleepers, 1);
}

static inline float wval(const av_mat *w, int i) {
    switch (w->dtype) {
    case AV_BF16: return av_bf16_to_f32(((const uint16_t *)w->data)[i]);
    case AV_F16: return av_f16_to_f32(((const uint16_t *)w->data)[i]);
    default: return ((const float *)w->data)[i];
    }
}

/* rmsnorm.c's forward for N rows (one thread) */
static void norm_rows(float *out, const float *x, const av_mat *w, int N, int D, float eps) {
    for (int t = 0; t < N; t++) {
        const float *xr = x + (size_t)t * D;
        float *o = out + (size_t)t * D;
        float ss = 0;
        for (int i = 0; i < D; i++) ss += xr[i] * xr[i];
        float r = 1.0f / sqrtf(ss / (float)D + eps);
        for (int i = 0; i < D; i++) o[i] = wval(w, i) * (xr[i] * r);
    }
}

/* Attention of hb query heads of one KV group (q, o: the first head's, heads hd apart) over n cached
 * rows ki/vi (kvd apart): standard.c's one-row loop per head (av_dot_f32 scores, softmax, av_axpy
 * sums), the same operations in the same order, bit for bit, but each K and V row is loaded once for
 * all hb heads and the output sums stay in registers (blocks of 16 / C heads). hd = 16 * C, C 2/4/8.
 * sc: hb rows of `stride` scores. */
#if defined(__AVX512F__)
static inline __attribute__((always_inline)) void attend_group(float *o, const float *q, const float *ki, const float *vi, size_t kvd,
                                                               int n, int hb, float scale, float *sc, int stride, const int C) {
    const int hd = 16 * C;
    for (int s = 0; s < n; s++) {
        const float *kr = ki + (size_t)s * kvd;
        for (int j = 0; j < hb; j++) {
            const float *qj = q + (size_t)j * hd;
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
            for (int c = 0; c < C; c += 2) {
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qj + 16 * c), _mm512_loadu_ps(kr + 16 * c), a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(qj + 16 * c + 16), _mm512_loadu_ps(kr + 16 * c + 16), a1);
            }
            sc[(size_t)j * stride + s] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) * scale;
        }
    }
    for (int j = 0; j < hb; j++) {
        float *p = sc + (size_t)j * stride;
        float mx = av_max(p, n);
        float inv = 1.0f / av_exp_sub_sum(p, mx, n);
        for (int s = 0; s < n; s++) p[s] *= inv;
    }
    const int HB = 16 / C; /* heads whose sums fit in 16 registers */
    for (int j0 = 0; j0 < hb; j0 += HB) {
        int nb = hb - j0 < HB ? hb - j0 : HB;
        __m512 acc[8][8];
        for (int jj = 0; jj < HB; jj++)
            for (int c = 0; c < C; c++) acc[jj][c] = _mm512_setzero_ps();
        for (int s = 0; s < n; s++) {
            const float *vr = vi + (size_t)s * kvd;
            for (int c = 0; c < C; c++) {
                __m512 vv = _mm512_loadu_ps(vr + 16 * c);
                for (int jj = 0; jj < HB; jj++)
                    if (jj < nb) acc[jj][c] = _mm512_fmadd_ps(_mm512_set1_ps(sc[(size_t)(j0 + jj) * stride + s]), vv, acc[jj][c]);
            }
        }
        for (int jj = 0; jj < nb; jj++)
            for (int c = 0; c < C; c++) _mm512_storeu_ps(o + (size_t)(j0 + jj) * hd + 16 * c, acc[jj][c]);
    }
}
#endif

/* swiglu.c's forward over n values (n0 of the caller's row a multiple of 16) */
static void swiglu_span(float *out, const float *g, const float *u, int n) {
    int i = 0;
#if defined(__AVX512F__)
    __m512 one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= n; i += 16) {
        __m512 gv = _mm512_loadu_ps(g + i);
        __m512 e = av_exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_div_ps(gv, _mm512_add_ps(one, e)), _mm512_loadu_ps(u + i)));
    }
#endif
    for (; i < n; i++) out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* rope.c's rotation of one head by the row's cos/sin table */
static void rope_head(float *v, const float *c, const float *s, int half) {
    for (int i = 0; i < half; i++) {
        float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
    }
}

static int suits(const av_model *m, const av_layer_ws *ws, int N) {
    const av_config *c = &m->cfg;
    if (N < 1 || N > AV_DECODE_CPU_MAX_ROWS || !ws->k_cache || !ws->v_cache || !ws->q || !ws->att || !ws->gate) return 0;
    if (ws->kind != AV_ROWS_DECODE && !(ws->kind == AV_ROWS_PREFILL && N == 1)) return 0;
    if (c->head_dim % 2 || c->head_dim > 512 || c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads) return 0;
    for (int l = 0; l < c->n_layers; l++) {
        const av_layer *L = &m->layers[l];
        const av_linear *p[7] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (int i = 0; i < 7; i++)
            if (p[i]->lora_a) return 0;
    }
    return 1;
}

int av_llama_decode_cpu(const av_model *m, av_layer_ws *ws, float *x, float *hidden, float *logits) {
    const av_config *c = &m->cfg;
    int N = ws->B * ws->T;
    if (!suits(m, ws, N)) return 0;
    int D = c->hidden_size, F = c->intermediate_size, H = c->n_heads, KVH = c->n_kv_heads, hd = c->head_dim, half = hd / 2,
        V = c->vocab_size, NL = c->n_layers, group = H / KVH;
    size_t qd = (size_t)H * hd, kvd = (size_t)KVH * hd;
    const int32_t *pos = ws->pos;
    int maxp = 0; /* the most rows a row attends, less one */
    for (int i = 0; i < N; i++) {
        int n = av_kv_ring_rows(pos[i], ws->ring);
        maxp = n - 1 > maxp ? n - 1 : maxp;
    }
    /* per thread: the normed rows [N, D], one chunk's products [N, max(hd, OCH, 2 GCH, LCH)], the
     * rows' RoPE tables [N, hd], attention scores [hb, maxp + 1] */
    int wide = hd > 2 * GCH ? hd : 2 * GCH;
    wide = wide > LCH ? wide : LCH;
    /* attention jobs: hb query heads of one KV group (sharing its K/V reads), halved while there
     * are fewer than 4 jobs a thread */
    int nth = omp_get_max_threads(), hb = group;
    while (hb % 2 == 0 && N * H / hb < 4 * nth) hb /= 2;
    size_t per = (size_t)N * D + (size_t)N * wide + (size_t)N * hd + (size_t)hb * ((size_t)maxp + 1);
    per = (per + 15) / 16 * 16;
    int nstage = 5 * c->n_layers + 1;
    float *scr = malloc(sizeof(float) * per * (size_t)nth);
    _Atomic int *next = malloc(sizeof(_Atomic int) * (size_t)nstage); /* each stage's next chunk */
    if (!scr || !next) {
        free(scr);
        free(next);
        return 0;
    }
    for (int i = 0; i < nstage; i++) atomic_init(&next[i], 0);
    dec_barrier bar;
    atomic_init(&bar.count, 0);
    atomic_init(&bar.sleepers, 0);
    atomic_init(&bar.gen, 0u);
    float scale = 1.0f / sqrtf((float)hd);
    float *q = ws->q, *att = ws->att, *act = ws->gate;
    int nqkv = H + 2 * KVH, no = (D + OCH - 1) / OCH, ngu = (F + GCH - 1) / GCH, nlm = (V + LCH - 1) / LCH;
#pragma omp parallel num_threads(nth)
    {
        int nt = omp_get_num_threads(), st = 0;
        qx_cache qc = {.stage = -1};
        float *xn = scr + per * (size_t)omp_get_thread_num(), *tmp = xn + (size_t)N * D, *cs = tmp + (size_t)N * wide,
              *sc = cs + (size_t)N * hd;
        for (int i = 0; i < N; i++) /* rope.c's tables: cos | sin of pos * inv_freq */
            for (int j = 0; j < half; j++) {
                float a = (float)pos[i] * m->inv_freq[j];
                cs[(size_t)i * hd + j] = cosf(a);
                cs[(size_t)i * hd + half + j] = sinf(a);
            }
        for (int l = 0; l < NL; l++) {
            const av_layer *L = &m->layers[l];
            float *kc = ws->k_cache + (size_t)l * ws->layer_stride, *vc = ws->v_cache + (size_t)l * ws->layer_stride;
            /* 1. q|k|v, one head per chunk */
            norm_rows(xn, x, &L->attn_norm, N, D, c->rms_norm_eps);
            for (int h; (h = atomic_fetch_add(&next[st], 1)) < nqkv;) {
                const av_mat *W = h < H ? &L->q.w : h < H + KVH ? &L->k.w : &L->v.w;
                int hh = h < H ? h : h < H + KVH ? h - H : h - H - KVH;
                mv(&qc, st, tmp, (size_t)hd, xn, (size_t)D, N, W, hh * hd, (hh + 1) * hd);
                for (int i = 0; i < N; i++) {
                    float *o = tmp + (size_t)i * hd;
                    if (h < H + KVH) rope_head(o, cs + (size_t)i * hd, cs + (size_t)i * hd + half, half);
                    if (h < H) {
                        memcpy(q + (size_t)i * qd + (size_t)hh * hd, o, sizeof(float) * (size_t)hd);
                        continue;
                    }
                    int p = pos[i], slot = av_kv_ring_slot(p, ws->ring_keep, ws->ring);
                    if (p < 0 || (ws->seq_stride && (size_t)(slot + 1) * kvd > ws->seq_stride)) continue;
                    float *dst = (h < H + KVH ? kc : vc) + (size_t)i * ws->seq_stride + (size_t)slot * kvd + (size_t)hh * hd;
                    memcpy(dst, o, sizeof(float) * (size_t)hd);
                }
            }
            bar_wait(&bar, nt);
            st++;
            /* 2. attention (standard.c's one-row loop): jobs of hb heads of one KV group */
            for (int j; (j = atomic_fetch_add(&next[st], 1)) < N * H / hb;) {
                int i = j / (H / hb), h0 = j % (H / hb) * hb, kh = h0 / group, p = pos[i], n = av_kv_ring_rows(p, ws->ring);
                int slot = av_kv_ring_slot(p, ws->ring_keep, ws->ring), end = n > slot + 1 ? n : slot + 1;
                float *o = att + (size_t)i * qd + (size_t)h0 * hd;
                if (p < 0 || (ws->seq_stride && (size_t)end * kvd > ws->seq_stride)) {
                    memset(o, 0, sizeof(float) * (size_t)hd * (size_t)hb);
                    continue;
                }
                const float *qr = q + (size_t)i * qd + (size_t)h0 * hd;
                const float *ki = kc + (size_t)i * ws->seq_stride + (size_t)kh * hd, *vi = vc + (size_t)i * ws->seq_stride + (size_t)kh * hd;
#if defined(__AVX512F__)
                if (hd == 64) { attend_group(o, qr, ki, vi, kvd, n, hb, scale, sc, maxp + 1, 4); continue; }
                if (hd == 128) { attend_group(o, qr, ki, vi, kvd, n, hb, scale, sc, maxp + 1, 8); continue; }
                if (hd == 32) { attend_group(o, qr, ki, vi, kvd, n, hb, scale, sc, maxp + 1, 2); continue; }
#endif
                for (int hj = 0; hj < hb; hj++) {
                    const float *qh = qr + (size_t)hj * hd;
                    float *oh = o + (size_t)hj * hd;
                    for (int s = 0; s < n; s++) sc[s] = av_dot_f32(qh, ki + (size_t)s * kvd, hd) * scale;
                    float mx = av_max(sc, n);
                    float inv = 1.0f / av_exp_sub_sum(sc, mx, n);
                    memset(oh, 0, sizeof(float) * (size_t)hd);
                    for (int s = 0; s < n; s++) {
                        sc[s] *= inv;
                        av_axpy(oh, sc[s], vi + (size_t)s * kvd, hd);
                    }
                }
            }
            bar_wait(&bar, nt);
            st++;
            /* 3. x += o(att) */
            for (int ch; (ch = atomic_fetch_add(&next[st], 1)) < no;) {
                int r0 = ch * OCH, r1 = r0 + OCH < D ? r0 + OCH : D;
                mv(&qc, st, tmp, OCH, att, qd, N, &L->o.w, r0, r1);
                for (int i = 0; i < N; i++)
                    for (int r = r0; r < r1; r++) x[(size_t)i * D + r] += tmp[(size_t)i * OCH + r - r0];
            }
            bar_wait(&bar, nt);
            st++;
            /* 4. act = SwiGLU(gate, up) of the normed x */
            norm_rows(xn, x, &L->mlp_norm, N, D, c->rms_norm_eps);
            for (int ch; (ch = atomic_fetch_add(&next[st], 1)) < ngu;) {
                int j0 = ch * GCH, j1 = j0 + GCH < F ? j0 + GCH : F;
                mv(&qc, st, tmp, 2 * GCH, xn, (size_t)D, N, &L->gate.w, j0, j1);
                mv(&qc, st, tmp + GCH, 2 * GCH, xn, (size_t)D, N, &L->up.w, j0, j1);
                for (int i = 0; i < N; i++)
                    swiglu_span(act + (size_t)i * F + j0, tmp + (size_t)i * 2 * GCH, tmp + (size_t)i * 2 * GCH + GCH, j1 - j0);
            }
            bar_wait(&bar, nt);
            st++;
            /* 5. x += down(act) */
            for (int ch; (ch = atomic_fetch_add(&next[st], 1)) < no;) {
                int r0 = ch * OCH, r1 = r0 + OCH < D ? r0 + OCH : D;
                mv(&qc, st, tmp, OCH, act, (size_t)F, N, &L->down.w, r0, r1);
                for (int i = 0; i < N; i++)
                    for (int r = r0; r < r1; r++) x[(size_t)i * D + r] += tmp[(size_t)i * OCH + r - r0];
            }
            bar_wait(&bar, nt);
            st++;
        }
        if (hidden || logits) {
            norm_rows(xn, x, &m->final_norm, N, D, c->rms_norm_eps);
            if (hidden && omp_get_thread_num() == 0) memcpy(hidden, xn, sizeof(float) * (size_t)N * D);
        }
        if (logits) {
            for (int ch; (ch = atomic_fetch_add(&next[st], 1)) < nlm;) {
                int r0 = ch * LCH, r1 = r0 + LCH < V ? r0 + LCH : V;
                mv(&qc, st, logits + r0, (size_t)V, xn, (size_t)D, N, &m->lm_head, r0, r1);
            }
        }
        free(qc.buf);
    }
    free(scr);
    free(next);
    return 1;
}
