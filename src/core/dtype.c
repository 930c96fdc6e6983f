/* dtype names and bulk conversions. */
#include "core/dtype.h"
#include <strings.h>

static const char *k_names[AV_DTYPE_COUNT] = {"F32", "F16", "BF16", "I32", "I64", "U8", "I8", "U32", "F64", "BOOL"};

const char *av_dtype_name(av_dtype t) { return (unsigned)t < AV_DTYPE_COUNT ? k_names[t] : "?"; }

int av_dtype_parse(const char *s, av_dtype *out) {
    for (int i = 0; i < AV_DTYPE_COUNT; i++)
        if (!strcasecmp(s, k_names[i])) { *out = (av_dtype)i; return 0; }
    if (!strcasecmp(s, "float32")) { *out = AV_F32; return 0; }
    if (!strcasecmp(s, "float16")) { *out = AV_F16; return 0; }
    if (!strcasecmp(s, "bfloat16")) { *out = AV_BF16; return 0; }
    return -1;
}

void av_convert_to_f32(float *dst, const void *src, av_dtype t, size_t n) {
    if (t == AV_F32) { memcpy(dst, src, n * 4); return; }
    const uint16_t *s = (const uint16_t *)src;
    if (t == AV_BF16) {
        for (size_t i = 0; i < n; i++) dst[i] = av_bf16_to_f32(s[i]);
    } else {
#ifdef AV_F16_VIA_F16C
        for (size_t i = 0; i < n; i++) dst[i] = av_f16_to_f32(s[i]);
#else
        const _Float16 *h = (const _Float16 *)src;
        for (size_t i = 0; i < n; i++) dst[i] = (float)h[i];
#endif
    }
}

void av_convert_from_f32(void *dst, av_dtype t, const float *src, size_t n) {
    if (t == AV_F32) { memcpy(dst, src, n * 4); return; }
    uint16_t *d = (uint16_t *)dst;
    if (t == AV_BF16) for (size_t i = 0; i < n; i++) d[i] = av_f32_to_bf16(src[i]);
    else for (size_t i = 0; i < n; i++) d[i] = av_f32_to_f16(src[i]);
}
