/* Writes a loaded Llama model as one GGUF file (llama.cpp's layout): the llama.* keys, the
 * SentencePiece vocabulary (tokenizer.ggml.model "llama": pieces, scores, piece types), special ids,
 * add_bos/add_eos, the chat template, and every tensor under its GGUF name. Matrices are taken as f32
 * (a packed MLX matrix de-quantized, an attached LoRA adapter merged: W += s B A), attn_q/attn_k
 * rows permuted into llama.cpp's interleaved rotary order (convert_hf_to_gguf.py's permute, the
 * inverse of gguf_model.c's), then stored as F32/F16/BF16 or quantized to Q8_0/Q4_0/Q4_K/Q6_K with
 * ggml's reference rounding (K-quants: every matrix, as llama-quantize --pure); a matrix whose input
 * size is no multiple of the block (32; K-quants 256) falls back to F16 and norms stay F32, as llama.cpp's
 * converter does (llama-quantize would write Q5_0 for a Q4_K matrix of that kind). */
#include "model/model.h"
#include "formats/gguf.h"
#include "formats/gguf_write.h"
#include "quant/affine.h"
#include "quant/gguf_blocks.h"
#include "tokenizer/tok_internal.h"
#include "train/lora.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int av_gguf_outtype_parse(const char *s) {
    static const char *const names[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k"};
    for (int i = 0; s && i < 7; i++)
        if (!strcasecmp(s, names[i])) return i;
    return -1;
}

typedef struct {
    const av_model *m;
    int out;                     /* AV_GGUF_OUT_* */
    av_gguf_writer w;
    void **keep;
    int nkeep, cap;
    av_gguf_export_report *r;
} exporter;

/* Keeps p (freed after the write); frees it and returns NULL when out of memory. */
static void *keep(exporter *x, void *p) {
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

/* The matrix as f32 rows (malloc'd), with an attached adapter merged. */
static float *to_f32(exporter *x, const av_mat *a, const av_linear *L, const char *name, av_status *st) {
    size_t n = (size_t)a->rows * (size_t)a->cols;
    float *f = malloc(n * sizeof(float));
    if (!f) { *st = av_fail(AV_ERR_NOMEM, "GGUF export: out of memory for '%s'", name); return NULL; }
    if (a->q_bits) {
        for (int r = 0; r < a->rows; r++)
            av_quant_dequant_row(f + (size_t)r * a->cols, a->data, a->scales, a->biases, a->dtype, r, a->cols, a->q_bits, a->q_group);
        x->r->n_dequantized++;
    } else {
        size_t es = av_dtype_size(a->dtype);
        void *c = (uintptr_t)a->data % es ? malloc(n * es) : NULL; /* MLX files put tensors at any byte offset */
        if ((uintptr_t)a->data % es && !c) { free(f); *st = av_fail(AV_ERR_NOMEM, "GGUF export: out of memory"); return NULL; }
        if (c) memcpy(c, a->data, n * es);
        av_convert_to_f32(f, c ? c : a->data, a->dtype, n);
        free(c);
    }
    if (L && L->lora_a) {
        int rk = L->rank;
        float *ha = malloc(sizeof(float) * (size_t)rk * a->cols), *hb = malloc(sizeof(float) * (size_t)a->rows * rk);
        if (!ha || !hb) {
            free(ha); free(hb); free(f);
            *st = av_fail(AV_ERR_NOMEM, "GGUF export: out of memory");
            return NULL;
        }
        x->m->be->download(ha, L->lora_a, sizeof(float) * (size_t)rk * a->cols);
        x->m->be->download(hb, L->lora_b, sizeof(float) * (size_t)a->rows * rk);
        av_lora_merge_f32(f, ha, hb, a->rows, a->cols, rk, L->scale);
        free(ha);
        free(hb);
        x->r->n_fused++;
    }
    return f;
}

/* Adds one tensor: vectors (rows = 1) as F32 1-D; matrices as the output type, rows permuted for Q/K. */
static av_status add(exporter *x, const char *name, const av_mat *a, const av_linear *L, int heads) {
    av_status st = AV_OK;
    float *f = to_f32(x, a, L, name, &st);
    if (!f) return st;
    int rows = a->rows, cols = a->cols;
    size_t n = (size_t)rows * cols;
    if (heads) { /* GGUF row h*hd + 2j + i = HF row h*hd + i*hd/2 + j */
        float *p = malloc(n * sizeof(float));
        if (!p) { free(f); return av_fail(AV_ERR_NOMEM, "GGUF export: out of memory"); }
        int hd = rows / heads;
        for (int h = 0; h < heads; h++)
            for (int j = 0; j < hd / 2; j++)
                for (int i = 0; i < 2; i++)
                    memcpy(p + ((size_t)h * hd + 2 * j + i) * cols, f + ((size_t)h * hd + i * (hd / 2) + j) * cols, (size_t)cols * sizeof(float));
        free(f);
        f = p;
    }
    int vec = rows == 1;
    int64_t ne[2] = {cols, rows};
    int type = vec ? AV_GGML_F32
               : x->out == AV_GGUF_OUT_F32 ? AV_GGML_F32 : x->out == AV_GGUF_OUT_F16 ? AV_GGML_F16
               : x->out == AV_GGUF_OUT_BF16 ? AV_GGML_BF16 : x->out == AV_GGUF_OUT_Q8_0 ? AV_GGML_Q8_0
               : x->out == AV_GGUF_OUT_Q4_0 ? AV_GGML_Q4_0 : x->out == AV_GGUF_OUT_Q4_K ? AV_GGML_Q4_K : AV_GGML_Q6_K;
    if ((type == AV_GGML_Q8_0 || type == AV_GGML_Q4_0 || type == AV_GGML_Q4_K || type == AV_GGML_Q6_K) && cols % av_ggml_block_size(type)) {
        type = AV_GGML_F16;
        x->r->n_fallback++;
    }
    size_t nb = n / (size_t)av_ggml_block_size(type) * (size_t)av_ggml_type_size(type);
    void *o = type == AV_GGML_F32 ? keep(x, f) : keep(x, malloc(nb));
    if (!o) {
        if (type != AV_GGML_F32) free(f);
        return av_fail(AV_ERR_NOMEM, "GGUF export: out of memory for '%s'", name);
    }
    if (type != AV_GGML_F32) {
        if (type == AV_GGML_F16) av_convert_from_f32(o, AV_F16, f, n);
        else if (type == AV_GGML_BF16) av_convert_from_f32(o, AV_BF16, f, n);
        else {
            for (int r = 0; r < rows; r++)
                av_gguf_quant_row((char *)o + (size_t)r * (nb / (size_t)rows), f + (size_t)r * cols, type, cols);
            x->r->n_quantized++;
        }
        free(f);
    }
    x->r->n_tensors++;
    return av_gguf_w_tensor(&x->w, name, type, vec ? 1 : 2, ne, o, nb);
}

/* Llama-3 rope scaling as llama.cpp reads it: the per-frequency divisors, F32 rope_freqs.weight */
static av_status rope_freqs(exporter *x, const av_model *m) {
    int half = m->cfg.head_dim / 2;
    float *f = keep(x, malloc(sizeof(float) * (size_t)half));
    if (!f) return av_fail(AV_ERR_NOMEM, "GGUF export: out of memory");
    if (m->rope_factors) memcpy(f, m->rope_factors, sizeof(float) * (size_t)half);
    else av_config_rope_factors(&m->cfg, f);
    int64_t ne[1] = {half};
    x->r->n_tensors++;
    return av_gguf_w_tensor(&x->w, "rope_freqs.weight", AV_GGML_F32, 1, ne, f, sizeof(float) * (size_t)half);
}

/* a byte-level BPE vocabulary's merges as "a b" strings, rank order */
static av_status bpe_merges(exporter *x, const av_tokenizer *t) {
    int32_t *pairs = NULL;
    int nm = 0;
    if (tk_merge_list(t, &pairs, &nm)) return av_fail(AV_ERR_NOMEM, "GGUF export: out of memory");
    const char **ms = calloc((size_t)nm + 1, sizeof *ms);
    size_t *ml = calloc((size_t)nm + 1, sizeof *ml);
    char *mem = NULL;
    size_t total = 0;
    for (int r = 0; r < nm; r++) {
        size_t la, lb;
        tk_piece(t, pairs[2 * r], &la);
        tk_piece(t, pairs[2 * r + 1], &lb);
        total += la + lb + 1;
    }
    av_status st = ms && ml && (mem = keep(x, malloc(total + 1))) ? AV_OK : av_fail(AV_ERR_NOMEM, "GGUF export: out of memory");
    size_t at = 0;
    for (int r = 0; r < nm && st == AV_OK; r++) {
        size_t la, lb;
        const char *a = tk_piece(t, pairs[2 * r], &la), *b = tk_piece(t, pairs[2 * r + 1], &lb);
        ms[r] = mem + at;
        memcpy(mem + at, a, la);
        mem[at + la] = ' ';
        memcpy(mem + at + la + 1, b, lb);
        ml[r] = la + lb + 1;
        at += ml[r];
    }
    if (st == AV_OK) st = av_gguf_w_arr_str(&x->w, "tokenizer.ggml.merges", ms, ml, (uint64_t)nm);
    free(pairs);
    free(ms);
    free(ml);
    return st;
}

/* tokenizer.ggml.*: SentencePiece ("llama": tokens, scores, types) or byte-level BPE ("gpt2":
 * tokens, types, merges, the pre-tokenizer's llama.cpp name); a short vocabulary padded as
 * convert_hf_to_gguf.py pads it */
static av_status vocab(exporter *x, const av_tokenizer *t, const av_config *c) {
    int spm = t->kind == TK_KIND_SPM;
    const char *pre = spm ? "default" : t->byte_level ? tk_gguf_pre_name(t) : NULL;
    if (!pre)
        return av_fail(AV_ERR_UNSUPPORTED, "GGUF export: the tokenizer's pre-tokenizer has no llama.cpp name (supported: SentencePiece, "
                                           "and byte-level BPE as llama-bpe, qwen2, smollm, gpt-2, default, deepseek-llm)");
    int n = c->vocab_size > t->n_vocab ? c->vocab_size : t->n_vocab;
    if (t->n_vocab > c->vocab_size)
        return av_fail(AV_ERR_SHAPE, "GGUF export: the tokenizer has %d tokens, the model's vocabulary only %d", t->n_vocab, c->vocab_size);
    const char **s = calloc((size_t)n, sizeof *s);
    size_t *len = calloc((size_t)n, sizeof *len);
    float *sc = calloc((size_t)n, sizeof *sc);
    int32_t *ty = calloc((size_t)n, sizeof *ty);
    char *pads = calloc((size_t)n, 16);
    av_status st = s && len && sc && ty && pads ? AV_OK : av_fail(AV_ERR_NOMEM, "GGUF export: out of memory");
    for (int i = 0; i < n && st == AV_OK; i++) {
        s[i] = i < t->n_vocab ? tk_piece(t, i, &len[i]) : NULL;
        if (s[i] && spm) {
            sc[i] = t->scores[i];
            ty[i] = t->types[i] ? t->types[i] : 1;
        } else if (s[i]) {
            ty[i] = 1; /* normal; added tokens below */
        } else { /* as convert_hf_to_gguf.py pads a short vocabulary */
            len[i] = (size_t)snprintf(pads + (size_t)i * 16, 16, "[PAD%d]", i);
            s[i] = pads + (size_t)i * 16;
            sc[i] = -1000.0f;
            ty[i] = spm ? 5 : 4;
        }
    }
    for (int k = 0; !spm && k < t->n_added; k++) /* control (special) or user-defined */
        if (t->added[k].id >= 0 && t->added[k].id < n) ty[t->added[k].id] = t->added[k].special ? 3 : 4;
    if (st == AV_OK) st = av_gguf_w_str(&x->w, "tokenizer.ggml.model", spm ? "llama" : "gpt2", spm ? 5 : 4);
    if (st == AV_OK) st = av_gguf_w_str(&x->w, "tokenizer.ggml.pre", pre, strlen(pre));
    if (st == AV_OK) st = av_gguf_w_arr_str(&x->w, "tokenizer.ggml.tokens", s, len, (uint64_t)n);
    if (st == AV_OK && spm) st = av_gguf_w_arr(&x->w, "tokenizer.ggml.scores", AV_GGUF_F32, sc, (uint64_t)n);
    if (st == AV_OK) st = av_gguf_w_arr(&x->w, "tokenizer.ggml.token_type", AV_GGUF_I32, ty, (uint64_t)n);
    if (st == AV_OK && !spm) st = bpe_merges(x, t);
    free(s); free(len); free(sc); free(ty); free(pads);
    AV_TRY(st);
    int bos = t->bos_id >= 0 ? t->bos_id : c->bos_token_id, eos = t->eos_id >= 0 ? t->eos_id : c->n_eos ? c->eos_token_ids[0] : -1;
    if (bos >= 0) AV_TRY(av_gguf_w_u32(&x->w, "tokenizer.ggml.bos_token_id", (uint32_t)bos));
    if (eos >= 0) AV_TRY(av_gguf_w_u32(&x->w, "tokenizer.ggml.eos_token_id", (uint32_t)eos));
    if (t->unk_id >= 0) AV_TRY(av_gguf_w_u32(&x->w, "tokenizer.ggml.unknown_token_id", (uint32_t)t->unk_id));
    AV_TRY(av_gguf_w_bool(&x->w, "tokenizer.ggml.add_bos_token", t->add_bos));
    return av_gguf_w_bool(&x->w, "tokenizer.ggml.add_eos_token", t->add_eos);
}

static av_status meta(exporter *x, const av_gguf_export_opts *o) {
    const av_config *c = &x->m->cfg;
    av_gguf_writer *w = &x->w;
    /* llama_ftype: ALL_F32, MOSTLY_F16, MOSTLY_BF16, MOSTLY_Q8_0, MOSTLY_Q4_0, MOSTLY_Q4_K_M (what
     * llama-quantize writes for "Q4_K", --pure included), MOSTLY_Q6_K */
    static const uint32_t ftype[] = {0, 1, 32, 7, 2, 15, 18};
    const char *name = o->name && *o->name ? o->name : "anvil export";
    AV_TRY(av_gguf_w_str(w, "general.architecture", "llama", 5));
    AV_TRY(av_gguf_w_str(w, "general.type", "model", 5));
    AV_TRY(av_gguf_w_str(w, "general.name", name, strlen(name)));
    AV_TRY(av_gguf_w_u32(w, "llama.block_count", (uint32_t)c->n_layers));
    AV_TRY(av_gguf_w_u32(w, "llama.context_length", (uint32_t)c->max_position_embeddings));
    AV_TRY(av_gguf_w_u32(w, "llama.embedding_length", (uint32_t)c->hidden_size));
    AV_TRY(av_gguf_w_u32(w, "llama.feed_forward_length", (uint32_t)c->intermediate_size));
    AV_TRY(av_gguf_w_u32(w, "llama.attention.head_count", (uint32_t)c->n_heads));
    AV_TRY(av_gguf_w_u32(w, "llama.attention.head_count_kv", (uint32_t)c->n_kv_heads));
    AV_TRY(av_gguf_w_f32(w, "llama.rope.freq_base", (float)c->rope_theta));
    AV_TRY(av_gguf_w_f32(w, "llama.attention.layer_norm_rms_epsilon", c->rms_norm_eps));
    AV_TRY(av_gguf_w_u32(w, "llama.attention.key_length", (uint32_t)c->head_dim));
    AV_TRY(av_gguf_w_u32(w, "llama.attention.value_length", (uint32_t)c->head_dim));
    AV_TRY(av_gguf_w_u32(w, "general.file_type", ftype[x->out]));
    AV_TRY(av_gguf_w_u32(w, "llama.vocab_size", (uint32_t)c->vocab_size));
    AV_TRY(av_gguf_w_u32(w, "llama.rope.dimension_count", (uint32_t)c->head_dim));
    if (c->rope_type == AV_ROPE_LINEAR) {
        AV_TRY(av_gguf_w_str(w, "llama.rope.scaling.type", "linear", 6));
        AV_TRY(av_gguf_w_f32(w, "llama.rope.scaling.factor", (float)c->rope_factor));
    }
    return av_gguf_w_u32(w, "general.quantization_version", 2);
}

av_status av_gguf_export(const av_model *m, const av_tokenizer *tok, const char *path, const av_gguf_export_opts *o,
                         av_gguf_export_report *r) {
    memset(r, 0, sizeof *r);
    const av_config *c = &m->cfg;
    if (o->outtype < 0 || o->outtype > AV_GGUF_OUT_Q6_K) return av_fail(AV_ERR_ARG, "GGUF export: unknown output type %d", o->outtype);
    if (!m->be->host_visible) return av_fail(AV_ERR_UNSUPPORTED, "GGUF export: load the model on the CPU (--device cpu)");
    if (!tok) return av_fail(AV_ERR_ARG, "GGUF export: a tokenizer is required");
    exporter x = {.m = m, .out = o->outtype, .r = r};
    av_gguf_writer_init(&x.w);
    av_status st = meta(&x, o);
    if (st == AV_OK) st = vocab(&x, tok, c);
    if (st == AV_OK && o->chat_template) st = av_gguf_w_str(&x.w, "tokenizer.chat_template", o->chat_template, strlen(o->chat_template));
    if (st == AV_OK) st = add(&x, "token_embd.weight", &m->embed, NULL, 0);
    char nm[96];
    for (int l = 0; l < c->n_layers && st == AV_OK; l++) {
        av_layer *L = &m->layers[l];
        snprintf(nm, sizeof nm, "blk.%d.attn_norm.weight", l);
        st = add(&x, nm, &L->attn_norm, NULL, 0);
        for (int p = 0; p < AV_PROJ_COUNT && st == AV_OK; p++) {
            const av_linear *lin = av_layer_proj(L, (av_proj)p);
            snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, av_gguf_proj_names[p]);
            st = add(&x, nm, &lin->w, lin, p == AV_PROJ_Q ? c->n_heads : p == AV_PROJ_K ? c->n_kv_heads : 0);
        }
        snprintf(nm, sizeof nm, "blk.%d.ffn_norm.weight", l);
        if (st == AV_OK) st = add(&x, nm, &L->mlp_norm, NULL, 0);
    }
    if (st == AV_OK) st = add(&x, "output_norm.weight", &m->final_norm, NULL, 0);
    if (st == AV_OK && !c->tie_word_embeddings) st = add(&x, "output.weight", &m->lm_head, NULL, 0);
    if (st == AV_OK && (m->rope_factors || c->rope_type == AV_ROPE_LLAMA3)) st = rope_freqs(&x, m);
    if (st == AV_OK) st = av_gguf_writer_write(&x.w, path);
    av_gguf_writer_free(&x.w);
    for (int i = 0; i < x.nkeep; i++) free(x.keep[i]);
    free(x.keep);
    return st;
}
