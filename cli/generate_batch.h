/* `anvil generate --prompts-file F --batch-size N`: decodes N prompts together (one weight read
 * per step for all of them) with per-sequence stops; prints each result in prompt order. */
#ifndef AV_CLI_GENERATE_BATCH_H
#define AV_CLI_GENERATE_BATCH_H
#include "common.h"

typedef struct {
    const char *prompts_file, *system, *tmpl;
    int batch_size, max_tokens, ignore_tmpl, json;
    float temp, top_p;
    uint64_t seed;
    const char *const *stops;
    int n_stops;
} av_batch_gen_opts;

int av_cli_generate_batch(const char *cmd, const char *model_dir, av_model *m, av_tokenizer *tok, const av_batch_gen_opts *o);
#endif
