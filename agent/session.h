/* session.h - one validator's conversation with nawal-coordinator
 * (`nawal-agent run`), following the protocol documented at the top of
 * coordinator/serve.h:
 *
 *   connect -> Hello -> Challenge -> Auth -> Ack
 *   RoundAnnounce -> Join{stake} -> Ack (ERR_DUPLICATE: joined before)
 *   base model: from the state dir's cache when its CID matches, else
 *     BlobRequest -> BlobChunk* (resumed from the .part file after a cut);
 *     when the RoundAnnounce (or, for a model to evaluate, the
 *     EvaluateRequest) names a model patch whose from-model is cached, the
 *     patch blob is downloaded the same way instead and applied
 *     (proto/model_patch.h, result CID checked); any failure of the patch
 *     falls back to downloading the whole model
 *   local training and the delta (local_update.h), written to the state dir
 *   UpdateSubmit -> BlobRequest (delta) -> BlobChunk* -> Ack
 *     (ERR_DUPLICATE after a resubmission: already on record = accepted)
 *   RoundResult -> the next RoundAnnounce ...
 *   EvaluateRequest{round, model} (a closed round's new model: sent before
 *     its RoundResult, and after Auth when not answered yet) -> the model
 *     from the cache or downloaded as a base model is (one download at a
 *     time; the round's base comes first) -> its loss on the validation
 *     split (evaluate.h), remembered or measured on the worker thread ->
 *     EvaluateResult{round, model, loss, tokens} -> Ack; or an Error
 *     (ERR_INTERNAL: no validation split, the model cannot be loaded...)
 *
 * and a Heartbeat every 15 s while authenticated (the coordinator answers
 * each; its Heartbeats are never answered, which would loop). Every
 * envelope is signed with the validator key; sequence numbers are
 * max(last + 1, Unix microseconds), so they grow across reconnects and
 * restarts. Coordinator envelopes must come from --coordinator-key when
 * given, otherwise from the first key seen (pinned for the process).
 *
 * Training (local_update.h: load, train, delta, encode) and evaluations
 * run on a worker thread, one job at a time, while the loop's thread keeps
 * servicing the connection (heartbeats, PONGs); the worker never touches
 * the transport. An evaluation waits for a training in progress (whose
 * base, when it is the model asked about, answers it as soon as its loss
 * before training is measured). With --rounds, the last round's
 * evaluation is answered before the agent stops (60 s at most).
 * The worker belongs to the agent, not to a connection: after a lost
 * connection the next session adopts the training in progress instead of
 * starting another for the same round, and submits its result (state
 * machine at the top of session.c). The submission record (state.h)
 * carries an update across restarts: submitted until acknowledged, never
 * retrained.
 *
 * nawal_agent_session_run() is one connection: it returns when the agent
 * is done (its --rounds results seen), when the connection is gone (the
 * caller reconnects with backoff, cmd_run.c), or on a fatal error.
 *
 * Test hooks: with NAWAL_AGENT_TEST_CRASH=upload in the environment the
 * process exits (status 3) when the coordinator first asks for the delta,
 * as if killed between its UpdateSubmit and the upload; with
 * NAWAL_AGENT_TEST_CRASH=collect, when a training finished, after its
 * update file was written and before its submission record is saved. */
#ifndef NAWAL_AGENT_SESSION_H
#define NAWAL_AGENT_SESSION_H

#include "corpus.h"
#include "identity.h"
#include "ops.h"
#include "tokenizer.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
    /* where */
    char host[256];
    int port;
    char path[256];
    int insecure_plaintext; /* ws:// (loopback tests) */
    const char *ca_file;    /* wss: CA bundle (NULL: the system store) */
    int have_coord_pk;
    uint8_t coord_pk[32];
    /* who and what */
    const char *key_dir, *state_dir;
    nawal_identity id;
    uint64_t stake;
    int rounds;             /* stop after this many RoundResults (0: never) */
    int have_floor;         /* --epsilon/--delta given: refuse weaker DP */
    double eps_floor, delta_floor;
    int delta_codec;        /* 1: delta_codec.h frames; 0: dense safetensors delta */
    const nawal_ops *ops;
    int threads;            /* --threads, applied again on the training thread (OpenMP's count is per thread) */
    nawal_tokenizer *tok;
    nawal_corpus corpus;
    /* the worker thread of this process (a training or an evaluation), if
     * any (owned by session.c; it outlives a connection and is joined
     * before nawal_agent_session_run returns DONE or FATAL) */
    struct nawal_agent_worker *worker;
    /* losses of the global models measured (evaluate.h; NULL: none kept) */
    struct nawal_agent_evals *evals;
    /* progress */
    int rounds_done;
    uint64_t last_seq;
    uint64_t bytes_up, bytes_down;
} nawal_agent;

typedef enum {
    NAWAL_SESSION_DONE = 0,   /* --rounds reached */
    NAWAL_SESSION_RETRY = 1,  /* connection lost or refused: reconnect later */
    NAWAL_SESSION_FATAL = -1, /* message in err */
} nawal_session_status;

/* Runs one connection. *authenticated says whether it got past Auth (the
 * caller resets its backoff then). */
nawal_session_status nawal_agent_session_run(nawal_agent *ag, int *authenticated, char *err, size_t errlen);

/* The next envelope sequence number: max(last + 1, Unix microseconds). */
uint64_t nawal_agent_next_seq(nawal_agent *ag);

#endif
