/* anvil perplexity: mean next-token NLL and perplexity of a text file or a JSONL dataset, in
 * windows of --context tokens (one window = exactly HF's cross_entropy(logits[:-1], ids[1:])).
 * With --kl-base, also how far the model's next-token distributions are from a base model's over
 * the same windows (llama.cpp's --kl-divergence: KL mean / 99th percentile, top-1 agreement). */
#include "args.h"
#include "common.h"
#include "anvil.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Appends the token ids of one text (with BOS) to a growing array; prints the error and returns
 * non-zero on failure. */
static int add_text(const char *cmd, av_tokenizer *tok, const char *text, size_t len, int32_t **all, int *n, int *cap) {
    int32_t *ids;
    int k;
    if (av_tokenizer_encode(tok, text, len, 1, &ids, &k) != AV_OK) return av_cli_fail(cmd);
    if (*n + k > *cap) {
        *cap = (*n + k) * 2;
        int32_t *na = realloc(*all, sizeof(int32_t) * (size_t)*cap);
        if (!na) { free(ids); return av_cli_error(cmd, "out of memory"); }
        *all = na;
    }
    memcpy(*all + *n, ids, sizeof(int32_t) * (size_t)k);
    *n += k;
    free(ids);
    return 0;
}

/* The base model of --kl-base must share the vocabulary: same size and the same piece per id. */
static int same_vocab(const char *cmd, const char *base_dir, av_model *m, av_tokenizer *tok, av_model *bm, av_tokenizer *btok) {
    int v = av_model_config(m)->vocab_size, bv = av_model_config(bm)->vocab_size;
    if (v != bv) return av_cli_error(cmd, "%s: vocabulary of %d tokens, but the model has %d (--kl-base needs the same vocabulary)", base_dir, bv, v);
    int n = av_tokenizer_vocab_size(tok);
    if (n != av_tokenizer_vocab_size(btok))
        return av_cli_error(cmd, "%s: tokenizer of %d tokens, but the model's has %d (--kl-base needs the same vocabulary)", base_dir,
                            av_tokenizer_vocab_size(btok), n);
    for (int i = 0; i < n; i++) {
        const char *a = av_tokenizer_piece(tok, i), *b = av_tokenizer_piece(btok, i);
        if ((a || b) && (!a || !b || strcmp(a, b)))
            return av_cli_error(cmd, "%s: token %d differs from the model's (--kl-base needs the same vocabulary)", base_dir, i);
    }
    return 0;
}

/* --kl-base: both models over the same windows; prints the perplexity of the model and the KL figures. */
static int kl_run(const char *cmd, av_model *m, av_model *bm, const int32_t *all, int n, int context, int json) {
    av_session *s = NULL, *bs = NULL;
    av_kl *k = NULL;
    int ctx = context < n ? context : n, rc = 0;
    if (av_session_new(&s, m, ctx, 512) != AV_OK || av_session_new(&bs, bm, ctx, 512) != AV_OK || av_kl_new(&k) != AV_OK)
        rc = av_cli_fail(cmd);
    for (int w0 = 0; !rc && w0 < n - 1; w0 += context) {
        int len = n - w0 < context ? n - w0 : context;
        if (len < 2) break;
        if (av_kl_window(k, bs, s, all + w0, len) != AV_OK) rc = av_cli_fail(cmd);
        if (!json && n > context) fprintf(stderr, "\rwindow %d/%d", w0 / context + 1, (n - 1 + context - 1) / context);
    }
    av_kl_report r;
    if (!rc && av_kl_result(k, &r) != AV_OK) rc = av_cli_fail(cmd);
    if (!rc) {
        if (!json && n > context) fputc('\n', stderr);
        if (json)
            printf("{\"tokens\":%d,\"mean_nll\":%.9g,\"ppl\":%.9g,\"base_ppl\":%.9g,\"kl_mean\":%.9g,\"kl_p99\":%.9g,\"kl_max\":%.9g,"
                   "\"top1_agree\":%.9g,\"positions\":%lld}\n",
                   n, r.mean_nll, exp(r.mean_nll), exp(r.base_mean_nll), r.kl_mean, r.kl_p99, r.kl_max, r.top1_agree, r.positions);
        else
            printf("Tokens: %d\nMean NLL: %.6f\nPerplexity: %.4f\nBase perplexity: %.4f\nKL mean: %.6g\nKL p99: %.6g\n"
                   "KL max: %.6g\nTop-1 agreement: %.4f (%lld positions)\n",
                   n, r.mean_nll, exp(r.mean_nll), exp(r.base_mean_nll), r.kl_mean, r.kl_p99, r.kl_max, r.top1_agree, r.positions);
    }
    av_kl_free(k);
    av_session_free(s);
    av_session_free(bs);
    return rc;
}

int av_cmd_perplexity(int argc, char **argv) {
    const char *cmd = "perplexity", *text_file = NULL, *data = NULL, *kl_base = NULL;
    av_cli_model_opts mo = {0};
    int max_tokens = 0, context = 0, json = 0, llama_chunks = 0;
    av_opt opts[] = {
        {"model", AV_OPT_STR, &mo.model, "model directory (HF layout)", 0, 0, NULL},
        {"adapter-path", AV_OPT_STR, &mo.adapter, "LoRA adapter (MLX or PEFT) to apply", 0, 0, NULL},
        {"text-file", AV_OPT_STR, &text_file, "text file, tokenized verbatim with BOS", 0, 0, NULL},
        {"data", AV_OPT_STR, &data, "JSONL file or directory with test.jsonl/valid.jsonl ({\"text\":...} lines)", 0, 0, NULL},
        {"max-tokens", AV_OPT_INT, &max_tokens, "keep the first N tokens (default: all)", 1, 1e9, NULL},
        {"context", AV_OPT_INT, &context, "window length (default: model max_position_embeddings)", 2, 1e6, NULL},
        {"device", AV_OPT_STR, &mo.device, "cpu or cuda (default: cuda when a GPU is present)", 0, 0, NULL},
        {"attention", AV_OPT_STR, &mo.attention, "attention implementation: flash (tiled, no score matrix), standard (scores materialised) or auto (default: flash for long prompts)", 0, 0, NULL},
        {"dtype", AV_OPT_STR, &mo.dtype, "GPU compute: bf16 (default, tensor cores) or f32 (exact)", 0, 0, NULL},
        {"threads", AV_OPT_INT, &mo.threads, "CPU threads (default: all cores)", 1, 1024, NULL},
        {"kl-base", AV_OPT_STR, &kl_base, "also compare with this base model (e.g. the unquantized one): KL(base || model) mean and p99, top-1 agreement", 0, 0, NULL},
        {"llama-chunks", AV_OPT_FLAG, &llama_chunks, "score as llama.cpp's llama-perplexity does: whole chunks of --context tokens, each starting with BOS, only the second half of each scored", 0, 0, NULL},
        {"json", AV_OPT_FLAG, &json, "print {\"tokens\":N,\"mean_nll\":x,\"ppl\":y} (+ \"kl_mean\", \"kl_p99\", \"top1_agree\", ... with --kl-base)", 0, 0, NULL},
        {NULL, 0, NULL, NULL, 0, 0, NULL},
    };
    int r = av_args_parse(argc, argv, opts, cmd, "Mean next-token NLL and perplexity of a text.");
    if (r) return r == 1 ? 0 : 2;
    if (!!text_file == !!data) return av_cli_error(cmd, "give exactly one of --text-file F or --data DIR_OR_JSONL");
    av_model *m;
    av_tokenizer *tok;
    if (av_cli_load(cmd, &mo, &m, &tok)) return 1;
    av_model *bm = NULL;
    av_tokenizer *btok = NULL;
    if (kl_base) {
        av_cli_model_opts bo = mo;
        bo.model = kl_base;
        bo.adapter = NULL;
        if (av_cli_load(cmd, &bo, &bm, &btok) || same_vocab(cmd, kl_base, m, tok, bm, btok)) {
            av_model_free(bm);
            av_tokenizer_free(btok);
            av_model_free(m);
            av_tokenizer_free(tok);
            return 1;
        }
    }
    int32_t *all = NULL;
    int n = 0, cap = 0, rc = 0;
    if (text_file) {
        size_t len;
        char *txt = av_cli_read_file(cmd, text_file, &len);
        if (!txt) rc = 1;
        else rc = add_text(cmd, tok, txt, len, &all, &n, &cap);
        free(txt);
    } else {
        char path[4200];
        snprintf(path, sizeof path, "%s", data);
        if (av_dir_exists(data)) {
            av_path_join(path, sizeof path, data, "test.jsonl");
            if (!av_file_exists(path)) av_path_join(path, sizeof path, data, "valid.jsonl");
        }
        av_jsonl j;
        if (av_jsonl_open(&j, path) != AV_OK) rc = av_cli_fail(cmd);
        cJSON *o;
        int got;
        while (!rc && (got = av_jsonl_next(&j, &o)) != 0) {
            if (got < 0) { rc = av_cli_fail(cmd); break; }
            const char *t = av_json_str(o, "text", NULL);
            if (!t) rc = av_cli_error(cmd, "%s:%d: line has no \"text\" string", path, j.lineno);
            else rc = add_text(cmd, tok, t, strlen(t), &all, &n, &cap);
            cJSON_Delete(o);
            if (max_tokens && n >= max_tokens) break;
        }
        if (j.f) av_jsonl_close(&j);
    }
    if (!rc && max_tokens && n > max_tokens) n = max_tokens;
    if (!rc && n < 2) rc = av_cli_error(cmd, "need at least 2 tokens, got %d", n);
    if (!context) context = av_model_config(m)->max_position_embeddings;
    if (!rc && llama_chunks && bm) rc = av_cli_error(cmd, "--llama-chunks does not combine with --kl-base");
    if (!rc && llama_chunks && n < 2 * context)
        rc = av_cli_error(cmd, "--llama-chunks: need at least %d tokens (2 x --context %d), got %d", 2 * context, context, n);
    if (!rc && llama_chunks) n -= n % context; /* whole chunks only */
    av_session *s = NULL;
    if (!rc && bm) rc = kl_run(cmd, m, bm, all, n, context, json) ? 1 : 0;
    if (!rc && !bm && av_session_new(&s, m, context < n ? context : n, 512) != AV_OK) rc = av_cli_fail(cmd);
    double total = 0;
    long long count = 0;
    float *row_nll = NULL;
    /* non-overlapping windows; each window predicts its own tokens 1..len-1 */
    for (int w0 = 0; !rc && !bm && w0 < n - 1; w0 += context) {
        int len = n - w0 < context ? n - w0 : context;
        if (len < 2) break;
        double sum = 0;
        if (llama_chunks) { /* llama-perplexity: BOS replaces each chunk's first token; predictions from context/2 on */
            if (av_tokenizer_bos_id(tok) >= 0) all[w0] = av_tokenizer_bos_id(tok);
            if (!row_nll && !(row_nll = malloc(sizeof(float) * (size_t)context))) { rc = av_cli_error(cmd, "out of memory"); break; }
            if (av_session_nll(s, all + w0, len, &sum, row_nll, NULL) != AV_OK) { rc = av_cli_fail(cmd); break; }
            sum = 0;
            for (int j = context / 2; j < len - 1; j++) sum += row_nll[j];
            count += len - 1 - context / 2;
        } else {
            if (av_session_nll(s, all + w0, len, &sum, NULL, NULL) != AV_OK) { rc = av_cli_fail(cmd); break; }
            count += len - 1;
        }
        total += sum;
        if (!json && n > context) fprintf(stderr, "\rwindow %d/%d", w0 / context + 1, (n - 1 + context - 1) / context);
    }
    if (!rc && !bm) {
        if (!json && n > context) fputc('\n', stderr);
        double mean = total / (double)count;
        if (json) printf("{\"tokens\":%d,\"mean_nll\":%.9g,\"ppl\":%.9g}\n", n, mean, exp(mean));
        else printf("Tokens: %d\nMean NLL: %.6f\nPerplexity: %.4f\n", n, mean, exp(mean));
    }
    free(all);
    free(row_nll);
    av_session_free(s);
    av_model_free(m);
    av_tokenizer_free(tok);
    av_model_free(bm);
    av_tokenizer_free(btok);
    return rc;
}
