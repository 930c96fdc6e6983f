/* anvil bench: the key-metrics table (ours beside the seed's M3 Max figures), the findings and the
 * executive summary, all computed from the measured numbers of summary.json (no canned claims: a
 * finding whose numbers are missing is left out). */
#include "bench.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* One key metric: where it is in summary.json, its label, unit, the seed's value (NAN: none) and
 * whether higher is better (for --compare). */
typedef struct {
    const char *path, *label, *unit;
    double seed;
    int higher_better;
} key_metric;

static const key_metric k_keys[] = {
    {"suites.finetune.metrics.tokens_per_sec", "LoRA fine-tuning throughput (seed setup)", "tokens/s", 838, 1},
    {"suites.finetune.metrics.it_per_sec", "LoRA fine-tuning iterations", "it/s", 11.2, 1},
    {"suites.finetune.metrics.train_s", "LoRA fine-tuning time (training only)", "s", 7.67, 0},
    {"suites.finetune.metrics.peak_gb", "LoRA fine-tuning peak memory", "GB", 2.895, 0},
    {"suites.finetune.metrics.train_loss_last", "LoRA final train loss", "", 0.355, 0},
    {"suites.finetune.metrics.val_loss_last", "LoRA final validation loss", "", 0.822, 0},
    {"suites.finetune-enhanced.metrics.tokens_per_sec", "Enhanced LoRA throughput", "tokens/s", 421, 1},
    {"suites.finetune-enhanced.metrics.it_per_sec", "Enhanced LoRA iterations", "it/s", 5.3, 1},
    {"suites.finetune-enhanced.metrics.peak_gb", "Enhanced LoRA peak memory", "GB", 2.339, 0},
    {"suites.attention.metrics.standard_tokens_per_sec", "Generation, standard attention", "tokens/s", 93.2, 1},
    {"suites.attention.metrics.flash_tokens_per_sec", "Generation, flash attention", "tokens/s", 97.6, 1},
    {"suites.attention.metrics.load_s", "Model load time", "s", 0.20, 0},
    {"suites.attention.metrics.gen_s", "Time per generation (standard)", "s", 0.70, 0},
    {"suites.llama.metrics.pp_avg_ts", "Prompt processing (llama-bench pp)", "tokens/s", NAN, 1},
    {"suites.llama.metrics.tg_avg_ts", "Text generation (llama-bench tg)", "tokens/s", NAN, 1},
    {"suites.comprehensive.decode.tokens_per_sec", "Decode (comprehensive)", "tokens/s", NAN, 1},
    {"suites.comprehensive.bandwidth.read_gbs", "Memory read bandwidth", "GB/s", NAN, 1},
    {"suites.chat.metrics.startup_s", "Chat startup (to the first prompt)", "s", NAN, 0},
    {"run.duration_s", "Total benchmark time", "s", 25.73, 0},
    {"run.success_rate", "Suite success rate", "", 1.0, 1},
};

static double get(const cJSON *s, const char *path) { return bench_get(s, path); }
static const cJSON *at_path(const cJSON *o, const char *path) {
    char p[256];
    snprintf(p, sizeof p, "%s", path);
    for (char *save = NULL, *t = strtok_r(p, ".", &save); t && o; t = strtok_r(NULL, ".", &save)) o = cJSON_GetObjectItemCaseSensitive(o, t);
    return cJSON_IsString(o) ? o : NULL;
}

static void add_line(cJSON *arr, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_line(cJSON *arr, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    cJSON_AddItemToArray(arr, cJSON_CreateString(buf));
}

static double arr_num(const cJSON *s, const char *arr_path, int idx, const char *key) {
    char p[256];
    snprintf(p, sizeof p, "%s", arr_path);
    const cJSON *o = s;
    for (char *save = NULL, *t = strtok_r(p, ".", &save); t && o; t = strtok_r(NULL, ".", &save)) o = cJSON_GetObjectItemCaseSensitive(o, t);
    int n = cJSON_GetArraySize(o);
    if (!o || !n) return NAN;
    return bench_get(cJSON_GetArrayItem(o, idx < 0 ? n + idx : idx), key);
}

static const cJSON *find_row(const cJSON *arr, const char *key, const char *val) {
    const cJSON *r;
    cJSON_ArrayForEach(r, arr) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(r, key);
        if (cJSON_IsString(v) && !strcmp(v->valuestring, val)) return r;
    }
    return NULL;
}

void bench_findings(cJSON *s) {
    cJSON *keys = cJSON_AddArrayToObject(s, "key_metrics");
    for (size_t i = 0; i < sizeof k_keys / sizeof *k_keys; i++) {
        double v = get(s, k_keys[i].path);
        if (!isfinite(v)) continue;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "path", k_keys[i].path);
        cJSON_AddStringToObject(o, "label", k_keys[i].label);
        cJSON_AddStringToObject(o, "unit", k_keys[i].unit);
        bench_num(o, "value", v);
        if (isfinite(k_keys[i].seed)) {
            bench_num(o, "seed_m3_max", k_keys[i].seed);
            bench_num(o, "ratio_to_seed", k_keys[i].seed != 0 ? v / k_keys[i].seed : NAN);
        }
        cJSON_AddBoolToObject(o, "higher_is_better", k_keys[i].higher_better);
        cJSON_AddItemToArray(keys, o);
    }

    cJSON *f = cJSON_AddArrayToObject(s, "findings"), *ex = cJSON_AddArrayToObject(s, "executive_summary");
    const char *dev = cJSON_GetObjectItem(cJSON_GetObjectItem(s, "run"), "device")->valuestring;
    int synthetic = cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(s, "model"), "synthetic"));
    double ok = get(s, "run.suites_ok"), n = get(s, "run.suites_run"), dur = get(s, "run.duration_s");
    add_line(ex, "%.0f of %.0f suites succeeded (%.0f%%) in %.1f s on %s (%.0f cores, device %s)%s.", ok, n, 100 * ok / (n > 0 ? n : 1), dur,
             cJSON_GetObjectItem(cJSON_GetObjectItem(s, "machine"), "cpu")->valuestring, get(s, "machine.cores"), dev,
             synthetic ? "; the model has random weights, so losses and KL say nothing about quality, only speed and memory are meaningful" : "");

    double load = get(s, "machine.load_1min"), cores = get(s, "machine.cores");
    if (isfinite(load) && isfinite(cores) && load > cores)
        add_line(ex, "The machine was busy: load average %.1f on %.0f cores when the run started, so other processes held the cores for part of every measurement; treat the speeds as lower bounds and compare runs only at similar load.",
                 load, cores);
    double lt = get(s, "suites.finetune.metrics.tokens_per_sec"), lp = get(s, "suites.finetune.metrics.peak_gb");
    if (isfinite(lt)) {
        add_line(ex, "LoRA fine-tuning (seed setup, %.0f iterations): %.1f tokens/s, %.2f it/s, peak %.2f GB — %.2fx the seed's 838 tokens/s on the M3 Max, %.2fx its 2.895 GB peak.",
                 get(s, "suites.finetune.metrics.iters"), lt, get(s, "suites.finetune.metrics.it_per_sec"), lp, lt / 838, lp / 2.895);
        add_line(f, "Fine-tuning throughput is %.1f%% of the seed's M3 Max figure (%.1f vs 838 tokens/s) on this machine.", 100 * lt / 838, lt);
        double l0 = get(s, "suites.finetune.metrics.train_loss_first"), l1 = get(s, "suites.finetune.metrics.train_loss_last");
        if (isfinite(l0) && isfinite(l1))
            add_line(f, "Train loss went %.3f -> %.3f (%s%.1f%%) over the fine-tuning run%s.", l0, l1, l1 <= l0 ? "-" : "+", 100 * fabs(l1 - l0) / l0,
                     synthetic ? " (random weights: the starting loss is near ln(vocabulary))" : "");
    }
    double et = get(s, "suites.finetune-enhanced.metrics.tokens_per_sec");
    const cJSON *fu = at_path(s, "suites.finetune-enhanced.metrics.flash_unavailable");
    if (isfinite(lt) && isfinite(et) && fu)
        add_line(f, "finetune-enhanced could not use flash attention in training on this backend (%s), so both fine-tuning suites ran standard attention: %.1f vs %.1f tokens/s (%.2fx) is run-to-run variation and the enhanced run's shorter length, not an attention effect.",
                 fu->valuestring, et, lt, et / lt);
    else if (isfinite(lt) && isfinite(et))
        add_line(f, "Training with flash attention (finetune-enhanced) ran at %.1f tokens/s against %.1f with standard attention (finetune): %.2fx; peak memory %.3g vs %.3g GB.",
                 et, lt, et / lt, get(s, "suites.finetune-enhanced.metrics.peak_gb"), lp);
    double gs = get(s, "suites.attention.metrics.standard_tokens_per_sec"), gf = get(s, "suites.attention.metrics.flash_tokens_per_sec");
    if (isfinite(gs) && isfinite(gf)) {
        add_line(ex, "Generation: %.2f tokens/s with standard attention, %.2f with flash (%.2fx); the seed measured 93.2 / 97.6 tokens/s.", gs, gf, gf / gs);
        add_line(f, "Flash vs standard attention in generation: %.2fx (%.2f vs %.2f tokens/s, %.0f-token replies).", gf / gs, gf, gs,
                 get(s, "suites.attention.metrics.gen_tokens"));
    }
    const cJSON *ml = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(s, "suites"), "attention"), "model_level");
    int nml = cJSON_GetArraySize(ml);
    /* the longest length both kinds measured (a row may hold only a status, e.g. out of memory) */
    while (nml >= 2 && !(isfinite(bench_get(cJSON_GetArrayItem(ml, nml - 2), "prefill_tokens_per_sec")) &&
                         isfinite(bench_get(cJSON_GetArrayItem(ml, nml - 1), "prefill_tokens_per_sec"))))
        nml -= 2;
    if (nml >= 2) {
        const cJSON *a = cJSON_GetArrayItem(ml, nml - 2), *b2 = cJSON_GetArrayItem(ml, nml - 1);
        add_line(f, "At %.0f tokens, prefill runs at %.1f tokens/s with standard and %.1f with flash attention (%.2fx); decode at that depth %.2f vs %.2f tokens/s.",
                 bench_get(a, "T"), bench_get(a, "prefill_tokens_per_sec"), bench_get(b2, "prefill_tokens_per_sec"),
                 bench_get(b2, "prefill_tokens_per_sec") / bench_get(a, "prefill_tokens_per_sec"), bench_get(a, "decode_tokens_per_sec"),
                 bench_get(b2, "decode_tokens_per_sec"));
    }
    const cJSON *ks = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(s, "suites"), "attention"), "kernel_status");
    if (cJSON_IsString(ks) && strcmp(ks->valuestring, "measured")) add_line(f, "Attention kernel timings: %s.", ks->valuestring);

    double tg = get(s, "suites.llama.metrics.tg_avg_ts"), wgb = get(s, "suites.llama.metrics.weight_gb"), bw = get(s, "suites.comprehensive.bandwidth.read_gbs");
    if (isfinite(tg)) add_line(ex, "llama-bench: pp%.0f %.1f ± %.1f tokens/s, tg%.0f %.2f ± %.2f tokens/s.", get(s, "suites.llama.metrics.n_prompt"),
                               get(s, "suites.llama.metrics.pp_avg_ts"), get(s, "suites.llama.metrics.pp_stddev_ts"), get(s, "suites.llama.metrics.n_gen"),
                               tg, get(s, "suites.llama.metrics.tg_stddev_ts"));
    if (isfinite(tg) && isfinite(wgb) && isfinite(bw) && bw > 0) {
        double share = 100 * tg * wgb / bw;
        add_line(f, "Decode reads %.3g GB of weights per token: %.2f tokens/s is %.3g GB/s, %.0f%% of the %.1f GB/s read bandwidth measured here (%s).",
                 wgb, tg, tg * wgb, share, bw,
                 share > 110 ? "more than memory can deliver: the weights fit in the caches" :
                 share >= 60 ? "decode is memory-bound: faster decode needs fewer bytes per token (quantization)" :
                               "decode is not bandwidth-bound here: compute or synchronisation limits it");
    }
    double pp = get(s, "suites.llama.metrics.pp_avg_ts");
    if (isfinite(tg) && isfinite(pp) && tg > 0)
        add_line(f, "Prompt processing runs %.1fx as many tokens per second as generation (%.1f vs %.2f tokens/s): a prompt is one batched pass, generation one pass per token.",
                 pp / tg, pp, tg);
    double p32 = arr_num(s, "suites.comprehensive.inference", 0, "prompt_tokens_per_sec"), p256 = arr_num(s, "suites.comprehensive.inference", -1, "prompt_tokens_per_sec");
    if (isfinite(p32) && isfinite(p256))
        add_line(f, "Prompt processing goes from %.1f tokens/s at 32 tokens to %.1f at 256 (%.2fx: %s).", p32, p256, p256 / p32,
                 p256 / p32 > 1.1 ? "longer prompts use the matrix units better" : p256 / p32 < 0.9 ? "slower per token on longer prompts (attention's share grows, or the run was disturbed)" : "flat");
    double gmax = 0;
    const cJSON *mm = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(s, "suites"), "comprehensive"), "matmul"), *r;
    cJSON_ArrayForEach(r, mm) if (bench_get(r, "gflops") > gmax) gmax = bench_get(r, "gflops");
    if (gmax > 0) add_line(f, "The matrix product reaches %.1f GFLOP/s at its best of 3 sizes (bf16 weights, the library's own product).", gmax);
    const cJSON *bt = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(s, "suites"), "comprehensive"), "batch");
    int nb = cJSON_GetArraySize(bt);
    if (nb >= 2) {
        const cJSON *b1 = cJSON_GetArrayItem(bt, 0), *bn = cJSON_GetArrayItem(bt, nb - 1);
        add_line(f, "Batched generation: %.2f tokens/s at batch %.0f vs %.2f at batch 1 (%.2fx); process peak %.3g -> %.3g GB.", bench_get(bn, "tokens_per_sec"),
                 bench_get(bn, "batch_size"), bench_get(b1, "tokens_per_sec"), bench_get(bn, "tokens_per_sec") / bench_get(b1, "tokens_per_sec"),
                 bench_get(b1, "peak_gb"), bench_get(bn, "peak_gb"));
    }
    const cJSON *q = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(s, "suites"), "comprehensive"), "quant");
    const cJSON *q0 = cJSON_GetArrayItem(q, 0), *q4 = find_row(q, "format", "4-bit");
    if (q0 && q4 && isfinite(bench_get(q4, "size_gb")))
        add_line(f, "4-bit (group 64) weights take %.3g GB against %.3g GB (%.1fx smaller); decode %.2f vs %.2f tokens/s (%.2fx); KL(bf16 || 4-bit) %.4g, top-1 agreement %.0f%%%s.",
                 bench_get(q4, "size_gb"), bench_get(q0, "size_gb"), bench_get(q0, "size_gb") / bench_get(q4, "size_gb"), bench_get(q4, "decode_tokens_per_sec"),
                 bench_get(q0, "decode_tokens_per_sec"), bench_get(q4, "decode_tokens_per_sec") / bench_get(q0, "decode_tokens_per_sec"), bench_get(q4, "kl_mean"),
                 100 * bench_get(q4, "top1_agree"), synthetic ? " (random weights: near-flat distributions)" : "");
    const cJSON *ch = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(s, "suites"), "comprehensive"), "chat");
    if (cJSON_GetArraySize(ch) >= 2) {
        double reused = 0, prompt = 0;
        for (int i = 1; i < cJSON_GetArraySize(ch); i++) {
            reused += bench_get(cJSON_GetArrayItem(ch, i), "reused_tokens");
            prompt += bench_get(cJSON_GetArrayItem(ch, i), "prompt_tokens");
        }
        add_line(f, "Chat: turns 2-%d reused %.0f%% of their prompt tokens from the KV cache; time to first token %.3f s on turn 1, %.3f s on turn %d.",
                 cJSON_GetArraySize(ch), prompt > 0 ? 100 * reused / prompt : 0, bench_get(cJSON_GetArrayItem(ch, 0), "ttft_s"),
                 bench_get(cJSON_GetArrayItem(ch, cJSON_GetArraySize(ch) - 1), "ttft_s"), cJSON_GetArraySize(ch));
    }
    double cs = get(s, "suites.chat.metrics.startup_s");
    if (isfinite(cs)) add_line(f, "`anvil chat` in a terminal shows its prompt %.2f s after start and answers one message in %.2f s.", cs, get(s, "suites.chat.metrics.exchange_s"));
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(s, "suites")) {
        const cJSON *st = cJSON_GetObjectItem(e, "status"), *er = cJSON_GetObjectItem(e, "error");
        if (cJSON_IsString(st) && strcmp(st->valuestring, "ok"))
            add_line(f, "Suite %s failed: %s", e->string, cJSON_IsString(er) ? er->valuestring : "(no error line)");
    }
}
