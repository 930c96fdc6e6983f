/* Chat templates: a Jinja subset engine that renders the templates of instruction-tuned models
 * exactly as HF transformers' apply_chat_template does (jinja2 sandbox with trim_blocks and
 * lstrip_blocks, transformers' tojson / raise_exception / strftime_now). It knows nothing about
 * models: variables come in as one JSON object. Errors: AV_ERR_TEMPLATE, "where:line:col: what". */
#ifndef AV_CHAT_TEMPLATE_H
#define AV_CHAT_TEMPLATE_H
#include <stddef.h>
#include <cjson/cJSON.h>
#include "core/status.h"

typedef struct av_template av_template;

/* Parses template source. `where` names the template in error messages (e.g. its file name). */
av_status av_template_parse(av_template **out, const char *src, const char *where);
/* Renders with `vars` (a JSON object of variables, or NULL). *out is malloc'd, NUL-terminated. */
av_status av_template_render(const av_template *t, const cJSON *vars, char **out);
void av_template_free(av_template *t);

/* Caps that keep hostile templates bounded (0 = keep the default): output bytes (default 64 MiB),
 * memory used while rendering (default 512 MiB), evaluation steps (default 50 million). */
void av_template_set_limits(av_template *t, size_t max_output, size_t max_memory, long max_steps);

#endif
