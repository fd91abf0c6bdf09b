/* ledger.c - signed, hash-chained ledger records (see ledger.h). */
#include "ledger.h"
#include "store_internal.h"
#include "cid.h"
#include "error.h"
#include "identity.h"
#include "rewards.h"

#include <sodium.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static const char SIGN_DOMAIN[] = "nawal ledger record v1"; /* the NUL is part of the prefix */
static const char HASH_DOMAIN[] = "nawal ledger hash v1";

#define BODY_FIXED (4 + 8 + 8 + 32 + 8 + 8)
#define UPDATE_BYTES 64
#define PAYOUT_BYTES 40

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

void nawal_ledger_entry_free(nawal_ledger_entry *e) {
    free(e->updates);
    free(e->payouts);
    e->updates = NULL;
    e->payouts = NULL;
    e->n_updates = e->n_payouts = 0;
}

void nawal_ledger_record_free(nawal_ledger_record *r) { nawal_ledger_entry_free(&r->entry); }

/* Keys strictly ascending; payouts + undistributed == pool. */
static int check_entry(const nawal_ledger_entry *e, char *err, size_t errlen) {
    if (e->n_updates > UINT32_MAX || e->n_payouts > UINT32_MAX) return nawal_fail(err, errlen, "ledger entry: too many items");
    for (size_t i = 1; i < e->n_updates; i++)
        if (memcmp(e->updates[i - 1].validator, e->updates[i].validator, 32) >= 0)
            return nawal_fail(err, errlen, "ledger entry: updates not in strictly ascending validator order at %zu", i);
    uint64_t sum = e->undistributed_planck;
    for (size_t i = 0; i < e->n_payouts; i++) {
        if (i && memcmp(e->payouts[i - 1].validator, e->payouts[i].validator, 32) >= 0)
            return nawal_fail(err, errlen, "ledger entry: payouts not in strictly ascending validator order at %zu", i);
        if (e->payouts[i].amount_planck > UINT64_MAX - sum) return nawal_fail(err, errlen, "ledger entry: payouts overflow");
        sum += e->payouts[i].amount_planck;
    }
    if (sum != e->pool_planck)
        return nawal_fail(err, errlen, "ledger entry: payouts + undistributed = %llu planck, pool is %llu",
                          (unsigned long long)sum, (unsigned long long)e->pool_planck);
    return 0;
}

int nawal_ledger_encode_body(const nawal_ledger_entry *e, uint8_t **out, size_t *len, char *err, size_t errlen) {
    *out = NULL;
    *len = 0;
    if (check_entry(e, err, errlen)) return -1;
    size_t n = BODY_FIXED + 4 + e->n_updates * UPDATE_BYTES + 4 + e->n_payouts * PAYOUT_BYTES;
    uint8_t *b = malloc(n), *p = b;
    if (!b) return nawal_fail(err, errlen, "out of memory");
    put_u32(p, NAWAL_LEDGER_BODY_VERSION); p += 4;
    put_u64(p, (uint64_t)e->round_id); p += 8;
    put_u64(p, (uint64_t)e->closed_ms); p += 8;
    memcpy(p, e->model_cid, 32); p += 32;
    put_u64(p, e->pool_planck); p += 8;
    put_u64(p, e->undistributed_planck); p += 8;
    put_u32(p, (uint32_t)e->n_updates); p += 4;
    for (size_t i = 0; i < e->n_updates; i++) {
        memcpy(p, e->updates[i].validator, 32);
        memcpy(p + 32, e->updates[i].delta_cid, 32);
        p += UPDATE_BYTES;
    }
    put_u32(p, (uint32_t)e->n_payouts); p += 4;
    for (size_t i = 0; i < e->n_payouts; i++) {
        memcpy(p, e->payouts[i].validator, 32);
        put_u64(p + 32, e->payouts[i].amount_planck);
        p += PAYOUT_BYTES;
    }
    *out = b;
    *len = n;
    return 0;
}

int nawal_ledger_decode_body(const uint8_t *buf, size_t len, nawal_ledger_entry *e, char *err, size_t errlen) {
    memset(e, 0, sizeof *e);
    const uint8_t *p = buf, *end = buf + len;
    if (len < BODY_FIXED + 4) return nawal_fail(err, errlen, "body is %zu bytes, shorter than the fixed part", len);
    uint32_t ver = get_u32(p); p += 4;
    if (ver != NAWAL_LEDGER_BODY_VERSION) return nawal_fail(err, errlen, "body version %u, want %d", ver, NAWAL_LEDGER_BODY_VERSION);
    e->round_id = (int64_t)get_u64(p); p += 8;
    e->closed_ms = (int64_t)get_u64(p); p += 8;
    memcpy(e->model_cid, p, 32); p += 32;
    e->pool_planck = get_u64(p); p += 8;
    e->undistributed_planck = get_u64(p); p += 8;
    uint32_t nu = get_u32(p); p += 4;
    if ((size_t)(end - p) < (size_t)nu * UPDATE_BYTES + 4)
        return nawal_fail(err, errlen, "body claims %u updates, too few bytes for them", nu);
    if (nu && !(e->updates = calloc(nu, sizeof *e->updates))) return nawal_fail(err, errlen, "out of memory");
    e->n_updates = nu;
    for (uint32_t i = 0; i < nu; i++, p += UPDATE_BYTES) {
        memcpy(e->updates[i].validator, p, 32);
        memcpy(e->updates[i].delta_cid, p + 32, 32);
    }
    uint32_t np = get_u32(p); p += 4;
    if ((size_t)(end - p) != (size_t)np * PAYOUT_BYTES) {
        nawal_ledger_entry_free(e);
        return nawal_fail(err, errlen, "body claims %u payouts in %zu bytes (want exactly %zu)", np, (size_t)(end - p),
                          (size_t)np * PAYOUT_BYTES);
    }
    if (np && !(e->payouts = calloc(np, sizeof *e->payouts))) {
        nawal_ledger_entry_free(e);
        return nawal_fail(err, errlen, "out of memory");
    }
    e->n_payouts = np;
    for (uint32_t i = 0; i < np; i++, p += PAYOUT_BYTES) {
        memcpy(e->payouts[i].validator, p, 32);
        e->payouts[i].amount_planck = get_u64(p + 32);
    }
    if (check_entry(e, err, errlen)) {
        nawal_ledger_entry_free(e);
        return -1;
    }
    return 0;
}

/* The signed message: domain || seq || prev_hash || len(body) || body. */
static uint8_t *signed_message(uint64_t seq, const uint8_t prev[32], const uint8_t *body, size_t body_len, size_t *n) {
    *n = sizeof SIGN_DOMAIN + 8 + 32 + 8 + body_len;
    uint8_t *m = malloc(*n), *p = m;
    if (!m) return NULL;
    memcpy(p, SIGN_DOMAIN, sizeof SIGN_DOMAIN); p += sizeof SIGN_DOMAIN;
    put_u64(p, seq); p += 8;
    memcpy(p, prev, 32); p += 32;
    put_u64(p, body_len); p += 8;
    if (body_len) memcpy(p, body, body_len);
    return m;
}

/* 0 if sig is a valid signature by pk over the record; -1 if not (or OOM, err says). */
static int check_signature(const uint8_t pk[32], uint64_t seq, const uint8_t prev[32], const uint8_t *body,
                           size_t body_len, const uint8_t sig[64], char *err, size_t errlen) {
    size_t n;
    uint8_t *m = signed_message(seq, prev, body, body_len, &n);
    if (!m) return nawal_fail(err, errlen, "out of memory");
    int ok = crypto_sign_verify_detached(sig, m, n, pk) == 0;
    free(m);
    return ok ? 0 : nawal_fail(err, errlen, "signature does not verify under the coordinator key");
}

void nawal_ledger_record_hash(uint8_t out[32], uint64_t seq, const uint8_t prev[32], const uint8_t *body,
                              size_t body_len, const uint8_t sig[64]) {
    uint8_t hdr[8 + 32 + 8];
    put_u64(hdr, seq);
    memcpy(hdr + 8, prev, 32);
    put_u64(hdr + 40, body_len);
    nawal_cid_state st;
    nawal_cid_init(&st);
    nawal_cid_update(&st, HASH_DOMAIN, sizeof HASH_DOMAIN);
    nawal_cid_update(&st, hdr, sizeof hdr);
    nawal_cid_update(&st, body, body_len);
    nawal_cid_update(&st, sig, 64);
    nawal_cid_final(&st, out);
}

/* ---- raw rows ------------------------------------------------------------ */

typedef struct {
    uint64_t seq;
    int64_t round_id;
    const uint8_t *prev;
    size_t prev_len;
    const uint8_t *body;
    size_t body_len;
    const uint8_t *sig;
    size_t sig_len;
} raw_row;

#define ROW_COLUMNS "seq, round_id, prev_hash, body, signature"

static void read_row(sqlite3_stmt *st, raw_row *r) {
    r->seq = (uint64_t)sqlite3_column_int64(st, 0);
    r->round_id = sqlite3_column_int64(st, 1);
    r->prev = sqlite3_column_blob(st, 2);
    r->prev_len = (size_t)sqlite3_column_bytes(st, 2);
    r->body = sqlite3_column_blob(st, 3);
    r->body_len = (size_t)sqlite3_column_bytes(st, 3);
    r->sig = sqlite3_column_blob(st, 4);
    r->sig_len = (size_t)sqlite3_column_bytes(st, 4);
}

static int row_sizes_ok(const raw_row *r) { return r->prev && r->prev_len == 32 && r->sig && r->sig_len == 64 && r->body; }

int nawal_ledger_find_round(nawal_store *s, int64_t round_id, uint64_t *seq_out, char *err, size_t errlen) {
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st, "SELECT seq FROM ledger WHERE round_id = ?1", err, errlen)) return -1;
    sqlite3_bind_int64(st, 1, round_id);
    int rc, step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        if (seq_out) *seq_out = (uint64_t)sqlite3_column_int64(st, 0);
        rc = 0;
    } else if (step == SQLITE_DONE) {
        nawal_fail(err, errlen, "round %lld has no ledger record", (long long)round_id);
        rc = NAWAL_STORE_REFUSED;
    } else rc = nawal_store_sql_fail(s, err, errlen, "read ledger");
    sqlite3_finalize(st);
    return rc;
}

int nawal_ledger_append_tx(nawal_store *s, const nawal_ledger_entry *e, uint64_t *seq_out, char *err, size_t errlen) {
    if (!nawal_store_in_tx(s)) return nawal_fail(err, errlen, "ledger append outside a transaction");
    const nawal_identity *id = nawal_store_identity(s);
    if (!id) return nawal_fail(err, errlen, "ledger append: the store was opened without its secret key");
    uint64_t existing;
    int rc = nawal_ledger_find_round(s, e->round_id, &existing, err, errlen);
    if (rc == 0) {
        nawal_fail(err, errlen, "round %lld is already in the ledger (record %llu); refusing to record it twice",
                   (long long)e->round_id, (unsigned long long)existing);
        return NAWAL_STORE_REFUSED;
    }
    if (rc != NAWAL_STORE_REFUSED) return -1;

    /* the chain: hash of the current last record, after checking its signature */
    uint64_t seq = 1;
    uint8_t prev[32] = {0};
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st, "SELECT " ROW_COLUMNS " FROM ledger ORDER BY seq DESC LIMIT 1", err, errlen)) return -1;
    int step = sqlite3_step(st);
    rc = 0;
    if (step == SQLITE_ROW) {
        raw_row last;
        read_row(st, &last);
        if (!row_sizes_ok(&last) ||
            check_signature(id->pk, last.seq, last.prev, last.body, last.body_len, last.sig, NULL, 0))
            rc = nawal_fail(err, errlen, "ledger record %llu does not verify; refusing to chain onto it (run 'ledger verify')",
                            (unsigned long long)last.seq);
        else {
            nawal_ledger_record_hash(prev, last.seq, last.prev, last.body, last.body_len, last.sig);
            seq = last.seq + 1;
        }
    } else if (step != SQLITE_DONE) rc = nawal_store_sql_fail(s, err, errlen, "read ledger");
    sqlite3_finalize(st);
    if (rc) return rc;

    uint8_t *body = NULL, sig[64];
    size_t body_len, mlen;
    if (nawal_ledger_encode_body(e, &body, &body_len, err, errlen)) return -1;
    uint8_t *m = signed_message(seq, prev, body, body_len, &mlen);
    if (!m) {
        free(body);
        return nawal_fail(err, errlen, "out of memory");
    }
    crypto_sign_detached(sig, NULL, m, mlen, id->sk);
    free(m);
    if (nawal_store_prepare(s, &st, "INSERT INTO ledger(seq, round_id, prev_hash, body, signature) VALUES(?1, ?2, ?3, ?4, ?5)",
                            err, errlen)) {
        free(body);
        return -1;
    }
    sqlite3_bind_int64(st, 1, (int64_t)seq);
    sqlite3_bind_int64(st, 2, e->round_id);
    sqlite3_bind_blob(st, 3, prev, 32, SQLITE_STATIC);
    sqlite3_bind_blob(st, 4, body, (int)body_len, SQLITE_STATIC);
    sqlite3_bind_blob(st, 5, sig, 64, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) rc = nawal_store_sql_fail(s, err, errlen, "append ledger record");
    sqlite3_finalize(st);
    free(body);
    if (rc == 0 && seq_out) *seq_out = seq;
    return rc;
}

static int decode_row(const raw_row *r, nawal_ledger_record *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    out->seq = r->seq;
    if (!row_sizes_ok(r)) return nawal_fail(err, errlen, "record %llu: malformed row", (unsigned long long)r->seq);
    memcpy(out->prev_hash, r->prev, 32);
    memcpy(out->signature, r->sig, 64);
    nawal_ledger_record_hash(out->hash, r->seq, r->prev, r->body, r->body_len, r->sig);
    return nawal_ledger_decode_body(r->body, r->body_len, &out->entry, err, errlen);
}

int nawal_ledger_get(nawal_store *s, uint64_t seq, nawal_ledger_record *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st, "SELECT " ROW_COLUMNS " FROM ledger WHERE seq = ?1", err, errlen)) return -1;
    sqlite3_bind_int64(st, 1, (int64_t)seq);
    int rc, step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        raw_row r;
        read_row(st, &r);
        char e2[256];
        rc = decode_row(&r, out, e2, sizeof e2) ? nawal_fail(err, errlen, "ledger record %llu: %s", (unsigned long long)seq, e2) : 0;
    } else if (step == SQLITE_DONE) {
        nawal_fail(err, errlen, "no ledger record %llu", (unsigned long long)seq);
        rc = NAWAL_STORE_REFUSED;
    } else rc = nawal_store_sql_fail(s, err, errlen, "read ledger");
    sqlite3_finalize(st);
    return rc;
}

/* ---- verify -------------------------------------------------------------- */

static int broken(nawal_ledger_report *rep, uint64_t seq, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int broken(nawal_ledger_report *rep, uint64_t seq, const char *fmt, ...) {
    rep->bad_seq = seq;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rep->reason, sizeof rep->reason, fmt, ap);
    va_end(ap);
    return 1;
}

/* Writes a mismatch description and returns 1. */
static int differ(char *msg, size_t msglen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int differ(char *msg, size_t msglen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, msglen, fmt, ap);
    va_end(ap);
    return 1;
}

/* The rewards rows of the round must equal the record's payouts. 0 equal,
 * 1 different (why in msg), -1 error. */
static int rewards_match(nawal_store *s, const nawal_ledger_entry *e, char *msg, size_t msglen, char *err, size_t errlen) {
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st, "SELECT validator, amount_planck FROM rewards WHERE round_id = ?1 ORDER BY validator",
                            err, errlen))
        return -1;
    sqlite3_bind_int64(st, 1, e->round_id);
    long long rid = (long long)e->round_id;
    size_t i = 0;
    int rc = 0, step;
    char fp[NAWAL_FINGERPRINT_SHORT_BYTES];
    while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        uint8_t v[32];
        uint64_t amt;
        if (nawal_store_column_key(st, 0, v) || nawal_store_column_u64(st, 1, &amt, NULL, 0)) {
            rc = differ(msg, msglen, "a rewards row of round %lld is malformed", rid);
        } else if (i >= e->n_payouts) {
            nawal_fingerprint_short(fp, v);
            rc = differ(msg, msglen, "rewards table pays %s in round %lld, the record does not", fp, rid);
        } else if (memcmp(v, e->payouts[i].validator, 32) || amt != e->payouts[i].amount_planck) {
            nawal_fingerprint_short(fp, e->payouts[i].validator);
            rc = differ(msg, msglen, "rewards table disagrees with the record's payout to %s in round %lld", fp, rid);
        }
        i++;
    }
    if (rc == 0 && step != SQLITE_DONE) rc = nawal_store_sql_fail(s, err, errlen, "read rewards");
    if (rc == 0 && i != e->n_payouts)
        rc = differ(msg, msglen, "rewards table has %zu rows for round %lld, the record %zu payouts", i, rid, e->n_payouts);
    sqlite3_finalize(st);
    return rc;
}

/* The round row must be closed with the recorded model. Same returns. */
static int round_matches(nawal_store *s, const nawal_ledger_entry *e, char *msg, size_t msglen, char *err, size_t errlen) {
    nawal_round r;
    char e2[256];
    long long rid = (long long)e->round_id;
    int rc = nawal_store_round_get(s, e->round_id, &r, e2, sizeof e2);
    if (rc == NAWAL_STORE_REFUSED) return differ(msg, msglen, "records round %lld, which does not exist", rid);
    if (rc) return nawal_fail(err, errlen, "%s", e2);
    if (r.state != NAWAL_ROUND_CLOSED)
        return differ(msg, msglen, "round %lld is %s in the rounds table, not closed", rid, nawal_round_state_name(r.state));
    if (!r.has_model_cid || memcmp(r.model_cid, e->model_cid, 32))
        return differ(msg, msglen, "round %lld's model CID in the rounds table differs from the record", rid);
    return 0;
}

int nawal_ledger_verify(nawal_store *s, nawal_ledger_report *rep, char *err, size_t errlen) {
    memset(rep, 0, sizeof *rep);
    const uint8_t *pk = nawal_store_pubkey(s);
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st, "SELECT " ROW_COLUMNS " FROM ledger ORDER BY seq", err, errlen)) return -1;
    uint64_t expect = 1;
    uint8_t prev_hash[32] = {0};
    int rc = 0, step;
    char why[256];
    while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        raw_row r;
        read_row(st, &r);
        if (r.seq != expect) {
            rc = r.seq > expect ? broken(rep, expect, "record missing (the next stored record is %llu)", (unsigned long long)r.seq)
                                : broken(rep, r.seq, "out of sequence (expected %llu)", (unsigned long long)expect);
            break;
        }
        if (!row_sizes_ok(&r)) {
            rc = broken(rep, r.seq, "malformed row: prev_hash %zu bytes (want 32), signature %zu bytes (want 64)%s",
                        r.prev_len, r.sig_len, r.body ? "" : ", no body");
            break;
        }
        if (memcmp(r.prev, prev_hash, 32)) {
            rc = broken(rep, r.seq, "prev_hash does not match the hash of record %llu", (unsigned long long)(r.seq - 1));
            break;
        }
        if (check_signature(pk, r.seq, r.prev, r.body, r.body_len, r.sig, why, sizeof why)) {
            rc = broken(rep, r.seq, "%s", why);
            break;
        }
        nawal_ledger_entry e;
        if (nawal_ledger_decode_body(r.body, r.body_len, &e, why, sizeof why)) {
            rc = broken(rep, r.seq, "signed body does not decode: %s", why);
            break;
        }
        int m = 0;
        if (e.round_id != r.round_id)
            m = broken(rep, r.seq, "round_id column says %lld, the signed body %lld", (long long)r.round_id, (long long)e.round_id);
        if (!m) {
            m = rewards_match(s, &e, why, sizeof why, err, errlen);
            if (m == 0) m = round_matches(s, &e, why, sizeof why, err, errlen);
            if (m == 1) broken(rep, r.seq, "%s", why);
        }
        nawal_ledger_entry_free(&e);
        if (m) {
            rc = m;
            break;
        }
        nawal_ledger_record_hash(prev_hash, r.seq, r.prev, r.body, r.body_len, r.sig);
        rep->records++;
        expect++;
    }
    if (rc == 0 && step != SQLITE_DONE) rc = nawal_store_sql_fail(s, err, errlen, "read ledger");
    sqlite3_finalize(st);
    if (rc) return rc;

    /* rounds closed or paid without a record: a truncated ledger */
    if (nawal_store_prepare(s, &st,
                            "SELECT id FROM rounds WHERE (state = 'closed' OR id IN (SELECT round_id FROM rewards))"
                            " AND id NOT IN (SELECT round_id FROM ledger) ORDER BY id LIMIT 1",
                            err, errlen))
        return -1;
    step = sqlite3_step(st);
    if (step == SQLITE_ROW)
        rc = broken(rep, expect, "record missing: round %lld is closed or paid but not in the ledger (truncated?)",
                    (long long)sqlite3_column_int64(st, 0));
    else if (step != SQLITE_DONE) rc = nawal_store_sql_fail(s, err, errlen, "read rounds");
    sqlite3_finalize(st);
    return rc;
}

/* ---- show ------------------------------------------------------------------ */

int nawal_ledger_show(nawal_store *s, FILE *out, char *err, size_t errlen) {
    const uint8_t *pk = nawal_store_pubkey(s);
    char pkhex[NAWAL_FINGERPRINT_HEX_BYTES];
    nawal_fingerprint(pkhex, pk);
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st, "SELECT " ROW_COLUMNS " FROM ledger ORDER BY seq", err, errlen)) return -1;
    fprintf(out, "ledger of coordinator %s\n", pkhex);
    uint8_t prev_hash[32] = {0};
    uint64_t n = 0;
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        raw_row r;
        read_row(st, &r);
        nawal_ledger_record rec;
        char why[256];
        n++;
        if (decode_row(&r, &rec, why, sizeof why)) {
            fprintf(out, "\nrecord %llu: unreadable: %s\n", (unsigned long long)r.seq, why);
            nawal_ledger_record_free(&rec);
            memset(prev_hash, 0xff, 32); /* the next record cannot chain onto it */
            continue;
        }
        const nawal_ledger_entry *e = &rec.entry;
        int sig_ok = !check_signature(pk, r.seq, r.prev, r.body, r.body_len, r.sig, NULL, 0);
        int chain_ok = !memcmp(rec.prev_hash, prev_hash, 32);
        char t[32], hex[NAWAL_CID_HEX_BYTES], d[NAWAL_DALLA_STR_BYTES], fp[NAWAL_FINGERPRINT_HEX_BYTES];
        fprintf(out, "\nrecord %llu  round %lld  closed %s  signature %s  chain %s\n", (unsigned long long)rec.seq,
                (long long)e->round_id, nawal_format_ms(t, e->closed_ms), sig_ok ? "ok" : "BAD", chain_ok ? "ok" : "BROKEN");
        nawal_cid_to_hex(hex, rec.prev_hash);
        fprintf(out, "  prev hash     %s\n", hex);
        nawal_cid_to_hex(hex, rec.hash);
        fprintf(out, "  record hash   %s\n", hex);
        nawal_cid_to_hex(hex, e->model_cid);
        fprintf(out, "  model         %s\n", hex);
        fprintf(out, "  pool          %s DALLA (%llu planck)\n", nawal_planck_to_dalla(d, e->pool_planck),
                (unsigned long long)e->pool_planck);
        if (e->undistributed_planck)
            fprintf(out, "  undistributed %s DALLA (%llu planck)\n", nawal_planck_to_dalla(d, e->undistributed_planck),
                    (unsigned long long)e->undistributed_planck);
        fprintf(out, "  updates (%zu):\n", e->n_updates);
        for (size_t i = 0; i < e->n_updates; i++) {
            nawal_fingerprint(fp, e->updates[i].validator);
            nawal_cid_to_hex(hex, e->updates[i].delta_cid);
            fprintf(out, "    %s  delta %s\n", fp, hex);
        }
        fprintf(out, "  payouts (%zu):\n", e->n_payouts);
        for (size_t i = 0; i < e->n_payouts; i++) {
            nawal_fingerprint(fp, e->payouts[i].validator);
            fprintf(out, "    %s  %s DALLA (%llu planck)\n", fp, nawal_planck_to_dalla(d, e->payouts[i].amount_planck),
                    (unsigned long long)e->payouts[i].amount_planck);
        }
        memcpy(prev_hash, rec.hash, 32);
        nawal_ledger_record_free(&rec);
    }
    int rc = step == SQLITE_DONE ? 0 : nawal_store_sql_fail(s, err, errlen, "read ledger");
    sqlite3_finalize(st);
    if (rc == 0) fprintf(out, "\n%llu record%s\n", (unsigned long long)n, n == 1 ? "" : "s");
    return rc;
}
