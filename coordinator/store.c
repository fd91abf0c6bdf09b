/* store.c - the coordinator directory's database: creation, opening,
 * transactions, rounds and submissions (see store.h). The blob store is in
 * blobstore.c, the registry in registry.c. */
#include "fileio.h"
#include "store.h"
#include "store_internal.h"
#include "cid.h"
#include "error.h"
#include "rewards.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Money columns are decimal TEXT (see store.h): GLOB keeps them digits only. */
#define MONEY_CHECK(col) "CHECK(typeof(" col ")='text' AND length(" col ") BETWEEN 1 AND 20 AND " col " NOT GLOB '*[^0-9]*')"

static const char *const SCHEMA_V1 =
    "CREATE TABLE schema_version(version INTEGER NOT NULL);\n"
    "CREATE TABLE validators(\n"
    "  pubkey BLOB PRIMARY KEY CHECK(length(pubkey)=32),\n"
    "  stake_planck TEXT NOT NULL " MONEY_CHECK("stake_planck") ",\n"
    "  added_ms INTEGER NOT NULL,\n"
    "  removed INTEGER NOT NULL DEFAULT 0 CHECK(removed IN (0,1)),\n"
    "  removed_ms INTEGER);\n"
    "CREATE TABLE rounds(\n"
    "  id INTEGER PRIMARY KEY,\n"
    "  state TEXT NOT NULL CHECK(state IN ('announced','joining','training','aggregating','closed','failed')),\n"
    "  base_cid BLOB NOT NULL CHECK(length(base_cid)=32),\n"
    "  model_cid BLOB CHECK(model_cid IS NULL OR length(model_cid)=32),\n"
    "  started_ms INTEGER NOT NULL,\n"
    "  deadline_ms INTEGER NOT NULL,\n"
    "  closed_ms INTEGER NOT NULL DEFAULT 0,\n"
    "  pool_planck TEXT NOT NULL " MONEY_CHECK("pool_planck") ",\n"
    "  target INTEGER NOT NULL CHECK(target BETWEEN 1 AND 4294967295),\n"
    "  min INTEGER NOT NULL CHECK(min BETWEEN 1 AND target),\n"
    "  config TEXT NOT NULL DEFAULT '{}' CHECK(json_valid(config)));\n"
    "CREATE TABLE submissions(\n"
    "  round_id INTEGER NOT NULL REFERENCES rounds(id),\n"
    "  validator BLOB NOT NULL REFERENCES validators(pubkey),\n"
    "  delta_cid BLOB NOT NULL CHECK(length(delta_cid)=32),\n"
    "  num_examples INTEGER NOT NULL CHECK(num_examples >= 0),\n"
    "  quality_ppm INTEGER NOT NULL CHECK(quality_ppm BETWEEN 0 AND 1000000),\n"
    "  received_ms INTEGER NOT NULL,\n"
    "  stake_planck TEXT NOT NULL " MONEY_CHECK("stake_planck") ",\n"
    "  UNIQUE(round_id, validator));\n"
    "CREATE TABLE rewards(\n"
    "  round_id INTEGER NOT NULL REFERENCES rounds(id),\n"
    "  validator BLOB NOT NULL REFERENCES validators(pubkey),\n"
    "  amount_planck TEXT NOT NULL " MONEY_CHECK("amount_planck") ",\n"
    "  UNIQUE(round_id, validator));\n"
    "CREATE TABLE ledger(\n"
    "  seq INTEGER PRIMARY KEY CHECK(seq >= 1),\n"
    "  round_id INTEGER NOT NULL UNIQUE REFERENCES rounds(id),\n"
    "  prev_hash BLOB NOT NULL,\n"
    "  body BLOB NOT NULL,\n"
    "  signature BLOB NOT NULL);\n"
    "INSERT INTO schema_version(version) VALUES(1);\n";

/* Version 2: the round machine (rounds.h) and aggregation (aggregate.h).
 * Applied by init after SCHEMA_V1, and by open to a version 1 database, in
 * one transaction. Rounds of version 1 had no join window: theirs closes at
 * the deadline. submissions.rejected is NULL for an update the aggregation
 * used (or has not seen yet), else why it was dropped; those are not paid. */
static const char *const MIGRATE_V2 =
    "ALTER TABLE rounds ADD COLUMN join_deadline_ms INTEGER NOT NULL DEFAULT 0;\n"
    "ALTER TABLE rounds ADD COLUMN min_stake_planck TEXT NOT NULL DEFAULT '0' " MONEY_CHECK("min_stake_planck") ";\n"
    "ALTER TABLE rounds ADD COLUMN min_quality_ppm INTEGER NOT NULL DEFAULT 0"
    " CHECK(min_quality_ppm BETWEEN 0 AND 1000000);\n"
    "UPDATE rounds SET join_deadline_ms = deadline_ms;\n"
    "ALTER TABLE submissions ADD COLUMN rejected TEXT;\n"
    "CREATE TABLE participants(\n"
    "  round_id INTEGER NOT NULL REFERENCES rounds(id),\n"
    "  validator BLOB NOT NULL REFERENCES validators(pubkey),\n"
    "  stake_planck TEXT NOT NULL " MONEY_CHECK("stake_planck") ",\n"
    "  joined_ms INTEGER NOT NULL,\n"
    "  UNIQUE(round_id, validator));\n"
    "CREATE TABLE aggregates(\n"
    "  round_id INTEGER PRIMARY KEY REFERENCES rounds(id),\n"
    "  strategy TEXT NOT NULL,\n"
    "  model_cid BLOB CHECK(model_cid IS NULL OR length(model_cid)=32),\n"
    "  accepted INTEGER NOT NULL CHECK(accepted >= 0),\n"
    "  rejected INTEGER NOT NULL CHECK(rejected >= 0),\n"
    "  total_examples TEXT NOT NULL " MONEY_CHECK("total_examples") ",\n"
    "  duration_ms INTEGER NOT NULL,\n"
    "  finished_ms INTEGER NOT NULL);\n"
    "CREATE TABLE settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);\n"
    "UPDATE schema_version SET version = 2;\n";

/* Version 3: the validators' evaluations of each closed round's new model
 * (rounds.h): one row per validator and round, its loss (nats per
 * token) over `tokens` predicted tokens of its own validation split. */
static const char *const MIGRATE_V3 =
    "CREATE TABLE evaluations(\n"
    "  round_id INTEGER NOT NULL REFERENCES rounds(id),\n"
    "  validator BLOB NOT NULL REFERENCES validators(pubkey),\n"
    "  model_cid BLOB NOT NULL CHECK(length(model_cid)=32),\n"
    "  loss REAL NOT NULL CHECK(loss >= 0),\n"
    "  tokens INTEGER NOT NULL CHECK(tokens >= 1),\n"
    "  received_ms INTEGER NOT NULL,\n"
    "  UNIQUE(round_id, validator));\n"
    "UPDATE schema_version SET version = 3;\n";

/* Version 4: model patches (patches.h), the compressed downlink: the blob
 * patch_cid (patch_size bytes) turns the global model from_cid into to_cid. */
static const char *const MIGRATE_V4 =
    "CREATE TABLE model_patches(\n"
    "  to_cid BLOB NOT NULL CHECK(length(to_cid)=32),\n"
    "  from_cid BLOB NOT NULL CHECK(length(from_cid)=32),\n"
    "  patch_cid BLOB NOT NULL CHECK(length(patch_cid)=32),\n"
    "  patch_size INTEGER NOT NULL CHECK(patch_size > 0),\n"
    "  PRIMARY KEY(to_cid, from_cid));\n"
    "CREATE INDEX model_patches_blob ON model_patches(patch_cid);\n"
    "UPDATE schema_version SET version = 4;\n";

/* MIGRATIONS[v] upgrades a version v - 1 database to version v. */
static const char *const MIGRATIONS[NAWAL_STORE_SCHEMA_VERSION + 1] = {NULL, NULL, MIGRATE_V2, MIGRATE_V3, MIGRATE_V4};

struct nawal_store {
    char *dir;
    sqlite3 *db;
    int have_secret;
    nawal_identity id;
};

const char *nawal_store_dir(const nawal_store *s) { return s->dir; }
sqlite3 *nawal_store_db(nawal_store *s) { return s->db; }
const uint8_t *nawal_store_pubkey(const nawal_store *s) { return s->id.pk; }
const nawal_identity *nawal_store_identity(const nawal_store *s) { return s->have_secret ? &s->id : NULL; }

char *nawal_format_ms(char out[32], int64_t ms) {
    time_t sec = (time_t)(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
    int frac = (int)(ms - (int64_t)sec * 1000);
    struct tm tm;
    if (!gmtime_r(&sec, &tm)) {
        snprintf(out, 32, "@%lld ms", (long long)ms);
        return out;
    }
    char day[24];
    strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, 32, "%s.%03dZ", day, frac);
    return out;
}

/* ---- helpers shared with registry.c, blobstore.c, ledger.c ----------- */

int nawal_store_sql_fail(nawal_store *s, char *err, size_t errlen, const char *what) {
    return nawal_fail(err, errlen, "%s: %s: %s", s->dir, what, sqlite3_errmsg(s->db));
}

int nawal_store_bind_u64(sqlite3_stmt *st, int idx, uint64_t v) {
    char buf[24];
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
    return sqlite3_bind_text(st, idx, buf, -1, SQLITE_TRANSIENT);
}

int nawal_store_column_u64(sqlite3_stmt *st, int col, uint64_t *out, char *err, size_t errlen) {
    const char *txt = sqlite3_column_type(st, col) == SQLITE_TEXT ? (const char *)sqlite3_column_text(st, col) : NULL;
    if (!txt || nawal_parse_u64(txt, out))
        return nawal_fail(err, errlen, "database: column %s holds '%s', not a u64 amount",
                          sqlite3_column_name(st, col), txt ? txt : "(not text)");
    return 0;
}

/* Copies a 32-byte BLOB column; -1 if it is not exactly that. */
int nawal_store_column_key(sqlite3_stmt *st, int col, uint8_t out[32]) {
    if (sqlite3_column_type(st, col) != SQLITE_BLOB || sqlite3_column_bytes(st, col) != 32) return -1;
    memcpy(out, sqlite3_column_blob(st, col), 32);
    return 0;
}

int nawal_store_prepare(nawal_store *s, sqlite3_stmt **st, const char *sql, char *err, size_t errlen) {
    if (sqlite3_prepare_v2(s->db, sql, -1, st, NULL) != SQLITE_OK) {
        *st = NULL;
        return nawal_store_sql_fail(s, err, errlen, "prepare");
    }
    return 0;
}

int nawal_store_in_tx(nawal_store *s) { return !sqlite3_get_autocommit(s->db); }

int nawal_store_begin(nawal_store *s, char *err, size_t errlen) {
    if (nawal_store_in_tx(s)) return nawal_fail(err, errlen, "%s: a transaction is already open", s->dir);
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return nawal_store_sql_fail(s, err, errlen, "begin transaction");
    return 0;
}

int nawal_store_commit(nawal_store *s, char *err, size_t errlen) {
    if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        int rc = nawal_store_sql_fail(s, err, errlen, "commit");
        nawal_store_rollback(s);
        return rc;
    }
    return 0;
}

void nawal_store_rollback(nawal_store *s) {
    if (nawal_store_in_tx(s)) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
}

/* ---- init / open ------------------------------------------------------- */

static int mkdir_parents(const char *dir, char *err, size_t errlen) {
    char *p = strdup(dir);
    if (!p) return nawal_fail(err, errlen, "out of memory");
    for (char *c = p + 1; *c; c++) {
        if (*c != '/') continue;
        *c = 0;
        if (mkdir(p, 0700) != 0 && errno != EEXIST) {
            int e = errno;
            int rc = nawal_fail(err, errlen, "%s: cannot create: %s", p, strerror(e));
            free(p);
            return rc;
        }
        *c = '/';
    }
    free(p);
    return 0;
}

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* 1 if dir is missing, 0 if it is an empty directory, -1 otherwise. */
static int dir_state(const char *dir, char *err, size_t errlen) {
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return 1;
        return nawal_fail(err, errlen, "%s: %s", dir, errno == ENOTDIR ? "exists and is not a directory" : strerror(errno));
    }
    struct dirent *e;
    int empty = 1;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) { empty = 0; break; }
    closedir(d);
    if (!empty) return nawal_fail(err, errlen, "%s: directory is not empty; refusing to initialise it", dir);
    return 0;
}

/* Applies the migrations from version `from` to NAWAL_STORE_SCHEMA_VERSION, in the caller's transaction. */
static int migrate(sqlite3 *db, int from, char **msg) {
    for (int v = from + 1; v <= NAWAL_STORE_SCHEMA_VERSION; v++)
        if (sqlite3_exec(db, MIGRATIONS[v], NULL, NULL, msg) != SQLITE_OK) return -1;
    return 0;
}

int nawal_store_init(const char *dir, char *err, size_t errlen) {
    if (!dir || !*dir) return nawal_fail(err, errlen, "coordinator directory: empty path");
    int st = dir_state(dir, err, errlen);
    if (st < 0) return -1;
    int created_dir = 0;
    if (st == 1) {
        if (mkdir_parents(dir, err, errlen)) return -1;
        if (mkdir(dir, 0700) != 0) return nawal_fail(err, errlen, "%s: cannot create: %s", dir, strerror(errno));
        created_dir = 1;
    }
    char *db_path = join(dir, NAWAL_STORE_DB_FILE), *blobs = join(dir, NAWAL_STORE_BLOB_DIR);
    char *key = join(dir, NAWAL_IDENTITY_KEY_FILE), *pub = join(dir, NAWAL_IDENTITY_PUB_FILE);
    sqlite3 *db = NULL;
    nawal_identity id;
    memset(&id, 0, sizeof id);
    int rc = -1, made_blobs = 0, made_key = 0, made_db = 0;
    if (!db_path || !blobs || !key || !pub) { nawal_fail(err, errlen, "out of memory"); goto out; }

    if (mkdir(blobs, 0700) != 0) { nawal_fail(err, errlen, "%s: cannot create: %s", blobs, strerror(errno)); goto out; }
    made_blobs = 1;
    if (nawal_identity_generate(&id, err, errlen) || nawal_identity_save(&id, dir, err, errlen)) goto out;
    made_key = 1;

    made_db = 1;
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_EXRESCODE, NULL) != SQLITE_OK) {
        nawal_fail(err, errlen, "%s: cannot create database: %s", db_path, db ? sqlite3_errmsg(db) : "out of memory");
        goto out;
    }
    char *msg = NULL;
    /* journal_mode=WAL is persistent in the file; the others are per connection (open sets them again). */
    if (sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;", NULL, NULL, &msg) != SQLITE_OK ||
        sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, &msg) != SQLITE_OK ||
        sqlite3_exec(db, SCHEMA_V1, NULL, NULL, &msg) != SQLITE_OK || migrate(db, 1, &msg) ||
        sqlite3_exec(db, "COMMIT", NULL, NULL, &msg) != SQLITE_OK) {
        nawal_fail(err, errlen, "%s: cannot create schema: %s", db_path, msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        goto out;
    }
    if (sqlite3_close(db) != SQLITE_OK) { db = NULL; nawal_fail(err, errlen, "%s: close failed", db_path); goto out; }
    db = NULL;
    if (nawal_fsync_dir(blobs) || nawal_fsync_dir(dir)) { nawal_fail(err, errlen, "%s: fsync failed: %s", dir, strerror(errno)); goto out; }
    rc = 0;
out:
    if (db) sqlite3_close(db);
    if (rc) {
        if (made_db) {
            unlink(db_path);
            char *side = NULL;
            for (int k = 0; k < 2; k++) {
                side = join(dir, k ? NAWAL_STORE_DB_FILE "-shm" : NAWAL_STORE_DB_FILE "-wal");
                if (side) unlink(side);
                free(side);
            }
        }
        if (made_key) { unlink(key); unlink(pub); }
        if (made_blobs) rmdir(blobs);
        if (created_dir) rmdir(dir);
    }
    nawal_identity_wipe(&id);
    free(db_path); free(blobs); free(key); free(pub);
    return rc;
}

/* identity.pub: one line, the public key's 64 lowercase hex characters. */
static int load_pubkey(const char *dir, uint8_t pk[32], char *err, size_t errlen) {
    char *path = join(dir, NAWAL_IDENTITY_PUB_FILE);
    if (!path) return nawal_fail(err, errlen, "out of memory");
    FILE *f = fopen(path, "rb");
    if (!f) {
        int rc = nawal_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        free(path);
        return rc;
    }
    char line[130];
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = 0;
    if (n && line[n - 1] == '\n') line[--n] = 0;
    char e2[128];
    int rc = 0;
    if (n != 64 || nawal_pubkey_from_hex(pk, line, e2, sizeof e2))
        rc = nawal_fail(err, errlen, "%s: not a public key file (want one line of 64 lowercase hex characters)", path);
    free(path);
    return rc;
}

int nawal_store_open(nawal_store **out, const char *dir, int flags, char *err, size_t errlen) {
    *out = NULL;
    nawal_store *s = calloc(1, sizeof *s);
    if (!s || !(s->dir = strdup(dir))) {
        free(s);
        return nawal_fail(err, errlen, "out of memory");
    }
    char *db_path = join(dir, NAWAL_STORE_DB_FILE);
    int rc = -1;
    if (!db_path) { nawal_fail(err, errlen, "out of memory"); goto out; }
    struct stat sb;
    if (stat(db_path, &sb) != 0) {
        nawal_fail(err, errlen, "%s: not a coordinator directory (no %s; run 'nawal-coordinator init --dir %s')",
                   dir, NAWAL_STORE_DB_FILE, dir);
        goto out;
    }
    if (sqlite3_open_v2(db_path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_EXRESCODE, NULL) != SQLITE_OK) {
        nawal_fail(err, errlen, "%s: cannot open database: %s", db_path, s->db ? sqlite3_errmsg(s->db) : "out of memory");
        goto out;
    }
    sqlite3_busy_timeout(s->db, 10000);
    char *msg = NULL;
    if (sqlite3_exec(s->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;", NULL, NULL, &msg) != SQLITE_OK) {
        nawal_fail(err, errlen, "%s: %s", db_path, msg ? msg : sqlite3_errmsg(s->db));
        sqlite3_free(msg);
        goto out;
    }
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st, "SELECT version FROM schema_version", err, errlen)) goto out;
    int ver = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
    sqlite3_finalize(st);
    if (ver >= 1 && ver < NAWAL_STORE_SCHEMA_VERSION) {
        /* upgrade in place; a concurrent opener waits on the lock and then sees the new version */
        if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, &msg) != SQLITE_OK) {
            nawal_fail(err, errlen, "%s: cannot upgrade the schema: %s", db_path, msg ? msg : sqlite3_errmsg(s->db));
            sqlite3_free(msg);
            goto out;
        }
        if (nawal_store_prepare(s, &st, "SELECT version FROM schema_version", err, errlen)) {
            nawal_store_rollback(s);
            goto out;
        }
        ver = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
        sqlite3_finalize(st);
        if (ver >= 1 && ver < NAWAL_STORE_SCHEMA_VERSION && migrate(s->db, ver, &msg)) {
            nawal_fail(err, errlen, "%s: cannot upgrade the schema from version %d to %d: %s", db_path, ver,
                       NAWAL_STORE_SCHEMA_VERSION, msg ? msg : sqlite3_errmsg(s->db));
            sqlite3_free(msg);
            nawal_store_rollback(s);
            goto out;
        }
        if (nawal_store_commit(s, err, errlen)) goto out;
        if (ver >= 1 && ver < NAWAL_STORE_SCHEMA_VERSION) ver = NAWAL_STORE_SCHEMA_VERSION;
    }
    if (ver != NAWAL_STORE_SCHEMA_VERSION) {
        nawal_fail(err, errlen, "%s: schema version %d, this program knows %d", db_path, ver, NAWAL_STORE_SCHEMA_VERSION);
        goto out;
    }
    if (flags & NAWAL_STORE_OPEN_PUBLIC_ONLY) {
        if (load_pubkey(dir, s->id.pk, err, errlen)) goto out;
    } else {
        if (nawal_identity_load(&s->id, dir, err, errlen)) goto out;
        s->have_secret = 1;
        if (nawal_blobstore_cleanup(s, NULL, err, errlen)) goto out;
    }
    rc = 0;
out:
    free(db_path);
    if (rc) nawal_store_close(s);
    else *out = s;
    return rc;
}

void nawal_store_close(nawal_store *s) {
    if (!s) return;
    if (s->db) {
        nawal_store_rollback(s);
        sqlite3_close(s->db);
    }
    nawal_identity_wipe(&s->id);
    free(s->dir);
    free(s);
}

/* ---- rounds ------------------------------------------------------------ */

static const char *const STATE_NAMES[] = {"announced", "joining", "training", "aggregating", "closed", "failed"};

const char *nawal_round_state_name(nawal_round_state st) {
    return (unsigned)st < sizeof STATE_NAMES / sizeof *STATE_NAMES ? STATE_NAMES[st] : "?";
}

int nawal_round_state_parse(const char *name) {
    for (size_t i = 0; i < sizeof STATE_NAMES / sizeof *STATE_NAMES; i++)
        if (name && !strcmp(name, STATE_NAMES[i])) return (int)i;
    return -1;
}

int nawal_store_round_create(nawal_store *s, const nawal_round *r, const char *config_json, int64_t *id_out,
                             char *err, size_t errlen) {
    if (nawal_store_begin(s, err, errlen)) return -1;
    if (nawal_store_round_create_tx(s, r, config_json, id_out, err, errlen)) {
        nawal_store_rollback(s);
        return -1;
    }
    return nawal_store_commit(s, err, errlen);
}

int nawal_store_round_create_tx(nawal_store *s, const nawal_round *r, const char *config_json, int64_t *id_out,
                                char *err, size_t errlen) {
    if (!nawal_store_in_tx(s)) return nawal_fail(err, errlen, "round create: no transaction open");
    if (r->target < 1 || r->min < 1 || r->min > r->target)
        return nawal_fail(err, errlen, "round: want 1 <= min (%u) <= target (%u)", r->min, r->target);
    int64_t join_deadline = r->join_deadline_ms ? r->join_deadline_ms : r->deadline_ms;
    if (r->deadline_ms < r->started_ms || join_deadline < r->started_ms || join_deadline > r->deadline_ms)
        return nawal_fail(err, errlen, "round: want start <= join deadline <= deadline");
    if (r->min_quality_ppm > 1000000u)
        return nawal_fail(err, errlen, "round: minimum quality %u ppm is above 1", r->min_quality_ppm);
    sqlite3_stmt *st = NULL;
    if (nawal_store_prepare(s, &st,
                            "INSERT INTO rounds(state, base_cid, started_ms, deadline_ms, pool_planck, target, min, config,"
                            " join_deadline_ms, min_stake_planck, min_quality_ppm)"
                            " VALUES('announced', ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)", err, errlen))
        return -1;
    sqlite3_bind_blob(st, 1, r->base_cid, 32, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, r->started_ms);
    sqlite3_bind_int64(st, 3, r->deadline_ms);
    nawal_store_bind_u64(st, 4, r->pool_planck);
    sqlite3_bind_int64(st, 5, r->target);
    sqlite3_bind_int64(st, 6, r->min);
    sqlite3_bind_text(st, 7, config_json ? config_json : "{}", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 8, join_deadline);
    nawal_store_bind_u64(st, 9, r->min_stake_planck);
    sqlite3_bind_int64(st, 10, r->min_quality_ppm);
    if (sqlite3_step(st) != SQLITE_DONE) {
        nawal_store_sql_fail(s, err, errlen, "create round");
        sqlite3_finalize(st);
        return -1;
    }
    sqlite3_finalize(st);
    if (id_out) *id_out = sqlite3_last_insert_rowid(s->db);
    return 0;
}

#define ROUND_COLUMNS                                                                                   \
    "id, state, base_cid, model_cid, started_ms, deadline_ms, closed_ms, pool_planck, target, min,"     \
    " join_deadline_ms, min_stake_planck, min_quality_ppm"

static int read_round(sqlite3_stmt *st, nawal_round *r, char *err, size_t errlen) {
    memset(r, 0, sizeof *r);
    r->id = sqlite3_column_int64(st, 0);
    int state = nawal_round_state_parse((const char *)sqlite3_column_text(st, 1));
    if (state < 0 || nawal_store_column_key(st, 2, r->base_cid))
        return nawal_fail(err, errlen, "database: round %lld is malformed", (long long)r->id);
    r->state = (nawal_round_state)state;
    if (sqlite3_column_type(st, 3) != SQLITE_NULL) {
        if (nawal_store_column_key(st, 3, r->model_cid))
            return nawal_fail(err, errlen, "database: round %lld has a malformed model CID", (long long)r->id);
        r->has_model_cid = 1;
    }
    r->started_ms = sqlite3_column_int64(st, 4);
    r->deadline_ms = sqlite3_column_int64(st, 5);
    r->closed_ms = sqlite3_column_int64(st, 6);
    if (nawal_store_column_u64(st, 7, &r->pool_planck, err, errlen)) return -1;
    r->target = (uint32_t)sqlite3_column_int64(st, 8);
    r->min = (uint32_t)sqlite3_column_int64(st, 9);
    r->join_deadline_ms = sqlite3_column_int64(st, 10);
    if (nawal_store_column_u64(st, 11, &r->min_stake_planck, err, errlen)) return -1;
    r->min_quality_ppm = (uint32_t)sqlite3_column_int64(st, 12);
    return 0;
}

static int round_query(nawal_store *s, const char *sql, int64_t id, nawal_round *out, char *err, size_t errlen) {
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st, sql, err, errlen)) return -1;
    if (sqlite3_bind_parameter_count(st)) sqlite3_bind_int64(st, 1, id);
    int rc, step = sqlite3_step(st);
    if (step == SQLITE_ROW) rc = read_round(st, out, err, errlen);
    else if (step == SQLITE_DONE) rc = NAWAL_STORE_REFUSED;
    else rc = nawal_store_sql_fail(s, err, errlen, "read round");
    sqlite3_finalize(st);
    return rc;
}

int nawal_store_round_get(nawal_store *s, int64_t id, nawal_round *out, char *err, size_t errlen) {
    int rc = round_query(s, "SELECT " ROUND_COLUMNS " FROM rounds WHERE id = ?1", id, out, err, errlen);
    if (rc == NAWAL_STORE_REFUSED) nawal_fail(err, errlen, "no round %lld", (long long)id);
    return rc;
}

int nawal_store_round_latest(nawal_store *s, nawal_round *out, char *err, size_t errlen) {
    int rc = round_query(s, "SELECT " ROUND_COLUMNS " FROM rounds ORDER BY id DESC LIMIT 1", 0, out, err, errlen);
    if (rc == NAWAL_STORE_REFUSED) nawal_fail(err, errlen, "no rounds yet");
    return rc;
}

int nawal_store_round_set_state(nawal_store *s, int64_t id, nawal_round_state to, char *err, size_t errlen) {
    if (to == NAWAL_ROUND_CLOSED)
        return nawal_fail(err, errlen, "round %lld: closing a round goes through settlement (rewards + ledger)", (long long)id);
    if ((unsigned)to > NAWAL_ROUND_FAILED) return nawal_fail(err, errlen, "round %lld: bad state %d", (long long)id, (int)to);
    if (nawal_store_begin(s, err, errlen)) return -1;
    nawal_round r;
    int rc = nawal_store_round_get(s, id, &r, err, errlen);
    if (rc == 0 && (r.state == NAWAL_ROUND_CLOSED || r.state == NAWAL_ROUND_FAILED)) {
        nawal_fail(err, errlen, "round %lld is %s; its state is final", (long long)id, nawal_round_state_name(r.state));
        rc = NAWAL_STORE_REFUSED;
    }
    sqlite3_stmt *st = NULL;
    if (rc == 0 && nawal_store_prepare(s, &st, "UPDATE rounds SET state = ?2, closed_ms = ?3 WHERE id = ?1", err, errlen))
        rc = -1;
    if (rc == 0) {
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_text(st, 2, nawal_round_state_name(to), -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, to == NAWAL_ROUND_FAILED ? nawal_now_ms() : 0);
        if (sqlite3_step(st) != SQLITE_DONE) rc = nawal_store_sql_fail(s, err, errlen, "update round state");
    }
    sqlite3_finalize(st);
    if (rc) {
        nawal_store_rollback(s);
        return rc;
    }
    return nawal_store_commit(s, err, errlen);
}

int nawal_store_round_config(nawal_store *s, int64_t id, char **json_out, char *err, size_t errlen) {
    *json_out = NULL;
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st, "SELECT config FROM rounds WHERE id = ?1", err, errlen)) return -1;
    sqlite3_bind_int64(st, 1, id);
    int rc = 0;
    if (sqlite3_step(st) == SQLITE_ROW) {
        const char *txt = (const char *)sqlite3_column_text(st, 0);
        if (!(*json_out = strdup(txt ? txt : "{}"))) rc = nawal_fail(err, errlen, "out of memory");
    } else {
        nawal_fail(err, errlen, "no round %lld", (long long)id);
        rc = NAWAL_STORE_REFUSED;
    }
    sqlite3_finalize(st);
    return rc;
}

/* ---- submissions --------------------------------------------------------- */

static int submission_add_tx(nawal_store *s, const nawal_submission *sub, char *err, size_t errlen);

/* The checks that need no transaction. */
static int submission_check(nawal_store *s, const nawal_submission *sub, char *err, size_t errlen) {
    char fp[NAWAL_FINGERPRINT_SHORT_BYTES];
    nawal_fingerprint_short(fp, sub->validator);
    long long rid = (long long)sub->round_id;
    if (sub->quality_ppm > 1000000u) {
        nawal_fail(err, errlen, "update of %s in round %lld: quality %u ppm above 1", fp, rid, sub->quality_ppm);
        return NAWAL_STORE_REFUSED;
    }
    if (sub->num_examples > (uint64_t)INT64_MAX) {
        nawal_fail(err, errlen, "update of %s in round %lld: example count out of range", fp, rid);
        return NAWAL_STORE_REFUSED;
    }
    if (!nawal_blobstore_has(s, sub->delta_cid)) {
        char hex[NAWAL_CID_HEX_BYTES];
        nawal_cid_to_hex(hex, sub->delta_cid);
        nawal_fail(err, errlen, "update of %s in round %lld: delta blob %s is not in the blob store", fp, rid, hex);
        return NAWAL_STORE_REFUSED;
    }
    return 0;
}

int nawal_store_submission_add(nawal_store *s, const nawal_submission *sub, char *err, size_t errlen) {
    int rc = submission_check(s, sub, err, errlen);
    if (rc) return rc;
    if (nawal_store_begin(s, err, errlen)) return -1;
    rc = submission_add_tx(s, sub, err, errlen);
    if (rc) {
        nawal_store_rollback(s);
        return rc;
    }
    return nawal_store_commit(s, err, errlen);
}

int nawal_store_submission_add_tx(nawal_store *s, const nawal_submission *sub, char *err, size_t errlen) {
    if (!nawal_store_in_tx(s)) return nawal_fail(err, errlen, "submission add: no transaction open");
    int rc = submission_check(s, sub, err, errlen);
    return rc ? rc : submission_add_tx(s, sub, err, errlen);
}

static int submission_add_tx(nawal_store *s, const nawal_submission *sub, char *err, size_t errlen) {
    char fp[NAWAL_FINGERPRINT_SHORT_BYTES];
    nawal_fingerprint_short(fp, sub->validator);
    long long rid = (long long)sub->round_id;
    nawal_round r;
    int rc = nawal_store_round_get(s, sub->round_id, &r, err, errlen);
    if (rc == 0 && (r.state == NAWAL_ROUND_CLOSED || r.state == NAWAL_ROUND_FAILED)) {
        nawal_fail(err, errlen, "update of %s: round %lld is %s", fp, rid, nawal_round_state_name(r.state));
        rc = NAWAL_STORE_REFUSED;
    }
    sqlite3_stmt *st = NULL;
    if (rc == 0 && nawal_store_prepare(s, &st,
                                       "INSERT INTO submissions(round_id, validator, delta_cid, num_examples, quality_ppm,"
                                       " received_ms, stake_planck)"
                                       " SELECT ?1, pubkey, ?3, ?4, ?5, ?6, stake_planck FROM validators"
                                       " WHERE pubkey = ?2 AND removed = 0",
                                       err, errlen))
        rc = -1;
    if (rc == 0) {
        sqlite3_bind_int64(st, 1, sub->round_id);
        sqlite3_bind_blob(st, 2, sub->validator, 32, SQLITE_STATIC);
        sqlite3_bind_blob(st, 3, sub->delta_cid, 32, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, (int64_t)sub->num_examples);
        sqlite3_bind_int64(st, 5, sub->quality_ppm);
        sqlite3_bind_int64(st, 6, sub->received_ms);
        int step = sqlite3_step(st);
        if (step == SQLITE_CONSTRAINT_UNIQUE || sqlite3_extended_errcode(s->db) == SQLITE_CONSTRAINT_UNIQUE) {
            nawal_fail(err, errlen, "update of %s: a second update in round %lld", fp, rid);
            rc = NAWAL_STORE_REFUSED;
        } else if (step != SQLITE_DONE) {
            rc = nawal_store_sql_fail(s, err, errlen, "record update");
        } else if (sqlite3_changes(s->db) != 1) {
            nawal_fail(err, errlen, "update of %s in round %lld: validator not registered (or removed)", fp, rid);
            rc = NAWAL_STORE_REFUSED;
        }
    }
    sqlite3_finalize(st);
    return rc;
}

int nawal_store_submissions(nawal_store *s, int64_t round_id, nawal_submission **out, size_t *n, char *err,
                            size_t errlen) {
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st,
                            "SELECT validator, delta_cid, num_examples, quality_ppm, received_ms, stake_planck,"
                            " rejected IS NOT NULL, rejected FROM submissions WHERE round_id = ?1 ORDER BY validator",
                            err, errlen))
        return -1;
    sqlite3_bind_int64(st, 1, round_id);
    nawal_submission *v = NULL;
    size_t cnt = 0, cap = 0;
    int rc = 0, step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        if (cnt == cap) {
            size_t nc = cap ? 2 * cap : 16;
            nawal_submission *nv = realloc(v, nc * sizeof *nv);
            if (!nv) { rc = nawal_fail(err, errlen, "out of memory"); break; }
            v = nv;
            cap = nc;
        }
        nawal_submission *x = &v[cnt];
        memset(x, 0, sizeof *x);
        x->round_id = round_id;
        int64_t q = sqlite3_column_int64(st, 3), ne = sqlite3_column_int64(st, 2);
        if (nawal_store_column_key(st, 0, x->validator) || nawal_store_column_key(st, 1, x->delta_cid) || q < 0 ||
            q > 1000000 || ne < 0) {
            rc = nawal_fail(err, errlen, "database: malformed submission in round %lld", (long long)round_id);
            break;
        }
        x->num_examples = (uint64_t)ne;
        x->quality_ppm = (uint32_t)q;
        x->received_ms = sqlite3_column_int64(st, 4);
        if ((rc = nawal_store_column_u64(st, 5, &x->stake_planck, err, errlen))) break;
        x->rejected = sqlite3_column_int(st, 6) != 0;
        const unsigned char *why = sqlite3_column_text(st, 7);
        if (why) snprintf(x->reason, sizeof x->reason, "%s", (const char *)why);
        cnt++;
    }
    if (rc == 0 && step != SQLITE_DONE) rc = nawal_store_sql_fail(s, err, errlen, "read submissions");
    sqlite3_finalize(st);
    if (rc) {
        free(v);
        return rc;
    }
    *out = v;
    *n = cnt;
    return 0;
}

/* ---- settings -------------------------------------------------------------- */

int nawal_store_setting_get(nawal_store *s, const char *key, char **value_out, char *err, size_t errlen) {
    *value_out = NULL;
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st, "SELECT value FROM settings WHERE key = ?1", err, errlen)) return -1;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    int rc, step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        rc = (*value_out = strdup(v ? v : "")) ? 0 : nawal_fail(err, errlen, "out of memory");
    } else if (step == SQLITE_DONE) {
        nawal_fail(err, errlen, "setting '%s' is not set", key);
        rc = NAWAL_STORE_REFUSED;
    } else rc = nawal_store_sql_fail(s, err, errlen, "read setting");
    sqlite3_finalize(st);
    return rc;
}

int nawal_store_setting_set(nawal_store *s, const char *key, const char *value, char *err, size_t errlen) {
    int own = !nawal_store_in_tx(s);
    if (own && nawal_store_begin(s, err, errlen)) return -1;
    sqlite3_stmt *st;
    int rc = nawal_store_prepare(s, &st, "INSERT INTO settings(key, value) VALUES(?1, ?2)"
                                         " ON CONFLICT(key) DO UPDATE SET value = ?2", err, errlen);
    if (rc == 0) {
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE) rc = nawal_store_sql_fail(s, err, errlen, "write setting");
        sqlite3_finalize(st);
    }
    if (!own) return rc;
    if (rc) {
        nawal_store_rollback(s);
        return rc;
    }
    return nawal_store_commit(s, err, errlen);
}
