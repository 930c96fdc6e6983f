/* Python methods callable from templates (str: strip/split/replace/startswith/...; dict: get,
 * items, keys, values; list: index, count) and the globals transformers gives chat templates:
 * range (sandbox-capped), namespace, dict, raise_exception, strftime_now. */
#include "template/jinja_internal.h"
#include <stdio.h>
#include <string.h>
#include <time.h>

enum {
    M_STRIP, M_LSTRIP, M_RSTRIP, M_UPPER, M_LOWER, M_TITLE, M_CAPITALIZE, M_REPLACE, M_SPLIT, M_RSPLIT,
    M_STARTSWITH, M_ENDSWITH, M_FIND, M_COUNT_S, M_JOIN, M_SPLITLINES, M_ISDIGIT, M_ISALPHA, M_ISALNUM,
    M_ISSPACE, M_ISUPPER, M_ISLOWER, M_REMOVEPREFIX, M_REMOVESUFFIX, M_STR_END,
    M_GET = M_STR_END, M_ITEMS, M_KEYS, M_VALUES, M_DICT_END,
    M_INDEX = M_DICT_END, M_COUNT_L, M_N
};
static const char *const method_names[M_N] = {
    "strip", "lstrip", "rstrip", "upper", "lower", "title", "capitalize", "replace", "split", "rsplit",
    "startswith", "endswith", "find", "count", "join", "splitlines", "isdigit", "isalpha", "isalnum",
    "isspace", "isupper", "islower", "removeprefix", "removesuffix",
    "get", "items", "keys", "values",
    "index", "count"};

int jx_method_id(jv self, const char *name, size_t n) {
    int lo = self.t == JV_STR ? 0 : self.t == JV_DICT ? M_STR_END : self.t == JV_LIST ? M_DICT_END : -1;
    int hi = self.t == JV_STR ? M_STR_END : self.t == JV_DICT ? M_DICT_END : M_N;
    if (lo < 0) return -1;
    for (int i = lo; i < hi; i++)
        if (strlen(method_names[i]) == n && !memcmp(method_names[i], name, n)) return i;
    return -1;
}

jv jx_str_method(jx_ctx *c, const jnode *at, jv s, const char *name, jx_args *args) {
    int id = jx_method_id(s, name, strlen(name));
    if (id < 0) jx_fail(c, at, "str has no method '%s'", name);
    return jx_method_call(c, at, s, id, args);
}

static jv want_str(jx_ctx *c, const jnode *at, jv v, const char *what) {
    if (v.t == JV_UNDEF) jx_fail_undef(c, at, v);
    if (v.t != JV_STR) jx_fail(c, at, "%s must be str, not %s", what, jv_typename(v));
    return v;
}

static int in_chars(uint32_t cp, jv chars) {
    if (chars.t != JV_STR) return py_isspace(cp);
    for (size_t i = 0; i < chars.n;) {
        uint32_t x;
        i += u8_dec(chars.u.s + i, chars.n - i, &x);
        if (x == cp) return 1;
    }
    return 0;
}

static jv do_strip(jv s, jv chars, int left, int right) {
    size_t a = 0, b = s.n;
    while (left && a < b) {
        uint32_t cp;
        size_t k = u8_dec(s.u.s + a, b - a, &cp);
        if (!in_chars(cp, chars)) break;
        a += k;
    }
    while (right && b > a) {
        size_t st = b - 1;
        while (st > a && ((unsigned char)s.u.s[st] & 0xC0) == 0x80) st--;
        uint32_t cp;
        u8_dec(s.u.s + st, b - st, &cp);
        if (!in_chars(cp, chars)) break;
        b = st;
    }
    return jv_sref(s.u.s + a, b - a);
}

static const char *find_sub(const char *h, size_t hn, const char *nd, size_t nn) {
    if (nn == 0) return h;
    for (size_t i = 0; i + nn <= hn; i++)
        if (!memcmp(h + i, nd, nn)) return h + i;
    return NULL;
}
static const char *rfind_sub(const char *h, size_t hn, const char *nd, size_t nn) {
    if (nn > hn) return NULL;
    for (size_t i = hn - nn + 1; i > 0; i--)
        if (!memcmp(h + i - 1, nd, nn)) return h + i - 1;
    return NULL;
}

static jv do_split(jx_ctx *c, const jnode *at, jv s, jx_args *a, int from_right) {
    jv sep = jx_arg(a, 0, "sep", jv_mk(JV_NONE));
    jv ms = jx_arg(a, 1, "maxsplit", jv_int(-1));
    int64_t maxsplit = ms.t == JV_INT ? ms.u.i : -1;
    jv_list *l = jl_new(&c->ar, 0);
    if (sep.t == JV_NONE) {
        /* runs of whitespace; leading/trailing whitespace ignored */
        jv_list *words = jl_new(&c->ar, 0);
        size_t i = 0;
        while (i < s.n) {
            uint32_t cp;
            size_t k;
            while (i < s.n && (k = u8_dec(s.u.s + i, s.n - i, &cp), py_isspace(cp))) i += k;
            if (i >= s.n) break;
            size_t st = i;
            while (i < s.n && (k = u8_dec(s.u.s + i, s.n - i, &cp), !py_isspace(cp))) i += k;
            jl_push(&c->ar, words, jv_sref(s.u.s + st, i - st));
        }
        if (maxsplit < 0 || (size_t)maxsplit + 1 >= words->n) return jv_list_of(words);
        /* more words than allowed: the rest stays joined, as in the source */
        if (!from_right) {
            for (int64_t k = 0; k < maxsplit; k++) jl_push(&c->ar, l, words->v[k]);
            const char *st = words->v[maxsplit].u.s;
            jv rest = do_strip(jv_sref(st, (size_t)(s.u.s + s.n - st)), jv_mk(JV_NONE), 0, 1);
            jl_push(&c->ar, l, rest);
        } else {
            size_t first = words->n - (size_t)maxsplit;
            jv last = words->v[first - 1];
            jv rest = do_strip(jv_sref(s.u.s, (size_t)(last.u.s + last.n - s.u.s)), jv_mk(JV_NONE), 1, 0);
            jl_push(&c->ar, l, rest);
            for (size_t k = first; k < words->n; k++) jl_push(&c->ar, l, words->v[k]);
        }
        return jv_list_of(l);
    }
    want_str(c, at, sep, "separator");
    if (!sep.n) jx_fail(c, at, "empty separator");
    if (!from_right) {
        const char *p = s.u.s, *end = s.u.s + s.n, *q;
        while ((maxsplit < 0 || (int64_t)l->n < maxsplit) && (q = find_sub(p, (size_t)(end - p), sep.u.s, sep.n))) {
            jl_push(&c->ar, l, jv_sref(p, (size_t)(q - p)));
            p = q + sep.n;
        }
        jl_push(&c->ar, l, jv_sref(p, (size_t)(end - p)));
        return jv_list_of(l);
    }
    jv_list *rev = jl_new(&c->ar, 0);
    const char *end = s.u.s + s.n, *q;
    while ((maxsplit < 0 || (int64_t)rev->n < maxsplit) && (q = rfind_sub(s.u.s, (size_t)(end - s.u.s), sep.u.s, sep.n))) {
        jl_push(&c->ar, rev, jv_sref(q + sep.n, (size_t)(end - q - sep.n)));
        end = q;
    }
    jl_push(&c->ar, l, jv_sref(s.u.s, (size_t)(end - s.u.s)));
    for (size_t k = rev->n; k > 0; k--) jl_push(&c->ar, l, rev->v[k - 1]);
    return jv_list_of(l);
}

static int affix_match(jv s, jv p, int suffix) {
    if (p.t != JV_STR || p.n > s.n) return 0;
    return !memcmp(suffix ? s.u.s + s.n - p.n : s.u.s, p.u.s, p.n);
}

static jv map_case(jx_ctx *c, jv s, int mode) { /* 0 lower, 1 upper, 2 title, 3 capitalize */
    char *p = jx_alloc(&c->ar, s.n + 1);
    int prev_cased = 0;
    for (size_t i = 0; i < s.n; i++) {
        char ch = s.u.s[i];
        int lower = ch >= 'a' && ch <= 'z', upper = ch >= 'A' && ch <= 'Z';
        int up = mode == 1 || (mode == 2 && !prev_cased) || (mode == 3 && i == 0);
        if (up && lower) ch = (char)(ch - 32);
        else if (!up && upper) ch = (char)(ch + 32);
        prev_cased = lower || upper || ((unsigned char)ch >= 0x80);
        p[i] = ch;
    }
    return jv_sref(p, s.n);
}

static int all_chars(jv s, int kind) {
    if (!s.n) return 0;
    int cased = 0;
    for (size_t i = 0; i < s.n;) {
        uint32_t cp;
        i += u8_dec(s.u.s + i, s.n - i, &cp);
        int d = cp >= '0' && cp <= '9', lo = cp >= 'a' && cp <= 'z', up = cp >= 'A' && cp <= 'Z';
        switch (kind) {
        case M_ISDIGIT: if (!d) return 0; break;
        case M_ISALPHA: if (!lo && !up) return 0; break;
        case M_ISALNUM: if (!lo && !up && !d) return 0; break;
        case M_ISSPACE: if (!py_isspace(cp)) return 0; break;
        case M_ISUPPER: if (lo) return 0; cased |= up; break;
        case M_ISLOWER: if (up) return 0; cased |= lo; break;
        }
    }
    return kind == M_ISUPPER || kind == M_ISLOWER ? cased : 1;
}

jv jx_method_call(jx_ctx *c, const jnode *at, jv self, int id, jx_args *a) {
    jv a0 = jx_arg(a, 0, NULL, jv_mk(JV_NONE));
    switch (id) {
    case M_STRIP: case M_LSTRIP: case M_RSTRIP:
        return do_strip(self, jx_arg(a, 0, "chars", jv_mk(JV_NONE)), id != M_RSTRIP, id != M_LSTRIP);
    case M_LOWER: return map_case(c, self, 0);
    case M_UPPER: return map_case(c, self, 1);
    case M_TITLE: return map_case(c, self, 2);
    case M_CAPITALIZE: return map_case(c, self, 3);
    case M_REPLACE: {
        jv old = want_str(c, at, jx_arg(a, 0, "old", jv_undef("replace() missing argument 'old'")), "replace() argument 1");
        jv neu = want_str(c, at, jx_arg(a, 1, "new", jv_undef("replace() missing argument 'new'")), "replace() argument 2");
        jv cnt = jx_arg(a, 2, "count", jv_int(-1));
        int64_t count = cnt.t == JV_INT ? cnt.u.i : -1;
        jx_buf b = {.ar = &c->ar, .limit = c->max_out};
        jb_put(&b, "", 0);
        const char *p = self.u.s, *end = self.u.s + self.n;
        int64_t done = 0;
        if (!old.n) { /* insert between every character */
            while (p <= end) {
                if (count < 0 || done < count) { jb_put(&b, neu.u.s, neu.n); done++; }
                if (p == end) break;
                uint32_t cp;
                size_t k = u8_dec(p, (size_t)(end - p), &cp);
                jb_put(&b, p, k);
                p += k;
            }
            return jv_sref(b.p, b.n);
        }
        const char *q;
        while ((count < 0 || done < count) && (q = find_sub(p, (size_t)(end - p), old.u.s, old.n))) {
            jb_put(&b, p, (size_t)(q - p));
            jb_put(&b, neu.u.s, neu.n);
            p = q + old.n;
            done++;
        }
        jb_put(&b, p, (size_t)(end - p));
        return jv_sref(b.p, b.n);
    }
    case M_SPLIT: case M_RSPLIT: return do_split(c, at, self, a, id == M_RSPLIT);
    case M_STARTSWITH: case M_ENDSWITH: {
        if (a0.t == JV_LIST) {
            for (size_t i = 0; i < a0.u.l->n; i++)
                if (affix_match(self, a0.u.l->v[i], id == M_ENDSWITH)) return jv_bool(1);
            return jv_bool(0);
        }
        want_str(c, at, a0, id == M_STARTSWITH ? "startswith first arg" : "endswith first arg");
        return jv_bool(affix_match(self, a0, id == M_ENDSWITH));
    }
    case M_REMOVEPREFIX: case M_REMOVESUFFIX:
        want_str(c, at, a0, "argument");
        if (!affix_match(self, a0, id == M_REMOVESUFFIX)) return self;
        return id == M_REMOVEPREFIX ? jv_sref(self.u.s + a0.n, self.n - a0.n) : jv_sref(self.u.s, self.n - a0.n);
    case M_FIND: case M_COUNT_S: {
        want_str(c, at, a0, "argument");
        if (id == M_FIND) {
            const char *q = find_sub(self.u.s, self.n, a0.u.s, a0.n);
            return jv_int(q ? (int64_t)u8_count(self.u.s, (size_t)(q - self.u.s)) : -1);
        }
        if (!a0.n) return jv_int((int64_t)u8_count(self.u.s, self.n) + 1);
        int64_t k = 0;
        const char *p = self.u.s, *end = self.u.s + self.n, *q;
        while ((q = find_sub(p, (size_t)(end - p), a0.u.s, a0.n))) { k++; p = q + a0.n; }
        return jv_int(k);
    }
    case M_JOIN: {
        jv_list *l = jx_iterate(c, at, a0);
        jx_buf b = {.ar = &c->ar, .limit = c->max_out};
        jb_put(&b, "", 0);
        for (size_t i = 0; i < l->n; i++) {
            if (l->v[i].t != JV_STR) jx_fail(c, at, "sequence item %zu: expected str instance, %s found", i, jv_typename(l->v[i]));
            if (i) jb_put(&b, self.u.s, self.n);
            jb_put(&b, l->v[i].u.s, l->v[i].n);
        }
        return jv_sref(b.p, b.n);
    }
    case M_SPLITLINES: {
        int keep = jv_truthy(jx_arg(a, 0, "keepends", jv_bool(0)));
        jv_list *l = jl_new(&c->ar, 0);
        size_t i = 0;
        while (i < self.n) {
            size_t j = i, br = 0;
            while (j < self.n) {
                unsigned char ch = (unsigned char)self.u.s[j];
                if (ch == '\r') br = j + 1 < self.n && self.u.s[j + 1] == '\n' ? 2 : 1;
                else if (ch == '\n' || ch == '\v' || ch == '\f' || (ch >= 0x1c && ch <= 0x1e)) br = 1;
                else {
                    uint32_t cp;
                    size_t k = u8_dec(self.u.s + j, self.n - j, &cp);
                    if (cp == 0x85 || cp == 0x2028 || cp == 0x2029) br = k;
                }
                if (br) break;
                j++;
            }
            jl_push(&c->ar, l, jv_sref(self.u.s + i, j - i + (keep ? br : 0)));
            i = j + br;
        }
        return jv_list_of(l);
    }
    case M_ISDIGIT: case M_ISALPHA: case M_ISALNUM: case M_ISSPACE: case M_ISUPPER: case M_ISLOWER:
        return jv_bool(all_chars(self, id));
    case M_GET: {
        jv *v = jd_getv(self.u.d, jx_arg(a, 0, "key", jv_mk(JV_NONE)));
        return v ? *v : jx_arg(a, 1, "default", jv_mk(JV_NONE));
    }
    case M_ITEMS: case M_KEYS: case M_VALUES: {
        jv_list *l = jl_new(&c->ar, self.u.d->n);
        for (size_t i = 0; i < self.u.d->n; i++) {
            if (id == M_KEYS) jl_push(&c->ar, l, self.u.d->k[i]);
            else if (id == M_VALUES) jl_push(&c->ar, l, self.u.d->v[i]);
            else {
                jv_list *p = jl_new(&c->ar, 2);
                jl_push(&c->ar, p, self.u.d->k[i]);
                jl_push(&c->ar, p, self.u.d->v[i]);
                jv t = jv_list_of(p);
                t.aux = 1;
                jl_push(&c->ar, l, t);
            }
        }
        return jv_list_of(l);
    }
    case M_INDEX: case M_COUNT_L: {
        int64_t k = 0;
        for (size_t i = 0; i < self.u.l->n; i++)
            if (jv_equal(self.u.l->v[i], a0)) {
                if (id == M_INDEX) return jv_int((int64_t)i);
                k++;
            }
        if (id == M_INDEX) jx_fail(c, at, "list.index(x): x not in list");
        return jv_int(k);
    }
    }
    jx_fail(c, at, "internal error: method %d", id);
}

/* ---- globals ---- */
enum { G_RANGE, G_NAMESPACE, G_DICT, G_RAISE, G_STRFTIME, G_N };
static const char *const global_names[G_N] = {"range", "namespace", "dict", "raise_exception", "strftime_now"};

int jx_global_id(const char *name, size_t n) {
    for (int i = 0; i < G_N; i++)
        if (strlen(global_names[i]) == n && !memcmp(global_names[i], name, n)) return i;
    return -1;
}

static int64_t int_arg(jx_ctx *c, const jnode *at, jv v) {
    if (v.t == JV_INT) return v.u.i;
    if (v.t == JV_BOOL) return v.u.b;
    if (v.t == JV_UNDEF) jx_fail_undef(c, at, v);
    jx_fail(c, at, "'%s' object cannot be interpreted as an integer", jv_typename(v));
}

static jv make_dict(jx_ctx *c, const jnode *at, jx_args *a, int is_ns) {
    jv_dict *d = jd_new(&c->ar, 0);
    for (int i = 0; i < a->npos; i++) {
        jv p = a->pos[i];
        if (p.t == JV_DICT || p.t == JV_NS) {
            for (size_t k = 0; k < p.u.d->n; k++) jd_set(&c->ar, d, p.u.d->k[k], p.u.d->v[k]);
        } else if (p.t == JV_LIST) {
            for (size_t k = 0; k < p.u.l->n; k++) {
                jv pair = p.u.l->v[k];
                if (pair.t != JV_LIST || pair.u.l->n != 2) jx_fail(c, at, "dictionary update sequence element #%zu has wrong length", k);
                jd_set(&c->ar, d, pair.u.l->v[0], pair.u.l->v[1]);
            }
        } else jx_fail(c, at, "'%s' object is not iterable", jv_typename(p));
    }
    for (int i = 0; i < a->nkw; i++) jd_set(&c->ar, d, jv_cstr(a->kwn[i]), a->kwv[i]);
    if (is_ns)
        for (size_t k = 0; k < d->n; k++)
            if (d->k[k].t == JV_STR && d->k[k].n && d->k[k].u.s[0] == '_')
                jx_fail(c, at, "Chat templates cannot store underscore-prefixed attributes on a namespace, but got '%.*s'.",
                        (int)(d->k[k].n > 60 ? 60 : d->k[k].n), d->k[k].u.s);
    jv v = jv_dict_of(d);
    if (is_ns) v.t = JV_NS;
    return v;
}

jv jx_global_call(jx_ctx *c, const jnode *at, int id, jx_args *a) {
    switch (id) {
    case G_RANGE: {
        if (a->npos < 1 || a->npos > 3) jx_fail(c, at, "range expected 1 to 3 arguments, got %d", a->npos);
        int64_t start = 0, stop, step = 1;
        if (a->npos == 1) stop = int_arg(c, at, a->pos[0]);
        else {
            start = int_arg(c, at, a->pos[0]);
            stop = int_arg(c, at, a->pos[1]);
            if (a->npos == 3) step = int_arg(c, at, a->pos[2]);
        }
        if (step == 0) jx_fail(c, at, "range() arg 3 must not be zero");
        double cnt = step > 0 ? ((double)stop - (double)start) / (double)step : ((double)start - (double)stop) / (double)-step;
        if (cnt > 100000)
            jx_fail(c, at, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        jv_list *l = jl_new(&c->ar, cnt > 0 ? (size_t)cnt + 1 : 0);
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) jl_push(&c->ar, l, jv_int(i));
        return jv_list_of(l);
    }
    case G_NAMESPACE: return make_dict(c, at, a, 1);
    case G_DICT: return make_dict(c, at, a, 0);
    case G_RAISE: {
        jv m = jx_arg(a, 0, "message", jv_sref("", 0));
        jv s = jv_to_string(&c->ar, m);
        jx_fail(c, at, "%.*s", (int)(s.n > 500 ? 500 : s.n), s.u.s);
    }
    case G_STRFTIME: {
        jv f = jx_arg(a, 0, "format", jv_undef("strftime_now() missing argument 'format'"));
        if (f.t != JV_STR) jx_fail(c, at, "strftime_now() argument must be str, not %s", jv_typename(f));
        char fmt[256], out[512];
        snprintf(fmt, sizeof fmt, "%.*s", (int)(f.n > 250 ? 250 : f.n), f.u.s);
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        size_t n = strftime(out, sizeof out, fmt, &tm);
        return jv_str(&c->ar, out, n);
    }
    }
    jx_fail(c, at, "internal error: global %d", id);
}
