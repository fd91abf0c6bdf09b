/* transport.h - the WebSocket transport between nawal-agent and
 * nawal-coordinator: a thin server and client layer over libwebsockets,
 * plus plain HTTP on the same endpoints for bulk downloads (a server
 * streams a file range as a GET's body; a client's GET hands the body over
 * in blocks: transport_http.c).
 *
 * Each endpoint (server or client) owns one libwebsockets context and one
 * event loop, driven by the caller with nawal_ws_{server,client}_service().
 * Every message is one binary WebSocket message; fragments are reassembled
 * and a message larger than `max_message` gets its connection dropped as
 * soon as its size is known, before more than `max_message` bytes are
 * buffered. Text messages, protocol errors and garbage also drop the
 * connection; other connections keep working.
 *
 * TLS is the default: a server needs a certificate and key (PEM files), a
 * client verifies the server against `ca_file` (or the system store) and the
 * host name it connects to. `allow_self_signed` (tests) accepts a
 * self-signed server certificate; `insecure_plaintext` turns TLS off and is
 * for loopback tests only.
 *
 * Sending is queued per connection (bounded by messages and bytes); a full
 * queue refuses with errno EAGAIN and `on_drain` fires when queued messages
 * have gone out, so producers continue from there (back-pressure). Large
 * messages go out as WebSocket fragments of `io_chunk` bytes, written only
 * when the socket is writable. Keepalive: a PING after `ping_secs` without a
 * PONG, the connection dropped when none came within `dead_secs`.
 *
 * Threading: an endpoint and its connections belong to the thread that
 * services it; call every function here from that thread (inside the
 * handlers or between service calls), except nawal_ws_*_wake(), which any
 * thread may call. Handlers run inside service() (and inside *_free(), which
 * closes what is still open). */
#ifndef NAWAL_TRANSPORT_H
#define NAWAL_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

/* WebSocket sub-protocol name both ends speak */
#define NAWAL_WS_SUBPROTOCOL "nawal.v1"

typedef struct nawal_ws_conn nawal_ws_conn;
typedef struct nawal_ws_server nawal_ws_server;
typedef struct nawal_ws_client nawal_ws_client;

typedef struct nawal_ws_config {
    /* TLS */
    const char *cert_file;   /* server: certificate chain (PEM) */
    const char *key_file;    /* server: private key (PEM) */
    const char *ca_file;     /* client: the only CAs (PEM) trusted to verify the server; NULL = system store */
    int allow_self_signed;   /* client, tests only: accept a self-signed server certificate */
    int insecure_plaintext;  /* no TLS at all (loopback tests only); both ends must agree */
    /* listening (server) */
    const char *bind_addr;   /* interface name or address to bind; NULL = all */
    int port;                /* 0 = an ephemeral port, see nawal_ws_server_port() */
    int max_connections;     /* server: connections beyond this many WebSocket connections + HTTP file
                                bodies being sent are refused (default 64) */
    /* limits */
    size_t max_message;      /* largest message received or sent, bytes (default 4 MiB) */
    size_t queue_msgs;       /* per-connection send queue, messages (default 64) */
    size_t queue_bytes;      /* per-connection send queue, bytes (default 64 MiB) */
    size_t io_chunk;         /* read size and outgoing fragment size, bytes (default 256 KiB) */
    /* keepalive */
    int ping_secs;           /* send a PING after this long without a PONG (default 20) */
    int dead_secs;           /* drop the peer after this long without a PONG (default 60; > ping_secs) */
} nawal_ws_config;

/* Event handlers; any may be NULL. `user` is passed back to each. */
typedef struct nawal_ws_handlers {
    /* the connection is established (client: after the handshake; server: a peer was accepted) */
    void (*on_open)(nawal_ws_conn *c, void *user);
    /* one complete message; `msg` is valid only during the call */
    void (*on_message)(nawal_ws_conn *c, const uint8_t *msg, size_t len, void *user);
    /* queued messages were written out and the queue has room again */
    void (*on_drain)(nawal_ws_conn *c, void *user);
    /* the connection is gone (or, client, never came up); `c` is freed after
     * this returns. Called exactly once per connection that was opened (server)
     * or returned by nawal_ws_client_connect() (client). */
    void (*on_close)(nawal_ws_conn *c, const char *reason, void *user);
    void *user;
} nawal_ws_handlers;

/* Plain HTTP on the server's port, next to the WebSocket upgrades (e.g. an
 * operator's GET /metrics, an agent's GET of a model blob). The handler
 * gets the request, fills *reply and returns 0 to send it, or -1 to drop
 * the connection. The reply is either a body (malloc'ed by the handler,
 * freed by the transport; NULL when body_len is 0) or a range of an open
 * file (file_fd >= 0, owned and closed by the transport, also on error):
 * file_len bytes from file_off, read and written io_chunk at a time as the
 * socket takes them, so a file of any size costs no memory; status 206
 * adds Content-Range "bytes file_off-(file_off+file_len-1)/file_total",
 * status 416 (with or without a file) "bytes *\/file_total", file_total
 * then being the size of the resource the range missed. A HEAD reply
 * sends the headers only. Without a handler (the default) every
 * plain HTTP request drops its connection. */
typedef struct nawal_ws_http_request {
    const char *method;        /* "GET", "HEAD", "POST" or "OTHER" */
    const char *path;          /* without the query string */
    const char *authorization; /* the Authorization header, "" when absent */
    const char *range;         /* the Range header, "" when absent */
} nawal_ws_http_request;
typedef struct nawal_ws_http_reply {
    int status;               /* 200, 206, 404, ... */
    const char *content_type; /* a static string */
    char *body;
    size_t body_len;
    int file_fd;              /* -1 (as the transport passes it): no file */
    uint64_t file_off, file_len, file_total; /* file_total: also a 416's resource size */
    /* optional, for a file: on_sent after each block written (nonzero: stop, the peer gets a short
     * body), on_end once when the stream is over (whole, stopped or dropped; also when no block
     * was ever written), both with stream_user */
    int (*on_sent)(uint64_t bytes, void *user);
    void (*on_end)(void *user);
    void *stream_user;
} nawal_ws_http_reply;
typedef int (*nawal_ws_http_fn)(const nawal_ws_http_request *rq, nawal_ws_http_reply *reply, void *user);

/* Server. nawal_ws_server_new() listens at once; *_service() runs one pass of
 * the event loop, waiting up to timeout_ms (0 = do not wait) for events.
 * Returns NULL / -1 with a message in err on failure. */
nawal_ws_server *nawal_ws_server_new(const nawal_ws_config *cfg, const nawal_ws_handlers *h,
                                     char *err, size_t errlen);
int nawal_ws_server_port(const nawal_ws_server *s);
int nawal_ws_server_service(nawal_ws_server *s, int timeout_ms);
int nawal_ws_server_connections(const nawal_ws_server *s);
void nawal_ws_server_wake(nawal_ws_server *s);  /* any thread: make a waiting service() return */
void nawal_ws_server_free(nawal_ws_server *s);  /* closes every connection (on_close fires) */
/* Installs (fn) or removes (NULL) the plain HTTP handler; call it from the servicing thread. */
void nawal_ws_server_set_http(nawal_ws_server *s, nawal_ws_http_fn fn, void *user);

/* Client endpoint: one event loop for any number of outgoing connections. */
nawal_ws_client *nawal_ws_client_new(const nawal_ws_config *cfg, const nawal_ws_handlers *h,
                                     char *err, size_t errlen);
/* Starts connecting to host:port (path "/" when NULL); `host` is also the
 * name the server certificate must match. The connection completes inside
 * service(): on_open, or on_close with the reason it failed. */
nawal_ws_conn *nawal_ws_client_connect(nawal_ws_client *cl, const char *host, int port, const char *path,
                                       char *err, size_t errlen);
/* Plain HTTP GET of host:port/path on the client's event loop (TLS as the
 * client's WebSocket connections), for bulk downloads: libwebsockets 4.1's
 * client parses WebSocket frames one byte at a time (~90 MB/s), its HTTP
 * client hands a body over in blocks. auth (may be NULL) is sent as the
 * Authorization header; offset > 0 asks for "Range: bytes=offset-". The
 * handlers run inside service(): on_head once the response head is in
 * (status; for 200 and 206 the offset of the body's first byte, 0 or the
 * one asked for, and the resource's whole length), on_data for each block
 * of the body (either returning -1 aborts), then on_done exactly once, ok
 * = 1 only when a 200 or 206 body came whole; the fetch is freed after
 * on_done. NULL with err when the request cannot even start. */
typedef struct nawal_ws_fetch nawal_ws_fetch;
typedef struct nawal_ws_fetch_handlers {
    int (*on_head)(nawal_ws_fetch *f, int status, uint64_t offset, uint64_t total, void *user);
    int (*on_data)(nawal_ws_fetch *f, const uint8_t *data, size_t len, void *user);
    void (*on_done)(nawal_ws_fetch *f, int ok, const char *reason, void *user);
    void *user;
} nawal_ws_fetch_handlers;
nawal_ws_fetch *nawal_ws_client_fetch(nawal_ws_client *cl, const char *host, int port, const char *path,
                                      const char *auth, uint64_t offset, const nawal_ws_fetch_handlers *h,
                                      char *err, size_t errlen);
/* Stops a fetch: no handler runs after this but on_done (ok = 0, reason),
 * inside a later service(). */
void nawal_ws_fetch_cancel(nawal_ws_fetch *f, const char *reason);

int nawal_ws_client_service(nawal_ws_client *cl, int timeout_ms);
void nawal_ws_client_wake(nawal_ws_client *cl);
void nawal_ws_client_free(nawal_ws_client *cl);

/* Connections. nawal_ws_send() copies the message into the send queue:
 * 0 = queued; -1 with errno EAGAIN (queue full: retry after on_drain),
 * EMSGSIZE (longer than max_message) or ENOTCONN (closing or closed). */
int nawal_ws_send(nawal_ws_conn *c, const void *msg, size_t len);
size_t nawal_ws_queued(const nawal_ws_conn *c);        /* messages queued, not yet fully written */
int nawal_ws_is_open(const nawal_ws_conn *c);
/* Closes now (what is queued is dropped); on_close follows inside service(). */
void nawal_ws_close(nawal_ws_conn *c, const char *reason);
/* Closes once everything queued has been written; later sends are refused. */
void nawal_ws_close_when_sent(nawal_ws_conn *c, const char *reason);
/* Stop (pause = 1) or resume (0) reading from this peer; TCP pushes back. */
void nawal_ws_pause_rx(nawal_ws_conn *c, int pause);
void nawal_ws_set_data(nawal_ws_conn *c, void *data);  /* per-connection user pointer */
void *nawal_ws_get_data(const nawal_ws_conn *c);
const char *nawal_ws_peer(const nawal_ws_conn *c);     /* peer address, for logs */

#endif
