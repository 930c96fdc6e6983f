/* A weight file's copy in huge pages, shared within the process (weights_huge.c). */
#ifndef AV_WEIGHTS_HUGE_H
#define AV_WEIGHTS_HUGE_H
#include "core/memory.h"

typedef struct av_host_copy av_host_copy;
/* The bytes of the file at path (mapped at f) in huge-page memory: a new copy, or the one another live
 * model of this process made of the same file (same device, inode, size, mtime). NULL when it cannot be
 * had (the caller keeps reading the mapping); *h receives the handle for av_host_copy_put. */
char *av_host_copy_get(const char *path, const av_mapped_file *f, av_host_copy **h);
void av_host_copy_put(av_host_copy *h);
#endif
