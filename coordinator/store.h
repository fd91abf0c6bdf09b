/* store.h - the coordinator directory, the one place nawal-coordinator keeps
 * state, and the operations on it that must survive `kill -9` at any moment.
 *
 *   D/state.db      SQLite, WAL journal, synchronous=FULL, foreign keys on:
 *                   schema_version, validators, rounds, submissions,
 *                   rewards, ledger, participants, aggregates, settings,
 *                   evaluations, model_patches (schema in store.c; a
 *                   version 1, 2 or 3 database is upgraded to version 4
 *                   in place by nawal_store_open)
 *   D/blobs/ab/cd…  content-addressed blob store: a blob's path is the
 *                   lowercase hex of its BLAKE2b-256 CID, the first two
 *                   characters a sub-directory
 *   D/identity.key  the coordinator's Ed25519 key pair, in proto/identity.h's
 *   D/identity.pub  format (secret file 0600)
 *   D/uploads/      deltas `serve` is receiving (serve.h); a verified one
 *                   moves into the blob store (nawal_blobstore_adopt)
 *
 * Durability contract: every function here that changes state runs in one
 * transaction (BEGIN IMMEDIATE … COMMIT) and returns only after the commit
 * is on disk (fsync'd WAL), so a caller may tell an agent about the change
 * once it returns. A failed call changes nothing.
 *
 * Blobs: written to a temp file (blobs/.tmp-<pid>-XXXXXX), fsync'd, renamed
 * to their final name, and the directories fsync'd: a blob is whole or
 * absent. nawal_store_open deletes temp files whose writer process is gone
 * (a writer killed mid-blob); live writers' temp files are left alone, so a
 * CLI command may open the directory while the server runs.
 *
 * Money columns (stake, pool, amounts) hold u64 planck as decimal TEXT, so
 * the full u64 range is stored exactly and reads back through a strict parse.
 *
 * Functions return 0 on success, -1 on error with a message in (err,
 * errlen) (may be NULL); those that can refuse a request for a reason an
 * agent should hear (duplicate, unknown, closed round) return
 * NAWAL_STORE_REFUSED (-2) with the reason in err. */
#ifndef NAWAL_STORE_H
#define NAWAL_STORE_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#include "envelope.h" /* nawal_now_ms */
#include "identity.h"

#define NAWAL_STORE_DB_FILE "state.db"
#define NAWAL_STORE_BLOB_DIR "blobs"
#define NAWAL_STORE_SCHEMA_VERSION 4

enum { NAWAL_STORE_OK = 0, NAWAL_STORE_ERROR = -1, NAWAL_STORE_REFUSED = -2 };

typedef struct nawal_store nawal_store;

/* ---- directory ------------------------------------------------------- */

/* Creates D (and missing parents, mode 0700) with an empty database, an
 * empty blob store and a fresh key pair. Refuses a D that exists and is not
 * empty. On failure removes what it created. */
int nawal_store_init(const char *dir, char *err, size_t errlen);

enum {
    NAWAL_STORE_OPEN_PUBLIC_ONLY = 1 /* load identity.pub only (ledger verify/show): no secret key needed */
};

/* Opens an initialised directory: checks the schema version, applies the
 * connection pragmas, loads the key pair and removes dead writers' blob
 * temp files (with NAWAL_STORE_OPEN_PUBLIC_ONLY: loads identity.pub only and
 * leaves the blob store alone, for read-only uses such as ledger verify). */
int nawal_store_open(nawal_store **out, const char *dir, int flags, char *err, size_t errlen);
void nawal_store_close(nawal_store *s);

const char *nawal_store_dir(const nawal_store *s);
sqlite3 *nawal_store_db(nawal_store *s);
/* The coordinator's public key; the secret key is there unless the store
 * was opened NAWAL_STORE_OPEN_PUBLIC_ONLY (then nawal_store_identity is NULL). */
const uint8_t *nawal_store_pubkey(const nawal_store *s);
const nawal_identity *nawal_store_identity(const nawal_store *s);

/* Transactions for multi-step changes built on the *_tx functions:
 * BEGIN IMMEDIATE / COMMIT (durable on return) / ROLLBACK. */
int nawal_store_begin(nawal_store *s, char *err, size_t errlen);
int nawal_store_commit(nawal_store *s, char *err, size_t errlen);
void nawal_store_rollback(nawal_store *s);
/* 1 if a transaction is open on s. */
int nawal_store_in_tx(nawal_store *s);

/* Wall clock: nawal_now_ms() (Unix milliseconds) is proto/envelope.h's,
 * the one clock of the wire and the database. */
/* "2024-05-01T12:00:00.123Z" (UTC); out needs 32 bytes. */
char *nawal_format_ms(char out[32], int64_t ms);

/* ---- money as TEXT ----------------------------------------------------- */

int nawal_store_bind_u64(sqlite3_stmt *st, int idx, uint64_t v);
/* Strict read of a u64 TEXT column; -1 (with message) if it is not one. */
int nawal_store_column_u64(sqlite3_stmt *st, int col, uint64_t *out, char *err, size_t errlen);

/* ---- rounds ------------------------------------------------------------ */

typedef enum {
    NAWAL_ROUND_ANNOUNCED,
    NAWAL_ROUND_JOINING,
    NAWAL_ROUND_TRAINING,
    NAWAL_ROUND_AGGREGATING,
    NAWAL_ROUND_CLOSED,
    NAWAL_ROUND_FAILED,
} nawal_round_state;

const char *nawal_round_state_name(nawal_round_state st);
/* -1 for an unknown name */
int nawal_round_state_parse(const char *name);

typedef struct {
    int64_t id;                  /* assigned by nawal_store_round_create: 1, 2, … */
    nawal_round_state state;
    uint8_t base_cid[32];
    int has_model_cid;           /* set when closed */
    uint8_t model_cid[32];
    int64_t started_ms;          /* announce time; rewards' time factor counts from here */
    int64_t deadline_ms;
    int64_t closed_ms;           /* 0 until closed/failed */
    uint64_t pool_planck;
    uint32_t target, min;        /* participants */
    int64_t join_deadline_ms;    /* joins accepted before this; 0 at create: the deadline */
    uint64_t min_stake_planck;   /* a joining validator's stake must reach this */
    uint32_t min_quality_ppm;    /* aggregation drops updates reporting less */
} nawal_round;

/* Inserts a round in state announced, from r's base_cid, started_ms,
 * deadline_ms, pool_planck, target, min, join_deadline_ms,
 * min_stake_planck, min_quality_ppm (other fields ignored) and a JSON
 * training config (NULL: "{}"); *id_out gets its id. Wants
 * started <= join deadline <= deadline. */
int nawal_store_round_create(nawal_store *s, const nawal_round *r, const char *config_json, int64_t *id_out,
                             char *err, size_t errlen);
/* The same inside the caller's open transaction. */
int nawal_store_round_create_tx(nawal_store *s, const nawal_round *r, const char *config_json, int64_t *id_out,
                                char *err, size_t errlen);
/* NAWAL_STORE_REFUSED if there is no such round. */
int nawal_store_round_get(nawal_store *s, int64_t id, nawal_round *out, char *err, size_t errlen);
/* The round with the highest id; NAWAL_STORE_REFUSED if there is none. */
int nawal_store_round_latest(nawal_store *s, nawal_round *out, char *err, size_t errlen);
/* Moves an open round to another state; closed and failed rounds are
 * final (NAWAL_STORE_REFUSED), and closing goes through nawal_round_settle
 * (settle.h), not here. Failing sets closed_ms = now. */
int nawal_store_round_set_state(nawal_store *s, int64_t id, nawal_round_state st, char *err, size_t errlen);
/* Training config of a round as a malloc'ed JSON string. */
int nawal_store_round_config(nawal_store *s, int64_t id, char **json_out, char *err, size_t errlen);

/* ---- submissions (accepted updates) ------------------------------------ */

typedef struct {
    int64_t round_id;
    uint8_t validator[32];
    uint8_t delta_cid[32];
    uint64_t num_examples;
    uint32_t quality_ppm;        /* [0, 10^6] */
    int64_t received_ms;
    uint64_t stake_planck;       /* filled from the registry at insert */
    int rejected;                /* set by the aggregation: dropped (not used, not paid) */
    char reason[256];            /* why, when rejected (nawal_store_submissions fills it) */
} nawal_submission;

/* Records an accepted update. Refused (NAWAL_STORE_REFUSED, reason in err):
 * unknown round, round closed or failed, validator not registered or
 * removed, a second update of the same validator in the round, delta blob
 * not in the blob store, quality above 10^6. sub->stake_planck is ignored:
 * the registry's stake at this moment is stored. */
int nawal_store_submission_add(nawal_store *s, const nawal_submission *sub, char *err, size_t errlen);
/* The same inside the caller's open transaction. */
int nawal_store_submission_add_tx(nawal_store *s, const nawal_submission *sub, char *err, size_t errlen);
/* All submissions of a round, ordered by validator key; *out is malloc'ed
 * (NULL when *n == 0). */
int nawal_store_submissions(nawal_store *s, int64_t round_id, nawal_submission **out, size_t *n,
                            char *err, size_t errlen);

/* ---- settings ------------------------------------------------------------ */

/* Small key/value settings (e.g. NAWAL_SETTING_BASE_MODEL). get: *value_out
 * malloc'ed, NAWAL_STORE_REFUSED if unset. set: inside the caller's
 * transaction if one is open, else in its own. */
#define NAWAL_SETTING_BASE_MODEL "base_model_cid" /* the initial global model (hex CID) */
#define NAWAL_SETTING_TLS_CERT "tls_cert"             /* serve: TLS certificate chain (PEM path) */
#define NAWAL_SETTING_TLS_KEY "tls_key"               /* serve: TLS private key (PEM path) */
int nawal_store_setting_get(nawal_store *s, const char *key, char **value_out, char *err, size_t errlen);
int nawal_store_setting_set(nawal_store *s, const char *key, const char *value, char *err, size_t errlen);

/* ---- blob store ---------------------------------------------------------- */

/* blobs/ab/cdef… of a CID; out needs NAWAL_BLOB_PATH_MAX bytes past the
 * directory's length: returns -1 if outlen is too small. */
int nawal_blobstore_path(const nawal_store *s, const uint8_t cid[32], char *out, size_t outlen);
int nawal_blobstore_put_buffer(nawal_store *s, const void *buf, size_t len, uint8_t cid_out[32],
                               char *err, size_t errlen);
/* Copies a file in, hashing as it goes (memory independent of its size). */
int nawal_blobstore_put_file(nawal_store *s, const char *path, uint8_t cid_out[32], uint64_t *size_out,
                             char *err, size_t errlen);
/* 1 if the blob is present, 0 if not. */
int nawal_blobstore_has(nawal_store *s, const uint8_t cid[32]);
/* Opens a blob read-only; returns its fd (>= 0, positioned at 0) or -1.
 * With verify, the whole file is hashed first: a blob whose content does
 * not match its CID is deleted (so it is absent, and can be fetched again)
 * and -1 returned with "corrupt" in the message. */
int nawal_blobstore_open(nawal_store *s, const uint8_t cid[32], int verify, uint64_t *size_out,
                         char *err, size_t errlen);
/* Streaming writes, for blobs produced piecewise (an aggregated model):
 * open a temp file in the store, write any number of times (hashing as it
 * goes), then commit (fsync, rename to the CID's name: whole or absent) or
 * abort (temp file removed). commit and abort free w, whatever happens. */
typedef struct nawal_blob_writer nawal_blob_writer;
int nawal_blobstore_writer_open(nawal_store *s, nawal_blob_writer **w, char *err, size_t errlen);
int nawal_blobstore_writer_write(nawal_blob_writer *w, const void *buf, size_t len, char *err, size_t errlen);
int nawal_blobstore_writer_commit(nawal_blob_writer *w, uint8_t cid_out[32], uint64_t *size_out, char *err,
                                  size_t errlen);
void nawal_blobstore_writer_abort(nawal_blob_writer *w);
/* Moves the file at path, whose content the caller has verified to hash
 * to cid (e.g. a blob received with blobstream.h), into the store by
 * rename (same file system), then fsyncs the directories as a put does. */
int nawal_blobstore_adopt(nawal_store *s, const char *path, const uint8_t cid[32], char *err, size_t errlen);
/* Removes temp files left by dead writers; *removed (may be NULL) counts
 * them. Called by nawal_store_open. */
int nawal_blobstore_cleanup(nawal_store *s, size_t *removed, char *err, size_t errlen);

#define NAWAL_BLOB_PATH_MAX 80 /* "/blobs/ab/" + 62 hex + NUL, with room */

#endif
