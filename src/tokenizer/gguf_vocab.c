/* The tokenizer stored in a GGUF file, built into the same structures tokenizer.model and
 * tokenizer.json fill: tokenizer.ggml.model "llama" is SentencePiece BPE (tokens, scores,
 * token_type, byte fallback, add_space_prefix); "gpt2" is byte-level BPE (tokens, merges, and the
 * pre-tokenizer named by tokenizer.ggml.pre); control/user-defined tokens become added tokens. */
#include "tokenizer/tok_internal.h"
#include "formats/gguf.h"
#include <stdlib.h>
#include <string.h>

static char *dupstr(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* Pre-tokenizer steps for a tokenizer.ggml.pre name, as the models' tokenizer.json files define them. */
static av_status set_pre(av_tokenizer *t, const char *pre, const char *path) {
    tk_pretok *s = t->pre;
    memset(t->pre, 0, sizeof t->pre);
    int rx_digits = -1;
#define ISO(kind) (tk_pretok){.type = TK_PRE_SPLIT, .regex = kind, .behavior = TK_SPLIT_ISOLATED}
    if (!strcmp(pre, "default")) { /* llama.cpp's fallback: punctuation runs, GPT-2's regex, numbers, digit triples */
        s[0] = ISO(TK_RX_PUNCT_RUN);
        s[1] = ISO(TK_RX_GPT2);
        s[2] = (tk_pretok){.type = TK_PRE_DIGITS};
        s[3] = ISO(TK_RX_DIGIT3);
        s[4] = (tk_pretok){.type = TK_PRE_BYTELEVEL};
        t->n_pre = 5;
    } else if (!strcmp(pre, "deepseek-llm")) {
        s[0] = ISO(TK_RX_CRLF);
        s[1] = ISO(TK_RX_SP_LETTERS);
        s[2] = ISO(TK_RX_SP_PUNCT);
        s[3] = ISO(TK_RX_TRAIL_SPACE);
        s[4] = ISO(TK_RX_CJK);
        s[5] = (tk_pretok){.type = TK_PRE_DIGITS};
        s[6] = (tk_pretok){.type = TK_PRE_BYTELEVEL};
        t->n_pre = 7;
    } else if (!strcmp(pre, "gpt-2") || !strcmp(pre, "gpt2") || !strcmp(pre, "phi-2")) {
        s[0] = (tk_pretok){.type = TK_PRE_BYTELEVEL, .use_regex = 1};
        t->n_pre = 1;
    } else if (!strcmp(pre, "smollm")) {
        s[0] = (tk_pretok){.type = TK_PRE_DIGITS, .individual = 1};
        s[1] = (tk_pretok){.type = TK_PRE_BYTELEVEL, .use_regex = 1};
        t->n_pre = 2;
    } else if (!strcmp(pre, "llama-bpe") || !strcmp(pre, "llama3") || !strcmp(pre, "llama-v3") || !strcmp(pre, "falcon3") ||
               !strcmp(pre, "pixtral")) { /* the names llama.cpp gives Llama-3's regex */
        rx_digits = 3;
        t->ignore_merges = 1;
    } else if (!strcmp(pre, "qwen2")) { /* llama.cpp does not apply tokenizer.json's NFC here: neither do we */
        rx_digits = 1;
    } else {
        return av_fail(AV_ERR_UNSUPPORTED, "%s: tokenizer.ggml.pre '%.64s' is not supported (default, gpt-2, smollm, llama-bpe, qwen2, deepseek-llm)",
                       path, pre);
    }
#undef ISO
    if (rx_digits > 0) {
        s[0] = (tk_pretok){.type = TK_PRE_SPLIT, .regex = TK_RX_LLAMA3, .rx_digits = rx_digits, .behavior = TK_SPLIT_ISOLATED};
        s[1] = (tk_pretok){.type = TK_PRE_BYTELEVEL, .use_regex = 0};
        t->n_pre = 2;
    }
    t->byte_level = 1;
    t->dec[0] = (tk_dec){.type = TK_DEC_BYTELEVEL};
    t->n_dec = 1;
    return AV_OK;
}

static int same_step(const tk_pretok *a, const tk_pretok *b) {
    return a->type == b->type && a->regex == b->regex && a->rx_digits == b->rx_digits && a->behavior == b->behavior &&
           a->use_regex == b->use_regex && a->individual == b->individual && a->add_prefix_space == b->add_prefix_space &&
           !a->literal && !b->literal && !a->invert && !b->invert;
}

const char *tk_gguf_pre_name(const av_tokenizer *t) {
    static const char *names[] = {"llama-bpe", "qwen2", "smollm", "gpt-2", "default", "deepseek-llm"};
    av_tokenizer ref; /* scratch: set_pre allocates nothing */
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        memset(&ref, 0, sizeof ref);
        if (set_pre(&ref, names[i], "") != AV_OK || ref.n_pre != t->n_pre) continue;
        int same = 1;
        for (int k = 0; k < t->n_pre && same; k++) same = same_step(&ref.pre[k], &t->pre[k]);
        if (same) return names[i];
    }
    return NULL;
}

static av_status load_merges(av_tokenizer *t, const av_gguf_kv *mg, const char *path) {
    if (tk_pairmap_init(&t->merges, mg ? (size_t)mg->n : 1)) return av_fail(AV_ERR_NOMEM, "%s: out of memory", path);
    char tmp[1024];
    for (uint64_t r = 0; mg && r < mg->n; r++) {
        size_t n;
        const char *s = av_gguf_arr_str(mg, r, &n);
        const char *sp = memchr(s, ' ', n);
        if (!sp || sp == s || sp == s + n - 1 || n >= sizeof tmp)
            return av_fail(AV_ERR_FORMAT, "%s: tokenizer.ggml.merges[%llu] is not \"a b\"", path, (unsigned long long)r);
        size_t la = (size_t)(sp - s), lb = n - la - 1;
        memcpy(tmp, s, la);
        memcpy(tmp + la, sp + 1, lb);
        int32_t ia = tk_strmap_get(&t->vocab, s, la), ib = tk_strmap_get(&t->vocab, sp + 1, lb), in = tk_strmap_get(&t->vocab, tmp, la + lb);
        if (ia < 0 || ib < 0 || in < 0)
            return av_fail(AV_ERR_FORMAT, "%s: tokenizer.ggml.merges[%llu] '%.*s' uses a piece missing from the vocabulary", path,
                           (unsigned long long)r, (int)(n > 64 ? 64 : n), s);
        if (tk_pairmap_put(&t->merges, ia, ib, (int32_t)r, in)) return av_fail(AV_ERR_NOMEM, "%s: out of memory", path);
    }
    return AV_OK;
}

static av_status load(av_tokenizer *t, const av_gguf_file *f) {
    const char *P = f->path;
    char *model = NULL, *pre = NULL;
    const av_gguf_kv *toks, *scores, *types, *merges;
    av_status st = av_gguf_get_str(f, "tokenizer.ggml.model", &model);
    if (!st) st = av_gguf_get_str(f, "tokenizer.ggml.pre", &pre);
    if (!st) st = av_gguf_get_arr(f, "tokenizer.ggml.tokens", AV_GGUF_STR, AV_GGUF_STR, &toks);
    if (!st) st = av_gguf_get_arr(f, "tokenizer.ggml.scores", AV_GGUF_F32, AV_GGUF_F64, &scores);
    if (!st) st = av_gguf_get_arr(f, "tokenizer.ggml.token_type", -1, -1, &types);
    if (!st) st = av_gguf_get_arr(f, "tokenizer.ggml.merges", AV_GGUF_STR, AV_GGUF_STR, &merges);
    int spm = model && !strcmp(model, "llama"), bpe = model && !strcmp(model, "gpt2");
    if (!st && !model) st = av_fail(AV_ERR_FORMAT, "%s: no tokenizer (key 'tokenizer.ggml.model' is missing)", P);
    else if (!st && !spm && !bpe)
        st = av_fail(AV_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model '%.64s' is not supported (llama, gpt2)", P, model);
    if (!st && (!toks || !toks->n || toks->n > (1u << 28))) st = av_fail(AV_ERR_FORMAT, "%s: key 'tokenizer.ggml.tokens' is missing or empty", P);
    if (!st && scores && scores->n != toks->n) st = av_fail(AV_ERR_FORMAT, "%s: key 'tokenizer.ggml.scores' has %llu entries for %llu tokens", P, (unsigned long long)scores->n, (unsigned long long)toks->n);
    if (!st && types && types->n != toks->n) st = av_fail(AV_ERR_FORMAT, "%s: key 'tokenizer.ggml.token_type' has %llu entries for %llu tokens", P, (unsigned long long)types->n, (unsigned long long)toks->n);
    if (!st && bpe) st = set_pre(t, pre ? pre : "default", P);
    free(model);
    free(pre);
    if (st) return st;
    int n = (int)toks->n;
    size_t mem = 0;
    for (int i = 0; i < n; i++) { size_t l; av_gguf_arr_str(toks, (uint64_t)i, &l); mem += l + 1; }
    t->n_vocab = n;
    t->piece_mem = malloc(mem + 1);
    t->piece_off = malloc((size_t)(n + 1) * sizeof *t->piece_off);
    t->piece_len = malloc((size_t)(n + 1) * sizeof *t->piece_len);
    t->special = calloc((size_t)n + 1, 1);
    t->scores = calloc((size_t)n + 1, sizeof *t->scores);
    t->types = malloc((size_t)n + 1);
    t->user_ids = malloc((size_t)(n + 1) * sizeof *t->user_ids);
    t->added = calloc((size_t)n + 1, sizeof *t->added);
    if (!t->piece_mem || !t->piece_off || !t->piece_len || !t->special || !t->scores || !t->types || !t->user_ids || !t->added ||
        tk_strmap_init(&t->vocab, (size_t)n))
        return av_fail(AV_ERR_NOMEM, "%s: out of memory", P);
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        size_t l;
        const char *s = av_gguf_arr_str(toks, (uint64_t)i, &l);
        memcpy(t->piece_mem + at, s, l);
        t->piece_mem[at + l] = 0;
        t->piece_off[i] = (uint32_t)at;
        t->piece_len[i] = (uint32_t)l;
        int64_t ty = types ? av_gguf_arr_i64(types, (uint64_t)i) : 1;
        t->types[i] = (uint8_t)(ty >= 1 && ty <= 6 ? ty : 1);
        if (scores) t->scores[i] = (float)av_gguf_arr_f64(scores, (uint64_t)i);
        t->special[i] = t->types[i] == 3 || (spm && t->types[i] == 2);
        if (tk_strmap_put(&t->vocab, t->piece_mem + at, l, i)) return av_fail(AV_ERR_NOMEM, "%s: out of memory", P);
        int bv = tk_is_byte_piece(t->piece_mem + at, l);
        if (bv >= 0 && (bpe || t->types[i] == 6) && t->byte_id[bv] < 0) t->byte_id[bv] = i;
        if (spm && t->types[i] == 4) t->user_ids[t->n_user++] = i;
        if (spm && t->types[i] == 5) t->has_unused = 1;
        if (bpe && (t->types[i] == 3 || t->types[i] == 4) && l) {
            tk_added *a = &t->added[t->n_added++];
            a->content = t->piece_mem + at;
            a->len = (int)l;
            a->id = i;
            a->special = t->types[i] == 3;
        }
        at += l + 1;
    }
    /* SentencePiece's defaults (unk 0, bos 1, eos 2) only where the vocabulary has those ids */
    int unk = spm ? 0 : -1, bos = spm && n > 1 ? 1 : -1, eos = spm && n > 2 ? 2 : -1, add_bos = spm, add_eos = 0, space = spm;
    AV_TRY(av_gguf_get_int(f, "tokenizer.ggml.unknown_token_id", 0, n - 1, &unk));
    AV_TRY(av_gguf_get_int(f, "tokenizer.ggml.bos_token_id", 0, n - 1, &bos));
    AV_TRY(av_gguf_get_int(f, "tokenizer.ggml.eos_token_id", 0, n - 1, &eos));
    AV_TRY(av_gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &add_bos));
    AV_TRY(av_gguf_get_bool(f, "tokenizer.ggml.add_eos_token", &add_eos));
    AV_TRY(av_gguf_get_bool(f, "tokenizer.ggml.add_space_prefix", &space));
    t->unk_id = unk;
    t->bos_id = bos;
    t->eos_id = eos;
    if (spm) {
        t->kind = TK_KIND_SPM;
        t->byte_fallback = 1;
        t->add_dummy_prefix = space;
        t->remove_extra_ws = 0;
        t->escape_ws = 1;
    } else {
        t->kind = TK_KIND_HF;
        if (space) t->pre[t->n_pre - 1].add_prefix_space = 1;
        AV_TRY(load_merges(t, merges, P));
    }
    t->add_bos = add_bos && bos >= 0;
    t->add_eos = add_eos && eos >= 0;
    if (t->add_bos) t->prefix_ids[t->n_prefix++] = bos;
    if (t->add_eos) t->suffix_ids[t->n_suffix++] = eos;
    if (bos >= 0 && !(t->bos_str = dupstr(t->piece_mem + t->piece_off[bos]))) return av_fail(AV_ERR_NOMEM, "%s: out of memory", P);
    if (eos >= 0 && !(t->eos_str = dupstr(t->piece_mem + t->piece_off[eos]))) return av_fail(AV_ERR_NOMEM, "%s: out of memory", P);
    return AV_OK;
}

av_status tk_gguf_load(av_tokenizer *t, const char *path) {
    av_gguf_file f;
    AV_TRY(av_gguf_open(&f, path));
    av_status st = load(t, &f);
    av_gguf_close(&f);
    return st;
}

av_status tk_gguf_from_file(av_tokenizer **out, const av_gguf_file *f) {
    *out = NULL;
    av_tokenizer *t = tk_new();
    if (!t) return av_fail(AV_ERR_NOMEM, "%s: out of memory", f->path);
    av_status st = load(t, f);
    if (st) { av_tokenizer_free(t); return st; }
    *out = t;
    return AV_OK;
}
