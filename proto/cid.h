/* cid.h - content IDs: every blob nawal moves or stores (base models, model
 * deltas, checkpoints) is named by the BLAKE2b-256 hash of its bytes
 * (libsodium crypto_generichash with a 32-byte output, no key), printed as 64
 * lowercase hex characters. RoundAnnounce, BlobRequest/BlobChunk,
 * UpdateSubmit and RoundResult carry the raw 32 bytes; the blob store and
 * the blob streamer verify every blob against its CID before use.
 *
 * Also home of the small helpers the crypto code shares: nawal_crypto_init(),
 * the libsodium initialisation that cid, identity and envelope code calls
 * before using libsodium, and strict lowercase hex encoding/decoding (CIDs,
 * public keys and key files are all printed as lowercase hex).
 *
 * Functions that can fail return 0 on success and -1 on error, with a
 * message in the caller's `err` buffer (may be NULL) where they take one. */
#ifndef NAWAL_CID_H
#define NAWAL_CID_H

#include <stddef.h>
#include <stdint.h>

#define NAWAL_CID_BYTES 32
/* 64 hex characters plus the terminating NUL */
#define NAWAL_CID_HEX_BYTES (2 * NAWAL_CID_BYTES + 1)
/* nawal_cid_of_file() reads this much at a time (its only buffer) */
#define NAWAL_CID_FILE_CHUNK ((size_t)1 << 20)

/* Initialises libsodium (sodium_init) once per process; safe to call from
 * any thread, any number of times. Returns -1 if libsodium cannot start. */
int nawal_crypto_init(void);

/* cid = BLAKE2b-256(buf[0..len)). buf may be NULL when len is 0. */
int nawal_cid_of_buffer(uint8_t cid[NAWAL_CID_BYTES], const void *buf, size_t len);

/* Streaming form: init, update any number of times, final; the result
 * equals nawal_cid_of_buffer() of the concatenated input. The libsodium
 * state is kept in plain bytes (no alignment requirement), so the struct
 * may live anywhere, including inside calloc'ed structs, and be copied to
 * fork a hash. `length` counts the bytes absorbed so far. */
typedef struct {
    uint64_t length;
    uint64_t opaque_[48]; /* crypto_generichash_state (384 bytes) */
} nawal_cid_state;

int nawal_cid_init(nawal_cid_state *st);
int nawal_cid_update(nawal_cid_state *st, const void *buf, size_t len);
/* Writes the CID and wipes the state (init again to reuse it). */
int nawal_cid_final(nawal_cid_state *st, uint8_t cid[NAWAL_CID_BYTES]);

/* CID of the file at `path`, read in NAWAL_CID_FILE_CHUNK pieces (memory
 * use does not depend on the file size). *size_out (may be NULL) receives
 * the number of bytes hashed. */
int nawal_cid_of_file(uint8_t cid[NAWAL_CID_BYTES], uint64_t *size_out, const char *path,
                      char *err, size_t errlen);

/* 64 lowercase hex characters and a NUL. */
void nawal_cid_to_hex(char hex[NAWAL_CID_HEX_BYTES], const uint8_t cid[NAWAL_CID_BYTES]);

/* Strict inverse of nawal_cid_to_hex: exactly 64 characters [0-9a-f]
 * followed by the end of the string; anything else (upper case, spaces,
 * "0x", wrong length) is an error and cid is left untouched. */
int nawal_cid_from_hex(uint8_t cid[NAWAL_CID_BYTES], const char *hex, char *err, size_t errlen);

/* Lowercase hex of bin[0..n): writes 2n characters and a NUL. */
void nawal_hex_encode(char *hex, const uint8_t *bin, size_t n);

/* Decodes exactly 2n lowercase hex characters hex[0..hexlen) into
 * bin[0..n). Returns -1 (bin untouched) if hexlen != 2n or any character is
 * not [0-9a-f]. No message: callers say what the hex was for. */
int nawal_hex_decode(uint8_t *bin, size_t n, const char *hex, size_t hexlen);

/* 1 if the two CIDs are equal, 0 if not (constant time). */
int nawal_cid_equal(const uint8_t a[NAWAL_CID_BYTES], const uint8_t b[NAWAL_CID_BYTES]);

#endif
