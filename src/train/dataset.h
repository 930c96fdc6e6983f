/* MLX-LM style training data: a JSONL file whose lines are {"text"}, {"prompt","completion"} or
 * {"messages":[{"role","content"},...]} becomes token rows with a prompt offset (for
 * --mask-prompt); rows are grouped into length-sorted batches whose order is shuffled per epoch
 * with a seed, and each batch becomes [B, T] input ids + next-token targets (-1 = ignored). */
#ifndef AV_DATASET_H
#define AV_DATASET_H
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include "core/status.h"
#include "anvil.h"

struct av_ds_row {
    int32_t *ids;
    int n;      /* tokens (after truncation) */
    int offset; /* first token index that is a training target (0 = all; >= 1 effectively) */
    int line;   /* line number in the file */
};

/* av_ds_opts, av_dataset, av_batcher and their functions: include/anvil.h */
/* Number of target tokens of row i (positions offset..n-1, at least 1). */
int av_ds_row_targets(const av_ds_row *r);

/* ---- batching -------------------------------------------------------------------------------- */
typedef struct {
    int B, T;          /* rows, positions (= longest row of the batch - 1) */
    int32_t *ids;      /* [B, T] inputs; padding is 0 */
    int32_t *targets;  /* [B, T] next token or -1 (padding, masked prompt) */
    int n_targets;     /* targets != -1 */
    int cap;           /* allocated B*T */
} av_batch;
void av_batch_free(av_batch *b);

/* Batch number k of the stream: k-th in sorted order when shuffle=0 (evaluation); else batch
 * k % nb of epoch k / nb, whose order is a seeded permutation of the batches (so any position of
 * the stream can be reproduced from k alone, which is what resuming needs). */
av_status av_batcher_get(av_batcher *bt, long long k, int shuffle, av_batch *out);

/* splitmix64, the generator behind every seeded choice in training data. */
uint64_t av_splitmix64(uint64_t *state);

#endif
