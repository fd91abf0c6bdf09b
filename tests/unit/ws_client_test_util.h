/* ws_client_test_util.h - a scripted agent for the coordinator tests that
 * talk to `nawal-coordinator serve` from the test process (test_coord_serve.c,
 * test_coord_forged.c), written on proto/'s transport client, envelopes and
 * blob streaming: connect, Hello/Challenge/Auth, Join, download a blob with
 * its CID checked, submit an update and serve the coordinator's BlobRequest
 * for the delta, answer an EvaluateRequest, and wait for the coordinator's messages (Ack, Error,
 * RoundAnnounce, RoundResult...). Everything asserts through Criterion, on
 * the test's main thread. */
#ifndef NAWAL_WS_CLIENT_TEST_UTIL_H
#define NAWAL_WS_CLIENT_TEST_UTIL_H

#include "blobstream.h"
#include "cid.h"
#include "coord_test_util.h"
#include "envelope.h"
#include "identity.h"
#include "safetensors.h"
#include "ws_test_util.h"

#define MSG(x) NAWAL__MSG_TYPE__MSG_##x
#define ERRC(x) NAWAL__ERROR_CODE__ERR_##x


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
    /* the blob token the Ack of Auth gave (GET /blobs/<cid>) */
    uint8_t blob_token[32];
    int has_blob_token;
} agent;

static inline int coord_only(const uint8_t sender[32], void *ctx) { return !memcmp(sender, ((agent *)ctx)->coord_pk, 32); }

static inline int agent_sink_send(void *ctx, const uint8_t *msg, size_t len) {
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
static inline size_t agent_sink_pending(void *ctx) { return nawal_ws_queued(((agent *)ctx)->conn); }

static inline void agent_pump(agent *a) {
    if (!a->tx) return;
    nawal_blob_sink sink = { agent_sink_send, agent_sink_pending, a };
    int rc = nawal_blob_sender_pump(a->tx, &sink, NULL, 0);
    if (rc != 0) {
        nawal_blob_sender_free(a->tx);
        a->tx = NULL;
    }
}

static inline void agent_send_raw(agent *a, const uint8_t *buf, size_t len) {
    cr_assert_eq(nawal_ws_send(a->conn, buf, len), 0, "send: %s", strerror(errno));
}

/* Seals msg with the next sequence number (not sent); *buf is malloc'ed. Returns the sequence. */
static inline uint64_t agent_seal(agent *a, uint32_t type, const ProtobufCMessage *msg, uint8_t **buf, size_t *n) {
    char err[256] = "";
    uint64_t seq = ++a->seq;
    cr_assert_eq(nawal_envelope_seal_msg(&a->id, type, seq, nawal_now_ms(), msg, buf, n, err, sizeof err), 0, "%s", err);
    return seq;
}

static inline uint64_t agent_send(agent *a, uint32_t type, const ProtobufCMessage *msg) {
    uint8_t *buf;
    size_t n;
    uint64_t seq = agent_seal(a, type, msg, &buf, &n);
    agent_send_raw(a, buf, n);
    free(buf);
    return seq;
}

/* The coordinator asks for our delta. */
static inline void agent_serve_request(agent *a, const uint8_t *payload, size_t len) {
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

static inline void a_open(nawal_ws_conn *c, void *user) {
    (void)user;
    ((agent *)nawal_ws_get_data(c))->opened = 1;
}

static inline void a_message(nawal_ws_conn *c, const uint8_t *msg, size_t len, void *user) {
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

static inline void a_drain(nawal_ws_conn *c, void *user) {
    (void)user;
    agent_pump(nawal_ws_get_data(c));
}

static inline void a_close(nawal_ws_conn *c, const char *reason, void *user) {
    (void)user;
    agent *a = nawal_ws_get_data(c);
    a->closed = 1;
    snprintf(a->close_reason, sizeof a->close_reason, "%s", reason ? reason : "");
}

/* the coordinator's public key, from its directory's identity.pub */
static inline void coord_pubkey(const char *dir, uint8_t pk[32]) {
    char path[300];
    snprintf(path, sizeof path, "%s/identity.pub", dir);
    char *hex = coord_slurp(path, NULL);
    cr_assert(hex);
    hex[64] = 0;
    cr_assert_eq(nawal_pubkey_from_hex(pk, hex, NULL, 0), 0);
    free(hex);
}

static inline void agent_key(nawal_identity *id, uint8_t which) {
    uint8_t seed[32];
    memset(seed, which, sizeof seed);
    cr_assert_eq(nawal_identity_from_seed(id, seed, NULL, 0), 0);
}

static inline void agent_service(agent *a, int ms) { nawal_ws_client_service(a->cl, ms); }

/* Connects as id to the coordinator of directory coord_dir (TLS when ca is
 * set) and waits for the socket to open (or fail, when expect_fail). */
static inline void agent_connect_as(agent *a, const nawal_identity *id, const char *coord_dir, int port, const char *ca,
                                    int expect_fail) {
    memset(a, 0, sizeof *a);
    a->id = *id;
    coord_pubkey(coord_dir, a->coord_pk);
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

static inline void agent_free(agent *a) {
    nawal_blob_sender_free(a->tx);
    nawal_blob_receiver_free(a->rx);
    if (a->cl) nawal_ws_client_free(a->cl);
    for (int i = 0; i < a->nq; i++) free(a->q[i].payload);
    memset(a, 0, sizeof *a);
}

/* Waits for the first queued message of type (0: Ack or Error); removes and
 * returns it (free its payload), or fails the test. */
static inline in_msg agent_next(agent *a, uint32_t type, double timeout_s) {
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

static inline void *unpack(const in_msg *m) {
    ProtobufCMessage *p = NULL;
    cr_assert_eq(nawal_msg_unpack(m->type, m->payload, m->len, &p, NULL, 0), 0, "%s does not decode",
                 nawal_msg_type_name(m->type));
    return p;
}

/* The next Ack/Error must be an Ack of sequence seq. */
static inline void expect_ack(agent *a, uint64_t seq) {
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

/* The next Ack/Error must be an Error with code (and, when text is set, saying text). */
static inline void expect_error_saying(agent *a, int code, const char *text) {
    in_msg m = agent_next(a, 0, 20);
    cr_assert_eq(m.type, MSG(ERROR), "expected Error %s, got an Ack", nawal_error_code_name(code));
    Nawal__Error *e = unpack(&m);
    cr_assert_eq((int)e->code, code, "expected %s, got %s: %s", nawal_error_code_name(code), nawal_error_code_name(e->code),
                 e->text);
    cr_assert(e->text && e->text[0], "an Error says why");
    if (text) cr_assert(strstr(e->text, text), "Error %s says \"%s\", not \"%s\"", nawal_error_code_name(code), e->text, text);
    nawal_msg_free(&e->base);
    free(m.payload);
}

static inline void expect_error(agent *a, int code) { expect_error_saying(a, code, NULL); }

static inline void expect_closed(agent *a) {
    for (double t0 = wt_now(); wt_now() - t0 < 10 && !a->closed;) agent_service(a, 10);
    cr_assert(a->closed, "the coordinator kept the connection open");
}

static inline void send_hello(agent *a, const uint8_t *pubkey) {
    Nawal__Hello h = NAWAL__HELLO__INIT;
    h.version = NAWAL__VERSION__PROTOCOL_VERSION;
    h.software = "nawal-scripted-test-agent";
    h.pubkey.data = (uint8_t *)pubkey;
    h.pubkey.len = 32;
    agent_send(a, MSG(HELLO), &h.base);
}

/* Hello, Challenge, Auth, Ack; returns the RoundAnnounce that follows (caller frees) or NULL if none is expected. */
static inline Nawal__RoundAnnounce *handshake(agent *a, int want_announce) {
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
    m = agent_next(a, MSG(ACK), 20);
    Nawal__Ack *ack = unpack(&m);
    cr_assert_eq(ack->sequence, seq, "the Ack of Auth names sequence %llu", (unsigned long long)ack->sequence);
    a->has_blob_token = ack->blob_token.len == 32;
    if (a->has_blob_token) memcpy(a->blob_token, ack->blob_token.data, 32);
    nawal_msg_free(&ack->base);
    free(m.payload);
    if (!want_announce) return NULL;
    m = agent_next(a, MSG(ROUND_ANNOUNCE), 10);
    Nawal__RoundAnnounce *ra = unpack(&m);
    free(m.payload);
    return ra;
}

static inline uint64_t send_join(agent *a, uint64_t round, uint64_t stake) {
    Nawal__Join j = NAWAL__JOIN__INIT;
    j.round_id = round;
    j.stake_planck = stake;
    return agent_send(a, MSG(JOIN), &j.base);
}

/* An EvaluateResult for round's model (cid_len bytes of cid); returns its sequence. */
static inline uint64_t send_eval_result(agent *a, uint64_t round, const uint8_t *cid, size_t cid_len, float loss,
                                        uint64_t tokens) {
    Nawal__EvaluateResult r = NAWAL__EVALUATE_RESULT__INIT;
    r.round_id = round;
    r.model_cid.data = (uint8_t *)cid;
    r.model_cid.len = cid_len;
    r.loss = loss;
    r.tokens = tokens;
    return agent_send(a, MSG(EVALUATE_RESULT), &r.base);
}

/* Downloads cid into path; returns its size. */
static inline uint64_t download(agent *a, const uint8_t cid[32], const char *path) {
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
static inline uint64_t make_delta(const char *base_path, const char *out, uint64_t seed, uint8_t cid[32]) {
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

static inline uint64_t send_update(agent *a, uint64_t round, const uint8_t base[32], const uint8_t delta[32], uint64_t size,
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
static inline uint64_t submit(agent *a, uint64_t round, const uint8_t base[32], const char *delta_path, float quality,
                       double eps) {
    uint8_t cid[32];
    uint64_t size;
    cr_assert_eq(nawal_cid_of_file(cid, &size, delta_path, NULL, 0), 0);
    snprintf(a->up_path, sizeof a->up_path, "%s", delta_path);
    memcpy(a->up_cid, cid, 32);
    return send_update(a, round, base, cid, size, quality, eps);
}

#endif
