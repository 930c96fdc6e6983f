/* The prefix cache's second level: token prefixes whose K/V a slot held before a request with a
 * different prompt took it, saved in the backend's memory (device-side copies: no host round trip on
 * the GPU) under a byte limit with least-recently-used eviction, and copied back into a slot when a
 * new prompt shares more of one of them than of any free slot's. */
#include "engine/sched_internal.h"
#include <stdlib.h>
#include <string.h>

static int lcp(const int32_t *a, int na, const int32_t *b, int nb) {
    int n = na < nb ? na : nb, c = 0;
    while (c < n && a[c] == b[c]) c++;
    return c;
}

static void entry_free(av_prefix_store *ps, int k) {
    av_prefix_entry *e = &ps->e[k];
    ps->bytes -= e->bytes;
    free(e->tok);
    ps->be->free(e->kv);
    ps->e[k] = ps->e[--ps->n];
}

void av_prefix_store_free(av_prefix_store *ps) {
    while (ps->n) entry_free(ps, 0);
    free(ps->e);
    const av_backend *be = ps->be;
    memset(ps, 0, sizeof *ps);
    ps->be = be;
}

int av_prefix_store_match(av_prefix_store *ps, const int32_t *prompt, int n, int *common) {
    int best = -1, bc = 0;
    for (int k = 0; k < ps->n; k++) {
        int c = lcp(ps->e[k].tok, ps->e[k].n, prompt, n - 1); /* the last prompt token is always run */
        if (c > bc) best = k, bc = c;
    }
    *common = bc;
    return best;
}

av_status av_prefix_store_put(av_prefix_store *ps, av_batch_session *b, int slot, const int32_t *tok, int n) {
    size_t row = av_batch_session_kv_row_bytes(b), bytes = row * (size_t)n + sizeof(int32_t) * (size_t)n;
    if (n < AV_PREFIX_MIN || bytes > ps->limit) return AV_OK;
    for (int k = 0; k < ps->n; k++) {
        av_prefix_entry *e = &ps->e[k];
        int c = lcp(e->tok, e->n, tok, n);
        if (c == n) { e->used = av_now(); return AV_OK; } /* already held (or a longer one is) */
        if (c == e->n) { entry_free(ps, k--); }           /* the new one extends it */
    }
    while (ps->n && ps->bytes + bytes > ps->limit) { /* least recently used first */
        int old = 0;
        for (int k = 1; k < ps->n; k++)
            if (ps->e[k].used < ps->e[old].used) old = k;
        entry_free(ps, old);
        ps->evictions++;
    }
    if (ps->n == ps->cap) {
        int nc = ps->cap ? ps->cap * 2 : 8;
        av_prefix_entry *ne = realloc(ps->e, sizeof *ne * (size_t)nc);
        if (!ne) return av_fail(AV_ERR_NOMEM, "out of memory");
        ps->e = ne;
        ps->cap = nc;
    }
    av_prefix_entry e = {0};
    e.n = n;
    e.bytes = bytes;
    e.used = av_now();
    e.tok = malloc(sizeof(int32_t) * (size_t)n);
    if (!e.tok) return av_fail(AV_ERR_NOMEM, "out of memory");
    if (!(e.kv = ps->be->alloc(row * (size_t)n, "saved prompt prefix"))) { free(e.tok); return av_fail_prefix(AV_ERR_NOMEM, "prefix cache"); }
    memcpy(e.tok, tok, sizeof(int32_t) * (size_t)n);
    size_t half = row / 2 / sizeof(float) * (size_t)n;
    av_status st = av_batch_session_kv_save(b, slot, n, n, e.kv, e.kv + half);
    if (st != AV_OK) { free(e.tok); ps->be->free(e.kv); return st; }
    ps->e[ps->n++] = e;
    ps->bytes += bytes;
    ps->saves++;
    return AV_OK;
}

av_status av_prefix_store_restore(av_prefix_store *ps, int k, av_batch_session *b, int slot, int n) {
    av_prefix_entry *e = &ps->e[k];
    size_t half = av_batch_session_kv_row_bytes(b) / 2 / sizeof(float) * (size_t)e->n;
    AV_TRY(av_batch_session_kv_load(b, slot, n, e->n, e->kv, e->kv + half)); /* rows [0, n) of its e->n */
    e->used = av_now();
    ps->hits++;
    return AV_OK;
}
