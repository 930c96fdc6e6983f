/* Interop with MLX-LM's quantized models (tests/fixtures/mlx_quant, make_mlx_quant.py): the
 * directory mlx_lm.convert wrote with --quant-predicate mixed_3_6 (per-layer 3/6-bit entries, 4-bit
 * default) and anvil's own 4-bit/g64 and 8-bit/g32 conversions of tiny-llama (bit-identical to
 * mlx_lm.convert's when the fixture was made) give MLX-LM's f32 logits and next-token log-probs.
 * anvil's own mixed_3_6 conversion equals MLX-LM's directory tensor for tensor, byte for byte, and
 * de-quantizing it (--de-quantize --dtype f32) keeps the logits.
 * Tolerance: f32 rounding (MLX's quantized matmul sums in another order): log-probs 5e-5; last logits
 * max |d| <= 1e-5 max |logit|, or 5e-5 where the one-row lm_head product runs the AVX-512 VNNI kernel,
 * which takes x as two int8 digits (error <= amax/32512 per element of x, quant/qmatmul.h; measured
 * 2.2-2.6e-5 max |logit| on these models). */
#include "test.h"
#include "backend/backend.h"
#include "core/memory.h"
#include "core/status.h"
#include "formats/safetensors.h"
#include "model/model.h"
#include "quant/qmatmul.h"
#include <sys/stat.h>

static av_st_file g_ref;
static int32_t g_ids[512];
static int g_T;

static const float *ref(const char *c, const char *what, size_t n) {
    char name[96];
    snprintf(name, sizeof name, "%s.%s", c, what);
    const av_st_tensor *t = av_st_find(&g_ref, name);
    CHECK(t && t->dtype == AV_F32 && (size_t)av_st_numel(t) == n, "fixture tensor %s", name);
    return t ? test_f32_view(t->data, n) : NULL;
}

static void check_dir(const char *dir, const char *c, int want_mixed) {
    av_model *m;
    if (av_model_load(&m, dir, av_backend_cpu()) != AV_OK) { CHECK(0, "%s", av_last_error()); return; }
    if (want_mixed) /* MLX-LM's mixed_3_6 recipe: v_proj of layer 1 and lm_head at 6 bits, the rest at 3 */
        CHECK(m->layers[1].v.w.q_bits == 6 && m->lm_head.q_bits == 6 && m->layers[0].q.w.q_bits == 3 && m->embed.q_bits == 3 &&
                  m->layers[0].down.w.q_bits == 0 && m->layers[0].q.w.q_group == 64,
              "per-layer widths");
    int V = m->cfg.vocab_size;
    const float *want = ref(c, "last_logits", (size_t)V), *lp = ref(c, "logprobs", (size_t)g_T - 1);
    float *got = malloc(sizeof(float) * V), *nll = malloc(sizeof(float) * g_T);
    av_session *s;
    CHECK_OK(av_session_new(&s, m, 256, 64));
    CHECK_OK(av_session_forward(s, g_ids, g_T));
    av_session_last_logits(s, got);
    double sum;
    CHECK_OK(av_session_nll(s, g_ids, g_T, &sum, nll, NULL));
    if (want && lp) {
        double mx = 0, md = 0, ml = 0;
        for (int i = 0; i < V; i++) {
            mx = fmax(mx, fabs(want[i]));
            md = fmax(md, fabs((double)got[i] - want[i]));
        }
        for (int t = 0; t < g_T - 1; t++) ml = fmax(ml, fabs((double)nll[t] + lp[t]));
        double tol = strcmp(av_qmatmul_impl(), "portable") != 0 ? 5e-5 : 1e-5; /* int8 x on VNNI and AVX2 */
        CHECK(md <= tol * mx, "%s: last logits max |d| %g (max |logit| %g)", c, md, mx);
        CHECK(ml <= 5e-5, "%s: next-token log-probs max |d| %g", c, ml);
        printf("%s: logits max |d| %.3g of %.3g, log-probs max |d| %.3g\n", c, md, mx, ml);
    }
    av_session_free(s);
    av_model_free(m);
    free(got);
    free(nll);
}

/* Every tensor of dir's model.safetensors equals the one of the same name in ref_dir's. */
static void check_same_tensors(const char *dir, const char *ref_dir) {
    av_st_set a, b;
    CHECK_OK(av_st_set_open_dir(&a, dir));
    CHECK_OK(av_st_set_open_dir(&b, ref_dir));
    int na = av_st_set_count(&a), nb = av_st_set_count(&b), same = 0;
    CHECK(na == nb, "%s: %d tensors vs %d", dir, na, nb);
    for (int i = 0; i < nb; i++) {
        const av_st_tensor *tb = av_st_set_at(&b, i), *ta = av_st_set_find(&a, tb->name);
        int ok = ta && ta->dtype == tb->dtype && ta->nbytes == tb->nbytes && ta->ndim == tb->ndim && !memcmp(ta->data, tb->data, tb->nbytes);
        CHECK(ok, "%s: tensor '%s' differs from MLX-LM's", dir, tb->name);
        same += ok;
    }
    printf("%s: %d of %d tensors byte-identical to MLX-LM's\n", dir, same, nb);
    av_st_set_close(&a);
    av_st_set_close(&b);
}

int main(void) {
    CHECK_OK(av_st_open(&g_ref, test_fixture("mlx_quant/expected.safetensors")));
    const av_st_tensor *ti = av_st_find(&g_ref, "ids");
    CHECK(ti && ti->dtype == AV_I32, "fixture ids");
    if (!ti) return TEST_SUMMARY();
    g_T = (int)av_st_numel(ti);
    memcpy(g_ids, ti->data, sizeof(int32_t) * (size_t)g_T);
    check_dir(test_fixture("mlx_quant/mixed_3_6"), "mixed_3_6", 1);
    const char *tmp = getenv("AV_TMP") ? getenv("AV_TMP") : "/tmp";
    const struct { const char *c; int bits, group; } cases[] = {{"q4_g64", 4, 64}, {"q8_g32", 8, 32}};
    for (int i = 0; i < 2; i++) {
        char d[4200];
        snprintf(d, sizeof d, "%s/mlx_quant_%s.%d", tmp, cases[i].c, (int)getpid());
        av_convert_opts o = {.quantize = 1, .bits = cases[i].bits, .group = cases[i].group, .out_dtype = -1};
        av_convert_report r;
        CHECK_OK(av_convert(test_fixture("tiny-llama"), d, &o, &r));
        check_dir(d, cases[i].c, 0);
    }
    char d[4200], dq[4200];
    snprintf(d, sizeof d, "%s/mlx_quant_mixed.%d", tmp, (int)getpid());
    snprintf(dq, sizeof dq, "%s/mlx_quant_mixed_deq.%d", tmp, (int)getpid());
    av_convert_opts o = {.quantize = 1, .bits = 4, .group = 64, .out_dtype = -1, .recipe = "mixed_3_6"};
    av_convert_report r;
    CHECK_OK(av_convert(test_fixture("tiny-llama"), d, &o, &r));
    check_same_tensors(d, test_fixture("mlx_quant/mixed_3_6"));
    check_dir(d, "mixed_3_6", 1);
    av_convert_opts od = {.out_dtype = AV_F32, .dequantize = 1};
    CHECK_OK(av_convert(test_fixture("mlx_quant/mixed_3_6"), dq, &od, &r));
    CHECK(r.n_quantized == 14, "de-quantized %d matrices", r.n_quantized);
    check_dir(dq, "mixed_3_6", 0);
    av_st_close(&g_ref);
    return TEST_SUMMARY();
}
