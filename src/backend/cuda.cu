/* CUDA backend: device detection, the one stream and cuBLAS handle, device memory through one
 * arena over plain cudaMalloc (shared 64 MiB chunks carved first-fit, big buffers in their own
 * chunk; peak = most device bytes held), grow-only scratch, CUDA-graph capture hooks, and the op
 * table filled from the .cu twins of the ops (two tables: bf16 tensor-core GEMMs, or exact f32).
 * Several GPUs: the stream, handles, scratch and pinned buffers belong to the calling thread (one
 * thread drives one device: av_cuda_set_device), and arena chunks are carved only on their own device. */
#include "backend/cuda_common.cuh"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
extern "C" {
#include "backend/backend.h"
#include "backend/cuda.h"
#include "attention/attention.h"
}

/* ---------------------------------------------------------------- errors */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_failed;

extern "C" int av_cuda_note(cudaError_t e, const char *where) {
    if (e == cudaSuccess) return 0;
    if (!g_failed) {
        g_failed = 1;
        av_fail(AV_ERR_DEVICE, "cuda: %s: %s", where, cudaGetErrorString(e));
    }
    return 1;
}
extern "C" int av_cuda_note_blas(cublasStatus_t s, const char *where) {
    if (s == CUBLAS_STATUS_SUCCESS) return 0;
    if (!g_failed) {
        g_failed = 1;
        av_fail(AV_ERR_DEVICE, "cublas: %s: status %d", where, (int)s);
    }
    return 1;
}
extern "C" av_status av_cuda_status(void) {
    av_cuda_note(cudaGetLastError(), "kernel");
    return g_failed ? AV_ERR_DEVICE : AV_OK;
}

/* ---------------------------------------------------------------- arena */
#define CHUNK_BYTES ((size_t)64 << 20)
#define ALIGN 256

typedef struct blk {
    char *p;
    size_t n;
    int free;
    struct blk *next; /* address order within the chunk */
} blk;
typedef struct chunk {
    char *base;
    size_t n;
    int dedicated;
    int device; /* the GPU the chunk lives on: carved only for work on that device */
    blk *blocks;
    struct chunk *next;
} chunk;

static chunk *g_chunks;
#define MAX_DEV 64
static size_t g_held[MAX_DEV], g_peak[MAX_DEV]; /* per GPU (index clamped for the unlikely 65th) */
static int dev_index(int dev) { return dev >= 0 && dev < MAX_DEV ? dev : MAX_DEV - 1; }
static int cur_dev(void) {
    int dev = 0;
    cudaGetDevice(&dev);
    return dev_index(dev);
}

static void held_add(long long d, int dev) {
    int i = dev_index(dev);
    g_held[i] = (size_t)((long long)g_held[i] + d);
    if (g_held[i] > g_peak[i]) g_peak[i] = g_held[i];
}

static chunk *chunk_new(size_t n, int dedicated, int dev) {
    void *p = NULL;
    if (cudaMalloc(&p, n) != cudaSuccess) {
        cudaGetLastError();
        return NULL;
    }
    chunk *c = (chunk *)calloc(1, sizeof *c);
    blk *b = (blk *)calloc(1, sizeof *b);
    if (!c || !b) { cudaFree(p); free(c); free(b); return NULL; }
    c->base = (char *)p;
    c->n = n;
    c->dedicated = dedicated;
    c->device = dev;
    b->p = c->base;
    b->n = n;
    b->free = 1;
    c->blocks = b;
    c->next = g_chunks;
    g_chunks = c;
    held_add((long long)n, dev);
    return c;
}

static void *carve(chunk *c, size_t n) {
    for (blk *b = c->blocks; b; b = b->next) {
        if (!b->free || b->n < n) continue;
        if (b->n > n) {
            blk *r = (blk *)calloc(1, sizeof *r);
            if (!r) return NULL;
            r->p = b->p + n;
            r->n = b->n - n;
            r->free = 1;
            r->next = b->next;
            b->next = r;
            b->n = n;
        }
        b->free = 0;
        return b->p;
    }
    return NULL;
}

static void *arena_alloc(size_t bytes, const char *what) {
    size_t n = (bytes + ALIGN - 1) & ~(size_t)(ALIGN - 1);
    if (!n) n = ALIGN;
    int dev = 0;
    cudaGetDevice(&dev);
    pthread_mutex_lock(&g_mu);
    void *p = NULL;
    if (n >= CHUNK_BYTES / 2) {
        chunk *c = chunk_new((n + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1), 1, dev);
        if (c) p = carve(c, n);
    } else {
        for (chunk *c = g_chunks; c && !p; c = c->next)
            if (!c->dedicated && c->device == dev) p = carve(c, n);
        if (!p) {
            chunk *c = chunk_new(CHUNK_BYTES, 0, dev);
            if (c) p = carve(c, n);
        }
    }
    pthread_mutex_unlock(&g_mu);
    if (!p) {
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        av_fail(AV_ERR_NOMEM, "out of GPU memory allocating %.1f MiB for %s (%.1f MiB free of %.1f MiB)", bytes / 1048576.0,
                what ? what : "buffer", fr / 1048576.0, tot / 1048576.0);
    }
    return p;
}

static void arena_free(void *ptr) {
    if (!ptr) return;
    pthread_mutex_lock(&g_mu);
    chunk *prev = NULL;
    for (chunk *c = g_chunks; c; prev = c, c = c->next) {
        if ((char *)ptr < c->base || (char *)ptr >= c->base + c->n) continue;
        for (blk *b = c->blocks; b; b = b->next) {
            if (b->p != (char *)ptr) continue;
            b->free = 1;
            break;
        }
        /* merge free neighbours */
        for (blk *b = c->blocks; b && b->next;) {
            if (b->free && b->next->free) {
                blk *d = b->next;
                b->n += d->n;
                b->next = d->next;
                free(d);
            } else b = b->next;
        }
        if (c->dedicated && c->blocks->free && !c->blocks->next) {
            cudaStreamSynchronize(av_cuda_stream());
            cudaFree(c->base);
            held_add(-(long long)c->n, c->device);
            free(c->blocks);
            if (prev) prev->next = c->next;
            else g_chunks = c->next;
            free(c);
        }
        break;
    }
    pthread_mutex_unlock(&g_mu);
}

extern "C" size_t av_cuda_held_bytes(void) { return g_held[cur_dev()]; } /* the calling thread's GPU */
static size_t cuda_peak(void) { return g_peak[cur_dev()]; }

/* Device memory still to be had on the calling thread's GPU: the driver's free bytes plus the
 * arena's free blocks there (an upper bound for a plan; what the planner checks before committing).
 * 0 if the driver cannot say. */
static size_t cuda_mem_available(void) {
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) return 0;
    int dev = cur_dev();
    pthread_mutex_lock(&g_mu);
    for (chunk *c = g_chunks; c; c = c->next)
        if (c->device == dev)
            for (blk *b = c->blocks; b; b = b->next)
                if (b->free) fr += b->n;
    pthread_mutex_unlock(&g_mu);
    return fr;
}
extern "C" void av_cuda_reset_peak(void) {
    pthread_mutex_lock(&g_mu);
    g_peak[cur_dev()] = g_held[cur_dev()];
    pthread_mutex_unlock(&g_mu);
}

/* ---------------------------------------------------------------- stream, handles, scratch */
static thread_local cudaStream_t g_stream;
static thread_local cublasHandle_t g_blas;
static thread_local void *g_blas_ws;
static thread_local void *g_scr[AV_SCR_COUNT];
static thread_local size_t g_scr_n[AV_SCR_COUNT];
static thread_local unsigned g_scr_gen;
static thread_local int g_ready = -1; /* -1 unknown, 0 no GPU, 1 ready */
static thread_local int g_pdl;         /* programmatic dependent launch (see cuda_common.cuh) */
/* Small transfers (decode: token ids, positions) go through one pinned buffer: a pageable copy
 * stages through a driver buffer and costs several microseconds more per token. */
#define PIN_BYTES 4096
static thread_local void *g_pin;

extern "C" int av_cuda_pdl(void) { return g_pdl; }

extern "C" cudaStream_t av_cuda_stream(void) { return g_stream; }
extern "C" cublasHandle_t av_cuda_cublas(void) { return g_blas; }
/* cuBLASLt products share cuBLAS's workspace: both run in order on the one stream. */
extern "C" void *av_cuda_blas_workspace(size_t *bytes) {
    *bytes = g_blas_ws ? (size_t)32 << 20 : 0;
    return g_blas_ws;
}
extern "C" unsigned av_cuda_scratch_generation(void) { return g_scr_gen; }

extern "C" void *av_cuda_scratch(int slot, size_t bytes) {
    if (g_scr_n[slot] >= bytes) return g_scr[slot];
    size_t n = bytes + bytes / 4;
    if (g_scr[slot]) arena_free(g_scr[slot]);
    g_scr[slot] = arena_alloc(n, "scratch");
    g_scr_n[slot] = g_scr[slot] ? n : 0;
    g_scr_gen++;
    return g_scr[slot];
}

static int cuda_init(void) {
    if (g_ready >= 0) return g_ready;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        cudaGetLastError();
        av_fail(AV_ERR_DEVICE, "no CUDA GPU found (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        g_ready = 0;
        return 0;
    }
    if (cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking) != cudaSuccess ||
        cublasCreate(&g_blas) != CUBLAS_STATUS_SUCCESS) {
        av_fail(AV_ERR_DEVICE, "cuda: could not create a stream / cuBLAS handle");
        g_ready = 0;
        return 0;
    }
    size_t ws = (size_t)32 << 20; /* av_cuda_blas_workspace reports this size */
    g_blas_ws = arena_alloc(ws, "cuBLAS workspace");
    cublasSetStream(g_blas, g_stream);
    if (g_blas_ws) cublasSetWorkspace(g_blas, g_blas_ws, ws);
    cublasSetMathMode(g_blas, CUBLAS_DEFAULT_MATH);
    if (cudaMallocHost(&g_pin, PIN_BYTES) != cudaSuccess) { /* optional: pageable copies otherwise */
        g_pin = NULL;
        cudaGetLastError();
    }
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess)
        g_pdl = major >= 9;
    g_ready = 1;
    return 1;
}

/* ---------------------------------------------------------------- memory entry points */
static void *cuda_alloc(size_t n, const char *what) { return arena_alloc(n, what); }
static void cuda_upload(void *dst, const void *src, size_t n) {
    if (g_pin && n <= PIN_BYTES) {
        memcpy(g_pin, src, n);
        av_cuda_note(cudaMemcpyAsync(dst, g_pin, n, cudaMemcpyHostToDevice, g_stream), "upload");
    } else {
        av_cuda_note(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, g_stream), "upload");
    }
    av_cuda_note(cudaStreamSynchronize(g_stream), "upload");
}
static void cuda_download(void *dst, const void *src, size_t n) {
    int pin = g_pin && n <= PIN_BYTES;
    av_cuda_note(cudaMemcpyAsync(pin ? g_pin : dst, src, n, cudaMemcpyDeviceToHost, g_stream), "download");
    av_cuda_note(cudaStreamSynchronize(g_stream), "download");
    if (pin) memcpy(dst, g_pin, n);
}
/* Queued small downloads: a ring of pinned slots, each with an event recorded after its copy, so
 * decode can keep the next step queued on the GPU while the host waits for one token's ids. */
#define DL_SLOTS 4
static thread_local void *g_dl_pin[DL_SLOTS];
static thread_local cudaEvent_t g_dl_ev[DL_SLOTS];
static thread_local int g_dl_busy[DL_SLOTS], g_dl_next;
static int cuda_download_begin(const void *src, size_t n) {
    if (n > PIN_BYTES) return -1;
    int s = g_dl_next;
    if (g_dl_busy[s]) return -1;
    if (!g_dl_pin[s]) {
        if (cudaMallocHost(&g_dl_pin[s], PIN_BYTES) != cudaSuccess) { g_dl_pin[s] = NULL; cudaGetLastError(); return -1; }
        if (cudaEventCreateWithFlags(&g_dl_ev[s], cudaEventDisableTiming) != cudaSuccess) {
            cudaFreeHost(g_dl_pin[s]);
            g_dl_pin[s] = NULL;
            cudaGetLastError();
            return -1;
        }
    }
    if ((src && av_cuda_note(cudaMemcpyAsync(g_dl_pin[s], src, n, cudaMemcpyDeviceToHost, g_stream), "download")) ||
        av_cuda_note(cudaEventRecord(g_dl_ev[s], g_stream), "download"))
        return -1;
    g_dl_busy[s] = 1;
    g_dl_next = (s + 1) % DL_SLOTS;
    return s;
}
static void cuda_download_end(int s, void *dst, size_t n) {
    if (s < 0 || s >= DL_SLOTS || !g_dl_busy[s]) return;
    av_cuda_note(cudaEventSynchronize(g_dl_ev[s]), "download");
    if (dst) memcpy(dst, g_dl_pin[s], n);
    g_dl_busy[s] = 0;
}
/* Mapped pinned memory: the decode sampler writes the ids straight into it (no copy queued). */
static void *cuda_host_alloc(size_t n, void **dev) {
    void *h = NULL;
    *dev = NULL;
    if (cudaHostAlloc(&h, n, cudaHostAllocMapped) != cudaSuccess) { cudaGetLastError(); return NULL; }
    if (cudaHostGetDevicePointer(dev, h, 0) != cudaSuccess) { cudaGetLastError(); cudaFreeHost(h); *dev = NULL; return NULL; }
    memset(h, 0, n);
    return h;
}
static void cuda_host_free(void *h) {
    if (h) cudaFreeHost(h);
}
static void cuda_copy(void *dst, const void *src, size_t n) {
    av_cuda_note(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, g_stream), "copy");
}
static void cuda_zero(void *p, size_t n) { av_cuda_note(cudaMemsetAsync(p, 0, n, g_stream), "zero"); }
static void cuda_sync(void) {
    av_cuda_note(cudaStreamSynchronize(g_stream), "sync");
    av_cuda_note(cudaGetLastError(), "kernel");
}

/* ---------------------------------------------------------------- graphs */
typedef struct {
    cudaGraphExec_t exec;
    unsigned gen;
} graph_h;

static int cuda_graph_begin(void) {
    return av_cuda_note(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeThreadLocal), "graph capture") ? -1 : 0;
}
static void *cuda_graph_end(void) {
    cudaGraph_t g = NULL;
    if (av_cuda_note(cudaStreamEndCapture(g_stream, &g), "graph capture")) return NULL;
    graph_h *h = (graph_h *)calloc(1, sizeof *h);
    if (!h || av_cuda_note(cudaGraphInstantiate(&h->exec, g, 0), "graph instantiate")) {
        free(h);
        cudaGraphDestroy(g);
        return NULL;
    }
    cudaGraphDestroy(g);
    h->gen = g_scr_gen;
    return h;
}
static int cuda_graph_launch(void *p) {
    graph_h *h = (graph_h *)p;
    if (h->gen != g_scr_gen) return 1; /* scratch moved since capture: re-capture */
    return av_cuda_note(cudaGraphLaunch(h->exec, g_stream), "graph launch") ? -1 : 0;
}
static void cuda_graph_free(void *p) {
    graph_h *h = (graph_h *)p;
    if (!h) return;
    cudaGraphExecDestroy(h->exec);
    free(h);
}

/* ---------------------------------------------------------------- shutdown */
extern "C" void av_cuda_matmul_release(void);
extern "C" void av_cuda_thread_release(void) {
    if (g_ready != 1) return; /* this thread never used the GPU */
    cudaStreamSynchronize(g_stream);
    av_cuda_matmul_release();
    cublasDestroy(g_blas);
    g_blas = NULL;
    if (g_pin) cudaFreeHost(g_pin);
    g_pin = NULL;
    for (int s = 0; s < DL_SLOTS; s++) {
        if (g_dl_pin[s]) {
            cudaFreeHost(g_dl_pin[s]);
            cudaEventDestroy(g_dl_ev[s]);
        }
        g_dl_pin[s] = NULL;
        g_dl_busy[s] = 0;
    }
    g_dl_next = 0;
    if (g_blas_ws) arena_free(g_blas_ws);
    for (int i = 0; i < AV_SCR_COUNT; i++) {
        if (g_scr[i]) arena_free(g_scr[i]);
        g_scr[i] = NULL;
        g_scr_n[i] = 0;
    }
    g_blas_ws = NULL;
    g_scr_gen++; /* graphs captured before hold dead pointers: they re-capture */
    cudaStreamDestroy(g_stream);
    g_stream = NULL;
    g_ready = -1;
}

extern "C" void av_cuda_shutdown(void) {
    pthread_mutex_lock(&g_mu);
    int any = g_chunks != NULL;
    pthread_mutex_unlock(&g_mu);
    if (g_ready != 1 && !any) return; /* the GPU was never used: the runtime stays untouched */
    if (g_ready == 1) cudaDeviceSynchronize();
    av_cuda_thread_release();
    /* the whole arena, whichever thread carved it (a server's engine thread, data-parallel workers) */
    int cur = 0;
    cudaGetDevice(&cur);
    pthread_mutex_lock(&g_mu);
    while (g_chunks) {
        chunk *c = g_chunks;
        g_chunks = c->next;
        if (c->device != cur) cudaSetDevice(c->device); /* chunks of other GPUs (data-parallel runs) */
        cudaFree(c->base);
        if (c->device != cur) cudaSetDevice(cur);
        held_add(-(long long)c->n, c->device);
        for (blk *b = c->blocks; b;) {
            blk *n = b->next;
            free(b);
            b = n;
        }
        free(c);
    }
    pthread_mutex_unlock(&g_mu);
    cudaGetLastError();
}

/* ---------------------------------------------------------------- tables */
static void mm_fwd_bf16(float *o, const float *x, const av_mat *W, int T) { av_cuda_matmul_forward_mode(o, x, W, T, 0); }
static void mmf_f32(float *o, const float *x, const av_mat *W, int T, const av_gemv_fusion *f) {
    av_cuda_matmul_fused_forward_mode(o, x, W, T, f, 1);
}
static void mmf_bf16(float *o, const float *x, const av_mat *W, int T, const av_gemv_fusion *f) {
    av_cuda_matmul_fused_forward_mode(o, x, W, T, f, 0);
}
static void mm_fwd_f32(float *o, const float *x, const av_mat *W, int T) { av_cuda_matmul_forward_mode(o, x, W, T, 1); }
static void mm_bwd_bf16(float *dx, float *dW, const float *d, const float *x, const av_mat *W, int T) {
    av_cuda_matmul_backward_mode(dx, dW, d, x, W, T, 0);
}
static void mm_bwd_f32(float *dx, float *dW, const float *d, const float *x, const av_mat *W, int T) {
    av_cuda_matmul_backward_mode(dx, dW, d, x, W, T, 1);
}
static double xent_bf16(float *dh, float *nll, const float *h, const av_mat *W, const int32_t *tg, int T, float gs, float *scr, int chunk) {
    return av_cuda_xent_mode(dh, nll, h, W, tg, T, gs, scr, chunk, 0);
}
static double xent_f32(float *dh, float *nll, const float *h, const av_mat *W, const int32_t *tg, int T, float gs, float *scr, int chunk) {
    return av_cuda_xent_mode(dh, nll, h, W, tg, T, gs, scr, chunk, 1);
}
static double xent_dw_bf16(float *dh, float *dW, float *nll, const float *h, const av_mat *W, const int32_t *tg, int T, float gs,
                           float *scr, int chunk) {
    return av_cuda_xent_dw_mode(dh, dW, nll, h, W, tg, T, gs, scr, chunk, 0);
}
static double xent_dw_f32(float *dh, float *dW, float *nll, const float *h, const av_mat *W, const int32_t *tg, int T, float gs,
                          float *scr, int chunk) {
    return av_cuda_xent_dw_mode(dh, dW, nll, h, W, tg, T, gs, scr, chunk, 1);
}
static void att_fwd_bf16(float *o, float *p, const float *q, const float *k, const float *v, int T, int S, int p0, int H, int KVH, int hd) {
    av_cuda_attention_forward_mode(o, p, q, k, v, T, S, p0, H, KVH, hd, 0);
}
static void att_fwd_f32(float *o, float *p, const float *q, const float *k, const float *v, int T, int S, int p0, int H, int KVH, int hd) {
    av_cuda_attention_forward_mode(o, p, q, k, v, T, S, p0, H, KVH, hd, 1);
}
static void att_bwd_bf16(float *dq, float *dk, float *dv, const float *d, const float *p, const float *q, const float *k, const float *v,
                         int T, int S, int p0, int H, int KVH, int hd) {
    av_cuda_attention_backward_mode(dq, dk, dv, d, p, q, k, v, T, S, p0, H, KVH, hd, 0);
}
static void att_bwd_f32(float *dq, float *dk, float *dv, const float *d, const float *p, const float *q, const float *k, const float *v,
                        int T, int S, int p0, int H, int KVH, int hd) {
    av_cuda_attention_backward_mode(dq, dk, dv, d, p, q, k, v, T, S, p0, H, KVH, hd, 1);
}

static void attb_fwd_bf16(float *o, float *p, const float *q, const float *k, const float *v, int B, int T, int H, int KVH, int hd, float *w,
                          size_t wn) {
    av_cuda_attention_forward_batch_mode(o, p, q, k, v, B, T, H, KVH, hd, w, wn, 0);
}
static void attb_fwd_f32(float *o, float *p, const float *q, const float *k, const float *v, int B, int T, int H, int KVH, int hd, float *w,
                         size_t wn) {
    av_cuda_attention_forward_batch_mode(o, p, q, k, v, B, T, H, KVH, hd, w, wn, 1);
}
static void attb_bwd_bf16(float *dq, float *dk, float *dv, const float *d, float *p, const float *q, const float *k, const float *v, int B,
                          int T, int H, int KVH, int hd, float *w, size_t wn) {
    av_cuda_attention_backward_batch_mode(dq, dk, dv, d, p, q, k, v, B, T, H, KVH, hd, w, wn, 0);
}
static void attb_bwd_f32(float *dq, float *dk, float *dv, const float *d, float *p, const float *q, const float *k, const float *v, int B,
                         int T, int H, int KVH, int hd, float *w, size_t wn) {
    av_cuda_attention_backward_batch_mode(dq, dk, dv, d, p, q, k, v, B, T, H, KVH, hd, w, wn, 1);
}

static av_backend k_cuda_bf16, k_cuda_f32;

static void fill_table(av_backend *b, int f32) {
    b->name = f32 ? "cuda-f32" : "cuda";
    b->device = AV_DEVICE_CUDA;
    b->host_visible = 0;
    b->alloc = cuda_alloc;
    b->free = arena_free;
    b->upload = cuda_upload;
    b->download = cuda_download;
    b->download_begin = cuda_download_begin;
    b->download_end = cuda_download_end;
    b->host_alloc = cuda_host_alloc;
    b->host_free = cuda_host_free;
    b->copy = cuda_copy;
    b->zero = cuda_zero;
    b->sync = cuda_sync;
    b->peak_bytes = cuda_peak;
    b->mem_available = cuda_mem_available;
    b->embedding_forward = av_cuda_embedding_forward;
    b->embedding_backward = av_cuda_embedding_backward;
    b->rmsnorm_forward = av_cuda_rmsnorm_forward;
    b->rmsnorm_backward = av_cuda_rmsnorm_backward;
    b->matmul_forward = f32 ? mm_fwd_f32 : mm_fwd_bf16;
    b->matmul_backward = f32 ? mm_bwd_f32 : mm_bwd_bf16;
    b->rope_forward = av_cuda_rope_forward;
    b->rope_backward = av_cuda_rope_backward;
    b->swiglu_forward = av_cuda_swiglu_forward;
    b->swiglu_backward = av_cuda_swiglu_backward;
    b->add_inplace = av_cuda_add_inplace;
    b->add_scaled = av_cuda_add_scaled;
    b->store_bf16 = av_cuda_store_bf16;
    b->load_bf16 = av_cuda_load_bf16;
    b->save_acts_bf16 = !f32; /* the exact-f32 table keeps f32 activations (compared with the CPU) */
    b->matmul_forward_ex = f32 ? NULL : av_cuda_matmul_forward_ex; /* bf16 activations: not in the exact-f32 table */
    b->matmul_backward_dx_ex = f32 ? NULL : av_cuda_matmul_backward_dx_ex;
    b->matmul_forward_res = f32 ? NULL : av_cuda_matmul_forward_res;
    b->swiglu_forward_bf16 = f32 ? NULL : av_cuda_swiglu_forward_bf16;
    b->rmsnorm_forward_bf16 = f32 ? NULL : av_cuda_rmsnorm_forward_bf16;
    b->rmsnorm_backward_dx16 = f32 ? NULL : av_cuda_rmsnorm_backward_dx16;
    b->swiglu_backward_bf16 = f32 ? NULL : av_cuda_swiglu_backward_bf16;
    b->xent_forward_backward = f32 ? xent_f32 : xent_bf16;
    b->xent_forward_backward_dw = f32 ? xent_dw_f32 : xent_dw_bf16;
    b->dropout_forward = av_cuda_dropout_forward;
    b->dropout_backward = av_cuda_dropout_backward;
    b->optim_step = av_cuda_optim_step;
    b->attention_forward = f32 ? att_fwd_f32 : att_fwd_bf16;
    b->attention_backward = f32 ? att_bwd_f32 : att_bwd_bf16;
    b->attention_decode = av_cuda_attention_decode;
    b->attention_forward_batch = f32 ? attb_fwd_f32 : attb_fwd_bf16;
    b->attention_backward_batch = f32 ? attb_bwd_f32 : attb_bwd_bf16;
    b->flash_attention_forward = f32 ? NULL : av_cuda_flash_attention_forward; /* bf16 tensor cores: not in the exact-f32 table */
    b->flash_attention_forward_batch = f32 ? NULL : av_cuda_flash_attention_forward_batch;
    b->flash_attention_backward_batch = f32 ? NULL : av_cuda_flash_attention_backward_batch;
    b->flash_attention_forward_bf16 = f32 ? NULL : av_cuda_flash_attention_forward_bf16;
    b->flash_attention_backward_bf16 = f32 ? NULL : av_cuda_flash_attention_backward_bf16;
    b->flash_attention_backward_bf16io = f32 ? NULL : av_cuda_flash_attention_backward_bf16io;
    b->matmul_fused_forward = f32 ? mmf_f32 : mmf_bf16;
    b->sample = av_cuda_sample;
    b->graph_begin = cuda_graph_begin;
    b->graph_end = cuda_graph_end;
    b->graph_launch = cuda_graph_launch;
    b->graph_free = cuda_graph_free;
}

extern "C" const av_backend *av_backend_cuda_dtype(av_dtype compute) {
    if (!cuda_init()) return NULL;
    if (!k_cuda_bf16.name) {
        fill_table(&k_cuda_bf16, 0);
        fill_table(&k_cuda_f32, 1);
    }
    if (compute == AV_F32) return &k_cuda_f32;
    if (compute == AV_BF16 || compute == AV_F16) return &k_cuda_bf16;
    av_fail(AV_ERR_ARG, "cuda: compute dtype %s not supported (use bf16 or f32)", av_dtype_name(compute));
    return NULL;
}

extern "C" const av_backend *av_backend_cuda(void) { return av_backend_cuda_dtype(AV_BF16); }

extern "C" int av_cuda_device_name(char *buf, size_t cap) {
    if (!cuda_init()) return -1;
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) return -1;
    snprintf(buf, cap, "%s (%d SMs, %.1f GiB)", p.name, p.multiProcessorCount, p.totalGlobalMem / 1073741824.0);
    return 0;
}
