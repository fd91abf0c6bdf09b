/* http.c - the operator's plain HTTP on serve's port (transport.h's HTTP
 * handler): GET /metrics, the Prometheus text exposition (metrics.h) of
 * serve_metrics.h's set, its database gauges refreshed first; GET /status,
 * a JSON summary of the current round and the last ended one (jansson),
 * with the validators' evaluations of a closed round's model; GET
 * /blobs/<cid>, a model blob for an agent holding a session's blob token
 * (serve.h). Anything else is 404, a method other than GET/HEAD is 405. Runs on the event loop
 * thread, on its database connection. */
#include "serve_internal.h"

#include "cid.h"
#include "error.h"
#include "http_range.h"
#include "log.h"
#include "rounds.h"
#include "store_internal.h"

#include <fcntl.h>
#include <jansson.h>
#include <sodium.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CT_METRICS "text/plain; version=0.0.4; charset=utf-8"
#define CT_JSON "application/json"
#define CT_TEXT "text/plain; charset=utf-8"

/* One int64 from a one-row query with an optional int64 parameter; dflt if no row. */
static int64_t query_i64(nawal_store *s, const char *sql, int64_t arg, int64_t dflt) {
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st, sql, NULL, 0)) return dflt;
    if (sqlite3_bind_parameter_count(st) > 0) sqlite3_bind_int64(st, 1, arg);
    int64_t v = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL ? sqlite3_column_int64(st, 0)
                                                                                           : dflt;
    sqlite3_finalize(st);
    return v;
}

static double blob_size(nawal_store *s, const uint8_t cid[32]) {
    char path[4096];
    struct stat sb;
    if (nawal_blobstore_path(s, cid, path, sizeof path) || stat(path, &sb)) return 0;
    return (double)sb.st_size;
}

/* The gauges that describe the database. */
static void refresh(nawal_server *srv) {
    nawal_serve_metrics *m = &srv->m;
    nawal_store *s = srv->store;
    nawal_metric_set(m->reg, m->connections, NULL, srv->n_conns);
    nawal_metric_set(m->reg, m->sessions, NULL, srv->n_authed);
    nawal_metric_set(m->reg, m->validators, NULL,
                     (double)query_i64(s, "SELECT COUNT(*) FROM validators WHERE removed = 0", 0, 0));
    nawal_round r;
    int have = nawal_store_round_latest(s, &r, NULL, 0) == 0;
    uint64_t joined = 0, subs = 0;
    if (have) nawal_round_counts(s, r.id, &joined, &subs, NULL, NULL, 0);
    nawal_metric_set(m->reg, m->round_id, NULL, have ? (double)r.id : 0);
    for (int st = NAWAL_ROUND_ANNOUNCED; st <= NAWAL_ROUND_FAILED; st++) {
        const char *lab[] = { "state", nawal_round_state_name((nawal_round_state)st), NULL };
        nawal_metric_set(m->reg, m->round_state, lab, have && (int)r.state == st ? 1 : 0);
    }
    nawal_metric_set(m->reg, m->participants, NULL, (double)joined);
    nawal_metric_set(m->reg, m->updates, NULL, (double)subs);
    nawal_metric_set(m->reg, m->target, NULL, have ? r.target : 0);
    nawal_metric_set(m->reg, m->model_bytes, NULL, have ? blob_size(s, r.base_cid) : 0);
    int64_t ended = query_i64(s, "SELECT MAX(id) FROM rounds WHERE state IN ('closed', 'failed')", 0, 0);
    nawal_round e;
    if (ended && nawal_store_round_get(s, ended, &e, NULL, 0) == 0 && e.closed_ms >= e.started_ms)
        nawal_metric_set(m->reg, m->round_duration, NULL, (double)(e.closed_ms - e.started_ms) / 1000.0);
    int64_t agg_ms = query_i64(s, "SELECT duration_ms FROM aggregates ORDER BY round_id DESC LIMIT 1", 0, -1);
    if (agg_ms >= 0) nawal_metric_set(m->reg, m->aggregation_seconds, NULL, (double)agg_ms / 1000.0);
    if (!have || srv->epsilon_round != r.id) nawal_metric_set(m->reg, m->epsilon_max, NULL, 0);
    nawal_round c;
    nawal_evaluation_summary ev = {0, 0, NAN};
    int closed = nawal_round_latest_closed(s, &c, NULL, 0) == 1;
    if (closed) nawal_round_evaluation_summary(s, c.id, &ev, NULL, 0);
    nawal_metric_set(m->reg, m->fed_val_round, NULL, closed ? (double)c.id : 0);
    nawal_metric_set(m->reg, m->fed_val_results, NULL, (double)ev.results);
    nawal_metric_set(m->reg, m->fed_val_loss, NULL, isfinite(ev.loss) ? ev.loss : 0);
}

static int reply_text(nawal_ws_http_reply *r, int status, const char *ct, char *body) {
    r->status = status;
    r->content_type = ct;
    r->body = body;
    r->body_len = body ? strlen(body) : 0;
    return body ? 0 : -1;
}

static json_t *time_json(int64_t ms) {
    char t[32];
    return ms ? json_string(nawal_format_ms(t, ms)) : json_null();
}

static json_t *cid_json(const uint8_t cid[32]) {
    char hex[NAWAL_CID_HEX_BYTES];
    nawal_cid_to_hex(hex, cid);
    return json_string(hex);
}

static json_t *u64_json(uint64_t v) { /* money: a decimal string, exact beyond 2^53 */
    char b[24];
    snprintf(b, sizeof b, "%llu", (unsigned long long)v);
    return json_string(b);
}

/* A closed round's evaluations by the validators: {results, tokens, loss (token-weighted mean, null
 * without results)}; null for other rounds. */
static json_t *evaluations_json(nawal_store *s, const nawal_round *r) {
    nawal_evaluation_summary ev;
    if (r->state != NAWAL_ROUND_CLOSED || nawal_round_evaluation_summary(s, r->id, &ev, NULL, 0)) return json_null();
    json_t *o = json_object();
    json_object_set_new(o, "results", json_integer((json_int_t)ev.results));
    json_object_set_new(o, "tokens", json_integer((json_int_t)ev.tokens));
    json_object_set_new(o, "loss", isfinite(ev.loss) ? json_real(ev.loss) : json_null());
    return o;
}

static json_t *round_json(nawal_store *s, const nawal_round *r) {
    uint64_t joined = 0, subs = 0, rejected = 0;
    nawal_round_counts(s, r->id, &joined, &subs, &rejected, NULL, 0);
    json_t *o = json_object();
    json_object_set_new(o, "id", json_integer(r->id));
    json_object_set_new(o, "state", json_string(nawal_round_state_name(r->state)));
    json_object_set_new(o, "base_cid", cid_json(r->base_cid));
    json_object_set_new(o, "model_cid", r->has_model_cid ? cid_json(r->model_cid) : json_null());
    json_object_set_new(o, "started", time_json(r->started_ms));
    json_object_set_new(o, "join_deadline", time_json(r->join_deadline_ms));
    json_object_set_new(o, "deadline", time_json(r->deadline_ms));
    json_object_set_new(o, "ended", time_json(r->closed_ms));
    json_object_set_new(o, "deadline_ms", json_integer(r->deadline_ms));
    json_object_set_new(o, "pool_planck", u64_json(r->pool_planck));
    json_object_set_new(o, "min_stake_planck", u64_json(r->min_stake_planck));
    json_object_set_new(o, "target", json_integer(r->target));
    json_object_set_new(o, "min", json_integer(r->min));
    json_object_set_new(o, "joined", json_integer((json_int_t)joined));
    json_object_set_new(o, "updates", json_integer((json_int_t)subs));
    json_object_set_new(o, "rejected", json_integer((json_int_t)rejected));
    json_object_set_new(o, "federated_val", evaluations_json(s, r));
    return o;
}

static char *status_body(nawal_server *srv) {
    nawal_store *s = srv->store;
    char fp[NAWAL_FINGERPRINT_HEX_BYTES];
    nawal_fingerprint(fp, nawal_store_pubkey(s));
    json_t *o = json_object();
    json_object_set_new(o, "coordinator", json_string(fp));
    json_object_set_new(o, "protocol_version", json_integer(NAWAL__VERSION__PROTOCOL_VERSION));
    json_object_set_new(o, "time", time_json((int64_t)nawal_now_ms()));
    json_object_set_new(o, "connections", json_integer(srv->n_conns));
    json_object_set_new(o, "sessions", json_integer(srv->n_authed));
    json_object_set_new(o, "validators",
                        json_integer(query_i64(s, "SELECT COUNT(*) FROM validators WHERE removed = 0", 0, 0)));
    nawal_round r;
    json_object_set_new(o, "round", nawal_store_round_latest(s, &r, NULL, 0) == 0 ? round_json(s, &r) : json_null());
    int64_t ended = query_i64(s, "SELECT MAX(id) FROM rounds WHERE state IN ('closed', 'failed')", 0, 0);
    nawal_round e;
    json_object_set_new(o, "last_ended", ended && nawal_store_round_get(s, ended, &e, NULL, 0) == 0 ? round_json(s, &e)
                                                                                                : json_null());
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(o);
    if (!text) return NULL;
    size_t n = strlen(text); /* a newline at the end, for terminals */
    char *body = realloc(text, n + 2);
    if (!body) {
        free(text);
        return NULL;
    }
    body[n] = '\n';
    body[n + 1] = '\0';
    return body;
}

#define BLOB_STREAMS_PER_SESSION 2

/* one GET /blobs stream: counted on its session, which it does not outlive */
typedef struct {
    nawal_server *srv;
    uint8_t token[32];
    uint64_t sent, cut; /* cut: NAWAL_SERVE_TEST_HTTP_CUT (0: none) */
} blob_stream;

static int stream_sent(uint64_t bytes, void *user) {
    blob_stream *b = user;
    nawal_metric_add(b->srv->m.reg, b->srv->m.bytes_out, NULL, (double)bytes);
    b->sent += bytes;
    if (b->cut && b->sent >= b->cut) return -1; /* test hook: a body cut short */
    return nawal_session_blob_token_ok(b->srv, b->token) ? 0 : -1; /* the session ended: so does the stream */
}

static void stream_end(void *user) {
    blob_stream *b = user;
    nawal_session_blob_streams(b->srv, b->token, -1);
    sodium_memzero(b->token, sizeof b->token);
    free(b);
}

/* GET [PREFIX]/blobs/<cid hex> with "Authorization: Nawal <token hex>" (a live
 * session's blob token, session.c) and optionally "Range: bytes=N-": the
 * blob, if any validator may download it (a global model or a model patch),
 * as a file range the transport streams, counted in the bytes sent as it
 * goes out, at most BLOB_STREAMS_PER_SESSION at once per session (429), each
 * stopped when its session ends. PREFIX: whatever a reverse proxy put
 * before it. Test hook: with NAWAL_SERVE_TEST_HTTP_CUT=N in the
 * environment every body stops once N bytes or more were written (the
 * agent's fall-back test). */
static int blob_reply(nawal_server *srv, const nawal_ws_http_request *rq, nawal_ws_http_reply *r) {
    uint8_t cid[32], token[32];
    const char *hex = strstr(rq->path, "/blobs/") + 7, *auth = rq->authorization;
    for (const char *n; (n = strstr(hex, "/blobs/"));) hex = n + 7; /* the last one */
    char err[128], path[4096];
    if (strcmp(rq->method, "GET") && strcmp(rq->method, "HEAD"))
        return reply_text(r, 405, CT_TEXT, strdup("method not allowed: GET only\n"));
    int streams = -1; /* the token's live session's streams; -1: no such session */
    if (!strncmp(auth, "Nawal ", 6) && strlen(auth + 6) == 64 && nawal_cid_from_hex(token, auth + 6, err, sizeof err) == 0)
        streams = nawal_session_blob_streams(srv, token, 0);
    if (streams < 0) {
        nawal_log(NAWAL_LOG_INFO, "blob_http_refused", "reason=token");
        return reply_text(r, 401, CT_TEXT, strdup("a live session's blob token is required (Authorization: Nawal <hex>)\n"));
    }
    if (streams >= BLOB_STREAMS_PER_SESSION)
        return reply_text(r, 429, CT_TEXT, strdup("too many downloads at once for this session\n"));
    if (strlen(hex) != 64 || nawal_cid_from_hex(cid, hex, err, sizeof err) || !nawal_serve_is_public_model(srv, cid) ||
        nawal_blobstore_path(srv->store, cid, path, sizeof path))
        return reply_text(r, 404, CT_TEXT, strdup("no such model\n"));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb)) {
        if (fd >= 0) close(fd);
        return reply_text(r, 404, CT_TEXT, strdup("no such model\n"));
    }
    uint64_t size = (uint64_t)sb.st_size, off = 0;
    if (rq->range[0] && nawal_http_range_parse(rq->range, size, &off)) {
        close(fd);
        r->file_total = size; /* the size the transport puts in the 416's Content-Range */
        return reply_text(r, 416, CT_TEXT, strdup("range not satisfiable: bytes=OFFSET- below the size only\n"));
    }
    blob_stream *b = malloc(sizeof *b);
    if (!b) {
        close(fd);
        return -1;
    }
    r->status = off ? 206 : 200;
    r->content_type = "application/octet-stream";
    r->file_fd = fd;
    r->file_off = off;
    r->file_len = size - off;
    r->file_total = size;
    b->srv = srv;
    memcpy(b->token, token, sizeof token);
    b->sent = 0;
    const char *cut = getenv("NAWAL_SERVE_TEST_HTTP_CUT"); /* test hook: stop every body after this many bytes */
    b->cut = cut ? strtoull(cut, NULL, 10) : 0;
    nawal_session_blob_streams(srv, token, +1); /* the cap was checked above */
    r->on_sent = stream_sent;
    r->on_end = stream_end;
    r->stream_user = b;
    nawal_log(NAWAL_LOG_DEBUG, "blob_http", "cid=%.16s offset=%llu bytes=%llu", hex, (unsigned long long)off,
              (unsigned long long)r->file_len);
    return 0;
}

int nawal_http_handle(const nawal_ws_http_request *rq, nawal_ws_http_reply *reply, void *user) {
    nawal_server *srv = user;
    const char *method = rq->method, *path = rq->path;
    if (strstr(path, "/blobs/")) { /* behind a proxy, under its prefix */
        int rc = blob_reply(srv, rq, reply);
        if (rc == 0) nawal_serve_metrics_blob_get(&srv->m, reply->status);
        return rc;
    }
    int known = !strcmp(path, "/metrics") || !strcmp(path, "/status");
    nawal_log(NAWAL_LOG_DEBUG, "http_request", "method=%s path_known=%d", method, known);
    if (!known) return reply_text(reply, 404, CT_TEXT, strdup("not found: try /metrics or /status\n"));
    if (strcmp(method, "GET") && strcmp(method, "HEAD"))
        return reply_text(reply, 405, CT_TEXT, strdup("method not allowed: GET only\n"));
    if (!strcmp(path, "/status")) return reply_text(reply, 200, CT_JSON, status_body(srv));
    refresh(srv);
    size_t len;
    char *text = nawal_metrics_render(srv->m.reg, &len);
    reply->status = 200;
    reply->content_type = CT_METRICS;
    reply->body = text;
    reply->body_len = text ? len : 0;
    return text ? 0 : -1;
}
