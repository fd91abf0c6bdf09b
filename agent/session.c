/* session.c - see session.h.
 *
 * State machine. A connection (session below) walks a round through these
 * phases; the training thread (struct nawal_agent_trainer, ag->trainer)
 * belongs to the agent and outlives connections:
 *
 *   IDLE --RoundAnnounce--> JOINING --Ack | ERR_DUPLICATE--> DOWNLOADING
 *        --last chunk--> TRAIN   (model cached: straight to TRAIN; joined
 *                                 before a restart: no Join)
 *   TRAIN, on the next loop turn:
 *     - an update for this round is on record (sub.round == round, collected
 *       by this session or loaded from the state dir): submit it -> SUBMITTING
 *       (WAITING when acked);
 *     - no training thread: print "training", start one -> TRAINING;
 *     - a thread training this round (started before a reconnect): adopt it
 *       -> TRAINING, no second training;
 *     - a thread still training an older round: stay in TRAIN until it is
 *       collected (its result dropped), then start ours.
 *   TRAINING: the loop keeps servicing the connection (Heartbeats, PONGs,
 *     round messages). Each turn it looks at the thread's `finished` flag
 *     (the worker also wakes the loop with nawal_ws_client_wake()), and once
 *     set collects it: pthread_join, then
 *     - failed: fatal, as before (a warning when its round closed meanwhile);
 *     - its RoundResult came meanwhile (closed) or a later round was
 *       announced: the update is dropped (residual.pending.f32 discarded);
 *     - else the submission record is saved (acked 0) and, when this
 *       connection has the round in hand (TRAIN/TRAINING), UpdateSubmit goes
 *       out -> SUBMITTING; otherwise (a new connection before its
 *       RoundAnnounce) the RoundAnnounce resubmits it from the record.
 *   SUBMITTING --Ack | ERR_DUPLICATE--> WAITING --RoundResult--> IDLE
 *   A RoundResult moves any phase to IDLE; in TRAINING the thread runs on,
 *   marked closed, and its result is dropped when collected.
 *
 * Connection lost while training: the session returns RETRY and leaves the
 * thread running; cmd_run.c reconnects; the new session adopts the thread
 * (its client becomes the one woken), and the round's RoundAnnounce leads,
 * through the recorded Join and the cached model, to TRAIN and the adoption
 * above; or the thread finishes first and the record takes over. Only the
 * loop thread starts, collects or frees a thread, and only when ag->trainer
 * is NULL does it start one: one training at a time. DONE or FATAL: the
 * session waits for the thread (the caller frees the agent next) and
 * records a result that is still current, for a restart to submit.
 *
 * Threads. The worker runs nawal_agent_local_update() on its own copy of
 * the round plan, reads only the agent's fixed fields (ops, tokenizer,
 * corpus, directories, identity, delta format, thread count) and writes
 * its job's result, then sets `finished` under the job's mutex, which also
 * guards `wake` (the current session's client, NULL between connections,
 * cleared before that client is freed). It never touches libwebsockets
 * but for nawal_ws_client_wake(), which any thread may call. In the state
 * directory it writes deltas/ and residual.pending.f32 (and the key dir's
 * privacy budget); while a thread exists the loop leaves
 * residual.pending.f32 alone (no crash-recovery commit, no discard for an
 * older record): the file is, or is about to be, the worker's. Progress
 * lines stay in order: "training" is printed before the thread starts, the
 * worker's lines (one printf each) while it runs, "update submitted" after
 * the join. */
#include "session.h"
#include "blobstream.h"
#include "cid.h"
#include "envelope.h"
#include "error.h"
#include "local_update.h"
#include "state.h"
#include "trainer.h"
#include "transport.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MSG(x) NAWAL__MSG_TYPE__MSG_##x
#define ERRC(x) NAWAL__ERROR_CODE__ERR_##x
#define HEARTBEAT_S 15.0
#define CONNECT_TIMEOUT_S 30.0

typedef enum {
    PH_IDLE,        /* no round in hand: wait for a RoundAnnounce */
    PH_JOINING,     /* Join sent */
    PH_DOWNLOADING, /* base model coming */
    PH_TRAIN,       /* base model here: train on the next loop turn */
    PH_TRAINING,    /* the training thread works on this round */
    PH_SUBMITTING,  /* UpdateSubmit sent, waiting for its Ack */
    PH_WAITING,     /* our part is done (or refused): wait for the RoundResult */
} phase;

typedef struct {
    nawal_agent *ag;
    nawal_ws_client *cl;
    nawal_ws_conn *conn;
    int opened, closed, authed, done, fatal, retry;
    char reason[512];
    nawal_envelope_policy pol;
    nawal_peer_state coord;
    uint64_t auth_seq, join_seq, submit_seq;
    phase ph;
    nawal_round_plan plan; /* the announced round */
    uint64_t base_size;
    int have_round;
    nawal_agent_submission sub; /* valid when sub.round != 0 */
    nawal_blob_receiver *rx;
    int rx_retries;
    double rx_t0;
    nawal_blob_sender *tx;
    uint64_t up_bytes;
    double last_hb;
} session;

/* One local update on its own thread (see the top of this file). */
typedef struct nawal_agent_trainer nawal_agent_trainer;
struct nawal_agent_trainer {
    pthread_t th;
    pthread_mutex_t mu;
    /* set before the thread starts, read-only after */
    nawal_agent *ag;
    nawal_round_plan plan;
    /* the worker's result, read by the loop once `finished` is seen */
    int rc;
    nawal_agent_submission sub;
    char err[512];
    /* under mu */
    int finished;
    nawal_ws_client *wake;
    /* the loop thread's only */
    int closed; /* its round's RoundResult came: the result is dropped */
};

uint64_t nawal_agent_next_seq(nawal_agent *ag) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t us = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
    ag->last_seq = us > ag->last_seq ? us : ag->last_seq + 1;
    return ag->last_seq;
}

static void fatal(session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fatal(session *s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->reason, sizeof s->reason, fmt, ap);
    va_end(ap);
    s->fatal = 1;
}

static void lost(session *s, const char *why) {
    if (!s->retry && !s->fatal) snprintf(s->reason, sizeof s->reason, "%s", why);
    s->retry = 1;
}

#define R(s) ((unsigned long long)(s)->plan.round_id)

/* ---- sending --------------------------------------------------------------- */

static int send_env(session *s, uint32_t type, const uint8_t *payload, size_t len, uint64_t *seq_out) {
    uint8_t *buf;
    size_t n;
    char err[256];
    uint64_t seq = nawal_agent_next_seq(s->ag);
    if (nawal_envelope_seal(&s->ag->id, type, seq, nawal_now_ms(), payload, len, &buf, &n, err, sizeof err)) {
        fatal(s, "cannot seal a %s: %s", nawal_msg_type_name(type), err);
        return -1;
    }
    int rc = nawal_ws_send(s->conn, buf, n);
    int e = errno;
    free(buf);
    errno = e;
    if (rc == 0) {
        s->ag->bytes_up += n;
        if (seq_out) *seq_out = seq;
    }
    return rc;
}

static int send_msg(session *s, uint32_t type, const ProtobufCMessage *msg, uint64_t *seq_out) {
    uint8_t *payload;
    size_t len;
    char err[256];
    if (nawal_msg_pack(type, msg, &payload, &len, err, sizeof err)) {
        fatal(s, "cannot encode a %s: %s", nawal_msg_type_name(type), err);
        return -1;
    }
    int rc = send_env(s, type, payload, len, seq_out);
    free(payload);
    if (rc && !s->fatal) lost(s, "send queue refused a message");
    return rc;
}

static void send_error(session *s, int code, const char *text) {
    Nawal__Error e = NAWAL__ERROR__INIT;
    e.code = code;
    e.text = (char *)text;
    send_msg(s, MSG(ERROR), &e.base, NULL);
}

/* BlobChunks go out sealed in envelopes. */
static int sink_send(void *ctx, const uint8_t *msg, size_t len) {
    session *s = ctx;
    if (send_env(s, MSG(BLOB_CHUNK), msg, len, NULL)) return -1;
    s->up_bytes += len;
    return 0;
}
static size_t sink_pending(void *ctx) { return nawal_ws_queued(((session *)ctx)->conn); }

static void pump_upload(session *s) {
    if (!s->tx) return;
    nawal_blob_sink sink = {sink_send, sink_pending, s};
    char err[256] = "";
    int rc = nawal_blob_sender_pump(s->tx, &sink, err, sizeof err);
    if (rc == 0) return;
    if (rc < 0) fprintf(stderr, "warning: round %llu: upload stopped: %s\n", R(s), err);
    else printf("round %llu: delta uploaded (%llu bytes)\n", R(s), (unsigned long long)nawal_blob_sender_size(s->tx));
    nawal_blob_sender_free(s->tx);
    s->tx = NULL;
}

/* ---- round steps ------------------------------------------------------------ */

static void submit(session *s) {
    Nawal__Metrics mt = NAWAL__METRICS__INIT;
    mt.train_loss = s->sub.train_loss;
    mt.val_loss = s->sub.val_loss;
    mt.tokens_per_s = s->sub.tokens_per_s;
    Nawal__UpdateSubmit u = NAWAL__UPDATE_SUBMIT__INIT;
    u.round_id = s->sub.round;
    u.base_cid = (ProtobufCBinaryData){32, s->sub.base};
    u.num_examples = s->sub.examples;
    u.metrics = &mt;
    u.epsilon_spent = s->sub.epsilon;
    u.delta_cid = (ProtobufCBinaryData){32, s->sub.delta};
    u.delta_size = s->sub.size;
    u.quality = s->sub.quality;
    if (send_msg(s, MSG(UPDATE_SUBMIT), &u.base, &s->submit_seq)) return;
    s->ph = PH_SUBMITTING;
    printf("round %llu: update submitted: %llu examples, %llu bytes, quality %.3f, epsilon %.4f\n",
           (unsigned long long)s->sub.round, (unsigned long long)s->sub.examples, (unsigned long long)s->sub.size,
           (double)s->sub.quality, s->sub.epsilon);
}

/* The coordinator has the update (Ack, or ERR_DUPLICATE after a resubmission). */
static void accepted(session *s, const char *how) {
    char err[512];
    if (nawal_agent_residual_commit(s->ag->state_dir, err, sizeof err)) {
        fatal(s, "%s", err);
        return;
    }
    s->sub.acked = 1;
    if (nawal_agent_submission_save(s->ag->state_dir, &s->sub, err, sizeof err)) {
        fatal(s, "%s", err);
        return;
    }
    printf("round %llu: update %s; %llu bytes sent, %llu received so far\n", (unsigned long long)s->sub.round, how,
           (unsigned long long)s->ag->bytes_up, (unsigned long long)s->ag->bytes_down);
    s->ph = PH_WAITING;
}

static void start_download(session *s) {
    char err[512], path[4096];
    int c = nawal_agent_model_cached(s->ag->state_dir, s->plan.base_cid, err, sizeof err);
    if (c < 0) {
        fatal(s, "%s", err);
        return;
    }
    if (c == 1) {
        printf("round %llu: base model in the cache\n", R(s));
        s->ph = PH_TRAIN;
        return;
    }
    nawal_agent_model_path(path, sizeof path, s->ag->state_dir, s->plan.base_cid);
    nawal_blob_receiver_free(s->rx);
    s->rx = NULL;
    /* a model is never larger than announced (plus slack for metadata) */
    if (nawal_blob_receiver_open(&s->rx, path, s->plan.base_cid, s->base_size ? s->base_size : 0, err, sizeof err)) {
        fatal(s, "%s", err);
        return;
    }
    Nawal__BlobRequest br = NAWAL__BLOB_REQUEST__INIT;
    br.cid = (ProtobufCBinaryData){32, s->plan.base_cid};
    br.offset = nawal_blob_receiver_offset(s->rx);
    if (send_msg(s, MSG(BLOB_REQUEST), &br.base, NULL)) return;
    s->rx_t0 = nawal_monotonic_s();
    s->ph = PH_DOWNLOADING;
    printf("round %llu: downloading the base model (%llu bytes%s)\n", R(s), (unsigned long long)s->base_size,
           br.offset ? ", resuming" : "");
}

static void on_chunk(session *s, const uint8_t *payload, size_t len) {
    if (!s->rx || s->ph != PH_DOWNLOADING) return;
    char err[512] = "";
    int rc = nawal_blob_receiver_chunk(s->rx, payload, len, err, sizeof err);
    if (rc == 0) return;
    nawal_blob_receiver_free(s->rx);
    s->rx = NULL;
    if (rc > 0) {
        double dt = nawal_monotonic_s() - s->rx_t0;
        printf("round %llu: base model downloaded in %.2f s\n", R(s), dt);
        s->ph = PH_TRAIN;
        return;
    }
    if (++s->rx_retries > 3) {
        fatal(s, "round %llu: downloading the base model failed: %s", R(s), err);
        return;
    }
    fprintf(stderr, "warning: round %llu: download failed (%s); retrying\n", R(s), err);
    start_download(s);
}

static int dp_refused(session *s) {
    const nawal_round_plan *p = &s->plan;
    nawal_agent *ag = s->ag;
    if (!ag->have_floor) return 0;
    if (!p->dp) {
        printf("round %llu: refused: the round trains without DP, this validator requires epsilon <= %g at delta %g\n",
               R(s), ag->eps_floor, ag->delta_floor);
        return 1;
    }
    if (p->target_epsilon <= 0 || p->target_epsilon > ag->eps_floor || p->delta > ag->delta_floor) {
        printf("round %llu: refused: its DP parameters (epsilon %g, delta %g) are weaker than this validator's "
               "(epsilon %g, delta %g)\n", R(s), p->target_epsilon, p->delta, ag->eps_floor, ag->delta_floor);
        return 1;
    }
    return 0;
}

static void on_announce(session *s, const Nawal__RoundAnnounce *ra) {
    nawal_round_plan *p = &s->plan;
    if (ra->base_model_cid.len != 32) {
        fprintf(stderr, "warning: a RoundAnnounce without a 32-byte base CID; ignored\n");
        return;
    }
    if (s->have_round && p->round_id == ra->round_id && s->ph != PH_IDLE) return; /* already on it */
    memset(p, 0, sizeof *p);
    p->round_id = ra->round_id;
    memcpy(p->base_cid, ra->base_model_cid.data, 32);
    s->base_size = ra->base_model_size;
    const Nawal__TrainConfig *tc = ra->config;
    p->steps = tc && tc->steps ? tc->steps : 100;
    p->batch = tc && tc->batch ? tc->batch : 8;
    p->lr = tc && tc->lr > 0 ? tc->lr : 1e-3f;
    p->topk_ratio = tc ? tc->topk_ratio : 0.0f;
    if (tc && tc->dp && tc->dp->enabled) {
        p->dp = 1;
        p->noise_multiplier = tc->dp->noise_multiplier;
        p->max_grad_norm = tc->dp->max_grad_norm > 0 ? tc->dp->max_grad_norm : 1.0f;
        p->sample_rate = tc->dp->sample_rate;
        p->target_epsilon = tc->dp->target_epsilon;
        p->delta = tc->dp->delta > 0 ? tc->dp->delta : 1e-5;
    }
    s->have_round = 1;
    s->rx_retries = 0;
    char hex[NAWAL_CID_HEX_BYTES];
    nawal_cid_to_hex(hex, p->base_cid);
    printf("round %llu: announced: base %.16s (%llu bytes), %u steps x batch %u, lr %g, %s, top-k %g, %u..%u "
           "participants\n", R(s), hex, (unsigned long long)s->base_size, p->steps, p->batch, (double)p->lr,
           p->dp ? "DP-SGD" : "no DP", (double)p->topk_ratio, ra->min_participants, ra->target_participants);

    if (s->sub.round == p->round_id) { /* made before a restart or a reconnect */
        if (s->sub.acked) {
            printf("round %llu: our update is already on record; waiting for the result\n", R(s));
            s->ph = PH_WAITING;
        } else {
            printf("round %llu: resubmitting the update made earlier\n", R(s));
            submit(s);
        }
        return;
    }
    if (s->sub.round && !s->sub.acked) {
        fprintf(stderr, "warning: round %llu: the update for round %llu was never acknowledged; dropping it\n", R(s),
                (unsigned long long)s->sub.round);
        if (!s->ag->trainer) nawal_agent_residual_discard(s->ag->state_dir); /* else the file is the worker's */
        s->sub.acked = 1; /* never resubmitted */
    }
    if (dp_refused(s)) {
        s->ph = PH_WAITING;
        return;
    }
    if (nawal_agent_joined_load(s->ag->state_dir) == p->round_id) { /* joined before a restart */
        printf("round %llu: joined earlier\n", R(s));
        start_download(s);
        return;
    }
    Nawal__Join j = NAWAL__JOIN__INIT;
    j.round_id = p->round_id;
    j.stake_planck = s->ag->stake;
    if (send_msg(s, MSG(JOIN), &j.base, &s->join_seq) == 0) s->ph = PH_JOINING;
}

static void on_result(session *s, const Nawal__RoundResult *rr) {
    int ours = 0;
    uint64_t paid = 0;
    for (size_t i = 0; i < rr->n_accepted; i++)
        if (rr->accepted[i].len == 32 && !memcmp(rr->accepted[i].data, s->ag->id.pk, 32)) ours = 1;
    for (size_t i = 0; i < rr->n_rewards; i++)
        if (rr->rewards[i]->validator.len == 32 && !memcmp(rr->rewards[i]->validator.data, s->ag->id.pk, 32))
            paid += rr->rewards[i]->amount_planck;
    char hex[NAWAL_CID_HEX_BYTES] = "none";
    if (rr->new_model_cid.len == 32) nawal_cid_to_hex(hex, rr->new_model_cid.data);
    printf("round %llu: %s: new model %.16s, %zu updates accepted (ours %s), reward %llu planck\n",
           (unsigned long long)rr->round_id, rr->new_model_cid.len ? "closed" : "failed", hex, rr->n_accepted,
           ours ? "included" : "not included", (unsigned long long)paid);
    if (s->ph == PH_DOWNLOADING || s->ph == PH_TRAIN) {
        nawal_blob_receiver_free(s->rx);
        s->rx = NULL;
    }
    nawal_agent_trainer *t = s->ag->trainer;
    if (t && t->plan.round_id <= rr->round_id && !t->closed) {
        t->closed = 1;
        printf("round %llu: closed while training; the update will be dropped\n", (unsigned long long)t->plan.round_id);
    }
    s->ph = PH_IDLE;
    s->ag->rounds_done++;
    if (s->ag->rounds > 0 && s->ag->rounds_done >= s->ag->rounds) s->done = 1;
}

static void on_error(session *s, const Nawal__Error *e) {
    const char *name = nawal_error_code_name(e->code);
    const char *text = e->text ? e->text : "";
    if (!name) name = "unknown error";
    if (!s->authed) {
        if (e->code == ERRC(UNKNOWN_SENDER) || e->code == ERRC(VERSION) || e->code == ERRC(BAD_SIGNATURE))
            fatal(s, "the coordinator refused this validator: %s: %s", name, text);
        else lost(s, text[0] ? text : name);
        return;
    }
    if (e->code == ERRC(DUPLICATE) && s->ph != PH_JOINING && s->ph != PH_SUBMITTING) {
        fatal(s, "the coordinator says: %s: %s (is another agent running with this key?)", name, text);
        return;
    }
    switch (s->ph) {
    case PH_JOINING:
        if (e->code == ERRC(DUPLICATE)) { /* joined before a reconnect */
            printf("round %llu: already joined\n", R(s));
            start_download(s);
        } else {
            printf("round %llu: join refused: %s: %s\n", R(s), name, text);
            s->ph = PH_WAITING;
        }
        break;
    case PH_SUBMITTING:
        if (e->code == ERRC(DUPLICATE)) accepted(s, "already on record");
        else {
            printf("round %llu: update refused: %s: %s\n", R(s), name, text);
            s->ph = PH_WAITING;
        }
        break;
    case PH_DOWNLOADING:
        fatal(s, "round %llu: the coordinator cannot serve the base model: %s: %s", R(s), name, text);
        break;
    default:
        fprintf(stderr, "warning: coordinator error %s: %s\n", name, text);
    }
}

static void on_ack(session *s, const Nawal__Ack *a) {
    if (!s->authed && a->sequence == s->auth_seq && s->auth_seq) {
        char fp[NAWAL_FINGERPRINT_SHORT_BYTES];
        nawal_fingerprint_short(fp, s->ag->id.pk);
        printf("connected to %s:%d as %s\n", s->ag->host, s->ag->port, fp);
        s->authed = 1;
        s->last_hb = nawal_monotonic_s();
    } else if (s->ph == PH_JOINING && a->sequence == s->join_seq) {
        char err[512];
        if (nawal_agent_joined_save(s->ag->state_dir, R(s), err, sizeof err)) {
            fatal(s, "%s", err);
            return;
        }
        printf("round %llu: joined with stake %llu planck\n", R(s), (unsigned long long)s->ag->stake);
        start_download(s);
    } else if (s->ph == PH_SUBMITTING && a->sequence == s->submit_seq) {
        accepted(s, "accepted");
    }
}

static void on_blob_request(session *s, const uint8_t *payload, size_t len) {
    uint8_t cid[32];
    uint64_t off;
    char err[256], path[4096];
    const char *crash = getenv("NAWAL_AGENT_TEST_CRASH");
    if (crash && !strcmp(crash, "upload")) { /* tests: die as if killed between UpdateSubmit and the upload */
        fprintf(stderr, "NAWAL_AGENT_TEST_CRASH=upload: exiting before the upload\n");
        fflush(NULL);
        _exit(3);
    }
    if (nawal_blob_request_decode(payload, len, cid, &off, err, sizeof err)) {
        send_error(s, ERRC(BAD_MESSAGE), err);
        return;
    }
    if (!s->sub.round || !nawal_cid_equal(cid, s->sub.delta) ||
        nawal_agent_delta_path(path, sizeof path, s->ag->state_dir, cid)) {
        send_error(s, ERRC(NOT_FOUND), "this agent has no such blob");
        return;
    }
    nawal_blob_sender_free(s->tx);
    s->tx = NULL;
    if (nawal_blob_sender_open(&s->tx, path, cid, off, 0, err, sizeof err)) {
        fprintf(stderr, "warning: cannot serve the delta: %s\n", err);
        send_error(s, ERRC(NOT_FOUND), err);
        return;
    }
    pump_upload(s);
}

/* ---- transport handlers ------------------------------------------------------ */

static void h_open(nawal_ws_conn *c, void *user) {
    (void)c;
    session *s = user;
    s->opened = 1;
    Nawal__Hello h = NAWAL__HELLO__INIT;
    h.version = NAWAL__VERSION__PROTOCOL_VERSION;
    h.software = "nawal-agent";
    h.pubkey = (ProtobufCBinaryData){32, s->ag->id.pk};
    send_msg(s, MSG(HELLO), &h.base, NULL);
}

static void h_message(nawal_ws_conn *c, const uint8_t *msg, size_t len, void *user) {
    (void)c;
    session *s = user;
    nawal_envelope_view v;
    char err[256];
    if (s->done || s->fatal) return; /* nothing more is acted on */
    s->ag->bytes_down += len;
    int rc = nawal_envelope_open(msg, len, &s->pol, &s->coord, &v, err, sizeof err);
    if (rc) {
        fprintf(stderr, "warning: dropped a coordinator message: %s\n", err);
        return;
    }
    if (!s->ag->have_coord_pk) { /* first key seen: pinned for the process */
        memcpy(s->ag->coord_pk, v.sender, 32);
        s->ag->have_coord_pk = 1;
    }
    if (v.type == MSG(BLOB_CHUNK)) {
        on_chunk(s, v.payload, v.payload_len);
    } else if (v.type == MSG(BLOB_REQUEST)) {
        on_blob_request(s, v.payload, v.payload_len);
    } else {
        ProtobufCMessage *m = NULL;
        if (nawal_msg_unpack(v.type, v.payload, v.payload_len, &m, err, sizeof err)) {
            fprintf(stderr, "warning: a %s that does not decode: %s\n", nawal_msg_type_name(v.type), err);
        } else if (v.type == MSG(CHALLENGE)) {
            Nawal__Auth au = NAWAL__AUTH__INIT;
            au.nonce = ((Nawal__Challenge *)m)->nonce;
            send_msg(s, MSG(AUTH), &au.base, &s->auth_seq);
        } else if (v.type == MSG(ACK)) {
            on_ack(s, (Nawal__Ack *)m);
        } else if (v.type == MSG(ERROR)) {
            on_error(s, (Nawal__Error *)m);
        } else if (!s->authed) {
            /* nothing else counts before the Ack of our Auth */
        } else if (v.type == MSG(ROUND_ANNOUNCE)) {
            on_announce(s, (Nawal__RoundAnnounce *)m);
        } else if (v.type == MSG(ROUND_RESULT)) {
            on_result(s, (Nawal__RoundResult *)m);
        } else if (v.type == MSG(EVALUATE_REQUEST)) {
            send_error(s, ERRC(UNKNOWN_TYPE), "this agent does not evaluate yet");
        } /* Heartbeat replies need nothing */
        nawal_msg_free(m);
    }
    nawal_envelope_view_free(&v);
}

static void h_drain(nawal_ws_conn *c, void *user) {
    (void)c;
    pump_upload(user);
}

static void h_close(nawal_ws_conn *c, const char *reason, void *user) {
    (void)c;
    session *s = user;
    s->closed = 1;
    s->conn = NULL;
    lost(s, reason && reason[0] ? reason : "connection closed");
}

static int is_coordinator(const uint8_t sender[NAWAL_PUBKEY_BYTES], void *ctx) {
    const nawal_agent *ag = ctx;
    return !ag->have_coord_pk || !memcmp(sender, ag->coord_pk, 32);
}

/* ---- the loop ----------------------------------------------------------------- */

static void *train_main(void *arg) {
    nawal_agent_trainer *t = arg;
    nawal_ops_cpu(t->ag->threads); /* OpenMP's thread count is per thread: --threads again */
    t->rc = nawal_agent_local_update(t->ag, &t->plan, &t->sub, t->err, sizeof t->err);
    fflush(stdout);
    pthread_mutex_lock(&t->mu);
    t->finished = 1;
    if (t->wake) nawal_ws_client_wake(t->wake);
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* Which client the worker wakes when it finishes (NULL: none). */
static void trainer_wake(nawal_agent_trainer *t, nawal_ws_client *cl) {
    if (!t) return;
    pthread_mutex_lock(&t->mu);
    t->wake = cl;
    pthread_mutex_unlock(&t->mu);
}

static int trainer_finished(nawal_agent_trainer *t) {
    pthread_mutex_lock(&t->mu);
    int f = t->finished;
    pthread_mutex_unlock(&t->mu);
    return f;
}

static void train_start(session *s) {
    nawal_agent_trainer *t = calloc(1, sizeof *t);
    if (!t) {
        fatal(s, "out of memory");
        return;
    }
    t->ag = s->ag;
    t->plan = s->plan;
    t->wake = s->cl;
    pthread_mutex_init(&t->mu, NULL);
    printf("round %llu: training\n", R(s));
    fflush(stdout);
    int e = pthread_create(&t->th, NULL, train_main, t);
    if (e) {
        pthread_mutex_destroy(&t->mu);
        free(t);
        fatal(s, "round %llu: cannot start the training thread: %s", R(s), strerror(e));
        return;
    }
    s->ag->trainer = t;
    s->ph = PH_TRAINING;
}

/* PH_TRAIN: submit what is on record, start training, or adopt the thread training this round. */
static void train_step(session *s) {
    nawal_agent_trainer *t = s->ag->trainer;
    if (s->sub.round == s->plan.round_id) {
        if (s->sub.acked) s->ph = PH_WAITING;
        else submit(s);
    } else if (!t) {
        train_start(s);
    } else if (t->plan.round_id == s->plan.round_id && !t->closed) {
        printf("round %llu: training continues (started before the reconnect)\n", R(s));
        s->ph = PH_TRAINING;
    } /* else an older round's training is still running: wait for it */
}

/* Joins the finished (or, at the end of a session, still running) training thread and acts on its result. */
static void train_collect(session *s) {
    nawal_agent_trainer *t = s->ag->trainer;
    char err[512];
    pthread_join(t->th, NULL);
    s->ag->trainer = NULL;
    unsigned long long round = (unsigned long long)t->plan.round_id;
    int stale = t->closed || (s->have_round && s->plan.round_id > t->plan.round_id);
    if (t->rc) {
        if (stale) fprintf(stderr, "warning: round %llu: training failed: %s\n", round, t->err);
        else fatal(s, "round %llu: %s", round, t->err);
    } else if (stale) {
        nawal_agent_residual_discard(s->ag->state_dir);
        printf("round %llu: training finished after the round closed; update dropped\n", round);
    } else if (nawal_agent_submission_save(s->ag->state_dir, &t->sub, err, sizeof err)) {
        fatal(s, "%s", err);
    } else {
        s->sub = t->sub;
        s->up_bytes = 0;
        /* submitted now when this connection is live and has the round in hand; else from the record later */
        if (s->have_round && s->plan.round_id == t->plan.round_id && (s->ph == PH_TRAINING || s->ph == PH_TRAIN) &&
            s->conn && !s->closed && !s->done && !s->fatal && !s->retry)
            submit(s);
    }
    pthread_mutex_destroy(&t->mu);
    free(t);
}

nawal_session_status nawal_agent_session_run(nawal_agent *ag, int *authenticated, char *err, size_t errlen) {
    session *s = calloc(1, sizeof *s);
    if (!s) {
        nawal_fail(err, errlen, "out of memory");
        return NAWAL_SESSION_FATAL;
    }
    s->ag = ag;
    *authenticated = 0;
    char e[512] = "";
    int r = nawal_agent_submission_load(ag->state_dir, &s->sub, e, sizeof e);
    if (r < 0) {
        nawal_fail(err, errlen, "%s", e);
        free(s);
        return NAWAL_SESSION_FATAL;
    }
    /* crash between the two (not while training: residual.pending.f32 is then the worker's) */
    if (r == 1 && s->sub.acked && !ag->trainer) nawal_agent_residual_commit(ag->state_dir, e, sizeof e);
    nawal_envelope_policy_default(&s->pol);
    s->pol.is_known = is_coordinator;
    s->pol.ctx = ag;
    nawal_ws_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.insecure_plaintext = ag->insecure_plaintext;
    cfg.ca_file = ag->ca_file;
    nawal_ws_handlers h = {h_open, h_message, h_drain, h_close, s};
    s->cl = nawal_ws_client_new(&cfg, &h, e, sizeof e);
    if (!s->cl) {
        nawal_fail(err, errlen, "%s", e);
        free(s);
        return NAWAL_SESSION_FATAL;
    }
    trainer_wake(ag->trainer, s->cl); /* adopted from the previous connection */
    s->conn = nawal_ws_client_connect(s->cl, ag->host, ag->port, ag->path[0] ? ag->path : "/", e, sizeof e);
    if (!s->conn) lost(s, e);
    double t0 = nawal_monotonic_s();
    while (!s->done && !s->fatal && !s->retry) {
        nawal_ws_client_service(s->cl, 50);
        fflush(stdout);
        if (s->fatal || s->retry || s->done) break;
        if (!s->opened && nawal_monotonic_s() - t0 > CONNECT_TIMEOUT_S) {
            lost(s, "connection timed out");
            break;
        }
        if (s->authed) *authenticated = 1;
        if (ag->trainer && trainer_finished(ag->trainer)) train_collect(s);
        if (s->fatal || s->retry) break;
        if (s->ph == PH_TRAIN) train_step(s);
        if (s->authed && s->conn && nawal_monotonic_s() - s->last_hb > HEARTBEAT_S) {
            Nawal__Heartbeat hb = NAWAL__HEARTBEAT__INIT;
            hb.time_ms = nawal_now_ms();
            send_msg(s, MSG(HEARTBEAT), &hb.base, NULL);
            s->last_hb = nawal_monotonic_s();
        }
    }
    if (s->authed) *authenticated = 1;
    nawal_session_status st = s->fatal ? NAWAL_SESSION_FATAL : s->done ? NAWAL_SESSION_DONE : NAWAL_SESSION_RETRY;
    if (st != NAWAL_SESSION_DONE) nawal_fail(err, errlen, "%s", s->reason);
    if (s->conn && st == NAWAL_SESSION_DONE) {
        nawal_ws_close_when_sent(s->conn, "done");
        for (double t1 = nawal_monotonic_s(); !s->closed && nawal_monotonic_s() - t1 < 2;) nawal_ws_client_service(s->cl, 20);
    }
    trainer_wake(ag->trainer, NULL); /* before the client goes */
    if (ag->trainer && st != NAWAL_SESSION_RETRY) { /* the caller frees the agent next: wait for the thread */
        if (!trainer_finished(ag->trainer)) {
            printf("round %llu: waiting for the training to finish\n", (unsigned long long)ag->trainer->plan.round_id);
            fflush(stdout);
        }
        train_collect(s);
    }
    nawal_blob_sender_free(s->tx);
    nawal_blob_receiver_free(s->rx);
    nawal_ws_client_free(s->cl);
    free(s);
    fflush(stdout);
    return st;
}
