/* Model-loading variants: the tiny-llama fixture rewritten as f32 and f16 weights, split into
 * shards with model.safetensors.index.json, and loaded from a transformers-4 style config; each
 * must reproduce HF's NLL. Also RoPE scaling (llama3, linear) frequencies vs HF's formulas, and
 * av_model_extend_context against a config with linear scaling. */
#include "test.h"
#include "backend/backend.h"
#include "core/memory.h"
#include "core/status.h"
#include "model/llama.h"
#include <sys/stat.h>

static double prompt_nll(const char *dir, const int32_t *ids, int T) {
    av_model *m;
    if (av_model_load(&m, dir, av_backend_cpu()) != AV_OK) { CHECK(0, "%s", av_last_error()); return -1; }
    av_session *s;
    av_session_new(&s, m, 256, 64);
    double sum = 0;
    CHECK_OK(av_session_nll(s, ids, T, &sum, NULL, NULL));
    av_session_free(s);
    av_model_free(m);
    return sum / (T - 1);
}

/* Rewrites src's weights in dtype `dt` into dir, split into two shards + index. */
static void rewrite(const char *src, const char *dir, av_dtype dt) {
    mkdir(dir, 0755);
    av_st_set st;
    CHECK_OK(av_st_set_open_dir(&st, src));
    int n = av_st_set_count(&st);
    av_st_writer w[2];
    av_st_writer_init(&w[0]);
    av_st_writer_init(&w[1]);
    void **bufs = calloc((size_t)n, sizeof *bufs);
    char idx[1 << 16];
    size_t o = (size_t)snprintf(idx, sizeof idx, "{\"metadata\": {}, \"weight_map\": {");
    for (int i = 0; i < n; i++) {
        const av_st_tensor *t = av_st_set_at(&st, i);
        size_t k = (size_t)av_st_numel(t);
        float *f = malloc(k * 4);
        av_convert_to_f32(f, t->data, t->dtype, k);
        bufs[i] = malloc(k * av_dtype_size(dt));
        av_convert_from_f32(bufs[i], dt, f, k);
        free(f);
        int shard = i % 2;
        av_st_writer_add(&w[shard], t->name, dt, t->ndim, t->shape, bufs[i]);
        o += (size_t)snprintf(idx + o, sizeof idx - o, "%s\"%s\": \"model-0000%d-of-00002.safetensors\"", i ? ", " : "", t->name, shard + 1);
    }
    snprintf(idx + o, sizeof idx - o, "}}");
    char p[4200];
    for (int s = 0; s < 2; s++) {
        snprintf(p, sizeof p, "%s/model-0000%d-of-00002.safetensors", dir, s + 1);
        CHECK_OK(av_st_writer_write(&w[s], p));
        av_st_writer_free(&w[s]);
    }
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    CHECK_OK(av_write_file_atomic(p, idx, strlen(idx)));
    for (int i = 0; i < n; i++) free(bufs[i]);
    free(bufs);
    av_st_set_close(&st);
    char *cfg;
    snprintf(p, sizeof p, "%s/config.json", src);
    CHECK_OK(av_file_read(p, &cfg, NULL));
    snprintf(p, sizeof p, "%s/config.json", dir);
    CHECK_OK(av_write_file_atomic(p, cfg, strlen(cfg)));
    free(cfg);
}

static void check_rope_scaling(void) {
    av_config c;
    const char *l3 = "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":10,\"hidden_size\":2048,\"intermediate_size\":8,"
                     "\"num_hidden_layers\":1,\"num_attention_heads\":32,\"num_key_value_heads\":8,\"rope_theta\":500000.0,"
                     "\"rope_scaling\":{\"factor\":32.0,\"high_freq_factor\":4.0,\"low_freq_factor\":1.0,"
                     "\"original_max_position_embeddings\":8192,\"rope_type\":\"llama3\"}}";
    CHECK_OK(av_config_parse(&c, l3, "llama3"));
    CHECK(c.rope_type == AV_ROPE_LLAMA3 && c.head_dim == 64, "llama3 parse");
    float inv[32];
    av_config_inv_freq(&c, inv);
    /* values from transformers' _compute_llama3_parameters for this config (computed by hand with
     * its formula): i=0 unscaled, i=31 divided by 32, i=20 in the smooth band */
    CHECK_NEAR(inv[0], 1.0, 1e-7);
    double base31 = 1.0 / pow(500000.0, 62.0 / 64.0);
    CHECK_NEAR(inv[31], base31 / 32.0, 1e-6 * base31 / 32.0);
    double f20 = 1.0 / pow(500000.0, 40.0 / 64.0), wl = 2 * M_PI / f20;
    double sm = (8192.0 / wl - 1.0) / (4.0 - 1.0);
    double want20 = wl > 8192.0 ? f20 / 32 : wl < 2048.0 ? f20 : (1 - sm) * f20 / 32 + sm * f20;
    CHECK_NEAR(inv[20], want20, 1e-6 * fabs(want20));
    /* transformers 5 style nests theta under rope_parameters */
    const char *v5 = "{\"model_type\":\"llama\",\"vocab_size\":10,\"hidden_size\":64,\"intermediate_size\":8,"
                     "\"num_hidden_layers\":1,\"num_attention_heads\":4,\"rope_parameters\":{\"rope_theta\":1234.0,\"rope_type\":\"linear\",\"factor\":2.0}}";
    CHECK_OK(av_config_parse(&c, v5, "v5"));
    CHECK(c.rope_theta == 1234.0 && c.rope_type == AV_ROPE_LINEAR && c.head_dim == 16 && c.n_kv_heads == 4, "v5 parse");
    av_config_inv_freq(&c, inv);
    CHECK_NEAR(inv[1], 1.0 / pow(1234.0, 2.0 / 16.0) / 2.0, 1e-7);
    CHECK(av_config_parse(&c, "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":10}", "x") == AV_ERR_FORMAT, "missing keys");
    CHECK(strstr(av_last_error(), "x: missing") != NULL, "%s", av_last_error());
    CHECK(av_config_parse(&c, "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":10,\"hidden_size\":64,\"intermediate_size\":8,"
                              "\"num_hidden_layers\":1,\"num_attention_heads\":4,\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}", "y") == AV_ERR_UNSUPPORTED,
          "yarn unsupported");
}

/* av_model_extend_context(m, 4 x 2048) gives the NLL of the same weights with a config that has
 * linear RoPE scaling x4 and 8192 positions (HF's way of stretching a context). */
static void check_extend_context(const char *d32, const char *dlin, const int32_t *ids, int T, double base) {
    char p[4200], *cfg;
    snprintf(p, sizeof p, "%s/config.json", d32);
    CHECK_OK(av_file_read(p, &cfg, NULL));
    cJSON *j = cJSON_Parse(cfg);
    free(cfg);
    cJSON_ReplaceItemInObject(j, "max_position_embeddings", cJSON_CreateNumber(8192));
    cJSON *rs = cJSON_GetObjectItem(j, "rope_parameters"); /* the fixture's transformers-5 config */
    CHECK(rs != NULL, "fixture config has rope_parameters");
    if (!rs) rs = cJSON_AddObjectToObject(j, "rope_parameters");
    cJSON_DeleteItemFromObject(rs, "rope_type");
    cJSON_AddStringToObject(rs, "rope_type", "linear");
    cJSON_AddNumberToObject(rs, "factor", 4.0);
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    rewrite(d32, dlin, AV_F32);
    snprintf(p, sizeof p, "%s/config.json", dlin);
    CHECK_OK(av_write_file_atomic(p, txt, strlen(txt)));
    free(txt);
    double want = prompt_nll(dlin, ids, T);
    CHECK(fabs(want - base) > 1e-3, "linear x4 changes the NLL (%.6f vs %.6f)", want, base);
    av_model *m;
    CHECK_OK(av_model_load(&m, d32, av_backend_cpu()));
    if (!m) return;
    CHECK_OK(av_model_extend_context(m, 1000)); /* fits: nothing changes */
    CHECK(m->cfg.rope_type == AV_ROPE_DEFAULT && m->cfg.max_position_embeddings == 2048, "extend within the context is a no-op");
    CHECK_OK(av_model_extend_context(m, 8192));
    CHECK(m->cfg.rope_type == AV_ROPE_LINEAR && m->cfg.rope_factor == 4.0 && m->cfg.max_position_embeddings == 8192, "linear x4, 8192 positions");
    av_session *s;
    CHECK_OK(av_session_new(&s, m, 256, 64));
    double sum = 0;
    CHECK_OK(av_session_nll(s, ids, T, &sum, NULL, NULL));
    CHECK_NEAR(sum / (T - 1), want, 1e-9 * want);
    av_session_free(s);
    CHECK_OK(av_model_extend_context(m, 16384)); /* on top of linear scaling: the factors multiply */
    CHECK(m->cfg.rope_factor == 8.0 && m->cfg.max_position_embeddings == 16384, "linear x8");
    av_model_free(m);
}

int main(void) {
    check_rope_scaling();
    const char *tmp = getenv("AV_TMP") ? getenv("AV_TMP") : "/tmp";
    char golden[4096];
    snprintf(golden, sizeof golden, "%s/tiny-llama_golden.json", test_fixtures());
    cJSON *g;
    CHECK_OK(av_json_load(golden, &g));
    const cJSON *p = cJSON_GetArrayItem(cJSON_GetObjectItem(g, "prompts"), 2);
    int32_t ids[512];
    int T = 0;
    double want = 0;
    for (const cJSON *e = cJSON_GetObjectItem(p, "ids")->child; e; e = e->next) ids[T++] = e->valueint;
    for (const cJSON *e = cJSON_GetObjectItem(p, "next_token_nll")->child; e; e = e->next) want += e->valuedouble;
    want /= T - 1;
    char d32[4200], d16[4200];
    snprintf(d32, sizeof d32, "%s/tl_f32_sharded", tmp);
    snprintf(d16, sizeof d16, "%s/tl_f16_sharded", tmp);
    rewrite(test_fixture("tiny-llama"), d32, AV_F32);
    rewrite(test_fixture("tiny-llama"), d16, AV_F16);
    double base = prompt_nll(test_fixture("tiny-llama"), ids, T);
    CHECK_NEAR(base, want, 1e-4 * want);
    CHECK_NEAR(prompt_nll(d32, ids, T), base, 1e-6 * base); /* bf16 -> f32 is exact */
    CHECK_NEAR(prompt_nll(d16, ids, T), base, 1e-3 * base); /* f16 rounds small weights */
    char dlin[4200];
    snprintf(dlin, sizeof dlin, "%s/tl_linear_x4", tmp);
    check_extend_context(d32, dlin, ids, T, base);
    cJSON_Delete(g);
    return TEST_SUMMARY();
}
