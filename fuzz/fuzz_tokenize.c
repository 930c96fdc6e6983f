/* libFuzzer target: encoding arbitrary bytes with reference tokenizers loaded once (Llama-2's
 * byte-fallback SentencePiece from tokenizer.json and tokenizer.model, GPT-2's and Llama-3's
 * byte-level BPE; the first input byte picks one). These are lossless, so for valid UTF-8 without
 * NUL decode(encode(x)) must give x back exactly (SentencePiece: unless x holds U+2581, the piece
 * space marker, which decodes as a space by design, or, with Llama-2's tokenizer.json, starts with
 * a space or holds a special token, where Metaspace's rules drop or add a space); any difference
 * aborts with both strings. */
#include "fuzz_util.h"
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF) without NUL bytes. */
static int utf8_ok(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t k;
        uint32_t cp, min;
        if (c == 0) return 0;
        if (c < 0x80) { i++; continue; }
        if ((c & 0xe0) == 0xc0) { k = 1; cp = c & 0x1f; min = 0x80; }
        else if ((c & 0xf0) == 0xe0) { k = 2; cp = c & 0x0f; min = 0x800; }
        else if ((c & 0xf8) == 0xf0) { k = 3; cp = c & 0x07; min = 0x10000; }
        else return 0;
        if (i + k >= n) return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        i += k + 1;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static av_tokenizer *tok[4];
    static const char *const names[4] = {"llama2-tokenizer (tokenizer.json)", "llama2-tokenizer (tokenizer.model)", "tok_gpt2", "tok_llama3"};
    if (!tok[0]) {
        tok[0] = fz_tokenizer("llama2-tokenizer", 0);
        tok[1] = fz_tokenizer("llama2-tokenizer", 1);
        tok[2] = fz_tokenizer("tok_gpt2", 0);
        tok[3] = fz_tokenizer("tok_llama3", 0);
    }
    if (size < 1) return 0;
    int which = data[0] & 3;
    const char *text = (const char *)data + 1;
    size_t n = size - 1;
    int32_t *ids = NULL;
    int nid = 0;
    if (av_tokenizer_encode(tok[which], text, n, 0, &ids, &nid) != AV_OK) {
        free(ids);
        return 0;
    }
    char *out = NULL;
    av_status st = av_tokenizer_decode(tok[which], ids, nid, 0, &out);
    /* Llama-2's tokenizer.json (Metaspace, prepend_scheme "always") prepends the space marker only
     * when the text does not start with a space, and its decoder strips one: by those rules a
     * leading space does not come back */
    int lossless = utf8_ok(data + 1, n) && !(which < 2 && memmem(text, n, "\xe2\x96\x81", 3)) && !(which == 0 && n && text[0] == ' ');
    /* ... and it prepends the marker to the text after each special token (</s> x -> "</s> x") */
    for (int i = 0; which == 0 && lossless && i < nid; i++) lossless = !av_tokenizer_is_special(tok[which], ids[i]);
    if (st == AV_OK && lossless && (strlen(out) != n || memcmp(out, text, n))) {
        fprintf(stderr, "round trip differs with %s:\n  in:  '%.*s'\n  out: '%s'\n", names[which], (int)n, text, out);
        abort();
    }
    free(out);
    free(ids);
    return 0;
}
