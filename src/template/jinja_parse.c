/* Parser of the Jinja-subset engine: tokens → AST with jinja2's grammar and operator precedence
 * (condexpr < or < and < not < compare < +,- < ~ < *,/,//,% < ** < unary < postfix/filter/test).
 * Statements: if/elif/else, for (+ else, inline if), set (+ namespace attr, block set), macro,
 * break/continue, generation. Unknown filters, tests and tags are errors here, with a position. */
#include "template/jinja_internal.h"
#include <stdio.h>
#include <string.h>

#define MAX_NEST 100  /* recursive-descent nesting (parentheses, not/-, blocks) */
#define MAX_DEPTH 400 /* AST depth (left-associative chains too) */

typedef struct {
    jx_arena *a;
    jx_err *e;
    const jtok *t;
    size_t n, i;
    int nest, in_loop;
} parser;

static const jtok *cur(parser *P) { return &P->t[P->i]; }
static const jtok *peek(parser *P, size_t k) { return &P->t[P->i + k < P->n ? P->i + k : P->n - 1]; }
static void adv(parser *P) { if (P->i + 1 < P->n) P->i++; }

static const char *describe(const jtok *t, char *buf, size_t cap) {
    switch (t->t) {
    case TK_EOF: return "end of template";
    case TK_VEND: return "end of print statement";
    case TK_BEND: return "end of statement block";
    case TK_VBEGIN: return "begin of print statement";
    case TK_BBEGIN: return "begin of statement block";
    case TK_TEXT: return "template data";
    case TK_STR: return "string";
    default: snprintf(buf, cap, "%.*s", (int)(t->n > 40 ? 40 : t->n), t->s); return buf;
    }
}

_Noreturn static void fail_at(parser *P, const jtok *t, const char *fmt, const char *arg) {
    jx_throw(P->e, t->line, t->col, fmt, arg);
}
_Noreturn static void unexpected(parser *P) {
    char buf[64];
    fail_at(P, cur(P), "unexpected '%s'", describe(cur(P), buf, sizeof buf));
}

static int is_op(const jtok *t, const char *op) { return t->t == TK_OP && t->n == strlen(op) && !memcmp(t->s, op, t->n); }
static int is_name(const jtok *t, const char *name) { return t->t == TK_NAME && t->n == strlen(name) && !memcmp(t->s, name, t->n); }
static void expect_op(parser *P, const char *op) {
    char buf[64], msg[160];
    if (!is_op(cur(P), op)) {
        snprintf(msg, sizeof msg, "expected token '%s', got '%s'", op, describe(cur(P), buf, sizeof buf));
        fail_at(P, cur(P), "%s", msg);
    }
    adv(P);
}
static void expect_type(parser *P, jt_type ty, const char *what) {
    char buf[64], msg[160];
    if (cur(P)->t != ty) {
        snprintf(msg, sizeof msg, "expected token '%s', got '%s'", what, describe(cur(P), buf, sizeof buf));
        fail_at(P, cur(P), "%s", msg);
    }
    adv(P);
}
static const char *expect_name(parser *P) {
    if (cur(P)->t != TK_NAME) {
        char buf[64];
        fail_at(P, cur(P), "expected a name, got '%s'", describe(cur(P), buf, sizeof buf));
    }
    const char *s = jx_strdup(P->a, cur(P)->s, cur(P)->n);
    adv(P);
    return s;
}

static int depth_of(const jnode *n) { return n ? n->depth : 0; }
static jnode *mk(parser *P, jn_kind k, const jtok *at) {
    jnode *n = jx_alloc(P->a, sizeof *n);
    n->k = k;
    n->line = at->line;
    n->col = at->col;
    n->depth = 1;
    return n;
}
/* Sets depth from children; fails when the tree gets too deep to evaluate safely. */
static jnode *fin(parser *P, jnode *n) {
    int d = depth_of(n->a);
    if (depth_of(n->b) > d) d = depth_of(n->b);
    if (depth_of(n->c) > d) d = depth_of(n->c);
    for (int i = 0; i < n->nargs; i++)
        if (depth_of(n->args[i]) > d) d = depth_of(n->args[i]);
    n->depth = d + 1;
    if (n->depth > MAX_DEPTH) jx_throw(P->e, n->line, n->col, "expression nested too deeply");
    return n;
}
static void enter(parser *P) {
    if (++P->nest > MAX_NEST) jx_throw(P->e, cur(P)->line, cur(P)->col, "template nested too deeply");
}

/* growable node arrays */
typedef struct { jnode **v; const char **kw; int n, cap; } nvec;
static void nv_push(parser *P, nvec *v, jnode *x, const char *kw) {
    if (v->n == v->cap) {
        int cap = v->cap ? v->cap * 2 : 4;
        jnode **nv = jx_alloc(P->a, (size_t)cap * sizeof *nv);
        const char **nk = jx_alloc(P->a, (size_t)cap * sizeof *nk);
        if (v->n) {
            memcpy(nv, v->v, (size_t)v->n * sizeof *nv);
            memcpy(nk, v->kw, (size_t)v->n * sizeof *nk);
        }
        v->v = nv;
        v->kw = nk;
        v->cap = cap;
    }
    v->kw[v->n] = kw;
    v->v[v->n++] = x;
}

static jnode *parse_expression(parser *P, int with_condexpr);
static jnode *parse_unary(parser *P, int with_filter);
static jnode *parse_or(parser *P);

static jnode *parse_tuple(parser *P, int with_condexpr, int explicit_parens) {
    const jtok *at = cur(P);
    nvec items = {0};
    int is_tuple = 0;
    for (;;) {
        if (items.n) expect_op(P, ",");
        const jtok *c = cur(P);
        /* end of tuple? */
        if (c->t == TK_VEND || c->t == TK_BEND || c->t == TK_EOF || is_op(c, ")") || is_op(c, "]") || is_op(c, "}") ||
            (items.n && (is_name(c, "if") || is_name(c, "recursive") || is_name(c, "in"))) || (!items.n && is_op(c, ")")))
            break;
        nv_push(P, &items, parse_expression(P, with_condexpr), NULL);
        if (is_op(cur(P), ",")) is_tuple = 1;
        else break;
    }
    if (!is_tuple) {
        if (items.n) return items.v[0];
        if (!explicit_parens) unexpected(P);
    }
    jnode *n = mk(P, JN_TUPLE, at);
    n->args = items.v;
    n->nargs = items.n;
    return fin(P, n);
}

static void parse_call_args(parser *P, jnode *n) {
    expect_op(P, "(");
    nvec args = {0};
    while (!is_op(cur(P), ")")) {
        if (args.n) {
            expect_op(P, ",");
            if (is_op(cur(P), ")")) break;
        }
        const char *kw = NULL;
        if (cur(P)->t == TK_NAME && is_op(peek(P, 1), "=")) {
            kw = expect_name(P);
            adv(P);
        } else if (is_op(cur(P), "*") || is_op(cur(P), "**")) {
            fail_at(P, cur(P), "%s", "*args and **kwargs are not supported");
        }
        nv_push(P, &args, parse_expression(P, 1), kw);
    }
    adv(P);
    n->args = args.v;
    n->kw = args.kw;
    n->nargs = args.n;
}

static jnode *parse_subscript(parser *P, jnode *obj) {
    const jtok *at = cur(P);
    if (is_op(at, ".")) {
        adv(P);
        if (cur(P)->t == TK_NAME) {
            jnode *n = mk(P, JN_ATTR, at);
            n->a = obj;
            n->name = expect_name(P);
            return fin(P, n);
        }
        if (cur(P)->t == TK_INT) {
            jnode *n = mk(P, JN_ITEM, at), *k = mk(P, JN_CONST, cur(P));
            k->val = jv_int(cur(P)->i);
            adv(P);
            n->a = obj;
            n->b = k;
            return fin(P, n);
        }
        fail_at(P, cur(P), "%s", "expected name or number after '.'");
    }
    adv(P); /* [ */
    jnode *bounds[3] = {0};
    int is_slice = 0;
    if (!is_op(cur(P), ":")) bounds[0] = parse_expression(P, 1);
    if (is_op(cur(P), ":")) {
        is_slice = 1;
        adv(P);
        if (!is_op(cur(P), "]") && !is_op(cur(P), ":")) bounds[1] = parse_expression(P, 1);
        if (is_op(cur(P), ":")) {
            adv(P);
            if (!is_op(cur(P), "]")) bounds[2] = parse_expression(P, 1);
        }
    }
    expect_op(P, "]");
    jnode *n = mk(P, is_slice ? JN_SLICE : JN_ITEM, at);
    n->a = obj;
    if (is_slice) {
        n->args = jx_alloc(P->a, 3 * sizeof *n->args);
        memcpy(n->args, bounds, sizeof bounds);
        n->nargs = 3;
    } else {
        if (!bounds[0]) unexpected(P);
        n->b = bounds[0];
    }
    return fin(P, n);
}

static jnode *parse_postfix(parser *P, jnode *n) {
    for (;;) {
        if (is_op(cur(P), ".") || is_op(cur(P), "[")) n = parse_subscript(P, n);
        else if (is_op(cur(P), "(")) {
            jnode *c = mk(P, JN_CALL, cur(P));
            c->a = n;
            parse_call_args(P, c);
            n = fin(P, c);
        } else return n;
    }
}

static jnode *parse_primary(parser *P) {
    const jtok *t = cur(P);
    jnode *n;
    if (t->t == TK_NAME) {
        n = mk(P, JN_CONST, t);
        if (is_name(t, "true") || is_name(t, "True")) n->val = jv_bool(1);
        else if (is_name(t, "false") || is_name(t, "False")) n->val = jv_bool(0);
        else if (is_name(t, "none") || is_name(t, "None")) n->val = jv_mk(JV_NONE);
        else {
            n->k = JN_NAME;
            n->name = jx_strdup(P->a, t->s, t->n);
        }
        adv(P);
        return n;
    }
    if (t->t == TK_STR) {
        jx_buf b = {.ar = P->a};
        jb_put(&b, "", 0);
        while (cur(P)->t == TK_STR) {
            jb_put(&b, cur(P)->s, cur(P)->n);
            adv(P);
        }
        n = mk(P, JN_CONST, t);
        n->val = jv_sref(b.p ? b.p : "", b.n);
        return n;
    }
    if (t->t == TK_INT || t->t == TK_FLOAT) {
        n = mk(P, JN_CONST, t);
        n->val = t->t == TK_INT ? jv_int(t->i) : jv_float(t->f);
        adv(P);
        return n;
    }
    if (is_op(t, "(")) {
        adv(P);
        n = parse_tuple(P, 1, 1);
        expect_op(P, ")");
        return n;
    }
    if (is_op(t, "[") || is_op(t, "{")) {
        int is_dict = is_op(t, "{");
        adv(P);
        nvec items = {0};
        while (!is_op(cur(P), is_dict ? "}" : "]")) {
            if (items.n) {
                expect_op(P, ",");
                if (is_op(cur(P), is_dict ? "}" : "]")) break;
            }
            nv_push(P, &items, parse_expression(P, 1), NULL);
            if (is_dict) {
                expect_op(P, ":");
                nv_push(P, &items, parse_expression(P, 1), NULL);
            }
        }
        adv(P);
        n = mk(P, is_dict ? JN_DICT : JN_LIST, t);
        n->args = items.v;
        n->nargs = items.n;
        return fin(P, n);
    }
    unexpected(P);
}

static const char *dotted_name(parser *P) {
    const char *name = expect_name(P);
    while (is_op(cur(P), ".")) {
        adv(P);
        const char *more = expect_name(P);
        size_t l = strlen(name) + strlen(more) + 2;
        char *s = jx_alloc(P->a, l);
        snprintf(s, l, "%s.%s", name, more);
        name = s;
    }
    return name;
}

static jnode *parse_filter_expr(parser *P, jnode *n) {
    for (;;) {
        const jtok *at = cur(P);
        if (is_op(at, "|")) {
            adv(P);
            const jtok *nt = cur(P);
            jnode *f = mk(P, JN_FILTER, nt);
            f->name = dotted_name(P);
            f->op = jx_filter_id(f->name);
            if (f->op < 0) fail_at(P, nt, "No filter named '%s'.", f->name);
            f->a = n;
            if (is_op(cur(P), "(")) parse_call_args(P, f);
            n = fin(P, f);
        } else if (is_name(at, "is")) {
            adv(P);
            jnode *tn = mk(P, JN_TEST, cur(P));
            if (is_name(cur(P), "not")) {
                tn->neg = 1;
                adv(P);
            }
            const jtok *nt = cur(P);
            tn->name = dotted_name(P);
            tn->op = jx_test_id(tn->name);
            if (tn->op < 0) fail_at(P, nt, "No test named '%s'.", tn->name);
            tn->a = n;
            const jtok *c = cur(P);
            if (is_op(c, "(")) parse_call_args(P, tn);
            else if ((c->t == TK_NAME || c->t == TK_STR || c->t == TK_INT || c->t == TK_FLOAT || is_op(c, "[") || is_op(c, "{")) &&
                     !is_name(c, "else") && !is_name(c, "or") && !is_name(c, "and")) {
                if (is_name(c, "is")) fail_at(P, c, "%s", "You cannot chain multiple tests with is");
                jnode *arg = parse_postfix(P, parse_primary(P));
                tn->args = jx_alloc(P->a, sizeof *tn->args);
                tn->kw = jx_alloc(P->a, sizeof *tn->kw);
                tn->args[0] = arg;
                tn->nargs = 1;
            }
            n = fin(P, tn);
        } else if (is_op(at, "(")) {
            jnode *c = mk(P, JN_CALL, at);
            c->a = n;
            parse_call_args(P, c);
            n = fin(P, c);
        } else return n;
    }
}

static jnode *parse_unary(parser *P, int with_filter) {
    const jtok *t = cur(P);
    jnode *n;
    enter(P);
    if (is_op(t, "-") || is_op(t, "+")) {
        adv(P);
        n = mk(P, is_op(t, "-") ? JN_NEG : JN_POS, t);
        n->a = parse_unary(P, 0);
        n = fin(P, n);
    } else n = parse_primary(P);
    n = parse_postfix(P, n);
    if (with_filter) n = parse_filter_expr(P, n);
    P->nest--;
    return n;
}

static jnode *binop(parser *P, const jtok *at, int op, jnode *l, jnode *r) {
    jnode *n = mk(P, JN_BIN, at);
    n->op = op;
    n->a = l;
    n->b = r;
    return fin(P, n);
}

static jnode *parse_pow(parser *P) {
    jnode *l = parse_unary(P, 1);
    while (is_op(cur(P), "**")) {
        const jtok *at = cur(P);
        adv(P);
        l = binop(P, at, OP_POW, l, parse_unary(P, 1));
    }
    return l;
}
static jnode *parse_math2(parser *P) {
    jnode *l = parse_pow(P);
    for (;;) {
        const jtok *at = cur(P);
        int op = is_op(at, "*") ? OP_MUL : is_op(at, "/") ? OP_DIV : is_op(at, "//") ? OP_FLOORDIV : is_op(at, "%") ? OP_MOD : -1;
        if (op < 0) return l;
        adv(P);
        l = binop(P, at, op, l, parse_pow(P));
    }
}
static jnode *parse_concat(parser *P) {
    jnode *l = parse_math2(P);
    while (is_op(cur(P), "~")) {
        const jtok *at = cur(P);
        adv(P);
        l = binop(P, at, OP_CONCAT, l, parse_math2(P));
    }
    return l;
}
static jnode *parse_math1(parser *P) {
    jnode *l = parse_concat(P);
    for (;;) {
        const jtok *at = cur(P);
        int op = is_op(at, "+") ? OP_ADD : is_op(at, "-") ? OP_SUB : -1;
        if (op < 0) return l;
        adv(P);
        l = binop(P, at, op, l, parse_concat(P));
    }
}
static jnode *parse_compare(parser *P) {
    jnode *expr = parse_math1(P), *result = NULL, *left = expr;
    for (;;) {
        const jtok *at = cur(P);
        int op = is_op(at, "==") ? OP_EQ : is_op(at, "!=") ? OP_NE : is_op(at, "<") ? OP_LT : is_op(at, "<=") ? OP_LE
               : is_op(at, ">") ? OP_GT : is_op(at, ">=") ? OP_GE : is_name(at, "in") ? OP_IN
               : (is_name(at, "not") && is_name(peek(P, 1), "in")) ? OP_NOTIN : -1;
        if (op < 0) break;
        adv(P);
        if (op == OP_NOTIN) adv(P);
        jnode *right = parse_math1(P);
        jnode *c = mk(P, JN_CMP, at);
        c->op = op;
        c->a = left;
        c->b = right;
        c = fin(P, c);
        if (result) { /* chained: a < b < c  →  (a < b) and (b < c) */
            jnode *and = mk(P, JN_AND, at);
            and->a = result;
            and->b = c;
            result = fin(P, and);
        } else result = c;
        left = right;
    }
    return result ? result : expr;
}
static jnode *parse_not(parser *P) {
    if (is_name(cur(P), "not")) {
        const jtok *at = cur(P);
        adv(P);
        enter(P);
        jnode *n = mk(P, JN_NOT, at);
        n->a = parse_not(P);
        P->nest--;
        return fin(P, n);
    }
    return parse_compare(P);
}
static jnode *parse_and(parser *P) {
    jnode *l = parse_not(P);
    while (is_name(cur(P), "and")) {
        jnode *n = mk(P, JN_AND, cur(P));
        adv(P);
        n->a = l;
        n->b = parse_not(P);
        l = fin(P, n);
    }
    return l;
}
static jnode *parse_or(parser *P) {
    jnode *l = parse_and(P);
    while (is_name(cur(P), "or")) {
        jnode *n = mk(P, JN_OR, cur(P));
        adv(P);
        n->a = l;
        n->b = parse_and(P);
        l = fin(P, n);
    }
    return l;
}
static jnode *parse_expression(parser *P, int with_condexpr) {
    enter(P);
    jnode *e = parse_or(P);
    while (with_condexpr && is_name(cur(P), "if")) {
        jnode *n = mk(P, JN_COND, cur(P));
        adv(P);
        n->a = parse_or(P); /* condition */
        n->b = e;           /* value if true */
        if (is_name(cur(P), "else")) {
            adv(P);
            n->c = parse_expression(P, 1);
        }
        e = fin(P, n);
    }
    P->nest--;
    return e;
}

/* ---- statements ---- */
static const char *parse_body(parser *P, const char *const *ends, const char *open, nvec *out);

static void end_block(parser *P) { expect_type(P, TK_BEND, "end of statement block"); }

/* names for for/set targets: a, b or (a, b) */
static void parse_targets(parser *P, jnode *n) {
    int paren = is_op(cur(P), "(");
    if (paren) adv(P);
    const char *names[16];
    int k = 0;
    for (;;) {
        if (k == 16) fail_at(P, cur(P), "%s", "too many targets");
        names[k++] = expect_name(P);
        if (!is_op(cur(P), ",")) break;
        adv(P);
        if (cur(P)->t != TK_NAME) break;
    }
    if (paren) expect_op(P, ")");
    n->names = jx_alloc(P->a, (size_t)k * sizeof *n->names);
    memcpy(n->names, names, (size_t)k * sizeof *names);
    n->nnames = k;
}

static void set_body(jnode *n, nvec *v, int orelse) {
    if (orelse) { n->orelse = v->v; n->norelse = v->n; }
    else { n->body = v->v; n->nbody = v->n; }
}

static jnode *parse_if(parser *P, const jtok *at) {
    jnode *n = mk(P, JS_IF, at);
    n->a = parse_tuple(P, 0, 0);
    end_block(P);
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    nvec body = {0};
    const char *e = parse_body(P, ends, "if", &body);
    set_body(n, &body, 0);
    const jtok *et = cur(P);
    adv(P);
    if (!strcmp(e, "elif")) {
        jnode *sub = parse_if(P, et);
        n->orelse = jx_alloc(P->a, sizeof *n->orelse);
        n->orelse[0] = sub;
        n->norelse = 1;
        return n; /* the nested if consumed endif */
    }
    if (!strcmp(e, "else")) {
        end_block(P);
        static const char *const ends2[] = {"endif", NULL};
        nvec orelse = {0};
        parse_body(P, ends2, "if", &orelse);
        set_body(n, &orelse, 1);
        adv(P);
    }
    end_block(P);
    return n;
}

static jnode *parse_stmt(parser *P) {
    const jtok *at = cur(P);
    if (at->t != TK_NAME) unexpected(P);
    if (is_name(at, "if")) { adv(P); return parse_if(P, at); }
    if (is_name(at, "for")) {
        adv(P);
        jnode *n = mk(P, JS_FOR, at);
        parse_targets(P, n);
        if (!is_name(cur(P), "in")) fail_at(P, cur(P), "%s", "expected 'in' in for loop");
        adv(P);
        n->a = parse_tuple(P, 0, 0);
        if (is_name(cur(P), "if")) {
            adv(P);
            n->b = parse_expression(P, 1);
        }
        if (is_name(cur(P), "recursive")) fail_at(P, cur(P), "%s", "recursive for loops are not supported");
        end_block(P);
        static const char *const ends[] = {"else", "endfor", NULL};
        nvec body = {0};
        int saved = P->in_loop;
        P->in_loop = 1;
        const char *e = parse_body(P, ends, "for", &body);
        P->in_loop = saved;
        set_body(n, &body, 0);
        adv(P);
        if (!strcmp(e, "else")) {
            end_block(P);
            static const char *const ends2[] = {"endfor", NULL};
            nvec orelse = {0};
            parse_body(P, ends2, "for", &orelse);
            set_body(n, &orelse, 1);
            adv(P);
        }
        end_block(P);
        return n;
    }
    if (is_name(at, "set")) {
        adv(P);
        jnode *n = mk(P, JS_SET, at);
        if (cur(P)->t == TK_NAME && is_op(peek(P, 1), ".")) { /* ns.attr = value */
            jnode *obj = mk(P, JN_NAME, cur(P));
            obj->name = expect_name(P);
            adv(P);
            n->a = obj;
            n->name = expect_name(P);
        } else parse_targets(P, n);
        if (is_op(cur(P), "=")) {
            adv(P);
            n->b = parse_tuple(P, 1, 0);
            end_block(P);
            return n;
        }
        if (n->a || n->nnames != 1) fail_at(P, cur(P), "%s", "expected '='");
        end_block(P);
        n->k = JS_SETBLOCK;
        static const char *const ends[] = {"endset", NULL};
        nvec body = {0};
        parse_body(P, ends, "set", &body);
        set_body(n, &body, 0);
        adv(P);
        end_block(P);
        return n;
    }
    if (is_name(at, "macro")) {
        adv(P);
        jnode *n = mk(P, JS_MACRO, at);
        n->name = expect_name(P);
        expect_op(P, "(");
        nvec params = {0};
        while (!is_op(cur(P), ")")) {
            if (params.n) expect_op(P, ",");
            const char *pn = expect_name(P);
            jnode *def = NULL;
            if (is_op(cur(P), "=")) {
                adv(P);
                def = parse_expression(P, 1);
            }
            nv_push(P, &params, def, pn);
        }
        adv(P);
        end_block(P);
        n->args = params.v;
        n->kw = params.kw;
        n->nargs = params.n;
        static const char *const ends[] = {"endmacro", NULL};
        nvec body = {0};
        int saved = P->in_loop;
        P->in_loop = 0;
        parse_body(P, ends, "macro", &body);
        P->in_loop = saved;
        set_body(n, &body, 0);
        adv(P);
        if (cur(P)->t == TK_NAME) adv(P); /* {% endmacro name %} */
        end_block(P);
        return n;
    }
    if (is_name(at, "break") || is_name(at, "continue")) {
        if (!P->in_loop) fail_at(P, at, "'%s' outside of a for loop", is_name(at, "break") ? "break" : "continue");
        jnode *n = mk(P, is_name(at, "break") ? JS_BREAK : JS_CONTINUE, at);
        adv(P);
        end_block(P);
        return n;
    }
    if (is_name(at, "generation")) {
        adv(P);
        end_block(P);
        jnode *n = mk(P, JS_BLOCK, at);
        static const char *const ends[] = {"endgeneration", NULL};
        nvec body = {0};
        parse_body(P, ends, "generation", &body);
        set_body(n, &body, 0);
        adv(P);
        end_block(P);
        return n;
    }
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)(at->n > 40 ? 40 : at->n), at->s);
    fail_at(P, at, "Encountered unknown tag '%s'.", name);
}

/* Parses statements until {% <one of ends> ... (cursor left on that name) or EOF (ends == NULL). */
static const char *parse_body(parser *P, const char *const *ends, const char *open, nvec *out) {
    enter(P);
    for (;;) {
        const jtok *t = cur(P);
        if (t->t == TK_EOF) {
            if (!ends) break;
            char msg[256];
            int k = snprintf(msg, sizeof msg, "Unexpected end of template. Jinja was looking for the following tags: ");
            for (int i = 0; ends[i]; i++)
                k += snprintf(msg + k, sizeof msg - (size_t)k, "%s'%s'", i ? " or " : "", ends[i]);
            snprintf(msg + k, sizeof msg - (size_t)k, ". The innermost block that needs to be closed is '%s'.", open);
            fail_at(P, t, "%s", msg);
        }
        if (t->t == TK_TEXT) {
            jnode *n = mk(P, JS_TEXT, t);
            n->val = jv_sref(t->s, t->n);
            nv_push(P, out, n, NULL);
            adv(P);
            continue;
        }
        if (t->t == TK_VBEGIN) {
            adv(P);
            jnode *n = mk(P, JS_OUT, t);
            n->a = parse_tuple(P, 1, 0);
            expect_type(P, TK_VEND, "end of print statement");
            nv_push(P, out, n, NULL);
            continue;
        }
        if (t->t != TK_BBEGIN) unexpected(P);
        adv(P);
        const jtok *name = cur(P);
        if (ends && name->t == TK_NAME)
            for (int i = 0; ends[i]; i++)
                if (is_name(name, ends[i])) {
                    P->nest--;
                    return ends[i];
                }
        if (name->t == TK_NAME && name->n > 3 && !memcmp(name->s, "end", 3)) {
            char nm[64];
            snprintf(nm, sizeof nm, "%.*s", (int)(name->n > 40 ? 40 : name->n), name->s);
            fail_at(P, name, "Encountered unknown tag '%s'.", nm);
        }
        nv_push(P, out, parse_stmt(P), NULL);
    }
    P->nest--;
    return NULL;
}

void jx_parse(jx_arena *a, jx_err *e, const jtok *toks, size_t ntoks, jnode ***body, int *nbody) {
    parser P = {.a = a, .e = e, .t = toks, .n = ntoks};
    nvec out = {0};
    parse_body(&P, NULL, NULL, &out);
    *body = out.v;
    *nbody = out.n;
}
