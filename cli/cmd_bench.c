/* anvil bench: the benchmark suites and their report. Options, the default model (a TinyLlama-shaped
 * random model synthesized once into ~/.cache/anvil), one child process per suite (its own peak
 * memory; a crash fails that suite only), progress, summary.json and the reports (bench_report.c).
 * With -p/-n/-r/--json/-o and no --suite it is llama-bench (bench_suite_llama.c) on stdout, as before. */
#include "args.h"
#include "bench.h"
#include "common.h"
#include "anvil.h"
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    const char *name, *title;
    int (*fn)(bench_ctx *, cJSON *);
    double est_quick, est_full; /* seconds, for the estimate of what is left */
} suite_def;

static const suite_def k_suites[] = {
    {"finetune", "LoRA fine-tuning (seed setup)", bench_suite_finetune, 8, 150},
    {"finetune-enhanced", "LoRA fine-tuning: flash attention, best adapter, monitor", bench_suite_finetune_enhanced, 5, 80},
    {"attention", "Standard vs flash attention", bench_suite_attention, 6, 150},
    {"comprehensive", "Comprehensive (machine, inference, quantization, batching, chat, 3-epoch LoRA)", bench_suite_comprehensive, 25, 330},
    {"chat", "Interactive chat in a terminal", bench_suite_chat, 3, 30},
    {"llama", "llama-bench tests", bench_suite_llama, 4, 120},
};
#define N_SUITES ((int)(sizeof k_suites / sizeof k_suites[0]))

static const suite_def *find_suite(const char *name) {
    for (int i = 0; i < N_SUITES; i++)
        if (!strcmp(k_suites[i].name, name)) return &k_suites[i];
    return NULL;
}

/* repository-relative resource: ./rel, else next to the binary (build/anvil -> ../rel) */
static int find_resource(const char *rel, char *out, size_t cap) {
    if (av_dir_exists(rel)) { snprintf(out, cap, "%s", rel); return 0; }
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return -1;
    exe[n] = 0;
    for (int up = 0; up < 3; up++) {
        char *s = strrchr(exe, '/');
        if (!s) return -1;
        *s = 0;
        snprintf(out, cap, "%s/%s", exe, rel);
        if (av_dir_exists(out)) return 0;
    }
    return -1;
}

static int copy_file(const char *src_dir, const char *dst_dir, const char *name) {
    char src[4200], dst[4200], *buf;
    size_t len;
    av_path_join(src, sizeof src, src_dir, name);
    if (!av_file_exists(src)) return 0;
    if (av_file_read(src, &buf, &len) != AV_OK) return -1;
    av_status st = av_write_file_atomic(av_path_join(dst, sizeof dst, dst_dir, name), buf, len);
    free(buf);
    return st == AV_OK ? 0 : -1;
}

/* The quick preset: a small model on the built-in byte-level tokenizer (vocabulary 512, 4 layers of
 * 128): every suite in seconds on two cores, the same code paths as the full model. */
static void quick_config(av_config *c) {
    av_synth_preset(c, "tiny");
    c->hidden_size = 128;
    c->intermediate_size = 352;
    c->n_layers = 4;
    c->n_heads = 4;
    c->n_kv_heads = 2;
    c->head_dim = 32;
}

/* Synthesizes (once) the default model into the cache; out: its directory. */
static int default_model(const char *cmd, int quick, const char *tokdir, char *out, size_t cap, char *preset, size_t pcap) {
    const char *home = getenv("HOME");
    char cache[4200];
    snprintf(cache, sizeof cache, "%s/.cache/anvil", home && *home ? home : "/tmp");
    snprintf(preset, pcap, "%s", quick ? "quick: 4 layers of 128, byte-level vocabulary of 512" : "tinyllama-1.1b");
    snprintf(out, cap, "%s/bench-%s-bf16", cache, quick ? "quick" : "tinyllama-1.1b");
    char cfg[4300];
    if (av_file_exists(av_path_join(cfg, sizeof cfg, out, "config.json"))) return 0;
    if (av_mkdir_p(cache) != AV_OK) return av_cli_fail(cmd);
    av_config c;
    if (quick) quick_config(&c);
    else av_synth_preset(&c, "tinyllama-1.1b");
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp-%d", out, (int)getpid());
    fprintf(stderr, "[bench] synthesizing a %.3fB-parameter random model into %s (once) ...\n", av_config_param_count(&c) / 1e9, out);
    if (av_synth_write(&c, tmp, 0, AV_BF16) != AV_OK) { av_remove_tree(tmp); return av_cli_fail(cmd); }
    int rc = 0;
    if (quick) { /* the built-in tokenizer, with the Llama-2 directory's chat template when there is one */
        rc = av_tokenizer_write_builtin(tmp) != AV_OK;
        if (!rc && tokdir) rc = copy_file(tokdir, tmp, "chat_template.jinja");
    } else if (tokdir) {
        const char *files[] = {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"};
        for (size_t i = 0; i < sizeof files / sizeof *files && !rc; i++) rc = copy_file(tokdir, tmp, files[i]);
    } else {
        rc = av_tokenizer_write_builtin(tmp) != AV_OK;
    }
    if (rc || rename(tmp, out) != 0) {
        av_remove_tree(tmp);
        return rc ? av_cli_fail(cmd) : av_cli_error(cmd, "%s: %s", out, strerror(errno));
    }
    return 0;
}

/* ---- child: one suite in this process ---------------------------------------------------------- */
static int run_child(bench_ctx *b, const char *result_path, const char *log_path) {
    const suite_def *s = find_suite(b->suite);
    if (!s) return av_cli_error("bench", "unknown suite '%s'", b->suite);
    b->log = fopen(log_path, "w");
    if (!b->log) return av_cli_error("bench", "%s: %s", log_path, strerror(errno));
    av_mkdir_p(b->work);
    cJSON *res = cJSON_CreateObject();
    b->t0 = av_now();
    bench_log(b, "anvil bench --suite %s: model %s, device %s, %s", s->name, b->model, b->device ? b->device : "auto", b->quick ? "quick" : "full");
    int rc = s->fn(b, res);
    double secs = av_now() - b->t0;
    cJSON_AddStringToObject(res, "status", rc ? "failed" : "ok");
    bench_num(res, "seconds", secs);
    bench_log(b, "suite %s: %s in %.2fs", s->name, rc ? "FAILED" : "ok", secs);
    char *txt = cJSON_Print(res);
    av_status st = av_write_file_atomic(result_path, txt, strlen(txt));
    free(txt);
    cJSON_Delete(res);
    fclose(b->log);
    av_remove_tree(b->work);
    if (st != AV_OK) return av_cli_fail("bench");
    return rc;
}

/* ---- parent ------------------------------------------------------------------------------------ */
static char *last_line(const char *path) {
    char *buf;
    size_t len;
    if (av_file_read(path, &buf, &len) != AV_OK) return strdup("no log");
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == ' ')) buf[--len] = 0;
    char *s = strrchr(buf, '\n');
    char *r = strdup(s ? s + 1 : buf);
    free(buf);
    return r;
}

/* Ctrl-C / SIGTERM: the running suite is stopped (SIGTERM forwarded), the report says what ran. */
static volatile sig_atomic_t g_stop;
static volatile pid_t g_child;
static void on_signal(int sig) {
    g_stop = sig;
    if (g_child > 0) kill(g_child, SIGTERM);
}

static cJSON *spawn_suite(const bench_ctx *b, const suite_def *s, const char *tok_note) {
    char result[4300], logp[4300], work[4300], th[16];
    (void)tok_note;
    snprintf(result, sizeof result, "%s/.%s.result.json", b->out, s->name);
    snprintf(logp, sizeof logp, "%s/%s.log", b->out, s->name);
    snprintf(work, sizeof work, "%s/work-%s", b->out, s->name);
    snprintf(th, sizeof th, "%d", b->threads);
    unlink(result);
    const char *argv[32];
    int a = 0;
    argv[a++] = "anvil";
    argv[a++] = "bench";
    argv[a++] = "--run-suite";
    argv[a++] = s->name;
    argv[a++] = "--model";
    argv[a++] = b->model;
    argv[a++] = "--out";
    argv[a++] = b->out;
    argv[a++] = "--result";
    argv[a++] = result;
    argv[a++] = "--log";
    argv[a++] = logp;
    argv[a++] = "--work";
    argv[a++] = work;
    argv[a++] = "--data";
    argv[a++] = b->data;
    argv[a++] = "--threads";
    argv[a++] = th;
    if (b->device) { argv[a++] = "--device"; argv[a++] = b->device; }
    if (b->quick) argv[a++] = "--quick";
    if (b->no_graphs) argv[a++] = "--no-graphs";
    if (b->dtype) { argv[a++] = "--dtype"; argv[a++] = b->dtype; }
    if (b->attention) { argv[a++] = "--attention"; argv[a++] = b->attention; }
    argv[a] = NULL;
    fflush(stdout);
    fflush(stderr);
    double t0 = av_now();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the orchestrator */
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        execv("/proc/self/exe", (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    g_child = pid;
    if (pid > 0)
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    g_child = 0;
    double wall = av_now() - t0;
    cJSON *res = NULL;
    if (av_json_load(result, &res) != AV_OK || !cJSON_IsObject(res)) {
        cJSON_Delete(res);
        res = cJSON_CreateObject();
        char *ll = last_line(logp), msg[1400];
        if (pid < 0) snprintf(msg, sizeof msg, "fork: %s", strerror(errno));
        else if (WIFSIGNALED(status)) snprintf(msg, sizeof msg, "killed by signal %d; last log line: %s", WTERMSIG(status), ll);
        else snprintf(msg, sizeof msg, "exited with status %d; last log line: %s", WIFEXITED(status) ? WEXITSTATUS(status) : -1, ll);
        free(ll);
        cJSON_AddStringToObject(res, "status", "failed");
        cJSON_AddStringToObject(res, "error", msg);
    }
    else if (pid > 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0) && !strcmp(av_json_str(res, "status", ""), "ok")) {
        /* a result, then a bad exit (a sanitizer's report at exit, a crash in cleanup): not ok */
        char msg[200];
        snprintf(msg, sizeof msg, "the suite reported ok, then its process %s %d", WIFEXITED(status) ? "exited with status" : "was killed by signal",
                 WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
        cJSON_ReplaceItemInObject(res, "status", cJSON_CreateString("failed"));
        cJSON_AddStringToObject(res, "error", msg);
    }
    unlink(result);
    cJSON_DeleteItemFromObject(res, "seconds");
    bench_num(res, "seconds", wall);
    cJSON_AddStringToObject(res, "title", s->title);
    cJSON_AddStringToObject(res, "log", strrchr(logp, '/') + 1);
    return res;
}

static double file_bytes(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 ? (double)st.st_size : 0;
}

static cJSON *model_info(const char *model, int synthetic, const char *preset) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "path", model);
    cJSON_AddBoolToObject(o, "synthetic", synthetic);
    cJSON_AddStringToObject(o, "weights", synthetic ? "random (synthesized by anvil; quality numbers are not meaningful)" : "as given");
    if (preset[0]) cJSON_AddStringToObject(o, "preset", preset);
    av_config c;
    char p[4300];
    if (av_dir_exists(model) && av_config_load(&c, av_path_join(p, sizeof p, model, "config.json")) == AV_OK) {
        cJSON_AddNumberToObject(o, "params", (double)av_config_param_count(&c));
        cJSON_AddNumberToObject(o, "layers", c.n_layers);
        cJSON_AddNumberToObject(o, "hidden_size", c.hidden_size);
        cJSON_AddNumberToObject(o, "vocab_size", c.vocab_size);
        cJSON_AddStringToObject(o, "dtype", c.quant_bits ? "quantized" : av_dtype_name(c.dtype));
        cJSON_AddNumberToObject(o, "weight_bytes", file_bytes(av_path_join(p, sizeof p, model, "model.safetensors")));
    } else if (!av_dir_exists(model)) {
        cJSON_AddNumberToObject(o, "weight_bytes", file_bytes(model));
    }
    return o;
}

static int parse_suites(const char *list, int *sel) {
    for (int i = 0; i < N_SUITES; i++) sel[i] = !list || !strcmp(list, "all");
    if (!list || !strcmp(list, "all")) return 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        const suite_def *s = find_suite(t);
        if (!s) {
            char names[256] = "";
            for (int i = 0; i < N_SUITES; i++) snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "", k_suites[i].name);
            return av_cli_error("bench", "--suite: unknown suite '%s' (%s, all)", t, names);
        }
        sel[s - k_suites] = 1;
    }
    return 0;
}

/* llama-bench on stdout (the command before the suites existed; tests and scripts use --json). */
static int llama_mode(bench_ctx *b, int pp, int tg, int reps, int json, const char *fmt) {
    cJSON *res = cJSON_CreateObject(), *rows = cJSON_CreateArray();
    av_model *m;
    b->suite = "llama";
    b->t0 = av_now();
    int rc = bench_load(b, res, &m, NULL);
    if (!rc) {
        bench_llama_cfg c = {.n_prompt = pp, .n_gen = tg, .reps = reps};
        rc = bench_llama_rows(b, res, m, &c, rows);
        if (!rc && json) {
            const cJSON *r;
            double pps = 0, tps = 0;
            cJSON_ArrayForEach(r, rows) {
                if (bench_get(r, "n_prompt") > 0) pps = bench_get(r, "avg_ts");
                else tps = bench_get(r, "avg_ts");
            }
            printf("{\"model\":\"%s\",\"device\":\"%s\",\"threads\":%d,\"pp\":%d,\"pp_tps\":%.3f,\"tg\":%d,\"tg_tps\":%.3f,"
                   "\"tg_gbps\":%.3f,\"weight_bytes\":%zu,\"peak_mem_gb\":%.3f}\n",
                   av_model_dir(m), av_backend_name(av_model_backend(m)), av_threads_get(), pp, pps, tg, tps,
                   tps * (double)av_model_weight_bytes(m) / 1e9, av_model_weight_bytes(m), (double)av_model_peak_bytes(m) / 1e9);
        } else if (!rc) {
            bench_llama_print(stdout, rows, fmt ? fmt : "md");
        }
        av_model_free(m);
    }
    cJSON_Delete(res);
    cJSON_Delete(rows);
    return rc;
}

int av_cmd_bench(int argc, char **argv) {
    const char *cmd = "bench";
    bench_ctx b = {0};
    const char *suites = NULL, *out = NULL, *compare = NULL, *tokdir = NULL, *fmt = NULL;
    const char *run_suite = NULL, *result = NULL, *logp = NULL, *work = NULL, *data = NULL;
    int pp = -1, tg = -1, reps = -1, json = 0, quiet = 0;
    av_opt opts[] = {
        {"suite", AV_OPT_STR, &suites, "suites to run, comma-separated: finetune, finetune-enhanced, attention, comprehensive, chat, llama (default: all)", 0, 0, NULL},
        {"model", AV_OPT_STR, &b.model, "model directory or .gguf (default: a TinyLlama-1.1B-shaped random model, synthesized once into ~/.cache/anvil)", 0, 0, NULL},
        {"device", AV_OPT_STR, &b.device, "cpu or cuda (default: cuda when a GPU is present)", 0, 0, NULL},
        {"quick", AV_OPT_FLAG, &b.quick, "small model (default) and few iterations: a smoke run of every suite", 0, 0, NULL},
        {"out", AV_OPT_STR, &out, "report directory (default benchmark_results/<UTC timestamp>)", 0, 0, NULL},
        {"compare", AV_OPT_STR, &compare, "an earlier summary.json: adds a change column and flags regressions", 0, 0, NULL},
        {"threads", AV_OPT_INT, &b.threads, "CPU threads (default 0: all cores)", 0, 1024, "t"},
        {"tokenizer", AV_OPT_STR, &tokdir, "tokenizer for the synthesized model (default tests/fixtures/llama2-tokenizer, else built-in)", 0, 0, NULL},
        {"data", AV_OPT_STR, &data, "fine-tuning data directory (default data/quotes)", 0, 0, NULL},
        {"quiet", AV_OPT_FLAG, &quiet, "do not print the report at the end", 0, 0, NULL},
        {"prompt-tokens", AV_OPT_INT, &pp, "llama-bench: prompt-processing test length (default 512; 0 = skip)", 0, 1e6, "p"},
        {"gen-tokens", AV_OPT_INT, &tg, "llama-bench: generation test length (default 128; 0 = skip)", 0, 1e6, "n"},
        {"repeat", AV_OPT_INT, &reps, "llama-bench: repetitions (default 3)", 1, 1000, "r"},
        {"output", AV_OPT_STR, &fmt, "llama-bench output: md (default), csv, json, jsonl", 0, 0, "o"},
        {"json", AV_OPT_FLAG, &json, "llama-bench: one JSON line {model, pp_tps, tg_tps, ...} (as before the suites)", 0, 0, NULL},
        {"no-graphs", AV_OPT_FLAG, &b.no_graphs, "decode op by op instead of replaying a captured CUDA graph (debugging; slower)", 0, 0, NULL},
        {"dtype", AV_OPT_STR, &b.dtype, "GPU compute: bf16 (default, tensor cores) or f32 (exact)", 0, 0, NULL},
        {"attention", AV_OPT_STR, &b.attention, "auto (default), flash or standard: for llama-bench tests and every suite that does not compare the two", 0, 0, NULL},
        {"run-suite", AV_OPT_STR, &run_suite, "internal: run one suite in this process", 0, 0, NULL},
        {"result", AV_OPT_STR, &result, "internal: result file of --run-suite", 0, 0, NULL},
        {"log", AV_OPT_STR, &logp, "internal: log file of --run-suite", 0, 0, NULL},
        {"work", AV_OPT_STR, &work, "internal: scratch directory of --run-suite", 0, 0, NULL},
        {NULL, 0, NULL, NULL, 0, 0, NULL},
    };
    int r = av_args_parse(argc, argv, opts, cmd,
                          "Benchmark suites and report (report.md, report.html, summary.json, charts, one log per suite).\n"
                          "With -p/-n/-r/-o/--json and no --suite: llama-bench's tests on stdout.");
    if (r) return r == 1 ? 0 : 2;
    if (b.device && strcmp(b.device, "cpu") && strcmp(b.device, "cuda") && strcmp(b.device, "auto"))
        return av_cli_error(cmd, "--device must be cpu, cuda or auto (got '%s')", b.device);
    if (b.device && !strcmp(b.device, "auto")) b.device = NULL;
    if (fmt && strcmp(fmt, "md") && strcmp(fmt, "csv") && strcmp(fmt, "json") && strcmp(fmt, "jsonl"))
        return av_cli_error(cmd, "--output must be md, csv, json or jsonl (got '%s')", fmt);
    if (b.dtype && strcmp(b.dtype, "bf16") && strcmp(b.dtype, "f32")) return av_cli_error(cmd, "--dtype: '%s' is not bf16 or f32", b.dtype);
    av_attention_kind attn;
    if (av_cli_attention(cmd, b.attention, &attn)) return 2;
    char dbuf[4200];
    if (!data) data = find_resource("data/quotes", dbuf, sizeof dbuf) == 0 ? dbuf : "data/quotes";
    b.data = data;
    if (run_suite) {
        if (!b.model || !result || !logp || !work || !out) return av_cli_error(cmd, "--run-suite needs --model, --out, --result, --log and --work");
        b.suite = run_suite;
        b.out = out;
        b.work = work;
        return run_child(&b, result, logp);
    }
    int sel[N_SUITES];
    if (parse_suites(suites, sel)) return 2;
    char mbuf[4200], preset[128] = "", tbuf[4200];
    int synthetic = 0;
    if (!tokdir && find_resource("tests/fixtures/llama2-tokenizer", tbuf, sizeof tbuf) == 0) tokdir = tbuf;
    if (!b.model) {
        if (default_model(cmd, b.quick, tokdir, mbuf, sizeof mbuf, preset, sizeof preset)) return 1;
        b.model = mbuf;
        synthetic = 1;
    } else if (!av_dir_exists(b.model) && !av_file_exists(b.model)) {
        return av_cli_error(cmd, "%s: no such model directory or file", b.model);
    }
    if (!suites && (pp >= 0 || tg >= 0 || reps >= 0 || json || fmt))
        return llama_mode(&b, pp >= 0 ? pp : 512, tg >= 0 ? tg : 128, reps > 0 ? reps : 3, json, fmt);

    /* the report directory */
    char obuf[4200];
    time_t now = time(NULL);
    char stamp[64];
    strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", gmtime(&now));
    if (!out) {
        snprintf(obuf, sizeof obuf, "benchmark_results/%s", stamp);
        out = obuf;
    }
    if (av_mkdir_p(out) != AV_OK) return av_cli_fail(cmd);
    b.out = out;
    cJSON *old = NULL;
    if (compare && av_json_load(compare, &old) != AV_OK) return av_cli_fail(cmd);

    cJSON *sum = cJSON_CreateObject();
    cJSON_AddNumberToObject(sum, "schema", 1);
    char iso[64];
    strftime(iso, sizeof iso, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    cJSON_AddStringToObject(sum, "generated_at", iso);
    cJSON *an = cJSON_AddObjectToObject(sum, "anvil");
    cJSON_AddStringToObject(an, "version", bench_version());
    cJSON_AddStringToObject(an, "commit", bench_commit());
    cJSON *mach = bench_machine();
    cJSON_AddItemToObject(sum, "machine", mach);
    cJSON *mi = model_info(b.model, synthetic, preset);
    if (synthetic) cJSON_AddStringToObject(mi, "tokenizer", tokdir && !b.quick ? tokdir : "built-in byte-level");
    cJSON_AddItemToObject(sum, "model", mi);
    cJSON *run = cJSON_AddObjectToObject(sum, "run");
    cJSON_AddBoolToObject(run, "quick", b.quick);
    cJSON_AddStringToObject(run, "device", b.device ? b.device : "auto");
    cJSON_AddNumberToObject(run, "threads", b.threads ? b.threads : (double)sysconf(_SC_NPROCESSORS_ONLN));
    cJSON_AddStringToObject(run, "data", b.data);
    cJSON *sr = cJSON_AddObjectToObject(sum, "suites");

    double t0 = av_now(), est_total = 0, est_done = 0;
    int n_sel = 0, k = 0, n_ok = 0;
    for (int i = 0; i < N_SUITES; i++)
        if (sel[i]) { n_sel++; est_total += b.quick ? k_suites[i].est_quick : k_suites[i].est_full; }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int n_run = 0;
    for (int i = 0; i < N_SUITES && !g_stop; i++) {
        if (!sel[i]) continue;
        const suite_def *s = &k_suites[i];
        n_run++;
        double el = av_now() - t0, scale = est_done > 0 && el > 5 ? el / est_done : 1, left = (est_total - est_done) * scale;
        char e1[32], e2[32];
        fprintf(stderr, "[bench] (%d/%d) %s: starting (%s elapsed, ~%s left)\n", ++k, n_sel, s->name, bench_fmt_time(e1, sizeof e1, el),
                bench_fmt_time(e2, sizeof e2, left));
        cJSON *res = spawn_suite(&b, s, NULL);
        const char *st = cJSON_GetObjectItem(res, "status")->valuestring;
        n_ok += !strcmp(st, "ok");
        est_done += b.quick ? s->est_quick : s->est_full;
        fprintf(stderr, "[bench] (%d/%d) %s: %s in %.1fs%s%s\n", k, n_sel, s->name, st, bench_get(res, "seconds"),
                strcmp(st, "ok") ? ": " : "", strcmp(st, "ok") ? cJSON_GetObjectItem(res, "error")->valuestring : "");
        cJSON_AddItemToObject(sr, s->name, res);
    }
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    double total = av_now() - t0;
    if (g_stop) {
        char msg[160];
        snprintf(msg, sizeof msg, "interrupted (signal %d) after %d of %d suites", (int)g_stop, n_run, n_sel);
        cJSON_AddStringToObject(run, "interrupted", msg);
        fprintf(stderr, "[bench] %s; writing the report of what ran\n", msg);
    }
    n_sel = n_run;
    bench_num(run, "duration_s", total);
    cJSON_AddNumberToObject(run, "suites_run", n_sel);
    cJSON_AddNumberToObject(run, "suites_ok", n_ok);
    bench_num(run, "success_rate", n_sel ? (double)n_ok / n_sel : NAN);
    double bw = bench_get(sum, "suites.comprehensive.bandwidth.read_gbs");
    if (isfinite(bw)) bench_num(mach, "read_bandwidth_gbs", bw);
    bench_findings(sum);
    int rc = bench_report_write(out, sum, old, quiet);
    fprintf(stderr, "[bench] %d/%d suites ok in %.1fs; report: %s/report.md, %s/report.html, %s/summary.json\n", n_ok, n_sel, total, out, out, out);
    cJSON_Delete(sum);
    cJSON_Delete(old);
    return rc ? 1 : n_ok == n_sel ? 0 : 1;
}
