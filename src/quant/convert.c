/* Model conversion (anvil convert / quantize): every tensor of a float model directory is re-cast
 * and, with quantization on, packed into MLX's affine layout (<name>.weight U32 + .scales/.biases),
 * as mlx_lm.convert does; config.json gains "quantization"; other files are copied. The output is
 * built in a temp directory beside out_dir and renamed into place only when complete. */
#include "formats/safetensors.h"
#include "core/memory.h"
#include "core/status.h"
#include "quant/affine.h"
#include <dirent.h>
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

/* Removes a directory of plain files (the temp output on failure). */
static void remove_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char p[4400];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) unlink(av_path_join(p, sizeof p, dir, e->d_name));
        closedir(d);
    }
    rmdir(dir);
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

/* config.json of the output: the source's, with "quantization" (and MLX-LM's twin
 * "quantization_config") set and the dtype updated when forced. */
static av_status write_config(const char *src, const char *dst, const av_convert_opts *o) {
    char a[4400], b[4400];
    cJSON *j;
    AV_TRY(av_json_load(av_path_join(a, sizeof a, src, "config.json"), &j));
    if (av_json_get(j, "quantization") || av_json_get(j, "quantization_config")) {
        cJSON_Delete(j);
        return av_fail(AV_ERR_UNSUPPORTED, "%s: the model is already quantized (de-quantizing is not supported yet)", a);
    }
    if (o->out_dtype >= 0) {
        const char *dn = o->out_dtype == AV_F32 ? "float32" : o->out_dtype == AV_F16 ? "float16" : "bfloat16";
        const char *key = av_json_get(j, "dtype") ? "dtype" : "torch_dtype";
        cJSON_DeleteItemFromObjectCaseSensitive(j, key);
        cJSON_AddStringToObject(j, key, dn);
    }
    if (o->quantize)
        for (int k = 0; k < 2; k++) {
            cJSON *q = cJSON_AddObjectToObject(j, k ? "quantization_config" : "quantization");
            cJSON_AddNumberToObject(q, "group_size", o->group);
            cJSON_AddNumberToObject(q, "bits", o->bits);
            cJSON_AddStringToObject(q, "mode", "affine");
        }
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    if (!txt) return av_fail(AV_ERR_NOMEM, "out of memory");
    av_status st = av_write_file_atomic(av_path_join(b, sizeof b, dst, "config.json"), txt, strlen(txt));
    free(txt);
    return st;
}

/* Adds one tensor to the writer: quantized (three tensors) or cast; buffers go to keep[]. */
static av_status add_tensor(av_st_writer *w, const av_st_tensor *t, const av_convert_opts *o, void **keep, int *nkeep,
                            av_convert_report *r) {
    av_dtype od = (o->out_dtype >= 0 && is_float(t->dtype)) ? (av_dtype)o->out_dtype : t->dtype;
    int mat = is_float(t->dtype) && t->ndim == 2 && ends_with(t->name, ".weight");
    int q = o->quantize && mat && t->shape[1] % o->group == 0;
    if (o->quantize && mat && !q) r->n_unquantized++;
    if (!q && od == t->dtype) return av_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data);
    size_t n = (size_t)av_st_numel(t);
    float *f = malloc(n * sizeof(float));
    if (!f) return av_fail(AV_ERR_NOMEM, "convert: out of memory for '%s'", t->name);
    keep[(*nkeep)++] = f;
    av_convert_to_f32(f, t->data, t->dtype, n);
    if (!q) {
        if (od == AV_F32) return av_st_writer_add(w, t->name, od, t->ndim, t->shape, f);
        void *c = malloc(n * av_dtype_size(od));
        if (!c) return av_fail(AV_ERR_NOMEM, "convert: out of memory for '%s'", t->name);
        keep[(*nkeep)++] = c;
        av_convert_from_f32(c, od, f, n);
        return av_st_writer_add(w, t->name, od, t->ndim, t->shape, c);
    }
    /* MLX-LM casts to the model dtype first, then quantizes those values */
    if (od != AV_F32) {
        void *c = malloc(n * av_dtype_size(od));
        if (!c) return av_fail(AV_ERR_NOMEM, "convert: out of memory for '%s'", t->name);
        av_convert_from_f32(c, od, f, n);
        av_convert_to_f32(f, c, od, n);
        free(c);
    }
    int rows = (int)t->shape[0], cols = (int)t->shape[1], ng = cols / o->group, words = av_quant_row_words(cols, o->bits);
    uint32_t *pk = calloc((size_t)rows * words, 4);
    void *sc = malloc((size_t)rows * ng * av_dtype_size(od)), *bs = malloc((size_t)rows * ng * av_dtype_size(od));
    keep[(*nkeep)++] = pk;
    keep[(*nkeep)++] = sc;
    keep[(*nkeep)++] = bs;
    if (!pk || !sc || !bs) return av_fail(AV_ERR_NOMEM, "convert: out of memory for '%s'", t->name);
    av_quant_matrix(pk, sc, bs, od, f, rows, cols, o->bits, o->group);
    char base[256], nm[300];
    snprintf(base, sizeof base, "%.*s", (int)(strlen(t->name) - strlen(".weight")), t->name);
    int64_t sw[2] = {rows, words}, ss[2] = {rows, ng};
    snprintf(nm, sizeof nm, "%s.weight", base);
    AV_TRY(av_st_writer_add(w, nm, AV_U32, 2, sw, pk));
    snprintf(nm, sizeof nm, "%s.scales", base);
    AV_TRY(av_st_writer_add(w, nm, od, 2, ss, sc));
    snprintf(nm, sizeof nm, "%s.biases", base);
    AV_TRY(av_st_writer_add(w, nm, od, 2, ss, bs));
    r->n_quantized++;
    return AV_OK;
}

av_status av_convert(const char *src_dir, const char *out_dir, const av_convert_opts *o, av_convert_report *r) {
    memset(r, 0, sizeof *r);
    if (o->quantize && !av_quant_supported(o->bits, o->group))
        return av_fail(AV_ERR_ARG, "convert: --q-bits %d / --q-group-size %d not supported (bits 2, 3, 4, 5, 6, 8; group 32, 64, 128)", o->bits, o->group);
    if (o->out_dtype >= 0 && !is_float((av_dtype)o->out_dtype)) return av_fail(AV_ERR_ARG, "convert: --dtype must be f32, f16 or bf16");
    if (!av_dir_exists(src_dir)) return av_fail(AV_ERR_IO, "%s: model directory not found", src_dir);
    struct stat sb;
    if (stat(out_dir, &sb) == 0) return av_fail(AV_ERR_ARG, "%s: already exists (choose a new output path)", out_dir);
    char tmp[4200], path[4400];
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", out_dir, (long)getpid());
    av_st_set set;
    AV_TRY(av_st_set_open_dir(&set, src_dir));
    int nt = av_st_set_count(&set);
    void **keep = calloc((size_t)nt * 5 + 1, sizeof(void *));
    int nkeep = 0;
    av_st_writer w;
    av_st_writer_init(&w);
    av_status st = keep ? AV_OK : av_fail(AV_ERR_NOMEM, "out of memory");
    for (int i = 0; i < set.nfiles; i++) r->bytes_in += set.files[i].map.size;
    if (st == AV_OK && (mkdir(tmp, 0755) != 0)) st = av_fail(AV_ERR_IO, "%s: cannot create directory", tmp);
    int made = st == AV_OK;
    if (st == AV_OK) st = write_config(src_dir, tmp, o);
    for (int i = 0; i < nt && st == AV_OK; i++) st = add_tensor(&w, av_st_set_at(&set, i), o, keep, &nkeep, r);
    if (st == AV_OK) st = av_st_writer_set_metadata(&w, "{\"format\":\"mlx\"}");
    if (st == AV_OK) st = av_st_writer_write(&w, av_path_join(path, sizeof path, tmp, "model.safetensors"));
    if (st == AV_OK && stat(path, &sb) == 0) r->bytes_out = (size_t)sb.st_size;
    if (st == AV_OK) st = copy_side_files(src_dir, tmp);
    if (st == AV_OK && rename(tmp, out_dir) != 0) st = av_fail(AV_ERR_IO, "%s: cannot rename the finished output into place", out_dir);
    if (st != AV_OK && made) remove_tree(tmp);
    av_st_writer_free(&w);
    for (int i = 0; i < nkeep; i++) free(keep[i]);
    free(keep);
    av_st_set_close(&set);
    return st;
}
