/* GPU attention kernels alone: anvil's flash and standard training attention (causal, bf16 tensor-core
 * products inside; f32 out and gradients; q, k, v in f32, or in bf16 where training hands flash its
 * bf16-saved q, k, v) through av_attention_time on the CUDA backend, forward and forward + backward,
 * at a fixed number of tokens per batch; kind "flash_bf16": flash in PyTorch's contract (bf16 q, k, v,
 * out, dout and gradients; Hopper). One JSON line per (T, head dim, kind); bench/attention_vs_torch.py
 * runs it beside PyTorch's scaled_dot_product_attention.
 *   attention_gpu [flash] [reps [tokens_per_batch [T...]]]   (model width 2048: H = 2048 / hd, KVH = H;
 *   "flash": the flash kernels only, for A/B runs of their variants)
 * Decode attention (one new row per sequence against a long f32 KV cache; GB/s of K and V read):
 *   attention_gpu decode [reps [keys...]]   (TinyLlama H 32 KVH 4 hd 64; Llama-3-8B H 32 KVH 8 hd 128) */
#include "anvil.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int decode_main(int argc, char **argv) {
    int reps = argc > 2 ? atoi(argv[2]) : 20, keys[16] = {1024, 4096, 8192, 16384, 32768}, nk = 5;
    if (argc > 3) {
        nk = 0;
        for (int i = 3; i < argc && nk < 16; i++) keys[nk++] = atoi(argv[i]);
    }
    const av_backend *be = av_backend_cuda();
    if (!be) { fprintf(stderr, "attention_gpu: no CUDA device: %s\n", av_last_error()); return 1; }
    int shapes[2][3] = {{32, 4, 64}, {32, 8, 128}}, seqs[2] = {1, 8};
    for (int sh = 0; sh < 2; sh++)
        for (int ni = 0; ni < 2; ni++)
            for (int i = 0; i < nk; i++) {
                int H = shapes[sh][0], KVH = shapes[sh][1], hd = shapes[sh][2], N = seqs[ni];
                double t = 0;
                if (av_attention_decode_time(be, N, keys[i], H, KVH, hd, reps, &t) != AV_OK) {
                    printf("{\"tool\":\"anvil\",\"kind\":\"decode\",\"keys\":%d,\"error\":\"%s\"}\n", keys[i], av_last_error());
                    continue;
                }
                double bytes = 2.0 * N * keys[i] * KVH * hd * sizeof(float);
                printf("{\"tool\":\"anvil\",\"kind\":\"decode\",\"N\":%d,\"keys\":%d,\"H\":%d,\"KVH\":%d,\"hd\":%d,\"us\":%.2f,\"kv_gbs\":%.0f}\n", N,
                       keys[i], H, KVH, hd, t * 1e6, bytes / t / 1e9);
                fflush(stdout);
            }
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "decode")) return decode_main(argc, argv);
    /* kinds: flash (training's entry points), flash in bf16 throughout, standard */
    static const char *names[3] = {"flash", "flash_bf16", "standard"};
    int nkinds = 3;
    if (argc > 1 && !strcmp(argv[1], "flash")) {
        nkinds = 2;
        argc--, argv++;
    }
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
            for (int v = 0; v < nkinds; v++) {
                int T = Ts[i], hd = hds[h], H = 2048 / hd, B = tokens / T > 0 ? tokens / T : 1;
                double f = 0, fb = 0;
                size_t bf = 0, bfb = 0;
                const char *name = names[v];
                av_attention_kind kind = v == 2 ? AV_ATTN_STANDARD : AV_ATTN_FLASH;
                int io = v == 1 ? AV_ATTN_TIME_BF16_IO : 0;
                double flops = 4.0 * B * H * (double)T * T * hd / 2; /* causal: half the score matrix */
                if (av_attention_time(be, kind, B, T, H, H, hd, io, reps, &f, &bf) != AV_OK ||
                    av_attention_time(be, kind, B, T, H, H, hd, io | AV_ATTN_TIME_BACKWARD, reps, &fb, &bfb) != AV_OK) {
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
