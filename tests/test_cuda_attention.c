/* CUDA attention vs the CPU: the standard attention forward/backward (row kernel, materialised and
 * chunked forms, batched training attention) and batched decode attention against the KV cache.
 * Without a GPU: "skipped: no GPU". */
#include "test_cuda.h"
#include "attention/attention.h"

/* Batched decode attention: 4 sequences at different positions vs per-sequence CPU attention (the
 * last one at the end of an MS-row cache region); then each sequence alone (N = 1), whose kernel
 * keeps keys and values in registers for hd 64 (and reads the rest, past 256 keys / 128 values).
 * Caches of 512+ rows take the split-KV kernel (chunk edges, the new row inside or at a chunk's end),
 * shorter ones of several sequences the same kernel with one chunk a sequence. */
static void check_decode_shape(int hd, int H, int KVH, int MS, const int posn[4]) {
    int N = 4;
    size_t kvd = (size_t)KVH * hd, qd = (size_t)H * hd, stride = (size_t)MS * kvd;
    float *kc = test_rnd(N * stride, 1), *vc = test_rnd(N * stride, 1), *q = test_rnd(N * qd, 1), *kn = test_rnd(N * kvd, 1), *vn = test_rnd(N * kvd, 1);
    float *kcd = up(G, kc, N * stride * 4), *vcd = up(G, vc, N * stride * 4), *qd2 = up(G, q, N * qd * 4), *knd = up(G, kn, N * kvd * 4),
          *vnd = up(G, vn, N * kvd * 4), *od = G->alloc(N * qd * 4, "t");
    int32_t *posd = up(G, posn, 4 * sizeof *posn);
    G->attention_decode(od, qd2, knd, vnd, kcd, vcd, posd, N, stride, H, KVH, hd, 0, 0, 0);
    float *ref = malloc(N * qd * 4);
    for (int i = 0; i < N; i++) {
        memcpy(kc + i * stride + posn[i] * kvd, kn + i * kvd, kvd * 4);
        memcpy(vc + i * stride + posn[i] * kvd, vn + i * kvd, kvd * 4);
        av_attention_forward(ref + i * qd, NULL, q + i * qd, kc + i * stride, vc + i * stride, 1, posn[i] + 1, posn[i], H, KVH, hd);
    }
    char nm[96];
    snprintf(nm, sizeof nm, "attention_decode hd=%d H=%d KVH=%d cache %d", hd, H, KVH, MS);
    CMP(nm, od, ref, N * qd, 1e-5);
    CMP("attention_decode cache append", kcd, kc, N * stride, 0);
    G->zero(od, N * qd * 4);
    for (int i = 0; i < N; i++) /* rewrites the same new rows */
        G->attention_decode(od + i * qd, qd2 + i * qd, knd + i * kvd, vnd + i * kvd, kcd + i * stride, vcd + i * stride, posd + i, 1, stride, H,
                            KVH, hd, 0, 0, 0);
    snprintf(nm, sizeof nm, "attention_decode one sequence hd=%d H=%d KVH=%d cache %d", hd, H, KVH, MS);
    CMP(nm, od, ref, N * qd, 1e-5);
    CMP("attention_decode one sequence cache append", kcd, kc, N * stride, 0);
    free(kc); free(vc); free(q); free(kn); free(vn); free(ref);
}

static void check_decode(int hd) {
    static const int pos600[4] = {0, 17, 49, 599}, pos5k[4] = {0, 1023, 4096, 4999}, pos8k[4] = {300, 2047, 6000, 8191};
    check_decode_shape(hd, 4, 2, 600, pos600);
    if (hd < 64) return;
    static const int pos300[4] = {0, 5, 130, 299};
    check_decode_shape(hd, 8, 1, 300, pos300);  /* a short cache, 8 heads per KV head: one chunk a sequence */
    check_decode_shape(hd, 8, 1, 5000, pos5k);  /* 8 query heads per KV head */
    check_decode_shape(hd, 8, 2, 8192, pos8k);  /* 4 per KV head */
    check_decode_shape(hd, 4, 4, 5000, pos5k);  /* no grouping */
    check_decode_shape(hd, 6, 2, 5000, pos5k);  /* 3 per KV head: the one-block-per-head kernel */
}

/* A rotating cache (keep 4; e.g. ring 24 in regions of 40 rows): rows past the ring wrap into slots
 * 4..ring-1 and attend `ring` rows (regions of 512+ rows: the split-KV kernel); vs the CPU table's
 * decode attention, batched and one sequence at a time (hd 64: the register path), outputs and caches. */
static void check_decode_ring(int hd, int MS, int ring, const int posn[3]) {
    int N = 3, H = 4, KVH = 2, keep = 4;
    size_t kvd = (size_t)KVH * hd, qd = (size_t)H * hd, stride = (size_t)MS * kvd;
    float *kc = test_rnd(N * stride, 1), *vc = test_rnd(N * stride, 1), *q = test_rnd(N * qd, 1), *kn = test_rnd(N * kvd, 1), *vn = test_rnd(N * kvd, 1);
    float *kcd = up(G, kc, N * stride * 4), *vcd = up(G, vc, N * stride * 4), *qd2 = up(G, q, N * qd * 4), *knd = up(G, kn, N * kvd * 4),
          *vnd = up(G, vn, N * kvd * 4), *od = G->alloc(N * qd * 4, "t");
    int32_t *posd = up(G, posn, 3 * sizeof *posn);
    float *ref = malloc(N * qd * 4);
    av_attention_decode(ref, q, kn, vn, kc, vc, posn, N, stride, H, KVH, hd, 0, keep, ring);
    char nm[96];
    for (int one = 0; one < 2; one++) { /* the second pass rewrites the same rows */
        G->zero(od, N * qd * 4);
        if (!one) G->attention_decode(od, qd2, knd, vnd, kcd, vcd, posd, N, stride, H, KVH, hd, 0, keep, ring);
        for (int i = 0; one && i < N; i++)
            G->attention_decode(od + i * qd, qd2 + i * qd, knd + i * kvd, vnd + i * kvd, kcd + i * stride, vcd + i * stride, posd + i, 1, stride,
                                H, KVH, hd, 0, keep, ring);
        snprintf(nm, sizeof nm, "attention_decode ring %d %s hd=%d", ring, one ? "one sequence" : "batched", hd);
        CMP(nm, od, ref, N * qd, 1e-5);
        CMP("attention_decode ring cache slots", kcd, kc, N * stride, 0);
        CMP("attention_decode ring value slots", vcd, vc, N * stride, 0);
    }
    free(kc); free(vc); free(q); free(kn); free(vn); free(ref);
}

static void test_attention(void) {
    int cases[][5] = {{1, 9, 8, 4, 2}, {5, 12, 7, 4, 2}, {33, 33, 0, 6, 3}, {20, 64, 44, 4, 4}, {90, 130, 40, 4, 2}}; /* T S pos0 H KVH */
    av_cuda_set_attention_chunk(2 * 130 * 32); /* 32-row chunks: exercises the chunked inference path */
    int hd = 32;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int T = cases[ci][0], S = cases[ci][1], p0 = cases[ci][2], H = cases[ci][3], KVH = cases[ci][4];
        size_t qn = (size_t)T * H * hd, kn = (size_t)S * KVH * hd, pn = (size_t)H * T * S;
        float *q = test_rnd(qn, 1), *k = test_rnd(kn, 1), *v = test_rnd(kn, 1), *go = test_rnd(qn, 1);
        float *o = malloc(qn * 4), *pr = malloc(pn * 4), *dq = calloc(qn, 4), *dk = calloc(kn, 4), *dv = calloc(kn, 4);
        av_attention_forward(o, pr, q, k, v, T, S, p0, H, KVH, hd);
        av_attention_backward(dq, dk, dv, go, pr, q, k, v, T, S, p0, H, KVH, hd);
        float *qd = up(G, q, qn * 4), *kd = up(G, k, kn * 4), *vd = up(G, v, kn * 4), *god = up(G, go, qn * 4);
        float *od = G->alloc(qn * 4, "t"), *prd = G->alloc(pn * 4, "t"), *dqd = G->alloc(qn * 4, "t"), *dkd = G->alloc(kn * 4, "t"),
              *dvd = G->alloc(kn * 4, "t");
        char nm[96];
        for (int f = 0; f < 2; f++) {
            const av_backend *be = f ? G32 : G;
            double tol = f ? 1e-5 : 3e-3; /* bf16 table: TF32 products */
            be->attention_forward(od, NULL, qd, kd, vd, T, S, p0, H, KVH, hd);
            snprintf(nm, sizeof nm, "attention_forward %s T=%d S=%d", be->name, T, S);
            CMP(nm, od, o, qn, tol);
            be->attention_forward(od, prd, qd, kd, vd, T, S, p0, H, KVH, hd);
            CMP(nm, od, o, qn, tol);
            CMP(nm, prd, pr, pn, tol);
            G->zero(dqd, qn * 4);
            G->zero(dkd, kn * 4);
            G->zero(dvd, kn * 4);
            be->attention_backward(dqd, dkd, dvd, god, prd, qd, kd, vd, T, S, p0, H, KVH, hd);
            snprintf(nm, sizeof nm, "attention_backward %s T=%d S=%d", be->name, T, S);
            CMP(nm, dqd, dq, qn, tol * 3);
            CMP(nm, dkd, dk, kn, tol * 3);
            CMP(nm, dvd, dv, kn, tol * 3);
        }
        free(q); free(k); free(v); free(go); free(o); free(pr); free(dq); free(dk); free(dv);
    }
    av_cuda_set_attention_chunk(0);
    /* batched training attention (every sequence and head at once) vs the per-sequence CPU reference */
    int bcases[][5] = {{3, 40, 4, 2, 32}, {2, 17, 6, 3, 16}, {4, 33, 4, 4, 32}, {3, 200, 4, 2, 32}}; /* B T H KVH hd */
    for (size_t ci = 0; ci < sizeof bcases / sizeof bcases[0]; ci++) {
        int B = bcases[ci][0], T = bcases[ci][1], H = bcases[ci][2], KVH = bcases[ci][3], bhd = bcases[ci][4];
        size_t qn = (size_t)B * T * H * bhd, kn = (size_t)B * T * KVH * bhd, pn = (size_t)B * H * T * T;
        av_cuda_set_attention_chunk((size_t)2 * H * T * T); /* the backward's dP in chunks of 2 sequences */
        float *q = test_rnd(qn, 1), *k = test_rnd(kn, 1), *v = test_rnd(kn, 1), *go = test_rnd(qn, 1);
        float *o = malloc(qn * 4), *pr = malloc(pn * 4), *dq0 = test_rnd(qn, 1), *dk0 = test_rnd(kn, 1), *dv0 = test_rnd(kn, 1);
        float *dq = malloc(qn * 4), *dk = malloc(kn * 4), *dv = malloc(kn * 4);
        memcpy(dq, dq0, qn * 4);
        memcpy(dk, dk0, kn * 4);
        memcpy(dv, dv0, kn * 4);
        float *qd = up(G, q, qn * 4), *kd = up(G, k, kn * 4), *vd = up(G, v, kn * 4), *god = up(G, go, qn * 4);
        float *dqd = G->alloc(qn * 4, "t"), *dkd = G->alloc(kn * 4, "t"), *dvd = G->alloc(kn * 4, "t"); /* accumulated into */
        float *od = G->alloc(qn * 4, "t"), *prd = G->alloc(pn * 4, "t");
        size_t wn = av_attention_batch_work(B, T, H, KVH, bhd);
        float *wd = G->alloc(wn * 4, "t");
        av_attention_forward_batch(o, pr, q, k, v, B, T, H, KVH, bhd, NULL, 0);
        av_attention_backward_batch(dq, dk, dv, go, pr, q, k, v, B, T, H, KVH, bhd, NULL, 0);
        char nm[96];
        for (int f = 0; f < 2; f++) {
            const av_backend *be = f ? G32 : G;
            double tol = f ? 1e-5 : 3e-3;
            snprintf(nm, sizeof nm, "attention_forward_batch %s B=%d T=%d H=%d KVH=%d", be->name, B, T, H, KVH);
            be->attention_forward_batch(od, prd, qd, kd, vd, B, T, H, KVH, bhd, f ? NULL : wd, f ? 0 : wn);
            CMP(nm, od, o, qn, tol);
            CMP(nm, prd, pr, pn, tol);
            G->upload(dqd, dq0, qn * 4); /* the same starting gradients in both modes */
            G->upload(dkd, dk0, kn * 4);
            G->upload(dvd, dv0, kn * 4);
            be->attention_backward_batch(dqd, dkd, dvd, god, prd, qd, kd, vd, B, T, H, KVH, bhd, f ? NULL : wd, f ? 0 : wn);
            snprintf(nm, sizeof nm, "attention_backward_batch %s B=%d T=%d H=%d KVH=%d", be->name, B, T, H, KVH);
            CMP(nm, dqd, dq, qn, tol * 3);
            CMP(nm, dkd, dk, kn, tol * 3);
            CMP(nm, dvd, dv, kn, tol * 3);
        }
        G->free(qd); G->free(kd); G->free(vd); G->free(god); G->free(dqd); G->free(dkd); G->free(dvd); G->free(od); G->free(prd); G->free(wd);
        free(q); free(k); free(v); free(go); free(o); free(pr); free(dq); free(dk); free(dv); free(dq0); free(dk0); free(dv0);
    }
    av_cuda_set_attention_chunk(0);
    check_decode(32);
    check_decode(64); /* one sequence, hd 64: the cached rows are read into registers */
    check_decode(128);
    static const int ring_small[3] = {9, 30, 57}, ring_long[3] = {9, 1300, 2500};
    check_decode_ring(32, 40, 24, ring_small);
    check_decode_ring(64, 40, 24, ring_small);
    check_decode_ring(64, 1200, 1100, ring_long);
    check_decode_ring(128, 1200, 1100, ring_long);
}

int main(void) {
    test_rng_state = 12345;
    if (!test_cuda_init()) {
        SKIP("no GPU");
        return TEST_SUMMARY();
    }
    test_attention();
    CHECK_OK(av_cuda_status());
    return TEST_SUMMARY();
}
