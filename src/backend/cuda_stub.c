/* The CUDA entry points of backend/cuda.h for builds without CUDA (make CUDA=0): each reports
 * that this build has no GPU support. With CUDA they live in cuda.cu and this file is empty. */
#include "backend/cuda.h"
#ifndef AV_HAVE_CUDA
const av_backend *av_backend_cuda_dtype(av_dtype compute) {
    (void)compute;
    return av_backend_cuda();
}
av_status av_cuda_status(void) { return AV_OK; }
int av_cuda_device_name(char *buf, size_t cap) {
    if (cap) buf[0] = 0;
    return -1;
}
size_t av_cuda_held_bytes(void) { return 0; }
void av_cuda_reset_peak(void) {}
void av_cuda_shutdown(void) {}
void av_cuda_thread_release(void) {}
void av_cuda_set_attention_chunk(size_t floats) { (void)floats; }
void av_cuda_matmul_fused_forward_mode(float *out, const float *x, const av_mat *W, int T, const av_gemv_fusion *f, int f32) {
    (void)out; (void)x; (void)W; (void)T; (void)f; (void)f32;
}
#else
typedef int av_cuda_stub_unused; /* ISO C forbids an empty translation unit */
#endif
