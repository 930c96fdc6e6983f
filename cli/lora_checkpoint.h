/* Where `anvil lora` writes its adapters and checkpoints (main file, best_, NNNNNNN_ in MLX-LM's
 * layout; directories for PEFT; full fine-tuning's weights and model directory) and where it finds
 * the training state beside an adapter to resume from. */
#ifndef AV_CLI_LORA_CHECKPOINT_H
#define AV_CLI_LORA_CHECKPOINT_H
#include <stddef.h>
#include "anvil.h"

typedef struct {
    av_model *m;
    av_train_ctx *tc; /* full fine-tuning saves the context's f32 weights */
    int full;
    av_lora_spec spec;
    const char *adapter_dir;
    int peft;
} lora_save_ctx;

/* Writes the weights for tag (NULL = main adapter, "best", or "NNNNNNN" = numbered checkpoint) and
 * puts the file (or PEFT directory) written into path. */
av_status av_lora_checkpoint_save(const lora_save_ctx *r, const char *tag, char *path, size_t cap);
/* The training-state file beside the adapter given to --resume-adapter-file (an MLX directory, an
 * adapters file, or a PEFT directory); it may not exist. */
char *av_lora_checkpoint_state_path(const char *resume, char *buf, size_t cap);
#endif
