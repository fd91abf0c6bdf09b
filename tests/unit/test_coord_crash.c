/* test_coord_crash.c - the coordinator's storage under `kill -9`.
 *
 * A child process runs a scripted federation against one coordinator
 * directory: register validators, start a round, store each validator's
 * delta blob and record its update, store the new model and settle the
 * round (rewards + ledger record + closed, one transaction), next round…
 * After every commit it reports what it committed on a pipe. It resumes
 * from whatever the directory holds, so each child carries on where the
 * killed one stopped. The parent SIGKILLs it at a random moment (a few ms
 * to 50 ms in), many times over, and after each kill reopens the directory
 * and checks:
 *   - everything the child reported as committed is there (validators,
 *     updates with their delta CIDs, closed rounds);
 *   - each round is either closed with one ledger record and a rewards row
 *     per update summing to its pool (less what the record says is
 *     undistributed), or open with no rewards and no record; only the
 *     latest round may be open (a restart resumes it);
 *   - no round is paid twice (the child also retries settling a closed
 *     round after every restart and must be refused);
 *   - the ledger verifies;
 *   - the blob store holds no partial blob: after the reopen no temp file
 *     is left, every blob hashes to its name, and every update's delta and
 *     every closed round's model is present. */
#include "coord_test_util.h"
#include "cid.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NVAL 4
#define ITERATIONS 40
#define MAX_ROUNDS 1000

static char root[256], dir[300];

static void setup(void) {
    coord_make_root(root, sizeof root, "coord_crash");
    snprintf(dir, sizeof dir, "%s/coord", root);
}
static void teardown(void) { coord_rm_rf(root); }

TestSuite(coord_crash, .init = setup, .fini = teardown);

/* ---- child: the scripted federation ------------------------------------- */

static int report_fd = -1;

static void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void report(const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0 || n > (int)sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    /* a line is shorter than PIPE_BUF: written whole or not at all */
    while (write(report_fd, line, (size_t)n) < 0 && errno == EINTR) {}
}

static void child_fail(const char *what, const char *err) {
    report("X %s: %s", what, err);
    _exit(3);
}

static void hex32(char out[65], const uint8_t b[32]) { nawal_hex_encode(out, b, 32); }

static int submitted(nawal_store *s, int64_t round, const uint8_t pk[32]) {
    nawal_submission *subs;
    size_t n;
    char err[512];
    if (nawal_store_submissions(s, round, &subs, &n, err, sizeof err)) child_fail("submissions", err);
    int found = 0;
    for (size_t i = 0; i < n; i++) found |= !memcmp(subs[i].validator, pk, 32);
    free(subs);
    return found;
}

static void put_blob(nawal_store *s, uint64_t *rng, size_t len, uint8_t cid[32]) {
    uint8_t *buf = malloc(len);
    if (!buf) child_fail("blob", "out of memory");
    for (size_t i = 0; i < len; i++) buf[i] = (uint8_t)test_rand_u64(rng);
    char err[512], hex[65];
    if (nawal_blobstore_put_buffer(s, buf, len, cid, err, sizeof err)) child_fail("blob put", err);
    free(buf);
    hex32(hex, cid);
    report("B %s", hex);
}

/* Tries to settle a closed round again: must be refused. */
static void settle_again(nawal_store *s, const nawal_round *r) {
    char err[512] = "";
    int rc = nawal_round_settle(s, r->id, r->model_cid, r->closed_ms + 1, NULL, err, sizeof err);
    if (rc != NAWAL_STORE_REFUSED) child_fail("second settle was not refused", err);
}

static void child_run(const uint8_t (*keys)[32], uint64_t rng) {
    char err[512], hex[65], hex2[65];
    nawal_store *s = NULL;
    if (nawal_store_open(&s, dir, 0, err, sizeof err)) child_fail("open", err);
    nawal_round r;
    int rc = nawal_store_round_latest(s, &r, err, sizeof err);
    if (rc == 0 && r.state == NAWAL_ROUND_CLOSED) settle_again(s, &r);
    else if (rc != 0 && rc != NAWAL_STORE_REFUSED) child_fail("latest round", err);

    for (int k = 0; k < NVAL; k++) {
        nawal_validator v;
        rc = nawal_registry_get(s, keys[k], &v, err, sizeof err);
        if (rc == NAWAL_STORE_REFUSED) {
            if (nawal_registry_add(s, keys[k], (uint64_t)k * 4000 * NAWAL_PLANCK_PER_DALLA, err, sizeof err))
                child_fail("registry add", err);
            hex32(hex, keys[k]);
            report("V %s", hex);
        } else if (rc) child_fail("registry get", err);
    }

    for (int rounds = 0; rounds < MAX_ROUNDS; rounds++) {
        rc = nawal_store_round_latest(s, &r, err, sizeof err);
        if (rc == NAWAL_STORE_REFUSED || (rc == 0 && r.state == NAWAL_ROUND_CLOSED)) {
            nawal_round nr = {0};
            if (rc == 0) memcpy(nr.base_cid, r.model_cid, 32); /* next round starts from the new model */
            else put_blob(s, &rng, 4096, nr.base_cid);
            nr.started_ms = nawal_now_ms();
            nr.deadline_ms = nr.started_ms + 2 * 3600000ll;
            nr.pool_planck = test_rand_u64(&rng) >> test_rand_int(&rng, 64);
            nr.target = NVAL;
            nr.min = 1;
            int64_t id;
            if (nawal_store_round_create(s, &nr, "{\"steps\": 1}", &id, err, sizeof err)) child_fail("round create", err);
            report("R %lld %llu", (long long)id, (unsigned long long)nr.pool_planck);
            if (nawal_store_round_get(s, id, &r, err, sizeof err)) child_fail("round get", err);
        } else if (rc) child_fail("latest round", err);

        /* the open round: every validator not yet in, then settle */
        for (int k = 0; k < NVAL; k++) {
            if (submitted(s, r.id, keys[k])) continue;
            nawal_submission sub = {0};
            sub.round_id = r.id;
            memcpy(sub.validator, keys[k], 32);
            put_blob(s, &rng, 512 + (size_t)test_rand_int(&rng, 48 * 1024), sub.delta_cid);
            sub.num_examples = 1 + test_rand_u64(&rng) % 1000;
            sub.quality_ppm = (uint32_t)(test_rand_u64(&rng) % 1000001);
            sub.received_ms = r.started_ms + (int64_t)(test_rand_u64(&rng) % (3 * 3600000ull));
            if (nawal_store_submission_add(s, &sub, err, sizeof err)) child_fail("submission", err);
            hex32(hex, keys[k]);
            hex32(hex2, sub.delta_cid);
            report("S %lld %s %s", (long long)r.id, hex, hex2);
        }
        uint8_t model[32];
        put_blob(s, &rng, 512 + (size_t)test_rand_int(&rng, 16 * 1024), model);
        if (nawal_round_settle(s, r.id, model, nawal_now_ms(), NULL, err, sizeof err)) child_fail("settle", err);
        report("C %lld", (long long)r.id);
        if (nawal_store_round_get(s, r.id, &r, err, sizeof err)) child_fail("round get", err);
        settle_again(s, &r);
    }
    nawal_store_close(s);
    _exit(0);
}

/* ---- parent: what the children reported --------------------------------- */

typedef struct {
    int64_t round;
    uint8_t pk[32], cid[32];
} reported_sub;

typedef struct {
    uint8_t (*blobs)[32];
    size_t n_blobs;
    reported_sub *subs;
    size_t n_subs;
    int64_t *closed;
    size_t n_closed;
    int validators[NVAL];
    size_t lines;
} reported;

static void *grow(void *p, size_t n, size_t elem) {
    void *q = realloc(p, (n + 1) * elem);
    cr_assert(q);
    return q;
}

static void parse_line(reported *rep, const char *line, const uint8_t (*keys)[32]) {
    char a[80], b[80];
    long long id;
    unsigned long long pool;
    rep->lines++;
    cr_assert(line[0] != 'X', "child failed: %s", line);
    if (sscanf(line, "B %70s", a) == 1) {
        rep->blobs = grow(rep->blobs, rep->n_blobs, sizeof *rep->blobs);
        cr_assert_eq(nawal_hex_decode(rep->blobs[rep->n_blobs++], 32, a, strlen(a)), 0, "%s", line);
    } else if (sscanf(line, "S %lld %70s %70s", &id, a, b) == 3) {
        rep->subs = grow(rep->subs, rep->n_subs, sizeof *rep->subs);
        reported_sub *x = &rep->subs[rep->n_subs++];
        x->round = id;
        cr_assert_eq(nawal_hex_decode(x->pk, 32, a, strlen(a)), 0, "%s", line);
        cr_assert_eq(nawal_hex_decode(x->cid, 32, b, strlen(b)), 0, "%s", line);
    } else if (sscanf(line, "C %lld", &id) == 1) {
        rep->closed = grow(rep->closed, rep->n_closed, sizeof *rep->closed);
        rep->closed[rep->n_closed++] = id;
    } else if (sscanf(line, "V %70s", a) == 1) {
        uint8_t pk[32];
        cr_assert_eq(nawal_hex_decode(pk, 32, a, strlen(a)), 0, "%s", line);
        for (int k = 0; k < NVAL; k++)
            if (!memcmp(pk, keys[k], 32)) rep->validators[k] = 1;
    } else if (sscanf(line, "R %lld %llu", &id, &pool) == 2) {
        /* round created */
    } else {
        cr_assert_fail("unexpected report line '%s'", line);
    }
}

static long elapsed_us(const struct timespec *t0) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - t0->tv_sec) * 1000000L + (now.tv_nsec - t0->tv_nsec) / 1000L;
}

/* Reads the child's reports and SIGKILLs it kill_after_us after its start,
 * or, when after_reports > 0, delay_us after its after_reports-th report
 * (whichever comes first): kills right behind a commit catch the child in
 * the next state change, the random times anywhere. Then reads the rest
 * and reaps it; returns its wait status. */
static int run_child_until(int fd, pid_t pid, long kill_after_us, int after_reports, long delay_us, reported *rep,
                           const uint8_t (*keys)[32]) {
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char buf[1 << 16];
    size_t have = 0;
    int killed = 0, status = 0, lines = 0;
    for (;;) {
        long el = elapsed_us(&t0);
        if (!killed && el >= kill_after_us) {
            kill(pid, SIGKILL);
            killed = 1;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, killed ? 1000 : (int)((kill_after_us - el + 999) / 1000));
        if (pr < 0 && errno == EINTR) continue;
        if (pr == 0) continue;
        ssize_t n = read(fd, buf + have, sizeof buf - have - 1);
        if (n < 0 && errno == EINTR) continue;
        cr_assert(n >= 0, "read from child: %s", strerror(errno));
        if (n == 0) break; /* child gone (killed or exited) */
        have += (size_t)n;
        char *start = buf, *nl;
        while ((nl = memchr(start, '\n', (size_t)(buf + have - start)))) {
            *nl = 0;
            parse_line(rep, start, keys);
            start = nl + 1;
            if (!killed && ++lines == after_reports) {
                usleep((useconds_t)delay_us);
                kill(pid, SIGKILL);
                killed = 1;
            }
        }
        have = (size_t)(buf + have - start);
        memmove(buf, start, have);
    }
    if (!killed) kill(pid, SIGKILL); /* it exited on its own: harmless */
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    /* a half line can only come from a write cut by the kill: ignored */
    return status;
}

/* ---- parent: invariants ---------------------------------------------------- */

static int64_t col_i64(sqlite3 *db, const char *sql, int64_t arg) {
    sqlite3_stmt *st;
    cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK, "%s", sql);
    if (sqlite3_bind_parameter_count(st)) sqlite3_bind_int64(st, 1, arg);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW, "%s", sql);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void check_blob_dir(nawal_store *s, size_t *count) {
    char top[512];
    snprintf(top, sizeof top, "%s/blobs", dir);
    DIR *d = opendir(top);
    cr_assert(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        cr_assert(strncmp(e->d_name, ".tmp-", 5), "temp file %s left after reopen", e->d_name);
        cr_assert_eq(strlen(e->d_name), 2, "unexpected entry blobs/%s", e->d_name);
        char sub[600];
        snprintf(sub, sizeof sub, "%s/%s", top, e->d_name);
        DIR *d2 = opendir(sub);
        cr_assert(d2);
        struct dirent *f;
        while ((f = readdir(d2))) {
            if (!strcmp(f->d_name, ".") || !strcmp(f->d_name, "..")) continue;
            cr_assert(strncmp(f->d_name, ".tmp-", 5), "temp file %s/%s left after reopen", e->d_name, f->d_name);
            char hex[128], path[1200], err[512];
            cr_assert_eq(strlen(f->d_name), 62, "unexpected entry blobs/%s/%s", e->d_name, f->d_name);
            memcpy(hex, e->d_name, 2);
            memcpy(hex + 2, f->d_name, 63);
            uint8_t cid[32], got[32];
            cr_assert_eq(nawal_cid_from_hex(cid, hex, err, sizeof err), 0, "blob name %s: %s", hex, err);
            cr_assert((size_t)snprintf(path, sizeof path, "%s/%s", sub, f->d_name) < sizeof path);
            cr_assert_eq(nawal_cid_of_file(got, NULL, path, err, sizeof err), 0, "%s", err);
            cr_assert(nawal_cid_equal(cid, got), "blob %s is partial or corrupt", hex);
            (*count)++;
        }
        closedir(d2);
    }
    closedir(d);
    (void)s;
}

/* Temp files (blobs cut short by the kill) present before the reopen. */
static size_t count_temps(void) {
    char top[512];
    snprintf(top, sizeof top, "%s/blobs", dir);
    size_t n = 0;
    DIR *d = opendir(top);
    cr_assert(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strncmp(e->d_name, ".tmp-", 5)) n++;
        if (strlen(e->d_name) != 2 || e->d_name[0] == '.') continue;
        char sub[600];
        snprintf(sub, sizeof sub, "%s/%s", top, e->d_name);
        DIR *d2 = opendir(sub);
        if (!d2) continue;
        struct dirent *f;
        while ((f = readdir(d2)))
            if (!strncmp(f->d_name, ".tmp-", 5)) n++;
        closedir(d2);
    }
    closedir(d);
    return n;
}

static void check_invariants(const reported *rep, const uint8_t (*keys)[32], int iter) {
    nawal_store *s = coord_open(dir); /* also removes the killed child's temp files */
    sqlite3 *db = nawal_store_db(s);
    char err[512] = "";

    size_t nblobs = 0;
    check_blob_dir(s, &nblobs);
    for (size_t i = 0; i < rep->n_blobs; i++)
        cr_assert(nawal_blobstore_has(s, rep->blobs[i]), "iteration %d: reported blob lost", iter);

    for (int k = 0; k < NVAL; k++) {
        if (!rep->validators[k]) continue;
        nawal_validator v;
        cr_assert_eq(nawal_registry_get(s, keys[k], &v, err, sizeof err), 0, "iteration %d: reported validator lost: %s", iter, err);
        cr_assert(!v.removed);
        cr_assert_eq(v.stake_planck, (uint64_t)k * 4000 * NAWAL_PLANCK_PER_DALLA);
    }

    for (size_t i = 0; i < rep->n_subs; i++) {
        nawal_submission *subs;
        size_t n;
        cr_assert_eq(nawal_store_submissions(s, rep->subs[i].round, &subs, &n, err, sizeof err), 0, "%s", err);
        int found = 0;
        for (size_t j = 0; j < n; j++)
            if (!memcmp(subs[j].validator, rep->subs[i].pk, 32)) {
                found = 1;
                cr_assert(!memcmp(subs[j].delta_cid, rep->subs[i].cid, 32), "iteration %d: update changed", iter);
            }
        free(subs);
        cr_assert(found, "iteration %d: a reported update of round %lld was lost", iter, (long long)rep->subs[i].round);
    }

    int64_t nrounds = col_i64(db, "SELECT count(*) FROM rounds", 0);
    for (int64_t id = 1; id <= nrounds; id++) {
        nawal_round r;
        cr_assert_eq(nawal_store_round_get(s, id, &r, err, sizeof err), 0, "rounds must be 1..N: %s", err);
        int64_t nsub = col_i64(db, "SELECT count(*) FROM submissions WHERE round_id = ?1", id);
        int64_t nrew = col_i64(db, "SELECT count(*) FROM rewards WHERE round_id = ?1", id);
        int64_t nled = col_i64(db, "SELECT count(*) FROM ledger WHERE round_id = ?1", id);
        cr_assert(nsub <= NVAL);
        if (r.state == NAWAL_ROUND_CLOSED) {
            cr_assert_eq(nled, 1, "iteration %d: closed round %lld has %lld ledger records", iter, (long long)id, (long long)nled);
            cr_assert_eq(nrew, nsub, "iteration %d: round %lld: %lld rewards for %lld updates", iter, (long long)id,
                         (long long)nrew, (long long)nsub);
            uint64_t seq;
            cr_assert_eq(nawal_ledger_find_round(s, id, &seq, err, sizeof err), 0);
            nawal_ledger_record rec;
            cr_assert_eq(nawal_ledger_get(s, seq, &rec, err, sizeof err), 0, "%s", err);
            sqlite3_stmt *st;
            cr_assert_eq(sqlite3_prepare_v2(db, "SELECT amount_planck FROM rewards WHERE round_id = ?1", -1, &st, NULL), SQLITE_OK);
            sqlite3_bind_int64(st, 1, id);
            unsigned __int128 sum = rec.entry.undistributed_planck;
            while (sqlite3_step(st) == SQLITE_ROW) {
                uint64_t a;
                cr_assert_eq(nawal_store_column_u64(st, 0, &a, err, sizeof err), 0);
                sum += a;
            }
            sqlite3_finalize(st);
            cr_assert(sum == r.pool_planck, "iteration %d: round %lld pays %llu of pool %llu", iter, (long long)id,
                      (unsigned long long)sum, (unsigned long long)r.pool_planck);
            cr_assert_eq(rec.entry.n_updates, (size_t)nsub);
            cr_assert(r.has_model_cid && nawal_blobstore_has(s, r.model_cid), "closed round's model blob missing");
            nawal_ledger_record_free(&rec);
        } else {
            cr_assert_eq(id, nrounds, "iteration %d: round %lld left open behind round %lld", iter, (long long)id, (long long)nrounds);
            cr_assert_eq(nrew, 0, "iteration %d: open round %lld has rewards", iter, (long long)id);
            cr_assert_eq(nled, 0, "iteration %d: open round %lld is in the ledger", iter, (long long)id);
        }
        /* every update's delta is stored whole */
        nawal_submission *subs;
        size_t n;
        cr_assert_eq(nawal_store_submissions(s, id, &subs, &n, err, sizeof err), 0);
        for (size_t j = 0; j < n; j++) {
            int fd = nawal_blobstore_open(s, subs[j].delta_cid, 1, NULL, err, sizeof err);
            cr_assert(fd >= 0, "iteration %d: delta of an accepted update: %s", iter, err);
            close(fd);
        }
        free(subs);
    }
    for (size_t i = 0; i < rep->n_closed; i++) {
        nawal_round r;
        cr_assert_eq(nawal_store_round_get(s, rep->closed[i], &r, err, sizeof err), 0);
        cr_assert_eq(r.state, NAWAL_ROUND_CLOSED, "iteration %d: reported closed round %lld is not", iter, (long long)rep->closed[i]);
    }

    nawal_ledger_report lr;
    int rc = nawal_ledger_verify(s, &lr, err, sizeof err);
    cr_assert_eq(rc, 0, "iteration %d: ledger broken at %llu: %s %s", iter, (unsigned long long)lr.bad_seq, lr.reason, err);
    cr_assert_eq((int64_t)lr.records, col_i64(db, "SELECT count(*) FROM rounds WHERE state = 'closed'", 0));
    nawal_store_close(s);
}

Test(coord_crash, sigkill_at_random_points_loses_nothing, .timeout = 120) {
    uint64_t seed = test_seed("coord_crash");
    char err[512] = "";
    cr_assert_eq(nawal_store_init(dir, err, sizeof err), 0, "%s", err);
    uint8_t keys[NVAL][32];
    for (int k = 0; k < NVAL; k++) coord_rand_bytes(&seed, keys[k], 32);

    reported rep = {0};
    int exited_early = 0, open_at_kill = 0;
    size_t temps = 0;
    /* ITERATIONS kills; more (up to 20 s) if a slow disk let fewer than 3
     * rounds close, so settlement is always among what gets interrupted */
    struct timespec t_start, t_now;
    clock_gettime(CLOCK_MONOTONIC, &t_start);
    int iter;
    for (iter = 0;; iter++) {
        clock_gettime(CLOCK_MONOTONIC, &t_now);
        if (iter >= ITERATIONS && (rep.n_closed >= 3 || t_now.tv_sec - t_start.tv_sec > 20)) break;
        int fds[2];
        cr_assert_eq(pipe(fds), 0);
        uint64_t child_seed = test_rand_u64(&seed);
        /* even iterations: killed 2..50 ms in; odd ones: 0..2 ms after
         * the child's 1st..40th reported commit (50 ms at the latest) */
        long kill_after_us = 2000 + (long)(test_rand_u64(&seed) % 48001);
        int after_reports = iter % 2 ? 1 + test_rand_int(&seed, 40) : 0;
        long delay_us = (long)(test_rand_u64(&seed) % 2001);
        if (after_reports) kill_after_us = 50000;
        fflush(NULL);
        pid_t pid = fork();
        cr_assert(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            report_fd = fds[1];
            child_run((const uint8_t(*)[32])keys, child_seed);
        }
        close(fds[1]);
        int status = run_child_until(fds[0], pid, kill_after_us, after_reports, delay_us, &rep, (const uint8_t(*)[32])keys);
        close(fds[0]);
        if (WIFEXITED(status)) {
            cr_assert_eq(WEXITSTATUS(status), 0, "child failed (status %d)", WEXITSTATUS(status));
            exited_early++;
        } else {
            cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child died otherwise (status %d)", status);
        }
        temps += count_temps();
        nawal_round open_round;
        nawal_store *peek;
        cr_assert_eq(nawal_store_open(&peek, dir, NAWAL_STORE_OPEN_PUBLIC_ONLY, err, sizeof err), 0, "%s", err);
        if (nawal_store_round_latest(peek, &open_round, err, sizeof err) == 0 && open_round.state != NAWAL_ROUND_CLOSED)
            open_at_kill++;
        nawal_store_close(peek);
        check_invariants(&rep, (const uint8_t(*)[32])keys, iter);
    }
    nawal_store *s = coord_open(dir);
    nawal_round last;
    int rc = nawal_store_round_latest(s, &last, err, sizeof err);
    nawal_store_close(s);
    fprintf(stderr,
            "[coord_crash] %d kills, %zu commits reported, %zu rounds closed, latest round %lld; "
            "%d kills left a round open, %zu partial blobs cleaned\n",
            iter - exited_early, rep.lines, rep.n_closed, rc == 0 ? (long long)last.id : 0ll, open_at_kill, temps);
    cr_assert(rep.n_closed >= 3, "too few rounds closed (%zu) to exercise settlement", rep.n_closed);
    free(rep.blobs);
    free(rep.subs);
    free(rep.closed);
}
