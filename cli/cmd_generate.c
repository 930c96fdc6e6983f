/* anvil generate: one prompt in, streamed text out; MLX-LM's flags and its speed/memory summary. */
#include "args.h"
#include "chat_prompt.h"
#include "common.h"
#include "anvil.h"
#include "generate_batch.h"
#include "lora_dp.h"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile sig_atomic_t g_interrupt;
static void on_sigint(int sig) { (void)sig; g_interrupt = 1; }

static int print_text(void *ud, const char *s, size_t n) {
    (void)ud;
    fwrite(s, 1, n, stdout);
    fflush(stdout);
    return 0;
}

static double peak_gb(const av_model *m) {
    return (double)av_model_peak_bytes(m) / 1e9;
}

int av_cmd_generate(int argc, char **argv) {
    const char *cmd = "generate", *prompt = NULL, *system = NULL, *tmpl = NULL, *prompts_file = NULL;
    int batch_size = 8;
    av_cli_model_opts mo = {0};
    int max_tokens = 100, top_k = 0, seed = 0, ignore_tmpl = 0, json = 0, max_kv = 0, rep_ctx = 20;
    double temp = 0.0, top_p = 1.0, min_p = 0.0, rep = 1.0;
    av_strlist stops = {0};
    lora_dp dp = {0}; /* --workers / --gpus: the flags and checks of lora's data parallelism */
    av_opt opts[] = {
        {"model", AV_OPT_STR, &mo.model, "model directory (HF layout)", 0, 0, NULL},
        {"adapter-path", AV_OPT_STR, &mo.adapter, "LoRA adapter (MLX or PEFT) to apply", 0, 0, NULL},
        {"prompt", AV_OPT_STR, &prompt, "prompt text ('-' reads stdin)", 0, 0, "p"},
        {"prompts-file", AV_OPT_STR, &prompts_file, "batch mode: one prompt per line (or JSONL {\"prompt\":...})", 0, 0, NULL},
        {"batch-size", AV_OPT_INT, &batch_size, "batch mode: sequences decoded together (default 8)", 1, 4096, NULL},
        {"max-tokens", AV_OPT_INT, &max_tokens, "maximum tokens to generate (default 100)", 0, 1e7, "m"},
        {"temp", AV_OPT_FLOAT, &temp, "sampling temperature; 0 = greedy (default 0)", 0, 100, NULL},
        {"top-p", AV_OPT_FLOAT, &top_p, "nucleus sampling mass (default 1 = off)", 0, 1, NULL},
        {"top-k", AV_OPT_INT, &top_k, "sample among the k most likely (default 0 = off)", 0, 1e7, NULL},
        {"min-p", AV_OPT_FLOAT, &min_p, "drop tokens below min-p x the top probability (default 0)", 0, 1, NULL},
        {"repetition-penalty", AV_OPT_FLOAT, &rep, "penalty for recent tokens (default 1 = off)", 0.01, 100, NULL},
        {"repetition-context-size", AV_OPT_INT, &rep_ctx, "recent tokens penalised (default 20)", 1, 1e7, NULL},
        {"seed", AV_OPT_INT, &seed, "random seed (default 0)", 0, 2147483647, NULL},
        {"system-prompt", AV_OPT_STR, &system, "system message for the chat template", 0, 0, NULL},
        {"ignore-chat-template", AV_OPT_FLAG, &ignore_tmpl, "use the prompt as raw text", 0, 0, NULL},
        {"chat-template", AV_OPT_STR, &tmpl, "Jinja chat template file to use instead of the model's", 0, 0, NULL},
        {"stop", AV_OPT_MULTI, &stops, "stop string (repeatable; not printed)", 0, 0, NULL},
        {"max-kv-size", AV_OPT_INT, &max_kv,
         "bound the KV cache to N tokens, MLX-LM's rotating cache: the first 4 tokens stay, later ones overwrite the oldest, so "
         "prompt and generation may run past N (default: no bound, a cache of prompt + max tokens)",
         AV_KV_MIN, 1e8, NULL},
        {"device", AV_OPT_STR, &mo.device, "cpu or cuda (default: cuda when a GPU is present)", 0, 0, NULL},
        {"attention", AV_OPT_STR, &mo.attention, "attention implementation: flash (tiled, no score matrix), standard (scores materialised) or auto (default: flash for long prompts)", 0, 0, NULL},
        {"no-graphs", AV_OPT_FLAG, &mo.no_graphs, "decode op by op instead of replaying a captured CUDA graph (debugging; slower)", 0, 0, NULL},
        {"dtype", AV_OPT_STR, &mo.dtype, "GPU compute: bf16 (default, tensor cores) or f32 (exact)", 0, 0, NULL},
        {"threads", AV_OPT_INT, &mo.threads, "CPU threads (default: all cores)", 1, 1024, "t"},
        {"json", AV_OPT_FLAG, &json, "print one JSON object with ids, text and speeds", 0, 0, NULL},
        {"workers", AV_OPT_INT, &dp.workers, "batch mode on the CPU: N worker threads with a model copy each (prompts split over them)", 1,
         LORA_DP_MAX, NULL},
        {"gpus", AV_OPT_STR, &dp.gpus, "batch mode on GPUs: a count N (GPUs 0..N-1) or a list 0,2,3; prompts split over them", 0, 0, NULL},
        {NULL, 0, NULL, NULL, 0, 0, NULL},
    };
    int r = av_args_parse(argc, argv, opts, cmd, "Generate text from a prompt (streams to stdout).");
    if (r) return r == 1 ? 0 : 2;
    if (!prompt == !prompts_file) return av_cli_error(cmd, "give exactly one of --prompt TEXT or --prompts-file F");
    if (stops.n > AV_MAX_STOPS) return av_cli_error(cmd, "at most %d --stop strings", AV_MAX_STOPS);
    if ((dp.workers || dp.gpus) && !prompts_file) return av_cli_error(cmd, "--workers and --gpus split a --prompts-file over workers");
    if (lora_dp_check(&dp, cmd, mo.device, 1 << 30, 0)) return 2;
    av_gen_opts go;
    av_gen_opts_default(&go);
    go.max_tokens = max_tokens;
    go.sampler.temp = (float)temp;
    go.sampler.top_p = (float)top_p;
    go.sampler.top_k = top_k;
    go.sampler.min_p = (float)min_p;
    go.sampler.repetition_penalty = (float)rep;
    go.sampler.repetition_context = rep_ctx;
    go.sampler.seed = (uint64_t)seed;
    for (int i = 0; i < stops.n; i++) go.stops[go.n_stops++] = stops.v[i];
    go.interrupt = &g_interrupt;
    if (prompts_file) {
        av_model *bm;
        av_tokenizer *bt;
        if (dp.nccl && av_cuda_set_device(dp.devices[0]) != AV_OK) return av_cli_fail(cmd);
        if (av_cli_load(cmd, &mo, &bm, &bt)) return 1;
        av_gen_dp gd = {.n = dp.n, .devices = dp.nccl ? dp.devices : NULL, .mo = &mo};
        av_batch_cli_opts bc = {prompts_file, system, tmpl, ignore_tmpl, json, &gd};
        av_batch_opts bo;
        av_batch_opts_default(&bo);
        bo.gen = go;
        bo.batch_size = batch_size;
        signal(SIGINT, on_sigint);
        int brc = av_cli_generate_batch(cmd, mo.model, bm, bt, &bc, &bo);
        av_model_free(bm);
        av_tokenizer_free(bt);
        return brc;
    }
    char *stdin_buf = NULL;
    if (!strcmp(prompt, "-")) {
        size_t cap = 1 << 16, n = 0;
        stdin_buf = malloc(cap);
        for (size_t k; stdin_buf && (k = fread(stdin_buf + n, 1, cap - n - 1, stdin)) > 0;) {
            n += k;
            if (n + 1 == cap) stdin_buf = realloc(stdin_buf, cap *= 2);
        }
        if (!stdin_buf) return av_cli_error(cmd, "out of memory reading stdin");
        stdin_buf[n] = 0;
        prompt = stdin_buf;
    }
    av_model *m;
    av_tokenizer *tok;
    if (av_cli_load(cmd, &mo, &m, &tok)) { free(stdin_buf); return 1; }
    int32_t *ids = NULL;
    int n = 0, rc = av_cli_prompt_ids(cmd, mo.model, tok, tmpl, system, prompt, ignore_tmpl, &ids, &n);
    av_session *s = NULL;
    int ctx = av_generate_context(m, n, max_tokens, 0);
    if (!rc && !max_kv && n >= ctx) rc = av_cli_error(cmd, "prompt has %d tokens; the context holds %d", n, ctx);
    if (!rc && (max_kv ? av_session_new_rotating(&s, m, max_kv, AV_KV_KEEP, 512) : av_session_new(&s, m, ctx, 512)) != AV_OK)
        rc = av_cli_fail(cmd);
    go.on_text = json ? NULL : print_text;
    signal(SIGINT, on_sigint);
    av_gen_result res = {0};
    if (!rc && av_generate(s, tok, ids, n, &go, &res) != AV_OK) rc = av_cli_fail(cmd);
    if (!rc) {
        double pk = peak_gb(m);
        if (json) {
            printf("{\"prompt_ids\":[");
            for (int i = 0; i < n; i++) printf(i ? ",%d" : "%d", ids[i]);
            printf("],\"ids\":[");
            for (int i = 0; i < res.n_ids; i++) printf(i ? ",%d" : "%d", res.ids[i]);
            printf("],\"text\":");
            av_json_fput_string(stdout, res.text, strlen(res.text));
            printf(",\"prompt_tokens\":%d,\"generation_tokens\":%d,\"prompt_tps\":%.3f,\"gen_tps\":%.3f,\"peak_mem_mb\":%.1f,"
                   "\"finish_reason\":\"%s\"}\n",
                   n, res.n_ids, res.prompt_tps, res.gen_tps, pk * 1e3, res.finish);
        } else {
            printf("\n");
            fprintf(stderr, "==========\nPrompt: %d tokens, %.3f tokens-per-sec\nGeneration: %d tokens, %.3f tokens-per-sec\n"
                            "Peak memory: %.3f GB\n", n, res.prompt_tps, res.n_ids, res.gen_tps, pk);
        }
    }
    av_gen_result_free(&res);
    free(ids);
    free(stdin_buf);
    av_session_free(s);
    av_model_free(m);
    av_tokenizer_free(tok);
    return rc;
}
