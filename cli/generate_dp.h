/* `anvil generate --prompts-file F --workers N | --gpus LIST`: the prompts split into contiguous
 * shares, one worker thread per share with its own model copy (and GPU), results merged back into
 * prompt order (generate_dp.c). */
#ifndef AV_CLI_GENERATE_DP_H
#define AV_CLI_GENERATE_DP_H
#include "common.h"
#include "anvil.h"

typedef struct {
    int n;               /* workers (1 = none) */
    const int *devices;  /* GPU per worker (NULL: CPU workers) */
    const av_cli_model_opts *mo;
} av_gen_dp;

/* av_generate_batch over n prompts with worker 0 on m and the others on models they load; the
 * timings are the slowest worker's. Prints its own errors; returns non-zero on failure. */
int av_cli_generate_dp(const char *cmd, const av_gen_dp *d, av_model *m, const av_tokenizer *tok, const int32_t *const *prompts,
                       const int *n_prompt, int n, const av_batch_opts *o, av_batch_result *r);
#endif
