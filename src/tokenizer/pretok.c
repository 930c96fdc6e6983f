/* HF encoding of one text segment between added tokens: normalizer (Prepend, Replace, NFC),
 * normalized added tokens, pre-tokenizers (Metaspace, ByteLevel, Split with the GPT-2 / Llama-3
 * regexes written as hand scanners over UTF-8, Digits), then BPE of each piece. */
#include "tokenizer/tok_internal.h"
#include <stdlib.h>
#include <string.h>

typedef struct { size_t off, len; int first; } piece;
typedef struct { piece *v; int n, cap; } pieces;

static int pv_push(pieces *p, size_t off, size_t len, int first) {
    if (len == 0) return 0;
    if (p->n == p->cap) {
        int cap = p->cap ? p->cap * 2 : 16;
        piece *v = realloc(p->v, (size_t)cap * sizeof *v);
        if (!v) return -1;
        p->v = v;
        p->cap = cap;
    }
    p->v[p->n++] = (piece){off, len, first};
    return 0;
}

static int starts_with(const char *s, size_t n, const char *pre) {
    size_t k = strlen(pre);
    return n >= k && !memcmp(s, pre, k);
}

/* ---- regex scanners ------------------------------------------------------------------------ */
static uint32_t cp_at(const char *s, size_t n, size_t i, size_t *len) {
    uint32_t c;
    *len = (size_t)tk_utf8_next(s, n, i, &c);
    return c;
}
static int is_other(uint32_t c) { return !tk_is_space(c) && !tk_is_letter(c) && !tk_is_number(c); }

static size_t run_of(const char *s, size_t n, size_t i, int (*pred)(uint32_t), int max) {
    int k = 0;
    while (i < n && (max <= 0 || k < max)) {
        size_t l;
        uint32_t c = cp_at(s, n, i, &l);
        if (!pred(c)) break;
        i += l;
        k++;
    }
    return i;
}

static size_t contraction(const char *s, size_t n, size_t i, int fold) {
    if (s[i] != '\'' || i + 1 >= n) return 0;
    char a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
    if (fold) { a = (char)((a >= 'A' && a <= 'Z') ? a + 32 : a); b = (char)((b >= 'A' && b <= 'Z') ? b + 32 : b); }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    return 0;
}

/* \s+(?!\S)|\s+ from i (s[i] is whitespace) */
static size_t space_run(const char *s, size_t n, size_t i) {
    size_t e = i, last = i;
    while (e < n) {
        size_t l;
        uint32_t c = cp_at(s, n, e, &l);
        if (!tk_is_space(c)) break;
        last = e;
        e += l;
    }
    if (e == n || last == i) return e;
    return last;
}

static size_t rx_gpt2(const char *s, size_t n, size_t i) {
    size_t l, l2, e;
    uint32_t c = cp_at(s, n, i, &l);
    if ((e = contraction(s, n, i, 0))) return e;
    size_t j = i;
    uint32_t d = c;
    if (c == ' ' && i + 1 < n) { d = cp_at(s, n, i + 1, &l2); if (!tk_is_space(d)) j = i + 1; else d = c; }
    if (tk_is_letter(d)) return run_of(s, n, j, tk_is_letter, 0);
    if (tk_is_number(d)) return run_of(s, n, j, tk_is_number, 0);
    if (is_other(d)) return run_of(s, n, j, is_other, 0);
    return space_run(s, n, i);
}

static int is_crlf(uint32_t c) { return c == '\r' || c == '\n'; }

static size_t rx_llama3(const char *s, size_t n, size_t i, int digits) {
    size_t l, l2, e;
    uint32_t c = cp_at(s, n, i, &l);
    if ((e = contraction(s, n, i, 1))) return e;
    if (tk_is_letter(c)) return run_of(s, n, i, tk_is_letter, 0);
    if (!is_crlf(c) && !tk_is_number(c) && i + l < n && tk_is_letter(cp_at(s, n, i + l, &l2)))
        return run_of(s, n, i + l, tk_is_letter, 0);
    if (tk_is_number(c)) return run_of(s, n, i, tk_is_number, digits);
    size_t j = i;
    if (c == ' ' && i + 1 < n && is_other(cp_at(s, n, i + 1, &l2))) j = i + 1;
    if (is_other(cp_at(s, n, j, &l2))) {
        e = run_of(s, n, j, is_other, 0);
        while (e < n && (s[e] == '\r' || s[e] == '\n')) e++;
        return e;
    }
    /* whitespace: \s*[\r\n]+ then \s+(?!\S) then \s+ */
    size_t k = i, nl_end = 0;
    while (k < n) {
        uint32_t d = cp_at(s, n, k, &l2);
        if (!tk_is_space(d)) break;
        k += l2;
        if (is_crlf(d)) nl_end = k;
    }
    if (nl_end) return nl_end;
    return space_run(s, n, i);
}

/* ---- steps --------------------------------------------------------------------------------- */
static int normalize(const av_tokenizer *t, const char *s, size_t n, tk_buf *out) {
    out->n = 0;
    if (tk_buf_put(out, s, n)) return -1;
    tk_buf tmp = {0};
    for (int k = 0; k < t->n_norm; k++) {
        const tk_norm *st = &t->norm[k];
        if (st->type == TK_NORM_PREPEND && out->n) {
            tmp.n = 0;
            if (tk_buf_put(&tmp, st->a, strlen(st->a)) || tk_buf_put(&tmp, out->p, out->n)) goto oom;
        } else if (st->type == TK_NORM_REPLACE) {
            size_t la = strlen(st->a), lb = strlen(st->b);
            tmp.n = 0;
            if (tk_buf_put(&tmp, "", 0)) goto oom;
            for (size_t i = 0; i < out->n;) {
                if (i + la <= out->n && !memcmp(out->p + i, st->a, la)) { if (tk_buf_put(&tmp, st->b, lb)) goto oom; i += la; }
                else { if (tk_buf_put(&tmp, out->p + i, 1)) goto oom; i++; }
            }
        } else if (st->type == TK_NORM_NFC) {
            tmp.n = 0;
            if (tk_buf_put(&tmp, "", 0) || tk_nfc(out->p, out->n, &tmp)) goto oom;
        } else {
            continue;
        }
        tk_buf sw = *out; *out = tmp; tmp = sw;
    }
    free(tmp.p);
    return 0;
oom:
    free(tmp.p);
    return -1;
}

/* Finds the matches of a Split/Digits step in s and emits pieces per the split behavior. */
static int split_piece(const tk_pretok *st, const char *s, size_t n, size_t base, int first, pieces *out) {
    size_t *m = malloc(2 * (n + 1) * sizeof *m);
    int nm = 0, rc = -1;
    if (!m) return -1;
    if (st->type == TK_PRE_SPLIT && st->regex == TK_RX_TRAIL_SPACE) { /* one match at most: \s+$ */
        size_t t = tk_rx_trailing_space(s, n);
        if (t < n) { m[0] = t; m[1] = n; nm = 1; }
    }
    for (size_t i = nm ? n : 0; i < n;) {
        size_t l, me;
        if (st->type == TK_PRE_SPLIT && st->regex >= TK_RX_PUNCT_RUN) {
            if (!(me = tk_rx_match(st->regex, s, n, i))) { cp_at(s, n, i, &l); i += l; continue; }
        } else if (st->type == TK_PRE_DIGITS) {
            if (!tk_is_number(cp_at(s, n, i, &l))) { i += l; continue; }
            me = st->individual ? i + l : run_of(s, n, i, tk_is_number, 0);
        } else if (st->regex == TK_RX_GPT2) {
            me = rx_gpt2(s, n, i);
        } else if (st->regex == TK_RX_LLAMA3) {
            me = rx_llama3(s, n, i, st->rx_digits);
        } else {
            size_t ll = strlen(st->literal);
            if (n - i < ll || memcmp(s + i, st->literal, ll)) { i++; continue; }
            me = i + ll;
        }
        if (me <= i) me = i + 1;
        if (st->type == TK_PRE_SPLIT && st->behavior == TK_SPLIT_CONTIGUOUS && nm && m[2 * nm - 1] == i) m[2 * nm - 1] = me;
        else { m[2 * nm] = i; m[2 * nm + 1] = me; nm++; }
        i = me;
    }
    int beh = st->type == TK_PRE_DIGITS ? TK_SPLIT_ISOLATED : st->behavior;
    size_t prev = 0;
#define EMIT(a, b) do { if (pv_push(out, base + (a), (b) - (a), first && (a) == 0)) goto done; } while (0)
    for (int k = 0; k < nm; k++) {
        size_t ms = m[2 * k], me = m[2 * k + 1];
        switch (beh) {
        case TK_SPLIT_REMOVED: EMIT(prev, ms); prev = me; break;
        case TK_SPLIT_MERGED_PREV: EMIT(prev, me); prev = me; break;
        case TK_SPLIT_MERGED_NEXT: EMIT(prev, ms); prev = ms; break;
        default: EMIT(prev, ms); EMIT(ms, me); prev = me; break;
        }
    }
    EMIT(prev, n);
#undef EMIT
    rc = 0;
done:
    free(m);
    return rc;
}

/* Applies one pre-tokenizer step to every piece of `in` (text in src), writing to dst/out. */
static int pre_step(const tk_pretok *st, const tk_buf *src, const pieces *in, tk_buf *dst, pieces *out) {
    dst->n = 0;
    out->n = 0;
    if (tk_buf_put(dst, "", 0)) return -1;
    for (int k = 0; k < in->n; k++) {
        const char *s = src->p + in->v[k].off;
        size_t n = in->v[k].len;
        int first = in->v[k].first;
        size_t base = dst->n;
        if (st->type == TK_PRE_METASPACE) {
            size_t rl = strlen(st->repl);
            if (!starts_with(s, n, st->repl) && !(n && s[0] == ' ') &&
                (st->scheme == TK_SCHEME_ALWAYS || (st->scheme == TK_SCHEME_FIRST && first)))
                if (tk_buf_put(dst, st->repl, rl)) return -1;
            for (size_t i = 0; i < n; i++)
                if (s[i] == ' ' ? tk_buf_put(dst, st->repl, rl) : tk_buf_put(dst, s + i, 1)) return -1;
            if (!st->split) { if (pv_push(out, base, dst->n - base, first)) return -1; continue; }
            size_t start = base;
            for (size_t i = base; i < dst->n; i++) {
                if (i > start && dst->n - i >= rl && !memcmp(dst->p + i, st->repl, rl)) {
                    if (pv_push(out, start, i - start, first && start == base)) return -1;
                    start = i;
                }
            }
            if (pv_push(out, start, dst->n - start, first && start == base)) return -1;
        } else if (st->type == TK_PRE_BYTELEVEL) {
            tk_buf pre = {0};
            const char *x = s;
            size_t xn = n;
            if (st->add_prefix_space && !(n && s[0] == ' ')) {
                if (tk_buf_put(&pre, " ", 1) || tk_buf_put(&pre, s, n)) { free(pre.p); return -1; }
                x = pre.p;
                xn = pre.n;
            }
            for (size_t i = 0; i < xn;) {
                size_t e = st->use_regex ? rx_gpt2(x, xn, i) : xn;
                size_t b0 = dst->n;
                for (size_t q = i; q < e; q++) {
                    char u[3];
                    int ul;
                    tk_byte_to_unicode((unsigned char)x[q], u, &ul);
                    if (tk_buf_put(dst, u, (size_t)ul)) { free(pre.p); return -1; }
                }
                if (pv_push(out, b0, dst->n - b0, first && i == 0)) { free(pre.p); return -1; }
                i = e;
            }
            free(pre.p);
        } else if (st->type == TK_PRE_SPLIT || st->type == TK_PRE_DIGITS) {
            if (tk_buf_put(dst, s, n)) return -1;
            if (split_piece(st, s, n, base, first, out)) return -1;
        }
    }
    return 0;
}

static int pretok_bpe(const av_tokenizer *t, const char *s, size_t n, int first, tk_ids *ids) {
    tk_buf b[2] = {{0}, {0}};
    pieces p[2] = {{0}, {0}};
    int rc = -1, cur = 0;
    if (tk_buf_put(&b[0], s, n) || pv_push(&p[0], 0, n, first)) goto done;
    for (int k = 0; k < t->n_pre; k++) {
        if (pre_step(&t->pre[k], &b[cur], &p[cur], &b[!cur], &p[!cur])) goto done;
        cur = !cur;
    }
    for (int k = 0; k < p[cur].n; k++)
        if (tk_bpe_word(t, b[cur].p + p[cur].v[k].off, p[cur].v[k].len, ids)) goto done;
    rc = 0;
done:
    free(b[0].p); free(b[1].p); free(p[0].v); free(p[1].v);
    return rc;
}

int tk_hf_encode_segment(const av_tokenizer *t, const char *s, size_t n, int at_start, tk_ids *out) {
    if (n == 0) return 0;
    tk_buf nb = {0};
    if (normalize(t, s, n, &nb)) { free(nb.p); return -1; }
    size_t pos = 0, ms, me;
    int id, rc = 0;
    while (!rc && pos < nb.n) {
        if (!tk_added_find(t, nb.p, nb.n, pos, 1, &ms, &me, &id)) ms = me = nb.n, id = -1;
        if (ms > pos) rc = pretok_bpe(t, nb.p + pos, ms - pos, at_start && pos == 0, out);
        if (!rc && id >= 0) rc = tk_ids_push(out, id);
        pos = me;
    }
    free(nb.p);
    return rc;
}
