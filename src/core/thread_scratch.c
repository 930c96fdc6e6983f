/* Per-thread scratch buffers (static _Thread_local pointers in the ops) freed when their thread
 * ends: threads that come and go (data-parallel workers and their OpenMP teams) would otherwise
 * leave them behind. A pthread key's destructor frees every slot the thread registered. */
#include "core/memory.h"
#include <pthread.h>
#include <stdlib.h>

#define MAX_SLOTS 32
static pthread_key_t g_key;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static _Thread_local void **t_slots[MAX_SLOTS];
static _Thread_local int t_n;

static void release(void *unused) {
    (void)unused;
    for (int i = 0; i < t_n; i++) {
        free(*t_slots[i]);
        *t_slots[i] = NULL;
    }
    t_n = 0;
}

static void make_key(void) { pthread_key_create(&g_key, release); }

void av_thread_scratch_track(void **slot) {
    for (int i = 0; i < t_n; i++)
        if (t_slots[i] == slot) return;
    if (t_n == MAX_SLOTS) return; /* never: the ops have fewer */
    pthread_once(&g_once, make_key);
    if (!t_n) pthread_setspecific(g_key, (void *)1); /* non-NULL: the destructor runs at thread exit */
    t_slots[t_n++] = slot;
}
