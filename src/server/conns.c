/* Connection deadlines and shedding (conns.h). */
#include "server/conns.h"

#include "server/internal.h"

#include <microhttpd.h>

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

void srv_conns_init(srv_conns *t, int max_total, int max_per_addr, double header_s, double body_s) {
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->mu, NULL);
    t->max_total = max_total;
    t->max_per_addr = max_per_addr;
    t->header_s = header_s;
    t->body_s = body_s;
}

void srv_conns_free(srv_conns *t) {
    for (int i = 0; i < t->n; i++)
        if (t->slots[i].fd >= 0) close(t->slots[i].fd);
    free(t->slots);
    pthread_mutex_destroy(&t->mu);
    memset(t, 0, sizeof *t);
}

static int find(const srv_conns *t, const struct MHD_Connection *mc) {
    for (int i = 0; i < t->n; i++)
        if (t->slots[i].mc == mc) return i;
    return -1;
}

static void shed(srv_conns *t, srv_conn_slot *c) {
    if (c->shed) return;
    c->shed = 1;
    t->shed_count++;
    if (c->fd >= 0) shutdown(c->fd, SHUT_RDWR);
}

static int same_addr(const srv_conn_slot *a, const srv_conn_slot *b) {
    return a->addr_len == b->addr_len && memcmp(a->addr, b->addr, (size_t)a->addr_len) == 0;
}

/* Bytes the client has sent that the connection's thread has not read yet: a new
 * connection whose request is already waiting is not idle, only not yet served. */
static int pending_bytes(const srv_conn_slot *c) {
    int n = 0;
    return c->fd >= 0 && ioctl(c->fd, FIONREAD, &n) == 0 ? n : 0;
}

/* The oldest connection (of those from `addr`'s address when addr is given) that may
 * be shed: idle ones waiting for headers first (never answered, then kept alive
 * between requests), then those whose request is waiting unread, then those reading
 * a body; NULL when all are being answered. */
static srv_conn_slot *victim(srv_conns *t, const srv_conn_slot *addr) {
    static const struct { int stage, answered, pending; } order[] = {
        {CONN_HEADERS, 0, 0}, {CONN_HEADERS, 1, 0}, {CONN_HEADERS, -1, 1}, {CONN_BODY, -1, -1}};
    for (size_t k = 0; k < sizeof order / sizeof order[0]; k++) {
        srv_conn_slot *best = NULL;
        for (int i = 0; i < t->n; i++) {
            srv_conn_slot *c = &t->slots[i];
            if (c->shed || c->stage != order[k].stage || (addr && !same_addr(c, addr))) continue;
            if (order[k].answered >= 0 && (c->answered != 0) != order[k].answered) continue;
            if (order[k].pending >= 0 && (pending_bytes(c) > 0) != order[k].pending) continue;
            if (!best || c->since < best->since) best = c;
        }
        if (best) return best;
    }
    return NULL;
}

void srv_conns_opened(srv_conns *t, struct MHD_Connection *mc) {
    srv_conn_slot c = {.mc = mc, .fd = -1, .stage = CONN_HEADERS, .since = lm_now()};
    const union MHD_ConnectionInfo *fi = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (fi) c.fd = dup(fi->connect_fd);
    const union MHD_ConnectionInfo *ai = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ai ? ai->client_addr : NULL;
    if (sa && sa->sa_family == AF_INET) {
        memcpy(c.addr, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
        c.addr_len = 4;
    } else if (sa && sa->sa_family == AF_INET6) {
        memcpy(c.addr, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
        c.addr_len = 16;
    }
    pthread_mutex_lock(&t->mu);
    if (t->n == t->cap) {
        int cap = t->cap ? t->cap * 2 : 64;
        srv_conn_slot *ns = realloc(t->slots, sizeof *ns * (size_t)cap);
        if (!ns) {
            /* cannot track it: refuse it rather than let it escape the limits */
            pthread_mutex_unlock(&t->mu);
            if (c.fd >= 0) {
                shutdown(c.fd, SHUT_RDWR);
                close(c.fd);
            }
            return;
        }
        t->slots = ns;
        t->cap = cap;
    }
    t->slots[t->n++] = c;
    srv_conn_slot *added = &t->slots[t->n - 1];
    int from_addr = 0, live = 0;
    for (int i = 0; i < t->n; i++) {
        if (t->slots[i].shed) continue;
        live++;
        if (same_addr(&t->slots[i], added)) from_addr++;
    }
    if (from_addr > t->max_per_addr) {
        srv_conn_slot *v = victim(t, added);
        shed(t, v ? v : added);
        live--;
    }
    if (live > t->max_total) {
        srv_conn_slot *v = victim(t, NULL);
        shed(t, v ? v : added);
    }
    pthread_mutex_unlock(&t->mu);
}

void srv_conns_closed(srv_conns *t, struct MHD_Connection *mc) {
    pthread_mutex_lock(&t->mu);
    int i = find(t, mc);
    if (i >= 0) {
        if (t->slots[i].fd >= 0) close(t->slots[i].fd);
        t->slots[i] = t->slots[--t->n];
    }
    pthread_mutex_unlock(&t->mu);
}

void srv_conns_stage(srv_conns *t, struct MHD_Connection *mc, int stage) {
    pthread_mutex_lock(&t->mu);
    int i = find(t, mc);
    if (i >= 0 && t->slots[i].stage != stage) {
        if (stage == CONN_HEADERS) t->slots[i].answered = 1; /* after a response: kept alive */
        t->slots[i].stage = stage;
        t->slots[i].since = lm_now();
    }
    pthread_mutex_unlock(&t->mu);
}

void srv_conns_sweep(srv_conns *t) {
    double now = lm_now();
    pthread_mutex_lock(&t->mu);
    for (int i = 0; i < t->n; i++) {
        srv_conn_slot *c = &t->slots[i];
        /* unread bytes waiting: the server, not the client, is late */
        if ((c->stage == CONN_HEADERS && now - c->since > t->header_s && pending_bytes(c) == 0) ||
            (c->stage == CONN_BODY && now - c->since > t->body_s))
            shed(t, c);
    }
    pthread_mutex_unlock(&t->mu);
}
