/* identity.c - Ed25519 key pairs and their files (see identity.h for the
 * format and the rules). Key files are tiny, so they are read whole into a
 * fixed stack buffer after fstat() shows a regular file of plausible size;
 * buffers that held secret material are wiped with sodium_memzero. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "fileio.h"
#include "identity.h"
#include "cid.h"
#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY_MAGIC "nawal-ed25519-secret-v1\n"
#define KEY_SEED "seed "
#define KEY_PUBLIC "\npublic "
/* magic + "seed " + 64 hex + "\npublic " + 64 hex (+ optional "\n") */
#define KEY_FILE_LEN (sizeof KEY_MAGIC - 1 + sizeof KEY_SEED - 1 + 64 + sizeof KEY_PUBLIC - 1 + 64)
#define SMALL_FILE_MAX 4096

_Static_assert(crypto_sign_PUBLICKEYBYTES == NAWAL_PUBKEY_BYTES, "Ed25519 public key size");
_Static_assert(crypto_sign_SECRETKEYBYTES == NAWAL_SECKEY_BYTES, "Ed25519 secret key size");
_Static_assert(crypto_sign_SEEDBYTES == 32, "Ed25519 seed size");
_Static_assert(crypto_sign_BYTES == NAWAL_SIGNATURE_BYTES, "Ed25519 signature size");

int nawal_identity_generate(nawal_identity *id, char *err, size_t errlen) {
    if (nawal_crypto_init()) return nawal_fail(err, errlen, "libsodium failed to initialise");
    if (crypto_sign_keypair(id->pk, id->sk)) return nawal_fail(err, errlen, "Ed25519 key generation failed");
    return 0;
}

int nawal_identity_from_seed(nawal_identity *id, const uint8_t seed[32], char *err, size_t errlen) {
    if (nawal_crypto_init()) return nawal_fail(err, errlen, "libsodium failed to initialise");
    if (crypto_sign_seed_keypair(id->pk, id->sk, seed)) return nawal_fail(err, errlen, "Ed25519 key derivation failed");
    return 0;
}

void nawal_identity_wipe(nawal_identity *id) { sodium_memzero(id, sizeof *id); }

void nawal_fingerprint(char out[NAWAL_FINGERPRINT_HEX_BYTES], const uint8_t pk[NAWAL_PUBKEY_BYTES]) {
    nawal_hex_encode(out, pk, NAWAL_PUBKEY_BYTES);
}

void nawal_fingerprint_short(char out[NAWAL_FINGERPRINT_SHORT_BYTES], const uint8_t pk[NAWAL_PUBKEY_BYTES]) {
    nawal_hex_encode(out, pk, (NAWAL_FINGERPRINT_SHORT_BYTES - 1) / 2);
}

int nawal_pubkey_from_hex(uint8_t pk[NAWAL_PUBKEY_BYTES], const char *hex, char *err, size_t errlen) {
    size_t len = hex ? strnlen(hex, 2 * NAWAL_PUBKEY_BYTES + 1) : 0;
    if (len != 2 * NAWAL_PUBKEY_BYTES || nawal_hex_decode(pk, NAWAL_PUBKEY_BYTES, hex, len))
        return nawal_fail(err, errlen, "public key: want exactly %d lowercase hex characters",
                          2 * NAWAL_PUBKEY_BYTES);
    return 0;
}

static int join_path(char *out, size_t cap, const char *dir, const char *name, char *err, size_t errlen) {
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap) return nawal_fail(err, errlen, "%s: path too long", dir);
    return 0;
}

/* mkdir -p with mode 0700 for the directories it creates. */
static int make_dirs(const char *dir, char *err, size_t errlen) {
    char path[PATH_MAX];
    size_t len = strlen(dir);
    if (len == 0) return nawal_fail(err, errlen, "empty directory name");
    if (len >= sizeof path) return nawal_fail(err, errlen, "%s: path too long", dir);
    memcpy(path, dir, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (path[i] != '/' && path[i] != 0) continue;
        char saved = path[i];
        path[i] = 0;
        if (mkdir(path, 0700) != 0 && errno != EEXIST) {
            int e = errno;
            return nawal_fail(err, errlen, "%s: cannot create directory: %s", path, strerror(e));
        }
        path[i] = saved;
    }
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) return nawal_fail(err, errlen, "%s: not a directory", dir);
    return 0;
}

/* Creates `path` exclusively with `mode` and writes buf; removes it again
 * on any failure. */
static int create_exclusive(const char *path, mode_t mode, const char *buf, size_t len, char *err, size_t errlen) {
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0) {
        if (errno == EEXIST) return nawal_fail(err, errlen, "%s already exists; refusing to overwrite it", path);
        return nawal_fail(err, errlen, "%s: cannot create: %s", path, strerror(errno));
    }
    int e = 0;
    if (fchmod(fd, mode) != 0 || nawal_write_all(fd, buf, len) != 0 || fsync(fd) != 0) e = errno ? errno : EIO;
    if (close(fd) != 0 && !e) e = errno;
    if (e) {
        unlink(path);
        return nawal_fail(err, errlen, "%s: cannot write: %s", path, strerror(e));
    }
    return 0;
}

int nawal_identity_save(const nawal_identity *id, const char *dir, char *err, size_t errlen) {
    if (nawal_crypto_init()) return nawal_fail(err, errlen, "libsodium failed to initialise");
    uint8_t pk[NAWAL_PUBKEY_BYTES];
    crypto_sign_ed25519_sk_to_pk(pk, id->sk);
    if (sodium_memcmp(pk, id->pk, sizeof pk) != 0)
        return nawal_fail(err, errlen, "identity to save is inconsistent (public key does not match secret key)");
    char kpath[PATH_MAX], ppath[PATH_MAX];
    if (join_path(kpath, sizeof kpath, dir, NAWAL_IDENTITY_KEY_FILE, err, errlen) ||
        join_path(ppath, sizeof ppath, dir, NAWAL_IDENTITY_PUB_FILE, err, errlen))
        return -1;
    if (make_dirs(dir, err, errlen)) return -1;
    struct stat sb;
    if (lstat(kpath, &sb) == 0) return nawal_fail(err, errlen, "%s already exists; refusing to overwrite it", kpath);
    if (lstat(ppath, &sb) == 0) return nawal_fail(err, errlen, "%s already exists; refusing to overwrite it", ppath);

    char text[KEY_FILE_LEN + 2], pub[2 * NAWAL_PUBKEY_BYTES + 2];
    uint8_t seed[crypto_sign_SEEDBYTES];
    crypto_sign_ed25519_sk_to_seed(seed, id->sk);
    char *p = text;
    memcpy(p, KEY_MAGIC KEY_SEED, sizeof KEY_MAGIC KEY_SEED - 1);
    p += sizeof KEY_MAGIC KEY_SEED - 1;
    nawal_hex_encode(p, seed, sizeof seed);
    p += 2 * sizeof seed;
    memcpy(p, KEY_PUBLIC, sizeof KEY_PUBLIC - 1);
    p += sizeof KEY_PUBLIC - 1;
    nawal_hex_encode(p, id->pk, NAWAL_PUBKEY_BYTES);
    p += 2 * NAWAL_PUBKEY_BYTES;
    *p++ = '\n';
    nawal_hex_encode(pub, id->pk, NAWAL_PUBKEY_BYTES);
    pub[2 * NAWAL_PUBKEY_BYTES] = '\n';

    int rc = create_exclusive(kpath, 0600, text, (size_t)(p - text), err, errlen);
    sodium_memzero(seed, sizeof seed);
    sodium_memzero(text, sizeof text);
    if (rc) return -1;
    if (create_exclusive(ppath, 0644, pub, sizeof pub - 1, err, errlen)) {
        unlink(kpath);
        return -1;
    }
    nawal_fsync_parent_dir(kpath);
    return 0;
}

/* Reads a whole small regular file into buf (cap bytes). With `secret`,
 * refuses files that group or others may access. */
static int read_small(const char *path, char *buf, size_t cap, size_t *len, int secret, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return nawal_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return nawal_fail(err, errlen, "%s: not a regular file", path);
    }
    if (secret && (sb.st_mode & 077)) {
        close(fd);
        return nawal_fail(err, errlen, "%s: permissions %04o too open; chmod 600 %s", path,
                          (unsigned)(sb.st_mode & 07777), path);
    }
    if (sb.st_size < 0 || (uint64_t)sb.st_size > cap) {
        close(fd);
        return nawal_fail(err, errlen, "%s: %lld bytes, too large for a key file", path, (long long)sb.st_size);
    }
    size_t got = 0;
    for (;;) {
        ssize_t n = read(fd, buf + got, cap - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            return nawal_fail(err, errlen, "%s: read failed: %s", path, strerror(e));
        }
        if (n == 0) break;
        got += (size_t)n;
        if (got == cap) break;
    }
    close(fd);
    *len = got;
    return 0;
}

static int parse_key_file(const char *path, const char *t, size_t len, uint8_t seed[32], uint8_t pk[32],
                          char *err, size_t errlen) {
    if (len == KEY_FILE_LEN + 1 && t[KEY_FILE_LEN] == '\n') len--;
    if (len < sizeof KEY_MAGIC - 1 || memcmp(t, KEY_MAGIC, sizeof KEY_MAGIC - 1) != 0)
        return nawal_fail(err, errlen, "%s: not a nawal secret key (first line must be 'nawal-ed25519-secret-v1')", path);
    if (len != KEY_FILE_LEN)
        return nawal_fail(err, errlen, "%s: %zu bytes, a secret key file has %zu (truncated or corrupt)", path, len,
                          (size_t)KEY_FILE_LEN);
    const char *s = t + sizeof KEY_MAGIC - 1;
    if (memcmp(s, KEY_SEED, sizeof KEY_SEED - 1) != 0 || nawal_hex_decode(seed, 32, s + sizeof KEY_SEED - 1, 64))
        return nawal_fail(err, errlen, "%s: line 2 must be 'seed <64 lowercase hex>'", path);
    s += sizeof KEY_SEED - 1 + 64;
    if (memcmp(s, KEY_PUBLIC, sizeof KEY_PUBLIC - 1) != 0 || nawal_hex_decode(pk, 32, s + sizeof KEY_PUBLIC - 1, 64))
        return nawal_fail(err, errlen, "%s: line 3 must be 'public <64 lowercase hex>'", path);
    return 0;
}

int nawal_identity_load(nawal_identity *id, const char *dir, char *err, size_t errlen) {
    memset(id, 0, sizeof *id);
    if (nawal_crypto_init()) return nawal_fail(err, errlen, "libsodium failed to initialise");
    char kpath[PATH_MAX], ppath[PATH_MAX];
    if (join_path(kpath, sizeof kpath, dir, NAWAL_IDENTITY_KEY_FILE, err, errlen) ||
        join_path(ppath, sizeof ppath, dir, NAWAL_IDENTITY_PUB_FILE, err, errlen))
        return -1;
    char text[SMALL_FILE_MAX];
    size_t len = 0;
    uint8_t seed[32], pk_line[NAWAL_PUBKEY_BYTES], pk_file[NAWAL_PUBKEY_BYTES];
    int rc = read_small(kpath, text, sizeof text, &len, 1, err, errlen);
    if (rc == 0) rc = parse_key_file(kpath, text, len, seed, pk_line, err, errlen);
    if (rc == 0 && crypto_sign_seed_keypair(id->pk, id->sk, seed))
        rc = nawal_fail(err, errlen, "%s: Ed25519 key derivation failed", kpath);
    sodium_memzero(text, sizeof text);
    sodium_memzero(seed, sizeof seed);
    if (rc == 0 && sodium_memcmp(pk_line, id->pk, NAWAL_PUBKEY_BYTES) != 0)
        rc = nawal_fail(err, errlen, "%s: the public line is not the key of this seed (corrupt file)", kpath);
    if (rc == 0) rc = read_small(ppath, text, 2 * NAWAL_PUBKEY_BYTES + 1, &len, 0, err, errlen);
    if (rc == 0) {
        if (len == 2 * NAWAL_PUBKEY_BYTES + 1 && text[len - 1] == '\n') len--;
        if (nawal_hex_decode(pk_file, NAWAL_PUBKEY_BYTES, text, len))
            rc = nawal_fail(err, errlen, "%s: must hold exactly one line of %d lowercase hex characters", ppath,
                            2 * NAWAL_PUBKEY_BYTES);
        else if (sodium_memcmp(pk_file, id->pk, NAWAL_PUBKEY_BYTES) != 0)
            rc = nawal_fail(err, errlen, "%s does not match the key in %s", ppath, kpath);
    }
    if (rc) nawal_identity_wipe(id);
    return rc;
}

int nawal_identity_create(const char *dir, char fp[NAWAL_FINGERPRINT_HEX_BYTES], char *err, size_t errlen) {
    nawal_identity id;
    int rc = nawal_identity_generate(&id, err, errlen) || nawal_identity_save(&id, dir, err, errlen) ? -1 : 0;
    if (rc == 0) nawal_fingerprint(fp, id.pk);
    nawal_identity_wipe(&id);
    return rc;
}
