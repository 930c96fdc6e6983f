/* anvil bench suite llama: llama-bench's tests (pp N: a batched prefill of N tokens; tg N: N
 * single-token decode steps), repeated, mean +- stddev, rows with llama-bench's field names, and its
 * md / csv / json / jsonl layouts. */
#include "bench.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void stats(const double *v, int n, double *mean, double *sd) {
    double s = 0, q = 0;
    for (int i = 0; i < n; i++) s += v[i];
    *mean = s / n;
    for (int i = 0; i < n; i++) q += (v[i] - *mean) * (v[i] - *mean);
    *sd = n > 1 ? sqrt(q / (n - 1)) : 0;
}

/* One test: n_prompt tokens prefilled, or n_gen tokens decoded, reps times. */
static int run_test(bench_ctx *b, cJSON *res, av_model *m, int n_prompt, int n_gen, int reps, cJSON *rows) {
    int V = av_model_config(m)->vocab_size, n = n_prompt + n_gen + 1, rc = 0;
    av_session *s = NULL;
    av_stepper *step = NULL;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
    double *ns = calloc((size_t)reps, sizeof(double)), *ts = calloc((size_t)reps, sizeof(double));
    if (!ids || !ns || !ts) { rc = bench_fail(b, res, "out of memory"); goto done; }
    bench_ids(ids, n, V, 7);
    if (av_session_new(&s, m, n + 1, n_prompt > 0 ? (n_prompt < 512 ? n_prompt : 512) : 1) != AV_OK) { rc = bench_fail_lib(b, res, "session"); goto done; }
    if (av_session_forward(s, ids, 1) != AV_OK) { rc = bench_fail_lib(b, res, "warm-up"); goto done; }
    av_sampler_params greedy;
    av_sampler_params_default(&greedy);
    if (n_gen > 0 && av_stepper_new(&step, s, &greedy) != AV_OK) { rc = bench_fail_lib(b, res, "stepper"); goto done; }
    for (int k = 0; k < reps; k++) {
        av_session_truncate(s, 0);
        double t0 = av_now();
        if (n_prompt > 0) {
            if (av_session_forward(s, ids, n_prompt) != AV_OK) { rc = bench_fail_lib(b, res, "prompt processing"); goto done; }
        } else {
            int32_t id = ids[0];
            for (int i = 0; i < n_gen; i++)
                if (av_stepper_next(step, id, NULL, 0, i + 1 < n_gen, &id) != AV_OK) { rc = bench_fail_lib(b, res, "generation"); goto done; }
        }
        double dt = av_now() - t0;
        ns[k] = dt * 1e9;
        ts[k] = (n_prompt + n_gen) / dt;
    }
    double avg_ns, sd_ns, avg_ts, sd_ts;
    stats(ns, reps, &avg_ns, &sd_ns);
    stats(ts, reps, &avg_ts, &sd_ts);
    const av_config *c = av_model_config(m);
    cJSON *r = cJSON_CreateObject();
    char buf[512], tm[64];
    cJSON_AddStringToObject(r, "build_commit", bench_commit());
    cJSON_AddNumberToObject(r, "build_number", 0);
    cJSON *mach = bench_machine();
    cJSON_AddStringToObject(r, "cpu_info", cJSON_GetObjectItem(mach, "cpu")->valuestring);
    const cJSON *gpu = cJSON_GetObjectItem(mach, "gpu");
    cJSON_AddStringToObject(r, "gpu_info", cJSON_IsString(gpu) ? gpu->valuestring : "");
    cJSON_Delete(mach);
    const char *be = av_backend_name(av_model_backend(m));
    cJSON_AddStringToObject(r, "backends", !strcmp(be, "cpu") ? "CPU" : "CUDA");
    cJSON_AddStringToObject(r, "model_filename", av_model_dir(m));
    snprintf(buf, sizeof buf, "llama %.2gB %s", (double)av_config_param_count(c) / 1e9, av_dtype_name(av_model_weight_dtype(m)));
    if (c->quant_bits) snprintf(buf, sizeof buf, "llama %.2gB %d-bit", (double)av_config_param_count(c) / 1e9, c->quant_bits);
    if (av_model_gguf_type(m)) snprintf(buf, sizeof buf, "llama %.2gB %s", (double)av_config_param_count(c) / 1e9, av_model_gguf_type(m));
    cJSON_AddStringToObject(r, "model_type", buf);
    cJSON_AddNumberToObject(r, "model_size", (double)av_model_weight_bytes(m));
    cJSON_AddNumberToObject(r, "model_n_params", (double)av_config_param_count(c));
    cJSON_AddNumberToObject(r, "n_batch", 512);
    cJSON_AddNumberToObject(r, "n_ubatch", 512);
    cJSON_AddNumberToObject(r, "n_threads", av_threads_get());
    cJSON_AddStringToObject(r, "type_k", "f32");
    cJSON_AddStringToObject(r, "type_v", "f32");
    cJSON_AddNumberToObject(r, "n_gpu_layers", !strcmp(be, "cpu") ? 0 : c->n_layers + 1);
    cJSON_AddNumberToObject(r, "flash_attn", av_model_attention(m) == AV_ATTN_FLASH);
    time_t now = time(NULL);
    strftime(tm, sizeof tm, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    cJSON_AddStringToObject(r, "test_time", tm);
    cJSON_AddNumberToObject(r, "n_prompt", n_prompt);
    cJSON_AddNumberToObject(r, "n_gen", n_gen);
    cJSON_AddNumberToObject(r, "n_depth", 0);
    bench_num(r, "avg_ns", round(avg_ns));
    bench_num(r, "stddev_ns", round(sd_ns));
    bench_num(r, "avg_ts", avg_ts);
    bench_num(r, "stddev_ts", sd_ts);
    cJSON *sn = cJSON_AddArrayToObject(r, "samples_ns"), *st = cJSON_AddArrayToObject(r, "samples_ts");
    for (int k = 0; k < reps; k++) {
        cJSON_AddItemToArray(sn, cJSON_CreateNumber(round(ns[k])));
        cJSON_AddItemToArray(st, cJSON_CreateNumber(ts[k]));
    }
    cJSON_AddItemToArray(rows, r);
    bench_log(b, "%s%d: %.2f +- %.2f tokens/s over %d repetitions", n_prompt ? "pp" : "tg", n_prompt + n_gen, avg_ts, sd_ts, reps);
done:
    free(ids);
    free(ns);
    free(ts);
    av_stepper_free(step);
    av_session_free(s);
    return rc;
}

int bench_llama_rows(bench_ctx *b, cJSON *res, av_model *m, const bench_llama_cfg *c, cJSON *rows) {
    if (c->n_prompt > 0) {
        bench_step(b, "pp%d x %d", c->n_prompt, c->reps);
        if (run_test(b, res, m, c->n_prompt, 0, c->reps, rows)) return 1;
    }
    if (c->n_gen > 0) {
        bench_step(b, "tg%d x %d", c->n_gen, c->reps);
        if (run_test(b, res, m, 0, c->n_gen, c->reps, rows)) return 1;
    }
    return 0;
}

static const char *k_fields[] = {"build_commit", "build_number", "cpu_info", "gpu_info", "backends", "model_filename", "model_type",
                                 "model_size", "model_n_params", "n_batch", "n_ubatch", "n_threads", "type_k", "type_v",
                                 "n_gpu_layers", "flash_attn", "test_time", "n_prompt", "n_gen", "n_depth", "avg_ns", "stddev_ns",
                                 "avg_ts", "stddev_ts", NULL};

void bench_llama_print(FILE *f, const cJSON *rows, const char *format) {
    const cJSON *r;
    if (!strcmp(format, "json") || !strcmp(format, "jsonl")) {
        int jl = !strcmp(format, "jsonl"), i = 0;
        if (!jl) fprintf(f, "[\n");
        cJSON_ArrayForEach(r, rows) {
            char *s = jl ? cJSON_PrintUnformatted(r) : cJSON_Print(r);
            fprintf(f, "%s%s\n", s, !jl && ++i < cJSON_GetArraySize(rows) ? "," : "");
            free(s);
        }
        if (!jl) fprintf(f, "]\n");
    } else if (!strcmp(format, "csv")) {
        for (int i = 0; k_fields[i]; i++) fprintf(f, "%s%s", i ? "," : "", k_fields[i]);
        fprintf(f, "\n");
        cJSON_ArrayForEach(r, rows) {
            for (int i = 0; k_fields[i]; i++) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, k_fields[i]);
                if (cJSON_IsString(v)) fprintf(f, "%s\"%s\"", i ? "," : "", v->valuestring);
                else if (cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) && fabs(v->valuedouble) < 1e15)
                    fprintf(f, "%s%.0f", i ? "," : "", v->valuedouble);
                else fprintf(f, "%s%.6f", i ? "," : "", cJSON_IsNumber(v) ? v->valuedouble : 0.0);
            }
            fprintf(f, "\n");
        }
    } else {
        fprintf(f, "| model | size | params | backend | threads | test | t/s |\n| --- | ---: | ---: | --- | ---: | ---: | ---: |\n");
        cJSON_ArrayForEach(r, rows) {
            double np = bench_get(r, "n_prompt"), ng = bench_get(r, "n_gen");
            fprintf(f, "| %s | %.2f GiB | %.2f B | %s | %.0f | %s%.0f | %.2f ± %.2f |\n", cJSON_GetObjectItem(r, "model_type")->valuestring,
                    bench_get(r, "model_size") / 1073741824.0, bench_get(r, "model_n_params") / 1e9,
                    cJSON_GetObjectItem(r, "backends")->valuestring, bench_get(r, "n_threads"), np > 0 ? "pp" : "tg", np > 0 ? np : ng,
                    bench_get(r, "avg_ts"), bench_get(r, "stddev_ts"));
        }
    }
}

int bench_suite_llama(bench_ctx *b, cJSON *res) {
    av_model *m;
    if (bench_load(b, res, &m, NULL)) return 1;
    bench_llama_cfg c = {.n_prompt = b->quick ? 64 : 512, .n_gen = b->quick ? 16 : 128, .reps = b->quick ? 2 : 3};
    b->nsteps = 2;
    cJSON *rows = cJSON_AddArrayToObject(res, "rows");
    int rc = bench_llama_rows(b, res, m, &c, rows);
    if (!rc) {
        cJSON *mt = cJSON_AddObjectToObject(res, "metrics");
        cJSON_AddNumberToObject(mt, "n_prompt", c.n_prompt);
        cJSON_AddNumberToObject(mt, "n_gen", c.n_gen);
        cJSON_AddNumberToObject(mt, "repetitions", c.reps);
        bench_num(mt, "pp_avg_ts", bench_get(cJSON_GetArrayItem(rows, 0), "avg_ts"));
        bench_num(mt, "pp_stddev_ts", bench_get(cJSON_GetArrayItem(rows, 0), "stddev_ts"));
        bench_num(mt, "tg_avg_ts", bench_get(cJSON_GetArrayItem(rows, 1), "avg_ts"));
        bench_num(mt, "tg_stddev_ts", bench_get(cJSON_GetArrayItem(rows, 1), "stddev_ts"));
        bench_num(mt, "weight_gb", (double)av_model_weight_bytes(m) / 1e9);
        bench_num(mt, "tg_weight_gbs", bench_get(mt, "tg_avg_ts") * (double)av_model_weight_bytes(m) / 1e9);
        bench_num(mt, "peak_gb", (double)av_model_peak_bytes(m) / 1e9);
        if (b->log) bench_llama_print(b->log, rows, "md");
    }
    av_model_free(m);
    return rc;
}
