/* Batched generation over a prompts file: groups of --batch-size prompts prefilled one by one,
 * then decoded together through av_batch_session; each sequence stops on EOS, a stop string or
 * --max-tokens on its own. Prompts file: one prompt per line, or JSONL lines {"prompt": ...}. */
#include "generate_batch.h"
#include "args.h"
#include "chat_prompt.h"
#include "core/memory.h"
#include "engine/generate.h"
#include "formats/json.h"
#include "model/batch.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int32_t *prompt, *ids;
    int n_prompt, n_ids;
    char *text;
    size_t len, cap;
    av_stream_decoder *sd;
    int done;
} seq;

static int read_prompts(const char *cmd, const char *path, char ***out, int *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return av_cli_error(cmd, "%s: cannot open", path);
    char *line = NULL;
    size_t cap = 0;
    int k = 0, lineno = 0, rc = 0;
    char **v = NULL;
    for (ssize_t len; (len = getline(&line, &cap, f)) >= 0;) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!len) continue;
        char *p = NULL;
        if (line[0] == '{') {
            cJSON *j = cJSON_Parse(line);
            const char *s = av_json_str(j, "prompt", NULL);
            if (!s) { cJSON_Delete(j); rc = av_cli_error(cmd, "%s:%d: expected {\"prompt\": \"...\"}", path, lineno); break; }
            p = strdup(s);
            cJSON_Delete(j);
        } else {
            p = strdup(line);
        }
        v = realloc(v, sizeof *v * (size_t)(k + 1));
        v[k++] = p;
    }
    free(line);
    fclose(f);
    if (!rc && !k) rc = av_cli_error(cmd, "%s: no prompts", path);
    if (rc) {
        for (int i = 0; i < k; i++) free(v[i]);
        free(v);
        v = NULL;
        k = 0;
    }
    *out = v;
    *n = k;
    return rc;
}

static int encode(const char *cmd, const char *model_dir, av_tokenizer *tok, const av_batch_gen_opts *o, const char *text,
                  int32_t **ids, int *n) {
    if (o->ignore_tmpl || !av_cli_has_chat_template(model_dir, o->tmpl))
        return av_tokenizer_encode(tok, text, strlen(text), 1, ids, n) == AV_OK ? 0 : av_cli_fail(cmd);
    cJSON *msgs = cJSON_CreateArray();
    if (o->system) {
        cJSON *sm = cJSON_CreateObject();
        cJSON_AddStringToObject(sm, "role", "system");
        cJSON_AddStringToObject(sm, "content", o->system);
        cJSON_AddItemToArray(msgs, sm);
    }
    cJSON *um = cJSON_CreateObject();
    cJSON_AddStringToObject(um, "role", "user");
    cJSON_AddStringToObject(um, "content", text);
    cJSON_AddItemToArray(msgs, um);
    int used, rc = av_cli_chat_ids(cmd, model_dir, tok, o->tmpl, msgs, 1, ids, n, &used);
    cJSON_Delete(msgs);
    return rc;
}

static int is_eos(const av_model *m, const av_tokenizer *tok, int id) {
    for (int i = 0; i < m->cfg.n_eos; i++) if (m->cfg.eos_token_ids[i] == id) return 1;
    return id == av_tokenizer_eos_id(tok);
}

/* Appends token `id` to sequence s; returns 1 when the sequence is finished. */
static int push(seq *s, const av_model *m, const av_tokenizer *tok, const av_batch_gen_opts *o, int id) {
    if (is_eos(m, tok, id)) return 1;
    s->ids[s->n_ids++] = id;
    size_t n;
    const char *piece = av_stream_decoder_push(s->sd, id, &n);
    if (n) {
        if (s->len + n + 1 > s->cap) { s->cap = (s->len + n + 1) * 2; s->text = realloc(s->text, s->cap); }
        memcpy(s->text + s->len, piece, n);
        s->len += n;
        s->text[s->len] = 0;
    }
    for (int i = 0; i < o->n_stops && s->text; i++) {
        char *at = strstr(s->text, o->stops[i]);
        if (at) { s->len = (size_t)(at - s->text); *at = 0; s->done = 2; return 1; }
    }
    return s->n_ids >= o->max_tokens;
}

int av_cli_generate_batch(const char *cmd, const char *model_dir, av_model *m, av_tokenizer *tok, const av_batch_gen_opts *o) {
    char **prompts = NULL;
    int np = 0, rc = read_prompts(cmd, o->prompts_file, &prompts, &np);
    if (rc) return rc;
    int N = o->batch_size < np ? o->batch_size : np;
    seq *sq = calloc((size_t)np, sizeof *sq);
    int max_prompt = 0;
    for (int i = 0; i < np && !rc; i++) {
        rc = encode(cmd, model_dir, tok, o, prompts[i], &sq[i].prompt, &sq[i].n_prompt);
        if (!rc && sq[i].n_prompt > max_prompt) max_prompt = sq[i].n_prompt;
        sq[i].ids = malloc(sizeof(int32_t) * (size_t)(o->max_tokens + 1));
    }
    av_batch_session *b = NULL;
    if (!rc && max_prompt + o->max_tokens + 1 > m->cfg.max_position_embeddings)
        rc = av_cli_error(cmd, "longest prompt (%d tokens) + --max-tokens %d exceeds the model's %d positions", max_prompt,
                          o->max_tokens, m->cfg.max_position_embeddings);
    if (!rc && av_batch_session_new(&b, m, N, max_prompt + o->max_tokens + 1, 0) != AV_OK) rc = av_cli_fail(cmd);
    av_batch_sampling sp = {o->temp, o->top_p, o->seed};
    int32_t *tok_out = calloc((size_t)N, sizeof(int32_t));
    long long gen_tokens = 0, prompt_tokens = 0;
    double t_prompt = 0, t_gen = 0;
    for (int g0 = 0; !rc && g0 < np; g0 += N) {
        int n = np - g0 < N ? np - g0 : N, running = 0;
        double t0 = av_now();
        for (int i = 0; i < N && !rc; i++) {
            seq *s = &sq[g0 + (i < n ? i : 0)];
            if (av_batch_session_prefill(b, i, s->prompt, s->n_prompt, &sp, &tok_out[i]) != AV_OK) { rc = av_cli_fail(cmd); break; }
            if (i >= n) { av_batch_session_finish(b, i); continue; }
            prompt_tokens += s->n_prompt;
            s->sd = av_stream_decoder_new(tok);
            if (push(s, m, tok, o, tok_out[i])) {
                if (!s->done) s->done = 1;
                av_batch_session_finish(b, i);
            }
            else running++;
        }
        double t1 = av_now();
        t_prompt += t1 - t0;
        while (!rc && running > 0) {
            int more = 0; /* a step after this one is sure to be wanted unless a stop comes: queue it */
            for (int i = 0; i < n && !more; i++) more = !sq[g0 + i].done && sq[g0 + i].n_ids + 1 < o->max_tokens;
            if (av_batch_session_step_ahead(b, &sp, tok_out, more) != AV_OK) { rc = av_cli_fail(cmd); break; }
            for (int i = 0; i < n; i++) {
                seq *s = &sq[g0 + i];
                if (s->done) continue;
                if (push(s, m, tok, o, tok_out[i])) {
                    if (!s->done) s->done = 1;
                    running--;
                    av_batch_session_finish(b, i);
                }
            }
        }
        t_gen += av_now() - t1;
        for (int i = 0; i < n && !rc; i++) {
            seq *s = &sq[g0 + i];
            size_t k;
            const char *rest = av_stream_decoder_flush(s->sd, &k);
            if (k && s->done != 2) { /* bytes still held by the decoder (not after a stop string) */
                s->text = realloc(s->text, s->len + k + 1);
                memcpy(s->text + s->len, rest, k);
                s->len += k;
                s->text[s->len] = 0;
            }
            gen_tokens += s->n_ids;
            if (o->json) {
                printf("{\"index\":%d,\"prompt_ids\":[", g0 + i);
                for (int j = 0; j < s->n_prompt; j++) printf(j ? ",%d" : "%d", s->prompt[j]);
                printf("],\"ids\":[");
                for (int j = 0; j < s->n_ids; j++) printf(j ? ",%d" : "%d", s->ids[j]);
                printf("],\"text\":");
                av_json_fput_string(stdout, s->text ? s->text : "", s->len);
                printf("}\n");
            } else {
                printf("==== [%d] %s\n%s\n", g0 + i, prompts[g0 + i], s->text ? s->text : "");
            }
        }
    }
    if (!rc) {
        double pk = (double)(m->be->host_visible ? av_mem_peak_rss() : m->be->peak_bytes()) / 1e9;
        fprintf(stderr, "==========\nPrompts: %d in batches of %d\nPrompt: %lld tokens, %.3f tokens-per-sec\n"
                        "Generation: %lld tokens, %.3f tokens-per-sec (all sequences)\nPeak memory: %.3f GB\n",
                np, N, prompt_tokens, t_prompt > 0 ? prompt_tokens / t_prompt : 0, gen_tokens, t_gen > 0 ? gen_tokens / t_gen : 0, pk);
    }
    for (int i = 0; i < np; i++) {
        free(prompts[i]);
        free(sq[i].prompt);
        free(sq[i].ids);
        free(sq[i].text);
        av_stream_decoder_free(sq[i].sd);
    }
    free(prompts);
    free(sq);
    free(tok_out);
    av_batch_session_free(b);
    return rc;
}
