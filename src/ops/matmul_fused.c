/* CPU twin of matmul_fused.cu (backend matmul_fused_forward, av_gemv_fusion in backend/backend.h):
 * the fused decode product composed from the separate ops (RMSNorm, matmul, RoPE, SwiGLU, add),
 * scratch allocated per call. Greedy argmax fold as the sampler at temperature 0 (NaN skipped). */
#include "backend/backend.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Lowest index of the row's maximum, NaN skipped (0 when every value is NaN or -inf). */
static int32_t row_argmax(const float *l, int N) {
    float bv = -INFINITY;
    int32_t bi = 0;
    for (int j = 0; j < N; j++)
        if (l[j] > bv) bv = l[j], bi = j;
    return bi;
}

/* The fold of a STORE product: ids, positions and (one row) the host ring (CPU memory is host memory). */
static void argmax_fold(const float *out, int T, int N, const av_gemv_fusion *f) {
    for (int t = 0; t < T; t++) {
        f->argmax[t] = row_argmax(out + (size_t)t * N, N);
        if (f->argmax_pos) f->argmax_pos[t] += 1;
    }
    if (T == 1 && f->argmax_host && f->argmax_seq && f->argmax_ring > 0) {
        unsigned s = *f->argmax_seq;
        f->argmax_host[s % (unsigned)f->argmax_ring] = f->argmax[0];
        *f->argmax_seq = s + 1;
    }
}

/* Shapes and flag combinations the product serves (as the CUDA op: anything else does nothing). */
static int fusion_ok(const av_mat *W, const av_gemv_fusion *f) {
    int N = W->rows, hd = f->head_dim;
    if (N < 1 || W->cols < 1) return 0;
    if (f->argmax && f->out != AV_GEMV_OUT_STORE) return av_fail(AV_ERR_ARG, "fused product: argmax needs a plain store"), 0;
    if (f->in_bf16 && f->in != AV_GEMV_IN_X) return av_fail(AV_ERR_ARG, "fused product: bf16 input with RMSNorm"), 0;
    if (f->in == AV_GEMV_IN_RMSNORM && (!f->norm || (size_t)f->norm->rows * f->norm->cols != (size_t)W->cols))
        return av_fail(AV_ERR_ARG, "fused product: RMSNorm weight of %d values for %d inputs", f->norm ? f->norm->rows * f->norm->cols : 0,
                       W->cols), 0;
    if (f->out == AV_GEMV_OUT_ROPE && f->rope_heads > 0 &&
        (hd <= 0 || hd % 2 || hd > 512 || (size_t)f->rope_heads * hd > (size_t)N || !f->pos || !f->inv_freq))
        return av_fail(AV_ERR_ARG, "fused product: RoPE over %d heads of %d in %d outputs", f->rope_heads, hd, N), 0;
    if (f->out == AV_GEMV_OUT_SWIGLU && N % 2) return av_fail(AV_ERR_ARG, "fused product: SwiGLU over %d (odd) rows", N), 0;
    return 1;
}

void av_matmul_fused_forward(float *out, const float *x, const av_mat *W, int T, const struct av_gemv_fusion *f) {
    int N = W->rows, K = W->cols, F = N / 2;
    if (T <= 0 || !fusion_ok(W, f)) return;
    int ob = f->out == AV_GEMV_OUT_SWIGLU && f->out_bf16;
    /* scratch: the input [T, K] when transformed; the plain product [T, N] when out is not it;
     * the SwiGLU rows [T, F] before their bf16 rounding */
    size_t n_in = (f->in == AV_GEMV_IN_RMSNORM || f->in_bf16) ? (size_t)T * K : 0;
    size_t n_prod = (f->out == AV_GEMV_OUT_ADD || f->out == AV_GEMV_OUT_SWIGLU) ? (size_t)T * N : 0;
    size_t n_sw = ob ? (size_t)T * F : 0;
    float *scr = NULL;
    if (n_in + n_prod + n_sw) {
        scr = malloc(sizeof(float) * (n_in + n_prod + n_sw));
        if (!scr) { av_fail(AV_ERR_NOMEM, "fused product: out of memory"); return; }
    }
    float *in = scr, *prod = scr ? scr + n_in : NULL, *sw = scr ? prod + n_prod : NULL;
    const float *src = x;
    if (f->in_bf16) {
        av_load_bf16(in, (const uint16_t *)x, (size_t)T * K);
        src = in;
    } else if (f->in == AV_GEMV_IN_RMSNORM) {
        av_rmsnorm_forward(in, NULL, x, f->norm, T, K, f->eps);
        src = in;
    }
    switch (f->out) {
    case AV_GEMV_OUT_ADD:
        av_matmul_forward(prod, src, W, T);
        av_add_inplace(out, prod, (size_t)T * N);
        break;
    case AV_GEMV_OUT_SWIGLU:
        av_matmul_forward(prod, src, W, T);
        for (int t = 0; t < T; t++) {
            const float *g = prod + (size_t)t * N;
            av_swiglu_forward((ob ? sw : out) + (size_t)t * F, g, g + F, (size_t)F);
        }
        if (ob) av_store_bf16((uint16_t *)out, sw, (size_t)T * F);
        break;
    case AV_GEMV_OUT_ROPE:
        av_matmul_forward(out, src, W, T);
        for (int t = 0; f->rope_heads > 0 && t < T; t++)
            av_rope_forward(out + (size_t)t * N, f->pos + t, f->inv_freq, 1, f->rope_heads, f->head_dim);
        break;
    case AV_GEMV_OUT_STORE:
    default:
        av_matmul_forward(out, src, W, T);
        if (f->argmax) argmax_fold(out, T, N, f);
        break;
    }
    free(scr);
}
