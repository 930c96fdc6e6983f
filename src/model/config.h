/* config.json -> av_config for LlamaForCausalLM (transformers 4.x and 5.x styles), plus RoPE
 * frequency computation (default, linear, llama3 scaling). */
#ifndef AV_CONFIG_H
#define AV_CONFIG_H
#include "core/dtype.h"
#include "core/status.h"

typedef enum { AV_ROPE_DEFAULT = 0, AV_ROPE_LINEAR, AV_ROPE_LLAMA3 } av_rope_type;

#define AV_MAX_EOS 8
typedef struct {
    int vocab_size, hidden_size, intermediate_size, n_layers, n_heads, n_kv_heads, head_dim;
    int max_position_embeddings;
    float rms_norm_eps;
    double rope_theta;
    av_rope_type rope_type;
    double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_pos;
    int tie_word_embeddings;
    int bos_token_id; /* -1 if none */
    int eos_token_ids[AV_MAX_EOS];
    int n_eos;
    av_dtype dtype;           /* declared dtype (torch_dtype / dtype), AV_BF16 if absent */
    int quant_bits, quant_group_size; /* 0 when not quantized (MLX "quantization") */
} av_config;

av_status av_config_load(av_config *c, const char *config_json_path);
/* Parses from a JSON text; `where` names the source in errors. */
av_status av_config_parse(av_config *c, const char *json_text, const char *where);
/* inv_freq[head_dim/2] as HF computes it (including rope scaling). */
void av_config_inv_freq(const av_config *c, float *inv_freq);
/* Total parameter count (embedding + layers + norm + untied head). */
long long av_config_param_count(const av_config *c);
/* Writes a config.json (transformers-4 style) atomically. */
av_status av_config_save(const av_config *c, const char *path);

#endif
