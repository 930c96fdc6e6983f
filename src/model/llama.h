/* Llama inference on any backend: a session owns the KV cache and activation scratch, runs chunks
 * of tokens (batched prefill: matrix-matrix) or single tokens (decode: matrix-vector) at the next
 * positions, and exposes the final hidden states, logits or per-token NLL. */
#ifndef AV_LLAMA_H
#define AV_LLAMA_H
#include "core/plan.h"
#include "model/layer.h"
#include "model/model.h"

typedef struct av_session {
    av_model *m;
    int max_seq, max_chunk, n_past;
    float *k_cache, *v_cache; /* [n_layers, max_seq, kv_dim] */
    float *x, *hidden;        /* [max_chunk, D]: the residual stream, the final-normed rows */
    av_layer_ws ws;           /* the layers' scratch (PREFILL / DECODE rows) */
    float *logits;            /* [logits_rows, V] backend scratch */
    int logits_rows;
    int32_t *ids_dev, *pos_dev;
    int32_t *hist;            /* host: ids at cached positions [max_seq] (prefix reuse) */
    int last_T;               /* rows of `hidden` from the last forward (0: `logits` already hold the last row's) */
    void *decode;             /* graph-captured single-token step (model/decode_graph.c), lazily made */
    void *decoder;            /* an av_decoder kept for the next av_decoder_new, its captured step with it */
    void (*decode_free)(struct av_session *s); /* releases decode / decoder (set by decode_graph.c) */
    av_plan plan;             /* one backend allocation for all of the above */
    size_t bytes;
} av_session;

av_status av_session_new(av_session **out, av_model *m, int max_seq, int max_chunk);
void av_session_free(av_session *s);
/* Runs T tokens at positions n_past.. (chunked by max_chunk), appends them to the KV cache, leaves
 * the final-normed hidden state of the last chunk's rows in s->hidden. A single token takes the
 * decode path (model/decode_graph.c defines this: graph-captured step where the backend can). */
av_status av_session_forward(av_session *s, const int32_t *ids, int T);
/* av_session_forward through the prefill path only (matrix-matrix, eager). */
av_status av_session_prefill(av_session *s, const int32_t *ids, int T);
/* Logits of the last token of the last forward into host memory logits[V]. */
void av_session_last_logits(av_session *s, float *logits);
/* Forgets cached positions >= n (keeps the common prefix for chat). */
void av_session_truncate(av_session *s, int n);
/* Mean-free NLL: runs ids[0..T) and returns sum over t of -log p(ids[t+1] | ids[..t]) for
 * t < T-1; row_nll (host, T-1) optional; argmax (host, T) optional. Resets the session first. */
av_status av_session_nll(av_session *s, const int32_t *ids, int T, double *sum, float *row_nll, int32_t *argmax);

/* Plans a session-shaped set of buffers for `rows` rows (layer scratch + x, hidden) into plan:
 * shared by av_session and the batched session. */
void av_llama_plan_rows(av_plan *plan, const av_model *m, int rows, av_layer_ws *ws, float **x, float **hidden);

#endif
