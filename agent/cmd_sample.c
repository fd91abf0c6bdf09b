/* cmd_sample.c - `nawal-agent sample`: continue a prompt with a checkpoint
 * and write prompt + continuation (raw decoded bytes) to stdout. */
#include "checkpoint.h"
#include "cli.h"
#include "cmds.h"
#include "sample.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int nawal_cmd_sample(int argc, char **argv) {
    const char *ckpt = NULL, *prompt = "\n", *device = "auto";
    int n_tokens = 200, threads = 0, top_k = 0;
    float temperature = 1.0f;
    uint64_t seed = 1337;
    nawal_flag flags[] = {
        { "checkpoint", NAWAL_FLAG_STR, &ckpt, "checkpoint directory", 0, -1, 1, 0 },
        { "prompt", NAWAL_FLAG_STR, &prompt, "text to continue", 0, -1, 0, 0 },
        { "tokens", NAWAL_FLAG_INT, &n_tokens, "tokens to generate", 0, 1 << 24, 0, 0 },
        { "temperature", NAWAL_FLAG_FLOAT, &temperature, "softmax temperature (0 = greedy)", 0, 100, 0, 0 },
        { "top-k", NAWAL_FLAG_INT, &top_k, "sample among the k likeliest tokens (0 = all)", 0, 1 << 24, 0, 0 },
        { "seed", NAWAL_FLAG_U64, &seed, "sampling seed", 0, -1, 0, 0 },
        { "device", NAWAL_FLAG_STR, &device, "auto|cpu|cuda", 0, -1, 0, 0 },
        { "threads", NAWAL_FLAG_INT, &threads, "CPU threads (0 = all cores)", 0, 4096, 0, 0 },
    };
    int pr = nawal_flags_parse(argc, argv, flags, sizeof flags / sizeof flags[0],
                               "usage: nawal-agent sample --checkpoint DIR [--prompt TEXT] [--tokens N] [options]");
    if (pr) return pr == 1 ? 0 : 2;
    char err[512] = "";
    const nawal_ops *ops;
    nawal_gpt *m = NULL;
    nawal_tokenizer *tok = NULL;
    int32_t *ptoks = NULL, *outt = NULL;
    uint8_t *text = NULL;
    size_t np = 0, nt = 0;
    int rc = 1;
    if (nawal_agent_open_device(&ops, device, threads)) return 1;
    if (nawal_checkpoint_load(&m, &tok, ops, ckpt, 1, err, sizeof err)) { fprintf(stderr, "error: %s\n", err); goto out; }
    if (nawal_tokenizer_encode(tok, (const uint8_t *)prompt, strlen(prompt), &ptoks, &np, err, sizeof err)) { fprintf(stderr, "error: %s\n", err); goto out; }
    if (np == 0) { fprintf(stderr, "error: the prompt must not be empty\n"); goto out; }
    outt = malloc((np + (size_t)n_tokens) * sizeof(int32_t));
    if (!outt) { fprintf(stderr, "error: out of memory\n"); goto out; }
    long n = nawal_gpt_sample(m, ptoks, np, n_tokens, temperature, top_k, seed, NAWAL_TOKEN_EOT, outt, err, sizeof err);
    if (n < 0) { fprintf(stderr, "error: %s\n", err); goto out; }
    if (nawal_tokenizer_decode(tok, outt, (size_t)n, &text, &nt, err, sizeof err)) { fprintf(stderr, "error: %s\n", err); goto out; }
    fwrite(text, 1, nt, stdout);
    printf("\n");
    rc = 0;
out:
    free(ptoks);
    free(outt);
    free(text);
    nawal_gpt_free(m);
    nawal_tokenizer_free(tok);
    return rc;
}
