/* test_coord_agent_eval.c - `nawal-agent run` answering the coordinator's
 * EvaluateRequests, with `nawal-coordinator serve`, both as child processes
 * on loopback (plaintext): an agent running one round answers the request
 * for that round's new model before it stops (--rounds 1); an agent that
 * connects after the round closed is asked at its Auth and answers; an
 * agent whose corpus has no validation split answers with an Error saying
 * so and keeps running. Validators that keep out of the next round do it
 * with a DP floor (--epsilon/--delta) the round does not meet. */
#include "coord_proc_test_util.h"
#include "rounds.h"

#define MODEL "1,2,32,32,257"
#define STAKE "1000000000000"
#define POOL 1000000000000ull

COORD_PROC_SUITE(coord_agent_eval, "agent_eval");

/* 1 if v's evaluation of round 1 is recorded. */
static int evaluated(const validator *v) {
    nawal_store *s = coord_open(g_dir);
    int rc = nawal_round_evaluated(s, 1, v->pk);
    nawal_store_close(s);
    cr_assert(rc >= 0);
    return rc;
}

static int log_has(const char *path, const char *a, const char *b) {
    char *log = coord_slurp(path, NULL);
    const char *at = log ? strstr(log, a) : NULL;
    int yes = at && (!b || strstr(at, b));
    free(log);
    return yes;
}

static void expect_running(const validator *v) {
    int st;
    cr_assert_eq(waitpid(v->pid, &st, WNOHANG), 0, "agent %s exited (status %d)", v->name, st);
}

static void stop(validator *v) {
    kill(v->pid, SIGTERM);
    coord_wait_exit(v->pid, 30, v->log);
}

Test(coord_agent_eval, answered_at_the_end_at_auth_and_refused_without_a_split) {
    coord_sh(g_root, "%s init --dir %s --model-config " MODEL, NAWAL_COORDINATOR_BIN, g_dir);
    validator a, c, t;
    validator_make(&a, g_root, g_dir, "a", STAKE, 1);
    validator_make(&c, g_root, g_dir, "c", STAKE, 2);
    validator_make(&t, g_root, g_dir, "t", STAKE, 3);
    FILE *f = fopen(t.data, "w"); /* 12 tokens: 1 of validation, no split */
    cr_assert(f);
    fputs("hello world.", f);
    fclose(f);
    coord_sh(g_root, "%s round start --dir %s --pool-planck %llu --target 1 --min 1 --deadline-s 240 --join-window-s 120 "
             "--steps 4 --batch 4", NAWAL_COORDINATOR_BIN, g_dir, POOL);
    serve_proc sp;
    char log[200];
    snprintf(log, sizeof log, "%s/serve.log", g_root);
    serve_start_at(&sp, g_dir, log, "--insecure-plaintext");

    /* a trains round 1, which closes with its update, and answers for the new model before stopping */
    validator_start(&a, sp.port, STAKE, NULL, NULL);
    validator_expect_exit(&a, 0, 180);
    validator_log_has(&a, "round 1: evaluation of model");
    validator_log_has(&a, "round 1: evaluated model");
    /* the agent stops only once its result is acknowledged, which the coordinator sends after
     * committing it: recorded by the time the agent has exited */
    cr_assert(evaluated(&a), "a's evaluation of round 1 is not recorded");

    /* c and t connect later (and stay out of round 2): both are asked at Auth */
    validator_start(&c, sp.port, STAKE, "--epsilon 1 --delta 1e-5", NULL);
    validator_start(&t, sp.port, STAKE, "--epsilon 1 --delta 1e-5", NULL);
    for (double t0 = wt_now(); wt_now() - t0 < 120 && !(evaluated(&c) && log_has(sp.log, "event=agent_error", "validation split"));)
        usleep(100000);
    cr_assert(evaluated(&c), "c's evaluation is not recorded");
    cr_assert(log_has(sp.log, "event=agent_error", "no validation split"), "no Error from t in the serve log");
    cr_assert(!evaluated(&t), "t has nothing to evaluate on");
    expect_running(&c);
    expect_running(&t);
    validator_log_has(&c, "round 1: evaluated model");
    validator_log_has(&t, "warning: cannot evaluate model");
    validator_log_has(&t, "no validation split");
    stop(&c);
    stop(&t);

    nawal_store *s = coord_open(g_dir);
    nawal_evaluation_summary sum;
    char err[512] = "";
    cr_assert_eq(nawal_round_evaluation_summary(s, 1, &sum, err, sizeof err), 0, "%s", err);
    cr_assert_eq(sum.results, 2);
    nawal_store_close(s);
    serve_stop_clean(&sp);
}
