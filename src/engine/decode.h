/* The decode-path choice for single-sequence generation and the stepper that runs it:
 *   AV_DECODE_DEVICE: the backend's captured decode step with its device sampler (av_decoder):
 *                     only the sampled id crosses to the host (backends with graphs, attention_decode
 *                     and a `sample` op; sampling that is temperature + top-p only);
 *   AV_DECODE_HOST:   av_session_forward (graph-captured inside the model where the backend can,
 *                     eager otherwise, e.g. on the CPU) + the host sampler over downloaded logits.
 * Both draw the same random number for the same (seed, position). generate, chat, bench and the
 * batched fallback all step through this. */
#ifndef AV_DECODE_H
#define AV_DECODE_H
#include "engine/sampler.h"
#include "model/decode_graph.h"

typedef enum { AV_DECODE_HOST, AV_DECODE_DEVICE } av_decode_path;

av_decode_path av_decode_path_choose(const av_model *m, const av_sampler_params *p);

typedef struct {
    av_session *s;
    av_decode_path path;
    av_decoder *dec; /* AV_DECODE_DEVICE */
    av_sampler smp;
    float *logits;   /* host [V] */
} av_stepper;

av_status av_stepper_init(av_stepper *st, av_session *s, const av_sampler_params *p);
void av_stepper_free(av_stepper *st);
/* The token after the session's last forward (e.g. a prompt's prefill), sampled on the host from
 * its logits. recent: ids so far (repetition penalty). */
av_status av_stepper_sample(av_stepper *st, const int32_t *recent, int n_recent, int32_t *next);
/* Feeds id at the session's next position and samples the token after it into *next. lookahead:
 * the caller will feed *next too (the device path queues that step now). */
av_status av_stepper_next(av_stepper *st, int32_t id, const int32_t *recent, int n_recent, int lookahead, int32_t *next);
#endif
