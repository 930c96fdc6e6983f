/* CUDA twin of optim.c: MLX's Adam/AdamW/SGD updates elementwise in f32 with the step's scalars
 * formed on the host as the CPU op forms them; Adafactor's row/column means and RMS reductions in
 * fixed-order block sums (deterministic) through a small device scratch. */
#include "backend/cuda_common.cuh"
#include <math.h>
extern "C" {
#include "backend/cuda.h"
}

struct adam_c {
    float lr, b1, b2, a1, a2, eps, decay, c1, c2;
    int bc;
};

__global__ void adam_k(float *p, const float *g, float *m, float *v, size_t n, adam_c c) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float pi = p[i] * c.decay, gi = g[i];
    float mi = c.b1 * m[i] + c.a1 * gi, vi = c.b2 * v[i] + c.a2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    p[i] = c.bc ? pi - c.c1 * mi / (sqrtf(vi) * c.c2 + c.eps) : pi - c.lr * mi / (sqrtf(vi) + c.eps);
}

__global__ void sgd_k(float *p, const float *g, float *buf, size_t n, float lr, float wd, float mu, float damp, int use_damp,
                      int nesterov) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i];
    if (wd != 0) gi = gi + wd * p[i];
    if (!buf) {
        p[i] = p[i] - lr * gi;
        return;
    }
    float bi = mu * buf[i];
    bi = use_damp ? bi + damp * gi : bi + gi;
    buf[i] = bi;
    p[i] = p[i] - lr * (nesterov ? gi + mu * bi : bi);
}

/* ---- Adafactor ---------------------------------------------------------------------------------- */
enum { AF_PSQ = 0, AF_ROWMEAN, AF_USQ, AF_NPART = 1024, AF_PART = 4 }; /* scratch: 4 results, then partials */

struct af_c {
    int rows, cols, fac, first_moment, scale_parameter, has_wd;
    float eps1, eps2, rel, beta2, a2, clip, b1, a1, wd;
};

/* factor * g for element i (row/col state after this step's update) */
__device__ __forceinline__ float af_u(const float *g, const float *s2, size_t i, const af_c &c, float rmean) {
    if (!c.fac) return (1.0f / sqrtf(s2[i])) * g[i];
    int r = (int)(i / (size_t)c.cols), col = (int)(i % (size_t)c.cols);
    return (1.0f / sqrtf(s2[r] / rmean)) * (1.0f / sqrtf(s2[c.rows + col])) * g[i];
}

/* mode 0: sum p^2; 1: sum of the row state; 2: sum u^2. One partial per block, then af_final_k. */
__global__ void af_partial_k(const float *x, const float *g, const float *s2, size_t n, af_c c, int mode, float *scr) {
    __shared__ float sh[32];
    float rmean = mode == 2 && c.fac ? scr[AF_ROWMEAN] : 0.0f;
    float s = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = mode == 0 ? x[i] : mode == 1 ? s2[i] : af_u(g, s2, i, c, rmean);
        s += mode == 1 ? v : v * v;
    }
    s = av_block_sum(s, sh);
    if (threadIdx.x == 0) scr[AF_PART + blockIdx.x] = s;
}
__global__ void af_final_k(float *scr, int nparts, int slot, float div) {
    __shared__ float sh[32];
    float s = 0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += scr[AF_PART + i];
    s = av_block_sum(s, sh);
    if (threadIdx.x == 0) scr[slot] = s / div;
}

/* row r: mean over columns of g^2 + eps1 into the row state (one block per row) */
__global__ void af_rows_k(const float *g, float *row, af_c c) {
    __shared__ float sh[32];
    const float *gr = g + (size_t)blockIdx.x * c.cols;
    float s = 0;
    for (int j = threadIdx.x; j < c.cols; j += blockDim.x) s += gr[j] * gr[j] + c.eps1;
    s = av_block_sum(s, sh);
    if (threadIdx.x == 0) row[blockIdx.x] = c.beta2 * row[blockIdx.x] + c.a2 * (s / (float)c.cols);
}
/* column j: mean over rows (one thread per column, coalesced across the warp) */
__global__ void af_cols_k(const float *g, float *col, af_c c) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c.cols) return;
    float s = 0;
    for (int r = 0; r < c.rows; r++) {
        float x = g[(size_t)r * c.cols + j];
        s += x * x + c.eps1;
    }
    col[j] = c.beta2 * col[j] + c.a2 * (s / (float)c.rows);
}
__global__ void af_vec_k(const float *g, float *v, size_t n, af_c c) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) v[i] = c.beta2 * v[i] + c.a2 * (g[i] * g[i] + c.eps1);
}
__global__ void af_apply_k(float *p, const float *g, float *ea, const float *s2, size_t n, af_c c, const float *scr) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float lr = c.scale_parameter ? fmaxf(c.eps2, sqrtf(scr[AF_PSQ])) * c.rel : c.rel;
    float div = fmaxf(1.0f, sqrtf(scr[AF_USQ]) / c.clip);
    float u = lr * (af_u(g, s2, i, c, c.fac ? scr[AF_ROWMEAN] : 0.0f) / div);
    if (c.first_moment) u = ea[i] = c.b1 * ea[i] + c.a1 * u;
    float pi = p[i];
    if (c.has_wd) pi = pi + pi * (-c.wd * lr);
    p[i] = pi - u;
}

static void af_sum(const float *x, const float *g, const float *s2, size_t n, const af_c &c, int mode, float *scr, int slot,
                   float div) {
    size_t blocks = av_cdiv(n, 256);
    int nb = blocks < (size_t)AF_NPART ? (int)blocks : (int)AF_NPART;
    af_partial_k<<<nb, 256, 0, av_cuda_stream()>>>(x, g, s2, n, c, mode, scr);
    af_final_k<<<1, 1024, 0, av_cuda_stream()>>>(scr, nb, slot, div);
}

static void adafactor(float *p, const float *g, float *ea, float *s2, int rows, int cols, const av_optim_params *o) {
    size_t n = (size_t)rows * (size_t)cols;
    float t = (float)o->step;
    af_c c;
    c.rows = rows;
    c.cols = cols;
    c.fac = rows >= 2 && cols >= 2;
    c.first_moment = o->af_first_moment;
    c.scale_parameter = o->scale_parameter;
    c.has_wd = o->weight_decay != 0;
    c.eps1 = (float)o->eps1;
    c.eps2 = (float)o->eps2;
    c.rel = o->relative_step ? fminf(o->warmup_init ? 1e-6f * t : 1e-2f, 1.0f / sqrtf(t)) : o->lr;
    c.beta2 = 1.0f - powf(t, (float)o->decay_rate);
    c.a2 = 1.0f - c.beta2;
    c.clip = (float)o->clip_threshold;
    c.b1 = (float)o->af_beta1;
    c.a1 = (float)(1.0 - o->af_beta1);
    c.wd = (float)o->weight_decay;
    float *scr = (float *)av_cuda_scratch(AV_SCR_OPTIM, (AF_PART + AF_NPART) * sizeof(float));
    if (!scr) return;
    af_sum(p, g, s2, n, c, 0, scr, AF_PSQ, (float)n); /* mean p^2 (of p before this step) */
    if (c.fac) {
        af_rows_k<<<rows, 256, 0, av_cuda_stream()>>>(g, s2, c);
        af_cols_k<<<av_cdiv(cols, 256), 256, 0, av_cuda_stream()>>>(g, s2 + rows, c);
        af_sum(NULL, g, s2, (size_t)rows, c, 1, scr, AF_ROWMEAN, (float)rows);
    } else
        af_vec_k<<<av_cdiv(n, 256), 256, 0, av_cuda_stream()>>>(g, s2, n, c);
    af_sum(NULL, g, s2, n, c, 2, scr, AF_USQ, (float)n); /* mean u^2 */
    af_apply_k<<<av_cdiv(n, 256), 256, 0, av_cuda_stream()>>>(p, g, ea, s2, n, c, scr);
}

extern "C" void av_cuda_optim_step(float *p, const float *g, float *s1, float *s2, int rows, int cols, const av_optim_params *o) {
    size_t n = (size_t)rows * (size_t)cols;
    if (!n) return;
    if (o->kind == AV_OPTIM_ADAM || o->kind == AV_OPTIM_ADAMW) {
        adam_c c;
        c.lr = o->lr;
        c.b1 = (float)o->beta1;
        c.b2 = (float)o->beta2;
        c.a1 = (float)(1.0 - o->beta1);
        c.a2 = (float)(1.0 - o->beta2);
        c.eps = (float)o->eps;
        c.decay = o->kind == AV_OPTIM_ADAMW ? 1.0f - o->lr * (float)o->weight_decay : 1.0f;
        c.bc = o->bias_correction;
        c.c1 = c.bc ? o->lr / (1.0f - powf(c.b1, (float)o->step)) : o->lr;
        c.c2 = c.bc ? 1.0f / sqrtf(1.0f - powf(c.b2, (float)o->step)) : 1.0f;
        adam_k<<<av_cdiv(n, 256), 256, 0, av_cuda_stream()>>>(p, g, s1, s2, n, c);
    } else if (o->kind == AV_OPTIM_SGD) {
        sgd_k<<<av_cdiv(n, 256), 256, 0, av_cuda_stream()>>>(p, g, o->momentum > 0 ? s1 : NULL, n, o->lr, (float)o->weight_decay,
                                                            (float)o->momentum, (float)(1.0 - o->dampening), o->dampening > 0,
                                                            o->nesterov);
    } else
        adafactor(p, g, s1, s2, rows, cols, o);
    AV_CU_LAUNCHED("optim_step");
}
