/* Host sampler: argmax (lowest index on ties) or softmax(logits / T) restricted to the smallest
 * top set whose mass reaches top_p (threshold found by bisection, as on the device), then an
 * inverse-CDF draw in index order. */
#include "ops/sample.h"
#include <math.h>

/* Lane k of 16 keeps the largest value it saw and where it first saw it (a NaN compares false and
 * is skipped); the answer is the lowest such index among the lanes holding the maximum. Written so
 * the compiler vectorises it (the scalar loop's branch made it the server's hottest host function).
 * A row with nothing above -inf takes the scalar loop. */
int av_sample_argmax(const float *l, int V) {
    enum { L = 16 };
    float m[L];
    int at[L];
    for (int k = 0; k < L; k++) m[k] = -INFINITY, at[k] = -1;
    int j = 0;
    for (; j + L <= V; j += L)
        for (int k = 0; k < L; k++) {
            float v = l[j + k];
            int gt = v > m[k];
            m[k] = gt ? v : m[k];
            at[k] = gt ? j + k : at[k];
        }
    for (int k = 0; j + k < V; k++)
        if (l[j + k] > m[k]) m[k] = l[j + k], at[k] = j + k;
    int best = -1;
    for (int k = 0; k < L; k++)
        if (at[k] >= 0 && (best < 0 || m[k] > l[best] || (m[k] == l[best] && at[k] < best))) best = at[k];
    if (best >= 0) return best;
    for (j = 0; j < V; j++) /* every value -inf or NaN: the first -inf */
        if (l[j] == l[j]) return j;
    return 0;
}

float av_sample_mass(const float *l, int V, float mx, float invt, float tau) {
    float m = 0;
    for (int j = 0; j < V; j++) {
        float w = expf((l[j] - mx) * invt);
        if (w >= tau) m += w;
    }
    return m;
}

float av_sample_top_p_tau(const float *l, int V, float mx, float invt, float top_p) {
    if (top_p >= 1.0f) return 0.0f;
    float Z = av_sample_mass(l, V, mx, invt, 0.0f), lo = 0.0f, hi = 1.0f; /* bisection, as on the device */
    for (int it = 0; it < 32; it++) {
        float mid = 0.5f * (lo + hi);
        if (av_sample_mass(l, V, mx, invt, mid) >= top_p * Z) lo = mid;
        else hi = mid;
    }
    return lo;
}

int av_sample_draw(const float *l, int V, float mx, float invt, float tau, float u, int best) {
    float target = u * av_sample_mass(l, V, mx, invt, tau), c = 0;
    for (int j = 0; j < V; j++) {
        float w = expf((l[j] - mx) * invt);
        if (w < tau) continue;
        c += w;
        if (c > target) return j;
    }
    return best;
}

void av_sample_rows(int32_t *ids, const float *logits, int N, int V, float temperature, float top_p, uint64_t seed, int32_t *pos,
                    const int32_t *active) {
    for (int i = 0; i < N; i++) {
        const float *l = logits + (size_t)i * V;
        int best = av_sample_argmax(l, V), tok = best;
        if (temperature > 0) {
            float mx = l[best], invt = 1.0f / temperature;
            float tau = av_sample_top_p_tau(l, V, mx, invt, top_p);
            tok = av_sample_draw(l, V, mx, invt, tau, av_sample_uniform(seed, pos ? pos[i] : 0), best);
        }
        ids[i] = tok;
        if (pos && (!active || active[i])) pos[i]++;
    }
}
