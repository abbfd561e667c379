#include "experts/trace.h"

#include "common/buf.h"
#include "common/error.h"

#include <stdlib.h>
#include <string.h>

struct lm_trace {
    FILE *f;
    int n_layers, n_experts, top_k;
    int cap_tokens;
    int32_t *chunk; /* [cap_tokens][n_layers][top_k], -1 = no picks */
    int failed;
};

int lm_trace_create(lm_trace **out, const char *path, int n_layers, int n_experts, int top_k, char *err) {
    *out = NULL;
    lm_trace *t = calloc(1, sizeof *t);
    if (!t) return lm_errf(err, "out of memory");
    t->f = fopen(path, "w");
    if (!t->f) {
        free(t);
        return lm_errf(err, "cannot create routing trace %s", path);
    }
    t->n_layers = n_layers;
    t->n_experts = n_experts;
    t->top_k = top_k;
    fprintf(t->f, "lazymoe-routing-trace v1 layers=%d experts=%d top_k=%d\n", n_layers, n_experts, top_k);
    *out = t;
    return 0;
}

void lm_trace_record(lm_trace *t, int layer, const int32_t *sel, int T, int K) {
    size_t per_token = (size_t)t->n_layers * (size_t)t->top_k;
    if (T <= 0 || per_token == 0) return;
    if (T > t->cap_tokens) {
        int32_t *nc = realloc(t->chunk, sizeof(int32_t) * per_token * (size_t)T);
        if (!nc) {
            t->failed = 1;
            return;
        }
        t->chunk = nc;
        t->cap_tokens = T;
        for (size_t i = 0; i < per_token * (size_t)T; i++) t->chunk[i] = -1;
    }
    for (int i = 0; i < T; i++)
        memcpy(t->chunk + (size_t)i * per_token + (size_t)layer * (size_t)t->top_k, sel + (size_t)i * (size_t)K,
               sizeof(int32_t) * (size_t)K);
}

int lm_trace_end_chunk(lm_trace *t, int T, char *err) {
    size_t per_token = (size_t)t->n_layers * (size_t)t->top_k;
    for (int i = 0; i < T && !t->failed && t->chunk; i++) {
        const int32_t *tok = t->chunk + (size_t)i * per_token;
        for (int l = 0; l < t->n_layers; l++) {
            if (l) fputc('|', t->f);
            for (int k = 0; k < t->top_k && tok[l * t->top_k + k] >= 0; k++)
                fprintf(t->f, k ? " %d" : "%d", tok[l * t->top_k + k]);
        }
        fputc('\n', t->f);
    }
    if (t->chunk)
        for (size_t i = 0; i < per_token * (size_t)t->cap_tokens; i++) t->chunk[i] = -1;
    if (t->failed || ferror(t->f)) return lm_errf(err, "writing the routing trace failed");
    return 0;
}

int lm_trace_close(lm_trace *t, char *err) {
    if (!t) return 0;
    int bad = t->failed || ferror(t->f);
    if (fclose(t->f) != 0) bad = 1;
    free(t->chunk);
    free(t);
    return bad ? lm_errf(err, "writing the routing trace failed") : 0;
}

int lm_trace_load(lm_trace_data *d, const char *path, char *err) {
    memset(d, 0, sizeof *d);
    FILE *f = fopen(path, "r");
    if (!f) return lm_errf(err, "cannot open routing trace %s", path);
    int rc = -1;
    char *line = NULL;
    size_t cap = 0;
    if (getline(&line, &cap, f) < 0 ||
        sscanf(line, "lazymoe-routing-trace v1 layers=%d experts=%d top_k=%d", &d->n_layers, &d->n_experts,
               &d->top_k) != 3 ||
        d->n_layers < 1 || d->n_layers > 4096 || d->n_experts < 1 || d->n_experts > 65536 || d->top_k < 1 ||
        d->top_k > d->n_experts) {
        lm_errf(err, "%s: not a lazymoe routing trace (bad header)", path);
        goto done;
    }
    size_t per_token = (size_t)d->n_layers * (size_t)d->top_k; /* > 0: header checked */
    size_t cap_tokens = 0;
    while (getline(&line, &cap, f) > 0) {
        /* one element of the growth is a token: per_token ids */
        if (lm_grow(&d->ids, &cap_tokens, (size_t)d->n_tokens + 1, sizeof(int32_t) * per_token) != 0) {
            lm_errf(err, "out of memory reading %s", path);
            goto done;
        }
        int32_t *tok = d->ids + (size_t)d->n_tokens * per_token;
        for (size_t i = 0; i < per_token; i++) tok[i] = -1;
        int layer = 0, k = 0;
        for (char *p = line; *p && *p != '\n';) {
            if (*p == '|') {
                layer++, k = 0, p++;
                continue;
            }
            if (*p == ' ') {
                p++;
                continue;
            }
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p || v < 0 || v >= d->n_experts || layer >= d->n_layers || k >= d->top_k) {
                lm_errf(err, "%s: token %d: bad expert list", path, d->n_tokens + 1);
                goto done;
            }
            tok[layer * d->top_k + k++] = (int32_t)v;
            p = end;
        }
        d->n_tokens++;
    }
    if (d->n_tokens == 0) {
        lm_errf(err, "%s: the trace holds no tokens", path);
        goto done;
    }
    rc = 0;
done:
    free(line);
    fclose(f);
    if (rc) lm_trace_data_free(d);
    return rc;
}

void lm_trace_data_free(lm_trace_data *d) {
    free(d->ids);
    memset(d, 0, sizeof *d);
}

static int cmp_desc_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? 1 : (x > y ? -1 : 0);
}

int lm_trace_stats(const lm_trace_data *d, int skip, int end, lm_routing_stats *out, char *err) {
    memset(out, 0, sizeof *out);
    if (skip < 0) skip = 0;
    if (end < 0 || end > d->n_tokens) end = d->n_tokens;
    if (skip >= end) return lm_errf(err, "the trace has %d tokens; nothing in [%d, %d)", d->n_tokens, skip, end);
    uint32_t *count = calloc((size_t)d->n_experts, sizeof *count);
    if (!count) return lm_errf(err, "out of memory");
    int moe_layers = 0;
    double distinct = 0, reuse = 0, top16 = 0;
    size_t per_token = (size_t)d->n_layers * (size_t)d->top_k;
    for (int l = 0; l < d->n_layers; l++) {
        if (d->ids[(size_t)l * (size_t)d->top_k] < 0) continue; /* dense layer */
        memset(count, 0, sizeof *count * (size_t)d->n_experts);
        uint64_t picks = 0, reused = 0, compared = 0;
        for (int t = skip; t < end; t++) {
            const int32_t *cur = d->ids + (size_t)t * per_token + (size_t)l * (size_t)d->top_k;
            const int32_t *prev = cur - per_token;
            for (int k = 0; k < d->top_k && cur[k] >= 0; k++) {
                count[cur[k]]++;
                picks++;
                if (t > skip) {
                    compared++;
                    for (int j = 0; j < d->top_k; j++) reused += prev[j] == cur[k];
                }
            }
        }
        int used = 0;
        for (int e = 0; e < d->n_experts; e++) used += count[e] > 0;
        qsort(count, (size_t)d->n_experts, sizeof *count, cmp_desc_u32);
        uint64_t top = 0;
        for (int e = 0; e < 16 && e < d->n_experts; e++) top += count[e];
        distinct += used;
        reuse += compared ? (double)reused / (double)compared : 0;
        top16 += picks ? (double)top / (double)picks : 0;
        moe_layers++;
    }
    free(count);
    if (!moe_layers) return lm_errf(err, "the trace has no MoE layer picks");
    out->tokens = end - skip;
    out->distinct_experts = distinct / moe_layers;
    out->consecutive_reuse = reuse / moe_layers;
    out->top16_share = top16 / moe_layers;
    return 0;
}
