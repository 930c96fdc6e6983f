/* Decode-path choice and the stepper over av_decoder (device sampler) or av_session + the host
 * sampler; the sampled token's key position is that of the row whose logits are sampled. */
#include "engine/decode.h"
#include <stdlib.h>

av_decode_path av_decode_path_choose(const av_model *m, const av_sampler_params *p) {
    const av_backend *be = m->be;
    return be->graph_begin && be->sample && be->attention_decode && av_sampler_device_ok(p) ? AV_DECODE_DEVICE : AV_DECODE_HOST;
}

struct av_stepper {
    av_session *s;
    av_decode_path path;
    av_decoder *dec; /* AV_DECODE_DEVICE */
    av_sampler smp;
    float *logits;   /* host [V] */
};

av_status av_stepper_new(av_stepper **out, av_session *s, const av_sampler_params *p) {
    av_stepper *st = calloc(1, sizeof *st);
    *out = NULL;
    if (!st) return av_fail(AV_ERR_NOMEM, "out of memory");
    st->s = s;
    st->dec = NULL;
    st->path = av_decode_path_choose(s->m, p);
    st->logits = malloc(sizeof(float) * (size_t)s->m->cfg.vocab_size);
    if (!st->logits || av_sampler_init(&st->smp, p, s->m->cfg.vocab_size) != 0) {
        free(st->logits);
        free(st);
        return av_fail(AV_ERR_NOMEM, "out of memory");
    }
    /* no decoder (e.g. out of device memory for its buffers): the host path still works */
    if (st->path == AV_DECODE_DEVICE && av_decoder_new(&st->dec, s) != AV_OK) st->path = AV_DECODE_HOST;
    *out = st;
    return AV_OK;
}

void av_stepper_free(av_stepper *st) {
    if (!st) return;
    av_decoder_free(st->dec);
    av_sampler_free(&st->smp);
    free(st->logits);
    free(st);
}

av_status av_stepper_sample(av_stepper *st, const int32_t *recent, int n_recent, int32_t *next) {
    if (st->s->n_past <= 0) return av_fail(AV_ERR_ARG, "sample: nothing processed yet");
    av_session_last_logits(st->s, st->logits);
    *next = av_sampler_sample(&st->smp, st->logits, recent, n_recent, st->s->n_past - 1);
    return AV_OK;
}

av_status av_stepper_next(av_stepper *st, int32_t id, const int32_t *recent, int n_recent, int lookahead, int32_t *next) {
    if (st->path == AV_DECODE_DEVICE) {
        const av_sampler_params *p = &st->smp.p;
        return av_decoder_next_ahead(st->dec, id, p->temp > 0.0f ? p->temp : 0.0f, p->top_p, p->seed, next, lookahead);
    }
    AV_TRY(av_session_forward(st->s, &id, 1));
    return av_stepper_sample(st, recent, n_recent, next);
}
