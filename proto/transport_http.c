/* transport_http.c - the plain HTTP side of the transport (transport.h):
 * on a server, requests next to the WebSocket upgrades, answered by the
 * installed handler with a body or a streamed range of a file; on a
 * client, GETs (nawal_ws_client_fetch) whose bodies libwebsockets hands
 * over in blocks, the fast way to download a large blob with lws 4.1
 * (whose client parses WebSocket frames byte by byte).
 *
 * Server. The reply's headers and a body are written from the HTTP
 * callback itself (lws keeps what the socket does not take and defers the
 * end of the transaction until it is out); a file range goes out from the
 * writable callback, io_chunk bytes per pread into one buffer of the
 * endpoint, a few blocks per callback while the socket is not choked, the
 * descriptor kept in the wsi's per-session data and closed when the range
 * is out or the connection drops. Streams in progress count against the
 * endpoint's max_connections with its WebSocket connections.
 *
 * Client. A fetch is a client wsi of the endpoint's context whose opaque
 * user data is the nawal_ws_fetch (kind WS_KIND_FETCH); it is freed at
 * WSI_DESTROY, after its on_done. */
#include "transport.h"
#include "transport_internal.h"

#include "error.h"
#include "http_range.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- server --------------------------------------------------------------------- */

static void hdr_copy(struct lws *wsi, char *out, size_t cap, enum lws_token_indexes tok) {
    out[0] = 0;
    if (lws_hdr_total_length(wsi, tok) > 0 && lws_hdr_copy(wsi, out, (int)cap, tok) < 0) out[0] = 0;
}

/* A file reply that will not be streamed: its descriptor closed, its on_end run. */
static void reply_file_end(nawal_ws_http_reply *r) {
    close(r->file_fd);
    if (r->on_end) r->on_end(r->stream_user);
}

/* Content-Range of a 206 of a file (the range sent) or of any 416 ("bytes
 * *\/file_total", RFC 7233 4.4); none for other replies. 0, -1. */
static int add_content_range(struct lws *wsi, const nawal_ws_http_reply *r, int file, unsigned char **p,
                             unsigned char *end) {
    char cr[96];
    int n;
    if (file && r->status == 206)
        n = snprintf(cr, sizeof cr, "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, r->file_off,
                     r->file_off + r->file_len - (r->file_len > 0), r->file_total);
    else if (r->status == 416) n = snprintf(cr, sizeof cr, "bytes */%" PRIu64, r->file_total);
    else return 0;
    return lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CONTENT_RANGE, (unsigned char *)cr, n, p, end) ? -1 : 0;
}

int ws_http_request(ws_ep *ep, struct lws *wsi, void *pss, const char *path) {
    ws_http_stream *st = pss;
    char auth[256], range[128];
    hdr_copy(wsi, auth, sizeof auth, WSI_TOKEN_HTTP_AUTHORIZATION);
    hdr_copy(wsi, range, sizeof range, WSI_TOKEN_HTTP_RANGE);
    nawal_ws_http_request rq = {
        lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI)    ? "GET"
        : lws_hdr_total_length(wsi, WSI_TOKEN_HEAD_URI) ? "HEAD"
        : lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) ? "POST"
                                                        : "OTHER",
        path ? path : "/", auth, range};
    nawal_ws_http_reply r = {0};
    r.file_fd = -1;
    int hrc = ep->http_fn(&rq, &r, ep->http_user);
    int file = r.file_fd >= 0;
    if (hrc) {
        free(r.body);
        if (file) reply_file_end(&r);
        return -1;
    }
    int head = !strcmp(rq.method, "HEAD");
    uint64_t len = file ? r.file_len : r.body_len;
    unsigned char hdr[LWS_PRE + 768], *start = hdr + LWS_PRE, *p = start, *end = hdr + sizeof hdr;
    int rc = lws_add_http_common_headers(wsi, (unsigned int)r.status, r.content_type ? r.content_type : "text/plain",
                                         (lws_filepos_t)len, &p, end)
                 ? -1
                 : 0;
    if (rc == 0 && file) {
        static const char ar[] = "bytes";
        if (lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_ACCEPT_RANGES, (const unsigned char *)ar,
                                         (int)sizeof ar - 1, &p, end))
            rc = -1;
    }
    if (rc == 0) rc = add_content_range(wsi, &r, file, &p, end);
    if (rc == 0 && lws_finalize_write_http_header(wsi, start, &p, end)) rc = -1;
    if (rc == 0 && !file && r.body_len && !head) {
        unsigned char *buf = malloc(LWS_PRE + r.body_len);
        if (!buf || (memcpy(buf + LWS_PRE, r.body, r.body_len),
                     lws_write(wsi, buf + LWS_PRE, r.body_len, LWS_WRITE_HTTP_FINAL) < 0))
            rc = -1;
        free(buf);
    }
    free(r.body);
    if (rc == 0 && file && !head && r.file_len > 0) {
        ws_http_drop(st); /* a keep-alive connection's earlier stream, if any */
        st->ep = ep;
        ep->nstreams++;
        st->fd_plus1 = r.file_fd + 1;
        st->off = r.file_off;
        st->left = r.file_len;
        st->on_sent = r.on_sent;
        st->on_end = r.on_end;
        st->stream_user = r.stream_user;
        lws_callback_on_writable(wsi);
        return 0;
    }
    if (file) reply_file_end(&r);
    if (rc) return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

int ws_http_writeable(ws_ep *ep, struct lws *wsi, void *pss) {
    ws_http_stream *st = pss;
    if (!st || !st->fd_plus1) return 0;
    size_t chunk = ep->cfg.io_chunk;
    if (!ep->io_buf && !(ep->io_buf = malloc(LWS_PRE + chunk))) return -1;
    /* lws's HTTP timeout (5 s) would cut a long body: a peer that stops reading for dead_secs goes */
    lws_set_timeout(wsi, PENDING_TIMEOUT_HTTP_CONTENT, ep->cfg.dead_secs);
    for (int burst = 0; st->left > 0 && burst < WS_BURST; burst++) {
        size_t n = st->left < chunk ? (size_t)st->left : chunk;
        ssize_t got = pread(st->fd_plus1 - 1, ep->io_buf + LWS_PRE, n, (off_t)st->off);
        if (got <= 0) return -1; /* the file shrank or failed: the peer sees a short body */
        st->off += (uint64_t)got;
        st->left -= (uint64_t)got;
        if (lws_write(wsi, ep->io_buf + LWS_PRE, (size_t)got, st->left ? LWS_WRITE_HTTP : LWS_WRITE_HTTP_FINAL) < 0)
            return -1;
        if (st->on_sent && st->on_sent((uint64_t)got, st->stream_user)) return -1; /* ws_http_drop ends it */
        if (lws_send_pipe_choked(wsi)) break;
    }
    if (st->left) {
        lws_callback_on_writable(wsi);
        return 0;
    }
    ws_http_drop(st);
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

void ws_http_drop(void *pss) {
    ws_http_stream *st = pss;
    if (!st || !st->fd_plus1) return;
    close(st->fd_plus1 - 1);
    st->fd_plus1 = 0;
    st->left = 0;
    if (st->ep) st->ep->nstreams--;
    st->ep = NULL;
    void (*end)(void *) = st->on_end;
    st->on_end = NULL;
    st->on_sent = NULL;
    if (end) end(st->stream_user);
}

/* ---- client --------------------------------------------------------------------- */

struct nawal_ws_fetch {
    unsigned kind; /* WS_KIND_FETCH */
    ws_ep *ep;
    struct lws *wsi;
    nawal_ws_fetch_handlers h;
    char auth[256], range[64];
    uint64_t asked;          /* the offset asked for */
    uint64_t expect, got;    /* body bytes announced (Content-Length), received */
    int headed, done, cancelled;
    int in_connect, destroyed_in_connect;
    char *buf;               /* LWS_PRE + io_chunk, for lws_http_client_read */
    char reason[160];
};

static void fetch_done(nawal_ws_fetch *f, int ok, const char *why) {
    if (f->done) return;
    f->done = 1;
    if (!f->reason[0]) snprintf(f->reason, sizeof f->reason, "%s", why ? why : (ok ? "done" : "failed"));
    if (f->in_connect) return; /* nawal_ws_client_fetch() reports it as its error */
    if (f->h.on_done) f->h.on_done(f, ok, f->reason, f->h.user);
}

static void fetch_free(nawal_ws_fetch *f) {
    free(f->buf);
    free(f);
}

static int fetch_fail(nawal_ws_fetch *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fetch_fail(nawal_ws_fetch *f, const char *fmt, ...) {
    char why[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    fetch_done(f, 0, why);
    return -1;
}

int ws_fetch_callback(nawal_ws_fetch *f, struct lws *wsi, enum lws_callback_reasons reason, void *in, size_t len) {
    switch (reason) {
    case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER: {
        unsigned char **p = in, *end = *p + len;
        if (f->auth[0] && lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_AUTHORIZATION, (unsigned char *)f->auth,
                                                       (int)strlen(f->auth), p, end))
            return -1;
        if (f->range[0] && lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_RANGE, (unsigned char *)f->range,
                                                        (int)strlen(f->range), p, end))
            return -1;
        return 0;
    }
    case LWS_CALLBACK_ESTABLISHED_CLIENT_HTTP: {
        if (f->cancelled) return -1;
        /* a body that stops flowing for dead_secs is given up (lws has no timeout once the head is in) */
        lws_set_timeout(wsi, PENDING_TIMEOUT_HTTP_CONTENT, f->ep->cfg.dead_secs);
        int status = (int)lws_http_client_http_response(wsi);
        char cl[32] = "", cr[96] = "";
        uint64_t clen = 0;
        if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0 &&
            lws_hdr_copy(wsi, cl, sizeof cl, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0 &&
            !nawal_http_u64(cl, &clen))
            return fetch_fail(f, "bad Content-Length '%.30s'", cl);
        if (status == 206) { /* the range must be the one asked for, to the end */
            if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_RANGE) <= 0 ||
                lws_hdr_copy(wsi, cr, sizeof cr, WSI_TOKEN_HTTP_CONTENT_RANGE) <= 0 ||
                !nawal_http_content_range_ok(cr, f->asked, clen))
                return fetch_fail(f, "206 with Content-Range '%.60s' for bytes=%llu- of %llu bytes", cr,
                                  (unsigned long long)f->asked, (unsigned long long)clen);
        }
        uint64_t first = status == 206 ? f->asked : 0;
        f->expect = clen;
        f->headed = 1;
        if (f->h.on_head && f->h.on_head(f, status, first, first + clen, f->h.user))
            return fetch_fail(f, "refused by the caller (HTTP %d)", status);
        if (status != 200 && status != 206) return fetch_fail(f, "HTTP status %d", status);
        if (status == 200 && f->asked) return fetch_fail(f, "the server ignored the range (HTTP 200)");
        return 0;
    }
    case LWS_CALLBACK_RECEIVE_CLIENT_HTTP: {
        if (f->cancelled || f->done) return -1;
        char *p = f->buf + LWS_PRE;
        int n = (int)f->ep->cfg.io_chunk;
        return lws_http_client_read(wsi, &p, &n) < 0 ? -1 : 0;
    }
    case LWS_CALLBACK_RECEIVE_CLIENT_HTTP_READ:
        if (f->cancelled || f->done) return -1;
        lws_set_timeout(wsi, PENDING_TIMEOUT_HTTP_CONTENT, f->ep->cfg.dead_secs);
        if (len > f->expect - f->got) return fetch_fail(f, "the body is longer than its Content-Length");
        f->got += len;
        if (f->h.on_data && f->h.on_data(f, in, len, f->h.user)) return fetch_fail(f, "refused by the caller");
        return 0;
    case LWS_CALLBACK_COMPLETED_CLIENT_HTTP:
        if (f->got != f->expect)
            return fetch_fail(f, "the body ended after %llu of %llu bytes", (unsigned long long)f->got,
                              (unsigned long long)f->expect);
        fetch_done(f, 1, NULL);
        return -1; /* one request per connection */
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        fetch_fail(f, "connection failed: %.100s", in ? (const char *)in : "unknown error");
        return 0;
    case LWS_CALLBACK_CLOSED_CLIENT_HTTP:
        if (f->cancelled) fetch_fail(f, "%s", f->reason);
        else fetch_fail(f, "connection closed after %llu of %llu body bytes", (unsigned long long)f->got,
                        (unsigned long long)f->expect);
        return 0;
    case LWS_CALLBACK_WSI_DESTROY:
        lws_set_opaque_user_data(wsi, NULL);
        fetch_done(f, 0, "connection closed");
        f->wsi = NULL;
        if (f->in_connect) f->destroyed_in_connect = 1;
        else fetch_free(f);
        return 0;
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, NULL, in, len);
}

nawal_ws_fetch *nawal_ws_client_fetch(nawal_ws_client *cl, const char *host, int port, const char *path,
                                      const char *auth, uint64_t offset, const nawal_ws_fetch_handlers *h,
                                      char *err, size_t errlen) {
    ws_ep *ep = &cl->ep;
    if (ep->destroying) {
        nawal_fail(err, errlen, "client is shutting down");
        return NULL;
    }
    if (!host || !*host || port <= 0 || port > 65535 || !path || path[0] != '/') {
        nawal_fail(err, errlen, "bad request %s:%d%s", host ? host : "(null)", port, path ? path : "(null)");
        return NULL;
    }
    if (auth && strlen(auth) >= sizeof ((nawal_ws_fetch *)0)->auth) {
        nawal_fail(err, errlen, "Authorization value too long");
        return NULL;
    }
    nawal_ws_fetch *f = calloc(1, sizeof *f);
    if (f) f->buf = malloc(LWS_PRE + ep->cfg.io_chunk);
    if (!f || !f->buf) {
        if (f) free(f);
        nawal_fail(err, errlen, "out of memory");
        return NULL;
    }
    f->kind = WS_KIND_FETCH;
    f->ep = ep;
    if (h) f->h = *h;
    if (auth) snprintf(f->auth, sizeof f->auth, "%s", auth);
    f->asked = offset;
    if (offset) snprintf(f->range, sizeof f->range, "bytes=%" PRIu64 "-", offset);
    struct lws_client_connect_info ci;
    ws_client_info(ep, &ci, host, port, path, f);
    ci.method = "GET";
    ci.local_protocol_name = NAWAL_WS_SUBPROTOCOL; /* bound to our callback: without it lws swallows the body */
    ci.ssl_connection |= LCCSCF_HTTP_NO_FOLLOW_REDIRECT;
    f->in_connect = 1;
    struct lws *wsi = lws_client_connect_via_info(&ci);
    f->in_connect = 0;
    if (!wsi || f->destroyed_in_connect || f->done) {
        nawal_fail(err, errlen, "cannot fetch %s from %s:%d: %s", path, host, port, f->reason[0] ? f->reason : "failed");
        if (wsi && !f->destroyed_in_connect) lws_set_opaque_user_data(wsi, NULL);
        fetch_free(f);
        return NULL;
    }
    f->wsi = wsi;
    return f;
}

void nawal_ws_fetch_cancel(nawal_ws_fetch *f, const char *reason) {
    if (!f || f->done || f->cancelled) return;
    f->cancelled = 1;
    snprintf(f->reason, sizeof f->reason, "%s", reason ? reason : "cancelled");
    f->h.on_head = NULL;
    f->h.on_data = NULL;
    if (f->wsi) lws_set_timeout(f->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}
