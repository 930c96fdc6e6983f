/* Flash attention forward on the CPU: causal GQA attention over query blocks x key blocks with an
 * online (running max / running sum) softmax, never holding more than one block of scores. The
 * reference for the CUDA kernel in flash.cu; equal to standard.c within f32 rounding. */
#include <stddef.h>
#include "attention/attention.h"
#include "ops/simd.h"
#include <math.h>
#include <string.h>

#define FL_BR 32 /* query rows per block */
#define FL_BC 64 /* keys per block */

void av_flash_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, int T, int S, int pos0,
                                int H, int KVH, int hd) {
    (void)S;
    int group = H / KVH, qs = H * hd, ks = KVH * hd, nb = (T + FL_BR - 1) / FL_BR;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for schedule(dynamic, 1) if (H * (pos0 + T) > 4096)
    for (int job = 0; job < H * nb; job++) {
        int h = job / nb, b = nb - 1 - job % nb, kh = h / group;
        int t0 = b * FL_BR, bt = T - t0 < FL_BR ? T - t0 : FL_BR;
        float m[FL_BR], l[FL_BR], sc[FL_BC];
        for (int r = 0; r < bt; r++) {
            m[r] = -INFINITY;
            l[r] = 0.0f;
            memset(out + (size_t)(t0 + r) * qs + (size_t)h * hd, 0, (size_t)hd * sizeof(float));
        }
        int kend = pos0 + t0 + bt; /* keys the block's last row sees */
        for (int s0 = 0; s0 < kend; s0 += FL_BC) {
            for (int r = 0; r < bt; r++) {
                int n = pos0 + t0 + r + 1 - s0; /* visible keys of this row in this block */
                if (n <= 0) continue;
                if (n > FL_BC) n = FL_BC;
                const float *qr = q + (size_t)(t0 + r) * qs + (size_t)h * hd;
                float mx = m[r];
                for (int j = 0; j < n; j++) {
                    sc[j] = av_dot_f32(qr, k + (size_t)(s0 + j) * ks + (size_t)kh * hd, hd) * scale;
                    if (sc[j] > mx) mx = sc[j];
                }
                float corr = expf(m[r] - mx), sum = 0.0f; /* m[r] = -inf on the first block: corr 0 */
                float *o = out + (size_t)(t0 + r) * qs + (size_t)h * hd;
                if (corr != 1.0f) av_scale(o, corr, hd);
                for (int j = 0; j < n; j++) {
                    float p = expf(sc[j] - mx);
                    sum += p;
                    av_axpy(o, p, v + (size_t)(s0 + j) * ks + (size_t)kh * hd, hd);
                }
                l[r] = l[r] * corr + sum;
                m[r] = mx;
            }
        }
        for (int r = 0; r < bt; r++) {
            av_scale(out + (size_t)(t0 + r) * qs + (size_t)h * hd, 1.0f / l[r], hd);
            if (lse) lse[(size_t)h * T + t0 + r] = m[r] + logf(l[r]);
        }
    }
}
