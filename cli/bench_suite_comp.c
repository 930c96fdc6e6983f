/* anvil bench suite comprehensive: what the machine can do (matrix-product GFLOP/s at 3 sizes, read
 * bandwidth), inference at prompt lengths 32-256 and decode, quantization (bench_suite_quant.c),
 * memory and speed vs batch size (av_generate_batch), a 5-message chat through the chat engine
 * (time to first token, KV reuse), and a 3-epoch LoRA run. */
#include "bench.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

int bench_comp_quant(bench_ctx *b, cJSON *res, cJSON *out);

static void machine_part(bench_ctx *b, cJSON *res, const av_backend *be) {
    cJSON *mm = cJSON_AddArrayToObject(res, "matmul");
    int sz_quick[][3] = {{64, 512, 512}, {128, 1024, 1024}, {256, 2048, 2048}};
    int sz_full[][3] = {{128, 2048, 2048}, {512, 2048, 2048}, {512, 5632, 2048}};
    for (int i = 0; i < 3; i++) {
        int *s = b->quick ? sz_quick[i] : sz_full[i];
        double sec = 0;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "M", s[0]);
        cJSON_AddNumberToObject(o, "N", s[1]);
        cJSON_AddNumberToObject(o, "K", s[2]);
        cJSON_AddStringToObject(o, "weights", "bf16");
        if (av_matmul_time(be, s[0], s[1], s[2], AV_BF16, b->quick ? 3 : 5, &sec) == AV_OK) {
            bench_num(o, "seconds", sec);
            bench_num(o, "gflops", 2.0 * s[0] * s[1] * s[2] / sec / 1e9);
        } else {
            cJSON_AddStringToObject(o, "status", av_last_error());
        }
        bench_log(b, "matmul %dx%dx%d (bf16 weights): %.1f GFLOP/s", s[0], s[1], s[2], bench_get(o, "gflops"));
        cJSON_AddItemToArray(mm, o);
    }
    int mib = b->quick ? 256 : 1024;
    double bw = bench_read_bandwidth(mib, b->quick ? 3 : 5);
    cJSON *o = cJSON_AddObjectToObject(res, "bandwidth");
    cJSON_AddNumberToObject(o, "mib", mib);
    bench_num(o, "read_gbs", bw);
    bench_log(b, "read bandwidth over %d MiB: %.2f GB/s", mib, bw);
}

static int inference(bench_ctx *b, cJSON *res, av_model *m) {
    int lens[] = {32, 64, 128, 256}, V = av_model_config(m)->vocab_size, ng = b->quick ? 8 : 32, rc = 0;
    int32_t ids[300];
    bench_ids(ids, 300, V, 9);
    av_session *s = NULL;
    av_stepper *st = NULL;
    av_sampler_params g;
    av_sampler_params_default(&g);
    if (av_session_new(&s, m, 300, 512) != AV_OK || av_stepper_new(&st, s, &g) != AV_OK) { rc = bench_fail_lib(b, res, "session"); goto done; }
    if (av_session_forward(s, ids, 1) != AV_OK) { rc = bench_fail_lib(b, res, "warm-up"); goto done; }
    cJSON *arr = cJSON_AddArrayToObject(res, "inference");
    for (int i = 0; i < 4; i++) {
        double best = 1e30;
        for (int r = 0; r < 2; r++) {
            av_session_truncate(s, 0);
            double t0 = av_now();
            if (av_session_forward(s, ids, lens[i]) != AV_OK) { rc = bench_fail_lib(b, res, "prefill"); goto done; }
            double dt = av_now() - t0;
            if (dt < best) best = dt;
        }
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "prompt_tokens", lens[i]);
        bench_num(o, "prompt_tokens_per_sec", lens[i] / best);
        bench_num(o, "prompt_s", best);
        cJSON_AddItemToArray(arr, o);
        bench_log(b, "prompt %d tokens: %.1f tokens/s (best of 2)", lens[i], lens[i] / best);
    }
    int32_t id = ids[0];
    av_session_truncate(s, 0);
    double t0 = av_now();
    for (int i = 0; i < ng; i++)
        if (av_stepper_next(st, id, NULL, 0, i + 1 < ng, &id) != AV_OK) { rc = bench_fail_lib(b, res, "decode"); goto done; }
    double dt = av_now() - t0;
    cJSON *d = cJSON_AddObjectToObject(res, "decode");
    cJSON_AddNumberToObject(d, "tokens", ng);
    bench_num(d, "tokens_per_sec", ng / dt);
    bench_num(d, "weight_gbs", ng / dt * (double)av_model_weight_bytes(m) / 1e9);
    bench_log(b, "decode %d tokens: %.2f tokens/s", ng, ng / dt);
done:
    av_stepper_free(st);
    av_session_free(s);
    return rc;
}

static int batches(bench_ctx *b, cJSON *res, av_model *m, av_tokenizer *tok) {
    int sizes[] = {1, 2, 4, 8}, V = av_model_config(m)->vocab_size, np = 16, rc = 0;
    int32_t rows[8][16];
    const int32_t *pr[8];
    int npr[8];
    for (int i = 0; i < 8; i++) {
        bench_ids(rows[i], np, V, 100 + (unsigned)i);
        pr[i] = rows[i];
        npr[i] = np;
    }
    cJSON *arr = cJSON_AddArrayToObject(res, "batch");
    for (int i = 0; i < 4 && !rc; i++) {
        av_batch_opts o;
        av_batch_opts_default(&o);
        o.gen.max_tokens = b->quick ? 8 : 16;
        o.batch_size = sizes[i];
        av_batch_result r;
        memset(&r, 0, sizeof r);
        size_t rss0 = av_mem_current_rss();
        double t0 = av_now();
        if (av_generate_batch(m, tok, pr, npr, sizes[i], &o, &r) != AV_OK) { rc = bench_fail_lib(b, res, "batched generation"); break; }
        double wall = av_now() - t0;
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "batch_size", sizes[i]);
        cJSON_AddNumberToObject(e, "decoded_together", r.batch);
        cJSON_AddNumberToObject(e, "gen_tokens", (double)r.gen_tokens);
        bench_num(e, "tokens_per_sec", r.gen_s > 0 ? (double)r.gen_tokens / r.gen_s : NAN);
        bench_num(e, "wall_s", wall);
        bench_num(e, "peak_gb", (double)av_model_peak_bytes(m) / 1e9);
        bench_num(e, "rss_gb", (double)av_mem_current_rss() / 1e9);
        bench_num(e, "rss_growth_mb", ((double)av_mem_current_rss() - (double)rss0) / 1e6);
        cJSON_AddItemToArray(arr, e);
        bench_log(b, "batch %d: %lld tokens, %.2f tokens/s, peak %.3f GB", sizes[i], r.gen_tokens, bench_get(e, "tokens_per_sec"),
                  bench_get(e, "peak_gb"));
        av_batch_result_free(&r);
    }
    return rc;
}

typedef struct {
    double t0, first;
} ttft_ctx;
static int on_text(void *ud, const char *s, size_t n) {
    ttft_ctx *t = ud;
    (void)s;
    if (n && t->first < 0) t->first = av_now() - t->t0;
    return 0;
}

static int chat(bench_ctx *b, cJSON *res, av_model *m, av_tokenizer *tok) {
    static const char *turns[] = {"Hi! Can you recommend a good book?", "Something about the sea, please.",
                                  "Who wrote it, and when?", "Give me one quote from it.", "Thanks. Summarise our chat in one line."};
    av_chat_config cc;
    if (av_chat_config_load(&cc, b->model) != AV_OK) return bench_fail_lib(b, res, "chat template");
    av_session *s = NULL;
    cJSON *msgs = cJSON_CreateArray(), *arr = cJSON_AddArrayToObject(res, "chat");
    int rc = 0, max_tokens = b->quick ? 8 : 24;
    if (av_session_new(&s, m, 2048 < av_model_config(m)->max_position_embeddings ? 2048 : av_model_config(m)->max_position_embeddings, 512) != AV_OK) {
        rc = bench_fail_lib(b, res, "session");
        goto done;
    }
    cJSON_AddBoolToObject(res, "chat_template", cc.template_src != NULL);
    for (int i = 0; i < 5 && !rc; i++) {
        cJSON *u = cJSON_CreateObject();
        cJSON_AddStringToObject(u, "role", "user");
        cJSON_AddStringToObject(u, "content", turns[i]);
        cJSON_AddItemToArray(msgs, u);
        char *prompt = NULL;
        int32_t *ids = NULL;
        int n = 0;
        if (cc.template_src) {
            if (av_chat_render(cc.template_src, cc.where, msgs, 1, cc.bos, cc.eos, NULL, &prompt) != AV_OK) { rc = bench_fail_lib(b, res, "rendering"); break; }
        } else {
            size_t cap = 4096, len = 0;
            prompt = calloc(cap, 1);
            const cJSON *e;
            cJSON_ArrayForEach(e, msgs) len += (size_t)snprintf(prompt + len, cap - len, "%s\n", av_json_str(e, "content", ""));
        }
        if (av_tokenizer_encode(tok, prompt, strlen(prompt), !cc.template_src, &ids, &n) != AV_OK) { free(prompt); rc = bench_fail_lib(b, res, "encoding"); break; }
        free(prompt);
        av_gen_opts go;
        av_gen_opts_default(&go);
        go.max_tokens = max_tokens;
        ttft_ctx tt = {.t0 = av_now(), .first = -1};
        go.on_text = on_text;
        go.ud = &tt;
        av_gen_result r;
        av_status st = av_generate(s, tok, ids, n, &go, &r);
        double total = av_now() - tt.t0;
        free(ids);
        if (st != AV_OK) { av_gen_result_free(&r); rc = bench_fail_lib(b, res, "generation"); break; }
        cJSON *a = cJSON_CreateObject();
        cJSON_AddStringToObject(a, "role", "assistant");
        cJSON_AddStringToObject(a, "content", r.text ? r.text : "");
        cJSON_AddItemToArray(msgs, a);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "turn", i + 1);
        cJSON_AddNumberToObject(o, "prompt_tokens", r.n_prompt);
        cJSON_AddNumberToObject(o, "processed_tokens", r.n_prompt_processed);
        cJSON_AddNumberToObject(o, "reused_tokens", r.n_prompt - r.n_prompt_processed);
        cJSON_AddNumberToObject(o, "gen_tokens", r.n_ids);
        /* time to first token: the prefill plus the first sampled token (first text, else the prefill) */
        bench_num(o, "ttft_s", tt.first >= 0 ? tt.first : r.prompt_s);
        bench_num(o, "total_s", total);
        bench_num(o, "gen_tokens_per_sec", r.gen_tps);
        cJSON_AddItemToArray(arr, o);
        bench_log(b, "turn %d: prompt %d tokens (%d reused from the KV cache), first token after %.3fs, %d tokens at %.2f tokens/s", i + 1,
                  r.n_prompt, r.n_prompt - r.n_prompt_processed, bench_get(o, "ttft_s"), r.n_ids, r.gen_tps);
        av_gen_result_free(&r);
    }
done:
    cJSON_Delete(msgs);
    av_session_free(s);
    av_chat_config_free(&cc);
    return rc;
}

int bench_suite_comprehensive(bench_ctx *b, cJSON *res) {
    b->nsteps = 9;
    av_model *m;
    av_tokenizer *tok;
    if (bench_load(b, res, &m, &tok)) return 1;
    /* batching first: the process peak then grows from the loaded model's, not from the other steps' buffers */
    bench_step(b, "batched generation, batch sizes 1/2/4/8");
    cJSON_AddNumberToObject(res, "peak_gb_after_load", (double)av_model_peak_bytes(m) / 1e9);
    int rc = batches(b, res, m, tok);
    if (!rc) {
        bench_step(b, "inference at prompt lengths 32/64/128/256 and decode");
        rc = inference(b, res, m);
    }
    if (!rc) {
        bench_step(b, "matrix products and read bandwidth");
        machine_part(b, res, av_model_backend(m));
    }
    if (!rc) {
        bench_step(b, "5-message chat");
        rc = chat(b, res, m, tok);
    }
    av_model_free(m);
    av_tokenizer_free(tok);
    if (!rc) rc = bench_comp_quant(b, res, cJSON_AddArrayToObject(res, "quant"));
    if (rc) return rc;
    /* the library's default attention, 3 epochs over the first 16 training rows (--quick: 8), to keep
     * the full run within its time budget on a small CPU */
    bench_lora_cfg c = {.epochs = 3, .batch = 4, .max_len = 512, .rank = 8, .layers = 16, .alpha = 16, .lr = 1e-4, .flash = -1,
                        .subset = b->quick ? 8 : 16, .val_batches = b->quick ? 1 : 2};
    bench_step(b, "LoRA, 3 epochs over %d rows", c.subset);
    cJSON *lr = cJSON_AddObjectToObject(res, "lora_3_epochs");
    rc = bench_lora_run(b, lr, &c);
    const cJSON *err = cJSON_GetObjectItem(lr, "error");
    if (rc && cJSON_IsString(err)) cJSON_AddStringToObject(res, "error", err->valuestring);
    return rc;
}
