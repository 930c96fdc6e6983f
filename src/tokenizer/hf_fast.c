/* Fast reader for the two big parts of tokenizer.json, model.vocab and model.merges: finds their
 * spans with a small JSON skipper, decodes them straight into flat arrays (no JSON tree), and
 * blanks them out so that cJSON only parses the small remainder. */
#include "tokenizer/tok_internal.h"
#include <stdlib.h>
#include <string.h>

static size_t ws(const char *s, size_t n, size_t i) {
    while (i < n && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) i++;
    return i;
}

/* skips a string starting at s[i] == '"'; returns index after the closing quote, 0 on error */
static size_t skip_str(const char *s, size_t n, size_t i) {
    for (i++; i < n; i++) {
        const char *q = memchr(s + i, '"', n - i);
        if (!q) return 0;
        size_t j = (size_t)(q - s), bs = 0;
        while (j - bs > i && s[j - bs - 1] == '\\') bs++; /* quote escaped by an odd run of backslashes? */
        if (!(bs & 1)) return j + 1;
        i = j;
    }
    return 0;
}

/* skips any value; returns index after it, 0 on error */
static size_t skip_value(const char *s, size_t n, size_t i) {
    int depth = 0;
    do {
        i = ws(s, n, i);
        if (i >= n) return 0;
        char c = s[i];
        if (c == '"') { if (!(i = skip_str(s, n, i))) return 0; }
        else if (c == '{' || c == '[') { depth++; i++; continue; }
        else if (c == '}' || c == ']') { if (--depth < 0) return 0; i++; }
        else if (c == ',' || c == ':') { if (!depth) return 0; i++; continue; }
        else {
            size_t j = i;
            while (i < n && s[i] != ',' && s[i] != ':' && s[i] != ']' && s[i] != '}' && s[i] != ' ' && s[i] != '\n' && s[i] != '\r' && s[i] != '\t') i++;
            if (i == j) return 0;
        }
    } while (depth > 0);
    return i;
}

/* decodes the JSON string at s[*i] (a '"') into out, NUL-terminated; advances *i */
static int read_str(const char *s, size_t n, size_t *pi, tk_buf *out) {
    size_t i = *pi;
    if (i >= n || s[i] != '"') return -1;
    i++;
    for (;;) {
        size_t j = i;
        while (j < n && s[j] != '"' && s[j] != '\\') j++;
        if (j >= n) return -1;
        if (j > i && tk_buf_put(out, s + i, j - i)) return -1;
        i = j;
        if (s[i] == '"') break;
        if (i + 1 >= n) return -1;
        char e = s[i + 1], c;
        i += 2;
        switch (e) {
        case '"': c = '"'; break;
        case '\\': c = '\\'; break;
        case '/': c = '/'; break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'u': {
            uint32_t cp = 0;
            for (int pass = 0; pass < 2; pass++) {
                uint32_t u = 0;
                if (i + 4 > n) return -1;
                for (int k = 0; k < 4; k++) {
                    char h = s[i + k];
                    int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                    if (d < 0) return -1;
                    u = u * 16 + (uint32_t)d;
                }
                i += 4;
                if (pass == 0) {
                    cp = u;
                    if (u < 0xD800 || u > 0xDBFF) break;
                    if (i + 6 <= n && s[i] == '\\' && s[i + 1] == 'u') { i += 2; continue; }
                    cp = 0xFFFD;
                    break;
                }
                cp = (u >= 0xDC00 && u <= 0xDFFF) ? 0x10000 + ((cp - 0xD800) << 10) + (u - 0xDC00) : 0xFFFD;
            }
            if (cp >= 0xDC00 && cp <= 0xDFFF) cp = 0xFFFD;
            char u8[4];
            if (tk_buf_put(out, u8, (size_t)tk_utf8_put(cp, u8))) return -1;
            continue;
        }
        default: return -1;
        }
        if (tk_buf_put(out, &c, 1)) return -1;
    }
    *pi = i + 1;
    return tk_buf_put(out, "", 1) ? -1 : 0; /* keep the NUL inside the buffer */
}

/* Finds model.vocab and model.merges in the root object. Spans are [beg, end); 0/0 if absent. */
int tk_fast_spans(const char *s, size_t n, size_t sp[4]) {
    memset(sp, 0, 4 * sizeof *sp);
    size_t i = ws(s, n, 0);
    if (i >= n || s[i] != '{') return -1;
    i++;
    for (;;) {
        i = ws(s, n, i);
        if (i < n && s[i] == '}') return 0;
        if (i >= n || s[i] != '"') return -1;
        size_t k0 = i;
        if (!(i = skip_str(s, n, i))) return -1;
        int is_model = i - k0 == 7 && !memcmp(s + k0, "\"model\"", 7);
        i = ws(s, n, i);
        if (i >= n || s[i] != ':') return -1;
        i = ws(s, n, i + 1);
        if (is_model && i < n && s[i] == '{') {
            i++;
            for (;;) {
                i = ws(s, n, i);
                if (i < n && s[i] == '}') { i++; break; }
                if (i >= n || s[i] != '"') return -1;
                size_t q0 = i;
                if (!(i = skip_str(s, n, i))) return -1;
                int which = (i - q0 == 7 && !memcmp(s + q0, "\"vocab\"", 7)) ? 0 : (i - q0 == 8 && !memcmp(s + q0, "\"merges\"", 8)) ? 2 : -1;
                i = ws(s, n, i);
                if (i >= n || s[i] != ':') return -1;
                i = ws(s, n, i + 1);
                size_t v0 = i;
                if (!(i = skip_value(s, n, i))) return -1;
                if (which >= 0) { sp[which] = v0; sp[which + 1] = i; }
                i = ws(s, n, i);
                if (i < n && s[i] == ',') i++;
            }
        } else if (!(i = skip_value(s, n, i))) {
            return -1;
        }
        i = ws(s, n, i);
        if (i < n && s[i] == ',') i++;
    }
}

/* vocab object -> strings (each NUL-terminated) in mem, with offsets/lengths/ids */
int tk_fast_vocab(const char *s, size_t n, tk_buf *mem, tk_ids *off, tk_ids *len, tk_ids *ids) {
    size_t i = ws(s, n, 0);
    if (i >= n || s[i] != '{') return -1;
    i = ws(s, n, i + 1);
    if (i < n && s[i] == '}') return 0;
    for (;;) {
        size_t o = mem->n;
        if (read_str(s, n, &i, mem)) return -1;
        i = ws(s, n, i);
        if (i >= n || s[i] != ':') return -1;
        i = ws(s, n, i + 1);
        long v = 0;
        size_t d0 = i;
        while (i < n && s[i] >= '0' && s[i] <= '9' && v < 100000000) v = v * 10 + (s[i++] - '0');
        if (i == d0 || v >= 100000000 || (o > 0x7FFFFFFF)) return -1;
        if (tk_ids_push(off, (int32_t)o) || tk_ids_push(len, (int32_t)(mem->n - o - 1)) || tk_ids_push(ids, (int32_t)v)) return -1;
        i = ws(s, n, i);
        if (i < n && s[i] == ',') { i = ws(s, n, i + 1); continue; }
        if (i < n && s[i] == '}') return 0;
        return -1;
    }
}

/* merges array ("a b" or ["a", "b"]) -> pairs of NUL-terminated strings in mem; off holds
 * 4 ints per merge: a offset, a length, b offset, b length. */
int tk_fast_merges(const char *s, size_t n, tk_buf *mem, tk_ids *q) {
    size_t i = ws(s, n, 0);
    if (i >= n || s[i] != '[') return -1;
    i = ws(s, n, i + 1);
    if (i < n && s[i] == ']') return 0;
    for (;;) {
        size_t a = mem->n, b, la, lb;
        if (i < n && s[i] == '"') {
            if (read_str(s, n, &i, mem)) return -1;
            char *p = mem->p + a, *sp = memchr(p, ' ', mem->n - a - 1);
            if (!sp || memchr(sp + 1, ' ', (size_t)(mem->p + mem->n - 1 - (sp + 1)))) return -1;
            *sp = 0;
            la = (size_t)(sp - p);
            b = a + la + 1;
            lb = mem->n - b - 1;
        } else if (i < n && s[i] == '[') {
            i = ws(s, n, i + 1);
            if (read_str(s, n, &i, mem)) return -1;
            la = mem->n - a - 1;
            i = ws(s, n, i);
            if (i >= n || s[i] != ',') return -1;
            i = ws(s, n, i + 1);
            b = mem->n;
            if (read_str(s, n, &i, mem)) return -1;
            lb = mem->n - b - 1;
            i = ws(s, n, i);
            if (i >= n || s[i] != ']') return -1;
            i++;
        } else {
            return -1;
        }
        if (tk_ids_push(q, (int32_t)a) || tk_ids_push(q, (int32_t)la) || tk_ids_push(q, (int32_t)b) || tk_ids_push(q, (int32_t)lb)) return -1;
        i = ws(s, n, i);
        if (i < n && s[i] == ',') { i = ws(s, n, i + 1); continue; }
        if (i < n && s[i] == ']') return 0;
        return -1;
    }
}
