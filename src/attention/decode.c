/* CPU twin of decode.cu (backend attention_decode): for each sequence, its new key/value row copied
 * into its cache region at its position (its ring slot in a rotating cache), then the standard
 * attention of its one query row over the cache's valid rows (av_attention_forward). Positions are
 * host memory on the CPU. */
#include "attention/attention.h"
#include "attention/kv_ring.h"
#include <string.h>

void av_attention_decode(float *out, const float *q, const float *k_new, const float *v_new, float *k_cache, float *v_cache,
                         const int32_t *pos, int N, size_t seq_stride, int H, int KVH, int hd, size_t row_stride, int keep, int ring) {
    size_t qd = (size_t)H * hd, kvd = (size_t)KVH * hd;
    size_t qrow = row_stride ? row_stride : qd, krow = row_stride ? row_stride : kvd;
    for (int i = 0; i < N; i++) {
        int p = pos[i], slot = av_kv_ring_slot(p, keep, ring), n = av_kv_ring_rows(p, ring);
        float *o = out + (size_t)i * qd;
        /* a position outside the sequence's region would write past it: the row attends nothing */
        if (p < 0 || (seq_stride && (size_t)(n > slot + 1 ? n : slot + 1) * kvd > seq_stride)) {
            memset(o, 0, qd * sizeof(float));
            continue;
        }
        float *kc = k_cache + (size_t)i * seq_stride, *vc = v_cache + (size_t)i * seq_stride;
        memcpy(kc + (size_t)slot * kvd, k_new + (size_t)i * krow, kvd * sizeof(float));
        memcpy(vc + (size_t)slot * kvd, v_new + (size_t)i * krow, kvd * sizeof(float));
        av_attention_forward(o, NULL, q + (size_t)i * qrow, kc, vc, 1, n, n - 1, H, KVH, hd);
    }
}
