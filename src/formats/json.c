/* JSON/JSONL helpers. */
#include "core/status.h"
#include "core/memory.h"
#include <stdlib.h>
#include <string.h>

av_status av_json_load(const char *path, cJSON **out) {
    *out = NULL;
    char *txt;
    size_t n;
    AV_TRY(av_file_read(path, &txt, &n));
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(txt, n, &end, 0);
    if (!j) {
        size_t off = end ? (size_t)(end - txt) : 0;
        int line = 1;
        for (size_t i = 0; i < off && i < n; i++) line += txt[i] == '\n';
        free(txt);
        return av_fail(AV_ERR_FORMAT, "%s: invalid JSON near line %d", path, line);
    }
    free(txt);
    *out = j;
    return AV_OK;
}

const cJSON *av_json_get(const cJSON *o, const char *key) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}
double av_json_num(const cJSON *o, const char *key, double def) {
    const cJSON *v = av_json_get(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}
const char *av_json_str(const cJSON *o, const char *key, const char *def) {
    const cJSON *v = av_json_get(o, key);
    return cJSON_IsString(v) ? v->valuestring : def;
}
int av_json_bool(const cJSON *o, const char *key, int def) {
    const cJSON *v = av_json_get(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

av_status av_jsonl_open(av_jsonl *j, const char *path) {
    memset(j, 0, sizeof *j);
    snprintf(j->path, sizeof j->path, "%s", path);
    j->f = fopen(path, "rb");
    if (!j->f) return av_fail(AV_ERR_IO, "%s: cannot open", path);
    return AV_OK;
}

int av_jsonl_next(av_jsonl *j, cJSON **obj) {
    *obj = NULL;
    for (;;) {
        ssize_t n = getline(&j->line, &j->cap, j->f);
        if (n < 0) return 0;
        j->lineno++;
        char *s = j->line;
        while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') s++;
        if (!*s) continue;
        cJSON *o = cJSON_Parse(s);
        if (!o) {
            av_fail(AV_ERR_FORMAT, "%s:%d: invalid JSON", j->path, j->lineno);
            return -1;
        }
        if (!cJSON_IsObject(o)) {
            cJSON_Delete(o);
            av_fail(AV_ERR_FORMAT, "%s:%d: expected a JSON object", j->path, j->lineno);
            return -1;
        }
        *obj = o;
        return 1;
    }
}

void av_jsonl_close(av_jsonl *j) {
    if (j->f) fclose(j->f);
    free(j->line);
    memset(j, 0, sizeof *j);
}

void av_json_fput_string(FILE *f, const char *s, size_t len) {
    fputc('"', f);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (c < 0x20) fprintf(f, "\\u%04x", c);
            else fputc(c, f);
        }
    }
    fputc('"', f);
}
