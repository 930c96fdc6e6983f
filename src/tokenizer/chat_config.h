/* Forwarding header: the chat-template glue moved to src/template/chat_config.h with the Jinja
 * engine. Kept only until cli/cmd_lora.c (owned elsewhere) includes "template/chat_config.h";
 * delete it then. */
#include "template/chat_config.h"
