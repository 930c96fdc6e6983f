/* LlamaForCausalLM config parsing. Accepts rope settings at the top level (transformers 4.x:
 * rope_theta + rope_scaling) or nested (5.x: rope_parameters). */
#include "model/config.h"
#include "core/memory.h"
#include "core/status.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int supported_arch(const char *a) {
    return !strcmp(a, "LlamaForCausalLM") || !strcmp(a, "MistralForCausalLM");
}

/* An optional integer field (absent or null: def) that must be a whole number in [lo, hi]. */
static av_status opt_int(const cJSON *o, const char *key, int def, int lo, int hi, const char *where, int *dst) {
    const cJSON *v = av_json_get(o, key);
    if (!v || cJSON_IsNull(v)) { *dst = def; return AV_OK; }
    if (!cJSON_IsNumber(v) || v->valuedouble < lo || v->valuedouble > hi || v->valuedouble != floor(v->valuedouble))
        return av_fail(AV_ERR_FORMAT, "%s: \"%s\" must be an integer in [%d, %d]", where, key, lo, hi);
    *dst = (int)v->valuedouble;
    return AV_OK;
}

static av_status parse_rope(av_config *c, const cJSON *rp, const char *where) {
    if (!rp) return AV_OK;
    if (!cJSON_IsObject(rp)) return av_fail(AV_ERR_FORMAT, "%s: rope scaling/parameters must be an object", where);
    c->rope_theta = av_json_num(rp, "rope_theta", c->rope_theta);
    const char *t = av_json_str(rp, "rope_type", av_json_str(rp, "type", "default"));
    if (!strcmp(t, "default")) c->rope_type = AV_ROPE_DEFAULT;
    else if (!strcmp(t, "linear")) c->rope_type = AV_ROPE_LINEAR;
    else if (!strcmp(t, "llama3")) c->rope_type = AV_ROPE_LLAMA3;
    else return av_fail(AV_ERR_UNSUPPORTED, "%s: unsupported rope_type '%s' (supported: default, linear, llama3)", where, t);
    c->rope_factor = av_json_num(rp, "factor", 1.0);
    c->rope_low_freq_factor = av_json_num(rp, "low_freq_factor", 1.0);
    c->rope_high_freq_factor = av_json_num(rp, "high_freq_factor", 4.0);
    AV_TRY(opt_int(rp, "original_max_position_embeddings", 8192, 1, 100000000, where, &c->rope_original_max_pos));
    if (c->rope_type != AV_ROPE_DEFAULT && !(c->rope_factor > 0))
        return av_fail(AV_ERR_FORMAT, "%s: rope scaling factor must be > 0", where);
    return AV_OK;
}

static av_status parse_obj(av_config *c, const cJSON *j, const char *where) {
    memset(c, 0, sizeof *c);
    if (!cJSON_IsObject(j)) return av_fail(AV_ERR_FORMAT, "%s: not a JSON object", where);
    const cJSON *archs = av_json_get(j, "architectures");
    const char *mt = av_json_str(j, "model_type", NULL);
    if (cJSON_IsArray(archs) && cJSON_GetArraySize(archs) > 0) {
        const cJSON *a0 = cJSON_GetArrayItem(archs, 0);
        if (!cJSON_IsString(a0) || !supported_arch(a0->valuestring))
            return av_fail(AV_ERR_UNSUPPORTED, "%s: unsupported architecture '%s' (anvil runs LlamaForCausalLM)", where,
                           cJSON_IsString(a0) ? a0->valuestring : "?");
    } else if (!mt || (strcmp(mt, "llama") && strcmp(mt, "mistral"))) {
        return av_fail(AV_ERR_UNSUPPORTED, "%s: unsupported model_type '%s' (anvil runs llama)", where, mt ? mt : "(none)");
    }
    const char *act = av_json_str(j, "hidden_act", "silu");
    if (strcmp(act, "silu")) return av_fail(AV_ERR_UNSUPPORTED, "%s: unsupported hidden_act '%s'", where, act);
    if (av_json_bool(j, "attention_bias", 0) || av_json_bool(j, "mlp_bias", 0))
        return av_fail(AV_ERR_UNSUPPORTED, "%s: attention_bias/mlp_bias are not supported", where);
    struct { const char *key; int *dst; int required; } ints[] = {
        {"vocab_size", &c->vocab_size, 1}, {"hidden_size", &c->hidden_size, 1},
        {"intermediate_size", &c->intermediate_size, 1}, {"num_hidden_layers", &c->n_layers, 1},
        {"num_attention_heads", &c->n_heads, 1}, {"num_key_value_heads", &c->n_kv_heads, 0},
        {"head_dim", &c->head_dim, 0}, {"max_position_embeddings", &c->max_position_embeddings, 0},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        const cJSON *v = av_json_get(j, ints[i].key);
        if (!v) {
            if (ints[i].required) return av_fail(AV_ERR_FORMAT, "%s: missing \"%s\"", where, ints[i].key);
            continue;
        }
        if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > 1e8 || v->valuedouble != floor(v->valuedouble))
            return av_fail(AV_ERR_FORMAT, "%s: \"%s\" must be a positive integer", where, ints[i].key);
        *ints[i].dst = (int)v->valuedouble;
    }
    if (!c->n_kv_heads) c->n_kv_heads = c->n_heads;
    if (!c->head_dim) {
        if (c->hidden_size % c->n_heads) return av_fail(AV_ERR_FORMAT, "%s: hidden_size not divisible by num_attention_heads", where);
        c->head_dim = c->hidden_size / c->n_heads;
    }
    if (c->n_heads % c->n_kv_heads)
        return av_fail(AV_ERR_FORMAT, "%s: num_attention_heads %d not divisible by num_key_value_heads %d", where, c->n_heads, c->n_kv_heads);
    if (c->head_dim > 512) return av_fail(AV_ERR_UNSUPPORTED, "%s: head_dim %d is larger than 512", where, c->head_dim);
    if (c->head_dim % 2) return av_fail(AV_ERR_FORMAT, "%s: head_dim must be even", where);
    if (!c->max_position_embeddings) c->max_position_embeddings = 2048;
    c->rms_norm_eps = (float)av_json_num(j, "rms_norm_eps", 1e-6);
    c->tie_word_embeddings = av_json_bool(j, "tie_word_embeddings", 0);
    c->rope_theta = av_json_num(j, "rope_theta", 10000.0);
    c->rope_factor = 1.0;
    AV_TRY(parse_rope(c, av_json_get(j, "rope_scaling"), where));
    AV_TRY(parse_rope(c, av_json_get(j, "rope_parameters"), where));
    AV_TRY(opt_int(j, "bos_token_id", -1, -1, 100000000, where, &c->bos_token_id));
    const cJSON *eos = av_json_get(j, "eos_token_id");
    if (cJSON_IsNumber(eos)) c->eos_token_ids[c->n_eos++] = eos->valueint;
    else if (cJSON_IsArray(eos))
        for (const cJSON *e = eos->child; e && c->n_eos < AV_MAX_EOS; e = e->next)
            if (cJSON_IsNumber(e)) c->eos_token_ids[c->n_eos++] = e->valueint;
    const char *dt = av_json_str(j, "torch_dtype", av_json_str(j, "dtype", "bfloat16"));
    if (av_dtype_parse(dt, &c->dtype) != 0) c->dtype = AV_BF16;
    const cJSON *q = av_json_get(j, "quantization");
    if (q) {
        AV_TRY(opt_int(q, "bits", 0, 0, 16, where, &c->quant_bits));
        AV_TRY(opt_int(q, "group_size", 64, 1, 1 << 20, where, &c->quant_group_size));
    }
    return AV_OK;
}

av_status av_config_parse(av_config *c, const char *txt, const char *where) {
    cJSON *j = cJSON_Parse(txt);
    if (!j) return av_fail(AV_ERR_FORMAT, "%s: invalid JSON", where);
    av_status st = parse_obj(c, j, where);
    cJSON_Delete(j);
    return st;
}

av_status av_config_load(av_config *c, const char *path) {
    cJSON *j;
    AV_TRY(av_json_load(path, &j));
    av_status st = parse_obj(c, j, path);
    cJSON_Delete(j);
    return st;
}

void av_config_inv_freq(const av_config *c, float *inv) {
    int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        /* HF: 1 / theta^(arange(0, dim, 2)/dim), computed in float64 via int64 arange then float */
        double f = 1.0 / pow(c->rope_theta, (double)(2 * i) / (double)c->head_dim);
        if (c->rope_type == AV_ROPE_LINEAR) f /= c->rope_factor;
        else if (c->rope_type == AV_ROPE_LLAMA3) {
            double low_wl = c->rope_original_max_pos / c->rope_low_freq_factor;
            double high_wl = c->rope_original_max_pos / c->rope_high_freq_factor;
            double wl = 2 * M_PI / f;
            if (wl > low_wl) f /= c->rope_factor;
            else if (wl >= high_wl) {
                double smooth = (c->rope_original_max_pos / wl - c->rope_low_freq_factor) /
                                (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (1 - smooth) * f / c->rope_factor + smooth * f;
            }
        }
        inv[i] = (float)f;
    }
}

void av_config_rope_factors(const av_config *c, float *factors) {
    av_config_inv_freq(c, factors); /* scaled */
    for (int i = 0; i < c->head_dim / 2; i++)
        factors[i] = (float)(1.0 / pow(c->rope_theta, (double)(2 * i) / (double)c->head_dim) / (double)factors[i]);
}

/* Llama-3 scaling multiplies inv_freq by 1/F below the low-frequency wavelength, by 1 above the
 * high one and blends linearly in 1/wavelength between: s = (1/wl - 1/low) / (1/high - 1/low),
 * divisor = 1 / ((1 - s)/F + s). Two blended points fix the line; with fewer, the thresholds sit
 * in the gaps between the model's wavelengths. */
av_status av_config_llama3_fit(av_config *c, const float *factors, const char *where) {
    int half = c->head_dim / 2, last_one = -1, first_f = half, s0 = -1, s1 = -1;
    if (half < 2 || half > 512) return av_fail(AV_ERR_UNSUPPORTED, "%s: rope_freqs: head size %d", where, c->head_dim);
    double F = factors[half - 1], wl[512];
    for (int i = 0; i < half; i++) {
        wl[i] = 2 * M_PI * pow(c->rope_theta, (double)(2 * i) / (double)c->head_dim);
        double r = factors[i];
        if (fabs(r - 1) < 1e-6) last_one = i;
        else if (fabs(r - F) < 1e-6 * F) { if (first_f == half) first_f = i; }
        else { if (s0 < 0) s0 = i; s1 = i; }
    }
    if (!(F > 1)) return av_fail(AV_ERR_UNSUPPORTED, "%s: rope_freqs is not a Llama-3 scaling (last divisor %g)", where, F);
    double inv_low, inv_high; /* 1/low_wl, 1/high_wl */
    double sa = s0 >= 0 ? (1 / factors[s0] - 1 / F) / (1 - 1 / F) : 0, sb = s1 >= 0 ? (1 / factors[s1] - 1 / F) / (1 - 1 / F) : 0;
    if (s0 >= 0 && s1 > s0) {
        double A = (sa - sb) / (1 / wl[s0] - 1 / wl[s1]); /* s = A (1/wl - 1/low) */
        inv_low = 1 / wl[s0] - sa / A;
        inv_high = inv_low + 1 / A;
    } else {
        double hi_end = last_one >= 0 ? wl[last_one] : wl[0] / 2, lo_end = first_f < half ? wl[first_f] : wl[half - 1] * 2;
        if (s0 >= 0) { /* one blended point: high threshold halfway to it, low from the line through it */
            inv_high = 2 / (hi_end + wl[s0]);
            inv_low = (1 / wl[s0] - sa * inv_high) / (1 - sa);
        } else {
            inv_high = 1 / (hi_end * 1.001);
            inv_low = 1 / (lo_end * 0.999);
        }
    }
    if (!(inv_high > inv_low && inv_low > 0)) return av_fail(AV_ERR_UNSUPPORTED, "%s: rope_freqs is not a Llama-3 scaling", where);
    av_config t = *c;
    t.rope_type = AV_ROPE_LLAMA3;
    t.rope_factor = F;
    t.rope_original_max_pos = 8192; /* only the ratios below matter; Llama-3's value */
    t.rope_low_freq_factor = t.rope_original_max_pos * inv_low;
    t.rope_high_freq_factor = t.rope_original_max_pos * inv_high;
    t.rope_low_freq_factor = round(t.rope_low_freq_factor * 1e6) / 1e6; /* 128 rather than 127.999999112 */
    t.rope_high_freq_factor = round(t.rope_high_freq_factor * 1e6) / 1e6;
    float g[512];
    av_config_rope_factors(&t, g);
    for (int i = 0; i < half; i++)
        if (fabs(g[i] - factors[i]) > 1e-5 * factors[i])
            return av_fail(AV_ERR_UNSUPPORTED, "%s: rope_freqs is not a Llama-3 scaling (divisor %d: %g, the best fit gives %g)", where, i,
                           factors[i], g[i]);
    *c = t;
    return AV_OK;
}

long long av_config_param_count(const av_config *c) {
    /* in double: a config may hold absurd sizes (each up to 1e8); the count saturates */
    double D = c->hidden_size, F = c->intermediate_size, V = c->vocab_size;
    double q = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
    double layer = D * q + 2 * D * kv + q * D + 3 * D * F + 2 * D;
    double n = V * D + c->n_layers * layer + D + (c->tie_word_embeddings ? 0 : V * D);
    return n < 9.2e18 ? (long long)n : 9200000000000000000LL;
}

av_status av_config_save(const av_config *c, const char *path) {
    cJSON *j = cJSON_CreateObject();
    cJSON *a = cJSON_AddArrayToObject(j, "architectures");
    cJSON_AddItemToArray(a, cJSON_CreateString("LlamaForCausalLM"));
    cJSON_AddStringToObject(j, "model_type", "llama");
    cJSON_AddNumberToObject(j, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(j, "hidden_size", c->hidden_size);
    cJSON_AddNumberToObject(j, "intermediate_size", c->intermediate_size);
    cJSON_AddNumberToObject(j, "num_hidden_layers", c->n_layers);
    cJSON_AddNumberToObject(j, "num_attention_heads", c->n_heads);
    cJSON_AddNumberToObject(j, "num_key_value_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(j, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(j, "max_position_embeddings", c->max_position_embeddings);
    cJSON_AddNumberToObject(j, "rms_norm_eps", c->rms_norm_eps);
    cJSON_AddNumberToObject(j, "rope_theta", c->rope_theta);
    if (c->rope_type != AV_ROPE_DEFAULT) {
        cJSON *rs = cJSON_AddObjectToObject(j, "rope_scaling");
        cJSON_AddStringToObject(rs, "rope_type", c->rope_type == AV_ROPE_LINEAR ? "linear" : "llama3");
        cJSON_AddNumberToObject(rs, "factor", c->rope_factor);
        if (c->rope_type == AV_ROPE_LLAMA3) {
            cJSON_AddNumberToObject(rs, "low_freq_factor", c->rope_low_freq_factor);
            cJSON_AddNumberToObject(rs, "high_freq_factor", c->rope_high_freq_factor);
            cJSON_AddNumberToObject(rs, "original_max_position_embeddings", c->rope_original_max_pos);
        }
    }
    cJSON_AddBoolToObject(j, "tie_word_embeddings", c->tie_word_embeddings);
    cJSON_AddStringToObject(j, "hidden_act", "silu");
    cJSON_AddBoolToObject(j, "attention_bias", 0);
    cJSON_AddBoolToObject(j, "mlp_bias", 0);
    if (c->bos_token_id >= 0) cJSON_AddNumberToObject(j, "bos_token_id", c->bos_token_id);
    if (c->n_eos == 1) cJSON_AddNumberToObject(j, "eos_token_id", c->eos_token_ids[0]);
    else if (c->n_eos > 1) {
        cJSON *e = cJSON_AddArrayToObject(j, "eos_token_id");
        for (int i = 0; i < c->n_eos; i++) cJSON_AddItemToArray(e, cJSON_CreateNumber(c->eos_token_ids[i]));
    }
    cJSON_AddStringToObject(j, "torch_dtype", c->dtype == AV_F32 ? "float32" : c->dtype == AV_F16 ? "float16" : "bfloat16");
    if (c->quant_bits) {
        cJSON *q = cJSON_AddObjectToObject(j, "quantization");
        cJSON_AddNumberToObject(q, "group_size", c->quant_group_size);
        cJSON_AddNumberToObject(q, "bits", c->quant_bits);
    }
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    av_status st = av_write_file_atomic(path, txt, strlen(txt));
    free(txt);
    return st;
}
