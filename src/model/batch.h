/* Batched generation: N sequences with different prompt lengths decoded together. Each sequence
 * owns a KV-cache region [n_layers][N][max_seq][kv_dim] and its own position; a prompt is
 * prefilled alone (matrix-matrix), then every step feeds all N sequences' last tokens as one
 * N-row batch (one weight read per step for all of them), attends per sequence
 * (backend attention_decode) and samples on the device (graph-captured on CUDA). Works on any
 * backend; on the CPU the same ops run eagerly.
 *
 * Usage (what `anvil generate --prompts-file F --batch-size N` does per group of N prompts):
 *     av_batch_session *b;  av_batch_session_new(&b, model, N, max_prompt + max_tokens, 0);
 *     for i < N:     av_batch_session_prefill(b, i, prompt_i, len_i, &samp, &tok[i]);   // first new token
 *     while any sequence is running:
 *         (stream tok[i]; on EOS / stop string / max tokens: av_batch_session_finish(b, i))
 *         av_batch_session_step(b, &samp, tok);                                           // next token of all N
 * A finished sequence stays in the batch (its row is computed, its position no longer advances)
 * so the captured step keeps its shape; fewer than N prompts: prefill the rest with any one token
 * and finish them at once. Per-sequence stops are the caller's (it sees every token). */
#ifndef AV_BATCH_H
#define AV_BATCH_H
#include "model/decode_graph.h"

typedef struct {
    float temperature; /* <= 0: greedy */
    float top_p;       /* 1: off */
    uint64_t seed;     /* randomness keyed by (seed, position): as a single sequence's */
} av_batch_sampling;

typedef struct av_batch_session av_batch_session;

/* n_seq sequences of up to max_seq tokens each (prompt + generated); prompts are prefilled in
 * chunks of max_chunk rows (<= 0: 512). */
av_status av_batch_session_new(av_batch_session **out, av_model *m, int n_seq, int max_seq, int max_chunk);
void av_batch_session_free(av_batch_session *b);
int av_batch_session_size(const av_batch_session *b);
/* Resets sequence i, runs its prompt ids[0..T) and samples its first generated token into *first
 * (the token the next av_batch_session_step feeds). Marks the sequence running. */
av_status av_batch_session_prefill(av_batch_session *b, int i, const int32_t *ids, int T, const av_batch_sampling *sp, int32_t *first);
/* Feeds every sequence's pending token at its position, samples the next tokens into out[N]
 * (host). Finished sequences produce ignorable tokens. Fails when a running sequence is full. */
av_status av_batch_session_step(av_batch_session *b, const av_batch_sampling *sp, int32_t *out);
/* As av_batch_session_step; with lookahead != 0 the following step is queued before returning (the
 * GPU runs it while the caller handles out[]) and the next call with the same sampling takes it.
 * Finishing sequences in between is fine; a prefill discards it. Pass 0 on the last step. */
av_status av_batch_session_step_ahead(av_batch_session *b, const av_batch_sampling *sp, int32_t *out, int lookahead);
/* Stops sequence i (its slot is reused by the next av_batch_session_prefill(b, i, ...)). */
void av_batch_session_finish(av_batch_session *b, int i);
/* Number of tokens in sequence i's cache + its pending token's position. */
int av_batch_session_pos(const av_batch_session *b, int i);
/* Backend bytes held by the batch (KV cache + activations). */
size_t av_batch_session_bytes(const av_batch_session *b);

/* ---- slots for continuous batching (engine/scheduler.c): the host samples every row ----
 * A session driven through these two calls never uses av_batch_session_prefill/_step. */
/* Prompt rows ids[0..T) of sequence i at positions p0.. (T <= av_batch_session_chunk), K/V into its
 * cache region (its rows >= p0 are overwritten; other sequences are untouched). With logits != NULL
 * the logits of the last row are written there (host, [vocab]). */
av_status av_batch_session_prefill_at(av_batch_session *b, int i, const int32_t *ids, int T, int p0, float *logits);
int av_batch_session_chunk(const av_batch_session *b);
/* One decode row per sequence with pos[i] >= 0: feeds ids[i] at position pos[i] (appended to its
 * cache) and writes the logits of the k-th such row into logits[k * vocab] (host). Rows with
 * pos[i] < 0 are idle (no cache write, no logits). */
av_status av_batch_session_step_logits(av_batch_session *b, const int32_t *ids, const int32_t *pos, float *logits);
/* The same step, each fed row's greedy token (argmax of its logits, lowest id on ties, NaN skipped:
 * av_sample_argmax's rule) taken on the device into out[k]: no logits cross to the host. Only where
 * av_batch_session_can_greedy (the backend has a device sampler). */
int av_batch_session_can_greedy(const av_batch_session *b);
av_status av_batch_session_step_greedy(av_batch_session *b, const int32_t *ids, const int32_t *pos, int32_t *out);
/* Bytes of one cached position (K and V of every layer). */
size_t av_batch_session_kv_row_bytes(const av_batch_session *b);
/* Cache rows [0, n) of sequence i out to / back in from the prefix cache's saved prefixes: k, v in
 * the backend's memory, [n_layers][ld][kv_dim] each (ld >= n rows per layer); device-side copies. */
av_status av_batch_session_kv_save(av_batch_session *b, int i, int n, int ld, float *k, float *v);
av_status av_batch_session_kv_load(av_batch_session *b, int i, int n, int ld, const float *k, const float *v);

#endif
