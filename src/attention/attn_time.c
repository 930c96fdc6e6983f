/* Kernel-level timing of the attention implementations (anvil bench --suite attention). */
#include "anvil.h"
#include "core/status.h"

av_status av_attention_time(const av_backend *be, av_attention_kind kind, int B, int T, int H, int KVH, int hd, int backward,
                            int reps, double *seconds, size_t *bytes) {
    (void)be, (void)kind, (void)B, (void)T, (void)H, (void)KVH, (void)hd, (void)backward, (void)reps;
    *seconds = 0;
    *bytes = 0;
    return av_fail(AV_ERR_UNSUPPORTED, "attention timing: not implemented yet");
}
