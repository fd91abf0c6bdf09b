/* test_coord_ledger.c - the signed, hash-chained ledger
 * (coordinator/ledger.h): records appended by settling rounds verify; every
 * single-byte change of any stored record's prev_hash, body or signature is
 * caught and names that record; so are a changed round_id column, truncated
 * bodies, a deleted record (middle or last), swapped records, rewards rows
 * that disagree with the ledger, and a different coordinator key. A round is
 * recorded once only; body encoding round-trips and its decoder is strict. */
#include "coord_test_util.h"
#include "cid.h"

#include <sodium.h>
#include <sys/wait.h>

static char root[256], dir[300];

static void setup(void) {
    coord_make_root(root, sizeof root, "coord_ledger");
    snprintf(dir, sizeof dir, "%s/coord", root);
}
static void teardown(void) { coord_rm_rf(root); }

TestSuite(coord_ledger, .init = setup, .fini = teardown);

#define NREC 5

/* A store with NREC settled rounds of 0..3 validators each. */
static nawal_store *make_ledger(uint64_t *seed) {
    nawal_store *s = coord_init_open(dir);
    uint8_t pks[4][32];
    for (int i = 0; i < 4; i++) {
        coord_rand_bytes(seed, pks[i], 32);
        coord_add_validator(s, pks[i], test_rand_u64(seed) % (20000 * NAWAL_PLANCK_PER_DALLA));
    }
    for (int r = 0; r < NREC; r++) {
        size_t n = r == 0 ? 0 : 1 + (size_t)test_rand_int(seed, 3); /* round 1: nobody, all undistributed */
        coord_run_round(s, seed, (const uint8_t(*)[32])pks + test_rand_int(seed, 4 - (int)n + 1), n,
                        r == 1 ? UINT64_MAX : test_rand_u64(seed) >> test_rand_int(seed, 40));
    }
    /* tampering below goes faster without fsyncs, and may break foreign
     * keys on the way (as an attacker with the file could); verification
     * does not depend on either */
    cr_assert_eq(sqlite3_exec(nawal_store_db(s), "PRAGMA synchronous=OFF; PRAGMA foreign_keys=OFF", NULL, NULL, NULL), SQLITE_OK);
    return s;
}

static void expect_ok(nawal_store *s, uint64_t records) {
    nawal_ledger_report rep;
    char err[512] = "";
    int rc = nawal_ledger_verify(s, &rep, err, sizeof err);
    cr_assert_eq(rc, 0, "verify: rc %d, record %llu: %s %s", rc, (unsigned long long)rep.bad_seq, rep.reason, err);
    cr_assert_eq(rep.records, records);
}

static void expect_broken(nawal_store *s, uint64_t seq, const char *what, const char *context) {
    nawal_ledger_report rep;
    char err[512] = "";
    int rc = nawal_ledger_verify(s, &rep, err, sizeof err);
    cr_assert_eq(rc, 1, "%s: verify returned %d (%s)", context, rc, err);
    cr_assert_eq(rep.bad_seq, seq, "%s: names record %llu (%s), want %llu", context, (unsigned long long)rep.bad_seq,
                 rep.reason, (unsigned long long)seq);
    if (what) cr_assert(strstr(rep.reason, what), "%s: reason '%s' lacks '%s'", context, rep.reason, what);
}

static void exec_sql(nawal_store *s, const char *sql) {
    char *msg = NULL;
    cr_assert_eq(sqlite3_exec(nawal_store_db(s), sql, NULL, NULL, &msg), SQLITE_OK, "%s: %s", sql, msg ? msg : "");
}

/* Reads column col ("prev_hash", "body", "signature") of record seq. */
static size_t get_blob(nawal_store *s, uint64_t seq, const char *col, uint8_t *buf, size_t cap) {
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT %s FROM ledger WHERE seq = ?1", col);
    sqlite3_stmt *st;
    cr_assert_eq(sqlite3_prepare_v2(nawal_store_db(s), sql, -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_int64(st, 1, (int64_t)seq);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    size_t n = (size_t)sqlite3_column_bytes(st, 0);
    cr_assert(n <= cap);
    memcpy(buf, sqlite3_column_blob(st, 0), n);
    sqlite3_finalize(st);
    return n;
}

static void set_blob(nawal_store *s, uint64_t seq, const char *col, const uint8_t *buf, size_t n) {
    char sql[128];
    snprintf(sql, sizeof sql, "UPDATE ledger SET %s = ?2 WHERE seq = ?1", col);
    sqlite3_stmt *st;
    cr_assert_eq(sqlite3_prepare_v2(nawal_store_db(s), sql, -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_int64(st, 1, (int64_t)seq);
    sqlite3_bind_blob(st, 2, buf, (int)n, SQLITE_TRANSIENT);
    cr_assert_eq(sqlite3_step(st), SQLITE_DONE);
    cr_assert_eq(sqlite3_changes(nawal_store_db(s)), 1);
    sqlite3_finalize(st);
}

Test(coord_ledger, appended_records_verify_and_read_back) {
    uint64_t seed = test_seed("coord_ledger.append");
    nawal_store *s = make_ledger(&seed);
    expect_ok(s, NREC);
    char err[512] = "";
    uint8_t prev[32] = {0};
    for (uint64_t q = 1; q <= NREC; q++) {
        nawal_ledger_record rec;
        cr_assert_eq(nawal_ledger_get(s, q, &rec, err, sizeof err), 0, "%s", err);
        cr_assert_eq(rec.seq, q);
        cr_assert(!memcmp(rec.prev_hash, prev, 32), "record %llu does not chain", (unsigned long long)q);
        memcpy(prev, rec.hash, 32);
        uint64_t sum = rec.entry.undistributed_planck;
        for (size_t i = 0; i < rec.entry.n_payouts; i++) sum += rec.entry.payouts[i].amount_planck;
        cr_assert_eq(sum, rec.entry.pool_planck);
        cr_assert_eq(rec.entry.n_updates, rec.entry.n_payouts);
        if (q == 1) cr_assert_eq(rec.entry.undistributed_planck, rec.entry.pool_planck, "round without updates");
        uint64_t found;
        cr_assert_eq(nawal_ledger_find_round(s, rec.entry.round_id, &found, err, sizeof err), 0);
        cr_assert_eq(found, q);
        nawal_ledger_record_free(&rec);
    }
    nawal_ledger_record rec;
    cr_assert_eq(nawal_ledger_get(s, NREC + 1, &rec, err, sizeof err), NAWAL_STORE_REFUSED);

    /* show prints every record, amounts in DALLA */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert(f);
    cr_assert_eq(nawal_ledger_show(s, f, err, sizeof err), 0, "%s", err);
    fclose(f);
    cr_assert(strstr(text, "record 5"), "%s", text);
    cr_assert(strstr(text, "18446744.073709551615 DALLA"), "the u64-max pool of round 2 in DALLA:\n%s", text);
    cr_assert(!strstr(text, "BAD") && !strstr(text, "BROKEN"), "%s", text);
    cr_assert(strstr(text, "5 records"));
    free(text);

    /* and everything survives a reopen from disk */
    nawal_store_close(s);
    s = coord_open(dir);
    expect_ok(s, NREC);
    nawal_store_close(s);
}

Test(coord_ledger, round_recorded_once) {
    uint64_t seed = test_seed("coord_ledger.once");
    nawal_store *s = make_ledger(&seed);
    char err[512] = "";
    nawal_ledger_record rec;
    cr_assert_eq(nawal_ledger_get(s, 3, &rec, err, sizeof err), 0);
    /* a direct second append of the same round, inside a transaction */
    cr_assert_eq(nawal_store_begin(s, err, sizeof err), 0);
    cr_assert_eq(nawal_ledger_append_tx(s, &rec.entry, NULL, err, sizeof err), NAWAL_STORE_REFUSED);
    cr_assert(strstr(err, "already in the ledger"), "%s", err);
    nawal_store_rollback(s);
    /* and outside one */
    cr_assert_eq(nawal_ledger_append_tx(s, &rec.entry, NULL, err, sizeof err), -1);
    /* settling the round again */
    cr_assert_eq(nawal_round_settle(s, rec.entry.round_id, rec.entry.model_cid, 5, NULL, err, sizeof err), NAWAL_STORE_REFUSED);
    nawal_ledger_record_free(&rec);
    expect_ok(s, NREC);
    nawal_store_close(s);

    /* a public-only store cannot sign */
    nawal_store *p;
    cr_assert_eq(nawal_store_open(&p, dir, NAWAL_STORE_OPEN_PUBLIC_ONLY, err, sizeof err), 0);
    nawal_ledger_entry e = {.round_id = 999};
    cr_assert_eq(nawal_store_begin(p, err, sizeof err), 0);
    cr_assert_eq(nawal_ledger_append_tx(p, &e, NULL, err, sizeof err), -1);
    cr_assert(strstr(err, "secret key"), "%s", err);
    nawal_store_rollback(p);
    nawal_store_close(p);
}

/* Every byte of every record's prev_hash, body and signature, flipped one at
 * a time (by a random nonzero mask), is caught at that record. */
Test(coord_ledger, any_flipped_byte_names_its_record) {
    uint64_t seed = test_seed("coord_ledger.flip");
    nawal_store *s = make_ledger(&seed);
    static const char *const cols[] = {"prev_hash", "body", "signature"};
    uint8_t orig[8192], buf[8192];
    size_t flips = 0;
    for (uint64_t q = 1; q <= NREC; q++) {
        for (int c = 0; c < 3; c++) {
            size_t n = get_blob(s, q, cols[c], orig, sizeof orig);
            for (size_t i = 0; i < n; i++) {
                memcpy(buf, orig, n);
                buf[i] ^= (uint8_t)(1 + test_rand_int(&seed, 255));
                set_blob(s, q, cols[c], buf, n);
                char ctx[96];
                snprintf(ctx, sizeof ctx, "record %llu %s byte %zu", (unsigned long long)q, cols[c], i);
                expect_broken(s, q, NULL, ctx);
                flips++;
            }
            set_blob(s, q, cols[c], orig, n);
        }
        expect_ok(s, NREC);
    }
    cr_assert(flips > 1000, "only %zu flips", flips);
    nawal_store_close(s);
}

Test(coord_ledger, truncation_reordering_and_other_tables) {
    uint64_t seed = test_seed("coord_ledger.truncate");
    nawal_store *s = make_ledger(&seed);
    uint8_t orig[8192], other[8192];

    /* a body cut short by one byte, or by half */
    for (uint64_t q = 1; q <= NREC; q++) {
        size_t n = get_blob(s, q, "body", orig, sizeof orig);
        set_blob(s, q, "body", orig, n - 1);
        expect_broken(s, q, "signature", "body short by one byte");
        set_blob(s, q, "body", orig, n / 2);
        expect_broken(s, q, NULL, "body cut in half");
        /* signature and prev_hash of the wrong size */
        set_blob(s, q, "body", orig, n);
        size_t m = get_blob(s, q, "signature", other, sizeof other);
        set_blob(s, q, "signature", other, m - 1);
        expect_broken(s, q, "malformed", "short signature");
        set_blob(s, q, "signature", other, m);
        m = get_blob(s, q, "prev_hash", other, sizeof other);
        set_blob(s, q, "prev_hash", other, m - 1);
        expect_broken(s, q, "malformed", "short prev_hash");
        set_blob(s, q, "prev_hash", other, m);
    }
    expect_ok(s, NREC);

    /* the round_id column disagreeing with the signed body */
    exec_sql(s, "UPDATE ledger SET round_id = 1000 WHERE seq = 3");
    expect_broken(s, 3, "round_id", "round_id column");
    exec_sql(s, "UPDATE ledger SET round_id = 3 WHERE seq = 3");
    expect_ok(s, NREC);

    /* a rewards row changed, added or deleted: named at its round's record */
    exec_sql(s, "CREATE TEMP TABLE saved AS SELECT * FROM rewards WHERE round_id = 4");
    exec_sql(s, "UPDATE rewards SET amount_planck = CASE amount_planck WHEN '0' THEN '1' ELSE '0' END"
                " WHERE rowid = (SELECT min(rowid) FROM rewards WHERE round_id = 4)");
    expect_broken(s, 4, "rewards", "rewards amount changed");
    exec_sql(s, "DELETE FROM rewards WHERE round_id = 4");
    exec_sql(s, "INSERT INTO rewards SELECT * FROM saved");
    exec_sql(s, "DROP TABLE saved");
    expect_ok(s, NREC);
    exec_sql(s, "CREATE TEMP TABLE saved AS SELECT * FROM rewards WHERE round_id = 2");
    exec_sql(s, "DELETE FROM rewards WHERE rowid = (SELECT max(rowid) FROM rewards WHERE round_id = 2)");
    expect_broken(s, 2, "rewards", "rewards row deleted");
    exec_sql(s, "DELETE FROM rewards WHERE round_id = 2");
    exec_sql(s, "INSERT INTO rewards SELECT * FROM saved");
    exec_sql(s, "DROP TABLE saved");
    expect_ok(s, NREC);
    /* the round reopened in the rounds table */
    exec_sql(s, "UPDATE rounds SET state = 'training' WHERE id = 5");
    expect_broken(s, 5, "not closed", "round reopened");
    exec_sql(s, "UPDATE rounds SET state = 'closed' WHERE id = 5");
    expect_ok(s, NREC);

    /* reordering: records 2 and 3 swap places (contents swapped, seqs kept) */
    exec_sql(s, "CREATE TEMP TABLE l AS SELECT * FROM ledger");
    exec_sql(s, "UPDATE ledger SET round_id = -1 WHERE seq = 2");
    exec_sql(s, "UPDATE ledger SET (round_id, prev_hash, body, signature) ="
                " (SELECT round_id, prev_hash, body, signature FROM l WHERE seq = 2) WHERE seq = 3");
    exec_sql(s, "UPDATE ledger SET (round_id, prev_hash, body, signature) ="
                " (SELECT round_id, prev_hash, body, signature FROM l WHERE seq = 3) WHERE seq = 2");
    expect_broken(s, 2, NULL, "records 2 and 3 swapped");
    /* reordering by renumbering: record 3 becomes 6, 2 becomes 3 */
    exec_sql(s, "DELETE FROM ledger");
    exec_sql(s, "INSERT INTO ledger SELECT * FROM l");
    expect_ok(s, NREC);
    exec_sql(s, "UPDATE ledger SET seq = 6 WHERE seq = 3");
    exec_sql(s, "UPDATE ledger SET seq = 3 WHERE seq = 2");
    expect_broken(s, 2, "missing", "renumbered");
    exec_sql(s, "DELETE FROM ledger");
    exec_sql(s, "INSERT INTO ledger SELECT * FROM l");
    expect_ok(s, NREC);

    /* truncation: the middle record deleted, then the last */
    exec_sql(s, "DELETE FROM ledger WHERE seq = 3");
    expect_broken(s, 3, "missing", "middle record deleted");
    exec_sql(s, "INSERT INTO ledger SELECT * FROM l WHERE seq = 3");
    expect_ok(s, NREC);
    exec_sql(s, "DELETE FROM ledger WHERE seq = 5");
    expect_broken(s, 5, "missing", "last record deleted");
    /* ... and its round's rows with it: the rewards still betray it */
    exec_sql(s, "UPDATE rounds SET state = 'training' WHERE id = 5");
    expect_broken(s, 5, "missing", "last record deleted, round reopened");
    /* a ledger whose last record is broken is not extended */
    exec_sql(s, "INSERT INTO ledger SELECT * FROM l WHERE seq = 5");
    exec_sql(s, "UPDATE rounds SET state = 'closed' WHERE id = 5");
    expect_ok(s, NREC);
    size_t n = get_blob(s, 5, "signature", orig, sizeof orig);
    orig[10] ^= 1;
    set_blob(s, 5, "signature", orig, n);
    uint8_t pk[32];
    coord_rand_bytes(&seed, pk, 32);
    coord_add_validator(s, pk, 1);
    char err[512] = "";
    nawal_round r = {0};
    coord_put_random_blob(s, &seed, 10, r.base_cid);
    r.target = r.min = 1;
    r.pool_planck = 10;
    int64_t id;
    cr_assert_eq(nawal_store_round_create(s, &r, NULL, &id, err, sizeof err), 0);
    cr_assert_eq(nawal_round_settle(s, id, r.base_cid, 1, NULL, err, sizeof err), -1);
    cr_assert(strstr(err, "refusing to chain"), "%s", err);
    nawal_round got;
    cr_assert_eq(nawal_store_round_get(s, id, &got, err, sizeof err), 0);
    cr_assert_eq(got.state, NAWAL_ROUND_ANNOUNCED, "a failed settle changed the round");
    exec_sql(s, "DROP TABLE l");
    nawal_store_close(s);
}

Test(coord_ledger, other_key_fails_at_first_record) {
    uint64_t seed = test_seed("coord_ledger.key");
    nawal_store *s = make_ledger(&seed);
    nawal_store_close(s);
    /* identity.pub replaced by another key */
    nawal_identity other;
    char err[512] = "", path[512], hex[NAWAL_FINGERPRINT_HEX_BYTES];
    cr_assert_eq(nawal_identity_generate(&other, err, sizeof err), 0);
    nawal_fingerprint(hex, other.pk);
    snprintf(path, sizeof path, "%s/identity.pub", dir);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fprintf(f, "%s\n", hex);
    fclose(f);
    cr_assert_eq(nawal_store_open(&s, dir, NAWAL_STORE_OPEN_PUBLIC_ONLY, err, sizeof err), 0, "%s", err);
    expect_broken(s, 1, "signature", "other key");
    nawal_store_close(s);
}

Test(coord_ledger, body_encoding_round_trip_and_strict_decode) {
    uint64_t seed = test_seed("coord_ledger.codec");
    char err[512] = "";
    for (int t = 0; t < 200; t++) {
        size_t n = (size_t)test_rand_int(&seed, 20);
        nawal_ledger_entry e = {0}, d;
        e.round_id = (int64_t)test_rand_u64(&seed);
        e.closed_ms = (int64_t)test_rand_u64(&seed);
        coord_rand_bytes(&seed, e.model_cid, 32);
        e.n_updates = e.n_payouts = n;
        e.updates = calloc(n + 1, sizeof *e.updates);
        e.payouts = calloc(n + 1, sizeof *e.payouts);
        uint64_t sum = 0;
        for (size_t i = 0; i < n; i++) {
            coord_rand_bytes(&seed, e.updates[i].validator, 32);
            e.updates[i].validator[0] = (uint8_t)(i * 10); /* ascending */
            coord_rand_bytes(&seed, e.updates[i].delta_cid, 32);
            memcpy(e.payouts[i].validator, e.updates[i].validator, 32);
            e.payouts[i].amount_planck = test_rand_u64(&seed) >> 8;
            sum += e.payouts[i].amount_planck;
        }
        e.undistributed_planck = test_rand_u64(&seed) >> 8;
        e.pool_planck = sum + e.undistributed_planck;
        uint8_t *b;
        size_t len;
        cr_assert_eq(nawal_ledger_encode_body(&e, &b, &len, err, sizeof err), 0, "%s", err);
        cr_assert_eq(nawal_ledger_decode_body(b, len, &d, err, sizeof err), 0, "%s", err);
        cr_assert_eq(d.round_id, e.round_id);
        cr_assert_eq(d.closed_ms, e.closed_ms);
        cr_assert_eq(d.pool_planck, e.pool_planck);
        cr_assert_eq(d.n_payouts, n);
        for (size_t i = 0; i < n; i++) {
            cr_assert(!memcmp(&d.updates[i], &e.updates[i], sizeof d.updates[i]));
            cr_assert_eq(d.payouts[i].amount_planck, e.payouts[i].amount_planck);
        }
        nawal_ledger_entry_free(&d);
        /* every shorter prefix, and one extra byte, refused */
        for (size_t k = 0; k < len; k++) cr_assert_eq(nawal_ledger_decode_body(b, k, &d, NULL, 0), -1);
        uint8_t *longer = malloc(len + 1);
        memcpy(longer, b, len);
        longer[len] = 0;
        cr_assert_eq(nawal_ledger_decode_body(longer, len + 1, &d, NULL, 0), -1);
        free(longer);
        /* a huge update count with few bytes: refused before allocating */
        if (len >= 72) {
            b[68] = b[69] = b[70] = b[71] = 0xff;
            cr_assert_eq(nawal_ledger_decode_body(b, len, &d, err, sizeof err), -1);
        }
        free(b);
        /* payouts that do not add up, or keys out of order, are not encoded */
        if (n >= 2) {
            e.pool_planck++;
            cr_assert_eq(nawal_ledger_encode_body(&e, &b, &len, err, sizeof err), -1);
            e.pool_planck--;
            memcpy(e.payouts[1].validator, e.payouts[0].validator, 32);
            cr_assert_eq(nawal_ledger_encode_body(&e, &b, &len, err, sizeof err), -1);
        }
        nawal_ledger_entry_free(&e);
    }
}

/* Runs `nawal-coordinator ledger ARGS --dir dir`; returns its exit status
 * and its stdout in out. */
static int run_cli(const char *args, char *out, size_t cap) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' ledger %s --dir '%s' 2>&1", NAWAL_COORDINATOR_BIN, args, dir);
    FILE *p = popen(cmd, "r");
    cr_assert(p, "popen %s", cmd);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    cr_assert(WIFEXITED(st), "%s did not exit", cmd);
    return WEXITSTATUS(st);
}

Test(coord_ledger, cli_verify_and_show) {
    uint64_t seed = test_seed("coord_ledger.cli");
    nawal_store *s = make_ledger(&seed);
    static char out[1 << 16];
    cr_assert_eq(run_cli("verify", out, sizeof out), 0, "%s", out);
    cr_assert_str_eq(out, "ledger ok: 5 records\n");
    cr_assert_eq(run_cli("show", out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "record 3  round 3"), "%s", out);
    cr_assert(strstr(out, "signature ok  chain ok"), "%s", out);
    cr_assert(strstr(out, "DALLA ("), "%s", out);

    /* one byte of record 3's body flipped: verify exits 1 naming it; show marks it */
    uint8_t body[8192];
    size_t n = get_blob(s, 3, "body", body, sizeof body);
    body[n / 2] ^= 0x40;
    set_blob(s, 3, "body", body, n);
    cr_assert_eq(run_cli("verify", out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "record 3:"), "%s", out);
    cr_assert(strstr(out, "signature"), "%s", out);
    cr_assert_eq(run_cli("show", out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "signature BAD"), "%s", out);
    body[n / 2] ^= 0x40;
    set_blob(s, 3, "body", body, n);

    /* the last record deleted */
    exec_sql(s, "DELETE FROM ledger WHERE seq = 5");
    cr_assert_eq(run_cli("verify", out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "record 5: record missing"), "%s", out);
    cr_assert_eq(run_cli("bogus", out, sizeof out), 2);
    nawal_store_close(s);
}
