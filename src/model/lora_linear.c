/* LoRA linear forward and backward (see lora_linear.h). The adapter's second product accumulates
 * straight into out where the backend can (matmul_forward_ex), else through scratch + add_scaled.
 * Dropout masks are regenerated from (seed, step, layer, projection) in the backward: nothing
 * random is stored. */
#include "model/lora_linear.h"

static uint64_t drop_key(const av_layer_ws *ws, int l, av_proj p) {
    return av_dropout_key(ws->drop_seed, ws->drop_step, (uint64_t)l * AV_PROJ_COUNT + (uint64_t)p);
}

void av_lora_linear_forward(const av_backend *be, av_layer_ws *ws, float *out, int acc, const float *x, const uint16_t *x16,
                            const av_linear *L, int l, av_proj p, int N, float *xa_keep) {
    if (av_lora_w16(ws, L))
        be->matmul_forward_ex(out, 0, x16 ? (const void *)x16 : (const void *)x, x16 != NULL, &L->w, N, 1.0f, acc);
    else
        be->matmul_forward(out, x, &L->w, N);
    if (!L->lora_a) return;
    int ph = av_layer_prof_switch(ws, be, AV_TRAIN_PH_LORA);
    const float *u = x;
    if (ws->drop_on) {
        be->dropout_forward(ws->xdrop, x, (size_t)N * L->w.cols, ws->drop_p, drop_key(ws, l, p));
        u = ws->xdrop;
    }
    av_mat A = {.data = L->lora_a, .dtype = AV_F32, .rows = L->rank, .cols = L->w.cols};
    av_mat Bm = {.data = L->lora_b, .dtype = AV_F32, .rows = L->w.rows, .cols = L->rank};
    float *xa = xa_keep ? xa_keep : ws->lora_tmp, *xab = ws->lora_tmp + (size_t)N * L->rank;
    be->matmul_forward(xa, u, &A, N);
    if (!be->matmul_forward_ex || be->matmul_forward_ex(out, 0, xa, 0, &Bm, N, L->scale, 1) != 0) {
        be->matmul_forward(xab, xa, &Bm, N);
        be->add_scaled(out, L->scale, xab, (size_t)N * L->w.rows);
    }
    av_layer_prof_switch(ws, be, ph);
}

/* The adapter branch alone: du += s (dy B) A (du may be NULL), dA += s (dy B)^T u, dB += s dy^T (u A^T). */
static void branch_backward(const av_backend *be, float *du, float *dA, float *dB, const float *dy, const float *u, const float *ua,
                            const av_linear *L, int N, float *tmp) {
    if (!dA && !dB && !du) return;
    av_mat A = {.data = L->lora_a, .dtype = AV_F32, .rows = L->rank, .cols = L->w.cols};
    av_mat Bm = {.data = L->lora_b, .dtype = AV_F32, .rows = L->w.rows, .cols = L->rank};
    size_t nr = (size_t)N * L->rank;
    float *sx = tmp + nr, *dyb = tmp + 2 * nr;
    if (dB) {
        const float *xa = ua; /* the forward's u A^T saves re-reading u (the widest operand) */
        if (!xa) {
            be->matmul_forward(tmp, u, &A, N);
            xa = tmp;
        }
        be->zero(sx, nr * sizeof(float));
        be->add_scaled(sx, L->scale, xa, nr);
        be->matmul_backward(NULL, dB, dy, sx, &Bm, N);
    }
    be->zero(dyb, nr * sizeof(float));
    be->matmul_backward(dyb, NULL, dy, NULL, &Bm, N);
    be->zero(sx, nr * sizeof(float));
    be->add_scaled(sx, L->scale, dyb, nr);
    be->matmul_backward(du, dA, sx, u, &A, N);
}

void av_lora_linear_backward(const av_backend *be, av_layer_ws *ws, float *dx, int acc, const float *dy, const uint16_t *dy16,
                             const float *x, const av_linear *L, int l, av_proj p, int N, const float *xa) {
    int k = l * AV_PROJ_COUNT + p;
    size_t nx = (size_t)N * L->w.cols;
    if (ws->full) { /* full fine-tuning: no adapters, dW of the (f32 master) weight */
        if (dx && !acc) be->zero(dx, nx * sizeof(float));
        be->matmul_backward(dx, ws->gw[k], dy, x, &L->w, N);
        return;
    }
    if (dx && (!av_lora_w16(ws, L) ||
               be->matmul_backward_dx_ex(dx, 0, acc, dy16 ? (const void *)dy16 : (const void *)dy, dy16 != NULL, &L->w, N) != 0)) {
        if (!acc) be->zero(dx, nx * sizeof(float));
        be->matmul_backward(dx, NULL, dy, NULL, &L->w, N);
    }
    if (!L->lora_a) return;
    float *ga = ws->ga ? ws->ga[k] : NULL, *gb = ws->gb ? ws->gb[k] : NULL;
    int ph = av_layer_prof_switch(ws, be, AV_TRAIN_PH_LORA);
    if (!ws->drop_on) {
        branch_backward(be, dx, ga, gb, dy, x, xa, L, N, ws->lora3);
    } else {
        uint64_t key = drop_key(ws, l, p);
        be->dropout_forward(ws->xdrop, x, nx, ws->drop_p, key); /* the forward's mask, regenerated */
        if (dx) be->zero(ws->dxdrop, nx * sizeof(float));
        branch_backward(be, dx ? ws->dxdrop : NULL, ga, gb, dy, ws->xdrop, xa, L, N, ws->lora3);
        if (dx) be->dropout_backward(dx, ws->dxdrop, nx, ws->drop_p, key);
    }
    av_layer_prof_switch(ws, be, ph);
}
