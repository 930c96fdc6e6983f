/* Fuse adapters into base weights and write a model directory: merged projections are converted
 * to f32, get W += scale * B A (double accumulation), and are rounded back to the output dtype;
 * every other tensor is written from the mapping as is (or converted when a dtype is forced).
 * A quantized (MLX affine) base is de-quantized (every packed matrix to float, config.json without
 * "quantization"), or with requantize only the merged matrices are packed again at their own
 * bits/group (the rest copied bit for bit, config.json unchanged). The directory is built in a temp
 * directory beside out_dir and published when complete. */
#include "model/model.h"
#include "core/memory.h"
#include "quant/affine.h"
#include "train/lora.h"
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const k_copy[] = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer.model",
                                     "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                                     "chat_template.json", NULL};

static int is_float(av_dtype t) { return t == AV_F32 || t == AV_F16 || t == AV_BF16; }

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

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

typedef struct {
    const av_model *m;
    const av_fuse_opts *o;
    const cJSON *q;  /* the base's "quantization" (NULL: float base) */
    av_st_writer w;
    void **keep;     /* buffers the writer points into, freed after the write */
    int nkeep, done;
} fuser;

static void *hold(fuser *fu, size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (p) fu->keep[fu->nkeep++] = p;
    return p;
}

/* W += scale * B A of the attached adapter L, on f32 rows [rows, cols]. */
static av_status merge(fuser *fu, const av_linear *L, float *f, size_t n, const char *name) {
    int rows = L->w.rows, cols = L->w.cols, r = L->rank;
    if ((size_t)rows * cols != n) return av_fail(AV_ERR_SHAPE, "fuse: '%s' does not match its adapter", name);
    float *ha = malloc(sizeof(float) * (size_t)r * cols), *hb = malloc(sizeof(float) * (size_t)rows * r);
    av_status st = ha && hb ? AV_OK : av_fail(AV_ERR_NOMEM, "out of memory");
    if (st == AV_OK) {
        fu->m->be->download(ha, L->lora_a, sizeof(float) * (size_t)r * cols);
        fu->m->be->download(hb, L->lora_b, sizeof(float) * (size_t)rows * r);
        av_lora_merge_f32(f, ha, hb, rows, cols, r, L->scale);
        fu->done++;
    }
    free(ha);
    free(hb);
    return st;
}

/* f32 values (malloc'd) of n floats of any alignment (MLX files put tensors at any byte offset). */
static float *to_f32(const av_st_tensor *t, size_t n) {
    float *f = malloc(n * sizeof(float));
    void *c = (uintptr_t)t->data % av_dtype_size(t->dtype) ? malloc(t->nbytes) : NULL;
    if (!f || ((uintptr_t)t->data % av_dtype_size(t->dtype) && !c)) {
        free(c);
        free(f);
        return NULL;
    }
    if (c) memcpy(c, t->data, t->nbytes);
    av_convert_to_f32(f, c ? c : t->data, t->dtype, n);
    free(c);
    return f;
}

/* Adds f (f32, malloc'd; taken over: kept for the writer or freed once converted) as dtype od. */
static av_status add_as(fuser *fu, const char *name, av_dtype od, int ndim, const int64_t *shape, float *f, size_t n) {
    if (od == AV_F32) {
        fu->keep[fu->nkeep++] = f;
        return av_st_writer_add(&fu->w, name, od, ndim, shape, f);
    }
    void *o = hold(fu, n * av_dtype_size(od));
    if (o) av_convert_from_f32(o, od, f, n);
    free(f);
    if (!o) return av_fail(AV_ERR_NOMEM, "fuse: out of memory for '%s'", name);
    return av_st_writer_add(&fu->w, name, od, ndim, shape, o);
}

/* A packed matrix <mod>.weight (U32) with its .scales/.biases: de-quantized (and merged), or kept
 * packed, or merged and packed again. */
static av_status add_packed(fuser *fu, const av_st_tensor *t, const char *mod) {
    const av_st_set *set = &fu->m->st;
    char nm[300];
    snprintf(nm, sizeof nm, "%s.scales", mod);
    const av_st_tensor *ts = av_st_set_find(set, nm);
    snprintf(nm, sizeof nm, "%s.biases", mod);
    const av_st_tensor *tb = av_st_set_find(set, nm);
    const cJSON *e = av_json_get(fu->q, mod);
    const cJSON *qo = cJSON_IsObject(e) ? e : fu->q;
    int bits = (int)av_json_num(qo, "bits", 4), group = (int)av_json_num(qo, "group_size", 64);
    if (!ts || !tb || !av_quant_supported(bits, group) || t->ndim != 2 || ts->ndim != 2 || !is_float(ts->dtype) ||
        tb->dtype != ts->dtype || ts->shape[0] != t->shape[0] || t->shape[1] * 32 % bits || ts->shape[1] != t->shape[1] * 32 / bits / group ||
        tb->shape[0] != ts->shape[0] || tb->shape[1] != ts->shape[1])
        return av_fail(AV_ERR_SHAPE, "%s: '%s' does not match %d-bit, group %d quantization", t->file, t->name, bits, group);
    const av_linear *L = proj_of(fu->m, t->name);
    if (fu->o->requantize && !L) { /* untouched: the same bits */
        AV_TRY(av_st_writer_add(&fu->w, t->name, t->dtype, t->ndim, t->shape, t->data));
        AV_TRY(av_st_writer_add(&fu->w, ts->name, ts->dtype, ts->ndim, ts->shape, ts->data));
        return av_st_writer_add(&fu->w, tb->name, tb->dtype, tb->ndim, tb->shape, tb->data);
    }
    int rows = (int)t->shape[0], cols = (int)(t->shape[1] * 32 / bits);
    size_t n = (size_t)rows * cols;
    float *f = malloc(n * sizeof(float));
    if (!f) return av_fail(AV_ERR_NOMEM, "fuse: out of memory for '%s'", t->name);
    for (int r = 0; r < rows; r++) av_quant_dequant_row(f + (size_t)r * cols, t->data, ts->data, tb->data, ts->dtype, r, cols, bits, group);
    av_status st = L ? merge(fu, L, f, n, t->name) : AV_OK;
    int64_t shape[2] = {rows, cols};
    if (st != AV_OK) {
        free(f);
        return st;
    }
    if (!fu->o->requantize) return add_as(fu, t->name, fu->o->out_dtype >= 0 ? (av_dtype)fu->o->out_dtype : ts->dtype, 2, shape, f, n);
    /* as convert: rounded to the model dtype first, then quantized with the f32 scale */
    av_dtype sdt = ts->dtype;
    int ng = cols / group, words = av_quant_row_words(cols, bits);
    void *c = malloc(n * av_dtype_size(sdt));
    uint32_t *pk = hold(fu, (size_t)rows * words * 4);
    void *sc = hold(fu, (size_t)rows * ng * av_dtype_size(sdt)), *bs = hold(fu, (size_t)rows * ng * av_dtype_size(sdt));
    int ok = c && pk && sc && bs;
    if (ok) {
        av_convert_from_f32(c, sdt, f, n);
        av_convert_to_f32(f, c, sdt, n);
        memset(pk, 0, (size_t)rows * words * 4);
        av_quant_matrix(pk, sc, bs, sdt, f, rows, cols, bits, group);
    }
    free(c);
    free(f);
    if (!ok) return av_fail(AV_ERR_NOMEM, "fuse: out of memory for '%s'", t->name);
    AV_TRY(av_st_writer_add(&fu->w, t->name, AV_U32, 2, t->shape, pk));
    AV_TRY(av_st_writer_add(&fu->w, ts->name, sdt, 2, ts->shape, sc));
    return av_st_writer_add(&fu->w, tb->name, sdt, 2, tb->shape, bs);
}

static av_status add_tensor(fuser *fu, const av_st_tensor *t) {
    char mod[256], nm[300];
    size_t len = strlen(t->name);
    if (fu->q && (ends_with(t->name, ".scales") || ends_with(t->name, ".biases"))) {
        snprintf(nm, sizeof nm, "%.*s.weight", (int)(len - 7), t->name);
        const av_st_tensor *tw = av_st_set_find(&fu->m->st, nm);
        if (tw && tw->dtype == AV_U32) return AV_OK; /* written with its weight */
    }
    if (fu->q && t->dtype == AV_U32 && ends_with(t->name, ".weight")) {
        snprintf(mod, sizeof mod, "%.*s", (int)(len - 7), t->name);
        return add_packed(fu, t, mod);
    }
    const av_linear *L = proj_of(fu->m, t->name);
    int od_forced = fu->o->out_dtype >= 0 && is_float(t->dtype) && !fu->o->requantize;
    av_dtype od = od_forced ? (av_dtype)fu->o->out_dtype : t->dtype;
    if (!L && od == t->dtype) return av_st_writer_add(&fu->w, t->name, t->dtype, t->ndim, t->shape, t->data);
    size_t n = (size_t)av_st_numel(t);
    float *f = to_f32(t, n);
    if (!f) return av_fail(AV_ERR_NOMEM, "fuse: out of memory for '%s'", t->name);
    av_status st = L ? merge(fu, L, f, n, t->name) : AV_OK;
    if (st != AV_OK) {
        free(f);
        return st;
    }
    return add_as(fu, t->name, od, t->ndim, t->shape, f, n);
}

/* config.json of a de-quantized output: the base's without "quantization" (and MLX-LM's twin
 * "quantization_config"), its dtype updated when one is forced. */
static av_status write_dequant_config(cJSON *j, const char *path, int out_dtype) {
    cJSON_DeleteItemFromObjectCaseSensitive(j, "quantization");
    cJSON_DeleteItemFromObjectCaseSensitive(j, "quantization_config");
    if (out_dtype >= 0) {
        const char *dn = out_dtype == AV_F32 ? "float32" : out_dtype == AV_F16 ? "float16" : "bfloat16";
        const char *key = av_json_get(j, "dtype") ? "dtype" : "torch_dtype";
        cJSON_DeleteItemFromObjectCaseSensitive(j, key);
        cJSON_AddStringToObject(j, key, dn);
    }
    char *txt = cJSON_Print(j);
    if (!txt) return av_fail(AV_ERR_NOMEM, "out of memory");
    av_status st = av_write_file_atomic(path, txt, strlen(txt));
    free(txt);
    return st;
}

av_status av_fuse_write(const av_model *m, const char *out_dir, const av_fuse_opts *o, int *n_fused) {
    if (n_fused) *n_fused = 0;
    if (o->out_dtype >= 0 && !is_float((av_dtype)o->out_dtype)) return av_fail(AV_ERR_ARG, "fuse: output dtype must be f32, f16 or bf16");
    if (o->requantize && !m->cfg.quant_bits) return av_fail(AV_ERR_ARG, "%s: --requantize needs a quantized base model", m->dir);
    if (o->requantize && o->out_dtype >= 0) return av_fail(AV_ERR_ARG, "fuse: --requantize keeps the base's dtype (drop --dtype)");
    char a[PATH_MAX], b[PATH_MAX];
    if (realpath(m->dir, a) && realpath(out_dir, b) && !strcmp(a, b))
        return av_fail(AV_ERR_ARG, "%s: the save path must differ from the model directory", out_dir);
    char path[4400], src[4400], tmp[4200];
    cJSON *cfg = NULL;
    if (m->cfg.quant_bits) AV_TRY(av_json_load(av_path_join(src, sizeof src, m->dir, "config.json"), &cfg));
    int nt = av_st_set_count(&m->st);
    fuser fu = {.m = m, .o = o, .q = cfg ? av_json_get(cfg, "quantization") : NULL};
    fu.keep = calloc((size_t)nt * 4 + 1, sizeof(void *));
    av_st_writer_init(&fu.w);
    av_status st = fu.keep ? AV_OK : av_fail(AV_ERR_NOMEM, "out of memory");
    for (int i = 0; i < nt && st == AV_OK; i++) st = add_tensor(&fu, av_st_set_at(&m->st, i));
    int total = av_lora_count(m);
    if (st == AV_OK && fu.done != total)
        st = av_fail(AV_ERR_FORMAT, "fuse: merged %d of %d adapters (base tensors missing from %s)", fu.done, total, m->dir);
    /* parents of out_dir first, then the temp directory beside it */
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", out_dir, (long)getpid());
    int made = 0;
    if (st == AV_OK) st = av_mkdir_p(tmp);
    made = st == AV_OK;
    for (int k = 0; k_copy[k] && st == AV_OK; k++) {
        av_path_join(src, sizeof src, m->dir, k_copy[k]);
        if (!av_file_exists(src)) continue;
        av_path_join(path, sizeof path, tmp, k_copy[k]);
        if (cfg && !o->requantize && !strcmp(k_copy[k], "config.json")) {
            st = write_dequant_config(cfg, path, o->out_dtype);
            continue;
        }
        char *data;
        size_t len;
        st = av_file_read(src, &data, &len);
        if (st == AV_OK) {
            st = av_write_file_atomic(path, data, len);
            free(data);
        }
    }
    if (st == AV_OK) st = av_st_writer_set_metadata(&fu.w, o->requantize ? "{\"format\":\"mlx\"}" : "{\"format\":\"pt\"}");
    if (st == AV_OK) st = av_st_writer_write(&fu.w, av_path_join(path, sizeof path, tmp, "model.safetensors"));
    if (st == AV_OK) st = av_dir_publish(tmp, out_dir);
    else if (made) av_remove_tree(tmp);
    /* a sharded source leaves no index behind: the output is one file */
    if (st == AV_OK) {
        av_path_join(path, sizeof path, out_dir, "model.safetensors.index.json");
        if (av_file_exists(path) && unlink(path) != 0) st = av_fail(AV_ERR_IO, "%s: cannot remove stale index", path);
    }
    av_st_writer_free(&fu.w);
    for (int i = 0; i < fu.nkeep; i++) free(fu.keep[i]);
    free(fu.keep);
    cJSON_Delete(cfg);
    if (st == AV_OK && n_fused) *n_fused = fu.done;
    return st;
}

av_status av_fuse_save(const av_model *m, const char *out_dir, int out_dtype, int *n_fused) {
    av_fuse_opts o = {.out_dtype = out_dtype, .requantize = 0};
    return av_fuse_write(m, out_dir, &o, n_fused);
}
