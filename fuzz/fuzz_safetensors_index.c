/* libFuzzer target: a sharded checkpoint's model.safetensors.index.json (av_st_set_open_dir) over
 * the input bytes, in a scratch directory that also holds two small valid shards (a.safetensors,
 * b.safetensors) the index may name; then every tensor of the set looked up. */
#include "fuzz_util.h"
#include "formats/safetensors.h"
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink;

static void make_shard(const char *name, const char *tensor) {
    av_st_writer w;
    float x[6] = {1, 2, 3, 4, 5, 6};
    int64_t shape[2] = {2, 3};
    char path[256];
    av_st_writer_init(&w);
    snprintf(path, sizeof path, "%s/%s", fz_dir(), name);
    if (av_st_writer_add(&w, tensor, AV_F32, 2, shape, x) != AV_OK || av_st_writer_write(&w, path) != AV_OK) abort();
    av_st_writer_free(&w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    if (!ready) {
        make_shard("a.safetensors", "w.a");
        make_shard("b.safetensors", "w.b");
        ready = 1;
    }
    fz_file("model.safetensors.index.json", data, size);
    av_st_set s;
    if (av_st_set_open_dir(&s, fz_dir()) != AV_OK) return 0;
    for (int i = 0; i < s.nfiles; i++)
        for (int k = 0; k < s.files[i].n; k++) {
            const av_st_tensor *t = av_st_set_find(&s, s.files[i].tensors[k].name);
            if (t) sink += (uint64_t)av_st_numel(t);
        }
    sink += (uint64_t)av_st_set_count(&s);
    av_st_set_close(&s);
    return 0;
}
