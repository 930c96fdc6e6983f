/* MLX's affine group quantization: w ~= scale * q + bias per group of `group` columns, q in
 * [0, 2^bits), packed as a little-endian bit stream in uint32 words (value j of a row at bits
 * [j*bits, (j+1)*bits), so 3/5/6-bit values cross word boundaries), exactly as mlx.core.quantize. */
#ifndef AV_QUANT_AFFINE_H
#define AV_QUANT_AFFINE_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "core/dtype.h"

/* Scale or bias i of a table in dtype t. Tables live in mmapped files at any byte offset: read by memcpy. */
static inline float av_quant_load_sb(const void *p, av_dtype t, size_t i) {
    if (t == AV_BF16 || t == AV_F16) {
        uint16_t h;
        memcpy(&h, (const char *)p + 2 * i, 2);
        return t == AV_BF16 ? av_bf16_to_f32(h) : av_f16_to_f32(h);
    }
    float f;
    memcpy(&f, (const char *)p + 4 * i, 4);
    return f;
}

/* 1 when bits is 2, 3, 4, 5, 6 or 8 and group is 32, 64 or 128. */
int av_quant_supported(int bits, int group);
/* uint32 words per packed row of `cols` values (cols % 32 == 0). */
static inline int av_quant_row_words(int cols, int bits) { return cols / 32 * bits; }

/* Quantizes one group of `group` f32 values: q[group] codes, *scale, *bias in f32 (MLX's rule:
 * the edge of larger magnitude maps exactly to a code, ties round to even). */
void av_quant_group(uint8_t *q, float *scale, float *bias, const float *w, int group, int bits);

/* Quantizes w[rows, cols] (row-major f32; cols % group == 0): packed[rows, cols*bits/32] words,
 * scales/biases[rows, cols/group] stored as `sdt` (f32/f16/bf16). Codes use the f32 scale, as MLX. */
void av_quant_matrix(uint32_t *packed, void *scales, void *biases, av_dtype sdt, const float *w, int rows, int cols,
                     int bits, int group);

/* Reads codes [c0, c0+n) of one packed row into q (values 0 .. 2^bits-1). */
void av_quant_unpack(uint8_t *q, const uint32_t *row, int c0, int n, int bits);
/* Writes codes q[n] at columns [c0, c0+n) of one packed row (those bits must be zero beforehand). */
void av_quant_pack(uint32_t *row, const uint8_t *q, int c0, int n, int bits);

/* Dequantizes row r of a packed matrix into dst[cols]: scale * q + bias (scales/biases as `sdt`). */
void av_quant_dequant_row(float *dst, const uint32_t *packed, const void *scales, const void *biases, av_dtype sdt,
                          int r, int cols, int bits, int group);

/* x[cols] . row r of the dequantized matrix, group by group: scale * (x . q) + bias * sum(x). */
float av_quant_dot_row(const float *x, const uint32_t *packed, const void *scales, const void *biases, av_dtype sdt,
                       int r, int cols, int bits, int group);

#endif
