/* Single-sequence generation: prefill the prompt (reusing whatever prefix is already cached), then
 * decode token by token on the path engine/decode.c picks, stream complete UTF-8 text through a
 * callback, and stop on EOS, a stop string (never streamed; engine/stops.c), max tokens, or an
 * interrupt flag. */
#ifndef AV_GENERATE_H
#define AV_GENERATE_H
#include <signal.h>
#include "engine/sampler.h"
#include "engine/stops.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

#define AV_MAX_STOPS 16
typedef struct {
    int max_tokens;
    av_sampler_params sampler;
    const char *stops[AV_MAX_STOPS];
    int n_stops;
    /* called with each newly complete piece of text; return non-zero to stop */
    av_text_fn on_text;
    void *ud;
    volatile sig_atomic_t *interrupt; /* set non-zero (e.g. from SIGINT) to stop this reply */
} av_gen_opts;

typedef struct {
    int32_t *ids;      /* generated ids (malloc'd), stop/EOS token excluded */
    int n_ids;
    char *text;        /* generated text (malloc'd), stop string excluded */
    int n_prompt;      /* prompt tokens */
    int n_prompt_processed; /* tokens actually run (prompt minus the reused cached prefix) */
    double prompt_s, gen_s;
    double prompt_tps, gen_tps;
    const char *finish; /* "stop", "length", "interrupted" */
} av_gen_result;

void av_gen_opts_default(av_gen_opts *o);
/* KV-cache size for one prompt of n_prompt tokens: max_kv when given (> 0), else prompt + max_tokens
 * capped at the model's positions (never below n_prompt + 1). */
int av_generate_context(const av_model *m, int n_prompt, int max_tokens, int max_kv);
/* Prompt ids: the full conversation so far. Cached positions of the session that match the
 * prompt's prefix are reused (only the rest is processed); the rest is truncated first. */
av_status av_generate(av_session *s, const av_tokenizer *tok, const int32_t *prompt, int n_prompt, const av_gen_opts *o,
                      av_gen_result *r);
void av_gen_result_free(av_gen_result *r);
/* Monotonic seconds. */
double av_now(void);

#endif
