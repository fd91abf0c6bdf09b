/* transport_internal.h - what transport.c (WebSocket connections, the
 * endpoints, the one libwebsockets callback) and transport_http.c (plain
 * HTTP: the server's requests, the client's GETs) share. Not an API. */
#ifndef NAWAL_TRANSPORT_INTERNAL_H
#define NAWAL_TRANSPORT_INTERNAL_H

#include "transport.h"

#include <libwebsockets.h>

#define WS_BURST 16 /* fragments (or HTTP body blocks) written per writable callback at most */

/* TLS 1.3 suites, fastest first: AES-128-GCM runs ~35% faster than
 * OpenSSL's default first choice, AES-256-GCM, on AES-NI CPUs */
#define TLS13_CIPHERS "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

_Static_assert(LWS_PRE >= 14, "a client frame header must fit in the LWS_PRE headroom");

/* what a wsi's opaque user data points to starts with one of these */
enum { WS_KIND_CONN = 0x6e77636e, WS_KIND_FETCH = 0x6e776674 };

typedef struct ws_msg {
    struct ws_msg *next;
    size_t len, off;             /* payload length, bytes already written */
    unsigned char buf[];         /* LWS_PRE headroom, then the payload */
} ws_msg;

typedef struct ws_ep {
    struct lws_context *ctx;
    nawal_ws_config cfg;
    nawal_ws_handlers h;
    int is_server;
    int nconn;                   /* open WebSocket connections */
    int nstreams;                /* server: HTTP file bodies being sent (count against max_connections too) */
    int destroying;
    int port;
    nawal_ws_http_fn http_fn;    /* server: plain HTTP requests (NULL: refused) */
    void *http_user;
    unsigned char *io_buf;       /* server: LWS_PRE + io_chunk for HTTP file bodies (lazily) */
    uint32_t retry_ms[1];
    lws_retry_bo_t retry;        /* keepalive policy (only its idle part is used) */
    lws_sorted_usec_list_t tick; /* bounds the wait of one service() call */
    struct lws_protocols protocols[2];
} ws_ep;

struct nawal_ws_server { ws_ep ep; };
struct nawal_ws_client { ws_ep ep; };

struct nawal_ws_conn {
    unsigned kind;               /* WS_KIND_CONN */
    ws_ep *ep;
    struct lws *wsi;             /* NULL once the wsi is gone */
    ws_msg *q_head, *q_tail;
    size_t q_msgs, q_bytes;
    uint8_t *rx;                 /* reassembly buffer, at most max_message */
    size_t rx_len, rx_cap;
    int open, closing, close_when_sent, close_reported;
    int in_connect, destroyed_in_connect; /* client: inside lws_client_connect_via_info() */
    void *data;
    char reason[160];
    char peer[64];
};

/* A server wsi's per-session data: the file an HTTP reply is streaming. */
typedef struct {
    struct ws_ep *ep;            /* while fd_plus1 */
    int fd_plus1;                /* the file's descriptor + 1; 0: none */
    uint64_t off, left;
    int (*on_sent)(uint64_t bytes, void *user); /* the reply's */
    void (*on_end)(void *user);
    void *stream_user;
} ws_http_stream;

/* A client connection's lws info for host:port and path on ep: HTTP/1.1,
 * TLS unless the endpoint is plaintext (self-signed accepted when
 * configured), ep's retry policy, opaque user data `user`. The caller adds
 * what differs: the WebSocket subprotocol, or an HTTP method. (transport.c) */
void ws_client_info(ws_ep *ep, struct lws_client_connect_info *ci, const char *host, int port, const char *path,
                    void *user);

/* transport_http.c, called from the one callback */
int ws_http_request(ws_ep *ep, struct lws *wsi, void *pss, const char *path);
int ws_http_writeable(ws_ep *ep, struct lws *wsi, void *pss);
void ws_http_drop(void *pss);
int ws_fetch_callback(nawal_ws_fetch *f, struct lws *wsi, enum lws_callback_reasons reason, void *in, size_t len);

#endif
