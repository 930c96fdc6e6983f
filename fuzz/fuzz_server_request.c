/* libFuzzer target: the server's request-body parser (av_server_parse_request) over the input bytes,
 * as a chat-completions body and as a completions body; every accepted request's fields are read
 * and freed. Nothing may crash, leak or trip UBSan. Seeds: tests/fixtures/fuzz-seeds/server-NAME.json;
 * dictionary: fuzz/server_request.dict. */
#include "anvil.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink;

static void use(const av_server_request *r) {
    sink += (uint64_t)r->max_tokens + (uint64_t)r->n_stops + (uint64_t)r->n_bias + (uint64_t)r->stream + (uint64_t)r->top_logprobs;
    for (int i = 0; i < r->n_stops; i++) sink += strlen(r->stops[i]);
    for (int i = 0; i < r->n_bias; i++) sink += (uint64_t)r->bias_ids[i] + (uint64_t)(r->bias[i] > 0);
    for (int i = 0; i < r->n_prompt_ids; i++) sink += (uint64_t)r->prompt_ids[i];
    if (r->prompt) sink += strlen(r->prompt);
    if (r->messages) {
        char *js = cJSON_PrintUnformatted(r->messages);
        if (js) sink += strlen(js);
        free(js);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    for (int kind = 0; kind < 2; kind++) {
        av_server_request r;
        if (av_server_parse_request((const char *)data, size, kind ? AV_SERVER_COMPLETION : AV_SERVER_CHAT, &r) == AV_OK) use(&r);
        else sink += strlen(av_last_error()) + strlen(r.param);
        av_server_request_free(&r);
    }
    return 0;
}
