/* The HTTP side of anvil serve on libmicrohttpd (a thread per connection): routing, bearer auth,
 * body limits, requests handed to the scheduler, whole JSON answers or SSE streams, a client that
 * goes away cancelling its request at the engine's next step, and an orderly stop. */
#include "server/server_internal.h"
#include "core/status.h"
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define POLL_MS 50

enum { R_CHAT = 1, R_COMPLETION };

typedef struct {
    int route;
    av_sbuf body;
    int too_big;
} conn_ctx;

typedef struct {
    av_server *s;
    av_server_request rq;
    av_sched_req *req;
    char id[48];
    long created;
    int fd, role_sent, finished;
    size_t text_off;           /* completions logprobs: text_offset of the next token */
    av_sbuf out;
    size_t off;
} stream_ctx;

void av_server_opts_default(av_server_opts *o) {
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->port = 8080;
    o->model_id = "anvil";
    av_sched_opts_default(&o->sched);
    o->max_body = 4u << 20;
    o->timeout_s = 600;
    o->max_connections = 256;
}

int av_server_port(const av_server *s) { return s->port; }

static void count_status(av_server *s, unsigned status) {
    if (status >= 500) atomic_fetch_add(&s->n_5xx, 1);
    else if (status >= 400) atomic_fetch_add(&s->n_4xx, 1);
    else atomic_fetch_add(&s->n_2xx, 1);
}

/* Queues body (malloc'd, taken) with status and content type. */
static enum MHD_Result send_body(av_server *s, struct MHD_Connection *c, unsigned status, char *body, const char *type) {
    if (!body) {
        static char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}";
        struct MHD_Response *r = MHD_create_response_from_buffer(strlen(oom), oom, MHD_RESPMEM_PERSISTENT);
        if (!r) return MHD_NO;
        MHD_add_response_header(r, "Content-Type", "application/json");
        enum MHD_Result q = MHD_queue_response(c, MHD_HTTP_INTERNAL_SERVER_ERROR, r);
        MHD_destroy_response(r);
        count_status(s, 500);
        return q;
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) { free(body); return MHD_NO; }
    MHD_add_response_header(r, "Content-Type", type);
    if (status == MHD_HTTP_UNAUTHORIZED) MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    enum MHD_Result q = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    count_status(s, status);
    return q;
}

static enum MHD_Result send_error(av_server *s, struct MHD_Connection *c, unsigned status, const char *msg, const char *type,
                                  const char *param, const char *code) {
    return send_body(s, c, status, av_srv_error_json(msg, type, param, code), "application/json");
}

/* The client closed its end (or the socket failed). */
static int client_gone(int fd) {
    if (fd < 0) return 0;
    struct pollfd p = {fd, POLLRDHUP, 0};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

static int conn_fd(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

static int authorized(av_server *s, struct MHD_Connection *c) {
    if (!s->api_key) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncmp(h, "Bearer ", 7)) return 0;
    h += 7;
    size_t n = strlen(h), k = strlen(s->api_key);
    unsigned char diff = n != k;
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)(h[i] ^ s->api_key[i % (k ? k : 1)]); /* time independent of where it differs */
    return !diff;
}

/* ---------------------------------------------------------------- streaming */

static void stream_event_error(stream_ctx *x, const char *msg, const char *type) {
    char *e = av_srv_error_json(msg, type, NULL, NULL);
    if (!e) { x->out.oom = 1; return; }
    av_sbuf_printf(&x->out, "data: ");
    av_sbuf_add(&x->out, e, strlen(e));
    av_sbuf_add(&x->out, "\n\n", 2);
    free(e);
}

/* Fills x->out with the next events (blocking up to POLL_MS at a time); 0 when the client left. */
static int stream_fill(stream_ctx *x) {
    av_server *s = x->s;
    while (x->off == x->out.len && !x->finished) {
        x->out.len = x->off = 0;
        if (x->out.oom) return 0;
        if (!x->role_sent && x->rq.kind == AV_SERVER_CHAT) {
            av_srv_chunk(s, &x->out, &x->rq, x->id, x->created, 1, "", 0, NULL, 0, NULL, &x->text_off);
            x->role_sent = 1;
            continue;
        }
        if (client_gone(x->fd)) return 0;
        av_sched_update u;
        if (!av_sched_poll(x->req, POLL_MS, &u)) continue;
        if (u.len || u.n_lp) av_srv_chunk(s, &x->out, &x->rq, x->id, x->created, 0, u.text, u.len, u.lp, u.n_lp, NULL, &x->text_off);
        if (u.done) {
            const char *f = u.finish;
            if (!strcmp(f, "stop") || !strcmp(f, "length")) {
                av_srv_chunk(s, &x->out, &x->rq, x->id, x->created, 0, NULL, 0, NULL, 0, f, &x->text_off);
                if (x->rq.include_usage) av_srv_usage_chunk(s, &x->out, &x->rq, x->id, x->created, &u);
            } else {
                stream_event_error(x, !strcmp(f, "timeout") ? "the request ran out of time" : !strcmp(f, "error") ? u.error : "the request was cancelled",
                                   !strcmp(f, "error") ? "server_error" : "timeout");
            }
            av_sbuf_add(&x->out, "data: [DONE]\n\n", 14);
            x->finished = 1;
        }
        av_sched_update_free(&u);
    }
    return !x->out.oom;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    stream_ctx *x = cls;
    if (!stream_fill(x)) {
        av_sched_cancel(x->req);
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    if (x->off == x->out.len) return MHD_CONTENT_READER_END_OF_STREAM;
    size_t n = x->out.len - x->off < max ? x->out.len - x->off : max;
    memcpy(buf, x->out.p + x->off, n);
    x->off += n;
    return (ssize_t)n;
}

static void stream_free(void *cls) {
    stream_ctx *x = cls;
    if (!x->finished || x->off < x->out.len) atomic_fetch_add(&x->s->n_disconnect, 1); /* the client left early */
    av_sched_req_release(x->req);
    av_server_request_free(&x->rq);
    av_sbuf_free(&x->out);
    free(x);
}

/* ---------------------------------------------------------------- generation */

static enum MHD_Result generate(av_server *s, struct MHD_Connection *c, conn_ctx *cc) {
    av_server_kind kind = cc->route == R_CHAT ? AV_SERVER_CHAT : AV_SERVER_COMPLETION;
    atomic_fetch_add(kind == AV_SERVER_CHAT ? &s->n_chat : &s->n_completion, 1);
    av_server_request rq;
    if (av_server_parse_request(cc->body.p, cc->body.len, kind, &rq) != AV_OK) {
        enum MHD_Result q = send_error(s, c, MHD_HTTP_BAD_REQUEST, av_last_error(), "invalid_request_error", rq.param, NULL);
        av_server_request_free(&rq);
        return q;
    }
    int32_t *ids = NULL;
    int n = 0, ctx = av_sched_ctx(s->sched);
    av_status st = av_srv_prompt(s, &rq, &ids, &n);
    if (st != AV_OK) {
        enum MHD_Result q = st == AV_ERR_NOMEM ? send_error(s, c, 500, av_last_error(), "server_error", NULL, NULL)
                                               : send_error(s, c, 400, av_last_error(), "invalid_request_error", kind == AV_SERVER_CHAT ? "messages" : "prompt", NULL);
        av_server_request_free(&rq);
        free(ids);
        return q;
    }
    if (n < 1 || n >= ctx) {
        char msg[160];
        snprintf(msg, sizeof msg, "the prompt has %d tokens; this server's context holds %d (prompt + completion)", n, ctx);
        av_server_request_free(&rq);
        free(ids);
        return send_error(s, c, 400, msg, "invalid_request_error", kind == AV_SERVER_CHAT ? "messages" : "prompt", "context_length_exceeded");
    }
    av_sched_params p;
    memset(&p, 0, sizeof p);
    p.max_tokens = rq.max_tokens > 0 ? rq.max_tokens : 512;
    p.sampler = rq.sampler;
    if (!rq.has_seed) { /* as OpenAI: without a seed, sampled answers differ from request to request */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        p.sampler.seed = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)ts.tv_sec ^ (uint64_t)atomic_load(&s->id_seq) << 32;
    }
    for (int i = 0; i < rq.n_stops; i++) p.stops[i] = rq.stops[i];
    p.n_stops = rq.n_stops;
    p.bias_ids = rq.bias_ids;
    p.bias = rq.bias;
    p.n_bias = rq.n_bias;
    p.logprobs = rq.logprobs;
    p.top_logprobs = rq.top_logprobs;
    p.timeout_s = s->o.timeout_s;
    av_sched_req *req;
    st = av_sched_submit(s->sched, ids, n, &p, &req);
    free(ids);
    if (st != AV_OK) {
        enum MHD_Result q = st == AV_ERR_UNSUPPORTED ? send_error(s, c, MHD_HTTP_SERVICE_UNAVAILABLE, av_last_error(), "server_error", NULL, "server_busy")
                            : st == AV_ERR_ARG   ? send_error(s, c, 400, av_last_error(), "invalid_request_error", NULL, NULL)
                                                 : send_error(s, c, 500, av_last_error(), "server_error", NULL, NULL);
        av_server_request_free(&rq);
        return q;
    }
    char id[48];
    snprintf(id, sizeof id, "%s-%lld%08lx", kind == AV_SERVER_CHAT ? "chatcmpl" : "cmpl", (long long)atomic_fetch_add(&s->id_seq, 1),
             (unsigned long)time(NULL));
    long created = (long)time(NULL);
    int fd = conn_fd(c);
    if (rq.stream) {
        stream_ctx *x = calloc(1, sizeof *x);
        struct MHD_Response *r = x ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, x, stream_free) : NULL;
        if (!r) {
            av_sched_req_release(req);
            av_server_request_free(&rq);
            free(x);
            return send_error(s, c, 500, "out of memory", "server_error", NULL, NULL);
        }
        x->s = s;
        x->rq = rq;
        x->req = req;
        memcpy(x->id, id, sizeof id);
        x->created = created;
        x->fd = fd;
        atomic_fetch_add(&s->n_stream, 1);
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        enum MHD_Result q = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        count_status(s, 200);
        return q;
    }
    av_sbuf text = {0};
    av_token_logprob *lp = NULL;
    int n_lp = 0, gone = 0;
    av_sched_update u;
    for (;;) {
        if (!av_sched_poll(req, POLL_MS, &u)) {
            if (client_gone(fd)) { gone = 1; break; }
            continue;
        }
        if (u.len) av_sbuf_add(&text, u.text, u.len);
        if (u.n_lp) {
            av_token_logprob *nl = realloc(lp, sizeof *lp * (size_t)(n_lp + u.n_lp));
            if (nl) {
                memcpy(nl + n_lp, u.lp, sizeof *lp * (size_t)u.n_lp);
                lp = nl;
                n_lp += u.n_lp;
            } else {
                text.oom = 1;
            }
        }
        if (u.done) break;
        av_sched_update_free(&u);
        if (client_gone(fd)) { gone = 1; break; }
    }
    enum MHD_Result q;
    if (gone) {
        atomic_fetch_add(&s->n_disconnect, 1);
        q = MHD_NO; /* nobody to answer: close the connection */
    } else if (text.oom) {
        q = send_error(s, c, 500, "out of memory", "server_error", NULL, NULL);
    } else if (!strcmp(u.finish, "stop") || !strcmp(u.finish, "length")) {
        q = send_body(s, c, 200, av_srv_completion_json(s, &rq, id, created, text.p ? text.p : "", lp, n_lp, &u), "application/json");
    } else if (!strcmp(u.finish, "timeout")) {
        q = send_error(s, c, MHD_HTTP_GATEWAY_TIMEOUT, "the request ran out of time", "timeout", NULL, "timeout");
    } else if (!strcmp(u.finish, "error")) {
        q = send_error(s, c, 500, u.error, "server_error", NULL, NULL);
    } else {
        q = send_error(s, c, MHD_HTTP_SERVICE_UNAVAILABLE, "the request was cancelled (the server is stopping)", "server_error", NULL, "cancelled");
    }
    if (!gone) av_sched_update_free(&u);
    av_sched_req_release(req);
    av_sbuf_free(&text);
    free(lp);
    av_server_request_free(&rq);
    return q;
}

/* ---------------------------------------------------------------- routing */

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method, const char *version,
                               const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    av_server *s = cls;
    conn_ctx *cc = *con_cls;
    if (!cc) {
        atomic_fetch_add(&s->n_http, 1);
        int get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
        if (!strncmp(url, "/v1/", 4)) url += 3; /* /v1/x and /x alike */
        if (!strcmp(url, "/health")) {
            if (!get) return send_error(s, c, MHD_HTTP_METHOD_NOT_ALLOWED, "use GET", "invalid_request_error", NULL, "method_not_allowed");
            return send_body(s, c, 200, strdup("{\"status\":\"ok\"}"), "application/json");
        }
        int route = !strcmp(url, "/chat/completions") ? R_CHAT : !strcmp(url, "/completions") ? R_COMPLETION : 0;
        int known = route || !strcmp(url, "/models") || !strcmp(url, "/metrics");
        if (!known) return send_error(s, c, MHD_HTTP_NOT_FOUND, "no such endpoint", "invalid_request_error", NULL, "not_found");
        if (!authorized(s, c))
            return send_error(s, c, MHD_HTTP_UNAUTHORIZED, "missing or incorrect API key (Authorization: Bearer KEY)", "invalid_request_error",
                              NULL, "invalid_api_key");
        if (!route) {
            if (!get) return send_error(s, c, MHD_HTTP_METHOD_NOT_ALLOWED, "use GET", "invalid_request_error", NULL, "method_not_allowed");
            if (!strcmp(url, "/metrics")) return send_body(s, c, 200, av_srv_metrics(s), "text/plain; version=0.0.4");
            cJSON *o = cJSON_CreateObject(), *d = cJSON_AddArrayToObject(o, "data"), *e = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "object", "list");
            cJSON_AddStringToObject(e, "id", s->model_id);
            cJSON_AddStringToObject(e, "object", "model");
            cJSON_AddNumberToObject(e, "created", 0);
            cJSON_AddStringToObject(e, "owned_by", "anvil");
            cJSON_AddItemToArray(d, e);
            char *body = cJSON_PrintUnformatted(o);
            cJSON_Delete(o);
            return send_body(s, c, 200, body, "application/json");
        }
        if (!post) return send_error(s, c, MHD_HTTP_METHOD_NOT_ALLOWED, "use POST", "invalid_request_error", NULL, "method_not_allowed");
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > s->o.max_body)
            return send_error(s, c, 413, "request body too large", "invalid_request_error", NULL, "request_too_large");
        if (!(cc = calloc(1, sizeof *cc))) return MHD_NO;
        atomic_fetch_add(&s->n_active, 1);
        cc->route = route;
        *con_cls = cc;
        return MHD_YES;
    }
    if (*upload_size) {
        if (!cc->too_big && cc->body.len + *upload_size > s->o.max_body) {
            cc->too_big = 1;
            av_sbuf_free(&cc->body);
        }
        if (!cc->too_big) av_sbuf_add(&cc->body, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    if (cc->too_big) return send_error(s, c, 413, "request body too large", "invalid_request_error", NULL, "request_too_large");
    if (cc->body.oom) return send_error(s, c, 500, "out of memory", "server_error", NULL, NULL);
    return generate(s, c, cc);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)c, (void)toe;
    av_server *s = cls;
    conn_ctx *cc = *con_cls;
    if (!cc) return;
    atomic_fetch_sub(&s->n_active, 1);
    av_sbuf_free(&cc->body);
    free(cc);
    *con_cls = NULL;
}

/* ---------------------------------------------------------------- lifetime */

static void server_free(av_server *s) {
    av_sched_free(s->sched);
    free(s->model_id);
    free(s->api_key);
    free(s->tmpl_src);
    free(s->tmpl_where);
    free(s->bos);
    free(s->eos);
    free(s);
}

static av_status resolve(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len) {
    memset(ss, 0, sizeof *ss);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    if (getaddrinfo(host, ps, &hints, &res) != 0 || !res) return av_fail(AV_ERR_ARG, "serve: cannot resolve host '%s'", host);
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return AV_OK;
}

av_status av_server_start(av_server **out, av_model *m, const av_tokenizer *tok, const av_server_opts *o) {
    *out = NULL;
    av_server *s = calloc(1, sizeof *s);
    if (!s) return av_fail(AV_ERR_NOMEM, "out of memory");
    s->m = m;
    s->tok = tok;
    s->o = *o;
    pthread_mutex_init(&s->stop_mu, NULL);
    if (!s->o.host) s->o.host = "127.0.0.1";
    if (!s->o.max_body) s->o.max_body = 4u << 20;
    if (s->o.max_connections <= 0) s->o.max_connections = 256;
    s->model_id = strdup(o->model_id ? o->model_id : "anvil");
    s->api_key = o->api_key ? strdup(o->api_key) : NULL;
    if (!s->model_id || (o->api_key && !s->api_key)) { server_free(s); return av_fail(AV_ERR_NOMEM, "out of memory"); }
    av_chat_config cc = {0};
    av_status st = o->model_path ? av_chat_config_load(&cc, o->model_path) : AV_OK;
    if (st != AV_OK) { server_free(s); return st; }
    s->bos = cc.bos, s->eos = cc.eos;
    if (o->chat_template) {
        s->tmpl_src = strdup(o->chat_template);
        s->tmpl_where = strdup("--chat-template");
        free(cc.template_src);
        free(cc.where);
    } else {
        s->tmpl_src = cc.template_src;
        s->tmpl_where = cc.where;
    }
    struct sockaddr_storage ss;
    socklen_t sl;
    av_sched_opts so = o->sched;
    so.run_on_caller = 1;
    if ((st = resolve(s->o.host, s->o.port, &ss, &sl)) != AV_OK || (st = av_sched_new(&s->sched, m, tok, &so)) != AV_OK) {
        server_free(s);
        return st;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ITC;
    if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    s->d = MHD_start_daemon(flags, (uint16_t)s->o.port, NULL, NULL, handler, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->o.max_connections, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                            MHD_OPTION_NOTIFY_COMPLETED, completed, s, MHD_OPTION_END);
    if (!s->d) {
        server_free(s);
        return av_fail(AV_ERR_IO, "serve: cannot listen on %s:%d (address in use or not available)", o->host ? o->host : "127.0.0.1", o->port);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : s->o.port;
    (void)sl;
    *out = s;
    return AV_OK;
}

void av_server_run(av_server *s) {
    av_sched_run(s->sched);
}

void av_server_shutdown(av_server *s, double grace_s) {
    pthread_mutex_lock(&s->stop_mu);
    if (!s->quiesced) {
        s->lfd = MHD_quiesce_daemon(s->d); /* no new connections */
        s->quiesced = 1;
    }
    pthread_mutex_unlock(&s->stop_mu);
    av_sched_drain(s->sched, 0); /* no new requests on open ones */
    double end = av_now() + grace_s;
    for (;;) {
        av_sched_stats st;
        av_sched_stats_get(s->sched, &st);
        if (st.running + st.queued == 0 || av_now() >= end) break;
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    av_sched_drain(s->sched, 1); /* the rest is cancelled (their clients get an answer); av_server_run returns */
}

void av_server_free(av_server *s) {
    if (!s) return;
    av_sched_drain(s->sched, 1);
    av_sched_run(s->sched); /* ends anything left, so no connection waits for the engine */
    /* answers still being written (every request has ended) get a moment to reach their clients */
    for (int i = 0; i < 150 && atomic_load(&s->n_active) > 0; i++) {
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    MHD_stop_daemon(s->d);
    if (s->quiesced && s->lfd != MHD_INVALID_SOCKET) close(s->lfd);
    pthread_mutex_destroy(&s->stop_mu);
    server_free(s);
}
