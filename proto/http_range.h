/* http_range.h - the HTTP header values a model download by GET reads from
 * the network (proto/transport_http.c on the agent's side, the
 * coordinator's GET /blobs on the other): a decimal length, the one Range
 * form the coordinator serves ("bytes=N-", the rest of a blob from N), and
 * a 206 reply's Content-Range for it. Strict: digits only (no sign, no
 * space, no empty number), no overflow, nothing trailing. */
#ifndef NAWAL_HTTP_RANGE_H
#define NAWAL_HTTP_RANGE_H

#include <stdint.h>

/* A decimal u64: 1 and *out, or 0 (empty, a non-digit, overflow). */
int nawal_http_u64(const char *s, uint64_t *out);

/* Range "bytes=N-" for a resource of size bytes: 0 and *off = N (N < size),
 * or -1 (another form, or N >= size: 416). */
int nawal_http_range_parse(const char *range, uint64_t size, uint64_t *off);

/* 1 when Content-Range cr ("bytes A-B/T") is exactly the rest of a
 * resource from `asked` in clen bytes (A = asked, B = asked + clen - 1,
 * T = B + 1, clen >= 1), else 0. */
int nawal_http_content_range_ok(const char *cr, uint64_t asked, uint64_t clen);

#endif
