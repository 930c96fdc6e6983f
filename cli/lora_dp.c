/* Data-parallel `anvil lora`. Workers are threads of this one process, not processes: every rank
 * shares the tokenized datasets, the mmapped weights and the command's setup, there is nothing to
 * launch or rendezvous on one host, a failing worker can stop the others (av_comm_abort) and only
 * rank 0 prints and writes; on CUDA each thread binds its own GPU, and NCCL is happy with one rank
 * per thread. Rank 0 is the command's own model; ranks 1.. are replicas copied from it. */
#include "lora_dp.h"
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "args.h"
#include "core/status.h" /* av_fail: a worker's error line becomes the command's */

struct lora_dp_worker {
    lora_dp *d;
    int local;
    pthread_t th;
    av_status st;
    char err[1024];
};

static int fail(const char *cmd, const char *msg) {
    fprintf(stderr, "anvil %s: %s\n", cmd, msg);
    return 1;
}

/* "4" = GPUs 0..3; "0,2,3" = those. */
static int parse_gpus(lora_dp *d, const char *cmd, char *msg, size_t cap) {
    const char *s = d->gpus;
    int n = 0;
    if (!strchr(s, ',')) {
        char *end;
        long k = strtol(s, &end, 10);
        if (*s && !*end && k >= 1 && k <= LORA_DP_MAX) {
            for (int i = 0; i < k; i++) d->devices[i] = i;
            d->n = (int)k;
            return 0;
        }
    }
    for (const char *p = s; *p;) {
        char *end;
        long k = strtol(p, &end, 10);
        if (end == p || k < 0 || k > 4095 || (*end && *end != ',') || n == LORA_DP_MAX) {
            snprintf(msg, cap, "--gpus %s: expected a count N or a list of GPU indexes like 0,2,3", s);
            return fail(cmd, msg);
        }
        for (int i = 0; i < n; i++)
            if (d->devices[i] == k) {
                snprintf(msg, cap, "--gpus %s: GPU %ld is listed twice", s, k);
                return fail(cmd, msg);
            }
        d->devices[n++] = (int)k;
        p = *end ? end + 1 : end;
    }
    if (!n) {
        snprintf(msg, cap, "--gpus %s: expected a count N or a list of GPU indexes like 0,2,3", s);
        return fail(cmd, msg);
    }
    d->n = n;
    d->gpus_listed = 1;
    return 0;
}

int lora_dp_check(lora_dp *d, const char *cmd, const char *device, int batch_size, int dump_grads) {
    char msg[512];
    if (!d->nnodes) d->nnodes = 1;
    d->n = d->workers ? d->workers : 1;
    if (d->workers && d->gpus) return fail(cmd, "--workers (CPU threads) and --gpus (GPUs) cannot be combined");
    if (d->gpus) {
        if (device && !strcmp(device, "cpu"))
            return fail(cmd, "--gpus runs on CUDA GPUs and cannot be mixed with --device cpu (on the CPU use --workers N)");
        if (parse_gpus(d, cmd, msg, sizeof msg)) return 1;
        int have = av_cuda_device_count();
        if (have == 0) {
            snprintf(msg, sizeof msg, "--gpus %s: %s (on the CPU use --workers N)", d->gpus,
                     av_cuda_set_device(0) == AV_ERR_UNSUPPORTED ? "this anvil was built without CUDA" : "no CUDA GPU found on this host");
            return fail(cmd, msg);
        }
        if (!d->gpus_listed && d->n > have) {
            snprintf(msg, sizeof msg, "--gpus %d: only %d GPU%s on this host", d->n, have, have == 1 ? "" : "s");
            return fail(cmd, msg);
        }
        for (int i = 0; i < d->n; i++)
            if (d->devices[i] >= have) {
                snprintf(msg, sizeof msg, "--gpus %s: GPU %d does not exist (this host has GPUs 0..%d)", d->gpus, d->devices[i], have - 1);
                return fail(cmd, msg);
            }
        d->nccl = 1;
    } else if (d->workers > 1) {
        if (device && strcmp(device, "cpu")) return fail(cmd, "--workers is data parallelism on the CPU (--device cpu); on GPUs use --gpus");
        if (!device && av_cuda_device_count() > 0) return fail(cmd, "--workers is data parallelism on the CPU: pass --device cpu (on GPUs use --gpus)");
    }
    if (d->nnodes > 1 || d->node_rank || d->master_addr || d->master_port) {
        if (!d->gpus) return fail(cmd, "--nnodes, --node-rank, --master-addr and --master-port go with --gpus");
        if (d->nnodes > 1 && (!d->master_addr || !d->master_port))
            return fail(cmd, "--nnodes > 1 needs --master-addr and --master-port (host 0's address and a free port)");
        if (d->node_rank >= d->nnodes) {
            snprintf(msg, sizeof msg, "--node-rank %d: must be below --nnodes %d", d->node_rank, d->nnodes);
            return fail(cmd, msg);
        }
    }
    d->world = d->n * d->nnodes;
    d->rank0 = d->node_rank * d->n;
    if (d->world > 1 && dump_grads) return fail(cmd, "--dump-grads writes one worker's gradients: run it without --workers/--gpus");
    if (d->world > batch_size) {
        snprintf(msg, sizeof msg, "--batch-size %d is the global batch: it must be at least the number of workers (%d)", batch_size, d->world);
        return fail(cmd, msg);
    }
    return 0;
}

int lora_dp_rows(const lora_dp *d, int batch_size) {
    int w = d->world > 1 ? d->world : 1;
    return (batch_size + w - 1) / w;
}

av_status lora_dp_bind(lora_dp *d) {
    if (!d->nccl) return AV_OK;
    setenv("NCCL_NVLS_ENABLE", "0", 1); /* NVLink SHARP (multicast) off: see README "Several GPUs" */
    return av_cuda_set_device(d->devices[0]);
}

/* Aborts every local rank's communicator: NCCL does not carry one rank's abort to the others, so a
 * failing worker ends its neighbours' collectives itself (ncclCommAbort from another thread unblocks
 * them). With the host communicator one abort reaches every rank anyway. */
static void abort_all(lora_dp *d) {
    pthread_mutex_lock(&d->mu);
    for (int i = 0; i < d->n; i++)
        if (d->comm[i]) av_comm_abort(d->comm[i]);
    pthread_mutex_unlock(&d->mu);
}

/* ---- one replica ----------------------------------------------------------------------------- */
static av_status replica_run(lora_dp_worker *w) {
    lora_dp *d = w->d;
    const lora_dp_setup *s = &d->setup;
    int r = w->local;
    av_model *m = NULL;
    av_train_ctx *tc = NULL;
    av_trainer *tr = NULL;
    av_batcher bt = {0}, bv = {0};
    av_status st = AV_OK;
    if (d->nccl) {
        av_comm *mine = NULL;
        st = av_comm_nccl_new(&mine, d->id, d->world, d->rank0 + r, d->devices[r]);
        pthread_mutex_lock(&d->mu);
        d->comm[r] = mine;
        pthread_mutex_unlock(&d->mu);
    }
    av_comm *c = d->comm[r];
    av_threads_set(s->threads);
    if (st == AV_OK) st = av_model_load(&m, s->model_dir, s->be);
    if (st == AV_OK && !s->full) st = av_lora_attach(m, &s->spec, s->seed);
    if (st == AV_OK)
        st = s->full ? av_train_ctx_new_full(&tc, m, s->rows, s->max_len - 1, s->grad_checkpoint)
                     : av_train_ctx_new(&tc, m, s->rows, s->max_len - 1, s->grad_checkpoint);
    if (st == AV_OK && s->dropout > 0) st = av_train_set_dropout(tc, s->dropout, s->seed);
    if (st == AV_OK) st = av_batcher_init(&bt, s->dtrain, s->batch_size, s->seed);
    if (st == AV_OK) st = av_batcher_init(&bv, s->dvalid, s->batch_size, 0);
    if (st == AV_OK) {
        av_trainer_opts to = s->to;
        to.on_event = NULL;
        to.comm = c;
        st = av_trainer_new(&tr, m, tc, &to);
    }
    if (st != AV_OK) av_fail_prefix(st, "worker %d (rank %d)", r, d->rank0 + r);
    /* report ready (or failed), then wait until rank 0 is complete (resumed state included); its
     * parameters change only after the first gradient sum, which waits for this rank, so the copy
     * below reads them undisturbed */
    pthread_mutex_lock(&d->mu);
    if (st == AV_OK) d->ready++;
    else d->failed++;
    pthread_cond_broadcast(&d->cv);
    while (!d->go && st == AV_OK) pthread_cond_wait(&d->cv, &d->mu);
    int go = d->go;
    pthread_mutex_unlock(&d->mu);
    if (st == AV_OK && go == 1) {
        st = av_train_copy_params(tc, s->tc0);
        if (st == AV_OK && s->state_path) st = av_trainer_load_state(tr, s->state_path);
        if (st != AV_OK) av_fail_prefix(st, "worker %d (rank %d)", r, d->rank0 + r);
        else st = av_trainer_run(tr, &bt, &bv);
    } else if (st == AV_OK) st = AV_ERR_INTERRUPTED; /* cancelled before the start */
    av_trainer_free(tr);
    if (tc) av_train_ctx_free(tc);
    av_batcher_free(&bt);
    av_batcher_free(&bv);
    if (m) {
        av_lora_detach(m);
        av_model_free(m);
    }
    return st;
}

static void *worker_main(void *p) {
    lora_dp_worker *w = p;
    w->st = replica_run(w);
    if (w->st != AV_OK) {
        snprintf(w->err, sizeof w->err, "%s", av_last_error());
        abort_all(w->d);
    }
    av_cuda_thread_release(); /* this replica's stream and handles */
    return NULL;
}

av_status lora_dp_begin(lora_dp *d, const lora_dp_setup *s, av_comm **comm0) {
    *comm0 = NULL;
    if (d->world <= 1) return AV_OK;
    d->setup = *s;
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    d->w = calloc((size_t)d->n, sizeof *d->w);
    if (!d->w) return av_fail(AV_ERR_NOMEM, "data parallel: out of memory");
    if (d->nccl) { /* the NCCL id: made by global rank 0, handed to the other hosts over TCP */
        if (d->node_rank == 0) {
            AV_TRY(av_comm_nccl_id(d->id));
            if (d->nnodes > 1) AV_TRY(av_rdzv_serve(d->master_addr, d->master_port, d->id, sizeof d->id, d->nnodes - 1, 300000));
        } else {
            AV_TRY(av_rdzv_fetch(d->master_addr, d->master_port, d->id, sizeof d->id, 300000));
        }
    } else {
        AV_TRY(av_comm_host_new(d->comm, d->n));
    }
    for (int i = 1; i < d->n; i++) {
        d->w[i] = (lora_dp_worker){.d = d, .local = i};
        if (pthread_create(&d->w[i].th, NULL, worker_main, &d->w[i]) != 0) {
            lora_dp_end(d);
            return av_fail(AV_ERR_NOMEM, "data parallel: cannot start worker thread %d", i);
        }
        d->started = i;
    }
    if (d->nccl) {
        av_comm *mine = NULL;
        av_status st = av_comm_nccl_new(&mine, d->id, d->world, d->rank0, d->devices[0]);
        pthread_mutex_lock(&d->mu);
        d->comm[0] = mine;
        pthread_mutex_unlock(&d->mu);
        AV_TRY(st);
    }
    av_threads_set(s->threads);
    *comm0 = d->comm[0];
    return AV_OK;
}

static void join_all(lora_dp *d, int go) {
    if (!d->w) return;
    pthread_mutex_lock(&d->mu);
    if (!d->go) d->go = go;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    for (int i = 1; i <= d->started; i++) pthread_join(d->w[i].th, NULL);
    d->started = 0;
}

av_status lora_dp_run(lora_dp *d, av_trainer *tr0, av_batcher *train, av_batcher *valid) {
    /* every replica set up (or failed) before rank 0 starts: a setup failure ends the run before
     * any collective, so no rank is left waiting in one */
    pthread_mutex_lock(&d->mu);
    while (d->ready + d->failed < d->started) pthread_cond_wait(&d->cv, &d->mu);
    int failed = d->failed;
    d->go = failed ? -1 : 1;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    av_status st = failed ? av_fail(AV_ERR_DEVICE, "data parallel: a worker failed to start (group aborted)") : av_trainer_run(tr0, train, valid);
    if (st != AV_OK && st != AV_ERR_INTERRUPTED) abort_all(d);
    join_all(d, 1);
    /* report the worker that failed first-hand, not one that only saw the group aborted */
    int first = -1;
    for (int i = 1; i < d->n; i++)
        if (d->w[i].st != AV_OK && d->w[i].st != AV_ERR_INTERRUPTED && !strstr(d->w[i].err, "group aborted")) {
            first = i;
            break;
        }
    if (first >= 0 && (st == AV_OK || strstr(av_last_error(), "group aborted"))) st = av_fail(d->w[first].st, "%s", d->w[first].err);
    return st;
}

void lora_dp_end(lora_dp *d) {
    if (!d->w) return;
    if (d->go != 1) abort_all(d);
    join_all(d, -1);
    for (int i = 0; i < d->n; i++) {
        av_comm_free(d->comm[i]);
        d->comm[i] = NULL;
    }
    free(d->w);
    d->w = NULL;
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cv);
}
