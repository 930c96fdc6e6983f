/* LoRA adapters on a loaded model: key parsing, attach (PEFT/MLX-LM init: A ~ U(-1/sqrt(in),
 * 1/sqrt(in)), B = 0, seeded), detach, parameter counts, and the host-side merge used by fuse. */
#include "train/lora.h"
#include "core/memory.h"
#include "core/rng.h"
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void av_lora_spec_default(av_lora_spec *s) {
    s->rank = 8;
    s->alpha = 16.0f;
    s->scale = 2.0f;
    s->dropout = 0.0f;
    s->num_layers = 16;
    s->keys = (1u << AV_PROJ_Q) | (1u << AV_PROJ_V);
}

/* One key: "q_proj", "self_attn.q_proj", "model.layers.0.self_attn.q_proj" style suffixes, or
 * "all"/"all-linear". Returns a mask, 0 when unknown. */
static unsigned parse_one(const char *k, size_t n) {
    if ((n == 3 && !strncmp(k, "all", 3)) || (n == 10 && !strncmp(k, "all-linear", 10))) return (1u << AV_PROJ_COUNT) - 1;
    /* compare the part after the last '.' */
    size_t b = n;
    while (b > 0 && k[b - 1] != '.') b--;
    const char *tail = k + b;
    size_t tn = n - b;
    for (int p = 0; p < AV_PROJ_COUNT; p++) {
        const char *pn = av_proj_names[p];
        if (strlen(pn) != tn || strncmp(pn, tail, tn)) continue;
        if (b > 0) { /* a module prefix must match: "self_attn." / "mlp." */
            size_t mn = strlen(av_proj_module[p]);
            if (b - 1 < mn || strncmp(k + b - 1 - mn, av_proj_module[p], mn)) return 0;
            if (b - 1 > mn && k[b - 2 - mn] != '.') return 0;
        }
        return 1u << p;
    }
    return 0;
}

av_status av_lora_parse_keys(const char *list, unsigned *mask) {
    *mask = 0;
    if (!list) return av_fail(AV_ERR_ARG, "lora keys: empty list");
    const char *p = list;
    while (*p) {
        while (*p && (*p == ',' || isspace((unsigned char)*p))) p++;
        if (!*p) break;
        const char *e = p;
        while (*e && *e != ',' && !isspace((unsigned char)*e)) e++;
        unsigned m = parse_one(p, (size_t)(e - p));
        if (!m)
            return av_fail(AV_ERR_ARG, "lora keys: unknown projection '%.*s' (use q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)",
                           (int)(e - p), p);
        *mask |= m;
        p = e;
    }
    if (!*mask) return av_fail(AV_ERR_ARG, "lora keys: empty list");
    return AV_OK;
}

void av_lora_detach(av_model *m) {
    if (!m || !m->layers) return;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < AV_PROJ_COUNT; p++) {
            av_linear *L = av_layer_proj(&m->layers[l], (av_proj)p);
            if (L->lora_a) m->be->free(L->lora_a);
            if (L->lora_b) m->be->free(L->lora_b);
            L->lora_a = L->lora_b = NULL;
            L->rank = 0;
            L->scale = 0;
        }
}

av_status av_lora_attach_layers(av_model *m, const av_lora_spec *spec, const uint8_t *layer_on, uint64_t seed) {
    int NL = m->cfg.n_layers;
    if (spec->rank <= 0) return av_fail(AV_ERR_ARG, "lora: rank must be positive (got %d)", spec->rank);
    if (!spec->keys || spec->keys >= (1u << AV_PROJ_COUNT)) return av_fail(AV_ERR_ARG, "lora: no valid projection keys");
    if (!layer_on && spec->num_layers == 0) return av_fail(AV_ERR_ARG, "lora: num_layers must be positive or -1 (all)");
    if (!isfinite(spec->scale)) return av_fail(AV_ERR_ARG, "lora: scale is not finite");
    av_lora_detach(m);
    int first = (spec->num_layers < 0 || spec->num_layers >= NL) ? 0 : NL - spec->num_layers;
    av_rng rng;
    av_rng_seed(&rng, seed);
    const av_backend *be = m->be;
    float *host = NULL;
    size_t host_cap = 0;
    for (int l = 0; l < NL; l++) {
        int on = layer_on ? layer_on[l] != 0 : l >= first;
        if (!on) continue;
        for (int p = 0; p < AV_PROJ_COUNT; p++) {
            if (!(spec->keys & (1u << p))) continue;
            av_linear *L = av_layer_proj(&m->layers[l], (av_proj)p);
            int in = L->w.cols, out = L->w.rows, r = spec->rank;
            size_t na = (size_t)r * in, nb = (size_t)out * r, need = na > nb ? na : nb;
            if (need > host_cap) {
                free(host);
                host = malloc(need * sizeof(float));
                host_cap = host ? need : 0;
            }
            L->lora_a = be->alloc(na * sizeof(float), "lora A");
            L->lora_b = be->alloc(nb * sizeof(float), "lora B");
            if (!host || !L->lora_a || !L->lora_b) {
                free(host);
                av_lora_detach(m);
                return av_fail(AV_ERR_NOMEM, "lora: out of memory for adapters");
            }
            float bound = 1.0f / sqrtf((float)in);
            for (size_t i = 0; i < na; i++) host[i] = av_rng_uniform_range(&rng, -bound, bound);
            be->upload(L->lora_a, host, na * sizeof(float));
            be->zero(L->lora_b, nb * sizeof(float));
            L->rank = r;
            L->scale = spec->scale;
        }
    }
    free(host);
    return AV_OK;
}

av_status av_lora_attach(av_model *m, const av_lora_spec *spec, uint64_t seed) {
    return av_lora_attach_layers(m, spec, NULL, seed);
}

long long av_lora_param_count(const av_model *m) {
    long long n = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < AV_PROJ_COUNT; p++) {
            const av_linear *L = av_layer_proj(&m->layers[l], (av_proj)p);
            if (L->lora_a) n += (long long)L->rank * (L->w.rows + L->w.cols);
        }
    return n;
}

int av_lora_count(const av_model *m) {
    int n = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < AV_PROJ_COUNT; p++) n += av_layer_proj(&m->layers[l], (av_proj)p)->lora_a != NULL;
    return n;
}

void av_lora_merge_f32(float *w, const float *a, const float *b, int rows, int cols, int rank, float scale) {
    for (int i = 0; i < rows; i++) {
        const float *bi = b + (size_t)i * rank;
        float *wi = w + (size_t)i * cols;
        for (int j = 0; j < cols; j++) {
            double s = 0;
            for (int k = 0; k < rank; k++) s += (double)bi[k] * a[(size_t)k * cols + j];
            wi[j] = (float)(wi[j] + (double)scale * s);
        }
    }
}
