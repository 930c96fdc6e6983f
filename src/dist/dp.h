/* Data-parallel pieces of the training loop (train/trainer.c calls them when its options carry a
 * communicator): each rank's rows of a batch, the step's loss/token/stop sums, the gradient sum
 * in the context's one flat gradient buffer, and sharded evaluation. */
#ifndef AV_DIST_DP_H
#define AV_DIST_DP_H
#include "train/dataset.h"

/* Keeps, in place, this rank's contiguous share of b's rows (rank r of N: rows [r*B/N, (r+1)*B/N);
 * batches are length-sorted, so a share holds rows of like length), with T cut to the share's last
 * target (positions after it change no loss). *n_all = targets of the whole batch. */
av_status av_dp_shard_batch(const av_comm *c, av_batch *b, int *n_all);
/* Sums (nll, tokens) over the ranks; *stop becomes 1 on every rank if it was set on any. */
av_status av_dp_reduce_step(av_comm *c, double *nll, int *n_valid, int *stop);
/* Sums the gradients of every rank in place (each rank scaled its loss by 1 / the global batch's
 * token count, so the sum is the one-worker gradient of the whole batch). */
av_status av_dp_reduce_grads(av_comm *c, av_train_ctx *tc);
/* av_evaluate with each batch's rows split over the ranks; every rank gets the global result. */
av_status av_dp_evaluate(av_comm *c, av_train_ctx *tc, av_batcher *bt, int max_batches, double *loss, long long *ntok);

#endif
