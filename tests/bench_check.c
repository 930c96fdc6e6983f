/* Checks an `anvil bench` report directory (tests/cli_bench.sh): summary.json schema 1, every
 * requested suite ran with status ok, every number finite (no null where a number belongs) and
 * plausible by its name, and report.md / report.html / one log per suite / the charts exist.
 * usage: bench_check DIR [min_charts] */
#include "anvil.h"
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

static int fails;
#define BAD(...) do { printf("FAIL: "); printf(__VA_ARGS__); printf("\n"); fails++; } while (0)

static int ends(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* every number finite; plausible by key: rates > 0 and < 1e8, memory (GB) in (0, 4096), losses in (0, 30) */
static void walk(const cJSON *o, const char *path, int *numbers) {
    const cJSON *c;
    char p[512];
    cJSON_ArrayForEach(c, o) {
        snprintf(p, sizeof p, "%s.%s", path, c->string ? c->string : "[]");
        if (cJSON_IsNull(c)) {
            if (strcmp(p, ".machine.gpu")) BAD("%s is null (a number that was not finite?)", p);
        } else if (cJSON_IsNumber(c)) {
            double v = c->valuedouble;
            ++*numbers;
            if (!isfinite(v)) BAD("%s = %g is not finite", p, v);
            const char *k = c->string ? c->string : "";
            if ((ends(k, "per_sec") || ends(k, "_ts") || ends(k, "gflops") || ends(k, "_gbs")) && !(v > 0 && v < 1e8)) BAD("%s = %g is not a plausible rate", p, v);
            if (ends(k, "peak_gb") && !(v > 0 && v < 4096)) BAD("%s = %g GB is not a plausible peak", p, v);
            if (strstr(k, "loss") && !(v > 0 && v < 30)) BAD("%s = %g is not a plausible loss", p, v);
            if (!strcmp(k, "seconds") && !(v >= 0 && v < 36000)) BAD("%s = %g s is not plausible", p, v);
        } else if (cJSON_IsObject(c) || cJSON_IsArray(c)) {
            walk(c, p, numbers);
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: bench_check DIR [min_charts]\n"); return 2; }
    const char *dir = argv[1];
    int min_charts = argc > 2 ? atoi(argv[2]) : 0;
    char p[4300];
    cJSON *s;
    if (av_json_load(av_path_join(p, sizeof p, dir, "summary.json"), &s) != AV_OK) { printf("FAIL: %s\n", av_last_error()); return 1; }
    if (av_json_num(s, "schema", 0) != 1) BAD("schema is not 1");
    const cJSON *su = cJSON_GetObjectItem(s, "suites"), *e;
    int n = 0;
    cJSON_ArrayForEach(e, su) {
        n++;
        const char *st = av_json_str(e, "status", "?");
        if (strcmp(st, "ok")) BAD("suite %s: status %s: %s", e->string, st, av_json_str(e, "error", ""));
        else printf("ok: suite %s (%.1fs)\n", e->string, av_json_num(e, "seconds", -1));
        const char *log = av_json_str(e, "log", "");
        if (!av_file_exists(av_path_join(p, sizeof p, dir, log))) BAD("suite %s: no log %s", e->string, log);
    }
    const cJSON *run = cJSON_GetObjectItem(s, "run");
    if (n == 0 || av_json_num(run, "suites_run", -1) != n) BAD("suites_run %g, %d suites in the summary", av_json_num(run, "suites_run", -1), n);
    if (av_json_num(run, "success_rate", -1) != 1) BAD("success rate %g", av_json_num(run, "success_rate", -1));
    if (!av_json_str(cJSON_GetObjectItem(s, "anvil"), "commit", NULL)) BAD("no anvil.commit");
    if (!av_json_str(cJSON_GetObjectItem(s, "machine"), "cpu", NULL)) BAD("no machine.cpu");
    if (!cJSON_IsBool(cJSON_GetObjectItem(cJSON_GetObjectItem(s, "model"), "synthetic"))) BAD("model.synthetic missing");
    if (cJSON_GetArraySize(cJSON_GetObjectItem(s, "executive_summary")) < 1) BAD("no executive summary");
    if (cJSON_GetArraySize(cJSON_GetObjectItem(s, "findings")) < 1) BAD("no findings");
    int numbers = 0;
    walk(s, "", &numbers);
    printf("ok: %d numbers checked\n", numbers);
    const char *files[] = {"report.md", "report.html"};
    for (int i = 0; i < 2; i++)
        if (!av_file_exists(av_path_join(p, sizeof p, dir, files[i]))) BAD("no %s", files[i]);
    const cJSON *charts = cJSON_GetObjectItem(s, "charts");
    if (cJSON_IsString(charts)) {
        if (min_charts) BAD("charts skipped: %s", charts->valuestring);
        else printf("skipped: charts: %s\n", charts->valuestring);
    } else {
        int nc = 0;
        cJSON_ArrayForEach(e, charts) {
            const char *svg = av_json_str(e, "svg", ""), *png = av_json_str(e, "png", "");
            if (!av_file_exists(av_path_join(p, sizeof p, dir, svg)) || !av_file_exists(av_path_join(p, sizeof p, dir, png)))
                BAD("chart %s: missing file", av_json_str(e, "name", "?"));
            nc++;
        }
        if (nc < min_charts) BAD("%d charts, expected at least %d", nc, min_charts);
        else printf("ok: %d charts (SVG + PNG)\n", nc);
    }
    cJSON_Delete(s);
    printf(fails ? "%d failure(s)\n" : "all ok\n", fails);
    return fails ? 1 : 0;
}
