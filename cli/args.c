/* Long-option parser shared by all commands. */
#include "args.h"
#include "anvil.h"
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_help(const av_opt *opts, const char *cmd, const char *summary) {
    printf("usage: anvil %s [options]\n%s\n\noptions:\n", cmd, summary ? summary : "");
    for (const av_opt *o = opts; o->name; o++) {
        const char *arg = o->type == AV_OPT_FLAG ? "" : o->type == AV_OPT_INT ? " N" : o->type == AV_OPT_FLOAT ? " X" : " S";
        char left[96];
        if (o->alias) snprintf(left, sizeof left, "-%s, --%s%s", o->alias, o->name, arg);
        else snprintf(left, sizeof left, "--%s%s", o->name, arg);
        printf("  %-30s %s\n", left, o->help ? o->help : "");
    }
    printf("  %-30s %s\n", "-h, --help", "show this help");
}

int av_cli_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "anvil %s: error: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

int av_cli_fail(const char *cmd) { return av_cli_error(cmd, "%s", av_last_error()); }

int av_args_parse(int argc, char **argv, const av_opt *opts, const char *cmd, const char *summary) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { print_help(opts, cmd, summary); return 1; }
        const char *name = NULL, *val = NULL;
        char buf[128];
        if (a[0] == '-' && a[1] == '-') {
            name = a + 2;
            const char *eq = strchr(name, '=');
            if (eq) {
                size_t l = (size_t)(eq - name);
                if (l >= sizeof buf) l = sizeof buf - 1;
                memcpy(buf, name, l);
                buf[l] = 0;
                name = buf;
                val = eq + 1;
            }
        } else if (a[0] == '-' && a[1] && !a[2]) {
            name = a + 1;
        } else {
            av_cli_error(cmd, "unexpected argument '%s' (see --help)", a);
            return 2;
        }
        const av_opt *o = opts;
        for (; o->name; o++) {
            if (!strcmp(o->name, name) || (o->alias && !strcmp(o->alias, name))) break;
            /* accept underscores for dashes, as MLX-LM config keys use them */
            if (strlen(o->name) == strlen(name)) {
                size_t k = 0;
                while (name[k] && (name[k] == o->name[k] || (name[k] == '_' && o->name[k] == '-'))) k++;
                if (!name[k]) break;
            }
        }
        if (!o->name) { av_cli_error(cmd, "unknown option '%s' (see --help)", a); return 2; }
        if (o->type == AV_OPT_FLAG) {
            if (val) { av_cli_error(cmd, "option --%s takes no value", o->name); return 2; }
            *(int *)o->dst = 1;
            continue;
        }
        if (!val) {
            if (i + 1 >= argc) { av_cli_error(cmd, "option --%s needs a value", o->name); return 2; }
            val = argv[++i];
        }
        char *end = NULL;
        errno = 0;
        switch (o->type) {
        case AV_OPT_STR: *(const char **)o->dst = val; break;
        case AV_OPT_MULTI: {
            av_strlist *l = o->dst;
            if (l->n >= 64) { av_cli_error(cmd, "too many --%s", o->name); return 2; }
            l->v[l->n++] = val;
            break;
        }
        case AV_OPT_INT: {
            long v = strtol(val, &end, 10);
            if (errno || end == val || *end || v < -2147483647L || v > 2147483647L) {
                av_cli_error(cmd, "--%s: '%s' is not an integer", o->name, val);
                return 2;
            }
            if (o->min < o->max && (v < o->min || v > o->max)) {
                av_cli_error(cmd, "--%s: %ld is out of range [%g, %g]", o->name, v, o->min, o->max);
                return 2;
            }
            *(int *)o->dst = (int)v;
            break;
        }
        case AV_OPT_FLOAT: {
            double v = strtod(val, &end);
            if (errno || end == val || *end || !isfinite(v)) {
                av_cli_error(cmd, "--%s: '%s' is not a number", o->name, val);
                return 2;
            }
            if (o->min < o->max && (v < o->min || v > o->max)) {
                av_cli_error(cmd, "--%s: %g is out of range [%g, %g]", o->name, v, o->min, o->max);
                return 2;
            }
            *(double *)o->dst = v;
            break;
        }
        default: break;
        }
    }
    return 0;
}
