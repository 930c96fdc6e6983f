/* Shared CLI plumbing: backend choice, threads, model + tokenizer loading with one-line errors. */
#ifndef AV_CLI_COMMON_H
#define AV_CLI_COMMON_H
#include "anvil.h"

/* Smallest --max-kv-size: a rotating cache keeps AV_KV_KEEP tokens for good, so anything below
 * twice that would hold only a handful of recent tokens. */
#define AV_KV_MIN (2 * AV_KV_KEEP)

typedef struct {
    const char *model;
    const char *device;  /* cpu | cuda | auto (NULL) */
    const char *adapter; /* --adapter-path, optional */
    const char *dtype;   /* GPU compute dtype: bf16 (default) | f32 */
    int threads;
    int no_graphs;       /* --no-graphs: decode op by op (debugging) */
    const char *attention; /* --attention auto|flash|standard (NULL: auto) */
} av_cli_model_opts;

/* Parses an --attention value (NULL: auto); prints the error and returns non-zero when unknown. */
int av_cli_attention(const char *cmd, const char *name, av_attention_kind *out);

/* Loads model (+ adapter) and tokenizer; prints the error and returns non-zero on failure.
 * tok may be NULL when no tokenizer is wanted. */
int av_cli_load(const char *cmd, const av_cli_model_opts *o, av_model **m, av_tokenizer **tok);
/* Attaches an adapter directory/file (MLX or PEFT layout) to a loaded model. */
int av_cli_attach_adapter(const char *cmd, av_model *m, const char *path);
/* Reads a whole file (for --file / --text-file); prints error and returns NULL on failure. */
char *av_cli_read_file(const char *cmd, const char *path, size_t *len);
/* --dtype of a written model: bf16 | f16 | f32 (or the long names) into *out; prints the error and
 * returns non-zero otherwise. */
int av_cli_out_dtype(const char *cmd, const char *s, int *out);
#endif
