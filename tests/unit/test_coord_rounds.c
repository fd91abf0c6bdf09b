/* test_coord_rounds.c - the round state machine (rounds.h) over a real
 * coordinator directory: joins inside and outside the join window, stake
 * and registry checks, a full round; updates refused as late, duplicate,
 * wrong round, wrong base, unknown blob, not joined, with the wire's error
 * codes; aggregation when the target is reached, when every participant
 * has sent, and at the deadline with >= min updates; failure with fewer
 * (not enough joins, not enough updates, not enough usable updates) and
 * the next round from the same base with the same parameters; a NaN update
 * dropped and not paid; a restart mid-round (and mid-aggregation) that
 * resumes with the same absolute deadline; the CLI (init --model-config /
 * --import, round start / status / tick); the validators' evaluations of
 * a closed round's model (recorded, refused with the wire's codes, their
 * token-weighted mean, token counts bounded and clamped in the mean); the
 * model patch of a closed top-k round (recorded, announced, applying to
 * the base to give the new model blob) and none for a dense round; and
 * version 1, 2 and 3 directories upgraded in place. */
#include "agg_test_util.h"
#include "checkpoint.h"
#include "cid.h"
#include "coord_test_util.h"
#include "delta_codec.h"
#include "fileio.h"
#include "genesis.h"
#include "log.h"
#include "model_patch.h"
#include "ops.h"
#include "patches.h"
#include "roundmsg.h"
#include "rounds.h"
#include "store_internal.h"

#include <math.h>
#include <sys/wait.h>
#include <unistd.h>

#define T0 1700000000000ll
#define MIN_MS 60000ll

static char g_root[128];
static char g_dir[160];

static void setup(void) {
    coord_make_root(g_root, sizeof g_root, "rounds");
    snprintf(g_dir, sizeof g_dir, "%s/coord", g_root);
    nawal_log_set_level(NAWAL_LOG_ERROR);
}
static void teardown(void) { coord_rm_rf(g_root); }

TestSuite(coord_rounds, .init = setup, .fini = teardown, .timeout = 120);

typedef struct {
    nawal_store *s;
    uint8_t base_cid[32];
    float *base;
    uint8_t pk[6][32]; /* 0..3 stake 1000, 4 stake 50, 5 unregistered */
    uint64_t seed;
    int files;
} ctx;

static const nawal_round_params PARAMS = {
    .join_window_ms = MIN_MS, .duration_ms = 10 * MIN_MS, .pool_planck = 1000000, .target = 3, .min = 2,
    .min_stake_planck = 100, .min_quality_ppm = 0, .config_json = "{\"steps\": 5, \"lr\": 0.001}",
};

static void put_values(ctx *c, const float *v, agg_mutation mut, uint8_t cid[32]) {
    char path[300], err[512] = "";
    snprintf(path, sizeof path, "%s/f%d.safetensors", g_root, c->files++);
    agg_write(path, v, mut);
    cr_assert_eq(nawal_blobstore_put_file(c->s, path, cid, NULL, err, sizeof err), 0, "%s", err);
    unlink(path);
}

static void ctx_open(ctx *c) {
    memset(c, 0, sizeof *c);
    c->seed = fresh_seed();
    c->s = coord_init_open(g_dir);
    c->base = malloc(agg_total() * 4);
    agg_random(&c->seed, c->base, agg_total(), 1.0f);
    put_values(c, c->base, AGG_OK, c->base_cid);
    for (int i = 0; i < 6; i++) {
        memset(c->pk[i], 0, 32);
        c->pk[i][0] = (uint8_t)(0x10 * (i + 1)); /* key order = index order */
        if (i < 5) coord_add_validator(c->s, c->pk[i], i == 4 ? 50 : 1000);
    }
}

static void ctx_close(ctx *c) {
    nawal_store_close(c->s);
    free(c->base);
}

static int64_t announce(ctx *c, const nawal_round_params *p, int64_t now) {
    char err[512] = "";
    int64_t id;
    cr_assert_eq(nawal_round_announce(c->s, c->base_cid, p, now, &id, err, sizeof err), 0, "%s", err);
    return id;
}

#define EXPECT(call, want_rc, want_code)                                                                          \
    do {                                                                                                          \
        int rc_ = (call);                                                                                         \
        cr_assert_eq(rc_, (want_rc), "%s: rc %d (%s)", #call, rc_, g_reply.text);                                  \
        cr_assert_eq((int)g_reply.code, (int)(want_code), "%s: code %d (%s)", #call, (int)g_reply.code, g_reply.text); \
    } while (0)

static nawal_round_reply g_reply;

static int join(ctx *c, int who, int64_t round, uint64_t stake, int64_t now) {
    return nawal_round_join(c->s, c->pk[who], round, stake, now, &g_reply);
}

/* A random delta (stored; values in *out if out) submitted by who. */
static int submit(ctx *c, int who, int64_t round, uint64_t examples, int64_t now, float **out) {
    float *d = malloc(agg_total() * 4);
    agg_random(&c->seed, d, agg_total(), 0.01f);
    uint8_t cid[32];
    put_values(c, d, AGG_OK, cid);
    /* trained from the round's base (the initial model when the round does not exist) */
    nawal_round r;
    const uint8_t *base = nawal_store_round_get(c->s, round, &r, NULL, 0) == 0 ? r.base_cid : c->base_cid;
    int rc = nawal_round_submit(c->s, c->pk[who], round, base, cid, examples, 700000, now, &g_reply);
    if (out) *out = d;
    else free(d);
    return rc;
}

static nawal_tick_report tick(ctx *c, int64_t now) {
    nawal_tick_report rep;
    char err[512] = "";
    nawal_agg_config cfg = {NULL, 2};
    cr_assert_eq(nawal_round_tick(c->s, now, &cfg, &rep, err, sizeof err), 0, "tick: %s", err);
    return rep;
}

static nawal_round get_round(ctx *c, int64_t id) {
    nawal_round r;
    char err[512] = "";
    cr_assert_eq(nawal_store_round_get(c->s, id, &r, err, sizeof err), 0, "%s", err);
    return r;
}

static void check_ledger(ctx *c) {
    nawal_ledger_report rep;
    char err[512] = "";
    cr_assert_eq(nawal_ledger_verify(c->s, &rep, err, sizeof err), 0, "ledger: %s %s", err, rep.reason);
}

#define OK NAWAL__ERROR_CODE__ERR_UNSPECIFIED
#define REFUSED NAWAL_STORE_REFUSED

Test(coord_rounds, joins_window_stake_registry_and_capacity) {
    ctx c;
    ctx_open(&c);
    int64_t id = announce(&c, &PARAMS, T0);
    cr_assert_eq(id, 1);
    cr_assert_eq(get_round(&c, id).state, NAWAL_ROUND_ANNOUNCED);
    EXPECT(join(&c, 0, id, 1000, T0 - 1), REFUSED, NAWAL__ERROR_CODE__ERR_WRONG_ROUND); /* before the window */
    EXPECT(join(&c, 0, 2, 1000, T0 + 1), REFUSED, NAWAL__ERROR_CODE__ERR_WRONG_ROUND);  /* no such round */
    EXPECT(join(&c, 0, 0, 1000, T0 + 1), REFUSED, NAWAL__ERROR_CODE__ERR_WRONG_ROUND);
    EXPECT(join(&c, 0, id, 1000, T0), 0, OK); /* announced: joins already open */
    EXPECT(join(&c, 0, id, 1000, T0 + 5), REFUSED, NAWAL__ERROR_CODE__ERR_DUPLICATE);
    EXPECT(join(&c, 5, id, 1000, T0 + 5), REFUSED, NAWAL__ERROR_CODE__ERR_UNKNOWN_SENDER); /* not registered */
    cr_assert(strstr(g_reply.text, "not registered"), "%s", g_reply.text);
    EXPECT(join(&c, 4, id, 50, T0 + 5), REFUSED, NAWAL__ERROR_CODE__ERR_UNKNOWN_SENDER); /* registered stake 50 < 100 */
    cr_assert(strstr(g_reply.text, "below the minimum"), "%s", g_reply.text);
    EXPECT(join(&c, 1, id, 99, T0 + 5), REFUSED, NAWAL__ERROR_CODE__ERR_UNKNOWN_SENDER); /* offers less than the minimum */
    EXPECT(join(&c, 1, id, 1001, T0 + 5), REFUSED, NAWAL__ERROR_CODE__ERR_BAD_MESSAGE); /* more than registered */
    char err[512] = "";
    cr_assert_eq(nawal_registry_remove(c.s, c.pk[3], err, sizeof err), 0, "%s", err);
    EXPECT(join(&c, 3, id, 1000, T0 + 5), REFUSED, NAWAL__ERROR_CODE__ERR_UNKNOWN_SENDER); /* removed */
    coord_add_validator(c.s, c.pk[3], 1000);
    nawal_tick_report t = tick(&c, T0 + 10);
    cr_assert_eq(t.state, NAWAL_ROUND_JOINING);
    cr_assert_eq(t.next_event_ms, T0 + MIN_MS, "the next event is the end of the join window");
    EXPECT(join(&c, 1, id, 100, T0 + MIN_MS - 1), 0, OK); /* last millisecond of the window, minimum stake */
    EXPECT(join(&c, 2, id, 1000, T0 + MIN_MS), REFUSED, NAWAL__ERROR_CODE__ERR_LATE); /* window closed */
    EXPECT(join(&c, 2, id, 1000, T0 + 100), 0, OK);
    EXPECT(join(&c, 3, id, 1000, T0 + 200), REFUSED, NAWAL__ERROR_CODE__ERR_LATE); /* full: target 3 */
    cr_assert(strstr(g_reply.text, "full"), "%s", g_reply.text);
    uint64_t nj;
    cr_assert_eq(nawal_round_counts(c.s, id, &nj, NULL, NULL, err, sizeof err), 0);
    cr_assert_eq(nj, 3);
    t = tick(&c, T0 + 300); /* target joined: training before the window ends */
    cr_assert_eq(t.state, NAWAL_ROUND_TRAINING);
    cr_assert_eq(t.next_event_ms, T0 + 10 * MIN_MS);
    EXPECT(join(&c, 3, id, 1000, T0 + 400), REFUSED, NAWAL__ERROR_CODE__ERR_LATE);
    /* one round at a time */
    int64_t other;
    cr_assert_eq(nawal_round_announce(c.s, c.base_cid, &PARAMS, T0 + 500, &other, err, sizeof err), REFUSED);
    ctx_close(&c);
}

Test(coord_rounds, updates_refused_with_codes) {
    ctx c;
    ctx_open(&c);
    nawal_round_params p = PARAMS;
    p.min = 1;
    int64_t id = announce(&c, &p, T0);
    EXPECT(join(&c, 0, id, 1000, T0 + 1), 0, OK);
    EXPECT(join(&c, 1, id, 1000, T0 + 1), 0, OK);
    EXPECT(submit(&c, 2, id, 10, T0 + 2, NULL), REFUSED, NAWAL__ERROR_CODE__ERR_WRONG_ROUND); /* did not join */
    cr_assert(strstr(g_reply.text, "did not join"), "%s", g_reply.text);
    EXPECT(submit(&c, 0, id + 1, 10, T0 + 2, NULL), REFUSED, NAWAL__ERROR_CODE__ERR_WRONG_ROUND);
    /* wrong base */
    uint8_t cid[32], other_base[32];
    float *d = calloc(agg_total(), 4);
    put_values(&c, d, AGG_OK, cid);
    memcpy(other_base, cid, 32);
    EXPECT(nawal_round_submit(c.s, c.pk[0], id, other_base, cid, 10, 1, T0 + 3, &g_reply), REFUSED,
           NAWAL__ERROR_CODE__ERR_WRONG_ROUND);
    cr_assert(strstr(g_reply.text, "base"), "%s", g_reply.text);
    /* blob not stored, no examples, quality above 1 */
    uint8_t missing[32];
    memset(missing, 0xab, 32);
    EXPECT(nawal_round_submit(c.s, c.pk[0], id, c.base_cid, missing, 10, 1, T0 + 3, &g_reply), REFUSED,
           NAWAL__ERROR_CODE__ERR_NOT_FOUND);
    EXPECT(nawal_round_submit(c.s, c.pk[0], id, c.base_cid, cid, 0, 1, T0 + 3, &g_reply), REFUSED,
           NAWAL__ERROR_CODE__ERR_BAD_MESSAGE);
    EXPECT(nawal_round_submit(c.s, c.pk[0], id, c.base_cid, cid, 5, 1000001, T0 + 3, &g_reply), REFUSED,
           NAWAL__ERROR_CODE__ERR_BAD_MESSAGE);
    EXPECT(submit(&c, 0, id, 10, T0 + 4, NULL), 0, OK);
    EXPECT(submit(&c, 0, id, 10, T0 + 5, NULL), REFUSED, NAWAL__ERROR_CODE__ERR_DUPLICATE);
    EXPECT(submit(&c, 1, id, 10, T0 + 10 * MIN_MS, NULL), REFUSED, NAWAL__ERROR_CODE__ERR_LATE); /* at the deadline */
    char err[512] = "";
    uint64_t ns;
    cr_assert_eq(nawal_round_counts(c.s, id, NULL, &ns, NULL, err, sizeof err), 0);
    cr_assert_eq(ns, 1, "refused updates leave no row");
    nawal_tick_report t = tick(&c, T0 + 10 * MIN_MS);
    cr_assert_eq(t.closed_round, id);
    /* round 1 is over now: a late update for it */
    EXPECT(submit(&c, 1, id, 10, T0 + 10 * MIN_MS + 5, NULL), REFUSED, NAWAL__ERROR_CODE__ERR_LATE);
    EXPECT(join(&c, 1, id, 1000, T0 + 10 * MIN_MS + 5), REFUSED, NAWAL__ERROR_CODE__ERR_LATE);
    free(d);
    ctx_close(&c);
}

/* The model of a closed round, as floats in AGG_LAYOUT order. */
static float *read_model(ctx *c, const uint8_t cid[32]) {
    nawal_tensor_source *m;
    char err[512] = "";
    cr_assert_eq(nawal_tensor_source_open_blob(&m, c->s, cid, err, sizeof err), 0, "%s", err);
    float *v = malloc(agg_total() * 4);
    size_t off = 0;
    for (size_t t = 0; t < AGG_NT; t++) {
        cr_assert_eq(m->read(m, t, 0, agg_numel(t), v + off, err, sizeof err), 0, "%s", err);
        off += agg_numel(t);
    }
    nawal_tensor_source_close(m);
    return v;
}

static void check_paid(ctx *c, int64_t id, size_t want_rows, uint64_t pool) {
    sqlite3_stmt *st;
    char err[512] = "";
    cr_assert_eq(nawal_store_prepare(c->s, &st, "SELECT COUNT(*), COALESCE(SUM(CAST(amount_planck AS INTEGER)), 0) FROM rewards WHERE round_id = ?1",
                                     err, sizeof err), 0);
    sqlite3_bind_int64(st, 1, id);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    cr_assert_eq((size_t)sqlite3_column_int64(st, 0), want_rows);
    cr_assert_eq((uint64_t)sqlite3_column_int64(st, 1), pool, "payouts add up to the pool");
    sqlite3_finalize(st);
}

Test(coord_rounds, aggregates_when_target_reached_then_next_round) {
    ctx c;
    ctx_open(&c);
    int64_t id = announce(&c, &PARAMS, T0);
    float *d[3];
    uint64_t w[3] = {100, 3000, 7};
    for (int i = 0; i < 3; i++) EXPECT(join(&c, i, id, 1000, T0 + 10 + i), 0, OK);
    for (int i = 0; i < 2; i++) EXPECT(submit(&c, i, id, w[i], T0 + 1000 + i, &d[i]), 0, OK);
    nawal_tick_report t = tick(&c, T0 + 2000);
    cr_assert_eq(t.state, NAWAL_ROUND_TRAINING, "2 of 3 updates: wait");
    EXPECT(submit(&c, 2, id, w[2], T0 + 3000, &d[2]), 0, OK);
    t = tick(&c, T0 + 3001);
    cr_assert_eq(t.closed_round, id, "%s", t.note);
    cr_assert_eq(t.accepted, 3);
    cr_assert_eq(t.settlement.paid_planck, PARAMS.pool_planck);
    nawal_round r = get_round(&c, id);
    cr_assert_eq(r.state, NAWAL_ROUND_CLOSED);
    cr_assert(r.has_model_cid && memcmp(r.model_cid, t.model_cid, 32) == 0);
    float *got = read_model(&c, r.model_cid);
    double *want = agg_reference(c.base, d, w, NULL, 3);
    agg_check_close(got, want, c.base, d, NULL, 3, c.seed);
    check_paid(&c, id, 3, PARAMS.pool_planck);
    check_ledger(&c);
    /* the next round: from the new model, same parameters, open for joins */
    cr_assert_eq(t.announced_round, id + 1);
    cr_assert_eq(t.round_id, id + 1);
    cr_assert_eq(t.state, NAWAL_ROUND_JOINING);
    nawal_round n = get_round(&c, id + 1);
    cr_assert_eq(memcmp(n.base_cid, r.model_cid, 32), 0);
    cr_assert_eq(n.started_ms, T0 + 3001);
    cr_assert_eq(n.deadline_ms, T0 + 3001 + 10 * MIN_MS);
    cr_assert_eq(n.join_deadline_ms, T0 + 3001 + MIN_MS);
    cr_assert(n.pool_planck == PARAMS.pool_planck && n.target == 3 && n.min == 2 && n.min_stake_planck == 100);
    char err[512] = "", *cfg = NULL;
    cr_assert_eq(nawal_store_round_config(c.s, id + 1, &cfg, err, sizeof err), 0);
    cr_assert(strstr(cfg, "\"steps\""), "%s", cfg);
    free(cfg);
    uint8_t nb[32];
    cr_assert_eq(nawal_round_next_base(c.s, nb, err, sizeof err), REFUSED, "round 2 is open");
    /* another tick changes nothing */
    t = tick(&c, T0 + 3002);
    cr_assert_eq(t.transitions, 0);
    for (int i = 0; i < 3; i++) free(d[i]);
    free(got);
    free(want);
    ctx_close(&c);
}

Test(coord_rounds, aggregates_at_deadline_with_min_or_when_all_joined_sent) {
    ctx c;
    ctx_open(&c);
    int64_t id = announce(&c, &PARAMS, T0);
    for (int i = 0; i < 3; i++) EXPECT(join(&c, i, id, 1000, T0 + 10), 0, OK);
    EXPECT(submit(&c, 0, id, 5, T0 + 100, NULL), 0, OK);
    EXPECT(submit(&c, 2, id, 5, T0 + 200, NULL), 0, OK);
    cr_assert_eq(tick(&c, T0 + 5 * MIN_MS).state, NAWAL_ROUND_TRAINING);
    cr_assert_eq(tick(&c, T0 + 10 * MIN_MS - 1).state, NAWAL_ROUND_TRAINING);
    nawal_tick_report t = tick(&c, T0 + 10 * MIN_MS);
    cr_assert_eq(t.closed_round, id, "%s", t.note);
    cr_assert_eq(t.accepted, 2);
    check_paid(&c, id, 2, PARAMS.pool_planck);
    /* round 2: two join (fewer than the target), both send: no need to wait for the deadline */
    int64_t id2 = t.announced_round, s2 = T0 + 10 * MIN_MS;
    EXPECT(join(&c, 0, id2, 1000, s2 + 10), 0, OK);
    EXPECT(join(&c, 1, id2, 1000, s2 + 10), 0, OK);
    EXPECT(submit(&c, 0, id2, 5, s2 + 100, NULL), 0, OK);
    EXPECT(submit(&c, 1, id2, 5, s2 + 200, NULL), 0, OK);
    cr_assert_eq(tick(&c, s2 + 300).state, NAWAL_ROUND_JOINING, "the window is open: a third may still join");
    t = tick(&c, s2 + MIN_MS);
    cr_assert_eq(t.closed_round, id2, "%s", t.note);
    check_ledger(&c);
    ctx_close(&c);
}

Test(coord_rounds, fails_below_min_and_restarts_from_same_base) {
    ctx c;
    ctx_open(&c);
    int64_t id = announce(&c, &PARAMS, T0);
    EXPECT(join(&c, 0, id, 1000, T0 + 10), 0, OK);
    EXPECT(join(&c, 1, id, 1000, T0 + 10), 0, OK);
    EXPECT(submit(&c, 0, id, 5, T0 + 100, NULL), 0, OK);
    nawal_tick_report t = tick(&c, T0 + 10 * MIN_MS);
    cr_assert_eq(t.failed_round, id);
    cr_assert(strstr(t.note, "fewer than the minimum"), "%s", t.note);
    nawal_round r = get_round(&c, id);
    cr_assert_eq(r.state, NAWAL_ROUND_FAILED);
    cr_assert_eq(r.closed_ms, T0 + 10 * MIN_MS);
    check_paid(&c, id, 0, 0);
    nawal_round n = get_round(&c, t.announced_round);
    cr_assert_eq(memcmp(n.base_cid, c.base_cid, 32), 0, "a failed round's successor starts from the same base");
    cr_assert_eq(n.deadline_ms - n.started_ms, 10 * MIN_MS);
    cr_assert_eq(t.state, NAWAL_ROUND_JOINING);
    /* round 2: one join only; it fails when the window closes, not at the deadline */
    int64_t id2 = n.id;
    EXPECT(join(&c, 3, id2, 1000, n.started_ms + 5), 0, OK);
    t = tick(&c, n.join_deadline_ms - 1);
    cr_assert_eq(t.transitions, 0);
    t = tick(&c, n.join_deadline_ms);
    cr_assert_eq(t.failed_round, id2);
    cr_assert(strstr(t.note, "joined"), "%s", t.note);
    nawal_round n3 = get_round(&c, t.announced_round);
    cr_assert_eq(memcmp(n3.base_cid, c.base_cid, 32), 0);
    check_ledger(&c);
    ctx_close(&c);
}

Test(coord_rounds, nan_update_dropped_not_paid_and_too_few_usable_fails) {
    ctx c;
    ctx_open(&c);
    int64_t id = announce(&c, &PARAMS, T0);
    for (int i = 0; i < 3; i++) EXPECT(join(&c, i, id, 1000, T0 + 10), 0, OK);
    EXPECT(submit(&c, 0, id, 5, T0 + 100, NULL), 0, OK);
    EXPECT(submit(&c, 2, id, 5, T0 + 100, NULL), 0, OK);
    float *bad = calloc(agg_total(), 4);
    bad[17] = NAN;
    uint8_t cid[32];
    put_values(&c, bad, AGG_OK, cid);
    EXPECT(nawal_round_submit(c.s, c.pk[1], id, c.base_cid, cid, 5, 900000, T0 + 200, &g_reply), 0, OK);
    nawal_tick_report t = tick(&c, T0 + 300);
    cr_assert_eq(t.closed_round, id, "%s", t.note);
    cr_assert_eq(t.accepted, 2);
    cr_assert_eq(t.rejected, 1);
    check_paid(&c, id, 2, PARAMS.pool_planck);
    check_ledger(&c);
    char err[512] = "";
    uint64_t rej;
    cr_assert_eq(nawal_round_counts(c.s, id, NULL, NULL, &rej, err, sizeof err), 0);
    cr_assert_eq(rej, 1);
    sqlite3_stmt *st;
    cr_assert_eq(nawal_store_prepare(c.s, &st, "SELECT rejected FROM submissions WHERE round_id = ?1 AND rejected IS NOT NULL", err, sizeof err), 0);
    sqlite3_bind_int64(st, 1, id);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    cr_assert(strstr((const char *)sqlite3_column_text(st, 0), "not finite"), "%s", sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    nawal_ledger_record rec;
    cr_assert_eq(nawal_ledger_get(c.s, 1, &rec, err, sizeof err), 0, "%s", err);
    cr_assert_eq(rec.entry.n_updates, 2, "the ledger lists the accepted updates only");
    nawal_ledger_record_free(&rec);
    /* round 2 with min 2: one good update + one NaN: usable < min -> failed, nobody paid */
    int64_t id2 = t.announced_round, s2 = T0 + 300;
    EXPECT(join(&c, 0, id2, 1000, s2 + 1), 0, OK);
    EXPECT(join(&c, 1, id2, 1000, s2 + 1), 0, OK);
    nawal_round r2 = get_round(&c, id2);
    EXPECT(nawal_round_submit(c.s, c.pk[1], id2, r2.base_cid, cid, 5, 900000, s2 + 2, &g_reply), 0, OK);
    float *good = calloc(agg_total(), 4);
    uint8_t gcid[32];
    put_values(&c, good, AGG_OK, gcid);
    EXPECT(nawal_round_submit(c.s, c.pk[0], id2, r2.base_cid, gcid, 5, 900000, s2 + 2, &g_reply), 0, OK);
    t = tick(&c, s2 + MIN_MS);
    cr_assert_eq(t.failed_round, id2);
    cr_assert(strstr(t.note, "usable"), "%s", t.note);
    check_paid(&c, id2, 0, 0);
    nawal_round n3 = get_round(&c, t.announced_round);
    cr_assert_eq(memcmp(n3.base_cid, r2.base_cid, 32), 0);
    check_ledger(&c);
    free(bad);
    free(good);
    ctx_close(&c);
}

Test(coord_rounds, restart_mid_round_resumes_with_same_deadline) {
    ctx c;
    ctx_open(&c);
    int64_t id = announce(&c, &PARAMS, T0);
    EXPECT(join(&c, 0, id, 1000, T0 + 10), 0, OK);
    EXPECT(join(&c, 1, id, 1000, T0 + 10), 0, OK);
    cr_assert_eq(tick(&c, T0 + 20).state, NAWAL_ROUND_JOINING);
    EXPECT(submit(&c, 0, id, 5, T0 + 100, NULL), 0, OK);
    nawal_round before = get_round(&c, id);
    /* "crash": close without any shutdown step, reopen, resume later */
    nawal_store_close(c.s);
    c.s = coord_open(g_dir);
    nawal_tick_report t;
    char err[512] = "";
    nawal_agg_config cfg = {NULL, 1};
    cr_assert_eq(nawal_round_resume(c.s, T0 + 2 * MIN_MS, &cfg, &t, err, sizeof err), 0, "%s", err);
    cr_assert_eq(t.round_id, id);
    cr_assert_eq(t.state, NAWAL_ROUND_TRAINING, "the join window passed while it was down");
    cr_assert_eq(t.next_event_ms, before.deadline_ms);
    nawal_round after = get_round(&c, id);
    cr_assert_eq(after.deadline_ms, before.deadline_ms);
    cr_assert_eq(after.join_deadline_ms, before.join_deadline_ms);
    EXPECT(submit(&c, 0, id, 5, T0 + 2 * MIN_MS, NULL), REFUSED, NAWAL__ERROR_CODE__ERR_DUPLICATE); /* remembered */
    /* down again across the deadline, with only one of two updates: min 2 -> failed on resume */
    nawal_store_close(c.s);
    c.s = coord_open(g_dir);
    cr_assert_eq(nawal_round_resume(c.s, before.deadline_ms + 5, &cfg, &t, err, sizeof err), 0, "%s", err);
    cr_assert_eq(t.failed_round, id);
    /* round 2: interrupted in the middle of its aggregation */
    int64_t id2 = t.announced_round;
    nawal_round r2 = get_round(&c, id2);
    EXPECT(join(&c, 0, id2, 1000, r2.started_ms + 1), 0, OK);
    EXPECT(join(&c, 1, id2, 1000, r2.started_ms + 1), 0, OK);
    EXPECT(submit(&c, 0, id2, 5, r2.started_ms + 2, NULL), 0, OK);
    EXPECT(submit(&c, 1, id2, 5, r2.started_ms + 2, NULL), 0, OK);
    cr_assert_eq(nawal_store_round_set_state(c.s, id2, NAWAL_ROUND_AGGREGATING, err, sizeof err), 0, "%s", err);
    nawal_store_close(c.s);
    c.s = coord_open(g_dir);
    cr_assert_eq(nawal_round_resume(c.s, r2.started_ms + 3, &cfg, &t, err, sizeof err), 0, "%s", err);
    cr_assert_eq(t.closed_round, id2, "%s", t.note);
    check_paid(&c, id2, 2, PARAMS.pool_planck);
    check_ledger(&c);
    ctx_close(&c);
}

/* ---- CLI ------------------------------------------------------------------- */

static int run(const char *args, char *out, size_t cap) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", NAWAL_COORDINATOR_BIN, args);
    FILE *p = popen(cmd, "r");
    cr_assert(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(coord_rounds, cli_init_model_round_start_status_tick) {
    char args[1024], out[8192];
    snprintf(args, sizeof args, "init --dir %s --model-config 2,2,16,8,32 --seed 7", g_dir);
    cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "initial model"), "%s", out);
    snprintf(args, sizeof args, "round status --dir %s", g_dir);
    cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "no rounds"), "%s", out);
    snprintf(args, sizeof args, "round start --dir %s --pool-planck 500 --target 2 --min 1 --deadline-s 3600 --join-window-s 600"
                                " --steps 10 --lr 0.001 --batch 4 --min-stake-planck 7", g_dir);
    cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "round 1 announced"), "%s", out);
    cr_assert_eq(run(args, out, sizeof out), 1, "a second start while round 1 is open: %s", out);
    cr_assert(strstr(out, "still"), "%s", out);
    snprintf(args, sizeof args, "round tick --dir %s", g_dir);
    cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
    snprintf(args, sizeof args, "round status --dir %s", g_dir);
    cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "round 1: joining"), "%s", out);
    cr_assert(strstr(out, "joined 0"), "%s", out);
    /* the initial model is a GPT-2 of that config, by the model library's own tensor table */
    nawal_store *s = coord_open(g_dir);
    nawal_round r;
    char err[512] = "";
    cr_assert_eq(nawal_store_round_latest(s, &r, err, sizeof err), 0);
    cr_assert_eq(r.min_stake_planck, 7);
    nawal_tensor_source *m;
    cr_assert_eq(nawal_tensor_source_open_blob(&m, s, r.base_cid, err, sizeof err), 0, "%s", err);
    nawal_gpt_config cfg = {2, 2, 16, 8, 32};
    nawal_gpt *g;
    cr_assert_eq(nawal_gpt_create(&g, nawal_ops_cpu(1), &cfg, 1, err, sizeof err), 0);
    cr_assert_eq(m->n_tensors, (size_t)g->n_tensors);
    for (int i = 0; i < g->n_tensors; i++) cr_assert_str_eq(m->tensors[i].name, g->tensors[i].name);
    /* seeded: the same values nawal_gpt_init_params gives */
    nawal_gpt_init_params(g, 7);
    float v[16];
    cr_assert_eq(m->read(m, 0, 0, 16, v, err, sizeof err), 0);
    cr_assert_eq(memcmp(v, g->params + g->tensors[0].offset, sizeof v), 0);
    nawal_tensor_source_close(m);
    nawal_store_close(s);

    /* import a checkpoint */
    char ckpt[300], dir2[300];
    snprintf(ckpt, sizeof ckpt, "%s/ckpt", g_root);
    snprintf(dir2, sizeof dir2, "%s/coord2", g_root);
    cr_assert_eq(nawal_checkpoint_save(g, NULL, ckpt, err, sizeof err), 0, "%s", err);
    snprintf(args, sizeof args, "init --dir %s --import %s", dir2, ckpt);
    cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
    s = coord_open(dir2);
    uint8_t base[32];
    cr_assert_eq(nawal_round_next_base(s, base, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_tensor_source_open_blob(&m, s, base, err, sizeof err), 0, "%s", err);
    cr_assert_eq(m->read(m, 0, 0, 16, v, err, sizeof err), 0);
    cr_assert_eq(memcmp(v, g->params + g->tensors[0].offset, sizeof v), 0);
    nawal_tensor_source_close(m);
    nawal_store_close(s);
    nawal_gpt_free(g);

    /* bad input: usage errors (2) leave no directory behind */
    snprintf(dir2, sizeof dir2, "%s/coord3", g_root);
    snprintf(args, sizeof args, "init --dir %s --model-config 2,3,16,8,32", dir2);
    cr_assert_eq(run(args, out, sizeof out), 2, "heads must divide the width: %s", out);
    cr_assert_neq(access(dir2, F_OK), 0);
    snprintf(args, sizeof args, "init --dir %s --import %s/nope", dir2, g_root);
    cr_assert_eq(run(args, out, sizeof out), 1, "%s", out);
    cr_assert_neq(access(dir2, F_OK), 0);
    snprintf(args, sizeof args, "init --dir %s --import %s --model-config 2,2,16,8,32", dir2, ckpt);
    cr_assert_eq(run(args, out, sizeof out), 2, "%s", out);
    snprintf(args, sizeof args, "init --dir %s", dir2);
    cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
    snprintf(args, sizeof args, "round start --dir %s --pool-planck 1 --target 1 --min 1 --deadline-s 60", dir2);
    cr_assert_eq(run(args, out, sizeof out), 1, "no initial model: %s", out);
    cr_assert(strstr(out, "initial model"), "%s", out);
}

/* Runs sql (back to an older schema) on c's directory, reopens it and checks it is at the current version. */
static void downgrade_and_reopen(ctx *c, const char *sql) {
    char *msg = NULL;
    cr_assert_eq(sqlite3_exec(nawal_store_db(c->s), sql, NULL, NULL, &msg), SQLITE_OK, "%s", msg);
    nawal_store_close(c->s);
    c->s = coord_open(g_dir);
    sqlite3_stmt *st;
    cr_assert_eq(sqlite3_prepare_v2(nawal_store_db(c->s), "SELECT version FROM schema_version", -1, &st, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    cr_assert_eq(sqlite3_column_int(st, 0), NAWAL_STORE_SCHEMA_VERSION);
    sqlite3_finalize(st);
}

/* A version 1 directory (before the round machine) opens as version 3: the
 * new tables appear, old rounds get their deadline as the join deadline,
 * old updates count as accepted; a newer version is refused. */
Test(coord_rounds, schema_v1_upgraded_in_place) {
    ctx c;
    ctx_open(&c);
    nawal_round r = {0};
    memcpy(r.base_cid, c.base_cid, 32);
    r.started_ms = T0;
    r.deadline_ms = T0 + 10 * MIN_MS;
    r.pool_planck = 77;
    r.target = r.min = 1;
    int64_t id;
    char err[512] = "";
    cr_assert_eq(nawal_store_round_create(c.s, &r, NULL, &id, err, sizeof err), 0, "%s", err);
    nawal_submission sub = {.round_id = id, .num_examples = 3, .quality_ppm = 5, .received_ms = T0 + 1};
    memcpy(sub.validator, c.pk[0], 32);
    memcpy(sub.delta_cid, c.base_cid, 32);
    cr_assert_eq(nawal_store_submission_add(c.s, &sub, err, sizeof err), 0, "%s", err);
    /* back to what version 1 had */
    static const char *const DOWN =
        "DROP TABLE model_patches; DROP TABLE evaluations; DROP TABLE participants; DROP TABLE aggregates; DROP TABLE settings;"
        "ALTER TABLE rounds DROP COLUMN join_deadline_ms; ALTER TABLE rounds DROP COLUMN min_stake_planck;"
        "ALTER TABLE rounds DROP COLUMN min_quality_ppm; ALTER TABLE submissions DROP COLUMN rejected;"
        "UPDATE schema_version SET version = 1;";
    downgrade_and_reopen(&c, DOWN);
    nawal_round back = get_round(&c, id);
    cr_assert_eq(back.join_deadline_ms, back.deadline_ms);
    cr_assert_eq(back.min_stake_planck, 0);
    nawal_submission *subs;
    size_t n;
    cr_assert_eq(nawal_store_submissions(c.s, id, &subs, &n, err, sizeof err), 0);
    cr_assert(n == 1 && !subs[0].rejected);
    free(subs);
    /* the machine runs on it: the old round aggregates at its deadline (its one update is the base
     * file, a valid "delta") and the next round follows */
    nawal_tick_report t = tick(&c, T0 + 10 * MIN_MS);
    cr_assert_eq(t.closed_round, id, "%s", t.note);
    check_ledger(&c);
    /* a newer schema than this program knows */
    cr_assert_eq(sqlite3_exec(nawal_store_db(c.s), "UPDATE schema_version SET version = 99", NULL, NULL, NULL), SQLITE_OK);
    nawal_store_close(c.s);
    nawal_store *s2 = NULL;
    cr_assert_eq(nawal_store_open(&s2, g_dir, 0, err, sizeof err), -1);
    cr_assert(strstr(err, "schema version 99"), "%s", err);
    c.s = NULL;
    free(c.base);
}

/* An evaluation of round `round`'s model cid by validator who. */
static int evaluate(ctx *c, int who, int64_t round, const uint8_t cid[32], double loss, uint64_t tokens) {
    nawal_evaluation e = {.round_id = round, .loss = loss, .tokens = tokens, .received_ms = T0 + 99};
    memcpy(e.validator, c->pk[who], 32);
    memcpy(e.model_cid, cid, 32);
    return nawal_round_evaluation_record(c->s, &e, &g_reply);
}

static nawal_evaluation_summary summary(ctx *c, int64_t round) {
    nawal_evaluation_summary sum;
    char err[512] = "";
    cr_assert_eq(nawal_round_evaluation_summary(c->s, round, &sum, err, sizeof err), 0, "%s", err);
    return sum;
}

Test(coord_rounds, evaluations_recorded_refused_and_averaged) {
    ctx c;
    ctx_open(&c);
    nawal_round r;
    cr_assert_eq(nawal_round_latest_closed(c.s, &r, NULL, 0), 0, "no closed round yet");
    int64_t id = announce(&c, &PARAMS, T0);
    for (int i = 0; i < 3; i++) EXPECT(join(&c, i, id, 1000, T0 + 10 + i), 0, OK);
    /* an open round has no model to evaluate */
    EXPECT(evaluate(&c, 0, id, c.base_cid, 2.0, 100), REFUSED, NAWAL__ERROR_CODE__ERR_WRONG_ROUND);
    cr_assert(strstr(g_reply.text, "only a closed round"), "%s", g_reply.text);
    for (int i = 0; i < 3; i++) EXPECT(submit(&c, i, id, 10, T0 + 1000 + i, NULL), 0, OK);
    nawal_tick_report t = tick(&c, T0 + 2000);
    cr_assert_eq(t.closed_round, id, "%s", t.note);
    cr_assert_eq(nawal_round_latest_closed(c.s, &r, NULL, 0), 1);
    cr_assert_eq(r.id, id);
    cr_assert(r.has_model_cid);
    nawal_evaluation_summary sum = summary(&c, id);
    cr_assert(sum.results == 0 && sum.tokens == 0 && isnan(sum.loss), "no evaluations yet");

    /* refusals: nothing recorded */
    uint8_t other[32];
    memcpy(other, r.model_cid, 32);
    other[5] ^= 1;
    EXPECT(evaluate(&c, 0, id, other, 2.0, 100), REFUSED, NAWAL__ERROR_CODE__ERR_WRONG_ROUND);
    cr_assert(strstr(g_reply.text, "no evaluation of model"), "%s", g_reply.text);
    EXPECT(evaluate(&c, 0, id, c.base_cid, 2.0, 100), REFUSED, NAWAL__ERROR_CODE__ERR_WRONG_ROUND); /* the base */
    EXPECT(evaluate(&c, 0, 99, r.model_cid, 2.0, 100), REFUSED, NAWAL__ERROR_CODE__ERR_WRONG_ROUND);
    cr_assert(strstr(g_reply.text, "no round 99"), "%s", g_reply.text);
    EXPECT(evaluate(&c, 0, t.announced_round, r.model_cid, 2.0, 100), REFUSED, NAWAL__ERROR_CODE__ERR_WRONG_ROUND);
    EXPECT(evaluate(&c, 0, id, r.model_cid, NAN, 100), REFUSED, NAWAL__ERROR_CODE__ERR_BAD_MESSAGE);
    cr_assert(strstr(g_reply.text, "finite"), "%s", g_reply.text);
    EXPECT(evaluate(&c, 0, id, r.model_cid, INFINITY, 100), REFUSED, NAWAL__ERROR_CODE__ERR_BAD_MESSAGE);
    EXPECT(evaluate(&c, 0, id, r.model_cid, -0.5, 100), REFUSED, NAWAL__ERROR_CODE__ERR_BAD_MESSAGE);
    EXPECT(evaluate(&c, 0, id, r.model_cid, 2.0, 0), REFUSED, NAWAL__ERROR_CODE__ERR_BAD_MESSAGE);
    cr_assert(strstr(g_reply.text, "0 tokens"), "%s", g_reply.text);
    EXPECT(evaluate(&c, 0, id, r.model_cid, 2.0, (uint64_t)INT64_MAX + 1), REFUSED, NAWAL__ERROR_CODE__ERR_BAD_MESSAGE);
    EXPECT(evaluate(&c, 0, id, r.model_cid, 2.0, (uint64_t)INT64_MAX), REFUSED, NAWAL__ERROR_CODE__ERR_BAD_MESSAGE);
    EXPECT(evaluate(&c, 0, id, r.model_cid, 2.0, NAWAL_EVAL_MAX_TOKENS + 1), REFUSED, NAWAL__ERROR_CODE__ERR_BAD_MESSAGE);
    cr_assert(strstr(g_reply.text, "want 1..1000000000000"), "%s", g_reply.text);
    EXPECT(evaluate(&c, 5, id, r.model_cid, 2.0, 100), REFUSED, NAWAL__ERROR_CODE__ERR_UNKNOWN_SENDER);
    cr_assert_eq(summary(&c, id).results, 0, "refused evaluations leave no row");
    cr_assert_eq(nawal_round_evaluated(c.s, id, c.pk[0]), 0);

    /* accepted, once per validator; any registered validator, participant or not; loss 0 is a loss */
    EXPECT(evaluate(&c, 0, id, r.model_cid, 2.0, 100), 0, OK);
    EXPECT(evaluate(&c, 0, id, r.model_cid, 2.5, 100), REFUSED, NAWAL__ERROR_CODE__ERR_DUPLICATE);
    EXPECT(evaluate(&c, 1, id, r.model_cid, 3.0, 300), 0, OK);
    EXPECT(evaluate(&c, 3, id, r.model_cid, 0.0, 1), 0, OK);
    cr_assert_eq(nawal_round_evaluated(c.s, id, c.pk[0]), 1);
    cr_assert_eq(nawal_round_evaluated(c.s, id, c.pk[2]), 0);
    sum = summary(&c, id);
    cr_assert_eq(sum.results, 3);
    cr_assert_eq(sum.tokens, 401);
    cr_assert(fabs(sum.loss - (2.0 * 100 + 3.0 * 300 + 0.0) / 401) < 1e-12, "token-weighted mean %.17g", sum.loss);
    cr_assert_eq(summary(&c, t.announced_round).results, 0);

    /* kept in the directory */
    nawal_store_close(c.s);
    c.s = coord_open(g_dir);
    sum = summary(&c, id);
    cr_assert(sum.results == 3 && sum.tokens == 401);
    EXPECT(evaluate(&c, 1, id, r.model_cid, 3.0, 300), REFUSED, NAWAL__ERROR_CODE__ERR_DUPLICATE);
    ctx_close(&c);
}

/* Token counts are bounded (NAWAL_EVAL_MAX_TOKENS): the bound itself is accepted, and the round's
 * summary stays exact and in range with rows at the bound and rows above it recorded before the
 * bound was enforced (clamped to it, so no row weighs more). */
Test(coord_rounds, evaluation_tokens_bounded) {
    ctx c;
    ctx_open(&c);
    int64_t id = announce(&c, &PARAMS, T0);
    for (int i = 0; i < 3; i++) EXPECT(join(&c, i, id, 1000, T0 + 10 + i), 0, OK);
    for (int i = 0; i < 3; i++) EXPECT(submit(&c, i, id, 10, T0 + 1000 + i, NULL), 0, OK);
    nawal_tick_report t = tick(&c, T0 + 2000);
    cr_assert_eq(t.closed_round, id, "%s", t.note);
    nawal_round r = get_round(&c, id);
    EXPECT(evaluate(&c, 0, id, r.model_cid, 1.0, NAWAL_EVAL_MAX_TOKENS), 0, OK);
    EXPECT(evaluate(&c, 1, id, r.model_cid, 3.0, NAWAL_EVAL_MAX_TOKENS), 0, OK);
    nawal_evaluation_summary sum = summary(&c, id);
    cr_assert(sum.results == 2 && sum.tokens == 2 * NAWAL_EVAL_MAX_TOKENS, "%llu tokens", (unsigned long long)sum.tokens);
    cr_assert(fabs(sum.loss - 2.0) < 1e-12, "mean %.17g", sum.loss);
    /* rows of INT64_MAX tokens, as an earlier version accepted them */
    sqlite3_stmt *st;
    cr_assert_eq(sqlite3_prepare_v2(nawal_store_db(c.s),
                                    "INSERT INTO evaluations(round_id, validator, model_cid, loss, tokens, received_ms)"
                                    " VALUES (?1, ?2, ?3, ?4, ?5, 0)", -1, &st, NULL), SQLITE_OK);
    for (int i = 2; i < 4; i++) {
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_blob(st, 2, c.pk[i], 32, SQLITE_STATIC);
        sqlite3_bind_blob(st, 3, r.model_cid, 32, SQLITE_STATIC);
        sqlite3_bind_double(st, 4, 2.0 * i);
        sqlite3_bind_int64(st, 5, INT64_MAX);
        cr_assert_eq(sqlite3_step(st), SQLITE_DONE, "%s", sqlite3_errmsg(nawal_store_db(c.s)));
    }
    sqlite3_finalize(st);
    sum = summary(&c, id);
    cr_assert_eq(sum.results, 4);
    cr_assert_eq(sum.tokens, 4 * NAWAL_EVAL_MAX_TOKENS, "each row clamped: %llu", (unsigned long long)sum.tokens);
    cr_assert(sum.tokens <= (uint64_t)INT64_MAX);
    cr_assert(fabs(sum.loss - (1.0 + 3.0 + 4.0 + 6.0) / 4) < 1e-12, "each row weighs at most the bound: %.17g", sum.loss);
    ctx_close(&c);
}

/* A version 2 directory (before evaluations), and a version 3 one (before
 * model patches), open as the current version with their data. */
Test(coord_rounds, schema_v2_and_v3_upgraded_in_place) {
    ctx c;
    ctx_open(&c);
    int64_t id = announce(&c, &PARAMS, T0);
    downgrade_and_reopen(&c, "DROP TABLE model_patches; DROP TABLE evaluations; UPDATE schema_version SET version = 2;");
    cr_assert_eq(summary(&c, id).results, 0, "the evaluations table is there");
    downgrade_and_reopen(&c, "DROP TABLE model_patches; UPDATE schema_version SET version = 3;");
    cr_assert_eq(get_round(&c, id).id, id, "the round survived the upgrades");
    nawal_patch_row row;
    char err[512] = "";
    cr_assert_eq(nawal_patch_find(c.s, c.base_cid, &row, err, sizeof err), 0, "the model_patches table is there: %s", err);
    ctx_close(&c);
}

/* A top-k update (delta_codec frame, ratio 0.01) submitted by who. */
static void submit_topk(ctx *c, int who, int64_t round, int64_t now) {
    size_t n = agg_total(), len;
    float *d = malloc(n * 4);
    agg_random(&c->seed, d, n, 0.01f);
    nawal_delta_params p;
    nawal_delta_params_default(&p);
    p.ratio = 0.01f;
    uint8_t *fr, cid[32];
    char err[512] = "";
    cr_assert_eq(nawal_delta_encode(nawal_ops_cpu(1), &p, d, NULL, n, &fr, &len, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_blobstore_put_buffer(c->s, fr, len, cid, err, sizeof err), 0, "%s", err);
    EXPECT(nawal_round_submit(c->s, c->pk[who], round, get_round(c, round).base_cid, cid, 10, 700000, now, &g_reply), 0, OK);
    free(fr);
    free(d);
}

static uint8_t *blob_bytes(ctx *c, const uint8_t cid[32], size_t *len) {
    char path[4096], err[512] = "";
    uint8_t *b;
    cr_assert_eq(nawal_blobstore_path(c->s, cid, path, sizeof path), 0);
    cr_assert_eq(nawal_file_read_all(path, UINT64_MAX, &b, len, err, sizeof err), 0, "%s", err);
    return b;
}

/* After a top-k round the patch base -> new model is recorded, served and announced, and applies to
 * the base blob giving exactly the new model blob; after a dense round (every word changes) none is. */
Test(coord_rounds, topk_round_records_a_model_patch_dense_round_none) {
    ctx c;
    ctx_open(&c);
    int64_t id = announce(&c, &PARAMS, T0);
    for (int i = 0; i < 3; i++) EXPECT(join(&c, i, id, 1000, T0 + 10 + i), 0, OK);
    for (int i = 0; i < 3; i++) submit_topk(&c, i, id, T0 + 1000 + i);
    nawal_tick_report t = tick(&c, T0 + 2000);
    cr_assert_eq(t.closed_round, id, "%s", t.note);
    nawal_patch_row row;
    char err[512] = "";
    cr_assert_eq(nawal_patch_find(c.s, t.model_cid, &row, err, sizeof err), 1, "no patch recorded: %s", err);
    cr_assert(nawal_cid_equal(row.from_cid, c.base_cid) && nawal_cid_equal(row.to_cid, t.model_cid));
    cr_assert(nawal_patch_is_blob(c.s, row.patch_cid));
    size_t nb, nm, np, nout;
    uint8_t *base = blob_bytes(&c, c.base_cid, &nb), *model = blob_bytes(&c, t.model_cid, &nm),
            *patch = blob_bytes(&c, row.patch_cid, &np), *out;
    cr_assert_eq(np, row.patch_size);
    cr_assert(np * NAWAL_PATCH_KEEP_DIV < nm, "patch of %zu bytes for a %zu-byte model", np, nm);
    cr_assert_eq(nawal_model_patch_apply(base, nb, patch, np, &out, &nout, err, sizeof err), 0, "%s", err);
    cr_assert(nout == nm && !memcmp(out, model, nm), "the patched base is not the new model");
    free(out);
    free(base);
    free(model);
    free(patch);
    /* the next round's announcement names it */
    nawal_round next = get_round(&c, id + 1);
    nawal_announce_msg a;
    cr_assert_eq(nawal_announce_build(c.s, &next, &a, err, sizeof err), 0, "%s", err);
    cr_assert(a.msg.patch_cid.len == 32 && !memcmp(a.msg.patch_cid.data, row.patch_cid, 32));
    cr_assert(a.msg.patch_from_cid.len == 32 && !memcmp(a.msg.patch_from_cid.data, c.base_cid, 32));
    cr_assert_eq(a.msg.patch_size, row.patch_size);
    /* a dense round: its patch would be about the model's size */
    for (int i = 0; i < 3; i++) EXPECT(join(&c, i, id + 1, 1000, T0 + 2010 + i), 0, OK);
    for (int i = 0; i < 3; i++) EXPECT(submit(&c, i, id + 1, 10, T0 + 3000 + i, NULL), 0, OK);
    t = tick(&c, T0 + 4000);
    cr_assert_eq(t.closed_round, id + 1, "%s", t.note);
    cr_assert_eq(nawal_patch_find(c.s, t.model_cid, &row, err, sizeof err), 0, "a dense round's patch was kept");
    next = get_round(&c, id + 2);
    cr_assert_eq(nawal_announce_build(c.s, &next, &a, err, sizeof err), 0, "%s", err);
    cr_assert(a.msg.patch_cid.len == 0 && a.msg.patch_size == 0, "announced a patch without one");
    ctx_close(&c);
}
