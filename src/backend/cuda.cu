/* CUDA backend entry: device detection. The op table is filled from the .cu twins of the ops. */
#include <cuda_runtime.h>
extern "C" {
#include "backend/backend.h"
}

extern "C" const av_backend *av_backend_cuda(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        av_fail(AV_ERR_DEVICE, "no CUDA GPU found (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return NULL;
    }
    av_fail(AV_ERR_DEVICE, "CUDA op table is not in this build yet; use --device cpu");
    return NULL;
}
