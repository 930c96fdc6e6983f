/* The public API's read-only view of models and sessions (include/anvil.h): what callers need
 * from av_model and av_session without seeing their structs. */
#include "core/memory.h"
#include "model/llama.h"

const av_config *av_model_config(const av_model *m) { return &m->cfg; }
const char *av_model_dir(const av_model *m) { return m->dir; }
const av_backend *av_model_backend(const av_model *m) { return m->be; }
size_t av_model_weight_bytes(const av_model *m) { return m->weight_bytes; }
void av_model_set_graphs(av_model *m, int on) { m->no_graphs = !on; }
void av_model_set_attention(av_model *m, av_attention_kind k) { m->attention = (int)k; }
av_attention_kind av_model_attention(const av_model *m) { return (av_attention_kind)m->attention; }
int av_model_weight_files(const av_model *m) { return m->gguf ? 1 : m->st.nfiles; }
av_dtype av_model_weight_dtype(const av_model *m) { return m->embed.dtype; }

const char *av_model_gguf_type(const av_model *m) {
    const av_gguf_tensor *t = m->gguf ? av_gguf_tensor_find(m->gguf, "blk.0.attn_q.weight") : NULL;
    return t ? av_ggml_type_name((int)t->type) : NULL;
}

size_t av_model_peak_bytes(const av_model *m) {
    return m->be->host_visible ? av_mem_peak_rss() : m->be->peak_bytes();
}

int av_session_n_past(const av_session *s) { return s->n_past; }
int av_session_max_seq(const av_session *s) { return s->ring ? s->ring : s->max_seq; }
int av_session_rotating(const av_session *s) { return s->ring; }
av_model *av_session_model(const av_session *s) { return s->m; }
