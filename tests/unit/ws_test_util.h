/* ws_test_util.h - helpers for the transport and blob-streaming tests: a
 * throw-away self-signed TLS certificate made with the openssl command in a
 * temporary directory (never committed), a server serviced on its own thread,
 * a client loop that runs until a condition holds, and a raw TCP "client"
 * that speaks just enough WebSocket to send malformed frames. Assertions are
 * made on the test's main thread only; the server thread records what it
 * sees in shared state. */
#ifndef NAWAL_WS_TEST_UTIL_H
#define NAWAL_WS_TEST_UTIL_H

#include "transport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* LeakSanitizer: libwebsockets 4.1.6 takes a new global SSL_CTX ex_data
 * index each time a TLS context is created, so with two contexts in one
 * process (these tests run a server and a client) the older context's
 * client SSL_CTX is not found, hence not freed, when it is destroyed: a
 * one-time ~16 KB at exit, the same for 1 or 20 connections. Suppressed
 * for allocations made inside lws_create_vhost only, which needs full
 * stacks through the libraries (no frame pointers there): slow unwinding. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) { return "leak:lws_create_vhost\n"; }
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "fast_unwind_on_malloc=0"; }

static inline double wt_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- TLS material ---- */

typedef struct {
    char dir[64];
    char cert[128];
    char key[128];
} wt_tls;

/* Self-signed P-256 certificate for 127.0.0.1 / localhost, valid one day. */
static inline int wt_tls_make(wt_tls *t) {
    snprintf(t->dir, sizeof t->dir, "/tmp/nawal-tls-XXXXXX");
    if (!mkdtemp(t->dir)) return -1;
    snprintf(t->cert, sizeof t->cert, "%s/cert.pem", t->dir);
    snprintf(t->key, sizeof t->key, "%s/key.pem", t->dir);
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
             "-subj /CN=nawal-test -addext subjectAltName=IP:127.0.0.1,DNS:localhost "
             "-keyout %s -out %s >/dev/null 2>&1", t->key, t->cert);
    return system(cmd) == 0 ? 0 : -1;
}

static inline void wt_tls_remove(wt_tls *t) {
    unlink(t->cert);
    unlink(t->key);
    rmdir(t->dir);
}

/* ---- server on its own thread ---- */

typedef struct wt_server {
    nawal_ws_server *srv;
    pthread_t th;
    atomic_int stop;
    void (*between)(struct wt_server *); /* runs on the server thread between service calls */
    void *ctx;
} wt_server;

static inline void *wt_server_main(void *arg) {
    wt_server *s = arg;
    while (!atomic_load(&s->stop)) {
        nawal_ws_server_service(s->srv, 20);
        if (s->between) s->between(s);
    }
    return NULL;
}

static inline int wt_server_start(wt_server *s) {
    atomic_store(&s->stop, 0);
    return pthread_create(&s->th, NULL, wt_server_main, s);
}

/* stops the thread, then frees the server (its on_close handlers run here) */
static inline void wt_server_stop(wt_server *s) {
    atomic_store(&s->stop, 1);
    nawal_ws_server_wake(s->srv);
    pthread_join(s->th, NULL);
    nawal_ws_server_free(s->srv);
    s->srv = NULL;
}

/* services the client until done(ctx) or the timeout; returns done(ctx) */
static inline int wt_client_until(nawal_ws_client *cl, int (*done)(void *), void *ctx, double timeout_s) {
    double t0 = wt_now();
    while (!done(ctx) && wt_now() - t0 < timeout_s) nawal_ws_client_service(cl, 10);
    return done(ctx);
}

/* ---- raw TCP peer ---- */

static inline int wt_raw_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    return fd;
}

static inline int wt_raw_send(int fd, const void *buf, size_t n) {
    const uint8_t *p = buf;
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* HTTP upgrade by hand; 0 when the server answered 101 */
static inline int wt_raw_handshake(int fd) {
    const char *req = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                      "Sec-WebSocket-Protocol: " NAWAL_WS_SUBPROTOCOL "\r\n\r\n";
    if (wt_raw_send(fd, req, strlen(req))) return -1;
    char buf[2048];
    size_t n = 0;
    while (n < sizeof buf - 1) {
        struct pollfd p = { fd, POLLIN, 0 };
        if (poll(&p, 1, 5000) <= 0) return -1;
        ssize_t r = recv(fd, buf + n, 1, 0); /* byte by byte: leave frames after the headers unread */
        if (r <= 0) return -1;
        n++;
        buf[n] = 0;
        if (n >= 4 && !memcmp(buf + n - 4, "\r\n\r\n", 4)) break;
    }
    return strstr(buf, " 101 ") ? 0 : -1;
}

/* one client frame (masked, as a client must) with any header byte */
static inline int wt_raw_frame(int fd, uint8_t b0, const uint8_t *payload, uint64_t declared, size_t n) {
    uint8_t h[14];
    size_t hl = 0;
    h[hl++] = b0;
    if (declared < 126) h[hl++] = (uint8_t)(0x80 | declared);
    else if (declared < 65536) {
        h[hl++] = 0x80 | 126;
        h[hl++] = (uint8_t)(declared >> 8);
        h[hl++] = (uint8_t)declared;
    } else {
        h[hl++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) h[hl++] = (uint8_t)(declared >> (8 * i));
    }
    const uint8_t mask[4] = { 0x12, 0x34, 0x56, 0x78 };
    memcpy(h + hl, mask, 4);
    hl += 4;
    if (wt_raw_send(fd, h, hl)) return -1;
    uint8_t *m = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) m[i] = payload[i] ^ mask[i & 3];
    int rc = wt_raw_send(fd, m, n);
    free(m);
    return rc;
}

/* 1 when the peer closed the socket within timeout_s (whatever it sent first is discarded) */
static inline int wt_raw_wait_closed(int fd, double timeout_s) {
    double t0 = wt_now();
    char buf[4096];
    while (wt_now() - t0 < timeout_s) {
        struct pollfd p = { fd, POLLIN, 0 };
        int pr = poll(&p, 1, 50);
        if (pr < 0) return 0;
        if (pr == 0) continue;
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN)) return 1;
    }
    return 0;
}

#endif
