/* OpenAI shapes on top of the scheduler: the prompt of a request (chat messages rendered with the
 * model's chat template and encoded as `anvil generate` does; completion text encoded with BOS),
 * chat.completion / text_completion objects, SSE chunks, error objects and the /metrics text. */
#include "server/server_internal.h"
#include "core/status.h"
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

void av_sbuf_add(av_sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t nc = (b->len + n + 1) * 2;
        char *np = realloc(b->p, nc);
        if (!np) { b->oom = 1; return; }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

void av_sbuf_printf(av_sbuf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) av_sbuf_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

void av_sbuf_free(av_sbuf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

av_status av_srv_prompt(av_server *s, const av_server_request *rq, int32_t **ids, int *n) {
    *ids = NULL;
    *n = 0;
    if (rq->kind == AV_SERVER_COMPLETION) {
        if (rq->prompt) return av_tokenizer_encode(s->tok, rq->prompt, strlen(rq->prompt), 1, ids, n);
        if (!(*ids = malloc(sizeof(int32_t) * (size_t)rq->n_prompt_ids))) return av_fail(AV_ERR_NOMEM, "out of memory");
        memcpy(*ids, rq->prompt_ids, sizeof(int32_t) * (size_t)rq->n_prompt_ids);
        *n = rq->n_prompt_ids;
        return AV_OK;
    }
    char *text = NULL;
    av_status st;
    if (s->tmpl_src) {
        st = av_chat_render(s->tmpl_src, s->tmpl_where, rq->messages, 1, s->bos, s->eos, NULL, &text);
        if (st == AV_OK) st = av_tokenizer_encode(s->tok, text, strlen(text), 0, ids, n);
    } else { /* no template: the contents, one per line (as anvil generate / chat) */
        av_sbuf b = {0};
        for (const cJSON *m = rq->messages->child; m; m = m->next) {
            const char *c = av_json_str(m, "content", "");
            if (b.len) av_sbuf_add(&b, "\n", 1);
            av_sbuf_add(&b, c, strlen(c));
        }
        st = b.oom ? av_fail(AV_ERR_NOMEM, "out of memory") : av_tokenizer_encode(s->tok, b.p ? b.p : "", b.len, 1, ids, n);
        av_sbuf_free(&b);
    }
    free(text);
    return st;
}

char *av_srv_error_json(const char *msg, const char *type, const char *param, const char *code) {
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", type);
    if (param && *param) cJSON_AddStringToObject(e, "param", param);
    else cJSON_AddNullToObject(e, "param");
    if (code) cJSON_AddStringToObject(e, "code", code);
    else cJSON_AddNullToObject(e, "code");
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

const char *av_srv_finish(const char *f) {
    return f ? f : "stop";
}

/* A token's text for logprobs: its decoded bytes, with invalid UTF-8 (half a character) as U+FFFD. */
static void token_text(av_server *s, int32_t id, char *out, size_t cap, unsigned char *bytes, int *nbytes) {
    char *raw = NULL;
    *nbytes = 0;
    out[0] = 0;
    if (av_tokenizer_decode(s->tok, &id, 1, 0, &raw) != AV_OK || !raw) { free(raw); av_clear_error(); return; }
    size_t o = 0, n = strlen(raw);
    for (size_t i = 0; i < n && *nbytes < 64; i++) bytes[(*nbytes)++] = (unsigned char)raw[i];
    for (size_t i = 0; i < n && o + 4 < cap;) {
        unsigned char c = (unsigned char)raw[i];
        int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        int ok = len > 0 && i + (size_t)len <= n;
        for (int k = 1; ok && k < len; k++) ok = ((unsigned char)raw[i + k] & 0xC0) == 0x80;
        if (ok) { memcpy(out + o, raw + i, (size_t)len); o += (size_t)len; i += (size_t)len; }
        else { memcpy(out + o, "\xEF\xBF\xBD", 3); o += 3; i++; }
    }
    out[o] = 0;
    free(raw);
}

static cJSON *lp_entry(av_server *s, int32_t id, float lp) {
    char text[256];
    unsigned char bytes[64];
    int nb;
    token_text(s, id, text, sizeof text, bytes, &nb);
    cJSON *e = cJSON_CreateObject(), *b = cJSON_CreateArray();
    cJSON_AddStringToObject(e, "token", text);
    cJSON_AddNumberToObject(e, "logprob", lp);
    for (int i = 0; i < nb; i++) cJSON_AddItemToArray(b, cJSON_CreateNumber(bytes[i]));
    cJSON_AddItemToObject(e, "bytes", b);
    return e;
}

/* chat: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}; completions: {tokens,
 * token_logprobs, top_logprobs: [{token: lp}], text_offset}. */
static cJSON *logprobs_json(av_server *s, const av_server_request *rq, const av_token_logprob *lp, int n_lp, size_t *offset) {
    if (!rq->logprobs) return cJSON_CreateNull();
    cJSON *o = cJSON_CreateObject();
    if (rq->kind == AV_SERVER_CHAT) {
        cJSON *c = cJSON_AddArrayToObject(o, "content");
        for (int i = 0; i < n_lp; i++) {
            cJSON *e = lp_entry(s, lp[i].id, lp[i].logprob), *t = cJSON_AddArrayToObject(e, "top_logprobs");
            for (int k = 0; k < lp[i].n_top; k++) cJSON_AddItemToArray(t, lp_entry(s, lp[i].top_id[k], lp[i].top_lp[k]));
            cJSON_AddItemToArray(c, e);
        }
        return o;
    }
    cJSON *toks = cJSON_AddArrayToObject(o, "tokens"), *tlp = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *top = cJSON_AddArrayToObject(o, "top_logprobs"), *off = cJSON_AddArrayToObject(o, "text_offset");
    for (int i = 0; i < n_lp; i++) {
        char text[256];
        unsigned char bytes[64];
        int nb;
        token_text(s, lp[i].id, text, sizeof text, bytes, &nb);
        cJSON_AddItemToArray(toks, cJSON_CreateString(text));
        cJSON_AddItemToArray(tlp, cJSON_CreateNumber(lp[i].logprob));
        cJSON_AddItemToArray(off, cJSON_CreateNumber((double)*offset));
        *offset += strlen(text);
        cJSON *alt = cJSON_CreateObject();
        for (int k = 0; k < lp[i].n_top; k++) {
            token_text(s, lp[i].top_id[k], text, sizeof text, bytes, &nb);
            if (!cJSON_GetObjectItemCaseSensitive(alt, text)) cJSON_AddNumberToObject(alt, text, lp[i].top_lp[k]);
        }
        cJSON_AddItemToArray(top, alt);
    }
    return o;
}

static cJSON *usage_json(const av_sched_update *u) {
    cJSON *us = cJSON_CreateObject();
    cJSON_AddNumberToObject(us, "prompt_tokens", u->prompt_tokens);
    cJSON_AddNumberToObject(us, "completion_tokens", u->completion_tokens);
    cJSON_AddNumberToObject(us, "total_tokens", u->prompt_tokens + u->completion_tokens);
    cJSON *d = cJSON_AddObjectToObject(us, "prompt_tokens_details");
    cJSON_AddNumberToObject(d, "cached_tokens", u->cached_tokens);
    return us;
}

static cJSON *envelope(av_server *s, const av_server_request *rq, const char *id, long created, int chunk) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "object", rq->kind == AV_SERVER_CHAT ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)created);
    cJSON_AddStringToObject(o, "model", s->model_id);
    cJSON_AddStringToObject(o, "system_fingerprint", "anvil");
    return o;
}

char *av_srv_completion_json(av_server *s, const av_server_request *rq, const char *id, long created, const char *text,
                             const av_token_logprob *lp, int n_lp, const av_sched_update *u) {
    cJSON *o = envelope(s, rq, id, created, 0), *choices = cJSON_AddArrayToObject(o, "choices"), *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    size_t off = 0;
    if (rq->kind == AV_SERVER_CHAT) {
        cJSON *msg = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        cJSON_AddStringToObject(msg, "content", text);
    } else {
        cJSON_AddStringToObject(c, "text", text);
    }
    cJSON_AddItemToObject(c, "logprobs", logprobs_json(s, rq, lp, n_lp, &off));
    cJSON_AddStringToObject(c, "finish_reason", av_srv_finish(u->finish));
    cJSON_AddItemToArray(choices, c);
    cJSON_AddItemToObject(o, "usage", usage_json(u));
    char *out = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return out;
}

static void add_event(av_sbuf *out, cJSON *o) {
    char *js = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!js) { out->oom = 1; return; }
    av_sbuf_add(out, "data: ", 6);
    av_sbuf_add(out, js, strlen(js));
    av_sbuf_add(out, "\n\n", 2);
    free(js);
}

void av_srv_chunk(av_server *s, av_sbuf *out, const av_server_request *rq, const char *id, long created, int role, const char *text,
                  size_t len, const av_token_logprob *lp, int n_lp, const char *finish, size_t *text_off) {
    cJSON *o = envelope(s, rq, id, created, 1), *choices = cJSON_AddArrayToObject(o, "choices"), *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    char *t = malloc(len + 1);
    if (t) {
        memcpy(t, text ? text : "", len);
        t[len] = 0;
    }
    if (rq->kind == AV_SERVER_CHAT) {
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (role) cJSON_AddStringToObject(d, "role", "assistant");
        if (len || role) cJSON_AddStringToObject(d, "content", t ? t : "");
    } else {
        cJSON_AddStringToObject(c, "text", t ? t : "");
    }
    free(t);
    cJSON_AddItemToObject(c, "logprobs", n_lp ? logprobs_json(s, rq, lp, n_lp, text_off) : cJSON_CreateNull());
    if (finish) cJSON_AddStringToObject(c, "finish_reason", av_srv_finish(finish));
    else cJSON_AddNullToObject(c, "finish_reason");
    cJSON_AddItemToArray(choices, c);
    add_event(out, o);
}

void av_srv_usage_chunk(av_server *s, av_sbuf *out, const av_server_request *rq, const char *id, long created, const av_sched_update *u) {
    cJSON *o = envelope(s, rq, id, created, 1);
    cJSON_AddArrayToObject(o, "choices");
    cJSON_AddItemToObject(o, "usage", usage_json(u));
    add_event(out, o);
}

char *av_srv_metrics(av_server *s) {
    av_sched_stats st;
    av_sched_stats_get(s->sched, &st);
    av_sbuf b = {0};
#define METRIC(name, type, help, fmt, val) \
    av_sbuf_printf(&b, "# HELP anvil_" name " " help "\n# TYPE anvil_" name " " type "\nanvil_" name " " fmt "\n", val)
    METRIC("http_requests_total", "counter", "HTTP requests received.", "%lld", (long long)atomic_load(&s->n_http));
    METRIC("http_responses_4xx_total", "counter", "Responses with a 4xx status.", "%lld", (long long)atomic_load(&s->n_4xx));
    METRIC("http_responses_5xx_total", "counter", "Responses with a 5xx status.", "%lld", (long long)atomic_load(&s->n_5xx));
    METRIC("chat_requests_total", "counter", "POST /v1/chat/completions requests.", "%lld", (long long)atomic_load(&s->n_chat));
    METRIC("completion_requests_total", "counter", "POST /v1/completions requests.", "%lld", (long long)atomic_load(&s->n_completion));
    METRIC("client_disconnects_total", "counter", "Requests cancelled because the client went away.", "%lld",
           (long long)atomic_load(&s->n_disconnect));
    METRIC("requests_total", "counter", "Generation requests accepted by the scheduler.", "%lld", st.requests);
    METRIC("requests_finished_total", "counter", "Generation requests finished (any reason).", "%lld", st.finished);
    METRIC("requests_cancelled_total", "counter", "Generation requests cancelled.", "%lld", st.cancelled);
    METRIC("requests_timed_out_total", "counter", "Generation requests that ran out of time.", "%lld", st.timed_out);
    METRIC("requests_failed_total", "counter", "Generation requests ended by an engine error.", "%lld", st.failed);
    METRIC("prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", "%lld", st.prompt_tokens);
    METRIC("generation_tokens_total", "counter", "Tokens generated.", "%lld", st.gen_tokens);
    METRIC("prefix_cache_hits_total", "counter", "Requests that reused a cached prompt prefix.", "%lld", st.cache_hits);
    METRIC("prefix_cache_tokens_total", "counter", "Prompt tokens served from the prefix cache.", "%lld", st.cached_tokens);
    METRIC("decode_steps_total", "counter", "Batched decode steps.", "%lld", st.steps);
    METRIC("decode_rows_total", "counter", "Sequences decoded, summed over steps (/ steps = mean batch size).", "%lld", st.step_rows);
    METRIC("prefill_chunks_total", "counter", "Prompt chunks prefilled.", "%lld", st.prefill_chunks);
    METRIC("queue_depth", "gauge", "Requests waiting for a slot.", "%d", st.queued);
    METRIC("requests_running", "gauge", "Requests holding a slot.", "%d", st.running);
    METRIC("batch_size", "gauge", "Sequences in the last decode step.", "%d", st.last_batch);
    METRIC("slots", "gauge", "Sequences the server decodes together at most (--parallel).", "%d", st.slots);
    METRIC("slot_context_tokens", "gauge", "Tokens per slot (--ctx-size).", "%d", st.ctx);
    METRIC("kv_cache_bytes", "gauge", "Backend bytes of the slots' KV cache and scratch (the prefix cache's bound).", "%zu", st.kv_bytes);
    METRIC("prefix_store_entries", "gauge", "Prompt prefixes saved (in the model's memory: the GPU's with --device cuda).", "%d", st.store_entries);
    METRIC("prefix_store_bytes", "gauge", "Bytes of saved prompt prefixes.", "%zu", st.store_bytes);
    METRIC("prefix_store_limit_bytes", "gauge", "Byte limit of saved prompt prefixes (--cache-mb).", "%zu", st.store_limit);
    METRIC("prefix_store_saves_total", "counter", "Prefixes saved from slots taken by other prompts.", "%lld", st.store_saves);
    METRIC("prefix_store_hits_total", "counter", "Saved prefixes copied back into a slot.", "%lld", st.store_hits);
    METRIC("prefix_store_evictions_total", "counter", "Saved prefixes evicted (least recently used) to stay in the limit.", "%lld",
           st.store_evictions);
#undef METRIC
    av_sbuf_printf(&b, "# HELP anvil_engine_seconds_total Engine thread wall seconds by phase (admit: slot choice and prefix "
                       "cache copies; prefill: prompt chunks; step: batched decode steps; sample: sampling and text of their rows).\n"
                       "# TYPE anvil_engine_seconds_total counter\n");
    const char *ph[4] = {"admit", "prefill", "step", "sample"};
    double tv[4] = {st.t_admit, st.t_prefill, st.t_step, st.t_sample};
    for (int k = 0; k < 4; k++) av_sbuf_printf(&b, "anvil_engine_seconds_total{phase=\"%s\"} %.6f\n", ph[k], tv[k]);
    if (b.oom) { av_sbuf_free(&b); return NULL; }
    return b.p;
}
