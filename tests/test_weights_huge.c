/* CPU weights in huge pages (model/weights_huge.c): a model whose weight file is >= 64 MB reads every
 * weight from a copy whose bytes equal the file's tensors (the reference: the safetensors file itself,
 * read through its own mapping), at the file's offsets; a second model of the same file shares the copy;
 * freeing one leaves the other's weights intact; a file under 64 MB stays mapped. */
#include "test.h"
#include "backend/backend.h"
#include "model/model.h"
#include <stdlib.h>
#include <string.h>

/* every projection and norm of m equals the file's tensor, byte for byte, and lies outside the mapping
 * (copied) or inside it (not), as expected */
static void check_views(const av_model *m, int copied, const char *what) {
    const av_mapped_file *f = &m->st.files[0].map;
    const char *lo = f->data, *hi = lo + f->size;
    int bad = 0, where = 0, n = 0;
    char name[128];
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int p = 0; p < AV_PROJ_COUNT; p++) {
            const av_mat *w = &av_layer_proj(&m->layers[l], (av_proj)p)->w;
            snprintf(name, sizeof name, "model.layers.%d.%s.%s.weight", l, av_proj_module[p], av_proj_names[p]);
            const av_st_tensor *t = av_model_tensor(m, name);
            if (!t) { bad++; continue; }
            n++;
            bad += memcmp(w->data, t->data, t->nbytes) != 0;
            int inside = (const char *)w->data >= lo && (const char *)w->data < hi;
            where += inside == copied;
        }
    const av_st_tensor *e = av_model_tensor(m, "model.embed_tokens.weight");
    bad += !e || memcmp(m->embed.data, e->data, e->nbytes) != 0;
    CHECK(n == m->cfg.n_layers * AV_PROJ_COUNT && bad == 0, "%s: %d of %d projections differ from the file", what, bad, n);
    CHECK(where == 0, "%s: %d projections %s the file mapping", what, where, copied ? "still read" : "not read from");
    CHECK(m->n_host_copies == copied, "%s: %d huge-page copies (expected %d)", what, m->n_host_copies, copied);
}

int main(void) {
    char dir[4096], small[4096];
    const char *t = getenv("AV_TMP");
    snprintf(dir, sizeof dir, "%s/anvil-weights-huge-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp"); return TEST_SUMMARY(); }
    snprintf(small, sizeof small, "%s/small", dir);
    char big[4200];
    snprintf(big, sizeof big, "%s/big", dir);
    av_config c;
    av_synth_preset(&c, "tiny");
    c.vocab_size = 8192, c.hidden_size = 1024, c.intermediate_size = 2816, c.n_layers = 2; /* bf16: ~71 MB */
    c.n_heads = 16, c.n_kv_heads = 4, c.head_dim = 64;
    CHECK_OK(av_synth_write(&c, big, 7, AV_BF16));
    av_synth_preset(&c, "tiny");
    CHECK_OK(av_synth_write(&c, small, 7, AV_BF16));

    av_model *a = NULL, *b = NULL, *s = NULL;
    CHECK_OK(av_model_load(&a, big, av_backend_cpu()));
    CHECK_OK(av_model_load(&b, big, av_backend_cpu()));
    CHECK_OK(av_model_load(&s, small, av_backend_cpu()));
    if (a && b && s) {
        CHECK(a->st.files[0].map.size >= ((size_t)64 << 20), "the big model is %zu bytes, under 64 MB", a->st.files[0].map.size);
        check_views(a, 1, "first model");
        check_views(b, 1, "second model");
        CHECK(a->n_host_copies == 1 && b->n_host_copies == 1 && a->host_copies[0] == b->host_copies[0] && a->embed.data == b->embed.data,
              "two models of one file do not share its copy");
        check_views(s, 0, "small model");
        av_model_free(a);
        a = NULL;
        check_views(b, 1, "second model after the first was freed");
    }
    av_model_free(a);
    av_model_free(b);
    av_model_free(s);
    av_remove_tree(dir);
    return TEST_SUMMARY();
}
