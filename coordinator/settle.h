/* settle.h - closing a round: rewards and its ledger record in one
 * transaction. The accepted updates (submissions the aggregation did not
 * reject) of the round are scored and paid (rewards.h) from the round's pool, the rewards rows written, the
 * ledger record appended (ledger.h) and the round marked closed with its new
 * model CID, all in a single BEGIN IMMEDIATE … COMMIT: after a crash either
 * all of it is there or none of it, and a round is never paid twice (a
 * second settle of the same round is refused). */
#ifndef NAWAL_SETTLE_H
#define NAWAL_SETTLE_H

#include "store.h"

typedef struct {
    uint64_t ledger_seq;
    size_t n_paid;                 /* accepted updates paid (amount may be 0) */
    uint64_t paid_planck;          /* sum of payouts */
    uint64_t undistributed_planck; /* pool - paid: nonzero only when every score is 0 */
} nawal_settlement;

/* Closes round_id with the new global model model_cid (which must be in
 * the blob store) at closed_ms. Refused (NAWAL_STORE_REFUSED, reason in
 * err): unknown round, round already closed or failed, model blob missing.
 * out may be NULL. */
int nawal_round_settle(nawal_store *s, int64_t round_id, const uint8_t model_cid[32], int64_t closed_ms,
                       nawal_settlement *out, char *err, size_t errlen);
/* The same inside the caller's open transaction (nawal_store_begin), for
 * closing a round together with other changes: the round machine records
 * its aggregate and announces the next round in the same commit. On an
 * error the caller rolls back. */
int nawal_round_settle_tx(nawal_store *s, int64_t round_id, const uint8_t model_cid[32], int64_t closed_ms,
                          nawal_settlement *out, char *err, size_t errlen);

#endif
