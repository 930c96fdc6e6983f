/* End-of-sequence and stop-string handling shared by single and batched generation: one
 * sequence's generated ids become text (stream decoder), complete UTF-8 pieces are handed to a
 * callback as soon as no stop string can still begin in them, and a stop string cuts the text
 * (it is never emitted). */
#ifndef AV_STOPS_H
#define AV_STOPS_H
#include "model/model.h"

typedef struct {
    av_stream_decoder *sd;     /* NULL without a tokenizer (no text) */
    char *buf;
    size_t len, cap, emitted;
    const char *const *stops;
    int n_stops;
    size_t max_stop;
    av_text_fn on_text;
    void *ud;
    int cut;                   /* a stop string was found (text ends before it) */
} av_stops;

/* 1 when id ends the sequence: one of the model's eos_token_ids or the tokenizer's EOS. */
int av_is_eos(const av_model *m, const av_tokenizer *tok, int32_t id);
/* tok may be NULL (ids only, no text and no stop strings). stops: n_stops strings (kept by pointer). */
av_status av_stops_init(av_stops *t, const av_tokenizer *tok, const char *const *stops, int n_stops, av_text_fn on_text, void *ud);
void av_stops_free(av_stops *t);
/* Adds a generated (non-EOS) token. *done: 0 go on, 1 a stop string cut the text, 2 the callback
 * asked to stop. */
av_status av_stops_push(av_stops *t, int32_t id, int *done);
/* End of the sequence: flushes bytes the decoder still holds (flush != 0 and no stop string cut
 * the text) and emits the rest. */
av_status av_stops_end(av_stops *t, int flush);
/* The whole generated text (malloc'd, stop string excluded); the caller frees it. */
char *av_stops_take_text(av_stops *t);
#endif
