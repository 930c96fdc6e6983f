/* Sampling: penalty -> greedy or (temperature softmax -> top-k -> top-p -> min-p -> draw). */
#include "engine/sampler.h"
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

int av_sampler_init(av_sampler *s, const av_sampler_params *p, int V) {
    s->p = *p;
    s->state = p->seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
    s->V = V;
    s->idx = malloc(sizeof(int) * (size_t)V);
    s->prob = malloc(sizeof(float) * (size_t)V);
    return s->idx && s->prob ? 0 : -1;
}

void av_sampler_free(av_sampler *s) {
    free(s->idx);
    free(s->prob);
    s->idx = NULL;
    s->prob = NULL;
}

static double next_uniform(av_sampler *s) { /* splitmix64 -> [0, 1) */
    uint64_t z = (s->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

static const float *g_sort_key;
static int by_prob_desc(const void *a, const void *b) {
    float x = g_sort_key[*(const int *)a], y = g_sort_key[*(const int *)b];
    return x < y ? 1 : x > y ? -1 : (*(const int *)a - *(const int *)b);
}

int av_sampler_sample(av_sampler *s, float *logits, const int32_t *recent, int n_recent) {
    int V = s->V;
    const av_sampler_params *p = &s->p;
    if (p->repetition_penalty != 1.0f && recent) {
        int from = n_recent - p->repetition_context;
        for (int i = from < 0 ? 0 : from; i < n_recent; i++) {
            int t = recent[i];
            if (t < 0 || t >= V) continue;
            logits[t] = logits[t] < 0 ? logits[t] * p->repetition_penalty : logits[t] / p->repetition_penalty;
        }
    }
    int best = 0;
    for (int v = 1; v < V; v++) if (logits[v] > logits[best]) best = v;
    if (p->temp <= 0.0f) return best;
    /* softmax at temperature */
    double sum = 0;
    float mx = logits[best];
    for (int v = 0; v < V; v++) { s->prob[v] = expf((logits[v] - mx) / p->temp); sum += s->prob[v]; }
    for (int v = 0; v < V; v++) s->prob[v] = (float)(s->prob[v] / sum);
    int n = V;
    for (int v = 0; v < V; v++) s->idx[v] = v;
    int filtered = (p->top_k > 0 && p->top_k < V) || (p->top_p > 0 && p->top_p < 1) || p->min_p > 0;
    if (filtered) {
        g_sort_key = s->prob;
        qsort(s->idx, (size_t)V, sizeof(int), by_prob_desc);
        if (p->top_k > 0 && p->top_k < n) n = p->top_k;
        if (p->top_p > 0 && p->top_p < 1) {
            double c = 0;
            int k = 0;
            while (k < n) { c += s->prob[s->idx[k++]]; if (c >= p->top_p) break; }
            n = k;
        }
        if (p->min_p > 0) {
            float thr = p->min_p * s->prob[s->idx[0]];
            int k = 1;
            while (k < n && s->prob[s->idx[k]] >= thr) k++;
            n = k;
        }
    }
    double tot = 0;
    for (int k = 0; k < n; k++) tot += s->prob[s->idx[k]];
    double r = next_uniform(s) * tot, c = 0;
    for (int k = 0; k < n; k++) {
        c += s->prob[s->idx[k]];
        if (r < c) return s->idx[k];
    }
    return s->idx[n - 1];
}
