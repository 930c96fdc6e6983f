/* Device side of MLX affine quantization (quant/affine.h): a packed row read 32 codes at a time.
 * 32 codes of `BITS` bits are exactly BITS uint32 words. Groups of 32/64/128 are whole chunks (one
 * scale and bias a chunk); groups of 16 (GGUF K-quants repacked) give a chunk two, one per half.
 * Codes become floats exactly with the 2^23 trick (no I2F).
 * Internal to the .cu ops. */
#ifndef AV_QUANT_AFFINE_CUH
#define AV_QUANT_AFFINE_CUH
#include "backend/cuda_common.cuh"

/* Words of chunk c (codes 32c .. 32c+31) of a row: 16-byte loads where the width allows (rows of
 * 2/4/8-bit codes are 8/16/32-byte multiples), else one word at a time. Streaming: read once. */
template <int BITS>
__device__ __forceinline__ void aq_load(uint32_t (&w)[BITS], const uint32_t *row, int c) {
    const uint32_t *p = row + (size_t)c * BITS;
    if constexpr (BITS == 4) {
        uint4 v = __ldcs(reinterpret_cast<const uint4 *>(p));
        w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
    } else if constexpr (BITS == 8) {
        uint4 a = __ldcs(reinterpret_cast<const uint4 *>(p)), b = __ldcs(reinterpret_cast<const uint4 *>(p) + 1);
        w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w, w[4] = b.x, w[5] = b.y, w[6] = b.z, w[7] = b.w;
    } else if constexpr (BITS == 2) {
        uint2 v = __ldcs(reinterpret_cast<const uint2 *>(p));
        w[0] = v.x, w[1] = v.y;
    } else {
#pragma unroll
        for (int i = 0; i < BITS; i++) w[i] = __ldcs(p + i);
    }
}

/* Code j (a compile-time constant after unrolling) of a run of NW packed words (a chunk: NW = BITS)
 * as an exact float. */
template <int BITS, int NW>
__device__ __forceinline__ float aq_code(const uint32_t (&w)[NW], int j) {
    const int bit = j * BITS, k = bit >> 5, sh = bit & 31;
    uint32_t v = w[k] >> sh;
    if (sh + BITS > 32) v |= w[k + 1] << (32 - sh);
    v &= (1u << BITS) - 1u;
    return __uint_as_float(0x4B000000u | v) - 8388608.0f;
}

/* Scale or bias `i` of a [rows, groups] table in the model's float dtype. */
__device__ __forceinline__ float aq_sb(const void *p, av_dtype t, size_t i) { return av_ld_w(p, t, i); }

/* The scales and biases of chunk c's two halves (codes 0-15, 16-31) of a row whose groups start at
 * table index g0: the same pair unless the group is 16. */
__device__ __forceinline__ void aq_sb2(float (&s)[2], float (&b)[2], const void *sc, const void *bi, av_dtype t, size_t g0, int c, int group) {
    size_t gi = g0 + (size_t)(c * 32) / group;
    s[0] = aq_sb(sc, t, gi), b[0] = aq_sb(bi, t, gi);
    if (group < 32) s[1] = aq_sb(sc, t, gi + 1), b[1] = aq_sb(bi, t, gi + 1);
    else s[1] = s[0], b[1] = b[0];
}

/* The 32 dequantized values of one chunk into o[32] (16-byte aligned), f32. */
template <int BITS>
__device__ __forceinline__ void aq_store_f32(float *o, const uint32_t (&w)[BITS], const float (&s)[2], const float (&b)[2]) {
    float4 *o4 = reinterpret_cast<float4 *>(o);
#pragma unroll
    for (int v = 0; v < 8; v++) {
        const float sv = s[v >> 2], bv = b[v >> 2];
        o4[v] = make_float4(sv * aq_code<BITS>(w, 4 * v) + bv, sv * aq_code<BITS>(w, 4 * v + 1) + bv, sv * aq_code<BITS>(w, 4 * v + 2) + bv,
                            sv * aq_code<BITS>(w, 4 * v + 3) + bv);
    }
}

/* Runs a templated body with BITS as a compile-time constant (2, 3, 4, 5, 6 or 8). */
#define AQ_DISPATCH_BITS(bits, BODY)                                                                                                       \
    switch (bits) {                                                                                                                        \
    case 2: { constexpr int BITS = 2; BODY; } break;                                                                                       \
    case 3: { constexpr int BITS = 3; BODY; } break;                                                                                       \
    case 4: { constexpr int BITS = 4; BODY; } break;                                                                                       \
    case 5: { constexpr int BITS = 5; BODY; } break;                                                                                       \
    case 6: { constexpr int BITS = 6; BODY; } break;                                                                                       \
    default: { constexpr int BITS = 8; BODY; } break;                                                                                      \
    }

#endif
