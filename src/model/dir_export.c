/* Writes a loaded model (typically one read from a GGUF file) as an HF/MLX-LM model directory from
 * its weight views: config.json from the loaded config, model.safetensors under HF names, the
 * SentencePiece vocabulary as tokenizer.model (a protobuf with pieces, scores, types and the
 * trainer/normalizer flags anvil's reader uses), tokenizer_config.json (BOS/EOS, add_bos/add_eos,
 * the chat template). Packed matrices (an MLX model's, or a GGUF's Q8_0/Q4_0 repacked exactly into
 * MLX's affine layout, group 32) are written as they are when asked and untouched by an adapter, with
 * config.json's "quantization" (per-module entries where widths differ); every other matrix is
 * taken as f32 (de-quantized, an attached LoRA adapter merged: W += s B A) and stored as the output
 * dtype. Q/K rows are in HF's order already (gguf_model.c un-permutes them), so nothing is permuted
 * here. The directory is built beside out_dir and published when complete. */
#include "model/model.h"
#include "core/memory.h"
#include "quant/affine.h"
#include "quant/gguf_blocks.h"
#include "tokenizer/tok_internal.h"
#include "train/lora.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    const av_model *m;
    const av_dir_export_opts *o;
    av_st_writer w;
    void **keep;
    int nkeep, cap;
    cJSON *qcfg;        /* "quantization" object being built (NULL until a packed matrix is kept) */
    int qbits;          /* the global width (the first packed matrix's) */
    av_dtype float_dt;  /* dtype of de-quantized matrices and of config.json's torch_dtype */
    av_dir_export_report *r;
} dexp;

static void *keep(dexp *x, void *p) {
    if (p && x->nkeep == x->cap) {
        int cap = x->cap ? x->cap * 2 : 64;
        void **k = realloc(x->keep, (size_t)cap * sizeof *k);
        if (!k) { free(p); return NULL; }
        x->keep = k;
        x->cap = cap;
    }
    if (p) x->keep[x->nkeep++] = p;
    return p;
}

/* f32 copy (malloc'd) of n values of dtype dt at any alignment. */
static float *floats(const void *data, av_dtype dt, size_t n) {
    size_t es = av_dtype_size(dt);
    float *f = malloc(n * sizeof(float) + 1);
    void *c = (uintptr_t)data % es ? malloc(n * es) : NULL;
    if (!f || ((uintptr_t)data % es && !c)) { free(f); free(c); return NULL; }
    if (c) memcpy(c, data, n * es);
    av_convert_to_f32(f, c ? c : data, dt, n);
    free(c);
    return f;
}

/* Adds f32 values f (taken over) as dtype od. */
static av_status add_f32(dexp *x, const char *name, av_dtype od, int ndim, const int64_t *shape, float *f, size_t n) {
    void *o = od == AV_F32 ? f : malloc(n * av_dtype_size(od) + 1);
    if (!o) { free(f); return av_fail(AV_ERR_NOMEM, "export: out of memory for '%s'", name); }
    if (od != AV_F32) {
        av_convert_from_f32(o, od, f, n);
        free(f);
    }
    if (!keep(x, o)) return av_fail(AV_ERR_NOMEM, "export: out of memory");
    x->r->n_tensors++;
    return av_st_writer_add(&x->w, name, od, ndim, shape, o);
}

/* Packed matrices kept as they are: those of an MLX model, and from a GGUF only Q8_0/Q4_0 (MLX 8/4-bit);
 * gname: the tensor's GGUF name. */
static int keep_as_packed(const dexp *x, const char *gname) {
    if (!x->m->gguf) return 1;
    const av_gguf_tensor *t = av_gguf_tensor_find(x->m->gguf, gname);
    return t && (t->type == AV_GGML_Q8_0 || t->type == AV_GGML_Q4_0);
}

/* One weight under its HF name (mod = the module, ".weight" appended; gname: its GGUF name); L: its
 * projection, or NULL. */
static av_status add(dexp *x, const char *mod, const char *gname, const av_mat *a, const av_linear *L) {
    char nm[200];
    snprintf(nm, sizeof nm, "%s.weight", mod);
    int vec = a->rows == 1 && !a->q_bits;
    size_t n = (size_t)a->rows * (size_t)a->cols;
    int64_t shape[2] = {vec ? a->cols : a->rows, a->cols};
    int merge = L && L->lora_a;
    if (a->q_bits && x->o->keep_packed && !merge && keep_as_packed(x, gname)) { /* as it is: words, scales, biases */
        int words = av_quant_row_words(a->cols, a->q_bits), ng = a->cols / a->q_group;
        int64_t ws[2] = {a->rows, words}, ss[2] = {a->rows, ng};
        size_t ns = (size_t)a->rows * (size_t)ng;
        AV_TRY(av_st_writer_add(&x->w, nm, AV_U32, 2, ws, a->data));
        const void *sc = a->scales, *bi = a->biases;
        av_dtype sdt = a->dtype;
        if (x->o->out_dtype >= 0 && (av_dtype)x->o->out_dtype != sdt) {
            float *fs = floats(a->scales, sdt, ns), *fb = floats(a->biases, sdt, ns);
            void *cs = malloc(ns * av_dtype_size((av_dtype)x->o->out_dtype)), *cb = malloc(ns * av_dtype_size((av_dtype)x->o->out_dtype));
            int ok = fs && fb && cs && cb;
            if (ok) {
                sdt = (av_dtype)x->o->out_dtype;
                av_convert_from_f32(cs, sdt, fs, ns);
                av_convert_from_f32(cb, sdt, fb, ns);
            }
            free(fs);
            free(fb);
            if (!ok || !keep(x, cs) || !keep(x, cb)) {
                if (!ok) { free(cs); free(cb); }
                return av_fail(AV_ERR_NOMEM, "export: out of memory");
            }
            sc = cs;
            bi = cb;
        }
        snprintf(nm, sizeof nm, "%s.scales", mod);
        AV_TRY(av_st_writer_add(&x->w, nm, sdt, 2, ss, sc));
        snprintf(nm, sizeof nm, "%s.biases", mod);
        AV_TRY(av_st_writer_add(&x->w, nm, sdt, 2, ss, bi));
        if (!x->qcfg) {
            if (!(x->qcfg = cJSON_CreateObject())) return av_fail(AV_ERR_NOMEM, "out of memory");
            x->qbits = a->q_bits;
            cJSON_AddNumberToObject(x->qcfg, "group_size", a->q_group);
            cJSON_AddNumberToObject(x->qcfg, "bits", a->q_bits);
        }
        if (a->q_bits != x->qbits || a->q_group != 32) {
            cJSON *e = cJSON_AddObjectToObject(x->qcfg, mod);
            if (!e) return av_fail(AV_ERR_NOMEM, "out of memory");
            cJSON_AddNumberToObject(e, "group_size", a->q_group);
            cJSON_AddNumberToObject(e, "bits", a->q_bits);
        }
        x->r->n_packed++;
        x->r->n_tensors += 3;
        return AV_OK;
    }
    float *f;
    if (a->q_bits) {
        if ((f = malloc(n * sizeof(float))))
            for (int r = 0; r < a->rows; r++)
                av_quant_dequant_row(f + (size_t)r * a->cols, a->data, a->scales, a->biases, a->dtype, r, a->cols, a->q_bits, a->q_group);
        x->r->n_dequantized++;
    } else f = floats(a->data, a->dtype, n);
    if (!f) return av_fail(AV_ERR_NOMEM, "export: out of memory for '%s'", nm);
    if (merge) {
        int rk = L->rank;
        float *ha = malloc(sizeof(float) * (size_t)rk * a->cols), *hb = malloc(sizeof(float) * (size_t)a->rows * rk);
        if (!ha || !hb) { free(ha); free(hb); free(f); return av_fail(AV_ERR_NOMEM, "export: out of memory"); }
        x->m->be->download(ha, L->lora_a, sizeof(float) * (size_t)rk * a->cols);
        x->m->be->download(hb, L->lora_b, sizeof(float) * (size_t)a->rows * rk);
        av_lora_merge_f32(f, ha, hb, a->rows, a->cols, rk, L->scale);
        free(ha);
        free(hb);
        x->r->n_fused++;
    }
    /* forced dtype; else floats as stored (f32 only in an f32 model: K-quants are de-quantized to f32) */
    av_dtype od = x->o->out_dtype >= 0 ? (av_dtype)x->o->out_dtype
                  : vec ? a->dtype
                  : !a->q_bits && (a->dtype != AV_F32 || x->m->cfg.dtype == AV_F32) ? a->dtype : x->float_dt;
    return add_f32(x, nm, od, vec ? 1 : 2, shape, f, n);
}

/* ---- tokenizer.model: a SentencePiece ModelProto ------------------------------------------------ */
static int pb_varint(tk_buf *b, uint64_t v) {
    uint8_t c[10];
    int n = 0;
    do {
        c[n] = (uint8_t)(v & 0x7F);
        v >>= 7;
        if (v) c[n] |= 0x80;
        n++;
    } while (v);
    return tk_buf_put(b, c, (size_t)n);
}
static int pb_key(tk_buf *b, int field, int wt) { return pb_varint(b, (uint64_t)field << 3 | (uint64_t)wt); }
static int pb_int(tk_buf *b, int field, int64_t v) { return pb_key(b, field, 0) || pb_varint(b, (uint64_t)v); }
static int pb_bytes(tk_buf *b, int field, const void *s, size_t n) {
    return pb_key(b, field, 2) || pb_varint(b, n) || tk_buf_put(b, s, n);
}

static av_status write_spm(const av_tokenizer *t, const char *path) {
    tk_buf b = {0}, p = {0}, s = {0};
    int err = 0;
    for (int i = 0; i < t->n_vocab && !err; i++) {
        size_t len = 0;
        const char *pc = tk_piece(t, i, &len);
        if (!pc) { pc = ""; len = 0; }
        p.n = 0;
        uint32_t u;
        memcpy(&u, &t->scores[i], 4);
        uint8_t sc[4] = {(uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16), (uint8_t)(u >> 24)};
        err = pb_bytes(&p, 1, pc, len) || pb_key(&p, 2, 5) || tk_buf_put(&p, sc, 4) || pb_int(&p, 3, t->types[i] ? t->types[i] : 1) ||
              pb_bytes(&b, 1, p.p, p.n);
    }
    /* trainer_spec: model_type BPE, byte_fallback, unk/bos/eos ids */
    if (!err)
        err = pb_int(&s, 3, 2) || pb_int(&s, 35, t->byte_fallback != 0) || pb_int(&s, 40, t->unk_id) || pb_int(&s, 41, t->bos_id) ||
              pb_int(&s, 42, t->eos_id) || pb_bytes(&b, 2, s.p, s.n);
    s.n = 0;
    if (!err)
        err = pb_int(&s, 3, t->add_dummy_prefix != 0) || pb_int(&s, 4, t->remove_extra_ws != 0) || pb_int(&s, 5, t->escape_ws != 0) ||
              pb_bytes(&b, 3, s.p, s.n);
    av_status st = err ? av_fail(AV_ERR_NOMEM, "export: out of memory") : av_write_file_atomic(path, b.p, b.n);
    free(b.p);
    free(p.p);
    free(s.p);
    return st;
}

static av_status write_tok_config(const av_tokenizer *t, const char *chat_template, const char *path) {
    cJSON *j = cJSON_CreateObject();
    if (!j) return av_fail(AV_ERR_NOMEM, "out of memory");
    cJSON_AddBoolToObject(j, "add_bos_token", t->add_bos);
    cJSON_AddBoolToObject(j, "add_eos_token", t->add_eos);
    size_t len;
    const char *pc;
    char buf[512];
    if (t->bos_id >= 0 && (pc = tk_piece(t, t->bos_id, &len)) && len < sizeof buf) {
        memcpy(buf, pc, len);
        buf[len] = 0;
        cJSON_AddStringToObject(j, "bos_token", buf);
    }
    if (t->eos_id >= 0 && (pc = tk_piece(t, t->eos_id, &len)) && len < sizeof buf) {
        memcpy(buf, pc, len);
        buf[len] = 0;
        cJSON_AddStringToObject(j, "eos_token", buf);
    }
    if (t->unk_id >= 0 && (pc = tk_piece(t, t->unk_id, &len)) && len < sizeof buf) {
        memcpy(buf, pc, len);
        buf[len] = 0;
        cJSON_AddStringToObject(j, "unk_token", buf);
    }
    cJSON_AddStringToObject(j, "tokenizer_class", t->kind == TK_KIND_SPM ? "LlamaTokenizer" : "PreTrainedTokenizerFast");
    if (chat_template) cJSON_AddStringToObject(j, "chat_template", chat_template);
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    av_status st = txt ? av_write_file_atomic(path, txt, strlen(txt)) : av_fail(AV_ERR_NOMEM, "out of memory");
    free(txt);
    return st;
}

static av_status write_config(dexp *x, const char *path) {
    av_config c = x->m->cfg;
    c.quant_bits = c.quant_group_size = 0;
    c.dtype = x->float_dt;
    if (x->m->rope_factors) AV_TRY(av_config_llama3_fit(&c, x->m->rope_factors, x->m->dir)); /* GGUF rope_freqs -> rope_scaling */
    AV_TRY(av_config_save(&c, path));
    if (!x->qcfg) return AV_OK;
    cJSON *j;
    AV_TRY(av_json_load(path, &j));
    cJSON_AddItemToObject(j, "quantization", cJSON_Duplicate(x->qcfg, 1));
    cJSON_AddItemToObject(j, "quantization_config", cJSON_Duplicate(x->qcfg, 1));
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    av_status st = txt ? av_write_file_atomic(path, txt, strlen(txt)) : av_fail(AV_ERR_NOMEM, "out of memory");
    free(txt);
    return st;
}

av_status av_model_export_dir(const av_model *m, const av_tokenizer *tok, const char *out_dir, const av_dir_export_opts *o,
                              av_dir_export_report *r) {
    memset(r, 0, sizeof *r);
    const av_config *c = &m->cfg;
    if (o->out_dtype >= 0 && o->out_dtype != AV_F32 && o->out_dtype != AV_F16 && o->out_dtype != AV_BF16)
        return av_fail(AV_ERR_ARG, "export: output dtype must be f32, f16 or bf16");
    if (!m->be->host_visible) return av_fail(AV_ERR_UNSUPPORTED, "export: load the model on the CPU (--device cpu)");
    if (m->rope_factors) { /* refused before anything is written */
        av_config t = *c;
        AV_TRY(av_config_llama3_fit(&t, m->rope_factors, m->dir));
    }
    if (!tok) return av_fail(AV_ERR_ARG, "export: a tokenizer is required");
    if (av_file_exists(out_dir) || av_dir_exists(out_dir)) return av_fail(AV_ERR_ARG, "%s: already exists", out_dir);
    dexp x = {.m = m, .o = o, .r = r};
    /* de-quantized matrices: bf16 in a quantized model, else the model's float dtype */
    int quant = m->embed.q_bits != 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < AV_PROJ_COUNT; p++) quant |= av_layer_proj(&m->layers[l], (av_proj)p)->w.q_bits != 0;
    for (int i = 0; m->gguf && i < m->gguf->n_tensors; i++) quant |= av_gguf_native_dtype(m->gguf->tensors[i].type) < 0;
    x.float_dt = o->out_dtype >= 0 ? (av_dtype)o->out_dtype : !quant && (c->dtype == AV_F32 || c->dtype == AV_F16) ? c->dtype : AV_BF16;
    av_st_writer_init(&x.w);
    av_status st = add(&x, "model.embed_tokens", "token_embd.weight", &m->embed, NULL);
    char mod[160], gn[96];
    for (int l = 0; l < c->n_layers && st == AV_OK; l++) {
        av_layer *L = &m->layers[l];
        snprintf(mod, sizeof mod, "model.layers.%d.input_layernorm", l);
        st = add(&x, mod, "", &L->attn_norm, NULL);
        for (int p = 0; p < AV_PROJ_COUNT && st == AV_OK; p++) {
            const av_linear *lin = av_layer_proj(L, (av_proj)p);
            snprintf(mod, sizeof mod, "model.layers.%d.%s.%s", l, av_proj_module[p], av_proj_names[p]);
            snprintf(gn, sizeof gn, "blk.%d.%s.weight", l, av_gguf_proj_names[p]);
            st = add(&x, mod, gn, &lin->w, lin);
        }
        snprintf(mod, sizeof mod, "model.layers.%d.post_attention_layernorm", l);
        if (st == AV_OK) st = add(&x, mod, "", &L->mlp_norm, NULL);
    }
    if (st == AV_OK) st = add(&x, "model.norm", "", &m->final_norm, NULL);
    if (st == AV_OK && !c->tie_word_embeddings) st = add(&x, "lm_head", "output.weight", &m->lm_head, NULL);
    char tmp[4200], path[4400];
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", out_dir, (long)getpid());
    int made = 0;
    if (st == AV_OK) st = av_mkdir_p(tmp);
    made = st == AV_OK;
    if (st == AV_OK) st = av_st_writer_set_metadata(&x.w, x.qcfg ? "{\"format\":\"mlx\"}" : "{\"format\":\"pt\"}");
    if (st == AV_OK) st = av_st_writer_write(&x.w, av_path_join(path, sizeof path, tmp, "model.safetensors"));
    if (st == AV_OK) st = write_config(&x, av_path_join(path, sizeof path, tmp, "config.json"));
    if (st == AV_OK && tok->kind == TK_KIND_SPM) st = write_spm(tok, av_path_join(path, sizeof path, tmp, "tokenizer.model"));
    if (st == AV_OK && tok->kind != TK_KIND_SPM) st = tk_write_tokenizer_json(tok, av_path_join(path, sizeof path, tmp, "tokenizer.json"));
    if (st == AV_OK) st = write_tok_config(tok, o->chat_template, av_path_join(path, sizeof path, tmp, "tokenizer_config.json"));
    if (st == AV_OK) st = av_dir_publish(tmp, out_dir);
    else if (made) av_remove_tree(tmp);
    av_st_writer_free(&x.w);
    for (int i = 0; i < x.nkeep; i++) free(x.keep[i]);
    free(x.keep);
    cJSON_Delete(x.qcfg);
    return st;
}
