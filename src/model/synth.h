/* Random-weight models in the HF layout (config.json + model.safetensors), so benchmarks have a
 * model of a real shape (e.g. TinyLlama-1.1B) on any machine without downloads. */
#ifndef AV_SYNTH_H
#define AV_SYNTH_H
#include <stdint.h>
#include "model/config.h"

/* Fills c with a named preset ("tinyllama-1.1b", "llama-3.2-1b", "tiny"); -1 if unknown. */
int av_synth_preset(av_config *c, const char *name);
/* Writes dir/config.json and dir/model.safetensors (normal(0, 0.02) weights, unit norms) atomically. */
av_status av_synth_write(const av_config *c, const char *dir, uint64_t seed, av_dtype dtype);
#endif
