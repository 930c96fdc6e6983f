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

/* The stepper (av_stepper_new/_free/_sample/_next) is public: include/anvil.h. */
#endif
