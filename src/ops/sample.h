/* Token sampling over logits rows (argmax, or temperature + top-p), the rule the CUDA sampler
 * (sample.cu, the backend's `sample` op) follows on the device. Randomness is a counter-based hash
 * of (seed, position), so the same seed gives the same tokens on either backend. */
#ifndef AV_SAMPLE_H
#define AV_SAMPLE_H
#include <stddef.h>
#include <stdint.h>

/* The host sampling steps, shared by av_sample_rows and the engine's sampler (engine/sampler.c):
 * weights w_j = exp((l_j - mx) / T) with mx the row's maximum. */
int av_sample_argmax(const float *l, int V);                    /* lowest index on ties, NaN skipped */
float av_sample_mass(const float *l, int V, float mx, float invt, float tau); /* sum of w_j >= tau, index order */
float av_sample_top_p_tau(const float *l, int V, float mx, float invt, float top_p); /* largest tau keeping top_p of the mass */
/* Inverse-CDF draw in index order among w_j >= tau with u in [0, 1); best if rounding runs out. */
int av_sample_draw(const float *l, int V, float mx, float invt, float tau, float u, int best);

/* Host version of backend->sample (same semantics; host pointers). */
void av_sample_rows(int32_t *ids, const float *logits, int N, int V, float temperature, float top_p, uint64_t seed, int32_t *pos,
                    const int32_t *active);
#ifdef __CUDACC__
#define AV_HD __host__ __device__
#else
#define AV_HD
#endif
/* Uniform in [0, 1) from (seed, position): splitmix64 of the two, top 24 bits. Keyed by the
 * position of the token whose logits are sampled and not by the batch row, so a sequence draws the
 * same numbers alone or in any row of a batch (the same --seed gives the same tokens either way). */
AV_HD static inline float av_sample_uniform(uint64_t seed, int position) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull + 0xD1B54A32D192ED03ull * (uint64_t)(uint32_t)position;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}
#endif
