/* serve_internal.h - what the files of `serve` share: the server's state
 * (owned by serve.c's event loop), the per-connection session calls
 * (session.c), the HTTP handler (http.c) and the sealing and broadcast
 * helpers (serve.c). Not for callers outside coordinator/serve*.c,
 * session.c and http.c. Event loop thread only. */
#ifndef NAWAL_SERVE_INTERNAL_H
#define NAWAL_SERVE_INTERNAL_H

#include "envelope.h"
#include "serve_metrics.h"
#include "store.h"
#include "ticker.h"
#include "transport.h"

#include <stddef.h>
#include <stdint.h>

typedef struct nawal_session nawal_session;

typedef struct nawal_server {
    nawal_store *store;            /* the event loop's connection */
    const nawal_identity *id;      /* the coordinator's key: signs every envelope */
    nawal_ws_server *ws;
    nawal_ticker *ticker;
    nawal_serve_metrics m;
    nawal_envelope_policy policy;  /* what we accept from agents */
    nawal_session *sessions;       /* open connections */
    int n_conns, n_authed;
    uint64_t seq;                  /* sequence number of the last envelope sealed */
    int auth_timeout_ms;
    int blob_http;                 /* sessions get a blob token for GET /blobs/<cid> */
    char uploads_dir[4096];        /* D/uploads: deltas being received */
    /* the round being watched for its end, the last one announced, and the
     * largest epsilon accepted in the current round (serve.c) */
    int64_t watched_round, announced_round, epsilon_round;
    double epsilon_max;
} nawal_server;

/* ---- serve.c ---- */
/* Seals msg (of MsgType type) with the coordinator's key and the next
 * sequence number: *out malloc'ed. 0 / -1. */
int nawal_server_seal(nawal_server *srv, uint32_t type, const ProtobufCMessage *msg, uint8_t **out, size_t *len);
int nawal_server_seal_payload(nawal_server *srv, uint32_t type, const uint8_t *payload, size_t plen, uint8_t **out,
                              size_t *len);
/* The latest round is open for joins or training: fill *r and return 1; else 0. */
int nawal_server_open_round(nawal_server *srv, nawal_round *r);
/* A join or an update changed what the round machine may do: tick soon. */
void nawal_server_poke(nawal_server *srv);
/* An accepted update's epsilon, for the current round's gauge. */
void nawal_server_note_epsilon(nawal_server *srv, int64_t round_id, double epsilon);

/* ---- session.c: the transport's handlers, one session per connection ---- */
void nawal_session_on_open(nawal_ws_conn *c, void *user);
void nawal_session_on_message(nawal_ws_conn *c, const uint8_t *msg, size_t len, void *user);
void nawal_session_on_drain(nawal_ws_conn *c, void *user);
void nawal_session_on_close(nawal_ws_conn *c, const char *reason, void *user);
/* Already sealed bytes to every authenticated session. */
void nawal_session_broadcast(nawal_server *srv, const uint8_t *buf, size_t len);
/* EvaluateRequest of closed round r's new model to every authenticated
 * session not asked about r yet. */
void nawal_session_request_evaluation(nawal_server *srv, const nawal_round *r);
/* Closes sessions that did not authenticate within the timeout. */
void nawal_session_sweep(nawal_server *srv, int64_t now_ms);

/* ---- http.c ---- */
/* The transport's plain HTTP handler (user = the server): GET /metrics, GET /status. */
int nawal_http_handle(const nawal_ws_http_request *rq, nawal_ws_http_reply *reply, void *user);

/* ---- session.c, for http.c ---- */
/* 1 when token (32 bytes) is the blob token of a live authenticated session. */
int nawal_session_blob_token_ok(nawal_server *srv, const uint8_t token[32]);
/* Adds delta to the count of GET /blobs streams of token's live session; the new count, or -1
 * when no live session has the token. */
int nawal_session_blob_streams(nawal_server *srv, const uint8_t token[32], int delta);
/* 1 if cid is a global model (a round's base or result, or the initial model) or a model patch of one:
 * what any authenticated validator may download. */
int nawal_serve_is_public_model(nawal_server *srv, const uint8_t cid[32]);

#endif
