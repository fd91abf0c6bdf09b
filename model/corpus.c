/* corpus.c - loads a plain-text or JSONL corpus into one token stream (see
 * corpus.h for the rules), splits it into train/validation and cuts batch
 * windows out of a split. JSON parsing is jansson's; tokenizing is
 * tokenizer.c's. Both loaders walk the file once: JSONL line by line with
 * getline, plain text read whole. */
#include "error.h"
#include "corpus.h"
#include "fileio.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


int nawal_corpus_is_jsonl(const char *path) {
    size_t n = path ? strlen(path) : 0;
    return n >= 6 && strcmp(path + n - 6, ".jsonl") == 0;
}

/* Growable byte or token buffer. */
typedef struct {
    void *p;
    size_t n, cap; /* in elements */
} vec;

static int vec_append(vec *v, const void *src, size_t count, size_t elem) {
    if (count > SIZE_MAX / elem - v->n) return -1;
    size_t need = v->n + count;
    if (need > v->cap || !v->p) {
        size_t nc = v->cap ? v->cap : 4096;
        while (nc < need) {
            if (nc > SIZE_MAX / 2 / elem) return -1;
            nc *= 2;
        }
        void *q = realloc(v->p, nc * elem);
        if (!q) return -1;
        v->p = q;
        v->cap = nc;
    }
    if (count) memcpy((char *)v->p + v->n * elem, src, count * elem);
    v->n = need;
    return 0;
}

/* Reads a whole file. */
typedef int (*doc_fn)(void *ctx, const char *text, size_t len, char *err, size_t errlen);

static int blank_line(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return 0;
    return 1;
}

/* Calls fn for the "text" of every document of a JSONL file. */
static int jsonl_foreach(const char *path, int skip_bad_lines, doc_fn fn, void *ctx,
                         size_t *n_docs, size_t *n_skipped, char *err, size_t errlen) {
    *n_docs = *n_skipped = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return nawal_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t n;
    int rc = 0;
    errno = 0;
    while ((n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (blank_line(line, (size_t)n)) continue;
        json_error_t jerr;
        json_t *root = json_loadb(line, (size_t)n, JSON_ALLOW_NUL | JSON_DECODE_ANY, &jerr);
        const char *problem = NULL;
        char detail[256];
        json_t *text = NULL;
        if (!root) {
            snprintf(detail, sizeof detail, "invalid JSON: %s (column %d)", jerr.text,
                     jerr.column);
            problem = detail;
        } else if (!json_is_object(root)) {
            problem = "not a JSON object";
        } else if (!(text = json_object_get(root, "text")) || !json_is_string(text)) {
            problem = "missing string field \"text\"";
        }
        if (problem) {
            if (!skip_bad_lines) {
                nawal_fail(err, errlen, "%s:%zu: %s", path, lineno, problem);
                json_decref(root);
                rc = -1;
                break;
            }
            (*n_skipped)++;
            json_decref(root);
            continue;
        }
        int r = fn(ctx, json_string_value(text), json_string_length(text), err, errlen);
        json_decref(root);
        if (r) {
            /* prefix the callback's message with the location */
            char inner[512];
            snprintf(inner, sizeof inner, "%s", err && errlen ? err : "");
            nawal_fail(err, errlen, "%s:%zu: %s", path, lineno, inner);
            rc = -1;
            break;
        }
        (*n_docs)++;
        errno = 0;
    }
    if (rc == 0 && ferror(f)) rc = nawal_fail(err, errlen, "%s: read error: %s", path, strerror(errno));
    free(line);
    fclose(f);
    return rc;
}

/* ---------------------------------------------------------------------------
 * Raw text (for tokenizer training). */

static int text_append(void *ctx, const char *text, size_t len, char *err, size_t errlen) {
    if (vec_append(ctx, text, len, 1)) return nawal_fail(err, errlen, "out of memory");
    return 0;
}

int nawal_corpus_read_text(const char *path, int skip_bad_lines, uint8_t **bytes, size_t *len,
                           size_t *n_docs, size_t *n_skipped, char *err, size_t errlen) {
    if (!path || !bytes || !len) return nawal_fail(err, errlen, "corpus: invalid arguments");
    *bytes = NULL;
    *len = 0;
    size_t docs = 0, skipped = 0;
    if (!nawal_corpus_is_jsonl(path)) {
        if (nawal_file_read_all(path, UINT64_MAX, bytes, len, err, errlen)) return -1;
        docs = 1;
    } else {
        vec v = {0};
        if (jsonl_foreach(path, skip_bad_lines, text_append, &v, &docs, &skipped, err, errlen)) {
            free(v.p);
            return -1;
        }
        if (!v.p && !(v.p = malloc(1))) return nawal_fail(err, errlen, "%s: out of memory", path);
        *bytes = v.p;
        *len = v.n;
    }
    if (n_docs) *n_docs = docs;
    if (n_skipped) *n_skipped = skipped;
    return 0;
}

/* ---------------------------------------------------------------------------
 * Token streams. */

typedef struct {
    const nawal_tokenizer *tok;
    vec tokens;
} tok_ctx;

static int doc_append(void *ctx, const char *text, size_t len, char *err, size_t errlen) {
    tok_ctx *tc = ctx;
    int32_t *toks;
    size_t n;
    if (nawal_tokenizer_encode(tc->tok, (const uint8_t *)text, len, &toks, &n, err, errlen))
        return -1;
    int32_t eot = NAWAL_TOKEN_EOT;
    int r = vec_append(&tc->tokens, toks, n, sizeof(int32_t)) ||
            vec_append(&tc->tokens, &eot, 1, sizeof(int32_t));
    free(toks);
    if (r) return nawal_fail(err, errlen, "out of memory");
    return 0;
}

void nawal_corpus_free(nawal_corpus *c) {
    if (!c) return;
    free(c->tokens);
    memset(c, 0, sizeof *c);
}

int nawal_corpus_load(nawal_corpus *c, const char *path, const nawal_tokenizer *tok,
                      int skip_bad_lines, char *err, size_t errlen) {
    if (!c) return nawal_fail(err, errlen, "corpus: invalid arguments");
    memset(c, 0, sizeof *c);
    if (!path || !tok) return nawal_fail(err, errlen, "corpus: invalid arguments");
    if (nawal_corpus_is_jsonl(path)) {
        tok_ctx tc = {.tok = tok};
        if (jsonl_foreach(path, skip_bad_lines, doc_append, &tc, &c->n_documents,
                          &c->n_skipped_lines, err, errlen)) {
            free(tc.tokens.p);
            memset(c, 0, sizeof *c);
            return -1;
        }
        c->tokens = tc.tokens.p;
        c->n_tokens = tc.tokens.n;
    } else {
        uint8_t *bytes;
        size_t len;
        if (nawal_file_read_all(path, UINT64_MAX, &bytes, &len, err, errlen)) return -1;
        char inner[256] = "";
        int r = nawal_tokenizer_encode(tok, bytes, len, &c->tokens, &c->n_tokens, inner,
                                       sizeof inner);
        free(bytes);
        if (r) return nawal_fail(err, errlen, "%s: %s", path, inner);
        c->n_documents = 1;
    }
    if (c->n_tokens == 0) {
        size_t skipped = c->n_skipped_lines;
        nawal_corpus_free(c);
        if (skipped)
            return nawal_fail(err, errlen, "%s: corpus is empty (no tokens; %zu malformed lines skipped)",
                        path, skipped);
        return nawal_fail(err, errlen, "%s: corpus is empty (no tokens)", path);
    }
    c->n_train = c->n_tokens - c->n_tokens / 10;
    return 0;
}

const int32_t *nawal_corpus_split(const nawal_corpus *c, int split, size_t *n) {
    if (n) *n = 0;
    if (!c || !c->tokens) return NULL;
    if (split == NAWAL_SPLIT_TRAIN) {
        if (n) *n = c->n_train;
        return c->tokens;
    }
    if (split == NAWAL_SPLIT_VAL) {
        if (n) *n = c->n_tokens - c->n_train;
        return c->tokens + c->n_train;
    }
    return NULL;
}

int nawal_corpus_batch(const nawal_corpus *c, int split, const size_t *starts, int B, int T,
                       int32_t *inputs, int32_t *targets, char *err, size_t errlen) {
    if (!c || !starts || !inputs || !targets)
        return nawal_fail(err, errlen, "corpus batch: invalid arguments");
    if (split != NAWAL_SPLIT_TRAIN && split != NAWAL_SPLIT_VAL)
        return nawal_fail(err, errlen, "corpus batch: unknown split %d", split);
    if (B < 1 || T < 1) return nawal_fail(err, errlen, "corpus batch: B=%d T=%d, both must be >= 1", B, T);
    size_t n;
    const int32_t *tok = nawal_corpus_split(c, split, &n);
    const char *name = split == NAWAL_SPLIT_TRAIN ? "train" : "validation";
    for (int b = 0; b < B; b++) {
        size_t s = starts[b];
        if (s > n || n - s < (size_t)T + 1)
            return nawal_fail(err, errlen,
                        "corpus batch: window %d starts at %zu, needs %d tokens but the %s "
                        "split has %zu",
                        b, s, T + 1, name, n);
    }
    for (int b = 0; b < B; b++) {
        const int32_t *src = tok + starts[b];
        memcpy(inputs + (size_t)b * T, src, (size_t)T * sizeof *src);
        memcpy(targets + (size_t)b * T, src + 1, (size_t)T * sizeof *src);
    }
    return 0;
}
