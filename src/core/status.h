/* Recording errors: library calls leave one "where: what" line per thread (read with the public
 * av_last_error(), include/anvil.h, which also holds av_status). Library code never prints or
 * exits; cli/ prints av_last_error() and exits. */
#ifndef AV_STATUS_H
#define AV_STATUS_H
#include "anvil.h"

/* Records a formatted error line for this thread and returns `s` (so: return av_fail(...)). */
av_status av_fail(av_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefixes the current error line with "prefix: " (adds context while unwinding). */
av_status av_fail_prefix(av_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
