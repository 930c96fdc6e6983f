/* config.json -> av_config for LlamaForCausalLM (transformers 4.x and 5.x styles), plus RoPE
 * frequency computation (default, linear, llama3 scaling). */
#ifndef AV_CONFIG_H
#define AV_CONFIG_H
#include "core/dtype.h"
#include "core/status.h"

/* av_config and av_config_load/_parse/_param_count/_save: include/anvil.h */

/* inv_freq[head_dim/2] as HF computes it (including rope scaling). */
void av_config_inv_freq(const av_config *c, float *inv_freq);
/* Per-frequency divisors of the config's rope scaling (GGUF's rope_freqs: unscaled inv_freq / scaled),
 * factors[head_dim/2]. */
void av_config_rope_factors(const av_config *c, float *factors);
/* The inverse for Llama-3 scaling: sets c's rope_scaling (llama3; factor, low/high_freq_factor,
 * original_max_position_embeddings) so that it reproduces `factors` (GGUF rope_freqs) within 1e-5
 * relative; AV_ERR_UNSUPPORTED when no Llama-3 rule does. */
av_status av_config_llama3_fit(av_config *c, const float *factors, const char *where);

#endif
