/* test_privacy_budget.c - the per-validator privacy budget file
 * (model/privacy_budget.h): round trip of the spend across runs (checked
 * against an accountant fed the same steps), the stop-before-crossing
 * check, detection of every single-byte change and every truncation of
 * both files (signed and checksum-only), wrong or missing keys, a deleted
 * state file, files from different budgets, a changed delta, a second
 * process, and atomic updates (a failed write leaves the old file valid and
 * byte-identical, and the handle unchanged). Random byte changes use a
 * fresh seed per run (NAWAL_TEST_SEED=<n> replays one). */
#include "privacy_budget.h"
#include "test_util.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

static char tmp_root[] = "/tmp/nawal_test_budget.XXXXXX";

static void setup(void) { cr_assert(mkdtemp(tmp_root)); }
static void teardown(void) {
    char cmd[600];
    chmod(tmp_root, 0700);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_root);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(budget, .init = setup, .fini = teardown);

static void path_of(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", tmp_root, name); }

static void key(nawal_identity *id, uint8_t fill) {
    uint8_t seed[32];
    memset(seed, fill, sizeof seed);
    cr_assert_eq(nawal_identity_from_seed(id, seed, NULL, 0), 0);
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    cr_assert(f, "open %s", path);
    char *buf = malloc(1 << 17);
    cr_assert(buf);
    *len = fread(buf, 1, 1 << 17, f);
    fclose(f);
    return buf;
}

static void spit(const char *path, const char *buf, size_t len) {
    FILE *f = fopen(path, "wb");
    cr_assert(f, "create %s", path);
    cr_assert_eq(fwrite(buf, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
}

static nawal_privacy_budget *open_ok(const nawal_identity *id, double delta, int create) {
    nawal_privacy_budget *b;
    char err[512] = "";
    cr_assert_eq(nawal_privacy_budget_open(&b, tmp_root, id, delta, create, err, sizeof err), 0, "%s", err);
    return b;
}

/* Opening must fail with a message containing `expect` (NULL: any). */
static void open_fails(const nawal_identity *id, double delta, int create, const char *expect, const char *why) {
    nawal_privacy_budget *b = (void *)1;
    char err[512] = "";
    int rc = nawal_privacy_budget_open(&b, tmp_root, id, delta, create, err, sizeof err);
    cr_assert_eq(rc, -1, "%s: accepted", why);
    cr_assert_null(b);
    cr_assert(err[0], "%s: no message", why);
    if (expect) cr_assert(strstr(err, expect), "%s: message '%s' lacks '%s'", why, err, expect);
}

static void record_ok(nawal_privacy_budget *b, double q, double sigma, uint64_t steps) {
    char err[512] = "";
    cr_assert_eq(nawal_privacy_budget_record(b, q, sigma, steps, err, sizeof err), 0, "%s", err);
}

static void round_trip(const nawal_identity *id) {
    nawal_privacy_budget *b = open_ok(id, 1e-5, 1);
    double eps, order;
    cr_assert_eq(nawal_privacy_budget_epsilon(b, &eps, &order, NULL, 0), 0);
    cr_assert_eq(eps, 0.0, "a fresh budget has spent nothing");
    cr_assert_eq(nawal_privacy_budget_counter(b), 0);
    record_ok(b, 0.01, 1.1, 100);
    record_ok(b, 0.02, 0.9, 1);
    record_ok(b, 0.02, 0.9, 1);
    cr_assert_eq(nawal_privacy_budget_counter(b), 3);
    nawal_privacy_budget_close(b);

    /* a second run: the spend carries over, composed in RDP */
    b = open_ok(id, 1e-5, 0);
    cr_assert_eq(nawal_privacy_budget_counter(b), 3);
    cr_assert_eq(nawal_privacy_budget_steps(b), 102);
    record_ok(b, 0.05, 2.0, 40);
    nawal_privacy_budget_close(b);
    b = open_ok(id, 1e-5, 0);
    nawal_accountant ref;
    cr_assert_eq(nawal_accountant_init(&ref, NULL, 0, NULL, 0), 0);
    cr_assert_eq(nawal_accountant_add(&ref, 0.01, 1.1, 100, NULL, 0), 0);
    cr_assert_eq(nawal_accountant_add(&ref, 0.02, 0.9, 2, NULL, 0), 0);
    cr_assert_eq(nawal_accountant_add(&ref, 0.05, 2.0, 40, NULL, 0), 0);
    const nawal_accountant *got = nawal_privacy_budget_accountant(b);
    cr_assert_eq(got->n, ref.n);
    cr_assert_eq(memcmp(got->orders, ref.orders, ref.n * sizeof ref.orders[0]), 0);
    for (size_t k = 0; k < ref.n; k++)
        cr_assert(fabs(got->rdp[k] - ref.rdp[k]) <= 1e-13 * ref.rdp[k], "order %g: %.17g vs %.17g", ref.orders[k],
                  got->rdp[k], ref.rdp[k]);
    double ref_eps;
    cr_assert_eq(nawal_accountant_epsilon(&ref, 1e-5, &ref_eps, NULL, NULL, 0), 0);
    cr_assert_eq(nawal_privacy_budget_epsilon(b, &eps, &order, NULL, 0), 0);
    cr_assert(fabs(eps - ref_eps) <= 1e-12 * ref_eps && eps > 0, "%.17g vs %.17g", eps, ref_eps);
    cr_assert_eq(nawal_privacy_budget_counter(b), 4);
    cr_assert_eq(nawal_privacy_budget_steps(b), 142);
    cr_assert_eq(nawal_privacy_budget_delta(b), 1e-5);
    nawal_privacy_budget_close(b);
}

Test(budget, round_trip_signed) {
    nawal_identity id;
    key(&id, 7);
    round_trip(&id);
    char path[600];
    size_t len;
    path_of(path, sizeof path, NAWAL_BUDGET_FILE);
    char *text = slurp(path, &len);
    cr_assert(strstr(text, "\nsignature "), "signed file");
    free(text);
}

Test(budget, round_trip_checksum) {
    round_trip(NULL);
    char path[600];
    size_t len;
    path_of(path, sizeof path, NAWAL_BUDGET_FILE);
    char *text = slurp(path, &len);
    cr_assert(strstr(text, "\nchecksum ") && strstr(text, "\nvalidator none\n"));
    free(text);
}

Test(budget, stops_before_crossing) {
    nawal_identity id;
    key(&id, 9);
    nawal_privacy_budget *b = open_ok(&id, 1e-5, 1);
    const double limit = 2.0, q = 0.02, sigma = 1.0; /* about 150 steps */
    char err[512] = "";
    uint64_t taken = 0;
    for (;;) { /* the trainer's loop: check, then take and charge the step */
        double after;
        int exceeds;
        cr_assert_eq(nawal_privacy_budget_would_exceed(b, q, sigma, 1, limit, &after, &exceeds, err, sizeof err), 0,
                     "%s", err);
        double spent_before;
        cr_assert_eq(nawal_privacy_budget_epsilon(b, &spent_before, NULL, NULL, 0), 0);
        cr_assert(after >= spent_before);
        if (exceeds) {
            cr_assert(after > limit);
            break;
        }
        record_ok(b, q, sigma, 1);
        taken++;
        cr_assert(taken < 100000, "never stopped");
    }
    double spent;
    cr_assert_eq(nawal_privacy_budget_epsilon(b, &spent, NULL, NULL, 0), 0);
    cr_assert(spent <= limit && taken > 0, "spent %g after %llu steps", spent, (unsigned long long)taken);
    /* the same number of steps, computed in one go, is within the limit; one more is not */
    nawal_accountant a;
    double e_n, e_n1;
    nawal_accountant_init(&a, NULL, 0, NULL, 0);
    cr_assert_eq(nawal_accountant_epsilon_after(&a, q, sigma, taken, 1e-5, &e_n, NULL, NULL, 0), 0);
    cr_assert_eq(nawal_accountant_epsilon_after(&a, q, sigma, taken + 1, 1e-5, &e_n1, NULL, NULL, 0), 0);
    cr_assert(e_n <= limit && e_n1 > limit, "%g %g", e_n, e_n1);
    nawal_privacy_budget_close(b);
    /* and across runs: a new run sees the spend and refuses the step too */
    b = open_ok(&id, 1e-5, 0);
    double after;
    int exceeds;
    cr_assert_eq(nawal_privacy_budget_would_exceed(b, q, sigma, 1, limit, &after, &exceeds, NULL, 0), 0);
    cr_assert(exceeds);
    nawal_privacy_budget_close(b);
}

/* Every single-byte change of `name` (each byte XORed with a random
 * non-zero mask) and every truncation makes opening fail, naming the file. */
static void every_change_detected(const nawal_identity *id, const char *name) {
    char path[600];
    path_of(path, sizeof path, name);
    size_t len;
    char *orig = slurp(path, &len), *buf = malloc(len);
    cr_assert(buf && len > 0);
    uint64_t seed = fresh_seed();
    rng r = {seed};
    char why[700];
    for (size_t i = 0; i < len; i++) {
        memcpy(buf, orig, len);
        buf[i] ^= (char)(1 + rng_below(&r, 255));
        spit(path, buf, len);
        snprintf(why, sizeof why, "seed %llu: byte %zu of %s changed", (unsigned long long)seed, i, name);
        open_fails(id, 1e-5, 1, name, why);
    }
    for (size_t n = 0; n < len; n++) {
        spit(path, orig, n);
        snprintf(why, sizeof why, "%s truncated to %zu bytes", name, n);
        open_fails(id, 1e-5, 1, name, why);
    }
    /* an extra byte at the end */
    memcpy(buf, orig, len);
    spit(path, orig, len);
    FILE *f = fopen(path, "ab");
    fputc('\n', f);
    fclose(f);
    open_fails(id, 1e-5, 1, name, "trailing byte");
    spit(path, orig, len);
    nawal_privacy_budget_close(open_ok(id, 1e-5, 0)); /* restored: fine again */
    free(orig);
    free(buf);
}

static void make_budget(const nawal_identity *id) {
    nawal_privacy_budget *b = open_ok(id, 1e-5, 1);
    record_ok(b, 0.01, 1.3, 25);
    nawal_privacy_budget_close(b);
}

Test(budget, any_change_to_signed_state_detected, .timeout = 120) {
    nawal_identity id;
    key(&id, 1);
    make_budget(&id);
    every_change_detected(&id, NAWAL_BUDGET_FILE);
}

Test(budget, any_change_to_checksummed_state_detected, .timeout = 120) {
    make_budget(NULL);
    every_change_detected(NULL, NAWAL_BUDGET_FILE);
}

Test(budget, any_change_to_marker_detected) {
    nawal_identity id;
    key(&id, 2);
    make_budget(&id);
    every_change_detected(&id, NAWAL_BUDGET_MARKER_FILE);
}

Test(budget, wrong_or_missing_key) {
    nawal_identity id, other;
    key(&id, 3);
    key(&other, 4);
    make_budget(&id);
    open_fails(&other, 1e-5, 1, "signature does not verify", "another validator's key");
    open_fails(NULL, 1e-5, 1, "signed", "no key for a signed budget");
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -f '%s'/privacy_budget*", tmp_root);
    cr_assert_eq(system(cmd), 0);
    make_budget(NULL);
    open_fails(&id, 1e-5, 1, "checksum", "a key for a checksum-only budget");
}

Test(budget, deleted_state_detected) {
    nawal_identity id;
    key(&id, 5);
    make_budget(&id);
    char state[600], marker[600];
    path_of(state, sizeof state, NAWAL_BUDGET_FILE);
    path_of(marker, sizeof marker, NAWAL_BUDGET_MARKER_FILE);
    size_t len;
    char *saved = slurp(state, &len);
    cr_assert_eq(unlink(state), 0);
    open_fails(&id, 1e-5, 1, "missing", "state deleted, create allowed");
    open_fails(&id, 1e-5, 0, "missing", "state deleted");
    /* putting it back restores the budget */
    spit(state, saved, len);
    nawal_privacy_budget *b = open_ok(&id, 1e-5, 0);
    cr_assert_eq(nawal_privacy_budget_steps(b), 25);
    nawal_privacy_budget_close(b);
    /* a lost marker is rewritten from the state (it is written after the state at creation) */
    cr_assert_eq(unlink(marker), 0);
    nawal_privacy_budget_close(open_ok(&id, 1e-5, 0));
    struct stat sb;
    cr_assert_eq(stat(marker, &sb), 0, "marker restored");
    cr_assert_eq(unlink(state), 0);
    open_fails(&id, 1e-5, 1, "missing", "state deleted after the marker was restored");
    /* no budget at all: an error unless creating */
    cr_assert_eq(unlink(marker), 0);
    open_fails(&id, 1e-5, 0, "no privacy budget", "empty directory");
    free(saved);
}

Test(budget, files_from_different_budgets) {
    nawal_identity id;
    key(&id, 6);
    make_budget(&id);
    char marker[600], other_marker[700], cmd[1600];
    path_of(marker, sizeof marker, NAWAL_BUDGET_MARKER_FILE);
    /* a second budget of the same validator, elsewhere */
    char other[600];
    path_of(other, sizeof other, "other");
    cr_assert_eq(mkdir(other, 0700), 0);
    nawal_privacy_budget *b;
    char err[512] = "";
    cr_assert_eq(nawal_privacy_budget_open(&b, other, &id, 1e-5, 1, err, sizeof err), 0, "%s", err);
    nawal_privacy_budget_close(b);
    snprintf(other_marker, sizeof other_marker, "%s/%s", other, NAWAL_BUDGET_MARKER_FILE);
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", other_marker, marker);
    cr_assert_eq(system(cmd), 0);
    open_fails(&id, 1e-5, 0, "different budgets", "marker of another budget");
}

Test(budget, delta_is_fixed) {
    make_budget(NULL);
    open_fails(NULL, 1e-6, 0, "delta", "another delta");
    open_fails(NULL, 0.0, 1, "delta", "delta 0");
    nawal_privacy_budget_close(open_ok(NULL, 1e-5, 0));
}

Test(budget, one_process_at_a_time) {
    nawal_privacy_budget *b = open_ok(NULL, 1e-5, 1);
    open_fails(NULL, 1e-5, 1, "in use", "second open");
    nawal_privacy_budget_close(b);
    nawal_privacy_budget_close(open_ok(NULL, 1e-5, 0));
}

static int temp_files_left(void) {
    DIR *d = opendir(tmp_root);
    cr_assert(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

/* A failed update leaves the file byte-identical and valid, the handle
 * unchanged, and no temporary file behind; the next update works. */
static void failed_update_changes_nothing(nawal_privacy_budget *b, void (*break_fs)(void), void (*fix_fs)(void)) {
    char path[600], err[512] = "";
    path_of(path, sizeof path, NAWAL_BUDGET_FILE);
    size_t len_before, len_after;
    char *before = slurp(path, &len_before);
    uint64_t counter = nawal_privacy_budget_counter(b), steps = nawal_privacy_budget_steps(b);
    nawal_accountant acc = *nawal_privacy_budget_accountant(b);
    break_fs();
    int rc = nawal_privacy_budget_record(b, 0.1, 1.0, 10, err, sizeof err);
    fix_fs();
    cr_assert_eq(rc, -1, "update succeeded on a broken file system");
    cr_assert(strstr(err, NAWAL_BUDGET_FILE), "message '%s' names no file", err);
    char *after = slurp(path, &len_after);
    cr_assert(len_before == len_after && memcmp(before, after, len_before) == 0, "file changed");
    cr_assert_eq(nawal_privacy_budget_counter(b), counter);
    cr_assert_eq(nawal_privacy_budget_steps(b), steps);
    cr_assert_eq(memcmp(nawal_privacy_budget_accountant(b), &acc, sizeof acc), 0);
    cr_assert_eq(temp_files_left(), 0);
    record_ok(b, 0.1, 1.0, 10);
    cr_assert_eq(nawal_privacy_budget_counter(b), counter + 1);
    free(before);
    free(after);
}

static struct rlimit saved_fsize;
static void small_fsize(void) {
    signal(SIGXFSZ, SIG_IGN);
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &saved_fsize), 0);
    struct rlimit r = saved_fsize;
    r.rlim_cur = 512; /* well below a budget file's size */
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &r), 0);
}
static void restore_fsize(void) { cr_assert_eq(setrlimit(RLIMIT_FSIZE, &saved_fsize), 0); }
static void readonly_dir(void) { cr_assert_eq(chmod(tmp_root, 0500), 0); }
static void writable_dir(void) { cr_assert_eq(chmod(tmp_root, 0700), 0); }

Test(budget, atomic_update_write_fails) {
    nawal_identity id;
    key(&id, 8);
    nawal_privacy_budget *b = open_ok(&id, 1e-5, 1);
    record_ok(b, 0.01, 1.0, 5);
    failed_update_changes_nothing(b, small_fsize, restore_fsize);
    nawal_privacy_budget_close(b);
    b = open_ok(&id, 1e-5, 0);
    cr_assert_eq(nawal_privacy_budget_counter(b), 2);
    nawal_privacy_budget_close(b);
}

Test(budget, atomic_update_readonly_dir) {
    if (geteuid() == 0) cr_skip_test("root ignores directory permissions (the write-failure test covers this)");
    nawal_privacy_budget *b = open_ok(NULL, 1e-5, 1);
    record_ok(b, 0.01, 1.0, 5);
    failed_update_changes_nothing(b, readonly_dir, writable_dir);
    nawal_privacy_budget_close(b);
}

Test(budget, counter_counts_updates) {
    nawal_identity id;
    key(&id, 10);
    nawal_privacy_budget *b = open_ok(&id, 1e-5, 1);
    for (uint64_t i = 1; i <= 20; i++) {
        record_ok(b, 0.001, 1.0, 1);
        cr_assert_eq(nawal_privacy_budget_counter(b), i);
    }
    nawal_privacy_budget_close(b);
    char path[600];
    path_of(path, sizeof path, NAWAL_BUDGET_FILE);
    size_t len;
    char *text = slurp(path, &len);
    cr_assert(strstr(text, "\ncounter 20\n") && strstr(text, "\nsteps 20\n"), "%.*s", 300, text);
    free(text);
}
