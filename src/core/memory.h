/* Files and memory: read-only mmap of files, whole-file reads, atomic file writes (temp + rename),
 * checked allocation. The public file helpers and peak memory reporting (av_file_read, av_path_join,
 * av_write_file_atomic, av_mem_peak_rss, ...) are declared in include/anvil.h. */
#ifndef AV_MEMORY_H
#define AV_MEMORY_H
#include <stddef.h>
#include <stdio.h>
#include <sys/types.h>
#include <time.h>
#include "core/status.h"

typedef struct {
    void *data;
    size_t size;
    dev_t dev; /* the mapped file's identity when it was opened (av_file_map) */
    ino_t ino;
    struct timespec mtime;
} av_mapped_file;

av_status av_file_map(av_mapped_file *m, const char *path);   /* read-only, private */
void av_file_unmap(av_mapped_file *m);

/* Atomic writer: writes go to "<path>.tmp.<pid>", av_atomic_commit renames over `path`. */
typedef struct {
    FILE *f;
    char path[4096];
    char tmp[4200];
} av_atomic_file;
av_status av_atomic_open(av_atomic_file *a, const char *path);
av_status av_atomic_commit(av_atomic_file *a); /* fflush+fsync+close+rename+fsync of the directory */
/* fsyncs the directory that holds path (after a rename into it); -1 if it cannot be opened or synced. */
int av_fsync_parent(const char *path);
void av_atomic_abort(av_atomic_file *a);       /* close + unlink temp */

/* av_remove_tree: include/anvil.h */
/* Publishes the finished temp directory tmp as dir: one rename when dir does not exist, else file by
 * file (each rename atomic; other files of dir stay), then tmp is removed. */
av_status av_dir_publish(const char *tmp, const char *dir);

/* Checked allocation: NULL + av_fail(AV_ERR_NOMEM) on failure. 64-byte aligned. */
void *av_alloc(size_t bytes, const char *what);
void *av_calloc(size_t bytes, const char *what);
void av_free(void *p);
/* Anonymous memory in transparent huge pages where the kernel has them (THP "madvise" included), 2 MB
 * aligned, counted with av_alloc's; NULL (no error set) when it cannot be had. Free with av_free_huge. */
void *av_alloc_huge(size_t bytes);
void av_free_huge(void *p, size_t bytes);
/* Registers the calling thread's static _Thread_local scratch pointer *slot: freed (and set to NULL)
 * when the thread ends (core/thread_scratch.c). */
void av_thread_scratch_track(void **slot);

#endif
