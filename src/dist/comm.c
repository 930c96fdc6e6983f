/* av_comm's public functions: argument checks, then the implementation's collective; the mean is
 * the sum scaled by 1/size. */
#include "dist/comm.h"
#include <stdlib.h>

int av_comm_rank(const av_comm *c) { return c ? c->rank : 0; }
int av_comm_size(const av_comm *c) { return c ? c->size : 1; }

av_status av_comm_allreduce_sum(av_comm *c, float *buf, size_t n) {
    if (!c) return av_fail(AV_ERR_ARG, "allreduce: no communicator");
    if (!n) return AV_OK;
    return c->ops->allreduce_sum(c, buf, n);
}

av_status av_comm_allreduce_mean(av_comm *c, float *buf, size_t n) {
    AV_TRY(av_comm_allreduce_sum(c, buf, n));
    return c->size > 1 && n ? c->ops->scale(c, buf, n, 1.0f / (float)c->size) : AV_OK;
}

av_status av_comm_allreduce_host_f64(av_comm *c, double *v, int n) {
    if (!c) return av_fail(AV_ERR_ARG, "allreduce: no communicator");
    if (n <= 0) return AV_OK;
    return c->ops->allreduce_host_f64(c, v, n);
}

void av_comm_abort(av_comm *c) {
    if (c) c->ops->abort(c);
}

void av_comm_free(av_comm *c) {
    if (c) c->ops->free(c);
}
