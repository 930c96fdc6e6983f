/* LR schedules mirroring mlx.optimizers.schedulers and MLX-LM's build_schedule (warmup joined
 * with join_schedules at boundary warmup+1). */
#include "core/status.h"
#include <math.h>
#include <string.h>

static const char *const k_names[] = {"constant", "cosine_decay", "linear_schedule", "exponential_decay", "step_decay"};

void av_lr_constant(av_lr_schedule *s, double lr) {
    memset(s, 0, sizeof *s);
    s->kind = AV_LR_CONSTANT;
    s->args[0] = lr;
    s->nargs = 1;
}

av_status av_lr_kind_parse(const char *name, av_lr_kind *kind) {
    if (!name) return av_fail(AV_ERR_ARG, "lr schedule: missing name");
    if (!strcmp(name, "constant")) *kind = AV_LR_CONSTANT;
    else if (!strcmp(name, "cosine") || !strcmp(name, "cosine_decay")) *kind = AV_LR_COSINE;
    else if (!strcmp(name, "linear") || !strcmp(name, "linear_schedule")) *kind = AV_LR_LINEAR;
    else if (!strcmp(name, "exponential_decay")) *kind = AV_LR_EXPONENTIAL;
    else if (!strcmp(name, "step_decay")) *kind = AV_LR_STEP;
    else
        return av_fail(AV_ERR_ARG, "lr schedule: unknown name '%s' (constant, cosine_decay, linear_schedule, "
                                   "exponential_decay, step_decay)", name);
    return AV_OK;
}

const char *av_lr_kind_name(av_lr_kind k) { return (unsigned)k < 5 ? k_names[k] : "?"; }

av_status av_lr_validate(const av_lr_schedule *s) {
    static const int need[] = {1, 2, 2, 2, 3}; /* minimum args (cosine end defaults to 0) */
    const char *n = av_lr_kind_name(s->kind);
    if ((unsigned)s->kind > AV_LR_STEP) return av_fail(AV_ERR_ARG, "lr schedule: bad kind");
    if (s->nargs < need[s->kind] || s->nargs > 3)
        return av_fail(AV_ERR_ARG, "lr schedule %s: needs %d arguments, got %d", n, need[s->kind], s->nargs);
    for (int i = 0; i < s->nargs; i++)
        if (!isfinite(s->args[i])) return av_fail(AV_ERR_ARG, "lr schedule %s: argument %d is not finite", n, i + 1);
    if (s->args[0] < 0) return av_fail(AV_ERR_ARG, "lr schedule %s: negative learning rate %g", n, s->args[0]);
    if (s->kind == AV_LR_COSINE && s->args[1] < 1) return av_fail(AV_ERR_ARG, "lr schedule cosine_decay: decay_steps must be >= 1");
    if (s->kind == AV_LR_LINEAR && s->nargs < 3) return av_fail(AV_ERR_ARG, "lr schedule linear_schedule: needs init, end, steps");
    if (s->kind == AV_LR_LINEAR && s->args[2] < 1) return av_fail(AV_ERR_ARG, "lr schedule linear_schedule: steps must be >= 1");
    if (s->kind == AV_LR_STEP && s->args[2] < 1) return av_fail(AV_ERR_ARG, "lr schedule step_decay: step_size must be >= 1");
    if (s->warmup < 0) return av_fail(AV_ERR_ARG, "lr schedule: negative warmup");
    if (!isfinite(s->warmup_init) || s->warmup_init < 0) return av_fail(AV_ERR_ARG, "lr schedule: bad warmup_init");
    return AV_OK;
}

double av_lr_init(const av_lr_schedule *s) { return s->args[0]; }

static double main_at(const av_lr_schedule *s, double step) {
    const double *a = s->args;
    switch (s->kind) {
    case AV_LR_CONSTANT: return a[0];
    case AV_LR_COSINE: {
        double ds = a[1], end = s->nargs > 2 ? a[2] : 0.0;
        if (step > ds) step = ds;
        double decay = 0.5 * (1.0 + cos(M_PI / ds * step));
        return end + decay * (a[0] - end);
    }
    case AV_LR_LINEAR: {
        double steps = a[2];
        if (step > steps) step = steps;
        return step * ((a[1] - a[0]) / steps) + a[0];
    }
    case AV_LR_EXPONENTIAL: return a[0] * pow(a[1], step);
    case AV_LR_STEP: return a[0] * pow(a[1], floor(step / a[2]));
    }
    return a[0];
}

double av_lr_at(const av_lr_schedule *s, int step) {
    if (step < 0) step = 0;
    if (s->warmup > 0) {
        /* join_schedules([linear(warmup_init, init, warmup), main], [warmup + 1]) */
        if (step < s->warmup + 1) {
            double st = step > s->warmup ? s->warmup : step;
            return st * ((s->args[0] - s->warmup_init) / s->warmup) + s->warmup_init;
        }
        return main_at(s, step - (s->warmup + 1));
    }
    return main_at(s, step);
}
