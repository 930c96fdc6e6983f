/* anvil bench: this machine (CPU model, cores, memory, GPU and driver, OS), its read bandwidth
 * (plain C + OpenMP over a buffer much larger than the caches), and the build's version/commit. */
#include "bench.h"
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#ifndef AV_GIT_COMMIT
#define AV_GIT_COMMIT "unknown"
#endif
#ifndef AV_VERSION
#define AV_VERSION "0.1.0"
#endif
const char *bench_version(void) { return AV_VERSION; }
const char *bench_commit(void) { return AV_GIT_COMMIT; }

static int first_line_with(const char *path, const char *key, char *out, size_t cap) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[512];
    int found = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, strlen(key))) continue;
        char *v = strchr(line, ':');
        if (!v) continue;
        v++;
        while (*v == ' ' || *v == '\t') v++;
        v[strcspn(v, "\n")] = 0;
        snprintf(out, cap, "%s", v);
        found = 0;
        break;
    }
    fclose(f);
    return found;
}

cJSON *bench_machine(void) {
    cJSON *o = cJSON_CreateObject();
    char buf[512];
    if (first_line_with("/proc/cpuinfo", "model name", buf, sizeof buf)) snprintf(buf, sizeof buf, "unknown CPU");
    cJSON_AddStringToObject(o, "cpu", buf);
    cJSON_AddNumberToObject(o, "cores", (double)sysconf(_SC_NPROCESSORS_ONLN));
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    cJSON_AddNumberToObject(o, "mem_gb", pages > 0 && psz > 0 ? (double)pages * (double)psz / 1e9 : 0);
    char gpu[256];
    if (av_cuda_device_name(gpu, sizeof gpu) == 0) {
        cJSON_AddStringToObject(o, "gpu", gpu);
        char drv[128];
        FILE *f = fopen("/proc/driver/nvidia/version", "r");
        if (f && fgets(drv, sizeof drv, f)) {
            drv[strcspn(drv, "\n")] = 0;
            cJSON_AddStringToObject(o, "driver", drv);
        }
        if (f) fclose(f);
    } else {
        cJSON_AddNullToObject(o, "gpu");
    }
    struct utsname u;
    if (uname(&u) == 0) {
        snprintf(buf, sizeof buf, "%s %s %s", u.sysname, u.release, u.machine);
        cJSON_AddStringToObject(o, "os", buf);
    }
    double l[3];
    if (getloadavg(l, 3) == 3) cJSON_AddNumberToObject(o, "load_1min", l[0]);
    return o;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Read bandwidth the way decode reads weights: every thread streams its share of the buffer as 4
 * sub-ranges walked together (the 4-row product's streams), a cache line of each per step into
 * integer vector sums (a floating-point chain of adds, as this was first written, measured the
 * adder: 22 GB/s where bench/readbw.c reads 29-33 on the same machine). */
typedef uint64_t u64x8 __attribute__((vector_size(64), aligned(64)));
double bench_read_bandwidth(int mib, int reps) {
    size_t n = (size_t)mib * 1024 * 1024 / sizeof(uint64_t);
    uint64_t *a = aligned_alloc(64, n * sizeof(uint64_t));
    double *t = malloc((size_t)reps * sizeof(double));
    if (!a || !t || reps < 1) { free(a); free(t); return 0; }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = i & 1023;
    volatile uint64_t sink = 0;
    size_t done = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = av_now();
        uint64_t s = 0;
        size_t bytes = 0;
#pragma omp parallel reduction(+ : s, bytes)
        {
            int nt = omp_get_num_threads(), id = omp_get_thread_num();
            size_t q = n / (size_t)nt / 4 / 8 * 8, lo = 4 * q * (size_t)id; /* 4 streams of q words, whole lines */
            const u64x8 *p0 = (const u64x8 *)(a + lo), *p1 = p0 + q / 8, *p2 = p1 + q / 8, *p3 = p2 + q / 8;
            u64x8 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
            for (size_t i = 0; i < q / 8; i++) { /* one cache line of each stream */
                s0 += p0[i];
                s1 += p1[i];
                s2 += p2[i];
                s3 += p3[i];
            }
            u64x8 v = s0 + s1 + s2 + s3;
            for (int k = 0; k < 8; k++) s += v[k];
            bytes += 4 * q * sizeof(uint64_t);
        }
        t[r] = av_now() - t0;
        sink += s;
        done = bytes;
    }
    (void)sink;
    qsort(t, (size_t)reps, sizeof(double), cmp_d);
    double gbs = (double)done / t[reps / 2] / 1e9;
    free(a);
    free(t);
    return gbs;
}
