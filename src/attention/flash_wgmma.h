/* The Hopper flash attention kernels' entry (flash_wgmma.cu; flash_bwd.cu has the backward's), called by flash.cu's entry points. */
#ifndef AV_FLASH_WGMMA_H
#define AV_FLASH_WGMMA_H
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif
/* q: f32 (q32) or bf16 (q16), [B * T][H * hd]; kb, vb: bf16 [B][kv_rows][KVH * hd], keys past pos0 + T
 * read as zeros; out, lse, out16 as av_cuda_flash_attention_forward_bf16's. Returns -1 (nothing done)
 * where the device or this build has no sm_90a code, or hd is not 64 or 128; B = 0 only asks. */
/* Whether the current device runs this build's sm_90a (wgmma) kernels. */
int av_cuda_flash_wgmma_ok(void);
int av_cuda_flash_fwd_wgmma(float *out, float *lse, const float *q32, const uint16_t *q16, const uint16_t *kb, const uint16_t *vb, int B, int T,
                            int kv_rows, int pos0, int H, int KVH, int hd, uint16_t *out16);
/* The warp-specialised (TMA) forward for bf16 q (flash_fwd_ws.cu); -1 where the driver has no TMA. */
int av_cuda_flash_fwd_ws(float *out, float *lse, const uint16_t *q16, const uint16_t *kb, const uint16_t *vb, int B, int T, int kv_rows, int pos0,
                         int H, int KVH, int hd, uint16_t *out16);
#ifdef __cplusplus
}
#endif
#endif
