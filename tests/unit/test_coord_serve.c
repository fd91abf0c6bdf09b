/* test_coord_serve.c - `nawal-coordinator serve` end to end: the binary runs
 * as a child process on a loopback port (plaintext and TLS, with a
 * throw-away openssl certificate), driven by a scripted agent
 * (ws_client_test_util.h: proto/'s transport client, envelopes and blob
 * streaming). Checked: the Hello/Challenge/Auth
 * handshake and an unregistered key refused; RoundAnnounce; Join; the base
 * model downloaded and its CID verified; an update submitted with its delta
 * uploaded on the coordinator's BlobRequest and acknowledged; duplicate,
 * wrong-round and wrong-base updates refused with their error codes; kill -9
 * after the Ack and a restart keep the update; the round closing with a
 * RoundResult (accepted keys, payouts summing to the pool) and the next
 * RoundAnnounce; deadlines driven by the server's loop (a round closed at its
 * deadline, a round failed without joins); protocol refusals (messages
 * before authentication, a wrong nonce, an unknown message type, a replay,
 * unknown blobs, oversize and corrupt uploads, an agent refusing to upload,
 * a second session of a validator replacing the first); evaluations (the
 * EvaluateRequest of a closed round's model before its RoundResult and
 * after a later Auth, EvaluateResults recorded once and refused with their
 * codes, their token-weighted mean in /status and /metrics, kept across a
 * kill -9); GET /metrics read by a strict Prometheus text parser and
 * GET /status as JSON, over plaintext and TLS; a clean exit on SIGTERM. */
#include "coord_proc_test_util.h"
#include "coord_test_util.h"
#include "prom_test_util.h"
#include "ws_client_test_util.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <strings.h>
#include <sys/stat.h>

#define POOL 1000000000000ull
#define MODEL_BIG "1,2,128,64,2048"  /* ~1.9 MB of safetensors: two blob chunks */
#define MODEL_SMALL "1,2,32,32,256"

static char g_root[128], g_dir[160];
static int g_serves; /* serve processes started (one log file each) */

static void setup(void) {
    coord_make_root(g_root, sizeof g_root, "serve");
    snprintf(g_dir, sizeof g_dir, "%s/coord", g_root);
    g_serves = 0;
}
static void teardown(void) { coord_rm_rf(g_root); }

TestSuite(coord_serve, .init = setup, .fini = teardown, .timeout = 240);

/* ---- the coordinator binary ----------------------------------------------- */

static void cli(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void cli(const char *fmt, ...) {
    char args[1024], cmd[1400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s %s >>%s/cli.log 2>&1", NAWAL_COORDINATOR_BIN, args, g_root);
    int rc = system(cmd);
    cr_assert_eq(rc, 0, "'%s' failed (%d); see %s/cli.log", args, rc, g_root);
}

/* Starts `serve --dir g_dir --listen 127.0.0.1:0 --log-level debug EXTRA...` (its own log) and waits for its port. */
static void serve_start(serve_proc *p, const char *extra) {
    char log[200], args[600];
    snprintf(log, sizeof log, "%s/serve%d.log", g_root, g_serves++);
    snprintf(args, sizeof args, "--log-level debug %s", extra);
    serve_start_at(p, g_dir, log, args);
}

/* ---- the scripted agent (ws_client_test_util.h), keyed by a seed byte ---- */

/* Connects as the key made from `which` (agent_key), TLS when ca is set. */
static void agent_connect(agent *a, uint8_t which, int port, const char *ca, int expect_fail) {
    nawal_identity id;
    agent_key(&id, which);
    agent_connect_as(a, &id, g_dir, port, ca, expect_fail);
}

/* ---- HTTP ----------------------------------------------------------------- */

typedef struct {
    int status;
    char ctype[128], crange[128]; /* Content-Type, Content-Range ("" when absent) */
    char *body;
} http_resp;

/* the value of header line [line, eol) into out when it is name's ("name:" given) */
static void http_header_take(const char *line, const char *eol, const char *name, char *out, size_t cap) {
    size_t nl = strlen(name);
    if (strncasecmp(line, name, nl)) return;
    const char *v = line + nl;
    while (*v == ' ') v++;
    snprintf(out, cap, "%.*s", (int)(eol - v), v);
}

/* Parses a whole HTTP/1.1 response (status line, headers, Content-Length body). */
static void http_parse(const char *raw, size_t n, http_resp *r) {
    memset(r, 0, sizeof *r);
    cr_assert(n > 12 && !strncmp(raw, "HTTP/1.", 7), "not an HTTP response: %.*s", (int)(n < 80 ? n : 80), raw);
    r->status = atoi(raw + 9);
    const char *hend = strstr(raw, "\r\n\r\n");
    cr_assert(hend, "no end of headers");
    long clen = -1;
    for (const char *line = strstr(raw, "\r\n") + 2; line < hend;) {
        const char *eol = strstr(line, "\r\n");
        if (!strncasecmp(line, "content-length:", 15)) clen = atol(line + 15);
        http_header_take(line, eol, "content-type:", r->ctype, sizeof r->ctype);
        http_header_take(line, eol, "content-range:", r->crange, sizeof r->crange);
        line = eol + 2;
    }
    size_t blen = n - (size_t)(hend + 4 - raw);
    cr_assert_eq((long)blen, clen, "body of %zu bytes, Content-Length %ld", blen, clen);
    r->body = malloc(blen + 1);
    memcpy(r->body, hend + 4, blen);
    r->body[blen] = 0;
}

/* A plain HTTP request with extra header lines (each ending in CRLF; "" for none). */
static void http_request(int port, const char *method, const char *path, const char *extra, http_resp *r) {
    int fd = wt_raw_connect(port);
    cr_assert(fd >= 0);
    char req[512];
    cr_assert((size_t)snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s\r\n",
                               method, path, extra) < sizeof req);
    cr_assert_eq(wt_raw_send(fd, req, strlen(req)), 0);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (double t0 = wt_now(); wt_now() - t0 < 10;) {
        struct pollfd p = { fd, POLLIN, 0 };
        if (poll(&p, 1, 100) <= 0) continue;
        if (n + 4096 > cap) buf = realloc(buf, cap *= 2);
        ssize_t got = recv(fd, buf + n, cap - n - 1, 0);
        if (got <= 0) break;
        n += (size_t)got;
    }
    close(fd);
    buf[n] = 0;
    http_parse(buf, n, r);
    free(buf);
}

static void http_get(int port, const char *method, const char *path, http_resp *r) {
    http_request(port, method, path, "", r);
}

/* The same over TLS, with the openssl command (already needed for the certificate). */
static void https_get(int port, const char *path, http_resp *r) {
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "printf 'GET %s HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' | "
             "openssl s_client -quiet -connect 127.0.0.1:%d 2>/dev/null", path, port);
    FILE *f = popen(cmd, "r");
    cr_assert(f);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (size_t got; (got = fread(buf + n, 1, cap - n - 1, f)) > 0;) {
        n += got;
        if (n + 4096 > cap) buf = realloc(buf, cap *= 2);
    }
    pclose(f);
    buf[n] = 0;
    http_parse(buf, n, r);
    free(buf);
}

typedef struct {
    prom_sample s[PROM_MAX_SAMPLES];
    int n;
} prom_page;

/* GET /metrics, strictly parsed; counters end in _total. */
static void metrics_get(int port, int tls, prom_page *pg) {
    http_resp r;
    if (tls) https_get(port, "/metrics", &r);
    else http_get(port, "GET", "/metrics", &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.ctype, "text/plain; version=0.0.4; charset=utf-8");
    char why[64] = "", types[PROM_MAX_TYPED][2][PROM_NAME];
    int nt = 0;
    pg->n = prom_parse_typed(r.body, pg->s, PROM_MAX_SAMPLES, why, types, &nt);
    cr_assert(pg->n > 0, "/metrics is not Prometheus text: %s\n%s", why, r.body);
    for (int i = 0; i < nt; i++) {
        size_t l = strlen(types[i][0]);
        if (!strcmp(types[i][1], "counter"))
            cr_assert(l > 6 && !strcmp(types[i][0] + l - 6, "_total"), "counter %s lacks _total", types[i][0]);
    }
    free(r.body);
}

/* Value of name{key="value"} (key NULL: no labels); -1 when absent. */
static double metric(const prom_page *pg, const char *name, const char *key, const char *value) {
    for (int i = 0; i < pg->n; i++) {
        const prom_sample *s = &pg->s[i];
        if (strcmp(s->name, name)) continue;
        if (!key && s->nl == 0) return s->v;
        if (key && s->nl == 1 && !strcmp(s->labels[0][0], key) && !strcmp(s->labels[0][1], value)) return s->v;
    }
    return -1;
}

static json_t *status_get(int port, int tls) {
    http_resp r;
    if (tls) https_get(port, "/status", &r);
    else http_get(port, "GET", "/status", &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.ctype, "application/json");
    json_error_t je;
    json_t *j = json_loads(r.body, JSON_REJECT_DUPLICATES, &je);
    cr_assert(json_is_object(j), "/status is not a JSON object: %s\n%s", je.text, r.body);
    free(r.body);
    return j;
}

static json_int_t jint(json_t *o, const char *path1, const char *path2) {
    json_t *v = json_object_get(o, path1);
    if (path2) v = json_object_get(v, path2);
    cr_assert(json_is_integer(v), "/status: %s%s%s is not an integer", path1, path2 ? "." : "", path2 ? path2 : "");
    return json_integer_value(v);
}

static const char *jstr(json_t *o, const char *path1, const char *path2) {
    json_t *v = json_object_get(o, path1);
    if (path2) v = json_object_get(v, path2);
    cr_assert(json_is_string(v), "/status: %s.%s is not a string", path1, path2 ? path2 : "");
    return json_string_value(v);
}

/* ---- fixtures ----------------------------------------------------------------- */

static const char *fp_of(uint8_t which) {
    static char fp[4][NAWAL_FINGERPRINT_HEX_BYTES];
    static int k;
    nawal_identity id;
    agent_key(&id, which);
    char *out = fp[k++ % 4];
    nawal_fingerprint(out, id.pk);
    return out;
}

/* init (with a model), validators 'A' and 'B' registered, round 1 announced. */
static void coord_setup(const char *model, const char *init_extra, int target, int deadline_s) {
    cli("init --dir %s --model-config %s %s", g_dir, model, init_extra);
    cli("validator add --dir %s --pubkey %s --stake 20000000000000000", g_dir, fp_of('A'));
    cli("validator add --dir %s --pubkey %s --stake 1000000000000000", g_dir, fp_of('B'));
    cli("round start --dir %s --pool-planck %llu --target %d --min 1 --deadline-s %d --min-stake-planck 1000", g_dir,
        POOL, target, deadline_s);
}

static void path_in_root(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", g_root, name); }

/* ---- tests -------------------------------------------------------------------- */

Test(coord_serve, full_round_over_plaintext_with_a_crash_and_restart) {
    coord_setup(MODEL_BIG, "", 2, 600);
    serve_proc sp;
    serve_start(&sp, "--insecure-plaintext");

    /* an unregistered key is refused at Hello and disconnected */
    agent c;
    agent_connect(&c, 'C', sp.port, NULL, 0);
    send_hello(&c, c.id.pk);
    expect_error(&c, ERRC(UNKNOWN_SENDER));
    expect_closed(&c);
    agent_free(&c);

    /* A: handshake and the round's announcement */
    agent a;
    agent_connect(&a, 'A', sp.port, NULL, 0);
    Nawal__RoundAnnounce *ra = handshake(&a, 1);
    cr_assert_eq(ra->round_id, 1);
    cr_assert_eq(ra->base_model_cid.len, 32);
    cr_assert_eq(ra->target_participants, 2);
    cr_assert_eq(ra->min_participants, 1);
    cr_assert_eq(ra->reward_pool_planck, POOL);
    cr_assert(ra->deadline_ms > nawal_now_ms());
    cr_assert(ra->config && ra->config->steps == 100 && ra->config->batch == 8, "training config announced");
    uint8_t base[32];
    memcpy(base, ra->base_model_cid.data, 32);
    uint64_t base_size = ra->base_model_size;
    nawal_msg_free(&ra->base);

    /* join, twice */
    expect_ack(&a, send_join(&a, 1, 20000000000000000ull));
    send_join(&a, 1, 20000000000000000ull);
    expect_error(&a, ERRC(DUPLICATE));

    /* the base model, verified against its CID */
    char base_path[300], da[300], db[300];
    path_in_root(base_path, sizeof base_path, "base.safetensors");
    cr_assert_eq(download(&a, base, base_path), base_size);
    cr_assert(base_size > NAWAL_BLOB_CHUNK_BYTES, "the model spans several chunks");

    /* wrong round, wrong base, then the update */
    path_in_root(da, sizeof da, "delta_a.safetensors");
    path_in_root(db, sizeof db, "delta_b.safetensors");
    uint8_t dcid[32], wrong[32];
    uint64_t dsize = make_delta(base_path, da, 1, dcid);
    make_delta(base_path, db, 2, wrong); /* B's, later */
    send_update(&a, 99, base, dcid, dsize, 0.8f, 1.5);
    expect_error(&a, ERRC(WRONG_ROUND));
    memcpy(wrong, base, 32);
    wrong[0] ^= 1;
    send_update(&a, 1, wrong, dcid, dsize, 0.8f, 1.5);
    expect_error(&a, ERRC(WRONG_ROUND));
    cr_assert_eq(a.up_requests, 0, "nothing is uploaded for a refused update");
    expect_ack(&a, submit(&a, 1, base, da, 0.8f, 1.5));
    cr_assert_eq(a.up_requests, 1, "the coordinator pulled the delta once");
    send_update(&a, 1, base, dcid, dsize, 0.8f, 1.5);
    expect_error(&a, ERRC(DUPLICATE));

    prom_page *pg = malloc(sizeof *pg);
    metrics_get(sp.port, 0, pg);
    cr_assert_eq(metric(pg, "nawal_updates_accepted_total", NULL, NULL), 1);
    cr_assert_eq(metric(pg, "nawal_updates_rejected_total", "reason", "wrong_round"), 2);
    cr_assert_eq(metric(pg, "nawal_updates_rejected_total", "reason", "duplicate"), 1);
    cr_assert_eq(metric(pg, "nawal_errors_sent_total", "code", "ERR_UNKNOWN_SENDER"), 1);
    cr_assert_eq(metric(pg, "nawal_round_epsilon_reported_max", NULL, NULL), 1.5);
    cr_assert_eq(metric(pg, "nawal_round_participants", NULL, NULL), 1);
    cr_assert_eq(metric(pg, "nawal_round_updates", NULL, NULL), 1);
    cr_assert_eq(metric(pg, "nawal_round_state", "state", "joining"), 1);
    cr_assert_eq(metric(pg, "nawal_model_bytes", NULL, NULL), (double)base_size);
    cr_assert_eq(metric(pg, "nawal_sessions_authenticated", NULL, NULL), 1);
    cr_assert(metric(pg, "nawal_received_bytes_total", NULL, NULL) > (double)dsize);
    cr_assert(metric(pg, "nawal_sent_bytes_total", NULL, NULL) > (double)base_size);
    cr_assert_eq(metric(pg, "nawal_messages_received_total", "type", "MSG_UPDATE_SUBMIT"), 4);

    /* kill -9 after the Ack: the update is still there after a restart */
    int st = serve_stop(&sp, SIGKILL);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    agent_free(&a);
    serve_start(&sp, "--insecure-plaintext");
    json_t *j = status_get(sp.port, 0);
    cr_assert_eq(jint(j, "round", "id"), 1);
    cr_assert_eq(jint(j, "round", "joined"), 1);
    cr_assert_eq(jint(j, "round", "updates"), 1);
    json_decref(j);
    agent_connect(&a, 'A', sp.port, NULL, 0);
    ra = handshake(&a, 1);
    nawal_msg_free(&ra->base);
    send_update(&a, 1, base, dcid, dsize, 0.8f, 1.5);
    expect_error(&a, ERRC(DUPLICATE));

    /* B joins and submits: the round has its target and closes */
    agent b;
    agent_connect(&b, 'B', sp.port, NULL, 0);
    ra = handshake(&b, 1);
    nawal_msg_free(&ra->base);
    expect_ack(&b, send_join(&b, 1, 1000000000000000ull));
    expect_ack(&b, submit(&b, 1, base, db, 0.6f, 2.0));

    uint8_t model[32];
    for (int k = 0; k < 2; k++) {
        agent *x = k ? &b : &a;
        in_msg m = agent_next(x, MSG(ROUND_RESULT), 60);
        Nawal__RoundResult *rr = unpack(&m);
        cr_assert_eq(rr->round_id, 1);
        cr_assert_eq(rr->new_model_cid.len, 32);
        memcpy(model, rr->new_model_cid.data, 32);
        cr_assert_eq(rr->n_accepted, 2);
        int seen_a = 0, seen_b = 0;
        for (size_t i = 0; i < rr->n_accepted; i++) {
            seen_a |= !memcmp(rr->accepted[i].data, a.id.pk, 32);
            seen_b |= !memcmp(rr->accepted[i].data, b.id.pk, 32);
        }
        cr_assert(seen_a && seen_b, "both updates accepted");
        uint64_t paid = 0;
        for (size_t i = 0; i < rr->n_rewards; i++) paid += rr->rewards[i]->amount_planck;
        cr_assert_eq(paid, POOL, "payouts sum to the pool");
        nawal_msg_free(&rr->base);
        free(m.payload);
        m = agent_next(x, MSG(ROUND_ANNOUNCE), 20);
        ra = unpack(&m);
        cr_assert_eq(ra->round_id, 2);
        cr_assert(!memcmp(ra->base_model_cid.data, model, 32), "round 2 starts from round 1's model");
        nawal_msg_free(&ra->base);
        free(m.payload);
        cr_assert_eq(x->bad_envelopes, 0, "every coordinator envelope verified");
    }
    /* the new model is served too */
    char model_path[300];
    path_in_root(model_path, sizeof model_path, "model2.safetensors");
    cr_assert_eq(download(&b, model, model_path), base_size);

    cli("ledger verify --dir %s", g_dir);
    metrics_get(sp.port, 0, pg);
    cr_assert_eq(metric(pg, "nawal_updates_accepted_total", NULL, NULL), 1); /* since the restart */
    cr_assert_eq(metric(pg, "nawal_rounds_closed_total", NULL, NULL), 1);
    cr_assert_eq(metric(pg, "nawal_round_id", NULL, NULL), 2);
    cr_assert_eq(metric(pg, "nawal_round_participants", NULL, NULL), 0);
    cr_assert(metric(pg, "nawal_last_aggregation_seconds", NULL, NULL) >= 0);
    cr_assert(metric(pg, "nawal_last_round_duration_seconds", NULL, NULL) > 0);
    cr_assert_eq(metric(pg, "nawal_sessions_authenticated", NULL, NULL), 2);
    free(pg);
    j = status_get(sp.port, 0);
    cr_assert_eq(jint(j, "round", "id"), 2);
    cr_assert_eq(jint(j, "last_ended", "id"), 1);
    cr_assert_str_eq(jstr(j, "last_ended", "state"), "closed");
    char hex[NAWAL_CID_HEX_BYTES];
    nawal_cid_to_hex(hex, model);
    cr_assert_str_eq(jstr(j, "last_ended", "model_cid"), hex);
    cr_assert_str_eq(jstr(j, "round", "pool_planck"), "1000000000000");
    json_decref(j);

    agent_free(&a);
    agent_free(&b);
    serve_stop_clean(&sp);
}

Test(coord_serve, tls_handshake_download_and_http) {
    wt_tls tls;
    cr_assert_eq(wt_tls_make(&tls), 0, "openssl could not make a certificate");
    char extra[400];
    snprintf(extra, sizeof extra, "--tls-cert %s --tls-key %s", tls.cert, tls.key);
    coord_setup(MODEL_SMALL, extra, 2, 600);
    serve_proc sp;
    serve_start(&sp, ""); /* TLS from the directory's settings */
    char *log = coord_slurp(sp.log, NULL);
    cr_assert(strstr(log, "tls=on"), "%s", log);
    free(log);

    agent plain;
    agent_connect(&plain, 'A', sp.port, NULL, 1); /* no TLS: no WebSocket */
    agent_free(&plain);

    agent a;
    agent_connect(&a, 'A', sp.port, tls.cert, 0);
    Nawal__RoundAnnounce *ra = handshake(&a, 1);
    uint8_t base[32];
    memcpy(base, ra->base_model_cid.data, 32);
    uint64_t size = ra->base_model_size;
    nawal_msg_free(&ra->base);
    expect_ack(&a, send_join(&a, 1, 5000));
    char path[300];
    path_in_root(path, sizeof path, "base.safetensors");
    cr_assert_eq(download(&a, base, path), size);

    json_t *j = status_get(sp.port, 1);
    cr_assert_eq(jint(j, "round", "id"), 1);
    cr_assert_eq(jint(j, "round", "joined"), 1);
    cr_assert_eq(jint(j, "sessions", NULL), 1);
    char fp[NAWAL_FINGERPRINT_HEX_BYTES];
    nawal_fingerprint(fp, a.coord_pk);
    cr_assert_str_eq(jstr(j, "coordinator", NULL), fp);
    json_decref(j);
    prom_page *pg = malloc(sizeof *pg);
    metrics_get(sp.port, 1, pg);
    cr_assert_eq(metric(pg, "nawal_round_participants", NULL, NULL), 1);
    cr_assert_eq(metric(pg, "nawal_connections", NULL, NULL), 1);
    free(pg);

    agent_free(&a);
    serve_stop_clean(&sp);
    wt_tls_remove(&tls);
}

Test(coord_serve, protocol_refusals) {
    coord_setup(MODEL_SMALL, "", 2, 600);
    serve_proc sp;
    serve_start(&sp, "--insecure-plaintext --auth-timeout-s 1");
    agent a;

    /* anything but Hello/Auth first: refused, disconnected */
    agent_connect(&a, 'A', sp.port, NULL, 0);
    send_join(&a, 1, 5000);
    expect_error(&a, ERRC(UNKNOWN_SENDER));
    expect_closed(&a);
    agent_free(&a);

    /* Hello naming another key than the signer's */
    agent_connect(&a, 'A', sp.port, NULL, 0);
    nawal_identity other;
    agent_key(&other, 'B');
    send_hello(&a, other.pk);
    expect_error(&a, ERRC(BAD_MESSAGE));
    expect_closed(&a);
    agent_free(&a);

    /* an Auth that does not carry the challenge's nonce */
    agent_connect(&a, 'A', sp.port, NULL, 0);
    send_hello(&a, a.id.pk);
    in_msg m = agent_next(&a, MSG(CHALLENGE), 10);
    free(m.payload);
    uint8_t fake[32] = { 1 };
    Nawal__Auth au = NAWAL__AUTH__INIT;
    au.nonce.data = fake;
    au.nonce.len = 32;
    agent_send(&a, MSG(AUTH), &au.base);
    expect_error(&a, ERRC(REPLAY));
    expect_closed(&a);
    agent_free(&a);

    /* silence: closed after the authentication timeout */
    agent_connect(&a, 'A', sp.port, NULL, 0);
    for (double t0 = wt_now(); wt_now() - t0 < 8 && !a.closed;) agent_service(&a, 10);
    cr_assert(a.closed, "an unauthenticated connection outlived the timeout");
    agent_free(&a);

    /* authenticated: refusals that keep the connection */
    agent_connect(&a, 'A', sp.port, NULL, 0);
    Nawal__RoundAnnounce *ra = handshake(&a, 1);
    uint8_t base[32];
    memcpy(base, ra->base_model_cid.data, 32);
    nawal_msg_free(&ra->base);
    {   /* a type this build does not know (the envelope is refused before its signature is checked) */
        Nawal__Envelope env = NAWAL__ENVELOPE__INIT;
        uint8_t sig[64] = { 0 };
        env.version = NAWAL__VERSION__PROTOCOL_VERSION;
        env.sender.data = a.id.pk;
        env.sender.len = 32;
        env.type = (Nawal__MsgType)99;
        env.sequence = ++a.seq;
        env.timestamp_ms = nawal_now_ms();
        env.signature.data = sig;
        env.signature.len = 64;
        uint8_t buf[256];
        size_t n = nawal__envelope__pack(&env, buf);
        agent_send_raw(&a, buf, n);
        expect_error(&a, ERRC(UNKNOWN_TYPE));
    }
    Nawal__RoundResult rr = NAWAL__ROUND_RESULT__INIT; /* known, but not something an agent sends */
    agent_send(&a, MSG(ROUND_RESULT), &rr.base);
    expect_error(&a, ERRC(UNKNOWN_TYPE));
    Nawal__Heartbeat hb = NAWAL__HEARTBEAT__INIT;
    hb.time_ms = nawal_now_ms();
    agent_send(&a, MSG(HEARTBEAT), &hb.base);
    m = agent_next(&a, MSG(HEARTBEAT), 10);
    Nawal__Heartbeat *hr = unpack(&m);
    cr_assert(hr->time_ms > 0);
    nawal_msg_free(&hr->base);
    free(m.payload);
    uint8_t junk[32];
    memset(junk, 7, sizeof junk);
    Nawal__BlobRequest br = NAWAL__BLOB_REQUEST__INIT;
    br.cid.data = junk;
    br.cid.len = 32;
    agent_send(&a, MSG(BLOB_REQUEST), &br.base);
    expect_error(&a, ERRC(NOT_FOUND));
    send_join(&a, 7, 5000);
    expect_error(&a, ERRC(WRONG_ROUND));
    send_join(&a, 1, 1); /* below the round's minimum stake */
    expect_error(&a, ERRC(UNKNOWN_SENDER));

    /* updates: not joined; too large; the agent refuses the upload; a delta that is not its CID */
    char base_path[300], dpath[300];
    path_in_root(base_path, sizeof base_path, "base.safetensors");
    path_in_root(dpath, sizeof dpath, "delta.safetensors");
    uint64_t base_size = download(&a, base, base_path);
    uint8_t dcid[32];
    uint64_t dsize = make_delta(base_path, dpath, 3, dcid);
    send_update(&a, 1, base, dcid, dsize, 0.5f, 1.0);
    expect_error(&a, ERRC(WRONG_ROUND));
    expect_ack(&a, send_join(&a, 1, 5000));
    send_update(&a, 1, base, dcid, 2 * base_size + (2u << 20), 0.5f, 1.0);
    expect_error(&a, ERRC(TOO_LARGE));
    send_update(&a, 1, base, dcid, dsize, 1.5f, 1.0);
    expect_error(&a, ERRC(BAD_MESSAGE));
    a.refuse_upload = 1;
    submit(&a, 1, base, dpath, 0.5f, 1.0);
    for (double t0 = wt_now(); wt_now() - t0 < 3;) agent_service(&a, 10); /* the Error cancels it: no answer */
    cr_assert_eq(a.up_requests, 1);
    a.refuse_upload = 0;
    uint8_t lie[32];
    memcpy(lie, dcid, 32);
    lie[5] ^= 0x40; /* serve dpath's bytes under another CID */
    snprintf(a.up_path, sizeof a.up_path, "%s", dpath);
    memcpy(a.up_cid, lie, 32);
    send_update(&a, 1, base, lie, dsize, 0.5f, 1.0);
    expect_error(&a, ERRC(BAD_MESSAGE));
    expect_ack(&a, submit(&a, 1, base, dpath, 0.5f, 1.0)); /* and the real one still goes through */

    /* a replayed envelope: refused, disconnected */
    uint8_t *sealed;
    size_t sl;
    hb.time_ms = nawal_now_ms();
    cr_assert_eq(nawal_envelope_seal_msg(&a.id, MSG(HEARTBEAT), ++a.seq, nawal_now_ms(), &hb.base, &sealed, &sl, NULL, 0), 0);
    agent_send_raw(&a, sealed, sl);
    agent_send_raw(&a, sealed, sl);
    free(sealed);
    m = agent_next(&a, MSG(HEARTBEAT), 10);
    free(m.payload);
    expect_error(&a, ERRC(REPLAY));
    expect_closed(&a);
    cr_assert_eq(a.bad_envelopes, 0);
    agent_free(&a);

    /* a second session of the same validator replaces the first */
    agent a2;
    agent_connect(&a, 'A', sp.port, NULL, 0);
    ra = handshake(&a, 1);
    nawal_msg_free(&ra->base);
    agent_connect(&a2, 'A', sp.port, NULL, 0);
    ra = handshake(&a2, 1);
    nawal_msg_free(&ra->base);
    expect_error(&a, ERRC(DUPLICATE));
    expect_closed(&a);
    agent_send(&a2, MSG(HEARTBEAT), &hb.base);
    m = agent_next(&a2, MSG(HEARTBEAT), 10);
    free(m.payload);
    agent_free(&a);
    agent_free(&a2);

    http_resp r;
    http_get(sp.port, "GET", "/nope", &r);
    cr_assert_eq(r.status, 404);
    free(r.body);
    http_get(sp.port, "POST", "/metrics", &r);
    cr_assert_eq(r.status, 405);
    free(r.body);
    prom_page *pg = malloc(sizeof *pg);
    metrics_get(sp.port, 0, pg);
    cr_assert_eq(metric(pg, "nawal_updates_rejected_total", "reason", "bad_blob"), 1);
    cr_assert_eq(metric(pg, "nawal_updates_rejected_total", "reason", "too_large"), 1);
    cr_assert_eq(metric(pg, "nawal_errors_sent_total", "code", "ERR_UNKNOWN_TYPE"), 2);
    cr_assert_eq(metric(pg, "nawal_updates_accepted_total", NULL, NULL), 1);
    free(pg);
    serve_stop_clean(&sp);
}

Test(coord_serve, deadlines_close_and_fail_rounds) {
    coord_setup(MODEL_SMALL, "", 2, 6);
    serve_proc sp;
    serve_start(&sp, "--insecure-plaintext");
    agent a;
    agent_connect(&a, 'A', sp.port, NULL, 0);
    Nawal__RoundAnnounce *ra = handshake(&a, 1);
    uint8_t base[32];
    memcpy(base, ra->base_model_cid.data, 32);
    nawal_msg_free(&ra->base);
    expect_ack(&a, send_join(&a, 1, 5000));
    char base_path[300], dpath[300];
    path_in_root(base_path, sizeof base_path, "base.safetensors");
    path_in_root(dpath, sizeof dpath, "delta.safetensors");
    download(&a, base, base_path);
    uint8_t dcid[32];
    make_delta(base_path, dpath, 4, dcid);
    expect_ack(&a, submit(&a, 1, base, dpath, 0.9f, 0.5));

    /* one update of a target of two: the round closes at its deadline (min 1) */
    in_msg m = agent_next(&a, MSG(ROUND_RESULT), 30);
    Nawal__RoundResult *rr = unpack(&m);
    cr_assert_eq(rr->round_id, 1);
    cr_assert_eq(rr->new_model_cid.len, 32);
    cr_assert_eq(rr->n_accepted, 1);
    cr_assert(!memcmp(rr->accepted[0].data, a.id.pk, 32));
    cr_assert_eq(rr->n_rewards, 1);
    cr_assert_eq(rr->rewards[0]->amount_planck, POOL);
    nawal_msg_free(&rr->base);
    free(m.payload);
    m = agent_next(&a, MSG(ROUND_ANNOUNCE), 10);
    ra = unpack(&m);
    cr_assert_eq(ra->round_id, 2);
    nawal_msg_free(&ra->base);
    free(m.payload);

    /* nobody joins round 2: it fails at its deadline, round 3 follows */
    m = agent_next(&a, MSG(ROUND_RESULT), 30);
    rr = unpack(&m);
    cr_assert_eq(rr->round_id, 2);
    cr_assert_eq(rr->new_model_cid.len, 0, "a failed round has no model");
    cr_assert_eq(rr->n_accepted, 0);
    nawal_msg_free(&rr->base);
    free(m.payload);
    m = agent_next(&a, MSG(ROUND_ANNOUNCE), 10);
    ra = unpack(&m);
    cr_assert_eq(ra->round_id, 3);
    nawal_msg_free(&ra->base);
    free(m.payload);

    prom_page *pg = malloc(sizeof *pg);
    metrics_get(sp.port, 0, pg);
    cr_assert_eq(metric(pg, "nawal_rounds_closed_total", NULL, NULL), 1);
    cr_assert_eq(metric(pg, "nawal_rounds_failed_total", NULL, NULL), 1);
    free(pg);
    agent_free(&a);
    serve_stop_clean(&sp);
}

/* ---- evaluations ---------------------------------------------------------------- */

/* The round's RoundResult (its new model in model), which the EvaluateRequest of that model preceded. */
static void expect_evaluate_request(agent *x, uint64_t round, uint8_t model[32]) {
    in_msg m = agent_next(x, MSG(ROUND_RESULT), 60);
    Nawal__RoundResult *rr = unpack(&m);
    cr_assert_eq(rr->round_id, round);
    cr_assert_eq(rr->new_model_cid.len, 32);
    memcpy(model, rr->new_model_cid.data, 32);
    nawal_msg_free(&rr->base);
    free(m.payload);
    int queued = 0;
    for (int i = 0; i < x->nq; i++) queued += x->q[i].type == MSG(EVALUATE_REQUEST);
    cr_assert_eq(queued, 1, "%d EvaluateRequests came before the RoundResult, not one", queued);
    m = agent_next(x, MSG(EVALUATE_REQUEST), 1);
    Nawal__EvaluateRequest *q = unpack(&m);
    cr_assert_eq(q->round_id, round);
    cr_assert(q->model_cid.len == 32 && !memcmp(q->model_cid.data, model, 32), "the request names the new model");
    nawal_msg_free(&q->base);
    free(m.payload);
}

/* No EvaluateRequest queued (after a handshake: it would precede the RoundAnnounce). */
static int evaluate_requests_queued(const agent *x) {
    int n = 0;
    for (int i = 0; i < x->nq; i++) n += x->q[i].type == MSG(EVALUATE_REQUEST);
    return n;
}

/* sum(loss x tokens) / sum(tokens) over the evaluations table's rows of a round, read here; *rows gets their count. */
static double rows_mean(int64_t round, int *rows, int64_t *tokens) {
    nawal_store *s = NULL;
    char err[512] = "";
    cr_assert_eq(nawal_store_open(&s, g_dir, NAWAL_STORE_OPEN_PUBLIC_ONLY, err, sizeof err), 0, "%s", err);
    sqlite3_stmt *st;
    cr_assert_eq(sqlite3_prepare_v2(nawal_store_db(s), "SELECT loss, tokens FROM evaluations WHERE round_id = ?1", -1,
                                    &st, NULL), SQLITE_OK);
    sqlite3_bind_int64(st, 1, round);
    double num = 0, den = 0;
    *rows = 0;
    *tokens = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        num += sqlite3_column_double(st, 0) * (double)sqlite3_column_int64(st, 1);
        den += (double)sqlite3_column_int64(st, 1);
        *tokens += sqlite3_column_int64(st, 1);
        (*rows)++;
    }
    sqlite3_finalize(st);
    nawal_store_close(s);
    return *rows ? num / den : NAN;
}

/* /status's last_ended.federated_val and /metrics' gauges against the rows of round 1. */
static void check_federated_val(int port, int want_rows) {
    int rows;
    int64_t tokens;
    double mean = rows_mean(1, &rows, &tokens);
    cr_assert_eq(rows, want_rows);
    json_t *j = status_get(port, 0);
    cr_assert_eq(jint(j, "last_ended", "id"), 1);
    json_t *fv = json_object_get(json_object_get(j, "last_ended"), "federated_val");
    cr_assert(json_is_object(fv), "/status: last_ended.federated_val is not an object");
    cr_assert_eq(json_integer_value(json_object_get(fv, "results")), want_rows);
    cr_assert_eq(json_integer_value(json_object_get(fv, "tokens")), tokens);
    double got = json_real_value(json_object_get(fv, "loss"));
    cr_assert(fabs(got - mean) <= 1e-12 * mean, "/status mean %.17g, rows' token-weighted mean %.17g", got, mean);
    cr_assert(json_is_null(json_object_get(json_object_get(j, "round"), "federated_val")), "an open round has none");
    json_decref(j);
    prom_page *pg = malloc(sizeof *pg);
    metrics_get(port, 0, pg);
    cr_assert_eq(metric(pg, "nawal_federated_val_round", NULL, NULL), 1);
    cr_assert_eq(metric(pg, "nawal_federated_val_results", NULL, NULL), want_rows);
    got = metric(pg, "nawal_federated_val_loss", NULL, NULL);
    cr_assert(fabs(got - mean) <= 1e-12 * mean, "/metrics mean %.17g, rows' %.17g", got, mean);
    free(pg);
}

/* EvaluateRequest when a round closes (before its RoundResult) and after a later Auth; EvaluateResults
 * recorded once per validator, refused with the wire's codes; /status and /metrics; a restart keeps them. */
Test(coord_serve, evaluations_requested_recorded_refused_and_kept) {
    coord_setup(MODEL_SMALL, "", 2, 600);
    serve_proc sp;
    serve_start(&sp, "--insecure-plaintext");
    agent a, b;
    agent_connect(&a, 'A', sp.port, NULL, 0);
    Nawal__RoundAnnounce *ra = handshake(&a, 1);
    uint8_t base[32];
    memcpy(base, ra->base_model_cid.data, 32);
    nawal_msg_free(&ra->base);
    cr_assert_eq(evaluate_requests_queued(&a), 0, "nothing to evaluate before a round closed");
    agent_connect(&b, 'B', sp.port, NULL, 0);
    ra = handshake(&b, 1);
    nawal_msg_free(&ra->base);

    /* before any round closed */
    send_eval_result(&a, 1, base, 32, 2.0f, 100);
    expect_error_saying(&a, ERRC(WRONG_ROUND), "only a closed round");

    /* round 1 closes: both are asked about its new model */
    char base_path[300], da[300], db[300];
    path_in_root(base_path, sizeof base_path, "base.safetensors");
    path_in_root(da, sizeof da, "delta_a.safetensors");
    path_in_root(db, sizeof db, "delta_b.safetensors");
    expect_ack(&a, send_join(&a, 1, 20000000000000000ull));
    expect_ack(&b, send_join(&b, 1, 1000000000000000ull));
    download(&a, base, base_path);
    uint8_t dcid[32];
    make_delta(base_path, da, 1, dcid);
    make_delta(base_path, db, 2, dcid);
    expect_ack(&a, submit(&a, 1, base, da, 0.8f, 0));
    expect_ack(&b, submit(&b, 1, base, db, 0.7f, 0));
    uint8_t model[32], model_b[32];
    expect_evaluate_request(&a, 1, model);
    expect_evaluate_request(&b, 1, model_b);
    cr_assert(!memcmp(model, model_b, 32));

    /* refusals, each with its code; the connection stays */
    uint8_t other[32];
    memcpy(other, model, 32);
    other[0] ^= 1;
    send_eval_result(&a, 1, other, 32, 2.0f, 100);
    expect_error_saying(&a, ERRC(WRONG_ROUND), "no evaluation of model");
    send_eval_result(&a, 99, model, 32, 2.0f, 100);
    expect_error_saying(&a, ERRC(WRONG_ROUND), "no round 99");
    send_eval_result(&a, 2, model, 32, 2.0f, 100); /* the open round */
    expect_error(&a, ERRC(WRONG_ROUND));
    send_eval_result(&a, 1, model, 31, 2.0f, 100);
    expect_error_saying(&a, ERRC(BAD_MESSAGE), "32 bytes");
    send_eval_result(&a, 1, model, 32, NAN, 100);
    expect_error_saying(&a, ERRC(BAD_MESSAGE), "finite");
    send_eval_result(&a, 1, model, 32, INFINITY, 100);
    expect_error(&a, ERRC(BAD_MESSAGE));
    send_eval_result(&a, 1, model, 32, -1.0f, 100);
    expect_error_saying(&a, ERRC(BAD_MESSAGE), ">= 0");
    send_eval_result(&a, 1, model, 32, 2.0f, 0);
    expect_error_saying(&a, ERRC(BAD_MESSAGE), "0 tokens");
    /* an agent that cannot evaluate says so: logged, nothing else */
    Nawal__Error e = NAWAL__ERROR__INIT;
    e.code = ERRC(INTERNAL);
    e.text = "cannot evaluate: no validation split";
    agent_send(&a, MSG(ERROR), &e.base);

    /* recorded once per validator */
    expect_ack(&a, send_eval_result(&a, 1, model, 32, 2.5f, 1000));
    send_eval_result(&a, 1, model, 32, 2.5f, 1000);
    expect_error_saying(&a, ERRC(DUPLICATE), "already sent its evaluation");
    expect_ack(&b, send_eval_result(&b, 1, model, 32, 3.25f, 3000));
    check_federated_val(sp.port, 2);
    prom_page *pg = malloc(sizeof *pg);
    metrics_get(sp.port, 0, pg);
    cr_assert_eq(metric(pg, "nawal_errors_sent_total", "code", "ERR_DUPLICATE"), 1);
    cr_assert_eq(metric(pg, "nawal_errors_sent_total", "code", "ERR_WRONG_ROUND"), 4);
    cr_assert_eq(metric(pg, "nawal_errors_sent_total", "code", "ERR_BAD_MESSAGE"), 5);
    cr_assert_eq(metric(pg, "nawal_messages_received_total", "type", "MSG_EVALUATE_RESULT"), 12);
    free(pg);
    char *log = coord_slurp(sp.log, NULL);
    cr_assert(log && strstr(log, "event=agent_error") && strstr(log, "no validation split"), "%s", log ? log : "");
    free(log);

    /* kill -9 and a restart: the rows stay, a duplicate is still one, an answered validator is not asked again */
    int st = serve_stop(&sp, SIGKILL);
    cr_assert(WIFSIGNALED(st));
    agent_free(&a);
    agent_free(&b);
    serve_start(&sp, "--insecure-plaintext");
    check_federated_val(sp.port, 2);
    agent_connect(&a, 'A', sp.port, NULL, 0);
    ra = handshake(&a, 1);
    cr_assert_eq(ra->round_id, 2);
    nawal_msg_free(&ra->base);
    cr_assert_eq(evaluate_requests_queued(&a), 0, "A answered round 1's request: not asked again");
    send_eval_result(&a, 1, model, 32, 2.5f, 1000);
    expect_error(&a, ERRC(DUPLICATE));

    /* a validator that has not answered is asked after its Auth, before the RoundAnnounce */
    cli("validator add --dir %s --pubkey %s --stake 1000000000000000", g_dir, fp_of('D'));
    agent d;
    agent_connect(&d, 'D', sp.port, NULL, 0);
    ra = handshake(&d, 1);
    nawal_msg_free(&ra->base);
    cr_assert_eq(evaluate_requests_queued(&d), 1);
    in_msg m = agent_next(&d, MSG(EVALUATE_REQUEST), 1);
    Nawal__EvaluateRequest *q = unpack(&m);
    cr_assert(q->round_id == 1 && q->model_cid.len == 32 && !memcmp(q->model_cid.data, model, 32));
    nawal_msg_free(&q->base);
    free(m.payload);
    expect_ack(&d, send_eval_result(&d, 1, model, 32, 1.75f, 500));
    check_federated_val(sp.port, 3);
    agent_free(&a);
    agent_free(&d);
    serve_stop_clean(&sp);
}

/* ---- models as HTTP GETs (http.c's blob_reply) ------------------------------- */

typedef struct {
    int done, ok, status;
    uint64_t first, total, got;
    char reason[160];
    FILE *out;
    int slow_us; /* sleep in each on_data: a slow reader keeps its stream open */
} get_state;

static int g_head(nawal_ws_fetch *f, int status, uint64_t first, uint64_t total, void *user) {
    (void)f;
    get_state *g = user;
    g->status = status;
    g->first = first;
    g->total = total;
    return 0;
}
static int g_data(nawal_ws_fetch *f, const uint8_t *d, size_t n, void *user) {
    (void)f;
    get_state *g = user;
    g->got += n;
    if (g->out) cr_assert_eq(fwrite(d, 1, n, g->out), n);
    if (g->slow_us) usleep((useconds_t)g->slow_us);
    return 0;
}
static void g_done(nawal_ws_fetch *f, int ok, const char *reason, void *user) {
    (void)f;
    get_state *g = user;
    g->done = 1;
    g->ok = ok;
    snprintf(g->reason, sizeof g->reason, "%s", reason);
}

/* GET path with "Authorization: auth" (NULL: none) from offset, on a's client; the body into out (may be NULL). */
static get_state blob_get(agent *a, int port, const char *path, const char *auth, uint64_t offset, FILE *out) {
    get_state g = {0};
    g.out = out;
    nawal_ws_fetch_handlers h = {g_head, g_data, g_done, &g};
    char err[256];
    cr_assert(nawal_ws_client_fetch(a->cl, "127.0.0.1", port, path, auth, offset, &h, err, sizeof err), "%s", err);
    for (double t0 = wt_now(); !g.done && wt_now() - t0 < 20;) agent_service(a, 10);
    cr_assert(g.done, "GET %s did not finish", path);
    return g;
}

/* The token of the Ack of Auth fetches global models (whole, from an offset, under a proxy's
 * prefix) but nothing else (a delta, an unknown CID), never without or with another token, and
 * not once its session has closed; serve --no-blob-http gives no token. */
Test(coord_serve, model_blobs_over_http_with_the_session_token) {
    coord_setup(MODEL_SMALL, "", 2, 600);
    serve_proc sp;
    serve_start(&sp, "--insecure-plaintext");
    agent a;
    agent_connect(&a, 'A', sp.port, NULL, 0);
    Nawal__RoundAnnounce *ra = handshake(&a, 1);
    uint8_t base[32];
    memcpy(base, ra->base_model_cid.data, 32);
    uint64_t size = ra->base_model_size;
    nawal_msg_free(&ra->base);
    cr_assert(a.has_blob_token, "the Ack of Auth carries no blob token");
    char tok[NAWAL_CID_HEX_BYTES], auth[80], bad_auth[80], hex[NAWAL_CID_HEX_BYTES], path[200], file[300], blob[4096];
    nawal_cid_to_hex(tok, a.blob_token);
    snprintf(auth, sizeof auth, "Nawal %s", tok);
    tok[0] = tok[0] == '0' ? '1' : '0';
    snprintf(bad_auth, sizeof bad_auth, "Nawal %s", tok);
    nawal_cid_to_hex(hex, base);
    snprintf(path, sizeof path, "/blobs/%s", hex);
    nawal_store *s = coord_open(g_dir);
    cr_assert_eq(nawal_blobstore_path(s, base, blob, sizeof blob), 0);

    /* whole, byte for byte */
    path_in_root(file, sizeof file, "got.safetensors");
    FILE *out = fopen(file, "wb");
    get_state g = blob_get(&a, sp.port, path, auth, 0, out);
    fclose(out);
    cr_assert(g.ok && g.status == 200 && g.got == size && g.total == size, "%d %s", g.status, g.reason);
    size_t n1 = 0, n2 = 0;
    char *x = coord_slurp(file, &n1), *y = coord_slurp(blob, &n2);
    cr_assert(x && y && n1 == n2 && !memcmp(x, y, n1), "the body is not the blob");
    /* from an offset; under a prefix */
    uint64_t off = size / 3;
    g = blob_get(&a, sp.port, path, auth, off, NULL);
    cr_assert(g.ok && g.status == 206 && g.first == off && g.got == size - off, "%d %s", g.status, g.reason);
    char pre[260];
    snprintf(pre, sizeof pre, "/nawal/blobs/%s", hex);
    g = blob_get(&a, sp.port, pre, auth, 0, NULL);
    cr_assert(g.ok && g.got == size, "under a prefix: %d %s", g.status, g.reason);
    /* refusals */
    cr_assert_eq(blob_get(&a, sp.port, path, NULL, 0, NULL).status, 401);
    cr_assert_eq(blob_get(&a, sp.port, path, bad_auth, 0, NULL).status, 401);
    /* a range from the end: 416 naming the size (RFC 7233 4.4), asked raw to see the header */
    char hdrs[200], want_cr[64];
    snprintf(hdrs, sizeof hdrs, "Authorization: %s\r\nRange: bytes=%llu-\r\n", auth, (unsigned long long)size);
    http_resp r416;
    http_request(sp.port, "GET", path, hdrs, &r416);
    snprintf(want_cr, sizeof want_cr, "bytes */%llu", (unsigned long long)size);
    cr_assert_eq(r416.status, 416, "%s", r416.body);
    cr_assert_str_eq(r416.crange, want_cr);
    free(r416.body);
    char other[260];
    snprintf(other, sizeof other, "/blobs/%064d", 7);
    cr_assert_eq(blob_get(&a, sp.port, other, auth, 0, NULL).status, 404);
    snprintf(other, sizeof other, "/blobs/%.10s", hex);
    cr_assert_eq(blob_get(&a, sp.port, other, auth, 0, NULL).status, 404);
    /* a blob that is not a global model (a validator's delta would be one): 404 */
    uint8_t delta_cid[32];
    path_in_root(file, sizeof file, "delta.safetensors");
    make_delta(blob, file, 7, delta_cid);
    char err[256];
    cr_assert_eq(nawal_blobstore_put_file(s, file, delta_cid, NULL, err, sizeof err), 0, "%s", err);
    nawal_cid_to_hex(hex, delta_cid);
    snprintf(other, sizeof other, "/blobs/%s", hex);
    cr_assert_eq(blob_get(&a, sp.port, other, auth, 0, NULL).status, 404);
    nawal_store_close(s);
    free(x);
    free(y);

    /* the token dies with its session */
    agent b;
    agent_connect(&b, 'B', sp.port, NULL, 0);
    agent_free(&a);
    for (double t0 = wt_now(); wt_now() - t0 < 1;) agent_service(&b, 10);
    cr_assert_eq(blob_get(&b, sp.port, path, auth, 0, NULL).status, 401);
    agent_free(&b);
    /* every answer counted by status in /metrics */
    prom_page *pg = malloc(sizeof *pg);
    metrics_get(sp.port, 0, pg);
    static const struct { const char *status; double n; } counts[] = {
        {"200", 2}, {"206", 1}, {"401", 3}, {"404", 3}, {"416", 1}};
    for (size_t i = 0; i < sizeof counts / sizeof *counts; i++)
        cr_assert_eq(metric(pg, "nawal_blob_http_requests_total", "status", counts[i].status), counts[i].n,
                     "status %s", counts[i].status);
    cr_assert(metric(pg, "nawal_sent_bytes_total", NULL, NULL) >= 2.0 * (double)size, "blob bytes counted as sent");
    free(pg);
    serve_stop_clean(&sp);

    /* --no-blob-http: no token */
    serve_start(&sp, "--insecure-plaintext --no-blob-http");
    agent_connect(&a, 'A', sp.port, NULL, 0);
    ra = handshake(&a, 1);
    nawal_msg_free(&ra->base);
    cr_assert(!a.has_blob_token, "a token despite --no-blob-http");
    agent_free(&a);
    serve_stop_clean(&sp);
}

/* At most two GETs at once per session (429 for a third), and a session's streams stop when it
 * ends: slow readers on another connection keep two streams of a ~10 MB model open. */
Test(coord_serve, blob_gets_capped_and_bound_to_their_session) {
    coord_setup("2,4,512,128,8192", "", 2, 600); /* ~42 MB: more than loopback socket buffers hold */
    serve_proc sp;
    serve_start(&sp, "--insecure-plaintext");
    agent a, b;
    agent_connect(&a, 'A', sp.port, NULL, 0);
    Nawal__RoundAnnounce *ra = handshake(&a, 1);
    char hex[NAWAL_CID_HEX_BYTES], tok[NAWAL_CID_HEX_BYTES], auth[80], path[200], err[256];
    nawal_cid_to_hex(hex, ra->base_model_cid.data);
    uint64_t size = ra->base_model_size;
    nawal_msg_free(&ra->base);
    cr_assert(a.has_blob_token && size > (32u << 20), "model of %llu bytes", (unsigned long long)size);
    nawal_cid_to_hex(tok, a.blob_token);
    snprintf(auth, sizeof auth, "Nawal %s", tok);
    snprintf(path, sizeof path, "/blobs/%s", hex);
    agent_connect(&b, 'B', sp.port, NULL, 0); /* a's token used from another connection */
    get_state g[3] = {{0}};
    nawal_ws_fetch_handlers h[3];
    for (int i = 0; i < 2; i++) {
        g[i].slow_us = 40000;
        h[i] = (nawal_ws_fetch_handlers){g_head, g_data, g_done, &g[i]};
        cr_assert(nawal_ws_client_fetch(b.cl, "127.0.0.1", sp.port, path, auth, 0, &h[i], err, sizeof err), "%s", err);
    }
    for (double t0 = wt_now(); wt_now() - t0 < 10 && !(g[0].got && g[1].got);) agent_service(&b, 10);
    cr_assert(g[0].got && g[1].got && !g[0].done && !g[1].done, "two streams under way");
    h[2] = (nawal_ws_fetch_handlers){g_head, g_data, g_done, &g[2]};
    cr_assert(nawal_ws_client_fetch(b.cl, "127.0.0.1", sp.port, path, auth, 0, &h[2], err, sizeof err), "%s", err);
    for (double t0 = wt_now(); wt_now() - t0 < 10 && !g[2].done;) agent_service(&b, 10);
    cr_assert(g[2].done && !g[2].ok && g[2].status == 429, "a third GET: %d %s", g[2].status, g[2].reason);
    /* a's session ends: both streams stop short */
    agent_free(&a);
    for (double t0 = wt_now(); wt_now() - t0 < 30 && !(g[0].done && g[1].done);) agent_service(&b, 10);
    for (int i = 0; i < 2; i++)
        cr_assert(g[i].done && !g[i].ok && g[i].got < size, "stream %d: %s after %llu of %llu bytes", i, g[i].reason,
                  (unsigned long long)g[i].got, (unsigned long long)size);
    agent_free(&b);
    serve_stop_clean(&sp);
}
