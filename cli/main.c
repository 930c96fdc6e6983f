/* anvil command-line entry: dispatches `anvil <command> ...` through one table. */
#include "commands.h"
#include "anvil.h"
#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} av_command;

static void usage(const av_command *cmds) {
    printf("anvil — fine-tune, quantize, run, chat with and benchmark Llama-family models\n\n"
           "usage: anvil <command> [options]   (anvil <command> --help for its options)\n\ncommands:\n");
    for (const av_command *c = cmds; c->name; c++)
        if (c->fn) printf("  %-12s %s\n", c->name, c->help);
}

int main(int argc, char **argv) {
    const av_command cmds[] = {
        {"generate", av_cmd_generate, "generate text from a prompt (streams to stdout)"},
        {"chat", av_cmd_chat, "interactive multi-turn chat"},
        {"perplexity", av_cmd_perplexity, "mean NLL / perplexity of a text or dataset"},
        {"tokenize", av_cmd_tokenize, "print token ids of a text"},
        {"detokenize", av_cmd_detokenize, "print the text of token ids"},
        {"template", av_cmd_template, "render the model's chat template for a conversation"},
        {"info", av_cmd_info, "show a model's architecture, size and memory needs"},
        {"synth", av_cmd_synth, "write a random-weight model (HF layout)"},
        {"lora", av_cmd_lora, "LoRA / full fine-tuning"},
        {"fuse", av_cmd_fuse, "merge an adapter into the base weights"},
        {"convert", av_cmd_convert, "convert a model to MLX-LM's layout (-q: quantized)"},
        {"quantize", av_cmd_quantize, "quantize a model (convert -q)"},
        {"bench", av_cmd_bench, "benchmarks"},
        {"serve", av_cmd_serve, "OpenAI-compatible HTTP server"},
        {NULL, NULL, NULL},
    };
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(cmds);
        return argc < 2 ? 2 : 0;
    }
    for (const av_command *c = cmds; c->name; c++) {
        if (strcmp(c->name, argv[1])) continue;
        if (!c->fn) {
            fprintf(stderr, "anvil: command '%s' is not available in this build\n", argv[1]);
            return 2;
        }
        int rc = c->fn(argc - 1, argv + 1);
        av_cuda_shutdown(); /* device memory back before exit (compute-sanitizer's leak check) */
        return rc;
    }
    fprintf(stderr, "anvil: unknown command '%s' (see anvil --help)\n", argv[1]);
    return 2;
}
