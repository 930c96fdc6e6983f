/* Llama inference on any backend: a session owns the KV cache and activation scratch, runs chunks
 * of tokens (batched prefill: matrix-matrix) or single tokens (decode: matrix-vector) at the next
 * positions, and exposes the final hidden states, logits or per-token NLL. */
#ifndef AV_LLAMA_H
#define AV_LLAMA_H
#include "model/model.h"

typedef struct av_session {
    av_model *m;
    int max_seq, max_chunk, n_past;
    float *k_cache, *v_cache; /* [n_layers, max_seq, kv_dim] */
    float *x, *xn, *q, *k, *v, *att, *tmp, *gate, *up, *hidden; /* [max_chunk, *] */
    float *lora_tmp;          /* [max_chunk, max lora rank] */
    float *logits;            /* [logits_rows, V] backend scratch */
    int logits_rows;
    int32_t *ids_dev, *pos_dev;
    int32_t *hist;            /* host: ids at cached positions [max_seq] (prefix reuse) */
    int last_T;               /* rows of `hidden` from the last forward (0: `logits` already hold the last row's) */
    void *decode;             /* graph-captured single-token step (model/decode_graph.c), lazily made */
    void *decoder;            /* an av_decoder kept for the next av_decoder_new, its captured step with it */
    size_t bytes;
} av_session;

av_status av_session_new(av_session **out, av_model *m, int max_seq, int max_chunk);
void av_session_free(av_session *s);
/* Runs T tokens at positions n_past.. (chunked by max_chunk), appends them to the KV cache, leaves
 * the final-normed hidden state of the last chunk's rows in s->hidden. */
av_status av_session_forward(av_session *s, const int32_t *ids, int T);
/* Logits of the last token of the last forward into host memory logits[V]. */
void av_session_last_logits(av_session *s, float *logits);
/* Forgets cached positions >= n (keeps the common prefix for chat). */
void av_session_truncate(av_session *s, int n);
/* Mean-free NLL: runs ids[0..T) and returns sum over t of -log p(ids[t+1] | ids[..t]) for
 * t < T-1; row_nll (host, T-1) optional; argmax (host, T) optional. Resets the session first. */
av_status av_session_nll(av_session *s, const int32_t *ids, int T, double *sum, float *row_nll, int32_t *argmax);

/* Activation buffers of a prefill chunk ([T, *] rows), shared by single and batched sessions. */
typedef struct {
    float *x, *xn, *q, *att, *tmp, *gate, *up, *lora_tmp;
} av_chunk_bufs;
/* Runs every decoder layer over T rows held in b->x (positions p0.., pos_dev on the backend),
 * appending K/V at rows p0.. of layer l's cache k_cache + l * layer_stride (same for v_cache). */
void av_llama_layers_forward(const av_model *m, const av_chunk_bufs *b, float *k_cache, float *v_cache, size_t layer_stride,
                             const int32_t *pos_dev, int T, int p0);

/* Linear layer with optional LoRA on the model's backend: out[T, rows] = x W^T + scale (x A^T) B^T.
 * tmp holds T * rank floats. */
void av_linear_forward(const av_backend *be, float *out, const float *x, const av_linear *L, int T, float *tmp);

#endif
