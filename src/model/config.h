/* config.json -> av_config for LlamaForCausalLM (transformers 4.x and 5.x styles), plus RoPE
 * frequency computation (default, linear, llama3 scaling). */
#ifndef AV_CONFIG_H
#define AV_CONFIG_H
#include "core/dtype.h"
#include "core/status.h"

/* av_config and av_config_load/_parse/_param_count/_save: include/anvil.h */

/* inv_freq[head_dim/2] as HF computes it (including rope scaling). */
void av_config_inv_freq(const av_config *c, float *inv_freq);

#endif
