/* anvil chat: interactive multi-turn chat. Each turn renders the whole conversation with the
 * model's chat template and reuses the KV cache for the common token prefix, so only the new
 * turn's tokens are processed. Line editing and history via libedit; Ctrl-C stops a reply. */
#include "args.h"
#include "chat_prompt.h"
#include "common.h"
#include "anvil.h"
#include <editline/readline.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t g_stop;
static void on_sigint(int sig) { (void)sig; g_stop = 1; }

static int print_text(void *ud, const char *s, size_t n) {
    (void)ud;
    fwrite(s, 1, n, stdout);
    fflush(stdout);
    return 0;
}

typedef struct {
    const char *cmd, *model_dir, *tmpl, *system;
    char *system_buf;           /* the /system text (system points into it) */
    av_model *m;
    av_tokenizer *tok;
    av_session *s;
    av_gen_opts go;
    cJSON *msgs;
    /* stats of the last turn */
    int last_prompt, last_processed, last_reused, last_gen, turns;
    double last_ptps, last_gtps;
} chat_state;

static void add_msg(cJSON *msgs, const char *role, const char *content) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "role", role);
    cJSON_AddStringToObject(o, "content", content);
    cJSON_AddItemToArray(msgs, o);
}

static void reset(chat_state *c) {
    cJSON_Delete(c->msgs);
    c->msgs = cJSON_CreateArray();
    if (c->system && *c->system) add_msg(c->msgs, "system", c->system);
    av_session_truncate(c->s, 0);
}

static int has_system(const cJSON *msgs) {
    const cJSON *f = cJSON_GetArrayItem(msgs, 0);
    return f && !strcmp(av_json_str(f, "role", ""), "system");
}

/* One user turn: render, drop oldest turns while the prompt + reply can't fit (a rotating cache
 * takes any length: nothing is dropped), generate. */
static int turn(chat_state *c, const char *text) {
    add_msg(c->msgs, "user", text);
    int32_t *ids = NULL;
    int n = 0, used, dropped = 0, rotating = av_session_rotating(c->s) > 0;
    for (;;) {
        free(ids);
        ids = NULL;
        if (av_cli_chat_ids(c->cmd, c->model_dir, c->tok, c->tmpl, c->msgs, 1, &ids, &n, &used)) return 1;
        int first = has_system(c->msgs) ? 1 : 0;
        if (rotating || n + c->go.max_tokens <= av_session_max_seq(c->s) || cJSON_GetArraySize(c->msgs) - first <= 1) break;
        /* drop the oldest user/assistant pair, keep the system prompt */
        cJSON_DeleteItemFromArray(c->msgs, first);
        if (cJSON_GetArraySize(c->msgs) - first > 1 && strcmp(av_json_str(cJSON_GetArrayItem(c->msgs, first), "role", ""), "user"))
            cJSON_DeleteItemFromArray(c->msgs, first);
        dropped++;
    }
    if (dropped) fprintf(stderr, "[context full: dropped the %d oldest message(s); the system prompt is kept]\n", dropped);
    if (!rotating && n >= av_session_max_seq(c->s)) {
        free(ids);
        cJSON_DeleteItemFromArray(c->msgs, cJSON_GetArraySize(c->msgs) - 1);
        fprintf(stderr, "[message too long: %d tokens for a %d-token context]\n", n, av_session_max_seq(c->s));
        return 0;
    }
    g_stop = 0;
    av_gen_result r;
    av_status st = av_generate(c->s, c->tok, ids, n, &c->go, &r);
    free(ids);
    if (st != AV_OK) {
        av_gen_result_free(&r);
        return av_cli_fail(c->cmd);
    }
    printf("\n");
    if (!strcmp(r.finish, "interrupted")) fprintf(stderr, "[stopped]\n");
    add_msg(c->msgs, "assistant", r.text);
    c->last_prompt = r.n_prompt;
    c->last_processed = r.n_prompt_processed;
    c->last_reused = r.n_prompt - r.n_prompt_processed;
    c->last_gen = r.n_ids;
    c->last_ptps = r.prompt_tps;
    c->last_gtps = r.gen_tps;
    c->turns++;
    av_gen_result_free(&r);
    return 0;
}

static void stats(const chat_state *c) {
    double pk = (double)av_model_peak_bytes(c->m) / 1e9;
    int seen = av_session_n_past(c->s), max = av_session_max_seq(c->s);
    printf("turns: %d, messages: %d, cached tokens: %d/%d", c->turns, cJSON_GetArraySize(c->msgs), seen < max ? seen : max, max);
    if (av_session_rotating(c->s)) printf(" (rotating cache, %d tokens seen)", seen);
    printf("\n");
    printf("last turn: prompt tokens %d, processed %d, reused from cache %d, generated %d\n", c->last_prompt,
           c->last_processed, c->last_reused, c->last_gen);
    printf("last turn speed: prompt %.3f tokens-per-sec, generation %.3f tokens-per-sec\n", c->last_ptps, c->last_gtps);
    printf("peak memory: %.3f GB\n", pk);
    fflush(stdout);
}

static int save(chat_state *c, const char *path) {
    char *txt = cJSON_Print(c->msgs);
    av_status st = av_write_file_atomic(path, txt, strlen(txt));
    free(txt);
    if (st != AV_OK) return fprintf(stderr, "anvil chat: error: %s\n", av_last_error()), 0;
    printf("[saved %d messages to %s]\n", cJSON_GetArraySize(c->msgs), path);
    return 0;
}

static int load(chat_state *c, const char *path) {
    cJSON *j;
    if (av_json_load(path, &j) != AV_OK) return fprintf(stderr, "anvil chat: error: %s\n", av_last_error()), 0;
    cJSON *arr = cJSON_IsArray(j) ? j : cJSON_GetObjectItem(j, "messages");
    int ok = cJSON_IsArray(arr);
    for (const cJSON *e = ok ? arr->child : NULL; e && ok; e = e->next) ok = av_json_str(e, "role", NULL) && av_json_str(e, "content", NULL);
    if (!ok) {
        cJSON_Delete(j);
        fprintf(stderr, "anvil chat: error: %s: expected a JSON array of {\"role\", \"content\"} messages\n", path);
        return 0;
    }
    cJSON_Delete(c->msgs);
    c->msgs = cJSON_Duplicate(arr, 1);
    cJSON_Delete(j);
    printf("[loaded %d messages from %s]\n", cJSON_GetArraySize(c->msgs), path);
    return 0;
}

/* Returns 1 to exit. */
static int command(chat_state *c, const char *line) {
    if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) return 1;
    if (!strcmp(line, "/reset")) { reset(c); printf("[new conversation]\n"); }
    else if (!strncmp(line, "/system", 7) && (line[7] == ' ' || !line[7])) {
        char *keep = strdup(line[7] ? line + 8 : "");
        if (!keep) return fprintf(stderr, "anvil chat: error: out of memory\n"), 0;
        free(c->system_buf);
        c->system = c->system_buf = keep;
        if (has_system(c->msgs)) cJSON_DeleteItemFromArray(c->msgs, 0);
        if (*keep) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "role", "system");
            cJSON_AddStringToObject(o, "content", keep);
            cJSON_InsertItemInArray(c->msgs, 0, o);
        }
        printf("[system prompt %s]\n", *keep ? "set" : "cleared");
    } else if (!strncmp(line, "/save ", 6)) save(c, line + 6);
    else if (!strncmp(line, "/load ", 6)) load(c, line + 6);
    else if (!strcmp(line, "/stats")) stats(c);
    else printf("commands: /reset, /system TEXT, /save FILE, /load FILE, /stats, /exit\n");
    fflush(stdout);
    return 0;
}

int av_cmd_chat(int argc, char **argv) {
    chat_state c = {.cmd = "chat"};
    av_cli_model_opts mo = {0};
    int max_tokens = 256, top_k = 0, seed = 0, max_kv = 0;
    double temp = 0.0, top_p = 1.0, min_p = 0.0, rep = 1.0;
    av_opt opts[] = {
        {"model", AV_OPT_STR, &mo.model, "model directory (HF layout)", 0, 0, NULL},
        {"adapter-path", AV_OPT_STR, &mo.adapter, "LoRA adapter (MLX or PEFT) to apply", 0, 0, NULL},
        {"system-prompt", AV_OPT_STR, &c.system, "system message", 0, 0, NULL},
        {"chat-template", AV_OPT_STR, &c.tmpl, "Jinja chat template file to use instead of the model's", 0, 0, NULL},
        {"max-tokens", AV_OPT_INT, &max_tokens, "maximum tokens per reply (default 256)", 1, 1e7, "m"},
        {"temp", AV_OPT_FLOAT, &temp, "sampling temperature; 0 = greedy (default 0)", 0, 100, NULL},
        {"top-p", AV_OPT_FLOAT, &top_p, "nucleus sampling mass (default 1 = off)", 0, 1, NULL},
        {"top-k", AV_OPT_INT, &top_k, "sample among the k most likely (default 0 = off)", 0, 1e7, NULL},
        {"min-p", AV_OPT_FLOAT, &min_p, "min-p filter (default 0 = off)", 0, 1, NULL},
        {"repetition-penalty", AV_OPT_FLOAT, &rep, "penalty for recent tokens (default 1 = off)", 0.01, 100, NULL},
        {"seed", AV_OPT_INT, &seed, "random seed (default 0)", 0, 2147483647, NULL},
        {"max-kv-size", AV_OPT_INT, &max_kv,
         "bound the KV cache to N tokens, MLX-LM's rotating cache: the first 4 tokens stay, later ones overwrite the oldest, so "
         "the conversation goes on past N with every message kept (default: the model's context; when that is full the oldest "
         "messages are dropped)",
         AV_KV_MIN, 1e8, NULL},
        {"device", AV_OPT_STR, &mo.device, "cpu or cuda (default: cuda when a GPU is present)", 0, 0, NULL},
        {"attention", AV_OPT_STR, &mo.attention, "attention implementation: flash (tiled, no score matrix), standard (scores materialised) or auto (default: flash for long prompts)", 0, 0, NULL},
        {"no-graphs", AV_OPT_FLAG, &mo.no_graphs, "decode op by op instead of replaying a captured CUDA graph (debugging; slower)", 0, 0, NULL},
        {"dtype", AV_OPT_STR, &mo.dtype, "GPU compute: bf16 (default, tensor cores) or f32 (exact)", 0, 0, NULL},
        {"threads", AV_OPT_INT, &mo.threads, "CPU threads (default: all cores)", 1, 1024, "t"},
        {NULL, 0, NULL, NULL, 0, 0, NULL},
    };
    int r = av_args_parse(argc, argv, opts, c.cmd, "Chat with a model. Commands: /reset /system /save /load /stats /exit.");
    if (r) return r == 1 ? 0 : 2;
    c.model_dir = mo.model;
    if (av_cli_load(c.cmd, &mo, &c.m, &c.tok)) return 1;
    if (!av_cli_has_chat_template(mo.model, c.tmpl))
        fprintf(stderr, "[note: %s has no chat template; turns are sent as plain text]\n", mo.model);
    int ctx = max_kv ? max_kv : av_model_config(c.m)->max_position_embeddings;
    if (!max_kv && ctx <= max_tokens) {
        av_model_free(c.m);
        av_tokenizer_free(c.tok);
        return av_cli_error(c.cmd, "the model's %d-token context must exceed --max-tokens %d", ctx, max_tokens);
    }
    if ((max_kv ? av_session_new_rotating(&c.s, c.m, max_kv, AV_KV_KEEP, 512) : av_session_new(&c.s, c.m, ctx, 512)) != AV_OK) {
        av_model_free(c.m);
        av_tokenizer_free(c.tok);
        return av_cli_fail(c.cmd);
    }
    av_gen_opts_default(&c.go);
    c.go.max_tokens = max_tokens;
    c.go.sampler.temp = (float)temp;
    c.go.sampler.top_p = (float)top_p;
    c.go.sampler.top_k = top_k;
    c.go.sampler.min_p = (float)min_p;
    c.go.sampler.repetition_penalty = (float)rep;
    c.go.sampler.seed = (uint64_t)seed;
    c.go.on_text = print_text;
    c.go.interrupt = &g_stop;
    c.msgs = NULL;
    reset(&c);
    struct sigaction sa = {0};
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    int tty = isatty(0), rc = 0;
    if (tty) {
        printf("anvil chat — %s on %s. /help for commands, Ctrl-D or /exit to quit.\n", mo.model, av_backend_name(av_model_backend(c.m)));
        using_history();
    }
    char *line = NULL;
    size_t cap = 0;
    for (;;) {
        char *in;
        if (tty) {
            in = readline(">> ");
            if (!in) { printf("\n"); break; }
            if (*in) add_history(in);
        } else {
            ssize_t k = getline(&line, &cap, stdin);
            if (k < 0) break;
            while (k > 0 && (line[k - 1] == '\n' || line[k - 1] == '\r')) line[--k] = 0;
            in = line;
        }
        int quit = 0;
        if (!*in) {}
        else if (in[0] == '/') quit = command(&c, in);
        else rc = turn(&c, in);
        if (tty) free(in);
        if (quit || rc) break;
    }
    free(line);
    free(c.system_buf);
    cJSON_Delete(c.msgs);
    av_session_free(c.s);
    av_model_free(c.m);
    av_tokenizer_free(c.tok);
    return rc;
}
