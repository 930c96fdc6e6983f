/* Fused single-row (decode) products for the CUDA backend: out (= or +=) W . in(x) with the input
 * transform (RMSNorm, SwiGLU) computed once per block into shared memory, RoPE applied on the
 * outputs, and the residual add done in the store. One persistent-style kernel streams 16-bit
 * weight rows with 16-byte loads, two rows per warp, the first rows' loads issued before x. */
#include "backend/cuda_common.cuh"
extern "C" {
#include "backend/cuda.h"
}

#define FG_WARPS 8
#define FG_UNR 8                       /* 16-byte loads per row in flight per lane */
#define FG_MAX_K (47 * 1024 / 4)       /* x in shared memory: under 48 KiB without opting in */

static int g_variant = 1, g_bps = 2, g_sms; /* default: matmul.cu's own single-row kernel */

extern "C" void av_cuda_set_gemv(int variant, int blocks_per_sm) {
    g_variant = variant;
    g_bps = blocks_per_sm > 0 ? blocks_per_sm : 2;
}

__device__ __forceinline__ void fg_unpack8(uint4 w, av_dtype dt, float *f) {
    uint32_t u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        if (dt == AV_BF16) {
            f[2 * j] = __uint_as_float(u[j] << 16);
            f[2 * j + 1] = __uint_as_float(u[j] & 0xffff0000u);
        } else {
            __half2 h = *reinterpret_cast<__half2 *>(&u[j]);
            float2 p = __half22float2(h);
            f[2 * j] = p.x;
            f[2 * j + 1] = p.y;
        }
    }
}

/* Unit u of a warp = two output rows: (head*hd + j, head*hd + j + hd/2) when paired by head (so
 * RoPE's rotated pairs meet in one warp), else (2u, 2u + 1). */
template <bool PAIR>
__device__ __forceinline__ void fg_rows(int u, int hd, int *r0, int *r1) {
    if (PAIR) {
        int half = hd >> 1, h = u / half, j = u - h * half;
        *r0 = h * hd + j;
        *r1 = *r0 + half;
    } else {
        *r0 = 2 * u;
        *r1 = 2 * u + 1;
    }
}

template <int IN, bool PAIR>
__global__ void __launch_bounds__(FG_WARPS * 32) gemv_fused_k(float *out, const float *x, const float *up, const void *g, av_dtype gdt,
                                                              float eps, const uint16_t *W, av_dtype dt, int N, int K, int accumulate,
                                                              const int32_t *pos, const float *inv_freq, int rope_rows, int hd) {
    extern __shared__ float4 xs[]; /* two planes: xa[i] = in[8i..8i+3], xb[i] = in[8i+4..8i+7] */
    __shared__ float red[32];
    int nv = K >> 3;
    float4 *xa = xs, *xb = xs + nv;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int U = PAIR ? N / 2 : (N + 1) / 2, TW = gridDim.x * FG_WARPS, u = blockIdx.x * FG_WARPS + warp;
    uint4 w0[FG_UNR], w1[FG_UNR];
    int r0 = 0, r1 = 0;
    bool have = false;
    if (u < U) { /* weights do not depend on x: start streaming them now */
        fg_rows<PAIR>(u, hd, &r0, &r1);
        const uint4 *p0 = reinterpret_cast<const uint4 *>(W + (size_t)r0 * K), *p1 = reinterpret_cast<const uint4 *>(W + (size_t)r1 * K);
#pragma unroll
        for (int j = 0; j < FG_UNR; j++) {
            int i = j * 32 + lane;
            w0[j] = i < nv ? __ldcs(p0 + i) : make_uint4(0, 0, 0, 0);
            w1[j] = i < nv && r1 < N ? __ldcs(p1 + i) : make_uint4(0, 0, 0, 0);
        }
        have = true;
    }
    /* the input vector, transformed, into shared memory */
    const float4 *x4 = reinterpret_cast<const float4 *>(x);
    if (IN == AV_GEMV_IN_RMSNORM) {
        float ss = 0.0f;
        for (int i = threadIdx.x; i < nv; i += blockDim.x) {
            float4 a = x4[2 * i], b = x4[2 * i + 1];
            ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w + b.x * b.x + b.y * b.y + b.z * b.z + b.w * b.w;
            xa[i] = a;
            xb[i] = b;
        }
        ss = av_block_sum(ss, red);
        float r = 1.0f / sqrtf(ss / (float)K + eps);
        for (int i = threadIdx.x; i < nv; i += blockDim.x) {
            float4 a = xa[i], b = xb[i];
            int k = 8 * i;
            a.x = av_ld_w(g, gdt, k) * (a.x * r), a.y = av_ld_w(g, gdt, k + 1) * (a.y * r);
            a.z = av_ld_w(g, gdt, k + 2) * (a.z * r), a.w = av_ld_w(g, gdt, k + 3) * (a.w * r);
            b.x = av_ld_w(g, gdt, k + 4) * (b.x * r), b.y = av_ld_w(g, gdt, k + 5) * (b.y * r);
            b.z = av_ld_w(g, gdt, k + 6) * (b.z * r), b.w = av_ld_w(g, gdt, k + 7) * (b.w * r);
            xa[i] = a;
            xb[i] = b;
        }
    } else if (IN == AV_GEMV_IN_SWIGLU) {
        const float4 *u4 = reinterpret_cast<const float4 *>(up);
        for (int i = threadIdx.x; i < nv; i += blockDim.x) {
            float4 a = x4[2 * i], b = x4[2 * i + 1], c = u4[2 * i], d = u4[2 * i + 1];
            a.x = a.x / (1.0f + expf(-a.x)) * c.x, a.y = a.y / (1.0f + expf(-a.y)) * c.y;
            a.z = a.z / (1.0f + expf(-a.z)) * c.z, a.w = a.w / (1.0f + expf(-a.w)) * c.w;
            b.x = b.x / (1.0f + expf(-b.x)) * d.x, b.y = b.y / (1.0f + expf(-b.y)) * d.y;
            b.z = b.z / (1.0f + expf(-b.z)) * d.z, b.w = b.w / (1.0f + expf(-b.w)) * d.w;
            xa[i] = a;
            xb[i] = b;
        }
    } else {
        for (int i = threadIdx.x; i < nv; i += blockDim.x) {
            xa[i] = x4[2 * i];
            xb[i] = x4[2 * i + 1];
        }
    }
    __syncthreads();
    for (; u < U; u += TW) {
        fg_rows<PAIR>(u, hd, &r0, &r1);
        const uint4 *p0 = reinterpret_cast<const uint4 *>(W + (size_t)r0 * K), *p1 = reinterpret_cast<const uint4 *>(W + (size_t)r1 * K);
        float a0 = 0.0f, a1 = 0.0f;
        for (int s0 = 0; s0 < nv; s0 += 32 * FG_UNR) {
            if (!have) {
#pragma unroll
                for (int j = 0; j < FG_UNR; j++) {
                    int i = s0 + j * 32 + lane;
                    w0[j] = i < nv ? __ldcs(p0 + i) : make_uint4(0, 0, 0, 0);
                    w1[j] = i < nv && r1 < N ? __ldcs(p1 + i) : make_uint4(0, 0, 0, 0);
                }
            }
            have = false;
#pragma unroll
            for (int j = 0; j < FG_UNR; j++) {
                int i = s0 + j * 32 + lane;
                if (i < nv) {
                    float4 a = xa[i], b = xb[i];
                    float f[8];
                    fg_unpack8(w0[j], dt, f);
                    a0 += f[0] * a.x + f[1] * a.y + f[2] * a.z + f[3] * a.w + f[4] * b.x + f[5] * b.y + f[6] * b.z + f[7] * b.w;
                    fg_unpack8(w1[j], dt, f);
                    a1 += f[0] * a.x + f[1] * a.y + f[2] * a.z + f[3] * a.w + f[4] * b.x + f[5] * b.y + f[6] * b.z + f[7] * b.w;
                }
            }
        }
        a0 = av_warp_sum(a0);
        a1 = av_warp_sum(a1);
        if (lane == 0) {
            if (PAIR && r0 < rope_rows) {
                int j = r0 % hd;
                float ang = (float)pos[0] * inv_freq[j], s, c;
                sincosf(ang, &s, &c);
                float p = a0, q = a1;
                a0 = p * c - q * s;
                a1 = q * c + p * s;
            }
            if (accumulate) {
                out[r0] += a0;
                if (r1 < N) out[r1] += a1;
            } else {
                out[r0] = a0;
                if (r1 < N) out[r1] = a1;
            }
        }
    }
}

template <int IN, bool PAIR>
static void launch(float *out, const float *x, const float *up, const av_mat *norm, float eps, const av_mat *W, int accumulate,
                   const int32_t *pos, const float *inv_freq, int rope_rows, int hd) {
    int N = W->rows, K = W->cols;
    if (!g_sms) {
        int dev = 0;
        cudaGetDevice(&dev);
        if (cudaDeviceGetAttribute(&g_sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || g_sms <= 0) g_sms = 108;
    }
    int U = PAIR ? N / 2 : (N + 1) / 2;
    /* every warp gets ceil(U / warps) units or one fewer: balanced rows, one or two waves at most */
    long warps_max = (long)g_sms * g_bps * FG_WARPS;
    long per = (U + warps_max - 1) / warps_max;
    unsigned blocks = av_cdiv((size_t)U, (size_t)(per * FG_WARPS));
    size_t smem = (size_t)K * sizeof(float);
    gemv_fused_k<IN, PAIR><<<blocks, FG_WARPS * 32, smem, av_cuda_stream()>>>(out, x, up, norm ? norm->data : NULL,
                                                                            norm ? norm->dtype : AV_F32, eps, (const uint16_t *)W->data,
                                                                            W->dtype, N, K, accumulate, pos, inv_freq, rope_rows, hd);
    AV_CU_LAUNCHED("fused gemv");
}

static int fused_ok(const float *x, const av_mat *W) {
    return (W->dtype == AV_BF16 || W->dtype == AV_F16) && !W->q_bits && W->cols % 8 == 0 && W->cols <= FG_MAX_K && W->rows > 0 &&
           ((uintptr_t)x % 16) == 0 && ((uintptr_t)W->data % 16) == 0;
}

int av_cuda_gemv1_fused(float *out, const float *x, const av_mat *W) {
    if (g_variant != 0 || !fused_ok(x, W)) return 0;
    launch<AV_GEMV_IN_X, false>(out, x, NULL, NULL, 0.0f, W, 0, NULL, NULL, 0, 0);
    return 1;
}

extern "C" void av_cuda_matmul_fused_forward(float *out, const float *x, const av_mat *W, const av_gemv_fusion *f) {
    int N = W->rows, K = W->cols, hd = f->head_dim, rope_rows = f->rope_heads > 0 ? f->rope_heads * hd : 0;
    int pair = rope_rows > 0;
    bool ok = fused_ok(x, W) && (f->in != AV_GEMV_IN_SWIGLU || ((uintptr_t)f->up % 16) == 0) &&
              (f->in != AV_GEMV_IN_RMSNORM || (f->norm && f->norm->rows * f->norm->cols == K)) &&
              (!pair || (hd > 0 && hd % 2 == 0 && N % hd == 0 && rope_rows <= N));
    if (ok) {
        switch (f->in * 2 + pair) {
        case 0: launch<AV_GEMV_IN_X, false>(out, x, NULL, NULL, 0.0f, W, f->accumulate, NULL, NULL, 0, 0); break;
        case 1: launch<AV_GEMV_IN_X, true>(out, x, NULL, NULL, 0.0f, W, f->accumulate, f->pos, f->inv_freq, rope_rows, hd); break;
        case 2: launch<AV_GEMV_IN_RMSNORM, false>(out, x, NULL, f->norm, f->eps, W, f->accumulate, NULL, NULL, 0, 0); break;
        case 3: launch<AV_GEMV_IN_RMSNORM, true>(out, x, NULL, f->norm, f->eps, W, f->accumulate, f->pos, f->inv_freq, rope_rows, hd); break;
        case 4: launch<AV_GEMV_IN_SWIGLU, false>(out, x, f->up, NULL, 0.0f, W, f->accumulate, NULL, NULL, 0, 0); break;
        default: launch<AV_GEMV_IN_SWIGLU, true>(out, x, f->up, NULL, 0.0f, W, f->accumulate, f->pos, f->inv_freq, rope_rows, hd); break;
        }
        return;
    }
    /* any other shape: the separate ops through scratch (same results, more launches) */
    float *in = (float *)av_cuda_scratch(AV_SCR_FUSED, ((size_t)K + N) * sizeof(float));
    if (!in) return;
    float *prod = in + K;
    const float *src = x;
    if (f->in == AV_GEMV_IN_RMSNORM) {
        av_cuda_rmsnorm_forward(in, NULL, x, f->norm, 1, K, f->eps);
        src = in;
    } else if (f->in == AV_GEMV_IN_SWIGLU) {
        av_cuda_swiglu_forward(in, x, f->up, (size_t)K);
        src = in;
    }
    av_cuda_matmul_forward_mode(f->accumulate ? prod : out, src, W, 1, 0);
    float *o = f->accumulate ? prod : out;
    if (rope_rows > 0) av_cuda_rope_forward(o, f->pos, f->inv_freq, 1, f->rope_heads, hd);
    if (f->accumulate) av_cuda_add_inplace(out, prod, (size_t)N);
}
