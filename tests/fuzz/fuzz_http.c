/* fuzz_http.c - libFuzzer target for the HTTP header values of model GETs
 * (proto/http_range.h): a Content-Length, a Range, a 206's Content-Range,
 * as the network sends them.
 *
 * Input: byte 0 picks the reader, bytes 1..8 a size/offset, the rest is the
 * header value (up to its first NUL). Accepted values must mean what the
 * readers promise: a Range's offset below the size, and formatting it back
 * reads the same; a Content-Range accepted for (asked, length) is exactly
 * "bytes asked-(asked+length-1)/(asked+length)" up to leading zeros.
 * Seeds: tests/fuzz/corpus/http/. */
#include "fuzz_util.h"
#include "http_range.h"

#include <inttypes.h>
#include <stdio.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 9) return 0;
    uint64_t n = 0;
    memcpy(&n, data + 1, 8);
    size_t len = size - 9;
    char *s = malloc(len + 1);
    FUZZ_CHECK(s != NULL, "malloc");
    memcpy(s, data + 9, len);
    s[len] = 0;
    char back[96];
    uint64_t v = 0, v2 = 0;
    switch (data[0] % 3) {
    case 0:
        if (nawal_http_u64(s, &v)) {
            snprintf(back, sizeof back, "%" PRIu64, v);
            FUZZ_CHECK(nawal_http_u64(back, &v2) && v2 == v, "a number formatted back reads the same");
        }
        break;
    case 1:
        if (nawal_http_range_parse(s, n, &v) == 0) {
            FUZZ_CHECK(v < n, "a Range's offset is below the size");
            snprintf(back, sizeof back, "bytes=%" PRIu64 "-", v);
            FUZZ_CHECK(nawal_http_range_parse(back, n, &v2) == 0 && v2 == v, "a Range formatted back reads the same");
        }
        break;
    default: {
        uint64_t clen = 1 + (n >> 40), asked = n & ((1ull << 40) - 1);
        if (nawal_http_content_range_ok(s, asked, clen)) {
            snprintf(back, sizeof back, "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, asked, asked + clen - 1, asked + clen);
            FUZZ_CHECK(nawal_http_content_range_ok(back, asked, clen), "the canonical form is accepted too");
            FUZZ_CHECK(strlen(s) >= strlen(back), "an accepted Content-Range is the canonical one, maybe zero-padded");
        }
    }
    }
    free(s);
    return 0;
}
