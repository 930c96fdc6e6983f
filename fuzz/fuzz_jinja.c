/* libFuzzer target: a chat template (the Jinja-subset engine) parsed from the input bytes and
 * rendered over a fixed conversation (system/user/assistant, a tool call, bos/eos, a tools list)
 * under small caps (1 MiB output, 64 MiB memory, 200k steps), so loops and blow-ups end in the
 * engine's limit errors, never a hang or an out-of-memory. */
#include "anvil.h"
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink;

static const char VARS[] =
    "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hi \\u00e9 <s>\"},"
    "{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":{\"x\":1}}}]},"
    "{\"role\":\"tool\",\"content\":\"42\"},{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"ok\"}]}],"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\"}}}],"
    "\"bos_token\":\"<s>\",\"eos_token\":\"</s>\",\"add_generation_prompt\":true,\"n\":3,\"f\":1.5,\"z\":null}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static cJSON *vars;
    if (!vars && !(vars = cJSON_Parse(VARS))) abort();
    char *src = malloc(size + 1);
    if (!src) return 0;
    memcpy(src, data, size);
    src[size] = 0;
    av_template *t = NULL;
    if (av_template_parse(&t, src, "fuzz.jinja") == AV_OK) {
        av_template_set_limits(t, 1u << 20, 64u << 20, 200000);
        char *out = NULL;
        if (av_template_render(t, vars, &out) == AV_OK) sink += strlen(out);
        free(out);
        av_template_free(t);
    }
    free(src);
    return 0;
}
