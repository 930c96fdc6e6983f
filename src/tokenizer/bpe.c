/* Merge-rank BPE of one pre-tokenized word, as HF tokenizers' BPE model: characters -> vocab ids
 * (unknown characters -> <0xNN> byte tokens with byte_fallback, else <unk>), then merges applied
 * lowest rank first (leftmost on ties) with a binary heap. Also the GPT-2 byte <-> unicode map. */
#include "tokenizer/tok_internal.h"
#include <stdlib.h>
#include <string.h>

typedef struct { int32_t rank, pos, nid; } merge_ent;

static int ent_less(const merge_ent *a, const merge_ent *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}
static void heap_push(merge_ent *h, int *n, merge_ent e) {
    int i = (*n)++;
    h[i] = e;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!ent_less(&h[i], &h[p])) break;
        merge_ent t = h[i]; h[i] = h[p]; h[p] = t;
        i = p;
    }
}
static merge_ent heap_pop(merge_ent *h, int *n) {
    merge_ent top = h[0];
    h[0] = h[--(*n)];
    int i = 0;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && ent_less(&h[l], &h[m])) m = l;
        if (r < *n && ent_less(&h[r], &h[m])) m = r;
        if (m == i) break;
        merge_ent t = h[i]; h[i] = h[m]; h[m] = t;
        i = m;
    }
    return top;
}

typedef struct { int32_t id, prev, next; int alive; } sym;

int tk_bpe_word(const av_tokenizer *t, const char *w, size_t n, tk_ids *out) {
    if (n == 0) return 0;
    if (t->ignore_merges) {
        int32_t id = tk_strmap_get(&t->vocab, w, n);
        if (id >= 0) return tk_ids_push(out, id);
    }
    /* at most n symbols (one per byte) */
    sym sbuf[256];
    merge_ent hbuf[512];
    sym *s = n <= 256 ? sbuf : malloc(n * sizeof *s);
    merge_ent *heap = n <= 256 ? hbuf : malloc(2 * n * sizeof *heap); /* <= n-1 initial + 2 per merge */
    if (!s || !heap) { if (s != sbuf) free(s); if (heap != hbuf) free(heap); return -1; }
    int ns = 0, unk_pending = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int cl = tk_utf8_next(w, n, i, &cp);
        int32_t id = tk_strmap_get(&t->vocab, w + i, (size_t)cl);
        if (id >= 0) {
            if (unk_pending) { s[ns++] = (sym){t->unk_id, 0, 0, 1}; unk_pending = 0; }
            s[ns++] = (sym){id, 0, 0, 1};
        } else {
            int ok = t->byte_fallback;
            for (int k = 0; ok && k < cl; k++) ok = t->byte_id[(unsigned char)w[i + k]] >= 0;
            if (ok) {
                if (unk_pending) { s[ns++] = (sym){t->unk_id, 0, 0, 1}; unk_pending = 0; }
                for (int k = 0; k < cl; k++) s[ns++] = (sym){t->byte_id[(unsigned char)w[i + k]], 0, 0, 1};
            } else if (t->unk_id >= 0) {
                if (unk_pending && !t->fuse_unk) s[ns++] = (sym){t->unk_id, 0, 0, 1};
                unk_pending = 1;
            }
        }
        i += (size_t)cl;
    }
    if (unk_pending) s[ns++] = (sym){t->unk_id, 0, 0, 1};
    for (int i = 0; i < ns; i++) { s[i].prev = i - 1; s[i].next = i + 1 < ns ? i + 1 : -1; }
    int nh = 0;
    int32_t rank, nid;
    for (int i = 0; i + 1 < ns; i++)
        if (tk_pairmap_get(&t->merges, s[i].id, s[i + 1].id, &rank, &nid)) heap_push(heap, &nh, (merge_ent){rank, i, nid});
    while (nh > 0) {
        merge_ent top = heap_pop(heap, &nh);
        sym *a = &s[top.pos];
        if (!a->alive || a->next < 0) continue;
        sym *b = &s[a->next];
        if (!tk_pairmap_get(&t->merges, a->id, b->id, &rank, &nid) || nid != top.nid) continue;
        a->id = top.nid;
        b->alive = 0;
        a->next = b->next;
        if (b->next >= 0) s[b->next].prev = top.pos;
        if (a->prev >= 0 && tk_pairmap_get(&t->merges, s[a->prev].id, a->id, &rank, &nid))
            heap_push(heap, &nh, (merge_ent){rank, a->prev, nid});
        if (a->next >= 0 && tk_pairmap_get(&t->merges, a->id, s[a->next].id, &rank, &nid))
            heap_push(heap, &nh, (merge_ent){rank, top.pos, nid});
    }
    int rc = 0;
    for (int i = 0; i < ns && !rc; i++)
        if (s[i].alive) rc = tk_ids_push(out, s[i].id);
    if (s != sbuf) free(s);
    if (heap != hbuf) free(heap);
    return rc;
}

/* GPT-2: printable Latin-1 bytes stand for themselves, the other 68 map to U+0100.. in order. */
static int byte_is_self(int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); }

static uint32_t byte_cp(int b) {
    if (byte_is_self(b)) return (uint32_t)b;
    int k = b <= 0x20 ? b : b == 0xAD ? 67 : 33 + (b - 0x7F); /* 0x00-0x20, 0x7F-0xA0, 0xAD */
    return 256u + (uint32_t)k;
}

void tk_byte_to_unicode(int b, char out[3], int *len) {
    char u[4];
    *len = tk_utf8_put(byte_cp(b), u);
    memcpy(out, u, 3);
}

int tk_unicode_to_byte(uint32_t cp) {
    if (cp < 256) return byte_is_self((int)cp) ? (int)cp : -1;
    if (cp >= 256 + 68) return -1;
    int k = (int)(cp - 256);
    return k <= 0x20 ? k : k == 67 ? 0xAD : 0x7F + (k - 33);
}
