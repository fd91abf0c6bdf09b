/* main.c - nawal-coordinator: sub-commands on a coordinator directory
 * (init [with the initial model and TLS paths], validator add|list|remove,
 * round start|status|tick, ledger verify|show, serve: serve.h, sim: sim.h). Exit status 0 on success, 1 when
 * the operation fails (or the ledger is broken), 2 for a usage error. */
#include "checkpoint.h"
#include "cid.h"
#include "cli.h"
#include "identity.h"
#include "genesis.h"
#include "ledger.h"
#include "registry.h"
#include "rewards.h"
#include "log.h"
#include "rounds.h"
#include "serve.h"
#include "sim.h"
#include "store.h"

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NFLAGS(f) (sizeof(f) / sizeof *(f))

static int fail(const char *msg) {
    fprintf(stderr, "error: %s\n", msg);
    return 1;
}

/* Flag parser result (0 go on, 1 help printed, 2 usage error) to "stop
 * with this exit status" (-1 = go on). */
static int parsed(int rc) { return rc == 0 ? -1 : rc == 1 ? 0 : 2; }

static int open_store(nawal_store **s, const char *dir, int flags) {
    char err[512];
    if (nawal_store_open(s, dir, flags, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    return 0;
}

static int parse_pubkey(uint8_t pk[32], const char *hex) {
    char err[256];
    if (nawal_pubkey_from_hex(pk, hex, err, sizeof err)) {
        fprintf(stderr, "error: --pubkey: %s\n", err);
        return 2;
    }
    return 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

/* An absolute path of a readable file (for settings that outlive the cwd), or NULL with a message. */
static char *readable_file(const char *flag, const char *path) {
    char *abs = realpath(path, NULL);
    if (!abs || access(abs, R_OK)) {
        fprintf(stderr, "error: --%s %s: %s\n", flag, path, strerror(errno));
        free(abs);
        return NULL;
    }
    return abs;
}

static int cmd_init(int argc, char **argv) {
    const char *dir = NULL, *model_cfg = NULL, *import = NULL, *tls_cert = NULL, *tls_key = NULL;
    uint64_t seed = 1;
    nawal_flag flags[] = {
        {"dir", NAWAL_FLAG_STR, &dir, "coordinator directory to create (must be absent or empty)", 1, 0, 1, 0},
        {"model-config", NAWAL_FLAG_STR, &model_cfg, "initial GPT-2 model LAYERS,HEADS,WIDTH,CONTEXT,VOCAB", 1, 0, 0, 0},
        {"seed", NAWAL_FLAG_U64, &seed, "seed of the initial model's weights (with --model-config)", 1, 0, 0, 0},
        {"import", NAWAL_FLAG_STR, &import, "checkpoint directory to import as the initial model instead", 1, 0, 0, 0},
        {"tls-cert", NAWAL_FLAG_STR, &tls_cert, "TLS certificate chain (PEM) 'serve' uses; its absolute path is stored", 1, 0, 0, 0},
        {"tls-key", NAWAL_FLAG_STR, &tls_key, "TLS private key (PEM) 'serve' uses; its absolute path is stored", 1, 0, 0, 0},
    };
    int rc = parsed(nawal_flags_parse(argc, argv, flags, NFLAGS(flags),
                                      "usage: nawal-coordinator init --dir D [--model-config L,H,W,C,V [--seed S] | --import CKPT]\n"
                                      "       [--tls-cert CERT.pem --tls-key KEY.pem]\n\n"
                                      "Creates a coordinator directory: D/state.db (SQLite), D/blobs/ (content-addressed\n"
                                      "blob store) and the coordinator's Ed25519 key pair D/identity.key (0600) + .pub.\n"
                                      "With --model-config or --import, also the initial global model (safetensors in the\n"
                                      "blob store), the base of round 1. With --tls-cert/--tls-key, the TLS material\n"
                                      "'serve' uses (serve --cert/--key override it for one run)."));
    if (rc >= 0) return rc;
    char err[512];
    if (model_cfg && import) {
        fprintf(stderr, "error: --model-config and --import exclude each other\n");
        return 2;
    }
    if (flags[2].seen && !model_cfg) {
        fprintf(stderr, "error: --seed goes with --model-config\n");
        return 2;
    }
    if (!tls_cert != !tls_key) {
        fprintf(stderr, "error: --tls-cert and --tls-key go together\n");
        return 2;
    }
    char *cert_abs = NULL, *key_abs = NULL;
    if (tls_cert && (!(cert_abs = readable_file("tls-cert", tls_cert)) || !(key_abs = readable_file("tls-key", tls_key)))) {
        free(cert_abs);
        return 2;
    }
    /* the model first: a bad config or checkpoint leaves no directory behind */
    nawal_gpt *m = NULL;
    if (model_cfg) {
        nawal_gpt_config cfg;
        if (nawal_model_config_parse(model_cfg, &cfg, err, sizeof err)) {
            fprintf(stderr, "error: --model-config: %s\n", err);
            free(cert_abs);
            free(key_abs);
            return 2;
        }
        if (nawal_gpt_create(&m, nawal_ops_cpu(0), &cfg, 1, err, sizeof err)) {
            free(cert_abs);
            free(key_abs);
            return fail(err);
        }
        nawal_gpt_init_params(m, seed);
    } else if (import) {
        if (nawal_checkpoint_load(&m, NULL, nawal_ops_cpu(0), import, 1, err, sizeof err)) {
            nawal_gpt_free(m);
            free(cert_abs);
            free(key_abs);
            fprintf(stderr, "error: --import %s: %s\n", import, err);
            return 1;
        }
    }
    if (nawal_store_init(dir, err, sizeof err)) {
        nawal_gpt_free(m);
        free(cert_abs);
        free(key_abs);
        return fail(err);
    }
    nawal_store *s;
    if (open_store(&s, dir, m ? 0 : NAWAL_STORE_OPEN_PUBLIC_ONLY)) {
        nawal_gpt_free(m);
        free(cert_abs);
        free(key_abs);
        return 1;
    }
    uint8_t cid[32];
    const char *what = "initial model";
    rc = m ? nawal_genesis_record(s, m, cid, err, sizeof err) : 0;
    if (rc == 0 && cert_abs) {
        what = "TLS settings";
        rc = nawal_store_setting_set(s, NAWAL_SETTING_TLS_CERT, cert_abs, err, sizeof err);
        if (rc == 0) rc = nawal_store_setting_set(s, NAWAL_SETTING_TLS_KEY, key_abs, err, sizeof err);
    }
    if (rc) {
        nawal_store_close(s);
        nawal_gpt_free(m);
        free(cert_abs);
        free(key_abs);
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); /* it was absent or empty before */
        fprintf(stderr, "error: %s: %s (removed %s)\n", what, err, dir);
        return 1;
    }
    char fp[NAWAL_FINGERPRINT_HEX_BYTES];
    nawal_fingerprint(fp, nawal_store_pubkey(s));
    printf("initialised %s\ncoordinator key %s\n", dir, fp);
    if (m) {
        char hex[NAWAL_CID_HEX_BYTES];
        nawal_cid_to_hex(hex, cid);
        printf("initial model %s (%d layers, %d heads, width %d, context %d, vocab %d: %zu parameters)\n", hex,
               m->cfg.n_layer, m->cfg.n_head, m->cfg.n_embd, m->cfg.n_ctx, m->cfg.vocab, m->n_params);
    }
    if (cert_abs) printf("TLS certificate %s, key %s\n", cert_abs, key_abs);
    nawal_store_close(s);
    nawal_gpt_free(m);
    free(cert_abs);
    free(key_abs);
    return 0;
}

static int cmd_validator_add(int argc, char **argv) {
    const char *dir = NULL, *hex = NULL, *stake_s = NULL;
    nawal_flag flags[] = {
        {"dir", NAWAL_FLAG_STR, &dir, "coordinator directory", 1, 0, 1, 0},
        {"pubkey", NAWAL_FLAG_STR, &hex, "validator public key (64 lowercase hex characters, its identity.pub)", 1, 0, 1, 0},
        {"stake", NAWAL_FLAG_STR, &stake_s, "stake in planck (integer; 1 DALLA = 10^12 planck)", 1, 0, 1, 0},
    };
    int rc = parsed(nawal_flags_parse(argc, argv, flags, NFLAGS(flags),
                                      "usage: nawal-coordinator validator add --dir D --pubkey HEX --stake PLANCK"));
    if (rc >= 0) return rc;
    uint8_t pk[32];
    uint64_t stake;
    if (parse_pubkey(pk, hex)) return 2;
    if (nawal_parse_u64(stake_s, &stake)) {
        fprintf(stderr, "error: --stake: '%s' is not a whole number of planck in [0, 18446744073709551615]\n", stake_s);
        return 2;
    }
    nawal_store *s;
    if (open_store(&s, dir, 0)) return 1;
    char err[512], fp[NAWAL_FINGERPRINT_HEX_BYTES], d[NAWAL_DALLA_STR_BYTES];
    rc = nawal_registry_add(s, pk, stake, err, sizeof err);
    nawal_store_close(s);
    if (rc) return fail(err);
    nawal_fingerprint(fp, pk);
    printf("added validator %s with stake %s DALLA (%llu planck)\n", fp, nawal_planck_to_dalla(d, stake),
           (unsigned long long)stake);
    return 0;
}

static int cmd_validator_remove(int argc, char **argv) {
    const char *dir = NULL, *hex = NULL;
    nawal_flag flags[] = {
        {"dir", NAWAL_FLAG_STR, &dir, "coordinator directory", 1, 0, 1, 0},
        {"pubkey", NAWAL_FLAG_STR, &hex, "validator public key (64 lowercase hex characters)", 1, 0, 1, 0},
    };
    int rc = parsed(nawal_flags_parse(argc, argv, flags, NFLAGS(flags),
                                      "usage: nawal-coordinator validator remove --dir D --pubkey HEX\n\n"
                                      "The key may no longer join rounds; its past updates and rewards stay on record."));
    if (rc >= 0) return rc;
    uint8_t pk[32];
    if (parse_pubkey(pk, hex)) return 2;
    nawal_store *s;
    if (open_store(&s, dir, 0)) return 1;
    char err[512], fp[NAWAL_FINGERPRINT_HEX_BYTES];
    rc = nawal_registry_remove(s, pk, err, sizeof err);
    nawal_store_close(s);
    if (rc) return fail(err);
    nawal_fingerprint(fp, pk);
    printf("removed validator %s\n", fp);
    return 0;
}

static int cmd_validator_list(int argc, char **argv) {
    const char *dir = NULL;
    int all = 0;
    nawal_flag flags[] = {
        {"dir", NAWAL_FLAG_STR, &dir, "coordinator directory", 1, 0, 1, 0},
        {"all", NAWAL_FLAG_BOOL, &all, "include removed validators", 1, 0, 0, 0},
    };
    int rc = parsed(nawal_flags_parse(argc, argv, flags, NFLAGS(flags), "usage: nawal-coordinator validator list --dir D [--all]"));
    if (rc >= 0) return rc;
    nawal_store *s;
    if (open_store(&s, dir, NAWAL_STORE_OPEN_PUBLIC_ONLY)) return 1;
    nawal_validator *v;
    size_t n;
    char err[512];
    rc = nawal_registry_list(s, all, &v, &n, err, sizeof err);
    nawal_store_close(s);
    if (rc) return fail(err);
    printf("%-64s  %28s  %-24s%s\n", "pubkey", "stake (DALLA)", "added (UTC)", all ? "  status" : "");
    for (size_t i = 0; i < n; i++) {
        char fp[NAWAL_FINGERPRINT_HEX_BYTES], d[NAWAL_DALLA_STR_BYTES], t[32];
        nawal_fingerprint(fp, v[i].pubkey);
        printf("%s  %28s  %-24s%s\n", fp, nawal_planck_to_dalla(d, v[i].stake_planck), nawal_format_ms(t, v[i].added_ms),
               all ? (v[i].removed ? "  removed" : "  active") : "");
    }
    printf("%zu validator%s\n", n, n == 1 ? "" : "s");
    free(v);
    return 0;
}

static int cmd_ledger(int argc, char **argv, int verify) {
    const char *dir = NULL;
    nawal_flag flags[] = {
        {"dir", NAWAL_FLAG_STR, &dir, "coordinator directory", 1, 0, 1, 0},
    };
    int rc = parsed(nawal_flags_parse(argc, argv, flags, NFLAGS(flags),
                                      verify ? "usage: nawal-coordinator ledger verify --dir D\n\n"
                                               "Checks the hash chain, every signature (under D/identity.pub) and that\n"
                                               "rewards and closed rounds agree with the ledger. Prints 'ledger ok: N records'\n"
                                               "or names the first broken record and exits 1."
                                             : "usage: nawal-coordinator ledger show --dir D"));
    if (rc >= 0) return rc;
    nawal_store *s;
    if (open_store(&s, dir, NAWAL_STORE_OPEN_PUBLIC_ONLY)) return 1;
    char err[512];
    if (!verify) {
        rc = nawal_ledger_show(s, stdout, err, sizeof err);
        nawal_store_close(s);
        return rc ? fail(err) : 0;
    }
    nawal_ledger_report rep;
    rc = nawal_ledger_verify(s, &rep, err, sizeof err);
    nawal_store_close(s);
    if (rc < 0) return fail(err);
    if (rc == 1) {
        printf("ledger BROKEN at record %llu: %s\n", (unsigned long long)rep.bad_seq, rep.reason);
        return 1;
    }
    printf("ledger ok: %llu record%s\n", (unsigned long long)rep.records, rep.records == 1 ? "" : "s");
    return 0;
}

static int parse_planck(const char *flag, const char *text, uint64_t *out) {
    if (nawal_parse_u64(text, out)) {
        fprintf(stderr, "error: --%s: '%s' is not a whole number of planck\n", flag, text);
        return 2;
    }
    return 0;
}

static int cmd_round_start(int argc, char **argv) {
    const char *dir = NULL, *pool_s = NULL, *stake_s = "0";
    int target = 0, min = 0, deadline_s = 0, join_s = 0, steps = 100, batch = 8, dp = 0;
    float lr = 1e-3f, quality = 0.0f, topk = 0.01f, epsilon = 0.0f, delta = 1e-5f, clip = 1.0f, sigma = 0.0f,
          rate = 0.0f;
    nawal_flag flags[] = {
        {"dir", NAWAL_FLAG_STR, &dir, "coordinator directory", 1, 0, 1, 0},
        {"pool-planck", NAWAL_FLAG_STR, &pool_s, "reward pool of the round, in planck", 1, 0, 1, 0},
        {"target", NAWAL_FLAG_INT, &target, "participants wanted (aggregate as soon as all their updates are in)", 1, 1e6, 1, 0},
        {"min", NAWAL_FLAG_INT, &min, "fewest updates worth aggregating (fewer at the deadline: the round fails)", 1, 1e6, 1, 0},
        {"deadline-s", NAWAL_FLAG_INT, &deadline_s, "round length in seconds (deadline = now + this)", 1, 1e9, 1, 0},
        {"join-window-s", NAWAL_FLAG_INT, &join_s, "joins accepted for this many seconds (default: until the deadline)", 0, 1e9, 0, 0},
        {"min-stake-planck", NAWAL_FLAG_STR, &stake_s, "stake a validator needs to join (default 0)", 1, 0, 0, 0},
        {"min-quality", NAWAL_FLAG_FLOAT, &quality, "updates reporting a lower quality (0..1) are not aggregated", 0, 1, 0, 0},
        {"steps", NAWAL_FLAG_INT, &steps, "training config: local steps", 1, 1e9, 0, 0},
        {"lr", NAWAL_FLAG_FLOAT, &lr, "training config: learning rate", 0, 10, 0, 0},
        {"batch", NAWAL_FLAG_INT, &batch, "training config: batch size", 1, 1 << 20, 0, 0},
        {"topk", NAWAL_FLAG_FLOAT, &topk, "training config: share of the delta's entries sent (top-k by magnitude; 1 = dense)", 0, 1, 0, 0},
        {"dp", NAWAL_FLAG_BOOL, &dp, "training config: DP-SGD (per-example clipping + Gaussian noise)", 0, 0, 0, 0},
        {"epsilon", NAWAL_FLAG_FLOAT, &epsilon, "with --dp: epsilon a validator may spend in the round", 0, 1e6, 0, 0},
        {"delta", NAWAL_FLAG_FLOAT, &delta, "with --dp: delta of the (epsilon, delta) guarantee (default 1e-5)", 0, 1, 0, 0},
        {"max-grad-norm", NAWAL_FLAG_FLOAT, &clip, "with --dp: per-example gradient clipping norm (default 1)", 0, 1e6, 0, 0},
        {"noise-multiplier", NAWAL_FLAG_FLOAT, &sigma, "with --dp: noise multiplier (default: the smallest reaching --epsilon)", 0, 1e6, 0, 0},
        {"sample-rate", NAWAL_FLAG_FLOAT, &rate, "with --dp: Poisson sampling rate (default: batch / examples)", 0, 1, 0, 0},
    };
    enum { F_DP = 12 };
    int rc = parsed(nawal_flags_parse(argc, argv, flags, NFLAGS(flags),
                                      "usage: nawal-coordinator round start --dir D --pool-planck N --target K --min M --deadline-s S\n"
                                      "       [--join-window-s J] [--min-stake-planck N] [--min-quality Q] [--steps N --lr F --batch B]\n"
                                      "       [--topk RATIO] [--dp (--epsilon E | --noise-multiplier S) [--delta D] [--max-grad-norm C]\n"
                                      "       [--sample-rate Q]]\n\n"
                                      "Announces a round from the current global model (the initial one for round 1). Later\n"
                                      "rounds follow by themselves with the same parameters (see 'round tick'). The training\n"
                                      "config (steps, lr, batch, top-k ratio, DP) goes to the agents in RoundAnnounce."));
    if (rc >= 0) return rc;
    nawal_round_params p = {0};
    if (parse_planck("pool-planck", pool_s, &p.pool_planck) || parse_planck("min-stake-planck", stake_s, &p.min_stake_planck))
        return 2;
    if (min > target) {
        fprintf(stderr, "error: --min %d is above --target %d\n", min, target);
        return 2;
    }
    if (join_s > deadline_s) {
        fprintf(stderr, "error: --join-window-s %d is longer than the round (--deadline-s %d)\n", join_s, deadline_s);
        return 2;
    }
    for (int i = F_DP + 1; i < F_DP + 6; i++)
        if (flags[i].seen && !dp) {
            fprintf(stderr, "error: --%s goes with --dp\n", flags[i].name);
            return 2;
        }
    if (dp && !(epsilon > 0) && !(sigma > 0)) {
        fprintf(stderr, "error: --dp needs --epsilon E > 0 (a privacy target) or --noise-multiplier S > 0\n");
        return 2;
    }
    if (dp && (!(delta > 0) || delta >= 1 || !(clip > 0))) {
        fprintf(stderr, "error: --dp needs 0 < --delta < 1 and --max-grad-norm > 0\n");
        return 2;
    }
    char config[512];
    int len = snprintf(config, sizeof config, "{\"steps\": %d, \"lr\": %.7g, \"batch\": %d, \"topk_ratio\": %.7g", steps,
                       (double)lr, batch, (double)topk);
    if (dp)
        len += snprintf(config + len, sizeof config - (size_t)len,
                        ", \"dp\": {\"enabled\": true, \"target_epsilon\": %.9g, \"delta\": %.9g, \"max_grad_norm\": %.7g, "
                        "\"noise_multiplier\": %.7g, \"sample_rate\": %.7g}",
                        (double)epsilon, (double)delta, (double)clip, (double)sigma, (double)rate);
    snprintf(config + len, sizeof config - (size_t)len, "}");
    p.target = (uint32_t)target;
    p.min = (uint32_t)min;
    p.duration_ms = (int64_t)deadline_s * 1000;
    p.join_window_ms = (int64_t)join_s * 1000;
    p.min_quality_ppm = (uint32_t)(quality * 1e6f + 0.5f);
    p.config_json = config;
    nawal_store *s;
    if (open_store(&s, dir, 0)) return 1;
    char err[512], hex[NAWAL_CID_HEX_BYTES], t[32], d[NAWAL_DALLA_STR_BYTES];
    uint8_t base[32];
    int64_t id = 0, now = nawal_now_ms();
    rc = nawal_round_next_base(s, base, err, sizeof err);
    if (rc == 0) rc = nawal_round_announce(s, base, &p, now, &id, err, sizeof err);
    nawal_store_close(s);
    if (rc) return fail(err);
    nawal_cid_to_hex(hex, base);
    printf("round %lld announced: base %s, deadline %s, target %d, min %d, pool %s DALLA\n", (long long)id, hex,
           nawal_format_ms(t, now + p.duration_ms), target, min, nawal_planck_to_dalla(d, p.pool_planck));
    return 0;
}

static int print_round(nawal_store *s, const nawal_round *r) {
    char err[512], hex[NAWAL_CID_HEX_BYTES], t[32], d[NAWAL_DALLA_STR_BYTES], *cfg = NULL;
    uint64_t joined = 0, subs = 0, rejected = 0;
    if (nawal_round_counts(s, r->id, &joined, &subs, &rejected, err, sizeof err) ||
        nawal_store_round_config(s, r->id, &cfg, err, sizeof err))
        return fail(err);
    printf("round %lld: %s\n", (long long)r->id, nawal_round_state_name(r->state));
    nawal_cid_to_hex(hex, r->base_cid);
    printf("  base         %s\n", hex);
    if (r->has_model_cid) {
        nawal_cid_to_hex(hex, r->model_cid);
        printf("  model        %s\n", hex);
    }
    printf("  started      %s\n", nawal_format_ms(t, r->started_ms));
    printf("  join until   %s\n", nawal_format_ms(t, r->join_deadline_ms));
    printf("  deadline     %s\n", nawal_format_ms(t, r->deadline_ms));
    if (r->closed_ms) printf("  ended        %s\n", nawal_format_ms(t, r->closed_ms));
    printf("  pool         %s DALLA (%llu planck)\n", nawal_planck_to_dalla(d, r->pool_planck),
           (unsigned long long)r->pool_planck);
    printf("  target %u, min %u, min stake %llu planck, min quality %.6f\n", r->target, r->min,
           (unsigned long long)r->min_stake_planck, r->min_quality_ppm / 1e6);
    printf("  joined %llu, updates %llu, rejected %llu\n", (unsigned long long)joined, (unsigned long long)subs,
           (unsigned long long)rejected);
    printf("  config       %s\n", cfg);
    free(cfg);
    nawal_submission *sub = NULL;
    size_t n = 0;
    if (nawal_store_submissions(s, r->id, &sub, &n, err, sizeof err)) return fail(err);
    for (size_t i = 0; i < n; i++) { /* one line per update: the validator, its claims, the aggregation's verdict */
        char fp[NAWAL_FINGERPRINT_SHORT_BYTES];
        nawal_fingerprint_short(fp, sub[i].validator);
        printf("  update       %s  %llu examples, quality %.4f: %s%s\n", fp, (unsigned long long)sub[i].num_examples,
               sub[i].quality_ppm / 1e6,
               sub[i].rejected ? "dropped: " : r->state == NAWAL_ROUND_CLOSED ? "used" : "received",
               sub[i].rejected ? sub[i].reason : "");
    }
    free(sub);
    return 0;
}

static int cmd_round_status(int argc, char **argv) {
    const char *dir = NULL;
    int64_t id = 0;
    int idv = 0;
    nawal_flag flags[] = {
        {"dir", NAWAL_FLAG_STR, &dir, "coordinator directory", 1, 0, 1, 0},
        {"round", NAWAL_FLAG_INT, &idv, "round id (default: the current one)", 1, 2e9, 0, 0},
    };
    int rc = parsed(nawal_flags_parse(argc, argv, flags, NFLAGS(flags), "usage: nawal-coordinator round status --dir D [--round N]"));
    if (rc >= 0) return rc;
    id = idv;
    nawal_store *s;
    if (open_store(&s, dir, NAWAL_STORE_OPEN_PUBLIC_ONLY)) return 1;
    char err[512];
    nawal_round r;
    rc = id ? nawal_store_round_get(s, id, &r, err, sizeof err) : nawal_store_round_latest(s, &r, err, sizeof err);
    if (rc == NAWAL_STORE_REFUSED && !id) {
        char *hex = NULL;
        int g = nawal_store_setting_get(s, NAWAL_SETTING_BASE_MODEL, &hex, err, sizeof err);
        printf("no rounds yet; initial model %s\n", g == 0 ? hex : "(none: init with --model-config or --import)");
        free(hex);
        nawal_store_close(s);
        return 0;
    }
    rc = rc ? fail(err) : print_round(s, &r);
    nawal_store_close(s);
    return rc;
}

#define NAWAL_STRATEGY_HELP                                                                                   \
    "aggregation: fedavg | fedavg-sparse | median | trimmed-mean[:TRIM] | krum[:F[:M]] (robust rules ignore " \
    "example counts; see README)"

/* exit status 2 with a message when --strategy names no known aggregator */
static int strategy_check(const char *strategy) {
    char err[256];
    if (nawal_aggregator_known(strategy, err, sizeof err) == 0) return 0;
    fprintf(stderr, "error: --strategy: %s\n", err);
    return 2;
}

static int cmd_round_tick(int argc, char **argv) {
    const char *dir = NULL, *strategy = "fedavg";
    int threads = 0;
    nawal_flag flags[] = {
        {"dir", NAWAL_FLAG_STR, &dir, "coordinator directory", 1, 0, 1, 0},
        {"threads", NAWAL_FLAG_INT, &threads, "aggregation threads (0 = all cores)", 0, 4096, 0, 0},
        {"strategy", NAWAL_FLAG_STR, &strategy, NAWAL_STRATEGY_HELP, 1, 0, 0, 0},
    };
    int rc = parsed(nawal_flags_parse(argc, argv, flags, NFLAGS(flags),
                                      "usage: nawal-coordinator round tick --dir D [--threads N]\n\n"
                                      "Moves the round machine on to the present: opens and closes join windows, aggregates\n"
                                      "(and pays) or fails rounds whose time has come, announces the next round."));
    if (rc >= 0) return rc;
    if (strategy_check(strategy)) return 2;
    nawal_store *s;
    if (open_store(&s, dir, 0)) return 1;
    char err[512], hex[NAWAL_CID_HEX_BYTES], t[32];
    nawal_agg_config cfg = {strategy, threads};
    nawal_tick_report rep;
    rc = nawal_round_tick(s, nawal_now_ms(), &cfg, &rep, err, sizeof err);
    nawal_store_close(s);
    if (rc) return fail(err);
    if (rep.closed_round) {
        nawal_cid_to_hex(hex, rep.model_cid);
        printf("round %lld closed: model %s, %zu updates accepted, %zu rejected, %llu planck paid\n",
               (long long)rep.closed_round, hex, rep.accepted, rep.rejected, (unsigned long long)rep.settlement.paid_planck);
    }
    if (rep.failed_round) printf("round %lld failed: %s\n", (long long)rep.failed_round, rep.note);
    if (rep.announced_round) printf("round %lld announced\n", (long long)rep.announced_round);
    if (!rep.round_id) printf("no rounds yet (see 'round start')\n");
    else if (rep.next_event_ms)
        printf("round %lld: %s until %s\n", (long long)rep.round_id, nawal_round_state_name(rep.state),
               nawal_format_ms(t, rep.next_event_ms));
    else printf("round %lld: %s\n", (long long)rep.round_id, nawal_round_state_name(rep.state));
    return 0;
}

static int cmd_serve(int argc, char **argv) {
    const char *dir = NULL, *listen = NULL, *cert = NULL, *key = NULL, *level = "info", *strategy = "fedavg";
    int plain = 0, maxconn = 64, threads = 0, auth_s = 30, keepalive_s = 20, no_blob_http = 0;
    nawal_flag flags[] = {
        {"dir", NAWAL_FLAG_STR, &dir, "coordinator directory", 1, 0, 1, 0},
        {"listen", NAWAL_FLAG_STR, &listen, "HOST:PORT to listen on ([::1]:PORT for IPv6, *:PORT for all; port 0 = any free one, logged)", 1, 0, 1, 0},
        {"cert", NAWAL_FLAG_STR, &cert, "TLS certificate chain (PEM), instead of the one stored by init --tls-cert", 1, 0, 0, 0},
        {"key", NAWAL_FLAG_STR, &key, "TLS private key (PEM), instead of the one stored by init --tls-key", 1, 0, 0, 0},
        {"insecure-plaintext", NAWAL_FLAG_BOOL, &plain, "no TLS (loopback addresses only, for tests)", 1, 0, 0, 0},
        {"max-connections", NAWAL_FLAG_INT, &maxconn, "open connections at most", 1, 65536, 0, 0},
        {"auth-timeout-s", NAWAL_FLAG_INT, &auth_s, "close connections not authenticated within this many seconds", 1, 3600, 0, 0},
        {"keepalive-s", NAWAL_FLAG_INT, &keepalive_s, "PING a peer silent for this many seconds; drop it after 3x that without a PONG", 1, 21845, 0, 0},
        {"no-blob-http", NAWAL_FLAG_BOOL, &no_blob_http, "serve models over BlobRequest only (no GET /blobs/<cid>, agents' fast path)", 0, -1, 0, 0},
        {"log-level", NAWAL_FLAG_STR, &level, "debug|info|warn|error: key=value lines on stderr", 1, 0, 0, 0},
        {"threads", NAWAL_FLAG_INT, &threads, "aggregation threads (0 = all cores)", 0, 4096, 0, 0},
        {"strategy", NAWAL_FLAG_STR, &strategy, NAWAL_STRATEGY_HELP, 1, 0, 0, 0},
    };
    int rc = parsed(nawal_flags_parse(argc, argv, flags, NFLAGS(flags),
                                      "usage: nawal-coordinator serve --dir D --listen HOST:PORT [--cert F --key F | --insecure-plaintext]\n"
                                      "       [--log-level debug|info|warn|error] [--max-connections N] [--threads N]\n\n"
                                      "Serves the round protocol to validators' agents over TLS WebSockets (signed envelopes:\n"
                                      "Hello/Challenge/Auth, RoundAnnounce, Join, base model download, UpdateSubmit with the\n"
                                      "delta upload, RoundResult), runs the round machine's deadlines, and answers plain\n"
                                      "HTTP on the same port: GET /metrics (Prometheus text) and GET /status (JSON).\n"
                                      "TLS material comes from init --tls-cert/--tls-key or --cert/--key. Stops cleanly\n"
                                      "on SIGINT/SIGTERM."));
    if (rc >= 0) return rc;
    if (strategy_check(strategy)) return 2;
    nawal_log_level lv;
    if (nawal_log_parse_level(level, &lv)) {
        fprintf(stderr, "error: --log-level: '%s' is not one of debug, info, warn, error\n", level);
        return 2;
    }
    char host[256], err[512];
    int port;
    if (nawal_listen_parse(listen, host, sizeof host, &port, err, sizeof err)) {
        fprintf(stderr, "error: --listen: %s\n", err);
        return 2;
    }
    if (plain && !nawal_listen_is_loopback(host)) {
        fprintf(stderr, "error: --insecure-plaintext is for loopback tests only (listen on 127.0.0.1 or [::1])\n");
        return 2;
    }
    if (plain && (cert || key)) {
        fprintf(stderr, "error: --insecure-plaintext and --cert/--key exclude each other\n");
        return 2;
    }
    if (!cert != !key) {
        fprintf(stderr, "error: --cert and --key go together\n");
        return 2;
    }
    nawal_log_set_level(lv);
    nawal_serve_options o = {dir, listen, cert, key, plain, maxconn, auth_s * 1000, strategy, threads, keepalive_s,
                             no_blob_http};
    if (nawal_serve_run(&o, err, sizeof err)) return fail(err);
    return 0;
}

/* `keygen --out DIR`: a coordinator key pair outside a coordinator
 * directory (init makes its own), e.g. to provision one ahead of time. */
static int cmd_keygen(int argc, char **argv) {
    const char *out = NULL;
    nawal_flag flags[] = {
        { "out", NAWAL_FLAG_STR, &out, "directory for identity.key (secret, 0600) and identity.pub", 0, -1, 1, 0 },
    };
    int rc = parsed(nawal_flags_parse(argc, argv, flags, NFLAGS(flags), "usage: nawal-coordinator keygen --out DIR"));
    if (rc >= 0) return rc;
    char err[512] = "", fp[NAWAL_FINGERPRINT_HEX_BYTES];
    if (nawal_identity_create(out, fp, err, sizeof err)) return fail(err);
    printf("fingerprint %s\n", fp);
    return 0;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: nawal-coordinator <command> [options]\n\n"
            "commands:\n"
            "  init --dir D [--model-config L,H,W,C,V [--seed S] | --import CKPT]\n"
            "                                                create a coordinator directory (database, blob store, key\n"
            "                                                pair) and the initial global model\n"
            "  keygen --out DIR                              write an Ed25519 key pair (refuses to overwrite)\n"
            "  validator add --dir D --pubkey HEX --stake N  register a validator key with a stake in planck\n"
            "  validator list --dir D [--all]                registered validators\n"
            "  validator remove --dir D --pubkey HEX         stop admitting a validator\n"
            "  round start --dir D --pool-planck N --target K --min M --deadline-s S\n"
            "                                                announce a round from the current global model\n"
            "  round status --dir D [--round N]              a round's state, times and counts\n"
            "  round tick --dir D                            move the round machine on to now (aggregate, pay, fail)\n"
            "  ledger verify --dir D                         check the ledger's chain and signatures\n"
            "  ledger show --dir D                           print the ledger\n"
            "  serve --dir D --listen HOST:PORT              serve agents (TLS WebSockets) and GET /metrics, /status\n"
            "  sim --data FILE [--validators N --rounds R]   a whole federation on loopback (coordinator + N agents)\n\n"
            "Run 'nawal-coordinator <command> --help' for its options. 1 DALLA = 10^12 planck.\n");
}

static int is_help(const char *a) { return !strcmp(a, "--help") || !strcmp(a, "-h") || !strcmp(a, "help"); }

/* `group sub ...`: dispatches on sub. */
static int group(int argc, char **argv, const char *name, const char *const subs[], int (*const fns[])(int, char **),
                 size_t n) {
    if (argc < 2 || is_help(argv[1])) {
        FILE *f = argc < 2 ? stderr : stdout;
        fprintf(f, "usage: nawal-coordinator %s <", name);
        for (size_t i = 0; i < n; i++) fprintf(f, "%s%s", i ? "|" : "", subs[i]);
        fprintf(f, "> [options]  (each takes --help)\n");
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < n; i++)
        if (!strcmp(argv[1], subs[i])) return fns[i](argc - 1, argv + 1);
    fprintf(stderr, "error: unknown command '%s %s' (see 'nawal-coordinator %s --help')\n", name, argv[1], name);
    return 2;
}

static int cmd_ledger_verify(int argc, char **argv) { return cmd_ledger(argc, argv, 1); }
static int cmd_ledger_show(int argc, char **argv) { return cmd_ledger(argc, argv, 0); }

int main(int argc, char **argv) {
    if (argc < 2) { usage(stderr); return 2; }
    const char *cmd = argv[1];
    if (is_help(cmd)) { usage(stdout); return 0; }
    if (!strcmp(cmd, "init")) return cmd_init(argc - 1, argv + 1);
    if (!strcmp(cmd, "keygen")) return cmd_keygen(argc - 1, argv + 1);
    if (!strcmp(cmd, "serve")) return cmd_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "sim")) return nawal_cmd_sim(argc - 1, argv + 1);
    if (!strcmp(cmd, "validator")) {
        static const char *const subs[] = {"add", "list", "remove"};
        static int (*const fns[])(int, char **) = {cmd_validator_add, cmd_validator_list, cmd_validator_remove};
        return group(argc - 1, argv + 1, "validator", subs, fns, 3);
    }
    if (!strcmp(cmd, "round")) {
        static const char *const subs[] = {"start", "status", "tick"};
        static int (*const fns[])(int, char **) = {cmd_round_start, cmd_round_status, cmd_round_tick};
        return group(argc - 1, argv + 1, "round", subs, fns, 3);
    }
    if (!strcmp(cmd, "ledger")) {
        static const char *const subs[] = {"verify", "show"};
        static int (*const fns[])(int, char **) = {cmd_ledger_verify, cmd_ledger_show};
        return group(argc - 1, argv + 1, "ledger", subs, fns, 2);
    }
    fprintf(stderr, "error: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
