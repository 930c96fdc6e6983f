/* xoshiro256** (Blackman & Vigna) seeded with splitmix64; uniform, range, normal draws. */
#include "core/rng.h"
#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void av_rng_seed(av_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
    r->has_spare = 0;
    r->spare = 0;
}

uint64_t av_rng_u64(av_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double av_rng_uniform(av_rng *r) { return (double)(av_rng_u64(r) >> 11) * 0x1.0p-53; }

float av_rng_uniform_range(av_rng *r, float lo, float hi) {
    float v = lo + (hi - lo) * (float)av_rng_uniform(r);
    return v < hi ? v : lo; /* rounding can reach hi */
}

double av_rng_normal(av_rng *r) {
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    double u1, u2;
    do u1 = av_rng_uniform(r); while (u1 <= 0.0);
    u2 = av_rng_uniform(r);
    double rad = sqrt(-2.0 * log(u1)), th = 2.0 * 3.14159265358979323846 * u2;
    r->spare = rad * sin(th);
    r->has_spare = 1;
    return rad * cos(th);
}

uint64_t av_rng_below(av_rng *r, uint64_t n) {
    uint64_t lim = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = av_rng_u64(r); while (x >= lim);
    return x % n;
}
