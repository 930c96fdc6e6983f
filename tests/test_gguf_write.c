/* GGUF writing: (1) the generic writer round-trips key/values of every type, arrays and tensors
 * through the reader; (2) anvil's export of tests/fixtures/gguf/tiny-v1024 holds, tensor by tensor,
 * the very bytes llama.cpp wrote: convert_hf_to_gguf.py for f32/f16/bf16/q8_0 (its Q8_0 is gguf-py's
 * quants.quantize, which mirrors ggml's reference) and llama-quantize --pure for q4_0 (ggml's
 * quantize_row_q4_0_ref) -- Q/K rows in llama.cpp's rotary order, ffn_down (176 columns) F16; its
 * llama.* keys, vocabulary, special ids and chat template equal the converter's; (3) the written
 * file loads back and gives the logits of the file llama.cpp wrote; (4) llama.cpp's llama-tokenize on
 * the written file gives anvil's ids (llama-tokenize-v1024.jsonl, made by make_llama_tokenize.py);
 * (5) a Q8_0/Q4_0 GGUF read, de-quantized and written again is byte-identical; (6) --outtype q4_k /
 * q6_k of tiny-k256 files give llama-quantize's bytes for the same values (ggml's
 * quantize_row_q4_K_ref / quantize_row_q6_K_ref). */
#include "test.h"
#include "backend/backend.h"
#include "formats/gguf.h"
#include "formats/gguf_write.h"
#include "model/llama.h"
#include <unistd.h>

static char tmpdir[256];

static void check_writer(void) {
    av_gguf_writer w;
    av_gguf_writer_init(&w);
    uint8_t u8 = 200; int8_t i8 = -5; uint16_t u16 = 60000; int16_t i16 = -30000; int32_t i32 = -7; int64_t i64 = -(1ll << 40);
    uint64_t u64 = 1ull << 50; double f64 = 0.125;
    CHECK_OK(av_gguf_w_scalar(&w, "a.u8", AV_GGUF_U8, &u8));
    CHECK_OK(av_gguf_w_scalar(&w, "a.i8", AV_GGUF_I8, &i8));
    CHECK_OK(av_gguf_w_scalar(&w, "a.u16", AV_GGUF_U16, &u16));
    CHECK_OK(av_gguf_w_scalar(&w, "a.i16", AV_GGUF_I16, &i16));
    CHECK_OK(av_gguf_w_u32(&w, "a.u32", 4000000000u));
    CHECK_OK(av_gguf_w_scalar(&w, "a.i32", AV_GGUF_I32, &i32));
    CHECK_OK(av_gguf_w_f32(&w, "a.f32", 1.5f));
    CHECK_OK(av_gguf_w_bool(&w, "a.bool", 1));
    CHECK_OK(av_gguf_w_scalar(&w, "a.u64", AV_GGUF_U64, &u64));
    CHECK_OK(av_gguf_w_scalar(&w, "a.i64", AV_GGUF_I64, &i64));
    CHECK_OK(av_gguf_w_scalar(&w, "a.f64", AV_GGUF_F64, &f64));
    CHECK_OK(av_gguf_w_str(&w, "a.str", "h\0llo", 5));
    int32_t arr[3] = {1, -2, 3};
    CHECK_OK(av_gguf_w_arr(&w, "a.arr", AV_GGUF_I32, arr, 3));
    const char *ss[2] = {"x", "yz"};
    size_t sl[2] = {1, 2};
    CHECK_OK(av_gguf_w_arr_str(&w, "a.strs", ss, sl, 2));
    CHECK(av_gguf_w_scalar(&w, "bad", AV_GGUF_STR, &u8) != AV_OK, "STR is no scalar");
    float t1[5] = {1, 2, 3, 4, 5}, t2[64];
    for (int i = 0; i < 64; i++) t2[i] = (float)i;
    int64_t ne1[1] = {5}, ne2[2] = {32, 2};
    CHECK_OK(av_gguf_w_tensor(&w, "t1", AV_GGML_F32, 1, ne1, t1, sizeof t1));
    CHECK_OK(av_gguf_w_tensor(&w, "t2", AV_GGML_F32, 2, ne2, t2, sizeof t2));
    CHECK(av_gguf_w_tensor(&w, "t3", AV_GGML_Q8_0, 1, ne1, t1, 34) != AV_OK, "5 values are no Q8_0 row");
    CHECK(av_gguf_w_tensor(&w, "t1", AV_GGML_F32, 1, ne1, t1, sizeof t1) != AV_OK, "duplicate tensor");
    char path[300];
    snprintf(path, sizeof path, "%s/w.gguf", tmpdir);
    CHECK_OK(av_gguf_writer_write(&w, path));
    av_gguf_writer_free(&w);
    av_gguf_file f;
    if (av_gguf_open(&f, path) != AV_OK) { CHECK(0, "reopen: %s", av_last_error()); return; }
    int64_t v = 0; double d = 0; int b = 0;
    CHECK(f.n_kv == 14 && f.n_tensors == 2, "counts %d %d", f.n_kv, f.n_tensors);
    CHECK(av_gguf_get_i64(&f, "a.u8", &v) == AV_OK && v == 200, "u8");
    CHECK(av_gguf_get_i64(&f, "a.i8", &v) == AV_OK && v == -5, "i8");
    CHECK(av_gguf_get_i64(&f, "a.u16", &v) == AV_OK && v == 60000, "u16");
    CHECK(av_gguf_get_i64(&f, "a.i16", &v) == AV_OK && v == -30000, "i16");
    CHECK(av_gguf_get_i64(&f, "a.u32", &v) == AV_OK && v == 4000000000ll, "u32");
    CHECK(av_gguf_get_i64(&f, "a.i32", &v) == AV_OK && v == -7, "i32");
    CHECK(av_gguf_get_i64(&f, "a.u64", &v) == AV_OK && v == (int64_t)(1ull << 50), "u64");
    CHECK(av_gguf_get_i64(&f, "a.i64", &v) == AV_OK && v == -(1ll << 40), "i64");
    CHECK(av_gguf_get_f64(&f, "a.f32", &d) == AV_OK && d == 1.5, "f32");
    CHECK(av_gguf_get_f64(&f, "a.f64", &d) == AV_OK && d == 0.125, "f64");
    CHECK(av_gguf_get_bool(&f, "a.bool", &b) == AV_OK && b == 1, "bool");
    const av_gguf_kv *kv = av_gguf_find(&f, "a.str");
    CHECK(kv && kv->type == AV_GGUF_STR && kv->len == 5 && !memcmp(kv->p, "h\0llo", 5), "string with a NUL");
    const av_gguf_kv *a = NULL;
    CHECK(av_gguf_get_arr(&f, "a.arr", AV_GGUF_I32, AV_GGUF_I32, &a) == AV_OK && a && a->n == 3 && av_gguf_arr_i64(a, 1) == -2, "i32 array");
    CHECK(av_gguf_get_arr(&f, "a.strs", AV_GGUF_STR, AV_GGUF_STR, &a) == AV_OK && a && a->n == 2, "string array");
    size_t len = 0;
    const char *p = a ? av_gguf_arr_str(a, 1, &len) : NULL;
    CHECK(p && len == 2 && !memcmp(p, "yz", 2), "string array element");
    const av_gguf_tensor *t = av_gguf_tensor_find(&f, "t2");
    CHECK(t && t->ndim == 2 && t->ne[0] == 32 && t->ne[1] == 2 && t->offset % 32 == 0 && !memcmp(t->data, t2, sizeof t2), "tensor t2");
    t = av_gguf_tensor_find(&f, "t1");
    CHECK(t && t->ne[0] == 5 && !memcmp(t->data, t1, sizeof t1), "tensor t1");
    av_gguf_close(&f);
}

static int same_kv(const av_gguf_kv *a, const av_gguf_kv *b) {
    if (a->type != b->type || a->n != b->n) return 0;
    if (a->type == AV_GGUF_STR) return a->len == b->len && !memcmp(a->p, b->p, a->len);
    if (a->type == AV_GGUF_ARR) {
        if (a->arr_type != b->arr_type) return 0;
        for (uint64_t i = 0; i < a->n; i++) {
            if (a->arr_type == AV_GGUF_STR) {
                size_t la, lb;
                const char *pa = av_gguf_arr_str(a, i, &la), *pb = av_gguf_arr_str(b, i, &lb);
                if (la != lb || memcmp(pa, pb, la)) return 0;
            } else if (av_gguf_arr_f64(a, i) != av_gguf_arr_f64(b, i)) return 0;
        }
        return 1;
    }
    int sz = a->type == AV_GGUF_U8 || a->type == AV_GGUF_I8 || a->type == AV_GGUF_BOOL ? 1 : a->type == AV_GGUF_U16 || a->type == AV_GGUF_I16 ? 2
             : a->type == AV_GGUF_U64 || a->type == AV_GGUF_I64 || a->type == AV_GGUF_F64 ? 8 : 4;
    return !memcmp(a->p, b->p, (size_t)sz);
}

static void check_export(void) {
    av_model *m = NULL;
    av_tokenizer *tok = NULL;
    av_chat_config cc = {0};
    const char *dir = test_fixture("gguf/tiny-v1024");
    CHECK_OK(av_model_load(&m, dir, av_backend_cpu()));
    CHECK_OK(av_tokenizer_load(&tok, dir, 1));
    CHECK_OK(av_chat_config_load(&cc, dir));
    if (!m || !tok) return;
    const char *types[] = {"f32", "f16", "bf16", "q8_0", "q4_0"};
    av_st_file ex;
    CHECK_OK(av_st_open(&ex, test_fixture("gguf/expected.safetensors")));
    const av_st_tensor *pt = av_st_find(&ex, "prompt_ids");
    for (int k = 0; k < 5; k++) {
        char path[300], ref[64];
        snprintf(path, sizeof path, "%s/x-%s.gguf", tmpdir, types[k]);
        snprintf(ref, sizeof ref, "gguf/tiny-v1024-%s.gguf", types[k]);
        av_gguf_export_opts o = {.outtype = av_gguf_outtype_parse(types[k]), .chat_template = cc.template_src};
        av_gguf_export_report r;
        CHECK_OK(av_gguf_export(m, tok, path, &o, &r));
        CHECK(r.n_tensors == 21 && r.n_fallback == (k >= 3 ? 2 : 0) && r.n_quantized == (k >= 3 ? 14 : 0), "%s: report %d %d %d", types[k],
              r.n_tensors, r.n_fallback, r.n_quantized);
        av_gguf_file a, b;
        if (av_gguf_open(&a, path) != AV_OK) { CHECK(0, "%s", av_last_error()); continue; }
        if (av_gguf_open(&b, test_fixture(ref)) != AV_OK) { CHECK(0, "%s", av_last_error()); av_gguf_close(&a); continue; }
        int bad = 0;
        for (int i = 0; i < b.n_tensors; i++) {
            const av_gguf_tensor *tb = &b.tensors[i], *ta = av_gguf_tensor_find(&a, tb->name);
            int same = ta && ta->type == tb->type && ta->ndim == tb->ndim && ta->ne[0] == tb->ne[0] && ta->ne[1] == tb->ne[1] &&
                       ta->nbytes == tb->nbytes && !memcmp(ta->data, tb->data, tb->nbytes);
            CHECK(same, "%s: tensor %s differs from llama.cpp's (type %s vs %s)", types[k], tb->name, ta ? av_ggml_type_name(ta->type) : "absent",
                  av_ggml_type_name(tb->type));
            bad += !same;
        }
        CHECK(a.n_tensors == b.n_tensors, "%s: %d tensors vs %d", types[k], a.n_tensors, b.n_tensors);
        /* every key of llama.cpp's file but its naming (general.name/basename/version/size_label) */
        for (int i = 0; i < b.n_kv; i++) {
            const av_gguf_kv *kb = &b.kv[i], *ka = av_gguf_find(&a, kb->key);
            if (!strncmp(kb->key, "general.", 8) && strcmp(kb->key, "general.architecture") && strcmp(kb->key, "general.file_type") &&
                strcmp(kb->key, "general.quantization_version"))
                continue;
            if (k == 4 && !strcmp(kb->key, "general.file_type")) continue; /* llama-quantize also writes 2; checked below */
            CHECK(ka && same_kv(ka, kb), "%s: key %s differs from llama.cpp's", types[k], kb->key);
        }
        int64_t ft = -1;
        av_gguf_get_i64(&a, "general.file_type", &ft);
        static const int64_t want_ft[5] = {0, 1, 32, 7, 2};
        CHECK(ft == want_ft[k], "%s: general.file_type %lld", types[k], (long long)ft);
        printf("%s: %d of %d tensors byte-identical to llama.cpp's\n", types[k], b.n_tensors - bad, b.n_tensors);
        av_gguf_close(&a);
        av_gguf_close(&b);
        /* read back: the logits of llama.cpp's file */
        av_model *x = NULL, *y = NULL;
        CHECK_OK(av_model_load(&x, path, av_backend_cpu()));
        CHECK_OK(av_model_load(&y, test_fixture(ref), av_backend_cpu()));
        if (x && y && pt) {
            float gx[1024], gy[1024];
            av_session *s;
            int T = (int)av_st_numel(pt);
            CHECK_OK(av_session_new(&s, x, 64, 64));
            if (s) { CHECK_OK(av_session_forward(s, pt->data, T)); av_session_last_logits(s, gx); av_session_free(s); }
            CHECK_OK(av_session_new(&s, y, 64, 64));
            if (s) { CHECK_OK(av_session_forward(s, pt->data, T)); av_session_last_logits(s, gy); av_session_free(s); }
            CHECK(!memcmp(gx, gy, sizeof gx), "%s: read-back logits differ from llama.cpp's file's", types[k]);
        }
        av_model_free(x);
        av_model_free(y);
    }
    /* bad output type; unwritable path leaves nothing behind */
    av_gguf_export_opts o = {.outtype = 9};
    av_gguf_export_report r;
    CHECK(av_gguf_export(m, tok, "/nonexistent-dir/x.gguf", &o, &r) != AV_OK, "bad outtype");
    o.outtype = AV_GGUF_OUT_F16;
    CHECK(av_gguf_export(m, tok, "/nonexistent-dir/x.gguf", &o, &r) != AV_OK && strstr(av_last_error(), "/nonexistent-dir/x.gguf"),
          "unwritable: %s", av_last_error());
    CHECK(av_gguf_outtype_parse("Q4_0") == AV_GGUF_OUT_Q4_0 && av_gguf_outtype_parse("q4_k") == AV_GGUF_OUT_Q4_K && av_gguf_outtype_parse("Q6_K") == AV_GGUF_OUT_Q6_K && av_gguf_outtype_parse("q5_k") < 0, "outtype names");
    av_st_close(&ex);
    av_chat_config_free(&cc);
    av_tokenizer_free(tok);
    av_model_free(m);
}

/* A Q8_0/Q4_0 GGUF loaded (repacked to MLX affine), de-quantized and written again as the same
 * type: every tensor byte-identical to the source file (the re-quantization is exact). */
static void check_requant_roundtrip(void) {
    const char *types[] = {"q8_0", "q4_0"};
    for (int k = 0; k < 2; k++) {
        char src[64], path[300];
        snprintf(src, sizeof src, "gguf/tiny-v1024-%s.gguf", types[k]);
        snprintf(path, sizeof path, "%s/rt-%s.gguf", tmpdir, types[k]);
        av_model *m = NULL;
        av_tokenizer *tok = NULL;
        CHECK_OK(av_model_load(&m, test_fixture(src), av_backend_cpu()));
        CHECK_OK(av_tokenizer_load(&tok, test_fixture(src), 0));
        if (!m || !tok) { av_model_free(m); av_tokenizer_free(tok); continue; }
        av_gguf_export_opts o = {.outtype = av_gguf_outtype_parse(types[k])};
        av_gguf_export_report r;
        CHECK_OK(av_gguf_export(m, tok, path, &o, &r));
        CHECK(r.n_dequantized == 14, "%s: %d matrices de-quantized", types[k], r.n_dequantized);
        av_gguf_file a, b;
        if (av_gguf_open(&a, path) == AV_OK) {
            if (av_gguf_open(&b, test_fixture(src)) == AV_OK) {
                int bad = 0;
                for (int i = 0; i < b.n_tensors; i++) {
                    const av_gguf_tensor *tb = &b.tensors[i], *ta = av_gguf_tensor_find(&a, tb->name);
                    bad += !(ta && ta->type == tb->type && ta->nbytes == tb->nbytes && !memcmp(ta->data, tb->data, tb->nbytes));
                }
                CHECK(bad == 0 && a.n_tensors == b.n_tensors, "%s: %d tensors differ after the round trip", types[k], bad);
                av_gguf_close(&b);
            }
            av_gguf_close(&a);
        }
        av_tokenizer_free(tok);
        av_model_free(m);
    }
}

/* llama.cpp's llama-tokenize on anvil's written file (llama-tokenize-v1024.jsonl) = anvil's tokenizer
 * read from that file. */
static void check_llama_tokenize(void) {
    char path[300];
    snprintf(path, sizeof path, "%s/x-f16.gguf", tmpdir);
    av_tokenizer *t = NULL;
    CHECK_OK(av_tokenizer_load(&t, path, 0));
    if (!t) return;
    av_jsonl j;
    CHECK_OK(av_jsonl_open(&j, test_fixture("gguf/llama-tokenize-v1024.jsonl")));
    cJSON *o;
    int n = 0, bad = 0;
    while (av_jsonl_next(&j, &o) > 0) {
        const char *text = av_json_str(o, "text", "");
        const cJSON *w = av_json_get(o, "ids");
        int32_t *ids = NULL;
        int ng = 0, k = 0, same = 1;
        CHECK_OK(av_tokenizer_encode(t, text, strlen(text), 1, &ids, &ng));
        for (const cJSON *e = w ? w->child : NULL; e; e = e->next, k++) same &= k < ng && ids[k] == e->valueint;
        bad += !(same && k == ng);
        free(ids);
        cJSON_Delete(o);
        n++;
    }
    av_jsonl_close(&j);
    CHECK(n == 40 && bad == 0, "%d of %d texts tokenize differently from llama-tokenize", bad, n);
    printf("written vocabulary: %d texts tokenized as llama.cpp's llama-tokenize does\n", n);
    av_tokenizer_free(t);
}

/* FNV-1a, 64 bits: how the fixtures name a tensor's bytes without holding them */
static uint64_t fnv1a64(const void *p, size_t n) {
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* K-quant writing: a tiny-k256 file (de-quantized at load) exported as q4_k / q6_k holds, tensor by
 * tensor, the bytes llama-quantize --allow-requantize --pure wrote from the same file (the fixture keeps
 * each of its tensors' name, type, size and FNV-1a 64 of the bytes) -- except the tensors already of the
 * target type, which llama-quantize copies as they are (anvil re-quantizes their values; Q6_K of Q6_K
 * values is not the identity). */
static void check_k_export(const char *src, const char *outtype, int ggml_type, const char *ref) {
    char path[300];
    snprintf(path, sizeof path, "%s/k256-%s.gguf", tmpdir, outtype);
    av_model *m = NULL;
    av_tokenizer *tok = NULL;
    cJSON *rj = NULL;
    CHECK_OK(av_model_load(&m, test_fixture(src), av_backend_cpu()));
    CHECK_OK(av_tokenizer_load(&tok, test_fixture(src), 0));
    CHECK_OK(av_json_load(test_fixture(ref), &rj));
    const cJSON *want = rj ? av_json_get(rj, "tensors") : NULL;
    CHECK(!rj || (want && cJSON_IsArray(want)), "%s: no tensors array", ref);
    if (m && tok && want) {
        av_gguf_export_opts o = {.outtype = av_gguf_outtype_parse(outtype)};
        av_gguf_export_report r;
        CHECK_OK(av_gguf_export(m, tok, path, &o, &r));
        CHECK(r.n_quantized == 8 && r.n_fallback == 0, "%s: %d quantized, %d fallback", outtype, r.n_quantized, r.n_fallback);
        av_gguf_file a;
        if (av_gguf_open(&a, path) == AV_OK) {
            av_gguf_file sf;
            int sok = av_gguf_open(&sf, test_fixture(src)) == AV_OK;
            CHECK(sok, "%s: %s", src, av_last_error());
            int bad = 0, nq = 0, copied = 0, n = 0;
            for (const cJSON *e = want->child; e; e = e->next, n++) {
                const char *name = av_json_str(e, "name", "");
                int type = (int)av_json_num(e, "type", -1);
                size_t nb = (size_t)av_json_num(e, "nbytes", 0);
                uint64_t h = strtoull(av_json_str(e, "fnv1a64", "0"), NULL, 16);
                const av_gguf_tensor *ta = av_gguf_tensor_find(&a, name), *ts = sok ? av_gguf_tensor_find(&sf, name) : NULL;
                nq += type == ggml_type;
                if (ts && ts->type == ggml_type) {
                    copied++;
                    bad += !(ta && ta->type == type && ta->nbytes == nb);
                    continue;
                }
                int ok = ta && ta->type == type && ta->nbytes == nb && fnv1a64(ta->data, nb) == h;
                if (!ok) fprintf(stderr, "%s: tensor %s differs from llama-quantize's\n", outtype, name);
                bad += !ok;
            }
            CHECK(bad == 0 && nq == 8 && a.n_tensors == n, "%s: %d of %d tensors differ from llama-quantize's", outtype, bad, n);
            printf("%s from %s: %d of %d tensors (%d %s) byte-identical to llama-quantize's (%d already %s there, copied by it)\n", outtype, src,
                   n - bad - copied, n - copied, nq - copied, av_ggml_type_name(ggml_type), copied, av_ggml_type_name(ggml_type));
            if (sok) av_gguf_close(&sf);
            av_gguf_close(&a);
        }
    }
    cJSON_Delete(rj);
    av_tokenizer_free(tok);
    av_model_free(m);
}

int main(void) {
    const char *t = getenv("AV_TMP");
    snprintf(tmpdir, sizeof tmpdir, "%s/anvil-gguf-write-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(tmpdir)) { CHECK(0, "mkdtemp"); return TEST_SUMMARY(); }
    check_writer();
    check_export();
    check_llama_tokenize();
    check_requant_roundtrip();
    check_k_export("gguf/tiny-k256-q6_k.gguf", "q4_k", AV_GGML_Q4_K, "gguf/tiny-k256-q6_k-to-q4_k.tensors.json");
    check_k_export("gguf/tiny-k256-q5_k_m.gguf", "q6_k", AV_GGML_Q6_K, "gguf/tiny-k256-q5_k_m-to-q6_k.tensors.json");
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) printf("could not remove %s\n", tmpdir);
    return TEST_SUMMARY();
}
