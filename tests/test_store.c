/* The expert store under injected read faults (src/experts/store.h): every system
 * read of an expert goes through a read function the tests replace. A fault at any
 * read of an expert gives a clear error naming file, layer and expert; the session
 * stays usable once the fault is gone and then computes exactly what the resident
 * model computes (nothing wrong was cached); transient faults are retried; short
 * and slow reads change nothing; failed background reads (warm start, lookahead,
 * pins) cost only a re-read; a fault while loading resident experts fails the open. */
#include "harness.h"

#include "common/error.h"
#include "engine/engine.h"
#include "experts/cache.h"
#include "experts/store.h"
#include "lazymoe.h"
#include "platform/platform.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <unistd.h>

#define GOLDEN LAZYMOE_SOURCE_DIR "/tests/fixtures/golden/"
#define MODEL GOLDEN "olmoe_f32" /* 2 MoE layers x 8 experts, f32: 3 parts of 10 KiB each */
#define CHUNK 4096               /* every part is read in several requests */
#define MAX_L 8
#define MAX_E 64

static char tmp[256];
static const int32_t IDS[] = {5, 17, 2, 99, 41, 7, 63, 11, 250, 3, 77, 140, 9, 31, 200, 18};
#define NIDS 16

/* ---- the fault injector ------------------------------------------------------------ */

typedef enum {
    F_NONE,
    F_EIO,       /* -1, errno EIO */
    F_EOF,       /* 0: the file seems to end here */
    F_SHORT,     /* reads everything, reports half (the rest of buf is scribbled over) */
    F_SLOW,      /* a correct read after 2 ms */
    F_SLOW_EIO,  /* EIO after 20 ms */
    F_TRANSIENT, /* EIO the first time a (file, offset, length) is read, then correct */
} fault_kind;

typedef struct {
    atomic_int kind;
    int layer, expert;  /* the victim; -1 = any */
    int from, count;    /* fault the victim's reads number from .. from + count - 1 (from 1; count -1: all) */
    atomic_int calls;   /* reads of the victim */
    atomic_int injected;
    atomic_int direct;  /* reads through an O_DIRECT descriptor */
    atomic_int reads[MAX_L][MAX_E]; /* every read, by layer and expert */
    pthread_mutex_t mu; /* F_TRANSIENT's set of reads seen */
    uint64_t seen[4096];
    int n_seen;
} fault;

static void fault_set(fault *f, fault_kind kind, int layer, int expert, int from, int count) {
    atomic_store(&f->kind, F_NONE);
    f->layer = layer;
    f->expert = expert;
    f->from = from;
    f->count = count;
    atomic_store(&f->calls, 0);
    atomic_store(&f->injected, 0);
    atomic_store(&f->direct, 0);
    for (int l = 0; l < MAX_L; l++)
        for (int e = 0; e < MAX_E; e++) atomic_store(&f->reads[l][e], 0);
    f->n_seen = 0;
    atomic_store(&f->kind, kind);
}

/* Whether this (fd kind, offset, length) was read before; remembers it. */
static int seen_before(fault *f, int direct, size_t len, uint64_t off) {
    uint64_t key = off * 2654435761u ^ (uint64_t)len * 40503u ^ (uint64_t)direct;
    pthread_mutex_lock(&f->mu);
    int seen = 0;
    for (int i = 0; i < f->n_seen && !seen; i++) seen = f->seen[i] == key;
    if (!seen && f->n_seen < 4096) f->seen[f->n_seen++] = key;
    pthread_mutex_unlock(&f->mu);
    return seen;
}

static ssize_t faulty_read(void *ctx, const lm_read_target *t, int fd, void *buf, size_t len, uint64_t off) {
    fault *f = ctx;
    if (t->layer >= 0 && t->layer < MAX_L && t->expert >= 0 && t->expert < MAX_E) atomic_fetch_add(&f->reads[t->layer][t->expert], 1);
    if (t->direct) atomic_fetch_add(&f->direct, 1);
    fault_kind kind = (fault_kind)atomic_load(&f->kind);
    if (kind == F_NONE || (f->layer >= 0 && t->layer != f->layer) || (f->expert >= 0 && t->expert != f->expert))
        return pread(fd, buf, len, (off_t)off);
    int k = atomic_fetch_add(&f->calls, 1) + 1;
    if (k < f->from || (f->count >= 0 && k >= f->from + f->count)) return pread(fd, buf, len, (off_t)off);
    switch (kind) {
    case F_EIO:
    case F_SLOW_EIO:
        if (kind == F_SLOW_EIO) usleep(20000);
        atomic_fetch_add(&f->injected, 1);
        errno = EIO;
        return -1;
    case F_EOF: atomic_fetch_add(&f->injected, 1); return 0;
    case F_SHORT: {
        ssize_t got = pread(fd, buf, len, (off_t)off);
        if (got < 2) return got;
        memset((char *)buf + got / 2, 0xA5, (size_t)(got - got / 2));
        atomic_fetch_add(&f->injected, 1);
        return got / 2;
    }
    case F_SLOW: usleep(2000); return pread(fd, buf, len, (off_t)off);
    case F_TRANSIENT:
        if (seen_before(f, t->direct, len, off)) return pread(fd, buf, len, (off_t)off);
        atomic_fetch_add(&f->injected, 1);
        errno = EIO;
        return -1;
    case F_NONE: break;
    }
    return pread(fd, buf, len, (off_t)off);
}

static fault F = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* ---- models and runs ---------------------------------------------------------------- */

/* capacity -1: resident. */
static double gate_runs; /* lookahead gate of open_model's runs */

static int open_model(const char *dir, int capacity, int buffered, lazymoe_model **m, char *err) {
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.no_warm_start = 1;
    o.n_threads = 2;
    o.expert_capacity = capacity;
    o.buffered_io = buffered;
    o.io_threads = 3;
    o.io_chunk_bytes = CHUNK;
    o.lookahead_gate = gate_runs; /* 0 unless set: the faults are the subject */
    lm_io io = {faulty_read, &F};
    return lm_engine_open_io(m, dir, &o, &io, err);
}

static size_t vocab(const lazymoe_model *m) {
    lazymoe_model_info info;
    lazymoe_model_get_info(m, &info);
    return (size_t)info.vocab_size;
}

/* Logits of every prompt position of a fresh model (faults as F is set). */
static float *prompt_logits(const char *dir, int capacity, int buffered, char *err) {
    lazymoe_model *m;
    if (open_model(dir, capacity, buffered, &m, err) != 0) return NULL;
    float *lg = malloc(sizeof(float) * NIDS * vocab(m));
    lazymoe_session *s = NULL;
    int rc = lazymoe_session_create(&s, m, err, LM_ERR_LEN);
    if (rc == 0) rc = lazymoe_session_eval(s, IDS, NIDS, lg, 1, err, LM_ERR_LEN);
    lazymoe_session_free(s);
    lm_engine_close(m);
    if (rc != 0) {
        free(lg);
        return NULL;
    }
    return lg;
}

static float *reference; /* resident logits of the prompt */
static size_t V;

static int same_as_resident(const float *lg) { return lg && reference && memcmp(lg, reference, sizeof(float) * NIDS * V) == 0; }

static void make_reference(void) {
    char err[LM_ERR_LEN];
    lazymoe_model *m;
    fault_set(&F, F_NONE, -1, -1, 1, -1);
    CHECKF(open_model(MODEL, -1, 0, &m, err) == 0, "%s", err);
    if (!m) return;
    V = vocab(m);
    lm_engine_close(m);
    reference = prompt_logits(MODEL, -1, 0, err);
    CHECKF(reference != NULL, "%s", err);
}

/* A copy of MODEL where O_DIRECT works (the system's /tmp may be a tmpfs, which
 * refuses it; the build tree is on a disk), or NULL. */
static const char *direct_copy(void) {
    static char dir[600];
    const char *cands[2] = {tmp, LAZYMOE_SOURCE_DIR "/build"};
    for (int i = 0; i < 2; i++) {
        char probe[700], err[LM_ERR_LEN], cmd[1400];
        snprintf(dir, sizeof dir, "%s/store-direct-%d", cands[i], (int)getpid());
        mkdir(dir, 0755);
        snprintf(probe, sizeof probe, "%s/probe", dir);
        FILE *fp = fopen(probe, "wb");
        if (fp) {
            static char zeros[4096];
            fwrite(zeros, 1, sizeof zeros, fp);
            fclose(fp);
        }
        int fd = lm_file_open_direct(probe, err);
        unlink(probe);
        if (fd >= 0) {
            lm_file_close(fd);
            snprintf(cmd, sizeof cmd, "cp " MODEL "/* '%s'/", dir);
            if (system(cmd) == 0) return dir;
        }
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) printf("# cannot remove %s\n", dir);
    }
    return NULL;
}

static void remove_dir(const char *dir) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("# cannot remove %s\n", dir);
}

/* The expert of MoE layer 1 read most often by a lazy run at capacity 2. */
static void pick_victim(const char *dir, int buffered, int *layer, int *expert, int *n_reads) {
    char err[LM_ERR_LEN];
    fault_set(&F, F_NONE, -1, -1, 1, -1);
    float *lg = prompt_logits(dir, 2, buffered, err);
    CHECKF(same_as_resident(lg), "clean lazy run differs from resident: %s", lg ? "" : err);
    free(lg);
    *layer = 1;
    *expert = 0;
    for (int e = 1; e < MAX_E; e++)
        if (atomic_load(&F.reads[1][e]) > atomic_load(&F.reads[1][*expert])) *expert = e;
    *n_reads = atomic_load(&F.reads[1][*expert]);
}

/* ---- cases -------------------------------------------------------------------------- */

/* For every read k of the victim expert in a clean run: that read and every later one
 * of the expert fail. The prompt's evaluation fails with the file, layer, expert and
 * cause; the session is unchanged (length 0); with the fault gone the same session
 * evaluates the prompt exactly like the resident model. Buffered and direct reads. */
static void fault_at_every_read(const char *dir, int buffered) {
    int L, X, n;
    pick_victim(dir, buffered, &L, &X, &n);
    CHECKF(n >= 6, "the victim was read %d times: too few to cover its parts and requests", n);
    char want[64];
    snprintf(want, sizeof want, "model.safetensors: layer %d expert %d: ", L, X);
    float *lg = malloc(sizeof(float) * NIDS * V);
    for (int k = 1; k <= n; k++) {
        char err[LM_ERR_LEN] = "";
        lazymoe_model *m;
        fault_set(&F, F_NONE, -1, -1, 1, -1);
        CHECKF(open_model(dir, 2, buffered, &m, err) == 0, "%s", err);
        if (!m) break;
        lazymoe_session *s;
        CHECK(lazymoe_session_create(&s, m, err, LM_ERR_LEN) == 0);
        fault_set(&F, F_EIO, L, X, k, -1);
        int rc = lazymoe_session_eval(s, IDS, NIDS, lg, 1, err, LM_ERR_LEN);
        CHECKF(rc == -1, "read %d of %d of layer %d expert %d failed, yet the evaluation succeeded", k, n, L, X);
        CHECK_STR_CONTAINS(err, want);
        CHECK_STR_CONTAINS(err, "Input/output error");
        CHECK_STR_CONTAINS(err, "(2 tries)");
        CHECKF(atomic_load(&F.injected) >= LM_STORE_READ_TRIES, "read %d: %d faults injected", k,
               atomic_load(&F.injected));
        CHECK(lazymoe_session_length(s) == 0);
        if (!buffered) CHECKF(atomic_load(&F.direct) > 0, "read %d: no read used O_DIRECT", k);
        fault_set(&F, F_NONE, -1, -1, 1, -1);
        rc = lazymoe_session_eval(s, IDS, NIDS, lg, 1, err, LM_ERR_LEN);
        CHECKF(rc == 0, "after the fault at read %d: %s", k, err);
        CHECKF(rc == 0 && same_as_resident(lg), "after the fault at read %d of layer %d expert %d: logits differ", k,
               L, X);
        lazymoe_session_free(s);
        lm_engine_close(m);
    }
    printf("# %s: a fault at each of the %d reads of layer %d expert %d\n", buffered ? "buffered" : "direct", n, L, X);
    free(lg);
}

static void eio_at_every_read_buffered(void) { fault_at_every_read(MODEL, 1); }

static void eio_at_every_read_direct(void) {
    const char *dir = direct_copy();
    CHECKF(dir != NULL, "no directory found where O_DIRECT works (tried %s and the build tree)", tmp);
    if (!dir) return;
    fault_at_every_read(dir, 0);
    remove_dir(dir);
}

/* The file seems to end inside an expert: "short read", and the exact numbers. */
static void end_of_file_is_named(void) {
    int L, X, n;
    pick_victim(MODEL, 1, &L, &X, &n);
    char err[LM_ERR_LEN] = "", want[64];
    fault_set(&F, F_EOF, L, X, 1, -1);
    float *lg = prompt_logits(MODEL, 2, 1, err);
    CHECK(lg == NULL);
    free(lg);
    snprintf(want, sizeof want, "model.safetensors: layer %d expert %d: short read: got 0 of ", L, X);
    CHECK_STR_CONTAINS(err, want);
    CHECK_STR_CONTAINS(err, "shorter than expected");
}

/* Every read fails the first time and succeeds when the store tries again: lazy
 * (buffered and direct) and resident runs give the resident model's logits. */
static void transient_faults_are_retried(void) {
    const char *dir = direct_copy();
    CHECKF(dir != NULL, "no directory found where O_DIRECT works");
    struct {
        const char *dir;
        int capacity, buffered;
    } runs[3] = {{MODEL, -1, 1}, {MODEL, 2, 1}, {dir, 2, 0}};
    for (int i = 0; i < 3; i++) {
        if (!runs[i].dir) continue;
        char err[LM_ERR_LEN] = "";
        fault_set(&F, F_TRANSIENT, -1, -1, 1, -1);
        float *lg = prompt_logits(runs[i].dir, runs[i].capacity, runs[i].buffered, err);
        CHECKF(lg != NULL, "capacity %d: %s", runs[i].capacity, err);
        CHECKF(same_as_resident(lg), "capacity %d%s: logits differ", runs[i].capacity, runs[i].buffered ? " buffered" : "");
        CHECKF(atomic_load(&F.injected) > 10, "capacity %d: only %d faults injected", runs[i].capacity,
               atomic_load(&F.injected));
        free(lg);
    }
    if (dir) remove_dir(dir);
}

/* Short reads (each reporting half of what it read, the rest of the buffer
 * scribbled over) and slow reads, on every read: results unchanged. */
static void short_and_slow_reads_are_exact(void) {
    const char *dir = direct_copy();
    CHECKF(dir != NULL, "no directory found where O_DIRECT works");
    fault_kind kinds[2] = {F_SHORT, F_SLOW};
    for (int k = 0; k < 2; k++)
        for (int v = 0; v < 3; v++) {
            const char *d = v == 2 ? dir : MODEL;
            if (!d) continue;
            int capacity = v == 0 ? -1 : 2, buffered = v != 2;
            char err[LM_ERR_LEN] = "";
            fault_set(&F, kinds[k], -1, -1, 1, -1);
            float *lg = prompt_logits(d, capacity, buffered, err);
            CHECKF(lg != NULL, "%s reads, capacity %d: %s", k ? "slow" : "short", capacity, err);
            CHECKF(same_as_resident(lg), "%s reads, capacity %d%s: logits differ", k ? "slow" : "short", capacity,
                   buffered ? " buffered" : "");
            if (kinds[k] == F_SHORT) CHECKF(atomic_load(&F.injected) > 0, "no short read injected");
            free(lg);
        }
    if (dir) remove_dir(dir);
}

/* A resident load that cannot read an expert fails the open, naming it. */
static void resident_load_fault(void) {
    char err[LM_ERR_LEN] = "";
    lazymoe_model *m = NULL;
    fault_set(&F, F_EIO, 1, 5, 1, -1);
    CHECK(open_model(MODEL, -1, 1, &m, err) == -1);
    CHECK(m == NULL);
    CHECK_STR_CONTAINS(err, "model.safetensors: layer 1 expert 5: read error at offset");
    CHECK_STR_CONTAINS(err, "Input/output error (2 tries)");
    fault_set(&F, F_EOF, 0, 2, 1, -1);
    CHECK(open_model(MODEL, -1, 1, &m, err) == -1);
    CHECK_STR_CONTAINS(err, "layer 0 expert 2: short read");
}

/* Waits until n faults were injected (the background read gave up), then a little
 * longer for the reader to record the failure. */
static int wait_injected(int n) {
    for (int i = 0; i < 10000 && atomic_load(&F.injected) < n; i++) usleep(1000);
    usleep(20000);
    return atomic_load(&F.injected) >= n;
}

/* Acquires expert e of layer l alone and checks its bytes against the resident model's. */
static void acquire_and_compare(lm_expert_cache *c, const lazymoe_model *res, int l, int e, int want_status,
                                const char *what) {
    char err[LM_ERR_LEN] = "";
    uint8_t st = 0;
    int32_t id = e;
    lm_cache_begin_step(c);
    CHECKF(lm_cache_acquire(c, l, &id, 1, &st) == 1, "%s: not acquired", what);
    if (want_status) CHECKF(st == want_status, "%s: acquire status %d, expected %d", what, st, want_status);
    lm_expert v;
    int rc = lm_cache_wait(c, l, e, &v, err);
    CHECKF(rc == 0, "%s: %s", what, err);
    if (rc == 0) {
        const lm_expert *r = &res->w.layers[l].experts[e];
        const lm_mat *a[3] = {&v.gate, &v.up, &v.down}, *b[3] = {&r->gate, &r->up, &r->down};
        for (int i = 0; i < 3; i++)
            CHECKF(memcmp(a[i]->data, b[i]->data, lm_mat_bytes(b[i])) == 0, "%s: matrix %d differs from resident", what, i);
    }
    lm_cache_release_layer(c, l);
}

/* Background reads -- warm start (prefetch into empty slots), router lookahead and
 * pins -- whose every try fails: no error surfaces and nothing wrong is cached; the
 * step that needs the expert reads it again (a pinned one in its pinned slot), both
 * when the failure is over before it acquires and while the read is still in flight. */
static void background_read_faults(void) {
    char err[LM_ERR_LEN] = "";
    lazymoe_model *res, *m;
    fault_set(&F, F_NONE, -1, -1, 1, -1);
    CHECKF(open_model(MODEL, -1, 1, &res, err) == 0, "%s", err);
    CHECKF(open_model(MODEL, 8, 1, &m, err) == 0, "%s", err);
    if (!res || !m) return;
    lm_expert_cache *c = m->cache;
    const char *names[3] = {"warm start", "lookahead", "pin"};
    for (int kind = 0; kind < 3; kind++)
        for (int in_flight = 0; in_flight < 2; in_flight++) {
            int l = kind & 1, e = 2 * kind + in_flight;
            int n = lm_store_expert_requests(&m->w.layers[l].src, e, CHUNK);
            int32_t id = e;
            char what[96];
            snprintf(what, sizeof what, "%s of layer %d expert %d%s", names[kind], l, e, in_flight ? " (in flight)" : "");
            /* Finished: every try fails; in flight: slow failures, then the fault ends. */
            fault_set(&F, in_flight ? F_SLOW_EIO : F_EIO, l, e, 1, in_flight ? LM_STORE_READ_TRIES * n : -1);
            int queued = kind == 0   ? lm_cache_prefetch(c, l, &id, 1)
                         : kind == 1 ? lm_cache_prefetch_lookahead(c, l, &id, 1)
                                     : lm_cache_pin(c, l, &id, 1);
            CHECKF(queued == 1, "%s: not queued", what);
            if (!in_flight) {
                CHECKF(wait_injected(LM_STORE_READ_TRIES * n), "%s: %d of %d faults injected", what,
                       atomic_load(&F.injected), LM_STORE_READ_TRIES * n);
                fault_set(&F, F_NONE, -1, -1, 1, -1);
                acquire_and_compare(c, res, l, e, 2, what); /* a miss: read again */
            } else {
                acquire_and_compare(c, res, l, e, 1, what); /* a hit on the read in flight */
                CHECKF(atomic_load(&F.injected) == LM_STORE_READ_TRIES * n, "%s: %d faults injected, expected %d",
                       what, atomic_load(&F.injected), LM_STORE_READ_TRIES * n);
            }
            CHECKF(lm_cache_expert_reads(c, l, e) == 2, "%s: read %u times, expected twice", what,
                   lm_cache_expert_reads(c, l, e));
            if (kind == 2) CHECKF(lm_cache_is_pinned(c, l, e), "%s: no longer pinned", what);
            acquire_and_compare(c, res, l, e, 1, what); /* now a plain hit */
        }
    /* And the model as a whole still computes the resident logits. */
    fault_set(&F, F_NONE, -1, -1, 1, -1);
    lazymoe_session *s;
    float *lg = malloc(sizeof(float) * NIDS * V);
    CHECK(lazymoe_session_create(&s, m, err, LM_ERR_LEN) == 0);
    CHECKF(lazymoe_session_eval(s, IDS, NIDS, lg, 1, err, LM_ERR_LEN) == 0, "%s", err);
    CHECK(same_as_resident(lg));
    free(lg);
    lazymoe_session_free(s);
    lm_engine_close(m);
    lm_engine_close(res);
}

/* The cache's lookahead gate (lookahead_gate.h): layer 0's predictions are always what
 * the step routes to, layer 1's never. Each step predicts and uses an expert that is not
 * cached (the cycle is longer than the 2 slots). Both layers start closed and measure the
 * predictions they hold back; layer 0 opens once it has the evidence and then reads its
 * predictions, layer 1 never reads one. The reads are real: the expert read ahead is a
 * hit with the resident weights. */
static void lookahead_gate_opens_and_stays_shut(void) {
    char err[LM_ERR_LEN] = "";
    lazymoe_model *res, *m;
    fault_set(&F, F_NONE, -1, -1, 1, -1);
    gate_runs = 0.5;
    CHECKF(open_model(MODEL, -1, 1, &res, err) == 0, "%s", err);
    CHECKF(open_model(MODEL, 2, 1, &m, err) == 0, "%s", err);
    gate_runs = 0;
    if (!res || !m) return;
    lm_expert_cache *c = m->cache;
    int E = m->w.cfg.n_experts, first_open = -1, layer1_reads = 0;
    for (int t = 0; t < 40; t++) {
        int32_t e0 = t % E, wrong = (t + E / 2) % E, e1 = e0;
        lm_cache_begin_step(c);
        int q0 = lm_cache_prefetch_lookahead(c, 0, &e0, 1);
        layer1_reads += lm_cache_prefetch_lookahead(c, 1, &wrong, 1);
        if (q0 && first_open < 0) first_open = t;
        CHECKF(first_open < 0 || q0, "layer 0 closed again at step %d", t);
        uint8_t st[1];
        CHECK(lm_cache_acquire(c, 0, &e0, 1, st) == 1);
        CHECKF(st[0] == (q0 ? 1 : 2), "step %d: layer 0 status %d with %d read ahead", t, st[0], q0);
        lm_expert v;
        CHECKF(lm_cache_wait(c, 0, e0, &v, err) == 0, "%s", err);
        CHECK(memcmp(v.gate.data, res->w.layers[0].experts[e0].gate.data, lm_mat_bytes(&v.gate)) == 0);
        lm_cache_release_layer(c, 0);
        CHECK(lm_cache_acquire(c, 1, &e1, 1, st) == 1);
        CHECKF(lm_cache_wait(c, 1, e1, &v, err) == 0, "%s", err);
        lm_cache_release_layer(c, 1);
    }
    /* The evidence is LM_LOOKAHEAD_GATE_EVIDENCE (8) decayed reads: 32 (1 - (31/32)^k) >= 8
     * takes k = 10 observations of one read, and step t is observed when step t + 1
     * begins, so step 10 is the first to read. */
    CHECKF(first_open == 10, "layer 0 opened at step %d, expected 10", first_open);
    CHECKF(layer1_reads == 0, "layer 1 read %d mispredicted experts", layer1_reads);
    lm_engine_close(m);
    lm_engine_close(res);
}

int main(void) {
    snprintf(tmp, sizeof tmp, "/tmp/lazymoe-test-store-%d", (int)getpid());
    mkdir(tmp, 0755);
    char xdg[300];
    snprintf(xdg, sizeof xdg, "%s/xdg", tmp);
    setenv("XDG_CACHE_HOME", xdg, 1);
    TEST_CASE("store_reference_run", make_reference);
    TEST_CASE("store_eio_at_every_read_buffered", eio_at_every_read_buffered);
    TEST_CASE("store_eio_at_every_read_direct", eio_at_every_read_direct);
    TEST_CASE("store_end_of_file_is_named", end_of_file_is_named);
    TEST_CASE("store_transient_faults_are_retried", transient_faults_are_retried);
    TEST_CASE("store_short_and_slow_reads_are_exact", short_and_slow_reads_are_exact);
    TEST_CASE("store_resident_load_fault", resident_load_fault);
    TEST_CASE("store_background_read_faults", background_read_faults);
    TEST_CASE("store_lookahead_gate", lookahead_gate_opens_and_stays_shut);
    free(reference);
    remove_dir(tmp);
    TEST_EXIT();
}
