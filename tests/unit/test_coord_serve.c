/* test_coord_serve.c - `nawal-coordinator serve` end to end: the binary runs
 * as a child process on a loopback port (plaintext and TLS, with a
 * throw-away openssl certificate), driven by a scripted agent written here
 * on proto/'s transport client, envelopes and blob streaming (the real
 * agent's session is a later issue). Checked: the Hello/Challenge/Auth
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
 * a second session of a validator replacing the first);
 * GET /metrics read by a strict Prometheus text parser and GET /status as
 * JSON, over plaintext and TLS; a clean exit on SIGTERM. */
#include "blobstream.h"
#include "cid.h"
#include "coord_test_util.h"
#include "envelope.h"
#include "prom_test_util.h"
#include "safetensors.h"
#include "ws_test_util.h"

#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define MSG(x) NAWAL__MSG_TYPE__MSG_##x
#define ERRC(x) NAWAL__ERROR_CODE__ERR_##x
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

typedef struct {
    pid_t pid;
    int port;
    char log[200];
} serve_proc;

/* Starts `serve --dir g_dir --listen 127.0.0.1:0 EXTRA...` and waits for its port. */
static void serve_start(serve_proc *p, const char *extra) {
    snprintf(p->log, sizeof p->log, "%s/serve%d.log", g_root, g_serves++);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "exec %s serve --dir %s --listen 127.0.0.1:0 --log-level debug %s", NAWAL_COORDINATOR_BIN,
             g_dir, extra);
    p->pid = fork();
    cr_assert(p->pid >= 0);
    if (p->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a failed test */
        int fd = open(p->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, 1);
        dup2(fd, 2);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    p->port = 0;
    for (double t0 = wt_now(); wt_now() - t0 < 20 && !p->port;) {
        char *log = coord_slurp(p->log, NULL);
        const char *at = log ? strstr(log, "event=serve_listening") : NULL;
        if (at && (at = strstr(at, " port="))) p->port = atoi(at + 6);
        free(log);
        int st;
        if (!p->port && waitpid(p->pid, &st, WNOHANG) == p->pid) {
            char *l = coord_slurp(p->log, NULL);
            cr_assert_fail("serve exited at start (status %d):\n%s", st, l ? l : "");
        }
        if (!p->port) usleep(20000);
    }
    cr_assert(p->port > 0, "serve did not report its port (log %s)", p->log);
}

/* Sends sig and waits for the exit; returns the wait status. */
static int serve_stop(serve_proc *p, int sig) {
    kill(p->pid, sig);
    int st = -1;
    for (double t0 = wt_now(); wt_now() - t0 < 20;) {
        if (waitpid(p->pid, &st, WNOHANG) == p->pid) return st;
        usleep(10000);
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &st, 0);
    cr_assert_fail("serve did not stop within 20 s of signal %d", sig);
    return st;
}

static void serve_stop_clean(serve_proc *p) {
    int st = serve_stop(p, SIGTERM);
    char *log = coord_slurp(p->log, NULL);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "serve exit status %d after SIGTERM:\n%s", st, log ? log : "");
    cr_assert(log && strstr(log, "event=serve_stopped"), "no serve_stopped line:\n%s", log ? log : "");
    free(log);
}

/* ---- a scripted agent ----------------------------------------------------- */

typedef struct {
    uint32_t type;
    uint64_t seq;
    uint8_t *payload;
    size_t len;
} in_msg;

#define INBOX 256

typedef struct {
    nawal_ws_client *cl;
    nawal_ws_conn *conn;
    int opened, closed;
    char close_reason[200];
    nawal_identity id;
    uint64_t seq;
    uint8_t coord_pk[32];
    nawal_peer_state coord;
    nawal_envelope_policy pol;
    int bad_envelopes;
    in_msg q[INBOX];
    int nq;
    /* a download in progress */
    nawal_blob_receiver *rx;
    int rx_state; /* 0 running, 1 complete, -1 failed */
    char rx_err[256];
    /* what we upload when the coordinator asks */
    char up_path[300];
    uint8_t up_cid[32];
    nawal_blob_sender *tx;
    int up_requests;
    int refuse_upload;
} agent;

static int coord_only(const uint8_t sender[32], void *ctx) { return !memcmp(sender, ((agent *)ctx)->coord_pk, 32); }

static int agent_sink_send(void *ctx, const uint8_t *msg, size_t len) {
    agent *a = ctx;
    uint8_t *buf;
    size_t n;
    if (nawal_envelope_seal(&a->id, MSG(BLOB_CHUNK), ++a->seq, nawal_now_ms(), msg, len, &buf, &n, NULL, 0)) {
        errno = ENOMEM;
        return -1;
    }
    int rc = nawal_ws_send(a->conn, buf, n);
    int e = errno;
    free(buf);
    errno = e;
    return rc;
}
static size_t agent_sink_pending(void *ctx) { return nawal_ws_queued(((agent *)ctx)->conn); }

static void agent_pump(agent *a) {
    if (!a->tx) return;
    nawal_blob_sink sink = { agent_sink_send, agent_sink_pending, a };
    int rc = nawal_blob_sender_pump(a->tx, &sink, NULL, 0);
    if (rc != 0) {
        nawal_blob_sender_free(a->tx);
        a->tx = NULL;
    }
}

static void agent_send_raw(agent *a, const uint8_t *buf, size_t len) {
    cr_assert_eq(nawal_ws_send(a->conn, buf, len), 0, "send: %s", strerror(errno));
}

static uint64_t agent_send(agent *a, uint32_t type, const ProtobufCMessage *msg) {
    uint8_t *buf;
    size_t n;
    char err[256] = "";
    uint64_t seq = ++a->seq;
    cr_assert_eq(nawal_envelope_seal_msg(&a->id, type, seq, nawal_now_ms(), msg, &buf, &n, err, sizeof err), 0, "%s", err);
    agent_send_raw(a, buf, n);
    free(buf);
    return seq;
}

/* The coordinator asks for our delta. */
static void agent_serve_request(agent *a, const uint8_t *payload, size_t len) {
    uint8_t cid[32];
    uint64_t off;
    a->up_requests++;
    cr_assert_eq(nawal_blob_request_decode(payload, len, cid, &off, NULL, 0), 0);
    if (a->refuse_upload || !a->up_path[0] || memcmp(cid, a->up_cid, 32)) {
        Nawal__Error e = NAWAL__ERROR__INIT;
        e.code = ERRC(NOT_FOUND);
        e.text = "no such blob here";
        agent_send(a, MSG(ERROR), &e.base);
        return;
    }
    nawal_blob_sender_free(a->tx);
    a->tx = NULL;
    char err[256] = "";
    cr_assert_eq(nawal_blob_sender_open(&a->tx, a->up_path, cid, off, 0, err, sizeof err), 0, "%s", err);
    agent_pump(a);
}

static void a_open(nawal_ws_conn *c, void *user) {
    (void)user;
    ((agent *)nawal_ws_get_data(c))->opened = 1;
}

static void a_message(nawal_ws_conn *c, const uint8_t *msg, size_t len, void *user) {
    (void)user;
    agent *a = nawal_ws_get_data(c);
    nawal_envelope_view v;
    if (nawal_envelope_open(msg, len, &a->pol, &a->coord, &v, NULL, 0)) {
        a->bad_envelopes++;
        return;
    }
    if (v.type == MSG(BLOB_CHUNK) && a->rx && a->rx_state == 0) {
        int rc = nawal_blob_receiver_chunk(a->rx, v.payload, v.payload_len, a->rx_err, sizeof a->rx_err);
        if (rc) a->rx_state = rc > 0 ? 1 : -1;
    } else if (v.type == MSG(BLOB_REQUEST)) {
        agent_serve_request(a, v.payload, v.payload_len);
    } else if (a->nq < INBOX) {
        in_msg *m = &a->q[a->nq++];
        m->type = v.type;
        m->seq = v.sequence;
        m->len = v.payload_len;
        m->payload = malloc(v.payload_len ? v.payload_len : 1);
        memcpy(m->payload, v.payload, v.payload_len);
    }
    nawal_envelope_view_free(&v);
}

static void a_drain(nawal_ws_conn *c, void *user) {
    (void)user;
    agent_pump(nawal_ws_get_data(c));
}

static void a_close(nawal_ws_conn *c, const char *reason, void *user) {
    (void)user;
    agent *a = nawal_ws_get_data(c);
    a->closed = 1;
    snprintf(a->close_reason, sizeof a->close_reason, "%s", reason ? reason : "");
}

static void coord_pubkey(uint8_t pk[32]) {
    char path[300];
    snprintf(path, sizeof path, "%s/identity.pub", g_dir);
    char *hex = coord_slurp(path, NULL);
    cr_assert(hex);
    hex[64] = 0;
    cr_assert_eq(nawal_pubkey_from_hex(pk, hex, NULL, 0), 0);
    free(hex);
}

static void agent_key(nawal_identity *id, uint8_t which) {
    uint8_t seed[32];
    memset(seed, which, sizeof seed);
    cr_assert_eq(nawal_identity_from_seed(id, seed, NULL, 0), 0);
}

static void agent_service(agent *a, int ms) { nawal_ws_client_service(a->cl, ms); }

/* Connects (TLS when ca is set) and waits for the socket to open (or fail, when expect_fail). */
static void agent_connect(agent *a, uint8_t which, int port, const char *ca, int expect_fail) {
    memset(a, 0, sizeof *a);
    agent_key(&a->id, which);
    coord_pubkey(a->coord_pk);
    nawal_envelope_policy_default(&a->pol);
    a->pol.is_known = coord_only;
    a->pol.ctx = a;
    nawal_ws_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.insecure_plaintext = ca == NULL;
    cfg.ca_file = ca;
    nawal_ws_handlers h = { a_open, a_message, a_drain, a_close, NULL };
    char err[256] = "";
    a->cl = nawal_ws_client_new(&cfg, &h, err, sizeof err);
    cr_assert(a->cl, "%s", err);
    /* the data pointer is set before any callback: connect only queues the work */
    a->conn = nawal_ws_client_connect(a->cl, "127.0.0.1", port, "/", err, sizeof err);
    cr_assert(a->conn, "%s", err);
    nawal_ws_set_data(a->conn, a);
    for (double t0 = wt_now(); wt_now() - t0 < 10 && !a->opened && !a->closed;) agent_service(a, 10);
    if (expect_fail) cr_assert(a->closed && !a->opened, "connection opened but should not have");
    else cr_assert(a->opened, "connection failed: %s", a->close_reason);
}

static void agent_free(agent *a) {
    nawal_blob_sender_free(a->tx);
    nawal_blob_receiver_free(a->rx);
    if (a->cl) nawal_ws_client_free(a->cl);
    for (int i = 0; i < a->nq; i++) free(a->q[i].payload);
    memset(a, 0, sizeof *a);
}

/* Waits for the first queued message of type (0: Ack or Error); removes and
 * returns it (free its payload), or fails the test. */
static in_msg agent_next(agent *a, uint32_t type, double timeout_s) {
    for (double t0 = wt_now();;) {
        for (int i = 0; i < a->nq; i++)
            if (a->q[i].type == type || (type == 0 && (a->q[i].type == MSG(ACK) || a->q[i].type == MSG(ERROR)))) {
                in_msg m = a->q[i];
                memmove(&a->q[i], &a->q[i + 1], (size_t)(a->nq - i - 1) * sizeof *a->q);
                a->nq--;
                return m;
            }
        cr_assert(wt_now() - t0 < timeout_s, "no %s within %.0f s (closed: %d %s)",
                  type ? nawal_msg_type_name(type) : "Ack/Error", timeout_s, a->closed, a->close_reason);
        agent_service(a, 10);
    }
}

static void *unpack(const in_msg *m) {
    ProtobufCMessage *p = NULL;
    cr_assert_eq(nawal_msg_unpack(m->type, m->payload, m->len, &p, NULL, 0), 0, "%s does not decode",
                 nawal_msg_type_name(m->type));
    return p;
}

/* The next Ack/Error must be an Ack of sequence seq. */
static void expect_ack(agent *a, uint64_t seq) {
    in_msg m = agent_next(a, 0, 20);
    if (m.type == MSG(ERROR)) {
        Nawal__Error *e = unpack(&m);
        cr_assert_fail("expected an Ack, got Error %s: %s", nawal_error_code_name(e->code), e->text);
    }
    Nawal__Ack *ack = unpack(&m);
    cr_assert_eq(ack->sequence, seq, "Ack names sequence %llu, not %llu", (unsigned long long)ack->sequence,
                 (unsigned long long)seq);
    nawal_msg_free(&ack->base);
    free(m.payload);
}

/* The next Ack/Error must be an Error with code. */
static void expect_error(agent *a, int code) {
    in_msg m = agent_next(a, 0, 20);
    cr_assert_eq(m.type, MSG(ERROR), "expected Error %s, got an Ack", nawal_error_code_name(code));
    Nawal__Error *e = unpack(&m);
    cr_assert_eq((int)e->code, code, "expected %s, got %s: %s", nawal_error_code_name(code), nawal_error_code_name(e->code),
                 e->text);
    cr_assert(e->text && e->text[0], "an Error says why");
    nawal_msg_free(&e->base);
    free(m.payload);
}

static void expect_closed(agent *a) {
    for (double t0 = wt_now(); wt_now() - t0 < 10 && !a->closed;) agent_service(a, 10);
    cr_assert(a->closed, "the coordinator kept the connection open");
}

static void send_hello(agent *a, const uint8_t *pubkey) {
    Nawal__Hello h = NAWAL__HELLO__INIT;
    h.version = NAWAL__VERSION__PROTOCOL_VERSION;
    h.software = "test_coord_serve";
    h.pubkey.data = (uint8_t *)pubkey;
    h.pubkey.len = 32;
    agent_send(a, MSG(HELLO), &h.base);
}

/* Hello, Challenge, Auth, Ack; returns the RoundAnnounce that follows (caller frees) or NULL if none is expected. */
static Nawal__RoundAnnounce *handshake(agent *a, int want_announce) {
    send_hello(a, a->id.pk);
    in_msg m = agent_next(a, MSG(CHALLENGE), 10);
    Nawal__Challenge *c = unpack(&m);
    cr_assert_eq(c->nonce.len, 32);
    cr_assert(c->expires_ms > nawal_now_ms());
    Nawal__Auth au = NAWAL__AUTH__INIT;
    au.nonce = c->nonce;
    uint64_t seq = agent_send(a, MSG(AUTH), &au.base);
    nawal_msg_free(&c->base);
    free(m.payload);
    expect_ack(a, seq);
    if (!want_announce) return NULL;
    m = agent_next(a, MSG(ROUND_ANNOUNCE), 10);
    Nawal__RoundAnnounce *ra = unpack(&m);
    free(m.payload);
    return ra;
}

static uint64_t send_join(agent *a, uint64_t round, uint64_t stake) {
    Nawal__Join j = NAWAL__JOIN__INIT;
    j.round_id = round;
    j.stake_planck = stake;
    return agent_send(a, MSG(JOIN), &j.base);
}

/* Downloads cid into path; returns its size. */
static uint64_t download(agent *a, const uint8_t cid[32], const char *path) {
    char err[256] = "";
    cr_assert_eq(nawal_blob_receiver_open(&a->rx, path, cid, 0, err, sizeof err), 0, "%s", err);
    a->rx_state = 0;
    Nawal__BlobRequest br = NAWAL__BLOB_REQUEST__INIT;
    br.cid.data = (uint8_t *)cid;
    br.cid.len = 32;
    agent_send(a, MSG(BLOB_REQUEST), &br.base);
    for (double t0 = wt_now(); wt_now() - t0 < 60 && a->rx_state == 0 && !a->closed;) agent_service(a, 10);
    cr_assert_eq(a->rx_state, 1, "download: %s", a->rx_err[0] ? a->rx_err : "did not complete");
    uint64_t total = nawal_blob_receiver_total(a->rx);
    nawal_blob_receiver_free(a->rx);
    a->rx = NULL;
    uint8_t got[32];
    uint64_t size;
    cr_assert_eq(nawal_cid_of_file(got, &size, path, err, sizeof err), 0, "%s", err);
    cr_assert(nawal_cid_equal(got, cid), "the downloaded file hashes to another CID");
    cr_assert_eq(size, total);
    return size;
}

/* A delta for the model in base_path (same tensors, small values from seed) written to out; its CID in cid. */
static uint64_t make_delta(const char *base_path, const char *out, uint64_t seed, uint8_t cid[32]) {
    nawal_st_file *f;
    char err[256] = "";
    cr_assert_eq(nawal_st_read(&f, base_path, err, sizeof err), 0, "%s", err);
    size_t n = nawal_st_count(f);
    nawal_st_tensor *ts = calloc(n, sizeof *ts);
    float **bufs = calloc(n, sizeof *bufs);
    for (size_t i = 0; i < n; i++) {
        ts[i] = *nawal_st_at(f, i);
        size_t k = ts[i].nbytes / 4;
        bufs[i] = malloc(ts[i].nbytes ? ts[i].nbytes : 4);
        for (size_t e = 0; e < k; e++) bufs[i][e] = 1e-3f * test_rand_normal(&seed);
        ts[i].data = bufs[i];
    }
    cr_assert_eq(nawal_st_write(out, ts, n, NULL, err, sizeof err), 0, "%s", err);
    for (size_t i = 0; i < n; i++) free(bufs[i]);
    free(bufs);
    free(ts);
    nawal_st_free(f);
    uint64_t size;
    cr_assert_eq(nawal_cid_of_file(cid, &size, out, err, sizeof err), 0, "%s", err);
    return size;
}

static uint64_t send_update(agent *a, uint64_t round, const uint8_t base[32], const uint8_t delta[32], uint64_t size,
                            float quality, double eps) {
    Nawal__Metrics mt = NAWAL__METRICS__INIT;
    mt.train_loss = 3.5f;
    mt.val_loss = 3.6f;
    Nawal__UpdateSubmit u = NAWAL__UPDATE_SUBMIT__INIT;
    u.round_id = round;
    u.base_cid.data = (uint8_t *)base;
    u.base_cid.len = 32;
    u.num_examples = 100;
    u.metrics = &mt;
    u.epsilon_spent = eps;
    u.delta_cid.data = (uint8_t *)delta;
    u.delta_cid.len = 32;
    u.delta_size = size;
    u.quality = quality;
    return agent_send(a, MSG(UPDATE_SUBMIT), &u.base);
}

/* Offers the delta file for upload, then submits it. */
static uint64_t submit(agent *a, uint64_t round, const uint8_t base[32], const char *delta_path, float quality,
                       double eps) {
    uint8_t cid[32];
    uint64_t size;
    cr_assert_eq(nawal_cid_of_file(cid, &size, delta_path, NULL, 0), 0);
    snprintf(a->up_path, sizeof a->up_path, "%s", delta_path);
    memcpy(a->up_cid, cid, 32);
    return send_update(a, round, base, cid, size, quality, eps);
}

/* ---- HTTP ----------------------------------------------------------------- */

typedef struct {
    int status;
    char ctype[128];
    char *body;
} http_resp;

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
        if (!strncasecmp(line, "content-type:", 13)) {
            const char *v = line + 13;
            while (*v == ' ') v++;
            snprintf(r->ctype, sizeof r->ctype, "%.*s", (int)(eol - v), v);
        }
        line = eol + 2;
    }
    size_t blen = n - (size_t)(hend + 4 - raw);
    cr_assert_eq((long)blen, clen, "body of %zu bytes, Content-Length %ld", blen, clen);
    r->body = malloc(blen + 1);
    memcpy(r->body, hend + 4, blen);
    r->body[blen] = 0;
}

static void http_get(int port, const char *method, const char *path, http_resp *r) {
    int fd = wt_raw_connect(port);
    cr_assert(fd >= 0);
    char req[256];
    snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", method, path);
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
