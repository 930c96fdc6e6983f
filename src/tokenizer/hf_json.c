/* Reads an HF tokenizer.json into av_tokenizer: model (BPE vocab + merges in "a b" or ["a","b"]
 * form), added_tokens, normalizer, pre_tokenizer, decoder and the TemplateProcessing post-processor.
 * Anything outside the supported subset fails with AV_ERR_UNSUPPORTED naming the component. */
#include "tokenizer/tok_internal.h"
#include "core/status.h"
#include "core/memory.h"
#include <stdlib.h>
#include <string.h>

#define FAIL_FMT(...) av_fail(AV_ERR_FORMAT, __VA_ARGS__)
#define FAIL_UNS(...) av_fail(AV_ERR_UNSUPPORTED, __VA_ARGS__)

static char *dupstr(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static const char *type_of(const cJSON *o) { return av_json_str(o, "type", ""); }

/* pattern {"String": s} -> s; Regex -> NULL with *is_regex */
static const char *pattern_of(const cJSON *o, int *is_regex) {
    const cJSON *p = av_json_get(o, "pattern");
    *is_regex = 0;
    if (cJSON_IsString(p)) return p->valuestring;
    const char *s = av_json_str(p, "String", NULL);
    if (s) return s;
    s = av_json_str(p, "Regex", NULL);
    if (s) *is_regex = 1;
    return s;
}

static av_status add_norm(av_tokenizer *t, const cJSON *n, const char *path) {
    if (!n) return AV_OK;
    const char *ty = type_of(n);
    if (!strcmp(ty, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, av_json_get(n, "normalizers")) AV_TRY(add_norm(t, it, path));
        return AV_OK;
    }
    if (t->n_norm >= TK_MAX_STEPS) return FAIL_UNS("%s: too many normalizer steps", path);
    tk_norm *s = &t->norm[t->n_norm];
    memset(s, 0, sizeof *s);
    if (!strcmp(ty, "Prepend")) {
        s->type = TK_NORM_PREPEND;
        s->a = dupstr(av_json_str(n, "prepend", ""));
    } else if (!strcmp(ty, "Replace")) {
        int rx;
        const char *pat = pattern_of(n, &rx);
        if (!pat || rx) return FAIL_UNS("%s: normalizer Replace with a regex pattern is not supported", path);
        if (!*pat) return FAIL_FMT("%s: normalizer Replace has an empty pattern", path);
        s->type = TK_NORM_REPLACE;
        s->a = dupstr(pat);
        s->b = dupstr(av_json_str(n, "content", ""));
    } else if (!strcmp(ty, "NFC")) {
        s->type = TK_NORM_NFC;
    } else {
        return FAIL_UNS("%s: normalizer type '%s' is not supported", path, ty);
    }
    t->n_norm++;
    return AV_OK;
}

static int prepend_scheme(const cJSON *o) {
    const char *ps = av_json_str(o, "prepend_scheme", NULL);
    if (ps) return !strcmp(ps, "first") ? TK_SCHEME_FIRST : !strcmp(ps, "never") ? TK_SCHEME_NEVER : TK_SCHEME_ALWAYS;
    return av_json_bool(o, "add_prefix_space", 1) ? TK_SCHEME_ALWAYS : TK_SCHEME_NEVER;
}

static av_status add_pre(av_tokenizer *t, const cJSON *p, const char *path) {
    if (!p) return AV_OK;
    const char *ty = type_of(p);
    if (!strcmp(ty, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, av_json_get(p, "pretokenizers")) AV_TRY(add_pre(t, it, path));
        return AV_OK;
    }
    if (t->n_pre >= TK_MAX_STEPS) return FAIL_UNS("%s: too many pre_tokenizer steps", path);
    tk_pretok *s = &t->pre[t->n_pre];
    memset(s, 0, sizeof *s);
    if (!strcmp(ty, "Metaspace")) {
        s->type = TK_PRE_METASPACE;
        s->repl = dupstr(av_json_str(p, "replacement", "\xE2\x96\x81"));
        s->scheme = prepend_scheme(p);
        s->split = av_json_bool(p, "split", 1);
    } else if (!strcmp(ty, "ByteLevel")) {
        s->type = TK_PRE_BYTELEVEL;
        s->add_prefix_space = av_json_bool(p, "add_prefix_space", 1);
        s->use_regex = av_json_bool(p, "use_regex", 1);
        t->byte_level = 1;
    } else if (!strcmp(ty, "Split")) {
        int rx;
        const char *pat = pattern_of(p, &rx);
        if (!pat) return FAIL_FMT("%s: Split pre-tokenizer without a pattern", path);
        s->type = TK_PRE_SPLIT;
        if (rx) {
            s->regex = tk_rx_parse(pat, &s->rx_digits);
            if (s->regex == TK_RX_NONE) return FAIL_UNS("%s: Split regex '%.60s' is not supported", path, pat);
        } else {
            if (!*pat) return FAIL_FMT("%s: Split pre-tokenizer has an empty pattern", path);
            s->literal = dupstr(pat);
        }
        const char *b = av_json_str(p, "behavior", "Isolated");
        s->behavior = !strcmp(b, "Removed") ? TK_SPLIT_REMOVED : !strcmp(b, "MergedWithPrevious") ? TK_SPLIT_MERGED_PREV
                    : !strcmp(b, "MergedWithNext") ? TK_SPLIT_MERGED_NEXT : !strcmp(b, "Contiguous") ? TK_SPLIT_CONTIGUOUS
                    : TK_SPLIT_ISOLATED;
        s->invert = av_json_bool(p, "invert", 0);
        if (s->invert) return FAIL_UNS("%s: inverted Split pre-tokenizer is not supported", path);
    } else if (!strcmp(ty, "Digits")) {
        s->type = TK_PRE_DIGITS;
        s->individual = av_json_bool(p, "individual_digits", 0);
    } else {
        return FAIL_UNS("%s: pre_tokenizer type '%s' is not supported", path, ty);
    }
    t->n_pre++;
    return AV_OK;
}

static av_status add_dec(av_tokenizer *t, const cJSON *d, const char *path) {
    if (!d) return AV_OK;
    const char *ty = type_of(d);
    if (!strcmp(ty, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, av_json_get(d, "decoders")) AV_TRY(add_dec(t, it, path));
        return AV_OK;
    }
    if (t->n_dec >= TK_MAX_STEPS) return FAIL_UNS("%s: too many decoder steps", path);
    tk_dec *s = &t->dec[t->n_dec];
    memset(s, 0, sizeof *s);
    if (!strcmp(ty, "Replace")) {
        int rx;
        const char *pat = pattern_of(d, &rx);
        if (!pat || rx || !*pat) return FAIL_UNS("%s: decoder Replace needs a string pattern", path);
        s->type = TK_DEC_REPLACE;
        s->a = dupstr(pat);
        s->b = dupstr(av_json_str(d, "content", ""));
    } else if (!strcmp(ty, "ByteFallback")) {
        s->type = TK_DEC_BYTEFALLBACK;
    } else if (!strcmp(ty, "Fuse")) {
        s->type = TK_DEC_FUSE;
    } else if (!strcmp(ty, "Strip")) {
        s->type = TK_DEC_STRIP;
        s->a = dupstr(av_json_str(d, "content", " "));
        s->start = (int)av_json_num(d, "start", 0);
        s->stop = (int)av_json_num(d, "stop", 0);
    } else if (!strcmp(ty, "ByteLevel")) {
        s->type = TK_DEC_BYTELEVEL;
    } else if (!strcmp(ty, "Metaspace")) {
        s->type = TK_DEC_METASPACE;
        s->a = dupstr(av_json_str(d, "replacement", "\xE2\x96\x81"));
        s->scheme = prepend_scheme(d);
    } else {
        return FAIL_UNS("%s: decoder type '%s' is not supported", path, ty);
    }
    t->n_dec++;
    return AV_OK;
}

static av_status add_post(av_tokenizer *t, const cJSON *p, const char *path) {
    if (!p) return AV_OK;
    const char *ty = type_of(p);
    if (!strcmp(ty, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, av_json_get(p, "processors")) AV_TRY(add_post(t, it, path));
        return AV_OK;
    }
    if (strcmp(ty, "TemplateProcessing")) return AV_OK; /* ByteLevel etc. only touch offsets */
    const cJSON *single = av_json_get(p, "single"), *specials = av_json_get(p, "special_tokens"), *it;
    int seen_seq = 0;
    t->n_prefix = t->n_suffix = 0;
    cJSON_ArrayForEach(it, single) {
        if (av_json_get(it, "Sequence")) { seen_seq = 1; continue; }
        const char *name = av_json_str(av_json_get(it, "SpecialToken"), "id", NULL);
        if (!name) return FAIL_FMT("%s: post_processor template item without a token", path);
        const cJSON *ids = av_json_get(av_json_get(specials, name), "ids"), *x;
        if (!cJSON_IsArray(ids)) return FAIL_FMT("%s: post_processor special token '%s' has no ids", path, name);
        cJSON_ArrayForEach(x, ids) {
            int32_t *dst = seen_seq ? t->suffix_ids : t->prefix_ids;
            int *cnt = seen_seq ? &t->n_suffix : &t->n_prefix;
            if (*cnt >= 8 || !cJSON_IsNumber(x)) return FAIL_UNS("%s: post_processor template too long", path);
            dst[(*cnt)++] = (int32_t)x->valueint;
        }
    }
    return AV_OK;
}

/* model.vocab / model.merges, already decoded by hf_fast.c */
typedef struct { tk_buf vmem, mmem; tk_ids voff, vlen, vid, mq; } fast_parts;

int tk_fast_spans(const char *s, size_t n, size_t sp[4]);
int tk_fast_vocab(const char *s, size_t n, tk_buf *mem, tk_ids *off, tk_ids *len, tk_ids *ids);
int tk_fast_merges(const char *s, size_t n, tk_buf *mem, tk_ids *q);

static av_status load_model(av_tokenizer *t, const cJSON *root, fast_parts *fp, const char *path) {
    const cJSON *m = av_json_get(root, "model");
    if (!cJSON_IsObject(m)) return FAIL_FMT("%s: no \"model\" object", path);
    const char *ty = av_json_str(m, "type", "BPE");
    if (strcmp(ty, "BPE")) return FAIL_UNS("%s: model type '%s' is not supported (only BPE)", path, ty);
    if (av_json_str(m, "continuing_subword_prefix", NULL) || av_json_str(m, "end_of_word_suffix", NULL))
        return FAIL_UNS("%s: BPE continuing_subword_prefix / end_of_word_suffix are not supported", path);
    if (!fp->vid.n) return FAIL_FMT("%s: model.vocab is missing or empty", path);
    const cJSON *added = av_json_get(root, "added_tokens"), *it;
    if (added && !cJSON_IsArray(added)) return FAIL_FMT("%s: added_tokens is not an array", path);
    /* id space: vocab ids and added token ids; added contents go to the same arena */
    long max_id = -1;
    for (int i = 0; i < fp->vid.n; i++) if (fp->vid.v[i] > max_id) max_id = fp->vid.v[i];
    int na = cJSON_GetArraySize(added), k = 0;
    int32_t *aoff = malloc(((size_t)na + 1) * sizeof *aoff);
    if (!aoff) return av_fail(AV_ERR_NOMEM, "%s: out of memory", path);
    cJSON_ArrayForEach(it, added) {
        double id = av_json_num(it, "id", -1);
        const char *c = av_json_str(it, "content", NULL);
        if (id < 0 || id > 1e8 || !c) { free(aoff); return FAIL_FMT("%s: added token without id/content", path); }
        if ((long)id > max_id) max_id = (long)id;
        aoff[k++] = (int32_t)fp->vmem.n;
        if (tk_buf_put(&fp->vmem, c, strlen(c) + 1)) { free(aoff); return av_fail(AV_ERR_NOMEM, "%s: out of memory", path); }
    }
    t->n_vocab = (int)(max_id + 1);
    t->piece_mem = fp->vmem.p;
    fp->vmem.p = NULL;
    t->piece_off = malloc((size_t)(t->n_vocab + 1) * sizeof *t->piece_off);
    t->piece_len = calloc((size_t)t->n_vocab + 1, sizeof *t->piece_len);
    t->special = calloc((size_t)t->n_vocab + 1, 1);
    t->added = calloc((size_t)na + 1, sizeof *t->added);
    if (!t->piece_off || !t->piece_len || !t->special || !t->added || tk_strmap_init(&t->vocab, (size_t)fp->vid.n)) {
        free(aoff);
        return av_fail(AV_ERR_NOMEM, "%s: out of memory", path);
    }
    memset(t->piece_off, 0xFF, (size_t)(t->n_vocab + 1) * sizeof *t->piece_off);
    for (int i = 0; i < fp->vid.n; i++) {
        int id = fp->vid.v[i];
        const char *p = t->piece_mem + fp->voff.v[i];
        size_t l = (size_t)fp->vlen.v[i];
        if (t->piece_off[id] == UINT32_MAX) { t->piece_off[id] = (uint32_t)fp->voff.v[i]; t->piece_len[id] = (uint32_t)l; }
        if (tk_strmap_put(&t->vocab, p, l, id)) { free(aoff); return av_fail(AV_ERR_NOMEM, "%s: out of memory", path); }
        int b = tk_is_byte_piece(p, l);
        if (b >= 0 && t->byte_id[b] < 0) t->byte_id[b] = id;
    }
    k = 0;
    cJSON_ArrayForEach(it, added) {
        int id = (int)av_json_num(it, "id", 0);
        size_t l = strlen(t->piece_mem + aoff[k]);
        t->piece_off[id] = (uint32_t)aoff[k];
        t->piece_len[id] = (uint32_t)l;
        tk_added *a = &t->added[t->n_added];
        a->content = t->piece_mem + aoff[k];
        a->len = (int)l;
        a->id = id;
        a->special = (uint8_t)av_json_bool(it, "special", 0);
        a->lstrip = (uint8_t)av_json_bool(it, "lstrip", 0);
        a->rstrip = (uint8_t)av_json_bool(it, "rstrip", 0);
        a->single_word = (uint8_t)av_json_bool(it, "single_word", 0);
        a->normalized = (uint8_t)av_json_bool(it, "normalized", !a->special);
        t->special[id] = a->special;
        if (l) t->n_added++;
        k++;
    }
    free(aoff);
    t->byte_fallback = av_json_bool(m, "byte_fallback", 0);
    t->ignore_merges = av_json_bool(m, "ignore_merges", 0);
    t->fuse_unk = av_json_bool(m, "fuse_unk", 0);
    const char *unk = av_json_str(m, "unk_token", NULL);
    t->unk_id = unk ? tk_strmap_get(&t->vocab, unk, strlen(unk)) : -1;
    /* merges */
    int nm = fp->mq.n / 4;
    if (tk_pairmap_init(&t->merges, (size_t)nm)) return av_fail(AV_ERR_NOMEM, "%s: out of memory", path);
    char tmp[1024];
    for (int r = 0; r < nm; r++) {
        const int32_t *q = fp->mq.v + 4 * r;
        const char *a = fp->mmem.p + q[0], *b = fp->mmem.p + q[2];
        size_t la = (size_t)q[1], lb = (size_t)q[3];
        if (la + lb >= sizeof tmp) return FAIL_FMT("%s: merge %d is too long", path, r);
        memcpy(tmp, a, la);
        memcpy(tmp + la, b, lb);
        int32_t ia = tk_strmap_get(&t->vocab, a, la), ib = tk_strmap_get(&t->vocab, b, lb), in = tk_strmap_get(&t->vocab, tmp, la + lb);
        if (ia < 0 || ib < 0 || in < 0) return FAIL_FMT("%s: merge %d '%.*s %.*s' uses a piece missing from the vocab", path, r, (int)la, a, (int)lb, b);
        if (tk_pairmap_put(&t->merges, ia, ib, r, in)) return av_fail(AV_ERR_NOMEM, "%s: out of memory", path);
    }
    return AV_OK;
}

av_status tk_hf_load(av_tokenizer *t, const char *path) {
    char *txt;
    size_t n;
    AV_TRY(av_file_read(path, &txt, &n));
    fast_parts fp = {0};
    size_t sp[4];
    cJSON *root = NULL;
    av_status st = AV_OK;
    int fast = tk_fast_spans(txt, n, sp) == 0;
    if (fast && sp[1] && tk_fast_vocab(txt + sp[0], sp[1] - sp[0], &fp.vmem, &fp.voff, &fp.vlen, &fp.vid)) fast = 0;
    if (fast && sp[3] && tk_fast_merges(txt + sp[2], sp[3] - sp[2], &fp.mmem, &fp.mq)) fast = 0;
    if (fast) {
        /* blank the big parts out so cJSON parses only the rest */
        if (sp[1]) { memset(txt + sp[0], ' ', sp[1] - sp[0]); memcpy(txt + sp[0], "{}", 2); }
        if (sp[3]) { memset(txt + sp[2], ' ', sp[3] - sp[2]); memcpy(txt + sp[2], "[]", 2); }
        root = cJSON_ParseWithLength(txt, n);
    }
    free(txt);
    if (!root) {
        /* slow path only for the error message: which line is malformed, or which part */
        st = av_json_load(path, &root);
        if (!st) st = FAIL_FMT("%s: model.vocab or model.merges is malformed", path);
    }
    if (!st && !cJSON_IsObject(root)) st = FAIL_FMT("%s: top level is not an object", path);
    if (!st) st = load_model(t, root, &fp, path);
    if (!st) st = add_norm(t, av_json_get(root, "normalizer"), path);
    if (!st) st = add_pre(t, av_json_get(root, "pre_tokenizer"), path);
    if (!st) st = add_dec(t, av_json_get(root, "decoder"), path);
    if (!st) st = add_post(t, av_json_get(root, "post_processor"), path);
    cJSON_Delete(root);
    free(fp.vmem.p); free(fp.mmem.p); free(fp.voff.v); free(fp.vlen.v); free(fp.vid.v); free(fp.mq.v);
    t->kind = TK_KIND_HF;
    return st;
}
