/* anvil synth: write a random-weight model (HF layout) with a tokenizer, for benchmarks. */
#include "args.h"
#include "anvil.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int copy_file(const char *cmd, const char *src_dir, const char *dst_dir, const char *name, int required) {
    char src[4200], dst[4200];
    av_path_join(src, sizeof src, src_dir, name);
    if (!av_file_exists(src)) return required ? av_cli_error(cmd, "%s: missing", src) : 0;
    char *buf;
    size_t len;
    if (av_file_read(src, &buf, &len) != AV_OK) return av_cli_fail(cmd);
    av_status st = av_write_file_atomic(av_path_join(dst, sizeof dst, dst_dir, name), buf, len);
    free(buf);
    return st == AV_OK ? 0 : av_cli_fail(cmd);
}

int av_cmd_synth(int argc, char **argv) {
    const char *cmd = "synth", *config = NULL, *preset = NULL, *out = NULL, *dtype = "bf16", *tokdir = NULL;
    int seed = 0;
    av_opt opts[] = {
        {"config", AV_OPT_STR, &config, "config.json to take the shape from", 0, 0, NULL},
        {"preset", AV_OPT_STR, &preset, "tinyllama-1.1b | llama-3.2-1b | tiny", 0, 0, NULL},
        {"out", AV_OPT_STR, &out, "output directory", 0, 0, NULL},
        {"seed", AV_OPT_INT, &seed, "random seed (default 0)", 0, 2147483647, NULL},
        {"dtype", AV_OPT_STR, &dtype, "bf16 (default) | f16 | f32", 0, 0, NULL},
        {"tokenizer", AV_OPT_STR, &tokdir, "copy tokenizer files from this directory (default: built-in byte-level tokenizer)", 0, 0, NULL},
        {NULL, 0, NULL, NULL, 0, 0, NULL},
    };
    int r = av_args_parse(argc, argv, opts, cmd, "Write a random-weight model in the Hugging Face layout.");
    if (r) return r == 1 ? 0 : 2;
    if (!out) return av_cli_error(cmd, "--out DIR is required");
    if (!!config == !!preset) return av_cli_error(cmd, "give exactly one of --config FILE or --preset NAME");
    av_config c;
    if (preset && av_synth_preset(&c, preset) != 0) return av_cli_error(cmd, "unknown preset '%s' (tinyllama-1.1b, llama-3.2-1b, tiny)", preset);
    if (config && av_config_load(&c, config) != AV_OK) return av_cli_fail(cmd);
    av_dtype dt;
    if (av_dtype_parse(dtype, &dt) != 0 || (dt != AV_F32 && dt != AV_F16 && dt != AV_BF16))
        return av_cli_error(cmd, "--dtype: '%s' is not one of bf16, f16, f32", dtype);
    fprintf(stderr, "synth: writing %.3fB-parameter model to %s ...\n", av_config_param_count(&c) / 1e9, out);
    if (av_synth_write(&c, out, (uint64_t)seed, dt) != AV_OK) return av_cli_fail(cmd);
    if (tokdir) {
        const char *files[] = {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                               "chat_template.jinja", "generation_config.json"};
        char tj[4200], tm[4200];
        if (!av_file_exists(av_path_join(tj, sizeof tj, tokdir, "tokenizer.json")) &&
            !av_file_exists(av_path_join(tm, sizeof tm, tokdir, "tokenizer.model")))
            return av_cli_error(cmd, "%s: no tokenizer.json or tokenizer.model", tokdir);
        for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
            if (copy_file(cmd, tokdir, out, files[i], 0)) return 1;
    } else if (av_tokenizer_write_builtin(out) != AV_OK) {
        return av_cli_fail(cmd);
    }
    fprintf(stderr, "synth: done\n");
    return 0;
}
