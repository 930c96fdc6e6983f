/* Files and memory: read-only mmap of files, whole-file reads, atomic file writes (temp + rename),
 * checked allocation, and peak memory reporting. */
#ifndef AV_MEMORY_H
#define AV_MEMORY_H
#include <stddef.h>
#include <stdio.h>
#include "core/status.h"

typedef struct {
    void *data;
    size_t size;
} av_mapped_file;

av_status av_file_map(av_mapped_file *m, const char *path);   /* read-only, private */
void av_file_unmap(av_mapped_file *m);
/* Reads a whole file into a malloc'd NUL-terminated buffer. */
av_status av_file_read(const char *path, char **out, size_t *len);
int av_file_exists(const char *path);
int av_dir_exists(const char *path);
/* mkdir -p: creates dir and its missing parents. */
av_status av_mkdir_p(const char *dir);
/* path_join into buf; returns buf. */
char *av_path_join(char *buf, size_t cap, const char *dir, const char *name);

/* Atomic writer: writes go to "<path>.tmp.<pid>", av_atomic_commit renames over `path`. */
typedef struct {
    FILE *f;
    char path[4096];
    char tmp[4200];
} av_atomic_file;
av_status av_atomic_open(av_atomic_file *a, const char *path);
av_status av_atomic_commit(av_atomic_file *a); /* fflush+fsync+close+rename */
void av_atomic_abort(av_atomic_file *a);       /* close + unlink temp */
av_status av_write_file_atomic(const char *path, const void *data, size_t len);

/* Checked allocation: NULL + av_fail(AV_ERR_NOMEM) on failure. 64-byte aligned. */
void *av_alloc(size_t bytes, const char *what);
void *av_calloc(size_t bytes, const char *what);
void av_free(void *p);

/* Peak resident memory of the process in bytes (VmHWM) and current (VmRSS). */
size_t av_mem_peak_rss(void);
size_t av_mem_current_rss(void);
/* Peak bytes allocated through av_alloc (host heap planned by anvil). */
size_t av_mem_peak_alloc(void);

#endif
