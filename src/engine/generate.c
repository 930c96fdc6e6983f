/* Prefill + decode loop with streaming and stop handling. */
#include "engine/sampler.h"
#include "engine/stops.h"
#include "model/llama.h"
#include "engine/decode.h"
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double av_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void av_gen_opts_default(av_gen_opts *o) {
    memset(o, 0, sizeof *o);
    o->max_tokens = 256;
    av_sampler_params_default(&o->sampler);
}

int av_generate_context(const av_model *m, int n_prompt, int max_tokens, int max_kv) {
    if (max_kv > 0) return max_kv;
    int ctx = n_prompt + max_tokens, cap = m->cfg.max_position_embeddings;
    if (ctx > cap) ctx = cap > n_prompt + 1 ? cap : n_prompt + 1;
    return ctx;
}

void av_gen_result_free(av_gen_result *r) {
    free(r->ids);
    free(r->text);
    r->ids = NULL;
    r->text = NULL;
}

av_status av_generate(av_session *s, const av_tokenizer *tok, const int32_t *prompt, int n_prompt, const av_gen_opts *o,
                      av_gen_result *r) {
    memset(r, 0, sizeof *r);
    r->n_prompt = n_prompt;
    r->finish = "length";
    if (n_prompt <= 0) return av_fail(AV_ERR_ARG, "empty prompt");
    if (o->n_stops > AV_MAX_STOPS) return av_fail(AV_ERR_ARG, "at most %d stop strings", AV_MAX_STOPS);
    int max_new = o->max_tokens;
    if (!s->ring && n_prompt + max_new > s->max_seq) max_new = s->max_seq - n_prompt; /* a rotating cache takes any length */
    if (max_new < 0)
        return av_fail(AV_ERR_ARG, "prompt of %d tokens does not fit the %d-token context", n_prompt, s->max_seq);
    if (s->ring && n_prompt > INT_MAX / 2 - max_new) return av_fail(AV_ERR_ARG, "prompt + max tokens too large");
    /* reuse the cached prefix: the session remembers the ids it processed */
    int keep = 0;
    if (s->hist) {
        while (keep < s->n_past && keep < n_prompt - 1 && s->hist[keep] == prompt[keep]) keep++;
    }
    av_session_truncate(s, keep);
    keep = s->n_past; /* a rotating cache that dropped rows restarts from empty */
    int32_t *all = malloc(sizeof(int32_t) * (size_t)(n_prompt + max_new + 1));
    if (!all) return av_fail(AV_ERR_NOMEM, "out of memory");
    av_stops text;
    av_status st = av_stops_init(&text, tok, o->stops, o->n_stops, o->on_text, o->ud);
    if (st != AV_OK) { free(all); return st; }
    memcpy(all, prompt, sizeof(int32_t) * (size_t)n_prompt);
    double t0 = av_now();
    /* a rotating cache runs the prompt as mlx_lm's generate_step does: all but the last token as one
     * chunk, then the last as a single-token step (the two differ once rows rotate) */
    int split = s->ring && n_prompt - keep > 1;
    st = av_session_forward(s, prompt + keep, n_prompt - keep - split);
    if (st == AV_OK && split) st = av_session_forward(s, prompt + n_prompt - 1, 1);
    r->n_prompt_processed = n_prompt - keep;
    av_stepper *step = NULL;
    if (st == AV_OK) st = av_stepper_new(&step, s, &o->sampler);
    int32_t id = -1;
    if (st == AV_OK && max_new > 0) st = av_stepper_sample(step, all, n_prompt, &id);
    double t1 = av_now();
    r->prompt_s = t1 - t0;
    int n = 0;
    while (st == AV_OK && n < max_new) {
        if (av_is_eos(s->m, tok, id)) { r->finish = "stop"; break; }
        all[n_prompt + n++] = id;
        int done;
        if ((st = av_stops_push(&text, id, &done)) != AV_OK) break;
        if (done == 1) { r->finish = "stop"; break; }
        if (done == 2 || (o->interrupt && *o->interrupt)) { r->finish = "interrupted"; break; }
        if (n == max_new) break;
        /* the step after this one is queued behind it unless this is the last token wanted */
        st = av_stepper_next(step, id, all, n_prompt + n, n + 1 < max_new, &id);
    }
    av_stepper_free(step);
    if (st == AV_OK) st = av_stops_end(&text, strcmp(r->finish, "interrupted") != 0);
    r->gen_s = av_now() - t1;
    r->ids = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    if (r->ids) memcpy(r->ids, all + n_prompt, sizeof(int32_t) * (size_t)n);
    r->n_ids = n;
    r->text = av_stops_take_text(&text);
    r->prompt_tps = r->prompt_s > 0 ? r->n_prompt_processed / r->prompt_s : 0;
    r->gen_tps = r->gen_s > 0 && n > 0 ? n / r->gen_s : 0;
    free(all);
    av_stops_free(&text);
    return st;
}
