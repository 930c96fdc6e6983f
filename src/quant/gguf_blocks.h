/* GGUF (ggml) block formats: which tensor types anvil keeps as they are (F32, F16, BF16), which it
 * repacks exactly into the affine layout (group 32, MLX's: Q8_0 and Q4_0/Q5_0 as scale d, bias -128d /
 * -8d / -16d; Q4_1/Q5_1 as scale d, bias m; Q4_K/Q5_K per 32-element sub-block as scale d*sc, bias
 * -dmin*m; group 16, for the CPU kernels only: Q6_K per 16-element sub-block as 6-bit codes, scale
 * d*sc, bias -32*d*sc; Q3_K as 3-bit codes, scale d*sc, bias -4*d*sc; Q2_K as 2-bit codes, scale
 * d*(sc&15), bias -dmin*(sc>>4)), and which it dequantizes to f32 at load (Q2_K, Q3_K, Q6_K on a GPU). */
#ifndef AV_QUANT_GGUF_BLOCKS_H
#define AV_QUANT_GGUF_BLOCKS_H
#include <stdint.h>
#include "core/dtype.h"

/* The av_dtype a GGUF type is kept as (F32, F16, BF16), or -1 when it is not a plain float type. */
int av_gguf_native_dtype(int ggml_type);
/* Bits of the affine layout a type repacks to exactly (8, 6, 5 or 4), 0 if none, and its group size
 * (32; 16 for Q2_K, Q3_K and Q6_K, which only the CPU kernels take). */
int av_gguf_repack_bits(int ggml_type);
int av_gguf_repack_group(int ggml_type);
/* 1 when av_gguf_dequant_row handles the type (the repackable ones, Q2_K, Q3_K and Q6_K). */
int av_gguf_can_dequant(int ggml_type);

/* Scale/bias dtype the repack needs: F16 when every scale and bias is exact in f16, else F32.
 * src: `nblocks` blocks of the type (of 32 values, or 256 for the K-quants). */
av_dtype av_gguf_repack_scale_dtype(int ggml_type, const void *src, int64_t nblocks);
/* Repacks rows x cols (cols a multiple of the type's block) into MLX words packed[rows][cols*bits/32] (zeroed by the
 * caller), scales/biases[rows][cols/group] as sdt. Destination row r is source row row_map[r]
 * (row_map NULL: the same row). */
void av_gguf_repack(uint32_t *packed, void *scales, void *biases, av_dtype sdt, const void *src, int ggml_type, int rows,
                    int cols, const int *row_map);
/* The two-level scales of Q4_K/Q5_K (sc, m: u8 per 32 values; d, dmin: per 256) or Q6_K (sc: i8 per 16
 * values; d per 256; m and dmin unused) of rows x cols, in the repack's row order (row_map as there):
 * the av_kscales tables (ops.h), whose d*sc and -(dmin*m) are the repack's scales and biases exactly. */
void av_gguf_kscales(uint8_t *sc, uint8_t *m, float *d, float *dmin, const void *src, int ggml_type, int rows, int cols,
                     const int *row_map);
/* Dequantizes one row of `cols` values (whole blocks) to f32. */
void av_gguf_dequant_row(float *dst, const void *src_row, int ggml_type, int cols);

/* Quantizes one row of `cols` f32 values (cols % 32 == 0; K-quants: % 256) into Q8_0, Q4_0, Q4_K or Q6_K
 * blocks with ggml's reference rounding (quantize_row_{q8_0,q4_0,q4_K,q6_K}_ref): Q8_0 d = absmax/127,
 * q = roundf(x/d); Q4_0 d = -m/8 for m the value of largest magnitude (first one on ties),
 * q = min(15, trunc(x/d + 8.5)); d stored as f16, the codes computed with the f32 d. Q4_K: each
 * 32-value sub-block's scale and min fitted by weighted least squares over 21 trial grids, quantized
 * to 6 bits against f16 super-block d/dmin, codes recomputed from the stored values. Q6_K: each
 * 16-value sub-block fitted symmetrically (x^2-weighted, 19 trial grids), int8 scales against an f16
 * d, codes recomputed. Returns 0, or -1 for another type. */
int av_gguf_quant_row(void *dst, const float *src, int ggml_type, int cols);

#endif
