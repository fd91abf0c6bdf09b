/* test_corpus.c - properties of model/corpus.c on fresh random inputs: plain
 * text and JSONL loading, EOT placement, the 90/10 split, malformed-line
 * errors with file:line, skipping bad lines, and batch windows. Each test
 * writes its own temp files under /tmp and draws a new seed
 * (NAWAL_TEST_SEED=<n> reproduces one); assertions print it. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "corpus.h"
#include "tokenizer.h"
#include "test_util.h"


/* A temp file with the given suffix (".jsonl" or ".txt"), filled with p. */
static char *temp_file(const char *suffix, const void *p, size_t n) {
    char *path = malloc(64);
    cr_assert(path);
    snprintf(path, 64, "/tmp/nawal_corpus_test_XXXXXX%s", suffix);
    int fd = mkstemps(path, (int)strlen(suffix));
    cr_assert(fd >= 0);
    FILE *f = fdopen(fd, "wb");
    cr_assert(f);
    cr_assert_eq(fwrite(p, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
    return path;
}

static void drop_file(char *path) {
    unlink(path);
    free(path);
}

/* Random printable-ish document text, sometimes with quotes, backslashes,
 * newlines and multi-byte UTF-8 (all must survive JSON escaping). */
static char *random_doc(rng *r, size_t max_len, size_t *len) {
    static const char *const pieces[] = {"a", "b", "c", " ", "\"", "\\", "\n", "\t", "\xc3\xa9",
                                         "\xe2\x82\xac", "x", "7", "{", "}"};
    size_t n_target = rng_below(r, max_len + 1), n = 0;
    char *s = malloc(n_target + 8);
    cr_assert(s);
    while (n < n_target) {
        const char *p = pieces[rng_below(r, sizeof pieces / sizeof *pieces)];
        size_t pl = strlen(p);
        if (n + pl > n_target) break;
        memcpy(s + n, p, pl);
        n += pl;
    }
    s[n] = 0;
    *len = n;
    return s;
}

/* JSON line {"text": s} produced by jansson, so escaping is correct. */
static char *json_line(const char *s, size_t n) {
    json_t *o = json_object();
    json_object_set_new(o, "id", json_integer(7));
    json_object_set_new(o, "text", json_stringn(s, n));
    char *line = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    cr_assert(line);
    return line;
}

static void append(char **buf, size_t *len, const char *s) {
    size_t n = strlen(s);
    *buf = realloc(*buf, *len + n + 1);
    cr_assert(*buf);
    memcpy(*buf + *len, s, n + 1);
    *len += n;
}

Test(corpus, plain_text_split_sizes) {
    uint64_t seed = fresh_seed();
    rng r = {seed};
    nawal_tokenizer *tok;
    cr_assert_eq(nawal_tokenizer_new_byte(&tok), 0);
    for (int iter = 0; iter < 40; iter++) {
        size_t n = iter < 12 ? (size_t)iter + 1 : 1 + rng_below(&r, 20000);
        uint8_t *data = malloc(n);
        cr_assert(data);
        for (size_t i = 0; i < n; i++) data[i] = (uint8_t)rng_below(&r, 256);
        char *path = temp_file(".txt", data, n);
        nawal_corpus c;
        char err[512] = "";
        cr_assert_eq(nawal_corpus_load(&c, path, tok, 0, err, sizeof err), 0, "seed=%llu: %s",
                     (unsigned long long)seed, err);
        cr_assert_eq(c.n_tokens, n, "seed=%llu", (unsigned long long)seed);
        cr_assert_eq(c.n_documents, 1);
        cr_assert_eq(c.n_train, n - n / 10, "seed=%llu n=%zu", (unsigned long long)seed, n);
        for (size_t i = 0; i < n; i++)
            cr_assert_eq(c.tokens[i], data[i], "seed=%llu pos %zu (no EOT in plain text)",
                         (unsigned long long)seed, i);
        size_t nt, nv;
        const int32_t *tr = nawal_corpus_split(&c, NAWAL_SPLIT_TRAIN, &nt);
        const int32_t *va = nawal_corpus_split(&c, NAWAL_SPLIT_VAL, &nv);
        cr_assert(tr == c.tokens && nt == n - n / 10);
        cr_assert(va == c.tokens + nt && nv == n / 10);
        size_t nx = 99;
        cr_assert(nawal_corpus_split(&c, 2, &nx) == NULL && nx == 0);
        nawal_corpus_free(&c);
        drop_file(path);
        free(data);
    }
    nawal_tokenizer_free(tok);
}

Test(corpus, plain_text_with_bpe_decodes_back) {
    uint64_t seed = fresh_seed();
    rng r = {seed};
    size_t n = 5000 + rng_below(&r, 5000);
    uint8_t *data = malloc(n);
    cr_assert(data);
    static const char *const words[] = {" the", " cat", " sat", " on", " mat", ".", "\n"};
    for (size_t i = 0; i < n;) {
        const char *w = words[rng_below(&r, 7)];
        for (size_t k = 0; w[k] && i < n; k++) data[i++] = (uint8_t)w[k];
    }
    nawal_tokenizer *tok;
    char err[512] = "";
    cr_assert_eq(nawal_tokenizer_train_bpe(&tok, data, n, 300, err, sizeof err), 0, "%s", err);
    char *path = temp_file(".txt", data, n);
    nawal_corpus c;
    cr_assert_eq(nawal_corpus_load(&c, path, tok, 0, err, sizeof err), 0, "%s", err);
    cr_assert(c.n_tokens < n, "seed=%llu", (unsigned long long)seed);
    cr_assert_eq(c.n_train, c.n_tokens - c.n_tokens / 10);
    uint8_t *back;
    size_t nb;
    cr_assert_eq(nawal_tokenizer_decode(tok, c.tokens, c.n_tokens, &back, &nb, err, sizeof err), 0);
    cr_assert(nb == n && memcmp(back, data, n) == 0, "seed=%llu", (unsigned long long)seed);
    free(back);
    nawal_corpus_free(&c);
    nawal_tokenizer_free(tok);
    drop_file(path);
    free(data);
}

Test(corpus, jsonl_documents_end_with_eot) {
    uint64_t seed = fresh_seed();
    rng r = {seed};
    nawal_tokenizer *tok;
    cr_assert_eq(nawal_tokenizer_new_byte(&tok), 0);
    for (int iter = 0; iter < 20; iter++) {
        char *docs[3];
        size_t lens[3];
        char *file = NULL;
        size_t flen = 0;
        for (int d = 0; d < 3; d++) {
            docs[d] = random_doc(&r, iter == 0 && d == 1 ? 0 : 200, &lens[d]);
            char *line = json_line(docs[d], lens[d]);
            if (rng_below(&r, 2)) append(&file, &flen, "\n"); /* blank lines are skipped */
            append(&file, &flen, line);
            append(&file, &flen, d == 2 && rng_below(&r, 2) ? "" : "\n");
            free(line);
        }
        char *path = temp_file(".jsonl", file, flen);
        nawal_corpus c;
        char err[512] = "";
        cr_assert_eq(nawal_corpus_load(&c, path, tok, 0, err, sizeof err), 0, "seed=%llu: %s",
                     (unsigned long long)seed, err);
        cr_assert_eq(c.n_documents, 3);
        cr_assert_eq(c.n_skipped_lines, 0);
        cr_assert_eq(c.n_tokens, lens[0] + lens[1] + lens[2] + 3, "seed=%llu",
                     (unsigned long long)seed);
        size_t pos = 0, n_eot = 0;
        for (int d = 0; d < 3; d++) {
            for (size_t i = 0; i < lens[d]; i++)
                cr_assert_eq(c.tokens[pos + i], (uint8_t)docs[d][i], "seed=%llu doc %d byte %zu",
                             (unsigned long long)seed, d, i);
            pos += lens[d];
            cr_assert_eq(c.tokens[pos], NAWAL_TOKEN_EOT, "seed=%llu: no EOT after doc %d",
                         (unsigned long long)seed, d);
            pos++;
        }
        for (size_t i = 0; i < c.n_tokens; i++) n_eot += c.tokens[i] == NAWAL_TOKEN_EOT;
        cr_assert_eq(n_eot, 3);
        cr_assert_eq(c.n_train, c.n_tokens - c.n_tokens / 10);

        /* the raw-text reader concatenates the same documents */
        uint8_t *text;
        size_t tlen, nd;
        cr_assert_eq(nawal_corpus_read_text(path, 0, &text, &tlen, &nd, NULL, err, sizeof err), 0);
        cr_assert(nd == 3 && tlen == lens[0] + lens[1] + lens[2]);
        cr_assert(memcmp(text, docs[0], lens[0]) == 0 &&
                  memcmp(text + lens[0], docs[1], lens[1]) == 0 &&
                  memcmp(text + lens[0] + lens[1], docs[2], lens[2]) == 0);
        free(text);
        nawal_corpus_free(&c);
        drop_file(path);
        free(file);
        for (int d = 0; d < 3; d++) free(docs[d]);
    }
    nawal_tokenizer_free(tok);
}

Test(corpus, jsonl_text_may_hold_nul_and_crlf_lines) {
    const char *file = "{\"text\":\"a\\u0000b\"}\r\n\r\n{\"text\":\"\\u00e9\"}\r\n";
    char *path = temp_file(".jsonl", file, strlen(file));
    nawal_tokenizer *tok;
    cr_assert_eq(nawal_tokenizer_new_byte(&tok), 0);
    nawal_corpus c;
    char err[512] = "";
    cr_assert_eq(nawal_corpus_load(&c, path, tok, 0, err, sizeof err), 0, "%s", err);
    int32_t want[7] = {'a', 0, 'b', NAWAL_TOKEN_EOT, 0xc3, 0xa9, NAWAL_TOKEN_EOT};
    cr_assert_eq(c.n_tokens, 7);
    cr_assert_eq(c.n_documents, 2);
    for (int i = 0; i < 7; i++) cr_assert_eq(c.tokens[i], want[i], "token %d", i);
    nawal_corpus_free(&c);
    drop_file(path);
    nawal_tokenizer_free(tok);
}

Test(corpus, jsonl_malformed_line_names_file_and_line) {
    static const char *const bad_lines[] = {
        "{\"text\": \"unterminated}",
        "[1, 2, 3]",
        "\"just a string\"",
        "{\"title\": \"no text field\"}",
        "{\"text\": 42}",
        "{\"text\": null}",
        "{\"text\": \"ok\"} trailing",
        "\x01\x02\xff",
        "{\"text\": \"\xff\xfe invalid utf-8\"}",
    };
    static const char *const expect_part[] = {
        "invalid JSON", "not a JSON object", "not a JSON object", "missing string field \"text\"",
        "missing string field \"text\"", "missing string field \"text\"", "invalid JSON",
        "invalid JSON", "invalid JSON",
    };
    size_t n_bad = sizeof bad_lines / sizeof *bad_lines;
    uint64_t seed = fresh_seed();
    rng r = {seed};
    nawal_tokenizer *tok;
    cr_assert_eq(nawal_tokenizer_new_byte(&tok), 0);
    for (size_t b = 0; b < n_bad; b++) {
        size_t n_lines = 2 + rng_below(&r, 30), bad_at = rng_below(&r, n_lines); /* 0-based */
        char *file = NULL;
        size_t flen = 0, good_bytes = 0;
        for (size_t i = 0; i < n_lines; i++) {
            if (i == bad_at) {
                append(&file, &flen, bad_lines[b]);
            } else {
                size_t dl;
                char *doc = random_doc(&r, 50, &dl);
                char *line = json_line(doc, dl);
                append(&file, &flen, line);
                good_bytes += dl;
                free(line);
                free(doc);
            }
            append(&file, &flen, "\n");
        }
        char *path = temp_file(".jsonl", file, flen);
        nawal_corpus c;
        char err[512] = "";
        cr_assert_eq(nawal_corpus_load(&c, path, tok, 0, err, sizeof err), -1,
                     "seed=%llu: bad line '%s' accepted", (unsigned long long)seed, bad_lines[b]);
        cr_assert(c.tokens == NULL && c.n_tokens == 0);
        char want[128];
        snprintf(want, sizeof want, "%s:%zu: ", path, bad_at + 1);
        cr_assert(strstr(err, want) != NULL, "seed=%llu: message '%s' lacks '%s'",
                  (unsigned long long)seed, err, want);
        cr_assert(strstr(err, expect_part[b]) != NULL, "message '%s' lacks '%s'", err,
                  expect_part[b]);

        /* with skip: the line is counted, everything else loads */
        cr_assert_eq(nawal_corpus_load(&c, path, tok, 1, err, sizeof err), 0, "seed=%llu: %s",
                     (unsigned long long)seed, err);
        cr_assert_eq(c.n_skipped_lines, 1);
        cr_assert_eq(c.n_documents, n_lines - 1);
        cr_assert_eq(c.n_tokens, good_bytes + n_lines - 1, "seed=%llu", (unsigned long long)seed);
        nawal_corpus_free(&c);
        drop_file(path);
        free(file);
    }
    nawal_tokenizer_free(tok);
}

Test(corpus, jsonl_all_bad_lines_skipped_is_empty) {
    const char *file = "not json\n{\"x\":1}\n\n   \n[]\n";
    char *path = temp_file(".jsonl", file, strlen(file));
    nawal_tokenizer *tok;
    cr_assert_eq(nawal_tokenizer_new_byte(&tok), 0);
    nawal_corpus c;
    char err[512] = "";
    cr_assert_eq(nawal_corpus_load(&c, path, tok, 1, err, sizeof err), -1);
    cr_assert(strstr(err, path) != NULL && strstr(err, "empty") != NULL, "message: %s", err);
    cr_assert(strstr(err, "3 malformed lines") != NULL, "message: %s", err);
    cr_assert_eq(nawal_corpus_load(&c, path, tok, 0, err, sizeof err), -1);
    char want[128];
    snprintf(want, sizeof want, "%s:1:", path);
    cr_assert(strstr(err, want) != NULL, "message: %s", err);
    drop_file(path);
    nawal_tokenizer_free(tok);
}

Test(corpus, missing_and_empty_files) {
    nawal_tokenizer *tok;
    cr_assert_eq(nawal_tokenizer_new_byte(&tok), 0);
    nawal_corpus c;
    char err[512] = "";
    const char *missing[] = {"/tmp/nawal-no-such-dir/corpus.txt", "/tmp/nawal-no-such-dir/c.jsonl"};
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(nawal_corpus_load(&c, missing[i], tok, 0, err, sizeof err), -1);
        cr_assert(strstr(err, missing[i]) != NULL, "message: %s", err);
    }
    const char *suffix[] = {".txt", ".jsonl"};
    for (int i = 0; i < 2; i++) {
        char *path = temp_file(suffix[i], "", 0);
        cr_assert_eq(nawal_corpus_load(&c, path, tok, 0, err, sizeof err), -1);
        cr_assert(strstr(err, path) != NULL && strstr(err, "empty") != NULL, "message: %s", err);
        drop_file(path);
    }
    /* a directory is not a corpus */
    cr_assert_eq(nawal_corpus_load(&c, "/tmp", tok, 0, err, sizeof err), -1);
    cr_assert(strstr(err, "/tmp") != NULL, "message: %s", err);
    nawal_tokenizer_free(tok);
}

Test(corpus, batch_targets_are_inputs_shifted) {
    uint64_t seed = fresh_seed();
    rng r = {seed};
    size_t n = 2000 + rng_below(&r, 20000);
    uint8_t *data = malloc(n);
    cr_assert(data);
    for (size_t i = 0; i < n; i++) data[i] = (uint8_t)rng_below(&r, 256);
    char *path = temp_file(".txt", data, n);
    nawal_tokenizer *tok;
    cr_assert_eq(nawal_tokenizer_new_byte(&tok), 0);
    nawal_corpus c;
    char err[512] = "";
    cr_assert_eq(nawal_corpus_load(&c, path, tok, 0, err, sizeof err), 0, "%s", err);
    for (int split = 0; split < 2; split++) {
        size_t ns;
        const int32_t *s = nawal_corpus_split(&c, split, &ns);
        int B = 1 + (int)rng_below(&r, 8), T = 1 + (int)rng_below(&r, 64);
        size_t *starts = malloc((size_t)B * sizeof *starts);
        int32_t *in = malloc((size_t)B * T * sizeof *in), *tg = malloc((size_t)B * T * sizeof *tg);
        cr_assert(starts && in && tg);
        for (int b = 0; b < B; b++) starts[b] = rng_below(&r, ns - (size_t)T);
        starts[0] = ns - (size_t)T - 1; /* the last valid window */
        cr_assert_eq(nawal_corpus_batch(&c, split, starts, B, T, in, tg, err, sizeof err), 0,
                     "seed=%llu: %s", (unsigned long long)seed, err);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                size_t k = (size_t)b * T + t;
                cr_assert_eq(in[k], s[starts[b] + t], "seed=%llu", (unsigned long long)seed);
                cr_assert_eq(tg[k], s[starts[b] + t + 1], "seed=%llu", (unsigned long long)seed);
                if (t + 1 < T) cr_assert_eq(tg[k], in[k + 1]);
            }
        /* one past the last valid window, and absurd starts, are errors */
        size_t bad_starts[3] = {ns - (size_t)T, ns, SIZE_MAX};
        for (int i = 0; i < 3; i++) {
            starts[B - 1] = bad_starts[i];
            err[0] = 0;
            cr_assert_eq(nawal_corpus_batch(&c, split, starts, B, T, in, tg, err, sizeof err), -1,
                         "seed=%llu: start %zu of %zu accepted", (unsigned long long)seed,
                         bad_starts[i], ns);
            cr_assert(strstr(err, "split") != NULL, "message: %s", err);
        }
        free(starts);
        free(in);
        free(tg);
    }
    size_t st = 0;
    int32_t a[4], b[4];
    cr_assert_eq(nawal_corpus_batch(&c, 5, &st, 1, 1, a, b, err, sizeof err), -1);
    cr_assert_eq(nawal_corpus_batch(&c, 0, &st, 0, 1, a, b, err, sizeof err), -1);
    cr_assert_eq(nawal_corpus_batch(&c, 0, &st, 1, 0, a, b, err, sizeof err), -1);
    nawal_corpus_free(&c);
    nawal_tokenizer_free(tok);
    drop_file(path);
    free(data);
}
