/* Training data and schedules: the three JSONL formats, prompt masking, truncation, length-sorted
 * batches with next-token targets and -1 padding, seeded epoch shuffles, file:line errors for
 * malformed lines, and LR schedule values against hand-computed MLX schedulers. */
#include "test.h"
#include <stdint.h>
#include "core/status.h"
#include "train/dataset.h"

/* Byte "tokenizer": BOS = 1 when add_special, then one id per byte (byte + 3); EOS = 2. */
static av_status enc(void *ctx, const char *s, size_t n, int add_special, int32_t **ids, int *cnt) {
    (void)ctx;
    *ids = malloc((n + 1) * sizeof(int32_t));
    int k = 0;
    if (add_special) (*ids)[k++] = 1;
    for (size_t i = 0; i < n; i++) (*ids)[k++] = (unsigned char)s[i] + 3;
    *cnt = k;
    return AV_OK;
}
/* Template: "<role>:content|" per message, "A:" for the generation prompt. */
static av_status render(void *ctx, const cJSON *msgs, int gen, char **out) {
    (void)ctx;
    char buf[4096] = "";
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
        const char *r = cJSON_GetObjectItem(m, "role")->valuestring;
        strncat(buf, r[0] == 'u' ? "U:" : "A:", sizeof buf - strlen(buf) - 1);
        strncat(buf, cJSON_GetObjectItem(m, "content")->valuestring, sizeof buf - strlen(buf) - 1);
        strncat(buf, "|", sizeof buf - strlen(buf) - 1);
    }
    if (gen) strncat(buf, "A:", sizeof buf - strlen(buf) - 1);
    *out = strdup(buf);
    return AV_OK;
}

static char g_dir[256];
static const char *write_file(const char *name, const char *text) {
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", g_dir, name);
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
    return p;
}

static void expect_error(const av_ds_opts *o, const char *text, const char *want) {
    av_dataset d;
    const char *p = write_file("bad.jsonl", text);
    av_status st = av_dataset_load(&d, p, o);
    CHECK(st != AV_OK, "loaded bad data: %s", text);
    if (st == AV_OK) { av_dataset_free(&d); return; }
    CHECK(strstr(av_last_error(), want) != NULL, "error '%s' lacks '%s'", av_last_error(), want);
    CHECK(strstr(av_last_error(), "bad.jsonl:") != NULL, "error '%s' lacks the file name", av_last_error());
}

static void test_formats(void) {
    av_ds_opts o = {.encode = enc, .render = render, .eos_id = 2};
    av_dataset d;
    const char *p = write_file("train.jsonl",
                               "{\"text\": \"abc\"}\n"
                               "\n"
                               "{\"prompt\": \"hi\", \"completion\": \"yo\"}\n"
                               "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"ab\"}]}\n");
    CHECK_OK(av_dataset_load(&d, p, &o));
    CHECK(d.n == 3, "rows %d", d.n);
    /* text: BOS a b c EOS */
    CHECK(d.rows[0].n == 5 && d.rows[0].ids[0] == 1 && d.rows[0].ids[1] == 'a' + 3 && d.rows[0].ids[4] == 2, "text row");
    CHECK(d.rows[0].offset == 0 && d.rows[0].line == 1, "text offset/line");
    /* completion: through the template "U:hi|A:yo|" without BOS (as apply_chat_template) */
    CHECK(d.rows[1].n == 10 && d.rows[1].ids[0] == 'U' + 3 && d.rows[1].line == 3, "completion row n=%d", d.rows[1].n);
    CHECK(d.rows[2].n == 9 && d.rows[2].ids[0] == 'U' + 3, "chat row n=%d", d.rows[2].n);
    CHECK(d.rows[2].offset == 0, "no masking by default");
    av_dataset_free(&d);

    o.mask_prompt = 1;
    CHECK_OK(av_dataset_load(&d, p, &o));
    /* "U:hi|A:" = 7 tokens of prompt; "U:q|A:" = 6 */
    CHECK(d.rows[1].offset == 7, "completion offset %d", d.rows[1].offset);
    CHECK(d.rows[2].offset == 6, "chat offset %d", d.rows[2].offset);
    CHECK(d.rows[0].offset == 0, "text rows are never masked");
    CHECK(av_ds_row_targets(&d.rows[2]) == 3, "chat targets %d", av_ds_row_targets(&d.rows[2])); /* a b | */
    av_dataset_free(&d);

    /* no template: chat rows are an error; prompt/completion are concatenated text */
    av_ds_opts nt = {.encode = enc, .eos_id = 2, .mask_prompt = 1};
    const char *p2 = write_file("pc.jsonl", "{\"prompt\": \"hi\", \"completion\": \"yo\"}\n");
    CHECK_OK(av_dataset_load(&d, p2, &nt));
    CHECK(d.n == 1 && d.rows[0].n == 6 && d.rows[0].offset == 3, "concat n=%d off=%d", d.rows[0].n, d.rows[0].offset);
    av_dataset_free(&d);
    expect_error(&nt, "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}\n", "chat template");
}

static void test_errors(void) {
    av_ds_opts o = {.encode = enc, .render = render, .eos_id = 2};
    expect_error(&o, "{\"text\": \"ok\"}\n{\"text\": \"ok\"\n", "bad.jsonl:2");
    expect_error(&o, "{\"text\": \"ok\"}\n\n[1,2]\n", "bad.jsonl:3");
    expect_error(&o, "{\"txt\": \"ok\"}\n", "bad.jsonl:1: expected");
    expect_error(&o, "{\"text\": 5}\n", "bad.jsonl:1: \"text\" is not a string");
    expect_error(&o, "{\"text\": \"\"}\n", "bad.jsonl:1: empty \"text\"");
    expect_error(&o, "{\"prompt\": \"x\"}\n", "bad.jsonl:1: \"prompt\" without \"completion\"");
    expect_error(&o, "{\"prompt\": 1, \"completion\": \"y\"}\n", "\"prompt\" is not a string");
    expect_error(&o, "{\"messages\": {}}\n", "bad.jsonl:1: \"messages\" is not a list");
    expect_error(&o, "{\"messages\": []}\n", "\"messages\" is empty");
    expect_error(&o, "{\"messages\": [{\"content\": \"x\"}]}\n", "message 1: \"role\"");
    expect_error(&o, "{\"text\":\"a\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"assistant\"}]}\n",
                 "bad.jsonl:2: message 2: \"content\"");
    expect_error(&o, "", "no examples");
    av_dataset d;
    CHECK(av_dataset_load(&d, "/nonexistent/x.jsonl", &o) == AV_ERR_IO, "missing file");
}

static void test_batches(void) {
    av_ds_opts o = {.encode = enc, .render = render, .eos_id = 2, .mask_prompt = 1};
    av_dataset d;
    /* lengths with BOS+EOS: 7, 3, 5, 4, 6 */
    const char *p = write_file("b.jsonl",
                               "{\"text\": \"abcde\"}\n{\"text\": \"a\"}\n{\"text\": \"abc\"}\n{\"text\": \"ab\"}\n{\"text\": \"abcd\"}\n");
    CHECK_OK(av_dataset_load(&d, p, &o));
    av_batcher bt;
    CHECK(av_batcher_init(&bt, &d, 6, 1) != AV_OK && strstr(av_last_error(), "at least batch_size=6"), "too few rows: %s",
          av_last_error());
    CHECK_OK(av_batcher_init(&bt, &d, 2, 7));
    CHECK(bt.nb == 3, "nb %d", bt.nb);
    av_batch b = {0};
    /* sorted: row1 (3), row3 (4) | row2 (5), row4 (6) | row0 (7) */
    CHECK_OK(av_batcher_get(&bt, 0, 0, &b));
    CHECK(b.B == 2 && b.T == 3, "B=%d T=%d", b.B, b.T);
    /* row1 = [1, a, 2]: ids [1, a, 2], targets [a, 2, -1] */
    CHECK(b.ids[0] == 1 && b.ids[1] == 'a' + 3 && b.ids[2] == 2, "ids row 0");
    CHECK(b.targets[0] == 'a' + 3 && b.targets[1] == 2 && b.targets[2] == -1, "targets row 0: %d %d %d", b.targets[0], b.targets[1],
          b.targets[2]);
    CHECK(b.targets[3] == 'a' + 3 && b.targets[4] == 'b' + 3 && b.targets[5] == 2, "targets row 1");
    CHECK(b.n_targets == 5, "n_targets %d", b.n_targets);
    CHECK_OK(av_batcher_get(&bt, 2, 0, &b));
    CHECK(b.B == 1 && b.T == 6 && b.n_targets == 6, "last partial batch B=%d T=%d", b.B, b.T);
    CHECK(av_batcher_get(&bt, 3, 0, &b) != AV_OK, "eval index past the end");
    /* shuffled epochs: each epoch is a permutation; same seed -> same stream; differs by seed */
    int seen[3] = {0}, first[6], again[6];
    for (int k = 0; k < 6; k++) {
        CHECK_OK(av_batcher_get(&bt, k, 1, &b));
        first[k] = b.T;
        if (k < 3) seen[b.T == 3 ? 0 : b.T == 5 ? 1 : 2]++;
    }
    CHECK(seen[0] == 1 && seen[1] == 1 && seen[2] == 1, "epoch 0 is a permutation");
    for (int k = 5; k >= 0; k--) { /* random access (resume) gives the same batches */
        CHECK_OK(av_batcher_get(&bt, k, 1, &b));
        again[k] = b.T;
    }
    CHECK(!memcmp(first, again, sizeof first), "random access = sequential");
    av_batcher_free(&bt);

    /* masking inside a batch: chat row "U:q|A:ab|" offset 6 -> targets only for a, b, | */
    av_dataset c;
    const char *pc = write_file("c.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"ab\"}]}\n");
    CHECK_OK(av_dataset_load(&c, pc, &o));
    CHECK_OK(av_batcher_init(&bt, &c, 1, 0));
    CHECK_OK(av_batcher_get(&bt, 0, 0, &b));
    CHECK(b.T == 8 && b.n_targets == 3, "T=%d n_targets=%d", b.T, b.n_targets);
    for (int t = 0; t < 5; t++) CHECK(b.targets[t] == -1, "masked position %d", t);
    CHECK(b.targets[5] == 'a' + 3 && b.targets[6] == 'b' + 3 && b.targets[7] == '|' + 3, "completion targets");
    av_batcher_free(&bt);

    /* truncation */
    CHECK(av_dataset_truncate(&d, 4) == 3, "truncated count");
    CHECK(av_dataset_max_len(&d) == 4 && d.rows[0].n == 4 && d.rows[1].n == 3, "truncated lengths");
    av_batch_free(&b);
    av_dataset_free(&c);
    av_dataset_free(&d);
}

static void test_schedule(void) {
    av_lr_schedule s;
    av_lr_constant(&s, 1e-4);
    CHECK_OK(av_lr_validate(&s));
    CHECK(av_lr_at(&s, 0) == 1e-4 && av_lr_at(&s, 999) == 1e-4, "constant");
    /* cosine_decay(1e-3, 100, 1e-5): end + 0.5 (1 + cos(pi step / 100)) (init - end) */
    s = (av_lr_schedule){.kind = AV_LR_COSINE, .args = {1e-3, 100, 1e-5}, .nargs = 3};
    CHECK_OK(av_lr_validate(&s));
    CHECK_NEAR(av_lr_at(&s, 0), 1e-3, 1e-15);
    CHECK_NEAR(av_lr_at(&s, 50), 1e-5 + 0.5 * (1e-3 - 1e-5), 1e-15);
    CHECK_NEAR(av_lr_at(&s, 25), 1e-5 + 0.5 * (1 + cos(M_PI / 4)) * (1e-3 - 1e-5), 1e-15);
    CHECK_NEAR(av_lr_at(&s, 100), 1e-5, 1e-15);
    CHECK_NEAR(av_lr_at(&s, 500), 1e-5, 1e-15);
    /* warmup 10 from 0: linear 0 -> 1e-3 over steps 0..10, cosine from step 11 at its step 0 */
    s.warmup = 10;
    s.warmup_init = 0;
    CHECK_NEAR(av_lr_at(&s, 0), 0.0, 1e-18);
    CHECK_NEAR(av_lr_at(&s, 5), 5e-4, 1e-15);
    CHECK_NEAR(av_lr_at(&s, 10), 1e-3, 1e-15);
    CHECK_NEAR(av_lr_at(&s, 11), 1e-3, 1e-15);
    CHECK_NEAR(av_lr_at(&s, 61), 1e-5 + 0.5 * (1e-3 - 1e-5), 1e-15);
    /* linear_schedule(1e-3, 0, 10) */
    s = (av_lr_schedule){.kind = AV_LR_LINEAR, .args = {1e-3, 0, 10}, .nargs = 3};
    CHECK_NEAR(av_lr_at(&s, 3), 7e-4, 1e-15);
    CHECK_NEAR(av_lr_at(&s, 20), 0.0, 1e-18);
    s = (av_lr_schedule){.kind = AV_LR_STEP, .args = {1.0, 0.5, 3}, .nargs = 3};
    CHECK_NEAR(av_lr_at(&s, 7), 0.25, 1e-15);
    s = (av_lr_schedule){.kind = AV_LR_EXPONENTIAL, .args = {1.0, 0.9}, .nargs = 2};
    CHECK_NEAR(av_lr_at(&s, 2), 0.81, 1e-15);
    av_lr_kind k;
    CHECK(av_lr_kind_parse("cosine", &k) == AV_OK && k == AV_LR_COSINE, "parse cosine");
    CHECK(av_lr_kind_parse("warp", &k) != AV_OK, "unknown schedule");
    s = (av_lr_schedule){.kind = AV_LR_COSINE, .args = {1e-3, 0}, .nargs = 2};
    CHECK(av_lr_validate(&s) != AV_OK, "decay_steps 0 rejected");
}

int main(void) {
    const char *tmp = getenv("AV_TMP");
    snprintf(g_dir, sizeof g_dir, "%s/test_dataset.XXXXXX", tmp ? tmp : "/tmp");
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); return 1; }
    test_formats();
    test_errors();
    test_batches();
    test_schedule();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd)) {}
    return TEST_SUMMARY();
}
