/* `anvil lora`'s adapter and checkpoint files: names per layout (MLX-LM files, PEFT directories,
 * full fine-tuning weights) and the state file to resume from. */
#include "lora_checkpoint.h"
#include <stdio.h>
#include "anvil.h"

av_status av_lora_checkpoint_save(const lora_save_ctx *r, const char *tag, char *path, size_t cap) {
    char dir[4200];
    if (r->full) { /* MLX-LM layout: all weights in adapters.safetensors (+ a loadable model directory) */
        if (!tag) {
            AV_TRY(av_train_save_model_dir(r->tc, r->adapter_dir));
            av_path_join(path, cap, r->adapter_dir, "adapters.safetensors");
            return AV_OK;
        }
        char name[64];
        snprintf(name, sizeof name, "%s_adapters.safetensors", tag);
        av_path_join(path, cap, r->adapter_dir, name);
        return av_train_save_weights(r->tc, path);
    }
    if (!tag) {
        AV_TRY(av_adapter_save(r->m, &r->spec, r->adapter_dir, r->peft));
        if (r->peft) snprintf(path, cap, "%s", r->adapter_dir);
        else av_path_join(path, cap, r->adapter_dir, "adapters.safetensors");
        return AV_OK;
    }
    if (r->peft) { /* PEFT checkpoints are directories: DIR/best/, DIR/0000100/ */
        av_path_join(dir, sizeof dir, r->adapter_dir, tag);
        AV_TRY(av_adapter_save(r->m, &r->spec, dir, 1));
        snprintf(path, cap, "%s", dir);
        return AV_OK;
    }
    char name[64];
    snprintf(name, sizeof name, "%s_adapters.safetensors", tag);
    av_path_join(path, cap, r->adapter_dir, name);
    return av_adapter_save_weights(r->m, path, 0);
}

char *av_lora_checkpoint_state_path(const char *resume, char *buf, size_t cap) {
    av_adapter_format f = AV_ADAPTER_MLX;
    av_adapter_detect(resume, &f);
    if (av_dir_exists(resume) && f == AV_ADAPTER_MLX) {
        char fp[4200];
        return av_trainer_state_path(av_path_join(fp, sizeof fp, resume, "adapters.safetensors"), buf, cap);
    }
    return av_trainer_state_path(resume, buf, cap);
}
