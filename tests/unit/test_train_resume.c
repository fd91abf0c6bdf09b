/* test_train_resume.c - resumable training (model/train_state.h,
 * train_ckpt.h) on the CPU backend, with a fresh random model, fresh random
 * tokens and a fresh seed per run (NAWAL_TEST_SEED=<n> replays one):
 *   - S steps straight through give the same bits (weights, AdamW moments,
 *     step count, losses) as the same run's snapshot at step k loaded into
 *     a fresh, differently initialised model in a new run that trains the
 *     remaining S - k steps; for plain training and for seeded DP-SGD (whose
 *     epsilon comes out bit-identical too);
 *   - with a privacy budget, every executed step is charged: the budget
 *     holds S steps after the first run and S + (S - k) after the resumed
 *     one (the steps after the snapshot are charged again); the epsilon a
 *     resumed run reports is the budget's, also when the budget stops it
 *     before its first step (its snapshot's epsilon is lower);
 *   - a snapshot that cannot be written (the file size limit hit mid-write)
 *     is reported, leaves no temporary file, and the run goes on with the
 *     same bits; leftover temporary files of killed saves are recognised
 *     and removed (nawal_file_leftovers_remove);
 *   - a corrupt, truncated, extended, empty, foreign (other tag, training
 *     config, data, kind or model) or unreadable snapshot is refused with a
 *     message naming the problem, and training starts over (same bits as
 *     a run without a snapshot). */
#include "dp_train.h"
#include "fileio.h"
#include "test_util.h"
#include "train_state.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#define S 9      /* steps of a run */
#define K 4      /* snapshot every K steps; the resume starts at K */

static char tmp_root[] = "/tmp/nawal_test_resume.XXXXXX";

static void setup(void) { cr_assert(mkdtemp(tmp_root)); }
static void teardown(void) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_root);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(train_resume, .init = setup, .fini = teardown, .timeout = 120);

typedef struct {
    uint64_t seed;
    nawal_gpt_config cfg;
    int32_t *toks;
    size_t n;
} fixture;

static fixture fixture_new(const char *who) {
    fixture f = { .seed = test_seed(who), .cfg = { 2, 2, 16, 8, 13 }, .n = 700 };
    uint64_t s = f.seed;
    f.toks = malloc(f.n * sizeof *f.toks);
    cr_assert(f.toks);
    for (size_t i = 0; i < f.n; i++) f.toks[i] = test_rand_int(&s, f.cfg.vocab);
    return f;
}

static nawal_gpt *model_new(const fixture *f, uint64_t init) {
    nawal_gpt *m;
    char err[256] = "";
    cr_assert_eq(nawal_gpt_create(&m, nawal_ops_cpu(0), &f->cfg, 4, err, sizeof err), 0, "%s", err);
    nawal_gpt_init_params(m, f->seed ^ init);
    return m;
}

static nawal_train_config config(const fixture *f) {
    nawal_train_config tc;
    nawal_train_config_default(&tc);
    tc.steps = S;
    tc.batch = 4;
    tc.warmup = 2;
    tc.lr = 3e-3f;
    tc.log_every = 0;
    tc.seed = f->seed * 3 + 1;
    return tc;
}

static void path_of(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", tmp_root, name); }

/* What a run's notifications were; at step copy_at, the snapshot is copied to copy_to. */
typedef struct {
    const char *path, *copy_to;
    int copy_at, saves, resumed_at, refused, failed;
    char why[512];
} events;

static void copy_file(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    cr_assert(a && b, "copy %s to %s", from, to);
    char buf[1 << 14];
    size_t r;
    while ((r = fread(buf, 1, sizeof buf, a)) > 0) cr_assert_eq(fwrite(buf, 1, r, b), r);
    fclose(a);
    cr_assert_eq(fclose(b), 0);
}

static void on_event(void *ctx, nawal_ckpt_event ev, int step, int steps, const char *why) {
    events *e = ctx;
    (void)steps;
    if (ev == NAWAL_CKPT_SAVED) {
        e->saves++;
        if (step == e->copy_at) copy_file(e->path, e->copy_to);
    } else if (ev == NAWAL_CKPT_RESUMED) {
        e->resumed_at = step;
    } else {
        if (ev == NAWAL_CKPT_REFUSED) e->refused = 1;
        else e->failed++;
        snprintf(e->why, sizeof e->why, "%s", why);
    }
}

/* Weights, AdamW moments and step count of m, for bitwise comparison. */
typedef struct {
    float *buf;
    size_t n;
    int opt_step;
    float last_loss;
} bits;

static bits bits_of(const nawal_gpt *m, const nawal_train_result *res) {
    bits b = { malloc(3 * m->n_params * sizeof(float)), m->n_params, m->opt_step, res->last_loss };
    cr_assert(b.buf && m->opt_m && m->opt_v);
    const float *src[3] = { m->params, m->opt_m, m->opt_v };
    for (int i = 0; i < 3; i++) m->ops->download(m->ops, b.buf + (size_t)i * b.n, src[i], b.n * sizeof(float));
    return b;
}

static void bits_equal(const bits *a, const bits *b, const fixture *f, const char *what) {
    cr_assert_eq(a->n, b->n);
    cr_assert_eq(a->opt_step, b->opt_step, "%s: optimizer step %d vs %d", what, a->opt_step, b->opt_step);
    static const char *part[3] = { "weight", "AdamW m", "AdamW v" };
    for (size_t i = 0; i < 3 * a->n; i++)
        cr_assert(!memcmp(&a->buf[i], &b->buf[i], sizeof(float)), "%s: %s %zu differs: %.9g vs %.9g (seed %llu)", what,
                  part[i / a->n], i % a->n, a->buf[i], b->buf[i], (unsigned long long)f->seed);
    cr_assert(!memcmp(&a->last_loss, &b->last_loss, sizeof(float)), "%s: last loss %.9g vs %.9g", what,
              a->last_loss, b->last_loss);
}

/* One run: model initialised with `init`, snapshots per ck (NULL: none); dc NULL: plain training. */
static bits run(const fixture *f, uint64_t init, const nawal_train_ckpt *ck, const nawal_dp_train_config *dc,
                nawal_train_result *res, nawal_dp_report *rep) {
    nawal_gpt *m = model_new(f, init);
    nawal_train_config tc = config(f);
    tc.ckpt = ck;
    char err[512] = "";
    int rc = dc ? nawal_dp_train_run(m, f->toks, f->n, &tc, dc, NULL, res, rep, err, sizeof err)
                : nawal_train_run(m, f->toks, f->n, &tc, NULL, res, err, sizeof err);
    cr_assert_eq(rc, 0, "training failed: %s", err);
    bits b = bits_of(m, res);
    nawal_gpt_free(m);
    return b;
}

static nawal_dp_train_config dp_config(void) {
    return (nawal_dp_train_config){ .max_grad_norm = 0.5f, .delta = 1e-5, .noise_multiplier = 0.8, .seeded = 1 };
}

/* Straight through vs snapshot at K + a fresh process-like resume; dc NULL: plain. */
static void resume_case(const char *who, nawal_dp_train_config *dc) {
    fixture f = fixture_new(who);
    nawal_train_result ra, rb, rc;
    nawal_dp_report pa, pb, pc;
    bits a = run(&f, 1, NULL, dc, &ra, &pa);

    char path[300], at_k[300];
    path_of(path, sizeof path, "run.ckpt");
    path_of(at_k, sizeof at_k, "at_k.ckpt");
    events eb = { .path = path, .copy_to = at_k, .copy_at = K };
    nawal_train_ckpt ck = { .path = path, .every = K, .notify = on_event, .ctx = &eb };
    bits b = run(&f, 1, &ck, dc, &rb, &pb);
    cr_assert_eq(eb.saves, 3, "snapshots at 4, 8 and 9: %d", eb.saves);
    bits_equal(&a, &b, &f, "with snapshots vs without");

    /* "crash": everything freed; a new model, initialised differently, resumes from the snapshot at K */
    events ec = { .path = at_k };
    nawal_train_ckpt rk = { .path = at_k, .every = K, .resume = 1, .notify = on_event, .ctx = &ec };
    bits c = run(&f, 2, &rk, dc, &rc, &pc);
    cr_assert(!ec.refused, "snapshot refused: %s", ec.why);
    cr_assert_eq(ec.resumed_at, K);
    cr_assert_eq(rc.start_step, K);
    cr_assert_eq(ec.saves, 2, "snapshots at 8 and 9 after the resume: %d", ec.saves);
    bits_equal(&a, &c, &f, "resumed at step K vs straight through");
    cr_assert(!memcmp(&ra.first_loss, &rc.first_loss, sizeof(float)), "first loss carried by the snapshot");
    if (dc) {
        cr_assert_eq(pc.steps_done, S);
        cr_assert(pa.epsilon_spent > 0 && !memcmp(&pa.epsilon_spent, &pc.epsilon_spent, sizeof(double)),
                  "epsilon %.17g straight, %.17g resumed", pa.epsilon_spent, pc.epsilon_spent);
    }
    free(a.buf);
    free(b.buf);
    free(c.buf);
    free(f.toks);
}

Test(train_resume, plain_resume_is_bitwise) { resume_case("resume.plain", NULL); }

Test(train_resume, dp_resume_is_bitwise) {
    nawal_dp_train_config dc = dp_config();
    resume_case("resume.dp", &dc);
}

/* With a fresh budget (dc->budget, opened in tmp_root/budget; the caller closes it): a run of S
 * steps snapshotting every K, which charges its S steps, then a run from its snapshot at K into a
 * model initialised otherwise, as a restarted process would. Both runs' bits and reports. */
static void budget_resume(const fixture *f, nawal_dp_train_config *dc, bits out[2], nawal_dp_report rep[2]) {
    char dir[300], path[300], at_k[300], err[512] = "";
    path_of(dir, sizeof dir, "budget");
    cr_assert_eq(mkdir(dir, 0700), 0);
    path_of(path, sizeof path, "run.ckpt");
    path_of(at_k, sizeof at_k, "at_k.ckpt");
    cr_assert_eq(nawal_privacy_budget_open(&dc->budget, dir, NULL, dc->delta, 1, err, sizeof err), 0, "%s", err);
    nawal_train_result r;
    events e = { .path = path, .copy_to = at_k, .copy_at = K };
    nawal_train_ckpt ck = { .path = path, .every = K, .notify = on_event, .ctx = &e };
    out[0] = run(f, 1, &ck, dc, &r, &rep[0]);
    cr_assert_eq(nawal_privacy_budget_steps(dc->budget), S);
    events e2 = { .path = at_k };
    nawal_train_ckpt rk = { .path = at_k, .resume = 1, .notify = on_event, .ctx = &e2 };
    out[1] = run(f, 2, &rk, dc, &r, &rep[1]);
    cr_assert_eq(e2.resumed_at, K, "%s", e2.why);
}

/* The budget's total epsilon. */
static double budget_epsilon(const nawal_privacy_budget *b) {
    char err[512] = "";
    double eps;
    cr_assert_eq(nawal_privacy_budget_epsilon(b, &eps, NULL, err, sizeof err), 0, "%s", err);
    return eps;
}

Test(train_resume, dp_resume_charges_every_executed_step) {
    fixture f = fixture_new("resume.budget");
    nawal_dp_train_config dc = dp_config();
    bits b[2];
    nawal_dp_report rep[2];
    budget_resume(&f, &dc, b, rep);
    cr_assert_eq(nawal_privacy_budget_steps(dc.budget), S + (S - K), "steps after the snapshot are charged again");
    double eps = budget_epsilon(dc.budget);
    cr_assert(!memcmp(&eps, &rep[1].epsilon_spent, sizeof eps), "the report's epsilon is the budget's");
    bits_equal(&b[0], &b[1], &f, "resumed with a budget");
    nawal_privacy_budget_close(dc.budget);
    free(b[0].buf);
    free(b[1].buf);
    free(f.toks);
}

/* A killed run's steps after its last snapshot are on the budget but not in the snapshot: the
 * resumed run reports the budget's epsilon, here when the budget's target stops it at once. */
Test(train_resume, dp_resume_reports_the_budget_epsilon) {
    fixture f = fixture_new("resume.budget_epsilon");
    nawal_dp_train_config dc = dp_config();
    dc.sample_rate = 0.05;
    /* a target between epsilon after S steps and after S + 1: the first run does its S steps */
    char err[512] = "";
    nawal_accountant acc;
    double eps_s, eps_s1;
    cr_assert_eq(nawal_accountant_init(&acc, NULL, 0, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_accountant_add(&acc, dc.sample_rate, dc.noise_multiplier, S, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_accountant_epsilon(&acc, dc.delta, &eps_s, NULL, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_accountant_epsilon_after(&acc, dc.sample_rate, dc.noise_multiplier, 1, dc.delta, &eps_s1, NULL, err,
                                                sizeof err), 0, "%s", err);
    cr_assert_gt(eps_s1, eps_s * 1.0001);
    dc.epsilon = (eps_s + eps_s1) / 2;
    bits b[2];
    nawal_dp_report rep[2];
    budget_resume(&f, &dc, b, rep); /* "killed" after step S, its snapshot at K: the next step would cross the target */
    cr_assert(rep[0].steps_done == S && !rep[0].stopped_by_budget, "%d steps", rep[0].steps_done);
    cr_assert(rep[1].stopped_by_budget && rep[1].steps_done == K, "stopped at once: %d steps", rep[1].steps_done);
    cr_assert_eq(nawal_privacy_budget_steps(dc.budget), S);
    double eps = budget_epsilon(dc.budget);
    cr_assert(rep[1].epsilon_spent >= eps, "reported epsilon %.17g below the budget's %.17g", rep[1].epsilon_spent, eps);
    nawal_privacy_budget_close(dc.budget);
    free(b[0].buf);
    free(b[1].buf);
    free(f.toks);
}

/* ---- refused snapshots ------------------------------------------------------- */

static unsigned char *slurp(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    cr_assert(fp, "open %s", path);
    fseek(fp, 0, SEEK_END);
    *len = (size_t)ftell(fp);
    rewind(fp);
    unsigned char *buf = malloc(*len ? *len : 1);
    cr_assert(buf && fread(buf, 1, *len, fp) == *len);
    fclose(fp);
    return buf;
}

static void spit(const char *path, const unsigned char *buf, size_t len) {
    FILE *fp = fopen(path, "wb");
    cr_assert(fp, "create %s", path);
    cr_assert_eq(fwrite(buf, 1, len, fp), len);
    cr_assert_eq(fclose(fp), 0);
}

/* A run resuming from `file` must refuse it (message containing expect) and give the bits of a fresh run. */
static void refused(const fixture *f, const bits *fresh, const char *file, const nawal_dp_train_config *dc,
                    const char *expect, const char *what) {
    events e = { .path = file };
    nawal_train_ckpt rk = { .path = file, .resume = 1, .tag = "round 1", .tag_len = 7, .notify = on_event, .ctx = &e };
    nawal_train_result r;
    nawal_dp_report rep;
    bits b = run(f, 1, &rk, dc, &r, &rep);
    cr_assert(e.refused, "%s: accepted", what);
    cr_assert(strstr(e.why, file) && strstr(e.why, expect), "%s: message \"%s\" lacks \"%s\" or the file", what, e.why,
              expect);
    cr_assert_eq(r.start_step, 0, "%s: not started over", what);
    cr_assert_eq(e.resumed_at, 0);
    bits_equal(fresh, &b, f, what);
    free(b.buf);
}

/* A run of S steps (or tc_steps) snapshotting to `from` with the given tag, its snapshot at K copied to `to`. */
static void make_snapshot(const fixture *f, const nawal_gpt_config *cfg, int tc_steps, float lr_scale, const char *tag,
                          const nawal_dp_train_config *dc, const char *from, const char *to) {
    events e = { .path = from, .copy_to = to, .copy_at = K };
    nawal_train_ckpt ck = { .path = from, .every = K, .tag = tag, .tag_len = strlen(tag), .notify = on_event, .ctx = &e };
    fixture g = *f;
    g.cfg = *cfg;
    nawal_gpt *m = model_new(&g, 1);
    nawal_train_config tc = config(f);
    tc.steps = tc_steps;
    tc.lr *= lr_scale;
    tc.ckpt = &ck;
    nawal_train_result r;
    nawal_dp_report rep;
    char err[512] = "";
    int rc = dc ? nawal_dp_train_run(m, f->toks, f->n, &tc, dc, NULL, &r, &rep, err, sizeof err)
                : nawal_train_run(m, f->toks, f->n, &tc, NULL, &r, err, sizeof err);
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert_geq(e.saves, 1);
    nawal_gpt_free(m);
}

Test(train_resume, bad_snapshots_are_refused_and_training_starts_over) {
    fixture f = fixture_new("resume.refused");
    nawal_train_result r;
    nawal_dp_report rep;
    bits fresh = run(&f, 1, NULL, NULL, &r, &rep);
    char run_path[300], good[300], bad[300];
    path_of(run_path, sizeof run_path, "run.ckpt");
    path_of(good, sizeof good, "good.ckpt");
    path_of(bad, sizeof bad, "bad.ckpt");
    /* a valid snapshot at step K of this very run (tag "round 1"): accepted */
    make_snapshot(&f, &f.cfg, S, 1.0f, "round 1", NULL, run_path, good);
    events ok = { .path = good };
    nawal_train_ckpt rk = { .path = good, .resume = 1, .tag = "round 1", .tag_len = 7, .notify = on_event, .ctx = &ok };
    bits b = run(&f, 1, &rk, NULL, &r, &rep);
    cr_assert(!ok.refused && ok.resumed_at == K, "the valid snapshot: %s", ok.why);
    bits_equal(&fresh, &b, &f, "the valid snapshot");
    free(b.buf);

    /* damaged copies of it */
    size_t len;
    unsigned char *orig = slurp(good, &len);
    cr_assert_gt(len, 200);
    uint64_t s = f.seed;
    unsigned char *buf = malloc(len + 16);
    cr_assert(buf);
    memcpy(buf, orig, len);
    size_t at = 112 + (size_t)test_rand_u64(&s) % (len - 112 - 32);
    buf[at] ^= (unsigned char)(1 + test_rand_int(&s, 255));
    spit(bad, buf, len);
    refused(&f, &fresh, bad, NULL, "checksum mismatch", "a flipped byte in the weights or moments");
    memcpy(buf, orig, len);
    buf[len - 1] ^= 0x80;
    spit(bad, buf, len);
    refused(&f, &fresh, bad, NULL, "checksum mismatch", "a flipped checksum byte");
    memcpy(buf, orig, len);
    buf[56] ^= 1; /* the step field */
    spit(bad, buf, len);
    refused(&f, &fresh, bad, NULL, "checksum mismatch", "a changed step count");
    spit(bad, orig, 112 + (size_t)test_rand_u64(&s) % (len - 112));
    refused(&f, &fresh, bad, NULL, "truncated", "a truncated file");
    spit(bad, orig, 50);
    refused(&f, &fresh, bad, NULL, "truncated", "a file shorter than its header");
    spit(bad, orig, 0);
    refused(&f, &fresh, bad, NULL, "truncated", "an empty file");
    memcpy(buf, orig, len);
    memset(buf + len, 0, 16);
    spit(bad, buf, len + 16);
    refused(&f, &fresh, bad, NULL, "corrupt", "an extended file");
    memcpy(buf, orig, len);
    buf[0] = 'X';
    spit(bad, buf, len);
    refused(&f, &fresh, bad, NULL, "not a nawal training checkpoint", "bad magic");
    memcpy(buf, orig, len);
    buf[8] = 9;
    spit(bad, buf, len);
    refused(&f, &fresh, bad, NULL, "format version 9", "another format version");
    free(buf);
    free(orig);

    /* snapshots of other runs: another tag (round), length, learning rate, data, kind, model */
    make_snapshot(&f, &f.cfg, S, 1.0f, "round 2", NULL, run_path, bad);
    refused(&f, &fresh, bad, NULL, "belongs to another training run", "another tag (round)");
    make_snapshot(&f, &f.cfg, S + 1, 1.0f, "round 1", NULL, run_path, bad);
    refused(&f, &fresh, bad, NULL, "belongs to another training run", "a run of another length");
    make_snapshot(&f, &f.cfg, S, 2.0f, "round 1", NULL, run_path, bad);
    refused(&f, &fresh, bad, NULL, "belongs to another training run", "another learning rate");
    f.toks[f.n / 2] = (f.toks[f.n / 2] + 1) % f.cfg.vocab;
    make_snapshot(&f, &f.cfg, S, 1.0f, "round 1", NULL, run_path, bad);
    f.toks[f.n / 2] = (f.toks[f.n / 2] + f.cfg.vocab - 1) % f.cfg.vocab;
    refused(&f, &fresh, bad, NULL, "belongs to another training run", "other training data");
    nawal_dp_train_config dc = dp_config();
    make_snapshot(&f, &f.cfg, S, 1.0f, "round 1", &dc, run_path, bad);
    refused(&f, &fresh, bad, NULL, "of a DP-SGD run, this one is plain", "a DP-SGD snapshot for plain training");
    nawal_gpt_config wider = f.cfg;
    wider.n_embd = 24;
    make_snapshot(&f, &wider, S, 1.0f, "round 1", NULL, run_path, bad);
    refused(&f, &fresh, bad, NULL, "parameters", "a snapshot of another model");

    /* a plain snapshot for a DP run, which then starts over too */
    make_snapshot(&f, &f.cfg, S, 1.0f, "round 1", NULL, run_path, bad);
    bits dp_fresh = run(&f, 1, NULL, &dc, &r, &rep);
    refused(&f, &dp_fresh, bad, &dc, "of a plain run, this one is DP-SGD", "a plain snapshot for DP-SGD");
    free(dp_fresh.buf);

    /* a directory where the file should be */
    cr_assert_eq(unlink(bad), 0);
    cr_assert_eq(mkdir(bad, 0700), 0);
    refused(&f, &fresh, bad, NULL, "not a regular file", "a directory");
    rmdir(bad);
    free(fresh.buf);
    free(f.toks);
}

Test(train_resume, no_snapshot_starts_at_step_zero) {
    fixture f = fixture_new("resume.none");
    char path[300];
    path_of(path, sizeof path, "missing.ckpt");
    events e = { .path = path };
    nawal_train_ckpt rk = { .path = path, .resume = 1, .notify = on_event, .ctx = &e };
    nawal_train_result r, r0;
    nawal_dp_report rep;
    bits a = run(&f, 1, NULL, NULL, &r0, &rep), b = run(&f, 1, &rk, NULL, &r, &rep);
    cr_assert(!e.refused && e.resumed_at == 0 && r.start_step == 0 && e.saves == 0);
    bits_equal(&a, &b, &f, "no snapshot");
    struct stat sb;
    cr_assert_neq(stat(path, &sb), 0, "every = 0: no snapshot written");
    free(a.buf);
    free(b.buf);
    free(f.toks);
}

/* min_interval_s: due snapshots within that many seconds of the run's
 * start (or of the last save) are skipped; 0 saves every due one. */
Test(train_resume, min_interval_skips_due_snapshots) {
    fixture f = fixture_new("resume.interval");
    char path[300];
    path_of(path, sizeof path, "interval.ckpt");
    events e = { .path = path };
    nawal_train_ckpt ck = { .path = path, .every = 1, .min_interval_s = 1e6, .notify = on_event, .ctx = &e };
    nawal_train_result r;
    nawal_dp_report rep;
    bits a = run(&f, 1, &ck, NULL, &r, &rep);
    struct stat sb;
    cr_assert(e.saves == 0 && stat(path, &sb) != 0, "an hour-long interval: no snapshot in a short run (%d saved)", e.saves);
    events e2 = { .path = path };
    ck.min_interval_s = 0;
    ck.ctx = &e2;
    bits b = run(&f, 1, &ck, NULL, &r, &rep);
    cr_assert(e2.saves > 1 && stat(path, &sb) == 0, "no interval: every step saved (%d saved)", e2.saves);
    bits_equal(&a, &b, &f, "snapshots do not change the run");
    free(a.buf);
    free(b.buf);
    free(f.toks);
}

/* ---- snapshots that cannot be written, leftovers of killed saves ------------------ */

/* Names in tmp_root starting with prefix. */
static int count_named(const char *prefix) {
    DIR *d = opendir(tmp_root);
    cr_assert(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) n += !strncmp(e->d_name, prefix, strlen(prefix));
    closedir(d);
    return n;
}

/* A snapshot is optional: one that cannot be written (a full disk; here the file size limit, hit
 * mid-write) is reported as FAILED and the run goes on, same bits, no temporary file left. */
Test(train_resume, failed_snapshot_does_not_stop_training) {
    fixture f = fixture_new("resume.failed");
    char path[300];
    path_of(path, sizeof path, "full.ckpt");
    nawal_train_result r;
    nawal_dp_report rep;
    bits a = run(&f, 1, NULL, NULL, &r, &rep);
    events e = { .path = path };
    nawal_train_ckpt ck = { .path = path, .every = K, .notify = on_event, .ctx = &e };
    struct rlimit old, small = { 1000, 1000 };
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    small.rlim_max = old.rlim_max;
    signal(SIGXFSZ, SIG_IGN); /* a write past the limit fails with EFBIG instead */
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &small), 0);
    bits b = run(&f, 1, &ck, NULL, &r, &rep);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    cr_assert(e.failed == 3 && e.saves == 0, "3 snapshots due (4, 8, 9): %d failed, %d saved", e.failed, e.saves);
    cr_assert(strstr(e.why, path), "the reason names the file: %s", e.why);
    bits_equal(&a, &b, &f, "failed snapshots");
    cr_assert_eq(count_named("full.ckpt"), 0, "no snapshot, no temporary file left");
    /* DP-SGD goes on too, with the notifications on the loop's log when there is no callback */
    nawal_dp_train_config dc = dp_config();
    bits c = run(&f, 1, NULL, &dc, &r, &rep);
    nawal_train_ckpt quiet = { .path = path, .every = K };
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &small), 0);
    bits d = run(&f, 1, &quiet, &dc, &r, &rep);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    bits_equal(&c, &d, &f, "DP-SGD with failed snapshots");
    cr_assert_eq(count_named("full.ckpt"), 0);
    free(a.buf);
    free(b.buf);
    free(c.buf);
    free(d.buf);
    free(f.toks);
}

/* nawal_file_leftovers_remove: the temporary files of path's killed replacements (path.tmp.XXXXXX), nothing else. */
Test(train_resume, leftover_temporary_files_removed) {
    static const char *const names[] = { "run.ckpt.tmp.a1B2c3", "run.ckpt.tmp.zzzzzz", "run.ckpt", "run.ckpt.tmp.toolong",
                                         "run.ckpt.tmp.", "xrun.ckpt.tmp.a1B2c3", "other.tmp.a1B2c3" };
    char p[300];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        path_of(p, sizeof p, names[i]);
        spit(p, (const unsigned char *)"x", 1);
    }
    path_of(p, sizeof p, "run.ckpt");
    cr_assert_eq(nawal_file_leftovers_remove(p), 2);
    cr_assert_eq(count_named("run.ckpt.tmp."), 2, "the two that are not mkstemp names stay");
    cr_assert_eq(count_named("run.ckpt"), 3);
    cr_assert_eq(count_named("xrun.ckpt.tmp.a1B2c3") + count_named("other.tmp.a1B2c3"), 2);
    cr_assert_eq(nawal_file_leftovers_remove(p), 0);
    path_of(p, sizeof p, "missing/run.ckpt");
    cr_assert_eq(nawal_file_leftovers_remove(p), 0, "no directory: nothing to do");
}
