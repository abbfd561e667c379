/* The expert cache in device memory (GPU memory; issue 18 phase 2): the tier above
 * the host tier (resident experts, or the host-RAM cache of cache.h) above the store.
 *
 * Each MoE layer owns `capacity` slots in one backend buffer, each the size of the
 * layer's resident expert slot (lm_expert_source.slot_bytes, parts at part_off), so
 * a slot's view is lm_expert_view(src, slot): the same matrices as the host view,
 * at device addresses, which the backend's operations take as they are. Kernels do
 * not care where an expert's bytes came from, so a run gives the same numbers at
 * every capacity (tests/cuda/test_cuda.c, tests/test_device_cache.c).
 *
 * The contract mirrors cache.h's, per layer and step:
 *   acquire  marks every needed expert as used by this step: status 1 when it is on
 *            the device (its view is ready), 2 when a slot was claimed for it (the
 *            policy's victim among slots this step does not use; the caller fills it
 *            from a host view with lm_device_cache_fill), 0 when every slot is in use
 *            by this step (release, then acquire the rest in another wave).
 *   fill     queues the upload of the expert's parts from the host view into its
 *            slot (the backend's copy queue where it has one: kernels issued before
 *            run beside it, kernels issued after wait for it) and returns the device
 *            view. Call lm_device_cache_fence once before a wave's fills (slots being
 *            overwritten may still be read by kernels of an earlier wave) and
 *            lm_device_cache_wait_uploads before the host views' memory is reused.
 *            A failed fill leaves the slot empty.
 *   release  ends the step's use of the layer's experts; only then may their slots
 *            be taken for others.
 * Eviction uses the host cache's policies (policy.h). Only the compute thread calls it.
 */
#ifndef LAZYMOE_DEVICE_CACHE_H
#define LAZYMOE_DEVICE_CACHE_H

#include "experts/policy.h"
#include "kernels/backend.h"
#include "models/model.h"

#include <stdint.h>

typedef struct lm_device_cache lm_device_cache;

typedef struct {
    uint64_t hits;         /* routed experts found in device memory */
    uint64_t uploads;      /* experts uploaded into a slot */
    uint64_t upload_bytes; /* bytes those uploads moved */
} lm_device_cache_counters;

/* Device bytes of `capacity` slots in every MoE layer of w. */
uint64_t lm_device_cache_bytes_for(const lm_weights *w, int capacity);

/* Slots for `capacity` experts per MoE layer (1 <= capacity <= n_experts), allocated
 * from the backend (whose memory cap, if any, they count against). */
int lm_device_cache_create(lm_device_cache **out, lm_backend *be, const lm_weights *w, int capacity,
                           lm_evict_policy policy, char *err);
void lm_device_cache_free(lm_device_cache *c);

/* A new step (a token, or a prefill chunk): recency is counted in steps. */
void lm_device_cache_begin_step(lm_device_cache *c);
/* Acquires experts need[0..n) (distinct) of layer l; status as above. An expert with
 * elsewhere[i] set (elsewhere NULL: none) claims no slot when it is not in device
 * memory: it gets status 3 (to be computed elsewhere) and evicts nothing. Returns
 * how many were acquired (status 1 or 2). */
int lm_device_cache_acquire(lm_device_cache *c, int l, const int32_t *need, int n, const uint8_t *elsewhere,
                            uint8_t *status);
/* The device view of acquired expert e of layer l (status 1, or 2 once filled). */
lm_expert lm_device_cache_view(const lm_device_cache *c, int l, int e);
/* Before a wave's fills: they wait for the kernels issued so far. */
int lm_device_cache_fence(lm_device_cache *c, char *err);
/* Uploads host view `host` of expert e of layer l (acquired with status 2) into its
 * slot; *dev becomes its device view. resident_slot: host is a resident expert
 * slot (the layer's slot layout, lm_expert_view), uploaded in one copy. */
int lm_device_cache_fill(lm_device_cache *c, int l, int e, const lm_expert *host, int resident_slot, lm_expert *dev,
                         char *err);
/* Blocks until every queued fill has read its host memory. */
int lm_device_cache_wait_uploads(lm_device_cache *c, char *err);
/* The time and bytes of the fills since the last call, once they are complete (the
 * backend's upload_timing; timed here where uploads finish when they return): 1 with
 * them, 0 when there were none or they are still running. Never blocks. */
int lm_device_cache_upload_timing(lm_device_cache *c, double *seconds, uint64_t *bytes);
/* Ends this step's use of layer l's acquired experts. */
void lm_device_cache_release_layer(lm_device_cache *c, int l);

int lm_device_cache_capacity(const lm_device_cache *c);
/* Pins experts[0..n) of layer l that are in device memory now (filled, not being
 * filled): their slots are never evicted, while at least one slot of the layer stays
 * unpinned. Returns how many were pinned. */
int lm_device_cache_pin(lm_device_cache *c, int l, const int32_t *experts, int n);
int lm_device_cache_is_pinned(const lm_device_cache *c, int l, int e);
/* Pinned experts of layer l. */
int lm_device_cache_pinned(const lm_device_cache *c, int l);
/* How many steps needed each expert of layer l ([n_experts]) since the cache was made:
 * every routed expert passes through acquire, hit or miss (the popularity history). */
const float *lm_device_cache_uses(const lm_device_cache *c, int l);
/* Forgets those counts (the loads' own acquires are not routing). */
void lm_device_cache_clear_uses(lm_device_cache *c);
/* Whether expert e of layer l is in device memory now (a hit if acquired). */
int lm_device_cache_holds(const lm_device_cache *c, int l, int e);
/* Experts of layer l in device memory now (l < 0: all layers). */
int lm_device_cache_resident(const lm_device_cache *c, int l);
/* Counters of layer l (l < 0: all layers). */
void lm_device_cache_get_counters(const lm_device_cache *c, int l, lm_device_cache_counters *out);

/* The start of each part of expert view v of a layer with source src, wherever the
 * parts lie (a resident slot or a host-cache slot): found from the view's matrices. */
void lm_expert_parts_of(const lm_expert_source *src, const lm_expert *v, const char *part[LM_EXPERT_MAX_PARTS]);

#endif
