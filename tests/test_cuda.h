/* Shared by the CUDA test files (tests/test_cuda_*.c): the backends under test (G: bf16 table, G32:
 * exact f32, C: the CPU reference), upload/download helpers, CMP (device array vs a host reference by
 * relative L2), bf16 weight matrices, and the fixtures' id lists. */
#ifndef AV_TEST_CUDA_H
#define AV_TEST_CUDA_H
#include "test.h"
#include "backend/backend.h"
#include "backend/cuda.h"
#include "core/dtype.h"
#include "core/status.h"

static const av_backend *G, *G32, *C;
static inline void *up(const av_backend *be, const void *h, size_t bytes) {
    void *d = be->alloc(bytes, "test");
    be->upload(d, h, bytes);
    return d;
}
static inline float *down(const av_backend *be, const void *d, size_t n) {
    float *h = malloc(n * sizeof(float));
    be->download(h, d, n * sizeof(float));
    return h;
}
#define CMP(name, dev_ptr, ref, n, tol) do { float *h_ = down(G, dev_ptr, n); double e_ = test_rel_l2(h_, ref, n); \
    CHECK(e_ <= (tol), "%s: rel L2 %.3g > %g", name, e_, (double)(tol)); free(h_); } while (0)

static inline av_mat bf16_mat(const float *w, int rows, int cols, uint16_t **host) {
    *host = malloc(sizeof(uint16_t) * (size_t)rows * cols);
    av_convert_from_f32(*host, AV_BF16, w, (size_t)rows * cols);
    av_mat m = {.data = *host, .dtype = AV_BF16, .rows = rows, .cols = cols};
    return m;
}
static inline av_mat on_dev(av_mat m) {
    av_mat d = m;
    d.data = up(G, m.data, (size_t)m.rows * m.cols * av_dtype_size(m.dtype));
    return d;
}
static inline int read_ids(const cJSON *arr, int32_t *out, int cap) {
    int n = 0;
    for (const cJSON *e = arr ? arr->child : NULL; e && n < cap; e = e->next) out[n++] = e->valueint;
    return n;
}

/* C, G and G32; 0 without a GPU (the caller prints "skipped: no GPU"), else prints the device. */
static inline int test_cuda_init(void) {
    C = av_backend_cpu();
    G = av_backend_cuda();
    G32 = G ? av_backend_cuda_dtype(AV_F32) : NULL;
    if (!G || !G32) return 0;
    char dev[256];
    av_cuda_device_name(dev, sizeof dev);
    printf("GPU: %s\n", dev);
    return 1;
}
#endif
