/* anvil template: renders a model's chat template (or --chat-template FILE) around the messages of
 * a JSON file and prints exactly the prompt, with no newline added — what generate would encode. */
#include "args.h"
#include "commands.h"
#include "anvil.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *CMD = "template";

int av_cmd_template(int argc, char **argv) {
    const char *model = NULL, *messages_path = NULL, *template_path = NULL, *args_json = NULL;
    int no_gen = 0;
    const av_opt opts[] = {
        {"model", AV_OPT_STR, &model, "model or tokenizer directory (chat template, BOS/EOS)", 0, 0, "m"},
        {"messages", AV_OPT_STR, &messages_path, "JSON file: array of {role, content} or {\"messages\": [...]}", 0, 0, NULL},
        {"no-generation-prompt", AV_OPT_FLAG, &no_gen, "do not append the assistant header", 0, 0, NULL},
        {"chat-template", AV_OPT_STR, &template_path, "Jinja template file to use instead of the model's", 0, 0, NULL},
        {"chat-template-args", AV_OPT_STR, &args_json, "JSON object of extra template variables (tools, date_string, ...)", 0, 0, NULL},
        {NULL, 0, NULL, NULL, 0, 0, NULL},
    };
    int r = av_args_parse(argc, argv, opts, CMD, "Print the prompt the chat template renders for a conversation.");
    if (r) return r == 1 ? 0 : 2;
    if (!messages_path) return av_cli_error(CMD, "--messages FILE is required");
    if (!model && !template_path) return av_cli_error(CMD, "--model DIR or --chat-template FILE is required");

    av_chat_config cfg = {0};
    cJSON *doc = NULL, *extra = NULL;
    char *src = NULL, *out = NULL;
    int rc = 1;
    if (model) {
        if (!av_dir_exists(model) && !av_file_exists(model)) { av_cli_error(CMD, "%s: no such model directory or GGUF file", model); goto done; }
        if (av_chat_config_load(&cfg, model) != AV_OK) { av_cli_fail(CMD); goto done; }
    }
    const char *tsrc = cfg.template_src, *where = cfg.where;
    if (template_path) {
        size_t n;
        if (av_file_read(template_path, &src, &n) != AV_OK) { av_cli_fail(CMD); goto done; }
        tsrc = src;
        where = template_path;
    }
    if (!tsrc) { av_cli_error(CMD, "%s has no chat template (use --chat-template FILE)", model); goto done; }
    if (av_json_load(messages_path, &doc) != AV_OK) { av_cli_fail(CMD); goto done; }
    const cJSON *msgs = doc;
    if (cJSON_IsObject(doc)) msgs = cJSON_GetObjectItemCaseSensitive(doc, "messages");
    if (!cJSON_IsArray(msgs)) {
        av_cli_error(CMD, "%s: expected a JSON array of messages or an object with \"messages\"", messages_path);
        goto done;
    }
    if (args_json) {
        extra = cJSON_Parse(args_json);
        if (!cJSON_IsObject(extra)) { av_cli_error(CMD, "--chat-template-args: expected a JSON object"); goto done; }
    }
    if (av_chat_render(tsrc, where, msgs, !no_gen, cfg.bos, cfg.eos, extra, &out) != AV_OK) { av_cli_fail(CMD); goto done; }
    size_t len = strlen(out);
    if (fwrite(out, 1, len, stdout) != len || fflush(stdout) != 0) { av_cli_error(CMD, "cannot write to stdout"); goto done; }
    rc = 0;
done:
    free(out);
    free(src);
    cJSON_Delete(doc);
    cJSON_Delete(extra);
    av_chat_config_free(&cfg);
    return rc;
}
