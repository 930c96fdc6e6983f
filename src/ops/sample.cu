/* CUDA twin of sample.c: one block per logits row; argmax, or temperature softmax with the top-p
 * threshold found by bisection over block reductions and an inverse-CDF draw by a block scan, so
 * only the sampled ids (and advanced positions) stay on the device for the next decode step. */
#include "backend/cuda_common.cuh"
extern "C" {
#include "backend/cuda.h"
#include "ops/sample.h"
}

#define SAMPLE_THREADS 1024

__device__ float block_mass(const float *l, int V, float mx, float invt, float tau, float *sh) {
    float m = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float w = expf((l[j] - mx) * invt);
        if (w >= tau) m += w;
    }
    return av_block_sum(m, sh);
}

/* This thread's max over its share of the row (lowest index on ties): 16-byte loads, four in flight
 * per thread (a scalar loop waits on one L2 round trip per element: ~15 us of a 1 ms decode step). */
__device__ __forceinline__ void row_argmax(const float *l, int V, float *bv, int *bi) {
    auto take = [&](float v, int j) {
        if (v > *bv) { *bv = v; *bi = j; }
    };
    int j = threadIdx.x, bd = blockDim.x;
    if ((V & 3) == 0 && ((uintptr_t)l & 15) == 0) {
        const float4 *l4 = reinterpret_cast<const float4 *>(l);
        int V4 = V >> 2;
        for (; j + 3 * bd < V4; j += 4 * bd) {
            float4 v[4];
#pragma unroll
            for (int u = 0; u < 4; u++) v[u] = l4[j + u * bd];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                int k = 4 * (j + u * bd);
                take(v[u].x, k), take(v[u].y, k + 1), take(v[u].z, k + 2), take(v[u].w, k + 3);
            }
        }
        for (; j < V4; j += bd) {
            float4 v = l4[j];
            take(v.x, 4 * j), take(v.y, 4 * j + 1), take(v.z, 4 * j + 2), take(v.w, 4 * j + 3);
        }
        return;
    }
#pragma unroll 4
    for (; j < V; j += bd) take(l[j], j);
}

__global__ void __launch_bounds__(SAMPLE_THREADS) sample_k(int32_t *ids, const float *logits, int V, float temperature, float top_p,
                                                             uint64_t seed, int32_t *pos, const int32_t *active) {
    __shared__ float sh[32];
    __shared__ float sv[32];
    __shared__ int si[32];
    __shared__ float scan[SAMPLE_THREADS];
    __shared__ int chosen;
    av_pdl_wait();
    av_pdl_launch();
    int i = blockIdx.x, lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const float *l = logits + (size_t)i * V;
    /* argmax, lowest index on ties */
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    row_argmax(l, V, &bv, &bi);
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
    }
    if (lane == 0) { sv[w] = bv; si[w] = bi; }
    __syncthreads();
    if (w == 0) {
        bv = lane < nw ? sv[lane] : -INFINITY;
        bi = lane < nw ? si[lane] : 0x7fffffff;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
        }
        if (lane == 0) { sv[0] = bv; chosen = bi; }
    }
    __syncthreads();
    int p = pos ? pos[i] : 0;
    if (temperature > 0.0f) {
        float mx = sv[0], invt = 1.0f / temperature;
        __syncthreads();
        float Z = block_mass(l, V, mx, invt, 0.0f, sh), tau = 0.0f;
        if (top_p < 1.0f) {
            float lo = 0.0f, hi = 1.0f;
            for (int it = 0; it < 32; it++) {
                float mid = 0.5f * (lo + hi);
                if (block_mass(l, V, mx, invt, mid, sh) >= top_p * Z) lo = mid;
                else hi = mid;
            }
            tau = lo;
        }
        float kept = block_mass(l, V, mx, invt, tau, sh);
        float u = av_sample_uniform(seed, p) * kept;
        /* contiguous slice per thread, exclusive scan of slice masses, then the owner walks its slice */
        int per = (V + blockDim.x - 1) / blockDim.x, j0 = threadIdx.x * per, j1 = min(V, j0 + per);
        float m = 0;
        for (int j = j0; j < j1; j++) {
            float wj = expf((l[j] - mx) * invt);
            if (wj >= tau) m += wj;
        }
        scan[threadIdx.x] = m;
        __syncthreads();
        if (threadIdx.x == 0) {
            float c = 0;
            for (int t = 0; t < (int)blockDim.x; t++) { float x = scan[t]; scan[t] = c; c += x; }
        }
        __syncthreads();
        float c = scan[threadIdx.x];
        if (j0 < j1 && c <= u && u < c + m) {
            for (int j = j0; j < j1; j++) {
                float wj = expf((l[j] - mx) * invt);
                if (wj < tau) continue;
                c += wj;
                if (c > u) { chosen = j; break; }
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        ids[i] = chosen;
        if (pos && (!active || active[i])) pos[i] = p + 1;
    }
}

extern "C" void av_cuda_sample(int32_t *ids, const float *logits, int N, int V, float temperature, float top_p, uint64_t seed,
                               int32_t *pos, const int32_t *active) {
    if (N <= 0) return;
    av_launch(sample_k, dim3(N), dim3(SAMPLE_THREADS), 0, 1, ids, logits, V, temperature, top_p, seed, pos, active);
    AV_CU_LAUNCHED("sample");
}
