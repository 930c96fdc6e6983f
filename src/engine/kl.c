/* Two models over the same tokens, as llama.cpp's --kl-divergence mode compares them: per scored
 * position, KL(base || q) of the next-token distributions (double log-softmax of each logit row),
 * whether the argmaxes agree, and both models' NLL of the actual next token. Both sessions run the
 * window in step, a few rows at a time, so only [rows, V] logits of each model are ever held. */
#include "anvil.h"
#include "core/status.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define KL_ROWS 64 /* positions per step: 2 x 64 x V floats of host logits */

struct av_kl {
    double *kl;   /* per scored position */
    long long n, cap, agree;
    double nll_q, nll_base, kl_sum;
};

av_status av_kl_new(av_kl **out) {
    *out = calloc(1, sizeof **out);
    return *out ? AV_OK : av_fail(AV_ERR_NOMEM, "out of memory");
}

void av_kl_free(av_kl *k) {
    if (!k) return;
    free(k->kl);
    free(k);
}

/* log-sum-exp of a row in double, and its first argmax */
static double lse(const float *x, int V, int *arg) {
    int best = 0;
    for (int v = 1; v < V; v++) if (x[v] > x[best]) best = v;
    double mx = x[best], s = 0;
    for (int v = 0; v < V; v++) s += exp((double)x[v] - mx);
    *arg = best;
    return mx + log(s);
}

double av_kl_logits(const float *p, const float *q, int V, int *same_top1, double *nll_p, double *nll_q, int target) {
    int ap, aq;
    double lp = lse(p, V, &ap), lq = lse(q, V, &aq), kl = 0;
    for (int v = 0; v < V; v++) {
        double a = (double)p[v] - lp, b = (double)q[v] - lq;
        kl += exp(a) * (a - b);
    }
    if (same_top1) *same_top1 = ap == aq;
    if (target >= 0 && target < V) {
        if (nll_p) *nll_p = lp - (double)p[target];
        if (nll_q) *nll_q = lq - (double)q[target];
    }
    return kl > 0 ? kl : 0; /* rounding can leave -1e-17 where the distributions agree */
}

av_status av_kl_window(av_kl *k, av_session *base, av_session *q, const int32_t *ids, int T) {
    const av_config *cb = av_model_config(av_session_model(base)), *cq = av_model_config(av_session_model(q));
    int V = cq->vocab_size;
    if (cb->vocab_size != V)
        return av_fail(AV_ERR_SHAPE, "the models' vocabularies differ (%d vs %d tokens)", cb->vocab_size, V);
    if (T < 2) return AV_OK;
    if (k->n + T > k->cap) {
        long long cap = (k->n + T) * 2;
        double *nk = realloc(k->kl, sizeof(double) * (size_t)cap);
        if (!nk) return av_fail(AV_ERR_NOMEM, "out of memory");
        k->kl = nk;
        k->cap = cap;
    }
    float *lb = malloc(sizeof(float) * (size_t)V * KL_ROWS), *lq = malloc(sizeof(float) * (size_t)V * KL_ROWS);
    av_status st = lb && lq ? AV_OK : av_fail(AV_ERR_NOMEM, "out of memory for logit rows");
    av_session_truncate(base, 0);
    av_session_truncate(q, 0);
    for (int t0 = 0; t0 < T - 1 && st == AV_OK; t0 += KL_ROWS) {
        int n = T - 1 - t0 < KL_ROWS ? T - 1 - t0 : KL_ROWS; /* the last token predicts nothing scored */
        st = av_session_logits(base, ids + t0, n, lb);
        if (st == AV_OK) st = av_session_logits(q, ids + t0, n, lq);
        for (int r = 0; r < n && st == AV_OK; r++) {
            int same;
            double np = 0, nq = 0;
            double kl = av_kl_logits(lb + (size_t)r * V, lq + (size_t)r * V, V, &same, &np, &nq, ids[t0 + r + 1]);
            k->kl[k->n++] = kl;
            k->kl_sum += kl;
            k->agree += same;
            k->nll_base += np;
            k->nll_q += nq;
        }
    }
    free(lb);
    free(lq);
    return st;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double av_percentile(const double *sorted, long long n, double frac) {
    if (n <= 0) return 0;
    double p = frac * (double)(n - 1);
    long long i = (long long)p;
    if (i >= n - 1) return sorted[n - 1];
    return sorted[i] + (p - (double)i) * (sorted[i + 1] - sorted[i]);
}

av_status av_kl_result(const av_kl *k, av_kl_report *r) {
    memset(r, 0, sizeof *r);
    if (!k->n) return av_fail(AV_ERR_ARG, "no scored positions");
    double *s = malloc(sizeof(double) * (size_t)k->n);
    if (!s) return av_fail(AV_ERR_NOMEM, "out of memory");
    memcpy(s, k->kl, sizeof(double) * (size_t)k->n);
    qsort(s, (size_t)k->n, sizeof(double), cmp_d);
    r->positions = k->n;
    r->kl_mean = k->kl_sum / (double)k->n;
    r->kl_p99 = av_percentile(s, k->n, 0.99);
    r->kl_max = s[k->n - 1];
    r->top1_agree = (double)k->agree / (double)k->n;
    r->mean_nll = k->nll_q / (double)k->n;
    r->base_mean_nll = k->nll_base / (double)k->n;
    free(s);
    return AV_OK;
}
