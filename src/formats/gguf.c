/* GGUF reader: "GGUF", u32 version (2 or 3), u64 tensor count, u64 key/value count, the key/value
 * pairs (u64-length strings, u32 value types, arrays as u32 element type + u64 count), the tensor
 * infos (name, u32 dims, u64 extents, u32 type, u64 offset), then the data section at the next
 * multiple of general.alignment (32 when absent). Every length is checked against the bytes left. */
#include "formats/gguf.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const struct { int blk, size; const char *name; } ggml_types[AV_GGML_TYPE_COUNT] = {
    [0] = {1, 4, "F32"}, [1] = {1, 2, "F16"}, [2] = {32, 18, "Q4_0"}, [3] = {32, 20, "Q4_1"},
    [6] = {32, 22, "Q5_0"}, [7] = {32, 24, "Q5_1"}, [8] = {32, 34, "Q8_0"}, [9] = {32, 36, "Q8_1"},
    [10] = {256, 84, "Q2_K"}, [11] = {256, 110, "Q3_K"}, [12] = {256, 144, "Q4_K"}, [13] = {256, 176, "Q5_K"},
    [14] = {256, 210, "Q6_K"}, [15] = {256, 292, "Q8_K"}, [16] = {256, 66, "IQ2_XXS"}, [17] = {256, 74, "IQ2_XS"},
    [18] = {256, 98, "IQ3_XXS"}, [19] = {256, 50, "IQ1_S"}, [20] = {32, 18, "IQ4_NL"}, [21] = {256, 110, "IQ3_S"},
    [22] = {256, 82, "IQ2_S"}, [23] = {256, 136, "IQ4_XS"}, [24] = {1, 1, "I8"}, [25] = {1, 2, "I16"},
    [26] = {1, 4, "I32"}, [27] = {1, 8, "I64"}, [28] = {1, 8, "F64"}, [29] = {256, 56, "IQ1_M"},
    [30] = {1, 2, "BF16"}, [34] = {256, 54, "TQ1_0"}, [35] = {256, 66, "TQ2_0"}, [39] = {32, 17, "MXFP4"},
    [40] = {64, 36, "NVFP4"}, [41] = {128, 18, "Q1_0"}, [42] = {64, 18, "Q2_0"},
};
int av_ggml_block_size(int t) { return t >= 0 && t < AV_GGML_TYPE_COUNT ? ggml_types[t].blk : 0; }
int av_ggml_type_size(int t) { return t >= 0 && t < AV_GGML_TYPE_COUNT ? ggml_types[t].size : 0; }
const char *av_ggml_type_name(int t) { return av_ggml_block_size(t) ? ggml_types[t].name : "?"; }

static const int vsize[AV_GGUF_VTYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
static const char *const vname[AV_GGUF_VTYPE_COUNT] = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
                                                       "bool", "string", "array", "uint64", "int64", "float64"};

typedef struct { const uint8_t *p, *end; } cur;
static size_t left(const cur *c) { return (size_t)(c->end - c->p); }
static int rd_u32(cur *c, uint32_t *v) { if (left(c) < 4) return -1; memcpy(v, c->p, 4); c->p += 4; return 0; }
static int rd_u64(cur *c, uint64_t *v) { if (left(c) < 8) return -1; memcpy(v, c->p, 8); c->p += 8; return 0; }
/* u64 length + bytes; *s points into the mapping */
static int rd_str(cur *c, const uint8_t **s, uint64_t *len) {
    if (rd_u64(c, len) || *len > left(c)) return -1;
    *s = c->p;
    c->p += *len;
    return 0;
}
static char *dup_n(const uint8_t *s, uint64_t n) {
    char *d = malloc((size_t)n + 1);
    if (d) { memcpy(d, s, (size_t)n); d[n] = 0; }
    return d;
}

int av_gguf_is_file(const char *path) {
    struct stat sb;
    if (!path || stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) return 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) return 0;
    char m[4] = {0};
    size_t n = fread(m, 1, 4, fp);
    fclose(fp);
    return n == 4 && !memcmp(m, "GGUF", 4);
}

/* Skips one value of type `t` (checked). Arrays of strings record where each string starts. */
static av_status skip_value(const av_gguf_file *f, cur *c, int t, av_gguf_kv *kv, int depth, const char *key) {
    if (t < 0 || t >= AV_GGUF_VTYPE_COUNT) return av_fail(AV_ERR_FORMAT, "%s: key '%s' has unknown value type %d", f->path, key, t);
    if (vsize[t]) {
        if (left(c) < (size_t)vsize[t]) return av_fail(AV_ERR_FORMAT, "%s: key '%s': value runs past the end of the file", f->path, key);
        c->p += vsize[t];
        return AV_OK;
    }
    if (t == AV_GGUF_STR) {
        const uint8_t *s;
        uint64_t n;
        if (rd_str(c, &s, &n)) return av_fail(AV_ERR_FORMAT, "%s: key '%s': string runs past the end of the file", f->path, key);
        if (kv) { kv->p = s; kv->len = n; }
        return AV_OK;
    }
    if (depth > 3) return av_fail(AV_ERR_FORMAT, "%s: key '%s': arrays nested too deeply", f->path, key);
    uint32_t et;
    uint64_t n;
    if (rd_u32(c, &et) || rd_u64(c, &n)) return av_fail(AV_ERR_FORMAT, "%s: key '%s': array header runs past the end of the file", f->path, key);
    if (et >= AV_GGUF_VTYPE_COUNT) return av_fail(AV_ERR_FORMAT, "%s: key '%s' is an array of unknown type %u", f->path, key, et);
    if (kv) { kv->arr_type = (int)et; kv->n = n; kv->p = c->p; }
    if (vsize[et]) {
        if (n > left(c) / (size_t)vsize[et])
            return av_fail(AV_ERR_FORMAT, "%s: key '%s': array of %llu %s runs past the end of the file", f->path, key, (unsigned long long)n, vname[et]);
        c->p += n * (uint64_t)vsize[et];
        return AV_OK;
    }
    /* each string or array element takes at least 8 (12) bytes */
    if (n > left(c) / (et == AV_GGUF_STR ? 8 : 12))
        return av_fail(AV_ERR_FORMAT, "%s: key '%s': array of %llu %s runs past the end of the file", f->path, key, (unsigned long long)n, vname[et]);
    if (kv && et == AV_GGUF_STR && !(kv->strs = malloc(((size_t)n + 1) * sizeof *kv->strs)))
        return av_fail(AV_ERR_NOMEM, "%s: key '%s': out of memory", f->path, key);
    for (uint64_t i = 0; i < n; i++) {
        if (kv && kv->strs) kv->strs[i] = c->p;
        AV_TRY(skip_value(f, c, (int)et, NULL, depth + 1, key));
    }
    return AV_OK;
}

static av_status parse(av_gguf_file *f) {
    const char *P = f->path;
    cur c = {f->map.data, (const uint8_t *)f->map.data + f->map.size};
    uint32_t ver;
    uint64_t nt, nkv;
    if (f->map.size < 4 || memcmp(c.p, "GGUF", 4)) return av_fail(AV_ERR_FORMAT, "%s: not a GGUF file (bad magic)", P);
    c.p += 4;
    if (rd_u32(&c, &ver) || rd_u64(&c, &nt) || rd_u64(&c, &nkv)) return av_fail(AV_ERR_FORMAT, "%s: truncated GGUF header", P);
    if (ver == 1) return av_fail(AV_ERR_UNSUPPORTED, "%s: GGUF version 1 is not supported (versions 2 and 3)", P);
    if (ver != 2 && ver != 3) {
        if ((ver & 0xFFFF) == 0 && ver) return av_fail(AV_ERR_UNSUPPORTED, "%s: big-endian GGUF is not supported", P);
        return av_fail(AV_ERR_UNSUPPORTED, "%s: unknown GGUF version %u (supported: 2, 3)", P, ver);
    }
    f->version = ver;
    if (nkv > left(&c) / 13) return av_fail(AV_ERR_FORMAT, "%s: key/value count %llu exceeds the file size", P, (unsigned long long)nkv);
    if (nt > left(&c) / 32) return av_fail(AV_ERR_FORMAT, "%s: tensor count %llu exceeds the file size", P, (unsigned long long)nt);
    f->kv = calloc((size_t)nkv + 1, sizeof *f->kv);
    f->tensors = calloc((size_t)nt + 1, sizeof *f->tensors);
    if (!f->kv || !f->tensors) return av_fail(AV_ERR_NOMEM, "%s: out of memory", P);
    f->alignment = 32;
    for (uint64_t i = 0; i < nkv; i++) {
        const uint8_t *ks;
        uint64_t kl;
        uint32_t t;
        if (rd_str(&c, &ks, &kl)) return av_fail(AV_ERR_FORMAT, "%s: key %llu runs past the end of the file", P, (unsigned long long)i);
        av_gguf_kv *kv = &f->kv[f->n_kv];
        if (!(kv->key = dup_n(ks, kl))) return av_fail(AV_ERR_NOMEM, "%s: out of memory", P);
        f->n_kv++;
        if (strlen(kv->key) != kl || !kl) return av_fail(AV_ERR_FORMAT, "%s: key %llu is empty or holds a NUL byte", P, (unsigned long long)i);
        for (int j = 0; j < f->n_kv - 1; j++)
            if (!strcmp(f->kv[j].key, kv->key)) return av_fail(AV_ERR_FORMAT, "%s: duplicate key '%s'", P, kv->key);
        if (rd_u32(&c, &t)) return av_fail(AV_ERR_FORMAT, "%s: key '%s': value type runs past the end of the file", P, kv->key);
        kv->type = (int)t;
        kv->n = 1;
        kv->p = c.p;
        AV_TRY(skip_value(f, &c, (int)t, kv, 0, kv->key));
        if (t == AV_GGUF_BOOL && *kv->p > 1) return av_fail(AV_ERR_FORMAT, "%s: key '%s': bool value %u is not 0 or 1", P, kv->key, *kv->p);
        if (!strcmp(kv->key, "general.alignment")) {
            if (t != AV_GGUF_U32) return av_fail(AV_ERR_FORMAT, "%s: key 'general.alignment' must be uint32 (is %s)", P, vname[t]);
            uint32_t a;
            memcpy(&a, kv->p, 4);
            if (a == 0 || (a & (a - 1)) || a % 8 || a > (1u << 20))
                return av_fail(AV_ERR_FORMAT, "%s: key 'general.alignment': %u is not a power of two from 8 to 1 MiB", P, a);
            f->alignment = a;
        }
    }
    for (uint64_t i = 0; i < nt; i++) {
        const uint8_t *ns;
        uint64_t nl;
        uint32_t nd, ty;
        if (rd_str(&c, &ns, &nl)) return av_fail(AV_ERR_FORMAT, "%s: tensor info %llu runs past the end of the file", P, (unsigned long long)i);
        av_gguf_tensor *t = &f->tensors[f->n_tensors];
        if (!(t->name = dup_n(ns, nl))) return av_fail(AV_ERR_NOMEM, "%s: out of memory", P);
        f->n_tensors++;
        if (strlen(t->name) != nl || !nl) return av_fail(AV_ERR_FORMAT, "%s: tensor %llu has an empty name or one holding a NUL byte", P, (unsigned long long)i);
        for (int j = 0; j < f->n_tensors - 1; j++)
            if (!strcmp(f->tensors[j].name, t->name)) return av_fail(AV_ERR_FORMAT, "%s: duplicate tensor '%s'", P, t->name);
        if (rd_u32(&c, &nd)) return av_fail(AV_ERR_FORMAT, "%s: tensor '%s': info runs past the end of the file", P, t->name);
        if (nd < 1 || nd > 4) return av_fail(AV_ERR_FORMAT, "%s: tensor '%s' has %u dimensions (1 to 4)", P, t->name, nd);
        t->ndim = (int)nd;
        uint64_t numel = 1;
        for (uint32_t d = 0; d < nd; d++) {
            uint64_t e;
            if (rd_u64(&c, &e)) return av_fail(AV_ERR_FORMAT, "%s: tensor '%s': info runs past the end of the file", P, t->name);
            if (e > ((uint64_t)1 << 50) || (e && numel > ((uint64_t)1 << 50) / e))
                return av_fail(AV_ERR_FORMAT, "%s: tensor '%s': extent %llu of dimension %u is too large", P, t->name, (unsigned long long)e, d);
            t->ne[d] = (int64_t)e;
            numel *= e;
        }
        for (int d = (int)nd; d < 4; d++) t->ne[d] = 1;
        if (rd_u32(&c, &ty) || rd_u64(&c, &t->offset)) return av_fail(AV_ERR_FORMAT, "%s: tensor '%s': info runs past the end of the file", P, t->name);
        int blk = av_ggml_block_size((int)ty);
        if (!blk) return av_fail(AV_ERR_UNSUPPORTED, "%s: tensor '%s' has unknown type %u", P, t->name, ty);
        t->type = (int)ty;
        if (t->ne[0] % blk)
            return av_fail(AV_ERR_FORMAT, "%s: tensor '%s': %lld columns are not a multiple of the %s block size %d", P, t->name,
                           (long long)t->ne[0], av_ggml_type_name(t->type), blk);
        t->nbytes = (size_t)(numel / (uint64_t)blk * (uint64_t)av_ggml_type_size(t->type));
        if (t->offset % f->alignment)
            return av_fail(AV_ERR_FORMAT, "%s: tensor '%s': offset %llu is not a multiple of the alignment %u", P, t->name,
                           (unsigned long long)t->offset, f->alignment);
    }
    size_t hdr = (size_t)(c.p - (const uint8_t *)f->map.data);
    size_t data = (hdr + f->alignment - 1) / f->alignment * f->alignment;
    if (nt && data > f->map.size) return av_fail(AV_ERR_FORMAT, "%s: data section starts past the end of the file: truncated?", P);
    size_t avail = data <= f->map.size ? f->map.size - data : 0;
    for (int i = 0; i < f->n_tensors; i++) {
        av_gguf_tensor *t = &f->tensors[i];
        if (t->offset > avail || t->nbytes > avail - t->offset)
            return av_fail(AV_ERR_FORMAT, "%s: tensor '%s' (%zu bytes at data offset %llu) runs past the end of the file (%zu data bytes): truncated?",
                           P, t->name, t->nbytes, (unsigned long long)t->offset, avail);
        t->data = (const uint8_t *)f->map.data + data + t->offset;
    }
    /* overlaps: sort (insertion order is usually offset order already) */
    int *ord = malloc(((size_t)f->n_tensors + 1) * sizeof *ord);
    if (!ord) return av_fail(AV_ERR_NOMEM, "%s: out of memory", P);
    for (int i = 0; i < f->n_tensors; i++) {
        int j = i;
        while (j > 0 && f->tensors[ord[j - 1]].offset > f->tensors[i].offset) { ord[j] = ord[j - 1]; j--; }
        ord[j] = i;
    }
    av_status st = AV_OK;
    for (int i = 1; i < f->n_tensors && st == AV_OK; i++) {
        const av_gguf_tensor *a = &f->tensors[ord[i - 1]], *b = &f->tensors[ord[i]];
        if (a->nbytes && b->nbytes && a->offset + a->nbytes > b->offset)
            st = av_fail(AV_ERR_FORMAT, "%s: tensor '%s' overlaps tensor '%s'", P, b->name, a->name);
    }
    free(ord);
    return st;
}

av_status av_gguf_open(av_gguf_file *f, const char *path) {
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", path);
    AV_TRY(av_file_map(&f->map, path));
    av_status st = parse(f);
    if (st != AV_OK) av_gguf_close(f);
    return st;
}

av_status av_gguf_open_mem(av_gguf_file *f, const void *data, size_t size, const char *name) {
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", name ? name : "(memory)");
    f->borrowed = 1;
    static const uint8_t none[1];
    f->map.data = (void *)(uintptr_t)(data ? data : none);
    f->map.size = data ? size : 0;
    av_status st = parse(f);
    if (st != AV_OK) av_gguf_close(f);
    return st;
}

void av_gguf_close(av_gguf_file *f) {
    for (int i = 0; f->kv && i < f->n_kv; i++) { free((char *)f->kv[i].key); free(f->kv[i].strs); }
    for (int i = 0; f->tensors && i < f->n_tensors; i++) free((char *)f->tensors[i].name);
    free(f->kv);
    free(f->tensors);
    if (!f->borrowed) av_file_unmap(&f->map);
    f->map.data = NULL;
    f->map.size = 0;
    f->kv = NULL;
    f->tensors = NULL;
    f->n_kv = f->n_tensors = 0;
}

const av_gguf_kv *av_gguf_find(const av_gguf_file *f, const char *key) {
    for (int i = 0; i < f->n_kv; i++)
        if (!strcmp(f->kv[i].key, key)) return &f->kv[i];
    return NULL;
}

const av_gguf_tensor *av_gguf_tensor_find(const av_gguf_file *f, const char *name) {
    for (int i = 0; i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

int64_t av_gguf_numel(const av_gguf_tensor *t) { return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]; }

/* a numeric value at p of type t */
static int is_int(int t) { return t <= AV_GGUF_I32 || t == AV_GGUF_U64 || t == AV_GGUF_I64 || t == AV_GGUF_BOOL; }
static int is_num(int t) { return is_int(t) || t == AV_GGUF_F32 || t == AV_GGUF_F64; }
static double num_at(const uint8_t *p, int t, int64_t *iv) {
    uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; uint64_t u64; int64_t i64; float f32; double f64;
    double d = 0;
    int64_t i = 0;
    switch (t) {
    case AV_GGUF_U8: case AV_GGUF_BOOL: memcpy(&u8, p, 1); i = u8; d = u8; break;
    case AV_GGUF_I8: memcpy(&i8, p, 1); i = i8; d = i8; break;
    case AV_GGUF_U16: memcpy(&u16, p, 2); i = u16; d = u16; break;
    case AV_GGUF_I16: memcpy(&i16, p, 2); i = i16; d = i16; break;
    case AV_GGUF_U32: memcpy(&u32, p, 4); i = u32; d = u32; break;
    case AV_GGUF_I32: memcpy(&i32, p, 4); i = i32; d = i32; break;
    case AV_GGUF_U64: memcpy(&u64, p, 8); i = u64 > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)u64; d = (double)u64; break;
    case AV_GGUF_I64: memcpy(&i64, p, 8); i = i64; d = (double)i64; break;
    case AV_GGUF_F32: memcpy(&f32, p, 4); d = f32; i = (int64_t)0; break;
    case AV_GGUF_F64: memcpy(&f64, p, 8); d = f64; i = (int64_t)0; break;
    default: break;
    }
    if (iv) *iv = i;
    return d;
}

av_status av_gguf_get_i64(const av_gguf_file *f, const char *key, int64_t *out) {
    const av_gguf_kv *kv = av_gguf_find(f, key);
    if (!kv) return AV_OK;
    if (!is_int(kv->type) || kv->type == AV_GGUF_BOOL)
        return av_fail(AV_ERR_FORMAT, "%s: key '%s' is %s, not an integer", f->path, key, vname[kv->type]);
    num_at(kv->p, kv->type, out);
    return AV_OK;
}

av_status av_gguf_get_int(const av_gguf_file *f, const char *key, int lo, int hi, int *out) {
    const av_gguf_kv *kv = av_gguf_find(f, key);
    if (!kv) return AV_OK;
    int64_t v = 0;
    AV_TRY(av_gguf_get_i64(f, key, &v));
    if (kv->type == AV_GGUF_U64) { uint64_t u; memcpy(&u, kv->p, 8); if (u > (uint64_t)hi) v = (int64_t)hi + 1; }
    if (v < lo || v > hi) return av_fail(AV_ERR_FORMAT, "%s: key '%s': %lld is out of range [%d, %d]", f->path, key, (long long)v, lo, hi);
    *out = (int)v;
    return AV_OK;
}

av_status av_gguf_get_f64(const av_gguf_file *f, const char *key, double *out) {
    const av_gguf_kv *kv = av_gguf_find(f, key);
    if (!kv) return AV_OK;
    if (!is_num(kv->type) || kv->type == AV_GGUF_BOOL)
        return av_fail(AV_ERR_FORMAT, "%s: key '%s' is %s, not a number", f->path, key, vname[kv->type]);
    *out = num_at(kv->p, kv->type, NULL);
    return AV_OK;
}

av_status av_gguf_get_bool(const av_gguf_file *f, const char *key, int *out) {
    const av_gguf_kv *kv = av_gguf_find(f, key);
    if (!kv) return AV_OK;
    if (kv->type != AV_GGUF_BOOL) return av_fail(AV_ERR_FORMAT, "%s: key '%s' is %s, not a bool", f->path, key, vname[kv->type]);
    *out = *kv->p != 0;
    return AV_OK;
}

av_status av_gguf_get_str(const av_gguf_file *f, const char *key, char **out) {
    const av_gguf_kv *kv = av_gguf_find(f, key);
    if (!kv) return AV_OK;
    if (kv->type != AV_GGUF_STR) return av_fail(AV_ERR_FORMAT, "%s: key '%s' is %s, not a string", f->path, key, vname[kv->type]);
    char *s = dup_n(kv->p, kv->len);
    if (!s) return av_fail(AV_ERR_NOMEM, "%s: out of memory", f->path);
    free(*out);
    *out = s;
    return AV_OK;
}

av_status av_gguf_get_arr(const av_gguf_file *f, const char *key, int t1, int t2, const av_gguf_kv **out) {
    const av_gguf_kv *kv = av_gguf_find(f, key);
    *out = NULL;
    if (!kv) return AV_OK;
    if (kv->type != AV_GGUF_ARR) return av_fail(AV_ERR_FORMAT, "%s: key '%s' is %s, not an array", f->path, key, vname[kv->type]);
    int ok = kv->arr_type == t1 || kv->arr_type == t2 || (t1 < 0 && is_num(kv->arr_type));
    if (!ok) return av_fail(AV_ERR_FORMAT, "%s: key '%s' is an array of %s (expected %s)", f->path, key, vname[kv->arr_type],
                            t1 < 0 ? "numbers" : vname[t1]);
    *out = kv;
    return AV_OK;
}

double av_gguf_arr_f64(const av_gguf_kv *kv, uint64_t i) {
    return num_at(kv->p + i * (uint64_t)vsize[kv->arr_type], kv->arr_type, NULL);
}
int64_t av_gguf_arr_i64(const av_gguf_kv *kv, uint64_t i) {
    int64_t v = 0;
    double d = num_at(kv->p + i * (uint64_t)vsize[kv->arr_type], kv->arr_type, &v);
    if (is_int(kv->arr_type)) return v;
    /* a float outside int64's range (or NaN) has no integer value: saturate, NaN -> 0 */
    if (!(d == d)) return 0;
    if (d >= 9223372036854775807.0) return INT64_MAX;
    if (d <= -9223372036854775808.0) return INT64_MIN;
    return (int64_t)d;
}
const char *av_gguf_arr_str(const av_gguf_kv *kv, uint64_t i, size_t *len) {
    uint64_t n;
    memcpy(&n, kv->strs[i], 8);
    *len = (size_t)n;
    return (const char *)kv->strs[i] + 8;
}
