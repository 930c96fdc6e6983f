/* GPU attention kernels alone: anvil's flash and standard training attention (causal, f32 in and
 * out, bf16 tensor-core products inside) through av_attention_time on the CUDA backend, forward and
 * forward + backward, at a fixed number of tokens per batch. One JSON line per (T, head dim, kind);
 * bench/attention_vs_torch.py runs it beside PyTorch's scaled_dot_product_attention.
 *   attention_gpu [reps [tokens_per_batch [T...]]]   (model width 2048: H = 2048 / hd, KVH = H) */
#include "anvil.h"
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 10, tokens = argc > 2 ? atoi(argv[2]) : 16384;
    int Ts[16] = {512, 2048, 8192}, nT = 3, hds[2] = {64, 128};
    if (argc > 3) {
        nT = 0;
        for (int i = 3; i < argc && nT < 16; i++) Ts[nT++] = atoi(argv[i]);
    }
    const av_backend *be = av_backend_cuda();
    if (!be) { fprintf(stderr, "attention_gpu: no CUDA device: %s\n", av_last_error()); return 1; }
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < nT; i++)
            for (int kind = AV_ATTN_FLASH; kind <= AV_ATTN_STANDARD; kind++) {
                int T = Ts[i], hd = hds[h], H = 2048 / hd, B = tokens / T > 0 ? tokens / T : 1;
                double f = 0, fb = 0;
                size_t bf = 0, bfb = 0;
                const char *name = kind == AV_ATTN_FLASH ? "flash" : "standard";
                double flops = 4.0 * B * H * (double)T * T * hd / 2; /* causal: half the score matrix */
                if (av_attention_time(be, (av_attention_kind)kind, B, T, H, H, hd, 0, reps, &f, &bf) != AV_OK ||
                    av_attention_time(be, (av_attention_kind)kind, B, T, H, H, hd, 1, reps, &fb, &bfb) != AV_OK) {
                    printf("{\"tool\":\"anvil\",\"kind\":\"%s\",\"T\":%d,\"hd\":%d,\"error\":\"%s\"}\n", name, T, hd, av_last_error());
                    continue;
                }
                printf("{\"tool\":\"anvil\",\"kind\":\"%s\",\"B\":%d,\"T\":%d,\"H\":%d,\"hd\":%d,\"fwd_ms\":%.4f,\"fwdbwd_ms\":%.4f,"
                       "\"fwd_tflops\":%.1f,\"fwdbwd_tflops\":%.1f,\"buffers_gb\":%.3f}\n",
                       name, B, T, H, hd, f * 1e3, fb * 1e3, flops / f / 1e12, 3.5 * flops / fb / 1e12, bfb / 1e9);
                fflush(stdout);
            }
    return 0;
}
