/* The prompt cache: sessions of recent conversations, kept so that the next
 * request of a conversation only evaluates its new tokens.
 *
 * A request takes the session sharing the longest prefix with its prompt when that
 * prefix is the whole prompt or at least half of what the session holds (the same
 * conversation, or one that only changed its last turn); otherwise a fresh session,
 * or, when every slot is taken, a victim's. The KV caches of all sessions together stay
 * within `budget_tokens` positions (the memory plan reserves that many): before a
 * request runs, room is made for the taken one to grow to prompt + max_tokens. A
 * session keeps the KV memory it grew to (so a conversation's next turn extends it
 * without copying); only when the budget would be exceeded are the others cut to
 * what they hold (lazymoe_session_fit), then the taken one if it holds more than the
 * request needs, and only then are victims freed.
 *
 * Victims: a conversation in use (served more than once, and recently) is kept over
 * one-off requests and abandoned conversations; among equals the least recently
 * used goes first. So an agent's short side request (a title, a summary) never
 * evicts the long conversation it belongs to while that one fits beside it.
 *
 * Several requests run at once (--parallel): a running request's session is busy
 * and counts for what it may grow to (its prompt + max_tokens, at most the context),
 * so the budget holds whatever they generate; a request that does not fit beside the
 * running ones waits (srv_cache_take says so) until one of them finishes.
 *
 * No locking inside: the workers call it holding the engine's lock (the batch's);
 * /health sees a copy of srv_cache_usage a worker publishes after each request.
 */
#ifndef LAZYMOE_SERVER_CACHE_H
#define LAZYMOE_SERVER_CACHE_H

#include "lazymoe.h"

#include <stdint.h>

typedef struct {
    lazymoe_session *s; /* NULL: free slot */
    uint64_t last_used;
    int uses;           /* requests it served since it was made */
    int busy;
    int reserved;       /* busy: KV positions it may grow to (its session's growth limit) */
    int need;           /* busy: KV positions its request needs (prompt + max_tokens) */
    int fitted;         /* its KV memory was cut to what it holds since it last grew */
} srv_slot;

typedef struct {
    lazymoe_model *m;
    srv_slot *slots;
    int n_slots;
    int budget_tokens;
    int max_context;
    uint64_t clock;
} srv_prompt_cache;

int srv_cache_init(srv_prompt_cache *c, lazymoe_model *m, int n_slots, int budget_tokens, char *err, size_t errlen);
void srv_cache_free(srv_prompt_cache *c);
/* A session for prompt ids[n] that will generate up to max_new tokens; *reused =
 * prompt tokens it already holds (what generation will not evaluate again). NULL
 * with *wait = 1 when it does not fit beside the running requests (retry after one
 * finished), or with *wait = 0 and err when no session can be made. Give it back
 * with srv_cache_put. */
lazymoe_session *srv_cache_take(srv_prompt_cache *c, const int32_t *ids, int n, int max_new, int *reused, int *wait,
                                char *err, size_t errlen);
void srv_cache_put(srv_prompt_cache *c, lazymoe_session *s);
/* Sessions kept and the tokens they hold. */
void srv_cache_usage(const srv_prompt_cache *c, int *sessions, int *tokens);

#endif
