/* test_coord_store.c - the coordinator directory (coordinator/store.h,
 * registry.h, settle.h): init layout and refusal of a non-empty directory,
 * blob put/has/open with CID verification (a corrupted blob is detected and
 * removed), dead writers' temp files cleaned on open, the validator
 * registry with its min-stake join check, rounds and the refusals of
 * submissions, and settlement paying a round exactly once. */
#include "coord_test_util.h"
#include "cid.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char root[256], dir[300];

static void setup(void) {
    coord_make_root(root, sizeof root, "coord_store");
    snprintf(dir, sizeof dir, "%s/coord", root);
}
static void teardown(void) { coord_rm_rf(root); }

TestSuite(coord_store, .init = setup, .fini = teardown);

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

Test(coord_store, init_layout_and_refusals) {
    char err[512] = "", p[512];
    nawal_store *s = coord_init_open(dir);
    snprintf(p, sizeof p, "%s/state.db", dir);
    cr_assert(file_exists(p));
    snprintf(p, sizeof p, "%s/blobs", dir);
    cr_assert(file_exists(p));
    snprintf(p, sizeof p, "%s/identity.key", dir);
    struct stat sb;
    cr_assert_eq(stat(p, &sb), 0);
    cr_assert_eq(sb.st_mode & 0777, 0600, "secret key mode %o", sb.st_mode & 0777);
    snprintf(p, sizeof p, "%s/identity.pub", dir);
    cr_assert(file_exists(p));
    cr_assert(nawal_store_identity(s), "secret key loaded");

    /* WAL journal, full sync, foreign keys on this connection */
    sqlite3_stmt *st;
    cr_assert_eq(sqlite3_prepare_v2(nawal_store_db(s), "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    cr_assert_str_eq((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    cr_assert_eq(sqlite3_prepare_v2(nawal_store_db(s), "PRAGMA synchronous", -1, &st, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    cr_assert_eq(sqlite3_column_int(st, 0), 2, "synchronous=FULL");
    sqlite3_finalize(st);
    cr_assert_eq(sqlite3_prepare_v2(nawal_store_db(s), "PRAGMA foreign_keys", -1, &st, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    cr_assert_eq(sqlite3_column_int(st, 0), 1);
    sqlite3_finalize(st);
    nawal_store_close(s);

    /* an initialised directory, or any non-empty one, is refused untouched */
    cr_assert_eq(nawal_store_init(dir, err, sizeof err), -1);
    cr_assert(strstr(err, "not empty"), "%s", err);
    char other[300];
    snprintf(other, sizeof other, "%s/other", root);
    cr_assert_eq(mkdir(other, 0700), 0);
    snprintf(p, sizeof p, "%s/notes.txt", other);
    FILE *f = fopen(p, "w");
    cr_assert(f);
    fputs("keep me\n", f);
    fclose(f);
    cr_assert_eq(nawal_store_init(other, err, sizeof err), -1);
    cr_assert(file_exists(p));
    snprintf(p, sizeof p, "%s/state.db", other);
    cr_assert(!file_exists(p), "refused init wrote a database");
    /* a file where the directory should be */
    snprintf(p, sizeof p, "%s/other/notes.txt", root);
    cr_assert_eq(nawal_store_init(p, err, sizeof err), -1);

    /* an existing empty directory is fine */
    char empty[300];
    snprintf(empty, sizeof empty, "%s/empty", root);
    cr_assert_eq(mkdir(empty, 0700), 0);
    cr_assert_eq(nawal_store_init(empty, err, sizeof err), 0, "%s", err);

    /* opening something that is not a coordinator directory */
    cr_assert_eq(nawal_store_open(&s, other, 0, err, sizeof err), -1);
    cr_assert(strstr(err, "init"), "%s", err);
    cr_assert_null(s);

    /* public-only open needs no secret key */
    snprintf(p, sizeof p, "%s/identity.key", dir);
    cr_assert_eq(chmod(p, 0644), 0);
    cr_assert_eq(nawal_store_open(&s, dir, 0, err, sizeof err), -1, "world-readable secret key accepted");
    cr_assert_eq(nawal_store_open(&s, dir, NAWAL_STORE_OPEN_PUBLIC_ONLY, err, sizeof err), 0, "%s", err);
    cr_assert_null(nawal_store_identity(s));
    nawal_store_close(s);
}

Test(coord_store, blobs_put_get_verify) {
    uint64_t seed = test_seed("coord_store.blobs");
    nawal_store *s = coord_init_open(dir);
    char err[512] = "", path[512];
    for (int t = 0; t < 20; t++) {
        size_t len = t == 0 ? 0 : 1 + (size_t)test_rand_int(&seed, 5000); /* one empty blob: a second would exist already */
        uint8_t *buf = malloc(len + 1), cid[32], want[32];
        cr_assert(buf);
        coord_rand_bytes(&seed, buf, len);
        cr_assert_eq(nawal_cid_of_buffer(want, buf, len), 0);
        cr_assert_eq(nawal_blobstore_has(s, want), 0);
        cr_assert_eq(nawal_blobstore_put_buffer(s, buf, len, cid, err, sizeof err), 0, "%s", err);
        cr_assert(!memcmp(cid, want, 32));
        cr_assert_eq(nawal_blobstore_has(s, cid), 1);
        /* layout blobs/ab/cdef… */
        char hex[NAWAL_CID_HEX_BYTES], expect[512];
        nawal_cid_to_hex(hex, cid);
        snprintf(expect, sizeof expect, "%s/blobs/%.2s/%s", dir, hex, hex + 2);
        cr_assert_eq(nawal_blobstore_path(s, cid, path, sizeof path), 0);
        cr_assert_str_eq(path, expect);
        /* idempotent */
        cr_assert_eq(nawal_blobstore_put_buffer(s, buf, len, cid, err, sizeof err), 0, "%s", err);
        uint64_t size = 0;
        int fd = nawal_blobstore_open(s, cid, 1, &size, err, sizeof err);
        cr_assert(fd >= 0, "%s", err);
        cr_assert_eq(size, len);
        uint8_t *back = malloc(len + 1);
        cr_assert_eq(read(fd, back, len + 1), (ssize_t)len);
        cr_assert(!memcmp(back, buf, len));
        close(fd);
        free(back);
        free(buf);
    }

    /* a file bigger than the copy chunk, hashed while copied */
    char src[512];
    snprintf(src, sizeof src, "%s/big.bin", root);
    size_t big = (3u << 20) + 12345;
    uint8_t *buf = malloc(big), cid[32], want[32];
    cr_assert(buf);
    coord_rand_bytes(&seed, buf, big);
    FILE *f = fopen(src, "wb");
    cr_assert(f);
    cr_assert_eq(fwrite(buf, 1, big, f), big);
    fclose(f);
    uint64_t size = 0;
    cr_assert_eq(nawal_blobstore_put_file(s, src, cid, &size, err, sizeof err), 0, "%s", err);
    cr_assert_eq(size, big);
    cr_assert_eq(nawal_cid_of_buffer(want, buf, big), 0);
    cr_assert(!memcmp(cid, want, 32));
    int fd = nawal_blobstore_open(s, cid, 1, NULL, err, sizeof err);
    cr_assert(fd >= 0, "%s", err);
    close(fd);
    free(buf);
    cr_assert_eq(nawal_blobstore_put_file(s, root, cid, NULL, err, sizeof err), -1, "a directory is not a blob");
    cr_assert_eq(nawal_blobstore_put_file(s, "/nonexistent/x", cid, NULL, err, sizeof err), -1);

    /* corrupt one byte of the stored file: unverified open still opens it,
     * a verified open detects it and removes the blob */
    cr_assert_eq(nawal_blobstore_path(s, want, path, sizeof path), 0);
    int wfd = open(path, O_RDWR);
    cr_assert(wfd >= 0);
    off_t at = (off_t)(test_rand_u64(&seed) % big);
    uint8_t b;
    cr_assert_eq(pread(wfd, &b, 1, at), 1);
    b ^= (uint8_t)(1 + test_rand_int(&seed, 255));
    cr_assert_eq(pwrite(wfd, &b, 1, at), 1);
    close(wfd);
    fd = nawal_blobstore_open(s, want, 0, NULL, err, sizeof err);
    cr_assert(fd >= 0);
    close(fd);
    cr_assert_eq(nawal_blobstore_open(s, want, 1, NULL, err, sizeof err), -1);
    cr_assert(strstr(err, "corrupt"), "%s", err);
    cr_assert_eq(nawal_blobstore_has(s, want), 0, "a corrupt blob must be absent after detection");
    /* and can be stored again */
    cr_assert_eq(nawal_blobstore_put_file(s, src, cid, NULL, err, sizeof err), 0, "%s", err);
    fd = nawal_blobstore_open(s, want, 1, NULL, err, sizeof err);
    cr_assert(fd >= 0, "%s", err);
    close(fd);

    /* a missing blob */
    uint8_t nope[32] = {1, 2, 3};
    cr_assert_eq(nawal_blobstore_open(s, nope, 1, NULL, err, sizeof err), -1);
    cr_assert(strstr(err, "not in the blob store"), "%s", err);
    nawal_store_close(s);
}

Test(coord_store, dead_writer_temp_files_cleaned) {
    nawal_store *s = coord_init_open(dir);
    uint64_t seed = test_seed("coord_store.temps");
    uint8_t cid[32];
    coord_put_random_blob(s, &seed, 100, cid);
    char hex[NAWAL_CID_HEX_BYTES];
    nawal_cid_to_hex(hex, cid);
    nawal_store_close(s);

    pid_t dead = fork();
    cr_assert(dead >= 0);
    if (dead == 0) _exit(0);
    cr_assert_eq(waitpid(dead, NULL, 0), dead);
    char a[512], b[512], live[512], other[512];
    snprintf(a, sizeof a, "%s/blobs/.tmp-%ld-aaaaaa", dir, (long)dead);
    snprintf(b, sizeof b, "%s/blobs/%.2s/.tmp-%ld-bbbbbb", dir, hex, (long)dead);
    snprintf(live, sizeof live, "%s/blobs/.tmp-%ld-cccccc", dir, (long)getppid()); /* a live process */
    snprintf(other, sizeof other, "%s/blobs/README", dir);
    const char *files[] = {a, b, live, other};
    for (int i = 0; i < 4; i++) {
        FILE *f = fopen(files[i], "w");
        cr_assert(f, "%s", files[i]);
        fputs("partial", f);
        fclose(f);
    }
    s = coord_open(dir);
    cr_assert(!file_exists(a), "dead writer's temp file left");
    cr_assert(!file_exists(b), "dead writer's temp file left in a sub-directory");
    cr_assert(file_exists(live), "a live writer's temp file was removed");
    cr_assert(file_exists(other), "an unrelated file was removed");
    cr_assert_eq(nawal_blobstore_has(s, cid), 1);
    nawal_store_close(s);
}

Test(coord_store, registry_and_min_stake) {
    uint64_t seed = test_seed("coord_store.registry");
    nawal_store *s = coord_init_open(dir);
    char err[512] = "";
    uint8_t pk[4][32];
    for (int i = 0; i < 4; i++) coord_rand_bytes(&seed, pk[i], 32);
    uint64_t min = 1000 * NAWAL_PLANCK_PER_DALLA;
    coord_add_validator(s, pk[0], min);          /* exactly the minimum */
    coord_add_validator(s, pk[1], min - 1);      /* one planck short */
    coord_add_validator(s, pk[2], UINT64_MAX);   /* the whole u64 range stored exactly */

    cr_assert_eq(nawal_registry_add(s, pk[0], 5, err, sizeof err), NAWAL_STORE_REFUSED);
    cr_assert(strstr(err, "already registered"), "%s", err);

    nawal_validator *v;
    size_t n;
    cr_assert_eq(nawal_registry_list(s, 0, &v, &n, err, sizeof err), 0, "%s", err);
    cr_assert_eq(n, 3);
    int seen = 0;
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < 3; k++)
            if (!memcmp(v[i].pubkey, pk[k], 32)) {
                seen |= 1 << k;
                cr_assert_eq(v[i].stake_planck, k == 0 ? min : k == 1 ? min - 1 : UINT64_MAX);
                cr_assert(!v[i].removed);
            }
    cr_assert_eq(seen, 7);
    free(v);

    char why[512] = "";
    cr_assert_eq(nawal_registry_can_join(s, pk[0], min, why, sizeof why), 1);
    cr_assert_eq(nawal_registry_can_join(s, pk[1], min, why, sizeof why), 0);
    cr_assert(strstr(why, "below the minimum"), "%s", why);
    cr_assert_eq(nawal_registry_can_join(s, pk[1], min - 1, why, sizeof why), 1);
    cr_assert_eq(nawal_registry_can_join(s, pk[2], UINT64_MAX, why, sizeof why), 1);
    cr_assert_eq(nawal_registry_can_join(s, pk[3], 0, why, sizeof why), 0);
    cr_assert(strstr(why, "not registered"), "%s", why);

    /* removal: no longer joins, listed only with include_removed, kept on record */
    cr_assert_eq(nawal_registry_remove(s, pk[0], err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_registry_remove(s, pk[0], err, sizeof err), NAWAL_STORE_REFUSED);
    cr_assert_eq(nawal_registry_remove(s, pk[3], err, sizeof err), NAWAL_STORE_REFUSED);
    cr_assert(strstr(err, "not registered"), "%s", err);
    cr_assert_eq(nawal_registry_can_join(s, pk[0], 0, why, sizeof why), 0);
    cr_assert(strstr(why, "removed"), "%s", why);
    cr_assert_eq(nawal_registry_list(s, 0, &v, &n, err, sizeof err), 0);
    cr_assert_eq(n, 2);
    free(v);
    cr_assert_eq(nawal_registry_list(s, 1, &v, &n, err, sizeof err), 0);
    cr_assert_eq(n, 3);
    free(v);
    nawal_validator one;
    cr_assert_eq(nawal_registry_get(s, pk[0], &one, err, sizeof err), 0);
    cr_assert(one.removed && one.removed_ms > 0);

    /* re-adding re-activates with the new stake */
    coord_add_validator(s, pk[0], 2 * min);
    cr_assert_eq(nawal_registry_can_join(s, pk[0], 2 * min, why, sizeof why), 1);
    nawal_store_close(s);

    /* all of it survives a reopen */
    s = coord_open(dir);
    cr_assert_eq(nawal_registry_get(s, pk[2], &one, err, sizeof err), 0);
    cr_assert_eq(one.stake_planck, UINT64_MAX);
    cr_assert_eq(nawal_registry_get(s, pk[0], &one, err, sizeof err), 0);
    cr_assert_eq(one.stake_planck, 2 * min);
    cr_assert(!one.removed);
    nawal_store_close(s);
}

Test(coord_store, rounds_submissions_settle) {
    uint64_t seed = test_seed("coord_store.rounds");
    nawal_store *s = coord_init_open(dir);
    char err[512] = "";
    uint8_t pk[3][32], stranger[32];
    for (int i = 0; i < 3; i++) {
        coord_rand_bytes(&seed, pk[i], 32);
        coord_add_validator(s, pk[i], (uint64_t)(i + 1) * 3000 * NAWAL_PLANCK_PER_DALLA);
    }
    coord_rand_bytes(&seed, stranger, 32);

    nawal_round r = {0}, got;
    cr_assert_eq(nawal_store_round_latest(s, &got, err, sizeof err), NAWAL_STORE_REFUSED);
    coord_put_random_blob(s, &seed, 64, r.base_cid);
    r.started_ms = 1700000000000ll;
    r.deadline_ms = r.started_ms + 3600000;
    r.pool_planck = UINT64_MAX; /* the largest pool */
    r.target = 3;
    r.min = 2;
    int64_t id;
    cr_assert_eq(nawal_store_round_create(s, &r, "{\"lr\": 0.001}", &id, err, sizeof err), 0, "%s", err);
    cr_assert_eq(id, 1);
    r.min = 4;
    cr_assert_eq(nawal_store_round_create(s, &r, NULL, NULL, err, sizeof err), -1, "min above target accepted");
    r.min = 2;
    cr_assert_eq(nawal_store_round_create(s, &r, "{not json", NULL, err, sizeof err), -1, "bad JSON config accepted");
    cr_assert_eq(nawal_store_round_get(s, id, &got, err, sizeof err), 0, "%s", err);
    cr_assert_eq(got.state, NAWAL_ROUND_ANNOUNCED);
    cr_assert_eq(got.pool_planck, UINT64_MAX);
    cr_assert_eq(got.deadline_ms, r.deadline_ms);
    cr_assert(!memcmp(got.base_cid, r.base_cid, 32));
    char *cfg;
    cr_assert_eq(nawal_store_round_config(s, id, &cfg, err, sizeof err), 0);
    cr_assert(strstr(cfg, "0.001"));
    free(cfg);
    cr_assert_eq(nawal_store_round_set_state(s, id, NAWAL_ROUND_TRAINING, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_store_round_set_state(s, id, NAWAL_ROUND_CLOSED, err, sizeof err), -1, "close without settling");

    nawal_submission sub = {0};
    sub.round_id = id;
    sub.num_examples = 100;
    sub.quality_ppm = 800000;
    sub.received_ms = r.started_ms + 60000;
    for (int i = 0; i < 3; i++) {
        memcpy(sub.validator, pk[i], 32);
        coord_put_random_blob(s, &seed, 200, sub.delta_cid);
        cr_assert_eq(nawal_store_submission_add(s, &sub, err, sizeof err), 0, "%s", err);
    }
    /* refusals */
    cr_assert_eq(nawal_store_submission_add(s, &sub, err, sizeof err), NAWAL_STORE_REFUSED);
    cr_assert(strstr(err, "second update"), "%s", err);
    memcpy(sub.validator, stranger, 32);
    cr_assert_eq(nawal_store_submission_add(s, &sub, err, sizeof err), NAWAL_STORE_REFUSED);
    cr_assert(strstr(err, "not registered"), "%s", err);
    memset(sub.delta_cid, 9, 32); /* no such blob */
    coord_add_validator(s, stranger, 1);
    cr_assert_eq(nawal_store_submission_add(s, &sub, err, sizeof err), NAWAL_STORE_REFUSED);
    cr_assert(strstr(err, "not in the blob store"), "%s", err);
    coord_put_random_blob(s, &seed, 10, sub.delta_cid);
    sub.round_id = 99;
    cr_assert_eq(nawal_store_submission_add(s, &sub, err, sizeof err), NAWAL_STORE_REFUSED);
    cr_assert(strstr(err, "no round"), "%s", err);
    sub.round_id = id;
    sub.quality_ppm = 1000001;
    cr_assert_eq(nawal_store_submission_add(s, &sub, err, sizeof err), NAWAL_STORE_REFUSED);

    nawal_submission *subs;
    size_t n;
    cr_assert_eq(nawal_store_submissions(s, id, &subs, &n, err, sizeof err), 0);
    cr_assert_eq(n, 3);
    for (size_t i = 0; i < n; i++) /* the stake at submission time is recorded */
        for (int k = 0; k < 3; k++)
            if (!memcmp(subs[i].validator, pk[k], 32))
                cr_assert_eq(subs[i].stake_planck, (uint64_t)(k + 1) * 3000 * NAWAL_PLANCK_PER_DALLA);
    for (size_t i = 1; i < n; i++) cr_assert(memcmp(subs[i - 1].validator, subs[i].validator, 32) < 0, "not in key order");
    free(subs);

    /* settle: the model must be stored; then paid exactly once */
    uint8_t model[32] = {7};
    cr_assert_eq(nawal_round_settle(s, id, model, r.started_ms + 7200000, NULL, err, sizeof err), NAWAL_STORE_REFUSED);
    coord_put_random_blob(s, &seed, 300, model);
    nawal_settlement res;
    cr_assert_eq(nawal_round_settle(s, id, model, r.started_ms + 7200000, &res, err, sizeof err), 0, "%s", err);
    cr_assert_eq(res.n_paid, 3);
    cr_assert_eq(res.paid_planck, UINT64_MAX);
    cr_assert_eq(res.undistributed_planck, 0);
    cr_assert_eq(res.ledger_seq, 1);
    cr_assert_eq(nawal_round_settle(s, id, model, r.started_ms + 7200001, NULL, err, sizeof err), NAWAL_STORE_REFUSED);
    cr_assert(strstr(err, "already closed"), "%s", err);
    cr_assert_eq(nawal_store_round_get(s, id, &got, err, sizeof err), 0);
    cr_assert_eq(got.state, NAWAL_ROUND_CLOSED);
    cr_assert(got.has_model_cid && !memcmp(got.model_cid, model, 32));
    cr_assert_eq(nawal_store_round_set_state(s, id, NAWAL_ROUND_TRAINING, err, sizeof err), NAWAL_STORE_REFUSED);
    /* a closed round takes no more updates */
    memcpy(sub.validator, stranger, 32);
    sub.quality_ppm = 1;
    cr_assert_eq(nawal_store_submission_add(s, &sub, err, sizeof err), NAWAL_STORE_REFUSED);
    cr_assert(strstr(err, "closed"), "%s", err);

    /* rewards rows sum to the pool; the ledger verifies */
    sqlite3_stmt *st;
    cr_assert_eq(sqlite3_prepare_v2(nawal_store_db(s), "SELECT amount_planck FROM rewards WHERE round_id = ?1", -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_int64(st, 1, id);
    unsigned __int128 sum = 0;
    int rows = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        uint64_t a;
        cr_assert_eq(nawal_store_column_u64(st, 0, &a, err, sizeof err), 0);
        sum += a;
        rows++;
    }
    sqlite3_finalize(st);
    cr_assert_eq(rows, 3);
    cr_assert(sum == UINT64_MAX);
    nawal_ledger_report rep;
    cr_assert_eq(nawal_ledger_verify(s, &rep, err, sizeof err), 0, "%s", rep.reason);
    cr_assert_eq(rep.records, 1);

    /* a failed round: final, takes no updates, cannot be settled */
    int64_t id2;
    cr_assert_eq(nawal_store_round_create(s, &r, NULL, &id2, err, sizeof err), 0);
    cr_assert_eq(nawal_store_round_set_state(s, id2, NAWAL_ROUND_FAILED, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_round_settle(s, id2, model, 1, NULL, err, sizeof err), NAWAL_STORE_REFUSED);
    cr_assert_eq(nawal_store_round_latest(s, &got, err, sizeof err), 0);
    cr_assert_eq(got.id, id2);
    cr_assert_eq(got.state, NAWAL_ROUND_FAILED);
    cr_assert(got.closed_ms > 0);
    nawal_store_close(s);
}
