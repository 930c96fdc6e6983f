/* Per-thread last-error storage behind av_fail(). */
#include "core/status.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char g_err[1024];

av_status av_fail(av_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return s;
}

av_status av_fail_prefix(av_status s, const char *fmt, ...) {
    char pre[512], old[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    char both[1600];
    memcpy(old, g_err, sizeof old);
    snprintf(both, sizeof both, "%s: %s", pre, old);
    memcpy(g_err, both, sizeof g_err - 1);
    g_err[sizeof g_err - 1] = 0;
    return s;
}

const char *av_last_error(void) { return g_err[0] ? g_err : "unknown error"; }
void av_clear_error(void) { g_err[0] = 0; }
