/* GGUF (v2, v3, little-endian) reader over a read-only mapping: header, key/value metadata of every
 * value type (arrays and strings included), tensor infos and the aligned data section, with every
 * count, length and offset checked. Knows nothing about models: names and values only. */
#ifndef AV_GGUF_H
#define AV_GGUF_H
#include <stdint.h>
#include "core/memory.h"
#include "core/status.h"

enum {
    AV_GGUF_U8 = 0, AV_GGUF_I8, AV_GGUF_U16, AV_GGUF_I16, AV_GGUF_U32, AV_GGUF_I32, AV_GGUF_F32, AV_GGUF_BOOL,
    AV_GGUF_STR, AV_GGUF_ARR, AV_GGUF_U64, AV_GGUF_I64, AV_GGUF_F64, AV_GGUF_VTYPE_COUNT
};

/* ggml tensor types the reader knows the block layout of (ids as in the GGUF specification). */
enum {
    AV_GGML_F32 = 0, AV_GGML_F16 = 1, AV_GGML_Q4_0 = 2, AV_GGML_Q4_1 = 3, AV_GGML_Q5_0 = 6, AV_GGML_Q5_1 = 7,
    AV_GGML_Q8_0 = 8, AV_GGML_Q8_1 = 9, AV_GGML_Q2_K = 10, AV_GGML_Q3_K = 11, AV_GGML_Q4_K = 12, AV_GGML_Q5_K = 13,
    AV_GGML_Q6_K = 14, AV_GGML_Q8_K = 15, AV_GGML_BF16 = 30, AV_GGML_TYPE_COUNT = 43
};
/* Elements per block and bytes per block of a ggml type; 0 when the id is unknown. */
int av_ggml_block_size(int type);
int av_ggml_type_size(int type);
const char *av_ggml_type_name(int type); /* "Q4_0", ... or "?" */

typedef struct {
    const char *key;        /* NUL-terminated copy */
    int type;               /* AV_GGUF_* */
    int arr_type;           /* element type of an array */
    uint64_t n;             /* array length (1 for scalars) */
    const uint8_t *p;       /* the value (first element of an array) inside the mapping */
    uint64_t len;           /* string length (type STR) */
    const uint8_t **strs;   /* array of strings: where each element's u64 length sits */
} av_gguf_kv;

typedef struct {
    const char *name;       /* NUL-terminated copy */
    int type;               /* AV_GGML_* */
    int ndim;
    int64_t ne[4];          /* ne[0] varies fastest (columns) */
    uint64_t offset;        /* from the start of the data section */
    const void *data;
    size_t nbytes;
} av_gguf_tensor;

typedef struct {
    char path[4096];
    av_mapped_file map;
    uint32_t version, alignment;
    int n_kv, n_tensors;
    av_gguf_kv *kv;
    av_gguf_tensor *tensors;
    char *names;            /* key and tensor name copies */
    int borrowed;           /* map is the caller's buffer (av_gguf_open_mem): not unmapped */
} av_gguf_file;

/* 1 when path is a regular file that starts with the GGUF magic. */
int av_gguf_is_file(const char *path);
av_status av_gguf_open(av_gguf_file *f, const char *path);
/* The same parser over a caller's buffer (which must outlive f; names and data point into it);
 * `name` stands for the path in errors. */
av_status av_gguf_open_mem(av_gguf_file *f, const void *data, size_t size, const char *name);
void av_gguf_close(av_gguf_file *f);

const av_gguf_kv *av_gguf_find(const av_gguf_file *f, const char *key);
const av_gguf_tensor *av_gguf_tensor_find(const av_gguf_file *f, const char *name);
int64_t av_gguf_numel(const av_gguf_tensor *t);

/* Typed getters. An absent key leaves *out alone and returns AV_OK (so callers preset defaults);
 * a present key of the wrong type fails naming file and key. Integers accept any integer type in
 * range; floats accept floats and integers. */
av_status av_gguf_get_i64(const av_gguf_file *f, const char *key, int64_t *out);
av_status av_gguf_get_int(const av_gguf_file *f, const char *key, int lo, int hi, int *out);
av_status av_gguf_get_f64(const av_gguf_file *f, const char *key, double *out);
av_status av_gguf_get_bool(const av_gguf_file *f, const char *key, int *out);
/* *out: malloc'd NUL-terminated copy (NULL stays NULL when absent). */
av_status av_gguf_get_str(const av_gguf_file *f, const char *key, char **out);
/* An array of element type in `types` (a NULL-terminated list is overkill: one or two accepted types). */
av_status av_gguf_get_arr(const av_gguf_file *f, const char *key, int t1, int t2, const av_gguf_kv **out);

/* Element i of an array: a number of any numeric type as double / int64, a string (not terminated). */
double av_gguf_arr_f64(const av_gguf_kv *kv, uint64_t i);
int64_t av_gguf_arr_i64(const av_gguf_kv *kv, uint64_t i);
const char *av_gguf_arr_str(const av_gguf_kv *kv, uint64_t i, size_t *len);

#endif
