/* CUDA backend: lm_backend_ops on one NVIDIA GPU (phase 1 of issue 18: correctness).
 *
 * Every operation is the CPU reference (cpu_ops.c, cpu_backend.c's scalar code)
 * written as simple kernels on one stream: a warp per output row for matmuls, a
 * warp per (query, head) for attention, one thread per token for routing, one per
 * element for the rest. The arithmetic follows the CPU's operation by operation
 * (the build passes --fmad=false so that a * b + c is two roundings, as in the C
 * code, which is compiled without contraction); what still differs is the order of
 * long sums (dot products, sums of squares), which the tests bound
 * (tests/cuda/test_cuda.c). Integer results (routing choices, gathers) are exact.
 *
 * Memory: buffers are cudaMalloc'd; upload and download wait for their copy, so
 * the host memory can be reused as soon as they return (forward.c rewrites its
 * index arrays at once). Kernels are queued on the backend's stream; a failure in
 * one (a bad address, say) surfaces at the next sync or download, as an error
 * message naming the CUDA error, never an abort.
 *
 * Weights are lm_mat views of HOST memory (and some ops take host float arrays:
 * norm weights, biases, RoPE frequencies, sinks, router correction biases). The
 * backend keeps one device copy per host array, keyed by its host address and
 * uploaded on first use. That key is only right for memory whose contents never
 * change while the backend lives: the resident weights (mapped or read once). The
 * lazy expert cache reuses host slots for other experts, so the same address then
 * holds new bytes: whoever rewrites such memory must call lm_backend_weights_changed
 * (backend.h), which marks the copy stale so its next use uploads it again into
 * the same device buffer. Phase 1 wires this in forward.c for every expert that
 * comes out of the lazy cache (correct, and an upload per use); phase 2 replaces it
 * with the VRAM expert tier of issue 18.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern "C" {
#include "formats/dtype.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
}

/* ---- the backend's state ------------------------------------------------------------- */

/* A device copy of one host array. */
typedef struct {
    const void *host; /* key; NULL = empty slot */
    size_t bytes;     /* bytes uploaded */
    size_t cap;       /* bytes of dev */
    void *dev;
    int stale; /* the host memory was rewritten: upload again before use */
} weight_copy;

/* One cudaMalloc'd buffer, to tell device addresses from host ones. */
typedef struct {
    uintptr_t base;
    size_t bytes;
} device_range;

/* Consecutive gathers (or scatters) of one expert group as one launch: rows
 * [start[s], start[s+1]) of the contiguous side use index list idx[s]. */
#define SEG_MAX 32
typedef struct {
    const int32_t *idx[SEG_MAX];
    int start[SEG_MAX + 1];
    int count;
} row_segs;

/* One download_later copy: bytes at `off` of the page-locked area, for host. */
typedef struct {
    void *host;
    size_t off, bytes;
} later_copy;

/* A recorded decode step (step_record_begin .. step_record_end) and the
 * download_later copies it makes, handed to their host arrays after each replay. */
#define STEP_GRAPHS 8
#define LATER_MAX 256
typedef struct {
    uint64_t key, used; /* used: the replay clock when last launched (the least recent goes first) */
    cudaGraphExec_t exec;
    later_copy *later; /* [n_later] */
    int n_later;
    size_t later_used;
} step_graph;

typedef struct {
    int device;
    cudaStream_t stream;
    weight_copy *w; /* open addressing on the host address, capacity w_cap (a power of two) */
    size_t w_cap, w_used;
    uint64_t weight_bytes;
    device_range *ranges; /* sorted by base */
    size_t n_ranges, cap_ranges;
    int *flag;      /* device [2]: an op's error flag and its detail (embed's bad id) */
    /* The expert tier's uploads (upload_async) run on their own stream: the compute
     * stream waits for each through copy_done, and upload_fence makes the copy
     * stream wait for the compute issued so far through compute_point. */
    cudaStream_t copy;
    cudaEvent_t copy_done, compute_point;
    /* upload_timing: events around the uploads since its last call (timing enabled) */
    cudaEvent_t up_begin, up_end;
    int up_open;       /* up_begin recorded, up_end after the latest upload */
    uint64_t up_bytes; /* their bytes */
    /* Device memory this backend asked for (buffers and weight copies), its peak,
     * and the cap set_memory_limit put on it (0 = none). */
    uint64_t held, peak, limit;
    void **pinned; /* host ranges pin_host registered, unregistered at destroy */
    size_t n_pinned, cap_pinned;
    /* 1: the reference kernels only (lm_backend_cuda_set_simple; LAZYMOE_CUDA_KERNELS=simple) */
    int simple;
    float *att_parts; /* k_attention_split's partials (attn_scratch) */
    size_t att_parts_bytes;
    void *moe_scratch; /* a prefill chunk's routes grouped on the device (moe_grouped) */
    size_t moe_scratch_bytes;
    int no_split; /* LAZYMOE_CUDA_ATTN_SPLIT=0: attention one block per (query, head) always */
    int att_one_head; /* LAZYMOE_CUDA_ATTN_HEADS=1: k_attention_fast takes one head a block */
    int tc_generic;   /* LAZYMOE_CUDA_TC_GENERIC=1: MLX affine weights through tc_block, not tc_block_affine */
    int tc_narrow;    /* 0: the affine path's narrow blocks where a launch is small; 1: always; 2: never (tests) */
    int tc_wide;      /* LAZYMOE_CUDA_TC_WIDE=1: the affine path's blocks of 8 warps (off until measured) */
    int tc_q40;       /* LAZYMOE_CUDA_TC_Q4_0=1: Q4_0 through the affine path (off until measured) */
    int act_bits;     /* 8: prefill's 4-bit products on int8 activations (k_gemm_a8); 32 (default): f32 */
    int a8_warps;     /* k_gemm_a8's warps a block: TC_WARPS (default) or 2 TC_WARPS (LAZYMOE_CUDA_A8_WARPS=8) */
    int a8_smem;      /* k_gemm_a8s (its copies through shared memory) in k_gemm_a8's place (LAZYMOE_CUDA_A8_SMEM=1) */
    int no_g8;        /* ggml block weights keep f32 activations under act_bits 8 (LAZYMOE_CUDA_G8=0) */
    void *a8;         /* their scratch (act8_scratch) */
    size_t a8_bytes;
    int sm_count;
    int no_tc; /* LAZYMOE_CUDA_TC=0: prefill's quantized products on k_gemm, not the tensor cores */
    /* Small uploads (routes, positions, ids) go through two halves of a page-locked
     * staging area, so they return without waiting for the GPU: the host bytes are
     * copied there first; a half is reused only after the copies reading it finished
     * (stage_ev, recorded when the other half was taken). */
    uint8_t *stage;
    size_t stage_used[2];
    int stage_cur;
    cudaEvent_t stage_ev[2];
    /* Large downloads (a step's logits) land in this page-locked buffer and are copied
     * to their destination from there: a copy into pageable memory goes through the
     * driver's own staging at a fraction of the bus speed. Grown on demand up to
     * DOWN_STAGE_MAX; down_direct: LAZYMOE_CUDA_DOWN_STAGE=0, or pinning failed once
     * (downloads then go straight to their destination). */
    uint8_t *down;
    size_t down_cap;
    int down_direct;
    /* LAZYMOE_CUDA_TIMING=1: every kernel between two events, summed per kernel
     * name, and the host's waits, printed to stderr when the backend is freed. */
    int timing;
    cudaEvent_t *tev; /* [2 * TIM_CAP]: start, stop of the pending launches */
    const char **tname;
    int tn;
    struct {
        const char *name;
        double ms;
        long calls;
    } ts[64];
    int nts;
    double wait_ms, host_ms; /* host_ms: the host's time inside ops (waits included) */
    long waits, host_calls;
    /* the host's time per op of the ops table (sig: the op wrapper's __PRETTY_FUNCTION__,
     * which names the op), to tell which ops' host work the GPU waits for */
    struct {
        const char *sig;
        double ms, slow_ms; /* calls under 1 ms; those of 1 ms or more (uploads at first use, waits) */
        long calls, slow_calls;
    } hs[64];
    int nhs;
    uint64_t fast_launches; /* launches of k_gemv / k_gemm (tests) */
    /* download_later: copies into a page-locked area, handed to their host arrays
     * when the host next waits for the stream (stream_wait) */
    uint8_t *later;
    size_t later_used;
    later_copy later_q[LATER_MAX];
    int n_later;
    /* Recorded decode steps. While recording, kv_store and attention read the step's
     * first position from d_npast (step_pos); graphs_off: LAZYMOE_CUDA_GRAPHS=0, or
     * a recording failed once (the steps then run op by op). */
    step_graph graphs[STEP_GRAPHS];
    uint64_t graph_clock, rec_key;
    int recording, graphs_off, step_npast;
    int *d_npast;
    /* moe_routed's tables on the device, one per host table of expert views;
     * no_routed: LAZYMOE_CUDA_ROUTED=0 (the host routes every layer, for comparison) */
    struct routed_table *rt;
    int n_rt, no_routed;
    int no_grouped; /* LAZYMOE_CUDA_GROUPED=0: a prefill chunk's experts routed on the host */
    /* One elementwise op held back to be launched together with the next (pending_op). */
    struct {
        int kind;
        float *y;             /* add: y += x, n floats; norm: y = rmsnorm(x), rows x dim; rope: x = y */
        const float *x, *w;   /* norm: w is the device copy of the weights */
        size_t n;
        int rows, dim, heads, head_dim, half;
        float eps, scale;
        const int32_t *pos;
        const float *freq;    /* rope: device frequencies */
        int dtype, pos0, n_kv; /* kv_store: rows [n = rows][n_kv][dim = hd] */
        void *data;
        float *scales;
        int div;               /* gather: the index divisor */
        row_segs segs;         /* gather, scatter: rows [dim = width] */
        /* moe_combine into y (rows x dim) from eout, selw, shared, top_k = n_kv; with
         * PEND_COMBINE_ADD then resid += y (resid: n floats) */
        const float *eout, *selw, *shared;
        float *resid;
    } pend;
} cuda_impl;

#define STAGE_HALF ((size_t)1 << 20)
#define TIM_CAP 2048

static cuda_impl *impl_of(lm_backend *be) { return (cuda_impl *)be->impl; }

/* While a step is recorded, a position pos0 of kv_store or attention becomes an
 * offset from the step's first position, which the kernel reads from the device
 * (so a replay at another position stores and attends where it should). */
static const int *step_pos(cuda_impl *im, int *pos0) {
    if (!im->recording) return NULL;
    *pos0 -= im->step_npast;
    return im->d_npast;
}

/* Forgets every recorded step: they hold device addresses of buffers and weight
 * copies, and the contents the weights had when recorded. */
static void graphs_drop(cuda_impl *im) {
    for (int i = 0; i < STEP_GRAPHS; i++) {
        step_graph *g = &im->graphs[i];
        if (g->exec) cudaGraphExecDestroy(g->exec);
        free(g->later);
        memset(g, 0, sizeof *g);
    }
}

/* Counts an allocation of `bytes` about to be made against the cap: -1 with the
 * reason when it would go beyond (nothing is counted then). */
static int mem_take(lm_backend *be, size_t bytes, const char *what) {
    cuda_impl *im = (cuda_impl *)be->impl;
    if (im->limit && im->held + bytes > im->limit)
        return lm_errf(be->err,
                       "the GPU memory budget of %llu bytes is used up: %s needs %zu bytes more with %llu held",
                       (unsigned long long)im->limit, what, bytes, (unsigned long long)im->held);
    im->held += bytes;
    if (im->held > im->peak) im->peak = im->held;
    return 0;
}
static void mem_give(cuda_impl *im, size_t bytes) { im->held -= bytes < im->held ? bytes : im->held; }

static int cuda_fail(lm_backend *be, const char *what, cudaError_t e) {
    return lm_errf(be->err, "CUDA %s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

#define CU(be, what, call)                                                                                             \
    do {                                                                                                               \
        cudaError_t e_ = (call);                                                                                       \
        if (e_ != cudaSuccess) return cuda_fail((be), (what), e_);                                                     \
    } while (0)

/* ---- timing (LAZYMOE_CUDA_TIMING=1) ---- */

static void tim_flush(cuda_impl *im) {
    if (!im->tn) return;
    cudaEventSynchronize(im->tev[2 * im->tn - 1]);
    for (int i = 0; i < im->tn; i++) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, im->tev[2 * i], im->tev[2 * i + 1]) != cudaSuccess) {
            cudaGetLastError();
            continue;
        }
        int k = 0;
        while (k < im->nts && strcmp(im->ts[k].name, im->tname[i]) != 0) k++;
        if (k == im->nts) {
            if (im->nts == (int)(sizeof im->ts / sizeof im->ts[0])) continue;
            im->ts[im->nts].name = im->tname[i];
            im->ts[im->nts].ms = 0;
            im->ts[im->nts++].calls = 0;
        }
        im->ts[k].ms += ms;
        im->ts[k].calls++;
    }
    im->tn = 0;
}

/* Before every launch (timing: its start event). */
static void tim_begin(cuda_impl *im) {
    if (!im->timing) return;
    if (im->tn == TIM_CAP) tim_flush(im);
    cudaEventRecord(im->tev[2 * im->tn], im->stream);
}

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* The host waits for the stream (timing: counted apart from the kernels); then the
 * copies download_later queued are complete and go to their host arrays. */
static cudaError_t stream_wait(cuda_impl *im) {
    double t0 = im->timing ? now_ms() : 0;
    cudaError_t e = cudaStreamSynchronize(im->stream);
    if (im->timing) {
        im->wait_ms += now_ms() - t0;
        im->waits++;
    }
    if (e == cudaSuccess)
        for (int i = 0; i < im->n_later; i++) memcpy(im->later_q[i].host, im->later + im->later_q[i].off, im->later_q[i].bytes);
    im->n_later = 0;
    im->later_used = 0;
    return e;
}

__global__ void k_nothing(void) {}

/* The timing tables (per kernel, per op) largest ms first, for printing. */
template <typename Row> static void sort_by_ms(Row *rows, int n) {
    for (int done = 0; done < n; done++) {
        int b = done;
        for (int i = done + 1; i < n; i++)
            if (rows[i].ms > rows[b].ms) b = i;
        if (b != done) {
            Row t = rows[b];
            rows[b] = rows[done];
            rows[done] = t;
        }
    }
}

static void tim_print(cuda_impl *im) {
    tim_flush(im);
    double total = 0;
    for (int i = 0; i < im->nts; i++) total += im->ts[i].ms;
    fprintf(stderr, "cuda timing: %.3f ms in kernels, %.3f ms of host waits (%ld)\n", total, im->wait_ms, im->waits);
    /* the host's time in ops less its waits: launching; where it is near the kernels'
     * time the GPU waits for launches (the kernel times above then include those gaps) */
    fprintf(stderr, "cuda timing: %.3f ms of host time in %ld ops, %.3f ms of it not waiting\n", im->host_ms,
            im->host_calls, im->host_ms - im->wait_ms);
    sort_by_ms(im->hs, im->nhs);
    for (int done = 0; done < im->nhs; done++) {
        /* the op's name: what follows "F = " in the wrapper's signature (g++'s form:
         * "... [with ...; F = cuda_rmsnorm; int FLUSH = 1]") */
        const char *sig = im->hs[done].sig, *at = strstr(sig, "F = ");
        int len = 0;
        if (at) {
            at += 4;
            while (at[len] && at[len] != ';' && at[len] != ']' && at[len] != ',') len++;
        } else {
            at = sig;
            len = (int)strlen(sig);
        }
        fprintf(stderr, "cuda timing: host %-28.*s %10.3f ms %8ld calls %8.2f us each; %ld calls of 1 ms+ (%.1f ms)\n",
                len, at, im->hs[done].ms, im->hs[done].calls,
                im->hs[done].calls ? 1e3 * im->hs[done].ms / (double)im->hs[done].calls : 0.0, im->hs[done].slow_calls,
                im->hs[done].slow_ms);
    }
    /* the floor under any op that launches: an empty kernel's launch, host side */
    cudaStreamSynchronize(im->stream);
    double t0 = now_ms();
    for (int i = 0; i < 1000; i++) k_nothing<<<1, 32, 0, im->stream>>>();
    double t1 = now_ms();
    cudaStreamSynchronize(im->stream);
    double t2 = now_ms();
    cudaGetLastError();
    fprintf(stderr, "cuda timing: an empty kernel's launch: %.2f us on the host, %.2f us until done (1000 in a row)\n",
            (t1 - t0), (t2 - t0));
    sort_by_ms(im->ts, im->nts);
    for (int done = 0; done < im->nts; done++) {
        fprintf(stderr, "cuda timing: %-22s %10.3f ms %8ld launches %8.2f us each\n", im->ts[done].name,
                im->ts[done].ms, im->ts[done].calls, 1e3 * im->ts[done].ms / (double)im->ts[done].calls);
    }
}

/* After every launch: a bad configuration is reported here, a fault at the next sync. */
static int launched(lm_backend *be, const char *kernel) {
    cuda_impl *im = (cuda_impl *)be->impl;
    if (im->timing) {
        cudaEventRecord(im->tev[2 * im->tn + 1], im->stream);
        im->tname[im->tn++] = kernel;
    }
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? 0 : cuda_fail(be, kernel, e);
}

/* Grid size for `total` independent items of `per_block` each. */
static unsigned blocks_for(size_t total, unsigned per_block) { return (unsigned)((total + per_block - 1) / per_block); }
static size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }
#define EW_THREADS 256u
/* Elementwise kernels loop over a grid of at most this many blocks (grid-stride). */
#define EW_MAX_BLOCKS 65535u
static unsigned ew_blocks(size_t n) {
    unsigned b = blocks_for(n, EW_THREADS);
    return b > EW_MAX_BLOCKS ? EW_MAX_BLOCKS : (b ? b : 1u);
}

/* ---- telling device addresses from host ones ------------------------------------------- */

static int range_add(cuda_impl *im, void *p, size_t bytes) {
    if (im->n_ranges == im->cap_ranges) {
        size_t cap = im->cap_ranges ? 2 * im->cap_ranges : 64;
        device_range *r = (device_range *)realloc(im->ranges, cap * sizeof *r);
        if (!r) return -1;
        im->ranges = r;
        im->cap_ranges = cap;
    }
    uintptr_t b = (uintptr_t)p;
    size_t i = im->n_ranges;
    while (i > 0 && im->ranges[i - 1].base > b) {
        im->ranges[i] = im->ranges[i - 1];
        i--;
    }
    im->ranges[i].base = b;
    im->ranges[i].bytes = bytes;
    im->n_ranges++;
    return 0;
}

static void range_remove(cuda_impl *im, const void *p) {
    uintptr_t b = (uintptr_t)p;
    for (size_t i = 0; i < im->n_ranges; i++)
        if (im->ranges[i].base == b) {
            memmove(&im->ranges[i], &im->ranges[i + 1], (im->n_ranges - i - 1) * sizeof im->ranges[0]);
            im->n_ranges--;
            return;
        }
}

/* 1 when p lies in a buffer this backend allocated (then it is used as it is). */
static int is_device(const cuda_impl *im, const void *p) {
    uintptr_t a = (uintptr_t)p;
    size_t lo = 0, hi = im->n_ranges; /* the last range with base <= a */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (im->ranges[mid].base <= a) lo = mid + 1;
        else hi = mid;
    }
    return lo > 0 && a - im->ranges[lo - 1].base < im->ranges[lo - 1].bytes;
}

/* ---- device copies of host weights ---------------------------------------------------------- */

static size_t hash_ptr(const void *p, size_t cap) {
    uint64_t h = (uint64_t)(uintptr_t)p;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return (size_t)h & (cap - 1);
}

static weight_copy *weight_slot(cuda_impl *im, const void *host) {
    size_t i = hash_ptr(host, im->w_cap);
    while (im->w[i].host && im->w[i].host != host) i = (i + 1) & (im->w_cap - 1);
    return &im->w[i];
}

static int weights_grow(cuda_impl *im) {
    size_t cap = im->w_cap ? 2 * im->w_cap : 1024;
    weight_copy *old = im->w;
    size_t old_cap = im->w_cap;
    weight_copy *w = (weight_copy *)calloc(cap, sizeof *w);
    if (!w) return -1;
    im->w = w;
    im->w_cap = cap;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].host) *weight_slot(im, old[i].host) = old[i];
    free(old);
    return 0;
}

/* The device address of `bytes` of host memory at `host` (a weight): its copy,
 * uploaded now if there is none, it is too short or it was marked stale. A device
 * address (a buffer of this backend) is returned as it is. NULL with be->err set
 * on failure; NULL for a NULL host. */
static const void *dev_weight(lm_backend *be, const void *host, size_t bytes, const char *what) {
    cuda_impl *im = impl_of(be);
    if (!host || is_device(im, host)) return host;
    if (im->w_used * 2 >= im->w_cap && weights_grow(im) != 0) {
        lm_errf(be->err, "out of host memory for the table of device weight copies");
        return NULL;
    }
    weight_copy *c = weight_slot(im, host);
    if (c->host && !c->stale && c->bytes >= bytes) return c->dev;
    if (!c->host) {
        c->host = host;
        im->w_used++;
    }
    if (c->cap < bytes) {
        if (c->dev) {
            cudaFree(c->dev);
            im->weight_bytes -= c->cap;
            mem_give(im, c->cap);
        }
        c->dev = NULL;
        c->cap = 0;
        c->bytes = 0;
        if (mem_take(be, bytes, what) != 0) return NULL;
        cudaError_t e = cudaMalloc(&c->dev, bytes ? bytes : 1);
        if (e != cudaSuccess) {
            cudaGetLastError(); /* an allocation failure is not sticky */
            mem_give(im, bytes);
            c->dev = NULL;
            lm_errf(be->err, "CUDA out of device memory for a copy of %s (%zu bytes): %s", what, bytes,
                    cudaGetErrorString(e));
            return NULL;
        }
        c->cap = bytes;
        im->weight_bytes += bytes;
    }
    cudaError_t e = cudaMemcpyAsync(c->dev, host, bytes, cudaMemcpyHostToDevice, im->stream);
    /* wait: the host memory may be rewritten as soon as this returns (expert slots) */
    if (e == cudaSuccess) e = cudaStreamSynchronize(im->stream);
    if (e != cudaSuccess) {
        c->bytes = 0;
        cuda_fail(be, "uploading a weight", e);
        return NULL;
    }
    c->bytes = bytes;
    c->stale = 0;
    return c->dev;
}

static const float *dev_floats(lm_backend *be, const float *host, size_t n, const char *what) {
    return (const float *)dev_weight(be, host, n * sizeof(float), what);
}

static void cuda_forget(lm_backend *be, const void *host) {
    cuda_impl *im = impl_of(be);
    if (!host || !im->w_cap) return;
    weight_copy *c = weight_slot(im, host);
    if (c->host) {
        c->stale = 1;
        graphs_drop(im);
    }
}

/* ---- weights as the kernels see them --------------------------------------------------------- */

typedef struct {
    int dtype, rows, cols, col_major;
    const void *data, *scales, *biases;
    int bits, group_size, qdtype;
    size_t row_bytes; /* affine: packed words' bytes per row; block types: bytes per row */
} wdesc;

static int float_type(lm_dtype t) { return t == LM_DT_F32 || t == LM_DT_F16 || t == LM_DT_BF16; }
static int block_type_supported(lm_dtype t) {
    return t == LM_DT_Q8_0 || t == LM_DT_Q4_0 || t == LM_DT_Q4_K || t == LM_DT_MXFP4;
}

/* Checks W and makes its device view (uploading what is not there yet). */
static int weight_view(lm_backend *be, const lm_mat *W, wdesc *d) {
    memset(d, 0, sizeof *d);
    d->dtype = W->dtype;
    d->rows = W->rows;
    d->cols = W->cols;
    d->col_major = W->col_major;
    size_t rows = (size_t)W->rows, cols = (size_t)W->cols, data_bytes = 0, side_bytes = 0;
    if (W->rows < 0 || W->cols < 0) return lm_errf(be->err, "matrix of %d x %d", W->rows, W->cols);
    if (float_type(W->dtype)) {
        data_bytes = rows * cols * lm_dtype_size(W->dtype);
    } else if (W->col_major) {
        return lm_errf(be->err, "transposed weights of type %s are not supported", lm_dtype_name(W->dtype));
    } else if (W->dtype == LM_DT_U32) {
        int b = W->bits;
        if (!(b == 2 || b == 3 || b == 4 || b == 5 || b == 6 || b == 8) || W->group_size <= 0 ||
            W->cols % W->group_size != 0 || ((size_t)W->cols * (size_t)b) % 32 != 0 || !float_type(W->qdtype))
            return lm_errf(be->err, "affine weights of %d bits, group %d, %d columns, scales %s are not supported",
                           b, W->group_size, W->cols, lm_dtype_name(W->qdtype));
        d->bits = b;
        d->group_size = W->group_size;
        d->qdtype = W->qdtype;
        d->row_bytes = cols * (size_t)b / 8;
        data_bytes = rows * d->row_bytes;
        side_bytes = rows * (cols / (size_t)W->group_size) * lm_dtype_size(W->qdtype);
    } else if (W->dtype == LM_DT_MXFP4_SPLIT) {
        if (W->cols % 32 != 0) return lm_errf(be->err, "MXFP4 weights of %d columns", W->cols);
        data_bytes = rows * cols / 2;
        side_bytes = rows * cols / 32;
    } else if (lm_dtype_is_block(W->dtype) && block_type_supported(W->dtype)) {
        d->row_bytes = (size_t)lm_dtype_row_bytes(W->dtype, (uint64_t)W->cols);
        if (!d->row_bytes) return lm_errf(be->err, "%s weights of %d columns", lm_dtype_name(W->dtype), W->cols);
        data_bytes = rows * d->row_bytes;
    } else {
        return lm_errf(be->err, "the cuda backend has no kernels for weights of type %s yet",
                       lm_dtype_name(W->dtype));
    }
    int needs_scales = W->dtype == LM_DT_U32 || W->dtype == LM_DT_MXFP4_SPLIT;
    if (!W->data || (needs_scales && !W->scales) || (W->dtype == LM_DT_U32 && !W->biases))
        return lm_errf(be->err, "%s weights of %d x %d without their data, scales or biases", lm_dtype_name(W->dtype),
                       W->rows, W->cols);
    if (!(d->data = dev_weight(be, W->data, data_bytes, "a weight matrix"))) return -1;
    if (W->dtype == LM_DT_U32 && !(d->biases = dev_weight(be, W->biases, side_bytes, "affine biases"))) return -1;
    if (needs_scales && !(d->scales = dev_weight(be, W->scales, side_bytes, "weight scales")))
        return -1;
    return 0;
}

/* ops->preload: the copy weight_view or dev_floats would make at first use, made now
 * (each upload waits for the stream: in the first forward pass that stopped the GPU's
 * queue at every weight). */
static int cuda_preload(lm_backend *be, const lm_mat *W) {
    wdesc d;
    return weight_view(be, W, &d);
}

static int cuda_preload_floats(lm_backend *be, const float *host, size_t n) {
    if (!host || !n) return 0;
    return dev_floats(be, host, n, "weights") ? 0 : -1;
}

/* ---- device helpers ------------------------------------------------------------------------------ */

__device__ __forceinline__ float bits_f32(uint32_t u) { return __uint_as_float(u); }

/* lm_f16_to_f32: exact for every half (subnormals included). */
__device__ __forceinline__ float f16_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0) {
        if (mant == 0) return bits_f32(sign);
        int e = -1;
        do {
            e++;
            mant <<= 1;
        } while (!(mant & 0x400u));
        return bits_f32(sign | (uint32_t)(127 - 15 - e) << 23 | (mant & 0x3ffu) << 13);
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | mant << 13);
    return bits_f32(sign | (exp + 127 - 15) << 23 | mant << 13);
}

/* lm_f32_to_f16: round to nearest even, overflow to inf, NaN kept. */
__device__ __forceinline__ uint16_t f32_f16(float f) {
    uint32_t u = __float_as_uint(f), sign = (u >> 16) & 0x8000u, absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (absu >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);
    if (absu < 0x38800000u) {
        if (absu < 0x33000000u) return (uint16_t)sign;
        uint32_t mant = (absu & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(absu >> 23);
        uint32_t half = mant >> shift, rem = mant & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (half & 1u))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = (absu >> 13) - (112u << 10), rem = absu & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) half++;
    return (uint16_t)(sign | half);
}

__device__ __forceinline__ float load_float(const void *p, int dt, size_t i) {
    if (dt == LM_DT_F32) return ((const float *)p)[i];
    if (dt == LM_DT_BF16) return bits_f32((uint32_t)((const uint16_t *)p)[i] << 16);
    return f16_f32(((const uint16_t *)p)[i]); /* F16 (weight_view admits only these three) */
}

__device__ __forceinline__ float f16_at(const uint8_t *p) { return f16_f32((uint16_t)(p[0] | p[1] << 8)); }

/* Twice the e2m1 value of each code (formats/mxfp4.h). */
__constant__ int8_t mxfp4_code2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

/* lm_e8m0_half_to_f32: 2^(E - 128). */
__device__ __forceinline__ float e8m0_half(uint8_t e) {
    return bits_f32(e >= 2 ? (uint32_t)(e - 1) << 23 : (e == 1 ? 0x00400000u : 0x00200000u));
}

/* affine_q of cpu_backend.c: value c of a packed row, lowest bits first. */
__device__ __forceinline__ uint32_t affine_q(const uint32_t *row, int bits, int c) {
    if (bits == 4) return (row[c >> 3] >> ((c & 7) * 4)) & 15u;
    if (bits == 8) return (row[c >> 2] >> ((c & 3) * 8)) & 255u;
    if (bits == 2) return (row[c >> 4] >> ((c & 15) * 2)) & 3u;
    uint64_t bit = (uint64_t)c * (uint64_t)bits;
    const uint8_t *bytes = (const uint8_t *)row;
    uint32_t v = 0;
    for (int b = 0; b < bits; b++) {
        uint64_t p = bit + (uint64_t)b;
        v |= (uint32_t)((bytes[p >> 3] >> (p & 7)) & 1u) << b;
    }
    return v;
}

/* Element (r, c) of W as float32, exactly as lm_mat_row_f32 widens it. */
__device__ float wval(const wdesc &w, int r, int c) {
    switch (w.dtype) {
    case LM_DT_F32:
    case LM_DT_F16:
    case LM_DT_BF16: {
        size_t i = w.col_major ? (size_t)c * (size_t)w.rows + (size_t)r : (size_t)r * (size_t)w.cols + (size_t)c;
        return load_float(w.data, w.dtype, i);
    }
    case LM_DT_U32: {
        const uint32_t *row = (const uint32_t *)((const uint8_t *)w.data + (size_t)r * w.row_bytes);
        size_t g = (size_t)r * (size_t)(w.cols / w.group_size) + (size_t)(c / w.group_size);
        float s = load_float(w.scales, w.qdtype, g), b = load_float(w.biases, w.qdtype, g);
        return s * (float)affine_q(row, w.bits, c) + b;
    }
    case LM_DT_MXFP4_SPLIT: {
        uint8_t byte = ((const uint8_t *)w.data)[(size_t)r * (size_t)(w.cols / 2) + (size_t)(c / 2)];
        uint8_t e = ((const uint8_t *)w.scales)[(size_t)r * (size_t)(w.cols / 32) + (size_t)(c / 32)];
        return (float)mxfp4_code2[(c & 1) ? byte >> 4 : byte & 15] * e8m0_half(e);
    }
    default: break;
    }
    const uint8_t *row = (const uint8_t *)w.data + (size_t)r * w.row_bytes;
    if (w.dtype == LM_DT_Q8_0) {
        const uint8_t *b = row + (size_t)(c / 32) * 34;
        return (float)(int8_t)b[2 + c % 32] * f16_at(b);
    }
    if (w.dtype == LM_DT_Q4_0) {
        const uint8_t *b = row + (size_t)(c / 32) * 18;
        int j = c % 32;
        int q = j < 16 ? (b[2 + j] & 0x0f) - 8 : (b[2 + j - 16] >> 4) - 8;
        return (float)q * f16_at(b);
    }
    if (w.dtype == LM_DT_MXFP4) {
        const uint8_t *b = row + (size_t)(c / 32) * 17;
        int j = c % 32;
        uint8_t code = j < 16 ? b[1 + j] & 15 : b[1 + j - 16] >> 4;
        return (float)mxfp4_code2[code] * e8m0_half(b[0]);
    }
    /* Q4_K: 256 values; pairs of 32-value sub-blocks share 32 bytes of nibbles */
    const uint8_t *b = row + (size_t)(c / 256) * 144;
    int i = c % 256, pair = i / 64, l = i % 64, j = 2 * pair + (l >= 32);
    const uint8_t *s = b + 4, *qs = b + 16 + pair * 32;
    uint8_t sc, mn;
    if (j < 4) {
        sc = s[j] & 63;
        mn = s[j + 4] & 63;
    } else {
        sc = (uint8_t)((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4));
        mn = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
    float d1 = f16_at(b) * (float)sc, m1 = f16_at(b + 2) * (float)mn;
    int q = l < 32 ? qs[l] & 0x0f : qs[l - 32] >> 4;
    return d1 * (float)q - m1;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return __shfl_sync(0xffffffffu, v, 0); /* every lane the same value */
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return __shfl_sync(0xffffffffu, v, 0);
}

/* ---- matmul ----------------------------------------------------------------------------------------- */

#define MM_WARPS 4 /* output rows per block of the row kernel */
#define MM_TOK 8   /* tokens a warp computes at once */

/* y[t][r] = x[t] . W[r] for a warp's row r and tokens t0..t0+MM_TOK-1: each lane
 * takes columns lane, lane+32, ..., the warp sums the lanes. Decode (n = 1) reads
 * each weight once; prefill goes to the tiled kernel below. */
__global__ void __launch_bounds__(MM_WARPS * 32) k_matmul_rows(wdesc w, const float *__restrict__ x,
                                                                float *__restrict__ y, int n) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int r = blockIdx.x * MM_WARPS + warp, t0 = blockIdx.y * MM_TOK;
    if (r >= w.rows) return; /* the whole warp leaves together */
    int nt = n - t0 < MM_TOK ? n - t0 : MM_TOK;
    float acc[MM_TOK];
#pragma unroll
    for (int t = 0; t < MM_TOK; t++) acc[t] = 0.0f;
    const float *xt = x + (size_t)t0 * (size_t)w.cols;
    for (int c = lane; c < w.cols; c += 32) {
        float wv = wval(w, r, c);
#pragma unroll
        for (int t = 0; t < MM_TOK; t++)
            if (t < nt) acc[t] = fmaf(wv, xt[(size_t)t * (size_t)w.cols + (size_t)c], acc[t]);
    }
#pragma unroll
    for (int t = 0; t < MM_TOK; t++) {
        float v = warp_sum(acc[t]);
        if (lane == 0 && t < nt) y[(size_t)(t0 + t) * (size_t)w.rows + (size_t)r] = v;
    }
}

/* Prefill: a block computes a GT x GT tile of y (GT tokens x GT rows), stepping
 * through the inputs GK columns at a time with both operands in shared memory
 * (the weights widened once per tile rather than once per token). Each of the
 * 256 threads owns a 4 x 4 patch of the tile. */
#define GT 64
#define GK 32
__global__ void __launch_bounds__(256) k_matmul_tiled(wdesc w, const float *__restrict__ x, float *__restrict__ y,
                                                      int n) {
    __shared__ float ws[GK][GT + 1]; /* [column][row] */
    __shared__ float xs[GK][GT + 1]; /* [column][token] */
    int r0 = blockIdx.x * GT, t0 = blockIdx.y * GT;
    int tr = threadIdx.x % 16, tt = threadIdx.x / 16; /* rows r0 + tr*4.., tokens t0 + tt*4.. */
    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
        for (int b = 0; b < 4; b++) acc[a][b] = 0.0f;
    for (int c0 = 0; c0 < w.cols; c0 += GK) {
        for (int i = threadIdx.x; i < GT * GK; i += 256) {
            int rr = i / GK, cc = i % GK, r = r0 + rr, c = c0 + cc, t = t0 + rr;
            ws[cc][rr] = r < w.rows && c < w.cols ? wval(w, r, c) : 0.0f;
            xs[cc][rr] = t < n && c < w.cols ? x[(size_t)t * (size_t)w.cols + (size_t)c] : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int cc = 0; cc < GK; cc++) {
            float wr[4], xv[4];
#pragma unroll
            for (int a = 0; a < 4; a++) wr[a] = ws[cc][tr * 4 + a];
#pragma unroll
            for (int b = 0; b < 4; b++) xv[b] = xs[cc][tt * 4 + b];
#pragma unroll
            for (int b = 0; b < 4; b++)
#pragma unroll
                for (int a = 0; a < 4; a++) acc[b][a] = fmaf(wr[a], xv[b], acc[b][a]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int b = 0; b < 4; b++)
#pragma unroll
        for (int a = 0; a < 4; a++) {
            int t = t0 + tt * 4 + b, r = r0 + tr * 4 + a;
            if (t < n && r < w.rows) y[(size_t)t * (size_t)w.rows + (size_t)r] = acc[b][a];
        }
}

/* ---- fast matmuls (decode GEMV, prefill GEMM) --------------------------------------------------------------
 *
 * The kernels above are the reference: a generic element loader (wval) per weight.
 * The fast kernels below read a row in units of 8 consecutive weights, each unit one
 * vector load of its packed bytes widened in registers to w = s * q + b (q small
 * integers or the float values themselves, s and b the unit's scale and offset):
 *   k_gemv  one to a few tokens (decode): a warp per GV_ROWS rows, each lane one unit
 *           at a time (lanes take consecutive units: the warp's loads are contiguous),
 *           sum_i w_i x_i = s * sum_i q_i x_i + b * sum_i x_i in f32, the lanes summed
 *           by shuffles at the end;
 *   k_gemm  many tokens (prefill): 64 rows x 64 tokens per block, the weights widened
 *           once per tile into shared memory (w = s * q + b rounded as wval rounds it)
 *           and reused by every token of the tile.
 * Both take a batch of items of one shape and format (the layer's routed experts),
 * one launch for all of them; an item's result depends on its own weights, inputs
 * and token count only -- never on the other items, their number or which slot the
 * expert's bytes sit in -- and within k_gemv a token's result does not depend on
 * how many tokens share the item either (the per-token arithmetic is the same). */

enum { FMT_NONE = 0, FMT_F32, FMT_F16, FMT_BF16, FMT_A4, FMT_A8, FMT_Q4_0, FMT_Q8_0, FMT_Q4_K, FMT_Q6_K, FMT_Q5_K };

/* What every item of one launch shares (rows: the most of any item). */
typedef struct {
    int rows, cols, group_size, qdtype;
    size_t row_bytes;
} mm_shape;

/* One product: its weights (rows of them: items of one launch may differ there, as
 * q, k and v do), inputs, outputs and tokens. */
typedef struct {
    const void *data, *scales, *biases;
    const float *x;
    float *y;
    int n, rows;
    /* x quantized (k_gemm_a8 only): the values and the (dx, xsum) pairs, k_act8_quantize's */
    const int8_t *xq;
    const float2 *xds;
} mm_item;

/* Items of one launch, passed by value (kernel parameters: 32 x 64 bytes). */
#define MM_MAX_ITEMS 32
typedef struct {
    mm_item it[MM_MAX_ITEMS];
} mm_batch;

/* The fast format of a weight view, FMT_NONE when it has none (the reference kernels
 * then run): row-major, whole units of 8, and the unit loads aligned -- which holds
 * for every copy of the same matrix (device buffers are 256-byte aligned and expert
 * slots' parts 64-byte aligned), so the choice never depends on where an expert sits. */
static int fast_format(const wdesc *d) {
    if (d->col_major || d->cols % 8 != 0 || d->cols <= 0) return FMT_NONE;
    uintptr_t a = (uintptr_t)d->data;
    switch (d->dtype) {
    case LM_DT_F32: return a % 16 == 0 ? FMT_F32 : FMT_NONE;
    case LM_DT_F16: return a % 16 == 0 ? FMT_F16 : FMT_NONE;
    case LM_DT_BF16: return a % 16 == 0 ? FMT_BF16 : FMT_NONE;
    case LM_DT_U32:
        if (d->group_size % 8 != 0) return FMT_NONE;
        if (d->bits == 4 && a % 4 == 0 && d->row_bytes % 4 == 0) return FMT_A4;
        if (d->bits == 8 && a % 8 == 0 && d->row_bytes % 8 == 0) return FMT_A8;
        return FMT_NONE;
    case LM_DT_Q4_0: return a % 2 == 0 ? FMT_Q4_0 : FMT_NONE;
    case LM_DT_Q8_0: return a % 2 == 0 ? FMT_Q8_0 : FMT_NONE;
    case LM_DT_Q4_K: return a % 8 == 0 && d->row_bytes % 8 == 0 ? FMT_Q4_K : FMT_NONE;
    case LM_DT_Q6_K: return a % 2 == 0 ? FMT_Q6_K : FMT_NONE; /* 210-byte blocks: 2-byte loads */
    case LM_DT_Q5_K: return a % 8 == 0 && d->row_bytes % 8 == 0 ? FMT_Q5_K : FMT_NONE;
    default: return FMT_NONE;
    }
}

/* 8 consecutive weights w[i] = s * q[i] + b. */
typedef struct {
    float q[8];
    float s, b;
} wunit;

__device__ __forceinline__ float half_bits(uint32_t h) { return __half2float(__ushort_as_half((unsigned short)h)); }
__device__ __forceinline__ uint32_t u16_at(const uint8_t *p) { return *(const uint16_t *)p; }

/* The 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K block from its 12
 * packed bytes s (as the CPU's lm_q4k_scale_min unpacks them). */
__device__ __forceinline__ void q4k_scale_min(const uint8_t *s, int j, uint32_t &sc, uint32_t &mn) {
    if (j < 4) {
        sc = s[j] & 63u;
        mn = s[j + 4] & 63u;
    } else {
        sc = (s[j + 4] & 0x0fu) | ((uint32_t)(s[j - 4] >> 6) << 4);
        mn = (s[j + 4] >> 4) | ((uint32_t)(s[j] >> 6) << 4);
    }
}

/* Unit u (columns 8u .. 8u+7) of row r of an item's weights. */
template <int FMT>
__device__ __forceinline__ void load_unit(const mm_shape &sh, const mm_item &it, int r, int u, wunit &o) {
    o.s = 1.0f;
    o.b = 0.0f;
    if (FMT == FMT_F32) {
        const float4 *p = (const float4 *)((const float *)it.data + (size_t)r * (size_t)sh.cols + 8 * (size_t)u);
        float4 a = __ldg(p), b = __ldg(p + 1);
        o.q[0] = a.x, o.q[1] = a.y, o.q[2] = a.z, o.q[3] = a.w, o.q[4] = b.x, o.q[5] = b.y, o.q[6] = b.z, o.q[7] = b.w;
    } else if (FMT == FMT_F16 || FMT == FMT_BF16) {
        uint4 v = __ldg((const uint4 *)((const uint16_t *)it.data + (size_t)r * (size_t)sh.cols + 8 * (size_t)u));
        uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            if (FMT == FMT_F16) {
                o.q[2 * i] = half_bits(w[i] & 0xffffu);
                o.q[2 * i + 1] = half_bits(w[i] >> 16);
            } else {
                o.q[2 * i] = __uint_as_float(w[i] << 16);
                o.q[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
            }
        }
    } else if (FMT == FMT_A4 || FMT == FMT_A8) {
        const uint8_t *row = (const uint8_t *)it.data + (size_t)r * sh.row_bytes;
        if (FMT == FMT_A4) {
            uint32_t w = __ldg((const uint32_t *)row + u);
#pragma unroll
            for (int i = 0; i < 8; i++) o.q[i] = (float)((w >> (4 * i)) & 15u);
        } else {
            uint2 w = __ldg((const uint2 *)row + u);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                o.q[i] = (float)((w.x >> (8 * i)) & 255u);
                o.q[4 + i] = (float)((w.y >> (8 * i)) & 255u);
            }
        }
        size_t g = (size_t)r * (size_t)(sh.cols / sh.group_size) + (size_t)(8 * u / sh.group_size);
        o.s = load_float(it.scales, sh.qdtype, g);
        o.b = load_float(it.biases, sh.qdtype, g);
    } else if (FMT == FMT_Q4_0 || FMT == FMT_Q8_0) {
        const uint8_t *blk = (const uint8_t *)it.data + (size_t)r * sh.row_bytes + (size_t)(u / 4) * (FMT == FMT_Q4_0 ? 18 : 34);
        int k = u % 4;
        o.s = half_bits(u16_at(blk));
        if (FMT == FMT_Q4_0) { /* values 0-15 of the block: low nibbles of bytes 0-15, 16-31: high ones */
            const uint8_t *qs = blk + 2 + (k & 1) * 8;
            int shift = k >= 2 ? 4 : 0;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                uint32_t two = u16_at(qs + 2 * i);
                o.q[2 * i] = (float)((int)((two >> shift) & 15u) - 8);
                o.q[2 * i + 1] = (float)((int)((two >> (8 + shift)) & 15u) - 8);
            }
        } else {
            const uint8_t *qs = blk + 2 + k * 8;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                uint32_t two = u16_at(qs + 2 * i);
                o.q[2 * i] = (float)(int8_t)(two & 255u);
                o.q[2 * i + 1] = (float)(int8_t)(two >> 8);
            }
        }
    } else if (FMT == FMT_Q6_K) {
        /* 256 values a 210-byte block: ql[128] (low 4 bits), qh[64] (high 2), int8
         * scales[16] (one per 16 values), f16 d; w = d sc (q - 32). Value 128 h + 32 k + l
         * (l < 32) takes the low (k < 2) or high nibble of ql[64 h + 32 (k & 1) + l] and
         * bits 2k, 2k + 1 of qh[32 h + l], as the CPU's lm_blocks_to_f32 reads them. */
        const uint8_t *blk = (const uint8_t *)it.data + (size_t)r * sh.row_bytes + (size_t)(u / 32) * 210;
        int i0 = (u % 32) * 8, h = i0 / 128, k = (i0 % 128) / 32, l = i0 % 32;
        const uint8_t *ql = blk + 64 * h + 32 * (k & 1) + l, *qh = blk + 128 + 32 * h + l;
        o.s = half_bits(u16_at(blk + 208)) * (float)(int8_t)blk[192 + 8 * h + l / 16 + 2 * k];
        int ls = k >= 2 ? 4 : 0, hs = 2 * k;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint32_t lo = u16_at(ql + 2 * i), hi = u16_at(qh + 2 * i);
            o.q[2 * i] = (float)((int)(((lo >> ls) & 15u) | (((hi >> hs) & 3u) << 4)) - 32);
            o.q[2 * i + 1] = (float)((int)(((lo >> (8 + ls)) & 15u) | (((hi >> (8 + hs)) & 3u) << 4)) - 32);
        }
    } else if (FMT == FMT_Q5_K) {
        /* Q4_K's layout (f16 d, dmin, 12 bytes of scales and mins) with qh[32] before the
         * nibbles: value 64 p + l' (l' < 64) of sub-block j = 2 p + (l' >= 32) takes bit j
         * of qh[l' % 32] as its fifth (lm_blocks_to_f32's Q5_K) */
        const uint8_t *blk = (const uint8_t *)it.data + (size_t)r * sh.row_bytes + (size_t)(u / 32) * 176;
        int i0 = (u % 32) * 8, pair = i0 / 64, l = i0 % 64, j = 2 * pair + (l >= 32);
        uint32_t sc, mn;
        q4k_scale_min(blk + 4, j, sc, mn);
        o.s = half_bits(u16_at(blk)) * (float)sc;
        o.b = -(half_bits(u16_at(blk + 2)) * (float)mn);
        uint2 w = __ldg((const uint2 *)(blk + 48 + pair * 32 + (l % 32))), h = __ldg((const uint2 *)(blk + 16 + (l % 32)));
        int shift = l >= 32 ? 4 : 0;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            o.q[i] = (float)(((w.x >> (8 * i + shift)) & 15u) | (((h.x >> (8 * i + j)) & 1u) << 4));
            o.q[4 + i] = (float)(((w.y >> (8 * i + shift)) & 15u) | (((h.y >> (8 * i + j)) & 1u) << 4));
        }
    } else { /* FMT_Q4_K: 256 values a block; sub-block j of 32 has its own 6-bit scale and min */
        const uint8_t *blk = (const uint8_t *)it.data + (size_t)r * sh.row_bytes + (size_t)(u / 32) * 144;
        int i0 = (u % 32) * 8, pair = i0 / 64, l = i0 % 64, j = 2 * pair + (l >= 32);
        uint32_t sc, mn;
        q4k_scale_min(blk + 4, j, sc, mn);
        o.s = half_bits(u16_at(blk)) * (float)sc;
        o.b = -(half_bits(u16_at(blk + 2)) * (float)mn);
        uint2 w = __ldg((const uint2 *)(blk + 16 + pair * 32 + (l % 32)));
        int shift = l >= 32 ? 4 : 0;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            o.q[i] = (float)((w.x >> (8 * i + shift)) & 15u);
            o.q[4 + i] = (float)((w.y >> (8 * i + shift)) & 15u);
        }
    }
}

/* Formats whose offset b is not always 0 (the sum of the inputs is then needed). */
#define FMT_HAS_OFFSET(F) ((F) == FMT_A4 || (F) == FMT_A8 || (F) == FMT_Q4_K || (F) == FMT_Q5_K)
#define FMT_HAS_SCALE(F) ((F) != FMT_F32 && (F) != FMT_F16 && (F) != FMT_BF16)

#define GV_WARPS 4 /* warps per block */
#define GV_ROWS 2  /* rows per warp (the inputs each lane loads serve all of them) */
#define GV_TOK 4   /* tokens per pass over a row */

#define GV_AHEAD 4 /* gemv_affine_one: units a lane has in flight */

/* The 8 inputs of unit u (columns 8u .. 8u+7) of one token's row xt. */
__device__ __forceinline__ void input_unit(const float *xt, int u, float (&xv)[8]) {
    const float4 *p = (const float4 *)(xt + 8 * (size_t)u);
    float4 a = __ldg(p), c = __ldg(p + 1);
    xv[0] = a.x, xv[1] = a.y, xv[2] = a.z, xv[3] = a.w, xv[4] = c.x, xv[5] = c.y, xv[6] = c.z, xv[7] = c.w;
}

/* acc plus one unit's products w . x (sx: the sum of the unit's inputs, used by formats
 * with an offset): s * sum q_i x_i + b * sx, or s * sum, or the sum, as FMT has. */
template <int FMT> __device__ __forceinline__ float unit_acc(const wunit &w, const float (&xv)[8], float sx, float acc) {
    float d = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) d = fmaf(w.q[i], xv[i], d);
    if (FMT_HAS_OFFSET(FMT)) return fmaf(w.s, d, fmaf(w.b, sx, acc));
    if (FMT_HAS_SCALE(FMT)) return fmaf(w.s, d, acc);
    return acc + d;
}

/* A scale or offset of 16 bits as float: the value load_float gives (both conversions are exact). */
__device__ __forceinline__ float half_or_bf16(uint32_t h, int bf16) {
    return bf16 ? __uint_as_float(h << 16) : __half2float(__ushort_as_half((unsigned short)h));
}

/* gemv_body for one token of affine 4- or 8-bit weights with 16-bit scales and a
 * power-of-two group (MLX's): the same arithmetic in the same order -- so every
 * output is bit-identical to gemv_body's -- with the loads issued differently. A lane
 * first loads GV_AHEAD units' weight words, scales and offsets of all its rows and
 * their inputs, with no branch between the loads, then does the arithmetic of those
 * units in order. gemv_body loads a unit only when it computes it, through
 * load_float's branch on the scales' type and a division for the group: each lane then
 * waits for its loads one unit at a time, and decode's GEMVs moved weights at 200-500
 * GB/s of the H100's ~3,300 (ncu); this form doubles to triples that
 * (bench/cuda/gemv_lab.cu measured it against other row, warp and prefetch counts, and
 * against a float conversion without I2F, which was slower). */
/* The sums of R rows (each its own weights, scales and offsets; one shared input x of
 * sh.cols values) for one token: every lane returns them in out. */
template <int FMT, int R, int P = GV_AHEAD>
__device__ __forceinline__ void affine_rows(const mm_shape &sh, const uint8_t *const (&wrow)[R],
                                            const uint16_t *const (&srow)[R], const uint16_t *const (&brow)[R],
                                            const float *xt, int gshift, int bf16, float (&out)[R]) {
    int lane = threadIdx.x % 32, units = sh.cols / 8;
    float acc[R];
#pragma unroll
    for (int a = 0; a < R; a++) acc[a] = 0.0f;
    for (int u0 = lane; u0 < units; u0 += 32 * P) {
        uint2 wq[P][R]; /* A4: .x only */
        uint32_t sc[P][R], bi[P][R];
        float xv[P][8];
#pragma unroll
        for (int p = 0; p < P; p++) {
            int u = u0 + 32 * p, uu = u < units ? u : u0, g = (8 * uu) >> gshift; /* past the end: unit u0 again, unused */
            input_unit(xt, uu, xv[p]);
#pragma unroll
            for (int a = 0; a < R; a++) {
                if (FMT == FMT_A4) wq[p][a].x = __ldg((const uint32_t *)wrow[a] + uu);
                else wq[p][a] = __ldg((const uint2 *)wrow[a] + uu);
                sc[p][a] = __ldg(srow[a] + g);
                bi[p][a] = __ldg(brow[a] + g);
            }
        }
#pragma unroll
        for (int p = 0; p < P; p++) {
            if (u0 + 32 * p >= units) break;
            float sx = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; i++) sx += xv[p][i];
#pragma unroll
            for (int a = 0; a < R; a++) {
                float d = 0.0f;
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    uint32_t q = FMT == FMT_A4 ? (wq[p][a].x >> (4 * i)) & 15u
                                               : ((i < 4 ? wq[p][a].x : wq[p][a].y) >> (8 * (i & 3))) & 255u;
                    d = fmaf((float)q, xv[p][i], d);
                }
                acc[a] = fmaf(half_or_bf16(sc[p][a], bf16), d, fmaf(half_or_bf16(bi[p][a], bf16), sx, acc[a]));
            }
        }
    }
#pragma unroll
    for (int a = 0; a < R; a++) out[a] = warp_sum(acc[a]);
}

/* Where gemv_affine_one applies: affine 4/8-bit weights, 16-bit scales, a power-of-two group. */
template <int FMT> __device__ __forceinline__ bool affine_one_ok(const mm_shape &sh) {
    return (FMT == FMT_A4 || FMT == FMT_A8) && (sh.qdtype == LM_DT_BF16 || sh.qdtype == LM_DT_F16) &&
           sh.group_size >= 8 && (sh.group_size & (sh.group_size - 1)) == 0;
}

/* Row r's weights, scales and offsets (affine) of an item. */
__device__ __forceinline__ void affine_row(const mm_shape &sh, const mm_item &it, int r, const uint8_t *&w,
                                           const uint16_t *&s, const uint16_t *&b) {
    size_t groups = (size_t)(sh.cols / sh.group_size);
    w = (const uint8_t *)it.data + (size_t)r * sh.row_bytes;
    s = (const uint16_t *)it.scales + (size_t)r * groups;
    b = (const uint16_t *)it.biases + (size_t)r * groups;
}

template <int FMT> __device__ __forceinline__ void gemv_affine_one(const mm_shape &sh, const mm_item &it) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int r0 = (blockIdx.x * GV_WARPS + warp) * GV_ROWS, rows = it.rows;
    if (r0 >= rows) return; /* the whole warp */
    const uint8_t *wrow[GV_ROWS];
    const uint16_t *srow[GV_ROWS], *brow[GV_ROWS];
#pragma unroll
    for (int a = 0; a < GV_ROWS; a++) /* a row past the end reads row r0; its sum is not stored */
        affine_row(sh, it, r0 + a < rows ? r0 + a : r0, wrow[a], srow[a], brow[a]);
    for (int t = 0; t < it.n; t++) {
        float v[GV_ROWS];
        affine_rows<FMT, GV_ROWS>(sh, wrow, srow, brow, it.x + (size_t)t * (size_t)sh.cols,
                                  __ffs(sh.group_size) - 1, sh.qdtype == LM_DT_BF16, v);
#pragma unroll
        for (int a = 0; a < GV_ROWS; a++)
            if (lane == 0 && r0 + a < rows) it.y[(size_t)t * (size_t)rows + (size_t)(r0 + a)] = v[a];
    }
}

/* NT: tokens per pass (GV_TOK; 1 where every item has one token, decode: fewer
 * registers, more warps in flight). A token's arithmetic is the same for any NT. */
template <int FMT, int NT> __device__ __forceinline__ void gemv_body(const mm_shape &sh, const mm_item &it) {
    if (NT == 1 && affine_one_ok<FMT>(sh)) {
        gemv_affine_one<FMT>(sh, it);
        return;
    }
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int r0 = (blockIdx.x * GV_WARPS + warp) * GV_ROWS, rows = it.rows;
    if (r0 >= rows) return; /* the whole warp */
    int units = sh.cols / 8, n = it.n;
    if (NT == 1 && n > 0) {
        /* one token, the other formats (GGUF blocks, floats, affine with other scales): two
         * units' loads of both rows issued before their arithmetic, which is the loop's
         * below in the same order (gemv_affine_one says why this pays) */
        int rr[GV_ROWS];
#pragma unroll
        for (int a = 0; a < GV_ROWS; a++) rr[a] = r0 + a < rows ? r0 + a : r0;
        for (int t = 0; t < n; t++) {
            const float *xt = it.x + (size_t)t * (size_t)sh.cols;
            float acc[GV_ROWS];
#pragma unroll
            for (int a = 0; a < GV_ROWS; a++) acc[a] = 0.0f;
            for (int u0 = lane; u0 < units; u0 += 64) {
                wunit w[2][GV_ROWS];
                float xv[2][8];
#pragma unroll
                for (int p = 0; p < 2; p++) {
                    int uu = u0 + 32 * p < units ? u0 + 32 * p : u0;
                    input_unit(xt, uu, xv[p]);
#pragma unroll
                    for (int a = 0; a < GV_ROWS; a++) load_unit<FMT>(sh, it, rr[a], uu, w[p][a]);
                }
#pragma unroll
                for (int p = 0; p < 2; p++) {
                    if (u0 + 32 * p >= units) break;
                    float sx = 0.0f;
                    if (FMT_HAS_OFFSET(FMT))
#pragma unroll
                        for (int i = 0; i < 8; i++) sx += xv[p][i];
#pragma unroll
                    for (int a = 0; a < GV_ROWS; a++) acc[a] = unit_acc<FMT>(w[p][a], xv[p], sx, acc[a]);
                }
            }
#pragma unroll
            for (int a = 0; a < GV_ROWS; a++) {
                float v = warp_sum(acc[a]);
                if (lane == 0 && r0 + a < rows) it.y[(size_t)t * (size_t)rows + (size_t)(r0 + a)] = v;
            }
        }
        return;
    }
    for (int t0 = 0; t0 < n; t0 += NT) {
        int nt = n - t0 < NT ? n - t0 : NT;
        float acc[GV_ROWS][NT];
#pragma unroll
        for (int a = 0; a < GV_ROWS; a++)
#pragma unroll
            for (int t = 0; t < NT; t++) acc[a][t] = 0.0f;
        const float *xt = it.x + (size_t)t0 * (size_t)sh.cols;
        /* unrolled: several units' loads in flight per lane */
#pragma unroll 4
        for (int u = lane; u < units; u += 32) {
            float xv[NT][8], sx[NT];
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t < nt) {
                    input_unit(xt + (size_t)t * (size_t)sh.cols, u, xv[t]);
                    sx[t] = 0.0f;
                    if (FMT_HAS_OFFSET(FMT))
#pragma unroll
                        for (int i = 0; i < 8; i++) sx[t] += xv[t][i];
                }
            }
#pragma unroll
            for (int a = 0; a < GV_ROWS; a++) {
                int r = r0 + a;
                if (r >= rows) break;
                wunit w;
                load_unit<FMT>(sh, it, r, u, w);
#pragma unroll
                for (int t = 0; t < NT; t++)
                    if (t < nt) acc[a][t] = unit_acc<FMT>(w, xv[t], sx[t], acc[a][t]);
            }
        }
#pragma unroll
        for (int a = 0; a < GV_ROWS; a++)
#pragma unroll
            for (int t = 0; t < NT; t++) {
                float v = warp_sum(acc[a][t]);
                if (lane == 0 && t < nt && r0 + a < rows) it.y[(size_t)(t0 + t) * (size_t)rows + (size_t)(r0 + a)] = v;
            }
    }
}

template <int FMT, int NT>
__global__ void __launch_bounds__(GV_WARPS * 32) k_gemv(mm_shape sh, mm_batch b) {
    gemv_body<FMT, NT>(sh, b.it[blockIdx.y]);
}

/* The same for up to 4 items (q/k/v, o, router, lm_head): smaller kernel parameters
 * make a cheaper launch. */
#define MM_FEW_ITEMS 4
typedef struct {
    mm_item it[MM_FEW_ITEMS];
} mm_few;
template <int FMT, int NT>
__global__ void __launch_bounds__(GV_WARPS * 32) k_gemv_few(mm_shape sh, mm_few b) {
    gemv_body<FMT, NT>(sh, b.it[blockIdx.y]);
}

/* Weights of one matrix of one expert (moe_routed's table on the device). */
typedef struct {
    const void *data, *scales, *biases;
} mm_desc;

/* moe_routed: blockIdx.y = route r (of n * top_k), expert sel[r]; blockIdx.z picks
 * the matrix (mat0 + z) and the output (y0 or y1). The inputs are row r / x_div of
 * x; the output row r of y. The same gemv_body as k_gemv: one token per item, as a
 * host-routed decode step's experts are. A prefill chunk's routes of experts with few
 * tokens come as a list instead (list non-NULL): block y takes list[y], list[y +
 * gridDim.y], ... up to *n_list, known only on the device -- a grid of every possible
 * route would be mostly blocks with nothing to do. */

__device__ __forceinline__ mm_item routed_item(const mm_shape &sh, const mm_desc *tab, int mat0, const int32_t *sel,
                                               int r, const float *x, int x_div, float *y0, float *y1) {
    int mat = mat0 + (int)blockIdx.z;
    const mm_desc &d = tab[(size_t)sel[r] * 3 + (size_t)mat];
    mm_item it;
    it.data = d.data;
    it.scales = d.scales;
    it.biases = d.biases;
    it.x = x + (size_t)(r / x_div) * (size_t)sh.cols;
    it.y = (blockIdx.z ? y1 : y0) + (size_t)r * (size_t)sh.rows;
    it.n = 1;
    it.rows = sh.rows;
    return it;
}

template <int FMT>
__global__ void __launch_bounds__(GV_WARPS * 32) k_gemv_routed(mm_shape sh, const mm_desc *tab, int mat0,
                                                                const int32_t *sel, const float *x, int x_div,
                                                                float *y0, float *y1) {
    gemv_body<FMT, 1>(sh, routed_item(sh, tab, mat0, sel, (int)blockIdx.y, x, x_div, y0, y1));
}

/* The same over a list of routes (the decode kernel above stays a kernel of its own:
 * with the loop in it, a decode step ran ~6% slower on an H100). */
template <int FMT>
__global__ void __launch_bounds__(GV_WARPS * 32) k_gemv_routed_list(mm_shape sh, const mm_desc *tab, int mat0,
                                                                     const int32_t *sel, const int32_t *list,
                                                                     const int32_t *n_list, const float *x, int x_div,
                                                                     float *y0, float *y1) {
    for (int i = (int)blockIdx.y; i < *n_list; i += (int)gridDim.y)
        gemv_body<FMT, 1>(sh, routed_item(sh, tab, mat0, sel, list[i], x, x_div, y0, y1));
}

/* Prefill: TR rows x TT tokens per block (256 x 16, 128 x 32 or 64 x 64: the shape
 * with the least waste for the batch's token counts), 32 inputs (4 units) per step; the 256
 * threads widen the weight tile's units and load the input tile's float4s, then each
 * computes a 4 x 4 patch. w = s * q + b is rounded as wval rounds it (a product, then
 * a sum), so the tile holds the reference's weights exactly; every output is summed
 * over the inputs in order, one fmaf each, whatever the tile shape. */
#define GK2 32
/* A step's global loads of k_gemm into registers: this thread's weight units and
 * input float4s (zeros outside the matrix), issued a step ahead of their use. */
template <int FMT, int TR, int TT>
__device__ __forceinline__ void gemm_fetch(const mm_shape &sh, const mm_item &it, int r0, int t0, int c0,
                                           wunit (&wp)[TR * 4 / 256], float4 (&xp)[(TT * 8 + 255) / 256]) {
    int tid = threadIdx.x;
#pragma unroll
    for (int j = 0; j < TR * 4 / 256; j++) {
        int idx = tid + 256 * j, r = r0 + idx / 4, u = c0 / 8 + idx % 4;
        if (r < it.rows && 8 * u < sh.cols) {
            load_unit<FMT>(sh, it, r, u, wp[j]);
        } else {
            wp[j].s = 0.0f;
            wp[j].b = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; i++) wp[j].q[i] = 0.0f;
        }
    }
#pragma unroll
    for (int j = 0; j < (TT * 8 + 255) / 256; j++) {
        int idx = tid + 256 * j, tok = idx / 8, part = idx % 8, t = t0 + tok;
        xp[j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (idx < TT * 8 && t < it.n && c0 + part * 4 < sh.cols)
            xp[j] = __ldg((const float4 *)(it.x + (size_t)t * (size_t)sh.cols + (size_t)(c0 + part * 4)));
    }
}

template <int FMT, int TR, int TT>
__global__ void __launch_bounds__(256) k_gemm(mm_shape sh, mm_batch b) {
    __shared__ __align__(16) float ws[GK2][TR]; /* [column][row] */
    __shared__ __align__(16) float xs[GK2][TT]; /* [column][token] */
    const mm_item &it = b.it[blockIdx.z];
    int r0 = blockIdx.x * TR, t0 = blockIdx.y * TT, n = it.n, rows = it.rows;
    if (t0 >= n || r0 >= rows) return; /* the whole block: this item has fewer tokens or rows */
    int tid = threadIdx.x, tr = tid % (TR / 4), tt = tid / (TR / 4);
    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
        for (int c = 0; c < 4; c++) acc[a][c] = 0.0f;
    wunit wp[TR * 4 / 256];
    float4 xp[(TT * 8 + 255) / 256];
    gemm_fetch<FMT, TR, TT>(sh, it, r0, t0, 0, wp, xp);
    for (int c0 = 0; c0 < sh.cols; c0 += GK2) {
#pragma unroll
        for (int j = 0; j < TR * 4 / 256; j++) { /* the weight tile: TR rows x 4 units, widened */
            int idx = tid + 256 * j, wrow = idx / 4, wk = idx % 4;
#pragma unroll
            for (int i = 0; i < 8; i++)
                ws[wk * 8 + i][wrow] = FMT_HAS_OFFSET(FMT) ? __fadd_rn(__fmul_rn(wp[j].s, wp[j].q[i]), wp[j].b)
                                                           : (FMT_HAS_SCALE(FMT) ? __fmul_rn(wp[j].q[i], wp[j].s) : wp[j].q[i]);
        }
#pragma unroll
        for (int j = 0; j < (TT * 8 + 255) / 256; j++) { /* the input tile: TT tokens x 8 float4 */
            int idx = tid + 256 * j, tok = idx / 8, part = idx % 8;
            if (idx < TT * 8) {
                xs[part * 4 + 0][tok] = xp[j].x;
                xs[part * 4 + 1][tok] = xp[j].y;
                xs[part * 4 + 2][tok] = xp[j].z;
                xs[part * 4 + 3][tok] = xp[j].w;
            }
        }
        __syncthreads();
        /* the next step's loads in flight while this one computes */
        if (c0 + GK2 < sh.cols) gemm_fetch<FMT, TR, TT>(sh, it, r0, t0, c0 + GK2, wp, xp);
#pragma unroll 8
        for (int cc = 0; cc < GK2; cc++) {
            float4 wr = *(const float4 *)&ws[cc][tr * 4];
            float4 xv = *(const float4 *)&xs[cc][tt * 4];
            float wa[4] = {wr.x, wr.y, wr.z, wr.w}, xa[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
            for (int c = 0; c < 4; c++)
#pragma unroll
                for (int a = 0; a < 4; a++) acc[c][a] = fmaf(wa[a], xa[c], acc[c][a]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int c = 0; c < 4; c++)
#pragma unroll
        for (int a = 0; a < 4; a++) {
            int t = t0 + tt * 4 + c, r = r0 + tr * 4 + a;
            if (t < n && r < rows) it.y[(size_t)t * (size_t)rows + (size_t)r] = acc[c][a];
        }
}

/* ---- prefill on the tensor cores ----
 * k_gemm_tc: weights whose values are w = s * q + b with q a small integer (affine 4/8-bit,
 * Q4_0, Q8_0, Q4_K: |q| <= 255, exact in bf16) and s, b constant over each 32 columns.
 * The tensor cores multiply bf16, which would round the f32 inputs to 8 significant bits;
 * instead each input is split into x = hi + lo, two bf16 whose sum carries 16 bits (the
 * rest is below 2^-17 of x), and both halves go through the MMA against the exact q. Per
 * scale group the products sum into acc (f32), and the row's scale and offset are applied
 * once: y += s * acc + b * sum(x) -- the decomposition k_gemv's unit_acc uses. The result
 * is within ~1e-5 of the f32 product (the tests bound it like k_gemm's), and, since every
 * output's arithmetic is the same whatever the tile, an item's result depends only on its
 * own weights, inputs and token count.
 *
 * A block: 16 tokens (routes) x 128 rows, each of its 4 warps 32 rows. Per 32-column chunk
 * the block's threads split the 16 tokens' inputs into bf16 halves once, into shared
 * memory laid out as the warps' MMA fragments (tc_stage), with each token's sum over the
 * chunk; the warps then read them with one 16-byte load per fragment. The next chunk's
 * inputs and weights are loaded before this chunk's arithmetic (the loop is latency-bound
 * otherwise), and one barrier a chunk separates the two stage buffers.
 *
 * mma.m16n8k16: A = 16 tokens x 16 columns, B = 16 columns x 8 weight rows. The columns of
 * a 32-column chunk are permuted so that lane (g = lane / 4, t = lane % 4) holds all it
 * needs as whole 8-column units: its B values are unit t of weight row g, its A values
 * unit t of tokens g and g + 8. A unit's 8 values make 4 bf16x2 words, word k pairing
 * values (2k, 2k + 1), or (k, k + 4) for affine 4-bit (TC_PAIRS_FAR); MMA step st takes
 * words 2st and 2st + 1. Nibbles become bf16 without a conversion: 0x4300 | q is the
 * bf16 of 128 + q, so the products carry 128 sum(x) more, which the offset takes back
 * (b - 128 s; tc_q0). */
#define TC_WARPS 4
#define TC_NT 4                           /* 8-row tiles a warp computes (32 rows) */
#define TC_ROWS (TC_WARPS * TC_NT * 8)    /* rows a block computes */
#define TC_NARROW_ROWS (TC_WARPS * 8)     /* rows of a block of the affine path's narrow kernels */
#define TC_WIDE_ROWS (2 * TC_ROWS)        /* rows of a block of its wide kernels (LAZYMOE_CUDA_TC_WIDE=1) */
/* A k_gemm_tc block's rows and threads. */
static unsigned tc_block_rows(int narrow, int wide) { return narrow ? TC_NARROW_ROWS : wide ? TC_WIDE_ROWS : TC_ROWS; }
static unsigned tc_block_threads(int wide) { return (wide ? 2 : 1) * TC_WARPS * 32; }
#define TC_TOK 16                         /* tokens a block computes */
#define TC_CHUNK 32                       /* columns per step */
static_assert(TC_WARPS * 32 == TC_TOK * 8, "tc_stage: a thread per 4 inputs of a chunk");

__device__ __forceinline__ uint32_t bf16x2_bits(float lo_elem, float hi_elem) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo_elem, hi_elem); /* .x: the lower 16 bits */
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

/* (a, b) as hi + lo in two bf16x2 words. */
__device__ __forceinline__ void split_bf16x2(float a, float b, uint32_t &hi, uint32_t &lo) {
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    float ha = __low2float(h), hb = __high2float(h);
    memcpy(&hi, &h, sizeof hi);
    lo = bf16x2_bits(__fsub_rn(a, ha), __fsub_rn(b, hb));
}

__device__ __forceinline__ void mma_bf16_16x8x16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Affine 4-bit pairs value k with k + 4 (a shift and a mask a word); the others pair
 * neighbours (2k, 2k + 1). */
#define TC_PAIRS_FAR(FMT) ((FMT) == FMT_A4)
/* What the words' values exceed q by: 128 for the nibbles (0x4300 | q), and Q4_0's
 * nibbles are q + 8; the 8-bit formats are converted. */
template <int FMT> __device__ __forceinline__ float tc_q0() {
    return FMT == FMT_Q4_0 ? 136.0f : FMT == FMT_Q6_K ? 160.0f : FMT == FMT_A4 || FMT == FMT_Q4_K || FMT == FMT_Q5_K ? 128.0f : 0.0f;
}

/* A lane's weight unit as loaded for a chunk: the packed values and the scale and offset
 * as stored, made bf16 words (tc_words) only when the chunk is computed. The next chunk's loads are
 * then in flight in a third of the registers of widened units, and nothing waits for them
 * until they are used. Q4_K's scale and offset are assembled from several bytes at load
 * (s and b: their floats' bits). Values are those load_unit gives, exactly. */
template <int FMT> struct tc_wraw {
    uint32_t q[(FMT == FMT_Q4_0 || FMT == FMT_Q8_0 || FMT == FMT_Q6_K || FMT == FMT_Q5_K) ? 4 : FMT == FMT_A4 ? 1 : 2];
    uint32_t s, b;
};

__device__ __forceinline__ uint32_t load_bits(const void *p, int dt, size_t i) {
    if (dt == LM_DT_F32) return ((const uint32_t *)p)[i];
    return ((const uint16_t *)p)[i];
}

__device__ __forceinline__ float bits_float(uint32_t v, int dt) {
    if (dt == LM_DT_F32) return __uint_as_float(v);
    if (dt == LM_DT_BF16) return bits_f32(v << 16);
    return f16_f32((uint16_t)v);
}

template <int FMT>
__device__ __forceinline__ void tc_load_raw(const mm_shape &sh, const mm_item &it, int r, int u, tc_wraw<FMT> &o) {
    if (FMT == FMT_A4 || FMT == FMT_A8) {
        const uint8_t *row = (const uint8_t *)it.data + (size_t)r * sh.row_bytes;
        if (FMT == FMT_A4) {
            o.q[0] = __ldg((const uint32_t *)row + u);
        } else {
            uint2 w = __ldg((const uint2 *)row + u);
            o.q[0] = w.x;
            o.q[sizeof o.q / sizeof o.q[0] - 1] = w.y;
        }
        size_t g = (size_t)r * (size_t)(sh.cols / sh.group_size) + (size_t)(8 * u / sh.group_size);
        o.s = load_bits(it.scales, sh.qdtype, g);
        o.b = load_bits(it.biases, sh.qdtype, g);
    } else if (FMT == FMT_Q4_0 || FMT == FMT_Q8_0) {
        const uint8_t *blk = (const uint8_t *)it.data + (size_t)r * sh.row_bytes + (size_t)(u / 4) * (FMT == FMT_Q4_0 ? 18 : 34);
        int k = u % 4;
        const uint8_t *qs = blk + 2 + (FMT == FMT_Q4_0 ? (k & 1) * 8 : k * 8);
        o.s = u16_at(blk);
        o.b = 0;
#pragma unroll
        for (int i = 0; i < (int)(sizeof o.q / sizeof o.q[0]); i++) o.q[i] = u16_at(qs + 2 * i);
    } else if (FMT == FMT_Q6_K) { /* load_unit's bytes: q[0..1] of ql, q[2..3] of qh; s = d sc */
        const uint8_t *blk = (const uint8_t *)it.data + (size_t)r * sh.row_bytes + (size_t)(u / 32) * 210;
        int i0 = (u % 32) * 8, h = i0 / 128, k = (i0 % 128) / 32, l = i0 % 32;
        const uint8_t *ql = blk + 64 * h + 32 * (k & 1) + l, *qh = blk + 128 + 32 * h + l;
#pragma unroll
        for (int i = 0; i < 2; i++) {
            o.q[i] = u16_at(ql + 4 * i) | u16_at(ql + 4 * i + 2) << 16;
            o.q[2 + i] = u16_at(qh + 4 * i) | u16_at(qh + 4 * i + 2) << 16;
        }
        o.s = __float_as_uint(half_bits(u16_at(blk + 208)) * (float)(int8_t)blk[192 + 8 * h + l / 16 + 2 * k]);
        o.b = 0;
    } else if (FMT == FMT_Q5_K) { /* load_unit's bytes: q[0..1] of the nibbles, q[2..3] of qh */
        const uint8_t *blk = (const uint8_t *)it.data + (size_t)r * sh.row_bytes + (size_t)(u / 32) * 176;
        int i0 = (u % 32) * 8, pair = i0 / 64, l = i0 % 64;
        uint32_t sc, mn;
        q4k_scale_min(blk + 4, 2 * pair + (l >= 32), sc, mn);
        uint2 w = __ldg((const uint2 *)(blk + 48 + pair * 32 + (l % 32))), h = __ldg((const uint2 *)(blk + 16 + (l % 32)));
        o.q[0] = w.x, o.q[1] = w.y, o.q[2] = h.x, o.q[3] = h.y;
        o.s = __float_as_uint(half_bits(u16_at(blk)) * (float)sc);
        o.b = __float_as_uint(-(half_bits(u16_at(blk + 2)) * (float)mn));
    } else { /* FMT_Q4_K */
        wunit w;
        load_unit<FMT>(sh, it, r, u, w);
        const uint8_t *blk = (const uint8_t *)it.data + (size_t)r * sh.row_bytes + (size_t)(u / 32) * 144;
        int i0 = (u % 32) * 8, pair = i0 / 64, l = i0 % 64;
        uint2 v = __ldg((const uint2 *)(blk + 16 + pair * 32 + (l % 32)));
        o.q[0] = v.x;
        o.q[sizeof o.q / sizeof o.q[0] - 1] = v.y;
        o.s = __float_as_uint(w.s);
        o.b = __float_as_uint(w.b);
    }
}

/* A row past the matrix: zeros (s = 0, so whatever q widens to adds 0; never stored). */
template <int FMT> __device__ __forceinline__ void tc_zero_raw(tc_wraw<FMT> &o) {
#pragma unroll
    for (int i = 0; i < (int)(sizeof o.q / sizeof o.q[0]); i++) o.q[i] = 0;
    o.s = 0;
    o.b = 0;
}

/* tc_load_raw's unit u as the MMA's 4 bf16x2 words (paired as TC_PAIRS_FAR says),
 * with the unit's scale s and offset b (b - tc_q0 s is applied). */
template <int FMT>
__device__ __forceinline__ void tc_words(const mm_shape &sh, const tc_wraw<FMT> &w, int u, uint32_t (&o)[4], float &s,
                                         float &b) {
    const uint32_t magic = 0x43004300u;
    if (FMT == FMT_A4) {
#pragma unroll
        for (int k = 0; k < 4; k++) o[k] = ((w.q[0] >> (4 * k)) & 0x000f000fu) | magic;
    } else if (FMT == FMT_Q4_0) {
        int shift = u % 4 >= 2 ? 4 : 0; /* each q[k]: the two bytes of values 2k, 2k + 1 */
#pragma unroll
        for (int k = 0; k < 4; k++) o[k] = ((__byte_perm(w.q[k], 0u, 0x4140u) >> shift) & 0x000f000fu) | magic;
    } else if (FMT == FMT_Q4_K) {
        int shift = (u % 32) * 8 % 64 >= 32 ? 4 : 0;
        const int last = sizeof w.q / sizeof w.q[0] - 1;
#pragma unroll
        for (int k = 0; k < 4; k++)
            o[k] = ((__byte_perm(w.q[k < 2 ? 0 : last], 0u, k % 2 ? 0x4342u : 0x4140u) >> shift) & 0x000f000fu) | magic;
    } else if (FMT == FMT_Q5_K) {
        /* values 2k, 2k + 1: bytes 2k, 2k + 1 of the nibbles and of qh (bit j each) */
        int l = (u % 32) * 8 % 64, shift = l >= 32 ? 4 : 0, j = 2 * ((u % 32) / 8) + (l >= 32);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            uint32_t sel = k % 2 ? 0x4342u : 0x4140u;
            uint32_t lo = (__byte_perm(w.q[k / 2], 0u, sel) >> shift) & 0x000f000fu;
            uint32_t hi = (__byte_perm(w.q[2 + k / 2], 0u, sel) >> j) & 0x00010001u;
            o[k] = lo | hi << 4 | magic;
        }
    } else if (FMT == FMT_Q6_K) {
        /* values 2k, 2k + 1: bytes 2k, 2k + 1 of ql (a nibble each) and of qh (2 bits each) */
        int quarter = (u % 16) / 4, ls = quarter >= 2 ? 4 : 0, hs = 2 * quarter;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            uint32_t sel = k % 2 ? 0x4342u : 0x4140u;
            uint32_t lo = (__byte_perm(w.q[k / 2], 0u, sel) >> ls) & 0x000f000fu;
            uint32_t hi = (__byte_perm(w.q[2 + k / 2], 0u, sel) >> hs) & 0x00030003u;
            o[k] = lo | hi << 4 | magic;
        }
    } else if (FMT == FMT_A8) {
        const int last = sizeof w.q / sizeof w.q[0] - 1;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            uint32_t v = w.q[k < 2 ? 0 : last] >> (16 * (k % 2));
            o[k] = bf16x2_bits((float)(v & 255u), (float)((v >> 8) & 255u));
        }
    } else { /* FMT_Q8_0 */
#pragma unroll
        for (int k = 0; k < 4; k++) o[k] = bf16x2_bits((float)(int8_t)(w.q[k] & 255u), (float)(int8_t)(w.q[k] >> 8));
    }
    if (FMT == FMT_A4 || FMT == FMT_A8) {
        s = bits_float(w.s, sh.qdtype);
        b = bits_float(w.b, sh.qdtype);
    } else if (FMT == FMT_Q4_0 || FMT == FMT_Q8_0) {
        s = half_bits(w.s);
        b = 0.0f;
    } else {
        s = __uint_as_float(w.s);
        b = __uint_as_float(w.b);
    }
}

/* One chunk of the block's 16 tokens' inputs as the warps' A fragments: for MMA step st,
 * the hi (0) and lo (1) halves of lane L's 4 words (tokens g and g + 8, word pairs 2st and
 * 2st + 1 of unit t), and each token's sum over the chunk. */
struct tc_stage {
    uint4 frag[2][2][32];
    float sx[TC_TOK];
};

/* The row of x (or y) that token tok of an item reads (writes): tok itself, or with a
 * prefill's routes grouped on the device (k_gemm_tc_grouped) route routes[tok]'s row,
 * that is its token's row routes[tok] / div of the chunk's inputs (div = top_k) or its
 * own (div = 1). */
__device__ __forceinline__ size_t tc_row(const int32_t *routes, int tok, int div) {
    return routes ? (size_t)(routes[tok] / div) : (size_t)tok;
}

/* This thread's 4 inputs of chunk c: token tid / 8, columns 4 (tid % 8) .. + 3 of the
 * chunk (zeros past the item's tokens). */
__device__ __forceinline__ float4 tc_input(const float *xrow, int c) {
    if (!xrow) return make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    return __ldg((const float4 *)(xrow + (size_t)c * TC_CHUNK + 4 * (threadIdx.x & 7)));
}

/* tc_input's values into the stage: thread (token, q = tid % 8) makes step st = q % 2 of
 * unit t = q / 2 for token row g + 8 h; the 8 threads of a token sum its chunk. */
template <int FMT> __device__ __forceinline__ void tc_put(tc_stage &st_, float4 v) {
    int tid = threadIdx.x, row = tid >> 3, q = tid & 7, t = q >> 1, st = q & 1, g = row & 7, h = row >> 3;
    float p0a, p0b, p1a, p1b; /* the pairs of words 2st and 2st + 1 */
    if (TC_PAIRS_FAR(FMT)) {
        /* this thread holds values 4st .. 4st + 3 of the unit and its neighbour the other
         * four; words 2st, 2st + 1 pair values (2st, 2st + 4) and (2st + 1, 2st + 5) */
        float ga = __shfl_xor_sync(0xffffffffu, st ? v.x : v.z, 1), gb = __shfl_xor_sync(0xffffffffu, st ? v.y : v.w, 1);
        if (!st) p0a = v.x, p0b = ga, p1a = v.y, p1b = gb;
        else p0a = ga, p0b = v.z, p1a = gb, p1b = v.w;
    } else {
        p0a = v.x, p0b = v.y, p1a = v.z, p1b = v.w;
    }
    uint32_t hi0, lo0, hi1, lo1;
    split_bf16x2(p0a, p0b, hi0, lo0);
    split_bf16x2(p1a, p1b, hi1, lo1);
    int lane = g * 4 + t;
    uint32_t *fh = (uint32_t *)&st_.frag[st][0][lane], *fl = (uint32_t *)&st_.frag[st][1][lane];
    fh[h] = hi0, fh[2 + h] = hi1, fl[h] = lo0, fl[2 + h] = lo1;
    float s = __fadd_rn(__fadd_rn(v.x, v.y), __fadd_rn(v.z, v.w));
    s = __fadd_rn(s, __shfl_xor_sync(0xffffffffu, s, 1));
    s = __fadd_rn(s, __shfl_xor_sync(0xffffffffu, s, 2));
    s = __fadd_rn(s, __shfl_xor_sync(0xffffffffu, s, 4));
    if (q == 0) st_.sx[row] = s;
}

/* A lane's units u of its rows r0 + 8j + g (zeros past the item's rows). */
template <int FMT>
__device__ __forceinline__ void tc_fetch_w(const mm_shape &sh, const mm_item &it, int r0, int u,
                                           tc_wraw<FMT> (&w)[TC_NT]) {
    int g = (threadIdx.x & 31) >> 2;
#pragma unroll
    for (int j = 0; j < TC_NT; j++) {
        int r = r0 + 8 * j + g;
        if (r >= it.rows) tc_zero_raw<FMT>(w[j]);
        else tc_load_raw<FMT>(sh, it, r, u, w[j]);
    }
}

/* At a scale group's end: the group's products acc of a warp's tile j scaled into tot,
 * y += s * acc + (b - q0 s) * sum(x), with s0, s1 (b0, b1) the scales (offsets) of the
 * lane's output rows 8j + 2t and 8j + 2t + 1 and sxg the group's sums of tokens g and
 * g + 8. Both block kernels below do exactly this, so they give the same bits. */
template <int FMT>
__device__ __forceinline__ void tc_group_end(float (&acc)[4], float (&tot)[4], float s0, float s1, float b0, float b1,
                                             const float (&sxg)[2]) {
    float o0 = __fsub_rn(b0, __fmul_rn(tc_q0<FMT>(), s0)), o1 = __fsub_rn(b1, __fmul_rn(tc_q0<FMT>(), s1));
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float sc = i & 1 ? s1 : s0, of = i & 1 ? o1 : o0, v = __fmul_rn(sc, acc[i]);
        if (FMT_HAS_OFFSET(FMT) || tc_q0<FMT>() != 0.0f) v = __fadd_rn(v, __fmul_rn(of, sxg[i >> 1]));
        tot[i] = __fadd_rn(tot[i], v);
        acc[i] = 0.0f;
    }
}

/* The A fragments of stage sg for this lane: hi and lo halves of MMA steps 0 and 1. */
__device__ __forceinline__ void tc_frags(const tc_stage &sg, uint32_t (&ahi)[2][4], uint32_t (&alo)[2][4]) {
    int lane = threadIdx.x & 31;
#pragma unroll
    for (int st = 0; st < 2; st++) {
        uint4 vh = sg.frag[st][0][lane], vl = sg.frag[st][1][lane];
        ahi[st][0] = vh.x, ahi[st][1] = vh.y, ahi[st][2] = vh.z, ahi[st][3] = vh.w;
        alo[st][0] = vl.x, alo[st][1] = vl.y, alo[st][2] = vl.z, alo[st][3] = vl.w;
    }
}

/* One tile's MMAs of a chunk: both halves of the inputs against the weight words wq. */
__device__ __forceinline__ void tc_mma_tile(float (&acc)[4], const uint32_t (&ahi)[2][4], const uint32_t (&alo)[2][4],
                                            const uint32_t (&wq)[4]) {
#pragma unroll
    for (int st = 0; st < 2; st++) {
        mma_bf16_16x8x16(acc, ahi[st], wq[2 * st], wq[2 * st + 1]);
        mma_bf16_16x8x16(acc, alo[st], wq[2 * st], wq[2 * st + 1]);
    }
}

/* One chunk's products of a warp's 32 rows (the A fragments from stage sg, the weights
 * in w[]) into acc, and at a scale group's end acc scaled into tot. */
template <int FMT>
__device__ __forceinline__ void tc_chunk(const mm_shape &sh, const tc_stage &sg, const tc_wraw<FMT> (&w)[TC_NT], int c,
                                         int per_group, float (&acc)[TC_NT][4], float (&tot)[TC_NT][4], float (&sxg)[2]) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    uint32_t ahi[2][4], alo[2][4];
    tc_frags(sg, ahi, alo);
    sxg[0] = __fadd_rn(sxg[0], sg.sx[g]);
    sxg[1] = __fadd_rn(sxg[1], sg.sx[g + 8]);
    const bool group_end = (c + 1) % per_group == 0;
#pragma unroll
    for (int j = 0; j < TC_NT; j++) {
        uint32_t wq[4];
        float ws, wb;
        tc_words<FMT>(sh, w[j], c * (TC_CHUNK / 8) + t, wq, ws, wb);
        tc_mma_tile(acc[j], ahi, alo, wq);
        if (group_end) {
            /* output columns 2t, 2t + 1 of the tile are rows 8j + 2t (+1), whose scale
             * and offset the lanes of those rows loaded (all four lanes of a row: the
             * same group) */
            float s0 = __shfl_sync(0xffffffffu, ws, 8 * t), s1 = __shfl_sync(0xffffffffu, ws, 8 * t + 4);
            float b0 = __shfl_sync(0xffffffffu, wb, 8 * t), b1 = __shfl_sync(0xffffffffu, wb, 8 * t + 4);
            tc_group_end<FMT>(acc[j], tot[j], s0, s1, b0, b1, sxg);
        }
    }
    if (group_end) sxg[0] = sxg[1] = 0.0f;
}

/* A warp's sums into y: its NT 8-row tiles from row r0, tokens t0 + g and t0 + g + 8
 * (lane g = lane / 4, t = lane % 4 holds rows 8j + 2t and 8j + 2t + 1 of each). */
template <int NT>
__device__ __forceinline__ void tc_store(const mm_item &it, int t0, int r0, const int32_t *routes,
                                         const float (&tot)[NT][4]) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int tok = t0 + g + 8 * (i >> 1), r = r0 + 8 * j + 2 * t + (i & 1);
            if (tok < it.n && r < it.rows) it.y[tc_row(routes, tok, 1) * (size_t)it.rows + (size_t)r] = tot[j][i];
        }
}

/* A block: TC_ROWS rows x TC_TOK tokens from t0 (every thread of it calls this), any
 * format k_gemm_tc takes, each lane loading its units (tc_load_raw) one chunk ahead. */
template <int FMT>
__device__ __forceinline__ void tc_block(const mm_shape &sh, const mm_item &it, int t0, const int32_t *routes,
                                         int x_div) {
    __shared__ tc_stage stage[2];
    int t = threadIdx.x & 3, warp = threadIdx.x >> 5;
    int r0 = blockIdx.x * TC_ROWS + warp * TC_NT * 8;
    if (t0 >= it.n || (int)blockIdx.x * TC_ROWS >= it.rows) return; /* the whole block */
    const bool active = r0 < it.rows; /* a warp past the rows still stages inputs */
    int my_tok = t0 + (int)(threadIdx.x >> 3);
    const float *xrow = my_tok < it.n ? it.x + tc_row(routes, my_tok, x_div) * (size_t)sh.cols : NULL;
    const int chunks = sh.cols / TC_CHUNK;
    const int per_group = (FMT == FMT_A4 || FMT == FMT_A8) ? sh.group_size / TC_CHUNK : 1;
    float tot[TC_NT][4], acc[TC_NT][4], sxg[2] = {0.0f, 0.0f};
#pragma unroll
    for (int j = 0; j < TC_NT; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) tot[j][i] = acc[j][i] = 0.0f;
    tc_wraw<FMT> cur[TC_NT], next[TC_NT];
    tc_fetch_w<FMT>(sh, it, r0, t, cur);
    tc_put<FMT>(stage[0], tc_input(xrow, 0));
    __syncthreads();
    for (int c = 0; c < chunks; c++) {
        const bool more = c + 1 < chunks;
        float4 xn = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (more) {
            xn = tc_input(xrow, c + 1);
            tc_fetch_w<FMT>(sh, it, r0, (c + 1) * (TC_CHUNK / 8) + t, next);
        }
        if (active) tc_chunk<FMT>(sh, stage[c & 1], cur, c, per_group, acc, tot, sxg);
        if (more) tc_put<FMT>(stage[(c + 1) & 1], xn);
        __syncthreads();
#pragma unroll
        for (int j = 0; j < TC_NT; j++) cur[j] = next[j];
    }
    if (active) tc_store<TC_NT>(it, t0, r0, routes, tot);
}

/* MLX affine weights (4- and 8-bit) have a fixed layout: a row's chunk is 16 or 32
 * contiguous bytes and its scale group's scale and offset sit at row * groups + group.
 * tc_block_affine uses that to keep its loop short: each lane keeps a pointer to its
 * unit of each of its 4 rows, so a chunk's weights are 4 loads with no arithmetic; the
 * weights and the inputs are loaded two chunks ahead; and a scale group's scales and
 * offsets are loaded once at the group's start, for the lane's output rows directly
 * (tc_block: every chunk, for its weight rows, then exchanged). The arithmetic is
 * tc_block's, in the same order, so the results are the same bits
 * (LAZYMOE_CUDA_TC_GENERIC=1 or lm_backend_cuda_set_tc_generic: tc_block instead). */
template <int FMT> struct tc_affine_word { typedef uint32_t type; };   /* 8 nibbles */
template <> struct tc_affine_word<FMT_A8> { typedef uint2 type; };     /* 8 bytes */
template <> struct tc_affine_word<FMT_Q4_0> { typedef uint2 type; };   /* 4 halves of 8 bytes' low or high nibbles */

/* Q4_0 (LAZYMOE_CUDA_TC_Q4_0=1, off until measured) takes the same loop: a chunk is one
 * 18-byte block (its f16 scale, then 16 bytes of nibbles), so a lane's unit sits at a
 * fixed offset in each; its scale is the block's (a group of one chunk, no offset). */
#define TC_FIXED(FMT) ((FMT) == FMT_A4 || (FMT) == FMT_A8 || (FMT) == FMT_Q4_0)
template <int FMT> __device__ __forceinline__ int tc_chunk_bytes() { return FMT == FMT_A4 ? 16 : FMT == FMT_A8 ? 32 : 18; }
/* where lane t's unit starts in a chunk (tc_load_raw's) */
template <int FMT> __device__ __forceinline__ int tc_unit_offset(int t) {
    return FMT == FMT_A4 ? 4 * t : FMT == FMT_A8 ? 8 * t : 2 + 8 * (t & 1);
}
template <int FMT> __device__ __forceinline__ typename tc_affine_word<FMT>::type tc_affine_load(const uint8_t *p) {
    if constexpr (FMT == FMT_A4) {
        return __ldg((const uint32_t *)p);
    } else if constexpr (FMT == FMT_A8) {
        return __ldg((const uint2 *)p);
    } else { /* 2-byte aligned: the blocks are 18 bytes */
        const unsigned short *h = (const unsigned short *)p;
        return make_uint2((uint32_t)__ldg(h) | (uint32_t)__ldg(h + 1) << 16, (uint32_t)__ldg(h + 2) | (uint32_t)__ldg(h + 3) << 16);
    }
}

template <int FMT>
__device__ __forceinline__ void tc_affine_raw(const typename tc_affine_word<FMT>::type &v, tc_wraw<FMT> &o) {
    if constexpr (FMT == FMT_Q4_0) {
        o.q[0] = v.x & 0xffffu, o.q[1] = v.x >> 16, o.q[2] = v.y & 0xffffu, o.q[3] = v.y >> 16;
    } else if constexpr (FMT == FMT_A8) {
        o.q[0] = v.x;
        o.q[sizeof o.q / sizeof o.q[0] - 1] = v.y;
    } else {
        o.q[0] = v;
    }
}

/* WARPS (TC_WARPS or 2 TC_WARPS: LAZYMOE_CUDA_TC_WIDE=1, off until measured): the
 * block's warps; the first TC_WARPS stage the inputs, so a block of 8 stages them once
 * for twice the rows. */
template <int FMT, int NT, int WARPS>
__device__ __forceinline__ void tc_block_affine(const mm_shape &sh, const mm_item &it, int t0, const int32_t *routes,
                                                int x_div) {
    static_assert(WARPS >= TC_WARPS, "the first TC_WARPS warps stage the inputs");
    typedef typename tc_affine_word<FMT>::type word;
    __shared__ tc_stage stage[2];
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, warp = threadIdx.x >> 5;
    int r0 = blockIdx.x * (WARPS * NT * 8) + warp * NT * 8;
    if (t0 >= it.n || (int)blockIdx.x * (WARPS * NT * 8) >= it.rows) return; /* the whole block */
    const bool active = r0 < it.rows; /* a warp past the rows still stages inputs */
    const bool stager = warp < TC_WARPS;
    int my_tok = t0 + (int)(threadIdx.x >> 3);
    const float *xrow = stager && my_tok < it.n ? it.x + tc_row(routes, my_tok, x_div) * (size_t)sh.cols : NULL;
    const int q40 = FMT == FMT_Q4_0, chunks = sh.cols / TC_CHUNK, per_group = q40 ? 1 : sh.group_size / TC_CHUNK;
    const int groups = q40 ? chunks : sh.cols / sh.group_size;
    const int CB = tc_chunk_bytes<FMT>();
    /* a row past the item's reads the last row: its outputs are never stored, and an
     * MMA's output column depends on its own weight row only */
    const uint8_t *wp[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) {
        int r = min(r0 + 8 * j + g, it.rows - 1);
        wp[j] = (const uint8_t *)it.data + (size_t)r * sh.row_bytes + tc_unit_offset<FMT>(t);
    }
    float tot[NT][4], acc[NT][4], sxg[2] = {0.0f, 0.0f};
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) tot[j][i] = acc[j][i] = 0.0f;
    word w0[NT], w1[NT]; /* chunks c and c + 1 */
    if (active)
#pragma unroll
        for (int j = 0; j < NT; j++) {
            w0[j] = tc_affine_load<FMT>(wp[j]);
            w1[j] = chunks > 1 ? tc_affine_load<FMT>(wp[j] + CB) : w0[j];
        }
    float4 x1 = chunks > 1 ? tc_input(xrow, 1) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (stager) tc_put<FMT>(stage[0], tc_input(xrow, 0));
    __syncthreads();
    uint32_t sb[NT][2][2]; /* the group's scale (0) and offset (1) bits, rows 2t, 2t + 1 */
    for (int c = 0, in_group = 0; c < chunks; c++) {
        if (active && in_group == 0) {
            int grp = c / per_group;
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    size_t row = (size_t)min(r0 + 8 * j + 2 * t + h, it.rows - 1);
                    if constexpr (FMT == FMT_Q4_0) {
                        sb[j][h][0] = __ldg((const unsigned short *)((const uint8_t *)it.data + row * sh.row_bytes +
                                                                     (size_t)grp * (size_t)CB));
                        sb[j][h][1] = 0;
                    } else {
                        size_t i = row * (size_t)groups + (size_t)grp;
                        sb[j][h][0] = load_bits(it.scales, sh.qdtype, i);
                        sb[j][h][1] = load_bits(it.biases, sh.qdtype, i);
                    }
                }
        }
        const bool group_end = ++in_group == per_group;
        if (group_end) in_group = 0;
        float4 x2 = c + 2 < chunks ? tc_input(xrow, c + 2) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (active) {
            uint32_t ahi[2][4], alo[2][4];
            tc_frags(stage[c & 1], ahi, alo);
            sxg[0] = __fadd_rn(sxg[0], stage[c & 1].sx[g]);
            sxg[1] = __fadd_rn(sxg[1], stage[c & 1].sx[g + 8]);
#pragma unroll
            for (int j = 0; j < NT; j++) {
                uint32_t wq[4];
                tc_wraw<FMT> raw;
                float unused_s, unused_b;
                tc_affine_raw<FMT>(w0[j], raw);
                raw.s = raw.b = 0;
                tc_words<FMT>(sh, raw, t, wq, unused_s, unused_b); /* unit t of the chunk */
                w0[j] = w1[j];
                if (c + 2 < chunks) w1[j] = tc_affine_load<FMT>(wp[j] + (size_t)CB * (size_t)(c + 2));
                tc_mma_tile(acc[j], ahi, alo, wq);
                if (group_end) {
                    float s[2], b[2]; /* as tc_words makes them */
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        s[h] = q40 ? half_bits(sb[j][h][0]) : bits_float(sb[j][h][0], sh.qdtype);
                        b[h] = q40 ? 0.0f : bits_float(sb[j][h][1], sh.qdtype);
                    }
                    tc_group_end<FMT>(acc[j], tot[j], s[0], s[1], b[0], b[1], sxg);
                }
            }
            if (group_end) sxg[0] = sxg[1] = 0.0f;
        }
        if (stager && c + 1 < chunks) tc_put<FMT>(stage[(c + 1) & 1], x1);
        x1 = x2;
        __syncthreads();
    }
    if (active) tc_store<NT>(it, t0, r0, routes, tot);
}

/* AFFINE (TC_FIXED formats only): tc_block_affine, its warps NT 8-row tiles each; else
 * tc_block (TC_NT). Separate kernels, so that neither path's registers limit the other's
 * occupancy. */
template <int FMT, bool AFFINE, int NT, int WARPS>
__device__ __forceinline__ void tc_block_any(const mm_shape &sh, const mm_item &it, int t0, const int32_t *routes,
                                             int x_div) {
    static_assert(!AFFINE || TC_FIXED(FMT), "tc_block_affine takes MLX affine and Q4_0 weights only");
    static_assert(AFFINE || (NT == TC_NT && WARPS == TC_WARPS), "tc_block: TC_NT tiles a warp, TC_WARPS warps");
    if constexpr (AFFINE) tc_block_affine<FMT, NT, WARPS>(sh, it, t0, routes, x_div);
    else tc_block<FMT>(sh, it, t0, routes, x_div);
}

/* Blocks an SM should hold: 4 (16 warps) for the affine path on 4-bit weights (MLX, Q4_0),
 * which fits them in 128 registers without spilling. */
#define TC_MIN_BLOCKS(FMT, AFFINE, WARPS) \
    ((AFFINE) && ((FMT) == FMT_A4 || (FMT) == FMT_Q4_0) ? 4 * TC_WARPS / (WARPS) : 1)

template <int FMT, bool AFFINE, int NT = TC_NT, int WARPS = TC_WARPS>
__global__ void __launch_bounds__(WARPS * 32, TC_MIN_BLOCKS(FMT, AFFINE, WARPS)) k_gemm_tc(mm_shape sh, mm_batch b) {
    tc_block_any<FMT, AFFINE, NT, WARPS>(sh, b.it[blockIdx.z], blockIdx.y * TC_TOK, NULL, 1);
}

/* Whether k_gemm_tc takes a launch of this format and shape: integer-valued weights whose
 * scale and offset hold over every 32 columns. */
static int gemm_tc_ok(const cuda_impl *im, int fmt, const mm_shape *sh) {
    if (im->no_tc) return 0;
    if (sh->cols % TC_CHUNK != 0) return 0;
    if (fmt == FMT_A4 || fmt == FMT_A8) return sh->group_size % TC_CHUNK == 0;
    return fmt == FMT_Q4_0 || fmt == FMT_Q8_0 || fmt == FMT_Q4_K || fmt == FMT_Q6_K || fmt == FMT_Q5_K;
}

/* ---- prefill with int8 activations (act_bits 8: lm_backend_cuda_set_act_bits) ----
 * The CPU backend's default for quantized weights (cpu_kernels.h: lm_act8), on the GPU:
 * k_act8_quantize turns each token's inputs into int8 per weight group exactly as
 * lm_act8_quantize does (the same q, dx = max|x| / 127 and xsum, bit for bit: the same
 * 16 running lanes and tree), and k_gemm_a8 multiplies them with the 4-bit weights in
 * mma.m16n8k32 (s8 x s8 -> s32): one MMA per 32 columns where the f32 path (k_gemm_tc)
 * takes four, no staging through shared memory, and a quarter of the input bytes. Per
 * scale group the exact integer sum I becomes y += (s dx) I + b xsum, as on the CPU.
 *
 * Layout of the quantized rows: each 8-column unit u of a row is stored as its even
 * columns, then its odd ones, so that lane (g, t) of a warp reads token g's A fragment
 * for a 32-column chunk as one 8-byte load at unit t (k slots 4t..4t+3 = columns 8t,
 * 8t+2, 8t+4, 8t+6; k slots 16+4t.. = the odd ones), and its weight unit t (8 nibbles,
 * nibble i = column 8t+i) becomes the matching B fragment with a mask and a shift. */
#define A8_LANES 16 /* lm_act8_quantize's running lanes */

__device__ __forceinline__ int act8_pos(int col) {
    int j = col & 7;
    return (col & ~7) + ((j & 1) ? 4 + (j >> 1) : (j >> 1));
}

/* rows x cols inputs (cols a multiple of gs, gs of A8_LANES) -> q[rows][cols] in the
 * layout above (unit_perm; else in column order, for k_gemm_g8) and ds[rows][cols / gs] = (dx, xsum). Half a warp a (row, group); lane
 * k sums columns k, k + 16, ... in order, then the lanes combine as lm_act8_quantize's. */
__global__ void k_act8_quantize(const float *x, int rows, int cols, int gs, int unit_perm, int8_t *q, float2 *ds) {
    int ng = cols / gs;
    size_t total = (size_t)rows * (size_t)ng;
    size_t hw = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / A8_LANES;
    int k = threadIdx.x & (A8_LANES - 1);
    const bool valid = hw < total;
    if (!valid) hw = total - 1; /* every lane takes part in the shuffles */
    size_t row = hw / (size_t)ng;
    int grp = (int)(hw % (size_t)ng);
    const float *xg = x + row * (size_t)cols + (size_t)grp * (size_t)gs;
    float m = 0.0f, s = 0.0f;
    for (int i = k; i < gs; i += A8_LANES) {
        float v = xg[i], a = fabsf(v);
        m = a > m ? a : m;
        s = __fadd_rn(s, v);
    }
    for (int w = A8_LANES / 2; w >= 1; w /= 2) {
        float om = __shfl_down_sync(0xffffffffu, m, w, A8_LANES), os = __shfl_down_sync(0xffffffffu, s, w, A8_LANES);
        m = om > m ? om : m;
        s = __fadd_rn(s, os);
    }
    float amax = __shfl_sync(0xffffffffu, m, 0, A8_LANES), sum = __shfl_sync(0xffffffffu, s, 0, A8_LANES);
    if (!valid) return;
    /* a NaN or infinite input gives NaN or infinite outputs through dx and xsum */
    float inv = amax > 0.0f && amax <= 3.4e38f ? __fdiv_rn(127.0f, amax) : 0.0f;
    int8_t *qr = q + row * (size_t)cols;
    for (int i = k; i < gs; i += A8_LANES) {
        float v = __fmul_rn(xg[i], inv);
        v = v >= -127.0f ? v : v < 0.0f ? -127.0f : 0.0f; /* NaN -> 0 */
        v = v <= 127.0f ? v : 127.0f;
        int col = grp * gs + i;
        qr[unit_perm ? act8_pos(col) : col] = (int8_t)__float2int_rn(v);
    }
    if (k == 0) ds[row * (size_t)ng + (size_t)grp] = make_float2(__fdiv_rn(amax, 127.0f), sum);
}

__device__ __forceinline__ void mma_s8_16x8x32(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* A warp: NT 8-row tiles from row r0 x TC_TOK tokens from t0 of an item of 4-bit affine
 * weights and quantized inputs (it.xq, it.xds). Warps are independent (no shared
 * memory): the block's warps read the same input fragments, which the L1 keeps. The
 * weights and inputs are loaded two chunks ahead of their MMAs (a chunk is a few
 * instructions: the loads' latency is what the loop waits on otherwise). */
template <int NT>
__device__ __forceinline__ void a8_warp(const mm_shape &sh, const mm_item &it, int t0, int r0, const int32_t *routes,
                                        int x_div) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    if (t0 >= it.n || r0 >= it.rows) return;
    const int cols = sh.cols, ng = cols / sh.group_size, per_group = sh.group_size / TC_CHUNK, chunks = cols / TC_CHUNK;
    /* a token past the item's reads the last one, a row past its rows the last row: their
     * outputs are never stored, and an MMA's output depends on its own row and column only */
    size_t xa = tc_row(routes, min(t0 + g, it.n - 1), x_div), xb = tc_row(routes, min(t0 + g + 8, it.n - 1), x_div);
    const int8_t *qa = it.xq + xa * (size_t)cols + 8 * t, *qb = it.xq + xb * (size_t)cols + 8 * t;
    const float2 *da = it.xds + xa * (size_t)ng, *db = it.xds + xb * (size_t)ng;
    const uint8_t *wp[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) {
        int r = min(r0 + 8 * j + g, it.rows - 1);
        wp[j] = (const uint8_t *)it.data + (size_t)r * sh.row_bytes + tc_unit_offset<FMT_A4>(t);
    }
    float tot[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) tot[j][i] = 0.0f;
    uint32_t w0[NT], w1[NT]; /* chunks c and c + 1 */
    uint2 a0, b0, a1, b1;    /* tokens g and g + 8, chunks c and c + 1 */
#pragma unroll
    for (int j = 0; j < NT; j++) {
        w0[j] = __ldg((const uint32_t *)wp[j]);
        w1[j] = chunks > 1 ? __ldg((const uint32_t *)(wp[j] + 16)) : w0[j];
    }
    a0 = __ldg((const uint2 *)qa), b0 = __ldg((const uint2 *)qb);
    a1 = chunks > 1 ? __ldg((const uint2 *)(qa + 32)) : a0, b1 = chunks > 1 ? __ldg((const uint2 *)(qb + 32)) : b0;
    for (int grp = 0, c = 0; grp < ng; grp++) {
        int acc[NT][4];
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[j][i] = 0;
        for (int e = 0; e < per_group; e++, c++) {
            uint32_t w2[NT];
            uint2 a2 = a1, b2 = b1;
#pragma unroll
            for (int j = 0; j < NT; j++) w2[j] = w1[j];
            if (c + 2 < chunks) {
#pragma unroll
                for (int j = 0; j < NT; j++) w2[j] = __ldg((const uint32_t *)(wp[j] + (size_t)16 * (size_t)(c + 2)));
                a2 = __ldg((const uint2 *)(qa + (size_t)32 * (size_t)(c + 2)));
                b2 = __ldg((const uint2 *)(qb + (size_t)32 * (size_t)(c + 2)));
            }
            const uint32_t af[4] = {a0.x, b0.x, a0.y, b0.y};
#pragma unroll
            for (int j = 0; j < NT; j++) {
                mma_s8_16x8x32(acc[j], af, w0[j] & 0x0f0f0f0fu, (w0[j] >> 4) & 0x0f0f0f0fu);
                w0[j] = w1[j], w1[j] = w2[j];
            }
            a0 = a1, b0 = b1, a1 = a2, b1 = b2;
        }
        /* y += (s dx) I + b xsum for the lane's rows 8j + 2t (+1) and tokens g, g + 8 */
        float2 xg[2] = {__ldg(da + grp), __ldg(db + grp)};
#pragma unroll
        for (int j = 0; j < NT; j++) {
            float s[2], o[2];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                size_t k = (size_t)min(r0 + 8 * j + 2 * t + h, it.rows - 1) * (size_t)ng + (size_t)grp;
                s[h] = bits_float(load_bits(it.scales, sh.qdtype, k), sh.qdtype);
                o[h] = bits_float(load_bits(it.biases, sh.qdtype, k), sh.qdtype);
            }
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float2 x2 = xg[i >> 1];
                float v = __fmul_rn(__fmul_rn(s[i & 1], x2.x), (float)acc[j][i]);
                tot[j][i] = __fadd_rn(tot[j][i], __fadd_rn(v, __fmul_rn(o[i & 1], x2.y)));
            }
        }
    }
    tc_store<NT>(it, t0, r0, routes, tot);
}

/* Blocks of TC_ROWS rows x TC_TOK tokens, as k_gemm_tc's: WARPS warps of TC_ROWS / WARPS
 * rows each (4 of 32, or 8 of 16: LAZYMOE_CUDA_A8_WARPS=8, more warps in flight for the
 * same rows). Each output's arithmetic is the same either way. */
#define A8_NT(WARPS) (TC_ROWS / 8 / (WARPS))
#define A8_MIN_BLOCKS(WARPS) ((WARPS) == TC_WARPS ? 4 : 3)
template <int WARPS>
__global__ void __launch_bounds__(WARPS * 32, A8_MIN_BLOCKS(WARPS)) k_gemm_a8(mm_shape sh, mm_batch b) {
    a8_warp<A8_NT(WARPS)>(sh, b.it[blockIdx.z], blockIdx.y * TC_TOK,
                          blockIdx.x * TC_ROWS + (threadIdx.x >> 5) * A8_NT(WARPS) * 8, NULL, 1);
}

/* ---- k_gemm_a8 through shared memory (LAZYMOE_CUDA_A8_SMEM=1: off until measured) ----
 * k_gemm_a8 is latency-bound (ncu, session 23: 29-34% of issue slots busy, a warp
 * waiting 10-13 cycles between instructions): each lane loads its own weight units and
 * inputs from global memory only two chunks ahead, in registers. Here the block's 4
 * warps copy A8S_KC chunks at a time of its 128 weight rows and 16 tokens' inputs into
 * shared memory with cp.async, A8S_STAGES stages deep (two stages, 20 KB, in flight while
 * one is computed), and the warps read their fragments from there: the inputs are loaded
 * from global memory once per block instead of once per warp, and the scales, offsets
 * and (dx, xsum) of the next group are loaded while this one is summed. The arithmetic
 * of every output is k_gemm_a8's -- the same exact integer sum per group, the same
 * epilogue in the same order -- so the bits are the same (tests/cuda/test_cuda.c). */
#define A8S_KC 4     /* chunks a stage holds (128 columns) */
#define A8S_STAGES 3 /* stages in shared memory */
/* A stage's row of weights (A8S_KC x 16 bytes) padded to 80 bytes: a warp's 8 rows x 4
 * lanes then read 32 different banks (row stride 20 words: 20 g mod 32 apart). */
#define A8S_WROW (A8S_KC * 16 + 16)
/* A token's inputs (A8S_KC x 32 bytes) padded to 160 bytes: the 8-byte loads of a
 * half-warp (4 tokens x 4 lanes) then fall in 32 different banks. */
#define A8S_AROW (A8S_KC * 32 + 32)
#define A8S_WBYTES (TC_ROWS * A8S_WROW)
#define A8S_STAGE_BYTES (A8S_WBYTES + TC_TOK * A8S_AROW)
static_assert(A8S_STAGES * A8S_STAGE_BYTES <= 48 * 1024, "k_gemm_a8s: static shared memory");
static_assert(TC_WARPS * 32 == TC_ROWS, "k_gemm_a8s: a thread per weight row in the copies");

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem) {
    unsigned d = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(gmem));
}
__device__ __forceinline__ void cp_async4(void *smem, const void *gmem) {
    unsigned d = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

/* A group's scales and offsets of a lane's rows (as stored) and its tokens' (dx, xsum). */
template <int NT> struct a8s_group {
    uint32_t s[NT][2], b[NT][2];
    float2 x[2];
};

template <int NT>
__device__ __forceinline__ void a8s_load_group(const mm_shape &sh, const mm_item &it, int r0, int grp, int ng,
                                               const float2 *da, const float2 *db, a8s_group<NT> &o) {
    int t = threadIdx.x & 3;
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            size_t k = (size_t)min(r0 + 8 * j + 2 * t + h, it.rows - 1) * (size_t)ng + (size_t)grp;
            o.s[j][h] = load_bits(it.scales, sh.qdtype, k);
            o.b[j][h] = load_bits(it.biases, sh.qdtype, k);
        }
    o.x[0] = __ldg(da + grp);
    o.x[1] = __ldg(db + grp);
}

/* What a thread copies in every stage: with whole stages (A8S_KC chunks) chunk tid % 4
 * of weight rows tid / 4 + 32 i (i < 4) and 16 bytes tid % 8 of token tid / 8's inputs,
 * from these row starts (rows and tokens past the item's clamped to its last); a last,
 * shorter stage spreads its copies over the threads afresh (a8s_issue). */
struct a8s_src {
    const uint8_t *w[TC_ROWS * A8S_KC / (TC_WARPS * 32)];
    const int8_t *a;
};
static_assert(TC_ROWS * A8S_KC / (TC_WARPS * 32) == 4 && TC_TOK * 2 * A8S_KC == TC_WARPS * 32,
              "k_gemm_a8s: the copies' split over the threads");

__device__ __forceinline__ const uint8_t *a8s_wrow(const mm_shape &sh, const mm_item &it, int row0, int row) {
    return (const uint8_t *)it.data + (size_t)min(row0 + row, it.rows - 1) * sh.row_bytes;
}
__device__ __forceinline__ const int8_t *a8s_arow(const mm_shape &sh, const mm_item &it, int t0, int tok,
                                                  const int32_t *routes, int x_div) {
    return it.xq + tc_row(routes, min(t0 + tok, it.n - 1), x_div) * (size_t)sh.cols;
}

__device__ __forceinline__ void a8s_copy_w(uint8_t *dst, const uint8_t *src, bool w16) {
    if (w16) {
        cp_async16(dst, src);
    } else {
#pragma unroll
        for (int i = 0; i < 4; i++) cp_async4(dst + 4 * i, src + 4 * i);
    }
}

/* The copies of chunks c0 .. c0 + kc - 1 into buffer buf. */
__device__ __forceinline__ void a8s_issue(const mm_shape &sh, const mm_item &it, int row0, int t0, const int32_t *routes,
                                          int x_div, const a8s_src &src, int c0, int kc, bool w16, uint8_t *buf) {
    const int tid = threadIdx.x;
    uint8_t *abuf = buf + A8S_WBYTES;
    if (kc == A8S_KC) {
        const int k = tid & 3;
#pragma unroll
        for (int i = 0; i < 4; i++)
            a8s_copy_w(buf + ((tid >> 2) + 32 * i) * A8S_WROW + 16 * k, src.w[i] + (size_t)16 * (size_t)(c0 + k), w16);
        cp_async16(abuf + (tid >> 3) * A8S_AROW + 16 * (tid & 7), src.a + (size_t)32 * (size_t)c0 + (size_t)16 * (size_t)(tid & 7));
        return;
    }
    for (int q = tid; q < TC_ROWS * kc; q += TC_WARPS * 32) {
        int row = q / kc, k = q - row * kc;
        a8s_copy_w(buf + row * A8S_WROW + 16 * k, a8s_wrow(sh, it, row0, row) + (size_t)16 * (size_t)(c0 + k), w16);
    }
    for (int q = tid; q < TC_TOK * 2 * kc; q += TC_WARPS * 32) {
        int tok = q / (2 * kc), k2 = q - tok * 2 * kc;
        cp_async16(abuf + tok * A8S_AROW + 16 * k2,
                   a8s_arow(sh, it, t0, tok, routes, x_div) + (size_t)32 * (size_t)c0 + (size_t)16 * (size_t)k2);
    }
}

/* A block of TC_ROWS rows x TC_TOK tokens from t0 (every thread calls it), rows from
 * row0; warp w computes rows row0 + 8 TC_NT w .. as a8_warp would. */
__device__ __forceinline__ void a8s_block(const mm_shape &sh, const mm_item &it, int t0, int row0,
                                          const int32_t *routes, int x_div) {
    __shared__ __align__(16) uint8_t smem[A8S_STAGES][A8S_STAGE_BYTES];
    if (t0 >= it.n || row0 >= it.rows) return; /* the whole block: uniform */
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, wr = (threadIdx.x >> 5) * TC_NT * 8;
    const int r0 = row0 + wr;
    const int cols = sh.cols, ng = cols / sh.group_size, per_group = sh.group_size / TC_CHUNK, chunks = cols / TC_CHUNK;
    const int stages = (chunks + A8S_KC - 1) / A8S_KC;
    /* 16-byte copies of the weights where their rows are 16-byte aligned (row_bytes is:
     * whole chunks), else 4-byte ones */
    const bool w16 = ((size_t)it.data & 15) == 0;
    a8s_src src;
#pragma unroll
    for (int i = 0; i < 4; i++) src.w[i] = a8s_wrow(sh, it, row0, ((int)threadIdx.x >> 2) + 32 * i);
    src.a = a8s_arow(sh, it, t0, (int)threadIdx.x >> 3, routes, x_div);
    size_t xa = tc_row(routes, min(t0 + g, it.n - 1), x_div), xb = tc_row(routes, min(t0 + g + 8, it.n - 1), x_div);
    const float2 *da = it.xds + xa * (size_t)ng, *db = it.xds + xb * (size_t)ng;
#pragma unroll
    for (int st = 0; st < A8S_STAGES - 1; st++) {
        if (st < stages) {
            int c0 = st * A8S_KC;
            a8s_issue(sh, it, row0, t0, routes, x_div, src, c0, min(A8S_KC, chunks - c0), w16, smem[st]);
        }
        cp_async_commit();
    }
    float tot[TC_NT][4];
    int acc[TC_NT][4];
#pragma unroll
    for (int j = 0; j < TC_NT; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) tot[j][i] = 0.0f, acc[j][i] = 0;
    a8s_group<TC_NT> cur;
    a8s_load_group<TC_NT>(sh, it, r0, 0, ng, da, db, cur);
    a8s_group<TC_NT> next = cur;
    int grp = 0, left = per_group; /* chunks left in the group */
    for (int st = 0; st < stages; st++) {
        cp_async_wait<A8S_STAGES - 2>(); /* this stage's copies (each thread's own) landed */
        __syncthreads();                 /* everyone's, and every warp is done with the buffer refilled next */
        int nx = st + A8S_STAGES - 1;
        if (nx < stages) {
            int c0 = nx * A8S_KC;
            a8s_issue(sh, it, row0, t0, routes, x_div, src, c0, min(A8S_KC, chunks - c0), w16, smem[nx % A8S_STAGES]);
        }
        cp_async_commit();
        const uint8_t *wbuf = smem[st % A8S_STAGES], *abuf = wbuf + A8S_WBYTES;
        const int kc = min(A8S_KC, chunks - st * A8S_KC);
#pragma unroll
        for (int k = 0; k < A8S_KC; k++) {
            if (k >= kc) break;
            uint2 a = *(const uint2 *)(abuf + g * A8S_AROW + 32 * k + 8 * t);
            uint2 b = *(const uint2 *)(abuf + (g + 8) * A8S_AROW + 32 * k + 8 * t);
            const uint32_t af[4] = {a.x, b.x, a.y, b.y};
#pragma unroll
            for (int j = 0; j < TC_NT; j++) {
                uint32_t w = *(const uint32_t *)(wbuf + (wr + 8 * j + g) * A8S_WROW + 16 * k + 4 * t);
                mma_s8_16x8x32(acc[j], af, w & 0x0f0f0f0fu, (w >> 4) & 0x0f0f0f0fu);
            }
            if (--left > 0) continue;
            left = per_group;
            /* the group ends: the next one's scales are loaded before this one is summed */
            if (grp + 1 < ng) a8s_load_group<TC_NT>(sh, it, r0, grp + 1, ng, da, db, next);
            /* y += (s dx) I + b xsum, as a8_warp sums it */
#pragma unroll
            for (int j = 0; j < TC_NT; j++) {
                float sv[2], ov[2];
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    sv[h] = bits_float(cur.s[j][h], sh.qdtype);
                    ov[h] = bits_float(cur.b[j][h], sh.qdtype);
                }
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const float2 x2 = cur.x[i >> 1];
                    float v = __fmul_rn(__fmul_rn(sv[i & 1], x2.x), (float)acc[j][i]);
                    tot[j][i] = __fadd_rn(tot[j][i], __fadd_rn(v, __fmul_rn(ov[i & 1], x2.y)));
                    acc[j][i] = 0;
                }
            }
            cur = next;
            grp++;
        }
    }
    cp_async_wait<0>(); /* no copy outlives the block (the last stages commit empty groups) */
    if (r0 < it.rows) tc_store<TC_NT>(it, t0, r0, routes, tot);
}

__global__ void __launch_bounds__(TC_WARPS * 32, 4) k_gemm_a8s(mm_shape sh, mm_batch b) {
    a8s_block(sh, b.it[blockIdx.z], blockIdx.y * TC_TOK, blockIdx.x * TC_ROWS, NULL, 1);
}

/* ---- prefill with int8 activations for ggml block weights (act_bits 8: k_gemm_g8) ----
 * The CPU's form (kernels/cpu/qblock.h): the inputs quantized per 32 columns, in column
 * order (k_act8_quantize without the unit permutation); each 32-value group of a weight
 * row read as w_i = a16[i / 16] (u_i - off) + b; per group
 *     y += (a16_0 dx) I_0;  y += (a16_1 dx) I_1;  y += b xsum
 * with I_h the exact integer sum of half h -- in that order, so the bits are those of
 * lm_qblock_dot_act8 (the CPU's scalar reference). u - off fits a signed byte for every
 * type here, so each half is one mma.m16n8k16 s8 on the codes as they are. */
#define G8_FMT(F) ((F) == FMT_Q4_0 || (F) == FMT_Q8_0 || (F) == FMT_Q4_K || (F) == FMT_Q5_K || (F) == FMT_Q6_K)

__device__ __forceinline__ void mma_s8_16x8x16(int (&d)[4], uint32_t a0, uint32_t a1, uint32_t b0) {
    asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a0), "r"(a1), "r"(b0));
}

/* 4 bytes at a 2-byte aligned address (the 18-, 34- and 210-byte blocks) */
__device__ __forceinline__ uint32_t u32_at2(const uint8_t *p) { return u16_at(p) | u16_at(p + 2) << 16; }

/* Lane t's codes u - off of group c of a row: columns 4t .. 4t + 3 (b0) and 16 + 4t ..
 * (b1), as qblock.c's lm_qblock_group reads them. */
template <int FMT>
__device__ __forceinline__ void g8_codes(const uint8_t *row, int c, int t, uint32_t &b0, uint32_t &b1) {
    if constexpr (FMT == FMT_Q4_0) { /* u: nibbles (column i low, 16 + i high), off 8 */
        uint32_t w = u32_at2(row + (size_t)c * 18 + 2 + 4 * t);
        b0 = __vsub4(w & 0x0f0f0f0fu, 0x08080808u);
        b1 = __vsub4((w >> 4) & 0x0f0f0f0fu, 0x08080808u);
    } else if constexpr (FMT == FMT_Q8_0) { /* the signed bytes themselves (u = k + 128, off 128) */
        const uint8_t *qs = row + (size_t)c * 34 + 2;
        b0 = u32_at2(qs + 4 * t);
        b1 = u32_at2(qs + 16 + 4 * t);
    } else if constexpr (FMT == FMT_Q4_K || FMT == FMT_Q5_K) { /* sub-block j's nibbles (+ qh bit j), off 0 */
        const int j = c % 8;
        const uint8_t *blk = row + (size_t)(c / 8) * (FMT == FMT_Q4_K ? 144 : 176);
        const uint8_t *qs = blk + (FMT == FMT_Q4_K ? 16 : 48) + (j / 2) * 32;
        const int sh = (j & 1) * 4;
        b0 = (__ldg((const uint32_t *)(qs + 4 * t)) >> sh) & 0x0f0f0f0fu;
        b1 = (__ldg((const uint32_t *)(qs + 16 + 4 * t)) >> sh) & 0x0f0f0f0fu;
        if constexpr (FMT == FMT_Q5_K) {
            b0 |= ((__ldg((const uint32_t *)(blk + 16 + 4 * t)) >> j) & 0x01010101u) << 4;
            b1 |= ((__ldg((const uint32_t *)(blk + 32 + 4 * t)) >> j) & 0x01010101u) << 4;
        }
    } else { /* FMT_Q6_K: group j = 4h + k: ql nibble k / 2 with qh bits 2k, off 32 */
        const int j = c % 8, h = j / 4, k = j % 4, ls = (k >> 1) * 4, hs = 2 * k;
        const uint8_t *blk = row + (size_t)(c / 8) * 210;
        const uint8_t *ql = blk + 64 * h + 32 * (k & 1), *qh = blk + 128 + 32 * h;
        uint32_t l0 = u32_at2(ql + 4 * t), l1 = u32_at2(ql + 16 + 4 * t);
        uint32_t h0 = u32_at2(qh + 4 * t), h1 = u32_at2(qh + 16 + 4 * t);
        b0 = __vsub4(((l0 >> ls) & 0x0f0f0f0fu) | (((h0 >> hs) & 0x03030303u) << 4), 0x20202020u);
        b1 = __vsub4(((l1 >> ls) & 0x0f0f0f0fu) | (((h1 >> hs) & 0x03030303u) << 4), 0x20202020u);
    }
}

/* Group c of a row's half scales and its b (lm_qblock_group's a16[2] and b). */
template <int FMT> __device__ __forceinline__ void g8_scales(const uint8_t *row, int c, float (&a16)[2], float &b) {
    b = 0.0f;
    if constexpr (FMT == FMT_Q4_0 || FMT == FMT_Q8_0) {
        a16[0] = a16[1] = half_bits(u16_at(row + (size_t)c * (FMT == FMT_Q4_0 ? 18 : 34)));
    } else if constexpr (FMT == FMT_Q4_K || FMT == FMT_Q5_K) {
        const int j = c % 8;
        const uint8_t *blk = row + (size_t)(c / 8) * (FMT == FMT_Q4_K ? 144 : 176);
        uint32_t sc, mn;
        q4k_scale_min(blk + 4, j, sc, mn);
        a16[0] = a16[1] = half_bits(u16_at(blk)) * (float)sc;
        b = -(half_bits(u16_at(blk + 2)) * (float)mn);
    } else { /* FMT_Q6_K */
        const int j = c % 8;
        const uint8_t *blk = row + (size_t)(c / 8) * 210;
        const float d = half_bits(u16_at(blk + 208));
        a16[0] = d * (float)(int8_t)blk[192 + 2 * j];
        a16[1] = d * (float)(int8_t)blk[192 + 2 * j + 1];
    }
}

/* A warp: NT 8-row tiles from row r0 x TC_TOK tokens from t0, as a8_warp, for ggml block
 * weights; each lane's weight codes loaded a group ahead. */
template <int FMT, int NT>
__device__ __forceinline__ void g8_warp(const mm_shape &sh, const mm_item &it, int t0, int r0, const int32_t *routes,
                                        int x_div) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    if (t0 >= it.n || r0 >= it.rows) return;
    const int cols = sh.cols, groups = cols / 32;
    size_t xa = tc_row(routes, min(t0 + g, it.n - 1), x_div), xb = tc_row(routes, min(t0 + g + 8, it.n - 1), x_div);
    const int8_t *qa = it.xq + xa * (size_t)cols + 4 * t, *qb = it.xq + xb * (size_t)cols + 4 * t;
    const float2 *da = it.xds + xa * (size_t)groups, *db = it.xds + xb * (size_t)groups;
    const uint8_t *wrow[NT], *srow[NT][2]; /* the lane's B row (8j + g), its outputs' rows (8j + 2t + h) */
#pragma unroll
    for (int j = 0; j < NT; j++) {
        wrow[j] = (const uint8_t *)it.data + (size_t)min(r0 + 8 * j + g, it.rows - 1) * sh.row_bytes;
#pragma unroll
        for (int h = 0; h < 2; h++)
            srow[j][h] = (const uint8_t *)it.data + (size_t)min(r0 + 8 * j + 2 * t + h, it.rows - 1) * sh.row_bytes;
    }
    float tot[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) tot[j][i] = 0.0f;
    uint32_t w0[NT], w1[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) g8_codes<FMT>(wrow[j], 0, t, w0[j], w1[j]);
    for (int c = 0; c < groups; c++) {
        uint32_t n0[NT], n1[NT];
#pragma unroll
        for (int j = 0; j < NT; j++) n0[j] = w0[j], n1[j] = w1[j];
        if (c + 1 < groups) {
#pragma unroll
            for (int j = 0; j < NT; j++) g8_codes<FMT>(wrow[j], c + 1, t, n0[j], n1[j]);
        }
        const uint32_t a0 = __ldg((const uint32_t *)(qa + (size_t)32 * (size_t)c)),
                       a1 = __ldg((const uint32_t *)(qb + (size_t)32 * (size_t)c)),
                       a2 = __ldg((const uint32_t *)(qa + (size_t)32 * (size_t)c + 16)),
                       a3 = __ldg((const uint32_t *)(qb + (size_t)32 * (size_t)c + 16));
        const float2 xg[2] = {__ldg(da + c), __ldg(db + c)};
#pragma unroll
        for (int j = 0; j < NT; j++) {
            int i0[4] = {0, 0, 0, 0}, i1[4] = {0, 0, 0, 0};
            mma_s8_16x8x16(i0, a0, a1, w0[j]);
            mma_s8_16x8x16(i1, a2, a3, w1[j]);
            float a16[2][2], bb[2];
#pragma unroll
            for (int h = 0; h < 2; h++) g8_scales<FMT>(srow[j][h], c, a16[h], bb[h]);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float2 x2 = xg[i >> 1];
                float v = __fadd_rn(tot[j][i], __fmul_rn(__fmul_rn(a16[i & 1][0], x2.x), (float)i0[i]));
                v = __fadd_rn(v, __fmul_rn(__fmul_rn(a16[i & 1][1], x2.x), (float)i1[i]));
                tot[j][i] = __fadd_rn(v, __fmul_rn(bb[i & 1], x2.y));
            }
            w0[j] = n0[j], w1[j] = n1[j];
        }
    }
    tc_store<NT>(it, t0, r0, routes, tot);
}

template <int FMT>
__global__ void __launch_bounds__(TC_WARPS * 32, 4) k_gemm_g8(mm_shape sh, mm_batch b) {
    g8_warp<FMT, TC_NT>(sh, b.it[blockIdx.z], blockIdx.y * TC_TOK, blockIdx.x * TC_ROWS + (threadIdx.x >> 5) * TC_NT * 8,
                        NULL, 1);
}

/* Whether k_gemm_a8's blocks are of 8 warps (LAZYMOE_CUDA_A8_WARPS=8), and their threads. */
static int a8_wide(const cuda_impl *im) { return im->a8_warps == 2 * TC_WARPS && !im->a8_smem; }
static unsigned a8_block_threads(const cuda_impl *im) { return (a8_wide(im) ? 2 : 1) * TC_WARPS * 32; }

/* Whether a launch takes k_gemm_a8: int8 activations asked for, MLX 4-bit weights whose
 * groups are whole chunks; other formats keep f32 activations (k_gemm_tc). */
static int gemm_a8_ok(const cuda_impl *im, int fmt, const mm_shape *sh) {
    return im->act_bits == 8 && fmt == FMT_A4 && gemm_tc_ok(im, fmt, sh) && sh->group_size % TC_CHUNK == 0;
}
/* Whether it takes k_gemm_g8: int8 activations asked for, ggml block weights of a type
 * it reads (LAZYMOE_CUDA_G8=0: the f32 path, for A/B). */
static int gemm_g8_ok(const cuda_impl *im, int fmt, const mm_shape *sh) {
    return im->act_bits == 8 && !im->no_g8 && G8_FMT(fmt) && !im->no_tc && sh->cols % 32 == 0;
}
/* Either int8 path; the quantized inputs' group size and layout for it. */
static int gemm_int8_ok(const cuda_impl *im, int fmt, const mm_shape *sh) {
    return gemm_a8_ok(im, fmt, sh) || gemm_g8_ok(im, fmt, sh);
}
static int int8_group(int fmt, const mm_shape *sh) { return fmt == FMT_A4 ? sh->group_size : 32; }
static int int8_unit_perm(int fmt) { return fmt == FMT_A4; }

/* Tokens from which an item goes to k_gemm (below: k_gemv, which reads each weight
 * once per GV_TOK tokens). */
#define GEMM_MIN_TOKENS 8
static_assert(GEMM_MIN_TOKENS == LM_CUDA_ACT8_MIN_TOKENS, "the CPU's --cpu-experts scope of int8 follows this");
static_assert(LM_ROUTED_MAX_TOKENS < GEMM_MIN_TOKENS, "moe_routed's experts must take k_gemv on the host-routed path too");

typedef void (*mm_kernel)(mm_shape, mm_batch);
typedef void (*mm_grouped_kernel)(mm_shape, const mm_desc *, int, const int32_t *, const int32_t *, const int2 *,
                                  const int32_t *, const float *, int, float *, float *);
/* moe_routed's gate and up products and the SwiGLU of the two in one launch: a warp
 * computes its rows of both (gemv_body, as the separate products do), then the lane
 * that wrote them computes g = silu(g) * u as k_swiglu does. */
template <int FMT>
__device__ __forceinline__ void routed_swiglu_one(const mm_shape &sh, const mm_desc *tab, const int32_t *sel, int r,
                                                  const float *x, int x_div, float *g, float *u) {
    int e = sel[r];
    mm_item it;
    it.x = x + (size_t)(r / x_div) * (size_t)sh.cols;
    it.n = 1;
    it.rows = sh.rows;
    if (affine_one_ok<FMT>(sh)) {
        /* a warp's gate and up rows together (4 rows, one pass over the input, all their
         * loads in flight at once), each summed as gemv_affine_one sums it */
        int r0 = (blockIdx.x * GV_WARPS + threadIdx.x / 32) * GV_ROWS;
        if (r0 >= sh.rows) return;
        const uint8_t *wrow[2 * GV_ROWS];
        const uint16_t *srow[2 * GV_ROWS], *brow[2 * GV_ROWS];
        for (int mat = 0; mat < 2; mat++) {
            const mm_desc &d = tab[(size_t)e * 3 + (size_t)mat];
            it.data = d.data;
            it.scales = d.scales;
            it.biases = d.biases;
#pragma unroll
            for (int a = 0; a < GV_ROWS; a++)
                affine_row(sh, it, r0 + a < sh.rows ? r0 + a : r0, wrow[mat * GV_ROWS + a], srow[mat * GV_ROWS + a],
                           brow[mat * GV_ROWS + a]);
        }
        float v[2 * GV_ROWS];
        affine_rows<FMT, 2 * GV_ROWS>(sh, wrow, srow, brow, it.x, __ffs(sh.group_size) - 1, sh.qdtype == LM_DT_BF16, v);
        if (threadIdx.x % 32 != 0) return;
        for (int a = 0; a < GV_ROWS && r0 + a < sh.rows; a++) {
            size_t i = (size_t)r * (size_t)sh.rows + (size_t)(r0 + a);
            float ga = v[a], ua = v[GV_ROWS + a];
            u[i] = ua;
            g[i] = ga / (1.0f + expf(-ga)) * ua;
        }
        return;
    }
    for (int mat = 0; mat < 2; mat++) {
        const mm_desc &d = tab[(size_t)e * 3 + (size_t)mat];
        it.data = d.data;
        it.scales = d.scales;
        it.biases = d.biases;
        it.y = (mat ? u : g) + (size_t)r * (size_t)sh.rows;
        gemv_body<FMT, 1>(sh, it);
    }
    int r0 = (blockIdx.x * GV_WARPS + threadIdx.x / 32) * GV_ROWS;
    if (threadIdx.x % 32 != 0) return;
    for (int a = 0; a < GV_ROWS && r0 + a < sh.rows; a++) {
        size_t i = (size_t)r * (size_t)sh.rows + (size_t)(r0 + a);
        float ga = g[i];
        g[i] = ga / (1.0f + expf(-ga)) * u[i];
    }
}

template <int FMT>
__global__ void __launch_bounds__(GV_WARPS * 32) k_gemv_routed_swiglu(mm_shape sh, const mm_desc *tab,
                                                                       const int32_t *sel, const float *x, int x_div,
                                                                       float *g, float *u) {
    routed_swiglu_one<FMT>(sh, tab, sel, (int)blockIdx.y, x, x_div, g, u);
}

template <int FMT>
__global__ void __launch_bounds__(GV_WARPS * 32) k_gemv_routed_swiglu_list(mm_shape sh, const mm_desc *tab,
                                                                            const int32_t *sel, const int32_t *list,
                                                                            const int32_t *n_list, const float *x,
                                                                            int x_div, float *g, float *u) {
    for (int i = (int)blockIdx.y; i < *n_list; i += (int)gridDim.y)
        routed_swiglu_one<FMT>(sh, tab, sel, list[i], x, x_div, g, u);
}

/* A fast format as a type, and the one switch over them all: of_fmt(fmt, f) is
 * f(fmt_tag<fmt>{}), f a generic lambda naming a kernel template of that format
 * (kernel families that every fast format has; the tensor-core ones list theirs). */
template <int F> struct fmt_tag {
    static constexpr int value = F;
};
template <typename Fn> static auto of_fmt(int fmt, Fn f) {
    switch (fmt) {
    case FMT_F32: return f(fmt_tag<FMT_F32>{});
    case FMT_F16: return f(fmt_tag<FMT_F16>{});
    case FMT_BF16: return f(fmt_tag<FMT_BF16>{});
    case FMT_A4: return f(fmt_tag<FMT_A4>{});
    case FMT_A8: return f(fmt_tag<FMT_A8>{});
    case FMT_Q4_0: return f(fmt_tag<FMT_Q4_0>{});
    case FMT_Q8_0: return f(fmt_tag<FMT_Q8_0>{});
    case FMT_Q4_K: return f(fmt_tag<FMT_Q4_K>{});
    case FMT_Q6_K: return f(fmt_tag<FMT_Q6_K>{});
    default: return f(fmt_tag<FMT_Q5_K>{});
    }
}
#define KERNEL_OF_FMT(K, fmt) of_fmt(fmt, [](auto tag) { return K<decltype(tag)::value>; })

typedef void (*routed_swiglu_kernel)(mm_shape, const mm_desc *, const int32_t *, const float *, int, float *, float *);
typedef void (*routed_swiglu_list_kernel)(mm_shape, const mm_desc *, const int32_t *, const int32_t *,
                                          const int32_t *, const float *, int, float *, float *);
typedef void (*routed_kernel)(mm_shape, const mm_desc *, int, const int32_t *, const float *, int, float *, float *);
typedef void (*routed_list_kernel)(mm_shape, const mm_desc *, int, const int32_t *, const int32_t *, const int32_t *,
                                   const float *, int, float *, float *);
static routed_swiglu_kernel routed_swiglu_kernel_of(int fmt) { return KERNEL_OF_FMT(k_gemv_routed_swiglu, fmt); }
static routed_swiglu_list_kernel routed_swiglu_list_kernel_of(int fmt) {
    return KERNEL_OF_FMT(k_gemv_routed_swiglu_list, fmt);
}
static routed_kernel routed_kernel_of(int fmt) { return KERNEL_OF_FMT(k_gemv_routed, fmt); }
static routed_list_kernel routed_list_kernel_of(int fmt) { return KERNEL_OF_FMT(k_gemv_routed_list, fmt); }

template <int NT> static mm_kernel gemv_kernel_of(int fmt) {
    return of_fmt(fmt, [](auto tag) { return (mm_kernel)k_gemv<decltype(tag)::value, NT>; });
}
static mm_kernel gemv_kernel(int fmt, int max_n) { return max_n == 1 ? gemv_kernel_of<1>(fmt) : gemv_kernel_of<GV_TOK>(fmt); }

typedef void (*mm_few_kernel)(mm_shape, mm_few);
template <int NT> static mm_few_kernel gemv_few_kernel_of(int fmt) {
    return of_fmt(fmt, [](auto tag) { return (mm_few_kernel)k_gemv_few<decltype(tag)::value, NT>; });
}
static mm_few_kernel gemv_few_kernel(int fmt, int max_n) {
    return max_n == 1 ? gemv_few_kernel_of<1>(fmt) : gemv_few_kernel_of<GV_TOK>(fmt);
}
/* k_gemm in its tile shapes: 256 rows x 16 tokens or 128 x 32 (a layer's experts in
 * a prefill chunk of 256 tokens: 16 routes each on average), or 64 x 64. */
template <int TR, int TT> static mm_kernel gemm_kernel_of(int fmt) {
    return of_fmt(fmt, [](auto tag) { return (mm_kernel)k_gemm<decltype(tag)::value, TR, TT>; });
}
static mm_kernel gemm_kernel(int fmt, int tt) {
    return tt == 16 ? gemm_kernel_of<256, 16>(fmt) : tt == 32 ? gemm_kernel_of<128, 32>(fmt) : gemm_kernel_of<64, 64>(fmt);
}
/* Whether a format takes k_gemm_tc's affine path (tc_block_affine): MLX affine weights
 * unless LAZYMOE_CUDA_TC_GENERIC=1, Q4_0 with LAZYMOE_CUDA_TC_Q4_0=1; else tc_block. */
static int tc_affine(const cuda_impl *im, int fmt) {
    return !im->tc_generic && (fmt == FMT_A4 || fmt == FMT_A8 || (fmt == FMT_Q4_0 && im->tc_q40));
}
/* affine: tc_affine's answer; narrow: its warps one 8-row tile each (TC_NARROW_ROWS rows a
 * block); wide: its blocks of 2 TC_WARPS warps (TC_WIDE_ROWS rows) */
#define TC_KERNEL(F)                                                                                                  \
    (!affine   ? k_gemm_tc<F, false>                                                                                  \
     : narrow ? k_gemm_tc<F, true, 1>                                                                                 \
     : wide   ? k_gemm_tc<F, true, TC_NT, 2 * TC_WARPS>                                                               \
              : k_gemm_tc<F, true>)
static mm_kernel gemm_tc_kernel_of(int fmt, int affine, int narrow, int wide) {
    switch (fmt) {
    case FMT_A4: return TC_KERNEL(FMT_A4);
    case FMT_A8: return TC_KERNEL(FMT_A8);
    case FMT_Q4_0: return TC_KERNEL(FMT_Q4_0);
    case FMT_Q8_0: return k_gemm_tc<FMT_Q8_0, false>;
    case FMT_Q4_K: return k_gemm_tc<FMT_Q4_K, false>;
    case FMT_Q6_K: return k_gemm_tc<FMT_Q6_K, false>;
    default: return k_gemm_tc<FMT_Q5_K, false>;
    }
}
#undef TC_KERNEL
static const char *fmt_name(int fmt, int gemm) {
    static const char *gv[] = {"", "gemv f32", "gemv f16", "gemv bf16", "gemv affine4", "gemv affine8", "gemv q4_0",
                               "gemv q8_0", "gemv q4_k", "gemv q6_k", "gemv q5_k"};
    static const char *gm[] = {"", "gemm f32", "gemm f16", "gemm bf16", "gemm affine4", "gemm affine8", "gemm q4_0",
                               "gemm q8_0", "gemm q4_k", "gemm q6_k", "gemm q5_k"};
    static const char *tc[] = {"", "", "", "", "gemm_tc affine4", "gemm_tc affine8", "gemm_tc q4_0", "gemm_tc q8_0",
                               "gemm_tc q4_k", "gemm_tc q6_k", "gemm_tc q5_k"};
    return gemm == 2 ? tc[fmt] : gemm ? gm[fmt] : gv[fmt];
}

/* Tokens from which the tiled kernel is used: below it the row kernel reads the
 * weights fewer times than it takes to fill a tile. */
#define TILED_MIN_TOKENS 32

/* The reference kernels (phase 1): any weight type. */
static int matmul_simple(lm_backend *be, const wdesc *d, float *y, const float *x, int n) {
    cuda_impl *im = impl_of(be);
    if (n >= TILED_MIN_TOKENS) {
        dim3 grid(blocks_for((size_t)d->rows, GT), blocks_for((size_t)n, GT));
        if (grid.y > 65535u) return lm_errf(be->err, "matmul of %d tokens in one call", n);
        tim_begin(im);
        k_matmul_tiled<<<grid, 256, 0, im->stream>>>(*d, x, y, n);
        return launched(be, "matmul simple tiled");
    }
    dim3 grid(blocks_for((size_t)d->rows, MM_WARPS), blocks_for((size_t)n, MM_TOK));
    tim_begin(im);
    k_matmul_rows<<<grid, MM_WARPS * 32, 0, im->stream>>>(*d, x, y, n);
    return launched(be, "matmul simple rows");
}

/* Items waiting for one fast launch: all of one shape and format. */
typedef struct {
    mm_shape sh;
    int fmt, dtype, bits, count, max_n;
    mm_batch b;
} mm_pending;

static int same_shape(const mm_pending *p, const wdesc *d, int fmt) {
    return p->count > 0 && p->fmt == fmt && p->dtype == d->dtype && p->bits == d->bits && p->sh.cols == d->cols && p->sh.group_size == d->group_size && p->sh.qdtype == d->qdtype &&
           p->sh.row_bytes == d->row_bytes;
}

/* k_gemm's token tile for items of up to n tokens. */
static int tile_tokens(int n) {
    if (n <= 16) return 16;
    return n <= 32 || (n % 64 != 0 && n % 64 <= 32) ? 32 : 64;
}

static int grow_scratch(lm_backend *be, void **buf, size_t *have, size_t bytes, size_t least, const char *what);

/* Bytes of int8 activations for rows x cols inputs of group size gs: the values, then a
 * (dx, xsum) pair per group. */
static size_t act8_bytes(size_t rows, int cols, int gs) {
    return align_up(rows * (size_t)cols, 256) + align_up(rows * (size_t)(cols / gs) * sizeof(float2), 256);
}

/* k_act8_quantize of x[rows][cols] into the int8 activations' scratch at byte `at`
 * (act8_bytes of room there); *q and *ds get where its values and pairs went. */
static int act8_quantize(lm_backend *be, const float *x, int rows, int cols, int gs, int unit_perm, size_t at,
                         const int8_t **q, const float2 **ds) {
    cuda_impl *im = impl_of(be);
    uint8_t *base = (uint8_t *)im->a8 + at;
    *q = (const int8_t *)base;
    *ds = (const float2 *)(base + align_up((size_t)rows * (size_t)cols, 256));
    size_t threads = (size_t)rows * (size_t)(cols / gs) * A8_LANES;
    if (!threads) return 0;
    tim_begin(im);
    k_act8_quantize<<<blocks_for(threads, EW_THREADS), EW_THREADS, 0, im->stream>>>(x, rows, cols, gs, unit_perm, (int8_t *)*q,
                                                                                      (float2 *)*ds);
    return launched(be, "int8 activations");
}

/* The int8 activations' scratch: at least `bytes` (set_act_bits makes it as large as the
 * engine's largest chunk needs, so it grows only for callers that pass more). */
static int act8_scratch(lm_backend *be, size_t bytes) {
    cuda_impl *im = impl_of(be);
    if (grow_scratch(be, &im->a8, &im->a8_bytes, bytes, bytes, "int8 activations") != 0)
        return lm_errf(be->err, "no GPU memory for %zu bytes of int8 activations (give --act-bits 32, or more --gpu-memory)",
                       bytes);
    return 0;
}

/* The int8 GEMM of a format (gemm_int8_ok): k_gemm_a8 in its block shape or k_gemm_a8s
 * for MLX 4-bit, k_gemm_g8 for a ggml block type; and the grouped ones. */
static mm_kernel int8_kernel_of(const cuda_impl *im, int fmt) {
    switch (fmt) {
    case FMT_A4: return im->a8_smem ? k_gemm_a8s : a8_wide(im) ? k_gemm_a8<2 * TC_WARPS> : k_gemm_a8<TC_WARPS>;
    case FMT_Q4_0: return k_gemm_g8<FMT_Q4_0>;
    case FMT_Q8_0: return k_gemm_g8<FMT_Q8_0>;
    case FMT_Q4_K: return k_gemm_g8<FMT_Q4_K>;
    case FMT_Q5_K: return k_gemm_g8<FMT_Q5_K>;
    default: return k_gemm_g8<FMT_Q6_K>;
    }
}
static unsigned int8_block_threads(const cuda_impl *im, int fmt) {
    return fmt == FMT_A4 ? a8_block_threads(im) : TC_WARPS * 32;
}

/* mm_flush's int8 launch: each item's inputs quantized into the scratch (an item
 * with the inputs of the one before, q, k and v, reuses its), as many items a launch
 * as the scratch holds; which items share a launch does not change a result. */
static int mm_flush_int8(lm_backend *be, const mm_pending *p, int count) {
    cuda_impl *im = impl_of(be);
    const mm_shape &sh = p->sh;
    const int gs = int8_group(p->fmt, &sh), perm = int8_unit_perm(p->fmt);
    size_t most = 0;
    for (int i = 0; i < count; i++) {
        size_t need = act8_bytes((size_t)p->b.it[i].n, sh.cols, gs);
        if (need > most) most = need;
    }
    if (act8_scratch(be, most) != 0) return -1;
    mm_batch b = p->b;
    size_t used = 0;
    int start = 0;
    for (int i = 0; i <= count; i++) {
        mm_item *m = &b.it[i < count ? i : 0];
        int same = i > start && i < count && m->x == b.it[i - 1].x && m->n == b.it[i - 1].n;
        size_t need = i < count && !same ? act8_bytes((size_t)m->n, sh.cols, gs) : 0;
        if (i == count || used + need > im->a8_bytes) { /* launch items start .. i-1 */
            int max_n = 0;
            mm_batch part;
            for (int k = start; k < i; k++) {
                part.it[k - start] = b.it[k];
                if (b.it[k].n > max_n) max_n = b.it[k].n;
            }
            dim3 grid(blocks_for((size_t)sh.rows, TC_ROWS), blocks_for((size_t)max_n, TC_TOK), (unsigned)(i - start));
            if (grid.y > 65535u) return lm_errf(be->err, "matmul of %d tokens in one call", max_n);
            tim_begin(im);
            int8_kernel_of(im, p->fmt)<<<grid, int8_block_threads(im, p->fmt), 0, im->stream>>>(sh, part);
            if (launched(be, p->fmt == FMT_A4 ? "gemm_a8 affine4" : "gemm_g8") != 0) return -1;
            if (i == count) break;
            start = i;
            used = 0;
        }
        if (same) {
            m->xq = b.it[i - 1].xq;
            m->xds = b.it[i - 1].xds;
            continue;
        }
        if (act8_quantize(be, m->x, m->n, sh.cols, gs, perm, used, &m->xq, &m->xds) != 0) return -1;
        used += need;
    }
    return 0;
}

static int mm_flush(lm_backend *be, mm_pending *p, int gemm) {
    if (!p->count) return 0;
    cuda_impl *im = impl_of(be);
    int count = p->count;
    p->count = 0;
    im->fast_launches++;
    if (gemm && gemm_int8_ok(im, p->fmt, &p->sh)) return mm_flush_int8(be, p, count);
    if (gemm && gemm_tc_ok(im, p->fmt, &p->sh)) {
        /* a launch of too few blocks to fill the GPU twice (the router: 128 rows) takes the
         * affine path's narrow blocks, 4 times as many; each output's arithmetic is the same */
        unsigned tiles = blocks_for((size_t)p->max_n, TC_TOK) * (unsigned)count;
        int affine = tc_affine(im, p->fmt);
        int narrow = affine && (im->tc_narrow ? im->tc_narrow == 1
                                              : (size_t)blocks_for((size_t)p->sh.rows, TC_ROWS) * tiles <
                                                    2u * (size_t)im->sm_count);
        int wide = affine && !narrow && im->tc_wide;
        dim3 grid(blocks_for((size_t)p->sh.rows, tc_block_rows(narrow, wide)), blocks_for((size_t)p->max_n, TC_TOK),
                  (unsigned)count);
        if (grid.y > 65535u) return lm_errf(be->err, "matmul of %d tokens in one call", p->max_n);
        tim_begin(im);
        mm_kernel k = gemm_tc_kernel_of(p->fmt, affine, narrow, wide);
        k<<<grid, tc_block_threads(wide), 0, im->stream>>>(p->sh, p->b);
        return launched(be, fmt_name(p->fmt, 2));
    }
    if (gemm) {
        /* token tiles of 16 or 32 where they waste less than tiles of 64 (the result
         * is the same either way: see k_gemm) */
        int tt = tile_tokens(p->max_n), tr = 4096 / tt;
        dim3 grid(blocks_for((size_t)p->sh.rows, (unsigned)tr), blocks_for((size_t)p->max_n, (unsigned)tt), (unsigned)count);
        if (grid.y > 65535u) return lm_errf(be->err, "matmul of %d tokens in one call", p->max_n);
        tim_begin(im);
        gemm_kernel(p->fmt, tt)<<<grid, 256, 0, im->stream>>>(p->sh, p->b);
        return launched(be, fmt_name(p->fmt, 1));
    }
    dim3 grid(blocks_for((size_t)p->sh.rows, GV_WARPS * GV_ROWS), (unsigned)count);
    if (count <= MM_FEW_ITEMS) {
        mm_few few;
        memset(&few, 0, sizeof few);
        memcpy(few.it, p->b.it, sizeof(mm_item) * (size_t)count);
        tim_begin(im);
        gemv_few_kernel(p->fmt, p->max_n)<<<grid, GV_WARPS * 32, 0, im->stream>>>(p->sh, few);
        return launched(be, fmt_name(p->fmt, 0));
    }
    tim_begin(im);
    gemv_kernel(p->fmt, p->max_n)<<<grid, GV_WARPS * 32, 0, im->stream>>>(p->sh, p->b);
    return launched(be, fmt_name(p->fmt, 0));
}

/* Every item: the fast kernels where the weights have a fast format (consecutive
 * items of one shape in one launch: a layer's experts), the reference ones else. */
static int cuda_matmul_batch(lm_backend *be, const lm_matmul_item *items, int count) {
    cuda_impl *im = impl_of(be);
    /* [0]: k_gemv; [1], [2], [3]: k_gemm with token tiles of 16, 32, 64 (each item in
     * the launch whose tile suits its own token count: a layer's experts differ) */
    mm_pending pend[4];
    for (int k = 0; k < 4; k++) pend[k].count = 0;
    for (int i = 0; i < count; i++) {
        const lm_matmul_item *it = &items[i];
        wdesc d;
        if (weight_view(be, it->W, &d) != 0) return -1;
        if (it->n <= 0 || d.rows == 0) continue;
        int fmt = im->simple ? FMT_NONE : fast_format(&d);
        if (fmt != FMT_NONE && ((uintptr_t)it->x % 16 != 0 || (uintptr_t)it->y % 4 != 0)) fmt = FMT_NONE;
        if (fmt == FMT_NONE) {
            if (matmul_simple(be, &d, it->y, it->x, it->n) != 0) return -1;
            continue;
        }
        int g = it->n < GEMM_MIN_TOKENS ? 0 : (tile_tokens(it->n) == 16 ? 1 : tile_tokens(it->n) == 32 ? 2 : 3);
        mm_pending *p = &pend[g];
        if (p->count == MM_MAX_ITEMS || (p->count && !same_shape(p, &d, fmt)))
            if (mm_flush(be, p, g > 0) != 0) return -1;
        if (!p->count) {
            p->sh.rows = 0;
            p->sh.cols = d.cols;
            p->sh.group_size = d.group_size;
            p->sh.qdtype = d.qdtype;
            p->sh.row_bytes = d.row_bytes;
            p->fmt = fmt;
            p->dtype = d.dtype;
            p->bits = d.bits;
            p->max_n = 0;
        }
        mm_item *m = &p->b.it[p->count++];
        m->data = d.data;
        m->scales = d.scales;
        m->biases = d.biases;
        m->x = it->x;
        m->y = it->y;
        m->n = it->n;
        m->rows = d.rows;
        if (it->n > p->max_n) p->max_n = it->n;
        if (d.rows > p->sh.rows) p->sh.rows = d.rows;
    }
    for (int k = 0; k < 4; k++)
        if (mm_flush(be, &pend[k], k > 0) != 0) return -1;
    return 0;
}

static int cuda_matmul(lm_backend *be, float *y, const lm_mat *W, const float *x, int n) {
    lm_matmul_item it = {y, W, x, n};
    return cuda_matmul_batch(be, &it, 1);
}

static int cuda_reserve_batch(lm_backend *be, int max_items) {
    (void)be;
    (void)max_items; /* matmul_batch keeps no per-call arrays */
    return 0;
}

/* ---- embedding --------------------------------------------------------------------------------------- */

__global__ void k_embed(float *x, wdesc w, const int32_t *ids, int n, int *flag) {
    size_t total = (size_t)n * (size_t)w.cols;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int t = (int)(i / (size_t)w.cols), c = (int)(i % (size_t)w.cols), id = ids[t];
        if (id < 0 || id >= w.rows) {
            if (atomicExch(&flag[0], 1) == 0) flag[1] = id;
            x[i] = 0.0f;
        } else {
            x[i] = wval(w, id, c);
        }
    }
}

static int cuda_embed(lm_backend *be, float *x, const lm_mat *W, const int32_t *ids, int n) {
    cuda_impl *im = impl_of(be);
    wdesc d;
    if (weight_view(be, W, &d) != 0) return -1;
    if (n <= 0 || W->cols == 0) return 0;
    tim_begin(impl_of(be));
    k_embed<<<ew_blocks((size_t)n * (size_t)W->cols), EW_THREADS, 0, im->stream>>>(x, d, ids, n, im->flag);
    if (launched(be, "embed") != 0) return -1;
    /* The ids are device memory: an out-of-range one is found by the kernel and
     * reported here (one small download per forward step). A recorded step cannot
     * wait for it: there the kernel still reads no row outside the table, and the
     * engine has checked the ids against the vocabulary (the table's rows). */
    if (im->recording) return 0;
    int flag[2];
    CU(be, "embed (reading its check)", cudaMemcpyAsync(flag, im->flag, sizeof flag, cudaMemcpyDeviceToHost, im->stream));
    CU(be, "embed", stream_wait(im));
    if (flag[0]) {
        CU(be, "embed (resetting its check)", cudaMemsetAsync(im->flag, 0, 2 * sizeof(int), im->stream));
        return lm_errf(be->err, "embedding row %d of %d", flag[1], W->rows);
    }
    return 0;
}

/* ---- elementwise --------------------------------------------------------------------------------------- */

#define GRID_LOOP(i, total)                                                                                           \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (total); i += (size_t)gridDim.x * blockDim.x)

/* 1024: a decode step's norms are one row each, one block; with fewer threads each
 * waits for more loads in turn (the MoE block's end took 14-22 us with 256, ncu). */
#define NORM_THREADS 1024
/* One block per row: the sum of squares over the block (a tree, not the CPU's
 * sequential order), then y = w * (x * inv) as the CPU writes it. y may alias x:
 * every element is read into the sum before any is written, and each is then
 * written by the thread that reads it. */
/* Row `row` of an rmsnorm; with `add` (the fused residual add), x[i] += add[i] first
 * (k_add's operation, written back), then the same sums of the updated values. */
/* The end of a row's norm whose values v (the thread's elements tid + NORM_THREADS * j)
 * and partial sum of squares ss are in registers: the same block sum and products as
 * rmsnorm_row's. */
#define NORM_REGS 4 /* rows of up to NORM_THREADS * NORM_REGS = 4096 values go through registers */
__device__ __forceinline__ void rmsnorm_regs_end(float *yt, const float (&v)[NORM_REGS], float ss, const float *w, int dim,
                                                 float eps) {
    __shared__ float part[NORM_THREADS / 32];
    float wv[NORM_REGS]; /* the weights' loads in flight during the block's sum */
#pragma unroll
    for (int j = 0; j < NORM_REGS; j++) {
        int i = threadIdx.x + NORM_THREADS * j;
        wv[j] = i < dim ? w[i] : 0.0f;
    }
    ss = warp_sum(ss);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
    __syncthreads();
    float tot = 0.0f;
    for (int k = 0; k < NORM_THREADS / 32; k++) tot += part[k];
    float inv = 1.0f / sqrtf(tot / (float)dim + eps);
#pragma unroll
    for (int j = 0; j < NORM_REGS; j++) {
        int i = threadIdx.x + NORM_THREADS * j;
        if (i < dim) yt[i] = wv[j] * (v[j] * inv);
    }
}

__device__ __forceinline__ void rmsnorm_row(float *y, float *xw, const float *x, const float *add, const float *w, int dim,
                                            float eps, size_t row) {
    if (dim <= NORM_THREADS * NORM_REGS) {
        /* the row's values in registers, every load issued before the first is used: a
         * loop that stores x before loading the next value waits for each load in turn
         * (~14 us for the MoE block's end on the H100). The same sums in the same order. */
        float v[NORM_REGS], ss = 0.0f;
        const float *src = add ? xw + row * (size_t)dim : x + row * (size_t)dim;
#pragma unroll
        for (int j = 0; j < NORM_REGS; j++) {
            int i = threadIdx.x + NORM_THREADS * j;
            v[j] = i < dim ? (add ? src[i] + add[row * (size_t)dim + (size_t)i] : src[i]) : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < NORM_REGS; j++) {
            int i = threadIdx.x + NORM_THREADS * j;
            if (i < dim) {
                if (add) xw[row * (size_t)dim + (size_t)i] = v[j];
                ss += v[j] * v[j];
            }
        }
        rmsnorm_regs_end(y + row * (size_t)dim, v, ss, w, dim, eps);
        return;
    }
    __shared__ float part[NORM_THREADS / 32];
    const float *xt = x + row * (size_t)dim;
    float *yt = y + row * (size_t)dim;
    float ss = 0.0f;
    if (add) {
        float *xwt = xw + row * (size_t)dim;
        const float *at = add + row * (size_t)dim;
        for (int i = threadIdx.x; i < dim; i += NORM_THREADS) {
            float r = xwt[i] + at[i];
            xwt[i] = r;
            ss += r * r;
        }
    } else {
        for (int i = threadIdx.x; i < dim; i += NORM_THREADS) ss += xt[i] * xt[i];
    }
    ss = warp_sum(ss);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
    __syncthreads();
    float tot = 0.0f;
    for (int k = 0; k < NORM_THREADS / 32; k++) tot += part[k];
    float inv = 1.0f / sqrtf(tot / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += NORM_THREADS) yt[i] = w[i] * (xt[i] * inv);
}

__global__ void __launch_bounds__(NORM_THREADS) k_rmsnorm(float *y, const float *x, const float *w, int dim, float eps) {
    rmsnorm_row(y, NULL, x, NULL, w, dim, eps, blockIdx.x);
}

/* add(x, a) then rmsnorm(y, x) in one launch: the residual add a layer ends with and
 * the norm the next block starts with (pending_op). */
__global__ void __launch_bounds__(NORM_THREADS) k_add_rmsnorm(float *y, float *x, const float *a, const float *w, int dim,
                                                               float eps) {
    rmsnorm_row(y, x, x, a, w, dim, eps, blockIdx.x);
}

/* moe_combine (into y), the residual add x += y and rmsnorm(out, x) of one row in one
 * block: the MoE block's end and the next block's norm. Each element as k_moe_combine,
 * k_add and k_rmsnorm compute it. */
__global__ void __launch_bounds__(NORM_THREADS) k_combine_add_rmsnorm(float *out, float *x, float *y, const float *eout,
                                                                       const float *selw, const float *shared,
                                                                       int top_k, const float *w, int dim, float eps) {
    size_t t = blockIdx.x;
    if (dim <= NORM_THREADS * NORM_REGS && top_k <= 8) {
        /* registers, every load issued first (rmsnorm_row says why); the same sums in order */
        float sw[8], v[NORM_REGS], acc[NORM_REGS], ss = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; k++) sw[k] = k < top_k ? selw[t * (size_t)top_k + (size_t)k] : 0.0f;
#pragma unroll
        for (int j = 0; j < NORM_REGS; j++) { /* loads only: no store may come between them */
            int c = threadIdx.x + NORM_THREADS * j;
            float e[8];
#pragma unroll
            for (int k = 0; k < 8; k++)
                e[k] = c < dim && k < top_k ? eout[(t * (size_t)top_k + (size_t)k) * (size_t)dim + (size_t)c] : 0.0f;
            float sh = c < dim && shared ? shared[t * (size_t)dim + (size_t)c] : 0.0f;
            float xc = c < dim ? x[t * (size_t)dim + (size_t)c] : 0.0f;
            acc[j] = 0.0f;
#pragma unroll
            for (int k = 0; k < 8; k++)
                if (k < top_k) acc[j] += e[k] * sw[k];
            if (shared) acc[j] += sh;
            v[j] = xc + acc[j];
        }
#pragma unroll
        for (int j = 0; j < NORM_REGS; j++) {
            int c = threadIdx.x + NORM_THREADS * j;
            if (c < dim) {
                y[t * (size_t)dim + (size_t)c] = acc[j];
                x[t * (size_t)dim + (size_t)c] = v[j];
                ss += v[j] * v[j];
            }
        }
        rmsnorm_regs_end(out + t * (size_t)dim, v, ss, w, dim, eps);
        return;
    }
    for (int c = threadIdx.x; c < dim; c += NORM_THREADS) {
        float acc = 0.0f;
        for (int k = 0; k < top_k; k++)
            acc += eout[(t * (size_t)top_k + (size_t)k) * (size_t)dim + (size_t)c] * selw[t * (size_t)top_k + (size_t)k];
        if (shared) acc += shared[t * (size_t)dim + (size_t)c];
        y[t * (size_t)dim + (size_t)c] = acc;
    }
    /* the add reads y[i] as this thread wrote it (same i), then the norm of the row */
    rmsnorm_row(out, x, x, y, w, dim, eps, t);
}

/* Two independent rmsnorms in one launch (q and k norms): blocks [0, rows1) the first. */
__global__ void __launch_bounds__(NORM_THREADS) k_rmsnorm2(float *y1, const float *x1, const float *w1, int rows1,
                                                            int dim1, float *y2, const float *x2, const float *w2,
                                                            int dim2, float eps) {
    if ((int)blockIdx.x < rows1) rmsnorm_row(y1, NULL, x1, NULL, w1, dim1, eps, blockIdx.x);
    else rmsnorm_row(y2, NULL, x2, NULL, w2, dim2, eps, blockIdx.x - (unsigned)rows1);
}

/* Rows of up to NORM_WARP_MAX values take a warp each, NORM_WARP_ROWS rows a block: a
 * head's q or k norm is 128 values, for which a block of NORM_THREADS left 7/8 of its
 * threads idle (18,432 such blocks for a 512-token prefill's q and k norms, ~3.5 ms of it
 * on the H100). Lane l holds values l + 32 j, as thread l + 32 j of rmsnorm_row does, and
 * the sums are rmsnorm_row's in its order (warp j's sum of squares by warp_sum, then
 * those sums in turn from 0), so the results are the same bits. */
#define NORM_WARP_MAX 256
#define NORM_WARP_ROWS 8
/* From this many rows (a prefill's): a decode step's 36 head norms measured ~1% slower
 * through the warps than through a block each (H100, two calls), so they stay there. */
#define NORM_WARP_MIN_ROWS 1024
/* Whether norms of `rows` rows in all (one launch) of dim1 and dim2 values take the warps. */
static int norms_by_warps(size_t rows, int dim1, int dim2) {
    return dim1 <= NORM_WARP_MAX && dim2 <= NORM_WARP_MAX && rows >= NORM_WARP_MIN_ROWS;
}
__device__ __forceinline__ void rmsnorm_row_warp(float *y, const float *x, const float *w, int dim, float eps,
                                                 size_t row) {
    int lane = threadIdx.x & 31;
    const float *xt = x + row * (size_t)dim;
    float v[NORM_WARP_MAX / 32], wv[NORM_WARP_MAX / 32];
#pragma unroll
    for (int j = 0; j < NORM_WARP_MAX / 32; j++) {
        int i = lane + 32 * j;
        v[j] = i < dim ? xt[i] : 0.0f;
        wv[j] = i < dim ? w[i] : 0.0f;
    }
    float tot = 0.0f;
#pragma unroll
    for (int j = 0; j < NORM_WARP_MAX / 32; j++)
        if (32 * j < dim) tot += warp_sum(v[j] * v[j]);
    float inv = 1.0f / sqrtf(tot / (float)dim + eps);
    float *yt = y + row * (size_t)dim;
#pragma unroll
    for (int j = 0; j < NORM_WARP_MAX / 32; j++) {
        int i = lane + 32 * j;
        if (i < dim) yt[i] = wv[j] * (v[j] * inv);
    }
}

__global__ void __launch_bounds__(NORM_WARP_ROWS * 32) k_rmsnorm_warps(float *y, const float *x, const float *w,
                                                                        int rows, int dim, float eps) {
    int r = (int)(blockIdx.x * NORM_WARP_ROWS + threadIdx.x / 32);
    if (r < rows) rmsnorm_row_warp(y, x, w, dim, eps, (size_t)r);
}

/* k_rmsnorm2 with a warp a row: rows [0, rows1) the first norm's, then rows2 of the second. */
__global__ void __launch_bounds__(NORM_WARP_ROWS * 32) k_rmsnorm2_warps(float *y1, const float *x1, const float *w1,
                                                                         int rows1, int dim1, float *y2, const float *x2,
                                                                         const float *w2, int rows2, int dim2, float eps) {
    int r = (int)(blockIdx.x * NORM_WARP_ROWS + threadIdx.x / 32);
    if (r < rows1) rmsnorm_row_warp(y1, x1, w1, dim1, eps, (size_t)r);
    else if (r - rows1 < rows2) rmsnorm_row_warp(y2, x2, w2, dim2, eps, (size_t)(r - rows1));
}

__global__ void k_add(float *y, const float *x, size_t n) {
    GRID_LOOP(i, n) y[i] += x[i];
}

/* ---- fewer launches: an op held back (pending_op) ----
 * A decode step is many small launches, each costing the host a few microseconds.
 * Four ops come in pairs the next op can join: the residual add and the rmsnorm
 * after it (k_add_rmsnorm), the q and k norms (k_rmsnorm2), the q and k RoPEs
 * (k_rope2), the K and V stores (k_kv_store2); and an expert group's gathers (or
 * scatters), one per expert, join into one launch (k_gather_segs, k_scatter_segs). Such an op is held back in im->pend;
 * the next op either joins it in one launch or launches it first, and every other
 * operation (flushed_op in the ops table: uploads, downloads, syncs, matmuls, ...)
 * launches it before doing anything. The joined kernels run each element's
 * arithmetic exactly as the single ones, so results are bit-identical; the
 * reference mode (simple) holds nothing back. */
enum { PEND_NONE = 0, PEND_ADD, PEND_NORM, PEND_ROPE, PEND_KV, PEND_GATHER, PEND_SCATTER, PEND_COMBINE, PEND_COMBINE_ADD };
static int launch_segs(lm_backend *be, int scatter);
static int launch_combine(lm_backend *be);

__global__ void k_rope(float *x, int n, int n_heads, int head_dim, const int32_t *pos, const float *inv_freq, int half,
                       float scale);
__global__ void k_kv_store(int dtype, void *data, float *scales, const int *dpos, int pos0, const float *src, int n,
                           int n_kv, int hd);

static int overlap(const void *a, size_t an, const void *b, size_t bn) {
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return x < y + bn && y < x + an;
}

static int launch_add(lm_backend *be, float *y, const float *x, size_t n) {
    tim_begin(impl_of(be));
    k_add<<<ew_blocks(n), EW_THREADS, 0, impl_of(be)->stream>>>(y, x, n);
    return launched(be, "add");
}

static int launch_rmsnorm(lm_backend *be, float *y, const float *x, const float *dw, int n, int dim, float eps) {
    cuda_impl *im = impl_of(be);
    tim_begin(im);
    if (!im->simple && norms_by_warps((size_t)n, dim, dim)) {
        k_rmsnorm_warps<<<blocks_for((size_t)n, NORM_WARP_ROWS), NORM_WARP_ROWS * 32, 0, im->stream>>>(y, x, dw, n, dim,
                                                                                                       eps);
        return launched(be, "rmsnorm (warps)");
    }
    k_rmsnorm<<<(unsigned)n, NORM_THREADS, 0, im->stream>>>(y, x, dw, dim, eps);
    return launched(be, "rmsnorm");
}

static int launch_rope(lm_backend *be, float *x, int n, int n_heads, int head_dim, const int32_t *pos, const float *df,
                       int half, float scale) {
    size_t total = (size_t)n * (size_t)n_heads * (size_t)half;
    tim_begin(impl_of(be));
    k_rope<<<ew_blocks(total), EW_THREADS, 0, impl_of(be)->stream>>>(x, n, n_heads, head_dim, pos, df, half, scale);
    return launched(be, "rope");
}

#define KV_WARPS 4
static int launch_kv_store(lm_backend *be, int dtype, void *data, float *scales, int pos0, const float *src, int n,
                           int n_kv, int hd) {
    size_t items = (size_t)n * (size_t)n_kv;
    const int *dpos = step_pos(impl_of(be), &pos0);
    tim_begin(impl_of(be));
    k_kv_store<<<blocks_for(items, KV_WARPS), KV_WARPS * 32, 0, impl_of(be)->stream>>>(dtype, data, scales, dpos, pos0,
                                                                                      src, n, n_kv, hd);
    return launched(be, "kv_store");
}

/* Launches the held-back op, if any. */
static int flush_pending(lm_backend *be) {
    cuda_impl *im = impl_of(be);
    int kind = im->pend.kind;
    im->pend.kind = PEND_NONE;
    switch (kind) {
    case PEND_ADD: return launch_add(be, im->pend.y, im->pend.x, im->pend.n);
    case PEND_NORM:
        return launch_rmsnorm(be, im->pend.y, im->pend.x, im->pend.w, im->pend.rows, im->pend.dim, im->pend.eps);
    case PEND_ROPE:
        return launch_rope(be, im->pend.y, im->pend.rows, im->pend.heads, im->pend.head_dim, im->pend.pos,
                           im->pend.freq, im->pend.half, im->pend.scale);
    case PEND_KV:
        return launch_kv_store(be, im->pend.dtype, im->pend.data, im->pend.scales, im->pend.pos0, im->pend.x,
                               im->pend.rows, im->pend.n_kv, im->pend.dim);
    case PEND_GATHER: return launch_segs(be, 0);
    case PEND_SCATTER: return launch_segs(be, 1);
    case PEND_COMBINE: return launch_combine(be);
    case PEND_COMBINE_ADD:
        if (launch_combine(be) != 0) return -1;
        return launch_add(be, im->pend.resid, im->pend.y, im->pend.n);
    default: return 0;
    }
}

/* LAZYMOE_CUDA_TIMING: the host's time in one op, summed per op (a pointer compare
 * over at most 64 entries: timing runs only). */
static void host_time_add(cuda_impl *im, const char *sig, double ms) {
    int k = 0;
    while (k < im->nhs && im->hs[k].sig != sig) k++;
    if (k == im->nhs) {
        if (im->nhs == (int)(sizeof im->hs / sizeof im->hs[0])) return;
        im->hs[k].sig = sig;
        im->hs[k].ms = im->hs[k].slow_ms = 0;
        im->hs[k].calls = im->hs[k].slow_calls = 0;
        im->nhs++;
    }
    if (ms < 1.0) {
        im->hs[k].ms += ms;
        im->hs[k].calls++;
    } else {
        im->hs[k].slow_ms += ms;
        im->hs[k].slow_calls++;
    }
}

/* Every op not in the pairs above goes through this in the ops table: the held-back
 * op first, then the op. */
template <typename Fn, Fn F, int FLUSH> struct flushed_op;
template <typename... A, int (*F)(lm_backend *, A...), int FLUSH>
struct flushed_op<int (*)(lm_backend *, A...), F, FLUSH> {
    static int call(lm_backend *be, A... a) {
        cuda_impl *im = impl_of(be);
        double t0 = im->timing ? now_ms() : 0;
        int rc = FLUSH && flush_pending(be) != 0 ? -1 : F(be, a...);
        if (im->timing) {
            double ms = now_ms() - t0;
            im->host_ms += ms;
            im->host_calls++;
            host_time_add(im, __PRETTY_FUNCTION__, ms);
        }
        return rc;
    }
};
template <typename... A, void (*F)(lm_backend *, A...), int FLUSH>
struct flushed_op<void (*)(lm_backend *, A...), F, FLUSH> {
    static void call(lm_backend *be, A... a) {
        if (FLUSH) flush_pending(be); /* a failure shows at the next op */
        F(be, a...);
    }
};
#define FLUSHED(f) (flushed_op<decltype(&f), &f, 1>::call)
/* the ops that hold back or join themselves: only timed (LAZYMOE_CUDA_TIMING) */
#define TIMED(f) (flushed_op<decltype(&f), &f, 0>::call)

static int cuda_rmsnorm(lm_backend *be, float *y, const float *x, const float *w, int n, int dim, float eps) {
    cuda_impl *im = impl_of(be);
    if (!w) return lm_errf(be->err, "rmsnorm without weights");
    const float *dw = dev_floats(be, w, (size_t)dim, "norm weights");
    if (!dw) return -1;
    if (n <= 0 || dim <= 0) return flush_pending(be);
    size_t bytes = sizeof(float) * (size_t)n * (size_t)dim;
    if (im->pend.kind == PEND_COMBINE_ADD && im->pend.resid == x && im->pend.dim == dim && im->pend.rows == n) {
        im->pend.kind = PEND_NONE;
        tim_begin(im);
        k_combine_add_rmsnorm<<<(unsigned)n, NORM_THREADS, 0, im->stream>>>(
            y, im->pend.resid, im->pend.y, im->pend.eout, im->pend.selw, im->pend.shared, im->pend.n_kv, dw, dim, eps);
        return launched(be, "combine+add+rmsnorm");
    }
    if (im->pend.kind == PEND_ADD && im->pend.y == x && im->pend.n == (size_t)n * (size_t)dim) {
        im->pend.kind = PEND_NONE;
        tim_begin(im);
        k_add_rmsnorm<<<(unsigned)n, NORM_THREADS, 0, im->stream>>>(y, im->pend.y, im->pend.x, dw, dim, eps);
        return launched(be, "add+rmsnorm");
    }
    if (im->pend.kind == PEND_NORM && im->pend.eps == eps) {
        size_t b1 = sizeof(float) * (size_t)im->pend.rows * (size_t)im->pend.dim;
        if (!overlap(im->pend.y, b1, x, bytes) && !overlap(im->pend.y, b1, y, bytes) && !overlap(y, bytes, im->pend.x, b1) &&
            (size_t)im->pend.rows + (size_t)n < 0x7fffffffu) {
            im->pend.kind = PEND_NONE;
            tim_begin(im);
            if (norms_by_warps((size_t)im->pend.rows + (size_t)n, im->pend.dim, dim)) {
                k_rmsnorm2_warps<<<blocks_for((size_t)im->pend.rows + (size_t)n, NORM_WARP_ROWS), NORM_WARP_ROWS * 32, 0,
                                   im->stream>>>(im->pend.y, im->pend.x, im->pend.w, im->pend.rows, im->pend.dim, y, x,
                                                 dw, n, dim, eps);
                return launched(be, "rmsnorm x2 (warps)");
            }
            k_rmsnorm2<<<(unsigned)(im->pend.rows + n), NORM_THREADS, 0, im->stream>>>(
                im->pend.y, im->pend.x, im->pend.w, im->pend.rows, im->pend.dim, y, x, dw, dim, eps);
            return launched(be, "rmsnorm x2");
        }
    }
    if (flush_pending(be) != 0) return -1;
    if (im->simple) return launch_rmsnorm(be, y, x, dw, n, dim, eps);
    im->pend.kind = PEND_NORM;
    im->pend.y = y;
    im->pend.x = x;
    im->pend.w = dw;
    im->pend.rows = n;
    im->pend.dim = dim;
    im->pend.eps = eps;
    return 0;
}

static int cuda_add(lm_backend *be, float *y, const float *x, size_t n) {
    cuda_impl *im = impl_of(be);
    /* the residual add of the MoE output just combined: held with it, for the norm */
    if (im->pend.kind == PEND_COMBINE && x == im->pend.y && n == (size_t)im->pend.rows * (size_t)im->pend.dim &&
        !overlap(y, sizeof(float) * n, x, sizeof(float) * n)) {
        im->pend.kind = PEND_COMBINE_ADD;
        im->pend.resid = y;
        im->pend.n = n;
        return 0;
    }
    if (flush_pending(be) != 0) return -1;
    if (!n) return 0;
    if (im->simple) return launch_add(be, y, x, n);
    im->pend.kind = PEND_ADD;
    im->pend.y = y;
    im->pend.x = x;
    im->pend.n = n;
    return 0;
}

__global__ void k_add_rows(float *y, const float *b, int n, int dim) {
    GRID_LOOP(i, (size_t)n * (size_t)dim) y[i] += b[i % (size_t)dim];
}

static int cuda_add_rows(lm_backend *be, float *y, const float *b, int n, int dim) {
    if (!b) return lm_errf(be->err, "add_rows without biases");
    const float *db = dev_floats(be, b, (size_t)dim, "biases");
    if (!db) return -1;
    if (n <= 0 || dim <= 0) return 0;
    tim_begin(impl_of(be));
    k_add_rows<<<ew_blocks((size_t)n * (size_t)dim), EW_THREADS, 0, impl_of(be)->stream>>>(y, db, n, dim);
    return launched(be, "add_rows");
}

__global__ void k_clamp(float *y, size_t n, float lim) {
    GRID_LOOP(i, n) y[i] = y[i] > lim ? lim : (y[i] < -lim ? -lim : y[i]);
}

static int cuda_clamp(lm_backend *be, float *y, size_t n, float lim) {
    if (!n) return 0;
    tim_begin(impl_of(be));
    k_clamp<<<ew_blocks(n), EW_THREADS, 0, impl_of(be)->stream>>>(y, n, lim);
    return launched(be, "clamp");
}

__global__ void k_copy_rows(float *dst, size_t dst_stride, const float *src, size_t src_stride, int rows, int width) {
    GRID_LOOP(i, (size_t)rows * (size_t)width) {
        size_t r = i / (size_t)width, c = i % (size_t)width;
        dst[r * dst_stride + c] = src[r * src_stride + c];
    }
}

static int cuda_copy_rows(lm_backend *be, float *dst, size_t dst_stride, const float *src, size_t src_stride,
                          int rows, int width) {
    if (rows <= 0 || width <= 0) return 0;
    tim_begin(impl_of(be));
    k_copy_rows<<<ew_blocks((size_t)rows * (size_t)width), EW_THREADS, 0, impl_of(be)->stream>>>(
        dst, dst_stride, src, src_stride, rows, width);
    return launched(be, "copy_rows");
}

__global__ void k_sigmoid_mul(float *y, size_t y_stride, const float *g, size_t g_stride, int rows, int width,
                              int per_row) {
    GRID_LOOP(i, (size_t)rows * (size_t)width) {
        size_t r = i / (size_t)width, c = i % (size_t)width;
        const float *gr = g + r * g_stride;
        float gate = per_row ? gr[0] : gr[c];
        y[r * y_stride + c] *= 1.0f / (1.0f + expf(-gate));
    }
}

static int cuda_sigmoid_mul(lm_backend *be, float *y, size_t y_stride, const float *g, size_t g_stride, int rows,
                            int width, int per_row) {
    if (rows <= 0 || width <= 0) return 0;
    tim_begin(impl_of(be));
    k_sigmoid_mul<<<ew_blocks((size_t)rows * (size_t)width), EW_THREADS, 0, impl_of(be)->stream>>>(
        y, y_stride, g, g_stride, rows, width, per_row);
    return launched(be, "sigmoid_mul");
}

__global__ void k_swiglu(float *g, const float *u, size_t n) {
    GRID_LOOP(i, n) {
        float a = g[i];
        g[i] = a / (1.0f + expf(-a)) * u[i];
    }
}

static int cuda_swiglu(lm_backend *be, float *g, const float *u, size_t n) {
    if (!n) return 0;
    tim_begin(impl_of(be));
    k_swiglu<<<ew_blocks(n), EW_THREADS, 0, impl_of(be)->stream>>>(g, u, n);
    return launched(be, "swiglu");
}

/* cpu_ops.c swiglu_clamped_one: transformers' order. */
__device__ __forceinline__ float swiglu_clamped_one(float g, float u, float alpha, float limit) {
    float a = g > limit ? limit : g;
    float b = u > limit ? limit : (u < -limit ? -limit : u);
    float glu = a * (1.0f / (1.0f + expf(-(a * alpha))));
    return (b + 1.0f) * glu;
}

__global__ void k_swiglu_clamped(float *out, const float *gu, size_t n, float alpha, float limit) {
    GRID_LOOP(i, n) out[i] = swiglu_clamped_one(gu[2 * i], gu[2 * i + 1], alpha, limit);
}

/* out may be up: each element is read before it is written, by the same thread. */
__global__ void k_swiglu_clamped_split(float *out, const float *gate, const float *up, size_t n, float alpha,
                                       float limit) {
    GRID_LOOP(i, n) out[i] = swiglu_clamped_one(gate[i], up[i], alpha, limit);
}

static int cuda_swiglu_clamped_split(lm_backend *be, float *out, const float *gate, const float *up, size_t n,
                                     float alpha, float limit) {
    if (!n) return 0;
    tim_begin(impl_of(be));
    k_swiglu_clamped_split<<<ew_blocks(n), EW_THREADS, 0, impl_of(be)->stream>>>(out, gate, up, n, alpha, limit);
    return launched(be, "swiglu_clamped_split");
}

static int cuda_swiglu_clamped(lm_backend *be, float *out, const float *gu, size_t n, float alpha, float limit) {
    if (!n) return 0;
    tim_begin(impl_of(be));
    k_swiglu_clamped<<<ew_blocks(n), EW_THREADS, 0, impl_of(be)->stream>>>(out, gu, n, alpha, limit);
    return launched(be, "swiglu_clamped");
}

/* One thread per (token, head, frequency): the pair (i, i + half) of that head. */
__device__ __forceinline__ void rope_at(float *x, int n_heads, int head_dim, const int32_t *pos, const float *inv_freq,
                                        int half, float scale, size_t k) {
    {
        int i = (int)(k % (size_t)half);
        size_t th = k / (size_t)half; /* token * n_heads + head */
        int t = (int)(th / (size_t)n_heads);
        float ang = (float)pos[t] * inv_freq[i];
        float c = cosf(ang) * scale, s = sinf(ang) * scale;
        float *xh = x + th * (size_t)head_dim;
        float x1 = xh[i], x2 = xh[i + half];
        xh[i] = x1 * c - x2 * s;
        xh[i + half] = x2 * c + x1 * s;
    }
}

__global__ void k_rope(float *x, int n, int n_heads, int head_dim, const int32_t *pos, const float *inv_freq,
                       int half, float scale) {
    GRID_LOOP(k, (size_t)n * (size_t)n_heads * (size_t)half) rope_at(x, n_heads, head_dim, pos, inv_freq, half, scale, k);
}

/* Two ropes at the same positions and frequencies in one launch (q and k). */
__global__ void k_rope2(float *x1, int heads1, float *x2, int heads2, int n, int head_dim, const int32_t *pos,
                        const float *inv_freq, int half, float scale) {
    size_t total1 = (size_t)n * (size_t)heads1 * (size_t)half, total2 = (size_t)n * (size_t)heads2 * (size_t)half;
    GRID_LOOP(k, total1 + total2) {
        if (k < total1) rope_at(x1, heads1, head_dim, pos, inv_freq, half, scale, k);
        else rope_at(x2, heads2, head_dim, pos, inv_freq, half, scale, k - total1);
    }
}

static int cuda_rope(lm_backend *be, float *x, int n, int n_heads, int head_dim, const int32_t *pos,
                     const float *inv_freq, int half, float scale) {
    if (2 * half > head_dim) return lm_errf(be->err, "rope over %d dims of %d-dim heads", 2 * half, head_dim);
    if (half > 0 && !inv_freq) return lm_errf(be->err, "rope without frequencies");
    const float *df = dev_floats(be, inv_freq, (size_t)half, "RoPE frequencies");
    if (half > 0 && !df) return -1;
    if (n <= 0 || n_heads <= 0 || half <= 0) return flush_pending(be);
    cuda_impl *im = impl_of(be);
    if (im->pend.kind == PEND_ROPE && im->pend.rows == n && im->pend.head_dim == head_dim && im->pend.pos == pos &&
        im->pend.freq == df && im->pend.half == half && im->pend.scale == scale &&
        !overlap(im->pend.y, sizeof(float) * (size_t)n * (size_t)im->pend.heads * (size_t)head_dim, x,
                 sizeof(float) * (size_t)n * (size_t)n_heads * (size_t)head_dim)) {
        im->pend.kind = PEND_NONE;
        size_t total = (size_t)n * (size_t)(im->pend.heads + n_heads) * (size_t)half;
        tim_begin(im);
        k_rope2<<<ew_blocks(total), EW_THREADS, 0, im->stream>>>(im->pend.y, im->pend.heads, x, n_heads, n, head_dim,
                                                                 pos, df, half, scale);
        return launched(be, "rope x2");
    }
    if (flush_pending(be) != 0) return -1;
    if (im->simple) return launch_rope(be, x, n, n_heads, head_dim, pos, df, half, scale);
    im->pend.kind = PEND_ROPE;
    im->pend.y = x;
    im->pend.rows = n;
    im->pend.heads = n_heads;
    im->pend.head_dim = head_dim;
    im->pend.pos = pos;
    im->pend.freq = df;
    im->pend.half = half;
    im->pend.scale = scale;
    return 0;
}

/* ---- KV cache ------------------------------------------------------------------------------------------- */

/* One warp per (token, kv head): the row rounded into the cache's type. The int8
 * scale is max|x| / 127 (a max, exact in any order) and each value round(x / scale)
 * to nearest even, as nearbyintf does in the default rounding mode. */
__device__ __forceinline__ void kv_store_item(int dtype, void *data, float *scales, int pos0, const float *src, int n_kv,
                                              int hd, size_t item) {
    int lane = threadIdx.x % 32;
    int t = (int)(item / (size_t)n_kv), h = (int)(item % (size_t)n_kv);
    const float *x = src + item * (size_t)hd;
    size_t base = ((size_t)(pos0 + t) * (size_t)n_kv + (size_t)h) * (size_t)hd;
    if (dtype == LM_DT_F32) {
        for (int i = lane; i < hd; i += 32) ((float *)data)[base + (size_t)i] = x[i];
    } else if (dtype == LM_DT_F16) {
        for (int i = lane; i < hd; i += 32) ((uint16_t *)data)[base + (size_t)i] = f32_f16(x[i]);
    } else {
        float amax = 0.0f;
        for (int i = lane; i < hd; i += 32) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
        amax = warp_max(amax);
        float scale = amax / 127.0f;
        int8_t *d = (int8_t *)data + base;
        for (int i = lane; i < hd; i += 32) {
            float q = scale > 0 ? rintf(x[i] / scale) : 0.0f;
            d[i] = (int8_t)(q > 127 ? 127 : (q < -127 ? -127 : q));
        }
        if (lane == 0) scales[(size_t)(pos0 + t) * (size_t)n_kv + (size_t)h] = scale;
    }
}

__global__ void k_kv_store(int dtype, void *data, float *scales, const int *dpos, int pos0, const float *src, int n,
                           int n_kv, int hd) {
    if (dpos) pos0 += *dpos;
    size_t item = (size_t)blockIdx.x * (blockDim.x / 32) + (size_t)(threadIdx.x / 32);
    if (item >= (size_t)n * (size_t)n_kv) return; /* the whole warp */
    kv_store_item(dtype, data, scales, pos0, src, n_kv, hd, item);
}

/* The K and V rows of the same positions in one launch: warps [0, n * n_kv) store K. */
__global__ void k_kv_store2(int dtype, void *data1, float *scales1, const float *src1, void *data2, float *scales2,
                            const float *src2, const int *dpos, int pos0, int n, int n_kv, int hd) {
    if (dpos) pos0 += *dpos;
    size_t item = (size_t)blockIdx.x * (blockDim.x / 32) + (size_t)(threadIdx.x / 32), items = (size_t)n * (size_t)n_kv;
    if (item >= 2 * items) return;
    if (item < items) kv_store_item(dtype, data1, scales1, pos0, src1, n_kv, hd, item);
    else kv_store_item(dtype, data2, scales2, pos0, src2, n_kv, hd, item - items);
}

static int kv_type_ok(lm_backend *be, const lm_kv *c) {
    if (c->dtype == LM_DT_F32 || c->dtype == LM_DT_F16 || (c->dtype == LM_DT_I8 && c->scales)) return 0;
    return lm_errf(be->err, "KV cache of type %s", lm_dtype_name(c->dtype));
}

static int cuda_kv_store(lm_backend *be, lm_kv *cache, int pos0, const float *src, int n, int n_kv, int hd) {
    if (kv_type_ok(be, cache) != 0) return -1;
    if (n <= 0 || n_kv <= 0 || hd <= 0) return flush_pending(be);
    cuda_impl *im = impl_of(be);
    if (im->pend.kind == PEND_KV && im->pend.dtype == (int)cache->dtype && im->pend.pos0 == pos0 && im->pend.rows == n &&
        im->pend.n_kv == n_kv && im->pend.dim == hd && im->pend.data != cache->data &&
        (!cache->scales || im->pend.scales != cache->scales)) {
        im->pend.kind = PEND_NONE;
        size_t items = 2 * (size_t)n * (size_t)n_kv;
        const int *dpos = step_pos(im, &pos0);
        tim_begin(im);
        k_kv_store2<<<blocks_for(items, KV_WARPS), KV_WARPS * 32, 0, im->stream>>>(
            (int)cache->dtype, im->pend.data, im->pend.scales, im->pend.x, cache->data, cache->scales, src, dpos, pos0, n,
            n_kv, hd);
        return launched(be, "kv_store x2");
    }
    if (flush_pending(be) != 0) return -1;
    if (im->simple) return launch_kv_store(be, (int)cache->dtype, cache->data, cache->scales, pos0, src, n, n_kv, hd);
    im->pend.kind = PEND_KV;
    im->pend.dtype = (int)cache->dtype;
    im->pend.data = cache->data;
    im->pend.scales = cache->scales;
    im->pend.pos0 = pos0;
    im->pend.x = src;
    im->pend.rows = n;
    im->pend.n_kv = n_kv;
    im->pend.dim = hd;
    return 0;
}

/* ---- attention ------------------------------------------------------------------------------------------ */

#define ATT_WARPS 4
#define ATT_MAX_HD 256 /* head_dim the kernel holds in registers (8 values a lane) */
#define ATT_TILE_FLOATS 8192
#define ATT_TILE_MAX 64

/* cpu_backend.c's tile size: keys per tile, counted from the first visible one. */
static int attn_tile(int hd) {
    int t = ATT_TILE_FLOATS / hd;
    return t < 1 ? 1 : (t > ATT_TILE_MAX ? ATT_TILE_MAX : t);
}

typedef struct {
    int dtype;
    const void *data;
    const float *scales;
} kvdesc;

__device__ __forceinline__ float kv_at(const kvdesc &c, size_t i, size_t scale_i) {
    if (c.dtype == LM_DT_F32) return ((const float *)c.data)[i];
    if (c.dtype == LM_DT_F16) return f16_f32(((const uint16_t *)c.data)[i]);
    return c.scales[scale_i] * (float)((const int8_t *)c.data)[i];
}

/* One warp per (query token, head), lanes across head_dim: the CPU's tile walk
 * (cpu_backend.c attn_task) -- per tile the scores and their max, the running sum
 * and output rescaled when the max grows, then exp(score - max) accumulated in key
 * order; the sink joins the denominator at the end. */
__global__ void __launch_bounds__(ATT_WARPS * 32) k_attention(float *out, const float *q, kvdesc kc, kvdesc vc, int n,
                                                               const int *dpos, int pos0, int n_heads, int n_kv, int hd,
                                                               float scale, int window, const float *sinks, int tile) {
    __shared__ float sc[ATT_WARPS][ATT_TILE_MAX];
    if (dpos) pos0 += *dpos;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    size_t item = (size_t)blockIdx.x * ATT_WARPS + (size_t)warp;
    if (item >= (size_t)n * (size_t)n_heads) return; /* whole warp; no block-wide barrier below */
    int t = (int)(item / (size_t)n_heads), h = (int)(item % (size_t)n_heads);
    int kvh = h / (n_heads / n_kv), pos = pos0 + t, first = 0;
    if (window > 0 && pos - window + 1 > 0) first = pos - window + 1;
    const int J = ATT_MAX_HD / 32;
    float qv[J], o[J];
    const float *qt = q + item * (size_t)hd;
#pragma unroll
    for (int j = 0; j < J; j++) {
        int d = lane + 32 * j;
        qv[j] = d < hd ? qt[d] : 0.0f;
        o[j] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    size_t row = (size_t)n_kv * (size_t)hd;
    for (int p0 = first; p0 <= pos; p0 += tile) {
        int cnt = pos - p0 + 1 < tile ? pos - p0 + 1 : tile;
        float mt = m;
        for (int r = 0; r < cnt; r++) {
            size_t p = (size_t)(p0 + r), base = p * row + (size_t)kvh * (size_t)hd, si = p * (size_t)n_kv + (size_t)kvh;
            float part = 0.0f;
#pragma unroll
            for (int j = 0; j < J; j++) {
                int d = lane + 32 * j;
                if (d < hd) part = fmaf(kv_at(kc, base + (size_t)d, si), qv[j], part);
            }
            float s = warp_sum(part) * scale;
            if (lane == 0) sc[warp][r] = s;
            mt = s > mt ? s : mt;
        }
        __syncwarp();
        if (mt > m) {
            float corr = expf(m - mt); /* 0 on the first tile */
            l *= corr;
#pragma unroll
            for (int j = 0; j < J; j++) o[j] *= corr;
            m = mt;
        }
        for (int r = 0; r < cnt; r++) {
            size_t p = (size_t)(p0 + r), base = p * row + (size_t)kvh * (size_t)hd, si = p * (size_t)n_kv + (size_t)kvh;
            float e = expf(sc[warp][r] - m);
            l += e;
#pragma unroll
            for (int j = 0; j < J; j++) {
                int d = lane + 32 * j;
                if (d < hd) o[j] += e * kv_at(vc, base + (size_t)d, si);
            }
        }
        __syncwarp(); /* sc is rewritten by the next tile */
    }
    if (sinks) {
        float sink = sinks[h];
        if (sink > m) {
            float corr = expf(m - sink);
            l *= corr;
#pragma unroll
            for (int j = 0; j < J; j++) o[j] *= corr;
            m = sink;
        }
        l += expf(sink - m);
    }
    float inv = 1.0f / l;
    float *ot = out + item * (size_t)hd;
#pragma unroll
    for (int j = 0; j < J; j++) {
        int d = lane + 32 * j;
        if (d < hd) ot[d] = o[j] * inv;
    }
}

/* Attention, fast: blocks of 256 threads. Keys are taken in tiles of AF_TILE counted
 * from the first visible one, and each tile is summed on its own (attn_tile_sums): every
 * thread scores its own keys (a whole dot product, q from shared memory, f16 rows 8
 * values a load), the block takes the tile's max m, each thread turns its scores into
 * exp(score - m) in place and the block sums them (l); then the values: thread (pair of
 * dims dp, key group g) accumulates every G-th key's values of its two dims, the G
 * groups' sums added in order (o). The tiles' (m, l, o) are then merged in tile order
 * (merge_tile). Two kernels do that with the same arithmetic:
 *   k_attention_fast   one block per (query, HB heads of one kv head) walks its tiles in
 *                      turn; HB > 1 (prefill) loads each key and value once for the HB
 *                      heads that read it (GQA), each head's sums in the order above;
 *   k_attention_split  one block per (query, head, tile), the partials into device
 *                      scratch, and k_attention_merge merges them: a decode step's 32
 *                      heads would otherwise keep 32 SMs busy over every key (0.9 ms a
 *                      layer at 20k keys, extrapolated).
 * So a query's result depends only on its own position and the cache -- not on how
 * many queries or heads share the call nor on which kernel ran. The reference kernel
 * (k_attention) is the CPU's walk. */
#define AF_WARPS 8
#define AF_THREADS (AF_WARPS * 32)
#define AF_TILE 256
#define AF_AHEAD 16 /* value loads a thread has in flight */
#define AF_MAX_HEADS 8 /* heads of one kv head a k_attention_fast block takes */
#define AS_MAX_QUERIES 4 /* calls of up to this many queries split their keys over blocks */
static_assert(ATT_MAX_HD <= AF_THREADS, "a thread per output dim");

/* The shared memory of HB heads' tile sums. */
template <int HB> struct attn_smem {
    float qs[HB][ATT_MAX_HD];
    float sc[HB][AF_TILE];
    float red[HB][AF_WARPS];
    float part[HB][AF_THREADS * 2]; /* [group][dim]: the groups' value sums */
};

/* q . K[p] for one key and HB queries (qs[i]), each summed in dim order: f16 rows in
 * 16-byte loads where they allow it. */
template <int HB>
__device__ __forceinline__ void key_dots(const kvdesc &kc, const float (*qs)[ATT_MAX_HD], size_t base, size_t si, int hd,
                                         float (&s)[HB]) {
#pragma unroll
    for (int i = 0; i < HB; i++) s[i] = 0.0f;
    if (kc.dtype == LM_DT_F16 && hd % 8 == 0) {
        const uint4 *p = (const uint4 *)((const uint16_t *)kc.data + base);
#pragma unroll 4
        for (int d8 = 0; d8 < hd / 8; d8++) {
            uint4 v = __ldg(p + d8);
            uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                float k0 = half_bits(w[k] & 0xffffu), k1 = half_bits(w[k] >> 16);
#pragma unroll
                for (int i = 0; i < HB; i++) {
                    s[i] = fmaf(k0, qs[i][8 * d8 + 2 * k], s[i]);
                    s[i] = fmaf(k1, qs[i][8 * d8 + 2 * k + 1], s[i]);
                }
            }
        }
        return;
    }
    for (int d = 0; d < hd; d++) {
        float kv = kv_at(kc, base + (size_t)d, si);
#pragma unroll
        for (int i = 0; i < HB; i++) s[i] = fmaf(kv, qs[i][d], s[i]);
    }
}

/* Values d and d + 1 (d even; the second only where d + 1 < hd) of row base. */
__device__ __forceinline__ void value_pair(const kvdesc &vc, size_t base, size_t si, int d, int hd, float &v0, float &v1) {
    if (vc.dtype == LM_DT_F16 && hd % 2 == 0) {
        uint32_t w = __ldg((const uint32_t *)((const uint16_t *)vc.data + base + (size_t)d));
        v0 = half_bits(w & 0xffffu);
        v1 = half_bits(w >> 16);
    } else if (vc.dtype == LM_DT_F32 && hd % 2 == 0) {
        float2 w = __ldg((const float2 *)((const float *)vc.data + base + (size_t)d));
        v0 = w.x;
        v1 = w.y;
    } else {
        v0 = kv_at(vc, base + (size_t)d, si);
        v1 = d + 1 < hd ? kv_at(vc, base + (size_t)d + 1, si) : 0.0f;
    }
}

/* Each of v[HB] over the block (max or sum; the warps' values in warp order), to every thread. */
template <int HB> __device__ __forceinline__ void block_reduce(float (&v)[HB], float (*red)[AF_WARPS], int is_max) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
    for (int i = 0; i < HB; i++) {
        v[i] = is_max ? warp_max(v[i]) : warp_sum(v[i]);
        if (lane == 0) red[i][warp] = v[i];
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < HB; i++) {
        float r = red[i][0];
        for (int w = 1; w < AF_WARPS; w++) r = is_max ? (red[i][w] > r ? red[i][w] : r) : r + red[i][w];
        v[i] = r;
    }
    __syncthreads(); /* red is reused by the next reduction */
}

/* One tile of keys [p0, p0 + cnt) of HB queries (sm.qs) of kv head kvh: per query the
 * tile's max score m, l = sum exp(score - m) and, for dim tid (tid < hd), o = sum
 * exp(score - m) v. Every thread of the block calls it. */
template <int HB>
__device__ void attn_tile_sums(const kvdesc &kc, const kvdesc &vc, attn_smem<HB> &sm, int p0, int cnt, int kvh, int n_kv,
                               int hd, float scale, float (&m)[HB], float (&l)[HB], float (&o)[HB]) {
    int tid = threadIdx.x;
    int HP = (hd + 1) / 2, G = AF_THREADS / HP, dp = tid % HP, g = tid / HP;
    int active = g < G;
    size_t row = (size_t)n_kv * (size_t)hd;
#pragma unroll
    for (int i = 0; i < HB; i++) m[i] = -INFINITY;
    for (int r = tid; r < cnt; r += AF_THREADS) {
        size_t p = (size_t)(p0 + r);
        float sv[HB];
        key_dots<HB>(kc, sm.qs, p * row + (size_t)kvh * (size_t)hd, p * (size_t)n_kv + (size_t)kvh, hd, sv);
#pragma unroll
        for (int i = 0; i < HB; i++) {
            float v = sv[i] * scale;
            sm.sc[i][r] = v;
            m[i] = v > m[i] ? v : m[i];
        }
    }
    block_reduce<HB>(m, sm.red, 1);
#pragma unroll
    for (int i = 0; i < HB; i++) l[i] = 0.0f;
    for (int r = tid; r < cnt; r += AF_THREADS) /* each thread its own keys' scores */
#pragma unroll
        for (int i = 0; i < HB; i++) {
            float e = expf(sm.sc[i][r] - m[i]);
            sm.sc[i][r] = e;
            l[i] += e;
        }
    block_reduce<HB>(l, sm.red, 0); /* also the barrier before the values read sc */
    float o0[HB], o1[HB];
#pragma unroll
    for (int i = 0; i < HB; i++) o0[i] = o1[i] = 0.0f;
    if (active && vc.dtype == LM_DT_F16 && hd % 2 == 0) {
        /* f16 values (the default cache): AF_AHEAD keys' loads issued before their sums,
         * which are the same as below in the same order. Through value_pair's branch on
         * the type each key waited for its load in turn: ~80 us a layer at 600 keys. */
        const uint16_t *vb = (const uint16_t *)vc.data + (size_t)kvh * (size_t)hd + (size_t)(2 * dp);
        for (int r0 = g; r0 < cnt; r0 += AF_AHEAD * G) {
            uint32_t wv[AF_AHEAD];
#pragma unroll
            for (int k = 0; k < AF_AHEAD; k++) {
                int r = r0 + k * G;
                wv[k] = r < cnt ? __ldg((const uint32_t *)(vb + (size_t)(p0 + r) * row)) : 0u;
            }
#pragma unroll
            for (int k = 0; k < AF_AHEAD; k++) {
                int r = r0 + k * G;
                if (r < cnt) {
                    float v0 = half_bits(wv[k] & 0xffffu), v1 = half_bits(wv[k] >> 16);
#pragma unroll
                    for (int i = 0; i < HB; i++) {
                        float e = sm.sc[i][r];
                        o0[i] = fmaf(e, v0, o0[i]);
                        o1[i] = fmaf(e, v1, o1[i]);
                    }
                }
            }
        }
    } else if (active) {
        int d = 2 * dp;
#pragma unroll 8
        for (int r = g; r < cnt; r += G) {
            size_t p = (size_t)(p0 + r), base = p * row + (size_t)kvh * (size_t)hd, si = p * (size_t)n_kv + (size_t)kvh;
            float v0, v1;
            value_pair(vc, base, si, d, hd, v0, v1);
#pragma unroll
            for (int i = 0; i < HB; i++) {
                float e = sm.sc[i][r];
                o0[i] = fmaf(e, v0, o0[i]);
                o1[i] = fmaf(e, v1, o1[i]);
            }
        }
    }
    if (active)
#pragma unroll
        for (int i = 0; i < HB; i++) {
            sm.part[i][g * 2 * HP + 2 * dp] = o0[i];
            sm.part[i][g * 2 * HP + 2 * dp + 1] = o1[i];
        }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < HB; i++) {
        o[i] = 0.0f;
        if (tid < hd)
            for (int k = 0; k < G; k++) o[i] += sm.part[i][k * 2 * HP + tid];
    }
    __syncthreads(); /* sc and part are rewritten by the next tile */
}

/* The running (M, L, O) of the tiles so far and tile (m, l, o): both rescaled to the larger
 * max. The first tile (M = -inf) comes out as itself. */
__device__ __forceinline__ void merge_tile(float &M, float &L, float &O, float m, float l, float o) {
    float nm = m > M ? m : M, a = expf(M - nm), b = expf(m - nm);
    L = L * a + l * b;
    O = O * a + o * b;
    M = nm;
}

/* out = O / L for dim tid, with the head's sink (if any) in the denominator. */
__device__ __forceinline__ void attn_write(float *ot, float M, float L, float O, const float *sinks, int h, int hd) {
    float corr = 1.0f, lt = L;
    if (sinks) {
        float sink = sinks[h];
        if (sink > M) {
            corr = expf(M - sink);
            lt *= corr;
            M = sink;
        }
        lt += expf(sink - M);
    }
    float inv = 1.0f / lt;
    if ((int)threadIdx.x < hd) ot[threadIdx.x] = O * corr * inv;
}

/* The query's visible keys: [first, pos]. */
__device__ __forceinline__ int attn_first(int pos, int window) {
    return window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
}

/* Block: query t, heads h0 .. h0 + HB - 1 (all of one kv head: HB divides the heads a kv
 * head serves). */
template <int HB>
__global__ void __launch_bounds__(AF_THREADS) k_attention_fast(float *out, const float *q, kvdesc kc, kvdesc vc, int n,
                                                                const int *dpos, int pos0, int n_heads, int n_kv, int hd,
                                                                float scale, int window, const float *sinks) {
    if (dpos) pos0 += *dpos;
    __shared__ attn_smem<HB> sm;
    int groups = n_heads / HB, t = (int)(blockIdx.x / (unsigned)groups), h0 = (int)(blockIdx.x % (unsigned)groups) * HB;
    int kvh = h0 / (n_heads / n_kv), pos = pos0 + t, first = attn_first(pos, window);
    size_t item0 = (size_t)t * (size_t)n_heads + (size_t)h0;
    const float *qt = q + item0 * (size_t)hd;
    for (int d = threadIdx.x; d < HB * hd; d += AF_THREADS) sm.qs[d / hd][d % hd] = qt[d];
    __syncthreads();
    float M[HB], L[HB], O[HB];
#pragma unroll
    for (int i = 0; i < HB; i++) M[i] = -INFINITY, L[i] = O[i] = 0.0f;
    for (int p0 = first; p0 <= pos; p0 += AF_TILE) {
        int cnt = pos - p0 + 1 < AF_TILE ? pos - p0 + 1 : AF_TILE;
        float m[HB], l[HB], o[HB];
        attn_tile_sums<HB>(kc, vc, sm, p0, cnt, kvh, n_kv, hd, scale, m, l, o);
#pragma unroll
        for (int i = 0; i < HB; i++) merge_tile(M[i], L[i], O[i], m[i], l[i], o[i]);
    }
#pragma unroll
    for (int i = 0; i < HB; i++) attn_write(out + (item0 + (size_t)i) * (size_t)hd, M[i], L[i], O[i], sinks, h0 + i, hd);
}

/* Block (tile j = blockIdx.x, item = blockIdx.y): the tile's partial into
 * parts[(item * tiles + j) * (hd + 2)]: m, l, o[hd]. Tiles past the query's last key
 * (the grid covers the cache's capacity, so that a recorded step serves every
 * position) return at once. */
__global__ void __launch_bounds__(AF_THREADS) k_attention_split(float *parts, int tiles, const float *q, kvdesc kc,
                                                                 kvdesc vc, const int *dpos, int pos0, int n_heads,
                                                                 int n_kv, int hd, float scale, int window) {
    if (dpos) pos0 += *dpos;
    __shared__ attn_smem<1> sm;
    size_t item = blockIdx.y;
    int t = (int)(item / (size_t)n_heads), h = (int)(item % (size_t)n_heads);
    int kvh = h / (n_heads / n_kv), pos = pos0 + t, p0 = attn_first(pos, window) + (int)blockIdx.x * AF_TILE;
    if (p0 > pos) return;
    const float *qt = q + item * (size_t)hd;
    for (int d = threadIdx.x; d < hd; d += AF_THREADS) sm.qs[0][d] = qt[d];
    __syncthreads();
    int cnt = pos - p0 + 1 < AF_TILE ? pos - p0 + 1 : AF_TILE;
    float m[1], l[1], o[1];
    attn_tile_sums<1>(kc, vc, sm, p0, cnt, kvh, n_kv, hd, scale, m, l, o);
    float *pt = parts + (item * (size_t)tiles + blockIdx.x) * (size_t)(hd + 2);
    if (threadIdx.x == 0) {
        pt[0] = m[0];
        pt[1] = l[0];
    }
    if ((int)threadIdx.x < hd) pt[2 + threadIdx.x] = o[0];
}

/* One block per item: its tiles' partials merged in tile order, as k_attention_fast does. */
__global__ void __launch_bounds__(AF_THREADS) k_attention_merge(float *out, const float *parts, int tiles, const int *dpos,
                                                                 int pos0, int n_heads, int hd, int window,
                                                                 const float *sinks) {
    if (dpos) pos0 += *dpos;
    size_t item = blockIdx.x;
    int t = (int)(item / (size_t)n_heads), h = (int)(item % (size_t)n_heads), pos = pos0 + t;
    int used = (pos - attn_first(pos, window)) / AF_TILE + 1;
    float M = -INFINITY, L = 0.0f, O = 0.0f;
    for (int j = 0; j < used && j < tiles; j++) {
        const float *pt = parts + (item * (size_t)tiles + (size_t)j) * (size_t)(hd + 2);
        merge_tile(M, L, O, pt[0], pt[1], (int)threadIdx.x < hd ? pt[2 + threadIdx.x] : 0.0f);
    }
    attn_write(out + item * (size_t)hd, M, L, O, sinks, h, hd);
}

/* Device scratch that grows on demand (*buf, *have bytes): at least `bytes` of it (and
 * `least`, so that small requests do not grow it step by step), or -1
 * (and no error left behind) when it cannot be had now -- while a step is recorded, or
 * over the memory cap -- and the caller then takes a path without it, with the same result. */
static int grow_scratch(lm_backend *be, void **buf, size_t *have, size_t bytes, size_t least, const char *what) {
    cuda_impl *im = impl_of(be);
    if (*have >= bytes) return 0;
    if (im->recording) return -1;
    size_t want = bytes < least ? least : bytes;
    char keep[LM_ERR_LEN];
    memcpy(keep, be->err, sizeof keep);
    if (mem_take(be, want, what) != 0) {
        memcpy(be->err, keep, sizeof keep);
        return -1;
    }
    void *p = NULL;
    if (cudaMalloc(&p, want) != cudaSuccess) {
        cudaGetLastError();
        mem_give(im, want);
        return -1;
    }
    if (*buf) {
        cudaStreamSynchronize(im->stream); /* kernels queued before may still read the old one */
        cudaFree(*buf);
        mem_give(im, *have);
        graphs_drop(im); /* recordings hold its address */
    }
    *buf = p;
    *have = want;
    return 0;
}

/* The split attention kernels' partials: without them the one-block kernel runs. */
static int attn_scratch(lm_backend *be, size_t bytes) {
    cuda_impl *im = impl_of(be);
    return grow_scratch(be, (void **)&im->att_parts, &im->att_parts_bytes, bytes, (size_t)1 << 20, "attention scratch");
}

static int cuda_attention(lm_backend *be, float *out, const float *q, const lm_kv *k, const lm_kv *v, int n, int pos0,
                          int n_heads, int n_kv, int hd, float scale, int window, const float *sinks) {
    if (kv_type_ok(be, k) != 0 || kv_type_ok(be, v) != 0) return -1;
    if (hd < 1 || hd > ATT_MAX_HD) return lm_errf(be->err, "attention heads of %d dims (the cuda kernel takes 1..%d)", hd, ATT_MAX_HD);
    if (n_kv < 1 || n_heads % n_kv != 0)
        return lm_errf(be->err, "attention: %d heads over %d kv heads", n_heads, n_kv);
    const float *ds = dev_floats(be, sinks, (size_t)n_heads, "attention sinks");
    if (sinks && !ds) return -1;
    if (n <= 0) return 0;
    kvdesc kc = {(int)k->dtype, k->data, k->scales}, vc = {(int)v->dtype, v->data, v->scales};
    size_t items = (size_t)n * (size_t)n_heads;
    const int *dpos = step_pos(impl_of(be), &pos0);
    if (!impl_of(be)->simple) {
        if (items > 0x7fffffffu) return lm_errf(be->err, "attention of %d queries x %d heads in one call", n, n_heads);
        /* a few queries: their keys split over blocks, as many tiles as the cache can hold
         * (a recorded step is replayed at later positions), where the cache says how many
         * positions it holds or no recording depends on it */
        int span = k->positions > 0 ? k->positions : dpos ? 0 : pos0 + n;
        if (window > 0 && window < span) span = window;
        int tiles = (span + AF_TILE - 1) / AF_TILE;
        size_t part_bytes = items * (size_t)tiles * (size_t)(hd + 2) * sizeof(float);
        if (!impl_of(be)->no_split && n <= AS_MAX_QUERIES && tiles >= 2 && tiles <= 65535 && attn_scratch(be, part_bytes) == 0) {
            cuda_impl *im = impl_of(be);
            tim_begin(im);
            k_attention_split<<<dim3((unsigned)tiles, (unsigned)items), AF_THREADS, 0, im->stream>>>(
                im->att_parts, tiles, q, kc, vc, dpos, pos0, n_heads, n_kv, hd, scale, window);
            if (launched(be, "attention split") != 0) return -1;
            tim_begin(im);
            k_attention_merge<<<(unsigned)items, AF_THREADS, 0, im->stream>>>(out, im->att_parts, tiles, dpos, pos0,
                                                                              n_heads, hd, window, ds);
            return launched(be, "attention merge");
        }
        /* the heads of one kv head together (as many as divide them, up to AF_MAX_HEADS),
         * while that leaves two blocks an SM */
        cuda_impl *im = impl_of(be);
        int hb = im->att_one_head ? 1 : AF_MAX_HEADS;
        while (hb > 1 && ((n_heads / n_kv) % hb != 0 || items / (size_t)hb < 2 * (size_t)im->sm_count)) hb /= 2;
        static_assert(AF_MAX_HEADS == 8, "the kernels below");
        void (*k)(float *, const float *, kvdesc, kvdesc, int, const int *, int, int, int, int, float, int,
                  const float *) = hb == 8 ? k_attention_fast<8> : hb == 4 ? k_attention_fast<4> : hb == 2 ? k_attention_fast<2> : k_attention_fast<1>;
        tim_begin(im);
        k<<<(unsigned)(items / (size_t)hb), AF_THREADS, 0, im->stream>>>(out, q, kc, vc, n, dpos, pos0, n_heads, n_kv, hd,
                                                                       scale, window, ds);
        return launched(be, "attention");
    }
    tim_begin(impl_of(be));
    k_attention<<<blocks_for(items, ATT_WARPS), ATT_WARPS * 32, 0, impl_of(be)->stream>>>(
        out, q, kc, vc, n, dpos, pos0, n_heads, n_kv, hd, scale, window, ds, attn_tile(hd));
    return launched(be, "attention simple");
}

/* ---- routing ---------------------------------------------------------------------------------------------- */

typedef struct {
    int kind, n_experts, top_k, renormalize, n_group, topk_group;
    float scale;
    const float *bias; /* device [n_experts] or NULL */
} route_desc;

/* The score best_left compares: the logit itself, or the sigmoid router's biased
 * choice score (recomputed on each look: the same float every time). */
__device__ __forceinline__ float sigmoid_of(float v) { return 1.0f / (1.0f + expf(-v)); }
__device__ __forceinline__ float route_score(const route_desc &r, const float *lg, int e) {
    if (r.kind != LM_ROUTER_SIGMOID) return lg[e];
    return sigmoid_of(lg[e]) + (r.bias ? r.bias[e] : 0.0f);
}

/* cpu_ops.c best_left over experts [lo, lo + count): the largest score not in
 * taken[0..k) and in an allowed group (group_mask NULL = all; bit g of groups of
 * `per`), ties to the lower index; -1 if none. */
__device__ int best_left(const route_desc &r, const float *lg, int lo, int count, const int32_t *taken, int k,
                         const uint64_t *group_mask, int per) {
    int best = -1;
    float bs = 0.0f;
    for (int e = lo; e < lo + count; e++) {
        if (group_mask && !((*group_mask >> (e / per)) & 1u)) continue;
        int used = 0;
        for (int j = 0; j < k; j++) used |= taken[j] == e;
        if (used) continue;
        float s = route_score(r, lg, e);
        if (best < 0 || s > bs) {
            best = e;
            bs = s;
        }
    }
    return best;
}

/* One thread per token: cpu_ops.c's softmax_topk, topk_softmax and sigmoid_group,
 * then the scale and the insertion sort by expert, in the same operations. */
__global__ void k_route(route_desc r, const float *logits, int n, int32_t *sel, float *selw) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    int E = r.n_experts, K = r.top_k;
    const float *lg = logits + (size_t)t * (size_t)E;
    int32_t *st = sel + (size_t)t * (size_t)K;
    float *wt = selw + (size_t)t * (size_t)K;
    if (r.kind == LM_ROUTER_SOFTMAX_TOPK) {
        float mx = lg[0];
        for (int e = 1; e < E; e++) mx = lg[e] > mx ? lg[e] : mx;
        float sum = 0;
        for (int e = 0; e < E; e++) sum += expf(lg[e] - mx);
        for (int k = 0; k < K; k++) {
            st[k] = best_left(r, lg, 0, E, st, k, NULL, 1);
            wt[k] = expf(lg[st[k]] - mx) / sum;
        }
        if (r.renormalize) {
            float tot = 0;
            for (int k = 0; k < K; k++) tot += wt[k];
            for (int k = 0; k < K; k++) wt[k] /= tot;
        }
    } else if (r.kind == LM_ROUTER_TOPK_SOFTMAX) {
        for (int k = 0; k < K; k++) st[k] = best_left(r, lg, 0, E, st, k, NULL, 1);
        float mx = lg[st[0]], sum = 0;
        for (int k = 0; k < K; k++) sum += (wt[k] = expf(lg[st[k]] - mx));
        for (int k = 0; k < K; k++) wt[k] /= sum;
    } else {
        uint64_t allowed = 0;
        const uint64_t *mask = NULL;
        int per = 1;
        if (r.n_group > 1) {
            int G = r.n_group;
            per = E / G;
            float gscore[LM_ROUTER_MAX_GROUPS];
            int32_t gsel[LM_ROUTER_MAX_GROUPS];
            for (int g = 0; g < G; g++) { /* the sum of the group's two best choice scores */
                int32_t two[2];
                two[0] = best_left(r, lg, g * per, per, two, 0, NULL, 1);
                gscore[g] = route_score(r, lg, two[0]);
                if (per > 1) {
                    two[1] = best_left(r, lg, g * per, per, two, 1, NULL, 1);
                    gscore[g] += route_score(r, lg, two[1]);
                }
            }
            for (int k = 0; k < r.topk_group; k++) { /* best_left over the group scores */
                int best = -1;
                for (int g = 0; g < G; g++) {
                    int used = 0;
                    for (int j = 0; j < k; j++) used |= gsel[j] == g;
                    if (!used && (best < 0 || gscore[g] > gscore[best])) best = g;
                }
                gsel[k] = best;
                allowed |= 1ull << best;
            }
            mask = &allowed;
        }
        for (int k = 0; k < K; k++) {
            st[k] = best_left(r, lg, 0, E, st, k, mask, per);
            wt[k] = sigmoid_of(lg[st[k]]);
        }
        if (r.renormalize) {
            float tot = 0;
            for (int k = 0; k < K; k++) tot += wt[k];
            for (int k = 0; k < K; k++) wt[k] /= tot + 1e-20f;
        }
    }
    if (r.scale != 1.0f && r.scale != 0.0f)
        for (int k = 0; k < K; k++) wt[k] *= r.scale;
    for (int a = 1; a < K; a++) /* ascending expert order: the summation order */
        for (int b = a; b > 0 && st[b - 1] > st[b]; b--) {
            int32_t ti = st[b];
            st[b] = st[b - 1];
            st[b - 1] = ti;
            float tw = wt[b];
            wt[b] = wt[b - 1];
            wt[b - 1] = tw;
        }
}

/* Routing, fast: a warp per token for the two softmax routers (the sigmoid router
 * keeps the one-thread kernel). Lane i holds experts i, i+32, ...; each of the top_k
 * rounds is a warp arg-max (ties to the lower index, as best_left); the softmax's
 * sum is taken over lanes (another order than the CPU's, a few ulps). */
#define RW_MAX_PER_LANE 32 /* experts per lane: E <= 1024 */
/* PL: experts per lane the kernel holds in registers (E <= 32 * PL; the smallest
 * instance that fits is launched): every logit is loaded once, all at the start. */
template <int PL> __global__ void k_route_warp(route_desc r, const float *logits, int n, int32_t *sel, float *selw) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (warp >= n) return;
    int E = r.n_experts, K = r.top_k;
    const float *lg = logits + (size_t)warp * (size_t)E;
    int32_t *st = sel + (size_t)warp * (size_t)K;
    float *wt = selw + (size_t)warp * (size_t)K;
    float v[PL];
#pragma unroll
    for (int i = 0; i < PL; i++) v[i] = lane + 32 * i < E ? lg[lane + 32 * i] : 0.0f;
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < PL; i++)
        if (lane + 32 * i < E) mx = v[i] > mx ? v[i] : mx;
    mx = warp_max(mx);
    uint32_t taken = 0;
    float sum = 0.0f, my_score = 0.0f;
    int my_sel = 0;
    if (r.kind == LM_ROUTER_SOFTMAX_TOPK) {
#pragma unroll
        for (int i = 0; i < PL; i++)
            if (lane + 32 * i < E) sum += expf(v[i] - mx);
        sum = warp_sum(sum);
    }
    for (int k = 0; k < K; k++) {
        int best = -1;
        float bs = 0.0f;
#pragma unroll
        for (int i = 0; i < PL; i++) {
            int e = lane + 32 * i;
            if (e >= E || ((taken >> i) & 1u)) continue;
            float s = v[i];
            if (best < 0 || s > bs) best = e, bs = s;
        }
        for (int off = 16; off > 0; off /= 2) {
            int ob = __shfl_xor_sync(0xffffffffu, best, off);
            float os = __shfl_xor_sync(0xffffffffu, bs, off);
            if (ob >= 0 && (best < 0 || os > bs || (os == bs && ob < best))) best = ob, bs = os;
        }
        if (best % 32 == lane) taken |= 1u << (best / 32);
        if (lane == k) my_sel = best, my_score = bs; /* choice k stays in lane k (K <= 32) */
    }
    /* The weights as the one-thread kernel computes them, the sums in choice order (each
     * lane adds the choices' values in turn, fetched by shuffles): the choices and their
     * logits stay in registers, where reading them back from memory cost a round trip
     * each (~8 us a layer on the H100). */
    const unsigned full = 0xffffffffu;
    float w;
    if (r.kind == LM_ROUTER_SOFTMAX_TOPK) {
        w = expf(my_score - mx) / sum;
        if (r.renormalize) {
            float tot = 0;
            for (int k = 0; k < K; k++) tot += __shfl_sync(full, w, k);
            w /= tot;
        }
    } else {
        float m0 = __shfl_sync(full, my_score, 0), e = expf(my_score - m0), s = 0;
        for (int k = 0; k < K; k++) s += __shfl_sync(full, e, k);
        w = e / s;
    }
    if (r.scale != 1.0f && r.scale != 0.0f) w *= r.scale;
    /* ascending expert order (the summation order): choice k goes where its rank says */
    int rank = 0;
    for (int k = 0; k < K; k++) rank += __shfl_sync(full, my_sel, k) < my_sel;
    if (lane < K) {
        st[rank] = my_sel;
        wt[rank] = w;
    }
}

static int cuda_route(lm_backend *be, const lm_router *r, const float *logits, int n, int32_t *sel, float *selw) {
    int E = r->n_experts, K = r->top_k;
    if (K < 1 || K > E) return lm_errf(be->err, "router: top_k %d with %d experts", K, E);
    if (r->kind == LM_ROUTER_SIGMOID) {
        if (E > LM_ROUTER_MAX_EXPERTS)
            return lm_errf(be->err, "router: %d experts (at most %d)", E, LM_ROUTER_MAX_EXPERTS);
        if (r->n_group > 1 && (r->n_group > LM_ROUTER_MAX_GROUPS || E % r->n_group != 0 || r->topk_group < 1 ||
                               r->topk_group > r->n_group || r->topk_group * (E / r->n_group) < K))
            return lm_errf(be->err, "router: %d experts in %d groups, %d groups kept, top_k %d do not fit", E,
                           r->n_group, r->topk_group, K);
    } else if (r->kind != LM_ROUTER_SOFTMAX_TOPK && r->kind != LM_ROUTER_TOPK_SOFTMAX) {
        return lm_errf(be->err, "router kind %d is unknown", (int)r->kind);
    }
    route_desc d = {(int)r->kind, E, K, r->renormalize, r->n_group, r->topk_group, r->scale, NULL};
    if (r->kind == LM_ROUTER_SIGMOID && r->correction_bias &&
        !(d.bias = dev_floats(be, r->correction_bias, (size_t)E, "router correction biases")))
        return -1;
    if (n <= 0) return 0;
    if (!impl_of(be)->simple && r->kind != LM_ROUTER_SIGMOID && E <= 32 * RW_MAX_PER_LANE && K <= 32) {
        tim_begin(impl_of(be));
        int pl = (E + 31) / 32;
        void (*kern)(route_desc, const float *, int, int32_t *, float *) =
            pl <= 1 ? k_route_warp<1> : pl <= 2 ? k_route_warp<2> : pl <= 4 ? k_route_warp<4> : pl <= 8 ? k_route_warp<8>
            : pl <= 16 ? k_route_warp<16> : k_route_warp<RW_MAX_PER_LANE>;
        kern<<<blocks_for((size_t)n, 4), 128, 0, impl_of(be)->stream>>>(d, logits, n, sel, selw);
        return launched(be, "route");
    }
    tim_begin(impl_of(be));
    k_route<<<blocks_for((size_t)n, 64), 64, 0, impl_of(be)->stream>>>(d, logits, n, sel, selw);
    return launched(be, "route simple");
}

/* ---- experts' tokens ---------------------------------------------------------------------------------------- */

__global__ void k_gather_rows(float *dst, const float *src, const int32_t *idx, int m, int width, int idx_div) {
    GRID_LOOP(i, (size_t)m * (size_t)width) {
        size_t r = i / (size_t)width, c = i % (size_t)width;
        dst[i] = src[(size_t)(idx[r] / idx_div) * (size_t)width + c];
    }
}

__global__ void k_scatter_rows(float *dst, const float *src, const int32_t *idx, int m, int width) {
    GRID_LOOP(i, (size_t)m * (size_t)width) {
        size_t r = i / (size_t)width, c = i % (size_t)width;
        dst[(size_t)idx[r] * (size_t)width + c] = src[i];
    }
}

/* The pending gather's or scatter's segments: one launch (k_gather_rows or
 * k_scatter_rows itself for one segment). */
__global__ void k_gather_segs(float *dst, const float *src, row_segs sg, int width, int idx_div) {
    GRID_LOOP(i, (size_t)sg.start[sg.count] * (size_t)width) {
        int r = (int)(i / (size_t)width), s = 0;
        size_t c = i % (size_t)width;
        while (r >= sg.start[s + 1]) s++;
        dst[i] = src[(size_t)(sg.idx[s][r - sg.start[s]] / idx_div) * (size_t)width + c];
    }
}

__global__ void k_scatter_segs(float *dst, const float *src, row_segs sg, int width) {
    GRID_LOOP(i, (size_t)sg.start[sg.count] * (size_t)width) {
        int r = (int)(i / (size_t)width), s = 0;
        size_t c = i % (size_t)width;
        while (r >= sg.start[s + 1]) s++;
        dst[(size_t)sg.idx[s][r - sg.start[s]] * (size_t)width + c] = src[i];
    }
}

static int launch_segs(lm_backend *be, int scatter) {
    cuda_impl *im = impl_of(be);
    const row_segs *sg = &im->pend.segs;
    int m = sg->start[sg->count], width = im->pend.dim;
    size_t total = (size_t)m * (size_t)width;
    tim_begin(im);
    if (scatter) {
        if (sg->count == 1) k_scatter_rows<<<ew_blocks(total), EW_THREADS, 0, im->stream>>>(im->pend.y, im->pend.x, sg->idx[0], m, width);
        else k_scatter_segs<<<ew_blocks(total), EW_THREADS, 0, im->stream>>>(im->pend.y, im->pend.x, *sg, width);
        return launched(be, sg->count == 1 ? "scatter_rows" : "scatter_rows xN");
    }
    if (sg->count == 1)
        k_gather_rows<<<ew_blocks(total), EW_THREADS, 0, im->stream>>>(im->pend.y, im->pend.x, sg->idx[0], m, width, im->pend.div);
    else k_gather_segs<<<ew_blocks(total), EW_THREADS, 0, im->stream>>>(im->pend.y, im->pend.x, *sg, width, im->pend.div);
    return launched(be, sg->count == 1 ? "gather_rows" : "gather_rows xN");
}

/* The buffer of this backend holding p (its base), 0 if none. */
static uintptr_t buffer_of(const cuda_impl *im, const void *p) {
    uintptr_t a = (uintptr_t)p;
    size_t lo = 0, hi = im->n_ranges;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (im->ranges[mid].base <= a) lo = mid + 1;
        else hi = mid;
    }
    return lo > 0 && a - im->ranges[lo - 1].base < im->ranges[lo - 1].bytes ? im->ranges[lo - 1].base : 0;
}

/* A gather (scatter) joins the pending one when it continues its contiguous side in
 * the same buffers with the other side in another buffer (so no segment reads what
 * another writes): forward.c's per-expert calls of one group, whose index lists are
 * distinct routes. */
static int segs_join(lm_backend *be, int kind, float *y, const float *x, const int32_t *idx, int m, int width, int div) {
    cuda_impl *im = impl_of(be);
    row_segs *sg = &im->pend.segs;
    if (im->pend.kind == kind && sg->count < SEG_MAX && im->pend.dim == width && im->pend.div == div &&
        (long long)sg->start[sg->count] + m < 0x7fffffff) {
        size_t off = (size_t)sg->start[sg->count] * (size_t)width;
        int cont = kind == PEND_GATHER ? (y == im->pend.y + off && x == im->pend.x) : (x == im->pend.x + off && y == im->pend.y);
        uintptr_t by = buffer_of(im, y), bx = buffer_of(im, x);
        if (cont && by && bx && by != bx) {
            sg->idx[sg->count] = idx;
            sg->start[sg->count + 1] = sg->start[sg->count] + m;
            sg->count++;
            return 1;
        }
    }
    return 0;
}

static int segs_hold(lm_backend *be, int kind, float *y, const float *x, const int32_t *idx, int m, int width, int div) {
    cuda_impl *im = impl_of(be);
    if (segs_join(be, kind, y, x, idx, m, width, div)) return 0;
    if (flush_pending(be) != 0) return -1;
    im->pend.kind = kind;
    im->pend.y = y;
    im->pend.x = x;
    im->pend.dim = width;
    im->pend.div = div;
    im->pend.segs.count = 1;
    im->pend.segs.idx[0] = idx;
    im->pend.segs.start[0] = 0;
    im->pend.segs.start[1] = m;
    if (im->simple) return flush_pending(be);
    return 0;
}

static int cuda_gather_rows(lm_backend *be, float *dst, const float *src, const int32_t *idx, int m, int width,
                            int idx_div) {
    if (m <= 0 || width <= 0) return flush_pending(be);
    if (idx_div < 1) return lm_errf(be->err, "gather_rows with divisor %d", idx_div);
    return segs_hold(be, PEND_GATHER, dst, src, idx, m, width, idx_div);
}

static int cuda_scatter_rows(lm_backend *be, float *dst, const float *src, const int32_t *idx, int m, int width) {
    if (m <= 0 || width <= 0) return flush_pending(be);
    return segs_hold(be, PEND_SCATTER, dst, src, idx, m, width, 1);
}

/* y[t][i]: the weighted sum over k in ascending order from 0, then the shared
 * expert, each product rounded before it is added (as the CPU's loop). */
__global__ void k_moe_combine(float *y, const float *eout, const float *selw, const float *shared, int n, int top_k,
                              int width) {
    GRID_LOOP(i, (size_t)n * (size_t)width) {
        size_t t = i / (size_t)width, c = i % (size_t)width;
        float acc = 0.0f;
        for (int k = 0; k < top_k; k++)
            acc += eout[(t * (size_t)top_k + (size_t)k) * (size_t)width + c] * selw[t * (size_t)top_k + (size_t)k];
        if (shared) acc += shared[i];
        y[i] = acc;
    }
}

static int launch_combine(lm_backend *be) {
    cuda_impl *im = impl_of(be);
    size_t total = (size_t)im->pend.rows * (size_t)im->pend.dim;
    tim_begin(im);
    k_moe_combine<<<ew_blocks(total), EW_THREADS, 0, im->stream>>>(im->pend.y, im->pend.eout, im->pend.selw,
                                                                  im->pend.shared, im->pend.rows, im->pend.n_kv,
                                                                  im->pend.dim);
    return launched(be, "moe_combine");
}

/* Held back: the residual add and the next norm usually join it. */
static int cuda_moe_combine(lm_backend *be, float *y, const float *eout, const float *selw, const float *shared, int n,
                            int top_k, int width) {
    cuda_impl *im = impl_of(be);
    if (flush_pending(be) != 0) return -1;
    if (n <= 0 || width <= 0) return 0;
    im->pend.kind = PEND_COMBINE;
    im->pend.y = y;
    im->pend.eout = eout;
    im->pend.selw = selw;
    im->pend.shared = shared;
    im->pend.rows = n;
    im->pend.n_kv = top_k;
    im->pend.dim = width;
    if (im->simple) return flush_pending(be);
    return 0;
}

/* ---- the logits' scan ------------------------------------------------------------------------------------- */

/* One block: a decode step's ~150k logits are 600 KB, a few microseconds for one
 * SM with its loads in flight, and a single block needs no second launch or atomics
 * to combine its parts (and so no resetting of a counter between replays). */
#define SCAN_THREADS 1024
#define SCAN_AHEAD 4 /* 16-byte loads a thread issues before comparing */

/* Folds value x at index i into a thread's count of NaN / inf and its best. A
 * thread sees its indices in increasing order, so keeping only a strictly larger
 * value keeps the first of equal ones, as the host's scan does. */
__device__ __forceinline__ void scan_value(float x, int i, int &bad, float &top, int &best) {
    bad += (__float_as_uint(x) & 0x7f800000u) == 0x7f800000u;
    if (!isnan(x) && (best < 0 || x > top)) {
        top = x;
        best = i;
    }
}

/* The better of two candidates (index -1: none): the larger value, then the lower
 * index. A strict total order, so the block's result does not depend on the order in
 * which the threads' candidates meet. */
__device__ __forceinline__ void scan_merge(float &top, int &best, float top2, int best2) {
    if (best2 >= 0 && (best < 0 || top2 > top || (top2 == top && best2 < best))) {
        top = top2;
        best = best2;
    }
}

__global__ void __launch_bounds__(SCAN_THREADS) k_logits_scan(int32_t *result, const float *__restrict__ v, int n) {
    int bad = 0, best = -1;
    float top = 0.0f;
    int n4 = (uintptr_t)v % 16 == 0 ? n / 4 : 0; /* whole 16-byte groups; the rest one by one */
    const float4 *v4 = (const float4 *)v;
    for (int base = threadIdx.x; base < n4; base += SCAN_THREADS * SCAN_AHEAD) {
        float4 x[SCAN_AHEAD];
#pragma unroll
        for (int j = 0; j < SCAN_AHEAD; j++) {
            int k = base + j * SCAN_THREADS;
            x[j] = k < n4 ? v4[k] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int j = 0; j < SCAN_AHEAD; j++) {
            int k = base + j * SCAN_THREADS;
            if (k >= n4) break;
            scan_value(x[j].x, 4 * k, bad, top, best);
            scan_value(x[j].y, 4 * k + 1, bad, top, best);
            scan_value(x[j].z, 4 * k + 2, bad, top, best);
            scan_value(x[j].w, 4 * k + 3, bad, top, best);
        }
    }
    for (int i = 4 * n4 + (int)threadIdx.x; i < n; i += SCAN_THREADS) scan_value(v[i], i, bad, top, best);
    for (int o = 16; o > 0; o /= 2) {
        bad += __shfl_down_sync(0xffffffffu, bad, o);
        float t2 = __shfl_down_sync(0xffffffffu, top, o);
        int b2 = __shfl_down_sync(0xffffffffu, best, o);
        scan_merge(top, best, t2, b2);
    }
    __shared__ int w_bad[SCAN_THREADS / 32], w_best[SCAN_THREADS / 32];
    __shared__ float w_top[SCAN_THREADS / 32];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        w_bad[warp] = bad;
        w_top[warp] = top;
        w_best[warp] = best;
    }
    __syncthreads();
    if (warp != 0) return;
    bad = w_bad[lane]; /* SCAN_THREADS / 32 == 32 warps: one per lane */
    top = w_top[lane];
    best = w_best[lane];
    for (int o = 16; o > 0; o /= 2) {
        bad += __shfl_down_sync(0xffffffffu, bad, o);
        float t2 = __shfl_down_sync(0xffffffffu, top, o);
        int b2 = __shfl_down_sync(0xffffffffu, best, o);
        scan_merge(top, best, t2, b2);
    }
    if (lane == 0) {
        result[0] = bad;
        result[1] = best;
    }
}
static_assert(SCAN_THREADS == 32 * 32, "k_logits_scan's second step takes one warp's result per lane");

static int cuda_logits_scan(lm_backend *be, int32_t *result, const float *logits, int n) {
    cuda_impl *im = impl_of(be);
    if (n < 0) return lm_errf(be->err, "logits_scan over %d values", n);
    tim_begin(im);
    k_logits_scan<<<1, SCAN_THREADS, 0, im->stream>>>(result, logits, n);
    return launched(be, "logits scan");
}

/* ---- memory ------------------------------------------------------------------------------------------------ */

static int cuda_alloc(lm_backend *be, lm_buf *out, size_t bytes) {
    cuda_impl *im = impl_of(be);
    out->ptr = NULL;
    out->bytes = 0;
    void *p = NULL;
    if (mem_take(be, bytes, "a buffer") != 0) return -1;
    cudaError_t e = cudaMalloc(&p, bytes); /* 256-byte aligned */
    if (e != cudaSuccess) {
        cudaGetLastError(); /* clear it: an allocation failure is not sticky */
        mem_give(im, bytes);
        return lm_errf(be->err, "CUDA device memory (%zu bytes): %s", bytes, cudaGetErrorString(e));
    }
    if (range_add(im, p, bytes) != 0) {
        cudaFree(p);
        mem_give(im, bytes);
        return lm_errf(be->err, "out of host memory for the table of device buffers");
    }
    out->ptr = p;
    out->bytes = bytes;
    return 0;
}

static void cuda_free_buf(lm_backend *be, lm_buf *buf) {
    cuda_impl *im = impl_of(be);
    graphs_drop(im);
    range_remove(im, buf->ptr);
    /* queued work may still use it (a KV cache copied into its successor, an upload) */
    cudaStreamSynchronize(im->stream);
    if (im->copy) cudaStreamSynchronize(im->copy);
    cudaFree(buf->ptr); /* a sticky error shows at the next op */
    mem_give(im, buf->bytes);
}

static int cuda_upload(lm_backend *be, void *dst, const void *host_src, size_t bytes) {
    cuda_impl *im = impl_of(be);
    if (!bytes) return 0;
    if (im->stage && bytes <= STAGE_HALF) { /* through the staging area: no wait */
        if (im->stage_used[im->stage_cur] + bytes > STAGE_HALF) {
            CU(be, "upload (staging)", cudaEventRecord(im->stage_ev[im->stage_cur], im->stream));
            im->stage_cur ^= 1;
            CU(be, "upload (staging)", cudaEventSynchronize(im->stage_ev[im->stage_cur]));
            im->stage_used[im->stage_cur] = 0;
        }
        uint8_t *at = im->stage + (size_t)im->stage_cur * STAGE_HALF + im->stage_used[im->stage_cur];
        memcpy(at, host_src, bytes);
        CU(be, "upload", cudaMemcpyAsync(dst, at, bytes, cudaMemcpyHostToDevice, im->stream));
        im->stage_used[im->stage_cur] += (bytes + 63) & ~(size_t)63;
        return 0;
    }
    CU(be, "upload", cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, im->stream));
    CU(be, "upload", stream_wait(im)); /* host_src may be reused at once */
    return 0;
}

/* Downloads from this size on go through the page-locked buffer (im->down): a step's
 * logits (600 KB at a 152k vocabulary), not routes or flags, whose copies cost their
 * latency whatever the memory. */
#define DOWN_STAGE_MIN ((size_t)64 << 10)
/* The buffer's largest size: 16 rows of logits at a 200k vocabulary (the device
 * logits' rows, memory.c); a larger download goes through it in parts. */
#define DOWN_STAGE_MAX ((size_t)16 << 20)

/* The page-locked buffer for a download of `bytes`, grown to hold it (up to
 * DOWN_STAGE_MAX); NULL when downloads go direct. */
static uint8_t *down_stage(cuda_impl *im, size_t bytes) {
    if (im->down_direct) return NULL;
    size_t want = bytes < DOWN_STAGE_MAX ? bytes : DOWN_STAGE_MAX;
    if (im->down_cap >= want) return im->down;
    size_t cap = im->down_cap ? im->down_cap : (size_t)1 << 20;
    while (cap < want) cap *= 2;
    if (cap > DOWN_STAGE_MAX) cap = DOWN_STAGE_MAX;
    /* no copy reads the old buffer: every staged download waited for its copy */
    if (im->down) cudaFreeHost(im->down);
    im->down = NULL;
    im->down_cap = 0;
    if (cudaMallocHost((void **)&im->down, cap) != cudaSuccess) {
        cudaGetLastError(); /* not sticky: downloads go direct from now on */
        im->down = NULL;
        im->down_direct = 1;
        return NULL;
    }
    im->down_cap = cap;
    return im->down;
}

static int cuda_download(lm_backend *be, void *host_dst, const void *src, size_t bytes) {
    cuda_impl *im = impl_of(be);
    if (!bytes) return 0;
    uint8_t *stage = bytes >= DOWN_STAGE_MIN ? down_stage(im, bytes) : NULL;
    for (size_t done = 0; stage && done < bytes;) {
        size_t part = bytes - done < im->down_cap ? bytes - done : im->down_cap;
        CU(be, "download", cudaMemcpyAsync(stage, (const uint8_t *)src + done, part, cudaMemcpyDeviceToHost, im->stream));
        CU(be, "download", stream_wait(im));
        memcpy((uint8_t *)host_dst + done, stage, part);
        done += part;
    }
    if (stage) return 0;
    CU(be, "download", cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, im->stream));
    CU(be, "download", stream_wait(im));
    return 0;
}

static int cuda_copy(lm_backend *be, void *dst, const void *src, size_t bytes) {
    if (!bytes) return 0;
    CU(be, "copy", cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, impl_of(be)->stream));
    return 0;
}

static int cuda_sync(lm_backend *be) {
    CU(be, "sync", stream_wait(impl_of(be)));
    return 0;
}

/* ---- routing left on the device ----------------------------------------------------------------------------- */

/* a prefill chunk's routes of every layer routed on the device (48 layers x 256 tokens x
 * top-8 x 4 bytes: 384 KiB) fit without a wait in the chunk */
#define LATER_BYTES ((size_t)1 << 20)

static int cuda_download_later(lm_backend *be, void *host_dst, const void *src, size_t bytes) {
    cuda_impl *im = impl_of(be);
    if (!bytes) return 0;
    size_t need = (bytes + 63) & ~(size_t)63;
    if (!im->later || need > LATER_BYTES) return cuda_download(be, host_dst, src, bytes);
    if (im->later_used + need > LATER_BYTES || im->n_later == LATER_MAX)
        CU(be, "download (making room)", stream_wait(im));
    CU(be, "download", cudaMemcpyAsync(im->later + im->later_used, src, bytes, cudaMemcpyDeviceToHost, im->stream));
    im->later_q[im->n_later].host = host_dst;
    im->later_q[im->n_later].off = im->later_used;
    im->later_q[im->n_later++].bytes = bytes;
    im->later_used += need;
    return 0;
}

/* ---- decode steps as recorded graphs ------------------------------------------------------------------------ */

static step_graph *graph_of(cuda_impl *im, uint64_t key) {
    for (int i = 0; i < STEP_GRAPHS; i++)
        if (im->graphs[i].exec && im->graphs[i].key == key) return &im->graphs[i];
    return NULL;
}

/* The step's first position into d_npast, ahead of the step's kernels. */
static int set_step_pos(lm_backend *be, int n_past) {
    cuda_impl *im = impl_of(be);
    if (!im->d_npast) {
        cudaError_t e = cudaMalloc((void **)&im->d_npast, sizeof(int));
        if (e != cudaSuccess) {
            im->d_npast = NULL;
            return cuda_fail(be, "the step position's buffer", e);
        }
    }
    return cuda_upload(be, im->d_npast, &n_past, sizeof n_past);
}

static uint64_t step_replays; /* every backend's, for tests */

static int cuda_step_replay(lm_backend *be, uint64_t key, int n_past) {
    cuda_impl *im = impl_of(be);
    step_graph *g = im->graphs_off || im->timing ? NULL : graph_of(im, key);
    if (!g) return 0;
    /* the recorded copies land at the offsets they had: the area empty, as when recorded */
    if (im->n_later) CU(be, "download", stream_wait(im));
    if (set_step_pos(be, n_past) != 0) return -1;
    CU(be, "replaying a decode step", cudaGraphLaunch(g->exec, im->stream));
    memcpy(im->later_q, g->later, sizeof(later_copy) * (size_t)g->n_later);
    im->n_later = g->n_later;
    im->later_used = g->later_used;
    g->used = ++im->graph_clock;
    step_replays++;
    return 1;
}

static int cuda_step_record_begin(lm_backend *be, uint64_t key, int n_past) {
    cuda_impl *im = impl_of(be);
    if (im->graphs_off || im->timing || im->recording || !im->later) return 0;
    if (im->n_later) CU(be, "download", stream_wait(im));
    if (set_step_pos(be, n_past) != 0) return -1;
    /* thread-local: a call that would wait for the device on this thread (a download,
     * an allocation) ends the recording with an error instead of running */
    CU(be, "recording a decode step", cudaStreamBeginCapture(im->stream, cudaStreamCaptureModeThreadLocal));
    im->recording = 1;
    im->rec_key = key;
    im->step_npast = n_past;
    return 1;
}

/* keep = 0: the caller's ops failed; the recording is dropped. */
static int cuda_step_record_end(lm_backend *be, int keep) {
    cuda_impl *im = impl_of(be);
    if (!im->recording) return 0;
    if (keep && flush_pending(be) != 0) keep = 0;
    im->pend.kind = PEND_NONE;
    im->recording = 0;
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(im->stream, &graph);
    cudaGraphExec_t exec = NULL;
    if (e == cudaSuccess && keep) e = cudaGraphInstantiate(&exec, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    later_copy *later = NULL;
    if (e == cudaSuccess && keep && im->n_later) {
        later = (later_copy *)malloc(sizeof(later_copy) * (size_t)im->n_later);
        if (!later) e = cudaErrorMemoryAllocation;
    }
    if (e != cudaSuccess || !keep) {
        /* nothing ran: the copies recorded are not coming */
        cudaGetLastError();
        if (exec) cudaGraphExecDestroy(exec);
        im->n_later = 0;
        im->later_used = 0;
        fprintf(stderr, "lazymoe: cuda: a decode step could not be recorded as a graph (%s); steps run op by op\n",
                keep ? cudaGetErrorString(e) : be->err);
        im->graphs_off = 1;
        return 0;
    }
    step_graph *slot = &im->graphs[0];
    for (int i = 0; i < STEP_GRAPHS; i++) {
        if (!im->graphs[i].exec) {
            slot = &im->graphs[i];
            break;
        }
        if (im->graphs[i].used < slot->used) slot = &im->graphs[i];
    }
    if (slot->exec) cudaGraphExecDestroy(slot->exec);
    free(slot->later);
    if (im->n_later) memcpy(later, im->later_q, sizeof(later_copy) * (size_t)im->n_later);
    slot->key = im->rec_key;
    slot->exec = exec;
    slot->later = later;
    slot->n_later = im->n_later;
    slot->later_used = im->later_used;
    slot->used = ++im->graph_clock;
    CU(be, "running a recorded decode step", cudaGraphLaunch(exec, im->stream));
    return 1;
}

/* ---- a prefill chunk's experts routed on the device ----
 * moe_routed for more tokens than a decode step has (moe_grouped): the chunk's routes are
 * grouped by expert on the device (k_route_group), then each expert's products take the
 * kernel that the host-routed path's matmul_batch gives the same expert's tokens --
 * k_gemm_tc for GEMM_MIN_TOKENS tokens or more, k_gemv (as k_gemv_routed, per route)
 * below -- so the result is bit for bit the host-routed one, with no wait for the routes
 * and six launches a layer instead of a few dozen. */

/* k_gemm_tc_grouped's tiles: RG_TILE tokens of one expert. */
#define RG_TILE TC_TOK
#define RG_THREADS 1024
#define RG_MAX_EXPERTS RG_THREADS
#define RG_SMALL_BLOCKS 128 /* blocks in y of the few-route experts' GEMV launches */

/* Exclusive prefix sum of one value per thread of the block (at most 1024); *total gets
 * the sum. warp_tot: 32 ints of shared memory. */
__device__ int block_exclusive_scan(int v, int *warp_tot, int *total) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, inc = v;
    for (int d = 1; d < 32; d <<= 1) {
        int o = __shfl_up_sync(0xffffffffu, inc, d);
        if (lane >= d) inc += o;
    }
    if (lane == 31) warp_tot[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        int w = lane < (int)(blockDim.x >> 5) ? warp_tot[lane] : 0, wi = w;
        for (int d = 1; d < 32; d <<= 1) {
            int o = __shfl_up_sync(0xffffffffu, wi, d);
            if (lane >= d) wi += o;
        }
        warp_tot[lane] = wi - w;
        if (lane == 31) *total = wi;
    }
    __syncthreads();
    int r = warp_tot[warp] + inc - v;
    __syncthreads(); /* warp_tot is the next scan's */
    return r;
}

/* Groups routes 0..R-1 (expert sel[r] < E) by expert: off[e] .. off[e+1] (off[E] = R)
 * index routes[], which holds expert e's routes there (in no particular order: an
 * output never depends on which others share its tile). The experts with
 * GEMM_MIN_TOKENS routes or more get tiles[] = (e, first of RG_TILE of its routes);
 * the others' routes go to small[]. counts[0] = tiles, counts[1] = small routes. One
 * block of RG_THREADS. An id outside 0..E-1 (the route op never gives one) is left out
 * rather than written out of bounds. */
__global__ void __launch_bounds__(RG_THREADS) k_route_group(const int32_t *sel, int R, int E, int32_t *off,
                                                             int32_t *routes, int2 *tiles, int32_t *small,
                                                             int32_t *counts) {
    __shared__ int cnt[RG_MAX_EXPERTS], cur[RG_MAX_EXPERTS], scur[RG_MAX_EXPERTS];
    __shared__ int warp_tot[32], total[3];
    int e = threadIdx.x;
    if (e < E) cnt[e] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < R; i += blockDim.x)
        if ((unsigned)sel[i] < (unsigned)E) atomicAdd(&cnt[sel[i]], 1);
    __syncthreads();
    int v = e < E ? cnt[e] : 0, big = v >= GEMM_MIN_TOKENS, nt = big ? (v + RG_TILE - 1) / RG_TILE : 0;
    int o = block_exclusive_scan(v, warp_tot, &total[0]);
    int to = block_exclusive_scan(nt, warp_tot, &total[1]);
    int so = block_exclusive_scan(big ? 0 : v, warp_tot, &total[2]);
    if (e < E) {
        off[e] = o;
        cur[e] = o;
        scur[e] = so;
        for (int k = 0; k < nt; k++) tiles[to + k] = make_int2(e, k * RG_TILE);
    }
    if (e == 0) {
        off[E] = total[0];
        counts[0] = total[1];
        counts[1] = total[2];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < R; i += blockDim.x) {
        int x = sel[i];
        if ((unsigned)x >= (unsigned)E) continue;
        routes[atomicAdd(&cur[x], 1)] = i;
        if (cnt[x] < GEMM_MIN_TOKENS) small[atomicAdd(&scur[x], 1)] = i;
    }
}

/* The item a grouped kernel's block computes: matrix mat0 + blockIdx.z of expert e, into
 * y0 or y1, its tokens the expert's routes (the inputs are the caller's to set). */
__device__ __forceinline__ mm_item grouped_item(const mm_shape &sh, const mm_desc *tab, int mat0, const int32_t *off,
                                                int e, float *y0, float *y1) {
    const mm_desc &d = tab[(size_t)e * 3 + (size_t)mat0 + blockIdx.z];
    mm_item it;
    it.data = d.data;
    it.scales = d.scales;
    it.biases = d.biases;
    it.x = NULL;
    it.xq = NULL;
    it.xds = NULL;
    it.y = blockIdx.z ? y1 : y0;
    it.n = off[e + 1] - off[e];
    it.rows = sh.rows;
    return it;
}

/* k_gemm_tc on one tile of k_route_group's list (blockIdx.y; past counts[0]: nothing):
 * matrix mat0 + blockIdx.z of its expert, into y0 or y1, the item's tokens its routes. */
template <int FMT, bool AFFINE, int WARPS = TC_WARPS>
__global__ void __launch_bounds__(WARPS * 32, TC_MIN_BLOCKS(FMT, AFFINE, WARPS)) k_gemm_tc_grouped(mm_shape sh, const mm_desc *tab, int mat0,
                                                                    const int32_t *off, const int32_t *routes,
                                                                    const int2 *tiles, const int32_t *counts,
                                                                    const float *x, int x_div, float *y0, float *y1) {
    if ((int)blockIdx.y >= counts[0]) return;
    int2 tl = tiles[blockIdx.y];
    mm_item it = grouped_item(sh, tab, mat0, off, tl.x, y0, y1);
    it.x = x;
    tc_block_any<FMT, AFFINE, TC_NT, WARPS>(sh, it, tl.y, routes + off[tl.x], x_div);
}

/* The int8 kernels' item of this block's tile of k_route_group's list (as
 * k_gemm_tc_grouped's), its inputs quantized (xq, xds: k_act8_quantize of the chunk's
 * rows that x_div indexes); false past counts[0] (no tile). */
__device__ __forceinline__ bool grouped_int8_item(const mm_shape &sh, const mm_desc *tab, int mat0, const int32_t *off,
                                                  const int2 *tiles, const int32_t *counts, const int8_t *xq,
                                                  const float2 *xds, float *y0, float *y1, int2 &tl, mm_item &it) {
    if ((int)blockIdx.y >= counts[0]) return false;
    tl = tiles[blockIdx.y];
    it = grouped_item(sh, tab, mat0, off, tl.x, y0, y1);
    it.xq = xq;
    it.xds = xds;
    return true;
}

/* k_gemm_a8 on one tile of k_route_group's list, as k_gemm_tc_grouped. */
template <int WARPS>
__global__ void __launch_bounds__(WARPS * 32, A8_MIN_BLOCKS(WARPS)) k_gemm_a8_grouped(mm_shape sh, const mm_desc *tab, int mat0,
                                                                     const int32_t *off, const int32_t *routes,
                                                                     const int2 *tiles, const int32_t *counts,
                                                                     const int8_t *xq, const float2 *xds, int x_div,
                                                                     float *y0, float *y1) {
    int2 tl;
    mm_item it;
    if (!grouped_int8_item(sh, tab, mat0, off, tiles, counts, xq, xds, y0, y1, tl, it)) return;
    a8_warp<A8_NT(WARPS)>(sh, it, tl.y, blockIdx.x * TC_ROWS + (threadIdx.x >> 5) * A8_NT(WARPS) * 8, routes + off[tl.x],
                          x_div);
}
typedef void (*a8_grouped_kernel)(mm_shape, const mm_desc *, int, const int32_t *, const int32_t *, const int2 *,
                                  const int32_t *, const int8_t *, const float2 *, int, float *, float *);

/* k_gemm_g8 on one tile of k_route_group's list, as k_gemm_a8_grouped. */
template <int FMT>
__global__ void __launch_bounds__(TC_WARPS * 32, 4) k_gemm_g8_grouped(mm_shape sh, const mm_desc *tab, int mat0,
                                                                     const int32_t *off, const int32_t *routes,
                                                                     const int2 *tiles, const int32_t *counts,
                                                                     const int8_t *xq, const float2 *xds, int x_div,
                                                                     float *y0, float *y1) {
    int2 tl;
    mm_item it;
    if (!grouped_int8_item(sh, tab, mat0, off, tiles, counts, xq, xds, y0, y1, tl, it)) return;
    g8_warp<FMT, TC_NT>(sh, it, tl.y, blockIdx.x * TC_ROWS + (threadIdx.x >> 5) * TC_NT * 8, routes + off[tl.x], x_div);
}

/* k_gemm_a8s on one tile of k_route_group's list, as k_gemm_a8_grouped (LAZYMOE_CUDA_A8_SMEM=1). */
__global__ void __launch_bounds__(TC_WARPS * 32, 4) k_gemm_a8s_grouped(mm_shape sh, const mm_desc *tab, int mat0,
                                                                      const int32_t *off, const int32_t *routes,
                                                                      const int2 *tiles, const int32_t *counts,
                                                                      const int8_t *xq, const float2 *xds, int x_div,
                                                                      float *y0, float *y1) {
    int2 tl;
    mm_item it;
    if (!grouped_int8_item(sh, tab, mat0, off, tiles, counts, xq, xds, y0, y1, tl, it)) return;
    a8s_block(sh, it, tl.y, blockIdx.x * TC_ROWS, routes + off[tl.x], x_div);
}

static a8_grouped_kernel int8_grouped_kernel_of(const cuda_impl *im, int fmt) {
    switch (fmt) {
    case FMT_A4:
        return im->a8_smem ? k_gemm_a8s_grouped : a8_wide(im) ? k_gemm_a8_grouped<2 * TC_WARPS> : k_gemm_a8_grouped<TC_WARPS>;
    case FMT_Q4_0: return k_gemm_g8_grouped<FMT_Q4_0>;
    case FMT_Q8_0: return k_gemm_g8_grouped<FMT_Q8_0>;
    case FMT_Q4_K: return k_gemm_g8_grouped<FMT_Q4_K>;
    case FMT_Q5_K: return k_gemm_g8_grouped<FMT_Q5_K>;
    default: return k_gemm_g8_grouped<FMT_Q6_K>;
    }
}

#define TC_GROUPED_KERNEL(F)                                                                                          \
    (!affine ? k_gemm_tc_grouped<F, false> : wide ? k_gemm_tc_grouped<F, true, 2 * TC_WARPS> : k_gemm_tc_grouped<F, true>)
static mm_grouped_kernel gemm_tc_grouped_kernel_of(int fmt, int affine, int wide) {
    switch (fmt) {
    case FMT_A4: return TC_GROUPED_KERNEL(FMT_A4);
    case FMT_A8: return TC_GROUPED_KERNEL(FMT_A8);
    case FMT_Q4_0: return TC_GROUPED_KERNEL(FMT_Q4_0);
    case FMT_Q8_0: return k_gemm_tc_grouped<FMT_Q8_0, false>;
    case FMT_Q4_K: return k_gemm_tc_grouped<FMT_Q4_K, false>;
    case FMT_Q6_K: return k_gemm_tc_grouped<FMT_Q6_K, false>;
    default: return k_gemm_tc_grouped<FMT_Q5_K, false>;
    }
}
#undef TC_GROUPED_KERNEL

/* k_swiglu on the rows of the routes whose expert took k_gemm_tc (k_gemv_routed_swiglu
 * did the others'). */
__global__ void k_swiglu_grouped(float *g, const float *u, int I, int R, const int32_t *sel, int E,
                                 const int32_t *off) {
    GRID_LOOP(i, (size_t)R * (size_t)I) {
        int e = sel[i / (size_t)I];
        if ((unsigned)e >= (unsigned)E || off[e + 1] - off[e] < GEMM_MIN_TOKENS) continue;
        float a = g[i];
        g[i] = a / (1.0f + expf(-a)) * u[i];
    }
}

/* A layer's experts as moe_routed reads them: per expert and matrix its weights, on
 * the device; ok = 0 where the experts' matrices do not share one fast format and
 * shape (the caller then routes on the host). */
struct routed_table {
    const lm_mat *key;
    lm_mat first, last; /* the key's first and last views when the table was made */
    int n_experts, ok, fmt[3];
    mm_shape sh[3];
    mm_desc *dev;
    size_t bytes;
};

static struct routed_table *routed_table_of(lm_backend *be, const lm_mat *mats, int E) {
    cuda_impl *im = impl_of(be);
    /* the same array with the same first and last views: the same table (a host
     * array reused for other experts is told apart by them; the engine's never is) */
    for (int i = 0; i < im->n_rt; i++)
        if (im->rt[i].key == mats && im->rt[i].n_experts == E && !memcmp(&im->rt[i].first, &mats[0], sizeof(lm_mat)) &&
            !memcmp(&im->rt[i].last, &mats[3 * E - 1], sizeof(lm_mat)))
            return &im->rt[i];
    struct routed_table *grown = (struct routed_table *)realloc(im->rt, sizeof *grown * (size_t)(im->n_rt + 1));
    if (!grown) {
        lm_errf(be->err, "out of host memory for a routed expert table");
        return NULL;
    }
    im->rt = grown;
    struct routed_table *t = &im->rt[im->n_rt];
    memset(t, 0, sizeof *t);
    t->key = mats;
    t->n_experts = E;
    if (E > 0) {
        t->first = mats[0];
        t->last = mats[3 * E - 1];
    }
    mm_desc *host = (mm_desc *)malloc(sizeof(mm_desc) * 3 * (size_t)E);
    if (!host) {
        lm_errf(be->err, "out of host memory for a routed expert table");
        return NULL;
    }
    int ok = E > 0;
    for (int m = 0; m < 3 && ok; m++)
        for (int e = 0; e < E && ok; e++) {
            wdesc d;
            if (weight_view(be, &mats[3 * e + m], &d) != 0) {
                free(host);
                return NULL;
            }
            int fmt = fast_format(&d);
            mm_shape sh = {d.rows, d.cols, d.group_size, d.qdtype, d.row_bytes};
            if (e == 0) {
                t->fmt[m] = fmt;
                t->sh[m] = sh;
            }
            ok = fmt != FMT_NONE && fmt == t->fmt[m] && sh.rows == t->sh[m].rows && sh.cols == t->sh[m].cols &&
                 sh.group_size == t->sh[m].group_size && sh.qdtype == t->sh[m].qdtype &&
                 sh.row_bytes == t->sh[m].row_bytes && d.dtype == mats[m].dtype && d.bits == mats[m].bits;
            host[3 * e + m].data = d.data;
            host[3 * e + m].scales = d.scales;
            host[3 * e + m].biases = d.biases;
        }
    ok = ok && t->fmt[0] == t->fmt[1] && t->sh[0].rows == t->sh[1].rows && t->sh[0].cols == t->sh[1].cols &&
         t->sh[0].group_size == t->sh[1].group_size && t->sh[0].qdtype == t->sh[1].qdtype &&
         t->sh[2].cols == t->sh[0].rows && t->sh[2].rows == t->sh[0].cols;
    /* no room for the table under the memory cap (a budget that just holds every
     * expert): the host routes this layer, which gives the same numbers */
    if (ok) {
        t->bytes = sizeof(mm_desc) * 3 * (size_t)E;
        if (mem_take(be, t->bytes, "a routed expert table") != 0) {
            ok = 0;
            t->bytes = 0;
        }
    }
    if (ok) {
        cudaError_t e = cudaMalloc((void **)&t->dev, t->bytes);
        if (e == cudaSuccess) e = cudaMemcpy(t->dev, host, t->bytes, cudaMemcpyHostToDevice);
        if (e != cudaSuccess) {
            cudaGetLastError(); /* out of memory is not sticky; a real fault shows at the next op */
            if (t->dev) cudaFree(t->dev);
            t->dev = NULL;
            mem_give(im, t->bytes);
            t->bytes = 0;
            ok = 0;
        }
    }
    free(host);
    t->ok = ok;
    im->n_rt++;
    return t;
}

/* Where moe_grouped's arrays sit in its scratch, for R routes over E experts of I rows:
 * the grouping (off, routes, small, counts, tiles), then the gate and up rows. */
typedef struct {
    size_t routes, small, counts, tiles, g, rows_bytes, total, max_tiles, max_small;
} moe_layout;

static moe_layout moe_layout_of(int R, int E, int I) {
    moe_layout L;
    size_t nbig = (size_t)(E < R / GEMM_MIN_TOKENS ? E : R / GEMM_MIN_TOKENS);
    L.max_tiles = (size_t)R / RG_TILE + nbig; /* sum of ceil(count / RG_TILE) over the big experts */
    L.max_small = (size_t)R;
    if (L.max_small > (size_t)(GEMM_MIN_TOKENS - 1) * (size_t)E) L.max_small = (size_t)(GEMM_MIN_TOKENS - 1) * (size_t)E;
    L.routes = align_up(sizeof(int32_t) * (size_t)(E + 1), 256);
    L.small = L.routes + align_up(sizeof(int32_t) * (size_t)R, 256);
    L.counts = L.small + align_up(sizeof(int32_t) * (size_t)R, 256);
    L.tiles = L.counts + 256;
    L.g = L.tiles + align_up(sizeof(int2) * L.max_tiles, 256);
    L.rows_bytes = align_up(sizeof(float) * (size_t)R * (size_t)I, 256);
    L.total = L.g + 2 * L.rows_bytes;
    return L;
}

static uint64_t cuda_moe_routed_scratch_bytes(lm_backend *be, int n, int top_k, int n_experts, int inter) {
    /* with the int8 activations' scratch, which set_act_bits made already */
    uint64_t a8 = impl_of(be)->a8_bytes;
    if (n <= LM_ROUTED_MAX_TOKENS || top_k < 1 || n_experts < 1 || inter < 1) return a8;
    return a8 + moe_layout_of(n * top_k, n_experts, inter).total;
}

/* moe_routed for n > LM_ROUTED_MAX_TOKENS: see k_route_group. The intermediate (R rows
 * of gate and up) and the grouping live in scratch of the backend's own; 1 (the host
 * routes) where the experts take no tensor-core kernel, or the scratch cannot be had. */
static int moe_grouped(lm_backend *be, const struct routed_table *t, float *eout, int E, const int32_t *sel,
                       const float *h, int n, int K) {
    cuda_impl *im = impl_of(be);
    int R = n * K, H = t->sh[0].cols, I = t->sh[0].rows;
    /* the host-routed path's kernels for an expert of GEMM_MIN_TOKENS tokens or more are
     * k_gemm_tc only where these hold (matmul_batch: fast format, aligned rows) */
    if (E > RG_MAX_EXPERTS || !gemm_tc_ok(im, t->fmt[0], &t->sh[0]) || !gemm_tc_ok(im, t->fmt[2], &t->sh[2]) ||
        H % 4 || I % 4 || R > 65535)
        return 1;
    moe_layout L = moe_layout_of(R, E, I);
    /* the few-route experts' kernels: blocks enough to fill the GPU, each taking every
     * RG_SMALL_BLOCKS-th listed route */
    size_t max_tiles = L.max_tiles, small_blocks = L.max_small < RG_SMALL_BLOCKS ? L.max_small : RG_SMALL_BLOCKS;
    /* exactly the planned bytes (moe_routed_scratch_bytes), no more */
    if (grow_scratch(be, &im->moe_scratch, &im->moe_scratch_bytes, L.total, L.total, "the grouped experts' scratch") != 0)
        return 1;
    uint8_t *base = (uint8_t *)im->moe_scratch;
    int32_t *off = (int32_t *)base, *routes = (int32_t *)(base + L.routes), *small = (int32_t *)(base + L.small);
    int32_t *counts = (int32_t *)(base + L.counts);
    int2 *tiles = (int2 *)(base + L.tiles);
    float *g = (float *)(base + L.g), *u = (float *)(base + L.g + L.rows_bytes);
    /* LAZYMOE_CUDA_TC_WIDE=1: the affine path's blocks of twice the warps and rows */
    int aff0 = tc_affine(im, t->fmt[0]), aff2 = tc_affine(im, t->fmt[2]);
    int wide0 = aff0 && im->tc_wide, wide2 = aff2 && im->tc_wide;
    mm_grouped_kernel gk0 = gemm_tc_grouped_kernel_of(t->fmt[0], aff0, wide0),
                       gk2 = gemm_tc_grouped_kernel_of(t->fmt[2], aff2, wide2);
    /* act_bits 8: the chunk's inputs quantized once, then k_gemm_a8_grouped (the gate and
     * up products' inputs while they run, then the down products') */
    int a80 = gemm_int8_ok(im, t->fmt[0], &t->sh[0]), a82 = gemm_int8_ok(im, t->fmt[2], &t->sh[2]);
    int gs0 = int8_group(t->fmt[0], &t->sh[0]), gs2 = int8_group(t->fmt[2], &t->sh[2]);
    size_t a8_need = a80 ? act8_bytes((size_t)n, H, gs0) : 0;
    if (a82 && act8_bytes((size_t)R, I, gs2) > a8_need) a8_need = act8_bytes((size_t)R, I, gs2);
    if (a8_need && act8_scratch(be, a8_need) != 0) return -1;
    tim_begin(im);
    k_route_group<<<1, RG_THREADS, 0, im->stream>>>(sel, R, E, off, routes, tiles, small, counts);
    if (launched(be, "grouped routes") != 0) return -1;
    tim_begin(im);
    routed_swiglu_list_kernel_of(t->fmt[0])<<<dim3(blocks_for((size_t)I, GV_WARPS * GV_ROWS), (unsigned)small_blocks),
                                         GV_WARPS * 32, 0, im->stream>>>(t->sh[0], t->dev, sel, small, counts + 1, h,
                                                                         K, g, u);
    if (launched(be, "grouped gate+up+swiglu (few tokens)") != 0) return -1;
    if (max_tiles) { /* else no expert can have GEMM_MIN_TOKENS routes */
        if (a80) {
            const int8_t *hq;
            const float2 *hds;
            if (act8_quantize(be, h, n, H, gs0, int8_unit_perm(t->fmt[0]), 0, &hq, &hds) != 0) return -1;
            tim_begin(im);
            int8_grouped_kernel_of(im, t->fmt[0])<<<dim3(blocks_for((size_t)I, TC_ROWS), (unsigned)max_tiles, 2),
                                                   int8_block_threads(im, t->fmt[0]), 0, im->stream>>>(
                t->sh[0], t->dev, 0, off, routes, tiles, counts, hq, hds, K, g, u);
            if (launched(be, t->fmt[0] == FMT_A4 ? "gemm_a8 affine4" : "gemm_g8") != 0) return -1;
        } else {
            tim_begin(im);
            gk0<<<dim3(blocks_for((size_t)I, tc_block_rows(0, wide0)), (unsigned)max_tiles, 2), tc_block_threads(wide0),
                  0, im->stream>>>(t->sh[0], t->dev, 0, off, routes, tiles, counts, h, K, g, u);
            if (launched(be, fmt_name(t->fmt[0], 2)) != 0) return -1;
        }
        tim_begin(im);
        k_swiglu_grouped<<<ew_blocks((size_t)R * (size_t)I), EW_THREADS, 0, im->stream>>>(g, u, I, R, sel, E, off);
        if (launched(be, "grouped swiglu") != 0) return -1;
    }
    tim_begin(im);
    routed_list_kernel_of(t->fmt[2])<<<dim3(blocks_for((size_t)H, GV_WARPS * GV_ROWS), (unsigned)small_blocks, 1),
                                  GV_WARPS * 32, 0, im->stream>>>(t->sh[2], t->dev, 2, sel, small, counts + 1, g, 1,
                                                                  eout, NULL);
    if (launched(be, "grouped down (few tokens)") != 0) return -1;
    if (!max_tiles) return 0;
    if (a82) {
        const int8_t *gq;
        const float2 *gds;
        if (act8_quantize(be, g, R, I, gs2, int8_unit_perm(t->fmt[2]), 0, &gq, &gds) != 0) return -1;
        tim_begin(im);
        int8_grouped_kernel_of(im, t->fmt[2])<<<dim3(blocks_for((size_t)H, TC_ROWS), (unsigned)max_tiles, 1),
                                               int8_block_threads(im, t->fmt[2]), 0, im->stream>>>(
            t->sh[2], t->dev, 2, off, routes, tiles, counts, gq, gds, 1, eout, NULL);
        return launched(be, t->fmt[2] == FMT_A4 ? "gemm_a8 affine4" : "gemm_g8");
    }
    tim_begin(im);
    gk2<<<dim3(blocks_for((size_t)H, tc_block_rows(0, wide2)), (unsigned)max_tiles, 1), tc_block_threads(wide2), 0,
          im->stream>>>(t->sh[2], t->dev, 2, off, routes, tiles, counts, g, 1, eout, NULL);
    return launched(be, fmt_name(t->fmt[2], 2));
}

static int cuda_moe_routed(lm_backend *be, float *eout, const lm_mat *mats, int E, const int32_t *sel, const float *h,
                           int n, int K, float *g, float *u) {
    cuda_impl *im = impl_of(be);
    if (im->simple || im->no_routed || n < 1 || K < 1) return 1;
    if (n > LM_ROUTED_MAX_TOKENS && im->no_grouped) return 1;
    struct routed_table *t = routed_table_of(be, mats, E);
    if (!t) return -1;
    if (!t->ok || (uintptr_t)h % 16) return 1;
    if (n > LM_ROUTED_MAX_TOKENS) return moe_grouped(be, t, eout, E, sel, h, n, K);
    if ((uintptr_t)g % 16 || (uintptr_t)u % 16) return 1;
    unsigned R = (unsigned)(n * K);
    tim_begin(im);
    routed_swiglu_kernel_of(t->fmt[0])<<<dim3(blocks_for((size_t)t->sh[0].rows, GV_WARPS * GV_ROWS), R), GV_WARPS * 32,
                                         0, im->stream>>>(t->sh[0], t->dev, sel, h, K, g, u);
    if (launched(be, "routed gate+up+swiglu") != 0) return -1;
    tim_begin(im);
    routed_kernel_of(t->fmt[2])<<<dim3(blocks_for((size_t)t->sh[2].rows, GV_WARPS * GV_ROWS), R, 1), GV_WARPS * 32, 0,
                                  im->stream>>>(t->sh[2], t->dev, 2, sel, g, 1, eout, NULL);
    return launched(be, "routed down");
}

/* ---- the expert tier's uploads ------------------------------------------------------------------------ */

static int cuda_upload_async(lm_backend *be, void *dst, const void *host_src, size_t bytes) {
    cuda_impl *im = impl_of(be);
    if (!bytes) return 0;
    /* recorded on the copy stream after any fence's wait: the window holds copies only */
    if (!im->up_open) CU(be, "upload (timing)", cudaEventRecord(im->up_begin, im->copy));
    CU(be, "upload (copy stream)", cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, im->copy));
    CU(be, "upload (its event)", cudaEventRecord(im->copy_done, im->copy));
    CU(be, "upload (timing)", cudaEventRecord(im->up_end, im->copy));
    im->up_open = 1;
    im->up_bytes += bytes;
    /* what is issued from now on waits for this copy; what was issued before does not */
    CU(be, "upload (ordering the kernels after it)", cudaStreamWaitEvent(im->stream, im->copy_done, 0));
    return 0;
}

static int cuda_upload_fence(lm_backend *be) {
    cuda_impl *im = impl_of(be);
    CU(be, "upload fence", cudaEventRecord(im->compute_point, im->stream));
    CU(be, "upload fence", cudaStreamWaitEvent(im->copy, im->compute_point, 0));
    return 0;
}

static int cuda_upload_timing(lm_backend *be, double *seconds, uint64_t *bytes) {
    cuda_impl *im = impl_of(be);
    if (!im->up_open) return 0;
    im->up_open = 0; /* the next upload opens a new window, complete or not */
    uint64_t n = im->up_bytes;
    im->up_bytes = 0;
    cudaError_t e = cudaEventQuery(im->up_end);
    if (e == cudaErrorNotReady) return 0;
    float ms = 0.0f;
    if (e == cudaSuccess) e = cudaEventElapsedTime(&ms, im->up_begin, im->up_end);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* a timing that failed is no result, not an error of the run */
        return 0;
    }
    *seconds = 1e-3 * (double)ms;
    *bytes = n;
    return 1;
}

static int cuda_uploads_wait(lm_backend *be) {
    CU(be, "waiting for uploads", cudaStreamSynchronize(impl_of(be)->copy));
    return 0;
}

static int cuda_pin_host(lm_backend *be, void *host, size_t bytes) {
    cuda_impl *im = impl_of(be);
    if (!host || !bytes) return 0;
    if (im->n_pinned == im->cap_pinned) {
        size_t cap = im->cap_pinned ? 2 * im->cap_pinned : 64;
        void **p = (void **)realloc(im->pinned, cap * sizeof *p);
        if (!p) return lm_errf(be->err, "out of host memory for the table of pinned ranges");
        im->pinned = p;
        im->cap_pinned = cap;
    }
    cudaError_t e = cudaHostRegister(host, bytes, cudaHostRegisterDefault);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* not sticky: uploads from this memory are staged instead */
        return lm_errf(be->err, "page-locking %zu bytes of host memory: %s", bytes, cudaGetErrorString(e));
    }
    im->pinned[im->n_pinned++] = host;
    return 0;
}

static void cuda_unpin_host(lm_backend *be, void *host) {
    cuda_impl *im = impl_of(be);
    for (size_t i = 0; i < im->n_pinned; i++)
        if (im->pinned[i] == host) {
            if (im->copy) cudaStreamSynchronize(im->copy); /* no upload reads it any more */
            cudaHostUnregister(host);
            im->pinned[i] = im->pinned[--im->n_pinned];
            return;
        }
}

static int cuda_memory_info(lm_backend *be, uint64_t *total, uint64_t *free_bytes, uint64_t *held, uint64_t *peak) {
    cuda_impl *im = impl_of(be);
    size_t f = 0, t = 0;
    CU(be, "reading the device's memory", cudaMemGetInfo(&f, &t));
    *total = t;
    *free_bytes = f;
    *held = im->held;
    *peak = im->peak;
    return 0;
}

static void cuda_set_memory_limit(lm_backend *be, uint64_t bytes) { impl_of(be)->limit = bytes; }

static void cuda_destroy(lm_backend *be) {
    cuda_impl *im = impl_of(be);
    if (im) {
        if (im->copy) cudaStreamSynchronize(im->copy);
        if (im->recording) {
            cudaGraph_t g = NULL;
            if (cudaStreamEndCapture(im->stream, &g) == cudaSuccess && g) cudaGraphDestroy(g);
            cudaGetLastError();
        }
        graphs_drop(im);
        if (im->d_npast) cudaFree(im->d_npast);
        for (size_t i = 0; i < im->n_pinned; i++) cudaHostUnregister(im->pinned[i]);
        free(im->pinned);
        if (im->stream) cudaStreamSynchronize(im->stream);
        if (im->timing && im->tev) tim_print(im);
        if (im->tev)
            for (int i = 0; i < 2 * TIM_CAP; i++)
                if (im->tev[i]) cudaEventDestroy(im->tev[i]);
        free(im->tev);
        free(im->tname);
        if (im->stage) cudaFreeHost(im->stage);
        if (im->down) cudaFreeHost(im->down);
        if (im->later) cudaFreeHost(im->later);
        for (int i = 0; i < im->n_rt; i++)
            if (im->rt[i].dev) cudaFree(im->rt[i].dev);
        free(im->rt);
        for (int i = 0; i < 2; i++)
            if (im->stage_ev[i]) cudaEventDestroy(im->stage_ev[i]);
        for (size_t i = 0; i < im->w_cap; i++)
            if (im->w[i].dev) cudaFree(im->w[i].dev);
        if (im->flag) cudaFree(im->flag);
        if (im->att_parts) cudaFree(im->att_parts);
        if (im->moe_scratch) cudaFree(im->moe_scratch);
        if (im->a8) cudaFree(im->a8);
        if (im->stream) cudaStreamDestroy(im->stream);
        if (im->copy) cudaStreamDestroy(im->copy);
        if (im->copy_done) cudaEventDestroy(im->copy_done);
        if (im->up_begin) cudaEventDestroy(im->up_begin);
        if (im->up_end) cudaEventDestroy(im->up_end);
        if (im->compute_point) cudaEventDestroy(im->compute_point);
        free(im->w);
        free(im->ranges);
        free(im);
    }
    free(be);
}

static const lm_backend_ops cuda_ops = {
    /* .name = */ "cuda",
    /* .host_memory = */ 0,
    /* .alloc = */ FLUSHED(cuda_alloc),
    /* .free = */ FLUSHED(cuda_free_buf),
    /* .upload = */ FLUSHED(cuda_upload),
    /* .download = */ FLUSHED(cuda_download),
    /* .copy = */ FLUSHED(cuda_copy),
    /* .reserve_batch = */ FLUSHED(cuda_reserve_batch),
    /* .sync = */ FLUSHED(cuda_sync),
    /* .matmul = */ FLUSHED(cuda_matmul),
    /* .matmul_batch = */ FLUSHED(cuda_matmul_batch),
    /* .embed = */ FLUSHED(cuda_embed),
    /* .rmsnorm = */ TIMED(cuda_rmsnorm),
    /* .add = */ TIMED(cuda_add),
    /* .add_rows = */ FLUSHED(cuda_add_rows),
    /* .clamp = */ FLUSHED(cuda_clamp),
    /* .copy_rows = */ FLUSHED(cuda_copy_rows),
    /* .sigmoid_mul = */ FLUSHED(cuda_sigmoid_mul),
    /* .swiglu = */ FLUSHED(cuda_swiglu),
    /* .swiglu_clamped = */ FLUSHED(cuda_swiglu_clamped),
    /* .swiglu_clamped_split = */ FLUSHED(cuda_swiglu_clamped_split),
    /* .rope = */ TIMED(cuda_rope),
    /* .kv_store = */ TIMED(cuda_kv_store),
    /* .attention = */ FLUSHED(cuda_attention),
    /* .route = */ FLUSHED(cuda_route),
    /* .gather_rows = */ TIMED(cuda_gather_rows),
    /* .scatter_rows = */ TIMED(cuda_scatter_rows),
    /* .moe_combine = */ TIMED(cuda_moe_combine),
    /* .weights_changed = */ cuda_forget,
    /* .destroy = */ cuda_destroy,
    /* .upload_async = */ FLUSHED(cuda_upload_async),
    /* .upload_fence = */ FLUSHED(cuda_upload_fence),
    /* .uploads_wait = */ FLUSHED(cuda_uploads_wait),
    /* .upload_timing = */ cuda_upload_timing,
    /* .pin_host = */ FLUSHED(cuda_pin_host),
    /* .unpin_host = */ FLUSHED(cuda_unpin_host),
    /* .memory_info = */ FLUSHED(cuda_memory_info),
    /* .set_memory_limit = */ cuda_set_memory_limit,
    /* .moe_routed = */ FLUSHED(cuda_moe_routed),
    /* .download_later = */ FLUSHED(cuda_download_later),
    /* .step_replay = */ FLUSHED(cuda_step_replay),
    /* .step_record_begin = */ FLUSHED(cuda_step_record_begin),
    /* .step_record_end = */ TIMED(cuda_step_record_end),
    /* .logits_scan = */ FLUSHED(cuda_logits_scan),
    /* .preload = */ FLUSHED(cuda_preload),
    /* .preload_floats = */ FLUSHED(cuda_preload_floats),
    /* .moe_routed_scratch_bytes = */ cuda_moe_routed_scratch_bytes,
};

extern "C" int lm_backend_cuda_create(lm_backend **out, int device, char *err) {
    *out = NULL;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess)
        return lm_errf(err, "the cuda backend found no usable GPU: %s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
    if (device < 0 || device >= count)
        return lm_errf(err, "the cuda backend: device %d asked for, %d present", device, count);
    if ((e = cudaSetDevice(device)) != cudaSuccess)
        return lm_errf(err, "the cuda backend: selecting device %d: %s", device, cudaGetErrorString(e));
    lm_backend *be = (lm_backend *)calloc(1, sizeof *be);
    cuda_impl *im = (cuda_impl *)calloc(1, sizeof *im);
    if (!be || !im) {
        free(be);
        free(im);
        return lm_errf(err, "out of memory");
    }
    be->ops = &cuda_ops;
    be->impl = im;
    im->device = device;
    im->act_bits = 32;
    im->a8_warps = TC_WARPS;
    if ((e = cudaStreamCreateWithFlags(&im->stream, cudaStreamNonBlocking)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&im->copy, cudaStreamNonBlocking)) != cudaSuccess ||
        (e = cudaEventCreateWithFlags(&im->copy_done, cudaEventDisableTiming)) != cudaSuccess ||
        (e = cudaEventCreateWithFlags(&im->compute_point, cudaEventDisableTiming)) != cudaSuccess ||
        (e = cudaEventCreate(&im->up_begin)) != cudaSuccess || (e = cudaEventCreate(&im->up_end)) != cudaSuccess ||
        (e = cudaMalloc((void **)&im->flag, 2 * sizeof(int))) != cudaSuccess ||
        (e = cudaMemset(im->flag, 0, 2 * sizeof(int))) != cudaSuccess ||
        (e = cudaEventCreateWithFlags(&im->stage_ev[0], cudaEventDisableTiming)) != cudaSuccess ||
        (e = cudaEventCreateWithFlags(&im->stage_ev[1], cudaEventDisableTiming)) != cudaSuccess ||
        (e = cudaDeviceGetAttribute(&im->sm_count, cudaDevAttrMultiProcessorCount, device)) != cudaSuccess) {
        lm_errf(err, "the cuda backend: setting up device %d: %s", device, cudaGetErrorString(e));
        cuda_destroy(be);
        return -1;
    }
    /* without the staging area small uploads wait for their copy, as large ones do */
    if (cudaMallocHost((void **)&im->stage, 2 * STAGE_HALF) != cudaSuccess) {
        cudaGetLastError();
        im->stage = NULL;
    }
    if (cudaMallocHost((void **)&im->later, LATER_BYTES) != cudaSuccess) { /* download_later then waits */
        cudaGetLastError();
        im->later = NULL;
    }
    const char *k = getenv("LAZYMOE_CUDA_KERNELS");
    if (k && !strcmp(k, "simple")) im->simple = 1;
    const char *sp = getenv("LAZYMOE_CUDA_ATTN_SPLIT");
    if (sp && !strcmp(sp, "0")) im->no_split = 1;
    const char *ah = getenv("LAZYMOE_CUDA_ATTN_HEADS");
    if (ah && !strcmp(ah, "1")) im->att_one_head = 1;
    const char *tg = getenv("LAZYMOE_CUDA_TC_GENERIC");
    if (tg && !strcmp(tg, "1")) im->tc_generic = 1;
    const char *tw = getenv("LAZYMOE_CUDA_TC_WIDE");
    if (tw && !strcmp(tw, "1")) im->tc_wide = 1;
    const char *tq = getenv("LAZYMOE_CUDA_TC_Q4_0");
    if (tq && !strcmp(tq, "1")) im->tc_q40 = 1;
    const char *aw = getenv("LAZYMOE_CUDA_A8_WARPS");
    if (aw && !strcmp(aw, "8")) im->a8_warps = 2 * TC_WARPS;
    const char *as = getenv("LAZYMOE_CUDA_A8_SMEM");
    if (as && !strcmp(as, "1")) im->a8_smem = 1;
    const char *g8 = getenv("LAZYMOE_CUDA_G8");
    if (g8 && !strcmp(g8, "0")) im->no_g8 = 1;
    const char *tc = getenv("LAZYMOE_CUDA_TC");
    if (tc && !strcmp(tc, "0")) im->no_tc = 1;
    const char *gr = getenv("LAZYMOE_CUDA_GRAPHS");
    if (gr && !strcmp(gr, "0")) im->graphs_off = 1;
    const char *ro = getenv("LAZYMOE_CUDA_ROUTED");
    if (ro && !strcmp(ro, "0")) im->no_routed = 1;
    const char *gp = getenv("LAZYMOE_CUDA_GROUPED");
    if (gp && !strcmp(gp, "0")) im->no_grouped = 1;
    const char *ds = getenv("LAZYMOE_CUDA_DOWN_STAGE");
    if (ds && !strcmp(ds, "0")) im->down_direct = 1;
    const char *t = getenv("LAZYMOE_CUDA_TIMING");
    if (t && !strcmp(t, "1")) {
        im->tev = (cudaEvent_t *)calloc(2 * TIM_CAP, sizeof *im->tev);
        im->tname = (const char **)calloc(TIM_CAP, sizeof *im->tname);
        int ok = im->tev && im->tname;
        for (int i = 0; ok && i < 2 * TIM_CAP; i++) ok = cudaEventCreate(&im->tev[i]) == cudaSuccess;
        if (!ok) {
            lm_errf(err, "the cuda backend: no events for LAZYMOE_CUDA_TIMING");
            cuda_destroy(be);
            return -1;
        }
        im->timing = 1;
    }
    *out = be;
    return 0;
}

extern "C" uint64_t lm_backend_cuda_weight_bytes(const lm_backend *be) {
    return ((const cuda_impl *)be->impl)->weight_bytes;
}

extern "C" uint64_t lm_backend_cuda_step_replays(void) { return step_replays; }

extern "C" void lm_backend_cuda_set_simple(lm_backend *be, int simple) { impl_of(be)->simple = simple != 0; }
extern "C" void lm_backend_cuda_set_attn_one_head(lm_backend *be, int one) { impl_of(be)->att_one_head = one; }
extern "C" void lm_backend_cuda_set_tc_generic(lm_backend *be, int on) { impl_of(be)->tc_generic = on; }
extern "C" void lm_backend_cuda_set_tc_narrow(lm_backend *be, int mode) { impl_of(be)->tc_narrow = mode; }
extern "C" void lm_backend_cuda_set_tc_wide(lm_backend *be, int on) { impl_of(be)->tc_wide = on; }
extern "C" void lm_backend_cuda_set_tc_q4_0(lm_backend *be, int on) { impl_of(be)->tc_q40 = on; }
extern "C" void lm_backend_cuda_set_a8_warps(lm_backend *be, int warps) { impl_of(be)->a8_warps = warps == 8 ? 2 * TC_WARPS : TC_WARPS; }
extern "C" void lm_backend_cuda_set_a8_smem(lm_backend *be, int on) { impl_of(be)->a8_smem = on != 0; }
extern "C" int lm_backend_cuda_set_act_bits(lm_backend *be, int bits, int rows, int cols, char *err) {
    cuda_impl *im = impl_of(be);
    if (bits != 8 && bits != 32) return lm_errf(err, "activation bits %d are not supported (choose 8 or 32)", bits);
    im->act_bits = bits;
    if (bits == 8 && rows > 0 && cols > 0) {
        /* at the smallest group a chunk takes (the most pairs per column) */
        size_t bytes = act8_bytes((size_t)rows, (cols + TC_CHUNK - 1) / TC_CHUNK * TC_CHUNK, TC_CHUNK);
        if (act8_scratch(be, bytes) != 0) return lm_errf(err, "%s", be->err);
    }
    return 0;
}
extern "C" uint64_t lm_backend_cuda_fast_launches(const lm_backend *be) {
    return ((const cuda_impl *)be->impl)->fast_launches;
}
