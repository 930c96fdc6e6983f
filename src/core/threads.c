/* Sets OpenMP and OpenBLAS thread counts together so they never oversubscribe each other. */
#include "anvil.h"
#include <omp.h>
#ifdef AV_HAVE_BLAS
#include <cblas.h>
#endif

void av_threads_set(int n) {
    if (n <= 0) n = omp_get_num_procs();
    omp_set_num_threads(n);
#ifdef AV_HAVE_BLAS
    openblas_set_num_threads(n);
#endif
}
int av_threads_get(void) { return omp_get_max_threads(); }
