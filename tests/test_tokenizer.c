/* Tokenizer tests: exact parity with HF tokenizers (tokenizer.json) and sentencepiece
 * (tokenizer.model) on every fixture text, decode/stream round trips, special tokens, byte-level
 * tokenizers (tests/fixtures, ids from HF tokenizers), tokenizer.json variants, and error handling. */
#include "core/memory.h"
#include "core/status.h"
#include "test.h"
#include <sys/stat.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int ids_of(const cJSON *arr, int32_t *out, int cap) {
    int n = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, arr) if (n < cap) out[n++] = (int32_t)x->valueint;
    return n;
}

static int same_ids(const int32_t *a, int na, const int32_t *b, int nb) {
    return na == nb && (na == 0 || !memcmp(a, b, (size_t)na * sizeof *a));
}

static char *stream_all(const av_tokenizer *t, const int32_t *ids, int n) {
    av_stream_decoder *s = av_stream_decoder_new(t);
    size_t cap = 64, len = 0, l;
    char *out = malloc(cap);
    for (int i = 0; i <= n; i++) {
        const char *p = i < n ? av_stream_decoder_push(s, ids[i], &l) : av_stream_decoder_flush(s, &l);
        /* never half a UTF-8 character: a chunk must not end inside one */
        if (l) {
            const unsigned char *u = (const unsigned char *)p;
            size_t k = l;
            while (k > 0 && (u[k - 1] & 0xC0) == 0x80) k--;
            if (k > 0 && u[k - 1] >= 0xC0) {
                int need = u[k - 1] >= 0xF0 ? 4 : u[k - 1] >= 0xE0 ? 3 : 2;
                CHECK((int)(l - k + 1) == need, "stream chunk ends inside a UTF-8 character");
            }
        }
        while (len + l + 1 > cap) cap *= 2, out = realloc(out, cap);
        memcpy(out + len, p, l);
        len += l;
    }
    out[len] = 0;
    av_stream_decoder_free(s);
    return out;
}

static int32_t ids_a[65536], ids_b[65536];

/* Checks every line of a jsonl: encode(text) == ids_key (hf or sp; hf_ids where the line has no ids_key), decode ==
 * decoded (text where the line has none), stream == decode. */
static void check_jsonl(const av_tokenizer *t, const char *path, const char *ids_key, const char *variant, int check_decode, const char *what) {
    av_jsonl j;
    if (av_jsonl_open(&j, path) != AV_OK) { CHECK(0, "%s", av_last_error()); return; }
    cJSON *o;
    int lines = 0, bad_enc = 0, bad_dec = 0, bad_stream = 0;
    while (av_jsonl_next(&j, &o) == 1) {
        if (variant && strcmp(av_json_str(o, "variant", ""), variant)) { cJSON_Delete(o); continue; }
        const char *text = av_json_str(o, "text", "");
        const cJSON *ids = av_json_get(o, ids_key);
        if (!ids) ids = av_json_get(o, "hf_ids"); /* tokenize_public.jsonl: sp_ids only where they differ */
        int ne = ids_of(ids, ids_a, 65536);
        int32_t *got;
        int ng;
        CHECK_OK(av_tokenizer_encode(t, text, strlen(text), 1, &got, &ng));
        if (!same_ids(got, ng, ids_a, ne)) {
            if (bad_enc++ < 3) {
                fprintf(stderr, "%s line %d: %s mismatch for %.80s\n  want:", what, lines + 1, ids_key, text);
                for (int i = 0; i < ne && i < 40; i++) fprintf(stderr, " %d", ids_a[i]);
                fprintf(stderr, "\n  got: ");
                for (int i = 0; i < ng && i < 40; i++) fprintf(stderr, " %d", got[i]);
                fprintf(stderr, "\n");
            }
        }
        free(got);
        if (check_decode) {
            const char *want = av_json_str(o, "decoded", text); /* absent: the text itself */
            char *dec = NULL;
            CHECK_OK(av_tokenizer_decode(t, ids_a, ne, 1, &dec));
            if (!dec || strcmp(dec, want)) {
                if (bad_dec++ < 3) fprintf(stderr, "%s line %d: decode '%s' != '%s'\n", what, lines + 1, dec ? dec : "(null)", want);
            }
            char *st = stream_all(t, ids_a, ne);
            if (!dec || strcmp(st, dec)) {
                if (bad_stream++ < 3) fprintf(stderr, "%s line %d: stream '%s' != '%s'\n", what, lines + 1, st, dec ? dec : "(null)");
            }
            free(st);
            free(dec);
        }
        lines++;
        cJSON_Delete(o);
    }
    av_jsonl_close(&j);
    CHECK(lines > 0, "%s: no lines", what);
    CHECK(bad_enc == 0, "%s: %d/%d encodings differ from %s", what, bad_enc, lines, ids_key);
    CHECK(bad_dec == 0, "%s: %d/%d decodes differ", what, bad_dec, lines);
    CHECK(bad_stream == 0, "%s: %d/%d stream decodes differ", what, bad_stream, lines);
    printf("%s: %d texts checked\n", what, lines);
}

static void check_enc(const av_tokenizer *t, const char *text, int add, const int32_t *want, int nw) {
    int32_t *got;
    int ng;
    CHECK_OK(av_tokenizer_encode(t, text, strlen(text), add, &got, &ng));
    CHECK(same_ids(got, ng, want, nw), "encode('%s') gave %d ids (want %d), first %d", text, ng, nw, ng ? got[0] : -1);
    free(got);
}

static void check_dec(const av_tokenizer *t, const int32_t *ids, int n, int skip, const char *want) {
    char *s = NULL;
    CHECK_OK(av_tokenizer_decode(t, ids, n, skip, &s));
    CHECK(s && !strcmp(s, want), "decode gave '%s', want '%s'", s ? s : "(null)", want);
    char *st = stream_all(t, ids, n);
    if (skip) CHECK(s && !strcmp(st, s), "stream gave '%s', decode '%s'", st, s ? s : "");
    free(st);
    free(s);
}

/* random id sequences: streaming must equal full decode (incl. invalid byte runs) */
static void check_stream_random(const av_tokenizer *t, const char *what) {
    unsigned r = 12345;
    int bad = 0, nv = av_tokenizer_vocab_size(t);
    for (int it = 0; it < 300; it++) {
        int n = 1 + it % 40;
        for (int i = 0; i < n; i++) {
            r = r * 1103515245u + 12345u;
            int id = (int)((r >> 8) % (unsigned)nv);
            if (it % 3 == 0) id = 3 + (int)((r >> 4) % 256u); /* byte tokens on Llama / byte symbols */
            ids_a[i] = id;
        }
        char *s = NULL;
        CHECK_OK(av_tokenizer_decode(t, ids_a, n, 1, &s));
        char *st = stream_all(t, ids_a, n);
        if (!s || strcmp(s, st)) bad++;
        free(s);
        free(st);
    }
    CHECK(bad == 0, "%s: %d random sequences stream differently", what, bad);
}

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fwrite(data, 1, n, f);
    fclose(f);
}

static void expect_load_error(const char *dir, int force_spm, const char *what) {
    av_tokenizer *t = NULL;
    av_status s = av_tokenizer_load(&t, dir, force_spm);
    CHECK(s != AV_OK && t == NULL, "%s: expected an error", what);
    const char *e = av_last_error();
    CHECK(s == AV_OK || (strlen(e) > 0 && !strchr(e, '\n')), "%s: error line '%s'", what, e);
    av_tokenizer_free(t);
}

static void test_errors(const char *l2dir) {
    char tmp[] = "/tmp/av_tok_test.XXXXXX", path[4200];
    if (!mkdtemp(tmp)) { CHECK(0, "mkdtemp"); return; }
    expect_load_error("/nonexistent/dir", 0, "missing dir");
    expect_load_error(tmp, 0, "empty dir");
    snprintf(path, sizeof path, "%s/tokenizer.json", tmp);
    write_file(path, "{ \"model\": ", 11);
    expect_load_error(tmp, 0, "malformed json");
    write_file(path, "[1,2]", 5);
    expect_load_error(tmp, 0, "json not an object");
    const char *wp = "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}";
    write_file(path, wp, strlen(wp));
    expect_load_error(tmp, 0, "WordPiece");
    const char *ug = "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}";
    write_file(path, ug, strlen(ug));
    expect_load_error(tmp, 0, "Unigram");
    const char *bm = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}";
    write_file(path, bm, strlen(bm));
    expect_load_error(tmp, 0, "merge result missing");
    const char *bx = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"[a-z]+\"}, \"behavior\": \"Isolated\"}}";
    write_file(path, bx, strlen(bx));
    expect_load_error(tmp, 0, "unknown regex");
    /* truncated copies of the real files */
    char *js = NULL, *sp = NULL;
    size_t njs = 0, nsp = 0;
    char src[4200];
    snprintf(src, sizeof src, "%s/tokenizer.json", l2dir);
    if (av_file_read(src, &js, &njs) == AV_OK) {
        size_t cuts[] = {1, 100, 5000, njs / 2, njs - 2};
        for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
            write_file(path, js, cuts[k]);
            expect_load_error(tmp, 0, "truncated tokenizer.json");
        }
        free(js);
    }
    unlink(path);
    snprintf(src, sizeof src, "%s/tokenizer.model", l2dir);
    snprintf(path, sizeof path, "%s/tokenizer.model", tmp);
    if (av_file_read(src, &sp, &nsp) == AV_OK) {
        int crashed = 0;
        for (size_t cut = 0; cut < nsp; cut += cut < 64 ? 1 : cut < 4096 ? 37 : 7919) {
            write_file(path, sp, cut);
            av_tokenizer *t = NULL;
            av_status s = av_tokenizer_load(&t, tmp, 1);
            if (s == AV_OK) { crashed++; av_tokenizer_free(t); }
        }
        CHECK(crashed == 0, "%d truncated tokenizer.model loads succeeded", crashed);
        /* flipped bytes: must not crash (may load) */
        unsigned r = 7;
        for (int it = 0; it < 50; it++) {
            char *c = malloc(nsp);
            memcpy(c, sp, nsp);
            for (int k = 0; k < 20; k++) { r = r * 1103515245u + 12345u; c[(r >> 4) % nsp] = (char)(r >> 20); }
            write_file(path, c, nsp);
            av_tokenizer *t = NULL;
            if (av_tokenizer_load(&t, tmp, 1) == AV_OK) {
                int32_t *ids;
                int n;
                if (av_tokenizer_encode(t, "hello world", 11, 1, &ids, &n) == AV_OK) {
                    char *d;
                    if (av_tokenizer_decode(t, ids, n, 0, &d) == AV_OK) free(d);
                    free(ids);
                }
                av_tokenizer_free(t);
            }
            free(c);
        }
        free(sp);
        write_file(path, "\x0a\x05\x0a\x03\x61\x62", 6);
        expect_load_error(tmp, 1, "garbage tokenizer.model");
    }
    unlink(path);
    rmdir(tmp);
}

/* Llama-2 tokenizer.json with other pre-tokenizer/normalizer/decoder settings (tests/fixtures). */
static void test_variants(const char *l2json) {
    cJSON *base;
    if (av_json_load(l2json, &base) != AV_OK) { CHECK(0, "%s", av_last_error()); return; }
    char tmp[] = "/tmp/av_tok_var.XXXXXX", path[4200];
    if (!mkdtemp(tmp)) { cJSON_Delete(base); return; }
    const char *names[] = {"legacy", "first_split", "never"};
    const char *patches[] = {
        "{\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", \"prepend\": \"\\u2581\"}, {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\\u2581\"}]}, \"pre_tokenizer\": null}",
        "{\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"first\", \"split\": true}}",
        "{\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"never\", \"split\": false}, \"decoder\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"never\", \"split\": false}}",
    };
    for (int v = 0; v < 3; v++) {
        cJSON *d = cJSON_Duplicate(base, 1), *p = cJSON_Parse(patches[v]), *it;
        cJSON_ArrayForEach(it, p) cJSON_ReplaceItemInObjectCaseSensitive(d, it->string, cJSON_Duplicate(it, 1));
        char *txt = cJSON_PrintUnformatted(d);
        snprintf(path, sizeof path, "%s/tokenizer.json", tmp);
        write_file(path, txt, strlen(txt));
        free(txt);
        cJSON_Delete(p);
        cJSON_Delete(d);
        av_tokenizer *t = NULL;
        CHECK_OK(av_tokenizer_load(&t, tmp, 0));
        if (t) check_jsonl(t, "tests/fixtures/llama2_variants.jsonl", "ids", names[v], 1, names[v]);
        av_tokenizer_free(t);
    }
    unlink(path);
    rmdir(tmp);
    cJSON_Delete(base);
}

static void test_builtin(void) {
    char tmp[] = "/tmp/av_tok_bi.XXXXXX";
    if (!mkdtemp(tmp)) return;
    CHECK_OK(av_tokenizer_write_builtin(tmp));
    av_tokenizer *t = NULL;
    CHECK_OK(av_tokenizer_load(&t, tmp, 0));
    if (t) {
        const char *text = "the cat sat on the mat. Ünïcödé 😀!";
        int32_t *ids;
        int n;
        CHECK_OK(av_tokenizer_encode(t, text, strlen(text), 1, &ids, &n));
        CHECK(n > 1 && ids[0] == 1, "builtin: BOS first");
        CHECK(n < (int)strlen(text), "builtin: merges applied (%d ids)", n);
        char *d = NULL;
        CHECK_OK(av_tokenizer_decode(t, ids, n, 1, &d));
        CHECK(d && !strcmp(d, text), "builtin round trip: '%s'", d ? d : "");
        free(d);
        free(ids);
        CHECK(av_tokenizer_bos_id(t) == 1 && av_tokenizer_eos_id(t) == 2, "builtin bos/eos");
        CHECK(av_tokenizer_vocab_size(t) >= 259, "builtin vocab");
    }
    av_tokenizer_free(t);
    char p[4200];
    snprintf(p, sizeof p, "%s/tokenizer.json", tmp); unlink(p);
    snprintf(p, sizeof p, "%s/tokenizer_config.json", tmp); unlink(p);
    rmdir(tmp);
}

int main(void) {
    test_builtin();
    const char *bl[] = {"llama3", "gpt2", "qwen2"};
    for (int k = 0; k < 3; k++) {
        char dir[256], exp[256];
        snprintf(dir, sizeof dir, "tests/fixtures/tok_%s", bl[k]);
        snprintf(exp, sizeof exp, "tests/fixtures/tok_%s/expected.jsonl", bl[k]);
        av_tokenizer *t = NULL;
        CHECK_OK(av_tokenizer_load(&t, dir, 0));
        if (!t) continue;
        check_jsonl(t, exp, "ids", NULL, 1, bl[k]);
        check_stream_random(t, bl[k]);
        av_tokenizer_free(t);
    }
    const char *l2 = test_fixture("llama2-tokenizer");
    if (access(l2, R_OK)) {
        CHECK(0, "missing fixture %s", l2);
        return TEST_SUMMARY();
    }
    char l2dir[4096], pub[4096];
    snprintf(l2dir, sizeof l2dir, "%s", l2);
    snprintf(pub, sizeof pub, "%s", test_fixture("tokenize_public.jsonl"));
    double t0 = now_s();
    av_tokenizer *hf = NULL, *sp = NULL;
    CHECK_OK(av_tokenizer_load(&hf, l2dir, 0));
    double t1 = now_s();
    CHECK_OK(av_tokenizer_load(&sp, l2dir, 1));
    double t2 = now_s();
    if (!hf || !sp) return TEST_SUMMARY();
    printf("load: tokenizer.json %.1f ms, tokenizer.model %.1f ms\n", (t1 - t0) * 1e3, (t2 - t1) * 1e3);
    CHECK(av_tokenizer_vocab_size(hf) == 32000 && av_tokenizer_vocab_size(sp) == 32000, "vocab sizes");
    CHECK(av_tokenizer_bos_id(hf) == 1 && av_tokenizer_eos_id(hf) == 2, "hf bos/eos");
    CHECK(av_tokenizer_bos_id(sp) == 1 && av_tokenizer_eos_id(sp) == 2, "spm bos/eos");
    CHECK(!strcmp(av_tokenizer_bos_str(hf), "<s>") && !strcmp(av_tokenizer_eos_str(hf), "</s>"), "bos/eos strings");
    CHECK(av_tokenizer_token_id(hf, "<0x0A>") == 13 && av_tokenizer_is_special(hf, 2) && !av_tokenizer_is_special(hf, 13), "pieces");
    CHECK(!strcmp(av_tokenizer_piece(hf, 22172), "\xE2\x96\x81hello"), "piece text");

    double t3 = now_s();
    check_jsonl(hf, pub, "hf_ids", NULL, 1, "tokenizer.json");
    double t4 = now_s();
    check_jsonl(sp, pub, "sp_ids", NULL, 0, "tokenizer.model");
    double t5 = now_s();
    printf("encode+decode+stream of all texts: tokenizer.json %.1f ms; encode tokenizer.model %.1f ms\n", (t4 - t3) * 1e3, (t5 - t4) * 1e3);

    /* special tokens and edge cases (ids from HF tokenizers / sentencepiece) */
    check_enc(hf, "", 1, (int32_t[]){1}, 1);
    check_enc(hf, "", 0, NULL, 0);
    check_enc(hf, " ", 1, (int32_t[]){1, 29871}, 2);
    check_enc(hf, "  hello", 1, (int32_t[]){1, 259, 12199}, 3);
    check_enc(hf, "<s></s>", 1, (int32_t[]){1, 1, 2}, 3);
    check_enc(hf, "hello</s>", 1, (int32_t[]){1, 22172, 2}, 3);
    check_enc(hf, "</s>world", 1, (int32_t[]){1, 2, 3186}, 3);
    check_enc(hf, "x<s>", 1, (int32_t[]){1, 921, 1}, 3);
    check_enc(hf, "<unk>", 0, (int32_t[]){0}, 1);
    check_enc(sp, "<s></s>", 1, (int32_t[]){1, 529, 29879, 2565, 29879, 29958}, 6);
    check_enc(sp, " hello", 1, (int32_t[]){1, 29871, 22172}, 3);
    check_enc(sp, "", 1, (int32_t[]){1}, 1);
    check_dec(hf, (int32_t[]){1, 29871, 0xE2 + 3, 0x82 + 3, 29871}, 5, 1, "\xEF\xBF\xBD\xEF\xBF\xBD ");
    check_dec(hf, (int32_t[]){0xE2 + 3, 0x82 + 3, 0xAC + 3, 29882}, 4, 1, "\xE2\x82\xAC" "h");
    check_dec(hf, (int32_t[]){1, 22172}, 2, 0, "<s> hello");
    check_dec(hf, (int32_t[]){29871, 29871, 13}, 3, 1, " \n");
    check_dec(hf, (int32_t[]){29871, 2, 29871, 1}, 4, 1, " ");
    check_dec(sp, (int32_t[]){1, 22172, 2}, 3, 1, "hello");
    check_stream_random(hf, "llama2 tokenizer.json");
    char *bad = NULL;
    CHECK(av_tokenizer_decode(hf, (int32_t[]){5, 99999}, 2, 1, &bad) == AV_ERR_ARG && !bad, "out-of-range id");
    /* invalid UTF-8 input is encoded as U+FFFD, without crashing */
    int32_t *ids;
    int n;
    CHECK_OK(av_tokenizer_encode(hf, "a\xff\xc3", 3, 1, &ids, &n));
    free(ids);
    CHECK_OK(av_tokenizer_encode(sp, "a\xff\xc3", 3, 1, &ids, &n));
    free(ids);

    /* chat template golden: HF ids of the rendered prompt, no BOS */
    cJSON *g;
    const char *gp = test_fixture("chat_template_golden.json");
    if (av_json_load(gp, &g) == AV_OK) {
        const char *prompt = av_json_str(g, "prompt", "");
        int ne = ids_of(av_json_get(g, "ids"), ids_b, 65536);
        CHECK_OK(av_tokenizer_encode(hf, prompt, strlen(prompt), 0, &ids, &n));
        CHECK(same_ids(ids, n, ids_b, ne), "chat golden ids differ (%d vs %d)", n, ne);
        free(ids);
        cJSON_Delete(g);
    } else {
        CHECK(0, "%s", av_last_error());
    }

    /* the tiny-llama model dir's tokenizer.json */
    av_tokenizer *tl = NULL;
    CHECK_OK(av_tokenizer_load(&tl, test_fixture("tiny-llama"), 0));
    if (tl) check_jsonl(tl, pub, "hf_ids", NULL, 0, "tiny-llama tokenizer.json");
    av_tokenizer_free(tl);

    char l2json[4200];
    snprintf(l2json, sizeof l2json, "%s/tokenizer.json", l2dir);
    test_variants(l2json);
    test_errors(l2dir);
    av_tokenizer_free(hf);
    av_tokenizer_free(sp);
    return TEST_SUMMARY();
}
