/* One LoRA training step for the attention tests (test_flash_cpu, test_flash_bwd): adapters on q, k,
 * v, o of every layer of the model in dir on backend be, B rows of T tokens, attention kind (AUTO
 * leaves the model's default), flash 0 turns the flash path off, ckpt = gradient checkpointing.
 * Returns every gradient concatenated (*n values), the mean loss and the training buffers' bytes. */
#ifndef ANVIL_TEST_LORA_STEP_H
#define ANVIL_TEST_LORA_STEP_H
#include "test.h"
#include "backend/backend.h"
#include "model/model.h"
#include "train/lora.h"
#include "train/train_model.h"

static inline float *test_lora_grads(const char *dir, const av_backend *be, av_attention_kind kind, int flash, int ckpt, int B, int T,
                                     size_t *n, double *loss, size_t *bytes) {
    av_model *m = NULL;
    av_train_ctx *c = NULL;
    float *all = NULL;
    *n = 0;
    CHECK_OK(av_model_load(&m, dir, be));
    if (!m) return NULL;
    if (kind != AV_ATTN_AUTO) av_model_set_attention(m, kind);
    av_lora_spec spec;
    av_lora_spec_default(&spec);
    spec.num_layers = -1;
    spec.keys = (1u << AV_PROJ_Q) | (1u << AV_PROJ_K) | (1u << AV_PROJ_V) | (1u << AV_PROJ_O);
    CHECK_OK(av_lora_attach(m, &spec, 11));
    CHECK_OK(av_train_ctx_new(&c, m, B, T, ckpt));
    if (c && !flash) CHECK_OK(av_train_set_flash(c, 0));
    if (c) {
        if (bytes) *bytes = av_train_bytes(c);
        av_param *P = av_train_params(c);
        unsigned keep = test_rng_state;
        test_rng_state = 99; /* B starts at zero (PEFT): give it values so dA is tested too */
        for (int i = 0; i < av_train_nparams(c); i++) {
            float *h = test_rnd(P[i].n, 0.05f);
            be->upload(P[i].data, h, P[i].n * sizeof(float));
            free(h);
            *n += P[i].n;
        }
        int32_t *ids = malloc(sizeof(int32_t) * B * T), *tg = malloc(sizeof(int32_t) * B * T);
        for (int i = 0; i < B * T; i++) ids[i] = (int32_t)((i * 7919u + 13) % 500);
        for (int i = 0; i < B * T; i++) tg[i] = (i % T) + 1 < T ? ids[i + 1] : -1;
        test_rng_state = keep;
        double nll;
        int nv;
        av_train_zero_grads(c);
        CHECK_OK(av_train_step(c, ids, tg, B, T, 1.0f / (float)(B * T), 1, &nll, &nv));
        *loss = nll / nv;
        all = malloc(sizeof(float) * *n);
        size_t off = 0;
        for (int i = 0; i < av_train_nparams(c); i++) {
            be->download(all + off, P[i].grad, P[i].n * sizeof(float));
            off += P[i].n;
        }
        free(ids);
        free(tg);
        av_train_ctx_free(c);
    }
    av_model_free(m);
    return all;
}
#endif
