/* codec_util.c - see codec_util.h. */
#include "codec_util.h"
#include "error.h"

#include <string.h>

#include <stdlib.h>
#include <zstd.h>

size_t nawal_varint_put(uint8_t *p, uint32_t v) {
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

size_t nawal_varint_len(uint32_t v) {
    size_t n = 1;
    for (; v >= 0x80; v >>= 7) n++;
    return n;
}

int nawal_varint_get(const uint8_t **p, const uint8_t *end, uint64_t *v, const char **why) {
    uint64_t r = 0;
    for (int i = 0; i < NAWAL_VARINT_MAX; i++) {
        if (*p == end) return *why = "runs past the end of the payload", -1;
        uint8_t b = *(*p)++;
        r |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            if (i > 0 && b == 0) return *why = "is not in shortest form", -1;
            *v = r;
            return 0;
        }
    }
    return *why = "is longer than 5 bytes", -1;
}

int nawal_zstd_frame_decode(const uint8_t *z, size_t zlen, size_t lo, size_t hi, uint64_t k, const char *what, uint8_t **out,
                            size_t *out_len, char *err, size_t errlen) {
    *out = NULL;
    size_t fsize = ZSTD_findFrameCompressedSize(z, zlen);
    if (ZSTD_isError(fsize)) return nawal_fail(err, errlen, "%s: zstd: %s", what, ZSTD_getErrorName(fsize));
    if (fsize != zlen) return nawal_fail(err, errlen, "%s: %zu trailing byte(s) after the zstd frame", what, zlen - fsize);
    unsigned long long declared = ZSTD_getFrameContentSize(z, zlen);
    if (declared == ZSTD_CONTENTSIZE_ERROR) return nawal_fail(err, errlen, "%s: zstd: bad frame header", what);
    if (declared == ZSTD_CONTENTSIZE_UNKNOWN)
        return nawal_fail(err, errlen, "%s: the zstd frame does not declare its size", what);
    if (declared < lo || declared > hi)
        return nawal_fail(err, errlen, "%s: payload of %llu bytes, expected %zu .. %zu for k = %llu", what, declared, lo,
                          hi, (unsigned long long)k);
    uint8_t *buf = malloc(declared ? (size_t)declared : 1);
    if (!buf) return nawal_fail(err, errlen, "out of memory for a %llu-byte %s payload", declared, what);
    size_t got = ZSTD_decompress(buf, (size_t)declared, z, zlen);
    if (ZSTD_isError(got) || got != declared) {
        free(buf);
        return ZSTD_isError(got) ? nawal_fail(err, errlen, "%s: zstd: %s", what, ZSTD_getErrorName(got))
                                 : nawal_fail(err, errlen, "%s: zstd gave %zu bytes, the frame declares %llu", what,
                                              got, declared);
    }
    *out = buf;
    *out_len = got;
    return 0;
}

int nawal_frame_head_check(const uint8_t *f, size_t len, const uint8_t magic[4], size_t head, unsigned version,
                           const char *what, char *err, size_t errlen) {
    if (!f || len < head)
        return nawal_fail(err, errlen, "%s truncated: %zu bytes, the header alone is %zu", what, f ? len : 0, head);
    if (memcmp(f, magic, 4)) return nawal_fail(err, errlen, "not a nawal %s (bad magic)", what);
    if (f[4] != version)
        return nawal_fail(err, errlen, "%s version %u not supported (this build reads version %u)", what, f[4], version);
    return 0;
}
