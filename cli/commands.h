/* Every subcommand's entry point. A command whose cmd_<name>.c is not linked resolves to NULL
 * (weak), and main reports it as unavailable in this build. */
#ifndef AV_CLI_COMMANDS_H
#define AV_CLI_COMMANDS_H
#define AV_WEAK __attribute__((weak))
int av_cmd_generate(int argc, char **argv) AV_WEAK;
int av_cmd_chat(int argc, char **argv) AV_WEAK;
int av_cmd_perplexity(int argc, char **argv) AV_WEAK;
int av_cmd_tokenize(int argc, char **argv) AV_WEAK;
int av_cmd_detokenize(int argc, char **argv) AV_WEAK;
int av_cmd_info(int argc, char **argv) AV_WEAK;
int av_cmd_synth(int argc, char **argv) AV_WEAK;
int av_cmd_template(int argc, char **argv) AV_WEAK;
int av_cmd_lora(int argc, char **argv) AV_WEAK;
int av_cmd_fuse(int argc, char **argv) AV_WEAK;
int av_cmd_bench(int argc, char **argv) AV_WEAK;
int av_cmd_convert(int argc, char **argv) AV_WEAK;
int av_cmd_quantize(int argc, char **argv) AV_WEAK;
int av_cmd_serve(int argc, char **argv) AV_WEAK;
#endif
