/* libFuzzer target: `anvil lora -c config.yaml` (cli/lora_config.c: libyaml document -> JSON, MLX-LM's
 * keys applied over unset options, optimizer_config for each optimizer) over the input bytes.
 * Errors print one line to stderr (this parser lives in the CLI). */
#include "fuzz_util.h"
#include "../cli/lora_config.h"
#include <math.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fz_file("config.yaml", data, size);
    cJSON *cfg = NULL;
    if (av_lora_config_load(path, &cfg) != 0 || !cfg) return 0;
    lora_opts o = {0};
    int *ints[] = {&o.num_layers, &o.batch_size, &o.iters, &o.steps_per_report, &o.steps_per_eval, &o.val_batches, &o.save_every,
                   &o.max_seq_length, &o.rank, &o.seed, &o.grad_accum, &o.test_batches, &o.threads, &o.warmup, &o.decay_steps};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) *ints[i] = LORA_UNSET_I;
    double *nums[] = {&o.learning_rate, &o.alpha, &o.scale, &o.dropout, &o.warmup_init, &o.lr_end, &o.weight_decay};
    for (size_t i = 0; i < sizeof nums / sizeof *nums; i++) *nums[i] = NAN;
    char keys[4096];
    if (av_lora_config_apply(&o, cfg, path, keys, sizeof keys) == 0) {
        sink += (uint64_t)o.iters + (uint64_t)strlen(keys);
        for (int k = AV_OPTIM_ADAM; k <= AV_OPTIM_ADAFACTOR; k++) {
            av_optim_params p;
            av_optim_defaults(&p, (av_optim_kind)k);
            if (av_lora_config_optimizer(o.optimizer_config, path, &p) == 0) sink += (uint64_t)(p.lr != 0);
        }
    }
    cJSON_Delete(cfg);
    return 0;
}
