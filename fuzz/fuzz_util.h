/* Helpers shared by the fuzz targets: parsers that read a path get the input bytes as a file in a
 * per-process scratch directory (made once in /dev/shm or /tmp, removed at exit), and a fixture path resolver for
 * targets that load a reference tokenizer once. Header-only; used by libFuzzer and the replay driver. */
#ifndef AV_FUZZ_UTIL_H
#define AV_FUZZ_UTIL_H
#include "anvil.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char fz_dir_buf[64];

static inline void fz_cleanup(void) {
    char cmd[128];
    if (!fz_dir_buf[0]) return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fz_dir_buf);
    if (system(cmd) != 0) fz_dir_buf[0] = 0;
}

/* The scratch directory (aborts if it cannot be made: the target cannot run at all). */
static inline const char *fz_dir(void) {
    if (!fz_dir_buf[0]) {
        /* in memory where there is a /dev/shm: file-based targets run several times faster */
        snprintf(fz_dir_buf, sizeof fz_dir_buf, "/dev/shm/anvil-fuzz.XXXXXX");
        if (!mkdtemp(fz_dir_buf)) {
            snprintf(fz_dir_buf, sizeof fz_dir_buf, "/tmp/anvil-fuzz.XXXXXX");
            if (!mkdtemp(fz_dir_buf)) { perror("mkdtemp"); abort(); }
        }
        atexit(fz_cleanup);
    }
    return fz_dir_buf;
}

/* Writes data to <scratch>/name; returns the path (static buffer, valid until the next call). */
static inline const char *fz_file(const char *name, const void *data, size_t size) {
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", fz_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) { perror(path); abort(); }
    return path;
}

/* A fixture path: $AV_FIXTURES/rel, else tests/fixtures/rel (targets run from the repository root). */
static inline const char *fz_fixture(const char *rel, char *buf, size_t cap) {
    const char *fx = getenv("AV_FIXTURES");
    snprintf(buf, cap, "%s/%s", fx && *fx ? fx : "tests/fixtures", rel);
    return buf;
}

/* Loads a fixture tokenizer once or aborts (a missing fixture is a setup error, not a finding). */
static inline av_tokenizer *fz_tokenizer(const char *rel, int force_spm) {
    char p[4096];
    av_tokenizer *t = NULL;
    if (av_tokenizer_load(&t, fz_fixture(rel, p, sizeof p), force_spm) != AV_OK) {
        fprintf(stderr, "fuzz: cannot load %s: %s\n", p, av_last_error());
        abort();
    }
    return t;
}
#endif
