/* Thread count for OpenMP kernels and OpenBLAS (one setting for both). */
#ifndef AV_THREADS_H
#define AV_THREADS_H
void av_threads_set(int n); /* n <= 0: all cores */
int av_threads_get(void);
#endif
