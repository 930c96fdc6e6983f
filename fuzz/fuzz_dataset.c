/* libFuzzer target: a JSONL training file (av_dataset_load) over the input bytes, with GPT-2's
 * byte-level tokenizer and the Llama-2 chat template (tests/fixtures, loaded once) rendering
 * "messages" rows, prompt masking on; an accepted dataset is truncated and batched. */
#include "fuzz_util.h"
#include "train/dataset.h"
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink;
static av_tokenizer *tok;
static char *tmpl;

static av_status enc(void *ctx, const char *text, size_t len, int add_special, int32_t **ids, int *n) {
    (void)ctx;
    return av_tokenizer_encode(tok, text, len, add_special, ids, n);
}
static av_status render(void *ctx, const cJSON *msgs, int gen, char **out) {
    (void)ctx;
    return av_chat_render(tmpl, "llama2 chat_template.jinja", msgs, gen, "<s>", "</s>", NULL, out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tok) {
        char p[4096];
        tok = fz_tokenizer("tok_gpt2", 0);
        if (av_file_read(fz_fixture("llama2-tokenizer/chat_template.jinja", p, sizeof p), &tmpl, NULL) != AV_OK) abort();
    }
    const char *path = fz_file("train.jsonl", data, size);
    av_ds_opts o = {.encode = enc, .render = render, .eos_id = av_tokenizer_eos_id(tok), .mask_prompt = 1};
    av_dataset d;
    if (av_dataset_load(&d, path, &o) != AV_OK) return 0;
    sink += (uint64_t)av_dataset_truncate(&d, 64) + (uint64_t)av_dataset_max_len(&d);
    av_batcher bt;
    if (av_batcher_init(&bt, &d, 2, 7) == AV_OK) {
        av_batch b = {0};
        for (long long k = 0; k < 3; k++)
            if (av_batcher_get(&bt, k, 1, &b) == AV_OK) sink += (uint64_t)b.n_targets;
        av_batch_free(&b);
        av_batcher_free(&bt);
    }
    av_dataset_free(&d);
    return 0;
}
