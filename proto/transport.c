/* transport.c - WebSocket server and client over libwebsockets (see
 * transport.h for the contract).
 *
 * One lws context per endpoint, with our single protocol as protocols[0], so
 * every callback for every wsi of the endpoint (including WSI_DESTROY and the
 * accept filters) lands in ws_callback(). A connection (nawal_ws_conn) is
 * bound to its wsi with lws's opaque user data: created at ESTABLISHED on the
 * server and before the connect call on the client, freed at WSI_DESTROY,
 * the one callback every wsi gets exactly once.
 *
 * Receive: lws hands payload over in pieces of at most io_chunk bytes; the
 * first piece of a message must be binary, and the size announced so far
 * (bytes buffered + this piece + the rest of the current frame, which the
 * frame header declared) must stay within max_message, else the connection
 * is dropped before anything more is buffered.
 *
 * Send: a FIFO of heap messages, each with LWS_PRE bytes of headroom; the
 * writable callback writes fragments of io_chunk bytes (lws_write limits one
 * socket write to tx_packet_size = io_chunk, so no fragment is buffered
 * inside lws unless the kernel takes less), several per callback while the
 * socket is not choked. Writing a fragment's header into the LWS_PRE bytes
 * before it overwrites payload that has already gone out, which is allowed.
 * Client frames are built and masked here (client_write_frame), server
 * frames by lws_write.
 *
 * Plain HTTP (transport_http.c): requests on a server's port go to the
 * handler installed with nawal_ws_server_set_http; a client's GETs
 * (nawal_ws_client_fetch) are wsis of the same context, told apart from
 * WebSocket connections by the kind their opaque user data starts with. */
#include "transport.h"
#include "transport_internal.h"

#include "error.h"

#include <errno.h>
#include <libwebsockets.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static pthread_once_t log_once = PTHREAD_ONCE_INIT;

static void set_log_level(void) {
    const char *env = getenv("NAWAL_LWS_LOG");
    lws_set_log_level(env ? atoi(env) : LLL_ERR, NULL);
}

/* ---- connections -------------------------------------------------------- */

static void conn_free_queue(nawal_ws_conn *c) {
    for (ws_msg *m = c->q_head, *n; m; m = n) {
        n = m->next;
        free(m);
    }
    c->q_head = c->q_tail = NULL;
    c->q_msgs = c->q_bytes = 0;
}

static int queue_has_room(const nawal_ws_conn *c) {
    return c->q_msgs < c->ep->cfg.queue_msgs && c->q_bytes < c->ep->cfg.queue_bytes;
}

/* report the end of the connection to the user, once */
static void conn_report_close(nawal_ws_conn *c, const char *why) {
    if (c->close_reported) return;
    c->close_reported = 1;
    if (why && !c->reason[0]) snprintf(c->reason, sizeof c->reason, "%s", why);
    if (!c->reason[0]) snprintf(c->reason, sizeof c->reason, "connection closed");
    if (c->open) {
        c->open = 0;
        c->ep->nconn--;
    }
    c->closing = 1;
    conn_free_queue(c);
    if (c->in_connect) return; /* nawal_ws_client_connect() reports it as its error */
    if (c->ep->h.on_close) c->ep->h.on_close(c, c->reason, c->ep->h.user);
}

static void conn_destroy(nawal_ws_conn *c) {
    conn_report_close(c, NULL);
    c->wsi = NULL;
    if (c->in_connect) {
        c->destroyed_in_connect = 1;
        return;
    }
    free(c->rx);
    free(c);
}

/* drop the connection from inside its callback: the caller returns -1 */
static int conn_fail(nawal_ws_conn *c, enum lws_close_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int conn_fail(nawal_ws_conn *c, enum lws_close_status status, const char *fmt, ...) {
    if (!c->reason[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->reason, sizeof c->reason, fmt, ap);
        va_end(ap);
    }
    size_t n = strlen(c->reason);
    lws_close_reason(c->wsi, status, (unsigned char *)c->reason, n > 120 ? 120 : n);
    c->closing = 1;
    return -1;
}

static int conn_rx(nawal_ws_conn *c, const uint8_t *in, size_t len) {
    size_t max = c->ep->cfg.max_message;
    if (c->closing) return -1;
    if (lws_is_first_fragment(c->wsi)) {
        if (!lws_frame_is_binary(c->wsi))
            return conn_fail(c, LWS_CLOSE_STATUS_UNACCEPTABLE_OPCODE, "text message (only binary messages are accepted)");
        c->rx_len = 0;
    }
    /* bytes the current frame's header announced beyond this piece */
    size_t more = lws_remaining_packet_payload(c->wsi);
    if (len > max - c->rx_len || more > max - c->rx_len - len)
        return conn_fail(c, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, "message larger than %zu bytes", max);
    int final = lws_is_final_fragment(c->wsi);
    if (final && c->rx_len == 0) { /* whole message in one piece: no copy */
        if (c->ep->h.on_message) c->ep->h.on_message(c, in, len, c->ep->h.user);
        return c->closing ? -1 : 0;
    }
    size_t need = c->rx_len + len + more;
    if (need > c->rx_cap) {
        size_t cap = c->rx_cap ? c->rx_cap : 64 * 1024;
        while (cap < need) cap = cap > max / 2 ? max : cap * 2;
        uint8_t *p = realloc(c->rx, cap);
        if (!p) return conn_fail(c, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
        c->rx = p;
        c->rx_cap = cap;
    }
    if (len) memcpy(c->rx + c->rx_len, in, len);
    c->rx_len += len;
    if (final) {
        size_t n = c->rx_len;
        c->rx_len = 0;
        if (c->ep->h.on_message) c->ep->h.on_message(c, c->rx, n, c->ep->h.user);
    }
    return c->closing ? -1 : 0;
}

/* A client frame written whole as raw bytes: header (FIN/opcode, length,
 * mask key) in the headroom before the fragment, payload masked in place a
 * word at a time. lws 4.1 masks client frames one byte per iteration, which
 * alone capped uploads near 250 MB/s; everything else (handshake, TLS,
 * partial writes, control frames between our frames, parsing) stays with
 * lws. Server frames are unmasked and go through lws_write's framing. */
static int client_write_frame(nawal_ws_conn *c, unsigned char *p, size_t n, int first, int fin) {
    unsigned char hdr[14];
    size_t hl = 0;
    hdr[hl++] = (unsigned char)((fin ? 0x80 : 0) | (first ? 0x2 : 0x0)); /* binary / continuation */
    if (n < 126) hdr[hl++] = (unsigned char)(0x80 | n);
    else if (n < 65536) {
        hdr[hl++] = 0x80 | 126;
        hdr[hl++] = (unsigned char)(n >> 8);
        hdr[hl++] = (unsigned char)n;
    } else {
        hdr[hl++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) hdr[hl++] = (unsigned char)((uint64_t)n >> (8 * i));
    }
    unsigned char key[4];
    if (lws_get_random(c->ep->ctx, key, sizeof key) != sizeof key) return -1;
    memcpy(hdr + hl, key, 4);
    hl += 4;
    uint64_t k64;
    memcpy(&k64, key, 4);
    memcpy((unsigned char *)&k64 + 4, key, 4);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        w ^= k64;
        memcpy(p + i, &w, 8);
    }
    for (; i < n; i++) p[i] ^= key[i & 3];
    memcpy(p - hl, hdr, hl); /* headroom: LWS_PRE >= 14, earlier bytes are already sent */
    return lws_write(c->wsi, p - hl, hl + n, LWS_WRITE_RAW) < 0 ? -1 : 0;
}

static int conn_tx(nawal_ws_conn *c) {
    ws_ep *ep = c->ep;
    if (c->closing) return conn_fail(c, LWS_CLOSE_STATUS_NORMAL, "closed");
    int sent = 0;
    for (int burst = 0; c->q_head && burst < WS_BURST; burst++) {
        ws_msg *m = c->q_head;
        size_t rem = m->len - m->off, n = rem < ep->cfg.io_chunk ? rem : ep->cfg.io_chunk;
        unsigned char *p = m->buf + LWS_PRE + m->off;
        int rc;
        if (ep->is_server) {
            int flags = lws_write_ws_flags(LWS_WRITE_BINARY, m->off == 0, n == rem);
            rc = lws_write(c->wsi, p, n, (enum lws_write_protocol)flags) < 0 ? -1 : 0;
        } else {
            rc = client_write_frame(c, p, n, m->off == 0, n == rem);
        }
        if (rc) return conn_fail(c, LWS_CLOSE_STATUS_ABNORMAL_CLOSE, "write failed");
        m->off += n;
        if (m->off == m->len) {
            c->q_head = m->next;
            if (!c->q_head) c->q_tail = NULL;
            c->q_msgs--;
            c->q_bytes -= m->len;
            free(m);
            sent++;
        }
        if (lws_send_pipe_choked(c->wsi)) break;
    }
    if (c->q_head) lws_callback_on_writable(c->wsi);
    else if (c->close_when_sent) return conn_fail(c, LWS_CLOSE_STATUS_NORMAL, "closed");
    if (sent && ep->h.on_drain && queue_has_room(c) && !c->close_when_sent) ep->h.on_drain(c, ep->h.user);
    return c->closing ? -1 : 0;
}

static nawal_ws_conn *conn_new(ws_ep *ep) {
    nawal_ws_conn *c = calloc(1, sizeof *c);
    if (c) {
        c->kind = WS_KIND_CONN;
        c->ep = ep;
    }
    return c;
}

/* ---- the one lws callback ----------------------------------------------- */

static int ws_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
    struct lws_context *ctx = lws_get_context(wsi);
    ws_ep *ep = ctx ? lws_context_user(ctx) : NULL;
    void *od = wsi ? lws_get_opaque_user_data(wsi) : NULL;
    nawal_ws_conn *c = od && *(const unsigned *)od == WS_KIND_CONN ? od : NULL;
    nawal_ws_fetch *f = od && *(const unsigned *)od == WS_KIND_FETCH ? od : NULL;
    if (f) return ws_fetch_callback(f, wsi, reason, in, len);

    switch (reason) {
    case LWS_CALLBACK_FILTER_NETWORK_CONNECTION: /* before TLS: refuse when full (HTTP file bodies count) */
        return !ep || ep->destroying || ep->nconn + ep->nstreams >= ep->cfg.max_connections;
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: /* the upgrade request */
        return !ep || ep->destroying || ep->nconn >= ep->cfg.max_connections;
    case LWS_CALLBACK_ESTABLISHED:
        if (!ep || ep->destroying || ep->nconn >= ep->cfg.max_connections) return -1;
        c = conn_new(ep);
        if (!c) return -1;
        c->wsi = wsi;
        lws_set_opaque_user_data(wsi, c);
        lws_get_peer_simple(wsi, c->peer, sizeof c->peer);
        c->open = 1;
        ep->nconn++;
        if (ep->h.on_open) ep->h.on_open(c, ep->h.user);
        if (c->q_head) lws_callback_on_writable(wsi);
        return c->closing ? -1 : 0;
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        if (!c || c->closing) return -1;
        c->open = 1;
        ep->nconn++;
        lws_get_peer_simple(wsi, c->peer, sizeof c->peer);
        if (ep->h.on_open) ep->h.on_open(c, ep->h.user);
        if (c->q_head || c->close_when_sent) lws_callback_on_writable(wsi);
        return c->closing ? -1 : 0;
    case LWS_CALLBACK_RECEIVE:
    case LWS_CALLBACK_CLIENT_RECEIVE:
        if (!c) return -1;
        return conn_rx(c, in, len);
    case LWS_CALLBACK_SERVER_WRITEABLE:
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        if (!c) return 0;
        return conn_tx(c);
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        if (c && !c->reason[0]) {
            int code = len >= 2 ? (((const uint8_t *)in)[0] << 8) | ((const uint8_t *)in)[1] : 0;
            snprintf(c->reason, sizeof c->reason, "peer closed the connection (code %d)", code);
        }
        return 0;
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        if (c) {
            char why[128];
            snprintf(why, sizeof why, "connection failed: %.100s", in ? (const char *)in : "unknown error");
            conn_report_close(c, why);
        }
        return 0;
    case LWS_CALLBACK_CLOSED:
    case LWS_CALLBACK_CLIENT_CLOSED:
        if (c) conn_report_close(c, NULL);
        return 0;
    case LWS_CALLBACK_WSI_DESTROY:
        if (c) {
            lws_set_opaque_user_data(wsi, NULL);
            conn_destroy(c);
        }
        return 0;
    case LWS_CALLBACK_HTTP: /* plain HTTP: only through the server's handler */
        if (!ep || !ep->is_server || ep->destroying || !ep->http_fn) return -1;
        return ws_http_request(ep, wsi, user, in);
    case LWS_CALLBACK_HTTP_WRITEABLE:
        if (!ep || !ep->is_server) return -1;
        return ws_http_writeable(ep, wsi, user);
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
    case LWS_CALLBACK_CLOSED_HTTP:
        ws_http_drop(user);
        break;
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

/* ---- endpoints ---------------------------------------------------------- */

static int config_resolve(nawal_ws_config *c, int is_server, char *err, size_t errlen) {
    if (!c->max_connections) c->max_connections = 64;
    if (!c->max_message) c->max_message = 4u << 20;
    if (!c->queue_msgs) c->queue_msgs = 64;
    if (!c->queue_bytes) c->queue_bytes = 64u << 20;
    if (!c->io_chunk) c->io_chunk = 256u << 10;
    if (!c->ping_secs) c->ping_secs = 20;
    if (!c->dead_secs) c->dead_secs = 60;
    if (c->max_connections < 1 || c->max_connections > 65536)
        return nawal_fail(err, errlen, "max_connections must be in 1..65536");
    if (c->max_message > (size_t)1 << 40) return nawal_fail(err, errlen, "max_message too large");
    if (c->io_chunk < 4096 || c->io_chunk > 16u << 20)
        return nawal_fail(err, errlen, "io_chunk must be between 4 KiB and 16 MiB");
    if (c->ping_secs < 1 || c->dead_secs <= c->ping_secs || c->dead_secs > 65535)
        return nawal_fail(err, errlen, "keepalive: need 1 <= ping_secs < dead_secs <= 65535 (got %d, %d)",
                          c->ping_secs, c->dead_secs);
    if (c->port < 0 || c->port > 65535) return nawal_fail(err, errlen, "port %d out of range", c->port);
    if (is_server && !c->insecure_plaintext) {
        if (!c->cert_file || !c->key_file)
            return nawal_fail(err, errlen, "TLS needs a certificate and a key file (or insecure_plaintext for loopback tests)");
        /* a clear message, and lws's failure path (which leaks) not taken for the common mistake */
        if (access(c->cert_file, R_OK)) return nawal_fail(err, errlen, "TLS certificate %s: %s", c->cert_file, strerror(errno));
        if (access(c->key_file, R_OK)) return nawal_fail(err, errlen, "TLS key %s: %s", c->key_file, strerror(errno));
    }
    if (!is_server && !c->insecure_plaintext && c->ca_file && access(c->ca_file, R_OK))
        return nawal_fail(err, errlen, "CA file %s: %s", c->ca_file, strerror(errno));
    return 0;
}

static int ep_init(ws_ep *ep, const nawal_ws_config *cfg, const nawal_ws_handlers *h, int is_server,
                   char *err, size_t errlen) {
    pthread_once(&log_once, set_log_level);
    ep->cfg = *cfg;
    if (config_resolve(&ep->cfg, is_server, err, errlen)) return -1;
    if (h) ep->h = *h;
    ep->is_server = is_server;
    ep->retry_ms[0] = 1000;
    ep->retry.retry_ms_table = ep->retry_ms;
    ep->retry.retry_ms_table_count = 1;
    ep->retry.secs_since_valid_ping = (uint16_t)ep->cfg.ping_secs;
    ep->retry.secs_since_valid_hangup = (uint16_t)ep->cfg.dead_secs;
    ep->protocols[0].name = NAWAL_WS_SUBPROTOCOL;
    ep->protocols[0].callback = ws_callback;
    ep->protocols[0].per_session_data_size = sizeof(ws_http_stream);
    ep->protocols[0].rx_buffer_size = ep->cfg.io_chunk;
    ep->protocols[0].tx_packet_size = ep->cfg.io_chunk;

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.protocols = ep->protocols;
    info.user = ep;
    info.pt_serv_buf_size = (unsigned int)ep->cfg.io_chunk;
    info.retry_and_idle_policy = &ep->retry;
    info.alpn = "http/1.1"; /* WebSocket over HTTP/1.1 only, never h2 */
    info.gid = -1;
    info.uid = -1;
    if (is_server) {
        info.port = ep->cfg.port;
        info.iface = ep->cfg.bind_addr;
        info.fd_limit_per_thread = (unsigned int)(2 * ep->cfg.max_connections + 32);
        info.options |= LWS_SERVER_OPTION_FAIL_UPON_UNABLE_TO_BIND;
        if (!ep->cfg.insecure_plaintext) {
            /* no outgoing connections here: skip loading the system CA store */
            info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT | LWS_SERVER_OPTION_DISABLE_OS_CA_CERTS;
            info.ssl_cert_filepath = ep->cfg.cert_file;
            info.ssl_private_key_filepath = ep->cfg.key_file;
            info.tls1_3_plus_cipher_list = TLS13_CIPHERS;
        }
    } else {
        info.port = CONTEXT_PORT_NO_LISTEN;
        if (!ep->cfg.insecure_plaintext) {
            info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
            /* a CA file pins trust to it; without one, the system store */
            if (ep->cfg.ca_file) info.options |= LWS_SERVER_OPTION_DISABLE_OS_CA_CERTS;
            info.client_ssl_ca_filepath = ep->cfg.ca_file;
            info.client_tls_1_3_plus_cipher_list = TLS13_CIPHERS;
        }
    }
    ep->ctx = lws_create_context(&info);
    if (!ep->ctx) {
        if (is_server)
            return nawal_fail(err, errlen, "cannot start the WebSocket server on port %d%s%s (address in use, "
                              "or unreadable certificate/key?)", ep->cfg.port,
                              ep->cfg.bind_addr ? " of " : "", ep->cfg.bind_addr ? ep->cfg.bind_addr : "");
        return nawal_fail(err, errlen, "cannot create the WebSocket client%s%s", ep->cfg.ca_file ? " (CA file " : "",
                          ep->cfg.ca_file ? ep->cfg.ca_file : "");
    }
    if (is_server) {
        struct lws_vhost *vh = lws_get_vhost_by_name(ep->ctx, "default");
        ep->port = vh ? lws_get_vhost_listen_port(vh) : ep->cfg.port;
    }
    /* the strings were needed only to create the context */
    ep->cfg.cert_file = ep->cfg.key_file = ep->cfg.ca_file = ep->cfg.bind_addr = NULL;
    return 0;
}

static void tick_cb(lws_sorted_usec_list_t *sul) { (void)sul; }

static int ep_service(ws_ep *ep, int timeout_ms) {
    if (timeout_ms > 0) lws_sul_schedule(ep->ctx, 0, &ep->tick, tick_cb, (lws_usec_t)timeout_ms * 1000);
    return lws_service(ep->ctx, timeout_ms > 0 ? 0 : -1) < 0 ? -1 : 0;
}

static void ep_destroy(ws_ep *ep) {
    ep->destroying = 1;
    if (ep->ctx) {
        lws_sul_cancel(&ep->tick);
        lws_context_destroy(ep->ctx);
    }
    free(ep->io_buf);
}

nawal_ws_server *nawal_ws_server_new(const nawal_ws_config *cfg, const nawal_ws_handlers *h, char *err, size_t errlen) {
    nawal_ws_server *s = calloc(1, sizeof *s);
    if (!s) {
        nawal_fail(err, errlen, "out of memory");
        return NULL;
    }
    if (ep_init(&s->ep, cfg, h, 1, err, errlen)) {
        free(s);
        return NULL;
    }
    return s;
}

int nawal_ws_server_port(const nawal_ws_server *s) { return s->ep.port; }
int nawal_ws_server_service(nawal_ws_server *s, int timeout_ms) { return ep_service(&s->ep, timeout_ms); }
int nawal_ws_server_connections(const nawal_ws_server *s) { return s->ep.nconn; }
void nawal_ws_server_wake(nawal_ws_server *s) { lws_cancel_service(s->ep.ctx); }

void nawal_ws_server_set_http(nawal_ws_server *s, nawal_ws_http_fn fn, void *user) {
    s->ep.http_fn = fn;
    s->ep.http_user = user;
}

void nawal_ws_server_free(nawal_ws_server *s) {
    if (!s) return;
    ep_destroy(&s->ep);
    free(s);
}

nawal_ws_client *nawal_ws_client_new(const nawal_ws_config *cfg, const nawal_ws_handlers *h, char *err, size_t errlen) {
    nawal_ws_client *cl = calloc(1, sizeof *cl);
    if (!cl) {
        nawal_fail(err, errlen, "out of memory");
        return NULL;
    }
    if (ep_init(&cl->ep, cfg, h, 0, err, errlen)) {
        free(cl);
        return NULL;
    }
    return cl;
}

void ws_client_info(ws_ep *ep, struct lws_client_connect_info *ci, const char *host, int port, const char *path,
                    void *user) {
    memset(ci, 0, sizeof *ci);
    ci->context = ep->ctx;
    ci->address = host;
    ci->port = port;
    ci->path = path;
    ci->host = host;
    ci->origin = host;
    ci->alpn = "http/1.1";
    if (!ep->cfg.insecure_plaintext)
        ci->ssl_connection = LCCSCF_USE_SSL | (ep->cfg.allow_self_signed ? LCCSCF_ALLOW_SELFSIGNED : 0);
    ci->opaque_user_data = user;
    ci->retry_and_idle_policy = &ep->retry;
}

nawal_ws_conn *nawal_ws_client_connect(nawal_ws_client *cl, const char *host, int port, const char *path,
                                       char *err, size_t errlen) {
    ws_ep *ep = &cl->ep;
    if (ep->destroying) {
        nawal_fail(err, errlen, "client is shutting down");
        return NULL;
    }
    if (!host || !*host || port <= 0 || port > 65535) {
        nawal_fail(err, errlen, "bad address %s:%d", host ? host : "(null)", port);
        return NULL;
    }
    nawal_ws_conn *c = conn_new(ep);
    if (!c) {
        nawal_fail(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(c->peer, sizeof c->peer, "%s:%d", host, port);
    struct lws_client_connect_info ci;
    ws_client_info(ep, &ci, host, port, path ? path : "/", c);
    ci.protocol = NAWAL_WS_SUBPROTOCOL;
    c->in_connect = 1;
    struct lws *wsi = lws_client_connect_via_info(&ci);
    c->in_connect = 0;
    if (!wsi || c->destroyed_in_connect || c->close_reported) {
        nawal_fail(err, errlen, "cannot connect to %s:%d: %s", host, port, c->reason[0] ? c->reason : "failed");
        if (wsi && !c->destroyed_in_connect) {
            /* the wsi lives on (failed, closing): detach it from us */
            lws_set_opaque_user_data(wsi, NULL);
        }
        free(c->rx);
        free(c);
        return NULL;
    }
    c->wsi = wsi;
    return c;
}

int nawal_ws_client_service(nawal_ws_client *cl, int timeout_ms) { return ep_service(&cl->ep, timeout_ms); }
void nawal_ws_client_wake(nawal_ws_client *cl) { lws_cancel_service(cl->ep.ctx); }

void nawal_ws_client_free(nawal_ws_client *cl) {
    if (!cl) return;
    ep_destroy(&cl->ep);
    free(cl);
}

/* ---- connection API ----------------------------------------------------- */

int nawal_ws_send(nawal_ws_conn *c, const void *msg, size_t len) {
    if (c->closing || c->close_when_sent || !c->wsi || c->ep->destroying) {
        errno = ENOTCONN;
        return -1;
    }
    if (len > c->ep->cfg.max_message) {
        errno = EMSGSIZE;
        return -1;
    }
    if (!queue_has_room(c)) {
        errno = EAGAIN;
        return -1;
    }
    ws_msg *m = malloc(sizeof *m + LWS_PRE + len);
    if (!m) {
        errno = ENOMEM;
        return -1;
    }
    m->next = NULL;
    m->len = len;
    m->off = 0;
    if (len) memcpy(m->buf + LWS_PRE, msg, len);
    if (c->q_tail) c->q_tail->next = m;
    else c->q_head = m;
    c->q_tail = m;
    c->q_msgs++;
    c->q_bytes += len;
    if (c->open) lws_callback_on_writable(c->wsi);
    return 0;
}

size_t nawal_ws_queued(const nawal_ws_conn *c) { return c->q_msgs; }
int nawal_ws_is_open(const nawal_ws_conn *c) { return c->open && !c->closing; }

void nawal_ws_close(nawal_ws_conn *c, const char *reason) {
    if (c->closing || !c->wsi) return;
    c->closing = 1;
    snprintf(c->reason, sizeof c->reason, "%s", reason ? reason : "closed locally");
    conn_free_queue(c);
    lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

void nawal_ws_close_when_sent(nawal_ws_conn *c, const char *reason) {
    if (c->closing || c->close_when_sent || !c->wsi) return;
    c->close_when_sent = 1;
    snprintf(c->reason, sizeof c->reason, "%s", reason ? reason : "closed locally");
    if (c->open) lws_callback_on_writable(c->wsi);
}

void nawal_ws_pause_rx(nawal_ws_conn *c, int pause) {
    if (c->wsi && !c->closing) lws_rx_flow_control(c->wsi, pause ? 0 : 1);
}

void nawal_ws_set_data(nawal_ws_conn *c, void *data) { c->data = data; }
void *nawal_ws_get_data(const nawal_ws_conn *c) { return c->data; }
const char *nawal_ws_peer(const nawal_ws_conn *c) { return c->peer; }
