/* Data-parallel training steps: batch sharding by rank, the per-step sums of loss, token count and
 * stop flag, the gradient all-reduce over the training context's flat gradient arena, and sharded
 * evaluation (token-weighted: sum of NLL over all ranks / all tokens, as with one worker). */
#include "dist/dp.h"
#include "dist/comm.h"
#include "train/train_ctx.h"
#include "train/train_model.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

av_status av_dp_shard_batch(const av_comm *c, av_batch *b, int *n_all) {
    *n_all = b->n_targets;
    int N = av_comm_size(c), r = av_comm_rank(c);
    if (N <= 1) return AV_OK;
    int r0 = (int)((long long)b->B * r / N), r1 = (int)((long long)b->B * (r + 1) / N);
    int T = b->T, Tn = 0, nt = 0;
    for (int i = r0; i < r1; i++) {
        const int32_t *tg = b->targets + (size_t)i * T;
        for (int t = T - 1; t >= 0; t--)
            if (tg[t] >= 0) {
                if (t + 1 > Tn) Tn = t + 1;
                break;
            }
        for (int t = 0; t < T; t++) nt += tg[t] >= 0;
    }
    /* rows move to lower addresses (i*Tn <= (r0+i)*T), so memmove row by row in order is safe */
    for (int i = 0; i < r1 - r0 && Tn > 0; i++) {
        memmove(b->ids + (size_t)i * Tn, b->ids + (size_t)(r0 + i) * T, (size_t)Tn * sizeof(int32_t));
        memmove(b->targets + (size_t)i * Tn, b->targets + (size_t)(r0 + i) * T, (size_t)Tn * sizeof(int32_t));
    }
    b->B = Tn > 0 ? r1 - r0 : 0;
    b->T = Tn;
    b->n_targets = nt;
    return AV_OK;
}

av_status av_dp_reduce_step(av_comm *c, double *nll, int *n_valid, int *stop) {
    double v[3] = {*nll, (double)*n_valid, *stop ? 1.0 : 0.0};
    AV_TRY(av_comm_allreduce_host_f64(c, v, 3));
    *nll = v[0];
    *n_valid = (int)llround(v[1]);
    *stop = v[2] > 0;
    return AV_OK;
}

av_status av_dp_reduce_grads(av_comm *c, av_train_ctx *tc) {
    tc->m->be->sync(); /* the backward's writes are in the arena before a host communicator reads it */
    return av_comm_allreduce_sum(c, tc->grad_arena, tc->grad_floats);
}

av_status av_dp_evaluate(av_comm *c, av_train_ctx *tc, av_batcher *bt, int max_batches, double *loss, long long *ntok) {
    av_batch b = {0};
    double v[2] = {0, 0};
    int nb = max_batches < 0 || max_batches > bt->nb ? bt->nb : max_batches;
    av_status st = AV_OK;
    for (int k = 0; k < nb && st == AV_OK; k++) {
        int n_all = 0;
        st = av_batcher_get(bt, k, 0, &b);
        if (st == AV_OK) st = av_dp_shard_batch(c, &b, &n_all);
        if (st != AV_OK || b.n_targets == 0) continue;
        double nll = 0;
        int nv = 0;
        st = av_train_step(tc, b.ids, b.targets, b.B, b.T, 0.0f, 0, &nll, &nv);
        v[0] += nll;
        v[1] += nv;
    }
    av_batch_free(&b);
    if (st != AV_OK) {
        av_comm_abort(c);
        return st;
    }
    AV_TRY(av_comm_allreduce_host_f64(c, v, 2));
    *loss = v[1] > 0 ? v[0] / v[1] : NAN;
    if (ntok) *ntok = llround(v[1]);
    return AV_OK;
}

av_status av_train_copy_params(av_train_ctx *dst, av_train_ctx *src) {
    if (dst->grad_floats != src->grad_floats || av_train_nparams(dst) != av_train_nparams(src))
        return av_fail(AV_ERR_SHAPE, "data parallel: replica has %zu trainable values, rank 0 %zu", dst->grad_floats, src->grad_floats);
    av_param *d = av_train_params(dst), *s = av_train_params(src);
    size_t most = 0;
    for (int i = 0; i < av_train_nparams(src); i++) most = s[i].n > most ? s[i].n : most;
    float *host = malloc(most * sizeof(float) + 1);
    if (!host) return av_fail(AV_ERR_NOMEM, "data parallel: out of memory (parameter copy)");
    for (int i = 0; i < av_train_nparams(src); i++) {
        src->m->be->download(host, s[i].data, s[i].n * sizeof(float));
        dst->m->be->upload(d[i].data, host, d[i].n * sizeof(float));
    }
    free(host);
    return AV_OK;
}
