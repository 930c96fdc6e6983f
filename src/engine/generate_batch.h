/* Batched generation: many prompts, each generated exactly as av_generate would alone (same ids
 * for the same seed), results in prompt order. The engine picks the path (av_batch_path_choose):
 * greedy sampling decodes groups of batch_size sequences together through av_batch_session (one
 * weight read per step for all of them); other sampling runs the prompts one after another through
 * one av_session and the host sampler, because the batch session's device sampler keys its draws by
 * (seed, batch row, position) where the single path keys them by (seed, position). */
#ifndef AV_GENERATE_BATCH_H
#define AV_GENERATE_BATCH_H
#include "engine/generate.h"

typedef enum { AV_BATCH_TOGETHER, AV_BATCH_SEQUENTIAL } av_batch_path;

typedef struct {
    av_gen_opts gen; /* max_tokens, sampler, stops, interrupt; gen.on_text is not used */
    int batch_size;  /* sequences decoded together (AV_BATCH_TOGETHER) */
    /* newly complete text of sequence `seq` (stop strings never included); non-zero stops it */
    int (*on_text)(void *ud, int seq, const char *text, size_t len);
    void *ud;
} av_batch_opts;

typedef struct {
    av_gen_result *seq;    /* [n], in prompt order (per-sequence timings are not filled) */
    int n;
    int batch;             /* sequences decoded together (1 when sequential) */
    av_batch_path path;
    long long prompt_tokens, gen_tokens;
    double prompt_s, gen_s;
} av_batch_result;

void av_batch_opts_default(av_batch_opts *o);
av_batch_path av_batch_path_choose(const av_model *m, const av_sampler_params *p);
/* prompts[i][0..n_prompt[i]) for i < n. Fails (nothing generated) when the longest prompt plus
 * max_tokens exceeds the model's positions. */
av_status av_generate_batch(av_model *m, const av_tokenizer *tok, const int32_t *const *prompts, const int *n_prompt, int n,
                            const av_batch_opts *o, av_batch_result *r);
void av_batch_result_free(av_batch_result *r);
#endif
