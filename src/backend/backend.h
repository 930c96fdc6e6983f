/* The op table: one struct per backend holding memory functions and one pointer per op (forward
 * and backward), with the signatures of src/ops/ops.h and src/attention/attention.h. Model code is
 * written once against this table and never names a device. cpu.c fills it from the .c ops;
 * cuda.cu from their .cu twins. Pointers passed to ops are backend memory. */
#ifndef AV_BACKEND_H
#define AV_BACKEND_H
#include <stddef.h>
#include <stdint.h>
#include "core/status.h"
#include "ops/ops.h"

typedef enum { AV_DEVICE_CPU = 0, AV_DEVICE_CUDA } av_device;

typedef struct av_backend {
    const char *name;
    av_device device;
    int host_visible; /* 1: backend memory is host memory (weights used in place from the mmap) */

    /* memory (alloc returns NULL + av_fail on failure) */
    void *(*alloc)(size_t bytes, const char *what);
    void (*free)(void *p);
    void (*upload)(void *dst, const void *src, size_t bytes);   /* host -> backend */
    void (*download)(void *dst, const void *src, size_t bytes); /* backend -> host */
    void (*copy)(void *dst, const void *src, size_t bytes);     /* backend -> backend */
    void (*zero)(void *p, size_t bytes);
    void (*sync)(void);
    size_t (*peak_bytes)(void); /* peak backend memory in use */

    /* ops (see ops.h for semantics) */
    void (*embedding_forward)(float *out, const int32_t *ids, const av_mat *table, int T);
    void (*embedding_backward)(float *dtable, const float *dout, const int32_t *ids, int T, int D);
    void (*rmsnorm_forward)(float *out, float *rstd, const float *x, const av_mat *w, int T, int D, float eps);
    void (*rmsnorm_backward)(float *dx, float *dw, const float *dout, const float *x, const av_mat *w, const float *rstd, int T, int D);
    void (*matmul_forward)(float *out, const float *x, const av_mat *W, int T);
    void (*matmul_backward)(float *dx, float *dW, const float *dout, const float *x, const av_mat *W, int T);
    void (*rope_forward)(float *x, const int32_t *pos, const float *inv_freq, int T, int n_heads, int head_dim);
    void (*rope_backward)(float *dx, const int32_t *pos, const float *inv_freq, int T, int n_heads, int head_dim);
    void (*swiglu_forward)(float *out, const float *gate, const float *up, size_t n);
    void (*swiglu_backward)(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n);
    void (*add_inplace)(float *y, const float *x, size_t n);
    void (*add_scaled)(float *y, float a, const float *x, size_t n);
    double (*xent_forward_backward)(float *dh, float *row_nll, const float *h, const av_mat *W, const int32_t *targets, int T,
                                    float grad_scale, float *scratch, int chunk);
    void (*adamw_step)(float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2, float eps,
                       float weight_decay, int step);
    void (*attention_forward)(float *out, float *probs, const float *q, const float *k, const float *v, int T, int S, int pos0,
                              int H, int KVH, int hd);
    void (*attention_backward)(float *dq, float *dk, float *dv, const float *dout, const float *probs, const float *q,
                               const float *k, const float *v, int T, int S, int pos0, int H, int KVH, int hd);
} av_backend;

const av_backend *av_backend_cpu(void);
/* NULL (with av_fail) when CUDA is not compiled in or no GPU is present. */
const av_backend *av_backend_cuda(void);
/* name: "cpu", "cuda", or NULL/"auto" (cuda when a GPU is present, else cpu). */
av_status av_backend_select(const char *name, const av_backend **out);

#endif
