/* Optimizer updates with MLX's rules and defaults (mlx.optimizers Adam, AdamW, SGD, Adafactor), f32,
 * one parameter at a time. Scalar coefficients are formed as MLX forms them (f32 powers of the step
 * count), so the two agree to rounding; the CUDA twin (optim.cu) forms them the same way. */
#include "ops/ops.h"
#include <math.h>
#include <string.h>

static const char *const k_names[] = {"adam", "adamw", "sgd", "adafactor"};

void av_optim_defaults(av_optim_params *o, av_optim_kind kind) {
    memset(o, 0, sizeof *o);
    o->kind = kind;
    o->beta1 = 0.9;
    o->beta2 = 0.999;
    o->eps = 1e-8;
    o->weight_decay = kind == AV_OPTIM_ADAMW ? 0.01 : 0.0;
    o->eps1 = 1e-30;
    o->eps2 = 1e-3;
    o->clip_threshold = 1.0;
    o->decay_rate = -0.8;
    o->scale_parameter = 1;
    o->relative_step = 1;
}

const char *av_optim_name(av_optim_kind kind) { return (unsigned)kind < 4 ? k_names[kind] : "?"; }

int av_optim_parse(const char *name, av_optim_kind *kind) {
    for (int i = 0; name && i < 4; i++)
        if (!strcmp(name, k_names[i])) {
            *kind = (av_optim_kind)i;
            return 0;
        }
    return -1;
}

size_t av_optim_state_size(const av_optim_params *o, int rows, int cols, int which) {
    size_t n = (size_t)rows * (size_t)cols;
    switch (o->kind) {
    case AV_OPTIM_ADAM:
    case AV_OPTIM_ADAMW: return n;
    case AV_OPTIM_SGD: return which == 0 && o->momentum > 0 ? n : 0;
    case AV_OPTIM_ADAFACTOR:
        if (which == 0) return o->af_first_moment ? n : 0;
        return rows >= 2 && cols >= 2 ? (size_t)rows + (size_t)cols : n;
    }
    return 0;
}

/* m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr m / (sqrt(v) + eps), or with bias correction
 * p -= lr/(1-b1^t) m / (sqrt(v) / sqrt(1-b2^t) + eps). AdamW first scales p by 1 - lr wd. */
static void adam(float *p, const float *g, float *m, float *v, size_t n, const av_optim_params *o) {
    float lr = o->lr, b1 = (float)o->beta1, b2 = (float)o->beta2, a1 = (float)(1.0 - o->beta1), a2 = (float)(1.0 - o->beta2);
    float eps = (float)o->eps, decay = o->kind == AV_OPTIM_ADAMW ? 1.0f - lr * (float)o->weight_decay : 1.0f;
    float c1 = lr, c2 = 1.0f;
    if (o->bias_correction) {
        c1 = lr / (1.0f - powf(b1, (float)o->step));
        c2 = 1.0f / sqrtf(1.0f - powf(b2, (float)o->step));
    }
    for (size_t i = 0; i < n; i++) {
        float pi = p[i] * decay, gi = g[i];
        float mi = b1 * m[i] + a1 * gi, vi = b2 * v[i] + a2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        p[i] = o->bias_correction ? pi - c1 * mi / (sqrtf(vi) * c2 + eps) : pi - lr * mi / (sqrtf(vi) + eps);
    }
}

/* g += wd p; without momentum p -= lr g; else buf = mu buf + (1 - dampening) g, p -= lr (nesterov ?
 * g + mu buf : buf). MLX starts buf at zero (no first-step copy). */
static void sgd(float *p, const float *g, float *buf, size_t n, const av_optim_params *o) {
    float lr = o->lr, wd = (float)o->weight_decay, mu = (float)o->momentum, damp = (float)(1.0 - o->dampening);
    for (size_t i = 0; i < n; i++) {
        float gi = g[i];
        if (o->weight_decay != 0) gi = gi + wd * p[i];
        if (o->momentum <= 0) {
            p[i] = p[i] - lr * gi;
            continue;
        }
        float bi = mu * buf[i];
        bi = o->dampening > 0 ? bi + damp * gi : bi + gi;
        buf[i] = bi;
        p[i] = p[i] - lr * (o->nesterov ? gi + mu * bi : bi);
    }
}

/* Adafactor as MLX: second moments of g^2 + eps1 kept per row and column (or per element), the
 * update scaled down to RMS <= clip_threshold, times the step size max(eps2, RMS(p)) * min(1e-2,
 * 1/sqrt(t)) (relative_step; else lr), optional first moment, weight decay p -= wd * step size * p. */
static void adafactor(float *p, const float *g, float *ea, float *s2, int rows, int cols, const av_optim_params *o) {
    size_t n = (size_t)rows * (size_t)cols;
    float t = (float)o->step, eps1 = (float)o->eps1;
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += (double)p[i] * p[i];
    float rel = o->relative_step ? fminf(o->warmup_init ? 1e-6f * t : 1e-2f, 1.0f / sqrtf(t)) : o->lr;
    float lr = o->scale_parameter ? fmaxf((float)o->eps2, sqrtf((float)(ss / (double)n))) * rel : rel;
    float beta2 = 1.0f - powf(t, (float)o->decay_rate), a2 = 1.0f - beta2;
    int fac = rows >= 2 && cols >= 2;
    float *row = s2, *col = s2 + rows, rmean = 0;
    if (fac) {
        double rs = 0;
        for (int r = 0; r < rows; r++) {
            double s = 0;
            for (int c = 0; c < cols; c++) s += (double)(g[(size_t)r * cols + c] * g[(size_t)r * cols + c] + eps1);
            row[r] = beta2 * row[r] + a2 * (float)(s / cols);
            rs += row[r];
        }
        for (int c = 0; c < cols; c++) {
            double s = 0;
            for (int r = 0; r < rows; r++) s += (double)(g[(size_t)r * cols + c] * g[(size_t)r * cols + c] + eps1);
            col[c] = beta2 * col[c] + a2 * (float)(s / rows);
        }
        rmean = (float)(rs / rows);
    } else
        for (size_t i = 0; i < n; i++) s2[i] = beta2 * s2[i] + a2 * (g[i] * g[i] + eps1);
    /* u = factor * g twice: its RMS, then the update */
    double us = 0;
    for (int r = 0; r < rows; r++) {
        float rf = fac ? 1.0f / sqrtf(row[r] / rmean) : 0;
        for (int c = 0; c < cols; c++) {
            size_t i = (size_t)r * cols + c;
            float u = fac ? rf * (1.0f / sqrtf(col[c])) * g[i] : (1.0f / sqrtf(s2[i])) * g[i];
            us += (double)u * u;
        }
    }
    float div = fmaxf(1.0f, sqrtf((float)(us / (double)n)) / (float)o->clip_threshold);
    float b1 = (float)o->af_beta1, a1 = (float)(1.0 - o->af_beta1), wd = -(float)o->weight_decay * lr;
    for (int r = 0; r < rows; r++) {
        float rf = fac ? 1.0f / sqrtf(row[r] / rmean) : 0;
        for (int c = 0; c < cols; c++) {
            size_t i = (size_t)r * cols + c;
            float u = fac ? rf * (1.0f / sqrtf(col[c])) * g[i] : (1.0f / sqrtf(s2[i])) * g[i];
            u = lr * (u / div);
            if (o->af_first_moment) u = ea[i] = b1 * ea[i] + a1 * u;
            float pi = p[i];
            if (o->weight_decay != 0) pi = pi + pi * wd;
            p[i] = pi - u;
        }
    }
}

void av_optim_step(float *p, const float *g, float *s1, float *s2, int rows, int cols, const av_optim_params *o) {
    size_t n = (size_t)rows * (size_t)cols;
    if (!n) return;
    switch (o->kind) {
    case AV_OPTIM_ADAM:
    case AV_OPTIM_ADAMW: adam(p, g, s1, s2, n, o); break;
    case AV_OPTIM_SGD: sgd(p, g, s1, n, o); break;
    case AV_OPTIM_ADAFACTOR: adafactor(p, g, s1, s2, rows, cols, o); break;
    }
}
