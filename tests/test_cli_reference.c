/* End-to-end reference checks through the CLI (`anvil perplexity --json`, `anvil generate --json`)
 * against HF's numbers in the fixtures: eval-text mean NLL (abs <= 1e-4) and the greedy
 * 24-token continuation (identical ids). */
#include "test.h"
#include <cjson/cJSON.h>

static cJSON *run_json(const char *cmdline) {
    FILE *p = popen(cmdline, "r");
    if (!p) return NULL;
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, p);
    buf[n] = 0;
    int rc = pclose(p);
    CHECK(rc == 0, "command failed (rc %d): %s", rc, cmdline);
    return cJSON_Parse(buf);
}

static cJSON *load(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    static char buf[1 << 22];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return cJSON_Parse(buf);
}

static void write_file(const char *path, const char *s) {
    FILE *f = fopen(path, "wb");
    fputs(s, f);
    fclose(f);
}

static void check(const char *anvil, const char *tmp, const char *name) {
    char path[4096], cmd[16384];
    snprintf(path, sizeof path, "%s/%s_golden.json", test_fixtures(), name);
    cJSON *g = load(path);
    CHECK(g != NULL, "golden %s", path);
    if (!g) return;
    /* eval text -> perplexity over its first n_tokens tokens */
    cJSON *ev = cJSON_GetObjectItem(g, "eval");
    char txt[4096];
    snprintf(txt, sizeof txt, "%s/%s_eval.txt", tmp, name);
    write_file(txt, cJSON_GetObjectItem(ev, "text")->valuestring);
    snprintf(cmd, sizeof cmd, "%s perplexity --dtype f32 --model %s/%s --text-file %s --max-tokens %d --json", anvil, test_fixtures(), name, txt,
             cJSON_GetObjectItem(ev, "n_tokens")->valueint);
    cJSON *r = run_json(cmd);
    CHECK(r != NULL, "perplexity json");
    if (r) {
        CHECK(cJSON_GetObjectItem(r, "tokens")->valueint == cJSON_GetObjectItem(ev, "n_tokens")->valueint, "token count");
        CHECK_NEAR(cJSON_GetObjectItem(r, "mean_nll")->valuedouble, cJSON_GetObjectItem(ev, "mean_nll")->valuedouble, 1e-4);
        cJSON_Delete(r);
    }
    /* greedy continuation of the raw prompt */
    cJSON *gr = cJSON_GetObjectItem(g, "greedy");
    snprintf(txt, sizeof txt, "%s/%s_prompt.txt", tmp, name);
    write_file(txt, cJSON_GetObjectItem(gr, "prompt")->valuestring);
    snprintf(cmd, sizeof cmd, "%s generate --dtype f32 --model %s/%s --prompt - --ignore-chat-template --temp 0 --max-tokens 24 --json < %s",
             anvil, test_fixtures(), name, txt);
    r = run_json(cmd);
    CHECK(r != NULL, "generate json");
    if (r) {
        cJSON *want = cJSON_GetObjectItem(gr, "ids"), *pids = cJSON_GetObjectItem(r, "prompt_ids"), *ids = cJSON_GetObjectItem(r, "ids");
        int np = cJSON_GetArraySize(pids), nw = cJSON_GetArraySize(want), same = np + cJSON_GetArraySize(ids) == nw;
        for (int i = 0; same && i < nw; i++) {
            int got = i < np ? cJSON_GetArrayItem(pids, i)->valueint : cJSON_GetArrayItem(ids, i - np)->valueint;
            same = got == cJSON_GetArrayItem(want, i)->valueint;
        }
        CHECK(same, "%s: greedy ids differ from HF (%d prompt + %d generated vs %d)", name, np, cJSON_GetArraySize(ids), nw);
        CHECK(cJSON_GetObjectItem(r, "gen_tps") && cJSON_GetObjectItem(r, "peak_mem_mb"), "speed fields");
        cJSON_Delete(r);
    }
    cJSON_Delete(g);
}

int main(void) {
    const char *anvil = getenv("ANVIL"), *tmp = getenv("AV_TMP");
    if (!anvil || !tmp) { CHECK(0, "needs $ANVIL and $AV_TMP (run via tests/run.sh)"); return TEST_SUMMARY(); }
    check(anvil, tmp, "tiny-llama");
    check(anvil, tmp, "tiny-llama-tied");
    return TEST_SUMMARY();
}
