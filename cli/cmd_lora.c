/* `anvil lora`: LoRA fine-tuning with MLX-LM's flags (the config file is lora_config.c, file names
 * and the resume state lora_checkpoint.c), the optimizer choice, wiring of data, model, adapters and
 * trainer, report lines and progress, --test evaluation, and --dump-grads. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "args.h"
#include "common.h"
#include "commands.h"
#include "lora_checkpoint.h"
#include "lora_config.h"
#include "lora_dp.h"
#include "anvil.h"


#define CMD "lora"

/* ---- tokenizer + chat template glue for the dataset -------------------------------------------- */
typedef struct {
    av_tokenizer *tok;
    av_chat_config chat;
} text_ctx;

static av_status glue_encode(void *ctx, const char *s, size_t n, int add_special, int32_t **ids, int *cnt) {
    return av_tokenizer_encode(((text_ctx *)ctx)->tok, s, n, add_special, ids, cnt);
}
static av_status glue_render(void *ctx, const cJSON *msgs, int gen, char **out) {
    const av_chat_config *c = &((text_ctx *)ctx)->chat;
    return av_chat_render(c->template_src, c->where, msgs, gen, c->bos, c->eos, NULL, out);
}

/* ---- events -------------------------------------------------------------------------------------- */
typedef struct {
    lora_save_ctx s;
    int tty; /* progress bar on stderr */
    int bar_shown;
} run_ctx;

static void clear_bar(run_ctx *r) {
    if (r->bar_shown) {
        fputs("\r\033[K", stderr);
        r->bar_shown = 0;
    }
}

static void fmt_time(char *b, size_t cap, double s) {
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(b, cap, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(b, cap, "%ld:%02ld", t / 60, t % 60);
}

static void on_event(void *ctx, const av_train_event *e) {
    run_ctx *r = ctx;
    if (e->kind != AV_TEV_PROGRESS) clear_bar(r);
    switch (e->kind) {
    case AV_TEV_PROGRESS:
        if (r->tty) {
            int w = 30, fill = (int)((double)w * e->iter / e->iters);
            char bar[40], el[32], eta[32];
            for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
            bar[w] = 0;
            fmt_time(el, sizeof el, e->elapsed);
            fmt_time(eta, sizeof eta, e->eta);
            fprintf(stderr, "\r[%s] %d/%d  %s elapsed, ETA %s\033[K", bar, e->iter, e->iters, el, eta);
            fflush(stderr);
            r->bar_shown = 1;
        }
        return;
    case AV_TEV_REPORT:
        printf("Iter %d: Train loss %.3f, Learning Rate %.3e, It/sec %.3f, Tokens/sec %.3f, Trained Tokens %lld, Peak mem %.3f GB\n",
               e->iter, e->train_loss, e->lr, e->it_per_sec, e->tok_per_sec, e->trained_tokens, e->peak_gb);
        break;
    case AV_TEV_EVAL: printf("Iter %d: Val loss %.3f, Val took %.3fs\n", e->iter, e->val_loss, e->val_secs); break;
    case AV_TEV_SAVE: printf("Iter %d: Saved adapter weights to %s and %s.\n", e->iter, e->path, e->path2); break;
    case AV_TEV_BEST: printf("Iter %d: New best val loss %.3f, saved to %s.\n", e->iter, e->val_loss, e->path); break;
    case AV_TEV_FINAL: printf("Saved final weights to %s.\n", e->path); break;
    case AV_TEV_INTERRUPTED: printf("Iter %d: Interrupted; saved adapter weights and training state to %s.\n", e->iter, e->path); break;
    case AV_TEV_SKIPPED: fprintf(stderr, "anvil lora: warning: iteration %d: training loss is %s; step skipped\n", e->iter, isnan(e->train_loss) ? "nan" : "inf"); break;
    }
    fflush(stdout);
}

static av_status save_adapter(void *ctx, const char *tag, char *path, size_t cap) {
    return av_lora_checkpoint_save(&((run_ctx *)ctx)->s, tag, path, cap);
}

static volatile sig_atomic_t g_stop;
static volatile int g_stop_flag;
static void on_sigint(int sig) {
    (void)sig;
    if (g_stop) _exit(130); /* second Ctrl-C: leave now (writes are atomic) */
    g_stop = 1;
    g_stop_flag = 1;
}

/* ---- datasets -------------------------------------------------------------------------------------- */
static int load_split(const char *dir, const char *name, int required, const av_ds_opts *dso, int max_len, av_dataset *d,
                      int *loaded) {
    char p[4200];
    av_path_join(p, sizeof p, dir, name);
    *loaded = 0;
    if (!av_file_exists(p)) {
        if (required) return av_cli_error(CMD, "%s: not found (--data needs train.jsonl and valid.jsonl)", p);
        return 0;
    }
    if (av_dataset_load(d, p, dso) != AV_OK) return av_cli_fail(CMD);
    *loaded = 1;
    int cut = av_dataset_truncate(d, max_len);
    if (cut)
        fprintf(stderr, "[WARNING] %d of %d sequences in %s are longer than %d tokens (longest %d) and were truncated to %d.\n",
                cut, d->n, p, max_len, d->longest, max_len);
    return 0;
}

/* MLX-LM's optimizer by name (lower-cased as MLX-LM does), MLX's defaults, the config's
 * optimizer_config for it, then --weight-decay / --bias-correction. */
static int build_optimizer(const lora_opts *o, av_optim_params *p) {
    char name[32];
    size_t i = 0;
    for (; o->optimizer[i] && i + 1 < sizeof name; i++) name[i] = (char)tolower((unsigned char)o->optimizer[i]);
    name[i] = 0;
    av_optim_kind kind;
    if (av_optim_parse(name, &kind))
        return av_cli_error(CMD, "--optimizer %s is not supported (adam, adamw, sgd or adafactor)", o->optimizer);
    av_optim_defaults(p, kind);
    if (av_lora_config_optimizer(o->optimizer_config, o->config, p)) return 1;
    if (!isnan(o->weight_decay)) {
        if (kind == AV_OPTIM_ADAM) return av_cli_error(CMD, "--weight-decay: MLX's adam has no weight decay (use --optimizer adamw)");
        p->weight_decay = o->weight_decay;
    }
    if (o->bias_correction) {
        if (kind != AV_OPTIM_ADAM && kind != AV_OPTIM_ADAMW) return av_cli_error(CMD, "--bias-correction applies to adam and adamw");
        p->bias_correction = 1;
    }
    return 0;
}

static const char k_summary[] =
    "LoRA fine-tuning with MLX-LM's flags, config keys, report lines and adapter files.\n"
    "Data: --data DIR with train.jsonl, valid.jsonl (and test.jsonl for --test); lines are {\"text\"},\n"
    "{\"prompt\",\"completion\"} or {\"messages\"} (rendered with the model's chat template).\n"
    "Files in --adapter-path: adapters.safetensors + adapter_config.json (mlx) or adapter_model.safetensors +\n"
    "adapter_config.json (peft); checkpoints NNNNNNN_adapters.safetensors (mlx) or NNNNNNN/ (peft); the best\n"
    "adapter by validation loss in best_adapters.safetensors (mlx) or best/ (peft). Each adapter file has a\n"
    "*.state.safetensors beside it (optimizer state, iteration, data order, schedule): resuming from it with\n"
    "--resume-adapter-file continues the run exactly (--iters counts from the start of the run).\n"
    "Validation runs before training (reported as Iter 0), every --steps-per-eval iterations and at the end.\n"
    "--fine-tune-type full trains every weight (f32 master copies; embedding, norms, projections, LM head) and,\n"
    "as MLX-LM, writes all weights to adapters.safetensors (adapter_config.json: fine_tune_type full); the\n"
    "--adapter-path directory is also a model directory (config, tokenizer, model.safetensors) for --model.\n"
    "--dropout P applies LoRA dropout (PEFT semantics) to the adapter inputs in training steps only.\n"
    "Optimizers are MLX's, with its defaults: adam (betas 0.9/0.999, eps 1e-8, no bias correction), adamw (same,\n"
    "weight decay 0.01), sgd (momentum 0), adafactor (relative step: ignores the learning rate). The config's\n"
    "optimizer_config: {adam: {betas, eps, bias_correction}, adamw: {... weight_decay}, sgd: {momentum,\n"
    "weight_decay, dampening, nesterov}, adafactor: {eps, clip_threshold, decay_rate, beta_1, weight_decay,\n"
    "scale_parameter, relative_step, warmup_init}} sets the chosen one's arguments. PyTorch/PEFT's AdamW:\n"
    "--optimizer adamw --bias-correction.";

/* --profile: wall milliseconds of each phase over the run, and their shares. */
static void print_profile(const av_train_ctx *tc) {
    double ms[AV_TRAIN_NPHASES], total = 0;
    av_train_profile(tc, ms);
    for (int i = 0; i < AV_TRAIN_NPHASES; i++) total += ms[i];
    printf("Profile (ms over the run, device synchronised at each switch):");
    for (int i = 0; i < AV_TRAIN_NPHASES; i++) printf(" %s %.1f (%.0f%%)%s", av_train_phase_names[i], ms[i], total > 0 ? 100 * ms[i] / total : 0.0,
                                                      i + 1 < AV_TRAIN_NPHASES ? "," : "\n");
    fflush(stdout);
}

int av_cmd_lora(int argc, char **argv) {
    lora_opts o = {0};
    lora_dp dp = {0}; /* --workers / --gpus: data parallelism (lora_dp.c) */
    int *ints[] = {&o.num_layers, &o.batch_size, &o.iters, &o.steps_per_report, &o.steps_per_eval, &o.val_batches, &o.save_every,
                   &o.max_seq_length, &o.rank, &o.seed, &o.grad_accum, &o.test_batches, &o.threads, &o.warmup, &o.decay_steps};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) *ints[i] = LORA_UNSET_I;
    double *nums[] = {&o.learning_rate, &o.alpha, &o.scale, &o.dropout, &o.warmup_init, &o.lr_end, &o.weight_decay};
    for (size_t i = 0; i < sizeof nums / sizeof *nums; i++) *nums[i] = NAN;
    const av_opt opts[] = {
        {"model", AV_OPT_STR, &o.model, "model directory (HF layout)", 0, 0, NULL},
        {"train", AV_OPT_FLAG, &o.train, "train", 0, 0, NULL},
        {"data", AV_OPT_STR, &o.data, "directory with train.jsonl, valid.jsonl, test.jsonl", 0, 0, NULL},
        {"fine-tune-type", AV_OPT_STR, &o.fine_tune_type, "lora (default) or full (all weights, f32 master copies)", 0, 0, NULL},
        {"num-layers", AV_OPT_INT, &o.num_layers, "adapt the last N layers (default 16, -1 = all)", -1, 1e6, NULL},
        {"batch-size", AV_OPT_INT, &o.batch_size, "rows per batch (default 4)", 1, 1e6, NULL},
        {"iters", AV_OPT_INT, &o.iters, "training iterations (default 1000)", 1, 1e9, NULL},
        {"learning-rate", AV_OPT_FLOAT, &o.learning_rate, "learning rate (default 1e-4)", 0, 10, NULL},
        {"optimizer", AV_OPT_STR, &o.optimizer, "adam (default, as MLX-LM: no bias correction), adamw, sgd or adafactor", 0, 0, NULL},
        {"bias-correction", AV_OPT_FLAG, &o.bias_correction, "adam/adamw with bias correction (with adamw: PyTorch/PEFT's AdamW)", 0, 0, NULL},
        {"lr-schedule", AV_OPT_STR, &o.lr_schedule, "constant (default), cosine_decay, linear_schedule (to --lr-end)", 0, 0, NULL},
        {"warmup", AV_OPT_INT, &o.warmup, "linear warmup steps before the schedule (default 0)", 0, 1e9, NULL},
        {"warmup-init", AV_OPT_FLOAT, &o.warmup_init, "learning rate at the start of the warmup (default 0)", 0, 10, NULL},
        {"lr-end", AV_OPT_FLOAT, &o.lr_end, "final learning rate of cosine/linear schedules (default 0)", 0, 10, NULL},
        {"decay-steps", AV_OPT_INT, &o.decay_steps, "steps of the decay (default: optimizer steps after warmup)", 1, 1e9, NULL},
        {"weight-decay", AV_OPT_FLOAT, &o.weight_decay, "weight decay of adamw (default 0.01), sgd, adafactor (0)", 0, 10, NULL},
        {"steps-per-report", AV_OPT_INT, &o.steps_per_report, "iterations between loss reports (default 10)", 1, 1e9, NULL},
        {"steps-per-eval", AV_OPT_INT, &o.steps_per_eval, "iterations between validations (default 200)", 1, 1e9, NULL},
        {"val-batches", AV_OPT_INT, &o.val_batches, "validation batches, -1 = whole set (default 25)", -1, 1e9, NULL},
        {"save-every", AV_OPT_INT, &o.save_every, "iterations between checkpoints (default 100)", 1, 1e9, NULL},
        {"adapter-path", AV_OPT_STR, &o.adapter_path, "directory for adapter files (default adapters)", 0, 0, NULL},
        {"adapter-format", AV_OPT_STR, &o.adapter_format, "mlx (default) or peft", 0, 0, NULL},
        {"resume-adapter-file", AV_OPT_STR, &o.resume, "MLX adapters file or PEFT directory to start from", 0, 0, NULL},
        {"grad-checkpoint", AV_OPT_FLAG, &o.grad_checkpoint, "keep only layer inputs; recompute in backward", 0, 0, NULL},
        {"profile", AV_OPT_FLAG, &o.profile, "time each phase of the steps (synchronises the device; slower) and print the table", 0, 0, NULL},
        {"mask-prompt", AV_OPT_FLAG, &o.mask_prompt, "train only on completions / the last message", 0, 0, NULL},
        {"skip-nonfinite", AV_OPT_FLAG, &o.skip_nonfinite, "skip steps whose loss is NaN/Inf (default: stop, naming the iteration)", 0, 0, NULL},
        {"max-seq-length", AV_OPT_INT, &o.max_seq_length, "truncate examples to N tokens (default 2048)", 2, 1e7, NULL},
        {"lora-keys", AV_OPT_STR, &o.lora_keys, "projections to adapt (default q_proj,v_proj; all = every one)", 0, 0, NULL},
        {"rank", AV_OPT_INT, &o.rank, "LoRA rank (default 8)", 1, 65536, NULL},
        {"alpha", AV_OPT_FLOAT, &o.alpha, "LoRA alpha; scale = alpha / rank (default 16)", 0, 1e6, NULL},
        {"scale", AV_OPT_FLOAT, &o.scale, "LoRA scale, overrides alpha (MLX-LM style)", 0, 1e6, NULL},
        {"dropout", AV_OPT_FLOAT, &o.dropout, "LoRA dropout probability, training only (default 0)", 0, 1, NULL},
        {"seed", AV_OPT_INT, &o.seed, "seed for LoRA init and data order (default 0)", 0, 2147483647, NULL},
        {"grad-accumulation-steps", AV_OPT_INT, &o.grad_accum, "batches per optimizer update (default 1)", 1, 1e6, NULL},
        {"test", AV_OPT_FLAG, &o.test, "report test loss and perplexity (test.jsonl)", 0, 0, NULL},
        {"test-batches", AV_OPT_INT, &o.test_batches, "test batches, -1 = whole set (default 500)", -1, 1e9, NULL},
        {"config", AV_OPT_STR, &o.config, "YAML file with MLX-LM config keys (flags override it)", 0, 0, "c"},
        {"device", AV_OPT_STR, &o.device, "cpu or cuda (default: cuda if present)", 0, 0, NULL},
        {"threads", AV_OPT_INT, &o.threads, "CPU threads (default: all cores)", 0, 4096, NULL},
        {"attention", AV_OPT_STR, &o.attention, "attention in the training steps: flash (tiled, no [B,H,T,T] scores; the default where the backend has it), standard or auto", 0, 0, NULL},
        {"dump-grads", AV_OPT_STR, &o.dump_grads, "write the first batch's LoRA gradients (PEFT names) and exit", 0, 0, NULL},
        LORA_DP_OPTS(&dp),
        {NULL, 0, NULL, NULL, 0, 0, NULL},
    };
    int pr = av_args_parse(argc, argv, opts, CMD, k_summary);
    if (pr) return pr == 1 ? 0 : 2;

    cJSON *cfg = NULL;
    char keys_buf[512];
    /* LoRA-only settings given as flags (errors with full fine-tuning; from a config file: warnings) */
    int lora_flags = o.rank != LORA_UNSET_I || !isnan(o.alpha) || !isnan(o.scale) || o.lora_keys || (!isnan(o.dropout) && o.dropout > 0) ||
                     o.num_layers != LORA_UNSET_I;
    if (o.config) {
        if (av_lora_config_load(o.config, &cfg)) return 2;
        int rc = av_lora_config_apply(&o, cfg, o.config, keys_buf, sizeof keys_buf);
        if (rc) {
            cJSON_Delete(cfg);
            return 2;
        }
    }
    int rc = 1;
    av_tokenizer *tok = NULL;
    av_model *m = NULL;
    av_train_ctx *tc = NULL;
    av_trainer *tr = NULL;
    av_dataset dtrain = {0}, dvalid = {0}, dtest = {0};
    av_batcher btrain = {0}, bvalid = {0}, btest = {0};
    int have_train = 0, have_valid = 0, have_test = 0;
    text_ctx tctx = {0};

    /* defaults (MLX-LM's, but lr 1e-4 as in the seed) and checks */
#define DEF_I(x, v) if ((x) == LORA_UNSET_I) (x) = (v)
#define DEF_D(x, v) if (isnan(x)) (x) = (v)
    int num_layers_set = o.num_layers != LORA_UNSET_I, dropout_set = !isnan(o.dropout);
    DEF_I(o.num_layers, 16);
    DEF_I(o.batch_size, 4);
    DEF_I(o.iters, 1000);
    DEF_I(o.steps_per_report, 10);
    DEF_I(o.steps_per_eval, 200);
    DEF_I(o.val_batches, 25);
    DEF_I(o.save_every, 100);
    DEF_I(o.max_seq_length, 2048);
    DEF_I(o.seed, 0);
    DEF_I(o.grad_accum, 1);
    DEF_I(o.test_batches, 500);
    DEF_I(o.threads, 0);
    DEF_I(o.warmup, 0);
    DEF_D(o.learning_rate, 1e-4);
    DEF_D(o.warmup_init, 0);
    DEF_D(o.lr_end, 0);
    DEF_D(o.dropout, 0);
    if (!o.adapter_path) o.adapter_path = "adapters";
    if (!o.fine_tune_type) o.fine_tune_type = "lora";
    if (!o.adapter_format) o.adapter_format = "mlx";
    if (!o.optimizer) o.optimizer = "adam";

    const char *bad = NULL;
    char badbuf[256];
    if (!o.model) bad = "--model DIR is required";
    else if (!o.train && !o.test) bad = "nothing to do: pass --train and/or --test";
    else if (!o.data) bad = "--data DIR is required";
    else if (strcmp(o.fine_tune_type, "lora") && strcmp(o.fine_tune_type, "full")) {
        snprintf(badbuf, sizeof badbuf, "--fine-tune-type %s is not supported (use lora or full)", o.fine_tune_type);
        bad = badbuf;
    } else if (!strcmp(o.fine_tune_type, "full") && lora_flags) {
        bad = "--fine-tune-type full trains every weight: --rank, --alpha, --scale, --lora-keys, --dropout and --num-layers apply to LoRA only";
    } else if (!strcmp(o.fine_tune_type, "full") && !strcmp(o.adapter_format, "peft"))
        bad = "--adapter-format peft is a LoRA format; full fine-tuning writes MLX-LM's layout (and a model directory)";
    else if (strcmp(o.adapter_format, "mlx") && strcmp(o.adapter_format, "peft")) bad = "--adapter-format must be mlx or peft";
    else if (!(o.dropout >= 0 && o.dropout < 1)) bad = "--dropout must be in [0, 1)";
    else if (o.num_layers == 0 || o.num_layers < -1) bad = "--num-layers must be -1 (all) or >= 1";
    else if (o.batch_size < 1 || o.iters < 1 || o.steps_per_report < 1 || o.steps_per_eval < 1 || o.save_every < 1 ||
             o.grad_accum < 1 || o.max_seq_length < 2)
        bad = "--batch-size, --iters, --steps-per-report, --steps-per-eval, --save-every, --grad-accumulation-steps must be >= 1";
    else if (o.val_batches == 0 || o.val_batches < -1 || o.test_batches == 0 || o.test_batches < -1)
        bad = "--val-batches and --test-batches must be -1 (all) or >= 1";
    else if (o.learning_rate <= 0 || !isfinite(o.learning_rate)) bad = "--learning-rate must be > 0";
    else if (o.rank != LORA_UNSET_I && o.rank < 1) bad = "--rank must be >= 1";
    else if (!o.train && o.dump_grads) bad = "--dump-grads needs --train";
    if (!bad && !strcmp(o.fine_tune_type, "full") &&
        (o.rank != LORA_UNSET_I || !isnan(o.alpha) || !isnan(o.scale) || o.lora_keys || o.dropout > 0 || num_layers_set))
        fprintf(stderr, "anvil lora: warning: %s: lora_parameters and num_layers are ignored with fine_tune_type full "
                        "(every weight of every layer is trained)\n", o.config);
    if (bad) {
        av_cli_error(CMD, "%s", bad);
        rc = 2;
        goto done;
    }
    if (lora_dp_check(&dp, CMD, o.device, o.batch_size, o.dump_grads != NULL)) {
        rc = 2;
        goto done;
    }
    av_optim_params optim;
    if (build_optimizer(&o, &optim)) {
        rc = 2;
        goto done;
    }
    /* learning-rate schedule: the config's lr_schedule, else the flags */
    av_lr_schedule sched;
    int opt_steps = o.iters / o.grad_accum;
    if (o.sched_from_config && !o.lr_schedule) sched = o.sched;
    else {
        memset(&sched, 0, sizeof sched);
        if (av_lr_kind_parse(o.lr_schedule ? o.lr_schedule : "constant", &sched.kind) != AV_OK) {
            rc = av_cli_fail(CMD) + 1;
            goto done;
        }
        int ds = o.decay_steps != LORA_UNSET_I ? o.decay_steps : opt_steps - o.warmup > 1 ? opt_steps - o.warmup : 1;
        sched.args[0] = o.learning_rate;
        sched.nargs = 1;
        if (sched.kind == AV_LR_COSINE) sched.args[1] = ds, sched.args[2] = o.lr_end, sched.nargs = 3;
        else if (sched.kind == AV_LR_LINEAR) sched.args[1] = o.lr_end, sched.args[2] = ds, sched.nargs = 3;
        else if (sched.kind != AV_LR_CONSTANT) {
            av_cli_error(CMD, "--lr-schedule %s needs its arguments in a config file (lr_schedule: {name, arguments})", o.lr_schedule);
            rc = 2;
            goto done;
        }
        sched.warmup = o.warmup;
        sched.warmup_init = o.warmup_init;
        if (av_lr_validate(&sched) != AV_OK) {
            rc = av_cli_fail(CMD) + 1;
            goto done;
        }
    }
    if (!av_dir_exists(o.data)) {
        av_cli_error(CMD, "%s: data directory not found", o.data);
        goto done;
    }
    if (o.resume && !av_file_exists(o.resume) && !av_dir_exists(o.resume)) {
        av_cli_error(CMD, "%s: adapter to resume from not found", o.resume);
        goto done;
    }

    av_attention_kind attn;
    if (av_cli_attention(CMD, o.attention, &attn)) { rc = 2; goto done; }
    /* tokenizer and data first: a bad line is reported before the model is loaded */
    av_threads_set(o.threads);
    printf("Loading pretrained model\n");
    fflush(stdout);
    if (av_tokenizer_load(&tok, o.model, 0) != AV_OK) {
        av_cli_fail(CMD);
        goto done;
    }
    tctx.tok = tok;
    if (av_chat_config_load(&tctx.chat, o.model) != AV_OK) {
        av_cli_fail(CMD);
        goto done;
    }
    av_ds_opts dso = {.encode = glue_encode, .render = tctx.chat.template_src ? glue_render : NULL, .ctx = &tctx,
                      .eos_id = av_tokenizer_eos_id(tok), .mask_prompt = o.mask_prompt};
    printf("Loading datasets\n");
    fflush(stdout);
    if (o.train) {
        if (load_split(o.data, "train.jsonl", 1, &dso, o.max_seq_length, &dtrain, &have_train)) goto done;
        if (load_split(o.data, "valid.jsonl", 1, &dso, o.max_seq_length, &dvalid, &have_valid)) goto done;
        if (av_batcher_init(&btrain, &dtrain, o.batch_size, (uint64_t)o.seed) != AV_OK ||
            av_batcher_init(&bvalid, &dvalid, o.batch_size, 0) != AV_OK) {
            av_cli_fail(CMD);
            goto done;
        }
    }
    if (o.test) {
        if (load_split(o.data, "test.jsonl", 1, &dso, o.max_seq_length, &dtest, &have_test)) goto done;
        if (dp.world > 1 && o.test_batches > 0) o.test_batches *= dp.world; /* rank 0 tests alone, in batches of its rows */
        if (av_batcher_init(&btest, &dtest, lora_dp_rows(&dp, o.batch_size), 0) != AV_OK) {
            av_cli_fail(CMD);
            goto done;
        }
    }

    const av_backend *be;
    if (lora_dp_bind(&dp) != AV_OK || av_backend_select(o.device, &be) != AV_OK || av_model_load(&m, o.model, be) != AV_OK) {
        av_cli_fail(CMD);
        goto done;
    }
    av_model_set_attention(m, attn); /* the training context reads it */

    /* adapters: resumed (config from the adapter), trained afresh, or (test only) loaded */
    run_ctx rctx = {.s = {.m = m, .adapter_dir = o.adapter_path, .peft = !strcmp(o.adapter_format, "peft"),
                          .full = !strcmp(o.fine_tune_type, "full")},
                    .tty = isatty(1)};
    av_lora_spec_default(&rctx.s.spec);
    const char *load_from = o.resume;
    char full_weights[4200] = "";
    if (rctx.s.full) { /* weights to start from: --resume-adapter-file, or (test only) --adapter-path if it holds some */
        const char *from = o.resume ? o.resume : !o.train ? o.adapter_path : NULL;
        if (from && av_dir_exists(from)) av_path_join(full_weights, sizeof full_weights, from, "adapters.safetensors");
        else if (from) snprintf(full_weights, sizeof full_weights, "%s", from);
        if (full_weights[0] && !o.resume && !av_file_exists(full_weights)) {
            printf("No full fine-tuning weights at %s: testing the model itself\n", full_weights);
            full_weights[0] = 0;
        }
        load_from = NULL;
    } else if (!o.train && !load_from) {
        av_adapter_format f;
        if (av_adapter_detect(o.adapter_path, &f) == AV_OK) load_from = o.adapter_path;
        else if (strcmp(o.adapter_path, "adapters")) {
            av_cli_fail(CMD);
            goto done;
        }
    }
    if (load_from) {
        if (av_adapter_load(m, load_from, &rctx.s.spec) != AV_OK) {
            av_cli_fail(CMD);
            goto done;
        }
    } else if (o.train && !rctx.s.full) {
        av_lora_spec *s = &rctx.s.spec;
        if (o.lora_keys && av_lora_parse_keys(o.lora_keys, &s->keys) != AV_OK) {
            av_cli_fail(CMD);
            goto done;
        }
        if (o.num_layers > av_model_config(m)->n_layers) {
            if (num_layers_set) {
                av_cli_error(CMD, "--num-layers %d: the model has only %d layers", o.num_layers, av_model_config(m)->n_layers);
                goto done;
            }
            o.num_layers = av_model_config(m)->n_layers;
        }
        s->num_layers = o.num_layers;
        if (o.rank != LORA_UNSET_I) s->rank = o.rank;
        if (!isnan(o.alpha)) s->alpha = (float)o.alpha;
        s->scale = !isnan(o.scale) ? (float)o.scale : s->alpha / (float)s->rank;
        s->dropout = (float)o.dropout;
        if (av_lora_attach(m, s, (uint64_t)o.seed) != AV_OK) {
            av_cli_fail(CMD);
            goto done;
        }
    }
    if (!rctx.s.full && dropout_set) rctx.s.spec.dropout = (float)o.dropout; /* else a resumed adapter's own dropout */
    long long total = av_config_param_count(av_model_config(m)), trainable = rctx.s.full ? total : av_lora_param_count(m);
    printf("Trainable parameters: %.3f%% (%.3fM/%.3fM)\n", 100.0 * (double)trainable / (double)total, (double)trainable / 1e6,
           (double)total / 1e6);
    fflush(stdout);

    int max_len = 2;
    if (have_train && av_dataset_max_len(&dtrain) > max_len) max_len = av_dataset_max_len(&dtrain);
    if (have_valid && av_dataset_max_len(&dvalid) > max_len) max_len = av_dataset_max_len(&dvalid);
    if (have_test && av_dataset_max_len(&dtest) > max_len) max_len = av_dataset_max_len(&dtest);
    int rows = lora_dp_rows(&dp, o.batch_size); /* each worker holds its share of the global batch */
    if ((rctx.s.full ? av_train_ctx_new_full(&tc, m, rows, max_len - 1, o.grad_checkpoint)
                   : av_train_ctx_new(&tc, m, rows, max_len - 1, o.grad_checkpoint)) != AV_OK ||
        (!rctx.s.full && o.train && rctx.s.spec.dropout > 0 && av_train_set_dropout(tc, rctx.s.spec.dropout, (uint64_t)o.seed) != AV_OK) ||
        (full_weights[0] && av_train_load_weights(tc, full_weights) != AV_OK)) {
        av_cli_fail(CMD);
        goto done;
    }
    rctx.s.tc = tc;
    if (rctx.s.full && o.train && !o.dump_grads && !av_dir_exists(o.adapter_path) && mkdir(o.adapter_path, 0755) != 0) {
        av_cli_error(CMD, "%s: cannot create directory: %s", o.adapter_path, strerror(errno));
        goto done;
    }

    if (o.train) {
        av_trainer_opts to;
        av_trainer_opts_default(&to);
        to.iters = o.iters;
        to.grad_accum = o.grad_accum;
        to.steps_per_report = o.steps_per_report;
        to.steps_per_eval = o.steps_per_eval;
        to.val_batches = o.val_batches;
        to.save_every = o.save_every;
        to.seed = (uint64_t)o.seed;
        to.lr = sched;
        to.optim = optim;
        to.dump_grads = o.dump_grads;
        to.skip_nonfinite = o.skip_nonfinite;
        to.stop = &g_stop_flag;
        to.save = save_adapter;
        to.on_event = on_event;
        to.ctx = &rctx;
        char dsp[4300];
        if (o.resume) av_lora_checkpoint_state_path(o.resume, dsp, sizeof dsp);
        lora_dp_setup dps = {.model_dir = o.model, .be = be, .spec = rctx.s.spec, .full = rctx.s.full, .rows = rows, .max_len = max_len,
                             .grad_checkpoint = o.grad_checkpoint, .threads = av_threads_get() / dp.n > 1 ? av_threads_get() / dp.n : 1,
                             .dropout = rctx.s.full ? 0 : rctx.s.spec.dropout, .seed = (uint64_t)o.seed, .dtrain = &dtrain, .dvalid = &dvalid,
                             .batch_size = o.batch_size, .tc0 = tc, .state_path = o.resume && av_file_exists(dsp) ? dsp : NULL, .to = to};
        if (lora_dp_begin(&dp, &dps, &to.comm) != AV_OK || av_trainer_new(&tr, m, tc, &to) != AV_OK) {
            av_cli_fail(CMD);
            goto done;
        }
        if (o.resume) {
            char sp[4300];
            av_lora_checkpoint_state_path(o.resume, sp, sizeof sp);
            if (av_file_exists(sp)) {
                if (av_trainer_load_state(tr, sp) != AV_OK) {
                    av_cli_fail(CMD);
                    goto done;
                }
                printf("Resuming from iteration %d with the optimizer state in %s\n", av_trainer_iter(tr), sp);
            } else printf("Resuming from the adapter weights in %s (no training state beside it: starting at iteration 1)\n", o.resume);
        }
        if (!o.dump_grads && !rctx.s.full && av_adapter_save_config(m, &rctx.s.spec, o.adapter_path, rctx.s.peft) != AV_OK) {
            av_cli_fail(CMD);
            goto done;
        }
        printf("Starting training..., iters: %d\n", o.iters);
        fflush(stdout);
        struct sigaction sa = {0};
        sa.sa_handler = on_sigint;
        sigaction(SIGINT, &sa, NULL);
        if (o.profile) av_train_set_profile(tc, 1);
        av_status st = dp.world > 1 ? lora_dp_run(&dp, tr, &btrain, &bvalid) : av_trainer_run(tr, &btrain, &bvalid);
        signal(SIGINT, SIG_DFL);
        if (o.profile) print_profile(tc);
        clear_bar(&rctx);
        if (st == AV_ERR_INTERRUPTED) {
            av_cli_fail(CMD);
            rc = 130;
            goto done;
        }
        if (st != AV_OK) {
            av_cli_fail(CMD);
            goto done;
        }
        if (av_trainer_dumped(tr)) {
            printf("Wrote the first batch's gradients (%d tensors) to %s.\n", av_train_nparams(tc), o.dump_grads);
            rc = 0;
            goto done;
        }
    }
    if (o.test) {
        printf("Testing\n");
        fflush(stdout);
        double loss;
        if (av_evaluate(tc, &btest, o.test_batches, &loss, NULL) != AV_OK) {
            av_cli_fail(CMD);
            goto done;
        }
        printf("Test loss %.3f, Test ppl %.3f.\n", loss, exp(loss));
    }
    rc = 0;
done:
    lora_dp_end(&dp); /* the workers are gone before rank 0's model and context */
    av_trainer_free(tr);
    if (tc) av_train_ctx_free(tc);
    av_batcher_free(&btrain);
    av_batcher_free(&bvalid);
    av_batcher_free(&btest);
    av_dataset_free(&dtrain);
    av_dataset_free(&dvalid);
    av_dataset_free(&dtest);
    if (m) {
        av_lora_detach(m);
        av_model_free(m);
    }
    if (tok) av_tokenizer_free(tok);
    av_chat_config_free(&tctx.chat);
    cJSON_Delete(cfg);
    return rc;
}
