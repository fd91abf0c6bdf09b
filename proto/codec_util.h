/* codec_util.h - the pieces the compressed frame formats share (the delta
 * codec, delta_codec.h, and model patches, model_patch.h): little-endian
 * fields, unsigned LEB128 varints in canonical form, and the checked
 * opening of a frame's single zstd frame, whose declared content size must
 * lie in the bounds the frame's header implies before anything is
 * allocated. Internal to proto/. */
#ifndef NAWAL_CODEC_UTIL_H
#define NAWAL_CODEC_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define NAWAL_VARINT_MAX 5 /* bytes of a varint below 2^35 (every index here is < 2^32) */

static inline uint32_t nawal_le32_get(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t nawal_le64_get(const uint8_t *p) { return (uint64_t)nawal_le32_get(p) | (uint64_t)nawal_le32_get(p + 4) << 32; }
static inline void nawal_le32_put(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void nawal_le64_put(uint8_t *p, uint64_t v) {
    nawal_le32_put(p, (uint32_t)v);
    nawal_le32_put(p + 4, (uint32_t)(v >> 32));
}

/* Writes v as a varint at p (at most NAWAL_VARINT_MAX bytes); returns its length. */
size_t nawal_varint_put(uint8_t *p, uint32_t v);
/* Length of v's varint. */
size_t nawal_varint_len(uint32_t v);
/* Reads one canonical varint at *p (< end) and advances *p: 0, or -1 with
 * what is wrong in *why (runs past the end, not in shortest form, too long). */
int nawal_varint_get(const uint8_t **p, const uint8_t *end, uint64_t *v, const char **why);

/* z[0..zlen) must be exactly one zstd frame (no trailing bytes) declaring
 * its content size, within [lo, hi] (the bounds implied by the k entries
 * the frame's header announces, named in the message); then *out (malloc'ed, to free) holds
 * the *out_len decompressed bytes. Messages start with `what` ("delta
 * frame", "model patch"). 0, or -1 with a message and *out NULL. */
/* The first checks of a frame's header: at least head bytes, its 4-byte
 * magic, its version byte (f[4]) equal to version. 0, or -1 with "WHAT
 * truncated ...", "not a nawal WHAT (bad magic)" or "WHAT version ... not
 * supported ...". */
int nawal_frame_head_check(const uint8_t *f, size_t len, const uint8_t magic[4], size_t head, unsigned version,
                           const char *what, char *err, size_t errlen);

int nawal_zstd_frame_decode(const uint8_t *z, size_t zlen, size_t lo, size_t hi, uint64_t k, const char *what, uint8_t **out,
                            size_t *out_len, char *err, size_t errlen);

#endif
