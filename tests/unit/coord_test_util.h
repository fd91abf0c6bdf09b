/* coord_test_util.h - helpers for the coordinator tests (test_coord_*.c):
 * a fresh coordinator directory under /tmp, random keys and blobs, and a
 * whole round (create, deltas stored, updates recorded, settled) in one
 * call. Everything asserts through Criterion. */
#ifndef NAWAL_COORD_TEST_UTIL_H
#define NAWAL_COORD_TEST_UTIL_H

#include "ledger.h"
#include "registry.h"
#include "rewards.h"
#include "settle.h"
#include "store.h"
#include "test_util.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* mkdtemp root; the coordinator directory is root/coord. */
static inline void coord_make_root(char *root, size_t cap, const char *name) {
    snprintf(root, cap, "/tmp/nawal_test_%s.XXXXXX", name);
    cr_assert(mkdtemp(root), "mkdtemp");
}

static inline void coord_rm_rf(const char *path) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    cr_assert_eq(system(cmd), 0);
}

static inline nawal_store *coord_open(const char *dir) {
    char err[512] = "";
    nawal_store *s = NULL;
    cr_assert_eq(nawal_store_open(&s, dir, 0, err, sizeof err), 0, "open %s: %s", dir, err);
    return s;
}

static inline nawal_store *coord_init_open(const char *dir) {
    char err[512] = "";
    cr_assert_eq(nawal_store_init(dir, err, sizeof err), 0, "init %s: %s", dir, err);
    return coord_open(dir);
}

static inline void coord_rand_bytes(uint64_t *seed, uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)test_rand_u64(seed);
}

static inline void coord_add_validator(nawal_store *s, const uint8_t pk[32], uint64_t stake) {
    char err[512] = "";
    cr_assert_eq(nawal_registry_add(s, pk, stake, err, sizeof err), 0, "registry add: %s", err);
}

/* Stores a random blob of len bytes; cid gets its CID. */
static inline void coord_put_random_blob(nawal_store *s, uint64_t *seed, size_t len, uint8_t cid[32]) {
    uint8_t *buf = malloc(len ? len : 1);
    cr_assert(buf);
    coord_rand_bytes(seed, buf, len);
    char err[512] = "";
    cr_assert_eq(nawal_blobstore_put_buffer(s, buf, len, cid, err, sizeof err), 0, "blob put: %s", err);
    free(buf);
}

/* Creates a round started at t0 (pool, base), records an update from each
 * of the n validators (random quality, a random delta blob, received
 * random 0..90 min after t0), and settles it. Returns the round id. */
static inline int64_t coord_run_round(nawal_store *s, uint64_t *seed, const uint8_t (*pks)[32], size_t n, uint64_t pool) {
    char err[512] = "";
    nawal_round r = {0};
    coord_put_random_blob(s, seed, 64, r.base_cid);
    r.started_ms = 1700000000000ll + (int64_t)(test_rand_u64(seed) % 1000000000ull);
    r.deadline_ms = r.started_ms + 2 * 3600000ll;
    r.pool_planck = pool;
    r.target = (uint32_t)(n ? n : 1);
    r.min = 1;
    int64_t id;
    cr_assert_eq(nawal_store_round_create(s, &r, "{\"steps\": 10}", &id, err, sizeof err), 0, "round create: %s", err);
    for (size_t i = 0; i < n; i++) {
        nawal_submission sub = {0};
        sub.round_id = id;
        memcpy(sub.validator, pks[i], 32);
        coord_put_random_blob(s, seed, 32 + (size_t)test_rand_int(seed, 200), sub.delta_cid);
        sub.num_examples = 1 + test_rand_u64(seed) % 10000;
        sub.quality_ppm = (uint32_t)(test_rand_u64(seed) % 1000001);
        sub.received_ms = r.started_ms + (int64_t)(test_rand_u64(seed) % (90 * 60000ull));
        cr_assert_eq(nawal_store_submission_add(s, &sub, err, sizeof err), 0, "submission: %s", err);
    }
    uint8_t model[32];
    coord_put_random_blob(s, seed, 100, model);
    nawal_settlement res;
    cr_assert_eq(nawal_round_settle(s, id, model, r.started_ms + 7200000, &res, err, sizeof err), 0, "settle: %s", err);
    cr_assert_eq(res.paid_planck + res.undistributed_planck, pool);
    return id;
}

/* a whole file as a NUL-terminated string (NULL if it cannot be opened);
 * *len (may be NULL) gets its length */
static inline char *coord_slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)(n > 0 ? n : 0) + 1);
    size_t got = b ? fread(b, 1, (size_t)(n > 0 ? n : 0), f) : 0;
    if (b) b[got] = 0;
    fclose(f);
    if (len) *len = got;
    return b;
}

#endif
