/* Training forward + backward of the Llama model over a batch, on any backend: saves activations
 * (or only layer inputs with gradient checkpointing), computes the chunked LM-head cross-entropy,
 * and runs every op's backward in exact reverse order, accumulating gradients into the trainable
 * parameters (LoRA A/B; all weights as f32 master copies with full fine-tuning). */
#ifndef AV_TRAIN_MODEL_H
#define AV_TRAIN_MODEL_H
#include <stddef.h>
#include <stdint.h>
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
/* Peak bytes of the training buffers (activations, grads). */
size_t av_train_bytes(const av_train_ctx *c);

/* Writes every parameter's gradient as f32 safetensors (PEFT names, [rows, cols]) atomically:
 * the --dump-grads file, comparable with the fixtures' *-lora_grads.safetensors. */
av_status av_train_save_grads(av_train_ctx *c, const char *path);

#endif
