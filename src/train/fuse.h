/* Fuse: merges the adapters attached to a model into its base weights (W += scale * B A, in f32)
 * and writes a normal Hugging Face model directory (config.json, tokenizer files, model.safetensors),
 * every file atomically (temp + rename). */
#ifndef AV_FUSE_H
#define AV_FUSE_H
#include "model/model.h"

/* out_dtype: AV_BF16 / AV_F16 / AV_F32 for every float tensor, or -1 to keep each tensor's dtype.
 * *n_fused (may be NULL) receives the number of merged projections. out_dir is created if missing
 * and must differ from the model's directory. */
av_status av_fuse_save(const av_model *m, const char *out_dir, int out_dtype, int *n_fused);

#endif
