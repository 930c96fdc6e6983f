/* The public API's read-only view of a backend (include/anvil.h): its name and device kind, so
 * callers need not see the op table; and memory plans committed against what the backend holds. */
#include "backend/backend.h"
#include <stdint.h>

const char *av_backend_name(const av_backend *be) { return be->name; }
av_device av_backend_device(const av_backend *be) { return be->device; }

av_status av_backend_plan_commit(const av_backend *be, av_plan *p, const char *what) {
    size_t need = av_plan_bytes(p), avail = be->mem_available ? be->mem_available() : 0;
    const double gib = 1024.0 * 1024.0 * 1024.0;
    if (need == SIZE_MAX) return av_fail(AV_ERR_NOMEM, "%s: size overflow (absurd sizes)", what);
    if (avail && need > avail)
        return av_fail(AV_ERR_NOMEM, "%s: needs %.2f GiB, only %.2f GiB of %s memory is available", what, (double)need / gib,
                       (double)avail / gib, be->device == AV_DEVICE_CPU ? "CPU" : "GPU");
    return av_plan_commit(p, be->alloc, what);
}
