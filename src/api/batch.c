/* Batches of sessions decoded together: see api/batch.h for the design. */
#include "api/batch.h"

#include "common/error.h"
#include "engine/engine.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A member's posted token, on its own stack until the step that carries it ran. */
typedef struct {
    lazymoe_session *s;
    int32_t id;
    float *logits; /* [vocab], the member's */
    int done;
    int rc;
    char err[LM_ERR_LEN];
} batch_post;

struct lazymoe_batch {
    lazymoe_model *m;
    lazymoe_session *work; /* the steps' scratch (lm_batch_session_create) */
    int max_seqs;
    pthread_mutex_t mu;    /* guards everything below */
    pthread_cond_t cv;     /* any change: the turn freed, a post, a member left, a step done */
    int busy;              /* the turn is held */
    int members;           /* generations in their decode phase */
    int n_posted;
    batch_post **posted;         /* [max_seqs] */
    lazymoe_session **seqs;      /* [max_seqs] a step's sessions (turn holder only) */
    int32_t *ids;                /* [max_seqs] */
    float *logits;               /* [max_seqs][vocab] */
    unsigned long long steps, tokens;
};

static int copy_err(char *dst, size_t len, const char *src) {
    if (dst && len) snprintf(dst, len, "%s", src);
    return -1;
}

int lazymoe_batch_create(lazymoe_batch **out, lazymoe_model *m, int max_seqs, char *err, size_t errlen) {
    char e[LM_ERR_LEN];
    *out = NULL;
    lazymoe_batch *b = calloc(1, sizeof *b);
    if (!b) return copy_err(err, errlen, "out of memory");
    b->m = m;
    b->max_seqs = max_seqs;
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    if (lm_batch_session_create(&b->work, m, max_seqs, e) != 0) {
        lazymoe_batch_free(b);
        return copy_err(err, errlen, e);
    }
    size_t V = (size_t)m->w.cfg.vocab_size, n = (size_t)max_seqs;
    b->posted = calloc(n, sizeof *b->posted);
    b->seqs = calloc(n, sizeof *b->seqs);
    b->ids = calloc(n, sizeof *b->ids);
    b->logits = malloc(sizeof(float) * n * V);
    if (!b->posted || !b->seqs || !b->ids || !b->logits) {
        lazymoe_batch_free(b);
        return copy_err(err, errlen, "out of memory");
    }
    *out = b;
    return 0;
}

void lazymoe_batch_free(lazymoe_batch *b) {
    if (!b) return;
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    lm_session_free(b->work);
    free(b->posted);
    free(b->seqs);
    free(b->ids);
    free(b->logits);
    free(b);
}

/* Runs n sessions' tokens as one step (the caller holds the turn) and spreads the
 * logits into each caller's buffer (out[i], NULL = not wanted). */
static int run_step(lazymoe_batch *b, int n, float *const *out, char *e) {
    size_t V = (size_t)b->m->w.cfg.vocab_size;
    if (lm_session_eval_batch(b->work, b->seqs, b->ids, n, b->logits, e) != 0) return -1;
    for (int i = 0; i < n; i++)
        if (out[i]) memcpy(out[i], b->logits + (size_t)i * V, sizeof(float) * V);
    return 0;
}

int lazymoe_batch_eval(lazymoe_batch *b, lazymoe_session *const *s, const int32_t *ids, int n, float *logits,
                       char *err, size_t errlen) {
    char e[LM_ERR_LEN] = "";
    if (n < 1 || n > b->max_seqs) {
        snprintf(e, sizeof e, "a step of this batch takes 1..%d sessions, not %d", b->max_seqs, n);
        return copy_err(err, errlen, e);
    }
    lm_batch_turn_begin(b);
    size_t V = (size_t)b->m->w.cfg.vocab_size;
    float *out[LM_CHUNK_TOKENS];
    for (int i = 0; i < n; i++) {
        b->seqs[i] = s[i];
        b->ids[i] = ids[i];
        out[i] = logits ? logits + (size_t)i * V : NULL;
    }
    int rc = run_step(b, n, out, e);
    if (rc == 0) {
        pthread_mutex_lock(&b->mu);
        b->steps++;
        b->tokens += (unsigned long long)n;
        pthread_mutex_unlock(&b->mu);
    }
    lm_batch_turn_end(b);
    return rc == 0 ? 0 : copy_err(err, errlen, e);
}

void lazymoe_batch_counters(lazymoe_batch *b, unsigned long long *steps, unsigned long long *tokens) {
    pthread_mutex_lock(&b->mu);
    *steps = b->steps;
    *tokens = b->tokens;
    pthread_mutex_unlock(&b->mu);
}

/* A step can run: every member has posted its token and nobody holds the turn. */
static int step_ready(const lazymoe_batch *b) { return !b->busy && b->members > 0 && b->n_posted == b->members; }

void lm_batch_turn_begin(lazymoe_batch *b) {
    pthread_mutex_lock(&b->mu);
    while (b->busy || (b->members > 0 && b->n_posted == b->members)) pthread_cond_wait(&b->cv, &b->mu);
    b->busy = 1;
    pthread_mutex_unlock(&b->mu);
}

void lm_batch_turn_end(lazymoe_batch *b) {
    pthread_mutex_lock(&b->mu);
    b->busy = 0;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

void lazymoe_batch_lock(lazymoe_batch *b) { lm_batch_turn_begin(b); }
void lazymoe_batch_unlock(lazymoe_batch *b) { lm_batch_turn_end(b); }

void lm_batch_join(lazymoe_batch *b) {
    pthread_mutex_lock(&b->mu);
    b->members++;
    pthread_mutex_unlock(&b->mu);
}

void lm_batch_leave(lazymoe_batch *b) {
    pthread_mutex_lock(&b->mu);
    b->members--;
    pthread_cond_broadcast(&b->cv); /* the others may now be all posted */
    pthread_mutex_unlock(&b->mu);
}

int lm_batch_decode(lazymoe_batch *b, lazymoe_session *s, int32_t id, float *logits, char *err) {
    batch_post me = {.s = s, .id = id, .logits = logits};
    pthread_mutex_lock(&b->mu);
    if (b->n_posted >= b->max_seqs) { /* more members than the batch holds: a caller's bug */
        pthread_mutex_unlock(&b->mu);
        return lm_errf(err, "more than %d generations decode in one batch", b->max_seqs);
    }
    b->posted[b->n_posted++] = &me;
    pthread_cond_broadcast(&b->cv);
    while (!me.done) {
        if (!step_ready(b)) {
            pthread_cond_wait(&b->cv, &b->mu);
            continue;
        }
        /* This thread runs the step for everyone posted. */
        int n = b->n_posted;
        batch_post *posts[LM_CHUNK_TOKENS];
        float *out[LM_CHUNK_TOKENS];
        memcpy(posts, b->posted, sizeof(batch_post *) * (size_t)n);
        b->busy = 1;
        pthread_mutex_unlock(&b->mu);
        for (int i = 0; i < n; i++) {
            b->seqs[i] = posts[i]->s;
            b->ids[i] = posts[i]->id;
            out[i] = posts[i]->logits;
        }
        char e[LM_ERR_LEN] = "";
        int rc = run_step(b, n, out, e);
        pthread_mutex_lock(&b->mu);
        for (int i = 0; i < n; i++) {
            posts[i]->rc = rc;
            if (rc) snprintf(posts[i]->err, sizeof posts[i]->err, "%s", e);
            posts[i]->done = 1;
        }
        if (rc == 0) {
            b->steps++;
            b->tokens += (unsigned long long)n;
        }
        /* Members that joined and posted while the step ran wait for the next one. */
        memmove(b->posted, b->posted + n, sizeof(batch_post *) * (size_t)(b->n_posted - n));
        b->n_posted -= n;
        b->busy = 0;
        pthread_cond_broadcast(&b->cv);
    }
    pthread_mutex_unlock(&b->mu);
    if (me.rc) return lm_errf(err, "%s", me.err);
    return 0;
}
