/* A loaded model: config, the mmapped safetensors, and per-layer weight views resident on the
 * chosen backend (on the CPU the mapping, or the weight files' copies in huge pages; one uploaded arena
 * on a GPU). */
#ifndef AV_MODEL_H
#define AV_MODEL_H
#include "backend/backend.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "model/config.h"
#include "ops/ops.h"

typedef struct {
    av_linear q, k, v, o, gate, up, down;
    av_mat attn_norm, mlp_norm;
} av_layer;

/* Indexes of the seven projections, in PEFT/MLX key order helpers use. */
typedef enum { AV_PROJ_Q = 0, AV_PROJ_K, AV_PROJ_V, AV_PROJ_O, AV_PROJ_GATE, AV_PROJ_UP, AV_PROJ_DOWN, AV_PROJ_COUNT } av_proj;
extern const char *const av_proj_names[AV_PROJ_COUNT];         /* "q_proj", ... */
extern const char *const av_proj_module[AV_PROJ_COUNT];        /* "self_attn", "mlp" */
av_linear *av_layer_proj(av_layer *l, av_proj p);

struct av_model {
    char dir[4096];
    av_config cfg;
    av_st_set st;              /* host mapping of the weight files */
    const av_backend *be;
    av_mat embed, final_norm, lm_head; /* backend-resident views */
    av_layer *layers;
    float *inv_freq;           /* backend memory, head_dim/2 */
    void *arena;               /* uploaded weights (non-host backends) */
    struct av_host_copy **host_copies; /* CPU: the weight files' huge-page copies the views read (weights_huge.c) */
    int n_host_copies;
    size_t weight_bytes;
    int attention;             /* av_attention_kind: AUTO, FLASH or STANDARD */
    int no_graphs;             /* decode steps run eagerly, never captured (debugging) */
    av_gguf_file *gguf;        /* the model came from this GGUF file (st is then empty) */
    void **owned;              /* host buffers of converted GGUF tensors */
    int n_owned, cap_owned;
    float *rope_factors;       /* GGUF rope_freqs (Llama-3 scaling): inv_freq[i] /= rope_factors[i]; or NULL */
};

/* av_model_load/_free and the accessors (av_model_config, av_model_peak_bytes, ...): include/anvil.h */
/* Host view of a named tensor (for fuse/export); NULL if absent. */
const av_st_tensor *av_model_tensor(const av_model *m, const char *name);

/* gguf_model.c: the llama keys of a GGUF file -> av_config; binds m->gguf's tensors into m
 * (m->cfg, m->layers and m->be set). */
av_status av_gguf_config(av_config *c, const av_gguf_file *f);
av_status av_model_bind_gguf(av_model *m);
extern const char *const av_gguf_proj_names[AV_PROJ_COUNT]; /* "attn_q", ... (blk.N.<name>.weight) */

#endif
