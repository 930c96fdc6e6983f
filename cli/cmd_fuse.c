/* anvil fuse: merges a LoRA adapter (MLX-LM or PEFT) into the base weights and writes a normal
 * model directory (config, tokenizer files, model.safetensors) that anvil and transformers load. */
#include "args.h"
#include "common.h"
#include "anvil.h"
#include <stdio.h>
#include <string.h>

int av_cmd_fuse(int argc, char **argv) {
    const char *cmd = "fuse", *save = "fused_model", *dtype = NULL;
    av_cli_model_opts mo = {0};
    int dequant = 0;
    mo.adapter = "adapters";
    av_opt opts[] = {
        {"model", AV_OPT_STR, &mo.model, "base model directory (HF layout)", 0, 0, NULL},
        {"adapter-path", AV_OPT_STR, &mo.adapter, "adapter directory (MLX-LM or PEFT) or adapters.safetensors (default: adapters)", 0, 0, NULL},
        {"save-path", AV_OPT_STR, &save, "output model directory (default: fused_model)", 0, 0, NULL},
        {"dtype", AV_OPT_STR, &dtype, "output dtype of the weights: bf16, f16 or f32 (default: the base model's)", 0, 0, NULL},
        {"de-quantize", AV_OPT_FLAG, &dequant, "write a quantized base as full-precision weights", 0, 0, NULL},
        {"threads", AV_OPT_INT, &mo.threads, "CPU threads (default: all cores)", 1, 1024, NULL},
        {NULL, 0, NULL, NULL, 0, 0, NULL},
    };
    int r = av_args_parse(argc, argv, opts, cmd, "Merge a LoRA adapter into the base weights and save the model.");
    if (r) return r == 1 ? 0 : 2;
    int out_dt = -1;
    if (dtype && av_cli_out_dtype(cmd, dtype, &out_dt)) return 1;
    if (!save || !*save) return av_cli_error(cmd, "--save-path must not be empty");
    if (!mo.adapter || !*mo.adapter) return av_cli_error(cmd, "--adapter-path is required");
    mo.device = "cpu";
    (void)dequant; /* quantized bases are rejected at load for now; a fused model is written full precision */
    const char *adapter = mo.adapter;
    mo.adapter = NULL; /* loaded here, so a bad adapter fails before anything is written */
    av_model *m;
    if (av_cli_load(cmd, &mo, &m, NULL)) return 1;
    av_lora_spec spec;
    if (av_adapter_load(m, adapter, &spec) != AV_OK) {
        av_model_free(m);
        return av_cli_fail(cmd);
    }
    int n = 0;
    if (av_fuse_save(m, save, out_dt, &n) != AV_OK) {
        av_lora_detach(m);
        av_model_free(m);
        return av_cli_fail(cmd);
    }
    printf("Fused %d adapter%s from %s into %s\n", n, n == 1 ? "" : "s", adapter, save);
    av_lora_detach(m);
    av_model_free(m);
    return 0;
}
