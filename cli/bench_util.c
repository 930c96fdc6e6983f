/* anvil bench plumbing shared by the suites: progress and log lines, failures with the library's
 * error line, numbers into cJSON, deterministic token rows, model loading for a suite. */
#include "bench.h"
#include "common.h"
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

const char *bench_fmt_time(char *buf, size_t cap, double s) {
    long t = s > 0 && s < 1e9 ? (long)(s + 0.5) : 0;
    if (t >= 3600) snprintf(buf, cap, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(buf, cap, "%ld:%02ld", t / 60, t % 60);
    return buf;
}

void bench_step(bench_ctx *b, const char *fmt, ...) {
    char what[512], el[32], left[32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    b->step++;
    double e = av_now() - b->t0;
    int n = b->nsteps > b->step ? b->nsteps : b->step;
    /* what is left of this suite: the mean step so far times the steps to go */
    double rest = b->step > 1 ? e / (b->step - 1) * (n - b->step + 1) : 0;
    fprintf(stderr, "[bench] %s %d/%d: %s (%s elapsed, ~%s left in this suite)\n", b->suite, b->step, n, what,
            bench_fmt_time(el, sizeof el, e), b->step > 1 ? bench_fmt_time(left, sizeof left, rest) : "?");
    fflush(stderr);
    if (b->log) {
        fprintf(b->log, "== step %d/%d: %s (%.1fs)\n", b->step, n, what, e);
        fflush(b->log);
    }
}

void bench_log(bench_ctx *b, const char *fmt, ...) {
    if (!b->log) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(b->log, fmt, ap);
    va_end(ap);
    fputc('\n', b->log);
    fflush(b->log);
}

int bench_fail(bench_ctx *b, cJSON *res, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cJSON_DeleteItemFromObject(res, "error");
    cJSON_AddStringToObject(res, "error", msg);
    bench_log(b, "error: %s", msg);
    fprintf(stderr, "[bench] %s: error: %s\n", b->suite, msg);
    return 1;
}

int bench_fail_lib(bench_ctx *b, cJSON *res, const char *what) { return bench_fail(b, res, "%s: %s", what, av_last_error()); }

void bench_num(cJSON *o, const char *key, double v) {
    if (isfinite(v)) cJSON_AddNumberToObject(o, key, v);
    else cJSON_AddNullToObject(o, key);
}

void bench_ids(int32_t *ids, int n, int V, unsigned salt) {
    for (int i = 0; i < n; i++) ids[i] = 1 + (int)(((unsigned)i * 2654435761u + salt * 40503u) % (unsigned)(V - 1));
}

int bench_load(bench_ctx *b, cJSON *res, av_model **m, av_tokenizer **tok) {
    *m = NULL;
    if (tok) *tok = NULL;
    av_threads_set(b->threads);
    if (tok && av_tokenizer_load(tok, b->model, 0) != AV_OK) return bench_fail_lib(b, res, "loading the tokenizer");
    const av_backend *be;
    av_status st = av_backend_select(b->device, &be);
    if (st == AV_OK && av_backend_device(be) == AV_DEVICE_CUDA && b->dtype && !strcmp(b->dtype, "f32") && !(be = av_backend_cuda_dtype(AV_F32)))
        st = AV_ERR_DEVICE;
    if (st != AV_OK || av_model_load(m, b->model, be) != AV_OK) {
        if (tok) { av_tokenizer_free(*tok); *tok = NULL; }
        return bench_fail_lib(b, res, "loading the model");
    }
    if (b->no_graphs) av_model_set_graphs(*m, 0);
    av_attention_kind k = AV_ATTN_AUTO;
    if (b->attention) k = !strcmp(b->attention, "flash") ? AV_ATTN_FLASH : !strcmp(b->attention, "standard") ? AV_ATTN_STANDARD : AV_ATTN_AUTO;
    av_model_set_attention(*m, k);
    return 0;
}

double bench_get(const cJSON *root, const char *path) {
    char key[128];
    const cJSON *o = root;
    while (o && *path) {
        const char *dot = strchr(path, '.');
        size_t l = dot ? (size_t)(dot - path) : strlen(path);
        if (l >= sizeof key) return NAN;
        memcpy(key, path, l);
        key[l] = 0;
        o = cJSON_GetObjectItemCaseSensitive(o, key);
        path += l + (dot ? 1 : 0);
    }
    return o && cJSON_IsNumber(o) ? o->valuedouble : NAN;
}
