/* libFuzzer target: the GGUF reader over the input bytes (av_gguf_open_mem, the same parser as
 * files), then every key through every typed getter, every array element, every tensor info, the
 * tokenizer builder (plus a short encode/decode with it), the llama config extraction and the
 * binding of the tensors as model weights (repacking/dequantization included). Inputs the
 * reader rejects end there; nothing may crash, leak or trip UBSan. Build and run: `make fuzz`. */
#include "anvil.h"
#include "formats/gguf.h"
#include "model/model.h"
#include "tokenizer/tok_internal.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink;

static void read_kv(const av_gguf_file *f, const av_gguf_kv *kv) {
    int64_t i = 0;
    int iv = 0, b = 0;
    double d = 0;
    char *s = NULL;
    const av_gguf_kv *a = NULL;
    (void)av_gguf_get_i64(f, kv->key, &i);
    (void)av_gguf_get_int(f, kv->key, -1000, 1000, &iv);
    (void)av_gguf_get_int(f, kv->key, 0, 0x7fffffff, &iv);
    (void)av_gguf_get_f64(f, kv->key, &d);
    (void)av_gguf_get_bool(f, kv->key, &b);
    if (av_gguf_get_str(f, kv->key, &s) == AV_OK && s) sink += strlen(s);
    free(s);
    if (av_gguf_get_arr(f, kv->key, -1, -1, &a) == AV_OK && a)
        for (uint64_t k = 0; k < a->n && k < 65536; k++) sink += (uint64_t)av_gguf_arr_i64(a, k) + (uint64_t)(av_gguf_arr_f64(a, k) != 0);
    if (av_gguf_get_arr(f, kv->key, AV_GGUF_STR, AV_GGUF_STR, &a) == AV_OK && a)
        for (uint64_t k = 0; k < a->n && k < 65536; k++) {
            size_t len;
            const char *p = av_gguf_arr_str(a, k, &len);
            if (len) sink += (uint8_t)p[0] + (uint8_t)p[len - 1];
        }
    (void)av_gguf_get_arr(f, kv->key, AV_GGUF_ARR, AV_GGUF_U8, &a);
    sink += (uint64_t)(i + iv + b) + (d != 0);
}

static void use_tokenizer(const av_tokenizer *t) {
    static const char text[] = "Hello world, 123 <s> </s> <|endoftext|> \xe2\x96\x81x\n\n  tabs\t\xf0\x9f\x98\x80 caf\xc3\xa9";
    int32_t *ids = NULL;
    int n = 0;
    if (av_tokenizer_encode(t, text, sizeof text - 1, 1, &ids, &n) == AV_OK) {
        char *out = NULL;
        if (av_tokenizer_decode(t, ids, n, 0, &out) == AV_OK) sink += strlen(out);
        free(out);
        out = NULL;
        if (av_tokenizer_decode(t, ids, n, 1, &out) == AV_OK) sink += strlen(out);
        free(out);
    }
    free(ids);
    int32_t some[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    char *out = NULL;
    if (av_tokenizer_decode(t, some, 8, 0, &out) == AV_OK) sink += strlen(out);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    av_gguf_file *fp = malloc(sizeof *fp);
    if (!fp) return 0;
    if (av_gguf_open_mem(fp, data, size, "fuzz.gguf") != AV_OK) { free(fp); return 0; }
    const av_gguf_file *f = fp;
    for (int i = 0; i < f->n_kv; i++) {
        const av_gguf_kv *kv = av_gguf_find(f, f->kv[i].key);
        if (kv) read_kv(f, kv);
    }
    (void)av_gguf_find(f, "no.such.key");
    for (int i = 0; i < f->n_tensors; i++) {
        const av_gguf_tensor *t = av_gguf_tensor_find(f, f->tensors[i].name);
        if (!t) continue;
        sink += (uint64_t)av_gguf_numel(t) + (uint64_t)strlen(av_ggml_type_name(t->type));
        if (t->nbytes) sink += ((const uint8_t *)t->data)[0] + ((const uint8_t *)t->data)[t->nbytes - 1];
    }
    av_tokenizer *tok = NULL;
    if (tk_gguf_from_file(&tok, f) == AV_OK) {
        use_tokenizer(tok);
        av_tokenizer_free(tok);
    }
    /* config, then the tensors bound as weights (as av_model_load does; the model owns the file) */
    av_config c;
    av_model *m = NULL;
    if (av_gguf_config(&c, f) == AV_OK && (m = calloc(1, sizeof *m)) && (m->layers = calloc((size_t)c.n_layers, sizeof *m->layers))) {
        m->be = av_backend_cpu();
        m->cfg = c;
        m->gguf = fp;
        if (av_model_bind_gguf(m) == AV_OK) sink += (uint64_t)m->weight_bytes;
        av_model_free(m);
        return 0;
    }
    if (m) free(m);
    av_gguf_close(fp);
    free(fp);
    return 0;
}
