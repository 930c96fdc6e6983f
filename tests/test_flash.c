/* Flash attention forward: the CPU tiled version (flash.c) vs the standard materialised one within
 * f32 rounding (out rel L2 <= 1e-5, lse vs a float64 log-sum-exp), and the CUDA kernel (flash.cu,
 * bf16 tensor cores) vs the CPU on several shapes (rel L2 <= 1e-2; lse within 2e-2), skipped visibly
 * without a GPU. Shapes: T 1..2048, pos0 > 0, GQA ratios 1/4/8, head_dim 64 and 128. */
#include "test.h"
#include <stddef.h>
#include "attention/attention.h"
#include "backend/backend.h"
#include "backend/cuda.h"

/* float64 log-sum-exp of row (h, t)'s scaled scores */
static double lse_ref(const float *q, const float *k, int t, int h, int pos0, int H, int KVH, int hd) {
    int kh = h / (H / KVH), n = pos0 + t + 1;
    double mx = -INFINITY, sum = 0, *sc = malloc(sizeof(double) * n);
    for (int s = 0; s < n; s++) {
        double d = 0;
        for (int i = 0; i < hd; i++) d += (double)q[(size_t)t * H * hd + (size_t)h * hd + i] * k[(size_t)s * KVH * hd + (size_t)kh * hd + i];
        sc[s] = d / sqrt((double)hd);
        if (sc[s] > mx) mx = sc[s];
    }
    for (int s = 0; s < n; s++) sum += exp(sc[s] - mx);
    free(sc);
    return mx + log(sum);
}

typedef struct { int T, pos0, H, KVH, hd; } shape;
static const shape shapes[] = {
    {1, 0, 4, 4, 64},    {7, 0, 8, 2, 64},    {64, 0, 8, 1, 64},  {200, 0, 8, 2, 64},  {200, 37, 4, 4, 128},
    {64, 100, 8, 8, 128}, {130, 5, 8, 1, 128}, {7, 300, 4, 1, 64}, {2048, 0, 8, 1, 64}, {2048, 0, 4, 1, 128},
};

int main(void) {
    test_rng_state = 777;
    const av_backend *G = av_backend_cuda();
    if (!G || !G->flash_attention_forward) SKIP("no GPU (CUDA flash attention not tested)");
    else {
        char dev[256];
        av_cuda_device_name(dev, sizeof dev);
        printf("GPU: %s\n", dev);
    }
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        shape sh = shapes[si];
        int T = sh.T, p0 = sh.pos0, H = sh.H, KVH = sh.KVH, hd = sh.hd, S = p0 + T;
        size_t qn = (size_t)T * H * hd, kn = (size_t)S * KVH * hd;
        float *q = test_rnd(qn, 1.5f), *k = test_rnd(kn, 1.5f), *v = test_rnd(kn, 1), *ref = malloc(qn * 4), *o = malloc(qn * 4),
              *lse = malloc(sizeof(float) * H * T);
        av_attention_forward(ref, NULL, q, k, v, T, S, p0, H, KVH, hd);
        av_flash_attention_forward(o, lse, q, k, v, T, S, p0, H, KVH, hd);
        double e = test_rel_l2(o, ref, qn);
        CHECK(e <= 1e-5, "cpu flash T=%d pos0=%d H=%d KVH=%d hd=%d: rel L2 %.3g", T, p0, H, KVH, hd, e);
        /* lse on a few rows of every head */
        double lerr = 0;
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t += T > 16 ? T / 7 : 1) {
                double r = lse_ref(q, k, t, h, p0, H, KVH, hd), d = fabs(lse[(size_t)h * T + t] - r) / (fabs(r) + 1);
                if (d > lerr || d != d) lerr = d != d ? INFINITY : d;
            }
        CHECK(lerr <= 1e-5, "cpu flash lse T=%d hd=%d: rel err %.3g", T, hd, lerr);
        if (G && G->flash_attention_forward) {
            float *qd = G->alloc(qn * 4, "t"), *kd = G->alloc(kn * 4, "t"), *vd = G->alloc(kn * 4, "t"), *od = G->alloc(qn * 4, "t"),
                  *ld = G->alloc(sizeof(float) * H * T, "t"), *go = malloc(qn * 4), *gl = malloc(sizeof(float) * H * T);
            G->upload(qd, q, qn * 4);
            G->upload(kd, k, kn * 4);
            G->upload(vd, v, kn * 4);
            for (size_t i = 0; i < qn; i++) go[i] = NAN; /* poison: every element must be written */
            for (int i = 0; i < H * T; i++) gl[i] = NAN;
            G->upload(od, go, qn * 4);
            G->upload(ld, gl, sizeof(float) * H * T);
            G->flash_attention_forward(od, ld, qd, kd, vd, T, S, p0, H, KVH, hd);
            G->download(go, od, qn * 4);
            G->download(gl, ld, sizeof(float) * H * T);
            CHECK_OK(av_cuda_status());
            e = test_rel_l2(go, ref, qn);
            CHECK(e <= 1e-2, "cuda flash T=%d pos0=%d H=%d KVH=%d hd=%d: rel L2 %.3g", T, p0, H, KVH, hd, e);
            double le = 0; /* absolute: a row's lse is a bf16-rounded score when it sees one key */
            for (int i = 0; i < H * T; i++) {
                double d = fabs((double)gl[i] - lse[i]);
                if (!(d <= le)) le = d != d ? INFINITY : d;
            }
            CHECK(le <= 2e-2, "cuda flash lse T=%d pos0=%d H=%d KVH=%d hd=%d: max abs err %.3g", T, p0, H, KVH, hd, le);
            printf("cuda flash T=%d pos0=%d H=%d KVH=%d hd=%d: out rel L2 %.2e, lse max abs err %.2e\n", T, p0, H, KVH, hd, e, le);
            G->free(qd); G->free(kd); G->free(vd); G->free(od); G->free(ld);
            free(go); free(gl);
        }
        free(q); free(k); free(v); free(ref); free(o); free(lse);
    }
    if (G && G->flash_attention_forward) { /* head_dim without a kernel: the standard attention */
        int T = 70, H = 4, KVH = 2, hd = 32, S = T;
        size_t qn = (size_t)T * H * hd, kn = (size_t)S * KVH * hd;
        float *q = test_rnd(qn, 1), *k = test_rnd(kn, 1), *v = test_rnd(kn, 1), *ref = malloc(qn * 4), *go = malloc(qn * 4);
        av_attention_forward(ref, NULL, q, k, v, T, S, 0, H, KVH, hd);
        float *qd = G->alloc(qn * 4, "t"), *kd = G->alloc(kn * 4, "t"), *vd = G->alloc(kn * 4, "t"), *od = G->alloc(qn * 4, "t");
        G->upload(qd, q, qn * 4); G->upload(kd, k, kn * 4); G->upload(vd, v, kn * 4);
        G->flash_attention_forward(od, NULL, qd, kd, vd, T, S, 0, H, KVH, hd);
        G->download(go, od, qn * 4);
        double e = test_rel_l2(go, ref, qn);
        CHECK(e <= 1e-2, "cuda flash fallback hd=32: rel L2 %.3g", e);
        CHECK_OK(av_cuda_status());
        G->free(qd); G->free(kd); G->free(vd); G->free(od);
        free(q); free(k); free(v); free(ref); free(go);
    }
    return TEST_SUMMARY();
}
