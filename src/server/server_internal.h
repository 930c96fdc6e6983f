/* The server's state shared by http.c (libmicrohttpd: routing, auth, bodies, streaming, shutdown)
 * and openai.c (prompts from requests, OpenAI-shaped JSON: completions, chunks, errors, metrics). */
#ifndef AV_SERVER_INTERNAL_H
#define AV_SERVER_INTERNAL_H
#include "anvil.h"
#include <pthread.h>
#include <stdatomic.h>

struct av_server {
    struct MHD_Daemon *d;
    av_model *m;
    const av_tokenizer *tok;
    av_sched *sched;
    av_server_opts o;
    char *model_id, *api_key;
    char *tmpl_src, *tmpl_where, *bos, *eos; /* chat template (NULL: none) and its special tokens */
    int port;
    pthread_mutex_t stop_mu;
    int quiesced, lfd;         /* the listening socket after MHD_quiesce_daemon */
    atomic_int n_active;       /* POST requests between their headers and their answer's last byte */
    atomic_llong n_http, n_chat, n_completion, n_2xx, n_4xx, n_5xx, n_stream, n_disconnect, id_seq;
};

/* A growing byte buffer. */
typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} av_sbuf;
void av_sbuf_add(av_sbuf *b, const char *s, size_t n);
void av_sbuf_printf(av_sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void av_sbuf_free(av_sbuf *b);

/* The prompt's token ids for a parsed request (chat: rendered with the chat template). AV_ERR_ARG /
 * AV_ERR_TEMPLATE: the request's fault. */
av_status av_srv_prompt(av_server *s, const av_server_request *rq, int32_t **ids, int *n);
/* {"error": {"message", "type", "param", "code"}} (malloc'd). */
char *av_srv_error_json(const char *msg, const char *type, const char *param, const char *code);
/* A finished request's whole response (chat.completion / text_completion). */
char *av_srv_completion_json(av_server *s, const av_server_request *rq, const char *id, long created, const char *text,
                             const av_token_logprob *lp, int n_lp, const av_sched_update *u);
/* One SSE event "data: {...}\n\n" for a streamed piece (text and/or lp; finish non-NULL on the last);
 * *text_off: the stream's text offset so far (completions logprobs). */
void av_srv_chunk(av_server *s, av_sbuf *out, const av_server_request *rq, const char *id, long created, int role, const char *text,
                  size_t len, const av_token_logprob *lp, int n_lp, const char *finish, size_t *text_off);
/* The usage-only chunk of stream_options.include_usage. */
void av_srv_usage_chunk(av_server *s, av_sbuf *out, const av_server_request *rq, const char *id, long created, const av_sched_update *u);
/* OpenAI's finish_reason for the scheduler's ("stop", "length"; anything else as given). */
const char *av_srv_finish(const char *f);
/* Prometheus text of /metrics (malloc'd). */
char *av_srv_metrics(av_server *s);
#endif
