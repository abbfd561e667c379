/* The server's open connections and the policy that keeps it reachable when clients
 * hold connections without using them (issue 22): libmicrohttpd runs one thread per
 * connection up to a fixed limit, and before this table 64 connections that sent
 * nothing locked everyone out, /health included, until the 600 s idle timeout.
 *
 * Every connection is in one of four stages: waiting for a request's headers (new,
 * or kept alive between requests), reading a body, being answered, or closed. Two
 * rules, applied under one lock:
 *  - deadlines: headers must be complete within header_s of the connection opening or
 *    of its previous response (unless what the client sent is waiting unread: then the
 *    busy server is late, not the client), a body within body_s of its headers;
 *  - shedding: when a new connection brings the total above max_total, or its client
 *    address above max_per_addr, the oldest idle connection waiting for headers that
 *    has never been answered is closed to make room, then the oldest kept alive
 *    between requests (a client's pool, which would see its next request cut), then
 *    one whose request has arrived but is not read yet (a busy server is slow to read
 *    it: it is not idle), then the oldest reading a body; connections being answered
 *    are never shed, and when none can be, the new connection is refused.
 * A connection is closed by shutdown() on a duplicate of its socket, which wakes the
 * connection's thread (it sees end of file and closes); the duplicate keeps the socket
 * from being reused for another connection until the table forgets it.
 */
#ifndef LAZYMOE_SERVER_CONNS_H
#define LAZYMOE_SERVER_CONNS_H

#include <pthread.h>

struct MHD_Connection;

enum { CONN_HEADERS = 0, CONN_BODY, CONN_ANSWERING };

typedef struct {
    struct MHD_Connection *mc;
    int fd;                  /* our duplicate of its socket */
    int stage;               /* CONN_* */
    double since;            /* when the stage began (lm_now) */
    unsigned char addr[16];  /* client address without the port */
    int addr_len;
    int shed;                /* shutdown already sent */
    int answered;            /* a response was completed on it: kept alive, not unused */
} srv_conn_slot;

typedef struct {
    pthread_mutex_t mu;
    srv_conn_slot *slots;
    int n, cap;
    int max_total, max_per_addr;
    double header_s, body_s;
    unsigned long long shed_count;
} srv_conns;

void srv_conns_init(srv_conns *t, int max_total, int max_per_addr, double header_s, double body_s);
void srv_conns_free(srv_conns *t);
/* A connection was accepted: registers it, then sheds if a limit is passed. */
void srv_conns_opened(srv_conns *t, struct MHD_Connection *mc);
void srv_conns_closed(srv_conns *t, struct MHD_Connection *mc);
/* The connection entered a stage: CONN_BODY once a request's headers are in,
 * CONN_ANSWERING once its body is, CONN_HEADERS again after its response. */
void srv_conns_stage(srv_conns *t, struct MHD_Connection *mc, int stage);
/* Closes connections past their deadline; the server's main loop calls it. */
void srv_conns_sweep(srv_conns *t);

#endif
