/* The training loop as MLX-LM's trainer runs it: one batch per iteration, an optimizer update every
 * grad_accum iterations (averaged gradients; MLX's Adam/AdamW/SGD/Adafactor, the schedule's LR passed
 * each step), train-loss reports, validation (before training, every steps_per_eval and at the
 * end), checkpoints every save_every, the best adapter by validation loss kept apart, and a state
 * side file (params, optimizer state, iteration, data position, schedule) so that a resumed run
 * continues bit for bit. Never prints: progress goes to the caller through on_event. */
#ifndef AV_TRAINER_H
#define AV_TRAINER_H
#include <stddef.h>
#include <stdint.h>
#include "model/model.h"
#include "ops/ops.h"
#include "train/dataset.h"
#include "train/schedule.h"
#include "train/train_model.h"

typedef enum {
    AV_TEV_PROGRESS = 0, /* after every iteration: iter, iters, elapsed, eta */
    AV_TEV_REPORT,       /* train loss line */
    AV_TEV_EVAL,         /* validation line */
    AV_TEV_SAVE,         /* checkpoint written: path (main), path2 (numbered) */
    AV_TEV_BEST,         /* new best validation loss: path */
    AV_TEV_FINAL,        /* final weights: path */
    AV_TEV_INTERRUPTED,  /* stopped early; state saved: path */
} av_train_event_kind;

typedef struct {
    av_train_event_kind kind;
    int iter, iters;
    double train_loss, lr, it_per_sec, tok_per_sec, peak_gb;
    long long trained_tokens;
    double val_loss, val_secs;
    const char *path, *path2;
    double elapsed, eta; /* seconds */
} av_train_event;

typedef struct {
    int iters, grad_accum, steps_per_report, steps_per_eval, val_batches, save_every;
    uint64_t seed;
    av_lr_schedule lr;
    av_optim_params optim; /* kind and hyperparameters (lr and step are set per update) */
    const char *dump_grads; /* if set: write the first batch's gradients (PEFT names) here and stop */
    volatile int *stop;     /* set asynchronously (SIGINT): save state and return AV_ERR_INTERRUPTED */
    /* Writes the current adapter weights for `tag` (NULL = main file, "best", or a 7-digit
     * iteration for a numbered checkpoint) and puts the weights file (or PEFT directory) written
     * into path; the state side file goes beside it. */
    av_status (*save)(void *ctx, const char *tag, char *path, size_t cap);
    void (*on_event)(void *ctx, const av_train_event *ev);
    void *ctx;
} av_trainer_opts;

/* MLX-LM's defaults: Adam without bias correction (betas 0.9/0.999, eps 1e-8), constant LR 1e-4
 * (the seed's; MLX-LM's is 1e-5), 1000 iters, report 10, eval 200, 25 val batches, save 100, seed 0. */
void av_trainer_opts_default(av_trainer_opts *o);

typedef struct av_trainer av_trainer;
av_status av_trainer_new(av_trainer **out, av_model *m, av_train_ctx *tc, const av_trainer_opts *o);
void av_trainer_free(av_trainer *t);
/* Restores parameters, optimizer moments, iteration, data position, schedule, trained tokens and
 * best validation loss from a state file written by this trainer. */
av_status av_trainer_load_state(av_trainer *t, const char *state_path);
int av_trainer_iter(const av_trainer *t); /* iterations done (0 unless resumed) */
/* Runs iterations iter+1..iters over `train` (shuffled per epoch), evaluating on `valid` (may be
 * NULL). Returns AV_ERR_INTERRUPTED (state saved) when *stop was set. */
av_status av_trainer_run(av_trainer *t, av_batcher *train, av_batcher *valid);
/* Whether the run stopped after dumping gradients. */
int av_trainer_dumped(const av_trainer *t);

/* Token-weighted mean NLL over the first max_batches batches (-1 = all) in sorted order. */
av_status av_evaluate(av_train_ctx *tc, av_batcher *bt, int max_batches, double *loss, long long *ntok);
/* State file beside an adapter: "X.safetensors" -> "X.state.safetensors"; a directory D (PEFT)
 * -> "D/adapter_model.state.safetensors". */
char *av_trainer_state_path(const char *adapter_path, char *buf, size_t cap);
/* Peak memory in bytes: process peak RSS on the CPU, the backend's peak on a GPU. */
size_t av_train_peak_bytes(const av_backend *be);

#endif
