/* Token sampling from logits as MLX-LM does: repetition penalty over recent tokens, then greedy
 * (temp 0) or temperature sampling restricted by top-k, top-p (nucleus) and min-p; seeded. */
#ifndef AV_SAMPLER_H
#define AV_SAMPLER_H
#include <stdint.h>

typedef struct {
    float temp;               /* 0 = greedy */
    float top_p;              /* 1 = off */
    int top_k;                /* 0 = off */
    float min_p;              /* 0 = off */
    float repetition_penalty; /* 1 = off */
    int repetition_context;   /* last N tokens penalised (MLX-LM default 20) */
    uint64_t seed;
} av_sampler_params;

typedef struct {
    av_sampler_params p;
    uint64_t state;
    int *idx;    /* scratch [V] */
    float *prob; /* scratch [V] */
    int V;
} av_sampler;

void av_sampler_params_default(av_sampler_params *p);
int av_sampler_init(av_sampler *s, const av_sampler_params *p, int vocab); /* 0 ok, -1 no memory */
void av_sampler_free(av_sampler *s);
/* Picks the next token; `logits` may be modified. recent = previous tokens (for the penalty). */
int av_sampler_sample(av_sampler *s, float *logits, const int32_t *recent, int n_recent);
#endif
