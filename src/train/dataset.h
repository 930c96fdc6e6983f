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

/* How text becomes tokens; supplied by the caller (tokenizer + chat template), so the dataset
 * knows nothing about either. */
typedef struct {
    /* Encodes len bytes; add_special adds BOS as the tokenizer is configured to. ids malloc'd. */
    av_status (*encode)(void *ctx, const char *text, size_t len, int add_special, int32_t **ids, int *n);
    /* Renders a messages array with the chat template into a malloc'd string. NULL = the model has
     * no chat template (chat rows are then an error; prompt/completion rows are concatenated). */
    av_status (*render)(void *ctx, const cJSON *messages, int add_generation_prompt, char **out);
    void *ctx;
    int eos_id;      /* appended to text rows not already ending with it; -1 = none */
    int mask_prompt; /* offsets mark where the completion / last message starts */
} av_ds_opts;

typedef struct {
    int32_t *ids;
    int n;      /* tokens (after truncation) */
    int offset; /* first token index that is a training target (0 = all; >= 1 effectively) */
    int line;   /* line number in the file */
} av_ds_row;

typedef struct {
    char path[4096];
    int n;
    av_ds_row *rows;
    int n_truncated; /* rows cut by av_dataset_truncate */
    int longest;     /* longest row before truncation */
} av_dataset;

/* Loads and tokenizes a whole file. Any malformed line fails with "path:line: problem". */
av_status av_dataset_load(av_dataset *d, const char *path, const av_ds_opts *o);
/* Builds a dataset from texts (as {"text"} rows; for tests and `perplexity`). */
av_status av_dataset_from_texts(av_dataset *d, const char *const *texts, int n, const av_ds_opts *o);
void av_dataset_free(av_dataset *d);
/* Cuts rows longer than max_len tokens; returns how many were cut (also in d->n_truncated). */
int av_dataset_truncate(av_dataset *d, int max_len);
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

typedef struct {
    const av_dataset *d;
    int batch_size;
    int nb;          /* number of batches (the last may be partial) */
    int *sorted;     /* row indexes sorted by length (stable) */
    int *perm;       /* batch order of the current epoch */
    uint64_t seed;
    long long epoch; /* epoch whose permutation is in perm (-1 = none yet) */
} av_batcher;

/* Fails like MLX-LM when the dataset has fewer rows than batch_size. */
av_status av_batcher_init(av_batcher *bt, const av_dataset *d, int batch_size, uint64_t seed);
void av_batcher_free(av_batcher *bt);
/* Batch number k of the stream: k-th in sorted order when shuffle=0 (evaluation); else batch
 * k % nb of epoch k / nb, whose order is a seeded permutation of the batches (so any position of
 * the stream can be reproduced from k alone, which is what resuming needs). */
av_status av_batcher_get(av_batcher *bt, long long k, int shuffle, av_batch *out);
/* Longest row of the dataset (after truncation). */
int av_dataset_max_len(const av_dataset *d);

/* splitmix64, the generator behind every seeded choice in training data. */
uint64_t av_splitmix64(uint64_t *state);

#endif
