/* `anvil generate --prompts-file F --batch-size N`: reads and encodes the prompts, runs them
 * through av_generate_batch (anvil.h) and prints each result in prompt order. */
#ifndef AV_CLI_GENERATE_BATCH_H
#define AV_CLI_GENERATE_BATCH_H
#include "common.h"
#include "generate_dp.h"
#include "anvil.h"

typedef struct {
    const char *prompts_file, *system, *tmpl;
    int ignore_tmpl, json;
    const av_gen_dp *dp; /* --workers / --gpus (NULL: one worker) */
} av_batch_cli_opts;

int av_cli_generate_batch(const char *cmd, const char *model_dir, av_model *m, av_tokenizer *tok, const av_batch_cli_opts *c,
                          const av_batch_opts *o);
#endif
