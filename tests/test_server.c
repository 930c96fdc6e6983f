/* The server's library parts without HTTP: av_server_parse_request on valid and invalid bodies
 * (status, offending field, parsed values), and the continuous-batching scheduler on the tiny
 * fixture model: requests submitted together each give av_generate's greedy ids' text, a repeated
 * prompt reuses its cached prefix, cancellation, timeouts and stopping with requests queued. */
#include "anvil.h"
#include "test.h"

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

int main(void) {
    parse_cases();
    sched_cases();
    return TEST_SUMMARY();
}
