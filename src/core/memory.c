/* mmap, file helpers, atomic writes, tracked allocation and peak memory. */
#include "core/memory.h"
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdint.h>

av_status av_file_map(av_mapped_file *m, const char *path) {
    m->data = NULL;
    m->size = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return av_fail(AV_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return av_fail(AV_ERR_IO, "%s: not a regular file", path);
    }
    m->size = (size_t)st.st_size;
    m->dev = st.st_dev, m->ino = st.st_ino, m->mtime = st.st_mtim;
    if (m->size == 0) { close(fd); return av_fail(AV_ERR_FORMAT, "%s: file is empty", path); }
    m->data = mmap(NULL, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m->data == MAP_FAILED) {
        m->data = NULL;
        return av_fail(AV_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
    }
    return AV_OK;
}

void av_file_unmap(av_mapped_file *m) {
    if (m->data) munmap(m->data, m->size);
    m->data = NULL;
    m->size = 0;
}

av_status av_file_read(const char *path, char **out, size_t *len) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return av_fail(AV_ERR_IO, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) { fclose(f); return av_fail(AV_ERR_NOMEM, "%s: out of memory reading file", path); }
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1) break;
        cap *= 2;
        char *nb = realloc(buf, cap);
        if (!nb) free(buf);
        buf = nb;
    }
    int err = ferror(f);
    fclose(f);
    if (err) { free(buf); return av_fail(AV_ERR_IO, "%s: read error", path); }
    buf[n] = 0;
    *out = buf;
    if (len) *len = n;
    return AV_OK;
}

int av_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}
int av_dir_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

av_status av_mkdir_p(const char *dir) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", dir);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return av_fail(AV_ERR_IO, "%s: cannot create directory: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) return av_fail(AV_ERR_IO, "%s: cannot create directory: %s", buf, strerror(errno));
    if (!av_dir_exists(buf)) return av_fail(AV_ERR_IO, "%s: not a directory", buf);
    return AV_OK;
}

char *av_path_join(char *buf, size_t cap, const char *dir, const char *name) {
    size_t dl = strlen(dir);
    if (dl && dir[dl - 1] == '/') snprintf(buf, cap, "%s%s", dir, name);
    else snprintf(buf, cap, "%s/%s", dir, name);
    return buf;
}

/* Removes "<path>.tmp.<pid>" files left by writers that were killed (their pid no longer runs). */
static void remove_stale_tmp(const char *path) {
    char dir[4200];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    const char *base = slash ? slash + 1 : path;
    if (slash == dir) dir[1] = 0;
    else if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    size_t bl = strlen(base);
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[4400];
    while (d && (e = readdir(d))) {
        if (strncmp(e->d_name, base, bl) || strncmp(e->d_name + bl, ".tmp.", 5)) continue;
        char *end;
        long pid = strtol(e->d_name + bl + 5, &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        unlink(av_path_join(p, sizeof p, dir, e->d_name));
    }
    if (d) closedir(d);
}

av_status av_atomic_open(av_atomic_file *a, const char *path) {
    remove_stale_tmp(path);
    snprintf(a->path, sizeof a->path, "%s", path);
    snprintf(a->tmp, sizeof a->tmp, "%s.tmp.%d", path, (int)getpid());
    a->f = fopen(a->tmp, "wb");
    if (!a->f) return av_fail(AV_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    return AV_OK;
}

/* fsyncs the directory holding path, so a rename into it survives a power loss */
int av_fsync_parent(const char *path) {
    char dir[4200];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == dir) dir[1] = 0;
    else *slash = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* flush + fsync the data, rename over the destination, fsync the directory: after a crash at any
 * point the destination holds either the old or the new contents, never a part */
av_status av_atomic_commit(av_atomic_file *a) {
    if (!a->f) return av_fail(AV_ERR_IO, "%s: not open", a->path);
    int e = 0;
    if (fflush(a->f) != 0 || ferror(a->f)) e = errno ? errno : EIO;
    if (!e && fsync(fileno(a->f)) != 0 && errno != EINVAL) e = errno;
    if (fclose(a->f) != 0 && !e) e = errno ? errno : EIO;
    a->f = NULL;
    if (e) {
        unlink(a->tmp);
        return av_fail(AV_ERR_IO, "%s: write failed: %s", a->path, strerror(e));
    }
    if (rename(a->tmp, a->path) != 0) {
        e = errno;
        unlink(a->tmp);
        return av_fail(AV_ERR_IO, "%s: rename failed: %s", a->path, strerror(e));
    }
    av_fsync_parent(a->path); /* best effort: some file systems cannot fsync a directory */
    return AV_OK;
}

void av_atomic_abort(av_atomic_file *a) {
    if (a->f) fclose(a->f);
    a->f = NULL;
    unlink(a->tmp);
}

av_status av_write_file_atomic(const char *path, const void *data, size_t len) {
    av_atomic_file a;
    AV_TRY(av_atomic_open(&a, path));
    errno = 0;
    if (len && fwrite(data, 1, len, a.f) != len) {
        int e = errno ? errno : EIO;
        av_atomic_abort(&a);
        return av_fail(AV_ERR_IO, "%s: write failed: %s", path, strerror(e));
    }
    return av_atomic_commit(&a);
}

/* Process-wide on purpose (peak reporting covers every session); atomic, so concurrent sessions
 * may allocate side by side. */
static atomic_size_t g_alloc_cur, g_alloc_peak;
#define AV_HDR 64

void *av_alloc(size_t bytes, const char *what) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes + AV_HDR) != 0 || !p) {
        av_fail(AV_ERR_NOMEM, "out of memory allocating %zu bytes for %s", bytes, what ? what : "buffer");
        return NULL;
    }
    *(size_t *)p = bytes;
    size_t cur = atomic_fetch_add(&g_alloc_cur, bytes) + bytes;
    size_t pk = atomic_load(&g_alloc_peak);
    while (cur > pk && !atomic_compare_exchange_weak(&g_alloc_peak, &pk, cur)) {}
    return (char *)p + AV_HDR;
}

void *av_calloc(size_t bytes, const char *what) {
    void *p = av_alloc(bytes, what);
    if (p) memset(p, 0, bytes);
    return p;
}

void av_free(void *p) {
    if (!p) return;
    char *base = (char *)p - AV_HDR;
    atomic_fetch_sub(&g_alloc_cur, *(size_t *)base);
    free(base);
}

#define AV_HUGE ((size_t)2 << 20)
void *av_alloc_huge(size_t bytes) {
    size_t n = (bytes + AV_HUGE - 1) / AV_HUGE * AV_HUGE;
    char *p = mmap(NULL, n + AV_HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    char *a = (char *)(((uintptr_t)p + AV_HUGE - 1) & ~(uintptr_t)(AV_HUGE - 1)); /* trim to a 2 MB aligned range */
    if (a > p) munmap(p, (size_t)(a - p));
    if (p + n + AV_HUGE > a + n) munmap(a + n, (size_t)(p + n + AV_HUGE - (a + n)));
    madvise(a, n, MADV_HUGEPAGE); /* before the first touch; a kernel without THP ignores it */
    size_t cur = atomic_fetch_add(&g_alloc_cur, n) + n;
    size_t pk = atomic_load(&g_alloc_peak);
    while (cur > pk && !atomic_compare_exchange_weak(&g_alloc_peak, &pk, cur)) {}
    return a;
}

void av_free_huge(void *p, size_t bytes) {
    if (!p) return;
    size_t n = (bytes + AV_HUGE - 1) / AV_HUGE * AV_HUGE;
    munmap(p, n);
    atomic_fetch_sub(&g_alloc_cur, n);
}

size_t av_mem_peak_alloc(void) { return atomic_load(&g_alloc_peak); }

static size_t read_status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    size_t kb = 0, kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl)) { kb = strtoull(line + kl, NULL, 10); break; }
    fclose(f);
    return kb * 1024;
}
size_t av_mem_peak_rss(void) { return read_status_kb("VmHWM:"); }
size_t av_mem_current_rss(void) { return read_status_kb("VmRSS:"); }

/* MemAvailable of /proc/meminfo (what the kernel can hand out without swapping), else the free
 * physical pages; 0 if neither is known. */
size_t av_mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    size_t kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "MemAvailable:", 13)) { kb = strtoull(line + 13, NULL, 10); break; }
    if (f) fclose(f);
    if (kb) return kb * 1024;
    long pages = sysconf(_SC_AVPHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    return pages > 0 && psz > 0 ? (size_t)pages * (size_t)psz : 0;
}
