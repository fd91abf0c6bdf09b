/* store_internal.h - helpers the coordinator's storage files share
 * (store.c, blobstore.c, registry.c, ledger.c, settle.c); not for callers
 * outside coordinator/. */
#ifndef NAWAL_STORE_INTERNAL_H
#define NAWAL_STORE_INTERNAL_H

#include "store.h"

/* "<dir>: <what>: <sqlite message>", returns -1. */
int nawal_store_sql_fail(nawal_store *s, char *err, size_t errlen, const char *what);
/* sqlite3_prepare_v2 with an error message; *st is NULL on failure. */
int nawal_store_prepare(nawal_store *s, sqlite3_stmt **st, const char *sql, char *err, size_t errlen);
/* Copies a BLOB column of exactly 32 bytes; -1 if it is anything else. */
int nawal_store_column_key(sqlite3_stmt *st, int col, uint8_t out[32]);

#endif
