/* Prefill + decode loop with streaming and stop handling. */
#include "engine/generate.h"
#include "model/decode_graph.h"
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

void av_gen_result_free(av_gen_result *r) {
    free(r->ids);
    free(r->text);
    r->ids = NULL;
    r->text = NULL;
}

typedef struct {
    char *buf;
    size_t len, cap, emitted;
} textbuf;

static int tb_append(textbuf *t, const char *s, size_t n) {
    if (t->len + n + 1 > t->cap) {
        size_t nc = (t->len + n + 1) * 2;
        char *nb = realloc(t->buf, nc);
        if (!nb) return -1;
        t->buf = nb;
        t->cap = nc;
    }
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    t->buf[t->len] = 0;
    return 0;
}

static int is_eos(const av_session *s, const av_tokenizer *tok, int id) {
    const av_config *c = &s->m->cfg;
    for (int i = 0; i < c->n_eos; i++) if (c->eos_token_ids[i] == id) return 1;
    return tok && id == av_tokenizer_eos_id(tok);
}

/* Emits text up to `upto` (moved back to a UTF-8 character start). */
static int emit(textbuf *t, size_t upto, const av_gen_opts *o) {
    while (upto > t->emitted && upto < t->len && ((unsigned char)t->buf[upto] & 0xC0) == 0x80) upto--;
    if (upto <= t->emitted) return 0;
    int stop = o->on_text ? o->on_text(o->ud, t->buf + t->emitted, upto - t->emitted) : 0;
    t->emitted = upto;
    return stop;
}

av_status av_generate(av_session *s, const av_tokenizer *tok, const int32_t *prompt, int n_prompt, const av_gen_opts *o,
                      av_gen_result *r) {
    memset(r, 0, sizeof *r);
    r->n_prompt = n_prompt;
    if (n_prompt <= 0) return av_fail(AV_ERR_ARG, "empty prompt");
    int V = s->m->cfg.vocab_size;
    int max_new = o->max_tokens;
    if (n_prompt + max_new > s->max_seq) max_new = s->max_seq - n_prompt;
    if (max_new < 0)
        return av_fail(AV_ERR_ARG, "prompt of %d tokens does not fit the %d-token context", n_prompt, s->max_seq);
    /* reuse the cached prefix: the session remembers the ids it processed */
    int keep = 0;
    if (s->hist) {
        while (keep < s->n_past && keep < n_prompt - 1 && s->hist[keep] == prompt[keep]) keep++;
    }
    av_session_truncate(s, keep);
    av_sampler smp;
    if (av_sampler_init(&smp, &o->sampler, V) != 0) return av_fail(AV_ERR_NOMEM, "out of memory");
    int32_t *all = malloc(sizeof(int32_t) * (size_t)(n_prompt + max_new + 1));
    float *logits = malloc(sizeof(float) * (size_t)V);
    av_stream_decoder *sd = tok ? av_stream_decoder_new(tok) : NULL;
    textbuf tb = {0};
    if (!all || !logits || (tok && !sd)) {
        free(all); free(logits); av_stream_decoder_free(sd); av_sampler_free(&smp);
        return av_fail(AV_ERR_NOMEM, "out of memory");
    }
    memcpy(all, prompt, sizeof(int32_t) * (size_t)n_prompt);
    double t0 = av_now();
    av_status st = av_session_forward(s, prompt + keep, n_prompt - keep);
    r->n_prompt_processed = n_prompt - keep;
    if (st == AV_OK) av_session_last_logits(s, logits);
    double t1 = av_now();
    r->prompt_s = t1 - t0;
    r->finish = "length";
    size_t max_stop = 0;
    for (int i = 0; i < o->n_stops; i++) if (strlen(o->stops[i]) > max_stop) max_stop = strlen(o->stops[i]);
    int n = 0, user_stop = 0;
    /* greedy without a repetition penalty on a backend with graph decode and a device sampler: each
     * step is one captured graph whose argmax stays on the device (only the id comes back), the same
     * tokens as the host sampler's argmax (lowest id on ties) */
    const av_backend *be = s->m->be;
    av_decoder *dec = NULL;
    if (st == AV_OK && o->sampler.temp <= 0.0f && o->sampler.repetition_penalty == 1.0f && be->graph_begin && be->sample &&
        be->attention_decode && av_decoder_new(&dec, s) != AV_OK)
        dec = NULL; /* the session path below still works */
    int id = -1;
    while (st == AV_OK && n < max_new) {
        if (id < 0) id = av_sampler_sample(&smp, logits, all, n_prompt + n);
        if (is_eos(s, tok, id)) { r->finish = "stop"; break; }
        all[n_prompt + n++] = id;
        if (sd) {
            size_t len;
            const char *piece = av_stream_decoder_push(sd, id, &len);
            if (len && tb_append(&tb, piece, len) != 0) { st = av_fail(AV_ERR_NOMEM, "out of memory"); break; }
        }
        int hit = 0;
        for (int i = 0; i < o->n_stops && !hit; i++) {
            char *at = strstr(tb.buf ? tb.buf + (tb.emitted > max_stop ? tb.emitted - max_stop : 0) : "", o->stops[i]);
            if (at) { tb.len = (size_t)(at - tb.buf); tb.buf[tb.len] = 0; hit = 1; }
        }
        if (hit) { emit(&tb, tb.len, o); r->finish = "stop"; break; }
        size_t safe = tb.len > (max_stop ? max_stop - 1 : 0) ? tb.len - (max_stop ? max_stop - 1 : 0) : 0;
        if (emit(&tb, safe, o)) user_stop = 1;
        if (user_stop || (o->interrupt && *o->interrupt)) { r->finish = "interrupted"; break; }
        if (n == max_new) break;
        if (dec) {
            int32_t next;
            /* the step after this one queued behind it unless this is the last token wanted */
            st = av_decoder_next_ahead(dec, id, 0.0f, 1.0f, 0, &next, n + 1 < max_new);
            id = next;
            continue;
        }
        id = -1;
        st = av_session_forward(s, &all[n_prompt + n - 1], 1);
        if (st == AV_OK) av_session_last_logits(s, logits);
    }
    av_decoder_free(dec);
    if (sd && st == AV_OK && strcmp(r->finish, "interrupted")) {
        size_t len;
        const char *rest = av_stream_decoder_flush(sd, &len);
        if (len) tb_append(&tb, rest, len);
    }
    if (st == AV_OK) emit(&tb, tb.len, o);
    r->gen_s = av_now() - t1;
    r->ids = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    if (r->ids) memcpy(r->ids, all + n_prompt, sizeof(int32_t) * (size_t)n);
    r->n_ids = n;
    r->text = tb.buf ? tb.buf : calloc(1, 1);
    r->prompt_tps = r->prompt_s > 0 ? r->n_prompt_processed / r->prompt_s : 0;
    r->gen_tps = r->gen_s > 0 && n > 0 ? n / r->gen_s : 0;
    free(all);
    free(logits);
    av_stream_decoder_free(sd);
    av_sampler_free(&smp);
    return st;
}
