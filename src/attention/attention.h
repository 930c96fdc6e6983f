/* Attention behind its own interface so implementations (standard, flash; CPU, CUDA) swap freely.
 * Causal, GQA: query head h reads KV head h / (H / KVH). */
#ifndef AV_ATTENTION_H
#define AV_ATTENTION_H
#include <stddef.h>
#include <stdint.h>

/* Standard (materialised) attention for one sequence.
 * q [T, H*hd]; k, v: [S, KVH*hd] (keys for positions 0..S-1); query t is at position pos0+t and
 * sees keys 0..pos0+t (pos0 + T <= S). out [T, H*hd]. If probs != NULL it receives the softmax
 * [H, T, S] (zeros where masked) for the backward. Scale 1/sqrt(hd). */
void av_attention_forward(float *out, float *probs, const float *q, const float *k, const float *v, int T, int S, int pos0,
                          int H, int KVH, int hd);
/* Gradients (accumulated) given the saved probs. dk, dv are [S, KVH*hd]. */
void av_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *probs, const float *q,
                           const float *k, const float *v, int T, int S, int pos0, int H, int KVH, int hd);

/* Flash attention forward (flash.c): the same function as av_attention_forward without the [H,T,S]
 * probabilities, computed tile by tile with an online softmax. lse (if not NULL) [H, T] receives each
 * row's log-sum-exp of the scaled scores (natural log), for a later backward. */
void av_flash_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, int T, int S, int pos0,
                                int H, int KVH, int hd);

/* Decode attention (backend attention_decode; decode.c / decode.cu): N sequences, one new query row
 * each; row i (position pos[i], host memory on the CPU) writes its new key/value rows k_new[i],
 * v_new[i] into its cache region (k_cache + i*seq_stride, row pos[i]) and attends keys 0..pos[i] of
 * it. row_stride: floats from one row of q / k_new / v_new to the next (0: packed). out [N, H*hd].
 * ring > 0: each region is a rotating cache (kv_ring.h): row av_kv_ring_slot(pos, keep, ring),
 * attending rows 0..av_kv_ring_rows(pos, ring)-1 (the order of the rows does not matter). */
void av_attention_decode(float *out, const float *q, const float *k_new, const float *v_new, float *k_cache, float *v_cache,
                         const int32_t *pos, int N, size_t seq_stride, int H, int KVH, int hd, size_t row_stride, int keep, int ring);

/* Batched training attention: B sequences of T rows each (positions 0..T-1, keys of their own
 * sequence only), token-major q [B*T, H*hd], k, v [B*T, KVH*hd], out [B*T, H*hd]; probs
 * [B, H, T, T]. The CPU version loops over the sequences (the reference); backends do every head of
 * every sequence in a few launches, using `work` (av_attention_batch_work floats; NULL or smaller:
 * the backend finds its own) as scratch. The backward accumulates into dq, dk, dv (each may be
 * NULL) and may overwrite probs. */
size_t av_attention_batch_work(int B, int T, int H, int KVH, int hd);
void av_attention_forward_batch(float *out, float *probs, const float *q, const float *k, const float *v, int B, int T, int H, int KVH,
                                int hd, float *work, size_t work_floats);
void av_attention_backward_batch(float *dq, float *dk, float *dv, const float *dout, float *probs, const float *q, const float *k,
                                 const float *v, int B, int T, int H, int KVH, int hd, float *work, size_t work_floats);

/* Flash training attention (backend ops flash_attention_forward_batch / _backward_batch; flash.c on
 * the CPU in f32, flash.cu / flash_bwd.cu with bf16 tensor cores): the function of av_attention_forward_batch / av_attention_backward_batch
 * without probs. The forward also writes lse [B, H, T] (natural-log log-sum-exp of each row's scaled
 * scores, or NULL); the backward takes out and lse of that forward, recomputes the softmax tile by
 * tile and accumulates dq, dk, dv with one writer per element (bit-reproducible). The reference is
 * the pair above: the same gradients within bf16 rounding (CUDA) or f32 rounding (CPU). With
 * rope_pos (positions [B*T]) and inv_freq the backward overwrites dq, dk, dv instead, dq and dk with
 * the RoPE backward applied, and with d16 also writes bf16 copies of dq | dk | dv. Both return -1
 * (doing nothing) for a shape they have no kernel for (a call with B = 0 only asks that) or when out
 * of scratch memory; out16 (or NULL): out also in bf16. */
int av_flash_attention_forward_batch(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T, int H, int KVH,
                                     int hd, uint16_t *out16);
int av_flash_attention_backward_batch(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse, const float *q,
                                      const float *k, const float *v, int B, int T, int H, int KVH, int hd, const int32_t *rope_pos,
                                      const float *inv_freq, uint16_t *d16);
/* Bytes the CPU flash attention allocates for one call (forward: k, v of S rows per sequence;
 * backward: the batch, T rows) on top of its arguments: packed copies and per-thread tiles. */
size_t av_flash_attention_scratch_bytes(int B, int T, int S, int H, int KVH, int hd, int backward);
#endif
