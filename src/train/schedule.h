/* Learning-rate schedules as MLX-LM builds them (mlx.optimizers.schedulers + build_schedule):
 * constant, cosine_decay, linear_schedule, exponential_decay, step_decay, each optionally preceded
 * by a linear warmup joined at step warmup+1. `step` is the optimizer's step count before the
 * update (0 for the first update), as MLX evaluates it. */
#ifndef AV_SCHEDULE_H
#define AV_SCHEDULE_H
#include "core/status.h"

typedef enum { AV_LR_CONSTANT = 0, AV_LR_COSINE, AV_LR_LINEAR, AV_LR_EXPONENTIAL, AV_LR_STEP } av_lr_kind;

typedef struct {
    av_lr_kind kind;
    /* MLX-LM's "arguments": cosine_decay (init, decay_steps, end); linear_schedule (init, end,
     * steps); exponential_decay (init, rate); step_decay (init, rate, step_size); constant (init). */
    double args[3];
    int nargs;
    int warmup;         /* linear warmup steps (0 = none) */
    double warmup_init; /* LR at step 0 of the warmup */
} av_lr_schedule;

/* Constant schedule at lr. */
void av_lr_constant(av_lr_schedule *s, double lr);
/* Kind from a name: "constant", "cosine"/"cosine_decay", "linear"/"linear_schedule",
 * "exponential_decay", "step_decay". */
av_status av_lr_kind_parse(const char *name, av_lr_kind *kind);
const char *av_lr_kind_name(av_lr_kind k);
/* Checks argument count and ranges (decay_steps >= 1, ...). */
av_status av_lr_validate(const av_lr_schedule *s);
/* LR for optimizer step `step` (0-based). */
double av_lr_at(const av_lr_schedule *s, int step);
/* Initial (peak) LR: args[0]. */
double av_lr_init(const av_lr_schedule *s);

#endif
