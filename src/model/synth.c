/* Random model writer: weights ~ N(0, 0.02) like HF's initializer, norms = 1; deterministic per seed
 * (each tensor has its own stream, filled in parallel blocks). */
#include "model/config.h"
#include "core/memory.h"
#include "formats/safetensors.h"
#include "model/model.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int av_synth_preset(av_config *c, const char *name) {
    memset(c, 0, sizeof *c);
    c->rope_theta = 10000.0;
    c->rope_factor = 1.0;
    c->bos_token_id = 1;
    c->eos_token_ids[0] = 2;
    c->n_eos = 1;
    c->dtype = AV_BF16;
    c->max_position_embeddings = 2048;
    c->rms_norm_eps = 1e-5f;
    if (!strcmp(name, "tinyllama-1.1b")) {
        c->vocab_size = 32000; c->hidden_size = 2048; c->intermediate_size = 5632; c->n_layers = 22;
        c->n_heads = 32; c->n_kv_heads = 4; c->head_dim = 64;
    } else if (!strcmp(name, "llama-3.2-1b")) {
        c->vocab_size = 128256; c->hidden_size = 2048; c->intermediate_size = 8192; c->n_layers = 16;
        c->n_heads = 32; c->n_kv_heads = 8; c->head_dim = 64; c->rope_theta = 500000.0; c->tie_word_embeddings = 1;
        c->rope_type = AV_ROPE_LLAMA3; c->rope_factor = 32; c->rope_low_freq_factor = 1; c->rope_high_freq_factor = 4;
        c->rope_original_max_pos = 8192; c->max_position_embeddings = 131072; c->bos_token_id = 128000;
        c->eos_token_ids[0] = 128001; c->rms_norm_eps = 1e-5f;
    } else if (!strcmp(name, "tiny")) {
        c->vocab_size = 512; c->hidden_size = 64; c->intermediate_size = 176; c->n_layers = 2;
        c->n_heads = 4; c->n_kv_heads = 2; c->head_dim = 16;
    } else {
        return -1;
    }
    return 0;
}

static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void fill_normal(void *dst, av_dtype dt, size_t n, uint64_t seed, float std) {
    const size_t B = 1 << 16;
#pragma omp parallel for schedule(static)
    for (size_t b = 0; b < (n + B - 1) / B; b++) {
        uint64_t st = mix(seed ^ mix(b + 1));
        size_t end = (b + 1) * B < n ? (b + 1) * B : n;
        for (size_t i = b * B; i < end; i += 2) {
            st += 0x9E3779B97F4A7C15ull;
            uint64_t r = mix(st);
            double u1 = ((r >> 11) + 1.0) * (1.0 / 9007199254740993.0), u2 = (mix(r) >> 11) * (1.0 / 9007199254740992.0);
            double rad = sqrt(-2.0 * log(u1));
            float v[2] = {(float)(rad * cos(2 * M_PI * u2)) * std, (float)(rad * sin(2 * M_PI * u2)) * std};
            for (int k = 0; k < 2 && i + k < end; k++) {
                if (dt == AV_F32) ((float *)dst)[i + k] = v[k];
                else if (dt == AV_BF16) ((uint16_t *)dst)[i + k] = av_f32_to_bf16(v[k]);
                else ((uint16_t *)dst)[i + k] = av_f32_to_f16(v[k]);
            }
        }
    }
}

static void fill_ones(void *dst, av_dtype dt, size_t n) {
    float one = 1.0f;
    for (size_t i = 0; i < n; i++) av_convert_from_f32((char *)dst + i * av_dtype_size(dt), dt, &one, 1);
}

av_status av_synth_write(const av_config *c, const char *dir, uint64_t seed, av_dtype dt) {
    if (dt != AV_F32 && dt != AV_F16 && dt != AV_BF16) return av_fail(AV_ERR_ARG, "synth: dtype must be f32, f16 or bf16");
    AV_TRY(av_mkdir_p(dir));
    av_config cc = *c;
    cc.dtype = dt;
    int D = c->hidden_size, F = c->intermediate_size, q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
    size_t total = (size_t)av_config_param_count(c) * av_dtype_size(dt);
    char *blob = av_alloc(total, "synthetic weights");
    if (!blob) return av_fail_prefix(AV_ERR_NOMEM, "%s", dir);
    av_st_writer w;
    av_st_writer_init(&w);
    size_t off = 0;
    uint64_t k = 0;
    av_status st = AV_OK;
#define ADD(NAME, R, C, NORM) do { \
        int64_t shp[2] = {(R), (C)}; size_t n = (size_t)(R) * (size_t)((C) ? (C) : 1); \
        if (NORM) fill_ones(blob + off, dt, n); else fill_normal(blob + off, dt, n, mix(seed + (++k)), 0.02f); \
        if (st == AV_OK) st = av_st_writer_add(&w, NAME, dt, (C) ? 2 : 1, shp, blob + off); \
        off += n * av_dtype_size(dt); } while (0)
    char name[160];
    ADD("model.embed_tokens.weight", c->vocab_size, D, 0);
    for (int l = 0; l < c->n_layers; l++) {
        int rows[AV_PROJ_COUNT] = {q, kv, kv, D, F, F, D}, cols[AV_PROJ_COUNT] = {D, D, D, q, D, D, F};
        for (int p = 0; p < AV_PROJ_COUNT; p++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.%s.weight", l, av_proj_module[p], av_proj_names[p]);
            ADD(name, rows[p], cols[p], 0);
        }
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        ADD(name, D, 0, 1);
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        ADD(name, D, 0, 1);
    }
    ADD("model.norm.weight", D, 0, 1);
    if (!c->tie_word_embeddings) ADD("lm_head.weight", c->vocab_size, D, 0);
#undef ADD
    char path[4200];
    av_st_writer_set_metadata(&w, "{\"format\":\"pt\"}");
    if (st == AV_OK) st = av_st_writer_write(&w, av_path_join(path, sizeof path, dir, "model.safetensors"));
    if (st == AV_OK) st = av_config_save(&cc, av_path_join(path, sizeof path, dir, "config.json"));
    av_st_writer_free(&w);
    av_free(blob);
    return st;
}
