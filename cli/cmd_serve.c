/* anvil serve: an OpenAI-compatible HTTP server (src/server) over one loaded model; runs until
 * SIGTERM or SIGINT, then stops accepting, lets running requests finish briefly, and exits 0. */
#include "args.h"
#include "common.h"
#include "anvil.h"
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GRACE_S 5.0 /* seconds running requests get to finish at shutdown */

typedef struct {
    av_server *srv;
    sigset_t set;
} sig_waiter;

/* Waits for SIGTERM / SIGINT, then shuts the server down (its engine runs on the main thread). */
static void *wait_signal(void *arg) {
    sig_waiter *w = arg;
    int sig = 0;
    sigwait(&w->set, &sig);
    fprintf(stderr, "anvil serve: %s: stopping (running requests get %.0f s to finish)\n", sig == SIGTERM ? "SIGTERM" : "SIGINT", GRACE_S);
    av_server_shutdown(w->srv, GRACE_S);
    return NULL;
}

int av_cmd_serve(int argc, char **argv) {
    const char *cmd = "serve", *host = "127.0.0.1", *api_key = NULL, *tmpl_file = NULL;
    av_cli_model_opts mo = {0};
    av_server_opts so;
    av_server_opts_default(&so);
    int port = 8080, parallel = so.sched.n_slots, ctx = so.sched.ctx, max_batch = so.sched.chunk, max_queue = so.sched.max_queue;
    double timeout = so.timeout_s;
    int cache_mb = (int)(so.sched.cache_bytes >> 20);
    av_opt opts[] = {
        {"model", AV_OPT_STR, &mo.model, "model directory (HF layout) or .gguf file", 0, 0, NULL},
        {"adapter-path", AV_OPT_STR, &mo.adapter, "LoRA adapter (MLX or PEFT) to apply", 0, 0, NULL},
        {"host", AV_OPT_STR, &host, "address to listen on (default 127.0.0.1: loopback only)", 0, 0, NULL},
        {"port", AV_OPT_INT, &port, "port (default 8080; 0 picks a free one)", 0, 65535, NULL},
        {"parallel", AV_OPT_INT, &parallel, "sequences decoded together, each with its own KV cache slot (default 4)", 1, 1024, NULL},
        {"max-batch", AV_OPT_INT, &max_batch, "prompt tokens prefilled per engine step, between decode steps (default 256)", 1, 1 << 20, NULL},
        {"ctx-size", AV_OPT_INT, &ctx, "tokens per slot, prompt + completion (default 4096, at most the model's)", 2, 1 << 24, NULL},
        {"max-queue", AV_OPT_INT, &max_queue, "requests waiting for a slot before 503s (default 64)", 1, 1 << 20, NULL},
        {"cache-mb", AV_OPT_INT, &cache_mb, "MiB for prompt prefixes saved from reused slots, in the model's memory (GPU with --device cuda; default 256; 0: off)", 0, 1 << 24, NULL},
        {"timeout", AV_OPT_FLOAT, &timeout, "seconds a request may take (default 600)", 0.001, 1e7, NULL},
        {"api-key", AV_OPT_STR, &api_key, "require Authorization: Bearer KEY", 0, 0, NULL},
        {"chat-template", AV_OPT_STR, &tmpl_file, "Jinja chat template file to use instead of the model's", 0, 0, NULL},
        {"device", AV_OPT_STR, &mo.device, "cpu or cuda (default: cuda when a GPU is present)", 0, 0, NULL},
        {"dtype", AV_OPT_STR, &mo.dtype, "GPU compute: bf16 (default) or f32 (exact)", 0, 0, NULL},
        {"attention", AV_OPT_STR, &mo.attention, "auto (default), flash or standard", 0, 0, NULL},
        {"threads", AV_OPT_INT, &mo.threads, "CPU threads (default: all cores)", 1, 1024, "t"},
        {NULL, 0, NULL, NULL, 0, 0, NULL},
    };
    int r = av_args_parse(argc, argv, opts, cmd, "OpenAI-compatible HTTP server with continuous batching and a prefix cache.");
    if (r) return r == 1 ? 0 : 2;
    if (api_key && !*api_key) return av_cli_error(cmd, "--api-key must not be empty");
    /* every thread started from here on inherits this mask, the CUDA runtime's and OpenMP's threads
     * made while loading included (one of those took SIGTERM's default action on a GPU): the
     * signals reach only sigwait below */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    char *tmpl = NULL;
    if (tmpl_file && !(tmpl = av_cli_read_file(cmd, tmpl_file, NULL))) return 1;
    av_model *m;
    av_tokenizer *tok;
    if (av_cli_load(cmd, &mo, &m, &tok)) { free(tmpl); return 1; }
    /* the id /v1/models lists: the model path's last component */
    char id[256];
    snprintf(id, sizeof id, "%s", mo.model);
    size_t n = strlen(id);
    while (n > 1 && id[n - 1] == '/') id[--n] = 0;
    const char *base = strrchr(id, '/') ? strrchr(id, '/') + 1 : id;
    so.host = host;
    so.port = port;
    so.api_key = api_key;
    so.model_id = base;
    so.model_path = mo.model;
    so.chat_template = tmpl;
    so.sched.n_slots = parallel;
    so.sched.ctx = ctx;
    so.sched.chunk = max_batch;
    so.sched.max_queue = max_queue;
    so.sched.cache_bytes = (size_t)cache_mb << 20;
    so.timeout_s = timeout;
    av_server *srv;
    int rc = 0;
    if (av_server_start(&srv, m, tok, &so) != AV_OK) {
        rc = av_cli_fail(cmd);
    } else {
        av_sched_opts eff = so.sched;
        int v6 = strchr(host, ':') != NULL;
        fprintf(stderr, "anvil serve: listening on http://%s%s%s:%d (model %s, %d slots, %d-token context%s)\n", v6 ? "[" : "", host, v6 ? "]" : "",
                av_server_port(srv), base,
                eff.n_slots, ctx < av_model_config(m)->max_position_embeddings ? ctx : av_model_config(m)->max_position_embeddings,
                api_key ? ", API key required" : "");
        sig_waiter w = {srv, set};
        pthread_t th;
        if (pthread_create(&th, NULL, wait_signal, &w) != 0) {
            rc = av_cli_error(cmd, "cannot start the signal thread");
            av_server_free(srv);
        } else {
            av_server_run(srv); /* the model runs here until the shutdown has finished */
            pthread_join(th, NULL);
            av_server_free(srv);
            fprintf(stderr, "anvil serve: stopped\n");
        }
    }
    free(tmpl);
    av_model_free(m);
    av_tokenizer_free(tok);
    return rc;
}
