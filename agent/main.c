/* main.c - nawal-agent, the validator program: dispatches sub-commands
 * (train, eval, sample, tokenizer, keygen, privacy, run) and holds the small set-up helpers they
 * share (device selection, tokenizer loading). */
#include "cmds.h"
#include "tokenizer.h"
#include <stdio.h>
#include <string.h>

int nawal_agent_open_device(const nawal_ops **ops, const char *device, int threads) {
    char err[512];
    nawal_ops_cpu(threads); /* sets the CPU thread count whichever backend runs */
    if (nawal_ops_open(ops, device, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        return -1;
    }
    return 0;
}

int nawal_agent_load_tokenizer(nawal_tokenizer **tok, const char *path) {
    char err[512] = "";
    int rc = path ? nawal_tokenizer_load(tok, path, err, sizeof err) : nawal_tokenizer_new_byte(tok);
    if (rc) fprintf(stderr, "error: %s\n", err[0] ? err : "cannot create tokenizer");
    return rc;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: nawal-agent <command> [options]\n\n"
            "commands:\n"
            "  train      train a GPT on a local corpus (nanoGPT recipe by default)\n"
            "  eval       loss of a checkpoint on a file\n"
            "  sample     generate text from a checkpoint\n"
            "  tokenizer  train a byte-level BPE tokenizer\n"
            "  keygen     create this validator's Ed25519 identity\n"
            "  privacy    epsilon of a DP training plan, or the noise it needs for a target epsilon\n"
            "  run        the validator daemon: follow the coordinator's rounds, train, upload deltas\n\n"
            "Run 'nawal-agent <command> --help' for its options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) { usage(stderr); return 2; }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) { usage(stdout); return 0; }
    if (!strcmp(cmd, "train")) return nawal_cmd_train(argc - 1, argv + 1);
    if (!strcmp(cmd, "eval")) return nawal_cmd_eval(argc - 1, argv + 1);
    if (!strcmp(cmd, "sample")) return nawal_cmd_sample(argc - 1, argv + 1);
    if (!strcmp(cmd, "tokenizer")) return nawal_cmd_tokenizer(argc - 1, argv + 1);
    if (!strcmp(cmd, "keygen")) return nawal_cmd_keygen(argc - 1, argv + 1);
    if (!strcmp(cmd, "privacy")) return nawal_cmd_privacy(argc - 1, argv + 1);
    if (!strcmp(cmd, "run")) return nawal_cmd_run(argc - 1, argv + 1);
    fprintf(stderr, "error: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
