/* libFuzzer target: the safetensors header parser over the input bytes (av_st_open_mem, the same
 * parser as files), then every tensor looked up and its first and last data bytes read. */
#include "formats/safetensors.h"
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    av_st_file f;
    if (av_st_open_mem(&f, data, size, "fuzz.safetensors") != AV_OK) return 0;
    for (int i = 0; i < f.n; i++) {
        const av_st_tensor *t = av_st_find(&f, f.tensors[i].name);
        if (!t) continue;
        sink += (uint64_t)av_st_numel(t);
        if (t->nbytes) sink += ((const uint8_t *)t->data)[0] + ((const uint8_t *)t->data)[t->nbytes - 1];
    }
    if (f.metadata_json) sink += strlen(f.metadata_json);
    av_st_close(&f);
    return 0;
}
