/* Adapter files: MLX-LM (adapters.safetensors, lora_a [in, rank] / lora_b [rank, out], scale in
 * adapter_config.json) and PEFT (adapter_model.safetensors, lora_A [rank, in] / lora_B [out, rank],
 * scale = lora_alpha / r). Load = read config -> attach -> fill from tensors (names, shapes and
 * ranks checked); save = config + tensors, each written atomically. */
#include "model/model.h"
#include "train/lora.h"
#include "core/memory.h"
#include "core/status.h"
#include "formats/safetensors.h"
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MLX_FILE "adapters.safetensors"
#define PEFT_FILE "adapter_model.safetensors"
#define CONFIG_FILE "adapter_config.json"

/* Splits path into the adapter directory and the tensor file. */
static av_status resolve(const char *path, char *dir, size_t dcap, char *file, size_t fcap, av_adapter_format *fmt) {
    if (av_dir_exists(path)) {
        snprintf(dir, dcap, "%s", path);
        char mlx[4200], peft[4200];
        av_path_join(mlx, sizeof mlx, path, MLX_FILE);
        av_path_join(peft, sizeof peft, path, PEFT_FILE);
        if (av_file_exists(mlx)) { *fmt = AV_ADAPTER_MLX; snprintf(file, fcap, "%s", mlx); return AV_OK; }
        if (av_file_exists(peft)) { *fmt = AV_ADAPTER_PEFT; snprintf(file, fcap, "%s", peft); return AV_OK; }
        return av_fail(AV_ERR_IO, "%s: no %s (MLX-LM) or %s (PEFT) in the adapter directory", path, MLX_FILE, PEFT_FILE);
    }
    if (!av_file_exists(path)) return av_fail(AV_ERR_IO, "%s: adapter path not found", path);
    snprintf(file, fcap, "%s", path);
    const char *slash = strrchr(path, '/');
    if (slash) snprintf(dir, dcap, "%.*s", (int)(slash - path), path);
    else snprintf(dir, dcap, ".");
    if (!dir[0]) snprintf(dir, dcap, "/");
    /* by tensor names: PEFT's carry "lora_A" */
    av_st_file f;
    AV_TRY(av_st_open(&f, path));
    *fmt = AV_ADAPTER_MLX;
    for (int i = 0; i < f.n; i++)
        if (strstr(f.tensors[i].name, ".lora_A.") || strstr(f.tensors[i].name, ".lora_B.")) { *fmt = AV_ADAPTER_PEFT; break; }
    av_st_close(&f);
    return AV_OK;
}

av_status av_adapter_detect(const char *path, av_adapter_format *fmt) {
    char dir[4096], file[4200];
    return resolve(path, dir, sizeof dir, file, sizeof file, fmt);
}

/* "q_proj" / "self_attn.q_proj" / list entries -> mask; error names the config. */
static av_status keys_from_json(const cJSON *arr, const char *where, unsigned *mask) {
    *mask = 0;
    if (cJSON_IsString(arr)) {
        if (!strcmp(arr->valuestring, "all-linear")) { *mask = (1u << AV_PROJ_COUNT) - 1; return AV_OK; }
        return av_fail(AV_ERR_UNSUPPORTED, "%s: target_modules '%s' (a regex) is not supported; use a list", where, arr->valuestring);
    }
    if (!cJSON_IsArray(arr)) return av_fail(AV_ERR_FORMAT, "%s: keys / target_modules must be a list of names", where);
    for (const cJSON *e = arr->child; e; e = e->next) {
        if (!cJSON_IsString(e)) return av_fail(AV_ERR_FORMAT, "%s: keys / target_modules must be strings", where);
        unsigned one;
        if (av_lora_parse_keys(e->valuestring, &one) != AV_OK) return av_fail_prefix(AV_ERR_UNSUPPORTED, "%s", where);
        *mask |= one;
    }
    if (!*mask) return av_fail(AV_ERR_FORMAT, "%s: empty keys / target_modules", where);
    return AV_OK;
}

/* Reads dir/adapter_config.json for format fmt. layer_on (n_layers_cap flags, may be NULL) gets
 * PEFT's layers_to_transform; *have_layers says whether it was given. */
static av_status read_config(const char *dir, av_adapter_format fmt, av_lora_spec *spec, uint8_t *layer_on, int n_layers_cap,
                             int *have_layers) {
    char path[4200];
    av_path_join(path, sizeof path, dir, CONFIG_FILE);
    if (!av_file_exists(path)) return av_fail(AV_ERR_IO, "%s: adapter config not found", path);
    cJSON *j;
    AV_TRY(av_json_load(path, &j));
    av_lora_spec_default(spec);
    if (have_layers) *have_layers = 0;
    av_status st = AV_OK;
    if (fmt == AV_ADAPTER_MLX) {
        const char *ft = av_json_str(j, "fine_tune_type", "lora");
        const cJSON *lp = av_json_get(j, "lora_parameters");
        if (strcmp(ft, "lora")) st = av_fail(AV_ERR_UNSUPPORTED, "%s: fine_tune_type '%s' is not supported (only lora)", path, ft);
        else if (!cJSON_IsObject(lp)) st = av_fail(AV_ERR_FORMAT, "%s: missing lora_parameters", path);
        else {
            spec->rank = (int)av_json_num(lp, "rank", 8);
            spec->scale = (float)av_json_num(lp, "scale", 20.0); /* MLX-LM's default */
            spec->dropout = (float)av_json_num(lp, "dropout", 0.0);
            spec->alpha = spec->scale * (float)spec->rank;
            spec->num_layers = (int)av_json_num(j, "num_layers", 16);
            const cJSON *k = av_json_get(lp, "keys");
            if (k) st = keys_from_json(k, path, &spec->keys);
            else spec->keys = 0; /* MLX-LM writes no keys when it adapted its default set: read from the weights */
        }
    } else {
        const char *pt = av_json_str(j, "peft_type", "LORA");
        const cJSON *tm = av_json_get(j, "target_modules"), *ltt = av_json_get(j, "layers_to_transform");
        const cJSON *rp = av_json_get(j, "rank_pattern"), *ap = av_json_get(j, "alpha_pattern");
        if (strcmp(pt, "LORA")) st = av_fail(AV_ERR_UNSUPPORTED, "%s: peft_type '%s' is not supported (only LORA)", path, pt);
        else if (av_json_bool(j, "use_dora", 0)) st = av_fail(AV_ERR_UNSUPPORTED, "%s: DoRA adapters are not supported", path);
        else if ((rp && rp->child) || (ap && ap->child))
            st = av_fail(AV_ERR_UNSUPPORTED, "%s: rank_pattern / alpha_pattern are not supported", path);
        else if (!tm) st = av_fail(AV_ERR_FORMAT, "%s: missing target_modules", path);
        else {
            spec->rank = (int)av_json_num(j, "r", 8);
            spec->alpha = (float)av_json_num(j, "lora_alpha", 8);
            spec->dropout = (float)av_json_num(j, "lora_dropout", 0.0);
            spec->scale = av_json_bool(j, "use_rslora", 0) ? spec->alpha / sqrtf((float)spec->rank) : spec->alpha / (float)spec->rank;
            spec->num_layers = -1;
            st = keys_from_json(tm, path, &spec->keys);
            if (st == AV_OK && ltt) {
                if (layer_on) memset(layer_on, 0, (size_t)n_layers_cap);
                const cJSON *one = cJSON_IsNumber(ltt) ? ltt : NULL;
                if (!one && !cJSON_IsArray(ltt)) st = av_fail(AV_ERR_FORMAT, "%s: layers_to_transform must be an integer or a list", path);
                for (const cJSON *e = one ? one : ltt->child; e && st == AV_OK; e = one ? NULL : e->next) {
                    if (!cJSON_IsNumber(e) || e->valueint < 0 || (layer_on && e->valueint >= n_layers_cap))
                        st = av_fail(AV_ERR_SHAPE, "%s: layers_to_transform entry out of range for a %d-layer model", path, n_layers_cap);
                    else if (layer_on) layer_on[e->valueint] = 1;
                }
                if (have_layers) *have_layers = 1;
            }
        }
    }
    if (st == AV_OK && spec->rank <= 0) st = av_fail(AV_ERR_FORMAT, "%s: rank must be positive", path);
    if (st == AV_OK && !isfinite(spec->scale)) st = av_fail(AV_ERR_FORMAT, "%s: scale is not a finite number", path);
    cJSON_Delete(j);
    return st;
}

av_status av_adapter_read_config(const char *path, av_lora_spec *spec, av_adapter_format *fmt) {
    char dir[4096], file[4200];
    av_adapter_format f;
    AV_TRY(resolve(path, dir, sizeof dir, file, sizeof file, &f));
    if (fmt) *fmt = f;
    return read_config(dir, f, spec, NULL, 0, NULL);
}

/* Finds the tensor of one adapter matrix in either naming; which = 0 (A) or 1 (B). */
static const av_st_tensor *find_lora(const av_st_file *f, int l, av_proj p, int which, int *mlx) {
    char name[256];
    const char *mod = av_proj_module[p], *pn = av_proj_names[p];
    snprintf(name, sizeof name, "base_model.model.model.layers.%d.%s.%s.lora_%c.weight", l, mod, pn, which ? 'B' : 'A');
    const av_st_tensor *t = av_st_find(f, name);
    if (!t) {
        snprintf(name, sizeof name, "base_model.model.model.layers.%d.%s.%s.lora_%c.default.weight", l, mod, pn, which ? 'B' : 'A');
        t = av_st_find(f, name);
    }
    *mlx = 0;
    if (!t) {
        snprintf(name, sizeof name, "model.layers.%d.%s.%s.lora_%c", l, mod, pn, which ? 'b' : 'a');
        t = av_st_find(f, name);
        *mlx = t != NULL;
    }
    return t;
}

static const char *shape_str(const av_st_tensor *t, char *buf, size_t cap) {
    buf[0] = 0;
    for (int i = 0; i < t->ndim; i++) snprintf(buf + strlen(buf), cap - strlen(buf), i ? ",%lld" : "%lld", (long long)t->shape[i]);
    return buf;
}

/* Parses "...layers.N.<module>.<proj>.lora_..." -> (layer, proj); 0 if not a LoRA tensor name. */
static int parse_lora_name(const char *name, int *layer, int *proj) {
    const char *s = strstr(name, "layers.");
    if (!s || (!strstr(name, ".lora_A") && !strstr(name, ".lora_B") && !strstr(name, ".lora_a") && !strstr(name, ".lora_b"))) return 0;
    *layer = atoi(s + 7);
    *proj = -1;
    for (int p = 0; p < AV_PROJ_COUNT; p++) {
        char pat[64];
        snprintf(pat, sizeof pat, ".%s.%s.lora_", av_proj_module[p], av_proj_names[p]);
        if (strstr(name, pat)) *proj = p;
    }
    return 1;
}

av_status av_adapter_load_weights(av_model *m, const char *file) {
    av_st_file f;
    AV_TRY(av_st_open(&f, file));
    av_status st = AV_OK;
    int NL = m->cfg.n_layers, attached = 0;
    float *host = NULL, *conv = NULL;
    size_t cap = 0;
    /* every LoRA tensor in the file must belong to an attached adapter */
    for (int i = 0; i < f.n && st == AV_OK; i++) {
        int l, p;
        if (!parse_lora_name(f.tensors[i].name, &l, &p)) continue;
        if (l < 0 || l >= NL || p < 0)
            st = av_fail(AV_ERR_SHAPE, "%s: tensor '%s' does not match any projection of this %d-layer model", file, f.tensors[i].name, NL);
        else if (!av_layer_proj(&m->layers[l], (av_proj)p)->lora_a)
            st = av_fail(AV_ERR_FORMAT, "%s: tensor '%s' is for a layer/projection the adapter config does not target", file,
                         f.tensors[i].name);
    }
    for (int l = 0; l < NL && st == AV_OK; l++)
        for (int p = 0; p < AV_PROJ_COUNT && st == AV_OK; p++) {
            av_linear *L = av_layer_proj(&m->layers[l], (av_proj)p);
            if (!L->lora_a) continue;
            attached++;
            int in = L->w.cols, out = L->w.rows, r = L->rank;
            for (int which = 0; which < 2 && st == AV_OK; which++) {
                int mlx;
                const av_st_tensor *t = find_lora(&f, l, (av_proj)p, which, &mlx);
                char sh[96];
                if (!t) {
                    st = av_fail(AV_ERR_FORMAT, "%s: missing tensor for layers.%d.%s.%s lora_%c", file, l, av_proj_module[p],
                                 av_proj_names[p], which ? 'B' : 'A');
                    break;
                }
                if (t->dtype != AV_F32 && t->dtype != AV_BF16 && t->dtype != AV_F16) {
                    st = av_fail(AV_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s", file, t->name, av_dtype_name(t->dtype));
                    break;
                }
                /* expected [rows, cols] as stored */
                int er = which ? (mlx ? r : out) : (mlx ? in : r), ec = which ? (mlx ? out : r) : (mlx ? r : in);
                if (t->ndim != 2) {
                    st = av_fail(AV_ERR_SHAPE, "%s: tensor '%s' has shape [%s], expected 2 dimensions", file, t->name, shape_str(t, sh, sizeof sh));
                    break;
                }
                int rank_dim = which ? (mlx ? 0 : 1) : (mlx ? 1 : 0);
                if (t->shape[rank_dim] != r && t->shape[1 - rank_dim] == (rank_dim == 0 ? ec : er)) {
                    st = av_fail(AV_ERR_SHAPE, "%s: rank mismatch: tensor '%s' has rank %lld but the adapter config says %d", file, t->name,
                                 (long long)t->shape[rank_dim], r);
                    break;
                }
                if (t->shape[0] != er || t->shape[1] != ec) {
                    st = av_fail(AV_ERR_SHAPE, "%s: tensor '%s' has shape [%s] but the model needs [%d,%d]", file, t->name,
                                 shape_str(t, sh, sizeof sh), er, ec);
                    break;
                }
                size_t n = (size_t)er * ec;
                if (n > cap) {
                    free(host);
                    free(conv);
                    host = malloc(n * sizeof(float));
                    conv = malloc(n * sizeof(float));
                    cap = (host && conv) ? n : 0;
                    if (!cap) { st = av_fail(AV_ERR_NOMEM, "out of memory"); break; }
                }
                av_convert_to_f32(conv, t->data, t->dtype, n);
                const float *src = conv;
                if (mlx) { /* stored transposed: [er, ec] -> [ec, er] */
                    for (int i = 0; i < er; i++)
                        for (int j = 0; j < ec; j++) host[(size_t)j * er + i] = conv[(size_t)i * ec + j];
                    src = host;
                }
                m->be->upload(which ? L->lora_b : L->lora_a, src, n * sizeof(float));
            }
        }
    if (st == AV_OK && !attached) st = av_fail(AV_ERR_ARG, "%s: no adapters are attached to load into", file);
    free(host);
    free(conv);
    av_st_close(&f);
    return st;
}

/* The projections an adapter file holds LoRA tensors for (any layer). */
static av_status keys_in_file(const char *file, unsigned *mask) {
    av_st_file f;
    AV_TRY(av_st_open(&f, file));
    *mask = 0;
    for (int i = 0; i < f.n; i++) {
        int l, p;
        if (parse_lora_name(f.tensors[i].name, &l, &p) && p >= 0) *mask |= 1u << p;
    }
    av_st_close(&f);
    return *mask ? AV_OK : av_fail(AV_ERR_FORMAT, "%s: no LoRA tensors found", file);
}

av_status av_adapter_load(av_model *m, const char *path, av_lora_spec *out) {
    char dir[4096], file[4200];
    av_adapter_format fmt;
    AV_TRY(resolve(path, dir, sizeof dir, file, sizeof file, &fmt));
    int NL = m->cfg.n_layers, have_layers = 0;
    uint8_t *on = calloc((size_t)NL, 1);
    if (!on) return av_fail(AV_ERR_NOMEM, "out of memory");
    av_lora_spec spec;
    av_status st = read_config(dir, fmt, &spec, on, NL, &have_layers);
    if (st == AV_OK && !spec.keys) st = keys_in_file(file, &spec.keys);
    if (st == AV_OK) st = av_lora_attach_layers(m, &spec, have_layers ? on : NULL, 0);
    if (st == AV_OK) {
        st = av_adapter_load_weights(m, file);
        if (st != AV_OK) av_lora_detach(m);
    }
    if (st == AV_OK && have_layers) { /* a suffix of layers reads back as num_layers */
        int first = NL;
        while (first > 0 && on[first - 1]) first--;
        int suffix = 1;
        for (int l = 0; l < first; l++) suffix &= !on[l];
        spec.num_layers = suffix && first < NL ? NL - first : -1;
    }
    free(on);
    if (st == AV_OK && out) *out = spec;
    return st;
}

/* ---- saving ---- */

/* What is attached: projection mask, layer flags, rank, scale; error if nothing or mixed ranks/scales. */
static av_status attached_layout(const av_model *m, unsigned *keys, uint8_t *on, int *rank, float *scale) {
    *keys = 0;
    *rank = 0;
    *scale = 0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        on[l] = 0;
        for (int p = 0; p < AV_PROJ_COUNT; p++) {
            const av_linear *L = av_layer_proj(&m->layers[l], (av_proj)p);
            if (!L->lora_a) continue;
            if (*rank && (L->rank != *rank || L->scale != *scale))
                return av_fail(AV_ERR_UNSUPPORTED, "adapter save: adapters of different ranks or scales cannot be described by one config");
            *rank = L->rank;
            *scale = L->scale;
            *keys |= 1u << p;
            on[l] = 1;
        }
    }
    if (!*rank) return av_fail(AV_ERR_ARG, "adapter save: the model has no adapters attached");
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < AV_PROJ_COUNT; p++)
            if (on[l] && (*keys & (1u << p)) && !av_layer_proj(&m->layers[l], (av_proj)p)->lora_a)
                return av_fail(AV_ERR_UNSUPPORTED, "adapter save: layers carry different projection sets");
    return AV_OK;
}

av_status av_adapter_save_config(const av_model *m, const av_lora_spec *spec, const char *dir, int format_peft) {
    int NL = m->cfg.n_layers, rank;
    unsigned keys;
    float scale;
    uint8_t *on = calloc((size_t)NL, 1);
    if (!on) return av_fail(AV_ERR_NOMEM, "out of memory");
    av_status st = attached_layout(m, &keys, on, &rank, &scale);
    int first = NL, suffix = 1;
    while (first > 0 && on[first - 1]) first--;
    for (int l = 0; l < first; l++) suffix &= !on[l];
    float dropout = spec ? spec->dropout : 0.0f;
    cJSON *j = cJSON_CreateObject(), *lst = NULL;
    if (st == AV_OK && !format_peft) {
        if (!suffix) st = av_fail(AV_ERR_UNSUPPORTED, "%s: MLX-LM adapters must cover the last N layers; save in PEFT format instead", dir);
        cJSON_AddStringToObject(j, "fine_tune_type", "lora");
        cJSON_AddStringToObject(j, "model", m->dir);
        cJSON_AddNumberToObject(j, "num_layers", first == 0 ? -1 : NL - first);
        cJSON *lp = cJSON_AddObjectToObject(j, "lora_parameters");
        cJSON_AddNumberToObject(lp, "rank", rank);
        cJSON_AddNumberToObject(lp, "scale", scale);
        cJSON_AddNumberToObject(lp, "dropout", dropout);
        lst = cJSON_AddArrayToObject(lp, "keys");
        for (int p = 0; p < AV_PROJ_COUNT; p++) {
            if (!(keys & (1u << p))) continue;
            char k[64];
            snprintf(k, sizeof k, "%s.%s", av_proj_module[p], av_proj_names[p]);
            cJSON_AddItemToArray(lst, cJSON_CreateString(k));
        }
    } else if (st == AV_OK) {
        cJSON_AddStringToObject(j, "base_model_name_or_path", m->dir);
        cJSON_AddStringToObject(j, "bias", "none");
        cJSON_AddBoolToObject(j, "fan_in_fan_out", 0);
        cJSON_AddBoolToObject(j, "inference_mode", 1);
        cJSON_AddBoolToObject(j, "init_lora_weights", 1);
        if (first == 0) cJSON_AddNullToObject(j, "layers_to_transform");
        else {
            cJSON *lt = cJSON_AddArrayToObject(j, "layers_to_transform");
            for (int l = 0; l < NL; l++)
                if (on[l]) cJSON_AddItemToArray(lt, cJSON_CreateNumber(l));
        }
        cJSON_AddNumberToObject(j, "lora_alpha", (double)scale * rank);
        cJSON_AddNumberToObject(j, "lora_dropout", dropout);
        cJSON_AddNullToObject(j, "modules_to_save");
        cJSON_AddStringToObject(j, "peft_type", "LORA");
        cJSON_AddNumberToObject(j, "r", rank);
        lst = cJSON_AddArrayToObject(j, "target_modules");
        for (int p = 0; p < AV_PROJ_COUNT; p++)
            if (keys & (1u << p)) cJSON_AddItemToArray(lst, cJSON_CreateString(av_proj_names[p]));
        cJSON_AddStringToObject(j, "task_type", "CAUSAL_LM");
        cJSON_AddBoolToObject(j, "use_dora", 0);
        cJSON_AddBoolToObject(j, "use_rslora", 0);
    }
    char *txt = st == AV_OK ? cJSON_Print(j) : NULL;
    cJSON_Delete(j);
    free(on);
    if (st != AV_OK) return st;
    if (!txt) return av_fail(AV_ERR_NOMEM, "out of memory");
    char path[4200];
    st = av_mkdir_p(dir);
    if (st == AV_OK) st = av_write_file_atomic(av_path_join(path, sizeof path, dir, CONFIG_FILE), txt, strlen(txt));
    free(txt);
    return st;
}

av_status av_adapter_save_weights(const av_model *m, const char *file, int format_peft) {
    int NL = m->cfg.n_layers;
    av_st_writer w;
    av_st_writer_init(&w);
    float **bufs = calloc((size_t)NL * AV_PROJ_COUNT * 2, sizeof(float *));
    av_status st = bufs ? AV_OK : av_fail(AV_ERR_NOMEM, "out of memory");
    int nb = 0, count = 0;
    for (int l = 0; l < NL && st == AV_OK; l++)
        for (int p = 0; p < AV_PROJ_COUNT && st == AV_OK; p++) {
            const av_linear *L = av_layer_proj(&m->layers[l], (av_proj)p);
            if (!L->lora_a) continue;
            count++;
            int in = L->w.cols, out = L->w.rows, r = L->rank;
            for (int which = 0; which < 2 && st == AV_OK; which++) {
                size_t n = (size_t)r * (which ? out : in);
                float *h = malloc(n * sizeof(float)), *o = malloc(n * sizeof(float));
                bufs[nb++] = o;
                if (!h || !o) { free(h); st = av_fail(AV_ERR_NOMEM, "out of memory"); break; }
                m->be->download(h, which ? L->lora_b : L->lora_a, n * sizeof(float));
                int rows = which ? out : r, cols = which ? r : in; /* PEFT layout of h */
                char name[256];
                int64_t shape[2];
                if (format_peft) {
                    memcpy(o, h, n * sizeof(float));
                    shape[0] = rows;
                    shape[1] = cols;
                    snprintf(name, sizeof name, "base_model.model.model.layers.%d.%s.%s.lora_%c.weight", l, av_proj_module[p], av_proj_names[p],
                             which ? 'B' : 'A');
                } else {
                    for (int i = 0; i < rows; i++)
                        for (int j = 0; j < cols; j++) o[(size_t)j * rows + i] = h[(size_t)i * cols + j];
                    shape[0] = cols;
                    shape[1] = rows;
                    snprintf(name, sizeof name, "model.layers.%d.%s.%s.lora_%c", l, av_proj_module[p], av_proj_names[p], which ? 'b' : 'a');
                }
                free(h);
                st = av_st_writer_add(&w, name, AV_F32, 2, shape, o);
            }
        }
    if (st == AV_OK && !count) st = av_fail(AV_ERR_ARG, "%s: the model has no adapters attached", file);
    if (st == AV_OK) st = av_st_writer_set_metadata(&w, format_peft ? "{\"format\":\"pt\"}" : "{\"format\":\"mlx\"}");
    if (st == AV_OK) st = av_st_writer_write(&w, file);
    av_st_writer_free(&w);
    for (int i = 0; i < nb; i++) free(bufs[i]);
    free(bufs);
    return st;
}

av_status av_adapter_save(const av_model *m, const av_lora_spec *spec, const char *dir, int format_peft) {
    AV_TRY(av_adapter_save_config(m, spec, dir, format_peft));
    char path[4200];
    return av_adapter_save_weights(m, av_path_join(path, sizeof path, dir, format_peft ? PEFT_FILE : MLX_FILE), format_peft);
}
