/* identity.h - Ed25519 identities of validators and coordinators (libsodium
 * crypto_sign_*): generating key pairs, saving and loading them as a pair of
 * small text files, and printing fingerprints. The public key is the
 * node's identity on the wire: it is the `sender` of every envelope it
 * signs (envelope.h) and the key the coordinator registers for a validator.
 *
 * Files, in a directory given by the operator (`nawal-agent keygen --out DIR`):
 *
 *   DIR/identity.key   secret, mode 0600, exactly three lines:
 *                        nawal-ed25519-secret-v1
 *                        seed <64 lowercase hex: the 32-byte Ed25519 seed>
 *                        public <64 lowercase hex: the 32-byte public key>
 *   DIR/identity.pub   one line: <64 lowercase hex: the public key>
 *
 * (The final newline of each file is optional on load; nothing else is
 * tolerated.) Saving never overwrites: it fails if either file exists, and
 * the secret file is created with O_EXCL and mode 0600. Loading refuses a
 * secret file that group or others may read or write ("permissions 0644
 * too open; chmod 600 FILE"), a file of the wrong format or size, a public
 * line that is not the key derived from the seed, and an identity.pub that
 * names a different key.
 *
 * Fingerprint = the public key in lowercase hex (64 characters); the short
 * form is its first 16 characters, for logs and dashboards.
 *
 * Functions that can fail return 0 on success and -1 on error, with a
 * message in the caller's `err` buffer (may be NULL). */
#ifndef NAWAL_IDENTITY_H
#define NAWAL_IDENTITY_H

#include <stddef.h>
#include <stdint.h>

#define NAWAL_PUBKEY_BYTES 32
#define NAWAL_SECKEY_BYTES 64 /* libsodium form: seed || public key */
#define NAWAL_SIGNATURE_BYTES 64
#define NAWAL_FINGERPRINT_HEX_BYTES (2 * NAWAL_PUBKEY_BYTES + 1) /* 64 chars + NUL */
#define NAWAL_FINGERPRINT_SHORT_BYTES 17                         /* 16 chars + NUL */
#define NAWAL_IDENTITY_KEY_FILE "identity.key"
#define NAWAL_IDENTITY_PUB_FILE "identity.pub"

typedef struct {
    uint8_t pk[NAWAL_PUBKEY_BYTES];
    uint8_t sk[NAWAL_SECKEY_BYTES];
} nawal_identity;

/* Fresh key pair from libsodium's CSPRNG. */
int nawal_identity_generate(nawal_identity *id, char *err, size_t errlen);

/* Key pair derived from a 32-byte seed (deterministic; for tests and
 * fuzzing, and what nawal_identity_load does with the file's seed). */
int nawal_identity_from_seed(nawal_identity *id, const uint8_t seed[32], char *err, size_t errlen);

/* Writes dir/identity.key and dir/identity.pub, creating `dir` (and
 * missing parents) with mode 0700 if needed. Fails, writing nothing, if
 * either file already exists; on a failure part way it removes what it
 * created. */
int nawal_identity_save(const nawal_identity *id, const char *dir, char *err, size_t errlen);

/* Reads and checks dir/identity.key and dir/identity.pub (see above). On
 * failure *id is zeroed. */
/* Generates a new identity, saves it into dir (as nawal_identity_save) and
 * writes its fingerprint into fp; the secret never leaves the call. This is
 * what `nawal-agent keygen` and `nawal-coordinator keygen` do. */
int nawal_identity_create(const char *dir, char fp[NAWAL_FINGERPRINT_HEX_BYTES], char *err, size_t errlen);

int nawal_identity_load(nawal_identity *id, const char *dir, char *err, size_t errlen);

/* Zeroes the secret key (and the rest) of *id. */
void nawal_identity_wipe(nawal_identity *id);

/* Fingerprint of a public key: 64 lowercase hex characters / the first 16. */
void nawal_fingerprint(char out[NAWAL_FINGERPRINT_HEX_BYTES], const uint8_t pk[NAWAL_PUBKEY_BYTES]);
void nawal_fingerprint_short(char out[NAWAL_FINGERPRINT_SHORT_BYTES], const uint8_t pk[NAWAL_PUBKEY_BYTES]);

/* Parses a public key written as its fingerprint (exactly 64 lowercase hex
 * characters), e.g. an identity.pub line given to the coordinator. */
int nawal_pubkey_from_hex(uint8_t pk[NAWAL_PUBKEY_BYTES], const char *hex, char *err, size_t errlen);

#endif
