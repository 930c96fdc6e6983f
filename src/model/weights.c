/* Maps Hugging Face tensor names to model fields through one table, checking shape and dtype
 * against the config (MLX affine-quantized layers too: <name>.weight/.scales/.biases); uploads to
 * the backend when it is not host memory. */
#include "model/model.h"
#include "core/memory.h"
#include "quant/affine.h"
#include "model/weights_huge.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const av_proj_names[AV_PROJ_COUNT] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
const char *const av_proj_module[AV_PROJ_COUNT] = {"self_attn", "self_attn", "self_attn", "self_attn", "mlp", "mlp", "mlp"};

av_linear *av_layer_proj(av_layer *l, av_proj p) {
    av_linear *t[AV_PROJ_COUNT] = {&l->q, &l->k, &l->v, &l->o, &l->gate, &l->up, &l->down};
    return t[p];
}

typedef struct {
    av_mat *dst;
    char name[128];
    int rows, cols; /* cols = 0: vector of `rows` */
    int required;
} slot;

/* config.json's "quantization" object (NULL when the model is not quantized) and its path. */
typedef struct {
    const cJSON *q;
    const char *path;
} qspec;

static av_status shape_fail(const av_st_tensor *t, const char *name, int rows, int cols) {
    char got[96] = "", exp[64];
    for (int i = 0; i < t->ndim; i++) snprintf(got + strlen(got), sizeof got - strlen(got), i ? ",%lld" : "%lld", (long long)t->shape[i]);
    if (cols) snprintf(exp, sizeof exp, "%d,%d", rows, cols);
    else snprintf(exp, sizeof exp, "%d", rows);
    return av_fail(AV_ERR_SHAPE, "%s: tensor '%s' has shape [%s] but config.json implies [%s]", t->file, name, got, exp);
}

/* A quantized matrix: <module>.weight (U32 [rows, cols*bits/32]), .scales and .biases ([rows,
 * cols/group], one float dtype). bits/group: the module's entry in "quantization" (an object, or
 * false = not quantized), else the global values when <module>.scales exists (as MLX-LM). *done = 0
 * when the module is not quantized. */
static av_status bind_quant(av_model *m, const slot *s, const qspec *qs, int *done) {
    *done = 0;
    if (!qs->q || !s->cols) return AV_OK;
    char mod[128], nm[160];
    snprintf(mod, sizeof mod, "%.*s", (int)(strlen(s->name) - strlen(".weight")), s->name);
    const cJSON *e = av_json_get(qs->q, mod);
    if (e && cJSON_IsFalse(e)) return AV_OK;
    snprintf(nm, sizeof nm, "%s.scales", mod);
    const av_st_tensor *ts = av_st_set_find(&m->st, nm);
    if (!e && !ts) return AV_OK;
    /* a per-layer entry's null fields take MLX's affine defaults (group 64, 4 bits), as MLX does */
    const cJSON *o = cJSON_IsObject(e) ? e : qs->q;
    int bits = (int)av_json_num(o, "bits", 4), group = (int)av_json_num(o, "group_size", 64);
    const char *mode = av_json_str(o, "mode", "affine");
    if (strcmp(mode, "affine"))
        return av_fail(AV_ERR_UNSUPPORTED, "%s: quantization of '%s': mode '%s' not supported (affine only)", qs->path, mod, mode);
    if (!av_quant_supported(bits, group))
        return av_fail(AV_ERR_UNSUPPORTED, "%s: quantization of '%s': bits %d, group_size %d not supported (bits 2, 3, 4, 5, 6, 8; group 32, 64, 128)",
                       qs->path, mod, bits, group);
    if (s->cols % group)
        return av_fail(AV_ERR_SHAPE, "%s: '%s' has %d columns, not a multiple of group_size %d", qs->path, mod, s->cols, group);
    snprintf(nm, sizeof nm, "%s.weight", mod);
    const av_st_tensor *tw = av_st_set_find(&m->st, nm);
    snprintf(nm, sizeof nm, "%s.biases", mod);
    const av_st_tensor *tb = av_st_set_find(&m->st, nm);
    const av_st_tensor *need[3] = {tw, ts, tb};
    const char *suf[3] = {"weight", "scales", "biases"};
    for (int i = 0; i < 3; i++)
        if (!need[i]) return av_fail(AV_ERR_FORMAT, "%s: missing tensor '%s.%s' (quantized %d-bit)", m->dir, mod, suf[i], bits);
    if (tw->dtype != AV_U32)
        return av_fail(AV_ERR_FORMAT, "%s: tensor '%s.weight' has dtype %s (quantized weights are U32)", tw->file, mod, av_dtype_name(tw->dtype));
    int words = av_quant_row_words(s->cols, bits), ng = s->cols / group;
    if (tw->ndim != 2 || tw->shape[0] != s->rows || tw->shape[1] != words) return shape_fail(tw, tw->name, s->rows, words);
    for (int i = 1; i < 3; i++) {
        const av_st_tensor *t = need[i];
        if (t->dtype != AV_F32 && t->dtype != AV_F16 && t->dtype != AV_BF16)
            return av_fail(AV_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s (supported: F32, F16, BF16)", t->file, t->name, av_dtype_name(t->dtype));
        if (t->dtype != ts->dtype)
            return av_fail(AV_ERR_FORMAT, "%s: tensor '%s' has dtype %s but '%s' has %s", t->file, t->name, av_dtype_name(t->dtype), ts->name, av_dtype_name(ts->dtype));
        if (t->ndim != 2 || t->shape[0] != s->rows || t->shape[1] != ng) return shape_fail(t, t->name, s->rows, ng);
    }
    *s->dst = (av_mat){.data = tw->data, .dtype = ts->dtype, .rows = s->rows, .cols = s->cols, .q_bits = bits, .q_group = group,
                       .scales = ts->data, .biases = tb->data};
    *done = 1;
    return AV_OK;
}

static av_status bind(av_model *m, const slot *s, const qspec *qs) {
    int done;
    AV_TRY(bind_quant(m, s, qs, &done));
    if (done) return AV_OK;
    const av_st_tensor *t = av_st_set_find(&m->st, s->name);
    if (!t) {
        if (!s->required) return AV_OK;
        return av_fail(AV_ERR_FORMAT, "%s: missing tensor '%s'", m->dir, s->name);
    }
    if (t->dtype != AV_F32 && t->dtype != AV_F16 && t->dtype != AV_BF16)
        return av_fail(AV_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s (supported: F32, F16, BF16)", t->file, s->name,
                       av_dtype_name(t->dtype));
    int ok = s->cols ? (t->ndim == 2 && t->shape[0] == s->rows && t->shape[1] == s->cols)
                     : (t->ndim == 1 && t->shape[0] == s->rows);
    if (!ok) return shape_fail(t, s->name, s->rows, s->cols);
    s->dst->data = t->data;
    s->dst->dtype = t->dtype;
    s->dst->rows = s->rows;
    s->dst->cols = s->cols ? s->cols : s->rows;
    if (!s->cols) s->dst->rows = 1;
    return AV_OK;
}

/* A matrix is up to three pieces in memory: 0 = data (the packed words when quantized), 1 = scales,
 * 2 = biases (quantized only). */
static int mat_pieces(const av_mat *a) { return a->q_bits ? 3 : 1; }
static const void **piece_ptr(av_mat *a, int j) { return j == 0 ? &a->data : j == 1 ? &a->scales : &a->biases; }
static size_t piece_bytes(const av_mat *a, int j) {
    size_t es = av_dtype_size(a->dtype);
    if (!a->q_bits) return (size_t)a->rows * a->cols * es;
    if (j == 0) return (size_t)a->rows * (size_t)av_quant_row_words(a->cols, a->q_bits) * 4;
    return (size_t)a->rows * (size_t)(a->cols / a->q_group) * es;
}

/* Every weight view of the model (a tied LM head once), malloc'd; *n receives the count. */
static av_mat **model_mats(av_model *m, int *n) {
    const av_config *c = &m->cfg;
    av_mat **all = calloc((size_t)(3 + c->n_layers * 9), sizeof *all);
    int k = 0;
    if (!all) return NULL;
    all[k++] = &m->embed;
    all[k++] = &m->final_norm;
    if (m->lm_head.data != m->embed.data) all[k++] = &m->lm_head;
    for (int l = 0; l < c->n_layers; l++) {
        av_layer *L = &m->layers[l];
        for (int p = 0; p < AV_PROJ_COUNT; p++) all[k++] = &av_layer_proj(L, (av_proj)p)->w;
        all[k++] = &L->attn_norm;
        all[k++] = &L->mlp_norm;
    }
    *n = k;
    return all;
}

/* Copies every weight into one backend allocation and repoints the views. All data pieces first,
 * then all scales, then all biases, each in model order: a layer's q, k, v (and gate, up) lie back to
 * back piece by piece, so the fused decode products read them as one matrix (layer.c stacked()). */
static av_status upload_all(av_model *m) {
    int k, tied = m->lm_head.data == m->embed.data;
    av_mat **all = model_mats(m, &k);
    if (!all) return av_fail(AV_ERR_NOMEM, "out of memory");
    size_t total = 0;
    for (int i = 0; i < k; i++)
        for (int j = 0; j < mat_pieces(all[i]); j++) total += (piece_bytes(all[i], j) + 255) & ~(size_t)255;
    m->arena = m->be->alloc(total, "model weights");
    if (!m->arena) { free(all); return av_fail_prefix(AV_ERR_NOMEM, "%s", m->dir); }
    size_t off = 0;
    for (int j = 0; j < 3; j++)
        for (int i = 0; i < k; i++) {
            if (j >= mat_pieces(all[i])) continue;
            void *dst = (char *)m->arena + off;
            const void **p = piece_ptr(all[i], j);
            m->be->upload(dst, *p, piece_bytes(all[i], j));
            *p = dst;
            off += (piece_bytes(all[i], j) + 255) & ~(size_t)255;
        }
    if (tied) m->lm_head = m->embed;
    free(all);
    return AV_OK;
}

/* Weight files from MLX (unpadded headers) can put tensors at odd offsets; the CPU kernels read
 * elements through typed pointers, so a misaligned tensor is copied once into an aligned host arena. */
static av_status realign_host(av_model *m) {
    int k, tied = m->lm_head.data == m->embed.data;
    av_mat **all = model_mats(m, &k);
    if (!all) return av_fail(AV_ERR_NOMEM, "out of memory");
    size_t total = 0;
    for (int pass = 0; pass < 2; pass++) {
        size_t off = 0;
        for (int i = 0; i < k; i++) {
            av_mat *a = all[i];
            for (int j = 0; j < mat_pieces(a); j++) {
                const void **p = piece_ptr(a, j);
                size_t align = j == 0 && a->q_bits ? 4 : av_dtype_size(a->dtype);
                if ((uintptr_t)*p % align == 0) continue;
                if (pass == 1) {
                    void *dst = (char *)m->arena + off;
                    memcpy(dst, *p, piece_bytes(a, j));
                    *p = dst;
                }
                off += (piece_bytes(a, j) + 63) & ~(size_t)63;
            }
        }
        if (pass == 0) {
            total = off;
            if (!total) break;
            m->arena = m->be->alloc(total, "realigned model weights");
            if (!m->arena) { free(all); return av_fail_prefix(AV_ERR_NOMEM, "%s", m->dir); }
        }
    }
    if (tied) m->lm_head = m->embed;
    free(all);
    return AV_OK;
}

/* A GGUF file: config from its keys, tensors converted by gguf_model.c. */
static av_status load_gguf(av_model *m, const char *path) {
    if (!(m->gguf = calloc(1, sizeof *m->gguf))) return av_fail(AV_ERR_NOMEM, "out of memory");
    av_status st = av_gguf_open(m->gguf, path);
    if (st != AV_OK) { free(m->gguf); m->gguf = NULL; return st; }
    AV_TRY(av_gguf_config(&m->cfg, m->gguf));
    if (!(m->layers = calloc((size_t)m->cfg.n_layers, sizeof *m->layers))) return av_fail(AV_ERR_NOMEM, "out of memory");
    return av_model_bind_gguf(m);
}

static av_status load_dir(av_model *m, const char *dir);

/* RoPE frequencies of m's config into backend memory (allocated on first use). */
static av_status set_inv_freq(av_model *m) {
    const av_config *c = &m->cfg;
    float inv[512];
    av_config_inv_freq(c, inv);
    if (m->rope_factors)
        for (int i = 0; i < c->head_dim / 2; i++) inv[i] = (float)((double)inv[i] / (double)m->rope_factors[i]);
    if (!m->inv_freq && !(m->inv_freq = m->be->alloc(sizeof(float) * (size_t)(c->head_dim / 2), "rope frequencies"))) return AV_ERR_NOMEM;
    m->be->upload(m->inv_freq, inv, sizeof(float) * (size_t)(c->head_dim / 2));
    return AV_OK;
}

/* CPU: each weight file the views mostly read is replaced under them by its copy in huge pages
 * (weights_huge.c: at the same offsets, so every view keeps its alignment and neighbours). A file mostly
 * unread by the views (a GGUF whose tensors were converted at load) or under 64 MB stays mapped, as does
 * any file when no memory can be had for its copy. */
static void host_huge_copy(av_model *m) {
    enum { MAXF = 64 };
    const av_mapped_file *f[MAXF];
    int nf = 0;
    for (int i = 0; i < m->st.nfiles && nf < MAXF; i++)
        if (!m->st.files[i].borrowed && m->st.files[i].map.data) f[nf++] = &m->st.files[i].map;
    if (m->gguf && m->gguf->map.data && nf < MAXF) f[nf++] = &m->gguf->map;
    int k, tied = m->lm_head.data == m->embed.data;
    av_mat **all = model_mats(m, &k);
    if (!all || !(m->host_copies = calloc((size_t)nf + 1, sizeof *m->host_copies))) { free(all); return; }
    for (int x = 0; x < nf; x++) {
        const char *lo = f[x]->data, *hi = lo + f[x]->size;
        size_t used = 0;
        for (int i = 0; i < k; i++)
            for (int j = 0; j < mat_pieces(all[i]); j++) {
                const char *p = *piece_ptr(all[i], j);
                if (p >= lo && p < hi) used += piece_bytes(all[i], j);
            }
        if (f[x]->size < ((size_t)64 << 20) || used * 2 < f[x]->size) continue;
        char *copy = av_host_copy_get(f[x], &m->host_copies[m->n_host_copies]);
        if (!copy) continue;
        m->n_host_copies++;
        for (int i = 0; i < k; i++)
            for (int j = 0; j < mat_pieces(all[i]); j++) {
                const void **p = piece_ptr(all[i], j);
                if ((const char *)*p >= lo && (const char *)*p < hi) *p = copy + ((const char *)*p - lo);
            }
    }
    if (tied) m->lm_head = m->embed;
    free(all);
}

/* The rest of loading, shared: RoPE frequencies, then the upload (GPU) or realignment (CPU). */
static av_status finish_load(av_model *m) {
    AV_TRY(set_inv_freq(m));
    if (!m->be->host_visible) return upload_all(m);
    AV_TRY(realign_host(m)); /* first: a file whose tensors were mostly realigned is then mostly unread, and not copied again */
    host_huge_copy(m);
    return AV_OK;
}

av_status av_model_extend_context(av_model *m, int n_ctx) {
    av_config *c = &m->cfg;
    if (n_ctx <= c->max_position_embeddings) return AV_OK;
    if (c->rope_type == AV_ROPE_LLAMA3 || m->rope_factors)
        return av_fail(AV_ERR_UNSUPPORTED, "%s: %d positions: the model has Llama-3 RoPE scaling for %d; linear scaling on top of it is not supported",
                       m->dir, n_ctx, c->max_position_embeddings);
    double f = (double)n_ctx / c->max_position_embeddings;
    c->rope_factor = c->rope_type == AV_ROPE_LINEAR ? c->rope_factor * f : f;
    c->rope_type = AV_ROPE_LINEAR;
    c->max_position_embeddings = n_ctx;
    return set_inv_freq(m);
}

av_status av_model_load(av_model **out, const char *dir, const av_backend *be) {
    *out = NULL;
    int gguf = av_file_exists(dir); /* a file is a GGUF file (the reader checks the magic) */
    if (!gguf && !av_dir_exists(dir)) return av_fail(AV_ERR_IO, "%s: model directory or GGUF file not found", dir);
    av_model *m = calloc(1, sizeof *m);
    if (!m) return av_fail(AV_ERR_NOMEM, "out of memory");
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    m->be = be;
    av_status st = gguf ? load_gguf(m, dir) : load_dir(m, dir);
    if (st == AV_OK) st = finish_load(m);
    if (st != AV_OK) { av_model_free(m); return st; }
    *out = m;
    return AV_OK;
}

static av_status load_dir(av_model *m, const char *dir) {
    char path[4200];
    av_status st = av_config_load(&m->cfg, av_path_join(path, sizeof path, dir, "config.json"));
    cJSON *cj = NULL;
    qspec qs = {NULL, path};
    if (st == AV_OK && m->cfg.quant_bits) {
        st = av_json_load(path, &cj);
        if (st == AV_OK) qs.q = av_json_get(cj, "quantization");
        if (st == AV_OK && !av_quant_supported(m->cfg.quant_bits, m->cfg.quant_group_size))
            st = av_fail(AV_ERR_UNSUPPORTED, "%s: quantization bits %d, group_size %d not supported (bits 2, 3, 4, 5, 6, 8; group 32, 64, 128)",
                         path, m->cfg.quant_bits, m->cfg.quant_group_size);
    }
    if (st == AV_OK) st = av_st_set_open_dir(&m->st, dir);
    if (st != AV_OK) { cJSON_Delete(cj); return st; }
    const av_config *c = &m->cfg;
    int D = c->hidden_size, F = c->intermediate_size, q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) { cJSON_Delete(cj); return av_fail(AV_ERR_NOMEM, "out of memory"); }
    slot s = {&m->embed, "model.embed_tokens.weight", c->vocab_size, D, 1};
    st = bind(m, &s, &qs);
    slot n = {&m->final_norm, "model.norm.weight", D, 0, 1};
    if (st == AV_OK) st = bind(m, &n, &qs);
    if (st == AV_OK) {
        slot h = {&m->lm_head, "lm_head.weight", c->vocab_size, D, !c->tie_word_embeddings};
        if (c->tie_word_embeddings) m->lm_head = m->embed;
        else st = bind(m, &h, &qs);
    }
    for (int l = 0; l < c->n_layers && st == AV_OK; l++) {
        av_layer *L = &m->layers[l];
        int rows[AV_PROJ_COUNT] = {q, kv, kv, D, F, F, D}, cols[AV_PROJ_COUNT] = {D, D, D, q, D, D, F};
        for (int p = 0; p < AV_PROJ_COUNT && st == AV_OK; p++) {
            slot ps = {&av_layer_proj(L, (av_proj)p)->w, "", rows[p], cols[p], 1};
            snprintf(ps.name, sizeof ps.name, "model.layers.%d.%s.%s.weight", l, av_proj_module[p], av_proj_names[p]);
            st = bind(m, &ps, &qs);
        }
        slot a = {&L->attn_norm, "", D, 0, 1}, b = {&L->mlp_norm, "", D, 0, 1};
        snprintf(a.name, sizeof a.name, "model.layers.%d.input_layernorm.weight", l);
        snprintf(b.name, sizeof b.name, "model.layers.%d.post_attention_layernorm.weight", l);
        if (st == AV_OK) st = bind(m, &a, &qs);
        if (st == AV_OK) st = bind(m, &b, &qs);
    }
    if (st == AV_OK) {
        m->weight_bytes = 0;
        for (int i = 0; i < m->st.nfiles; i++) m->weight_bytes += m->st.files[i].map.size;
    }
    cJSON_Delete(cj);
    return st;
}

void av_model_free(av_model *m) {
    if (!m) return;
    for (int l = 0; m->layers && l < m->cfg.n_layers; l++) /* adapters attached by train/lora.c */
        for (int p = 0; p < AV_PROJ_COUNT; p++) {
            av_linear *L = av_layer_proj(&m->layers[l], (av_proj)p);
            if (L->lora_a) m->be->free(L->lora_a);
            if (L->lora_b) m->be->free(L->lora_b);
            L->lora_a = L->lora_b = NULL;
        }
    if (m->arena) m->be->free(m->arena);
    for (int i = 0; i < m->n_host_copies; i++) av_host_copy_put(m->host_copies[i]);
    free(m->host_copies);
    if (m->inv_freq) m->be->free(m->inv_freq);
    free(m->layers);
    av_st_set_close(&m->st);
    for (int i = 0; i < m->n_owned; i++) av_free(m->owned[i]);
    free(m->owned);
    if (m->gguf) { av_gguf_close(m->gguf); free(m->gguf); }
    free(m);
}

const av_st_tensor *av_model_tensor(const av_model *m, const char *name) { return av_st_set_find(&m->st, name); }
