/* anvil tokenize / detokenize: text -> JSON array of ids (one text, a file's bytes, or every
 * "text" of a JSONL file, one array per line), and ids -> text, with the model directory's
 * tokenizer.json or (--spm) tokenizer.model. */
#include "args.h"
#include "anvil.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_ids(const int32_t *ids, int n) {
    putchar('[');
    for (int i = 0; i < n; i++) printf(i ? ",%d" : "%d", ids[i]);
    fputs("]\n", stdout);
}

static int encode_print(const char *cmd, const av_tokenizer *t, const char *text, size_t len, int bos) {
    int32_t *ids;
    int n;
    if (av_tokenizer_encode(t, text, len, bos, &ids, &n) != AV_OK) return av_cli_fail(cmd);
    print_ids(ids, n);
    free(ids);
    return 0;
}

static int run_jsonl(const char *cmd, const av_tokenizer *t, const char *path, int bos) {
    av_jsonl j;
    if (av_jsonl_open(&j, path) != AV_OK) return av_cli_fail(cmd);
    cJSON *o;
    int r, rc = 0;
    while ((r = av_jsonl_next(&j, &o)) == 1) {
        const cJSON *txt = av_json_get(o, "text");
        if (!cJSON_IsString(txt)) {
            fflush(stdout);
            rc = av_cli_error(cmd, "%s:%d: no \"text\" string", path, j.lineno);
            cJSON_Delete(o);
            break;
        }
        rc = encode_print(cmd, t, txt->valuestring, strlen(txt->valuestring), bos);
        cJSON_Delete(o);
        if (rc) break;
    }
    if (r < 0) { fflush(stdout); rc = av_cli_fail(cmd); }
    av_jsonl_close(&j);
    return rc;
}

int av_cmd_tokenize(int argc, char **argv) {
    const char *cmd = "tokenize", *model = NULL, *text = NULL, *file = NULL, *jsonl = NULL;
    int no_bos = 0, spm = 0;
    av_opt opts[] = {
        {"model", AV_OPT_STR, &model, "model or tokenizer directory", 0, 0, "m"},
        {"text", AV_OPT_STR, &text, "text to tokenize", 0, 0, NULL},
        {"file", AV_OPT_STR, &file, "tokenize this file's bytes verbatim", 0, 0, NULL},
        {"jsonl", AV_OPT_STR, &jsonl, "tokenize the \"text\" of every line (one array per line)", 0, 0, NULL},
        {"no-bos", AV_OPT_FLAG, &no_bos, "do not add BOS/EOS", 0, 0, NULL},
        {"spm", AV_OPT_FLAG, &spm, "use tokenizer.model (SentencePiece) even if tokenizer.json exists", 0, 0, NULL},
        {NULL, 0, NULL, NULL, 0, 0, NULL},
    };
    int r = av_args_parse(argc, argv, opts, cmd, "Print the token ids of a text as a JSON array.");
    if (r) return r == 1 ? 0 : 2;
    if (!model) return av_cli_error(cmd, "--model is required");
    if ((text != NULL) + (file != NULL) + (jsonl != NULL) != 1) return av_cli_error(cmd, "give exactly one of --text, --file, --jsonl");
    av_tokenizer *t;
    if (av_tokenizer_load(&t, model, spm) != AV_OK) return av_cli_fail(cmd);
    static char obuf[1 << 16];
    setvbuf(stdout, obuf, _IOFBF, sizeof obuf);
    int rc;
    if (text) {
        rc = encode_print(cmd, t, text, strlen(text), !no_bos);
    } else if (file) {
        char *data;
        size_t len;
        if (av_file_read(file, &data, &len) != AV_OK) rc = av_cli_fail(cmd);
        else { rc = encode_print(cmd, t, data, len, !no_bos); free(data); }
    } else {
        rc = run_jsonl(cmd, t, jsonl, !no_bos);
    }
    av_tokenizer_free(t);
    if (fflush(stdout) && !rc) rc = av_cli_error(cmd, "cannot write to stdout");
    return rc;
}

/* Parses "[1,2,3]", "1 2 3" or "1, 2, 3"; returns count or -1 (message in *err). */
static int parse_ids(const char *s, int32_t **out, const char **err) {
    int n = 0, cap = 64;
    int32_t *v = malloc((size_t)cap * sizeof *v);
    *err = NULL;
    if (!v) { *err = "out of memory"; return -1; }
    while (*s) {
        if (strchr("[], \t\r\n", *s)) { s++; continue; }
        char *end;
        long x = strtol(s, &end, 10);
        if (end == s || x < 0 || x > 0x7FFFFFFF || (*end && !strchr("[], \t\r\n", *end))) { *err = "ids must be non-negative integers, as [1,2,3] or \"1 2 3\""; free(v); return -1; }
        if (n == cap) {
            int32_t *w = realloc(v, (size_t)(cap *= 2) * sizeof *v);
            if (!w) { free(v); *err = "out of memory"; return -1; }
            v = w;
        }
        v[n++] = (int32_t)x;
        s = end;
    }
    *out = v;
    return n;
}

int av_cmd_detokenize(int argc, char **argv) {
    const char *cmd = "detokenize", *model = NULL, *ids_s = NULL, *file = NULL;
    int spm = 0, skip = 0;
    av_opt opts[] = {
        {"model", AV_OPT_STR, &model, "model or tokenizer directory", 0, 0, "m"},
        {"ids", AV_OPT_STR, &ids_s, "ids as \"[1,2,3]\" or \"1 2 3\"", 0, 0, NULL},
        {"file", AV_OPT_STR, &file, "read the ids from this file", 0, 0, NULL},
        {"spm", AV_OPT_FLAG, &spm, "use tokenizer.model (SentencePiece) even if tokenizer.json exists", 0, 0, NULL},
        {"skip-special", AV_OPT_FLAG, &skip, "drop special tokens (BOS/EOS...)", 0, 0, NULL},
        {NULL, 0, NULL, NULL, 0, 0, NULL},
    };
    int r = av_args_parse(argc, argv, opts, cmd, "Print the text of token ids (followed by a newline).");
    if (r) return r == 1 ? 0 : 2;
    if (!model) return av_cli_error(cmd, "--model is required");
    if ((ids_s != NULL) + (file != NULL) != 1) return av_cli_error(cmd, "give exactly one of --ids, --file");
    char *data = NULL;
    if (file) {
        size_t len;
        if (av_file_read(file, &data, &len) != AV_OK) return av_cli_fail(cmd);
        ids_s = data;
    }
    int32_t *ids = NULL;
    const char *err;
    int n = parse_ids(ids_s, &ids, &err);
    free(data);
    if (n < 0) return av_cli_error(cmd, "%s%s%s", file ? file : "--ids", ": ", err);
    av_tokenizer *t;
    if (av_tokenizer_load(&t, model, spm) != AV_OK) { free(ids); return av_cli_fail(cmd); }
    char *text = NULL;
    int rc = 0;
    if (av_tokenizer_decode(t, ids, n, skip, &text) != AV_OK) rc = av_cli_fail(cmd);
    else { fputs(text, stdout); putchar('\n'); }
    free(text);
    free(ids);
    av_tokenizer_free(t);
    if (fflush(stdout) && !rc) rc = av_cli_error(cmd, "cannot write to stdout");
    return rc;
}
