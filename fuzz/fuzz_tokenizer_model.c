/* libFuzzer target: tokenizer.model (the SentencePiece protobuf reader) over the input
 * bytes, through av_tokenizer_load on a scratch directory; an accepted tokenizer then encodes and
 * decodes a fixed mixed-script text and decodes a few ids. */
#include "fuzz_tokenizer_use.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fz_tokenizer_file("tokenizer.model", 1, data, size); }
