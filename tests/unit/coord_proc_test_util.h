/* coord_proc_test_util.h - the real binaries as child processes, for the
 * coordinator tests that run them (test_coord_serve.c, test_coord_agent_run.c,
 * test_coord_forged.c): a command line run to completion with its output
 * in a log, a child started in the background (killed with the test if the
 * test dies), `nawal-coordinator serve` on an ephemeral loopback port, and,
 * where the test links the agent (NAWAL_AGENT_BIN), validators made with
 * `nawal-agent keygen` + `validator add` and `nawal-agent run` processes.
 * Everything asserts through Criterion. */
#ifndef NAWAL_COORD_PROC_TEST_UTIL_H
#define NAWAL_COORD_PROC_TEST_UTIL_H

#include "coord_test_util.h"
#include "identity.h"
#include "ws_test_util.h"

#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/prctl.h>
#include <sys/wait.h>

/* The suite of a test file of this kind, with its globals g_root (a fresh
 * /tmp/nawal_test_NAME.XXXXXX per test, removed after it) and g_dir (the
 * coordinator directory g_root/coord). */
#define COORD_PROC_SUITE(suite, name)                                                 \
    static char g_root[128], g_dir[160];                                              \
    static void suite##_setup(void) {                                                 \
        coord_make_root(g_root, sizeof g_root, name);                                 \
        snprintf(g_dir, sizeof g_dir, "%s/coord", g_root);                            \
    }                                                                                 \
    static void suite##_teardown(void) { coord_rm_rf(g_root); }                       \
    TestSuite(suite, .init = suite##_setup, .fini = suite##_teardown, .timeout = 300)

/* Runs a shell command line with its output appended to root/cli.log;
 * asserts exit 0 (showing the log when it is not). */
static inline void coord_sh(const char *root, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void coord_sh(const char *root, const char *fmt, ...) {
    char line[1600], cmd[1800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s >>%s/cli.log 2>&1", line, root);
    int rc = system(cmd);
    char path[300];
    snprintf(path, sizeof path, "%s/cli.log", root);
    char *log = rc ? coord_slurp(path, NULL) : NULL;
    cr_assert_eq(rc, 0, "'%s' failed (%d):\n%s", line, rc, log ? log : "");
    free(log);
}

/* fork + exec of `sh -c cmd` with stdout/stderr appended to log (and env, "NAME=VALUE", when set). */
static inline pid_t coord_spawn(const char *cmd, const char *log, const char *env) {
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

/* Waits up to timeout_s for pid; returns its wait status (kills it on timeout and fails, showing log). */
static inline int coord_wait_exit(pid_t pid, double timeout_s, const char *log) {
    int st;
    for (double t0 = wt_now(); wt_now() - t0 < timeout_s;) {
        if (waitpid(pid, &st, WNOHANG) == pid) return st;
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    char *l = coord_slurp(log, NULL);
    cr_assert_fail("process did not exit within %.0f s; its log:\n%s", timeout_s, l ? l : "");
    return st;
}

/* ---- nawal-coordinator serve ---------------------------------------------- */

typedef struct {
    pid_t pid;
    int port;
    char log[200];
} serve_proc;

/* Starts `serve --dir dir --listen 127.0.0.1:0 EXTRA...` with env (may be NULL) logging to log and waits for its port. */
static inline void serve_start_env(serve_proc *p, const char *dir, const char *log, const char *extra, const char *env) {
    snprintf(p->log, sizeof p->log, "%s", log);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "exec %s serve --dir %s --listen 127.0.0.1:0 %s", NAWAL_COORDINATOR_BIN, dir,
             extra ? extra : "");
    p->pid = coord_spawn(cmd, p->log, env);
    p->port = 0;
    for (double t0 = wt_now(); wt_now() - t0 < 20 && !p->port;) {
        char *l = coord_slurp(p->log, NULL);
        const char *at = l ? strstr(l, "event=serve_listening") : NULL;
        if (at && (at = strstr(at, " port="))) p->port = atoi(at + 6);
        free(l);
        int st;
        if (!p->port && waitpid(p->pid, &st, WNOHANG) == p->pid) {
            l = coord_slurp(p->log, NULL);
            cr_assert_fail("serve exited at start (status %d):\n%s", st, l ? l : "");
        }
        if (!p->port) usleep(20000);
    }
    cr_assert(p->port > 0, "serve did not report its port (log %s)", p->log);
}

static inline void serve_start_at(serve_proc *p, const char *dir, const char *log, const char *extra) {
    serve_start_env(p, dir, log, extra, NULL);
}

/* Sends sig and waits for the exit (20 s); returns the wait status. */
static inline int serve_stop(serve_proc *p, int sig) {
    kill(p->pid, sig);
    return coord_wait_exit(p->pid, 20, p->log);
}

/* SIGTERM: exit 0 with its serve_stopped line. */
static inline void serve_stop_clean(serve_proc *p) {
    int st = serve_stop(p, SIGTERM);
    char *log = coord_slurp(p->log, NULL);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "serve exit status %d after SIGTERM:\n%s", st, log ? log : "");
    cr_assert(log && strstr(log, "event=serve_stopped"), "no serve_stopped line:\n%s", log ? log : "");
    free(log);
}

/* ---- validators running nawal-agent ---------------------------------------- */

#ifdef NAWAL_AGENT_BIN

typedef struct {
    char name[8], key[200], data[200], log[200];
    uint8_t pk[32];
    pid_t pid;
} validator;

/* keygen (root/NAME), registration in dir with stake, and a text file
 * root/NAME.txt of 2500 words from a small vocabulary (seeded per validator). */
static inline void validator_make(validator *v, const char *root, const char *dir, const char *name, const char *stake,
                                  uint64_t seed) {
    snprintf(v->name, sizeof v->name, "%s", name);
    snprintf(v->key, sizeof v->key, "%s/%s", root, name);
    snprintf(v->data, sizeof v->data, "%s/%s.txt", root, name);
    snprintf(v->log, sizeof v->log, "%s/agent_%s.log", root, name);
    coord_sh(root, "%s keygen --out %s", NAWAL_AGENT_BIN, v->key);
    char path[300];
    snprintf(path, sizeof path, "%s/identity.pub", v->key);
    char *hex = coord_slurp(path, NULL);
    cr_assert(hex);
    hex[64] = 0;
    cr_assert_eq(nawal_pubkey_from_hex(v->pk, hex, NULL, 0), 0);
    coord_sh(root, "%s validator add --dir %s --pubkey %s --stake %s", NAWAL_COORDINATOR_BIN, dir, hex, stake);
    free(hex);
    static const char *words[] = {"the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "far", "hills"};
    FILE *f = fopen(v->data, "w");
    cr_assert(f);
    for (int i = 0; i < 2500; i++) fprintf(f, "%s%s", words[test_rand_u64(&seed) % 12], i % 13 == 12 ? ".\n" : " ");
    fclose(f);
}

/* `nawal-agent run` on loopback plaintext, CPU, one thread, one round, EXTRA flags and env. */
static inline void validator_start(validator *v, int port, const char *stake, const char *extra, const char *env) {
    char cmd[1400];
    snprintf(cmd, sizeof cmd,
             "exec %s run --coordinator ws://127.0.0.1:%d --insecure-plaintext --key %s --data %s --device cpu "
             "--threads 1 --stake %s --rounds 1 %s",
             NAWAL_AGENT_BIN, port, v->key, v->data, stake, extra ? extra : "");
    v->pid = coord_spawn(cmd, v->log, env);
}

static inline void validator_expect_exit(validator *v, int code, double timeout_s) {
    int st = coord_wait_exit(v->pid, timeout_s, v->log);
    char *log = coord_slurp(v->log, NULL);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == code, "agent %s: exit status %d, expected exit %d; its log:\n%s",
              v->name, st, code, log ? log : "");
    free(log);
}

static inline void validator_log_has(const validator *v, const char *text) {
    char *log = coord_slurp(v->log, NULL);
    cr_assert(log && strstr(log, text), "agent %s: no \"%s\" in its log:\n%s", v->name, text, log ? log : "");
    free(log);
}

#endif /* NAWAL_AGENT_BIN */

#endif
