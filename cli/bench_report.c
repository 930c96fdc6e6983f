/* anvil bench report: report.md (key metrics beside the seed's M3 Max figures, one section per
 * suite, charts, findings, the --compare column), summary.json and report.html, written atomically
 * into the report directory. Every number shown comes from the summary (written as summary.json). */
#include "bench.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const cJSON *at(const cJSON *o, const char *path) {
    char p[256];
    snprintf(p, sizeof p, "%s", path);
    for (char *save = NULL, *t = strtok_r(p, ".", &save); t && o; t = strtok_r(NULL, ".", &save)) o = cJSON_GetObjectItemCaseSensitive(o, t);
    return o;
}
static const char *str(const cJSON *o, const char *path, const char *def) {
    const cJSON *v = at(o, path);
    return cJSON_IsString(v) ? v->valuestring : def;
}
/* a number with about 4 significant digits ("-" when absent) */
static const char *fmtn(char *b, double v) {
    if (!isfinite(v)) return strcpy(b, "-");
    double a = fabs(v);
    if (a != 0 && (a < 1e-3 || a >= 1e7)) snprintf(b, 32, "%.3g", v);
    else if (a >= 1000 || v == floor(v)) snprintf(b, 32, "%.0f", v);
    else if (a >= 100) snprintf(b, 32, "%.1f", v);
    else if (a >= 1) snprintf(b, 32, "%.2f", v);
    else snprintf(b, 32, "%.4f", v);
    return b;
}
/* formatted numbers for one fprintf: a ring of buffers (a function call per number keeps the order defined) */
static char nb[24][32];
static int nbi;
static const char *N(double v) {
    nbi = (nbi + 1) % 24;
    return fmtn(nb[nbi], v);
}

static int suite_ok(const cJSON *s, const char *name) {
    const cJSON *st = at(s, name);
    return st && !strcmp(str(st, "status", ""), "ok");
}

static void failed_line(FILE *f, const cJSON *su) {
    fprintf(f, "**FAILED** after %s s: `%s` (log: %s)\n\n", N(bench_get(su, "seconds")), str(su, "error", "no error line"), str(su, "log", "?"));
}

static void section_head(FILE *f, const cJSON *s, const char *name, int num) {
    const cJSON *su = at(at(s, "suites"), name);
    fprintf(f, "## %d. %s (`%s`)\n\n", num, str(su, "title", name), name);
    if (su && strcmp(str(su, "status", ""), "ok")) failed_line(f, su);
    else if (su) fprintf(f, "Status: ok, %s s (log: %s)\n\n", N(bench_get(su, "seconds")), str(su, "log", "?"));
}

static void lora_table(FILE *f, const cJSON *mt, int enhanced) {
    fprintf(f, "| metric | anvil | seed (MLX, M3 Max) |\n|---|---:|---:|\n");
    fprintf(f, "| iterations | %s | %s |\n", N(bench_get(mt, "iters")), enhanced ? "25" : "50");
    fprintf(f, "| attention | %s | %s |\n", str(mt, "attention", "-"), enhanced ? "flash" : "-");
    if (at(mt, "flash_unavailable")) fprintf(f, "| why not flash | `%s` | - |\n", str(mt, "flash_unavailable", ""));
    fprintf(f, "| training time (s, validation excluded) | %s | %s |\n", N(bench_get(mt, "train_s")), enhanced ? "5.7" : "7.67");
    fprintf(f, "| validation time (s) | %s | - |\n", N(bench_get(mt, "val_s")));
    fprintf(f, "| iterations/s | %s | %s |\n", N(bench_get(mt, "it_per_sec")), enhanced ? "5.3" : "11.2");
    fprintf(f, "| tokens/s | %s | %s |\n", N(bench_get(mt, "tokens_per_sec")), enhanced ? "421" : "838");
    fprintf(f, "| trained tokens | %s | - |\n", N(bench_get(mt, "trained_tokens")));
    fprintf(f, "| peak memory (GB) | %s | %s |\n", N(bench_get(mt, "peak_gb")), enhanced ? "2.339" : "2.895");
    fprintf(f, "| train loss first -> last | %s -> %s | %s |\n", N(bench_get(mt, "train_loss_first")), N(bench_get(mt, "train_loss_last")),
            enhanced ? "1.696 -> 0.411" : "1.960 -> 0.355");
    fprintf(f, "| validation loss first -> last | %s -> %s | %s |\n", N(bench_get(mt, "val_loss_first")), N(bench_get(mt, "val_loss_last")),
            enhanced ? "2.513 -> 1.122" : "2.813 -> 0.822");
    fprintf(f, "| trainable parameters | %sM / %sM (%s%%) | 0.819M / 1100.048M (0.074%%) |\n", N(bench_get(mt, "trainable_params") / 1e6),
            N(bench_get(mt, "total_params") / 1e6), N(bench_get(mt, "trainable_pct")));
    fprintf(f, "| LoRA | rank %s, alpha %s, q/v of the last %s layers, batch %s | rank 8, alpha 16, 16 layers |\n", N(bench_get(mt, "rank")),
            N(bench_get(mt, "alpha")), N(bench_get(mt, "lora_layers")), N(bench_get(mt, "batch_size")));
    if (enhanced)
        fprintf(f, "| best-adapter saves | %s (%s) | yes |\n", N(bench_get(mt, "best_saves")),
                cJSON_IsTrue(at(mt, "best_adapter_written")) ? "best_adapters.safetensors written" : "not written");
    fprintf(f, "\n");
}

static void attention_section(FILE *f, const cJSON *su) {
    const cJSON *r;
    fprintf(f, "### Generation (load, an untimed warm-up, then the best of 2 greedy generations per attention kind)\n\n| attention | load (s) | time per generation (s) | tokens | tokens/s | prompt tokens/s |\n|---|---:|---:|---:|---:|---:|\n");
    cJSON_ArrayForEach(r, at(su, "generation"))
        fprintf(f, "| %s | %s | %s | %s | %s | %s |\n", str(r, "attention", "?"), N(bench_get(r, "load_s")), N(bench_get(r, "gen_s")), N(bench_get(r, "tokens")),
                N(bench_get(r, "tokens_per_sec")), N(bench_get(r, "prompt_tokens_per_sec")));
    fprintf(f, "| seed (MLX, M3 Max) | ~0.20 | ~0.70 | 68 | 93.2 / 97.6 (standard / flash) | - |\n\n");
    fprintf(f, "### Attention kernels (av_attention_time; causal, FLOPs halved; fwd+bwd counted as 3.5x forward)\n\n");
    fprintf(f, "Kernel status: %s.\n\n| attention | T | B | pass | status | time (ms) | TFLOP/s | bytes (MB) |\n|---|---:|---:|---|---|---:|---:|---:|\n",
            str(su, "kernel_status", "-"));
    cJSON_ArrayForEach(r, at(su, "kernels"))
        fprintf(f, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", str(r, "attention", "?"), N(bench_get(r, "T")), N(bench_get(r, "B")),
                cJSON_IsTrue(at(r, "backward")) ? "fwd+bwd" : "fwd", str(r, "status", "?"), N(bench_get(r, "seconds") * 1e3), N(bench_get(r, "tflops")),
                N(bench_get(r, "bytes") / 1e6));
    fprintf(f, "\n### Model level (prefill of T tokens, then decode at that depth)\n\n");
    if (at(su, "rope_linear_factor")) /* lengths past the model's positions */
        fprintf(f, "The model runs with linear RoPE scaling x%s for these lengths (as a config with rope_scaling linear would).\n\n",
                N(bench_get(su, "rope_linear_factor")));
    fprintf(f, "| attention | T | prefill tokens/s | decode tokens/s | status |\n|---|---:|---:|---:|---|\n");
    cJSON_ArrayForEach(r, at(su, "model_level"))
        fprintf(f, "| %s | %s | %s | %s | %s |\n", str(r, "attention", "?"), N(bench_get(r, "T")), N(bench_get(r, "prefill_tokens_per_sec")),
                N(bench_get(r, "decode_tokens_per_sec")), str(r, "status", "ok"));
    fprintf(f, "\n### Model level, training (LoRA q/v rank 8, one row of T tokens, the second of 2 iterations)\n\n| attention | T | training tokens/s | status |\n|---|---:|---:|---|\n");
    cJSON_ArrayForEach(r, at(su, "training"))
        fprintf(f, "| %s | %s | %s | %s |\n", str(r, "attention", "?"), N(bench_get(r, "T")), N(bench_get(r, "train_tokens_per_sec")), str(r, "status", "?"));
    fprintf(f, "\n");
}

static void comp_section(FILE *f, const cJSON *su) {
    const cJSON *r;
    fprintf(f, "### Machine\n\n| matrix product (M x N x K, bf16 weights) | time (ms) | GFLOP/s |\n|---|---:|---:|\n");
    cJSON_ArrayForEach(r, at(su, "matmul"))
        fprintf(f, "| %s x %s x %s | %s | %s |\n", N(bench_get(r, "M")), N(bench_get(r, "N")), N(bench_get(r, "K")), N(bench_get(r, "seconds") * 1e3),
                N(bench_get(r, "gflops")));
    fprintf(f, "\nMemory read bandwidth (%s MiB, all cores): %s GB/s.\n\n", N(bench_get(su, "bandwidth.mib")), N(bench_get(su, "bandwidth.read_gbs")));
    fprintf(f, "### Inference\n\n| prompt tokens | prefill time (s) | prompt tokens/s |\n|---:|---:|---:|\n");
    cJSON_ArrayForEach(r, at(su, "inference"))
        fprintf(f, "| %s | %s | %s |\n", N(bench_get(r, "prompt_tokens")), N(bench_get(r, "prompt_s")), N(bench_get(r, "prompt_tokens_per_sec")));
    fprintf(f, "\nDecode: %s tokens at %s tokens/s (%s GB/s of weights read). Seed (MLX, M3 Max): 93-97 tokens/s.\n\n", N(bench_get(su, "decode.tokens")),
            N(bench_get(su, "decode.tokens_per_sec")), N(bench_get(su, "decode.weight_gbs")));
    fprintf(f, "### Quantization (MLX affine, group 64; KL over %s)\n\n", str(su, "kl_text", "-"));
    if (at(su, "quant_status")) fprintf(f, "%s\n\n", str(su, "quant_status", ""));
    fprintf(f, "| format | size on disk (GB) | convert (s) | prompt tokens/s | decode tokens/s | KL mean | KL p99 | top-1 agree | status |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
    cJSON_ArrayForEach(r, at(su, "quant"))
        fprintf(f, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", str(r, "format", "?"), N(bench_get(r, "size_gb")), N(bench_get(r, "convert_s")),
                N(bench_get(r, "prompt_tokens_per_sec")), N(bench_get(r, "decode_tokens_per_sec")), N(bench_get(r, "kl_mean")), N(bench_get(r, "kl_p99")),
                N(bench_get(r, "top1_agree")), str(r, "status", "-"));
    fprintf(f, "\n### Memory and speed vs batch size (av_generate_batch, greedy; measured right after loading: peak %s GB then)\n\n", N(bench_get(su, "peak_gb_after_load")));
    fprintf(f, "| batch | decoded together | generated tokens | tokens/s | process peak so far (GB) | RSS growth (MB) |\n|---:|---:|---:|---:|---:|---:|\n");
    cJSON_ArrayForEach(r, at(su, "batch"))
        fprintf(f, "| %s | %s | %s | %s | %s | %s |\n", N(bench_get(r, "batch_size")), N(bench_get(r, "decoded_together")), N(bench_get(r, "gen_tokens")),
                N(bench_get(r, "tokens_per_sec")), N(bench_get(r, "peak_gb")), N(bench_get(r, "rss_growth_mb")));
    fprintf(f, "\n### Chat simulation (5 messages through the chat engine%s)\n\n| turn | prompt tokens | reused from KV cache | processed | generated | time to first token (s) | tokens/s |\n|---:|---:|---:|---:|---:|---:|---:|\n",
            cJSON_IsTrue(at(su, "chat_template")) ? ", the model's chat template" : ", no chat template: plain text");
    cJSON_ArrayForEach(r, at(su, "chat"))
        fprintf(f, "| %s | %s | %s | %s | %s | %s | %s |\n", N(bench_get(r, "turn")), N(bench_get(r, "prompt_tokens")), N(bench_get(r, "reused_tokens")),
                N(bench_get(r, "processed_tokens")), N(bench_get(r, "gen_tokens")), N(bench_get(r, "ttft_s")), N(bench_get(r, "gen_tokens_per_sec")));
    const cJSON *l = at(su, "lora_3_epochs");
    fprintf(f, "\n### LoRA, 3 epochs\n\n");
    if (l && at(l, "metrics"))
        fprintf(f, "%s epochs over %s training rows = %s iterations (batch %s, %s attention): %s tokens/s, %s it/s, train loss %s -> %s, validation loss %s -> %s, peak %s GB.\n\n",
                N(bench_get(l, "metrics.epochs")), N(bench_get(l, "metrics.train_rows")), N(bench_get(l, "metrics.iters")), N(bench_get(l, "metrics.batch_size")),
                str(l, "metrics.attention", "?"), N(bench_get(l, "metrics.tokens_per_sec")),
                N(bench_get(l, "metrics.it_per_sec")), N(bench_get(l, "metrics.train_loss_first")), N(bench_get(l, "metrics.train_loss_last")),
                N(bench_get(l, "metrics.val_loss_first")), N(bench_get(l, "metrics.val_loss_last")), N(bench_get(l, "metrics.peak_gb")));
    else fprintf(f, "not run%s%s\n\n", at(l, "error") ? ": " : "", str(l, "error", ""));
}

static void compare_section(FILE *f, const cJSON *s, const cJSON *old, const char *old_name) {
    fprintf(f, "## Comparison with %s\n\n| metric | before | now | change | |\n|---|---:|---:|---:|---|\n", old_name);
    const cJSON *k;
    int regress = 0;
    cJSON *cmp = cJSON_AddArrayToObject((cJSON *)s, "comparison");
    cJSON_ArrayForEach(k, at(s, "key_metrics")) {
        const char *path = str(k, "path", "");
        double now = bench_get(k, "value"), before = bench_get(old, path);
        if (!isfinite(before)) continue;
        double ch = before != 0 ? (now - before) / fabs(before) : NAN;
        int hb = cJSON_IsTrue(at(k, "higher_is_better"));
        int bad = isfinite(ch) && (hb ? ch < -0.10 : ch > 0.10);
        regress += bad;
        const char *u = str(k, "unit", "");
        fprintf(f, "| %s%s%s%s | %s | %s | %s%s%% | %s |\n", str(k, "label", path), *u ? " (" : "", u, *u ? ")" : "", N(before), N(now), ch > 0 ? "+" : "", N(100 * ch),
                bad ? "**regression**" : "");
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "path", path);
        bench_num(o, "before", before);
        bench_num(o, "now", now);
        bench_num(o, "change", ch);
        cJSON_AddBoolToObject(o, "regression", bad);
        cJSON_AddItemToArray(cmp, o);
    }
    fprintf(f, "\n%d regression(s) (worse by more than 10%%).\n\n", regress);
}

static void write_md(FILE *f, cJSON *s, const cJSON *charts, const cJSON *old, const char *old_name) {
    const cJSON *r;
    fprintf(f, "# anvil benchmark report\n\n");
    fprintf(f, "- **Date:** %s\n", str(s, "generated_at", "?"));
    double bw = bench_get(s, "machine.read_bandwidth_gbs");
    char bws[96];
    if (isfinite(bw)) snprintf(bws, sizeof bws, "%s GB/s", N(bw));
    else snprintf(bws, sizeof bws, "not measured (the comprehensive suite measures it)");
    fprintf(f, "- **Machine:** %s, %s cores, %s GB memory, measured read bandwidth %s; %s\n", str(s, "machine.cpu", "?"), N(bench_get(s, "machine.cores")),
            N(bench_get(s, "machine.mem_gb")), bws, str(s, "machine.os", ""));
    if (cJSON_IsString(at(s, "machine.gpu"))) fprintf(f, "- **GPU:** %s; driver: %s\n", str(s, "machine.gpu", ""), str(s, "machine.driver", "unknown"));
    else fprintf(f, "- **GPU:** none\n");
    fprintf(f, "- **Load average at start (1 min):** %s (the machine may be shared)\n", N(bench_get(s, "machine.load_1min")));
    fprintf(f, "- **anvil:** version %s, commit %s\n", str(s, "anvil.version", "?"), str(s, "anvil.commit", "unknown"));
    double params = bench_get(s, "model.params");
    fprintf(f, "- **Model:** %s", str(s, "model.path", "?"));
    if (at(s, "model.preset")) fprintf(f, " (preset %s)", str(s, "model.preset", ""));
    if (isfinite(params)) fprintf(f, "; %s B parameters, %s layers, %s", N(params / 1e9), N(bench_get(s, "model.layers")), str(s, "model.dtype", "?"));
    fprintf(f, "; %s GB of weights; **weights: %s**\n", N(bench_get(s, "model.weight_bytes") / 1e9), str(s, "model.weights", "?"));
    fprintf(f, "- **Run:** %s, device %s, %s threads, %s s in all\n\n", cJSON_IsTrue(at(s, "run.quick")) ? "--quick" : "full", str(s, "run.device", "?"),
            N(bench_get(s, "run.threads")), N(bench_get(s, "run.duration_s")));
    if (at(s, "run.interrupted")) fprintf(f, "**Run %s.**\n\n", str(s, "run.interrupted", ""));
    fprintf(f, "## Executive summary\n\n");
    cJSON_ArrayForEach(r, at(s, "executive_summary")) fprintf(f, "- %s\n", r->valuestring);
    fprintf(f, "\n## Suites\n\n| suite | status | time (s) | error |\n|---|---|---:|---|\n");
    const cJSON *su;
    cJSON_ArrayForEach(su, at(s, "suites"))
        fprintf(f, "| %s | %s | %s | %s |\n", su->string, strcmp(str(su, "status", ""), "ok") ? "**FAILED**" : "ok", N(bench_get(su, "seconds")), str(su, "error", ""));
    fprintf(f, "\nSuccess rate: %s of %s (%s%%).\n\n", N(bench_get(s, "run.suites_ok")), N(bench_get(s, "run.suites_run")), N(100 * bench_get(s, "run.success_rate")));
    fprintf(f, "## Key metrics beside the seed report (MLX on an Apple M3 Max, 16 cores)\n\n| metric | anvil | seed | anvil / seed |\n|---|---:|---:|---:|\n");
    cJSON_ArrayForEach(r, at(s, "key_metrics"))
        fprintf(f, "| %s%s%s%s | %s | %s | %s |\n", str(r, "label", ""), *str(r, "unit", "") ? " (" : "", str(r, "unit", ""), *str(r, "unit", "") ? ")" : "",
                N(bench_get(r, "value")), N(bench_get(r, "seed_m3_max")), N(bench_get(r, "ratio_to_seed")));
    fprintf(f, "\nThe seed ran a real TinyLlama-1.1B-Chat on a 16-core M3 Max GPU; ratios compare machines as much as software.\n\n");
    if (old) compare_section(f, s, old, old_name);
    int num = 1;
    const cJSON *sus = at(s, "suites");
    if (at(sus, "finetune")) {
        section_head(f, s, "finetune", num++);
        if (suite_ok(sus, "finetune")) lora_table(f, at(sus, "finetune.metrics"), 0);
    }
    if (at(sus, "finetune-enhanced")) {
        section_head(f, s, "finetune-enhanced", num++);
        if (suite_ok(sus, "finetune-enhanced")) {
            fprintf(f, "Flash attention in the training steps, validation every few iterations with the best adapter saved, a live monitor line (iteration, elapsed, ETA, tokens, peak) in the log.\n\n");
            lora_table(f, at(sus, "finetune-enhanced.metrics"), 1);
        }
    }
    if (at(sus, "attention")) {
        section_head(f, s, "attention", num++);
        if (at(at(sus, "attention"), "generation")) attention_section(f, at(sus, "attention"));
    }
    if (at(sus, "comprehensive")) {
        section_head(f, s, "comprehensive", num++);
        if (at(at(sus, "comprehensive"), "matmul")) comp_section(f, at(sus, "comprehensive"));
    }
    if (at(sus, "chat")) {
        section_head(f, s, "chat", num++);
        if (suite_ok(sus, "chat"))
            fprintf(f, "`anvil chat --max-tokens %s` started in a pseudo-terminal: first prompt after %s s (seed: 0.06 s, MLX's CLI load only), one message answered in %s s; exit status %s. Transcript in chat.log.\n\n",
                    N(bench_get(sus, "chat.metrics.max_tokens")), N(bench_get(sus, "chat.metrics.startup_s")), N(bench_get(sus, "chat.metrics.exchange_s")),
                    N(bench_get(sus, "chat.metrics.exit_status")));
    }
    if (at(sus, "llama")) {
        section_head(f, s, "llama", num++);
        if (suite_ok(sus, "llama")) {
            bench_llama_print(f, at(sus, "llama.rows"), "md");
            fprintf(f, "\nDecode reads %s GB of weights per token: %s GB/s. Process peak %s GB.\n\n", N(bench_get(sus, "llama.metrics.weight_gb")),
                    N(bench_get(sus, "llama.metrics.tg_weight_gbs")), N(bench_get(sus, "llama.metrics.peak_gb")));
        }
    }
    fprintf(f, "## Charts\n\n");
    if (cJSON_IsString(charts)) fprintf(f, "Charts skipped: %s. The numbers above are unaffected.\n\n", charts->valuestring);
    else {
        int n = 0;
        cJSON_ArrayForEach(r, charts) {
            fprintf(f, "![%s](%s)\n\n", str(r, "title", ""), str(r, "svg", ""));
            n++;
        }
        if (!n) fprintf(f, "No chart had data to draw.\n\n");
    }
    fprintf(f, "## Findings\n\n");
    cJSON_ArrayForEach(r, at(s, "findings")) fprintf(f, "- %s\n", r->valuestring);
    fprintf(f, "\n## Method\n\nEvery suite runs in its own process (`anvil bench --run-suite NAME`), so each peak memory is that suite's own and a crash fails only that suite. "
               "Times are wall-clock (monotonic clock); tokens/s counts processed tokens; llama-bench rows are mean ± sample standard deviation over repetitions. "
               "All numbers are in summary.json (schema 1); each suite's log is NAME.log beside this report.\n");
}

int bench_report_write(const char *dir, cJSON *summary, const cJSON *compare, int quiet) {
    cJSON *charts = bench_plot_all(dir, summary);
    cJSON_AddItemReferenceToObject(summary, "charts", charts);
    char *md = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&md, &len);
    if (!f) return -1;
    write_md(f, summary, charts, compare, compare ? str(compare, "generated_at", "the earlier run") : NULL);
    fclose(f);
    char p[4300];
    int rc = 0;
    if (av_write_file_atomic(av_path_join(p, sizeof p, dir, "report.md"), md, len) != AV_OK) rc = -1;
    cJSON_DeleteItemFromObject(summary, "charts");
    cJSON_AddItemToObject(summary, "charts", charts);
    char *js = cJSON_Print(summary);
    if (!js || av_write_file_atomic(av_path_join(p, sizeof p, dir, "summary.json"), js, strlen(js)) != AV_OK) rc = -1;
    free(js);
    if (bench_html_write(av_path_join(p, sizeof p, dir, "report.html"), summary, charts, md)) rc = -1;
    if (rc) fprintf(stderr, "anvil bench: error: writing the report: %s\n", av_last_error());
    if (!quiet) fwrite(md, 1, len, stdout);
    free(md);
    return rc;
}
