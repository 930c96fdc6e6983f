/* Chat-template rendering + tokenization for generate and chat (as HF apply_chat_template with
 * tokenize=True: the rendered text is encoded without adding BOS/EOS; templates add their own). */
#include "chat_prompt.h"
#include "args.h"
#include "anvil.h"
#include <stdlib.h>
#include <string.h>

int av_cli_has_chat_template(const char *model_dir, const char *template_file) {
    if (template_file) return 1;
    av_chat_config cc = {0};
    if (av_chat_config_load(&cc, model_dir) != AV_OK) return 0;
    int has = cc.template_src != NULL;
    av_chat_config_free(&cc);
    return has;
}

int av_cli_chat_ids(const char *cmd, const char *model_dir, const av_tokenizer *tok, const char *template_file,
                    const cJSON *messages, int add_generation_prompt, int32_t **ids, int *n, int *used_template) {
    *ids = NULL;
    *n = 0;
    *used_template = 0;
    av_chat_config cc = {0};
    if (av_chat_config_load(&cc, model_dir) != AV_OK) return av_cli_fail(cmd);
    char *src = cc.template_src;
    const char *where = cc.where;
    char *file_src = NULL;
    if (template_file) {
        if (av_file_read(template_file, &file_src, NULL) != AV_OK) { av_chat_config_free(&cc); return av_cli_fail(cmd); }
        src = file_src;
        where = template_file;
    }
    char *text = NULL;
    int rc = 0;
    if (!src) {
        /* no template: the conversation's contents, one per line */
        size_t len = 0;
        for (const cJSON *m = messages->child; m; m = m->next) {
            const cJSON *c = cJSON_GetObjectItem(m, "content");
            if (cJSON_IsString(c)) len += strlen(c->valuestring) + 1;
        }
        text = calloc(1, len + 1);
        for (const cJSON *m = messages->child; text && m; m = m->next) {
            const cJSON *c = cJSON_GetObjectItem(m, "content");
            if (!cJSON_IsString(c)) continue;
            if (*text) strcat(text, "\n");
            strcat(text, c->valuestring);
        }
        if (!text || av_tokenizer_encode(tok, text, strlen(text), 1, ids, n) != AV_OK) rc = av_cli_fail(cmd);
    } else if (av_chat_render(src, where, messages, add_generation_prompt, cc.bos, cc.eos, NULL, &text) != AV_OK) {
        rc = av_cli_fail(cmd);
    } else if (av_tokenizer_encode(tok, text, strlen(text), 0, ids, n) != AV_OK) {
        rc = av_cli_fail(cmd);
    } else {
        *used_template = 1;
    }
    free(text);
    free(file_src);
    av_chat_config_free(&cc);
    return rc;
}

int av_cli_prompt_ids(const char *cmd, const char *model_dir, const av_tokenizer *tok, const char *template_file, const char *system,
                      const char *text, int raw, int32_t **ids, int *n) {
    *ids = NULL;
    *n = 0;
    if (raw || !av_cli_has_chat_template(model_dir, template_file))
        return av_tokenizer_encode(tok, text, strlen(text), 1, ids, n) == AV_OK ? 0 : av_cli_fail(cmd);
    cJSON *msgs = cJSON_CreateArray();
    if (system) {
        cJSON *sm = cJSON_CreateObject();
        cJSON_AddStringToObject(sm, "role", "system");
        cJSON_AddStringToObject(sm, "content", system);
        cJSON_AddItemToArray(msgs, sm);
    }
    cJSON *um = cJSON_CreateObject();
    cJSON_AddStringToObject(um, "role", "user");
    cJSON_AddStringToObject(um, "content", text);
    cJSON_AddItemToArray(msgs, um);
    int used, rc = av_cli_chat_ids(cmd, model_dir, tok, template_file, msgs, 1, ids, n, &used);
    cJSON_Delete(msgs);
    return rc;
}
