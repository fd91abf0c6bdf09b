/* cmd_run.c - `nawal-agent run`: the validator daemon. Parses the options,
 * loads the identity, the device and the private corpus once, then runs
 * sessions with the coordinator (session.h) until --rounds round results
 * were seen (forever without it), reconnecting after a lost connection with
 * jittered exponential backoff (0.5 s doubling to 30 s, each wait drawn
 * uniformly from [d/2, d]; back to 0.5 s after a session that
 * authenticated). Exit status: 0 done, 1 fatal error, 2 usage error. */
#include "cid.h"
#include "cli.h"
#include "cmds.h"
#include "evaluate.h"
#include "session.h"
#include "state.h"

#include <errno.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BACKOFF_MIN_S 0.5
#define BACKOFF_MAX_S 30.0

/* ws://HOST:PORT[/PATH] or wss://...; HOST may be [IPv6]. */
static int parse_url(nawal_agent *ag, const char *url, int *tls) {
    const char *p;
    if (!strncmp(url, "wss://", 6)) *tls = 1, p = url + 6;
    else if (!strncmp(url, "ws://", 5)) *tls = 0, p = url + 5;
    else goto bad;
    const char *host = p, *host_end;
    if (*p == '[') {
        host = p + 1;
        if (!(host_end = strchr(host, ']'))) goto bad;
        p = host_end + 1;
    } else {
        host_end = p + strcspn(p, ":/");
        p = host_end;
    }
    if (host_end == host || (size_t)(host_end - host) >= sizeof ag->host || *p != ':') goto bad;
    memcpy(ag->host, host, (size_t)(host_end - host));
    ag->host[host_end - host] = 0;
    char *end;
    errno = 0;
    long port = strtol(p + 1, &end, 10);
    if (errno || end == p + 1 || port < 1 || port > 65535 || (*end && *end != '/')) goto bad;
    ag->port = (int)port;
    if (strlen(end) >= sizeof ag->path) goto bad;
    snprintf(ag->path, sizeof ag->path, "%s", *end ? end : "/");
    return 0;
bad:
    fprintf(stderr, "error: --coordinator '%s': want ws://HOST:PORT or wss://HOST:PORT\n", url);
    return -1;
}

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) && errno == EINTR) {}
}

int nawal_cmd_run(int argc, char **argv) {
    const char *coordinator = NULL, *key_dir = NULL, *data = NULL, *device = "auto", *state_dir = NULL;
    const char *ca = NULL, *coord_key = NULL, *tokfile = NULL, *format = "codec";
    uint64_t stake = 0;
    int insecure = 0, rounds = 0, threads = 0, skip_bad = 0;
    float epsilon = 0.0f, delta = 0.0f;
    nawal_flag flags[] = {
        {"coordinator", NAWAL_FLAG_STR, &coordinator, "ws://HOST:PORT (with --insecure-plaintext) or wss://HOST:PORT", 0, -1, 1, 0},
        {"key", NAWAL_FLAG_STR, &key_dir, "validator key directory (nawal-agent keygen); also holds the privacy budget", 0, -1, 1, 0},
        {"data", NAWAL_FLAG_STR, &data, "private training corpus: text file, or .jsonl with {\"text\": ...} per line", 0, -1, 1, 0},
        {"device", NAWAL_FLAG_STR, &device, "auto|cpu|cuda", 0, -1, 0, 0},
        {"threads", NAWAL_FLAG_INT, &threads, "CPU threads (0 = all cores)", 0, 4096, 0, 0},
        {"state", NAWAL_FLAG_STR, &state_dir, "state directory: model cache, updates, residual (default KEY/state)", 0, -1, 0, 0},
        {"stake", NAWAL_FLAG_U64, &stake, "stake declared when joining, planck", 0, -1, 0, 0},
        {"insecure-plaintext", NAWAL_FLAG_BOOL, &insecure, "no TLS (ws://; loopback tests only)", 0, -1, 0, 0},
        {"ca", NAWAL_FLAG_STR, &ca, "CA certificates (PEM) to verify the coordinator (default: the system store)", 0, -1, 0, 0},
        {"coordinator-key", NAWAL_FLAG_STR, &coord_key, "the coordinator's public key, 64 hex (default: trust the first seen)", 0, -1, 0, 0},
        {"rounds", NAWAL_FLAG_INT, &rounds, "stop after this many round results (0 = run forever)", 0, 1 << 30, 0, 0},
        {"epsilon", NAWAL_FLAG_FLOAT, &epsilon, "DP floor: refuse rounds allowing a larger epsilon (or no DP)", 0, 1e6, 0, 0},
        {"delta", NAWAL_FLAG_FLOAT, &delta, "DP floor: refuse rounds with a larger delta", 0, 1, 0, 0},
        {"delta-format", NAWAL_FLAG_STR, &format, "update encoding: codec (top-k frame) or dense (safetensors)", 0, -1, 0, 0},
        {"tokenizer", NAWAL_FLAG_STR, &tokfile, "BPE tokenizer file (default: byte-level)", 0, -1, 0, 0},
        {"skip-bad-lines", NAWAL_FLAG_BOOL, &skip_bad, "skip malformed JSONL lines instead of failing", 0, -1, 0, 0},
    };
    int pr = nawal_flags_parse(argc, argv, flags, sizeof flags / sizeof flags[0],
                               "usage: nawal-agent run --coordinator wss://HOST:PORT --key DIR --data FILE [options]\n\n"
                               "Follows the coordinator's rounds: joins, downloads the base model, trains on FILE,\n"
                               "uploads the compressed delta, and repeats; answers the coordinator's evaluation\n"
                               "requests with each new global model's loss on FILE's validation split (its last 10%).");
    if (pr) return pr == 1 ? 0 : 2;
    nawal_agent *ag = calloc(1, sizeof *ag);
    if (!ag) return 1;
    int tls = 0, rc = 2;
    char err[512] = "", state_buf[4096];
    if (parse_url(ag, coordinator, &tls)) goto out;
    if (!tls && !insecure) {
        fprintf(stderr, "error: --coordinator %s is plaintext: use wss://, or add --insecure-plaintext (loopback tests)\n", coordinator);
        goto out;
    }
    if (tls && insecure) {
        fprintf(stderr, "error: --insecure-plaintext needs a ws:// address\n");
        goto out;
    }
    if (flags[11].seen != flags[12].seen) {
        fprintf(stderr, "error: --epsilon and --delta go together (the validator's DP floor)\n");
        goto out;
    }
    if (strcmp(format, "codec") && strcmp(format, "dense")) {
        fprintf(stderr, "error: --delta-format '%s': want codec or dense\n", format);
        goto out;
    }
    if (coord_key) {
        if (nawal_pubkey_from_hex(ag->coord_pk, coord_key, err, sizeof err)) {
            fprintf(stderr, "error: --coordinator-key: %s\n", err);
            goto out;
        }
        ag->have_coord_pk = 1;
    }
    ag->insecure_plaintext = insecure;
    ag->threads = threads;
    ag->ca_file = ca;
    ag->key_dir = key_dir;
    ag->stake = stake;
    ag->rounds = rounds;
    ag->have_floor = flags[11].seen;
    ag->eps_floor = epsilon;
    ag->delta_floor = delta;
    ag->delta_codec = !strcmp(format, "codec");
    if (!state_dir) {
        snprintf(state_buf, sizeof state_buf, "%s/state", key_dir);
        state_dir = state_buf;
    }
    ag->state_dir = state_dir;

    rc = 1;
    signal(SIGPIPE, SIG_IGN);
    if (nawal_crypto_init()) {
        fprintf(stderr, "error: libsodium failed to initialise\n");
        goto out;
    }
    if (nawal_identity_load(&ag->id, key_dir, err, sizeof err) || nawal_agent_state_init(state_dir, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        goto out;
    }
    if (nawal_agent_open_device(&ag->ops, device, threads) || nawal_agent_load_tokenizer(&ag->tok, tokfile)) goto out;
    if (nawal_corpus_load(&ag->corpus, data, ag->tok, skip_bad, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        goto out;
    }
    ag->evals = nawal_agent_evals_new(); /* NULL (out of memory): every evaluation is measured */
    char fp[NAWAL_FINGERPRINT_SHORT_BYTES];
    nawal_fingerprint_short(fp, ag->id.pk);
    printf("nawal-agent %s: coordinator %s, device %s, data %s (%zu tokens, %zu train), state %s, deltas %s\n", fp,
           coordinator, ag->ops->device_desc, data, ag->corpus.n_tokens, ag->corpus.n_train, state_dir, format);
    fflush(stdout);

    double backoff = BACKOFF_MIN_S;
    for (;;) {
        int authed = 0;
        nawal_session_status st = nawal_agent_session_run(ag, &authed, err, sizeof err);
        if (st == NAWAL_SESSION_DONE) {
            printf("done: %d rounds, %llu bytes sent, %llu received\n", ag->rounds_done,
                   (unsigned long long)ag->bytes_up, (unsigned long long)ag->bytes_down);
            rc = 0;
            break;
        }
        if (st == NAWAL_SESSION_FATAL) {
            fprintf(stderr, "error: %s\n", err);
            break;
        }
        if (authed) backoff = BACKOFF_MIN_S;
        double wait = backoff / 2 + (backoff / 2) * ((double)randombytes_uniform(1000001) / 1e6);
        printf("disconnected (%s); reconnecting in %.1f s\n", err, wait);
        fflush(stdout);
        sleep_s(wait);
        backoff = backoff * 2 > BACKOFF_MAX_S ? BACKOFF_MAX_S : backoff * 2;
    }
out:
    nawal_agent_evals_free(ag->evals);
    nawal_corpus_free(&ag->corpus);
    nawal_tokenizer_free(ag->tok);
    nawal_identity_wipe(&ag->id);
    free(ag);
    return rc;
}
