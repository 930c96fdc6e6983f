/* Writes an av_tokenizer as an HF tokenizer.json (the inverse of hf_json.c): BPE model (vocab,
 * merges in rank order), added tokens, normalizer, pre-tokenizer, decoder and the TemplateProcessing
 * post-processor, so a GGUF byte-level BPE vocabulary becomes a directory transformers and anvil read. */
#include "tokenizer/tok_internal.h"
#include "core/memory.h"
#include "core/status.h"
#include <stdlib.h>
#include <string.h>

/* the pairs of t->merges in rank order: pairs[2*r], pairs[2*r+1] (malloc'd), *n of them */
int tk_merge_list(const av_tokenizer *t, int32_t **pairs, int *n) {
    const tk_pairmap *m = &t->merges;
    int32_t max_rank = -1;
    for (uint32_t i = 0; m->keys && i <= m->mask; i++)
        if (m->keys[i] && m->rank[i] > max_rank) max_rank = m->rank[i];
    *n = 0;
    *pairs = malloc(sizeof(int32_t) * 2 * (size_t)(max_rank + 1) + 1);
    if (!*pairs) return -1;
    for (int32_t r = 0; r <= max_rank; r++) (*pairs)[2 * r] = -1;
    for (uint32_t i = 0; m->keys && i <= m->mask; i++) {
        if (!m->keys[i]) continue;
        uint64_t k = m->keys[i] - 1;
        (*pairs)[2 * m->rank[i]] = (int32_t)(k >> 32);
        (*pairs)[2 * m->rank[i] + 1] = (int32_t)(uint32_t)k;
    }
    int w = 0; /* ranks are dense when loaded from a file; compact any holes */
    for (int32_t r = 0; r <= max_rank; r++)
        if ((*pairs)[2 * r] >= 0) { (*pairs)[2 * w] = (*pairs)[2 * r]; (*pairs)[2 * w + 1] = (*pairs)[2 * r + 1]; w++; }
    *n = w;
    return 0;
}

static cJSON *piece_str(const av_tokenizer *t, int id) {
    size_t len = 0;
    const char *p = tk_piece(t, id, &len);
    char *s = malloc(len + 1);
    if (!s) return NULL;
    memcpy(s, p ? p : "", len);
    s[len] = 0;
    cJSON *j = cJSON_CreateString(s);
    free(s);
    return j;
}

static const char *scheme_name(int s) { return s == TK_SCHEME_FIRST ? "first" : s == TK_SCHEME_NEVER ? "never" : "always"; }

static cJSON *pattern(const char *s, int regex) {
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, regex ? "Regex" : "String", s);
    return p;
}

static cJSON *normalizer(const av_tokenizer *t) {
    if (!t->n_norm) return cJSON_CreateNull();
    cJSON *seq = cJSON_CreateArray();
    for (int i = 0; i < t->n_norm; i++) {
        const tk_norm *s = &t->norm[i];
        cJSON *o = cJSON_CreateObject();
        if (s->type == TK_NORM_PREPEND) {
            cJSON_AddStringToObject(o, "type", "Prepend");
            cJSON_AddStringToObject(o, "prepend", s->a);
        } else if (s->type == TK_NORM_REPLACE) {
            cJSON_AddStringToObject(o, "type", "Replace");
            cJSON_AddItemToObject(o, "pattern", pattern(s->a, 0));
            cJSON_AddStringToObject(o, "content", s->b);
        } else {
            cJSON_AddStringToObject(o, "type", "NFC");
        }
        cJSON_AddItemToArray(seq, o);
    }
    cJSON *n = cJSON_CreateObject();
    cJSON_AddStringToObject(n, "type", "Sequence");
    cJSON_AddItemToObject(n, "normalizers", seq);
    return n;
}

static av_status pre_tokenizer(const av_tokenizer *t, cJSON **out) {
    if (!t->n_pre) { *out = cJSON_CreateNull(); return AV_OK; }
    cJSON *seq = cJSON_CreateArray();
    static const char *beh[] = {"Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
    for (int i = 0; i < t->n_pre; i++) {
        const tk_pretok *s = &t->pre[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToArray(seq, o);
        if (s->type == TK_PRE_METASPACE) {
            cJSON_AddStringToObject(o, "type", "Metaspace");
            cJSON_AddStringToObject(o, "replacement", s->repl);
            cJSON_AddStringToObject(o, "prepend_scheme", scheme_name(s->scheme));
            cJSON_AddBoolToObject(o, "split", s->split);
        } else if (s->type == TK_PRE_BYTELEVEL) {
            cJSON_AddStringToObject(o, "type", "ByteLevel");
            cJSON_AddBoolToObject(o, "add_prefix_space", s->add_prefix_space);
            cJSON_AddBoolToObject(o, "trim_offsets", 1);
            cJSON_AddBoolToObject(o, "use_regex", s->use_regex);
        } else if (s->type == TK_PRE_DIGITS) {
            cJSON_AddStringToObject(o, "type", "Digits");
            cJSON_AddBoolToObject(o, "individual_digits", s->individual);
        } else {
            char buf[2048];
            const char *rx = s->regex == TK_RX_NONE ? NULL : tk_rx_string(s->regex, s->rx_digits, buf, sizeof buf);
            if (s->regex != TK_RX_NONE && !rx) { cJSON_Delete(seq); return av_fail(AV_ERR_UNSUPPORTED, "tokenizer.json: a split regex cannot be written"); }
            cJSON_AddStringToObject(o, "type", "Split");
            cJSON_AddItemToObject(o, "pattern", pattern(rx ? rx : s->literal, rx != NULL));
            cJSON_AddStringToObject(o, "behavior", beh[s->behavior >= 0 && s->behavior < 5 ? s->behavior : 0]);
            cJSON_AddBoolToObject(o, "invert", 0);
        }
    }
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "type", "Sequence");
    cJSON_AddItemToObject(p, "pretokenizers", seq);
    *out = p;
    return AV_OK;
}

static cJSON *decoder(const av_tokenizer *t) {
    if (!t->n_dec) return cJSON_CreateNull();
    cJSON *seq = cJSON_CreateArray();
    for (int i = 0; i < t->n_dec; i++) {
        const tk_dec *s = &t->dec[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToArray(seq, o);
        switch (s->type) {
        case TK_DEC_REPLACE:
            cJSON_AddStringToObject(o, "type", "Replace");
            cJSON_AddItemToObject(o, "pattern", pattern(s->a, 0));
            cJSON_AddStringToObject(o, "content", s->b);
            break;
        case TK_DEC_BYTEFALLBACK: cJSON_AddStringToObject(o, "type", "ByteFallback"); break;
        case TK_DEC_FUSE: cJSON_AddStringToObject(o, "type", "Fuse"); break;
        case TK_DEC_STRIP:
            cJSON_AddStringToObject(o, "type", "Strip");
            cJSON_AddStringToObject(o, "content", s->a);
            cJSON_AddNumberToObject(o, "start", s->start);
            cJSON_AddNumberToObject(o, "stop", s->stop);
            break;
        case TK_DEC_METASPACE:
            cJSON_AddStringToObject(o, "type", "Metaspace");
            cJSON_AddStringToObject(o, "replacement", s->a);
            cJSON_AddStringToObject(o, "prepend_scheme", scheme_name(s->scheme));
            cJSON_AddBoolToObject(o, "split", 1);
            break;
        default:
            cJSON_AddStringToObject(o, "type", "ByteLevel");
            cJSON_AddBoolToObject(o, "add_prefix_space", 1);
            cJSON_AddBoolToObject(o, "trim_offsets", 1);
            cJSON_AddBoolToObject(o, "use_regex", 1);
        }
    }
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "type", "Sequence");
    cJSON_AddItemToObject(d, "decoders", seq);
    return d;
}

static cJSON *special_item(const char *name) {
    cJSON *o = cJSON_CreateObject(), *q = cJSON_CreateObject();
    cJSON_AddStringToObject(q, "id", name);
    cJSON_AddNumberToObject(q, "type_id", 0);
    cJSON_AddItemToObject(o, "SpecialToken", q);
    return o;
}

static cJSON *sequence_item(const char *ab) {
    cJSON *o = cJSON_CreateObject(), *q = cJSON_CreateObject();
    cJSON_AddStringToObject(q, "id", ab);
    cJSON_AddNumberToObject(q, "type_id", 0);
    cJSON_AddItemToObject(o, "Sequence", q);
    return o;
}

/* TemplateProcessing: single = prefix ids, $A, suffix ids; pair = that, then the same around $B */
static cJSON *post_processor(const av_tokenizer *t) {
    cJSON *p = cJSON_CreateObject(), *single = cJSON_CreateArray(), *pair = cJSON_CreateArray(), *sp = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "type", "TemplateProcessing");
    for (int seq = 0; seq < 2; seq++)
        for (int part = 0; part < 3; part++) {
            if (part == 1) {
                if (!seq) cJSON_AddItemToArray(single, sequence_item("A"));
                cJSON_AddItemToArray(pair, sequence_item(seq ? "B" : "A"));
                continue;
            }
            const int32_t *ids = part ? t->suffix_ids : t->prefix_ids;
            int n = part ? t->n_suffix : t->n_prefix;
            for (int i = 0; i < n; i++) {
                cJSON *name = piece_str(t, ids[i]);
                const char *nm = name ? name->valuestring : "";
                if (!seq) cJSON_AddItemToArray(single, special_item(nm));
                cJSON_AddItemToArray(pair, special_item(nm));
                if (!cJSON_GetObjectItemCaseSensitive(sp, nm)) {
                    cJSON *e = cJSON_CreateObject(), *eid = cJSON_CreateArray(), *etok = cJSON_CreateArray();
                    cJSON_AddStringToObject(e, "id", nm);
                    cJSON_AddItemToArray(eid, cJSON_CreateNumber(ids[i]));
                    cJSON_AddItemToArray(etok, cJSON_CreateString(nm));
                    cJSON_AddItemToObject(e, "ids", eid);
                    cJSON_AddItemToObject(e, "tokens", etok);
                    cJSON_AddItemToObject(sp, nm, e);
                }
                cJSON_Delete(name);
            }
        }
    cJSON_AddItemToObject(p, "single", single);
    cJSON_AddItemToObject(p, "pair", pair);
    cJSON_AddItemToObject(p, "special_tokens", sp);
    return p;
}

av_status tk_write_tokenizer_json(const av_tokenizer *t, const char *path) {
    if (t->kind != TK_KIND_HF) return av_fail(AV_ERR_UNSUPPORTED, "%s: only BPE vocabularies are written as tokenizer.json", path);
    cJSON *j = cJSON_CreateObject(), *added = cJSON_CreateArray(), *pre = NULL;
    av_status st = pre_tokenizer(t, &pre);
    if (st) { cJSON_Delete(j); cJSON_Delete(added); return st; }
    cJSON_AddStringToObject(j, "version", "1.0");
    cJSON_AddNullToObject(j, "truncation");
    cJSON_AddNullToObject(j, "padding");
    for (int i = 0; i < t->n_added; i++) {
        const tk_added *a = &t->added[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "id", a->id);
        char *c = malloc((size_t)a->len + 1);
        if (c) { memcpy(c, a->content, (size_t)a->len); c[a->len] = 0; }
        cJSON_AddStringToObject(o, "content", c ? c : "");
        free(c);
        cJSON_AddBoolToObject(o, "single_word", a->single_word);
        cJSON_AddBoolToObject(o, "lstrip", a->lstrip);
        cJSON_AddBoolToObject(o, "rstrip", a->rstrip);
        cJSON_AddBoolToObject(o, "normalized", a->normalized);
        cJSON_AddBoolToObject(o, "special", a->special);
        cJSON_AddItemToArray(added, o);
    }
    cJSON_AddItemToObject(j, "added_tokens", added);
    cJSON_AddItemToObject(j, "normalizer", normalizer(t));
    cJSON_AddItemToObject(j, "pre_tokenizer", pre);
    cJSON_AddItemToObject(j, "post_processor", post_processor(t));
    cJSON_AddItemToObject(j, "decoder", decoder(t));
    cJSON *model = cJSON_CreateObject(), *vocab = cJSON_CreateObject(), *merges = cJSON_CreateArray();
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    if (t->unk_id >= 0) cJSON_AddItemToObject(model, "unk_token", piece_str(t, t->unk_id));
    else cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddBoolToObject(model, "fuse_unk", t->fuse_unk);
    cJSON_AddBoolToObject(model, "byte_fallback", t->byte_fallback);
    cJSON_AddBoolToObject(model, "ignore_merges", t->ignore_merges);
    for (int id = 0; id < t->n_vocab; id++) { /* the model's own pieces (added tokens are listed above) */
        size_t len;
        const char *p = tk_piece(t, id, &len);
        if (!p || tk_strmap_get(&t->vocab, p, len) != id) continue;
        cJSON *s = piece_str(t, id);
        if (s) { cJSON_AddNumberToObject(vocab, s->valuestring, id); cJSON_Delete(s); }
    }
    int32_t *pairs = NULL;
    int nm = 0;
    if (tk_merge_list(t, &pairs, &nm)) st = av_fail(AV_ERR_NOMEM, "out of memory");
    for (int r = 0; r < nm && !st; r++) {
        cJSON *m = cJSON_CreateArray();
        cJSON_AddItemToArray(m, piece_str(t, pairs[2 * r]));
        cJSON_AddItemToArray(m, piece_str(t, pairs[2 * r + 1]));
        cJSON_AddItemToArray(merges, m);
    }
    free(pairs);
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON_AddItemToObject(model, "merges", merges);
    cJSON_AddItemToObject(j, "model", model);
    char *txt = st ? NULL : cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!st && !txt) st = av_fail(AV_ERR_NOMEM, "out of memory");
    if (!st) st = av_write_file_atomic(path, txt, strlen(txt));
    free(txt);
    return st;
}
