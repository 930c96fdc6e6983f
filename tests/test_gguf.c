/* GGUF: models made by llama.cpp's convert_hf_to_gguf.py and llama-quantize (tests/fixtures/gguf)
 * give transformers' logits (f32/f16/bf16: the safetensors weights; quantized: gguf-py's
 * dequantization of each file) and the same logits as the safetensors directory; the files'
 * tokenizers give sentencepiece's ids (SentencePiece vocabularies) and HF tokenizers' (byte-level BPE); damaged files fail with one line naming file and key/tensor. */
#include "test.h"
#include "backend/backend.h"
#include "core/memory.h"
#include "core/status.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "tokenizer/tok_internal.h"
#include "model/llama.h"
#include "quant/affine.h"
#include "quant/gguf_blocks.h"
#include "quant/qmatmul.h"

static void last_logits(av_model *m, const int32_t *ids, int T, float *out) {
    av_session *s;
    CHECK_OK(av_session_new(&s, m, 64, 64));
    if (!s) return;
    CHECK_OK(av_session_forward(s, ids, T));
    av_session_last_logits(s, out);
    av_session_free(s);
}

static double max_abs(const float *a, const float *b, int n) {
    double mx = 0;
    for (int i = 0; i < n; i++) { double d = fabs((double)a[i] - b[i]); if (!(d <= mx)) mx = d; }
    return mx;
}

static void check_logits(void) {
    av_st_file ex;
    CHECK_OK(av_st_open(&ex, test_fixture("gguf/expected.safetensors")));
    const av_st_tensor *pt = av_st_find(&ex, "prompt_ids"), *rt = av_st_find(&ex, "logits_ref");
    CHECK(pt && rt && av_st_numel(rt) == 1024, "expected.safetensors: prompt_ids, logits_ref");
    if (!pt || !rt) { av_st_close(&ex); return; }
    int T = (int)av_st_numel(pt), V = 1024;
    const int32_t *ids = pt->data;
    float st_logits[1024], g[1024];
    av_model *m;
    CHECK_OK(av_model_load(&m, test_fixture("gguf/tiny-v1024"), av_backend_cpu()));
    if (!m) { av_st_close(&ex); return; }
    last_logits(m, ids, T, st_logits);
    av_model_free(m);
    const float *ref = test_f32_view(rt->data, (size_t)V);
    CHECK(max_abs(st_logits, ref, V) <= 1e-4, "safetensors vs transformers: %.3g", max_abs(st_logits, ref, V));
    const char *types[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"};
    for (int k = 0; k < 8; k++) {
        char name[64], key[64];
        snprintf(name, sizeof name, "gguf/tiny-v1024-%s.gguf", types[k]);
        av_status s = av_model_load(&m, test_fixture(name), av_backend_cpu());
        CHECK(s == AV_OK, "%s: %s", name, av_last_error());
        if (s) continue;
        CHECK(m->cfg.vocab_size == V && m->cfg.n_layers == 2 && m->cfg.n_kv_heads == 2 && m->cfg.head_dim == 16 &&
              fabsf(m->cfg.rms_norm_eps - 1e-5f) < 1e-12f && !m->cfg.tie_word_embeddings, "%s: config", name);
        last_logits(m, ids, T, g);
        if (k < 3) { /* the same numbers as the safetensors weights (made exact in f16 and bf16) */
            double d = max_abs(g, st_logits, V);
            CHECK(d <= 1e-5, "%s vs the safetensors directory: max abs diff %.3g", name, d);
            printf("%s: max abs diff %.3g vs safetensors, %.3g vs transformers\n", name, d, max_abs(g, ref, V));
        } else {
            snprintf(key, sizeof key, "logits_%s", types[k]);
            const av_st_tensor *qt = av_st_find(&ex, key);
            CHECK(qt && av_st_numel(qt) == V, "expected %s", key);
            if (qt) {
                double d = max_abs(g, test_f32_view(qt->data, (size_t)V), V);
                CHECK(d <= 1e-4, "%s vs transformers on the dequantized weights: max abs diff %.3g", name, d);
                printf("%s: max abs diff %.3g vs transformers on its dequantized weights (%.3g from the unquantized logits)\n",
                       name, d, max_abs(g, ref, V));
            }
            CHECK(m->layers[0].q.w.q_bits && m->layers[0].q.w.q_group == 32 && m->embed.q_bits, "%s: repacked to MLX affine", name);
        }
        av_model_free(m);
    }
    av_st_close(&ex);
}

/* Repacked rows dequantize (MLX formula) to exactly the block format's values. */
static void check_repack(void) {
    const char *types[] = {"q8_0", "q4_0", "q4_1", "q5_0", "q5_1"};
    for (int k = 0; k < 5; k++) {
        char name[64];
        snprintf(name, sizeof name, "gguf/tiny-v1024-%s.gguf", types[k]);
        av_gguf_file f;
        CHECK_OK(av_gguf_open(&f, test_fixture(name)));
        const av_gguf_tensor *t = av_gguf_tensor_find(&f, "token_embd.weight");
        CHECK(t && av_gguf_repack_bits(t->type), "%s: quantized token_embd", name);
        if (!t || !av_gguf_repack_bits(t->type)) { av_gguf_close(&f); continue; }
        int rows = (int)t->ne[1], cols = (int)t->ne[0], bits = av_gguf_repack_bits(t->type), bad = 0;
        av_dtype sdt = av_gguf_repack_scale_dtype(t->type, t->data, (int64_t)rows * cols / 32);
        uint32_t *w = calloc((size_t)rows * (size_t)av_quant_row_words(cols, bits), 4);
        uint16_t *sc = calloc((size_t)rows * (size_t)cols / 32, 4), *bi = calloc((size_t)rows * (size_t)cols / 32, 4);
        float a[64], b[64];
        av_gguf_repack(w, sc, bi, sdt, t->data, t->type, rows, cols, NULL);
        size_t rb = (size_t)cols / 32 * (size_t)av_ggml_type_size(t->type);
        for (int r = 0; r < rows; r++) {
            av_gguf_dequant_row(a, (const char *)t->data + (size_t)r * rb, t->type, cols);
            av_quant_dequant_row(b, w, sc, bi, sdt, r, cols, bits, 32);
            bad += memcmp(a, b, sizeof(float) * (size_t)cols) != 0;
        }
        CHECK(bad == 0 && sdt == AV_F16, "%s: %d rows differ after the repack (scales %s)", name, bad, av_dtype_name(sdt));
        free(w); free(sc); free(bi);
        av_gguf_close(&f);
    }
}

/* Every block format against gguf-py's dequantization of random blocks (blocks.gguf); the
 * repackable ones also through the affine layout (Q2_K/Q3_K/Q6_K: 2/3/6-bit, group 16). Exact (equal values; zeros may differ in sign). */
static int n_differ(const float *a, const void *ref, int n) { /* by value: -0 equals +0 */
    int k = 0;
    for (int i = 0; i < n; i++) { float r; memcpy(&r, (const char *)ref + 4 * (size_t)i, 4); k += !(a[i] == r); }
    return k;
}

/* A K-quant's own two-level scales (ops.h av_kscales) give the repack's f32 scales and biases exactly,
 * and the CPU decode kernel on them (VNNI reads them; the other paths ignore them) the same outputs
 * bit for bit as on the f32 tables. */
static void check_kscales(const av_gguf_tensor *t, const uint32_t *w, const float *sc, const float *bi, int bits, int G, const char *name) {
    enum { R = 2, K = 512, NG = R * K / 16 };
    uint8_t ksc[NG], km[NG];
    float kd[R * K / 256], kdm[R * K / 256];
    int q6 = t->type == AV_GGML_Q6_K, per = q6 ? 16 : 8, ng = R * K / G, bad = 0;
    av_gguf_kscales(ksc, km, kd, kdm, t->data, t->type, R, K, NULL);
    for (int g = 0; g < ng; g++) {
        float s = kd[g / per] * (q6 ? (float)(int8_t)ksc[g] : (float)ksc[g]), b = q6 ? -32.0f * s : -(kdm[g / per] * km[g]);
        bad += s != sc[g] || b != bi[g];
    }
    CHECK(!bad, "%s: %d two-level scales/biases differ from the repack's", name, bad);
    av_kscales ks = {.sc = ksc, .m = q6 ? NULL : km, .d = kd, .dmin = q6 ? NULL : kdm, .per = per, .sym = q6};
    av_mat W = {.data = w, .dtype = AV_F32, .rows = R, .cols = K, .q_bits = bits, .q_group = G, .scales = sc, .biases = bi};
    av_mat Wk = W;
    Wk.ks = &ks;
    float x[3 * K], o1[3 * R], o2[3 * R];
    for (int i = 0; i < 3 * K; i++) x[i] = (float)((i * 7919) % 2003) / 1001.0f - 1.0f;
    void *buf = aligned_alloc(64, (av_qx_size(3, &W) + 63) & ~(size_t)63);
    av_qx qx;
    av_qx_prepare(&qx, buf, x, 3, &W);
    av_qmatmul_rows(o1, R, &qx, &W, 0, R);
    av_qmatmul_rows(o2, R, &qx, &Wk, 0, R);
    CHECK(!memcmp(o1, o2, sizeof o1), "%s: decode products on the two-level scales differ from those on the f32 tables", name);
    free(buf);
}

static void check_blocks(void) {
    av_gguf_file f;
    CHECK_OK(av_gguf_open(&f, test_fixture("gguf/blocks.gguf")));
    const char *names[] = {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"};
    for (int k = 0; k < 10; k++) {
        char rn[32];
        snprintf(rn, sizeof rn, "%s.ref", names[k]);
        const av_gguf_tensor *t = av_gguf_tensor_find(&f, names[k]), *r = av_gguf_tensor_find(&f, rn);
        CHECK(t && r && r->type == AV_GGML_F32 && av_gguf_numel(t) == 1024 && av_gguf_numel(r) == 1024, "blocks.gguf: %s", names[k]);
        if (!t || !r || av_gguf_numel(t) != 1024 || av_gguf_numel(r) != 1024) continue;
        float got[1024];
        size_t rb = 512 / (size_t)av_ggml_block_size(t->type) * (size_t)av_ggml_type_size(t->type);
        for (int row = 0; row < 2; row++) av_gguf_dequant_row(got + 512 * row, (const char *)t->data + rb * (size_t)row, t->type, 512);
        CHECK(!n_differ(got, r->data, 1024), "%s: dequantization differs from gguf-py's (max %.3g)", names[k], max_abs(got, r->data, 1024));
        int bits = av_gguf_repack_bits(t->type);
        if (!bits) continue;
        av_dtype sdt = av_gguf_repack_scale_dtype(t->type, t->data, 1024 / av_ggml_block_size(t->type));
        uint32_t w[2 * 512 / 4];
        float sc[64], bi[64]; /* 2 rows of 512 in groups of 16 at most (Q2_K, Q3_K, Q6_K) */
        int G = av_gguf_repack_group(t->type);
        memset(w, 0, sizeof w);
        av_gguf_repack(w, sc, bi, sdt, t->data, t->type, 2, 512, NULL);
        for (int row = 0; row < 2; row++) av_quant_dequant_row(got + 512 * row, w, sc, bi, sdt, row, 512, bits, G);
        CHECK(!n_differ(got, r->data, 1024), "%s: repacked (%d-bit, group %d, %s scales) differs from gguf-py's", names[k], bits, G,
              av_dtype_name(sdt));
        if ((t->type == AV_GGML_Q4_K || t->type == AV_GGML_Q5_K || t->type == AV_GGML_Q6_K) && sdt == AV_F32) check_kscales(t, w, sc, bi, bits, G, names[k]);
    }
    av_gguf_close(&f);
}

static int read_ids(const cJSON *arr, int32_t *out, int cap) {
    int n = 0;
    for (const cJSON *e = arr ? arr->child : NULL; e && n < cap; e = e->next) out[n++] = e->valueint;
    return n;
}

/* file's tokenizer vs `key` ids of each line of jsonl (at most `max` lines) */
/* Every row of jsonl (only those whose "pre" is `pre` when pre is not NULL): anvil's ids for "text"
 * equal the row's `key` ids. */
static void check_tokens_pre(const char *model, const char *jsonl, const char *key, int max, const char *pre) {
    av_tokenizer *t;
    CHECK_OK(av_tokenizer_load(&t, test_fixture(model), 0));
    if (!t) return;
    av_jsonl j;
    CHECK_OK(av_jsonl_open(&j, test_fixture(jsonl)));
    cJSON *o;
    int n = 0, bad = 0, badd = 0;
    static int32_t want[65536];
    while (n < max && av_jsonl_next(&j, &o) > 0) {
        if (pre && strcmp(av_json_str(o, "pre", ""), pre)) { cJSON_Delete(o); continue; }
        const char *text = av_json_str(o, "text", "");
        const cJSON *wj = av_json_get(o, key);
        if (!wj) wj = av_json_get(o, "hf_ids"); /* tokenize_public.jsonl: sp_ids only where they differ */
        int nw = read_ids(wj, want, 65536), ng;
        int32_t *ids;
        CHECK_OK(av_tokenizer_encode(t, text, strlen(text), 1, &ids, &ng));
        if (ng != nw || memcmp(ids, want, sizeof *ids * (size_t)ng)) {
            if (bad++ < 3) fprintf(stderr, "%s line %d: %d ids vs %d expected\n", model, n + 1, ng, nw);
        } else {
            char *dec;
            CHECK_OK(av_tokenizer_decode(t, ids + 1, ng - 1, 1, &dec));
            badd += dec && strcmp(dec, text) && strchr(text, '\t') == NULL && !strstr(text, "  ");
            free(dec);
        }
        free(ids);
        cJSON_Delete(o);
        n++;
    }
    av_jsonl_close(&j);
    CHECK(n > 0 && bad == 0, "%s: %d of %d texts tokenize differently from %s", model, bad, n, jsonl);
    printf("%s: %d texts tokenized as %s says (%d round trips differ)\n", model, n, jsonl, badd);
    av_tokenizer_free(t);
}
static void check_tokens(const char *model, const char *jsonl, const char *key, int max) { check_tokens_pre(model, jsonl, key, max, NULL); }

/* tokenizer.ggml.pre: the same byte-level BPE vocabulary under each pre-tokenizer name, against
 * llama.cpp's llama-tokenize on the same files (make_pre_fixtures.py) */
static void check_pre_tokenizers(void) {
    static const char *pres[] = {"default", "gpt-2", "deepseek-llm", "smollm", "llama-bpe", "qwen2"};
    for (size_t i = 0; i < sizeof pres / sizeof *pres; i++) {
        char path[128];
        snprintf(path, sizeof path, "gguf/vocab-pre-%s.gguf", pres[i]);
        check_tokens_pre(path, "gguf/llama-tokenize-pre.jsonl", "ids", 100000, pres[i]);
    }
}

/* ---- damaged files ----------------------------------------------------------------------------- */
static char *orig;
static size_t orig_n;

static uint8_t *tensor_info(uint8_t *buf, size_t n, const char *name) { /* the byte after the name */
    size_t l = strlen(name);
    for (size_t i = 8; i + l < n; i++)
        if (!memcmp(buf + i, name, l)) {
            uint64_t len;
            memcpy(&len, buf + i - 8, 8);
            if (len == l) return buf + i + l;
        }
    return NULL;
}

typedef void (*mutate_fn)(uint8_t *buf, size_t *n);
static void m_trunc_hdr(uint8_t *b, size_t *n) { (void)b; *n = 100; }
static void m_trunc_data(uint8_t *b, size_t *n) { (void)b; *n -= 1000; }
static void m_magic(uint8_t *b, size_t *n) { (void)n; b[0] = 'X'; }
static void m_version1(uint8_t *b, size_t *n) { (void)n; uint32_t v = 1; memcpy(b + 4, &v, 4); }
static void m_version9(uint8_t *b, size_t *n) { (void)n; uint32_t v = 9; memcpy(b + 4, &v, 4); }
static void m_ntensors(uint8_t *b, size_t *n) { (void)n; uint64_t v = 1ull << 40; memcpy(b + 8, &v, 8); }
static void m_nkv(uint8_t *b, size_t *n) { (void)n; uint64_t v = 1ull << 40; memcpy(b + 16, &v, 8); }
static void m_misalign(uint8_t *b, size_t *n) { uint8_t *p = tensor_info(b, *n, "blk.0.attn_v.weight"); uint64_t o; memcpy(&o, p + 24, 8); o += 4; memcpy(p + 24, &o, 8); }
static void m_offset(uint8_t *b, size_t *n) { uint8_t *p = tensor_info(b, *n, "blk.0.attn_v.weight"); uint64_t o = 1ull << 40; memcpy(p + 24, &o, 8); }
static void m_overlap(uint8_t *b, size_t *n) {
    uint8_t *p = tensor_info(b, *n, "blk.0.attn_v.weight"), *q = tensor_info(b, *n, "blk.0.attn_q.weight");
    memcpy(p + 24, q + 24, 8);
}
static void m_dup(uint8_t *b, size_t *n) { uint8_t *p = tensor_info(b, *n, "blk.0.attn_q.weight"); p[-8] = 'k'; }
static void m_unknown_type(uint8_t *b, size_t *n) { uint8_t *p = tensor_info(b, *n, "blk.0.attn_q.weight"); uint32_t t = 99; memcpy(p + 20, &t, 4); }
static void m_size_type(uint8_t *b, size_t *n) { uint8_t *p = tensor_info(b, *n, "token_embd.weight"); uint32_t t = 0; memcpy(p + 20, &t, 4); }
static void m_unsup_type(uint8_t *b, size_t *n) { uint8_t *p = tensor_info(b, *n, "blk.0.attn_q.weight"); uint32_t t = 20; memcpy(p + 20, &t, 4); }
static void m_missing(uint8_t *b, size_t *n) { uint8_t *p = tensor_info(b, *n, "output_norm.weight"); p[-1] = 'x'; }
static void m_shape(uint8_t *b, size_t *n) { uint8_t *p = tensor_info(b, *n, "blk.1.ffn_up.weight"); uint64_t e = 32; memcpy(p + 4, &e, 8); }
static void m_keytype(uint8_t *b, size_t *n) { uint8_t *p = tensor_info(b, *n, "llama.block_count"); uint32_t t = 6; memcpy(p, &t, 4); }
static void m_valtype(uint8_t *b, size_t *n) { uint8_t *p = tensor_info(b, *n, "llama.block_count"); uint32_t t = 77; memcpy(p, &t, 4); }
static void m_strlen(uint8_t *b, size_t *n) { uint8_t *p = tensor_info(b, *n, "general.architecture"); uint64_t l = 1ull << 50; memcpy(p + 4, &l, 8); }
static void m_arrlen(uint8_t *b, size_t *n) { uint8_t *p = tensor_info(b, *n, "tokenizer.ggml.scores"); uint64_t l = 1ull << 40; memcpy(p + 8, &l, 8); }

static void check_bad(void) {
    const char *src = test_fixture("gguf/tiny-v1024-q4_0.gguf");
    CHECK_OK(av_file_read(src, &orig, &orig_n));
    if (!orig) return;
    const char *tmpd = getenv("AV_TMP") ? getenv("AV_TMP") : "/tmp";
    struct { const char *what; mutate_fn f; const char *expect; } cases[] = {
        {"truncated header", m_trunc_hdr, "exceeds the file size"},
        {"truncated data", m_trunc_data, "'output.weight'.*|truncated"},
        {"bad magic", m_magic, "bad magic"},
        {"version 1", m_version1, "version 1"},
        {"version 9", m_version9, "version 9"},
        {"tensor count", m_ntensors, "tensor count"},
        {"kv count", m_nkv, "key/value count"},
        {"misaligned", m_misalign, "'blk.0.attn_v.weight': offset"},
        {"offset past end", m_offset, "'blk.0.attn_v.weight'"},
        {"overlap", m_overlap, "overlaps"},
        {"duplicate tensor", m_dup, "duplicate tensor 'blk.0.attn_k.weight'"},
        {"unknown type", m_unknown_type, "unknown type 99"},
        {"type/size mismatch", m_size_type, "'token_embd.weight'"},
        {"unsupported type", m_unsup_type, "'blk.0.attn_q.weight' has type IQ4_NL"},
        {"missing tensor", m_missing, "missing tensor 'output_norm.weight'"},
        {"wrong shape", m_shape, "'blk.1.ffn_up.weight'"},
        {"key of the wrong type", m_keytype, "'llama.block_count' is float32"},
        {"unknown value type", m_valtype, "'llama.block_count' has unknown value type 77"},
        {"string length", m_strlen, "'general.architecture'"},
        {"array length", m_arrlen, "'tokenizer.ggml.scores'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t *b = malloc(orig_n);
        size_t n = orig_n;
        memcpy(b, orig, n);
        cases[i].f(b, &n);
        char path[4200];
        snprintf(path, sizeof path, "%s/bad%zu.gguf", tmpd, i);
        CHECK_OK(av_write_file_atomic(path, b, n));
        free(b);
        av_model *m = NULL;
        av_status s = av_model_load(&m, path, av_backend_cpu());
        const char *e = av_last_error();
        char first[64];
        snprintf(first, sizeof first, "%.*s", (int)strcspn(cases[i].expect, ".|"), cases[i].expect);
        int named = strstr(e, path) != NULL;
        CHECK(s != AV_OK && !m && named && !strchr(e, '\n') && (strstr(e, first) || strstr(e, "truncated")),
              "%s: status %d, error '%s' (want '%s')", cases[i].what, s, e, first);
        av_model_free(m);
        av_tokenizer *t = NULL;
        s = av_tokenizer_load(&t, path, 0); /* must not crash either; may succeed when only tensors are damaged */
        av_tokenizer_free(t);
        unlink(path);
    }
    free(orig);
    /* the tokenizer-only file is no model */
    av_model *m = NULL;
    CHECK(av_model_load(&m, test_fixture("gguf/vocab-llama2.gguf"), av_backend_cpu()) != AV_OK && strstr(av_last_error(), "token_embd.weight"),
          "vocab-only file: %s", av_last_error());
}

/* K-quant models (tiny-k256: hidden/ffn 256, llama-quantize's Q2_K, Q3_K_M, Q4_K_M, Q5_K_M mixes and
 * pure Q6_K) give transformers' logits on gguf-py's dequantization of each file; Q4_K/Q5_K tensors
 * are repacked (MLX affine, group 32), Q6_K/Q3_K/Q2_K ones too (6/3/2-bit, group 16; f32 on a GPU), to
 * f32. Within 1e-5 of the largest logit, or 5e-5 where the (tied, quantized) LM head runs the VNNI
 * kernel with its two-digit int8 x (qmatmul.c; test_mlx_quant allows the same). */
static void check_k256(void) {
    av_st_file ex;
    CHECK_OK(av_st_open(&ex, test_fixture("gguf/expected-k256.safetensors")));
    const av_st_tensor *pt = av_st_find(&ex, "prompt_ids");
    CHECK(pt != NULL, "expected-k256.safetensors: prompt_ids");
    if (!pt) { av_st_close(&ex); return; }
    int T = (int)av_st_numel(pt), V = 1024;
    const char *types[] = {"q2_k", "q3_k_m", "q4_k_m", "q5_k_m", "q6_k"};
    for (int k = 0; k < 5; k++) {
        char name[64], key[64];
        snprintf(name, sizeof name, "gguf/tiny-k256-%s.gguf", types[k]);
        snprintf(key, sizeof key, "logits_%s", types[k]);
        av_model *m;
        av_status s = av_model_load(&m, test_fixture(name), av_backend_cpu());
        CHECK(s == AV_OK, "%s: %s", name, av_last_error());
        if (s) continue;
        CHECK(m->cfg.hidden_size == 256 && m->cfg.vocab_size == V && m->cfg.tie_word_embeddings, "%s: config", name);
        av_gguf_file f;
        int nrep = 0, nf32 = 0, bad = 0;
        CHECK_OK(av_gguf_open(&f, test_fixture(name)));
        for (int p = 0; p < AV_PROJ_COUNT; p++) {
            static const char *const gn[AV_PROJ_COUNT] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
            char tn[64];
            snprintf(tn, sizeof tn, "blk.0.%s.weight", gn[p]);
            const av_gguf_tensor *t = av_gguf_tensor_find(&f, tn);
            const av_mat *w = &av_layer_proj(&m->layers[0], (av_proj)p)->w;
            if (!t) { bad++; continue; }
            if (av_ggml_block_size(t->type) == 256) { /* every K-quant is repacked on the CPU */
                nrep++;
                bad += !(w->q_bits == av_gguf_repack_bits(t->type) && w->q_group == av_gguf_repack_group(t->type));
            } else {
                nf32++;
                bad += !(w->q_bits == 0 && w->dtype == AV_F32);
            }
        }
        av_gguf_close(&f);
        CHECK(!bad, "%s: %d projections not held as their type says", name, bad);
        const av_st_tensor *qt = av_st_find(&ex, key);
        CHECK(qt && av_st_numel(qt) == V, "expected %s", key);
        if (qt) {
            float g[1024];
            last_logits(m, pt->data, T, g);
            const float *ref = test_f32_view(qt->data, (size_t)V);
            double d = max_abs(g, ref, V), mx = 0;
            for (int i = 0; i < V; i++) mx = fmax(mx, fabs(ref[i]));
            double tol = m->lm_head.q_bits && strcmp(av_qmatmul_impl(), "portable") ? 5e-5 : 1e-5;
            CHECK(d <= tol * mx, "%s vs transformers on the dequantized weights: max abs diff %.3g (logits up to %.3g)", name, d, mx);
            printf("%s: max abs diff %.3g vs transformers on its dequantized weights (logits up to %.3g; %d projections repacked, %d f32)\n",
                   name, d, mx, nrep, nf32);
        }
        av_model_free(m);
    }
    av_st_close(&ex);
}

/* ---- inputs the fuzzer (fuzz/fuzz_gguf.c) found: small GGUF files built in memory ---- */
typedef struct { uint8_t b[4096]; size_t n; } gbuf;
static void g_put(gbuf *g, const void *p, size_t n) { if (g->n + n <= sizeof g->b) { memcpy(g->b + g->n, p, n); g->n += n; } }
static void g_u32(gbuf *g, uint32_t v) { g_put(g, &v, 4); }
static void g_u64(gbuf *g, uint64_t v) { g_put(g, &v, 8); }
static void g_str(gbuf *g, const char *s) { g_u64(g, strlen(s)); g_put(g, s, strlen(s)); }
static void g_head(gbuf *g, uint64_t nkv) { g->n = 0; g_put(g, "GGUF", 4); g_u32(g, 3); g_u64(g, 0); g_u64(g, nkv); }
static void g_kv_str(gbuf *g, const char *k, const char *v) { g_str(g, k); g_u32(g, AV_GGUF_STR); g_str(g, v); }
static void g_kv_strs(gbuf *g, const char *k, int n, const char *const *v) {
    g_str(g, k); g_u32(g, AV_GGUF_ARR); g_u32(g, AV_GGUF_STR); g_u64(g, (uint64_t)n);
    for (int i = 0; i < n; i++) g_str(g, v[i]);
}
static void g_kv_f32s(gbuf *g, const char *k, int n, const float *v) {
    g_str(g, k); g_u32(g, AV_GGUF_ARR); g_u32(g, AV_GGUF_F32); g_u64(g, (uint64_t)n); g_put(g, v, 4 * (size_t)n);
}

static void check_fuzz_found(void) {
    av_gguf_file f;
    av_tokenizer *t = NULL;
    /* no bytes at all, and a lone magic: one-line errors */
    CHECK(av_gguf_open_mem(&f, NULL, 0, "empty") != AV_OK && strstr(av_last_error(), "empty"), "%s", av_last_error());
    CHECK(av_gguf_open_mem(&f, "GGUF", 4, "magic") != AV_OK && strstr(av_last_error(), "truncated"), "%s", av_last_error());
    /* a SentencePiece vocabulary of one piece and no bos/eos keys: the default ids 1 and 2 do not exist
     * (read past the piece offsets before) -> no BOS/EOS */
    gbuf g;
    const char *one[] = {"<unk>"};
    g_head(&g, 2);
    g_kv_str(&g, "tokenizer.ggml.model", "llama");
    g_kv_strs(&g, "tokenizer.ggml.tokens", 1, one);
    CHECK_OK(av_gguf_open_mem(&f, g.b, g.n, "one-piece"));
    if (f.n_kv) {
        CHECK_OK(tk_gguf_from_file(&t, &f));
        if (t) {
            CHECK(t->bos_id == -1 && t->eos_id == -1 && !t->add_bos, "bos %d eos %d", t->bos_id, t->eos_id);
            int32_t *ids = NULL;
            int n = 0;
            CHECK_OK(av_tokenizer_encode(t, "ab", 2, 1, &ids, &n));
            free(ids);
        }
        av_tokenizer_free(t);
        t = NULL;
        av_gguf_close(&f);
    }
    /* token_type given as float32 with values outside int64 (and NaN): no UB converting them */
    const char *three[] = {"<unk>", "<s>", "</s>"};
    const float types[] = {1e30f, -1e30f, NAN};
    g_head(&g, 3);
    g_kv_str(&g, "tokenizer.ggml.model", "llama");
    g_kv_strs(&g, "tokenizer.ggml.tokens", 3, three);
    g_kv_f32s(&g, "tokenizer.ggml.token_type", 3, types);
    CHECK_OK(av_gguf_open_mem(&f, g.b, g.n, "float-types"));
    if (f.n_kv) {
        const av_gguf_kv *a = NULL;
        CHECK_OK(av_gguf_get_arr(&f, "tokenizer.ggml.token_type", -1, -1, &a));
        if (a) CHECK(av_gguf_arr_i64(a, 0) == INT64_MAX && av_gguf_arr_i64(a, 1) == INT64_MIN && av_gguf_arr_i64(a, 2) == 0, "saturation");
        CHECK_OK(tk_gguf_from_file(&t, &f));
        av_tokenizer_free(t);
        av_gguf_close(&f);
    }
    /* safetensors: data offsets beyond any size (a double that does not fit size_t) */
    static const char js[] = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1e300]}}";
    uint8_t st[128];
    uint64_t hl = sizeof js - 1;
    memcpy(st, &hl, 8);
    memcpy(st + 8, js, hl);
    av_st_file sf;
    CHECK(av_st_open_mem(&sf, st, 8 + hl, "huge-offset") != AV_OK && strstr(av_last_error(), "'a'"), "%s", av_last_error());
}

int main(void) {
    check_logits();
    check_k256();
    check_repack();
    check_blocks();
    check_tokens("gguf/vocab-llama2.gguf", "tokenize_public.jsonl", "sp_ids", 100000);
    check_tokens("gguf/tiny-v1024-q4_0.gguf", "gguf/tokens-v1024.jsonl", "ids", 100000);
    check_tokens("gguf/vocab-gpt2.gguf", "tok_gpt2/expected.jsonl", "ids", 100000);
    check_tokens("gguf/vocab-llama3.gguf", "tok_llama3/expected.jsonl", "ids", 100000);
    /* vocab-qwen2.gguf is not checked against HF: llama.cpp (and so anvil, on a GGUF) skips
     * tokenizer.json's NFC normalizer, so a text that is not in NFC tokenizes differently */
    check_pre_tokenizers();
    check_bad();
    check_fuzz_found();
    return TEST_SUMMARY();
}
