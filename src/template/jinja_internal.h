/* Internal types of the Jinja-subset engine behind av_template_* (include/anvil.h): the arena that owns every
 * allocation of a parse or a render, template values (jv), tokens, AST nodes and the render
 * context. Errors unwind with longjmp to the API entry point, which frees the arena. */
#ifndef AV_JINJA_INTERNAL_H
#define AV_JINJA_INTERNAL_H
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include "core/status.h"

/* ---- errors and arena ---------------------------------------------------------------------- */
typedef struct {
    jmp_buf jb;
    const char *where;
    char msg[768];
} jx_err;
/* Formats "where:line:col: message" (one line) into e->msg and longjmps to e->jb. */
_Noreturn void jx_throw(jx_err *e, int line, int col, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

typedef struct jx_chunk jx_chunk;
typedef struct {
    jx_chunk *head;
    size_t total, limit; /* bytes taken from malloc, cap (0 = none) */
    jx_err *err;         /* thrown to when the cap or malloc fails */
} jx_arena;
void *jx_alloc(jx_arena *a, size_t n); /* zeroed, 16-byte aligned; throws on failure */
char *jx_strdup(jx_arena *a, const char *s, size_t n); /* NUL-terminated copy */
void jx_arena_free(jx_arena *a);

/* Growing byte buffer inside an arena, with a size cap (0 = none). */
typedef struct {
    jx_arena *ar;
    char *p;
    size_t n, cap, limit;
} jx_buf;
void jb_put(jx_buf *b, const char *s, size_t n);
void jb_puts(jx_buf *b, const char *s);
void jb_putc(jx_buf *b, char c);

/* ---- values -------------------------------------------------------------------------------- */
typedef enum { JV_UNDEF, JV_NONE, JV_BOOL, JV_INT, JV_FLOAT, JV_STR, JV_LIST, JV_DICT, JV_NS, JV_FUNC, JV_MACRO, JV_METHOD, JV_LOOP } jv_type;
typedef struct jv_list jv_list;
typedef struct jv_dict jv_dict;
struct jnode;
typedef struct jv {
    jv_type t;
    int aux;   /* JV_LIST: 1 = tuple; JV_FUNC: global id; JV_METHOD: method id */
    size_t n;  /* JV_STR: byte length */
    union {
        int b;
        int64_t i;
        double f;
        const char *s;
        jv_list *l;
        jv_dict *d;                /* JV_DICT and JV_NS */
        const struct jnode *m;     /* JV_MACRO */
        struct jv *self;           /* JV_METHOD: receiver */
        const struct jv_loop *loop; /* JV_LOOP */
    } u;
    const char *undef; /* JV_UNDEF: error text when used ("'x' is undefined") */
} jv;
struct jv_list { size_t n, cap; jv *v; };
struct jv_dict { size_t n, cap; jv *k, *v; };
struct jv_loop { jv_list *items; size_t i; }; /* the `loop` variable, resolved lazily */

static inline jv jv_mk(jv_type t) { jv v = {0}; v.t = t; return v; }
jv jv_undef(const char *msg);
jv jv_bool(int b);
jv jv_int(int64_t i);
jv jv_float(double f);
jv jv_str(jx_arena *a, const char *s, size_t n); /* copies */
jv jv_sref(const char *s, size_t n);           /* refers (s must outlive the value) */
jv jv_cstr(const char *s);                     /* static C string */
jv_list *jl_new(jx_arena *a, size_t cap);
void jl_push(jx_arena *a, jv_list *l, jv v);
jv jv_list_of(jv_list *l);
jv_dict *jd_new(jx_arena *a, size_t cap);
jv *jd_get(const jv_dict *d, const char *key, size_t n);  /* string key; NULL if absent */
jv *jd_getv(const jv_dict *d, jv key);                   /* any key (Python equality) */
void jd_set(jx_arena *a, jv_dict *d, jv key, jv val);     /* replaces in place or appends */
jv jv_dict_of(jv_dict *d);

jv jv_from_cjson(jx_arena *a, const cJSON *j);
const char *jv_typename(jv v); /* Python type name: str, int, list, dict, NoneType, ... */
int jv_truthy(jv v);
int jv_is_num(jv v);           /* int, float or bool */
double jv_num(jv v);
int jv_equal(jv a, jv b);
/* Python ordering: returns -1/0/1, or 2 when the types cannot be ordered. */
int jv_order(jv a, jv b);
void jv_write_str(jx_buf *b, jv v);   /* str(v); undefined → "" */
void jv_write_repr(jx_buf *b, jv v);  /* repr(v) */
jv jv_to_string(jx_arena *a, jv v);   /* str(v) as a string value */
/* json.dumps(v, ensure_ascii=False, indent, separators, sort_keys). indent NULL = none. Returns
 * NULL on success or the name of the type that is not serializable (JV_JSON_TOO_DEEP: nesting
 * beyond 500 levels, i.e. a namespace that contains itself). */
#define JV_JSON_TOO_DEEP "(too deep)"
const char *jv_write_json(jx_buf *b, jv v, const char *indent, const char *item_sep, const char *key_sep, int sort_keys, int level);
void py_float_repr(double d, char *buf); /* buf >= 32 */

/* UTF-8 helpers (code points, as Python indexes strings). */
size_t u8_dec(const char *s, size_t n, uint32_t *cp); /* bytes of the char at s (>= 1) */
size_t u8_count(const char *s, size_t n);
size_t u8_offset(const char *s, size_t n, size_t idx);  /* byte offset of code point idx (clamped) */
int py_isspace(uint32_t cp);

/* ---- tokens -------------------------------------------------------------------------------- */
typedef enum { TK_TEXT, TK_VBEGIN, TK_VEND, TK_BBEGIN, TK_BEND, TK_NAME, TK_STR, TK_INT, TK_FLOAT, TK_OP, TK_EOF } jt_type;
typedef struct {
    jt_type t;
    int line, col;
    const char *s; /* text, name, decoded string literal, operator */
    size_t n;
    int64_t i;
    double f;
} jtok;
/* Tokenizes a whole template (trim_blocks + lstrip_blocks, whitespace control, comments). */
void jx_lex(jx_arena *a, jx_err *e, const char *src, size_t len, jtok **toks, size_t *ntoks);

/* ---- AST ----------------------------------------------------------------------------------- */
typedef enum {
    JN_CONST, JN_NAME, JN_LIST, JN_TUPLE, JN_DICT, JN_ATTR, JN_ITEM, JN_SLICE, JN_CALL, JN_FILTER, JN_TEST,
    JN_NOT, JN_NEG, JN_POS, JN_BIN, JN_AND, JN_OR, JN_CMP, JN_COND,
    JS_TEXT, JS_OUT, JS_IF, JS_FOR, JS_SET, JS_SETBLOCK, JS_MACRO, JS_BREAK, JS_CONTINUE, JS_BLOCK,
} jn_kind;
/* binary / comparison operators */
enum { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW, OP_CONCAT,
       OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN };

typedef struct jnode jnode;
struct jnode {
    jn_kind k;
    int line, col, depth;
    int op;           /* JN_BIN/JN_CMP operator; JN_FILTER/JN_TEST id */
    int neg;          /* JN_TEST: "is not" */
    jv val;           /* JN_CONST value; JS_TEXT text */
    const char *name; /* NAME, ATTR, FILTER/TEST, SET attribute target, MACRO name */
    jnode *a, *b, *c; /* operands (see parser) */
    jnode **args;     /* call/filter/test args, list items, dict keys+values, slice bounds, macro defaults */
    const char **kw;  /* keyword names parallel to args (NULL = positional); macro parameter names */
    int nargs;
    const char **names; /* FOR / SET targets */
    int nnames;
    jnode **body, **orelse;
    int nbody, norelse;
};
/* Parses tokens into a body (array of statements). Throws on syntax errors. */
void jx_parse(jx_arena *a, jx_err *e, const jtok *toks, size_t ntoks, jnode ***body, int *nbody);

/* ---- render context ------------------------------------------------------------------------ */
typedef struct jscope {
    struct jscope *parent;
    jv_dict *vars;
} jscope;
typedef struct {
    jx_arena ar;
    jx_err err;
    jx_buf *out;
    long steps, max_steps;
    size_t max_out;
    int macro_depth, depth;
    int loop_ctl; /* 1 = break, 2 = continue pending */
    jscope *root;
} jx_ctx;

/* Renders a parsed body into c->out (c->root set up by the caller). Throws on errors. */
void jx_render(jx_ctx *c, struct jnode *const *body, int nbody);

/* Call arguments after evaluation. */
typedef struct {
    int npos, nkw;
    jv *pos;
    const char **kwn;
    jv *kwv;
} jx_args;
/* Positional idx, else keyword name, else def. */
jv jx_arg(const jx_args *a, int idx, const char *name, jv def);

_Noreturn void jx_fail(jx_ctx *c, const jnode *at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Throws the undefined value's error ("'x' is undefined"). */
_Noreturn void jx_fail_undef(jx_ctx *c, const jnode *at, jv v);
jv jx_call(jx_ctx *c, const jnode *at, jv fn, jx_args *args);
jv jx_getattr(jx_ctx *c, const jnode *at, jv obj, const char *name, size_t n);
jv jx_getitem(jx_ctx *c, const jnode *at, jv obj, jv key);
/* Python's `needle in hay` (substring, list member, dict key; undefined hay → false). */
int jx_contains(jx_ctx *c, const jnode *at, jv needle, jv hay);
/* Calls the str method `name` on s (used by filters that mirror str methods). */
jv jx_str_method(jx_ctx *c, const jnode *at, jv s, const char *name, jx_args *args);
/* Iterates like Python's iter(): list items, dict keys, string characters; undefined → empty. */
jv_list *jx_iterate(jx_ctx *c, const jnode *at, jv v);

/* filters, tests, methods, globals (jinja_filters.c, jinja_methods.c) */
int jx_filter_id(const char *name); /* -1 if unknown */
int jx_test_id(const char *name);
jv jx_filter_apply(jx_ctx *c, const jnode *at, int id, jv in, jx_args *args);
int jx_test_apply(jx_ctx *c, const jnode *at, int id, jv in, jx_args *args);
int jx_method_id(jv self, const char *name, size_t n); /* -1 if none */
jv jx_method_call(jx_ctx *c, const jnode *at, jv self, int id, jx_args *args);
int jx_global_id(const char *name, size_t n);
jv jx_global_call(jx_ctx *c, const jnode *at, int id, jx_args *args);

#endif
