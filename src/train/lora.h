/* LoRA adapters on a loaded model: which projections of which layers get A [rank, in] and
 * B [out, rank] (f32, backend memory), initialisation as PEFT/MLX-LM (A random, B zero), and the
 * trainable-parameter view the optimizer and adapter files work on. */
#ifndef AV_LORA_H
#define AV_LORA_H
#include <stdint.h>
#include "model/model.h"

typedef struct {
    int rank;          /* default 8 */
    float alpha;       /* default 16 */
    float scale;       /* alpha / rank unless set directly (--scale) */
    float dropout;     /* default 0 */
    int num_layers;    /* last N layers; -1 = all */
    unsigned keys;     /* bitmask over av_proj: (1u << AV_PROJ_Q) | (1u << AV_PROJ_V) by default */
} av_lora_spec;

void av_lora_spec_default(av_lora_spec *s);
/* Parses "q_proj,v_proj" (also accepts "self_attn.q_proj" and MLX-LM names) into a key mask. */
av_status av_lora_parse_keys(const char *list, unsigned *mask);
/* Allocates and initialises adapters on m's layers per spec (seeded). */
av_status av_lora_attach(av_model *m, const av_lora_spec *spec, uint64_t seed);
/* Frees adapters (model back to base). */
void av_lora_detach(av_model *m);
/* Trainable parameter count (A and B of all attached adapters). */
long long av_lora_param_count(const av_model *m);

/* As av_lora_attach, but on exactly the layers with layer_on[l] != 0 (n_layers flags; NULL = the
 * spec's last num_layers). Used for PEFT's layers_to_transform. */
av_status av_lora_attach_layers(av_model *m, const av_lora_spec *spec, const uint8_t *layer_on, uint64_t seed);
/* Host-side merge of one adapter into f32 weights: w[rows, cols] += scale * B[rows, rank] A[rank, cols]
 * (a, b are host copies, accumulated in double per element). */
void av_lora_merge_f32(float *w, const float *a, const float *b, int rows, int cols, int rank, float scale);
/* Number of layers / projections that carry an adapter (0 when none is attached). */
int av_lora_count(const av_model *m);

#endif
