/* JSON helpers over cJSON: load a file with a one-line error, typed getters, and a JSONL line
 * iterator that reports the line number of a malformed line. */
#ifndef AV_JSON_H
#define AV_JSON_H
#include <cjson/cJSON.h>
#include <stdio.h>
#include "core/status.h"

av_status av_json_load(const char *path, cJSON **out);
/* Getters return `def` when the key is absent or null; numbers accept ints and floats. */
double av_json_num(const cJSON *o, const char *key, double def);
const char *av_json_str(const cJSON *o, const char *key, const char *def);
int av_json_bool(const cJSON *o, const char *key, int def);
const cJSON *av_json_get(const cJSON *o, const char *key); /* NULL if absent or null */

/* JSONL: call av_jsonl_next until it returns 0 (EOF) or <0 (error recorded with path:line). */
typedef struct {
    FILE *f;
    char *line;
    size_t cap;
    int lineno;
    char path[4096];
} av_jsonl;
av_status av_jsonl_open(av_jsonl *j, const char *path);
int av_jsonl_next(av_jsonl *j, cJSON **obj); /* 1 = got object, 0 = EOF, -1 = error; skips blank lines */
void av_jsonl_close(av_jsonl *j);

/* Appends a JSON-escaped string (with quotes) to FILE. */
void av_json_fput_string(FILE *f, const char *s, size_t len);

#endif
