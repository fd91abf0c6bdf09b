/* test_http_range.c - the HTTP header values of model GETs (http_range.h):
 * random values formatted and read back; a table of forms that must be
 * refused (signs, spaces, empty numbers, overflow, other Range forms,
 * trailing bytes, a range past the end, a Content-Range for other bytes);
 * and every one-byte mutation of valid headers either refused or still
 * read to exactly what its text says (checked by a second, independent
 * reading with strtoull on the digit runs). */
#include "http_range.h"
#include "test_util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rand_u64_any(uint64_t *seed) {
    uint64_t v = test_rand_u64(seed);
    switch (test_rand_u64(seed) % 4) {
    case 0: return v % 10;
    case 1: return v % 100000;
    case 2: return v >> (test_rand_u64(seed) % 64);
    default: return UINT64_MAX - v % 3;
    }
}

Test(http_range, values_round_trip) {
    uint64_t seed = fresh_seed();
    char buf[128];
    for (int i = 0; i < 20000; i++) {
        uint64_t v = rand_u64_any(&seed), got = 0;
        snprintf(buf, sizeof buf, "%" PRIu64, v);
        cr_assert(nawal_http_u64(buf, &got) && got == v, "%s -> %" PRIu64, buf, got);
        uint64_t size = v + 1 + test_rand_u64(&seed) % 1000, off = 0;
        if (size > v) { /* no wrap */
            snprintf(buf, sizeof buf, "bytes=%" PRIu64 "-", v);
            cr_assert_eq(nawal_http_range_parse(buf, size, &off), 0, "%s of %" PRIu64, buf, size);
            cr_assert_eq(off, v);
            cr_assert_eq(nawal_http_range_parse(buf, v, &off), -1, "%s of %" PRIu64 ": past the end", buf, v);
        }
        uint64_t clen = 1 + test_rand_u64(&seed) % 100000;
        if (v <= UINT64_MAX - clen) {
            snprintf(buf, sizeof buf, "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, v, v + clen - 1, v + clen);
            cr_assert(nawal_http_content_range_ok(buf, v, clen), "%s", buf);
            cr_assert(!nawal_http_content_range_ok(buf, v + 1, clen), "%s for another offset", buf);
            cr_assert(!nawal_http_content_range_ok(buf, v, clen + 1), "%s for another length", buf);
        }
    }
}

Test(http_range, bad_forms_refused) {
    uint64_t x, off;
    static const char *const u64_bad[] = {"", "-1", "+1", " 1", "1 ", "1a", "0x10", "18446744073709551616",
                                          "99999999999999999999", "1.0"};
    for (size_t i = 0; i < sizeof u64_bad / sizeof *u64_bad; i++)
        cr_assert(!nawal_http_u64(u64_bad[i], &x), "'%s' read as a number", u64_bad[i]);
    cr_assert(nawal_http_u64("18446744073709551615", &x) && x == UINT64_MAX);
    static const char *const range_bad[] = {"bytes=5-10", "bytes=-5", "bytes=5", "bytes= 5-", "bytes=+5-", "Bytes=5-",
                                            "bytes=5-,7-", "bytes=5- ", "bytes=-", "bytes=", "items=5-",
                                            "bytes=18446744073709551616-"};
    for (size_t i = 0; i < sizeof range_bad / sizeof *range_bad; i++)
        cr_assert_eq(nawal_http_range_parse(range_bad[i], 1000, &off), -1, "'%s' accepted", range_bad[i]);
    cr_assert_eq(nawal_http_range_parse("bytes=0-", 0, &off), -1, "a range of an empty resource");
    static const char *const cr_bad[] = {"bytes 5-14/15 ", "bytes 5-14/16", "bytes 5-13/15", "bytes 4-14/15",
                                         "bytes */15", "bytes 5-14", "bytes=5-14/15", "bytes  5-14/15",
                                         "bytes +5-14/15", "bytes 5-+14/15", ""};
    for (size_t i = 0; i < sizeof cr_bad / sizeof *cr_bad; i++)
        cr_assert(!nawal_http_content_range_ok(cr_bad[i], 5, 10), "'%s' accepted", cr_bad[i]);
    cr_assert(nawal_http_content_range_ok("bytes 5-14/15", 5, 10));
    cr_assert(!nawal_http_content_range_ok("bytes 5-4/5", 5, 0), "an empty range");
}

/* strtoull over the digit runs of s, separated by the literal bytes of fmt's
 * non-'#' characters ('#' = a run of digits): 1 and the values if s has
 * exactly that shape. An independent reading to check mutations against. */
static int shape(const char *s, const char *fmt, uint64_t *v, int nv) {
    int k = 0;
    for (; *fmt; fmt++) {
        if (*fmt != '#') {
            if (*s++ != *fmt) return 0;
            continue;
        }
        if (*s < '0' || *s > '9' || k >= nv) return 0;
        const char *b = s;
        while (*s >= '0' && *s <= '9') s++;
        if (s - b > 20) return 0;
        char tmp[24];
        memcpy(tmp, b, (size_t)(s - b));
        tmp[s - b] = 0;
        errno = 0;
        v[k++] = strtoull(tmp, NULL, 10);
        if (errno) return 0;
    }
    return *s == 0 && k == nv;
}

Test(http_range, mutations_refused_or_read_as_written) {
    uint64_t seed = fresh_seed();
    static const char alphabet[] = "0123456789-=/ +bytesx*,\t";
    char buf[128], m[130];
    for (int i = 0; i < 3000; i++) {
        uint64_t a = test_rand_u64(&seed) % 100000, clen = 1 + test_rand_u64(&seed) % 100000;
        int which = i % 2;
        if (which) snprintf(buf, sizeof buf, "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, a, a + clen - 1, a + clen);
        else snprintf(buf, sizeof buf, "bytes=%" PRIu64 "-", a);
        size_t n = strlen(buf), at = test_rand_u64(&seed) % (n + 1);
        char c = alphabet[test_rand_u64(&seed) % (sizeof alphabet - 1)];
        int op = (int)(test_rand_u64(&seed) % 3); /* replace, insert, delete */
        memcpy(m, buf, at);
        size_t k = at;
        if (op != 2) m[k++] = c;
        size_t rest = op == 0 || op == 2 ? (at < n ? at + 1 : n) : at;
        memcpy(m + k, buf + rest, n - rest + 1);
        uint64_t v[3], off;
        if (which) {
            int ok = nawal_http_content_range_ok(m, a, clen);
            int want = shape(m, "bytes #-#/#", v, 3) && v[0] == a && v[1] == a + clen - 1 && v[2] == a + clen;
            cr_assert_eq(ok, want, "'%s' (from '%s'): %d, expected %d", m, buf, ok, want);
        } else {
            int rc = nawal_http_range_parse(m, 200000, &off);
            int want = shape(m, "bytes=#-", v, 1) && v[0] < 200000;
            cr_assert_eq(rc == 0, want, "'%s' (from '%s'): %d, expected %d", m, buf, rc, want);
            if (want) cr_assert_eq(off, v[0], "'%s'", m);
        }
    }
}
