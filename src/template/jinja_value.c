/* Values of the Jinja-subset engine and their Python semantics: the arena that owns them,
 * conversion from cJSON, truthiness, equality and ordering, str()/repr(), json.dumps and
 * Python's shortest float repr, plus the UTF-8 helpers that index strings by code point. */
#include "template/jinja_internal.h"
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- errors ---- */
_Noreturn void jx_throw(jx_err *e, int line, int col, const char *fmt, ...) {
    char text[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    for (char *p = text; *p; p++)
        if ((unsigned char)*p < 0x20) *p = ' '; /* keep the error on one line */
    if (line > 0) snprintf(e->msg, sizeof e->msg, "%s:%d:%d: %s", e->where, line, col, text);
    else snprintf(e->msg, sizeof e->msg, "%s: %s", e->where, text);
    longjmp(e->jb, 1);
}

/* ---- arena ---- */
struct jx_chunk {
    jx_chunk *next;
    size_t cap, used;
    _Alignas(16) unsigned char data[];
};

void *jx_alloc(jx_arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (n == 0) n = 16;
    jx_chunk *c = a->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        if (a->limit && a->total + cap + sizeof(jx_chunk) > a->limit)
            jx_throw(a->err, 0, 0, "template uses more than %zu MiB of memory", a->limit >> 20);
        c = calloc(1, sizeof(jx_chunk) + cap);
        if (!c) jx_throw(a->err, 0, 0, "out of memory");
        a->total += cap + sizeof(jx_chunk);
        c->cap = cap;
        if (a->head && n > 65536) { /* keep the partly used chunk current */
            c->next = a->head->next;
            a->head->next = c;
            c->used = n;
            return c->data;
        }
        c->next = a->head;
        a->head = c;
    }
    void *p = c->data + c->used;
    c->used += n;
    return p;
}

char *jx_strdup(jx_arena *a, const char *s, size_t n) {
    char *p = jx_alloc(a, n + 1);
    if (n) memcpy(p, s, n);
    p[n] = 0;
    return p;
}

void jx_arena_free(jx_arena *a) {
    jx_chunk *c = a->head;
    while (c) {
        jx_chunk *n = c->next;
        free(c);
        c = n;
    }
    a->head = NULL;
    a->total = 0;
}

/* ---- buffers ---- */
void jb_put(jx_buf *b, const char *s, size_t n) {
    if (!n && b->p) return; /* (an empty put still makes p a valid "" string) */
    if (b->limit && b->n + n > b->limit)
        jx_throw(b->ar->err, 0, 0, "rendered output exceeds %zu bytes", b->limit);
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = jx_alloc(b->ar, cap);
        if (b->n) memcpy(p, b->p, b->n);
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
void jb_puts(jx_buf *b, const char *s) { jb_put(b, s, strlen(s)); }
void jb_putc(jx_buf *b, char c) { jb_put(b, &c, 1); }

/* ---- UTF-8 ---- */
size_t u8_dec(const char *s, size_t n, uint32_t *cp) {
    const unsigned char *u = (const unsigned char *)s;
    if (n == 0) { *cp = 0; return 0; }
    int len = u[0] < 0x80 ? 1 : (u[0] >> 5) == 6 ? 2 : (u[0] >> 4) == 14 ? 3 : (u[0] >> 3) == 30 ? 4 : 1;
    if ((size_t)len > n) len = 1;
    for (int i = 1; i < len; i++)
        if ((u[i] & 0xC0) != 0x80) len = 1;
    if (len == 1) { *cp = u[0]; return 1; }
    uint32_t c = u[0] & (0x7F >> len);
    for (int i = 1; i < len; i++) c = (c << 6) | (u[i] & 0x3F);
    *cp = c;
    return (size_t)len;
}
size_t u8_count(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += u8_dec(s + i, n - i, &cp);
        k++;
    }
    return k;
}
size_t u8_offset(const char *s, size_t n, size_t idx) {
    size_t i = 0;
    while (idx > 0 && i < n) {
        uint32_t cp;
        i += u8_dec(s + i, n - i, &cp);
        idx--;
    }
    return i;
}
int py_isspace(uint32_t c) {
    return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

/* ---- constructors ---- */
jv jv_undef(const char *msg) { jv v = jv_mk(JV_UNDEF); v.undef = msg; return v; }
jv jv_bool(int b) { jv v = jv_mk(JV_BOOL); v.u.b = b != 0; return v; }
jv jv_int(int64_t i) { jv v = jv_mk(JV_INT); v.u.i = i; return v; }
jv jv_float(double f) { jv v = jv_mk(JV_FLOAT); v.u.f = f; return v; }
jv jv_sref(const char *s, size_t n) { jv v = jv_mk(JV_STR); v.u.s = s; v.n = n; return v; }
jv jv_str(jx_arena *a, const char *s, size_t n) { return jv_sref(jx_strdup(a, s, n), n); }
jv jv_cstr(const char *s) { return jv_sref(s, strlen(s)); }

jv_list *jl_new(jx_arena *a, size_t cap) {
    jv_list *l = jx_alloc(a, sizeof *l);
    if (cap) {
        if (cap > SIZE_MAX / sizeof(jv) / 2) jx_throw(a->err, 0, 0, "list too large");
        l->v = jx_alloc(a, cap * sizeof(jv));
        l->cap = cap;
    }
    return l;
}
void jl_push(jx_arena *a, jv_list *l, jv v) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        jv *nv = jx_alloc(a, cap * sizeof(jv));
        if (l->n) memcpy(nv, l->v, l->n * sizeof(jv));
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
}
jv jv_list_of(jv_list *l) { jv v = jv_mk(JV_LIST); v.u.l = l; return v; }

jv_dict *jd_new(jx_arena *a, size_t cap) {
    jv_dict *d = jx_alloc(a, sizeof *d);
    if (cap) {
        d->k = jx_alloc(a, cap * sizeof(jv));
        d->v = jx_alloc(a, cap * sizeof(jv));
        d->cap = cap;
    }
    return d;
}
jv *jd_get(const jv_dict *d, const char *key, size_t n) {
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t == JV_STR && d->k[i].n == n && !memcmp(d->k[i].u.s, key, n)) return &d->v[i];
    return NULL;
}
jv *jd_getv(const jv_dict *d, jv key) {
    if (key.t == JV_STR) return jd_get(d, key.u.s, key.n);
    for (size_t i = 0; i < d->n; i++)
        if (jv_equal(d->k[i], key)) return &d->v[i];
    return NULL;
}
void jd_set(jx_arena *a, jv_dict *d, jv key, jv val) {
    jv *p = jd_getv(d, key);
    if (p) { *p = val; return; }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        jv *nk = jx_alloc(a, cap * sizeof(jv)), *nv = jx_alloc(a, cap * sizeof(jv));
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof(jv));
            memcpy(nv, d->v, d->n * sizeof(jv));
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = key;
    d->v[d->n++] = val;
}
jv jv_dict_of(jv_dict *d) { jv v = jv_mk(JV_DICT); v.u.d = d; return v; }

jv jv_from_cjson(jx_arena *a, const cJSON *j) {
    if (!j || cJSON_IsNull(j)) return jv_mk(JV_NONE);
    if (cJSON_IsBool(j)) return jv_bool(cJSON_IsTrue(j));
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        /* JSON does not say int or float once parsed: integral values within 2^53 are ints */
        if (isfinite(d) && d == floor(d) && fabs(d) <= 9007199254740992.0) return jv_int((int64_t)d);
        return jv_float(d);
    }
    if (cJSON_IsString(j)) return jv_sref(j->valuestring, strlen(j->valuestring));
    if (cJSON_IsArray(j)) {
        jv_list *l = jl_new(a, (size_t)cJSON_GetArraySize(j));
        for (const cJSON *c = j->child; c; c = c->next) jl_push(a, l, jv_from_cjson(a, c));
        return jv_list_of(l);
    }
    if (cJSON_IsObject(j)) {
        jv_dict *d = jd_new(a, (size_t)cJSON_GetArraySize(j));
        for (const cJSON *c = j->child; c; c = c->next)
            jd_set(a, d, jv_sref(c->string, strlen(c->string)), jv_from_cjson(a, c));
        return jv_dict_of(d);
    }
    return jv_mk(JV_NONE);
}

/* ---- Python semantics ---- */
const char *jv_typename(jv v) {
    switch (v.t) {
    case JV_UNDEF: return "Undefined";
    case JV_NONE: return "NoneType";
    case JV_BOOL: return "bool";
    case JV_INT: return "int";
    case JV_FLOAT: return "float";
    case JV_STR: return "str";
    case JV_LIST: return v.aux ? "tuple" : "list";
    case JV_DICT: return "dict";
    case JV_NS: return "Namespace";
    case JV_FUNC: return "builtin_function_or_method";
    case JV_MACRO: return "Macro";
    case JV_METHOD: return "builtin_function_or_method";
    case JV_LOOP: return "LoopContext";
    }
    return "object";
}

int jv_truthy(jv v) {
    switch (v.t) {
    case JV_UNDEF: case JV_NONE: return 0;
    case JV_BOOL: return v.u.b;
    case JV_INT: return v.u.i != 0;
    case JV_FLOAT: return v.u.f != 0.0;
    case JV_STR: return v.n != 0;
    case JV_LIST: return v.u.l->n != 0;
    case JV_DICT: return v.u.d->n != 0;
    default: return 1;
    }
}

int jv_is_num(jv v) { return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL; }
double jv_num(jv v) { return v.t == JV_FLOAT ? v.u.f : v.t == JV_INT ? (double)v.u.i : v.t == JV_BOOL ? v.u.b : 0; }

int jv_equal(jv a, jv b) {
    if (jv_is_num(a) && jv_is_num(b)) {
        if (a.t != JV_FLOAT && b.t != JV_FLOAT)
            return (a.t == JV_INT ? a.u.i : a.u.b) == (b.t == JV_INT ? b.u.i : b.u.b);
        return jv_num(a) == jv_num(b);
    }
    if (a.t != b.t) return 0;
    switch (a.t) {
    case JV_UNDEF: case JV_NONE: return 1;
    case JV_STR: return a.n == b.n && !memcmp(a.u.s, b.u.s, a.n);
    case JV_LIST:
        if (a.aux != b.aux || a.u.l->n != b.u.l->n) return 0;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!jv_equal(a.u.l->v[i], b.u.l->v[i])) return 0;
        return 1;
    case JV_DICT:
        if (a.u.d->n != b.u.d->n) return 0;
        for (size_t i = 0; i < a.u.d->n; i++) {
            jv *o = jd_getv(b.u.d, a.u.d->k[i]);
            if (!o || !jv_equal(a.u.d->v[i], *o)) return 0;
        }
        return 1;
    case JV_NS: return a.u.d == b.u.d;
    case JV_FUNC: return a.aux == b.aux;
    case JV_MACRO: return a.u.m == b.u.m;
    case JV_LOOP: return a.u.loop == b.u.loop;
    default: return 0;
    }
}

int jv_order(jv a, jv b) {
    if (jv_is_num(a) && jv_is_num(b)) {
        if (a.t == JV_INT && b.t == JV_INT) return (a.u.i > b.u.i) - (a.u.i < b.u.i);
        double x = jv_num(a), y = jv_num(b);
        return (x > y) - (x < y);
    }
    if (a.t == JV_STR && b.t == JV_STR) {
        size_t m = a.n < b.n ? a.n : b.n;
        int c = memcmp(a.u.s, b.u.s, m);
        if (c) return c < 0 ? -1 : 1;
        return (a.n > b.n) - (a.n < b.n);
    }
    if (a.t == JV_LIST && b.t == JV_LIST) {
        for (size_t i = 0; i < a.u.l->n && i < b.u.l->n; i++) {
            if (jv_equal(a.u.l->v[i], b.u.l->v[i])) continue;
            return jv_order(a.u.l->v[i], b.u.l->v[i]);
        }
        return (a.u.l->n > b.u.l->n) - (a.u.l->n < b.u.l->n);
    }
    return 2;
}

/* Python's repr(float): shortest digits that round-trip, fixed notation for 1e-4 <= |x| < 1e16. */
void py_float_repr(double d, char *buf) {
    if (isnan(d)) { strcpy(buf, "nan"); return; }
    if (isinf(d)) { strcpy(buf, d < 0 ? "-inf" : "inf"); return; }
    char tmp[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, d);
        if (strtod(tmp, NULL) == d) break;
    }
    /* tmp = [-]D[.DDD]e[+-]XX */
    char digits[24];
    int nd = 0, neg = 0;
    const char *p = tmp;
    if (*p == '-') { neg = 1; p++; }
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9') digits[nd++] = *p;
    int exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    int decpt = exp10 + 1;
    char *o = buf;
    if (neg) *o++ = '-';
    if (decpt <= -4 || decpt > 16) {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            memcpy(o, digits + 1, (size_t)nd - 1);
            o += nd - 1;
        }
        sprintf(o, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
        return;
    }
    if (decpt <= 0) {
        *o++ = '0';
        *o++ = '.';
        for (int i = 0; i < -decpt; i++) *o++ = '0';
        memcpy(o, digits, (size_t)nd);
        o += nd;
    } else if (decpt >= nd) {
        memcpy(o, digits, (size_t)nd);
        o += nd;
        for (int i = nd; i < decpt; i++) *o++ = '0';
        *o++ = '.';
        *o++ = '0';
    } else {
        memcpy(o, digits, (size_t)decpt);
        o += decpt;
        *o++ = '.';
        memcpy(o, digits + decpt, (size_t)(nd - decpt));
        o += nd - decpt;
    }
    *o = 0;
}

static void write_num(jx_buf *b, jv v) {
    char tmp[40];
    if (v.t == JV_INT) snprintf(tmp, sizeof tmp, "%" PRId64, v.u.i);
    else py_float_repr(v.u.f, tmp);
    jb_puts(b, tmp);
}

static void write_str_repr(jx_buf *b, const char *s, size_t n) {
    int has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    jb_putc(b, q);
    for (size_t i = 0; i < n;) {
        uint32_t c;
        size_t k = u8_dec(s + i, n - i, &c);
        char tmp[16];
        if (c == (uint32_t)q || c == '\\') { jb_putc(b, '\\'); jb_putc(b, (char)c); }
        else if (c == '\n') jb_puts(b, "\\n");
        else if (c == '\r') jb_puts(b, "\\r");
        else if (c == '\t') jb_puts(b, "\\t");
        else if (c < 0x20 || (c >= 0x7f && c <= 0xa0) || c == 0xad) { snprintf(tmp, sizeof tmp, "\\x%02x", c); jb_puts(b, tmp); }
        else if ((c >= 0x2000 && c <= 0x200f) || (c >= 0x2028 && c <= 0x202f) || (c >= 0x205f && c <= 0x206f) ||
                 c == 0x3000 || c == 0xfeff || c == 0x1680) { snprintf(tmp, sizeof tmp, "\\u%04x", c); jb_puts(b, tmp); }
        else jb_put(b, s + i, k);
        i += k;
    }
    jb_putc(b, q);
}

static void repr_lvl(jx_buf *b, jv v, int level);
void jv_write_repr(jx_buf *b, jv v) { repr_lvl(b, v, 0); }

/* level bounds recursion: namespaces are mutable and can contain themselves */
static void repr_lvl(jx_buf *b, jv v, int level) {
    if (level > 200) { jb_puts(b, "..."); return; }
    switch (v.t) {
    case JV_UNDEF: jb_puts(b, "Undefined"); break;
    case JV_NONE: jb_puts(b, "None"); break;
    case JV_BOOL: jb_puts(b, v.u.b ? "True" : "False"); break;
    case JV_INT: case JV_FLOAT: write_num(b, v); break;
    case JV_STR: write_str_repr(b, v.u.s, v.n); break;
    case JV_LIST:
        jb_putc(b, v.aux ? '(' : '[');
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) jb_puts(b, ", ");
            repr_lvl(b, v.u.l->v[i], level + 1);
        }
        if (v.aux && v.u.l->n == 1) jb_putc(b, ',');
        jb_putc(b, v.aux ? ')' : ']');
        break;
    case JV_NS:
    case JV_DICT:
        if (v.t == JV_NS) jb_puts(b, "<Namespace ");
        jb_putc(b, '{');
        for (size_t i = 0; i < v.u.d->n; i++) {
            if (i) jb_puts(b, ", ");
            repr_lvl(b, v.u.d->k[i], level + 1);
            jb_puts(b, ": ");
            repr_lvl(b, v.u.d->v[i], level + 1);
        }
        jb_putc(b, '}');
        if (v.t == JV_NS) jb_putc(b, '>');
        break;
    case JV_FUNC: case JV_METHOD: jb_puts(b, "<built-in function>"); break;
    case JV_MACRO: jb_puts(b, "<Macro>"); break;
    case JV_LOOP: {
        char tmp[64];
        snprintf(tmp, sizeof tmp, "<LoopContext %zu/%zu>", v.u.loop->i + 1, v.u.loop->items->n);
        jb_puts(b, tmp);
        break;
    }
    }
}

void jv_write_str(jx_buf *b, jv v) {
    if (v.t == JV_STR) jb_put(b, v.u.s, v.n);
    else if (v.t != JV_UNDEF) jv_write_repr(b, v);
}

jv jv_to_string(jx_arena *a, jv v) {
    if (v.t == JV_STR) return v;
    if (v.t == JV_UNDEF) return jv_sref("", 0);
    jx_buf b = {.ar = a};
    jv_write_repr(&b, v);
    return jv_sref(b.p ? b.p : "", b.n);
}

static void write_json_str(jx_buf *b, const char *s, size_t n) {
    jb_putc(b, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char tmp[8];
        if (c == '"') esc = "\\\"";
        else if (c == '\\') esc = "\\\\";
        else if (c == '\n') esc = "\\n";
        else if (c == '\r') esc = "\\r";
        else if (c == '\t') esc = "\\t";
        else if (c == '\b') esc = "\\b";
        else if (c == '\f') esc = "\\f";
        else if (c < 0x20) { snprintf(tmp, sizeof tmp, "\\u%04x", c); esc = tmp; }
        if (!esc) continue;
        jb_put(b, s + run, i - run);
        jb_puts(b, esc);
        run = i + 1;
    }
    jb_put(b, s + run, n - run);
    jb_putc(b, '"');
}

static void json_newline(jx_buf *b, const char *indent, int level) {
    jb_putc(b, '\n');
    for (int i = 0; i < level; i++) jb_puts(b, indent);
}

static int key_cmp(const void *x, const void *y) {
    const jv *a = *(const jv *const *)x, *b = *(const jv *const *)y;
    int o = jv_order(*a, *b);
    return o == 2 ? 0 : o;
}

const char *jv_write_json(jx_buf *b, jv v, const char *indent, const char *item_sep, const char *key_sep, int sort_keys, int level) {
    char tmp[40];
    if (level > 500) return JV_JSON_TOO_DEEP;
    switch (v.t) {
    case JV_NONE: jb_puts(b, "null"); return NULL;
    case JV_BOOL: jb_puts(b, v.u.b ? "true" : "false"); return NULL;
    case JV_INT: write_num(b, v); return NULL;
    case JV_FLOAT:
        if (isnan(v.u.f)) jb_puts(b, "NaN");
        else if (isinf(v.u.f)) jb_puts(b, v.u.f < 0 ? "-Infinity" : "Infinity");
        else { py_float_repr(v.u.f, tmp); jb_puts(b, tmp); }
        return NULL;
    case JV_STR: write_json_str(b, v.u.s, v.n); return NULL;
    case JV_LIST: {
        if (!v.u.l->n) { jb_puts(b, "[]"); return NULL; }
        jb_putc(b, '[');
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) jb_puts(b, item_sep);
            if (indent) json_newline(b, indent, level + 1);
            const char *bad = jv_write_json(b, v.u.l->v[i], indent, item_sep, key_sep, sort_keys, level + 1);
            if (bad) return bad;
        }
        if (indent) json_newline(b, indent, level);
        jb_putc(b, ']');
        return NULL;
    }
    case JV_DICT: {
        jv_dict *d = v.u.d;
        if (!d->n) { jb_puts(b, "{}"); return NULL; }
        const jv **order = jx_alloc(b->ar, d->n * sizeof *order);
        for (size_t i = 0; i < d->n; i++) order[i] = &d->k[i];
        if (sort_keys) qsort(order, d->n, sizeof *order, key_cmp);
        jb_putc(b, '{');
        for (size_t i = 0; i < d->n; i++) {
            jv k = *order[i];
            size_t idx = (size_t)(order[i] - d->k);
            if (i) jb_puts(b, item_sep);
            if (indent) json_newline(b, indent, level + 1);
            if (k.t == JV_STR) write_json_str(b, k.u.s, k.n);
            else if (k.t == JV_NONE) jb_puts(b, "\"null\"");
            else if (k.t == JV_BOOL) jb_puts(b, k.u.b ? "\"true\"" : "\"false\"");
            else if (k.t == JV_INT || k.t == JV_FLOAT) {
                jb_putc(b, '"');
                write_num(b, k);
                jb_putc(b, '"');
            } else return "dict key";
            jb_puts(b, key_sep);
            const char *bad = jv_write_json(b, d->v[idx], indent, item_sep, key_sep, sort_keys, level + 1);
            if (bad) return bad;
        }
        if (indent) json_newline(b, indent, level);
        jb_putc(b, '}');
        return NULL;
    }
    default: return jv_typename(v);
    }
}
