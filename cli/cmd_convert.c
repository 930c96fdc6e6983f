/* anvil convert (and anvil quantize, which implies -q): writes a model directory in MLX-LM's layout,
 * optionally quantized (affine, 2-8 bits, groups of 32/64/128, or an MLX-LM mixed recipe) or
 * de-quantized, re-cast with --dtype; prints the weight size before and after. The output appears
 * only when complete. */
#include "args.h"
#include "common.h"
#include "anvil.h"
#include <stdio.h>
#include <string.h>
#include <strings.h>

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* --out FILE.gguf (or --outtype): one GGUF file for llama.cpp from any model anvil loads. */
static int to_gguf(const char *cmd, const char *model, const char *out, const char *outtype) {
    int ot = outtype ? av_gguf_outtype_parse(outtype) : AV_GGUF_OUT_F16;
    if (ot < 0) {
        if (!strcasecmp(outtype, "q5_k") || !strcasecmp(outtype, "q2_k") || !strcasecmp(outtype, "q3_k"))
            return av_cli_error(cmd, "--outtype %s is not supported yet (f32, f16, bf16, q8_0, q4_0, q4_k, q6_k)", outtype);
        return av_cli_error(cmd, "--outtype must be f32, f16, bf16, q8_0, q4_0, q4_k or q6_k (got '%s')", outtype);
    }
    av_cli_model_opts mo = {.model = model, .device = "cpu"};
    av_model *m;
    av_tokenizer *tok = NULL;
    if (av_cli_load(cmd, &mo, &m, NULL)) return 1;
    /* the SentencePiece model when there is one (GGUF's "llama" vocabulary) */
    char sp[4400];
    snprintf(sp, sizeof sp, "%s/tokenizer.model", model);
    if (av_tokenizer_load(&tok, model, av_file_exists(sp)) != AV_OK) {
        av_model_free(m);
        return av_cli_fail(cmd);
    }
    av_chat_config cc;
    memset(&cc, 0, sizeof cc);
    int rc = 0;
    if (av_chat_config_load(&cc, model) != AV_OK) rc = av_cli_fail(cmd);
    av_gguf_export_opts o = {.outtype = ot, .chat_template = cc.template_src, .name = NULL};
    av_gguf_export_report rep;
    if (!rc && av_gguf_export(m, tok, out, &o, &rep) != AV_OK) rc = av_cli_fail(cmd);
    if (!rc) {
        if (rep.n_dequantized)
            printf("De-quantized %d packed weight matri%s (MLX affine) before writing them\n", rep.n_dequantized, rep.n_dequantized == 1 ? "x" : "ces");
        if (rep.n_quantized) printf("Quantized %d weight matrices to %s\n", rep.n_quantized, ot == AV_GGUF_OUT_Q8_0 ? "Q8_0" : ot == AV_GGUF_OUT_Q4_0 ? "Q4_0" : ot == AV_GGUF_OUT_Q4_K ? "Q4_K" : "Q6_K");
        if (rep.n_fallback)
            printf("Left %d weight matri%s as F16 (input size not a multiple of %d)\n", rep.n_fallback, rep.n_fallback == 1 ? "x" : "ces", ot >= AV_GGUF_OUT_Q4_K ? 256 : 32);
        printf("Wrote %d tensors to %s\n", rep.n_tensors, out);
    }
    av_chat_config_free(&cc);
    av_tokenizer_free(tok);
    av_model_free(m);
    return rc;
}

/* --model FILE.gguf --out DIR: an HF/MLX directory from the loaded GGUF model. Q8_0/Q4_0 stay as
 * MLX 8/4-bit, group 32; other quantized types are de-quantized (bf16 unless --dtype). -d de-quantizes everything; -q quantizes a float copy (a
 * temporary directory beside --out) with convert's usual options. */
static int from_gguf(const char *cmd, const char *model, const char *out, const av_convert_opts *co, av_convert_report *rep) {
    av_cli_model_opts mo = {.model = model, .device = "cpu"};
    av_model *m;
    av_tokenizer *tok = NULL;
    if (av_cli_load(cmd, &mo, &m, &tok)) return 1;
    av_chat_config cc;
    memset(&cc, 0, sizeof cc);
    int rc = 0;
    if (av_chat_config_load(&cc, model) != AV_OK) rc = av_cli_fail(cmd);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.gguf-float.tmp", out);
    int requant = co->quantize || co->recipe;
    av_dir_export_opts o = {.out_dtype = requant ? -1 : co->out_dtype, .keep_packed = !co->dequantize && !requant, .chat_template = cc.template_src};
    av_dir_export_report dr;
    if (!rc && (av_file_exists(out) || av_dir_exists(out))) rc = av_cli_error(cmd, "%s: already exists", out);
    if (!rc && av_model_export_dir(m, tok, requant ? tmp : out, &o, &dr) != AV_OK) rc = av_cli_fail(cmd);
    av_chat_config_free(&cc);
    av_tokenizer_free(tok);
    av_model_free(m);
    memset(rep, 0, sizeof *rep);
    if (!rc && requant) {
        if (av_convert(tmp, out, co, rep) != AV_OK) rc = av_cli_fail(cmd);
        av_remove_tree(tmp);
    } else if (!rc) {
        if (dr.n_packed) printf("Kept %d packed weight matri%s (MLX affine, group 32)\n", dr.n_packed, dr.n_packed == 1 ? "x" : "ces");
        if (dr.n_dequantized) printf("De-quantized %d weight matri%s\n", dr.n_dequantized, dr.n_dequantized == 1 ? "x" : "ces");
        printf("Saved %s\n", out);
        return 0;
    }
    return rc;
}

static int convert(int argc, char **argv, const char *cmd, int quantize) {
    const char *model = NULL, *out = NULL, *dtype = NULL, *recipe = NULL, *outtype = NULL;
    int bits = 4, group = 64, threads = 0, dequant = 0;
    av_opt opts[] = {
        {"model", AV_OPT_STR, &model, "source model directory (HF layout, f32/f16/bf16 weights) or GGUF file", 0, 0, NULL},
        {"out", AV_OPT_STR, &out, "output directory (must not exist)", 0, 0, NULL},
        {"mlx-path", AV_OPT_STR, &out, "same as --out (MLX-LM's name)", 0, 0, NULL},
        {"quantize", AV_OPT_FLAG, &quantize, "quantize the weights (MLX affine layout)", 0, 0, "q"},
        {"q-bits", AV_OPT_INT, &bits, "bits per weight: 2, 3, 4, 5, 6 or 8 (default: 4)", 0, 0, NULL},
        {"q-group-size", AV_OPT_INT, &group, "weights per scale/bias: 32, 64 or 128 (default: 64)", 0, 0, NULL},
        {"quant-predicate", AV_OPT_STR, &recipe, "MLX-LM mixed recipe: mixed_2_6, mixed_3_4, mixed_3_6 or mixed_4_6 (implies -q)", 0, 0, NULL},
        {"de-quantize", AV_OPT_FLAG, &dequant, "unpack a quantized model to float weights", 0, 0, "d"},
        {"dtype", AV_OPT_STR, &dtype, "dtype of the float tensors and of scales/biases: bf16, f16 or f32 (default: as stored)", 0, 0, NULL},
        {"outtype", AV_OPT_STR, &outtype, "GGUF output (--out FILE.gguf): f32, f16, bf16, q8_0, q4_0, q4_k or q6_k (default: f16)", 0, 0, NULL},
        {"threads", AV_OPT_INT, &threads, "CPU threads (default: all cores)", 1, 1024, NULL},
        {NULL, 0, NULL, NULL, 0, 0, NULL},
    };
    int r = av_args_parse(argc, argv, opts, cmd, "Convert a model to MLX-LM's layout, optionally quantized.");
    if (r) return r == 1 ? 0 : 2;
    if (!model || !*model) return av_cli_error(cmd, "--model is required");
    if (!out || !*out) return av_cli_error(cmd, "--out is required");
    if (threads) av_threads_set(threads);
    if (outtype || ends_with(out, ".gguf")) {
        if (quantize || recipe || dequant || dtype || strcmp(cmd, "convert"))
            return av_cli_error(cmd, "GGUF output takes --outtype only (not -q, --q-bits, --quant-predicate, --de-quantize or --dtype)");
        return to_gguf(cmd, model, out, outtype);
    }
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
    if (av_file_exists(model) && !av_dir_exists(model)) { /* one GGUF file */
        int rc = from_gguf(cmd, model, out, &o, &rep);
        if (rc || (!quantize && !recipe)) return rc;
    } else if (av_convert(model, out, &o, &rep) != AV_OK) return av_cli_fail(cmd);
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
