/* tokenizer.h - byte-level tokenizer and byte-level BPE (GPT-2 style).
 *
 * Every tokenizer starts from the 256 single-byte tokens (id = byte value)
 * plus the end-of-text token NAWAL_TOKEN_EOT (id 256, decodes to nothing).
 * A BPE tokenizer adds merges: token 257 + k is the concatenation of two
 * earlier tokens (left, right), learned in that order by
 * nawal_tokenizer_train_bpe from the most frequent adjacent pair.
 *
 * Pre-splitting. Text is cut into chunks and merges never cross a chunk
 * boundary (nawal_tokenizer_chunk_len gives the rule). Byte classes: space
 * = ' ' \t \n \v \f \r; letter = A-Z a-z and every byte >= 0x80 (so UTF-8
 * sequences stay inside words); digit = 0-9; other = everything else
 * (punctuation, control bytes, NUL). A chunk is, first rule that applies:
 *   1. ' ' followed by a non-space byte: that space plus the run of bytes of
 *      the next byte's class ("␠hello", "␠42", "␠!!");
 *   2. a run of spaces; when it is longer than one byte, ends in ' ' and a
 *      non-space follows, the final ' ' is left to prefix the next chunk;
 *   3. a run of bytes of one class.
 * A chunk is at most NAWAL_TOKENIZER_MAX_CHUNK bytes (longer runs are cut),
 * which also bounds the length of any token.
 *
 * Encoding applies, inside each chunk, the pair with the lowest merge rank
 * (= lowest id) first, all its occurrences left to right, until no pair
 * merges. Decoding concatenates token bytes. Encode then decode is the
 * identity on any bytes (NUL and invalid UTF-8 included).
 *
 * Training counts adjacent pairs inside chunks over a table of unique chunks
 * with their frequencies, updated incrementally after each merge. The pair
 * with the highest count wins; ties go to the smallest (left, right). It
 * stops at vocab_size or when no pair occurs at least twice, so the
 * resulting vocabulary may be smaller than asked for.
 *
 * File format (text, '\n' line endings, decimal numbers, nothing else):
 *     nawal-bpe 1
 *     vocab <V>
 *     <left> <right>        one line per merge, V - 257 lines, in id order
 * The line for token id i (i >= 257) names two ids < i other than 256. A
 * plain byte tokenizer is "vocab 257" with no merge lines. Loading checks
 * all of it (magic, version, counts, ranges, duplicate pairs, token length
 * <= NAWAL_TOKENIZER_MAX_CHUNK, vocab <= NAWAL_TOKENIZER_MAX_VOCAB). */
#ifndef NAWAL_TOKENIZER_H
#define NAWAL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#define NAWAL_TOKEN_EOT 256
#define NAWAL_TOKENIZER_BYTE_VOCAB 257      /* 256 bytes + EOT */
#define NAWAL_TOKENIZER_MAX_VOCAB 262144    /* cap for training and loading */
#define NAWAL_TOKENIZER_MAX_CHUNK 256       /* max bytes in a chunk / token */

typedef struct nawal_tokenizer nawal_tokenizer;

/* Plain byte tokenizer, vocab 257. Returns 0, or -1 when out of memory. */
int nawal_tokenizer_new_byte(nawal_tokenizer **out);

/* Learns up to vocab_size - 257 merges from data[0..len).
 * 257 <= vocab_size <= NAWAL_TOKENIZER_MAX_VOCAB. */
int nawal_tokenizer_train_bpe(nawal_tokenizer **out, const uint8_t *data, size_t len,
                              int vocab_size, char *err, size_t errlen);

/* Atomic: writes path.tmp.XXXXXX, fsyncs it, renames it over path. */
int nawal_tokenizer_save(const nawal_tokenizer *t, const char *path, char *err, size_t errlen);
int nawal_tokenizer_load(nawal_tokenizer **out, const char *path, char *err, size_t errlen);
void nawal_tokenizer_free(nawal_tokenizer *t);

int nawal_tokenizer_vocab_size(const nawal_tokenizer *t);
int nawal_tokenizer_is_bpe(const nawal_tokenizer *t);     /* 1 when it has merges */
int nawal_tokenizer_n_merges(const nawal_tokenizer *t);   /* vocab_size - 257 */

/* Merge number index (0-based; it defines token 257 + index). 0 or -1. */
int nawal_tokenizer_merge_get(const nawal_tokenizer *t, int index, int32_t *left, int32_t *right);

/* Bytes of one token (borrowed pointer, valid until free). EOT has length 0.
 * Returns 0, or -1 for an id out of range. */
int nawal_tokenizer_token_bytes(const nawal_tokenizer *t, int32_t id, const uint8_t **bytes,
                                size_t *len);

/* Length of the chunk starting at data[0] (0 only when len == 0). */
size_t nawal_tokenizer_chunk_len(const uint8_t *data, size_t len);

/* *tokens is malloc'd (never NULL on success, even for len 0); caller frees. */
int nawal_tokenizer_encode(const nawal_tokenizer *t, const uint8_t *data, size_t len,
                           int32_t **tokens, size_t *n_tokens, char *err, size_t errlen);

/* *bytes is malloc'd (never NULL on success); error on an id out of range. */
int nawal_tokenizer_decode(const nawal_tokenizer *t, const int32_t *tokens, size_t n,
                           uint8_t **bytes, size_t *n_bytes, char *err, size_t errlen);

#endif
