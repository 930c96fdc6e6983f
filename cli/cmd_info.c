/* anvil info: architecture, parameter count, dtype and memory needs of a model directory. */
#include "args.h"
#include "common.h"
#include <stdio.h>

int av_cmd_info(int argc, char **argv) {
    const char *cmd = "info";
    av_cli_model_opts mo = {0};
    int ctx = 0;
    av_opt opts[] = {
        {"model", AV_OPT_STR, &mo.model, "model directory (HF layout)", 0, 0, NULL},
        {"context", AV_OPT_INT, &ctx, "context length for the KV-cache estimate (default: max_position_embeddings)", 1, 1e7, NULL},
        {NULL, 0, NULL, NULL, 0, 0, NULL},
    };
    int r = av_args_parse(argc, argv, opts, cmd, "Show a model's architecture, size and memory needs.");
    if (r) return r == 1 ? 0 : 2;
    mo.device = "cpu";
    av_model *m;
    if (av_cli_load(cmd, &mo, &m, NULL)) return 1;
    const av_config *c = av_model_config(m);
    long long params = av_config_param_count(c);
    if (!ctx) ctx = c->max_position_embeddings;
    double kv = 2.0 * c->n_layers * (double)ctx * c->n_kv_heads * c->head_dim * 4;
    const char *rope = c->rope_type == AV_ROPE_LLAMA3 ? "llama3" : c->rope_type == AV_ROPE_LINEAR ? "linear" : "default";
    printf("model:            %s\n", av_model_dir(m));
    printf("architecture:     LlamaForCausalLM\n");
    printf("layers:           %d\n", c->n_layers);
    printf("hidden size:      %d\n", c->hidden_size);
    printf("intermediate:     %d\n", c->intermediate_size);
    printf("heads:            %d (kv heads %d, head_dim %d%s)\n", c->n_heads, c->n_kv_heads, c->head_dim,
           c->n_kv_heads < c->n_heads ? ", GQA" : "");
    printf("vocab:            %d\n", c->vocab_size);
    printf("context:          %d\n", c->max_position_embeddings);
    printf("rope:             theta %g, %s scaling%s\n", c->rope_theta, rope, "");
    printf("norm eps:         %g\n", c->rms_norm_eps);
    printf("tied embeddings:  %s\n", c->tie_word_embeddings ? "yes" : "no");
    printf("weights dtype:    %s\n", av_dtype_name(av_model_weight_dtype(m)));
    if (c->quant_bits)
        printf("quantization:     %d-bit affine, group size %d (MLX layout; per-layer entries may differ)\n", c->quant_bits, c->quant_group_size);
    printf("parameters:       %lld (%.3fM)\n", params, params / 1e6);
    printf("weights on disk:  %.1f MB in %d file(s)\n", av_model_weight_bytes(m) / 1e6, av_model_weight_files(m));
    printf("KV cache (f32):   %.1f MB at %d tokens\n", kv / 1e6, ctx);
    printf("memory needed:    ~%.1f MB (weights mapped + KV cache)\n", (av_model_weight_bytes(m) + kv) / 1e6);
    av_model_free(m);
    return 0;
}
