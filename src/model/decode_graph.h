/* Decode steps whose every position-dependent input lives in backend memory (token ids, positions,
 * active flags), so one step's ops can be captured once as a CUDA graph and replayed for every
 * token: N rows (sequences) per step, each appending its K/V to its own cache region and attending
 * over it (backend attention_decode), optionally followed by the LM head and the device sampler so
 * only the sampled ids come back. Backends without graphs/attention_decode run the same ops eagerly.
 * Used by av_session (single-sequence decode, av_decoder) and by av_batch (batched generation). */
#ifndef AV_DECODE_GRAPH_H
#define AV_DECODE_GRAPH_H
#include "model/llama.h"

typedef struct {
    av_model *m;
    int N;                          /* rows (sequences) per step */
    /* the layers' rows (model/layer.h, DECODE): k_cache/v_cache with layer_stride/seq_stride (row p
     * of sequence i, layer l: + l*layer_stride + i*seq_stride + p*kv_dim) and scratch of >= N rows;
     * qkv/gu are the plan's own */
    av_layer_ws ws;
    float *x, *hidden;              /* >= N rows */
    float *logits;                  /* [N, V]; used when sample != 0 */
    int32_t *ids, *pos, *active;    /* backend memory [N]; active may be NULL (all active) */
    int sample;                     /* 1: LM head + sampler after the layers (ids/pos advance on the device) */
    float temperature, top_p;
    uint64_t seed;
    /* state */
    void *graph;
    float g_temperature, g_top_p;
    uint64_t g_seed;
    int eager_done;
    int32_t *host_pos;              /* host mirror of pos for the eager fallback [N] */
    int pend[2], npend;             /* queued steps, oldest first: their id-copy tickets (-1: none) */
    /* greedy single-sequence steps fold the argmax into the LM head, whose last block writes the id
     * into a ring of host-visible memory (backend host_alloc): no copy is queued behind the step */
    int32_t *ring_host, *ring_dev;
    unsigned *seq_dev;              /* device count of ids written to the ring */
    unsigned nsub;                  /* host count of steps submitted with the ring */
    int pend_slot[2];               /* queued steps' ring slots (-1: their ids come by copy) */
    int ring_tried;
} av_decode_plan;

/* Runs one step: the tokens in plan->ids at plan->pos (both already in backend memory).
 * With sample: logits -> sampled ids written back to plan->ids, pos advanced where active;
 * host_ids (if non-NULL) receives the N sampled ids. Graph-captured where the backend can. */
av_status av_decode_plan_step(av_decode_plan *p, int32_t *host_ids);
/* av_decode_plan_step in two halves, so a caller can keep the next step queued behind the one it
 * waits for (the GPU never idles between tokens): submit queues a step (reading plan->ids/pos as the
 * previous step left them) and, with sample, the copy of its ids to the host; collect waits for the
 * oldest queued step and gives its ids. Two steps may be queued only where av_decode_plan_queueable. */
av_status av_decode_plan_submit(av_decode_plan *p);
av_status av_decode_plan_collect(av_decode_plan *p, int32_t *host_ids);
int av_decode_plan_queueable(const av_decode_plan *p);
/* Frees the captured graph (buffers belong to the owner); waits for queued steps first. */
void av_decode_plan_release(av_decode_plan *p);

/* A one-row plan over a session's cache and buffers (sample: LM head + sampler in the step). */
void av_decode_plan_for_session(av_decode_plan *p, av_session *s, int sample);

/* ---- single-sequence decode on an av_session with device-side sampling ---- */
typedef struct av_decoder av_decoder;
av_status av_decoder_new(av_decoder **out, av_session *s);
/* The session keeps the last freed decoder (and its captured step) for its next av_decoder_new. */
void av_decoder_free(av_decoder *d);
/* Feeds `id` at position s->n_past (appending it to the cache), samples the next token on the device
 * (temperature <= 0: greedy; top_p 1 = off; randomness keyed by seed and position) into *next.
 * Only *next crosses to the host; when `id` is the previous call's *next nothing is uploaded. */
av_status av_decoder_next(av_decoder *d, int32_t id, float temperature, float top_p, uint64_t seed, int32_t *next);
/* As av_decoder_next; with lookahead != 0 the step that feeds *next is queued before returning, so
 * the GPU runs it while the caller handles *next. The next call with id == *next (and the same
 * sampling) takes that step instead of queueing a new one; any other id discards it. While a step is
 * queued ahead the session's logits belong to it: callers that read logits must not look ahead.
 * Pass lookahead = 0 on the last token the caller will request. */
av_status av_decoder_next_ahead(av_decoder *d, int32_t id, float temperature, float top_p, uint64_t seed, int32_t *next,
                                int lookahead);


#endif
