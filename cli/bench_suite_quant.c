/* anvil bench, comprehensive suite's quantization part: the model as stored (bf16) and converted to
 * 8-, 4- and 3-bit (av_convert, MLX affine, group 64): size on disk, prompt and decode tokens/s, and
 * KL(bf16 || quantized), top-1 agreement and NLL over a real text (the quotes data) via av_kl_*. */
#include "bench.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>

/* Token ids of the quotes validation text (or deterministic ids when it cannot be read). */
static int text_ids(bench_ctx *b, av_tokenizer *tok, int T, int V, int32_t *out) {
    char p[4200];
    char *txt = NULL;
    int32_t *ids = NULL;
    int n = 0;
    av_path_join(p, sizeof p, b->data, "train.jsonl");
    if (av_file_read(p, &txt, NULL) == AV_OK && av_tokenizer_encode(tok, txt, strlen(txt), 1, &ids, &n) == AV_OK && n >= T) {
        memcpy(out, ids, sizeof(int32_t) * (size_t)T);
        for (int i = 0; i < T; i++)
            if (out[i] < 0 || out[i] >= V) out[i] = 1;
    } else {
        bench_ids(out, T, V, 11);
        n = 0;
    }
    free(txt);
    free(ids);
    return n >= T;
}

static int speed(bench_ctx *b, cJSON *res, av_model *m, int pp, int tg, double *pps, double *tps) {
    int V = av_model_config(m)->vocab_size, rc = 0;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(pp + 1));
    av_session *s = NULL;
    av_stepper *st = NULL;
    av_sampler_params g;
    av_sampler_params_default(&g);
    bench_ids(ids, pp + 1, V, 5);
    if (av_session_new(&s, m, pp + tg + 4, 512) != AV_OK || av_stepper_new(&st, s, &g) != AV_OK) { rc = bench_fail_lib(b, res, "session"); goto done; }
    if (av_session_forward(s, ids, 1) != AV_OK) { rc = bench_fail_lib(b, res, "warm-up"); goto done; }
    av_session_truncate(s, 0);
    double t0 = av_now();
    if (av_session_forward(s, ids, pp) != AV_OK) { rc = bench_fail_lib(b, res, "prefill"); goto done; }
    *pps = pp / (av_now() - t0);
    int32_t id = ids[pp];
    t0 = av_now();
    for (int i = 0; i < tg; i++)
        if (av_stepper_next(st, id, NULL, 0, i + 1 < tg, &id) != AV_OK) { rc = bench_fail_lib(b, res, "decode"); goto done; }
    *tps = tg / (av_now() - t0);
done:
    free(ids);
    av_stepper_free(st);
    av_session_free(s);
    return rc;
}

/* Bytes of the weight files (*.safetensors) in dir. */
static double dir_bytes(const char *dir) {
    double t = 0;
    char p[4200];
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        size_t l = strlen(e->d_name);
        struct stat st;
        if (l > 12 && !strcmp(e->d_name + l - 12, ".safetensors") && stat(av_path_join(p, sizeof p, dir, e->d_name), &st) == 0)
            t += (double)st.st_size;
    }
    if (d) closedir(d);
    return t;
}

int bench_comp_quant(bench_ctx *b, cJSON *res, cJSON *out) {
    if (!av_dir_exists(b->model)) {
        cJSON_AddStringToObject(res, "quant_status", "skipped: quantization converts a model directory (not a GGUF file)");
        return 0;
    }
    int pp = b->quick ? 32 : 128, tg = b->quick ? 8 : 16, T = b->quick ? 48 : 128, rc = 0;
    av_model *base = NULL;
    av_tokenizer *tok = NULL;
    av_session *sb = NULL;
    av_kl *kl = NULL;
    if (bench_load(b, res, &base, &tok)) return 1;
    const av_config *c = av_model_config(base);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)T);
    int real = text_ids(b, tok, T, c->vocab_size, ids);
    cJSON_AddStringToObject(res, "kl_text", real ? "data/quotes train.jsonl (first tokens)" : "deterministic token ids");
    if (av_session_new(&sb, base, T + 1, 64) != AV_OK) { rc = bench_fail_lib(b, res, "session"); goto done; }
    int bits[] = {0, 8, 4, 3};
    for (int i = 0; i < 4 && !rc; i++) {
        char qdir[4200], name[32];
        av_model *q = base;
        cJSON *o = cJSON_CreateObject();
        if (bits[i]) snprintf(name, sizeof name, "%d-bit", bits[i]);
        else snprintf(name, sizeof name, "%s", av_dtype_name(av_model_weight_dtype(base)));
        for (char *p = name; *p; p++) *p = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
        cJSON_AddStringToObject(o, "format", name);
        cJSON_AddItemToArray(out, o);
        bench_step(b, "quantization: %s", name);
        if (bits[i]) {
            snprintf(qdir, sizeof qdir, "%s/q%d", b->work, bits[i]);
            av_remove_tree(qdir);
            av_convert_opts co = {.quantize = 1, .bits = bits[i], .group = 64, .out_dtype = -1};
            av_convert_report cr;
            double t0 = av_now();
            if (av_convert(b->model, qdir, &co, &cr) != AV_OK) { rc = bench_fail_lib(b, res, "quantizing"); break; }
            bench_num(o, "convert_s", av_now() - t0);
            bench_num(o, "size_gb", dir_bytes(qdir) / 1e9);
            if (av_model_load(&q, qdir, av_model_backend(base)) != AV_OK) {
                /* e.g. the CUDA backend does not run quantized models yet */
                cJSON_AddStringToObject(o, "status", av_last_error());
                bench_log(b, "%s: %s", name, av_last_error());
                av_remove_tree(qdir);
                continue;
            }
        } else {
            bench_num(o, "size_gb", dir_bytes(b->model) / 1e9);
        }
        cJSON_AddStringToObject(o, "status", "ok");
        double pps = 0, tps = 0;
        rc = speed(b, res, q, pp, tg, &pps, &tps);
        if (!rc) {
            bench_num(o, "prompt_tokens_per_sec", pps);
            bench_num(o, "decode_tokens_per_sec", tps);
            if (bits[i]) {
                av_session *sq = NULL;
                av_kl_report r;
                if (av_kl_new(&kl) != AV_OK || av_session_new(&sq, q, T + 1, 64) != AV_OK || av_kl_window(kl, sb, sq, ids, T) != AV_OK ||
                    av_kl_result(kl, &r) != AV_OK)
                    rc = bench_fail_lib(b, res, "KL vs the unquantized model");
                else {
                    bench_num(o, "kl_mean", r.kl_mean);
                    bench_num(o, "kl_p99", r.kl_p99);
                    bench_num(o, "top1_agree", r.top1_agree);
                    bench_num(o, "ppl", exp(r.mean_nll));
                }
                av_session_free(sq);
                av_kl_free(kl);
                kl = NULL;
            } else {
                bench_num(o, "kl_mean", 0);
                bench_num(o, "top1_agree", 1);
            }
            bench_log(b, "%s: %.3f GB, prompt %.1f tokens/s, decode %.2f tokens/s, KL %.4g", name, bench_get(o, "size_gb"), pps, tps,
                      bench_get(o, "kl_mean"));
        }
        if (q != base) av_model_free(q);
        if (bits[i]) av_remove_tree(qdir);
    }
done:
    free(ids);
    av_session_free(sb);
    av_model_free(base);
    av_tokenizer_free(tok);
    return rc;
}
