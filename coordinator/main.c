/* main.c - nawal-coordinator: sub-commands on a coordinator directory
 * (init, validator add|list|remove, ledger verify|show). Exit status 0 on
 * success, 1 when the operation fails (or the ledger is broken), 2 for a
 * usage error. */
#include "cli.h"
#include "ledger.h"
#include "registry.h"
#include "rewards.h"
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static int cmd_init(int argc, char **argv) {
    const char *dir = NULL;
    nawal_flag flags[] = {
        {"dir", NAWAL_FLAG_STR, &dir, "coordinator directory to create (must be absent or empty)", 1, 0, 1, 0},
    };
    int rc = parsed(nawal_flags_parse(argc, argv, flags, NFLAGS(flags),
                                      "usage: nawal-coordinator init --dir D\n\n"
                                      "Creates a coordinator directory: D/state.db (SQLite), D/blobs/ (content-addressed\n"
                                      "blob store) and the coordinator's Ed25519 key pair D/identity.key (0600) + .pub."));
    if (rc >= 0) return rc;
    char err[512];
    if (nawal_store_init(dir, err, sizeof err)) return fail(err);
    nawal_store *s;
    if (open_store(&s, dir, NAWAL_STORE_OPEN_PUBLIC_ONLY)) return 1;
    char fp[NAWAL_FINGERPRINT_HEX_BYTES];
    nawal_fingerprint(fp, nawal_store_pubkey(s));
    printf("initialised %s\ncoordinator key %s\n", dir, fp);
    nawal_store_close(s);
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

static void usage(FILE *f) {
    fprintf(f,
            "usage: nawal-coordinator <command> [options]\n\n"
            "commands:\n"
            "  init --dir D                                  create a coordinator directory (database, blob store, key pair)\n"
            "  validator add --dir D --pubkey HEX --stake N  register a validator key with a stake in planck\n"
            "  validator list --dir D [--all]                registered validators\n"
            "  validator remove --dir D --pubkey HEX         stop admitting a validator\n"
            "  ledger verify --dir D                         check the ledger's chain and signatures\n"
            "  ledger show --dir D                           print the ledger\n\n"
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
    if (!strcmp(cmd, "validator")) {
        static const char *const subs[] = {"add", "list", "remove"};
        static int (*const fns[])(int, char **) = {cmd_validator_add, cmd_validator_list, cmd_validator_remove};
        return group(argc - 1, argv + 1, "validator", subs, fns, 3);
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
