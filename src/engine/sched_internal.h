/* The continuous-batching scheduler's state (engine/scheduler.c runs the loop and the public calls,
 * engine/sched_slot.c what happens to one slot: admission with the prefix match, sampling, stops,
 * log-probabilities, finishing). One mutex guards the queue and the slots' bookkeeping; each request
 * has its own mutex and condition for the output its client polls. */
#ifndef AV_SCHED_INTERNAL_H
#define AV_SCHED_INTERNAL_H
#include "engine/sampler.h"
#include "engine/stops.h"
#include "model/batch.h"
#include <pthread.h>
#include <stdatomic.h>

struct av_sched_req {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;                    /* client + engine */
    atomic_int cancel;
    av_sched *s;
    /* input (owned copies) */
    int32_t *prompt;
    int n_prompt;
    av_sched_params p;
    char *stop_buf[AV_MAX_STOPS];
    int32_t *bias_ids;
    float *bias;
    double deadline;             /* av_now() seconds; 0 = none */
    av_sched_req *next;          /* queue link */
    /* output (under mu) */
    char *out;
    size_t out_len, out_cap;
    av_token_logprob *lp;
    int n_lp, lp_cap;
    int done;
    const char *finish;
    int cached, n_gen;
    char error[256];
};

enum { AV_SLOT_FREE = 0, AV_SLOT_PREFILL, AV_SLOT_DECODE };

typedef struct {
    int state;
    av_sched_req *req;
    int32_t *tok;                /* [ctx]: tok[0..n_kv) have K/V in the slot's region */
    int n_kv;
    int n_done;                  /* prompt tokens processed (cached ones included) */
    int max_new;
    int32_t next;                /* DECODE: the token fed at the next step (position n_kv) */
    av_sampler smp;
    av_stops stops;
    int stops_on;
    long long admitted;          /* admission order: prefill goes first-come first-served */
} av_slot;

/* Saved prefixes (engine/prefix_store.c): tokens + K/V rows [n_layers][n][kv_dim] (K, then V) in
 * the backend's memory. */
#define AV_PREFIX_MIN 16 /* shorter prefixes are not worth saving */
typedef struct {
    int32_t *tok;
    int n;
    float *kv;
    size_t bytes;
    double used;
} av_prefix_entry;
typedef struct {
    av_prefix_entry *e;
    int n, cap;
    size_t bytes, limit;
    long long saves, hits, evictions;
    const av_backend *be; /* where the K/V rows live (the model's) */
} av_prefix_store;
void av_prefix_store_free(av_prefix_store *ps);
/* The entry sharing the longest prefix with prompt[0..n-1) (-1: none), that length in *common. */
int av_prefix_store_match(av_prefix_store *ps, const int32_t *prompt, int n, int *common);
/* Saves slot's rows [0, n) (tokens tok) unless held already; evicts least recently used entries. */
av_status av_prefix_store_put(av_prefix_store *ps, av_batch_session *b, int slot, const int32_t *tok, int n);
/* Copies entry k's rows [0, n) into slot. */
av_status av_prefix_store_restore(av_prefix_store *ps, int k, av_batch_session *b, int slot, int n);

struct av_sched {
    av_model *m;
    const av_tokenizer *tok;
    av_sched_opts o;
    av_batch_session *b;
    av_slot *slots;
    float *logits;               /* host [n_slots, V] */
    int logits_pinned;           /* logits from the backend's host_alloc (host_free), else malloc */
    float *lp_tmp;               /* host [V]: log-softmax scratch */
    int32_t *ids, *pos;          /* host [n_slots] */
    int32_t *greedy_ids;         /* host [n_slots]: a device-sampled step's tokens */
    int can_greedy;              /* the batch session can take argmax tokens on the device */
    pthread_t thread;
    int thread_on;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    av_sched_req *qhead, *qtail;
    int stopping, refuse;
    int warmed;                  /* the engine ran its warm-up passes (scheduler.c warm_up) */
    long long n_admitted;
    av_prefix_store store;
    av_sched_stats st;
};

/* sched_slot.c */
/* Index of the free slot for prompt (longest cached prefix, then the lowest index), or -1;
 * *common receives the reusable prefix length. */
int av_sched_pick_slot(av_sched *s, const int32_t *prompt, int n, int *common);
/* Puts r into slot i, reusing `common` cached tokens. Under s->mu. */
av_status av_sched_admit(av_sched *s, int i, av_sched_req *r, int common);
/* One sampled token for slot i from logits (host [V], modified). Sets the slot free when it ends. */
av_status av_sched_take_token(av_sched *s, int i, float *logits);
/* Slot i's request takes plain argmax tokens (the step may sample it on the device). */
int av_sched_slot_greedy(const av_sched *s, int i);
/* Slot i's sampled token id: EOS, stop strings, length, then the next step's input. */
av_status av_sched_take_id(av_sched *s, int i, int32_t id);
/* Ends slot i's request ("stop", "length", "cancelled", "timeout", "error" with msg). */
void av_sched_finish(av_sched *s, int i, const char *finish, const char *msg);
/* Drops one reference (frees r at zero). */
void av_sched_req_unref(av_sched_req *r);
/* Marks a request that never got a slot as over (queue cancel / timeout / refusal). */
void av_sched_req_end(av_sched_req *r, const char *finish, const char *msg);
#endif
