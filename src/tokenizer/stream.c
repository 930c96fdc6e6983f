/* Streaming decoder: ids are pushed one at a time and the newly complete text comes back. Byte
 * tokens under ByteFallback are held until their run ends, byte-level output keeps a trailing
 * incomplete UTF-8 sequence, and the start-of-text rules (Strip, Metaspace) apply only to the
 * first chunk, so the concatenation equals av_tokenizer_decode(ids, skip_special=1). */
#include "tokenizer/tok_internal.h"
#include <stdlib.h>
#include <string.h>

struct av_stream_decoder {
    const av_tokenizer *t;
    tk_ids pending;
    int first;
    tk_buf tail, out, raw;
};

av_stream_decoder *av_stream_decoder_new(const av_tokenizer *t) {
    if (!t) return NULL;
    av_stream_decoder *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->t = t;
    s->first = 1;
    return s;
}

void av_stream_decoder_free(av_stream_decoder *s) {
    if (!s) return;
    free(s->pending.v);
    free(s->tail.p);
    free(s->out.p);
    free(s->raw.p);
    free(s);
}

static const char *emit(av_stream_decoder *s, int final, size_t *len) {
    s->raw.n = 0;
    int is_raw = 0;
    if (s->pending.n) {
        if (tk_decode_chunk(s->t, s->pending.v, s->pending.n, s->first, &s->raw, &is_raw)) { *len = 0; return ""; }
        s->first = 0;
        s->pending.n = 0;
    }
    if (is_raw || (final && s->tail.n)) {
        if (tk_buf_put(&s->tail, s->raw.p, s->raw.n)) { *len = 0; return ""; }
        size_t used = tk_lossy_append(&s->out, (const unsigned char *)s->tail.p, s->tail.n, !final);
        memmove(s->tail.p, s->tail.p + used, s->tail.n - used);
        s->tail.n -= used;
    } else if (s->raw.n && tk_buf_put(&s->out, s->raw.p, s->raw.n)) {
        *len = 0;
        return "";
    }
    *len = s->out.n;
    return s->out.p ? s->out.p : "";
}

const char *av_stream_decoder_push(av_stream_decoder *s, int32_t id, size_t *len) {
    *len = 0;
    if (!s) return "";
    s->out.n = 0;
    if (s->out.p) s->out.p[0] = 0;
    if (id < 0 || id >= s->t->n_vocab || s->t->special[id]) return "";
    if (tk_ids_push(&s->pending, id)) return "";
    if (tk_decode_holds(s->t, id)) return "";
    return emit(s, 0, len);
}

const char *av_stream_decoder_flush(av_stream_decoder *s, size_t *len) {
    *len = 0;
    if (!s) return "";
    s->out.n = 0;
    if (s->out.p) s->out.p[0] = 0;
    return emit(s, 1, len);
}
