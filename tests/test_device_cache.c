/* The expert cache in device memory (experts/device_cache.h) on the CPU backend,
 * where options.gpu_memory keeps the tier as a second pool in RAM: the engine's
 * tier path (acquire, fence, fill from resident experts or from the host cache,
 * waves, release) runs as on a GPU, uploads being copies. tests/device_tier.h
 * holds the cases; tests/cuda/test_cuda.c runs them on the GPU. */
static const char *tier_backend = "cpu";
#include "device_tier.h"

#include "engine/engine.h"

#define GOLDEN LAZYMOE_SOURCE_DIR "/tests/fixtures/golden/"

static void qwen3_moe(void) { tier_same_at_capacities(GOLDEN "qwen3_moe_f32", 8, 2); }
/* a shared expert and the sigmoid router with groups */
static void glm4_moe(void) { tier_same_at_capacities(GOLDEN "glm4_moe_f32", 16, 4); }
/* gpt-oss: fused gate_up experts with biases, transposed bf16 experts; MXFP4 */
static void gpt_oss(void) { tier_same_at_capacities(LAZYMOE_SOURCE_DIR "/tests/fixtures/gpt_oss/float", 4, 2); }
static void gpt_oss_mxfp4(void) { tier_same_at_capacities(LAZYMOE_SOURCE_DIR "/tests/fixtures/gpt_oss/mxfp4", 4, 2); }
/* MLX 4-bit affine experts in several byte ranges each (scales, biases) */
static void demo_coder(void) { tier_same_at_capacities(LAZYMOE_SOURCE_DIR "/models/demo-coder", 32, 4); }
/* with int8 activations (the CPU's default for quantized weights): the CPU that
 * computes misses takes int8 for the same products as the backend */
static void demo_coder_act8(void) {
    tier_act_bits = 8;
    tier_same_at_capacities(LAZYMOE_SOURCE_DIR "/models/demo-coder", 32, 4);
    tier_act_bits = 32;
}

/* The pinned run of the warm start: its pinned experts are held in device memory at
 * the end, pin per MoE layer, each of them among the layer's most needed ones. */
static void pins_held(const lazymoe_model *m) {
    int pinned = 0;
    for (int l = 0; l < m->w.cfg.n_layers; l++) {
        if (!m->w.layers[l].is_moe) continue;
        for (int e = 0; e < m->w.cfg.n_experts; e++) {
            if (!lm_device_cache_is_pinned(m->dcache, l, e)) continue;
            pinned++;
            CHECKF(lm_device_cache_holds(m->dcache, l, e), "layer %d: pinned expert %d not held", l, e);
        }
    }
    CHECKF(pinned == m->pinned, "%d experts pinned in the tier, %d counted", pinned, m->pinned);
}

/* lm_device_cache_upload_timing where uploads finish when they return (the CPU): every
 * fill since the load counted once (nothing drained them: no auto split), then none. */
static uint64_t timed_bytes;
static void upload_timing_drains(const lazymoe_model *m) {
    double sec = -1;
    uint64_t bytes = 0;
    CHECK(lm_device_cache_upload_timing(m->dcache, &sec, &bytes) == 1);
    CHECKF(sec > 0, "%g seconds", sec);
    timed_bytes = bytes;
    CHECK(lm_device_cache_upload_timing(m->dcache, &sec, &bytes) == 0);
}

static void demo_coder_upload_timing(void) {
    char why[LM_ERR_LEN];
    tier_run all, r = {0};
    int rc = tier_run_model(LAZYMOE_SOURCE_DIR "/models/demo-coder", -1, 4ull << 30, &all, why);
    CHECKF(rc == 0, "%s", why);
    if (rc == 0) {
        tier_inspect = upload_timing_drains;
        uint64_t budget = all.st.gpu_resident_bytes + all.st.gpu_expert_bytes / 32 * 4;
        rc = tier_run_model(LAZYMOE_SOURCE_DIR "/models/demo-coder", -1, budget, &r, why);
        tier_inspect = NULL;
        CHECKF(rc == 0, "%s", why);
        CHECKF(rc != 0 || (timed_bytes > 0 && timed_bytes == r.st.gpu_upload_bytes), "timed %llu bytes, uploaded %llu",
               (unsigned long long)timed_bytes, (unsigned long long)r.st.gpu_upload_bytes);
    }
    free(all.logits), free(r.logits);
}

static void demo_coder_warm_start(void) {
    tier_warm_start(LAZYMOE_SOURCE_DIR "/models/demo-coder", 32, 8, 4, 6, pins_held);
}

int main(void) {
    TEST_CASE("device_tier_qwen3_moe_bit_identical", qwen3_moe);
    TEST_CASE("device_tier_glm4_moe_shared_expert_bit_identical", glm4_moe);
    TEST_CASE("device_tier_gpt_oss_bit_identical", gpt_oss);
    TEST_CASE("device_tier_gpt_oss_mxfp4_bit_identical", gpt_oss_mxfp4);
    TEST_CASE("device_tier_demo_coder_mlx_4bit_bit_identical", demo_coder);
    TEST_CASE("device_tier_demo_coder_act8_bit_identical", demo_coder_act8);
    TEST_CASE("device_tier_demo_coder_warm_start_and_pins", demo_coder_warm_start);
    TEST_CASE("device_tier_upload_timing", demo_coder_upload_timing);
    TEST_EXIT();
}
