/* Fused decode products (backend.h av_gemv_fusion): out = in(x) . W^T for T <= 16 rows (packed
 * weights: 32), with RMSNorm on the input and a residual add, RoPE or SwiGLU pairs on the output, so a
 * decoder layer is four products and the attention. One row: an exact f32 GEMV (4/8-bit codes: x as two
 * int8 digits, error <= 2^-8 of x's step, as the CPU's decode); more: bf16 tensor-core
 * products (bf16 weights, or 2-, 4-, 8-bit MLX codes turned into bf16 fragments in registers; 4- and
 * 8-bit codes at more rows split K over a cluster); more rows still: the separate ops. Weight loads
 * start before the wait on the previous kernel (PDL). This file picks the kernel
 * (matmul_fused_row.cu, matmul_fused_split.cu, matmul_fused_mma.cu) or the separate ops. */
#include "ops/matmul_fused.cuh"

/* bf16 input widened to f32 for the separate ops on packed weights (which take f32 x). */
__global__ void fz_widen_k(float *out, const uint16_t *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __uint_as_float((uint32_t)x[i] << 16);
}

/* Output transform of the separate-ops path: prod [T, N] from the plain product into out. */
__global__ void fz_epi_k(float *out, const float *prod, int T, int N, int mode, const int32_t *pos, const float *inv_freq, int rope_rows,
                         int hd, int F, int ob) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x, cols = mode == AV_GEMV_OUT_SWIGLU ? (size_t)F : (size_t)N;
    if (i >= (size_t)T * cols) return;
    int t = (int)(i / cols), c = (int)(i - (size_t)t * cols);
    const float *pr = prod + (size_t)t * N;
    float *o = out + (size_t)t * cols;
    if (mode == AV_GEMV_OUT_SWIGLU) {
        float gv = pr[c], sw = gv / (1.0f + expf(-gv)) * pr[F + c];
        if (ob) reinterpret_cast<uint16_t *>(out)[i] = fz_bf16(sw);
        else o[c] = sw;
    } else if (mode == AV_GEMV_OUT_ADD) {
        o[c] += pr[c];
    } else if (c < rope_rows) {
        int j = c % hd, half = hd >> 1;
        if (j >= half) return; /* the pair's first thread rotates both */
        float ang = (float)pos[t] * inv_freq[j], sn, cs, p0 = pr[c], p1 = pr[c + half];
        sincosf(ang, &sn, &cs);
        o[c] = p0 * cs - p1 * sn;
        o[c + half] = p1 * cs + p0 * sn;
    } else {
        o[c] = pr[c];
    }
}

/* Code widths the tensor-core kernel reads (8 codes are 2, 4 or 8 whole bytes). */
static int fzq_mma_bits(int bits) { return bits == 2 || bits == 4 || bits == 8; }

/* Shapes the fused kernels take; anything else runs the separate ops below. */
static int fused_ok(const float *x, const av_mat *W, int T, const av_gemv_fusion *f, int f32) {
    int N = W->rows, K = W->cols, hd = f->head_dim, rr = f->out == AV_GEMV_OUT_ROPE ? f->rope_heads * hd : 0;
    if (T < 1 || T > (W->q_bits ? MMA_MAX_ROWS_Q : MMA_MAX_ROWS)) return 0;
    if (T > 1 && (f32 || (W->q_bits ? !fzq_mma_bits(W->q_bits) : W->dtype != AV_BF16))) return 0;
    if ((!W->q_bits && W->dtype != AV_BF16 && W->dtype != AV_F16) || K % 8 || N < 1 || ((uintptr_t)x % 16) || ((uintptr_t)W->data % 16))
        return 0;
    if (W->q_bits && (K % W->q_group || K % 32 || (W->q_group & (W->q_group - 1)))) return 0; /* groups: powers of two */
    if (W->q_bits && T > 1 && K % (128 / W->q_bits)) return 0; /* whole 16-byte pieces per row */
    if (W->q_bits && W->q_group < 32 && (W->q_group != 16 || (T == 1 && !(W->q_bits == 2 || W->q_bits == 3 || W->q_bits == 6 || W->q_bits == 8))))
        return 0; /* groups of 16: the one-row kernel's SUB = 2 widths (fzq_g16) and 8 bits; 2+ rows take any group of 8+ */
    if (W->q_bits && T == 1 && (size_t)K * 4 + (size_t)K / 4 + 64 > (size_t)160 * 1024) return 0; /* x in shared memory (fzq1_smem) */
    if (f->in == AV_GEMV_IN_RMSNORM && (!f->norm || (size_t)f->norm->rows * f->norm->cols != (size_t)K)) return 0;
    if (f->out == AV_GEMV_OUT_ROPE && (hd <= 0 || hd % 2 || rr < 0 || rr > N || rr % hd || (T > 1 && hd % 32))) return 0;
    if (f->out == AV_GEMV_OUT_SWIGLU && (N % 2 || (T > 1 && (N / 2) % 16))) return 0;
    if (f->in_bf16 && f->in != AV_GEMV_IN_X) return 0;
    return 1;
}

/* The argmax of a STORE product that did not fold it in: the sampler at temperature 0, then (one
 * row) the id into the host ring. */
static void argmax_after(const float *logits, int T, int N, const av_gemv_fusion *f) {
    av_cuda_sample(f->argmax, logits, T, N, 0.0f, 1.0f, 0, f->argmax_pos, NULL);
    if (T != 1 || !f->argmax_host || !f->argmax_seq || f->argmax_ring <= 0) return;
    fz_amax_args a = {f->argmax, f->argmax_pos, f->argmax_host, f->argmax_seq, f->argmax_ring};
    fz_publish(a);
    AV_CU_LAUNCHED("argmax publish");
}

extern "C" void av_cuda_matmul_fused_forward_mode(float *out, const float *x, const av_mat *W, int T, const av_gemv_fusion *f, int f32) {
    int N = W->rows, K = W->cols, hd = f->head_dim;
    if (T <= 0) return;
    if (f->argmax && f->out != AV_GEMV_OUT_STORE) { av_cuda_note(cudaErrorInvalidValue, "fused product: argmax needs a plain store"); return; }
    int fold = f->argmax && T == 1;
    if (fused_ok(x, W, T, f, f32)) {
        const void *nd = f->norm ? f->norm->data : NULL;
        av_dtype ndt = f->norm ? f->norm->dtype : AV_F32;
        fz_args a = {out, x, (const uint16_t *)W->data, W->dtype, N, K, T, nd, ndt, ndt == AV_BF16 && ((uintptr_t)nd % 16) == 0, f->eps,
                     f->pos, f->inv_freq, f->out == AV_GEMV_OUT_ROPE ? f->rope_heads * hd : 0, hd, N / 2, f->in_bf16 != 0,
                     f->out_bf16 != 0 && f->out == AV_GEMV_OUT_SWIGLU, fold};
        if (W->q_bits) {
            fzq_args qa = {W->scales, W->biases, W->q_group};
            if (f->in == AV_GEMV_IN_RMSNORM && T > 1) {
                uint16_t *xn = (uint16_t *)av_cuda_scratch(AV_SCR_FUSED, (size_t)T * K * sizeof(uint16_t));
                if (!xn) return;
                fz_norm16(xn, x, f->norm->data, f->norm->dtype, T, K, f->eps);
                AV_CU_LAUNCHED("fused product input norm");
                a.x = (const float *)xn, a.xb = 1;
                if (!fzs_launch(a, qa, W->q_bits, f->out)) fz_mma_launch(a, qa, AV_GEMV_IN_X, W->q_bits, f->out);
            } else if (T == 1) {
                fzq_row_launch(a, qa, f->in, W->q_bits, f->out);
            } else if (f->in != AV_GEMV_IN_X || !fzs_launch(a, qa, W->q_bits, f->out)) {
                fz_mma_launch(a, qa, f->in, W->q_bits, f->out);
            }
        } else if (T == 1) {
            fz_row_launch(a, f->in, f->out);
        } else {
            fz_mma_launch(a, fzq_args{}, f->in, 0, f->out);
        }
        AV_CU_LAUNCHED("fused decode product");
        if (fold) {
            fz_amax_args am = {f->argmax, f->argmax_pos, f->argmax_host, f->argmax_seq, f->argmax_ring};
            if (!am.ahost || !am.aseq || am.aring <= 0) am.ahost = NULL;
            fz_amax_finish(am);
            AV_CU_LAUNCHED("argmax finish");
        }
        if (f->argmax && !fold) argmax_after(out, T, N, f);
        return;
    }
    /* the separate ops through scratch (same results within the table's precision, more launches) */
    float *in = (float *)av_cuda_scratch(AV_SCR_FUSED, ((size_t)K + N) * T * sizeof(float));
    if (!in) return;
    float *prod = in + (size_t)K * T;
    const float *src = x;
    int x16 = f->in_bf16;
    if (x16 && W->q_bits) { /* packed weights take f32 input */
        fz_widen_k<<<av_cdiv((size_t)T * K, 256), 256, 0, av_cuda_stream()>>>(in, (const uint16_t *)x, (size_t)T * K);
        AV_CU_LAUNCHED("fused product input widen");
        src = in, x16 = 0;
    }
    if (f->in == AV_GEMV_IN_RMSNORM) {
        if (x16) { av_cuda_note(cudaErrorInvalidValue, "fused product: bf16 input with RMSNorm"); return; }
        av_cuda_rmsnorm_forward(in, NULL, x, f->norm, T, K, f->eps);
        src = in;
    }
    int direct = f->out == AV_GEMV_OUT_STORE || (f->out == AV_GEMV_OUT_ROPE && f->rope_heads <= 0);
    if (!x16) av_cuda_matmul_forward_mode(direct ? out : prod, src, W, T, f32);
    else if (av_cuda_matmul_forward_ex(direct ? out : prod, 0, x, 1, W, T, 1.0f, 0) != 0) { /* bf16 x straight into cuBLAS */
        av_cuda_note(cudaErrorInvalidValue, "fused product: bf16 input for this weight");
        return;
    }
    if (direct) {
        if (f->argmax) argmax_after(out, T, N, f);
        return;
    }
    size_t n = (size_t)T * (f->out == AV_GEMV_OUT_SWIGLU ? N / 2 : N);
    fz_epi_k<<<av_cdiv(n, 256), 256, 0, av_cuda_stream()>>>(out, prod, T, N, (int)f->out, f->pos, f->inv_freq,
                                                         f->out == AV_GEMV_OUT_ROPE ? f->rope_heads * hd : 0, hd > 0 ? hd : 1, N / 2,
                                                         f->out_bf16 != 0 && f->out == AV_GEMV_OUT_SWIGLU);
    AV_CU_LAUNCHED("fused product epilogue");
}
