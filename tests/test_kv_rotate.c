/* The rotating KV cache (--max-kv-size, MLX-LM's RotatingKVCache(max_size, keep 4)): the slot/row
 * arithmetic against a simulation of MLX's in-place update; a rotating session that never fills is
 * the plain session; and greedy generation on tiny-llama against MLX-LM's own (fixtures kv_rotate/:
 * ids exactly, the last step's log-probabilities within 1e-4), through av_generate and through the
 * session calls in generate_step's order, on the CPU's one-region decode and on the op-by-op layers. */
#include "test.h"
#include "attention/attention.h"
#include "attention/kv_ring.h"
#include "backend/backend.h"
#include "core/status.h"
#include "model/llama.h"

#define KEEP 4
#define LP_TOL 1e-4 /* f32 rounding of two implementations (the smallest top-1/top-2 gap MLX saw: 2e-4) */

/* MLX's RotatingKVCache._update_in_place from empty, one token at a time: the row _idx each token
 * lands in (grown to max_size, then _idx wraps from max_size to keep). */
static void check_slots(int keep, int ring) {
    int idx = 0, bad = 0, rows_bad = 0;
    int *held = malloc(sizeof(int) * (size_t)ring), *mine = malloc(sizeof(int) * (size_t)ring);
    for (int i = 0; i < ring; i++) held[i] = mine[i] = -1;
    for (int p = 0; p < 5 * ring + 3; p++) {
        if (idx == ring) idx = keep;
        held[idx++] = p;
        mine[av_kv_ring_slot(p, keep, ring)] = p;
        int n = av_kv_ring_rows(p, ring), cnt = 0;
        /* the same tokens held (MLX's rows are a rotation of anvil's past the keep rows) */
        for (int i = 0; i < ring; i++) {
            if (held[i] < 0) continue;
            cnt++;
            int found = 0;
            for (int j = 0; j < n; j++) found |= mine[j] == held[i];
            bad += !found;
        }
        rows_bad += cnt != n;
    }
    CHECK(bad == 0 && rows_bad == 0, "keep %d ring %d: %d tokens held by MLX missing, %d row counts differ", keep, ring, bad, rows_bad);
    CHECK(av_kv_ring_slot(7, keep, 0) == 7 && av_kv_ring_rows(7, 0) == 8, "no ring: row p, rows 0..p");
    free(held);
    free(mine);
}

/* The CPU decode op on a ring: writes the slot, attends the ring's rows in any order. */
static void check_decode_op(void) {
    int H = 2, KVH = 1, hd = 8, ring = 10, p = 23, slot = av_kv_ring_slot(p, KEEP, ring); /* 4 + 19 % 6 = 5 */
    size_t kvd = (size_t)KVH * hd, qd = (size_t)H * hd, ss = 16 * kvd;
    float *kc = test_rnd(ss, 1), *vc = test_rnd(ss, 1), *q = test_rnd(qd, 1), *kn = test_rnd(kvd, 1), *vn = test_rnd(kvd, 1);
    float out[16], ref[16], *k2 = malloc(sizeof(float) * ss), *v2 = malloc(sizeof(float) * ss);
    CHECK(slot == 5, "slot of 23 in a ring of 10 keeping 4: %d", slot);
    /* the reference: the held rows gathered with the new one last */
    int r = 0;
    for (int i = 0; i < ring; i++)
        if (i != slot) memcpy(k2 + r * kvd, kc + i * kvd, kvd * 4), memcpy(v2 + r * kvd, vc + i * kvd, kvd * 4), r++;
    memcpy(k2 + r * kvd, kn, kvd * 4), memcpy(v2 + r * kvd, vn, kvd * 4);
    av_attention_forward(ref, NULL, q, k2, v2, 1, ring, ring - 1, H, KVH, hd);
    int32_t pos = p;
    av_attention_decode(out, q, kn, vn, kc, vc, &pos, 1, ss, H, KVH, hd, 0, KEEP, ring);
    CHECK(test_rel_l2(out, ref, qd) < 1e-6, "ring decode attention: rel L2 %.3g", test_rel_l2(out, ref, qd));
    CHECK(!memcmp(kc + slot * kvd, kn, kvd * 4) && !memcmp(vc + slot * kvd, vn, kvd * 4), "new row at its slot");
    free(kc), free(vc), free(q), free(kn), free(vn), free(k2), free(v2);
}

static int read_ids(const cJSON *arr, int32_t *out, int cap) {
    int n = 0;
    for (const cJSON *e = arr ? arr->child : NULL; e && n < cap; e = e->next) out[n++] = e->valueint;
    return n;
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[b]) b = i;
    return b;
}

/* generate_step's order on a session: prompt[:-1] as one chunk, the last alone, then each generated
 * token (the last one too: generate_step feeds what it yields). Writes ids; lp: log-probs of the
 * last sample. */
static av_status run_steps(av_session *s, const int32_t *prompt, int n, int gen, int32_t *ids, float *logits, double *lp, int V) {
    if (n > 1) AV_TRY(av_session_forward(s, prompt, n - 1));
    AV_TRY(av_session_forward(s, prompt + n - 1, 1));
    for (int i = 0; i < gen; i++) {
        av_session_last_logits(s, logits);
        ids[i] = argmax(logits, V);
        AV_TRY(av_session_forward(s, ids + i, 1));
        if (i == gen - 1) {
            double mx = logits[ids[i]], sum = 0;
            for (int v = 0; v < V; v++) sum += exp((double)logits[v] - mx);
            for (int v = 0; v < V; v++) lp[v] = (double)logits[v] - mx - log(sum);
        }
    }
    return AV_OK;
}

static int same_ids(const int32_t *a, const int32_t *b, int n) {
    for (int i = 0; i < n; i++)
        if (a[i] != b[i]) return i;
    return -1;
}

static void check_mlx(av_model *m, av_tokenizer *tok, const char *how) {
    cJSON *g;
    char path[4096];
    CHECK_OK(av_json_load(test_fixture("kv_rotate/expected.json"), &g));
    av_st_file f;
    snprintf(path, sizeof path, "%s", test_fixture("kv_rotate/last_logprobs.safetensors"));
    CHECK_OK(av_st_open(&f, path));
    if (!g) return;
    int V = m->cfg.vocab_size, gen = cJSON_GetObjectItem(g, "max_tokens")->valueint;
    float *logits = malloc(sizeof(float) * V);
    double *lp = malloc(sizeof(double) * V);
    for (const cJSON *c = cJSON_GetObjectItem(g, "cases")->child; c; c = c->next) {
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        int max_kv = cJSON_GetObjectItem(c, "max_kv")->valueint, nt = 0;
        int32_t all[1024], want[4][128], got[128];
        int n_all = 0, n_turn[4];
        av_session *s1, *s2;
        CHECK_OK(av_session_new_rotating(&s1, m, max_kv, KEEP, 0));
        CHECK_OK(av_session_new_rotating(&s2, m, max_kv, KEEP, 0));
        if (!s1 || !s2) break;
        for (const cJSON *t = cJSON_GetObjectItem(c, "turns")->child; t && nt < 4; t = t->next, nt++) {
            int32_t prompt[256];
            int n = read_ids(cJSON_GetObjectItem(t, "prompt_ids"), prompt, 256);
            n_turn[nt] = read_ids(cJSON_GetObjectItem(t, "ids"), want[nt], 128);
            CHECK(n_turn[nt] == gen, "%s: %d ids in the fixture", name, n_turn[nt]);
            /* the engine: the whole conversation as the prompt (cached prefix reused) */
            memcpy(all + n_all, prompt, sizeof(int32_t) * n);
            n_all += n;
            av_gen_opts o;
            av_gen_opts_default(&o);
            o.max_tokens = gen;
            o.sampler.temp = 0;
            av_gen_result r;
            CHECK_OK(av_generate(s1, tok, all, n_all, &o, &r));
            int d = r.n_ids == gen ? same_ids(r.ids, want[nt], gen) : 0;
            CHECK(r.n_ids == gen && d < 0, "%s turn %d (av_generate): %d ids, first difference at %d", name, nt, r.n_ids, d);
            CHECK(r.n_prompt_processed == (nt ? n : n_all), "%s turn %d: %d prompt tokens processed", name, nt, r.n_prompt_processed);
            memcpy(all + n_all, want[nt], sizeof(int32_t) * gen);
            n_all += gen;
            av_gen_result_free(&r);
            CHECK_OK(av_session_forward(s1, all + n_all - 1, 1)); /* generate_step fed its last token too */
            /* the session calls directly */
            CHECK_OK(run_steps(s2, prompt, n, gen, got, logits, lp, V));
            d = same_ids(got, want[nt], gen);
            CHECK(d < 0, "%s turn %d (session steps): first difference at %d (%d vs MLX %d)", name, nt, d, d < 0 ? 0 : got[d],
                  d < 0 ? 0 : want[nt][d]);
        }
        CHECK(av_session_n_past(s1) == n_all && av_session_n_past(s2) == n_all, "%s: n_past %d / %d, %d tokens", name, av_session_n_past(s1),
              av_session_n_past(s2), n_all);
        const av_st_tensor *t = av_st_find(&f, name);
        CHECK(t && av_st_numel(t) == V, "%s: last log-probs in the fixture", name);
        if (t && av_st_numel(t) == V) {
            const float *ref = test_f32_view(t->data, V);
            double mx = 0;
            for (int v = 0; v < V; v++) mx = fmax(mx, fabs(lp[v] - ref[v]));
            printf("%s (%s): max |log p - MLX| of the last step %.3g\n", name, how, mx);
            CHECK(mx <= LP_TOL, "%s (%s): last step's log-probs max abs err %.3g", name, how, mx);
        }
        av_session_free(s1);
        av_session_free(s2);
    }
    av_st_close(&f);
    free(logits);
    free(lp);
    cJSON_Delete(g);
}

/* A rotating session whose cache never fills is the plain session: the same logits bit for bit
 * (the same ops, rows at their positions). */
static void check_unfilled(av_model *m) {
    int V = m->cfg.vocab_size;
    int32_t ids[40];
    for (int i = 0; i < 40; i++) ids[i] = 1 + (i * 7919) % (V - 1);
    av_session *a, *b;
    CHECK_OK(av_session_new(&a, m, 64, 16));
    CHECK_OK(av_session_new_rotating(&b, m, 64, KEEP, 16));
    if (!a || !b) return;
    float *la = malloc(sizeof(float) * V), *lb = malloc(sizeof(float) * V);
    int diff = 0;
    CHECK_OK(av_session_forward(a, ids, 30));
    CHECK_OK(av_session_forward(b, ids, 30));
    for (int i = 30; i < 40; i++) {
        av_session_last_logits(a, la);
        av_session_last_logits(b, lb);
        diff += memcmp(la, lb, sizeof(float) * V) != 0;
        CHECK_OK(av_session_forward(a, ids + i, 1));
        CHECK_OK(av_session_forward(b, ids + i, 1));
    }
    CHECK(diff == 0, "%d steps differ between a plain session and an unfilled rotating one", diff);
    CHECK(av_session_rotating(b) == 64 && av_session_rotating(a) == 0 && av_session_max_seq(b) == 64, "accessors");
    /* truncation before anything was dropped keeps the prefix; after, it restarts */
    av_session_truncate(b, 12);
    CHECK(av_session_n_past(b) == 12, "truncate an undropped rotating session: %d", av_session_n_past(b));
    CHECK_OK(av_session_forward(b, ids, 40)); /* 52 tokens */
    CHECK_OK(av_session_forward(b, ids, 20)); /* 72 > 64 (chunks of 16: the second trims) */
    CHECK_OK(av_session_forward(b, ids, 1));
    av_session_truncate(b, 71);
    CHECK(av_session_n_past(b) == 0, "truncate after rows were dropped empties: %d", av_session_n_past(b));
    /* the plain session still says context full */
    CHECK(av_session_forward(a, ids, 30) == AV_ERR_ARG && strstr(av_last_error(), "context full"), "plain session: %s", av_last_error());
    av_session *c;
    CHECK(av_session_new_rotating(&c, m, KEEP, KEEP, 0) == AV_ERR_ARG && !c, "max_size <= keep refused");
    av_session_free(a);
    av_session_free(b);
    free(la);
    free(lb);
}

int main(void) {
    test_rng_state = 4242;
    check_slots(KEEP, 16);
    check_slots(KEEP, KEEP + 1);
    check_slots(0, 7);
    check_decode_op();
    av_model *m;
    av_tokenizer *tok;
    CHECK_OK(av_model_load(&m, test_fixture("tiny-llama"), av_backend_cpu()));
    CHECK_OK(av_tokenizer_load(&tok, test_fixture("tiny-llama"), 0));
    if (m && tok) {
        check_unfilled(m);
        check_mlx(m, tok, "one-region CPU decode");
        /* again through the op-by-op layers (layer.c, the decode op of decode.c: what a GPU table
         * runs) instead of the CPU's one-region decode: the CPU table posing as another device */
        const av_backend *cpu = m->be;
        av_backend ops = *cpu;
        ops.device = AV_DEVICE_CUDA;
        m->be = &ops;
        check_mlx(m, tok, "op-by-op layers");
        m->be = cpu;
    }
    av_tokenizer_free(tok);
    av_model_free(m);
    return TEST_SUMMARY();
}
