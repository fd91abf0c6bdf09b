/* sim.c - `nawal-coordinator sim`: coordinator + N agents on loopback
 * (see sim.h). Setup goes through the same CLI commands an operator runs
 * (init, validator add, round start: this binary's sub-commands, logged to
 * D/logs/setup.log); the run is watched through serve's log and the
 * coordinator directory's database, read-only while serve writes it. */
#include "sim.h"

#include "accountant.h"
#include "checkpoint.h"
#include "cid.h"
#include "error.h"
#include "fileio.h"
#include "genesis.h"
#include "cli.h"
#include "identity.h"
#include "ledger.h"
#include "rewards.h"
#include "rounds.h"
#include "store.h"
#include "tlscert.h"
#include "trainer.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_VALIDATORS 64
#define VAL_MAX_BYTES 32768          /* held-out tail: 10% of the corpus, at most this */
#define STAKE_PLANCK 1000000000000000ull /* 1000 DALLA, + 500 DALLA per validator index */
#define POOL_PLANCK 100000000000000ull   /* 100 DALLA a round */
#define STOP_WAIT_S 20.0
#define FED_VAL_WAIT_S 5.0           /* a round's line waits this long at most for the validators' evaluations */

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) { g_stop = sig; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR && !g_stop) {}
}

static int mkdir_p(const char *path) {
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0700) && errno != EEXIST) return -1;
            *p = '/';
        }
    return mkdir(buf, 0700) && errno != EEXIST ? -1 : 0;
}

static char *path_fmt(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static char *path_fmt(char *out, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap) {
        fprintf(stderr, "error: path too long: %s...\n", out);
        exit(1);
    }
    return out;
}

/* ---- child processes -------------------------------------------------------- */

typedef struct {
    pid_t pid;
    char name[32];
    char log[PATH_MAX];
    int exited, status;
} child;

/* fork + exec argv[0] with stdout and stderr appended to log; the child
 * gets SIGTERM if this process dies. attack (may be NULL): the child's
 * NAWAL_AGENT_TEST_ATTACK (agent/local_update.h). */
static int spawn(child *c, const char *name, const char *log, char *const argv[], const char *attack) {
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", name);
    snprintf(c->log, sizeof c->log, "%s", log);
    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    c->pid = fork();
    if (c->pid < 0) {
        fprintf(stderr, "error: fork: %s\n", strerror(errno));
        return -1;
    }
    if (c->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(127);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0 || nul < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0 || dup2(nul, 0) < 0) _exit(127);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        if (attack) setenv("NAWAL_AGENT_TEST_ATTACK", attack, 1);
        else unsetenv("NAWAL_AGENT_TEST_ATTACK");
        execv(argv[0], argv);
        dprintf(2, "error: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    return 0;
}

static int child_ok(const child *c) { return c->exited && WIFEXITED(c->status) && WEXITSTATUS(c->status) == 0; }

static void child_report(const child *c) {
    if (WIFEXITED(c->status))
        fprintf(stderr, "error: %s exited with status %d; its log: %s\n", c->name, WEXITSTATUS(c->status), c->log);
    else
        fprintf(stderr, "error: %s was killed by signal %d; its log: %s\n", c->name,
                WIFSIGNALED(c->status) ? WTERMSIG(c->status) : 0, c->log);
}

/* Collects c's exit if it has ended (or waits up to timeout_s, then kills it). 1 if it has exited. */
static int child_poll(child *c, double timeout_s) {
    if (c->exited || c->pid <= 0) return 1;
    for (double t0 = now_s();;) {
        pid_t r = waitpid(c->pid, &c->status, WNOHANG);
        if (r == c->pid || (r < 0 && errno == ECHILD)) {
            c->exited = 1;
            return 1;
        }
        if (now_s() - t0 >= timeout_s) return 0;
        sleep_ms(20);
    }
}

/* SIGTERM, wait; SIGKILL after STOP_WAIT_S. */
static void child_stop(child *c) {
    if (c->pid <= 0 || c->exited) return;
    kill(c->pid, SIGTERM);
    if (!child_poll(c, STOP_WAIT_S)) {
        fprintf(stderr, "warning: %s did not stop within %.0f s; killed (log %s)\n", c->name, STOP_WAIT_S, c->log);
        kill(c->pid, SIGKILL);
        waitpid(c->pid, &c->status, 0);
        c->exited = 1;
    }
}

/* Runs one setup command to completion (output to log). */
static int run_step(const char *log, char *const argv[]) {
    child c;
    if (spawn(&c, argv[1] ? argv[1] : argv[0], log, argv, NULL)) return -1;
    waitpid(c.pid, &c.status, 0);
    c.exited = 1;
    if (child_ok(&c)) return 0;
    fprintf(stderr, "error: '%s %s%s%s' failed; see %s\n", argv[0], argv[1] ? argv[1] : "", argv[1] && argv[2] ? " " : "",
            argv[1] && argv[2] ? argv[2] : "", log);
    return -1;
}

/* ---- corpus ------------------------------------------------------------------------ */

/* The first newline at or after pos (its end), or pos when there is none within reach. */
static size_t cut_at_line(const char *buf, size_t len, size_t pos, size_t limit) {
    for (size_t p = pos; p < len && p < limit; p++)
        if (buf[p] == '\n') return p + 1;
    return pos;
}

static int write_file(const char *path, const char *buf, size_t len) {
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(buf, 1, len, f) == len;
    if (f && fclose(f)) ok = 0;
    if (!ok) fprintf(stderr, "error: cannot write %s: %s\n", path, strerror(errno));
    return ok ? 0 : -1;
}

/* Shards [0, train_end) into n contiguous pieces (cut at line ends) and
 * writes the tail as the validation text. min_bytes: smallest usable shard. */
static int split_corpus(const char *dir, const char *buf, size_t len, int n, size_t min_bytes, char *val_path,
                        size_t val_cap, size_t *smallest) {
    size_t val = len / 10 < VAL_MAX_BYTES ? len / 10 : VAL_MAX_BYTES;
    size_t train_end = cut_at_line(buf, len, len - val, len);
    if (train_end >= len) train_end = len - val;
    size_t start = 0;
    *smallest = SIZE_MAX;
    for (int i = 0; i < n; i++) {
        size_t end = i == n - 1 ? train_end : cut_at_line(buf, train_end, train_end * (size_t)(i + 1) / (size_t)n, train_end);
        if (end - start < min_bytes) {
            fprintf(stderr, "error: --data: %zu bytes make shards of %zu bytes for %d validators; each needs at least %zu\n",
                    len, end - start, n, min_bytes);
            return -1;
        }
        char path[PATH_MAX];
        if (write_file(path_fmt(path, sizeof path, "%s/validators/%d/data.txt", dir, i), buf + start, end - start))
            return -1;
        if (end - start < *smallest) *smallest = end - start;
        printf("validator %d: shard of %zu bytes (corpus bytes %zu..%zu)\n", i, end - start, start, end);
        start = end;
    }
    path_fmt(val_path, val_cap, "%s/validation.txt", dir);
    printf("held-out validation tail: %zu bytes\n", len - train_end);
    return write_file(val_path, buf + train_end, len - train_end);
}

/* ---- serve's log ------------------------------------------------------------------- */

typedef struct {
    int n_updates;
    double loss_sum;
    int n_loss;
    double eps_max;
    int ended;
    double ended_at;            /* now_s() when its round_ended line was read */
    double bytes_in, bytes_out; /* serve's totals when the round ended */
    char reason[256];
} round_stat;

/* The value of key=... in a log line (quoted values unquoted, escapes kept); 0 if present. */
static int kv(const char *line, const char *key, char *out, size_t cap) {
    size_t kl = strlen(key);
    for (const char *p = strstr(line, key); p; p = strstr(p + 1, key)) {
        if ((p != line && p[-1] != ' ') || p[kl] != '=') continue;
        p += kl + 1;
        size_t n = 0;
        if (*p == '"') {
            for (p++; *p && *p != '"' && n + 1 < cap; p++) {
                if (*p == '\\' && p[1]) p++;
                out[n++] = *p;
            }
        } else {
            while (*p && *p != ' ' && *p != '\n' && n + 1 < cap) out[n++] = *p++;
        }
        out[n] = 0;
        return 0;
    }
    return -1;
}

static double kv_num(const char *line, const char *key) {
    char v[64];
    return kv(line, key, v, sizeof v) ? NAN : strtod(v, NULL);
}

static void log_line(const char *line, round_stat *st, int rounds) {
    char ev[64];
    if (kv(line, "event", ev, sizeof ev)) return;
    double r = kv_num(line, "round");
    if (!(r >= 1 && r <= rounds)) return;
    round_stat *s = &st[(int)r];
    if (!strcmp(ev, "update_metrics")) {
        s->n_updates++;
        double loss = kv_num(line, "train_loss"), eps = kv_num(line, "epsilon");
        if (isfinite(loss)) s->loss_sum += loss, s->n_loss++;
        if (isfinite(eps) && eps > s->eps_max) s->eps_max = eps;
    } else if (!strcmp(ev, "round_failed")) {
        kv(line, "reason", s->reason, sizeof s->reason);
    } else if (!strcmp(ev, "round_ended")) {
        s->bytes_in = kv_num(line, "bytes_received");
        s->bytes_out = kv_num(line, "bytes_sent");
        s->ended = 1;
        s->ended_at = now_s();
    }
}

typedef struct {
    char path[PATH_MAX];
    off_t off;
    char *pend;
    size_t npend;
} log_reader;

/* Feeds the complete lines added to the log since the last call. */
static void log_read(log_reader *lr, round_stat *st, int rounds, int *port) {
    int fd = open(lr->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    char buf[65536];
    ssize_t got;
    while ((got = pread(fd, buf, sizeof buf, lr->off)) > 0) {
        lr->off += got;
        char *p = realloc(lr->pend, lr->npend + (size_t)got + 1);
        if (!p) break;
        lr->pend = p;
        memcpy(lr->pend + lr->npend, buf, (size_t)got);
        lr->npend += (size_t)got;
        lr->pend[lr->npend] = 0;
        char *line = lr->pend, *nl;
        while ((nl = memchr(line, '\n', lr->npend - (size_t)(line - lr->pend)))) {
            *nl = 0;
            char ev[64];
            if (port && !kv(line, "event", ev, sizeof ev) && !strcmp(ev, "serve_listening")) {
                double pt = kv_num(line, "port");
                if (pt > 0) *port = (int)pt;
            }
            log_line(line, st, rounds);
            line = nl + 1;
        }
        lr->npend -= (size_t)(line - lr->pend);
        memmove(lr->pend, line, lr->npend);
    }
    close(fd);
}

/* ---- evaluation ------------------------------------------------------------------- */

typedef struct {
    const nawal_ops *ops;
    int32_t *toks;
    size_t n;
} evaluator;

/* Loss of the global model blob cid on the held-out tail. */
static int eval_model(const evaluator *ev, nawal_store *s, const uint8_t cid[32], double *loss, char *err, size_t errlen) {
    char path[PATH_MAX];
    nawal_gpt *m = NULL;
    size_t np;
    if (nawal_blobstore_path(s, cid, path, sizeof path)) return nawal_fail(err, errlen, "blob path too long");
    int rc = nawal_model_file_load(&m, ev->ops, path, 16, err, errlen) ||
             nawal_eval_tokens(m, ev->toks, ev->n, loss, &np, err, errlen);
    nawal_gpt_free(m);
    return rc ? -1 : 0;
}

/* ---- the per-round line ------------------------------------------------------------ */

static void print_header(void) {
    printf("%5s  %12s  %10s  %9s  %9s  %9s  %11s  %11s  %8s  %14s\n", "round", "participants", "train loss",
           "val loss", "fed val", "epsilon", "bytes up", "bytes down", "time s", "rewards DALLA");
}

/* 1 when round id's line may be printed: it did not close, or all n
 * validators' evaluations of its new model are in, or FED_VAL_WAIT_S
 * passed since it ended (its fed val is then what arrived, or "-"). */
static int fed_val_settled(const char *coord, int64_t id, int n, double ended_at) {
    nawal_store *s;
    nawal_round r;
    nawal_evaluation_summary sum;
    if (now_s() - ended_at >= FED_VAL_WAIT_S || nawal_store_open(&s, coord, NAWAL_STORE_OPEN_PUBLIC_ONLY, NULL, 0))
        return 1;
    int rc = nawal_store_round_get(s, id, &r, NULL, 0) || nawal_round_evaluation_summary(s, id, &sum, NULL, 0);
    nawal_store_close(s);
    return rc || r.state != NAWAL_ROUND_CLOSED || sum.results >= (uint64_t)n;
}

/* Prints round id's line from the database and st; 0 if the round closed. */
static int print_round_line(const char *coord, int64_t id, const round_stat *st, const round_stat *prev, int dp,
                            const evaluator *ev) {
    nawal_store *s;
    char err[512];
    if (nawal_store_open(&s, coord, NAWAL_STORE_OPEN_PUBLIC_ONLY, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        return -1;
    }
    nawal_round r;
    nawal_evaluation_summary fed;
    uint64_t subs = 0, rejected = 0, paid = 0;
    double vloss = NAN;
    int rc = nawal_store_round_get(s, id, &r, err, sizeof err) ||
             nawal_round_counts(s, id, NULL, &subs, &rejected, err, sizeof err) ||
             nawal_round_evaluation_summary(s, id, &fed, err, sizeof err);
    if (rc == 0 && r.state == NAWAL_ROUND_CLOSED) {
        uint64_t seq;
        nawal_ledger_record rec;
        rc = nawal_ledger_find_round(s, id, &seq, err, sizeof err) || nawal_ledger_get(s, seq, &rec, err, sizeof err);
        if (rc == 0) {
            for (size_t i = 0; i < rec.entry.n_payouts; i++) paid += rec.entry.payouts[i].amount_planck;
            nawal_ledger_record_free(&rec);
            rc = eval_model(ev, s, r.model_cid, &vloss, err, sizeof err);
        }
    }
    nawal_store_close(s);
    if (rc) {
        fprintf(stderr, "error: round %lld: %s\n", (long long)id, err);
        return -1;
    }
    char part[32], tl[32], vl[32], fv[32], eps[32], d[NAWAL_DALLA_STR_BYTES];
    snprintf(part, sizeof part, "%llu/%u", (unsigned long long)(r.state == NAWAL_ROUND_CLOSED ? subs - rejected : 0),
             r.target);
    if (st->n_loss) snprintf(tl, sizeof tl, "%.4f", st->loss_sum / st->n_loss);
    else snprintf(tl, sizeof tl, "-");
    if (isfinite(vloss)) snprintf(vl, sizeof vl, "%.4f", vloss);
    else snprintf(vl, sizeof vl, "-");
    if (isfinite(fed.loss)) snprintf(fv, sizeof fv, "%.4f", fed.loss);
    else snprintf(fv, sizeof fv, "-");
    if (dp) snprintf(eps, sizeof eps, "%.3f", st->eps_max);
    else snprintf(eps, sizeof eps, "off");
    printf("%5lld  %12s  %10s  %9s  %9s  %9s  %11.0f  %11.0f  %8.1f  %14s", (long long)id, part, tl, vl, fv, eps,
           st->bytes_in - prev->bytes_in, st->bytes_out - prev->bytes_out, (double)(r.closed_ms - r.started_ms) / 1e3,
           nawal_planck_to_dalla(d, paid));
    if (r.state != NAWAL_ROUND_CLOSED) printf("  FAILED: %s", st->reason[0] ? st->reason : nawal_round_state_name(r.state));
    printf("\n");
    fflush(stdout);
    return r.state == NAWAL_ROUND_CLOSED ? 0 : -1;
}

/* ---- the command ------------------------------------------------------------------- */

typedef struct {
    const char *data, *dir, *model, *device, *strategy, *attack;
    int validators, rounds, steps, batch, dp, plaintext, threads, deadline_s, byzantine;
    float lr, topk, epsilon, delta;
} sim_opts;

/* DP over the whole run: --epsilon is each validator's budget for all R
 * rounds (the agents keep one privacy budget across rounds), so the round
 * config gets the sampling rate of the smallest shard (byte tokens, the
 * agent's 90% training split, windows of the model's context) and the
 * noise multiplier that reaches epsilon after rounds x steps steps. */
static int dp_plan(const sim_opts *o, const nawal_gpt_config *cfg, size_t shard_bytes, char *sigma_s, char *rate_s,
                   size_t cap) {
    size_t n_train = shard_bytes - shard_bytes / 10, n_ex = (n_train - 1) / (size_t)cfg->n_ctx;
    float q = n_ex > (size_t)o->batch ? (float)o->batch / (float)n_ex : 1.0f;
    double sigma, eps_at;
    char err[256];
    if (nawal_noise_multiplier_for_epsilon(0.999 * o->epsilon, q, (uint64_t)o->rounds * (uint64_t)o->steps, o->delta,
                                           1e-3, &sigma, &eps_at, err, sizeof err)) {
        fprintf(stderr, "error: --epsilon %g over %d rounds of %d steps: %s\n", (double)o->epsilon, o->rounds, o->steps, err);
        return -1;
    }
    snprintf(sigma_s, cap, "%.7g", sigma * (1 + 1e-5));
    snprintf(rate_s, cap, "%.9g", (double)q);
    printf("DP-SGD: sampling rate %.4g, noise multiplier %.4f: epsilon %.3f after %d x %d steps (delta %g)\n", (double)q,
           sigma, eps_at, o->rounds, o->steps, (double)o->delta);
    return 0;
}

/* D: --dir (absent or empty) or a fresh temporary directory. */
static int make_dir(const sim_opts *o, char *dir, size_t cap) {
    if (o->dir) {
        if (mkdir_p(o->dir)) {
            fprintf(stderr, "error: --dir %s: %s\n", o->dir, strerror(errno));
            return -1;
        }
        char *abs = realpath(o->dir, NULL);
        if (!abs) return -1;
        snprintf(dir, cap, "%s", abs);
        free(abs);
        char probe[PATH_MAX];
        struct stat sb;
        if (stat(path_fmt(probe, sizeof probe, "%s/coordinator", dir), &sb) == 0) {
            fprintf(stderr, "error: --dir %s already holds a federation; give a new or empty directory\n", o->dir);
            return -1;
        }
        return 0;
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, cap, "%s/nawal-sim-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        fprintf(stderr, "error: cannot create a directory %s: %s\n", dir, strerror(errno));
        return -1;
    }
    return 0;
}

/* The directory of this executable (nawal-agent lives next to it). */
static int self_dir(char *out, size_t cap) {
    ssize_t n = readlink("/proc/self/exe", out, cap - 1);
    if (n <= 0) return -1;
    out[n] = 0;
    char *slash = strrchr(out, '/');
    if (!slash) return -1;
    *slash = 0;
    return 0;
}

static int run_sim(const sim_opts *o) {
    char bindir[PATH_MAX], coord_bin[PATH_MAX], agent_bin[PATH_MAX], dir[PATH_MAX - 128], coord[PATH_MAX], setup_log[PATH_MAX];
    if (self_dir(bindir, sizeof bindir)) {
        fprintf(stderr, "error: cannot find this executable's directory (/proc/self/exe)\n");
        return 1;
    }
    path_fmt(coord_bin, sizeof coord_bin, "%s/nawal-coordinator", bindir);
    path_fmt(agent_bin, sizeof agent_bin, "%s/nawal-agent", bindir);
    if (access(agent_bin, X_OK)) {
        fprintf(stderr, "error: %s: %s (sim runs the nawal-agent built next to nawal-coordinator)\n", agent_bin,
                strerror(errno));
        return 1;
    }
    nawal_gpt_config mcfg;
    char err[512];
    if (nawal_model_config_parse(o->model, &mcfg, err, sizeof err)) {
        fprintf(stderr, "error: --model-config: %s\n", err);
        return 2;
    }
    uint8_t *corpus;
    size_t len;
    if (nawal_file_read_all(o->data, UINT64_MAX, &corpus, &len, err, sizeof err)) { /* held whole, any size */
        fprintf(stderr, "error: --data %s\n", err);
        return 1;
    }
    if (make_dir(o, dir, sizeof dir)) {
        free(corpus);
        return 1;
    }
    printf("federation directory %s (kept; logs in %s/logs)\n", dir, dir);
    char p[PATH_MAX], val_path[PATH_MAX];
    path_fmt(coord, sizeof coord, "%s/coordinator", dir);
    path_fmt(setup_log, sizeof setup_log, "%s/logs/setup.log", dir);
    int rc = mkdir_p(path_fmt(p, sizeof p, "%s/logs", dir)) || mkdir_p(path_fmt(p, sizeof p, "%s/tls", dir));
    for (int i = 0; i < o->validators && !rc; i++) rc = mkdir_p(path_fmt(p, sizeof p, "%s/validators/%d", dir, i));
    if (rc) {
        fprintf(stderr, "error: cannot create directories under %s: %s\n", dir, strerror(errno));
        free(corpus);
        return 1;
    }
    /* each shard: a validation split and a few training windows (agent corpus: last 10% = validation) */
    size_t smallest = 0;
    rc = split_corpus(dir, (const char *)corpus, len, o->validators, (size_t)mcfg.n_ctx * 20, val_path,
                      sizeof val_path, &smallest);
    free(corpus);
    if (rc) return 1;

    /* TLS and the coordinator directory */
    char cert[PATH_MAX], key[PATH_MAX];
    path_fmt(cert, sizeof cert, "%s/tls/cert.pem", dir);
    path_fmt(key, sizeof key, "%s/tls/key.pem", dir);
    static const char *const hosts[] = {"127.0.0.1", "localhost", "::1"};
    if (!o->plaintext && nawal_tls_selfsigned(cert, key, hosts, 3, 30, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    {
        char *argv[] = {coord_bin, "init", "--dir", coord, "--model-config", (char *)o->model, "--tls-cert", cert,
                        "--tls-key", key, NULL};
        if (o->plaintext) argv[6] = NULL;
        if (run_step(setup_log, argv)) return 1;
    }
    char coord_hex[NAWAL_FINGERPRINT_HEX_BYTES], stake[MAX_VALIDATORS][32];
    uint8_t base[32];
    {
        nawal_store *s;
        char *hex = NULL;
        if (nawal_store_open(&s, coord, NAWAL_STORE_OPEN_PUBLIC_ONLY, err, sizeof err)) {
            fprintf(stderr, "error: %s\n", err);
            return 1;
        }
        rc = nawal_store_setting_get(s, NAWAL_SETTING_BASE_MODEL, &hex, err, sizeof err) ||
             nawal_cid_from_hex(base, hex, err, sizeof err);
        nawal_fingerprint(coord_hex, nawal_store_pubkey(s));
        nawal_store_close(s);
        free(hex);
        if (rc) {
            fprintf(stderr, "error: %s: initial model: %s\n", coord, err);
            return 1;
        }
    }
    for (int i = 0; i < o->validators; i++) {
        char fp[NAWAL_FINGERPRINT_HEX_BYTES];
        if (nawal_identity_create(path_fmt(p, sizeof p, "%s/validators/%d", dir, i), fp, err, sizeof err)) {
            fprintf(stderr, "error: validator %d key: %s\n", i, err);
            return 1;
        }
        snprintf(stake[i], sizeof stake[i], "%llu", STAKE_PLANCK + (unsigned long long)i * (STAKE_PLANCK / 2));
        char *argv[] = {coord_bin, "validator", "add", "--dir", coord, "--pubkey", fp, "--stake", stake[i], NULL};
        if (run_step(setup_log, argv)) return 1;
    }
    {
        char pool[32], n[16], nmin[16], dl[16], steps[16], batch[16], lr[32], topk[32], eps[32], delta[32];
        snprintf(pool, sizeof pool, "%llu", POOL_PLANCK);
        snprintf(n, sizeof n, "%d", o->validators);
        /* a robust rule may drop the attackers' updates: the honest ones suffice; Krum keeps m */
        int min = o->validators - o->byzantine;
        nawal_robust_options ro;
        char perr[256];
        if (nawal_robust_parse(o->strategy, &ro, perr, sizeof perr) == 1 && ro.rule == NAWAL_ROBUST_KRUM) {
            int m = (int)nawal_krum_kept(&ro, (size_t)o->validators, NULL);
            min = m < min ? m : min;
        }
        snprintf(nmin, sizeof nmin, "%d", min < 1 ? 1 : min);
        snprintf(dl, sizeof dl, "%d", o->deadline_s);
        snprintf(steps, sizeof steps, "%d", o->steps);
        snprintf(batch, sizeof batch, "%d", o->batch);
        snprintf(lr, sizeof lr, "%.9g", (double)o->lr);
        snprintf(topk, sizeof topk, "%.9g", (double)o->topk);
        snprintf(eps, sizeof eps, "%.9g", (double)o->epsilon);
        snprintf(delta, sizeof delta, "%.9g", (double)o->delta);
        char sigma_s[32], rate_s[32];
        if (o->dp && dp_plan(o, &mcfg, smallest, sigma_s, rate_s, sizeof sigma_s)) return 1;
        char *argv[] = {coord_bin, "round", "start", "--dir", coord, "--pool-planck", pool, "--target", n, "--min", nmin,
                        "--deadline-s", dl, "--steps", steps, "--batch", batch, "--lr", lr, "--topk", topk,
                        "--dp", "--epsilon", eps, "--delta", delta, "--noise-multiplier", sigma_s, "--sample-rate", rate_s,
                        NULL};
        if (!o->dp) argv[21] = NULL;
        if (run_step(setup_log, argv)) return 1;
    }

    /* the held-out tail, tokenised once (byte-level, as the agents) */
    evaluator ev = {nawal_ops_cpu(o->threads), NULL, 0};
    nawal_tokenizer *tok = NULL;
    uint8_t *vtext;
    size_t vlen;
    if (nawal_file_read_all(val_path, VAL_MAX_BYTES, &vtext, &vlen, err, sizeof err)) {
        fprintf(stderr, "error: validation text %s\n", err);
        return 1;
    }
    err[0] = 0;
    if (nawal_tokenizer_new_byte(&tok) || nawal_tokenizer_encode(tok, vtext, vlen, &ev.toks, &ev.n, err, sizeof err) ||
        ev.n < 2) {
        fprintf(stderr, "error: validation text %s: %s\n", val_path,
                err[0] ? err : !tok ? "out of memory" : "fewer than 2 tokens");
        free(vtext);
        nawal_tokenizer_free(tok);
        free(ev.toks);
        return 1;
    }
    free(vtext);
    nawal_tokenizer_free(tok);

    /* serve and the agents */
    child serve, agents[MAX_VALIDATORS];
    int n_agents = 0, result = 1, port = 0;
    round_stat *st = calloc((size_t)o->rounds + 1, sizeof *st);
    log_reader lr = {0};
    path_fmt(lr.path, sizeof lr.path, "%s/logs/serve.log", dir);
    memset(&serve, 0, sizeof serve);
    {
        char *argv[] = {coord_bin, "serve", "--dir", coord, "--listen", "127.0.0.1:0", "--threads", "1",
                        "--strategy", (char *)o->strategy, "--insecure-plaintext", NULL};
        if (!o->plaintext) argv[10] = NULL;
        if (!st || spawn(&serve, "serve", lr.path, argv, NULL)) goto stop;
    }
    for (double t0 = now_s(); !port; sleep_ms(50)) {
        log_read(&lr, st, o->rounds, &port);
        if (port) break;
        if (child_poll(&serve, 0)) {
            child_report(&serve);
            goto stop;
        }
        if (g_stop || now_s() - t0 > 30) {
            fprintf(stderr, "error: serve did not start listening within 30 s; its log: %s\n", serve.log);
            goto stop;
        }
    }
    char url[64], rounds_s[16], threads_s[16];
    snprintf(url, sizeof url, "%s://127.0.0.1:%d", o->plaintext ? "ws" : "wss", port);
    snprintf(rounds_s, sizeof rounds_s, "%d", o->rounds);
    snprintf(threads_s, sizeof threads_s, "%d", o->threads);
    printf("coordinator %.16s listening on %s; %d agents, %d rounds of %d steps x batch %d, top-k %g, %s, %s\n",
           coord_hex, url, o->validators, o->rounds, o->steps, o->batch, (double)o->topk, o->strategy,
           o->dp ? "DP-SGD" : "no DP");
    if (o->byzantine)
        printf("Byzantine: the last %d of the %d agents send %s instead of their deltas\n", o->byzantine,
               o->validators, o->attack);
    for (int i = 0; i < o->validators; i++) {
        char kdir[PATH_MAX], data[PATH_MAX], log[PATH_MAX], name[32];
        path_fmt(kdir, sizeof kdir, "%s/validators/%d", dir, i);
        path_fmt(data, sizeof data, "%s/validators/%d/data.txt", dir, i);
        path_fmt(log, sizeof log, "%s/logs/agent-%d.log", dir, i);
        snprintf(name, sizeof name, "agent %d", i);
        char *argv[] = {agent_bin, "run", "--coordinator", url, "--key", kdir, "--data", data, "--device",
                        (char *)o->device, "--threads", threads_s, "--stake", stake[i], "--rounds", rounds_s,
                        "--coordinator-key", coord_hex, "--ca", cert, NULL};
        if (o->plaintext) argv[18] = "--insecure-plaintext", argv[19] = NULL;
        int byz = i >= o->validators - o->byzantine;
        if (byz) snprintf(name, sizeof name, "agent %d (Byzantine)", i);
        if (spawn(&agents[n_agents], name, log, argv, byz ? o->attack : NULL)) goto stop;
        n_agents++;
    }

    /* round 0: the initial model */
    print_header();
    {
        nawal_store *s;
        double loss = NAN;
        if (nawal_store_open(&s, coord, NAWAL_STORE_OPEN_PUBLIC_ONLY, err, sizeof err)) {
            fprintf(stderr, "error: %s\n", err);
            goto stop;
        }
        rc = eval_model(&ev, s, base, &loss, err, sizeof err);
        nawal_store_close(s);
        if (rc) {
            fprintf(stderr, "error: initial model: %s\n", err);
            goto stop;
        }
        printf("%5d  %12s  %10s  %9.4f  %9s  %9s  %11s  %11s  %8s  %14s\n", 0, "-", "-", loss, "-", "-", "-", "-", "-",
               "-");
        fflush(stdout);
    }
    int printed = 0, failed = 0;
    double limit = now_s() + (double)o->rounds * o->deadline_s + 120;
    for (;;) {
        log_read(&lr, st, o->rounds, NULL);
        while (printed < o->rounds && st[printed + 1].ended &&
               fed_val_settled(coord, printed + 1, o->validators, st[printed + 1].ended_at)) {
            printed++;
            if (print_round_line(coord, printed, &st[printed], &st[printed - 1], o->dp, &ev)) failed = 1;
        }
        if (failed) goto stop;
        int done = printed == o->rounds;
        for (int i = 0; i < n_agents; i++) {
            if (!child_poll(&agents[i], 0)) {
                done = 0;
                continue;
            }
            if (!child_ok(&agents[i])) {
                child_report(&agents[i]);
                goto stop;
            }
        }
        if (done) break;
        if (child_poll(&serve, 0)) {
            child_report(&serve);
            goto stop;
        }
        if (g_stop) {
            fprintf(stderr, "interrupted (signal %d): stopping the federation\n", (int)g_stop);
            goto stop;
        }
        if (now_s() > limit) {
            fprintf(stderr, "error: %d of %d rounds ended in the time allowed; logs in %s/logs\n", printed, o->rounds, dir);
            goto stop;
        }
        sleep_ms(100);
    }
    result = 0;
stop:
    for (int i = 0; i < n_agents; i++) child_stop(&agents[i]);
    if (serve.pid > 0) {
        child_stop(&serve);
        if (result == 0 && !child_ok(&serve)) {
            child_report(&serve);
            result = 1;
        }
    }
    if (result == 0) {
        nawal_store *s;
        nawal_ledger_report rep;
        if (nawal_store_open(&s, coord, NAWAL_STORE_OPEN_PUBLIC_ONLY, err, sizeof err) == 0) {
            int v = nawal_ledger_verify(s, &rep, err, sizeof err);
            nawal_store_close(s);
            if (v == 1) snprintf(err, sizeof err, "record %llu: %s", (unsigned long long)rep.bad_seq, rep.reason);
            if (v == 0) printf("ledger ok: %llu records\n", (unsigned long long)rep.records);
            else result = 1;
        } else result = 1;
        if (result) fprintf(stderr, "error: ledger: %s\n", err);
    }
    printf("%s; directory %s\n", result ? "federation stopped after an error" : "federation done", dir);
    free(lr.pend);
    free(st);
    free(ev.toks);
    return result;
}

int nawal_cmd_sim(int argc, char **argv) {
    sim_opts o = {.model = "2,4,64,64,257", .device = "cpu", .strategy = "fedavg", .attack = "scale:-4", .validators = 3,
                  .rounds = 3, .steps = 40, .batch = 8, .threads = 1, .deadline_s = 600, .lr = 3e-3f, .topk = 0.01f,
                  .delta = 1e-5f};
    nawal_flag flags[] = {
        {"data", NAWAL_FLAG_STR, &o.data, "corpus (text): split into one contiguous shard per validator + a held-out tail", 0, -1, 1, 0},
        {"validators", NAWAL_FLAG_INT, &o.validators, "validators (agent processes)", 1, MAX_VALIDATORS, 0, 0},
        {"rounds", NAWAL_FLAG_INT, &o.rounds, "rounds to run", 1, 10000, 0, 0},
        {"steps", NAWAL_FLAG_INT, &o.steps, "local training steps per round", 1, 1e7, 0, 0},
        {"batch", NAWAL_FLAG_INT, &o.batch, "local batch size", 1, 4096, 0, 0},
        {"lr", NAWAL_FLAG_FLOAT, &o.lr, "local learning rate", 1e-9, 10, 0, 0},
        {"topk", NAWAL_FLAG_FLOAT, &o.topk, "share of each delta's entries sent (1 = dense)", 1e-6, 1, 0, 0},
        {"dp", NAWAL_FLAG_BOOL, &o.dp, "train with DP-SGD (needs --epsilon)", 0, -1, 0, 0},
        {"epsilon", NAWAL_FLAG_FLOAT, &o.epsilon, "with --dp: privacy budget of each validator for the whole run", 0, 1e6, 0, 0},
        {"delta", NAWAL_FLAG_FLOAT, &o.delta, "with --dp: delta", 0, 1, 0, 0},
        {"dir", NAWAL_FLAG_STR, &o.dir, "federation directory, absent or empty (default: a new one under $TMPDIR or /tmp)", 0, -1, 0, 0},
        {"plaintext", NAWAL_FLAG_BOOL, &o.plaintext, "no TLS (ws:// on loopback)", 0, -1, 0, 0},
        {"model-config", NAWAL_FLAG_STR, &o.model, "global model LAYERS,HEADS,WIDTH,CONTEXT,VOCAB", 0, -1, 0, 0},
        {"device", NAWAL_FLAG_STR, &o.device, "agents' device: auto|cpu|cuda", 0, -1, 0, 0},
        {"threads", NAWAL_FLAG_INT, &o.threads, "CPU threads of each agent and of the evaluation", 1, 4096, 0, 0},
        {"deadline-s", NAWAL_FLAG_INT, &o.deadline_s, "a round's deadline, seconds after its announcement", 10, 1e7, 0, 0},
        {"strategy", NAWAL_FLAG_STR, &o.strategy, "aggregation: fedavg | fedavg-sparse (each entry averaged over the updates sending it) | median | trimmed-mean[:TRIM] | krum[:F[:M]]", 0, -1, 0, 0},
        {"byzantine", NAWAL_FLAG_INT, &o.byzantine, "the last K validators attack (see --attack)", 0, MAX_VALIDATORS, 0, 0},
        {"attack", NAWAL_FLAG_STR, &o.attack, "what a Byzantine validator sends: scale:S (S x its honest delta) | noise:SIGMA (Gaussian noise)", 0, -1, 0, 0},
    };
    int pr = nawal_flags_parse(argc, argv, flags, sizeof flags / sizeof flags[0],
                               "usage: nawal-coordinator sim --data FILE [--validators N] [--rounds R] [--steps S] [--topk RATIO]\n"
                               "       [--dp --epsilon E] [--dir D] [--plaintext] [options]\n\n"
                               "Runs a whole federation on this machine: a fresh coordinator directory with a tiny GPT,\n"
                               "N validators (keys, stakes, a contiguous shard of FILE each: non-IID), a self-signed TLS\n"
                               "certificate for 127.0.0.1, `serve` and N `nawal-agent run` processes on loopback, for R\n"
                               "rounds. Prints one line per round: participants, mean train loss, the new global model's\n"
                               "loss on FILE's held-out tail, its loss on the validators' own validation splits as they\n"
                               "report it (token-weighted mean), epsilon spent (largest reported), bytes the coordinator\n"
                               "received/sent, round time, rewards paid. Logs: D/logs/.");
    if (pr) return pr == 1 ? 0 : 2;
    if (o.dp && !(o.epsilon > 0)) {
        fprintf(stderr, "error: --dp needs --epsilon E > 0\n");
        return 2;
    }
    if (!o.dp && (flags[8].seen || flags[9].seen)) {
        fprintf(stderr, "error: --epsilon and --delta go with --dp\n");
        return 2;
    }
    if (o.dp && !(o.delta > 0 && o.delta < 1)) {
        fprintf(stderr, "error: --delta must be in (0, 1)\n");
        return 2;
    }
    if (o.byzantine >= o.validators) {
        fprintf(stderr, "error: --byzantine %d: at least one of the %d validators must be honest\n", o.byzantine,
                o.validators);
        return 2;
    }
    {
        char *end = NULL;
        double v = strncmp(o.attack, "scale:", 6) && strncmp(o.attack, "noise:", 6) ? NAN : strtod(o.attack + 6, &end);
        if (!isfinite(v) || end == o.attack + 6 || *end) {
            fprintf(stderr, "error: --attack %s: expected scale:S or noise:SIGMA (a number)\n", o.attack);
            return 2;
        }
        if (flags[sizeof flags / sizeof flags[0] - 1].seen && !o.byzantine) {
            fprintf(stderr, "error: --attack goes with --byzantine K\n");
            return 2;
        }
    }
    char serr[256];
    if (nawal_aggregator_known(o.strategy, serr, sizeof serr)) {
        fprintf(stderr, "error: --strategy: %s\n", serr);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return run_sim(&o);
}
