/* test_transport_http.c - plain HTTP on the transport (transport_http.c):
 * a server handler streaming ranges of a file of random bytes (several
 * io_chunks, an awkward length) to the client's GET over TLS and in
 * plaintext: the body byte-exact, whole and from random offsets (206 with
 * the offset reported), the Authorization header delivered, errors (401,
 * 404, a range past the end) reported through on_head / on_done with
 * ok = 0, a fetch cancelled mid-body stops its data at once, and an
 * unreachable port fails cleanly. The server runs on its own thread. */
#include "test_util.h"
#include "ws_test_util.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <inttypes.h>

#define AUTH "Nawal 0123abcd"

typedef struct {
    char path[128];
    uint64_t size;
    atomic_int requests;
    atomic_int files, ends;        /* file replies made, their on_end calls */
    atomic_llong sent;             /* bytes on_sent reported */
    atomic_llong stop_after;       /* on_sent stops a stream past this many bytes (0: never) */
} srv_ctx;

static int on_sent(uint64_t bytes, void *user) {
    srv_ctx *s = user;
    long long total = atomic_fetch_add(&s->sent, (long long)bytes) + (long long)bytes;
    long long stop = atomic_load(&s->stop_after);
    return stop && total > stop ? -1 : 0;
}

static void on_end(void *user) { atomic_fetch_add(&((srv_ctx *)user)->ends, 1); }

/* "/blob": the file, with "Authorization: AUTH" only, whole or from "bytes=N-"; "/small": a body */
static int handler(const nawal_ws_http_request *rq, nawal_ws_http_reply *r, void *user) {
    srv_ctx *s = user;
    atomic_fetch_add(&s->requests, 1);
    r->content_type = "application/octet-stream";
    if (!strcmp(rq->path, "/small")) {
        r->status = 200;
        r->body = strdup("hello");
        r->body_len = 5;
        return 0;
    }
    int liar = !strcmp(rq->path, "/liar"); /* a 206 for another range than the one asked for */
    if (strcmp(rq->path, "/blob") && !liar) {
        r->status = 404;
        return 0;
    }
    if (strcmp(rq->authorization, AUTH)) {
        r->status = 401;
        return 0;
    }
    uint64_t off = 0;
    if (rq->range[0] && sscanf(rq->range, "bytes=%" SCNu64 "-", &off) != 1) {
        r->status = 400;
        return 0;
    }
    if (off >= s->size) {
        r->status = 416;
        r->file_total = s->size;
        return 0;
    }
    r->file_fd = open(s->path, O_RDONLY | O_CLOEXEC);
    if (r->file_fd < 0) return -1;
    atomic_fetch_add(&s->files, 1);
    r->on_sent = on_sent;
    r->on_end = on_end;
    r->stream_user = s;
    r->status = off ? 206 : 200;
    r->file_off = off + (liar && off + 1 < s->size);
    r->file_len = s->size - r->file_off;
    r->file_total = s->size;
    return 0;
}

typedef struct {
    int done, ok, status, heads;
    uint64_t first, total, got;
    uint8_t *data; /* received bytes at their offsets */
    size_t cancel_after; /* cancel in on_data once this many bytes came (0: never) */
    int slow_us;         /* sleep this long in each on_data (a slow reader) */
    nawal_ws_fetch *f;
    int data_after_cancel, cancelled;
    char reason[160];
} fetch_state;

static int on_head(nawal_ws_fetch *f, int status, uint64_t first, uint64_t total, void *user) {
    (void)f;
    fetch_state *st = user;
    st->heads++;
    st->status = status;
    st->first = first;
    st->total = total;
    return 0;
}

static int on_data(nawal_ws_fetch *f, const uint8_t *d, size_t n, void *user) {
    fetch_state *st = user;
    if (st->cancelled) st->data_after_cancel++;
    if (st->slow_us) usleep((useconds_t)st->slow_us);
    if (st->data && st->first + st->got + n <= st->total) memcpy(st->data + st->first + st->got, d, n);
    st->got += n;
    if (st->cancel_after && st->got >= st->cancel_after && !st->cancelled) {
        st->cancelled = 1;
        nawal_ws_fetch_cancel(f, "test cancels");
    }
    return 0;
}

static void on_done(nawal_ws_fetch *f, int ok, const char *reason, void *user) {
    (void)f;
    fetch_state *st = user;
    st->done++;
    st->ok = ok;
    snprintf(st->reason, sizeof st->reason, "%s", reason);
}

static int fetch_finished(void *p) { return ((fetch_state *)p)->done > 0; }

static void run_fetch(nawal_ws_client *cl, int port, const char *path, const char *auth, uint64_t off,
                      fetch_state *st) {
    nawal_ws_fetch_handlers h = {on_head, on_data, on_done, st};
    char err[256];
    st->f = nawal_ws_client_fetch(cl, "127.0.0.1", port, path, auth, off, &h, err, sizeof err);
    cr_assert(st->f, "fetch %s: %s", path, err);
    cr_assert(wt_client_until(cl, fetch_finished, st, 30), "fetch %s did not finish", path);
    /* no second on_done, no late data */
    for (int i = 0; i < 5; i++) nawal_ws_client_service(cl, 5);
    cr_assert_eq(st->done, 1);
}

/* sc's file: size random bytes (returned, malloc'ed) */
static uint8_t *file_make(srv_ctx *sc, uint64_t *seed, uint64_t size) {
    sc->size = size;
    snprintf(sc->path, sizeof sc->path, "/tmp/nawal-http-XXXXXX");
    int fd = mkstemp(sc->path);
    cr_assert(fd >= 0);
    uint8_t *blob = malloc(size);
    for (uint64_t i = 0; i < size; i += 8) {
        uint64_t v = test_rand_u64(seed);
        memcpy(blob + i, &v, size - i < 8 ? size - i : 8);
    }
    cr_assert_eq(write(fd, blob, size), (ssize_t)size);
    close(fd);
    return blob;
}

/* A server (handler over sc, on its thread) and a client, TLS with tls's certificate or plaintext. */
static nawal_ws_client *pair_start_max(srv_ctx *sc, const wt_tls *tls, wt_server *ws, int *port, int max_conn) {
    char err[256];
    nawal_ws_config scfg = {0};
    scfg.max_connections = max_conn;
    if (tls) {
        scfg.cert_file = tls->cert;
        scfg.key_file = tls->key;
    } else scfg.insecure_plaintext = 1;
    scfg.bind_addr = "127.0.0.1";
    ws->srv = nawal_ws_server_new(&scfg, NULL, err, sizeof err);
    cr_assert(ws->srv, "server: %s", err);
    nawal_ws_server_set_http(ws->srv, handler, sc);
    *port = nawal_ws_server_port(ws->srv);
    cr_assert_eq(wt_server_start(ws), 0);
    nawal_ws_config ccfg = {0};
    if (tls) ccfg.ca_file = tls->cert;
    else ccfg.insecure_plaintext = 1;
    nawal_ws_client *cl = nawal_ws_client_new(&ccfg, NULL, err, sizeof err);
    cr_assert(cl, "client: %s", err);
    return cl;
}

static nawal_ws_client *pair_start(srv_ctx *sc, const wt_tls *tls, wt_server *ws, int *port) {
    return pair_start_max(sc, tls, ws, port, 0);
}

static void http_suite(int tls_on) {
    uint64_t seed = fresh_seed();
    wt_tls tls;
    if (tls_on) cr_assert_eq(wt_tls_make(&tls), 0, "openssl could not make a test certificate");
    srv_ctx sc;
    memset(&sc, 0, sizeof sc);
    uint8_t *blob = file_make(&sc, &seed, (5u << 20) + 12345 + test_rand_u64(&seed) % 4096);
    wt_server ws = {0};
    int port;
    nawal_ws_client *cl = pair_start(&sc, tls_on ? &tls : NULL, &ws, &port);
    char err[256];

    /* whole, then from random offsets (the first and the last byte included) */
    uint64_t offs[] = {0, 1 + test_rand_u64(&seed) % (sc.size - 1), sc.size - 1};
    for (int k = 0; k < 3; k++) {
        fetch_state st = {0};
        st.data = calloc(1, sc.size);
        run_fetch(cl, port, "/blob", AUTH, offs[k], &st);
        cr_assert(st.ok, "offset %" PRIu64 ": %s", offs[k], st.reason);
        cr_assert_eq(st.status, offs[k] ? 206 : 200);
        cr_assert_eq(st.first, offs[k]);
        cr_assert_eq(st.total, sc.size);
        cr_assert_eq(st.got, sc.size - offs[k]);
        cr_assert(!memcmp(st.data + offs[k], blob + offs[k], sc.size - offs[k]), "body differs (offset %" PRIu64 ")",
                  offs[k]);
        free(st.data);
    }
    /* a body from memory */
    fetch_state sm = {0};
    run_fetch(cl, port, "/small", NULL, 0, &sm);
    cr_assert(sm.ok && sm.status == 200 && sm.got == 5, "%s", sm.reason);
    /* refusals: no data, ok = 0, the status seen */
    struct { const char *path, *auth; uint64_t off; int status; const char *why; } bad[] = {
        {"/blob", NULL, 0, 401, "HTTP status"}, {"/blob", "Nawal wrong", 0, 401, "HTTP status"},
        {"/nothing", AUTH, 0, 404, "HTTP status"}, {"/blob", AUTH, sc.size, 416, "HTTP status"},
        {"/liar", AUTH, 1000, 0, "206 with Content-Range 'bytes 1001-"}};
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        fetch_state st = {0};
        run_fetch(cl, port, bad[k].path, bad[k].auth, bad[k].off, &st);
        cr_assert(!st.ok, "%s answered ok", bad[k].path);
        cr_assert_eq(st.status, bad[k].status, "%s: %s", bad[k].path, st.reason);
        cr_assert(strstr(st.reason, bad[k].why), "%s", st.reason);
        cr_assert_eq(st.got, 0, "%s: body bytes were handed over", bad[k].path);
    }
    /* cancelled after the first block: no data after, on_done once with the reason */
    fetch_state cs = {0};
    cs.cancel_after = 1;
    run_fetch(cl, port, "/blob", AUTH, 0, &cs);
    cr_assert(!cs.ok);
    cr_assert_eq(cs.data_after_cancel, 0);
    cr_assert(cs.got < sc.size, "the whole body came despite the cancel");
    cr_assert(strstr(cs.reason, "test cancels"), "%s", cs.reason);
    /* nothing listening */
    nawal_ws_fetch_handlers h = {on_head, on_data, on_done, &cs};
    fetch_state dead = {0};
    h.user = &dead;
    nawal_ws_fetch *f = nawal_ws_client_fetch(cl, "127.0.0.1", 1, "/blob", AUTH, 0, &h, err, sizeof err);
    if (f) { /* the connect failed later, inside service() */
        cr_assert(wt_client_until(cl, fetch_finished, &dead, 30));
        cr_assert(!dead.ok && dead.heads == 0 && dead.done == 1, "%s", dead.reason);
    } else { /* or at once */
        cr_assert(strstr(err, "cannot fetch /blob"), "%s", err);
        cr_assert_eq(dead.done, 0, "on_done ran for a fetch that never started");
    }
    /* a stream the server stops (on_sent) gives the client a short body */
    atomic_store(&sc.sent, 0);
    atomic_store(&sc.stop_after, 1 << 20);
    fetch_state stopped = {0};
    run_fetch(cl, port, "/blob", AUTH, 0, &stopped);
    cr_assert(!stopped.ok && stopped.got < sc.size, "a stopped stream came whole: %s", stopped.reason);
    atomic_store(&sc.stop_after, 0);
    cr_assert_gt(atomic_load(&sc.requests), 8);
    /* every file reply ended exactly once (whole, cancelled, stopped) */
    for (double t0 = wt_now(); atomic_load(&sc.ends) < atomic_load(&sc.files) && wt_now() - t0 < 10;) usleep(10000);
    cr_assert_eq(atomic_load(&sc.ends), atomic_load(&sc.files), "%d file replies, %d ends", atomic_load(&sc.files),
                 atomic_load(&sc.ends));

    nawal_ws_client_free(cl);
    wt_server_stop(&ws);
    unlink(sc.path);
    free(blob);
    if (tls_on) wt_tls_remove(&tls);
}

/* A body that takes longer than lws's 5 s HTTP timeout to read (a slow link): it comes whole. */
Test(transport_http, slow_reader_gets_the_whole_body, .timeout = 120) {
    uint64_t seed = fresh_seed();
    srv_ctx sc;
    memset(&sc, 0, sizeof sc);
    uint8_t *blob = file_make(&sc, &seed, (48u << 20) + 7);
    wt_server ws = {0};
    int port;
    nawal_ws_client *cl = pair_start(&sc, NULL, &ws, &port);
    fetch_state st = {0};
    st.data = calloc(1, sc.size);
    st.slow_us = 30000; /* ~7 MB/s at most: the body takes over 6 s */
    double t0 = wt_now();
    run_fetch(cl, port, "/blob", AUTH, 0, &st);
    double dt = wt_now() - t0;
    cr_assert(st.ok, "after %.1f s: %s", dt, st.reason);
    cr_assert(dt > 5.5, "the body came in %.1f s: not slower than lws's timeout, the test proves nothing", dt);
    cr_assert(!memcmp(st.data, blob, sc.size));
    free(st.data);
    nawal_ws_client_free(cl);
    wt_server_stop(&ws);
    unlink(sc.path);
    free(blob);
}

/* File bodies being sent count against max_connections: with two streams open (slow readers) a
 * third connection is refused; once they are over, a new GET gets through. */
Test(transport_http, streams_count_against_the_connection_limit, .timeout = 120) {
    uint64_t seed = fresh_seed();
    srv_ctx sc;
    memset(&sc, 0, sizeof sc);
    uint8_t *blob = file_make(&sc, &seed, 48u << 20);
    wt_server ws = {0};
    int port;
    nawal_ws_client *cl = pair_start_max(&sc, NULL, &ws, &port, 2);
    char err[256];
    fetch_state st[3] = {{0}};
    nawal_ws_fetch_handlers h[3];
    for (int i = 0; i < 2; i++) {
        st[i].slow_us = 20000;
        h[i] = (nawal_ws_fetch_handlers){on_head, on_data, on_done, &st[i]};
        cr_assert(nawal_ws_client_fetch(cl, "127.0.0.1", port, "/blob", AUTH, 0, &h[i], err, sizeof err), "%s", err);
    }
    for (double t0 = wt_now(); wt_now() - t0 < 10 && !(st[0].got && st[1].got);) nawal_ws_client_service(cl, 10);
    cr_assert(st[0].got && st[1].got && !st[0].done && !st[1].done, "two streams under way");
    h[2] = (nawal_ws_fetch_handlers){on_head, on_data, on_done, &st[2]};
    nawal_ws_fetch *f = nawal_ws_client_fetch(cl, "127.0.0.1", port, "/small", NULL, 0, &h[2], err, sizeof err);
    if (f) cr_assert(wt_client_until(cl, fetch_finished, &st[2], 20), "the third request hangs");
    cr_assert(!f || (!st[2].ok && st[2].heads == 0), "a third connection was served: %s", st[2].reason);
    for (int i = 0; i < 2; i++) {
        st[i].slow_us = 0;
        cr_assert(wt_client_until(cl, fetch_finished, &st[i], 60), "stream %d did not end", i);
        cr_assert(st[i].ok, "stream %d: %s", i, st[i].reason);
    }
    fetch_state again = {0};
    run_fetch(cl, port, "/small", NULL, 0, &again);
    cr_assert(again.ok && again.got == 5, "after the streams: %s", again.reason);
    nawal_ws_client_free(cl);
    wt_server_stop(&ws);
    unlink(sc.path);
    free(blob);
}

Test(transport_http, fetch_over_tls, .timeout = 120) { http_suite(1); }
Test(transport_http, fetch_plaintext, .timeout = 120) { http_suite(0); }
