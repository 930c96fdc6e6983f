/* Data-parallel training on the CPU (host communicator, worker threads): with the same global batch,
 * 2 and 3 workers give the one-worker run's per-iteration train losses, validation losses and final
 * LoRA weights (token-weighted: sum of the shards' NLL / all tokens), for SGD and Adam, and with
 * gradient accumulation; a worker that fails stops the others with its own error. With 2 GPUs the
 * same comparison runs through NCCL on the exact-f32 CUDA backend (else a visible skip). */
#include "test.h"
#include "anvil.h"
#include "core/status.h"
#include "backend/backend.h"
#include "model/model.h"
#include "train/train_model.h"
#include <pthread.h>

#define MAXW 4
#define ITERS 6
static char g_dir[512];
static int g_gpu; /* 0: host communicator on the CPU; 1: NCCL, worker i on GPU i, f32 CUDA backend */
static char g_model[4200]; /* the fixture model's path, resolved once before any worker (test_fixture is not thread-safe) */
static uint8_t g_id[AV_COMM_ID_BYTES];

/* Byte "tokenizer" (BOS 1, EOS 2, byte + 3). */
static av_status enc(void *ctx, const char *s, size_t n, int add_special, int32_t **ids, int *cnt) {
    (void)ctx;
    *ids = malloc((n + 1) * sizeof(int32_t));
    int k = 0;
    if (add_special) (*ids)[k++] = 1;
    for (size_t i = 0; i < n; i++) (*ids)[k++] = (unsigned char)s[i] + 3;
    *cnt = k;
    return AV_OK;
}

typedef struct {
    double train[ITERS + 1], val[ITERS + 1];
} losses;

typedef struct {
    int rank, W, fail_at_load;
    av_comm *comm;
    const av_dataset *dt, *dv;
    int batch, ga;
    av_optim_kind optim;
    losses *out;     /* rank 0 only */
    float *params;   /* rank 0: final trainable values */
    size_t nparams;
    av_status st;
    char err[512];
} worker;

static void on_event(void *ctx, const av_train_event *e) {
    losses *l = ctx;
    if (e->kind == AV_TEV_REPORT && e->iter <= ITERS) l->train[e->iter] = e->train_loss;
    if (e->kind == AV_TEV_EVAL && e->iter <= ITERS) l->val[e->iter] = e->val_loss;
}
static av_status save(void *ctx, const char *tag, char *path, size_t cap) {
    (void)ctx;
    snprintf(path, cap, "%s/%s.safetensors", g_dir, tag ? tag : "adapters");
    return AV_OK; /* the state file beside it is written by the trainer */
}

static void *run_worker(void *p) {
    worker *w = p;
    av_threads_set(1); /* one core per worker (the box has 2) */
    av_model *m = NULL;
    av_train_ctx *tc = NULL;
    av_trainer *tr = NULL;
    av_batcher bt = {0}, bv = {0};
    av_lora_spec spec;
    av_lora_spec_default(&spec);
    spec.num_layers = -1;
    int W = w->W, rows = (w->batch + W - 1) / W;
    av_status st = g_gpu ? av_comm_nccl_new(&w->comm, g_id, W, w->rank, w->rank) : AV_OK;
    if (st == AV_OK)
        st = w->fail_at_load ? av_fail(AV_ERR_IO, "worker %d: cannot load the model (test)", w->rank)
                             : av_model_load(&m, g_model, g_gpu ? av_backend_cuda_dtype(AV_F32) : av_backend_cpu());
    if (st == AV_OK) st = av_lora_attach(m, &spec, 5); /* same seed on every rank: the same start */
    if (st == AV_OK) st = av_train_ctx_new(&tc, m, rows, 64, 0);
    if (st == AV_OK) st = av_batcher_init(&bt, w->dt, w->batch, 9);
    if (st == AV_OK) st = av_batcher_init(&bv, w->dv, w->batch, 0);
    if (st == AV_OK) {
        av_trainer_opts o;
        av_trainer_opts_default(&o);
        o.iters = ITERS;
        o.grad_accum = w->ga;
        o.steps_per_report = 1;
        o.steps_per_eval = 3;
        o.val_batches = -1;
        o.save_every = 1000;
        o.seed = 9;
        av_lr_constant(&o.lr, w->optim == AV_OPTIM_SGD ? 0.5 : 1e-2);
        av_optim_defaults(&o.optim, w->optim);
        o.save = save;
        o.on_event = w->rank == 0 ? on_event : NULL;
        o.ctx = w->out;
        o.comm = w->comm;
        st = av_trainer_new(&tr, m, tc, &o);
    }
    if (st == AV_OK) st = av_trainer_run(tr, &bt, &bv);
    if (st != AV_OK) {
        snprintf(w->err, sizeof w->err, "%s", av_last_error());
        av_comm_abort(w->comm);
    } else if (w->rank == 0) {
        av_param *ps = av_train_params(tc);
        size_t n = 0;
        for (int i = 0; i < av_train_nparams(tc); i++) n += ps[i].n;
        w->params = malloc(n * sizeof(float));
        w->nparams = n;
        for (int i = 0, off = 0; i < av_train_nparams(tc); off += (int)ps[i].n, i++) m->be->download(w->params + off, ps[i].data, ps[i].n * sizeof(float));
    }
    w->st = st;
    av_trainer_free(tr);
    if (tc) av_train_ctx_free(tc);
    av_batcher_free(&bt);
    av_batcher_free(&bv);
    if (m) {
        av_lora_detach(m);
        av_model_free(m);
    }
    av_cuda_thread_release();
    return NULL;
}

/* Runs W workers; returns rank 0's final parameters (malloc'd) and fills l. fail: rank that fails (-1 none). */
static float *run(int W, const av_dataset *dt, const av_dataset *dv, int batch, int ga, av_optim_kind k, losses *l, size_t *n,
                  int fail, av_status *st0, char *err, size_t cap) {
    av_comm *c[MAXW];
    worker w[MAXW];
    pthread_t th[MAXW];
    memset(l, 0, sizeof *l);
    if (g_gpu ? av_comm_nccl_id(g_id) != AV_OK : av_comm_host_new(c, W) != AV_OK) return NULL;
    for (int i = 0; i < W; i++) {
        w[i] = (worker){.rank = i, .W = W, .comm = g_gpu ? NULL : c[i], .fail_at_load = i == fail, .dt = dt, .dv = dv, .batch = batch, .ga = ga, .optim = k, .out = l};
        pthread_create(&th[i], NULL, run_worker, &w[i]);
    }
    for (int i = 0; i < W; i++) pthread_join(th[i], NULL);
    *st0 = AV_OK;
    err[0] = 0;
    for (int i = 0; i < W; i++) {
        if (w[i].st != AV_OK && !err[0] && !strstr(w[i].err, "aborted")) snprintf(err, cap, "%s", w[i].err), *st0 = w[i].st;
        if (w[i].st != AV_OK && *st0 == AV_OK) *st0 = w[i].st;
        av_comm_free(w[i].comm);
    }
    *n = w[0].nparams;
    return w[0].params;
}

static float *p1; /* one-worker weights of the cached run in compare */
static void compare(const char *what, int W, int ga, av_optim_kind k, const av_dataset *dt, const av_dataset *dv, double tol_loss,
                    double tol_w) {
    static losses l1; /* the one-worker run, kept for the next case with the same settings */
    static size_t n1;
    static int k1 = -1, ga1, gpu1;
    static av_status s1;
    static char e1[512];
    losses lw;
    size_t nw = 0;
    av_status sw;
    char ew[512];
    if ((int)k != k1 || ga != ga1 || g_gpu != gpu1) {
        free(p1);
        p1 = run(1, dt, dv, 4, ga, k, &l1, &n1, -1, &s1, e1, sizeof e1);
        k1 = (int)k, ga1 = ga, gpu1 = g_gpu;
    }
    float *pw = run(W, dt, dv, 4, ga, k, &lw, &nw, -1, &sw, ew, sizeof ew);
    CHECK(s1 == AV_OK && sw == AV_OK, "%s: runs failed: %s / %s", what, e1, ew);
    if (p1 && pw && n1 == nw) {
        double worst = 0;
        for (int i = 1; i <= ITERS; i++) {
            double r = fabs(lw.train[i] - l1.train[i]) / fabs(l1.train[i]);
            worst = r > worst ? r : worst;
            CHECK(r <= tol_loss, "%s: iter %d train loss %.9f (1 worker) vs %.9f (%d workers)", what, i, l1.train[i], lw.train[i], W);
        }
        for (int i = 0; i <= ITERS; i += 3) {
            double r = fabs(lw.val[i] - l1.val[i]) / fabs(l1.val[i]);
            worst = r > worst ? r : worst;
            CHECK(r <= tol_loss, "%s: iter %d val loss %.9f vs %.9f", what, i, l1.val[i], lw.val[i]);
        }
        double rel = test_rel_l2(pw, p1, n1);
        CHECK(rel <= tol_w, "%s: final LoRA weights rel L2 %.3g", what, rel);
        printf("%-34s 1 vs %d workers: iter %d train loss %.9f vs %.9f, worst loss rel diff %.2e, weights rel L2 %.2e\n", what, W, ITERS,
               l1.train[ITERS], lw.train[ITERS], worst, rel);
    } else CHECK(0, "%s: no parameters (%zu vs %zu)", what, n1, nw);
    free(pw);
}

int main(void) {
    snprintf(g_model, sizeof g_model, "%s", test_fixture("tiny-llama"));
    snprintf(g_dir, sizeof g_dir, "%s", "/tmp/anvil-dp-XXXXXX");
    if (!mkdtemp(g_dir)) return 1;
    /* rows of many lengths (3..60 tokens): batches hold rows of unlike length, shards differ in T */
    const char *words = "the quick brown fox jumps over the lazy dog while five boxing wizards jump quickly and sphinx of black quartz";
    char *texts[24];
    for (int i = 0; i < 24; i++) {
        int len = 2 + (i * 37) % 58;
        texts[i] = malloc((size_t)len + 1);
        for (int j = 0; j < len; j++) texts[i][j] = words[(i * 7 + j) % (int)strlen(words)];
        texts[i][len] = 0;
    }
    av_ds_opts o = {.encode = enc, .eos_id = 2};
    av_dataset dt = {0}, dv = {0};
    CHECK_OK(av_dataset_from_texts(&dt, (const char *const *)texts, 16, &o));
    CHECK_OK(av_dataset_from_texts(&dv, (const char *const *)texts + 16, 8, &o));
    compare("sgd, batch 4", 2, 1, AV_OPTIM_SGD, &dt, &dv, 1e-5, 1e-5);
    compare("sgd, batch 4, uneven shards", 3, 1, AV_OPTIM_SGD, &dt, &dv, 1e-5, 1e-5);
    compare("sgd, batch 4, grad accumulation 2", 2, 2, AV_OPTIM_SGD, &dt, &dv, 1e-5, 1e-5);
    compare("adam, batch 4", 2, 1, AV_OPTIM_ADAM, &dt, &dv, 1e-5, 1e-3);

    /* a worker that cannot load: every rank stops; its own error is the one reported */
    losses l;
    size_t n;
    av_status st;
    char err[512];
    int ngpu = av_cuda_device_count();
    if (ngpu >= 1) {
        setenv("NCCL_NVLS_ENABLE", "0", 1);
        g_gpu = 1;
        if (ngpu >= 2) {
            compare("gpu f32 (nccl), sgd, batch 4", 2, 1, AV_OPTIM_SGD, &dt, &dv, 1e-5, 1e-5);
            compare("gpu f32 (nccl), adam, batch 4", 2, 1, AV_OPTIM_ADAM, &dt, &dv, 1e-5, 1e-3);
        } else { /* the multi-GPU path on one GPU: an NCCL communicator of one, run twice alike */
            compare("gpu f32 (nccl, a communicator of one), adam, batch 4", 1, 1, AV_OPTIM_ADAM, &dt, &dv, 1e-5, 1e-5);
        }
        g_gpu = 0;
    }
    if (ngpu < 2) SKIP("data parallelism over 2+ GPUs through NCCL: needs 2 GPUs (the CPU cases above ran)");
    free(p1);
    float *p = run(2, &dt, &dv, 4, 1, AV_OPTIM_SGD, &l, &n, 1, &st, err, sizeof err);
    CHECK(st != AV_OK && strstr(err, "worker 1: cannot load"), "failing worker: %s", err);
    free(p);
    for (int i = 0; i < 24; i++) free(texts[i]);
    av_dataset_free(&dt);
    av_dataset_free(&dv);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (system(cmd)) return 1;
    return TEST_SUMMARY();
}
