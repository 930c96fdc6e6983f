/* A rotating session's KV rows (MLX-LM's RotatingKVCache): the moves between temporal order (the
 * first ring_keep tokens, then the latest ones: what a multi-token chunk attends, causally and at
 * most `ring` rows back) and ring order (token t at av_kv_ring_slot(t): what decode writes and
 * reads, from the position alone). Each move goes through ring_tmp, layer by layer, as backend
 * copies queued before the step that needs them. */
#include "model/llama.h"
#include "attention/kv_ring.h"
#include <stdlib.h>

typedef struct {
    int start[2], len[2];
} runs;

/* n consecutive ring slots from `first` (wrapping from ring - 1 to keep) as at most two row runs */
static runs ring_runs(int first, int n, int keep, int ring) {
    int a = ring - first < n ? ring - first : n;
    return (runs){{first, keep}, {a, n - a}};
}

static runs one_run(int start, int n) { return (runs){{start, 0}, {n, 0}}; }

/* Every layer's K and V rows of src, in order, to the rows of dst (the same count). */
static void move_rows(av_session *s, runs src, runs dst) {
    const av_backend *be = s->m->be;
    size_t kvd = (size_t)s->m->cfg.n_kv_heads * s->m->cfg.head_dim, rb = kvd * sizeof(float);
    for (int l = 0; l < s->m->cfg.n_layers; l++)
        for (int kv = 0; kv < 2; kv++) {
            float *base = (kv ? s->v_cache : s->k_cache) + (size_t)l * s->ws.layer_stride;
            size_t off = 0;
            for (int i = 0; i < 2; i++)
                if (src.len[i]) be->copy(s->ring_tmp + off * kvd, base + (size_t)src.start[i] * kvd, rb * src.len[i]), off += src.len[i];
            off = 0;
            for (int i = 0; i < 2; i++)
                if (dst.len[i]) be->copy(base + (size_t)dst.start[i] * kvd, s->ring_tmp + off * kvd, rb * dst.len[i]), off += dst.len[i];
        }
}

void av_session_ring_decode_ready(av_session *s) {
    int p = s->n_past, keep = s->ring_keep, ring = s->ring;
    if (!ring || s->kv_wrapped || p < ring) return; /* below ring, rows are positions (nothing dropped yet) */
    /* temporal order, kv_rows rows (>= ring): the latest ring - keep - 1 tokens go to their slots;
     * token p's slot receives p itself */
    int n = ring - keep - 1, K = s->kv_rows;
    if (!(K == p && p == ring) && n > 0) /* rows 0..ring-1 holding tokens 0..ring-1 are in ring order already */
        move_rows(s, one_run(K - n, n), ring_runs(av_kv_ring_slot(p - n, keep, ring), n, keep, ring));
    s->kv_wrapped = 1;
}

void av_session_ring_decode_done(av_session *s) {
    int p = s->n_past - 1; /* the token just decoded */
    if (!s->ring) return;
    if (p >= s->ring) s->kv_wrapped = 1;
    else s->kv_rows = p + 1;
}

int av_session_ring_prefill_ready(av_session *s, int T) {
    int p = s->n_past, keep = s->ring_keep, ring = s->ring;
    if (!ring) return p;
    int K = s->kv_wrapped ? ring : s->kv_rows; /* rows in temporal order */
    if (K >= ring) { /* MLX's trim: the first keep rows and the latest ring - 1 - keep */
        int n = ring - 1 - keep;
        if (n > 0) {
            runs src = s->kv_wrapped ? ring_runs(av_kv_ring_slot(p - n, keep, ring), n, keep, ring) : one_run(K - n, n);
            move_rows(s, src, one_run(keep, n));
        }
        K = ring - 1;
    }
    s->kv_wrapped = 0;
    s->kv_rows = K + T;
    return K;
}

av_status av_session_hist_reserve(av_session *s, int n) {
    if (n <= s->hist_cap) return AV_OK;
    int cap = s->hist_cap > n / 2 ? 2 * s->hist_cap : n;
    int32_t *h = realloc(s->hist, sizeof(int32_t) * (size_t)cap);
    if (!h) return av_fail(AV_ERR_NOMEM, "out of memory for the session's token history");
    s->hist = h;
    s->hist_cap = cap;
    return AV_OK;
}
