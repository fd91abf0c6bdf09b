/* test_tokenizer.c - properties of model/tokenizer.c on fresh random inputs:
 * byte and BPE round trips on arbitrary bytes, compression, the greedy merge
 * rule against a naive reference trainer, save/load, hand-checkable cases
 * and rejection of corrupt tokenizer files. Each test draws a new seed
 * (NAWAL_TEST_SEED=<n> reproduces one) and every assertion prints it. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tokenizer.h"
#include "test_util.h"

/* ---- randomness ---------------------------------------------------------- */


/* Arbitrary bytes, biased toward NUL, high bytes and spaces so every path of
 * the pre-splitter and invalid UTF-8 are exercised. */
static void random_bytes(rng *r, uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        switch (rng_below(r, 6)) {
        case 0: p[i] = 0; break;
        case 1: p[i] = (uint8_t)(0x80 + rng_below(r, 128)); break;
        case 2: p[i] = ' '; break;
        default: p[i] = (uint8_t)rng_below(r, 256); break;
        }
    }
}

/* Text of words over a small random alphabet with a skewed word frequency,
 * separated by spaces, with some newlines, punctuation and digits. */
static uint8_t *random_text(rng *r, size_t target, size_t n_words_vocab, size_t *len) {
    char alphabet[8];
    size_t k = 3 + rng_below(r, 6);
    for (size_t i = 0; i < k; i++) {
        char c;
        int dup;
        do {
            c = (char)('a' + rng_below(r, 26));
            dup = 0;
            for (size_t j = 0; j < i; j++) dup |= alphabet[j] == c;
        } while (dup);
        alphabet[i] = c;
    }
    char(*words)[9] = malloc(n_words_vocab * sizeof *words);
    cr_assert(words);
    for (size_t w = 0; w < n_words_vocab; w++) {
        size_t wl = 1 + rng_below(r, 8);
        for (size_t i = 0; i < wl; i++) words[w][i] = alphabet[rng_below(r, k)];
        words[w][wl] = 0;
    }
    uint8_t *out = malloc(target + 16);
    cr_assert(out);
    size_t n = 0;
    while (n < target) {
        /* skewed: the minimum of two uniform draws favours small indices */
        size_t a = rng_below(r, n_words_vocab), b = rng_below(r, n_words_vocab);
        const char *w = words[a < b ? a : b];
        size_t wl = strlen(w);
        if (n + wl + 2 > target) break;
        memcpy(out + n, w, wl);
        n += wl;
        size_t sep = rng_below(r, 40);
        if (sep == 0) out[n++] = '\n';
        else if (sep == 1) out[n++] = ',', out[n++] = ' ';
        else if (sep == 2) out[n++] = '0' + (uint8_t)rng_below(r, 10), out[n++] = ' ';
        else out[n++] = ' ';
    }
    free(words);
    *len = n;
    return out;
}

/* ---- helpers --------------------------------------------------------------- */

static void assert_roundtrip(const nawal_tokenizer *t, const uint8_t *p, size_t n, uint64_t seed,
                             const char *what) {
    char err[256] = "";
    int32_t *toks = NULL;
    size_t nt = 0;
    cr_assert_eq(nawal_tokenizer_encode(t, p, n, &toks, &nt, err, sizeof err), 0,
                 "seed=%llu %s: encode failed: %s", (unsigned long long)seed, what, err);
    cr_assert(toks != NULL, "seed=%llu %s: NULL tokens", (unsigned long long)seed, what);
    cr_assert(nt <= n, "seed=%llu %s: %zu tokens for %zu bytes", (unsigned long long)seed, what,
              nt, n);
    for (size_t i = 0; i < nt; i++)
        cr_assert(toks[i] >= 0 && toks[i] < nawal_tokenizer_vocab_size(t) &&
                      toks[i] != NAWAL_TOKEN_EOT,
                  "seed=%llu %s: bad token %d at %zu", (unsigned long long)seed, what, toks[i], i);
    uint8_t *back = NULL;
    size_t nb = 0;
    cr_assert_eq(nawal_tokenizer_decode(t, toks, nt, &back, &nb, err, sizeof err), 0,
                 "seed=%llu %s: decode failed: %s", (unsigned long long)seed, what, err);
    cr_assert_eq(nb, n, "seed=%llu %s: decoded %zu bytes, expected %zu",
                 (unsigned long long)seed, what, nb, n);
    cr_assert(n == 0 || memcmp(back, p, n) == 0, "seed=%llu %s: decoded bytes differ",
              (unsigned long long)seed, what);
    free(toks);
    free(back);
}

static size_t encode_count(const nawal_tokenizer *t, const uint8_t *p, size_t n) {
    int32_t *toks;
    size_t nt;
    char err[256];
    cr_assert_eq(nawal_tokenizer_encode(t, p, n, &toks, &nt, err, sizeof err), 0, "%s", err);
    free(toks);
    return nt;
}

static char *temp_path(void) {
    char *p = strdup("/tmp/nawal_tok_test_XXXXXX");
    cr_assert(p);
    int fd = mkstemp(p);
    cr_assert(fd >= 0);
    close(fd);
    return p;
}

static void write_file(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    cr_assert_eq(fwrite(p, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
}

/* Naive reference BPE trainer: recounts every pair of every chunk for each
 * merge, highest count first, ties to the smallest (left, right), stops when
 * the best count is below 2. Returns the number of merges; *n_final gets the
 * number of tokens the training text ends up as. */
static int reference_train(const uint8_t *p, size_t n, int vocab, int32_t *ml, int32_t *mr,
                           size_t *n_final) {
    int32_t *seq = malloc((n ? n : 1) * sizeof *seq);
    size_t *bounds = malloc((n + 1) * sizeof *bounds), nb = 0; /* chunk starts */
    cr_assert(seq && bounds);
    size_t *lens = malloc((n ? n : 1) * sizeof *lens);
    cr_assert(lens);
    for (size_t pos = 0; pos < n;) {
        size_t c = nawal_tokenizer_chunk_len(p + pos, n - pos);
        bounds[nb] = pos;
        lens[nb++] = c;
        pos += c;
    }
    for (size_t i = 0; i < n; i++) seq[i] = p[i];
    int merges = 0;
    size_t cap = (size_t)vocab * vocab;
    int64_t *cnt = malloc(cap * sizeof *cnt);
    cr_assert(cnt);
    while (NAWAL_TOKENIZER_BYTE_VOCAB + merges < vocab) {
        memset(cnt, 0, cap * sizeof *cnt);
        for (size_t c = 0; c < nb; c++)
            for (size_t i = 0; i + 1 < lens[c]; i++)
                cnt[(size_t)seq[bounds[c] + i] * vocab + seq[bounds[c] + i + 1]]++;
        size_t best = 0;
        for (size_t k = 1; k < cap; k++)
            if (cnt[k] > cnt[best]) best = k;
        if (cnt[best] < 2) break;
        int32_t a = (int32_t)(best / vocab), b = (int32_t)(best % vocab);
        int32_t z = NAWAL_TOKENIZER_BYTE_VOCAB + merges;
        ml[merges] = a;
        mr[merges] = b;
        merges++;
        for (size_t c = 0; c < nb; c++) {
            int32_t *s = seq + bounds[c];
            size_t j = 0;
            for (size_t i = 0; i < lens[c];) {
                if (i + 1 < lens[c] && s[i] == a && s[i + 1] == b) {
                    s[j++] = z;
                    i += 2;
                } else {
                    s[j++] = s[i++];
                }
            }
            lens[c] = j;
        }
    }
    *n_final = 0;
    for (size_t c = 0; c < nb; c++) *n_final += lens[c];
    free(cnt);
    free(seq);
    free(bounds);
    free(lens);
    return merges;
}

/* ---- byte tokenizer -------------------------------------------------------- */

Test(tokenizer, byte_roundtrip_arbitrary_bytes) {
    uint64_t seed = fresh_seed();
    rng r = {seed};
    nawal_tokenizer *t;
    cr_assert_eq(nawal_tokenizer_new_byte(&t), 0);
    cr_assert_eq(nawal_tokenizer_vocab_size(t), 257);
    cr_assert_eq(nawal_tokenizer_is_bpe(t), 0);
    uint8_t *buf = malloc(70000);
    cr_assert(buf);
    for (int iter = 0; iter < 300; iter++) {
        size_t n = iter < 64 ? (size_t)iter : rng_below(&r, iter < 290 ? 4096 : 70000);
        random_bytes(&r, buf, n);
        assert_roundtrip(t, buf, n, seed, "byte tokenizer");
        /* byte tokenizer: token i is exactly byte i */
        int32_t *toks;
        size_t nt;
        char err[128];
        cr_assert_eq(nawal_tokenizer_encode(t, buf, n, &toks, &nt, err, sizeof err), 0);
        cr_assert_eq(nt, n, "seed=%llu", (unsigned long long)seed);
        for (size_t i = 0; i < n; i++)
            cr_assert_eq(toks[i], buf[i], "seed=%llu pos %zu", (unsigned long long)seed, i);
        free(toks);
    }
    free(buf);
    nawal_tokenizer_free(t);
}

Test(tokenizer, eot_decodes_to_nothing_and_bad_ids_are_rejected) {
    uint64_t seed = fresh_seed();
    rng r = {seed};
    nawal_tokenizer *t;
    cr_assert_eq(nawal_tokenizer_new_byte(&t), 0);
    uint8_t a = (uint8_t)rng_below(&r, 256), b = (uint8_t)rng_below(&r, 256);
    int32_t toks[4] = {NAWAL_TOKEN_EOT, a, NAWAL_TOKEN_EOT, b};
    uint8_t *out;
    size_t n;
    char err[256] = "";
    cr_assert_eq(nawal_tokenizer_decode(t, toks, 4, &out, &n, err, sizeof err), 0, "%s", err);
    cr_assert_eq(n, 2);
    cr_assert(out[0] == a && out[1] == b, "seed=%llu", (unsigned long long)seed);
    free(out);
    int32_t bad[3] = {257, -1, INT32_MAX};
    for (int i = 0; i < 3; i++) {
        int32_t seq[3] = {a, bad[i], b};
        err[0] = 0;
        out = (uint8_t *)1;
        cr_assert_eq(nawal_tokenizer_decode(t, seq, 3, &out, &n, err, sizeof err), -1,
                     "id %d accepted", bad[i]);
        cr_assert(out == NULL);
        cr_assert(strstr(err, "out") != NULL, "message: %s", err);
    }
    /* empty input gives non-NULL buffers */
    int32_t *et;
    cr_assert_eq(nawal_tokenizer_encode(t, NULL, 0, &et, &n, err, sizeof err), 0);
    cr_assert(et != NULL && n == 0);
    free(et);
    cr_assert_eq(nawal_tokenizer_decode(t, NULL, 0, &out, &n, err, sizeof err), 0);
    cr_assert(out != NULL && n == 0);
    free(out);
    nawal_tokenizer_free(t);
}

/* ---- pre-splitting ---------------------------------------------------------- */

static void assert_chunks(const char *text, const char *const *expect, size_t n_expect) {
    const uint8_t *p = (const uint8_t *)text;
    size_t n = strlen(text), pos = 0, k = 0;
    while (pos < n) {
        size_t c = nawal_tokenizer_chunk_len(p + pos, n - pos);
        cr_assert(k < n_expect, "'%s': too many chunks", text);
        cr_assert(c == strlen(expect[k]) && memcmp(p + pos, expect[k], c) == 0,
                  "'%s': chunk %zu is '%.*s', expected '%s'", text, k, (int)c, text + pos,
                  expect[k]);
        pos += c;
        k++;
    }
    cr_assert_eq(k, n_expect, "'%s': %zu chunks, expected %zu", text, k, n_expect);
}

Test(tokenizer, chunk_rules) {
    assert_chunks("hello world", (const char *const[]){"hello", " world"}, 2);
    assert_chunks("a   b", (const char *const[]){"a", "  ", " b"}, 3);
    assert_chunks("x42!! \n\nyes", (const char *const[]){"x", "42", "!!", " \n\n", "yes"}, 5);
    assert_chunks(" 7, caf\xc3\xa9.", (const char *const[]){" 7", ",", " caf\xc3\xa9", "."}, 4);
    assert_chunks("  ", (const char *const[]){"  "}, 1);

    uint64_t seed = fresh_seed();
    rng r = {seed};
    uint8_t *buf = malloc(5000);
    cr_assert(buf);
    for (int iter = 0; iter < 100; iter++) {
        size_t n = rng_below(&r, 5000);
        random_bytes(&r, buf, n);
        if (iter % 3 == 0) memset(buf, 'a', n / 2); /* long runs get cut */
        size_t pos = 0;
        while (pos < n) {
            size_t c = nawal_tokenizer_chunk_len(buf + pos, n - pos);
            cr_assert(c >= 1 && c <= NAWAL_TOKENIZER_MAX_CHUNK && c <= n - pos,
                      "seed=%llu chunk of %zu at %zu", (unsigned long long)seed, c, pos);
            pos += c;
        }
    }
    cr_assert_eq(nawal_tokenizer_chunk_len(buf, 0), 0);
    free(buf);
}

/* ---- BPE ------------------------------------------------------------------- */

Test(tokenizer, bpe_roundtrip_compression_and_vocab) {
    uint64_t seed = fresh_seed();
    rng r = {seed};
    size_t len;
    uint8_t *text = random_text(&r, 60000 + rng_below(&r, 60000), 500, &len);
    int vocab = 300 + (int)rng_below(&r, 300);
    nawal_tokenizer *t;
    char err[256] = "";
    cr_assert_eq(nawal_tokenizer_train_bpe(&t, text, len, vocab, err, sizeof err), 0,
                 "seed=%llu: %s", (unsigned long long)seed, err);
    cr_assert_eq(nawal_tokenizer_vocab_size(t), vocab, "seed=%llu vocab %d asked %d",
                 (unsigned long long)seed, nawal_tokenizer_vocab_size(t), vocab);
    cr_assert_eq(nawal_tokenizer_n_merges(t), vocab - 257);
    cr_assert(nawal_tokenizer_is_bpe(t));

    assert_roundtrip(t, text, len, seed, "training text");
    size_t nt = encode_count(t, text, len);
    cr_assert(nt < len, "seed=%llu: %zu tokens for %zu bytes", (unsigned long long)seed, nt, len);

    /* every merge refers to earlier, non-EOT tokens and its bytes concatenate */
    for (int i = 0; i < nawal_tokenizer_n_merges(t); i++) {
        int32_t l, rr;
        cr_assert_eq(nawal_tokenizer_merge_get(t, i, &l, &rr), 0);
        int32_t id = 257 + i;
        cr_assert(l >= 0 && l < id && rr >= 0 && rr < id && l != 256 && rr != 256);
        const uint8_t *bz, *bl, *br;
        size_t nz, nl, nr;
        nawal_tokenizer_token_bytes(t, id, &bz, &nz);
        nawal_tokenizer_token_bytes(t, l, &bl, &nl);
        nawal_tokenizer_token_bytes(t, rr, &br, &nr);
        cr_assert(nz == nl + nr && memcmp(bz, bl, nl) == 0 && memcmp(bz + nl, br, nr) == 0);
    }

    /* unseen inputs: arbitrary bytes, and text-like mixtures */
    uint8_t *buf = malloc(20000);
    cr_assert(buf);
    for (int iter = 0; iter < 120; iter++) {
        size_t n = iter < 8 ? (size_t)iter : rng_below(&r, 20000);
        random_bytes(&r, buf, n);
        if (iter % 2) /* splice in pieces of the training text */
            for (size_t i = 0; i + 50 < n; i += 100) {
                size_t off = rng_below(&r, len - 50);
                memcpy(buf + i, text + off, 50);
            }
        assert_roundtrip(t, buf, n, seed, "unseen bytes");
    }
    free(buf);
    free(text);
    nawal_tokenizer_free(t);
}

Test(tokenizer, bpe_first_merge_is_most_frequent_pair) {
    uint64_t seed = fresh_seed();
    rng r = {seed};
    for (int iter = 0; iter < 5; iter++) {
        size_t len;
        uint8_t *text = random_text(&r, 2000 + rng_below(&r, 30000), 50 + rng_below(&r, 300), &len);
        if (iter == 4) random_bytes(&r, text, len / 2); /* and on arbitrary bytes */
        int64_t *cnt = calloc(256 * 256, sizeof *cnt);
        cr_assert(cnt);
        for (size_t pos = 0; pos < len;) {
            size_t c = nawal_tokenizer_chunk_len(text + pos, len - pos);
            for (size_t i = 0; i + 1 < c; i++) cnt[text[pos + i] * 256 + text[pos + i + 1]]++;
            pos += c;
        }
        size_t best = 0;
        for (size_t k = 1; k < 256 * 256; k++)
            if (cnt[k] > cnt[best]) best = k; /* first max = smallest (left, right) */
        nawal_tokenizer *t;
        char err[256];
        cr_assert_eq(nawal_tokenizer_train_bpe(&t, text, len, 300, err, sizeof err), 0, "%s", err);
        int32_t l, rr;
        cr_assert_eq(nawal_tokenizer_merge_get(t, 0, &l, &rr), 0, "seed=%llu: no merge",
                     (unsigned long long)seed);
        cr_assert_eq(cnt[l * 256 + rr], cnt[best],
                     "seed=%llu: first merge (%d,%d) occurs %lld times, max is %lld",
                     (unsigned long long)seed, l, rr, (long long)cnt[l * 256 + rr],
                     (long long)cnt[best]);
        cr_assert(l == (int32_t)(best / 256) && rr == (int32_t)(best % 256),
                  "seed=%llu: tie not broken to the smallest pair", (unsigned long long)seed);
        free(cnt);
        free(text);
        nawal_tokenizer_free(t);
    }
}

Test(tokenizer, bpe_matches_naive_reference_trainer) {
    uint64_t seed = fresh_seed();
    rng r = {seed};
    for (int iter = 0; iter < 4; iter++) {
        size_t len;
        uint8_t *text = random_text(&r, 1000 + rng_below(&r, 6000), 20 + rng_below(&r, 100), &len);
        if (iter == 3)
            for (size_t i = 0; i < len; i += 7) text[i] = (uint8_t)rng_below(&r, 256);
        int vocab = 257 + (int)rng_below(&r, 120);
        int32_t ml[130], mr[130];
        size_t ref_tokens;
        int nm = reference_train(text, len, vocab, ml, mr, &ref_tokens);
        nawal_tokenizer *t;
        char err[256];
        cr_assert_eq(nawal_tokenizer_train_bpe(&t, text, len, vocab, err, sizeof err), 0, "%s", err);
        cr_assert_eq(nawal_tokenizer_n_merges(t), nm, "seed=%llu: %d merges, reference %d",
                     (unsigned long long)seed, nawal_tokenizer_n_merges(t), nm);
        for (int i = 0; i < nm; i++) {
            int32_t l, rr;
            nawal_tokenizer_merge_get(t, i, &l, &rr);
            cr_assert(l == ml[i] && rr == mr[i],
                      "seed=%llu: merge %d is (%d,%d), reference (%d,%d)",
                      (unsigned long long)seed, i, l, rr, ml[i], mr[i]);
        }
        assert_roundtrip(t, text, len, seed, "reference text");
        /* encoding the training text reproduces the training segmentation */
        cr_assert_eq(encode_count(t, text, len), ref_tokens, "seed=%llu: %zu tokens, reference %zu",
                     (unsigned long long)seed, encode_count(t, text, len), ref_tokens);
        free(text);
        nawal_tokenizer_free(t);
    }
}

Test(tokenizer, bpe_hand_checked_example) {
    /* "aaabdaaabac": pairs aa=4 ab=2 -> (a,a)=257; then "Z a b d Z a b a c":
     * (257,a)=2 and (a,b)=2 tie -> smaller (a,b)=258; then (257,258)=2 ->
     * 259; nothing else occurs twice, so training stops at vocab 260. */
    const char *s = "aaabdaaabac";
    nawal_tokenizer *t;
    char err[256];
    cr_assert_eq(nawal_tokenizer_train_bpe(&t, (const uint8_t *)s, strlen(s), 300, err, sizeof err), 0);
    cr_assert_eq(nawal_tokenizer_vocab_size(t), 260);
    int32_t expect[3][2] = {{'a', 'a'}, {'a', 'b'}, {257, 258}};
    for (int i = 0; i < 3; i++) {
        int32_t l, r;
        cr_assert_eq(nawal_tokenizer_merge_get(t, i, &l, &r), 0);
        cr_assert(l == expect[i][0] && r == expect[i][1], "merge %d = (%d,%d)", i, l, r);
    }
    int32_t *toks;
    size_t n;
    cr_assert_eq(nawal_tokenizer_encode(t, (const uint8_t *)s, strlen(s), &toks, &n, err, sizeof err), 0);
    int32_t want[5] = {259, 'd', 259, 'a', 'c'};
    cr_assert_eq(n, 5);
    for (int i = 0; i < 5; i++) cr_assert_eq(toks[i], want[i], "token %d", i);
    free(toks);
    const uint8_t *b;
    size_t bl;
    cr_assert_eq(nawal_tokenizer_token_bytes(t, 259, &b, &bl), 0);
    cr_assert(bl == 4 && memcmp(b, "aaab", 4) == 0);
    nawal_tokenizer_free(t);
}

Test(tokenizer, bpe_long_runs_and_edge_sizes) {
    uint64_t seed = fresh_seed();
    rng r = {seed};
    size_t n = 20000 + rng_below(&r, 20000);
    uint8_t *buf = malloc(n);
    cr_assert(buf);
    uint8_t c = (uint8_t)('a' + rng_below(&r, 26));
    memset(buf, c, n);
    memset(buf + n / 2, ' ', n / 4);
    nawal_tokenizer *t;
    char err[256];
    cr_assert_eq(nawal_tokenizer_train_bpe(&t, buf, n, 400, err, sizeof err), 0, "%s", err);
    for (int id = 0; id < nawal_tokenizer_vocab_size(t); id++) {
        size_t bl;
        cr_assert_eq(nawal_tokenizer_token_bytes(t, id, NULL, &bl), 0);
        cr_assert(bl <= NAWAL_TOKENIZER_MAX_CHUNK);
    }
    assert_roundtrip(t, buf, n, seed, "long runs");
    cr_assert(encode_count(t, buf, n) < n / 50, "seed=%llu", (unsigned long long)seed);
    nawal_tokenizer_free(t);

    /* vocab 257 learns nothing; empty and 1-byte inputs train fine */
    cr_assert_eq(nawal_tokenizer_train_bpe(&t, buf, n, 257, err, sizeof err), 0);
    cr_assert_eq(nawal_tokenizer_vocab_size(t), 257);
    cr_assert(!nawal_tokenizer_is_bpe(t));
    nawal_tokenizer_free(t);
    cr_assert_eq(nawal_tokenizer_train_bpe(&t, NULL, 0, 300, err, sizeof err), 0);
    cr_assert_eq(nawal_tokenizer_vocab_size(t), 257);
    nawal_tokenizer_free(t);
    cr_assert_eq(nawal_tokenizer_train_bpe(&t, buf, 1, 300, err, sizeof err), 0);
    nawal_tokenizer_free(t);

    /* bad vocab sizes */
    int bad[3] = {256, -5, NAWAL_TOKENIZER_MAX_VOCAB + 1};
    for (int i = 0; i < 3; i++) {
        err[0] = 0;
        t = (nawal_tokenizer *)1;
        cr_assert_eq(nawal_tokenizer_train_bpe(&t, buf, n, bad[i], err, sizeof err), -1);
        cr_assert(t == NULL && strstr(err, "vocab") != NULL, "message: %s", err);
    }
    free(buf);
}

Test(tokenizer, save_load_gives_identical_encodings) {
    uint64_t seed = fresh_seed();
    rng r = {seed};
    size_t len;
    uint8_t *text = random_text(&r, 30000 + rng_below(&r, 30000), 300, &len);
    nawal_tokenizer *t, *u;
    char err[256] = "";
    cr_assert_eq(nawal_tokenizer_train_bpe(&t, text, len, 300 + (int)rng_below(&r, 200), err,
                                           sizeof err), 0, "%s", err);
    char *path = temp_path();
    cr_assert_eq(nawal_tokenizer_save(t, path, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_tokenizer_load(&u, path, err, sizeof err), 0, "seed=%llu: %s",
                 (unsigned long long)seed, err);
    cr_assert_eq(nawal_tokenizer_vocab_size(u), nawal_tokenizer_vocab_size(t));
    for (int i = 0; i < nawal_tokenizer_n_merges(t); i++) {
        int32_t a, b, c, d;
        nawal_tokenizer_merge_get(t, i, &a, &b);
        nawal_tokenizer_merge_get(u, i, &c, &d);
        cr_assert(a == c && b == d, "merge %d differs", i);
    }
    uint8_t *rb = malloc(10000);
    cr_assert(rb);
    for (int iter = 0; iter < 20; iter++) {
        const uint8_t *p = text;
        size_t n = len;
        if (iter > 0) {
            n = rng_below(&r, 10000);
            random_bytes(&r, rb, n);
            p = rb;
        }
        int32_t *x, *y;
        size_t nx, ny;
        cr_assert_eq(nawal_tokenizer_encode(t, p, n, &x, &nx, err, sizeof err), 0);
        cr_assert_eq(nawal_tokenizer_encode(u, p, n, &y, &ny, err, sizeof err), 0);
        cr_assert(nx == ny && memcmp(x, y, nx * sizeof *x) == 0,
                  "seed=%llu: encodings differ after load", (unsigned long long)seed);
        free(x);
        free(y);
    }
    /* a byte tokenizer saves and loads too */
    nawal_tokenizer *bt, *bu;
    cr_assert_eq(nawal_tokenizer_new_byte(&bt), 0);
    cr_assert_eq(nawal_tokenizer_save(bt, path, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_tokenizer_load(&bu, path, err, sizeof err), 0, "%s", err);
    cr_assert_eq(nawal_tokenizer_vocab_size(bu), 257);
    nawal_tokenizer_free(bt);
    nawal_tokenizer_free(bu);
    /* saving into a missing directory fails cleanly */
    cr_assert_eq(nawal_tokenizer_save(t, "/nonexistent-dir/x/tok.bpe", err, sizeof err), -1);
    cr_assert(strstr(err, "/nonexistent-dir/x/tok.bpe") != NULL, "message: %s", err);
    unlink(path);
    free(path);
    free(rb);
    free(text);
    nawal_tokenizer_free(t);
    nawal_tokenizer_free(u);
}

Test(tokenizer, encode_applies_lowest_rank_first) {
    /* 257 = (b,c) is learned before 258 = (a,b): "abc" must become a + bc,
     * although a + b is the leftmost pair */
    const char *file = "nawal-bpe 1\nvocab 259\n98 99\n97 98\n";
    char *path = temp_path();
    write_file(path, file, strlen(file));
    nawal_tokenizer *t;
    char err[256];
    cr_assert_eq(nawal_tokenizer_load(&t, path, err, sizeof err), 0, "%s", err);
    cr_assert(nawal_tokenizer_is_bpe(t));
    int32_t *toks;
    size_t n;
    cr_assert_eq(nawal_tokenizer_encode(t, (const uint8_t *)"abcab", 5, &toks, &n, err, sizeof err), 0);
    int32_t want[3] = {'a', 257, 258};
    cr_assert_eq(n, 3);
    for (int i = 0; i < 3; i++) cr_assert_eq(toks[i], want[i], "token %d is %d", i, toks[i]);
    free(toks);
    nawal_tokenizer_free(t);
    unlink(path);
    free(path);
}

/* ---- corrupt files ---------------------------------------------------------- */

static int load_bytes(const char *path, const void *p, size_t n, char *err, size_t errlen) {
    write_file(path, p, n);
    nawal_tokenizer *t = (nawal_tokenizer *)1;
    err[0] = 0;
    int rc = nawal_tokenizer_load(&t, path, err, errlen);
    if (rc == 0) {
        cr_assert(t != NULL && t != (nawal_tokenizer *)1);
        nawal_tokenizer_free(t);
    } else {
        cr_assert(t == NULL, "failed load left a tokenizer");
        cr_assert(err[0] != 0, "failed load without a message");
    }
    return rc;
}

Test(tokenizer, corrupt_files_are_rejected) {
    static const char *const bad[] = {
        "",                                            /* empty */
        "hello\n",                                     /* bad magic */
        "nawal-bpe\n",                                 /* no version */
        "nawal-bpe 2\nvocab 257\n",                    /* unknown version */
        "nawal-bpe 1\n",                               /* no vocab line */
        "nawal-bpe 1\nvocab 256\n",                    /* vocab too small */
        "nawal-bpe 1\nvocab 99999999999\n",            /* huge */
        "nawal-bpe 1\nvocab 262145\n",                 /* over the cap */
        "nawal-bpe 1\nvocab 258\n",                    /* truncated: missing merge */
        "nawal-bpe 1\nvocab 258\n97 98",               /* no final newline */
        "nawal-bpe 1\nvocab 258\n97 257\n",            /* self reference */
        "nawal-bpe 1\nvocab 259\n258 97\n97 97\n",     /* refers to a later id */
        "nawal-bpe 1\nvocab 258\n256 97\n",            /* uses EOT */
        "nawal-bpe 1\nvocab 259\n97 98\n97 98\n",      /* duplicate */
        "nawal-bpe 1\nvocab 258\n-1 97\n",             /* negative */
        "nawal-bpe 1\nvocab 258\n97  98\n",            /* bad spacing */
        "nawal-bpe 1\nvocab 258\n97 98\r\n",           /* CRLF */
        "nawal-bpe 1\nvocab 258\n97 98\n99 100\n",     /* extra merge */
        "nawal-bpe 1\nvocab 257\ngarbage",             /* trailing data */
        "nawal-bpe 1\nvocab 258\n97 98 99\n",          /* three ids */
        "nawal-bpe 1\nvocab 258\n4294967296 1\n",      /* overflow */
        "NAWAL-BPE 1\nvocab 257\n",                    /* case */
    };
    char *path = temp_path();
    char err[512];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_assert_eq(load_bytes(path, bad[i], strlen(bad[i]), err, sizeof err), -1,
                     "accepted corrupt file #%zu: '%s'", i, bad[i]);

    /* a merge chain whose tokens double in length beyond the chunk limit */
    char chain[512];
    int off = snprintf(chain, sizeof chain, "nawal-bpe 1\nvocab 266\n97 97\n");
    for (int id = 257; id < 265; id++) off += snprintf(chain + off, sizeof chain - off, "%d %d\n", id, id);
    cr_assert_eq(load_bytes(path, chain, (size_t)off, err, sizeof err), -1, "256+ byte token accepted");
    cr_assert(strstr(err, path) != NULL, "message lacks the path: %s", err);

    /* the error names the file and line */
    cr_assert_eq(load_bytes(path, bad[11], strlen(bad[11]), err, sizeof err), -1);
    char want[300];
    snprintf(want, sizeof want, "%s:3:", path);
    cr_assert(strstr(err, want) != NULL, "message: %s", err);

    /* every proper prefix of a valid file is rejected */
    uint64_t seed = fresh_seed();
    rng r = {seed};
    size_t len;
    uint8_t *text = random_text(&r, 5000, 50, &len);
    nawal_tokenizer *t;
    cr_assert_eq(nawal_tokenizer_train_bpe(&t, text, len, 280, err, sizeof err), 0);
    cr_assert_eq(nawal_tokenizer_save(t, path, err, sizeof err), 0);
    nawal_tokenizer_free(t);
    FILE *f = fopen(path, "rb");
    cr_assert(f);
    uint8_t good[8192];
    size_t glen = fread(good, 1, sizeof good, f);
    fclose(f);
    cr_assert(glen > 20 && glen < sizeof good);
    for (size_t k = 0; k < glen; k++)
        cr_assert_eq(load_bytes(path, good, k, err, sizeof err), -1,
                     "seed=%llu: prefix of %zu/%zu bytes accepted", (unsigned long long)seed, k, glen);
    cr_assert_eq(load_bytes(path, good, glen, err, sizeof err), 0, "%s", err);

    /* random garbage, and garbage after a valid header: rejected */
    uint8_t junk[4096];
    for (int iter = 0; iter < 200; iter++) {
        size_t n = rng_below(&r, sizeof junk);
        random_bytes(&r, junk, n);
        size_t h = 0;
        if (iter % 2) {
            h = (size_t)snprintf((char *)junk, sizeof junk, "nawal-bpe 1\nvocab %d\n",
                                 257 + (int)rng_below(&r, 1000));
            if (n < h) n = h + 1;
            junk[h] = (uint8_t)('a' + rng_below(&r, 26)); /* not a digit: never a valid merge */
        }
        cr_assert_eq(load_bytes(path, junk, n, err, sizeof err), -1,
                     "seed=%llu: garbage file accepted", (unsigned long long)seed);
    }

    /* random single-byte mutations of a valid file: never crash; whatever
     * loads must still round-trip bytes */
    for (int iter = 0; iter < 300; iter++) {
        uint8_t m[8192];
        memcpy(m, good, glen);
        m[rng_below(&r, glen)] = (uint8_t)rng_below(&r, 256);
        write_file(path, m, glen);
        nawal_tokenizer *u;
        if (nawal_tokenizer_load(&u, path, err, sizeof err) == 0) {
            assert_roundtrip(u, text, len, seed, "mutated tokenizer");
            nawal_tokenizer_free(u);
        }
    }

    /* missing file */
    unlink(path);
    nawal_tokenizer *u = (nawal_tokenizer *)1;
    cr_assert_eq(nawal_tokenizer_load(&u, path, err, sizeof err), -1);
    cr_assert(u == NULL && strstr(err, path) != NULL, "message: %s", err);
    free(text);
    free(path);
}
