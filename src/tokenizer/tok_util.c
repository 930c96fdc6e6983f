/* Small utilities for the tokenizer: growable byte/id buffers, an open-addressing string -> id
 * table (vocab), a (id, id) -> (rank, new id) table (BPE merges), and lossy UTF-8 conversion
 * (each maximal ill-formed subsequence becomes U+FFFD, as Rust's from_utf8_lossy). */
#include "tokenizer/tok_internal.h"
#include <stdlib.h>
#include <string.h>

int tk_buf_put(tk_buf *b, const void *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

int tk_ids_push(tk_ids *a, int32_t id) {
    if (a->n == a->cap) {
        int cap = a->cap ? a->cap * 2 : 64;
        int32_t *v = realloc(a->v, (size_t)cap * sizeof *v);
        if (!v) return -1;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return 0;
}

static uint32_t hash_bytes(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h ^ (h >> 15);
}

static uint32_t pow2_for(size_t expect) {
    uint32_t cap = 16;
    while (cap < expect * 2 + 2) cap *= 2;
    return cap;
}

int tk_strmap_init(tk_strmap *m, size_t expect) {
    uint32_t cap = pow2_for(expect);
    m->e = calloc(cap, sizeof *m->e);
    m->mask = cap - 1;
    m->n = 0;
    return m->e ? 0 : -1;
}
void tk_strmap_free(tk_strmap *m) { free(m->e); m->e = NULL; }

static int strmap_grow(tk_strmap *m) {
    tk_strmap g;
    if (tk_strmap_init(&g, (size_t)(m->mask + 1))) return -1;
    for (uint32_t i = 0; i <= m->mask; i++) {
        tk_sent *e = &m->e[i];
        if (!e->s) continue;
        uint32_t j = e->hash & g.mask;
        while (g.e[j].s) j = (j + 1) & g.mask;
        g.e[j] = *e;
        g.n++;
    }
    free(m->e);
    *m = g;
    return 0;
}

int tk_strmap_put(tk_strmap *m, const char *s, size_t len, int32_t val) {
    if ((m->n + 1) * 2 > m->mask + 1 && strmap_grow(m)) return -1;
    uint32_t h = hash_bytes(s, len), j = h & m->mask;
    for (; m->e[j].s; j = (j + 1) & m->mask)
        if (m->e[j].hash == h && m->e[j].len == len && !memcmp(m->e[j].s, s, len)) return 0;
    m->e[j] = (tk_sent){s, (uint32_t)len, h, val};
    m->n++;
    return 0;
}

int32_t tk_strmap_get(const tk_strmap *m, const char *s, size_t len) {
    if (!m->e) return -1;
    uint32_t h = hash_bytes(s, len), j = h & m->mask;
    for (; m->e[j].s; j = (j + 1) & m->mask)
        if (m->e[j].hash == h && m->e[j].len == len && !memcmp(m->e[j].s, s, len)) return m->e[j].val;
    return -1;
}

static uint32_t hash_pair(uint64_t k) {
    k ^= k >> 33; k *= 0xff51afd7ed558ccdULL; k ^= k >> 33; k *= 0xc4ceb9fe1a85ec53ULL; k ^= k >> 33;
    return (uint32_t)k;
}

int tk_pairmap_init(tk_pairmap *m, size_t expect) {
    uint32_t cap = pow2_for(expect);
    m->keys = calloc(cap, sizeof *m->keys);
    m->rank = malloc(cap * sizeof *m->rank);
    m->nid = malloc(cap * sizeof *m->nid);
    m->mask = cap - 1;
    m->n = 0;
    if (!m->keys || !m->rank || !m->nid) { tk_pairmap_free(m); return -1; }
    return 0;
}
void tk_pairmap_free(tk_pairmap *m) {
    free(m->keys); free(m->rank); free(m->nid);
    m->keys = NULL; m->rank = m->nid = NULL;
}

/* keys store (a << 32 | b) + 1 so that 0 marks an empty slot (ids are < 2^31). */
int tk_pairmap_put(tk_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t nid) {
    if ((m->n + 1) * 2 > m->mask + 1) {
        tk_pairmap g;
        if (tk_pairmap_init(&g, (size_t)(m->mask + 1))) return -1;
        for (uint32_t i = 0; i <= m->mask; i++) {
            if (!m->keys[i]) continue;
            uint32_t j = hash_pair(m->keys[i]) & g.mask;
            while (g.keys[j]) j = (j + 1) & g.mask;
            g.keys[j] = m->keys[i]; g.rank[j] = m->rank[i]; g.nid[j] = m->nid[i];
            g.n++;
        }
        tk_pairmap_free(m);
        *m = g;
    }
    uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    uint32_t j = hash_pair(k) & m->mask;
    for (; m->keys[j]; j = (j + 1) & m->mask)
        if (m->keys[j] == k) return 0;
    m->keys[j] = k; m->rank[j] = rank; m->nid[j] = nid;
    m->n++;
    return 0;
}

int tk_pairmap_get(const tk_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *nid) {
    if (!m->keys) return 0;
    uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    uint32_t j = hash_pair(k) & m->mask;
    for (; m->keys[j]; j = (j + 1) & m->mask)
        if (m->keys[j] == k) { *rank = m->rank[j]; *nid = m->nid[j]; return 1; }
    return 0;
}

size_t tk_lossy_append(tk_buf *out, const unsigned char *s, size_t n, int keep_tail) {
    size_t i = 0;
    while (i < n) {
        int len = tk_utf8_valid_len(s, n, i);
        if (len) { if (tk_buf_put(out, s + i, (size_t)len)) return i; i += (size_t)len; continue; }
        /* length of the longest valid prefix of a sequence starting here */
        unsigned c = s[i];
        int need = (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 1;
        size_t k = 1;
        if (need > 1) {
            unsigned lo = 0x80, hi = 0xBF;
            if (c == 0xE0) lo = 0xA0; else if (c == 0xED) hi = 0x9F;
            else if (c == 0xF0) lo = 0x90; else if (c == 0xF4) hi = 0x8F;
            while (k < (size_t)need && i + k < n) {
                unsigned d = s[i + k];
                if (k == 1 ? (d < lo || d > hi) : (d < 0x80 || d > 0xBF)) break;
                k++;
            }
            if (i + k == n && k < (size_t)need && keep_tail) return i; /* may still complete */
        }
        if (tk_buf_put(out, "\xEF\xBF\xBD", 3)) return i;
        i += k;
    }
    return i;
}

int tk_is_byte_piece(const char *p, size_t len) {
    if (len != 6 || p[0] != '<' || p[1] != '0' || p[2] != 'x' || p[5] != '>') return -1;
    int v = 0;
    for (int k = 3; k < 5; k++) {
        char c = p[k];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}
