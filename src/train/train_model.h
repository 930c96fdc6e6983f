/* Training forward + backward of the Llama model over a batch, on any backend: saves activations
 * (or only layer inputs with gradient checkpointing), computes the chunked LM-head cross-entropy,
 * and runs every op's backward in exact reverse order, accumulating gradients into the trainable
 * parameters (LoRA A/B; all weights as f32 master copies with full fine-tuning). */
#ifndef AV_TRAIN_MODEL_H
#define AV_TRAIN_MODEL_H
#include <stddef.h>
#include <stdint.h>
#include "model/layer.h"
#include "model/model.h"

typedef struct {
    char name[160]; /* PEFT-style name, e.g. "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" */
    float *data;    /* backend memory */
    float *grad;    /* backend memory, same size */
    size_t n;
    int rows, cols;
} av_param;

/* The av_train_ctx handle and its public functions (new, new_full, free, nparams, param_count, is_full,
 * set_dropout, set_flash, bytes, save/load_weights, save_model_dir, save_grads): include/anvil.h.
 * The context's params point at the attached adapters, in layer order, q k v o gate up down, A before B. */
av_param *av_train_params(av_train_ctx *c);
void av_train_zero_grads(av_train_ctx *c);
/* ids, targets: host [B, T] row-major; targets[b][t] = id to predict at position t, or -1 to ignore
 * (padding, masked prompt). Accumulates grad_scale * d(sum of NLL)/d(params) into the grads when
 * `backward` is non-zero. Returns the NLL sum and the number of valid targets. */
av_status av_train_step(av_train_ctx *c, const int32_t *ids, const int32_t *targets, int B, int T, float grad_scale,
                        int backward, double *nll_sum, int *n_valid);
/* Full fine-tuning (av_train_ctx_new_full) makes f32 master copies of every weight (embedding, norms,
 * projections, LM head; tied embeddings are one parameter) and points the model's weight views at them.
 * Params carry HF names in the order embed, layers (input_layernorm, q k v o, post_attention_layernorm,
 * gate up down), norm, lm_head. Needs the backend's xent_forward_backward_dw op; quantized weights are refused. */

/* LoRA dropout (PEFT semantics): the adapter branch sees dropout(x) (inverted, keep-scale
 * 1/(1-p)), the base matmul sees x; applied only in training steps. Each LoRA linear of each step
 * gets its own mask keyed by (seed, step, layer, projection) — nothing random is stored, the
 * backward regenerates the mask. 0 <= p < 1; p = 0 is exactly the path without dropout. Needs the
 * backend's dropout ops; refused for full fine-tuning (no adapters): av_train_set_dropout. */
/* The step counter keying the masks; it advances after every training step that backpropagated
 * with dropout. A trainer sets it to the iteration before each step so a resumed run draws the
 * same masks as an uninterrupted one. */
void av_train_set_dropout_step(av_train_ctx *c, uint64_t step);

/* av_train_step with explicit flags: AV_STEP_BACKWARD accumulates gradients; AV_STEP_DROPOUT
 * applies LoRA dropout (if set) in the forward. av_train_step(backward=1) = BACKWARD|DROPOUT,
 * av_train_step(backward=0) = 0 (evaluation: no dropout). DROPOUT alone gives the training-mode
 * loss for a fixed mask (finite-difference checks). */
enum { AV_STEP_BACKWARD = 1, AV_STEP_DROPOUT = 2 };
av_status av_train_step_ex(av_train_ctx *c, const int32_t *ids, const int32_t *targets, int B, int T, float grad_scale, int flags,
                           double *nll_sum, int *n_valid);


#endif
