/* test_transport.c - the WebSocket transport over loopback: random messages
 * both ways over TLS (byte-exact, in order, fragmented and not), certificate
 * checks, garbage / text / oversize / unmasked-junk peers dropped while a
 * good client keeps working, the connection limit, keepalive dropping a
 * silent peer, and send-queue back-pressure. The server runs on its own
 * thread; clients run on the test's thread. */
#include "test_util.h"
#include "ws_test_util.h"

#include <criterion/criterion.h>

#define TAG_CLIENT 1
#define TAG_SERVER 2

/* message i of a sequence: a tag byte, then random bytes; mostly small, some
 * several fragments long, a few of up to 3 MiB */
static size_t gen_msg(uint64_t *rng, uint8_t *buf, uint8_t tag) {
    int r = test_rand_int(rng, 100);
    size_t len;
    if (r < 40) len = 1 + (size_t)test_rand_int(rng, 200);
    else if (r < 80) len = 1 + (size_t)test_rand_int(rng, 64 << 10);
    else if (r < 95) len = 1 + (size_t)test_rand_int(rng, 600 << 10);
    else len = 1 + (size_t)test_rand_int(rng, 3 << 20);
    buf[0] = tag;
    for (size_t i = 1; i < len; i += 8) {
        uint64_t v = test_rand_u64(rng);
        memcpy(buf + i, &v, len - i < 8 ? len - i : 8);
    }
    return len;
}

#define MSG_MAX (4u << 20)

/* ---- server side (runs on the server thread) ---- */

typedef struct {
    pthread_mutex_t mu;
    int opens, closes, echo, own_count, pause_rx;
    uint64_t own_seed;
    atomic_int resume;
    long long received;
    char last_reason[160];
    int send_failures;
} srv_state;

typedef struct {
    uint64_t rng;
    int own_sent, have_pending;
    size_t pending_len;
    uint8_t *pending;
} srv_conn;

static void srv_push_own(nawal_ws_conn *c, srv_state *st) {
    srv_conn *sc = nawal_ws_get_data(c);
    if (!sc) return;
    while (sc->own_sent < st->own_count) {
        if (!sc->have_pending) {
            sc->pending_len = gen_msg(&sc->rng, sc->pending, TAG_SERVER);
            sc->have_pending = 1;
        }
        if (nawal_ws_send(c, sc->pending, sc->pending_len)) {
            if (errno != EAGAIN) st->send_failures++;
            return;
        }
        sc->have_pending = 0;
        sc->own_sent++;
    }
}

static void srv_open(nawal_ws_conn *c, void *user) {
    srv_state *st = user;
    pthread_mutex_lock(&st->mu);
    st->opens++;
    pthread_mutex_unlock(&st->mu);
    srv_conn *sc = calloc(1, sizeof *sc);
    sc->rng = st->own_seed;
    if (st->own_count) sc->pending = malloc(MSG_MAX);
    nawal_ws_set_data(c, sc);
    if (st->pause_rx) nawal_ws_pause_rx(c, 1);
    srv_push_own(c, st);
}

static void srv_message(nawal_ws_conn *c, const uint8_t *msg, size_t len, void *user) {
    srv_state *st = user;
    pthread_mutex_lock(&st->mu);
    st->received++;
    pthread_mutex_unlock(&st->mu);
    if (st->echo && nawal_ws_send(c, msg, len)) st->send_failures++;
}

static void srv_drain(nawal_ws_conn *c, void *user) { srv_push_own(c, user); }

static void srv_close(nawal_ws_conn *c, const char *reason, void *user) {
    srv_state *st = user;
    pthread_mutex_lock(&st->mu);
    st->closes++;
    snprintf(st->last_reason, sizeof st->last_reason, "%s", reason);
    pthread_mutex_unlock(&st->mu);
    srv_conn *sc = nawal_ws_get_data(c);
    if (sc) free(sc->pending);
    free(sc);
}

static int srv_get(srv_state *st, int *field) {
    pthread_mutex_lock(&st->mu);
    int v = *field;
    pthread_mutex_unlock(&st->mu);
    return v;
}

static nawal_ws_handlers srv_handlers(srv_state *st) {
    nawal_ws_handlers h = { srv_open, srv_message, srv_drain, srv_close, st };
    return h;
}

static void srv_state_init(srv_state *st) {
    memset(st, 0, sizeof *st);
    pthread_mutex_init(&st->mu, NULL);
    st->echo = 1;
}

/* ---- client side (test thread) ---- */

typedef struct {
    nawal_ws_conn *c;
    int opened, closed, bad;
    char reason[160];
    /* our messages, and their echoes checked against the same sequence */
    uint64_t send_rng, check_rng;
    int to_send, sent, echoed;
    int have_pending;
    size_t pending_len;
    uint8_t *pending, *expect;
    /* the server's own messages */
    uint64_t own_rng;
    int own_expected, own_got;
    /* anything else */
    int plain_got;
    size_t last_len;
} cli_conn;

static void cli_open(nawal_ws_conn *c, void *user) {
    (void)user;
    cli_conn *cc = nawal_ws_get_data(c);
    if (cc) cc->opened = 1;
}

static void cli_message(nawal_ws_conn *c, const uint8_t *msg, size_t len, void *user) {
    (void)user;
    cli_conn *cc = nawal_ws_get_data(c);
    if (!cc) return;
    cc->last_len = len;
    if (len && msg[0] == TAG_CLIENT && cc->expect) {
        size_t n = gen_msg(&cc->check_rng, cc->expect, TAG_CLIENT);
        if (n != len || memcmp(cc->expect, msg, n)) cc->bad++;
        cc->echoed++;
    } else if (len && msg[0] == TAG_SERVER && cc->expect) {
        size_t n = gen_msg(&cc->own_rng, cc->expect, TAG_SERVER);
        if (n != len || memcmp(cc->expect, msg, n)) cc->bad++;
        cc->own_got++;
    } else {
        cc->plain_got++;
    }
}

static void cli_close(nawal_ws_conn *c, const char *reason, void *user) {
    (void)user;
    cli_conn *cc = nawal_ws_get_data(c);
    if (!cc) return;
    cc->closed = 1;
    cc->c = NULL;
    snprintf(cc->reason, sizeof cc->reason, "%s", reason);
}

static const nawal_ws_handlers cli_h = { cli_open, cli_message, NULL, cli_close, NULL };

static void cli_push(cli_conn *cc) {
    while (cc->c && cc->sent < cc->to_send) {
        if (!cc->have_pending) {
            cc->pending_len = gen_msg(&cc->send_rng, cc->pending, TAG_CLIENT);
            cc->have_pending = 1;
        }
        if (nawal_ws_send(cc->c, cc->pending, cc->pending_len)) {
            cr_assert_eq(errno, EAGAIN, "send: %s", strerror(errno));
            return;
        }
        cc->have_pending = 0;
        cc->sent++;
    }
}

static void cli_conn_free(cli_conn *cc) {
    free(cc->pending);
    free(cc->expect);
}

static int is_opened(void *p) { return ((cli_conn *)p)->opened || ((cli_conn *)p)->closed; }
static int is_closed(void *p) { return ((cli_conn *)p)->closed; }

static nawal_ws_conn *connect_to(nawal_ws_client *cl, int port, cli_conn *cc) {
    char err[256];
    memset(cc, 0, sizeof *cc);
    cc->c = nawal_ws_client_connect(cl, "127.0.0.1", port, "/", err, sizeof err);
    cr_assert(cc->c, "connect: %s", err);
    nawal_ws_set_data(cc->c, cc);
    return cc->c;
}

/* one round trip on a working connection */
static int ping_pong_done(void *p) {
    cli_conn *cc = p;
    return cc->plain_got > 0 || cc->closed;
}

static void check_alive(nawal_ws_client *cl, cli_conn *cc) {
    cc->plain_got = 0;
    const uint8_t hello[5] = { 'h', 'e', 'l', 'l', 'o' };
    cr_assert_eq(nawal_ws_send(cc->c, hello, sizeof hello), 0);
    cr_assert(wt_client_until(cl, ping_pong_done, cc, 10));
    cr_assert(!cc->closed, "good client was dropped: %s", cc->reason);
    cr_assert_eq(cc->last_len, sizeof hello);
}

static nawal_ws_config tls_server_cfg(const wt_tls *t) {
    nawal_ws_config cfg = { 0 };
    cfg.cert_file = t->cert;
    cfg.key_file = t->key;
    cfg.bind_addr = "127.0.0.1";
    cfg.max_message = MSG_MAX;
    cfg.queue_msgs = 1u << 16;
    cfg.queue_bytes = 1u << 30;
    return cfg;
}

/* ---- tests ---- */

typedef struct {
    cli_conn *cc;
    int n;
} all_done_ctx;

static int all_done(void *p) {
    all_done_ctx *a = p;
    for (int i = 0; i < a->n; i++) {
        cli_conn *cc = &a->cc[i];
        if (cc->closed) return 1;
        cli_push(cc);
        if (cc->echoed < cc->to_send || cc->own_got < cc->own_expected) return 0;
    }
    return 1;
}

Test(transport, tls_random_messages_both_ways, .timeout = 120) {
    uint64_t seed = test_seed("tls_random_messages_both_ways");
    wt_tls tls;
    cr_assert_eq(wt_tls_make(&tls), 0, "openssl could not make a test certificate");
    srv_state st;
    srv_state_init(&st);
    st.own_count = 60;
    st.own_seed = seed ^ 0xABCDEFull;
    char err[256];
    nawal_ws_config scfg = tls_server_cfg(&tls);
    nawal_ws_handlers sh = srv_handlers(&st);
    wt_server ws = { 0 };
    ws.srv = nawal_ws_server_new(&scfg, &sh, err, sizeof err);
    cr_assert(ws.srv, "server: %s", err);
    int port = nawal_ws_server_port(ws.srv);
    cr_assert_gt(port, 0);
    cr_assert_eq(wt_server_start(&ws), 0);

    nawal_ws_config ccfg = { 0 };
    ccfg.ca_file = tls.cert; /* verified against the CA, not "allow self-signed" */
    ccfg.max_message = MSG_MAX;
    nawal_ws_client *cl = nawal_ws_client_new(&ccfg, &cli_h, err, sizeof err);
    cr_assert(cl, "client: %s", err);

    /* two connections at once, each echoing its own stream and receiving the server's */
    cli_conn cc[2];
    for (int i = 0; i < 2; i++) {
        connect_to(cl, port, &cc[i]);
        cc[i].send_rng = cc[i].check_rng = seed + 1000u * (uint64_t)i;
        cc[i].own_rng = st.own_seed;
        cc[i].to_send = 80;
        cc[i].own_expected = st.own_count;
        cc[i].pending = malloc(MSG_MAX);
        cc[i].expect = malloc(MSG_MAX);
    }
    all_done_ctx ad = { cc, 2 };
    double t0 = wt_now();
    cr_assert(wt_client_until(cl, all_done, &ad, 90), "timed out: echoed %d/%d and %d/%d, own %d/%d and %d/%d",
              cc[0].echoed, cc[0].to_send, cc[1].echoed, cc[1].to_send, cc[0].own_got, cc[0].own_expected,
              cc[1].own_got, cc[1].own_expected);
    for (int i = 0; i < 2; i++) {
        cr_assert(!cc[i].closed, "connection %d dropped: %s", i, cc[i].reason);
        cr_assert_eq(cc[i].bad, 0, "connection %d: %d messages differ", i, cc[i].bad);
        cr_assert_eq(cc[i].echoed, cc[i].to_send);
        cr_assert_eq(cc[i].own_got, st.own_count);
        cr_assert_eq(cc[i].plain_got, 0);
    }
    fprintf(stderr, "[tls_random_messages_both_ways] %.2f s\n", wt_now() - t0);
    cr_assert_eq(srv_get(&st, &st.opens), 2);
    cr_assert_eq(srv_get(&st, &st.send_failures), 0);

    /* an empty message and one of exactly max_message bytes go through too */
    cc[0].plain_got = 0;
    cr_assert_eq(nawal_ws_send(cc[0].c, "", 0), 0);
    cr_assert(wt_client_until(cl, ping_pong_done, &cc[0], 10));
    cr_assert_eq(cc[0].last_len, 0);
    uint8_t *big = calloc(1, MSG_MAX);
    big[MSG_MAX - 1] = 7; /* tag 0: neither stream */
    cc[0].plain_got = 0;
    cr_assert_eq(nawal_ws_send(cc[0].c, big, MSG_MAX), 0);
    cr_assert(wt_client_until(cl, ping_pong_done, &cc[0], 20));
    cr_assert(!cc[0].closed, "%s", cc[0].reason);
    cr_assert_eq(cc[0].last_len, MSG_MAX);
    /* and one byte more is refused locally */
    errno = 0;
    cr_assert_eq(nawal_ws_send(cc[0].c, big, MSG_MAX + 1), -1);
    cr_assert_eq(errno, EMSGSIZE);
    free(big);

    nawal_ws_client_free(cl); /* closes both: on_close runs for each */
    for (int i = 0; i < 2; i++) {
        cr_assert(cc[i].closed);
        cli_conn_free(&cc[i]);
    }
    wt_server_stop(&ws);
    cr_assert_eq(st.closes, 2);
    wt_tls_remove(&tls);
}

Test(transport, tls_certificate_checks, .timeout = 60) {
    wt_tls tls;
    cr_assert_eq(wt_tls_make(&tls), 0);
    srv_state st;
    srv_state_init(&st);
    char err[256];
    nawal_ws_config scfg = tls_server_cfg(&tls);
    nawal_ws_handlers sh = srv_handlers(&st);
    wt_server ws = { 0 };
    ws.srv = nawal_ws_server_new(&scfg, &sh, err, sizeof err);
    cr_assert(ws.srv, "server: %s", err);
    int port = nawal_ws_server_port(ws.srv);
    cr_assert_eq(wt_server_start(&ws), 0);

    /* a CA file that does not vouch for the server's certificate: refused
     * (another throw-away certificate; the system store would do too, but
     * parsing it is slow under the sanitizers) */
    wt_tls other;
    cr_assert_eq(wt_tls_make(&other), 0);
    nawal_ws_config strict = { 0 };
    strict.ca_file = other.cert;
    nawal_ws_client *cl = nawal_ws_client_new(&strict, &cli_h, err, sizeof err);
    cr_assert(cl, "%s", err);
    cli_conn a;
    connect_to(cl, port, &a);
    cr_assert(wt_client_until(cl, is_opened, &a, 10));
    cr_assert(!a.opened, "connected to an unverified server");
    cr_assert(a.closed);
    nawal_ws_client_free(cl);

    /* explicitly allowing self-signed (tests only): accepted */
    nawal_ws_config lax = { 0 };
    lax.allow_self_signed = 1;
    lax.ca_file = other.cert; /* still not vouching for the server */
    cl = nawal_ws_client_new(&lax, &cli_h, err, sizeof err);
    cr_assert(cl, "%s", err);
    connect_to(cl, port, &a);
    cr_assert(wt_client_until(cl, is_opened, &a, 10));
    cr_assert(a.opened, "self-signed allowed but refused: %s", a.reason);
    check_alive(cl, &a);

    /* a plaintext client against the TLS port gets nowhere */
    nawal_ws_config plain = { 0 };
    plain.insecure_plaintext = 1;
    nawal_ws_client *pc = nawal_ws_client_new(&plain, &cli_h, err, sizeof err);
    cr_assert(pc, "%s", err);
    cli_conn b;
    connect_to(pc, port, &b);
    cr_assert(wt_client_until(pc, is_opened, &b, 10));
    cr_assert(!b.opened);
    nawal_ws_client_free(pc);

    /* junk instead of a TLS handshake: dropped, the TLS client carries on */
    int fd = wt_raw_connect(port);
    cr_assert_geq(fd, 0);
    const char junk[] = "GET / HTTP/1.1\r\n\r\n\x01\x02\x03 this is not TLS";
    wt_raw_send(fd, junk, sizeof junk);
    cr_assert(wt_raw_wait_closed(fd, 10), "junk TLS peer not dropped");
    close(fd);
    check_alive(cl, &a);
    nawal_ws_client_free(cl);
    wt_server_stop(&ws);

    /* a server without certificate files refuses to start unless told plaintext */
    nawal_ws_config nocert = { 0 };
    nocert.bind_addr = "127.0.0.1";
    cr_assert_null(nawal_ws_server_new(&nocert, &sh, err, sizeof err));
    cr_assert(strstr(err, "TLS"), "%s", err);
    nocert.cert_file = "/nonexistent/cert.pem";
    nocert.key_file = "/nonexistent/key.pem";
    cr_assert_null(nawal_ws_server_new(&nocert, &sh, err, sizeof err));
    cr_assert(strstr(err, "/nonexistent/cert.pem"), "%s", err);
    /* and a client whose CA file is missing */
    nawal_ws_config noca = { 0 };
    noca.ca_file = "/nonexistent/ca.pem";
    cr_assert_null(nawal_ws_client_new(&noca, &cli_h, err, sizeof err));
    cr_assert(strstr(err, "/nonexistent/ca.pem"), "%s", err);
    wt_tls_remove(&other);
    wt_tls_remove(&tls);
}

/* plaintext server on loopback for the raw-socket peers */
static void plain_server(wt_server *ws, srv_state *st, int max_conn, int ping, int dead) {
    char err[256];
    nawal_ws_config cfg = { 0 };
    cfg.insecure_plaintext = 1;
    cfg.bind_addr = "127.0.0.1";
    cfg.max_message = 1u << 20;
    cfg.max_connections = max_conn;
    cfg.ping_secs = ping;
    cfg.dead_secs = dead;
    nawal_ws_handlers sh = srv_handlers(st);
    memset(ws, 0, sizeof *ws);
    ws->srv = nawal_ws_server_new(&cfg, &sh, err, sizeof err);
    cr_assert(ws->srv, "server: %s", err);
    cr_assert_eq(wt_server_start(ws), 0);
}

static nawal_ws_client *plain_client(size_t max_message) {
    char err[256];
    nawal_ws_config cfg = { 0 };
    cfg.insecure_plaintext = 1;
    cfg.max_message = max_message;
    nawal_ws_client *cl = nawal_ws_client_new(&cfg, &cli_h, err, sizeof err);
    cr_assert(cl, "%s", err);
    return cl;
}

Test(transport, bad_peers_dropped_others_unaffected, .timeout = 60) {
    uint64_t seed = test_seed("bad_peers_dropped_others_unaffected");
    srv_state st;
    srv_state_init(&st);
    wt_server ws;
    plain_server(&ws, &st, 16, 20, 60);
    int port = nawal_ws_server_port(ws.srv);
    nawal_ws_client *cl = plain_client(8u << 20);
    cli_conn good;
    connect_to(cl, port, &good);
    cr_assert(wt_client_until(cl, is_opened, &good, 10));
    cr_assert(good.opened, "%s", good.reason);
    check_alive(cl, &good);

    uint8_t payload[4096];
    for (size_t i = 0; i < sizeof payload; i++) payload[i] = (uint8_t)test_rand_u64(&seed);

    /* 1. a text message */
    int fd = wt_raw_connect(port);
    cr_assert_eq(wt_raw_handshake(fd), 0, "raw handshake refused");
    wt_raw_frame(fd, 0x81, (const uint8_t *)"hello", 5, 5);
    cr_assert(wt_raw_wait_closed(fd, 10), "text message did not drop the peer");
    close(fd);
    check_alive(cl, &good);

    /* 2. a reserved opcode */
    fd = wt_raw_connect(port);
    cr_assert_eq(wt_raw_handshake(fd), 0);
    wt_raw_frame(fd, 0x83, payload, 16, 16);
    cr_assert(wt_raw_wait_closed(fd, 10), "reserved opcode did not drop the peer");
    close(fd);
    check_alive(cl, &good);

    /* 3. random garbage after the handshake (first byte with RSV bits set) */
    fd = wt_raw_connect(port);
    cr_assert_eq(wt_raw_handshake(fd), 0);
    payload[0] |= 0x70;
    wt_raw_send(fd, payload, sizeof payload);
    cr_assert(wt_raw_wait_closed(fd, 10), "garbage frames did not drop the peer");
    close(fd);
    check_alive(cl, &good);

    /* 4. a binary frame announcing 2^40 bytes: dropped at its first bytes */
    fd = wt_raw_connect(port);
    cr_assert_eq(wt_raw_handshake(fd), 0);
    wt_raw_frame(fd, 0x82, payload, (uint64_t)1 << 40, 1024);
    cr_assert(wt_raw_wait_closed(fd, 10), "oversize frame header did not drop the peer");
    close(fd);
    check_alive(cl, &good);

    /* 5. a message split into frames that add up to more than the limit */
    fd = wt_raw_connect(port);
    cr_assert_eq(wt_raw_handshake(fd), 0);
    uint8_t *chunk = calloc(1, 300 << 10);
    wt_raw_frame(fd, 0x02, chunk, 300 << 10, 300 << 10); /* binary, no FIN */
    int dropped = 0;
    for (int i = 0; i < 8 && !dropped; i++) {
        if (wt_raw_frame(fd, 0x00, chunk, 300 << 10, 300 << 10)) dropped = 1; /* continuation */
    }
    free(chunk);
    cr_assert(wt_raw_wait_closed(fd, 10), "fragmented oversize message did not drop the peer");
    close(fd);
    check_alive(cl, &good);

    /* 6. not even HTTP */
    fd = wt_raw_connect(port);
    wt_raw_send(fd, "\x16\x03\x01garbage\r\n\r\n", 14);
    cr_assert(wt_raw_wait_closed(fd, 10), "non-HTTP junk did not drop the peer");
    close(fd);

    /* 7. plain HTTP without an upgrade is not served */
    fd = wt_raw_connect(port);
    const char *get = "GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n";
    wt_raw_send(fd, get, strlen(get));
    cr_assert(wt_raw_wait_closed(fd, 10), "plain HTTP request not closed");
    close(fd);

    /* 8. a well-formed client sending a message over the server's limit */
    cli_conn big;
    connect_to(cl, port, &big);
    cr_assert(wt_client_until(cl, is_opened, &big, 10));
    cr_assert(big.opened);
    uint8_t *huge = calloc(1, (1u << 20) + 1);
    cr_assert_eq(nawal_ws_send(big.c, huge, (1u << 20) + 1), 0);
    free(huge);
    cr_assert(wt_client_until(cl, is_closed, &big, 10), "oversize message did not drop the client");
    pthread_mutex_lock(&st.mu);
    int why = strstr(st.last_reason, "larger than") != NULL;
    pthread_mutex_unlock(&st.mu);
    cr_assert(why, "server's reason: %s", st.last_reason);

    check_alive(cl, &good);
    cr_assert_eq(srv_get(&st, &st.send_failures), 0);
    nawal_ws_client_free(cl);
    wt_server_stop(&ws);
}

Test(transport, connection_limit, .timeout = 60) {
    srv_state st;
    srv_state_init(&st);
    wt_server ws;
    plain_server(&ws, &st, 2, 20, 60);
    int port = nawal_ws_server_port(ws.srv);
    nawal_ws_client *cl = plain_client(1u << 20);
    cli_conn c[4];
    for (int i = 0; i < 2; i++) {
        connect_to(cl, port, &c[i]);
        cr_assert(wt_client_until(cl, is_opened, &c[i], 10));
        cr_assert(c[i].opened, "connection %d: %s", i, c[i].reason);
    }
    connect_to(cl, port, &c[2]);
    cr_assert(wt_client_until(cl, is_opened, &c[2], 10));
    cr_assert(!c[2].opened, "third connection admitted over a limit of 2");
    cr_assert_eq(srv_get(&st, &st.opens), 2);
    check_alive(cl, &c[0]);
    check_alive(cl, &c[1]);

    /* a place frees up: the next one is admitted */
    nawal_ws_close(c[0].c, "done");
    cr_assert(wt_client_until(cl, is_closed, &c[0], 10));
    double t0 = wt_now();
    while (srv_get(&st, &st.closes) < 1 && wt_now() - t0 < 10) nawal_ws_client_service(cl, 10);
    connect_to(cl, port, &c[3]);
    cr_assert(wt_client_until(cl, is_opened, &c[3], 10));
    cr_assert(c[3].opened, "%s", c[3].reason);
    check_alive(cl, &c[3]);
    nawal_ws_client_free(cl);
    wt_server_stop(&ws);
}

typedef struct {
    nawal_ws_client *cl;
    double until;
} spin_ctx;

static int time_up(void *p) { return wt_now() >= ((spin_ctx *)p)->until; }

Test(transport, keepalive_drops_silent_peer, .timeout = 60) {
    srv_state st;
    srv_state_init(&st);
    wt_server ws;
    plain_server(&ws, &st, 8, 1, 2); /* PING after 1 s, drop after 2 s without PONG */
    int port = nawal_ws_server_port(ws.srv);

    /* a nawal client answers PINGs (inside its service loop) and stays */
    nawal_ws_config ccfg = { 0 };
    ccfg.insecure_plaintext = 1;
    ccfg.ping_secs = 1;
    ccfg.dead_secs = 2;
    char err[256];
    nawal_ws_client *cl = nawal_ws_client_new(&ccfg, &cli_h, err, sizeof err);
    cr_assert(cl, "%s", err);
    cli_conn good;
    connect_to(cl, port, &good);
    cr_assert(wt_client_until(cl, is_opened, &good, 10));

    /* a raw peer that completes the handshake, then never answers */
    int fd = wt_raw_connect(port);
    cr_assert_eq(wt_raw_handshake(fd), 0);
    double t0 = wt_now();
    spin_ctx sp = { cl, t0 + 4.5 };
    wt_client_until(cl, time_up, &sp, 10);
    /* by now (4.5 s > 2 s) the silent peer must be gone; the client kept its connection */
    cr_assert(wt_raw_wait_closed(fd, 0.5), "silent peer still connected after %.1f s", wt_now() - t0);
    close(fd);
    cr_assert(!good.closed, "responsive client dropped: %s", good.reason);
    check_alive(cl, &good);
    nawal_ws_client_free(cl);
    wt_server_stop(&ws);
}

/* the server stops reading; the client's queue fills (EAGAIN), and drains after the server resumes */
typedef struct {
    int drains;
} drain_count;

static drain_count g_drains;
static void cli_drain(nawal_ws_conn *c, void *user) {
    (void)c;
    (void)user;
    g_drains.drains++;
}

typedef struct {
    srv_state *st;
    long long want;
} recv_ctx;

static int server_got_all(void *p) {
    recv_ctx *r = p;
    pthread_mutex_lock(&r->st->mu);
    long long v = r->st->received;
    pthread_mutex_unlock(&r->st->mu);
    return v >= r->want;
}

static nawal_ws_conn *g_paused[4];
static int g_npaused;
static void pause_open(nawal_ws_conn *c, void *user) {
    srv_open(c, user);
    if (g_npaused < 4) g_paused[g_npaused++] = c;
}

static void unpause_between(wt_server *s) {
    srv_state *st = s->ctx;
    if (atomic_load(&st->resume) == 1) {
        for (int i = 0; i < g_npaused; i++) nawal_ws_pause_rx(g_paused[i], 0);
        atomic_store(&st->resume, 2);
    }
}

Test(transport, send_queue_back_pressure, .timeout = 60) {
    srv_state st;
    srv_state_init(&st);
    st.echo = 0;
    st.pause_rx = 1;
    char err[256];
    nawal_ws_config scfg = { 0 };
    scfg.insecure_plaintext = 1;
    scfg.bind_addr = "127.0.0.1";
    nawal_ws_handlers sh = { pause_open, srv_message, NULL, srv_close, &st };
    wt_server ws = { 0 };
    ws.srv = nawal_ws_server_new(&scfg, &sh, err, sizeof err);
    cr_assert(ws.srv, "%s", err);
    ws.between = unpause_between;
    ws.ctx = &st;
    cr_assert_eq(wt_server_start(&ws), 0);

    nawal_ws_config ccfg = { 0 };
    ccfg.insecure_plaintext = 1;
    ccfg.queue_msgs = 8;
    ccfg.queue_bytes = 8u << 20;
    nawal_ws_handlers ch = cli_h;
    ch.on_drain = cli_drain;
    nawal_ws_client *cl = nawal_ws_client_new(&ccfg, &ch, err, sizeof err);
    cr_assert(cl, "%s", err);
    cli_conn cc;
    connect_to(cl, nawal_ws_server_port(ws.srv), &cc);
    cr_assert(wt_client_until(cl, is_opened, &cc, 10));

    /* 1 MiB messages into a peer that does not read: the kernel buffers fill, then our queue */
    uint8_t *m = calloc(1, 1u << 20);
    int queued = 0, refused = 0;
    double t0 = wt_now();
    while (!refused && wt_now() - t0 < 20) {
        if (nawal_ws_send(cc.c, m, 1u << 20) == 0) queued++;
        else {
            cr_assert_eq(errno, EAGAIN);
            refused = 1;
        }
        nawal_ws_client_service(cl, 0);
    }
    cr_assert(refused, "queue never filled after %d messages", queued);
    cr_assert_leq(nawal_ws_queued(cc.c), 8);
    g_drains.drains = 0;
    atomic_store(&st.resume, 1);
    nawal_ws_server_wake(ws.srv);
    recv_ctx rc = { &st, queued };
    cr_assert(wt_client_until(cl, server_got_all, &rc, 20), "server got %lld of %d", st.received, queued);
    cr_assert_gt(g_drains.drains, 0, "on_drain never fired");
    cr_assert_eq(nawal_ws_queued(cc.c), 0);
    free(m);
    nawal_ws_client_free(cl);
    wt_server_stop(&ws);
}

Test(transport, config_errors) {
    char err[256];
    nawal_ws_handlers h = { 0 };
    nawal_ws_config cfg = { 0 };
    cfg.insecure_plaintext = 1;
    cfg.ping_secs = 10;
    cfg.dead_secs = 5;
    cr_assert_null(nawal_ws_server_new(&cfg, &h, err, sizeof err));
    cr_assert(strstr(err, "keepalive"), "%s", err);
    cr_assert_null(nawal_ws_client_new(&cfg, &h, err, sizeof err));
    cfg.ping_secs = cfg.dead_secs = 0;
    cfg.io_chunk = 10;
    cr_assert_null(nawal_ws_client_new(&cfg, &h, err, sizeof err));
    cfg.io_chunk = 0;
    nawal_ws_client *cl = nawal_ws_client_new(&cfg, &h, err, sizeof err);
    cr_assert(cl, "%s", err);
    cr_assert_null(nawal_ws_client_connect(cl, "127.0.0.1", 0, "/", err, sizeof err));
    cr_assert_null(nawal_ws_client_connect(cl, "", 80, "/", err, sizeof err));
    nawal_ws_client_free(cl);
}
