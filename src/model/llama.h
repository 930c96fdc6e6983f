/* Llama inference on any backend: a session owns the KV cache and activation scratch, runs chunks
 * of tokens (batched prefill: matrix-matrix) or single tokens (decode: matrix-vector) at the next
 * positions, and exposes the final hidden states, logits or per-token NLL. */
#ifndef AV_LLAMA_H
#define AV_LLAMA_H
#include "core/plan.h"
#include "model/layer.h"
#include "model/model.h"

struct av_session {
    av_model *m;
    int max_seq, max_chunk, n_past;
    float *k_cache, *v_cache; /* [n_layers, max_seq, kv_dim] */
    float *x, *hidden;        /* [max_chunk, D]: the residual stream, the final-normed rows */
    av_layer_ws ws;           /* the layers' scratch (PREFILL / DECODE rows) */
    float *logits;            /* [logits_rows, V] backend scratch */
    int logits_rows;
    int32_t *ids_dev, *pos_dev;
    int32_t *hist;            /* host: ids at cached positions [hist_cap] (prefix reuse) */
    int hist_cap;
    /* a rotating cache (MLX-LM's RotatingKVCache(ring, ring_keep); ring = 0: none, rows = positions):
     * n_past counts every token seen (RoPE positions) while max_seq = ring - 1 + max_chunk rows hold
     * the first ring_keep tokens and the latest ones, in temporal order (kv_rows rows: after a
     * multi-token chunk) or in ring order (kv_wrapped: after a token decoded at a position >= ring) */
    int ring, ring_keep, kv_rows, kv_wrapped;
    float *ring_tmp;          /* [ring, kv_dim]: rows in transit between the two orders */
    int last_T;               /* rows of `hidden` from the last forward (0: `logits` already hold the last row's) */
    void *decode;             /* graph-captured single-token step (model/decode_graph.c), lazily made */
    void *decoder;            /* an av_decoder kept for the next av_decoder_new, its captured step with it */
    void (*decode_free)(struct av_session *s); /* releases decode / decoder (set by decode_graph.c) */
    av_plan plan;             /* one backend allocation for all of the above */
    size_t bytes;
};

/* av_session_new/_free/_forward/_prefill/_last_logits/_truncate/_nll and the accessors: include/anvil.h */

/* Plans a session-shaped set of buffers for `rows` rows (layer scratch + x, hidden) into plan:
 * shared by av_session and the batched session. */
void av_llama_plan_rows(av_plan *plan, const av_model *m, int rows, av_layer_ws *ws, float **x, float **hidden);

/* Rows a prompt pass of `rows` (>= 2) rows runs on a GPU: rounded up to a multiple of 64 within `chunk`
 * and `room` (rows the sequence has left past the pass), so passes come in a few shapes (cuBLAS's first
 * use of a shape costs 2-10 ms of host time: gpu_bench slots) and the server's passes and a session's
 * run the same shapes, hence the same results. The extra rows repeat the last token at the next
 * positions; their K/V land past the prompt, where decode writes before anything reads. The CPU (and
 * one row) runs `rows`. Shared by av_session (llama.c) and the batched session (batch.c). */
int av_llama_pass_rows(const av_backend *be, int rows, int chunk, int room);
/* The R >= T rows' inputs of such a pass: ids_out[R] (ids, then the last one repeated) and pos_out[R]
 * (p0, p0 + 1, ..). One rule for both sessions, so their padded passes stay the same. */
void av_llama_pass_inputs(int32_t *ids_out, int32_t *pos_out, const int32_t *ids, int T, int R, int p0);

/* Rotating sessions (kv_ring.c). Before one token at position n_past: the rows put in ring order
 * where the decode attention's slot arithmetic needs them; after it: the layout it left. */
void av_session_ring_decode_ready(av_session *s);
void av_session_ring_decode_done(av_session *s);
/* Before a chunk of T > 1 tokens at n_past: keeps the first ring_keep rows and the latest
 * min(rows, ring - 1) - ring_keep in temporal order (MLX's _update_concat) and returns the row the
 * chunk starts at; the chunk's rows follow them. */
int av_session_ring_prefill_ready(av_session *s, int T);
/* hist holds n ids (grows for a rotating session, whose n_past has no bound). */
av_status av_session_hist_reserve(av_session *s, int n);

#endif
