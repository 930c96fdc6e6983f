/* Public entry points of the Jinja-subset engine (av_template_*, include/anvil.h): parse = lex + parse into a
 * template-owned arena; render = convert the JSON variables, run the evaluator in a per-render
 * arena, copy the output out. Errors raised deep inside unwind here (longjmp) and become av_fail. */
#include "core/status.h"
#include "template/jinja_internal.h"
#include <stdlib.h>
#include <string.h>

#define MAX_TEMPLATE_BYTES (16u << 20)

struct av_template {
    jx_arena ar;
    jx_err err;
    jnode **body;
    int nbody;
    char *where;
    size_t max_output, max_memory;
    long max_steps;
};

av_status av_template_parse(av_template **out, const char *src, const char *where) {
    *out = NULL;
    if (!where) where = "<template>";
    if (!src) return av_fail(AV_ERR_ARG, "%s: no template source", where);
    size_t len = strlen(src);
    if (len > MAX_TEMPLATE_BYTES) return av_fail(AV_ERR_TEMPLATE, "%s: template larger than %u bytes", where, MAX_TEMPLATE_BYTES);
    av_template *t = calloc(1, sizeof *t);
    if (!t || !(t->where = strdup(where))) {
        free(t);
        return av_fail(AV_ERR_NOMEM, "%s: out of memory", where);
    }
    t->err.where = t->where;
    t->ar.err = &t->err;
    t->ar.limit = 256u << 20;
    t->max_output = 64u << 20;
    t->max_memory = 512u << 20;
    t->max_steps = 50000000;
    if (setjmp(t->err.jb)) {
        av_status s = av_fail(AV_ERR_TEMPLATE, "%s", t->err.msg);
        av_template_free(t);
        return s;
    }
    jtok *toks;
    size_t ntoks;
    jx_lex(&t->ar, &t->err, src, len, &toks, &ntoks);
    jx_parse(&t->ar, &t->err, toks, ntoks, &t->body, &t->nbody);
    *out = t;
    return AV_OK;
}

void av_template_set_limits(av_template *t, size_t max_output, size_t max_memory, long max_steps) {
    if (max_output) t->max_output = max_output;
    if (max_memory) t->max_memory = max_memory;
    if (max_steps > 0) t->max_steps = max_steps;
}

av_status av_template_render(const av_template *t, const cJSON *vars, char **out) {
    *out = NULL;
    if (vars && !cJSON_IsObject(vars)) return av_fail(AV_ERR_ARG, "%s: template variables must be a JSON object", t->where);
    jx_ctx *c = calloc(1, sizeof *c);
    if (!c) return av_fail(AV_ERR_NOMEM, "%s: out of memory", t->where);
    c->err.where = t->where;
    c->ar.err = &c->err;
    c->ar.limit = t->max_memory;
    c->max_out = t->max_output;
    c->max_steps = t->max_steps;
    if (setjmp(c->err.jb)) {
        av_status s = av_fail(AV_ERR_TEMPLATE, "%s", c->err.msg);
        jx_arena_free(&c->ar);
        free(c);
        return s;
    }
    c->root = jx_alloc(&c->ar, sizeof *c->root);
    c->root->vars = jd_new(&c->ar, 0);
    if (vars) {
        jv v = jv_from_cjson(&c->ar, vars);
        c->root->vars = v.u.d;
    }
    jx_buf buf = {.ar = &c->ar, .limit = c->max_out};
    jb_put(&buf, "", 0);
    c->out = &buf;
    jx_render(c, t->body, t->nbody);
    char *res = malloc(buf.n + 1);
    if (res) {
        memcpy(res, buf.p, buf.n);
        res[buf.n] = 0;
    }
    jx_arena_free(&c->ar);
    free(c);
    if (!res) return av_fail(AV_ERR_NOMEM, "%s: out of memory", t->where);
    *out = res;
    return AV_OK;
}

void av_template_free(av_template *t) {
    if (!t) return;
    jx_arena_free(&t->ar);
    free(t->where);
    free(t);
}
