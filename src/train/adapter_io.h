/* Adapter files in both layouts. MLX-LM: adapters.safetensors (model.layers.{i}.<module>.<proj>.lora_a
 * [in, rank] / lora_b [rank, out]) + adapter_config.json (fine_tune_type, num_layers,
 * lora_parameters {rank, scale, dropout, keys}). PEFT: adapter_model.safetensors
 * (base_model.model.model.layers.{i}.<module>.<proj>.lora_A.weight [rank, in] / lora_B.weight
 * [out, rank], ".default" accepted on read) + adapter_config.json (r, lora_alpha, target_modules,
 * layers_to_transform, peft_type, task_type). Every write is atomic (temp + rename). */
#ifndef AV_ADAPTER_IO_H
#define AV_ADAPTER_IO_H
#include "model/model.h"
#include "train/lora.h"

typedef enum { AV_ADAPTER_MLX = 0, AV_ADAPTER_PEFT = 1 } av_adapter_format;

/* path: a directory holding either format (detected by which files exist), or an
 * adapters.safetensors / adapter_model.safetensors file (config read from the same directory).
 * Reads the config, attaches adapters on the model (replacing any) and fills A/B from the file.
 * out (may be NULL) receives the spec (rank, alpha, scale, keys, num_layers; num_layers = -1
 * when PEFT's layers_to_transform is an arbitrary set). */
av_status av_adapter_load(av_model *m, const char *path, av_lora_spec *out);
/* Which format `path` holds (directory or file); AV_ERR_IO when neither is found. */
av_status av_adapter_detect(const char *path, av_adapter_format *fmt);
/* Reads only the config of an adapter at `path` into spec (and its format). */
av_status av_adapter_read_config(const char *path, av_lora_spec *spec, av_adapter_format *fmt);
/* Loads tensors from a safetensors file (either naming) into the adapters already attached to m,
 * checking every name and shape; every attached adapter must be present. */
av_status av_adapter_load_weights(av_model *m, const char *file);

/* Writes dir/adapter_config.json + dir/adapters.safetensors (MLX) or dir/adapter_model.safetensors
 * (PEFT); creates dir if missing. Keys, layers, rank and scale come from the adapters attached to m;
 * spec (may be NULL) supplies dropout. PEFT's base_model_name_or_path is m->dir. */
av_status av_adapter_save(const av_model *m, const av_lora_spec *spec, const char *dir, int format_peft);
/* Only the tensors, to any file path (checkpoints such as 0000100_adapters.safetensors). */
av_status av_adapter_save_weights(const av_model *m, const char *file, int format_peft);
/* Only the config file dir/adapter_config.json. */
av_status av_adapter_save_config(const av_model *m, const av_lora_spec *spec, const char *dir, int format_peft);

#endif
