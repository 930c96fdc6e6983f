/* Status codes and the per-thread "last error" line ("where: what") that library calls leave
 * behind. Library code never prints or exits; cli/ prints av_last_error() and exits. */
#ifndef AV_STATUS_H
#define AV_STATUS_H

typedef enum {
    AV_OK = 0,
    AV_ERR_IO,          /* missing/unreadable/unwritable file */
    AV_ERR_FORMAT,      /* malformed or truncated file contents */
    AV_ERR_SHAPE,       /* shape/dtype disagrees with the config */
    AV_ERR_UNSUPPORTED, /* valid input we do not handle */
    AV_ERR_NOMEM,
    AV_ERR_ARG,         /* bad argument / flag value */
    AV_ERR_TEMPLATE,    /* chat template parse or runtime error */
    AV_ERR_DEVICE,      /* GPU / backend failure */
    AV_ERR_INTERRUPTED,
} av_status;

/* Records a formatted error line for this thread and returns `s` (so: return av_fail(...)). */
av_status av_fail(av_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefixes the current error line with "prefix: " (adds context while unwinding). */
av_status av_fail_prefix(av_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *av_last_error(void);
void av_clear_error(void);

#define AV_TRY(expr) do { av_status av_try_s_ = (expr); if (av_try_s_ != AV_OK) return av_try_s_; } while (0)

#endif
