/* SentencePiece tokenizer.model: a hand-written, bounds-checked protobuf reader (pieces, scores,
 * types, trainer/normalizer flags) and SentencePiece's BPE encoder: whitespace normalization
 * (dummy prefix, ' ' -> U+2581), highest-score-first pair merging, unused-piece resegmentation
 * and byte fallback. Only model_type BPE is supported. */
#include "tokenizer/tok_internal.h"
#include "core/memory.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { const uint8_t *p, *end; } pb;

static int pb_varint(pb *b, uint64_t *v) {
    uint64_t x = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (b->p >= b->end) return -1;
        uint8_t c = *b->p++;
        x |= (uint64_t)(c & 0x7F) << shift;
        if (!(c & 0x80)) { *v = x; return 0; }
    }
    return -1;
}

/* Reads one field: *field, *wt; for LEN fields sets *sub; for varints *v; fixed32 in *v. */
static int pb_field(pb *b, int *field, int *wt, uint64_t *v, pb *sub) {
    uint64_t key;
    if (pb_varint(b, &key)) return -1;
    *field = (int)(key >> 3);
    *wt = (int)(key & 7);
    switch (*wt) {
    case 0: return pb_varint(b, v);
    case 1: if (b->end - b->p < 8) return -1; b->p += 8; return 0;
    case 5:
        if (b->end - b->p < 4) return -1;
        *v = (uint64_t)b->p[0] | (uint64_t)b->p[1] << 8 | (uint64_t)b->p[2] << 16 | (uint64_t)b->p[3] << 24;
        b->p += 4;
        return 0;
    case 2: {
        uint64_t len;
        if (pb_varint(b, &len) || len > (uint64_t)(b->end - b->p)) return -1;
        sub->p = b->p;
        sub->end = b->p + len;
        b->p += len;
        return 0;
    }
    default: return -1;
    }
}

typedef struct { const uint8_t *s; size_t len; float score; int type; } raw_piece;

static int parse_piece(pb sub, raw_piece *out) {
    out->s = NULL; out->len = 0; out->score = 0; out->type = 1;
    int f, wt;
    uint64_t v;
    pb x;
    while (sub.p < sub.end) {
        if (pb_field(&sub, &f, &wt, &v, &x)) return -1;
        if (f == 1 && wt == 2) { out->s = x.p; out->len = (size_t)(x.end - x.p); }
        else if (f == 2 && wt == 5) { uint32_t u = (uint32_t)v; memcpy(&out->score, &u, 4); }
        else if (f == 3 && wt == 0) out->type = (int)v;
    }
    return out->s ? 0 : -1;
}

av_status tk_spm_load(av_tokenizer *t, const char *path) {
    char *data = NULL;
    size_t size = 0;
    AV_TRY(av_file_read(path, &data, &size));
    av_status st = AV_OK;
    pb b = {(const uint8_t *)data, (const uint8_t *)data + size}, sub;
    int f, wt, np = 0, cap = 0, model_type = 1, byte_fallback = 0, treat_suffix = 0;
    int64_t unk_id = 0, bos_id = 1, eos_id = 2;
    uint64_t v;
    raw_piece *rp = NULL;
    size_t mem = 0;
    t->add_dummy_prefix = t->remove_extra_ws = t->escape_ws = 1;
    while (b.p < b.end) {
        if (pb_field(&b, &f, &wt, &v, &sub)) { st = av_fail(AV_ERR_FORMAT, "%s: truncated or malformed protobuf", path); goto done; }
        if (f == 1 && wt == 2) {
            if (np == cap) {
                cap = cap ? cap * 2 : 1024;
                raw_piece *r = realloc(rp, (size_t)cap * sizeof *r);
                if (!r) { st = av_fail(AV_ERR_NOMEM, "%s: out of memory", path); goto done; }
                rp = r;
            }
            if (parse_piece(sub, &rp[np])) { st = av_fail(AV_ERR_FORMAT, "%s: malformed piece %d", path, np); goto done; }
            mem += rp[np].len + 1;
            np++;
        } else if ((f == 2 || f == 3) && wt == 2) {
            int ff, w2;
            uint64_t x;
            pb s2;
            while (sub.p < sub.end) {
                if (pb_field(&sub, &ff, &w2, &x, &s2)) { st = av_fail(AV_ERR_FORMAT, "%s: malformed %s spec", path, f == 2 ? "trainer" : "normalizer"); goto done; }
                if (w2 != 0) continue;
                if (f == 2) {
                    if (ff == 3) model_type = (int)x;
                    else if (ff == 35) byte_fallback = x != 0;
                    else if (ff == 24) treat_suffix = x != 0;
                    else if (ff == 40) unk_id = (int64_t)x;
                    else if (ff == 41) bos_id = (int64_t)x;
                    else if (ff == 42) eos_id = (int64_t)x;
                } else {
                    if (ff == 3) t->add_dummy_prefix = x != 0;
                    else if (ff == 4) t->remove_extra_ws = x != 0;
                    else if (ff == 5) t->escape_ws = x != 0;
                }
            }
        }
    }
    if (np == 0) { st = av_fail(AV_ERR_FORMAT, "%s: no pieces (not a SentencePiece model?)", path); goto done; }
    if (model_type != 2) { st = av_fail(AV_ERR_UNSUPPORTED, "%s: SentencePiece model type %d is not supported (only BPE)", path, model_type); goto done; }
    if (treat_suffix) { st = av_fail(AV_ERR_UNSUPPORTED, "%s: treat_whitespace_as_suffix is not supported", path); goto done; }
    t->n_vocab = np;
    t->piece_mem = malloc(mem + 1);
    t->piece_off = malloc((size_t)(np + 1) * sizeof *t->piece_off);
    t->piece_len = malloc((size_t)(np + 1) * sizeof *t->piece_len);
    t->special = calloc((size_t)np + 1, 1);
    t->scores = malloc((size_t)np * sizeof *t->scores);
    t->types = malloc((size_t)np);
    t->user_ids = malloc((size_t)np * sizeof *t->user_ids);
    if (!t->piece_mem || !t->piece_off || !t->piece_len || !t->special || !t->scores || !t->types || !t->user_ids ||
        tk_strmap_init(&t->vocab, (size_t)np)) { st = av_fail(AV_ERR_NOMEM, "%s: out of memory", path); goto done; }
    size_t at = 0;
    for (int i = 0; i < np; i++) {
        memcpy(t->piece_mem + at, rp[i].s, rp[i].len);
        t->piece_mem[at + rp[i].len] = 0;
        t->piece_off[i] = (uint32_t)at;
        t->piece_len[i] = (uint32_t)rp[i].len;
        t->scores[i] = rp[i].score;
        t->types[i] = (uint8_t)(rp[i].type >= 1 && rp[i].type <= 6 ? rp[i].type : 1);
        t->special[i] = t->types[i] == 3 || t->types[i] == 2;
        if (tk_strmap_put(&t->vocab, t->piece_mem + at, rp[i].len, i)) { st = av_fail(AV_ERR_NOMEM, "%s: out of memory", path); goto done; }
        if (t->types[i] == 6) {
            int bv = tk_is_byte_piece(t->piece_mem + at, rp[i].len);
            if (bv >= 0) t->byte_id[bv] = i;
        }
        if (t->types[i] == 4) t->user_ids[t->n_user++] = i;
        if (t->types[i] == 5) t->has_unused = 1;
        at += rp[i].len + 1;
    }
    t->byte_fallback = byte_fallback;
    t->unk_id = unk_id >= 0 && unk_id < np ? (int)unk_id : -1;
    t->bos_id = bos_id >= 0 && bos_id < np ? (int)bos_id : -1;
    t->eos_id = eos_id >= 0 && eos_id < np ? (int)eos_id : -1;
    t->kind = TK_KIND_SPM;
done:
    free(rp);
    free(data);
    return st;
}

/* ---- encoding ------------------------------------------------------------------------------ */
typedef struct { size_t off, len; int prev, next, freeze; } ssym;
typedef struct { float score; int left, right; size_t size; } sent;

static int sent_better(const sent *a, const sent *b) { return a->score > b->score || (a->score == b->score && a->left < b->left); }
static void sheap_push(sent *h, int *n, sent e) {
    int i = (*n)++;
    h[i] = e;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!sent_better(&h[i], &h[p])) break;
        sent x = h[i]; h[i] = h[p]; h[p] = x;
        i = p;
    }
}
static sent sheap_pop(sent *h, int *n) {
    sent top = h[0];
    h[0] = h[--(*n)];
    for (int i = 0;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && sent_better(&h[l], &h[m])) m = l;
        if (r < *n && sent_better(&h[r], &h[m])) m = r;
        if (m == i) break;
        sent x = h[i]; h[i] = h[m]; h[m] = x;
        i = m;
    }
    return top;
}

/* id usable as a merge result (NORMAL, USER_DEFINED, UNUSED), else -1 */
static int merge_piece(const av_tokenizer *t, const char *s, size_t n) {
    int id = tk_strmap_get(&t->vocab, s, n);
    if (id < 0) return -1;
    int ty = t->types[id];
    return (ty == 1 || ty == 4 || ty == 5) ? id : -1;
}

typedef struct { const char *norm; ssym *sy; sent *heap; int nh; tk_strmap rev; size_t (*revp)[4]; int nrev; } spm_ctx;

static void maybe_add(const av_tokenizer *t, spm_ctx *c, int left, int right) {
    if (left < 0 || right < 0 || c->sy[left].freeze || c->sy[right].freeze) return;
    size_t off = c->sy[left].off, size = c->sy[left].len + c->sy[right].len;
    int id = merge_piece(t, c->norm + off, size);
    if (id < 0) return;
    sheap_push(c->heap, &c->nh, (sent){t->scores[id], left, right, size});
    if (t->types[id] == 5 && tk_strmap_get(&c->rev, c->norm + off, size) < 0 && c->revp) {
        c->revp[c->nrev][0] = c->sy[left].off; c->revp[c->nrev][1] = c->sy[left].len;
        c->revp[c->nrev][2] = c->sy[right].off; c->revp[c->nrev][3] = c->sy[right].len;
        tk_strmap_put(&c->rev, c->norm + off, size, c->nrev++);
    }
}

static int piece_to_id(const av_tokenizer *t, const char *s, size_t n) {
    int id = tk_strmap_get(&t->vocab, s, n);
    return id >= 0 ? id : t->unk_id;
}

static int emit(const av_tokenizer *t, spm_ctx *c, size_t off, size_t len, tk_ids *out, int depth) {
    int id = piece_to_id(t, c->norm + off, len);
    if (id >= 0 && t->types[id] == 5 && depth < 64) {
        int r = tk_strmap_get(&c->rev, c->norm + off, len);
        if (r >= 0) {
            size_t *q = c->revp[r];
            return emit(t, c, q[0], q[1], out, depth + 1) || emit(t, c, q[2], q[3], out, depth + 1);
        }
    }
    if ((id < 0 || id == t->unk_id) && t->byte_fallback) {
        int ok = 1;
        for (size_t k = 0; k < len; k++) ok &= t->byte_id[(unsigned char)c->norm[off + k]] >= 0;
        if (ok) {
            for (size_t k = 0; k < len; k++)
                if (tk_ids_push(out, t->byte_id[(unsigned char)c->norm[off + k]])) return -1;
            return 0;
        }
    }
    return id >= 0 ? tk_ids_push(out, id) : 0;
}

static int normalize(const av_tokenizer *t, const char *s, size_t n, tk_buf *o) {
    static const char ws[] = "\xE2\x96\x81";
    size_t i = 0, end = n;
    if (t->remove_extra_ws) {
        while (i < n && s[i] == ' ') i++;
        while (end > i && s[end - 1] == ' ') end--;
    }
    if (i == end) return tk_buf_put(o, "", 0);
    if (t->add_dummy_prefix && (t->escape_ws ? tk_buf_put(o, ws, 3) : tk_buf_put(o, " ", 1))) return -1;
    while (i < end) {
        if (s[i] == ' ') {
            if (t->escape_ws ? tk_buf_put(o, ws, 3) : tk_buf_put(o, " ", 1)) return -1;
            i++;
            if (t->remove_extra_ws) while (i < end && s[i] == ' ') i++;
            continue;
        }
        int l = tk_utf8_valid_len((const unsigned char *)s, end, i);
        if (l == 0) { if (tk_buf_put(o, "\xEF\xBF\xBD", 3)) return -1; i++; continue; }
        if (tk_buf_put(o, s + i, (size_t)l)) return -1;
        i += (size_t)l;
    }
    return 0;
}

int tk_spm_encode(const av_tokenizer *t, const char *s, size_t n, tk_ids *out) {
    tk_buf nb = {0};
    spm_ctx c = {0};
    int rc = -1, ns = 0;
    if (normalize(t, s, n, &nb)) goto done;
    if (nb.n == 0) { rc = 0; goto done; }
    c.norm = nb.p;
    c.sy = malloc((nb.n + 1) * sizeof *c.sy);
    c.heap = malloc((3 * nb.n + 4) * sizeof *c.heap);
    if (!c.sy || !c.heap || tk_strmap_init(&c.rev, 16)) goto done;
    for (size_t i = 0; i < nb.n;) {
        size_t len = 0;
        int fr = 0;
        for (int u = 0; u < t->n_user; u++) {
            size_t pl;
            const char *p = tk_piece(t, t->user_ids[u], &pl);
            if (p && pl > len && pl <= nb.n - i && !memcmp(nb.p + i, p, pl)) { len = pl; fr = 1; }
        }
        if (!len) { uint32_t cp; len = (size_t)tk_utf8_next(nb.p, nb.n, i, &cp); }
        c.sy[ns] = (ssym){i, len, ns - 1, -1, fr};
        if (ns > 0) c.sy[ns - 1].next = ns;
        ns++;
        i += len;
    }
    if (t->has_unused && !(c.revp = malloc((3 * nb.n + 4) * sizeof *c.revp))) goto done;
    for (int i = 1; i < ns; i++) maybe_add(t, &c, i - 1, i);
    while (c.nh > 0) {
        sent top = sheap_pop(c.heap, &c.nh);
        ssym *l = &c.sy[top.left], *r = &c.sy[top.right];
        if (l->len == 0 || r->len == 0 || l->len + r->len != top.size) continue;
        l->len += r->len;
        l->next = r->next;
        if (r->next >= 0) c.sy[r->next].prev = top.left;
        r->len = 0;
        maybe_add(t, &c, l->prev, top.left);
        maybe_add(t, &c, top.left, l->next);
    }
    rc = 0;
    for (int i = 0; i != -1 && !rc; i = c.sy[i].next) rc = emit(t, &c, c.sy[i].off, c.sy[i].len, out, 0);
done:
    free(nb.p);
    free(c.sy);
    free(c.heap);
    free(c.revp);
    tk_strmap_free(&c.rev);
    return rc;
}
