/* KL between models (src/engine/kl.c): one position against a hand-computed value (p = (1/2, 1/2),
 * q = (3/4, 1/4): KL = ln(4/3) / 2), invariance to a logit shift, the first-argmax rule, numpy's
 * linear percentile rule; av_session_logits rows (over several prefill chunks) match
 * av_session_last_logits; a model against itself (same chunking) gives KL exactly 0 and full
 * agreement; different vocabularies fail. */
#include "anvil.h"
#include "test.h"

static void test_row(void) {
    float p[2] = {0, 0}, q[2] = {logf(3), 0}, q2[2] = {logf(3) + 7, 7};
    int same = -1;
    double np = 0, nq = 0;
    double kl = av_kl_logits(p, q, 2, &same, &np, &nq, 1);
    CHECK_NEAR(kl, 0.5 * log(4.0 / 3.0), 1e-7);
    CHECK(same == 1, "ties take the first maximum: argmax p = 0 = argmax q");
    CHECK_NEAR(np, log(2.0), 1e-7);
    CHECK_NEAR(nq, log(4.0), 1e-6);
    CHECK_NEAR(av_kl_logits(p, q2, 2, NULL, NULL, NULL, -1), kl, 1e-6);
    CHECK(av_kl_logits(q, q, 2, NULL, NULL, NULL, -1) == 0, "KL of a row with itself is exactly 0");
    float r[3] = {0, 2, 1}, s[3] = {0, 1, 2};
    av_kl_logits(r, s, 3, &same, NULL, NULL, -1);
    CHECK(same == 0, "different argmaxes");
}

static void test_percentile(void) {
    double v[4] = {1, 2, 3, 4}, one = 5;
    CHECK_NEAR(av_percentile(v, 4, 0.99), 3.97, 1e-12); /* np.percentile([1,2,3,4], 99) */
    CHECK_NEAR(av_percentile(v, 4, 0.5), 2.5, 1e-12);
    CHECK(av_percentile(v, 4, 1.0) == 4 && av_percentile(v, 4, 0) == 1, "ends");
    CHECK(av_percentile(&one, 1, 0.99) == 5 && av_percentile(v, 0, 0.99) == 0, "one value / none");
}

static void test_models(void) {
    av_model *m = NULL, *small = NULL;
    CHECK_OK(av_model_load(&m, test_fixture("tiny-llama"), av_backend_cpu()));
    if (!m) return;
    int V = av_model_config(m)->vocab_size, T = 70; /* more than one 64-row block */
    int32_t ids[70];
    for (int t = 0; t < T; t++) ids[t] = 1 + (t * 7919) % (V - 1);
    float *lg = malloc(sizeof(float) * (size_t)V * T), *last = malloc(sizeof(float) * (size_t)V);
    av_session *a = NULL, *b = NULL;
    CHECK_OK(av_session_new(&a, m, T, 32)); /* chunks of 32: the rows span three prefill chunks */
    CHECK_OK(av_session_new(&b, m, T, 512));
    CHECK_OK(av_session_logits(a, ids, T, lg));
    CHECK(av_session_n_past(a) == T, "positions appended: %d", av_session_n_past(a));
    for (int k = 20; k <= T; k += 25) {
        av_session_truncate(b, 0);
        CHECK_OK(av_session_prefill(b, ids, k));
        av_session_last_logits(b, last);
        CHECK(test_rel_l2(lg + (size_t)(k - 1) * V, last, (size_t)V) < 1e-5, "row %d of av_session_logits = last logits after %d tokens", k - 1, k);
    }
    CHECK(av_session_logits(a, ids, 1, lg) == AV_ERR_ARG, "context full");
    av_kl *k = NULL;
    av_kl_report r;
    CHECK_OK(av_kl_new(&k));
    /* the same model in two sessions of the same chunking runs the same arithmetic: exactly 0 */
    av_session *c2 = NULL;
    CHECK_OK(av_session_new(&c2, m, T, 512));
    CHECK_OK(av_kl_window(k, c2, b, ids, T));
    CHECK_OK(av_kl_window(k, c2, b, ids, 30));
    CHECK_OK(av_kl_result(k, &r));
    CHECK(r.positions == T - 1 + 29 && r.kl_mean == 0 && r.kl_max == 0 && r.top1_agree == 1, "self: %lld positions, KL %g, top-1 %g",
          r.positions, r.kl_mean, r.top1_agree);
    CHECK_NEAR(r.mean_nll, r.base_mean_nll, 0);
    av_config c;
    CHECK(av_synth_preset(&c, "tiny") == 0, "tiny preset");
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/kl-small", getenv("AV_TMP") ? getenv("AV_TMP") : "/tmp");
    CHECK_OK(av_synth_write(&c, dir, 1, AV_BF16));
    CHECK_OK(av_model_load(&small, dir, av_backend_cpu()));
    av_session *s = NULL;
    if (small) CHECK_OK(av_session_new(&s, small, T, 512));
    if (s) CHECK(av_kl_window(k, a, s, ids, 5) == AV_ERR_SHAPE, "different vocabularies");
    av_kl_free(k);
    av_kl_new(&k);
    CHECK(av_kl_result(k, &r) == AV_ERR_ARG, "nothing scored");
    av_kl_free(k);
    av_session_free(s);
    av_session_free(a);
    av_session_free(b);
    av_session_free(c2);
    av_model_free(small);
    av_model_free(m);
    free(lg);
    free(last);
}

int main(void) {
    test_row();
    test_percentile();
    test_models();
    return TEST_SUMMARY();
}
