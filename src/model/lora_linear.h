/* A projection with an optional LoRA adapter, forward and backward side by side: the frozen base
 * product y = x W^T plus s (u A^T) B^T, u = x or, on training steps with LoRA dropout, dropout(x).
 *   dx += dy W + s (dy B) A (through the dropout's backward when on),
 *   dA += s (dy B)^T u,  dB += s dy^T (u A^T).
 * Full fine-tuning (ws->full) takes the base weight's gradient instead. */
#ifndef AV_LORA_LINEAR_H
#define AV_LORA_LINEAR_H
#include "model/layer.h"

/* A base weight the 16-bit products take (bf16, unquantized, ws->mm16). */
static inline int av_lora_w16(const av_layer_ws *ws, const av_linear *L) { return ws->mm16 && L->w.dtype == AV_BF16 && !L->w.q_bits; }

/* out (= or, with acc, +=) x W^T + the adapter's term, N rows. x16: x already in bf16 (NULL: none;
 * acc and x16 need av_lora_w16); xa_keep: where u A^T is kept for the backward (NULL: scratch in
 * ws->lora_tmp, which holds N * (rank + out features) floats). l, p: the layer and projection (the
 * dropout mask's key). */
void av_lora_linear_forward(const av_backend *be, av_layer_ws *ws, float *out, int acc, const float *x, const uint16_t *x16,
                            const av_linear *L, int l, av_proj p, int N, float *xa_keep);
/* Backward: dx (= or, with acc, +=) dy W + the adapter's term (dx may be NULL); dy16: dy in bf16 for
 * the base product (or NULL); x: the forward's input; xa: the forward's kept u A^T (or NULL:
 * recomputed). Gradients go to ws->ga/gb[l * AV_PROJ_COUNT + p] (or ws->gw with full). Uses
 * ws->lora3 (3 * N * rank floats) and, with dropout, ws->xdrop / ws->dxdrop. */
void av_lora_linear_backward(const av_backend *be, av_layer_ws *ws, float *dx, int acc, const float *dy, const uint16_t *dy16,
                             const float *x, const av_linear *L, int l, av_proj p, int N, const float *xa);

#endif
