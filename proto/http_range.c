/* http_range.c - see http_range.h. */
#include "http_range.h"

#include <string.h>

/* Digits at *p up to the first non-digit: 1 and *out (and *p past them), 0 if none or overflow. */
static int digits(const char **p, uint64_t *out) {
    const char *s = *p;
    uint64_t v = 0;
    if (*s < '0' || *s > '9') return 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        uint64_t d = (uint64_t)(*s - '0');
        if (v > (UINT64_MAX - d) / 10) return 0;
        v = v * 10 + d;
    }
    *p = s;
    *out = v;
    return 1;
}

int nawal_http_u64(const char *s, uint64_t *out) {
    uint64_t v;
    if (!digits(&s, &v) || *s) return 0;
    *out = v;
    return 1;
}

int nawal_http_range_parse(const char *range, uint64_t size, uint64_t *off) {
    const char *p = range;
    uint64_t n;
    if (strncmp(p, "bytes=", 6)) return -1;
    p += 6;
    if (!digits(&p, &n) || strcmp(p, "-") || n >= size) return -1;
    *off = n;
    return 0;
}

int nawal_http_content_range_ok(const char *cr, uint64_t asked, uint64_t clen) {
    const char *p = cr;
    uint64_t a, b, t;
    if (strncmp(p, "bytes ", 6)) return 0;
    p += 6;
    if (!digits(&p, &a) || *p++ != '-' || !digits(&p, &b) || *p++ != '/' || !digits(&p, &t) || *p) return 0;
    return clen >= 1 && a == asked && b >= a && b - a + 1 == clen && t == b + 1 && t > b;
}
