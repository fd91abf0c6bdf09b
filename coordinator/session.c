/* session.c - one agent connection of `serve` (the protocol is in
 * serve.h): the envelope checks of every incoming message
 * (nawal_envelope_open with the connection's peer state), the
 * Hello/Challenge/Auth handshake, then Join, base model downloads (a
 * blobstream sender whose chunks are sealed one by one), UpdateSubmit with
 * the delta pulled from the agent (a blobstream receiver into D/uploads,
 * adopted into the blob store once its CID checks), the EvaluateRequest of
 * the latest closed round's model (after Auth, unless the validator
 * answered it; when a round closes, nawal_session_request_evaluation) and
 * the EvaluateResult that answers it, Heartbeat, and the Error for
 * everything else. The round logic itself is rounds.h's: a
 * request is answered only after the call that decided it has returned,
 * i.e. after its commit. */
#include "serve_internal.h"

#include "blobstream.h"
#include "cid.h"
#include "log.h"
#include "registry.h"
#include "rewards.h"
#include "roundmsg.h"
#include "rounds.h"
#include "store_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NONCE_BYTES 32
#define CHALLENGE_MS 30000 /* an Auth must answer its Challenge within this */

typedef enum { SESS_NEW, SESS_CHALLENGED, SESS_AUTHED } sess_state;

struct nawal_session {
    nawal_server *srv;
    nawal_ws_conn *conn;
    nawal_session *prev, *next;
    sess_state state;
    int closing;
    int64_t opened_ms;
    nawal_peer_state peer;
    uint8_t pk[NAWAL_PUBKEY_BYTES];         /* the authenticated key */
    char fp[NAWAL_FINGERPRINT_SHORT_BYTES]; /* its short fingerprint, for logs */
    uint8_t nonce[NONCE_BYTES];
    int64_t nonce_expires_ms;
    /* base model download */
    nawal_blob_sender *down;
    /* delta upload, pending UpdateSubmit */
    nawal_blob_receiver *up;
    char up_path[4200];
    uint64_t up_seq;             /* the UpdateSubmit's envelope sequence (the Ack names it) */
    int64_t up_round;
    uint8_t up_base[32], up_delta[32];
    uint64_t up_examples;
    uint32_t up_quality_ppm;
    double up_epsilon;
    float up_train_loss, up_val_loss;
    /* the latest round whose EvaluateRequest this session was sent (one per round) */
    int64_t eval_round;
    uint8_t blob_token[32]; /* GET /blobs/<cid>'s bearer token, once authenticated (and blob_http) */
    int has_blob_token;
    int blob_streams;       /* GETs of this token being streamed */
};

/* ---- sending ---------------------------------------------------------------- */

static void session_close(nawal_session *s, const char *why, int after_queued) {
    if (s->closing) return;
    s->closing = 1;
    if (after_queued) nawal_ws_close_when_sent(s->conn, why);
    else nawal_ws_close(s->conn, why);
}

static int send_bytes(nawal_session *s, const uint8_t *buf, size_t len) {
    if (s->closing) return -1;
    if (nawal_ws_send(s->conn, buf, len)) {
        char q[200];
        nawal_log(NAWAL_LOG_WARN, "send_failed", "peer=%s validator=%s error=%s", nawal_ws_peer(s->conn),
                  s->fp[0] ? s->fp : "-", nawal_log_quote(q, sizeof q, strerror(errno)));
        session_close(s, "send queue full (peer not reading)", 0);
        return -1;
    }
    nawal_metric_add(s->srv->m.reg, s->srv->m.bytes_out, NULL, (double)len);
    return 0;
}

static int send_msg(nawal_session *s, uint32_t type, const ProtobufCMessage *msg) {
    uint8_t *buf;
    size_t len;
    if (nawal_server_seal(s->srv, type, msg, &buf, &len)) {
        session_close(s, "internal error sealing a message", 0);
        return -1;
    }
    int rc = send_bytes(s, buf, len);
    free(buf);
    return rc;
}

static void send_error(nawal_session *s, int code, const char *text, int close_after) {
    Nawal__Error e = NAWAL__ERROR__INIT;
    e.code = (Nawal__ErrorCode)code;
    e.text = (char *)text;
    nawal_serve_metrics_error(&s->srv->m, code);
    char q[300];
    nawal_log(NAWAL_LOG_DEBUG, "error_sent", "peer=%s validator=%s code=%s text=%s", nawal_ws_peer(s->conn),
              s->fp[0] ? s->fp : "-", nawal_error_code_name(code) ? nawal_error_code_name(code) : "?",
              nawal_log_quote(q, sizeof q, text));
    send_msg(s, NAWAL__MSG_TYPE__MSG_ERROR, &e.base);
    if (close_after) session_close(s, text, 1);
}

static void send_ack_token(nawal_session *s, uint64_t seq, const char *detail, const uint8_t *token) {
    Nawal__Ack a = NAWAL__ACK__INIT;
    a.sequence = seq;
    a.detail = (char *)detail;
    if (token) a.blob_token = (ProtobufCBinaryData){32, (uint8_t *)token};
    send_msg(s, NAWAL__MSG_TYPE__MSG_ACK, &a.base);
}

static void send_ack(nawal_session *s, uint64_t seq, const char *detail) { send_ack_token(s, seq, detail, NULL); }

/* v's message decoded, or NULL after answering the Error (and closing when close_after). */
static ProtobufCMessage *unpack_or_refuse(nawal_session *s, const nawal_envelope_view *v, int close_after) {
    ProtobufCMessage *m;
    char err[256];
    int code = nawal_msg_unpack(v->type, v->payload, v->payload_len, &m, err, sizeof err);
    if (!code) return m;
    send_error(s, code, err, close_after);
    return NULL;
}

void nawal_session_broadcast(nawal_server *srv, const uint8_t *buf, size_t len) {
    for (nawal_session *s = srv->sessions, *n; s; s = n) {
        n = s->next;
        if (s->state == SESS_AUTHED) send_bytes(s, buf, len);
    }
}

/* ---- evaluations ------------------------------------------------------------- */

static int evaluate_request_seal(nawal_server *srv, const nawal_round *r, uint8_t **buf, size_t *len) {
    Nawal__EvaluateRequest q = NAWAL__EVALUATE_REQUEST__INIT;
    q.round_id = (uint64_t)r->id;
    q.model_cid.data = (uint8_t *)r->model_cid;
    q.model_cid.len = 32;
    nawal_patch_row row;
    nawal_patch_fields_set(srv->store, r->model_cid, &row, &q.patch_cid, &q.patch_from_cid, &q.patch_size);
    return nawal_server_seal(srv, NAWAL__MSG_TYPE__MSG_EVALUATE_REQUEST, &q.base, buf, len);
}

/* Sends sealed EvaluateRequest bytes of round r to s unless it got that round's already. */
static void evaluate_request_send(nawal_session *s, const nawal_round *r, const uint8_t *buf, size_t len) {
    if (s->state != SESS_AUTHED || s->eval_round >= r->id) return;
    if (send_bytes(s, buf, len) == 0) {
        s->eval_round = r->id;
        nawal_log(NAWAL_LOG_DEBUG, "evaluation_requested", "round=%lld validator=%s", (long long)r->id, s->fp);
    }
}

void nawal_session_request_evaluation(nawal_server *srv, const nawal_round *r) {
    uint8_t *buf;
    size_t len;
    if (srv->n_authed == 0 || !r->has_model_cid || evaluate_request_seal(srv, r, &buf, &len)) return;
    for (nawal_session *s = srv->sessions, *n; s; s = n) {
        n = s->next;
        evaluate_request_send(s, r, buf, len);
    }
    free(buf);
}

/* After Auth: the latest closed round's model, if this validator has not evaluated it yet. */
static void request_latest_evaluation(nawal_session *s) {
    nawal_round r;
    uint8_t *buf;
    size_t len;
    if (nawal_round_latest_closed(s->srv->store, &r, NULL, 0) != 1 ||
        nawal_round_evaluated(s->srv->store, r.id, s->pk) != 0 || evaluate_request_seal(s->srv, &r, &buf, &len))
        return;
    evaluate_request_send(s, &r, buf, len);
    free(buf);
}

/* ---- blob download (the agent asked) ----------------------------------------- */

static int chunk_sink_send(void *ctx, const uint8_t *msg, size_t len) {
    nawal_session *s = ctx;
    uint8_t *buf;
    size_t n;
    if (s->closing) {
        errno = ENOTCONN;
        return -1;
    }
    if (nawal_server_seal_payload(s->srv, NAWAL__MSG_TYPE__MSG_BLOB_CHUNK, msg, len, &buf, &n)) {
        errno = ENOMEM;
        return -1;
    }
    int rc = nawal_ws_send(s->conn, buf, n);
    int e = errno;
    free(buf);
    if (rc == 0) nawal_metric_add(s->srv->m.reg, s->srv->m.bytes_out, NULL, (double)n);
    errno = e;
    return rc;
}

static size_t chunk_sink_pending(void *ctx) {
    nawal_session *s = ctx;
    return nawal_ws_queued(s->conn);
}

static void download_pump(nawal_session *s) {
    if (!s->down || s->closing) return;
    nawal_blob_sink sink = { chunk_sink_send, chunk_sink_pending, s };
    char err[256];
    int rc = nawal_blob_sender_pump(s->down, &sink, err, sizeof err);
    if (rc == 0) return;
    if (rc < 0 && !s->closing) send_error(s, NAWAL__ERROR_CODE__ERR_INTERNAL, err, 0);
    if (rc > 0)
        nawal_log(NAWAL_LOG_DEBUG, "blob_sent", "validator=%s bytes=%" PRIu64, s->fp,
                  nawal_blob_sender_size(s->down));
    nawal_blob_sender_free(s->down);
    s->down = NULL;
}

int nawal_serve_is_public_model(nawal_server *srv, const uint8_t cid[32]) {
    if (nawal_patch_is_blob(srv->store, cid)) return 1;
    sqlite3_stmt *st;
    if (nawal_store_prepare(srv->store, &st, "SELECT EXISTS(SELECT 1 FROM rounds WHERE base_cid = ?1 OR model_cid = ?1)",
                            NULL, 0))
        return 0;
    sqlite3_bind_blob(st, 1, cid, 32, SQLITE_STATIC);
    int yes = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (yes) return 1;
    char *hex = NULL, want[NAWAL_CID_HEX_BYTES];
    nawal_cid_to_hex(want, cid);
    if (nawal_store_setting_get(srv->store, NAWAL_SETTING_BASE_MODEL, &hex, NULL, 0) == 0) yes = !strcmp(hex, want);
    free(hex);
    return yes;
}

static void on_blob_request(nawal_session *s, const nawal_envelope_view *v) {
    uint8_t cid[32];
    uint64_t offset;
    char err[256], path[4096], hex[NAWAL_CID_HEX_BYTES];
    if (nawal_blob_request_decode(v->payload, v->payload_len, cid, &offset, err, sizeof err)) {
        send_error(s, NAWAL__ERROR_CODE__ERR_BAD_MESSAGE, err, 0);
        return;
    }
    nawal_cid_to_hex(hex, cid);
    if (!nawal_serve_is_public_model(s->srv, cid) || nawal_blobstore_path(s->srv->store, cid, path, sizeof path)) {
        snprintf(err, sizeof err, "blob %s is not a model this coordinator serves", hex);
        send_error(s, NAWAL__ERROR_CODE__ERR_NOT_FOUND, err, 0);
        return;
    }
    nawal_blob_sender_free(s->down); /* a new request replaces the transfer in progress */
    s->down = NULL;
    if (nawal_blob_sender_open(&s->down, path, cid, offset, 0, err, sizeof err)) {
        send_error(s, errno == ENOENT ? NAWAL__ERROR_CODE__ERR_NOT_FOUND : NAWAL__ERROR_CODE__ERR_BAD_MESSAGE, err, 0);
        return;
    }
    nawal_log(NAWAL_LOG_DEBUG, "blob_request", "validator=%s blob=%s offset=%" PRIu64, s->fp, hex, offset);
    download_pump(s);
}

/* ---- handshake ------------------------------------------------------------------ */

static void on_hello(nawal_session *s, const nawal_envelope_view *v) {
    ProtobufCMessage *m;
    char err[256];
    if (s->state != SESS_NEW) {
        send_error(s, NAWAL__ERROR_CODE__ERR_BAD_MESSAGE, "Hello was already received on this connection", 1);
        return;
    }
    if (!(m = unpack_or_refuse(s, v, 1))) return;
    Nawal__Hello *h = (Nawal__Hello *)m;
    int code = 0;
    char fp[NAWAL_FINGERPRINT_SHORT_BYTES];
    nawal_fingerprint_short(fp, v->sender);
    if (h->version != NAWAL__VERSION__PROTOCOL_VERSION) {
        snprintf(err, sizeof err, "Hello for protocol version %u; this coordinator speaks version %d", h->version,
                 NAWAL__VERSION__PROTOCOL_VERSION);
        code = NAWAL__ERROR_CODE__ERR_VERSION;
    } else if (h->pubkey.len != NAWAL_PUBKEY_BYTES || sodium_memcmp(h->pubkey.data, v->sender, NAWAL_PUBKEY_BYTES)) {
        snprintf(err, sizeof err, "Hello's public key is not the envelope's sender");
        code = NAWAL__ERROR_CODE__ERR_BAD_MESSAGE;
    }
    nawal_msg_free(m);
    if (code) {
        send_error(s, code, err, 1);
        return;
    }
    nawal_round r;
    uint64_t min_stake = nawal_server_open_round(s->srv, &r) ? r.min_stake_planck : 0;
    int ok = nawal_registry_can_join(s->srv->store, v->sender, min_stake, err, sizeof err);
    if (ok <= 0) {
        nawal_log(NAWAL_LOG_INFO, "session_refused", "peer=%s key=%s", nawal_ws_peer(s->conn), fp);
        send_error(s, ok < 0 ? NAWAL__ERROR_CODE__ERR_INTERNAL : NAWAL__ERROR_CODE__ERR_UNKNOWN_SENDER, err, 1);
        return;
    }
    randombytes_buf(s->nonce, sizeof s->nonce);
    s->nonce_expires_ms = (int64_t)nawal_now_ms() + CHALLENGE_MS;
    s->state = SESS_CHALLENGED;
    Nawal__Challenge c = NAWAL__CHALLENGE__INIT;
    c.nonce.data = s->nonce;
    c.nonce.len = sizeof s->nonce;
    c.expires_ms = (uint64_t)s->nonce_expires_ms;
    send_msg(s, NAWAL__MSG_TYPE__MSG_CHALLENGE, &c.base);
}

static void send_announce(nawal_session *s) {
    nawal_round r;
    nawal_announce_msg a;
    char err[256];
    if (!nawal_server_open_round(s->srv, &r)) return;
    if (nawal_announce_build(s->srv->store, &r, &a, err, sizeof err)) {
        nawal_log(NAWAL_LOG_ERROR, "announce_failed", "round=%lld", (long long)r.id);
        return;
    }
    send_msg(s, NAWAL__MSG_TYPE__MSG_ROUND_ANNOUNCE, &a.msg.base);
}

static void on_auth(nawal_session *s, const nawal_envelope_view *v) {
    ProtobufCMessage *m;
    if (s->state != SESS_CHALLENGED) {
        send_error(s, NAWAL__ERROR_CODE__ERR_BAD_MESSAGE,
                   s->state == SESS_NEW ? "Auth before Hello" : "already authenticated", 1);
        return;
    }
    if (!(m = unpack_or_refuse(s, v, 1))) return;
    Nawal__Auth *a = (Nawal__Auth *)m;
    int match = a->nonce.len == NONCE_BYTES && sodium_memcmp(a->nonce.data, s->nonce, NONCE_BYTES) == 0;
    nawal_msg_free(m);
    if (!match) {
        send_error(s, NAWAL__ERROR_CODE__ERR_REPLAY, "Auth does not answer this connection's challenge", 1);
        return;
    }
    if ((int64_t)nawal_now_ms() > s->nonce_expires_ms) {
        send_error(s, NAWAL__ERROR_CODE__ERR_LATE, "the challenge expired", 1);
        return;
    }
    sodium_memzero(s->nonce, sizeof s->nonce);
    /* one session per validator: a new one replaces an older (half-dead?)
     * one, whose messages are no longer read, so two uploads never share
     * the validator's upload file */
    for (nawal_session *o = s->srv->sessions; o; o = o->next)
        if (o != s && o->state == SESS_AUTHED && !o->closing && !memcmp(o->pk, v->sender, NAWAL_PUBKEY_BYTES)) {
            nawal_log(NAWAL_LOG_INFO, "session_replaced", "validator=%s old_peer=%s", o->fp, nawal_ws_peer(o->conn));
            send_error(o, NAWAL__ERROR_CODE__ERR_DUPLICATE, "replaced by a newer connection of the same validator", 1);
        }
    s->state = SESS_AUTHED;
    s->srv->n_authed++;
    memcpy(s->pk, v->sender, NAWAL_PUBKEY_BYTES);
    nawal_fingerprint_short(s->fp, v->sender);
    nawal_log(NAWAL_LOG_INFO, "session_authenticated", "peer=%s validator=%s", nawal_ws_peer(s->conn), s->fp);
    if (s->srv->blob_http) {
        randombytes_buf(s->blob_token, sizeof s->blob_token);
        s->has_blob_token = 1;
    }
    send_ack_token(s, v->sequence, "authenticated", s->has_blob_token ? s->blob_token : NULL);
    request_latest_evaluation(s);
    send_announce(s);
}

/* ---- requests ---------------------------------------------------------------------- */

/* A u64 round id from the wire as the store's i64 (too large: no such round). */
static int64_t round_of(uint64_t id) { return id > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)id; }

static void reply_round(nawal_session *s, int rc, const nawal_round_reply *rep, uint64_t seq, const char *ok_detail) {
    if (rc == 0) send_ack(s, seq, ok_detail);
    else send_error(s, rc == NAWAL_STORE_REFUSED ? (int)rep->code : NAWAL__ERROR_CODE__ERR_INTERNAL,
                    rep->text[0] ? rep->text : "internal error", 0);
}

static void on_join(nawal_session *s, const nawal_envelope_view *v) {
    ProtobufCMessage *m = unpack_or_refuse(s, v, 0);
    char err[256];
    if (!m) return;
    Nawal__Join *j = (Nawal__Join *)m;
    int64_t round = round_of(j->round_id);
    nawal_round_reply rep;
    int rc = nawal_round_join(s->srv->store, v->sender, round, j->stake_planck, (int64_t)nawal_now_ms(), &rep);
    nawal_msg_free(m);
    snprintf(err, sizeof err, "joined round %lld", (long long)round);
    reply_round(s, rc, &rep, v->sequence, err);
    if (rc == 0) nawal_server_poke(s->srv);
}

static void upload_end(nawal_session *s) {
    nawal_blob_receiver_free(s->up);
    s->up = NULL;
}

/* The update's blob is in the store: record it and answer. */
static void submit_final(nawal_session *s, const uint8_t pubkey[32]) {
    nawal_round_reply rep;
    int rc = nawal_round_submit(s->srv->store, pubkey, s->up_round, s->up_base, s->up_delta, s->up_examples,
                                s->up_quality_ppm, (int64_t)nawal_now_ms(), &rep);
    char detail[96];
    snprintf(detail, sizeof detail, "update accepted for round %lld", (long long)s->up_round);
    reply_round(s, rc, &rep, s->up_seq, detail);
    if (rc == 0) {
        nawal_metric_add(s->srv->m.reg, s->srv->m.updates_accepted, NULL, 1);
        nawal_server_note_epsilon(s->srv, s->up_round, s->up_epsilon);
        nawal_log(NAWAL_LOG_INFO, "update_metrics", "round=%lld validator=%s examples=%" PRIu64
                  " train_loss=%.6g val_loss=%.6g epsilon=%.6g", (long long)s->up_round, s->fp, s->up_examples,
                  (double)s->up_train_loss, (double)s->up_val_loss, s->up_epsilon);
        nawal_server_poke(s->srv);
    } else {
        nawal_serve_metrics_rejected_code(&s->srv->m, rc == NAWAL_STORE_REFUSED ? (int)rep.code
                                                                                 : NAWAL__ERROR_CODE__ERR_INTERNAL);
    }
}

/* The largest delta taken for a round: 2 x its base model + 1 MiB. */
static uint64_t max_delta_bytes(nawal_server *srv, int64_t round_id) {
    nawal_round r;
    char path[4096];
    struct stat sb;
    if (nawal_store_round_get(srv->store, round_id, &r, NULL, 0) ||
        nawal_blobstore_path(srv->store, r.base_cid, path, sizeof path) || stat(path, &sb))
        return (uint64_t)1 << 20;
    return 2 * (uint64_t)sb.st_size + ((uint64_t)1 << 20);
}

static void refuse_update(nawal_session *s, int code, const char *text) {
    nawal_serve_metrics_rejected_code(&s->srv->m, code);
    send_error(s, code, text, 0);
}

static void on_update_submit(nawal_session *s, const nawal_envelope_view *v) {
    ProtobufCMessage *m;
    char err[300];
    int code = nawal_msg_unpack(v->type, v->payload, v->payload_len, &m, err, sizeof err);
    if (code) {
        refuse_update(s, code, err);
        return;
    }
    Nawal__UpdateSubmit *u = (Nawal__UpdateSubmit *)m;
    const char *bad = NULL;
    if (s->up) bad = "an update upload is already in progress on this connection";
    else if (u->base_cid.len != 32 || u->delta_cid.len != 32) bad = "UpdateSubmit: base and delta CIDs must be 32 bytes";
    else if (!(u->quality >= 0.0f && u->quality <= 1.0f)) bad = "UpdateSubmit: quality must be in [0, 1]";
    else if (isnan(u->epsilon_spent) || u->epsilon_spent < 0) bad = "UpdateSubmit: epsilon spent must be >= 0";
    else if (u->delta_size == 0) bad = "UpdateSubmit: the delta is empty";
    if (bad) {
        refuse_update(s, s->up ? NAWAL__ERROR_CODE__ERR_DUPLICATE : NAWAL__ERROR_CODE__ERR_BAD_MESSAGE, bad);
        nawal_msg_free(m);
        return;
    }
    s->up_seq = v->sequence;
    s->up_round = round_of(u->round_id);
    memcpy(s->up_base, u->base_cid.data, 32);
    memcpy(s->up_delta, u->delta_cid.data, 32);
    s->up_examples = u->num_examples;
    s->up_quality_ppm = (uint32_t)lroundf(u->quality * (float)NAWAL_QUALITY_ONE);
    if (s->up_quality_ppm > NAWAL_QUALITY_ONE) s->up_quality_ppm = NAWAL_QUALITY_ONE;
    s->up_epsilon = u->epsilon_spent;
    s->up_train_loss = u->metrics ? u->metrics->train_loss : NAN;
    s->up_val_loss = u->metrics ? u->metrics->val_loss : NAN;
    uint64_t size = u->delta_size;
    nawal_msg_free(m);

    /* refusals first: nothing is uploaded for an update that would be refused */
    nawal_round_reply rep;
    int rc = nawal_round_submit_check(s->srv->store, v->sender, s->up_round, s->up_base, s->up_examples,
                                      s->up_quality_ppm, (int64_t)nawal_now_ms(), &rep);
    if (rc) {
        refuse_update(s, rc == NAWAL_STORE_REFUSED ? (int)rep.code : NAWAL__ERROR_CODE__ERR_INTERNAL, rep.text);
        return;
    }
    if (nawal_blobstore_has(s->srv->store, s->up_delta)) { /* sent before (a resubmission after a cut) */
        submit_final(s, v->sender);
        return;
    }
    uint64_t limit = max_delta_bytes(s->srv, s->up_round);
    if (size > limit) {
        snprintf(err, sizeof err, "a delta of %" PRIu64 " bytes is larger than this round takes (%" PRIu64 ")", size,
                 limit);
        refuse_update(s, NAWAL__ERROR_CODE__ERR_TOO_LARGE, err);
        return;
    }
    char hex[NAWAL_CID_HEX_BYTES], fp[NAWAL_FINGERPRINT_HEX_BYTES];
    nawal_cid_to_hex(hex, s->up_delta);
    nawal_fingerprint(fp, v->sender);
    /* per validator: another one naming the same CID cannot write into this file */
    snprintf(s->up_path, sizeof s->up_path, "%s/%.16s-%s", s->srv->uploads_dir, fp, hex);
    if (nawal_blob_receiver_open(&s->up, s->up_path, s->up_delta, size, err, sizeof err)) {
        refuse_update(s, NAWAL__ERROR_CODE__ERR_INTERNAL, err);
        return;
    }
    Nawal__BlobRequest br = NAWAL__BLOB_REQUEST__INIT;
    br.cid.data = s->up_delta;
    br.cid.len = 32;
    br.offset = nawal_blob_receiver_offset(s->up);
    nawal_log(NAWAL_LOG_INFO, "upload_started", "validator=%s round=%lld delta=%s bytes=%" PRIu64 " offset=%" PRIu64,
              s->fp, (long long)s->up_round, hex, size, br.offset);
    send_msg(s, NAWAL__MSG_TYPE__MSG_BLOB_REQUEST, &br.base);
}

static void on_blob_chunk(nawal_session *s, const nawal_envelope_view *v) {
    char err[300];
    if (!s->up) {
        send_error(s, NAWAL__ERROR_CODE__ERR_BAD_MESSAGE, "BlobChunk without an upload in progress", 0);
        return;
    }
    int rc = nawal_blob_receiver_chunk(s->up, v->payload, v->payload_len, err, sizeof err);
    if (rc == 0) return;
    upload_end(s);
    if (rc < 0) {
        char q[320];
        nawal_log(NAWAL_LOG_WARN, "upload_failed", "validator=%s error=%s", s->fp, nawal_log_quote(q, sizeof q, err));
        nawal_serve_metrics_rejected(&s->srv->m, "bad_blob", 1);
        send_error(s, NAWAL__ERROR_CODE__ERR_BAD_MESSAGE, err, 0);
        return;
    }
    /* verified against its CID: into the store, then the update */
    if (nawal_blobstore_adopt(s->srv->store, s->up_path, s->up_delta, err, sizeof err)) {
        unlink(s->up_path);
        refuse_update(s, NAWAL__ERROR_CODE__ERR_INTERNAL, err);
        return;
    }
    submit_final(s, v->sender);
}

/* A validator's answer to an EvaluateRequest: recorded (Ack) or refused (rounds.h's codes). */
static void on_evaluate_result(nawal_session *s, const nawal_envelope_view *v) {
    ProtobufCMessage *m = unpack_or_refuse(s, v, 0);
    char err[256];
    if (!m) return;
    Nawal__EvaluateResult *e = (Nawal__EvaluateResult *)m;
    nawal_evaluation ev = {.round_id = round_of(e->round_id), .loss = (double)e->loss, .tokens = e->tokens,
                           .received_ms = (int64_t)nawal_now_ms()};
    int len_ok = e->model_cid.len == 32;
    if (len_ok) memcpy(ev.model_cid, e->model_cid.data, 32);
    nawal_msg_free(m);
    if (!len_ok) {
        send_error(s, NAWAL__ERROR_CODE__ERR_BAD_MESSAGE, "EvaluateResult: the model CID must be 32 bytes", 0);
        return;
    }
    memcpy(ev.validator, v->sender, 32);
    nawal_round_reply rep;
    int rc = nawal_round_evaluation_record(s->srv->store, &ev, &rep);
    snprintf(err, sizeof err, "evaluation of round %lld recorded", (long long)ev.round_id);
    reply_round(s, rc, &rep, v->sequence, err);
}

static void on_heartbeat(nawal_session *s, const nawal_envelope_view *v) {
    ProtobufCMessage *m = unpack_or_refuse(s, v, 0);
    if (!m) return;
    nawal_msg_free(m);
    Nawal__Heartbeat h = NAWAL__HEARTBEAT__INIT;
    h.time_ms = nawal_now_ms();
    send_msg(s, NAWAL__MSG_TYPE__MSG_HEARTBEAT, &h.base);
}

/* An Error from the agent: it cannot serve what we asked: the delta
 * (ERR_NOT_FOUND, or ERR_BAD_MESSAGE for a BlobRequest it cannot read),
 * which cancels the upload, or an evaluation (any other code). */
static void on_agent_error(nawal_session *s, const nawal_envelope_view *v) {
    ProtobufCMessage *m;
    char q[300];
    if (nawal_msg_unpack(v->type, v->payload, v->payload_len, &m, NULL, 0)) return;
    Nawal__Error *e = (Nawal__Error *)m;
    int cancel = s->up && (e->code == NAWAL__ERROR_CODE__ERR_NOT_FOUND || e->code == NAWAL__ERROR_CODE__ERR_BAD_MESSAGE);
    nawal_log(NAWAL_LOG_INFO, "agent_error", "validator=%s code=%d text=%s upload_cancelled=%d", s->fp, (int)e->code,
              nawal_log_quote(q, sizeof q, e->text ? e->text : ""), cancel);
    nawal_msg_free(m);
    if (cancel) upload_end(s);
}

/* ---- dispatch ------------------------------------------------------------------------- */

static void dispatch(nawal_session *s, const nawal_envelope_view *v) {
    char err[160];
    switch (v->type) {
    case NAWAL__MSG_TYPE__MSG_HELLO: on_hello(s, v); return;
    case NAWAL__MSG_TYPE__MSG_AUTH: on_auth(s, v); return;
    default: break;
    }
    if (s->state != SESS_AUTHED) {
        send_error(s, NAWAL__ERROR_CODE__ERR_UNKNOWN_SENDER, "not authenticated: send Hello, then answer the Challenge", 1);
        return;
    }
    switch (v->type) {
    case NAWAL__MSG_TYPE__MSG_JOIN: on_join(s, v); return;
    case NAWAL__MSG_TYPE__MSG_BLOB_REQUEST: on_blob_request(s, v); return;
    case NAWAL__MSG_TYPE__MSG_UPDATE_SUBMIT: on_update_submit(s, v); return;
    case NAWAL__MSG_TYPE__MSG_BLOB_CHUNK: on_blob_chunk(s, v); return;
    case NAWAL__MSG_TYPE__MSG_HEARTBEAT: on_heartbeat(s, v); return;
    case NAWAL__MSG_TYPE__MSG_EVALUATE_RESULT: on_evaluate_result(s, v); return;
    case NAWAL__MSG_TYPE__MSG_ERROR: on_agent_error(s, v); return;
    case NAWAL__MSG_TYPE__MSG_ACK: return; /* agents may acknowledge what we sent */
    default:
        snprintf(err, sizeof err, "%s is not a message the coordinator takes", nawal_msg_type_name(v->type));
        send_error(s, NAWAL__ERROR_CODE__ERR_UNKNOWN_TYPE, err, 0);
        return;
    }
}

/* ---- transport handlers --------------------------------------------------------------- */

void nawal_session_on_open(nawal_ws_conn *c, void *user) {
    nawal_server *srv = user;
    nawal_session *s = calloc(1, sizeof *s);
    if (!s) {
        nawal_ws_close(c, "out of memory");
        return;
    }
    s->srv = srv;
    s->conn = c;
    s->opened_ms = (int64_t)nawal_now_ms();
    s->next = srv->sessions;
    if (srv->sessions) srv->sessions->prev = s;
    srv->sessions = s;
    srv->n_conns++;
    nawal_ws_set_data(c, s);
    nawal_log(NAWAL_LOG_DEBUG, "connection_open", "peer=%s", nawal_ws_peer(c));
}

void nawal_session_on_message(nawal_ws_conn *c, const uint8_t *msg, size_t len, void *user) {
    nawal_session *s = nawal_ws_get_data(c);
    (void)user;
    if (!s || s->closing) return;
    nawal_metric_add(s->srv->m.reg, s->srv->m.bytes_in, NULL, (double)len);
    nawal_envelope_view v;
    char err[256];
    int code = nawal_envelope_open(msg, len, &s->srv->policy, &s->peer, &v, err, sizeof err);
    if (code) {
        char q[300];
        nawal_log(NAWAL_LOG_WARN, "envelope_refused", "peer=%s validator=%s code=%s error=%s", nawal_ws_peer(c),
                  s->fp[0] ? s->fp : "-", nawal_error_code_name(code) ? nawal_error_code_name(code) : "?",
                  nawal_log_quote(q, sizeof q, err));
        /* a type this build does not know is refused; the connection stays */
        send_error(s, code, err, code != NAWAL__ERROR_CODE__ERR_UNKNOWN_TYPE);
        return;
    }
    nawal_serve_metrics_message(&s->srv->m, v.type);
    dispatch(s, &v);
    nawal_envelope_view_free(&v);
}

void nawal_session_on_drain(nawal_ws_conn *c, void *user) {
    nawal_session *s = nawal_ws_get_data(c);
    (void)user;
    if (s) download_pump(s);
}

void nawal_session_on_close(nawal_ws_conn *c, const char *reason, void *user) {
    nawal_session *s = nawal_ws_get_data(c);
    nawal_server *srv = user;
    if (!s) return;
    char q[200];
    nawal_log(s->state == SESS_AUTHED ? NAWAL_LOG_INFO : NAWAL_LOG_DEBUG, "connection_closed", "peer=%s validator=%s reason=%s",
              nawal_ws_peer(c), s->fp[0] ? s->fp : "-", nawal_log_quote(q, sizeof q, reason ? reason : "closed"));
    nawal_blob_sender_free(s->down);
    upload_end(s); /* a partial upload stays in D/uploads for a resume */
    if (s->prev) s->prev->next = s->next;
    else srv->sessions = s->next;
    if (s->next) s->next->prev = s->prev;
    srv->n_conns--;
    if (s->state == SESS_AUTHED) srv->n_authed--;
    nawal_ws_set_data(c, NULL);
    sodium_memzero(s, sizeof *s);
    free(s);
}

void nawal_session_sweep(nawal_server *srv, int64_t now_ms) {
    for (nawal_session *s = srv->sessions; s; s = s->next)
        if (s->state != SESS_AUTHED && !s->closing && now_ms - s->opened_ms > srv->auth_timeout_ms) {
            nawal_log(NAWAL_LOG_INFO, "auth_timeout", "peer=%s", nawal_ws_peer(s->conn));
            send_error(s, NAWAL__ERROR_CODE__ERR_LATE, "not authenticated in time", 1);
        }
}

static nawal_session *session_of_token(nawal_server *srv, const uint8_t token[32]) {
    for (nawal_session *s = srv->sessions; s; s = s->next)
        if (s->state == SESS_AUTHED && !s->closing && s->has_blob_token &&
            sodium_memcmp(s->blob_token, token, sizeof s->blob_token) == 0)
            return s;
    return NULL;
}

int nawal_session_blob_token_ok(nawal_server *srv, const uint8_t token[32]) { return session_of_token(srv, token) != NULL; }

int nawal_session_blob_streams(nawal_server *srv, const uint8_t token[32], int delta) {
    nawal_session *s = session_of_token(srv, token);
    if (!s) return -1;
    s->blob_streams += delta;
    if (s->blob_streams < 0) s->blob_streams = 0;
    return s->blob_streams;
}
