/* Decoding ids to text through the tokenizer's decoder steps, as HF tokenizers does (Replace,
 * ByteFallback with its all-or-nothing U+FFFD rule, Fuse, Strip, Metaspace, ByteLevel), on a list
 * of token strings. SentencePiece models use the equivalent Llama chain. Works on chunks so the
 * stream decoder can reuse it: `first` says whether the chunk starts the sequence. */
#include "tokenizer/tok_internal.h"
#include <stdlib.h>
#include <string.h>

typedef struct { tk_buf text; size_t *off, *len; int n, cap; } toklist;

/* Registers text.p[o .. o+n) (already written) as the next token. */
static int tl_mark(toklist *l, size_t o, size_t n) {
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 32;
        size_t *o = realloc(l->off, (size_t)cap * sizeof *o);
        if (!o) return -1;
        l->off = o;
        size_t *q = realloc(l->len, (size_t)cap * sizeof *q);
        if (!q) return -1;
        l->len = q;
        l->cap = cap;
    }
    l->off[l->n] = o;
    l->len[l->n] = n;
    l->n++;
    return 0;
}
static int tl_add(toklist *l, const char *s, size_t n) {
    size_t o = l->text.n;
    if (tk_buf_put(&l->text, s, n)) return -1;
    return tl_mark(l, o, n);
}
static void tl_free(toklist *l) { free(l->text.p); free(l->off); free(l->len); memset(l, 0, sizeof *l); }
static void tl_swap(toklist *a, toklist *b) { toklist t = *a; *a = *b; *b = t; }
#define TOK(l, i) ((l)->text.p + (l)->off[i])

static const tk_dec spm_chain[4] = {
    {TK_DEC_REPLACE, "\xE2\x96\x81", " ", 0, 0, 0}, {TK_DEC_BYTEFALLBACK, 0, 0, 0, 0, 0},
    {TK_DEC_FUSE, 0, 0, 0, 0, 0}, {TK_DEC_STRIP, " ", 0, 1, 0, 0}};

static void chain_of(const av_tokenizer *t, const tk_dec **d, int *n) {
    if (t->kind == TK_KIND_SPM) { *d = spm_chain; *n = t->add_dummy_prefix ? 4 : 3; }
    else { *d = t->dec; *n = t->n_dec; }
}

int tk_decode_holds(const av_tokenizer *t, int id) {
    const tk_dec *d;
    int nd;
    chain_of(t, &d, &nd);
    size_t len;
    const char *p = tk_piece(t, id, &len);
    if (!p || tk_is_byte_piece(p, len) < 0) return 0;
    for (int k = 0; k < nd; k++)
        if (d[k].type == TK_DEC_BYTEFALLBACK) return 1;
    return 0;
}

static int step(const tk_dec *d, toklist *in, toklist *out, int first, int fused) {
    out->n = 0;
    out->text.n = 0;
    switch (d->type) {
    case TK_DEC_REPLACE: {
        size_t la = strlen(d->a), lb = strlen(d->b);
        for (int i = 0; i < in->n; i++) {
            const char *s = TOK(in, i);
            size_t n = in->len[i], o = out->text.n;
            for (size_t k = 0; k < n;) {
                if (k + la <= n && !memcmp(s + k, d->a, la)) { if (tk_buf_put(&out->text, d->b, lb)) return -1; k += la; }
                else { if (tk_buf_put(&out->text, s + k, 1)) return -1; k++; }
            }
            if (tl_mark(out, o, out->text.n - o)) return -1;
        }
        return 0;
    }
    case TK_DEC_BYTEFALLBACK: {
        unsigned char *run = malloc((size_t)in->n + 1);
        int nr = 0;
        if (!run) return -1;
        for (int i = 0; i <= in->n; i++) {
            int b = i < in->n ? tk_is_byte_piece(TOK(in, i), in->len[i]) : -1;
            if (b >= 0) { run[nr++] = (unsigned char)b; continue; }
            if (nr) {
                int valid = 1;
                for (int k = 0; k < nr && valid;) { int l = tk_utf8_valid_len(run, (size_t)nr, (size_t)k); valid = l > 0; k += l; }
                if (valid) { if (tl_add(out, (const char *)run, (size_t)nr)) { free(run); return -1; } }
                else for (int k = 0; k < nr; k++) if (tl_add(out, "\xEF\xBF\xBD", 3)) { free(run); return -1; }
                nr = 0;
            }
            if (i < in->n && tl_add(out, TOK(in, i), in->len[i])) { free(run); return -1; }
        }
        free(run);
        return 0;
    }
    case TK_DEC_FUSE:
        if (tl_add(out, "", 0)) return -1;
        for (int i = 0; i < in->n; i++) if (tk_buf_put(&out->text, TOK(in, i), in->len[i])) return -1;
        out->len[0] = out->text.n;
        return 0;
    case TK_DEC_STRIP: {
        size_t cl = strlen(d->a);
        for (int i = 0; i < in->n; i++) {
            const char *s = TOK(in, i);
            size_t a = 0, b = in->len[i];
            if (!fused || first)
                for (int k = 0; k < d->start && cl && b - a >= cl && !memcmp(s + a, d->a, cl); k++) a += cl;
            if (!fused || first)
                for (int k = 0; k < d->stop && cl && b - a >= cl && !memcmp(s + b - cl, d->a, cl); k++) b -= cl;
            if (tl_add(out, s + a, b - a)) return -1;
        }
        return 0;
    }
    case TK_DEC_METASPACE: {
        size_t rl = strlen(d->a);
        for (int i = 0; i < in->n; i++) {
            const char *s = TOK(in, i);
            size_t n = in->len[i], o = out->text.n;
            int drop = i == 0 && first && d->scheme != TK_SCHEME_NEVER;
            for (size_t k = 0; k < n;) {
                if (k + rl <= n && !memcmp(s + k, d->a, rl)) { if (!drop && tk_buf_put(&out->text, " ", 1)) return -1; k += rl; }
                else { if (tk_buf_put(&out->text, s + k, 1)) return -1; k++; }
            }
            if (tl_mark(out, o, out->text.n - o)) return -1;
        }
        return 0;
    }
    case TK_DEC_BYTELEVEL: {
        if (tl_add(out, "", 0)) return -1;
        for (int i = 0; i < in->n; i++) {
            const char *s = TOK(in, i);
            size_t n = in->len[i], o = out->text.n;
            int ok = 1;
            for (size_t k = 0; k < n && ok;) {
                uint32_t cp;
                k += (size_t)tk_utf8_next(s, n, k, &cp);
                int b = tk_unicode_to_byte(cp);
                if (b < 0) ok = 0;
                else { char c = (char)b; if (tk_buf_put(&out->text, &c, 1)) return -1; }
            }
            if (!ok) { out->text.n = o; if (tk_buf_put(&out->text, s, n)) return -1; }
        }
        out->len[0] = out->text.n;
        return 0;
    }
    }
    return 0;
}

int tk_decode_chunk(const av_tokenizer *t, const int32_t *ids, int n, int first, tk_buf *out, int *raw) {
    toklist a = {0}, b = {0};
    int rc = -1, fused = 0;
    *raw = 0;
    const tk_dec *d;
    int nd;
    chain_of(t, &d, &nd);
    for (int i = 0; i < n; i++) {
        size_t len;
        const char *p = tk_piece(t, ids[i], &len);
        if (!p) continue;
        if (t->kind == TK_KIND_SPM) {
            int ty = t->types[ids[i]];
            if (ty == 3) continue;
            if (ty == 2) { p = " \xE2\x81\x87 "; len = 5; }
        }
        if (tl_add(&a, p, len)) goto done;
    }
    for (int k = 0; k < nd; k++) {
        if (step(&d[k], &a, &b, first, fused)) goto done;
        tl_swap(&a, &b);
        if (d[k].type == TK_DEC_FUSE || d[k].type == TK_DEC_BYTELEVEL) fused = 1;
        if (d[k].type == TK_DEC_BYTELEVEL) *raw = 1;
    }
    for (int i = 0; i < a.n; i++) {
        if (nd == 0 && (i > 0 || !first) && tk_buf_put(out, " ", 1)) goto done;
        if (tk_buf_put(out, TOK(&a, i), a.len[i])) goto done;
    }
    if (tk_buf_put(out, "", 0)) goto done;
    rc = 0;
done:
    tl_free(&a);
    tl_free(&b);
    return rc;
}
