/* The engine's host sampler: with temperature + top-p only it draws exactly the token ops/sample.c
 * (the device sampler's host twin) draws for the same (seed, position); top-k, min-p and the
 * repetition penalty restrict the draw as documented; draws are a function of (seed, position). */
#include "engine/sampler.h"
#include "ops/sample.h"
#include "test.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define V 1000

static void make_logits(float *l, unsigned seed) {
    srand(seed);
    for (int j = 0; j < V; j++) l[j] = 4.0f * (float)rand() / (float)RAND_MAX - 2.0f;
    l[17] += 3.0f; /* a few likely tokens */
    l[400] += 2.5f;
    l[999] += 2.0f;
}

static int sample(const av_sampler_params *p, const float *logits, int pos) {
    float l[V];
    memcpy(l, logits, sizeof l);
    av_sampler s;
    if (av_sampler_init(&s, p, V) != 0) return -1;
    int t = av_sampler_sample(&s, l, NULL, 0, pos);
    av_sampler_free(&s);
    return t;
}

int main(void) {
    float l[V];
    av_sampler_params p;
    /* greedy skips NaN and takes the lowest index on ties (the device sampler's and the folded LM head's rule) */
    const float nan_row[5] = {NAN, 1.0f, 3.0f, 3.0f, NAN}, all_nan[2] = {NAN, NAN};
    CHECK(av_sample_argmax(nan_row, 5) == 2, "argmax with NaN: %d", av_sample_argmax(nan_row, 5));
    CHECK(av_sample_argmax(all_nan, 2) == 0, "argmax of an all-NaN row: %d", av_sample_argmax(all_nan, 2));
    /* the vectorised lanes: ties across lanes and the tail, NaN, -inf-only rows; against the plain loop */
    {
        static float row[1000];
        unsigned r = 7;
        int bad = 0;
        for (int it = 0; it < 3000; it++) {
            int n = it % 3 ? 1 + (int)(r % 100) : 1000;
            for (int j = 0; j < n; j++) {
                r = r * 1103515245u + 12345u;
                unsigned c = (r >> 16) % 10;
                row[j] = c == 0 ? NAN : c == 1 ? -INFINITY : (it % 5 == 0 ? -INFINITY : (float)((r >> 8) % 4));
            }
            int want = -1;
            for (int j = 0; j < n; j++)
                if (row[j] == row[j] && (want < 0 || row[j] > row[want])) want = j;
            bad += av_sample_argmax(row, n) != (want < 0 ? 0 : want);
        }
        CHECK(bad == 0, "argmax differs from the first-maximum loop on %d of 3000 rows", bad);
    }
    /* temperature + top-p: the device rule, draw for draw */
    const float temps[] = {0.0f, 0.5f, 1.0f, 1.7f}, tops[] = {1.0f, 0.9f, 0.5f};
    int same = 0, total = 0;
    for (int ti = 0; ti < 4; ti++)
        for (int pi = 0; pi < 3; pi++)
            for (int pos = 0; pos < 60; pos++) {
                make_logits(l, (unsigned)pos);
                av_sampler_params_default(&p);
                p.temp = temps[ti];
                p.top_p = tops[pi];
                p.seed = 1234 + (uint64_t)ti;
                int32_t id, ps = pos;
                av_sample_rows(&id, l, 1, V, p.temp, p.top_p, p.seed, &ps, NULL);
                same += sample(&p, l, pos) == id;
                total++;
            }
    CHECK(same == total, "host sampler vs ops/sample.c: %d of %d draws equal", same, total);
    /* a draw is a function of (seed, position) */
    make_logits(l, 7);
    av_sampler_params_default(&p);
    p.temp = 1.0f;
    p.seed = 5;
    int differ = 0;
    for (int pos = 0; pos < 50; pos++) {
        CHECK(sample(&p, l, pos) == sample(&p, l, pos), "position %d: two draws differ", pos);
        av_sampler_params q = p;
        q.seed = 6;
        differ += sample(&p, l, pos) != sample(&q, l, pos);
    }
    CHECK(differ > 0, "seeds 5 and 6 drew the same 50 tokens");
    /* top-k: only the k most likely; k = 1 is greedy */
    p.top_k = 3;
    for (int pos = 0; pos < 200; pos++) {
        int t = sample(&p, l, pos);
        CHECK(t == 17 || t == 400 || t == 999, "top-k 3 drew %d", t);
    }
    p.top_k = 1;
    for (int pos = 0; pos < 20; pos++) CHECK(sample(&p, l, pos) == 17, "top-k 1 is not greedy");
    /* min-p: nothing below min_p x the top probability */
    p.top_k = 0;
    p.min_p = 0.3f;
    for (int pos = 0; pos < 200; pos++) {
        int t = sample(&p, l, pos);
        CHECK(expf(l[t] - l[17]) >= 0.3f, "min-p 0.3 drew %d (ratio %g)", t, expf(l[t] - l[17]));
    }
    /* repetition penalty (greedy): a recent top token gives way */
    av_sampler_params_default(&p);
    p.repetition_penalty = 100.0f;
    float c[V];
    memcpy(c, l, sizeof c);
    av_sampler s;
    CHECK(av_sampler_init(&s, &p, V) == 0, "init");
    int32_t recent[] = {17};
    int t = av_sampler_sample(&s, c, recent, 1, 0);
    av_sampler_free(&s);
    int want = 0;
    for (int j = 1; j < V; j++)
        if (j != 17 && (want == 17 || l[j] > l[want])) want = j;
    CHECK(t == want, "penalised 17: greedy gave %d, want %d", t, want);
    return TEST_SUMMARY();
}
