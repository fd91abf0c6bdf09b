/* patches.c - model patches of the global models (see patches.h). */
#include "patches.h"

#include "cid.h"
#include "error.h"
#include "model_patch.h"
#include "store_internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Size of blob cid (its path in path[0..cap)), or -1 when it is not in the store. */
static int64_t blob_size(nawal_store *s, const uint8_t cid[32], char *path, size_t cap) {
    struct stat sb;
    if (nawal_blobstore_path(s, cid, path, cap) || stat(path, &sb) != 0) return -1;
    return (int64_t)sb.st_size;
}

int nawal_patch_record(nawal_store *s, const nawal_patch_row *r, char *err, size_t errlen) {
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st,
                            "INSERT INTO model_patches(to_cid, from_cid, patch_cid, patch_size) VALUES(?1, ?2, ?3, ?4)"
                            " ON CONFLICT(to_cid, from_cid) DO UPDATE SET patch_cid = ?3, patch_size = ?4",
                            err, errlen))
        return -1;
    sqlite3_bind_blob(st, 1, r->to_cid, 32, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, r->from_cid, 32, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, r->patch_cid, 32, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)r->patch_size);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : nawal_store_sql_fail(s, err, errlen, "record a model patch");
    sqlite3_finalize(st);
    return rc;
}

int nawal_patch_make(nawal_store *s, const uint8_t from_cid[32], const uint8_t to_cid[32], nawal_patch_row *out,
                     char *err, size_t errlen) {
    char from_path[4096], to_path[4096];
    int64_t from_size = blob_size(s, from_cid, from_path, sizeof from_path),
            to_size = blob_size(s, to_cid, to_path, sizeof to_path);
    if (from_size < 0 || to_size < 0)
        return nawal_fail(err, errlen, "model patch: the %s model is not in the blob store", from_size < 0 ? "base" : "new");
    if (from_size != to_size) {
        nawal_fail(err, errlen, "the models differ in length (%lld and %lld bytes)", (long long)from_size,
                   (long long)to_size);
        return 0;
    }
    uint8_t *frame;
    size_t len;
    /* the store's blobs are named by their CIDs: not hashed again */
    if (nawal_model_patch_make_files(from_path, from_cid, to_path, to_cid, 0, &frame, &len, err, errlen)) return -1;
    if ((uint64_t)len * NAWAL_PATCH_KEEP_DIV >= (uint64_t)to_size) {
        nawal_fail(err, errlen, "a patch of %zu bytes is not under 1/%d of the %lld-byte model", len,
                   NAWAL_PATCH_KEEP_DIV, (long long)to_size);
        free(frame);
        return 0;
    }
    nawal_patch_row r;
    memcpy(r.to_cid, to_cid, 32);
    memcpy(r.from_cid, from_cid, 32);
    r.patch_size = len;
    int rc = nawal_blobstore_put_buffer(s, frame, len, r.patch_cid, err, errlen) ? -1 : 1;
    free(frame);
    if (rc == 1) *out = r;
    return rc;
}

int nawal_patch_find(nawal_store *s, const uint8_t to_cid[32], nawal_patch_row *out, char *err, size_t errlen) {
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st,
                            "SELECT from_cid, patch_cid, patch_size FROM model_patches WHERE to_cid = ?1 ORDER BY rowid DESC",
                            err, errlen))
        return -1;
    sqlite3_bind_blob(st, 1, to_cid, 32, SQLITE_STATIC);
    int rc = 0, step = SQLITE_DONE;
    while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        nawal_patch_row r;
        memcpy(r.to_cid, to_cid, 32);
        if (nawal_store_column_key(st, 0, r.from_cid) || nawal_store_column_key(st, 1, r.patch_cid)) continue;
        r.patch_size = (uint64_t)sqlite3_column_int64(st, 2);
        char path[4096];
        if (blob_size(s, r.patch_cid, path, sizeof path) != (int64_t)r.patch_size) continue; /* blob gone: no patch to offer */
        *out = r;
        rc = 1;
    }
    if (rc == 0 && step != SQLITE_DONE) rc = nawal_store_sql_fail(s, err, errlen, "look up a model patch");
    sqlite3_finalize(st);
    return rc;
}

int nawal_patch_is_blob(nawal_store *s, const uint8_t cid[32]) {
    sqlite3_stmt *st;
    if (nawal_store_prepare(s, &st, "SELECT EXISTS(SELECT 1 FROM model_patches WHERE patch_cid = ?1)", NULL, 0)) return 0;
    sqlite3_bind_blob(st, 1, cid, 32, SQLITE_STATIC);
    int yes = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return yes;
}
