/* anvil bench suite chat: starts `anvil chat` as a user would, in a pseudo-terminal (forkpty), waits
 * for its prompt (startup time), sends one message and waits for the next prompt (exchange time),
 * then /exit. The transcript goes to the suite's log. */
#include "bench.h"
#include <errno.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    char *buf;
    size_t len, cap;
} text;

/* Reads from fd until `want` appears after offset `from` or timeout; 0 when found. */
static int read_until(int fd, text *t, size_t from, const char *want, double timeout) {
    double t0 = av_now();
    for (;;) {
        if (t->len > from && t->len - from >= strlen(want) && memmem(t->buf + from, t->len - from, want, strlen(want))) return 0;
        double left = timeout - (av_now() - t0);
        if (left <= 0) return -1;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, (int)(left * 1000) + 1);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) continue;
        if (t->len + 4096 + 1 > t->cap) {
            size_t nc = t->cap * 2 + 8192;
            char *nb = realloc(t->buf, nc);
            if (!nb) return -1;
            t->buf = nb;
            t->cap = nc;
        }
        ssize_t k = read(fd, t->buf + t->len, 4096);
        if (k <= 0) return -1; /* EIO: the child closed the terminal */
        t->len += (size_t)k;
        t->buf[t->len] = 0;
    }
}

static void log_transcript(bench_ctx *b, const text *t) {
    if (!b->log || !t->buf) return;
    fprintf(b->log, "---- transcript (pseudo-terminal) ----\n");
    for (size_t i = 0; i < t->len; i++) {
        unsigned char c = (unsigned char)t->buf[i];
        if (c == 0x1b) { /* drop escape sequences: ESC [ ... letter */
            i++;
            if (i < t->len && t->buf[i] == '[')
                while (i + 1 < t->len && !((t->buf[i + 1] >= 'A' && t->buf[i + 1] <= 'Z') || (t->buf[i + 1] >= 'a' && t->buf[i + 1] <= 'z'))) i++;
            i++;
            continue;
        }
        if (c == '\r') continue;
        if (c == '\n' || c == '\t' || c >= 0x20) fputc(c, b->log);
    }
    fprintf(b->log, "\n---- end of transcript ----\n");
    fflush(b->log);
}

int bench_suite_chat(bench_ctx *b, cJSON *res) {
    b->nsteps = 2;
    char maxtok[16];
    snprintf(maxtok, sizeof maxtok, "%d", b->quick ? 8 : 32);
    const char *argv[16];
    int a = 0;
    argv[a++] = "anvil";
    argv[a++] = "chat";
    argv[a++] = "--model";
    argv[a++] = b->model;
    argv[a++] = "--max-tokens";
    argv[a++] = maxtok;
    if (b->device) { argv[a++] = "--device"; argv[a++] = b->device; }
    if (b->no_graphs) argv[a++] = "--no-graphs";
    if (b->dtype) { argv[a++] = "--dtype"; argv[a++] = b->dtype; }
    argv[a] = NULL;
    bench_step(b, "starting `anvil chat` in a pseudo-terminal");
    int fd;
    double t0 = av_now();
    pid_t pid = forkpty(&fd, NULL, NULL, NULL);
    if (pid < 0) return bench_fail(b, res, "forkpty: %s", strerror(errno));
    if (pid == 0) {
        execv("/proc/self/exe", (char *const *)argv);
        _exit(127);
    }
    text t = {0};
    int rc = 0;
    double timeout = b->quick ? 60 : 300;
    if (read_until(fd, &t, 0, ">> ", timeout)) {
        rc = bench_fail(b, res, "no chat prompt within %.0fs (see the transcript in chat.log)", timeout);
        goto end;
    }
    double startup = av_now() - t0;
    size_t mark = t.len;
    bench_step(b, "one exchange");
    const char msg[] = "Hello! Tell me a fun fact.\r";
    double t1 = av_now();
    if (write(fd, msg, sizeof msg - 1) != (ssize_t)(sizeof msg - 1)) { rc = bench_fail(b, res, "writing to the terminal: %s", strerror(errno)); goto end; }
    if (read_until(fd, &t, mark + strlen(msg), ">> ", timeout)) {
        rc = bench_fail(b, res, "no reply prompt within %.0fs", timeout);
        goto end;
    }
    double exchange = av_now() - t1;
    if (write(fd, "/exit\r", 6) != 6) {}
    text tail = {0};
    read_until(fd, &tail, 0, "\x01", 10); /* until the child closes the terminal */
    free(tail.buf);
    cJSON *mt = cJSON_AddObjectToObject(res, "metrics");
    bench_num(mt, "startup_s", startup);
    bench_num(mt, "exchange_s", exchange);
    cJSON_AddNumberToObject(mt, "max_tokens", atoi(maxtok));
    bench_log(b, "startup %.3fs (to the first prompt), exchange %.3fs", startup, exchange);
end:
    log_transcript(b, &t);
    free(t.buf);
    close(fd);
    int status = 0;
    for (int i = 0; i < 50; i++) {
        if (waitpid(pid, &status, WNOHANG) == pid) { pid = 0; break; }
        if (i == 20) kill(pid, SIGTERM);
        usleep(100000);
    }
    if (pid) { kill(pid, SIGKILL); waitpid(pid, &status, 0); }
    else if (!rc && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) rc = bench_fail(b, res, "anvil chat exited with status %d", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    if (!rc) cJSON_AddNumberToObject(cJSON_GetObjectItem(res, "metrics"), "exit_status", 0);
    return rc;
}
