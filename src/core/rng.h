/* Small deterministic RNG: xoshiro256** seeded through splitmix64, with uniform and normal
 * draws. Same seed -> same stream on every machine (no libc rand). */
#ifndef AV_RNG_H
#define AV_RNG_H
#include <stdint.h>

typedef struct {
    uint64_t s[4];
    int has_spare;
    double spare;
} av_rng;

void av_rng_seed(av_rng *r, uint64_t seed);
uint64_t av_rng_u64(av_rng *r);
/* Uniform double in [0, 1) with 53 random bits. */
double av_rng_uniform(av_rng *r);
/* Uniform float in [lo, hi). */
float av_rng_uniform_range(av_rng *r, float lo, float hi);
/* Standard normal (Box-Muller, one spare cached). */
double av_rng_normal(av_rng *r);
/* Uniform integer in [0, n) (n > 0), without modulo bias. */
uint64_t av_rng_below(av_rng *r, uint64_t n);

#endif
