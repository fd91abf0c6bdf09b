/* tokenizer.c - byte-level tokenizer, BPE trainer, encoder, decoder and the
 * tokenizer file reader/writer. The rules (pre-splitting, merge order, file
 * format) are documented in tokenizer.h; this file only implements them.
 *
 * Layout: a tokenizer is its merge list plus two derived tables, the bytes of
 * every token (for decoding) and a hash map (left, right) -> merged id (for
 * encoding). Training keeps a table of unique chunks ("words") with their
 * frequencies, a record per adjacent pair (count + the words it occurs in)
 * and a max-heap of pairs with lazy deletion; after each merge only the
 * words that contain the merged pair are rewritten and only the pair counts
 * that change are updated. */
#include "error.h"
#include "fileio.h"
#include "tokenizer.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TOK_MAGIC "nawal-bpe"
#define TOK_VERSION 1
#define TOK_MAX_TRAIN_BYTES ((size_t)1 << 30)
/* "262143 262143\n" is 14 bytes; allow some slack for the header. */
#define TOK_MAX_FILE_BYTES (64 + (size_t)NAWAL_TOKENIZER_MAX_VOCAB * 16)


/* Grows an array to hold at least need elements. Returns the (possibly moved)
 * array, or NULL on failure with the old array and *cap left untouched. */
static void *xgrow(void *p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap && p) return p;
    size_t nc = *cap ? *cap : 16;
    while (nc < need) {
        if (nc > SIZE_MAX / 2 / elem) return NULL;
        nc *= 2;
    }
    void *q = realloc(p, nc * elem);
    if (!q) return NULL;
    *cap = nc;
    return q;
}

/* ---------------------------------------------------------------------------
 * Pair hash map: (left, right) packed into 64 bits -> int32 value.
 * Open addressing with linear probing; ids are < 2^31 so the all-ones key
 * never occurs and marks an empty slot. */

#define PAIRMAP_EMPTY UINT64_MAX

typedef struct {
    uint64_t *keys;
    int32_t *vals;
    size_t cap, n; /* cap is a power of two (or 0 before init) */
} pairmap;

static uint64_t pair_key(int32_t left, int32_t right) {
    return ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
}

static size_t pair_hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb3fe1a85ec53ULL;
    k ^= k >> 33;
    return (size_t)k;
}

static int pairmap_alloc(pairmap *m, size_t cap) {
    m->keys = malloc(cap * sizeof *m->keys);
    m->vals = malloc(cap * sizeof *m->vals);
    if (!m->keys || !m->vals) {
        free(m->keys);
        free(m->vals);
        m->keys = NULL;
        m->vals = NULL;
        return -1;
    }
    for (size_t i = 0; i < cap; i++) m->keys[i] = PAIRMAP_EMPTY;
    m->cap = cap;
    m->n = 0;
    return 0;
}

static int pairmap_init(pairmap *m, size_t expect) {
    size_t cap = 16;
    while (cap / 2 < expect) {
        if (cap > SIZE_MAX / 4 / sizeof(uint64_t)) return -1;
        cap *= 2;
    }
    return pairmap_alloc(m, cap);
}

static void pairmap_free(pairmap *m) {
    free(m->keys);
    free(m->vals);
    m->keys = NULL;
    m->vals = NULL;
    m->cap = m->n = 0;
}

static int32_t pairmap_get(const pairmap *m, uint64_t key) {
    if (!m->cap) return -1;
    size_t mask = m->cap - 1, i = pair_hash(key) & mask;
    while (m->keys[i] != PAIRMAP_EMPTY) {
        if (m->keys[i] == key) return m->vals[i];
        i = (i + 1) & mask;
    }
    return -1;
}

static void pairmap_place(pairmap *m, uint64_t key, int32_t val) {
    size_t mask = m->cap - 1, i = pair_hash(key) & mask;
    while (m->keys[i] != PAIRMAP_EMPTY && m->keys[i] != key) i = (i + 1) & mask;
    if (m->keys[i] == PAIRMAP_EMPTY) m->n++;
    m->keys[i] = key;
    m->vals[i] = val;
}

/* Inserts or overwrites. 0, or -1 when out of memory. */
static int pairmap_put(pairmap *m, uint64_t key, int32_t val) {
    if ((m->n + 1) * 2 > m->cap) {
        if (m->cap > SIZE_MAX / 4 / sizeof(uint64_t)) return -1;
        pairmap old = *m;
        if (pairmap_alloc(m, old.cap ? old.cap * 2 : 16)) {
            *m = old;
            return -1;
        }
        for (size_t i = 0; i < old.cap; i++)
            if (old.keys[i] != PAIRMAP_EMPTY) pairmap_place(m, old.keys[i], old.vals[i]);
        free(old.keys);
        free(old.vals);
    }
    pairmap_place(m, key, val);
    return 0;
}

/* ---------------------------------------------------------------------------
 * The tokenizer object. */

struct nawal_tokenizer {
    int vocab_size;
    int n_merges;
    int32_t *merge_left, *merge_right; /* [n_merges]; merge i defines id 257+i */
    uint32_t *tok_off, *tok_len;       /* [vocab_size], into tok_bytes */
    uint8_t *tok_bytes;
    pairmap merges; /* (left, right) -> merged id */
};

void nawal_tokenizer_free(nawal_tokenizer *t) {
    if (!t) return;
    free(t->merge_left);
    free(t->merge_right);
    free(t->tok_off);
    free(t->tok_len);
    free(t->tok_bytes);
    pairmap_free(&t->merges);
    free(t);
}

/* Builds a tokenizer from a merge list, validating every merge. Error
 * messages are prefixed with "where:line:" when where is set (the merge for
 * id 257+i sits on line first_line+i of a file). */
static int tok_build(nawal_tokenizer **out, const int32_t *left, const int32_t *right,
                     int n_merges, const char *where, int first_line, char *err,
                     size_t errlen) {
    *out = NULL;
    if (n_merges < 0 || n_merges > NAWAL_TOKENIZER_MAX_VOCAB - NAWAL_TOKENIZER_BYTE_VOCAB)
        return nawal_fail(err, errlen, "%s%stoo many merges (%d)", where ? where : "",
                    where ? ": " : "", n_merges);
    int vocab = NAWAL_TOKENIZER_BYTE_VOCAB + n_merges;
    nawal_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return nawal_fail(err, errlen, "out of memory");
    t->vocab_size = vocab;
    t->n_merges = n_merges;
    size_t nm = n_merges ? (size_t)n_merges : 1;
    t->merge_left = malloc(nm * sizeof(int32_t));
    t->merge_right = malloc(nm * sizeof(int32_t));
    t->tok_off = malloc((size_t)vocab * sizeof(uint32_t));
    t->tok_len = malloc((size_t)vocab * sizeof(uint32_t));
    if (!t->merge_left || !t->merge_right || !t->tok_off || !t->tok_len ||
        pairmap_init(&t->merges, (size_t)n_merges)) {
        nawal_tokenizer_free(t);
        return nawal_fail(err, errlen, "out of memory");
    }
    size_t total = 256;
    for (int i = 0; i < 256; i++) t->tok_len[i] = 1;
    t->tok_len[NAWAL_TOKEN_EOT] = 0;
    for (int i = 0; i < n_merges; i++) {
        int32_t id = NAWAL_TOKENIZER_BYTE_VOCAB + i, l = left[i], r = right[i];
        const char *why = NULL;
        if (l < 0 || r < 0) why = "negative id";
        else if (l >= id || r >= id) why = "refers to a token not defined before it";
        else if (l == NAWAL_TOKEN_EOT || r == NAWAL_TOKEN_EOT) why = "refers to the end-of-text token";
        else if (t->tok_len[l] + t->tok_len[r] > NAWAL_TOKENIZER_MAX_CHUNK)
            why = "token would be longer than the 256-byte chunk limit";
        else if (pairmap_get(&t->merges, pair_key(l, r)) >= 0) why = "duplicate merge";
        if (why) {
            if (where)
                nawal_fail(err, errlen, "%s:%d: token %d = (%d, %d): %s", where, first_line + i,
                     (int)id, (int)l, (int)r, why);
            else
                nawal_fail(err, errlen, "token %d = (%d, %d): %s", (int)id, (int)l, (int)r, why);
            nawal_tokenizer_free(t);
            return -1;
        }
        if (pairmap_put(&t->merges, pair_key(l, r), id)) {
            nawal_tokenizer_free(t);
            return nawal_fail(err, errlen, "out of memory");
        }
        t->merge_left[i] = l;
        t->merge_right[i] = r;
        t->tok_len[id] = t->tok_len[l] + t->tok_len[r];
        total += t->tok_len[id];
    }
    t->tok_bytes = malloc(total);
    if (!t->tok_bytes) {
        nawal_tokenizer_free(t);
        return nawal_fail(err, errlen, "out of memory");
    }
    for (int i = 0; i < 256; i++) {
        t->tok_off[i] = (uint32_t)i;
        t->tok_bytes[i] = (uint8_t)i;
    }
    t->tok_off[NAWAL_TOKEN_EOT] = 256;
    uint32_t off = 256;
    for (int i = 0; i < n_merges; i++) {
        int id = NAWAL_TOKENIZER_BYTE_VOCAB + i, l = t->merge_left[i], r = t->merge_right[i];
        t->tok_off[id] = off;
        memcpy(t->tok_bytes + off, t->tok_bytes + t->tok_off[l], t->tok_len[l]);
        memcpy(t->tok_bytes + off + t->tok_len[l], t->tok_bytes + t->tok_off[r], t->tok_len[r]);
        off += t->tok_len[id];
    }
    *out = t;
    return 0;
}

int nawal_tokenizer_new_byte(nawal_tokenizer **out) {
    if (!out) return -1;
    return tok_build(out, NULL, NULL, 0, NULL, 0, NULL, 0);
}

int nawal_tokenizer_vocab_size(const nawal_tokenizer *t) { return t ? t->vocab_size : 0; }
int nawal_tokenizer_is_bpe(const nawal_tokenizer *t) { return t && t->n_merges > 0; }
int nawal_tokenizer_n_merges(const nawal_tokenizer *t) { return t ? t->n_merges : 0; }

int nawal_tokenizer_merge_get(const nawal_tokenizer *t, int index, int32_t *left,
                              int32_t *right) {
    if (!t || index < 0 || index >= t->n_merges) return -1;
    if (left) *left = t->merge_left[index];
    if (right) *right = t->merge_right[index];
    return 0;
}

int nawal_tokenizer_token_bytes(const nawal_tokenizer *t, int32_t id, const uint8_t **bytes,
                                size_t *len) {
    if (!t || id < 0 || id >= t->vocab_size) return -1;
    if (bytes) *bytes = t->tok_bytes + t->tok_off[id];
    if (len) *len = t->tok_len[id];
    return 0;
}

/* ---------------------------------------------------------------------------
 * Pre-splitting. */

enum { CLS_SPACE = 0, CLS_LETTER = 1, CLS_DIGIT = 2, CLS_OTHER = 3 };

static int byte_class(uint8_t c) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r') return CLS_SPACE;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80) return CLS_LETTER;
    if (c >= '0' && c <= '9') return CLS_DIGIT;
    return CLS_OTHER;
}

size_t nawal_tokenizer_chunk_len(const uint8_t *p, size_t n) {
    if (!p || n == 0) return 0;
    size_t max = n < NAWAL_TOKENIZER_MAX_CHUNK ? n : NAWAL_TOKENIZER_MAX_CHUNK;
    size_t i;
    if (p[0] == ' ' && max > 1 && byte_class(p[1]) != CLS_SPACE) {
        int c = byte_class(p[1]);
        for (i = 2; i < max && byte_class(p[i]) == c; i++) {}
        return i;
    }
    int c0 = byte_class(p[0]);
    for (i = 1; i < max && byte_class(p[i]) == c0; i++) {}
    if (c0 == CLS_SPACE && i > 1 && i < n && p[i - 1] == ' ' && byte_class(p[i]) != CLS_SPACE)
        i--; /* the last space prefixes the next word */
    return i;
}

/* ---------------------------------------------------------------------------
 * Encoding and decoding. */

/* Encodes one chunk into s (which must hold n tokens); returns the count. */
static size_t encode_chunk(const nawal_tokenizer *t, const uint8_t *p, size_t n, int32_t *s) {
    for (size_t i = 0; i < n; i++) s[i] = p[i];
    while (n >= 2) {
        int32_t best = INT32_MAX;
        for (size_t i = 0; i + 1 < n; i++) {
            int32_t id = pairmap_get(&t->merges, pair_key(s[i], s[i + 1]));
            if (id >= 0 && id < best) best = id;
        }
        if (best == INT32_MAX) break;
        int32_t a = t->merge_left[best - NAWAL_TOKENIZER_BYTE_VOCAB];
        int32_t b = t->merge_right[best - NAWAL_TOKENIZER_BYTE_VOCAB];
        size_t j = 0;
        for (size_t i = 0; i < n;) {
            if (i + 1 < n && s[i] == a && s[i + 1] == b) {
                s[j++] = best;
                i += 2;
            } else {
                s[j++] = s[i++];
            }
        }
        n = j;
    }
    return n;
}

int nawal_tokenizer_encode(const nawal_tokenizer *t, const uint8_t *data, size_t len,
                           int32_t **tokens, size_t *n_tokens, char *err, size_t errlen) {
    if (!t || !tokens || !n_tokens || (!data && len))
        return nawal_fail(err, errlen, "tokenizer encode: invalid arguments");
    *tokens = NULL;
    *n_tokens = 0;
    if (len > SIZE_MAX / sizeof(int32_t))
        return nawal_fail(err, errlen, "tokenizer encode: input too large (%zu bytes)", len);
    int32_t *out = malloc((len ? len : 1) * sizeof *out);
    if (!out) return nawal_fail(err, errlen, "tokenizer encode: out of memory for %zu bytes", len);
    size_t n = 0;
    if (t->n_merges == 0) {
        for (size_t i = 0; i < len; i++) out[i] = data[i];
        n = len;
    } else {
        size_t pos = 0;
        while (pos < len) {
            size_t c = nawal_tokenizer_chunk_len(data + pos, len - pos);
            n += encode_chunk(t, data + pos, c, out + n);
            pos += c;
        }
    }
    *tokens = out;
    *n_tokens = n;
    return 0;
}

int nawal_tokenizer_decode(const nawal_tokenizer *t, const int32_t *tokens, size_t n,
                           uint8_t **bytes, size_t *n_bytes, char *err, size_t errlen) {
    if (!t || !bytes || !n_bytes || (!tokens && n))
        return nawal_fail(err, errlen, "tokenizer decode: invalid arguments");
    *bytes = NULL;
    *n_bytes = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = tokens[i];
        if (id < 0 || id >= t->vocab_size)
            return nawal_fail(err, errlen, "tokenizer decode: token %zu has id %ld, outside [0, %d)", i,
                        (long)id, t->vocab_size);
        if (total > SIZE_MAX - NAWAL_TOKENIZER_MAX_CHUNK)
            return nawal_fail(err, errlen, "tokenizer decode: output too large");
        total += t->tok_len[id];
    }
    uint8_t *out = malloc(total ? total : 1);
    if (!out) return nawal_fail(err, errlen, "tokenizer decode: out of memory for %zu bytes", total);
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(out + off, t->tok_bytes + t->tok_off[tokens[i]], t->tok_len[tokens[i]]);
        off += t->tok_len[tokens[i]];
    }
    *bytes = out;
    *n_bytes = total;
    return 0;
}

/* ---------------------------------------------------------------------------
 * BPE training. */

typedef struct {
    size_t src;    /* offset of the first occurrence in the training data */
    size_t seq;    /* offset of its current token sequence in the pool */
    uint32_t n;    /* current number of tokens */
    uint32_t nbytes;
    int64_t freq;
} train_word;

typedef struct {
    int32_t left, right;
    int64_t count;
    uint32_t *words; /* words the pair occurs (or once occurred) in, no repeats */
    size_t n_words, cap_words;
    int32_t stamp; /* id of the last merge that touched this pair */
} train_pair;

typedef struct {
    int64_t count;
    int32_t left, right;
} heap_entry;

typedef struct {
    const uint8_t *data;
    train_word *words;
    size_t n_words, cap_words;
    int32_t *pool;
    train_pair *pairs;
    size_t n_pairs, cap_pairs;
    pairmap pair_index; /* (left, right) -> index into pairs */
    heap_entry *heap;
    size_t n_heap, cap_heap;
    uint32_t *touched;
    size_t n_touched, cap_touched;
    int32_t *merge_left, *merge_right;
    int n_merges;
} trainer;

static void trainer_free(trainer *tr) {
    free(tr->words);
    free(tr->pool);
    for (size_t i = 0; i < tr->n_pairs; i++) free(tr->pairs[i].words);
    free(tr->pairs);
    pairmap_free(&tr->pair_index);
    free(tr->heap);
    free(tr->touched);
    free(tr->merge_left);
    free(tr->merge_right);
}

/* Heap order: higher count first, then smaller left, then smaller right. */
static int heap_before(const heap_entry *x, const heap_entry *y) {
    if (x->count != y->count) return x->count > y->count;
    if (x->left != y->left) return x->left < y->left;
    return x->right < y->right;
}

static int heap_push(trainer *tr, heap_entry e) {
    heap_entry *h = xgrow(tr->heap, &tr->cap_heap, tr->n_heap + 1, sizeof *h);
    if (!h) return -1;
    tr->heap = h;
    size_t i = tr->n_heap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_before(&e, &h[parent])) break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = e;
    return 0;
}

static heap_entry heap_pop(trainer *tr) {
    heap_entry *h = tr->heap, top = h[0], last = h[--tr->n_heap];
    size_t n = tr->n_heap, i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_before(&h[c + 1], &h[c])) c++;
        if (!heap_before(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (n) h[i] = last;
    return top;
}

/* Index of the record for (l, r), created with count 0 if missing; -1 on OOM. */
static int64_t pair_find_or_add(trainer *tr, int32_t l, int32_t r) {
    uint64_t key = pair_key(l, r);
    int32_t idx = pairmap_get(&tr->pair_index, key);
    if (idx >= 0) return idx;
    if (tr->n_pairs >= INT32_MAX) return -1;
    train_pair *p = xgrow(tr->pairs, &tr->cap_pairs, tr->n_pairs + 1, sizeof *p);
    if (!p) return -1;
    tr->pairs = p;
    if (pairmap_put(&tr->pair_index, key, (int32_t)tr->n_pairs)) return -1;
    train_pair *np = &tr->pairs[tr->n_pairs];
    memset(np, 0, sizeof *np);
    np->left = l;
    np->right = r;
    return (int64_t)tr->n_pairs++;
}

static int pair_add_word(trainer *tr, size_t idx, uint32_t w) {
    train_pair *p = &tr->pairs[idx];
    if (p->n_words && p->words[p->n_words - 1] == w) return 0;
    uint32_t *ws = xgrow(p->words, &p->cap_words, p->n_words + 1, sizeof *ws);
    if (!ws) return -1;
    p->words = ws;
    ws[p->n_words++] = w;
    return 0;
}

static uint64_t bytes_hash(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

/* Splits data into chunks and fills the table of unique chunks. */
static int trainer_collect_words(trainer *tr, const uint8_t *data, size_t len) {
    size_t cap = 1024, mask;
    uint32_t *table = malloc(cap * sizeof *table);
    if (!table) return -1;
    memset(table, 0xff, cap * sizeof *table);
    mask = cap - 1;
    size_t pool_len = 0;
    for (size_t pos = 0; pos < len;) {
        size_t c = nawal_tokenizer_chunk_len(data + pos, len - pos);
        size_t i = bytes_hash(data + pos, c) & mask;
        while (table[i] != UINT32_MAX) {
            train_word *w = &tr->words[table[i]];
            if (w->nbytes == c && memcmp(data + w->src, data + pos, c) == 0) break;
            i = (i + 1) & mask;
        }
        if (table[i] != UINT32_MAX) {
            tr->words[table[i]].freq++;
        } else {
            train_word *ws = xgrow(tr->words, &tr->cap_words, tr->n_words + 1, sizeof *ws);
            if (!ws) goto oom;
            tr->words = ws;
            ws[tr->n_words] = (train_word){.src = pos, .seq = pool_len, .n = (uint32_t)c,
                                           .nbytes = (uint32_t)c, .freq = 1};
            table[i] = (uint32_t)tr->n_words++;
            pool_len += c;
            if (tr->n_words * 2 > cap) { /* rehash into a table twice as big */
                size_t ncap = cap * 2;
                uint32_t *nt = malloc(ncap * sizeof *nt);
                if (!nt) goto oom;
                memset(nt, 0xff, ncap * sizeof *nt);
                for (size_t k = 0; k < cap; k++) {
                    if (table[k] == UINT32_MAX) continue;
                    const train_word *w = &tr->words[table[k]];
                    size_t j = bytes_hash(data + w->src, w->nbytes) & (ncap - 1);
                    while (nt[j] != UINT32_MAX) j = (j + 1) & (ncap - 1);
                    nt[j] = table[k];
                }
                free(table);
                table = nt;
                cap = ncap;
                mask = cap - 1;
            }
        }
        pos += c;
    }
    free(table);
    tr->pool = malloc((pool_len ? pool_len : 1) * sizeof *tr->pool);
    if (!tr->pool) return -1;
    for (size_t w = 0; w < tr->n_words; w++) {
        const train_word *wd = &tr->words[w];
        for (uint32_t i = 0; i < wd->n; i++) tr->pool[wd->seq + i] = data[wd->src + i];
    }
    return 0;
oom:
    free(table);
    return -1;
}

static int touch(trainer *tr, size_t idx, int32_t stamp) {
    if (tr->pairs[idx].stamp == stamp) return 0;
    uint32_t *t = xgrow(tr->touched, &tr->cap_touched, tr->n_touched + 1, sizeof *t);
    if (!t) return -1;
    tr->touched = t;
    t[tr->n_touched++] = (uint32_t)idx;
    tr->pairs[idx].stamp = stamp;
    return 0;
}

typedef struct {
    uint64_t key;
    int32_t delta;
} pair_delta;

static int cmp_delta(const void *x, const void *y) {
    uint64_t a = ((const pair_delta *)x)->key, b = ((const pair_delta *)y)->key;
    return (a > b) - (a < b);
}

/* Replaces every (a, b) in word w by z, left to right, and updates the pair
 * counts. Only pairs with an element in {a, b, z} can change: all others are
 * adjacent in the same way before and after. */
static int merge_word(trainer *tr, uint32_t w, int32_t a, int32_t b, int32_t z) {
    train_word *wd = &tr->words[w];
    int32_t *s = tr->pool + wd->seq;
    size_t n = wd->n, i;
    for (i = 0; i + 1 < n; i++)
        if (s[i] == a && s[i + 1] == b) break;
    if (i + 1 >= n) return 0; /* stale entry: the word no longer has the pair */

    pair_delta d[2 * NAWAL_TOKENIZER_MAX_CHUNK];
    size_t nd = 0;
    for (i = 0; i + 1 < n; i++)
        if (s[i] == a || s[i] == b || s[i + 1] == a || s[i + 1] == b)
            d[nd++] = (pair_delta){pair_key(s[i], s[i + 1]), -1};
    size_t j = 0;
    for (i = 0; i < n;) {
        if (i + 1 < n && s[i] == a && s[i + 1] == b) {
            s[j++] = z;
            i += 2;
        } else {
            s[j++] = s[i++];
        }
    }
    n = j;
    wd->n = (uint32_t)n;
    for (i = 0; i + 1 < n; i++)
        if (s[i] == a || s[i] == b || s[i] == z || s[i + 1] == a || s[i + 1] == b ||
            s[i + 1] == z)
            d[nd++] = (pair_delta){pair_key(s[i], s[i + 1]), +1};
    qsort(d, nd, sizeof *d, cmp_delta);
    for (i = 0; i < nd;) {
        int64_t sum = 0;
        for (j = i; j < nd && d[j].key == d[i].key; j++) sum += d[j].delta;
        if (sum != 0) {
            int32_t l = (int32_t)(d[i].key >> 32), r = (int32_t)(uint32_t)d[i].key;
            int64_t idx = pair_find_or_add(tr, l, r);
            if (idx < 0) return -1;
            tr->pairs[idx].count += sum * wd->freq;
            if (touch(tr, (size_t)idx, z)) return -1;
            if (sum > 0 && pair_add_word(tr, (size_t)idx, w)) return -1;
        }
        i = j;
    }
    return 0;
}

static int trainer_run(trainer *tr, int vocab_size) {
    /* initial pair counts */
    for (uint32_t w = 0; w < tr->n_words; w++) {
        const train_word *wd = &tr->words[w];
        const int32_t *s = tr->pool + wd->seq;
        for (uint32_t i = 0; i + 1 < wd->n; i++) {
            int64_t idx = pair_find_or_add(tr, s[i], s[i + 1]);
            if (idx < 0 || pair_add_word(tr, (size_t)idx, w)) return -1;
            tr->pairs[idx].count += wd->freq;
        }
    }
    for (size_t k = 0; k < tr->n_pairs; k++) {
        const train_pair *p = &tr->pairs[k];
        if (p->count >= 2 && heap_push(tr, (heap_entry){p->count, p->left, p->right})) return -1;
    }
    int n_max = vocab_size - NAWAL_TOKENIZER_BYTE_VOCAB;
    size_t nm = n_max ? (size_t)n_max : 1;
    tr->merge_left = malloc(nm * sizeof(int32_t));
    tr->merge_right = malloc(nm * sizeof(int32_t));
    if (!tr->merge_left || !tr->merge_right) return -1;

    while (tr->n_merges < n_max && tr->n_heap > 0) {
        heap_entry e = heap_pop(tr);
        int32_t pi = pairmap_get(&tr->pair_index, pair_key(e.left, e.right));
        if (pi < 0 || tr->pairs[pi].count != e.count || e.count < 2) continue; /* stale */
        int32_t z = NAWAL_TOKENIZER_BYTE_VOCAB + tr->n_merges;
        tr->merge_left[tr->n_merges] = e.left;
        tr->merge_right[tr->n_merges] = e.right;
        tr->n_merges++;
        /* The merged pair's word list never grows during its own merge (no
         * word gains an (a, b) pair), so it is safe to walk while the pairs
         * array itself may be reallocated. */
        uint32_t *wl = tr->pairs[pi].words;
        size_t nw = tr->pairs[pi].n_words;
        for (size_t k = 0; k < nw; k++)
            if (merge_word(tr, wl[k], e.left, e.right, z)) return -1;
        free(tr->pairs[pi].words);
        tr->pairs[pi].words = NULL;
        tr->pairs[pi].n_words = tr->pairs[pi].cap_words = 0;
        for (size_t k = 0; k < tr->n_touched; k++) {
            const train_pair *p = &tr->pairs[tr->touched[k]];
            if (p->count >= 2 && heap_push(tr, (heap_entry){p->count, p->left, p->right}))
                return -1;
        }
        tr->n_touched = 0;
    }
    return 0;
}

int nawal_tokenizer_train_bpe(nawal_tokenizer **out, const uint8_t *data, size_t len,
                              int vocab_size, char *err, size_t errlen) {
    if (!out) return nawal_fail(err, errlen, "tokenizer train: invalid arguments");
    *out = NULL;
    if (!data && len) return nawal_fail(err, errlen, "tokenizer train: invalid arguments");
    if (vocab_size < NAWAL_TOKENIZER_BYTE_VOCAB || vocab_size > NAWAL_TOKENIZER_MAX_VOCAB)
        return nawal_fail(err, errlen, "tokenizer train: vocab size %d outside [%d, %d]", vocab_size,
                    NAWAL_TOKENIZER_BYTE_VOCAB, NAWAL_TOKENIZER_MAX_VOCAB);
    if (len > TOK_MAX_TRAIN_BYTES)
        return nawal_fail(err, errlen, "tokenizer train: %zu bytes of training data, max %zu", len,
                    TOK_MAX_TRAIN_BYTES);
    trainer tr;
    memset(&tr, 0, sizeof tr);
    tr.data = data;
    if (pairmap_init(&tr.pair_index, 1024) || trainer_collect_words(&tr, data, len) ||
        trainer_run(&tr, vocab_size)) {
        trainer_free(&tr);
        return nawal_fail(err, errlen, "tokenizer train: out of memory (%zu bytes of data)", len);
    }
    int rc = tok_build(out, tr.merge_left, tr.merge_right, tr.n_merges, NULL, 0, err, errlen);
    trainer_free(&tr);
    return rc;
}

/* ---------------------------------------------------------------------------
 * Files. */

int nawal_tokenizer_save(const nawal_tokenizer *t, const char *path, char *err, size_t errlen) {
    if (!t || !path) return nawal_fail(err, errlen, "tokenizer save: invalid arguments");
    /* "%ld %ld\n" is at most 2 x 20 + 2 bytes per merge */
    size_t cap = 64 + (size_t)t->n_merges * 44, len = 0;
    char *text = malloc(cap);
    if (!text) return nawal_fail(err, errlen, "%s: out of memory", path);
    len += (size_t)snprintf(text, cap, "%s %d\nvocab %d\n", TOK_MAGIC, TOK_VERSION, t->vocab_size);
    for (int i = 0; i < t->n_merges; i++)
        len += (size_t)snprintf(text + len, cap - len, "%ld %ld\n", (long)t->merge_left[i], (long)t->merge_right[i]);
    nawal_chunk c = { text, len };
    int rc = nawal_file_replace(path, &c, 1, 0644, err, errlen);
    free(text);
    return rc;
}

/* Reads a whole file of at most max bytes. */
static int read_small_file(const char *path, size_t max, uint8_t **buf, size_t *len, char *err,
                           size_t errlen) {
    *buf = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return nawal_fail(err, errlen, "%s: %s", path, strerror(errno));
    size_t cap = 0, n = 0;
    uint8_t *b = NULL;
    for (;;) {
        uint8_t *nb = xgrow(b, &cap, n + 65536, 1);
        if (!nb) {
            free(b);
            fclose(f);
            return nawal_fail(err, errlen, "%s: out of memory", path);
        }
        b = nb;
        size_t got = fread(b + n, 1, cap - n, f);
        n += got;
        if (n > max) {
            free(b);
            fclose(f);
            return nawal_fail(err, errlen, "%s: file too large for a tokenizer (more than %zu bytes)",
                        path, max);
        }
        if (got == 0) break;
    }
    int rd_err = ferror(f);
    int e = errno;
    fclose(f);
    if (rd_err) {
        free(b);
        return nawal_fail(err, errlen, "%s: read error: %s", path, strerror(e));
    }
    *buf = b;
    *len = n;
    return 0;
}

/* Parses a decimal number <= max at b[*pos]; 0 or -1. */
static int parse_uint(const uint8_t *b, size_t len, size_t *pos, uint32_t max, uint32_t *out) {
    size_t i = *pos;
    uint64_t v = 0;
    if (i >= len || b[i] < '0' || b[i] > '9') return -1;
    for (; i < len && b[i] >= '0' && b[i] <= '9'; i++) {
        v = v * 10 + (uint64_t)(b[i] - '0');
        if (v > max) return -1;
    }
    *pos = i;
    *out = (uint32_t)v;
    return 0;
}

static int expect_char(const uint8_t *b, size_t len, size_t *pos, uint8_t c) {
    if (*pos >= len || b[*pos] != c) return -1;
    (*pos)++;
    return 0;
}

int nawal_tokenizer_load(nawal_tokenizer **out, const char *path, char *err, size_t errlen) {
    if (!out || !path) return nawal_fail(err, errlen, "tokenizer load: invalid arguments");
    *out = NULL;
    uint8_t *b;
    size_t len, pos = 0;
    if (read_small_file(path, TOK_MAX_FILE_BYTES, &b, &len, err, errlen)) return -1;

    int rc = -1;
    int32_t *left = NULL, *right = NULL;
    size_t mlen = strlen(TOK_MAGIC);
    uint32_t version, vocab;
    if (len < mlen + 1 || memcmp(b, TOK_MAGIC " ", mlen + 1) != 0) {
        nawal_fail(err, errlen, "%s: not a nawal tokenizer file (bad magic)", path);
        goto done;
    }
    pos = mlen + 1;
    if (parse_uint(b, len, &pos, UINT32_MAX - 1, &version) || expect_char(b, len, &pos, '\n')) {
        nawal_fail(err, errlen, "%s:1: bad header (expected \"%s %d\")", path, TOK_MAGIC, TOK_VERSION);
        goto done;
    }
    if (version != TOK_VERSION) {
        nawal_fail(err, errlen, "%s: unsupported tokenizer file version %u (this build reads %d)",
             path, (unsigned)version, TOK_VERSION);
        goto done;
    }
    static const char vocab_kw[] = "vocab ";
    if (len - pos < sizeof vocab_kw - 1 || memcmp(b + pos, vocab_kw, sizeof vocab_kw - 1) != 0) {
        nawal_fail(err, errlen, "%s:2: expected \"vocab <size>\"", path);
        goto done;
    }
    pos += sizeof vocab_kw - 1;
    if (parse_uint(b, len, &pos, NAWAL_TOKENIZER_MAX_VOCAB, &vocab) ||
        expect_char(b, len, &pos, '\n') || vocab < NAWAL_TOKENIZER_BYTE_VOCAB) {
        nawal_fail(err, errlen, "%s:2: vocab size must be a number in [%d, %d]", path,
             NAWAL_TOKENIZER_BYTE_VOCAB, NAWAL_TOKENIZER_MAX_VOCAB);
        goto done;
    }
    int n_merges = (int)vocab - NAWAL_TOKENIZER_BYTE_VOCAB;
    size_t nm = n_merges ? (size_t)n_merges : 1;
    left = malloc(nm * sizeof *left);
    right = malloc(nm * sizeof *right);
    if (!left || !right) {
        nawal_fail(err, errlen, "%s: out of memory", path);
        goto done;
    }
    for (int i = 0; i < n_merges; i++) {
        uint32_t l, r;
        if (pos >= len) {
            nawal_fail(err, errlen, "%s: truncated: vocab %u needs %d merges, found %d", path,
                 (unsigned)vocab, n_merges, i);
            goto done;
        }
        if (parse_uint(b, len, &pos, NAWAL_TOKENIZER_MAX_VOCAB, &l) ||
            expect_char(b, len, &pos, ' ') ||
            parse_uint(b, len, &pos, NAWAL_TOKENIZER_MAX_VOCAB, &r) ||
            expect_char(b, len, &pos, '\n')) {
            nawal_fail(err, errlen, "%s:%d: expected \"<left> <right>\" (two token ids < %d) and a newline",
                 path, i + 3, NAWAL_TOKENIZER_BYTE_VOCAB + i);
            goto done;
        }
        left[i] = (int32_t)l;
        right[i] = (int32_t)r;
    }
    if (pos != len) {
        nawal_fail(err, errlen, "%s:%d: unexpected data after the last merge", path, n_merges + 3);
        goto done;
    }
    rc = tok_build(out, left, right, n_merges, path, 3, err, errlen);
done:
    free(left);
    free(right);
    free(b);
    return rc;
}
