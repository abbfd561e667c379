/* The registry of model families (family.h). The order is the order of every listing
 * ("supported: ..." messages, synth presets); append new families at the end. */
#include "models/family.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

const lm_family *const lm_families[] = {
    &lm_family_qwen3_moe,
    &lm_family_mixtral,
    &lm_family_olmoe,
    &lm_family_qwen3_next,
    &lm_family_gpt_oss,
    &lm_family_minimax_m2,
    &lm_family_glm4_moe,
    &lm_family_qwen3_5_moe,
    NULL,
};

const lm_tensor_names lm_names_mlp = {
    .moe_blocks = {"mlp"},
    .router = "gate",
    .expert_gate = {"gate_proj"},
    .expert_up = {"up_proj"},
    .expert_down = {"down_proj"},
    .shared_expert = "shared_expert",
    .shared_expert_gate = "shared_expert_gate",
    .correction_bias = {"gate.e_score_correction_bias", "e_score_correction_bias"},
};

const lm_family *lm_family_find(const char *model_type) {
    if (!model_type) return NULL;
    for (int i = 0; lm_families[i]; i++) {
        const lm_family *f = lm_families[i];
        if (strcmp(f->model_type, model_type) == 0) return f;
        for (int a = 0; a < 4 && f->aliases[a]; a++)
            if (strcmp(f->aliases[a], model_type) == 0) return f;
    }
    return NULL;
}

const lm_family *lm_family_find_gguf(const char *arch) {
    if (!arch) return NULL;
    for (int i = 0; lm_families[i]; i++)
        if (lm_families[i]->gguf_arch && strcmp(lm_families[i]->gguf_arch, arch) == 0) return lm_families[i];
    return NULL;
}

const lm_synth_preset *lm_family_find_preset(const char *name, const lm_family **fam) {
    if (!name) return NULL;
    for (int i = 0; lm_families[i]; i++)
        for (const lm_synth_preset *p = lm_families[i]->synth_presets; p && p->name; p++)
            if (strcmp(p->name, name) == 0) {
                if (fam) *fam = lm_families[i];
                return p;
            }
    return NULL;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

int lm_family_router_8bit(const lm_family *f, const char *path) {
    for (int i = 0; i < 3 && f->mlx_router_8bit[i]; i++)
        if (ends_with(path, f->mlx_router_8bit[i])) return 1;
    return 0;
}

/* The two listings are built once from the registry (it never changes at run time). */
static char type_list[512], preset_list[512];
static pthread_once_t lists_once = PTHREAD_ONCE_INIT;

static void append(char *buf, size_t cap, const char *name) {
    size_t n = strlen(buf);
    snprintf(buf + n, cap - n, "%s%s", n ? ", " : "", name);
}

static void build_lists(void) {
    for (int i = 0; lm_families[i]; i++) {
        append(type_list, sizeof type_list, lm_families[i]->model_type);
        for (const lm_synth_preset *p = lm_families[i]->synth_presets; p && p->name; p++)
            append(preset_list, sizeof preset_list, p->name);
    }
}

const char *lm_family_names(void) {
    pthread_once(&lists_once, build_lists);
    return type_list;
}

const char *lm_family_preset_names(void) {
    pthread_once(&lists_once, build_lists);
    return preset_list;
}
