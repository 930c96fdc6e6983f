/* Minimal test harness: CHECK macros count failures; TEST_SUMMARY() prints
 * "<file>: N checks, M failed[, K skipped]" and returns the exit status. */
#ifndef AV_TEST_H
#define AV_TEST_H
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int t_checks, t_failed, t_skipped;

#define CHECK(cond, ...) do { t_checks++; if (!(cond)) { t_failed++; \
    fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)
#define CHECK_OK(expr) do { av_status s_ = (expr); CHECK(s_ == AV_OK, "%s", av_last_error()); } while (0)
#define CHECK_NEAR(a, b, tol) do { double a_ = (a), b_ = (b); CHECK(fabs(a_ - b_) <= (tol), "%s=%.9g vs %s=%.9g (tol %g)", #a, a_, #b, b_, (double)(tol)); } while (0)
#define SKIP(why) do { t_skipped++; printf("skipped: %s\n", why); } while (0)
/* 1 in a build with AddressSanitizer (make asan): the slowest shapes there are left to make test */
#if defined(__SANITIZE_ADDRESS__)
#define TEST_SANITIZED 1
#else
#define TEST_SANITIZED 0
#endif
/* Exit status: 1 on any failure; 77 (skipped) when nothing was checked and something was skipped
 * (a GPU-only suite without a GPU); 0 otherwise. tests/run.sh counts 77 as skipped, never passed. */
void av_cuda_shutdown(void); /* include/anvil.h: the arena back before exit (compute-sanitizer's leak check) */
#define TEST_SUMMARY() (av_cuda_shutdown(), printf("%s: %d checks, %d failed%s\n", __FILE__, t_checks, t_failed, t_skipped ? ", some skipped" : ""), \
                        t_failed ? 1 : (t_checks == 0 && t_skipped) ? 77 : 0)

/* Relative L2 error of a against ref (INFINITY on NaN). */
static inline double test_rel_l2(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        if (d != d) return INFINITY;
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1e-30));
}

/* The repository's reference fixtures: tests/fixtures (tests run from the repository root), or
 * $AV_FIXTURES. They are part of the repository, so a missing folder is a failure, not a skip. */
static inline const char *test_fixtures(void) {
    const char *e = getenv("AV_FIXTURES");
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s", e ? e : "tests/fixtures");
    if (access(buf, R_OK) != 0) { fprintf(stderr, "FAIL: fixtures not found at %s (run from the repository root)\n", buf); exit(1); }
    return buf;
}
static inline const char *test_fixture(const char *name) {
    static char buf[8][4096];
    static int k;
    const char *d = test_fixtures();
    if (!d) return NULL;
    k = (k + 1) & 7;
    snprintf(buf[k], sizeof buf[k], "%s/%s", d, name);
    return buf[k];
}
/* A float view of file data that may be unaligned (safetensors data start where the header ends):
 * the pointer itself when 4-byte aligned, else an aligned copy, freed at exit. */
static void *t_copies[256];
static int t_ncopies;
static void t_free_copies(void) {
    while (t_ncopies) free(t_copies[--t_ncopies]);
}
static inline const float *test_f32_view(const void *p, size_t n) {
    if (!p || ((uintptr_t)p & 3) == 0) return (const float *)p;
    float *c = malloc(n * sizeof(float) + 1);
    if (!c || t_ncopies == (int)(sizeof t_copies / sizeof t_copies[0])) { free(c); return NULL; }
    if (!t_ncopies) atexit(t_free_copies);
    memcpy(c, p, n * sizeof(float));
    t_copies[t_ncopies++] = c;
    return c;
}
/* Test data: a seedable LCG (each test sets test_rng_state to its own seed first thing in main). */
static unsigned test_rng_state = 12345;
static inline float test_frand(void) { /* uniform in [-1, 1) */
    test_rng_state = test_rng_state * 1664525u + 1013904223u;
    return ((test_rng_state >> 8) / 16777216.0f) * 2.0f - 1.0f;
}
static inline float *test_rnd(size_t n, float scale) { /* n floats, uniform in [-scale, scale) (malloc'd) */
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = test_frand() * scale;
    return p;
}

#endif
