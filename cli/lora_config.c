/* `anvil lora`'s YAML config file: libyaml document -> JSON (plain scalars typed as YAML 1.1 does),
 * then MLX-LM's keys applied to the options the command line left unset. */
#include "lora_config.h"
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>
#include "args.h"
#include "anvil.h"

#define CMD "lora"

static cJSON *yaml_node_json(yaml_document_t *doc, yaml_node_t *n, int depth) {
    if (!n || depth > 32) return cJSON_CreateNull();
    if (n->type == YAML_SCALAR_NODE) {
        const char *s = (const char *)n->data.scalar.value;
        if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
            if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "yes")) return cJSON_CreateTrue();
            if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "no")) return cJSON_CreateFalse();
            if (!*s || !strcmp(s, "null") || !strcmp(s, "~")) return cJSON_CreateNull();
            char *end;
            errno = 0;
            double v = strtod(s, &end);
            if (!*end && !errno && end != s) return cJSON_CreateNumber(v);
        }
        return cJSON_CreateString(s);
    }
    if (n->type == YAML_SEQUENCE_NODE) {
        cJSON *a = cJSON_CreateArray();
        for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++)
            cJSON_AddItemToArray(a, yaml_node_json(doc, yaml_document_get_node(doc, *it), depth + 1));
        return a;
    }
    if (n->type == YAML_MAPPING_NODE) {
        cJSON *o = cJSON_CreateObject();
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
            yaml_node_t *k = yaml_document_get_node(doc, p->key);
            if (!k || k->type != YAML_SCALAR_NODE) continue;
            cJSON_AddItemToObject(o, (const char *)k->data.scalar.value, yaml_node_json(doc, yaml_document_get_node(doc, p->value), depth + 1));
        }
        return o;
    }
    return cJSON_CreateNull();
}

int av_lora_config_load(const char *path, cJSON **out) {
    FILE *f = fopen(path, "rb");
    if (!f) return av_cli_error(CMD, "%s: cannot open config file: %s", path, strerror(errno));
    yaml_parser_t p;
    yaml_document_t doc;
    yaml_parser_initialize(&p);
    yaml_parser_set_input_file(&p, f);
    int ok = yaml_parser_load(&p, &doc);
    int rc = 0;
    if (!ok) {
        rc = av_cli_error(CMD, "%s:%zu: YAML error: %s", path, p.problem_mark.line + 1, p.problem ? p.problem : "parse error");
    } else {
        yaml_node_t *root = yaml_document_get_root_node(&doc);
        *out = root ? yaml_node_json(&doc, root, 0) : cJSON_CreateObject();
        if (!cJSON_IsObject(*out)) {
            cJSON_Delete(*out);
            *out = NULL;
            rc = av_cli_error(CMD, "%s: the config must be a mapping of keys to values", path);
        }
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&p);
    fclose(f);
    return rc;
}

static int cfg_int(const cJSON *v, const char *path, const char *key, int *dst) {
    if (*dst != LORA_UNSET_I) return 0; /* the command line wins */
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || fabs(v->valuedouble) > INT_MAX)
        return av_cli_error(CMD, "%s: %s must be an integer", path, key);
    *dst = (int)v->valuedouble;
    return 0;
}
static int cfg_num(const cJSON *v, const char *path, const char *key, double *dst) {
    if (!isnan(*dst)) return 0;
    if (cJSON_IsString(v)) { /* PyYAML reads 1e-5 as a string; MLX-LM configs are written that way */
        char *end;
        double x = strtod(v->valuestring, &end);
        if (end != v->valuestring && !*end) { *dst = x; return 0; }
    }
    if (!cJSON_IsNumber(v)) return av_cli_error(CMD, "%s: %s must be a number", path, key);
    *dst = v->valuedouble;
    return 0;
}
static int cfg_bool(const cJSON *v, const char *path, const char *key, int *dst) {
    if (!cJSON_IsBool(v)) return av_cli_error(CMD, "%s: %s must be true or false", path, key);
    if (cJSON_IsTrue(v)) *dst = 1;
    return 0;
}
static int cfg_str(const cJSON *v, const char *path, const char *key, const char **dst) {
    if (*dst) return 0;
    if (!cJSON_IsString(v)) return av_cli_error(CMD, "%s: %s must be a string", path, key);
    *dst = v->valuestring;
    return 0;
}

int av_lora_config_apply(lora_opts *o, const cJSON *cfg, const char *path, char *keys_buf, size_t keys_cap) {
    const cJSON *kv;
    int rc = 0;
    cJSON_ArrayForEach(kv, cfg) {
        const char *k = kv->string;
        if (cJSON_IsNull(kv)) continue;
        if (!strcmp(k, "model")) rc = cfg_str(kv, path, k, &o->model);
        else if (!strcmp(k, "data")) rc = cfg_str(kv, path, k, &o->data);
        else if (!strcmp(k, "train")) rc = cfg_bool(kv, path, k, &o->train);
        else if (!strcmp(k, "test")) rc = cfg_bool(kv, path, k, &o->test);
        else if (!strcmp(k, "grad_checkpoint")) rc = cfg_bool(kv, path, k, &o->grad_checkpoint);
        else if (!strcmp(k, "skip_nonfinite")) rc = cfg_bool(kv, path, k, &o->skip_nonfinite);
        else if (!strcmp(k, "mask_prompt")) rc = cfg_bool(kv, path, k, &o->mask_prompt);
        else if (!strcmp(k, "fine_tune_type")) rc = cfg_str(kv, path, k, &o->fine_tune_type);
        else if (!strcmp(k, "adapter_path")) rc = cfg_str(kv, path, k, &o->adapter_path);
        else if (!strcmp(k, "adapter_format")) rc = cfg_str(kv, path, k, &o->adapter_format);
        else if (!strcmp(k, "resume_adapter_file")) rc = cfg_str(kv, path, k, &o->resume);
        else if (!strcmp(k, "device")) rc = cfg_str(kv, path, k, &o->device);
        else if (!strcmp(k, "attention")) rc = cfg_str(kv, path, k, &o->attention);
        else if (!strcmp(k, "optimizer")) rc = cfg_str(kv, path, k, &o->optimizer);
        else if (!strcmp(k, "seed")) rc = cfg_int(kv, path, k, &o->seed);
        else if (!strcmp(k, "num_layers")) rc = cfg_int(kv, path, k, &o->num_layers);
        else if (!strcmp(k, "batch_size")) rc = cfg_int(kv, path, k, &o->batch_size);
        else if (!strcmp(k, "iters")) rc = cfg_int(kv, path, k, &o->iters);
        else if (!strcmp(k, "val_batches")) rc = cfg_int(kv, path, k, &o->val_batches);
        else if (!strcmp(k, "test_batches")) rc = cfg_int(kv, path, k, &o->test_batches);
        else if (!strcmp(k, "steps_per_report")) rc = cfg_int(kv, path, k, &o->steps_per_report);
        else if (!strcmp(k, "steps_per_eval")) rc = cfg_int(kv, path, k, &o->steps_per_eval);
        else if (!strcmp(k, "save_every")) rc = cfg_int(kv, path, k, &o->save_every);
        else if (!strcmp(k, "max_seq_length")) rc = cfg_int(kv, path, k, &o->max_seq_length);
        else if (!strcmp(k, "grad_accumulation_steps")) rc = cfg_int(kv, path, k, &o->grad_accum);
        else if (!strcmp(k, "threads")) rc = cfg_int(kv, path, k, &o->threads);
        else if (!strcmp(k, "learning_rate")) rc = cfg_num(kv, path, k, &o->learning_rate);
        else if (!strcmp(k, "lora_parameters")) {
            if (!cJSON_IsObject(kv)) return av_cli_error(CMD, "%s: lora_parameters must be a mapping", path);
            const cJSON *v;
            cJSON_ArrayForEach(v, kv) {
                const char *s = v->string;
                if (!strcmp(s, "rank")) rc = cfg_int(v, path, "lora_parameters.rank", &o->rank);
                else if (!strcmp(s, "alpha")) rc = cfg_num(v, path, "lora_parameters.alpha", &o->alpha);
                else if (!strcmp(s, "scale")) rc = cfg_num(v, path, "lora_parameters.scale", &o->scale);
                else if (!strcmp(s, "dropout")) rc = cfg_num(v, path, "lora_parameters.dropout", &o->dropout);
                else if (!strcmp(s, "keys")) {
                    if (o->lora_keys) continue;
                    if (!cJSON_IsArray(v)) return av_cli_error(CMD, "%s: lora_parameters.keys must be a list", path);
                    keys_buf[0] = 0;
                    const cJSON *e;
                    cJSON_ArrayForEach(e, v) {
                        if (!cJSON_IsString(e)) return av_cli_error(CMD, "%s: lora_parameters.keys must be strings", path);
                        if (strlen(keys_buf) + strlen(e->valuestring) + 2 >= keys_cap)
                            return av_cli_error(CMD, "%s: lora_parameters.keys is too long", path);
                        if (keys_buf[0]) strcat(keys_buf, ",");
                        strcat(keys_buf, e->valuestring);
                    }
                    o->lora_keys = keys_buf;
                } else fprintf(stderr, "anvil lora: warning: %s: unknown key lora_parameters.%s ignored\n", path, s);
                if (rc) return rc;
            }
        } else if (!strcmp(k, "lr_schedule")) {
            if (!cJSON_IsObject(kv)) return av_cli_error(CMD, "%s: lr_schedule must be a mapping", path);
            av_lr_schedule *s = &o->sched;
            memset(s, 0, sizeof *s);
            if (av_lr_kind_parse(av_json_str(kv, "name", NULL), &s->kind) != AV_OK)
                return av_cli_error(CMD, "%s: %s", path, av_last_error());
            const cJSON *args = cJSON_GetObjectItemCaseSensitive(kv, "arguments"), *e;
            if (!cJSON_IsArray(args)) return av_cli_error(CMD, "%s: lr_schedule.arguments must be a list", path);
            cJSON_ArrayForEach(e, args) {
                if (s->nargs >= 3) return av_cli_error(CMD, "%s: lr_schedule.arguments: at most 3", path);
                double x = NAN;
                if (cfg_num(e, path, "lr_schedule.arguments", &x)) return 1;
                s->args[s->nargs++] = x;
            }
            s->warmup = (int)av_json_num(kv, "warmup", 0);
            s->warmup_init = av_json_num(kv, "warmup_init", 0);
            if (av_lr_validate(s) != AV_OK) return av_cli_error(CMD, "%s: %s", path, av_last_error());
            o->sched_from_config = 1;
        } else if (!strcmp(k, "optimizer_config")) {
            if (!cJSON_IsObject(kv)) return av_cli_error(CMD, "%s: optimizer_config must be a mapping", path);
            const cJSON *v;
            cJSON_ArrayForEach(v, kv) if (!cJSON_IsObject(v) && !cJSON_IsNull(v)) return av_cli_error(
                CMD, "%s: optimizer_config.%s must be a mapping of the optimizer's arguments", path, v->string);
            o->optimizer_config = kv;
        } else if (!strcmp(k, "wandb") || !strcmp(k, "report_to") || !strcmp(k, "project_name")) {
            /* MLX-LM logging integrations: nothing to do */
        } else fprintf(stderr, "anvil lora: warning: %s: unknown key '%s' ignored\n", path, k);
        if (rc) return rc;
    }
    return 0;
}

/* ---- optimizer_config ------------------------------------------------------------------------- */
static int opt_num(const cJSON *v, const char *path, const char *name, const char *key, double *dst) {
    if (cJSON_IsNumber(v)) {
        *dst = v->valuedouble;
        return 0;
    }
    char *end = NULL;
    if (cJSON_IsString(v)) *dst = strtod(v->valuestring, &end); /* "1e-8" as PyYAML reads it */
    if (!end || end == v->valuestring || *end)
        return av_cli_error(CMD, "%s: optimizer_config.%s.%s must be a number", path, name, key);
    return 0;
}
static int opt_bool(const cJSON *v, const char *path, const char *name, const char *key, int *dst) {
    if (!cJSON_IsBool(v)) return av_cli_error(CMD, "%s: optimizer_config.%s.%s must be true or false", path, name, key);
    *dst = cJSON_IsTrue(v);
    return 0;
}
static int opt_pair(const cJSON *v, const char *path, const char *name, const char *key, double *a, double *b) {
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 2)
        return av_cli_error(CMD, "%s: optimizer_config.%s.%s must be a list of two numbers", path, name, key);
    return opt_num(cJSON_GetArrayItem(v, 0), path, name, key, a) || opt_num(cJSON_GetArrayItem(v, 1), path, name, key, b);
}

int av_lora_config_optimizer(const cJSON *oc, const char *path, av_optim_params *p) {
    const char *name = av_optim_name(p->kind);
    const cJSON *m = oc ? cJSON_GetObjectItemCaseSensitive(oc, name) : NULL, *v;
    if (!cJSON_IsObject(m)) return 0;
    int adam = p->kind == AV_OPTIM_ADAM || p->kind == AV_OPTIM_ADAMW, sgd = p->kind == AV_OPTIM_SGD, af = p->kind == AV_OPTIM_ADAFACTOR;
    cJSON_ArrayForEach(v, m) {
        const char *k = v->string;
        int rc = -1;
        if (adam && !strcmp(k, "betas")) rc = opt_pair(v, path, name, k, &p->beta1, &p->beta2);
        else if (adam && !strcmp(k, "eps")) rc = opt_num(v, path, name, k, &p->eps);
        else if (adam && !strcmp(k, "bias_correction")) rc = opt_bool(v, path, name, k, &p->bias_correction);
        else if (p->kind != AV_OPTIM_ADAM && !strcmp(k, "weight_decay")) rc = opt_num(v, path, name, k, &p->weight_decay);
        else if (sgd && !strcmp(k, "momentum")) rc = opt_num(v, path, name, k, &p->momentum);
        else if (sgd && !strcmp(k, "dampening")) rc = opt_num(v, path, name, k, &p->dampening);
        else if (sgd && !strcmp(k, "nesterov")) rc = opt_bool(v, path, name, k, &p->nesterov);
        else if (af && !strcmp(k, "eps")) rc = opt_pair(v, path, name, k, &p->eps1, &p->eps2);
        else if (af && !strcmp(k, "clip_threshold")) rc = opt_num(v, path, name, k, &p->clip_threshold);
        else if (af && !strcmp(k, "decay_rate")) rc = opt_num(v, path, name, k, &p->decay_rate);
        else if (af && !strcmp(k, "beta_1")) {
            p->af_first_moment = !cJSON_IsNull(v);
            rc = p->af_first_moment ? opt_num(v, path, name, k, &p->af_beta1) : 0;
        } else if (af && !strcmp(k, "scale_parameter")) rc = opt_bool(v, path, name, k, &p->scale_parameter);
        else if (af && !strcmp(k, "relative_step")) rc = opt_bool(v, path, name, k, &p->relative_step);
        else if (af && !strcmp(k, "warmup_init")) rc = opt_bool(v, path, name, k, &p->warmup_init);
        if (rc < 0) return av_cli_error(CMD, "%s: optimizer_config.%s: %s is not an argument of MLX's %s optimizer", path, name, k, name);
        if (rc) return rc;
    }
    return 0;
}
