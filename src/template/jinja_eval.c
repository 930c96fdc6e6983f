/* Evaluator of the Jinja-subset engine: expressions with Python/jinja2 semantics (undefined
 * values, attribute vs item lookup, arithmetic, comparisons, slices) and statements (output, if,
 * for with loop variables, set, namespaces, macros, break/continue), with jinja2's scoping:
 * each for-iteration and macro call gets its own scope. Depth, steps and output are capped. */
#include "template/jinja_internal.h"
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define MAX_EVAL_DEPTH 600
#define MAX_MACRO_DEPTH 32

_Noreturn void jx_fail(jx_ctx *c, const jnode *at, const char *fmt, ...) {
    char text[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    jx_throw(&c->err, at ? at->line : 0, at ? at->col : 0, "%s", text);
}

_Noreturn void jx_fail_undef(jx_ctx *c, const jnode *at, jv v) {
    jx_fail(c, at, "%s", v.undef ? v.undef : "value is undefined");
}

jv jx_arg(const jx_args *a, int idx, const char *name, jv def) {
    if (idx >= 0 && idx < a->npos) return a->pos[idx];
    if (name)
        for (int i = 0; i < a->nkw; i++)
            if (!strcmp(a->kwn[i], name)) return a->kwv[i];
    return def;
}

static const char *obj_type_repr(jv v) {
    switch (v.t) {
    case JV_NONE: return "None";
    case JV_DICT: return "dict object";
    case JV_LIST: return v.aux ? "tuple object" : "list object";
    case JV_STR: return "str object";
    case JV_INT: return "int object";
    case JV_FLOAT: return "float object";
    case JV_BOOL: return "bool object";
    case JV_NS: return "Namespace object";
    default: return "object";
    }
}

static jv undef_fmt(jx_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static jv undef_fmt(jx_ctx *c, const char *fmt, ...) {
    char text[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    return jv_undef(jx_strdup(&c->ar, text, strlen(text)));
}

static jv no_attr(jx_ctx *c, jv obj, const char *name, size_t n) {
    if (obj.t == JV_NONE) return undef_fmt(c, "'None' has no attribute '%.*s'", (int)(n > 100 ? 100 : n), name);
    return undef_fmt(c, "'%s' has no attribute '%.*s'", obj_type_repr(obj), (int)(n > 100 ? 100 : n), name);
}

static jv loop_attr(jx_ctx *c, jv obj, const char *name, size_t n);

static jv method_of(jx_ctx *c, jv obj, int id) {
    jv m = jv_mk(JV_METHOD);
    m.aux = id;
    m.u.self = jx_alloc(&c->ar, sizeof(jv));
    *m.u.self = obj;
    return m;
}

jv jx_getattr(jx_ctx *c, const jnode *at, jv obj, const char *name, size_t n) {
    if (obj.t == JV_UNDEF) jx_fail_undef(c, at, obj);
    if (obj.t == JV_DICT || obj.t == JV_STR || obj.t == JV_LIST) {
        int id = jx_method_id(obj, name, n);
        if (id >= 0) return method_of(c, obj, id);
    }
    if (obj.t == JV_DICT || obj.t == JV_NS) {
        jv *v = jd_get(obj.u.d, name, n);
        if (v) return *v;
    }
    if (obj.t == JV_LOOP) return loop_attr(c, obj, name, n);
    return no_attr(c, obj, name, n);
}

static int64_t norm_index(int64_t i, size_t len) { return i < 0 ? i + (int64_t)len : i; }

jv jx_getitem(jx_ctx *c, const jnode *at, jv obj, jv key) {
    if (obj.t == JV_UNDEF) jx_fail_undef(c, at, obj);
    if (key.t == JV_UNDEF && obj.t != JV_DICT) jx_fail_undef(c, at, key);
    if (obj.t == JV_DICT || obj.t == JV_NS) {
        jv *v = jd_getv(obj.u.d, key);
        if (v) return *v;
    } else if ((obj.t == JV_LIST || obj.t == JV_STR) && (key.t == JV_INT || key.t == JV_BOOL)) {
        size_t len = obj.t == JV_LIST ? obj.u.l->n : u8_count(obj.u.s, obj.n);
        int64_t i = norm_index(key.t == JV_INT ? key.u.i : key.u.b, len);
        if (i >= 0 && (uint64_t)i < len) {
            if (obj.t == JV_LIST) return obj.u.l->v[i];
            size_t off = u8_offset(obj.u.s, obj.n, (size_t)i);
            uint32_t cp;
            size_t k = u8_dec(obj.u.s + off, obj.n - off, &cp);
            return jv_sref(obj.u.s + off, k);
        }
        return undef_fmt(c, "%s has no element %" PRId64, obj_type_repr(obj), key.t == JV_INT ? key.u.i : key.u.b);
    }
    if (key.t == JV_STR && obj.t == JV_LOOP) return loop_attr(c, obj, key.u.s, key.n);
    if (key.t == JV_STR) {
        if (obj.t == JV_DICT || obj.t == JV_STR || obj.t == JV_LIST) {
            int id = jx_method_id(obj, key.u.s, key.n);
            if (id >= 0) return method_of(c, obj, id);
        }
        return no_attr(c, obj, key.u.s, key.n);
    }
    jx_buf b = {.ar = &c->ar};
    jv_write_repr(&b, key);
    return undef_fmt(c, "%s has no element %.100s", obj_type_repr(obj), b.p ? b.p : "");
}

jv_list *jx_iterate(jx_ctx *c, const jnode *at, jv v) {
    jv_list *l;
    switch (v.t) {
    case JV_UNDEF: return jl_new(&c->ar, 0);
    case JV_LIST: return v.u.l;
    case JV_DICT:
        l = jl_new(&c->ar, v.u.d->n);
        for (size_t i = 0; i < v.u.d->n; i++) jl_push(&c->ar, l, v.u.d->k[i]);
        return l;
    case JV_STR:
        l = jl_new(&c->ar, 0);
        for (size_t i = 0; i < v.n;) {
            uint32_t cp;
            size_t k = u8_dec(v.u.s + i, v.n - i, &cp);
            jl_push(&c->ar, l, jv_sref(v.u.s + i, k));
            i += k;
        }
        return l;
    default: jx_fail(c, at, "'%s' object is not iterable", jv_typename(v));
    }
}

/* ---- scopes ---- */
static jscope *scope_new(jx_ctx *c, jscope *parent) {
    jscope *s = jx_alloc(&c->ar, sizeof *s);
    s->parent = parent;
    s->vars = jd_new(&c->ar, 2);
    return s;
}
static void scope_set(jx_ctx *c, jscope *s, const char *name, jv v) { jd_set(&c->ar, s->vars, jv_cstr(name), v); }

static jv lookup(jx_ctx *c, jscope *s, const char *name) {
    size_t n = strlen(name);
    for (; s; s = s->parent) {
        jv *v = jd_get(s->vars, name, n);
        if (v) return *v;
    }
    int g = jx_global_id(name, n);
    if (g >= 0) {
        jv f = jv_mk(JV_FUNC);
        f.aux = g;
        return f;
    }
    return undef_fmt(c, "'%.100s' is undefined", name);
}

/* ---- expressions ---- */
static jv eval(jx_ctx *c, jscope *s, const jnode *n);
static void render_body(jx_ctx *c, jscope *s, jnode *const *body, int nbody);

static void eval_args(jx_ctx *c, jscope *s, const jnode *n, jx_args *a) {
    memset(a, 0, sizeof *a);
    if (!n->nargs) return;
    a->pos = jx_alloc(&c->ar, (size_t)n->nargs * sizeof(jv));
    a->kwv = jx_alloc(&c->ar, (size_t)n->nargs * sizeof(jv));
    a->kwn = jx_alloc(&c->ar, (size_t)n->nargs * sizeof(char *));
    for (int i = 0; i < n->nargs; i++) {
        jv v = eval(c, s, n->args[i]);
        if (n->kw && n->kw[i]) {
            a->kwn[a->nkw] = n->kw[i];
            a->kwv[a->nkw++] = v;
        } else a->pos[a->npos++] = v;
    }
}

static jv call_macro(jx_ctx *c, const jnode *at, const jnode *m, jx_args *a) {
    if (c->macro_depth >= MAX_MACRO_DEPTH) jx_fail(c, at, "macro calls nested deeper than %d", MAX_MACRO_DEPTH);
    if (a->npos > m->nargs) jx_fail(c, at, "macro '%s' takes not more than %d argument(s)", m->name, m->nargs);
    for (int k = 0; k < a->nkw; k++) {
        int found = 0;
        for (int i = 0; i < m->nargs; i++) found |= !strcmp(m->kw[i], a->kwn[k]);
        if (!found) jx_fail(c, at, "macro '%s' takes no keyword argument '%s'", m->name, a->kwn[k]);
    }
    jscope *s = scope_new(c, c->root);
    for (int i = 0; i < m->nargs; i++) {
        jv v = jx_arg(a, i, m->kw[i], jv_undef(NULL));
        if (v.t == JV_UNDEF && !v.undef) {
            if (m->args[i]) v = eval(c, s, m->args[i]);
            else v = undef_fmt(c, "parameter '%s' was not provided", m->kw[i]);
        }
        scope_set(c, s, m->kw[i], v);
    }
    jx_buf buf = {.ar = &c->ar, .limit = c->max_out};
    jx_buf *saved = c->out;
    int saved_ctl = c->loop_ctl;
    c->out = &buf;
    c->macro_depth++;
    render_body(c, s, m->body, m->nbody);
    c->macro_depth--;
    c->out = saved;
    c->loop_ctl = saved_ctl;
    return jv_sref(buf.p ? buf.p : "", buf.n);
}

jv jx_call(jx_ctx *c, const jnode *at, jv fn, jx_args *args) {
    switch (fn.t) {
    case JV_FUNC: return jx_global_call(c, at, fn.aux, args);
    case JV_METHOD: return jx_method_call(c, at, *fn.u.self, fn.aux, args);
    case JV_MACRO: return call_macro(c, at, fn.u.m, args);
    case JV_UNDEF: jx_fail_undef(c, at, fn);
    default: jx_fail(c, at, "'%s' object is not callable", jv_typename(fn));
    }
}

static int64_t slice_bound(jx_ctx *c, const jnode *at, jv v, int64_t def) {
    if (v.t == JV_NONE || v.t == JV_UNDEF) return def;
    if (v.t == JV_INT) return v.u.i;
    if (v.t == JV_BOOL) return v.u.b;
    jx_fail(c, at, "slice indices must be integers or None");
}

static jv eval_slice(jx_ctx *c, jscope *s, const jnode *n) {
    jv obj = eval(c, s, n->a);
    jv b[3];
    for (int i = 0; i < 3; i++) b[i] = n->args[i] ? eval(c, s, n->args[i]) : jv_mk(JV_NONE);
    if (obj.t == JV_UNDEF) jx_fail_undef(c, n, obj);
    if (obj.t != JV_LIST && obj.t != JV_STR) return undef_fmt(c, "%s is not subscriptable", obj_type_repr(obj));
    int64_t len = obj.t == JV_LIST ? (int64_t)obj.u.l->n : (int64_t)u8_count(obj.u.s, obj.n);
    int64_t step = slice_bound(c, n, b[2], 1);
    if (step == 0) jx_fail(c, n, "slice step cannot be zero");
    int64_t lo, hi;
    /* Python's PySlice_AdjustIndices */
    int64_t start = slice_bound(c, n, b[0], step < 0 ? INT64_MAX : 0);
    int64_t stop = slice_bound(c, n, b[1], step < 0 ? INT64_MIN : INT64_MAX);
    if (start < 0) { start += len; if (start < 0) start = step < 0 ? -1 : 0; }
    else if (start >= len) start = step < 0 ? len - 1 : len;
    if (stop < 0) { if (stop != INT64_MIN) stop += len; if (stop < 0) stop = step < 0 ? -1 : 0; }
    else if (stop >= len) stop = step < 0 ? len - 1 : len;
    lo = start;
    hi = stop;
    if (obj.t == JV_STR && step == 1) {
        if (hi <= lo) return jv_sref("", 0);
        size_t a = u8_offset(obj.u.s, obj.n, (size_t)lo), e = u8_offset(obj.u.s, obj.n, (size_t)hi);
        return jv_sref(obj.u.s + a, e - a);
    }
    jv_list *src = obj.t == JV_LIST ? obj.u.l : jx_iterate(c, n, obj);
    jv_list *out = jl_new(&c->ar, 0);
    for (int64_t i = lo; step > 0 ? i < hi : i > hi; i += step) jl_push(&c->ar, out, src->v[i]);
    if (obj.t == JV_LIST) {
        jv r = jv_list_of(out);
        r.aux = obj.aux;
        return r;
    }
    jx_buf buf = {.ar = &c->ar};
    jb_put(&buf, "", 0);
    for (size_t i = 0; i < out->n; i++) jb_put(&buf, out->v[i].u.s, out->v[i].n);
    return jv_sref(buf.p, buf.n);
}

static jv arith(jx_ctx *c, const jnode *at, int op, jv a, jv b) {
    static const char *const names[] = {"+", "-", "*", "/", "//", "%", "**"};
    if (a.t == JV_UNDEF) jx_fail_undef(c, at, a);
    if (b.t == JV_UNDEF) jx_fail_undef(c, at, b);
    if (jv_is_num(a) && jv_is_num(b)) {
        int ints = a.t != JV_FLOAT && b.t != JV_FLOAT;
        int64_t x = a.t == JV_INT ? a.u.i : a.u.b, y = b.t == JV_INT ? b.u.i : b.u.b, r;
        double fx = jv_num(a), fy = jv_num(b);
        switch (op) {
        case OP_ADD: if (ints && !__builtin_add_overflow(x, y, &r)) return jv_int(r); return jv_float(fx + fy);
        case OP_SUB: if (ints && !__builtin_sub_overflow(x, y, &r)) return jv_int(r); return jv_float(fx - fy);
        case OP_MUL: if (ints && !__builtin_mul_overflow(x, y, &r)) return jv_int(r); return jv_float(fx * fy);
        case OP_DIV:
            if (fy == 0) jx_fail(c, at, "division by zero");
            return jv_float(fx / fy);
        case OP_FLOORDIV: case OP_MOD:
            if (fy == 0) jx_fail(c, at, op == OP_MOD ? "integer modulo by zero" : "integer division or modulo by zero");
            if (ints && !(x == INT64_MIN && y == -1)) {
                int64_t q = x / y, m = x % y;
                if (m != 0 && ((m < 0) != (y < 0))) { q--; m += y; }
                return jv_int(op == OP_MOD ? m : q);
            } else {
                double m = fmod(fx, fy);
                if (m != 0 && ((m < 0) != (fy < 0))) m += fy;
                return jv_float(op == OP_MOD ? m : floor(fx / fy));
            }
        case OP_POW:
            if (ints && y >= 0) {
                int64_t acc = 1, base = x;
                int64_t e = y;
                int ovf = 0;
                while (e > 0 && !ovf) {
                    if (e & 1) ovf |= __builtin_mul_overflow(acc, base, &acc);
                    e >>= 1;
                    if (e) ovf |= __builtin_mul_overflow(base, base, &base);
                }
                if (!ovf) return jv_int(acc);
            }
            return jv_float(pow(fx, fy));
        }
    }
    if (op == OP_ADD && a.t == JV_STR && b.t == JV_STR) {
        char *p = jx_alloc(&c->ar, a.n + b.n + 1);
        memcpy(p, a.u.s, a.n);
        memcpy(p + a.n, b.u.s, b.n);
        return jv_sref(p, a.n + b.n);
    }
    if (op == OP_ADD && a.t == JV_LIST && b.t == JV_LIST) {
        jv_list *l = jl_new(&c->ar, a.u.l->n + b.u.l->n);
        for (size_t i = 0; i < a.u.l->n; i++) jl_push(&c->ar, l, a.u.l->v[i]);
        for (size_t i = 0; i < b.u.l->n; i++) jl_push(&c->ar, l, b.u.l->v[i]);
        return jv_list_of(l);
    }
    int a_seq = a.t == JV_STR || a.t == JV_LIST, b_seq = b.t == JV_STR || b.t == JV_LIST;
    int a_int = a.t == JV_INT || a.t == JV_BOOL, b_int = b.t == JV_INT || b.t == JV_BOOL;
    if (op == OP_MUL && ((a_seq && b_int) || (b_seq && a_int))) {
        jv seq = a_seq ? a : b, k = a_seq ? b : a;
        int64_t times = k.t == JV_INT ? k.u.i : k.u.b;
        if (times < 0) times = 0;
        size_t unit = seq.t == JV_STR ? seq.n : seq.u.l->n * sizeof(jv);
        if (unit && (uint64_t)times > (c->ar.limit ? c->ar.limit : SIZE_MAX) / unit) jx_fail(c, at, "repetition result too large");
        if (seq.t == JV_STR) {
            jx_buf buf = {.ar = &c->ar, .limit = c->max_out};
            jb_put(&buf, "", 0);
            for (int64_t i = 0; i < times; i++) jb_put(&buf, seq.u.s, seq.n);
            return jv_sref(buf.p, buf.n);
        }
        jv_list *l = jl_new(&c->ar, 0);
        for (int64_t i = 0; i < times; i++)
            for (size_t j = 0; j < seq.u.l->n; j++) jl_push(&c->ar, l, seq.u.l->v[j]);
        return jv_list_of(l);
    }
    if (op == OP_ADD && a.t == JV_STR)
        jx_fail(c, at, "can only concatenate str (not \"%s\") to str", jv_typename(b));
    if (op == OP_ADD && a.t == JV_LIST)
        jx_fail(c, at, "can only concatenate list (not \"%s\") to list", jv_typename(b));
    jx_fail(c, at, "unsupported operand type(s) for %s: '%s' and '%s'", names[op], jv_typename(a), jv_typename(b));
}

int jx_contains(jx_ctx *c, const jnode *at, jv needle, jv hay) {
    switch (hay.t) {
    case JV_STR:
        if (needle.t == JV_UNDEF) jx_fail_undef(c, at, needle);
        if (needle.t != JV_STR) jx_fail(c, at, "'in <string>' requires string as left operand, not %s", jv_typename(needle));
        if (!needle.n) return 1;
        if (needle.n > hay.n) return 0;
        for (size_t i = 0; i + needle.n <= hay.n; i++)
            if (!memcmp(hay.u.s + i, needle.u.s, needle.n)) return 1;
        return 0;
    case JV_LIST:
        for (size_t i = 0; i < hay.u.l->n; i++)
            if (jv_equal(hay.u.l->v[i], needle)) return 1;
        return 0;
    case JV_DICT: return jd_getv(hay.u.d, needle) != NULL;
    case JV_UNDEF: return 0;
    default: jx_fail(c, at, "argument of type '%s' is not iterable", jv_typename(hay));
    }
}

static jv eval_inner(jx_ctx *c, jscope *s, const jnode *n) {
    if (++c->steps > c->max_steps) jx_fail(c, n, "template exceeds %ld evaluation steps", c->max_steps);
    jv r;
    switch (n->k) {
    case JN_CONST: return n->val;
    case JN_NAME: return lookup(c, s, n->name);
    case JN_LIST: case JN_TUPLE: {
        jv_list *l = jl_new(&c->ar, (size_t)n->nargs);
        for (int i = 0; i < n->nargs; i++) jl_push(&c->ar, l, eval(c, s, n->args[i]));
        r = jv_list_of(l);
        r.aux = n->k == JN_TUPLE;
        return r;
    }
    case JN_DICT: {
        jv_dict *d = jd_new(&c->ar, (size_t)n->nargs / 2);
        for (int i = 0; i + 1 < n->nargs; i += 2) {
            jv k = eval(c, s, n->args[i]);
            jd_set(&c->ar, d, k, eval(c, s, n->args[i + 1]));
        }
        return jv_dict_of(d);
    }
    case JN_ATTR: return jx_getattr(c, n, eval(c, s, n->a), n->name, strlen(n->name));
    case JN_ITEM: {
        jv obj = eval(c, s, n->a);
        return jx_getitem(c, n, obj, eval(c, s, n->b));
    }
    case JN_SLICE: return eval_slice(c, s, n);
    case JN_CALL: {
        jv fn = eval(c, s, n->a);
        jx_args a;
        eval_args(c, s, n, &a);
        return jx_call(c, n, fn, &a);
    }
    case JN_FILTER: {
        jv in = eval(c, s, n->a);
        jx_args a;
        eval_args(c, s, n, &a);
        return jx_filter_apply(c, n, n->op, in, &a);
    }
    case JN_TEST: {
        jv in = eval(c, s, n->a);
        jx_args a;
        eval_args(c, s, n, &a);
        int t = jx_test_apply(c, n, n->op, in, &a);
        return jv_bool(n->neg ? !t : t);
    }
    case JN_NOT: return jv_bool(!jv_truthy(eval(c, s, n->a)));
    case JN_NEG: case JN_POS: {
        jv v = eval(c, s, n->a);
        if (v.t == JV_UNDEF) jx_fail_undef(c, n, v);
        if (!jv_is_num(v)) jx_fail(c, n, "bad operand type for unary %c: '%s'", n->k == JN_NEG ? '-' : '+', jv_typename(v));
        if (n->k == JN_POS) return v.t == JV_BOOL ? jv_int(v.u.b) : v;
        if (v.t == JV_FLOAT) return jv_float(-v.u.f);
        int64_t i = v.t == JV_INT ? v.u.i : v.u.b;
        return i == INT64_MIN ? jv_float(-(double)i) : jv_int(-i);
    }
    case JN_BIN: {
        jv a = eval(c, s, n->a), b = eval(c, s, n->b);
        if (n->op == OP_CONCAT) {
            jx_buf buf = {.ar = &c->ar, .limit = c->max_out};
            jb_put(&buf, "", 0);
            jv_write_str(&buf, a);
            jv_write_str(&buf, b);
            return jv_sref(buf.p, buf.n);
        }
        return arith(c, n, n->op, a, b);
    }
    case JN_AND: {
        jv a = eval(c, s, n->a);
        return jv_truthy(a) ? eval(c, s, n->b) : a;
    }
    case JN_OR: {
        jv a = eval(c, s, n->a);
        return jv_truthy(a) ? a : eval(c, s, n->b);
    }
    case JN_CMP: {
        jv a = eval(c, s, n->a), b = eval(c, s, n->b);
        switch (n->op) {
        case OP_EQ: return jv_bool(jv_equal(a, b));
        case OP_NE: return jv_bool(!jv_equal(a, b));
        case OP_IN: return jv_bool(jx_contains(c, n, a, b));
        case OP_NOTIN: return jv_bool(!jx_contains(c, n, a, b));
        default: {
            if (a.t == JV_UNDEF) jx_fail_undef(c, n, a);
            if (b.t == JV_UNDEF) jx_fail_undef(c, n, b);
            int o = jv_order(a, b);
            static const char *const sym[] = {"<", "<=", ">", ">="};
            if (o == 2)
                jx_fail(c, n, "'%s' not supported between instances of '%s' and '%s'", sym[n->op - OP_LT], jv_typename(a), jv_typename(b));
            return jv_bool(n->op == OP_LT ? o < 0 : n->op == OP_LE ? o <= 0 : n->op == OP_GT ? o > 0 : o >= 0);
        }
        }
    }
    case JN_COND:
        if (jv_truthy(eval(c, s, n->a))) return eval(c, s, n->b);
        return n->c ? eval(c, s, n->c) : jv_undef("the inline if-expression evaluated to false and no else section was defined");
    default: jx_fail(c, n, "internal error: not an expression");
    }
}

/* Every evaluation and block counts toward c->depth, which bounds the C stack. */
static jv eval(jx_ctx *c, jscope *s, const jnode *n) {
    if (++c->depth > MAX_EVAL_DEPTH) jx_fail(c, n, "template recursion too deep");
    jv r = eval_inner(c, s, n);
    c->depth--;
    return r;
}

/* ---- statements ---- */
static void assign_targets(jx_ctx *c, const jnode *at, jscope *s, const char *const *names, int nnames, jv v) {
    if (nnames == 1) { scope_set(c, s, names[0], v); return; }
    jv_list *l = (v.t == JV_LIST) ? v.u.l : jx_iterate(c, at, v);
    if ((int)l->n < nnames) jx_fail(c, at, "not enough values to unpack (expected %d, got %zu)", nnames, l->n);
    if ((int)l->n > nnames) jx_fail(c, at, "too many values to unpack (expected %d)", nnames);
    for (int i = 0; i < nnames; i++) scope_set(c, s, names[i], l->v[i]);
}

static jv loop_value(jx_ctx *c, jv_list *items, size_t i) {
    struct jv_loop *l = jx_alloc(&c->ar, sizeof *l);
    l->items = items;
    l->i = i;
    jv v = jv_mk(JV_LOOP);
    v.u.loop = l;
    return v;
}

static jv loop_attr(jx_ctx *c, jv obj, const char *name, size_t n) {
    size_t i = obj.u.loop->i, len = obj.u.loop->items->n;
    static const char *const keys[] = {"index", "index0", "revindex", "revindex0", "first", "last", "length", "depth", "depth0", "previtem", "nextitem"};
    int k = 0;
    while (k < 11 && !(strlen(keys[k]) == n && !memcmp(keys[k], name, n))) k++;
    switch (k) {
    case 0: return jv_int((int64_t)i + 1);
    case 1: return jv_int((int64_t)i);
    case 2: return jv_int((int64_t)(len - i));
    case 3: return jv_int((int64_t)(len - i - 1));
    case 4: return jv_bool(i == 0);
    case 5: return jv_bool(i + 1 == len);
    case 6: return jv_int((int64_t)len);
    case 7: return jv_int(1);
    case 8: return jv_int(0);
    case 9: return i > 0 ? obj.u.loop->items->v[i - 1] : jv_undef("there is no previous item");
    case 10: return i + 1 < len ? obj.u.loop->items->v[i + 1] : jv_undef("there is no next item");
    default: return undef_fmt(c, "'LoopContext object' has no attribute '%.*s'", (int)(n > 100 ? 100 : n), name);
    }
}

static void render_for(jx_ctx *c, jscope *s, const jnode *n) {
    jv seq = eval(c, s, n->a);
    jv_list *items = jx_iterate(c, n->a, seq);
    if (n->b) { /* {% for x in xs if cond %}: filter first, so loop.* count the kept items */
        jv_list *kept = jl_new(&c->ar, 0);
        for (size_t i = 0; i < items->n; i++) {
            jscope *t = scope_new(c, s);
            assign_targets(c, n, t, n->names, n->nnames, items->v[i]);
            if (jv_truthy(eval(c, t, n->b))) jl_push(&c->ar, kept, items->v[i]);
        }
        items = kept;
    }
    if (!items->n) {
        render_body(c, scope_new(c, s), n->orelse, n->norelse);
        return;
    }
    for (size_t i = 0; i < items->n; i++) {
        if (++c->steps > c->max_steps) jx_fail(c, n, "template exceeds %ld evaluation steps", c->max_steps);
        jscope *t = scope_new(c, s);
        assign_targets(c, n, t, n->names, n->nnames, items->v[i]);
        scope_set(c, t, "loop", loop_value(c, items, i));
        render_body(c, t, n->body, n->nbody);
        if (c->loop_ctl == 1) { c->loop_ctl = 0; break; }
        c->loop_ctl = 0;
    }
}

static void render_stmt(jx_ctx *c, jscope *s, const jnode *n) {
    if (++c->steps > c->max_steps) jx_fail(c, n, "template exceeds %ld evaluation steps", c->max_steps);
    switch (n->k) {
    case JS_TEXT: jb_put(c->out, n->val.u.s, n->val.n); break;
    case JS_OUT: jv_write_str(c->out, eval(c, s, n->a)); break;
    case JS_IF:
        if (jv_truthy(eval(c, s, n->a))) render_body(c, s, n->body, n->nbody);
        else render_body(c, s, n->orelse, n->norelse);
        break;
    case JS_FOR: render_for(c, s, n); break;
    case JS_SET: {
        jv v = eval(c, s, n->b);
        if (n->a) {
            jv ns = eval(c, s, n->a);
            if (ns.t != JV_NS) jx_fail(c, n, "Cannot assign attribute on non-namespace object");
            if (n->name[0] == '_') jx_fail(c, n, "Chat templates cannot store underscore-prefixed attributes on a namespace, but got '%s'.", n->name);
            jd_set(&c->ar, ns.u.d, jv_cstr(n->name), v);
        } else assign_targets(c, n, s, n->names, n->nnames, v);
        break;
    }
    case JS_SETBLOCK: {
        jx_buf buf = {.ar = &c->ar, .limit = c->max_out};
        jx_buf *saved = c->out;
        c->out = &buf;
        render_body(c, s, n->body, n->nbody);
        c->out = saved;
        scope_set(c, s, n->names[0], jv_sref(buf.p ? buf.p : "", buf.n));
        break;
    }
    case JS_MACRO: {
        jv m = jv_mk(JV_MACRO);
        m.u.m = n;
        scope_set(c, s, n->name, m);
        break;
    }
    case JS_BREAK: c->loop_ctl = 1; break;
    case JS_CONTINUE: c->loop_ctl = 2; break;
    case JS_BLOCK: render_body(c, s, n->body, n->nbody); break;
    default: jx_fail(c, n, "internal error: not a statement");
    }
}

static void render_body(jx_ctx *c, jscope *s, jnode *const *body, int nbody) {
    if (++c->depth > MAX_EVAL_DEPTH) jx_fail(c, nbody ? body[0] : NULL, "template recursion too deep");
    for (int i = 0; i < nbody && !c->loop_ctl; i++) render_stmt(c, s, body[i]);
    c->depth--;
}

void jx_render(jx_ctx *c, jnode *const *body, int nbody) {
    render_body(c, c->root, body, nbody);
}
