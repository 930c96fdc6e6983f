/* anvil bench: this machine (CPU model, cores, memory, GPU and driver, OS), its read bandwidth
 * (plain C + OpenMP over a buffer much larger than the caches), and the build's version/commit. */
#include "bench.h"
#include <omp.h>
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

double bench_read_bandwidth(int mib, int reps) {
    size_t n = (size_t)mib * 1024 * 1024 / sizeof(double);
    double *a = malloc(n * sizeof(double)), *t = malloc((size_t)reps * sizeof(double));
    if (!a || !t || reps < 1) { free(a); free(t); return 0; }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = (double)(i & 1023);
    volatile double sink = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = av_now(), s = 0;
#pragma omp parallel for schedule(static) reduction(+ : s)
        for (size_t i = 0; i < n; i += 8) /* 8 independent sums per cache line: the loads, not the adds, bound it */
            s += a[i] + a[i + 1] + a[i + 2] + a[i + 3] + a[i + 4] + a[i + 5] + a[i + 6] + a[i + 7];
        t[r] = av_now() - t0;
        sink += s;
    }
    (void)sink;
    qsort(t, (size_t)reps, sizeof(double), cmp_d);
    double gbs = (double)(n * sizeof(double)) / t[reps / 2] / 1e9;
    free(a);
    free(t);
    return gbs;
}
