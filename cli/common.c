/* Model/tokenizer loading for commands. */
#include "common.h"
#include "args.h"
#include "anvil.h"
#include <stdlib.h>
#include <string.h>

/* --device plus --dtype: f32 picks the CUDA backend's exact-f32 table (the CPU always computes in f32). */
static int pick_backend(const char *cmd, const av_cli_model_opts *o, const av_backend **be) {
    if (o->dtype && strcmp(o->dtype, "bf16") && strcmp(o->dtype, "f32"))
        return av_cli_error(cmd, "--dtype: '%s' is not bf16 or f32", o->dtype);
    if (av_backend_select(o->device, be) != AV_OK) return av_cli_fail(cmd);
    if (av_backend_device(*be) == AV_DEVICE_CUDA && o->dtype && !strcmp(o->dtype, "f32")) {
        *be = av_backend_cuda_dtype(AV_F32);
        if (!*be) return av_cli_fail(cmd);
    }
    return 0;
}

int av_cli_attach_adapter(const char *cmd, av_model *m, const char *path) {
    av_lora_spec spec;
    if (av_adapter_load(m, path, &spec) != AV_OK) return av_cli_fail(cmd);
    return 0;
}

int av_cli_attention(const char *cmd, const char *name, av_attention_kind *out) {
    *out = AV_ATTN_AUTO;
    if (!name || !strcmp(name, "auto")) return 0;
    if (!strcmp(name, "flash")) *out = AV_ATTN_FLASH;
    else if (!strcmp(name, "standard")) *out = AV_ATTN_STANDARD;
    else return av_cli_error(cmd, "--attention: '%s' is not flash, standard or auto", name);
    return 0;
}

int av_cli_load(const char *cmd, const av_cli_model_opts *o, av_model **m, av_tokenizer **tok) {
    if (m) *m = NULL;
    if (tok) *tok = NULL;
    if (!o->model) return av_cli_error(cmd, "--model DIR is required");
    av_attention_kind attn;
    if (av_cli_attention(cmd, o->attention, &attn)) return 2;
    av_threads_set(o->threads);
    if (tok && av_tokenizer_load(tok, o->model, 0) != AV_OK) return av_cli_fail(cmd);
    if (!m) return 0;
    const av_backend *be;
    if (pick_backend(cmd, o, &be)) {
        if (tok) { av_tokenizer_free(*tok); *tok = NULL; }
        return 1;
    }
    if (av_model_load(m, o->model, be) != AV_OK) {
        if (tok) { av_tokenizer_free(*tok); *tok = NULL; }
        return av_cli_fail(cmd);
    }
    if (o->no_graphs) av_model_set_graphs(*m, 0);
    av_model_set_attention(*m, attn);
    if (o->adapter && av_cli_attach_adapter(cmd, *m, o->adapter) != 0) {
        av_model_free(*m);
        *m = NULL;
        if (tok) { av_tokenizer_free(*tok); *tok = NULL; }
        return 1;
    }
    return 0;
}

char *av_cli_read_file(const char *cmd, const char *path, size_t *len) {
    char *buf;
    if (av_file_read(path, &buf, len) != AV_OK) {
        av_cli_fail(cmd);
        return NULL;
    }
    return buf;
}

int av_cli_out_dtype(const char *cmd, const char *s, int *out) {
    av_dtype d;
    if (av_dtype_parse(s, &d) != 0 || (d != AV_BF16 && d != AV_F16 && d != AV_F32))
        return av_cli_error(cmd, "--dtype must be bf16, f16 or f32 (got '%s')", s);
    *out = (int)d;
    return 0;
}
