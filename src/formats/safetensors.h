/* safetensors: mmap'd reader (single file or HF shards via index.json) with every size and offset
 * checked, and an atomic writer. Knows nothing about models. */
#ifndef AV_SAFETENSORS_H
#define AV_SAFETENSORS_H
#include <stdint.h>
#include "core/dtype.h"
#include "core/memory.h"

#define AV_MAX_DIMS 8

typedef struct {
    char *name;
    av_dtype dtype;
    int ndim;
    int64_t shape[AV_MAX_DIMS];
    const void *data; /* points into the mapping */
    size_t nbytes;
    const char *file; /* path of the file holding it */
} av_st_tensor;

typedef struct {
    char path[4096];
    av_mapped_file map;
    int n;
    av_st_tensor *tensors;
    char *metadata_json; /* the "__metadata__" object as JSON text, or NULL */
    int borrowed;        /* map is the caller's buffer (av_st_open_mem): not unmapped */
} av_st_file;

av_status av_st_open(av_st_file *f, const char *path);
/* The same parser over a caller's buffer (which must outlive f); `name` stands for the path in errors. */
av_status av_st_open_mem(av_st_file *f, const void *data, size_t size, const char *name);
void av_st_close(av_st_file *f);
const av_st_tensor *av_st_find(const av_st_file *f, const char *name);
int64_t av_st_numel(const av_st_tensor *t);

/* A set of files (one model): model.safetensors, or the shards named by model.safetensors.index.json. */
typedef struct {
    int nfiles;
    av_st_file *files;
} av_st_set;
av_status av_st_set_open_dir(av_st_set *s, const char *dir);
av_status av_st_set_open_file(av_st_set *s, const char *path);
void av_st_set_close(av_st_set *s);
const av_st_tensor *av_st_set_find(const av_st_set *s, const char *name);
int av_st_set_count(const av_st_set *s);
const av_st_tensor *av_st_set_at(const av_st_set *s, int i);

/* Writer: add tensors (data is copied at write time, not at add time), then write atomically. */
typedef struct {
    int n, cap;
    struct av_st_entry { char *name; av_dtype dtype; int ndim; int64_t shape[AV_MAX_DIMS]; const void *data; } *e;
    char *metadata_json; /* optional JSON object of string->string */
} av_st_writer;
void av_st_writer_init(av_st_writer *w);
av_status av_st_writer_add(av_st_writer *w, const char *name, av_dtype dt, int ndim, const int64_t *shape, const void *data);
av_status av_st_writer_set_metadata(av_st_writer *w, const char *json_object);
av_status av_st_writer_write(av_st_writer *w, const char *path); /* temp file + rename */
void av_st_writer_free(av_st_writer *w);

#endif
