/* session.c - see session.h.
 *
 * State machine. A connection (session below) walks a round through these
 * phases; the worker thread (struct nawal_agent_worker, ag->worker: a
 * training, or an evaluation) belongs to the agent and outlives
 * connections:
 *
 *   IDLE --RoundAnnounce--> JOINING --Ack | ERR_DUPLICATE--> DOWNLOADING
 *        --last chunk--> TRAIN   (model cached: straight to TRAIN; joined
 *                                 before a restart: no Join)
 *   TRAIN, on the next loop turn:
 *     - an update for this round is on record (sub.round == round, collected
 *       by this session or loaded from the state dir): submit it -> SUBMITTING
 *       (WAITING when acked);
 *     - no worker thread: print "training", start one -> TRAINING;
 *     - a thread training this round (started before a reconnect): adopt it
 *       -> TRAINING, no second training;
 *     - a thread still training an older round, or evaluating: stay in TRAIN
 *       until it is collected (an older round's result dropped), then start
 *       ours.
 *   TRAINING: the loop keeps servicing the connection (Heartbeats, PONGs,
 *     round messages). Each turn it looks at the thread's `finished` flag
 *     (the worker also wakes the loop with nawal_ws_client_wake()), and once
 *     set collects it: pthread_join, then
 *     - failed: fatal, as before (a warning when its round closed meanwhile);
 *     - its RoundResult came meanwhile (closed) or a later round was
 *       announced: the update is dropped (residual.pending.f32 discarded,
 *       the training's snapshot removed);
 *     - else the submission record is saved (acked 0), then the training's
 *       snapshot removed (not before: a kill in between resumes from it),
 *       and, when this connection has the round in hand (TRAIN/TRAINING),
 *       UpdateSubmit goes out -> SUBMITTING; otherwise (a new connection
 *       before its RoundAnnounce) the RoundAnnounce resubmits it from the
 *       record (and removes a snapshot a kill left beside the record).
 *   SUBMITTING --Ack | ERR_DUPLICATE--> WAITING --RoundResult--> IDLE
 *   A RoundResult moves any phase to IDLE; in TRAINING the thread runs on,
 *   marked closed, and its result is dropped when collected.
 *
 * Connection lost while training: the session returns RETRY and leaves the
 * thread running; cmd_run.c reconnects; the new session adopts the thread
 * (its client becomes the one woken), and the round's RoundAnnounce leads,
 * through the recorded Join and the cached model, to TRAIN and the adoption
 * above; or the thread finishes first and the record takes over. Only the
 * loop thread starts, collects or frees a thread, and only when ag->worker
 * is NULL does it start one: one job at a time. DONE or FATAL: the
 * session waits for the thread (the caller frees the agent next) and
 * records a result that is still current, for a restart to submit.
 *
 * Evaluations. EvaluateRequests queue in the session (evq, first come
 * first served, one per round and model) and each loop turn moves the
 * first one on: answered from ag->evals when its model's loss is known
 * (measured by an earlier evaluation, or as a training's base before it
 * trained); else its model is looked up in the cache (NEW) or downloaded
 * (FETCHING) through the same BlobRequest path as a round's base, one
 * download at a time: a round's base download waits for one of the same
 * model and cancels one of another (the evaluation then asks again
 * later); once the model is here (READY), an evaluation job starts when
 * the worker is free. The job's result lands in ag->evals; a failed job,
 * download or an agent without a validation split is answered with an
 * Error (ERR_INTERNAL, never ERR_NOT_FOUND, which the coordinator reads as
 * a refused upload). While an UpdateSubmit waits for its answer
 * (SUBMITTING) the queue holds still: no EvaluateResult or BlobRequest goes
 * out, so that an Error is never taken for the wrong request (error_answers).
 * Requests still queued when a connection is lost are dropped: the
 * coordinator asks again after the next Auth while the validator has not
 * answered.
 *
 * Threads. The worker runs nawal_agent_local_update() on its own copy of
 * the round plan, or nawal_agent_model_evaluate() on a model CID, reads
 * only the agent's fixed fields (ops, tokenizer, corpus, directories,
 * identity, delta format, thread count; ag->evals has its own mutex) and
 * writes its job's result, then sets `finished` under the job's mutex, which also
 * guards `wake` (the current session's client, NULL between connections,
 * cleared before that client is freed). It never touches libwebsockets
 * but for nawal_ws_client_wake(), which any thread may call. In the state
 * directory it writes deltas/ and residual.pending.f32 (and the key dir's
 * privacy budget); while a training thread exists the loop leaves
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
#include "evaluate.h"
#include "fileio.h"
#include "local_update.h"
#include "model_patch.h"
#include "state.h"
#include "trainer.h"
#include "transport.h"

#include <errno.h>
#include <math.h>
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
#define EVAL_QUEUE 8         /* evaluation requests a session holds */
#define EVAL_DONE_WAIT_S 60.0 /* --rounds reached: how long pending evaluations may still take */
#define PATCH_HINTS 4        /* model patches a session remembers */

typedef enum {
    PH_IDLE,        /* no round in hand: wait for a RoundAnnounce */
    PH_JOINING,     /* Join sent */
    PH_DOWNLOADING, /* base model coming */
    PH_TRAIN,       /* base model here: train on the next loop turn */
    PH_TRAINING,    /* the training thread works on this round */
    PH_SUBMITTING,  /* UpdateSubmit sent, waiting for its Ack */
    PH_WAITING,     /* our part is done (or refused): wait for the RoundResult */
} phase;

/* An EvaluateRequest in the session's queue. */
typedef enum {
    EV_NEW,      /* model not looked for yet */
    EV_FETCHING, /* being downloaded */
    EV_READY,    /* in the model cache: evaluate when the worker is free */
} eval_state;

typedef struct {
    uint64_t round;
    uint8_t cid[32];
    eval_state state;
} eval_req;

/* A model patch the coordinator named (RoundAnnounce, EvaluateRequest): blob `patch`
 * (size bytes) turns the model `from` into `to`. */
typedef struct {
    uint8_t to[32], from[32], patch[32];
    uint64_t size;
    int failed; /* tried and unusable: the model comes whole */
} patch_hint;

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
    nawal_blob_receiver *rx;    /* the one model download in progress ... */
    uint8_t rx_cid[32];         /* ... of this model: the round's base and/or evaluated ones */
    uint64_t rx_seq;            /* its BlobRequest's sequence */
    int rx_retries;
    double rx_t0;
    int rx_patch;               /* the download is rx_hint's patch of rx_cid, not rx_cid itself */
    patch_hint rx_hint;
    uint64_t rx_max;            /* the bound of rx_cid's own download (the fallback) */
    patch_hint hints[PATCH_HINTS]; /* patches named by the coordinator, newest last */
    int n_hints;
    eval_req evq[EVAL_QUEUE];   /* evaluations asked for, first come first served */
    int n_evq;
    uint64_t eval_sent[EVAL_QUEUE]; /* sequences of the EvaluateResults not answered yet, oldest first */
    int n_eval_sent;
    double done_t;              /* when --rounds was reached */
    nawal_blob_sender *tx;
    uint64_t up_bytes;
    double last_hb;
    char blob_auth[80];         /* "Nawal <token hex>" from the Auth's Ack: models over HTTP GET; "" = BlobRequest */
    int http_off;               /* an HTTP download failed this session: BlobRequest from now on */
    nawal_ws_fetch *http_f;     /* the download's GET in flight (NULL: none, or it goes over BlobRequest) */
    uint64_t http_pos, http_total;
    int rx_http;                /* the download in hand goes over HTTP (progress line; Errors never answer it) */
    int http_status;            /* the GET's response status (0 before its head) */
    int stopping;               /* the client is being freed: fetch handlers do nothing */
} session;

/* One job on its own thread (see the top of this file): a local update, or an evaluation. */
typedef struct nawal_agent_worker nawal_agent_worker;
struct nawal_agent_worker {
    pthread_t th;
    pthread_mutex_t mu;
    /* set before the thread starts, read-only after */
    nawal_agent *ag;
    int eval;                 /* 1: evaluate eval_cid; 0: train plan */
    nawal_round_plan plan;
    uint64_t eval_round;
    uint8_t eval_cid[32];
    /* the worker's result, read by the loop once `finished` is seen */
    int rc;
    nawal_agent_submission sub;
    double loss;
    uint64_t tokens;
    char err[512];
    /* under mu */
    int finished;
    nawal_ws_client *wake;
    /* the loop thread's only */
    int closed; /* its round's RoundResult came: the result is dropped */
};

/* 1 while the worker trains (then residual.pending.f32 is its). */
static int training(const nawal_agent *ag) { return ag->worker && !ag->worker->eval; }

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

/* Test hooks (session.h): with NAWAL_AGENT_TEST_CRASH=<at> in the environment, exit (status 3) as if killed `when`. */
static void test_crash_point(const char *at, const char *when) {
    const char *crash = getenv("NAWAL_AGENT_TEST_CRASH");
    if (!crash || strcmp(crash, at)) return;
    fprintf(stderr, "NAWAL_AGENT_TEST_CRASH=%s: exiting %s\n", at, when);
    fflush(NULL);
    _exit(3);
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

/* ---- evaluations: the queue (see the top of this file) ------------------------------- */

/* Moves the queued evaluations in state `from` (of model cid; NULL: any) to `to`. */
static void eval_set_state(session *s, const uint8_t *cid, eval_state from, eval_state to) {
    for (int i = 0; i < s->n_evq; i++)
        if (s->evq[i].state == from && (!cid || nawal_cid_equal(s->evq[i].cid, cid))) s->evq[i].state = to;
}

/* 1 if a queued evaluation waits for the download of cid. */
static int eval_fetching(const session *s, const uint8_t cid[32]) {
    for (int i = 0; i < s->n_evq; i++)
        if (s->evq[i].state == EV_FETCHING && nawal_cid_equal(s->evq[i].cid, cid)) return 1;
    return 0;
}

static void eval_drop(session *s, int i) {
    memmove(&s->evq[i], &s->evq[i + 1], (size_t)(s->n_evq - i - 1) * sizeof *s->evq);
    s->n_evq--;
}

/* Answers the evaluations of model cid that cannot be done with an Error saying why. */
static void eval_fail(session *s, const uint8_t cid[32], const char *why) {
    char hex[NAWAL_CID_HEX_BYTES], text[768];
    uint8_t model[32];
    memcpy(model, cid, 32); /* cid may point into the queue, which changes below */
    nawal_cid_to_hex(hex, model);
    for (int i = 0; i < s->n_evq;) {
        if (!nawal_cid_equal(s->evq[i].cid, model)) {
            i++;
            continue;
        }
        snprintf(text, sizeof text, "cannot evaluate model %.16s of round %llu: %s", hex,
                 (unsigned long long)s->evq[i].round, why);
        fprintf(stderr, "warning: %s\n", text);
        if (s->conn && !s->closed) send_error(s, ERRC(INTERNAL), text);
        eval_drop(s, i);
    }
}

/* Answers the first queued evaluation with the model's loss. */
static void eval_answer(session *s, double loss, uint64_t tokens) {
    eval_req *q = &s->evq[0];
    char hex[NAWAL_CID_HEX_BYTES];
    nawal_cid_to_hex(hex, q->cid);
    if (!isfinite(loss) || loss < 0 || tokens == 0 || !isfinite((float)loss)) {
        char why[128];
        snprintf(why, sizeof why, "its loss is %g over %llu tokens (a diverged model?)", loss,
                 (unsigned long long)tokens);
        eval_fail(s, q->cid, why);
        return;
    }
    Nawal__EvaluateResult r = NAWAL__EVALUATE_RESULT__INIT;
    r.round_id = q->round;
    r.model_cid = (ProtobufCBinaryData){32, q->cid};
    r.loss = (float)loss;
    r.tokens = tokens;
    uint64_t seq;
    if (send_msg(s, MSG(EVALUATE_RESULT), &r.base, &seq)) return;
    if (s->n_eval_sent < EVAL_QUEUE) s->eval_sent[s->n_eval_sent++] = seq;
    printf("round %llu: evaluated model %.16s: loss %.6f over %llu tokens\n", (unsigned long long)q->round, hex, loss,
           (unsigned long long)tokens);
    eval_drop(s, 0);
}

/* ---- models: the cache, else BlobRequest -> BlobChunk* (one download at a time) ----- */

/* Remembers the patch a RoundAnnounce or EvaluateRequest names for model `to` (none: nothing). */
static void patch_note(session *s, const uint8_t to[32], ProtobufCBinaryData patch, ProtobufCBinaryData from,
                       uint64_t size) {
    if (patch.len != 32 || from.len != 32 || size == 0) return;
    for (int i = 0; i < s->n_hints; i++)
        if (nawal_cid_equal(s->hints[i].to, to) && nawal_cid_equal(s->hints[i].patch, patch.data)) return;
    if (s->n_hints == PATCH_HINTS) memmove(s->hints, s->hints + 1, (size_t)--s->n_hints * sizeof *s->hints);
    patch_hint *h = &s->hints[s->n_hints++];
    memcpy(h->to, to, 32);
    memcpy(h->from, from.data, 32);
    memcpy(h->patch, patch.data, 32);
    h->size = size;
    h->failed = 0;
}

/* The patch to download instead of model cid: named, not failed, its from model in the cache. */
static const patch_hint *patch_usable(session *s, const uint8_t cid[32]) {
    char err[512];
    for (int i = s->n_hints - 1; i >= 0; i--) {
        patch_hint *h = &s->hints[i];
        if (h->failed || !nawal_cid_equal(h->to, cid)) continue;
        int c = nawal_agent_model_cached(s->ag->state_dir, h->from, err, sizeof err);
        if (c == 1) return h;
        if (c < 0) fprintf(stderr, "warning: the model cache: %s\n", err);
    }
    return NULL;
}

static void rx_result(session *s, int rc, char *err, size_t errlen);
static int rx_request(session *s, int allow_http);

/* Ends the download in hand (its GET too, if any); the .part file stays for a later resume. */
static void rx_drop(session *s) {
    if (s->http_f) {
        nawal_ws_fetch_cancel(s->http_f, "download dropped");
        s->http_f = NULL;
    }
    nawal_blob_receiver_free(s->rx);
    s->rx = NULL;
}

/* The blob the download in hand fetches: rx_cid, or the patch of it. */
static const uint8_t *rx_blob(const session *s) { return s->rx_patch ? s->rx_hint.patch : s->rx_cid; }

static int http_head(nawal_ws_fetch *f, int status, uint64_t first, uint64_t total, void *user) {
    session *s = user;
    if (s->stopping || f != s->http_f || !s->rx) return -1;
    s->http_status = status; /* the transport fails anything but 200 / 206 after this */
    s->http_pos = first;
    s->http_total = total;
    return 0;
}

static int http_data(nawal_ws_fetch *f, const uint8_t *data, size_t len, void *user) {
    session *s = user;
    if (s->stopping || f != s->http_f || !s->rx) return -1;
    char err[512] = "";
    int rc = nawal_blob_receiver_write(s->rx, s->http_pos, data, len, s->http_total, err, sizeof err);
    s->http_pos += len;
    s->ag->bytes_down += len;
    if (rc == 0) return 0;
    s->http_f = NULL; /* done with, whatever its on_done says; a bad blob is retried (rx_result), over HTTP too */
    rx_result(s, rc, err, sizeof err);
    return rc > 0 ? 0 : -1;
}

/* A GET that ended without completing its download: the rest comes over BlobRequest (resumed). */
static void http_done(nawal_ws_fetch *f, int ok, const char *reason, void *user) {
    session *s = user;
    (void)ok;
    if (s->stopping || f != s->http_f) return; /* replaced, completed (http_data), or shutting down */
    s->http_f = NULL;
    /* 416: the .part holds the whole blob already (a crash before its check): BlobRequest finishes it;
     * anything else, and the GETs are given up for this session */
    if (s->http_status != 416) s->http_off = 1;
    fprintf(stderr, "warning: round %llu: HTTP download failed (%s); continuing over BlobRequest\n", R(s), reason);
    if (s->rx) rx_request(s, 0);
}

/* Asks for the rest of the download in hand: a GET of /blobs/<cid> when allowed, the coordinator
 * gave a blob token and no GET failed this session; else a BlobRequest. 0, or -1 (fatal, or the
 * connection is gone). */
static int rx_request(session *s, int allow_http) {
    char err[512], path[400], hex[NAWAL_CID_HEX_BYTES];
    s->http_status = 0; /* no GET in flight here: fetch_start dropped it, http_done ended it */
    uint64_t off = nawal_blob_receiver_offset(s->rx);
    if (allow_http && s->blob_auth[0] && !s->http_off) {
        nawal_cid_to_hex(hex, rx_blob(s));
        /* under the coordinator URL's path, when it has one (a reverse proxy's prefix) */
        const char *pre = s->ag->path[0] && strcmp(s->ag->path, "/") ? s->ag->path : "";
        size_t pl = strlen(pre);
        while (pl && pre[pl - 1] == '/') pl--;
        snprintf(path, sizeof path, "%.*s/blobs/%s", (int)(pl < 300 ? pl : 300), pre, hex);
        nawal_ws_fetch_handlers h = {http_head, http_data, http_done, s};
        s->http_f = nawal_ws_client_fetch(s->cl, s->ag->host, s->ag->port, path, s->blob_auth, off, &h, err, sizeof err);
        s->rx_http = s->http_f != NULL; /* no BlobRequest outstanding: error_answers skips the download */
        if (s->http_f) return 0;
        s->http_off = 1;
        fprintf(stderr, "warning: round %llu: %s; downloading over BlobRequest\n", R(s), err);
    }
    s->rx_http = 0;
    Nawal__BlobRequest br = NAWAL__BLOB_REQUEST__INIT;
    br.cid = (ProtobufCBinaryData){32, (uint8_t *)rx_blob(s)};
    br.offset = off;
    return send_msg(s, MSG(BLOB_REQUEST), &br.base, &s->rx_seq) ? -1 : 0;
}

/* Starts downloading cid into the model cache (max_size 0: no bound), as a patch of a cached model
 * when the coordinator named one: 0, or -1 (fatal, or the connection is gone). */
static int fetch_start(session *s, const uint8_t cid[32], uint64_t max_size, int *resuming) {
    char err[512], path[4096];
    rx_drop(s);
    memmove(s->rx_cid, cid, 32); /* cid may be s->rx_cid (a retry) */
    s->rx_max = max_size;
    const patch_hint *h = patch_usable(s, s->rx_cid);
    s->rx_patch = h != NULL;
    if (h) s->rx_hint = *h;
    const uint8_t *blob = rx_blob(s);
    if (h) nawal_agent_patch_path(path, sizeof path, s->ag->state_dir, blob);
    else nawal_agent_model_path(path, sizeof path, s->ag->state_dir, blob);
    if (nawal_blob_receiver_open(&s->rx, path, blob, h ? h->size : max_size, err, sizeof err)) {
        fatal(s, "%s", err);
        return -1;
    }
    s->rx_t0 = nawal_monotonic_s();
    *resuming = nawal_blob_receiver_offset(s->rx) > 0;
    return rx_request(s, 1);
}

static void human_bytes(char out[32], uint64_t n) {
    if (n < 1000) snprintf(out, 32, "%llu B", (unsigned long long)n);
    else if (n < 1000000) snprintf(out, 32, "%.1f kB", (double)n / 1e3);
    else if (n < 1000000000) snprintf(out, 32, "%.1f MB", (double)n / 1e6);
    else snprintf(out, 32, "%.1f GB", (double)n / 1e9);
}

/* The downloaded patch rx_hint, applied to its cached from model, gives rx_cid in the cache (its
 * CID checked by nawal_model_patch_apply_file): 0, or -1 with why. The patch file goes either way. */
static int patch_apply(session *s, int base, char *why, size_t cap) {
    const patch_hint *h = &s->rx_hint;
    char ppath[4096], from[4096], to[4096];
    uint8_t *frame = NULL;
    size_t len = 0;
    nawal_patch_info info;
    nawal_agent_patch_path(ppath, sizeof ppath, s->ag->state_dir, h->patch);
    nawal_agent_model_path(from, sizeof from, s->ag->state_dir, h->from);
    nawal_agent_model_path(to, sizeof to, s->ag->state_dir, s->rx_cid);
    int rc = nawal_file_read_all(ppath, h->size, &frame, &len, why, cap) ||
                     nawal_model_patch_info_read(&info, frame, len, why, cap) ||
                     nawal_model_patch_apply_file(from, frame, len, to, why, cap)
                 ? -1
                 : 0;
    free(frame);
    unlink(ppath);
    if (rc) return -1;
    char hto[NAWAL_CID_HEX_BYTES], hfrom[NAWAL_CID_HEX_BYTES], psz[32], msz[32];
    nawal_cid_to_hex(hto, s->rx_cid);
    nawal_cid_to_hex(hfrom, h->from);
    human_bytes(psz, len);
    human_bytes(msz, info.file_len);
    unsigned long long round = R(s);
    for (int i = 0; !base && i < s->n_evq; i++)
        if (nawal_cid_equal(s->evq[i].cid, s->rx_cid)) round = (unsigned long long)s->evq[i].round;
    printf("round %llu: %s %.8s from a %s patch of %.8s (instead of %s)\n", round, base ? "base model" : "model", hto,
           psz, hfrom, msz);
    return 0;
}

/* The patch download or its application failed: the model comes whole (the patch is not tried again). */
static void patch_fallback(session *s, const char *why) {
    char hex[NAWAL_CID_HEX_BYTES];
    nawal_cid_to_hex(hex, s->rx_cid);
    for (int i = 0; i < s->n_hints; i++)
        if (nawal_cid_equal(s->hints[i].patch, s->rx_hint.patch)) s->hints[i].failed = 1;
    fprintf(stderr, "warning: round %llu: the model patch for %.16s cannot be used (%s); downloading the whole model\n",
            R(s), hex, why);
    int resuming;
    fetch_start(s, s->rx_cid, s->rx_max, &resuming);
}

/* A model to evaluate is no larger than 2 x the round's base + 1 MiB (the coordinator's bound on deltas). */
static uint64_t eval_max_bytes(const session *s) { return s->base_size ? 2 * s->base_size + ((uint64_t)1 << 20) : 0; }

/* The download of the first queued evaluation's model. */
static void eval_fetch(session *s) {
    char hex[NAWAL_CID_HEX_BYTES];
    int resuming;
    if (fetch_start(s, s->evq[0].cid, eval_max_bytes(s), &resuming)) return;
    eval_set_state(s, s->evq[0].cid, EV_NEW, EV_FETCHING);
    nawal_cid_to_hex(hex, s->evq[0].cid);
    printf("round %llu: downloading model %.16s to evaluate it%s\n", (unsigned long long)s->evq[0].round, hex,
           resuming ? " (resuming)" : "");
}

static void start_download(session *s) {
    char err[512];
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
    if (s->rx && nawal_cid_equal(s->rx_cid, s->plan.base_cid)) { /* coming already, to be evaluated */
        printf("round %llu: downloading the base model (under way)\n", R(s));
        s->ph = PH_DOWNLOADING;
        return;
    }
    eval_set_state(s, NULL, EV_FETCHING, EV_NEW); /* the round's base first; an evaluation's model later */
    int resuming;
    /* a model is never larger than announced (plus slack for metadata) */
    if (fetch_start(s, s->plan.base_cid, s->base_size, &resuming)) return;
    s->ph = PH_DOWNLOADING;
    printf("round %llu: downloading the base model (%llu bytes%s)\n", R(s), (unsigned long long)s->base_size,
           resuming ? ", resuming" : "");
}

static void on_chunk(session *s, const uint8_t *payload, size_t len) {
    /* chunks of a transfer dropped or replaced by a later BlobRequest still come (the coordinator
     * queued them before it saw the request), and repeats: not failures of the download in hand */
    if (!s->rx || nawal_blob_receiver_stale(s->rx, payload, len)) return;
    char err[512] = "";
    int rc = nawal_blob_receiver_chunk(s->rx, payload, len, err, sizeof err);
    if (rc) rx_result(s, rc, err, sizeof err);
}

/* The download in hand ended (BlobChunk or HTTP body): rc 1 complete, -1 failed (err). */
static void rx_result(session *s, int rc, char *err, size_t errlen) {
    rx_drop(s);
    int base = s->ph == PH_DOWNLOADING; /* the round waits for this model */
    if (s->rx_patch && (rc < 0 || patch_apply(s, base, err, errlen))) {
        patch_fallback(s, err);
        return;
    }
    if (rc > 0) {
        if (base && !s->rx_patch) {
            double dt = nawal_monotonic_s() - s->rx_t0;
            printf("round %llu: base model downloaded in %.2f s (%s)\n", R(s), dt, s->rx_http ? "HTTP" : "BlobRequest");
        }
        if (base) s->ph = PH_TRAIN;
        eval_set_state(s, s->rx_cid, EV_FETCHING, EV_READY);
        return;
    }
    if (++s->rx_retries > 3) {
        if (base) {
            fatal(s, "round %llu: downloading the base model failed: %s", R(s), err);
        } else {
            s->rx_retries = 0;
            eval_fail(s, s->rx_cid, err);
        }
        return;
    }
    fprintf(stderr, "warning: round %llu: download failed (%s); retrying\n", R(s), err);
    if (base) {
        start_download(s);
    } else {
        int resuming;
        fetch_start(s, s->rx_cid, eval_max_bytes(s), &resuming);
    }
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
    patch_note(s, p->base_cid, ra->patch_cid, ra->patch_from_cid, ra->patch_size);
    char hex[NAWAL_CID_HEX_BYTES];
    nawal_cid_to_hex(hex, p->base_cid);
    printf("round %llu: announced: base %.16s (%llu bytes), %u steps x batch %u, lr %g, %s, top-k %g, %u..%u "
           "participants\n", R(s), hex, (unsigned long long)s->base_size, p->steps, p->batch, (double)p->lr,
           p->dp ? "DP-SGD" : "no DP", (double)p->topk_ratio, ra->min_participants, ra->target_participants);

    if (s->sub.round == p->round_id) { /* made before a restart or a reconnect */
        if (!training(s->ag)) nawal_agent_train_ckpt_remove(s->ag->state_dir); /* a kill right after the record */
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
        if (!training(s->ag)) nawal_agent_residual_discard(s->ag->state_dir); /* else the file is the worker's */
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
    if ((s->ph == PH_DOWNLOADING || s->ph == PH_TRAIN) && !(s->rx && eval_fetching(s, s->rx_cid))) rx_drop(s);
    nawal_agent_worker *t = s->ag->worker;
    if (t && !t->eval && t->plan.round_id <= rr->round_id && !t->closed) {
        t->closed = 1;
        printf("round %llu: closed while training; the update will be dropped\n", (unsigned long long)t->plan.round_id);
    }
    s->ph = PH_IDLE;
    s->ag->rounds_done++;
    if (s->ag->rounds > 0 && s->ag->rounds_done >= s->ag->rounds) s->done = 1;
}

/* Which of our requests an Error answers. The coordinator answers each
 * request at once and in order, so it is the oldest still unanswered of:
 * the round's Join or UpdateSubmit, our oldest unanswered EvaluateResult,
 * the BlobRequest of a model to evaluate. The exception, an UpdateSubmit,
 * is answered only after its delta's upload: so no EvaluateResult or
 * BlobRequest of an evaluation goes out while one is unanswered
 * (eval_can_send), and the order holds. */
enum { ANSWERS_ROUND, ANSWERS_EVAL_RESULT, ANSWERS_EVAL_FETCH };
static int error_answers(const session *s) {
    uint64_t round = s->ph == PH_JOINING ? s->join_seq : s->ph == PH_SUBMITTING ? s->submit_seq : UINT64_MAX;
    uint64_t result = s->n_eval_sent ? s->eval_sent[0] : UINT64_MAX;
    /* only a BlobRequest is answered by an Error: a GET's refusal is the HTTP status */
    uint64_t fetch = s->rx && !s->rx_http && s->ph != PH_DOWNLOADING && eval_fetching(s, s->rx_cid) ? s->rx_seq : UINT64_MAX;
    if (result < round && result <= fetch) return ANSWERS_EVAL_RESULT;
    if (fetch < round) return ANSWERS_EVAL_FETCH;
    return ANSWERS_ROUND;
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
    int what = error_answers(s);
    if (s->rx && s->rx_patch && (what == ANSWERS_EVAL_FETCH || (what == ANSWERS_ROUND && s->ph == PH_DOWNLOADING))) {
        char why[400];
        snprintf(why, sizeof why, "the coordinator cannot serve it: %s: %s", name, text);
        patch_fallback(s, why);
        return;
    }
    if (what == ANSWERS_EVAL_RESULT) {
        memmove(s->eval_sent, s->eval_sent + 1, (size_t)--s->n_eval_sent * sizeof *s->eval_sent);
        fprintf(stderr, "warning: the coordinator refused an evaluation result: %s: %s\n", name, text);
        return;
    }
    if (what == ANSWERS_EVAL_FETCH) { /* the model to evaluate cannot be had */
        rx_drop(s);
        char why[400];
        snprintf(why, sizeof why, "the coordinator cannot serve it: %s: %s", name, text);
        eval_fail(s, s->rx_cid, why);
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
        s->blob_auth[0] = 0;
        if (a->blob_token.len == 32) {
            uint8_t tok[32];
            memcpy(tok, a->blob_token.data, 32);
            if (getenv("NAWAL_AGENT_TEST_BAD_BLOB_TOKEN")) tok[0] ^= 1; /* test hook: the GET is refused */
            char hex[NAWAL_CID_HEX_BYTES];
            nawal_cid_to_hex(hex, tok);
            snprintf(s->blob_auth, sizeof s->blob_auth, "Nawal %s", hex);
        }
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
    } else {
        for (int i = 0; i < s->n_eval_sent; i++)
            if (s->eval_sent[i] == a->sequence) { /* an evaluation result recorded */
                memmove(s->eval_sent + i, s->eval_sent + i + 1, (size_t)(s->n_eval_sent - i - 1) * sizeof *s->eval_sent);
                s->n_eval_sent--;
                break;
            }
    }
}

static void on_eval_request(session *s, const Nawal__EvaluateRequest *q) {
    char err[256], hex[NAWAL_CID_HEX_BYTES];
    if (q->model_cid.len != 32) {
        send_error(s, ERRC(INTERNAL), "cannot evaluate: the EvaluateRequest's model CID is not 32 bytes");
        return;
    }
    for (int i = 0; i < s->n_evq; i++)
        if (s->evq[i].round == q->round_id && nawal_cid_equal(s->evq[i].cid, q->model_cid.data)) return; /* asked twice */
    if (s->n_evq == EVAL_QUEUE) {
        send_error(s, ERRC(INTERNAL), "cannot evaluate: too many evaluations pending");
        return;
    }
    eval_req *e = &s->evq[s->n_evq++];
    e->round = q->round_id;
    memcpy(e->cid, q->model_cid.data, 32);
    e->state = EV_NEW;
    patch_note(s, e->cid, q->patch_cid, q->patch_from_cid, q->patch_size);
    nawal_cid_to_hex(hex, e->cid);
    printf("round %llu: evaluation of model %.16s requested\n", (unsigned long long)e->round, hex);
    if (nawal_agent_val_split_check(s->ag, err, sizeof err)) eval_fail(s, e->cid, err);
}

static void on_blob_request(session *s, const uint8_t *payload, size_t len) {
    uint8_t cid[32];
    uint64_t off;
    char err[256], path[4096];
    test_crash_point("upload", "before the upload"); /* as if killed between UpdateSubmit and the upload */
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
    if (s->fatal) return; /* nothing more is acted on */
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
        } else if (s->done) {
            /* --rounds reached: only what finishes the evaluations asked for (chunks, Acks, Errors) */
        } else if (v.type == MSG(ROUND_ANNOUNCE)) {
            on_announce(s, (Nawal__RoundAnnounce *)m);
        } else if (v.type == MSG(ROUND_RESULT)) {
            on_result(s, (Nawal__RoundResult *)m);
        } else if (v.type == MSG(EVALUATE_REQUEST)) {
            on_eval_request(s, (Nawal__EvaluateRequest *)m);
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

static void *worker_main(void *arg) {
    nawal_agent_worker *t = arg;
    nawal_ops_cpu(t->ag->threads); /* OpenMP's thread count is per thread: --threads again */
    if (t->eval) t->rc = nawal_agent_model_evaluate(t->ag, t->eval_cid, &t->loss, &t->tokens, t->err, sizeof t->err);
    else t->rc = nawal_agent_local_update(t->ag, &t->plan, &t->sub, t->err, sizeof t->err);
    fflush(stdout);
    pthread_mutex_lock(&t->mu);
    t->finished = 1;
    if (t->wake) nawal_ws_client_wake(t->wake);
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* Which client the worker wakes when it finishes (NULL: none). */
static void worker_wake(nawal_agent_worker *t, nawal_ws_client *cl) {
    if (!t) return;
    pthread_mutex_lock(&t->mu);
    t->wake = cl;
    pthread_mutex_unlock(&t->mu);
}

static int worker_finished(nawal_agent_worker *t) {
    pthread_mutex_lock(&t->mu);
    int f = t->finished;
    pthread_mutex_unlock(&t->mu);
    return f;
}

/* Starts job t (its plan or model filled in) on a new worker thread: 0, or -1 (fatal; t freed). */
static int worker_start(session *s, nawal_agent_worker *t) {
    t->ag = s->ag;
    t->wake = s->cl;
    pthread_mutex_init(&t->mu, NULL);
    fflush(stdout);
    int e = pthread_create(&t->th, NULL, worker_main, t);
    if (e) {
        pthread_mutex_destroy(&t->mu);
        free(t);
        fatal(s, "cannot start the worker thread: %s", strerror(e));
        return -1;
    }
    s->ag->worker = t;
    return 0;
}

static void train_start(session *s) {
    nawal_agent_worker *t = calloc(1, sizeof *t);
    if (!t) {
        fatal(s, "out of memory");
        return;
    }
    t->plan = s->plan;
    printf("round %llu: training\n", R(s));
    if (worker_start(s, t) == 0) s->ph = PH_TRAINING;
}

/* PH_TRAIN: submit what is on record, start training, or adopt the thread training this round. */
static void train_step(session *s) {
    nawal_agent_worker *t = s->ag->worker;
    if (s->sub.round == s->plan.round_id) {
        if (s->sub.acked) s->ph = PH_WAITING;
        else submit(s);
    } else if (!t) {
        train_start(s);
    } else if (!t->eval && t->plan.round_id == s->plan.round_id && !t->closed) {
        printf("round %llu: training continues (started before the reconnect)\n", R(s));
        s->ph = PH_TRAINING;
    } /* else an evaluation, or an older round's training, is still running: wait for it */
}

/* 1 when an evaluation's requests (EvaluateResult, BlobRequest) may go out: connected, and no
 * UpdateSubmit waiting for its answer, which comes after its upload (see error_answers). */
static int eval_can_send(const session *s) { return s->authed && s->conn && !s->closed && s->ph != PH_SUBMITTING; }

/* Each loop turn: moves the first queued evaluation on (see the top of this file). */
static void eval_step(session *s) {
    if (!s->n_evq || !eval_can_send(s)) return;
    eval_req *q = &s->evq[0];
    double loss;
    uint64_t tokens;
    char err[512];
    if (nawal_agent_evals_get(s->ag->evals, q->cid, &loss, &tokens)) {
        eval_answer(s, loss, tokens);
    } else if (q->state == EV_NEW && !s->rx) { /* one download at a time */
        int c = nawal_agent_model_cached(s->ag->state_dir, q->cid, err, sizeof err);
        if (c < 0) eval_fail(s, q->cid, err);
        else if (c == 1) q->state = EV_READY;
        else eval_fetch(s);
    } else if (q->state == EV_READY && !s->ag->worker) { /* one job at a time: after a training */
        nawal_agent_worker *t = calloc(1, sizeof *t);
        if (!t) {
            fatal(s, "out of memory");
            return;
        }
        t->eval = 1;
        t->eval_round = q->round;
        memcpy(t->eval_cid, q->cid, 32);
        worker_start(s, t);
    }
}

/* A finished training's result. */
static void train_collect(session *s, nawal_agent_worker *t) {
    char err[512];
    unsigned long long round = (unsigned long long)t->plan.round_id;
    int stale = t->closed || (s->have_round && s->plan.round_id > t->plan.round_id);
    if (t->rc) {
        if (stale) fprintf(stderr, "warning: round %llu: training failed: %s\n", round, t->err);
        else fatal(s, "round %llu: %s", round, t->err);
    } else if (stale) {
        nawal_agent_residual_discard(s->ag->state_dir);
        nawal_agent_train_ckpt_remove(s->ag->state_dir);
        printf("round %llu: training finished after the round closed; update dropped\n", round);
    } else {
        /* the update file is written; until the record is saved, the training's snapshot stands for it */
        test_crash_point("collect", "before saving the submission record");
        if (nawal_agent_submission_save(s->ag->state_dir, &t->sub, err, sizeof err)) {
            fatal(s, "%s", err);
            return;
        }
        nawal_agent_train_ckpt_remove(s->ag->state_dir); /* the update is on record: the snapshot has served */
        s->sub = t->sub;
        s->up_bytes = 0;
        /* submitted now when this connection is live and has the round in hand; else from the record later */
        if (s->have_round && s->plan.round_id == t->plan.round_id && (s->ph == PH_TRAINING || s->ph == PH_TRAIN) &&
            s->conn && !s->closed && !s->done && !s->fatal && !s->retry)
            submit(s);
    }
}

/* Joins the finished (or, at the end of a session, still running) worker thread and acts on its result:
 * a training's (above), or an evaluation's (also in ag->evals, for the requests that come later). */
static void worker_collect(session *s) {
    nawal_agent_worker *t = s->ag->worker;
    pthread_join(t->th, NULL);
    s->ag->worker = NULL;
    if (!t->eval) {
        train_collect(s, t);
    } else if (t->rc == 0) { /* (not sendable now: answered from ag->evals later, or measured again) */
        if (s->n_evq && nawal_cid_equal(s->evq[0].cid, t->eval_cid) && eval_can_send(s))
            eval_answer(s, t->loss, t->tokens);
    } else {
        char hex[NAWAL_CID_HEX_BYTES];
        nawal_cid_to_hex(hex, t->eval_cid);
        fprintf(stderr, "warning: round %llu: evaluating model %.16s failed: %s\n",
                (unsigned long long)t->eval_round, hex, t->err);
        eval_fail(s, t->eval_cid, t->err);
    }
    pthread_mutex_destroy(&t->mu);
    free(t);
}

/* --rounds reached: 1 once the evaluations asked for are answered and the
 * coordinator has acknowledged (or refused) every result sent, or
 * EVAL_DONE_WAIT_S later. */
static int done_settled(session *s) {
    if (!s->n_evq && !s->n_eval_sent) return 1;
    if (!s->done_t) s->done_t = nawal_monotonic_s();
    if (nawal_monotonic_s() - s->done_t < EVAL_DONE_WAIT_S) return 0;
    fprintf(stderr, "warning: %d evaluation request(s) not answered, %d result(s) not acknowledged within %.0f s of the "
            "last round; stopping\n", s->n_evq, s->n_eval_sent, EVAL_DONE_WAIT_S);
    s->n_evq = 0;
    s->n_eval_sent = 0;
    return 1;
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
    if (r == 1 && s->sub.acked && !training(ag)) nawal_agent_residual_commit(ag->state_dir, e, sizeof e);
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
    worker_wake(ag->worker, s->cl); /* adopted from the previous connection */
    s->conn = nawal_ws_client_connect(s->cl, ag->host, ag->port, ag->path[0] ? ag->path : "/", e, sizeof e);
    if (!s->conn) lost(s, e);
    double t0 = nawal_monotonic_s();
    while (!s->fatal && !s->retry && !(s->done && done_settled(s))) {
        nawal_ws_client_service(s->cl, 50);
        fflush(stdout);
        if (s->fatal || s->retry || (s->done && done_settled(s))) break;
        if (!s->opened && nawal_monotonic_s() - t0 > CONNECT_TIMEOUT_S) {
            lost(s, "connection timed out");
            break;
        }
        if (s->authed) *authenticated = 1;
        if (ag->worker && worker_finished(ag->worker)) worker_collect(s);
        if (s->fatal || s->retry) break;
        eval_step(s);
        if (s->ph == PH_TRAIN && !s->done) train_step(s);
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
    worker_wake(ag->worker, NULL); /* before the client goes */
    if (ag->worker && st != NAWAL_SESSION_RETRY) { /* the caller frees the agent next: wait for the thread */
        if (!worker_finished(ag->worker) && !ag->worker->eval) {
            printf("round %llu: waiting for the training to finish\n", (unsigned long long)ag->worker->plan.round_id);
            fflush(stdout);
        }
        worker_collect(s);
    }
    s->stopping = 1; /* a GET in flight ends inside the client's free: its handlers do nothing */
    nawal_blob_sender_free(s->tx);
    rx_drop(s);
    nawal_ws_client_free(s->cl);
    free(s);
    fflush(stdout);
    return st;
}
