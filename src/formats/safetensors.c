/* safetensors reader/writer. Header: u64 little-endian length, then a JSON object mapping tensor
 * names to {dtype, shape, data_offsets}; offsets are relative to the byte after the header. */
#include "formats/safetensors.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

int64_t av_st_numel(const av_st_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

static av_status parse_header(av_st_file *f) {
    const char *p = f->path;
    if (f->map.size < 8) return av_fail(AV_ERR_FORMAT, "%s: truncated safetensors file (%zu bytes)", p, f->map.size);
    uint64_t hlen;
    memcpy(&hlen, f->map.data, 8);
    if (hlen > f->map.size - 8 || hlen > (1ull << 30))
        return av_fail(AV_ERR_FORMAT, "%s: header length %llu exceeds file size %zu", p, (unsigned long long)hlen, f->map.size);
    const char *hdr = (const char *)f->map.data + 8;
    cJSON *root = cJSON_ParseWithLength(hdr, (size_t)hlen);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return av_fail(AV_ERR_FORMAT, "%s: safetensors header is not valid JSON", p);
    }
    const uint8_t *base = (const uint8_t *)f->map.data + 8 + hlen;
    size_t avail = f->map.size - 8 - hlen;
    int count = cJSON_GetArraySize(root);
    f->tensors = calloc((size_t)count + 1, sizeof *f->tensors);
    if (!f->tensors) {
        cJSON_Delete(root);
        return av_fail(AV_ERR_NOMEM, "%s: out of memory", p);
    }
    av_status st = AV_OK;
    for (cJSON *it = root->child; it; it = it->next) {
        if (!strcmp(it->string, "__metadata__")) {
            if (f->metadata_json) { st = av_fail(AV_ERR_FORMAT, "%s: two __metadata__ entries", p); break; }
            if (!(f->metadata_json = cJSON_PrintUnformatted(it))) { st = av_fail(AV_ERR_NOMEM, "%s: out of memory", p); break; }
            continue;
        }
        av_st_tensor *t = &f->tensors[f->n];
        cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
        cJSON *sh = cJSON_GetObjectItemCaseSensitive(it, "shape");
        cJSON *off = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
        if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2) {
            st = av_fail(AV_ERR_FORMAT, "%s: tensor '%s' has a malformed header entry", p, it->string);
            break;
        }
        if (av_dtype_parse(dt->valuestring, &t->dtype) != 0) {
            st = av_fail(AV_ERR_UNSUPPORTED, "%s: tensor '%s' has unknown dtype '%s'", p, it->string, dt->valuestring);
            break;
        }
        t->ndim = cJSON_GetArraySize(sh);
        if (t->ndim > AV_MAX_DIMS) { st = av_fail(AV_ERR_FORMAT, "%s: tensor '%s' has %d dims", p, it->string, t->ndim); break; }
        int64_t numel = 1;
        int i = 0, bad = 0;
        for (cJSON *d = sh->child; d; d = d->next, i++) {
            if (!cJSON_IsNumber(d) || d->valuedouble < 0 || d->valuedouble > 1e15) { bad = 1; break; }
            t->shape[i] = (int64_t)d->valuedouble;
            numel *= t->shape[i];
            if (numel > (int64_t)1 << 50) { bad = 1; break; }
        }
        const cJSON *o0 = cJSON_GetArrayItem(off, 0), *o1 = cJSON_GetArrayItem(off, 1);
        double b0 = o0->valuedouble, b1 = o1->valuedouble;
        if (bad || !cJSON_IsNumber(o0) || !cJSON_IsNumber(o1) || b0 < 0 || b1 < b0 || b1 > 1e15) { st = av_fail(AV_ERR_FORMAT, "%s: tensor '%s' has a bad shape or offsets", p, it->string); break; }
        size_t beg = (size_t)b0, end = (size_t)b1;
        size_t want = (size_t)numel * av_dtype_size(t->dtype);
        if (end - beg != want) {
            st = av_fail(AV_ERR_FORMAT, "%s: tensor '%s' spans %zu bytes but its shape needs %zu", p, it->string, end - beg, want);
            break;
        }
        if (end > avail) {
            st = av_fail(AV_ERR_FORMAT, "%s: tensor '%s' ends at byte %zu past the end of the file (%zu data bytes): truncated?", p,
                         it->string, end, avail);
            break;
        }
        if (!(t->name = strdup(it->string))) { st = av_fail(AV_ERR_NOMEM, "%s: out of memory", p); break; }
        t->data = base + beg;
        t->nbytes = want;
        t->file = f->path;
        f->n++;
    }
    cJSON_Delete(root);
    return st;
}

av_status av_st_open(av_st_file *f, const char *path) {
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", path);
    AV_TRY(av_file_map(&f->map, path));
    av_status st = parse_header(f);
    if (st != AV_OK) av_st_close(f);
    return st;
}

av_status av_st_open_mem(av_st_file *f, const void *data, size_t size, const char *name) {
    static const uint8_t none[1];
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", name ? name : "(memory)");
    f->borrowed = 1;
    f->map.data = (void *)(uintptr_t)(data ? data : none);
    f->map.size = data ? size : 0;
    av_status st = parse_header(f);
    if (st != AV_OK) av_st_close(f);
    return st;
}

void av_st_close(av_st_file *f) {
    for (int i = 0; i < f->n; i++) free(f->tensors[i].name);
    free(f->tensors);
    free(f->metadata_json);
    if (!f->borrowed) av_file_unmap(&f->map);
    f->map.data = NULL;
    f->map.size = 0;
    f->tensors = NULL;
    f->metadata_json = NULL;
    f->n = 0;
}

const av_st_tensor *av_st_find(const av_st_file *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

static av_status set_add(av_st_set *s, const char *path) {
    av_st_file *nf = realloc(s->files, sizeof *nf * (size_t)(s->nfiles + 1));
    if (!nf) return av_fail(AV_ERR_NOMEM, "out of memory");
    s->files = nf;
    AV_TRY(av_st_open(&s->files[s->nfiles], path));
    s->nfiles++;
    return AV_OK;
}

av_status av_st_set_open_file(av_st_set *s, const char *path) {
    memset(s, 0, sizeof *s);
    av_status st = set_add(s, path);
    if (st != AV_OK) av_st_set_close(s);
    return st;
}

av_status av_st_set_open_dir(av_st_set *s, const char *dir) {
    memset(s, 0, sizeof *s);
    char path[4096];
    av_path_join(path, sizeof path, dir, "model.safetensors");
    if (av_file_exists(path)) return av_st_set_open_file(s, path);
    av_path_join(path, sizeof path, dir, "model.safetensors.index.json");
    if (!av_file_exists(path))
        return av_fail(AV_ERR_IO, "%s: no model.safetensors or model.safetensors.index.json", dir);
    char *txt;
    AV_TRY(av_file_read(path, &txt, NULL));
    cJSON *root = cJSON_Parse(txt);
    free(txt);
    cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(root);
        return av_fail(AV_ERR_FORMAT, "%s: missing or malformed \"weight_map\"", path);
    }
    av_status st = AV_OK;
    for (cJSON *it = wm->child; it && st == AV_OK; it = it->next) {
        if (!cJSON_IsString(it) || strchr(it->valuestring, '/')) {
            st = av_fail(AV_ERR_FORMAT, "%s: bad shard name for '%s'", path, it->string);
            break;
        }
        int seen = 0;
        char shard[4096];
        av_path_join(shard, sizeof shard, dir, it->valuestring);
        for (int i = 0; i < s->nfiles; i++) seen |= !strcmp(s->files[i].path, shard);
        if (!seen) st = set_add(s, shard);
    }
    /* every tensor the index names must be in the shard it names */
    for (cJSON *it = wm->child; it && st == AV_OK; it = it->next) {
        if (!av_st_set_find(s, it->string))
            st = av_fail(AV_ERR_FORMAT, "%s: tensor '%s' listed in the index is missing from %s", path, it->string, it->valuestring);
    }
    cJSON_Delete(root);
    if (st != AV_OK) av_st_set_close(s);
    return st;
}

void av_st_set_close(av_st_set *s) {
    for (int i = 0; i < s->nfiles; i++) av_st_close(&s->files[i]);
    free(s->files);
    s->files = NULL;
    s->nfiles = 0;
}

const av_st_tensor *av_st_set_find(const av_st_set *s, const char *name) {
    for (int i = 0; i < s->nfiles; i++) {
        const av_st_tensor *t = av_st_find(&s->files[i], name);
        if (t) return t;
    }
    return NULL;
}

int av_st_set_count(const av_st_set *s) {
    int n = 0;
    for (int i = 0; i < s->nfiles; i++) n += s->files[i].n;
    return n;
}

const av_st_tensor *av_st_set_at(const av_st_set *s, int i) {
    for (int f = 0; f < s->nfiles; f++) {
        if (i < s->files[f].n) return &s->files[f].tensors[i];
        i -= s->files[f].n;
    }
    return NULL;
}

/* ---- writer ---- */
void av_st_writer_init(av_st_writer *w) { memset(w, 0, sizeof *w); }

av_status av_st_writer_add(av_st_writer *w, const char *name, av_dtype dt, int ndim, const int64_t *shape, const void *data) {
    if (ndim > AV_MAX_DIMS) return av_fail(AV_ERR_ARG, "tensor '%s': too many dims", name);
    if (w->n == w->cap) {
        int nc = w->cap ? w->cap * 2 : 64;
        void *ne = realloc(w->e, sizeof *w->e * (size_t)nc);
        if (!ne) return av_fail(AV_ERR_NOMEM, "out of memory");
        w->e = ne;
        w->cap = nc;
    }
    struct av_st_entry *e = &w->e[w->n++];
    e->name = strdup(name);
    e->dtype = dt;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    e->data = data;
    return AV_OK;
}

av_status av_st_writer_set_metadata(av_st_writer *w, const char *json_object) {
    free(w->metadata_json);
    w->metadata_json = json_object ? strdup(json_object) : NULL;
    return AV_OK;
}

static size_t entry_bytes(const struct av_st_entry *e) {
    size_t n = av_dtype_size(e->dtype);
    for (int i = 0; i < e->ndim; i++) n *= (size_t)e->shape[i];
    return n;
}

av_status av_st_writer_write(av_st_writer *w, const char *path) {
    cJSON *root = cJSON_CreateObject();
    if (w->metadata_json) {
        cJSON *md = cJSON_Parse(w->metadata_json);
        if (md) cJSON_AddItemToObject(root, "__metadata__", md);
    }
    size_t off = 0;
    for (int i = 0; i < w->n; i++) {
        struct av_st_entry *e = &w->e[i];
        cJSON *t = cJSON_CreateObject();
        cJSON_AddStringToObject(t, "dtype", av_dtype_name(e->dtype));
        cJSON *sh = cJSON_AddArrayToObject(t, "shape");
        for (int d = 0; d < e->ndim; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)e->shape[d]));
        cJSON *o = cJSON_AddArrayToObject(t, "data_offsets");
        size_t nb = entry_bytes(e);
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)(off + nb)));
        off += nb;
        cJSON_AddItemToObject(root, e->name, t);
    }
    char *hdr = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!hdr) return av_fail(AV_ERR_NOMEM, "%s: out of memory building header", path);
    size_t hl = strlen(hdr), padded = (hl + 7) & ~(size_t)7;
    av_atomic_file a;
    av_status st = av_atomic_open(&a, path);
    if (st != AV_OK) { free(hdr); return st; }
    errno = 0;
    uint64_t h64 = padded;
    int ok = fwrite(&h64, 8, 1, a.f) == 1 && fwrite(hdr, 1, hl, a.f) == hl;
    for (size_t i = hl; ok && i < padded; i++) ok = fputc(' ', a.f) != EOF;
    free(hdr);
    for (int i = 0; ok && i < w->n; i++) {
        size_t nb = entry_bytes(&w->e[i]);
        ok = nb == 0 || fwrite(w->e[i].data, 1, nb, a.f) == nb;
    }
    if (!ok) {
        int e = errno ? errno : EIO;
        av_atomic_abort(&a);
        return av_fail(AV_ERR_IO, "%s: write failed: %s", path, strerror(e));
    }
    return av_atomic_commit(&a);
}

void av_st_writer_free(av_st_writer *w) {
    for (int i = 0; i < w->n; i++) free(w->e[i].name);
    free(w->e);
    free(w->metadata_json);
    memset(w, 0, sizeof *w);
}
