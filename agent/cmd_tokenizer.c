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
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cmds.h"
#include "corpus.h"
#include "tokenizer.h"

static void tokenizer_usage(FILE *f) {
    fprintf(f,
            "usage: nawal-agent tokenizer train --data FILE --vocab N --out FILE [--skip-bad-lines]\n"
            "\n"
            "Trains a byte-level BPE tokenizer.\n"
            "  --data FILE        training text: a plain text file, or a .jsonl file whose\n"
            "                     \"text\" fields are concatenated\n"
            "  --vocab N          vocabulary size, %d..%d (256 bytes + end-of-text + merges);\n"
            "                     training stops early when no pair occurs twice\n"
            "  --out FILE         where to write the tokenizer (written atomically)\n"
            "  --skip-bad-lines   skip malformed JSONL lines instead of failing\n"
            "  --help             show this help\n",
            NAWAL_TOKENIZER_BYTE_VOCAB, NAWAL_TOKENIZER_MAX_VOCAB);
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "nawal-agent tokenizer: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n(run 'nawal-agent tokenizer --help' for usage)\n");
    return 2;
}

/* Matches "--name VALUE" or "--name=VALUE"; advances *i past what it used.
 * Returns 1 on a match with *value set, 0 when argv[*i] is another flag,
 * -1 when the value is missing. */
static int flag_value(int argc, char **argv, int *i, const char *name, const char **value) {
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) != 0) return 0;
    if (a[n] == '=') {
        *value = a + n + 1;
        return 1;
    }
    if (a[n] != '\0') return 0;
    if (*i + 1 >= argc) return -1;
    *value = argv[++*i];
    return 1;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int tokenizer_train(int argc, char **argv) {
    const char *data = NULL, *vocab_str = NULL, *out = NULL;
    int skip_bad = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            tokenizer_usage(stdout);
            return 0;
        } else if (strcmp(a, "--skip-bad-lines") == 0) {
            skip_bad = 1;
        } else if ((r = flag_value(argc, argv, &i, "--data", &data)) != 0 ||
                   (r = flag_value(argc, argv, &i, "--vocab", &vocab_str)) != 0 ||
                   (r = flag_value(argc, argv, &i, "--out", &out)) != 0) {
            if (r < 0) return usage_error("flag %s needs a value", a);
        } else {
            return usage_error("unknown argument '%s'", a);
        }
    }
    if (!data) return usage_error("missing --data FILE");
    if (!vocab_str) return usage_error("missing --vocab N");
    if (!out) return usage_error("missing --out FILE");
    if (!*data) return usage_error("--data is empty");
    if (!*out) return usage_error("--out is empty");
    char *end;
    errno = 0;
    long vocab = strtol(vocab_str, &end, 10);
    if (errno || end == vocab_str || *end != '\0' || vocab < NAWAL_TOKENIZER_BYTE_VOCAB ||
        vocab > NAWAL_TOKENIZER_MAX_VOCAB) {
        return usage_error("--vocab '%s' must be an integer in [%d, %d]", vocab_str,
                           NAWAL_TOKENIZER_BYTE_VOCAB, NAWAL_TOKENIZER_MAX_VOCAB);
    }

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
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        tokenizer_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "train") == 0) return tokenizer_train(argc - 1, argv + 1);
    return usage_error("unknown sub-command '%s' (expected 'train')", argv[1]);
}
