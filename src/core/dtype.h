/* Element types and scalar conversions (bf16/f16 <-> f32). Inline so kernels can use them in
 * inner loops; the compiler vectorises the bf16 shift and uses F16C for f16 where available. */
#ifndef AV_DTYPE_H
#define AV_DTYPE_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "anvil.h"

/* clang before 15 has no _Float16 on x86-64 without AVX512-FP16 (the fuzz build): F16C's
 * instructions convert identically (IEEE round to nearest even) and need -mf16c. */
#if defined(__clang__) && __clang_major__ < 15 && defined(__x86_64__) && !defined(__AVX512FP16__)
#define AV_F16_VIA_F16C 1
#ifndef __F16C__
#error "clang < 15 on x86-64: build with -mf16c (no _Float16 support)"
#endif
#include <immintrin.h>
#endif

/* av_dtype, av_dtype_name, av_dtype_parse: include/anvil.h */

static inline size_t av_dtype_size(av_dtype t) {
    static const size_t sz[AV_DTYPE_COUNT] = {4, 2, 2, 4, 8, 1, 1, 4, 8, 1};
    return sz[t];
}

static inline float av_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint16_t av_f32_to_bf16(float f) { /* round to nearest even, NaN kept NaN */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float av_f16_to_f32(uint16_t h) {
#ifdef AV_F16_VIA_F16C
    return _cvtsh_ss(h);
#else
    _Float16 f;
    memcpy(&f, &h, 2);
    return (float)f;
#endif
}
static inline uint16_t av_f32_to_f16(float f) {
#ifdef AV_F16_VIA_F16C
    return (uint16_t)_cvtss_sh(f, 0); /* 0: round to nearest even */
#else
    _Float16 h = (_Float16)f;
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
#endif
}
/* Converts n elements of `src` (f32/f16/bf16) to f32. */
void av_convert_to_f32(float *dst, const void *src, av_dtype t, size_t n);
/* Converts n f32 values to `t` (f32/f16/bf16). */
void av_convert_from_f32(void *dst, av_dtype t, const float *src, size_t n);

#endif
