/* The expert cache: bounded slots per MoE layer, filled on demand from disk.
 *
 * Each MoE layer owns `capacity` slots of its layer's slot size (lm_cache_slot_bytes).
 * The forward pass, once a layer's routes are known, acquires every expert the
 * step needs: cached ones are hits; for each miss a slot is claimed (the policy
 * picks a victim among slots the step is not using) and its parts are queued to
 * the reader threads at once, so all misses of the layer are in flight together
 * while the hits are computed. lm_cache_wait blocks until one expert is loaded.
 * Every byte comes through the expert store (store.h).
 *
 * The tier contract. The cache is one tier of expert memory over the store (the
 * disk); a further tier (GPU memory) can implement the same calls over this one, or
 * sit on it, filling its slots from the views lm_cache_wait returns:
 *   acquire  reserves a slot for each needed expert of a layer and starts the read
 *            of every miss; it never blocks on I/O (except to let an unneeded
 *            background read finish when that frees the only evictable slot). An
 *            expert it could not place (every slot in use by this step) is reported
 *            as not acquired: the caller releases and acquires the rest in waves.
 *   wait     blocks until one acquired expert is loaded and returns a view of it
 *            that stays valid and unchanged until release; or fails with a message
 *            naming file, layer and expert. A failed expert is never handed out, and
 *            its slot returns to the free state: acquiring it again reads it again.
 *   release  ends the use of every expert of a layer acquired since the last
 *            release; only then may their slots be evicted. It waits for reads of
 *            those slots still in flight (an error path may release before waiting),
 *            so no slot is reused while a reader writes it.
 *   pin      keeps an expert in its slot: the policy never evicts it.
 *   prefetch starts background reads (warm start into empty slots; lookahead, which
 *            may evict, in front of them). They are hints: demand reads go first, a
 *            later acquire turns a needed one into a demand read and cancels an
 *            unneeded unstarted lookahead, and a failed one costs only time (the
 *            step that needs the expert reads it again). Results never depend on them.
 * Thread-safety: only the compute thread calls acquire / wait / release / prefetch /
 * pin; reader threads only fill slots. The views
 * are read concurrently by the compute workers.
 */
#ifndef LAZYMOE_EXPERT_CACHE_H
#define LAZYMOE_EXPERT_CACHE_H

#include "experts/policy.h"
#include "experts/store.h"
#include "models/model.h"

#include <stdint.h>

typedef struct lm_expert_cache lm_expert_cache;

/* Defaults, measured on the development machine's virtual disk (bench/RESULTS.md,
 * "Expert reads: into the slots, queue depth, request size"). The chunk: Qwen3-30B-A3B's
 * 786 KB projections read whole rather than in 512 KiB pieces made decode at a 50%
 * memory cap 8% faster (fewer requests, less of the 2 cores spent in the readers;
 * RESULTS, session 17); longer tensors are still split so one miss fills the queue. */
#define LM_CACHE_IO_THREADS 8
#define LM_CACHE_CHUNK_BYTES (2u << 20)

typedef struct {
    int capacity;       /* slots per MoE layer */
    int io_threads;     /* reader threads (queue depth); 0 = LM_CACHE_IO_THREADS */
    uint64_t chunk_bytes; /* parts longer than this are read in several requests; 0 = LM_CACHE_CHUNK_BYTES */
    lm_evict_policy policy;
    double lookahead_gate; /* lookahead reads of a layer only while at least this share of
                            * them is used (lookahead_gate.h); 0 = always */
    int verbose;
} lm_cache_options;

typedef struct {
    uint64_t hits, misses;
    uint64_t bytes_read;
    uint64_t direct_bytes; /* of them, read with direct I/O (O_DIRECT) */
    double read_seconds; /* summed over reader threads */
    double wait_seconds; /* compute thread blocked on reads */
    uint64_t prefetched;         /* lookahead reads queued */
    uint64_t prefetch_used;      /* of them, routed to before being evicted */
    uint64_t prefetch_cancelled; /* dropped unstarted when their layer did not need them */
} lm_cache_counters;

/* A cache over the experts of store's model (direct or buffered reads: as the
 * store was opened). The store must outlive the cache. */
int lm_cache_create(lm_expert_cache **out, const lm_expert_store *store, const lm_cache_options *opt, char *err);
void lm_cache_free(lm_expert_cache *c);

/* Starts a new step (a token, or a prefill chunk); recency is measured in steps. */
void lm_cache_begin_step(lm_expert_cache *c);

/* Acquires experts need[0..n) (distinct) of layer l. status[i] becomes 1 (hit),
 * 2 (miss, read queued) or 0 (not acquired: every slot is in use by this step;
 * release and acquire again in a later wave). Returns the number acquired. */
int lm_cache_acquire(lm_expert_cache *c, int l, const int32_t *need, int n, uint8_t *status);
/* Waits for acquired expert e of layer l and returns its matrices. A hit on a
 * background read that failed is read again here, on demand. Fails if the demand
 * read failed (the message names file, layer, expert and cause); the expert's slot
 * is then empty again, so a later acquire reads it anew. */
int lm_cache_wait(lm_expert_cache *c, int l, int e, lm_expert *view, char *err);
/* Whether acquired expert e of layer l is in memory now (its read, if any, has
 * landed): lm_cache_wait would not block. Lets a step compute the hits that are
 * ready while lookahead reads of the others are still in flight. */
int lm_cache_ready(const lm_expert_cache *c, int l, int e);
/* Releases every expert of layer l acquired since the last release. */
void lm_cache_release_layer(lm_expert_cache *c, int l);

/* Background reads of experts into EMPTY slots (warm start): queued behind every
 * demand read, never evicting. A later acquire of such an expert is a hit that
 * waits for its read if it is still in flight. Returns how many were queued. */
int lm_cache_prefetch(lm_expert_cache *c, int l, const int32_t *experts, int n);
/* Router lookahead: speculative background reads of experts layer l is predicted to
 * need, queued in front of the warm start. Unlike lm_cache_prefetch they may evict
 * (the policy's victim among slots not in use and not being read). When layer l
 * then acquires, the predicted experts it needs are promoted to demand reads and the
 * ones it does not need are cancelled if no part has been read yet. A speculative
 * expert is an ordinary cache entry: results never depend on the prediction.
 * Returns how many reads were queued. */
int lm_cache_prefetch_lookahead(lm_expert_cache *c, int l, const int32_t *experts, int n);
/* Whether predicting layer l's experts can still help: its recent steps (decayed as the
 * lookahead gate's counts) routed to experts that were not cached before the lookahead,
 * at least LM_LOOKAHEAD_USEFUL_MIN of them. Where every routed expert was cached anyway,
 * the prediction itself (a norm, the router's matmul, a download) is all a step pays:
 * ~6% of decode on a 48-layer model whose routing stays cached (bench/RESULTS.md, issue
 * 20, session 17). A miss brings the layer back at once (LM_LOOKAHEAD_USEFUL_MIN < 1).
 * New layers start above the mark. */
int lm_cache_lookahead_useful(const lm_expert_cache *c, int l);
#define LM_LOOKAHEAD_USEFUL_MIN 0.5f
#define LM_LOOKAHEAD_USEFUL_START 8.0f
/* Pins experts of layer l: each takes an empty slot (none is evicted for it) and is
 * read in the background like a warm start; from then on the policy never evicts it.
 * An expert already cached is pinned where it is. Stops when no empty slot is left.
 * The caller keeps capacity - pinned >= top_k so a step can still acquire what it
 * needs. Returns how many were pinned. */
int lm_cache_pin(lm_expert_cache *c, int l, const int32_t *experts, int n);
/* Pinned experts of layer l; whether expert e of layer l is cached and pinned. */
int lm_cache_pinned(const lm_expert_cache *c, int l);
int lm_cache_is_pinned(const lm_expert_cache *c, int l, int e);
/* Times expert e of layer l was queued for reading (misses, warm start, lookahead,
 * pins) since the cache was created. */
uint32_t lm_cache_expert_reads(const lm_expert_cache *c, int l, int e);
/* How often each expert of layer l was routed to since the cache was created. */
const float *lm_cache_uses(const lm_expert_cache *c, int l);

/* Per-layer counters (l < 0: totals). */
void lm_cache_get_counters(const lm_expert_cache *c, int l, lm_cache_counters *out);
int lm_cache_capacity(const lm_expert_cache *c);
/* Reader threads the cache runs. */
int lm_cache_io_threads(const lm_expert_cache *c);
/* Bytes of one cache slot of layer l (0 for a dense layer): an expert plus the
 * padding that lets direct reads land in place (cache.c). */
uint64_t lm_cache_slot_bytes(const lm_weights *w, int l);
/* The memory of layer l's slots (NULL, 0 for a dense layer): a device backend
 * page-locks it so that uploads from the slots run at full bus speed. */
void lm_cache_slot_memory(const lm_expert_cache *c, int l, void **ptr, size_t *bytes);
/* Bytes the cache allocates for its slots at a capacity (an upper bound of what it
 * can touch: allocator rounding included). */
uint64_t lm_cache_bytes_for(const lm_weights *w, int capacity);

#endif
