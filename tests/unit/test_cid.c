/* test_cid.c - content IDs (proto/cid.h): BLAKE2b-256 known answers, the
 * streaming and file forms agreeing with the one-shot form on fresh random
 * data (split at random points and across the 1 MiB file chunk boundary),
 * and the strict hex form. */
#include "cid.h"
#include "test_util.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

static void hex_of(char hex[NAWAL_CID_HEX_BYTES], const void *buf, size_t len) {
    uint8_t cid[NAWAL_CID_BYTES];
    cr_assert_eq(nawal_cid_of_buffer(cid, buf, len), 0);
    nawal_cid_to_hex(hex, cid);
}

Test(cid, known_answers) {
    char hex[NAWAL_CID_HEX_BYTES];
    hex_of(hex, NULL, 0);
    cr_assert_str_eq(hex, "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8");
    hex_of(hex, "abc", 3);
    cr_assert_str_eq(hex, "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319");
}

static uint8_t *random_bytes(uint64_t *s, size_t n) {
    uint8_t *b = malloc(n ? n : 1);
    cr_assert(b);
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)test_rand_u64(s);
    return b;
}

Test(cid, streaming_equals_one_shot) {
    uint64_t s = test_seed("cid.streaming");
    for (int trial = 0; trial < 20; trial++) {
        size_t n = (size_t)test_rand_int(&s, 5000);
        uint8_t *b = random_bytes(&s, n);
        uint8_t a[NAWAL_CID_BYTES], c[NAWAL_CID_BYTES];
        cr_assert_eq(nawal_cid_of_buffer(a, b, n), 0);
        /* the state may sit anywhere: put it at an odd heap offset */
        uint8_t *raw = malloc(sizeof(nawal_cid_state) + 8);
        nawal_cid_state *st = (nawal_cid_state *)(void *)(raw + 8);
        cr_assert_eq(nawal_cid_init(st), 0);
        size_t off = 0;
        while (off < n) {
            size_t k = (size_t)test_rand_int(&s, (int)(n - off) + 1);
            cr_assert_eq(nawal_cid_update(st, b + off, k), 0);
            off += k;
        }
        cr_assert_eq(st->length, n);
        /* a copy of the state continues the same hash */
        nawal_cid_state copy = *st;
        cr_assert_eq(nawal_cid_final(st, c), 0);
        cr_assert(nawal_cid_equal(a, c), "streamed CID differs (n=%zu)", n);
        cr_assert_eq(nawal_cid_final(&copy, c), 0);
        cr_assert(nawal_cid_equal(a, c));
        free(raw);
        free(b);
    }
}

Test(cid, file_equals_buffer_across_chunks) {
    uint64_t s = test_seed("cid.file");
    size_t C = NAWAL_CID_FILE_CHUNK;
    size_t sizes[] = { 0, 1, C - 1, C, C + 1, 2 * C + (size_t)test_rand_int(&s, (int)C) };
    char path[] = "/tmp/nawal_test_cid.XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        uint8_t *b = random_bytes(&s, n);
        FILE *f = fopen(path, "wb");
        cr_assert(f);
        cr_assert_eq(fwrite(b, 1, n, f), n);
        fclose(f);
        uint8_t a[NAWAL_CID_BYTES], c[NAWAL_CID_BYTES];
        uint64_t size = 12345;
        char err[256] = "";
        cr_assert_eq(nawal_cid_of_buffer(a, b, n), 0);
        cr_assert_eq(nawal_cid_of_file(c, &size, path, err, sizeof err), 0, "%s", err);
        cr_assert_eq(size, n);
        cr_assert(nawal_cid_equal(a, c), "file CID differs from buffer CID at %zu bytes", n);
        free(b);
    }
    unlink(path);
    uint8_t c[NAWAL_CID_BYTES];
    char err[256] = "";
    cr_assert_eq(nawal_cid_of_file(c, NULL, "/nonexistent/nawal/blob", err, sizeof err), -1);
    cr_assert(strstr(err, "/nonexistent/nawal/blob"), "%s", err);
    cr_assert_eq(nawal_cid_of_file(c, NULL, "/tmp", err, sizeof err), -1);
}

Test(cid, hex_round_trip_and_strictness) {
    uint64_t s = test_seed("cid.hex");
    for (int trial = 0; trial < 50; trial++) {
        uint8_t a[NAWAL_CID_BYTES], b[NAWAL_CID_BYTES];
        for (int i = 0; i < NAWAL_CID_BYTES; i++) a[i] = (uint8_t)test_rand_u64(&s);
        char hex[NAWAL_CID_HEX_BYTES];
        nawal_cid_to_hex(hex, a);
        cr_assert_eq(strlen(hex), 64);
        for (int i = 0; i < 64; i++) cr_assert(strchr("0123456789abcdef", hex[i]), "not lowercase hex: %s", hex);
        cr_assert_eq(nawal_cid_from_hex(b, hex, NULL, 0), 0);
        cr_assert(nawal_cid_equal(a, b));
        /* one bad character anywhere */
        char bad[NAWAL_CID_HEX_BYTES];
        memcpy(bad, hex, sizeof bad);
        const char *wrong = "gG -xZ\n.";
        bad[test_rand_int(&s, 64)] = wrong[test_rand_int(&s, 8)];
        memset(b, 0x5a, sizeof b);
        char err[256] = "";
        cr_assert_eq(nawal_cid_from_hex(b, bad, err, sizeof err), -1, "accepted %s", bad);
        cr_assert(err[0]);
        for (int i = 0; i < NAWAL_CID_BYTES; i++) cr_assert_eq(b[i], 0x5a, "cid changed on failure");
    }
    uint8_t b[NAWAL_CID_BYTES];
    const char *good = "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319";
    cr_assert_eq(nawal_cid_from_hex(b, good, NULL, 0), 0);
    cr_assert_eq(nawal_cid_from_hex(b, "BDDD813C634239723171EF3FEE98579B94964E3BB1CB3E427262C8C068D52319", NULL, 0), -1);
    cr_assert_eq(nawal_cid_from_hex(b, "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d5231", NULL, 0), -1);
    cr_assert_eq(nawal_cid_from_hex(b, "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d523190", NULL, 0), -1);
    cr_assert_eq(nawal_cid_from_hex(b, "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319 ", NULL, 0), -1);
    cr_assert_eq(nawal_cid_from_hex(b, "0xdd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319", NULL, 0), -1);
    cr_assert_eq(nawal_cid_from_hex(b, "", NULL, 0), -1);
    cr_assert_eq(nawal_cid_from_hex(b, NULL, NULL, 0), -1);
}
