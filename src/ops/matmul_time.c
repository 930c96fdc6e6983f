/* Product timing for anvil bench --suite comprehensive: the backend's own matmul_forward (the
 * prefill/training product) on random inputs, so the GFLOP/s is what the model's products reach. */
#include "anvil.h"
#include "backend/backend.h"
#include "core/dtype.h"
#include "core/status.h"
#include "ops/ops.h"
#include <stdlib.h>

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

av_status av_matmul_time(const av_backend *be, int M, int N, int K, av_dtype wdtype, int reps, double *seconds) {
    *seconds = 0;
    if (!be || M < 1 || N < 1 || K < 1 || reps < 1 || reps > 1000 || (wdtype != AV_F32 && wdtype != AV_BF16 && wdtype != AV_F16))
        return av_fail(AV_ERR_ARG, "matmul timing: bad arguments (M %d, N %d, K %d, reps %d)", M, N, K, reps);
    size_t wsz = av_dtype_size(wdtype), nx = (size_t)M * K, nw = (size_t)N * K, no = (size_t)M * N;
    float *hx = malloc(nx * sizeof(float));
    unsigned char *hw = malloc(nw * wsz);
    double *t = malloc((size_t)reps * sizeof(double));
    float *dx = NULL, *dout = NULL;
    void *dw = NULL;
    av_status st = AV_OK;
    if (!hx || !hw || !t) { st = av_fail(AV_ERR_NOMEM, "matmul timing: out of host memory"); goto done; }
    uint32_t r = 12345u;
    for (size_t i = 0; i < nx; i++) { r = r * 1664525u + 1013904223u; hx[i] = (float)((int)(r >> 9) - (1 << 22)) / (float)(1 << 22); }
    for (size_t i = 0; i < nw; i++) {
        r = r * 1664525u + 1013904223u;
        float v = (float)((int)(r >> 9) - (1 << 22)) / (float)(1 << 24);
        if (wdtype == AV_F32) ((float *)hw)[i] = v;
        else if (wdtype == AV_BF16) ((uint16_t *)hw)[i] = av_f32_to_bf16(v);
        else ((uint16_t *)hw)[i] = av_f32_to_f16(v);
    }
    dx = be->alloc(nx * sizeof(float), "matmul timing x");
    dw = be->alloc(nw * wsz, "matmul timing W");
    dout = be->alloc(no * sizeof(float), "matmul timing out");
    if (!dx || !dw || !dout) { st = AV_ERR_NOMEM; goto done; }
    be->upload(dx, hx, nx * sizeof(float));
    be->upload(dw, hw, nw * wsz);
    av_mat W = {.data = dw, .dtype = wdtype, .rows = N, .cols = K};
    be->matmul_forward(dout, dx, &W, M); /* warm-up */
    be->sync();
    for (int i = 0; i < reps; i++) {
        double t0 = av_now();
        be->matmul_forward(dout, dx, &W, M);
        be->sync();
        t[i] = av_now() - t0;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp_d);
    *seconds = t[reps / 2];
    st = be->device == AV_DEVICE_CPU ? AV_OK : av_cuda_status(); /* the CUDA error record is the device's */
done:
    if (dx) be->free(dx);
    if (dw) be->free(dw);
    if (dout) be->free(dout);
    free(hx);
    free(hw);
    free(t);
    return st;
}
