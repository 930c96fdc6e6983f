/* Sampling: penalty -> argmax, or weights exp((l - max) / T) kept above one threshold (the
 * largest of the top-p, top-k and min-p ones) -> inverse-CDF walk in index order. Without top-k
 * and min-p every float operation is the one ops/sample.c (the device rule's host twin) does. */
#include "engine/sampler.h"
#include "ops/sample.h"
#include <math.h>
#include <stdlib.h>

void av_sampler_params_default(av_sampler_params *p) {
    p->temp = 0.0f;
    p->top_p = 1.0f;
    p->top_k = 0;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
    p->repetition_context = 20;
    p->seed = 0;
}

int av_sampler_device_ok(const av_sampler_params *p) {
    return p->top_k <= 0 && p->min_p <= 0.0f && p->repetition_penalty == 1.0f;
}

int av_sampler_init(av_sampler *s, const av_sampler_params *p, int V) {
    s->p = *p;
    if (!(s->p.top_p > 0.0f)) s->p.top_p = 1.0f;
    s->V = V;
    s->w = p->top_k > 0 && p->top_k < V ? malloc(sizeof(float) * (size_t)V) : NULL;
    return p->top_k > 0 && p->top_k < V && !s->w ? -1 : 0;
}

void av_sampler_free(av_sampler *s) {
    free(s->w);
    s->w = NULL;
}

/* The k-th largest of w[0..n) (1-based k), reordering w: quickselect. */
static float kth_largest(float *w, int n, int k) {
    int lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float piv = w[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (w[i] > piv) i++;
            while (w[j] < piv) j--;
            if (i <= j) { float t = w[i]; w[i] = w[j]; w[j] = t; i++; j--; }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else return w[want];
    }
    return w[want];
}

int av_sampler_sample(av_sampler *s, float *logits, const int32_t *recent, int n_recent, int pos) {
    int V = s->V;
    const av_sampler_params *p = &s->p;
    const float *l = logits;
    if (p->repetition_penalty != 1.0f && recent) {
        int from = n_recent - p->repetition_context;
        for (int i = from < 0 ? 0 : from; i < n_recent; i++) {
            int t = recent[i];
            if (t < 0 || t >= V) continue;
            logits[t] = logits[t] < 0 ? logits[t] * p->repetition_penalty : logits[t] / p->repetition_penalty;
        }
    }
    int best = av_sample_argmax(l, V);
    if (p->temp <= 0.0f) return best;
    float mx = l[best], invt = 1.0f / p->temp;
    float tau = av_sample_top_p_tau(l, V, mx, invt, p->top_p);
    if (s->w) { /* top-k: the k-th largest weight (ties with it are kept too) */
        for (int j = 0; j < V; j++) s->w[j] = expf((l[j] - mx) * invt);
        float wk = kth_largest(s->w, V, p->top_k);
        if (wk > tau) tau = wk;
    }
    if (p->min_p > tau) tau = p->min_p; /* the top weight is 1: min-p x the top probability */
    return av_sample_draw(l, V, mx, invt, tau, av_sample_uniform(p->seed, pos), best);
}
