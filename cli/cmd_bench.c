/* anvil bench: llama-bench-style throughput of one model: prompt processing (pp, batched prefill
 * of N tokens) and text generation (tg, N single-token decode steps), repeated, with GB/s. */
#include "args.h"
#include "common.h"
#include "anvil.h"
#include <stdio.h>
#include <stdlib.h>

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int av_cmd_bench(int argc, char **argv) {
    const char *cmd = "bench";
    av_cli_model_opts mo = {0};
    int pp = 512, tg = 128, reps = 3, json = 0;
    av_opt opts[] = {
        {"model", AV_OPT_STR, &mo.model, "model directory (e.g. from anvil synth --preset tinyllama-1.1b)", 0, 0, NULL},
        {"prompt-tokens", AV_OPT_INT, &pp, "prompt-processing test length (default 512; 0 = skip)", 0, 1e6, "p"},
        {"gen-tokens", AV_OPT_INT, &tg, "generation test length (default 128; 0 = skip)", 0, 1e6, "n"},
        {"repeat", AV_OPT_INT, &reps, "repetitions, median reported (default 3)", 1, 1000, "r"},
        {"device", AV_OPT_STR, &mo.device, "cpu or cuda (default: cuda when a GPU is present)", 0, 0, NULL},
        {"no-graphs", AV_OPT_FLAG, &mo.no_graphs, "decode op by op instead of replaying a captured CUDA graph (debugging; slower)", 0, 0, NULL},
        {"dtype", AV_OPT_STR, &mo.dtype, "GPU compute: bf16 (default, tensor cores) or f32 (exact)", 0, 0, NULL},
        {"threads", AV_OPT_INT, &mo.threads, "CPU threads (default: all cores)", 1, 1024, "t"},
        {"json", AV_OPT_FLAG, &json, "print JSON lines", 0, 0, NULL},
        {NULL, 0, NULL, NULL, 0, 0, NULL},
    };
    int r = av_args_parse(argc, argv, opts, cmd, "Measure prompt-processing and generation speed.");
    if (r) return r == 1 ? 0 : 2;
    av_model *m;
    if (av_cli_load(cmd, &mo, &m, NULL)) return 1;
    int V = av_model_config(m)->vocab_size, ctx = pp + tg + 1;
    av_session *s;
    if (av_session_new(&s, m, ctx, pp > 0 ? (pp < 512 ? pp : 512) : 1) != AV_OK) { av_model_free(m); return av_cli_fail(cmd); }
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(pp + tg + 1));
    float *logits = malloc(sizeof(float) * (size_t)V);
    for (int i = 0; i < pp + tg + 1; i++) ids[i] = 1 + (int)((i * 2654435761u) % (unsigned)(V - 1));
    double *tpp = calloc((size_t)reps, sizeof(double)), *ttg = calloc((size_t)reps, sizeof(double));
    int rc = 0;
    /* warm-up: touch every weight page once */
    if (av_session_forward(s, ids, 1) != AV_OK) rc = av_cli_fail(cmd);
    /* generation as `anvil generate` runs it greedy: the engine's decode path (engine/decode.h) */
    av_sampler_params greedy;
    av_sampler_params_default(&greedy);
    av_stepper *step = NULL;
    if (!rc && tg > 0 && av_stepper_new(&step, s, &greedy) != AV_OK) rc = av_cli_fail(cmd);
    for (int k = 0; k < reps && !rc; k++) {
        if (pp > 0) {
            av_session_truncate(s, 0);
            double t0 = av_now();
            if (av_session_forward(s, ids, pp) != AV_OK) { rc = av_cli_fail(cmd); break; }
            av_session_last_logits(s, logits);
            tpp[k] = av_now() - t0;
        }
        if (tg > 0) {
            av_session_truncate(s, 0);
            double t0 = av_now();
            int32_t id = ids[0];
            for (int i = 0; i < tg; i++)
                if (av_stepper_next(step, id, NULL, 0, i + 1 < tg, &id) != AV_OK) { rc = av_cli_fail(cmd); break; }
            ttg[k] = av_now() - t0;
        }
        if (!json) fprintf(stderr, "bench: repetition %d/%d done\n", k + 1, reps);
    }
    if (!rc) {
        qsort(tpp, (size_t)reps, sizeof(double), cmp_double);
        qsort(ttg, (size_t)reps, sizeof(double), cmp_double);
        double pp_tps = pp ? pp / tpp[reps / 2] : 0, tg_tps = tg ? tg / ttg[reps / 2] : 0;
        double gbs = tg_tps * (double)av_model_weight_bytes(m) / 1e9;
        double pk = (double)av_model_peak_bytes(m) / 1e9;
        const char *be_name = av_backend_name(av_model_backend(m));
        if (json) {
            printf("{\"model\":\"%s\",\"device\":\"%s\",\"threads\":%d,\"pp\":%d,\"pp_tps\":%.3f,\"tg\":%d,\"tg_tps\":%.3f,"
                   "\"tg_gbps\":%.3f,\"weight_bytes\":%zu,\"peak_mem_gb\":%.3f}\n",
                   av_model_dir(m), be_name, mo.threads, pp, pp_tps, tg, tg_tps, gbs, av_model_weight_bytes(m), pk);
        } else {
            printf("| model | device | test | tokens/s |\n|---|---|---|---|\n");
            if (pp) printf("| %s | %s | pp%d | %.2f |\n", av_model_dir(m), be_name, pp, pp_tps);
            if (tg) printf("| %s | %s | tg%d | %.2f (%.1f GB/s of weights) |\n", av_model_dir(m), be_name, tg, tg_tps, gbs);
            printf("peak memory: %.3f GB\n", pk);
        }
    }
    free(tpp);
    free(ttg);
    free(ids);
    free(logits);
    av_stepper_free(step);
    av_session_free(s);
    av_model_free(m);
    return rc;
}
