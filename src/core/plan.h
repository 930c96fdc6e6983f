/* Memory planning: a table of named sizes (each entry the address of the pointer it will set)
 * committed as ONE allocation of the caller's allocator and carved into aligned pieces. Sessions,
 * batched decode and training plan their buffers this way; the plan's total is the bytes they hold. */
#ifndef AV_PLAN_H
#define AV_PLAN_H
#include <stddef.h>
#include "core/status.h"

#define AV_PLAN_ALIGN 256 /* every piece starts on this boundary (vector loads, tensor-core tiles) */

typedef struct {
    void **slot;  /* receives the piece's address on commit */
    size_t bytes;
} av_plan_entry;

typedef struct {
    av_plan_entry *e;
    int n, cap;
    size_t total;  /* bytes of the committed allocation (0 before commit) */
    void *base;
    int failed;    /* an add ran out of host memory: commit fails */
} av_plan;

void av_plan_init(av_plan *p);
/* Adds a piece of `bytes` (0 is allowed: a 1-element piece) whose address goes to *slot. */
void av_plan_add(av_plan *p, void *slot, size_t bytes);
/* Floats / int32s, the common cases. */
#define av_plan_floats(p, slot, n) av_plan_add((p), (slot), (size_t)(n) * sizeof(float))
/* Bytes av_plan_commit would allocate (SIZE_MAX if the sizes overflow). */
size_t av_plan_bytes(const av_plan *p);
/* One allocation of every piece: alloc(total, what) (NULL: out of memory, already recorded by the
 * allocator); sets every slot. */
av_status av_plan_commit(av_plan *p, void *(*alloc)(size_t bytes, const char *what), const char *what);
/* Releases the allocation (free(base)) and the table. Slots are left dangling. */
void av_plan_release(av_plan *p, void (*free_fn)(void *));

#endif
