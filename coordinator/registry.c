/* registry.c - validator registry on the validators table (see registry.h). */
#include "registry.h"
#include "store_internal.h"
#include "error.h"
#include "rewards.h"

#include <stdlib.h>
#include <string.h>

static int read_validator(sqlite3_stmt *st, nawal_validator *v, char *err, size_t errlen) {
    memset(v, 0, sizeof *v);
    if (nawal_store_column_key(st, 0, v->pubkey)) return nawal_fail(err, errlen, "database: malformed validator key");
    if (nawal_store_column_u64(st, 1, &v->stake_planck, err, errlen)) return -1;
    v->added_ms = sqlite3_column_int64(st, 2);
    v->removed = sqlite3_column_int(st, 3) != 0;
    v->removed_ms = sqlite3_column_type(st, 4) == SQLITE_NULL ? 0 : sqlite3_column_int64(st, 4);
    return 0;
}

#define VALIDATOR_COLUMNS "pubkey, stake_planck, added_ms, removed, removed_ms"

int nawal_registry_get(nawal_store *s, const uint8_t pubkey[32], nawal_validator *out, char *err, size_t errlen) {
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st, "SELECT " VALIDATOR_COLUMNS " FROM validators WHERE pubkey = ?1", err, errlen)) return -1;
    sqlite3_bind_blob(st, 1, pubkey, 32, SQLITE_STATIC);
    int rc, step = sqlite3_step(st);
    if (step == SQLITE_ROW) rc = read_validator(st, out, err, errlen);
    else if (step == SQLITE_DONE) {
        char fp[NAWAL_FINGERPRINT_HEX_BYTES];
        nawal_fingerprint(fp, pubkey);
        nawal_fail(err, errlen, "validator %s is not registered", fp);
        rc = NAWAL_STORE_REFUSED;
    } else rc = nawal_store_sql_fail(s, err, errlen, "read validator");
    sqlite3_finalize(st);
    return rc;
}

/* Runs one INSERT/UPDATE on :pk, :stake (optional) and :now in its own
 * transaction, after checking the key's current state with want_state:
 * 0 = must be absent or removed (add), 1 = must be active (remove). */
static int change(nawal_store *s, const uint8_t pubkey[32], uint64_t stake, int want_active, const char *sql,
                  char *err, size_t errlen) {
    char fp[NAWAL_FINGERPRINT_HEX_BYTES];
    nawal_fingerprint(fp, pubkey);
    if (nawal_store_begin(s, err, errlen)) return -1;
    nawal_validator v;
    int rc = nawal_registry_get(s, pubkey, &v, err, errlen), known = rc == 0;
    if (rc == NAWAL_STORE_REFUSED) rc = 0;
    if (rc == 0 && want_active && (!known || v.removed)) {
        nawal_fail(err, errlen, "validator %s is %s", fp, known ? "already removed" : "not registered");
        rc = NAWAL_STORE_REFUSED;
    }
    if (rc == 0 && !want_active && known && !v.removed) {
        nawal_fail(err, errlen, "validator %s is already registered (stake %llu planck)", fp,
                   (unsigned long long)v.stake_planck);
        rc = NAWAL_STORE_REFUSED;
    }
    sqlite3_stmt *st = NULL;
    if (rc == 0 && nawal_store_prepare(s, &st, sql, err, errlen)) rc = -1;
    if (rc == 0) {
        int i_stake = sqlite3_bind_parameter_index(st, ":stake");
        sqlite3_bind_blob(st, sqlite3_bind_parameter_index(st, ":pk"), pubkey, 32, SQLITE_STATIC);
        if (i_stake) nawal_store_bind_u64(st, i_stake, stake);
        sqlite3_bind_int64(st, sqlite3_bind_parameter_index(st, ":now"), nawal_now_ms());
        if (sqlite3_step(st) != SQLITE_DONE || sqlite3_changes(nawal_store_db(s)) != 1)
            rc = nawal_store_sql_fail(s, err, errlen, "update validators");
    }
    sqlite3_finalize(st);
    if (rc) {
        nawal_store_rollback(s);
        return rc;
    }
    return nawal_store_commit(s, err, errlen);
}

int nawal_registry_add(nawal_store *s, const uint8_t pubkey[32], uint64_t stake, char *err, size_t errlen) {
    return change(s, pubkey, stake, 0,
                  "INSERT INTO validators(pubkey, stake_planck, added_ms, removed, removed_ms)"
                  " VALUES(:pk, :stake, :now, 0, NULL) ON CONFLICT(pubkey) DO UPDATE"
                  " SET stake_planck = :stake, added_ms = :now, removed = 0, removed_ms = NULL",
                  err, errlen);
}

int nawal_registry_remove(nawal_store *s, const uint8_t pubkey[32], char *err, size_t errlen) {
    /* the stake stays on record */
    return change(s, pubkey, 0, 1, "UPDATE validators SET removed = 1, removed_ms = :now WHERE pubkey = :pk",
                  err, errlen);
}

int nawal_registry_list(nawal_store *s, int include_removed, nawal_validator **out, size_t *n, char *err,
                        size_t errlen) {
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st,
                            "SELECT " VALIDATOR_COLUMNS " FROM validators WHERE removed = 0 OR ?1 ORDER BY added_ms, pubkey",
                            err, errlen))
        return -1;
    sqlite3_bind_int(st, 1, include_removed ? 1 : 0);
    nawal_validator *v = NULL;
    size_t cnt = 0, cap = 0;
    int rc = 0, step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        if (cnt == cap) {
            size_t nc = cap ? 2 * cap : 16;
            nawal_validator *nv = realloc(v, nc * sizeof *nv);
            if (!nv) { rc = nawal_fail(err, errlen, "out of memory"); break; }
            v = nv;
            cap = nc;
        }
        if ((rc = read_validator(st, &v[cnt], err, errlen))) break;
        cnt++;
    }
    if (rc == 0 && step != SQLITE_DONE) rc = nawal_store_sql_fail(s, err, errlen, "list validators");
    sqlite3_finalize(st);
    if (rc) {
        free(v);
        return rc;
    }
    *out = v;
    *n = cnt;
    return 0;
}

int nawal_registry_can_join(nawal_store *s, const uint8_t pubkey[32], uint64_t min_stake, char *reason,
                            size_t reasonlen) {
    nawal_validator v;
    int rc = nawal_registry_get(s, pubkey, &v, reason, reasonlen);
    if (rc == NAWAL_STORE_REFUSED) return 0;
    if (rc) return -1;
    char fp[NAWAL_FINGERPRINT_HEX_BYTES];
    nawal_fingerprint(fp, pubkey);
    if (v.removed) {
        nawal_fail(reason, reasonlen, "validator %s was removed from the registry", fp);
        return 0;
    }
    if (v.stake_planck < min_stake) {
        char have[NAWAL_DALLA_STR_BYTES], need[NAWAL_DALLA_STR_BYTES];
        nawal_fail(reason, reasonlen, "validator %s: stake %s DALLA is below the minimum %s DALLA", fp,
                   nawal_planck_to_dalla(have, v.stake_planck), nawal_planck_to_dalla(need, min_stake));
        return 0;
    }
    return 1;
}
