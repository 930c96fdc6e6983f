/* The communicator handle behind av_comm (include/anvil.h): rank, size and one function per
 * collective, filled by comm_host.c (threads of one process) or comm_nccl.c (GPUs through NCCL). */
#ifndef AV_DIST_COMM_H
#define AV_DIST_COMM_H
#include <stddef.h>
#include "core/status.h"

typedef struct av_comm_ops {
    const char *name;
    av_status (*allreduce_sum)(av_comm *c, float *buf, size_t n);
    av_status (*scale)(av_comm *c, float *buf, size_t n, float a); /* buf *= a (backend memory) */
    av_status (*allreduce_host_f64)(av_comm *c, double *v, int n);
    void (*abort)(av_comm *c);
    void (*free)(av_comm *c);
} av_comm_ops;

struct av_comm {
    const av_comm_ops *ops;
    int rank, size;
    void *impl;
};

#endif
