/* A weight file's copy in huge pages, shared within the process (weights_huge.c). */
#ifndef AV_WEIGHTS_HUGE_H
#define AV_WEIGHTS_HUGE_H
#include "core/memory.h"

typedef struct av_host_copy av_host_copy;
/* The bytes of the mapped file f in huge-page memory: a new copy, or the one another live model of this
 * process made of the same file (same device, inode, size and mtime when mapped). NULL when it cannot be
 * had (the caller keeps reading the mapping); *h receives the handle for av_host_copy_put. */
char *av_host_copy_get(const av_mapped_file *f, av_host_copy **h);
void av_host_copy_put(av_host_copy *h);
#endif
