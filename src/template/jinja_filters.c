/* Filters and tests of the Jinja-subset engine, with jinja2's built-in semantics and the
 * transformers override of tojson (json.dumps, ensure_ascii=False, optional indent). Filters are
 * looked up by name at parse time, so an unknown filter is a parse error with a position. */
#include "template/jinja_internal.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    F_ABS, F_CAPITALIZE, F_COUNT, F_D, F_DEFAULT, F_E, F_ESCAPE, F_FIRST, F_FLOAT, F_INDENT, F_INT, F_ITEMS, F_JOIN,
    F_LAST, F_LENGTH, F_LIST, F_LOWER, F_MAP, F_MAX, F_MIN, F_REJECT, F_REJECTATTR, F_REPLACE, F_REVERSE, F_ROUND,
    F_SAFE, F_SELECT, F_SELECTATTR, F_SORT, F_STRING, F_SUM, F_TITLE, F_TOJSON, F_TRIM, F_UNIQUE, F_UPPER, F_N
};
static const char *const filter_names[F_N] = {
    "abs", "capitalize", "count", "d", "default", "e", "escape", "first", "float", "indent", "int", "items", "join",
    "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr", "replace", "reverse", "round",
    "safe", "select", "selectattr", "sort", "string", "sum", "title", "tojson", "trim", "unique", "upper"};

enum {
    T_DEFINED, T_UNDEFINED, T_NONE, T_STRING, T_MAPPING, T_ITERABLE, T_SEQUENCE, T_NUMBER, T_INTEGER, T_FLOAT,
    T_BOOLEAN, T_TRUE, T_FALSE, T_CALLABLE, T_EQ, T_EQUALTO, T_EQEQ, T_NE, T_NEQ, T_LT, T_LESSTHAN, T_LTS, T_LE,
    T_LES, T_GT, T_GREATERTHAN, T_GTS, T_GE, T_GES, T_IN, T_ODD, T_EVEN, T_DIVISIBLEBY, T_SAMEAS, T_LOWER, T_UPPER,
    T_FILTER, T_TEST, T_N
};
static const char *const test_names[T_N] = {
    "defined", "undefined", "none", "string", "mapping", "iterable", "sequence", "number", "integer", "float",
    "boolean", "true", "false", "callable", "eq", "equalto", "==", "ne", "!=", "lt", "lessthan", "<", "le",
    "<=", "gt", "greaterthan", ">", "ge", ">=", "in", "odd", "even", "divisibleby", "sameas", "lower", "upper",
    "filter", "test"};

int jx_filter_id(const char *name) {
    for (int i = 0; i < F_N; i++)
        if (!strcmp(filter_names[i], name)) return i;
    return -1;
}
int jx_test_id(const char *name) {
    for (int i = 0; i < T_N; i++)
        if (!strcmp(test_names[i], name)) return i;
    return -1;
}

static jx_args no_args(void) { jx_args a = {0}; return a; }
static jx_args one_arg(jv *v) { jx_args a = {0}; a.npos = 1; a.pos = v; return a; }
/* args without the first `skip` positionals */
static jx_args args_from(const jx_args *a, int skip) {
    jx_args r = *a;
    if (skip > r.npos) skip = r.npos;
    if (skip > 0) r.pos += skip; /* pos is NULL when there are no positionals */
    r.npos -= skip;
    return r;
}

static int64_t want_int(jx_ctx *c, const jnode *at, jv v, const char *what) {
    if (v.t == JV_INT) return v.u.i;
    if (v.t == JV_BOOL) return v.u.b;
    jx_fail(c, at, "%s must be an integer, not '%s'", what, jv_typename(v));
}

static size_t py_len(jx_ctx *c, const jnode *at, jv v) {
    switch (v.t) {
    case JV_STR: return u8_count(v.u.s, v.n);
    case JV_LIST: return v.u.l->n;
    case JV_DICT: return v.u.d->n;
    case JV_UNDEF: return 0;
    default: jx_fail(c, at, "object of type '%s' has no len()", jv_typename(v));
    }
}

/* attribute path "a.b" resolved like jinja2's make_attrgetter (item lookup first) */
static jv attr_path(jx_ctx *c, const jnode *at, jv item, jv attr) {
    if (attr.t == JV_INT) return jx_getitem(c, at, item, attr);
    if (attr.t != JV_STR) jx_fail(c, at, "attribute must be a string");
    const char *p = attr.u.s, *end = attr.u.s + attr.n;
    while (p <= end) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        if (!dot) dot = end;
        jv key = jv_sref(p, (size_t)(dot - p));
        int isnum = dot > p;
        for (const char *q = p; q < dot; q++) isnum &= *q >= '0' && *q <= '9';
        if (isnum) key = jv_int(strtoll(p, NULL, 10));
        item = jx_getitem(c, at, item, key);
        p = dot + 1;
    }
    return item;
}

static int sort_cmp(jx_ctx *c, const jnode *at, jv a, jv b, int case_sensitive) {
    if (!case_sensitive && a.t == JV_STR && b.t == JV_STR) {
        jx_args none = no_args();
        a = jx_str_method(c, at, a, "lower", &none);
        b = jx_str_method(c, at, b, "lower", &none);
    }
    int o = jv_order(a, b);
    if (o == 2) jx_fail(c, at, "'<' not supported between instances of '%s' and '%s'", jv_typename(a), jv_typename(b));
    return o;
}

static void merge_sort(jx_ctx *c, const jnode *at, jv *v, jv *keys, jv *tmpv, jv *tmpk, size_t n, int cs, int rev) {
    if (n < 2) return;
    size_t m = n / 2;
    merge_sort(c, at, v, keys, tmpv, tmpk, m, cs, rev);
    merge_sort(c, at, v + m, keys + m, tmpv, tmpk, n - m, cs, rev);
    size_t i = 0, j = m, k = 0;
    while (i < m && j < n) {
        int o = sort_cmp(c, at, keys[j], keys[i], cs);
        int take_right = rev ? o > 0 : o < 0; /* stable */
        if (take_right) { tmpv[k] = v[j]; tmpk[k++] = keys[j++]; }
        else { tmpv[k] = v[i]; tmpk[k++] = keys[i++]; }
    }
    while (i < m) { tmpv[k] = v[i]; tmpk[k++] = keys[i++]; }
    while (j < n) { tmpv[k] = v[j]; tmpk[k++] = keys[j++]; }
    memcpy(v, tmpv, n * sizeof *v);
    memcpy(keys, tmpk, n * sizeof *keys);
}

static jv select_items(jx_ctx *c, const jnode *at, jv in, jx_args *a, int attr_mode, int keep) {
    jv_list *src = jx_iterate(c, at, in), *out = jl_new(&c->ar, 0);
    int skip = attr_mode ? 1 : 0;
    jv attr = attr_mode ? jx_arg(a, 0, NULL, jv_undef(NULL)) : jv_undef(NULL);
    jv tname = jx_arg(a, skip, NULL, jv_undef(NULL));
    int tid = -1;
    if (tname.t == JV_STR) {
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)(tname.n > 60 ? 60 : tname.n), tname.u.s);
        tid = jx_test_id(name);
        if (tid < 0) jx_fail(c, at, "No test named '%s'.", name);
    }
    jx_args targs = args_from(a, skip + 1);
    for (size_t i = 0; i < src->n; i++) {
        jv v = attr_mode ? attr_path(c, at, src->v[i], attr) : src->v[i];
        int t = tid >= 0 ? jx_test_apply(c, at, tid, v, &targs) : jv_truthy(v);
        if (t == keep) jl_push(&c->ar, out, src->v[i]);
    }
    return jv_list_of(out);
}

static jv do_tojson(jx_ctx *c, const jnode *at, jv in, jx_args *a) {
    jv ea = jx_arg(a, 0, "ensure_ascii", jv_bool(0));
    jv ind = jx_arg(a, 1, "indent", jv_mk(JV_NONE));
    jv seps = jx_arg(a, 2, "separators", jv_mk(JV_NONE));
    jv sk = jx_arg(a, 3, "sort_keys", jv_bool(0));
    if (jv_truthy(ea)) jx_fail(c, at, "tojson: ensure_ascii=True is not supported");
    char spaces[64];
    const char *indent = NULL;
    if (ind.t == JV_INT || ind.t == JV_BOOL) {
        int64_t k = ind.t == JV_INT ? ind.u.i : ind.u.b;
        if (k < 0) k = 0;
        if (k > 60) jx_fail(c, at, "tojson: indent too large");
        memset(spaces, ' ', (size_t)k);
        spaces[k] = 0;
        indent = spaces;
    } else if (ind.t == JV_STR) indent = jx_strdup(&c->ar, ind.u.s, ind.n);
    else if (ind.t != JV_NONE && ind.t != JV_UNDEF) jx_fail(c, at, "tojson: indent must be an integer or a string");
    const char *item_sep = indent ? "," : ", ", *key_sep = ": ";
    if (seps.t == JV_LIST && seps.u.l->n == 2 && seps.u.l->v[0].t == JV_STR && seps.u.l->v[1].t == JV_STR) {
        item_sep = jx_strdup(&c->ar, seps.u.l->v[0].u.s, seps.u.l->v[0].n);
        key_sep = jx_strdup(&c->ar, seps.u.l->v[1].u.s, seps.u.l->v[1].n);
    } else if (seps.t != JV_NONE && seps.t != JV_UNDEF) jx_fail(c, at, "tojson: separators must be a pair of strings");
    jx_buf b = {.ar = &c->ar, .limit = c->max_out};
    jb_put(&b, "", 0);
    const char *bad = jv_write_json(&b, in, indent, item_sep, key_sep, jv_truthy(sk), 0);
    if (bad && !strcmp(bad, JV_JSON_TOO_DEEP)) jx_fail(c, at, "Circular reference detected (or nesting deeper than 500)");
    if (bad) jx_fail(c, at, "Object of type %s is not JSON serializable", bad);
    return jv_sref(b.p, b.n);
}

/* str.splitlines() boundaries: returns the length of the line break at s (0 if none) */
static size_t line_break(const char *s, size_t n) {
    if (!n) return 0;
    unsigned char ch = (unsigned char)s[0];
    if (ch == '\r') return n > 1 && s[1] == '\n' ? 2 : 1;
    if (ch == '\n' || ch == '\v' || ch == '\f' || (ch >= 0x1c && ch <= 0x1e)) return 1;
    uint32_t cp;
    size_t k = u8_dec(s, n, &cp);
    return cp == 0x85 || cp == 0x2028 || cp == 0x2029 ? k : 0;
}

static jv do_indent(jx_ctx *c, const jnode *at, jv in, jx_args *a) {
    jv w = jx_arg(a, 0, "width", jv_int(4));
    int first = jv_truthy(jx_arg(a, 1, "first", jv_bool(0))), blank = jv_truthy(jx_arg(a, 2, "blank", jv_bool(0)));
    jv s = jv_to_string(&c->ar, in);
    jx_buf ind = {.ar = &c->ar}, out = {.ar = &c->ar, .limit = c->max_out};
    jb_put(&ind, "", 0);
    jb_put(&out, "", 0);
    if (w.t == JV_STR) jb_put(&ind, w.u.s, w.n);
    else for (int64_t i = want_int(c, at, w, "width"); i > 0; i--) jb_putc(&ind, ' ');
    /* lines of s + "\n" */
    size_t i = 0, nline = 0;
    if (first) jb_put(&out, ind.p, ind.n);
    while (i < s.n) {
        size_t j = i, br = 0;
        while (j < s.n && !(br = line_break(s.u.s + j, s.n - j))) j++;
        size_t len = j - i;
        if (nline) {
            jb_putc(&out, '\n');
            if (blank || len) jb_put(&out, ind.p, ind.n);
        }
        jb_put(&out, s.u.s + i, len);
        nline++;
        i = j + br;
    }
    return jv_sref(out.p, out.n);
}

static jv html_escape(jx_ctx *c, jv in) {
    jv s = jv_to_string(&c->ar, in);
    jx_buf b = {.ar = &c->ar, .limit = c->max_out};
    jb_put(&b, "", 0);
    for (size_t i = 0; i < s.n; i++) {
        char ch = s.u.s[i];
        if (ch == '&') jb_puts(&b, "&amp;");
        else if (ch == '<') jb_puts(&b, "&lt;");
        else if (ch == '>') jb_puts(&b, "&gt;");
        else if (ch == '"') jb_puts(&b, "&#34;");
        else if (ch == '\'') jb_puts(&b, "&#39;");
        else jb_putc(&b, ch);
    }
    return jv_sref(b.p, b.n);
}

static jv to_number(jx_ctx *c, jv in, int want_float, jv def, int base) {
    if (in.t == JV_INT) return want_float ? jv_float((double)in.u.i) : in;
    if (in.t == JV_BOOL) return want_float ? jv_float(in.u.b) : jv_int(in.u.b);
    if (in.t == JV_FLOAT) {
        if (want_float) return in;
        if (!isfinite(in.u.f)) return def;
        return jv_int((int64_t)in.u.f);
    }
    if (in.t == JV_STR) {
        char *s = jx_strdup(&c->ar, in.u.s, in.n), *end;
        while (*s == ' ' || (*s >= 9 && *s <= 13)) s++;
        if (!want_float) {
            long long v = strtoll(s, &end, base);
            if (end != s) {
                while (*end == ' ' || (*end >= 9 && *end <= 13)) end++;
                if (!*end) return jv_int(v);
            }
        }
        double d = strtod(s, &end);
        if (end == s) return def;
        while (*end == ' ' || (*end >= 9 && *end <= 13)) end++;
        if (*end) return def;
        if (want_float) return jv_float(d);
        return isfinite(d) ? jv_int((int64_t)d) : def;
    }
    return def;
}

jv jx_filter_apply(jx_ctx *c, const jnode *at, int id, jv in, jx_args *a) {
    jx_args none = no_args();
    switch (id) {
    case F_ABS:
        if (in.t == JV_INT) return jv_int(in.u.i < 0 ? -in.u.i : in.u.i);
        if (in.t == JV_FLOAT) return jv_float(fabs(in.u.f));
        if (in.t == JV_BOOL) return jv_int(in.u.b);
        jx_fail(c, at, "bad operand type for abs(): '%s'", jv_typename(in));
    case F_CAPITALIZE: return jx_str_method(c, at, jv_to_string(&c->ar, in), "capitalize", &none);
    case F_TITLE: {
        /* jinja2's do_title: capitalize each word split at whitespace and -({[< */
        jv s = jv_to_string(&c->ar, in);
        jx_buf b = {.ar = &c->ar};
        jb_put(&b, "", 0);
        int start = 1;
        for (size_t i = 0; i < s.n; i++) {
            char ch = s.u.s[i];
            int sep = ch == ' ' || (ch >= 9 && ch <= 13) || ch == '-' || ch == '(' || ch == '{' || ch == '[' || ch == '<';
            if (sep) { jb_putc(&b, ch); start = 1; continue; }
            jb_putc(&b, start && ch >= 'a' && ch <= 'z' ? (char)(ch - 32) : !start && ch >= 'A' && ch <= 'Z' ? (char)(ch + 32) : ch);
            start = 0;
        }
        return jv_sref(b.p, b.n);
    }
    case F_COUNT: case F_LENGTH: return jv_int((int64_t)py_len(c, at, in));
    case F_D: case F_DEFAULT: {
        jv def = jx_arg(a, 0, "default_value", jv_sref("", 0));
        int boolean = jv_truthy(jx_arg(a, 1, "boolean", jv_bool(0)));
        if (in.t == JV_UNDEF || (boolean && !jv_truthy(in))) return def;
        return in;
    }
    case F_E: case F_ESCAPE: return html_escape(c, in);
    case F_FIRST: case F_LAST: {
        if (in.t == JV_LIST && in.u.l->n) return in.u.l->v[id == F_FIRST ? 0 : in.u.l->n - 1];
        jv_list *l = jx_iterate(c, at, in);
        if (!l->n) return jv_undef(id == F_FIRST ? "No first item, sequence was empty." : "No last item, sequence was empty.");
        return l->v[id == F_FIRST ? 0 : l->n - 1];
    }
    case F_FLOAT: return to_number(c, in, 1, jx_arg(a, 0, "default", jv_float(0)), 10);
    case F_INT: {
        jv base = jx_arg(a, 1, "base", jv_int(10));
        return to_number(c, in, 0, jx_arg(a, 0, "default", jv_int(0)), (int)want_int(c, at, base, "base"));
    }
    case F_INDENT: return do_indent(c, at, in, a);
    case F_ITEMS: {
        if (in.t == JV_UNDEF) return jv_list_of(jl_new(&c->ar, 0));
        if (in.t != JV_DICT) jx_fail(c, at, "Can only get item pairs from a mapping.");
        jv_list *l = jl_new(&c->ar, in.u.d->n);
        for (size_t i = 0; i < in.u.d->n; i++) {
            jv_list *p = jl_new(&c->ar, 2);
            jl_push(&c->ar, p, in.u.d->k[i]);
            jl_push(&c->ar, p, in.u.d->v[i]);
            jv t = jv_list_of(p);
            t.aux = 1;
            jl_push(&c->ar, l, t);
        }
        return jv_list_of(l);
    }
    case F_JOIN: {
        jv sep = jx_arg(a, 0, "d", jv_sref("", 0));
        jv attr = jx_arg(a, 1, "attribute", jv_mk(JV_NONE));
        jv_list *l = jx_iterate(c, at, in);
        jx_buf b = {.ar = &c->ar, .limit = c->max_out};
        jb_put(&b, "", 0);
        for (size_t i = 0; i < l->n; i++) {
            if (i) jv_write_str(&b, sep);
            jv_write_str(&b, attr.t == JV_NONE ? l->v[i] : attr_path(c, at, l->v[i], attr));
        }
        return jv_sref(b.p, b.n);
    }
    case F_LIST: {
        jv_list *src = jx_iterate(c, at, in), *l = jl_new(&c->ar, src->n);
        for (size_t i = 0; i < src->n; i++) jl_push(&c->ar, l, src->v[i]);
        return jv_list_of(l);
    }
    case F_LOWER: return jx_str_method(c, at, jv_to_string(&c->ar, in), "lower", &none);
    case F_UPPER: return jx_str_method(c, at, jv_to_string(&c->ar, in), "upper", &none);
    case F_MAP: {
        jv_list *src = jx_iterate(c, at, in), *out = jl_new(&c->ar, src->n);
        jv attr = jx_arg(a, -1, "attribute", jv_undef(NULL));
        if (attr.t != JV_UNDEF) {
            jv def = jx_arg(a, -1, "default", jv_undef(NULL));
            for (size_t i = 0; i < src->n; i++) {
                jv v = attr_path(c, at, src->v[i], attr);
                jl_push(&c->ar, out, v.t == JV_UNDEF && def.t != JV_UNDEF ? def : v);
            }
            return jv_list_of(out);
        }
        jv fname = jx_arg(a, 0, NULL, jv_undef(NULL));
        if (fname.t != JV_STR) jx_fail(c, at, "map: expected a filter name or attribute=");
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)(fname.n > 60 ? 60 : fname.n), fname.u.s);
        int fid = jx_filter_id(name);
        if (fid < 0) jx_fail(c, at, "No filter named '%s'.", name);
        jx_args rest = args_from(a, 1);
        for (size_t i = 0; i < src->n; i++) jl_push(&c->ar, out, jx_filter_apply(c, at, fid, src->v[i], &rest));
        return jv_list_of(out);
    }
    case F_MAX: case F_MIN: {
        jv_list *l = jx_iterate(c, at, in);
        int cs = jv_truthy(jx_arg(a, 0, "case_sensitive", jv_bool(0)));
        jv attr = jx_arg(a, 1, "attribute", jv_mk(JV_NONE));
        if (!l->n) return jv_undef(id == F_MAX ? "No largest item, sequence was empty." : "No smallest item, sequence was empty.");
        jv best = l->v[0];
        for (size_t i = 1; i < l->n; i++) {
            jv x = attr.t == JV_NONE ? l->v[i] : attr_path(c, at, l->v[i], attr);
            jv y = attr.t == JV_NONE ? best : attr_path(c, at, best, attr);
            int o = sort_cmp(c, at, x, y, cs);
            if (id == F_MAX ? o > 0 : o < 0) best = l->v[i];
        }
        return best;
    }
    case F_REJECT: return select_items(c, at, in, a, 0, 0);
    case F_SELECT: return select_items(c, at, in, a, 0, 1);
    case F_REJECTATTR: return select_items(c, at, in, a, 1, 0);
    case F_SELECTATTR: return select_items(c, at, in, a, 1, 1);
    case F_REPLACE: return jx_str_method(c, at, jv_to_string(&c->ar, in), "replace", a);
    case F_REVERSE: {
        if (in.t == JV_STR) {
            jv_list *ch = jx_iterate(c, at, in);
            jx_buf b = {.ar = &c->ar};
            jb_put(&b, "", 0);
            for (size_t i = ch->n; i > 0; i--) jb_put(&b, ch->v[i - 1].u.s, ch->v[i - 1].n);
            return jv_sref(b.p, b.n);
        }
        jv_list *src = jx_iterate(c, at, in), *l = jl_new(&c->ar, src->n);
        for (size_t i = src->n; i > 0; i--) jl_push(&c->ar, l, src->v[i - 1]);
        return jv_list_of(l);
    }
    case F_ROUND: {
        int64_t prec = want_int(c, at, jx_arg(a, 0, "precision", jv_int(0)), "precision");
        jv method = jx_arg(a, 1, "method", jv_cstr("common"));
        if (!jv_is_num(in)) jx_fail(c, at, "round: expected a number, got '%s'", jv_typename(in));
        double x = jv_num(in), p = pow(10, (double)prec), r;
        if (method.t == JV_STR && method.n == 4 && !memcmp(method.u.s, "ceil", 4)) r = ceil(x * p) / p;
        else if (method.t == JV_STR && method.n == 5 && !memcmp(method.u.s, "floor", 5)) r = floor(x * p) / p;
        else r = nearbyint(x * p) / p;
        return jv_float(r);
    }
    case F_SAFE: return in;
    case F_SORT: case F_UNIQUE: {
        int rev = id == F_SORT ? jv_truthy(jx_arg(a, 0, "reverse", jv_bool(0))) : 0;
        int cs = jv_truthy(jx_arg(a, id == F_SORT ? 1 : 0, "case_sensitive", jv_bool(0)));
        jv attr = jx_arg(a, id == F_SORT ? 2 : 1, "attribute", jv_mk(JV_NONE));
        jv_list *src = jx_iterate(c, at, in);
        size_t n = src->n;
        jv *v = jx_alloc(&c->ar, (n + 1) * sizeof(jv)), *k = jx_alloc(&c->ar, (n + 1) * sizeof(jv));
        for (size_t i = 0; i < n; i++) {
            v[i] = src->v[i];
            k[i] = attr.t == JV_NONE ? v[i] : attr_path(c, at, v[i], attr);
        }
        jv_list *out = jl_new(&c->ar, n);
        if (id == F_SORT) {
            jv *tv = jx_alloc(&c->ar, (n + 1) * sizeof(jv)), *tk = jx_alloc(&c->ar, (n + 1) * sizeof(jv));
            merge_sort(c, at, v, k, tv, tk, n, cs, rev);
            for (size_t i = 0; i < n; i++) jl_push(&c->ar, out, v[i]);
        } else {
            jv_list *seen = jl_new(&c->ar, n);
            for (size_t i = 0; i < n; i++) {
                jv key = k[i];
                if (!cs && key.t == JV_STR) key = jx_str_method(c, at, key, "lower", &none);
                if (jx_contains(c, at, key, jv_list_of(seen))) continue;
                jl_push(&c->ar, seen, key);
                jl_push(&c->ar, out, v[i]);
            }
        }
        return jv_list_of(out);
    }
    case F_STRING: return jv_to_string(&c->ar, in);
    case F_SUM: {
        jv attr = jx_arg(a, 0, "attribute", jv_mk(JV_NONE));
        jv acc = jx_arg(a, 1, "start", jv_int(0));
        jv_list *l = jx_iterate(c, at, in);
        for (size_t i = 0; i < l->n; i++) {
            jv x = attr.t == JV_NONE ? l->v[i] : attr_path(c, at, l->v[i], attr);
            if (!jv_is_num(x) || !jv_is_num(acc)) jx_fail(c, at, "sum: unsupported operand '%s'", jv_typename(x));
            if (acc.t != JV_FLOAT && x.t != JV_FLOAT) acc = jv_int((acc.t == JV_INT ? acc.u.i : acc.u.b) + (x.t == JV_INT ? x.u.i : x.u.b));
            else acc = jv_float(jv_num(acc) + jv_num(x));
        }
        return acc;
    }
    case F_TOJSON: return do_tojson(c, at, in, a);
    case F_TRIM: {
        jv chars = jx_arg(a, 0, "chars", jv_mk(JV_NONE));
        jx_args sa = chars.t == JV_NONE ? no_args() : one_arg(&chars);
        return jx_str_method(c, at, jv_to_string(&c->ar, in), "strip", &sa);
    }
    }
    jx_fail(c, at, "internal error: filter %d", id);
}

static int str_case(jv v, int upper) {
    if (v.t != JV_STR) return 0;
    int cased = 0;
    for (size_t i = 0; i < v.n; i++) {
        char ch = v.u.s[i];
        if (ch >= 'a' && ch <= 'z') { if (upper) return 0; cased = 1; }
        if (ch >= 'A' && ch <= 'Z') { if (!upper) return 0; cased = 1; }
    }
    return cased;
}

int jx_test_apply(jx_ctx *c, const jnode *at, int id, jv in, jx_args *a) {
    jv arg = jx_arg(a, 0, NULL, jv_undef("missing test argument"));
    switch (id) {
    case T_DEFINED: return in.t != JV_UNDEF;
    case T_UNDEFINED: return in.t == JV_UNDEF;
    case T_NONE: return in.t == JV_NONE;
    case T_STRING: return in.t == JV_STR;
    case T_MAPPING: return in.t == JV_DICT;
    case T_ITERABLE: case T_SEQUENCE: return in.t == JV_STR || in.t == JV_LIST || in.t == JV_DICT || in.t == JV_UNDEF;
    case T_NUMBER: return jv_is_num(in);
    case T_INTEGER: return in.t == JV_INT;
    case T_FLOAT: return in.t == JV_FLOAT;
    case T_BOOLEAN: return in.t == JV_BOOL;
    case T_TRUE: return in.t == JV_BOOL && in.u.b;
    case T_FALSE: return in.t == JV_BOOL && !in.u.b;
    case T_CALLABLE: return in.t == JV_FUNC || in.t == JV_METHOD || in.t == JV_MACRO;
    case T_EQ: case T_EQUALTO: case T_EQEQ: return jv_equal(in, arg);
    case T_NE: case T_NEQ: return !jv_equal(in, arg);
    case T_LT: case T_LESSTHAN: case T_LTS: case T_LE: case T_LES: case T_GT: case T_GREATERTHAN: case T_GTS: case T_GE: case T_GES: {
        if (in.t == JV_UNDEF) jx_fail_undef(c, at, in);
        if (arg.t == JV_UNDEF) jx_fail_undef(c, at, arg);
        int o = jv_order(in, arg);
        if (o == 2) jx_fail(c, at, "comparison not supported between instances of '%s' and '%s'", jv_typename(in), jv_typename(arg));
        if (id <= T_LTS) return o < 0;
        if (id <= T_LES) return o <= 0;
        if (id <= T_GTS) return o > 0;
        return o >= 0;
    }
    case T_IN: return jx_contains(c, at, in, arg);
    case T_ODD: case T_EVEN: {
        int64_t v = want_int(c, at, in, "value");
        return (v % 2 != 0) == (id == T_ODD);
    }
    case T_DIVISIBLEBY: {
        int64_t v = want_int(c, at, in, "value"), d = want_int(c, at, arg, "divisor");
        if (!d) jx_fail(c, at, "integer modulo by zero");
        return v % d == 0;
    }
    case T_SAMEAS:
        if (in.t != arg.t) return 0;
        return jv_equal(in, arg) && (in.t == JV_NONE || in.t == JV_BOOL || in.t == JV_INT ||
                                     (in.t == JV_STR && in.u.s == arg.u.s) || (in.t == JV_LIST && in.u.l == arg.u.l) ||
                                     ((in.t == JV_DICT || in.t == JV_NS) && in.u.d == arg.u.d));
    case T_LOWER: return str_case(in, 0);
    case T_UPPER: return str_case(in, 1);
    case T_FILTER: case T_TEST: {
        if (in.t != JV_STR) return 0;
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)(in.n > 60 ? 60 : in.n), in.u.s);
        return id == T_FILTER ? jx_filter_id(name) >= 0 : jx_test_id(name) >= 0;
    }
    }
    jx_fail(c, at, "internal error: test %d", id);
}
