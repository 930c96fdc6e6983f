/* Tokenizer front: loads tokenizer.json (or tokenizer.model) plus tokenizer_config.json, decides
 * BOS/EOS, splits text on added/special tokens (leftmost-longest, lstrip/rstrip/single_word) before
 * the model, and implements encode/decode and the id/piece accessors of tokenizer.h. */
#include "tokenizer/tok_internal.h"
#include "core/memory.h"
#include "core/status.h"
#include "formats/gguf.h"
#include <stdlib.h>
#include <string.h>

const char *tk_piece(const av_tokenizer *t, int id, size_t *len) {
    if (!t || id < 0 || id >= t->n_vocab || t->piece_off[id] == UINT32_MAX) return NULL;
    if (len) *len = t->piece_len[id];
    return t->piece_mem + t->piece_off[id];
}

static const char *token_content(const cJSON *c, const char *key) {
    const cJSON *v = av_json_get(c, key);
    if (cJSON_IsString(v)) return v->valuestring;
    return av_json_str(v, "content", NULL);
}

static char *dupstr(const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static int find_added_id(const av_tokenizer *t, const char *s) {
    size_t n = strlen(s);
    for (int i = 0; i < t->n_added; i++)
        if ((size_t)t->added[i].len == n && !memcmp(t->added[i].content, s, n)) return t->added[i].id;
    return -1;
}

int av_tokenizer_token_id(const av_tokenizer *t, const char *piece) {
    if (!t || !piece) return -1;
    int id = find_added_id(t, piece);
    return id >= 0 ? id : tk_strmap_get(&t->vocab, piece, strlen(piece));
}

static av_status apply_config(av_tokenizer *t, const char *dir) {
    char path[4096];
    av_path_join(path, sizeof path, dir, "tokenizer_config.json");
    cJSON *cfg = NULL;
    int cfg_bos = -1, cfg_eos = -1;
    if (av_file_exists(path)) {
        AV_TRY(av_json_load(path, &cfg));
        const char *b = token_content(cfg, "bos_token"), *e = token_content(cfg, "eos_token");
        if (b && !(t->bos_str = dupstr(b))) goto oom;
        if (e && !(t->eos_str = dupstr(e))) goto oom;
        cfg_bos = av_json_bool(cfg, "add_bos_token", -1);
        cfg_eos = av_json_bool(cfg, "add_eos_token", -1);
        cJSON_Delete(cfg);
        cfg = NULL;
    }
    if (t->bos_str) t->bos_id = av_tokenizer_token_id(t, t->bos_str);
    if (t->eos_str) t->eos_id = av_tokenizer_token_id(t, t->eos_str);
    if (t->kind == TK_KIND_HF && !t->bos_str && t->n_prefix == 1) t->bos_id = t->prefix_ids[0];
    if (!t->bos_str && t->bos_id >= 0) t->bos_str = dupstr(tk_piece(t, t->bos_id, NULL));
    if (!t->eos_str && t->eos_id >= 0) t->eos_str = dupstr(tk_piece(t, t->eos_id, NULL));
    if (t->kind == TK_KIND_SPM) {
        t->add_bos = cfg_bos != 0 && t->bos_id >= 0;
        t->add_eos = cfg_eos == 1 && t->eos_id >= 0;
        t->n_prefix = t->n_suffix = 0;
        if (t->add_bos) t->prefix_ids[t->n_prefix++] = t->bos_id;
        if (t->add_eos) t->suffix_ids[t->n_suffix++] = t->eos_id;
    } else {
        /* an explicit add_bos_token / add_eos_token overrides the post-processor, as transformers does */
        if (cfg_bos == 0 || cfg_bos == 1) {
            int k = 0;
            for (int i = 0; i < t->n_prefix; i++) if (t->prefix_ids[i] != t->bos_id) t->prefix_ids[k++] = t->prefix_ids[i];
            t->n_prefix = k;
            if (cfg_bos == 1 && t->bos_id >= 0 && k < 8) {
                memmove(t->prefix_ids + 1, t->prefix_ids, (size_t)k * sizeof *t->prefix_ids);
                t->prefix_ids[0] = t->bos_id;
                t->n_prefix++;
            }
        }
        if (cfg_eos == 0 || cfg_eos == 1) {
            int k = 0;
            for (int i = 0; i < t->n_suffix; i++) if (t->suffix_ids[i] != t->eos_id) t->suffix_ids[k++] = t->suffix_ids[i];
            t->n_suffix = k;
            if (cfg_eos == 1 && t->eos_id >= 0 && k < 8) t->suffix_ids[t->n_suffix++] = t->eos_id;
        }
        for (int i = 0; i < t->n_prefix; i++) t->add_bos |= t->prefix_ids[i] == t->bos_id;
        for (int i = 0; i < t->n_suffix; i++) t->add_eos |= t->suffix_ids[i] == t->eos_id;
    }
    for (int i = 0; i < t->n_prefix; i++)
        if (t->prefix_ids[i] < 0 || t->prefix_ids[i] >= t->n_vocab) return av_fail(AV_ERR_FORMAT, "%s: post-processor id %d out of range", dir, t->prefix_ids[i]);
    for (int i = 0; i < t->n_suffix; i++)
        if (t->suffix_ids[i] < 0 || t->suffix_ids[i] >= t->n_vocab) return av_fail(AV_ERR_FORMAT, "%s: post-processor id %d out of range", dir, t->suffix_ids[i]);
    return AV_OK;
oom:
    cJSON_Delete(cfg);
    return av_fail(AV_ERR_NOMEM, "%s: out of memory", path);
}

av_tokenizer *tk_new(void) {
    av_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    memset(t->byte_id, 0xFF, sizeof t->byte_id);
    t->unk_id = t->bos_id = t->eos_id = -1;
    return t;
}

av_status av_tokenizer_load(av_tokenizer **out, const char *dir, int force_spm) {
    *out = NULL;
    int gguf = dir && av_file_exists(dir);
    if (!dir || (!gguf && !av_dir_exists(dir))) return av_fail(AV_ERR_IO, "%s: no such directory or GGUF file", dir ? dir : "(null)");
    av_tokenizer *t = tk_new();
    if (!t) return av_fail(AV_ERR_NOMEM, "%s: out of memory", dir);
    if (gguf) {
        av_status st = tk_gguf_load(t, dir);
        if (st) { av_tokenizer_free(t); return st; }
        *out = t;
        return AV_OK;
    }
    char js[4096], sp[4096];
    av_path_join(js, sizeof js, dir, "tokenizer.json");
    av_path_join(sp, sizeof sp, dir, "tokenizer.model");
    av_status st;
    if (!force_spm && av_file_exists(js)) st = tk_hf_load(t, js);
    else if (av_file_exists(sp)) st = tk_spm_load(t, sp);
    else st = av_fail(AV_ERR_IO, "%s: no %s", dir, force_spm ? "tokenizer.model" : "tokenizer.json or tokenizer.model");
    if (!st) st = apply_config(t, dir);
    if (st) { av_tokenizer_free(t); return st; }
    *out = t;
    return AV_OK;
}

void av_tokenizer_free(av_tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < t->n_norm; i++) { free(t->norm[i].a); free(t->norm[i].b); }
    for (int i = 0; i < t->n_pre; i++) { free(t->pre[i].repl); free(t->pre[i].literal); }
    for (int i = 0; i < t->n_dec; i++) { free(t->dec[i].a); free(t->dec[i].b); }
    free(t->piece_mem); free(t->piece_off); free(t->piece_len); free(t->special);
    tk_strmap_free(&t->vocab);
    tk_pairmap_free(&t->merges);
    free(t->added); free(t->scores); free(t->types); free(t->user_ids);
    free(t->bos_str); free(t->eos_str);
    free(t);
}

/* ---- added tokens -------------------------------------------------------------------------- */
static int is_word_char(uint32_t c) { return tk_is_letter(c) || tk_is_number(c) || c == '_'; }

static int ends_with_word(const char *s, size_t n) {
    if (!n) return 0;
    size_t i = n - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    uint32_t c;
    tk_utf8_next(s, n, i, &c);
    return is_word_char(c);
}

/* Leftmost-longest added token in s[from..n) among tokens with the given `normalized` flag.
 * Reports the match widened by lstrip/rstrip. Returns 1 if found. */
int tk_added_find(const av_tokenizer *t, const char *s, size_t n, size_t from, int normalized,
                  size_t *ms, size_t *me, int *id) {
    if (!t->n_added) return 0;
    for (size_t i = from; i < n; i++) {
        int best = -1;
        for (int k = 0; k < t->n_added; k++) {
            const tk_added *a = &t->added[k];
            if (a->normalized != normalized || a->content[0] != s[i] || (size_t)a->len > n - i) continue;
            if ((best < 0 || a->len > t->added[best].len) && !memcmp(s + i, a->content, (size_t)a->len)) best = k;
        }
        if (best < 0) continue;
        const tk_added *a = &t->added[best];
        size_t st = i, en = i + (size_t)a->len;
        if (a->single_word) {
            uint32_t c = 0;
            int after = en < n && (tk_utf8_next(s, n, en, &c), is_word_char(c));
            if (ends_with_word(s, st) || after) { i = en - 1; continue; }
        }
        if (a->lstrip) {
            while (st > from) {
                size_t p = st - 1;
                while (p > from && ((unsigned char)s[p] & 0xC0) == 0x80) p--;
                uint32_t c;
                tk_utf8_next(s, n, p, &c);
                if (!tk_is_space(c)) break;
                st = p;
            }
        }
        if (a->rstrip) {
            while (en < n) {
                uint32_t c;
                int l = tk_utf8_next(s, n, en, &c);
                if (!tk_is_space(c)) break;
                en += (size_t)l;
            }
        }
        *ms = st; *me = en; *id = a->id;
        return 1;
    }
    return 0;
}

/* ---- encode / decode ----------------------------------------------------------------------- */
av_status av_tokenizer_encode(const av_tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids, int *n) {
    *ids = NULL;
    *n = 0;
    if (!t || (!text && len)) return av_fail(AV_ERR_ARG, "tokenizer encode: no text");
    tk_ids out = {0};
    tk_buf clean = {0};
    int rc = 0;
    if (add_special)
        for (int i = 0; i < t->n_prefix && !rc; i++) rc = tk_ids_push(&out, t->prefix_ids[i]);
    /* invalid UTF-8 bytes become U+FFFD, as a text string would carry them */
    size_t i = 0;
    while (i < len) { int l = tk_utf8_valid_len((const unsigned char *)text, len, i); if (!l) break; i += (size_t)l; }
    if (i < len) {
        if (tk_lossy_append(&clean, (const unsigned char *)text, len, 0) != len) rc = -1;
        text = clean.p;
        len = clean.n;
    }
    if (!rc && t->kind == TK_KIND_SPM) {
        rc = tk_spm_encode(t, text, len, &out);
    } else if (!rc) {
        size_t pos = 0, ms, me;
        int id;
        while (!rc && pos < len) {
            if (!tk_added_find(t, text, len, pos, 0, &ms, &me, &id)) ms = me = len, id = -1;
            if (ms > pos) rc = tk_hf_encode_segment(t, text + pos, ms - pos, pos == 0, &out);
            if (!rc && id >= 0) rc = tk_ids_push(&out, id);
            pos = me;
        }
    }
    if (add_special)
        for (int k = 0; k < t->n_suffix && !rc; k++) rc = tk_ids_push(&out, t->suffix_ids[k]);
    free(clean.p);
    if (rc) { free(out.v); return av_fail(AV_ERR_NOMEM, "tokenizer encode: out of memory"); }
    if (!out.v && !(out.v = malloc(sizeof *out.v))) return av_fail(AV_ERR_NOMEM, "tokenizer encode: out of memory");
    *ids = out.v;
    *n = out.n;
    return AV_OK;
}

av_status av_tokenizer_decode(const av_tokenizer *t, const int32_t *ids, int n, int skip_special, char **out) {
    *out = NULL;
    if (!t || n < 0 || (n && !ids)) return av_fail(AV_ERR_ARG, "tokenizer decode: bad arguments");
    int32_t *keep = malloc(((size_t)n + 1) * sizeof *keep);
    if (!keep) return av_fail(AV_ERR_NOMEM, "tokenizer decode: out of memory");
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab) { free(keep); return av_fail(AV_ERR_ARG, "tokenizer decode: id %d out of range [0, %d)", ids[i], t->n_vocab); }
        if (skip_special && t->special[ids[i]]) continue;
        keep[k++] = ids[i];
    }
    tk_buf raw = {0}, txt = {0};
    int is_raw, rc = tk_decode_chunk(t, keep, k, 1, &raw, &is_raw);
    free(keep);
    if (!rc && is_raw) {
        if (tk_lossy_append(&txt, (const unsigned char *)raw.p, raw.n, 0) != raw.n || tk_buf_put(&txt, "", 0)) rc = -1;
        free(raw.p);
        raw = txt;
    }
    if (!rc && tk_buf_put(&raw, "", 0)) rc = -1;
    if (rc) { free(raw.p); return av_fail(AV_ERR_NOMEM, "tokenizer decode: out of memory"); }
    *out = raw.p;
    return AV_OK;
}

int av_tokenizer_vocab_size(const av_tokenizer *t) { return t ? t->n_vocab : 0; }
int av_tokenizer_bos_id(const av_tokenizer *t) { return t ? t->bos_id : -1; }
int av_tokenizer_eos_id(const av_tokenizer *t) { return t ? t->eos_id : -1; }
const char *av_tokenizer_bos_str(const av_tokenizer *t) { return t ? t->bos_str : NULL; }
const char *av_tokenizer_eos_str(const av_tokenizer *t) { return t ? t->eos_str : NULL; }
const char *av_tokenizer_piece(const av_tokenizer *t, int id) { return tk_piece(t, id, NULL); }
int av_tokenizer_is_special(const av_tokenizer *t, int id) { return t && id >= 0 && id < t->n_vocab && t->special[id]; }
