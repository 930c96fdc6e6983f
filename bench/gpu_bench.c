/* anvil's side of bench/gpu_vs_hf.py: on one model directory and one backend, measures decode of
 * batch 1 (graph-captured step, device sampler), batched decode of N sequences, prefill of 2048
 * tokens, and LoRA training steps (r8, q/v, last 16 layers) at B x 512; prints one JSON line per
 * workload (tok/s, peak device GB, GB/s or MFU). Built by bench/gpu_bench.sh against libanvil.a.
 * usage: gpu_bench MODEL_DIR [decode|batch|prefill|lora|all|parts|slots]   (parts: per-kernel decode timings;
 * slots: the server's per-slot calls, prompt chunks and host-sampled decode steps, enqueue vs total time) */
#include "backend/backend.h"
#include "backend/cuda.h"
#include "core/memory.h"
#include "model/batch.h"
#include "model/decode_graph.h"
#include "model/llama.h"
#include "train/lora.h"
#include "train/train_model.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static double gb(size_t b) { return b / 1e9; }
static void die(const char *what) {
    fprintf(stderr, "gpu_bench: %s: %s\n", what, av_last_error());
    exit(1);
}
static int32_t tok(int i, int V) { return 1 + (int)(((unsigned)i * 2654435761u) % (unsigned)(V - 1)); }

/* bytes one decode step must read: every weight but the embedding table (one row of it) */
static double step_bytes(const av_model *m) {
    const av_config *c = &m->cfg;
    const av_mat *e = &m->embed;
    double es = av_dtype_size(e->dtype), emb = e->q_bits ? (double)e->rows * e->cols * e->q_bits / 8 + 2.0 * e->rows * (e->cols / e->q_group) * es
                                                         : (double)e->rows * e->cols * es;
    return (double)m->weight_bytes - (c->tie_word_embeddings ? 0 : emb);
}

/* AV_AHEAD=0: every decode step waits for the previous one's ids (no step queued ahead) */
static int ahead = 1;

static void bench_decode1(av_model *m, int gen) {
    const av_backend *be = m->be;
    int prompt = 16, V = m->cfg.vocab_size;
    av_session *s;
    if (av_session_new(&s, m, prompt + gen + 8, 64) != AV_OK) die("session");
    int32_t ids[16];
    for (int i = 0; i < prompt; i++) ids[i] = tok(i, V);
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        av_session_truncate(s, 0);
        if (av_session_forward(s, ids, prompt - 1) != AV_OK) die("prefill");
        av_decoder *d;
        if (av_decoder_new(&d, s) != AV_OK) die("decoder");
        int32_t t = ids[prompt - 1], next;
        be->sync();
        double t0 = now();
        for (int i = 0; i < gen; i++) {
            if (av_decoder_next_ahead(d, t, 0.0f, 1.0f, 0, &next, ahead && i + 1 < gen) != AV_OK) die("decode");
            t = next;
        }
        double dt = now() - t0;
        if (rep > 0 && dt < best) best = dt; /* rep 0 warms up (graph capture) */
        av_decoder_free(d);
    }
    double tps = gen / best;
    /* diagnostic: a decode plan's step graph replayed back to back (no host waits between steps), and
     * submitted/collected two deep as the decoder does: what the host side adds per token */
    double replay_us = 0, queued_us = 0;
    {
        av_decode_plan p;
        av_decode_plan_for_session(&p, s, 1);
        int32_t *dev = be->alloc(2 * sizeof(int32_t), "bench ids"), h[2] = {ids[prompt - 1], prompt - 1}, got;
        if (!dev) die("alloc");
        p.ids = dev, p.pos = dev + 1;
        for (int pass = 0; pass < 2; pass++) {
            be->upload(dev, h, sizeof h);
            if (av_decode_plan_step(&p, &got) != AV_OK || av_decode_plan_step(&p, &got) != AV_OK) die("plan");
            int n = gen - 8;
            be->sync();
            double t0 = now();
            if (pass == 0 && p.graph) {
                for (int i = 0; i < n; i++) be->graph_launch(p.graph);
                be->sync();
                replay_us = (now() - t0) / n * 1e6;
            } else if (pass == 1) {
                if (av_decode_plan_submit(&p) != AV_OK) die("submit");
                for (int i = 0; i < n; i++) {
                    if (i + 1 < n && av_decode_plan_submit(&p) != AV_OK) die("submit");
                    if (av_decode_plan_collect(&p, &got) != AV_OK) die("collect");
                }
                queued_us = (now() - t0) / n * 1e6;
            }
        }
        av_decode_plan_release(&p);
        be->free(dev);
    }
    /* diagnostic: the step's matrix-vector products alone (graph of the 7 per layer + LM head) */
    double mm_ms = 0;
    if (be->graph_begin && be->graph_begin() == 0) {
        for (int l = 0; l < m->cfg.n_layers; l++) {
            const av_layer *L = &m->layers[l];
            const av_layer_ws *w = &s->ws;
            be->matmul_forward(w->q, w->xn, &L->q.w, 1);
            be->matmul_forward(w->k, w->xn, &L->k.w, 1);
            be->matmul_forward(w->v, w->xn, &L->v.w, 1);
            be->matmul_forward(w->tmp, w->att, &L->o.w, 1);
            be->matmul_forward(w->gate, w->xn, &L->gate.w, 1);
            be->matmul_forward(w->up, w->xn, &L->up.w, 1);
            be->matmul_forward(w->tmp, w->gate, &L->down.w, 1);
        }
        be->matmul_forward(s->logits, s->hidden, &m->lm_head, 1);
        void *g = be->graph_end();
        if (g) {
            be->graph_launch(g);
            be->sync();
            double t0 = now();
            for (int i = 0; i < 50; i++) be->graph_launch(g);
            be->sync();
            mm_ms = (now() - t0) / 50 * 1e3;
            be->graph_free(g);
        }
    }
    printf("{\"workload\":\"decode_b1\",\"tokens\":%d,\"tok_s\":%.1f,\"gb_s\":%.1f,\"peak_gb\":%.2f,\"step_ms\":%.3f,\"matmuls_ms\":%.3f,"
           "\"matmul_gb_s\":%.1f,\"graph_replay_us\":%.1f,\"plan_queued_us\":%.1f}\n",
           gen, tps, step_bytes(m) * tps / 1e9, gb(be->peak_bytes()), 1e3 / tps, mm_ms, mm_ms > 0 ? step_bytes(m) / (mm_ms * 1e-3) / 1e9 : 0.0,
           replay_us, queued_us);
    fflush(stdout);
    av_session_free(s);
}

static void bench_batch(av_model *m, int N, int gen) {
    const av_backend *be = m->be;
    int V = m->cfg.vocab_size;
    av_batch_session *b;
    if (av_batch_session_new(&b, m, N, 32 + gen + 8, 64) != AV_OK) die("batch");
    av_batch_sampling sp = {0.0f, 1.0f, 1};
    int32_t *out = malloc(sizeof(int32_t) * N), ids[32];
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        for (int i = 0; i < N; i++) {
            int len = 12 + (i * 7) % 13; /* different prompt lengths */
            for (int t = 0; t < len; t++) ids[t] = tok(i * 100 + t, V);
            if (av_batch_session_prefill(b, i, ids, len, &sp, &out[i]) != AV_OK) die("batch prefill");
        }
        be->sync();
        double t0 = now();
        for (int s = 0; s < gen; s++)
            if (av_batch_session_step_ahead(b, &sp, out, ahead && s + 1 < gen) != AV_OK) die("batch step");
        double dt = now() - t0;
        if (rep > 0 && dt < best) best = dt;
    }
    double tps = (double)N * gen / best;
    printf("{\"workload\":\"decode_b%d\",\"tokens\":%d,\"tok_s\":%.1f,\"gb_s\":%.1f,\"peak_gb\":%.2f}\n", N, gen, tps,
           step_bytes(m) * (gen / best) / 1e9, gb(be->peak_bytes()));
    fflush(stdout);
    free(out);
    av_batch_session_free(b);
}

static void bench_prefill(av_model *m, int T) {
    const av_backend *be = m->be;
    av_session *s;
    if (av_session_new(&s, m, T, T) != AV_OK) die("session");
    int32_t *ids = malloc(sizeof(int32_t) * T);
    for (int i = 0; i < T; i++) ids[i] = tok(i, m->cfg.vocab_size);
    double best = 1e30;
    for (int rep = 0; rep < 4; rep++) {
        av_session_truncate(s, 0);
        be->sync();
        double t0 = now();
        if (av_session_forward(s, ids, T) != AV_OK) die("prefill");
        be->sync();
        double dt = now() - t0;
        if (rep > 0 && dt < best) best = dt;
    }
    double flops = 2.0 * (double)av_config_param_count(&m->cfg) * T;
    printf("{\"workload\":\"prefill_%d\",\"tokens\":%d,\"tok_s\":%.1f,\"tflops\":%.1f,\"peak_gb\":%.2f}\n", T, T, T / best,
           flops / best / 1e12, gb(be->peak_bytes()));
    fflush(stdout);
    free(ids);
    av_session_free(s);
}

static void bench_lora(av_model *m, int B, int T, double peak_tflops) {
    const av_backend *be = m->be;
    av_cuda_reset_peak();
    av_lora_spec spec;
    av_lora_spec_default(&spec);
    spec.rank = 8;
    spec.alpha = 16;
    spec.scale = 2;
    spec.num_layers = 16;
    spec.keys = (1u << AV_PROJ_Q) | (1u << AV_PROJ_V);
    if (av_lora_attach(m, &spec, 1) != AV_OK) die("lora attach");
    av_train_ctx *c;
    if (av_train_ctx_new(&c, m, B, T, 0) != AV_OK) die("train ctx");
    if (getenv("AV_TRAIN_PROFILE")) av_train_set_profile(c, 1); /* bench option: phase ms per step */
    int np = av_train_nparams(c), N = B * T;
    av_param *P = av_train_params(c);
    float **mo = calloc(np, sizeof(float *)), **vo = calloc(np, sizeof(float *));
    for (int i = 0; i < np; i++) {
        mo[i] = be->alloc(P[i].n * 4, "m");
        vo[i] = be->alloc(P[i].n * 4, "v");
        be->zero(mo[i], P[i].n * 4);
        be->zero(vo[i], P[i].n * 4);
    }
    int32_t *ids = malloc(sizeof(int32_t) * N), *tg = malloc(sizeof(int32_t) * N);
    for (int i = 0; i < N; i++) ids[i] = tok(i, m->cfg.vocab_size);
    for (int i = 0; i < N; i++) tg[i] = (i % T) + 1 < T ? ids[i + 1] : -1;
    int steps = getenv("AV_LORA_STEPS") ? atoi(getenv("AV_LORA_STEPS")) : 6; /* ncu: 1 */
    if (steps < 1) steps = 1;
    double t0 = now(), nll;
    int nv;
    for (int s = 0; s < steps; s++) {
        if (s == 2) { be->sync(); t0 = now(); } /* two warm-up steps (when there are more) */
        av_train_zero_grads(c);
        if (av_train_step(c, ids, tg, B, T, 1.0f / N, 1, &nll, &nv) != AV_OK) die("train step");
        av_optim_params op; /* PyTorch's AdamW (bias-corrected), weight decay 0 */
        av_optim_defaults(&op, AV_OPTIM_ADAMW);
        op.lr = 1e-4f, op.step = s + 1, op.bias_correction = 1, op.weight_decay = 0;
        for (int i = 0; i < np; i++) be->optim_step(P[i].data, P[i].grad, mo[i], vo[i], P[i].rows, P[i].cols, &op);
    }
    be->sync();
    double dt = (now() - t0) / (steps > 2 ? steps - 2 : steps), tps = N / dt;
    double params = (double)av_config_param_count(&m->cfg);
    printf("{\"workload\":\"lora_%dx%d\",\"tokens\":%d,\"tok_s\":%.1f,\"peak_gb\":%.2f,\"mfu\":%.3f,\"loss\":%.4f}\n", B, T, N, tps,
           gb(be->peak_bytes()), 4.0 * params * tps / (peak_tflops * 1e12), nll / nv);
    if (getenv("AV_TRAIN_PROFILE")) { /* phase ms per step (all steps; synchronised at each switch) */
        double ms[AV_TRAIN_NPHASES], tot = 0;
        av_train_profile(c, ms);
        printf("{\"profile\":\"lora_%dx%d\"", B, T);
        for (int i = 0; i < AV_TRAIN_NPHASES; i++) {
            printf(",\"%s\":%.2f", av_train_phase_names[i], ms[i] / steps);
            tot += ms[i] / steps;
        }
        printf(",\"total\":%.2f}\n", tot);
    }
    fflush(stdout);
    for (int i = 0; i < np; i++) { be->free(mo[i]); be->free(vo[i]); }
    free(mo); free(vo); free(ids); free(tg);
    av_train_ctx_free(c);
    av_lora_detach(m);
}

/* Diagnostic: each kind of decode kernel alone, one graph of its 22 layer instances per kind, for
 * T = 1, 8, 32 rows: microseconds per kernel and the weight (or KV) GB/s it reaches. */
static double time_graph(const av_backend *be, void *g) {
    be->graph_launch(g);
    be->sync();
    double t0 = now();
    for (int i = 0; i < 20; i++) be->graph_launch(g);
    be->sync();
    return (now() - t0) / 20;
}
static void bench_parts(av_model *m) {
    const av_backend *be = m->be;
    const av_config *c = &m->cfg;
    if (!be->matmul_fused_forward || !be->graph_begin) return;
    int D = c->hidden_size, F = c->intermediate_size, H = c->n_heads, KVH = c->n_kv_heads, hd = c->head_dim, NL = c->n_layers, S = 256;
    size_t qd = (size_t)H * hd, kvd = (size_t)KVH * hd, nq = qd + 2 * kvd, wide = (size_t)2 * F > nq ? (size_t)2 * F : nq;
    size_t nbuf = 32 * (wide > (size_t)c->vocab_size ? wide : (size_t)c->vocab_size);
    if (nbuf < (size_t)32 * S * kvd) nbuf = (size_t)32 * S * kvd;
    float *h = malloc(sizeof(float) * nbuf);
    for (size_t i = 0; i < nbuf; i++) h[i] = 0.01f * (float)((i * 2654435761u) % 200) - 1.0f;
    float *xa = be->alloc(sizeof(float) * nbuf, "parts"), *xb = be->alloc(sizeof(float) * nbuf, "parts");
    float *kc = be->alloc(sizeof(float) * 32 * S * kvd, "parts"), *vc = be->alloc(sizeof(float) * 32 * S * kvd, "parts");
    int32_t pos[32];
    for (int i = 0; i < 32; i++) pos[i] = 100;
    int32_t *posd = be->alloc(sizeof pos, "parts");
    if (!xa || !xb || !kc || !vc || !posd) die("parts alloc");
    be->upload(xa, h, sizeof(float) * nbuf);
    be->upload(xb, h, sizeof(float) * nbuf);
    be->upload(kc, h, sizeof(float) * 32 * S * kvd);
    be->upload(vc, h, sizeof(float) * 32 * S * kvd);
    be->upload(posd, pos, sizeof pos);
    const char *names[] = {"qkv", "attn", "o", "gate_up", "down", "lm_head"};
    int Ts[] = {1, 8, 32};
    for (int ti = 0; ti < 3; ti++) {
        int T = Ts[ti];
        for (int part = 0; part < 6; part++) {
            double bytes = 0;
            for (int pass = 0; pass < 2; pass++) { /* eager first: scratch is sized outside the capture */
            bytes = 0;
            if (pass && be->graph_begin() != 0) die("capture");
            for (int l = 0; l < (part == 5 ? 1 : NL); l++) {
                const av_layer *L = &m->layers[l];
                av_mat W = L->q.w;
                W.rows = L->q.w.rows + L->k.w.rows + L->v.w.rows;
                av_gemv_fusion f = {.in = AV_GEMV_IN_RMSNORM, .norm = &L->attn_norm, .eps = c->rms_norm_eps, .out = AV_GEMV_OUT_ROPE,
                                    .pos = posd, .inv_freq = m->inv_freq, .rope_heads = H + KVH, .head_dim = hd};
                av_gemv_fusion add = {.in = AV_GEMV_IN_X, .out = AV_GEMV_OUT_ADD};
                av_gemv_fusion sw = {.in = AV_GEMV_IN_RMSNORM, .norm = &L->mlp_norm, .eps = c->rms_norm_eps, .out = AV_GEMV_OUT_SWIGLU};
                av_gemv_fusion st = {.in = AV_GEMV_IN_RMSNORM, .norm = &m->final_norm, .eps = c->rms_norm_eps, .out = AV_GEMV_OUT_STORE};
                if (part == 0) { be->matmul_fused_forward(xb, xa, &W, T, &f); bytes += (double)W.rows * W.cols * 2; }
                if (part == 1) {
                    be->attention_decode(xb, xa, xa + qd, xa + qd + kvd, kc, vc, posd, T, (size_t)S * kvd, H, KVH, hd, nq, 0, 0);
                    bytes += (double)T * 101 * kvd * 8;
                }
                if (part == 2) { be->matmul_fused_forward(xb, xa, &L->o.w, T, &add); bytes += (double)D * D * 2; }
                if (part == 3) {
                    av_mat G = L->gate.w;
                    G.rows *= 2;
                    be->matmul_fused_forward(xb, xa, &G, T, &sw);
                    bytes += (double)G.rows * G.cols * 2;
                }
                if (part == 4) { be->matmul_fused_forward(xb, xa, &L->down.w, T, &add); bytes += (double)D * F * 2; }
                if (part == 5) {
                    be->matmul_fused_forward(xb, xa, &m->lm_head, T, &st);
                    bytes += (double)m->lm_head.rows * m->lm_head.cols * 2;
                }
            }
            }
            void *g = be->graph_end();
            if (!g) die("capture end");
            double dt = time_graph(be, g);
            be->graph_free(g);
            int n = part == 5 ? 1 : NL;
            printf("{\"part\":\"%s\",\"T\":%d,\"us_per_kernel\":%.2f,\"gb_s\":%.0f,\"graph_us\":%.1f}\n", names[part], T, dt / n * 1e6,
                   bytes / dt / 1e9, dt * 1e6);
        }
    }
    /* the decode chain of T rows as the step runs it (q|k|v, attention, o, gate|up, down per layer,
     * LM head), and with one kind left out: that kind's marginal cost inside the chain */
    const char *skip_names[] = {"none", "qkv", "attn", "o", "gate_up", "down", "lm_head"};
    float *qkv = xb, *att = xb + (size_t)32 * nq, *gu = kc; /* scratch regions (values do not matter) */
    for (int ti = 0; ti < 3; ti++) {
        int T = Ts[ti];
        double full = 0;
        for (int skip = 0; skip < 8; skip++) { /* 7: the whole chain twice in one graph (the graph boundary's cost) */
            if (be->graph_begin() != 0) die("capture");
            for (int l = 0; l < (skip == 7 ? 2 * NL : NL); l++) {
                if (l == NL) { /* second pass: the LM head of the first */
                    av_gemv_fusion st = {.in = AV_GEMV_IN_RMSNORM, .norm = &m->final_norm, .eps = c->rms_norm_eps, .out = AV_GEMV_OUT_STORE};
                    be->matmul_fused_forward(xb + (size_t)32 * (nq + qd), xa, &m->lm_head, T, &st);
                }
                const av_layer *L = &m->layers[l % NL];
                av_mat W = L->q.w, G = L->gate.w;
                W.rows = L->q.w.rows + L->k.w.rows + L->v.w.rows;
                G.rows *= 2;
                av_gemv_fusion f = {.in = AV_GEMV_IN_RMSNORM, .norm = &L->attn_norm, .eps = c->rms_norm_eps, .out = AV_GEMV_OUT_ROPE,
                                    .pos = posd, .inv_freq = m->inv_freq, .rope_heads = H + KVH, .head_dim = hd};
                av_gemv_fusion add = {.in = AV_GEMV_IN_X, .out = AV_GEMV_OUT_ADD};
                av_gemv_fusion sw = {.in = AV_GEMV_IN_RMSNORM, .norm = &L->mlp_norm, .eps = c->rms_norm_eps, .out = AV_GEMV_OUT_SWIGLU};
                if (skip != 1) be->matmul_fused_forward(qkv, xa, &W, T, &f);
                if (skip != 2) be->attention_decode(att, qkv, qkv + qd, qkv + qd + kvd, vc, vc + (size_t)16 * S * kvd, posd, T, (size_t)S * kvd / 2, H, KVH, hd, nq, 0, 0);
                if (skip != 3) be->matmul_fused_forward(xa, att, &L->o.w, T, &add);
                av_gemv_fusion sw16 = sw, dn = add; /* as the decoder: bf16 SwiGLU output for several rows */
                sw16.out_bf16 = dn.in_bf16 = T > 1 && be->save_acts_bf16;
                if (skip != 4) be->matmul_fused_forward(gu, xa, &G, T, &sw16);
                if (skip != 5) be->matmul_fused_forward(xa, gu, &L->down.w, T, &dn);
            }
            av_gemv_fusion st = {.in = AV_GEMV_IN_RMSNORM, .norm = &m->final_norm, .eps = c->rms_norm_eps, .out = AV_GEMV_OUT_STORE};
            if (skip != 6) be->matmul_fused_forward(xb + (size_t)32 * (nq + qd), xa, &m->lm_head, T, &st);
            void *g = be->graph_end();
            if (!g) die("capture end");
            be->upload(xa, h, sizeof(float) * 32 * (size_t)F); /* keep the residual finite between repeats */
            double dt = time_graph(be, g);
            be->graph_free(g);
            if (!skip) full = dt;
            if (skip == 7)
                printf("{\"chain\":\"T%d_twice_per_graph\",\"step_us\":%.1f,\"graph_boundary_us\":%.2f}\n", T, dt / 2 * 1e6,
                       (full - dt / 2) * 1e6);
            else
                printf("{\"chain\":\"T%d_without_%s\",\"step_us\":%.1f,\"marginal_us_per_layer\":%.2f}\n", T, skip_names[skip], dt * 1e6,
                       skip ? (full - dt) * 1e6 / (skip == 6 ? 1 : NL) : 0.0);
        }
    }
    fflush(stdout);
    be->free(xa); be->free(xb); be->free(kc); be->free(vc); be->free(posd);
    free(h);
}

/* The scheduler's calls on a 64-slot session: a prompt chunk of T rows into one slot (host time to
 * enqueue it, time until the GPU is done, and with its last row's logits downloaded), and one decode
 * step of n busy rows with host logits (av_batch_session_step_logits). */
static void bench_slots(av_model *m) {
    const av_backend *be = m->be;
    int N = 64, V = m->cfg.vocab_size;
    av_batch_session *b;
    if (av_batch_session_new(&b, m, N, 512, 256) != AV_OK) die("batch");
    float *logits = malloc(sizeof(float) * (size_t)N * V);
    int32_t ids[256], pos[64], fed[64];
    for (int t = 0; t < 256; t++) ids[t] = tok(t, V);
    int Ts[] = {16, 64, 128, 256};
    for (int ti = 0; ti < 4; ti++) {
        int T = Ts[ti];
        double enq = 1e30, tot = 1e30, wl = 1e30;
        for (int rep = 0; rep < 12; rep++) {
            be->sync();
            double t0 = now();
            if (av_batch_session_prefill_at(b, rep % N, ids, T, 0, NULL) != AV_OK) die("prefill_at");
            double t1 = now();
            be->sync();
            double t2 = now();
            if (av_batch_session_prefill_at(b, rep % N, ids, T, 0, logits) != AV_OK) die("prefill_at");
            double t3 = now();
            if (rep < 2) continue;
            if (t1 - t0 < enq) enq = t1 - t0;
            if (t2 - t0 < tot) tot = t2 - t0;
            if (t3 - t2 < wl) wl = t3 - t2;
        }
        printf("{\"workload\":\"slot_prefill\",\"T\":%d,\"enqueue_ms\":%.3f,\"done_ms\":%.3f,\"with_logits_ms\":%.3f}\n", T, enq * 1e3,
               tot * 1e3, wl * 1e3);
        fflush(stdout);
    }
    /* prompt chunks as a server sees them: a new length and a new cached prefix every time */
    double first = 0, sum = 0;
    for (int rep = 0; rep < 40; rep++) {
        int T = 37 + 5 * rep, p0 = (rep * 13) % 96;
        double t0 = now();
        if (av_batch_session_prefill_at(b, rep % N, ids, T, p0, logits) != AV_OK) die("prefill_at");
        double dt = now() - t0;
        if (rep < 20) first += dt;
        else sum += dt;
    }
    /* the same 20 shapes again */
    double again = 0;
    for (int rep = 20; rep < 40; rep++) {
        int T = 37 + 5 * rep, p0 = (rep * 13) % 96;
        double t0 = now();
        if (av_batch_session_prefill_at(b, rep % N, ids, T, p0, logits) != AV_OK) die("prefill_at");
        again += now() - t0;
    }
    printf("{\"workload\":\"slot_prefill_varied\",\"T\":\"37..232\",\"first_ms\":%.3f,\"new_shapes_ms\":%.3f,\"seen_shapes_ms\":%.3f}\n",
           first / 20 * 1e3, sum / 20 * 1e3, again / 20 * 1e3);
    fflush(stdout);
    int ns[] = {1, 8, 32, 64};
    for (int ni = 0; ni < 4; ni++) {
        int n = ns[ni];
        for (int i = 0; i < N; i++) pos[i] = i < n ? 300 : -1, fed[i] = tok(i, V);
        double best = 1e30, tot = 0;
        for (int rep = 0; rep < 100; rep++) { /* 64 steps before a smaller row bucket takes over */
            double t0 = now();
            if (av_batch_session_step_logits(b, fed, pos, logits) != AV_OK) die("step_logits");
            double dt = now() - t0;
            if (rep >= 80) { tot += dt; if (dt < best) best = dt; }
        }
        printf("{\"workload\":\"slot_step\",\"rows\":%d,\"ms\":%.3f,\"mean_ms\":%.3f}\n", n, best * 1e3, tot / 20 * 1e3);
        fflush(stdout);
    }
    free(logits);
    av_batch_session_free(b);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: gpu_bench MODEL_DIR [decode|batch|batch:N,N,..|prefill|lora|all|parts|slots]\n"); return 2; }
    const char *what = argc > 2 ? argv[2] : "all";
    const av_backend *be = av_backend_cuda();
    if (!be) die("cuda");
    if (getenv("AV_AHEAD")) ahead = atoi(getenv("AV_AHEAD")) != 0;
    char dev[256] = "";
    av_cuda_device_name(dev, sizeof dev);
    double peak_tflops = strstr(dev, "A100") ? 312 : 989; /* dense bf16 tensor-core peak (H100/H200 SXM) */
    av_model *m;
    if (av_model_load(&m, argv[1], be) != AV_OK) die("load");
    printf("{\"device\":\"%s\",\"weight_gb\":%.3f,\"params\":%lld}\n", dev, gb(m->weight_bytes), av_config_param_count(&m->cfg));
    int all = !strcmp(what, "all");
    if (all || !strcmp(what, "decode")) bench_decode1(m, 128);
    if (!strcmp(what, "parts")) bench_parts(m);
    if (!strcmp(what, "slots")) bench_slots(m);
    if (all || !strcmp(what, "batch")) { bench_batch(m, 8, 128); bench_batch(m, 32, 128); }
    if (!strncmp(what, "batch:", 6)) /* sequence counts, e.g. batch:2,8,16,24,32 */
        for (const char *p = what + 6; *p; p += *p == ',') {
            char *end;
            long n = strtol(p, &end, 10);
            if (end == p || n < 1 || n > 256) die("batch:N,N,.. takes counts 1..256");
            bench_batch(m, (int)n, 128);
            p = end;
        }
    if (all || !strcmp(what, "prefill")) bench_prefill(m, 2048);
    if (all || !strcmp(what, "lora")) {
        int only = getenv("AV_LORA_B") ? atoi(getenv("AV_LORA_B")) : 0; /* one batch size (profiling) */
        for (int b = 1; b <= 16; b *= 4)
            if (!only || only == b) bench_lora(m, b, 512, peak_tflops);
    }
    if (av_cuda_status() != AV_OK) die("cuda status");
    av_model_free(m);
    return 0;
}
