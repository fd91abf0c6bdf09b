/* cmd_tokenizer.c - `nawal-agent tokenizer ...`: offline tokenizer tools.
 *
 *   nawal-agent tokenizer train --data F --vocab N --out FILE [--skip-bad-lines]
 *
 * reads F (a plain text file's bytes, or for *.jsonl the "text" fields
 * concatenated), learns a byte-level BPE with nawal_tokenizer_train_bpe,
 * saves it atomically to FILE and prints one summary line. The work itself
 * lives in model/tokenizer.c and model/corpus.c; this file only parses flags
 * and reports. Exit status: 0 ok, 1 runtime error, 2 usage error. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "cmds.h"
#include "corpus.h"
#include "tokenizer.h"

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int tokenizer_train(int argc, char **argv) {
    const char *data = NULL, *out = NULL;
    int vocab = 0, skip_bad = 0;
    nawal_flag flags[] = {
        { "data", NAWAL_FLAG_STR, &data, "training text: a plain text file, or .jsonl whose \"text\" fields are concatenated", 0, -1, 1, 0 },
        { "vocab", NAWAL_FLAG_INT, &vocab, "vocabulary size (256 bytes + end-of-text + merges); stops early when no pair occurs twice",
          NAWAL_TOKENIZER_BYTE_VOCAB, NAWAL_TOKENIZER_MAX_VOCAB, 1, 0 },
        { "out", NAWAL_FLAG_STR, &out, "where to write the tokenizer (atomically)", 0, -1, 1, 0 },
        { "skip-bad-lines", NAWAL_FLAG_BOOL, &skip_bad, "skip malformed JSONL lines instead of failing", 0, -1, 0, 0 },
    };
    int pr = nawal_flags_parse(argc, argv, flags, sizeof flags / sizeof flags[0],
                               "usage: nawal-agent tokenizer train --data FILE --vocab N --out FILE [--skip-bad-lines]\n\n"
                               "Trains a byte-level BPE tokenizer.");
    if (pr) return pr == 1 ? 0 : 2;
    if (!*data || !*out) { fprintf(stderr, "error: --data and --out must not be empty\n"); return 2; }

    char err[512];
    uint8_t *bytes = NULL;
    size_t len = 0, n_docs = 0, n_skipped = 0;
    if (nawal_corpus_read_text(data, skip_bad, &bytes, &len, &n_docs, &n_skipped, err,
                               sizeof err)) {
        fprintf(stderr, "nawal-agent tokenizer: %s\n", err);
        return 1;
    }
    if (len == 0) {
        fprintf(stderr, "nawal-agent tokenizer: %s: no training text\n", data);
        free(bytes);
        return 1;
    }
    double t0 = now_seconds();
    nawal_tokenizer *tok = NULL;
    int32_t *toks = NULL;
    size_t n_toks = 0;
    int rc = 1;
    if (nawal_tokenizer_train_bpe(&tok, bytes, len, (int)vocab, err, sizeof err) ||
        nawal_tokenizer_encode(tok, bytes, len, &toks, &n_toks, err, sizeof err) ||
        nawal_tokenizer_save(tok, out, err, sizeof err)) {
        fprintf(stderr, "nawal-agent tokenizer: %s\n", err);
        goto done;
    }
    double secs = now_seconds() - t0;
    printf("tokenizer: vocab %d (%d merges%s) from %zu bytes", nawal_tokenizer_vocab_size(tok),
           nawal_tokenizer_n_merges(tok),
           nawal_tokenizer_vocab_size(tok) < vocab ? ", stopped early: no pair left twice" : "",
           len);
    if (nawal_corpus_is_jsonl(data)) printf(" (%zu documents, %zu lines skipped)", n_docs, n_skipped);
    printf(", %zu tokens, %.3f bytes/token, %.2fs, saved to %s\n", n_toks,
           n_toks ? (double)len / (double)n_toks : 0.0, secs, out);
    rc = 0;
done:
    free(toks);
    nawal_tokenizer_free(tok);
    free(bytes);
    return rc;
}

int nawal_cmd_tokenizer(int argc, char **argv) {
    static const char usage[] = "usage: nawal-agent tokenizer train --data FILE --vocab N --out FILE [--skip-bad-lines]\n";
    if (argc >= 2 && strcmp(argv[1], "train") == 0) return tokenizer_train(argc - 1, argv + 1);
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0)) {
        fputs(usage, stdout);
        return 0;
    }
    if (argc >= 2) fprintf(stderr, "error: unknown tokenizer sub-command '%s' (expected 'train')\n", argv[1]);
    fputs(usage, stderr);
    return 2;
}
