/* LoRA adapters on a loaded model: which projections of which layers get A [rank, in] and
 * B [out, rank] (f32, backend memory), initialisation as PEFT/MLX-LM (A random, B zero), and the
 * trainable-parameter view the optimizer and adapter files work on. */
#ifndef AV_LORA_H
#define AV_LORA_H
#include <stdint.h>
#include "model/model.h"

/* av_lora_spec, av_lora_spec_default/_parse_keys/_attach/_detach/_param_count/_count: include/anvil.h */

/* As av_lora_attach, but on exactly the layers with layer_on[l] != 0 (n_layers flags; NULL = the
 * spec's last num_layers). Used for PEFT's layers_to_transform. */
av_status av_lora_attach_layers(av_model *m, const av_lora_spec *spec, const uint8_t *layer_on, uint64_t seed);
/* Host-side merge of one adapter into f32 weights: w[rows, cols] += scale * B[rows, rank] A[rank, cols]
 * (a, b are host copies, accumulated in double per element). */
void av_lora_merge_f32(float *w, const float *a, const float *b, int rows, int cols, int rank, float scale);

#endif
