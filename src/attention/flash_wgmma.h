/* The Hopper flash attention kernels' entry (flash_wgmma.cu; flash_bwd.cu has the backward's), called by flash.cu's entry points. */
#ifndef AV_FLASH_WGMMA_H
#define AV_FLASH_WGMMA_H
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif
/* Whether the current device runs this build's sm_90a (wgmma) kernels: an sm_90 device, this build's
 * sm_90a code and a driver with TMA. */
int av_cuda_flash_wgmma_ok(void);
/* q16: bf16 [B * T][H * hd], unscaled; kb, vb: bf16 [B][kv_rows][KVH * hd], keys past pos0 + T read as
 * zeros; out, lse, out16 as av_cuda_flash_attention_forward_bf16's. Returns -1 (nothing done) where
 * av_cuda_flash_wgmma_ok is 0, hd is not 64 or 128, or a pointer is not 16-byte aligned; B = 0 only asks. */
int av_cuda_flash_fwd_wgmma(float *out, float *lse, const uint16_t *q16, const uint16_t *kb, const uint16_t *vb, int B, int T, int kv_rows,
                            int pos0, int H, int KVH, int hd, uint16_t *out16);
#ifdef __cplusplus
}
#endif
#endif
