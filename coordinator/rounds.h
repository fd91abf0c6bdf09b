/* rounds.h - the round state machine, over the coordinator's store. These
 * are the calls the network layer makes; every one that changes state
 * commits it (one transaction, fsync'd) before it returns, so the caller
 * may reply to the agent afterwards, and a restart (nawal_round_resume)
 * continues from the database alone. Times are absolute Unix milliseconds
 * passed in by the caller (`now`), stored in the database; nothing here
 * reads the clock, so deadlines survive restarts unchanged.
 *
 *   announced   created (nawal_round_announce, or by the machine itself
 *               after the previous round ended); joins accepted
 *   joining     tick: now >= start. Joins accepted until the join deadline
 *               or until `target` validators have joined
 *   training    tick: join window over with >= min joined (fewer: failed).
 *               Joined validators submit updates until the deadline
 *   aggregating tick: all target updates arrived, or every joined
 *               validator submitted (>= min), or the deadline passed with
 *               >= min updates (fewer: failed)
 *   closed      aggregation made a model from >= min usable updates:
 *               rewards paid, ledger record written (settle.h), and the
 *               next round announced from the new model - one transaction
 *   failed      not enough joins/updates/usable updates: the next round is
 *               announced from the same base, in the same transaction
 *
 * Joins and updates may arrive from announcement on; an update needs a join
 * first. The next round copies the previous one's parameters (join window
 * and duration as lengths, pool, target, min, minimum stake and quality,
 * training config).
 *
 * Refusals carry the wire's error codes (nawal.pb-c.h):
 *   ERR_WRONG_ROUND   no such round, not open yet, not joined, wrong base
 *   ERR_LATE          round over/closed/aggregating, join window closed,
 *                     round full, deadline passed
 *   ERR_DUPLICATE     second join or second update in a round
 *   ERR_UNKNOWN_SENDER key not registered, removed, or stake below the minimum
 *   ERR_NOT_FOUND     the delta blob is not in the blob store
 *   ERR_BAD_MESSAGE   claimed stake above the registered one, no examples,
 *                     quality above 1
 *   ERR_INTERNAL      database error (nothing changed)
 *
 * Evaluations (EvaluateRequest / EvaluateResult, serve.h): when a round
 * closes, every connected validator is asked for the loss of its new model
 * on its own validation split; each answer is one row (evaluations table,
 * store.h), and the token-weighted mean of a round's rows is its federated
 * validation loss. An answer is refused with
 *   ERR_WRONG_ROUND   no such round, round not closed, or not the round's
 *                     new model (no evaluation of it was requested)
 *   ERR_DUPLICATE     the validator's answer for the round is on record
 *   ERR_BAD_MESSAGE   loss not finite or negative, no tokens evaluated or
 *                     more than NAWAL_EVAL_MAX_TOKENS
 *   ERR_UNKNOWN_SENDER key not registered, or removed
 *
 * Return values: 0 done / accepted; NAWAL_STORE_REFUSED with reply filled;
 * -1 on an internal error (reply says ERR_INTERNAL, or message in err). */
#ifndef NAWAL_ROUNDS_H
#define NAWAL_ROUNDS_H

#include <stddef.h>
#include <stdint.h>

#include "aggregate.h"
#include "nawal.pb-c.h"
#include "settle.h"
#include "store.h"

typedef struct {
    int64_t join_window_ms;  /* joins accepted for this long after the announcement; 0: until the deadline */
    int64_t duration_ms;     /* deadline = announcement + duration (> 0) */
    uint64_t pool_planck;
    uint32_t target, min;    /* participants: 1 <= min <= target */
    uint64_t min_stake_planck;
    uint32_t min_quality_ppm; /* aggregation drops updates reporting less (0..10^6) */
    const char *config_json; /* training config for the agents (NULL: "{}") */
} nawal_round_params;

typedef struct {
    Nawal__ErrorCode code;   /* NAWAL__ERROR_CODE__ERR_UNSPECIFIED when accepted */
    char text[256];
} nawal_round_reply;

/* Announces a round from base_cid (must be in the blob store) at now.
 * Refused while the latest round is still open. */
int nawal_round_announce(nawal_store *s, const uint8_t base_cid[32], const nawal_round_params *p, int64_t now_ms,
                         int64_t *id_out, char *err, size_t errlen);

/* The base a new round starts from: the latest round's model if it closed,
 * its base if it failed, the initial model (init) if there are no rounds.
 * Refused while the latest round is open, or without an initial model. */
int nawal_round_next_base(nawal_store *s, uint8_t base_cid[32], char *err, size_t errlen);

int nawal_round_join(nawal_store *s, const uint8_t pubkey[32], int64_t round_id, uint64_t stake_planck,
                     int64_t now_ms, nawal_round_reply *reply);

/* Records an update (received at now); quality_ppm in [0, 10^6]. The
 * machine does not aggregate here: the caller replies, then ticks. */
int nawal_round_submit(nawal_store *s, const uint8_t pubkey[32], int64_t round_id, const uint8_t base_cid[32],
                       const uint8_t delta_cid[32], uint64_t num_examples, uint32_t quality_ppm, int64_t now_ms,
                       nawal_round_reply *reply);

/* The refusals nawal_round_submit would make, except that the delta blob
 * need not be in the store yet: 0 when the update would be taken once its
 * blob is there (the server then receives the blob before submitting),
 * else NAWAL_STORE_REFUSED / -1 with reply filled. Writes nothing. */
int nawal_round_submit_check(nawal_store *s, const uint8_t pubkey[32], int64_t round_id, const uint8_t base_cid[32],
                             uint64_t num_examples, uint32_t quality_ppm, int64_t now_ms, nawal_round_reply *rep);

typedef struct {
    int64_t round_id;           /* the current (latest) round after the tick; 0 if none */
    nawal_round_state state;
    int transitions;            /* state changes this tick made */
    int64_t closed_round;       /* round closed by this tick (0: none) */
    int64_t failed_round;       /* round failed by this tick (0: none) */
    int64_t announced_round;    /* round announced by this tick (0: none) */
    uint8_t model_cid[32];      /* the closed round's new model */
    size_t accepted, rejected;  /* updates of the aggregated round */
    nawal_settlement settlement;
    int64_t next_event_ms;      /* tick again at this time at the latest (0: nothing pending) */
    char note[256];             /* why a round failed */
} nawal_tick_report;

/* Moves the machine on as far as now allows (several steps at once: a
 * round can close and the next be announced and opened in one call). An
 * aggregation runs inside (seconds for big models: a server calls this
 * off its event loop). On -1 nothing is lost: a round caught in
 * aggregation stays there and the next tick aggregates again (the result
 * is deterministic, so the same model CID comes out). rep may be NULL. */
int nawal_round_tick(nawal_store *s, int64_t now_ms, const nawal_agg_config *cfg, nawal_tick_report *rep, char *err,
                     size_t errlen);

/* After a restart: the same as a tick at now (deadlines that passed while
 * down take effect, an interrupted aggregation is redone), logged as a
 * resume; rep tells the server the current round and when to tick next. */
int nawal_round_resume(nawal_store *s, int64_t now_ms, const nawal_agg_config *cfg, nawal_tick_report *rep,
                       char *err, size_t errlen);

/* ---- evaluations ---- */

/* The most tokens an evaluation may claim (a validator measures a few
 * windows of its validation split, nawal-agent at most 32): a sane bound,
 * so that sums over a round's rows stay exact integers well inside int64
 * and no claimed count weighs without limit in the round's mean. */
#define NAWAL_EVAL_MAX_TOKENS 1000000000000ull /* 1e12 */

/* One row of the evaluations table. */
typedef struct {
    int64_t round_id;
    uint8_t validator[32];
    uint8_t model_cid[32];       /* the round's new model */
    double loss;                 /* mean nats per predicted token on the validator's validation split */
    uint64_t tokens;             /* predicted tokens it was measured over */
    int64_t received_ms;
} nawal_evaluation;

typedef struct {
    uint64_t results, tokens;    /* rows of the round, their tokens (each row's at most NAWAL_EVAL_MAX_TOKENS,
                                  * also one recorded before the bound; the total at most INT64_MAX) */
    double loss;                 /* sum(loss x tokens) / sum(tokens), with those tokens; NAN without rows */
} nawal_evaluation_summary;

/* Records a validator's evaluation (received at e->received_ms) in one
 * transaction; the refusals above. */
int nawal_round_evaluation_record(nawal_store *s, const nawal_evaluation *e, nawal_round_reply *rep);
/* 1 if validator's evaluation of round_id is on record, 0 if not, -1 on a database error. */
int nawal_round_evaluated(nawal_store *s, int64_t round_id, const uint8_t validator[32]);
int nawal_round_evaluation_summary(nawal_store *s, int64_t round_id, nawal_evaluation_summary *out, char *err,
                                   size_t errlen);
/* The closed round with the highest id (the latest model validators are asked about): 1 and *r, 0 if none, -1 on error. */
int nawal_round_latest_closed(nawal_store *s, nawal_round *r, char *err, size_t errlen);

/* Validators joined, updates received, and updates rejected by the
 * aggregation, of a round (any pointer may be NULL). */
int nawal_round_counts(nawal_store *s, int64_t round_id, uint64_t *joined, uint64_t *submitted, uint64_t *rejected,
                       char *err, size_t errlen);

#endif
