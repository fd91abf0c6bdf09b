/* settle.c - rewards + ledger record + round closed, atomically (see settle.h). */
#include "settle.h"
#include "store_internal.h"
#include "cid.h"
#include "error.h"
#include "ledger.h"
#include "rewards.h"

#include <stdlib.h>
#include <string.h>

/* Inside the transaction: everything but BEGIN/COMMIT. */
static int settle_tx(nawal_store *s, int64_t round_id, const uint8_t model_cid[32], int64_t closed_ms,
                     nawal_settlement *res, char *err, size_t errlen) {
    nawal_round r;
    int rc = nawal_store_round_get(s, round_id, &r, err, errlen);
    if (rc) return rc;
    if (r.state == NAWAL_ROUND_CLOSED || r.state == NAWAL_ROUND_FAILED) {
        uint64_t seq = 0;
        if (r.state == NAWAL_ROUND_CLOSED && nawal_ledger_find_round(s, round_id, &seq, NULL, 0) == 0)
            nawal_fail(err, errlen, "round %lld is already closed and paid (ledger record %llu)", (long long)round_id,
                       (unsigned long long)seq);
        else
            nawal_fail(err, errlen, "round %lld is already %s", (long long)round_id, nawal_round_state_name(r.state));
        return NAWAL_STORE_REFUSED;
    }

    nawal_submission *subs = NULL;
    size_t n = 0;
    if (nawal_store_submissions(s, round_id, &subs, &n, err, errlen)) return -1;
    /* updates the aggregation dropped are neither recorded as accepted nor paid */
    size_t kept = 0;
    for (size_t i = 0; i < n; i++)
        if (!subs[i].rejected) subs[kept++] = subs[i];
    n = kept;
    nawal_reward_input *in = n ? calloc(n, sizeof *in) : NULL;
    uint64_t *pay = n ? calloc(n, sizeof *pay) : NULL;
    nawal_ledger_entry e = {0};
    e.updates = n ? calloc(n, sizeof *e.updates) : NULL;
    e.payouts = n ? calloc(n, sizeof *e.payouts) : NULL;
    sqlite3_stmt *st = NULL;
    if (n && (!in || !pay || !e.updates || !e.payouts)) {
        rc = nawal_fail(err, errlen, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        memcpy(in[i].pubkey, subs[i].validator, 32);
        in[i].quality_ppm = subs[i].quality_ppm;
        in[i].stake_planck = subs[i].stake_planck;
        /* saturating: the stored times are trusted to be sane, not relied on to be */
        __int128 dt = (__int128)subs[i].received_ms - r.started_ms;
        in[i].elapsed_ms = dt > INT64_MAX ? INT64_MAX : dt < INT64_MIN ? INT64_MIN : (int64_t)dt;
    }
    int split = nawal_rewards_split(r.pool_planck, in, n, pay, err, errlen);
    if (split < 0) {
        rc = -1;
        goto out;
    }

    /* rewards rows and the ledger entry, validators in key order (as the submissions come) */
    e.round_id = round_id;
    e.closed_ms = closed_ms;
    memcpy(e.model_cid, model_cid, 32);
    e.pool_planck = r.pool_planck;
    e.n_updates = e.n_payouts = n;
    uint64_t paid = 0;
    if ((rc = nawal_store_prepare(s, &st, "INSERT INTO rewards(round_id, validator, amount_planck) VALUES(?1, ?2, ?3)",
                                  err, errlen)))
        goto out;
    for (size_t i = 0; i < n; i++) {
        memcpy(e.updates[i].validator, subs[i].validator, 32);
        memcpy(e.updates[i].delta_cid, subs[i].delta_cid, 32);
        memcpy(e.payouts[i].validator, subs[i].validator, 32);
        e.payouts[i].amount_planck = pay[i];
        paid += pay[i];
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, round_id);
        sqlite3_bind_blob(st, 2, subs[i].validator, 32, SQLITE_STATIC);
        nawal_store_bind_u64(st, 3, pay[i]);
        if (sqlite3_step(st) != SQLITE_DONE) {
            rc = nawal_store_sql_fail(s, err, errlen, "write rewards");
            goto out;
        }
    }
    e.undistributed_planck = r.pool_planck - paid;
    uint64_t seq;
    if ((rc = nawal_ledger_append_tx(s, &e, &seq, err, errlen))) goto out;

    sqlite3_finalize(st);
    if ((rc = nawal_store_prepare(s, &st, "UPDATE rounds SET state = 'closed', model_cid = ?2, closed_ms = ?3 WHERE id = ?1",
                                  err, errlen)))
        goto out;
    sqlite3_bind_int64(st, 1, round_id);
    sqlite3_bind_blob(st, 2, model_cid, 32, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, closed_ms);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = nawal_store_sql_fail(s, err, errlen, "close round");
        goto out;
    }
    res->ledger_seq = seq;
    res->n_paid = n;
    res->paid_planck = paid;
    res->undistributed_planck = e.undistributed_planck;
out:
    sqlite3_finalize(st);
    free(subs);
    free(in);
    free(pay);
    nawal_ledger_entry_free(&e);
    return rc;
}

static int model_present(nawal_store *s, int64_t round_id, const uint8_t model_cid[32], char *err, size_t errlen) {
    if (!nawal_blobstore_has(s, model_cid)) {
        char hex[NAWAL_CID_HEX_BYTES];
        nawal_cid_to_hex(hex, model_cid);
        nawal_fail(err, errlen, "round %lld: model blob %s is not in the blob store", (long long)round_id, hex);
        return NAWAL_STORE_REFUSED;
    }
    return 0;
}

int nawal_round_settle_tx(nawal_store *s, int64_t round_id, const uint8_t model_cid[32], int64_t closed_ms,
                          nawal_settlement *out, char *err, size_t errlen) {
    if (!nawal_store_in_tx(s)) return nawal_fail(err, errlen, "round %lld: settle needs an open transaction", (long long)round_id);
    int rc = model_present(s, round_id, model_cid, err, errlen);
    if (rc) return rc;
    nawal_settlement res = {0};
    rc = settle_tx(s, round_id, model_cid, closed_ms, &res, err, errlen);
    if (rc == 0 && out) *out = res;
    return rc;
}

int nawal_round_settle(nawal_store *s, int64_t round_id, const uint8_t model_cid[32], int64_t closed_ms,
                       nawal_settlement *out, char *err, size_t errlen) {
    int rc0 = model_present(s, round_id, model_cid, err, errlen);
    if (rc0) return rc0;
    nawal_settlement res = {0};
    if (nawal_store_begin(s, err, errlen)) return -1;
    int rc = settle_tx(s, round_id, model_cid, closed_ms, &res, err, errlen);
    if (rc) {
        nawal_store_rollback(s);
        return rc;
    }
    if (nawal_store_commit(s, err, errlen)) return -1;
    if (out) *out = res;
    return 0;
}
