/* Lexer of the Jinja-subset engine: splits template source into text and tag tokens exactly as
 * jinja2's lexer does with trim_blocks=True, lstrip_blocks=True (newline normalization, one
 * trailing newline dropped, {%- -%} / {{- -}} / {#- -#} and + modifiers, comments). */
#include "template/jinja_internal.h"
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    jx_arena *a;
    jx_err *e;
    const char *s;
    size_t n, pos;
    jtok *t;
    size_t nt, cap;
} lexer;

static void pos_of(const lexer *L, size_t pos, int *line, int *col) {
    int ln = 1, c = 1;
    for (size_t i = 0; i < pos && i < L->n; i++) {
        if (L->s[i] == '\n') { ln++; c = 1; }
        else if (((unsigned char)L->s[i] & 0xC0) != 0x80) c++;
    }
    *line = ln;
    *col = c;
}

_Noreturn static void lex_fail(lexer *L, size_t pos, const char *msg) {
    int line, col;
    pos_of(L, pos, &line, &col);
    jx_throw(L->e, line, col, "%s", msg);
}

static jtok *emit(lexer *L, jt_type t, size_t pos, const char *s, size_t n) {
    if (L->nt == L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 256;
        jtok *nt = jx_alloc(L->a, cap * sizeof *nt);
        if (L->nt) memcpy(nt, L->t, L->nt * sizeof *nt);
        L->t = nt;
        L->cap = cap;
    }
    jtok *k = &L->t[L->nt++];
    memset(k, 0, sizeof *k);
    k->t = t;
    k->s = s;
    k->n = n;
    /* line/col filled lazily below (positions are byte offsets until then) */
    k->line = (int)pos; /* temporary: byte offset */
    return k;
}

/* Python str.rstrip(): length after removing trailing Unicode whitespace. */
static size_t rstrip_len(const char *s, size_t n) {
    while (n > 0) {
        size_t start = n - 1;
        while (start > 0 && ((unsigned char)s[start] & 0xC0) == 0x80) start--;
        uint32_t cp;
        u8_dec(s + start, n - start, &cp);
        if (!py_isspace(cp)) break;
        n = start;
    }
    return n;
}
static int all_space(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += u8_dec(s + i, n - i, &cp);
        if (!py_isspace(cp)) return 0;
    }
    return 1;
}
/* Length of leading Unicode whitespace. */
static size_t lspace_len(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t k = u8_dec(s + i, n - i, &cp);
        if (!py_isspace(cp)) break;
        i += k;
    }
    return i;
}

static int hexval(int c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}
static void put_utf8(jx_buf *b, uint32_t c) {
    char o[4];
    if (c < 0x80) { o[0] = (char)c; jb_put(b, o, 1); }
    else if (c < 0x800) { o[0] = (char)(0xC0 | (c >> 6)); o[1] = (char)(0x80 | (c & 63)); jb_put(b, o, 2); }
    else if (c < 0x10000) { o[0] = (char)(0xE0 | (c >> 12)); o[1] = (char)(0x80 | ((c >> 6) & 63)); o[2] = (char)(0x80 | (c & 63)); jb_put(b, o, 3); }
    else { o[0] = (char)(0xF0 | (c >> 18)); o[1] = (char)(0x80 | ((c >> 12) & 63)); o[2] = (char)(0x80 | ((c >> 6) & 63)); o[3] = (char)(0x80 | (c & 63)); jb_put(b, o, 4); }
}

/* Decodes a string literal body with Python's unicode-escape rules. */
static void lex_string(lexer *L, size_t start) {
    char q = L->s[L->pos++];
    jx_buf b = {.ar = L->a};
    for (;;) {
        if (L->pos >= L->n) lex_fail(L, start, "unexpected end of string literal");
        char c = L->s[L->pos];
        if (c == q) { L->pos++; break; }
        if (c != '\\') { jb_putc(&b, c); L->pos++; continue; }
        if (L->pos + 1 >= L->n) lex_fail(L, start, "unexpected end of string literal");
        char e = L->s[L->pos + 1];
        L->pos += 2;
        switch (e) {
        case '\n': break;
        case '\\': jb_putc(&b, '\\'); break;
        case '\'': jb_putc(&b, '\''); break;
        case '"': jb_putc(&b, '"'); break;
        case 'a': jb_putc(&b, '\a'); break;
        case 'b': jb_putc(&b, '\b'); break;
        case 'f': jb_putc(&b, '\f'); break;
        case 'n': jb_putc(&b, '\n'); break;
        case 'r': jb_putc(&b, '\r'); break;
        case 't': jb_putc(&b, '\t'); break;
        case 'v': jb_putc(&b, '\v'); break;
        case 'x': case 'u': case 'U': {
            int nd = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            uint32_t v = 0;
            for (int i = 0; i < nd; i++) {
                int h = L->pos < L->n ? hexval((unsigned char)L->s[L->pos]) : -1;
                if (h < 0) lex_fail(L, start, "truncated \\xXX / \\uXXXX escape in string literal");
                v = v * 16 + (uint32_t)h;
                L->pos++;
            }
            if (v > 0x10FFFF) lex_fail(L, start, "illegal Unicode character in string literal");
            put_utf8(&b, v);
            break;
        }
        default:
            if (e >= '0' && e <= '7') {
                uint32_t v = (uint32_t)(e - '0');
                for (int i = 0; i < 2 && L->pos < L->n && L->s[L->pos] >= '0' && L->s[L->pos] <= '7'; i++)
                    v = v * 8 + (uint32_t)(L->s[L->pos++] - '0');
                put_utf8(&b, v);
            } else { /* unknown escapes stay as written */
                jb_putc(&b, '\\');
                jb_putc(&b, e);
            }
        }
    }
    emit(L, TK_STR, start, b.p ? b.p : "", b.n);
}

static const char *const ops[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]", "(", ")",
                                  "{", "}", ">", "<", "=", ".", ":", "|", ",", ";", NULL};

/* Lexes the inside of {{ }} or {% %} up to and including the end delimiter. Returns 1 if the end
 * consumed a trailing newline (sets jinja's line_starting). */
static int lex_tag(lexer *L, int is_block, size_t tag_start) {
    char closer = is_block ? '%' : '}';
    char stack[256];
    int depth = 0;
    for (;;) {
        if (L->pos >= L->n) lex_fail(L, tag_start, is_block ? "unexpected end of template: missing '%}'" : "unexpected end of template: missing '}}'");
        const char *s = L->s + L->pos;
        size_t left = L->n - L->pos;
        /* end delimiter (only when brackets are balanced) */
        if (!depth) {
            size_t endpos = L->pos;
            int minus = 0, plus = 0;
            if (left >= 3 && (s[0] == '-' || s[0] == '+') && s[1] == closer && s[2] == '}') {
                minus = s[0] == '-';
                plus = s[0] == '+';
                endpos += 3;
            } else if (left >= 2 && s[0] == closer && s[1] == '}') {
                endpos += 2;
            }
            if (endpos != L->pos) {
                emit(L, is_block ? TK_BEND : TK_VEND, L->pos, NULL, 0);
                L->pos = endpos;
                if (minus) {
                    size_t k = lspace_len(L->s + L->pos, L->n - L->pos);
                    L->pos += k;
                    return k > 0 && L->s[L->pos - 1] == '\n';
                }
                if (is_block && !plus && L->pos < L->n && L->s[L->pos] == '\n') { L->pos++; return 1; }
                return 0;
            }
        }
        unsigned char c = (unsigned char)s[0];
        if (isspace(c)) { L->pos++; continue; }
        size_t start = L->pos;
        if (isdigit(c)) {
            size_t i = 0;
            while (i < left && (isdigit((unsigned char)s[i]) || s[i] == '_')) i++;
            int is_float = 0;
            if (i + 1 < left && s[i] == '.' && isdigit((unsigned char)s[i + 1])) {
                is_float = 1;
                i++;
                while (i < left && (isdigit((unsigned char)s[i]) || s[i] == '_')) i++;
            }
            if (i < left && (s[i] == 'e' || s[i] == 'E')) {
                size_t j = i + 1;
                if (j < left && (s[j] == '+' || s[j] == '-')) j++;
                if (j < left && isdigit((unsigned char)s[j])) {
                    is_float = 1;
                    i = j;
                    while (i < left && (isdigit((unsigned char)s[i]) || s[i] == '_')) i++;
                }
            }
            char num[64];
            size_t k = 0;
            for (size_t j = 0; j < i && k < sizeof num - 1; j++)
                if (s[j] != '_') num[k++] = s[j];
            num[k] = 0;
            jtok *t = emit(L, is_float ? TK_FLOAT : TK_INT, start, s, i);
            if (is_float) t->f = strtod(num, NULL);
            else {
                char *end;
                t->i = (int64_t)strtoll(num, &end, 10);
                if (i > 18) lex_fail(L, start, "integer literal too large");
            }
            L->pos += i;
            continue;
        }
        if (isalpha(c) || c == '_') {
            size_t i = 0;
            while (i < left && (isalnum((unsigned char)s[i]) || s[i] == '_')) i++;
            emit(L, TK_NAME, start, s, i);
            L->pos += i;
            continue;
        }
        if (c == '\'' || c == '"') { lex_string(L, start); continue; }
        const char *op = NULL;
        for (int k = 0; ops[k]; k++) {
            size_t ol = strlen(ops[k]);
            if (ol <= left && !memcmp(s, ops[k], ol)) { op = ops[k]; break; }
        }
        if (!op) {
            char msg[64];
            snprintf(msg, sizeof msg, "unexpected char '%c'", isprint(c) ? c : '?');
            lex_fail(L, start, msg);
        }
        if (op[1] == 0 && (op[0] == '(' || op[0] == '[' || op[0] == '{')) {
            if (depth >= (int)sizeof stack) lex_fail(L, start, "brackets nested too deeply");
            stack[depth++] = op[0] == '(' ? ')' : op[0] == '[' ? ']' : '}';
        } else if (op[1] == 0 && (op[0] == ')' || op[0] == ']' || op[0] == '}')) {
            char msg[64];
            if (!depth) { snprintf(msg, sizeof msg, "unexpected '%c'", op[0]); lex_fail(L, start, msg); }
            if (stack[depth - 1] != op[0]) {
                snprintf(msg, sizeof msg, "unexpected '%c', expected '%c'", op[0], stack[depth - 1]);
                lex_fail(L, start, msg);
            }
            depth--;
        }
        emit(L, TK_OP, start, op, strlen(op));
        L->pos += strlen(op);
    }
}

void jx_lex(jx_arena *a, jx_err *e, const char *src, size_t len, jtok **toks, size_t *ntoks) {
    /* normalize \r\n and \r to \n; drop one trailing newline (keep_trailing_newline=False) */
    char *s = jx_alloc(a, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else s[n++] = src[i];
    }
    if (n && s[n - 1] == '\n') n--;
    s[n] = 0;
    lexer L = {.a = a, .e = e, .s = s, .n = n};
    int line_starting = 1;
    while (L.pos < n) {
        /* find the next tag start */
        size_t p = L.pos;
        const char *tag = NULL;
        while (p + 1 < n) {
            if (s[p] == '{' && (s[p + 1] == '{' || s[p + 1] == '%' || s[p + 1] == '#')) { tag = s + p; break; }
            p++;
        }
        if (!tag) {
            emit(&L, TK_TEXT, L.pos, s + L.pos, n - L.pos);
            break;
        }
        char kind = tag[1];
        char sign = p + 2 < n && (s[p + 2] == '-' || s[p + 2] == '+') ? s[p + 2] : 0;
        const char *text = s + L.pos;
        size_t tlen = p - L.pos;
        if (sign == '-') tlen = rstrip_len(text, tlen);
        else if (sign != '+' && kind != '{') { /* lstrip_blocks */
            size_t l_pos = 0;
            for (size_t i = tlen; i > 0; i--)
                if (text[i - 1] == '\n') { l_pos = i; break; }
            if ((l_pos > 0 || line_starting) && all_space(text + l_pos, tlen - l_pos)) tlen = l_pos;
        }
        if (tlen) emit(&L, TK_TEXT, L.pos, text, tlen);
        size_t tag_start = p;
        L.pos = p + 2 + (sign ? 1 : 0);
        if (kind == '#') {
            /* comment: (.*?)(\+#}|-#}\s*|#}\n?) */
            size_t q = L.pos;
            for (;;) {
                if (q + 1 >= n) lex_fail(&L, tag_start, "Missing end of comment tag");
                if (s[q] == '#' && s[q + 1] == '}') break;
                q++;
            }
            size_t endp = q + 2;
            line_starting = 0;
            if (q > L.pos && s[q - 1] == '-' ) {
                size_t k = lspace_len(s + endp, n - endp);
                endp += k;
                line_starting = k > 0 && s[endp - 1] == '\n';
            } else if (!(q > L.pos && s[q - 1] == '+') && endp < n && s[endp] == '\n') {
                endp++;
                line_starting = 1;
            }
            L.pos = endp;
            continue;
        }
        emit(&L, kind == '%' ? TK_BBEGIN : TK_VBEGIN, tag_start, NULL, 0);
        line_starting = lex_tag(&L, kind == '%', tag_start);
    }
    emit(&L, TK_EOF, n, NULL, 0);
    /* convert byte offsets to line:col in one pass */
    int line = 1, col = 1;
    size_t at = 0;
    for (size_t k = 0; k < L.nt; k++) {
        size_t off = (size_t)L.t[k].line;
        for (; at < off && at < n; at++) {
            if (s[at] == '\n') { line++; col = 1; }
            else if (((unsigned char)s[at] & 0xC0) != 0x80) col++;
        }
        L.t[k].line = line;
        L.t[k].col = col;
    }
    *toks = L.t;
    *ntoks = L.nt;
}
