/* test_coord_agent_slow.c - `nawal-agent run` keeps its connection while
 * it trains: `nawal-coordinator serve --keepalive-s 1` PINGs a silent peer
 * after 1 s and drops it after 3 s without a PONG (and --auth-timeout-s 2
 * closes unauthenticated connections early), while the agent trains a round
 * long enough to take several times that. Training runs on the agent's
 * worker thread and its event loop keeps answering, so: one connection (no
 * reconnect, one authentication on the coordinator's side), the update
 * accepted and aggregated, and the progress lines in their order. And when
 * the connection is cut mid-training anyway (the coordinator restarts), the
 * reconnected session adopts the running training: one training, one
 * UpdateSubmit. (With training on the loop's thread, the first test sees a
 * reconnect and a resubmission.) */
#include "coord_proc_test_util.h"
#include "cid.h"

#define MODEL "2,2,64,64,257"
#define STAKE "1000000000000"
#define POOL 1000000000000ull
#define STEPS "1500" /* about 12 s on one core here */
#define LONG_STEPS "2000" /* long enough for the restart and the reconnect */
#define KEEPALIVE_S 1 /* the coordinator drops a peer after 3 x this without a PONG */

static char g_root[128], g_dir[160];

static void setup(void) {
    coord_make_root(g_root, sizeof g_root, "agent_slow");
    snprintf(g_dir, sizeof g_dir, "%s/coord", g_root);
}
static void teardown(void) { coord_rm_rf(g_root); }

TestSuite(coord_agent_slow, .init = setup, .fini = teardown, .timeout = 300);

static size_t count(const char *hay, const char *needle) {
    size_t n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p++) n++;
    return n;
}

/* Offset of needle in log, failing when absent. */
static size_t at(const char *log, const char *needle) {
    const char *p = strstr(log, needle);
    cr_assert(p, "no \"%s\" in the agent's log:\n%s", needle, log);
    return (size_t)(p - log);
}

Test(coord_agent_slow, training_outlasts_the_keepalive) {
    coord_sh(g_root, "%s init --dir %s --model-config " MODEL, NAWAL_COORDINATOR_BIN, g_dir);
    validator v;
    validator_make(&v, g_root, g_dir, "a", STAKE, 21);
    coord_sh(g_root, "%s round start --dir %s --pool-planck %llu --target 1 --min 1 --deadline-s 240 "
             "--join-window-s 120 --steps " STEPS " --batch 8 --lr 0.003", NAWAL_COORDINATOR_BIN, g_dir, POOL);
    serve_proc sp;
    char slog[200], extra[100];
    snprintf(slog, sizeof slog, "%s/serve.log", g_root);
    snprintf(extra, sizeof extra, "--insecure-plaintext --auth-timeout-s 2 --keepalive-s %d", KEEPALIVE_S);
    serve_start_at(&sp, g_dir, slog, extra);
    validator_start(&v, sp.port, STAKE, NULL, NULL);
    validator_expect_exit(&v, 0, 240);
    serve_stop_clean(&sp);

    char *log = coord_slurp(v.log, NULL), *serve = coord_slurp(slog, NULL);
    cr_assert(log && serve);
    /* the training took several dead-peer timeouts */
    const char *tr = strstr(log, "round 1: trained " STEPS " steps in ");
    cr_assert(tr, "no training line in the agent's log:\n%s", log);
    double secs = atof(tr + strlen("round 1: trained " STEPS " steps in "));
    cr_assert(secs > 3 * KEEPALIVE_S + 1.0, "training took %.1f s only, not past the dead-peer timeout: raise STEPS", secs);
    /* one connection throughout */
    cr_assert(!strstr(log, "disconnected"), "the agent reconnected:\n%s", log);
    cr_assert_eq(count(log, "connected to 127.0.0.1"), 1, "the agent connected more than once:\n%s", log);
    cr_assert_eq(count(serve, "event=session_authenticated"), 1, "the coordinator saw several sessions:\n%s", serve);
    /* the progress lines, in order */
    size_t a = at(log, "round 1: training\n"), b = at(log, "round 1: trained "), c = at(log, "round 1: delta of "),
           d = at(log, "round 1: update submitted"), e = at(log, "round 1: update accepted"),
           f = at(log, "1 updates accepted (ours included)"), g = at(log, "done: 1 rounds");
    cr_assert(a < b && b < c && c < d && d < e && e < f && f < g, "progress lines out of order:\n%s", log);
    cr_assert_eq(count(log, "round 1: training"), 1, "trained more than once:\n%s", log);
    free(log);
    free(serve);

    nawal_store *s = coord_open(g_dir);
    char err[512] = "";
    nawal_round r;
    cr_assert_eq(nawal_store_round_get(s, 1, &r, err, sizeof err), 0, "%s", err);
    cr_assert_eq(r.state, NAWAL_ROUND_CLOSED, "round 1 is %s, not closed", nawal_round_state_name(r.state));
    cr_assert(r.has_model_cid && !nawal_cid_equal(r.model_cid, r.base_cid), "round 1 has a new model");
    nawal_submission *subs = NULL;
    size_t ns = 0;
    cr_assert_eq(nawal_store_submissions(s, 1, &subs, &ns, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ns, 1, "%zu updates recorded", ns);
    cr_assert(!memcmp(subs[0].validator, v.pk, 32));
    free(subs);
    nawal_store_close(s);
}

/* The connection is cut while the agent trains (the coordinator restarts on
 * the same port): the agent reconnects while its training thread runs on,
 * adopts that training instead of starting another for the round, and
 * submits its result once, on the new connection. */
Test(coord_agent_slow, reconnect_while_training_adopts_it) {
    coord_sh(g_root, "%s init --dir %s --model-config " MODEL, NAWAL_COORDINATOR_BIN, g_dir);
    validator v;
    validator_make(&v, g_root, g_dir, "a", STAKE, 22);
    coord_sh(g_root, "%s round start --dir %s --pool-planck %llu --target 1 --min 1 --deadline-s 240 "
             "--join-window-s 120 --steps " LONG_STEPS " --batch 8 --lr 0.003", NAWAL_COORDINATOR_BIN, g_dir, POOL);
    serve_proc sp;
    char slog[200], extra[100];
    snprintf(slog, sizeof slog, "%s/serve.log", g_root);
    snprintf(extra, sizeof extra, "--insecure-plaintext --keepalive-s %d", KEEPALIVE_S);
    serve_start_at(&sp, g_dir, slog, extra);
    int port = sp.port;
    validator_start(&v, port, STAKE, NULL, NULL);
    int training = 0;
    for (double t0 = wt_now(); wt_now() - t0 < 60 && !training;) {
        char *log = coord_slurp(v.log, NULL);
        training = log && strstr(log, "round 1: training\n");
        free(log);
        if (!training) usleep(20000);
    }
    cr_assert(training, "the agent did not start training");
    serve_stop_clean(&sp);
    /* the same port again, so that the agent's reconnects find it */
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "exec %s serve --dir %s --listen 127.0.0.1:%d %s", NAWAL_COORDINATOR_BIN, g_dir, port, extra);
    sp.pid = coord_spawn(cmd, sp.log, NULL);
    validator_expect_exit(&v, 0, 240);
    serve_stop_clean(&sp);

    char *log = coord_slurp(v.log, NULL);
    cr_assert(log);
    cr_assert(strstr(log, "disconnected"), "the connection was not cut:\n%s", log);
    cr_assert_eq(count(log, "round 1: training\n"), 1, "trained more than once:\n%s", log);
    cr_assert(strstr(log, "round 1: training continues (started before the reconnect)"),
              "the reconnected session did not adopt the training:\n%s", log);
    size_t a = at(log, "round 1: training continues"), b = at(log, "round 1: trained "),
           c = at(log, "round 1: update submitted"), d = at(log, "round 1: update accepted"),
           e = at(log, "1 updates accepted (ours included)");
    cr_assert(a < b && b < c && c < d && d < e, "progress lines out of order:\n%s", log);
    cr_assert_eq(count(log, "round 1: update submitted"), 1, "submitted more than once:\n%s", log);
    free(log);
}
