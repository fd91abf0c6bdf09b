/* fuzz_tokenizer.c - libFuzzer target for the tokenizer file reader.
 *
 * Input: the bytes of a (candidate) tokenizer file ("nawal-bpe 1\nvocab V\n"
 * then V - 257 lines "<left> <right>", see tokenizer.h), written to an
 * in-memory file and loaded with nawal_tokenizer_load(). Bad input must only
 * produce -1 with a message. When it loads, the tokenizer must be
 * consistent (vocab = 257 + merges, every merge names earlier non-EOT ids,
 * token bytes = left bytes + right bytes, at most 256 of them) and encode
 * then decode must give back the input, both for a fixed text (spaces,
 * digits, punctuation, NUL, invalid UTF-8) and for the fuzz input itself;
 * every encoded id must be in range and never EOT.
 * Seeds: tests/fuzz/corpus/tokenizer/. */
#include "fuzz_util.h"
#include "tokenizer.h"

static const char fixed_text[] =
    "Hello, world!  aaaa aaaaaaa bbb\tab ba 12345 6789\n\n  x\r\n"
    "The quick brown fox -- \"quoted\" (paren) [x]{y} 3.14 caf\xc3\xa9 \xff\xfe\x80";

static void round_trip(const nawal_tokenizer *t, const uint8_t *text, size_t len) {
    char err[256] = "";
    int32_t *ids = NULL;
    size_t n = 0;
    FUZZ_CHECK(nawal_tokenizer_encode(t, text, len, &ids, &n, err, sizeof err) == 0 && ids,
               "encode succeeds");
    FUZZ_CHECK(n <= len, "no more tokens than bytes");
    int vocab = nawal_tokenizer_vocab_size(t);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < vocab && ids[i] != NAWAL_TOKEN_EOT, "encoded id in range");
    uint8_t *back = NULL;
    size_t nb = 0;
    FUZZ_CHECK(nawal_tokenizer_decode(t, ids, n, &back, &nb, err, sizeof err) == 0 && back,
               "decode succeeds");
    FUZZ_CHECK(nb == len && memcmp(back, text, len) == 0, "encode then decode is the identity");
    free(ids);
    free(back);
}

static void check_tokenizer(const nawal_tokenizer *t) {
    int vocab = nawal_tokenizer_vocab_size(t), nm = nawal_tokenizer_n_merges(t);
    FUZZ_CHECK(vocab == NAWAL_TOKENIZER_BYTE_VOCAB + nm && vocab <= NAWAL_TOKENIZER_MAX_VOCAB,
               "vocab = 257 + merges, within the cap");
    FUZZ_CHECK(nawal_tokenizer_is_bpe(t) == (nm > 0), "is_bpe iff merges");
    for (int i = 0; i < nm; i++) {
        int32_t l, r, id = NAWAL_TOKENIZER_BYTE_VOCAB + i;
        FUZZ_CHECK(nawal_tokenizer_merge_get(t, i, &l, &r) == 0, "merge_get");
        FUZZ_CHECK(l >= 0 && r >= 0 && l < id && r < id && l != NAWAL_TOKEN_EOT &&
                       r != NAWAL_TOKEN_EOT,
                   "merge names earlier non-EOT tokens");
        const uint8_t *bt, *bl, *br;
        size_t nt, nl, nr;
        FUZZ_CHECK(nawal_tokenizer_token_bytes(t, id, &bt, &nt) == 0 &&
                       nawal_tokenizer_token_bytes(t, l, &bl, &nl) == 0 &&
                       nawal_tokenizer_token_bytes(t, r, &br, &nr) == 0,
                   "token_bytes");
        FUZZ_CHECK(nt == nl + nr && nt <= NAWAL_TOKENIZER_MAX_CHUNK, "token length");
        FUZZ_CHECK(memcmp(bt, bl, nl) == 0 && memcmp(bt + nl, br, nr) == 0, "token bytes");
    }
    FUZZ_CHECK(nawal_tokenizer_merge_get(t, nm, NULL, NULL) == -1, "merge_get past the end");
    FUZZ_CHECK(nawal_tokenizer_token_bytes(t, vocab, NULL, NULL) == -1, "token_bytes past the end");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_memfile("tokenizer.nawal", data, size);
    char err[512] = "";
    nawal_tokenizer *t = NULL;
    int rc = nawal_tokenizer_load(&t, path, err, sizeof err);
    FUZZ_CHECK(rc == 0 || rc == -1, "load returns 0 or -1");
    if (rc != 0) {
        FUZZ_CHECK(t == NULL && err[0], "failed load: no tokenizer, a message");
        return 0;
    }
    FUZZ_CHECK(t != NULL, "loaded tokenizer");
    check_tokenizer(t);
    round_trip(t, (const uint8_t *)fixed_text, sizeof fixed_text - 1);
    round_trip(t, data, size);
    nawal_tokenizer_free(t);
    return 0;
}
