/* av_generate_batch: groups of batch_size prompts prefilled one by one and decoded together
 * through av_batch_session (each sequence stopping on EOS, a stop string or max_tokens on its
 * own), or one prompt after another through av_generate on one session. */
#include "engine/sampler.h"
#include "engine/stops.h"
#include "model/llama.h"
#include "model/batch.h"
#include <stdlib.h>
#include <string.h>

void av_batch_opts_default(av_batch_opts *o) {
    memset(o, 0, sizeof *o);
    av_gen_opts_default(&o->gen);
    o->batch_size = 8;
}

av_batch_path av_batch_path_choose(const av_model *m, const av_sampler_params *p) {
    (void)m; /* every backend runs av_batch_session (eagerly where it cannot capture graphs) */
    return av_sampler_device_ok(p) ? AV_BATCH_TOGETHER : AV_BATCH_SEQUENTIAL;
}

void av_batch_result_free(av_batch_result *r) {
    for (int i = 0; r->seq && i < r->n; i++) av_gen_result_free(&r->seq[i]);
    free(r->seq);
    memset(r, 0, sizeof *r);
}

typedef struct {
    const av_batch_opts *o;
    int seq;
} seq_cb;

static int seq_text(void *ud, const char *text, size_t len) {
    seq_cb *c = ud;
    return c->o->on_text(c->o->ud, c->seq, text, len);
}

static av_status run_sequential(av_model *m, const av_tokenizer *tok, const int32_t *const *prompts, const int *n_prompt, int n,
                                int max_seq, const av_batch_opts *o, av_batch_result *r) {
    av_session *s;
    AV_TRY(av_session_new(&s, m, max_seq, 512));
    av_status st = AV_OK;
    for (int i = 0; i < n && st == AV_OK; i++) {
        seq_cb cb = {o, i};
        av_gen_opts go = o->gen;
        go.on_text = o->on_text ? seq_text : NULL;
        go.ud = &cb;
        av_session_truncate(s, 0); /* each prompt from scratch, as a run of its own */
        st = av_generate(s, tok, prompts[i], n_prompt[i], &go, &r->seq[i]);
        r->prompt_tokens += n_prompt[i];
        r->gen_tokens += r->seq[i].n_ids;
        r->prompt_s += r->seq[i].prompt_s;
        r->gen_s += r->seq[i].gen_s;
    }
    av_session_free(s);
    return st;
}

typedef struct {
    av_stops text;
    seq_cb cb;
    int done; /* 0 running, else finished */
} seq_state;

/* Adds sequence i's token; returns 1 when the sequence is finished (and sets its finish reason). */
static av_status push(const av_model *m, const av_tokenizer *tok, const av_batch_opts *o, seq_state *q, av_gen_result *g,
                      int32_t id, int *finished) {
    *finished = 1;
    if (av_is_eos(m, tok, id)) { g->finish = "stop"; return AV_OK; }
    g->ids[g->n_ids++] = id;
    int done;
    AV_TRY(av_stops_push(&q->text, id, &done));
    if (done == 1) { g->finish = "stop"; return AV_OK; }
    if (done == 2 || (o->gen.interrupt && *o->gen.interrupt)) { g->finish = "interrupted"; return AV_OK; }
    *finished = g->n_ids >= o->gen.max_tokens;
    return AV_OK;
}

static av_status run_together(av_model *m, const av_tokenizer *tok, const int32_t *const *prompts, const int *n_prompt, int n,
                              int max_seq, const av_batch_opts *o, av_batch_result *r) {
    int N = r->batch, max_new = o->gen.max_tokens;
    av_batch_session *b;
    AV_TRY(av_batch_session_new(&b, m, N, max_seq, 0));
    /* temperature + top-p only (av_sampler_device_ok): the device sampler draws what the host's would */
    const av_sampler_params *smp = &o->gen.sampler;
    av_batch_sampling sp = {smp->temp, smp->top_p, smp->seed};
    int32_t *tok_out = calloc((size_t)N, sizeof(int32_t));
    seq_state *q = calloc((size_t)N, sizeof *q);
    av_status st = tok_out && q ? AV_OK : av_fail(AV_ERR_NOMEM, "out of memory");
    for (int g0 = 0; st == AV_OK && g0 < n; g0 += N) {
        int ng = n - g0 < N ? n - g0 : N, running = 0;
        double t0 = av_now();
        for (int i = 0; i < N && st == AV_OK; i++) {
            int k = g0 + (i < ng ? i : 0); /* spare rows run any prompt and finish at once */
            if ((st = av_batch_session_prefill(b, i, prompts[k], n_prompt[k], &sp, &tok_out[i])) != AV_OK) break;
            if (i >= ng) { av_batch_session_finish(b, i); continue; }
            av_gen_result *g = &r->seq[k];
            g->finish = "length";
            r->prompt_tokens += n_prompt[k];
            q[i].cb = (seq_cb){o, k};
            if ((st = av_stops_init(&q[i].text, tok, o->gen.stops, o->gen.n_stops, o->on_text ? seq_text : NULL, &q[i].cb)) != AV_OK)
                break;
            int fin = 1;
            if (max_new > 0 && (st = push(m, tok, o, &q[i], g, tok_out[i], &fin)) != AV_OK) break;
            q[i].done = fin;
            if (fin) av_batch_session_finish(b, i);
            else running++;
        }
        double t1 = av_now();
        r->prompt_s += t1 - t0;
        while (st == AV_OK && running > 0) {
            int more = 0; /* a step after this one is sure to be wanted unless a stop comes: queue it */
            for (int i = 0; i < ng && !more; i++) more = !q[i].done && r->seq[g0 + i].n_ids + 1 < max_new;
            if ((st = av_batch_session_step_ahead(b, &sp, tok_out, more)) != AV_OK) break;
            for (int i = 0; i < ng && st == AV_OK; i++) {
                if (q[i].done) continue;
                int fin;
                if ((st = push(m, tok, o, &q[i], &r->seq[g0 + i], tok_out[i], &fin)) != AV_OK) break;
                if (!fin) continue;
                q[i].done = 1;
                running--;
                av_batch_session_finish(b, i);
            }
        }
        r->gen_s += av_now() - t1;
        for (int i = 0; i < ng; i++) {
            av_gen_result *g = &r->seq[g0 + i];
            if (st == AV_OK) st = av_stops_end(&q[i].text, strcmp(g->finish, "interrupted") != 0);
            g->text = av_stops_take_text(&q[i].text);
            r->gen_tokens += g->n_ids;
            av_stops_free(&q[i].text);
        }
    }
    free(tok_out);
    free(q);
    av_batch_session_free(b);
    return st;
}

av_status av_generate_batch(av_model *m, const av_tokenizer *tok, const int32_t *const *prompts, const int *n_prompt, int n,
                            const av_batch_opts *o, av_batch_result *r) {
    memset(r, 0, sizeof *r);
    if (n <= 0) return av_fail(AV_ERR_ARG, "batch: no prompts");
    if (o->gen.n_stops > AV_MAX_STOPS) return av_fail(AV_ERR_ARG, "at most %d stop strings", AV_MAX_STOPS);
    int max_prompt = 0, max_new = o->gen.max_tokens > 0 ? o->gen.max_tokens : 0;
    for (int i = 0; i < n; i++) {
        if (n_prompt[i] <= 0) return av_fail(AV_ERR_ARG, "batch: prompt %d is empty", i);
        if (n_prompt[i] > max_prompt) max_prompt = n_prompt[i];
    }
    if (max_prompt + max_new + 1 > m->cfg.max_position_embeddings)
        return av_fail(AV_ERR_ARG, "longest prompt (%d tokens) + max tokens %d exceeds the model's %d positions", max_prompt,
                       max_new, m->cfg.max_position_embeddings);
    r->seq = calloc((size_t)n, sizeof *r->seq);
    if (!r->seq) return av_fail(AV_ERR_NOMEM, "out of memory");
    r->n = n;
    r->path = av_batch_path_choose(m, &o->gen.sampler);
    r->batch = r->path == AV_BATCH_SEQUENTIAL ? 1 : o->batch_size < n ? (o->batch_size > 0 ? o->batch_size : 1) : n;
    av_status st = AV_OK;
    for (int i = 0; i < n && st == AV_OK; i++) {
        r->seq[i].n_prompt = r->seq[i].n_prompt_processed = n_prompt[i];
        r->seq[i].finish = "length";
        if (r->path == AV_BATCH_TOGETHER && !(r->seq[i].ids = malloc(sizeof(int32_t) * (size_t)(max_new + 1))))
            st = av_fail(AV_ERR_NOMEM, "out of memory");
    }
    if (st == AV_OK) {
        int max_seq = max_prompt + max_new + 1;
        st = r->path == AV_BATCH_SEQUENTIAL ? run_sequential(m, tok, prompts, n_prompt, n, max_seq, o, r)
                                            : run_together(m, tok, prompts, n_prompt, n, max_seq, o, r);
    }
    for (int i = 0; i < n; i++)
        if (!r->seq[i].text) r->seq[i].text = calloc(1, 1);
    if (st != AV_OK) av_batch_result_free(r);
    return st;
}
