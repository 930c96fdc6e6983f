/* CPU weights in huge pages: a copy of a mapped weight file in transparent huge pages, shared by every
 * model of the process loaded from the same file (the CPU data-parallel workers each load one). Decode
 * streams every weight each token; from a file mapping in 4 KB pages it ran 2-18% slower than from huge
 * pages (bf16 and 4-bit TinyLlama, 2 threads, bench/NOTES-cpu.md). */
#include "model/weights_huge.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct av_host_copy {
    dev_t dev;
    ino_t ino;
    struct timespec mtime;
    size_t bytes;
    char *data;
    int refs;
    struct av_host_copy *next;
};
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct av_host_copy *g_copies;

static int same_file(const struct av_host_copy *h, const av_mapped_file *f) {
    return h->dev == f->dev && h->ino == f->ino && h->bytes == f->size && h->mtime.tv_sec == f->mtime.tv_sec && h->mtime.tv_nsec == f->mtime.tv_nsec;
}

/* f's bytes into huge pages, 2 MB at a time on every thread; each piece of the file mapping is released
 * from this process as soon as it is copied (the page cache keeps it), so the copy does not double the
 * resident size. */
static void copy_release(char *dst, const av_mapped_file *f) {
    const size_t chunk = (size_t)2 << 20, n = (f->size + chunk - 1) / chunk;
    char *src = f->data;
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < n; c++) {
        size_t len = c + 1 < n ? chunk : f->size - c * chunk;
        memcpy(dst + c * chunk, src + c * chunk, len);
        madvise(src + c * chunk, len, MADV_DONTNEED);
    }
}

char *av_host_copy_get(const av_mapped_file *f, av_host_copy **out) {
    pthread_mutex_lock(&g_lock);
    struct av_host_copy *h = g_copies;
    while (h && !same_file(h, f)) h = h->next;
    if (h) {
        h->refs++;
    } else if ((h = calloc(1, sizeof *h)) && (h->data = av_alloc_huge(f->size))) {
        copy_release(h->data, f);
        h->dev = f->dev, h->ino = f->ino, h->mtime = f->mtime, h->bytes = f->size, h->refs = 1;
        h->next = g_copies;
        g_copies = h;
    } else {
        free(h);
        h = NULL;
    }
    pthread_mutex_unlock(&g_lock);
    *out = h;
    return h ? h->data : NULL;
}

void av_host_copy_put(av_host_copy *h) {
    if (!h) return;
    pthread_mutex_lock(&g_lock);
    if (--h->refs == 0) {
        struct av_host_copy **p = &g_copies;
        while (*p != h) p = &(*p)->next;
        *p = h->next;
        av_free_huge(h->data, h->bytes);
        free(h);
    }
    pthread_mutex_unlock(&g_lock);
}
