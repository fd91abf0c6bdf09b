/* cid.c - BLAKE2b-256 content IDs and the hex helpers (see cid.h).
 *
 * The streaming state is stored as plain bytes in nawal_cid_state because
 * libsodium's crypto_generichash_state demands 64-byte alignment, which
 * malloc does not give: each call copies it into an aligned local state,
 * works there, and copies it back (384 bytes, negligible next to hashing). */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "cid.h"
#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(sizeof(crypto_generichash_state) <= sizeof(((nawal_cid_state *)0)->opaque_),
               "nawal_cid_state too small for libsodium's generichash state");
_Static_assert(crypto_generichash_BYTES_MAX >= NAWAL_CID_BYTES && crypto_generichash_BYTES_MIN <= NAWAL_CID_BYTES,
               "BLAKE2b-256 output size");

int nawal_crypto_init(void) { return sodium_init() < 0 ? -1 : 0; }

int nawal_cid_of_buffer(uint8_t cid[NAWAL_CID_BYTES], const void *buf, size_t len) {
    if (nawal_crypto_init()) return -1;
    static const uint8_t empty[1];
    return crypto_generichash(cid, NAWAL_CID_BYTES, len ? (const uint8_t *)buf : empty, len, NULL, 0) ? -1 : 0;
}

int nawal_cid_init(nawal_cid_state *st) {
    if (nawal_crypto_init()) return -1;
    crypto_generichash_state s;
    if (crypto_generichash_init(&s, NULL, 0, NAWAL_CID_BYTES)) return -1;
    memset(st, 0, sizeof *st);
    memcpy(st->opaque_, &s, sizeof s);
    return 0;
}

int nawal_cid_update(nawal_cid_state *st, const void *buf, size_t len) {
    if (!len) return 0;
    crypto_generichash_state s;
    memcpy(&s, st->opaque_, sizeof s);
    if (crypto_generichash_update(&s, buf, len)) return -1;
    memcpy(st->opaque_, &s, sizeof s);
    st->length += len;
    return 0;
}

int nawal_cid_final(nawal_cid_state *st, uint8_t cid[NAWAL_CID_BYTES]) {
    crypto_generichash_state s;
    memcpy(&s, st->opaque_, sizeof s);
    int rc = crypto_generichash_final(&s, cid, NAWAL_CID_BYTES) ? -1 : 0;
    sodium_memzero(&s, sizeof s);
    sodium_memzero(st, sizeof *st);
    return rc;
}

int nawal_cid_of_file(uint8_t cid[NAWAL_CID_BYTES], uint64_t *size_out, const char *path,
                      char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return nawal_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || S_ISDIR(sb.st_mode)) {
        close(fd);
        return nawal_fail(err, errlen, "%s: not a readable file", path);
    }
    uint8_t *chunk = malloc(NAWAL_CID_FILE_CHUNK);
    nawal_cid_state st;
    if (!chunk || nawal_cid_init(&st)) {
        free(chunk);
        close(fd);
        return nawal_fail(err, errlen, "%s: out of memory or libsodium failed to start", path);
    }
    int rc = 0;
    for (;;) {
        ssize_t n = read(fd, chunk, NAWAL_CID_FILE_CHUNK);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            rc = nawal_fail(err, errlen, "%s: read failed after %llu bytes: %s", path,
                            (unsigned long long)st.length, strerror(errno));
            break;
        }
        if (n == 0) break;
        nawal_cid_update(&st, chunk, (size_t)n);
    }
    free(chunk);
    close(fd);
    uint64_t total = st.length;
    uint8_t out[NAWAL_CID_BYTES];
    if (nawal_cid_final(&st, out) && rc == 0) rc = nawal_fail(err, errlen, "%s: hashing failed", path);
    if (rc == 0) {
        memcpy(cid, out, NAWAL_CID_BYTES);
        if (size_out) *size_out = total;
    }
    return rc;
}

void nawal_hex_encode(char *hex, const uint8_t *bin, size_t n) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        hex[2 * i] = digits[bin[i] >> 4];
        hex[2 * i + 1] = digits[bin[i] & 15];
    }
    hex[2 * n] = 0;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

int nawal_hex_decode(uint8_t *bin, size_t n, const char *hex, size_t hexlen) {
    if (hexlen / 2 != n || hexlen % 2) return -1;
    for (size_t i = 0; i < hexlen; i++)
        if (hex_digit(hex[i]) < 0) return -1;
    for (size_t i = 0; i < n; i++) bin[i] = (uint8_t)(hex_digit(hex[2 * i]) << 4 | hex_digit(hex[2 * i + 1]));
    return 0;
}

void nawal_cid_to_hex(char hex[NAWAL_CID_HEX_BYTES], const uint8_t cid[NAWAL_CID_BYTES]) {
    nawal_hex_encode(hex, cid, NAWAL_CID_BYTES);
}

int nawal_cid_from_hex(uint8_t cid[NAWAL_CID_BYTES], const char *hex, char *err, size_t errlen) {
    if (!hex) return nawal_fail(err, errlen, "content ID: missing");
    size_t len = strnlen(hex, 2 * NAWAL_CID_BYTES + 1);
    if (len != 2 * NAWAL_CID_BYTES)
        return nawal_fail(err, errlen, "content ID: want %d lowercase hex characters, got %s%zu",
                          2 * NAWAL_CID_BYTES, len > 2 * NAWAL_CID_BYTES ? "more than " : "",
                          len > 2 * NAWAL_CID_BYTES ? (size_t)(2 * NAWAL_CID_BYTES) : len);
    if (nawal_hex_decode(cid, NAWAL_CID_BYTES, hex, len))
        return nawal_fail(err, errlen, "content ID: not lowercase hex: '%.64s'", hex);
    return 0;
}

int nawal_cid_equal(const uint8_t a[NAWAL_CID_BYTES], const uint8_t b[NAWAL_CID_BYTES]) {
    return sodium_memcmp(a, b, NAWAL_CID_BYTES) == 0;
}
