/* The public API's read-only view of a backend (include/anvil.h): its name and device kind, so
 * callers need not see the op table. */
#include "backend/backend.h"

const char *av_backend_name(const av_backend *be) { return be->name; }
av_device av_backend_device(const av_backend *be) { return be->device; }
