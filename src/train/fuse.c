/* Fuse adapters into base weights and write a model directory: merged projections are converted
 * to f32, get W += scale * B A (double accumulation), and are rounded back to the output dtype;
 * every other tensor is written from the mapping as is (or converted when a dtype is forced).
 * config.json and the tokenizer files are copied byte for byte; each file goes temp + rename. */
#include "model/model.h"
#include "core/memory.h"
#include "train/lora.h"
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const k_copy[] = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer.model",
                                     "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                                     "chat_template.json", NULL};

static int is_float(av_dtype t) { return t == AV_F32 || t == AV_F16 || t == AV_BF16; }

/* Which attached projection (if any) a tensor name is. */
static const av_linear *proj_of(const av_model *m, const char *name) {
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < AV_PROJ_COUNT; p++) {
            const av_linear *L = av_layer_proj(&m->layers[l], (av_proj)p);
            if (!L->lora_a) continue;
            char n[160];
            snprintf(n, sizeof n, "model.layers.%d.%s.%s.weight", l, av_proj_module[p], av_proj_names[p]);
            if (!strcmp(n, name)) return L;
        }
    return NULL;
}

av_status av_fuse_save(const av_model *m, const char *out_dir, int out_dtype, int *n_fused) {
    if (n_fused) *n_fused = 0;
    if (out_dtype >= 0 && !is_float((av_dtype)out_dtype)) return av_fail(AV_ERR_ARG, "fuse: output dtype must be f32, f16 or bf16");
    if (m->cfg.quant_bits) return av_fail(AV_ERR_UNSUPPORTED, "%s: fuse on a quantized base is not supported yet", m->dir);
    char a[PATH_MAX], b[PATH_MAX];
    if (realpath(m->dir, a) && realpath(out_dir, b) && !strcmp(a, b))
        return av_fail(AV_ERR_ARG, "%s: the save path must differ from the model directory", out_dir);
    int total = av_lora_count(m), done = 0;
    int nt = av_st_set_count(&m->st);
    void **bufs = calloc((size_t)nt + 1, sizeof(void *));
    if (!bufs) return av_fail(AV_ERR_NOMEM, "out of memory");
    av_st_writer w;
    av_st_writer_init(&w);
    av_status st = AV_OK;
    for (int i = 0; i < nt && st == AV_OK; i++) {
        const av_st_tensor *t = av_st_set_at(&m->st, i);
        const av_linear *L = proj_of(m, t->name);
        av_dtype od = (out_dtype >= 0 && is_float(t->dtype)) ? (av_dtype)out_dtype : t->dtype;
        if (!L && od == t->dtype) {
            st = av_st_writer_add(&w, t->name, t->dtype, t->ndim, t->shape, t->data);
            continue;
        }
        size_t n = (size_t)av_st_numel(t);
        float *f = malloc(n * sizeof(float));
        void *o = od == AV_F32 ? (void *)f : malloc(n * av_dtype_size(od));
        if (!f || !o) {
            if (o != f) free(o);
            free(f);
            st = av_fail(AV_ERR_NOMEM, "fuse: out of memory for '%s'", t->name);
            break;
        }
        bufs[i] = o;
        av_convert_to_f32(f, t->data, t->dtype, n);
        if (L) {
            int rows = L->w.rows, cols = L->w.cols, r = L->rank;
            float *ha = malloc(sizeof(float) * (size_t)r * cols), *hb = malloc(sizeof(float) * (size_t)rows * r);
            if (!ha || !hb || (size_t)rows * cols != n) {
                st = (ha && hb) ? av_fail(AV_ERR_SHAPE, "fuse: '%s' does not match its adapter", t->name) : av_fail(AV_ERR_NOMEM, "out of memory");
            } else {
                m->be->download(ha, L->lora_a, sizeof(float) * (size_t)r * cols);
                m->be->download(hb, L->lora_b, sizeof(float) * (size_t)rows * r);
                av_lora_merge_f32(f, ha, hb, rows, cols, r, L->scale);
                done++;
            }
            free(ha);
            free(hb);
        }
        if (od != AV_F32) {
            av_convert_from_f32(o, od, f, n);
            free(f);
        }
        if (st == AV_OK) st = av_st_writer_add(&w, t->name, od, t->ndim, t->shape, o);
    }
    if (st == AV_OK && done != total)
        st = av_fail(AV_ERR_FORMAT, "fuse: merged %d of %d adapters (base tensors missing from %s)", done, total, m->dir);
    if (st == AV_OK) st = av_mkdir_p(out_dir);
    char path[4200], src[4200];
    for (int k = 0; k_copy[k] && st == AV_OK; k++) {
        av_path_join(src, sizeof src, m->dir, k_copy[k]);
        if (!av_file_exists(src)) continue;
        char *data;
        size_t len;
        st = av_file_read(src, &data, &len);
        if (st == AV_OK) {
            st = av_write_file_atomic(av_path_join(path, sizeof path, out_dir, k_copy[k]), data, len);
            free(data);
        }
    }
    if (st == AV_OK) st = av_st_writer_set_metadata(&w, "{\"format\":\"pt\"}");
    if (st == AV_OK) st = av_st_writer_write(&w, av_path_join(path, sizeof path, out_dir, "model.safetensors"));
    /* a sharded source leaves no index behind: the output is one file */
    if (st == AV_OK) {
        av_path_join(path, sizeof path, out_dir, "model.safetensors.index.json");
        if (av_file_exists(path) && unlink(path) != 0) st = av_fail(AV_ERR_IO, "%s: cannot remove stale index", path);
    }
    av_st_writer_free(&w);
    for (int i = 0; i < nt; i++) free(bufs[i]);
    free(bufs);
    if (st == AV_OK && n_fused) *n_fused = done;
    return st;
}
