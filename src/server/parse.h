/* Helpers the request parsers share (request.c defines them; responses.c uses them
 * too): a parsing context that carries the API (for the error shape) and the
 * request being built, and field readers that fail with a 4xx srv_error naming the
 * field. Each returns -1 after filling p->e, unless said otherwise. */
#ifndef LAZYMOE_SERVER_PARSE_H
#define LAZYMOE_SERVER_PARSE_H

#include "server/request.h"

typedef struct {
    srv_api api;
    srv_error *e;
    srv_chat *c;
} srv_pctx;

int srv_p_bad_type(srv_pctx *p, const char *field, const char *want, const json_t *got);
int srv_p_oom(srv_pctx *p);
/* A parser's start: clears *c and *e, sets up *p for api, loads the body (a JSON
 * object; duplicate keys and deep nesting refused) and reads the fields every API
 * shares (model, stream, sampling, the test-only forced output). The root object
 * (release it with srv_p_finish), or NULL with e filled and c freed. */
json_t *srv_p_begin(srv_pctx *p, srv_api api, const char *body, size_t len, srv_chat *c, srv_error *e);
/* A parser's end: releases root; frees the request when rc != 0, else drops the tools
 * when tool_choice is none. Returns rc. */
int srv_p_finish(srv_pctx *p, json_t *root, int rc);
/* 1 present, 0 absent or null, -1 error. */
int srv_p_int(srv_pctx *p, const json_t *obj, const char *key, long long lo, long long hi, long long *out);
/* 1 true, 0 false or absent, -1 error. */
int srv_p_bool(srv_pctx *p, const json_t *obj, const char *key);
/* *out borrowed from obj, NULL when absent or null. */
int srv_p_string(srv_pctx *p, const json_t *obj, const char *key, const char *field, const char **out);
/* Steals value. */
int srv_p_set_kwarg(srv_pctx *p, const char *key, json_t *value);
/* Tool-call arguments (an object, or a JSON string holding one) as a new object, or NULL. */
json_t *srv_p_arguments_object(srv_pctx *p, const json_t *args, const char *field);
/* Appends msg (stolen; NULL counts as out of memory) to p->c->messages. */
int srv_p_append_msg(srv_pctx *p, json_t *msg);

#endif
