/* rounds.c - the round state machine (see rounds.h). Each public call is
 * one transaction, except a tick that aggregates: it commits the move to
 * `aggregating`, computes the model (outside any transaction: it takes
 * seconds and writes only the content-addressed blob), then commits the
 * verdicts, the aggregate record, the settlement or failure and the next
 * round's announcement together. */
#include "rounds.h"
#include "cid.h"
#include "error.h"
#include "log.h"
#include "patches.h"
#include "registry.h"
#include "rewards.h"
#include "store_internal.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TICK_STEPS 16

static int refuse(nawal_round_reply *rep, Nawal__ErrorCode code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int refuse(nawal_round_reply *rep, Nawal__ErrorCode code, const char *fmt, ...) {
    rep->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rep->text, sizeof rep->text, fmt, ap);
    va_end(ap);
    return NAWAL_STORE_REFUSED;
}

static int is_final(nawal_round_state st) { return st == NAWAL_ROUND_CLOSED || st == NAWAL_ROUND_FAILED; }

static int count_rows(nawal_store *s, const char *sql, int64_t round_id, uint64_t *out, char *err, size_t errlen) {
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st, sql, err, errlen)) return -1;
    sqlite3_bind_int64(st, 1, round_id);
    int rc = 0;
    if (sqlite3_step(st) == SQLITE_ROW) *out = (uint64_t)sqlite3_column_int64(st, 0);
    else rc = nawal_store_sql_fail(s, err, errlen, "count");
    sqlite3_finalize(st);
    return rc;
}

int nawal_round_counts(nawal_store *s, int64_t round_id, uint64_t *joined, uint64_t *submitted, uint64_t *rejected,
                       char *err, size_t errlen) {
    uint64_t dummy;
    if (count_rows(s, "SELECT COUNT(*) FROM participants WHERE round_id = ?1", round_id, joined ? joined : &dummy, err,
                   errlen) ||
        count_rows(s, "SELECT COUNT(*) FROM submissions WHERE round_id = ?1", round_id, submitted ? submitted : &dummy,
                   err, errlen) ||
        count_rows(s, "SELECT COUNT(*) FROM submissions WHERE round_id = ?1 AND rejected IS NOT NULL", round_id,
                   rejected ? rejected : &dummy, err, errlen))
        return -1;
    return 0;
}

/* 1 if there is a latest round (in *r), 0 if none, -1 on error. */
static int latest_round(nawal_store *s, nawal_round *r, char *err, size_t errlen) {
    int rc = nawal_store_round_latest(s, r, err, errlen);
    if (rc == NAWAL_STORE_REFUSED) return 0;
    return rc ? -1 : 1;
}

/* ---- announcing ------------------------------------------------------------ */

static int check_params(const nawal_round_params *p, char *err, size_t errlen) {
    if (p->duration_ms <= 0) return nawal_fail(err, errlen, "round: the duration must be positive");
    if (p->join_window_ms < 0 || p->join_window_ms > p->duration_ms)
        return nawal_fail(err, errlen, "round: the join window must be within the round (0..%lld ms)",
                          (long long)p->duration_ms);
    if (p->target < 1 || p->min < 1 || p->min > p->target)
        return nawal_fail(err, errlen, "round: want 1 <= min (%u) <= target (%u)", p->min, p->target);
    if (p->min_quality_ppm > NAWAL_QUALITY_ONE)
        return nawal_fail(err, errlen, "round: minimum quality %u ppm is above 1", p->min_quality_ppm);
    if (p->config_json) {
        json_error_t je;
        json_t *j = json_loads(p->config_json, JSON_REJECT_DUPLICATES, &je);
        int ok = j && json_is_object(j);
        json_decref(j);
        if (!ok) return nawal_fail(err, errlen, "round: training config is not a JSON object: %s", j ? "" : je.text);
    }
    return 0;
}

/* Inside a transaction: a new round at now from base with p. */
static int announce_tx(nawal_store *s, const uint8_t base_cid[32], const nawal_round_params *p, int64_t now_ms,
                       int64_t *id_out, char *err, size_t errlen) {
    if (check_params(p, err, errlen)) return -1;
    if (!nawal_blobstore_has(s, base_cid)) {
        char hex[NAWAL_CID_HEX_BYTES];
        nawal_cid_to_hex(hex, base_cid);
        return nawal_fail(err, errlen, "base model blob %s is not in the blob store", hex);
    }
    nawal_round r = {0};
    memcpy(r.base_cid, base_cid, 32);
    r.started_ms = now_ms;
    r.deadline_ms = now_ms + p->duration_ms;
    r.join_deadline_ms = p->join_window_ms ? now_ms + p->join_window_ms : r.deadline_ms;
    r.pool_planck = p->pool_planck;
    r.target = p->target;
    r.min = p->min;
    r.min_stake_planck = p->min_stake_planck;
    r.min_quality_ppm = p->min_quality_ppm;
    return nawal_store_round_create_tx(s, &r, p->config_json, id_out, err, errlen);
}

/* After the commit that announced round id. */
static void log_announced(nawal_store *s, int64_t id) {
    nawal_round r;
    if (!id || nawal_store_round_get(s, id, &r, NULL, 0)) return;
    char hex[NAWAL_CID_HEX_BYTES], t[32];
    nawal_cid_to_hex(hex, r.base_cid);
    nawal_log(NAWAL_LOG_INFO, "round_announced", "round=%lld base=%s deadline=%s target=%u min=%u pool_planck=%llu",
              (long long)id, hex, nawal_format_ms(t, r.deadline_ms), r.target, r.min, (unsigned long long)r.pool_planck);
}

/* The parameters r ran with (config_out malloc'ed). */
static int params_of(nawal_store *s, const nawal_round *r, nawal_round_params *p, char **config_out, char *err,
                     size_t errlen) {
    if (nawal_store_round_config(s, r->id, config_out, err, errlen)) return -1;
    memset(p, 0, sizeof *p);
    p->duration_ms = r->deadline_ms - r->started_ms;
    p->join_window_ms = r->join_deadline_ms >= r->deadline_ms ? 0 : r->join_deadline_ms - r->started_ms;
    if (p->duration_ms <= 0) p->duration_ms = 1;
    p->pool_planck = r->pool_planck;
    p->target = r->target;
    p->min = r->min;
    p->min_stake_planck = r->min_stake_planck;
    p->min_quality_ppm = r->min_quality_ppm;
    p->config_json = *config_out;
    return 0;
}

/* Inside a transaction: the round after r (which has just ended), from base. */
static int announce_next_tx(nawal_store *s, const nawal_round *r, const uint8_t base_cid[32], int64_t now_ms,
                            int64_t *id_out, char *err, size_t errlen) {
    nawal_round_params p;
    char *cfg = NULL;
    int rc = params_of(s, r, &p, &cfg, err, errlen);
    if (rc == 0) rc = announce_tx(s, base_cid, &p, now_ms, id_out, err, errlen);
    free(cfg);
    return rc;
}

static int genesis_base(nawal_store *s, uint8_t base_cid[32], char *err, size_t errlen) {
    char *hex = NULL;
    int rc = nawal_store_setting_get(s, NAWAL_SETTING_BASE_MODEL, &hex, err, errlen);
    if (rc == NAWAL_STORE_REFUSED) {
        nawal_fail(err, errlen, "%s has no initial model (create one with 'nawal-coordinator init --model-config"
                                " ...' or '--import CKPT')", nawal_store_dir(s));
        return NAWAL_STORE_REFUSED;
    }
    if (rc) return -1;
    rc = nawal_cid_from_hex(base_cid, hex, err, errlen) ? nawal_fail(err, errlen, "settings: bad initial model CID") : 0;
    free(hex);
    return rc;
}

int nawal_round_next_base(nawal_store *s, uint8_t base_cid[32], char *err, size_t errlen) {
    nawal_round r;
    int have = latest_round(s, &r, err, errlen);
    if (have < 0) return -1;
    if (!have) return genesis_base(s, base_cid, err, errlen);
    if (!is_final(r.state)) {
        nawal_fail(err, errlen, "round %lld is still %s", (long long)r.id, nawal_round_state_name(r.state));
        return NAWAL_STORE_REFUSED;
    }
    memcpy(base_cid, r.state == NAWAL_ROUND_CLOSED && r.has_model_cid ? r.model_cid : r.base_cid, 32);
    return 0;
}

int nawal_round_announce(nawal_store *s, const uint8_t base_cid[32], const nawal_round_params *p, int64_t now_ms,
                         int64_t *id_out, char *err, size_t errlen) {
    if (nawal_store_begin(s, err, errlen)) return -1;
    nawal_round r;
    int have = latest_round(s, &r, err, errlen), rc = have < 0 ? -1 : 0;
    if (have > 0 && !is_final(r.state)) {
        nawal_fail(err, errlen, "round %lld is still %s; one round at a time", (long long)r.id,
                   nawal_round_state_name(r.state));
        rc = NAWAL_STORE_REFUSED;
    }
    int64_t id = 0;
    if (rc == 0) rc = announce_tx(s, base_cid, p, now_ms, &id, err, errlen);
    if (rc) {
        nawal_store_rollback(s);
        return rc;
    }
    if (nawal_store_commit(s, err, errlen)) return -1;
    log_announced(s, id);
    if (id_out) *id_out = id;
    return 0;
}

/* ---- joins and updates ------------------------------------------------------ */

/* Ends a join/submit transaction: commit when accepted, else roll back. */
static int finish_request(nawal_store *s, int rc, nawal_round_reply *rep) {
    char err[256];
    if (rc == 0) {
        if (nawal_store_commit(s, err, sizeof err) == 0) return 0;
        rc = -1;
        refuse(rep, NAWAL__ERROR_CODE__ERR_INTERNAL, "%s", err);
    }
    nawal_store_rollback(s);
    return rc;
}

static int internal(nawal_round_reply *rep, const char *msg) {
    refuse(rep, NAWAL__ERROR_CODE__ERR_INTERNAL, "%s", msg);
    return -1;
}

/* The round a request names, checked to be the current one: 0, or a refusal. */
static int current_round(nawal_store *s, int64_t round_id, nawal_round *r, nawal_round_reply *rep) {
    char err[256];
    int rc = nawal_store_round_get(s, round_id, r, err, sizeof err);
    if (rc == NAWAL_STORE_REFUSED) return refuse(rep, NAWAL__ERROR_CODE__ERR_WRONG_ROUND, "there is no round %lld", (long long)round_id);
    if (rc) return internal(rep, err);
    nawal_round last;
    if (latest_round(s, &last, err, sizeof err) < 0) return internal(rep, err);
    if (last.id != r->id)
        return refuse(rep, NAWAL__ERROR_CODE__ERR_LATE, "round %lld is over; the current round is %lld",
                      (long long)round_id, (long long)last.id);
    return 0;
}

int nawal_round_join(nawal_store *s, const uint8_t pubkey[32], int64_t round_id, uint64_t stake_planck,
                     int64_t now_ms, nawal_round_reply *rep) {
    memset(rep, 0, sizeof *rep);
    char err[256], t[32], fp[NAWAL_FINGERPRINT_SHORT_BYTES];
    nawal_fingerprint_short(fp, pubkey);
    if (nawal_store_begin(s, err, sizeof err)) return internal(rep, err);
    nawal_round r;
    int rc = current_round(s, round_id, &r, rep);
    long long rid = (long long)round_id;
    if (rc) return finish_request(s, rc, rep);
    if (r.state != NAWAL_ROUND_ANNOUNCED && r.state != NAWAL_ROUND_JOINING)
        return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_LATE, "round %lld is %s: its join window is closed",
                                        rid, nawal_round_state_name(r.state)), rep);
    if (now_ms < r.started_ms)
        return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_WRONG_ROUND, "round %lld opens for joins at %s", rid,
                                        nawal_format_ms(t, r.started_ms)), rep);
    if (now_ms >= r.join_deadline_ms)
        return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_LATE, "the join window of round %lld closed at %s",
                                        rid, nawal_format_ms(t, r.join_deadline_ms)), rep);
    char why[256];
    int ok = nawal_registry_can_join(s, pubkey, r.min_stake_planck, why, sizeof why);
    if (ok < 0) return finish_request(s, internal(rep, why), rep);
    if (!ok) return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_UNKNOWN_SENDER, "%s", why), rep);
    nawal_validator v;
    if (nawal_registry_get(s, pubkey, &v, err, sizeof err)) return finish_request(s, internal(rep, err), rep);
    if (stake_planck > v.stake_planck)
        return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_BAD_MESSAGE,
                                        "validator %s claims a stake of %llu planck, %llu are registered", fp,
                                        (unsigned long long)stake_planck, (unsigned long long)v.stake_planck), rep);
    if (stake_planck < r.min_stake_planck)
        return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_UNKNOWN_SENDER,
                                        "validator %s: stake %llu planck is below round %lld's minimum %llu planck", fp,
                                        (unsigned long long)stake_planck, rid, (unsigned long long)r.min_stake_planck), rep);
    uint64_t joined = 0, dup = 0;
    sqlite3_stmt *st;
    if (count_rows(s, "SELECT COUNT(*) FROM participants WHERE round_id = ?1", round_id, &joined, err, sizeof err))
        return finish_request(s, internal(rep, err), rep);
    if (nawal_store_prepare(s, &st, "SELECT COUNT(*) FROM participants WHERE round_id = ?1 AND validator = ?2", err, sizeof err))
        return finish_request(s, internal(rep, err), rep);
    sqlite3_bind_int64(st, 1, round_id);
    sqlite3_bind_blob(st, 2, pubkey, 32, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) dup = (uint64_t)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    if (dup) return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_DUPLICATE, "validator %s already joined round %lld", fp, rid), rep);
    if (joined >= r.target)
        return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_LATE, "round %lld is full (%u participants)", rid, r.target), rep);
    if (nawal_store_prepare(s, &st, "INSERT INTO participants(round_id, validator, stake_planck, joined_ms) VALUES(?1, ?2, ?3, ?4)",
                            err, sizeof err))
        return finish_request(s, internal(rep, err), rep);
    sqlite3_bind_int64(st, 1, round_id);
    sqlite3_bind_blob(st, 2, pubkey, 32, SQLITE_STATIC);
    nawal_store_bind_u64(st, 3, stake_planck);
    sqlite3_bind_int64(st, 4, now_ms);
    rc = sqlite3_step(st) == SQLITE_DONE ? 0 : internal(rep, sqlite3_errmsg(nawal_store_db(s)));
    sqlite3_finalize(st);
    rc = finish_request(s, rc, rep);
    if (rc == 0) nawal_log(NAWAL_LOG_INFO, "validator_joined", "round=%lld validator=%s", rid, fp);
    return rc;
}

/* nawal_round_submit, or with check_only its refusals alone (no blob needed, nothing written). */
static int submit(nawal_store *s, const uint8_t pubkey[32], int64_t round_id, const uint8_t base_cid[32],
                  const uint8_t delta_cid[32], uint64_t num_examples, uint32_t quality_ppm, int64_t now_ms,
                  int check_only, nawal_round_reply *rep) {
    memset(rep, 0, sizeof *rep);
    char err[256], t[32], fp[NAWAL_FINGERPRINT_SHORT_BYTES], h1[NAWAL_CID_HEX_BYTES], h2[NAWAL_CID_HEX_BYTES];
    nawal_fingerprint_short(fp, pubkey);
    long long rid = (long long)round_id;
    if (nawal_store_begin(s, err, sizeof err)) return internal(rep, err);
    nawal_round r;
    int rc = current_round(s, round_id, &r, rep);
    if (rc) return finish_request(s, rc, rep);
    if (r.state == NAWAL_ROUND_AGGREGATING || is_final(r.state))
        return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_LATE, "round %lld is %s", rid,
                                        nawal_round_state_name(r.state)), rep);
    if (now_ms >= r.deadline_ms)
        return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_LATE, "round %lld's deadline passed at %s", rid,
                                        nawal_format_ms(t, r.deadline_ms)), rep);
    if (now_ms < r.started_ms)
        return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_WRONG_ROUND, "round %lld opens at %s", rid,
                                        nawal_format_ms(t, r.started_ms)), rep);
    uint64_t joined = 0, dup = 0;
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st,
                            "SELECT (SELECT COUNT(*) FROM participants WHERE round_id = ?1 AND validator = ?2),"
                            " (SELECT COUNT(*) FROM submissions WHERE round_id = ?1 AND validator = ?2)", err, sizeof err))
        return finish_request(s, internal(rep, err), rep);
    sqlite3_bind_int64(st, 1, round_id);
    sqlite3_bind_blob(st, 2, pubkey, 32, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        joined = (uint64_t)sqlite3_column_int64(st, 0);
        dup = (uint64_t)sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    if (!joined)
        return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_WRONG_ROUND, "validator %s did not join round %lld", fp, rid), rep);
    if (!nawal_cid_equal(base_cid, r.base_cid)) {
        nawal_cid_to_hex(h1, base_cid);
        nawal_cid_to_hex(h2, r.base_cid);
        return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_WRONG_ROUND,
                                        "update trained from base %.16s…, round %lld's base is %.16s…", h1, rid, h2), rep);
    }
    if (dup) return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_DUPLICATE, "validator %s already sent an update in round %lld", fp, rid), rep);
    if (num_examples == 0 || num_examples > (uint64_t)INT64_MAX)
        return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_BAD_MESSAGE, "example count %llu out of range (1..2^63-1)",
                                        (unsigned long long)num_examples), rep);
    if (quality_ppm > NAWAL_QUALITY_ONE)
        return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_BAD_MESSAGE, "quality %u ppm is above 1", quality_ppm), rep);
    if (!check_only && !nawal_blobstore_has(s, delta_cid)) {
        nawal_cid_to_hex(h1, delta_cid);
        return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_NOT_FOUND, "delta blob %s is not in the blob store", h1), rep);
    }
    nawal_validator v;
    int g = nawal_registry_get(s, pubkey, &v, err, sizeof err);
    if (g < 0) return finish_request(s, internal(rep, err), rep);
    if (g || v.removed)
        return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_UNKNOWN_SENDER, "validator %s is no longer registered", fp), rep);
    if (check_only) {
        nawal_store_rollback(s);
        return 0;
    }
    nawal_submission sub = {0};
    sub.round_id = round_id;
    memcpy(sub.validator, pubkey, 32);
    memcpy(sub.delta_cid, delta_cid, 32);
    sub.num_examples = num_examples;
    sub.quality_ppm = quality_ppm;
    sub.received_ms = now_ms;
    rc = nawal_store_submission_add_tx(s, &sub, err, sizeof err);
    if (rc) rc = internal(rep, err); /* every refusal it knows was checked above */
    rc = finish_request(s, rc, rep);
    if (rc == 0) nawal_log(NAWAL_LOG_INFO, "update_accepted", "round=%lld validator=%s examples=%llu quality_ppm=%u", rid, fp,
                           (unsigned long long)num_examples, quality_ppm);
    return rc;
}

int nawal_round_submit(nawal_store *s, const uint8_t pubkey[32], int64_t round_id, const uint8_t base_cid[32],
                       const uint8_t delta_cid[32], uint64_t num_examples, uint32_t quality_ppm, int64_t now_ms,
                       nawal_round_reply *rep) {
    return submit(s, pubkey, round_id, base_cid, delta_cid, num_examples, quality_ppm, now_ms, 0, rep);
}

int nawal_round_submit_check(nawal_store *s, const uint8_t pubkey[32], int64_t round_id, const uint8_t base_cid[32],
                             uint64_t num_examples, uint32_t quality_ppm, int64_t now_ms, nawal_round_reply *rep) {
    static const uint8_t no_blob[32];
    return submit(s, pubkey, round_id, base_cid, no_blob, num_examples, quality_ppm, now_ms, 1, rep);
}

/* ---- evaluations of closed rounds' models ------------------------------------------ */

int nawal_round_evaluation_record(nawal_store *s, const nawal_evaluation *e, nawal_round_reply *rep) {
    memset(rep, 0, sizeof *rep);
    char err[256], fp[NAWAL_FINGERPRINT_SHORT_BYTES], h1[NAWAL_CID_HEX_BYTES], h2[NAWAL_CID_HEX_BYTES];
    nawal_fingerprint_short(fp, e->validator);
    long long rid = (long long)e->round_id;
    if (!isfinite(e->loss) || e->loss < 0)
        return refuse(rep, NAWAL__ERROR_CODE__ERR_BAD_MESSAGE,
                      "evaluation of round %lld: the loss must be a finite number >= 0, not %g", rid, e->loss);
    if (e->tokens == 0 || e->tokens > NAWAL_EVAL_MAX_TOKENS)
        return refuse(rep, NAWAL__ERROR_CODE__ERR_BAD_MESSAGE,
                      "evaluation of round %lld: evaluated over %llu tokens (want 1..%llu)", rid,
                      (unsigned long long)e->tokens, NAWAL_EVAL_MAX_TOKENS);
    if (nawal_store_begin(s, err, sizeof err)) return internal(rep, err);
    nawal_round r;
    int rc = nawal_store_round_get(s, e->round_id, &r, err, sizeof err);
    if (rc == NAWAL_STORE_REFUSED)
        return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_WRONG_ROUND,
                                        "there is no round %lld: no evaluation was requested for it", rid), rep);
    if (rc) return finish_request(s, internal(rep, err), rep);
    if (r.state != NAWAL_ROUND_CLOSED || !r.has_model_cid)
        return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_WRONG_ROUND,
                                        "round %lld is %s: only a closed round's new model is evaluated", rid,
                                        nawal_round_state_name(r.state)), rep);
    if (!nawal_cid_equal(e->model_cid, r.model_cid)) {
        nawal_cid_to_hex(h1, e->model_cid);
        nawal_cid_to_hex(h2, r.model_cid);
        return finish_request(s, refuse(rep, NAWAL__ERROR_CODE__ERR_WRONG_ROUND,
                                        "no evaluation of model %.16s… was requested: round %lld's new model is %.16s…",
                                        h1, rid, h2), rep);
    }
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st,
                            "INSERT INTO evaluations(round_id, validator, model_cid, loss, tokens, received_ms)"
                            " SELECT ?1, pubkey, ?3, ?4, ?5, ?6 FROM validators WHERE pubkey = ?2 AND removed = 0",
                            err, sizeof err))
        return finish_request(s, internal(rep, err), rep);
    sqlite3_bind_int64(st, 1, e->round_id);
    sqlite3_bind_blob(st, 2, e->validator, 32, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, e->model_cid, 32, SQLITE_STATIC);
    sqlite3_bind_double(st, 4, e->loss);
    sqlite3_bind_int64(st, 5, (int64_t)e->tokens);
    sqlite3_bind_int64(st, 6, e->received_ms);
    int step = sqlite3_step(st);
    if (step == SQLITE_CONSTRAINT_UNIQUE || sqlite3_extended_errcode(nawal_store_db(s)) == SQLITE_CONSTRAINT_UNIQUE)
        rc = refuse(rep, NAWAL__ERROR_CODE__ERR_DUPLICATE, "validator %s already sent its evaluation of round %lld", fp,
                    rid);
    else if (step != SQLITE_DONE)
        rc = internal(rep, sqlite3_errmsg(nawal_store_db(s)));
    else if (sqlite3_changes(nawal_store_db(s)) != 1)
        rc = refuse(rep, NAWAL__ERROR_CODE__ERR_UNKNOWN_SENDER, "validator %s is not registered (or was removed)", fp);
    sqlite3_finalize(st);
    rc = finish_request(s, rc, rep);
    if (rc == 0)
        nawal_log(NAWAL_LOG_INFO, "evaluation_recorded", "round=%lld validator=%s loss=%.9g tokens=%llu", rid, fp,
                  e->loss, (unsigned long long)e->tokens);
    return rc;
}

int nawal_round_evaluated(nawal_store *s, int64_t round_id, const uint8_t validator[32]) {
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st, "SELECT COUNT(*) FROM evaluations WHERE round_id = ?1 AND validator = ?2", NULL, 0))
        return -1;
    sqlite3_bind_int64(st, 1, round_id);
    sqlite3_bind_blob(st, 2, validator, 32, SQLITE_STATIC);
    int rc = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) > 0 : -1;
    sqlite3_finalize(st);
    return rc;
}

int nawal_round_evaluation_summary(nawal_store *s, int64_t round_id, nawal_evaluation_summary *out, char *err,
                                   size_t errlen) {
    memset(out, 0, sizeof *out);
    out->loss = NAN;
    sqlite3_stmt *st;
    /* each row's tokens clamped to the bound (rows recorded before it was enforced), the total to int64 */
    if (nawal_store_prepare(s, &st, "SELECT COUNT(*), TOTAL(MIN(tokens, ?2)), TOTAL(loss * MIN(tokens, ?2))"
                                    " FROM evaluations WHERE round_id = ?1", err, errlen))
        return -1;
    sqlite3_bind_int64(st, 1, round_id);
    sqlite3_bind_int64(st, 2, (int64_t)NAWAL_EVAL_MAX_TOKENS);
    int rc = 0;
    if (sqlite3_step(st) == SQLITE_ROW) {
        out->results = (uint64_t)sqlite3_column_int64(st, 0);
        double tokens = sqlite3_column_double(st, 1);
        out->tokens = !(tokens > 0) ? 0 : tokens < 0x1p63 ? (uint64_t)tokens : (uint64_t)INT64_MAX;
        if (out->results && tokens > 0) out->loss = sqlite3_column_double(st, 2) / tokens;
    } else {
        rc = nawal_store_sql_fail(s, err, errlen, "summarise evaluations");
    }
    sqlite3_finalize(st);
    return rc;
}

int nawal_round_latest_closed(nawal_store *s, nawal_round *r, char *err, size_t errlen) {
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st, "SELECT MAX(id) FROM rounds WHERE state = 'closed'", err, errlen)) return -1;
    int have = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL;
    int64_t id = have ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    if (!have) return 0;
    return nawal_store_round_get(s, id, r, err, errlen) ? -1 : 1;
}

/* ---- the machine --------------------------------------------------------------- */

static int set_state(nawal_store *s, int64_t id, nawal_round_state to, int64_t now_ms, char *err, size_t errlen) {
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st, "UPDATE rounds SET state = ?2, closed_ms = ?3 WHERE id = ?1 AND state NOT IN ('closed', 'failed')",
                            err, errlen))
        return -1;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_text(st, 2, nawal_round_state_name(to), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, to == NAWAL_ROUND_FAILED ? now_ms : 0);
    int rc = sqlite3_step(st) == SQLITE_DONE && sqlite3_changes(nawal_store_db(s)) == 1
                 ? 0
                 : nawal_store_sql_fail(s, err, errlen, "change round state");
    sqlite3_finalize(st);
    return rc;
}

/* One committed state change of an open round. */
static int move(nawal_store *s, const nawal_round *r, nawal_round_state to, int64_t now_ms, nawal_tick_report *rep,
                char *err, size_t errlen) {
    if (nawal_store_begin(s, err, errlen)) return -1;
    if (set_state(s, r->id, to, now_ms, err, errlen)) {
        nawal_store_rollback(s);
        return -1;
    }
    if (nawal_store_commit(s, err, errlen)) return -1;
    rep->transitions++;
    nawal_log(NAWAL_LOG_INFO, "round_state", "round=%lld from=%s to=%s", (long long)r->id, nawal_round_state_name(r->state),
              nawal_round_state_name(to));
    return 0;
}

/* Fails r (why) and announces the next round from the same base: one commit. */
static int fail_round(nawal_store *s, const nawal_round *r, const char *why, int64_t now_ms, nawal_tick_report *rep,
                      char *err, size_t errlen) {
    if (nawal_store_begin(s, err, errlen)) return -1;
    int64_t next = 0;
    if (set_state(s, r->id, NAWAL_ROUND_FAILED, now_ms, err, errlen) ||
        announce_next_tx(s, r, r->base_cid, now_ms, &next, err, errlen)) {
        nawal_store_rollback(s);
        return -1;
    }
    if (nawal_store_commit(s, err, errlen)) return -1;
    rep->transitions += 2;
    rep->failed_round = r->id;
    rep->announced_round = next;
    snprintf(rep->note, sizeof rep->note, "%s", why);
    char q[300];
    nawal_log(NAWAL_LOG_WARN, "round_failed", "round=%lld next=%lld reason=%s", (long long)r->id, (long long)next,
              nawal_log_quote(q, sizeof q, why));
    log_announced(s, next);
    return 0;
}

/* Inside a transaction: the verdicts and the aggregate record. */
static int record_aggregate_tx(nawal_store *s, const nawal_round *r, const nawal_agg_result *res, const char *strategy,
                               int64_t now_ms, char *err, size_t errlen) {
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st, "UPDATE submissions SET rejected = ?3 WHERE round_id = ?1 AND validator = ?2", err, errlen))
        return -1;
    int rc = 0;
    for (size_t i = 0; i < res->n_updates && rc == 0; i++) {
        const nawal_agg_verdict *v = &res->verdicts[i];
        if (v->accepted) continue;
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, r->id);
        sqlite3_bind_blob(st, 2, v->validator, 32, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, v->reason[0] ? v->reason : "rejected", -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE) rc = nawal_store_sql_fail(s, err, errlen, "record verdict");
    }
    sqlite3_finalize(st);
    if (rc) return rc;
    if (nawal_store_prepare(s, &st,
                            "INSERT INTO aggregates(round_id, strategy, model_cid, accepted, rejected, total_examples,"
                            " duration_ms, finished_ms) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                            " ON CONFLICT(round_id) DO UPDATE SET strategy = ?2, model_cid = ?3, accepted = ?4,"
                            " rejected = ?5, total_examples = ?6, duration_ms = ?7, finished_ms = ?8",
                            err, errlen))
        return -1;
    sqlite3_bind_int64(st, 1, r->id);
    sqlite3_bind_text(st, 2, strategy, -1, SQLITE_STATIC);
    if (res->has_model) sqlite3_bind_blob(st, 3, res->model_cid, 32, SQLITE_STATIC);
    else sqlite3_bind_null(st, 3);
    sqlite3_bind_int64(st, 4, (int64_t)res->n_accepted);
    sqlite3_bind_int64(st, 5, (int64_t)(res->n_updates - res->n_accepted));
    nawal_store_bind_u64(st, 6, res->total_examples);
    sqlite3_bind_int64(st, 7, res->duration_ms);
    sqlite3_bind_int64(st, 8, now_ms);
    if (sqlite3_step(st) != SQLITE_DONE) rc = nawal_store_sql_fail(s, err, errlen, "record aggregate");
    sqlite3_finalize(st);
    return rc;
}

/* The model patch base -> new model of r (patches.h): made and stored
 * before the closing transaction (reading and compressing two models is
 * no work to hold the database's write lock for), recorded inside it so
 * the next RoundAnnounce can name it. An optimisation: a failure is logged
 * and the round closes all the same. patch_make returns 1 when *p is to be
 * recorded; patch_record logs what happened. */
static int patch_make(nawal_store *s, const nawal_round *r, const uint8_t model_cid[32], nawal_patch_row *p) {
    char why[512] = "", q[600];
    int rc = nawal_patch_make(s, r->base_cid, model_cid, p, why, sizeof why);
    if (rc != 1)
        nawal_log(rc ? NAWAL_LOG_WARN : NAWAL_LOG_DEBUG, rc ? "model_patch_failed" : "model_patch_skipped",
                  "round=%lld reason=%s", (long long)r->id, nawal_log_quote(q, sizeof q, why));
    return rc == 1;
}

static void patch_record(nawal_store *s, const nawal_round *r, const nawal_patch_row *p) {
    char why[512] = "", q[600], hex[NAWAL_CID_HEX_BYTES];
    if (nawal_patch_record(s, p, why, sizeof why)) {
        nawal_log(NAWAL_LOG_WARN, "model_patch_failed", "round=%lld reason=%s", (long long)r->id,
                  nawal_log_quote(q, sizeof q, why));
        return;
    }
    nawal_cid_to_hex(hex, p->patch_cid);
    nawal_log(NAWAL_LOG_INFO, "model_patch", "round=%lld patch=%s bytes=%llu", (long long)r->id, hex,
              (unsigned long long)p->patch_size);
}

/* r is aggregating: aggregate, then close (settle) or fail it and announce the next round. */
static int aggregate_step(nawal_store *s, const nawal_round *r, int64_t now_ms, const nawal_agg_config *cfg,
                          nawal_tick_report *rep, char *err, size_t errlen) {
    nawal_agg_result res;
    if (nawal_round_aggregate(s, r->id, cfg, r->min, &res, err, errlen)) {
        char q[300];
        nawal_log(NAWAL_LOG_ERROR, "aggregation_error", "round=%lld error=%s", (long long)r->id, nawal_log_quote(q, sizeof q, err));
        return -1;
    }
    const char *strategy = cfg && cfg->strategy ? cfg->strategy : "fedavg";
    int64_t next = 0;
    nawal_settlement set = {0};
    nawal_patch_row patch;
    int have_patch = res.has_model && patch_make(s, r, res.model_cid, &patch);
    int rc = nawal_store_begin(s, err, errlen);
    if (rc == 0) rc = record_aggregate_tx(s, r, &res, strategy, now_ms, err, errlen);
    if (rc == 0 && res.has_model) rc = nawal_round_settle_tx(s, r->id, res.model_cid, now_ms, &set, err, errlen);
    if (rc == 0 && have_patch) patch_record(s, r, &patch);
    if (rc == 0 && !res.has_model) rc = set_state(s, r->id, NAWAL_ROUND_FAILED, now_ms, err, errlen);
    if (rc == 0) rc = announce_next_tx(s, r, res.has_model ? res.model_cid : r->base_cid, now_ms, &next, err, errlen);
    if (rc) {
        nawal_store_rollback(s);
        nawal_agg_result_free(&res);
        return -1;
    }
    if (nawal_store_commit(s, err, errlen)) {
        nawal_agg_result_free(&res);
        return -1;
    }
    for (size_t i = 0; i < res.n_updates; i++) {
        if (res.verdicts[i].accepted) continue;
        char fp[NAWAL_FINGERPRINT_SHORT_BYTES], q[300];
        nawal_fingerprint_short(fp, res.verdicts[i].validator);
        nawal_log(NAWAL_LOG_WARN, "update_rejected", "round=%lld validator=%s reason=%s", (long long)r->id, fp,
                  nawal_log_quote(q, sizeof q, res.verdicts[i].reason));
    }
    rep->transitions += 2;
    rep->announced_round = next;
    rep->accepted = res.n_accepted;
    rep->rejected = res.n_updates - res.n_accepted;
    if (res.has_model) {
        rep->closed_round = r->id;
        memcpy(rep->model_cid, res.model_cid, 32);
        rep->settlement = set;
        char hex[NAWAL_CID_HEX_BYTES];
        nawal_cid_to_hex(hex, res.model_cid);
        nawal_log(NAWAL_LOG_INFO, "round_closed",
                  "round=%lld model=%s accepted=%zu rejected=%zu examples=%llu aggregation_ms=%lld paid_planck=%llu next=%lld",
                  (long long)r->id, hex, res.n_accepted, res.n_updates - res.n_accepted,
                  (unsigned long long)res.total_examples, (long long)res.duration_ms,
                  (unsigned long long)set.paid_planck, (long long)next);
    } else {
        rep->failed_round = r->id;
        snprintf(rep->note, sizeof rep->note, "%s", res.note);
        char q[300];
        nawal_log(NAWAL_LOG_WARN, "round_failed", "round=%lld next=%lld reason=%s", (long long)r->id, (long long)next,
                  nawal_log_quote(q, sizeof q, res.note));
    }
    log_announced(s, next);
    nawal_agg_result_free(&res);
    return 0;
}

/* One step; *progressed set when the state changed (then step again). */
static int step(nawal_store *s, int64_t now_ms, const nawal_agg_config *cfg, nawal_tick_report *rep, int *progressed,
                char *err, size_t errlen) {
    *progressed = 0;
    nawal_round r;
    int have = latest_round(s, &r, err, errlen);
    if (have <= 0) return have;
    uint64_t nj = 0, ns = 0;
    if (!is_final(r.state) && nawal_round_counts(s, r.id, &nj, &ns, NULL, err, errlen)) return -1;
    char why[256];
    int rc = 0;
    switch (r.state) {
    case NAWAL_ROUND_CLOSED:
    case NAWAL_ROUND_FAILED: {
        /* ended without a successor (settled by hand, or an older program): keep the rounds going */
        int64_t next = 0;
        uint8_t base[32];
        memcpy(base, r.state == NAWAL_ROUND_CLOSED && r.has_model_cid ? r.model_cid : r.base_cid, 32);
        if (nawal_store_begin(s, err, errlen)) return -1;
        if (announce_next_tx(s, &r, base, now_ms, &next, err, errlen)) {
            nawal_store_rollback(s);
            return -1;
        }
        if (nawal_store_commit(s, err, errlen)) return -1;
        rep->transitions++;
        rep->announced_round = next;
        log_announced(s, next);
        *progressed = 1;
        return 0;
    }
    case NAWAL_ROUND_ANNOUNCED:
        if (now_ms >= r.started_ms) rc = move(s, &r, NAWAL_ROUND_JOINING, now_ms, rep, err, errlen), *progressed = 1;
        break;
    case NAWAL_ROUND_JOINING:
        if (ns >= r.target) rc = move(s, &r, NAWAL_ROUND_AGGREGATING, now_ms, rep, err, errlen), *progressed = 1;
        else if (nj >= r.target || now_ms >= r.join_deadline_ms) {
            if (nj < r.min) {
                snprintf(why, sizeof why, "%llu validators joined, fewer than the minimum %u", (unsigned long long)nj, r.min);
                rc = fail_round(s, &r, why, now_ms, rep, err, errlen);
            } else rc = move(s, &r, NAWAL_ROUND_TRAINING, now_ms, rep, err, errlen);
            *progressed = 1;
        }
        break;
    case NAWAL_ROUND_TRAINING:
        if (ns >= r.target || (ns >= nj && ns >= r.min))
            rc = move(s, &r, NAWAL_ROUND_AGGREGATING, now_ms, rep, err, errlen), *progressed = 1;
        else if (now_ms >= r.deadline_ms) {
            if (ns >= r.min) rc = move(s, &r, NAWAL_ROUND_AGGREGATING, now_ms, rep, err, errlen);
            else {
                snprintf(why, sizeof why, "%llu updates by the deadline, fewer than the minimum %u", (unsigned long long)ns, r.min);
                rc = fail_round(s, &r, why, now_ms, rep, err, errlen);
            }
            *progressed = 1;
        }
        break;
    case NAWAL_ROUND_AGGREGATING:
        rc = aggregate_step(s, &r, now_ms, cfg, rep, err, errlen);
        *progressed = 1;
        break;
    }
    return rc;
}

int nawal_round_tick(nawal_store *s, int64_t now_ms, const nawal_agg_config *cfg, nawal_tick_report *rep_out, char *err,
                     size_t errlen) {
    nawal_tick_report local;
    nawal_tick_report *rep = rep_out ? rep_out : &local;
    memset(rep, 0, sizeof *rep);
    int progressed = 1, rc = 0;
    for (int i = 0; i < MAX_TICK_STEPS && progressed && rc == 0; i++) rc = step(s, now_ms, cfg, rep, &progressed, err, errlen);
    if (rc) return -1;
    nawal_round r;
    int have = latest_round(s, &r, err, errlen);
    if (have < 0) return -1;
    if (have) {
        rep->round_id = r.id;
        rep->state = r.state;
        switch (r.state) {
        case NAWAL_ROUND_ANNOUNCED: rep->next_event_ms = r.started_ms; break;
        case NAWAL_ROUND_JOINING: rep->next_event_ms = r.join_deadline_ms < r.deadline_ms ? r.join_deadline_ms : r.deadline_ms; break;
        case NAWAL_ROUND_TRAINING: rep->next_event_ms = r.deadline_ms; break;
        case NAWAL_ROUND_AGGREGATING: rep->next_event_ms = now_ms; break;
        default: rep->next_event_ms = 0; break;
        }
    }
    return 0;
}

int nawal_round_resume(nawal_store *s, int64_t now_ms, const nawal_agg_config *cfg, nawal_tick_report *rep_out,
                       char *err, size_t errlen) {
    nawal_round r;
    int have = latest_round(s, &r, err, errlen);
    if (have < 0) return -1;
    if (have) {
        char t[32];
        nawal_log(NAWAL_LOG_INFO, "round_resume", "round=%lld state=%s deadline=%s", (long long)r.id,
                  nawal_round_state_name(r.state), nawal_format_ms(t, r.deadline_ms));
    }
    return nawal_round_tick(s, now_ms, cfg, rep_out, err, errlen);
}
