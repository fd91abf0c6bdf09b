/* serve.c - `nawal-coordinator serve` (see serve.h): set-up (directory, TLS
 * material, transport, round machine thread), the event loop, and what the
 * loop does besides serving connections: ticking the round machine when
 * its next deadline comes (the ticker's reports say when), watching the
 * database for rounds that ended (RoundResult) and rounds announced
 * (RoundAnnounce), also when another process (`round start`) made them,
 * closing unauthenticated connections, and a clean stop on SIGINT/SIGTERM. */
#include "serve.h"

#include "cid.h"
#include "error.h"
#include "log.h"
#include "roundmsg.h"
#include "rounds.h"
#include "serve_internal.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define LOOP_WAIT_MS 100      /* longest wait of one service call: signals and timers are seen this fast */
#define WATCH_EVERY_MS 1000   /* database watch and unauthenticated sweep */
#define TICK_RETRY_MS 5000    /* after a failed tick */

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

/* ---- listen address ------------------------------------------------------------ */

int nawal_listen_parse(const char *text, char *host, size_t cap, int *port, char *err, size_t errlen) {
    if (!text || !*text) return nawal_fail(err, errlen, "empty listen address (want HOST:PORT)");
    const char *colon, *h = text;
    size_t hl;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':') return nawal_fail(err, errlen, "'%s': want [IPV6]:PORT", text);
        h = text + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(text, ':');
        if (!colon) return nawal_fail(err, errlen, "'%s': want HOST:PORT", text);
        if (memchr(text, ':', (size_t)(colon - text))) return nawal_fail(err, errlen, "'%s': an IPv6 host goes in brackets", text);
        hl = (size_t)(colon - text);
    }
    const char *p = colon + 1;
    char *end;
    errno = 0;
    long v = strtol(p, &end, 10);
    if (!*p || *end || errno || v < 0 || v > 65535 || *p == '-' || *p == '+' || *p == ' ')
        return nawal_fail(err, errlen, "'%s': port must be a number in 0..65535", text);
    if (hl >= cap) return nawal_fail(err, errlen, "'%s': host name too long", text);
    memcpy(host, h, hl);
    host[hl] = '\0';
    if (!strcmp(host, "*")) host[0] = '\0';
    *port = (int)v;
    return 0;
}

int nawal_listen_is_loopback(const char *host) {
    if (!strcmp(host, "localhost")) return 1;
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1) return IN6_IS_ADDR_LOOPBACK(&a6);
    return 0;
}

/* ---- shared helpers (serve_internal.h) -------------------------------------------- */

static uint64_t next_seq(nawal_server *srv) {
    uint64_t t = nawal_now_ms() * 1000; /* time-based: only grows, across restarts too */
    srv->seq = t > srv->seq ? t : srv->seq + 1;
    return srv->seq;
}

int nawal_server_seal(nawal_server *srv, uint32_t type, const ProtobufCMessage *msg, uint8_t **out, size_t *len) {
    char err[256];
    if (nawal_envelope_seal_msg(srv->id, type, next_seq(srv), nawal_now_ms(), msg, out, len, err, sizeof err) == 0)
        return 0;
    char q[300];
    nawal_log(NAWAL_LOG_ERROR, "seal_failed", "type=%s error=%s", nawal_msg_type_name(type),
              nawal_log_quote(q, sizeof q, err));
    return -1;
}

int nawal_server_seal_payload(nawal_server *srv, uint32_t type, const uint8_t *payload, size_t plen, uint8_t **out,
                              size_t *len) {
    return nawal_envelope_seal(srv->id, type, next_seq(srv), nawal_now_ms(), payload, plen, out, len, NULL, 0);
}

static int is_open_state(nawal_round_state st) {
    return st == NAWAL_ROUND_ANNOUNCED || st == NAWAL_ROUND_JOINING || st == NAWAL_ROUND_TRAINING;
}

static int is_final_state(nawal_round_state st) { return st == NAWAL_ROUND_CLOSED || st == NAWAL_ROUND_FAILED; }

int nawal_server_open_round(nawal_server *srv, nawal_round *r) {
    return nawal_store_round_latest(srv->store, r, NULL, 0) == 0 && is_open_state(r->state);
}

void nawal_server_poke(nawal_server *srv) { nawal_ticker_request(srv->ticker); }

void nawal_server_note_epsilon(nawal_server *srv, int64_t round_id, double epsilon) {
    if (srv->epsilon_round != round_id) {
        srv->epsilon_round = round_id;
        srv->epsilon_max = 0;
    }
    if (epsilon > srv->epsilon_max && epsilon < 1e300) srv->epsilon_max = epsilon;
    nawal_metric_set(srv->m.reg, srv->m.epsilon_max, NULL, srv->epsilon_max);
}

/* ---- rounds: what the agents are told ------------------------------------------------- */

static void broadcast(nawal_server *srv, uint32_t type, const ProtobufCMessage *msg) {
    uint8_t *buf;
    size_t len;
    if (srv->n_authed == 0 || nawal_server_seal(srv, type, msg, &buf, &len)) return;
    nawal_session_broadcast(srv, buf, len);
    free(buf);
}

/* A round ended: count it, ask for evaluations of its new model and send its RoundResult. */
static void round_ended(nawal_server *srv, const nawal_round *r) {
    char err[256];
    if (r->state == NAWAL_ROUND_CLOSED) {
        nawal_metric_add(srv->m.reg, srv->m.rounds_closed, NULL, 1);
        uint64_t rejected = 0;
        if (nawal_round_counts(srv->store, r->id, NULL, NULL, &rejected, NULL, 0) == 0 && rejected)
            nawal_serve_metrics_rejected(&srv->m, "aggregation", (double)rejected);
    } else {
        nawal_metric_add(srv->m.reg, srv->m.rounds_failed, NULL, 1);
    }
    /* traffic so far, for per-round figures (`sim` reads these lines) */
    nawal_log(NAWAL_LOG_INFO, "round_ended", "round=%lld state=%s bytes_received=%.0f bytes_sent=%.0f", (long long)r->id,
              nawal_round_state_name(r->state), nawal_metric_get(srv->m.reg, srv->m.bytes_in, NULL),
              nawal_metric_get(srv->m.reg, srv->m.bytes_out, NULL));
    /* the evaluation request first: an agent stopping after this round's result still answers it */
    if (r->state == NAWAL_ROUND_CLOSED) nawal_session_request_evaluation(srv, r);
    nawal_result_msg res;
    if (nawal_result_build(srv->store, r, &res, err, sizeof err) == 0)
        broadcast(srv, NAWAL__MSG_TYPE__MSG_ROUND_RESULT, &res.msg.base);
    else
        nawal_log(NAWAL_LOG_ERROR, "round_result_failed", "round=%lld", (long long)r->id);
    nawal_result_free(&res);
}

/* Compares the database with what the agents were told: the watched round
 * ended -> RoundResult; a round open for joins not announced yet ->
 * RoundAnnounce. Returns 1 when something changed (tick again, for its
 * timers). */
static int watch_rounds(nawal_server *srv) {
    nawal_round r;
    if (nawal_store_round_latest(srv->store, &r, NULL, 0)) return 0;
    int changed = 0;
    if (srv->watched_round && (srv->watched_round != r.id || is_final_state(r.state))) {
        nawal_round w;
        if (srv->watched_round == r.id) w = r;
        else if (nawal_store_round_get(srv->store, srv->watched_round, &w, NULL, 0)) w.state = NAWAL_ROUND_TRAINING;
        if (is_final_state(w.state)) {
            round_ended(srv, &w);
            changed = 1;
        }
        srv->watched_round = 0; /* ended (or, never, gone from view): watch the latest */
    }
    if (!srv->watched_round && !is_final_state(r.state)) {
        srv->watched_round = r.id;
        changed = 1;
    }
    if (r.id != srv->announced_round && (r.state == NAWAL_ROUND_ANNOUNCED || r.state == NAWAL_ROUND_JOINING)) {
        nawal_announce_msg a;
        char err[256];
        if (nawal_announce_build(srv->store, &r, &a, err, sizeof err) == 0) {
            broadcast(srv, NAWAL__MSG_TYPE__MSG_ROUND_ANNOUNCE, &a.msg.base);
            srv->announced_round = r.id;
            changed = 1;
        }
    }
    return changed;
}

/* ---- set-up and the loop ---------------------------------------------------------------- */

/* Uploads untouched for a day (agents that never came back to resume) go. */
#define UPLOAD_MAX_AGE_S (24 * 3600)

static void clean_uploads(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    time_t now = time(NULL);
    char path[4400];
    for (struct dirent *e; (e = readdir(d));) {
        struct stat sb;
        if (e->d_name[0] == '.' || (size_t)snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= sizeof path) continue;
        if (lstat(path, &sb) == 0 && S_ISREG(sb.st_mode) && now - sb.st_mtime > UPLOAD_MAX_AGE_S && unlink(path) == 0)
            nawal_log(NAWAL_LOG_INFO, "upload_expired", "file=%s", e->d_name);
    }
    closedir(d);
}


static void wake(void *ctx) {
    nawal_server *srv = ctx;
    nawal_ws_server_wake(srv->ws);
}

/* TLS material: the options, else the directory's settings. */
static int tls_files(nawal_server *srv, const nawal_serve_options *o, char **cert, char **key, char *err, size_t errlen) {
    *cert = *key = NULL;
    if (o->insecure_plaintext) return 0;
    if (o->cert_file) *cert = strdup(o->cert_file);
    else if (nawal_store_setting_get(srv->store, NAWAL_SETTING_TLS_CERT, cert, NULL, 0) < 0) *cert = NULL;
    if (o->key_file) *key = strdup(o->key_file);
    else if (nawal_store_setting_get(srv->store, NAWAL_SETTING_TLS_KEY, key, NULL, 0) < 0) *key = NULL;
    if (*cert && *key) return 0;
    free(*cert);
    free(*key);
    *cert = *key = NULL;
    return nawal_fail(err, errlen, "no TLS certificate and key: give --cert F --key F, or store them with "
                                   "'init --tls-cert F --tls-key F' (--insecure-plaintext is for loopback tests only)");
}

int nawal_serve_run(const nawal_serve_options *o, char *err, size_t errlen) {
    char host[256];
    int port;
    if (nawal_listen_parse(o->listen, host, sizeof host, &port, err, errlen)) return -1;
    if (o->insecure_plaintext && !nawal_listen_is_loopback(host))
        return nawal_fail(err, errlen, "--insecure-plaintext is for loopback tests only (listen on 127.0.0.1 or ::1)");
    if (!strcmp(host, "localhost")) snprintf(host, sizeof host, "127.0.0.1");

    nawal_server *srv = calloc(1, sizeof *srv);
    if (!srv) return nawal_fail(err, errlen, "out of memory");
    char *cert = NULL, *key = NULL;
    int rc = -1;
    if (nawal_serve_metrics_init(&srv->m)) {
        nawal_fail(err, errlen, "out of memory");
        goto out;
    }
    if (nawal_store_open(&srv->store, o->dir, 0, err, errlen)) goto out;
    srv->id = nawal_store_identity(srv->store);
    srv->auth_timeout_ms = o->auth_timeout_ms > 0 ? o->auth_timeout_ms : 30000;
    srv->blob_http = !o->no_blob_http;
    nawal_envelope_policy_default(&srv->policy);
    if ((size_t)snprintf(srv->uploads_dir, sizeof srv->uploads_dir, "%s/uploads", o->dir) >= sizeof srv->uploads_dir) {
        nawal_fail(err, errlen, "%s: path too long", o->dir);
        goto out;
    }
    if (mkdir(srv->uploads_dir, 0700) && errno != EEXIST) {
        nawal_fail(err, errlen, "%s: %s", srv->uploads_dir, strerror(errno));
        goto out;
    }
    clean_uploads(srv->uploads_dir);
    if (tls_files(srv, o, &cert, &key, err, errlen)) goto out;

    nawal_ws_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.cert_file = cert;
    cfg.key_file = key;
    cfg.insecure_plaintext = o->insecure_plaintext;
    cfg.bind_addr = host[0] ? host : NULL;
    cfg.port = port;
    cfg.max_connections = o->max_connections;
    if (o->keepalive_s > 0) {
        cfg.ping_secs = o->keepalive_s;
        cfg.dead_secs = 3 * o->keepalive_s;
    }
    nawal_ws_handlers h = { nawal_session_on_open, nawal_session_on_message, nawal_session_on_drain,
                            nawal_session_on_close, srv };
    srv->ws = nawal_ws_server_new(&cfg, &h, err, errlen);
    if (!srv->ws) goto out;
    nawal_ws_server_set_http(srv->ws, nawal_http_handle, srv);
    nawal_agg_config agg = { o->strategy, o->threads };
    if (nawal_ticker_start(&srv->ticker, o->dir, &agg, wake, srv, err, errlen)) goto out;

    nawal_round r;
    if (nawal_store_round_latest(srv->store, &r, NULL, 0) == 0) {
        srv->announced_round = r.id; /* nobody is connected yet: each session gets it after Auth */
        if (!is_final_state(r.state)) srv->watched_round = r.id; /* aggregating after a crash, too */
    }
    nawal_metric_set(srv->m.reg, srv->m.start_time, NULL, (double)nawal_now_ms() / 1000.0);

    struct sigaction sa, old_int, old_term, old_pipe;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: the loop's wait returns */
    sigemptyset(&sa.sa_mask);
    stop_requested = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, &old_pipe);

    char fp[NAWAL_FINGERPRINT_HEX_BYTES];
    nawal_fingerprint(fp, nawal_store_pubkey(srv->store));
    nawal_log(NAWAL_LOG_INFO, "serve_listening", "addr=%s port=%d tls=%s coordinator=%s dir=%s", host[0] ? host : "*",
              nawal_ws_server_port(srv->ws), o->insecure_plaintext ? "off" : "on", fp, o->dir);

    nawal_ticker_request(srv->ticker); /* the first one resumes */
    int64_t next_tick = 0, next_watch = 0;
    rc = 0;
    while (!stop_requested) {
        if (nawal_ws_server_service(srv->ws, LOOP_WAIT_MS)) {
            nawal_fail(err, errlen, "event loop failed");
            rc = -1;
            break;
        }
        int64_t now = (int64_t)nawal_now_ms();
        nawal_ticker_report rep;
        int changed = 0;
        if (nawal_ticker_poll(srv->ticker, &rep)) {
            next_tick = rep.ok ? rep.next_event_ms : now + TICK_RETRY_MS;
            changed = watch_rounds(srv);
        }
        if (now >= next_watch) {
            changed |= watch_rounds(srv);
            nawal_session_sweep(srv, now);
            next_watch = now + WATCH_EVERY_MS;
        }
        if (changed || (next_tick && now >= next_tick)) {
            next_tick = 0;
            nawal_ticker_request(srv->ticker);
        }
    }
    nawal_log(NAWAL_LOG_INFO, "serve_stopping", "connections=%d", srv->n_conns);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGPIPE, &old_pipe, NULL);
out:
    nawal_ticker_stop(srv->ticker); /* waits for a tick in progress */
    if (srv->ws) nawal_ws_server_free(srv->ws); /* closes the sessions */
    if (srv->store) nawal_store_close(srv->store);
    nawal_serve_metrics_free(&srv->m);
    free(cert);
    free(key);
    free(srv);
    if (rc == 0) nawal_log(NAWAL_LOG_INFO, "serve_stopped", "dir=%s", o->dir);
    return rc;
}
