/* Builds the prompt token ids for generate/chat: renders the model's chat template (or a
 * --chat-template file) around the messages, or uses the raw text when there is no template or
 * --ignore-chat-template is given. */
#ifndef AV_CLI_CHAT_PROMPT_H
#define AV_CLI_CHAT_PROMPT_H
#include <cjson/cJSON.h>
#include "anvil.h"

/* messages: JSON array of {role, content}. Returns 0 and malloc'd ids; prints the error and returns
 * non-zero on failure. *used_template tells whether a template was applied. */
int av_cli_chat_ids(const char *cmd, const char *model_dir, const av_tokenizer *tok, const char *template_file,
                    const cJSON *messages, int add_generation_prompt, int32_t **ids, int *n, int *used_template);
/* One user prompt (after an optional system message) through the chat template, or the raw text
 * when raw != 0 or there is no template. Prints the error and returns non-zero on failure. */
int av_cli_prompt_ids(const char *cmd, const char *model_dir, const av_tokenizer *tok, const char *template_file, const char *system,
                      const char *text, int raw, int32_t **ids, int *n);
/* 1 when the model directory (or template_file) provides a chat template. */
int av_cli_has_chat_template(const char *model_dir, const char *template_file);
#endif
