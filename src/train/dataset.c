/* JSONL training data -> token rows (+ prompt offsets) -> length-sorted, seeded-shuffled batches.
 * Mirrors MLX-LM's datasets.py (text / completions / chat) and iterate_batches, except that the
 * last partial batch is kept and no pad position is counted as a target. */
#include "train/dataset.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/memory.h"
#include "core/status.h"

uint64_t av_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static av_status encode(const av_ds_opts *o, const char *s, size_t len, int add_special, int32_t **ids, int *n) {
    *ids = NULL;
    *n = 0;
    return o->encode(o->ctx, s, len, add_special, ids, n);
}

/* Text row: BOS per tokenizer, EOS appended unless present (MLX-LM TextDataset). */
static av_status row_text(const av_ds_opts *o, const char *text, av_ds_row *r) {
    AV_TRY(encode(o, text, strlen(text), 1, &r->ids, &r->n));
    if (o->eos_id >= 0 && (r->n == 0 || r->ids[r->n - 1] != o->eos_id)) {
        int32_t *p = realloc(r->ids, (size_t)(r->n + 1) * sizeof *p);
        if (!p) return av_fail(AV_ERR_NOMEM, "out of memory");
        r->ids = p;
        r->ids[r->n++] = o->eos_id;
    }
    return AV_OK;
}

/* Renders messages and tokenizes the rendering as is (no extra BOS: MLX-LM tokenizes the
 * output of apply_chat_template, which adds no special tokens of its own). */
static av_status render_tokens(const av_ds_opts *o, const cJSON *msgs, int gen, int32_t **ids, int *n) {
    char *s = NULL;
    AV_TRY(o->render(o->ctx, msgs, gen, &s));
    av_status st = encode(o, s, strlen(s), 0, ids, n);
    free(s);
    return st;
}

static av_status row_chat(const av_ds_opts *o, const cJSON *msgs, av_ds_row *r) {
    AV_TRY(render_tokens(o, msgs, 0, &r->ids, &r->n));
    if (o->mask_prompt) {
        cJSON *head = cJSON_CreateArray();
        if (!head) return av_fail(AV_ERR_NOMEM, "out of memory");
        int k = cJSON_GetArraySize(msgs);
        for (int i = 0; i < k - 1; i++) cJSON_AddItemToArray(head, cJSON_Duplicate(cJSON_GetArrayItem(msgs, i), 1));
        int32_t *pids = NULL;
        int pn = 0;
        av_status st = render_tokens(o, head, 1, &pids, &pn);
        cJSON_Delete(head);
        free(pids);
        AV_TRY(st);
        r->offset = pn;
    }
    return AV_OK;
}

static av_status row_completion(const av_ds_opts *o, const char *prompt, const char *completion, av_ds_row *r) {
    if (o->render) { /* MLX-LM CompletionsDataset: user + assistant through the chat template */
        cJSON *msgs = cJSON_CreateArray(), *u = cJSON_CreateObject(), *a = cJSON_CreateObject();
        if (!msgs || !u || !a) {
            cJSON_Delete(msgs), cJSON_Delete(u), cJSON_Delete(a);
            return av_fail(AV_ERR_NOMEM, "out of memory");
        }
        cJSON_AddStringToObject(u, "role", "user");
        cJSON_AddStringToObject(u, "content", prompt);
        cJSON_AddStringToObject(a, "role", "assistant");
        cJSON_AddStringToObject(a, "content", completion);
        cJSON_AddItemToArray(msgs, u);
        cJSON_AddItemToArray(msgs, a);
        av_status st = row_chat(o, msgs, r);
        cJSON_Delete(msgs);
        return st;
    }
    /* no template: prompt + completion as one text */
    size_t lp = strlen(prompt), lc = strlen(completion);
    char *s = malloc(lp + lc + 1);
    if (!s) return av_fail(AV_ERR_NOMEM, "out of memory");
    memcpy(s, prompt, lp);
    memcpy(s + lp, completion, lc + 1);
    av_status st = row_text(o, s, r);
    free(s);
    if (st == AV_OK && o->mask_prompt) {
        int32_t *pids = NULL;
        int pn = 0;
        st = encode(o, prompt, lp, 1, &pids, &pn);
        free(pids);
        r->offset = pn;
    }
    return st;
}

/* Validates one line's object and turns it into a row. Errors are "problem" (caller prefixes). */
static av_status make_row(const av_ds_opts *o, const cJSON *obj, av_ds_row *r) {
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(obj, "messages");
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(obj, "prompt");
    const cJSON *comp = cJSON_GetObjectItemCaseSensitive(obj, "completion");
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(obj, "text");
    if (msgs) {
        if (!cJSON_IsArray(msgs)) return av_fail(AV_ERR_FORMAT, "\"messages\" is not a list");
        int k = cJSON_GetArraySize(msgs);
        if (k == 0) return av_fail(AV_ERR_FORMAT, "\"messages\" is empty");
        for (int i = 0; i < k; i++) {
            const cJSON *m = cJSON_GetArrayItem(msgs, i);
            if (!cJSON_IsObject(m)) return av_fail(AV_ERR_FORMAT, "message %d is not an object", i + 1);
            const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
            const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
            if (!cJSON_IsString(role)) return av_fail(AV_ERR_FORMAT, "message %d: \"role\" missing or not a string", i + 1);
            if (!role->valuestring[0]) return av_fail(AV_ERR_FORMAT, "message %d: empty \"role\"", i + 1);
            if (!cJSON_IsString(content) && !cJSON_IsArray(content) && !cJSON_GetObjectItemCaseSensitive(m, "tool_calls"))
                return av_fail(AV_ERR_FORMAT, "message %d: \"content\" missing or not a string", i + 1);
        }
        if (!o->render) return av_fail(AV_ERR_UNSUPPORTED, "chat data (\"messages\") needs a model with a chat template");
        return row_chat(o, msgs, r);
    }
    if (prompt || comp) {
        if (!prompt) return av_fail(AV_ERR_FORMAT, "\"completion\" without \"prompt\"");
        if (!comp) return av_fail(AV_ERR_FORMAT, "\"prompt\" without \"completion\"");
        if (!cJSON_IsString(prompt)) return av_fail(AV_ERR_FORMAT, "\"prompt\" is not a string");
        if (!cJSON_IsString(comp)) return av_fail(AV_ERR_FORMAT, "\"completion\" is not a string");
        if (!comp->valuestring[0]) return av_fail(AV_ERR_FORMAT, "empty \"completion\"");
        return row_completion(o, prompt->valuestring, comp->valuestring, r);
    }
    if (text) {
        if (!cJSON_IsString(text)) return av_fail(AV_ERR_FORMAT, "\"text\" is not a string");
        if (!text->valuestring[0]) return av_fail(AV_ERR_FORMAT, "empty \"text\"");
        return row_text(o, text->valuestring, r);
    }
    return av_fail(AV_ERR_FORMAT, "expected a \"text\", \"prompt\"+\"completion\" or \"messages\" key");
}

static av_status finish_row(av_ds_row *r) {
    if (r->n < 2) return av_fail(AV_ERR_FORMAT, "fewer than 2 tokens, nothing to train on");
    if (r->offset >= r->n) return av_fail(AV_ERR_FORMAT, "the prompt covers the whole example (%d tokens), nothing to train on", r->n);
    return AV_OK;
}

static av_status push_row(av_dataset *d, int *cap, const av_ds_row *r) {
    if (d->n == *cap) {
        int nc = *cap ? *cap * 2 : 64;
        av_ds_row *p = realloc(d->rows, (size_t)nc * sizeof *p);
        if (!p) return av_fail(AV_ERR_NOMEM, "out of memory");
        d->rows = p;
        *cap = nc;
    }
    d->rows[d->n++] = *r;
    if (r->n > d->longest) d->longest = r->n;
    return AV_OK;
}

av_status av_dataset_load(av_dataset *d, const char *path, const av_ds_opts *o) {
    memset(d, 0, sizeof *d);
    snprintf(d->path, sizeof d->path, "%s", path);
    av_jsonl j;
    AV_TRY(av_jsonl_open(&j, path));
    int cap = 0, rc;
    cJSON *obj = NULL;
    av_status st = AV_OK;
    while ((rc = av_jsonl_next(&j, &obj)) == 1) {
        av_ds_row r = {0};
        r.line = j.lineno;
        st = make_row(o, obj, &r);
        if (st == AV_OK) st = finish_row(&r);
        cJSON_Delete(obj);
        if (st == AV_OK) st = push_row(d, &cap, &r);
        if (st != AV_OK) {
            free(r.ids);
            av_fail_prefix(st, "%s:%d", path, j.lineno);
            break;
        }
    }
    if (rc < 0) st = AV_ERR_FORMAT; /* error line already recorded with path:line */
    else if (st == AV_OK && ferror(j.f)) st = av_fail(AV_ERR_IO, "%s: read error", path);
    av_jsonl_close(&j);
    if (st == AV_OK && d->n == 0) st = av_fail(AV_ERR_FORMAT, "%s: no examples", path);
    if (st != AV_OK) av_dataset_free(d);
    return st;
}

av_status av_dataset_from_texts(av_dataset *d, const char *const *texts, int n, const av_ds_opts *o) {
    memset(d, 0, sizeof *d);
    snprintf(d->path, sizeof d->path, "<texts>");
    int cap = 0;
    for (int i = 0; i < n; i++) {
        av_ds_row r = {0};
        r.line = i + 1;
        av_status st = row_text(o, texts[i], &r);
        if (st == AV_OK) st = finish_row(&r);
        if (st == AV_OK) st = push_row(d, &cap, &r);
        if (st != AV_OK) {
            free(r.ids);
            av_dataset_free(d);
            return av_fail_prefix(st, "text %d", i + 1);
        }
    }
    return AV_OK;
}

void av_dataset_free(av_dataset *d) {
    for (int i = 0; i < d->n; i++) free(d->rows[i].ids);
    free(d->rows);
    memset(d, 0, sizeof *d);
}

int av_dataset_truncate(av_dataset *d, int max_len) {
    int cut = 0;
    if (max_len < 2) max_len = 2;
    for (int i = 0; i < d->n; i++)
        if (d->rows[i].n > max_len) {
            d->rows[i].n = max_len;
            cut++;
        }
    d->n_truncated = cut;
    return cut;
}

int av_ds_row_targets(const av_ds_row *r) {
    int first = r->offset > 1 ? r->offset : 1;
    return r->n > first ? r->n - first : 0;
}

int av_dataset_max_len(const av_dataset *d) {
    int m = 0;
    for (int i = 0; i < d->n; i++)
        if (d->rows[i].n > m) m = d->rows[i].n;
    return m;
}

/* ---- batching -------------------------------------------------------------------------------- */
void av_batch_free(av_batch *b) {
    free(b->ids);
    free(b->targets);
    memset(b, 0, sizeof *b);
}

/* qsort_r comparator (the dataset is the context: no global state) */
static int cmp_len(const void *a, const void *b, void *ctx) {
    const av_dataset *d = ctx;
    int i = *(const int *)a, j = *(const int *)b;
    int li = d->rows[i].n, lj = d->rows[j].n;
    if (li != lj) return li < lj ? -1 : 1;
    return (i > j) - (i < j);
}

av_status av_batcher_init(av_batcher *bt, const av_dataset *d, int batch_size, uint64_t seed) {
    memset(bt, 0, sizeof *bt);
    if (batch_size < 1) return av_fail(AV_ERR_ARG, "batch size must be >= 1");
    if (d->n < batch_size)
        return av_fail(AV_ERR_ARG, "%s: dataset must have at least batch_size=%d examples but only has %d", d->path, batch_size,
                       d->n);
    bt->d = d;
    bt->batch_size = batch_size;
    bt->seed = seed;
    bt->epoch = -1;
    bt->nb = (d->n + batch_size - 1) / batch_size;
    bt->sorted = malloc((size_t)d->n * sizeof(int));
    bt->perm = malloc((size_t)bt->nb * sizeof(int));
    if (!bt->sorted || !bt->perm) {
        av_batcher_free(bt);
        return av_fail(AV_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < d->n; i++) bt->sorted[i] = i;
    qsort_r(bt->sorted, (size_t)d->n, sizeof(int), cmp_len, (void *)d);
    return AV_OK;
}

void av_batcher_free(av_batcher *bt) {
    free(bt->sorted);
    free(bt->perm);
    memset(bt, 0, sizeof *bt);
}

static void make_perm(av_batcher *bt, long long epoch) {
    uint64_t st = bt->seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(epoch + 1));
    for (int i = 0; i < bt->nb; i++) bt->perm[i] = i;
    for (int i = bt->nb - 1; i > 0; i--) { /* Fisher-Yates */
        int j = (int)(av_splitmix64(&st) % (uint64_t)(i + 1));
        int t = bt->perm[i];
        bt->perm[i] = bt->perm[j];
        bt->perm[j] = t;
    }
    bt->epoch = epoch;
}

av_status av_batcher_get(av_batcher *bt, long long k, int shuffle, av_batch *out) {
    if (k < 0) return av_fail(AV_ERR_ARG, "negative batch index");
    int b;
    if (shuffle) {
        long long e = k / bt->nb;
        if (e != bt->epoch) make_perm(bt, e);
        b = bt->perm[k % bt->nb];
    } else {
        if (k >= bt->nb) return av_fail(AV_ERR_ARG, "batch %lld out of range (%d batches)", k, bt->nb);
        b = (int)k;
    }
    const av_dataset *d = bt->d;
    int r0 = b * bt->batch_size, r1 = r0 + bt->batch_size;
    if (r1 > d->n) r1 = d->n;
    int B = r1 - r0, L = 0;
    for (int i = r0; i < r1; i++)
        if (d->rows[bt->sorted[i]].n > L) L = d->rows[bt->sorted[i]].n;
    int T = L - 1;
    if ((long long)B * T > out->cap) {
        int32_t *ids = realloc(out->ids, (size_t)B * T * sizeof *ids);
        if (ids) out->ids = ids;
        int32_t *tg = realloc(out->targets, (size_t)B * T * sizeof *tg);
        if (tg) out->targets = tg;
        if (!ids || !tg) return av_fail(AV_ERR_NOMEM, "out of memory (batch)");
        out->cap = B * T;
    }
    out->B = B;
    out->T = T;
    out->n_targets = 0;
    for (int i = 0; i < B; i++) {
        const av_ds_row *r = &d->rows[bt->sorted[r0 + i]];
        int32_t *ids = out->ids + (size_t)i * T, *tg = out->targets + (size_t)i * T;
        int first = r->offset > 1 ? r->offset : 1; /* first token index that is a target */
        for (int t = 0; t < T; t++) {
            ids[t] = t < r->n ? r->ids[t] : 0;
            int p = t + 1; /* position t predicts token p */
            if (p < r->n && p >= first) {
                tg[t] = r->ids[p];
                out->n_targets++;
            } else {
                tg[t] = -1;
            }
        }
    }
    return AV_OK;
}
