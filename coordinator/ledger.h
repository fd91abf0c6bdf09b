/* ledger.h - the coordinator's append-only, signed record of closed rounds
 * (the ledger table of state.db). One record per closed round: round id,
 * close time, new model CID, the accepted updates (validator, delta CID),
 * the pool and its payouts (validator, planck) and whatever part of the pool
 * was left undistributed (rewards.h: only when every score is 0).
 *
 * Record seq (1, 2, …) is stored as
 *   prev_hash  BLAKE2b-256 record hash of record seq-1 (32 zero bytes for seq 1)
 *   body       the entry, encoded as below
 *   signature  Ed25519 (coordinator key) over
 *                "nawal ledger record v1\0" || u64 seq || prev_hash || u64 len(body) || body
 * and its record hash, which the next record holds, is
 *   BLAKE2b-256("nawal ledger hash v1\0" || u64 seq || prev_hash || u64 len(body) || body || signature).
 *
 * Body (all integers little-endian, validator keys strictly ascending in
 * both lists, nothing after the end):
 *   u32 version = 1, i64 round_id, i64 closed_ms, model_cid[32],
 *   u64 pool_planck, u64 undistributed_planck,
 *   u32 n_updates,  n_updates  x (validator[32], delta_cid[32]),
 *   u32 n_payouts,  n_payouts  x (validator[32], u64 amount_planck)
 * with sum(amounts) + undistributed == pool.
 *
 * The ledger row also carries round_id in a UNIQUE column, so a round can
 * be recorded once only; nawal_ledger_append_tx refuses a second record for
 * the same round with a clear message. */
#ifndef NAWAL_LEDGER_H
#define NAWAL_LEDGER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "store.h"

#define NAWAL_LEDGER_BODY_VERSION 1

typedef struct {
    uint8_t validator[32];
    uint8_t delta_cid[32];
} nawal_ledger_update;

typedef struct {
    uint8_t validator[32];
    uint64_t amount_planck;
} nawal_ledger_payout;

typedef struct {
    int64_t round_id;
    int64_t closed_ms;
    uint8_t model_cid[32];
    uint64_t pool_planck;
    uint64_t undistributed_planck;
    size_t n_updates;
    nawal_ledger_update *updates;
    size_t n_payouts;
    nawal_ledger_payout *payouts;
} nawal_ledger_entry;

typedef struct {
    uint64_t seq;
    uint8_t prev_hash[32];
    uint8_t hash[32];       /* this record's hash (computed on read) */
    uint8_t signature[64];
    nawal_ledger_entry entry;
} nawal_ledger_record;

/* Body encoding; *out is malloc'ed. Refuses unsorted or duplicate
 * validator keys and payouts that do not add up to the pool. */
int nawal_ledger_encode_body(const nawal_ledger_entry *e, uint8_t **out, size_t *len, char *err, size_t errlen);
/* Strict decode (see above); arrays are malloc'ed after their size is
 * checked against the bytes present. Free with nawal_ledger_entry_free. */
int nawal_ledger_decode_body(const uint8_t *buf, size_t len, nawal_ledger_entry *e, char *err, size_t errlen);
void nawal_ledger_entry_free(nawal_ledger_entry *e);

/* Record hash as defined above. */
void nawal_ledger_record_hash(uint8_t out[32], uint64_t seq, const uint8_t prev_hash[32], const uint8_t *body,
                              size_t body_len, const uint8_t signature[64]);

/* Appends the record of e inside the caller's open transaction (see
 * nawal_store_begin; -1 without one), signed with the store's key.
 * NAWAL_STORE_REFUSED if e->round_id already has a record. Also refuses
 * (-1) to chain onto a last record whose signature does not verify.
 * *seq_out (may be NULL) gets the new record's seq. */
int nawal_ledger_append_tx(nawal_store *s, const nawal_ledger_entry *e, uint64_t *seq_out, char *err, size_t errlen);

/* Reads record seq (decoded; hash computed; nothing verified).
 * NAWAL_STORE_REFUSED if there is none. Free with nawal_ledger_record_free. */
int nawal_ledger_get(nawal_store *s, uint64_t seq, nawal_ledger_record *out, char *err, size_t errlen);
void nawal_ledger_record_free(nawal_ledger_record *r);
/* Record of a round; NAWAL_STORE_REFUSED if it has none. */
int nawal_ledger_find_round(nawal_store *s, int64_t round_id, uint64_t *seq_out, char *err, size_t errlen);

typedef struct {
    uint64_t records;   /* records checked and found good */
    uint64_t bad_seq;   /* first broken record (0 when all good) */
    char reason[384];
} nawal_ledger_report;

/* Checks every record in seq order, stopping at the first broken one:
 * seq contiguous from 1 (a gap: the missing seq is named), field sizes,
 * prev_hash = hash of the previous record, signature under the store's
 * public key, body decodes, the round_id column matches the body, payouts
 * + undistributed = pool, the rewards rows of the round equal the payouts,
 * the round is closed with the recorded model CID. Then: every closed
 * round and every round with rewards has a record (a truncated ledger is
 * named by the seq its missing record would have had).
 * Returns 0 if all good, 1 if broken (rep says where and why), -1 if the
 * database cannot be read (err). */
int nawal_ledger_verify(nawal_store *s, nawal_ledger_report *rep, char *err, size_t errlen);

/* Prints every record readably (amounts in planck and in DALLA with 12
 * decimals, times in UTC, each record's signature/chain status). */
int nawal_ledger_show(nawal_store *s, FILE *out, char *err, size_t errlen);

#endif
