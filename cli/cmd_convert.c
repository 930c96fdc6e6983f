/* anvil convert (and anvil quantize, which implies -q): writes a model directory in MLX-LM's layout,
 * optionally quantized (affine, 2-8 bits, groups of 32/64/128, or an MLX-LM mixed recipe) or
 * de-quantized, re-cast with --dtype; prints the weight size before and after. The output appears
 * only when complete. */
#include "args.h"
#include "common.h"
#include "anvil.h"
#include <stdio.h>
#include <string.h>

static int convert(int argc, char **argv, const char *cmd, int quantize) {
    const char *model = NULL, *out = NULL, *dtype = NULL, *recipe = NULL;
    int bits = 4, group = 64, threads = 0, dequant = 0;
    av_opt opts[] = {
        {"model", AV_OPT_STR, &model, "source model directory (HF layout, f32/f16/bf16 weights)", 0, 0, NULL},
        {"out", AV_OPT_STR, &out, "output directory (must not exist)", 0, 0, NULL},
        {"mlx-path", AV_OPT_STR, &out, "same as --out (MLX-LM's name)", 0, 0, NULL},
        {"quantize", AV_OPT_FLAG, &quantize, "quantize the weights (MLX affine layout)", 0, 0, "q"},
        {"q-bits", AV_OPT_INT, &bits, "bits per weight: 2, 3, 4, 5, 6 or 8 (default: 4)", 0, 0, NULL},
        {"q-group-size", AV_OPT_INT, &group, "weights per scale/bias: 32, 64 or 128 (default: 64)", 0, 0, NULL},
        {"quant-predicate", AV_OPT_STR, &recipe, "MLX-LM mixed recipe: mixed_2_6, mixed_3_4, mixed_3_6 or mixed_4_6 (implies -q)", 0, 0, NULL},
        {"de-quantize", AV_OPT_FLAG, &dequant, "unpack a quantized model to float weights", 0, 0, "d"},
        {"dtype", AV_OPT_STR, &dtype, "dtype of the float tensors and of scales/biases: bf16, f16 or f32 (default: as stored)", 0, 0, NULL},
        {"threads", AV_OPT_INT, &threads, "CPU threads (default: all cores)", 1, 1024, NULL},
        {NULL, 0, NULL, NULL, 0, 0, NULL},
    };
    int r = av_args_parse(argc, argv, opts, cmd, "Convert a model to MLX-LM's layout, optionally quantized.");
    if (r) return r == 1 ? 0 : 2;
    if (!model || !*model) return av_cli_error(cmd, "--model is required");
    if (!out || !*out) return av_cli_error(cmd, "--out is required");
    int out_dt = -1;
    if (dtype && av_cli_out_dtype(cmd, dtype, &out_dt)) return 1;
    if (recipe) quantize = 1;
    if (dequant && !recipe && !strcmp(cmd, "quantize")) quantize = 0; /* anvil quantize -d = convert -d */
    if (dequant && quantize) return av_cli_error(cmd, "--de-quantize cannot be combined with quantization");
    if (recipe && strcmp(recipe, "mixed_2_6") && strcmp(recipe, "mixed_3_4") && strcmp(recipe, "mixed_3_6") && strcmp(recipe, "mixed_4_6"))
        return av_cli_error(cmd, "--quant-predicate must be mixed_2_6, mixed_3_4, mixed_3_6 or mixed_4_6 (got '%s')", recipe);
    if (quantize && bits != 2 && bits != 3 && bits != 4 && bits != 5 && bits != 6 && bits != 8)
        return av_cli_error(cmd, "--q-bits must be 2, 3, 4, 5, 6 or 8 (got %d)", bits);
    if (quantize && group != 32 && group != 64 && group != 128)
        return av_cli_error(cmd, "--q-group-size must be 32, 64 or 128 (got %d)", group);
    if (threads) av_threads_set(threads);
    av_convert_opts o = {.quantize = quantize, .bits = bits, .group = group, .out_dtype = out_dt, .recipe = recipe, .dequantize = dequant};
    av_convert_report rep;
    if (av_convert(model, out, &o, &rep) != AV_OK) return av_cli_fail(cmd);
    if (dequant) printf("De-quantized %d weight matrices\n", rep.n_quantized);
    if (quantize && recipe) printf("Quantized %d weight matrices with %s (group size %d)\n", rep.n_quantized, recipe, group);
    else if (quantize) printf("Quantized %d weight matrices to %d bits (group size %d)\n", rep.n_quantized, bits, group);
    if (quantize) {
        if (rep.n_unquantized)
            printf("Left %d weight matri%s unquantized (input size not a multiple of %d)\n", rep.n_unquantized,
                   rep.n_unquantized == 1 ? "x" : "ces", group);
    }
    printf("Size: %.2f MB -> %.2f MB (%.2fx)\n", rep.bytes_in / 1e6, rep.bytes_out / 1e6,
           rep.bytes_out ? (double)rep.bytes_in / (double)rep.bytes_out : 0.0);
    printf("Saved %s\n", out);
    return 0;
}

int av_cmd_convert(int argc, char **argv) { return convert(argc, argv, "convert", 0); }
int av_cmd_quantize(int argc, char **argv) { return convert(argc, argv, "quantize", 1); }
