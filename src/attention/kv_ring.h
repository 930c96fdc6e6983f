/* MLX-LM's rotating KV cache (RotatingKVCache(max_size, keep)) as arithmetic on the absolute
 * position p of a decoded token: the cache row it is written to and the rows it attends. Rows
 * 0..keep-1 hold the first tokens for good; the rest is a ring of ring - keep rows. Both derive
 * from p alone, so device-resident positions (captured decode graphs) keep working. ring = 0: no
 * rotation (row p, rows 0..p). Shared by the CPU and CUDA decode attention. */
#ifndef AV_KV_RING_H
#define AV_KV_RING_H
#ifdef __CUDACC__
#define AV_KV_RING_FN static inline __host__ __device__
#else
#define AV_KV_RING_FN static inline
#endif

/* The row token p is written to. */
AV_KV_RING_FN int av_kv_ring_slot(int p, int keep, int ring) {
    return ring > 0 && p >= ring ? keep + (p - keep) % (ring - keep) : p;
}

/* Rows token p attends (itself included): every valid row of the cache. */
AV_KV_RING_FN int av_kv_ring_rows(int p, int ring) {
    return ring > 0 && p >= ring ? ring : p + 1;
}
#endif
