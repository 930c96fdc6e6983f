/* The training context's parameters and gradients to and from files: gradients and weights as f32
 * safetensors (PEFT / HF names), weights loaded back by name, and full fine-tuning's output as an
 * MLX-LM adapter directory that is also a plain model directory. */
#include "train/train_ctx.h"
#include "core/memory.h"
#include "formats/safetensors.h"
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

av_status av_train_save_grads(av_train_ctx *c, const char *path) {
    float *host = malloc(sizeof(float) * (c->grad_floats ? c->grad_floats : 1));
    if (!host) return av_fail(AV_ERR_NOMEM, "%s: out of memory", path);
    c->m->be->download(host, c->grad_arena, sizeof(float) * c->grad_floats);
    av_st_writer w;
    av_st_writer_init(&w);
    av_status st = AV_OK;
    for (int i = 0; i < c->nparams && st == AV_OK; i++) {
        const av_param *P = &c->params[i];
        int64_t shape[2] = {P->rows, P->cols};
        st = av_st_writer_add(&w, P->name, AV_F32, 2, shape, host + (P->grad - c->grad_arena));
    }
    if (st == AV_OK) st = av_st_writer_set_metadata(&w, "{\"format\":\"pt\"}");
    if (st == AV_OK) st = av_st_writer_write(&w, path);
    av_st_writer_free(&w);
    free(host);
    return st;
}

av_status av_train_save_weights(av_train_ctx *c, const char *path) {
    size_t total = 0;
    for (int i = 0; i < c->nparams; i++) total += c->params[i].n;
    float *host = malloc(sizeof(float) * (total ? total : 1));
    if (!host) return av_fail(AV_ERR_NOMEM, "%s: out of memory", path);
    av_st_writer w;
    av_st_writer_init(&w);
    av_status st = AV_OK;
    size_t off = 0;
    for (int i = 0; i < c->nparams && st == AV_OK; i++) {
        const av_param *P = &c->params[i];
        c->m->be->download(host + off, P->data, sizeof(float) * P->n);
        int64_t shape[2] = {P->rows, P->cols};
        int vec = c->ws.full && P->rows == 1 && strstr(P->name, "norm"); /* norms are 1-D in HF files */
        st = av_st_writer_add(&w, P->name, AV_F32, vec ? 1 : 2, vec ? shape + 1 : shape, host + off);
        off += P->n;
    }
    if (st == AV_OK) st = av_st_writer_set_metadata(&w, "{\"format\":\"pt\"}");
    if (st == AV_OK) st = av_st_writer_write(&w, path);
    av_st_writer_free(&w);
    free(host);
    return st;
}

av_status av_train_load_weights(av_train_ctx *c, const char *path) {
    av_st_file f;
    AV_TRY(av_st_open(&f, path));
    av_status st = AV_OK;
    float *host = NULL;
    for (int i = 0; i < c->nparams && st == AV_OK; i++) {
        const av_param *P = &c->params[i];
        const av_st_tensor *t = av_st_find(&f, P->name);
        if (!t) { st = av_fail(AV_ERR_FORMAT, "%s: no tensor '%s'", path, P->name); break; }
        if (av_st_numel(t) != (int64_t)P->n || (t->dtype != AV_F32 && t->dtype != AV_F16 && t->dtype != AV_BF16)) {
            st = av_fail(AV_ERR_SHAPE, "%s: '%s' has the wrong size or dtype (expected %d x %d f32/f16/bf16)", path, P->name, P->rows, P->cols);
            break;
        }
        free(host);
        host = malloc(sizeof(float) * P->n);
        if (!host) { st = av_fail(AV_ERR_NOMEM, "%s: out of memory", path); break; }
        av_mat hv = {.data = t->data, .dtype = t->dtype, .rows = P->rows, .cols = P->cols};
        av_mat_rows_to_f32(host, &hv, 0, P->rows);
        c->m->be->upload(P->data, host, sizeof(float) * P->n);
    }
    free(host);
    av_st_close(&f);
    return st;
}

/* Copies src to dst atomically (whole-file read; config and tokenizer files are small). */
static av_status copy_file(const char *src, const char *dst) {
    char *buf;
    size_t n;
    AV_TRY(av_file_read(src, &buf, &n));
    av_status st = av_write_file_atomic(dst, buf, n);
    free(buf);
    return st;
}

av_status av_train_save_model_dir(av_train_ctx *c, const char *dir) {
    av_model *m = c->m;
    if (!c->ws.full) return av_fail(AV_ERR_ARG, "%s: a model directory is written by full fine-tuning only (LoRA saves adapters)", dir);
    if (!strcmp(dir, m->dir)) return av_fail(AV_ERR_ARG, "%s: refusing to write the trained model over the base model directory", dir);
    if (!av_dir_exists(dir) && mkdir(dir, 0755) != 0) return av_fail(AV_ERR_IO, "%s: cannot create directory", dir);
    char wpath[4200], tmp[4300], lpath[4200], src[4200], dst[4200];
    av_path_join(wpath, sizeof wpath, dir, "adapters.safetensors");
    AV_TRY(av_train_save_weights(c, wpath));
    /* adapter_config.json as MLX-LM writes for full fine-tuning */
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(cfg, "fine_tune_type", "full");
    cJSON_AddStringToObject(cfg, "model", m->dir);
    cJSON_AddNumberToObject(cfg, "num_layers", m->cfg.n_layers);
    char *js = cJSON_Print(cfg);
    cJSON_Delete(cfg);
    if (!js) return av_fail(AV_ERR_NOMEM, "out of memory");
    av_status st = av_write_file_atomic(av_path_join(dst, sizeof dst, dir, "adapter_config.json"), js, strlen(js));
    free(js);
    AV_TRY(st);
    /* a plain model directory too: config + tokenizer files, model.safetensors = the same weights */
    static const char *const files[] = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                        "special_tokens_map.json", "tokenizer.model", "added_tokens.json", "chat_template.jinja"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        av_path_join(src, sizeof src, m->dir, files[i]);
        if (!av_file_exists(src)) continue;
        AV_TRY(copy_file(src, av_path_join(dst, sizeof dst, dir, files[i])));
    }
    av_path_join(lpath, sizeof lpath, dir, "model.safetensors");
    snprintf(tmp, sizeof tmp, "%s.tmp-link", lpath);
    unlink(tmp);
    if (link(wpath, tmp) == 0) {
        if (rename(tmp, lpath) != 0) {
            unlink(tmp);
            return av_fail(AV_ERR_IO, "%s: cannot rename into place", lpath);
        }
        av_fsync_parent(lpath);
        return AV_OK;
    }
    return copy_file(wpath, lpath); /* no hard links on this file system */
}
