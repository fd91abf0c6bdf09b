/* model_patch.c - model patches (see model_patch.h for the frame and the
 * contract).
 *
 * Making: one pass over the words counts the changed ones and their varint
 * bytes, a second writes the indices and the byte planes into the payload,
 * which zstd compresses behind the header.
 *
 * Applying: the header is checked, then the from model's length and CID,
 * then the payload's size is bounded from k and the number of words before
 * it is allocated and decompressed; every index and pad byte is checked
 * (patch_check) before the first word of the copy is written (patch_write,
 * which walks the checked payload again), and the result's CID is compared
 * with the to CID before anything leaves. */
#include "model_patch.h"
#include "cid.h"
#include "codec_util.h"
#include "error.h"
#include "fileio.h"

#include <stdlib.h>
#include <string.h>
#include <zstd.h>

static const uint8_t MAGIC[4] = { 'N', 'W', 'M', 'P' };

static uint64_t words_of(uint64_t len) { return len / 4 + (len % 4 != 0); }
/* bytes of word w inside a file of len bytes (4, or fewer for a final partial word) */
static size_t word_bytes(uint64_t len, uint64_t w) { return len - 4 * w < 4 ? (size_t)(len - 4 * w) : 4; }

/* The payload sizes k changed words among `words` allow: 4k bytes of planes
 * and k varints, each at least 1 byte; a varint has a j-th extra byte only
 * for a gap >= 128^j, and the gaps (the first index included) add up to at
 * most words - 1, so at most min(k, (words - 1) / 128^j) of them do. */
static void payload_bounds(uint64_t k, uint64_t words, size_t *lo, size_t *hi) {
    *lo = (size_t)(5 * k);
    uint64_t extra = 0, step = 128;
    for (int j = 1; j < NAWAL_VARINT_MAX && words > 0; j++, step *= 128) {
        uint64_t c = (words - 1) / step;
        extra += c < k ? c : k;
    }
    *hi = (size_t)(5 * k + extra);
}

int nawal_model_patch_is_frame(const uint8_t *buf, size_t len) { return buf && len >= 4 && !memcmp(buf, MAGIC, 4); }

int nawal_model_patch_info_read(nawal_patch_info *info, const uint8_t *f, size_t len, char *err, size_t errlen) {
    if (nawal_frame_head_check(f, len, MAGIC, NAWAL_PATCH_HEADER_BYTES, NAWAL_PATCH_VERSION, "model patch", err,
                               errlen))
        return -1;
    if (f[5] || f[6] || f[7]) return nawal_fail(err, errlen, "model patch: reserved header bytes are not 0");
    nawal_patch_info h;
    h.file_len = nawal_le64_get(f + 8);
    memcpy(h.from_cid, f + 16, 32);
    memcpy(h.to_cid, f + 48, 32);
    h.k = nawal_le64_get(f + 80);
    if (h.file_len > NAWAL_PATCH_MAX_LEN)
        return nawal_fail(err, errlen, "model patch: file length %llu above the %llu allowed",
                          (unsigned long long)h.file_len, (unsigned long long)NAWAL_PATCH_MAX_LEN);
    h.words = words_of(h.file_len);
    if (h.k > h.words)
        return nawal_fail(err, errlen, "model patch: k = %llu words changed but the file has only %llu",
                          (unsigned long long)h.k, (unsigned long long)h.words);
    *info = h;
    return 0;
}

/* ---- making ---- */

/* cid[32] = cid_known, or the CID of buf: 0, or -1 */
static int cid_or_hash(uint8_t *cid, const uint8_t *cid_known, const uint8_t *buf, size_t len) {
    if (cid_known) {
        memcpy(cid, cid_known, 32);
        return 0;
    }
    return nawal_cid_of_buffer(cid, buf, len);
}

int nawal_model_patch_make(const uint8_t *from, size_t from_len, const uint8_t *from_cid, const uint8_t *to,
                           size_t to_len, const uint8_t *to_cid, int zstd_level, uint8_t **frame, size_t *frame_len,
                           char *err, size_t errlen) {
    *frame = NULL;
    *frame_len = 0;
    if (from_len != to_len)
        return nawal_fail(err, errlen, "model patch: the models differ in length (%zu and %zu bytes)", from_len, to_len);
    if ((uint64_t)from_len > NAWAL_PATCH_MAX_LEN)
        return nawal_fail(err, errlen, "model patch: %zu bytes, more than the %llu a patch covers", from_len,
                          (unsigned long long)NAWAL_PATCH_MAX_LEN);
    int level = zstd_level ? zstd_level : ZSTD_CLEVEL_DEFAULT;
    if (level < ZSTD_minCLevel() || level > ZSTD_maxCLevel())
        return nawal_fail(err, errlen, "model patch: zstd level %d out of range (%d .. %d)", level, ZSTD_minCLevel(),
                          ZSTD_maxCLevel());
    uint64_t len = from_len, words = words_of(len), k = 0, prev = 0;
    size_t vbytes = 0;
    for (uint64_t w = 0; w < words; w++)
        if (memcmp(from + 4 * w, to + 4 * w, word_bytes(len, w))) {
            vbytes += nawal_varint_len((uint32_t)(k ? w - prev : w));
            prev = w;
            k++;
        }
    size_t plen = vbytes + 4 * (size_t)k;
    uint8_t *payload = malloc(plen ? plen : 1);
    size_t fcap = NAWAL_PATCH_HEADER_BYTES + ZSTD_compressBound(plen);
    uint8_t *f = malloc(fcap);
    if (!payload || !f) {
        free(payload);
        free(f);
        return nawal_fail(err, errlen, "out of memory for a model patch of %llu words", (unsigned long long)k);
    }
    uint8_t *v = payload, *planes = payload + vbytes;
    size_t j = 0;
    for (uint64_t w = 0; w < words; w++) {
        size_t nb = word_bytes(len, w);
        if (!memcmp(from + 4 * w, to + 4 * w, nb)) continue;
        v += nawal_varint_put(v, (uint32_t)(j ? w - prev : w));
        prev = w;
        for (size_t b = 0; b < 4; b++) planes[b * (size_t)k + j] = b < nb ? to[4 * w + b] : 0;
        j++;
    }
    memcpy(f, MAGIC, 4);
    f[4] = NAWAL_PATCH_VERSION;
    f[5] = f[6] = f[7] = 0;
    nawal_le64_put(f + 8, len);
    nawal_le64_put(f + 80, k);
    int rc = cid_or_hash(f + 16, from_cid, from, from_len) || cid_or_hash(f + 48, to_cid, to, to_len)
                 ? nawal_fail(err, errlen, "model patch: cannot hash the models")
                 : 0;
    size_t z = 0;
    if (rc == 0) {
        z = ZSTD_compress(f + NAWAL_PATCH_HEADER_BYTES, fcap - NAWAL_PATCH_HEADER_BYTES, payload, plen, level);
        if (ZSTD_isError(z)) rc = nawal_fail(err, errlen, "model patch: zstd: %s", ZSTD_getErrorName(z));
    }
    free(payload);
    if (rc) {
        free(f);
        return -1;
    }
    *frame = f;
    *frame_len = NAWAL_PATCH_HEADER_BYTES + z;
    return 0;
}

int nawal_model_patch_make_files(const char *from_path, const uint8_t *from_cid, const char *to_path,
                                 const uint8_t *to_cid, int zstd_level, uint8_t **frame, size_t *frame_len, char *err,
                                 size_t errlen) {
    uint8_t *a = NULL, *b = NULL;
    size_t na, nb;
    int rc = nawal_file_read_all(from_path, NAWAL_PATCH_MAX_LEN, &a, &na, err, errlen) ||
                     nawal_file_read_all(to_path, na, &b, &nb, err, errlen)
                 ? -1
                 : nawal_model_patch_make(a, na, from_cid, b, nb, to_cid, zstd_level, frame, frame_len, err, errlen);
    free(a);
    free(b);
    return rc;
}

/* ---- applying ---- */

/* A checked, decompressed payload. */
typedef struct {
    nawal_patch_info h;
    uint8_t *payload;
    const uint8_t *planes; /* after the indices */
} patch;

/* Checks every index and pad byte of p's payload (len bytes). */
static int patch_check(patch *p, size_t len, char *err, size_t errlen) {
    const uint8_t *q = p->payload, *end = p->payload + len;
    uint64_t w = 0, k = p->h.k;
    for (uint64_t j = 0; j < k; j++) {
        uint64_t gap;
        const char *why;
        if (nawal_varint_get(&q, end, &gap, &why))
            return nawal_fail(err, errlen, "model patch: index %llu %s", (unsigned long long)j, why);
        if (j && gap == 0)
            return nawal_fail(err, errlen, "model patch: indices not strictly increasing at entry %llu",
                              (unsigned long long)j);
        w = j ? w + gap : gap;
        if (w >= p->h.words)
            return nawal_fail(err, errlen, "model patch: word index %llu of entry %llu out of range (%llu words)",
                              (unsigned long long)w, (unsigned long long)j, (unsigned long long)p->h.words);
    }
    if ((size_t)(end - q) != 4 * (size_t)k)
        return nawal_fail(err, errlen, "model patch: %zu byte(s) after the indices, expected 4 x k = %llu",
                          (size_t)(end - q), (unsigned long long)(4 * k));
    p->planes = q;
    size_t nb = k ? word_bytes(p->h.file_len, w) : 4; /* the last index is the highest */
    for (size_t b = nb; b < 4; b++)
        if (p->planes[b * (size_t)k + (size_t)k - 1])
            return nawal_fail(err, errlen, "model patch: byte %zu of the final partial word is not 0", b);
    return 0;
}

/* Checks the frame against the from model (length and CID) and opens its payload into p (free p->payload). */
static int patch_open(patch *p, const uint8_t *from, size_t from_len, const uint8_t *f, size_t len, char *err,
                      size_t errlen) {
    p->payload = NULL;
    if (nawal_model_patch_info_read(&p->h, f, len, err, errlen)) return -1;
    if ((uint64_t)from_len != p->h.file_len)
        return nawal_fail(err, errlen, "model patch is for a model of %llu bytes, this one has %zu",
                          (unsigned long long)p->h.file_len, from_len);
    uint8_t cid[32];
    char have[NAWAL_CID_HEX_BYTES], want[NAWAL_CID_HEX_BYTES];
    if (nawal_cid_of_buffer(cid, from, from_len)) return nawal_fail(err, errlen, "model patch: cannot hash the model");
    if (!nawal_cid_equal(cid, p->h.from_cid)) {
        nawal_cid_to_hex(have, cid);
        nawal_cid_to_hex(want, p->h.from_cid);
        return nawal_fail(err, errlen, "model patch applies to model %.16s, not to this one (%.16s)", want, have);
    }
    size_t lo, hi, got;
    payload_bounds(p->h.k, p->h.words, &lo, &hi);
    if (nawal_zstd_frame_decode(f + NAWAL_PATCH_HEADER_BYTES, len - NAWAL_PATCH_HEADER_BYTES, lo, hi, p->h.k,
                                "model patch", &p->payload, &got, err, errlen))
        return -1;
    if (patch_check(p, got, err, errlen)) {
        free(p->payload);
        p->payload = NULL;
        return -1;
    }
    return 0;
}

/* Writes p's words into m (the from model's bytes, p->h.file_len of them), then checks m's CID. */
static int patch_write(const patch *p, uint8_t *m, char *err, size_t errlen) {
    const uint8_t *q = p->payload;
    size_t k = (size_t)p->h.k;
    uint64_t w = 0;
    for (size_t j = 0; j < k; j++) {
        uint64_t gap;
        const char *why;
        nawal_varint_get(&q, p->planes, &gap, &why); /* checked by patch_check */
        w = j ? w + gap : gap;
        size_t nb = word_bytes(p->h.file_len, w);
        for (size_t b = 0; b < nb; b++) m[4 * w + b] = p->planes[b * k + j];
    }
    uint8_t cid[32];
    char have[NAWAL_CID_HEX_BYTES], want[NAWAL_CID_HEX_BYTES];
    if (nawal_cid_of_buffer(cid, m, (size_t)p->h.file_len)) return nawal_fail(err, errlen, "model patch: cannot hash the result");
    if (!nawal_cid_equal(cid, p->h.to_cid)) {
        nawal_cid_to_hex(have, cid);
        nawal_cid_to_hex(want, p->h.to_cid);
        return nawal_fail(err, errlen, "model patch: the result is model %.16s, not the patch's target %.16s", have, want);
    }
    return 0;
}

int nawal_model_patch_apply(const uint8_t *from, size_t from_len, const uint8_t *frame, size_t frame_len, uint8_t **out,
                            size_t *out_len, char *err, size_t errlen) {
    patch p;
    if (patch_open(&p, from, from_len, frame, frame_len, err, errlen)) return -1;
    uint8_t *m = malloc(from_len ? from_len : 1);
    if (!m) {
        free(p.payload);
        return nawal_fail(err, errlen, "out of memory for a %zu-byte model", from_len);
    }
    if (from_len) memcpy(m, from, from_len);
    int rc = patch_write(&p, m, err, errlen);
    free(p.payload);
    if (rc) {
        free(m);
        return -1;
    }
    *out = m;
    *out_len = from_len;
    return 0;
}

int nawal_model_patch_apply_file(const char *from_path, const uint8_t *frame, size_t frame_len, const char *out_path,
                                 char *err, size_t errlen) {
    nawal_patch_info h;
    if (nawal_model_patch_info_read(&h, frame, frame_len, err, errlen)) return -1;
    uint8_t *m;
    size_t n;
    /* a from model longer than the header says is refused before it is read */
    if (nawal_file_read_all(from_path, h.file_len, &m, &n, err, errlen)) return -1;
    patch p;
    int rc = patch_open(&p, m, n, frame, frame_len, err, errlen);
    if (rc == 0) {
        rc = patch_write(&p, m, err, errlen);
        free(p.payload);
    }
    if (rc == 0) {
        nawal_chunk c = { m, n };
        rc = nawal_file_replace(out_path, &c, 1, 0644, err, errlen);
    }
    free(m);
    return rc;
}
