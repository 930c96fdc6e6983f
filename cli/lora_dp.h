/* Data-parallel `anvil lora`: the flags (--workers on the CPU, --gpus and torchrun's multi-host
 * flags on CUDA), their checks before any work, and the workers that run rank 1.. next to the
 * command's own rank 0 (lora_dp.c). */
#ifndef AV_CLI_LORA_DP_H
#define AV_CLI_LORA_DP_H
#include <pthread.h>
#include "anvil.h"

#define LORA_DP_MAX 64

/* What a replica needs to become equal to rank 0 (filled by cmd_lora.c after rank 0 is set up). */
typedef struct {
    const char *model_dir;
    const av_backend *be;
    av_lora_spec spec;
    int full, rows, max_len, grad_checkpoint, threads;
    float dropout;  /* 0 = none */
    uint64_t seed;
    const av_dataset *dtrain, *dvalid;
    int batch_size;
    av_train_ctx *tc0;
    const char *state_path; /* resume state or NULL */
    av_trainer_opts to;     /* rank 0's options (events and saves stay with rank 0) */
} lora_dp_setup;

typedef struct lora_dp_worker lora_dp_worker;
typedef struct {
    /* flags */
    int workers;
    const char *gpus;
    int nnodes, node_rank, master_port;
    const char *master_addr;
    /* resolved by lora_dp_check */
    int n, nccl, world, rank0; /* local workers, NCCL or host, all ranks, global rank of local worker 0 */
    int devices[LORA_DP_MAX];
    int gpus_listed; /* --gpus gave indexes (else a count) */
    /* running */
    av_comm *comm[LORA_DP_MAX];
    lora_dp_worker *w;
    lora_dp_setup setup;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int go;      /* 0 wait, 1 run, -1 cancelled */
    int ready, failed; /* replicas set up / failed to set up */
    int started; /* threads started */
    uint8_t id[AV_COMM_ID_BYTES];
} lora_dp;

#define LORA_DP_OPTS(d)                                                                                                                  \
    {"workers", AV_OPT_INT, &(d)->workers, "CPU data parallelism: N worker threads with a model copy each (batch split over them)", 1, \
     LORA_DP_MAX, NULL},                                                                                                                 \
    {"gpus", AV_OPT_STR, &(d)->gpus, "data-parallel training on GPUs: a count N (GPUs 0..N-1) or a list 0,2,3", 0, 0, NULL},          \
    {"nnodes", AV_OPT_INT, &(d)->nnodes, "hosts of a multi-host --gpus run (default 1)", 1, 4096, NULL},                             \
    {"node-rank", AV_OPT_INT, &(d)->node_rank, "this host's index, 0..nnodes-1 (0 = master)", 0, 4095, NULL},                        \
    {"master-addr", AV_OPT_STR, &(d)->master_addr, "address of host 0 (multi-host)", 0, 0, NULL},                                     \
    {"master-port", AV_OPT_INT, &(d)->master_port, "TCP port on host 0 for the rendezvous (multi-host)", 1, 65535, NULL}

/* Resolves and checks the flags before any work; prints one line and returns non-zero when bad. */
int lora_dp_check(lora_dp *d, const char *cmd, const char *device, int batch_size, int dump_grads);
/* Rows each worker's training context holds: ceil(batch_size / all ranks). */
int lora_dp_rows(const lora_dp *d, int batch_size);
/* With more than one rank: binds this thread to its GPU (--gpus), before rank 0's model is loaded. */
av_status lora_dp_bind(lora_dp *d);
/* Starts ranks 1.. (each builds its replica, then waits) and makes rank 0's communicator;
 * *comm0 = NULL with one rank. */
av_status lora_dp_begin(lora_dp *d, const lora_dp_setup *s, av_comm **comm0);
/* Runs rank 0's trainer here and the others on their threads; the first failure (a worker's own
 * error line rather than "group aborted") is returned. */
av_status lora_dp_run(lora_dp *d, av_trainer *tr0, av_batcher *train, av_batcher *valid);
/* Cancels workers that did not run, joins them, frees everything (safe to call always). */
void lora_dp_end(lora_dp *d);

#endif
