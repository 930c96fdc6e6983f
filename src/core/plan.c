/* The memory planner (see plan.h): sizes first, one allocation, carved pieces. */
#include "core/plan.h"
#include <stdint.h>
#include <stdlib.h>

void av_plan_init(av_plan *p) {
    p->e = NULL;
    p->n = p->cap = 0;
    p->total = 0;
    p->base = NULL;
    p->failed = 0;
}

void av_plan_add(av_plan *p, void *slot, size_t bytes) {
    if (p->n == p->cap) {
        int nc = p->cap ? 2 * p->cap : 32;
        av_plan_entry *ne = realloc(p->e, sizeof *ne * (size_t)nc);
        if (!ne) { p->failed = 1; return; }
        p->e = ne;
        p->cap = nc;
    }
    p->e[p->n].slot = (void **)slot;
    p->e[p->n].bytes = bytes ? bytes : 1;
    p->n++;
}

static size_t round_up(size_t n) { return (n + AV_PLAN_ALIGN - 1) / AV_PLAN_ALIGN * AV_PLAN_ALIGN; }

size_t av_plan_bytes(const av_plan *p) {
    size_t total = 0;
    for (int i = 0; i < p->n; i++) {
        if (p->e[i].bytes > SIZE_MAX / 2 - total) return SIZE_MAX;
        total += round_up(p->e[i].bytes);
    }
    return total;
}

av_status av_plan_commit(av_plan *p, void *(*alloc)(size_t bytes, const char *what), const char *what) {
    if (p->failed) return av_fail(AV_ERR_NOMEM, "%s: out of memory", what);
    size_t total = 0;
    for (int i = 0; i < p->n; i++) {
        if (p->e[i].bytes > SIZE_MAX / 2 - total) return av_fail(AV_ERR_NOMEM, "%s: size overflow", what);
        total += round_up(p->e[i].bytes);
    }
    p->base = alloc(total ? total : AV_PLAN_ALIGN, what);
    if (!p->base) return AV_ERR_NOMEM;
    p->total = total;
    char *at = p->base;
    for (int i = 0; i < p->n; i++) {
        *p->e[i].slot = at;
        at += round_up(p->e[i].bytes);
    }
    return AV_OK;
}

void av_plan_release(av_plan *p, void (*free_fn)(void *)) {
    if (p->base) free_fn(p->base);
    free(p->e);
    av_plan_init(p);
}
