/* Host communicator: ranks are threads of one process sharing host memory. A collective publishes
 * each rank's buffer, then every rank sums its slice of the elements over the ranks in rank order
 * (so the result does not depend on arrival order) into shared scratch, and copies the result back;
 * three generation barriers separate the phases. av_comm_abort wakes every waiting rank with an error. */
#include "dist/comm.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n, arrived, refs, aborted;
    unsigned gen;
    const void **bufs;
    size_t *counts;
    void *scratch;
    size_t scratch_bytes;
} host_shared;

/* Waits until every rank arrived (or the group was aborted). Caller holds no lock. */
static av_status barrier(host_shared *h) {
    pthread_mutex_lock(&h->mu);
    av_status st = AV_OK;
    if (!h->aborted) {
        unsigned g = h->gen;
        if (++h->arrived == h->n) {
            h->arrived = 0;
            h->gen++;
            pthread_cond_broadcast(&h->cv);
        } else {
            while (g == h->gen && !h->aborted) pthread_cond_wait(&h->cv, &h->mu);
        }
    }
    if (h->aborted) st = av_fail(AV_ERR_DEVICE, "host communicator: another worker failed (group aborted)");
    pthread_mutex_unlock(&h->mu);
    return st;
}

static av_status host_allreduce(av_comm *c, void *buf, size_t n, int f64) {
    host_shared *h = c->impl;
    size_t es = f64 ? sizeof(double) : sizeof(float);
    pthread_mutex_lock(&h->mu);
    h->bufs[c->rank] = buf;
    h->counts[c->rank] = n;
    int grow_failed = 0;
    if (h->scratch_bytes < n * es) { /* nobody uses the scratch before the first barrier */
        void *p = realloc(h->scratch, n * es);
        if (p) h->scratch = p, h->scratch_bytes = n * es;
        else grow_failed = 1;
    }
    pthread_mutex_unlock(&h->mu);
    if (grow_failed) {
        av_comm_abort(c);
        return av_fail(AV_ERR_NOMEM, "host communicator: out of memory (%zu elements)", n);
    }
    AV_TRY(barrier(h));
    for (int r = 0; r < h->n; r++)
        if (h->counts[r] != n) {
            av_status st = av_fail(AV_ERR_ARG, "host communicator: rank %d reduces %zu elements, rank %d %zu", c->rank, n, r, h->counts[r]);
            barrier(h);
            return st;
        }
    size_t i0 = n * (size_t)c->rank / (size_t)h->n, i1 = n * (size_t)(c->rank + 1) / (size_t)h->n;
    if (f64) {
        double *s = h->scratch;
        for (size_t i = i0; i < i1; i++) {
            double a = 0;
            for (int r = 0; r < h->n; r++) a += ((const double *)h->bufs[r])[i];
            s[i] = a;
        }
    } else {
        float *s = h->scratch;
        for (size_t i = i0; i < i1; i++) {
            float a = 0;
            for (int r = 0; r < h->n; r++) a += ((const float *)h->bufs[r])[i];
            s[i] = a;
        }
    }
    AV_TRY(barrier(h));
    memcpy(buf, h->scratch, n * es);
    return barrier(h); /* the scratch and the published pointers are free again */
}

static av_status host_sum(av_comm *c, float *buf, size_t n) { return host_allreduce(c, buf, n, 0); }
static av_status host_f64(av_comm *c, double *v, int n) { return host_allreduce(c, v, (size_t)n, 1); }
static av_status host_scale(av_comm *c, float *buf, size_t n, float a) {
    (void)c;
    for (size_t i = 0; i < n; i++) buf[i] *= a;
    return AV_OK;
}

static void host_abort(av_comm *c) {
    host_shared *h = c->impl;
    pthread_mutex_lock(&h->mu);
    h->aborted = 1;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

static void shared_release(host_shared *h) {
    pthread_mutex_lock(&h->mu);
    int last = --h->refs == 0;
    pthread_mutex_unlock(&h->mu);
    if (!last) return;
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
    free(h->bufs);
    free(h->counts);
    free(h->scratch);
    free(h);
}

static void host_free(av_comm *c) {
    shared_release(c->impl);
    free(c);
}

static const av_comm_ops k_host_ops = {"host", host_sum, host_scale, host_f64, host_abort, host_free};

av_status av_comm_host_new(av_comm **ranks, int n) {
    if (n < 1) return av_fail(AV_ERR_ARG, "host communicator: %d workers (need >= 1)", n);
    for (int i = 0; i < n; i++) ranks[i] = NULL;
    host_shared *h = calloc(1, sizeof *h);
    if (!h) return av_fail(AV_ERR_NOMEM, "host communicator: out of memory");
    h->n = n;
    h->bufs = calloc((size_t)n, sizeof *h->bufs);
    h->counts = calloc((size_t)n, sizeof *h->counts);
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cv, NULL);
    int ok = h->bufs && h->counts;
    for (int i = 0; i < n && ok; i++) {
        av_comm *c = calloc(1, sizeof *c);
        if (!c) ok = 0;
        else {
            *c = (av_comm){.ops = &k_host_ops, .rank = i, .size = n, .impl = h};
            ranks[i] = c;
            h->refs++;
        }
    }
    if (!ok) {
        h->refs++; /* our own reference, dropped below */
        for (int i = 0; i < n; i++) {
            if (ranks[i]) host_free(ranks[i]);
            ranks[i] = NULL;
        }
        shared_release(h);
        return av_fail(AV_ERR_NOMEM, "host communicator: out of memory");
    }
    return AV_OK;
}
