/* Shared between the server's files: the server state, generation jobs and the
 * per-connection request state. See server.h for the threading model. */
#ifndef LAZYMOE_SERVER_INTERNAL_H
#define LAZYMOE_SERVER_INTERNAL_H

#include "platform/platform.h" /* lm_now: the monotonic clock */
#include "server/buf.h"
#include "server/cache.h"
#include "server/conns.h"
#include "server/disk_cache.h"
#include "server/reply.h"
#include "server/request.h"
#include "server/server.h"

#include <pthread.h>
#include <signal.h>

typedef enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE } srv_job_state;

/* One generation request. Two owners hold a reference each: the connection
 * thread (until its response is finished or the client is gone) and the queue /
 * worker (until the job is done); the last release frees it. Everything below
 * `mu` is guarded by it. */
typedef struct srv_job {
    struct srv_server *srv;
    srv_chat chat;        /* the parsed request (owned) */
    char *prompt;         /* rendered chat template (owned) */
    size_t prompt_len;    /* its length (it may hold NUL bytes from the messages) */
    int32_t *ids;         /* its tokens (owned) */
    int n_ids;
    int max_tokens;       /* after the server's cap */
    int context_bound;    /* max_tokens is the room the context has left, and the client
                           * allowed more (or set no limit): a stop there is the context
                           * window's, not the client's max_tokens */
    int in_think;         /* the prompt ends inside an opened <think> */
    lazymoe_grammar *grammar; /* the output's constraint, or NULL (owned) */
    char endpoint[32];    /* for the log line */
    double t_arrive;      /* lm clock, seconds */
    double first_token_s; /* from arrival to the first generated token (queue, prompt-cache
                           * restore, prefill); 0 = none was generated */
    struct srv_job *next; /* queue link */

    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    srv_job_state state;
    srv_buf out;          /* bytes ready for the client: SSE, or the whole body when done */
    int status;           /* HTTP status of a non-streamed reply */
    int cancel_reason;    /* why cancel was set (log) */
    srv_reply reply;
    lazymoe_gen_stats stats;
    volatile sig_atomic_t cancel; /* set by the connection thread: stop generating */
} srv_job;

enum { CANCEL_NONE = 0, CANCEL_DISCONNECT, CANCEL_SHUTDOWN };

typedef struct srv_server {
    lazymoe_model *m;
    srv_options opt;
    int max_context;
    int model_max_context; /* what the model declares (for the start line) */
    int input_limit;      /* prompts longer than this are refused */
    struct MHD_Daemon *daemon;

    pthread_mutex_t qmu;  /* guards the queue, the cache counters, running, open_requests */
    pthread_cond_t qcv;
    int open_requests;    /* begun and not yet completed (http.c: the shutdown drain) */
    pthread_cond_t drained; /* signalled when open_requests drops to 0 */
    srv_job *head, *tail;
    int queued;
    srv_job **running;    /* [opt.parallel] jobs the workers hold (NULL: none) */
    int n_running;
    int waiting_room;     /* workers waiting for KV room: the others take no new job meanwhile */
    pthread_cond_t room_cv; /* signalled when a job finishes (its KV reservation is free) */
    int stopping;
    pthread_t *workers;   /* [opt.parallel] */
    int n_workers;
    /* Decodes the running requests together (NULL with --parallel 1); its lock
     * serializes every use of the model by the workers (lazymoe_batch_lock). */
    lazymoe_batch *batch;
    srv_prompt_cache cache; /* the workers', under the engine lock */
    srv_disk_cache disk;    /* the workers', under the engine lock */
    int cache_sessions, cache_tokens; /* its size as of the last request, for /health */
    unsigned long long served;
    double started_at;
    srv_conns conns;      /* open connections: deadlines and shedding (conns.h) */
    /* Requests being parsed, rendered and tokenized in connection threads: at most
     * SRV_MAX_PREPARING at once (under qmu), so concurrent huge requests cost the
     * memory and CPU of a few, whatever the number of connections. */
    int preparing;
    pthread_cond_t prepare_cv;
} srv_server;

#define SRV_MAX_PREPARING 2

/* job.c */
srv_job *srv_job_new(srv_server *s);
void srv_job_release(srv_job *j);
/* Adds the job to the queue (the queue takes a reference); -1 when the server is
 * shutting down. */
int srv_job_enqueue(srv_server *s, srv_job *j);
/* Starts opt.parallel workers (each runs one job at a time; their decode steps meet
 * in s->batch). */
int srv_worker_start(srv_server *s, char *err, size_t errlen);
/* Cancels everything, drains the queue and joins the workers. */
void srv_worker_stop(srv_server *s);

/* log.c */
void srv_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
