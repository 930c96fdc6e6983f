/* anvil fuse: merges a LoRA adapter (MLX-LM or PEFT) into the base weights and writes a normal
 * model directory (config, tokenizer files, model.safetensors) that anvil and transformers load.
 * A quantized base is de-quantized (the merged deltas kept exactly); --requantize packs the merged
 * matrices again at the base's bits/group and prints what that costs: KL(base + adapter ||
 * requantized) over a short text. */
#include "args.h"
#include "common.h"
#include "anvil.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The evaluation text of --requantize when no --kl-text is given (plain English, fixed so that
 * reports compare across runs). */
static const char k_default_text[] =
    "The library opens at nine and closes at six, except on Sundays, when it does not open at all. "
    "Most visitors come for the newspapers, which are kept on a long wooden table near the window. "
    "In winter the reading room is warm and quiet, and the only sound is the turning of pages. "
    "A small garden behind the building has three benches, a lemon tree and a fountain that has not "
    "worked for years. Children learn to read here, and old men argue about the weather, the prices "
    "at the market and the results of last night's football match.";

/* KL(m with its adapter || the requantized model at dir) over the first max_tokens tokens of text. */
static int requant_report(const char *cmd, av_model *m, av_tokenizer *tok, const char *dir, const char *text, size_t len,
                          const char *what, int max_tokens) {
    av_model *q = NULL;
    av_session *sb = NULL, *sq = NULL;
    av_kl *k = NULL;
    int32_t *ids = NULL;
    int n = 0, rc = 0;
    av_kl_report r;
    if (av_tokenizer_encode(tok, text, len, 1, &ids, &n) != AV_OK) return av_cli_fail(cmd);
    if (n > max_tokens) n = max_tokens;
    if (n < 2) rc = av_cli_error(cmd, "%s: need at least 2 tokens to measure the requantization, got %d", what, n);
    if (!rc && (av_model_load(&q, dir, av_model_backend(m)) != AV_OK || av_session_new(&sb, m, n, 512) != AV_OK ||
                av_session_new(&sq, q, n, 512) != AV_OK || av_kl_new(&k) != AV_OK || av_kl_window(k, sb, sq, ids, n) != AV_OK ||
                av_kl_result(k, &r) != AV_OK))
        rc = av_cli_fail(cmd);
    if (!rc)
        printf("Requantization cost over %lld positions of %s: KL(fused || requantized) mean %.6g, p99 %.6g; top-1 agreement %.4f\n",
               r.positions, what, r.kl_mean, r.kl_p99, r.top1_agree);
    av_kl_free(k);
    av_session_free(sb);
    av_session_free(sq);
    av_model_free(q);
    free(ids);
    return rc;
}

/* --export-gguf: the base with its adapter merged, as one GGUF file (tokenizer.model's vocabulary). */
static int export_gguf(const char *cmd, av_model *m, const char *model, const char *adapter, const char *path, int ot) {
    char sp[4400];
    snprintf(sp, sizeof sp, "%s/tokenizer.model", model);
    av_tokenizer *tok = NULL;
    av_chat_config cc;
    memset(&cc, 0, sizeof cc);
    av_gguf_export_opts o = {.outtype = ot};
    av_gguf_export_report rep;
    int rc = 0;
    if (av_adapter_load(m, adapter, NULL) != AV_OK || av_tokenizer_load(&tok, model, av_file_exists(sp)) != AV_OK ||
        av_chat_config_load(&cc, model) != AV_OK)
        rc = av_cli_fail(cmd);
    o.chat_template = cc.template_src;
    if (!rc && av_gguf_export(m, tok, path, &o, &rep) != AV_OK) rc = av_cli_fail(cmd);
    if (!rc) {
        printf("Fused %d adapter%s from %s into %s (GGUF", rep.n_fused, rep.n_fused == 1 ? "" : "s", adapter, path);
        if (rep.n_dequantized) printf(", de-quantized from %d bits", av_model_config(m)->quant_bits);
        printf(")\n");
    }
    av_lora_detach(m);
    av_chat_config_free(&cc);
    av_tokenizer_free(tok);
    return rc;
}

int av_cmd_fuse(int argc, char **argv) {
    const char *cmd = "fuse", *save = "fused_model", *dtype = NULL, *kl_text = NULL, *gguf = NULL, *outtype = NULL;
    av_cli_model_opts mo = {0};
    int dequant = 0, requant = 0, kl_tokens = 256;
    mo.adapter = "adapters";
    av_opt opts[] = {
        {"model", AV_OPT_STR, &mo.model, "base model directory (HF layout, or MLX-quantized) or GGUF file", 0, 0, NULL},
        {"adapter-path", AV_OPT_STR, &mo.adapter, "adapter directory (MLX-LM or PEFT) or adapters.safetensors (default: adapters)", 0, 0, NULL},
        {"save-path", AV_OPT_STR, &save, "output model directory (default: fused_model)", 0, 0, NULL},
        {"dtype", AV_OPT_STR, &dtype, "output dtype of the weights: bf16, f16 or f32 (default: the base model's)", 0, 0, NULL},
        {"de-quantize", AV_OPT_FLAG, &dequant, "write a quantized base as float weights (the default; MLX-LM's flag)", 0, 0, NULL},
        {"requantize", AV_OPT_FLAG, &requant,
         "quantized base: pack the merged weights again with the base's bits/group and print the KL that costs "
         "(MLX-LM's fuse always does this and silently loses deltas smaller than half a step: its issue #1172)", 0, 0, NULL},
        {"kl-text", AV_OPT_STR, &kl_text, "--requantize: text file to measure the KL on (default: a built-in English paragraph)", 0, 0, NULL},
        {"kl-tokens", AV_OPT_INT, &kl_tokens, "--requantize: tokens of that text to use (default: 256)", 2, 1e6, NULL},
        {"export-gguf", AV_OPT_STR, &gguf, "write the fused model as this one GGUF file (for llama.cpp) instead of a directory", 0, 0, NULL},
        {"outtype", AV_OPT_STR, &outtype, "--export-gguf: f32, f16, bf16, q8_0, q4_0, q4_k or q6_k (default: f16)", 0, 0, NULL},
        {"threads", AV_OPT_INT, &mo.threads, "CPU threads (default: all cores)", 1, 1024, NULL},
        {NULL, 0, NULL, NULL, 0, 0, NULL},
    };
    int r = av_args_parse(argc, argv, opts, cmd, "Merge a LoRA adapter into the base weights and save the model.");
    if (r) return r == 1 ? 0 : 2;
    int out_dt = -1;
    if (dtype && av_cli_out_dtype(cmd, dtype, &out_dt)) return 1;
    if (!save || !*save) return av_cli_error(cmd, "--save-path must not be empty");
    if (!mo.adapter || !*mo.adapter) return av_cli_error(cmd, "--adapter-path is required");
    if (requant && dequant) return av_cli_error(cmd, "--requantize and --de-quantize are exclusive");
    if (requant && dtype) return av_cli_error(cmd, "--requantize keeps the base's dtype (drop --dtype)");
    if (kl_text && !requant) return av_cli_error(cmd, "--kl-text needs --requantize");
    int ot = AV_GGUF_OUT_F16;
    if (outtype && !gguf) return av_cli_error(cmd, "--outtype needs --export-gguf");
    if (gguf && (requant || dtype)) return av_cli_error(cmd, "--export-gguf takes --outtype (not --requantize or --dtype)");
    if (gguf && !*gguf) return av_cli_error(cmd, "--export-gguf must not be empty");
    if (outtype && (ot = av_gguf_outtype_parse(outtype)) < 0)
        return av_cli_error(cmd, "--outtype must be f32, f16, bf16, q8_0, q4_0, q4_k or q6_k (got '%s')", outtype);
    mo.device = "cpu";
    size_t len = 0;
    char *text = NULL;
    if (kl_text && !(text = av_cli_read_file(cmd, kl_text, &len))) return 1;
    const char *adapter = mo.adapter;
    mo.adapter = NULL; /* loaded here, so a bad adapter fails before anything is written */
    av_model *m;
    av_tokenizer *tok = NULL;
    if (av_cli_load(cmd, &mo, &m, requant ? &tok : NULL)) {
        free(text);
        return 1;
    }
    av_lora_spec spec;
    int n = 0, rc = 0;
    av_fuse_opts fo = {.out_dtype = out_dt, .requantize = requant};
    if (gguf) {
        rc = export_gguf(cmd, m, mo.model, adapter, gguf, ot);
        av_model_free(m);
        free(text);
        return rc;
    }
    int is_gguf = av_file_exists(mo.model) && !av_dir_exists(mo.model);
    if (is_gguf && requant) {
        av_model_free(m);
        av_tokenizer_free(tok);
        free(text);
        return av_cli_error(cmd, "%s: --requantize is not supported for a GGUF base (the fused model is written de-quantized)", mo.model);
    }
    if (is_gguf) { /* no HF tensors to copy: written from the loaded views */
        av_chat_config cc;
        memset(&cc, 0, sizeof cc);
        av_dir_export_opts eo = {.out_dtype = out_dt, .keep_packed = 0};
        av_dir_export_report dr;
        if (av_adapter_load(m, adapter, &spec) != AV_OK || av_tokenizer_load(&tok, mo.model, 0) != AV_OK ||
            av_chat_config_load(&cc, mo.model) != AV_OK)
            rc = av_cli_fail(cmd);
        eo.chat_template = cc.template_src;
        if (!rc && av_model_export_dir(m, tok, save, &eo, &dr) != AV_OK) rc = av_cli_fail(cmd);
        if (!rc && dr.n_fused != av_lora_count(m)) rc = av_cli_error(cmd, "merged %d of %d adapters", dr.n_fused, av_lora_count(m));
        n = dr.n_fused;
        av_chat_config_free(&cc);
    } else if (av_adapter_load(m, adapter, &spec) != AV_OK || av_fuse_write(m, save, &fo, &n) != AV_OK) rc = av_cli_fail(cmd);
    if (!rc) {
        const av_config *c = av_model_config(m);
        printf("Fused %d adapter%s from %s into %s", n, n == 1 ? "" : "s", adapter, save);
        if (c->quant_bits) printf(requant ? " (re-quantized, %d-bit base)" : " (de-quantized from %d bits)", c->quant_bits);
        printf("\n");
    }
    if (!rc && requant)
        rc = requant_report(cmd, m, tok, save, text ? text : k_default_text, text ? len : strlen(k_default_text),
                            kl_text ? kl_text : "the built-in paragraph", kl_tokens);
    av_lora_detach(m);
    av_model_free(m);
    av_tokenizer_free(tok);
    free(text);
    return rc;
}
