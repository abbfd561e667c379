/* The family registry (src/models/family.h): every family is listed once under names
 * that find it again; every registered family parses the config of at least one golden
 * fixture and binds its weights (resident and lazy), with the lm_config switches its
 * descriptor promises; "not supported" errors of config parsing and convert name every
 * registered family; synth presets belong to registered families and plan; mlx-lm's
 * 8-bit router rule. */
#include "harness.h"

#include "common/error.h"
#include "convert/convert.h"
#include "experts/store.h"
#include "models/config.h"
#include "models/family.h"
#include "models/model.h"
#include "platform/fs.h"
#include "synth/synth.h"

#include <dirent.h>
#include <unistd.h>

#define GOLDEN LAZYMOE_SOURCE_DIR "/tests/fixtures/golden"

static int n_families(void) {
    int n = 0;
    while (lm_families[n]) n++;
    return n;
}

/* Number of times `name` occurs in the comma-separated list. */
static int count_in_list(const char *list, const char *name) {
    int n = 0;
    size_t len = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *end = strchr(p, ',');
        size_t item = end ? (size_t)(end - p) : strlen(p);
        if (item == len && strncmp(p, name, len) == 0) n++;
        if (!end) break;
        p = end + 1;
        while (*p == ' ') p++;
    }
    return n;
}

static void test_registry_names(void) {
    int n = n_families();
    CHECK(n >= 4);
    const char *list = lm_family_names();
    for (int i = 0; i < n; i++) {
        const lm_family *f = lm_families[i];
        CHECKF(f->model_type && f->model_type[0], "family %d has no model_type", i);
        if (!f->model_type) continue;
        CHECKF(lm_family_find(f->model_type) == f, "%s does not find itself", f->model_type);
        CHECKF(count_in_list(list, f->model_type) == 1, "%s is listed %d times in \"%s\"", f->model_type,
               count_in_list(list, f->model_type), list);
        for (int a = 0; a < 4 && f->aliases[a]; a++)
            CHECKF(lm_family_find(f->aliases[a]) == f, "alias %s of %s finds another family", f->aliases[a],
                   f->model_type);
        if (f->gguf_arch)
            CHECKF(lm_family_find_gguf(f->gguf_arch) == f, "GGUF name %s of %s finds another family",
                   f->gguf_arch, f->model_type);
        CHECKF(f->hf_architecture && strstr(f->hf_architecture, "ForCausalLM"), "%s: hf_architecture",
               f->model_type);
        /* Tensor names weight binding needs. */
        const lm_tensor_names *tn = f->names;
        CHECKF(tn && tn->moe_blocks[0] && tn->router && tn->expert_gate[0] && tn->expert_up[0] &&
                   tn->expert_down[0] && tn->shared_expert, /* shared_expert_gate: NULL when ungated (glm4_moe) */
               "%s: a tensor name is missing", f->model_type);
        for (int j = 0; j < i; j++) {
            const lm_family *g = lm_families[j];
            CHECKF(g != f, "%s is registered twice", f->model_type);
            CHECKF(strcmp(g->model_type, f->model_type) != 0, "model_type %s is registered twice", f->model_type);
            CHECKF(!g->gguf_arch || !f->gguf_arch || strcmp(g->gguf_arch, f->gguf_arch) != 0,
                   "GGUF name %s is registered twice", f->gguf_arch);
        }
    }
    /* The listing holds the registered names and nothing else. */
    int items = 1;
    for (const char *p = list; *p; p++) items += *p == ',';
    CHECK_EQ_INT(items, n);
    CHECK(lm_family_find("llama4") == NULL);
    CHECK(lm_family_find(NULL) == NULL);
    CHECK(lm_family_find_gguf("not-an-architecture") == NULL);
    CHECK(lm_family_find("QWEN3_MOE") == NULL); /* exact names only */
}

/* Checks what a family promises about the config and the bound weights. */
static void check_bound(const lm_family *f, const lm_weights *w, const char *fixture) {
    const lm_config *c = &w->cfg;
    CHECKF(c->family == f, "%s: parsed as %s", fixture, c->family ? c->family->model_type : "nothing");
    /* glm4_moe's q/k norm is optional (use_qk_norm): per head when on */
    CHECKF(c->qk_norm == f->qk_norm || (f == &lm_family_glm4_moe && c->qk_norm == LM_QK_NORM_PER_HEAD),
           "%s: qk_norm", fixture);
    CHECKF(c->attn_output_gate == f->attn_output_gate, "%s: attn_output_gate", fixture);
    CHECKF(c->zero_centred_norms == f->zero_centred_norms, "%s: zero_centred_norms", fixture);
    if (f->router_renorm == LM_RENORM_ALWAYS) CHECKF(c->norm_topk_prob == 1, "%s: renormalised router", fixture);
    if (f->experts_use_intermediate_size)
        CHECKF(c->moe_intermediate_size == c->intermediate_size, "%s: expert width", fixture);
    if (f->window == LM_WINDOW_IGNORED) CHECKF(c->sliding_window == 0, "%s: sliding window", fixture);
    if (!f->parse_config) CHECKF(c->layer_linear == NULL, "%s: linear attention layers", fixture);
    int moe_layers = 0;
    for (int l = 0; l < c->n_layers; l++) {
        const lm_layer *ly = &w->layers[l];
        if (!ly->is_linear)
            CHECKF((ly->q_norm != NULL) == (c->qk_norm != LM_QK_NORM_NONE), "%s: layer %d q_norm", fixture, l);
        if (ly->is_moe) {
            moe_layers++;
            CHECKF(ly->router.rows == c->n_experts && ly->src.nparts > 0, "%s: layer %d experts", fixture, l);
            CHECKF((ly->router_correction != NULL) == c->router_sigmoid, "%s: layer %d correction bias", fixture, l);
            CHECKF((ly->shared_gate.rows > 0) == (c->shared_expert_intermediate_size > 0) &&
                       (ly->shared_expert_gate.rows > 0) == (c->shared_expert_intermediate_size > 0 && c->shared_expert_gated),
                   "%s: layer %d shared expert", fixture, l);
        }
    }
    CHECKF(moe_layers > 0, "%s: no MoE layer bound", fixture);
}

/* Every registered family parses and binds at least one golden fixture (gpt_oss: its
 * own tiny checkpoints, tests/fixtures/gpt_oss, until transformers goldens are made). */
static void test_every_family_binds_a_fixture(void) {
    int n = n_families();
    int *bound = calloc((size_t)n, sizeof *bound);
    static const char *const roots[] = {GOLDEN, LAZYMOE_SOURCE_DIR "/tests/fixtures/gpt_oss"};
    char err[LM_ERR_LEN], dir[1024];
    for (size_t ri = 0; ri < sizeof roots / sizeof roots[0]; ri++) {
    DIR *d = opendir(roots[ri]);
    CHECK(d != NULL && bound != NULL);
    struct dirent *e;
    while (d && bound && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        snprintf(dir, sizeof dir, "%s/%s", roots[ri], e->d_name);
        lm_config c;
        if (lm_config_load(&c, dir, err) != 0) {
            CHECKF(0, "%s: %s", e->d_name, err);
            continue;
        }
        int idx = -1;
        for (int i = 0; i < n; i++)
            if (lm_families[i] == c.family) idx = i;
        lm_config_free(&c);
        CHECKF(idx >= 0, "%s: family not in the registry", e->d_name);
        if (idx < 0) continue;
        for (int lazy = 0; lazy < 2; lazy++) {
            lm_weights w;
            if (lm_weights_load(&w, dir, NULL, NULL, err) != 0) {
                CHECKF(0, "%s: %s", e->d_name, err);
                continue;
            }
            lm_expert_store *st = NULL;
            if (!lazy && (lm_store_open(&st, &w, 0, NULL, err) != 0 || lm_store_load_resident(st, NULL, NULL, err) != 0))
                CHECKF(0, "%s: resident experts: %s", e->d_name, err);
            lm_store_close(st);
            check_bound(lm_families[idx], &w, e->d_name);
            lm_weights_free(&w);
        }
        bound[idx]++;
    }
    if (d) closedir(d);
    }
    for (int i = 0; bound && i < n; i++)
        CHECKF(bound[i] > 0, "family %s has no golden fixture (tests/fixtures/golden)", lm_families[i]->model_type);
    free(bound);
}

static void test_unsupported_names_every_family(void) {
    char err[LM_ERR_LEN];
    lm_config c;
    CHECK(lm_config_parse(&c, "{\"model_type\": \"llama4\", \"vocab_size\": 8}", NULL, err) == -1);
    CHECK_STR_CONTAINS(err, "model_type 'llama4' is not supported");
    for (int i = 0; lm_families[i]; i++) CHECK_STR_CONTAINS(err, lm_families[i]->model_type);
    CHECK(lm_config_parse(&c, "{\"vocab_size\": 8}", NULL, err) == -1);
    CHECK_STR_CONTAINS(err, "no model_type");
    for (int i = 0; lm_families[i]; i++) CHECK_STR_CONTAINS(err, lm_families[i]->model_type);

    /* convert refuses it with the same list. */
    char root[256], in[300], out[300], p[400];
    snprintf(root, sizeof root, "/tmp/lazymoe_test_families.%ld", (long)getpid());
    lm_remove_tree(root, NULL);
    CHECK(lm_mkdir(root, NULL) == 0);
    snprintf(in, sizeof in, "%s/in", root);
    snprintf(out, sizeof out, "%s/out", root);
    CHECK(lm_mkdir(in, NULL) == 0);
    snprintf(p, sizeof p, "%s/config.json", in);
    FILE *f = fopen(p, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("{\"model_type\": \"gpt2\", \"num_hidden_layers\": 1}", f);
        fclose(f);
    }
    lm_convert_options o;
    lm_convert_options_init(&o);
    o.quiet = 1;
    CHECK(lm_convert(in, out, &o, err) == -1);
    CHECK_STR_CONTAINS(err, "unsupported model_type \"gpt2\"");
    for (int i = 0; lm_families[i]; i++) CHECK_STR_CONTAINS(err, lm_families[i]->model_type);
    CHECK(strcmp(lm_convert_supported_types(), lm_family_names()) == 0);
    lm_remove_tree(root, NULL);
}

/* A family that does not allow partial RoPE refuses it; one that does takes it. */
static void test_family_keys(void) {
    char err[LM_ERR_LEN];
    lm_config c;
    const char *fmt = "{\"model_type\": \"%s\", \"vocab_size\": 16, \"hidden_size\": 32, \"num_hidden_layers\": 2,"
                      " \"num_attention_heads\": 2, \"head_dim\": 16, \"moe_intermediate_size\": 8,"
                      " \"intermediate_size\": 8, \"num_experts\": 4, \"num_experts_per_tok\": 2,"
                      " \"partial_rotary_factor\": 0.5, \"linear_num_key_heads\": 1,"
                      " \"linear_num_value_heads\": 2, \"linear_key_head_dim\": 8,"
                      " \"linear_value_head_dim\": 8, \"linear_conv_kernel_dim\": 4}";
    char json[1024];
    for (int i = 0; lm_families[i]; i++) {
        const lm_family *f = lm_families[i];
        snprintf(json, sizeof json, fmt, f->model_type);
        int rc = lm_config_parse(&c, json, NULL, err);
        if (f->partial_rope) {
            CHECKF(rc == 0, "%s: %s", f->model_type, err);
            if (rc == 0) {
                CHECK_EQ_INT(c.rope_dim, 8);
                CHECK(c.family == f);
                lm_config_free(&c);
            }
        } else {
            CHECKF(rc == -1 && strstr(err, "partial_rotary_factor 0.5 is not supported"), "%s: %s", f->model_type,
                   rc ? err : "accepted");
        }
    }
}

/* issue 16 config keys, read the way transformers 5.17 reads them. */
static void test_new_family_configs(void) {
    char err[LM_ERR_LEN];
    lm_config c;
    /* glm4_moe: groups, scaling, shared experts without a gate, dense first layers, q/k
     * norm on request, MTP layers counted; norm_topk_prob defaults to true */
    const char *glm = "{\"model_type\": \"glm4_moe\", \"vocab_size\": 64, \"hidden_size\": 32,"
                      " \"num_hidden_layers\": 4, \"num_attention_heads\": 4, \"num_key_value_heads\": 2,"
                      " \"head_dim\": 16, \"intermediate_size\": 48, \"moe_intermediate_size\": 8,"
                      " \"n_routed_experts\": 16, \"num_experts_per_tok\": 4, \"n_group\": 4, \"topk_group\": 2,"
                      " \"n_shared_experts\": 2, \"routed_scaling_factor\": 2.5, \"first_k_dense_replace\": 2,"
                      " \"use_qk_norm\": true, \"num_nextn_predict_layers\": 1, \"partial_rotary_factor\": 0.5,"
                      " \"attention_bias\": true}";
    CHECKF(lm_config_parse(&c, glm, NULL, err) == 0, "%s", err);
    CHECK(c.router_sigmoid && c.n_group == 4 && c.topk_group == 2 && c.routed_scaling_factor == 2.5f);
    CHECK(c.norm_topk_prob == 1 && c.shared_expert_intermediate_size == 16 && !c.shared_expert_gated);
    CHECK(c.mlp_only[0] && c.mlp_only[1] && !c.mlp_only[2] && !c.mlp_only[3]);
    CHECK(c.qk_norm == LM_QK_NORM_PER_HEAD && c.n_nextn_layers == 1 && c.attention_bias && c.rope_dim == 8);
    lm_config_free(&c);
    char bad[2048];
    /* one kept group of 4 experts cannot give top-8 */
    CHECK(lm_config_parse(&c, "{\"model_type\": \"glm4_moe\", \"vocab_size\": 64, \"hidden_size\": 32,"
                              " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"moe_intermediate_size\": 8,"
                              " \"n_routed_experts\": 16, \"num_experts_per_tok\": 8, \"n_group\": 4,"
                              " \"topk_group\": 1}", NULL, err) == -1);
    CHECK_STR_CONTAINS(err, "cannot give 8 experts");
    const char *mm = "{\"model_type\": \"minimax_m2\", \"vocab_size\": 64, \"hidden_size\": 32,"
                     " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2,"
                     " \"head_dim\": 16, \"intermediate_size\": 8, \"num_local_experts\": 8,"
                     " \"num_experts_per_tok\": 2, \"rotary_dim\": 8%s}";
    snprintf(bad, sizeof bad, mm, "");
    CHECKF(lm_config_parse(&c, bad, NULL, err) == 0, "%s", err);
    CHECK(c.rope_dim == 8 && c.router_sigmoid && c.norm_topk_prob == 1 && c.qk_norm == LM_QK_NORM_FULL);
    CHECK(c.moe_intermediate_size == 8 && c.n_group == 1);
    lm_config_free(&c);
    snprintf(bad, sizeof bad, mm, ", \"partial_rotary_factor\": 0.5");
    CHECKF(lm_config_parse(&c, bad, NULL, err) == 0, "%s", err);
    lm_config_free(&c);
    snprintf(bad, sizeof bad, mm, ", \"partial_rotary_factor\": 0.25");
    CHECK(lm_config_parse(&c, bad, NULL, err) == -1);
    CHECK_STR_CONTAINS(err, "rotary_dim 8 disagrees");
    snprintf(bad, sizeof bad, mm, ", \"scoring_func\": \"softmax\"");
    CHECK(lm_config_parse(&c, bad, NULL, err) == -1);
    CHECK_STR_CONTAINS(err, "scoring_func 'softmax'");
    /* qwen3_5_moe: the wrapper's text_config, layer_types, tie_word_embeddings at the top,
     * an eos id past this tiny vocabulary (a warning, not a refusal) */
    const char *q35 = "{\"model_type\": \"qwen3_5_moe\", \"tie_word_embeddings\": true, \"text_config\": {"
                      "\"model_type\": \"qwen3_5_moe_text\", \"vocab_size\": 64, \"hidden_size\": 32,"
                      " \"num_hidden_layers\": 3, \"num_attention_heads\": 2, \"num_key_value_heads\": 1,"
                      " \"head_dim\": 16, \"moe_intermediate_size\": 8, \"shared_expert_intermediate_size\": 8,"
                      " \"num_experts\": 4, \"num_experts_per_tok\": 2, \"linear_num_key_heads\": 1,"
                      " \"linear_num_value_heads\": 2, \"linear_key_head_dim\": 8, \"linear_value_head_dim\": 8,"
                      " \"linear_conv_kernel_dim\": 4, \"layer_types\": [\"full_attention\", \"linear_attention\","
                      " \"full_attention\"], \"eos_token_id\": 248046, \"bos_token_id\": 99999,"
                      " \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 1e7,"
                      " \"partial_rotary_factor\": 0.25, \"mrope_section\": [1, 1, 0], \"mrope_interleaved\": true}}}";
    CHECKF(lm_config_parse(&c, q35, "{\"eos_token_id\": [248046, 63]}", err) == 0, "%s", err);
    CHECK(c.family == &lm_family_qwen3_5_moe && c.lin_separate_proj && c.tie_word_embeddings);
    CHECK(!c.layer_linear[0] && c.layer_linear[1] && !c.layer_linear[2] && c.rope_dim == 4);
    CHECK(c.norm_topk_prob == 1 && c.shared_expert_gated && c.bos_id == -1 && c.n_eos == 1 && c.eos_ids[0] == 63);
    lm_config_free(&c);
    CHECK(lm_family_find("qwen3_5_moe_text") == &lm_family_qwen3_5_moe);
    /* ids that do not fit 32 bits are still refused */
    CHECK(lm_config_parse(&c, q35, "{\"eos_token_id\": 1099511627776}", err) == -1);
    CHECK_STR_CONTAINS(err, "eos_token_id 1099511627776 is outside the vocabulary");
}

static void test_synth_presets(void) {
    const char *list = lm_synth_presets();
    CHECK(strcmp(list, lm_family_preset_names()) == 0);
    int presets = 0;
    char err[LM_ERR_LEN];
    for (int i = 0; lm_families[i]; i++) {
        const lm_family *f = lm_families[i];
        for (const lm_synth_preset *p = f->synth_presets; p && p->name; p++) {
            presets++;
            const lm_family *owner = NULL;
            CHECKF(lm_family_find_preset(p->name, &owner) == p && owner == f, "preset %s", p->name);
            CHECKF(count_in_list(list, p->name) == 1, "preset %s listed %d times", p->name, count_in_list(list, p->name));
            CHECKF(f->synth_config != NULL, "%s has presets but no synth_config", f->model_type);
            lm_synth_options o;
            lm_synth_options_init(&o);
            o.preset = p->name;
            o.layers = 1;
            lm_synth_plan plan;
            CHECKF(lm_synth_plan_model(&o, &plan, err) == 0, "%s: %s", p->name, err);
            CHECK(strcmp(plan.model_type, f->model_type) == 0);
            CHECK_EQ_INT(plan.experts, p->experts);
        }
    }
    CHECK(presets >= 4);
    int items = 1;
    for (const char *q = list; *q; q++) items += *q == ',';
    CHECK_EQ_INT(items, presets);
    CHECK(lm_family_find_preset("no-such-preset", NULL) == NULL);
}

/* mlx-lm quantizes qwen routers (and qwen3_next's shared_expert_gate) at 8 bits, and
 * nothing of mixtral or olmoe. */
static void test_router_8bit_rule(void) {
    CHECK(lm_family_router_8bit(&lm_family_qwen3_moe, "model.layers.3.mlp.gate"));
    CHECK(!lm_family_router_8bit(&lm_family_qwen3_moe, "model.layers.3.mlp.switch_mlp.gate_proj"));
    CHECK(!lm_family_router_8bit(&lm_family_qwen3_moe, "model.layers.3.mlp.shared_expert_gate"));
    CHECK(lm_family_router_8bit(&lm_family_qwen3_next, "model.layers.3.mlp.gate"));
    CHECK(lm_family_router_8bit(&lm_family_qwen3_next, "model.layers.3.mlp.shared_expert_gate"));
    CHECK(!lm_family_router_8bit(&lm_family_qwen3_next, "model.layers.3.mlp.shared_expert.gate_proj"));
    CHECK(!lm_family_router_8bit(&lm_family_mixtral, "model.layers.3.block_sparse_moe.gate"));
    CHECK(!lm_family_router_8bit(&lm_family_olmoe, "model.layers.3.mlp.gate"));
    CHECK(!lm_family_router_8bit(&lm_family_qwen3_moe, "lm_head"));
}

int main(void) {
    TEST_CASE("families_registry_names", test_registry_names);
    TEST_CASE("families_every_family_binds_a_fixture", test_every_family_binds_a_fixture);
    TEST_CASE("families_new_family_configs", test_new_family_configs);
    TEST_CASE("families_unsupported_names_every_family", test_unsupported_names_every_family);
    TEST_CASE("families_family_keys", test_family_keys);
    TEST_CASE("families_synth_presets", test_synth_presets);
    TEST_CASE("families_router_8bit_rule", test_router_8bit_rule);
    TEST_EXIT();
}
