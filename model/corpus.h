/* corpus.h - a training corpus as one token stream, split into train and
 * validation parts, and the batch windows the training loop reads from it.
 *
 * Input formats, chosen by file name:
 *   *.jsonl  one JSON object per line with a string field "text"; each
 *            document's tokens are followed by NAWAL_TOKEN_EOT. Lines that
 *            are empty (or only whitespace) are skipped. A malformed line
 *            (bad JSON, not an object, no string "text") is an error
 *            "file:line: ..." unless skip_bad_lines is set, in which case it
 *            is skipped and counted in n_skipped_lines.
 *   other    plain text: the whole file is one document, no EOT appended.
 * Split (as nanoGPT): the last n_val = n_tokens / 10 tokens are validation,
 * the first n_train = n_tokens - n_val are training. An empty corpus is an
 * error. */
#ifndef NAWAL_CORPUS_H
#define NAWAL_CORPUS_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

typedef struct {
    int32_t *tokens;
    size_t n_tokens; /* whole stream */
    size_t n_train;  /* tokens[0..n_train) train, [n_train..n_tokens) validation */
    size_t n_documents, n_skipped_lines;
} nawal_corpus;

enum { NAWAL_SPLIT_TRAIN = 0, NAWAL_SPLIT_VAL = 1 };

/* Fills *c (zeroed on error). */
int nawal_corpus_load(nawal_corpus *c, const char *path, const nawal_tokenizer *tok,
                      int skip_bad_lines, char *err, size_t errlen);
void nawal_corpus_free(nawal_corpus *c);

/* Pointer and length of a split; NULL with *n = 0 for an unknown split. */
const int32_t *nawal_corpus_split(const nawal_corpus *c, int split, size_t *n);

/* Fills inputs/targets [B*T] with windows starting at starts[b] of the split:
 * inputs = tok[s..s+T), targets = tok[s+1..s+T+1). Error if a window runs
 * past the split (s + T + 1 > split length) or B, T < 1. */
int nawal_corpus_batch(const nawal_corpus *c, int split, const size_t *starts, int B, int T,
                       int32_t *inputs, int32_t *targets, char *err, size_t errlen);

/* The raw text of a corpus file, for training a tokenizer: a plain file's
 * bytes, or for *.jsonl the "text" fields concatenated (same line rules as
 * nawal_corpus_load; *n_docs and *n_skipped may be NULL). *bytes is
 * malloc'd (never NULL on success). */
int nawal_corpus_read_text(const char *path, int skip_bad_lines, uint8_t **bytes, size_t *len,
                           size_t *n_docs, size_t *n_skipped, char *err, size_t errlen);

/* 1 when path names a JSONL corpus (ends in ".jsonl"). */
int nawal_corpus_is_jsonl(const char *path);

#endif
