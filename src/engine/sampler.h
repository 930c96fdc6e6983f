/* The one host sampler (MLX-LM's options): repetition penalty over recent tokens, then greedy
 * (temp 0) or a temperature draw restricted by top-p, top-k and min-p. The draw is keyed by
 * (seed, position) with the counter-based hash of ops/sample.h, as the device sampler's is. */
#ifndef AV_SAMPLER_H
#define AV_SAMPLER_H
#include <stdint.h>
#include "anvil.h"

/* av_sampler_params and av_sampler_params_default: include/anvil.h */
typedef struct {
    av_sampler_params p;
    float *w; /* scratch [V] (top-k selection) */
    int V;
} av_sampler;

/* 1 when p asks for nothing but temperature and top-p: then the backend's device sampler (the
 * `sample` op, ops/sample.c's rule) draws the same token for the same (seed, position). */
int av_sampler_device_ok(const av_sampler_params *p);
int av_sampler_init(av_sampler *s, const av_sampler_params *p, int vocab); /* 0 ok, -1 no memory */
void av_sampler_free(av_sampler *s);
/* Picks the token that follows position `pos` (the position whose logits these are); `logits` may
 * be modified. recent = previous tokens (for the penalty). Same (seed, pos) -> same draw. */
int av_sampler_sample(av_sampler *s, float *logits, const int32_t *recent, int n_recent, int pos);
#endif
