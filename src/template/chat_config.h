/* Chat template glue for model directories: finds the template source (chat_template.jinja, else
 * tokenizer_config.json's chat_template, a string or a list of {name, template}) and the BOS/EOS
 * strings, and renders a conversation with the variables transformers' apply_chat_template passes. */
#ifndef AV_CHAT_CONFIG_H
#define AV_CHAT_CONFIG_H
#include <cjson/cJSON.h>
#include "core/status.h"

typedef struct {
    char *template_src; /* NULL if the directory has no chat template */
    char *where;        /* file the template came from (for error messages) */
    char *bos, *eos;    /* special token strings, or NULL */
} av_chat_config;

/* Loads from a model or tokenizer directory. A directory without any template is not an error
 * (template_src stays NULL); unreadable or malformed files are. */
av_status av_chat_config_load(av_chat_config *c, const char *dir);
void av_chat_config_free(av_chat_config *c);

/* Renders `messages` (JSON array of {role, content, ...}) like apply_chat_template: variables
 * messages (keys whose value is null dropped), tools = documents = none, add_generation_prompt,
 * bos_token / eos_token when given, then extra_vars (a JSON object, may override any of these). */
av_status av_chat_render(const char *template_src, const char *where, const cJSON *messages, int add_generation_prompt,
                         const char *bos, const char *eos, const cJSON *extra_vars, char **out);

#endif
