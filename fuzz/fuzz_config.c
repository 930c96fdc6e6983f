/* libFuzzer target: config.json (av_config_parse) over the input bytes, then what the model layer
 * derives from an accepted config: the parameter count and the RoPE inverse frequencies. */
#include "anvil.h"
#include "model/config.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile double sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *txt = malloc(size + 1);
    if (!txt) return 0;
    memcpy(txt, data, size);
    txt[size] = 0;
    av_config c;
    if (av_config_parse(&c, txt, "fuzz/config.json") == AV_OK) {
        sink += (double)av_config_param_count(&c);
        float *inv = malloc(sizeof(float) * (size_t)(c.head_dim / 2 + 1));
        if (inv) {
            av_config_inv_freq(&c, inv);
            if (c.head_dim >= 2) sink += inv[0] + inv[c.head_dim / 2 - 1];
            free(inv);
        }
    }
    free(txt);
    return 0;
}
