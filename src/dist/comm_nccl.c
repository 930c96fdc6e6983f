/* NCCL communicator (CUDA builds): one rank per GPU, joined with ncclCommInitRank on the thread that
 * drives that GPU; gradient sums are ncclAllReduce(sum) on the backend's stream of that thread, a
 * mean is the sum then cublasSscal by 1/N. Without CUDA the entry points fail cleanly. */
#include "dist/comm.h"
#include <stdlib.h>
#include <string.h>

#ifdef AV_HAVE_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

cudaStream_t av_cuda_stream(void); /* backend/cuda.cu: the calling thread's stream */

typedef struct {
    ncclComm_t nc;
    cublasHandle_t blas;
    double *dev_f64; /* device staging for host-value sums */
    int cap_f64, device;
} nccl_impl;

static av_status nccl_err(ncclResult_t r, const char *what) {
    return av_fail(AV_ERR_DEVICE, "nccl: %s: %s", what, ncclGetErrorString(r));
}

static av_status nccl_sum(av_comm *c, float *buf, size_t n) {
    nccl_impl *p = c->impl;
    ncclResult_t r = ncclAllReduce(buf, buf, n, ncclFloat32, ncclSum, p->nc, av_cuda_stream());
    return r == ncclSuccess ? AV_OK : nccl_err(r, "all-reduce of the gradients");
}

static av_status nccl_scale(av_comm *c, float *buf, size_t n, float a) {
    nccl_impl *p = c->impl;
    cublasSetStream(p->blas, av_cuda_stream());
    for (size_t off = 0; off < n;) { /* cublasSscal counts in int */
        int m = n - off > (size_t)1 << 30 ? 1 << 30 : (int)(n - off);
        if (cublasSscal(p->blas, m, &a, buf + off, 1) != CUBLAS_STATUS_SUCCESS)
            return av_fail(AV_ERR_DEVICE, "nccl: scaling the summed gradients failed");
        off += (size_t)m;
    }
    return AV_OK;
}

static av_status nccl_f64(av_comm *c, double *v, int n) {
    nccl_impl *p = c->impl;
    cudaStream_t s = av_cuda_stream();
    if (n > p->cap_f64) {
        if (p->dev_f64) cudaFree(p->dev_f64);
        p->dev_f64 = NULL;
        if (cudaMalloc((void **)&p->dev_f64, (size_t)n * sizeof(double)) != cudaSuccess)
            return av_fail(AV_ERR_DEVICE, "nccl: cannot allocate %d doubles on device %d", n, p->device);
        p->cap_f64 = n;
    }
    size_t b = (size_t)n * sizeof(double);
    if (cudaMemcpyAsync(p->dev_f64, v, b, cudaMemcpyHostToDevice, s) != cudaSuccess)
        return av_fail(AV_ERR_DEVICE, "nccl: upload of the step's statistics failed");
    ncclResult_t r = ncclAllReduce(p->dev_f64, p->dev_f64, (size_t)n, ncclFloat64, ncclSum, p->nc, s);
    if (r != ncclSuccess) return nccl_err(r, "all-reduce of the step's statistics");
    if (cudaMemcpyAsync(v, p->dev_f64, b, cudaMemcpyDeviceToHost, s) != cudaSuccess || cudaStreamSynchronize(s) != cudaSuccess)
        return av_fail(AV_ERR_DEVICE, "nccl: download of the step's statistics failed");
    return AV_OK;
}

static void nccl_abort(av_comm *c) {
    nccl_impl *p = c->impl;
    if (p->nc) ncclCommAbort(p->nc);
    p->nc = NULL;
}

static void nccl_free(av_comm *c) {
    nccl_impl *p = c->impl;
    if (p->nc) ncclCommDestroy(p->nc);
    if (p->blas) cublasDestroy(p->blas);
    if (p->dev_f64) cudaFree(p->dev_f64);
    free(p);
    free(c);
}

static const av_comm_ops k_nccl_ops = {"nccl", nccl_sum, nccl_scale, nccl_f64, nccl_abort, nccl_free};

int av_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

av_status av_cuda_set_device(int device) {
    int nd = av_cuda_device_count();
    if (device < 0 || device >= nd) return av_fail(AV_ERR_ARG, "cuda: GPU %d does not exist (%d GPUs)", device, nd);
    if (cudaSetDevice(device) != cudaSuccess) return av_fail(AV_ERR_DEVICE, "cuda: cannot select GPU %d", device);
    if (!av_backend_cuda()) return av_fail_prefix(AV_ERR_DEVICE, "GPU %d", device); /* this thread's stream and handles there */
    return AV_OK;
}

av_status av_comm_nccl_id(uint8_t id[AV_COMM_ID_BYTES]) {
    ncclUniqueId u;
    _Static_assert(sizeof u == AV_COMM_ID_BYTES, "NCCL unique id size");
    ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess) return nccl_err(r, "ncclGetUniqueId");
    memcpy(id, &u, sizeof u);
    return AV_OK;
}

av_status av_comm_nccl_new(av_comm **out, const uint8_t id[AV_COMM_ID_BYTES], int world, int rank, int device) {
    *out = NULL;
    if (world < 1 || rank < 0 || rank >= world) return av_fail(AV_ERR_ARG, "nccl: rank %d of %d", rank, world);
    AV_TRY(av_cuda_set_device(device));
    av_comm *c = calloc(1, sizeof *c);
    nccl_impl *p = calloc(1, sizeof *p);
    if (!c || !p) {
        free(c);
        free(p);
        return av_fail(AV_ERR_NOMEM, "nccl: out of memory");
    }
    p->device = device;
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    ncclResult_t r = ncclCommInitRank(&p->nc, world, u, rank);
    if (r != ncclSuccess) {
        free(c);
        free(p);
        return av_fail(AV_ERR_DEVICE, "nccl: rank %d of %d on GPU %d: ncclCommInitRank: %s", rank, world, device, ncclGetErrorString(r));
    }
    if (cublasCreate(&p->blas) != CUBLAS_STATUS_SUCCESS) {
        ncclCommDestroy(p->nc);
        free(c);
        free(p);
        return av_fail(AV_ERR_DEVICE, "nccl: cannot create a cuBLAS handle on GPU %d", device);
    }
    *c = (av_comm){.ops = &k_nccl_ops, .rank = rank, .size = world, .impl = p};
    *out = c;
    return AV_OK;
}

#else /* no CUDA in this build */

int av_cuda_device_count(void) { return 0; }

av_status av_cuda_set_device(int device) {
    return av_fail(AV_ERR_UNSUPPORTED, "cuda: GPU %d: this anvil was built without CUDA", device);
}

av_status av_comm_nccl_id(uint8_t id[AV_COMM_ID_BYTES]) {
    (void)id;
    return av_fail(AV_ERR_UNSUPPORTED, "nccl: this anvil was built without CUDA");
}

av_status av_comm_nccl_new(av_comm **out, const uint8_t id[AV_COMM_ID_BYTES], int world, int rank, int device) {
    (void)id, (void)world, (void)rank, (void)device;
    *out = NULL;
    return av_fail(AV_ERR_UNSUPPORTED, "nccl: this anvil was built without CUDA");
}
#endif
