/* fuzz_corpus.c - libFuzzer target for the JSONL corpus reader.
 *
 * Input: one flag byte, then the bytes of a (candidate) .jsonl corpus. Bit 0
 * of the flag byte is skip_bad_lines. The corpus is written to a file named
 * corpus.jsonl and loaded with nawal_corpus_load() and the byte tokenizer,
 * and read with nawal_corpus_read_text(). Bad input must only produce -1
 * with a message. When both succeed they must agree: with the byte
 * tokenizer the stream is each document's bytes followed by EOT, so it
 * holds text length + document count tokens, the same document and skipped
 * line counts, and the bytes back once the EOTs are removed; the train /
 * validation split follows corpus.h (n_val = n_tokens / 10).
 * Seeds: tests/fuzz/corpus/corpus/. */
#include "corpus.h"
#include "fuzz_util.h"

static nawal_tokenizer *byte_tok;

static void free_byte_tok(void) { nawal_tokenizer_free(byte_tok); }

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    FUZZ_CHECK(nawal_tokenizer_new_byte(&byte_tok) == 0, "byte tokenizer");
    atexit(free_byte_tok);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int skip = data[0] & 1;
    const char *path = fuzz_tmpfile("corpus.jsonl", data + 1, size - 1);

    char err[1024] = "", err2[1024] = "";
    nawal_corpus c;
    int rc = nawal_corpus_load(&c, path, byte_tok, skip, err, sizeof err);
    FUZZ_CHECK(rc == 0 || rc == -1, "load returns 0 or -1");
    uint8_t *text = NULL;
    size_t len = 0, docs = 0, skipped = 0;
    int rt = nawal_corpus_read_text(path, skip, &text, &len, &docs, &skipped, err2, sizeof err2);
    FUZZ_CHECK(rt == 0 || rt == -1, "read_text returns 0 or -1");
    FUZZ_CHECK(rt == 0 ? text != NULL : text == NULL && err2[0], "read_text: result or message");
    if (rc != 0) {
        FUZZ_CHECK(err[0] && c.tokens == NULL && c.n_tokens == 0, "failed load: zeroed, message");
    } else {
        FUZZ_CHECK(c.tokens && c.n_tokens > 0, "loaded corpus is not empty");
        FUZZ_CHECK(c.n_train == c.n_tokens - c.n_tokens / 10, "train/val split");
        FUZZ_CHECK(skip || c.n_skipped_lines == 0, "no skipped lines without skip_bad_lines");
        FUZZ_CHECK(rt == 0, "read_text succeeds when load does");
        FUZZ_CHECK(c.n_documents == docs && c.n_skipped_lines == skipped, "same counts");
        FUZZ_CHECK(c.n_tokens == len + docs, "one token per byte plus one EOT per document");
        size_t j = 0, eots = 0;
        for (size_t i = 0; i < c.n_tokens; i++) {
            int32_t id = c.tokens[i];
            FUZZ_CHECK(id >= 0 && id <= NAWAL_TOKEN_EOT, "byte token id");
            if (id == NAWAL_TOKEN_EOT) {
                eots++;
                continue;
            }
            FUZZ_CHECK(j < len && text[j] == (uint8_t)id, "tokens are the text bytes");
            j++;
        }
        FUZZ_CHECK(j == len && eots == docs, "all bytes, one EOT per document");
        FUZZ_CHECK(c.tokens[c.n_tokens - 1] == NAWAL_TOKEN_EOT, "stream ends with EOT");
        size_t nt = 0, nv = 0;
        const int32_t *tr = nawal_corpus_split(&c, NAWAL_SPLIT_TRAIN, &nt);
        const int32_t *va = nawal_corpus_split(&c, NAWAL_SPLIT_VAL, &nv);
        FUZZ_CHECK(tr == c.tokens && va == c.tokens + c.n_train && nt + nv == c.n_tokens, "splits");
    }
    if (rt == 0 && rc != 0) {
        /* Only an empty stream (no document) may fail to load. */
        FUZZ_CHECK(docs == 0, "load fails only on an empty corpus when read_text succeeds");
    }
    nawal_corpus_free(&c);
    free(text);
    return 0;
}
