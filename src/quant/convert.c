/* Model conversion (anvil convert / quantize): every tensor of a float model directory is re-cast
 * and, with quantization on, packed into MLX's affine layout (<name>.weight U32 + .scales/.biases),
 * as mlx_lm.convert does; config.json gains "quantization"; other files are copied. The output is
 * built in a temp directory beside out_dir and renamed into place only when complete. */
#include "formats/safetensors.h"
#include "core/memory.h"
#include "core/status.h"
#include "quant/affine.h"
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int is_float(av_dtype t) { return t == AV_F32 || t == AV_F16 || t == AV_BF16; }

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* Copies every plain file of src that is not weights or config.json (tokenizer, templates, ...). */
static av_status copy_side_files(const char *src, const char *dst) {
    DIR *d = opendir(src);
    if (!d) return av_fail(AV_ERR_IO, "%s: cannot read directory", src);
    av_status st = AV_OK;
    struct dirent *e;
    char a[4400], b[4400];
    while (st == AV_OK && (e = readdir(d))) {
        const char *n = e->d_name;
        struct stat sb;
        if (n[0] == '.' || ends_with(n, ".safetensors") || !strcmp(n, "model.safetensors.index.json") || !strcmp(n, "config.json")) continue;
        if (stat(av_path_join(a, sizeof a, src, n), &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
        char *data;
        size_t len;
        st = av_file_read(a, &data, &len);
        if (st == AV_OK) {
            st = av_write_file_atomic(av_path_join(b, sizeof b, dst, n), data, len);
            free(data);
        }
    }
    closedir(d);
    return st;
}

/* MLX-LM's mixed recipes: the width of one module (its path without ".weight"), or 0 for
 * uniform quantization. Layers near both ends and every third one between get v_proj/down_proj at
 * the high width; the LM head always; everything else the low width. */
static int recipe_bits(const char *recipe, const char *mod, int n_layers) {
    if (!recipe) return 0;
    int lo = !strcmp(recipe, "mixed_2_6") ? 2 : !strcmp(recipe, "mixed_3_4") ? 3 : !strcmp(recipe, "mixed_3_6") ? 3 : 4;
    int hi = !strcmp(recipe, "mixed_3_4") ? 4 : 6;
    int index = 0;
    const char *p = strstr(mod, "layers.");
    if (p) index = atoi(p + 7);
    int more = index < n_layers / 8 || index >= 7 * n_layers / 8 || (index - n_layers / 8) % 3 == 2;
    if ((strstr(mod, "v_proj") || strstr(mod, "down_proj")) && more) return hi;
    if (strstr(mod, "lm_head")) return hi;
    return lo;
}

static int recipe_known(const char *r) {
    return !strcmp(r, "mixed_2_6") || !strcmp(r, "mixed_3_4") || !strcmp(r, "mixed_3_6") || !strcmp(r, "mixed_4_6");
}

/* config.json of the output: the source's with "quantization" (and MLX-LM's twin
 * "quantization_config") set to qcfg or removed, and the dtype updated when forced. */
static av_status write_config(cJSON *j, const char *dst, const av_convert_opts *o, const cJSON *qcfg) {
    char b[4400];
    cJSON_DeleteItemFromObjectCaseSensitive(j, "quantization");
    cJSON_DeleteItemFromObjectCaseSensitive(j, "quantization_config");
    if (o->out_dtype >= 0) {
        const char *dn = o->out_dtype == AV_F32 ? "float32" : o->out_dtype == AV_F16 ? "float16" : "bfloat16";
        const char *key = av_json_get(j, "dtype") ? "dtype" : "torch_dtype";
        cJSON_DeleteItemFromObjectCaseSensitive(j, key);
        cJSON_AddStringToObject(j, key, dn);
    }
    if (qcfg) {
        cJSON_AddItemToObject(j, "quantization", cJSON_Duplicate(qcfg, 1));
        cJSON_AddItemToObject(j, "quantization_config", cJSON_Duplicate(qcfg, 1));
    }
    char *txt = cJSON_Print(j);
    if (!txt) return av_fail(AV_ERR_NOMEM, "out of memory");
    av_status st = av_write_file_atomic(av_path_join(b, sizeof b, dst, "config.json"), txt, strlen(txt));
    free(txt);
    return st;
}

typedef struct {
    av_st_writer w;
    void **keep;
    int nkeep;
    cJSON *qcfg;      /* the output's "quantization" (NULL when not quantizing) */
    const cJSON *src_q; /* the source's (de-quantizing) */
    const av_st_set *set;
    int n_layers;
} conv;

static void *hold(conv *cv, size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (p) cv->keep[cv->nkeep++] = p;
    return p;
}

/* A packed source matrix (<mod>.weight U32 with .scales/.biases) unpacked to f32 into f; *sdt = the scales' dtype. */
static av_status unpack_source(conv *cv, const av_st_tensor *t, const char *mod, float **f, int *cols, av_dtype *sdt) {
    char nm[300];
    snprintf(nm, sizeof nm, "%s.scales", mod);
    const av_st_tensor *ts = av_st_set_find(cv->set, nm);
    snprintf(nm, sizeof nm, "%s.biases", mod);
    const av_st_tensor *tb = av_st_set_find(cv->set, nm);
    const cJSON *e = av_json_get(cv->src_q, mod);
    const cJSON *o = cJSON_IsObject(e) ? e : cv->src_q;
    int bits = (int)av_json_num(o, "bits", 4), group = (int)av_json_num(o, "group_size", 64);
    if (!ts || !tb) return av_fail(AV_ERR_FORMAT, "%s: missing '%s.scales' or '%s.biases'", t->file, mod, mod);
    if (!av_quant_supported(bits, group) || t->ndim != 2 || ts->ndim != 2 || t->shape[1] * 32 % bits ||
        ts->shape[0] != t->shape[0] || tb->shape[0] != t->shape[0] || ts->shape[1] != t->shape[1] * 32 / bits / group ||
        tb->shape[1] != ts->shape[1] || !is_float(ts->dtype) || tb->dtype != ts->dtype)
        return av_fail(AV_ERR_SHAPE, "%s: '%s' does not match %d-bit, group %d quantization", t->file, t->name, bits, group);
    int rows = (int)t->shape[0];
    *cols = (int)(t->shape[1] * 32 / bits);
    *sdt = ts->dtype;
    *f = hold(cv, (size_t)rows * *cols * sizeof(float));
    if (!*f) return av_fail(AV_ERR_NOMEM, "convert: out of memory for '%s'", t->name);
    for (int r = 0; r < rows; r++)
        av_quant_dequant_row(*f + (size_t)r * *cols, t->data, ts->data, tb->data, ts->dtype, r, *cols, bits, group);
    return AV_OK;
}

/* Adds one tensor to the writer: quantized (three tensors), unpacked, or cast. */
static av_status add_tensor(conv *cv, const av_st_tensor *t, const av_convert_opts *o, av_convert_report *r) {
    char mod[256], nm[300];
    size_t len = strlen(t->name);
    int is_w = len > 7 && !strcmp(t->name + len - 7, ".weight");
    snprintf(mod, sizeof mod, "%.*s", (int)(is_w ? len - 7 : len), t->name);
    if (o->dequantize && (ends_with(t->name, ".scales") || ends_with(t->name, ".biases"))) {
        snprintf(nm, sizeof nm, "%.*s.weight", (int)(len - 7), t->name);
        const av_st_tensor *tw = av_st_set_find(cv->set, nm);
        if (tw && tw->dtype == AV_U32) return AV_OK; /* consumed with its weight */
    }
    float *f = NULL;
    int rows = t->ndim ? (int)t->shape[0] : 1, cols = t->ndim == 2 ? (int)t->shape[1] : 0;
    av_dtype src_dt = t->dtype;
    if (o->dequantize && is_w && t->dtype == AV_U32) {
        AV_TRY(unpack_source(cv, t, mod, &f, &cols, &src_dt));
        r->n_quantized++;
    }
    av_dtype od = (o->out_dtype >= 0 && is_float(src_dt)) ? (av_dtype)o->out_dtype : src_dt;
    int mat = is_float(src_dt) && t->ndim == 2 && is_w;
    int bits = recipe_bits(o->recipe, mod, cv->n_layers);
    if (!bits) bits = o->bits;
    int q = o->quantize && mat && cols % o->group == 0;
    if (o->quantize && mat && !q) r->n_unquantized++;
    if (!f && !q && od == t->dtype) return av_st_writer_add(&cv->w, t->name, t->dtype, t->ndim, t->shape, t->data);
    size_t n = cols ? (size_t)rows * (size_t)cols : (size_t)av_st_numel(t);
    if (!f) {
        const void *src = t->data;
        if ((uintptr_t)src % av_dtype_size(t->dtype)) { /* MLX files put tensors at any byte offset */
            void *c = hold(cv, t->nbytes);
            if (!c) return av_fail(AV_ERR_NOMEM, "convert: out of memory for '%s'", t->name);
            memcpy(c, src, t->nbytes);
            src = c;
        }
        f = hold(cv, n * sizeof(float));
        if (!f) return av_fail(AV_ERR_NOMEM, "convert: out of memory for '%s'", t->name);
        av_convert_to_f32(f, src, t->dtype, n);
    }
    if (!q) {
        int64_t sh[2] = {rows, cols};
        const int64_t *shape = cols && t->dtype == AV_U32 ? sh : t->shape;
        if (od == AV_F32) return av_st_writer_add(&cv->w, t->name, od, t->ndim, shape, f);
        void *c = hold(cv, n * av_dtype_size(od));
        if (!c) return av_fail(AV_ERR_NOMEM, "convert: out of memory for '%s'", t->name);
        av_convert_from_f32(c, od, f, n);
        return av_st_writer_add(&cv->w, t->name, od, t->ndim, shape, c);
    }
    /* MLX-LM casts to the model dtype first, then quantizes those values */
    if (od != AV_F32) {
        void *c = malloc(n * av_dtype_size(od));
        if (!c) return av_fail(AV_ERR_NOMEM, "convert: out of memory for '%s'", t->name);
        av_convert_from_f32(c, od, f, n);
        av_convert_to_f32(f, c, od, n);
        free(c);
    }
    int ng = cols / o->group, words = av_quant_row_words(cols, bits);
    uint32_t *pk = hold(cv, (size_t)rows * words * 4);
    void *sc = hold(cv, (size_t)rows * ng * av_dtype_size(od)), *bs = hold(cv, (size_t)rows * ng * av_dtype_size(od));
    if (!pk || !sc || !bs) return av_fail(AV_ERR_NOMEM, "convert: out of memory for '%s'", t->name);
    memset(pk, 0, (size_t)rows * words * 4);
    av_quant_matrix(pk, sc, bs, od, f, rows, cols, bits, o->group);
    int64_t sw[2] = {rows, words}, ss[2] = {rows, ng};
    snprintf(nm, sizeof nm, "%s.weight", mod);
    AV_TRY(av_st_writer_add(&cv->w, nm, AV_U32, 2, sw, pk));
    snprintf(nm, sizeof nm, "%s.scales", mod);
    AV_TRY(av_st_writer_add(&cv->w, nm, od, 2, ss, sc));
    snprintf(nm, sizeof nm, "%s.biases", mod);
    AV_TRY(av_st_writer_add(&cv->w, nm, od, 2, ss, bs));
    if (o->recipe) {
        cJSON *e = cJSON_AddObjectToObject(cv->qcfg, mod);
        cJSON_AddNumberToObject(e, "group_size", o->group);
        cJSON_AddNumberToObject(e, "bits", bits);
        cJSON_AddStringToObject(e, "mode", "affine");
    }
    r->n_quantized++;
    return AV_OK;
}

av_status av_convert(const char *src_dir, const char *out_dir, const av_convert_opts *o, av_convert_report *r) {
    memset(r, 0, sizeof *r);
    if (o->quantize && o->dequantize) return av_fail(AV_ERR_ARG, "convert: quantize and de-quantize are exclusive");
    if (o->recipe && !recipe_known(o->recipe))
        return av_fail(AV_ERR_ARG, "convert: --quant-predicate must be mixed_2_6, mixed_3_4, mixed_3_6 or mixed_4_6 (got '%s')", o->recipe);
    if (o->quantize && !av_quant_supported(o->bits, o->group))
        return av_fail(AV_ERR_ARG, "convert: --q-bits %d / --q-group-size %d not supported (bits 2, 3, 4, 5, 6, 8; group 32, 64, 128)", o->bits, o->group);
    if (o->out_dtype >= 0 && !is_float((av_dtype)o->out_dtype)) return av_fail(AV_ERR_ARG, "convert: --dtype must be f32, f16 or bf16");
    if (!av_dir_exists(src_dir)) return av_fail(AV_ERR_IO, "%s: model directory not found", src_dir);
    struct stat sb;
    if (stat(out_dir, &sb) == 0) return av_fail(AV_ERR_ARG, "%s: already exists (choose a new output path)", out_dir);
    char tmp[4200], path[4400];
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", out_dir, (long)getpid());
    cJSON *cfg;
    AV_TRY(av_json_load(av_path_join(path, sizeof path, src_dir, "config.json"), &cfg));
    conv cv = {.src_q = av_json_get(cfg, "quantization"), .n_layers = (int)av_json_num(cfg, "num_hidden_layers", 0)};
    if (cv.src_q && !o->dequantize) {
        cJSON_Delete(cfg);
        return av_fail(AV_ERR_UNSUPPORTED, "%s: the model is already quantized (convert it with --de-quantize first)", path);
    }
    if (!cv.src_q && o->dequantize) {
        cJSON_Delete(cfg);
        return av_fail(AV_ERR_ARG, "%s: --de-quantize needs a quantized model", path);
    }
    av_st_set set;
    av_status st = av_st_set_open_dir(&set, src_dir);
    if (st != AV_OK) { cJSON_Delete(cfg); return st; }
    cv.set = &set;
    int nt = av_st_set_count(&set);
    cv.keep = calloc((size_t)nt * 6 + 1, sizeof(void *));
    av_st_writer_init(&cv.w);
    if (!cv.keep) st = av_fail(AV_ERR_NOMEM, "out of memory");
    if (o->quantize && st == AV_OK) {
        cv.qcfg = cJSON_CreateObject();
        cJSON_AddNumberToObject(cv.qcfg, "group_size", o->group);
        cJSON_AddNumberToObject(cv.qcfg, "bits", o->bits);
        cJSON_AddStringToObject(cv.qcfg, "mode", "affine");
    }
    for (int i = 0; i < set.nfiles; i++) r->bytes_in += set.files[i].map.size;
    if (st == AV_OK && (mkdir(tmp, 0755) != 0)) st = av_fail(AV_ERR_IO, "%s: cannot create directory", tmp);
    int made = st == AV_OK;
    for (int i = 0; i < nt && st == AV_OK; i++) st = add_tensor(&cv, av_st_set_at(&set, i), o, r);
    if (st == AV_OK) st = write_config(cfg, tmp, o, cv.qcfg);
    if (st == AV_OK) st = av_st_writer_set_metadata(&cv.w, "{\"format\":\"mlx\"}");
    if (st == AV_OK) st = av_st_writer_write(&cv.w, av_path_join(path, sizeof path, tmp, "model.safetensors"));
    if (st == AV_OK && stat(path, &sb) == 0) r->bytes_out = (size_t)sb.st_size;
    if (st == AV_OK) st = copy_side_files(src_dir, tmp);
    if (st == AV_OK && rename(tmp, out_dir) != 0) st = av_fail(AV_ERR_IO, "%s: cannot rename the finished output into place", out_dir);
    if (st != AV_OK && made) av_remove_tree(tmp);
    av_st_writer_free(&cv.w);
    for (int i = 0; i < cv.nkeep; i++) free(cv.keep[i]);
    free(cv.keep);
    cJSON_Delete(cv.qcfg);
    cJSON_Delete(cfg);
    av_st_set_close(&set);
    return st;
}
