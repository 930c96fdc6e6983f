/* Reference test of the CPU forward pass against HF transformers (fixtures' *_golden.json):
 * per-position next-token NLL and argmax, last-position logits, greedy continuation. */
#include "test.h"
#include "backend/backend.h"
#include "core/status.h"
#include "model/llama.h"
#include "core/memory.h"

static int read_ids(const cJSON *arr, int32_t *out, int cap) {
    int n = 0;
    for (const cJSON *e = arr->child; e && n < cap; e = e->next) out[n++] = e->valueint;
    return n;
}

static void check_model(const char *name) {
    char dir[4096], golden[4096];
    snprintf(dir, sizeof dir, "%s", test_fixture(name));
    snprintf(golden, sizeof golden, "%s/%s_golden.json", test_fixtures(), name);
    cJSON *g;
    CHECK_OK(av_json_load(golden, &g));
    if (!g) return;
    av_model *m;
    CHECK_OK(av_model_load(&m, dir, av_backend_cpu()));
    if (!m) return;
    av_session *s;
    CHECK_OK(av_session_new(&s, m, 512, 64));
    int V = m->cfg.vocab_size;
    float *logits = malloc(sizeof(float) * V);
    int pi = 0;
    for (const cJSON *p = cJSON_GetObjectItem(g, "prompts")->child; p; p = p->next, pi++) {
        int32_t ids[1024], am[1024];
        float nll[1024];
        int T = read_ids(cJSON_GetObjectItem(p, "ids"), ids, 1024);
        double sum;
        CHECK_OK(av_session_nll(s, ids, T, &sum, nll, am));
        int j = 0, bad_nll = 0, bad_am = 0;
        double maxerr = 0;
        for (const cJSON *e = cJSON_GetObjectItem(p, "next_token_nll")->child; e; e = e->next, j++) {
            double err = fabs(nll[j] - e->valuedouble) / fabs(e->valuedouble);
            if (err > maxerr) maxerr = err;
            bad_nll += err > 1e-4;
        }
        CHECK(j == T - 1, "%s prompt %d: %d nll values for %d ids", name, pi, j, T);
        j = 0;
        for (const cJSON *e = cJSON_GetObjectItem(p, "argmax")->child; e; e = e->next, j++) bad_am += am[j] != e->valueint;
        CHECK(bad_nll == 0, "%s prompt %d: %d positions with NLL rel err > 1e-4 (max %.3g)", name, pi, bad_nll, maxerr);
        CHECK(bad_am == 0, "%s prompt %d: %d argmax mismatches", name, pi, bad_am);
        /* last logits via the incremental path: prefill all but last, then one decode step */
        av_session_truncate(s, 0);
        CHECK_OK(av_session_forward(s, ids, T - 1));
        CHECK_OK(av_session_forward(s, ids + T - 1, 1));
        av_session_last_logits(s, logits);
        char lp[4096];
        snprintf(lp, sizeof lp, "%s/%s_last_logits_%d.safetensors", test_fixtures(), name, pi);
        av_st_file f;
        CHECK_OK(av_st_open(&f, lp));
        const av_st_tensor *t = av_st_find(&f, "last_logits");
        CHECK(t && av_st_numel(t) == V, "last_logits tensor");
        if (t && av_st_numel(t) == V) {
            double mx = 0;
            for (int v = 0; v < V; v++) {
                double d = fabs(logits[v] - ((const float *)t->data)[v]);
                if (d > mx) mx = d;
            }
            CHECK(mx <= 1e-3, "%s prompt %d: last logits max abs err %.3g", name, pi, mx);
        }
        av_st_close(&f);
    }
    /* greedy continuation: 24 tokens */
    const cJSON *gr = cJSON_GetObjectItem(g, "greedy");
    int32_t all[256];
    int n_all = read_ids(cJSON_GetObjectItem(gr, "ids"), all, 256);
    int n_prompt = n_all - 24;
    av_session_truncate(s, 0);
    CHECK_OK(av_session_forward(s, all, n_prompt));
    int same = 1;
    for (int i = 0; i < 24; i++) {
        av_session_last_logits(s, logits);
        int best = 0;
        for (int v = 1; v < V; v++) if (logits[v] > logits[best]) best = v;
        same &= best == all[n_prompt + i];
        CHECK_OK(av_session_forward(s, &all[n_prompt + i], 1));
    }
    CHECK(same, "%s: greedy 24-token continuation differs", name);
    free(logits);
    av_session_free(s);
    av_model_free(m);
    cJSON_Delete(g);
}

static void check_errors(void) {
    av_model *m;
    CHECK(av_model_load(&m, "/nonexistent/model", av_backend_cpu()) == AV_ERR_IO, "missing dir");
    CHECK(strstr(av_last_error(), "/nonexistent/model") != NULL, "error names the dir: %s", av_last_error());
}

int main(void) {
    check_errors();
    check_model("tiny-llama");
    check_model("tiny-llama-tied");
    return TEST_SUMMARY();
}
