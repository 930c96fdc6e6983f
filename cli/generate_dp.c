/* Data-parallel batched generation: worker w takes prompts [w*n/W, (w+1)*n/W) (contiguous, so the
 * output order is the concatenation), loads its own model on its own thread (and binds its GPU),
 * runs av_generate_batch, and the results are moved into one av_batch_result in prompt order.
 * Each sequence is generated as it would be alone, so the text does not depend on the split. */
#include "generate_dp.h"
#include <pthread.h>
#include "args.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *cmd;
    const av_gen_dp *d;
    int w, i0, i1, threads;
    av_model *m; /* worker 0: the command's model */
    const av_tokenizer *tok;
    const int32_t *const *prompts;
    const int *n_prompt;
    const av_batch_opts *o;
    av_batch_result r;
    int rc;
} gen_worker;

static void *gen_main(void *p) {
    gen_worker *g = p;
    av_model *own = NULL;
    if (g->d->devices && g->w > 0 && av_cuda_set_device(g->d->devices[g->w]) != AV_OK) g->rc = av_cli_fail(g->cmd);
    if (!g->rc && !g->m) {
        av_cli_model_opts mo = *g->d->mo;
        mo.threads = g->threads;
        g->rc = av_cli_load(g->cmd, &mo, &own, NULL);
        g->m = own;
    }
    av_threads_set(g->threads);
    if (!g->rc && g->i1 > g->i0 &&
        av_generate_batch(g->m, g->tok, g->prompts + g->i0, g->n_prompt + g->i0, g->i1 - g->i0, g->o, &g->r) != AV_OK)
        g->rc = av_cli_fail(g->cmd);
    if (own) av_model_free(own);
    av_cuda_thread_release(); /* this worker's stream and handles */
    return NULL;
}

int av_cli_generate_dp(const char *cmd, const av_gen_dp *d, av_model *m, const av_tokenizer *tok, const int32_t *const *prompts,
                       const int *n_prompt, int n, const av_batch_opts *o, av_batch_result *r) {
    int W = d->n < n ? d->n : n, rc = 0;
    gen_worker *g = calloc((size_t)W, sizeof *g);
    pthread_t *th = calloc((size_t)W, sizeof *th);
    if (!g || !th) {
        free(g);
        free(th);
        return av_cli_error(cmd, "out of memory");
    }
    int per = av_threads_get() / W > 1 ? av_threads_get() / W : 1;
    for (int w = 0; w < W; w++)
        g[w] = (gen_worker){.cmd = cmd, .d = d, .w = w, .i0 = (int)((long long)n * w / W), .i1 = (int)((long long)n * (w + 1) / W),
                            .threads = per, .m = w == 0 ? m : NULL, .tok = tok, .prompts = prompts, .n_prompt = n_prompt, .o = o};
    int started = 0;
    for (int w = 1; w < W; w++, started++)
        if (pthread_create(&th[w], NULL, gen_main, &g[w]) != 0) {
            rc = av_cli_error(cmd, "cannot start worker thread %d", w);
            break;
        }
    gen_main(&g[0]);
    for (int w = 1; w <= started; w++) pthread_join(th[w], NULL);
    for (int w = 0; w < W && !rc; w++) rc = g[w].rc;
    memset(r, 0, sizeof *r);
    if (!rc && !(r->seq = calloc((size_t)n, sizeof *r->seq))) rc = av_cli_error(cmd, "out of memory");
    if (!rc) {
        r->n = n;
        r->batch = g[0].r.batch;
        r->path = g[0].r.path;
        for (int w = 0; w < W; w++) { /* move each share's results into place */
            memcpy(r->seq + g[w].i0, g[w].r.seq, (size_t)g[w].r.n * sizeof *r->seq);
            free(g[w].r.seq);
            r->prompt_tokens += g[w].r.prompt_tokens;
            r->gen_tokens += g[w].r.gen_tokens;
            if (g[w].r.prompt_s > r->prompt_s) r->prompt_s = g[w].r.prompt_s;
            if (g[w].r.gen_s > r->gen_s) r->gen_s = g[w].r.gen_s;
            memset(&g[w].r, 0, sizeof g[w].r);
        }
    }
    for (int w = 0; w < W; w++) av_batch_result_free(&g[w].r);
    free(g);
    free(th);
    return rc;
}
