/* Internal state shared by the tokenizer's files: the av_tokenizer struct (vocab, merges,
 * normalizer / pre-tokenizer / decoder steps, added tokens, SentencePiece extras), small hash
 * tables, growable buffers, and the functions each file provides to the others. */
#ifndef AV_TOK_INTERNAL_H
#define AV_TOK_INTERNAL_H
#include <stddef.h>
#include <stdint.h>
#include "core/status.h"
#include "formats/gguf.h"

/* ---- growable buffers ---------------------------------------------------------------------- */
typedef struct { char *p; size_t n, cap; } tk_buf;
typedef struct { int32_t *v; int n, cap; } tk_ids;
int tk_buf_put(tk_buf *b, const void *s, size_t n);   /* 0 ok, -1 no memory */
int tk_ids_push(tk_ids *a, int32_t id);

/* ---- hash tables --------------------------------------------------------------------------- */
typedef struct { const char *s; uint32_t len, hash; int32_t val; } tk_sent;
typedef struct { tk_sent *e; uint32_t mask, n; } tk_strmap;           /* string -> int */
typedef struct { uint64_t *keys; int32_t *rank, *nid; uint32_t mask, n; } tk_pairmap; /* (a,b) -> rank,new id */
int tk_strmap_init(tk_strmap *m, size_t expect);
void tk_strmap_free(tk_strmap *m);
int tk_strmap_put(tk_strmap *m, const char *s, size_t len, int32_t val); /* keeps first; s must outlive map */
int32_t tk_strmap_get(const tk_strmap *m, const char *s, size_t len);   /* -1 if absent */
int tk_pairmap_init(tk_pairmap *m, size_t expect);
void tk_pairmap_free(tk_pairmap *m);
int tk_pairmap_put(tk_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t nid); /* keeps first */
int tk_pairmap_get(const tk_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *nid);

/* ---- pipeline steps ------------------------------------------------------------------------ */
enum { TK_KIND_HF = 1, TK_KIND_SPM = 2 };
enum { TK_NORM_PREPEND, TK_NORM_REPLACE, TK_NORM_NFC };
enum { TK_PRE_METASPACE, TK_PRE_BYTELEVEL, TK_PRE_SPLIT, TK_PRE_DIGITS };
enum { TK_SCHEME_ALWAYS, TK_SCHEME_FIRST, TK_SCHEME_NEVER };
enum { TK_RX_NONE, TK_RX_GPT2, TK_RX_LLAMA3, /* below: pretok_rx.c (llama.cpp's "default" and "deepseek-llm") */
       TK_RX_PUNCT_RUN, TK_RX_DIGIT3, TK_RX_CRLF, TK_RX_SP_LETTERS, TK_RX_SP_PUNCT, TK_RX_TRAIL_SPACE, TK_RX_CJK };
enum { TK_SPLIT_ISOLATED, TK_SPLIT_REMOVED, TK_SPLIT_MERGED_PREV, TK_SPLIT_MERGED_NEXT, TK_SPLIT_CONTIGUOUS };
enum { TK_DEC_REPLACE, TK_DEC_BYTEFALLBACK, TK_DEC_FUSE, TK_DEC_STRIP, TK_DEC_BYTELEVEL, TK_DEC_METASPACE };

typedef struct { int type; char *a, *b; } tk_norm;   /* prepend a | replace a by b */
typedef struct {
    int type;
    char *repl;            /* metaspace replacement (UTF-8) */
    int scheme, split;     /* metaspace */
    int add_prefix_space, use_regex; /* byte-level */
    int regex, rx_digits;  /* split: TK_RX_* (rx_digits: max digits per piece for Llama-3 style, 0 = any) */
    char *literal;         /* split: string pattern (regex == TK_RX_NONE) */
    int behavior, invert;  /* split */
    int individual;        /* digits */
} tk_pretok;
typedef struct { int type; char *a, *b; int start, stop, scheme; } tk_dec;
typedef struct { char *content; int len, id; uint8_t special, lstrip, rstrip, single_word, normalized; } tk_added;

#define TK_MAX_STEPS 16

struct av_tokenizer {
    int kind;
    int n_vocab;                 /* ids 0..n_vocab-1 (model vocab + added tokens) */
    char *piece_mem;             /* pieces back to back, each NUL-terminated */
    uint32_t *piece_off;         /* id -> offset in piece_mem, UINT32_MAX if the id has no piece */
    uint32_t *piece_len;
    tk_strmap vocab;             /* model vocab piece -> id */
    uint8_t *special;            /* per id: special added token / control piece */
    /* BPE (tokenizer.json) */
    tk_pairmap merges;
    int byte_fallback, ignore_merges, fuse_unk, unk_id;
    int byte_id[256];            /* id of "<0xNN>" or -1 */
    int byte_level;              /* pre-tokenizer maps bytes to the GPT-2 unicode alphabet */
    tk_norm norm[TK_MAX_STEPS]; int n_norm;
    tk_pretok pre[TK_MAX_STEPS]; int n_pre;
    tk_dec dec[TK_MAX_STEPS]; int n_dec;
    tk_added *added; int n_added;
    int32_t prefix_ids[8], suffix_ids[8]; int n_prefix, n_suffix; /* post-processor (single) */
    /* SentencePiece (tokenizer.model) */
    float *scores;
    uint8_t *types;              /* 1 normal 2 unknown 3 control 4 user-defined 5 unused 6 byte */
    int add_dummy_prefix, remove_extra_ws, escape_ws;
    int32_t *user_ids; int n_user; /* user-defined pieces */
    int has_unused;               /* some piece has type UNUSED (needs resegmentation) */
    /* specials */
    int bos_id, eos_id;
    char *bos_str, *eos_str;
    int add_bos, add_eos;
};

/* tokenizer.c: an empty tokenizer (no byte ids, no special ids); NULL when out of memory */
av_tokenizer *tk_new(void);
/* Piece text of an id (NULL if none); *len set when non-NULL. */
const char *tk_piece(const av_tokenizer *t, int id, size_t *len);

/* hf_json_write.c: t as tokenizer.json (BPE kinds); t's merges as id pairs in rank order */
av_status tk_write_tokenizer_json(const av_tokenizer *t, const char *path);
int tk_merge_list(const av_tokenizer *t, int32_t **pairs, int *n);
/* hf_json.c: fills t from tokenizer.json */
av_status tk_hf_load(av_tokenizer *t, const char *path);
/* gguf_vocab.c: fills t (and its BOS/EOS settings) from a GGUF file's tokenizer.* keys */
av_status tk_gguf_load(av_tokenizer *t, const char *path);
/* the tokenizer.ggml.pre name whose pre-tokenizer is t's (byte-level BPE), or NULL */
const char *tk_gguf_pre_name(const av_tokenizer *t);
/* the same over an open file; *out is a new tokenizer (av_tokenizer_free) */
av_status tk_gguf_from_file(av_tokenizer **out, const av_gguf_file *f);

/* spm.c */
av_status tk_spm_load(av_tokenizer *t, const char *path);
int tk_spm_encode(const av_tokenizer *t, const char *s, size_t n, tk_ids *out);
/* tokenizer.c: leftmost-longest added token at or after `from` (widened by lstrip/rstrip) */
int tk_added_find(const av_tokenizer *t, const char *s, size_t n, size_t from, int normalized,
                  size_t *ms, size_t *me, int *id);
/* bpe.c */
int tk_bpe_word(const av_tokenizer *t, const char *w, size_t n, tk_ids *out);
void tk_byte_to_unicode(int b, char out[3], int *len); /* GPT-2 byte -> UTF-8 of its unicode char */
int tk_unicode_to_byte(uint32_t cp);                    /* inverse, -1 if not in the alphabet */
/* pretok.c: encodes one non-added segment through normalizer + pre-tokenizer + BPE */
int tk_hf_encode_segment(const av_tokenizer *t, const char *s, size_t n, int at_start, tk_ids *out);
/* unicode.c */
int tk_utf8_next(const char *s, size_t n, size_t i, uint32_t *cp); /* bytes of char at i (1 for invalid) */
int tk_utf8_valid_len(const unsigned char *s, size_t n, size_t i); /* length of valid char at i, 0 if invalid */
int tk_in_ranges(const uint32_t (*r)[2], int n, uint32_t cp); /* sorted inclusive ranges */
int tk_is_letter(uint32_t cp);
int tk_is_number(uint32_t cp);
int tk_is_space(uint32_t cp);
/* pretok_rx.c: Unicode P*; the end of the match of regex `kind` (TK_RX_PUNCT_RUN..TK_RX_CJK, not
 * TRAIL_SPACE) starting at s[i], 0 if none; where the trailing whitespace run of s starts (n if none) */
int tk_is_punct(uint32_t cp);
size_t tk_rx_match(int kind, const char *s, size_t n, size_t i);
size_t tk_rx_trailing_space(const char *s, size_t n);
/* a split regex as tokenizer.json spells it (NULL if kind has none; digits: Llama-3's group size),
 * and the inverse (TK_RX_NONE when the regex is not one anvil implements) */
const char *tk_rx_string(int kind, int digits, char *buf, size_t cap);
int tk_rx_parse(const char *rx, int *digits);
int tk_utf8_put(uint32_t cp, char out[4]);
/* unicode_nfc.c: appends the NFC form of valid UTF-8 s[0..n) */
int tk_nfc(const char *s, size_t n, tk_buf *out);
/* decode.c: runs the decoder steps over ids; `first` = chunk starts the sequence.
 * Appends UTF-8 (or raw bytes when *raw is set: byte-level output needing lossy conversion). */
int tk_decode_chunk(const av_tokenizer *t, const int32_t *ids, int n, int first, tk_buf *out, int *raw);
/* Appends the lossy UTF-8 form of bytes (each maximal invalid subpart -> U+FFFD). If keep_tail,
 * a trailing incomplete but possibly valid sequence is not consumed; returns bytes consumed. */
size_t tk_lossy_append(tk_buf *out, const unsigned char *s, size_t n, int keep_tail);
int tk_is_byte_piece(const char *p, size_t len); /* "<0xNN>" -> NN, else -1 */
/* 1 if the decoder may join this id with the ids after it (a byte token under ByteFallback) */
int tk_decode_holds(const av_tokenizer *t, int id);

#endif
