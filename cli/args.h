/* One long-option parser for every command: --name VALUE or --name=VALUE, typed destinations,
 * range checks, generated --help. Errors print one line and return non-zero. */
#ifndef AV_CLI_ARGS_H
#define AV_CLI_ARGS_H

typedef enum {
    AV_OPT_STR,   /* const char ** */
    AV_OPT_INT,   /* int * */
    AV_OPT_FLOAT, /* double * */
    AV_OPT_FLAG,  /* int *, set to 1 */
    AV_OPT_MULTI, /* av_strlist * (repeatable) */
} av_opt_type;

typedef struct {
    int n;
    const char *v[64];
} av_strlist;

typedef struct {
    const char *name;  /* without leading dashes, e.g. "max-tokens" */
    av_opt_type type;
    void *dst;
    const char *help;
    double min, max;   /* for INT/FLOAT when min < max */
    const char *alias; /* optional short alias like "c" (used as -c) */
} av_opt;

/* Returns 0 on success, 1 when --help was printed (caller exits 0), 2 on error (printed). */
int av_args_parse(int argc, char **argv, const av_opt *opts, const char *cmd, const char *summary);
/* Prints "anvil <cmd>: error: <msg>" to stderr and returns 1 (exit status). */
int av_cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints the library's last error line for a failed call and returns 1. */
int av_cli_fail(const char *cmd);

#endif
