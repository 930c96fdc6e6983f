/* Shared by the tokenizer-file fuzz targets: write the input as FILE in a scratch directory, load it
 * with av_tokenizer_load, and exercise an accepted tokenizer (encode + decode a fixed mixed-script
 * text, decode a few ids, including out-of-range ones). */
#ifndef FUZZ_TOKENIZER_USE_H
#define FUZZ_TOKENIZER_USE_H
#include "fuzz_util.h"
#include <stdint.h>

static volatile uint64_t fz_sink;

static void fz_use_tokenizer(const av_tokenizer *t) {
    static const char text[] = "Hello world, 123 <s> </s> <|endoftext|> \xe2\x96\x81x\n\n  tabs\t\xf0\x9f\x98\x80 caf\xc3\xa9";
    int32_t *ids = NULL;
    int n = 0;
    if (av_tokenizer_encode(t, text, sizeof text - 1, 1, &ids, &n) == AV_OK) {
        char *out = NULL;
        if (av_tokenizer_decode(t, ids, n, 0, &out) == AV_OK) fz_sink += strlen(out);
        free(out);
    }
    free(ids);
    int32_t some[6] = {0, 1, 2, 3, 255, 1000000};
    char *out = NULL;
    if (av_tokenizer_decode(t, some, 5, 1, &out) == AV_OK) fz_sink += strlen(out);
    free(out);
    fz_sink += (uint64_t)av_tokenizer_vocab_size(t);
}

static int fz_tokenizer_file(const char *file, int force_spm, const uint8_t *data, size_t size) {
    fz_file(file, data, size);
    av_tokenizer *t = NULL;
    if (av_tokenizer_load(&t, fz_dir(), force_spm) == AV_OK) {
        fz_use_tokenizer(t);
        av_tokenizer_free(t);
    }
    return 0;
}
#endif
