/* CPU decode: a few new rows (one per sequence) through every layer, and optionally the final
 * RMSNorm and the LM head, in one OpenMP parallel region (see decode_cpu.c). */
#ifndef AV_DECODE_CPU_H
#define AV_DECODE_CPU_H
#include "model/layer.h"

/* Most rows one call takes (weights are read once for all of them). */
#define AV_DECODE_CPU_MAX_ROWS 16

/* In place over x [N, D], N = ws->B * ws->T rows (ws->kind DECODE, or PREFILL of one row): row i at
 * position ws->pos[i] (host memory) appends its key/value to its cache (ws->k_cache/v_cache +
 * layer * layer_stride + i * seq_stride) and attends to positions 0..pos[i]. hidden [N, D] (or NULL)
 * receives the final RMSNorm, logits [N, V] (or NULL) the LM head. Returns 0 when the model or
 * the rows do not suit it (adapters, shapes, too many rows, out of memory): nothing was done. */
int av_llama_decode_cpu(const av_model *m, av_layer_ws *ws, float *x, float *hidden, float *logits);

#endif
