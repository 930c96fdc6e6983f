/* GGUF writer: see gguf_write.h. Layout (GGUF v3): magic, version, tensor count, kv count, the
 * pairs, tensor infos (name, dims, extents, type, offset in the data section), zero padding to the
 * alignment, then each tensor's bytes padded to the alignment. */
#include "formats/gguf_write.h"
#include "formats/gguf.h"
#include "core/memory.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ALIGN 32

void av_gguf_writer_init(av_gguf_writer *w) { memset(w, 0, sizeof *w); }

void av_gguf_writer_free(av_gguf_writer *w) {
    free(w->kv);
    for (int i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->t);
    memset(w, 0, sizeof *w);
}

static int put(av_gguf_writer *w, const void *p, size_t n) {
    if (w->kv_len + n > w->kv_cap) {
        size_t cap = w->kv_cap ? w->kv_cap : 4096;
        while (cap < w->kv_len + n) cap *= 2;
        uint8_t *q = realloc(w->kv, cap);
        if (!q) { w->failed = 1; return -1; }
        w->kv = q;
        w->kv_cap = cap;
    }
    if (n) memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
    return 0;
}
static int put_u32(av_gguf_writer *w, uint32_t v) { return put(w, &v, 4); }
static int put_u64(av_gguf_writer *w, uint64_t v) { return put(w, &v, 8); }
static int put_str(av_gguf_writer *w, const char *s, size_t len) { return put_u64(w, len) || put(w, s, len); }

static size_t scalar_size(int type) {
    switch (type) {
    case AV_GGUF_U8: case AV_GGUF_I8: case AV_GGUF_BOOL: return 1;
    case AV_GGUF_U16: case AV_GGUF_I16: return 2;
    case AV_GGUF_U32: case AV_GGUF_I32: case AV_GGUF_F32: return 4;
    case AV_GGUF_U64: case AV_GGUF_I64: case AV_GGUF_F64: return 8;
    default: return 0;
    }
}

static av_status done(av_gguf_writer *w, const char *key) {
    if (w->failed) return av_fail(AV_ERR_NOMEM, "GGUF writer: out of memory adding '%s'", key);
    w->n_kv++;
    return AV_OK;
}

av_status av_gguf_w_scalar(av_gguf_writer *w, const char *key, int type, const void *val) {
    size_t sz = scalar_size(type);
    if (!sz) return av_fail(AV_ERR_ARG, "GGUF writer: '%s': value type %d is not a scalar", key, type);
    put_str(w, key, strlen(key));
    put_u32(w, (uint32_t)type);
    put(w, val, sz);
    return done(w, key);
}
av_status av_gguf_w_u32(av_gguf_writer *w, const char *key, uint32_t v) { return av_gguf_w_scalar(w, key, AV_GGUF_U32, &v); }
av_status av_gguf_w_f32(av_gguf_writer *w, const char *key, float v) { return av_gguf_w_scalar(w, key, AV_GGUF_F32, &v); }
av_status av_gguf_w_bool(av_gguf_writer *w, const char *key, int v) {
    uint8_t b = v != 0;
    return av_gguf_w_scalar(w, key, AV_GGUF_BOOL, &b);
}

av_status av_gguf_w_str(av_gguf_writer *w, const char *key, const char *s, size_t len) {
    put_str(w, key, strlen(key));
    put_u32(w, AV_GGUF_STR);
    put_str(w, s, len);
    return done(w, key);
}

av_status av_gguf_w_arr(av_gguf_writer *w, const char *key, int type, const void *vals, uint64_t n) {
    size_t sz = scalar_size(type);
    if (!sz) return av_fail(AV_ERR_ARG, "GGUF writer: '%s': element type %d is not numeric", key, type);
    put_str(w, key, strlen(key));
    put_u32(w, AV_GGUF_ARR);
    put_u32(w, (uint32_t)type);
    put_u64(w, n);
    put(w, vals, (size_t)n * sz);
    return done(w, key);
}

av_status av_gguf_w_arr_str(av_gguf_writer *w, const char *key, const char *const *strs, const size_t *lens, uint64_t n) {
    put_str(w, key, strlen(key));
    put_u32(w, AV_GGUF_ARR);
    put_u32(w, AV_GGUF_STR);
    put_u64(w, n);
    for (uint64_t i = 0; i < n && !w->failed; i++) put_str(w, strs[i], lens[i]);
    return done(w, key);
}

av_status av_gguf_w_tensor(av_gguf_writer *w, const char *name, int ggml_type, int ndim, const int64_t *ne, const void *data,
                           size_t nbytes) {
    int bs = av_ggml_block_size(ggml_type), ts = av_ggml_type_size(ggml_type);
    if (!bs || ndim < 1 || ndim > 4) return av_fail(AV_ERR_ARG, "GGUF writer: '%s': bad type %d or %d dimensions", name, ggml_type, ndim);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (ne[i] < 1) return av_fail(AV_ERR_ARG, "GGUF writer: '%s': extent %d is %lld", name, i, (long long)ne[i]);
        n *= ne[i];
    }
    if (ne[0] % bs || (size_t)(n / bs) * (size_t)ts != nbytes)
        return av_fail(AV_ERR_SHAPE, "GGUF writer: '%s': %zu bytes do not hold %lld values of %s", name, nbytes, (long long)n,
                       av_ggml_type_name(ggml_type));
    for (int i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name)) return av_fail(AV_ERR_ARG, "GGUF writer: tensor '%s' added twice", name);
    if (w->n_t == w->cap_t) {
        int cap = w->cap_t ? w->cap_t * 2 : 64;
        struct av_gguf_wt *t = realloc(w->t, (size_t)cap * sizeof *t);
        if (!t) return av_fail(AV_ERR_NOMEM, "GGUF writer: out of memory");
        w->t = t;
        w->cap_t = cap;
    }
    struct av_gguf_wt *e = &w->t[w->n_t];
    memset(e, 0, sizeof *e);
    if (!(e->name = malloc(strlen(name) + 1))) return av_fail(AV_ERR_NOMEM, "GGUF writer: out of memory");
    strcpy(e->name, name);
    e->type = ggml_type;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->ne[i] = ne[i];
    e->data = data;
    e->nbytes = nbytes;
    w->n_t++;
    return AV_OK;
}

static size_t pad(size_t x) { return (x + ALIGN - 1) / ALIGN * ALIGN; }

av_status av_gguf_writer_write(const av_gguf_writer *w, const char *path) {
    if (w->failed) return av_fail(AV_ERR_NOMEM, "%s: out of memory building the GGUF metadata", path);
    /* header and tensor infos in one buffer (a writer of its own) */
    av_gguf_writer h;
    av_gguf_writer_init(&h);
    put(&h, "GGUF", 4);
    put_u32(&h, 3);
    put_u64(&h, (uint64_t)w->n_t);
    put_u64(&h, w->n_kv);
    put(&h, w->kv, w->kv_len);
    size_t off = 0;
    for (int i = 0; i < w->n_t; i++) {
        const struct av_gguf_wt *e = &w->t[i];
        put_str(&h, e->name, strlen(e->name));
        put_u32(&h, (uint32_t)e->ndim);
        for (int d = 0; d < e->ndim; d++) put_u64(&h, (uint64_t)e->ne[d]);
        put_u32(&h, (uint32_t)e->type);
        put_u64(&h, off);
        off = pad(off + e->nbytes);
    }
    static const uint8_t zeros[ALIGN];
    put(&h, zeros, pad(h.kv_len) - h.kv_len);
    if (h.failed) {
        av_gguf_writer_free(&h);
        return av_fail(AV_ERR_NOMEM, "%s: out of memory building the GGUF header", path);
    }
    av_atomic_file a;
    av_status st = av_atomic_open(&a, path);
    if (st != AV_OK) {
        av_gguf_writer_free(&h);
        return st;
    }
    int ok = fwrite(h.kv, 1, h.kv_len, a.f) == h.kv_len;
    av_gguf_writer_free(&h);
    for (int i = 0; ok && i < w->n_t; i++) {
        size_t nb = w->t[i].nbytes, p = pad(nb) - nb;
        ok = fwrite(w->t[i].data, 1, nb, a.f) == nb && (!p || fwrite(zeros, 1, p, a.f) == p);
    }
    if (!ok) {
        av_atomic_abort(&a);
        return av_fail(AV_ERR_IO, "%s: write failed", path);
    }
    return av_atomic_commit(&a);
}
