/* A Llama model from one GGUF file: the "llama" keys -> av_config, GGUF tensor names -> model fields
 * through one table, and each tensor made into an av_mat: F32/F16/BF16 viewed in the mapping,
 * Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q4_K/Q5_K repacked exactly into MLX's affine layout (group 32), Q6_K/Q3_K/Q2_K
 * into 6/3/2-bit codes with group 16 (both backends' kernels take it). attn_q/attn_k rows go back from llama.cpp's interleaved rotary order to HF's
 * rotate-half order (the inverse of convert_hf_to_gguf.py's permute). */
#include "model/model.h"
#include "formats/gguf.h"
#include "quant/affine.h"
#include "quant/gguf_blocks.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static av_status keyed(const av_gguf_file *f, const char *arch, const char *suffix, int lo, int hi, int *out, int required) {
    char k[160];
    snprintf(k, sizeof k, "%s.%s", arch, suffix);
    if (required && !av_gguf_find(f, k)) return av_fail(AV_ERR_FORMAT, "%s: missing key '%s'", f->path, k);
    return av_gguf_get_int(f, k, lo, hi, out);
}

av_status av_gguf_config(av_config *c, const av_gguf_file *f) {
    memset(c, 0, sizeof *c);
    char *arch = NULL, *rs = NULL;
    AV_TRY(av_gguf_get_str(f, "general.architecture", &arch));
    if (!arch) return av_fail(AV_ERR_FORMAT, "%s: missing key 'general.architecture'", f->path);
    if (strcmp(arch, "llama")) {
        av_status st = av_fail(AV_ERR_UNSUPPORTED, "%s: general.architecture '%.64s' is not supported (anvil runs llama)", f->path, arch);
        free(arch);
        return st;
    }
    free(arch);
    const char *a = "llama";
    int key_len = 0, val_len = 0, rope_dim = 0;
    AV_TRY(keyed(f, a, "embedding_length", 1, 1 << 20, &c->hidden_size, 1));
    AV_TRY(keyed(f, a, "feed_forward_length", 1, 1 << 24, &c->intermediate_size, 1));
    AV_TRY(keyed(f, a, "block_count", 1, 10000, &c->n_layers, 1));
    AV_TRY(keyed(f, a, "attention.head_count", 1, 10000, &c->n_heads, 1));
    c->n_kv_heads = c->n_heads;
    AV_TRY(keyed(f, a, "attention.head_count_kv", 1, 10000, &c->n_kv_heads, 0));
    c->max_position_embeddings = 2048;
    AV_TRY(keyed(f, a, "context_length", 1, 1 << 30, &c->max_position_embeddings, 0));
    AV_TRY(keyed(f, a, "attention.key_length", 1, 4096, &key_len, 0));
    AV_TRY(keyed(f, a, "attention.value_length", 1, 4096, &val_len, 0));
    AV_TRY(keyed(f, a, "rope.dimension_count", 1, 4096, &rope_dim, 0));
    AV_TRY(keyed(f, a, "vocab_size", 1, 1 << 28, &c->vocab_size, 0));
    if (c->hidden_size % c->n_heads && !key_len) return av_fail(AV_ERR_FORMAT, "%s: llama.embedding_length is not divisible by llama.attention.head_count", f->path);
    c->head_dim = key_len ? key_len : c->hidden_size / c->n_heads;
    if (val_len && val_len != c->head_dim)
        return av_fail(AV_ERR_UNSUPPORTED, "%s: llama.attention.value_length %d differs from key_length %d", f->path, val_len, c->head_dim);
    if (rope_dim && rope_dim != c->head_dim)
        return av_fail(AV_ERR_UNSUPPORTED, "%s: llama.rope.dimension_count %d is not the head size %d (partial rotary)", f->path, rope_dim, c->head_dim);
    if (c->n_heads % c->n_kv_heads)
        return av_fail(AV_ERR_FORMAT, "%s: llama.attention.head_count %d not divisible by head_count_kv %d", f->path, c->n_heads, c->n_kv_heads);
    if (c->head_dim % 2 || c->head_dim > 512) return av_fail(AV_ERR_UNSUPPORTED, "%s: head size %d (even, at most 512)", f->path, c->head_dim);
    double eps = 1e-5, theta = 10000.0, factor = 1.0;
    AV_TRY(av_gguf_get_f64(f, "llama.attention.layer_norm_rms_epsilon", &eps));
    AV_TRY(av_gguf_get_f64(f, "llama.rope.freq_base", &theta));
    c->rms_norm_eps = (float)eps;
    c->rope_theta = theta;
    c->rope_factor = 1.0;
    AV_TRY(av_gguf_get_str(f, "llama.rope.scaling.type", &rs));
    AV_TRY(av_gguf_get_f64(f, "llama.rope.scaling.factor", &factor));
    if (rs && strcmp(rs, "none")) {
        if (strcmp(rs, "linear")) {
            av_status st = av_fail(AV_ERR_UNSUPPORTED, "%s: llama.rope.scaling.type '%.32s' is not supported (none, linear)", f->path, rs);
            free(rs);
            return st;
        }
        if (!(factor > 0)) { free(rs); return av_fail(AV_ERR_FORMAT, "%s: llama.rope.scaling.factor must be > 0", f->path); }
        c->rope_type = AV_ROPE_LINEAR;
        c->rope_factor = factor;
    }
    free(rs);
    /* vocabulary: the token list when there is one, else the embedding's rows */
    const av_gguf_kv *toks;
    AV_TRY(av_gguf_get_arr(f, "tokenizer.ggml.tokens", AV_GGUF_STR, AV_GGUF_STR, &toks));
    const av_gguf_tensor *e = av_gguf_tensor_find(f, "token_embd.weight");
    if (!c->vocab_size && toks) c->vocab_size = toks->n > (1u << 28) ? 0 : (int)toks->n;
    if (!c->vocab_size && e && e->ndim == 2 && e->ne[1] < (1 << 28)) c->vocab_size = (int)e->ne[1];
    if (!c->vocab_size) return av_fail(AV_ERR_FORMAT, "%s: no vocabulary size (no llama.vocab_size, tokenizer.ggml.tokens or token_embd.weight)", f->path);
    c->tie_word_embeddings = !av_gguf_tensor_find(f, "output.weight");
    c->bos_token_id = -1;
    AV_TRY(av_gguf_get_int(f, "tokenizer.ggml.bos_token_id", 0, c->vocab_size - 1, &c->bos_token_id));
    const char *eos_keys[] = {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"};
    for (int i = 0; i < 3; i++) {
        int id = -1;
        AV_TRY(av_gguf_get_int(f, eos_keys[i], 0, c->vocab_size - 1, &id));
        int dup = 0;
        for (int j = 0; j < c->n_eos; j++) dup |= c->eos_token_ids[j] == id;
        if (id >= 0 && !dup && c->n_eos < AV_MAX_EOS) c->eos_token_ids[c->n_eos++] = id;
    }
    int nat = e ? av_gguf_native_dtype(e->type) : -1;
    c->dtype = nat >= 0 ? (av_dtype)nat : AV_F16;
    return AV_OK;
}

/* Host memory the model owns (converted tensors), freed with it. */
static void *own(av_model *m, size_t bytes) {
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? m->cap_owned * 2 : 64;
        void **o = realloc(m->owned, (size_t)cap * sizeof *o);
        if (!o) return NULL;
        m->owned = o;
        m->cap_owned = cap;
    }
    void *p = av_calloc(bytes ? bytes : 1, "GGUF weights");
    if (p) m->owned[m->n_owned++] = p;
    return p;
}

/* A K-quant's own two-level scales beside its repack, for the CPU decode kernel (ops.h av_kscales). */
static av_status bind_kscales(av_model *m, av_mat *a, const av_gguf_tensor *t, const int *map) {
    int q6 = t->type == AV_GGML_Q6_K;
    size_t groups = (size_t)a->rows * (size_t)(a->cols / a->q_group), blocks = (size_t)a->rows * (size_t)(a->cols / 256);
    av_kscales *k = own(m, sizeof *k);
    uint8_t *sc = own(m, groups), *mn = q6 ? NULL : own(m, groups);
    float *dd = own(m, blocks * sizeof(float)), *dm = q6 ? NULL : own(m, blocks * sizeof(float));
    if (!k || !sc || !dd || (!q6 && (!mn || !dm))) return av_fail(AV_ERR_NOMEM, "%s: out of memory", t->name);
    av_gguf_kscales(sc, mn, dd, dm, t->data, t->type, a->rows, a->cols, map);
    *k = (av_kscales){.sc = sc, .m = mn, .d = dd, .dmin = dm, .per = q6 ? 16 : 8, .sym = q6};
    a->ks = k;
    return AV_OK;
}

/* GGUF names of the seven projections (blk.N.<name>.weight), in av_proj order; HF's are
 * model.layers.N.<av_proj_module>.<av_proj_names>. Shared by the loader and both writers. */
const char *const av_gguf_proj_names[AV_PROJ_COUNT] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};

typedef struct { av_mat *dst; char name[96]; int rows, cols, required, heads; } gslot;

static av_status bind(av_model *m, const gslot *s) {
    const av_gguf_file *f = m->gguf;
    const av_gguf_tensor *t = av_gguf_tensor_find(f, s->name);
    if (!t) return s->required ? av_fail(AV_ERR_FORMAT, "%s: missing tensor '%s'", f->path, s->name) : AV_OK;
    int ok = s->cols ? t->ndim == 2 && t->ne[0] == s->cols && t->ne[1] == s->rows : t->ndim == 1 && t->ne[0] == s->rows;
    if (!ok) {
        char got[96] = "";
        for (int i = 0; i < t->ndim; i++) snprintf(got + strlen(got), sizeof got - strlen(got), i ? ",%lld" : "%lld", (long long)t->ne[i]);
        return av_fail(AV_ERR_SHAPE, "%s: tensor '%s' has extents [%s] but the llama keys imply [%d%s%.0d]", f->path, s->name, got,
                       s->cols ? s->cols : s->rows, s->cols ? "," : "", s->cols ? s->rows : 0);
    }
    int rows = s->cols ? s->rows : 1, cols = s->cols ? s->cols : s->rows;
    int *map = NULL;
    if (s->heads) { /* GGUF row h*hd + 2j + i holds HF row h*hd + i*hd/2 + j */
        int hd = rows / s->heads;
        if (!(map = malloc((size_t)rows * sizeof *map))) return av_fail(AV_ERR_NOMEM, "out of memory");
        for (int h = 0; h < s->heads; h++)
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < hd / 2; j++) map[h * hd + i * (hd / 2) + j] = h * hd + 2 * j + i;
    }
    av_status st = AV_OK;
    int nat = av_gguf_native_dtype(t->type), bits = av_gguf_repack_bits(t->type), G = av_gguf_repack_group(t->type);
    av_mat *d = s->dst;
    memset(d, 0, sizeof *d);
    d->rows = rows;
    d->cols = cols;
    if (nat >= 0) {
        d->dtype = (av_dtype)nat;
        d->data = t->data;
        if (map) {
            size_t rb = (size_t)cols * av_dtype_size(d->dtype);
            char *p = own(m, rb * (size_t)rows);
            if (!p) st = av_fail(AV_ERR_NOMEM, "%s: out of memory", s->name);
            else for (int r = 0; r < rows; r++) memcpy(p + (size_t)r * rb, (const char *)t->data + (size_t)map[r] * rb, rb);
            d->data = p;
        }
    } else if (bits && s->cols) {
        int64_t ngroups = (int64_t)rows * (cols / G);
        av_dtype sdt = av_gguf_repack_scale_dtype(t->type, t->data, (int64_t)rows * (cols / av_ggml_block_size(t->type)));
        uint32_t *w = own(m, (size_t)rows * (size_t)av_quant_row_words(cols, bits) * 4);
        void *sc = own(m, (size_t)ngroups * av_dtype_size(sdt)), *bi = own(m, (size_t)ngroups * av_dtype_size(sdt));
        if (!w || !sc || !bi) st = av_fail(AV_ERR_NOMEM, "%s: out of memory", s->name);
        else {
            av_gguf_repack(w, sc, bi, sdt, t->data, t->type, rows, cols, map);
            *d = (av_mat){.data = w, .dtype = sdt, .rows = rows, .cols = cols, .q_bits = bits, .q_group = G, .scales = sc, .biases = bi};
            if (m->be->host_visible && (t->type == AV_GGML_Q4_K || t->type == AV_GGML_Q5_K || t->type == AV_GGML_Q6_K))
                st = bind_kscales(m, d, t, map);
        }
    } else if (av_gguf_can_dequant(t->type)) {
        float *p = own(m, (size_t)rows * (size_t)cols * sizeof(float));
        size_t rb = (size_t)cols / (size_t)av_ggml_block_size(t->type) * (size_t)av_ggml_type_size(t->type);
        if (!p) st = av_fail(AV_ERR_NOMEM, "%s: out of memory", s->name);
        else for (int r = 0; r < rows; r++)
            av_gguf_dequant_row(p + (size_t)r * (size_t)cols, (const char *)t->data + (size_t)(map ? map[r] : r) * rb, t->type, cols);
        d->dtype = AV_F32;
        d->data = p;
    } else {
        st = av_fail(AV_ERR_UNSUPPORTED, "%s: tensor '%s' has type %s, which is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)",
                     f->path, s->name, av_ggml_type_name(t->type));
    }
    free(map);
    return st;
}

av_status av_model_bind_gguf(av_model *m) {
    const av_config *c = &m->cfg;
    const av_gguf_file *f = m->gguf;
    int D = c->hidden_size, F = c->intermediate_size, q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
    gslot e = {&m->embed, "token_embd.weight", c->vocab_size, D, 1, 0};
    gslot n = {&m->final_norm, "output_norm.weight", D, 0, 1, 0};
    AV_TRY(bind(m, &e));
    AV_TRY(bind(m, &n));
    if (c->tie_word_embeddings) m->lm_head = m->embed;
    else {
        gslot h = {&m->lm_head, "output.weight", c->vocab_size, D, 1, 0};
        AV_TRY(bind(m, &h));
    }
    for (int l = 0; l < c->n_layers; l++) {
        av_layer *L = &m->layers[l];
        int rows[AV_PROJ_COUNT] = {q, kv, kv, D, F, F, D}, cols[AV_PROJ_COUNT] = {D, D, D, q, D, D, F};
        for (int p = 0; p < AV_PROJ_COUNT; p++) {
            gslot s = {&av_layer_proj(L, (av_proj)p)->w, "", rows[p], cols[p], 1, p == AV_PROJ_Q ? c->n_heads : p == AV_PROJ_K ? c->n_kv_heads : 0};
            snprintf(s.name, sizeof s.name, "blk.%d.%s.weight", l, av_gguf_proj_names[p]);
            AV_TRY(bind(m, &s));
        }
        gslot a = {&L->attn_norm, "", D, 0, 1, 0}, b = {&L->mlp_norm, "", D, 0, 1, 0};
        snprintf(a.name, sizeof a.name, "blk.%d.attn_norm.weight", l);
        snprintf(b.name, sizeof b.name, "blk.%d.ffn_norm.weight", l);
        AV_TRY(bind(m, &a));
        AV_TRY(bind(m, &b));
    }
    /* Llama-3 rope scaling: per-frequency divisors (rope_freqs.weight, F32 [head_dim/2]) */
    const av_gguf_tensor *rf = av_gguf_tensor_find(f, "rope_freqs.weight");
    if (rf) {
        if (rf->type != AV_GGML_F32 || rf->ndim != 1 || rf->ne[0] != c->head_dim / 2)
            return av_fail(AV_ERR_FORMAT, "%s: tensor 'rope_freqs.weight' must be F32 [%d]", f->path, c->head_dim / 2);
        if (!(m->rope_factors = own(m, sizeof(float) * (size_t)(c->head_dim / 2)))) return av_fail(AV_ERR_NOMEM, "out of memory");
        memcpy(m->rope_factors, rf->data, sizeof(float) * (size_t)(c->head_dim / 2));
        for (int i = 0; i < c->head_dim / 2; i++)
            if (!(m->rope_factors[i] > 0)) return av_fail(AV_ERR_FORMAT, "%s: tensor 'rope_freqs.weight' has a value <= 0 at %d", f->path, i);
    }
    m->weight_bytes = 0;
    for (int i = 0; i < f->n_tensors; i++) m->weight_bytes += f->tensors[i].nbytes;
    return AV_OK;
}
