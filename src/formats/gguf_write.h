/* GGUF (v3, little-endian) writer: key/value metadata of every value type (strings and arrays
 * included), tensor infos, the data section aligned to general.alignment (32), written atomically
 * (temp file + rename). Keys and values are copied when added; tensor data is read at write time. */
#ifndef AV_GGUF_WRITE_H
#define AV_GGUF_WRITE_H
#include <stddef.h>
#include <stdint.h>
#include "core/status.h"

typedef struct {
    uint8_t *kv;          /* serialized key/value pairs */
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    struct av_gguf_wt { char *name; int type, ndim; int64_t ne[4]; const void *data; size_t nbytes; } *t;
    int n_t, cap_t;
    int failed;           /* an add ran out of memory: write fails */
} av_gguf_writer;

void av_gguf_writer_init(av_gguf_writer *w);
void av_gguf_writer_free(av_gguf_writer *w);
/* Scalars: type is AV_GGUF_U8 .. AV_GGUF_F64 except STR/ARR; val points at a value of that type. */
av_status av_gguf_w_scalar(av_gguf_writer *w, const char *key, int type, const void *val);
av_status av_gguf_w_u32(av_gguf_writer *w, const char *key, uint32_t v);
av_status av_gguf_w_f32(av_gguf_writer *w, const char *key, float v);
av_status av_gguf_w_bool(av_gguf_writer *w, const char *key, int v);
av_status av_gguf_w_str(av_gguf_writer *w, const char *key, const char *s, size_t len);
/* Array of n numbers of element type `type` (vals packed as that type). */
av_status av_gguf_w_arr(av_gguf_writer *w, const char *key, int type, const void *vals, uint64_t n);
/* Array of n strings (lens[i] bytes each). */
av_status av_gguf_w_arr_str(av_gguf_writer *w, const char *key, const char *const *strs, const size_t *lens, uint64_t n);
/* A tensor: ne[0] varies fastest; nbytes must equal what the ggml type needs for ne. data must
 * stay valid until av_gguf_writer_write. */
av_status av_gguf_w_tensor(av_gguf_writer *w, const char *name, int ggml_type, int ndim, const int64_t *ne, const void *data,
                           size_t nbytes);
av_status av_gguf_writer_write(const av_gguf_writer *w, const char *path);

#endif
