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

typedef struct av_train_ctx av_train_ctx;

/* max_rows x max_len is the largest batch; grad_checkpoint keeps only layer inputs. Create the
 * context after attaching adapters (av_lora_attach / av_adapter_load): its params point at them,
 * in layer order, q k v o gate up down, A before B. */
av_status av_train_ctx_new(av_train_ctx **out, av_model *m, int max_rows, int max_len, int grad_checkpoint);
void av_train_ctx_free(av_train_ctx *c);
int av_train_nparams(const av_train_ctx *c);
av_param *av_train_params(av_train_ctx *c);
void av_train_zero_grads(av_train_ctx *c);
/* ids, targets: host [B, T] row-major; targets[b][t] = id to predict at position t, or -1 to ignore
 * (padding, masked prompt). Accumulates grad_scale * d(sum of NLL)/d(params) into the grads when
 * `backward` is non-zero. Returns the NLL sum and the number of valid targets. */
av_status av_train_step(av_train_ctx *c, const int32_t *ids, const int32_t *targets, int B, int T, float grad_scale,
                        int backward, double *nll_sum, int *n_valid);
/* Full fine-tuning ("same code path, more gradients"): like av_train_ctx_new, on a model without
 * adapters; makes f32 master copies of every weight (embedding, norms, projections, LM head; tied
 * embeddings are one parameter) and points the model's weight views at them, so forward passes
 * (training and any session on m) use the trained weights. Params carry HF names
 * ("model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight", "lm_head.weight") in the
 * order embed, layers (input_layernorm, q k v o, post_attention_layernorm, gate up down), norm,
 * lm_head. Freeing the context puts the model's original views back. Needs the backend's
 * xent_forward_backward_dw op; quantized weights are refused. */
av_status av_train_ctx_new_full(av_train_ctx **out, av_model *m, int max_rows, int max_len, int grad_checkpoint);
int av_train_is_full(const av_train_ctx *c);
/* Number of trainable scalars. */
long long av_train_param_count(const av_train_ctx *c);

/* LoRA dropout (PEFT semantics): the adapter branch sees dropout(x) (inverted, keep-scale
 * 1/(1-p)), the base matmul sees x; applied only in training steps. Each LoRA linear of each step
 * gets its own mask keyed by (seed, step, layer, projection) — nothing random is stored, the
 * backward regenerates the mask. 0 <= p < 1; p = 0 is exactly the path without dropout. Needs the
 * backend's dropout ops; refused for full fine-tuning (no adapters). */
av_status av_train_set_dropout(av_train_ctx *c, float p, uint64_t seed);
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

/* Every parameter's current values as f32 safetensors under the param names, atomically. */
av_status av_train_save_weights(av_train_ctx *c, const char *path);
/* Loads parameters by name from a safetensors file (f32/f16/bf16), checking sizes; every
 * parameter must be present. */
av_status av_train_load_weights(av_train_ctx *c, const char *path);
/* Full fine-tuning output, as MLX-LM writes it: dir/adapters.safetensors with all weights (HF/MLX
 * names, f32) + dir/adapter_config.json ("fine_tune_type": "full"); and, so that dir is also a
 * plain model directory (anvil --model dir, transformers), config.json and the tokenizer files
 * copied from the base model plus model.safetensors as a hard link to adapters.safetensors. */
av_status av_train_save_model_dir(av_train_ctx *c, const char *dir);

/* Phase profile (off by default; the phases are model/layer.h's): with it on, every step
 * synchronises the device at each phase switch and adds the wall milliseconds of each phase
 * (exclusive: attention and adapter products are not in the layer phases) to these totals. */
void av_train_set_profile(av_train_ctx *c, int on);
void av_train_profile(const av_train_ctx *c, double ms[AV_TRAIN_NPHASES]);

/* Attention of the training steps: flash (the default where the backend has it for this model:
 * no [B, H, T, T] probabilities) or, with on = 0, the standard one (materialised probabilities,
 * allocated here). Turning flash on where it was not available fails. */
av_status av_train_set_flash(av_train_ctx *c, int on);

/* Peak bytes of the training buffers (activations, grads). */
size_t av_train_bytes(const av_train_ctx *c);

/* Writes every parameter's gradient as f32 safetensors (PEFT names, [rows, cols]) atomically:
 * the --dump-grads file, comparable with the fixtures' *-lora_grads.safetensors. */
av_status av_train_save_grads(av_train_ctx *c, const char *path);

#endif
