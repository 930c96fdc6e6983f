/* The CPU backend: host memory and the .c ops. */
#include "backend/backend.h"
#include "attention/attention.h"
#include "core/memory.h"
#include "ops/sample.h"
#include <string.h>

static void cpu_upload(void *dst, const void *src, size_t n) { memcpy(dst, src, n); }
static void cpu_zero(void *p, size_t n) { memset(p, 0, n); }
static void cpu_sync(void) {}

static const av_backend k_cpu = {
    .name = "cpu",
    .device = AV_DEVICE_CPU,
    .host_visible = 1,
    .alloc = av_alloc,
    .free = av_free,
    .upload = cpu_upload,
    .download = cpu_upload,
    .copy = cpu_upload,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .peak_bytes = av_mem_peak_rss,
    .mem_available = av_mem_available,
    .embedding_forward = av_embedding_forward,
    .embedding_backward = av_embedding_backward,
    .rmsnorm_forward = av_rmsnorm_forward,
    .rmsnorm_backward = av_rmsnorm_backward,
    .matmul_forward = av_matmul_forward,
    .matmul_backward = av_matmul_backward,
    .rope_forward = av_rope_forward,
    .rope_backward = av_rope_backward,
    .swiglu_forward = av_swiglu_forward,
    .swiglu_backward = av_swiglu_backward,
    .add_inplace = av_add_inplace,
    .add_scaled = av_add_scaled,
    .store_bf16 = av_store_bf16,
    .load_bf16 = av_load_bf16,
    .xent_forward_backward = av_xent_forward_backward,
    .optim_step = av_optim_step,
    .attention_forward = av_attention_forward,
    .attention_backward = av_attention_backward,
    .attention_forward_batch = av_attention_forward_batch,
    .attention_backward_batch = av_attention_backward_batch,
    .attention_decode = av_attention_decode,
    .flash_attention_forward = av_flash_attention_forward,
    .flash_attention_forward_batch = av_flash_attention_forward_batch,
    .flash_attention_backward_batch = av_flash_attention_backward_batch,
    .matmul_fused_forward = av_matmul_fused_forward,
    .xent_forward_backward_dw = av_xent_forward_backward_dw,
    .dropout_forward = av_dropout_forward,
    .dropout_backward = av_dropout_backward,
    /* the host sampler is the device rule's twin: CPU steps sample the way GPU steps do (and the
     * server's all-greedy steps run the same path on both) */
    .sample = av_sample_rows,
};

const av_backend *av_backend_cpu(void) { return &k_cpu; }

#ifndef AV_HAVE_CUDA
const av_backend *av_backend_cuda(void) {
    av_fail(AV_ERR_UNSUPPORTED, "this build of anvil has no CUDA support (rebuild where nvcc is installed)");
    return NULL;
}
#endif

av_status av_backend_select(const char *name, const av_backend **out) {
    if (!name || !strcmp(name, "auto")) {
        const av_backend *c = av_backend_cuda();
        *out = c ? c : &k_cpu;
        return AV_OK;
    }
    if (!strcmp(name, "cpu")) { *out = &k_cpu; return AV_OK; }
    if (!strcmp(name, "cuda") || !strcmp(name, "gpu")) {
        *out = av_backend_cuda();
        return *out ? AV_OK : AV_ERR_DEVICE;
    }
    return av_fail(AV_ERR_ARG, "unknown device '%s' (use cpu or cuda)", name);
}
