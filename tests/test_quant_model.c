/* Quantized models on the CPU: av_convert writes tiny-llama at 8 and 4 bits in MLX's layout; each
 * loads (per-layer rule: quantized where .scales exists) and gives the logits and NLL of the same
 * model with its weights dequantized to f32 (prefill and one-token decode paths); 8-bit NLL within
 * 1% of the original. QLoRA: one LoRA training step on the packed base gives the loss and every
 * adapter gradient of the same step on the dequantized base (f32 rounding). Bad quantized
 * directories fail with one line naming the file and tensor. */
#include "test.h"
#include "backend/backend.h"
#include "core/memory.h"
#include "core/status.h"
#include "formats/safetensors.h"
#include "model/model.h"
#include "quant/affine.h"
#include "train/train_model.h"
#include <sys/stat.h>

static int32_t g_ids[512];
static int g_T;

/* Writes src (a quantized directory) dequantized to f32 into dir, with the original config. */
static void dequantize_dir(const char *src, const char *dir) {
    mkdir(dir, 0755);
    av_st_set st;
    CHECK_OK(av_st_set_open_dir(&st, src));
    cJSON *cfg;
    char p[4400];
    CHECK_OK(av_json_load(av_path_join(p, sizeof p, src, "config.json"), &cfg));
    const cJSON *q = av_json_get(cfg, "quantization");
    int bits = (int)av_json_num(q, "bits", 0), group = (int)av_json_num(q, "group_size", 0);
    int n = av_st_set_count(&st), nb = 0;
    void **bufs = calloc((size_t)n, sizeof *bufs);
    av_st_writer w;
    av_st_writer_init(&w);
    for (int i = 0; i < n; i++) {
        const av_st_tensor *t = av_st_set_at(&st, i);
        size_t len = strlen(t->name);
        if (len > 7 && (!strcmp(t->name + len - 7, ".scales") || !strcmp(t->name + len - 7, ".biases"))) continue;
        if (t->dtype == AV_U32) {
            char b[256];
            snprintf(b, sizeof b, "%.*s.scales", (int)(len - 7), t->name);
            const av_st_tensor *ts = av_st_set_find(&st, b);
            snprintf(b, sizeof b, "%.*s.biases", (int)(len - 7), t->name);
            const av_st_tensor *tb = av_st_set_find(&st, b);
            int rows = (int)t->shape[0], cols = (int)t->shape[1] * 32 / bits;
            float *f = malloc(sizeof(float) * rows * cols);
            for (int r = 0; r < rows; r++) av_quant_dequant_row(f + (size_t)r * cols, t->data, ts->data, tb->data, ts->dtype, r, cols, bits, group);
            int64_t sh[2] = {rows, cols};
            CHECK_OK(av_st_writer_add(&w, t->name, AV_F32, 2, sh, f));
            bufs[nb++] = f;
        } else {
            size_t k = (size_t)av_st_numel(t);
            float *f = malloc(k * 4);
            av_convert_to_f32(f, t->data, t->dtype, k);
            CHECK_OK(av_st_writer_add(&w, t->name, AV_F32, t->ndim, t->shape, f));
            bufs[nb++] = f;
        }
    }
    CHECK_OK(av_st_writer_write(&w, av_path_join(p, sizeof p, dir, "model.safetensors")));
    av_st_writer_free(&w);
    for (int i = 0; i < nb; i++) free(bufs[i]);
    free(bufs);
    cJSON_DeleteItemFromObject(cfg, "quantization");
    cJSON_DeleteItemFromObject(cfg, "quantization_config");
    char *txt = cJSON_Print(cfg);
    CHECK_OK(av_write_file_atomic(av_path_join(p, sizeof p, dir, "config.json"), txt, strlen(txt)));
    free(txt);
    cJSON_Delete(cfg);
    av_st_set_close(&st);
}

/* NLL of the prompt and the logits after prefill of all but the last token + one decode step. */
static double run(const char *dir, float *logits) {
    av_model *m;
    if (av_model_load(&m, dir, av_backend_cpu()) != AV_OK) { CHECK(0, "%s", av_last_error()); return -1; }
    av_session *s;
    CHECK_OK(av_session_new(&s, m, 256, 64));
    double sum = 0;
    CHECK_OK(av_session_nll(s, g_ids, g_T, &sum, NULL, NULL));
    av_session_truncate(s, 0);
    CHECK_OK(av_session_prefill(s, g_ids, g_T - 1));
    CHECK_OK(av_session_forward(s, g_ids + g_T - 1, 1));
    av_session_last_logits(s, logits);
    av_session_free(s);
    av_model_free(m);
    return sum / (g_T - 1);
}

static void check_model(const char *tmp, const char *name, int bits, int group, double base_nll, double nll_rtol) {
    char q[4200], d[4200];
    snprintf(q, sizeof q, "%s/%s", tmp, name);
    snprintf(d, sizeof d, "%s/%s_deq", tmp, name);
    av_convert_opts o = {.quantize = 1, .bits = bits, .group = group, .out_dtype = -1};
    av_convert_report r;
    CHECK_OK(av_convert(test_fixture("tiny-llama"), q, &o, &r));
    /* embed, lm_head and six projections per layer; down_proj (176 inputs) stays bf16 at group 32/64 */
    CHECK(r.n_quantized == 14 && r.n_unquantized == 2, "%s: %d quantized, %d left", name, r.n_quantized, r.n_unquantized);
    CHECK(r.bytes_out < r.bytes_in, "%s: %zu -> %zu bytes", name, r.bytes_in, r.bytes_out);
    dequantize_dir(q, d);
    int V = 32000;
    float *lq = malloc(sizeof(float) * V), *ld = malloc(sizeof(float) * V);
    double nq = run(q, lq), nd = run(d, ld);
    double mx = 0, md = 0;
    for (int i = 0; i < V; i++) {
        mx = fmax(mx, fabs(ld[i]));
        md = fmax(md, fabs((double)lq[i] - ld[i]));
    }
    CHECK(md <= 1e-4 * mx + 1e-5, "%s: logits max |d| %g (max |logit| %g)", name, md, mx);
    CHECK_NEAR(nq, nd, 1e-5 * nd);
    CHECK_NEAR(nq, base_nll, nll_rtol * base_nll);
    printf("%s: nll %.6f (base %.6f), %zu -> %zu bytes\n", name, nq, base_nll, r.bytes_in, r.bytes_out);
    free(lq);
    free(ld);
}

/* One LoRA step (all seven projections, rank 4, B set non-zero) on the model in dir: loss and grads. */
static double lora_step(const char *dir, float **grads, size_t *n) {
    av_model *m;
    *n = 0;
    if (av_model_load(&m, dir, av_backend_cpu()) != AV_OK) { CHECK(0, "%s", av_last_error()); return -1; }
    av_lora_spec spec;
    av_lora_spec_default(&spec);
    spec.rank = 4;
    spec.keys = 0x7f;
    CHECK_OK(av_lora_attach(m, &spec, 11));
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < AV_PROJ_COUNT; p++) {
            av_linear *L = av_layer_proj(&m->layers[l], (av_proj)p);
            for (int i = 0; i < L->w.rows * L->rank; i++) L->lora_b[i] = 0.01f * (float)((i * 37 + p) % 11 - 5);
        }
    int32_t tg[512];
    for (int t = 0; t < g_T; t++) tg[t] = t + 1 < g_T ? g_ids[t + 1] : -1;
    av_train_ctx *c;
    CHECK_OK(av_train_ctx_new(&c, m, 1, g_T, 0));
    double nll = 0;
    int nv = 0;
    if (c) {
        av_train_zero_grads(c);
        CHECK_OK(av_train_step(c, g_ids, tg, 1, g_T, 1.0f / (float)(g_T - 1), 1, &nll, &nv));
        av_param *P = av_train_params(c);
        int np = av_train_nparams(c);
        size_t total = 0;
        for (int i = 0; i < np; i++) total += P[i].n;
        *grads = malloc(total * sizeof(float));
        for (int i = 0; i < np; i++) {
            memcpy(*grads + *n, P[i].grad, P[i].n * sizeof(float));
            *n += P[i].n;
        }
        av_train_ctx_free(c);
    }
    av_lora_detach(m);
    av_model_free(m);
    return nv ? nll / nv : -1;
}

static void check_qlora(const char *tmp) {
    char q[4200], d[4200];
    snprintf(q, sizeof q, "%s/q4", tmp);
    snprintf(d, sizeof d, "%s/q4_deq", tmp);
    float *gq = NULL, *gd = NULL;
    size_t nq, nd;
    double lq = lora_step(q, &gq, &nq), ld = lora_step(d, &gd, &nd);
    CHECK(nq == nd && nq > 0, "qlora: %zu vs %zu gradient values", nq, nd);
    CHECK_NEAR(lq, ld, 1e-5 * fabs(ld));
    if (gq && gd && nq == nd) {
        double rel = test_rel_l2(gq, gd, nq);
        CHECK(rel <= 1e-4, "qlora: adapter gradients relative L2 %g", rel);
        printf("qlora: loss %.6f vs %.6f, gradients rel L2 %.3g\n", lq, ld, rel);
    }
    free(gq);
    free(gd);
}

/* A copy of a quantized directory (weights linked) with config.json's "quantization" replaced. */
static const char *variant(const char *tmp, const char *src, const char *name, const char *quant_json) {
    static char d[4200];
    char p[4400], s[4400];
    snprintf(d, sizeof d, "%s/%s", tmp, name);
    mkdir(d, 0755);
    snprintf(s, sizeof s, "%s/model.safetensors", src);
    symlink(s, av_path_join(p, sizeof p, d, "model.safetensors"));
    cJSON *cfg;
    CHECK_OK(av_json_load(av_path_join(p, sizeof p, src, "config.json"), &cfg));
    cJSON_ReplaceItemInObject(cfg, "quantization", cJSON_Parse(quant_json));
    char *txt = cJSON_Print(cfg);
    CHECK_OK(av_write_file_atomic(av_path_join(p, sizeof p, d, "config.json"), txt, strlen(txt)));
    free(txt);
    cJSON_Delete(cfg);
    return d;
}

static void expect_fail(const char *dir, const char *needle) {
    av_model *m = NULL;
    av_status st = av_model_load(&m, dir, av_backend_cpu());
    CHECK(st != AV_OK && strstr(av_last_error(), needle) && !strchr(av_last_error(), '\n'), "%s: want an error naming '%s', got '%s'", dir,
          needle, st ? av_last_error() : "success");
    av_model_free(m);
}

static void check_bad(const char *tmp) {
    char q4[4200];
    snprintf(q4, sizeof q4, "%s/q4", tmp);
    expect_fail(variant(tmp, q4, "bad_bits", "{\"group_size\":64,\"bits\":7}"), "bits 7");
    expect_fail(variant(tmp, q4, "bad_layer_bits", "{\"group_size\":64,\"bits\":4,\"model.layers.1.mlp.up_proj\":{\"group_size\":64,\"bits\":8}}"),
                "model.layers.1.mlp.up_proj.weight");
    expect_fail(variant(tmp, q4, "bad_layer_false", "{\"group_size\":64,\"bits\":4,\"model.layers.0.self_attn.k_proj\":false}"),
                "model.layers.0.self_attn.k_proj.weight");
    expect_fail(variant(tmp, q4, "bad_group", "{\"group_size\":32,\"bits\":4}"), "model.embed_tokens.scales");
    /* an explicit entry with the global values is the same model */
    const char *ok = variant(tmp, q4, "same_entry", "{\"group_size\":64,\"bits\":4,\"model.layers.0.mlp.gate_proj\":{\"group_size\":64,\"bits\":4}}");
    av_model *m = NULL;
    CHECK_OK(av_model_load(&m, ok, av_backend_cpu()));
    CHECK(m && m->layers[0].gate.w.q_bits == 4 && m->layers[0].down.w.q_bits == 0 && m->embed.q_bits == 4, "per-layer rule");
    av_model_free(m);
    /* convert refuses an existing output and bad widths, leaving nothing behind */
    av_convert_opts o = {.quantize = 1, .bits = 7, .group = 64, .out_dtype = -1};
    av_convert_report r;
    char out[4200];
    snprintf(out, sizeof out, "%s/never", tmp);
    CHECK(av_convert(test_fixture("tiny-llama"), out, &o, &r) == AV_ERR_ARG && !av_dir_exists(out), "bits 7");
    o.bits = 4;
    CHECK(av_convert(test_fixture("tiny-llama"), q4, &o, &r) == AV_ERR_ARG, "existing output");
    CHECK(av_convert(q4, out, &o, &r) != AV_OK && !av_dir_exists(out), "already quantized");
}

int main(void) {
    const char *tmp = getenv("AV_TMP") ? getenv("AV_TMP") : "/tmp";
    char root[4200];
    snprintf(root, sizeof root, "%s/quant_model.%d", tmp, (int)getpid());
    mkdir(root, 0755);
    cJSON *g;
    char golden[4200];
    snprintf(golden, sizeof golden, "%s/tiny-llama_golden.json", test_fixtures());
    CHECK_OK(av_json_load(golden, &g));
    const cJSON *p = cJSON_GetArrayItem(cJSON_GetObjectItem(g, "prompts"), 2);
    for (const cJSON *e = cJSON_GetObjectItem(p, "ids")->child; e && g_T < 512; e = e->next) g_ids[g_T++] = e->valueint;
    cJSON_Delete(g);
    float *l = malloc(sizeof(float) * 32000);
    double base = run(test_fixture("tiny-llama"), l);
    free(l);
    check_model(root, "q8", 8, 32, base, 0.01);
    check_model(root, "q4", 4, 64, base, 0.2);
    check_qlora(root);
    check_bad(root);
    return TEST_SUMMARY();
}
