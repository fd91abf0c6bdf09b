/* test_coord_agent_run.c - `nawal-agent run` against `nawal-coordinator
 * serve`, both as child processes on loopback (plaintext): a coordinator
 * directory with a tiny model, validators registered from `nawal-agent
 * keygen` keys, a round started, agents trained on small generated text
 * files with --rounds 1. Checked: every agent exits 0, the round closes with
 * each agent's update recorded once and aggregated (codec frames and a
 * dense safetensors delta), the new global model differs from the base,
 * the ledger verifies; and an agent that dies between its UpdateSubmit and
 * the upload (NAWAL_AGENT_TEST_CRASH=upload) and is restarted resubmits
 * from its state directory, so its update counts exactly once. */
#include "coord_test_util.h"
#include "cid.h"
#include "identity.h"
#include "ws_test_util.h"

#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#define MODEL "1,2,32,32,257"
#define STAKE "1000000000000"
#define POOL 1000000000000ull

static char g_root[128], g_dir[160];

static void setup(void) {
    coord_make_root(g_root, sizeof g_root, "agent_run");
    snprintf(g_dir, sizeof g_dir, "%s/coord", g_root);
}
static void teardown(void) { coord_rm_rf(g_root); }

TestSuite(coord_agent_run, .init = setup, .fini = teardown, .timeout = 300);

/* Runs a shell command line (output appended to root/cli.log); asserts exit 0. */
static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...) {
    char line[1600], cmd[1800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s >>%s/cli.log 2>&1", line, g_root);
    int rc = system(cmd);
    char path[300];
    snprintf(path, sizeof path, "%s/cli.log", g_root);
    char *log = rc ? coord_slurp(path, NULL) : NULL;
    cr_assert_eq(rc, 0, "'%s' failed (%d):\n%s", line, rc, log ? log : "");
    free(log);
}

/* fork + exec of `sh -c cmd` with stdout/stderr to log (and extra env). */
static pid_t spawn(const char *cmd, const char *log, const char *env) {
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a failed test */
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(fd, 1);
        dup2(fd, 2);
        if (env) putenv((char *)env);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Waits up to timeout_s for pid; returns its wait status (kills it on timeout and fails). */
static int wait_exit(pid_t pid, double timeout_s, const char *log) {
    int st;
    for (double t0 = wt_now(); wt_now() - t0 < timeout_s;) {
        if (waitpid(pid, &st, WNOHANG) == pid) return st;
        usleep(20000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    char *l = coord_slurp(log, NULL);
    cr_assert_fail("process did not exit within %.0f s; its log:\n%s", timeout_s, l ? l : "");
    return st;
}

typedef struct {
    pid_t pid;
    int port;
    char log[200];
} serve_proc;

static void serve_start(serve_proc *p) {
    snprintf(p->log, sizeof p->log, "%s/serve.log", g_root);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "exec %s serve --dir %s --listen 127.0.0.1:0 --insecure-plaintext", NAWAL_COORDINATOR_BIN, g_dir);
    p->pid = spawn(cmd, p->log, NULL);
    p->port = 0;
    for (double t0 = wt_now(); wt_now() - t0 < 20 && !p->port;) {
        char *log = coord_slurp(p->log, NULL);
        const char *at = log ? strstr(log, "event=serve_listening") : NULL;
        if (at && (at = strstr(at, " port="))) p->port = atoi(at + 6);
        free(log);
        int st;
        cr_assert(p->port || waitpid(p->pid, &st, WNOHANG) != p->pid, "serve exited at start");
        if (!p->port) usleep(20000);
    }
    cr_assert(p->port > 0, "serve did not report its port (log %s)", p->log);
}

static void serve_stop(serve_proc *p) {
    kill(p->pid, SIGTERM);
    int st = wait_exit(p->pid, 20, p->log);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "serve exit status %d", st);
}

/* ---- validators ------------------------------------------------------------ */

typedef struct {
    char name[8], key[200], data[200], log[200];
    uint8_t pk[32];
    pid_t pid;
} validator;

/* keygen, registration, and a text file of n words from a small vocabulary (seeded per validator). */
static void validator_make(validator *v, const char *name, uint64_t seed) {
    snprintf(v->name, sizeof v->name, "%s", name);
    snprintf(v->key, sizeof v->key, "%s/%s", g_root, name);
    snprintf(v->data, sizeof v->data, "%s/%s.txt", g_root, name);
    snprintf(v->log, sizeof v->log, "%s/agent_%s.log", g_root, name);
    sh("%s keygen --out %s", NAWAL_AGENT_BIN, v->key);
    char path[300];
    snprintf(path, sizeof path, "%s/identity.pub", v->key);
    char *hex = coord_slurp(path, NULL);
    cr_assert(hex);
    hex[64] = 0;
    cr_assert_eq(nawal_pubkey_from_hex(v->pk, hex, NULL, 0), 0);
    sh("%s validator add --dir %s --pubkey %s --stake " STAKE, NAWAL_COORDINATOR_BIN, g_dir, hex);
    free(hex);
    static const char *words[] = {"the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "far", "hills"};
    FILE *f = fopen(v->data, "w");
    cr_assert(f);
    for (int i = 0; i < 2500; i++) fprintf(f, "%s%s", words[test_rand_u64(&seed) % 12], i % 13 == 12 ? ".\n" : " ");
    fclose(f);
}

static void agent_start(validator *v, int port, const char *extra, const char *env) {
    char cmd[1400];
    snprintf(cmd, sizeof cmd,
             "exec %s run --coordinator ws://127.0.0.1:%d --insecure-plaintext --key %s --data %s --device cpu "
             "--threads 1 --stake " STAKE " --rounds 1 %s",
             NAWAL_AGENT_BIN, port, v->key, v->data, extra ? extra : "");
    v->pid = spawn(cmd, v->log, env);
}

static void agent_expect_exit(validator *v, int code) {
    int st = wait_exit(v->pid, 180, v->log);
    char *log = coord_slurp(v->log, NULL);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == code, "agent %s: exit status %d, expected exit %d; its log:\n%s",
              v->name, st, code, log ? log : "");
    free(log);
}

static void agent_log_has(const validator *v, const char *text) {
    char *log = coord_slurp(v->log, NULL);
    cr_assert(log && strstr(log, text), "agent %s: no \"%s\" in its log:\n%s", v->name, text, log ? log : "");
    free(log);
}

/* Round 1 closed with a new model, and exactly one recorded update from each of vs[0..n). */
static void check_round(const validator *vs, size_t n) {
    nawal_store *s = coord_open(g_dir);
    char err[512] = "";
    nawal_round r;
    cr_assert_eq(nawal_store_round_get(s, 1, &r, err, sizeof err), 0, "%s", err);
    cr_assert_eq(r.state, NAWAL_ROUND_CLOSED, "round 1 is %s, not closed", nawal_round_state_name(r.state));
    cr_assert(r.has_model_cid, "round 1 has a new model");
    cr_assert(!nawal_cid_equal(r.model_cid, r.base_cid), "the new global model differs from the base");
    nawal_submission *subs = NULL;
    size_t ns = 0;
    cr_assert_eq(nawal_store_submissions(s, 1, &subs, &ns, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ns, n, "%zu updates recorded, expected %zu", ns, n);
    for (size_t i = 0; i < n; i++) {
        int seen = 0;
        for (size_t j = 0; j < ns; j++) seen += !memcmp(subs[j].validator, vs[i].pk, 32);
        cr_assert_eq(seen, 1, "validator %s has %d updates recorded", vs[i].name, seen);
    }
    free(subs);
    nawal_store_close(s);
}

/* ---- tests ------------------------------------------------------------------- */

Test(coord_agent_run, three_agents_one_round) {
    sh("%s init --dir %s --model-config " MODEL, NAWAL_COORDINATOR_BIN, g_dir);
    validator v[3];
    validator_make(&v[0], "a", 1);
    validator_make(&v[1], "b", 2);
    validator_make(&v[2], "c", 3);
    sh("%s round start --dir %s --pool-planck %llu --target 3 --min 2 --deadline-s 240 --join-window-s 120 --steps 8 "
       "--batch 4 --lr 0.003", NAWAL_COORDINATOR_BIN, g_dir, POOL);
    serve_proc sp;
    serve_start(&sp);
    agent_start(&v[0], sp.port, NULL, NULL);                    /* codec frames (the default) */
    agent_start(&v[1], sp.port, "--delta-format codec", NULL);
    agent_start(&v[2], sp.port, "--delta-format dense", NULL);  /* a safetensors delta */
    for (int i = 0; i < 3; i++) agent_expect_exit(&v[i], 0);
    for (int i = 0; i < 3; i++) {
        agent_log_has(&v[i], "round 1: update accepted");
        agent_log_has(&v[i], "round 1: closed: new model");
        agent_log_has(&v[i], "3 updates accepted (ours included)");
        char path[300];
        snprintf(path, sizeof path, "%s/state/submission", v[i].key);
        char *sub = coord_slurp(path, NULL);
        cr_assert(sub && strstr(sub, "round 1\n") && strstr(sub, "acked 1\n"), "submission record:\n%s", sub ? sub : "");
        free(sub);
    }
    serve_stop(&sp);
    check_round(v, 3);
    sh("%s ledger verify --dir %s", NAWAL_COORDINATOR_BIN, g_dir);
}

Test(coord_agent_run, agent_killed_mid_upload_counts_once) {
    sh("%s init --dir %s --model-config " MODEL, NAWAL_COORDINATOR_BIN, g_dir);
    validator v[2];
    validator_make(&v[0], "a", 11);
    validator_make(&v[1], "b", 12);
    sh("%s round start --dir %s --pool-planck %llu --target 2 --min 2 --deadline-s 240 --join-window-s 120 --steps 6 "
       "--batch 4", NAWAL_COORDINATOR_BIN, g_dir, POOL);
    serve_proc sp;
    serve_start(&sp);
    agent_start(&v[1], sp.port, NULL, "NAWAL_AGENT_TEST_CRASH=upload");
    agent_expect_exit(&v[1], 3);
    agent_log_has(&v[1], "round 1: update submitted");
    agent_start(&v[0], sp.port, NULL, NULL);
    agent_start(&v[1], sp.port, NULL, NULL); /* restarted on the same state directory */
    agent_expect_exit(&v[0], 0);
    agent_expect_exit(&v[1], 0);
    agent_log_has(&v[1], "round 1: resubmitting the update made earlier");
    agent_log_has(&v[1], "2 updates accepted (ours included)");
    char *log = coord_slurp(v[1].log, NULL);
    /* trained once: the restart did not train again */
    const char *first = strstr(log, "round 1: training\n");
    cr_assert(log && first && !strstr(first + 1, "round 1: training\n"), "agent b trained twice:\n%s", log);
    free(log);
    serve_stop(&sp);
    check_round(v, 2);
    sh("%s ledger verify --dir %s", NAWAL_COORDINATOR_BIN, g_dir);
}
