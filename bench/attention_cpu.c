/* CPU attention benchmark: standard (materialised probabilities) vs flash (tiled) training attention,
 * forward and forward + backward, through av_attention_time (median seconds over reps, bytes of the
 * attention's own buffers) and the process's peak RSS. Default shape: TinyLlama's heads (H 32,
 * KVH 4, head_dim 64), B 1, T 512 2048 8192. Built and run by bench/attention_cpu.sh:
 *   attention_cpu [reps [T...]]   (env AV_BENCH_SKIP_STANDARD_ABOVE=T: no standard run above T) */
#include "anvil.h"
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 3, H = 32, KVH = 4, hd = 64, B = 1;
    int Ts[16] = {512, 2048, 8192}, nT = 3;
    if (argc > 2) {
        nT = 0;
        for (int i = 2; i < argc && nT < 16; i++) Ts[nT++] = atoi(argv[i]);
    }
    const char *skip = getenv("AV_BENCH_SKIP_STANDARD_ABOVE");
    int skip_above = skip ? atoi(skip) : 1 << 30;
    const av_backend *be = av_backend_cpu();
    printf("| T | kind | fwd s | fwd+bwd s | attention MiB (fwd+bwd buffers) |\n|---|---|---|---|---|\n");
    for (int i = 0; i < nT; i++)
        for (int kind = AV_ATTN_FLASH; kind <= AV_ATTN_STANDARD; kind++) {
            const char *name = kind == AV_ATTN_FLASH ? "flash" : "standard";
            if (kind == AV_ATTN_STANDARD && Ts[i] > skip_above) {
                printf("| %d | %s | - | - | (not run) |\n", Ts[i], name);
                continue;
            }
            double f = 0, fb = 0;
            size_t bf = 0, bfb = 0;
            if (av_attention_time(be, (av_attention_kind)kind, B, Ts[i], H, KVH, hd, 0, reps, &f, &bf) != AV_OK ||
                av_attention_time(be, (av_attention_kind)kind, B, Ts[i], H, KVH, hd, 1, reps, &fb, &bfb) != AV_OK) {
                printf("| %d | %s | error: %s |\n", Ts[i], name, av_last_error());
                continue;
            }
            printf("| %d | %s | %.4f | %.4f | %.1f |\n", Ts[i], name, f, fb, bfb / 1048576.0);
            fflush(stdout);
        }
    printf("peak RSS %.1f MiB (B=%d H=%d KVH=%d hd=%d, %d threads, median of %d)\n", av_mem_peak_rss() / 1048576.0, B, H, KVH, hd,
           av_threads_get(), reps);
    return 0;
}
