/* Products with MLX-quantized weight matrices on the CPU (av_mat with q_bits set): decode products
 * over a range of weight rows for a few activation rows, and SIMD row dequantization for the
 * prefill GEMM's panels, the embedding and the backward. Single-threaded functions: callers split
 * rows between threads. One implementation is compiled in, picked by the target's instruction set:
 *   AVX-512 VNNI (+BW): x prepared once per product as two int8 digits per 4/8/16 columns (one
 *     vpdpbusd lane): x = d (q1 + q2/256), d = amax/127; the packed codes enter vpdpbusd as
 *     unsigned bytes against q1 and q2 (int32: (q.q1) * 256 + q.q2), scaled per lane by
 *     (weight group scale) * d/256; out = sum s_g (x . q)_g + b_g sum_g(x). Error per x element
 *     <= d/256 (one digit alone, as llama.cpp's Q8 activations: d/2, ~0.4% of a product; two:
 *     ~1e-5, for ~5-10% more time at T = 1; a third digit q3/65536 for prompt rows: ~6e-8, f32's rounding).
 *     AVX512_VBMI unpacks 3/5/6 bits (vpermb + vpmultishiftqb).
 *   AVX2: the same digits and lanes, vpdpbusd done as vpmaddubsw + vpmaddwd on 32-byte halves
 *     (8-bit codes as q - 128 through vpsignb, the 128 folded into the bias).
 *   portable C: av_quant_dot_row per row.
 * tests/test_qmatmul.c states the bound; the weight codes themselves lose far more (4 bits: ~10%,
 * 8 bits: ~0.6% of a product). */
#ifndef AV_QUANT_QMATMUL_H
#define AV_QUANT_QMATMUL_H
#include <stddef.h>
#include <stdint.h>
#include "ops/ops.h"

/* x rows prepared for one product (av_qx_prepare): views into the caller's buffer. */
typedef struct {
    const float *x;   /* [T, K] the f32 rows */
    int T, K, bits, group;
    int nc, cc;       /* chunks per row, columns per chunk (VNNI layout) */
    int nd;           /* int8 digits of x: 2, or 3 (VNNI and AVX2: error ~d/2^17, at f32's rounding) */
    int8_t *q;        /* [T, nc, nd, cc] x digits q1, q2 (, q3) per chunk in the byte order of the packed weights */
    float *dl;        /* [T, nc, 16] d/256 of each vpdpbusd lane */
    float *xs;        /* [T, ngp] sum of x over each weight group (ngp = groups rounded up to 16, zeros past) */
    int ngp;
} av_qx;

/* Bytes of buffer av_qx_prepare needs for T rows against W (64-byte aligned buffer). */
size_t av_qx_size(int T, const av_mat *W);
/* Prepares x[T, W->cols] for products with W into buf (av_qx_size bytes, 64-byte aligned): two digits. */
void av_qx_prepare(av_qx *qx, void *buf, const float *x, int T, const av_mat *W);
/* The most digits this build's kernel takes (3 with VNNI or AVX2, else 2), and the _digits forms of the two
 * calls above (nd above the maximum is clamped to it). Prompt rows take 3: their products match the
 * f32 panel path to f32 rounding; decode keeps 2, ~5-10% faster (bench/NOTES-cpu-quant.md). */
int av_qx_max_digits(void);
size_t av_qx_size_digits(int T, const av_mat *W, int nd);
void av_qx_prepare_digits(av_qx *qx, void *buf, const float *x, int T, const av_mat *W, int nd);
/* out[t * ldo + (n - n0)] = x_t . dequant(W row n) for n in [n0, n1), t < qx->T (qx prepared against W). */
void av_qmatmul_rows(float *out, size_t ldo, const av_qx *qx, const av_mat *W, int n0, int n1);
/* dst[r * ldd + c] = dequant(W)[r0 + r][c] for r < nr: bit-identical to av_quant_dequant_row. */
void av_qdequant_rows(float *dst, size_t ldd, const av_mat *W, int r0, int nr);
/* Which implementation is compiled in: "avx512-vnni", "avx2" or "portable". */
const char *av_qmatmul_impl(void);

#endif
