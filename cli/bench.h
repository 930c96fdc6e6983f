/* anvil bench: what the orchestrator (cmd_bench.c), the suites (bench_suite_*.c), the system probes
 * (bench_sys.c) and the report writers (bench_report.c, bench_html.c, bench_plot.c) share. Each suite
 * runs in its own process and fills one cJSON object: {"status", "error", "seconds", "metrics", ...}. */
#ifndef AV_CLI_BENCH_H
#define AV_CLI_BENCH_H
#include "anvil.h"
#include <stdio.h>

typedef struct {
    const char *model;   /* model directory or .gguf */
    const char *device;  /* cpu | cuda | NULL (auto) */
    const char *suite;   /* this process's suite */
    const char *out;     /* report directory */
    const char *work;    /* scratch directory of this suite (removed after) */
    const char *data;    /* quotes data set (train/valid/test.jsonl) */
    int quick, threads;
    int no_graphs;       /* --no-graphs: decode op by op (CUDA debugging) */
    const char *dtype;   /* --dtype: GPU compute bf16 (default) | f32 */
    const char *attention; /* --attention auto | flash | standard (suites that compare the two set their own) */
    FILE *log;           /* the suite's log file */
    double t0;           /* suite start (av_now) */
    int step, nsteps;    /* progress */
} bench_ctx;

/* A progress line "[bench] suite i/n: what (elapsed, ~left)" on stderr and in the log. */
void bench_step(bench_ctx *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A line in the suite's log only. */
void bench_log(bench_ctx *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Records res.error (formatted), logs it and returns 1 (the suite failed). */
int bench_fail(bench_ctx *b, cJSON *res, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* bench_fail with the library's last error line, prefixed by what was being done. */
int bench_fail_lib(bench_ctx *b, cJSON *res, const char *what);
/* Adds a number (non-finite numbers are stored as null, which the checks flag). */
void bench_num(cJSON *o, const char *key, double v);
/* Seconds as "1:23" into buf. */
const char *bench_fmt_time(char *buf, size_t cap, double s);
/* A deterministic token row: ids in [1, V) (no BOS/EOS meaning), for timing. */
void bench_ids(int32_t *ids, int n, int V, unsigned salt);
/* Loads the model of the run on its device (attention kind set); 0 on success, else bench_fail. */
int bench_load(bench_ctx *b, cJSON *res, av_model **m, av_tokenizer **tok);

/* Suites: 0 = ok, else failed (res.error set). */
int bench_suite_finetune(bench_ctx *b, cJSON *res);
int bench_suite_finetune_enhanced(bench_ctx *b, cJSON *res);
int bench_suite_attention(bench_ctx *b, cJSON *res);
int bench_suite_comprehensive(bench_ctx *b, cJSON *res);
int bench_suite_chat(bench_ctx *b, cJSON *res);
int bench_suite_llama(bench_ctx *b, cJSON *res);
/* LoRA fine-tuning on the quotes data with the seed's setup; used by finetune, finetune-enhanced and
 * comprehensive (3 epochs). epochs > 0 sets iters = epochs x batches per epoch. */
typedef struct {
    int iters, epochs;
    int flash;       /* 1 flash (standard when the backend has no flash training: recorded), 0 standard, -1 the default */
    int save_best, monitor, batch, max_len, rank, layers;
    int subset;      /* > 0: only the first `subset` training rows (and half as many validation rows) */
    int val_batches;
    double alpha, lr;
} bench_lora_cfg;
int bench_lora_run(bench_ctx *b, cJSON *res, const bench_lora_cfg *c);

/* llama-bench: pp/tg tests; rows appended to `rows` (llama-bench field names). */
typedef struct {
    int n_prompt, n_gen, reps;
} bench_llama_cfg;
int bench_llama_rows(bench_ctx *b, cJSON *res, av_model *m, const bench_llama_cfg *c, cJSON *rows);
/* Prints rows as md | csv | json | jsonl (llama-bench's layouts) to f. */
void bench_llama_print(FILE *f, const cJSON *rows, const char *format);

/* ---- system ---- */
/* {"cpu", "cores", "mem_gb", "gpu", "driver", "os"} of this machine. */
cJSON *bench_machine(void);
/* Read bandwidth (GB/s) over `mib` MiB with OpenMP threads; median of reps. */
double bench_read_bandwidth(int mib, int reps);
const char *bench_version(void);
const char *bench_commit(void);

/* ---- report ---- */
/* Writes report.md, report.html, summary.json (and charts via bench_plot) into dir. summary is the
 * whole run; compare (may be NULL) an older summary.json. */
int bench_report_write(const char *dir, cJSON *summary, const cJSON *compare, int quiet);
/* Findings and executive summary computed from the numbers (added to summary). */
void bench_findings(cJSON *summary);
/* Charts: writes dir/NAME.svg and dir/NAME.png for each chart it can draw; returns the array of
 * chart objects {"name", "title", "svg", "png"} ("skipped" string when gnuplot is missing). */
cJSON *bench_plot_all(const char *dir, const cJSON *summary);
/* The HTML report (charts inlined). */
int bench_html_write(const char *path, const cJSON *summary, const cJSON *charts, const char *md_body);
/* A number at a path "suites.finetune.metrics.tokens_per_sec" (NAN when absent). */
double bench_get(const cJSON *root, const char *path);
#endif
