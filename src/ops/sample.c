/* Host sampler: argmax (lowest index on ties) or softmax(logits / T) restricted to the smallest
 * top set whose mass reaches top_p (threshold found by bisection, as on the device), then an
 * inverse-CDF draw in index order. */
#include "ops/sample.h"
#include <math.h>

int av_sample_argmax(const float *l, int V) {
    int best = -1; /* NaN skipped, as the device sampler and the folded LM head do */
    for (int j = 0; j < V; j++)
        if (l[j] == l[j] && (best < 0 || l[j] > l[best])) best = j;
    return best < 0 ? 0 : best;
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
