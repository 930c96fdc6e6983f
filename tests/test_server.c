/* The server's library parts without HTTP: av_server_parse_request on valid and invalid bodies
 * (status, offending field, parsed values), and the continuous-batching scheduler on the tiny
 * fixture model: requests submitted together each give av_generate's greedy ids' text, a repeated
 * prompt reuses its cached prefix, cancellation, timeouts and stopping with requests queued; prompt
 * chunks of several sequences in one pass give each one's logits and cache as one at a time does. */
#include "anvil.h"
#include "model/batch.h"
#include "model/model.h"
#include "test.h"
#include <math.h>
#include <stdlib.h>

static void parse_cases(void) {
    struct { const char *body; int kind; int ok; const char *param; } cases[] = {
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", AV_SERVER_CHAT, 1, ""},
        {"{\"prompt\":\"hi\",\"max_tokens\":3,\"stop\":\"x\",\"logprobs\":2,\"echo\":false}", AV_SERVER_COMPLETION, 1, ""},
        {"{\"prompt\":[1,2,3]}", AV_SERVER_COMPLETION, 1, ""},
        {"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]}],"
         "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"logit_bias\":{\"5\":-100},\"seed\":-4}", AV_SERVER_CHAT, 1, ""},
        {"", AV_SERVER_CHAT, 0, ""},
        {"{", AV_SERVER_CHAT, 0, ""},
        {"[]", AV_SERVER_CHAT, 0, ""},
        {"{\"messages\":[]}", AV_SERVER_CHAT, 0, "messages"},
        {"{\"messages\":[{\"role\":\"user\"}]}", AV_SERVER_CHAT, 0, "messages"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"tool_calls\":[]}]}", AV_SERVER_CHAT, 0, "messages"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":3}", AV_SERVER_CHAT, 0, "n"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[]}", AV_SERVER_CHAT, 0, "tools"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":-1}", AV_SERVER_CHAT, 0, "temperature"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_k\":1.5}", AV_SERVER_CHAT, 0, "top_k"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"\"]}", AV_SERVER_CHAT, 0, "stop"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":2}", AV_SERVER_CHAT, 0, "top_logprobs"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream_options\":{\"include_usage\":true}}", AV_SERVER_CHAT, 0, "stream_options"},
        {"{\"prompt\":\"x\",\"prompt\":\"y\"}", AV_SERVER_COMPLETION, 0, "prompt"},
        {"{\"prompt\":\"x\",\"logit_bias\":{\"abc\":1}}", AV_SERVER_COMPLETION, 0, "logit_bias"},
        {"{\"prompt\":\"x\",\"best_of\":2}", AV_SERVER_COMPLETION, 0, "best_of"},
        {"{\"prompt\":\"x\",\"frequency_penalty\":0.5}", AV_SERVER_COMPLETION, 0, "frequency_penalty"},
        {"{\"prompt\":\"x\",\"max_tokens\":1e300}", AV_SERVER_COMPLETION, 0, "max_tokens"},
        {"{\"prompt\":\"x\",\"messages\":[]}", AV_SERVER_COMPLETION, 0, "messages"},
        {"{\"max_tokens\":2}", AV_SERVER_COMPLETION, 0, "prompt"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        av_server_request r;
        av_status st = av_server_parse_request(cases[i].body, strlen(cases[i].body), cases[i].kind, &r);
        CHECK((st == AV_OK) == cases[i].ok, "case %zu (%s): %s", i, cases[i].body, av_last_error());
        if (!cases[i].ok) CHECK(st == AV_ERR_ARG && !strcmp(r.param, cases[i].param), "case %zu: param '%s' want '%s'", i, r.param, cases[i].param);
        av_server_request_free(&r);
    }
    const char *b = "{\"prompt\":\"hi\",\"max_tokens\":7,\"temperature\":0.5,\"top_p\":0.9,\"stop\":[\"a\",\"bc\"],\"logit_bias\":{\"12\":3}}";
    av_server_request r;
    CHECK_OK(av_server_parse_request(b, strlen(b), AV_SERVER_COMPLETION, &r));
    CHECK(r.max_tokens == 7 && r.sampler.temp == 0.5f && r.sampler.top_p == 0.9f && r.n_stops == 2 && !strcmp(r.stops[1], "bc") &&
              r.n_bias == 1 && r.bias_ids[0] == 12 && r.bias[0] == 3.0f && !strcmp(r.prompt, "hi"), "parsed values");
    av_server_request_free(&r);
}

/* Collects a request's whole text; returns its finish reason. */
static const char *collect(av_sched_req *q, char *text, size_t cap, av_sched_update *last) {
    size_t n = 0;
    text[0] = 0;
    for (;;) {
        av_sched_update u;
        if (!av_sched_poll(q, 1000, &u)) continue;
        if (u.len && n + u.len < cap) { memcpy(text + n, u.text, u.len); n += u.len; text[n] = 0; }
        int done = u.done;
        *last = u;
        av_sched_update_free(&u);
        if (done) return last->finish;
    }
}

static void sched_cases(void) {
    av_model *m;
    av_tokenizer *tok;
    const char *dir = test_fixture("tiny-llama");
    av_threads_set(1);
    CHECK_OK(av_model_load(&m, dir, av_backend_cpu()));
    CHECK_OK(av_tokenizer_load(&tok, dir, 0));
    const char *prompts[3] = {"Once upon a time", "Hello there, friend", "A"};
    char want[3][512];
    for (int i = 0; i < 3; i++) { /* the reference: av_generate alone */
        int32_t *ids;
        int n;
        CHECK_OK(av_tokenizer_encode(tok, prompts[i], strlen(prompts[i]), 1, &ids, &n));
        av_session *s;
        CHECK_OK(av_session_new(&s, m, 64, 512));
        av_gen_opts go;
        av_gen_opts_default(&go);
        go.max_tokens = 16;
        av_gen_result g;
        CHECK_OK(av_generate(s, tok, ids, n, &go, &g));
        snprintf(want[i], sizeof want[i], "%s", g.text);
        av_gen_result_free(&g);
        av_session_free(s);
        free(ids);
    }
    av_sched_opts so;
    av_sched_opts_default(&so);
    so.n_slots = 2; /* three requests: one waits for a slot */
    so.ctx = 64;
    so.chunk = 3;   /* prompts prefilled in several chunks between decode steps */
    av_sched *sc;
    CHECK_OK(av_sched_new(&sc, m, tok, &so));
    av_sched_params p;
    memset(&p, 0, sizeof p);
    p.max_tokens = 16;
    av_sampler_params_default(&p.sampler);
    av_sched_req *q[3];
    for (int i = 0; i < 3; i++) {
        int32_t *ids;
        int n;
        CHECK_OK(av_tokenizer_encode(tok, prompts[i], strlen(prompts[i]), 1, &ids, &n));
        CHECK_OK(av_sched_submit(sc, ids, n, &p, &q[i]));
        free(ids);
    }
    for (int i = 0; i < 3; i++) {
        char got[512];
        av_sched_update u;
        const char *f = collect(q[i], got, sizeof got, &u);
        CHECK(!strcmp(got, want[i]), "request %d: '%s' vs av_generate '%s'", i, got, want[i]);
        CHECK(!strcmp(f, "length") || !strcmp(f, "stop"), "finish %s", f);
        av_sched_req_release(q[i]);
    }
    /* the same prompt again: all but its last token come from a slot */
    int32_t *ids;
    int n;
    CHECK_OK(av_tokenizer_encode(tok, prompts[0], strlen(prompts[0]), 1, &ids, &n));
    av_sched_req *r;
    CHECK_OK(av_sched_submit(sc, ids, n, &p, &r));
    char got[512];
    av_sched_update u;
    collect(r, got, sizeof got, &u);
    CHECK(u.cached_tokens == n - 1 && !strcmp(got, want[0]), "cached %d of %d, '%s'", u.cached_tokens, n, got);
    av_sched_req_release(r);
    /* cancel, timeout */
    p.max_tokens = 60;
    p.sampler.temp = 1.0f;
    CHECK_OK(av_sched_submit(sc, ids, n, &p, &r));
    av_sched_cancel(r);
    CHECK(!strcmp(collect(r, got, sizeof got, &u), "cancelled"), "cancel: %s", u.finish);
    av_sched_req_release(r);
    p.timeout_s = 1e-6;
    CHECK_OK(av_sched_submit(sc, ids, n, &p, &r));
    CHECK(!strcmp(collect(r, got, sizeof got, &u), "timeout"), "timeout: %s", u.finish);
    av_sched_req_release(r);
    /* refused: prompt over the context, bad ids */
    int32_t big[64] = {0}, bad[2] = {1, 1 << 30};
    CHECK(av_sched_submit(sc, big, 64, &p, &r) == AV_ERR_ARG, "prompt over the context");
    CHECK(av_sched_submit(sc, bad, 2, &p, &r) == AV_ERR_ARG, "token id out of range");
    /* stopping with requests still running: they end cancelled and stay readable */
    p.timeout_s = 0;
    av_sched_req *k[3];
    for (int i = 0; i < 3; i++) CHECK_OK(av_sched_submit(sc, ids, n, &p, &k[i]));
    av_sched_free(sc);
    for (int i = 0; i < 3; i++) {
        collect(k[i], got, sizeof got, &u);
        CHECK(u.done, "request %d ended", i);
        av_sched_req_release(k[i]);
    }
    free(ids);
    av_tokenizer_free(tok);
    av_model_free(m);
}

/* max |a - b| <= tol * max |b| over n values */
static int close_rel(const float *a, const float *b, int n, double tol, double *err) {
    double mx = 0, d = 0;
    for (int i = 0; i < n; i++) {
        mx = fmax(mx, fabs(b[i]));
        d = fmax(d, fabs((double)a[i] - b[i]));
    }
    *err = mx > 0 ? d / mx : d;
    return *err <= tol;
}

static void prefill_many_cases(void) {
    av_model *m;
    CHECK_OK(av_model_load(&m, test_fixture("tiny-llama"), av_backend_cpu()));
    int V = m->cfg.vocab_size;
    int32_t A[7], B[12];
    for (int t = 0; t < 7; t++) A[t] = 1 + (t * 37) % 500;
    for (int t = 0; t < 12; t++) B[t] = 3 + (t * 91) % 700;
    float *la = malloc(sizeof(float) * V), *lb = malloc(sizeof(float) * V), *l2 = malloc(sizeof(float) * 2 * V),
          *s1 = malloc(sizeof(float) * 2 * V), *s2 = malloc(sizeof(float) * 2 * V);
    av_batch_session *one, *many;
    CHECK_OK(av_batch_session_new(&one, m, 4, 64, 32));
    CHECK_OK(av_batch_session_new(&many, m, 4, 64, 32));
    /* one at a time: A into sequence 0, B into sequence 1 */
    CHECK_OK(av_batch_session_prefill_at(one, 0, A, 7, 0, la));
    CHECK_OK(av_batch_session_prefill_at(one, 1, B, 12, 0, lb));
    /* together: B's first 5 rows alone, then A and B's other 7 rows in one pass */
    CHECK_OK(av_batch_session_prefill_at(many, 1, B, 5, 0, NULL));
    int seq[2] = {0, 1}, T[2] = {7, 7}, p0[2] = {0, 5};
    const int32_t *ids[2] = {A, B + 5};
    CHECK_OK(av_batch_session_prefill_many(many, 2, seq, ids, T, p0, l2));
    double e;
    CHECK(close_rel(l2, la, V, 1e-5, &e), "prefill_many: sequence 0's logits off by %.2e of max", e);
    CHECK(close_rel(l2 + V, lb, V, 1e-5, &e), "prefill_many: sequence 1's logits off by %.2e of max", e);
    /* a decode step over both reads the caches the passes wrote */
    int32_t next[4] = {42, 43, 0, 0}, pos[4] = {7, 12, -1, -1};
    CHECK_OK(av_batch_session_step_logits(one, next, pos, s1));
    CHECK_OK(av_batch_session_step_logits(many, next, pos, s2));
    CHECK(close_rel(s2, s1, 2 * V, 1e-5, &e), "decode after prefill_many: logits off by %.2e of max", e);
    /* misuse: the same sequence twice, rows over the chunk */
    int dup[2] = {2, 2}, big[2] = {20, 20}, z[2] = {0, 0};
    const int32_t *ids2[2] = {B, B};
    CHECK(av_batch_session_prefill_many(many, 2, dup, ids2, T, z, l2) == AV_ERR_ARG, "a sequence twice");
    CHECK(av_batch_session_prefill_many(many, 2, seq, ids2, big, z, l2) == AV_ERR_ARG, "rows over the chunk");
    av_clear_error();
    av_batch_session_free(one);
    av_batch_session_free(many);
    free(la), free(lb), free(l2), free(s1), free(s2);
    av_model_free(m);
}

int main(void) {
    parse_cases();
    prefill_many_cases();
    sched_cases();
    return TEST_SUMMARY();
}
