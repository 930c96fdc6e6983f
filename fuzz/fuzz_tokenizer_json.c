/* libFuzzer target: tokenizer.json (the HF reader, fast path and cJSON fallback) over the input
 * bytes, through av_tokenizer_load on a scratch directory; an accepted tokenizer then encodes and
 * decodes a fixed mixed-script text and decodes a few ids. */
#include "fuzz_util.h"
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink;

static void use(const av_tokenizer *t) {
    static const char text[] = "Hello world, 123 <s> </s> <|endoftext|> \xe2\x96\x81x\n\n  tabs\t\xf0\x9f\x98\x80 caf\xc3\xa9";
    int32_t *ids = NULL;
    int n = 0;
    if (av_tokenizer_encode(t, text, sizeof text - 1, 1, &ids, &n) == AV_OK) {
        char *out = NULL;
        if (av_tokenizer_decode(t, ids, n, 0, &out) == AV_OK) sink += strlen(out);
        free(out);
    }
    free(ids);
    int32_t some[6] = {0, 1, 2, 3, 255, 1000000};
    char *out = NULL;
    if (av_tokenizer_decode(t, some, 5, 1, &out) == AV_OK) sink += strlen(out);
    free(out);
    sink += (uint64_t)av_tokenizer_vocab_size(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_file("tokenizer.json", data, size);
    av_tokenizer *t = NULL;
    if (av_tokenizer_load(&t, fz_dir(), 0) == AV_OK) {
        use(t);
        av_tokenizer_free(t);
    }
    return 0;
}
