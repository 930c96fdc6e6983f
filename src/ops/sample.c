/* Host sampler: argmax (lowest index on ties) or softmax(logits / T) restricted to the smallest
 * top set whose mass reaches top_p (threshold found by bisection, as on the device), then an
 * inverse-CDF draw in index order. */
#include "ops/sample.h"
#include <math.h>

static float mass_at(const float *l, int V, float mx, float invt, float tau) {
    float m = 0;
    for (int j = 0; j < V; j++) {
        float w = expf((l[j] - mx) * invt);
        if (w >= tau) m += w;
    }
    return m;
}

void av_sample_rows(int32_t *ids, const float *logits, int N, int V, float temperature, float top_p, uint64_t seed, int32_t *pos,
                    const int32_t *active) {
    for (int i = 0; i < N; i++) {
        const float *l = logits + (size_t)i * V;
        int best = 0;
        for (int j = 1; j < V; j++)
            if (l[j] > l[best]) best = j;
        int tok = best;
        if (temperature > 0) {
            float mx = l[best], invt = 1.0f / temperature;
            float Z = mass_at(l, V, mx, invt, 0.0f), tau = 0.0f;
            if (top_p < 1.0f) {
                float lo = 0.0f, hi = 1.0f; /* largest tau with mass(tau) >= top_p * Z */
                for (int it = 0; it < 32; it++) {
                    float mid = 0.5f * (lo + hi);
                    if (mass_at(l, V, mx, invt, mid) >= top_p * Z) lo = mid;
                    else hi = mid;
                }
                tau = lo;
            }
            float kept = mass_at(l, V, mx, invt, tau);
            float u = av_sample_uniform(seed, pos ? pos[i] : 0) * kept, c = 0;
            tok = best;
            for (int j = 0; j < V; j++) {
                float w = expf((l[j] - mx) * invt);
                if (w < tau) continue;
                c += w;
                if (c > u) { tok = j; break; }
            }
        }
        ids[i] = tok;
        if (pos && (!active || active[i])) pos[i]++;
    }
}
