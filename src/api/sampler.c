/* Sampling: penalties, temperature, top-k, top-p, min-p, seeded draw.
 *
 * Design: the candidates (finite logits after penalties) are ranked only as far as
 * the filters need. top-k, top-p and min-p each keep a prefix of the tokens sorted
 * most likely first (ties: lower id first), so the result is the shortest of the
 * three prefixes; top-p's mass is measured within the top-k set, as transformers
 * applies top-k before top-p. A max-heap yields that prefix in O(V + kept x log V)
 * instead of sorting the whole vocabulary every token.
 */
#include "api/sampler.h"

#include "common/error.h"
#include "platform/platform.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

double lm_rng_uniform(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

int lm_sampler_init(lm_sampler *s, int vocab, const lazymoe_sampling *p, char *err) {
    memset(s, 0, sizeof *s);
    if (vocab <= 0) return lm_errf(err, "sampler: vocabulary of %d tokens", vocab);
    if (!isfinite(p->temperature) || p->temperature < 0)
        return lm_errf(err, "temperature must be a number >= 0, got %g", (double)p->temperature);
    if (!isfinite(p->top_p) || !(p->top_p > 0 && p->top_p <= 1))
        return lm_errf(err, "top_p must be in (0, 1], got %g", (double)p->top_p);
    if (!isfinite(p->min_p) || p->min_p < 0 || p->min_p > 1)
        return lm_errf(err, "min_p must be in [0, 1], got %g", (double)p->min_p);
    if (p->top_k < 0) return lm_errf(err, "top_k must be >= 0, got %d", p->top_k);
    if (!isfinite(p->repetition_penalty) || !(p->repetition_penalty > 0))
        return lm_errf(err, "repetition_penalty must be > 0, got %g", (double)p->repetition_penalty);
    if (!isfinite(p->presence_penalty) || !isfinite(p->frequency_penalty))
        return lm_errf(err, "presence_penalty and frequency_penalty must be finite numbers");
    s->p = *p;
    s->vocab = vocab;
    size_t V = (size_t)vocab;
    s->work = lm_malloc(V * sizeof *s->work, "sampler", err);
    s->seen = s->work ? lm_calloc(V, sizeof *s->seen, "sampler", err) : NULL;
    s->count = s->seen ? lm_calloc(V, sizeof *s->count, "sampler", err) : NULL;
    s->touched = s->count ? lm_malloc(V * sizeof *s->touched, "sampler", err) : NULL;
    s->cand = s->touched ? lm_malloc(V * sizeof *s->cand, "sampler", err) : NULL;
    s->heap = s->cand ? lm_malloc(V * sizeof *s->heap, "sampler", err) : NULL;
    s->weight = s->heap ? lm_malloc(V * sizeof *s->weight, "sampler", err) : NULL;
    if (!s->weight) {
        lm_sampler_free(s);
        return -1;
    }
    s->rng = p->seed;
    return 0;
}

void lm_sampler_free(lm_sampler *s) {
    free(s->work);
    free(s->seen);
    free(s->count);
    free(s->touched);
    free(s->cand);
    free(s->heap);
    free(s->weight);
    memset(s, 0, sizeof *s);
}

void lm_sampler_reset(lm_sampler *s) {
    for (int i = 0; i < s->n_touched; i++) {
        s->seen[s->touched[i]] = 0;
        s->count[s->touched[i]] = 0;
    }
    s->n_touched = 0;
    s->rng = s->p.seed;
}

static void touch(lm_sampler *s, int32_t id) {
    if (!s->seen[id] && !s->count[id]) s->touched[s->n_touched++] = id;
}

void lm_sampler_note_context(lm_sampler *s, const int32_t *ids, int n) {
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= s->vocab) continue;
        touch(s, ids[i]);
        s->seen[ids[i]] = 1;
    }
}

void lm_sampler_note_generated(lm_sampler *s, int32_t id) {
    if (id < 0 || id >= s->vocab) return;
    touch(s, id);
    s->seen[id] = 1;
    if (s->count[id] < UINT32_MAX) s->count[id]++;
}

/* work = logits with the penalties applied; NaN becomes -inf. Returns the row to rank:
 * the logits themselves where no penalty is set (ranking treats NaN as -inf: it compares
 * with >, false for NaN as for -inf), saving a copy of the vocabulary a token. */
static const float *penalize(lm_sampler *s, const float *logits) {
    const lazymoe_sampling *p = &s->p;
    if (p->repetition_penalty == 1.0f && p->presence_penalty == 0.0f && p->frequency_penalty == 0.0f) return logits;
    for (int i = 0; i < s->vocab; i++) s->work[i] = isnan(logits[i]) ? -INFINITY : logits[i];
    for (int i = 0; i < s->n_touched; i++) {
        int32_t id = s->touched[i];
        float l = s->work[id];
        if (s->seen[id] && p->repetition_penalty != 1.0f)
            l = l < 0 ? l * p->repetition_penalty : l / p->repetition_penalty;
        if (s->count[id])
            l -= p->presence_penalty + p->frequency_penalty * (float)s->count[id];
        s->work[id] = l;
    }
    return s->work;
}

/* Ranking order: higher logit first, then lower id. */
static int better(const float *w, int32_t a, int32_t b) {
    float x = w[a], y = w[b];
    if (x != y) return x > y;
    return a < b; // cppcheck-suppress arrayIndexThenCheck ; ids, not a bounds check
}

static void sift_down(const float *w, int32_t *h, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && better(w, h[l], h[m])) m = l;
        if (r < n && better(w, h[r], h[m])) m = r;
        if (m == i) return;
        int32_t t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

/* top_k up to this many: one pass keeping the best k in order (most tokens are turned
 * away by one comparison with the k-th) instead of a heap over the vocabulary. */
#define TOP_K_BY_INSERTION 256

/* out[0..k) = the k best of ids[0..n) by better(), best first (k < n): the same list k
 * pops of the max-heap give, since better() is a strict total order. */
static void top_k_sorted(const float *w, const int32_t *ids, int n, int32_t *out, int k) {
    int m = 0;
    for (int i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (m == k && !better(w, id, out[k - 1])) continue;
        int j = m < k ? m++ : k - 1; /* the slot freed (the last, when full) */
        while (j > 0 && better(w, id, out[j - 1])) {
            out[j] = out[j - 1];
            j--;
        }
        out[j] = id;
    }
}

/* Fills cand/weight/n_cand with the tokens the draw chooses from. */
static void rank(lm_sampler *s, const float *logits) {
    const lazymoe_sampling *p = &s->p;
    const float *w = penalize(s, logits);
    int32_t best = -1;
    float top = -INFINITY; /* w[best], kept in a register */
    for (int i = 0; i < s->vocab; i++)
        if (w[i] > top) top = w[best = i];
    s->n_cand = 0;
    if (best < 0) return;
    if (p->temperature == 0) {
        s->cand[0] = best;
        s->weight[0] = 1;
        s->n_cand = 1;
        return;
    }
    double T = p->temperature, mx = w[best], total = 0;
    int n = 0;
    for (int i = 0; i < s->vocab; i++)
        if (w[i] > -INFINITY) s->heap[n++] = i;
    int filtered = (p->top_k > 0 && p->top_k < n) || p->top_p < 1 || p->min_p > 0;
    if (!filtered) {
        for (int i = 0; i < n; i++) {
            s->cand[i] = s->heap[i];
            s->weight[i] = exp(((double)w[s->heap[i]] - mx) / T);
        }
        s->n_cand = n;
        return;
    }
    int K = p->top_k > 0 && p->top_k < n ? p->top_k : n;
    int hn = n, kept = 0;
    if (K < n) { /* top-p's mass is relative to the top-k set: rank all of it first */
        if (K <= TOP_K_BY_INSERTION) {
            top_k_sorted(w, s->heap, n, s->cand, K);
        } else {
            for (int i = n / 2 - 1; i >= 0; i--) sift_down(w, s->heap, n, i);
            for (int i = 0; i < K; i++) {
                s->cand[i] = s->heap[0];
                s->heap[0] = s->heap[--hn];
                sift_down(w, s->heap, hn, 0);
            }
        }
        for (int i = 0; i < K; i++) {
            s->weight[i] = exp(((double)w[s->cand[i]] - mx) / T);
            total += s->weight[i];
        }
        hn = 0;
    } else {
        /* every token ranked: the mass top-p needs is the whole vocabulary's (index order) */
        for (int i = 0; p->top_p < 1 && i < n; i++) total += exp(((double)w[s->heap[i]] - mx) / T);
        for (int i = n / 2 - 1; i >= 0; i--) sift_down(w, s->heap, n, i);
    }
    double mass = 0, need = (double)p->top_p * total;
    for (int i = 0; i < K; i++) {
        int32_t id;
        double wt;
        if (hn) {
            id = s->heap[0];
            wt = exp(((double)w[id] - mx) / T);
        } else {
            id = s->cand[i];
            wt = s->weight[i];
        }
        /* transformers keeps a token while the mass of the more likely ones is below
         * top_p, and while it is at least min_p x the most likely (weight 1). */
        if (i > 0 && ((p->top_p < 1 && mass >= need) || wt < (double)p->min_p)) break;
        s->cand[i] = id;
        s->weight[i] = wt;
        mass += wt;
        kept++;
        if (hn) {
            s->heap[0] = s->heap[--hn];
            sift_down(w, s->heap, hn, 0);
        }
    }
    s->n_cand = kept;
}

int32_t lm_sampler_sample(lm_sampler *s, const float *logits) {
    rank(s, logits);
    if (s->n_cand == 0) return -1;
    if (s->n_cand == 1) return s->cand[0];
    double total = 0;
    for (int i = 0; i < s->n_cand; i++) total += s->weight[i];
    double r = lm_rng_uniform(&s->rng) * total, acc = 0;
    for (int i = 0; i < s->n_cand; i++) {
        acc += s->weight[i];
        if (r < acc) return s->cand[i];
    }
    return s->cand[s->n_cand - 1];
}

/* rank(): without penalties it ranks the logits themselves; at temperature 0 it keeps
 * the first largest alone, and with top_k 1 (at any temperature) top_k_sorted keeps
 * the best by better() alone -- the same token, the lowest index of equal values --
 * top_p and min_p never dropping the first candidate; one candidate is returned
 * without a draw. */
int lm_sampler_is_greedy(const lazymoe_sampling *p) {
    int no_penalty = p->repetition_penalty == 1.0f && p->presence_penalty == 0.0f && p->frequency_penalty == 0.0f;
    return no_penalty && (p->temperature == 0 || p->top_k == 1);
}

int lm_sampler_probs(lm_sampler *s, const float *logits, float *probs) {
    rank(s, logits);
    memset(probs, 0, sizeof(float) * (size_t)s->vocab);
    double total = 0;
    for (int i = 0; i < s->n_cand; i++) total += s->weight[i];
    for (int i = 0; i < s->n_cand; i++) probs[s->cand[i]] = (float)(s->weight[i] / total);
    return s->n_cand;
}
