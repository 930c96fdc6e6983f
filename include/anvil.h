/* anvil's public C API: what the CLI, a server, benchmarks and other programs use. Handles are
 * opaque (av_model, av_session, av_tokenizer, ...); option and result structs that callers fill are
 * visible. Every call that can fail returns av_status and leaves one line in av_last_error() (per
 * thread). CPU code keeps no shared mutable state (scratch is per call or per thread; the thread
 * count and the atomic peak counters are process-wide by design), so sessions may generate side by
 * side on different threads. */
#ifndef ANVIL_H
#define ANVIL_H
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
/* cJSON (Debian's libcjson) appears in this API where callers pass JSON values: chat messages,
 * template variables, JSON/JSONL helpers, dataset rendering callbacks. */
#include <cjson/cJSON.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ==== status and errors ======================================================================= */
typedef enum {
    AV_OK = 0,
    AV_ERR_IO,          /* missing/unreadable/unwritable file */
    AV_ERR_FORMAT,      /* malformed or truncated file contents */
    AV_ERR_SHAPE,       /* shape/dtype disagrees with the config */
    AV_ERR_UNSUPPORTED, /* valid input we do not handle */
    AV_ERR_NOMEM,
    AV_ERR_ARG,         /* bad argument / flag value */
    AV_ERR_TEMPLATE,    /* chat template parse or runtime error */
    AV_ERR_DEVICE,      /* GPU / backend failure */
    AV_ERR_INTERRUPTED,
} av_status;

/* The "where: what" line of this thread's last failed call. */
const char *av_last_error(void);
void av_clear_error(void);

#define AV_TRY(expr) do { av_status av_try_s_ = (expr); if (av_try_s_ != AV_OK) return av_try_s_; } while (0)

/* ==== element types =========================================================================== */
typedef enum { AV_F32 = 0, AV_F16, AV_BF16, AV_I32, AV_I64, AV_U8, AV_I8, AV_U32, AV_F64, AV_BOOL, AV_DTYPE_COUNT } av_dtype;
const char *av_dtype_name(av_dtype t);            /* "F32", "BF16", ... (safetensors spelling) */
int av_dtype_parse(const char *s, av_dtype *out); /* 0 on success */

/* ==== files, threads, memory ================================================================== */
/* Reads a whole file into a malloc'd NUL-terminated buffer (len may be NULL). */
av_status av_file_read(const char *path, char **out, size_t *len);
int av_file_exists(const char *path);
int av_dir_exists(const char *path);
/* mkdir -p: creates dir and its missing parents. */
av_status av_mkdir_p(const char *dir);
/* Removes a directory of plain files (a temp output on failure). */
void av_remove_tree(const char *dir);
/* dir/name into buf; returns buf. */
char *av_path_join(char *buf, size_t cap, const char *dir, const char *name);
/* Writes a file atomically (temp file + fsync + rename). */
av_status av_write_file_atomic(const char *path, const void *data, size_t len);

/* Thread count for the CPU kernels and OpenBLAS (process-wide; n <= 0: all cores). */
void av_threads_set(int n);
int av_threads_get(void);

/* Peak resident memory of the process in bytes (VmHWM) and current (VmRSS). */
size_t av_mem_peak_rss(void);
size_t av_mem_current_rss(void);
/* Bytes of host memory available to allocate (MemAvailable); 0 if unknown. */
size_t av_mem_available(void);
/* Peak bytes allocated through the library's host allocator. */
size_t av_mem_peak_alloc(void);

/* ==== backends ================================================================================ */
typedef enum { AV_DEVICE_CPU = 0, AV_DEVICE_CUDA } av_device;
typedef struct av_backend av_backend; /* a static table: never freed */

const av_backend *av_backend_cpu(void);
/* NULL (with av_last_error) when CUDA is not compiled in or no GPU is present. */
const av_backend *av_backend_cuda(void);
/* compute: AV_BF16 (default; bf16 inputs, f32 accumulate) or AV_F32 (exact f32). NULL without a GPU. */
const av_backend *av_backend_cuda_dtype(av_dtype compute);
/* name: "cpu", "cuda", or NULL/"auto" (cuda when a GPU is present, else cpu). */
av_status av_backend_select(const char *name, const av_backend **out);
const char *av_backend_name(const av_backend *be);
av_device av_backend_device(const av_backend *be);
/* AV_ERR_DEVICE (with the error line) if any CUDA call or kernel failed so far; AV_OK without CUDA. */
av_status av_cuda_status(void);
/* "NVIDIA H100 80GB HBM3 (132 SMs, 79.1 GiB)"; -1 without a GPU. */
int av_cuda_device_name(char *buf, size_t cap);
/* Returns every device allocation of the process (the whole arena: any device pointer handed out
 * before is invalid after) and the calling thread's stream, cuBLAS/cuBLASLt handles and pinned
 * buffers. Call once at the end, after the last GPU work; a later av_backend_cuda() starts afresh.
 * A no-op without CUDA or before the GPU was used. */
void av_cuda_shutdown(void);
/* Returns the calling thread's stream, handles, pinned buffers and scratch (a worker thread that
 * drove a GPU calls it before it ends; the arena's buffers stay). A no-op where the thread never used the GPU. */
void av_cuda_thread_release(void);

/* ==== model config ============================================================================ */
typedef enum { AV_ROPE_DEFAULT = 0, AV_ROPE_LINEAR, AV_ROPE_LLAMA3 } av_rope_type;

#define AV_MAX_EOS 8
/* config.json of a LlamaForCausalLM (transformers 4.x and 5.x styles). */
typedef struct {
    int vocab_size, hidden_size, intermediate_size, n_layers, n_heads, n_kv_heads, head_dim;
    int max_position_embeddings;
    float rms_norm_eps;
    double rope_theta;
    av_rope_type rope_type;
    double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_pos;
    int tie_word_embeddings;
    int bos_token_id; /* -1 if none */
    int eos_token_ids[AV_MAX_EOS];
    int n_eos;
    av_dtype dtype;           /* declared dtype (torch_dtype / dtype), AV_BF16 if absent */
    int quant_bits, quant_group_size; /* 0 when not quantized (MLX "quantization") */
} av_config;

av_status av_config_load(av_config *c, const char *config_json_path);
/* Parses from a JSON text; `where` names the source in errors. */
av_status av_config_parse(av_config *c, const char *json_text, const char *where);
/* Total parameter count (embedding + layers + norm + untied head). */
long long av_config_param_count(const av_config *c);
/* Writes a config.json (transformers-4 style) atomically. */
av_status av_config_save(const av_config *c, const char *path);

/* ==== models ================================================================================== */
typedef struct av_model av_model;

/* Loads DIR/config.json + safetensors onto a backend, checking every tensor against the config. */
av_status av_model_load(av_model **out, const char *dir, const av_backend *be);
void av_model_free(av_model *m);
const av_config *av_model_config(const av_model *m);
const char *av_model_dir(const av_model *m);
const av_backend *av_model_backend(const av_model *m);
size_t av_model_weight_bytes(const av_model *m);  /* bytes of the weight files' tensors */
/* Decode steps captured as backend graphs (CUDA graphs; default on) or, with on = 0, issued op by op
 * each token: the same ops and results, slower; for debugging with tools that do not follow graphs. */
void av_model_set_graphs(av_model *m, int on);
/* Attention implementation for prefill, decode and training: AUTO picks per shape (flash for long
 * chunks and training where the backend has it), FLASH tiles with an online softmax and never holds
 * the S x S scores, STANDARD materialises them (the reference). Same results within rounding. */
typedef enum { AV_ATTN_AUTO = 0, AV_ATTN_FLASH, AV_ATTN_STANDARD } av_attention_kind;
/* Lets m run sequences of up to n_ctx positions (training included). Past max_position_embeddings,
 * linear RoPE scaling (HF's rope_scaling {"rope_type": "linear"}) stretches the trained positions
 * over n_ctx: the factor grows by n_ctx / max_position_embeddings, exactly as loading a config with
 * that scaling and max_position_embeddings = n_ctx would. No-op when n_ctx fits; AV_ERR_UNSUPPORTED
 * for Llama-3-scaled models (their context is already long). */
av_status av_model_extend_context(av_model *m, int n_ctx);
void av_model_set_attention(av_model *m, av_attention_kind k);
av_attention_kind av_model_attention(const av_model *m);
/* Times one attention call of `kind` (forward, or with AV_ATTN_TIME_BACKWARD forward + backward) on
 * backend be for B sequences of T tokens (causal; H query heads, KVH key/value heads, head dim hd) on
 * random inputs: median seconds over reps, and bytes: the attention's own buffers (inputs, outputs,
 * scores or lse, scratch). Flash runs training's entry points (f32 out and gradients); with
 * AV_ATTN_TIME_BF16_IO PyTorch's contract instead (bf16 q, k, v, out, dout and gradients;
 * AV_ERR_UNSUPPORTED where the backend lacks it). For anvil bench --suite attention. */
enum { AV_ATTN_TIME_BACKWARD = 1, AV_ATTN_TIME_BF16_IO = 2 };
av_status av_attention_time(const av_backend *be, av_attention_kind kind, int B, int T, int H, int KVH, int hd, int flags,
                            int reps, double *seconds, size_t *bytes);
/* Times the backend's decode attention (one new query row per sequence against a cache of `keys`
 * rows, the new row written into it): N sequences, H query heads, KVH key/value heads, head dim hd,
 * random inputs; median seconds per call over reps rounds of 16 back-to-back calls. For
 * bench/attention_gpu (K/V bytes read per second). */
av_status av_attention_decode_time(const av_backend *be, int N, int keys, int H, int KVH, int hd, int reps, double *seconds);
/* Times the backend's matrix product out[M, N] = x[M, K] . W[N, K]^T (x f32, W of wdtype: f32, bf16
 * or f16) on random inputs: median seconds over reps after one warm-up. For anvil bench (GFLOP/s =
 * 2 M N K / seconds). */
av_status av_matmul_time(const av_backend *be, int M, int N, int K, av_dtype wdtype, int reps, double *seconds);
int av_model_weight_files(const av_model *m);     /* number of safetensors files */
av_dtype av_model_weight_dtype(const av_model *m); /* dtype of the embedding table as stored */
/* GGML type of a GGUF model's first layer's q projection ("Q4_0", "F16", ...); NULL when the model
 * did not come from a GGUF file. */
const char *av_model_gguf_type(const av_model *m);
/* Peak memory in bytes: the process's peak RSS where backend memory is host memory (CPU), else
 * the backend's peak (GPU). */
size_t av_model_peak_bytes(const av_model *m);

/* Random-weight models: fills c with a preset ("tinyllama-1.1b", "llama-3.2-1b", "tiny"; -1 if
 * unknown); writes dir/config.json + dir/model.safetensors (normal(0, 0.02), unit norms) atomically. */
int av_synth_preset(av_config *c, const char *name);
av_status av_synth_write(const av_config *c, const char *dir, uint64_t seed, av_dtype dtype);

/* ==== tokenizer =============================================================================== */
typedef struct av_tokenizer av_tokenizer;

/* dir holds tokenizer.json and/or tokenizer.model (+ tokenizer_config.json). force_spm=1 uses
 * tokenizer.model even when tokenizer.json exists. */
av_status av_tokenizer_load(av_tokenizer **out, const char *dir, int force_spm);
void av_tokenizer_free(av_tokenizer *t);
/* Encodes `len` bytes of text. add_special=1 adds BOS/EOS as the tokenizer's post-processor /
 * tokenizer_config.json says. Special/added tokens in the text are matched before BPE. *ids is malloc'd. */
av_status av_tokenizer_encode(const av_tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids, int *n);
/* Decodes ids to a malloc'd NUL-terminated string. skip_special=1 drops special tokens (BOS/EOS...). */
av_status av_tokenizer_decode(const av_tokenizer *t, const int32_t *ids, int n, int skip_special, char **out);
int av_tokenizer_vocab_size(const av_tokenizer *t);
int av_tokenizer_bos_id(const av_tokenizer *t);          /* -1 if none */
int av_tokenizer_eos_id(const av_tokenizer *t);          /* -1 if none */
const char *av_tokenizer_bos_str(const av_tokenizer *t); /* "<s>" or NULL */
const char *av_tokenizer_eos_str(const av_tokenizer *t);
int av_tokenizer_token_id(const av_tokenizer *t, const char *piece); /* -1 if unknown */
const char *av_tokenizer_piece(const av_tokenizer *t, int id);        /* raw vocab piece or NULL */
int av_tokenizer_is_special(const av_tokenizer *t, int id);

/* Streaming decode: push ids one at a time; returns the bytes that are now complete (never half a
 * UTF-8 character) in a buffer owned by the decoder, valid until the next call. The stream yields
 * the same text as av_tokenizer_decode of all ids (with skip_special=1). */
typedef struct av_stream_decoder av_stream_decoder;
av_stream_decoder *av_stream_decoder_new(const av_tokenizer *t);
const char *av_stream_decoder_push(av_stream_decoder *s, int32_t id, size_t *len);
const char *av_stream_decoder_flush(av_stream_decoder *s, size_t *len); /* pending bytes at end */
void av_stream_decoder_free(av_stream_decoder *s);

/* Writes a built-in byte-level tokenizer (tokenizer.json + tokenizer_config.json) into dir. */
av_status av_tokenizer_write_builtin(const char *dir);

/* ==== chat templates ========================================================================== */
/* A Jinja-subset engine rendering templates as HF transformers' apply_chat_template does.
 * Errors: AV_ERR_TEMPLATE, "where:line:col: what". */
typedef struct av_template av_template;
av_status av_template_parse(av_template **out, const char *src, const char *where);
/* Renders with `vars` (a JSON object of variables, or NULL). *out is malloc'd. */
av_status av_template_render(const av_template *t, const cJSON *vars, char **out);
void av_template_free(av_template *t);
/* Caps for hostile templates (0 = default): output bytes (64 MiB), memory (512 MiB), steps (50 million). */
void av_template_set_limits(av_template *t, size_t max_output, size_t max_memory, long max_steps);

/* A model directory's template (chat_template.jinja, else tokenizer_config.json's chat_template)
 * and BOS/EOS strings. */
typedef struct {
    char *template_src; /* NULL if the directory has no chat template */
    char *where;        /* file the template came from (for error messages) */
    char *bos, *eos;    /* special token strings, or NULL */
} av_chat_config;

/* A directory without any template is not an error (template_src stays NULL). */
av_status av_chat_config_load(av_chat_config *c, const char *dir);
void av_chat_config_free(av_chat_config *c);
/* Renders `messages` (JSON array of {role, content, ...}) like apply_chat_template: variables
 * messages (null-valued keys dropped), tools = documents = none, add_generation_prompt,
 * bos_token / eos_token when given, then extra_vars (a JSON object, may override any of these). */
av_status av_chat_render(const char *template_src, const char *where, const cJSON *messages, int add_generation_prompt,
                         const char *bos, const char *eos, const cJSON *extra_vars, char **out);

/* ==== sessions ================================================================================ */
/* A session owns one sequence's KV cache and scratch on the model's backend. One session per
 * thread: sessions of one model may run side by side. */
typedef struct av_session av_session;

av_status av_session_new(av_session **out, av_model *m, int max_seq, int max_chunk);
/* A session whose KV cache is MLX-LM's RotatingKVCache(max_size, keep) (mlx_lm generate / chat
 * --max-kv-size, keep 4): it takes any number of tokens (n_past counts them all: RoPE positions);
 * one token at a time overwrites the oldest row after the first `keep` once max_size rows are held,
 * and attends the max_size rows; a chunk of several tokens attends the keep rows, the latest
 * max_size - 1 - keep and its own rows, causally, each row at most max_size rows back (MLX's
 * sliding-window mask). Rows dropped cannot come back: truncating such a session below n_past
 * empties it. max_size > keep >= 0. */
av_status av_session_new_rotating(av_session **out, av_model *m, int max_size, int keep, int max_chunk);
#define AV_KV_KEEP 4 /* the keep of mlx_lm's --max-kv-size caches */
int av_session_rotating(const av_session *s); /* max_size of a rotating session, else 0 */
void av_session_free(av_session *s);
/* Runs T tokens at the next positions (chunked by max_chunk), appending them to the KV cache. */
av_status av_session_forward(av_session *s, const int32_t *ids, int T);
/* av_session_forward through the prefill path only (matrix-matrix, eager). */
av_status av_session_prefill(av_session *s, const int32_t *ids, int T);
/* Logits of the last token of the last forward into host memory logits[vocab_size]. */
void av_session_last_logits(av_session *s, float *logits);
/* Forgets cached positions >= n (keeps the common prefix for chat; a rotating session that has
 * dropped rows forgets everything). */
void av_session_truncate(av_session *s, int n);
/* Runs ids[0..T) from an empty cache and returns sum over t < T-1 of -log p(ids[t+1] | ids[..t]);
 * row_nll (host, T-1) and argmax (host, T) optional. */
av_status av_session_nll(av_session *s, const int32_t *ids, int T, double *sum, float *row_nll, int32_t *argmax);
/* Runs ids[0..T) at the next positions (prefill path, appended to the KV cache) and writes the logits
 * of each of those positions into host logits[T, vocab_size] (row t: the next-token scores after
 * ids[t]). Callers bound memory by passing a few rows at a time. */
av_status av_session_logits(av_session *s, const int32_t *ids, int T, float *logits);
int av_session_n_past(const av_session *s);  /* cached positions */
int av_session_max_seq(const av_session *s); /* context size (a rotating session: its max_size) */
av_model *av_session_model(const av_session *s); /* the model it runs */

/* ==== comparing two models (llama.cpp's --kl-divergence) ===================================== */
/* Accumulates, over every scored position t of the windows given (t predicts ids[t+1]): KL(base || q)
 * = sum_v p_base(v) (log p_base(v) - log p_q(v)) from double log-softmax of the two logit rows,
 * whether the argmaxes agree (first maximum), and each model's NLL of ids[t+1]. */
typedef struct av_kl av_kl;
av_status av_kl_new(av_kl **out);
void av_kl_free(av_kl *k);
/* Runs ids[0..T) through both sessions from empty caches, in step a few rows at a time (host memory:
 * two [64, vocab] logit blocks, never [T, vocab]); adds T-1 positions. The models' vocabulary sizes
 * must agree (AV_ERR_SHAPE). Sessions may be on different backends. */
av_status av_kl_window(av_kl *k, av_session *base, av_session *q, const int32_t *ids, int T);
typedef struct {
    long long positions;
    double kl_mean, kl_p99, kl_max; /* p99: av_percentile(0.99) of the per-position KLs */
    double top1_agree;              /* fraction of positions whose argmaxes agree */
    double mean_nll, base_mean_nll; /* of q and of base, over the same positions */
} av_kl_report;
av_status av_kl_result(const av_kl *k, av_kl_report *r); /* AV_ERR_ARG when nothing was scored */
/* One position: KL(softmax(p) || softmax(q)) over V logits in double (clamped at 0); *same_top1 (may be
 * NULL) = argmaxes agree; with 0 <= target < V, *nll_p / *nll_q (may be NULL) = -log p(target), -log q(target). */
double av_kl_logits(const float *p, const float *q, int V, int *same_top1, double *nll_p, double *nll_q, int target);
/* Percentile of n ascending values by linear interpolation at rank frac * (n - 1) (numpy's default
 * rule, and llama.cpp's); 0 when n = 0. */
double av_percentile(const double *sorted, long long n, double frac);

/* ==== sampling and generation ================================================================= */
/* MLX-LM's sampler options: repetition penalty, then greedy (temp 0) or a temperature draw cut by
 * top-p, top-k and min-p, keyed by (seed, position). */
typedef struct {
    float temp;               /* 0 = greedy */
    float top_p;              /* 1 = off (<= 0 is taken as off too) */
    int top_k;                /* 0 = off */
    float min_p;              /* 0 = off */
    float repetition_penalty; /* 1 = off */
    int repetition_context;   /* last N tokens penalised (MLX-LM default 20) */
    uint64_t seed;
} av_sampler_params;
void av_sampler_params_default(av_sampler_params *p);

/* Token-by-token decoding as generation runs it (device sampler where the backend has one). */
typedef struct av_stepper av_stepper;
av_status av_stepper_new(av_stepper **out, av_session *s, const av_sampler_params *p);
void av_stepper_free(av_stepper *st);
/* The token after the session's last forward, sampled from its logits. recent: ids so far (penalty). */
av_status av_stepper_sample(av_stepper *st, const int32_t *recent, int n_recent, int32_t *next);
/* Feeds id at the next position and samples the token after it into *next. lookahead: the caller
 * will feed *next too (the device path queues that step now). */
av_status av_stepper_next(av_stepper *st, int32_t id, const int32_t *recent, int n_recent, int lookahead, int32_t *next);

/* Newly complete UTF-8 text (stop strings never included); non-zero stops the sequence. */
typedef int (*av_text_fn)(void *ud, const char *text, size_t len);

#define AV_MAX_STOPS 16
typedef struct {
    int max_tokens;
    av_sampler_params sampler;
    const char *stops[AV_MAX_STOPS];
    int n_stops;
    /* called with each newly complete piece of text; return non-zero to stop */
    av_text_fn on_text;
    void *ud;
    volatile sig_atomic_t *interrupt; /* set non-zero (e.g. from SIGINT) to stop this reply */
} av_gen_opts;

typedef struct {
    int32_t *ids;      /* generated ids (malloc'd), stop/EOS token excluded */
    int n_ids;
    char *text;        /* generated text (malloc'd), stop string excluded */
    int n_prompt;      /* prompt tokens */
    int n_prompt_processed; /* tokens actually run (prompt minus the reused cached prefix) */
    double prompt_s, gen_s;
    double prompt_tps, gen_tps;
    const char *finish; /* "stop", "length", "interrupted" */
} av_gen_result;

void av_gen_opts_default(av_gen_opts *o);
/* KV-cache size for one prompt of n_prompt tokens: max_kv when given (> 0), else prompt + max_tokens
 * capped at the model's positions (never below n_prompt + 1). */
int av_generate_context(const av_model *m, int n_prompt, int max_tokens, int max_kv);
/* Prompt ids: the full conversation so far. Cached positions of the session that match the
 * prompt's prefix are reused (only the rest is processed); the rest is truncated first. */
av_status av_generate(av_session *s, const av_tokenizer *tok, const int32_t *prompt, int n_prompt, const av_gen_opts *o,
                      av_gen_result *r);
void av_gen_result_free(av_gen_result *r);
/* Monotonic seconds. */
double av_now(void);

/* Batched generation: each prompt generated exactly as av_generate would alone, results in prompt
 * order; greedy sampling decodes batch_size sequences together, other sampling one by one. */
typedef enum { AV_BATCH_TOGETHER, AV_BATCH_SEQUENTIAL } av_batch_path;

typedef struct {
    av_gen_opts gen; /* max_tokens, sampler, stops, interrupt; gen.on_text is not used */
    int batch_size;  /* sequences decoded together (AV_BATCH_TOGETHER) */
    /* newly complete text of sequence `seq` (stop strings never included); non-zero stops it */
    int (*on_text)(void *ud, int seq, const char *text, size_t len);
    void *ud;
} av_batch_opts;

typedef struct {
    av_gen_result *seq;    /* [n], in prompt order (per-sequence timings are not filled) */
    int n;
    int batch;             /* sequences decoded together (1 when sequential) */
    av_batch_path path;
    long long prompt_tokens, gen_tokens;
    double prompt_s, gen_s;
} av_batch_result;

void av_batch_opts_default(av_batch_opts *o);
av_batch_path av_batch_path_choose(const av_model *m, const av_sampler_params *p);
/* prompts[i][0..n_prompt[i]) for i < n. Fails (nothing generated) when the longest prompt plus
 * max_tokens exceeds the model's positions. */
av_status av_generate_batch(av_model *m, const av_tokenizer *tok, const int32_t *const *prompts, const int *n_prompt, int n,
                            const av_batch_opts *o, av_batch_result *r);
void av_batch_result_free(av_batch_result *r);

/* ==== continuous batching (anvil serve) ======================================================= */
/* One engine thread owns the model and a batched session of n_slots sequences, each with its own KV
 * region. Requests wait in a queue, take a free slot between steps (the one whose cached tokens share
 * the longest prefix with the prompt: only the rest is prefilled; ties take the lowest slot, as
 * decode steps on the CPU run rows up to the last busy slot), are prefilled a chunk at a time between decode steps, decode together one token
 * per step, sample on the host with their own parameters (av_sampler, as av_generate), and leave when
 * finished, cancelled or timed out. A finished slot keeps its tokens and KV for the next request;
 * when a request with another prompt takes it, the old prefix is saved to host memory (cache_bytes,
 * least recently used evicted first) and copied back into a slot for a later prompt sharing it. */
typedef struct av_sched av_sched;
typedef struct av_sched_req av_sched_req;

typedef struct {
    int n_slots;   /* sequences in flight (default 4) */
    int ctx;       /* tokens per slot, prompt + generated (default 4096, capped at the model's positions) */
    int chunk;     /* prompt tokens per prefill chunk (default 256) */
    int max_queue; /* requests waiting for a slot (default 64); av_sched_submit refuses more */
    size_t cache_bytes; /* host memory for prefixes saved from reused slots (default 256 MiB; 0: none) */
    int run_on_caller;  /* 1: no engine thread is started; the caller runs the engine with av_sched_run
                         * (e.g. the main thread, whose OpenMP team and its thread-local scratch live on) */
} av_sched_opts;

#define AV_MAX_TOP_LOGPROBS 20
typedef struct {
    int max_tokens;            /* >= 1; capped at what the slot's context leaves */
    av_sampler_params sampler;
    const char *stops[AV_MAX_STOPS];
    int n_stops;
    const int32_t *bias_ids;   /* logit_bias: logits[bias_ids[k]] += bias[k] before sampling */
    const float *bias;
    int n_bias;
    int logprobs;              /* 1: report each token's log-probability (log-softmax of the biased logits) */
    int top_logprobs;          /* and this many alternatives (<= AV_MAX_TOP_LOGPROBS) */
    double timeout_s;          /* > 0: the request ends with finish "timeout" after this long */
} av_sched_params;             /* av_sched_submit copies everything it points to */

typedef struct {
    int32_t id;
    float logprob;
    int n_top;
    int32_t top_id[AV_MAX_TOP_LOGPROBS];
    float top_lp[AV_MAX_TOP_LOGPROBS];
} av_token_logprob;

typedef struct {
    char *text;                /* text completed since the last poll (malloc'd; NULL when none) */
    size_t len;
    av_token_logprob *lp;      /* the tokens generated since the last poll (malloc'd; with logprobs) */
    int n_lp;
    int done;                  /* the request is over; finish says why */
    const char *finish;        /* "stop", "length", "cancelled", "timeout", "error" */
    int prompt_tokens, cached_tokens, completion_tokens;
    char error[256];           /* finish "error": the engine's error line */
} av_sched_update;

typedef struct {
    long long requests, finished, cancelled, timed_out, failed;
    long long prompt_tokens, cached_tokens, gen_tokens, cache_hits;
    long long steps, step_rows, prefill_chunks;
    int queued, running, last_batch, slots, ctx;
    size_t kv_bytes;           /* backend bytes of the batched session (KV regions + scratch) */
    int store_entries;         /* saved prefixes held */
    size_t store_bytes, store_limit;
    long long store_saves, store_hits, store_evictions;
    /* engine thread's wall seconds: admitting (prefix cache saves and restores included), prompt
     * chunks, decode steps (the model), sampling and text of the decoded rows */
    double t_admit, t_prefill, t_step, t_sample;
} av_sched_stats;

void av_sched_opts_default(av_sched_opts *o);
/* Starts the engine thread (unless o->run_on_caller). tok must outlive the scheduler. */
av_status av_sched_new(av_sched **out, av_model *m, const av_tokenizer *tok, const av_sched_opts *o);
/* run_on_caller: runs the engine on this thread until av_sched_drain(s, 1) and nothing is left. */
void av_sched_run(av_sched *s);
/* Cancels queued and running requests and joins the engine; requests not yet released stay valid
 * (done) until av_sched_req_release. */
void av_sched_free(av_sched *s);
int av_sched_ctx(const av_sched *s);
/* Queues a request for prompt[0..n) (1 <= n < ctx). AV_ERR_ARG: bad prompt or parameters;
 * AV_ERR_UNSUPPORTED: the queue is full or the scheduler is stopping. */
av_status av_sched_submit(av_sched *s, const int32_t *prompt, int n, const av_sched_params *p, av_sched_req **out);
/* Waits up to timeout_ms for news and moves it into *u (caller frees with av_sched_update_free);
 * returns 1 when u holds text, log-probabilities or the end, else 0. */
int av_sched_poll(av_sched_req *r, int timeout_ms, av_sched_update *u);
void av_sched_update_free(av_sched_update *u);
/* Ends the request at the engine's next step (finish "cancelled"). */
void av_sched_cancel(av_sched_req *r);
/* The caller is done with r (cancelling it if it still runs). */
void av_sched_req_release(av_sched_req *r);
/* Cancels every queued and running request; new ones are refused from now on. */
void av_sched_drain(av_sched *s, int cancel);
void av_sched_stats_get(av_sched *s, av_sched_stats *st);

/* ==== OpenAI-compatible server (anvil serve) ================================================= */
/* The body of a POST /v1/chat/completions or /v1/completions, validated strictly: wrong types or
 * ranges, n != 1 and fields that would change the answer but are not supported (tools,
 * response_format, ...) or unknown fail with AV_ERR_ARG ("field: problem", the field in param). */
typedef enum { AV_SERVER_CHAT = 0, AV_SERVER_COMPLETION } av_server_kind;
typedef struct {
    av_server_kind kind;
    cJSON *messages;           /* chat: [{role, content (string), name?}] (owned) */
    char *prompt;              /* completion: the prompt text (owned), or NULL when given as token ids */
    int32_t *prompt_ids;       /* completion: token ids (owned) */
    int n_prompt_ids;
    int max_tokens;            /* max_tokens / max_completion_tokens; -1 when not given */
    av_sampler_params sampler; /* temperature (default 0: greedy), top_p, top_k, min_p, repetition_penalty, seed */
    int has_seed;              /* seed was given (the server draws one otherwise) */
    char *stops[AV_MAX_STOPS];
    int n_stops;
    int stream, include_usage;
    int logprobs, top_logprobs;
    int32_t *bias_ids;         /* logit_bias (owned) */
    float *bias;
    int n_bias;
    char param[64];            /* after a failure: the offending field ("" when the body itself) */
} av_server_request;
av_status av_server_parse_request(const char *body, size_t len, av_server_kind kind, av_server_request *out);
void av_server_request_free(av_server_request *r);

typedef struct {
    const char *host;          /* "127.0.0.1" (loopback) by default */
    int port;                  /* 8080 by default; 0 picks a free one (av_server_port says which) */
    const char *api_key;       /* non-NULL: every endpoint but /health wants "Authorization: Bearer KEY" */
    const char *model_id;      /* the name /v1/models lists */
    const char *chat_template; /* template source overriding the model's (NULL: the model's) */
    const char *model_path;    /* where the model's chat template / special tokens come from */
    av_sched_opts sched;
    size_t max_body;           /* request body bytes (default 4 MiB) */
    double timeout_s;          /* per request (default 600) */
    int max_connections;       /* default 256 */
} av_server_opts;
typedef struct av_server av_server;
void av_server_opts_default(av_server_opts *o);
/* Starts listening (HTTP threads); m and tok must outlive the server. The model runs on the thread
 * that calls av_server_run. */
av_status av_server_start(av_server **out, av_model *m, const av_tokenizer *tok, const av_server_opts *o);
int av_server_port(const av_server *s);
/* Runs the engine on the calling thread until av_server_shutdown has finished. */
void av_server_run(av_server *s);
/* From another thread (e.g. one waiting for SIGTERM): stops accepting connections and requests, lets
 * running requests finish for up to grace_s seconds, then cancels the rest (their clients get an
 * answer); av_server_run returns after that. */
void av_server_shutdown(av_server *s, double grace_s);
/* Closes every connection and frees the server (after av_server_run returned, or it never ran). */
void av_server_free(av_server *s);

/* ==== JSON and JSONL helpers (over cJSON) ===================================================== */
av_status av_json_load(const char *path, cJSON **out);
/* Getters return `def` when the key is absent or null; numbers accept ints and floats. */
double av_json_num(const cJSON *o, const char *key, double def);
const char *av_json_str(const cJSON *o, const char *key, const char *def);
int av_json_bool(const cJSON *o, const char *key, int def);
const cJSON *av_json_get(const cJSON *o, const char *key); /* NULL if absent or null */

/* JSONL: call av_jsonl_next until it returns 0 (EOF) or <0 (error recorded with path:line). */
typedef struct {
    FILE *f;
    char *line;
    size_t cap;
    int lineno;
    char path[4096];
} av_jsonl;
av_status av_jsonl_open(av_jsonl *j, const char *path);
int av_jsonl_next(av_jsonl *j, cJSON **obj); /* 1 = got object, 0 = EOF, -1 = error; skips blank lines */
void av_jsonl_close(av_jsonl *j);
/* Writes a JSON-escaped string (with quotes) to f. */
void av_json_fput_string(FILE *f, const char *s, size_t len);

/* ==== LoRA adapters and fuse ================================================================== */
typedef struct {
    int rank;          /* default 8 */
    float alpha;       /* default 16 */
    float scale;       /* alpha / rank unless set directly (--scale) */
    float dropout;     /* default 0 */
    int num_layers;    /* last N layers; -1 = all */
    unsigned keys;     /* bitmask over q, k, v, o, gate, up, down (bit 0 = q_proj); av_lora_parse_keys */
} av_lora_spec;

void av_lora_spec_default(av_lora_spec *s);
/* Parses "q_proj,v_proj" (also accepts "self_attn.q_proj" and MLX-LM names) into a key mask. */
av_status av_lora_parse_keys(const char *list, unsigned *mask);
/* Allocates and initialises adapters on m's layers per spec (seeded; A random, B zero). */
av_status av_lora_attach(av_model *m, const av_lora_spec *spec, uint64_t seed);
/* Frees adapters (model back to base). */
void av_lora_detach(av_model *m);
/* Trainable parameter count (A and B of all attached adapters). */
long long av_lora_param_count(const av_model *m);
/* Number of layers / projections that carry an adapter (0 when none is attached). */
int av_lora_count(const av_model *m);

/* Adapter files: MLX-LM (adapters.safetensors + adapter_config.json) or PEFT
 * (adapter_model.safetensors + adapter_config.json). Every write is atomic. */
typedef enum { AV_ADAPTER_MLX = 0, AV_ADAPTER_PEFT = 1 } av_adapter_format;
/* path: a directory holding either format, or an adapters/adapter_model safetensors file. Attaches
 * adapters on the model (replacing any) and fills them; out (may be NULL) receives the spec. */
av_status av_adapter_load(av_model *m, const char *path, av_lora_spec *out);
/* Which format `path` holds (directory or file); AV_ERR_IO when neither is found. */
av_status av_adapter_detect(const char *path, av_adapter_format *fmt);
/* Reads only the config of an adapter at `path` into spec (and its format). */
av_status av_adapter_read_config(const char *path, av_lora_spec *spec, av_adapter_format *fmt);
/* Loads tensors from a safetensors file (either naming) into the adapters already attached to m. */
av_status av_adapter_load_weights(av_model *m, const char *file);
/* Writes config + weights into dir (created if missing); spec (may be NULL) supplies dropout. */
av_status av_adapter_save(const av_model *m, const av_lora_spec *spec, const char *dir, int format_peft);
/* Only the tensors, to any file path (checkpoints such as 0000100_adapters.safetensors). */
av_status av_adapter_save_weights(const av_model *m, const char *file, int format_peft);
/* Only the config file dir/adapter_config.json. */
av_status av_adapter_save_config(const av_model *m, const av_lora_spec *spec, const char *dir, int format_peft);

/* Merges the attached adapters into the base weights and writes a normal HF model directory.
 * out_dtype: AV_BF16 / AV_F16 / AV_F32, or -1 to keep each tensor's dtype. *n_fused (may be NULL):
 * merged projections. out_dir must differ from the model's directory. */
av_status av_fuse_save(const av_model *m, const char *out_dir, int out_dtype, int *n_fused);
/* The same with options. A quantized (MLX affine) base is de-quantized by default: every packed
 * matrix becomes float (out_dtype, else its scales' dtype) and config.json loses "quantization".
 * requantize = 1 instead packs each merged matrix again with its own bits/group (the model's dtype
 * for scales; MLX-LM's fuse does this, and loses deltas below half a quantization step), copies
 * the others bit for bit and keeps config.json; it needs a quantized base and out_dtype = -1. The
 * directory is built beside out_dir and published when complete (an existing out_dir gets its
 * files replaced one by one). */
typedef struct {
    int out_dtype; /* AV_BF16 / AV_F16 / AV_F32, or -1 */
    int requantize;
} av_fuse_opts;
av_status av_fuse_write(const av_model *m, const char *out_dir, const av_fuse_opts *o, int *n_fused);

/* ==== quantization and conversion ============================================================= */
/* anvil convert: reads a model directory and writes another in MLX-LM's layout. quantize = 1 packs
 * every 2-D ".weight" (projections, embeddings, LM head) whose input size is a multiple of group into
 * MLX affine form (uint32 words + scales/biases in the output dtype); others stay float. out_dtype:
 * AV_BF16 / AV_F16 / AV_F32, or -1 to keep each tensor's dtype. */
typedef struct {
    int quantize, bits, group;
    int out_dtype;
    const char *recipe; /* NULL, or MLX-LM's --quant-predicate: mixed_2_6, mixed_3_4, mixed_3_6, mixed_4_6
                         * (v_proj/down_proj of some layers and the LM head at the high width) */
    int dequantize;     /* 1: unpack a quantized source to float (out_dtype, else the scales' dtype) */
} av_convert_opts;
typedef struct {
    size_t bytes_in, bytes_out;   /* weight files before and after */
    int n_quantized, n_unquantized; /* 2-D weights packed / left float (input size not a multiple of group) */
} av_convert_report;
/* Writes out_dir atomically (a temp directory beside it, renamed at the end); out_dir must not exist. */
av_status av_convert(const char *src_dir, const char *out_dir, const av_convert_opts *o, av_convert_report *r);

/* ==== GGUF export ============================================================================ */
/* Writes a loaded model (CPU backend) as one GGUF file for llama.cpp: llama.* keys, the
 * SentencePiece vocabulary with scores/types and special ids, add_bos/add_eos, chat_template
 * (o->chat_template, may be NULL), and the weights: a packed (MLX) matrix is de-quantized, an
 * attached LoRA adapter merged (W += s B A), Q/K rows permuted to llama.cpp's rotary order, then
 * stored as the output type (Q8_0/Q4_0/Q4_K/Q6_K with ggml's reference rounding; a matrix whose input
 * size is no multiple of 32 (K-quants: 256) is F16; norms F32). Written atomically. */
typedef enum { AV_GGUF_OUT_F32 = 0, AV_GGUF_OUT_F16, AV_GGUF_OUT_BF16, AV_GGUF_OUT_Q8_0, AV_GGUF_OUT_Q4_0, AV_GGUF_OUT_Q4_K, AV_GGUF_OUT_Q6_K } av_gguf_outtype;
/* "f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k" (any case) -> AV_GGUF_OUT_*, else -1. */
int av_gguf_outtype_parse(const char *s);
typedef struct {
    int outtype;               /* AV_GGUF_OUT_* */
    const char *chat_template; /* NULL: none */
    const char *name;          /* general.name (NULL: "anvil export") */
} av_gguf_export_opts;
typedef struct {
    int n_tensors, n_quantized, n_fallback; /* written; quantized; matrices left F16 (input size not a multiple of the block) */
    int n_dequantized, n_fused;             /* packed source matrices de-quantized; adapters merged */
} av_gguf_export_report;
av_status av_gguf_export(const av_model *m, const av_tokenizer *tok, const char *path, const av_gguf_export_opts *o,
                         av_gguf_export_report *r);

/* ==== model directory export ================================================================ */
/* Writes a loaded model (CPU backend; e.g. one read from a GGUF file) as an HF/MLX-LM directory:
 * config.json from the loaded config, model.safetensors under HF names (Q/K rows in HF order),
 * tokenizer.model (SentencePiece vocabularies only), tokenizer_config.json (BOS/EOS, add_bos/add_eos,
 * o->chat_template). keep_packed = 1: packed (MLX affine) matrices without an adapter are written as
 * they are (GGUF Q8_0/Q4_0 -> MLX 8/4-bit, group 32) with config.json's "quantization"; every other
 * matrix is de-quantized, an attached LoRA adapter merged (W += s B A), and stored as out_dtype, or
 * (-1) as stored when float (bf16 for de-quantized ones unless the model is f32/f16). Written
 * atomically; out_dir must not exist. */
typedef struct {
    int out_dtype;             /* AV_BF16 / AV_F16 / AV_F32, or -1 */
    int keep_packed;
    const char *chat_template; /* NULL: none */
} av_dir_export_opts;
typedef struct { int n_tensors, n_packed, n_dequantized, n_fused; } av_dir_export_report;
av_status av_model_export_dir(const av_model *m, const av_tokenizer *tok, const char *out_dir, const av_dir_export_opts *o,
                              av_dir_export_report *r);

/* ==== training: data ========================================================================== */
/* How text becomes tokens; supplied by the caller (tokenizer + chat template). */
typedef struct {
    /* Encodes len bytes; add_special adds BOS as the tokenizer is configured to. ids malloc'd. */
    av_status (*encode)(void *ctx, const char *text, size_t len, int add_special, int32_t **ids, int *n);
    /* Renders a messages array with the chat template into a malloc'd string. NULL = the model has
     * no chat template (chat rows are then an error; prompt/completion rows are concatenated). */
    av_status (*render)(void *ctx, const cJSON *messages, int add_generation_prompt, char **out);
    void *ctx;
    int eos_id;      /* appended to text rows not already ending with it; -1 = none */
    int mask_prompt; /* offsets mark where the completion / last message starts */
} av_ds_opts;

typedef struct av_ds_row av_ds_row; /* one tokenized row (library-internal) */
/* A tokenized JSONL file ({"text"}, {"prompt","completion"} or {"messages"} lines). Caller-owned
 * struct; its fields are read-only. */
typedef struct {
    char path[4096];
    int n;           /* rows */
    av_ds_row *rows;
    int n_truncated; /* rows cut by av_dataset_truncate */
    int longest;     /* longest row before truncation */
} av_dataset;

/* Loads and tokenizes a whole file. Any malformed line fails with "path:line: problem". */
av_status av_dataset_load(av_dataset *d, const char *path, const av_ds_opts *o);
/* Builds a dataset from texts (as {"text"} rows). */
av_status av_dataset_from_texts(av_dataset *d, const char *const *texts, int n, const av_ds_opts *o);
void av_dataset_free(av_dataset *d);
/* Cuts rows longer than max_len tokens; returns how many were cut (also in d->n_truncated). */
int av_dataset_truncate(av_dataset *d, int max_len);
/* Longest row of the dataset (after truncation). */
int av_dataset_max_len(const av_dataset *d);

/* Length-sorted batches of a dataset, shuffled per epoch with a seed. Caller-owned struct. */
typedef struct {
    const av_dataset *d;
    int batch_size;
    int nb;          /* number of batches (the last may be partial) */
    int *sorted;     /* row indexes sorted by length (stable) */
    int *perm;       /* batch order of the current epoch */
    uint64_t seed;
    long long epoch; /* epoch whose permutation is in perm (-1 = none yet) */
} av_batcher;
/* Fails like MLX-LM when the dataset has fewer rows than batch_size. */
av_status av_batcher_init(av_batcher *bt, const av_dataset *d, int batch_size, uint64_t seed);
void av_batcher_free(av_batcher *bt);

/* ==== training: optimizer and schedule ======================================================== */
/* MLX's optimizers with MLX's defaults (mlx.optimizers Adam, AdamW, SGD, Adafactor). */
typedef enum { AV_OPTIM_ADAM = 0, AV_OPTIM_ADAMW, AV_OPTIM_SGD, AV_OPTIM_ADAFACTOR } av_optim_kind;
typedef struct {
    av_optim_kind kind;
    float lr;                  /* this step's learning rate (adafactor with relative_step ignores it) */
    int step;                  /* updates so far, this one included (1-based) */
    double beta1, beta2, eps;  /* adam, adamw: betas (0.9, 0.999), eps 1e-8 */
    int bias_correction;       /* adam, adamw: 0 as MLX (1 = PyTorch's Adam/AdamW) */
    double weight_decay;       /* adamw 0.01 (decoupled), sgd 0 (added to the gradient), adafactor 0 */
    double momentum, dampening; /* sgd: 0, 0 */
    int nesterov;              /* sgd: 0 */
    double eps1, eps2, clip_threshold, decay_rate; /* adafactor: eps (1e-30, 1e-3), 1.0, -0.8 */
    double af_beta1;           /* adafactor beta_1 when af_first_moment (MLX: None) */
    int af_first_moment, scale_parameter, relative_step, warmup_init; /* adafactor: 0, 1, 1, 0 */
} av_optim_params;
/* MLX's defaults for kind (lr 0, step 0). */
void av_optim_defaults(av_optim_params *o, av_optim_kind kind);
/* "adam", "adamw", "sgd", "adafactor" <-> kind; parse returns -1 for an unknown name. */
const char *av_optim_name(av_optim_kind kind);
int av_optim_parse(const char *name, av_optim_kind *kind);

/* Learning-rate schedules as MLX-LM builds them, each optionally after a linear warmup. */
typedef enum { AV_LR_CONSTANT = 0, AV_LR_COSINE, AV_LR_LINEAR, AV_LR_EXPONENTIAL, AV_LR_STEP } av_lr_kind;
typedef struct {
    av_lr_kind kind;
    /* MLX-LM's "arguments": cosine_decay (init, decay_steps, end); linear_schedule (init, end,
     * steps); exponential_decay (init, rate); step_decay (init, rate, step_size); constant (init). */
    double args[3];
    int nargs;
    int warmup;         /* linear warmup steps (0 = none) */
    double warmup_init; /* LR at step 0 of the warmup */
} av_lr_schedule;
/* Constant schedule at lr. */
void av_lr_constant(av_lr_schedule *s, double lr);
/* "constant", "cosine"/"cosine_decay", "linear"/"linear_schedule", "exponential_decay", "step_decay". */
av_status av_lr_kind_parse(const char *name, av_lr_kind *kind);
const char *av_lr_kind_name(av_lr_kind k);
/* Checks argument count and ranges (decay_steps >= 1, ...). */
av_status av_lr_validate(const av_lr_schedule *s);
/* LR for optimizer step `step` (0-based). */
double av_lr_at(const av_lr_schedule *s, int step);
/* Initial (peak) LR: args[0]. */
double av_lr_init(const av_lr_schedule *s);

/* ==== several workers: communicators and rendezvous =========================================== */
/* One handle per worker (rank) of a data-parallel group. Collectives are called by every rank with
 * the same sizes, in the same order; a rank that fails calls av_comm_abort so the others' collectives
 * return an error instead of waiting. Host: ranks are threads of this process on the CPU (buffers
 * are host memory). NCCL: ranks are GPUs (buffers are device memory of the rank's device; CUDA
 * builds only; the CLI sets NCCL_NVLS_ENABLE=0 before creating one). */
typedef struct av_comm av_comm;
/* n host ranks sharing one state: ranks[i] has rank i. Free each with av_comm_free. */
av_status av_comm_host_new(av_comm **ranks, int n);
/* NCCL's 128-byte unique id (rank 0 makes it and hands it to the others). */
enum { AV_COMM_ID_BYTES = 128 };
av_status av_comm_nccl_id(uint8_t id[AV_COMM_ID_BYTES]);
/* Joins NCCL communicator `id` as `rank` of `world` on CUDA device `device` (called on the thread
 * that will use it: it binds that thread to the device). */
av_status av_comm_nccl_new(av_comm **out, const uint8_t id[AV_COMM_ID_BYTES], int world, int rank, int device);
int av_comm_rank(const av_comm *c);
int av_comm_size(const av_comm *c);
/* In-place sum over the ranks of n floats (backend memory). */
av_status av_comm_allreduce_sum(av_comm *c, float *buf, size_t n);
/* In-place mean: the sum, then scaled by 1/size. */
av_status av_comm_allreduce_mean(av_comm *c, float *buf, size_t n);
/* In-place sum of n doubles in host memory (losses, token counts, flags). */
av_status av_comm_allreduce_host_f64(av_comm *c, double *v, int n);
void av_comm_abort(av_comm *c);
void av_comm_free(av_comm *c);
/* Number of CUDA devices (0 without CUDA or without a GPU); binds the calling thread to a device
 * (the backend's work issued from that thread then runs there). */
int av_cuda_device_count(void);
av_status av_cuda_set_device(int device);

/* TCP rendezvous for several hosts (torchrun's --master-addr/--master-port): the master serves
 * `len` bytes (the NCCL id) to n_clients connections, then returns; a client connects (retrying
 * until timeout_ms) and reads them. Errors name the address and what failed. */
av_status av_rdzv_serve(const char *addr, int port, const void *data, size_t len, int n_clients, int timeout_ms);
av_status av_rdzv_fetch(const char *addr, int port, void *data, size_t len, int timeout_ms);

/* ==== training: model context and trainer ===================================================== */
/* Training buffers and trainable parameters of one model (LoRA A/B, or every weight as f32 master
 * copies with full fine-tuning). Create it after attaching adapters. */
typedef struct av_train_ctx av_train_ctx;
/* Phase profile of the training steps (off by default; `anvil lora --profile`): with it on, every
 * step synchronises the device at each phase switch and adds the wall milliseconds of each phase
 * (exclusive: attention and adapter products are not in the layer phases) to av_train_profile's totals. */
enum { AV_TRAIN_PH_OTHER = 0, AV_TRAIN_PH_FROZEN, AV_TRAIN_PH_LAYER_FWD, AV_TRAIN_PH_ATT_FWD, AV_TRAIN_PH_LORA, AV_TRAIN_PH_XENT,
       AV_TRAIN_PH_LAYER_BWD, AV_TRAIN_PH_ATT_BWD, AV_TRAIN_NPHASES };
extern const char *const av_train_phase_names[AV_TRAIN_NPHASES];
void av_train_set_profile(av_train_ctx *c, int on);
void av_train_profile(const av_train_ctx *c, double ms[AV_TRAIN_NPHASES]);
av_status av_train_ctx_new(av_train_ctx **out, av_model *m, int max_rows, int max_len, int grad_checkpoint);
/* Full fine-tuning on a model without adapters; freeing the context restores the model's views. */
av_status av_train_ctx_new_full(av_train_ctx **out, av_model *m, int max_rows, int max_len, int grad_checkpoint);
void av_train_ctx_free(av_train_ctx *c);
int av_train_nparams(const av_train_ctx *c);          /* parameter tensors */
long long av_train_param_count(const av_train_ctx *c); /* trainable scalars */
int av_train_is_full(const av_train_ctx *c);
/* LoRA dropout (PEFT semantics) in training steps only; 0 <= p < 1. */
av_status av_train_set_dropout(av_train_ctx *c, float p, uint64_t seed);
/* Flash attention in training steps (the default where available) or, on = 0, the standard one. */
av_status av_train_set_flash(av_train_ctx *c, int on);
/* Peak bytes of the training buffers (activations, grads). */
size_t av_train_bytes(const av_train_ctx *c);
/* Every parameter's values as f32 safetensors, atomically / loaded back by name (f32/f16/bf16). */
av_status av_train_save_weights(av_train_ctx *c, const char *path);
av_status av_train_load_weights(av_train_ctx *c, const char *path);
/* Full fine-tuning output as MLX-LM writes it, plus a loadable model directory. */
av_status av_train_save_model_dir(av_train_ctx *c, const char *dir);
/* Every parameter's gradient as f32 safetensors (PEFT names), atomically. */
av_status av_train_save_grads(av_train_ctx *c, const char *path);
/* Copies every trainable parameter's values from src to dst (same layout; the models may be on
 * different devices of one backend): a data-parallel replica starts equal to rank 0. */
av_status av_train_copy_params(av_train_ctx *dst, av_train_ctx *src);

typedef enum {
    AV_TEV_PROGRESS = 0, /* after every iteration: iter, iters, elapsed, eta */
    AV_TEV_REPORT,       /* train loss line */
    AV_TEV_EVAL,         /* validation line */
    AV_TEV_SAVE,         /* checkpoint written: path (main), path2 (numbered) */
    AV_TEV_BEST,         /* new best validation loss: path */
    AV_TEV_FINAL,        /* final weights: path */
    AV_TEV_INTERRUPTED,  /* stopped early; state saved: path */
    AV_TEV_SKIPPED,      /* non-finite loss at iter (train_loss): step skipped (skip_nonfinite) */
} av_train_event_kind;

typedef struct {
    av_train_event_kind kind;
    int iter, iters;
    double train_loss, lr, it_per_sec, tok_per_sec, peak_gb;
    long long trained_tokens;
    double val_loss, val_secs;
    const char *path, *path2;
    double elapsed, eta; /* seconds */
} av_train_event;

typedef struct {
    int iters, grad_accum, steps_per_report, steps_per_eval, val_batches, save_every;
    uint64_t seed;
    av_lr_schedule lr;
    av_optim_params optim; /* kind and hyperparameters (lr and step are set per update) */
    const char *dump_grads; /* if set: write the first batch's gradients (PEFT names) here and stop */
    volatile int *stop;     /* set asynchronously (SIGINT): save state and return AV_ERR_INTERRUPTED */
    /* A non-finite training loss stops the run with AV_ERR_ARG naming the iteration (nothing of
     * that step is applied or saved); with skip_nonfinite the step is dropped instead (AV_TEV_SKIPPED). */
    int skip_nonfinite;
    /* Writes the current adapter weights for `tag` (NULL = main file, "best", or a 7-digit
     * iteration for a numbered checkpoint) and puts the weights file (or PEFT directory) written
     * into path; the state side file goes beside it. */
    av_status (*save)(void *ctx, const char *tag, char *path, size_t cap);
    void (*on_event)(void *ctx, const av_train_event *ev);
    void *ctx;
    /* Data parallelism (NULL: one worker): every rank runs the same loop on its model copy with
     * the rows of each batch it is given (src/dist/dp.h), gradients summed over the ranks before
     * each update; only rank 0 saves. */
    av_comm *comm;
} av_trainer_opts;

/* MLX-LM's defaults: Adam without bias correction, constant LR 1e-4, 1000 iters, report 10,
 * eval 200, 25 val batches, save 100, seed 0. */
void av_trainer_opts_default(av_trainer_opts *o);

/* MLX-LM's training loop: one batch per iteration, an optimizer update every grad_accum, reports,
 * validation, checkpoints, and a state side file so that a resumed run continues bit for bit. */
typedef struct av_trainer av_trainer;
av_status av_trainer_new(av_trainer **out, av_model *m, av_train_ctx *tc, const av_trainer_opts *o);
void av_trainer_free(av_trainer *t);
/* Restores parameters, optimizer state, iteration, data position, schedule from a state file. */
av_status av_trainer_load_state(av_trainer *t, const char *state_path);
int av_trainer_iter(const av_trainer *t); /* iterations done (0 unless resumed) */
/* Runs iterations iter+1..iters over `train`, evaluating on `valid` (may be NULL). Returns
 * AV_ERR_INTERRUPTED (state saved) when *stop was set. */
av_status av_trainer_run(av_trainer *t, av_batcher *train, av_batcher *valid);
/* Whether the run stopped after dumping gradients. */
int av_trainer_dumped(const av_trainer *t);
/* Token-weighted mean NLL over the first max_batches batches (-1 = all) in sorted order. */
av_status av_evaluate(av_train_ctx *tc, av_batcher *bt, int max_batches, double *loss, long long *ntok);
/* State file beside an adapter: "X.safetensors" -> "X.state.safetensors"; a directory D (PEFT)
 * -> "D/adapter_model.state.safetensors". */
char *av_trainer_state_path(const char *adapter_path, char *buf, size_t cap);
/* Peak memory in bytes: process peak RSS on the CPU, the backend's peak on a GPU. */
size_t av_train_peak_bytes(const av_backend *be);

#ifdef __cplusplus
}
#endif
#endif
