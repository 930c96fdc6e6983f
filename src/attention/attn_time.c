/* Kernel-level timing of the attention implementations (anvil bench --suite attention): one
 * backend's training attention (standard: materialised probabilities; flash: tiled, lse only) on
 * random inputs, forward or forward + backward, median wall time over reps and the bytes of the
 * buffers the attention call owns (allocated with the backend's own allocator). Flash makes
 * training's calls: q, k, v in bf16 where the backend has that entry (its bf16-saved activations),
 * RoPE positions (the backward overwrites dq, dk, dv, rotating dq and dk back) and, on a table that
 * computes in bf16, the bf16 copies of out and of the gradients that its products read. With
 * AV_ATTN_TIME_BF16_IO: PyTorch's contract instead (out, dout and the gradients in bf16 only). */
#include "anvil.h"
#include "attention/attention.h"
#include "backend/backend.h"
#include "core/status.h"
#include "model/config.h"
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The flash pair exists on this backend for this shape (a B = 0 call asks). */
static int has_flash(const av_backend *be, int H, int KVH, int hd) {
    return be->flash_attention_forward_batch && be->flash_attention_backward_batch &&
           be->flash_attention_forward_batch(NULL, NULL, NULL, NULL, NULL, 0, 0, H, KVH, hd, NULL) == 0 &&
           be->flash_attention_backward_batch(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, H, KVH, hd, NULL, NULL, NULL) == 0;
}

/* The bf16-input flash forward exists for this shape (and bf16 stores to make its inputs). */
static int has_flash_fwd16(const av_backend *be, int H, int KVH, int hd) {
    return be->flash_attention_forward_bf16 && be->store_bf16 &&
           be->flash_attention_forward_bf16(NULL, NULL, NULL, NULL, NULL, 0, 0, H, KVH, hd, NULL) == 0;
}

/* Random values in [-1, 1) into n floats of backend memory (host staging through buf). */
static void fill_random(const av_backend *be, float *dst, float *buf, size_t n, uint32_t seed) {
    uint32_t r = 0x9E3779B9u * seed;
    for (size_t j = 0; j < n; j++) {
        r = r * 1664525u + 1013904223u;
        buf[j] = (float)(r >> 8) / 8388608.0f - 1.0f;
    }
    be->upload(dst, buf, n * sizeof(float));
}

/* Median of n timings (sorts them). */
static double median(double *t, int n) {
    qsort(t, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static void free_bufs(const av_backend *be, void **p, int n) {
    for (int i = 0; i < n; i++)
        if (p[i]) be->free(p[i]);
}

enum { B_Q, B_K, B_V, B_OUT, B_SOFT, B_WORK, B_DOUT, B_DQ, B_DK, B_DV, B_N };

av_status av_attention_time(const av_backend *be, av_attention_kind kind, int B, int T, int H, int KVH, int hd, int flags,
                            int reps, double *seconds, size_t *bytes) {
    *seconds = 0;
    *bytes = 0;
    int backward = flags & AV_ATTN_TIME_BACKWARD, io16 = (flags & AV_ATTN_TIME_BF16_IO) != 0;
    if (!be || B <= 0 || T <= 0 || H <= 0 || KVH <= 0 || hd <= 0 || H % KVH)
        return av_fail(AV_ERR_ARG, "attention timing: bad shape B=%d T=%d H=%d KVH=%d hd=%d", B, T, H, KVH, hd);
    if (reps < 1) reps = 1;
    int flash = kind != AV_ATTN_STANDARD && has_flash(be, H, KVH, hd);
    if (kind == AV_ATTN_FLASH && !flash)
        return av_fail(AV_ERR_UNSUPPORTED, "attention timing: the %s backend has no flash attention for H=%d KVH=%d hd=%d", be->name, H, KVH, hd);
    if (io16 && !(flash && has_flash_fwd16(be, H, KVH, hd) && be->flash_attention_backward_bf16io &&
                  be->flash_attention_backward_bf16io(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, H, KVH, hd, NULL, NULL) == 0))
        return av_fail(AV_ERR_UNSUPPORTED, "attention timing: the %s backend has no bf16-in, bf16-out flash attention for H=%d KVH=%d hd=%d",
                       be->name, H, KVH, hd);
    if (!flash && !be->attention_forward_batch)
        return av_fail(AV_ERR_UNSUPPORTED, "attention timing: the %s backend has no batched attention", be->name);
    size_t N = (size_t)B * T, qn = N * H * hd, kn = N * KVH * hd;
    size_t n[B_N] = {qn, kn, kn, qn, flash ? N * H : N * H * (size_t)T, 0, 0, 0, 0, 0};
    /* the CPU reference loops over the sequences without scratch; device backends take theirs here */
    if (!flash && be->device != AV_DEVICE_CPU) n[B_WORK] = av_attention_batch_work(B, T, H, KVH, hd);
    if (backward) n[B_DOUT] = n[B_DQ] = qn, n[B_DK] = n[B_DV] = kn;
    void *p[B_N] = {0};
    av_status st = AV_OK;
    size_t total = 0;
    float *host = malloc(qn * sizeof(float));
    if (!host) st = av_fail(AV_ERR_NOMEM, "attention timing: out of host memory");
    for (int i = 0; i < B_N && st == AV_OK; i++) {
        if (!n[i]) continue;
        if (!(p[i] = be->alloc(n[i] * sizeof(float), "attention timing"))) {
            st = av_fail(AV_ERR_NOMEM, "attention timing: out of %s memory for %zu bytes", be->name, n[i] * sizeof(float));
            break;
        }
        total += n[i] * sizeof(float);
        if (i == B_Q || i == B_K || i == B_V || i == B_DOUT) { /* uniform in [-1, 1): scores of a few units */
            fill_random(be, p[i], host, n[i], (uint32_t)i + 1);
        } else if (i >= B_DQ) {
            be->zero(p[i], n[i] * sizeof(float));
        }
    }
    /* flash on a bf16 table (training's path, or PyTorch's contract): q, k, v as bf16 copies (made before timing), the f32 ones freed */
    int f16 = flash && has_flash_fwd16(be, H, KVH, hd) &&
              (io16 || (be->flash_attention_backward_bf16 &&
                        be->flash_attention_backward_bf16(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, H, KVH, hd, NULL, NULL, NULL) == 0));
    uint16_t *q16 = NULL, *k16 = NULL, *v16 = NULL;
    if (f16 && st == AV_OK) {
        q16 = be->alloc(qn * 2, "attention timing"), k16 = be->alloc(kn * 2, "attention timing"), v16 = be->alloc(kn * 2, "attention timing");
        if (!q16 || !k16 || !v16) {
            st = av_fail(AV_ERR_NOMEM, "attention timing: out of %s memory for the bf16 q, k, v", be->name);
        } else {
            be->store_bf16(q16, p[B_Q], qn);
            be->store_bf16(k16, p[B_K], kn);
            be->store_bf16(v16, p[B_V], kn);
            for (int i = B_Q; i <= B_V; i++) {
                be->free(p[i]);
                p[i] = NULL;
            }
            total -= (qn + 2 * kn) * sizeof(float);
            total += (qn + 2 * kn) * sizeof(uint16_t);
        }
    }
    /* training's RoPE positions (0..T-1 in each sequence) and bf16 copies */
    int32_t *posd = NULL;
    float *invd = NULL;
    uint16_t *out16 = NULL, *d16 = NULL;
    if (flash && !io16 && st == AV_OK) {
        int32_t *pos = (int32_t *)host; /* host holds qn >= N + hd / 2 floats */
        float *inv = host + N;
        for (size_t r = 0; r < N; r++) pos[r] = (int32_t)(r % (size_t)T);
        av_config rc = {.head_dim = hd, .rope_theta = 10000.0}; /* Llama's default RoPE */
        av_config_inv_freq(&rc, inv);
        posd = be->alloc(N * sizeof(int32_t), "attention timing"), invd = be->alloc(sizeof(float) * (size_t)(hd / 2), "attention timing");
        if (be->save_acts_bf16) {
            out16 = be->alloc(qn * 2, "attention timing");
            if (backward) d16 = be->alloc((qn + 2 * kn) * 2, "attention timing");
        }
        if (!posd || !invd || (be->save_acts_bf16 && (!out16 || (backward && !d16)))) {
            st = av_fail(AV_ERR_NOMEM, "attention timing: out of %s memory for positions and bf16 copies", be->name);
        } else {
            be->upload(posd, pos, N * sizeof(int32_t));
            be->upload(invd, inv, sizeof(float) * (size_t)(hd / 2));
            total += N * sizeof(int32_t) + (out16 ? qn * 2 : 0) + (d16 ? (qn + 2 * kn) * 2 : 0);
        }
    }
    /* PyTorch's contract: out, dout and dq | dk | dv in bf16 instead (the f32 buffers freed) */
    uint16_t *o16 = NULL, *do16 = NULL, *g16 = NULL; /* (out16, d16: training's copies) */
    if (io16 && st == AV_OK) {
        o16 = be->alloc(qn * 2, "attention timing");
        if (backward) do16 = be->alloc(qn * 2, "attention timing"), g16 = be->alloc((qn + 2 * kn) * 2, "attention timing");
        if (!o16 || (backward && (!do16 || !g16))) {
            st = av_fail(AV_ERR_NOMEM, "attention timing: out of %s memory for the bf16 out, dout and gradients", be->name);
        } else {
            if (backward) be->store_bf16(do16, p[B_DOUT], qn);
            for (int i = B_OUT; i < B_N; i++) {
                if (i == B_SOFT || !p[i]) continue;
                be->free(p[i]);
                p[i] = NULL;
                total -= n[i] * sizeof(float);
            }
            total += (backward ? 2 * qn + (qn + 2 * kn) : qn) * sizeof(uint16_t);
        }
    }
    if (flash && be->device == AV_DEVICE_CPU) { /* flash.c's own scratch, one call at a time: the larger one */
        size_t f = av_flash_attention_scratch_bytes(B, T, T, H, KVH, hd, 0), b = backward ? av_flash_attention_scratch_bytes(B, T, T, H, KVH, hd, 1) : 0;
        total += f > b ? f : b;
    }
    double *t = st == AV_OK ? malloc(sizeof(double) * (size_t)reps) : NULL;
    if (st == AV_OK && !t) st = av_fail(AV_ERR_NOMEM, "attention timing: out of host memory");
    for (int r = -1; r < reps && st == AV_OK; r++) { /* r = -1: warm-up, not timed */
        be->sync();
        double t0 = now_s();
        if (io16) {
            be->flash_attention_forward_bf16(NULL, p[B_SOFT], q16, k16, v16, B, T, H, KVH, hd, o16);
            if (backward)
                be->flash_attention_backward_bf16io(g16, g16 + qn, g16 + qn + kn, do16, o16, p[B_SOFT], q16, k16, v16, B, T, H, KVH, hd, NULL,
                                                    NULL);
        } else if (f16) {
            be->flash_attention_forward_bf16(p[B_OUT], p[B_SOFT], q16, k16, v16, B, T, H, KVH, hd, out16);
            if (backward)
                be->flash_attention_backward_bf16(p[B_DQ], p[B_DK], p[B_DV], p[B_DOUT], p[B_OUT], p[B_SOFT], q16, k16, v16, B, T, H, KVH, hd, posd,
                                                  invd, d16);
        } else if (flash) {
            be->flash_attention_forward_batch(p[B_OUT], p[B_SOFT], p[B_Q], p[B_K], p[B_V], B, T, H, KVH, hd, out16);
            if (backward)
                be->flash_attention_backward_batch(p[B_DQ], p[B_DK], p[B_DV], p[B_DOUT], p[B_OUT], p[B_SOFT], p[B_Q], p[B_K], p[B_V], B, T, H, KVH,
                                                   hd, posd, invd, d16);
        } else {
            be->attention_forward_batch(p[B_OUT], p[B_SOFT], p[B_Q], p[B_K], p[B_V], B, T, H, KVH, hd, p[B_WORK], n[B_WORK]);
            if (backward)
                be->attention_backward_batch(p[B_DQ], p[B_DK], p[B_DV], p[B_DOUT], p[B_SOFT], p[B_Q], p[B_K], p[B_V], B, T, H, KVH, hd, p[B_WORK],
                                             n[B_WORK]);
        }
        be->sync();
        if (r >= 0) t[r] = now_s() - t0;
    }
    if (st == AV_OK && be->device != AV_DEVICE_CPU) st = av_cuda_status(); /* a failed launch times nothing */
    if (st == AV_OK) {
        *seconds = median(t, reps);
        *bytes = total;
    }
    free(t);
    free(host);
    free_bufs(be, p, B_N);
    void *p16[10] = {q16, k16, v16, o16, do16, g16, posd, invd, out16, d16};
    free_bufs(be, p16, 10);
    return st;
}

enum { D_KC, D_VC, D_Q, D_KN, D_VN, D_OUT, D_POS, D_N };
#define DECODE_CALLS 16

av_status av_attention_decode_time(const av_backend *be, int N, int keys, int H, int KVH, int hd, int reps, double *seconds) {
    *seconds = 0;
    if (!be || N <= 0 || keys <= 0 || H <= 0 || KVH <= 0 || hd <= 0 || H % KVH)
        return av_fail(AV_ERR_ARG, "decode attention timing: bad shape N=%d keys=%d H=%d KVH=%d hd=%d", N, keys, H, KVH, hd);
    if (!be->attention_decode) return av_fail(AV_ERR_UNSUPPORTED, "decode attention timing: the %s backend has no decode attention", be->name);
    if (reps < 1) reps = 1;
    size_t kvd = (size_t)KVH * hd, stride = (size_t)keys * kvd, qn = (size_t)N * H * hd;
    size_t n[D_N] = {N * stride, N * stride, qn, N * kvd, N * kvd, qn, (size_t)N};
    void *p[D_N] = {0};
    av_status st = AV_OK;
    float *host = malloc(n[D_KC] * sizeof(float));
    double *t = malloc(sizeof(double) * (size_t)reps);
    if (!host || !t) st = av_fail(AV_ERR_NOMEM, "decode attention timing: out of host memory");
    for (int i = 0; i < D_N && st == AV_OK; i++) {
        if (!(p[i] = be->alloc(n[i] * sizeof(float), "decode attention timing"))) {
            st = av_fail(AV_ERR_NOMEM, "decode attention timing: out of %s memory for %zu bytes", be->name, n[i] * sizeof(float));
            break;
        }
        if (i == D_POS) {
            int32_t *pos = (int32_t *)host;
            for (int s = 0; s < N; s++) pos[s] = keys - 1; /* the new row is the cache's last */
            be->upload(p[i], pos, (size_t)N * sizeof(int32_t));
        } else if (i != D_OUT) {
            fill_random(be, p[i], host, n[i], (uint32_t)i + 1);
        }
    }
    for (int r = -1; r < reps && st == AV_OK; r++) { /* r = -1: warm-up, not timed */
        be->sync();
        double t0 = now_s();
        for (int c = 0; c < DECODE_CALLS; c++)
            be->attention_decode(p[D_OUT], p[D_Q], p[D_KN], p[D_VN], p[D_KC], p[D_VC], p[D_POS], N, stride, H, KVH, hd, 0, 0, 0);
        be->sync();
        if (r >= 0) t[r] = (now_s() - t0) / DECODE_CALLS;
    }
    if (st == AV_OK && be->device != AV_DEVICE_CPU) st = av_cuda_status();
    if (st == AV_OK) *seconds = median(t, reps);
    free(t);
    free(host);
    free_bufs(be, p, D_N);
    return st;
}
