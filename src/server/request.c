/* Strict parsing of OpenAI / MLX-LM request bodies (chat completions and completions) into an
 * av_server_request: every field's type and range is checked, n must be 1, and fields that would
 * change the answer but are not supported are refused rather than ignored. */
#include "anvil.h"
#include "core/status.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MESSAGES 4096
#define MAX_BIAS 1024

static av_status bad(av_server_request *r, const char *field, const char *what) {
    snprintf(r->param, sizeof r->param, "%s", field);
    return av_fail(AV_ERR_ARG, "%s%s%s", field, *field ? ": " : "", what);
}

/* Accepted only at a value that changes nothing (e.g. frequency_penalty 0). */
static int neutral(const cJSON *v, const char *key) {
    if (cJSON_IsNull(v)) return 1;
    if (!strcmp(key, "frequency_penalty") || !strcmp(key, "presence_penalty")) return cJSON_IsNumber(v) && v->valuedouble == 0;
    if (!strcmp(key, "echo") || !strcmp(key, "parallel_tool_calls") || !strcmp(key, "store")) return cJSON_IsBool(v) && cJSON_IsFalse(v);
    if (!strcmp(key, "best_of")) return cJSON_IsNumber(v) && v->valuedouble == 1;
    if (!strcmp(key, "suffix")) return cJSON_IsString(v) && !*v->valuestring;
    return 0;
}

static av_status num(av_server_request *r, const cJSON *v, const char *key, double lo, double hi, int integer, double *out) {
    if (!cJSON_IsNumber(v)) return bad(r, key, "must be a number");
    double d = v->valuedouble;
    if (!isfinite(d) || d < lo || d > hi) {
        char msg[96];
        snprintf(msg, sizeof msg, "must be within [%g, %g]", lo, hi);
        return bad(r, key, msg);
    }
    if (integer && d != floor(d)) return bad(r, key, "must be an integer");
    *out = d;
    return AV_OK;
}

static av_status parse_stop(av_server_request *r, const cJSON *v) {
    if (cJSON_IsString(v)) {
        if (!*v->valuestring) return bad(r, "stop", "empty stop string");
        if (!(r->stops[0] = strdup(v->valuestring))) return av_fail(AV_ERR_NOMEM, "out of memory");
        r->n_stops = 1;
        return AV_OK;
    }
    if (!cJSON_IsArray(v)) return bad(r, "stop", "must be a string or an array of strings");
    if (cJSON_GetArraySize(v) > AV_MAX_STOPS) return bad(r, "stop", "too many stop strings (at most 16)");
    for (const cJSON *e = v->child; e; e = e->next) {
        if (!cJSON_IsString(e) || !*e->valuestring) return bad(r, "stop", "must hold non-empty strings");
        if (!(r->stops[r->n_stops++] = strdup(e->valuestring))) return av_fail(AV_ERR_NOMEM, "out of memory");
    }
    return AV_OK;
}

static av_status parse_bias(av_server_request *r, const cJSON *v) {
    if (!cJSON_IsObject(v)) return bad(r, "logit_bias", "must be an object of token id -> bias");
    int n = cJSON_GetArraySize(v);
    if (n > MAX_BIAS) return bad(r, "logit_bias", "too many entries");
    if (!n) return AV_OK;
    r->bias_ids = malloc(sizeof(int32_t) * (size_t)n);
    r->bias = malloc(sizeof(float) * (size_t)n);
    if (!r->bias_ids || !r->bias) return av_fail(AV_ERR_NOMEM, "out of memory");
    for (const cJSON *e = v->child; e; e = e->next) {
        char *end;
        const char *k = e->string ? e->string : "";
        long id = strtol(k, &end, 10);
        if (!*k || *end || id < 0 || id > 100000000L) return bad(r, "logit_bias", "keys must be token ids");
        double b;
        AV_TRY(num(r, e, "logit_bias", -100, 100, 0, &b));
        r->bias_ids[r->n_bias] = (int32_t)id;
        r->bias[r->n_bias++] = (float)b;
    }
    return AV_OK;
}

/* content: a string or an array of {"type": "text", "text": ...} parts (joined). */
static av_status message_content(av_server_request *r, const cJSON *c, char **out) {
    *out = NULL;
    if (cJSON_IsString(c)) return (*out = strdup(c->valuestring)) ? AV_OK : av_fail(AV_ERR_NOMEM, "out of memory");
    if (!cJSON_IsArray(c)) return bad(r, "messages", "content must be a string or an array of text parts");
    size_t len = 0;
    for (const cJSON *p = c->child; p; p = p->next) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(p, "type"), *x = cJSON_GetObjectItemCaseSensitive(p, "text");
        if (!cJSON_IsObject(p) || !cJSON_IsString(t) || strcmp(t->valuestring, "text") || !cJSON_IsString(x))
            return bad(r, "messages", "only text content parts are supported");
        len += strlen(x->valuestring);
    }
    if (!(*out = malloc(len + 1))) return av_fail(AV_ERR_NOMEM, "out of memory");
    (*out)[0] = 0;
    for (const cJSON *p = c->child; p; p = p->next) strcat(*out, cJSON_GetObjectItemCaseSensitive(p, "text")->valuestring);
    return AV_OK;
}

static av_status parse_messages(av_server_request *r, const cJSON *v) {
    if (!cJSON_IsArray(v) || !v->child) return bad(r, "messages", "must be a non-empty array");
    if (cJSON_GetArraySize(v) > MAX_MESSAGES) return bad(r, "messages", "too many messages");
    if (!(r->messages = cJSON_CreateArray())) return av_fail(AV_ERR_NOMEM, "out of memory");
    for (const cJSON *m = v->child; m; m = m->next) {
        if (!cJSON_IsObject(m)) return bad(r, "messages", "each message must be an object");
        const cJSON *role = NULL, *content = NULL, *name = NULL;
        for (const cJSON *f = m->child; f; f = f->next) {
            const char *k = f->string ? f->string : "";
            if (!strcmp(k, "role")) role = f;
            else if (!strcmp(k, "content")) content = f;
            else if (!strcmp(k, "name")) name = f;
            else return bad(r, "messages", "unsupported message field (only role, content and name)");
        }
        if (!cJSON_IsString(role) || (strcmp(role->valuestring, "system") && strcmp(role->valuestring, "user") &&
                                      strcmp(role->valuestring, "assistant") && strcmp(role->valuestring, "developer")))
            return bad(r, "messages", "role must be system, developer, user or assistant");
        if (!content) return bad(r, "messages", "every message needs a content");
        if (name && !cJSON_IsString(name)) return bad(r, "messages", "name must be a string");
        char *text;
        AV_TRY(message_content(r, content, &text));
        cJSON *o = cJSON_CreateObject();
        int ok = o && cJSON_AddStringToObject(o, "role", strcmp(role->valuestring, "developer") ? role->valuestring : "system") &&
                 cJSON_AddStringToObject(o, "content", text) && (!name || cJSON_AddStringToObject(o, "name", name->valuestring));
        free(text);
        if (o) cJSON_AddItemToArray(r->messages, o);
        if (!ok) return av_fail(AV_ERR_NOMEM, "out of memory");
    }
    return AV_OK;
}

static av_status parse_prompt(av_server_request *r, const cJSON *v) {
    if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 1 && cJSON_IsString(v->child)) v = v->child;
    if (cJSON_IsString(v)) {
        if (!*v->valuestring) return bad(r, "prompt", "must not be empty");
        return (r->prompt = strdup(v->valuestring)) ? AV_OK : av_fail(AV_ERR_NOMEM, "out of memory");
    }
    if (!cJSON_IsArray(v) || !v->child || !cJSON_IsNumber(v->child))
        return bad(r, "prompt", "must be a string or an array of token ids (one prompt per request)");
    int n = cJSON_GetArraySize(v);
    if (!(r->prompt_ids = malloc(sizeof(int32_t) * (size_t)n))) return av_fail(AV_ERR_NOMEM, "out of memory");
    for (const cJSON *e = v->child; e; e = e->next) {
        double d;
        AV_TRY(num(r, e, "prompt", 0, 100000000, 1, &d));
        r->prompt_ids[r->n_prompt_ids++] = (int32_t)d;
    }
    return AV_OK;
}

static av_status parse_field(av_server_request *r, const cJSON *f, int chat) {
    const char *k = f->string ? f->string : "";
    double d;
    if (cJSON_IsNull(f) && strcmp(k, "messages") && strcmp(k, "prompt")) return AV_OK; /* null = not given */
    if (!strcmp(k, "model") || !strcmp(k, "user")) return cJSON_IsString(f) ? AV_OK : bad(r, k, "must be a string");
    if (!strcmp(k, chat ? "messages" : "prompt")) return chat ? parse_messages(r, f) : parse_prompt(r, f);
    if (!strcmp(k, "max_tokens") || (chat && !strcmp(k, "max_completion_tokens"))) {
        AV_TRY(num(r, f, k, 1, 1e7, 1, &d));
        r->max_tokens = (int)d;
        return AV_OK;
    }
    if (!strcmp(k, "temperature")) { AV_TRY(num(r, f, k, 0, 100, 0, &d)); r->sampler.temp = (float)d; return AV_OK; }
    if (!strcmp(k, "top_p")) { AV_TRY(num(r, f, k, 0, 1, 0, &d)); r->sampler.top_p = d > 0 ? (float)d : 1.0f; return AV_OK; }
    if (!strcmp(k, "top_k")) { AV_TRY(num(r, f, k, 0, 1e7, 1, &d)); r->sampler.top_k = (int)d; return AV_OK; }
    if (!strcmp(k, "min_p")) { AV_TRY(num(r, f, k, 0, 1, 0, &d)); r->sampler.min_p = (float)d; return AV_OK; }
    if (!strcmp(k, "repetition_penalty")) {
        AV_TRY(num(r, f, k, 0.01, 100, 0, &d));
        r->sampler.repetition_penalty = (float)d;
        return AV_OK;
    }
    if (!strcmp(k, "repetition_context_size")) {
        AV_TRY(num(r, f, k, 1, 1e7, 1, &d));
        r->sampler.repetition_context = (int)d;
        return AV_OK;
    }
    if (!strcmp(k, "seed")) { AV_TRY(num(r, f, k, -9.2e18, 9.2e18, 1, &d)); r->sampler.seed = (uint64_t)(int64_t)d; r->has_seed = 1; return AV_OK; }
    if (!strcmp(k, "n")) { AV_TRY(num(r, f, k, 1, 1, 1, &d)); return AV_OK; }
    if (!strcmp(k, "stop")) return parse_stop(r, f);
    if (!strcmp(k, "logit_bias")) return parse_bias(r, f);
    if (!strcmp(k, "stream")) {
        if (!cJSON_IsBool(f)) return bad(r, k, "must be a boolean");
        r->stream = cJSON_IsTrue(f);
        return AV_OK;
    }
    if (!strcmp(k, "stream_options")) {
        if (!cJSON_IsObject(f)) return bad(r, k, "must be an object");
        for (const cJSON *o = f->child; o; o = o->next) {
            if (!o->string || strcmp(o->string, "include_usage") || !cJSON_IsBool(o))
                return bad(r, "stream_options", "only include_usage (a boolean) is supported");
            r->include_usage = cJSON_IsTrue(o);
        }
        return AV_OK;
    }
    if (chat && !strcmp(k, "logprobs")) {
        if (!cJSON_IsBool(f)) return bad(r, k, "must be a boolean");
        r->logprobs = cJSON_IsTrue(f);
        return AV_OK;
    }
    if (chat && !strcmp(k, "top_logprobs")) { AV_TRY(num(r, f, k, 0, 20, 1, &d)); r->top_logprobs = (int)d; return AV_OK; }
    if (!chat && !strcmp(k, "logprobs")) { /* completions: the number of alternatives (0-5) */
        AV_TRY(num(r, f, k, 0, 5, 1, &d));
        r->logprobs = 1;
        r->top_logprobs = (int)d;
        return AV_OK;
    }
    static const char *const neutral_keys[] = {"frequency_penalty", "presence_penalty", "echo", "best_of", "suffix", "parallel_tool_calls", "store"};
    for (size_t i = 0; i < sizeof neutral_keys / sizeof *neutral_keys; i++)
        if (!strcmp(k, neutral_keys[i])) return neutral(f, k) ? AV_OK : bad(r, k, "is not supported by this server");
    if (!strcmp(k, "metadata")) return cJSON_IsObject(f) ? AV_OK : bad(r, k, "must be an object");
    return bad(r, k, "is not supported by this server");
}

av_status av_server_parse_request(const char *body, size_t len, av_server_kind kind, av_server_request *r) {
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->max_tokens = -1;
    av_sampler_params_default(&r->sampler);
    if (!body) return bad(r, "", "empty body");
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) return bad(r, "", "the body is not valid JSON");
    av_status st = AV_OK;
    if (!cJSON_IsObject(root)) st = bad(r, "", "the body must be a JSON object");
    else if (cJSON_GetArraySize(root) > 64) st = bad(r, "", "too many fields");
    for (const cJSON *f = root->child; st == AV_OK && f; f = f->next) {
        for (const cJSON *g = root->child; g != f && st == AV_OK; g = g->next)
            if (f->string && g->string && !strcmp(f->string, g->string)) st = bad(r, f->string, "given twice");
        if (st == AV_OK) st = parse_field(r, f, kind == AV_SERVER_CHAT);
    }
    if (st == AV_OK && kind == AV_SERVER_CHAT && !r->messages) st = bad(r, "messages", "is required");
    if (st == AV_OK && kind == AV_SERVER_COMPLETION && !r->prompt && !r->prompt_ids) st = bad(r, "prompt", "is required");
    if (st == AV_OK && r->include_usage && !r->stream) st = bad(r, "stream_options", "only allowed with stream: true");
    if (st == AV_OK && r->top_logprobs && kind == AV_SERVER_CHAT && !r->logprobs) st = bad(r, "top_logprobs", "needs logprobs: true");
    cJSON_Delete(root);
    if (st != AV_OK) {
        char keep[sizeof r->param];
        memcpy(keep, r->param, sizeof keep);
        av_server_request_free(r);
        memcpy(r->param, keep, sizeof keep);
    }
    return st;
}

void av_server_request_free(av_server_request *r) {
    cJSON_Delete(r->messages);
    free(r->prompt);
    free(r->prompt_ids);
    for (int i = 0; i < r->n_stops; i++) free(r->stops[i]);
    free(r->bias_ids);
    free(r->bias);
    memset(r, 0, sizeof *r);
}
