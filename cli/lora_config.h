/* `anvil lora`'s options and its YAML config file (-c config.yaml, MLX-LM's keys): the file is read
 * into JSON, then applied to the options wherever the command line left them unset. */
#ifndef AV_CLI_LORA_CONFIG_H
#define AV_CLI_LORA_CONFIG_H
#include <cjson/cJSON.h>
#include <limits.h>
#include <stddef.h>
#include "train/schedule.h"

#define LORA_UNSET_I INT_MIN /* ints not given; doubles not given are NAN */

typedef struct {
    const char *model, *data, *fine_tune_type, *adapter_path, *adapter_format, *resume, *lora_keys, *config, *device,
        *dump_grads, *lr_schedule, *optimizer;
    int train, test, grad_checkpoint, mask_prompt;
    int num_layers, batch_size, iters, steps_per_report, steps_per_eval, val_batches, save_every, max_seq_length, rank,
        seed, grad_accum, test_batches, threads, warmup, decay_steps;
    double learning_rate, alpha, scale, dropout, warmup_init, lr_end, weight_decay;
    av_lr_schedule sched; /* from the config file's lr_schedule (nargs 0 = none) */
    int sched_from_config;
} lora_opts;


/* Reads a YAML mapping into *out (a JSON object). Prints the error and returns non-zero on failure. */
int av_lora_config_load(const char *path, cJSON **out);
/* Applies the config's keys to the options the command line left unset (keys_buf holds the joined
 * lora_parameters.keys). Prints the error and returns non-zero on a bad value; warns on unknown keys. */
int av_lora_config_apply(lora_opts *o, const cJSON *cfg, const char *path, char *keys_buf, size_t keys_cap);
#endif
