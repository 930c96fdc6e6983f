/* `anvil lora`'s options and its YAML config file (-c config.yaml, MLX-LM's keys): the file is read
 * into JSON, then applied to the options wherever the command line left them unset. */
#ifndef AV_CLI_LORA_CONFIG_H
#define AV_CLI_LORA_CONFIG_H
#include <cjson/cJSON.h>
#include <limits.h>
#include <stddef.h>
#include "anvil.h"

#define LORA_UNSET_I INT_MIN /* ints not given; doubles not given are NAN */

typedef struct {
    const char *model, *data, *fine_tune_type, *adapter_path, *adapter_format, *resume, *lora_keys, *config, *device,
        *dump_grads, *lr_schedule, *optimizer, *attention;
    int train, test, grad_checkpoint, mask_prompt, bias_correction, profile, skip_nonfinite;
    int num_layers, batch_size, iters, steps_per_report, steps_per_eval, val_batches, save_every, max_seq_length, rank,
        seed, grad_accum, test_batches, threads, warmup, decay_steps;
    double learning_rate, alpha, scale, dropout, warmup_init, lr_end, weight_decay;
    av_lr_schedule sched; /* from the config file's lr_schedule (nargs 0 = none) */
    int sched_from_config;
    const cJSON *optimizer_config; /* the config's optimizer_config mapping (inside the loaded config), or NULL */
} lora_opts;


/* Reads a YAML mapping into *out (a JSON object). Prints the error and returns non-zero on failure. */
int av_lora_config_load(const char *path, cJSON **out);
/* Applies the config's keys to the options the command line left unset (keys_buf holds the joined
 * lora_parameters.keys). Prints the error and returns non-zero on a bad value; warns on unknown keys. */
int av_lora_config_apply(lora_opts *o, const cJSON *cfg, const char *path, char *keys_buf, size_t keys_cap);
/* Applies optimizer_config.<p->kind's name> (MLX's keyword names and meanings for that optimizer:
 * adam {betas, eps, bias_correction}, adamw {+ weight_decay}, sgd {momentum, weight_decay,
 * dampening, nesterov}, adafactor {eps, clip_threshold, decay_rate, beta_1, weight_decay,
 * scale_parameter, relative_step, warmup_init}) over p, which holds MLX's defaults. oc may be NULL.
 * Prints the error and returns non-zero on an unknown key or a bad value. */
int av_lora_config_optimizer(const cJSON *oc, const char *path, av_optim_params *p);
#endif
