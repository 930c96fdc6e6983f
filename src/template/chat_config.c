/* Loads a model directory's chat template and BOS/EOS strings, and renders conversations with
 * the same variables transformers' apply_chat_template gives the template. */
#include "core/status.h"
#include "core/memory.h"
#include "formats/gguf.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

/* "<s>" or {"content": "<s>", ...} */
static const char *token_str(const cJSON *v) {
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsObject(v)) return av_json_str(v, "content", NULL);
    return NULL;
}

void av_chat_config_free(av_chat_config *c) {
    free(c->template_src);
    free(c->where);
    free(c->bos);
    free(c->eos);
    memset(c, 0, sizeof *c);
}

/* A GGUF file: tokenizer.chat_template and the BOS/EOS pieces of its token list. */
static av_status load_gguf(av_chat_config *c, const char *path) {
    av_gguf_file f;
    AV_TRY(av_gguf_open(&f, path));
    const av_gguf_kv *toks = NULL;
    int bos = -1, eos = -1;
    av_status st = av_gguf_get_str(&f, "tokenizer.chat_template", &c->template_src);
    if (!st) st = av_gguf_get_arr(&f, "tokenizer.ggml.tokens", AV_GGUF_STR, AV_GGUF_STR, &toks);
    int n = toks && toks->n < (1u << 28) ? (int)toks->n : 0;
    if (!st && n) st = av_gguf_get_int(&f, "tokenizer.ggml.bos_token_id", 0, n - 1, &bos);
    if (!st && n) st = av_gguf_get_int(&f, "tokenizer.ggml.eos_token_id", 0, n - 1, &eos);
    size_t l;
    const char *p;
    if (!st && bos >= 0) { p = av_gguf_arr_str(toks, (uint64_t)bos, &l); c->bos = strndup(p, l); }
    if (!st && eos >= 0) { p = av_gguf_arr_str(toks, (uint64_t)eos, &l); c->eos = strndup(p, l); }
    if (!st && c->template_src) {
        size_t wl = strlen(path) + 32;
        if ((c->where = malloc(wl))) snprintf(c->where, wl, "%s:tokenizer.chat_template", path);
    }
    av_gguf_close(&f);
    if (st) av_chat_config_free(c);
    return st;
}

av_status av_chat_config_load(av_chat_config *c, const char *dir) {
    memset(c, 0, sizeof *c);
    if (av_file_exists(dir)) return load_gguf(c, dir);
    char path[4096];
    cJSON *cfg = NULL;
    av_path_join(path, sizeof path, dir, "tokenizer_config.json");
    if (av_file_exists(path)) {
        AV_TRY(av_json_load(path, &cfg));
        if (!cJSON_IsObject(cfg)) {
            cJSON_Delete(cfg);
            return av_fail(AV_ERR_FORMAT, "%s: expected a JSON object", path);
        }
        c->bos = dup_or_null(token_str(av_json_get(cfg, "bos_token")));
        c->eos = dup_or_null(token_str(av_json_get(cfg, "eos_token")));
    }
    char jpath[4096];
    av_path_join(jpath, sizeof jpath, dir, "chat_template.jinja");
    if (av_file_exists(jpath)) {
        size_t n;
        av_status s = av_file_read(jpath, &c->template_src, &n);
        if (s != AV_OK) {
            cJSON_Delete(cfg);
            av_chat_config_free(c);
            return s;
        }
        c->where = strdup(jpath);
    } else if (cfg) {
        const cJSON *t = av_json_get(cfg, "chat_template");
        const char *src = NULL;
        if (cJSON_IsString(t)) src = t->valuestring;
        else if (cJSON_IsArray(t)) {
            for (const cJSON *e = t->child; e; e = e->next)
                if (!strcmp(av_json_str(e, "name", ""), "default")) src = av_json_str(e, "template", NULL);
        } else if (t) {
            cJSON_Delete(cfg);
            av_chat_config_free(c);
            return av_fail(AV_ERR_FORMAT, "%s: chat_template must be a string or a list of {name, template}", path);
        }
        if (src) {
            c->template_src = strdup(src);
            c->where = strdup(path);
        }
    }
    cJSON_Delete(cfg);
    if ((c->template_src && !c->where) || (c->where && !c->template_src)) {
        av_chat_config_free(c);
        return av_fail(AV_ERR_NOMEM, "%s: out of memory", dir);
    }
    return AV_OK;
}

/* transformers' _alias_reasoning_fields: {"thinking": r, **message, "reasoning_content": r} */
static cJSON *alias_reasoning(cJSON *msg) {
    static const char *const fields[] = {"reasoning_content", "thinking", "reasoning"};
    const cJSON *r = NULL;
    for (int i = 0; i < 3 && !r; i++) r = av_json_get(msg, fields[i]);
    if (!r) return msg;
    cJSON *out = cJSON_CreateObject();
    cJSON_AddItemToObject(out, "thinking", cJSON_Duplicate(r, 1));
    for (const cJSON *e = msg->child; e; e = e->next) {
        if (!strcmp(e->string, "thinking")) continue;
        cJSON_AddItemToObject(out, e->string, cJSON_Duplicate(strcmp(e->string, "reasoning_content") ? e : r, 1));
    }
    if (!cJSON_GetObjectItemCaseSensitive(out, "reasoning_content"))
        cJSON_AddItemToObject(out, "reasoning_content", cJSON_Duplicate(r, 1));
    cJSON_Delete(msg);
    return out;
}

av_status av_chat_render(const char *template_src, const char *where, const cJSON *messages, int add_generation_prompt,
                         const char *bos, const char *eos, const cJSON *extra_vars, char **out) {
    *out = NULL;
    if (!where) where = "<template>";
    if (!cJSON_IsArray(messages)) return av_fail(AV_ERR_ARG, "%s: messages must be a JSON array", where);
    if (!messages->child) return av_fail(AV_ERR_ARG, "%s: cannot apply the chat template to an empty conversation", where);
    if (extra_vars && !cJSON_IsObject(extra_vars)) return av_fail(AV_ERR_ARG, "%s: template arguments must be a JSON object", where);
    cJSON *vars = cJSON_CreateObject(), *msgs = cJSON_CreateArray();
    if (!vars || !msgs) {
        cJSON_Delete(vars);
        cJSON_Delete(msgs);
        return av_fail(AV_ERR_NOMEM, "%s: out of memory", where);
    }
    int idx = 0;
    for (const cJSON *m = messages->child; m; m = m->next, idx++) {
        if (!cJSON_IsObject(m)) {
            cJSON_Delete(vars);
            cJSON_Delete(msgs);
            return av_fail(AV_ERR_ARG, "%s: message %d is not a JSON object", where, idx);
        }
        cJSON *copy = cJSON_CreateObject();
        for (const cJSON *e = m->child; e; e = e->next) /* drop keys whose value is null */
            if (!cJSON_IsNull(e)) cJSON_AddItemToObject(copy, e->string, cJSON_Duplicate(e, 1));
        cJSON_AddItemToArray(msgs, alias_reasoning(copy));
    }
    /* special tokens first, then the explicit arguments (which overwrite them), as transformers does */
    if (bos) cJSON_AddStringToObject(vars, "bos_token", bos);
    if (eos) cJSON_AddStringToObject(vars, "eos_token", eos);
    cJSON_AddItemToObject(vars, "messages", msgs);
    cJSON_AddNullToObject(vars, "tools");
    cJSON_AddNullToObject(vars, "documents");
    cJSON_AddBoolToObject(vars, "add_generation_prompt", add_generation_prompt != 0);
    if (extra_vars)
        for (const cJSON *e = extra_vars->child; e; e = e->next) {
            cJSON_DeleteItemFromObjectCaseSensitive(vars, e->string);
            cJSON_AddItemToObject(vars, e->string, cJSON_Duplicate(e, 1));
        }
    av_template *t = NULL;
    av_status s = av_template_parse(&t, template_src, where);
    if (s == AV_OK) s = av_template_render(t, vars, out);
    av_template_free(t);
    cJSON_Delete(vars);
    return s;
}
