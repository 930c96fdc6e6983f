/* A built-in byte-level BPE tokenizer for synthetic models: writes tokenizer.json (ids 0..2 =
 * <unk>, <s>, </s>, then the 256 GPT-2 byte symbols, then a few English merges) and
 * tokenizer_config.json into a directory. */
#include "tokenizer/tok_internal.h"
#include "core/memory.h"
#include "core/status.h"
#include <stdio.h>
#include <string.h>

static const char *const merges[][2] = {
    {"\xC4\xA0", "t"}, {"\xC4\xA0", "a"}, {"h", "e"}, {"i", "n"}, {"r", "e"}, {"o", "n"},
    {"\xC4\xA0t", "he"}, {"e", "r"}, {"\xC4\xA0", "s"}, {"a", "t"}, {"\xC4\xA0", "w"}, {"\xC4\xA0", "o"},
    {"e", "n"}, {"\xC4\xA0", "c"}, {"i", "t"}, {"i", "s"}, {"a", "n"}, {"o", "r"}, {"e", "s"}, {"\xC4\xA0", "b"},
};

static void put_str(FILE *f, const char *s) { av_json_fput_string(f, s, strlen(s)); }

av_status av_tokenizer_write_builtin(const char *dir) {
    if (!dir || !av_dir_exists(dir)) return av_fail(AV_ERR_IO, "%s: no such directory", dir ? dir : "(null)");
    char path[4096];
    av_atomic_file a;
    AV_TRY(av_atomic_open(&a, av_path_join(path, sizeof path, dir, "tokenizer.json")));
    FILE *f = a.f;
    static const char *const sp[3] = {"<unk>", "<s>", "</s>"};
    fprintf(f, "{\n  \"version\": \"1.0\",\n  \"added_tokens\": [\n");
    for (int i = 0; i < 3; i++) {
        fprintf(f, "    {\"id\": %d, \"content\": ", i);
        put_str(f, sp[i]);
        fprintf(f, ", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}%s\n", i < 2 ? "," : "");
    }
    fprintf(f, "  ],\n  \"normalizer\": null,\n"
               "  \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, \"use_regex\": true},\n"
               "  \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}],"
               " \"pair\": [{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"B\", \"type_id\": 1}}],"
               " \"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [1], \"tokens\": [\"<s>\"]}}},\n"
               "  \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, \"use_regex\": true},\n"
               "  \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": \"<unk>\", \"continuing_subword_prefix\": null,"
               " \"end_of_word_suffix\": null, \"fuse_unk\": false, \"byte_fallback\": false, \"ignore_merges\": false,\n    \"vocab\": {");
    for (int i = 0; i < 3; i++) { put_str(f, sp[i]); fprintf(f, ": %d, ", i); }
    for (int b = 0; b < 256; b++) {
        char u[4];
        int ul;
        tk_byte_to_unicode(b, u, &ul);
        av_json_fput_string(f, u, (size_t)ul);
        fprintf(f, ": %d, ", 3 + b);
    }
    int nm = (int)(sizeof merges / sizeof merges[0]);
    for (int m = 0; m < nm; m++) {
        char buf[32];
        snprintf(buf, sizeof buf, "%s%s", merges[m][0], merges[m][1]);
        put_str(f, buf);
        fprintf(f, ": %d%s", 259 + m, m + 1 < nm ? ", " : "");
    }
    fprintf(f, "},\n    \"merges\": [");
    for (int m = 0; m < nm; m++) {
        fprintf(f, "[");
        put_str(f, merges[m][0]);
        fprintf(f, ", ");
        put_str(f, merges[m][1]);
        fprintf(f, "]%s", m + 1 < nm ? ", " : "");
    }
    fprintf(f, "]\n  }\n}\n");
    AV_TRY(av_atomic_commit(&a));
    static const char cfg[] = "{\n  \"bos_token\": \"<s>\",\n  \"eos_token\": \"</s>\",\n  \"unk_token\": \"<unk>\",\n"
                              "  \"add_bos_token\": true,\n  \"add_eos_token\": false,\n  \"model_max_length\": 4096,\n"
                              "  \"tokenizer_class\": \"PreTrainedTokenizerFast\"\n}\n";
    return av_write_file_atomic(av_path_join(path, sizeof path, dir, "tokenizer_config.json"), cfg, sizeof cfg - 1);
}
