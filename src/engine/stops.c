/* EOS and stop strings over a growing text buffer; emits text up to the point where a stop
 * string could still start (moved back to a UTF-8 character start). */
#include "engine/stops.h"
#include <stdlib.h>
#include <string.h>

int av_is_eos(const av_model *m, const av_tokenizer *tok, int32_t id) {
    for (int i = 0; i < m->cfg.n_eos; i++)
        if (m->cfg.eos_token_ids[i] == id) return 1;
    return tok && id == av_tokenizer_eos_id(tok);
}

av_status av_stops_init(av_stops *t, const av_tokenizer *tok, const char *const *stops, int n_stops, av_text_fn on_text, void *ud) {
    memset(t, 0, sizeof *t);
    t->stops = stops;
    t->n_stops = tok ? n_stops : 0;
    for (int i = 0; i < t->n_stops; i++)
        if (strlen(stops[i]) > t->max_stop) t->max_stop = strlen(stops[i]);
    t->on_text = on_text;
    t->ud = ud;
    if (tok && !(t->sd = av_stream_decoder_new(tok))) return av_fail(AV_ERR_NOMEM, "out of memory");
    return AV_OK;
}

void av_stops_free(av_stops *t) {
    av_stream_decoder_free(t->sd);
    free(t->buf);
    memset(t, 0, sizeof *t);
}

static av_status append(av_stops *t, const char *s, size_t n) {
    if (t->len + n + 1 > t->cap) {
        size_t nc = (t->len + n + 1) * 2;
        char *nb = realloc(t->buf, nc);
        if (!nb) return av_fail(AV_ERR_NOMEM, "out of memory");
        t->buf = nb;
        t->cap = nc;
    }
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    t->buf[t->len] = 0;
    return AV_OK;
}

/* Emits text up to `upto` (moved back to a UTF-8 character start); the callback's answer. */
static int emit(av_stops *t, size_t upto) {
    while (upto > t->emitted && upto < t->len && ((unsigned char)t->buf[upto] & 0xC0) == 0x80) upto--;
    if (upto <= t->emitted) return 0;
    int stop = t->on_text ? t->on_text(t->ud, t->buf + t->emitted, upto - t->emitted) : 0;
    t->emitted = upto;
    return stop;
}

av_status av_stops_push(av_stops *t, int32_t id, int *done) {
    *done = 0;
    if (!t->sd) return AV_OK;
    size_t n;
    const char *piece = av_stream_decoder_push(t->sd, id, &n);
    if (n) AV_TRY(append(t, piece, n));
    if (!t->buf) return AV_OK;
    /* a stop string can only be new where it overlaps the text not yet emitted */
    size_t from = t->emitted > t->max_stop ? t->emitted - t->max_stop : 0;
    for (int i = 0; i < t->n_stops; i++) {
        char *at = strstr(t->buf + from, t->stops[i]);
        if (!at) continue;
        t->len = (size_t)(at - t->buf);
        t->buf[t->len] = 0;
        t->cut = 1;
        emit(t, t->len);
        *done = 1;
        return AV_OK;
    }
    size_t hold = t->max_stop ? t->max_stop - 1 : 0;
    if (emit(t, t->len > hold ? t->len - hold : 0)) *done = 2;
    return AV_OK;
}

av_status av_stops_end(av_stops *t, int flush) {
    if (t->sd && flush && !t->cut) {
        size_t n;
        const char *rest = av_stream_decoder_flush(t->sd, &n);
        if (n) AV_TRY(append(t, rest, n));
    }
    if (t->buf) emit(t, t->len);
    return AV_OK;
}

char *av_stops_take_text(av_stops *t) {
    char *s = t->buf ? t->buf : calloc(1, 1);
    t->buf = NULL;
    t->len = t->cap = t->emitted = 0;
    return s;
}
