/* Inverted dropout with a stateless, counter-based mask: element i of a call keyed by `seed` is
 * kept iff the top 32 bits of splitmix64(seed, i) are >= p * 2^32, and kept values are scaled by
 * 1 / (1 - p). Nothing is saved for the backward: it regenerates the same mask from (seed, i), and
 * a CUDA twin computing the same hash per element gives bit-identical masks. */
#include "ops/ops.h"

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t av_dropout_key(uint64_t seed, uint64_t a, uint64_t b) {
    uint64_t k = mix64(seed + 0x9E3779B97F4A7C15ull);
    k = mix64(k ^ (a + 0x632BE59BD9B4E019ull));
    return mix64(k ^ (b + 0x8CB92BA72F3D8DD7ull));
}

static inline uint32_t threshold(float p) {
    double t = (double)p * 4294967296.0;
    return t <= 0 ? 0u : t >= 4294967295.0 ? 4294967295u : (uint32_t)t;
}

static inline int kept(uint64_t seed, size_t i, uint32_t thr) {
    return (uint32_t)(mix64(seed + ((uint64_t)i + 1) * 0x9E3779B97F4A7C15ull) >> 32) >= thr;
}

void av_dropout_forward(float *out, const float *x, size_t n, float p, uint64_t seed) {
    uint32_t thr = threshold(p);
    float s = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) out[i] = kept(seed, i, thr) ? x[i] * s : 0.0f;
}

void av_dropout_backward(float *dx, const float *dout, size_t n, float p, uint64_t seed) {
    uint32_t thr = threshold(p);
    float s = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++)
        if (kept(seed, i, thr)) dx[i] += dout[i] * s;
}
