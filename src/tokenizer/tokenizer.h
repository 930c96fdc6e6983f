/* Tokenizer interface: loads tokenizer.json (HF tokenizers: SentencePiece-style BPE with byte
 * fallback, or byte-level BPE with the GPT-2/Llama-3 pre-tokenizer) or tokenizer.model
 * (SentencePiece protobuf), encodes/decodes exactly as the reference libraries, and streams
 * decoded text without splitting UTF-8 characters. */
#ifndef AV_TOKENIZER_H
#define AV_TOKENIZER_H
#include <stddef.h>
#include <stdint.h>
#include "core/status.h"

typedef struct av_tokenizer av_tokenizer;

/* dir holds tokenizer.json and/or tokenizer.model (+ tokenizer_config.json). force_spm=1 uses
 * tokenizer.model even when tokenizer.json exists. */
av_status av_tokenizer_load(av_tokenizer **out, const char *dir, int force_spm);
void av_tokenizer_free(av_tokenizer *t);

/* Encodes `len` bytes of text. add_special=1 adds BOS/EOS as the tokenizer's post-processor /
 * tokenizer_config.json says (add_bos_token, add_eos_token). Special/added tokens in the text are
 * matched before BPE. *ids is malloc'd. */
av_status av_tokenizer_encode(const av_tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids, int *n);
/* Decodes ids to a malloc'd NUL-terminated string. skip_special=1 drops special tokens (BOS/EOS...). */
av_status av_tokenizer_decode(const av_tokenizer *t, const int32_t *ids, int n, int skip_special, char **out);

int av_tokenizer_vocab_size(const av_tokenizer *t);
int av_tokenizer_bos_id(const av_tokenizer *t);     /* -1 if none */
int av_tokenizer_eos_id(const av_tokenizer *t);     /* -1 if none */
const char *av_tokenizer_bos_str(const av_tokenizer *t); /* "<s>" or NULL */
const char *av_tokenizer_eos_str(const av_tokenizer *t);
int av_tokenizer_token_id(const av_tokenizer *t, const char *piece); /* -1 if unknown */
const char *av_tokenizer_piece(const av_tokenizer *t, int id);        /* raw vocab piece or NULL */
int av_tokenizer_is_special(const av_tokenizer *t, int id);

/* Streaming decode: push ids one at a time; returns the bytes that are now complete (never half a
 * UTF-8 character) in a buffer owned by the decoder, valid until the next call. Decoding the
 * stream yields the same text as av_tokenizer_decode of all ids (with skip_special=1). */
typedef struct av_stream_decoder av_stream_decoder;
av_stream_decoder *av_stream_decoder_new(const av_tokenizer *t);
const char *av_stream_decoder_push(av_stream_decoder *s, int32_t id, size_t *len);
const char *av_stream_decoder_flush(av_stream_decoder *s, size_t *len); /* pending bytes at end */
void av_stream_decoder_free(av_stream_decoder *s);

/* Writes a built-in byte-level tokenizer (tokenizer.json + tokenizer_config.json) into dir, for
 * synthetic models: ids 0..2 = <unk>, <s>, </s>; then 256 byte tokens; plus a few merges. */
av_status av_tokenizer_write_builtin(const char *dir);

#endif
